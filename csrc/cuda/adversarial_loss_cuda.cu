// CUDA kernels of the fused pixel-wise adversarial loss: torch glue (checks, allocation of the
// outputs, dispatch). The kernels are in adversarial_loss_kernels.cuh, their launch plan (grids,
// block sizes, temporaries, the launches and their arguments) in adversarial_loss_launch.cuh,
// shared with the CPU emulation test (tests/cuda_emulation/adversarial_driver.cpp), and the
// per-element math shared with the CPU kernel in rtda/adversarial_math.h.
//
//   u = bilinear_resize(logits, (H, W))   (upsample_bilinear2d, align_corners=False; never stored)
//   loss(pixel) = BCE-with-logits(u, y),  y = target[pixel] or the constant label
//   d loss / d logits = R^T g,  g = (sigmoid(u) - y) * c,  R the (separable) resize operator,
//   c = 1/M (mean, M = N*C*H*W), 1 (sum), grad_loss[pixel] (backward of reduction none),
//   0.5/M_s and 0.5/M_t (discriminator).
//
// Kernel A, resize_bce_rows_kernel: blocks over the N*C*H output rows (a few consecutive rows per
// block, at most kTargetRowBlocks blocks per map), one thread per output pixel of a chunk of the
// row (the block size is W rounded to whole warps, 64..256). It computes u (4 taps), the BCE and
// its derivative once per pixel, and writes, depending on the call: the loss map (reduction none,
// coalesced), the thread's running loss sum (reduced over the block in a fixed order, one partial
// per block), and the horizontal half of R^T: rows[plane, oy, ix] = sum_ox wx(ox -> ix) g(oy, ox),
// a planes x H x w buffer (w the low-res width).
// Kernel B, finish_kernel: the vertical half, grad[plane, iy, ix] = c * sum_oy wy(oy -> iy)
// rows[plane, oy, ix], one block per (low-res row, 32 columns), 8 output rows summed in parallel
// per column and combined in order; plus one last block that sums the per-block loss partials in a
// fixed order and writes the 0-dim loss (the discriminator's two maps run in the same two
// launches, their blocks one after the other). Reduction none is kernel A alone.
//
// Why separable and not a plain gather: a low-res element's gradient gathers over the output
// pixels whose taps reach it, (2 H/h) x (2 W/w) of them (~64 x 64 for 16 x 32 -> 512 x 1024); a
// full 2-D gather recomputes u, the exp and the target read ~4 times per pixel and serialises
// thousands of terms per thread, on only N*C*h*w = 2048 threads. Splitting R^T into its two 1-D
// factors does the per-pixel work exactly once (kernel A, 2M threads' worth of parallelism) and
// leaves small gathers: in kernel A over the chunk's pixels in shared memory (a group of up to 32
// lanes per low-res column, the group size following W / w), in kernel B over ~2 H / h rows of the
// rows buffer. Both gathers bound their range by inverting the tap formula conservatively
// (reach_range) and filter exactly with the same linear_tap as the forward, so borders, the
// clamped last index (i1 == i0), downsampling, non-integer factors, identity size and h or w = 1
// are exact. Memory: nothing of size H x W besides the loss map of reduction none and the inputs
// target / grad_loss; temporaries are the rows buffer (planes x H x w) and one partial per block,
// in the accumulation type.
//
// Determinism: no atomics. Every output element and every rows[] entry is written by one thread
// with a fixed summation order (a column reached by several chunks of a row is accumulated by the
// same block in chunk order, with a barrier between), the block sums are xor butterflies plus
// warp-ordered sums, and the loss partials are reduced by one block in a fixed order: repeated
// calls give identical bits.
//
// All tensors must share the logits' device and dtype (float16, bfloat16, float32, float64);
// accumulation is in at::opmath_type (float for the half types, double for double), outputs are in
// the logits' dtype. Argument validation proper happens in Python; the TORCH_CHECKs below only
// guard the kernels' assumptions.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/ArrayRef.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <rtda/adversarial_math.h>

#include "adversarial_loss_launch.cuh"
#include "torch_launch.cuh"

