// Per-element math of the fused pixel-wise adversarial loss, written once for the CPU and CUDA
// kernels (and the CUDA emulation test): the bilinear source coordinates of PyTorch's
// upsample_bilinear2d with align_corners=False, and the numerically stable binary cross-entropy
// with logits and its derivative. Nothing here touches torch.
#pragma once

#include <math.h>

#include <cstdint>

#include "rtda/dwsep_math.h"  // RTDA_HOST_DEVICE

namespace rtda {

// at::Reduction's numbering, used by the op schemas.
enum LossReduction : int64_t { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };

// Ratio in/out of a bilinear resize given by its output size (no scale_factor).
template <typename T>
RTDA_HOST_DEVICE T resize_scale(int64_t in_size, int64_t out_size) {
  return static_cast<T>(in_size) / static_cast<T>(out_size);
}

// The two input coordinates output coordinate `dst` reads and their weights: w0 * in[i0] +
// w1 * in[i1]. i1 == i0 on the last input row/column. Same formula and rounding as
// area_pixel_compute_source_index + compute_indices_weights_linear in ATen.
template <typename T>
struct LinearTap {
  int64_t i0;
  int64_t i1;
  T w0;
  T w1;
};

template <typename T>
RTDA_HOST_DEVICE LinearTap<T> linear_tap(int64_t dst, int64_t in_size, T scale) {
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  T w1 = src - static_cast<T>(i0);
  w1 = w1 < T(0) ? T(0) : (w1 > T(1) ? T(1) : w1);
  return LinearTap<T>{i0, i0 + (i0 < in_size - 1 ? 1 : 0), T(1) - w1, w1};
}

RTDA_HOST_DEVICE float exp_of(float x) { return expf(x); }
RTDA_HOST_DEVICE double exp_of(double x) { return exp(x); }
RTDA_HOST_DEVICE float log1p_of(float x) { return log1pf(x); }
RTDA_HOST_DEVICE double log1p_of(double x) { return log1p(x); }

// Binary cross-entropy with logits at one pixel and its derivative, from e = exp(-|u|) computed
// once: loss = (1 - y) u - min(u, 0) + log1p(e), PyTorch's (1 - y) u - log_sigmoid(u) (it never
// overflows, and an infinite u gives what PyTorch gives: inf for u = +inf and y < 1, NaN for
// u = -inf, where max(u, 0) - u y would give NaN for every label), dloss/du = sigmoid(u) - y written
// with s = sigmoid(-|u|) = e / (1 + e) as (1 - y) - s for u >= 0 and s - y otherwise, so that a
// confident pixel (sigmoid(u) ~ y) keeps its small gradient's relative precision.
template <typename T>
struct BceTerms {
  T loss;
  T grad;
};

template <typename T>
RTDA_HOST_DEVICE BceTerms<T> bce_with_logits(T u, T y) {
  const T e = exp_of(u < T(0) ? u : -u);
  const T s = e / (T(1) + e);
  const T grad = u >= T(0) ? (T(1) - y) - s : s - y;
  return BceTerms<T>{(T(1) - y) * u - (u < T(0) ? u : T(0)) + log1p_of(e), grad};
}

}  // namespace rtda
