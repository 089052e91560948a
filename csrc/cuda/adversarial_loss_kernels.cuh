// Device kernels of the fused pixel-wise adversarial loss. The design (which kernel does what, and
// why) is described at the top of adversarial_loss_cuda.cu; which kernels are launched, on which
// grids and with which arguments is adversarial_loss_launch.cuh, the only file including this.
// Besides nvcc, tests/cuda_emulation/ compiles these kernels with a host compiler under a CPU
// emulation of the CUDA execution model (tests/cuda_emulation/emu.h): use only the CUDA features
// that emulation provides (__syncthreads, __shfl_xor_sync with a full mask, __shared__, the
// built-in indices).
//
// All tensors are contiguous NCHW, seen as `planes` = N * C planes. `Acc` is the accumulation type
// (float, or double for double). Every offset into a tensor is computed in int64_t.
#pragma once

#include <math.h>

#include <cstdint>

#include <rtda/adversarial_math.h>

namespace rtda::cuda {
namespace adv {

// Kernel A (resize_bce_rows_kernel) runs blocks of kMinRowThreads .. kMaxRowThreads threads (the
// plan picks one size per launch from W); the finishing kernel runs kFinishThreads =
// kFinishLanes (low-res columns) x kFinishRowLanes (output rows summed in parallel).
constexpr int kMaxRowThreads = 256;
constexpr int kMinRowThreads = 64;
constexpr int kFinishThreads = 256;
constexpr int kFinishLanes = 32;
constexpr int kFinishRowLanes = kFinishThreads / kFinishLanes;
constexpr int kWarp = 32;

// Inclusive range of indices; empty when lo > hi.
struct IndexRange {
  int64_t lo, hi;
};

// A range of output coordinates holding every `dst` whose bilinear taps (rtda::linear_tap over an
// input of in_size, output of out_size) reach input coordinate `src`, i.e. with
// linear_tap(dst).i0 == src or .i1 == src; it may hold more (callers filter with linear_tap).
//
// i1 == src iff i0 == src - 1 (or i0 == i1 == src on the last input index), so the exact set is
// {dst : i0(dst) in {src - 1, src}}, contiguous because i0 is non-decreasing in dst (every step of
// linear_tap is a monotone rounding). In exact arithmetic i0(dst) in {src - 1, src} iff
// src - 1 <= scale * (dst + 0.5) - 0.5 < src + 1, i.e. (src - 0.5) / scale - 0.5 <= dst <
// (src + 1.5) / scale - 0.5. linear_tap rounds (scale to T, then the product and the difference,
// in float: a few ulps of in_size, i.e. an error below in_size * 2^-21 in source units, or
// out_size * 2^-21 in output units); the margin of 2 + out_size / 2^16 output coordinates covers
// that with a wide safety factor, for float and double. The clamps of linear_tap (source < 0 goes
// to 0, i0 <= in_size - 1) only matter for src <= 1 and src >= in_size - 2, which get the whole
// open side. tests/kernels/test_adversarial_loss_cuda_emulated.py checks the range exhaustively
// over small sizes and on large ones, with float and double taps.
__host__ __device__ __forceinline__ IndexRange reach_range(int64_t src, int64_t in_size,
                                                           int64_t out_size) {
  const double inv_scale = static_cast<double>(out_size) / static_cast<double>(in_size);
  const int64_t margin = 2 + out_size / 65536;
  int64_t lo = 0, hi = out_size - 1;
  if (src > 1) {
    const int64_t bound =
        static_cast<int64_t>(floor((static_cast<double>(src) - 0.5) * inv_scale - 0.5)) - margin;
    lo = bound > 0 ? bound : 0;
  }
  if (src < in_size - 2) {
    const int64_t bound =
        static_cast<int64_t>(ceil((static_cast<double>(src) + 1.5) * inv_scale - 0.5)) + margin;
    hi = bound < out_size - 1 ? bound : out_size - 1;
  }
  return IndexRange{lo, hi};
}

// One map of a call: logits (planes x h x w) resized to out_h x out_w, and what to do with the BCE
// of every output pixel. Filled in by launch_loss from the plan and the tensors.
template <typename scalar_t, typename Acc>
struct MapJob {
  const scalar_t* logits;     // planes x h x w
  const scalar_t* target;     // planes x out_h x out_w, or nullptr: the constant target_value
  const scalar_t* grad_loss;  // planes x out_h x out_w, or nullptr: g = dloss/du (backward op)
  scalar_t* loss_map;         // planes x out_h x out_w, or nullptr: reduction none
  Acc* partial;               // row_blocks per-block loss sums, or nullptr: no reduced loss
  Acc* rows;                  // planes x out_h x w, or nullptr: no gradient
  scalar_t* grad;             // planes x h x w, or nullptr: no gradient
  Acc target_value;
  Acc scale_y, scale_x;  // rtda::resize_scale<Acc>(h, out_h), (w, out_w)
  Acc grad_scale;        // d loss / d (BCE at a pixel) that is not per pixel: 1/M, 1, 0.5/M
  int64_t planes, h, w, out_h, out_w;
  // Kernel A: block b handles output rows [b * rows_per_block, ...) of the planes * out_h rows.
  int64_t rows_per_block, row_blocks;
  // Kernel B: block b handles 32 low-res columns (ix_tiles tiles per row) of one low-res row.
  int64_t ix_tiles, grad_blocks;
};

// The one or two maps of a launch (two: discriminator_loss, source then target). Blocks of a grid
// go to job 0 first, then to job 1.
template <typename scalar_t, typename Acc>
struct MapJobs {
  MapJob<scalar_t, Acc> job[2];
  int count;
};

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over the `lanes` consecutive lanes of an aligned group (lanes a power of two <= 32); every
// lane of the group gets the same sum. All 32 lanes of the warp must call it.
template <typename Acc>
__device__ __forceinline__ Acc group_sum(Acc v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum of `v` over the block (blockDim.x threads, a multiple of 32), valid in thread 0. Fixed order:
// xor butterfly in each warp, then the warps' sums in warp order. Ends with a barrier, so it can be
// called again at once.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v) {
  __shared__ Acc warp_sums[kMaxRowThreads / kWarp];
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  Acc total = Acc(0);
  if (threadIdx.x == 0) {
    const int warps = static_cast<int>(blockDim.x) / kWarp;
    for (int i = 0; i < warps; ++i) total += warp_sums[i];
  }
  __syncthreads();
  return total;
}

// Kernel A. Grid: job[0].row_blocks + job[1].row_blocks blocks of blockDim.x threads (a multiple
// of 32 in [kMinRowThreads, kMaxRowThreads]); `group` lanes (a power of two <= 32) per low-res
// column in the horizontal transpose.
//
// A block walks its output rows (plane, oy) in order, each in chunks of blockDim.x pixels, one
// pixel per thread: u = the bilinear value of the logits (the same taps and weights as
// upsample_bilinear2d), then the BCE against the target. Per pixel: the loss goes to loss_map
// (reduction none) and/or the thread's running sum (partial, written once per block); with a
// gradient, g = dBCE/du (times grad_loss) is split by the pixel's two horizontal weights into
// shared memory, and the block then sums, for every low-res column ix the chunk reaches, the g * wx
// of the chunk's pixels whose taps hit ix (`group` lanes per column, over the reach_range of ix,
// filtered exactly by the pixel's tap), giving rows[plane, oy, ix] = sum_ox wx(ox -> ix) g(oy, ox),
// the horizontal half of the transposed interpolation. A column reached by several chunks is
// accumulated in the block's own rows[] entry across chunks, in chunk order (a barrier between);
// every column of the row is written, columns no pixel reaches with 0.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kMaxRowThreads)
    resize_bce_rows_kernel(MapJobs<scalar_t, Acc> jobs, int group) {
  __shared__ int tap_s[kMaxRowThreads];  // i0 of the pixel's horizontal tap
  __shared__ Acc g0_s[kMaxRowThreads];   // g * w0 (goes to i0)
  __shared__ Acc g1_s[kMaxRowThreads];   // g * w1 (goes to i1)
  int64_t block = blockIdx.x;
  const bool second = jobs.count > 1 && block >= jobs.job[0].row_blocks;
  const MapJob<scalar_t, Acc> j = second ? jobs.job[1] : jobs.job[0];
  if (second) block -= jobs.job[0].row_blocks;

  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t total_rows = j.planes * j.out_h;
  const int64_t row_begin = block * j.rows_per_block;
  const int64_t row_end =
      row_begin + j.rows_per_block < total_rows ? row_begin + j.rows_per_block : total_rows;
  const int64_t W = j.out_w, w = j.w;
  const bool same_h = j.h == j.out_h, same_w = w == W;
  Acc loss_sum = Acc(0);

  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t plane = row / j.out_h, oy = row % j.out_h;
    const rtda::LinearTap<Acc> ty = rtda::linear_tap<Acc>(oy, j.h, j.scale_y);
    const scalar_t* top = j.logits + (plane * j.h + ty.i0) * w;
    const scalar_t* bottom = j.logits + (plane * j.h + ty.i1) * w;
    const int64_t out_row = row * W;  // offset of (plane, oy, 0) in the out_h x out_w maps
    Acc* rows_out = j.rows != nullptr ? j.rows + row * w : nullptr;
    int64_t prev_last = -1;  // last low-res column the previous chunks of the row reached

    for (int64_t x0 = 0; x0 < W; x0 += threads) {
      const int64_t ox = x0 + tid;
      if (ox < W) {
        const rtda::LinearTap<Acc> tx = rtda::linear_tap<Acc>(ox, w, j.scale_x);
        // An axis without resize reads its logit as it is (as the CPU kernel does): its taps'
        // weights are 1 and 0, and 0 * inf would turn an infinite neighbour into NaN.
        const auto along_x = [&](const scalar_t* in_row) -> Acc {
          return same_w ? static_cast<Acc>(in_row[ox])
                        : tx.w0 * static_cast<Acc>(in_row[tx.i0]) +
                              tx.w1 * static_cast<Acc>(in_row[tx.i1]);
        };
        const Acc u = same_h ? along_x(top) : ty.w0 * along_x(top) + ty.w1 * along_x(bottom);
        const Acc y =
            j.target != nullptr ? static_cast<Acc>(j.target[out_row + ox]) : j.target_value;
        const rtda::BceTerms<Acc> bce = rtda::bce_with_logits<Acc>(u, y);
        if (j.loss_map != nullptr) j.loss_map[out_row + ox] = static_cast<scalar_t>(bce.loss);
        loss_sum += bce.loss;
        if (rows_out != nullptr) {
          const Acc g = j.grad_loss != nullptr
                            ? bce.grad * static_cast<Acc>(j.grad_loss[out_row + ox])
                            : bce.grad;
          tap_s[tid] = static_cast<int>(tx.i0);
          g0_s[tid] = g * tx.w0;
          g1_s[tid] = same_w ? Acc(0) : g * tx.w1;  // no 0 * NaN from the unused tap
        }
      }
      if (rows_out == nullptr) continue;  // block-uniform
      __syncthreads();
      // Low-res columns [a, b] of this chunk: from the first one the chunk reaches (or the one
      // after the previous chunk's last, if that is lower: columns no pixel reaches) to the last
      // one it reaches (or w - 1 on the last chunk). Columns <= prev_last already hold the sums
      // of the previous chunks.
      const int64_t x_end = x0 + threads < W ? x0 + threads : W;
      int64_t a = tap_s[0];
      if (prev_last + 1 < a) a = prev_last + 1;  // on the first chunk: a = 0
      const int64_t last_i0 = tap_s[x_end - 1 - x0];
      const int64_t b = x_end == W ? w - 1 : last_i0 + (last_i0 < w - 1 ? 1 : 0);
      const int per_round = threads / group;
      const int lane = tid % group;
      // Rounds are block-uniform: every lane reaches the shuffles of group_sum.
      for (int64_t base = a; base <= b; base += per_round) {
        const int64_t ix = base + tid / group;
        Acc s = Acc(0);
        if (ix <= b) {
          const IndexRange r = reach_range(ix, w, W);
          const int64_t lo = r.lo > x0 ? r.lo : x0;
          const int64_t hi = r.hi < x_end - 1 ? r.hi : x_end - 1;
          for (int64_t ox = lo + lane; ox <= hi; ox += group) {
            const int t = static_cast<int>(ox - x0);
            const int64_t i0 = tap_s[t];
            const int64_t i1 = i0 + (i0 < w - 1 ? 1 : 0);
            if (i0 == ix) s += g0_s[t];
            if (i1 == ix) s += g1_s[t];
          }
        }
        s = group_sum(s, group);
        if (ix <= b && lane == 0) rows_out[ix] = ix <= prev_last ? rows_out[ix] + s : s;
      }
      prev_last = b;
      // The shared chunk is rewritten next; rows_out[] entries are re-read by other threads.
      __syncthreads();
    }
  }

