// Runs the self-training loss's CUDA kernels on the CPU, under the execution-model emulation of
// emu.h, through the same launch plan as the GPU (csrc/cuda/pseudo_label_loss_launch.cuh). A C ABI
// for ctypes (tests/kernels/test_pseudo_label_loss_cuda_emulated.py builds and loads this file):
//
//   int pl_emu_loss_S(student, teacher, labels, threshold, shape, compute_grad, loss, weight, grad)
//   const char* pl_emu_last_error()
//
// S is f32 or f64. shape = {N, C, h, w, H, W}; labels (int64 N x H x W) may be null, so may grad
// when compute_grad is 0. Returns 0, or -1 with pl_emu_last_error() set.
//
// Build: g++ -std=c++20 -O1 -pthread -shared -fPIC -I csrc/include -I csrc/cuda
//        pseudo_label_driver.cpp
#include "emu.h"  // first: defines the CUDA keywords the kernels use
#include "driver_policies.h"

#include <cstdint>
#include <stdexcept>

#include "pseudo_label_loss_launch.cuh"

namespace {

namespace pl = rtda::cuda::pl;

template <typename T>
int run_loss(const T* student, const T* teacher, const int64_t* labels, double threshold,
             const int64_t* shape, int compute_grad, T* loss, T* weight, T* grad) {
  return emu_driver::guarded([&] {
    const int64_t n = shape[0], C = shape[1], h = shape[2], w = shape[3], H = shape[4],
                  W = shape[5];
    if (n <= 0 || C <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0) {
      throw std::invalid_argument("empty shape");
    }
    const pl::Plan plan = pl::plan(n, C, h, w, H, W, compute_grad != 0);
    if (!plan.fits) throw std::invalid_argument("plan does not fit");
    pl::Job<T, T> job{};
    job.student = student;
    job.teacher = teacher;
    job.labels = labels;
    job.weight = weight;
    job.loss = loss;
    job.grad = compute_grad ? grad : nullptr;
    pl::set_sizes(job, n, C, h, w, H, W, threshold);
    emu_driver::VectorAllocator alloc;
    pl::launch<T, T>(job, plan, emu_driver::EmulatedLauncher{}, alloc);
  });
}

}  // namespace

#define RTDA_PL_ENTRY(T, SUFFIX)                                                                   \
  extern "C" int pl_emu_loss_##SUFFIX(const T* student, const T* teacher, const int64_t* labels,  \
                                      double threshold, const int64_t* shape, int compute_grad,   \
                                      T* loss, T* weight, T* grad) {                              \
    return run_loss<T>(student, teacher, labels, threshold, shape, compute_grad, loss, weight,    \
                       grad);                                                                     \
  }
RTDA_PL_ENTRY(float, f32)
RTDA_PL_ENTRY(double, f64)

extern "C" const char* pl_emu_last_error() { return emu_driver::g_last_error.c_str(); }
