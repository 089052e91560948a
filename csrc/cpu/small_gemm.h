// Small single-threaded GEMMs on cache-resident tiles, for the CPU kernels of dwsep_conv2d.
//
// Why not at::mm: the kernels call these from inside at::parallel_for, and a multi-threaded BLAS
// called there opens nested OpenMP teams that oversubscribe the cores (measured: a 60x slowdown
// with 2 threads on this machine). These loops are written so that the compiler keeps the
// accumulator block in vector registers (fixed block sizes, fully unrolled); results are
// deterministic (a fixed summation order for a given shape).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace rtda::cpu {

// Register blocking of gemm_nn: MR rows x (two vectors of) NR columns of accumulators, half the
// vector register file (AVX-512: 32 registers of 64 bytes; AVX2 and others: 16 of 32 bytes).
constexpr int kGemmRows = kVectorBytes == 64 ? 8 : 4;

// Below this many columns gemm_nn runs its plain edge loops only.
constexpr int kGemmMinColumns = 2 * kVectorBytes / 4;

// The GEMMs below hand every finished piece of C = A @ B to a store: store(row, col, values,
// count) receives C[row, col .. col + count). These two write it to a row-major matrix; the
// forward kernel's store applies bias and activation and writes the output directly.
template <typename T>
struct StoreOverwrite {
  T* c;
  int64_t ldc;
  void operator()(int64_t row, int64_t col, const T* values, int64_t count) const {
    std::copy(values, values + count, c + row * ldc + col);
  }
};

template <typename T>
struct StoreAdd {
  T* c;
  int64_t ldc;
  void operator()(int64_t row, int64_t col, const T* values, int64_t count) const {
    T* __restrict__ dst = c + row * ldc + col;
    for (int64_t t = 0; t < count; ++t) dst[t] += values[t];
  }
};

// Rows [row0, row0 + MR) x columns [col0, col0 + NR) of A[. x K] @ B[K x .] (row-major,
// leading dimensions lda, ldb; a and b point at the block's first row and column).
// The accumulators are explicit SIMD vectors, not a scalar array left to the auto-vectoriser:
// where GCC's tuning prefers 128-bit vectors (e.g. -march=znver1), a float acc[4][16] became 16
// xmm registers (the whole register file) and spilled on every k, 5-10x slower.
template <typename T, int MR, int NR, typename Store>
inline void gemm_nn_block(int64_t k_size, const T* a, int64_t lda, const T* b, int64_t ldb,
                          int64_t row0, int64_t col0, const Store& store) {
  constexpr int V = lanes<T>();
  static_assert(NR % V == 0, "NR must be a whole number of vectors");
  constexpr int NV = NR / V;
  Vec<T> acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>{};
  }
  for (int64_t k = 0; k < k_size; ++k) {
    const T* brow = b + k * ldb;
    Vec<T> bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_vec(brow + v * V);
    for (int r = 0; r < MR; ++r) {
      const T av = a[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MR; ++r) {
    T out[NR];
    for (int v = 0; v < NV; ++v) store_vec(out + v * V, acc[r][v]);
    store(row0 + r, col0, out, NR);
  }
}

// Edge blocks (cols < NR columns left): plain loops.
template <typename T, int NR, typename Store>
inline void gemm_nn_edge(int64_t rows, int64_t cols, int64_t k_size, const T* a, int64_t lda,
                         const T* b, int64_t ldb, int64_t col0, const Store& store) {
  for (int64_t r = 0; r < rows; ++r) {
    T acc[NR] = {};
    for (int64_t k = 0; k < k_size; ++k) {
      const T av = a[r * lda + k];
      const T* __restrict__ brow = b + k * ldb;
      for (int64_t t = 0; t < cols; ++t) acc[t] += av * brow[t];
    }
    store(r, col0, acc, cols);
  }
}

// C[M x N] = A[M x K] @ B[K x N], handed to `store`. Column blocks outside, so a K x NR panel of
// B stays in L1 while every row block of A passes over it.
template <typename T, typename Store>
void gemm_nn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
             const Store& store) {
  constexpr int MR = kGemmRows, NR = 2 * kVectorBytes / static_cast<int>(sizeof(T));
  int64_t j = 0;
  for (; j + NR <= n; j += NR) {
    int64_t i = 0;
    for (; i + MR <= m; i += MR) gemm_nn_block<T, MR, NR>(k, a + i * lda, lda, b + j, ldb, i, j, store);
    for (; i < m; ++i) gemm_nn_block<T, 1, NR>(k, a + i * lda, lda, b + j, ldb, i, j, store);
  }
  if (j < n) gemm_nn_edge<T, NR>(m, n - j, k, a, lda, b + j, ldb, j, store);
}

// C[MR x NR] += A[MR x K] @ B[NR x K]^T: dot products over K, V lanes at a time, in explicit
// SIMD vectors (see gemm_nn_block for why not a scalar array).
template <typename T, int MR, int NR>
inline void gemm_nt_block(int64_t k_size, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                          int64_t ldc) {
  constexpr int V = lanes<T>();
  Vec<T> acc[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int s = 0; s < NR; ++s) acc[r][s] = Vec<T>{};
  }
  int64_t k = 0;
  for (; k + V <= k_size; k += V) {
    Vec<T> av[MR];
    for (int r = 0; r < MR; ++r) av[r] = load_vec(a + r * lda + k);
    for (int s = 0; s < NR; ++s) {
      const Vec<T> bv = load_vec(b + s * ldb + k);
      for (int r = 0; r < MR; ++r) acc[r][s] += av[r] * bv;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int s = 0; s < NR; ++s) {
      T lanes_out[V];
      store_vec(lanes_out, acc[r][s]);
      T sum = 0;
      for (int v = 0; v < V; ++v) sum += lanes_out[v];
      for (int64_t kk = k; kk < k_size; ++kk) sum += a[r * lda + kk] * b[s * ldb + kk];
      c[r * ldc + s] += sum;
    }
  }
}

// C[M x N] += A[M x K] @ B[N x K]^T, for weight gradients (K is a long run of pixels). Blocks of
// 2 x 4 dot products: 8 vector accumulators + 3 operands fit the 16 registers of AVX2.
template <typename T>
void gemm_nt_acc(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T* c, int64_t ldc) {
  constexpr int BM = 2, BN = 4;
  for (int64_t i = 0; i < m; i += BM) {
    for (int64_t j = 0; j < n; j += BN) {
      const T* ai = a + i * lda;
      const T* bj = b + j * ldb;
      T* cij = c + i * ldc + j;
      if (i + BM <= m && j + BN <= n) {
        gemm_nt_block<T, BM, BN>(k, ai, lda, bj, ldb, cij, ldc);
        continue;
      }
      for (int64_t r = 0; r < std::min<int64_t>(BM, m - i); ++r) {
        for (int64_t s = 0; s < std::min<int64_t>(BN, n - j); ++s) {
          gemm_nt_block<T, 1, 1>(k, ai + r * lda, lda, bj + s * ldb, ldb, cij + r * ldc + s, ldc);
        }
      }
    }
  }
}

// dst[cols x rows] = src[rows x cols]^T, in 16 x 16 blocks so both sides stay in cache.
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t B = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += B) {
    for (int64_t j0 = 0; j0 < cols; j0 += B) {
      for (int64_t j = j0; j < std::min(cols, j0 + B); ++j) {
        for (int64_t i = i0; i < std::min(rows, i0 + B); ++i) dst[j * ldd + i] = src[i * lds + j];
      }
    }
  }
}

}  // namespace rtda::cpu
