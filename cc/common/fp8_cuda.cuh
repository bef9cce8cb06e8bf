// FP8 e4m3 encoding on CUDA, equal byte for byte to FloatToE4m3 (common/fp8.h),
// which the CPU kernels use. Included by the CUDA kernels that quantize rows
// (silu_and_mul, the EP pack).
#pragma once

#include <cstdint>

#include "common/fp8.h"

namespace jax_moe {

// float -> e4m3 for two values, bytes (lo, hi). From sm_89 on, one hardware
// conversion (round to nearest even, saturating to +-448, as FloatToE4m3). Its
// only difference from FloatToE4m3 is the sign of a NaN (the hardware drops
// it); every other output carries its input's sign. So the sign bits are
// replaced by the inputs' sign bits: exact for every input, branch-free (the
// encoder runs on every element at memory speed). Before sm_89: FloatToE4m3.
__device__ __forceinline__ uint32_t E4m3Pair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  const uint32_t signs =
      ((__float_as_uint(lo) >> 24) & 0x80u) | ((__float_as_uint(hi) >> 16) & 0x8000u);
  return (static_cast<uint32_t>(r) & 0x7f7fu) | signs;
#else
  return static_cast<uint32_t>(FloatToE4m3(lo)) | (static_cast<uint32_t>(FloatToE4m3(hi)) << 8);
#endif
}

// Four values -> one little-endian word of e4m3 bytes.
__device__ __forceinline__ uint32_t E4m3Quad(float a, float b, float c, float d) {
  return E4m3Pair(a, b) | (E4m3Pair(c, d) << 16);
}

}  // namespace jax_moe
