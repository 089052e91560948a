// Host-side launch plan of the self-training loss's CUDA kernels (pseudo_label_loss_kernels.cuh):
// grids, temporaries and the three launches. Shared by the torch glue
// (pseudo_label_loss_cuda.cu: real launches, temporaries from at::empty) and the CPU emulation
// test (tests/cuda_emulation/pseudo_label_driver.cpp), with the Launcher and Allocator policies
// described in adversarial_loss_launch.cuh. Nothing here may use torch or the CUDA runtime API.
#pragma once

#include <cstdint>

#include "pseudo_label_loss_kernels.cuh"

namespace rtda::cuda {
namespace pl {

constexpr int64_t kMaxBlocks = 2147483647;

struct Plan {
  int64_t row_blocks;   // kernel A: N * H
  int64_t grad_blocks;  // kernel C: ceil(N * C * h * w / kThreads), 0 without a gradient
  int64_t rows_numel;   // the rows buffer: 2 * N * C * H * w, 0 without a gradient
  bool fits;
};

inline Plan plan(int64_t n, int64_t classes, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                 bool grad) {
  Plan p{};
  p.row_blocks = n * out_h;
  const int64_t numel = n * classes * h * w;
  p.grad_blocks = grad ? (numel + kThreads - 1) / kThreads : 0;
  p.rows_numel = grad ? 2 * n * classes * out_h * w : 0;
  // Low-res indices fit in int in shared memory's neighbours; labels and rows are int64-indexed.
  p.fits = n >= 1 && classes >= 1 && p.row_blocks <= kMaxBlocks && p.grad_blocks <= kMaxBlocks &&
           out_w <= kMaxBlocks && w <= kMaxBlocks && classes < 2147483647;
  return p;
}

// The sizes, scales and threshold of `job` (its tensors are the caller's).
template <typename scalar_t, typename Acc>
void set_sizes(Job<scalar_t, Acc>& job, int64_t n, int64_t classes, int64_t h, int64_t w,
               int64_t out_h, int64_t out_w, double threshold) {
  job.threshold = static_cast<Acc>(threshold);
  job.scale_y = rtda::resize_scale<Acc>(h, out_h);
  job.scale_x = rtda::resize_scale<Acc>(w, out_w);
  job.scale = static_cast<Acc>(1.0 / (static_cast<double>(n) * out_h * out_w));
  job.n = n;
  job.classes = classes;
  job.h = h;
  job.w = w;
  job.out_h = out_h;
  job.out_w = out_w;
}

// Runs the kernels for `job` (inputs, outputs and sizes set; rows, partial and weight_acc are
// allocated here). `job.grad` decides whether the gradient is computed.
template <typename scalar_t, typename Acc, typename Launcher, typename Allocator>
void launch(Job<scalar_t, Acc> job, const Plan& p, const Launcher& run, Allocator& alloc) {
  job.partial = alloc.template allocate<Acc>(p.row_blocks * 3);
  job.weight_acc = alloc.template allocate<Acc>(job.n);
  job.rows = job.grad != nullptr ? alloc.template allocate<Acc>(p.rows_numel) : nullptr;
  run(dim3(static_cast<unsigned>(p.row_blocks)), kThreads, &rows_kernel<scalar_t, Acc>, job);
  run(dim3(1), kThreads, &weights_kernel<scalar_t, Acc>, job);
  if (job.grad != nullptr) {
    run(dim3(static_cast<unsigned>(p.grad_blocks)), kThreads, &grad_kernel<scalar_t, Acc>, job);
  }
}

}  // namespace pl
}  // namespace rtda::cuda
