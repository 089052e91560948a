// Building blocks shared by the CPU forward and backward kernels of dwsep_conv2d: the geometry,
// zero-padded row phases, the tiled depthwise computation and the weights in accumulation type.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "rtda/dwsep_math.h"

namespace rtda::cpu {

// Pixels per tile: big enough for an efficient GEMM, small enough for the buffers to stay in L2.
constexpr int64_t kTargetTilePixels = 1024;

struct Geometry {
  int64_t batch, in_channels, out_channels, height, width, kernel, stride, padding;
  int64_t out_height, out_width;
};

inline Geometry geometry_of(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                     int64_t stride, int64_t padding) {
  Geometry g{x.size(0), x.size(1), pw_weight.size(0), x.size(2), x.size(3), dw_weight.size(2),
             stride, padding, 0, 0};
  g.out_height = conv_out_size(g.height, g.kernel, stride, padding);
  g.out_width = conv_out_size(g.width, g.kernel, stride, padding);
  return g;
}

// One input row split into `stride` phases: phase[r][m] = row[m * stride + r - padding], zero
// outside the row, so that tap j of output column ow is phase[j % s][ow + j / s].
template <typename acc_t>
class RowPhases {
 public:
  explicit RowPhases(const Geometry& g)
      : g_(g), len_(g.out_width + (g.kernel - 1) / g.stride + 1), data_(g.stride * len_) {}

  template <typename scalar_t>
  void load(const scalar_t* row) {
    for (int64_t r = 0; r < g_.stride; ++r) {
      acc_t* dst = data_.data() + r * len_;
      for (int64_t m = 0; m < len_; ++m) {
        const int64_t w = m * g_.stride + r - g_.padding;
        dst[m] = (w >= 0 && w < g_.width) ? static_cast<acc_t>(row[w]) : acc_t(0);
      }
    }
  }

  // The values read by tap j for output columns 0, 1, ...
  const acc_t* tap(int64_t j) const { return data_.data() + (j % g_.stride) * len_ + j / g_.stride; }

 private:
  const Geometry& g_;
  int64_t len_;
  std::vector<acc_t> data_;
};

// Output columns whose whole window lies inside the row: [lo, hi). Others use the shared point
// function (zero padding handled there).
inline std::pair<int64_t, int64_t> interior_columns(const Geometry& g) {
  const int64_t lo = std::min(g.out_width, (g.padding + g.stride - 1) / g.stride);
  const int64_t last = g.width - 1 + g.padding - (g.kernel - 1);  // ow * s <= last
  const int64_t hi = last < 0 ? 0 : std::min(g.out_width, last / g.stride + 1);
  return {lo, std::max(lo, hi)};
}

// Depthwise output of output rows [oh0, oh1) of one image into out[c * ld + (oh - oh0) * Wo + ow].
template <typename scalar_t, typename acc_t>
void depthwise_rows(const Geometry& g, const scalar_t* x_image, const acc_t* dw, const acc_t* dw_bias,
                    int64_t oh0, int64_t oh1, acc_t* out, int64_t ld, RowPhases<acc_t>& phases) {
  const auto [lo, hi] = interior_columns(g);
  const int64_t kk = g.kernel * g.kernel;
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const scalar_t* plane = x_image + c * g.height * g.width;
    const acc_t* wc = dw + c * kk;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      acc_t* o = out + c * ld + (oh - oh0) * g.out_width;
      for (int64_t ow = lo; ow < hi; ++ow) o[ow] = dw_bias[c];
      for (int64_t i = 0; i < g.kernel; ++i) {
        const int64_t h = input_coord(oh, i, g.stride, g.padding);
        if (h < 0 || h >= g.height) continue;
        phases.load(plane + h * g.width);
        for (int64_t j = 0; j < g.kernel; ++j) {
          const acc_t wv = wc[i * g.kernel + j];
          const acc_t* src = phases.tap(j);
          for (int64_t ow = lo; ow < hi; ++ow) o[ow] += wv * src[ow];
        }
      }
      for (int64_t ow = 0; ow < g.out_width; ++ow) {
        if (ow == lo) ow = hi;
        if (ow >= g.out_width) break;
        o[ow] = depthwise_point<acc_t>(plane, wc, dw_bias[c], g.height, g.width, g.kernel, g.stride,
                                       g.padding, oh, ow);
      }
    }
  }
}

// Weights and biases converted once to the accumulation type (a missing bias is zeros).
template <typename acc_t>
struct Params {
  at::Tensor dw, dw_bias, pw;  // (C_in*k*k), (C_in), (C_out x C_in)
  Params(const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_b,
         const at::Tensor& pw_weight, at::ScalarType acc_type) {
    dw = dw_weight.to(acc_type).contiguous();
    dw_bias = dw_b.has_value() ? dw_b->to(acc_type).contiguous()
                               : at::zeros({dw_weight.size(0)}, dw_weight.options().dtype(acc_type));
    pw = pw_weight.reshape({pw_weight.size(0), pw_weight.size(1)}).to(acc_type).contiguous();
  }
};

inline int64_t rows_per_tile(const Geometry& g, int64_t minimum) {
  const int64_t rows = (kTargetTilePixels + g.out_width - 1) / g.out_width;
  return std::min(g.out_height, std::max(rows, minimum));
}

}  // namespace rtda::cpu
