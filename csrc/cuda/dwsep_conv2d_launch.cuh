// Host-side launch plan of the dwsep_conv2d CUDA kernels (dwsep_conv2d_kernels.cuh): grid sizes,
// reduction splits, temporary buffer sizes, and the sequence of launches with their arguments.
// Written once for two callers:
//   * csrc/cuda/dwsep_conv2d_cuda.cu (torch glue) runs it on the GPU: kernel<<<grid, block, 0,
//     stream>>>(args...) and temporaries from at::empty;
//   * tests/cuda_emulation/driver.cpp runs it on the CPU under tests/cuda_emulation/emu.h, a CPU
//     emulation of the CUDA execution model, with temporaries in std::vector.
// So the test of the emulated kernels checks the grids, splits and argument lists the GPU gets.
// Nothing here may use torch or the CUDA runtime API (dim3 comes from nvcc or from emu.h).
//
// The two policies the launch_* functions are templated on:
//   Launcher   launch(grid, block, kernel, args...): run the __global__ function `kernel` (a
//              pointer to an instantiation from dwsep_conv2d_kernels.cuh) on `grid` blocks of
//              `block` threads with `args`, in order after the previous launches.
//   Allocator  alloc.allocate<T>(numel) -> T*: uninitialised device memory for `numel` elements,
//              valid as long as the kernels launched here may use it (the caller keeps the
//              allocator alive; on the GPU, freeing after enqueueing on the same stream is safe).
// Plans are computed first (plan_forward / plan_backward); a caller must refuse a plan whose `fits`
// is false (a grid over the hardware limits) before launching it.
#pragma once

#include <cstdint>

#include <rtda/dwsep_math.h>

#include "dwsep_conv2d_kernels.cuh"

namespace rtda::cuda {

// Target block counts when splitting the (n, pixel) reductions of backward (c) and (d).
constexpr int64_t kDwTargetBlocks = 1024;
constexpr int64_t kPwTargetBlocks = 512;
// Most blocks of a grid-stride kernel (grad_input, finalize_partials).
constexpr int64_t kMaxGridStrideBlocks = 65536;
// Launch limits: gridDim.x, gridDim.y / gridDim.z.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How backward (c) and (d) split their reduction over the n * Ho * Wo positions: `splits` blocks
// per output tile, each summing `slice` consecutive positions (a multiple of `align`). Aims at
// `target_blocks` blocks in all, but gives each at least `min_per_block` positions; this also
// bounds the partial buffers (splits * tiles <= target_blocks unless tiles alone exceed it).
struct PositionSplit {
  int64_t splits, slice;
};
inline PositionSplit split_positions(int64_t positions, int64_t tiles, int64_t target_blocks,
                                     int64_t min_per_block, int64_t align) {
  int64_t splits = ceil_div(target_blocks, tiles);
  splits = splits < 1 ? 1 : splits;
  const int64_t most = ceil_div(positions, min_per_block);
  splits = splits < most ? splits : most;
  const int64_t slice = ceil_div(ceil_div(positions, splits), align) * align;
  return {ceil_div(positions, slice), slice};  // no empty split
}

// Blocks of a grid-stride kernel over `total` elements.
inline unsigned grid_stride_blocks(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<unsigned>(blocks < kMaxGridStrideBlocks ? blocks : kMaxGridStrideBlocks);
}

// Grid of the channel-mixing kernels (forward, backward (a)): x = image * pixel tile, y = tile of
// `rows` channels; `fits` is false when it is over the launch limits.
struct ChannelMixGrid {
  dim3 grid;
  int64_t pixel_tiles;
  bool fits;
};
inline ChannelMixGrid channel_mix_grid(const Geometry& g, int64_t rows) {
  const int64_t pixel_tiles = ceil_div(g.out_plane(), kTile);
  const int64_t gx = g.n * pixel_tiles, gy = ceil_div(rows, kTile);
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), pixel_tiles,
          gx <= kMaxGridX && gy <= kMaxGridYZ};
}

// ---------------------------------------------------------------------------------------------
// Forward: one kernel.

struct ForwardPlan {
  ChannelMixGrid mix;  // dwsep_forward_kernel, rows = output channels
  bool fits;
};

inline ForwardPlan plan_forward(const Geometry& g) {
  const ChannelMixGrid mix = channel_mix_grid(g, g.c_out);
  return {mix, mix.fits};
}

template <typename scalar_t>
struct ForwardTensors {
  const scalar_t* x;          // N x C_in x H x W
  const scalar_t* dw_weight;  // C_in x 1 x k x k
  const scalar_t* dw_bias;    // C_in, or nullptr
  const scalar_t* pw_weight;  // C_out x C_in x 1 x 1
  const scalar_t* pw_bias;    // C_out, or nullptr
  scalar_t* y;                // N x C_out x Ho x Wo (output)
};

template <typename scalar_t, typename Acc, typename Launcher>
void launch_forward(const ForwardPlan& plan, const Geometry& g, const rtda::Activation& act,
                    const ForwardTensors<scalar_t>& t, Launcher&& launch) {
  launch(plan.mix.grid, kThreads, dwsep_forward_kernel<scalar_t, Acc>, t.x, t.dw_weight,
         t.dw_bias, t.pw_weight, t.pw_bias, t.y, g, act, plan.mix.pixel_tiles);
}

// ---------------------------------------------------------------------------------------------
// Backward: (a) gd, (b) grad_x, (c) grad_dw_weight / grad_dw_bias as per-split partials + their
// finalisation, (d) the same for grad_pw_weight / grad_pw_bias (see dwsep_conv2d_cuda.cu).

