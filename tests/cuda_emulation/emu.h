// CPU emulation of the CUDA execution model, just enough to run the kernels of csrc/cuda/ with a
// host C++20 compiler and no GPU (tests/kernels/test_dwsep_conv2d_cuda_emulated.py builds
// dwsep_driver.cpp with it and compares the results with the PyTorch reference).
//
// What it models:
//   * a launch: gridDim / blockDim, and every block of the grid run in turn (one block at a time,
//     in x, then y, then z order), each by blockDim.x CPU threads (one std::thread per CUDA
//     thread, created once per launch and reused for every block), threadIdx / blockIdx set per
//     thread;
//   * __syncthreads(): a std::barrier of the block's threads. A thread that returns from the kernel
//     leaves the barrier (arrive_and_drop), as an exited GPU thread no longer counts;
//   * __shfl_xor_sync(0xffffffff, v, lane_mask): lanes publish v in one of two slot sets
//     (alternating per shuffle), a barrier of the 32 threads of the warp, each reads its partner's
//     value. A set is written again two shuffles later, i.e. only after every lane has passed the
//     next barrier and so has finished reading it;
//   * __shared__: a function-local `static`, i.e. one copy per kernel instantiation, which the
//     threads of the running block share (blocks never run concurrently, so one copy is enough);
//   * launch-time limits: grid.x <= 2^31 - 1, grid.y and grid.z <= 65535, no empty grid, at most
//     1024 threads, a whole number of warps. A violation throws std::invalid_argument from
//     emu_launch, before any thread runs.
//
// What it does NOT model (a kernel can be wrong in these ways and still pass under emulation):
//   * the memory model: all threads see one coherent host memory; the barriers order everything.
//     Missing __threadfence, races between blocks (blocks are serialised), visibility of
//     non-volatile shared loads across warps without a barrier: none of these can show up here.
//     Atomics are not provided at all (the kernels use none);
//   * warp execution: the 32 lanes of a warp are independent threads; lockstep, divergence and
//     reconvergence are not modelled, only the barrier implied by a *_sync shuffle. Partial masks
//     and width != 32 are reported as errors instead of emulated;
//   * __syncthreads() reached from divergent code: the barrier counts arrivals, whichever call site
//     they come from (undefined behaviour on a GPU, silently "works" here);
//   * shared memory contents at block start: they keep the previous block's values instead of
//     being undefined; there is no limit on shared memory size, no bank conflicts, no occupancy;
//   * device numerics: host float/double arithmetic (the compiler may contract a * b + c into an
//     FMA differently from nvcc), no fast-math intrinsics, no half/bfloat16 device types;
//   * streams, asynchrony, launch failures other than the limits above, performance.
//
// Threads only ever block in the barriers above, so a kernel that loops forever hangs the caller;
// an out-of-bounds access is an ordinary host out-of-bounds access (the test poisons buffers with
// NaN so that unwritten outputs show up, but nothing checks bounds).
#pragma once

#if defined(__CUDACC__)
#error "emu.h replaces the CUDA language for a host compiler; do not compile it with nvcc"
#endif

#include <atomic>
#include <barrier>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// The CUDA keywords the kernels use, for a host compiler.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// Built-in variables. threadIdx / blockIdx are per emulated thread; gridDim / blockDim are set by
// emu_launch before its threads start.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 gridDim;
inline dim3 blockDim;

namespace cuda_emu {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxWarps = kMaxThreadsPerBlock / kWarpSize;

// Barriers of the block now running: one for __syncthreads, one per warp for the shuffles.
// Re-armed (rebuilt) between blocks, so threads that left them by returning count again.
struct BlockBarriers {
  std::optional<std::barrier<>> block;
  std::optional<std::barrier<>> warp[kMaxWarps];

  void arm(unsigned threads) {
    block.emplace(static_cast<std::ptrdiff_t>(threads));
    for (unsigned w = 0; w < threads / kWarpSize; ++w) warp[w].emplace(kWarpSize);
  }
};

inline BlockBarriers* g_barriers = nullptr;  // of the launch in progress

// First error raised by an emulated thread (a misuse the emulation does not support); emu_launch
// throws it once the launch is over. Threads must not throw: that would terminate the process.
inline std::mutex g_error_mutex;
inline std::string g_error;
inline std::atomic<bool> g_failed{false};

inline void report_error(const std::string& message) {
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  if (!g_failed.exchange(true)) g_error = message;
}

// The slots lanes publish their shuffle operands in, per type, [set][warp][lane], and the number
// of shuffles this thread has done in the current block (which picks the set).
template <typename T>
inline T g_shuffle_slots[2][kMaxWarps][kWarpSize];
inline thread_local unsigned g_shuffles_done = 0;

}  // namespace cuda_emu

