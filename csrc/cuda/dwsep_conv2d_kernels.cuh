// Device kernels of the fused depthwise-separable conv + LeakyReLU. The design (which kernel does
// what, and why) is described at the top of dwsep_conv2d_cuda.cu; which kernels are launched, on
// which grids and with which arguments is dwsep_conv2d_launch.cuh, the only file including this.
// Besides nvcc, tests/cuda_emulation/ compiles these kernels with a host compiler under a CPU
// emulation of the CUDA execution model (tests/cuda_emulation/emu.h): use only the CUDA features
// that emulation provides (__syncthreads, __shfl_xor_sync, __shared__, the built-in indices).
//
// All tensors are contiguous NCHW. `Acc` is the accumulation type (float, or double for double).
// Every offset into an activation tensor is computed in int64_t.
#pragma once

#include <cstdint>

#include <rtda/dwsep_math.h>

namespace rtda::cuda {

// Channel-mixing tiles (forward, grad of d, grad of pw_weight): 256 threads as 16 x 16, each
// thread owns kSub x kSub outputs of a kTile x kTile tile; the reduction runs in chunks of kChunk
// staged in shared memory.
constexpr int kThreads = 256;
constexpr int kTile = 64;
constexpr int kChunk = 16;
constexpr int kSub = kTile / 16;
constexpr int kMaxKernel = 7;  // depthwise kernel sizes 1..7 (register tap array below)
constexpr int kMaxTaps = kMaxKernel * kMaxKernel;

// Sizes of one call. out_* come from rtda::conv_out_size.
struct Geometry {
  int64_t n, c_in, c_out, height, width, out_height, out_width, kernel, stride, padding;
  __host__ __device__ int64_t in_plane() const { return height * width; }
  __host__ __device__ int64_t out_plane() const { return out_height * out_width; }
  __host__ __device__ int64_t taps() const { return kernel * kernel; }
};

// Depthwise output d[n, c, p] (bias included) of one image, p a flat output pixel.
template <typename Acc, typename scalar_t>
__device__ __forceinline__ Acc depthwise_at(const scalar_t* x, const scalar_t* dw_w,
                                            const scalar_t* dw_b, const Geometry& g, int64_t n,
                                            int64_t c, int64_t p) {
  const Acc bias = dw_b != nullptr ? static_cast<Acc>(dw_b[c]) : Acc(0);
  return rtda::depthwise_point<Acc>(x + (n * g.c_in + c) * g.in_plane(), dw_w + c * g.taps(), bias,
                                    g.height, g.width, g.kernel, g.stride, g.padding,
                                    p / g.out_width, p % g.out_width);
}

// out[m, p] = sum_{r < R} A(m, r) * B(r, p) for the kTile x kTile tile at rows m0, pixels p0,
// handed to store(m, p, value) for m < M, p < P. load_a / load_b are only called in range (the
// tile is zero-padded). Thread (tx, ty) owns rows m0 + ty + 16 i and pixels p0 + tx + 16 j, so a
// warp's stores cover 16 consecutive pixels of two rows, and its shared reads are broadcasts.
template <typename Acc, typename LoadA, typename LoadB, typename Store>
__device__ __forceinline__ void channel_mix_tile(int64_t M, int64_t R, int64_t P, int64_t m0,
                                                 int64_t p0, const LoadA& load_a,
                                                 const LoadB& load_b, const Store& store) {
  __shared__ Acc a_s[kChunk][kTile];  // a_s[r][m - m0]
  __shared__ Acc b_s[kChunk][kTile];  // b_s[r][p - p0]
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  Acc acc[kSub][kSub] = {};
  for (int64_t r0 = 0; r0 < R; r0 += kChunk) {
    for (int idx = tid; idx < kChunk * kTile; idx += kThreads) {
      const int r = idx / kTile, col = idx % kTile;
      const int64_t rr = r0 + r, m = m0 + col, p = p0 + col;
      a_s[r][col] = (rr < R && m < M) ? load_a(m, rr) : Acc(0);
      b_s[r][col] = (rr < R && p < P) ? load_b(rr, p) : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      Acc a[kSub], b[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) {
        a[i] = a_s[r][ty + 16 * i];
        b[i] = b_s[r][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t m = m0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t p = p0 + tx + 16 * j;
      if (m < M && p < P) store(m, p, acc[i][j]);
    }
  }
}

// Forward. Grid (N * pixel_tiles, ceil(C_out / kTile)). Rows are output channels, the reduction
// runs over input channels, and B(c, p) = d[n, c, p] is computed on the fly, never stored.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    dwsep_forward_kernel(const scalar_t* x, const scalar_t* dw_w, const scalar_t* dw_b,
                         const scalar_t* pw_w, const scalar_t* pw_b, scalar_t* y, Geometry g,
                         rtda::Activation act, int64_t pixel_tiles) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) / pixel_tiles;
  const int64_t p0 = (static_cast<int64_t>(blockIdx.x) % pixel_tiles) * kTile;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t P = g.out_plane();
  scalar_t* y_n = y + n * g.c_out * P;
  channel_mix_tile<Acc>(
      g.c_out, g.c_in, P, o0, p0,
      [&](int64_t o, int64_t c) { return static_cast<Acc>(pw_w[o * g.c_in + c]); },
      [&](int64_t c, int64_t p) { return depthwise_at<Acc>(x, dw_w, dw_b, g, n, c, p); },
      [&](int64_t o, int64_t p, Acc z) {
        if (pw_b != nullptr) z += static_cast<Acc>(pw_b[o]);
        y_n[o * P + p] = static_cast<scalar_t>(act.apply(z));
      });
}