namespace {

namespace adv = rtda::cuda::adv;

using rtda::cuda::DeviceAllocator;
using rtda::cuda::StreamLauncher;

// A 4-d non-empty CUDA map of `like`'s device and dtype (`like` itself for the first one).
void check_map(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), op, " (CUDA): ", name, " is on ", t.device(),
              " but ", like.device(), " was expected");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, " (CUDA): ", name, " has dtype ",
              t.scalar_type(), " but ", like.scalar_type(), " was expected");
  TORCH_CHECK(t.dim() == 4 && t.numel() > 0, op, " (CUDA): ", name,
              " must be a non-empty N x C x h x w tensor, got ", t.sizes());
}

std::array<int64_t, 2> output_hw(at::IntArrayRef output_size, const char* op) {
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1, op,
              " (CUDA): output_size must be [H, W] with H, W >= 1, got ", output_size);
  return {output_size[0], output_size[1]};
}

adv::MapShape shape_of(const at::Tensor& t) {
  return adv::MapShape{t.size(0) * t.size(1), t.size(2), t.size(3)};
}

// `t` (target or grad_loss) is N x C x H x W for the logits `logits`, same device and dtype.
at::Tensor loss_map_input(const at::Tensor& t, const at::Tensor& logits,
                          const std::array<int64_t, 2>& hw, const char* op, const char* name) {
  check_map(t, logits, op, name);
  const std::array<int64_t, 4> expected{logits.size(0), logits.size(1), hw[0], hw[1]};
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), op, " (CUDA): ", name, " must be ",
              at::IntArrayRef(expected), ", got ", t.sizes());
  return t.contiguous();
}

at::Tensor optional_target(const std::optional<at::Tensor>& target, const at::Tensor& logits,
                           const std::array<int64_t, 2>& hw, const char* op) {
  if (!target.has_value() || !target->defined()) return at::Tensor();
  return loss_map_input(*target, logits, hw, op, "target");
}

