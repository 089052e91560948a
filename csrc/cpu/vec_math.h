// Vectorised exp and log1p over the ranges the adversarial loss needs, for float lanes.
//
// Why our own: the loss spends its time in exp and log1p of every pixel, and the compiler cannot
// vectorise calls to the C library; ATen's vectorised versions live in its per-ISA kernels and
// are not part of the headers an extension can use. Both functions here are branch-free
// polynomials with a Newton-refined reciprocal instead of divisions (a few ulp), enough for a loss averaged over millions of pixels, and they are
// checked against the C library in tests/kernels/test_adversarial_loss.py through the op.
#pragma once

#include <cstring>

#include "simd.h"

namespace rtda::cpu {

using VecF = Vec<float>;
using VecI = Vec<int>;

inline VecF splat(float value) { return VecF{} + value; }

// 1 / d without a division: the hardware estimate refined by one Newton step (relative error
// ~1e-7 with AVX-512's 14-bit estimate, ~1e-6 with AVX's 12-bit one). Divisions are the slowest
// vector instructions and the loss needs two per pixel.
inline VecF reciprocal(VecF d) {
#if defined(__AVX512F__)
  const VecF r = _mm512_rcp14_ps(d);
#elif defined(__AVX__)
  const VecF r = _mm256_rcp_ps(d);
#else
  return 1.0f / d;
#endif
#if defined(__AVX__)
  return r + r * (1.0f - d * r);
#endif
}

// exp(x) for x <= 0. Inputs below -87 are clamped (exp(-87) ~ 1.6e-38 is still a normal float,
// and nothing smaller changes log1p(e) or sigmoid in float). x = k ln2 + r, |r| <= ln2 / 2, with
// k rounded by the 1.5 * 2^23 trick; exp(r) by a degree-6 polynomial fitted for relative error
// on that interval (~2e-9 before rounding); 2^k built in the exponent bits.
inline VecF exp_nonpositive(VecF x) {
  const VecF floor_value = splat(-87.0f);
  x = x < floor_value ? floor_value : x;
  const VecF magic = splat(12582912.0f);
  const VecF k = (x * 1.44269504088896341f + magic) - magic;
  VecF r = x - k * 0.693145751953125f;  // ln2 split in a part exact in float and the rest
  r = r - k * 1.42860682030941723212e-6f;
  VecF p = splat(0.0013829430099576712f);
  p = p * r + 0.008374777622520924f;
  p = p * r + 0.0416683591902256f;
  p = p * r + 0.1666642129421234f;
  p = p * r + 0.49999991059303284f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VecI bits = (__builtin_convertvector(k, VecI) + 127) << 23;
  VecF scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(e) for 0 <= e <= 1: 2 atanh(s) with s = e / (2 + e) <= 1/3, atanh(s) / s being a
// polynomial in t = s^2 <= 1/9 (degree 4, fitted for relative error: ~4e-9 before rounding).
// Accurate for tiny e too, unlike log(1 + e).
inline VecF log1p_unit(VecF e) {
  const VecF s = e * reciprocal(e + 2.0f);
  const VecF t = s * s;
  VecF q = splat(0.1408073753118515f);
  q = q * t + 0.13982179760932922f;
  q = q * t + 0.20012323558330536f;
  q = q * t + 0.3333316147327423f;
  q = q * t + 1.0f;
  return 2.0f * s * q;
}

}  // namespace rtda::cpu
