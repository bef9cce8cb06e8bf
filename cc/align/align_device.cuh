// Device pieces shared by the CUDA align kernels (align.cu, align_sort.cu,
// align_warp_rank.cu): per-problem pointers, the expert scan, the padding
// fill, and a register-staged histogram. Internal to the CUDA module.
#pragma once

#include <cub/block/block_scan.cuh>

#include "align/align_cuda.h"
#include "align/align_plan.h"

namespace jax_moe {
namespace align_device {

using namespace align_plan;

struct ProblemPtrs {
  const void* ids;
  const int32_t* expert_map;
  int32_t* sorted;
  int32_t* expert_ids;
  int32_t* post_pad;
  int32_t* workspace;
};

// Pointers of problem blockIdx.y of a vmapped batch.
__device__ inline ProblemPtrs PtrsOf(const AlignCudaArgs& a) {
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

// Multi-block workspace: offsets [G, L] (histograms, then exclusive per-expert
// CTA offsets), padded expert starts [L + 1], expert counts [L].
struct Workspace {
  int32_t* offsets;
  int32_t* pstart;
  int32_t* counts;
};

__device__ inline Workspace WorkspaceOf(int32_t* w, int64_t ctas, int32_t L) {
  return {w, w + ctas * L, w + ctas * L + (L + 1)};
}

// Number of bits that hold lanes 0..L (L = dropped).
__host__ __device__ inline int LaneBits(int32_t num_local) {
  int bits = 1;
  while ((int64_t{1} << bits) <= num_local) ++bits;
  return bits;
}

// Lanes of the warp holding the same lane value v (< 2^bits) as this one. Built
// from one ballot per bit, as cub's radix ranking does: __match_any_sync takes
// longer the more distinct values a warp holds (the single-CTA kernel with
// __match_any_sync took 5 us longer at 64 experts than at 8 for 8192 routes),
// ballots do not. All lanes of the warp must call it with the same bits.
// With `smaller`, also the lanes holding a smaller value, from the same ballots:
// on bits 0..b a lane is smaller if it has 0 where v has 1 at bit b, or the same
// bit b and is smaller below (unused, it costs nothing: the function is inlined).
__device__ __forceinline__ unsigned MatchLanes(uint32_t v, int bits, unsigned* smaller = nullptr) {
  unsigned peers = 0xffffffffu, below = 0;
  for (int b = 0; b < bits; ++b) {
    const bool one = (v >> b) & 1u;
    const unsigned ones = __ballot_sync(0xffffffffu, one);
    peers &= one ? ones : ~ones;
    below = one ? (below | ~ones) : (below & ~ones);
  }
  if (smaller) *smaller = below;
  return peers;
}

// Lanes below this one (lanes 0..lane-1).
__device__ __forceinline__ unsigned LanesBelow() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// Calls fn(Id{}) with the C++ type of the ids' dtype. Host side: each kernel is
// instantiated per id type, which keeps its code small (a cold kernel's
// instruction fetches are a visible part of a few-microsecond launch).
template <typename Fn>
cudaError_t WithIdType(IdKind kind, Fn&& fn) {
  switch (kind) {
    case IdKind::kS8: return fn(int8_t{});
    case IdKind::kS16: return fn(int16_t{});
    case IdKind::kS32: return fn(int32_t{});
    case IdKind::kS64: return fn(int64_t{});
    case IdKind::kU8: return fn(uint8_t{});
    case IdKind::kU16: return fn(uint16_t{});
    case IdKind::kU32: return fn(uint32_t{});
    case IdKind::kU64: return fn(uint64_t{});
  }
  return cudaErrorInvalidValue;
}

// Loads per thread per round: independent loads issued back to back, so a
// round costs about one memory latency instead of kStageItems of them.
constexpr int kStageItems = 8;

// No work (ForLanes' default `between`).
struct NoWork {
  __device__ __forceinline__ void operator()() const {}
};

// Calls visit(k, lane) for every route k in [0, n) of ids + begin, in rounds
// of kItems coalesced loads per thread. Every lane of every warp makes the
// same number of calls (lane = L past the end), so visit may use warp
// collectives. between() runs once, after the first round's loads are issued
// and before their values are used: work independent of the ids (zeroing
// shared counters) then overlaps the memory latency instead of preceding it.
template <int kItems = kStageItems, typename Id, typename Visit, typename Between = NoWork>
__device__ __forceinline__ void ForLanes(const Id* ids, int64_t begin, int64_t n,
                                         int64_t num_experts, const int32_t* expert_map,
                                         int32_t L, Visit&& visit, Between&& between = Between{}) {
  const int64_t step = blockDim.x;
  bool first = true;
  for (int64_t k0 = 0; first || k0 < n; k0 += step * kItems) {
    Id raw[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int64_t k = k0 + j * step + threadIdx.x;
      raw[j] = k < n ? ids[begin + k] : Id{};
    }
    if (first) between();
    first = false;
    int32_t lane[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int64_t k = k0 + j * step + threadIdx.x;
      lane[j] = k < n ? AlignLocalExpert(raw[j], num_experts, expert_map, L) : L;
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) visit(k0 + j * step + threadIdx.x, lane[j]);
  }
}

// Adds the routes [begin, begin + n) to hist[L] (shared, zeroed): one atomic
// per expert per warp step (the order of atomics cannot change a count).
template <typename Id>
__device__ void CountRoutes(const Id* ids, int64_t begin, int64_t n, int64_t num_experts,
                            const int32_t* expert_map, int32_t L, int32_t* hist) {
  const int bits = LaneBits(L);
  ForLanes(ids, begin, n, num_experts, expert_map, L, [&](int64_t, int32_t e) {
    const unsigned peers = MatchLanes(e, bits);
    if (e < L && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[e], __popc(peers));
  });
}

// Block size as a 32-bit divisor. P < 2^31 (checked at trace time) bounds every
// slot and count, and a block size past that only occurs with no routes.
__device__ __forceinline__ uint32_t BlockSize32(int64_t block_size) {
  return block_size < 0x7fffffff ? static_cast<uint32_t>(block_size) : 0x7fffffffu;
}

// The block scan of the expert starts: warp scans by shuffles, one barrier and
// a scan of the warp totals, where cub's default (raking) scan has one warp
// walk the block's values serially through shared memory (H100 phase clocks:
// ~1400 cycles per scan over 512 threads, a third of a grid-sync CTA's time
// after its barrier).
template <int kT>
using ExpertScan = cub::BlockScan<int32_t, kT, cub::BLOCK_SCAN_WARP_SCANS>;

// An expert's routes rounded up to whole blocks (c + bs - 1 < 2^32: c < 2^31,
// bs < 2^31).
__device__ __forceinline__ int32_t PaddedCount(uint32_t c, uint32_t bs) {
  return static_cast<int32_t>((c + bs - 1) / bs * bs);
}

// Experts up to which warp 0 alone scans (ScanExperts): kWarpScanRun experts
// per lane, loaded together, then shuffles; no block barrier. A/B builds may
// set JAX_MOE_ALIGN_WARP_SCAN_MAX (0: always the block scan).
#ifndef JAX_MOE_ALIGN_WARP_SCAN_MAX
#define JAX_MOE_ALIGN_WARP_SCAN_MAX 256
#endif
constexpr int kWarpScanRun = 8;
constexpr int32_t kWarpScanMaxExperts = JAX_MOE_ALIGN_WARP_SCAN_MAX;
static_assert(kWarpScanMaxExperts <= 32 * kWarpScanRun, "a lane holds kWarpScanRun experts");

// Exclusive scan of the padded counts by one warp (lane i: experts [i * run,
// (i + 1) * run)), num_local <= 32 * kWarpScanRun.
__device__ inline void WarpScanExperts(const int32_t* counts, int32_t num_local, uint32_t bs,
                                       int32_t* pstart) {
  const int lane = threadIdx.x & 31;
  const int32_t run = (num_local + 31) / 32;
  const int32_t e0 = lane * run;
  int32_t padded[kWarpScanRun];
  int32_t sum = 0;
#pragma unroll
  for (int j = 0; j < kWarpScanRun; ++j) {
    const uint32_t c = j < run && e0 + j < num_local ? counts[e0 + j] : 0;
    padded[j] = PaddedCount(c, bs);
    sum += padded[j];
  }
  int32_t inclusive = sum;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int32_t v = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  int32_t start = inclusive - sum;
#pragma unroll
  for (int j = 0; j < kWarpScanRun; ++j) {
    if (j < run && e0 + j < num_local) pstart[e0 + j] = start;
    start += padded[j];
  }
  if (lane == 31) pstart[num_local] = inclusive;
}

// Block-wide exclusive scan over experts of the padded counts, in one pass:
// each thread first sums a run of consecutive experts. Writes pstart [0..L];
// entry L holds the total (num_tokens_post_pad < 2^31: P < 2^31 is checked at
// trace time, so every partial sum fits in 32 bits). counts must be visible to
// all threads; pstart is, after a barrier. Up to kWarpScanMaxExperts experts
// warp 0 scans alone: the block scan's barrier and two passes over shared
// memory cost ~1.2 k cycles even for 8 experts (H100 phase clocks).
template <int kT>
__device__ void ScanExperts(const int32_t* counts, int32_t num_local, int64_t block_size,
                            int32_t* pstart, typename ExpertScan<kT>::TempStorage& tmp) {
  const uint32_t bs = BlockSize32(block_size);
  if (num_local <= kWarpScanMaxExperts) {
    if (threadIdx.x < 32) WarpScanExperts(counts, num_local, bs, pstart);
    return;
  }
  const int32_t per = (num_local + kT - 1) / kT;
  const int32_t e0 = threadIdx.x * per;
  int32_t sum = 0;
  for (int32_t j = 0; j < per; ++j)
    if (e0 + j < num_local) sum += PaddedCount(counts[e0 + j], bs);
  int32_t run, total;
  ExpertScan<kT>(tmp).ExclusiveSum(sum, run, total);
  for (int32_t j = 0; j < per; ++j) {
    const int32_t e = e0 + j;
    if (e >= num_local) break;
    pstart[e] = run;
    run += PaddedCount(counts[e], bs);
  }
  if (threadIdx.x == 0) pstart[num_local] = total;
}

// Fill worker `worker` of `workers` (CTAs of blockDim threads): the padding
// slots after each expert's routes and the block owners, then the tail past
// the total. Warps take 32 experts at a time and visit only the busy ones
// (ballot): empty experts own no slot and no block, and most experts are empty
// when there are few routes. Each lane loads its expert's start, end and count
// once (one coalesced load per chunk; pstart and counts may be in global
// memory), and the busy loop takes them by shuffle: no memory round trip per
// expert. A busy expert's slots are written by its warp with coalesced stores.
// Route slots are the scatter's.
__device__ inline void FillPadding(int64_t worker, int64_t workers, const int32_t* pstart,
                                   const int32_t* counts, int32_t num_local,
                                   const AlignProblem& p, int32_t* sorted, int32_t* expert_ids) {
  const int32_t sentinel = static_cast<int32_t>(p.numel);
  const uint32_t bs = BlockSize32(p.block_size);
  const int32_t warps = blockDim.x / 32, lane = threadIdx.x & 31;
  const int64_t total_warps = workers * warps;
  for (int64_t e0 = (worker * warps + threadIdx.x / 32) * 32; e0 < num_local;
       e0 += total_warps * 32) {
    const int64_t mine = e0 + lane;
    uint32_t my_begin = 0, my_end = 0, my_count = 0;
    if (mine < num_local) {
      my_begin = pstart[mine];
      my_end = pstart[mine + 1];
      my_count = counts[mine];
    }
    unsigned busy = __ballot_sync(0xffffffffu, my_count > 0);
    while (busy) {
      const int src = __ffs(busy) - 1;
      busy &= busy - 1;
      const int32_t e = static_cast<int32_t>(e0) + src;
      const uint32_t begin = __shfl_sync(0xffffffffu, my_begin, src);
      const uint32_t end = __shfl_sync(0xffffffffu, my_end, src);
      const uint32_t count = __shfl_sync(0xffffffffu, my_count, src);
      for (uint32_t s = begin + count + lane; s < end; s += 32) sorted[s] = sentinel;
      for (uint32_t b = begin / bs + lane; b < end / bs; b += 32) expert_ids[b] = e;
    }
  }
  const uint32_t total = pstart[num_local];
  const int64_t stride = workers * blockDim.x, first = worker * blockDim.x + threadIdx.x;
  for (int64_t s = total + first; s < p.padded_len; s += stride) sorted[s] = sentinel;
  for (int64_t b = total / bs + first; b < p.num_blocks; b += stride) expert_ids[b] = -1;
}

// CTAs [ctas, gridDim.x) of a multi-block scatter launch write the padding
// (from the scan kernel's workspace); returns true for them.
__device__ inline bool FillAsPaddingWorker(const AlignProblem& p, const ProblemPtrs& q,
                                           const Workspace& w, int64_t ctas) {
  if (blockIdx.x < ctas) return false;
  FillPadding(blockIdx.x - ctas, gridDim.x - ctas, w.pstart, w.counts, p.num_local, p, q.sorted,
              q.expert_ids);
  return true;
}

// Expert owning padded slot s < pstart[L]: the last e with pstart[e] <= s
// (experts after e start later; empty experts before it start at the same slot).
__device__ __forceinline__ int32_t OwnerOfSlot(const int32_t* pstart, int32_t L, uint32_t s) {
  int32_t lo = 0, hi = L;  // pstart[lo] <= s; the owner is in [lo, hi)
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) >> 1;
    if (static_cast<uint32_t>(pstart[mid]) <= s) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Block owners, CTA c of gridDim.x: blocks [c * share, (c + 1) * share) of nb,
// share = ceil(nb / ctas) (starts in shared memory). 32-bit arithmetic: nb <=
// P < 2^31, so c * share <= nb + ctas fits, and no 64-bit division sits on
// the path.
template <int kT>
__device__ void BlockOwnersShare(const int32_t* pstart, int32_t L, const AlignProblem& p,
                                 int32_t* expert_ids) {
  const uint32_t bs = BlockSize32(p.block_size);
  const uint32_t busy_blocks = static_cast<uint32_t>(pstart[L]) / bs;
  const uint32_t nb = static_cast<uint32_t>(p.num_blocks);
  const uint32_t share = (nb + gridDim.x - 1) / gridDim.x;
  const uint32_t b0 = min(nb, blockIdx.x * share), b1 = min(nb, b0 + share);
  for (uint32_t b = b0 + threadIdx.x; b < b1; b += kT)
    expert_ids[b] = b < busy_blocks ? OwnerOfSlot(pstart, L, b * bs) : -1;
}

// This CTA's share (of gridDim.x) of the outputs that hold no route, for
// kernels whose every CTA has the same counts and starts (in shared memory).
template <int kT>
__device__ void FillShare(const int32_t* pstart, const int32_t* total, int32_t L,
                          const AlignProblem& p, int32_t* sorted, int32_t* expert_ids) {
  const int32_t sentinel = static_cast<int32_t>(p.numel);
  const uint32_t all = static_cast<uint32_t>(pstart[L]);  // num_tokens_post_pad
  const uint32_t ctas = gridDim.x, c = blockIdx.x;
  BlockOwnersShare<kT>(pstart, L, p, expert_ids);
  // Each expert's padding after its routes (< bs slots), one warp per expert.
  const int32_t lane = threadIdx.x & 31;
  for (int32_t e = c * (kT / 32) + threadIdx.x / 32; e < L; e += ctas * (kT / 32)) {
    const uint32_t end = static_cast<uint32_t>(pstart[e + 1]);
    for (uint32_t s = static_cast<uint32_t>(pstart[e] + total[e]) + lane; s < end; s += 32)
      sorted[s] = sentinel;
  }
  // The tail [num_tokens_post_pad, P), by slot range.
  const uint32_t P = static_cast<uint32_t>(p.padded_len);
  for (uint32_t s = all + c * kT + threadIdx.x; s < P; s += ctas * kT)
    sorted[s] = sentinel;
}

// Max as a cub scan operator (CCCL 3 removed cub::Max).
struct MaxOp {
  __device__ __forceinline__ int32_t operator()(int32_t a, int32_t b) const { return a > b ? a : b; }
};

// Fill workers for P output slots (one per 8192 slots, at most 128).
inline int64_t FillCtas(int64_t padded_len) {
  const int64_t f = (padded_len + 8191) / 8192;
  return f < 1 ? 1 : (f > 128 ? 128 : f);
}

constexpr size_t kDefaultSharedLimit = 48 * 1024;

// Sets a kernel's dynamic shared memory limit to `bytes`. Always set: static
// shared memory (cub temporaries) counts against the same 48 KB default.
template <typename Kernel>
cudaError_t AllowSharedBytes(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

}  // namespace align_device
}  // namespace jax_moe
