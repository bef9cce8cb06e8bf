// Grid-sync CUDA align path (mid and large inputs, num_local <=
// kWarpRankMaxExperts): one cooperative launch, every route loaded and counted
// once.
//
// CTA c ranks its chunk of routes [c * chunk, (c + 1) * chunk) in shared
// memory with the warp walk (align_walk.cuh), which also yields the chunk's
// expert counts; it publishes them as row c of the workspace [G, L]. After one
// grid-wide barrier every CTA reads all G rows: the sum of the rows before its
// own (where its routes of each expert start among that expert's routes) and
// of all rows (the expert totals, hence the same padded starts in every CTA).
// It then writes its share of the padding and scatters its chunk (route by
// route, or for long chunks over many experts in the chunk's expert order:
// ScatterSorted). The
// multi-block path does the same in three launches; here the barrier replaces
// two kernel boundaries and the per-CTA scan replaces the scan kernel.
//
// A grid barrier needs every CTA resident at once: the launch is cooperative
// (the driver refuses a grid that cannot be co-resident, and the launcher
// checks the occupancy first and lets the caller take another path).
#include <cooperative_groups.h>
#include <cub/block/block_scan.cuh>

#include <cstdlib>
#include <cstring>

#include "align/align_device.cuh"
#include "align/align_launch.h"
#include "align/align_phase_marks.cuh"
#include "align/align_walk.cuh"

