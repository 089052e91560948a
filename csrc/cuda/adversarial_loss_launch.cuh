// Host-side launch plan of the adversarial-loss CUDA kernels (adversarial_loss_kernels.cuh): grid
// and block sizes, temporary buffer sizes, and the launches with their arguments. Written once for
// two callers:
//   * csrc/cuda/adversarial_loss_cuda.cu (torch glue) runs it on the GPU: kernel<<<grid, block, 0,
//     stream>>>(args...) and temporaries from at::empty;
//   * tests/cuda_emulation/adversarial_driver.cpp runs it on the CPU under
//     tests/cuda_emulation/emu.h, a CPU emulation of the CUDA execution model, with temporaries in
//     std::vector.
// So the test of the emulated kernels checks the grids and argument lists the GPU gets. Nothing
// here may use torch or the CUDA runtime API (dim3 comes from nvcc or from emu.h).
//
// The two policies launch_loss is templated on (the same as dwsep_conv2d_launch.cuh):
//   Launcher   launch(grid, block, kernel, args...): run the __global__ function `kernel` on `grid`
//              blocks of `block` threads with `args`, in order after the previous launches.
//   Allocator  alloc.allocate<T>(numel) -> T*: uninitialised device memory for `numel` elements,
//              valid as long as the kernels launched here may use it.
// A plan is computed first (plan_loss); a caller must refuse a plan whose `fits` is false (sizes
// over the kernels' index types or the launch limits) before launching it.
#pragma once

#include <cstdint>

#include <rtda/adversarial_math.h>

#include "adversarial_loss_kernels.cuh"

