// One-launch, multi-CTA CUDA align path for mid sizes (kOnePassMinRoutes <
// numel <= kOnePassMaxRoutes, num_local <= kWarpRankMaxExperts): no workspace,
// no communication between CTAs ("redundant histogram").
//
// CTA c of a problem ranks the routes of its chunk [c * chunk, (c + 1) * chunk).
// Every CTA loads ALL ids of its problem (coalesced, kCountItems loads in flight
// per thread) and counts them in shared memory twice over: the routes before its
// chunk (before[e]) and the others, which becomes all routes (total[e]). Counts
// do not depend on the order of the shared-memory atomics, so every CTA gets the
// same totals and, from the same scan, the same padded expert starts and
// num_tokens_post_pad. While counting, the CTA keeps the lanes of its own chunk
// in a shared tile; it ranks that tile stably with the warp walk
// (align_walk.cuh), from pstart[e] + before[e], and scatters its routes.
// The padding is split over all CTAs by range: block owners by block range (a
// binary search of the starts), each expert's padding slots by one warp, the
// tail past num_tokens_post_pad by slot range. None of these is a slot a route
// owns, so routes and sentinels never race. CTAs past the ranking ones (when P
// is large) only count and fill.
#include <cub/block/block_scan.cuh>

#include <cstdlib>

#include "align/align_device.cuh"
#include "align/align_launch.h"
#include "align/align_phase_marks.cuh"
#include "align/align_walk.cuh"

