// Row movement of the EP dispatch/combine on the CPU: gather, gather + FP8 cast,
// weighted gather-sum (see ep_cpu.h).
#include "common/no_fp_contract.h"  // the kernels below: no FMA contraction

#include <cmath>
#include <cstring>
#include <vector>

#include "common/fp8.h"
#include "ep/ep_cpu.h"
#include "ep/ep_float.h"

namespace jax_moe {

void EpGatherCpu(const void* in, int64_t num_in, int64_t row_bytes, const int32_t* rows,
                 int64_t num_out, void* out) {
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  for (int64_t n = 0; n < num_out; ++n) {
    const int32_t r = rows[n];
    if (r >= 0 && r < num_in)
      std::memcpy(dst + n * row_bytes, src + r * row_bytes, row_bytes);
    else
      std::memset(dst + n * row_bytes, 0, row_bytes);
  }
}

template <typename T>
void EpPackFp8Cpu(const T* x, int64_t num_in, int64_t H, const int32_t* rows,
                  int64_t num_out, uint8_t* q, float* scales) {
  const int64_t G = H / kFp8Group;
  for (int64_t n = 0; n < num_out; ++n) {
    const int32_t r = rows[n];
    uint8_t* qrow = q + n * H;
    float* srow = scales + n * G;
    if (r < 0 || r >= num_in) {
      std::memset(qrow, 0, H);
      std::fill(srow, srow + G, 0.0f);
      continue;
    }
    const T* xrow = x + r * H;
    for (int64_t g = 0; g < G; ++g) {
      float amax = 0.0f;
      for (int64_t c = g * kFp8Group; c < (g + 1) * kFp8Group; ++c)
        amax = std::fmax(amax, std::fabs(ToFloat(xrow[c])));
      const float mul = Fp8Multiplier(amax);
      srow[g] = Fp8Scale(amax);
      for (int64_t c = g * kFp8Group; c < (g + 1) * kFp8Group; ++c)
        qrow[c] = FloatToE4m3(ToFloat(xrow[c]) * mul);  // saturates at +-448 (the clip)
    }
  }
}

template <typename T>
void EpCombineCpu(const T* y, int64_t N, int64_t H, const int32_t* index,
                  const float* w, int64_t M, int64_t J, T* out) {
  std::vector<float> acc(static_cast<size_t>(H));
  for (int64_t m = 0; m < M; ++m) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < J; ++j) {
      const int32_t n = index[m * J + j];
      if (n < 0 || n >= N) continue;
      const float wj = w[m * J + j];
      const T* row = y + n * H;
      for (int64_t c = 0; c < H; ++c) acc[c] += wj * ToFloat(row[c]);
    }
    for (int64_t c = 0; c < H; ++c) out[m * H + c] = FromFloat<T>::Convert(acc[c]);
  }
}

#define JAX_MOE_INSTANTIATE(T)                                                           \
  template void EpPackFp8Cpu<T>(const T*, int64_t, int64_t, const int32_t*, int64_t,    \
                                uint8_t*, float*);                                       \
  template void EpCombineCpu<T>(const T*, int64_t, int64_t, const int32_t*, const float*, \
                                int64_t, int64_t, T*);
JAX_MOE_INSTANTIATE(float)
JAX_MOE_INSTANTIATE(Bf16)
JAX_MOE_INSTANTIATE(F16)
#undef JAX_MOE_INSTANTIATE

}  // namespace jax_moe
