// CUDA kernels of silu_and_mul.
//
// Math: the forward (plain and FP8) computes silu with the hardware exp and
// division (SiluMulFast): the exact float32 math of silu_math.h, which the CPU
// kernels use, costs ~40 instructions per element and made the FP8 kernel
// instruction-bound (65% of copy bandwidth against 94% with SiluMulFast, on an
// H200). So forward outputs match the CPU within a few float32 ulps (FP8 codes
// within one step), not bit for bit; the backward keeps silu_math.h and the FP8
// encoder equals the CPU's byte for byte (common/fp8_cuda.cuh).
//
// Schedule: blockIdx.y walks problems (experts with counts); a block holds
// rows_per_block groups of tpr threads, one group per row, grid-striding over
// the problem's rows. A thread owns the vectors j = tx + m * tpr (m < kSlots)
// of its row (V channels each, 16-byte loads when I and the pointers allow)
// and issues every load of the step before any math: the kernels are memory-
// bound only if enough bytes are in flight. Row and vector indices come from
// the loop structure, never from 64-bit division. A problem's work is its
// count, not its capacity; masked rows are only touched when zero-filled.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/fp8.h"
#include "common/fp8_cuda.cuh"
#include "silu/silu_and_mul_cuda.h"
#include "silu/silu_math.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // per launch, spread over gridDim.y

__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToF(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T FromF(float v);
template <> __device__ __forceinline__ float FromF<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);  // round to nearest even, as F32ToBf16 on the CPU
}
template <> __device__ __forceinline__ __half FromF<__half>(float v) { return __float2half_rn(v); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// V consecutive elements, raw (widened only when used, to save registers for
// loads in flight): one vector load when kVec, else V scalar loads.
template <typename T, int V, bool kVec>
__device__ __forceinline__ Vec<T, V> LoadRaw(const T* src) {
  if constexpr (kVec) {
    return *reinterpret_cast<const Vec<T, V>*>(src);
  } else {
    Vec<T, V> x;
#pragma unroll
    for (int k = 0; k < V; ++k) x.v[k] = src[k];
    return x;
  }
}

template <typename T, int V, bool kVec>
__device__ __forceinline__ void StoreF(T* dst, const float (&in)[V]) {
  if constexpr (kVec) {
    Vec<T, V> x;
#pragma unroll
    for (int k = 0; k < V; ++k) x.v[k] = FromF<T>(in[k]);
    *reinterpret_cast<Vec<T, V>*>(dst) = x;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) dst[k] = FromF<T>(in[k]);
  }
}

template <typename T, int V, bool kVec>
__device__ __forceinline__ void StoreZeros(T* dst) {
  float z[V];
#pragma unroll
  for (int k = 0; k < V; ++k) z[k] = 0.0f;
  StoreF<T, V, kVec>(dst, z);
}

// Walks this thread's steps: for each row r of each problem (valid when r <
// count, else masked; masked rows only when `fill`), step(row, j0, valid) with
// row the global row and j0 = tx + s * kSlots * tpr the step's first vector.
template <int kSlots, typename Step>
__device__ __forceinline__ void ForEachStep(const SiluProblem& p, int64_t vpr, bool fill,
                                            Step&& step) {
  const int64_t tpr = blockDim.x;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t b = blockIdx.y; b < p.problems; b += gridDim.y) {
    const int64_t n = SiluValidRows(p.counts, b, p.rows);
    const int64_t limit = fill ? p.rows : n;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < limit;
         r += row_stride) {
      for (int64_t j0 = threadIdx.x; j0 < vpr; j0 += kSlots * tpr) step(b * p.rows + r, j0, r < n);
    }
  }
}

// silu(g) * u with the hardware exp (ex2.approx) and division (rcp.approx):
// relative error a few 1e-7 for |g| < 10, growing to ~1e-5 at |g| ~ 80 where
// silu is either g itself or vanishingly small. Below g ~ -87.3 the divisor
// passes 2^126, where the fast division may return 0 (the true silu is under
// 1e-36); below -88.7 exp overflows and the quotient is -0. NaN stays NaN.
__device__ __forceinline__ float SiluMulFast(float g, float u) {
  return __fdividef(g, 1.0f + __expf(-g)) * u;
}

constexpr int kFwdSlots = 2;  // 4 loads of 16 B in flight per thread
constexpr int kFp8Slots = 2;
constexpr int kBwdSlots = 2;  // 6 loads

template <typename T, int V, bool kVec>
__global__ void __launch_bounds__(kThreads, 4) SiluFwdKernel(SiluProblem p, const T* __restrict__ h, T* __restrict__ y) {
  const int64_t I = p.inter;
  const int64_t vpr = I / V;
  const int64_t tpr = blockDim.x;
  ForEachStep<kFwdSlots>(p, vpr, p.zero_fill, [&](int64_t row, int64_t j0, bool valid) {
    T* out = y + row * I;
    if (!valid) {
#pragma unroll
      for (int m = 0; m < kFwdSlots; ++m)
        if (j0 + m * tpr < vpr) StoreZeros<T, V, kVec>(out + (j0 + m * tpr) * V);
      return;
    }
    const T* g = h + row * 2 * I;
    Vec<T, V> gv[kFwdSlots], uv[kFwdSlots];
#pragma unroll
    for (int m = 0; m < kFwdSlots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j < vpr) {
        gv[m] = LoadRaw<T, V, kVec>(g + j * V);
        uv[m] = LoadRaw<T, V, kVec>(g + I + j * V);
      }
    }
#pragma unroll
    for (int m = 0; m < kFwdSlots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j >= vpr) continue;
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = SiluMulFast(ToF(gv[m].v[k]), ToF(uv[m].v[k]));
      StoreF<T, V, kVec>(out + j * V, o);
    }
  });
}

