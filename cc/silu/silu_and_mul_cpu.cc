#include "silu/silu_and_mul_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/fp8.h"
#include "common/half_bits.h"
#include "silu/silu_math.h"

namespace jax_moe {
namespace {

inline float Load(float v) { return v; }
inline float Load(Bf16Bits v) { return Bf16ToF32(v.bits); }
inline float Load(F16Bits v) { return F16ToF32(v.bits); }

template <typename T> T Store(float v);
template <> float Store<float>(float v) { return v; }
template <> Bf16Bits Store<Bf16Bits>(float v) { return {F32ToBf16(v)}; }
template <> F16Bits Store<F16Bits>(float v) { return {F32ToF16(v)}; }

// Calls valid(r) for each computed row and masked(r) for each row past its
// problem's count (r = global row index). Masked rows are never read.
template <typename Valid, typename Masked>
void ForEachRow(const SiluProblem& p, Valid&& valid, Masked&& masked) {
  for (int64_t b = 0; b < p.problems; ++b) {
    const int64_t n = SiluValidRows(p.counts, b, p.rows);
    const int64_t first = b * p.rows;
    for (int64_t m = 0; m < n; ++m) valid(first + m);
    for (int64_t m = n; m < p.rows; ++m) masked(first + m);
  }
}

}  // namespace

template <typename T>
void SiluAndMulCpu(const SiluProblem& p, const T* h, T* y) {
  const int64_t I = p.inter;
  ForEachRow(
      p,
      [&](int64_t r) {
        const T* g = h + r * 2 * I;
        const T* u = g + I;
        T* out = y + r * I;
        for (int64_t i = 0; i < I; ++i) out[i] = Store<T>(SiluMul(Load(g[i]), Load(u[i])));
      },
      [&](int64_t r) {
        if (p.zero_fill) std::fill(y + r * I, y + (r + 1) * I, Store<T>(0.0f));
      });
}

template <typename T>
void SiluAndMulFp8Cpu(const SiluProblem& p, const T* h, uint8_t* q, float* scales) {
  const int64_t I = p.inter;
  const int64_t groups = I / kFp8Group;
  std::vector<float> act(static_cast<size_t>(kFp8Group));
  ForEachRow(
      p,
      [&](int64_t r) {
        const T* g = h + r * 2 * I;
        const T* u = g + I;
        for (int64_t c = 0; c < groups; ++c) {
          const int64_t base = c * kFp8Group;
          float amax = 0.0f;
          for (int i = 0; i < kFp8Group; ++i) {
            act[i] = SiluMul(Load(g[base + i]), Load(u[base + i]));
            amax = std::fmax(amax, std::fabs(act[i]));
          }
          const float mult = Fp8Multiplier(amax);
          uint8_t* qrow = q + r * I + base;
          for (int i = 0; i < kFp8Group; ++i) qrow[i] = FloatToE4m3(act[i] * mult);
          scales[r * groups + c] = Fp8Scale(amax);
        }
      },
      [&](int64_t r) {
        if (!p.zero_fill) return;
        std::fill(q + r * I, q + (r + 1) * I, uint8_t{0});
        std::fill(scales + r * groups, scales + (r + 1) * groups, 0.0f);
      });
}

template <typename T>
void SiluAndMulBwdCpu(const SiluProblem& p, const T* h, const T* dy, T* dh) {
  const int64_t I = p.inter;
  ForEachRow(
      p,
      [&](int64_t r) {
        const T* g = h + r * 2 * I;
        const T* u = g + I;
        const T* d = dy + r * I;
        T* dg = dh + r * 2 * I;
        T* du = dg + I;
        for (int64_t i = 0; i < I; ++i) {
          float a, b;
          SiluMulGrad(Load(g[i]), Load(u[i]), Load(d[i]), &a, &b);
          dg[i] = Store<T>(a);
          du[i] = Store<T>(b);
        }
      },
      [&](int64_t r) { std::fill(dh + r * 2 * I, dh + (r + 1) * 2 * I, Store<T>(0.0f)); });
}

#define JAX_MOE_INSTANTIATE(T)                                                      \
  template void SiluAndMulCpu<T>(const SiluProblem&, const T*, T*);                 \
  template void SiluAndMulFp8Cpu<T>(const SiluProblem&, const T*, uint8_t*, float*); \
  template void SiluAndMulBwdCpu<T>(const SiluProblem&, const T*, const T*, T*);
JAX_MOE_INSTANTIATE(float)
JAX_MOE_INSTANTIATE(Bf16Bits)
JAX_MOE_INSTANTIATE(F16Bits)
#undef JAX_MOE_INSTANTIATE

}  // namespace jax_moe