namespace jax_moe {
namespace {

using namespace align_device;

#ifdef JAX_MOE_ALIGN_PHASES
// Profiling builds: thread 0 stamps mark i (a barrier before it makes it the
// CTA's time, except for marks 3 and 7, thread 0's own publish and fill share).
__device__ PhaseMarks g_gridsync_phases;
#endif
#define GRIDSYNC_PHASE(i) ALIGN_PHASE(g_gridsync_phases, i)

constexpr int kSyncThreads = 512;
// Loads in flight per thread while staging a chunk (<= 8192 routes in one round).
constexpr int kSyncItems = 16;
// Workspace words every CTA reads after the barrier at most (G * L): 256 KB
// from L2 (up to 128 loads per thread at L >= 512). H100 A/B of the cap (one call, busy
// us): 16384 -> 65536 takes 65536 x 8, E 256 from 64 to 128 CTAs (31.5 ->
// 24.2), 16384 x 8, E 1024 from 16 to 64 (28.2 -> 17.9) and 65536 x 8, E 1024
// from the multi-block path to 64 CTAs (47.5 -> 37.4); 4096 x 8, E 1024 went
// 15.2 -> 14.1 (13.6 at 32 CTAs). Other shapes were already at one CTA per 512
// routes or 128 CTAs.
constexpr int64_t kSyncRowWords = 65536;

static_assert(kSyncItems * kSyncThreads >= kSmallTile, "a chunk is staged in one round");

// Words of each of the two partial-sum arrays of SumRows: segments x L <= T
// when L < T, else L.
__host__ __device__ inline int32_t PartWords(int32_t L) {
  return L > kSyncThreads ? L : kSyncThreads;
}

// Shared words: before [L] | total [L] | pstart [L + 1] | part [2, PartWords] |
// whist [W, L] | tile [chunk], and for the sorted scatter lstart [L + 1] |
// order [chunk].
size_t SyncSharedBytes(int32_t chunk, int32_t L, bool sorted) {
  const int64_t tile = chunk > 0 ? chunk : 1;
  const int64_t words = 3 * int64_t{L} + 1 + 2 * int64_t{PartWords(L)} +
                        int64_t{RankWarps<kSyncThreads>(chunk, L)} * L + tile +
                        (sorted ? int64_t{L} + 1 + tile : 0);
  return static_cast<size_t>(words) * sizeof(int32_t);
}

// before[e] := routes of expert e in rows [0, c) of rows [G, L] (row g's entry
// e is row_value(g, e)); total[e] := in all rows. Fewer experts than threads:
// each expert's rows are split into segs segments (at most one per row) over
// several threads, whose partial sums meet in part (2 x PartWords(L) words). A
// warp reads consecutive experts of one row (whole sectors). Up to kRowBatch
// rows per segment a thread issues all its loads at once (one L2 round trip:
// H200 phase clocks at the seed, 2 rows per segment, 3.1-3.3 k -> 2.2 k
// cycles); longer segments keep the plain loop, which the compiler pipelines
// and which was 1.2-1.4x faster there than batches of 8 (65536 x 8, E 256 at
// 128 CTAs: 64 rows per segment, 6.7 k against 9.0 k cycles; 4096 x 8, E 1024
// and 16384 x 8, E 1024 0.5 and 3.6 us slower per call with batches). Tried and
// dropped: an expert's segments on the lanes of one warp, added by shuffles,
// 16 loads in flight per lane: each warp then read 4-8 rows' partial sectors,
// and the row sum took 1-3x longer from 64 CTAs on (H100: 65536 x 2, E 64 at
// 128 CTAs: 3.4 k -> 10.3 k cycles).
constexpr int kRowBatch = 8;

template <typename RowValue>
__device__ void SumRows(RowValue row_value, int32_t G, int32_t L, int32_t c, int32_t* part,
                        int32_t* before, int32_t* total) {
  const int32_t segs = L < kSyncThreads ? min(kSyncThreads / L, G) : 1;
  int32_t* part_before = part;
  int32_t* part_total = part + PartWords(L);
  for (int32_t t = threadIdx.x; t < segs * L; t += kSyncThreads) {
    const int32_t e = t % L, seg = t / L;
    // G <= 128 rows and seg < kSyncThreads: 32-bit products.
    const int32_t g0 = static_cast<uint32_t>(G * seg) / static_cast<uint32_t>(segs);
    const int32_t g1 = static_cast<uint32_t>(G * (seg + 1)) / static_cast<uint32_t>(segs);
    int32_t b = 0, all = 0;
    if (g1 - g0 <= kRowBatch) {
      int32_t v[kRowBatch];
#pragma unroll
      for (int j = 0; j < kRowBatch; ++j) v[j] = g0 + j < g1 ? row_value(g0 + j, e) : 0;
#pragma unroll
      for (int j = 0; j < kRowBatch; ++j) {
        if (g0 + j < c) b += v[j];
        all += v[j];
      }
    } else {
      for (int32_t g = g0; g < g1; ++g) {
        const int32_t v = row_value(g, e);
        if (g < c) b += v;
        all += v;
      }
    }
    part_before[t] = b;
    part_total[t] = all;
  }
  __syncthreads();
  for (int32_t e = threadIdx.x; e < L; e += kSyncThreads) {
    int32_t b = 0, all = 0;
    for (int32_t seg = 0; seg < segs; ++seg) {
      b += part_before[seg * L + e];
      all += part_total[seg * L + e];
    }
    before[e] = b;
    total[e] = all;
  }
}

// Sorted scatter: the chunk's routes are first put in the chunk's own expert
// order in shared memory (order[lstart[e] + rank] = k | e << 16), then stored
// in that order: the chunk's routes of one expert fill consecutive output
// slots, so consecutive threads store to consecutive slots, where the direct
// scatter stores each route on its own (one memory transaction per route:
// ~15 k cycles for 8192 routes on one SM). Costs a scan of the chunk's counts
// and one more barrier.
__device__ void ScatterSorted(const int32_t* tile, int32_t n, int32_t per, int32_t L,
                              const int32_t* whist, const int32_t* lstart, const int32_t* first,
                              int32_t begin, int32_t* order, int32_t* sorted) {
  for (int32_t k = threadIdx.x; k < n; k += kSyncThreads) {
    const int32_t v = tile[k];
    const int32_t e = v & 0xffff;
    if (e >= L) continue;
    const int32_t w = static_cast<uint32_t>(k) / static_cast<uint32_t>(per);
    order[lstart[e] + whist[w * L + e] + (v >> 16)] = k | (e << 16);  // k < 2^16, e < 2^15
  }
  __syncthreads();
  const int32_t valid = lstart[L];
  for (int32_t i = threadIdx.x; i < valid; i += kSyncThreads) {
    const int32_t u = order[i];
    const int32_t e = u >> 16;
    sorted[first[e] + (i - lstart[e])] = begin + (u & 0xffff);
  }
}

template <typename Id>
__global__ void __launch_bounds__(kSyncThreads)
    AlignGridSyncKernel(AlignCudaArgs a, int32_t chunk, int32_t sorted_scatter) {
  extern __shared__ __align__(16) int32_t smem[];
  __shared__ typename ExpertScan<kSyncThreads>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const int32_t G = static_cast<int32_t>(gridDim.x), c = static_cast<int32_t>(blockIdx.x);
  const ProblemPtrs q = PtrsOf(a);
  // numel <= G * chunk <= 128 * kSmallTile: route indices fit in 32 bits.
  const int32_t numel = static_cast<int32_t>(p.numel);
  const int32_t begin = min(c * chunk, numel);
  const int32_t n = min(begin + chunk, numel) - begin;
  const int W = RankWarps<kSyncThreads>(n, L);
  const int32_t per = RoutesPerWarp(n, W);
  int32_t* before = smem;                  // [L] chunk counts, then routes before the chunk
  int32_t* total = before + L;             // [L] all routes of each expert
  int32_t* pstart = total + L;             // [L + 1] padded starts
  int32_t* part = pstart + (L + 1);        // [2, PartWords(L)] partial row sums
  int32_t* whist = part + 2 * PartWords(L);  // [W, L] per-warp offsets in the chunk
  int32_t* tile = whist + W * L;           // [chunk] lane | rank << 16
  int32_t* lstart = tile + (chunk > 0 ? chunk : 1);  // sorted scatter: [L + 1] chunk starts
  int32_t* order = lstart + (L + 1);                 // sorted scatter: [chunk] k | e << 16

  GRIDSYNC_PHASE(0);
  ForLanes<kSyncItems>(
      static_cast<const Id*>(q.ids), begin, n, p.num_experts, q.expert_map, L,
      [&](int64_t k, int32_t e) {
        if (k < n) tile[k] = e;
      },
      [&] {  // while the loads are in flight
        for (int32_t e = threadIdx.x; e < L; e += kSyncThreads) before[e] = 0;
        for (int32_t k = threadIdx.x; k < W * L; k += kSyncThreads) whist[k] = 0;
      });
  __syncthreads();
  GRIDSYNC_PHASE(1);
  WalkTile(tile, n, per, W, L, whist);
  __syncthreads();
  GRIDSYNC_PHASE(2);
  PrefixOverWarps(whist, W, L, before);  // before[e] := the chunk's count of e
  int32_t* rows = q.workspace;           // [G, L]
  // Publish the chunk's counts (same thread per expert as the prefix).
  for (int32_t e = threadIdx.x; e < L; e += kSyncThreads)
    rows[static_cast<int64_t>(c) * L + e] = before[e];
  // Sorted scatter: the chunk's own expert starts (a block size of 1 pads nothing).
  if (sorted_scatter) {
    __syncthreads();
    ScanExperts<kSyncThreads>(before, L, 1, lstart, scan_tmp);
  }
  GRIDSYNC_PHASE(3);
  // Every CTA's row is written (and, by the barrier's fences, visible) after it.
  cooperative_groups::this_grid().sync();
  GRIDSYNC_PHASE(4);
  // Rows written by other CTAs in this launch: read from L2, not a stale L1 line.
  SumRows([&](int32_t g, int32_t e) { return __ldcg(rows + static_cast<int64_t>(g) * L + e); },
          G, L, c, part, before, total);
  __syncthreads();
  GRIDSYNC_PHASE(5);
  ScanExperts<kSyncThreads>(total, L, p.block_size, pstart, scan_tmp);
  __syncthreads();
  GRIDSYNC_PHASE(6);
  if (c == 0 && threadIdx.x == 0) *q.post_pad = pstart[L];
  FillShare<kSyncThreads>(pstart, total, L, p, q.sorted, q.expert_ids);
  GRIDSYNC_PHASE(7);
  // The chunk's first route of expert e goes to pstart[e] + before[e]; whist
  // holds each warp range's offset inside the chunk.
  for (int32_t e = threadIdx.x; e < L; e += kSyncThreads) before[e] += pstart[e];
  __syncthreads();
  if (sorted_scatter) ScatterSorted(tile, n, per, L, whist, lstart, before, begin, order, q.sorted);
  else ScatterTile(tile, n, per, L, whist, before, begin, q.sorted);
#ifdef JAX_MOE_ALIGN_PHASES
  __syncthreads();  // mark 8: the whole CTA is done
#endif
  GRIDSYNC_PHASE(8);
}

// JAX_MOE_ALIGN_GRIDSYNC=0 (A/B testing, read once per process) turns the path off.
bool GridSyncAllowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("JAX_MOE_ALIGN_GRIDSYNC");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return allowed;
}

// Sizes where the grid sync beats the one-pass kernel (H200, A/B of both in one
// run): from 8192 routes (4096 x 2, E 64: 8.4 vs 9.5 us; 4096 x 8, E 256: 9.5 vs
// 22.7; 65536 x 2, E 64: 10.3 vs 23.9), but not at 8192 routes over more than 256
// experts (1024 x 8, E 1024: 11.7 vs 11.0). Below, the one-pass and single-CTA
// kernels stay (not measured under the grid sync).
bool GridSyncSize(int64_t numel, int32_t L) {
  return numel > 8192 || (numel >= 8192 && L <= 256);
}

// Whether the grid sync scatters through the chunk's expert order (see
// ScatterSorted): for long chunks over many experts, where the direct
// scatter's one transaction per route dominates. Default from 1024 routes per
// chunk and 64 local experts. H100 A/B (busy us, direct -> sorted): 65536 x 8,
// E 256 23.8 -> 18.4, E 1024 35.7 -> 29.5; 16384 x 8, E 256 14.5 -> 13.7; 65536
// x 2, E 64 13.1 -> 12.8; slower with 8 experts (1024 routes per chunk: 9.2 ->
// 9.8) and with 512-route chunks (E 64: 9.7 -> 10.0), whose direct stores come
// in runs already. JAX_MOE_ALIGN_GRIDSYNC_SCATTER = direct | sorted forces one
// (A/B testing, read once per process).
bool SortedScatter(int64_t chunk, int32_t L) {
  static const int mode = [] {
    const char* v = std::getenv("JAX_MOE_ALIGN_GRIDSYNC_SCATTER");
    if (v == nullptr) return 0;
    if (std::strcmp(v, "direct") == 0) return 1;
    return std::strcmp(v, "sorted") == 0 ? 2 : 0;
  }();
  if (mode != 0) return mode == 2;
  return chunk >= 1024 && L >= 64;
}

// CTAs of the current device that can be resident at once running `kernel`
// with `bytes` of dynamic shared memory (0 when cooperative launches are not
// supported or the query fails).
template <typename Kernel>
int64_t CoResidentCtas(Kernel kernel, size_t bytes) {
  int device = 0, coop = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSyncThreads, bytes) !=
          cudaSuccess)
    return 0;
  return coop ? int64_t{sms} * per_sm : 0;
}

