// CUDA kernels of moe_align_block_size (shared/spec/align.md).
//
// Deterministic by construction: no atomics decide where a route goes. A route's
// place is its expert's start plus the number of earlier routes of that expert,
// computed in route order, so each expert's routes land in ascending route
// index, as in the CPU kernel (bit-identical outputs). Two ways to rank:
// - warp ranking (L <= 1024): each warp walks a contiguous range 32 routes at a
//   time; lanes of one expert find each other with __match_any_sync; per-warp
//   counters in shared memory carry the rank across steps and warps. No sort.
// - tile sort (any L): a stable block radix sort of a tile by expert lane; a
//   route's rank is its distance to the start of its run.
//
// Two paths:
// - small (numel <= kSmallTile): one launch. CTA 0 ranks and scatters the
//   routes; the other CTAs recompute the tiny histogram and write the padding
//   (P can be far larger than numel: up to L * (bs - 1) padding slots).
// - multi block: (1) per-CTA expert histograms, (2) one CTA scans them into
//   per-CTA offsets and expert starts, (3) CTAs re-rank their routes and scatter
//   them to start + CTA offset + rank, while extra CTAs fill padding slots and
//   block owners. No global atomics on expert counters.
//
// JAX_MOE_ALIGN_RANKING=sort forces the tile sort everywhere (A/B tests).
#include <cub/block/block_discontinuity.cuh>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdlib>
#include <cstring>

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

// Fill worker `worker` of `workers` (CTAs of blockDim threads): the padding
// slots after each expert's routes and the block owners, a warp per expert
// (coalesced), then the tail past the total. Route slots are the scatter's.
__device__ void FillPadding(int64_t worker, int64_t workers, const int32_t* pstart,
                            const int32_t* counts, int32_t num_local, const AlignProblem& p,
                            int32_t* sorted, int32_t* expert_ids) {
  const int32_t sentinel = static_cast<int32_t>(p.numel);
  const int64_t warps = blockDim.x / 32, lane = threadIdx.x & 31;
  const int64_t total_warps = workers * warps;
  for (int64_t e = worker * warps + threadIdx.x / 32; e < num_local; e += total_warps) {
    const int64_t begin = pstart[e], end = pstart[e + 1];
    for (int64_t s = begin + counts[e] + lane; s < end; s += 32) sorted[s] = sentinel;
    for (int64_t b = begin / p.block_size + lane; b < end / p.block_size; b += 32)
      expert_ids[b] = static_cast<int32_t>(e);
  }
  const int64_t total = pstart[num_local];
  const int64_t stride = workers * blockDim.x, first = worker * blockDim.x + threadIdx.x;
  for (int64_t s = total + first; s < p.padded_len; s += stride) sorted[s] = sentinel;
  for (int64_t b = total / p.block_size + first; b < p.num_blocks; b += stride) expert_ids[b] = -1;
}

// Fill workers for P output slots.
inline int64_t FillCtas(int64_t padded_len) {
  const int64_t f = (padded_len + 8191) / 8192;
  return f < 1 ? 1 : (f > 128 ? 128 : f);
}

