// Runs the adversarial-loss CUDA kernels on the CPU, under the execution-model emulation of emu.h,
// through the same launch plan as the GPU (csrc/cuda/adversarial_loss_launch.cuh). A small C ABI
// for ctypes (tests/kernels/test_adversarial_loss_cuda_emulated.py builds and loads this file):
//
//   int adv_emu_loss_S(logits, target, target_value, shape, reduction, compute_grad, loss, grad)
//   int adv_emu_loss_backward_S(grad_loss, logits, target, target_value, shape, grad)
//   int adv_emu_discriminator_S(d_source, d_target, source_label, target_label, dshape,
//                               compute_grad, loss, grad_source, grad_target)
//   int adv_emu_plan(mode, dshape, compute_grad, out[8])
//   int64_t adv_emu_check_reach(max_in, max_out, checked)
//   int adv_emu_has_f16()
//   const char* adv_emu_last_error()
//
// S is f32, f64, bf16 (a host bfloat16, below) and, where the compiler has _Float16, f16; the half
// types accumulate in float, as at::opmath_type does. Tensors are contiguous NCHW host buffers of
// the function's dtype; target may be null (then the constant is used), so may grad / grad_source /
// grad_target when compute_grad is 0. shape = {N, C, h, w, H, W}; dshape = {N_s, C_s, h_s, w_s,
// N_t, C_t, h_t, w_t, H, W}. reduction: 0 none (loss is the N x C x H x W map), 1 mean, 2 sum
// (loss is one element). The functions return 0, or -1 with adv_emu_last_error() set.
//
// Build: g++ -std=c++20 -O1 -pthread -shared -fPIC -I csrc/include -I csrc/cuda
//        adversarial_driver.cpp
#include "emu.h"  // first: defines the CUDA keywords the kernels use
#include "driver_policies.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <rtda/adversarial_math.h>

#include "adversarial_loss_launch.cuh"

namespace {

using emu_driver::EmulatedLauncher;
using emu_driver::g_last_error;
using emu_driver::guarded;
using emu_driver::VectorAllocator;

namespace adv = rtda::cuda::adv;

// bfloat16 on the host: the upper half of a float, rounded to nearest even from float (as
// c10::BFloat16 does); NaN stays NaN.
struct HostBFloat16 {
  uint16_t bits;

  HostBFloat16() = default;
  explicit HostBFloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if (std::isnan(f)) {
      bits = 0x7fc0;
    } else {
      bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};



adv::MapShape map_shape(const int64_t* s) {  // {N, C, h, w}
  if (s[0] <= 0 || s[1] <= 0 || s[2] <= 0 || s[3] <= 0) throw std::invalid_argument("empty map");
  return adv::MapShape{s[0] * s[1], s[2], s[3]};
}

adv::Mode loss_mode(int reduction) {
  switch (reduction) {
    case rtda::kReduceNone:
      return adv::Mode::kLossNone;
    case rtda::kReduceMean:
      return adv::Mode::kLossMean;
    case rtda::kReduceSum:
      return adv::Mode::kLossSum;
    default:
      throw std::invalid_argument("reduction must be 0, 1 or 2");
  }
}

adv::LossPlan make_plan(adv::Mode mode, const int64_t* shape, bool compute_grad) {
  adv::MapShape maps[2];
  int64_t out_h, out_w;
  if (mode == adv::Mode::kDiscriminator) {
    maps[0] = map_shape(shape);
    maps[1] = map_shape(shape + 4);
    out_h = shape[8];
    out_w = shape[9];
  } else {
    maps[0] = map_shape(shape);
    out_h = shape[4];
    out_w = shape[5];
  }
  if (out_h <= 0 || out_w <= 0) throw std::invalid_argument("empty output size");
  const adv::LossPlan plan = adv::plan_loss(mode, maps, out_h, out_w, compute_grad);
  if (!plan.fits) throw std::invalid_argument("problem too large for the kernels");
  return plan;
}

template <typename T, typename Acc>
void run(const adv::LossPlan& plan, const adv::LossTensors<T>& tensors) {
  VectorAllocator temporaries;
  adv::launch_loss<T, Acc>(plan, tensors, EmulatedLauncher{}, temporaries);
}

template <typename T, typename Acc>
int loss(const T* logits, const T* target, double target_value, const int64_t* shape,
         int reduction, int compute_grad, T* loss_out, T* grad) {
  return guarded([&] {
    const adv::LossPlan plan = make_plan(loss_mode(reduction), shape, compute_grad != 0);
    adv::LossTensors<T> t{};
    t.map[0] = adv::MapTensors<T>{logits, target, target_value, nullptr,
                                  reduction == rtda::kReduceNone ? loss_out : nullptr, grad};
    t.loss = plan.reduce ? loss_out : nullptr;
    if (plan.grad && grad == nullptr) throw std::invalid_argument("grad is null");
    run<T, Acc>(plan, t);
  });
}

template <typename T, typename Acc>
int loss_backward(const T* grad_loss, const T* logits, const T* target, double target_value,
                  const int64_t* shape, T* grad) {
  return guarded([&] {
    const adv::LossPlan plan = make_plan(adv::Mode::kBackward, shape, true);
    adv::LossTensors<T> t{};
    t.map[0] = adv::MapTensors<T>{logits, target, target_value, grad_loss, nullptr, grad};
    run<T, Acc>(plan, t);
  });
}

template <typename T, typename Acc>
int discriminator(const T* d_source, const T* d_target, double source_label, double target_label,
                  const int64_t* shape, int compute_grad, T* loss_out, T* grad_source,
                  T* grad_target) {
  return guarded([&] {
    const adv::LossPlan plan = make_plan(adv::Mode::kDiscriminator, shape, compute_grad != 0);
    if (plan.grad && (grad_source == nullptr || grad_target == nullptr)) {
      throw std::invalid_argument("grad_source / grad_target is null");
    }
    adv::LossTensors<T> t{};
    t.map[0] = adv::MapTensors<T>{d_source, nullptr, source_label, nullptr, nullptr, grad_source};
    t.map[1] = adv::MapTensors<T>{d_target, nullptr, target_label, nullptr, nullptr, grad_target};
    t.loss = loss_out;
    run<T, Acc>(plan, t);
  });
}

// Brute force over one (in, out) pair with taps in T: the number of (src, dst) with dst's taps
// reaching src but dst outside reach_range(src).
template <typename T>
int64_t reach_violations(int64_t in, int64_t out) {
  const T scale = rtda::resize_scale<T>(in, out);
  std::vector<int64_t> first(static_cast<size_t>(in), -1), last(static_cast<size_t>(in), -1);
  for (int64_t dst = 0; dst < out; ++dst) {
    const rtda::LinearTap<T> tap = rtda::linear_tap<T>(dst, in, scale);
    for (const int64_t src : {tap.i0, tap.i1}) {
      if (first[src] < 0) first[src] = dst;
      last[src] = dst;
    }
  }
  int64_t bad = 0;
  for (int64_t src = 0; src < in; ++src) {
    if (first[src] < 0) continue;
    const adv::IndexRange r = adv::reach_range(src, in, out);
    if (r.lo > first[src] || r.hi < last[src]) ++bad;
  }
  return bad;
}

}  // namespace

#define RTDA_EMU_DEFINE(SUFFIX, T, ACC)                                                          \
  extern "C" int adv_emu_loss_##SUFFIX(const T* logits, const T* target, double target_value,   \
                                       const int64_t* shape, int reduction, int compute_grad,   \
                                       T* loss_out, T* grad) {                                  \
    return loss<T, ACC>(logits, target, target_value, shape, reduction, compute_grad, loss_out, \
                        grad);                                                                  \
  }                                                                                              \
  extern "C" int adv_emu_loss_backward_##SUFFIX(const T* grad_loss, const T* logits,            \
                                                const T* target, double target_value,           \
                                                const int64_t* shape, T* grad) {                \
    return loss_backward<T, ACC>(grad_loss, logits, target, target_value, shape, grad);         \
  }                                                                                              \
  extern "C" int adv_emu_discriminator_##SUFFIX(                                                 \
      const T* d_source, const T* d_target, double source_label, double target_label,            \
      const int64_t* shape, int compute_grad, T* loss_out, T* grad_source, T* grad_target) {     \
    return discriminator<T, ACC>(d_source, d_target, source_label, target_label, shape,          \
                                 compute_grad, loss_out, grad_source, grad_target);              \
  }

