// Compile-check shim ONLY (scripts/check_cuda.sh puts csrc/cuda/compile_check on the include path).
//
// A real CUDA build of PyTorch generates this header; the CPU-only torch wheel used to
// compile-check the .cu files on machines without a GPU does not ship it, and <c10/cuda/...>
// headers include it. A real CUDA build never sees this directory and uses torch's own copy.
#pragma once

#define C10_CUDA_BUILD_SHARED_LIBS