struct BackwardPlan {
  // (a) grad_depthwise_out_kernel, rows = input channels; gd has gd_numel elements.
  ChannelMixGrid mix;
  int64_t gd_numel;
  // (b) grad_input_kernel, grid-stride over the elements of x.
  dim3 grad_x_grid;
  // (c) dw_grad_partial_kernel over (channel, split), then finalize_partials_kernel.
  PositionSplit dw_split;
  int64_t dw_row_len;  // k*k taps, then the bias
  int64_t dw_partial_numel;
  dim3 dw_grid, dw_finalize_grid;
  // (d) pw_grad_partial_kernel over (C_in tile, C_out tile, split), then finalize_partials_kernel.
  PositionSplit pw_split;
  int64_t pw_row_len;  // C_in weights, then the bias
  int64_t pw_partial_numel;
  dim3 pw_grid, pw_finalize_grid;
  bool fits;
};

inline BackwardPlan plan_backward(const Geometry& g) {
  BackwardPlan p{};
  p.mix = channel_mix_grid(g, g.c_in);
  p.gd_numel = g.n * g.c_in * g.out_plane();
  p.grad_x_grid = dim3(grid_stride_blocks(g.n * g.c_in * g.in_plane()));

  const int64_t positions = g.n * g.out_plane();
  p.dw_split = split_positions(positions, g.c_in, kDwTargetBlocks, 1024, 1);
  p.dw_row_len = g.taps() + 1;
  p.dw_partial_numel = p.dw_split.splits * g.c_in * p.dw_row_len;
  p.dw_grid = dim3(static_cast<unsigned>(g.c_in), static_cast<unsigned>(p.dw_split.splits));
  p.dw_finalize_grid = dim3(grid_stride_blocks(g.c_in * p.dw_row_len));

  const int64_t pw_c_tiles = ceil_div(g.c_in, kTile), pw_o_tiles = ceil_div(g.c_out, kTile);
  p.pw_split = split_positions(positions, pw_c_tiles * pw_o_tiles, kPwTargetBlocks, 256, kChunk);
  p.pw_row_len = g.c_in + 1;
  p.pw_partial_numel = p.pw_split.splits * g.c_out * p.pw_row_len;
  p.pw_grid = dim3(static_cast<unsigned>(pw_c_tiles), static_cast<unsigned>(pw_o_tiles),
                   static_cast<unsigned>(p.pw_split.splits));
  p.pw_finalize_grid = dim3(grid_stride_blocks(g.c_out * p.pw_row_len));

  // The splits are at most the target block counts, far below the limits.
  p.fits = p.mix.fits && g.c_in <= kMaxGridX && pw_o_tiles <= kMaxGridYZ;
  return p;
}

template <typename scalar_t>
struct BackwardTensors {
  // Inputs (y: the forward output, whose sign gives the activation's gradient).
  const scalar_t* grad_y;     // N x C_out x Ho x Wo
  const scalar_t* x;          // N x C_in x H x W
  const scalar_t* y;          // N x C_out x Ho x Wo
  const scalar_t* dw_weight;  // C_in x 1 x k x k
  const scalar_t* dw_bias;    // C_in, or nullptr
  const scalar_t* pw_weight;  // C_out x C_in x 1 x 1
  // Outputs, every element written.
  scalar_t* grad_x;          // N x C_in x H x W
  scalar_t* grad_dw_weight;  // C_in x 1 x k x k
  scalar_t* grad_dw_bias;    // C_in
  scalar_t* grad_pw_weight;  // C_out x C_in x 1 x 1
  scalar_t* grad_pw_bias;    // C_out
};

template <typename scalar_t, typename Acc, typename Launcher, typename Allocator>
void launch_backward(const BackwardPlan& plan, const Geometry& g, const rtda::Activation& act,
                     const BackwardTensors<scalar_t>& t, Launcher&& launch, Allocator& alloc) {
  Acc* const gd = alloc.template allocate<Acc>(plan.gd_numel);
  Acc* const dw_partial = alloc.template allocate<Acc>(plan.dw_partial_numel);
  Acc* const pw_partial = alloc.template allocate<Acc>(plan.pw_partial_numel);

  // (a) gd = dL/dd.
  launch(plan.mix.grid, kThreads, grad_depthwise_out_kernel<scalar_t, Acc>, t.grad_y, t.y,
         t.pw_weight, gd, g, act, plan.mix.pixel_tiles);
  // (b) grad_x.
  launch(plan.grad_x_grid, kThreads, grad_input_kernel<scalar_t, Acc>, gd, t.dw_weight, t.grad_x,
         g);
  // (c) grad_dw_weight, grad_dw_bias.
  launch(plan.dw_grid, kThreads, dw_grad_partial_kernel<scalar_t, Acc>, gd, t.x, dw_partial, g,
         plan.dw_split.slice);
  launch(plan.dw_finalize_grid, kThreads, finalize_partials_kernel<scalar_t, Acc>, dw_partial,
         plan.dw_split.splits, g.c_in, plan.dw_row_len, t.grad_dw_weight, t.grad_dw_bias);
  // (d) grad_pw_weight, grad_pw_bias.
  launch(plan.pw_grid, kThreads, pw_grad_partial_kernel<scalar_t, Acc>, t.grad_y, t.y, t.x,
         t.dw_weight, t.dw_bias, pw_partial, g, act, plan.pw_split.slice);
  launch(plan.pw_finalize_grid, kThreads, finalize_partials_kernel<scalar_t, Acc>, pw_partial,
         plan.pw_split.splits, g.c_out, plan.pw_row_len, t.grad_pw_weight, t.grad_pw_bias);
}

}  // namespace rtda::cuda
