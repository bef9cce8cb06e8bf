// CUDA kernels of moe_align_block_size (shared/spec/align.md).
//
// Deterministic by construction: no atomics decide where a route goes. Routes are
// ranked inside a tile by a stable block radix sort on their expert lane, and
// tiles are visited in route order, so each expert's routes land in ascending
// route index, as in the CPU kernel (bit-identical outputs).
//
// Two paths:
// - single block (numel <= kSmallTile, L <= kSmallMaxExperts): one launch; sort
//   the one tile, take counts from the sorted runs, scan the experts, then write
//   every output slot once (a gather from the sorted tile: coalesced).
// - multi block: (1) per-CTA expert histograms, (2) one CTA scans them into
//   per-CTA offsets and expert starts, (3) every CTA re-sorts its tiles and
//   scatters its routes to start + CTA offset + rank, and fills its share of the
//   padding slots and block owners. No global atomics on expert counters.
#include <cub/block/block_discontinuity.cuh>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "align/align_cuda.h"
#include "align/align_plan.h"

namespace jax_moe {
namespace {

using namespace align_plan;

// Own functors: CCCL 3 removed cub::Max / cub::Inequality.
struct Max {
  __device__ __forceinline__ int32_t operator()(int32_t a, int32_t b) const { return a > b ? a : b; }
};
struct NotEqual {
  __device__ __forceinline__ bool operator()(uint32_t a, uint32_t b) const { return a != b; }
};

// Number of bits that hold lanes 0..L (L = dropped).
__host__ __device__ inline int LaneBits(int32_t num_local) {
  int bits = 1;
  while ((int64_t{1} << bits) <= num_local) ++bits;
  return bits;
}

// One tile of routes sorted by lane, stably. Thread t ends up with sorted
// positions t*kItems + j: lane, route index, rank inside its lane's run in this
// tile, and whether it is the run's last item.
template <int kT, int kI>
struct TileSorter {
  using Sort = cub::BlockRadixSort<uint32_t, kT, kI, int32_t>;
  using Disc = cub::BlockDiscontinuity<uint32_t, kT>;
  using Scan = cub::BlockScan<int32_t, kT>;
  union Storage {
    typename Sort::TempStorage sort;
    typename Disc::TempStorage disc;
    typename Scan::TempStorage scan;
  };

  uint32_t lane[kI];
  int32_t route[kI];
  int32_t rank[kI];
  int tail[kI];

  __device__ void Run(Storage& s, const void* ids, IdKind kind, int64_t begin, int64_t end,
                      int64_t num_experts, const int32_t* expert_map, int32_t num_local,
                      int lane_bits) {
    const int t = threadIdx.x;
#pragma unroll
    for (int j = 0; j < kI; ++j) {
      const int64_t i = begin + static_cast<int64_t>(t) * kI + j;
      lane[j] = i < end ? static_cast<uint32_t>(AlignLocalExpertAt(ids, kind, i, num_experts,
                                                                   expert_map, num_local))
                        : static_cast<uint32_t>(num_local);
      route[j] = static_cast<int32_t>(i);
    }
    Sort(s.sort).Sort(lane, route, 0, lane_bits);
    __syncthreads();
    int head[kI];
    Disc(s.disc).FlagHeadsAndTails(head, tail, lane, NotEqual());
    __syncthreads();
    int32_t head_pos[kI];
#pragma unroll
    for (int j = 0; j < kI; ++j) head_pos[j] = head[j] ? t * kI + j : 0;
    Scan(s.scan).InclusiveScan(head_pos, head_pos, Max());
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kI; ++j) rank[j] = t * kI + j - head_pos[j];
  }
};

// Last e in [0, n) with starts[e] <= s (starts non-decreasing, starts[0] = 0).
__device__ __forceinline__ int32_t OwnerOf(const int32_t* starts, int32_t n, int64_t s) {
  int32_t lo = 0, hi = n;  // invariant: starts[lo] <= s, answer in [lo, hi)
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) >> 1;
    if (starts[mid] <= s) lo = mid; else hi = mid;
  }
  return lo;
}

