#!/usr/bin/env bash
# Builds this package the way a GPU user does, on a machine without a GPU: a fresh virtual
# environment under build/cuda-check/, the registry's CUDA build of the pinned torch with its CUDA
# libraries (wheels cached in build/cuda-check/wheels between runs), then
# `pip install --no-build-isolation .` with no CUDA-related environment variables, and checks:
#   - every op with a CUDA kernel registered it under the CUDA dispatch key;
#   - available_backends() reports cuda as built, with no device visible;
#   - the SASS architectures (and PTX) inside the built library.
#
#   make check-cuda-build          # or: TORCH_VERSION=2.13.0 bash scripts/check_cuda_build.sh
#
# Takes ~5 minutes here with the wheels cached (~10 with the ~3 GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
ROOT=build/cuda-check
VENV="$ROOT/venv"
WHEELS="$ROOT/wheels"
PY="$PWD/$VENV/bin/python"
say() { echo "check-cuda-build: $* ($((SECONDS - start)) s)"; }

if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "check-cuda-build: no CUDA toolkit (nvcc) on this machine; install one first." >&2
  exit 1
fi

# --isolated: ignore this machine's pip configuration (its local CPU wheels and version cap), so
# the registry's default (CUDA) build of torch is what a user would get.
mkdir -p "$WHEELS"
say "downloading torch==$TORCH_VERSION with its CUDA libraries into $WHEELS (cached)"
"$PYTHON" -m pip --isolated --disable-pip-version-check download --quiet --dest "$WHEELS" "torch==$TORCH_VERSION" numpy

say "fresh virtual environment $VENV"
rm -rf "$VENV" "$ROOT/cmake"
"$PYTHON" -m venv "$VENV"
"$PY" -m pip --isolated --disable-pip-version-check install --quiet --no-index --find-links "$WHEELS" "torch==$TORCH_VERSION" numpy
"$PY" -m pip install --quiet --disable-pip-version-check "scikit-build-core>=0.10" "cmake>=3.21" ninja 2>&1 \
  | grep -v "^WARNING: Location" || true

say "building rtda with the CUDA kernels (no CUDA_HOME, no TORCH_CUDA_ARCH_LIST)"
env -u CUDA_HOME -u CUDA_PATH -u TORCH_CUDA_ARCH_LIST -u CUDACXX \
  "$PY" -m pip install --verbose --no-build-isolation --no-deps \
  -Cbuild-dir="$ROOT/cmake" -Ccmake.define.RTDA_WITH_CUDA=REQUIRED . \
  > "$ROOT/build.log" 2>&1 || { tail -40 "$ROOT/build.log"; echo "check-cuda-build: FAIL build" >&2; exit 1; }
grep "rtda_kernels:" "$ROOT/build.log" | sed 's/^ *-- /  /' || true

say "importing the installed package"
# From another folder, so that the installed package, not this source tree, is imported.
(cd "$ROOT" && "$PY" - <<'EOF'
import torch
import rtda_kernels
from rtda_kernels import _extension

# Every op of the library; winograd_conv3x3 is CPU inference only by design.
cpu_only = {"winograd_conv3x3"}
ops = sorted(name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
             if name.startswith("rtda_kernels::") and "triton" not in name)
assert _extension.COMPILED_ERROR is None, _extension.COMPILED_ERROR
assert torch.version.cuda, "torch is a CPU build"
missing = [op for op in ops if op not in cpu_only and not _extension.has_compiled_kernel(op, "CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), library {_extension._C.__file__}")
print(f"  CUDA kernels registered: {', '.join(op for op in ops if op not in cpu_only)}")
cuda = rtda_kernels.available_backends()["cuda"]
print(f"  available_backends(): {cuda}")
assert not cuda.available and "built" in cuda.detail and "no CUDA device" in cuda.detail, cuda
EOF
)

CUOBJDUMP="$(command -v cuobjdump || true)"
if [[ -z "$CUOBJDUMP" ]]; then
  CUOBJDUMP="$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))')"
fi
LIB="$("$PY" -c 'import glob, os, sysconfig; print(glob.glob(os.path.join(sysconfig.get_paths()["platlib"], "rtda_kernels", "_C*.so"))[0])')"
sass="$("$CUOBJDUMP" --list-elf "$LIB" | grep -o 'sm_[0-9]*' | sort -u -V | tr '\n' ' ')"
ptx="$("$CUOBJDUMP" --list-ptx "$LIB" | grep -o 'sm_[0-9]*' | sort -u -V | tr '\n' ' ')"
echo "  SASS in $(basename "$LIB"): ${sass}"
echo "  PTX: ${ptx:-none}"
# What CMakeLists.txt asks for by default (cmake/rtda_cuda.cmake): CUDA 13 cannot target sm_70/72.
if [[ "$(nvcc --version | grep -o 'release [0-9]*' | grep -o '[0-9]*$')" -ge 13 ]]; then
  expected="sm_75 sm_80 sm_86 sm_87 sm_89 sm_90 "
else
  expected="sm_70 sm_72 sm_75 sm_80 sm_86 sm_87 sm_89 sm_90 "
fi
if [[ "$sass" != "$expected" || "$ptx" != "sm_90 " ]]; then
  echo "check-cuda-build: FAIL expected SASS ${expected}and PTX sm_90" >&2
  exit 1
fi

say "OK"
