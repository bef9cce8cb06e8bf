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
// nearest even, saturating to +-448. NaN maps to NaN (sign kept).
// Branch-free (both ranges computed, then selected) because the CUDA FP8 pack
// runs it on every element at memory speed; each step is exact integer or
// exact IEEE float arithmetic, so CPU and CUDA agree bit for bit. (Checked
// against the former branchy encoder on all 2^32 float inputs.)
JAX_MOE_HD uint8_t FloatToE4m3(float f) {
  const uint32_t u = F32ToBits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  // Normal range (|f| >= 2^-6): keep 3 mantissa bits, round to nearest even on
  // the 20 dropped bits (the carry may step into the exponent), rebias 127 -> 7,
  // saturate at 448 (0x7e; also catches infinity). No overflow: a <= 0x7f800000.
  uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - ((127u - 7u) << 3);
  normal = normal < 0x7eu ? normal : 0x7eu;
  // Subnormal range (|f| < 2^-6): value / 2^-9 rounded to nearest even, in
  // [0, 8] (8 is exactly the smallest normal 0x08). |f| * 512 is exact; adding
  // 2^23 rounds it to an integer (RNE), left in the low mantissa bits.
  const float small = BitsToF32(a < 0x3c800000u ? a : 0x3c800000u) * 512.0f;
  const uint32_t sub = F32ToBits(small + 8388608.0f) - 0x4b000000u;
  uint32_t q = a < 0x3c800000u ? sub : normal;
  q = a > 0x7f800000u ? 0x7fu : q;  // NaN
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
