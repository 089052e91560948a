// CUDA kernels of the fused self-training loss (op pseudo_label_loss): torch glue. The kernels are
// in pseudo_label_loss_kernels.cuh, their launches in pseudo_label_loss_launch.cuh (shared with
// the CPU emulation test, tests/cuda_emulation/pseudo_label_driver.cpp).
//
//   u_t, u_s = bilinear_resize(teacher, student) to (H, W)   (align_corners=False; never stored)
//   per pixel: label = argmax u_t (or the given class), confident = max softmax(u_t) > threshold,
//   loss = logsumexp(u_s) - u_s[label], weighted by the image's confident fraction when the
//   label is the pseudo-label; d loss / d student = R^T (coef * (softmax(u_s) - onehot)) / (N H W)
//
// Kernel A (rows_kernel): one block per output row, one thread per pixel of a chunk; the loss
// terms, then per class the gradient's horizontal half, rows[kind, plane, oy, ix], kept apart for
// pseudo-labelled and other pixels because the former's weight is known only once the image is
// done. Kernel B (weights_kernel): one block adds each image's row partials in order (weights,
// loss). Kernel C (grad_kernel): one thread per low-res element, the vertical half over the rows
// whose taps reach it, then weight * pseudo + other. As for the adversarial loss (whose reach_range
// and block_sum it reuses), there are no atomics: repeated calls give identical bits. Memory: the
// rows buffer (2 x N x C x H x w) and one partial per row, in the accumulation type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/ArrayRef.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include <rtda/checks.h>

#include "pseudo_label_loss_launch.cuh"
#include "torch_launch.cuh"

namespace {

namespace pl = rtda::cuda::pl;

std::tuple<at::Tensor, at::Tensor, at::Tensor> pseudo_label_loss_cuda(
    const at::Tensor& student_in, const at::Tensor& teacher_in,
    const std::optional<at::Tensor>& labels_in, double threshold, at::IntArrayRef output_size,
    bool compute_grad) {
  rtda::check_pseudo_label_args(student_in, teacher_in, labels_in, output_size);
  TORCH_CHECK(student_in.is_cuda() && teacher_in.device() == student_in.device() &&
                  (!labels_in.has_value() || labels_in->device() == student_in.device()),
              "pseudo_label_loss (CUDA): every tensor must be on the student's CUDA device");
  const c10::cuda::CUDAGuard guard(student_in.device());
  const at::Tensor student = student_in.contiguous();
  const at::Tensor teacher = teacher_in.contiguous();
  const at::Tensor labels = labels_in.has_value() ? labels_in->contiguous() : at::Tensor();
  const int64_t n = student.size(0), C = student.size(1), h = student.size(2), w = student.size(3);
  const int64_t H = output_size[0], W = output_size[1];
  const pl::Plan plan = pl::plan(n, C, h, w, H, W, compute_grad);
  TORCH_CHECK(plan.fits, "pseudo_label_loss (CUDA): problem too large for the kernels' grids");
  const at::TensorOptions options = student.options();
  at::Tensor loss = at::empty({}, options);
  at::Tensor weight = at::empty({n}, options);
  at::Tensor grad = compute_grad ? at::empty(student.sizes(), options) : at::empty({0}, options);
  const rtda::cuda::StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  rtda::cuda::DeviceAllocator temporaries(options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(),
                                  "pseudo_label_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pl::Job<scalar_t, acc_t> job{};
    job.student = student.const_data_ptr<scalar_t>();
    job.teacher = teacher.const_data_ptr<scalar_t>();
    job.labels = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
    job.weight = weight.mutable_data_ptr<scalar_t>();
    job.loss = loss.mutable_data_ptr<scalar_t>();
    job.grad = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    pl::set_sizes(job, n, C, h, w, H, W, threshold);
    pl::launch<scalar_t, acc_t>(job, plan, launcher, temporaries);
  });
  return {loss, weight, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CUDA, m) {
  m.impl("pseudo_label_loss", TORCH_FN(pseudo_label_loss_cuda));
}