// Block-wide exclusive scan over experts of (count, padded count), packed in one
// 64-bit sum (both totals < 2^31). Writes ustart (may be null) and pstart
// [0..L]; entry L holds the totals.
template <int kT>
__device__ void ScanExperts(const int32_t* counts, int32_t num_local, int64_t block_size,
                            int32_t* ustart, int32_t* pstart,
                            typename cub::BlockScan<long long, kT>::TempStorage& tmp) {
  using Scan = cub::BlockScan<long long, kT>;
  long long carry = 0;
  for (int32_t base = 0; base < num_local; base += kT) {
    const int32_t e = base + threadIdx.x;
    long long v = 0;
    if (e < num_local) {
      const long long c = counts[e];
      v = c | (((c + block_size - 1) / block_size * block_size) << 32);
    }
    long long excl, aggregate;
    Scan(tmp).ExclusiveSum(v, excl, aggregate);
    __syncthreads();
    excl += carry;
    if (e < num_local) {
      if (ustart) ustart[e] = static_cast<int32_t>(excl & 0xffffffffll);
      pstart[e] = static_cast<int32_t>(excl >> 32);
    }
    carry += aggregate;
  }
  if (threadIdx.x == 0) {
    if (ustart) ustart[num_local] = static_cast<int32_t>(carry & 0xffffffffll);
    pstart[num_local] = static_cast<int32_t>(carry >> 32);
  }
}

// Writes block owners (-1 past the total) for blocks [b0, b1), and the sentinel
// into padding slots of [s0, s1) (route slots are someone else's).
__device__ void FillPaddingAndOwners(const int32_t* pstart, const int32_t* counts,
                                     int32_t num_local, const AlignProblem& p,
                                     int64_t s0, int64_t s1, int64_t b0, int64_t b1,
                                     int32_t* sorted, int32_t* expert_ids, int stride) {
  const int64_t total = pstart[num_local];
  for (int64_t s = s0 + threadIdx.x; s < s1; s += stride) {
    if (s >= total) { sorted[s] = static_cast<int32_t>(p.numel); continue; }
    const int32_t e = OwnerOf(pstart, num_local, s);
    if (s - pstart[e] >= counts[e]) sorted[s] = static_cast<int32_t>(p.numel);
  }
  for (int64_t b = b0 + threadIdx.x; b < b1; b += stride) {
    const int64_t s = b * p.block_size;
    expert_ids[b] = s < total ? OwnerOf(pstart, num_local, s) : -1;
  }
}

struct ProblemPtrs {
  const void* ids;
  const int32_t* expert_map;
  int32_t* sorted;
  int32_t* expert_ids;
  int32_t* post_pad;
  int32_t* workspace;
};

__device__ ProblemPtrs PtrsOf(const AlignCudaArgs& a) {
  const int64_t b = blockIdx.y;
  const int64_t id_bytes = int64_t{1} << (static_cast<int>(a.id_kind) & 3);
  ProblemPtrs q;
  q.ids = static_cast<const char*>(a.ids) + b * a.problem.numel * id_bytes;
  q.expert_map = a.expert_map ? a.expert_map + b * a.map_stride : nullptr;
  q.sorted = a.sorted_token_ids + b * a.problem.padded_len;
  q.expert_ids = a.expert_ids + b * a.problem.num_blocks;
  q.post_pad = a.num_tokens_post_pad + b;
  q.workspace = a.workspace + b * a.workspace_stride;
  return q;
}

// ---- single-block path ------------------------------------------------------

template <int kT, int kI>
struct SmallStorage {
  union {
    typename TileSorter<kT, kI>::Storage tile;
    typename cub::BlockScan<long long, kT>::TempStorage expert_scan;
  };
  int32_t route_of[kT * kI];  // sorted position -> route index
};

template <int kT, int kI>
size_t SmallSharedBytes(int32_t num_local) {
  return sizeof(SmallStorage<kT, kI>) + 3 * (static_cast<size_t>(num_local) + 1) * sizeof(int32_t);
}

template <int kT, int kI>
__global__ void __launch_bounds__(kT) AlignSingleBlockKernel(AlignCudaArgs a, int lane_bits) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto& s = *reinterpret_cast<SmallStorage<kT, kI>*>(smem);
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  int32_t* counts = reinterpret_cast<int32_t*>(smem + sizeof(SmallStorage<kT, kI>));
  int32_t* ustart = counts + (L + 1);
  int32_t* pstart = ustart + (L + 1);
  const ProblemPtrs q = PtrsOf(a);

  for (int32_t e = threadIdx.x; e <= L; e += kT) counts[e] = 0;
  TileSorter<kT, kI> tile;
  tile.Run(s.tile, q.ids, a.id_kind, 0, p.numel, p.num_experts, q.expert_map, L, lane_bits);
