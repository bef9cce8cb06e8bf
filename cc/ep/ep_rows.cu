// Row movement of the EP dispatch/combine on CUDA (contracts: ep_cpu.h): gather
// and weighted gather-sum (the FP8 pack is in ep_pack_fp8.cu). Both are
// bandwidth-bound: rows move in 16-byte vectors when sizes and addresses allow,
// and every thread issues several loads before it uses any (bytes in flight).
// Float math avoids FMA contraction (explicit __fmul_rn/__fadd_rn) and sums in
// the CPU's order, so results equal the CPU kernels bit for bit.
#include <algorithm>
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
// Blocks work on (rows, column slice) items, so few output rows (the sum over
// ranks at small T) still fill the GPU; each thread owns vectors of the slice
// and issues the row loads of several summed entries before their adds, which
// run in j order. Two kernels differ in how a block learns a row's entries:
//   direct (J <= 32, the EP shapes: J = top-k or R): each warp loads the entries
//     itself, one per lane, and hands them out with ballot/shuffle (no shared
//     memory, no block barrier). A group of 32 / J rows shares one such load,
//     and the next group's load is issued before this group's row loads, so a
//     group costs one memory latency instead of two.
//   staged (any J): warp 0 copies the valid entries to shared memory in rounds.

constexpr int kCombineThreads = 128;

constexpr int kDirectMaxJ = 32;        // entries of a group fit the lanes of one warp
constexpr int kDirectBatch = 8;        // summed entries whose loads are in flight together
constexpr int kDirectBlocksPerSm = 7;  // __launch_bounds__ guarantee (<= 72 registers)

// One block per (group of G rows, slice blockIdx.y) at a time, grid-stride over
// groups (gridDim.x is about one resident wave, so most blocks see several
// groups). Lane l of every warp holds entry l of the group: row l / J, column
// l % J; entries in lane order are in (row, j) order, the order of the sums.
template <typename T, int V>
__global__ void __launch_bounds__(kCombineThreads, kDirectBlocksPerSm)
    EpCombineDirectKernel(const T* __restrict__ y, int64_t N, int64_t H,
                          const int32_t* __restrict__ index, const float* __restrict__ w,
                          int64_t M, int J, int G, int64_t groups, int64_t slice_vecs,
                          T* __restrict__ out) {
  using Vec = Pack<T, V>;
  const int lane = threadIdx.x % 32;
  const int entries = G * J;                      // <= 32
  const int lane_row = J > 0 ? lane / J : 0;      // group row of this lane's entry
  const unsigned row_bits = J >= 32 ? ~0u : (1u << J) - 1u;  // one row's lanes, at lane 0
  const int64_t all_entries = M * J;
  const int64_t row_vecs = H / V;
  const int64_t col = blockIdx.y * slice_vecs + threadIdx.x;  // this thread's vector of a row
  const bool has = threadIdx.x < slice_vecs && col < row_vecs;
  const Vec* y_col = reinterpret_cast<const Vec*>(y) + col;   // row n's: y_col[n * row_vecs]
  Vec* out_col = reinterpret_cast<Vec*>(out) + col;

  // This lane's entry of group g (-1: none; rows past M are never read).
  int32_t next_n = -1;
  float next_w = 0.0f;
  const auto load_entry = [&](int64_t g) {
    const int64_t e = g * entries + lane;
    next_n = -1;
    if (lane < entries && e < all_entries) {
      next_n = index[e];
      next_w = w[e];
    }
  };
  const auto store = [&](int64_t m, const float* acc) {
    Vec o;
#pragma unroll
    for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>::Convert(acc[i]);
    out_col[m * row_vecs] = o;
  };

  int64_t g = blockIdx.x;
  if (g < groups) load_entry(g);
  for (; g < groups; g += gridDim.x) {
    const int32_t my_n = next_n;
    const float my_w = next_w;
    if (g + gridDim.x < groups) load_entry(g + gridDim.x);  // lands during this group's rows
    const int64_t m0 = g * G;
    unsigned mask = __ballot_sync(0xffffffffu, my_n >= 0 && my_n < N);

    // Rows without a valid entry (a third of the expert-side rows at R = 8):
    // zeros, no loads.
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0.0f;
    for (int r = 0; r < G && m0 + r < M; ++r)
      if (has && ((mask >> (r * J)) & row_bits) == 0) store(m0 + r, acc);

    // The valid entries, kDirectBatch at a time in lane order. A row's sum is
    // stored when the next row's first entry comes up (or at the end).
    int cur = -1;  // group row being summed
    while (mask != 0) {
      const unsigned batch = mask;  // its first kDirectBatch entries are this batch
      Vec p[kDirectBatch];
#pragma unroll
      for (int b = 0; b < kDirectBatch && mask != 0; ++b) {  // mask: warp-uniform
        const int32_t n = __shfl_sync(0xffffffffu, my_n, __ffs(mask) - 1);
        mask &= mask - 1u;
        if (has) p[b] = y_col[n * row_vecs];
      }
      unsigned walk = batch;  // the same entries again, now that the loads are out
#pragma unroll
      for (int b = 0; b < kDirectBatch && walk != mask; ++b) {
        const int src = __ffs(walk) - 1;
        walk &= walk - 1u;
        const float wj = __shfl_sync(0xffffffffu, my_w, src);
        const int row = __shfl_sync(0xffffffffu, lane_row, src);
        if (row != cur) {
          if (cur >= 0 && has) store(m0 + cur, acc);
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] = 0.0f;
          cur = row;
        }
        if (!has) continue;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(wj, Widen(p[b].v[i])));
      }
    }
    if (cur >= 0 && has) store(m0 + cur, acc);
  }
}

