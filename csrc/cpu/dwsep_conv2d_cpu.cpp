// CPU kernels of the fused depthwise-separable conv + LeakyReLU (rtda_kernels::dwsep_conv2d).
//
// Forward works on tiles of output rows of one image: the depthwise output of the tile (all input
// channels) is computed into a small buffer that stays in cache, multiplied by the pointwise
// weights with one GEMM, and bias + activation are applied while writing y. The full depthwise
// output never exists in memory.
//
// Backward works on bands of output rows. Each band recomputes its depthwise tile, forms
// dL/dz from dL/dy and the sign of y, gets dL/dd with one GEMM and accumulates the weight gradients
// into per-thread buffers (summed in a fixed order at the end). dL/dx is *gathered* for the input
// rows the band owns, so bands never write the same memory: a band also computes dL/dd for the
// few halo rows above it whose windows reach into its input rows.
//
// All arithmetic happens in at::opmath_type<scalar_t> (float for float/half/bfloat16, double for
// double). Rows are de-interleaved into `stride` zero-padded phases so that every inner loop
// reads contiguous memory and vectorises; border columns use the point functions shared with the
// CUDA kernels (csrc/include/rtda/dwsep_math.h).
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
#include <type_traits>
#include <tuple>
#include <vector>

#include "dwsep_conv2d_tiles.h"
#include "small_gemm.h"
#include "rtda/checks.h"

namespace rtda::cpu {
namespace {

constexpr size_t kStreamingStoreBytes = size_t(8) << 20;

// y[t] = activation(z[t] + bias) for one output row, in y's dtype; for float with `stream`,
// aligned full vectors go out as non-temporal stores.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void write_output_row(const acc_t* __restrict__ z, acc_t bias, TypedLeakyReLU<acc_t> act,
                      int64_t count, bool stream, scalar_t* __restrict__ y) {
  int64_t t = 0;
  if constexpr (std::is_same_v<scalar_t, float> && kStreamingStores) {
    if (stream) {
      constexpr int L = lanes<float>();
      for (; t < count && reinterpret_cast<uintptr_t>(y + t) % kVectorBytes != 0; ++t) {
        y[t] = act.apply(z[t] + bias);
      }
      for (; t + L <= count; t += L) {
        const Vec<float> v = load_vec(z + t) + bias;
        const Vec<float> scaled = v * act.slope;
        stream_vec(y + t, v > 0 ? v : scaled);
      }
    }
  }
  for (; t < count; ++t) y[t] = static_cast<scalar_t>(act.apply(z[t] + bias));
}

// The forward's GEMM store: output channel o, pixels [col, col + count) of the tile go to y
// with the pointwise bias and the activation applied, straight from the GEMM's registers.
template <typename scalar_t, typename acc_t>
struct OutputStore {
  scalar_t* y_tile;  // y[n, 0, first pixel of the tile]
  int64_t plane;     // Ho * Wo
  const acc_t* bias;
  TypedLeakyReLU<acc_t> act;
  bool stream;
  void operator()(int64_t o, int64_t col, const acc_t* values, int64_t count) const {
    write_output_row<scalar_t, acc_t>(values, bias[o], act, count, stream, y_tile + o * plane + col);
  }
};

template <typename scalar_t>
void forward_kernel(const Geometry& g, const at::Tensor& x, const at::Tensor& dw_weight,
                    const std::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                    const std::optional<at::Tensor>& pw_bias, Activation act, at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const Params<acc_t> prm(dw_weight, dw_bias, pw_weight, acc_type);
  const at::Tensor pw_b = pw_bias.has_value()
                              ? pw_bias->to(acc_type).contiguous()
                              : at::zeros({g.out_channels}, x.options().dtype(acc_type));
  const int64_t rows = rows_per_tile(g, 1);
  const int64_t tiles = (g.out_height + rows - 1) / rows;
  const int64_t plane_out = g.out_height * g.out_width;
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* y_ptr = y.mutable_data_ptr<scalar_t>();

  // y is written once and read only by the next layer: when it is larger than the caches,
  // streaming stores skip the read-for-ownership of every output line.
  const bool stream = y.nbytes() >= kStreamingStoreBytes;
  at::parallel_for(0, g.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> d_buf(g.in_channels * rows * g.out_width);
    const acc_t* pw = prm.pw.template const_data_ptr<acc_t>();
    PlanePhases<acc_t> phases(g, rows);
    const TypedLeakyReLU<acc_t> a = act.as<acc_t>();  // hoisted: the loops below vectorise
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tiles;
      const int64_t oh0 = (task % tiles) * rows;
      const int64_t oh1 = std::min(g.out_height, oh0 + rows);
      const int64_t pixels = (oh1 - oh0) * g.out_width;
      depthwise_rows<scalar_t, acc_t>(g, x_ptr + n * g.in_channels * g.height * g.width,
                                      prm.dw.template const_data_ptr<acc_t>(),
                                      prm.dw_bias.template const_data_ptr<acc_t>(), oh0, oh1,
                                      d_buf.data(), pixels, phases, [](int64_t, const auto&) {});
      const OutputStore<scalar_t, acc_t> store{
          y_ptr + n * g.out_channels * plane_out + oh0 * g.out_width, plane_out,
          pw_b.template const_data_ptr<acc_t>(), a, stream};
      gemm_nn<acc_t>(g.out_channels, pixels, g.in_channels, pw, g.in_channels, d_buf.data(),
                     pixels, store);
    }
    store_fence();  // order this thread's streaming stores before the caller reads y
  });
}

at::Tensor dwsep_conv2d_cpu(const at::Tensor& x_in, const at::Tensor& dw_weight,
                            const std::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                            const std::optional<at::Tensor>& pw_bias, int64_t stride,
                            int64_t padding, std::optional<double> negative_slope) {
  check_dwsep_args(x_in, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = geometry_of(x, dw_weight, pw_weight, stride, padding);
  at::Tensor y = at::empty({g.batch, g.out_channels, g.out_height, g.out_width}, x.options());
  const Activation act = activation_of(negative_slope);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dwsep_conv2d_cpu",
                                  [&] {
                                    forward_kernel<scalar_t>(g, x, dw_weight, dw_bias, pw_weight,
                                                             pw_bias, act, y);
                                  });
  return y;
}

}  // namespace

// Defined in dwsep_conv2d_backward_cpu.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwsep_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const at::Tensor& dw_weight,
    const std::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight, int64_t stride,
    int64_t padding, std::optional<double> negative_slope);

TORCH_LIBRARY_IMPL(rtda_kernels, CPU, m) {
  m.impl("dwsep_conv2d", &dwsep_conv2d_cpu);
  m.impl("dwsep_conv2d_backward", &dwsep_conv2d_backward_cpu);
}

}  // namespace rtda::cpu