#pragma unroll
  for (int j = 0; j < kI; ++j) {
    s.route_of[threadIdx.x * kI + j] = tile.route[j];
    if (tile.tail[j] && tile.lane[j] < static_cast<uint32_t>(L)) counts[tile.lane[j]] = tile.rank[j] + 1;
  }
  __syncthreads();
  ScanExperts<kT>(counts, L, p.block_size, ustart, pstart, s.expert_scan);
  __syncthreads();
  const int64_t total = pstart[L];
  if (threadIdx.x == 0) *q.post_pad = static_cast<int32_t>(total);
  for (int64_t slot = threadIdx.x; slot < p.padded_len; slot += kT) {
    int32_t v = static_cast<int32_t>(p.numel);
    if (slot < total) {
      const int32_t e = OwnerOf(pstart, L, slot);
      const int64_t r = slot - pstart[e];
      if (r < counts[e]) v = s.route_of[ustart[e] + r];
    }
    q.sorted[slot] = v;
  }
  for (int64_t b = threadIdx.x; b < p.num_blocks; b += kT) {
    const int64_t slot = b * p.block_size;
    q.expert_ids[b] = slot < total ? OwnerOf(pstart, L, slot) : -1;
  }
}

// ---- multi-block path -------------------------------------------------------

struct Workspace {
  int32_t* offsets;  // [G, L]: histogram, then exclusive per-expert CTA offsets
  int32_t* pstart;   // [L + 1]
  int32_t* counts;   // [L]
};

__device__ Workspace WorkspaceOf(int32_t* w, int64_t ctas, int32_t L) {
  return {w, w + ctas * L, w + ctas * L + (L + 1)};
}

// (1) Histogram of the CTA's chunk; warp-aggregated shared atomics (their order
// cannot change a count).
__global__ void __launch_bounds__(kThreads) AlignHistogramKernel(AlignCudaArgs a, int64_t ctas,
                                                                 int use_shared) {
  extern __shared__ int32_t hist_smem[];
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  int32_t* row = w.offsets + blockIdx.x * static_cast<int64_t>(L);
  int32_t* hist = use_shared ? hist_smem : row;
  for (int32_t e = threadIdx.x; e < L; e += kThreads) hist[e] = 0;
  __syncthreads();
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = min(begin + chunk, p.numel);
  // Uniform trip count so whole warps take part in __match_any_sync.
  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const int32_t lane = i < end ? AlignLocalExpertAt(q.ids, a.id_kind, i, p.num_experts,
                                                      q.expert_map, L)
                                 : L;
    const unsigned peers = __match_any_sync(0xffffffffu, lane);
    if (lane < L && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[lane], __popc(peers));
  }
  __syncthreads();
  if (use_shared)
    for (int32_t e = threadIdx.x; e < L; e += kThreads) row[e] = hist[e];
}

// (2) One CTA: per-expert exclusive scan over CTAs (in place), expert totals,
// expert starts, num_tokens_post_pad.
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kScanThreads) AlignScanKernel(AlignCudaArgs a, int64_t ctas) {
  __shared__ int32_t partial[kScanThreads];
  __shared__ typename cub::BlockScan<long long, kScanThreads>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);

  // Experts in chunks of `per`; each expert's CTA range split into `segs` pieces.
  int64_t segs64 = kScanThreads / (L > 0 ? L : 1);
  if (segs64 > ctas) segs64 = ctas;
  const int32_t segs = segs64 < 1 ? 1 : static_cast<int32_t>(segs64);
  const int32_t per = kScanThreads / segs;
  for (int32_t e0 = 0; e0 < L; e0 += per) {
    const int32_t le = threadIdx.x % per, seg = threadIdx.x / per;
    const int32_t e = e0 + le;
    const bool active = e < L && seg < segs;
    const int64_t g0 = ctas * seg / segs, g1 = ctas * (seg + 1) / segs;
    int32_t sum = 0;
    if (active)
      for (int64_t g = g0; g < g1; ++g) sum += w.offsets[g * L + e];
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (active) {
      int32_t run = 0, total = 0;
      for (int32_t k = 0; k < segs; ++k) {
        const int32_t v = partial[k * per + le];
        if (k < seg) run += v;
        total += v;
      }
      for (int64_t g = g0; g < g1; ++g) {
        const int32_t v = w.offsets[g * L + e];
        w.offsets[g * L + e] = run;
        run += v;
      }
      if (seg == 0) w.counts[e] = total;
    }
    __syncthreads();
  }
  // Route starts (ustart) are not needed here: the scatter adds CTA offsets and
  // ranks to the padded expert starts.
  ScanExperts<kScanThreads>(w.counts, L, p.block_size, nullptr, w.pstart, scan_tmp);
  __syncthreads();
  if (threadIdx.x == 0) *q.post_pad = w.pstart[L];
}

