// CUDA kernel of permute: x_sorted row j = scale[r] * x[r / K], r = sorted_ids[j].
// One thread group per output row (a gather: every row written exactly once).
#include "common/half_bits.h"
#include "permute/permute_cuda.h"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

template <typename Fmt, int N, bool kScaled>
__global__ void PermuteKernel(PermuteShape s, const typename Fmt::Storage* __restrict__ x,
                              const float* __restrict__ scale,
                              const int32_t* __restrict__ sorted_ids,
                              typename Fmt::Storage* __restrict__ out) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  const int64_t units = s.hidden / N;
  const int64_t numel = s.numel();
  const V* xv = reinterpret_cast<const V*>(x);
  V* ov = reinterpret_cast<V*>(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
       row < s.batch * s.rows; row += stride) {
    const int64_t b = row / s.rows;
    const int32_t r = sorted_ids[row];
    V* dst = ov + row * units;
    if (!ValidRoute(r, numel)) {  // sentinel (or corrupt) slot: a zero row
      V zero;
#pragma unroll
      for (int i = 0; i < N; ++i) zero.v[i] = S(0);
      for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = zero;
      continue;
    }
    const V* src = xv + (b * s.tokens + r / s.topk) * units;
    const float c = kScaled ? scale[b * numel + r] : 1.0f;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      V val = src[u];
      if constexpr (kScaled) {
#pragma unroll
        for (int i = 0; i < N; ++i) val.v[i] = Fmt::Store(__fmul_rn(c, Fmt::Load(val.v[i])));
      }
      dst[u] = val;
    }
  }
}

template <typename Fmt, int N, bool kScaled>
cudaError_t Launch(cudaStream_t stream, const PermuteShape& s, const void* x,
                   const float* scale, const int32_t* sorted_ids, void* out) {
  using S = typename Fmt::Storage;
  const RowGeometry geo = RowsGeometry(s.batch * s.rows, s.hidden / N);
  PermuteKernel<Fmt, N, kScaled><<<geo.grid, geo.block, 0, stream>>>(
      s, static_cast<const S*>(x), scale, sorted_ids, static_cast<S*>(out));
  return cudaGetLastError();
}

template <typename Fmt>
cudaError_t Dispatch(cudaStream_t stream, const PermuteShape& s, const void* x,
                     const float* scale, const int32_t* sorted_ids, void* out) {
  using S = typename Fmt::Storage;
  constexpr int kVec = 16 / sizeof(S);
  const bool vec = RowsVectorizable(s.hidden, sizeof(S), x, out);
  if (scale != nullptr) {
    return vec ? Launch<Fmt, kVec, true>(stream, s, x, scale, sorted_ids, out)
               : Launch<Fmt, 1, true>(stream, s, x, scale, sorted_ids, out);
  }
  return vec ? Launch<Fmt, kVec, false>(stream, s, x, nullptr, sorted_ids, out)
             : Launch<Fmt, 1, false>(stream, s, x, nullptr, sorted_ids, out);
}

}  // namespace

cudaError_t LaunchPermute(cudaStream_t stream, RowType type, const PermuteShape& s,
                          const void* x, const float* scale, const int32_t* sorted_ids,
                          void* out) {
  if (s.batch * s.rows == 0 || s.hidden == 0) return cudaSuccess;  // nothing to write
  switch (type) {
    case RowType::kF32: return Dispatch<F32Format>(stream, s, x, scale, sorted_ids, out);
    case RowType::kBf16: return Dispatch<Bf16Format>(stream, s, x, scale, sorted_ids, out);
    case RowType::kF16: return Dispatch<F16Format>(stream, s, x, scale, sorted_ids, out);
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_moe
