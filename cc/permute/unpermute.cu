// CUDA kernels of unpermute (weighted gather-sum per token) and of its weight
// gradient (K dot products per token). Both are gathers: each output element
// is written once by one thread (group) in a fixed order, so results are
// deterministic; no atomics. Both are memory-bound: see route_chunk.cuh for
// how they keep enough loads in flight.
#include "common/half_bits.h"
#include "permute/permute_cuda.h"
#include "permute/route_chunk.cuh"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

// y[t] = sum_k w[t,k] * y_sorted[route_rows[t,k]]. Products and sums round
// separately (__fmul_rn/__fadd_rn are never fused) in increasing k, exactly as
// the CPU kernel does. One thread group per token; each thread has the token's
// K rows of its unit in flight at once (route_chunk.cuh).
template <typename Fmt, int N>
__device__ __forceinline__ void AddChunk(float (&acc)[N], const Vec<typename Fmt::Storage, N>* base,
                                         int64_t units, int64_t u, const RouteChunk& c) {
  Vec<typename Fmt::Storage, N> val[kRouteChunk];
  LoadChunkUnits(base, units, u, c, val);
#pragma unroll
  for (int k = 0; k < kRouteChunk; ++k) {
    if (c.row[k] < 0) continue;  // dropped route (or past K)
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(c.w[k], Fmt::Load(val[k].v[i])));
  }
}

template <typename Fmt, int N>
__global__ void __launch_bounds__(kBlockThreads, 2) UnpermuteKernel(PermuteShape s, const typename Fmt::Storage* __restrict__ ys,
                                const float* __restrict__ weights,
                                const int32_t* __restrict__ route_rows,
                                typename Fmt::Storage* __restrict__ y) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  const int64_t units = s.hidden / N;
  const int64_t K = s.topk;
  const V* ysv = reinterpret_cast<const V*>(ys);
  V* yv = reinterpret_cast<V*>(y);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t tok = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
       tok < s.batch * s.tokens; tok += stride) {
    const int64_t b = tok / s.tokens;
    const int32_t* rr = route_rows + tok * K;
    const float* w = weights ? weights + tok * K : nullptr;
    const V* base = ysv + b * s.rows * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      float acc[N];
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] = 0.0f;
      // The route chunk is re-read per unit (L1 hits) rather than kept in
      // registers across the loop: registers go to loads in flight.
      for (int64_t k0 = 0; k0 < K; k0 += kRouteChunk) {
        const RouteChunk c = LoadRouteChunk(rr + k0, w ? w + k0 : nullptr, K - k0, s.rows);
        AddChunk<Fmt, N>(acc, base, units, u, c);
      }
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) out.v[i] = Fmt::Store(acc[i]);
      yv[tok * units + u] = out;
    }
  }
}

// dw[t, k] = <g[t], y_sorted[route_rows[t, k]]>. One thread group per token
// (not per route): g[t] is read once for all K routes, and each thread has g's
// unit and the K rows' units in flight at once. Each thread sums its units
// (u = tx, tx + tpr, ...) with fmaf, then the group reduces: a butterfly within
// each warp, then warps in increasing order through shared memory. The order
// is fixed for a given H and launch shape: deterministic.
template <typename Fmt, int N>
__global__ void __launch_bounds__(kBlockThreads, 2) WgradKernel(PermuteShape s, const typename Fmt::Storage* __restrict__ g,
                            const typename Fmt::Storage* __restrict__ ys,
                            const int32_t* __restrict__ route_rows, float* __restrict__ dw) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  constexpr int kWarps = kBlockThreads / 32;
  __shared__ float partial[kWarps][kRouteChunk];
  const int64_t units = s.hidden / N;
  const int64_t K = s.topk;
  const V* gv = reinterpret_cast<const V*>(g);
  const V* ysv = reinterpret_cast<const V*>(ys);
  const int tpr = blockDim.x;
  const int lane = threadIdx.x & 31;
  const int warp = (threadIdx.y * tpr + threadIdx.x) >> 5;
  const int warps_per_group = tpr > 32 ? tpr / 32 : 1;
  const int64_t total = s.batch * s.tokens;
  // Block-uniform loop bounds: every thread reaches the shuffles and barriers.
  for (int64_t tok0 = static_cast<int64_t>(blockIdx.x) * blockDim.y; tok0 < total;
       tok0 += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t tok = tok0 + threadIdx.y;
    const bool live = tok < total;
    const int64_t b = live ? tok / s.tokens : 0;
    const V* a = gv + tok * units;
    const V* base = ysv + b * s.rows * units;
    for (int64_t k0 = 0; k0 < K; k0 += kRouteChunk) {
      const RouteChunk c = live ? LoadRouteChunk(route_rows + tok * K + k0, nullptr, K - k0, s.rows)
                                : LoadRouteChunk(route_rows, nullptr, 0, s.rows);
      float acc[kRouteChunk];
#pragma unroll
      for (int k = 0; k < kRouteChunk; ++k) acc[k] = 0.0f;
      for (int64_t u = threadIdx.x; live && u < units; u += tpr) {
        const V va = a[u];
        V val[kRouteChunk];
        LoadChunkUnits(base, units, u, c, val);
#pragma unroll
        for (int k = 0; k < kRouteChunk; ++k) {
          if (c.row[k] < 0) continue;
#pragma unroll
          for (int i = 0; i < N; ++i)
            acc[k] = fmaf(Fmt::Load(va.v[i]), Fmt::Load(val[k].v[i]), acc[k]);
        }
      }
      // Within a warp: xor offsets below min(tpr, 32) stay inside the group.
#pragma unroll
      for (int k = 0; k < kRouteChunk; ++k) {
        for (int off = (tpr < 32 ? tpr : 32) >> 1; off > 0; off >>= 1)
          acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], off);
      }
      const int64_t kn = K - k0 < kRouteChunk ? K - k0 : kRouteChunk;
      if (tpr <= 32) {
        if (live && threadIdx.x == 0) {
#pragma unroll
          for (int k = 0; k < kRouteChunk; ++k)
            if (k < kn) dw[tok * K + k0 + k] = acc[k];
        }
        continue;
      }
      if (lane == 0) {
#pragma unroll
        for (int k = 0; k < kRouteChunk; ++k) partial[warp][k] = acc[k];
      }
      __syncthreads();
      if (live && threadIdx.x < kn) {
        const int first = threadIdx.y * warps_per_group;
        float sum = partial[first][threadIdx.x];
        for (int w = 1; w < warps_per_group; ++w) sum += partial[first + w][threadIdx.x];
        dw[tok * K + k0 + threadIdx.x] = sum;
      }
      __syncthreads();  // partial is reused by the next chunk
    }
  }
}

