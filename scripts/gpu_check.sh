#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, from a clean checkout and without network:
#   1. find the GPU (nvidia-smi -L) and a Python whose torch has CUDA (${PYTHON:-python3});
#   2. make a venv under build/gpu-check that sees that Python's packages (torch, triton, ...)
#      and install this package into it, building the CUDA kernels for the local GPU only
#      (TORCH_CUDA_ARCH_LIST = its compute capability; RTDA_WITH_CUDA=REQUIRED: no silent CPU-only
#      build), then check that the installed package's cuda backend loads;
#   3. run every `cuda`-marked test and the Triton backend's tests on the GPU, from a directory
#      where the installed package (not the source tree) is imported;
#   4. run the GPU benchmarks (python -m bench.gpu) and write docs/gpu.md, test summaries included.
# Meant to finish within 8 minutes on an H100-class machine; the benchmark stage gets whatever is
# left of GPU_CHECK_DEADLINE_S (default 450 s) after steps 1-3, within 60-300 s.
# Without a GPU it prints one line and exits 0 at once (torch is not even imported when
# nvidia-smi is missing or lists no GPU). A failed test or benchmark check does not stop the later
# steps; the exit status is 1 at the end. A failed build or a missing cuda backend stops at once.
#
#   bash scripts/gpu_check.sh                  # PYTHON=/path/to/python3 to pick the interpreter
#
# Environment: PYTHON, TORCH_CUDA_ARCH_LIST (default: the GPU's capability),
# GPU_CHECK_DEADLINE_S, GPU_CHECK_BENCH_BUDGET_S (overrides the computed budget),
# GPU_CHECK_TEST_TIMEOUT_S (per pytest run, default 240), GPU_CHECK_NVIDIA_SMI (default nvidia-smi).
set -euo pipefail

START=$SECONDS
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'gpu-check [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
no_gpu() { echo "gpu-check: no CUDA GPU on this machine ($1); nothing to do"; exit 0; }
die() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
limit() {  # seconds, command...: SIGINT at the limit (pytest then prints what it has), KILL 15 s later
  local seconds="$1"
  shift
  if command -v timeout >/dev/null 2>&1; then timeout -s INT -k 15 "$seconds" "$@"; else "$@"; fi
}

# -- 1. a GPU, and a torch that can use it -------------------------------------------------------
SMI="${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}"
command -v "$SMI" >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
gpus="$(limit 20 "$SMI" -L 2>/dev/null)" || no_gpu "nvidia-smi -L failed"
grep -q '^GPU [0-9]' <<<"$gpus" || no_gpu "nvidia-smi lists no GPU"

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON=/path/to/python3)"
probe='
import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"torch is not importable ({exc})")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
print("%d.%d" % torch.cuda.get_device_capability(0), torch.__version__, torch.version.cuda)
'
info="$("$PY" -c "$probe" 2>&1)" || no_gpu "$PY: $(tail -n 1 <<<"$info")"
read -r CAPABILITY TORCH_VERSION TORCH_CUDA <<<"$(tail -n 1 <<<"$info")"
say "$(head -n 1 <<<"$gpus")"
say "python $PY: torch $TORCH_VERSION, CUDA $TORCH_CUDA, compute capability $CAPABILITY"
command -v nvcc >/dev/null 2>&1 || say "note: nvcc is not on PATH; CMake looks for the toolkit itself"

WORK="$ROOT/build/gpu-check"
VENV="$WORK/venv"
RUN="$WORK/run"
mkdir -p "$WORK"
status=0

# -- 2. venv + build -----------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV (system site packages of $PY)"
  "$PY" -m venv --system-site-packages --without-pip "$VENV"
fi
VPY="$VENV/bin/python"
# When $PY is itself a venv, --system-site-packages means the base interpreter's packages, not
# $PY's: list $PY's site directories in a .pth file so that its torch, triton, pip... are seen.
site_dir="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
  >"$site_dir/_gpu_check_parent.pth"
