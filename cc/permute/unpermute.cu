// CUDA kernels of unpermute (weighted gather-sum per token) and of its weight
// gradient (one dot product per route). Both are gathers: each output element
// is written once by one thread (group) in a fixed order, so results are
// deterministic; no atomics.
#include "common/half_bits.h"
#include "permute/permute_cuda.h"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

// y[t] = sum_k w[t,k] * y_sorted[route_rows[t,k]]. Products and sums round
// separately (__fmul_rn/__fadd_rn are never fused) in increasing k, exactly as
// the CPU kernel does.
template <typename Fmt, int N>
__global__ void UnpermuteKernel(PermuteShape s, const typename Fmt::Storage* __restrict__ ys,
                                const float* __restrict__ weights,
                                const int32_t* __restrict__ route_rows,
                                typename Fmt::Storage* __restrict__ y) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  const int64_t units = s.hidden / N;
  const V* ysv = reinterpret_cast<const V*>(ys);
  V* yv = reinterpret_cast<V*>(y);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t tok = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
       tok < s.batch * s.tokens; tok += stride) {
    const int64_t b = tok / s.tokens;
    const int32_t* rr = route_rows + tok * s.topk;
    const float* w = weights ? weights + tok * s.topk : nullptr;
    const V* base = ysv + b * s.rows * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      float acc[N];
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] = 0.0f;
      for (int64_t k = 0; k < s.topk; ++k) {
        const int32_t j = rr[k];
        if (!ValidRow(j, s.rows)) continue;  // dropped route
        const float wk = w ? w[k] : 1.0f;
        const V val = base[static_cast<int64_t>(j) * units + u];
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(wk, Fmt::Load(val.v[i])));
      }
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) out.v[i] = Fmt::Store(acc[i]);
      yv[tok * units + u] = out;
    }
  }
}

// dw[route] = <g[token], y_sorted[row]>: one warp per route, lanes stride over
// the row, then a butterfly reduction (fixed order for a given H and N).
template <typename Fmt, int N>
__global__ void WgradKernel(PermuteShape s, const typename Fmt::Storage* __restrict__ g,
                            const typename Fmt::Storage* __restrict__ ys,
                            const int32_t* __restrict__ route_rows, float* __restrict__ dw) {
  using S = typename Fmt::Storage;
  using V = Vec<S, N>;
  const int64_t units = s.hidden / N;
  const int64_t numel = s.numel();
  const V* gv = reinterpret_cast<const V*>(g);
  const V* ysv = reinterpret_cast<const V*>(ys);
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  // The loop bound is uniform across a warp, so every lane reaches the shuffles.
  for (int64_t route = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
       route < s.batch * numel; route += warps) {
    const int64_t b = route / numel;
    const int64_t r = route - b * numel;
    const int32_t j = route_rows[route];
    float acc = 0.0f;
    if (ValidRow(j, s.rows)) {
      const V* a = gv + (b * s.tokens + r / s.topk) * units;
      const V* c = ysv + (b * s.rows + j) * units;
      for (int64_t u = lane; u < units; u += 32) {
        const V va = a[u];
        const V vc = c[u];
#pragma unroll
        for (int i = 0; i < N; ++i) acc = fmaf(Fmt::Load(va.v[i]), Fmt::Load(vc.v[i]), acc);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) dw[route] = acc;
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
  constexpr int kWarps = kBlockThreads / 32;
  int64_t blocks = (s.batch * s.numel() + kWarps - 1) / kWarps;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (RowsVectorizable(s.hidden, sizeof(S), g, ys)) {
    WgradKernel<Fmt, kVec><<<grid, kBlockThreads, 0, stream>>>(
        s, static_cast<const S*>(g), static_cast<const S*>(ys), rr, dw);
  } else {
    WgradKernel<Fmt, 1><<<grid, kBlockThreads, 0, stream>>>(
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
