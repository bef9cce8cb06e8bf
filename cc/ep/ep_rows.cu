// Row movement of the EP dispatch/combine on CUDA (contracts: ep_cpu.h): gather,
// gather + FP8 cast, weighted gather-sum. Rows move in 16-byte vectors when
// their size and addresses allow; float math avoids FMA contraction (explicit
// __fmul_rn/__fadd_rn) so results equal the CPU kernels bit for bit.
#include <cstdint>

#include "common/fp8.h"
#include "ep/ep_cuda.h"
#include "ep/ep_float.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

unsigned Blocks(int64_t rows) {
  return static_cast<unsigned>(rows < 1 ? 1 : (rows < kMaxBlocks ? rows : kMaxBlocks));
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// --- gather: out[n] = in[rows[n]] or zeros; W = bytes per vector ---------------

template <typename Word>
__global__ void EpGatherKernel(const Word* __restrict__ in, int64_t num_in, int64_t row_words,
                               const int32_t* __restrict__ rows, int64_t num_out,
                               Word* __restrict__ out) {
  for (int64_t n = blockIdx.x; n < num_out; n += gridDim.x) {
    const int32_t r = rows[n];
    Word* dst = out + n * row_words;
    if (r >= 0 && r < num_in) {
      const Word* src = in + static_cast<int64_t>(r) * row_words;
      for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) dst[c] = src[c];
    } else {
      for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) dst[c] = Word{};
    }
  }
}

template <typename Word>
cudaError_t GatherAs(const void* in, int64_t num_in, int64_t row_bytes, const int32_t* rows,
                     int64_t num_out, void* out, cudaStream_t stream) {
  EpGatherKernel<Word><<<Blocks(num_out), kThreads, 0, stream>>>(
      static_cast<const Word*>(in), num_in, row_bytes / static_cast<int64_t>(sizeof(Word)),
      rows, num_out, static_cast<Word*>(out));
  return cudaGetLastError();
}

// --- FP8 pack: one warp per (row, 128-channel group), 4 channels per lane -------

template <typename T>
__global__ void EpPackFp8Kernel(const T* __restrict__ x, int64_t num_in, int64_t H,
                                const int32_t* __restrict__ rows, int64_t num_out,
                                uint8_t* __restrict__ q, float* __restrict__ scales) {
  const int64_t G = H / kFp8Group;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
       item < num_out * G; item += warps) {
    const int64_t n = item / G, g = item % G;
    const int32_t r = rows[n];
    uint8_t* qdst = q + n * H + g * kFp8Group + lane * 4;
    if (r < 0 || r >= num_in) {
      *reinterpret_cast<uint32_t*>(qdst) = 0u;
      if (lane == 0) scales[n * G + g] = 0.0f;
      continue;
    }
    const T* src = x + static_cast<int64_t>(r) * H + g * kFp8Group + lane * 4;
    float v[4];
    float amax = 0.0f;
    for (int i = 0; i < 4; ++i) {
      v[i] = ToFloat(src[i]);
      amax = fmaxf(amax, fabsf(v[i]));
    }
    for (int off = 16; off > 0; off >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float mul = Fp8Multiplier(amax);
    uint32_t packed = 0;
    for (int i = 0; i < 4; ++i)
      packed |= static_cast<uint32_t>(FloatToE4m3(__fmul_rn(v[i], mul))) << (8 * i);
    *reinterpret_cast<uint32_t*>(qdst) = packed;
    if (lane == 0) scales[n * G + g] = Fp8Scale(amax);
  }
}

// --- combine: out[m] = sum_j w * y[index] in float32, j ascending -----------------

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__global__ void EpCombineKernel(const T* __restrict__ y, int64_t N, int64_t H,
                                const int32_t* __restrict__ index, const float* __restrict__ w,
                                int64_t M, int64_t J, T* __restrict__ out) {
  const int64_t vecs = H / V;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    for (int64_t c = threadIdx.x; c < vecs; c += blockDim.x) {
      float acc[V];
      for (int i = 0; i < V; ++i) acc[i] = 0.0f;
      for (int64_t j = 0; j < J; ++j) {
        const int32_t n = index[m * J + j];
        if (n < 0 || n >= N) continue;
        const float wj = w[m * J + j];
        const Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(y + static_cast<int64_t>(n) * H)[c];
        for (int i = 0; i < V; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(wj, ToFloat(p.v[i])));
      }
      Pack<T, V> o;
      for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>::Convert(acc[i]);
      reinterpret_cast<Pack<T, V>*>(out + m * H)[c] = o;
    }
  }
}

template <typename T>
cudaError_t PackFp8As(const void* x, int64_t num_in, int64_t H, const int32_t* rows,
                      int64_t num_out, uint8_t* q, float* scales, cudaStream_t stream) {
  const int64_t items = num_out * (H / kFp8Group);
  const int64_t blocks = (items + kThreads / 32 - 1) / (kThreads / 32);
  EpPackFp8Kernel<T><<<Blocks(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(x), num_in, H, rows, num_out, q, scales);
  return cudaGetLastError();
}

template <typename T>
cudaError_t CombineAs(const void* y, int64_t N, int64_t H, const int32_t* index, const float* w,
                      int64_t M, int64_t J, void* out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* yt = static_cast<const T*>(y);
  T* ot = static_cast<T*>(out);
  if (H % kVec == 0 && Aligned16(y) && Aligned16(out)) {
    EpCombineKernel<T, kVec><<<Blocks(M), kThreads, 0, stream>>>(yt, N, H, index, w, M, J, ot);
  } else {
    EpCombineKernel<T, 1><<<Blocks(M), kThreads, 0, stream>>>(yt, N, H, index, w, M, J, ot);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchEpGather(const void* in, int64_t num_in, int64_t row_bytes,
                           const int32_t* rows, int64_t num_out, void* out, cudaStream_t stream) {
  if (num_out <= 0 || row_bytes <= 0) return cudaSuccess;
  if (row_bytes % 16 == 0 && Aligned16(in) && Aligned16(out))
    return GatherAs<uint4>(in, num_in, row_bytes, rows, num_out, out, stream);
  if (row_bytes % 4 == 0 && (reinterpret_cast<uintptr_t>(in) & 3u) == 0 &&
      (reinterpret_cast<uintptr_t>(out) & 3u) == 0)
    return GatherAs<uint32_t>(in, num_in, row_bytes, rows, num_out, out, stream);
  return GatherAs<uint8_t>(in, num_in, row_bytes, rows, num_out, out, stream);
}

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

cudaError_t LaunchEpCombine(EpRowType type, const void* y, int64_t N, int64_t H,
                            const int32_t* index, const float* w, int64_t M, int64_t J,
                            void* out, cudaStream_t stream) {
  if (M <= 0 || H <= 0) return cudaSuccess;
  switch (type) {
    case EpRowType::kF32: return CombineAs<float>(y, N, H, index, w, M, J, out, stream);
    case EpRowType::kBf16: return CombineAs<Bf16>(y, N, H, index, w, M, J, out, stream);
    case EpRowType::kF16: return CombineAs<F16>(y, N, H, index, w, M, J, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_moe