template <typename Fmt>
cudaError_t Unpermute(cudaStream_t stream, const PermuteShape& s, const void* ys,
                      const float* w, const int32_t* rr, void* y) {
  using S = typename Fmt::Storage;
  constexpr int kVec = 16 / sizeof(S);
  const bool vec = RowsVectorizable(s.hidden, sizeof(S), ys, y);
  const int n = vec ? kVec : 1;
  const RowGeometry geo = RowsGeometry(s.batch * s.tokens, s.hidden / n);
  if (vec) {
    UnpermuteKernel<Fmt, kVec><<<geo.grid, geo.block, 0, stream>>>(
        s, static_cast<const S*>(ys), w, rr, static_cast<S*>(y));
  } else {
    UnpermuteKernel<Fmt, 1><<<geo.grid, geo.block, 0, stream>>>(
        s, static_cast<const S*>(ys), w, rr, static_cast<S*>(y));
  }
  return cudaGetLastError();
}

template <typename Fmt>
cudaError_t Wgrad(cudaStream_t stream, const PermuteShape& s, const void* g, const void* ys,
                  const int32_t* rr, float* dw) {
  using S = typename Fmt::Storage;
  constexpr int kVec = 16 / sizeof(S);
  const bool vec = RowsVectorizable(s.hidden, sizeof(S), g, ys);
  const RowGeometry geo = RowsGeometry(s.batch * s.tokens, s.hidden / (vec ? kVec : 1));
  if (vec) {
    WgradKernel<Fmt, kVec><<<geo.grid, geo.block, 0, stream>>>(
        s, static_cast<const S*>(g), static_cast<const S*>(ys), rr, dw);
  } else {
    WgradKernel<Fmt, 1><<<geo.grid, geo.block, 0, stream>>>(
        s, static_cast<const S*>(g), static_cast<const S*>(ys), rr, dw);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchUnpermute(cudaStream_t stream, RowType type, const PermuteShape& s,
                            const void* y_sorted, const float* weights,
                            const int32_t* route_rows, void* y) {
  if (s.batch * s.tokens == 0 || s.hidden == 0) return cudaSuccess;  // nothing to write
  switch (type) {
    case RowType::kF32: return Unpermute<F32Format>(stream, s, y_sorted, weights, route_rows, y);
    case RowType::kBf16: return Unpermute<Bf16Format>(stream, s, y_sorted, weights, route_rows, y);
    case RowType::kF16: return Unpermute<F16Format>(stream, s, y_sorted, weights, route_rows, y);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchUnpermuteWgrad(cudaStream_t stream, RowType type, const PermuteShape& s,
                                 const void* g, const void* y_sorted,
                                 const int32_t* route_rows, float* dw) {
  if (s.batch * s.numel() == 0) return cudaSuccess;  // H == 0 still writes zeros
  switch (type) {
    case RowType::kF32: return Wgrad<F32Format>(stream, s, g, y_sorted, route_rows, dw);
    case RowType::kBf16: return Wgrad<Bf16Format>(stream, s, g, y_sorted, route_rows, dw);
    case RowType::kF16: return Wgrad<F16Format>(stream, s, g, y_sorted, route_rows, dw);
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_moe
