// Row movement of the EP dispatch/combine on CUDA (contracts: ep_cpu.h): gather
// and weighted gather-sum (the FP8 pack is in ep_pack_fp8.cu). Both are
// bandwidth-bound: rows move in 16-byte vectors when sizes and addresses allow,
// and every thread issues several loads before it uses any (bytes in flight).
// Float math avoids FMA contraction (explicit __fmul_rn/__fadd_rn) and sums in
// the CPU's order, so results equal the CPU kernels bit for bit.
#include <cstdint>

#include <cuda_fp16.h>

#include "ep/ep_cuda.h"
#include "ep/ep_float.h"
#include "ep/ep_vec.cuh"

namespace jax_moe {
namespace {

using ep_vec::AlignedTo;
using ep_vec::Blocks;
using ep_vec::Pack;

// Widening for the combine's products. float16 goes through the hardware
// conversion: exact, as F16ToF32 is, and far lighter in registers (a batch
// widens 64 values); the two differ at most in a NaN's payload, which
// __fmul_rn replaces by the canonical NaN anyway.
__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(Bf16 v) { return ToFloat(v); }
__device__ __forceinline__ float Widen(F16 v) { return __half2float(__ushort_as_half(v.bits)); }

// --- gather: out[n] = in[rows[n]] or zeros ------------------------------------------

constexpr int kGatherThreads = 256;
constexpr int kGatherUnroll = 4;  // words per thread in flight (a 14 KB row in one pass)

// One block per output row (grid-stride). Most rows of normal mode's dropless
// buffer are padding: those take a memset-like pass of plain stores.
template <typename Word>
__global__ void __launch_bounds__(kGatherThreads)
    EpGatherKernel(const Word* __restrict__ in, int64_t num_in, int64_t row_words,
                   const int32_t* __restrict__ rows, int64_t num_out, Word* __restrict__ out) {
  for (int64_t n = blockIdx.x; n < num_out; n += gridDim.x) {
    const int32_t r = rows[n];
    Word* dst = out + n * row_words;
    if (r < 0 || r >= num_in) {
      for (int64_t c = threadIdx.x; c < row_words; c += kGatherThreads) dst[c] = Word{};
      continue;
    }
    const Word* src = in + static_cast<int64_t>(r) * row_words;
    for (int64_t base = threadIdx.x; base < row_words; base += kGatherThreads * kGatherUnroll) {
      Word w[kGatherUnroll];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u) {
        const int64_t c = base + u * kGatherThreads;
        if (c < row_words) w[u] = src[c];
      }
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u) {
        const int64_t c = base + u * kGatherThreads;
        if (c < row_words) dst[c] = w[u];
      }
    }
  }
}

template <typename Word>
cudaError_t GatherAs(const void* in, int64_t num_in, int64_t row_bytes, const int32_t* rows,
                     int64_t num_out, void* out, cudaStream_t stream) {
  EpGatherKernel<Word><<<Blocks(num_out), kGatherThreads, 0, stream>>>(
      static_cast<const Word*>(in), num_in, row_bytes / static_cast<int64_t>(sizeof(Word)),
      rows, num_out, static_cast<Word*>(out));
  return cudaGetLastError();
}

// --- combine: out[m] = sum_j w * y[index] in float32, j ascending -----------------------
//
// Blocks are (output row, column slice) items, so few output rows (the sum over
// ranks at small T) still fill the GPU. A block first stages the row's valid
// (index, weight) entries in shared memory, in j order; each thread then owns
// kCombineCols vectors of the slice and sums the entries kCombineBatch at a
// time: all loads of a batch are issued before its adds, which run in j order.

constexpr int kCombineThreads = 128;
constexpr int kCombineCols = 2;     // vectors per thread
constexpr int kCombineBatch = 4;    // summed rows whose loads are in flight together
constexpr int kCombineStage = 256;  // entries staged per round (any J works, in rounds)

// Warp 0 copies the valid entries of index[j0, j0 + kCombineStage) (and their
// weights) to shared memory, keeping their order; returns the count to lane 0.
__device__ int StageEntries(const int32_t* __restrict__ index, const float* __restrict__ w,
                            int64_t N, int64_t j0, int64_t J, int32_t* s_row, float* s_w) {
  const int lane = threadIdx.x;  // caller: warp 0 only
  int count = 0;
  for (int jj = 0; jj < kCombineStage && j0 + jj < J; jj += 32) {
    const int64_t j = j0 + jj + lane;
    const int32_t n = j < J ? index[j] : -1;
    const bool ok = n >= 0 && n < N;
    const unsigned mask = __ballot_sync(0xffffffffu, ok);
    if (ok) {
      const int pos = count + __popc(mask & ((1u << lane) - 1u));
      s_row[pos] = n;
      s_w[pos] = w[j];
    }
    count += __popc(mask);
  }
  return count;
}

