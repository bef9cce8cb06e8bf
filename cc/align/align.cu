// CUDA kernels of moe_align_block_size (shared/spec/align.md): path choice and
// the multi-block histogram and scan.
//
// Deterministic by construction: no atomics decide where a route goes. A route's
// place is its expert's start plus the number of earlier routes of that expert,
// counted in route order, so each expert's routes land in ascending route index,
// as in the CPU kernel (bit-identical outputs). Two ways to rank:
// - warp ranking (num_local <= 1024, align_warp_rank.cu): no sort;
// - tile radix sort (any num_local, align_sort.cu).
// Paths, tried in this order:
// - one warp (numel <= kOneWarpMaxRoutes = 32, num_local <= 1024,
//   align_tiny.cu): one launch; every warp ranks all routes by ballots and
//   writes its own slice of the outputs, no CTA barrier.
// - grid sync (numel >= 8192, num_local <= 1024, chunks of <= kSmallTile
//   routes, align_gridsync.cu, see GridSyncSize): one cooperative launch; CTAs
//   rank their chunks, publish chunk counts, meet at one grid barrier, sum the
//   counts and scatter. Not taken when the grid could not be co-resident.
// - one pass (kOnePassMinRoutes < numel <= kOnePassMaxRoutes, num_local <= 1024,
//   align_onepass.cu, see UseOnePass; now the grid sync's fallback): one
//   launch of numel / 256 CTAs; every CTA counts all routes, scans the same
//   expert starts, ranks and scatters its own chunk and writes its share of
//   the padding. No workspace, no inter-CTA communication.
// - small (numel <= kSmallTile): one launch; CTA 0 ranks and scatters, padding
//   is written by CTA 0 or, when P is large, by extra CTAs (P can be far larger
//   than numel: up to L * (bs - 1) padding slots).
// - multi block: (1) per-CTA expert histograms, (2) one CTA scans them into
//   per-CTA offsets and expert starts, (3) CTAs rank their routes and scatter
//   them to start + CTA offset + rank, while extra CTAs fill padding slots and
//   block owners. No global atomics on expert counters.
// A/B switches (read once per process): JAX_MOE_ALIGN_RANKING=sort forces the
// tile sort everywhere; JAX_MOE_ALIGN_GRIDSYNC=0, JAX_MOE_ALIGN_ONEPASS=0|all (see
// UseOnePass).
#include <cub/block/block_scan.cuh>

#include <cstdlib>
#include <cstring>

#include "align/align_cuda.h"
#include "align/align_device.cuh"
#include "align/align_launch.h"

namespace jax_moe {
namespace {

using namespace align_device;

// (1) Histogram of the CTA's chunk (in shared memory when it fits, else in the
// CTA's own workspace row: never a counter shared between CTAs).
constexpr int kHistThreads = 512;

template <typename Id>
__global__ void __launch_bounds__(kHistThreads) AlignHistogramKernel(AlignCudaArgs a, int64_t ctas,
                                                                     int use_shared) {
  extern __shared__ int32_t hist_smem[];
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  int32_t* row = w.offsets + blockIdx.x * static_cast<int64_t>(L);
  int32_t* hist = use_shared ? hist_smem : row;
  for (int32_t e = threadIdx.x; e < L; e += kHistThreads) hist[e] = 0;
  __syncthreads();
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t n = min(begin + chunk, p.numel) - begin;
  if (n > 0) CountRoutes(static_cast<const Id*>(q.ids), begin, n, p.num_experts, q.expert_map, L, hist);
  __syncthreads();
  if (use_shared)
    for (int32_t e = threadIdx.x; e < L; e += kHistThreads) row[e] = hist[e];
}

// (2) One CTA: per-expert exclusive scan over CTAs (in place), expert totals,
// expert starts, num_tokens_post_pad.
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kScanThreads) AlignScanKernel(AlignCudaArgs a, int64_t ctas) {
  __shared__ int32_t partial[kScanThreads];
  __shared__ typename ExpertScan<kScanThreads>::TempStorage scan_tmp;
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
  // Padded expert starts: the scatter adds CTA offsets and ranks to them.
  ScanExperts<kScanThreads>(w.counts, L, p.block_size, w.pstart, scan_tmp);
  __syncthreads();
  if (threadIdx.x == 0) *q.post_pad = w.pstart[L];
}

// JAX_MOE_ALIGN_RANKING=sort selects the sort-based kernels where warp-ranked ones
// would run (A/B testing and benchmarking only).
bool SortRankingForced() {
  const char* v = std::getenv("JAX_MOE_ALIGN_RANKING");
  return v != nullptr && std::strcmp(v, "sort") == 0;
}

// Whether the one-pass path takes a problem. Default: kOnePassMinRoutes < numel
// <= kOnePassMaxRoutes, except few local experts (L <= 16) above 8192 routes,
// where the count every CTA repeats costs more than the three-launch path saves
// (H200, 16384 x 2, E 8: 20.7 us one pass vs 13.9). Below kOnePassMinRoutes the
// single-CTA kernels win or tie (16 x 8, E 256: 5.7 vs 7.5 us; 128 x 2, E 64: 5.6
// vs 5.8); from 1024 routes the one pass wins (128 x 8, E 1024: 8.2 vs 15.4).
// JAX_MOE_ALIGN_ONEPASS (A/B testing, read once per process): "0" off, "all"
// every size above the one-warp path up to kOnePassMaxRoutes.
bool UseOnePass(int64_t numel, int32_t L) {
  static const int mode = [] {
    const char* v = std::getenv("JAX_MOE_ALIGN_ONEPASS");
    if (v == nullptr) return 1;
    if (std::strcmp(v, "0") == 0) return 0;
    return std::strcmp(v, "all") == 0 ? 2 : 1;
  }();
  if (numel > kOnePassMaxRoutes || mode == 0) return false;
  if (mode == 2) return numel > kOneWarpMaxRoutes;
  return numel > kOnePassMinRoutes && (L > 16 || numel <= 8192);
}

}  // namespace

cudaError_t LaunchAlignCuda(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  if (a.batch == 0) return cudaSuccess;
  const int32_t L = p.num_local;
  const bool warp_rank = L <= kWarpRankMaxExperts && !SortRankingForced();
  if (warp_rank && p.numel <= kOneWarpMaxRoutes) return LaunchOneWarpAlign(a, stream);
  if (warp_rank) {
    bool launched = false;
    const cudaError_t err = LaunchGridSyncAlign(a, stream, &launched);
    if (err != cudaSuccess || launched) return err;
  }
  if (warp_rank && UseOnePass(p.numel, L)) return LaunchOnePassAlign(a, stream);
  if (p.numel <= kSmallTile) {
    if (warp_rank) return LaunchWarpRankSmall(a, stream);
    if (L <= kSmallMaxExperts) return LaunchSortSmall(a, stream);
  }
  const int64_t ctas = NumCtas(p.numel);
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(a.batch));
  const size_t hist_bytes = static_cast<size_t>(L) * sizeof(int32_t);
  const int use_shared = hist_bytes <= kDefaultSharedLimit;
  cudaError_t err = WithIdType(a.id_kind, [&](auto id) {
    AlignHistogramKernel<decltype(id)>
        <<<grid, kHistThreads, use_shared ? hist_bytes : 0, stream>>>(a, ctas, use_shared);
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;
  AlignScanKernel<<<dim3(1, static_cast<unsigned>(a.batch)), kScanThreads, 0, stream>>>(a, ctas);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return warp_rank ? LaunchWarpRankScatter(a, ctas, stream) : LaunchSortScatter(a, ctas, stream);
}

}  // namespace jax_moe
