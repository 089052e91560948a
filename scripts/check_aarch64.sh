#!/usr/bin/env bash
# Compile-check every C++ source the package builds for the CPU (csrc/python_module.cpp,
# csrc/cpu/*.cpp) for aarch64 (ARMv8.2-A: Jetson Xavier / Orin CPUs) with
# Debian's cross compiler, warnings as errors, against the installed torch's headers. Objects
# only, in a temporary directory: nothing is linked or run. An x86 intrinsic (immintrin.h, _mm*,
# __builtin_ia32_*) outside an `#if defined(__AVX...)`/`__x86_64__` guard fails this compile.
#
#   PYTHON=/path/to/python bash scripts/check_aarch64.sh
#
# Without aarch64-linux-gnu-g++ on PATH it says so and exits 0, unless RTDA_REQUIRE_AARCH64=1
# (then exit 1). Install the cross compiler with: apt-get install g++-aarch64-linux-gnu
set -euo pipefail

cd "$(dirname "$0")/.."

CXX=aarch64-linux-gnu-g++
OBJDUMP=aarch64-linux-gnu-objdump

if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "check_aarch64: $CXX not found on PATH; aarch64 compile check skipped" \
       "(enable it with: apt-get install g++-aarch64-linux-gnu)."
  if [[ "${RTDA_REQUIRE_AARCH64:-0}" == "1" ]]; then
    echo "check_aarch64: RTDA_REQUIRE_AARCH64=1, failing." >&2
    exit 1
  fi
  exit 0
fi

PY="${PYTHON:-python}"
TORCH_DIR="$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
CXX11_ABI="$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
# Python.h for csrc/python_module.cpp: the host Python's headers. Only pyconfig.h is per-platform,
# and x86_64 and aarch64 Linux agree on what python_module.cpp uses (LP64, little-endian).
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rtda_check_aarch64.XXXXXX")"
trap 'rm -rf "$OUT_DIR"' EXIT

shopt -s nullglob
SOURCES=(csrc/python_module.cpp csrc/cpu/*.cpp)

# The CMake build's CPU flags (-O3 there; -O2 is enough to exercise the vector code paths),
# with -march=native replaced by the Jetson CPUs' architecture.
FLAGS=(
  -std=c++17 -O2 -fopenmp -fPIC -march=armv8.2-a
  -I csrc/include
  -isystem "$TORCH_DIR/include"
  -isystem "$TORCH_DIR/include/torch/csrc/api/include"
  -isystem "$PY_INCLUDE"
  -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" -DRTDA_WITH_CUDA=0
  -Wall -Wextra -Werror
)

echo "check_aarch64: $("$CXX" --version | head -n 1), -march=armv8.2-a, ${#SOURCES[@]} sources"
# One compile per source, as many at once as there are CPUs (each takes ~10 s and ~1 GB);
# the results print in source order.
compile_one() {
  local src="$1" obj="$OUT_DIR/$(basename "${1%.cpp}").o" start=$SECONDS
  if ! "$CXX" "${FLAGS[@]}" -c "$src" -o "$obj" 2>"$obj.log"; then
    echo "check_aarch64: FAIL $src ($((SECONDS - start)) s)" >"$obj.status"
  elif ! "$OBJDUMP" -f "$obj" | grep -q 'architecture: aarch64'; then
    echo "check_aarch64: FAIL $src: object is not aarch64 ($((SECONDS - start)) s)" >"$obj.status"
  else
    echo "check_aarch64: OK   $src ($((SECONDS - start)) s)" >"$obj.status"
  fi
}

total_start=$SECONDS
max_jobs="$(nproc)"
for src in "${SOURCES[@]}"; do
  while (( $(jobs -rp | wc -l) >= max_jobs )); do
    wait -n
  done
  compile_one "$src" &
done
wait

failed=0
for src in "${SOURCES[@]}"; do
  obj="$OUT_DIR/$(basename "${src%.cpp}").o"
  cat "$obj.log" >&2
  cat "$obj.status"
  if grep -q FAIL "$obj.status"; then
    failed=1
  fi
done
echo "check_aarch64: total $((SECONDS - total_start)) s"

exit "$failed"