// Staged path (J > 32): one block per (output row, column slice) item. A block
// first stages the row's valid (index, weight) entries in shared memory, in j
// order; each thread then owns kStagedCols vectors of the slice and sums the
// entries kStagedBatch at a time.
constexpr int kStagedCols = 2;      // vectors per thread
constexpr int kStagedBatch = 4;     // summed rows whose loads are in flight together
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
    EpCombineStagedKernel(const T* __restrict__ y, int64_t N, int64_t H,
                          const int32_t* __restrict__ index, const float* __restrict__ w,
                          int64_t M, int64_t J, int64_t slices, int64_t slice_vecs,
                          T* __restrict__ out) {
  __shared__ int32_t s_row[kCombineStage];
  __shared__ float s_w[kCombineStage];
  __shared__ int s_count;
  using Vec = Pack<T, V>;
  const int64_t vecs = H / V;
  for (int64_t item = blockIdx.x; item < M * slices; item += gridDim.x) {
    const int64_t m = item / slices;
    const int64_t start = (item % slices) * slice_vecs;
    const int64_t end = start + slice_vecs < vecs ? start + slice_vecs : vecs;
    int64_t col[kStagedCols];
    bool has[kStagedCols];
#pragma unroll
    for (int u = 0; u < kStagedCols; ++u) {
      col[u] = start + threadIdx.x + u * kCombineThreads;
      has[u] = col[u] < end;
    }
    float acc[kStagedCols][V];
#pragma unroll
    for (int u = 0; u < kStagedCols; ++u)
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
      for (int b0 = 0; b0 < count; b0 += kStagedBatch) {
        Vec p[kStagedBatch][kStagedCols];
#pragma unroll
        for (int b = 0; b < kStagedBatch; ++b) {
          if (b0 + b >= count) break;
          const Vec* row = reinterpret_cast<const Vec*>(y + static_cast<int64_t>(s_row[b0 + b]) * H);
#pragma unroll
          for (int u = 0; u < kStagedCols; ++u)
            if (has[u]) p[b][u] = row[col[u]];
        }
#pragma unroll
        for (int b = 0; b < kStagedBatch; ++b) {
          if (b0 + b >= count) break;
          const float wj = s_w[b0 + b];
#pragma unroll
          for (int u = 0; u < kStagedCols; ++u) {
            if (!has[u]) continue;
#pragma unroll
            for (int i = 0; i < V; ++i)
              acc[u][i] = __fadd_rn(acc[u][i], __fmul_rn(wj, Widen(p[b][u].v[i])));
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kStagedCols; ++u) {
      if (!has[u]) continue;
      Vec o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>::Convert(acc[u][i]);
      reinterpret_cast<Vec*>(out + m * H)[col[u]] = o;
    }
  }
}

// Direct path launch: slices of at most one vector per thread; grid = (blocks
// along the rows, slices) with about one resident wave in all. Rows per group:
// as many as fit a warp's lanes while the groups still give every resident
// block work (one row each when M is small, e.g. the sum over 128 tokens).
template <typename T, int V>
cudaError_t CombineDirect(const T* y, int64_t N, int64_t H, const int32_t* index, const float* w,
                          int64_t M, int64_t J, int64_t slices, T* out, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t vecs = H / V;
  const int64_t slice_vecs = (vecs + slices - 1) / slices;
  const int64_t row_blocks = std::max<int64_t>(1, int64_t{sms} * kDirectBlocksPerSm / slices);
  const int64_t max_g = J == 0 ? kDirectMaxJ : kDirectMaxJ / J;
  const int64_t G = std::min(max_g, std::max<int64_t>(1, M / row_blocks));
  const int64_t groups = (M + G - 1) / G;
  const dim3 grid(static_cast<unsigned>(std::min(groups, row_blocks)),
                  static_cast<unsigned>(slices));
  EpCombineDirectKernel<T, V><<<grid, kCombineThreads, 0, stream>>>(
      y, N, H, index, w, M, static_cast<int>(J), static_cast<int>(G), groups, slice_vecs, out);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t CombineWith(const T* y, int64_t N, int64_t H, const int32_t* index, const float* w,
                        int64_t M, int64_t J, T* out, cudaStream_t stream) {
  const int64_t vecs = H / V;
  constexpr int64_t kMaxGridY = 65535;
  const int64_t direct_slices = (vecs + kCombineThreads - 1) / kCombineThreads;
  if (J <= kDirectMaxJ && direct_slices <= kMaxGridY)
    return CombineDirect<T, V>(y, N, H, index, w, M, J, direct_slices, out, stream);
  // Staged: slices as even as possible, each at most one pass of the block.
  constexpr int64_t kPass = kCombineThreads * kStagedCols;
  const int64_t slices = (vecs + kPass - 1) / kPass;
  const int64_t slice_vecs = (vecs + slices - 1) / slices;
  EpCombineStagedKernel<T, V><<<Blocks(M * slices), kCombineThreads, 0, stream>>>(
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
