// CPU kernel of the Winograd F(4x4, 3x3) convolution (rtda_kernels::winograd_conv3x3), float32.
//
// Why: a 3x3 stride-1 convolution computed directly is bound by the multiply-adds, and oneDNN's
// direct AVX2 kernels already run near this class of CPU's peak. F(4x4, 3x3) computes each 4x4
// block of outputs with 36 instead of 144 multiplications per channel pair, so the same
// convolution needs 4x fewer multiply-adds (plus cheap transforms). See
// rtda_kernels/reference/winograd_conv3x3.py for the algorithm in plain PyTorch.
//
// Three passes per chunk of tiles (a chunk's Winograd-domain data is a few MB, in a workspace
// each calling thread allocates once), over channels_last (NHWC) data so that every vector holds
// consecutive channels of one pixel:
//   1. input transform: every 6x6 input window (tiles overlap by 2, zero padding of 1) becomes
//      V[k][tile][c] = (B^T d B)[k] for its 36 Winograd points k;
//   2. 36 matrix products M[k] = V[k] @ U[k] over channels (at::bmm, multi-threaded BLAS), U the
//      transformed weight (36 x C_in x C_out, computed once in Python);
//   3. output transform: (A^T m A) of each tile's 36 x C_out values gives its 4x4 outputs, to which
//      bias, residual and ReLU are applied while writing y (channels_last).
// Non-finite values: the transforms mix a tile's inputs, so one inf in x (or in the weight) would
// turn whole tiles into NaN where the direct convolution gives inf in a few places. Any non-finite
// x or weight value makes some transformed output non-finite; pass 3 notices it (before bias and
// residual, which are added elementwise and propagate as they do after a direct convolution), and
// the call is then computed by at::conv2d instead, so NaN and inf come out exactly as conv2d (and
// ReLU) gives them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>

#include "simd.h"