// A/B knobs (read once per process; defaults otherwise): an integer variable in
// [lo, hi], else `fallback`.
int64_t EnvInt(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  const long long x = v != nullptr ? std::atoll(v) : 0;
  return x >= lo && x <= hi ? int64_t{x} : fallback;
}

// CTAs (chunks) of a problem: one per kSyncMinChunk routes, and per L routes
// when L is larger (a CTA's row costs every CTA L loads after the barrier:
// H200, 4096 x 8, E 1024 took 14.95 us at 64 CTAs, 14.46 at 32), up to the
// workspace's rows (align_plan::SyncRows), fewer for many experts (each CTA
// reads G * L words after the barrier). For A/B runs,
// JAX_MOE_ALIGN_GRIDSYNC_MIN_CHUNK raises the routes per CTA and
// JAX_MOE_ALIGN_GRIDSYNC_ROW_WORDS moves the G * L cap.
int64_t GridSyncCtas(int64_t numel, int32_t L) {
  static const int64_t min_chunk =
      EnvInt("JAX_MOE_ALIGN_GRIDSYNC_MIN_CHUNK", kSyncMinChunk, kSyncMinChunk, kSmallTile);
  static const int64_t row_words =
      EnvInt("JAX_MOE_ALIGN_GRIDSYNC_ROW_WORDS", kSyncRowWords, 1024, int64_t{1} << 20);
  int64_t g = align_plan::SyncRows(numel);  // the workspace holds this many rows
  const int64_t chunk_at_least = min_chunk > L ? min_chunk : L;
  if (g > CeilDiv(numel, chunk_at_least)) g = CeilDiv(numel, chunk_at_least);
  const int64_t by_rows = row_words / (L > 0 ? L : 1);
  if (g > by_rows) g = by_rows;
  return g < 1 ? 1 : g;
}

