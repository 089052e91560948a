// Device kernels of the fused self-training loss (op pseudo_label_loss). The design is at the top
// of pseudo_label_loss_cuda.cu; the launches are pseudo_label_loss_launch.cuh, the only file
// including this. tests/cuda_emulation/ also compiles these kernels with a host compiler under
// emu.h: use only what that emulation provides (__syncthreads, full-mask __shfl_xor_sync,
// __shared__, the built-in indices).
//
// Tensors are contiguous: student and teacher N x C x h x w, labels N x H x W (int64). `Acc` is
// the accumulation type (float, or double for double). Offsets are int64_t.
#pragma once

#include <math.h>

#include <cstdint>

#include <rtda/adversarial_math.h>

#include "adversarial_loss_kernels.cuh"  // reach_range, block_sum, kWarp

namespace rtda::cuda {
namespace pl {

constexpr int kThreads = 256;  // every kernel's block size
constexpr int kPseudo = -1;
constexpr int kIgnore = 255;

template <typename scalar_t, typename Acc>
struct Job {
  const scalar_t* student;
  const scalar_t* teacher;
  const int64_t* labels;  // or nullptr: the pseudo-label everywhere
  Acc* rows;              // 2 kinds x (N * C) x H x w: horizontal halves of the gradient, or nullptr
  Acc* partial;           // N * H rows x 3: pseudo-labelled loss, other loss, confident pixels
  Acc* weight_acc;        // N: the confident fractions, for the gradient kernel
  scalar_t* weight;       // N
  scalar_t* loss;         // 0-dim
  scalar_t* grad;         // N x C x h x w, or nullptr
  Acc threshold;
  Acc scale_y, scale_x;   // rtda::resize_scale<Acc>(h, H), (w, W)
  Acc scale;              // 1 / (N * H * W)
  int64_t n, classes, h, w, out_h, out_w;
};

// The bilinear tap of an axis, with an axis without resize read as it is (its second tap is the
// first one with weight 0: no 0 * inf from a neighbour, as the CPU kernel does).
template <typename Acc>
__host__ __device__ __forceinline__ rtda::LinearTap<Acc> tap(int64_t dst, int64_t in, int64_t out,
                                                              Acc scale) {
  if (in == out) return rtda::LinearTap<Acc>{dst, dst, Acc(1), Acc(0)};
  return rtda::linear_tap<Acc>(dst, in, scale);
}

// The bilinear value at (ty, tx) of one plane; an axis without resize (same_y, same_x) reads
// its logit as it is.
template <typename scalar_t, typename Acc>
__device__ __forceinline__ Acc bilinear(const scalar_t* plane, int64_t w,
                                        const rtda::LinearTap<Acc>& ty,
                                        const rtda::LinearTap<Acc>& tx, bool same_y, bool same_x) {
  const auto along_x = [&](const scalar_t* row) -> Acc {
    return same_x ? static_cast<Acc>(row[tx.i0])
                  : tx.w0 * static_cast<Acc>(row[tx.i0]) + tx.w1 * static_cast<Acc>(row[tx.i1]);
  };
  const Acc top = along_x(plane + ty.i0 * w);
  return same_y ? top : ty.w0 * top + ty.w1 * along_x(plane + ty.i1 * w);
}

// What one output pixel contributes: its label and kind, the student's max and sum of exp.
template <typename Acc>
struct Pixel {
  int64_t target;
  bool pseudo, counted;
  Acc max, sum, loss;
  bool confident;
};

template <typename scalar_t, typename Acc>
__device__ __forceinline__ Pixel<Acc> pixel(const Job<scalar_t, Acc>& j, int64_t image,
                                            int64_t y, int64_t x, const rtda::LinearTap<Acc>& ty,
                                            const rtda::LinearTap<Acc>& tx) {
  const int64_t C = j.classes, hw = j.h * j.w;
  const scalar_t* teacher = j.teacher + image * C * hw;
  const scalar_t* student = j.student + image * C * hw;
  const bool sy = j.h == j.out_h, sx = j.w == j.out_w;
  // Teacher: argmax (the first NaN if any, as torch.argmax), softmax maximum 1 / sum exp(u - max).
  Acc t_max = bilinear(teacher, j.w, ty, tx, sy, sx);
  int64_t label = 0;
  for (int64_t c = 1; c < C; ++c) {
    const Acc u = bilinear(teacher + c * hw, j.w, ty, tx, sy, sx);
    if (u > t_max || (u != u && t_max == t_max)) {
      t_max = u;
      label = c;
    }
  }
  Acc t_sum = Acc(0);
  for (int64_t c = 0; c < C; ++c) t_sum += rtda::exp_of(bilinear(teacher + c * hw, j.w, ty, tx, sy, sx) - t_max);
  Pixel<Acc> p;
  p.confident = Acc(1) / t_sum > j.threshold;
  int64_t given = j.labels != nullptr ? j.labels[(image * j.out_h + y) * j.out_w + x] : kPseudo;
  if (!(given == kPseudo || (given >= 0 && given < C))) given = kIgnore;
  p.pseudo = given == kPseudo;
  p.target = p.pseudo ? label : given;
  p.counted = given != kIgnore;
  // Student: log-sum-exp and cross-entropy.
  Acc s_max = bilinear(student, j.w, ty, tx, sy, sx);
  for (int64_t c = 1; c < C; ++c) {
    const Acc u = bilinear(student + c * hw, j.w, ty, tx, sy, sx);
    s_max = u > s_max ? u : s_max;
  }
  Acc s_sum = Acc(0), picked = Acc(0);
  for (int64_t c = 0; c < C; ++c) {
    const Acc u = bilinear(student + c * hw, j.w, ty, tx, sy, sx);
    s_sum += rtda::exp_of(u - s_max);
    if (c == p.target) picked = u;
  }
  p.max = s_max;
  p.sum = s_sum;
  p.loss = (s_max - picked) + log(s_sum);  // exact 0 + log when the max is picked
  return p;
}

// Kernel A. Grid: N * H blocks of kThreads, block (image, y) for output row y. Per chunk of
// kThreads pixels of the row, one pixel per thread: the loss terms (summed per thread), then per
// class the gradient g = coef * (softmax - onehot), split into pseudo-labelled and other pixels
// in shared memory, and for every low-res column ix the chunk reaches the sum of g * wx over the
// chunk's pixels whose taps hit ix: rows[kind, image * C + c, y, ix], the horizontal half of the
// transposed interpolation, accumulated across chunks (the row is zeroed first). Ends with the
// block's three partial sums.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads) rows_kernel(Job<scalar_t, Acc> j) {
  __shared__ int64_t i0_s[kThreads], i1_s[kThreads];
  __shared__ Acc w0_s[kThreads], w1_s[kThreads], gp_s[kThreads], gf_s[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t image = static_cast<int64_t>(blockIdx.x) / j.out_h;
  const int64_t y = static_cast<int64_t>(blockIdx.x) % j.out_h;
  const int64_t C = j.classes, W = j.out_w, w = j.w, H = j.out_h;
  const rtda::LinearTap<Acc> ty = tap<Acc>(y, j.h, H, j.scale_y);
  const int64_t kind_stride = j.n * C * H * w;
  if (j.rows != nullptr) {
    for (int64_t k = tid; k < 2 * C * w; k += threads) {
      const int64_t kind = k / (C * w), c = (k / w) % C, ix = k % w;
      j.rows[kind * kind_stride + ((image * C + c) * H + y) * w + ix] = Acc(0);
    }
  }
  __syncthreads();
  Acc loss_pseudo = Acc(0), loss_fixed = Acc(0), confident = Acc(0);
  for (int64_t x0 = 0; x0 < W; x0 += threads) {
    const int64_t x = x0 + tid;
    const int64_t x_last = (x0 + threads < W ? x0 + threads : W) - 1;
    const bool valid = x < W;
    rtda::LinearTap<Acc> tx{0, 0, Acc(0), Acc(0)};
    Pixel<Acc> p{};
    if (valid) {
      tx = tap<Acc>(x, w, W, j.scale_x);
      p = pixel(j, image, y, x, ty, tx);
      if (p.confident) confident += Acc(1);
      if (p.pseudo) {
        loss_pseudo += p.loss;
      } else if (p.counted) {
        loss_fixed += p.loss;
      }
    }
    if (j.rows == nullptr) continue;  // block-uniform
    i0_s[tid] = valid ? tx.i0 : -1;
    i1_s[tid] = valid ? tx.i1 : -1;
    w0_s[tid] = tx.w0;
    w1_s[tid] = tx.w1;
    const int64_t first = tap<Acc>(x0, w, W, j.scale_x).i0;
    const int64_t last = tap<Acc>(x_last, w, W, j.scale_x).i1;
    const int64_t hw = j.h * w;
    const scalar_t* student = j.student + image * C * hw;
    const Acc coefficient = p.counted ? Acc(1) : Acc(0);  // 0 * NaN stays NaN, as cross_entropy
    for (int64_t c = 0; c < C; ++c) {
      Acc g = Acc(0);
      if (valid) {
        const Acc u = bilinear(student + c * hw, w, ty, tx, j.h == H, w == W);
        g = coefficient * (rtda::exp_of(u - p.max) / p.sum - (c == p.target ? Acc(1) : Acc(0)));
      }
      gp_s[tid] = p.pseudo ? g : Acc(0);
      gf_s[tid] = p.pseudo ? Acc(0) : g;
      __syncthreads();
      for (int64_t ix = first + tid; ix <= last; ix += threads) {
        const adv::IndexRange reach = adv::reach_range(ix, w, W);
        const int64_t lo = reach.lo > x0 ? reach.lo : x0;
        const int64_t hi = reach.hi < x_last ? reach.hi : x_last;
        Acc sum_p = Acc(0), sum_f = Acc(0);
        for (int64_t ox = lo; ox <= hi; ++ox) {
          const int t = static_cast<int>(ox - x0);
          if (i0_s[t] == ix) {
            sum_p += w0_s[t] * gp_s[t];
            sum_f += w0_s[t] * gf_s[t];
          }
          if (i1_s[t] == ix) {
            sum_p += w1_s[t] * gp_s[t];
            sum_f += w1_s[t] * gf_s[t];
          }
        }
        Acc* row = j.rows + ((image * C + c) * H + y) * w + ix;
        row[0] += sum_p;
        row[kind_stride] += sum_f;
      }
      __syncthreads();
    }
  }
  loss_pseudo = adv::block_sum(loss_pseudo);
  loss_fixed = adv::block_sum(loss_fixed);
  confident = adv::block_sum(confident);
  if (tid == 0) {
    Acc* out = j.partial + static_cast<int64_t>(blockIdx.x) * 3;
    out[0] = loss_pseudo;
    out[1] = loss_fixed;
    out[2] = confident;
  }
}

// Kernel B. One block of kThreads: per image, its rows' partials summed in a fixed order, the
// confident fraction and the weighted loss.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads) weights_kernel(Job<scalar_t, Acc> j) {
  const int tid = static_cast<int>(threadIdx.x);
  const Acc pixels = static_cast<Acc>(j.out_h) * static_cast<Acc>(j.out_w);
  Acc total = Acc(0);
  for (int64_t image = 0; image < j.n; ++image) {
    Acc sums[3] = {Acc(0), Acc(0), Acc(0)};
    for (int64_t r = tid; r < j.out_h; r += static_cast<int64_t>(blockDim.x)) {
      for (int k = 0; k < 3; ++k) sums[k] += j.partial[(image * j.out_h + r) * 3 + k];
    }
    for (int k = 0; k < 3; ++k) sums[k] = adv::block_sum(sums[k]);
    if (tid == 0) {
      const Acc fraction = sums[2] / pixels;
      j.weight_acc[image] = fraction;
      j.weight[image] = static_cast<scalar_t>(fraction);
      total += fraction * sums[0] + sums[1];
    }
  }
  if (tid == 0) *j.loss = static_cast<scalar_t>(total * j.scale);
}

// Kernel C. One thread per low-res element (image, c, iy, ix): the vertical half,
// sum_oy wy(oy -> iy) rows[kind, ., oy, ix] over the output rows whose taps reach iy, then
// grad = (weight[image] * pseudo + other) * scale.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads) grad_kernel(Job<scalar_t, Acc> j) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t C = j.classes, h = j.h, w = j.w, H = j.out_h;
  if (e >= j.n * C * h * w) return;
  const int64_t ix = e % w, iy = (e / w) % h, plane = e / (h * w), image = plane / C;
  const int64_t kind_stride = j.n * C * H * w;
  const adv::IndexRange reach = adv::reach_range(iy, h, H);
  Acc sum_p = Acc(0), sum_f = Acc(0);
  for (int64_t oy = reach.lo; oy <= reach.hi; ++oy) {
    const rtda::LinearTap<Acc> ty = tap<Acc>(oy, h, H, j.scale_y);
    const Acc* row = j.rows + (plane * H + oy) * w + ix;
    if (ty.i0 == iy) {
      sum_p += ty.w0 * row[0];
      sum_f += ty.w0 * row[kind_stride];
    }
    if (ty.i1 == iy) {
      sum_p += ty.w1 * row[0];
      sum_f += ty.w1 * row[kind_stride];
    }
  }
  j.grad[e] = static_cast<scalar_t>((j.weight_acc[image] * sum_p + sum_f) * j.scale);
}

}  // namespace pl
}  // namespace rtda::cuda
