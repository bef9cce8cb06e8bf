// Row element types of the EP kernels as float32 <-> storage conversions, written
// once for both backends (integer arithmetic, round to nearest even) so that the
// CPU and CUDA kernels produce identical bits.
#pragma once

#include <cstdint>

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

// Storage types: float, and bfloat16/float16 bits in a uint16_t wrapper so that
// the two 16-bit formats are distinct C++ types.
struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };

JAX_MOE_HD float ToFloat(float v) { return v; }
JAX_MOE_HD float ToFloat(Bf16 v) { return BitsToFloat(static_cast<uint32_t>(v.bits) << 16); }
JAX_MOE_HD float ToFloat(F16 v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  const uint32_t man = v.bits & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return BitsToFloat(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in float32.
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

template <typename T>
struct FromFloat;

template <>
struct FromFloat<float> {
  JAX_MOE_HD static float Convert(float f) { return f; }
};

template <>
struct FromFloat<Bf16> {
  JAX_MOE_HD static Bf16 Convert(float f) {
    const uint32_t u = FloatBits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
    const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    return Bf16{static_cast<uint16_t>(r >> 16)};
  }
};

template <>
struct FromFloat<F16> {
  JAX_MOE_HD static F16 Convert(float f) {
    const uint32_t u = FloatBits(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return F16{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
    if (a >= 0x477ff000u) return F16{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
    if (a >= 0x38800000u) {  // normal half (>= 2^-14): rebias, keep 10 mantissa bits
      const uint32_t r = a - 0x38000000u;
      uint32_t q = r >> 13;
      const uint32_t rem = r & 0x1fffu;
      if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;
      return F16{static_cast<uint16_t>(sign | q)};
    }
    if (a <= 0x33000000u) return F16{sign};  // <= 2^-25: rounds to zero (tie to even)
    // Subnormal half: value / 2^-24 rounded to nearest even.
    const int exp = static_cast<int>(a >> 23) - 127;  // in [-25, -15]
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    const int shift = -1 - exp;                      // in [14, 24]
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return F16{static_cast<uint16_t>(sign | r)};
  }
};

}  // namespace jax_moe
