// Warp-ranked CUDA align kernels (num_local <= kWarpRankMaxExperts): no sort.
//
// A tile of routes is first staged in shared memory as local-expert lanes with
// coalesced loads, many in flight per thread (one memory latency per tile, not
// one per step). Warps then walk contiguous ranges of the tile 32 routes a step,
// in route order; lanes holding the same expert find each other with
// __match_any_sync, and a route's rank inside its warp's range is what earlier
// steps placed plus its peers in lower lanes. The rank is stored next to the
// lane (lane | rank << 16), so after a prefix over warps per expert every route
// is scattered independently: start + warp offset + rank. Ranges, steps and
// lanes follow route order, so the result is stable and deterministic.
#include <cub/block/block_scan.cuh>

#include "align/align_device.cuh"
#include "align/align_launch.h"
#include "align/align_phase_marks.cuh"
#include "align/align_walk.cuh"

namespace jax_moe {
namespace {

using namespace align_device;

#ifdef JAX_MOE_ALIGN_PHASES
// Profiling builds: thread 0 of the staged kernel stamps mark i (a barrier
// before each makes it the CTA's time).
__device__ PhaseMarks g_staged_phases;
#endif
#define STAGED_PHASE(i) ALIGN_PHASE(g_staged_phases, i)

// Threads of the ranking CTAs: the multi-block scatter uses large CTAs (fewer
// steps per warp); the single-CTA path uses 256 threads for few routes (cheaper
// barriers and scans) and 512 otherwise (1024 would cap registers at 64 and
// spill).
constexpr int kRankThreads = 1024;
constexpr int kSmallRankThreads = 512;
constexpr int kSmallRankThreadsFew = 256;
constexpr int64_t kFewRoutes = 1024;
// Routes staged per tile (int32 each in shared memory).
constexpr int64_t kRankTile = kSmallTile;
// The single-CTA kernel writes the padding itself up to this many output slots
// (a few stores per thread); beyond, extra CTAs do it.
constexpr int64_t kSelfFillSlots = 32768;

static_assert(kRankTile < (1 << 16), "ranks are packed in 16 bits");
static_assert(kWarpRankMaxExperts < (1 << 16), "lanes are packed in 16 bits");

// tile[k] = lane of route begin + k, for k < n; between() runs while the first
// round's loads are in flight (see ForLanes).
template <typename Id, typename Between = NoWork>
__device__ void StageTile(const Id* ids, int64_t begin, int64_t n, int64_t num_experts,
                          const int32_t* expert_map, int32_t L, int32_t* tile,
                          Between&& between = Between{}) {
  // 16 loads per thread: 8192 routes in one round for 512 threads.
  ForLanes<16>(
      ids, begin, n, num_experts, expert_map, L,
      [&](int64_t k, int32_t e) {
        if (k < n) tile[k] = e;
      },
      between);
}

// ---- small path: one launch -------------------------------------------------
// CTA 0 ranks and scatters every route (and writes the padding when P is
// small); CTAs 1.. recompute the histogram and write the padding.

template <int kT>
size_t SmallSharedBytes(int64_t numel, int32_t L) {
  const int64_t words = 2 * (int64_t{L} + 1) + int64_t{RankWarps<kT>(numel, L)} * L +
                        (numel > 0 ? numel : 1);
  return static_cast<size_t>(words) * sizeof(int32_t);
}

template <typename Id, int kT>
__global__ void __launch_bounds__(kT) AlignWarpRankSmallKernel(AlignCudaArgs a) {
  extern __shared__ __align__(16) int32_t smem[];
  __shared__ typename ExpertScan<kT>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const int32_t n = static_cast<int32_t>(p.numel);  // <= kSmallTile
  const ProblemPtrs q = PtrsOf(a);
  const Id* ids = static_cast<const Id*>(q.ids);
  const int W = RankWarps<kT>(n, L);
  const int32_t per = RoutesPerWarp(n, W);
  int32_t* counts = smem;                               // [L + 1]
  int32_t* pstart = counts + (L + 1);                   // [L + 1]
  int32_t* whist = pstart + (L + 1);                    // [W, L]
  int32_t* tile = whist + static_cast<int64_t>(W) * L;  // [n]

  for (int32_t e = threadIdx.x; e <= L; e += kT) counts[e] = 0;
  if (blockIdx.x > 0) {  // padding worker
    __syncthreads();
    CountRoutes(ids, 0, n, p.num_experts, q.expert_map, L, counts);
    __syncthreads();
    ScanExperts<kT>(counts, L, p.block_size, pstart, scan_tmp);
    __syncthreads();
    FillPadding(blockIdx.x - 1, gridDim.x - 1, pstart, counts, L, p, q.sorted, q.expert_ids);
    return;
  }
  for (int64_t k = threadIdx.x; k < int64_t{W} * L; k += kT) whist[k] = 0;
  StageTile(ids, 0, n, p.num_experts, q.expert_map, L, tile);
  __syncthreads();
  WalkTile(tile, n, per, W, L, whist);
  __syncthreads();
  PrefixOverWarps(whist, W, L, counts);  // counts[e] := expert e's total
  __syncthreads();
  ScanExperts<kT>(counts, L, p.block_size, pstart, scan_tmp);
  __syncthreads();
  if (threadIdx.x == 0) *q.post_pad = pstart[L];
  ScatterTile(tile, n, per, L, whist, pstart, 0, q.sorted);
  if (gridDim.x == 1) FillPadding(0, 1, pstart, counts, L, p, q.sorted, q.expert_ids);
}

// ---- small path with the output staged in shared memory --------------------
// When P slots fit in shared memory next to the tile, the single CTA builds
// the route slots there (sentinels, then routes) and writes them out with
// coalesced stores; block owners go straight to global memory (one binary
// search over the starts per block: no barrier, no scan). The direct scatter
// of the kernel above costs one memory transaction per route (routes of a warp
// land in different experts), which one SM issues at about one per cycle:
// ~4 us for 8192 routes.

template <int kT>
size_t StagedSharedWords(int64_t numel, int32_t L, int64_t padded_len) {
  return 2 * (static_cast<size_t>(L) + 1) + static_cast<size_t>(RankWarps<kT>(numel, L)) * L +
         (numel > 0 ? numel : 1) + padded_len;
}

template <typename Id, int kT>
__global__ void __launch_bounds__(kT) AlignWarpRankStagedKernel(AlignCudaArgs a) {
  extern __shared__ __align__(16) int32_t smem[];
  __shared__ typename ExpertScan<kT>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const int32_t n = static_cast<int32_t>(p.numel);            // <= kSmallTile
  const int32_t P = static_cast<int32_t>(p.padded_len);        // fits in shared memory
  const ProblemPtrs q = PtrsOf(a);
  const int W = RankWarps<kT>(n, L);
  const int32_t per = RoutesPerWarp(n, W);
  int32_t* counts = smem;                               // [L + 1]
  int32_t* pstart = counts + (L + 1);                   // [L + 1]
  int32_t* whist = pstart + (L + 1);                    // [W, L]
  int32_t* tile = whist + W * L;                        // [max(n, 1)]
  int32_t* out = tile + (n > 0 ? n : 1);                // [P]

  STAGED_PHASE(0);
  StageTile(static_cast<const Id*>(q.ids), 0, n, p.num_experts, q.expert_map, L, tile, [&] {
    for (int32_t e = threadIdx.x; e <= L; e += kT) counts[e] = 0;
    for (int32_t k = threadIdx.x; k < W * L; k += kT) whist[k] = 0;
    for (int32_t s = threadIdx.x; s < P; s += kT) out[s] = n;  // sentinel
  });
  __syncthreads();
  STAGED_PHASE(1);
  WalkTile(tile, n, per, W, L, whist);
  __syncthreads();
  STAGED_PHASE(2);
  PrefixOverWarps(whist, W, L, counts);  // counts[e] := expert e's total
  __syncthreads();
  STAGED_PHASE(3);
  ScanExperts<kT>(counts, L, p.block_size, pstart, scan_tmp);
  __syncthreads();
  STAGED_PHASE(4);
  if (threadIdx.x == 0) *q.post_pad = pstart[L];
  ScatterTile(tile, n, per, L, whist, pstart, 0, out);
  BlockOwnersShare<kT>(pstart, L, p, q.expert_ids);  // one CTA: every block
  __syncthreads();
  STAGED_PHASE(5);
  for (int32_t s = threadIdx.x; s < P; s += kT) q.sorted[s] = out[s];
#ifdef JAX_MOE_ALIGN_PHASES
  __syncthreads();  // mark 6: the whole CTA has issued its stores
#endif
  STAGED_PHASE(6);
}

// ---- multi-block step (3) ---------------------------------------------------
// CTA g ranks its chunk tile by tile, starting each expert at its padded start
// plus the routes of that expert in earlier CTAs (from the scan kernel).

size_t ScatterSharedBytes(int64_t chunk, int32_t L) {
  const int64_t tile = chunk < kRankTile ? (chunk > 0 ? chunk : 1) : kRankTile;
  const int64_t words = int64_t{L} + int64_t{RankWarps<kRankThreads>(tile, L)} * L + tile;
  return static_cast<size_t>(words) * sizeof(int32_t);
}

template <typename Id>
__global__ void __launch_bounds__(kRankThreads)
    AlignWarpRankScatterKernel(AlignCudaArgs a, int64_t ctas) {
  extern __shared__ __align__(16) int32_t smem[];
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace ws = WorkspaceOf(q.workspace, ctas, L);
  if (FillAsPaddingWorker(p, q, ws, ctas)) return;
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = min(begin + chunk, p.numel);
  const int64_t max_tile = chunk < kRankTile ? (chunk > 0 ? chunk : 1) : kRankTile;
  int32_t* running = smem;                                               // [L]
  int32_t* whist = running + L;                                          // [W, L]
  int32_t* tile = whist + static_cast<int64_t>(RankWarps<kRankThreads>(max_tile, L)) * L;
  const int32_t* offsets = ws.offsets + blockIdx.x * static_cast<int64_t>(L);
  for (int32_t e = threadIdx.x; e < L; e += kRankThreads) running[e] = ws.pstart[e] + offsets[e];
  for (int64_t t0 = begin; t0 < end; t0 += kRankTile) {
    const int32_t n = static_cast<int32_t>(min(kRankTile, end - t0));
    const int W = RankWarps<kRankThreads>(n, L);
    const int32_t per = RoutesPerWarp(n, W);
    for (int64_t k = threadIdx.x; k < int64_t{W} * L; k += kRankThreads) whist[k] = 0;
    StageTile(static_cast<const Id*>(q.ids), t0, n, p.num_experts, q.expert_map, L, tile);
    __syncthreads();
    WalkTile(tile, n, per, W, L, whist);
    __syncthreads();
    PrefixOverWarps(whist, W, L, running);
    __syncthreads();
    ScatterTile(tile, n, per, L, whist, nullptr, t0, q.sorted);
    __syncthreads();  // tile and counters are reused by the next tile
  }
}

// Shared memory a CTA may opt into on the current device (227 KB on H100/H200,
// 163 KB on A100).
size_t SharedOptinBytes() {
  int device = 0, bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess)
    return kDefaultSharedLimit;
  return static_cast<size_t>(bytes);
}

// Static shared memory of the kernels (cub temporaries) is below this.
constexpr size_t kStaticSharedReserve = 16 * 1024;

template <int kT>
cudaError_t LaunchSmall(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  const size_t staged =
      StagedSharedWords<kT>(p.numel, p.num_local, p.padded_len) * sizeof(int32_t);
  if (staged + kStaticSharedReserve <= SharedOptinBytes()) {
    const dim3 grid(1, static_cast<unsigned>(a.batch));
    return WithIdType(a.id_kind, [&](auto id) {
      auto kernel = AlignWarpRankStagedKernel<decltype(id), kT>;
      const cudaError_t err = AllowSharedBytes(kernel, staged);
      if (err != cudaSuccess) return err;
      kernel<<<grid, kT, staged, stream>>>(a);
      return cudaGetLastError();
    });
  }
  const size_t bytes = SmallSharedBytes<kT>(p.numel, p.num_local);
  const int64_t fill = p.padded_len > kSelfFillSlots ? FillCtas(p.padded_len) : 0;
  const dim3 grid(static_cast<unsigned>(1 + fill), static_cast<unsigned>(a.batch));
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignWarpRankSmallKernel<decltype(id), kT>;
    const cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kT, bytes, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace

#ifdef JAX_MOE_ALIGN_PHASES
int CopyStagedPhases(int64_t* out) { return CopyPhaseMarks(g_staged_phases, out); }
#endif

cudaError_t LaunchWarpRankSmall(const AlignCudaArgs& a, cudaStream_t stream) {
  if (a.problem.numel <= kFewRoutes) return LaunchSmall<kSmallRankThreadsFew>(a, stream);
  return LaunchSmall<kSmallRankThreads>(a, stream);
}

cudaError_t LaunchWarpRankScatter(const AlignCudaArgs& a, int64_t ctas, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  const size_t bytes = ScatterSharedBytes(CtaChunk(p.numel, ctas), p.num_local);
  const dim3 grid(static_cast<unsigned>(ctas + FillCtas(p.padded_len)),
                  static_cast<unsigned>(a.batch));
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignWarpRankScatterKernel<decltype(id)>;
    const cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kRankThreads, bytes, stream>>>(a, ctas);
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