// Backward (a): gd[n, c, p] = sum_o pw_w[o, c] * gz[n, o, p], gz = dL/dz from grad_y and the sign
// of y. Grid (N * pixel_tiles, ceil(C_in / kTile)): rows are input channels, reduction over C_out.
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    grad_depthwise_out_kernel(const scalar_t* grad_y, const scalar_t* y, const scalar_t* pw_w,
                              Acc* gd, Geometry g, rtda::Activation act, int64_t pixel_tiles) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) / pixel_tiles;
  const int64_t p0 = (static_cast<int64_t>(blockIdx.x) % pixel_tiles) * kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t P = g.out_plane();
  const scalar_t* grad_y_n = grad_y + n * g.c_out * P;
  const scalar_t* y_n = y + n * g.c_out * P;
  Acc* gd_n = gd + n * g.c_in * P;
  channel_mix_tile<Acc>(
      g.c_in, g.c_out, P, c0, p0,
      [&](int64_t c, int64_t o) { return static_cast<Acc>(pw_w[o * g.c_in + c]); },
      [&](int64_t o, int64_t p) {
        return act.grad_from_output(static_cast<Acc>(grad_y_n[o * P + p]),
                                    static_cast<Acc>(y_n[o * P + p]));
      },
      [&](int64_t c, int64_t p, Acc v) { gd_n[c * P + p] = v; });
}

// Backward (b): grad_x by gather, one thread per input element (grid-stride loop).
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const Acc* gd, const scalar_t* dw_w, scalar_t* grad_x, Geometry g) {
  const int64_t total = g.n * g.c_in * g.in_plane();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += step) {
    const int64_t w = idx % g.width;
    const int64_t rest = idx / g.width;
    const int64_t h = rest % g.height;
    const int64_t plane = rest / g.height;  // n * C_in + c
    const int64_t c = plane % g.c_in;
    grad_x[idx] = static_cast<scalar_t>(rtda::depthwise_input_grad_point<Acc>(
        gd + plane * g.out_plane(), dw_w + c * g.taps(), 0, g.out_height, g.out_width, g.kernel,
        g.stride, g.padding, h, w));
  }
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Backward (c): per-split partial sums of grad_dw_weight and grad_dw_bias. Grid (C_in, splits):
// block (c, s) reduces over flat (n, p) positions [s * slice, (s + 1) * slice) of channel c, each
// thread keeping all k*k taps plus the bias in registers, then reduces across the block and writes
// partial[s][c][0 .. k*k] (taps row-major, then the bias).
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    dw_grad_partial_kernel(const Acc* gd, const scalar_t* x, Acc* partial, Geometry g,
                           int64_t slice) {
  const int64_t c = blockIdx.x;
  const int64_t P = g.out_plane();
  const int64_t q_begin = static_cast<int64_t>(blockIdx.y) * slice;
  const int64_t q_end = q_begin + slice < g.n * P ? q_begin + slice : g.n * P;
  const int k = static_cast<int>(g.kernel);
  Acc taps[kMaxTaps];
#pragma unroll
  for (int t = 0; t < kMaxTaps; ++t) taps[t] = Acc(0);
  Acc bias = Acc(0);
  for (int64_t q = q_begin + threadIdx.x; q < q_end; q += kThreads) {
    const int64_t n = q / P, p = q % P;
    const int64_t oh = p / g.out_width, ow = p % g.out_width;
    const int64_t plane = n * g.c_in + c;
    const Acc grad = gd[plane * P + p];
    const scalar_t* x_plane = x + plane * g.in_plane();
    bias += grad;
#pragma unroll
    for (int i = 0; i < kMaxKernel; ++i) {
      const int64_t h = rtda::input_coord(oh, i, g.stride, g.padding);
      if (i >= k || h < 0 || h >= g.height) continue;
#pragma unroll
      for (int j = 0; j < kMaxKernel; ++j) {
        const int64_t w = rtda::input_coord(ow, j, g.stride, g.padding);
        if (j >= k || w < 0 || w >= g.width) continue;
        taps[i * kMaxKernel + j] += grad * static_cast<Acc>(x_plane[h * g.width + w]);
      }
    }
  }
  // Block reduction: shuffles within each warp, then one value per warp through shared memory.
  __shared__ Acc warp_sums[kThreads / 32][kMaxTaps + 1];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
  for (int t = 0; t < kMaxTaps; ++t) {
    const Acc v = warp_sum(taps[t]);
    if (lane == 0) warp_sums[warp][t] = v;
  }
  bias = warp_sum(bias);
  if (lane == 0) warp_sums[warp][kMaxTaps] = bias;
  __syncthreads();
  const int t = static_cast<int>(threadIdx.x);
  const int i = t / kMaxKernel, j = t % kMaxKernel;
  if (t == kMaxTaps || (t < kMaxTaps && i < k && j < k)) {
    Acc sum = Acc(0);
    for (int wi = 0; wi < kThreads / 32; ++wi) sum += warp_sums[wi][t];
    const int64_t slot = t == kMaxTaps ? g.taps() : static_cast<int64_t>(i * k + j);
    partial[(static_cast<int64_t>(blockIdx.y) * g.c_in + c) * (g.taps() + 1) + slot] = sum;
  }
}