// (3) Scatter the CTA's routes, tile by tile in route order, then fill its share
// of padding slots and block owners.
__global__ void __launch_bounds__(kThreads) AlignScatterKernel(AlignCudaArgs a, int64_t ctas,
                                                               int lane_bits) {
  __shared__ typename TileSorter<kThreads, kItems>::Storage storage;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  int32_t* offsets = w.offsets + blockIdx.x * static_cast<int64_t>(L);  // this CTA's row
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = min(begin + chunk, p.numel);
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    TileSorter<kThreads, kItems> tile;
    tile.Run(storage, q.ids, a.id_kind, t0, min(t0 + kTile, end), p.num_experts,
             q.expert_map, L, lane_bits);
    int32_t run_end[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const uint32_t e = tile.lane[j];
      run_end[j] = 0;
      if (e < static_cast<uint32_t>(L)) {
        const int32_t base = w.pstart[e] + offsets[e];
        q.sorted[base + tile.rank[j]] = tile.route[j];
        run_end[j] = offsets[e] + tile.rank[j] + 1;
      }
    }
    __syncthreads();  // every read of offsets[] for this tile is done
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      if (tile.tail[j] && tile.lane[j] < static_cast<uint32_t>(L)) offsets[tile.lane[j]] = run_end[j];
    __syncthreads();  // global writes of this CTA are visible to it from here on
  }
  const int64_t s0 = p.padded_len * blockIdx.x / ctas, s1 = p.padded_len * (blockIdx.x + 1) / ctas;
  const int64_t b0 = p.num_blocks * blockIdx.x / ctas, b1 = p.num_blocks * (blockIdx.x + 1) / ctas;
  FillPaddingAndOwners(w.pstart, w.counts, L, p, s0, s1, b0, b1, q.sorted, q.expert_ids, kThreads);
}

constexpr size_t kDefaultSharedLimit = 48 * 1024;

template <int kT, int kI>
cudaError_t LaunchSingleBlock(const AlignCudaArgs& a, cudaStream_t stream) {
  const size_t bytes = SmallSharedBytes<kT, kI>(a.problem.num_local);
  auto kernel = AlignSingleBlockKernel<kT, kI>;
  if (bytes > kDefaultSharedLimit) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(1, static_cast<unsigned>(a.batch)), kT, bytes, stream>>>(
      a, LaneBits(a.problem.num_local));
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchAlignCuda(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  if (a.batch == 0) return cudaSuccess;
  const int32_t L = p.num_local;
  if (L <= kSmallMaxExperts && p.numel <= kTinyTile) return LaunchSingleBlock<kTinyThreads, kTinyItems>(a, stream);
  if (L <= kSmallMaxExperts && p.numel <= kSmallTile) return LaunchSingleBlock<kSmallThreads, kSmallItems>(a, stream);

  const int64_t ctas = NumCtas(p.numel);
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(a.batch));
  const size_t hist_bytes = static_cast<size_t>(L) * sizeof(int32_t);
  const int use_shared = hist_bytes <= kDefaultSharedLimit;
  AlignHistogramKernel<<<grid, kThreads, use_shared ? hist_bytes : 0, stream>>>(a, ctas, use_shared);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  AlignScanKernel<<<dim3(1, static_cast<unsigned>(a.batch)), kScanThreads, 0, stream>>>(a, ctas);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  AlignScatterKernel<<<grid, kThreads, 0, stream>>>(a, ctas, LaneBits(L));
  return cudaGetLastError();
}

}  // namespace jax_moe
