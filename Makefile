# The README's commands. `make demo` sets everything up and runs the main job; `make test` sets
# everything up and runs the tests (this is what .ci/run calls). Both work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned: 2.13.0 is the CPU build on this machine's disk. An unpinned torch would pull a
# multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.rtda-installed

.PHONY: setup demo test test-python check-cuda check-aarch64 check-cuda-build gpu-resources gpu-check \
	bench bench-smoke clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Installs torch first, then the build tools, then this package without build isolation
# (an isolated build would fetch its own CUDA torch). Re-runs when the build inputs change.
$(STAMP): $(PY) pyproject.toml CMakeLists.txt $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh csrc/include/rtda/*.h cmake/*.cmake cmake/*.in)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)" numpy
	$(PIP) install --quiet "scikit-build-core>=0.10" "cmake>=3.21" ninja triton \
		"pytest>=8" "hypothesis>=6" "pytest-benchmark>=4" \
		"onnx>=1.16" "onnxscript>=0.3" "onnxruntime>=1.18"
	$(PIP) install --quiet --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Table I on the built-in toy pair, one seed: source-only, source-only + target BatchNorm,
# adapted (fused) and target-only training, each scored on the target val split. Three seeds
# and the self-training rows too: `$(PY) -m rtda.train.table1` (every row, seeds 0 1 2).
demo: setup
	$(PY) -m rtda.train.table1 --seeds 0 --rows source-only target-bn adapt-fused target-only \
		--out runs/demo --resume

test: setup test-python check-cuda check-aarch64

test-python: setup
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q bench --benchmark-disable

# nvcc compile of every .cu file for the CUDA 13 build's architectures (no GPU needed); fails
# when nvcc is not on PATH, so a CI without the CUDA toolkit cannot pass unchecked.
check-cuda: setup
	PYTHON=$(PY) bash scripts/check_cuda.sh

# The C++ CPU kernels cross-compiled for aarch64 (Jetson's CPU); skipped without
# g++-aarch64-linux-gnu (apt-get install g++-aarch64-linux-gnu).
check-aarch64: setup
	PYTHON=$(PY) bash scripts/check_aarch64.sh

# The CUDA build as a GPU user gets it: the registry's CUDA torch in build/cuda-check/venv, this
# package built with its CUDA kernels, imported, SASS listed (~5 minutes; not part of `make test`).
# Run it after any change to csrc/cuda/, CMakeLists.txt, cmake/ or pyproject.toml.
check-cuda-build:
	TORCH_VERSION=$(patsubst torch==%,%,$(TORCH)) bash scripts/check_cuda_build.sh

# docs/gpu_resources.md: registers, spills, shared memory of every Triton and CUDA kernel per target.
gpu-resources: setup
	$(PY) -m bench.gpu_resources

# On a machine with a CUDA GPU: build with CUDA, run the GPU tests and benchmarks, write docs/gpu.md.
# Without a GPU it says so and exits 0.
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh

# Every benchmark (pytest bench --benchmark-only), rendered as docs/benchmarks.md with charts.
bench: setup
	$(PY) -m bench.report --readme README.md

clean:
	rm -rf build $(VENV) .pytest_cache .benchmarks
