#!/usr/bin/env bash
# On a GPU machine, from the repository root, with the binaries of `scripts/build-cuda.sh
# --tests` carried over (target/cuda/gpu-check.tar.xz, unpacked here, or
# target/cuda/release/{tuna,tuna-tests}) and CUDA 13's libraries reachable (LD_LIBRARY_PATH):
# the GPU parity tests, then `tuna bench train` on the GPU, its figures printed as JSON.
#   scripts/gpu-check.sh [MODEL]     MODEL: the bench model (default: the fetched SmolLM2)
# The SmolLM2 test and the bench read models/SmolLM2-135M-Instruct.Q4_1.gguf. At 98 MB it is
# more than one device run carries (64 MiB): carry it in two halves (split -n 2) over two
# runs on the same warm machine, where ignored files stay, and join them with cat. The
# tiny-model tests need nothing else.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/cuda/release
if [ -f target/cuda/gpu-check.tar.xz ]; then
  mkdir -p "$bin" && tar -C "$bin" -xJf target/cuda/gpu-check.tar.xz \
    || { echo "gpu-check: cannot unpack target/cuda/gpu-check.tar.xz" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
"$bin/tuna-tests" gpu:: --test-threads 1 || status=1
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ -f "$model" ] || [ -d "$model" ]; then
  for shape in 4x256 8x128 1x512; do
    "$bin/tuna" bench train --device cuda --model "$model" --batch-size "${shape%x*}" \
      --seq-len "${shape#*x}" --json || status=1
  done
else
  echo "gpu-check: no $model here: bench train left out" >&2
  status=1
fi
exit "$status"