adv::LossPlan checked_plan(adv::Mode mode, const adv::MapShape* maps,
                           const std::array<int64_t, 2>& hw, bool compute_grad, const char* op) {
  const adv::LossPlan plan = adv::plan_loss(mode, maps, hw[0], hw[1], compute_grad);
  TORCH_CHECK(plan.fits, op, " (CUDA): problem too large for the kernels' index types or grids");
  return plan;
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* mutable_ptr_if(bool wanted, at::Tensor& t) {
  return wanted ? t.mutable_data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> adversarial_loss_cuda(const at::Tensor& logits_in,
                                                         const std::optional<at::Tensor>& target_in,
                                                         double target_value,
                                                         at::IntArrayRef output_size,
                                                         int64_t reduction, bool compute_grad) {
  constexpr const char* op = "adversarial_loss";
  check_map(logits_in, logits_in, op, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const std::array<int64_t, 2> hw = output_hw(output_size, op);
  TORCH_CHECK(reduction == rtda::kReduceNone || reduction == rtda::kReduceMean ||
                  reduction == rtda::kReduceSum,
              op, " (CUDA): reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = optional_target(target_in, logits, hw, op);
  const adv::Mode mode = reduction == rtda::kReduceNone   ? adv::Mode::kLossNone
                         : reduction == rtda::kReduceMean ? adv::Mode::kLossMean
                                                          : adv::Mode::kLossSum;
  const adv::MapShape shape = shape_of(logits);
  const adv::LossPlan plan = checked_plan(mode, &shape, hw, compute_grad, op);

  const at::TensorOptions options = logits.options();
  at::Tensor loss = mode == adv::Mode::kLossNone
                        ? at::empty({logits.size(0), logits.size(1), hw[0], hw[1]}, options)
                        : at::empty({}, options);
  at::Tensor grad = plan.grad ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  const StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  DeviceAllocator temporaries(options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "adversarial_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    adv::LossTensors<scalar_t> t{};
    t.map[0] = adv::MapTensors<scalar_t>{
        logits.const_data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(target),
        target_value,
        nullptr,
        mutable_ptr_if<scalar_t>(mode == adv::Mode::kLossNone, loss),
        mutable_ptr_if<scalar_t>(plan.grad, grad)};
    t.loss = mutable_ptr_if<scalar_t>(plan.reduce, loss);
    adv::launch_loss<scalar_t, acc_t>(plan, t, launcher, temporaries);
  });
  return {loss, grad};
}

at::Tensor adversarial_loss_backward_cuda(const at::Tensor& grad_loss_in,
                                          const at::Tensor& logits_in,
                                          const std::optional<at::Tensor>& target_in,
                                          double target_value, at::IntArrayRef output_size) {
  constexpr const char* op = "adversarial_loss_backward";
  check_map(logits_in, logits_in, op, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const std::array<int64_t, 2> hw = output_hw(output_size, op);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = optional_target(target_in, logits, hw, op);
  const at::Tensor grad_loss = loss_map_input(grad_loss_in, logits, hw, op, "grad_loss");
  const adv::MapShape shape = shape_of(logits);
  const adv::LossPlan plan = checked_plan(adv::Mode::kBackward, &shape, hw, true, op);

  at::Tensor grad = at::empty(logits.sizes(), logits.options());
  const StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  DeviceAllocator temporaries(logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "adversarial_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    adv::LossTensors<scalar_t> t{};
    t.map[0] = adv::MapTensors<scalar_t>{logits.const_data_ptr<scalar_t>(),
                                         ptr_or_null<scalar_t>(target),
                                         target_value,
                                         grad_loss.const_data_ptr<scalar_t>(),
                                         nullptr,
                                         grad.mutable_data_ptr<scalar_t>()};
    t.loss = nullptr;
    adv::launch_loss<scalar_t, acc_t>(plan, t, launcher, temporaries);
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cuda(
    const at::Tensor& d_source_in, const at::Tensor& d_target_in, double source_label,
    double target_label, at::IntArrayRef output_size, bool compute_grad) {
  constexpr const char* op = "discriminator_loss";
  check_map(d_source_in, d_source_in, op, "d_source");
  check_map(d_target_in, d_source_in, op, "d_target");
  const c10::cuda::CUDAGuard guard(d_source_in.device());
  const std::array<int64_t, 2> hw = output_hw(output_size, op);
  const at::Tensor d_source = d_source_in.contiguous();
  const at::Tensor d_target = d_target_in.contiguous();
  const adv::MapShape shapes[2] = {shape_of(d_source), shape_of(d_target)};
  const adv::LossPlan plan = checked_plan(adv::Mode::kDiscriminator, shapes, hw, compute_grad, op);

  const at::TensorOptions options = d_source.options();
  at::Tensor loss = at::empty({}, options);
  at::Tensor grad_source =
      plan.grad ? at::empty(d_source.sizes(), options) : at::empty({0}, options);
  at::Tensor grad_target =
      plan.grad ? at::empty(d_target.sizes(), options) : at::empty({0}, options);
  const StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  DeviceAllocator temporaries(options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d_source.scalar_type(),
                                  "discriminator_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    adv::LossTensors<scalar_t> t{};
    t.map[0] = adv::MapTensors<scalar_t>{d_source.const_data_ptr<scalar_t>(), nullptr,
                                         source_label, nullptr, nullptr,
                                         mutable_ptr_if<scalar_t>(plan.grad, grad_source)};
    t.map[1] = adv::MapTensors<scalar_t>{d_target.const_data_ptr<scalar_t>(), nullptr,
                                         target_label, nullptr, nullptr,
                                         mutable_ptr_if<scalar_t>(plan.grad, grad_target)};
    t.loss = loss.mutable_data_ptr<scalar_t>();
    adv::launch_loss<scalar_t, acc_t>(plan, t, launcher, temporaries);
  });
  return {loss, grad_source, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CUDA, m) {
  m.impl("adversarial_loss", TORCH_FN(adversarial_loss_cuda));
  m.impl("adversarial_loss_backward", TORCH_FN(adversarial_loss_backward_cuda));
  m.impl("discriminator_loss", TORCH_FN(discriminator_loss_cuda));
}