// One 128-channel group = kLanes consecutive lanes of a warp (V channels each).
// tpr is a multiple of kLanes and I of 128, so the lanes of a group share the
// row and the slot's validity: they reach each shuffle together.
template <typename T, int V, bool kVec>
__global__ void __launch_bounds__(kThreads, 3) SiluFp8Kernel(SiluProblem p, const T* __restrict__ h, uint8_t* __restrict__ q,
                              float* __restrict__ scales) {
  constexpr int kLanes = kFp8Group / V;
  static_assert(kLanes <= 32 && 32 % kLanes == 0, "a group must fit in a warp");
  static_assert(V % 2 == 0, "bytes are encoded in pairs");
  const int64_t I = p.inter;
  const int64_t vpr = I / V;
  const int64_t groups = I / kFp8Group;
  const int64_t tpr = blockDim.x;
  const unsigned lane = threadIdx.x & 31u;  // tpr >= kLanes: groups align with lanes
  const unsigned mask = kLanes == 32 ? 0xffffffffu
                                     : (((1u << kLanes) - 1u) << (lane & ~(kLanes - 1u)));
  ForEachStep<kFp8Slots>(p, vpr, p.zero_fill, [&](int64_t row, int64_t j0, bool valid) {
    uint8_t* out = q + row * I;
    if (!valid) {
#pragma unroll
      for (int m = 0; m < kFp8Slots; ++m) {
        const int64_t j = j0 + m * tpr;
        if (j >= vpr) continue;
#pragma unroll
        for (int k = 0; k < V; ++k) out[j * V + k] = 0;
        if (j % kLanes == 0) scales[row * groups + j / kLanes] = 0.0f;
      }
      return;
    }
    const T* g = h + row * 2 * I;
    Vec<T, V> gv[kFp8Slots], uv[kFp8Slots];
#pragma unroll
    for (int m = 0; m < kFp8Slots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j < vpr) {
        gv[m] = LoadRaw<T, V, kVec>(g + j * V);
        uv[m] = LoadRaw<T, V, kVec>(g + I + j * V);
      }
    }
#pragma unroll
    for (int m = 0; m < kFp8Slots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j >= vpr) continue;
      float act[V];
      float amax = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        act[k] = SiluMulFast(ToF(gv[m].v[k]), ToF(uv[m].v[k]));
        amax = fmaxf(amax, fabsf(act[k]));
      }
#pragma unroll
      for (int off = kLanes / 2; off > 0; off >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(mask, amax, off));
      const float mult = Fp8Multiplier(amax);
      Vec<uint16_t, V / 2> pairs;
#pragma unroll
      for (int k = 0; k < V; k += 2)
        pairs.v[k / 2] = static_cast<uint16_t>(E4m3Pair(act[k] * mult, act[k + 1] * mult));
      uint8_t* dst = out + j * V;
      if constexpr (kVec) {
        *reinterpret_cast<Vec<uint16_t, V / 2>*>(dst) = pairs;
      } else {
#pragma unroll
        for (int k = 0; k < V; k += 2) {
          dst[k] = static_cast<uint8_t>(pairs.v[k / 2] & 0xffu);
          dst[k + 1] = static_cast<uint8_t>(pairs.v[k / 2] >> 8);
        }
      }
      if (j % kLanes == 0) scales[row * groups + j / kLanes] = Fp8Scale(amax);
    }
  });
}