namespace rtda::cuda {
namespace adv {

// Kernel A aims at this many blocks per map (more output rows per block beyond it): enough to fill
// an H100 (132 SMs) several times over, few enough that the loss partials stay small.
constexpr int64_t kTargetRowBlocks = 1024;
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxIndex = 2147483647;  // low-res columns are kept in int in shared memory

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What a call computes.
enum class Mode {
  kLossNone,       // adversarial_loss, reduction none: the loss map
  kLossMean,       // adversarial_loss, reduction mean: loss (+ gradient when compute_grad)
  kLossSum,        // adversarial_loss, reduction sum: loss (+ gradient when compute_grad)
  kBackward,       // adversarial_loss_backward: gradient of sum(grad_loss * loss map)
  kDiscriminator,  // discriminator_loss: two maps (+ both gradients when compute_grad)
};

// Sizes of one map: planes = N * C low-res planes of h x w.
struct MapShape {
  int64_t planes, h, w;
};

// Per map (index 0, and 1 for the discriminator's target map).
struct MapPlan {
  MapShape shape;
  int64_t rows_per_block, row_blocks;  // kernel A
  int64_t ix_tiles, grad_blocks;       // kernel B (grad_blocks 0 without a gradient)
  int64_t rows_numel;                  // the planes x H x w buffer (0 without a gradient)
  double loss_scale;                   // loss = sum of the map's BCE * loss_scale
  double grad_scale;                   // its gradient's constant factor
};

struct LossPlan {
  Mode mode;
  int count;  // maps: 2 for the discriminator, else 1
  MapPlan map[2];
  int64_t out_h, out_w;
  bool grad;    // gradients are computed (kernel B's gradient blocks, the rows buffers)
  bool reduce;  // a 0-dim loss is computed (per-block partials, kernel B's last block)
  int threads;  // kernel A's block size
  int group;    // kernel A's lanes per low-res column
  dim3 rows_grid;
  bool finish;  // kernel B runs
  dim3 finish_grid;
  bool fits;
};

// Kernel A's block: one thread per output pixel of a chunk, the row width rounded up to whole
// warps, in [kMinRowThreads, kMaxRowThreads].
inline int row_threads(int64_t out_w) {
  const int64_t rounded = ceil_div(out_w, kWarp) * kWarp;
  return static_cast<int>(rounded < kMinRowThreads
                              ? kMinRowThreads
                              : (rounded > kMaxRowThreads ? kMaxRowThreads : rounded));
}

// Lanes per low-res column in kernel A's horizontal transpose: about out_w / w output pixels
// reach a column (2 out_w / w through its two taps), so that many lanes, rounded down to a power
// of two in [1, 32].
inline int column_group(int64_t w, int64_t out_w) {
  int group = 1;
  while (group < kWarp && static_cast<int64_t>(group) * 2 * w <= out_w) group *= 2;
  return group;
}

// `maps`: 1 map, or 2 for kDiscriminator. compute_grad is implied by kBackward and ignored by
// kLossNone.
inline LossPlan plan_loss(Mode mode, const MapShape* maps, int64_t out_h, int64_t out_w,
                          bool compute_grad) {
  LossPlan p{};
  p.mode = mode;
  p.count = mode == Mode::kDiscriminator ? 2 : 1;
  p.out_h = out_h;
  p.out_w = out_w;
  p.grad = mode == Mode::kBackward || (mode != Mode::kLossNone && compute_grad);
  p.reduce = mode == Mode::kLossMean || mode == Mode::kLossSum || mode == Mode::kDiscriminator;
  p.threads = row_threads(out_w);
  p.fits = out_h > 0 && out_w > 0 && out_w <= kMaxIndex;
  int64_t rows_blocks = 0, grad_blocks = 0, widest = 1;
  for (int m = 0; m < p.count; ++m) {
    MapPlan& mp = p.map[m];
    mp.shape = maps[m];
    const MapShape& s = mp.shape;
    p.fits = p.fits && s.planes > 0 && s.h > 0 && s.w > 0 && s.w <= kMaxIndex;
    if (!p.fits) return p;
    const int64_t total_rows = s.planes * out_h;
    mp.rows_per_block = ceil_div(total_rows, kTargetRowBlocks);
    mp.row_blocks = ceil_div(total_rows, mp.rows_per_block);
    mp.ix_tiles = ceil_div(s.w, kFinishLanes);
    mp.grad_blocks = p.grad ? s.planes * s.h * mp.ix_tiles : 0;
    mp.rows_numel = p.grad ? total_rows * s.w : 0;
    const double pixels = static_cast<double>(total_rows) * static_cast<double>(out_w);
    switch (mode) {
      case Mode::kLossMean:
        mp.loss_scale = mp.grad_scale = 1.0 / pixels;
        break;
      case Mode::kDiscriminator:
        mp.loss_scale = mp.grad_scale = 0.5 / pixels;
        break;
      default:  // sum, backward (grad_loss is per pixel), none (no scale used)
        mp.loss_scale = mp.grad_scale = 1.0;
        break;
    }
    rows_blocks += mp.row_blocks;
    grad_blocks += mp.grad_blocks;
    widest = s.w > widest ? s.w : widest;
  }
  // Both maps of the discriminator share out_w, hence the block size; the group follows the
  // wider map (it only balances work, any power of two <= 32 is correct).
  p.group = column_group(widest, out_w);
  p.finish = p.grad || p.reduce;
  const int64_t finish_blocks = grad_blocks + (p.reduce ? 1 : 0);
  p.fits = p.fits && rows_blocks <= kMaxGridX && finish_blocks <= kMaxGridX;
  p.rows_grid = dim3(static_cast<unsigned>(rows_blocks));
  p.finish_grid = dim3(static_cast<unsigned>(finish_blocks > 0 ? finish_blocks : 1));
  return p;
}

// The tensors of one map. Inputs may be nullptr where the mode does not read them (target:
// nullptr means the constant target_value); outputs are nullptr where the mode does not write them.
template <typename scalar_t>
struct MapTensors {
  const scalar_t* logits;     // planes x h x w
  const scalar_t* target;     // planes x H x W, or nullptr
  double target_value;        // the label when target is nullptr
  const scalar_t* grad_loss;  // planes x H x W (kBackward), else nullptr
  scalar_t* loss_map;         // planes x H x W (kLossNone), else nullptr
  scalar_t* grad;             // planes x h x w when the plan has `grad`, else nullptr
};

template <typename scalar_t>
struct LossTensors {
  MapTensors<scalar_t> map[2];
  scalar_t* loss;  // 0-dim loss when the plan has `reduce`, else nullptr
};

template <typename scalar_t, typename Acc, typename Launcher, typename Allocator>
void launch_loss(const LossPlan& plan, const LossTensors<scalar_t>& t, Launcher&& launch,
                 Allocator& alloc) {
  MapJobs<scalar_t, Acc> jobs{};
  jobs.count = plan.count;
  for (int m = 0; m < plan.count; ++m) {
    const MapPlan& mp = plan.map[m];
    const MapTensors<scalar_t>& mt = t.map[m];
    MapJob<scalar_t, Acc>& j = jobs.job[m];
    j.logits = mt.logits;
    j.target = mt.target;
    j.grad_loss = plan.mode == Mode::kBackward ? mt.grad_loss : nullptr;
    j.loss_map = plan.mode == Mode::kLossNone ? mt.loss_map : nullptr;
    j.partial = plan.reduce ? alloc.template allocate<Acc>(mp.row_blocks) : nullptr;
    j.rows = plan.grad ? alloc.template allocate<Acc>(mp.rows_numel) : nullptr;
    j.grad = plan.grad ? mt.grad : nullptr;
    j.target_value = static_cast<Acc>(mt.target_value);
    j.scale_y = rtda::resize_scale<Acc>(mp.shape.h, plan.out_h);
    j.scale_x = rtda::resize_scale<Acc>(mp.shape.w, plan.out_w);
    j.grad_scale = static_cast<Acc>(mp.grad_scale);
    j.planes = mp.shape.planes;
    j.h = mp.shape.h;
    j.w = mp.shape.w;
    j.out_h = plan.out_h;
    j.out_w = plan.out_w;
    j.rows_per_block = mp.rows_per_block;
    j.row_blocks = mp.row_blocks;
    j.ix_tiles = mp.ix_tiles;
    j.grad_blocks = mp.grad_blocks;
  }
  launch(plan.rows_grid, plan.threads, resize_bce_rows_kernel<scalar_t, Acc>, jobs, plan.group);
  if (plan.finish) {
    launch(plan.finish_grid, kFinishThreads, finish_kernel<scalar_t, Acc>, jobs, plan.reduce,
           static_cast<Acc>(plan.map[0].loss_scale),
           static_cast<Acc>(plan.count > 1 ? plan.map[1].loss_scale : 0.0), t.loss);
  }
}

}  // namespace adv
}  // namespace rtda::cuda