// Warp-aggregated shared-memory histogram of routes [begin, end) by lane (the
// order of the atomics cannot change a count). Whole warps iterate together so
// that __match_any_sync sees every lane.
__device__ void Histogram(const void* ids, IdKind kind, int64_t begin, int64_t end,
                          int64_t num_experts, const int32_t* expert_map, int32_t num_local,
                          int32_t* hist) {
  for (int64_t base = begin; base < end; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const int32_t lane = i < end ? AlignLocalExpertAt(ids, kind, i, num_experts, expert_map,
                                                      num_local)
                                 : num_local;
    const unsigned peers = __match_any_sync(0xffffffffu, lane);
    if (lane < num_local && (threadIdx.x & 31) == __ffs(peers) - 1)
      atomicAdd(&hist[lane], __popc(peers));
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

// ---- small path: one launch ----------------------------------------------
// CTA 0 sorts the (single) tile and scatters the routes; CTAs 1.. fill the
// padding. Every CTA recomputes the tiny histogram and expert scan itself, so
// no CTA waits for another.

template <int kT, int kI>
union SmallStorage {
  typename TileSorter<kT, kI>::Storage tile;
  typename cub::BlockScan<long long, kT>::TempStorage expert_scan;
};

template <int kT, int kI>
size_t SmallSharedBytes(int32_t num_local) {
  return sizeof(SmallStorage<kT, kI>) + 2 * (static_cast<size_t>(num_local) + 1) * sizeof(int32_t);
}

template <int kT, int kI>
__global__ void __launch_bounds__(kT) AlignSmallKernel(AlignCudaArgs a, int lane_bits) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto& s = *reinterpret_cast<SmallStorage<kT, kI>*>(smem);
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  int32_t* counts = reinterpret_cast<int32_t*>(smem + sizeof(SmallStorage<kT, kI>));
  int32_t* pstart = counts + (L + 1);
  const ProblemPtrs q = PtrsOf(a);

  for (int32_t e = threadIdx.x; e <= L; e += kT) counts[e] = 0;
  __syncthreads();
  Histogram(q.ids, a.id_kind, 0, p.numel, p.num_experts, q.expert_map, L, counts);
  __syncthreads();
  ScanExperts<kT>(counts, L, p.block_size, nullptr, pstart, s.expert_scan);
  __syncthreads();
  if (blockIdx.x > 0) {
    FillPadding(blockIdx.x - 1, gridDim.x - 1, pstart, counts, L, p, q.sorted, q.expert_ids);
    return;
  }
  if (threadIdx.x == 0) *q.post_pad = pstart[L];
  TileSorter<kT, kI> tile;
  tile.Run(s.tile, q.ids, a.id_kind, 0, p.numel, p.num_experts, q.expert_map, L, lane_bits);
#pragma unroll
  for (int j = 0; j < kI; ++j)
    if (tile.lane[j] < static_cast<uint32_t>(L)) q.sorted[pstart[tile.lane[j]] + tile.rank[j]] = tile.route[j];
}

// ---- warp-ranked scatter (no sort) ------------------------------------------
// The CTA's routes [begin, end) are split into one contiguous range per warp,
// walked 32 at a time. Lanes holding the same expert find each other with
// __match_any_sync; a route's rank is the number of its peers in lower lanes,
// plus what earlier steps of its warp and earlier warps placed. Ranges and
// steps follow route order, so the result is stable. whist is [kW][L] shared.

__device__ __forceinline__ unsigned LanesBelow() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

template <int kW>
__device__ __forceinline__ void WarpRange(int64_t begin, int64_t end, int64_t* lo, int64_t* hi) {
  const int64_t per = (end - begin + kW - 1) / kW;
  const int64_t w = threadIdx.x / 32;
  *lo = begin + w * per;
  *hi = min(*lo + per, end);
}

// Phase 1: per-warp counts, then exclusive prefixes over warps (in place) and
// the CTA's totals per expert in `counts` (shared, L entries).
template <int kW>
__device__ void WarpHistogram(const void* ids, IdKind kind, int64_t begin, int64_t end,
                              int64_t num_experts, const int32_t* expert_map, int32_t L,
                              int32_t* whist, int32_t* counts) {
  for (int64_t k = threadIdx.x; k < int64_t{kW} * L; k += kW * 32) whist[k] = 0;
  __syncthreads();
  int64_t lo, hi;
  WarpRange<kW>(begin, end, &lo, &hi);
  int32_t* mine = whist + (threadIdx.x / 32) * static_cast<int64_t>(L);
  const int lane_id = threadIdx.x & 31;
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t i = base + lane_id;
    const int32_t e = i < hi ? AlignLocalExpertAt(ids, kind, i, num_experts, expert_map, L) : L;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e < L && lane_id == __ffs(peers) - 1) mine[e] += __popc(peers);  // one writer per e
    __syncwarp();  // the next step's leader for e may be another lane
  }
  __syncthreads();
  for (int32_t e = threadIdx.x; e < L; e += kW * 32) {
    int32_t run = 0;
#pragma unroll
    for (int w = 0; w < kW; ++w) {
      const int32_t v = whist[w * static_cast<int64_t>(L) + e];
      whist[w * static_cast<int64_t>(L) + e] = run;
      run += v;
    }
    counts[e] = run;
  }
  __syncthreads();
}

