// CPU kernels of the fused pixel-wise adversarial loss (ops adversarial_loss,
// adversarial_loss_backward and discriminator_loss; schemas in rtda_kernels/schemas.py).
//
// The loss is computed by bands of output rows without storing the resized map; the band engine
// and its description are in adversarial_loss_bands.h. Results are bitwise identical for any
// number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <rtda/adversarial_math.h>
#include <rtda/checks.h>

#include "adversarial_loss_bands.h"

namespace {

using namespace rtda::cpu::adversarial;

template <typename scalar_t, typename acc_t>
MapJob<scalar_t, acc_t> make_job(const at::Tensor& logits, at::IntArrayRef output_size) {
  return MapJob<scalar_t, acc_t>(logits.const_data_ptr<scalar_t>(), logits.size(0) * logits.size(1),
                                 logits.size(2), logits.size(3), output_size[0], output_size[1]);
}

int64_t map_numel(const at::Tensor& logits, at::IntArrayRef output_size) {
  return logits.size(0) * logits.size(1) * output_size[0] * output_size[1];
}

at::Tensor empty_grad(const at::Tensor& logits, bool wanted) {
  return wanted ? at::empty(logits.sizes(), logits.options()) : at::empty({0}, logits.options());
}

std::tuple<at::Tensor, at::Tensor> adversarial_loss_cpu(const at::Tensor& logits_in,
                                                        const std::optional<at::Tensor>& target_in,
                                                        double target_value,
                                                        at::IntArrayRef output_size,
                                                        int64_t reduction, bool compute_grad) {
  rtda::check_adversarial_args(logits_in, target_in, output_size, reduction);
  const at::Tensor logits = logits_in.contiguous();
  const std::optional<at::Tensor> target =
      target_in.has_value() ? std::optional<at::Tensor>(target_in->contiguous()) : std::nullopt;
  const bool per_pixel = reduction == rtda::kReduceNone;
  const bool grad = compute_grad && !per_pixel;
  at::Tensor loss = per_pixel ? at::empty({logits.size(0), logits.size(1), output_size[0],
                                           output_size[1]}, logits.options())
                              : at::empty({}, logits.options());
  at::Tensor grad_logits = empty_grad(logits, grad);
  const int64_t count = map_numel(logits, output_size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "adversarial_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto job = make_job<scalar_t, acc_t>(logits, output_size);
    job.target = target ? target->const_data_ptr<scalar_t>() : nullptr;
    job.target_value = static_cast<acc_t>(target_value);
    job.coefficient = reduction == rtda::kReduceMean ? acc_t(1) / static_cast<acc_t>(count) : acc_t(1);
    job.loss_map = per_pixel ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    job.sum_loss = !per_pixel;
    job.grad = grad ? grad_logits.mutable_data_ptr<scalar_t>() : nullptr;
    const double total = run_jobs<scalar_t, acc_t>({&job})[0];
    if (!per_pixel) {
      *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(
          reduction == rtda::kReduceMean ? total / static_cast<double>(count) : total);
    }
  });
  return {loss, grad_logits};
}

at::Tensor adversarial_loss_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& logits_in,
                                         const std::optional<at::Tensor>& target_in,
                                         double target_value, at::IntArrayRef output_size) {
  rtda::check_adversarial_args(logits_in, target_in, output_size, rtda::kReduceNone);
  rtda::check_loss_map("grad_loss", grad_loss_in, logits_in, output_size);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous();
  const std::optional<at::Tensor> target =
      target_in.has_value() ? std::optional<at::Tensor>(target_in->contiguous()) : std::nullopt;
  at::Tensor grad_logits = empty_grad(logits, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "adversarial_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto job = make_job<scalar_t, acc_t>(logits, output_size);
    job.target = target ? target->const_data_ptr<scalar_t>() : nullptr;
    job.target_value = static_cast<acc_t>(target_value);
    job.grad_loss = grad_loss.const_data_ptr<scalar_t>();
    job.grad = grad_logits.mutable_data_ptr<scalar_t>();
    run_jobs<scalar_t, acc_t>({&job});
  });
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cpu(
    const at::Tensor& source_in, const at::Tensor& target_in, double source_label,
    double target_label, at::IntArrayRef output_size, bool compute_grad) {
  rtda::check_adversarial_args(source_in, std::nullopt, output_size, rtda::kReduceMean);
  rtda::check_adversarial_args(target_in, std::nullopt, output_size, rtda::kReduceMean);
  TORCH_CHECK(source_in.scalar_type() == target_in.scalar_type(),
              "discriminator_loss: d_source and d_target must share a dtype");
  const at::Tensor source = source_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  at::Tensor loss = at::empty({}, source.options());
  at::Tensor grad_source = empty_grad(source, compute_grad);
  at::Tensor grad_target = empty_grad(target, compute_grad);
  const int64_t source_count = map_numel(source, output_size);
  const int64_t target_count = map_numel(target, output_size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "discriminator_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto source_job = make_job<scalar_t, acc_t>(source, output_size);
    auto target_job = make_job<scalar_t, acc_t>(target, output_size);
    source_job.target_value = static_cast<acc_t>(source_label);
    target_job.target_value = static_cast<acc_t>(target_label);
    source_job.coefficient = acc_t(0.5) / static_cast<acc_t>(source_count);
    target_job.coefficient = acc_t(0.5) / static_cast<acc_t>(target_count);
    source_job.sum_loss = target_job.sum_loss = true;
    if (compute_grad) {
      source_job.grad = grad_source.mutable_data_ptr<scalar_t>();
      target_job.grad = grad_target.mutable_data_ptr<scalar_t>();
    }
    const std::vector<double> sums = run_jobs<scalar_t, acc_t>({&source_job, &target_job});
    const double value = 0.5 * (sums[0] / static_cast<double>(source_count) +
                                sums[1] / static_cast<double>(target_count));
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(value);
  });
  return {loss, grad_source, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CPU, m) {
  m.impl("adversarial_loss", &adversarial_loss_cpu);
  m.impl("adversarial_loss_backward", &adversarial_loss_backward_cpu);
  m.impl("discriminator_loss", &discriminator_loss_cpu);
}
