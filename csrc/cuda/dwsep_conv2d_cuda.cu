// CUDA kernels of the fused depthwise-separable conv + LeakyReLU: torch glue (checks, allocation of
// the outputs, dispatch). The kernels are in dwsep_conv2d_kernels.cuh, their launch plan (grids,
// reduction splits, temporaries, the launches and their arguments) in dwsep_conv2d_launch.cuh,
// shared with the CPU emulation test (tests/cuda_emulation/), and the per-element math shared with
// the CPU kernel in rtda/dwsep_math.h.
//
//   d = depthwise_conv(x, dw_weight, dw_bias, stride, padding)    N x C_in  x Ho x Wo
//   z = conv1x1(d, pw_weight, pw_bias)                             N x C_out x Ho x Wo
//   y = leaky_relu(z, negative_slope)  (or z when negative_slope is None)
//
// Forward: ONE kernel. The 1x1 conv is, per image, a small GEMM (C_out x C_in) * (C_in x Ho*Wo);
// a block owns a 64 (output channels) x 64 (pixels) tile of one image and walks the input channels
// in chunks of 16: it computes those 16 x 64 depthwise values into shared memory
// (rtda::depthwise_point), stages the matching 64 x 16 slice of pw_weight, and every thread adds
// the rank-16 update to its 4 x 4 register accumulators. The epilogue adds pw_bias, applies
// rtda::Activation and stores. d never touches global memory; the price is recomputing it once per
// 64 output channels, which is cheap next to the k*k-times-smaller memory traffic it saves.
//
// Backward (d is not saved: it is recomputed where needed; gz = dL/dz comes from grad_y and the
// sign of the saved y through Activation::grad_from_output, on the fly, never stored):
//   (a) gd = dL/dd (N x C_in x Ho x Wo, accumulation dtype) = pw_weight^T * gz, the same tile
//       scheme as the forward, rows being input channels;
//   (b) grad_x by gather: one thread per input element sums gd over the windows holding it
//       (rtda::depthwise_input_grad_point), so no atomics;
//   (c) grad_dw_weight / grad_dw_bias: per channel, sums over (n, pixel) of gd * x-window and gd;
//       blocks over (channel, split of the positions), taps kept in registers, block reduction;
//   (d) grad_pw_weight / grad_pw_bias: sums over (n, pixel) of gz[o] * d[c] and gz[o], with d
//       recomputed; blocks over (64 x 64 (o, c) tile, split of the positions).
//   (c) and (d) write per-split partials in the accumulation dtype; a second small kernel sums the
//   splits in a fixed order and casts to the weight dtype. No atomics: the result is deterministic.
//
// All tensors (including the optional biases) must share x's dtype and device; accumulation is in
// at::opmath_type (float for half / bfloat16 / float, double for double). Argument validation
// proper happens in Python; the TORCH_CHECKs below only guard the kernels' assumptions.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <rtda/checks.h>
#include <rtda/dwsep_math.h>

#include "dwsep_conv2d_launch.cuh"
#include "torch_launch.cuh"

namespace {

using rtda::cuda::DeviceAllocator;
using rtda::cuda::Geometry;
using rtda::cuda::StreamLauncher;

void check_tensor(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.is_cuda(), "dwsep_conv2d (CUDA): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == x.device(), "dwsep_conv2d (CUDA): ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "dwsep_conv2d (CUDA): ", name, " has dtype ",
              t.scalar_type(), " but x has dtype ", x.scalar_type());
}

// The optional bias, contiguous, or an undefined tensor for None.
at::Tensor optional_contiguous(const std::optional<at::Tensor>& t, const at::Tensor& x,
                               const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_tensor(*t, x, name);
  return t->contiguous();
}

void check_bias(const at::Tensor& bias, int64_t channels, const char* name) {
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == channels),
              "dwsep_conv2d (CUDA): ", name, " must have shape (", channels, ")");
}

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& dw_weight,
                       const at::Tensor& pw_weight, int64_t stride, int64_t padding) {
  TORCH_CHECK(x.dim() == 4, "dwsep_conv2d (CUDA): x must be N x C_in x H x W");
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == x.size(1) && dw_weight.size(1) == 1 &&
                  dw_weight.size(2) == dw_weight.size(3),
              "dwsep_conv2d (CUDA): dw_weight must be C_in x 1 x k x k");
  TORCH_CHECK(dw_weight.size(2) >= 1 && dw_weight.size(2) <= rtda::cuda::kMaxKernel,
              "dwsep_conv2d (CUDA): kernel size must be in [1, ", rtda::cuda::kMaxKernel, "]");
  TORCH_CHECK(pw_weight.dim() == 4 && pw_weight.size(1) == x.size(1) && pw_weight.size(2) == 1 &&
                  pw_weight.size(3) == 1,
              "dwsep_conv2d (CUDA): pw_weight must be C_out x C_in x 1 x 1");
  TORCH_CHECK(stride >= 1 && padding >= 0, "dwsep_conv2d (CUDA): bad stride / padding");
  Geometry g{};
  g.n = x.size(0);
  g.c_in = x.size(1);
  g.c_out = pw_weight.size(0);
  g.height = x.size(2);
  g.width = x.size(3);
  g.kernel = dw_weight.size(2);
  g.stride = stride;
  g.padding = padding;
  g.out_height = rtda::conv_out_size(g.height, g.kernel, stride, padding);
  g.out_width = rtda::conv_out_size(g.width, g.kernel, stride, padding);
  TORCH_CHECK(g.n > 0 && g.c_in > 0 && g.c_out > 0 && g.height > 0 && g.width > 0 &&
                  g.out_height > 0 && g.out_width > 0,
              "dwsep_conv2d (CUDA): empty input or output");
  return g;
}

