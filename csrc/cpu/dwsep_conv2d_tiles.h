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
#include "small_gemm.h"

// Lets the compiler vectorise a float sum by reordering it (the order is still fixed per build,
// so results stay reproducible). Needs -fopenmp (or -fopenmp-simd), which CMakeLists.txt passes.
#define RTDA_PRAGMA(text) _Pragma(#text)
#define RTDA_SIMD_SUM(var) RTDA_PRAGMA(omp simd reduction(+ : var))

namespace rtda::cpu {

// Tile size: the depthwise tile (and, in backward, the gradient buffers) stay in L2, and bigger
// tiles re-read fewer halo input rows.
constexpr int64_t kTileBytes = 256 << 10;
constexpr int64_t kMinTilePixels = 512;

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

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Input rows [h_begin, h_end) of one channel plane, each split into `stride` phases:
// phase[r][m] = row[m * stride + r - padding], zero outside the row, so that tap j of output column
// ow reads phase[j % s][ow + j / s] contiguously. Loaded once per channel and tile, converted to
// the accumulation type, and shared by every output row of the tile whose window covers it.
template <typename acc_t>
class PlanePhases {
 public:
  PlanePhases(const Geometry& g, int64_t max_out_rows)
      : g_(g),
        len_(round_up(g.out_width, 2 * kVectorBytes) + (g.kernel - 1) / g.stride + 1),
        row_size_(g.stride * len_),
        data_(((max_out_rows - 1) * g.stride + g.kernel) * row_size_) {}

  // Loads the input rows read by output rows [oh0, oh1) (rows outside the plane are skipped).
  template <typename scalar_t>
  void load(const scalar_t* plane, int64_t oh0, int64_t oh1) {
    h_begin_ = input_coord(oh0, 0, g_.stride, g_.padding);
    const int64_t h_end = input_coord(oh1 - 1, g_.kernel, g_.stride, g_.padding);
    for (int64_t h = std::max<int64_t>(0, h_begin_); h < std::min(g_.height, h_end); ++h) {
      load_row(plane + h * g_.width, data_.data() + (h - h_begin_) * row_size_);
    }
  }

  // The values that tap j reads from input row h, for output columns 0, 1, ...
  const acc_t* tap(int64_t h, int64_t j) const {
    return data_.data() + (h - h_begin_) * row_size_ + (j % g_.stride) * len_ + j / g_.stride;
  }

 private:
  // Valid phase columns [m0, m1) of phase r: those whose input column lies inside the row.
  std::pair<int64_t, int64_t> valid_columns(int64_t r) const {
    const int64_t s = g_.stride, p = g_.padding;
    const int64_t m0 = std::min(len_, p > r ? (p - r + s - 1) / s : int64_t(0));
    const int64_t last = g_.width - 1 + p - r;  // m * s <= last
    return {m0, std::max(m0, last < 0 ? int64_t(0) : std::min(len_, last / s + 1))};
  }

  template <typename scalar_t>
  void load_row(const scalar_t* row, acc_t* dst) const {
    const int64_t s = g_.stride, p = g_.padding;
    for (int64_t r = 0; r < s; ++r) {  // zero padding outside the row
      const auto [m0, m1] = valid_columns(r);
      std::fill(dst + r * len_, dst + r * len_ + m0, acc_t(0));
      std::fill(dst + r * len_ + m1, dst + (r + 1) * len_, acc_t(0));
    }
    int64_t joint_lo = 0, joint_hi = 0;  // columns copied by the stride-2 loop below
    if (s == 2) {
      // Both phases in one loop: the compiler turns the pair of stride-2 reads into vector
      // loads and shuffles (a loop per phase would gather element by element).
      const auto [a0, a1] = valid_columns(0);
      const auto [b0, b1] = valid_columns(1);
      joint_lo = std::max(a0, b0);
      joint_hi = std::max(joint_lo, std::min(a1, b1));
      acc_t* __restrict__ even = dst;
      acc_t* __restrict__ odd = dst + len_;
      for (int64_t m = joint_lo; m < joint_hi; ++m) {
        even[m] = static_cast<acc_t>(row[2 * m - p]);
        odd[m] = static_cast<acc_t>(row[2 * m + 1 - p]);
      }
    }
    for (int64_t r = 0; r < s; ++r) {  // what the joint loop did not copy
      const auto [m0, m1] = valid_columns(r);
      acc_t* __restrict__ out = dst + r * len_;
      const int64_t gap_lo = std::clamp(joint_lo, m0, m1), gap_hi = std::clamp(joint_hi, gap_lo, m1);
      for (int64_t m = m0; m < gap_lo; ++m) out[m] = static_cast<acc_t>(row[m * s + r - p]);
      for (int64_t m = gap_hi; m < m1; ++m) out[m] = static_cast<acc_t>(row[m * s + r - p]);
    }
  }