RTDA_EMU_DEFINE(f32, float, float)
RTDA_EMU_DEFINE(f64, double, double)
RTDA_EMU_DEFINE(bf16, HostBFloat16, float)
#if defined(__FLT16_MAX__)
RTDA_EMU_DEFINE(f16, _Float16, float)
extern "C" int adv_emu_has_f16() { return 1; }
#else
extern "C" int adv_emu_has_f16() { return 0; }
#endif

#undef RTDA_EMU_DEFINE

// The plan of a call: mode 0 none, 1 mean, 2 sum (adversarial_loss), 3 backward, 4 discriminator;
// shape as the call's (dshape for the discriminator). out = kernel A threads, lanes per column,
// map 0's rows per block, map 0's row blocks, chunks per output row, kernel A blocks, kernel B
// blocks (0 when it does not run), map 0's rows buffer size.
extern "C" int adv_emu_plan(int mode, const int64_t* shape, int compute_grad, int64_t* out) {
  return guarded([&] {
    if (mode < 0 || mode > 4) throw std::invalid_argument("bad mode");
    const adv::LossPlan p = make_plan(static_cast<adv::Mode>(mode), shape, compute_grad != 0);
    out[0] = p.threads;
    out[1] = p.group;
    out[2] = p.map[0].rows_per_block;
    out[3] = p.map[0].row_blocks;
    out[4] = adv::ceil_div(p.out_w, p.threads);
    out[5] = p.rows_grid.x;
    out[6] = p.finish ? p.finish_grid.x : 0;
    out[7] = p.map[0].rows_numel;
  });
}

// Checks reach_range against the exact sets of linear_tap, with float and with double taps, for
// every in_size <= max_in and out_size <= max_out, and for a list of large sizes. Returns the
// number of violations (0 when the range is conservative everywhere); *checked = pairs checked.
extern "C" int64_t adv_emu_check_reach(int64_t max_in, int64_t max_out, int64_t* checked) {
  int64_t bad = 0, pairs = 0;
  for (int64_t in = 1; in <= max_in; ++in) {
    for (int64_t out = 1; out <= max_out; ++out) {
      bad += reach_violations<float>(in, out) + reach_violations<double>(in, out);
      ++pairs;
    }
  }
  const int64_t large[][2] = {{16, 512},      {32, 1024},    {7, 100003},   {100003, 7},
                              {1000, 999},    {999, 1000},   {3, 1 << 20},  {12345, 67891},
                              {67891, 12345}, {1 << 20, 3},  {4097, 1 << 22}, {1 << 22, 4097}};
  for (const auto& s : large) {
    bad += reach_violations<float>(s[0], s[1]) + reach_violations<double>(s[0], s[1]);
    ++pairs;
  }
  *checked = pairs;
  return bad;
}

extern "C" const char* adv_emu_last_error() { return g_last_error.c_str(); }