  if (j.partial != nullptr) {  // block-uniform
    const Acc total = block_sum(loss_sum);
    if (tid == 0) j.partial[block] = total;
  }
}

// Sum of job.partial[0 .. row_blocks) over the block (kFinishThreads threads), in a fixed order,
// valid in thread 0.
template <typename scalar_t, typename Acc>
__device__ __forceinline__ Acc sum_partials(const MapJob<scalar_t, Acc>& j) {
  Acc s = Acc(0);
  for (int64_t i = threadIdx.x; i < j.row_blocks; i += kFinishThreads) s += j.partial[i];
  return block_sum(s);
}

// Kernel B (after kernel A). Grid: job[0].grad_blocks + job[1].grad_blocks blocks, plus one last
// block when `reduce`; kFinishThreads threads each.
//
// A gradient block owns low-res row iy of one plane and kFinishLanes columns ix0 .. ix0 + 31:
// thread (k, lane) sums rows[plane, oy, ix0 + lane] * wy(oy -> iy) over the oy = lo + k, lo + k +
// 8, ... of reach_range(iy), filtered exactly with linear_tap (the vertical half of the transposed
// interpolation; a warp reads 32 consecutive columns of one row), then thread (0, lane) adds the 8
// partial sums in order and writes grad = grad_scale * sum.
// The last block (when `reduce`) sums each job's per-block loss sums in a fixed order and writes
// loss[0] = sum_0 * loss_scale_0 (+ sum_1 * loss_scale_1).
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(MapJobs<scalar_t, Acc> jobs, bool reduce, Acc loss_scale0, Acc loss_scale1,
                  scalar_t* loss) {
  __shared__ Acc sums_s[kFinishRowLanes][kFinishLanes];
  int64_t block = blockIdx.x;
  const int64_t grad_blocks =
      jobs.job[0].grad_blocks + (jobs.count > 1 ? jobs.job[1].grad_blocks : 0);
  if (block >= grad_blocks) {  // the loss block (block-uniform)
    if (!reduce) return;
    const Acc s0 = sum_partials(jobs.job[0]);
    Acc result = s0 * loss_scale0;
    if (jobs.count > 1) {
      const Acc s1 = sum_partials(jobs.job[1]);
      result += s1 * loss_scale1;
    }
    if (threadIdx.x == 0) loss[0] = static_cast<scalar_t>(result);
    return;
  }
  const bool second = block >= jobs.job[0].grad_blocks;
  const MapJob<scalar_t, Acc> j = second ? jobs.job[1] : jobs.job[0];
  if (second) block -= jobs.job[0].grad_blocks;

  const int lane = static_cast<int>(threadIdx.x) % kFinishLanes;
  const int k = static_cast<int>(threadIdx.x) / kFinishLanes;
  const int64_t tile = block % j.ix_tiles;
  const int64_t rest = block / j.ix_tiles;
  const int64_t iy = rest % j.h, plane = rest / j.h;
  const int64_t ix = tile * kFinishLanes + lane;
  Acc s = Acc(0);
  if (ix < j.w) {
    const IndexRange r = reach_range(iy, j.h, j.out_h);
    const Acc* column = j.rows + plane * j.out_h * j.w + ix;
    for (int64_t oy = r.lo + k; oy <= r.hi; oy += kFinishRowLanes) {
      const rtda::LinearTap<Acc> ty = rtda::linear_tap<Acc>(oy, j.h, j.scale_y);
      Acc weight = Acc(0);
      bool hit = false;
      if (ty.i0 == iy) {
        weight += ty.w0;
        hit = true;
      }
      if (ty.i1 == iy && j.h != j.out_h) {  // without a resize the second tap is unused
        weight += ty.w1;
        hit = true;
      }
      if (hit) s += weight * column[oy * j.w];
    }
  }
  sums_s[k][lane] = s;
  __syncthreads();
  if (k == 0 && ix < j.w) {
    Acc total = Acc(0);
#pragma unroll
    for (int i = 0; i < kFinishRowLanes; ++i) total += sums_s[i][lane];
    j.grad[(plane * j.h + iy) * j.w + ix] = static_cast<scalar_t>(total * j.grad_scale);
  }
}

}  // namespace adv
}  // namespace rtda::cuda
