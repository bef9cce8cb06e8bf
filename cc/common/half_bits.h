// float <-> bfloat16 / float16 bit conversions for host kernels (round to nearest
// even, like the CUDA __float2bfloat16_rn / __float2half_rn intrinsics, so a CPU
// kernel and a CUDA kernel that round the same float32 store the same bits).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/fp8.h"  // FloatBits
#include "common/hd.h"

namespace jax_moe {

JAX_MOE_HD float BitsToFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

inline float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float32
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return BitsToFloat(FloatBits(v) | sign);
  }
  if (e == 31) return BitsToFloat(sign | 0x7f800000u | (m << 13));  // inf / NaN
  return BitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a < 0x38800000u) {
    // Below 2^-14: float16 subnormal m * 2^-24. Values up to 2^-25 (a tie) round to 0.
    if (a <= 0x33000000u) return sign;
    const int exp = static_cast<int>(a >> 23) - 127;     // in [-25, -15]
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;  // value = mant * 2^(exp-23)
    const int shift = -1 - exp;                          // value / 2^-24 = mant >> shift
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t r = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
    return static_cast<uint16_t>(sign | r);  // r == 0x400 is the smallest normal
  }
  const uint32_t e = (a >> 23) - 112u;  // rebias 127 -> 15
  uint32_t q = (e << 10) | ((a & 0x7fffffu) >> 13);
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) ++q;  // may carry into inf: correct
  return static_cast<uint16_t>(sign | q);
}

}  // namespace jax_moe
