// Row element types of the EP kernels: float, and bfloat16/float16 bits in
// distinct wrapper types, converted through common/half_bits.h (the one place
// that rounds floats to 16 bits, identically on CPU and CUDA).
#pragma once

#include <cstdint>

#include "common/half_bits.h"
#include "common/hd.h"

namespace jax_moe {

struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };

JAX_MOE_HD float ToFloat(float v) { return v; }
JAX_MOE_HD float ToFloat(Bf16 v) { return Bf16ToF32(v.bits); }
JAX_MOE_HD float ToFloat(F16 v) { return F16ToF32(v.bits); }

template <typename T>
struct FromFloat;

template <>
struct FromFloat<float> {
  JAX_MOE_HD static float Convert(float f) { return f; }
};

template <>
struct FromFloat<Bf16> {
  JAX_MOE_HD static Bf16 Convert(float f) { return Bf16{F32ToBf16(f)}; }
};

template <>
struct FromFloat<F16> {
  JAX_MOE_HD static F16 Convert(float f) { return F16{F32ToF16(f)}; }
};

}  // namespace jax_moe