// Phase 2: route i of expert e goes to start[e] + (offset ? offset[e] : 0) +
// whist[warp][e] + rank. whist is consumed (advanced) as the warps walk.
template <int kW>
__device__ void WarpScatter(const void* ids, IdKind kind, int64_t begin, int64_t end,
                            int64_t num_experts, const int32_t* expert_map, int32_t L,
                            int32_t* whist, const int32_t* start, const int32_t* offset,
                            int32_t* sorted) {
  int64_t lo, hi;
  WarpRange<kW>(begin, end, &lo, &hi);
  int32_t* mine = whist + (threadIdx.x / 32) * static_cast<int64_t>(L);
  const int lane_id = threadIdx.x & 31;
  const unsigned below = LanesBelow();
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t i = base + lane_id;
    const int32_t e = i < hi ? AlignLocalExpertAt(ids, kind, i, num_experts, expert_map, L) : L;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    int32_t placed = 0;
    if (e < L) {
      placed = mine[e];
      const int64_t dest = static_cast<int64_t>(start[e]) + (offset ? offset[e] : 0) + placed +
                           __popc(peers & below);
      sorted[dest] = static_cast<int32_t>(i);
    }
    __syncwarp();  // every lane has read mine[] before the leaders advance it
    if (e < L && lane_id == __ffs(peers) - 1) mine[e] = placed + __popc(peers);
    __syncwarp();
  }
}

// Small path without a sort: CTA 0 ranks and scatters, the others fill padding.
constexpr int kWarpRankWarps = 16;
constexpr int32_t kWarpRankMaxExperts = 1024;

size_t WarpRankSharedBytes(int32_t L) {
  return (static_cast<size_t>(kWarpRankWarps) * L + 2 * (static_cast<size_t>(L) + 1)) *
         sizeof(int32_t);
}