  const Geometry& g_;
  int64_t len_, row_size_, h_begin_ = 0;
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

// out[0, 2L) = bias + sum over taps t of weight[t] * src[t][offset + (0, 2L)], L lanes a vector:
// two accumulators stay in registers across all k*k taps. Written with explicit vectors because
// auto-vectorisation of this loop nest picked gathers across taps.
template <typename acc_t>
inline void depthwise_block(int taps, const acc_t* const* src, const acc_t* weight, acc_t bias,
                            int64_t offset, acc_t* out) {
  using V = Vec<acc_t>;
  constexpr int L = lanes<acc_t>();
  V a0 = V{} + bias, a1 = a0;
  for (int t = 0; t < taps; ++t) {
    const acc_t* row = src[t] + offset;
    const acc_t w = weight[t];
    a0 += w * load_vec(row);
    a1 += w * load_vec(row + L);
  }
  store_vec(out, a0);
  store_vec(out + L, a1);
}

// Depthwise output of output rows [oh0, oh1) of one image into out[c * ld + (oh - oh0) * Wo + ow].
// After each channel, on_channel(c, phases) may use that channel's loaded input rows.
template <typename scalar_t, typename acc_t, typename OnChannel>
void depthwise_rows(const Geometry& g, const scalar_t* x_image, const acc_t* dw, const acc_t* dw_bias,
                    int64_t oh0, int64_t oh1, acc_t* out, int64_t ld, PlanePhases<acc_t>& phases,
                    OnChannel&& on_channel) {
  constexpr int V = 2 * lanes<acc_t>();  // columns per depthwise_block
  const auto [lo, hi] = interior_columns(g);
  const int64_t kk = g.kernel * g.kernel;
  std::vector<const acc_t*> src(kk);
  std::vector<acc_t> weight(kk);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const scalar_t* plane = x_image + c * g.height * g.width;
    const acc_t* wc = dw + c * kk;
    phases.load(plane, oh0, oh1);
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      acc_t* o = out + c * ld + (oh - oh0) * g.out_width;
      int taps = 0;  // the taps whose input row lies inside the plane
      for (int64_t i = 0; i < g.kernel; ++i) {
        const int64_t h = input_coord(oh, i, g.stride, g.padding);
        if (h < 0 || h >= g.height) continue;
        for (int64_t j = 0; j < g.kernel; ++j, ++taps) {
          src[taps] = phases.tap(h, j);
          weight[taps] = wc[i * g.kernel + j];
        }
      }
      // Whole blocks over the zero-padded phases (the last one through a small buffer), then the
      // border columns again through the point function shared with the CUDA kernels.
      int64_t ow = 0;
      for (; ow + V <= g.out_width; ow += V) {
        depthwise_block<acc_t>(taps, src.data(), weight.data(), dw_bias[c], ow, o + ow);
      }
      if (ow < g.out_width) {
        acc_t tail[V];
        depthwise_block<acc_t>(taps, src.data(), weight.data(), dw_bias[c], ow, tail);
        std::copy(tail, tail + (g.out_width - ow), o + ow);
      }
      for (ow = 0; ow < g.out_width; ++ow) {
        if (ow == lo) ow = hi;
        if (ow >= g.out_width) break;
        o[ow] = depthwise_point<acc_t>(plane, wc, dw_bias[c], g.height, g.width, g.kernel, g.stride,
                                       g.padding, oh, ow);
      }
    }
    on_channel(c, static_cast<const PlanePhases<acc_t>&>(phases));
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

// Output rows per tile: about kTileBytes of depthwise output (C_in channels of acc_t), at least
// kMinTilePixels pixels for an efficient GEMM, and at least `minimum` rows.
inline int64_t rows_per_tile(const Geometry& g, int64_t minimum) {
  const int64_t pixels = std::max(kMinTilePixels, kTileBytes / (4 * g.in_channels));
  const int64_t rows = (pixels + g.out_width - 1) / g.out_width;
  return std::min(g.out_height, std::max(rows, minimum));
}

}  // namespace rtda::cpu