inline void __syncthreads() { cuda_emu::g_barriers->block->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  using namespace cuda_emu;
  if (mask != 0xffffffffu || width != static_cast<int>(kWarpSize) || lane_mask < 0 ||
      lane_mask >= static_cast<int>(kWarpSize)) {
    report_error("__shfl_xor_sync: only a full mask, width 32 and lane_mask < 32 are emulated");
    return value;
  }
  const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  T(&slots)[kMaxWarps][kWarpSize] = g_shuffle_slots<T>[g_shuffles_done++ % 2];
  slots[warp][lane] = value;
  g_barriers->warp[warp]->arrive_and_wait();  // every lane of the warp has published
  return slots[warp][lane ^ static_cast<unsigned>(lane_mask)];
}

// Runs `kernel_body` (a callable running one CUDA thread's kernel code, e.g.
// [&] { my_kernel(args...); }) on every thread of every block of `grid`, `threads` threads per
// block. Returns when the whole grid has finished (a launch followed by a device synchronisation).
// Throws std::invalid_argument for a launch the GPU would refuse, std::runtime_error for a
// reported misuse. Launches are serialised (one at a time per process).
template <typename KernelBody>
void emu_launch(dim3 grid, unsigned threads, const KernelBody& kernel_body) {
  using namespace cuda_emu;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535u ||
      grid.z > 65535u) {
    throw std::invalid_argument("emu_launch: invalid grid (" + std::to_string(grid.x) + ", " +
                                std::to_string(grid.y) + ", " + std::to_string(grid.z) + ")");
  }
  if (threads == 0 || threads > kMaxThreadsPerBlock || threads % kWarpSize != 0) {
    throw std::invalid_argument("emu_launch: block size " + std::to_string(threads) +
                                " is not a whole number of warps in [32, 1024]");
  }
  static std::mutex launch_mutex;
  const std::lock_guard<std::mutex> lock(launch_mutex);

  gridDim = grid;
  blockDim = dim3(threads);
  g_failed = false;
  g_error.clear();
  BlockBarriers barriers;
  barriers.arm(threads);
  g_barriers = &barriers;
  // Between blocks: all threads have finished (and left the block's barriers); re-arm them.
  const auto rearm = [&barriers, threads]() noexcept { barriers.arm(threads); };
  std::barrier<decltype(rearm)> block_end(static_cast<std::ptrdiff_t>(threads), rearm);

  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  // The threads start once all exist (1), or quit at once (-1) if one could not be created.
  std::atomic<int> go{0};
  std::vector<std::thread> pool;
  pool.reserve(threads);
  const auto start = [&](int how) {
    go = how;
    go.notify_all();
  };
  for (unsigned t = 0; t < threads; ++t) {
    try {
      pool.emplace_back([&, t] {
        go.wait(0);
        if (go < 0) return;
        threadIdx = uint3{t, 0, 0};
        for (uint64_t b = 0; b < blocks; ++b) {
          g_shuffles_done = 0;
          blockIdx = uint3{static_cast<unsigned>(b % grid.x),
                           static_cast<unsigned>(b / grid.x % grid.y),
                           static_cast<unsigned>(b / grid.x / grid.y)};
          kernel_body();
          // The thread has exited: it no longer takes part in __syncthreads or in its warp's
          // shuffles.
          barriers.block->arrive_and_drop();
          barriers.warp[t / kWarpSize]->arrive_and_drop();
          block_end.arrive_and_wait();
        }
      });
    } catch (...) {  // std::system_error: out of threads
      start(-1);
      for (std::thread& thread : pool) thread.join();
      g_barriers = nullptr;
      throw;
    }
  }
  start(1);
  for (std::thread& thread : pool) thread.join();
  g_barriers = nullptr;
  if (g_failed) throw std::runtime_error(g_error);
}
