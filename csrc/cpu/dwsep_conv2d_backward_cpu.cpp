// CPU backward of rtda_kernels::dwsep_conv2d (see dwsep_conv2d_cpu.cpp for the overall plan).
//
// A task is one band of output rows [r0, r1) of one image. It needs dL/dd for the rows
// [halo0, r1), halo0 = r0 - floor((k-1)/s): those are all the outputs whose windows reach the
// input rows the band owns, [r0*s - p, r1*s - p) (the first band also owns the rows above, the last
// one the rows below). Weight gradients are accumulated over the owned rows only, into per-thread
// buffers that are summed in thread order at the end, so results do not depend on scheduling.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "dwsep_conv2d_tiles.h"
#include "small_gemm.h"
#include "rtda/checks.h"

namespace rtda::cpu {
namespace {

// Per-thread partial sums of the four weight gradients, in accumulation type (the pointwise one
// transposed, C_in x C_out, as the GEMM that accumulates it produces it).
struct WeightGrads {
  at::Tensor pw_t, pw_bias, dw, dw_bias;
  WeightGrads(const Geometry& g, const at::TensorOptions& opts)
      : pw_t(at::zeros({g.in_channels, g.out_channels}, opts)),
        pw_bias(at::zeros({g.out_channels}, opts)),
        dw(at::zeros({g.in_channels, g.kernel * g.kernel}, opts)),
        dw_bias(at::zeros({g.in_channels}, opts)) {}
};

// dL/dx of input row h of one channel, gathered from dL/dd rows [row0, row1) (grad points at
// row0). Each column phase r (w = m*s + r - p) is a sum of shifted dL/dd rows: contiguous loops
// for the interior, the shared point function at the borders.
template <typename acc_t, typename scalar_t>
void input_grad_row(const Geometry& g, const acc_t* grad, int64_t row0, int64_t row1,
                    const acc_t* wc, int64_t h, scalar_t* row_out, acc_t* __restrict__ phase) {
  const int64_t s = g.stride, k = g.kernel, p = g.padding, wo = g.out_width;
  const int64_t oh_first = std::max(row0, first_output_covering(h, k, s, p));
  const int64_t oh_last = std::min(row1 - 1, last_output_covering(h, s, p));
  for (int64_t r = 0; r < s; ++r) {
    // Columns of this phase inside the row: m in [m_begin, m_end).
    const int64_t m_begin = (p - r + s - 1) / s;
    const int64_t m_end = (g.width - 1 + p - r) >= 0 ? (g.width - 1 + p - r) / s + 1 : 0;
    if (m_begin >= m_end) continue;
    // Taps j = r + q*s; interior columns are those where every m - q is a valid output column.
    const int64_t taps = r < k ? (k - 1 - r) / s + 1 : 0;
    const int64_t in_lo = std::min(std::max(m_begin, taps - 1), m_end);
    const int64_t in_hi = std::max(in_lo, std::min(m_end, wo));
    const int64_t count = in_hi - in_lo;
    std::fill(phase, phase + count, acc_t(0));
    for (int64_t oh = oh_first; oh <= oh_last && taps > 0; ++oh) {
      const int64_t i = h - input_coord(oh, 0, s, p);
      const acc_t* grow = grad + (oh - row0) * wo + in_lo;
      for (int64_t q = 0; q < taps; ++q) {
        const acc_t wv = wc[i * k + r + q * s];
        const acc_t* __restrict__ src = grow - q;
        for (int64_t t = 0; t < count; ++t) phase[t] += wv * src[t];
      }
    }
    const auto point = [&](int64_t m) {
      const int64_t w = m * s + r - p;
      row_out[w] = static_cast<scalar_t>(
          depthwise_input_grad_point<acc_t>(grad, wc, row0, row1, wo, k, s, p, h, w));
    };
    for (int64_t m = m_begin; m < in_lo; ++m) point(m);
    scalar_t* out = row_out + (in_lo * s + r - p);
    for (int64_t t = 0; t < count; ++t) out[t * s] = static_cast<scalar_t>(phase[t]);
    for (int64_t m = in_hi; m < m_end; ++m) point(m);
  }
}

// Adds to grad_weight[i*k + j] the sum over output rows [r0, r1) (grad points at row r0) of
// dL/dd * (the input that tap (i, j) reads). Vector accumulators run over all rows of the band,
// so each tap needs one horizontal sum per band.
template <typename acc_t>
void depthwise_weight_grad(const Geometry& g, const acc_t* grad, int64_t r0, int64_t r1,
                           const PlanePhases<acc_t>& phases, acc_t* grad_weight) {
  using V = Vec<acc_t>;
  constexpr int L = lanes<acc_t>();
  const int64_t wo = g.out_width, full = wo / L * L;
  for (int64_t i = 0; i < g.kernel; ++i) {
    for (int64_t j = 0; j < g.kernel; ++j) {
      V acc = V{};
      acc_t tail = 0;
      for (int64_t oh = r0; oh < r1; ++oh) {
        const int64_t h = input_coord(oh, i, g.stride, g.padding);
        if (h < 0 || h >= g.height) continue;
        const acc_t* grow = grad + (oh - r0) * wo;
        const acc_t* src = phases.tap(h, j);
        int64_t ow = 0;
        for (; ow < full; ow += L) acc += load_vec(grow + ow) * load_vec(src + ow);
        for (; ow < wo; ++ow) tail += grow[ow] * src[ow];
      }
      for (int v = 0; v < L; ++v) tail += acc[v];
      grad_weight[i * g.kernel + j] += tail;
    }
  }
}

template <typename scalar_t>
void backward_kernel(const Geometry& g, const Activation act, const at::Tensor& grad_y,
                     const at::Tensor& x, const at::Tensor& y, const at::Tensor& dw_weight,
                     const std::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                     at::Tensor& grad_x, WeightGrads& total) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const auto opts = x.options().dtype(acc_type);
  const Params<acc_t> prm(dw_weight, dw_bias, pw_weight, acc_type);
  const at::Tensor pw_t = prm.pw.t().contiguous();  // C_in x C_out
  const int64_t halo = (g.kernel - 1) / g.stride;
  const int64_t rows = rows_per_tile(g, std::max<int64_t>(1, 2 * halo));
  const int64_t bands = (g.out_height + rows - 1) / rows;
  const int64_t plane_in = g.height * g.width, plane_out = g.out_height * g.out_width;
  const int64_t kk = g.kernel * g.kernel;
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  const scalar_t* y_ptr = y.const_data_ptr<scalar_t>();
  const scalar_t* gy_ptr = grad_y.const_data_ptr<scalar_t>();
  scalar_t* gx_ptr = grad_x.mutable_data_ptr<scalar_t>();
  const acc_t* dw = prm.dw.template const_data_ptr<acc_t>();