// Backward (d): per-split partial sums of grad_pw_weight[o, c] = sum gz[o] * d[c] and
// grad_pw_bias[o] = sum gz[o], over flat (n, p) positions. Grid (ceil(C_in / kTile),
// ceil(C_out / kTile), splits); block (ci, oi, s) covers a kTile x kTile (o, c) tile and positions
// [s * slice, (s + 1) * slice), staging kChunk positions of gz and of the recomputed d at a time.
// Writes partial[s][o][0 .. C_in] (the weight row, then the bias; the bias by the ci == 0 blocks).
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    pw_grad_partial_kernel(const scalar_t* grad_y, const scalar_t* y, const scalar_t* x,
                           const scalar_t* dw_w, const scalar_t* dw_b, Acc* partial, Geometry g,
                           rtda::Activation act, int64_t slice) {
  __shared__ Acc gz_s[kTile][kChunk + 1];  // +1: conflict-free column reads below
  __shared__ Acc d_s[kTile][kChunk + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t P = g.out_plane();
  const int64_t q_begin = static_cast<int64_t>(blockIdx.z) * slice;
  const int64_t q_end = q_begin + slice < g.n * P ? q_begin + slice : g.n * P;
  Acc acc[kSub][kSub] = {};
  Acc bias_acc[kSub] = {};
  for (int64_t q0 = q_begin; q0 < q_end; q0 += kChunk) {
    for (int idx = tid; idx < kTile * kChunk; idx += kThreads) {
      const int row = idx / kChunk, col = idx % kChunk;
      const int64_t q = q0 + col, o = o0 + row, c = c0 + row;
      Acc gz = Acc(0), d = Acc(0);
      if (q < q_end) {
        const int64_t n = q / P, p = q % P;
        if (o < g.c_out) {
          const int64_t off = (n * g.c_out + o) * P + p;
          gz = act.grad_from_output(static_cast<Acc>(grad_y[off]), static_cast<Acc>(y[off]));
        }
        if (c < g.c_in) d = depthwise_at<Acc>(x, dw_w, dw_b, g, n, c, p);
      }
      gz_s[row][col] = gz;
      d_s[row][col] = d;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kChunk; ++q) {
      Acc a[kSub], b[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) {
        a[i] = gz_s[ty + 16 * i][q];
        b[i] = d_s[tx + 16 * i][q];
        bias_acc[i] += a[i];
      }
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  Acc* out = partial + static_cast<int64_t>(blockIdx.z) * g.c_out * (g.c_in + 1);
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t o = o0 + ty + 16 * i;
    if (o >= g.c_out) continue;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t c = c0 + tx + 16 * j;
      if (c < g.c_in) out[o * (g.c_in + 1) + c] = acc[i][j];
    }
    if (blockIdx.x == 0 && tx == 0) out[o * (g.c_in + 1) + g.c_in] = bias_acc[i];
  }
}

// Sums the per-split partials [splits][rows][row_len] in a fixed order (deterministic) and casts:
// element t < row_len - 1 of row r goes to weight_grad[r][t], the last one to bias_grad[r].
template <typename scalar_t, typename Acc>
__global__ void __launch_bounds__(kThreads)
    finalize_partials_kernel(const Acc* partial, int64_t splits, int64_t rows, int64_t row_len,
                             scalar_t* weight_grad, scalar_t* bias_grad) {
  const int64_t total = rows * row_len;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += step) {
    Acc sum = Acc(0);
    for (int64_t s = 0; s < splits; ++s) sum += partial[s * total + idx];
    const int64_t r = idx / row_len, t = idx % row_len;
    if (t < row_len - 1) {
      weight_grad[r * (row_len - 1) + t] = static_cast<scalar_t>(sum);
    } else {
      bias_grad[r] = static_cast<scalar_t>(sum);
    }
  }
}

}  // namespace rtda::cuda
