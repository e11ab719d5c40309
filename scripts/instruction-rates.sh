#!/usr/bin/env bash
# Prints one core's throughput of f32 FMAs and bf16 dot products (scripts/instruction-rates.c),
# the figures that decide whether bf16 tiles or f32 gemm multiply tuna's batches on this
# processor (dpbf16::outpaces_f32). Needs gcc and a processor with AVX512-BF16.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
grep -qw avx512_bf16 /proc/cpuinfo || { echo "instruction-rates: this processor has no AVX512-BF16" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
gcc -O2 -mavx512f -mavx512vl -mavx512bf16 -mfma "$root/scripts/instruction-rates.c" -o "$out/rates"
lscpu | grep "Model name"
"$out/rates"
