// SIMD vectors for the CPU kernels: GCC/Clang vector extensions sized for the widest vector unit
// the build targets (AVX-512: 64 bytes; otherwise 32, which the compiler splits where narrower),
// unaligned loads/stores, and non-temporal stores.
#pragma once

#include <cstring>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace rtda::cpu {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

// One SIMD vector of T.
// (Attributes on a dependent alias template are ignored, hence one typedef per type.)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VecOf<int> {
  typedef int type __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
static_assert(sizeof(Vec<float>) == kVectorBytes && sizeof(Vec<double>) == kVectorBytes);

template <typename T>
constexpr int lanes() {
  return kVectorBytes / static_cast<int>(sizeof(T));
}

template <typename T>
inline Vec<T> load_vec(const T* p) {  // unaligned
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store_vec(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Non-temporal store of a float vector to a kVectorBytes-aligned address, and the fence that
// orders such stores; where the instruction set has none, plain stores (kStreamingStores false).
#if defined(__AVX512F__)
constexpr bool kStreamingStores = true;
inline void stream_vec(float* p, Vec<float> v) { _mm512_stream_ps(p, v); }
inline void store_fence() { _mm_sfence(); }
#elif defined(__AVX__)
constexpr bool kStreamingStores = true;
inline void stream_vec(float* p, Vec<float> v) { _mm256_stream_ps(p, v); }
inline void store_fence() { _mm_sfence(); }
#else
constexpr bool kStreamingStores = false;
inline void stream_vec(float* p, Vec<float> v) { store_vec(p, v); }
inline void store_fence() {}
#endif

}  // namespace rtda::cpu