namespace rtda::cpu {
namespace {

constexpr int kTile = 4;    // outputs per tile side
constexpr int kWindow = 6;  // inputs per tile side
constexpr int kPoints = kWindow * kWindow;
constexpr int L = lanes<float>();
using V = Vec<float>;

// `count` (1..L) consecutive floats as a vector, the rest zero.
inline V load_part(const float* p, int count) {
  if (count == L) return load_vec(p);
  V v = {};
  std::memcpy(&v, p, sizeof(float) * count);
  return v;
}

inline void store_part(float* p, V v, int count) {
  if (count == L) {
    store_vec(p, v);
  } else {
    std::memcpy(p, &v, sizeof(float) * count);
  }
}

// t = B^T d for one column of 6 values (d and t are read with the given strides).
inline __attribute__((always_inline)) void input_1d(const V* d, int sd, V* t, int st) {
  const V d0 = d[0], d1 = d[sd], d2 = d[2 * sd], d3 = d[3 * sd], d4 = d[4 * sd], d5 = d[5 * sd];
  t[0] = 4.0f * d0 - 5.0f * d2 + d4;
  t[st] = d3 + d4 - 4.0f * (d1 + d2);
  t[2 * st] = d4 - d3 + 4.0f * (d1 - d2);
  t[3 * st] = d4 - d2 + 2.0f * (d3 - d1);
  t[4 * st] = d4 - d2 + 2.0f * (d1 - d3);
  t[5 * st] = 4.0f * d1 - 5.0f * d3 + d5;
}

// s = A^T m for one column of 6 values -> 4 values.
inline __attribute__((always_inline)) void output_1d(const V* m, int sm, V* s, int ss) {
  const V m0 = m[0], m1 = m[sm], m2 = m[2 * sm], m3 = m[3 * sm], m4 = m[4 * sm], m5 = m[5 * sm];
  const V plus12 = m1 + m2, minus12 = m1 - m2, plus34 = m3 + m4, minus34 = m3 - m4;
  s[0] = m0 + plus12 + plus34;
  s[ss] = minus12 + 2.0f * minus34;
  s[2 * ss] = plus12 + 4.0f * plus34;
  s[3 * ss] = minus12 + 8.0f * minus34 + m5;
}

struct Geometry {
  int64_t n, channels, height, width, tiles_y, tiles_x, tiles;
};

// Pass 1 for tiles [begin, end): x is N x H x W x C, v is 36 x tiles x C.
void input_transform(const float* __restrict__ x, const Geometry& g, int64_t first,
                     int64_t count_tiles, int64_t begin, int64_t end, float* __restrict__ v) {
  const int64_t c_count = g.channels;
  for (int64_t local = begin; local < end; ++local) {
    const int64_t tile = first + local;
    const int64_t image = tile / (g.tiles_y * g.tiles_x);
    const int64_t ty = tile / g.tiles_x % g.tiles_y, tx = tile % g.tiles_x;
    const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;
    for (int64_t c = 0; c < c_count; c += L) {
      const int count = static_cast<int>(std::min<int64_t>(L, c_count - c));
      V d[kPoints], t[kPoints];
      for (int i = 0; i < kWindow; ++i) {
        const int64_t iy = y0 + i;
        for (int j = 0; j < kWindow; ++j) {
          const int64_t ix = x0 + j;
          const bool inside = iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
          d[i * kWindow + j] =
              inside ? load_part(x + ((image * g.height + iy) * g.width + ix) * c_count + c, count)
                     : V{};
        }
      }
      for (int j = 0; j < kWindow; ++j) input_1d(d + j, kWindow, t + j, kWindow);  // columns
      for (int i = 0; i < kWindow; ++i) input_1d(t + i * kWindow, 1, d + i * kWindow, 1);  // rows
      for (int k = 0; k < kPoints; ++k) {
        store_part(v + (k * count_tiles + local) * c_count + c, d[k], count);
      }
    }
  }
}

struct Epilogue {
  const float* bias;      // C_out or nullptr
  const float* residual;  // N x H x W x C_out or nullptr
  bool relu;
};

// Pass 3 for tiles [begin, end): m is 36 x tiles x C_out, y is N x H x W x C_out. Returns whether
// every transformed output (all 16 of each tile, before bias and residual) is finite.
bool output_transform(const float* __restrict__ m, const Geometry& g, int64_t c_out,
                      const Epilogue& epilogue, int64_t first, int64_t count_tiles, int64_t begin,
                      int64_t end, float* __restrict__ y) {
  V nonfinite = {};  // o - o: 0 for a finite o, NaN otherwise
  for (int64_t local = begin; local < end; ++local) {
    const int64_t tile = first + local;
    const int64_t image = tile / (g.tiles_y * g.tiles_x);
    const int64_t ty = tile / g.tiles_x % g.tiles_y, tx = tile % g.tiles_x;
    const int rows = static_cast<int>(std::min<int64_t>(kTile, g.height - ty * kTile));
    const int cols = static_cast<int>(std::min<int64_t>(kTile, g.width - tx * kTile));
    for (int64_t c = 0; c < c_out; c += L) {
      const int count = static_cast<int>(std::min<int64_t>(L, c_out - c));
      V points[kPoints], s[kTile * kWindow], out[kTile * kTile];
      for (int k = 0; k < kPoints; ++k) {
        points[k] = load_part(m + (k * count_tiles + local) * c_out + c, count);
      }
      for (int j = 0; j < kWindow; ++j) output_1d(points + j, kWindow, s + j, kWindow);
      for (int i = 0; i < kTile; ++i) output_1d(s + i * kWindow, 1, out + i * kTile, 1);
      for (int k = 0; k < kTile * kTile; ++k) nonfinite += out[k] - out[k];
      const V bias = epilogue.bias != nullptr ? load_part(epilogue.bias + c, count) : V{};
      for (int i = 0; i < rows; ++i) {
        for (int j = 0; j < cols; ++j) {
          const int64_t offset =
              ((image * g.height + ty * kTile + i) * g.width + tx * kTile + j) * c_out + c;
          V value = out[i * kTile + j] + bias;
          if (epilogue.residual != nullptr) value += load_part(epilogue.residual + offset, count);
          if (epilogue.relu) value = value < 0.0f ? V{} : value;  // NaN stays NaN
          store_part(y + offset, value, count);
        }
      }
    }
  }
  for (int l = 0; l < L; ++l) {
    if (nonfinite[l] != 0.0f) return false;
  }
  return true;
}

// The direct convolution for a call with non-finite x or weight (see the top of this file).
at::Tensor direct(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                  bool relu) {
  at::Tensor y = at::conv2d(x, weight, bias, {1, 1}, {1, 1});
  if (residual.has_value()) y.add_(*residual);
  if (relu) y.relu_();
  return y.contiguous(at::MemoryFormat::ChannelsLast);
}

// Winograd-domain floats (V and M) per chunk of tiles, 16 MB; a chunk has at least kMinChunk
// tiles, below which the 36 matrix products get too short to run at full speed.
constexpr int64_t kWorkspaceFloats = int64_t(1) << 22;
constexpr int64_t kMinChunk = 256;

// Each calling thread keeps its workspace (allocating it per call costs page faults). Plain
// memory, not a tensor: a tensor first made under InferenceMode could not be written outside it.
float* thread_workspace(int64_t floats) {
  thread_local std::unique_ptr<float[]> workspace;
  thread_local int64_t size = 0;
  if (size < floats) {
    workspace.reset(new float[floats]);
    size = floats;
  }
  return workspace.get();
}

// Tiles per parallel task: enough work to amortise scheduling, few enough to balance the cores.
int64_t grain(int64_t channels) { return std::max<int64_t>(1, 2048 / channels); }

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& weight_winograd,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK(x.dim() == 4 && x.size(0) >= 1 && x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1,
              "winograd_conv3x3: x must be a non-empty N x C x H x W tensor, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "winograd_conv3x3: x must be float32, got ",
              x.scalar_type());
  TORCH_CHECK(weight_winograd.dim() == 3 && weight_winograd.size(0) == kPoints &&
                  weight_winograd.size(1) == x.size(1) && weight_winograd.size(2) >= 1 &&
                  weight_winograd.scalar_type() == at::kFloat,
              "winograd_conv3x3: weight_winograd must be a float32 36 x C_in x C_out tensor with "
              "C_in = ", x.size(1), ", got ", weight_winograd.sizes());
  const int64_t c_out = weight_winograd.size(2);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({c_out, x.size(1), 3, 3}) &&
                  weight.scalar_type() == at::kFloat,
              "winograd_conv3x3: weight must be a float32 C_out x C_in x 3 x 3 tensor with C_out = ",
              c_out, " and C_in = ", x.size(1), ", got ", weight.sizes());
  TORCH_CHECK(!bias.has_value() || (bias->numel() == c_out && bias->scalar_type() == at::kFloat),
              "winograd_conv3x3: bias must be float32 with C_out = ", c_out, " elements");
  const int64_t tiles_y = (x.size(2) + kTile - 1) / kTile, tiles_x = (x.size(3) + kTile - 1) / kTile;
  const Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), tiles_y, tiles_x,
                   x.size(0) * tiles_y * tiles_x};
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  at::Tensor residual_nhwc;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({g.n, c_out, g.height, g.width}) &&
                    residual->scalar_type() == at::kFloat,
                "winograd_conv3x3: residual must be a float32 tensor of the output's shape");
    residual_nhwc = residual->contiguous(channels_last);
  }
  const at::Tensor input = x.contiguous(channels_last);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();

  at::Tensor y = at::empty({g.n, c_out, g.height, g.width}, x.options().memory_format(channels_last));
  const Epilogue epilogue{bias.has_value() ? bias_c.data_ptr<float>() : nullptr,
                          residual.has_value() ? residual_nhwc.data_ptr<float>() : nullptr, relu};
  const at::Tensor u = weight_winograd.contiguous();
  // The tiles go in chunks so that the Winograd-domain data (V and M) of one chunk stays small:
  // written and read back right away, mostly from cache, in a workspace allocated once.
  const int64_t per_tile = kPoints * (g.channels + c_out);
  const int64_t chunk = std::min(std::max(kWorkspaceFloats / per_tile, kMinChunk), g.tiles);
  float* const workspace = thread_workspace(chunk * per_tile);
  float* const y_data = y.data_ptr<float>();
  const float* const x_data = input.data_ptr<float>();
  std::atomic<bool> finite{true};
  for (int64_t first = 0; first < g.tiles; first += chunk) {
    const int64_t count = std::min(chunk, g.tiles - first);
    const at::Tensor v = at::from_blob(workspace, {kPoints, count, g.channels}, x.options());
    at::Tensor m = at::from_blob(workspace + kPoints * count * g.channels, {kPoints, count, c_out},
                                 x.options());
    at::parallel_for(0, count, grain(g.channels), [&](int64_t begin, int64_t end) {
      input_transform(x_data, g, first, count, begin, end, v.data_ptr<float>());
    });
    at::bmm_out(m, v, u);
    at::parallel_for(0, count, grain(c_out), [&](int64_t begin, int64_t end) {
      if (!output_transform(m.data_ptr<float>(), g, c_out, epilogue, first, count, begin, end,
                            y_data)) {
        finite.store(false, std::memory_order_relaxed);
      }
    });
    if (!finite.load(std::memory_order_relaxed)) return direct(x, weight, bias, residual, relu);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace rtda::cpu