template <typename T, int V>
__global__ void __launch_bounds__(kCombineThreads)
    EpCombineKernel(const T* __restrict__ y, int64_t N, int64_t H,
                    const int32_t* __restrict__ index, const float* __restrict__ w, int64_t M,
                    int64_t J, int64_t slices, int64_t slice_vecs, T* __restrict__ out) {
  __shared__ int32_t s_row[kCombineStage];
  __shared__ float s_w[kCombineStage];
  __shared__ int s_count;
  using Vec = Pack<T, V>;
  const int64_t vecs = H / V;
  for (int64_t item = blockIdx.x; item < M * slices; item += gridDim.x) {
    const int64_t m = item / slices;
    const int64_t start = (item % slices) * slice_vecs;
    const int64_t end = start + slice_vecs < vecs ? start + slice_vecs : vecs;
    int64_t col[kCombineCols];
    bool has[kCombineCols];
#pragma unroll
    for (int u = 0; u < kCombineCols; ++u) {
      col[u] = start + threadIdx.x + u * kCombineThreads;
      has[u] = col[u] < end;
    }
    float acc[kCombineCols][V];
#pragma unroll
    for (int u = 0; u < kCombineCols; ++u)
#pragma unroll
      for (int i = 0; i < V; ++i) acc[u][i] = 0.0f;

    for (int64_t j0 = 0; j0 < J; j0 += kCombineStage) {
      __syncthreads();  // the previous round's (or item's) readers are done
      if (threadIdx.x < 32) {
        const int count = StageEntries(index + m * J, w + m * J, N, j0, J, s_row, s_w);
        if (threadIdx.x == 0) s_count = count;
      }
      __syncthreads();
      const int count = s_count;
      for (int b0 = 0; b0 < count; b0 += kCombineBatch) {
        Vec p[kCombineBatch][kCombineCols];
#pragma unroll
        for (int b = 0; b < kCombineBatch; ++b) {
          if (b0 + b >= count) break;
          const Vec* row = reinterpret_cast<const Vec*>(y + static_cast<int64_t>(s_row[b0 + b]) * H);
#pragma unroll
          for (int u = 0; u < kCombineCols; ++u)
            if (has[u]) p[b][u] = row[col[u]];
        }
#pragma unroll
        for (int b = 0; b < kCombineBatch; ++b) {
          if (b0 + b >= count) break;
          const float wj = s_w[b0 + b];
#pragma unroll
          for (int u = 0; u < kCombineCols; ++u) {
            if (!has[u]) continue;
#pragma unroll
            for (int i = 0; i < V; ++i)
              acc[u][i] = __fadd_rn(acc[u][i], __fmul_rn(wj, Widen(p[b][u].v[i])));
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kCombineCols; ++u) {
      if (!has[u]) continue;
      Vec o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>::Convert(acc[u][i]);
      reinterpret_cast<Vec*>(out + m * H)[col[u]] = o;
    }
  }
}

template <typename T, int V>
cudaError_t CombineWith(const T* y, int64_t N, int64_t H, const int32_t* index, const float* w,
                        int64_t M, int64_t J, T* out, cudaStream_t stream) {
  // Slices as even as possible, each at most one pass of the block.
  const int64_t vecs = H / V;
  constexpr int64_t kPass = kCombineThreads * kCombineCols;
  const int64_t slices = (vecs + kPass - 1) / kPass;
  const int64_t slice_vecs = (vecs + slices - 1) / slices;
  EpCombineKernel<T, V><<<Blocks(M * slices), kCombineThreads, 0, stream>>>(
      y, N, H, index, w, M, J, slices, slice_vecs, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t CombineAs(const void* y, int64_t N, int64_t H, const int32_t* index, const float* w,
                      int64_t M, int64_t J, void* out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* yt = static_cast<const T*>(y);
  T* ot = static_cast<T*>(out);
  if (H % kVec == 0 && AlignedTo(y, 16) && AlignedTo(out, 16))
    return CombineWith<T, kVec>(yt, N, H, index, w, M, J, ot, stream);
  return CombineWith<T, 1>(yt, N, H, index, w, M, J, ot, stream);
}

}  // namespace

cudaError_t LaunchEpGather(const void* in, int64_t num_in, int64_t row_bytes,
                           const int32_t* rows, int64_t num_out, void* out, cudaStream_t stream) {
  if (num_out <= 0 || row_bytes <= 0) return cudaSuccess;
  if (row_bytes % 16 == 0 && AlignedTo(in, 16) && AlignedTo(out, 16))
    return GatherAs<uint4>(in, num_in, row_bytes, rows, num_out, out, stream);
  if (row_bytes % 4 == 0 && AlignedTo(in, 4) && AlignedTo(out, 4))
    return GatherAs<uint32_t>(in, num_in, row_bytes, rows, num_out, out, stream);
  return GatherAs<uint8_t>(in, num_in, row_bytes, rows, num_out, out, stream);
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
