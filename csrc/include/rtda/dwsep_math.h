// Per-element math of the fused depthwise-separable conv + LeakyReLU, written once.
//
// Both the C++ CPU kernel and the CUDA kernels include this header, so the CPU tests exercise
// exactly the arithmetic (output size, window coordinates, activation and its gradient) that the
// GPU code runs. Nothing here touches torch: it must compile with nvcc and a plain C++ compiler.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RTDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RTDA_HOST_DEVICE inline
#endif

namespace rtda {

// Spatial size of a convolution output (floor division, valid for in + 2p >= k).
RTDA_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

// Input coordinate read by output coordinate `out` through kernel tap `tap`.
RTDA_HOST_DEVICE int64_t input_coord(int64_t out, int64_t tap, int64_t stride, int64_t padding) {
  return out * stride - padding + tap;
}

// First output coordinate whose window reaches input coordinate `in` (may be negative: clamp).
// Outputs o with o*s - p <= in <= o*s - p + k - 1, i.e. o >= ceil((in + p - k + 1) / s).
RTDA_HOST_DEVICE int64_t first_output_covering(int64_t in, int64_t kernel, int64_t stride,
                                               int64_t padding) {
  const int64_t num = in + padding - kernel + 1;
  return num <= 0 ? -((-num) / stride) : (num + stride - 1) / stride;
}

// Last output coordinate whose window reaches input coordinate `in`: floor((in + p) / s).
RTDA_HOST_DEVICE int64_t last_output_covering(int64_t in, int64_t stride, int64_t padding) {
  const int64_t num = in + padding;
  return num >= 0 ? num / stride : -((-num + stride - 1) / stride);
}

// LeakyReLU with its slope already in the computation type T. No activation is slope 1, so both
// directions are a branch-free select that compilers vectorise.
template <typename T>
struct TypedLeakyReLU {
  T slope;

  // y = z for z > 0, slope * z otherwise.
  RTDA_HOST_DEVICE T apply(T z) const {
    const T scaled = z * slope;
    return z > T(0) ? z : scaled;
  }

  // dL/dz from dL/dy using the sign of the *output* y. Exact for slope >= 0: then y > 0 iff
  // z > 0, and at z == 0 (y == 0) it picks `slope`, as PyTorch's leaky_relu backward does.
  RTDA_HOST_DEVICE T grad_from_output(T grad_y, T y) const {
    const T scaled = grad_y * slope;
    return y > T(0) ? grad_y : scaled;
  }
};

// The optional LeakyReLU at the end of the op. `enabled == false` is negative_slope=None.
struct Activation {
  bool enabled;
  double slope;  // cast to the computation type at use, as PyTorch does

  // The activation in type T: hoist this out of loops.
  template <typename T>
  RTDA_HOST_DEVICE TypedLeakyReLU<T> as() const {
    return TypedLeakyReLU<T>{enabled ? static_cast<T>(slope) : T(1)};
  }

  template <typename T>
  RTDA_HOST_DEVICE T apply(T z) const {
    return as<T>().apply(z);
  }

  template <typename T>
  RTDA_HOST_DEVICE T grad_from_output(T grad_y, T y) const {
    return as<T>().grad_from_output(grad_y, y);
  }
};

// One depthwise output value of one channel plane: bias + sum over the k x k window at (oh, ow),
// zero padding outside the H x W plane. The CPU kernel uses it for border columns (its interior
// path is vectorised), the CUDA kernels for every point.
template <typename Acc, typename T, typename Wt>
RTDA_HOST_DEVICE Acc depthwise_point(const T* plane, const Wt* weight, Acc bias, int64_t height,
                                     int64_t width, int64_t kernel, int64_t stride,
                                     int64_t padding, int64_t oh, int64_t ow) {
  Acc acc = bias;
  for (int64_t i = 0; i < kernel; ++i) {
    const int64_t h = input_coord(oh, i, stride, padding);
    if (h < 0 || h >= height) continue;
    for (int64_t j = 0; j < kernel; ++j) {
      const int64_t w = input_coord(ow, j, stride, padding);
      if (w < 0 || w >= width) continue;
      acc += static_cast<Acc>(plane[h * width + w]) * static_cast<Acc>(weight[i * kernel + j]);
    }
  }
  return acc;
}

// dL/dx at (h, w) of one channel plane, gathered from the depthwise output gradient `grad`
// (rows [row_begin, row_end) of an out_height x out_width plane, `grad` pointing at row_begin):
// the sum of grad[oh, ow] * weight[h - (oh*s - p), w - (ow*s - p)] over the windows holding (h, w).
template <typename Acc, typename G, typename Wt>
RTDA_HOST_DEVICE Acc depthwise_input_grad_point(const G* grad, const Wt* weight, int64_t row_begin,
                                                int64_t row_end, int64_t out_width,
                                                int64_t kernel, int64_t stride, int64_t padding,
                                                int64_t h, int64_t w) {
  Acc acc = Acc(0);
  int64_t oh0 = first_output_covering(h, kernel, stride, padding);
  int64_t oh1 = last_output_covering(h, stride, padding);
  int64_t ow0 = first_output_covering(w, kernel, stride, padding);
  int64_t ow1 = last_output_covering(w, stride, padding);
  oh0 = oh0 < row_begin ? row_begin : oh0;
  oh1 = oh1 > row_end - 1 ? row_end - 1 : oh1;
  ow0 = ow0 < 0 ? 0 : ow0;
  ow1 = ow1 > out_width - 1 ? out_width - 1 : ow1;
  for (int64_t oh = oh0; oh <= oh1; ++oh) {
    const int64_t i = h - input_coord(oh, 0, stride, padding);
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      const int64_t j = w - input_coord(ow, 0, stride, padding);
      acc += static_cast<Acc>(grad[(oh - row_begin) * out_width + ow]) *
             static_cast<Acc>(weight[i * kernel + j]);
    }
  }
  return acc;
}

}  // namespace rtda
