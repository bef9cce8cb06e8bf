// Gather + FP8 cast of the EP dispatch on CUDA (contract: EpPackFp8Cpu in ep_cpu.h;
// format: common/fp8.h, whose encoder both backends share, so bytes are equal).
//
// Bandwidth-bound layout: one block per output row (grid-stride); a thread owns
// 8 consecutive channels (one 16-byte load for 16-bit types), so a 128-channel
// group is 16 lanes of one half-warp and its amax is 4 xor-shuffles. Each
// thread loads kUnroll vectors before it reduces any (a whole 7168-channel bf16
// row is in flight per block), and several blocks share an SM.
// The amax is a max of absolute values: exact and order-independent, so it
// equals the CPU's sequential fmax; the cast multiplies with __fmul_rn (no FMA)
// and encodes with the hardware conversion (E4m3Pair, same bytes as the CPU).
#include <cstdint>

#include "common/fp8.h"
#include "common/fp8_cuda.cuh"
#include "ep/ep_cuda.h"
#include "ep/ep_float.h"
#include "ep/ep_vec.cuh"

namespace jax_moe {
namespace {

using ep_vec::AlignedTo;
using ep_vec::Blocks;
using ep_vec::Pack;

constexpr int kThreads = 256;
constexpr int kVec = 8;                           // channels per thread and vector
constexpr int kLanesPerGroup = kFp8Group / kVec;  // 16: half a warp
constexpr int kUnroll = 4;

static_assert(kThreads % kLanesPerGroup == 0, "a group never straddles two threads' vectors");

// Loads 8 channels as one vector (kVector) or one by one (unaligned buffers).
template <typename T, bool kVector>
__device__ __forceinline__ void Load8(const T* __restrict__ src, float* v) {
  if (kVector) {
    const Pack<T, kVec> p = *reinterpret_cast<const Pack<T, kVec>*>(src);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = ToFloat(p.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = ToFloat(src[i]);
  }
}

template <bool kVector>
__device__ __forceinline__ void Store8(uint8_t* dst, uint32_t lo, uint32_t hi) {
  if (kVector) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      dst[i] = static_cast<uint8_t>(lo >> (8 * i));
      dst[4 + i] = static_cast<uint8_t>(hi >> (8 * i));
    }
  }
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    EpPackFp8Kernel(const T* __restrict__ x, int64_t num_in, int64_t H,
                    const int32_t* __restrict__ rows, int64_t num_out, uint8_t* __restrict__ q,
                    float* __restrict__ scales) {
  const int64_t vecs = H / kVec;  // a multiple of 16 (H % 128 == 0)
  const int64_t G = H / kFp8Group;
  for (int64_t n = blockIdx.x; n < num_out; n += gridDim.x) {
    const int32_t r = rows[n];
    uint8_t* qrow = q + n * H;
    float* srow = scales + n * G;
    if (r < 0 || r >= num_in) {  // empty slot: zero row, zero scales
      for (int64_t c = threadIdx.x; c < vecs; c += kThreads) Store8<kVector>(qrow + c * kVec, 0, 0);
      for (int64_t g = threadIdx.x; g < G; g += kThreads) srow[g] = 0.0f;
      continue;
    }
    const T* xrow = x + static_cast<int64_t>(r) * H;
    // The loop bound is block-uniform and a half-warp's 16 vectors are all in or
    // all out of range, so every lane reaches the full-warp shuffles below.
    for (int64_t base = 0; base < vecs; base += kThreads * kUnroll) {
      float v[kUnroll][kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = base + u * kThreads + threadIdx.x;
        if (c < vecs) {
          Load8<T, kVector>(xrow + c * kVec, v[u]);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) v[u][i] = 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = base + u * kThreads + threadIdx.x;
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(v[u][i]));
#pragma unroll
        for (int off = kLanesPerGroup / 2; off > 0; off >>= 1)
          amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        if (c >= vecs) continue;
        const float mul = Fp8Multiplier(amax);
        float s[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) s[i] = __fmul_rn(v[u][i], mul);
        Store8<kVector>(qrow + c * kVec, E4m3Quad(s[0], s[1], s[2], s[3]),
                        E4m3Quad(s[4], s[5], s[6], s[7]));
        if (c % kLanesPerGroup == 0) srow[c / kLanesPerGroup] = Fp8Scale(amax);
      }
    }
  }
}

template <typename T>
cudaError_t PackFp8As(const void* x, int64_t num_in, int64_t H, const int32_t* rows,
                      int64_t num_out, uint8_t* q, float* scales, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  // Rows start at multiples of H (a multiple of 128 elements), so base alignment
  // decides: x to its vector size, q to 8 bytes.
  if (AlignedTo(x, sizeof(T) * kVec) && AlignedTo(q, 8)) {
    EpPackFp8Kernel<T, true><<<Blocks(num_out), kThreads, 0, stream>>>(xt, num_in, H, rows,
                                                                      num_out, q, scales);
  } else {
    EpPackFp8Kernel<T, false><<<Blocks(num_out), kThreads, 0, stream>>>(xt, num_in, H, rows,
                                                                       num_out, q, scales);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchEpPackFp8(EpRowType type, const void* x, int64_t num_in, int64_t H,
                            const int32_t* rows, int64_t num_out, uint8_t* q, float* scales,
                            cudaStream_t stream) {
  if (num_out <= 0 || H <= 0) return cudaSuccess;
  switch (type) {
    case EpRowType::kF32: return PackFp8As<float>(x, num_in, H, rows, num_out, q, scales, stream);
    case EpRowType::kBf16: return PackFp8As<Bf16>(x, num_in, H, rows, num_out, q, scales, stream);
    case EpRowType::kF16: return PackFp8As<F16>(x, num_in, H, rows, num_out, q, scales, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_moe
