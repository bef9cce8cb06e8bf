// The float32 math of silu_and_mul: the CPU kernels (forward and backward) and
// the CUDA backward, which therefore equal each other bit for bit. (The CUDA
// forward uses the hardware exp and division instead: silu_and_mul.cu says why.)
//
// Why our own exp: glibc expf and CUDA expf may differ in the last ulp. Every
// step below is a single IEEE operation (explicit fmaf, +, *, /, exact
// power-of-two scaling, min/max) with no a*b+c left for a compiler to contract,
// so both backends compute the same bits. Error vs the true exp: about 1 ulp
// (Cephes-style range reduction and polynomial).
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

// e^x where it matters to 1 + e^x, the only use here. Below -86 the input is
// clamped: e^x < 2^-124 there vanishes in 1 + e^x anyway (every x < -17 does),
// and the clamp keeps 2^n normal, so the scaling is one exact step. NaN also
// becomes -86: harmless, the formulas carry g's NaN through their numerators.
// Branch-free (selects only): the CUDA kernels run it on every element at
// memory speed.
JAX_MOE_HD float SiluExp(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = fminf(fmaxf(x, -86.0f), 88.72283935546875f);
  // x = n ln2 + r, |r| <= ln2/2 + tiny: n = rint(x log2 e) from the exact product
  // (one fma), read back as the low mantissa bits of t; ln2 split so that
  // n * kLn2Hi is exact.
  const float t = SiluFma(xc, 1.44269502162933349609375f, kRound);
  const float n = t - kRound;
  const int ni = static_cast<int>(F32ToBits(t) - F32ToBits(kRound));
  float r = SiluFma(-n, 0.693359375f, xc);
  r = SiluFma(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = SiluFma(p, r, 1.3981999507e-3f);
  p = SiluFma(p, r, 8.3334519073e-3f);
  p = SiluFma(p, r, 4.1665795894e-2f);
  p = SiluFma(p, r, 1.6666665459e-1f);
  p = SiluFma(p, r, 5.0000001201e-1f);
  const float r2 = r * r;
  const float y = SiluFma(p, r2, r) + 1.0f;
  // n in [-124, 128]: 2y (exact) times 2^(n-1) (normal) rounds once, overflow included.
  const float e = (y * 2.0f) * Pow2(ni - 1);
  return x > 88.72283935546875f ? INFINITY : e;
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