__global__ void __launch_bounds__(kWarpRankWarps * 32) AlignWarpRankKernel(AlignCudaArgs a) {
  constexpr int kT = kWarpRankWarps * 32;
  extern __shared__ __align__(16) int32_t wsmem[];
  __shared__ typename cub::BlockScan<long long, kT>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  int32_t* whist = wsmem;
  int32_t* counts = whist + static_cast<int64_t>(kWarpRankWarps) * L;
  int32_t* pstart = counts + (L + 1);
  const ProblemPtrs q = PtrsOf(a);
  WarpHistogram<kWarpRankWarps>(q.ids, a.id_kind, 0, p.numel, p.num_experts, q.expert_map, L,
                                whist, counts);
  ScanExperts<kT>(counts, L, p.block_size, nullptr, pstart, scan_tmp);
  __syncthreads();
  if (blockIdx.x > 0) {
    FillPadding(blockIdx.x - 1, gridDim.x - 1, pstart, counts, L, p, q.sorted, q.expert_ids);
    return;
  }
  if (threadIdx.x == 0) *q.post_pad = pstart[L];
  WarpScatter<kWarpRankWarps>(q.ids, a.id_kind, 0, p.numel, p.num_experts, q.expert_map, L,
                              whist, pstart, nullptr, q.sorted);
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

// (1) Histogram of the CTA's chunk (in shared memory when it fits, else in the
// CTA's own workspace row: never a counter shared between CTAs).
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
  Histogram(q.ids, a.id_kind, begin, min(begin + chunk, p.numel), p.num_experts, q.expert_map,
            L, hist);
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

// (3) CTAs [0, ctas) scatter their routes, tile by tile in route order; the
// CTAs after them fill the padding slots and block owners.
__global__ void __launch_bounds__(kThreads) AlignScatterKernel(AlignCudaArgs a, int64_t ctas,
                                                               int lane_bits) {
  __shared__ typename TileSorter<kThreads, kItems>::Storage storage;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  if (blockIdx.x >= ctas) {  // fill workers
    FillPadding(blockIdx.x - ctas, gridDim.x - ctas, w.pstart, w.counts, L, p, q.sorted,
                q.expert_ids);
    return;
  }
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
}

// (3') The same as (3) with warp ranking instead of tile sorts (L <= 1024).
constexpr int kScatterWarps = kThreads / 32;

size_t WarpScatterSharedBytes(int32_t L) {
  return (static_cast<size_t>(kScatterWarps) * L + L) * sizeof(int32_t);
}

__global__ void __launch_bounds__(kThreads) AlignWarpScatterKernel(AlignCudaArgs a, int64_t ctas) {
  extern __shared__ __align__(16) int32_t ssmem[];
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  if (blockIdx.x >= ctas) {  // fill workers
    FillPadding(blockIdx.x - ctas, gridDim.x - ctas, w.pstart, w.counts, L, p, q.sorted,
                q.expert_ids);
    return;
  }
  int32_t* whist = ssmem;
  int32_t* cta_counts = whist + static_cast<int64_t>(kScatterWarps) * L;
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = min(begin + chunk, p.numel);
  WarpHistogram<kScatterWarps>(q.ids, a.id_kind, begin, end, p.num_experts, q.expert_map, L,
                               whist, cta_counts);
  WarpScatter<kScatterWarps>(q.ids, a.id_kind, begin, end, p.num_experts, q.expert_map, L, whist,
                             w.pstart, w.offsets + blockIdx.x * static_cast<int64_t>(L), q.sorted);
}

constexpr size_t kDefaultSharedLimit = 48 * 1024;

template <int kT, int kI>
cudaError_t LaunchSmall(const AlignCudaArgs& a, cudaStream_t stream) {
  const size_t bytes = SmallSharedBytes<kT, kI>(a.problem.num_local);
  auto kernel = AlignSmallKernel<kT, kI>;
  if (bytes > kDefaultSharedLimit) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(1 + FillCtas(a.problem.padded_len)),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kT, bytes, stream>>>(a, LaneBits(a.problem.num_local));
  return cudaGetLastError();
}

cudaError_t LaunchWarpRank(const AlignCudaArgs& a, cudaStream_t stream) {
  const size_t bytes = WarpRankSharedBytes(a.problem.num_local);
  if (bytes > kDefaultSharedLimit) {
    cudaError_t err = cudaFuncSetAttribute(AlignWarpRankKernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(1 + FillCtas(a.problem.padded_len)),
                  static_cast<unsigned>(a.batch));
  AlignWarpRankKernel<<<grid, kWarpRankWarps * 32, bytes, stream>>>(a);
  return cudaGetLastError();
}

// JAX_MOE_ALIGN_RANKING=sort selects the sort-based kernels where warp-ranked ones
// would run (A/B testing and benchmarking only).
bool SortRankingForced() {
  const char* v = std::getenv("JAX_MOE_ALIGN_RANKING");
  return v != nullptr && std::strcmp(v, "sort") == 0;
}

}  // namespace

cudaError_t LaunchAlignCuda(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  if (a.batch == 0) return cudaSuccess;
  const int32_t L = p.num_local;
  if (L <= kWarpRankMaxExperts && p.numel <= kSmallTile && !SortRankingForced())
    return LaunchWarpRank(a, stream);
  if (L <= kSmallMaxExperts && p.numel <= kTinyTile) return LaunchSmall<kTinyThreads, kTinyItems>(a, stream);
  if (L <= kSmallMaxExperts && p.numel <= kSmallTile) return LaunchSmall<kSmallThreads, kSmallItems>(a, stream);

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
  const dim3 scatter_grid(static_cast<unsigned>(ctas + FillCtas(p.padded_len)),
                          static_cast<unsigned>(a.batch));
  if (L <= kWarpRankMaxExperts && !SortRankingForced()) {
    const size_t bytes = WarpScatterSharedBytes(L);
    if (bytes > kDefaultSharedLimit) {
      err = cudaFuncSetAttribute(AlignWarpScatterKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes));
      if (err != cudaSuccess) return err;
    }
    AlignWarpScatterKernel<<<scatter_grid, kThreads, bytes, stream>>>(a, ctas);
  } else {
    AlignScatterKernel<<<scatter_grid, kThreads, 0, stream>>>(a, ctas, LaneBits(L));
  }
  return cudaGetLastError();
}

}  // namespace jax_moe
