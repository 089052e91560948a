#!/usr/bin/env bash
# Compile-check every CUDA source (csrc/cuda/*.cu) with nvcc for the architectures the CUDA 13
# build targets (sm_75, 80, 86, 87, 89, 90; CMakeLists.txt), warnings as errors. Needs no GPU: it
# only compiles (objects go to a temporary directory).
#
#   PYTHON=/path/to/python bash scripts/check_cuda.sh
#   CUDA_ARCHS="70 72" NVCC_EXTRA_FLAGS="-Xptxas -v" bash scripts/check_cuda.sh   # CUDA 12; ptxas info
#
# nvcc is looked up on PATH only, and required: without it the script fails (exit 1) with one
# line saying how to get it, so that a CI without the toolkit cannot pass with the CUDA sources
# unchecked. csrc/cuda/compile_check supplies the one generated header a CPU-only torch wheel lacks.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda: nvcc is required but not on PATH ($PATH): install the CUDA toolkit (13.x, e.g. apt-get install cuda-toolkit-13-0 from NVIDIA's repository, https://developer.nvidia.com/cuda-downloads) and put its bin on PATH (export PATH=/usr/local/cuda/bin:\$PATH)." >&2
  exit 1
fi

PY="${PYTHON:-python}"
TORCH_DIR="$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
CXX11_ABI="$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"

read -r -a ARCHS <<< "${CUDA_ARCHS:-75 80 86 87 89 90}"
read -r -a EXTRA <<< "${NVCC_EXTRA_FLAGS:-}"
GENCODE=()
ARCH_LIST=""
for a in "${ARCHS[@]}"; do
  GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}")
  ARCH_LIST+="${ARCH_LIST:+ }sm_${a}"
done

# The flags torch.utils.cpp_extension adds to every nvcc call (COMMON_NVCC_FLAGS), so the check
# sees the same half/bfloat16 operator set as a real extension build.
TORCH_NVCC_FLAGS=(
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  --expt-relaxed-constexpr
)

OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rtda_check_cuda.XXXXXX")"
trap 'rm -rf "$OUT_DIR"' EXIT

shopt -s nullglob
SOURCES=(csrc/cuda/*.cu)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "check_cuda: no csrc/cuda/*.cu files."
  exit 0
fi

# nvcc compiles the architectures of one file in parallel on this many threads (all cores).
THREADS="${NVCC_THREADS:-$(nproc)}"

failed=0
for src in "${SOURCES[@]}"; do
  obj="$OUT_DIR/$(basename "${src%.cu}").o"
  echo "check_cuda: nvcc $src [$ARCH_LIST] ..."
  start=$SECONDS
  if nvcc -std=c++17 -c "$src" -o "$obj" "${GENCODE[@]}" --threads "$THREADS" \
      -isystem csrc/cuda/compile_check \
      -isystem "$TORCH_DIR/include" \
      -isystem "$TORCH_DIR/include/torch/csrc/api/include" \
      -I csrc/include \
      -DTORCH_EXTENSION_NAME=none -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" \
      "${TORCH_NVCC_FLAGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} \
      -Xcompiler -fPIC \
      -Werror all-warnings -Xcompiler -Wall,-Werror; then
    echo "check_cuda: OK   $src ($((SECONDS - start)) s)"
  else
    echo "check_cuda: FAIL $src ($((SECONDS - start)) s)" >&2
    failed=1
  fi
done

exit "$failed"
