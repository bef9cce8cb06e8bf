// bfloat16 / float16 storage <-> float32, in plain integer arithmetic.
//
// The CPU and CUDA kernels both convert through these functions, so a row that
// is scaled or summed in float32 rounds back to 16 bits identically on both
// backends (round to nearest even, as XLA's convert does). Widening is exact.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace jax_moe {

JAX_MOE_HD uint32_t F32ToBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

JAX_MOE_HD float BitsToF32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

JAX_MOE_HD float Bf16ToF32(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }

JAX_MOE_HD uint16_t F32ToBf16(float f) {
  uint32_t u = F32ToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: keep it a (quiet) NaN
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; carries into the exponent
  return static_cast<uint16_t>(u >> 16);
}

JAX_MOE_HD float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return BitsToF32(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24, exact in float32.
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return BitsToF32(sign | ((exp + 112u) << 23) | (man << 13));  // rebias 15 -> 127
}

JAX_MOE_HD uint16_t F32ToF16(float f) {
  const uint32_t u = F32ToBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u)  // NaN: quiet, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a >= 0x38800000u) {
    // Normal half (>= 2^-14): rebias the exponent, round away 13 mantissa bits.
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // Subnormal half: value / 2^-24 rounded to nearest even. <= 2^-25 rounds to 0
  // (exactly 2^-25 is a tie with 0, which is even).
  if (a <= 0x33000000u) return sign;
  const int exp = static_cast<int>(a >> 23) - 127;  // in [-25, -15]
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = -exp - 1;  // value / 2^-24 = mant >> shift, shift in [14, 24]
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // q == 0x400: smallest normal
  return static_cast<uint16_t>(sign | q);
}

// Row element formats: storage type plus exact widening / rounding narrowing.
struct F32Format {
  using Storage = float;
  static JAX_MOE_HD float Load(float v) { return v; }
  static JAX_MOE_HD float Store(float v) { return v; }
};
struct Bf16Format {
  using Storage = uint16_t;
  static JAX_MOE_HD float Load(uint16_t v) { return Bf16ToF32(v); }
  static JAX_MOE_HD uint16_t Store(float v) { return F32ToBf16(v); }
};
struct F16Format {
  using Storage = uint16_t;
  static JAX_MOE_HD float Load(uint16_t v) { return F16ToF32(v); }
  static JAX_MOE_HD uint16_t Store(float v) { return F32ToF16(v); }
};

}  // namespace jax_moe