template <typename T, int V, bool kVec>
__global__ void __launch_bounds__(kThreads, 2) SiluBwdKernel(SiluProblem p, const T* __restrict__ h, const T* __restrict__ dy,
                              T* __restrict__ dh) {
  const int64_t I = p.inter;
  const int64_t vpr = I / V;
  const int64_t tpr = blockDim.x;
  ForEachStep<kBwdSlots>(p, vpr, /*fill=*/true, [&](int64_t row, int64_t j0, bool valid) {
    T* out = dh + row * 2 * I;
    if (!valid) {
#pragma unroll
      for (int m = 0; m < kBwdSlots; ++m) {
        const int64_t j = j0 + m * tpr;
        if (j >= vpr) continue;
        StoreZeros<T, V, kVec>(out + j * V);
        StoreZeros<T, V, kVec>(out + I + j * V);
      }
      return;
    }
    const T* g = h + row * 2 * I;
    Vec<T, V> gv[kBwdSlots], uv[kBwdSlots], dv[kBwdSlots];
#pragma unroll
    for (int m = 0; m < kBwdSlots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j < vpr) {
        gv[m] = LoadRaw<T, V, kVec>(g + j * V);
        uv[m] = LoadRaw<T, V, kVec>(g + I + j * V);
        dv[m] = LoadRaw<T, V, kVec>(dy + row * I + j * V);
      }
    }
#pragma unroll
    for (int m = 0; m < kBwdSlots; ++m) {
      const int64_t j = j0 + m * tpr;
      if (j >= vpr) continue;
      float dg[V], du[V];
#pragma unroll
      for (int k = 0; k < V; ++k)
        SiluMulGrad(ToF(gv[m].v[k]), ToF(uv[m].v[k]), ToF(dv[m].v[k]), &dg[k], &du[k]);
      StoreF<T, V, kVec>(out + j * V, dg);
      StoreF<T, V, kVec>(out + I + j * V, du);
    }
  });
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Without a mask every row is alike: one problem of all rows, so that the grid
// spreads over rows instead of walking gridDim.y.
SiluProblem Collapsed(const SiluProblem& p) {
  SiluProblem c = p;
  if (c.counts == nullptr) {
    c.rows = p.problems * p.rows;
    c.problems = 1;
  }
  return c;
}

struct Geometry {
  dim3 grid, block;
};

// tpr: the smallest power of two >= min_tpr giving each thread at most kSlots
// vectors of a row, capped at a block; the rest of the block takes more rows.
template <int kSlots>
Geometry Geo(const SiluProblem& p, int64_t vpr, int min_tpr = 1) {
  int tpr = 1;
  while ((static_cast<int64_t>(tpr) * kSlots < vpr || tpr < min_tpr) && tpr < kThreads) tpr <<= 1;
  const int rpb = kThreads / tpr;
  const int64_t gy = p.problems < 65535 ? p.problems : 65535;
  int64_t gx = (p.rows + rpb - 1) / rpb;
  const int64_t cap = kMaxBlocks / gy > 0 ? kMaxBlocks / gy : 1;
  if (gx > cap) gx = cap;
  if (gx < 1) gx = 1;
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(tpr, rpb)};
}

bool Empty(const SiluProblem& p) { return p.problems == 0 || p.rows == 0 || p.inter == 0; }

// Calls f(T{}) with the device type of dt.
template <typename F>
cudaError_t Dispatch(SiluDtype dt, F&& f) {
  switch (dt) {
    case SiluDtype::kBf16: return f(__nv_bfloat16{});
    case SiluDtype::kF16: return f(__half{});
    default: return f(float{});
  }
}

}  // namespace

cudaError_t LaunchSiluAndMul(SiluDtype dt, const SiluProblem& p0, const void* h, void* y,
                             cudaStream_t stream) {
  const SiluProblem p = Collapsed(p0);
  if (Empty(p)) return cudaSuccess;
  return Dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const T* hh = static_cast<const T*>(h);
    T* yy = static_cast<T*>(y);
    if (p.inter % V == 0 && Aligned16(h) && Aligned16(y)) {
      const Geometry g = Geo<kFwdSlots>(p, p.inter / V);
      SiluFwdKernel<T, V, true><<<g.grid, g.block, 0, stream>>>(p, hh, yy);
    } else {
      const Geometry g = Geo<kFwdSlots>(p, p.inter);
      SiluFwdKernel<T, 1, false><<<g.grid, g.block, 0, stream>>>(p, hh, yy);
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchSiluAndMulFp8(SiluDtype dt, const SiluProblem& p0, const void* h, uint8_t* q,
                                float* scales, cudaStream_t stream) {
  const SiluProblem p = Collapsed(p0);
  if (Empty(p)) return cudaSuccess;
  return Dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);  // I % 128 == 0, so I % V == 0
    const T* hh = static_cast<const T*>(h);
    const Geometry g = Geo<kFp8Slots>(p, p.inter / V, kFp8Group / V);
    if (Aligned16(h) && Aligned16(q)) {
      SiluFp8Kernel<T, V, true><<<g.grid, g.block, 0, stream>>>(p, hh, q, scales);
    } else {
      SiluFp8Kernel<T, V, false><<<g.grid, g.block, 0, stream>>>(p, hh, q, scales);
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchSiluAndMulBwd(SiluDtype dt, const SiluProblem& p0, const void* h,
                                const void* dy, void* dh, cudaStream_t stream) {
  const SiluProblem p = Collapsed(p0);
  if (Empty(p)) return cudaSuccess;
  return Dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const T* hh = static_cast<const T*>(h);
    const T* dd = static_cast<const T*>(dy);
    T* out = static_cast<T*>(dh);
    if (p.inter % V == 0 && Aligned16(h) && Aligned16(dy) && Aligned16(dh)) {
      const Geometry g = Geo<kBwdSlots>(p, p.inter / V);
      SiluBwdKernel<T, V, true><<<g.grid, g.block, 0, stream>>>(p, hh, dd, out);
    } else {
      const Geometry g = Geo<kBwdSlots>(p, p.inter);
      SiluBwdKernel<T, 1, false><<<g.grid, g.block, 0, stream>>>(p, hh, dd, out);
    }
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
