// CUDA kernels of the fused depthwise-separable conv + LeakyReLU (kernels in
// dwsep_conv2d_kernels.cuh, per-element math shared with the CPU kernel in rtda/dwsep_math.h).
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
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include <rtda/dwsep_math.h>

#include "dwsep_conv2d_kernels.cuh"

namespace {

using rtda_cuda::ceil_div;
using rtda_cuda::Geometry;
using rtda_cuda::kChunk;
using rtda_cuda::kThreads;
using rtda_cuda::kTile;

// Target block counts when splitting the (n, pixel) reductions of backward (c) and (d).
constexpr int64_t kDwTargetBlocks = 1024;
constexpr int64_t kPwTargetBlocks = 512;
constexpr int64_t kMaxGridStrideBlocks = 65536;

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
  TORCH_CHECK(dw_weight.size(2) >= 1 && dw_weight.size(2) <= rtda_cuda::kMaxKernel,
              "dwsep_conv2d (CUDA): kernel size must be in [1, ", rtda_cuda::kMaxKernel, "]");
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

// Grid of the channel-mixing kernels: x = image * pixel tile, y = tile of `rows` channels.
dim3 channel_mix_grid(const Geometry& g, int64_t rows, int64_t* pixel_tiles) {
  *pixel_tiles = ceil_div(g.out_plane(), kTile);
  const int64_t gx = g.n * *pixel_tiles, gy = ceil_div(rows, kTile);
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535,
              "dwsep_conv2d (CUDA): problem too large for the launch grid");
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

unsigned grid_stride_blocks(int64_t total) {
  return static_cast<unsigned>(std::min(ceil_div(total, kThreads), kMaxGridStrideBlocks));
}

rtda::Activation make_activation(std::optional<double> negative_slope) {
  rtda::Activation act{};
  act.enabled = negative_slope.has_value();
  act.slope = negative_slope.has_value() ? static_cast<float>(*negative_slope) : 0.0f;
  return act;
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
  const rtda::Activation act = make_activation(negative_slope);

  at::Tensor y = at::empty({g.n, g.c_out, g.out_height, g.out_width}, x.options());
  int64_t pixel_tiles = 0;
  const dim3 grid = channel_mix_grid(g, g.c_out, &pixel_tiles);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwsep_conv2d_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rtda_cuda::dwsep_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), dw_weight.const_data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(dw_bias), pw_weight.const_data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(pw_bias), y.mutable_data_ptr<scalar_t>(), g, act, pixel_tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const rtda::Activation act = make_activation(negative_slope);
  const std::array<int64_t, 4> out_shape{g.n, g.c_out, g.out_height, g.out_width};
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(out_shape) && y.sizes() == grad_y.sizes(),
              "dwsep_conv2d_backward (CUDA): grad_y and y must be N x C_out x Ho x Wo");

  const at::ScalarType acc_dtype =
      x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // == opmath_type
  const at::TensorOptions acc_options = x.options().dtype(acc_dtype);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_dw_weight = at::empty(dw_weight.sizes(), x.options());
  at::Tensor grad_dw_bias = at::empty({g.c_in}, x.options());
  at::Tensor grad_pw_weight = at::empty(pw_weight.sizes(), x.options());
  at::Tensor grad_pw_bias = at::empty({g.c_out}, x.options());
  at::Tensor gd = at::empty({g.n, g.c_in, g.out_height, g.out_width}, acc_options);

  // Splits of the n * Ho * Wo positions summed over by (c) and (d).
  const int64_t positions = g.n * g.out_plane();
  const rtda_cuda::PositionSplit dw_split =
      rtda_cuda::split_positions(positions, g.c_in, kDwTargetBlocks, 1024, 1);
  const int64_t pw_c_tiles = ceil_div(g.c_in, kTile), pw_o_tiles = ceil_div(g.c_out, kTile);
  const rtda_cuda::PositionSplit pw_split = rtda_cuda::split_positions(
      positions, pw_c_tiles * pw_o_tiles, kPwTargetBlocks, 256, kChunk);
  const int64_t dw_splits = dw_split.splits, dw_slice = dw_split.slice;
  const int64_t pw_splits = pw_split.splits, pw_slice = pw_split.slice;
  TORCH_CHECK(g.c_in <= std::numeric_limits<int32_t>::max() && pw_o_tiles <= 65535,
              "dwsep_conv2d_backward (CUDA): problem too large for the launch grid");
  at::Tensor dw_partial = at::empty({dw_splits, g.c_in, g.taps() + 1}, acc_options);
  at::Tensor pw_partial = at::empty({pw_splits, g.c_out, g.c_in + 1}, acc_options);

  int64_t pixel_tiles = 0;
  const dim3 gd_grid = channel_mix_grid(g, g.c_in, &pixel_tiles);
  const dim3 dw_grid(static_cast<unsigned>(g.c_in), static_cast<unsigned>(dw_splits));
  const dim3 pw_grid(static_cast<unsigned>(pw_c_tiles), static_cast<unsigned>(pw_o_tiles),
                     static_cast<unsigned>(pw_splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dwsep_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_p = x.const_data_ptr<scalar_t>();
    const scalar_t* grad_y_p = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* y_p = y.const_data_ptr<scalar_t>();
    const scalar_t* dw_w_p = dw_weight.const_data_ptr<scalar_t>();
    const scalar_t* dw_b_p = optional_ptr<scalar_t>(dw_bias);
    const scalar_t* pw_w_p = pw_weight.const_data_ptr<scalar_t>();
    acc_t* gd_p = gd.mutable_data_ptr<acc_t>();

    // (a) gd = dL/dd.
    rtda_cuda::grad_depthwise_out_kernel<scalar_t, acc_t><<<gd_grid, kThreads, 0, stream>>>(
        grad_y_p, y_p, pw_w_p, gd_p, g, act, pixel_tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // (b) grad_x.
    rtda_cuda::grad_input_kernel<scalar_t, acc_t>
        <<<grid_stride_blocks(grad_x.numel()), kThreads, 0, stream>>>(
            gd_p, dw_w_p, grad_x.mutable_data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // (c) grad_dw_weight, grad_dw_bias.
    rtda_cuda::dw_grad_partial_kernel<scalar_t, acc_t><<<dw_grid, kThreads, 0, stream>>>(
        gd_p, x_p, dw_partial.mutable_data_ptr<acc_t>(), g, dw_slice);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    rtda_cuda::finalize_partials_kernel<scalar_t, acc_t>
        <<<grid_stride_blocks(dw_partial.numel() / dw_splits), kThreads, 0, stream>>>(
            dw_partial.const_data_ptr<acc_t>(), dw_splits, g.c_in, g.taps() + 1,
            grad_dw_weight.mutable_data_ptr<scalar_t>(), grad_dw_bias.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // (d) grad_pw_weight, grad_pw_bias.
    rtda_cuda::pw_grad_partial_kernel<scalar_t, acc_t><<<pw_grid, kThreads, 0, stream>>>(
        grad_y_p, y_p, x_p, dw_w_p, dw_b_p, pw_partial.mutable_data_ptr<acc_t>(), g, act,
        pw_slice);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    rtda_cuda::finalize_partials_kernel<scalar_t, acc_t>
        <<<grid_stride_blocks(pw_partial.numel() / pw_splits), kThreads, 0, stream>>>(
            pw_partial.const_data_ptr<acc_t>(), pw_splits, g.c_out, g.c_in + 1,
            grad_pw_weight.mutable_data_ptr<scalar_t>(), grad_pw_bias.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CUDA, m) {
  m.impl("dwsep_conv2d", TORCH_FN(dwsep_conv2d_cuda));
  m.impl("dwsep_conv2d_backward", TORCH_FN(dwsep_conv2d_backward_cuda));
}
