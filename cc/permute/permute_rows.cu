// CUDA kernel of permute: x_sorted row j = scale[r] * x[r / K], r = sorted_ids[j].
//
// Done as a scatter from tokens, not a gather into rows: a gather reads each
// token row K times (K = 8: 16 row transfers per token where 9 are needed,
// ~56% of the copy bandwidth at best, as the first version measured), the
// scatter reads it once and writes its K rows.
//
// Row j belongs to route r only when the plan agrees both ways (route_rows[r]
// == j and sorted_ids[j] == r), so every row has one writer even in a corrupt
// plan: deterministic, and equal to the gather the spec (and the CPU kernel)
// defines. The rows no route owns (block padding and empty slots: zeros; rows
// of an inconsistent plan: gathered) are done by extra blocks of the same
// launch, a warp per 32 rows.
#include "common/half_bits.h"
#include "permute/permute_cuda.h"
#include "permute/route_chunk.cuh"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

// Units of a token row each thread loads before its stores. The scaled copy
// (unpermute's backward) keeps them widened to float32 for its K products:
// fewer units, to stay at two blocks per SM.
template <bool kScaled>
constexpr int kUnits = kScaled ? 2 : 4;

template <typename Fmt, int N, bool kScaled>
__device__ __forceinline__ Vec<typename Fmt::Storage, N> Scaled(Vec<typename Fmt::Storage, N> v,
                                                                float c) {
  if constexpr (kScaled) {
#pragma unroll
    for (int i = 0; i < N; ++i) v.v[i] = Fmt::Store(__fmul_rn(c, Fmt::Load(v.v[i])));
  }
  return v;
}

// Blocks [0, gridDim.x - fill_blocks): a group of blockDim.x threads per token.
template <typename Fmt, int N, bool kScaled>
__device__ __forceinline__ void ScatterTokens(const PermuteShape& s, unsigned scatter_blocks,
                                              const Vec<typename Fmt::Storage, N>* xv,
                                              const float* __restrict__ scale,
                                              const int32_t* __restrict__ sorted_ids,
                                              const int32_t* __restrict__ route_rows,
                                              Vec<typename Fmt::Storage, N>* ov) {
  using V = Vec<typename Fmt::Storage, N>;
  const int64_t units = s.hidden / N;
  const int64_t K = s.topk;
  const int64_t numel = s.numel();
  const int64_t tpr = blockDim.x;
  const int64_t stride = static_cast<int64_t>(scatter_blocks) * blockDim.y;
  for (int64_t tok = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
       tok < s.batch * s.tokens; tok += stride) {
    const int64_t b = tok / s.tokens;
    const int64_t r0 = (tok - b * s.tokens) * K;  // first route of the token
    const V* src = xv + tok * units;
    V* problem_out = ov + b * s.rows * units;
    for (int64_t u0 = threadIdx.x; u0 < units; u0 += kUnits<kScaled> * tpr) {
      V val[kUnits<kScaled>];
#pragma unroll
      for (int i = 0; i < kUnits<kScaled>; ++i) {
        if (u0 + i * tpr < units) val[i] = src[u0 + i * tpr];
      }
      for (int64_t k0 = 0; k0 < K; k0 += kRouteChunk) {
        // Owned destination rows of this chunk (-1: not ours to write).
        const RouteChunk c = LoadRouteChunk(route_rows + b * numel + r0 + k0,
                                            kScaled ? scale + b * numel + r0 + k0 : nullptr,
                                            K - k0, s.rows);
#pragma unroll
        for (int k = 0; k < kRouteChunk; ++k) {
          const int32_t j = c.row[k];
          if (j < 0 || __ldg(sorted_ids + b * s.rows + j) != r0 + k0 + k) continue;
          V* dst = problem_out + static_cast<int64_t>(j) * units;
#pragma unroll
          for (int i = 0; i < kUnits<kScaled>; ++i) {
            if (u0 + i * tpr < units) dst[u0 + i * tpr] = Scaled<Fmt, N, kScaled>(val[i], c.w[k]);
          }
        }
      }
    }
  }
}