at::Tensor dwsep_conv2d_cuda(const at::Tensor& x_in, const at::Tensor& dw_weight_in,
                             const std::optional<at::Tensor>& dw_bias_in,
                             const at::Tensor& pw_weight_in,
                             const std::optional<at::Tensor>& pw_bias_in, int64_t stride,
                             int64_t padding, std::optional<double> negative_slope) {
  check_tensor(x_in, x_in, "x");
  check_tensor(dw_weight_in, x_in, "dw_weight");
  check_tensor(pw_weight_in, x_in, "pw_weight");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw_weight = dw_weight_in.contiguous();
  const at::Tensor pw_weight = pw_weight_in.contiguous();
  const at::Tensor dw_bias = optional_contiguous(dw_bias_in, x, "dw_bias");
  const at::Tensor pw_bias = optional_contiguous(pw_bias_in, x, "pw_bias");
  const Geometry g = make_geometry(x, dw_weight, pw_weight, stride, padding);
  check_bias(dw_bias, g.c_in, "dw_bias");
  check_bias(pw_bias, g.c_out, "pw_bias");
  const rtda::Activation act = rtda::activation_of(negative_slope);

  const rtda::cuda::ForwardPlan plan = rtda::cuda::plan_forward(g);
  TORCH_CHECK(plan.fits, "dwsep_conv2d (CUDA): problem too large for the launch grid");

  at::Tensor y = at::empty({g.n, g.c_out, g.out_height, g.out_width}, x.options());
  const StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwsep_conv2d_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const rtda::cuda::ForwardTensors<scalar_t> tensors{
        x.const_data_ptr<scalar_t>(),
        dw_weight.const_data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(dw_bias),
        pw_weight.const_data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(pw_bias),
        y.mutable_data_ptr<scalar_t>()};
    rtda::cuda::launch_forward<scalar_t, acc_t>(plan, g, act, tensors, launcher);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwsep_conv2d_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& y_in,
    const at::Tensor& dw_weight_in, const std::optional<at::Tensor>& dw_bias_in,
    const at::Tensor& pw_weight_in, int64_t stride, int64_t padding,
    std::optional<double> negative_slope) {
  check_tensor(x_in, x_in, "x");
  check_tensor(grad_y_in, x_in, "grad_y");
  check_tensor(y_in, x_in, "y");
  check_tensor(dw_weight_in, x_in, "dw_weight");
  check_tensor(pw_weight_in, x_in, "pw_weight");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor dw_weight = dw_weight_in.contiguous();
  const at::Tensor pw_weight = pw_weight_in.contiguous();
  // dw_bias only matters through d (recomputed for grad_pw_weight).
  const at::Tensor dw_bias = optional_contiguous(dw_bias_in, x, "dw_bias");
  const Geometry g = make_geometry(x, dw_weight, pw_weight, stride, padding);
  check_bias(dw_bias, g.c_in, "dw_bias");
  const rtda::Activation act = rtda::activation_of(negative_slope);
  const std::array<int64_t, 4> out_shape{g.n, g.c_out, g.out_height, g.out_width};
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(out_shape) && y.sizes() == grad_y.sizes(),
              "dwsep_conv2d_backward (CUDA): grad_y and y must be N x C_out x Ho x Wo");

  const rtda::cuda::BackwardPlan plan = rtda::cuda::plan_backward(g);
  TORCH_CHECK(plan.fits, "dwsep_conv2d_backward (CUDA): problem too large for the launch grid");

  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_dw_weight = at::empty(dw_weight.sizes(), x.options());
  at::Tensor grad_dw_bias = at::empty({g.c_in}, x.options());
  at::Tensor grad_pw_weight = at::empty(pw_weight.sizes(), x.options());
  at::Tensor grad_pw_bias = at::empty({g.c_out}, x.options());
  const StreamLauncher launcher{c10::cuda::getCurrentCUDAStream()};
  DeviceAllocator temporaries(x.options());  // gd and the partials, in the accumulation dtype
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dwsep_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const rtda::cuda::BackwardTensors<scalar_t> tensors{
        grad_y.const_data_ptr<scalar_t>(),
        x.const_data_ptr<scalar_t>(),
        y.const_data_ptr<scalar_t>(),
        dw_weight.const_data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(dw_bias),
        pw_weight.const_data_ptr<scalar_t>(),
        grad_x.mutable_data_ptr<scalar_t>(),
        grad_dw_weight.mutable_data_ptr<scalar_t>(),
        grad_dw_bias.mutable_data_ptr<scalar_t>(),
        grad_pw_weight.mutable_data_ptr<scalar_t>(),
        grad_pw_bias.mutable_data_ptr<scalar_t>()};
    rtda::cuda::launch_backward<scalar_t, acc_t>(plan, g, act, tensors, launcher, temporaries);
  });
  return {grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CUDA, m) {
  m.impl("dwsep_conv2d", TORCH_FN(dwsep_conv2d_cuda));
  m.impl("dwsep_conv2d_backward", TORCH_FN(dwsep_conv2d_backward_cuda));
}
