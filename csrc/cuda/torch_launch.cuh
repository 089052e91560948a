// The launcher and allocator policies with which the torch glue (*_cuda.cu) runs a launch plan
// (*_launch.cuh): real launches on the current stream and temporaries as device tensors. The CUDA
// emulation (tests/cuda_emulation/) runs the same plans with its own policies.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace rtda::cuda {

// A real launch on `stream`, checked.
struct StreamLauncher {
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  void operator()(dim3 grid, int block, void (*kernel)(Params...), const Args&... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Temporaries as device tensors, alive as long as this object (the caching allocator makes
// freeing them after the launches are enqueued safe).
class DeviceAllocator {
 public:
  explicit DeviceAllocator(const at::TensorOptions& options) : options_(options) {}

  template <typename T>
  T* allocate(int64_t numel) {
    buffers_.push_back(at::empty({numel}, options_.dtype(c10::CppTypeToScalarType<T>::value)));
    return buffers_.back().mutable_data_ptr<T>();
  }

 private:
  at::TensorOptions options_;
  std::vector<at::Tensor> buffers_;
};

}  // namespace rtda::cuda
