// Warp ranking of a tile of routes staged in shared memory, shared by the
// warp-ranked kernels (align_warp_rank.cu, align_onepass.cu). Warps walk
// contiguous ranges of the tile 32 routes a step, in route order; peers come
// from per-bit ballots (MatchLanes), and a route's rank inside its warp's range
// is stored next to its lane (lane | rank << 16). After a prefix over warps per
// expert, every route is placed independently. Internal to the CUDA module.
#pragma once

#include "align/align_device.cuh"

namespace jax_moe {
namespace align_device {

// Per-warp counters are [W][L] int32 in shared memory; W shrinks as L grows.
constexpr int64_t kWarpCounterWords = 16384;

// Routes a warp walks at most (while warps and counters last): one step of 32
// each. A walk step is a chain of ballots and shared-memory round trips, so
// spreading a tile over more warps shortens the walk more than the longer
// prefix over warps costs. H100 A/B in one call against 128 (the rule before,
// up to 4 steps): faster at every size measured, by 0.35-0.6 us at 128-2048
// routes (128 x 2, E 64: 5.12 -> 4.63; 16 x 8, E 256: 5.35 -> 4.80) and 0.1-0.4
// us above; staged kernel's walk 1.8 k -> 1.2 k cycles. A/B builds may set
// JAX_MOE_ALIGN_WALK_ROUTES (CMake option of the same name).
#ifndef JAX_MOE_ALIGN_WALK_ROUTES
#define JAX_MOE_ALIGN_WALK_ROUTES 32
#endif
constexpr int64_t kWalkRoutes = JAX_MOE_ALIGN_WALK_ROUTES;

// Warps (of a kT-thread CTA) that walk a tile of n routes: enough for
// kWalkRoutes each, within the counter budget. Host and device agree
// (shared-memory size).
template <int kT>
__host__ __device__ inline int RankWarps(int64_t n, int32_t L) {
  int64_t w = (n + kWalkRoutes - 1) / kWalkRoutes;
  const int64_t cap = kWarpCounterWords / (L > 0 ? L : 1);
  if (w > cap) w = cap;
  if (w > kT / 32) w = kT / 32;
  return w < 1 ? 1 : static_cast<int>(w);
}

// Routes per warp range (< 2^16: tiles hold at most kSmallTile routes).
__host__ __device__ inline int32_t RoutesPerWarp(int64_t n, int warps) {
  return static_cast<int32_t>((n + warps - 1) / warps);
}

// Warp w < W walks tile[w * per, (w + 1) * per): afterwards each valid route
// holds lane | rank << 16 (rank among its expert's routes in the warp's range)
// and whist[w][e] (zeroed before) holds the range's count of expert e. Steps
// go in groups of kGroup: the lane loads and peer masks of a group do not
// depend on the counters, so they are computed together (their latencies
// overlap); only the counter updates run step after step.
constexpr int kGroup = 4;

__device__ inline void WalkTile(int32_t* tile, int32_t n, int32_t per, int W, int32_t L,
                         int32_t* whist) {
  const int w = threadIdx.x / 32, lane_id = threadIdx.x & 31;
  if (w >= W) return;
  int32_t* mine = whist + w * L;
  const int32_t lo = w * per, hi = min(lo + per, n);
  const unsigned below = LanesBelow();
  const int bits = LaneBits(L);
  for (int32_t base = lo; base < hi; base += 32 * kGroup) {
    int32_t e[kGroup];
    unsigned peers[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int32_t k = base + 32 * j + lane_id;
      e[j] = k < hi ? tile[k] : L;
    }
    // Steps past the range (warp-uniform: base and hi are the warp's) are
    // skipped: with kWalkRoutes = 32 a range is one step.
#pragma unroll
    for (int j = 0; j < kGroup; ++j) peers[j] = base + 32 * j < hi ? MatchLanes(e[j], bits) : 0u;
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (base + 32 * j >= hi) break;
      const int32_t k = base + 32 * j + lane_id;
      int32_t placed = 0;
      if (e[j] < L) {
        placed = mine[e[j]];
        tile[k] = e[j] | ((placed + __popc(peers[j] & below)) << 16);
      }
      __syncwarp();  // every lane has read mine[] before the leaders advance it
      if (e[j] < L && lane_id == __ffs(peers[j]) - 1) mine[e[j]] = placed + __popc(peers[j]);
      __syncwarp();  // the next step's leader for e may be another lane
    }
  }
}

// Per expert: whist[w][e] := running[e] + counts of warps before w; running[e]
// += the tile's count. Counts are loaded kPrefixBatch warps at a time, all
// before any store (the compiler cannot reorder a load past a store to the
// same array): one shared-memory round trip per batch, not per warp.
constexpr int kPrefixBatch = 8;

__device__ inline void PrefixOverWarps(int32_t* whist, int W, int32_t L, int32_t* running) {
  for (int32_t e = threadIdx.x; e < L; e += blockDim.x) {
    int32_t run = running[e];
    for (int w0 = 0; w0 < W; w0 += kPrefixBatch) {
      int32_t v[kPrefixBatch];
#pragma unroll
      for (int j = 0; j < kPrefixBatch; ++j)
        v[j] = w0 + j < W ? whist[static_cast<int64_t>(w0 + j) * L + e] : 0;
#pragma unroll
      for (int j = 0; j < kPrefixBatch; ++j) {
        if (w0 + j < W) whist[static_cast<int64_t>(w0 + j) * L + e] = run;
        run += v[j];
      }
    }
    running[e] = run;
  }
}

// Route begin + k goes to whist[warp][e] + rank (+ add[e] when add is given).
__device__ inline void ScatterTile(const int32_t* tile, int32_t n, int32_t per, int32_t L,
                            const int32_t* whist, const int32_t* add, int64_t begin,
                            int32_t* sorted) {
  for (int32_t k = threadIdx.x; k < n; k += blockDim.x) {
    const int32_t v = tile[k];
    const int32_t e = v & 0xffff;
    if (e >= L) continue;
    const int32_t w = static_cast<uint32_t>(k) / static_cast<uint32_t>(per);
    int32_t dest = whist[w * L + e] + (v >> 16);
    if (add) dest += add[e];
    sorted[dest] = static_cast<int32_t>(begin + k);
  }
}

}  // namespace align_device
}  // namespace jax_moe
