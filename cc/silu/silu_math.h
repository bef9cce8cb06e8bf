// The float32 math of silu_and_mul, shared verbatim by the CPU and CUDA kernels.
//
// Why our own exp: glibc expf and CUDA expf may differ in the last ulp, which
// would make the FP8 bytes of the two backends differ. Every step below is a
// single IEEE operation (explicit fmaf, +, *, /, floorf, exact power-of-two
// scaling) with no a*b+c left for a compiler to contract, so both backends
// compute the same bits. Error vs the true exp: about 1 ulp (Cephes-style
// range reduction and polynomial).
//
// Formula order (documented for reproducibility):
//   e = Exp(-g); silu = g / (1 + e); y = silu * u
//   backward: sig = 1 / (1 + e); silu = g * sig; dsilu = sig * fma(g, 1 - sig, 1)
//             dg = (dy * u) * dsilu; du = dy * silu
#pragma once

#include <cmath>
#include <cstdint>

#include "common/half_bits.h"  // BitsToF32
#include "common/hd.h"

namespace jax_moe {

JAX_MOE_HD float SiluFma(float a, float b, float c) { return fmaf(a, b, c); }

// 2^n as a float for n in [-126, 127] (exact).
JAX_MOE_HD float Pow2(int n) { return BitsToF32(static_cast<uint32_t>(n + 127) << 23); }

JAX_MOE_HD float SiluExp(float x) {
  if (x != x) return x;
  if (x > 88.72283935546875f) return INFINITY;
  if (x < -103.97208404541015625f) return 0.0f;
  // x = n ln2 + r, |r| <= ln2/2; ln2 split so that n * kLn2Hi is exact.
  const float n = floorf(SiluFma(x, 1.44269502162933349609375f, 0.5f));
  float r = SiluFma(-n, 0.693359375f, x);
  r = SiluFma(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = SiluFma(p, r, 1.3981999507e-3f);
  p = SiluFma(p, r, 8.3334519073e-3f);
  p = SiluFma(p, r, 4.1665795894e-2f);
  p = SiluFma(p, r, 1.6666665459e-1f);
  p = SiluFma(p, r, 5.0000001201e-1f);
  const float r2 = r * r;
  const float y = SiluFma(p, r2, r) + 1.0f;
  // Scale by 2^n in two exact steps (n in [-150, 128]); only the last one can round
  // (into the subnormal range), so the result is rounded once.
  const int ni = static_cast<int>(n);
  const int n1 = ni / 2;
  return (y * Pow2(n1)) * Pow2(ni - n1);
}

JAX_MOE_HD float Silu(float g) { return g / (1.0f + SiluExp(-g)); }

JAX_MOE_HD float SiluMul(float g, float u) { return Silu(g) * u; }

// Gradients of y = silu(g) * u given dy.
JAX_MOE_HD void SiluMulGrad(float g, float u, float dy, float* dg, float* du) {
  const float sig = 1.0f / (1.0f + SiluExp(-g));
  const float silu = g * sig;
  const float dsilu = sig * SiluFma(g, 1.0f - sig, 1.0f);
  *dg = (dy * u) * dsilu;
  *du = dy * silu;
}

// Rows of problem p that are computed: all, or counts clamped to [0, rows].
JAX_MOE_HD int64_t SiluValidRows(const int32_t* counts, int64_t p, int64_t rows) {
  if (counts == nullptr) return rows;
  const int64_t c = counts[p];
  return c < 0 ? 0 : (c > rows ? rows : c);
}

}  // namespace jax_moe