  const int threads = at::get_num_threads();
  std::vector<WeightGrads> partial;
  partial.reserve(threads);
  for (int t = 0; t < threads; ++t) partial.emplace_back(g, opts);

  at::parallel_for(0, g.batch * bands, 1, [&](int64_t begin, int64_t end) {
    WeightGrads& acc = partial[at::get_thread_num()];
    const int64_t cap = (rows + halo) * g.out_width;
    std::vector<acc_t> gz_buf(g.out_channels * cap), gd_buf(g.in_channels * cap);
    std::vector<acc_t> d_buf(g.in_channels * rows * g.out_width);
    std::vector<acc_t> gz_t(rows * g.out_width * g.out_channels);
    std::vector<acc_t> phase_buf(g.out_width + 1);
    PlanePhases<acc_t> phases(g, rows);
    const TypedLeakyReLU<acc_t> a = act.as<acc_t>();  // hoisted: the loops below vectorise
    acc_t* gpw_t = acc.pw_t.template mutable_data_ptr<acc_t>();
    acc_t* gdw = acc.dw.template mutable_data_ptr<acc_t>();
    acc_t* gdw_b = acc.dw_bias.template mutable_data_ptr<acc_t>();
    acc_t* gpw_b = acc.pw_bias.template mutable_data_ptr<acc_t>();

    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / bands;
      const int64_t r0 = (task % bands) * rows, r1 = std::min(g.out_height, r0 + rows);
      const int64_t h0 = std::max<int64_t>(0, r0 - halo);
      const int64_t all = (r1 - h0) * g.out_width, own = (r1 - r0) * g.out_width;
      const int64_t own_off = (r0 - h0) * g.out_width;
      // dL/dz from dL/dy and the sign of y; dL/dd = W_pw^T dL/dz.
      acc_t* gzp = gz_buf.data();
      for (int64_t o = 0; o < g.out_channels; ++o) {
        const int64_t off = (n * g.out_channels + o) * plane_out + h0 * g.out_width;
        const scalar_t* __restrict__ gy_row = gy_ptr + off;
        const scalar_t* __restrict__ y_row = y_ptr + off;
        acc_t* __restrict__ gz_row = gzp + o * all;
        for (int64_t t = 0; t < all; ++t) {
          gz_row[t] = a.grad_from_output(static_cast<acc_t>(gy_row[t]), static_cast<acc_t>(y_row[t]));
        }
      }
      gemm_nn<acc_t>(g.in_channels, all, g.out_channels, pw_t.template const_data_ptr<acc_t>(),
                     g.out_channels, gzp, all, StoreOverwrite<acc_t>{gd_buf.data(), all});

      const scalar_t* x_image = x_ptr + n * g.in_channels * plane_in;
      // Recompute the depthwise tile; while a channel's input rows are loaded, also accumulate
      // its depthwise weight and bias gradients (dL/dd against the shifted input rows).
      const acc_t* gdp = gd_buf.data();
      depthwise_rows<scalar_t, acc_t>(
          g, x_image, dw, prm.dw_bias.template const_data_ptr<acc_t>(), r0, r1, d_buf.data(), own,
          phases, [&](int64_t c, const PlanePhases<acc_t>& loaded) {
            const acc_t* gdc = gdp + c * all;
            acc_t bias_sum = 0;
            RTDA_SIMD_SUM(bias_sum)
            for (int64_t t = own_off; t < all; ++t) bias_sum += gdc[t];
            gdw_b[c] += bias_sum;
            depthwise_weight_grad<acc_t>(g, gdc + own_off, r0, r1, loaded, gdw + c * kk);
          });
      // dL/dW_pw^T (C_in x C_out) += d (C_in x own) @ (dL/dz)^T (own x C_out): a register-blocked
      // GEMM after a transpose when C_out fills its column blocks, else dot products.
      if (g.out_channels >= kGemmMinColumns) {
        transpose<acc_t>(g.out_channels, own, gzp + own_off, all, gz_t.data(), g.out_channels);
        gemm_nn<acc_t>(g.in_channels, g.out_channels, own, d_buf.data(), own, gz_t.data(),
                       g.out_channels, StoreAdd<acc_t>{gpw_t, g.out_channels});
      } else {
        gemm_nt_acc<acc_t>(g.in_channels, g.out_channels, own, d_buf.data(), own, gzp + own_off,
                           all, gpw_t, g.out_channels);
      }
      for (int64_t o = 0; o < g.out_channels; ++o) {
        acc_t sum = 0;
        RTDA_SIMD_SUM(sum)
        for (int64_t t = 0; t < own; ++t) sum += gzp[o * all + own_off + t];
        gpw_b[o] += sum;
      }

      // dL/dx of the owned input rows, gathered (no other band writes them).
      const int64_t in0 = r0 == 0 ? 0 : std::min(g.height, r0 * g.stride - g.padding);
      const int64_t in1 = r1 == g.out_height ? g.height : std::min(g.height, r1 * g.stride - g.padding);
      for (int64_t c = 0; c < g.in_channels; ++c) {
        scalar_t* gx_plane = gx_ptr + (n * g.in_channels + c) * plane_in;
        for (int64_t h = std::max<int64_t>(0, in0); h < in1; ++h) {
          input_grad_row<acc_t, scalar_t>(g, gdp + c * all, h0, r1, dw + c * kk, h,
                                          gx_plane + h * g.width, phase_buf.data());
        }
      }
    }
  });
  for (const WeightGrads& part : partial) {  // fixed order: deterministic for a thread count
    total.pw_t.add_(part.pw_t);
    total.pw_bias.add_(part.pw_bias);
    total.dw.add_(part.dw);
    total.dw_bias.add_(part.dw_bias);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwsep_conv2d_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& y_in,
    const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_bias,
    const at::Tensor& pw_weight, int64_t stride, int64_t padding,
    std::optional<double> negative_slope) {
  check_dwsep_args(x_in, dw_weight, dw_bias, pw_weight, std::nullopt, stride, padding);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = geometry_of(x, dw_weight, pw_weight, stride, padding);
  const std::vector<int64_t> out_shape{g.batch, g.out_channels, g.out_height, g.out_width};
  TORCH_CHECK(grad_y_in.sizes() == out_shape && y_in.sizes() == out_shape,
              "dwsep_conv2d_backward: grad_y and y must be ", out_shape);
  TORCH_CHECK(grad_y_in.scalar_type() == x.scalar_type() && y_in.scalar_type() == x.scalar_type(),
              "dwsep_conv2d_backward: grad_y and y must have the dtype of x");
  const at::Tensor grad_y = grad_y_in.contiguous(), y = y_in.contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  WeightGrads total(g, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "dwsep_conv2d_backward_cpu", [&] {
        backward_kernel<scalar_t>(g, activation_of(negative_slope), grad_y, x, y, dw_weight,
                                  dw_bias, pw_weight, grad_x, total);
      });
  const auto wtype = dw_weight.scalar_type();
  return {grad_x, total.dw.view(dw_weight.sizes()).to(wtype), total.dw_bias.to(wtype),
          total.pw_t.t().contiguous().view(pw_weight.sizes()).to(wtype), total.pw_bias.to(wtype)};
}

}  // namespace rtda::cpu
