#!/usr/bin/env bash
# The test command: fetches the default model (the end-to-end tests use it), then runs every
# test of the workspace in release mode (the same build the benchmarks and training use),
# renders a compare report in headless Chromium (scripts/check-report-html.sh; set
# TUNA_SKIP_BROWSER=1 to leave that out), and closes with one line adding up every test
# binary's counts. Where an MPI library is installed (mpicc and mpirun on PATH, e.g. Debian's
# libopenmpi-dev and openmpi-bin, plus libclang-dev) the build has the `mpi` feature and the
# data-parallel tests run under mpirun; elsewhere they are left out, and the script says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
features=()
if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
  features=(--features tuna/mpi)
else
  echo "test.sh: no MPI library (mpicc, mpirun): the data-parallel tests are left out" >&2
fi
cargo test --release --workspace --locked "${features[@]}" "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" = 0 ] && [ -z "${TUNA_SKIP_BROWSER:-}" ]; then
  # The HTML report in a real browser: a small compare on the real model, rendered by
  # headless Chromium (installed by the script when missing).
  report=target/report-check
  mkdir -p "$report"
  if ! "${CARGO_TARGET_DIR:-target}/release/tuna" compare --data data/example/sentiment/test.jsonl --limit 8 \
      --strategies zero,few --shots 2 --output "$report" >"$report/compare.log" 2>&1; then
    cat "$report/compare.log" >&2
    status=1
  elif ! scripts/check-report-html.sh "$report"; then
    status=1
  fi
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