namespace jax_moe {
namespace {

using namespace align_device;

#ifdef JAX_MOE_ALIGN_PHASES
// Profiling builds: thread 0 stamps mark i (the barrier before it makes it the
// CTA's time, except for mark 5, thread 0's own fill share).
__device__ PhaseMarks g_onepass_phases;
#endif
#define ONEPASS_PHASE(i) ALIGN_PHASE(g_onepass_phases, i)

constexpr int kOnePassThreads = 512;
// Routes ranked per CTA at most (a multiple of 32). H200 A/B (all sizes on this
// path): 256 beats 1024 by 0.7-2.4 us from 1024 to 32768 routes (seed 9.8 ->
// 9.0 us; 128 x 8, E 1024: 9.2 -> 8.2): more CTAs share the ranking while each
// still counts every route.
constexpr int64_t kOnePassChunk = 256;
// Loads in flight per thread while counting: 6144 routes a round (16 spill on
// sm_80 for 1- and 8-byte ids).
constexpr int kCountItems = 12;
// Counting is one plain shared atomic per route. Warp aggregation (one atomic
// per distinct expert of a warp step, from MatchLanes ballots) was measured
// slower even at E 8, where same-address atomics conflict most (H200, 4096 x 2:
// 11.4 us aggregated, 8.7 us plain; 16384 x 2: 29.0 vs 20.7).

static_assert(kOnePassChunk % 32 == 0, "chunks start at a warp step");
static_assert(kOnePassChunk < (1 << 16), "ranks are packed in 16 bits");
static_assert(kOnePassMaxRoutes < (int64_t{1} << 31), "route indices are int32");

// Routes of each ranking CTA's chunk: numel spread evenly over
// ceil(numel / max_chunk) CTAs, rounded up to a warp step (so a warp step of
// the count is entirely before a chunk or not). The launcher passes it to the
// kernel.
inline int32_t OnePassChunk(int64_t numel, int64_t max_chunk) {
  const int64_t ctas = CeilDiv(numel, max_chunk);
  return static_cast<int32_t>(CeilDiv(CeilDiv(numel, ctas > 0 ? ctas : 1), 32) * 32);
}

// Shared words: before [L] | total [L] | pstart [L + 1] | tile [chunk] | whist [W, L].
size_t OnePassSharedBytes(int32_t chunk, int32_t L) {
  const int64_t words = 3 * int64_t{L} + 1 + (chunk > 0 ? chunk : 1) +
                        int64_t{RankWarps<kOnePassThreads>(chunk, L)} * L;
  return static_cast<size_t>(words) * sizeof(int32_t);
}

template <typename Id>
__global__ void __launch_bounds__(kOnePassThreads)
    AlignOnePassKernel(AlignCudaArgs a, int32_t chunk) {
  extern __shared__ __align__(16) int32_t smem[];
  __shared__ typename ExpertScan<kOnePassThreads>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const int32_t numel = static_cast<int32_t>(p.numel);  // <= kOnePassMaxRoutes
  const ProblemPtrs q = PtrsOf(a);
  // CTAs past the last chunk (fill only) rank nothing.
  const int32_t begin = static_cast<int32_t>(min(int64_t{blockIdx.x} * chunk, int64_t{numel}));
  const int32_t n = min(begin + chunk, numel) - begin;
  const int W = RankWarps<kOnePassThreads>(n, L);
  const int32_t per = RoutesPerWarp(n, W);
  int32_t* before = smem;                 // [L] routes of this expert before the chunk
  int32_t* total = before + L;            // [L] the others, then all routes
  int32_t* pstart = total + L;            // [L + 1] padded starts
  int32_t* tile = pstart + (L + 1);       // [chunk] lanes of the chunk's routes
  int32_t* whist = tile + (chunk > 0 ? chunk : 1);  // [W, L] per-warp counts

  ONEPASS_PHASE(0);
  ForLanes<kCountItems>(
      static_cast<const Id*>(q.ids), 0, numel, p.num_experts, q.expert_map, L,
      [&](int64_t k64, int32_t e) {
        const int32_t k = static_cast<int32_t>(k64);
        if (static_cast<uint32_t>(k - begin) < static_cast<uint32_t>(n)) tile[k - begin] = e;
        if (e < L) atomicAdd(k < begin ? &before[e] : &total[e], 1);
      },
      [&] {  // while the first loads are in flight; every thread calls it once
        for (int32_t e = threadIdx.x; e < L; e += kOnePassThreads) before[e] = total[e] = 0;
        for (int32_t k = threadIdx.x; k < W * L; k += kOnePassThreads) whist[k] = 0;
        __syncthreads();  // counters zeroed before the first count
        ONEPASS_PHASE(1);
      });
  __syncthreads();
  ONEPASS_PHASE(2);
  for (int32_t e = threadIdx.x; e < L; e += kOnePassThreads) total[e] += before[e];
  WalkTile(tile, n, per, W, L, whist);
  __syncthreads();
  ONEPASS_PHASE(3);
  ScanExperts<kOnePassThreads>(total, L, p.block_size, pstart, scan_tmp);
  __syncthreads();
  ONEPASS_PHASE(4);
  if (blockIdx.x == 0 && threadIdx.x == 0) *q.post_pad = pstart[L];
  FillShare<kOnePassThreads>(pstart, total, L, p, q.sorted, q.expert_ids);
  ONEPASS_PHASE(5);
  // The chunk's first route of expert e goes to pstart[e] + before[e]. Same
  // thread per expert as in PrefixOverWarps: no barrier between them.
  for (int32_t e = threadIdx.x; e < L; e += kOnePassThreads) before[e] += pstart[e];
  PrefixOverWarps(whist, W, L, before);
  __syncthreads();
  ONEPASS_PHASE(6);
  ScatterTile(tile, n, per, L, whist, nullptr, begin, q.sorted);
#ifdef JAX_MOE_ALIGN_PHASES
  __syncthreads();  // mark 7: the whole CTA is done
#endif
  ONEPASS_PHASE(7);
}

// JAX_MOE_ALIGN_ONEPASS_CHUNK (A/B only, read once) overrides kOnePassChunk: a
// multiple of 32 in [32, 1024] (the walk's 16-bit ranks allow far more).
int64_t MaxChunk() {
  static const int64_t chunk = [] {
    const char* v = std::getenv("JAX_MOE_ALIGN_ONEPASS_CHUNK");
    const int c = v != nullptr ? std::atoi(v) : 0;
    return c >= 32 && c <= 1024 && c % 32 == 0 ? int64_t{c} : kOnePassChunk;
  }();
  return chunk;
}

}  // namespace

#ifdef JAX_MOE_ALIGN_PHASES
int CopyOnePassPhases(int64_t* out) { return CopyPhaseMarks(g_onepass_phases, out); }
#endif

cudaError_t LaunchOnePassAlign(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  const int32_t chunk = OnePassChunk(p.numel, MaxChunk());
  const int64_t ranking = CeilDiv(p.numel, chunk);
  const int64_t fill = FillCtas(p.padded_len);
  const dim3 grid(static_cast<unsigned>(ranking > fill ? ranking : fill),
                  static_cast<unsigned>(a.batch));
  const size_t bytes = OnePassSharedBytes(chunk, p.num_local);
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignOnePassKernel<decltype(id)>;
    const cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kOnePassThreads, bytes, stream>>>(a, chunk);
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
