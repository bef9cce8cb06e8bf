// FP8 wire format (shared/spec/dispatch.md section 3), shared by every kernel that
// quantizes rows: per token, per 128-channel group,
//   amax = max(max|x_g|, 1e-4); q = e4m3(clip(x_g * 448 / amax, -448, 448));
//   scale = amax / 448 (float32); x ~= q * scale.
// The e4m3 encoding is done here in plain integer arithmetic (round to nearest
// even, saturating) so that the CPU and CUDA kernels produce identical bytes.
#pragma once

#include <cstdint>

#include "common/half_bits.h"  // F32ToBits
#include "common/hd.h"

namespace jax_moe {

constexpr int kFp8Group = 128;
constexpr float kFp8Max = 448.0f;
constexpr float kFp8MinAmax = 1e-4f;

// float -> float8_e4m3fn bits (bias 7, no infinities, 0x7f/0xff = NaN), round to
// nearest even, saturating to +-448. NaN maps to NaN.
JAX_MOE_HD uint8_t FloatToE4m3(float f) {
  const uint32_t u = F32ToBits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7f);  // NaN
  if (a >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7e);  // >= 448: saturate
  const int exp = static_cast<int>(a >> 23) - 127;                  // unbiased
  if (exp < -6) {
    // Subnormal e4m3: value = m * 2^-9, m in [0, 7]. Round a / 2^-9 to nearest even.
    // a < 2^-6 here. Use exact integer arithmetic on the float's significand.
    if (exp < -10) return sign;  // < 2^-10 rounds to 0 (half of 2^-9 is 2^-10; ties at
                                 // exactly 2^-10 have exp == -10 and are handled below)
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;  // 24-bit significand, value mant*2^(exp-23)
    const int shift = 23 - (exp + 9);                    // value / 2^-9 = mant >> shift
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
    return static_cast<uint8_t>(sign | r);  // r == 8 is exactly the smallest normal 0x08
  }
  // Normal: keep 3 mantissa bits, round to nearest even on the 20 dropped bits.
  uint32_t mant = a & 0x7fffffu;
  uint32_t e = static_cast<uint32_t>(exp + 7);
  uint32_t q = (e << 3) | (mant >> 20);
  const uint32_t rem = mant & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (q & 1))) ++q;
  if (q > 0x7e) q = 0x7e;  // rounding up past 448 saturates
  return static_cast<uint8_t>(sign | q);
}

// Quantization multiplier and stored scale of one group, from its amax.
JAX_MOE_HD float Fp8Scale(float amax) {
  return (amax > kFp8MinAmax ? amax : kFp8MinAmax) / kFp8Max;
}
JAX_MOE_HD float Fp8Multiplier(float amax) {
  return kFp8Max / (amax > kFp8MinAmax ? amax : kFp8MinAmax);
}

}  // namespace jax_moe