// Routes per CTA when G CTAs share numel routes (a multiple of 32: whole warp
// steps).
int64_t SyncChunk(int64_t numel, int64_t G) { return CeilDiv(CeilDiv(numel, G), 32) * 32; }

}  // namespace

#ifdef JAX_MOE_ALIGN_PHASES
int CopyGridSyncPhases(int64_t* out) { return CopyPhaseMarks(g_gridsync_phases, out); }
#endif

cudaError_t LaunchGridSyncAlign(const AlignCudaArgs& a, cudaStream_t stream, bool* launched) {
  *launched = false;
  const AlignProblem& p = a.problem;
  if (!GridSyncAllowed() || !GridSyncSize(p.numel, p.num_local)) return cudaSuccess;
  const int64_t G = GridSyncCtas(p.numel, p.num_local);
  const int64_t chunk = SyncChunk(p.numel, G);
  if (chunk > kSmallTile) return cudaSuccess;
  const bool sorted = SortedScatter(chunk, p.num_local);
  const size_t bytes = SyncSharedBytes(static_cast<int32_t>(chunk), p.num_local, sorted);
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignGridSyncKernel<decltype(id)>;
    cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    if (G * a.batch > CoResidentCtas(kernel, bytes)) return cudaSuccess;  // another path
    cudaLaunchAttribute cooperative;
    cooperative.id = cudaLaunchAttributeCooperative;
    cooperative.val.cooperative = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(G), static_cast<unsigned>(a.batch));
    config.blockDim = dim3(kSyncThreads);
    config.dynamicSmemBytes = bytes;
    config.stream = stream;
    config.attrs = &cooperative;
    config.numAttrs = 1;
    err = cudaLaunchKernelEx(&config, kernel, a, static_cast<int32_t>(chunk),
                             static_cast<int32_t>(sorted));
    *launched = err == cudaSuccess;
    return err;
  });
}

}  // namespace jax_moe