// Blocks [scatter_blocks, gridDim.x): each warp checks 32 rows at once and then
// writes, together, the ones no route owns.
template <typename Fmt, int N, bool kScaled>
__device__ __forceinline__ void FillUnowned(const PermuteShape& s, unsigned scatter_blocks,
                                            const Vec<typename Fmt::Storage, N>* xv,
                                            const float* __restrict__ scale,
                                            const int32_t* __restrict__ sorted_ids,
                                            const int32_t* __restrict__ route_rows,
                                            Vec<typename Fmt::Storage, N>* ov) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  const int64_t units = s.hidden / N;
  const int64_t numel = s.numel();
  const int64_t total = s.batch * s.rows;
  const int flat = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = flat & 31;
  const int64_t warps_per_block = (blockDim.x * blockDim.y) >> 5;
  const int64_t warp = (blockIdx.x - scatter_blocks) * warps_per_block + (flat >> 5);
  const int64_t warps = (gridDim.x - scatter_blocks) * warps_per_block;
  // Warp-uniform loop bounds: every lane reaches the ballot and shuffles.
  for (int64_t first = warp * 32; first < total; first += warps * 32) {
    const int64_t row = first + lane;
    int32_t r = -1;
    bool todo = false;
    if (row < total) {
      const int64_t b = row / s.rows;
      r = sorted_ids[row];
      todo = !(ValidRoute(r, numel) && route_rows[b * numel + r] == row - b * s.rows);
    }
    for (unsigned m = __ballot_sync(0xffffffffu, todo); m != 0; m &= m - 1) {
      const int src_lane = __ffs(m) - 1;
      const int64_t rw = first + src_lane;
      const int32_t rs = __shfl_sync(0xffffffffu, r, src_lane);
      const int64_t b = rw / s.rows;
      V* dst = ov + rw * units;
      if (!ValidRoute(rs, numel)) {  // sentinel (or corrupt) slot: a zero row
        V zero;
#pragma unroll
        for (int i = 0; i < N; ++i) zero.v[i] = S(0);
        for (int64_t u = lane; u < units; u += 32) dst[u] = zero;
        continue;
      }
      const V* src = xv + (b * s.tokens + rs / s.topk) * units;
      const float c = kScaled ? scale[b * numel + rs] : 1.0f;
      for (int64_t u = lane; u < units; u += 32) dst[u] = Scaled<Fmt, N, kScaled>(src[u], c);
    }
  }
}

template <typename Fmt, int N, bool kScaled>
__global__ void __launch_bounds__(kBlockThreads, kScaled ? 2 : 3) PermuteKernel(PermuteShape s, unsigned scatter_blocks,
                              const typename Fmt::Storage* __restrict__ x,
                              const float* __restrict__ scale,
                              const int32_t* __restrict__ sorted_ids,
                              const int32_t* __restrict__ route_rows,
                              typename Fmt::Storage* __restrict__ out) {
  using V = Vec<typename Fmt::Storage, N>;
  const V* xv = reinterpret_cast<const V*>(x);
  V* ov = reinterpret_cast<V*>(out);
  if (blockIdx.x < scatter_blocks) {  // block-uniform role
    ScatterTokens<Fmt, N, kScaled>(s, scatter_blocks, xv, scale, sorted_ids, route_rows, ov);
  } else {
    FillUnowned<Fmt, N, kScaled>(s, scatter_blocks, xv, scale, sorted_ids, route_rows, ov);
  }
}

template <typename Fmt, int N, bool kScaled>
cudaError_t Launch(cudaStream_t stream, const PermuteShape& s, const void* x,
                   const float* scale, const int32_t* sorted_ids, const int32_t* route_rows,
                   void* out) {
  using S = typename Fmt::Storage;
  const RowGeometry geo = RowsGeometry(s.batch * s.tokens, s.hidden / N, kUnits<kScaled>);
  int64_t fill = (s.batch * s.rows + kBlockThreads - 1) / kBlockThreads;  // 32 rows a warp
  if (fill > kMaxBlocks) fill = kMaxBlocks;
  if (fill < 1) fill = 1;
  const unsigned scatter = s.batch * s.tokens > 0 ? geo.grid.x : 0;
  const dim3 grid(scatter + static_cast<unsigned>(fill));
  PermuteKernel<Fmt, N, kScaled><<<grid, geo.block, 0, stream>>>(
      s, scatter, static_cast<const S*>(x), scale, sorted_ids, route_rows,
      static_cast<S*>(out));
  return cudaGetLastError();
}

template <typename Fmt>
cudaError_t Dispatch(cudaStream_t stream, const PermuteShape& s, const void* x,
                     const float* scale, const int32_t* sorted_ids, const int32_t* route_rows,
                     void* out) {
  using S = typename Fmt::Storage;
  constexpr int kVec = 16 / sizeof(S);
  const bool vec = RowsVectorizable(s.hidden, sizeof(S), x, out);
  if (scale != nullptr) {
    return vec ? Launch<Fmt, kVec, true>(stream, s, x, scale, sorted_ids, route_rows, out)
               : Launch<Fmt, 1, true>(stream, s, x, scale, sorted_ids, route_rows, out);
  }
  return vec ? Launch<Fmt, kVec, false>(stream, s, x, nullptr, sorted_ids, route_rows, out)
             : Launch<Fmt, 1, false>(stream, s, x, nullptr, sorted_ids, route_rows, out);
}

}  // namespace

cudaError_t LaunchPermute(cudaStream_t stream, RowType type, const PermuteShape& s,
                          const void* x, const float* scale, const int32_t* sorted_ids,
                          const int32_t* route_rows, void* out) {
  if (s.batch * s.rows == 0 || s.hidden == 0) return cudaSuccess;  // nothing to write
  switch (type) {
    case RowType::kF32: return Dispatch<F32Format>(stream, s, x, scale, sorted_ids, route_rows, out);
    case RowType::kBf16: return Dispatch<Bf16Format>(stream, s, x, scale, sorted_ids, route_rows, out);
    case RowType::kF16: return Dispatch<F16Format>(stream, s, x, scale, sorted_ids, route_rows, out);
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_moe
