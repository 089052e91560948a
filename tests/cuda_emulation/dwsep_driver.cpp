// Runs the dwsep_conv2d CUDA kernels on the CPU, under the execution-model emulation of emu.h,
// through the same launch plan as the GPU (csrc/cuda/dwsep_conv2d_launch.cuh). A small C ABI for
// ctypes (tests/kernels/test_dwsep_conv2d_cuda_emulated.py builds and loads this file):
//
//   int dwsep_emu_forward_{f32,f64}(x, dw_weight, dw_bias, pw_weight, pw_bias, y, shape,
//                                   has_slope, slope)
//   int dwsep_emu_backward_{f32,f64}(grad_y, x, y, dw_weight, dw_bias, pw_weight,
//                                    grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight,
//                                    grad_pw_bias, shape, has_slope, slope)
//   int dwsep_emu_backward_plan(shape, out[4])  out = dw splits, pw splits, C_in tiles, C_out tiles
//   const char* dwsep_emu_last_error()
//
// Tensors are contiguous NCHW host buffers of the function's dtype; the biases may be null.
// shape = {N, C_in, C_out, H, W, k, stride, padding}. A slope is used only when has_slope != 0
// (negative_slope=None otherwise). The functions return 0, or -1 with dwsep_emu_last_error() set.
//
// Build: g++ -std=c++20 -O1 -pthread -shared -fPIC -I csrc/include -I csrc/cuda dwsep_driver.cpp
#include "emu.h"  // first: defines the CUDA keywords the kernels use
#include "driver_policies.h"

#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <rtda/dwsep_math.h>

#include "dwsep_conv2d_launch.cuh"

namespace {

using emu_driver::EmulatedLauncher;
using emu_driver::g_last_error;
using emu_driver::guarded;
using emu_driver::VectorAllocator;

// The Geometry the .cu builds from the tensors' sizes, from shape = {N, C_in, C_out, H, W, k,
// stride, padding}, with the same validity conditions.
rtda::cuda::Geometry make_geometry(const int64_t* shape) {
  rtda::cuda::Geometry g{};
  g.n = shape[0];
  g.c_in = shape[1];
  g.c_out = shape[2];
  g.height = shape[3];
  g.width = shape[4];
  g.kernel = shape[5];
  g.stride = shape[6];
  g.padding = shape[7];
  if (g.kernel < 1 || g.kernel > rtda::cuda::kMaxKernel || g.stride < 1 || g.padding < 0) {
    throw std::invalid_argument("bad kernel size / stride / padding");
  }
  g.out_height = rtda::conv_out_size(g.height, g.kernel, g.stride, g.padding);
  g.out_width = rtda::conv_out_size(g.width, g.kernel, g.stride, g.padding);
  if (g.n <= 0 || g.c_in <= 0 || g.c_out <= 0 || g.height <= 0 || g.width <= 0 ||
      g.out_height <= 0 || g.out_width <= 0) {
    throw std::invalid_argument("empty input or output");
  }
  return g;
}

// negative_slope as the op receives it (a Python float, i.e. double).
rtda::Activation make_activation(int has_slope, double slope) {
  return rtda::Activation{has_slope != 0, has_slope != 0 ? slope : 0.0};
}


template <typename T>
int forward(const T* x, const T* dw_weight, const T* dw_bias, const T* pw_weight,
            const T* pw_bias, T* y, const int64_t* shape, int has_slope, double slope) {
  return guarded([&] {
    const rtda::cuda::Geometry g = make_geometry(shape);
    const rtda::cuda::ForwardPlan plan = rtda::cuda::plan_forward(g);
    if (!plan.fits) throw std::invalid_argument("problem too large for the launch grid");
    const rtda::cuda::ForwardTensors<T> tensors{x, dw_weight, dw_bias, pw_weight, pw_bias, y};
    // Acc = T: float accumulates in float, double in double (at::opmath_type).
    rtda::cuda::launch_forward<T, T>(plan, g, make_activation(has_slope, slope), tensors,
                                    EmulatedLauncher{});
  });
}

template <typename T>
int backward(const T* grad_y, const T* x, const T* y, const T* dw_weight, const T* dw_bias,
             const T* pw_weight, T* grad_x, T* grad_dw_weight, T* grad_dw_bias,
             T* grad_pw_weight, T* grad_pw_bias, const int64_t* shape, int has_slope,
             double slope) {
  return guarded([&] {
    const rtda::cuda::Geometry g = make_geometry(shape);
    const rtda::cuda::BackwardPlan plan = rtda::cuda::plan_backward(g);
    if (!plan.fits) throw std::invalid_argument("problem too large for the launch grid");
    const rtda::cuda::BackwardTensors<T> tensors{grad_y, x, y, dw_weight, dw_bias, pw_weight,
                                                grad_x, grad_dw_weight, grad_dw_bias,
                                                grad_pw_weight, grad_pw_bias};
    VectorAllocator temporaries;
    rtda::cuda::launch_backward<T, T>(plan, g, make_activation(has_slope, slope), tensors,
                                     EmulatedLauncher{}, temporaries);
  });
}

}  // namespace

#define RTDA_EMU_DEFINE(SUFFIX, T)                                                               \
  extern "C" int dwsep_emu_forward_##SUFFIX(const T* x, const T* dw_weight, const T* dw_bias,   \
                                            const T* pw_weight, const T* pw_bias, T* y,         \
                                            const int64_t* shape, int has_slope,                \
                                            double slope) {                                     \
    return forward<T>(x, dw_weight, dw_bias, pw_weight, pw_bias, y, shape, has_slope, slope);   \
  }                                                                                              \
  extern "C" int dwsep_emu_backward_##SUFFIX(                                                    \
      const T* grad_y, const T* x, const T* y, const T* dw_weight, const T* dw_bias,             \
      const T* pw_weight, T* grad_x, T* grad_dw_weight, T* grad_dw_bias, T* grad_pw_weight,      \
      T* grad_pw_bias, const int64_t* shape, int has_slope, double slope) {                      \
    return backward<T>(grad_y, x, y, dw_weight, dw_bias, pw_weight, grad_x, grad_dw_weight,      \
                       grad_dw_bias, grad_pw_weight, grad_pw_bias, shape, has_slope, slope);     \
  }

RTDA_EMU_DEFINE(f32, float)
RTDA_EMU_DEFINE(f64, double)

#undef RTDA_EMU_DEFINE

extern "C" int dwsep_emu_backward_plan(const int64_t* shape, int64_t* out) {
  return guarded([&] {
    const rtda::cuda::BackwardPlan plan = rtda::cuda::plan_backward(make_geometry(shape));
    out[0] = plan.dw_split.splits;
    out[1] = plan.pw_split.splits;
    out[2] = plan.pw_grid.x;  // C_in tiles
    out[3] = plan.pw_grid.y;  // C_out tiles
  });
}

extern "C" const char* dwsep_emu_last_error() { return g_last_error.c_str(); }
