#!/usr/bin/env bash
# The test command: fetches the default model (the end-to-end tests use it), then runs every
# test of the workspace in release mode (the same build the benchmarks and training use).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh >/dev/null
cargo test --release --workspace --locked "$@"
