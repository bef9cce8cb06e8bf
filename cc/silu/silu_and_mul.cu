// CUDA kernels of silu_and_mul. The math (silu_math.h) and the FP8 encoder
// (common/fp8.h) are the same source as the CPU kernels, so outputs match the
// CPU backend bit for bit.
//
// Schedule: blockIdx.y walks problems (experts with counts), blockIdx.x and the
// threads grid-stride over the problem's valid rows in vectors of V channels
// (16-byte loads when I and the pointers allow). A problem's work is its count,
// not its capacity: blocks past the count exit at once, and masked rows are only
// touched when zero-filled.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/fp8.h"
#include "silu/silu_and_mul_cuda.h"
#include "silu/silu_math.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // per launch, spread over gridDim.y

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

// V consecutive elements as floats: one vector load when kVec, else V scalar loads.
template <typename T, int V, bool kVec>
__device__ __forceinline__ void LoadF(const T* src, float (&out)[V]) {
  if constexpr (kVec) {
    const Vec<T, V> x = *reinterpret_cast<const Vec<T, V>*>(src);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ToF(x.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ToF(src[k]);
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

// Walks the valid vectors [0, n) of each problem (valid(row, j)) and, when
// zero-filling, the masked ones [n, rows * vpr) (masked(row, j)); row is global,
// j the vector index in the row. Lanes of a warp hold consecutive vectors.
template <typename Valid, typename Masked>
__device__ __forceinline__ void ForEachVector(const SiluProblem& p, int64_t vpr, bool fill,
                                              Valid&& valid, Masked&& masked) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < p.problems; b += gridDim.y) {
    const int64_t n = SiluValidRows(p.counts, b, p.rows) * vpr;
    const int64_t first = b * p.rows;
    for (int64_t v = start; v < n; v += stride) valid(first + v / vpr, v % vpr);
    if (fill) {
      const int64_t total = p.rows * vpr;
      for (int64_t v = n + start; v < total; v += stride) masked(first + v / vpr, v % vpr);
    }
  }
}

template <typename T, int V, bool kVec>
__global__ void SiluFwdKernel(SiluProblem p, const T* __restrict__ h, T* __restrict__ y) {
  const int64_t I = p.inter;
  ForEachVector(
      p, I / V, p.zero_fill,
      [&](int64_t row, int64_t j) {
        const T* g = h + row * 2 * I + j * V;
        float gv[V], uv[V], out[V];
        LoadF<T, V, kVec>(g, gv);
        LoadF<T, V, kVec>(g + I, uv);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = SiluMul(gv[k], uv[k]);
        StoreF<T, V, kVec>(y + row * I + j * V, out);
      },
      [&](int64_t row, int64_t j) { StoreZeros<T, V, kVec>(y + row * I + j * V); });
}

// One 128-channel group = kLanes consecutive lanes of a warp (V channels each).
template <typename T, int V, bool kVec>
__global__ void SiluFp8Kernel(SiluProblem p, const T* __restrict__ h, uint8_t* __restrict__ q,
                              float* __restrict__ scales) {
  constexpr int kLanes = kFp8Group / V;
  static_assert(kLanes <= 32 && 32 % kLanes == 0, "a group must fit in a warp");
  const int64_t I = p.inter;
  const int64_t groups = I / kFp8Group;
  const unsigned lane = threadIdx.x & 31u;
  // The lanes of this group; all of them take the same branch (same row, and the
  // valid-vector count is a multiple of kLanes).
  const unsigned mask = kLanes == 32 ? 0xffffffffu
                                     : (((1u << kLanes) - 1u) << (lane & ~(kLanes - 1u)));
  ForEachVector(
      p, I / V, p.zero_fill,
      [&](int64_t row, int64_t j) {
        const T* g = h + row * 2 * I + j * V;
        float gv[V], uv[V], act[V];
        LoadF<T, V, kVec>(g, gv);
        LoadF<T, V, kVec>(g + I, uv);
        float amax = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          act[k] = SiluMul(gv[k], uv[k]);
          amax = fmaxf(amax, fabsf(act[k]));
        }
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1)
          amax = fmaxf(amax, __shfl_xor_sync(mask, amax, off));
        const float mult = Fp8Multiplier(amax);
        Vec<uint8_t, V> bytes;
#pragma unroll
        for (int k = 0; k < V; ++k) bytes.v[k] = FloatToE4m3(act[k] * mult);
        uint8_t* dst = q + row * I + j * V;
        if constexpr (kVec) {
          *reinterpret_cast<Vec<uint8_t, V>*>(dst) = bytes;
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) dst[k] = bytes.v[k];
        }
        if (j % kLanes == 0) scales[row * groups + j / kLanes] = Fp8Scale(amax);
      },
      [&](int64_t row, int64_t j) {
        uint8_t* dst = q + row * I + j * V;
#pragma unroll
        for (int k = 0; k < V; ++k) dst[k] = 0;
        if (j % kLanes == 0) scales[row * groups + j / kLanes] = 0.0f;
      });
}

template <typename T, int V, bool kVec>
__global__ void SiluBwdKernel(SiluProblem p, const T* __restrict__ h, const T* __restrict__ dy,
                              T* __restrict__ dh) {
  const int64_t I = p.inter;
  ForEachVector(
      p, I / V, /*fill=*/true,
      [&](int64_t row, int64_t j) {
        const T* g = h + row * 2 * I + j * V;
        float gv[V], uv[V], dv[V], dg[V], du[V];
        LoadF<T, V, kVec>(g, gv);
        LoadF<T, V, kVec>(g + I, uv);
        LoadF<T, V, kVec>(dy + row * I + j * V, dv);
#pragma unroll
        for (int k = 0; k < V; ++k) SiluMulGrad(gv[k], uv[k], dv[k], &dg[k], &du[k]);
        T* out = dh + row * 2 * I + j * V;
        StoreF<T, V, kVec>(out, dg);
        StoreF<T, V, kVec>(out + I, du);
      },
      [&](int64_t row, int64_t j) {
        T* out = dh + row * 2 * I + j * V;
        StoreZeros<T, V, kVec>(out);
        StoreZeros<T, V, kVec>(out + I);
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

dim3 Grid(const SiluProblem& p, int64_t vpr) {
  const int64_t gy = p.problems < 65535 ? p.problems : 65535;
  int64_t gx = (p.rows * vpr + kThreads - 1) / kThreads;
  const int64_t cap = kMaxBlocks / gy > 0 ? kMaxBlocks / gy : 1;
  if (gx > cap) gx = cap;
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
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
      SiluFwdKernel<T, V, true><<<Grid(p, p.inter / V), kThreads, 0, stream>>>(p, hh, yy);
    } else {
      SiluFwdKernel<T, 1, false><<<Grid(p, p.inter), kThreads, 0, stream>>>(p, hh, yy);
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
    const dim3 grid = Grid(p, p.inter / V);
    if (Aligned16(h) && Aligned16(q)) {
      SiluFp8Kernel<T, V, true><<<grid, kThreads, 0, stream>>>(p, hh, q, scales);
    } else {
      SiluFp8Kernel<T, V, false><<<grid, kThreads, 0, stream>>>(p, hh, q, scales);
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
      SiluBwdKernel<T, V, true><<<Grid(p, p.inter / V), kThreads, 0, stream>>>(p, hh, dd, out);
    } else {
      SiluBwdKernel<T, 1, false><<<Grid(p, p.inter), kThreads, 0, stream>>>(p, hh, dd, out);
    }
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
