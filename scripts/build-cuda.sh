#!/usr/bin/env bash
# Builds tuna with --features cuda,nccl on a machine without a GPU, following
# ../shared/cuda-build.md: the CUDA 13.0 toolchain from NVIDIA's PyPI wheels into
# ~/.cache/tuna/cuda13 (once, ~674 MB of downloads), a link-time libcuda stub, kernels for
# sm_90 (H100/H200; CUDA_COMPUTE_CAP overrides), NCCL from NVIDIA's nvidia-nccl-cu13 wheel for
# data-parallel GPU ranks (the `nccl` feature; libnccl.so.2 is needed at run time too). Not
# part of the default build or CI.
#   scripts/build-cuda.sh            -> target/cuda/release/tuna (its own target dir, so the
#                                       CPU build in target/release stays as it is)
#   scripts/build-cuda.sh --tests    -> also the integration test binary with the GPU parity
#                                       tests (tests/integration/gpu.rs), copied to
#                                       target/cuda/release/tuna-tests, and both stripped in
#                                       target/cuda/gpu-check.tar.xz; scripts/gpu-check.sh
#                                       runs them on the GPU machine
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PREFIX="${TUNA_CUDA_PREFIX:-$HOME/.cache/tuna/cuda13}"
C="$PREFIX/nvidia/cu13"
if [ ! -x "$C/bin/nvcc" ]; then
  W="$(mktemp -d)"
  trap 'rm -rf "$W"' EXIT
  echo "build-cuda: fetching the CUDA 13.0 toolchain wheels into $PREFIX" >&2
  python3 -m pip download --quiet --no-deps -d "$W" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19
  python3 -m pip install --quiet --no-deps --no-index --target "$PREFIX" "$W"/*.whl
fi
# NCCL (cudarc binds NCCL 2.30's API).
# Its own target directory: pip will not add to the toolchain's nvidia/ once it exists.
NCCL_PREFIX="$PREFIX-nccl"
if ! find "$NCCL_PREFIX" -name 'libnccl.so.2' 2>/dev/null | grep -q .; then
  W="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps -d "$W" nvidia-nccl-cu13==2.30.7
  python3 -m pip install --quiet --no-deps --no-index --target "$NCCL_PREFIX" "$W"/*.whl
  rm -rf "$W"
fi
NCCL_SO="$(find "$NCCL_PREFIX" -name 'libnccl.so.2' | head -1)"
[ -n "$NCCL_SO" ] || { echo "build-cuda: libnccl.so.2 is not in $NCCL_PREFIX" >&2; exit 1; }
NCCL_LIB="$(dirname "$NCCL_SO")"
ln -sf libnccl.so.2 "$NCCL_LIB/libnccl.so"
NCCL_INCLUDE="$(dirname "$(find "$NCCL_PREFIX" -name 'nccl.h' | head -1)")"
# Unversioned names for -lcudart -lcublas -lcublasLt -lcurand -lnvrtc.
( cd "$C/lib" && for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    ln -sf "lib$l" "lib${l%%.so*}.so"; done )
# The wheels ship no libcuda (the driver's is used at run time): link against a stub made
# from cuda.h.
if [ ! -f "$C/lib/stubs/libcuda.so" ]; then
  mkdir -p "$C/lib/stubs"
  echo '#include <cuda.h>' | gcc -E -P -I"$C/include" -x c - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' | sed 's/\s*($//' | sort -u \
    | awk '{print "int "$1"(void){return 999;}"}' > "$C/lib/stubs/cuda_stub.c"
  gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$C/lib/stubs/libcuda.so" "$C/lib/stubs/cuda_stub.c"
fi
export PATH="$C/bin:$PATH" CUDA_ROOT="$C" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$C/lib:$C/lib/stubs:$NCCL_LIB:${LIBRARY_PATH:-}"
export CPATH="$NCCL_INCLUDE:${CPATH:-}"
tests=0
if [ "${1:-}" = "--tests" ]; then tests=1; shift; fi
cargo build --release --locked --features cuda,nccl --target-dir target/cuda "$@"
if [ "$tests" = 1 ]; then
  # The test executable's path, from cargo's JSON messages (its errors still reach stderr).
  bin="$(cargo test --release --locked --features cuda,nccl --target-dir target/cuda --test integration \
    --no-run --message-format=json "$@" \
    | python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("executable") and m.get("target", {}).get("kind") == ["test"]:
        print(m["executable"])')"
  [ -n "$bin" ] || { echo "build-cuda: the test build failed" >&2; exit 1; }
  cp "$bin" target/cuda/release/tuna-tests
  # Stripped and packed for a device run (which carries 64 MiB at most): about 19 MB.
  pack="$(mktemp -d)"
  trap 'rm -rf "$pack"' EXIT
  strip -o "$pack/tuna" target/cuda/release/tuna
  strip -o "$pack/tuna-tests" target/cuda/release/tuna-tests
  tar -C "$pack" -cJf target/cuda/gpu-check.tar.xz tuna tuna-tests
  rm -rf "$pack"
  echo "build-cuda: target/cuda/release/tuna-tests (the integration tests, GPU parity included), both packed in target/cuda/gpu-check.tar.xz" >&2
fi
echo "build-cuda: target/cuda/release/tuna (CUDA, sm_${CUDA_COMPUTE_CAP}); on the GPU machine put site-packages/nvidia/cu13/lib and NCCL's lib ($NCCL_LIB here) on LD_LIBRARY_PATH" >&2