"$VPY" -c 'import torch' || die "torch is not importable from $VPY"
if ! "$VPY" -m pip --version >/dev/null 2>&1; then
  "$VPY" -m ensurepip --default-pip >/dev/null 2>&1 || die "no pip for $VPY (and ensurepip failed)"
fi

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAPABILITY}"
unset RTDA_KERNELS_BACKEND TRITON_INTERPRET
say "building and installing rtda into $VENV (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST; log: $WORK/build.log)"
if ! "$VPY" -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check \
     --config-settings=build-dir="$WORK/cmake" \
     --config-settings=cmake.define.RTDA_WITH_CUDA=REQUIRED . >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  die "pip install failed (full log: $WORK/build.log)"
fi
say "installed"

# A directory with the repository's tests and benchmarks but not its packages: run from there,
# Python imports the installed rtda and rtda_kernels (with the compiled extension).
mkdir -p "$RUN"
for entry in "$ROOT"/*; do
  case "${entry##*/}" in
    rtda | rtda_kernels | build) ;;
    *) ln -sfn "$entry" "$RUN/${entry##*/}" ;;
  esac
done
check='
import sys
from pathlib import Path
import rtda_kernels
where = Path(rtda_kernels.__file__).resolve()
if Path(sys.prefix).resolve() not in where.parents:
    sys.exit(f"rtda_kernels was imported from {where}, not from the venv {sys.prefix}")
info = rtda_kernels.available_backends()
for backend in info.values():
    print(f"gpu-check: backend {backend}")
if not info["cuda"].available:
    sys.exit("the cuda backend is not available: " + info["cuda"].detail)
'
(cd "$RUN" && "$VPY" -c "$check") || die "the installed rtda_kernels has no working CUDA backend"

# -- 3. tests ------------------------------------------------------------------------------------
TESTS="$WORK/tests.txt"
: >"$TESTS"
run_tests() {  # name, pytest arguments...
  local name="$1" rc=0 log="$WORK/$1.log"
  shift
  say "tests: python -m pytest -q $* ..."
  set +e
  (cd "$RUN" && limit "${GPU_CHECK_TEST_TIMEOUT_S:-240}" \
     "$VPY" -m pytest -q -p bench.gpu_tests -p no:cacheprovider "$@") 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  local summary
  summary="$(grep -E '[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran' "$log" | tail -n 1)" ||
    summary=""
  if [[ $rc -eq 124 ]]; then
    summary="timed out after ${GPU_CHECK_TEST_TIMEOUT_S:-240} s${summary:+; $summary}"
  fi
  echo "$name: python -m pytest -q $* -> ${summary:-no summary} (exit $rc)" >>"$TESTS"
  grep '^gpu-check:' "$log" >>"$TESTS" || true
  if [[ $rc -ne 0 ]]; then
    say "tests: $name FAILED (exit $rc)"
    status=1
  fi
}
run_tests "cuda-marked tests" -m cuda tests
run_tests "Triton tests" tests/kernels -k triton

# -- 4. benchmarks -------------------------------------------------------------------------------
deadline="${GPU_CHECK_DEADLINE_S:-450}"
budget=$((deadline - (SECONDS - START) - 30))
if ((budget < 60)); then budget=60; fi
if ((budget > 300)); then budget=300; fi
budget="${GPU_CHECK_BENCH_BUDGET_S:-$budget}"
say "benchmarks: python -m bench.gpu --budget-s $budget ..."
if ! (cd "$RUN" && "$VPY" -m bench.gpu --device cuda --out "$ROOT/docs/gpu.md" \
        --budget-s "$budget" --tests "$TESTS" --command "bash scripts/gpu_check.sh"); then
  say "benchmarks: a case failed its check or raised (see docs/gpu.md)"
  status=1
fi

echo
cat "$TESTS"
elapsed=$((SECONDS - START))
say "done in $((elapsed / 60))m$((elapsed % 60))s: $([[ $status -eq 0 ]] && echo ok || echo FAILED); wrote docs/gpu.md"
exit "$status"
