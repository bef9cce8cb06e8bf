// Gather CUDA align path for small inputs (kOneWarpMaxRoutes < numel <=
// GatherMaxRoutes(), num_local <= kWarpRankMaxExperts): one launch, no
// workspace, no communication between CTAs, every output store coalesced.
//
// Every CTA of a problem ranks ALL its routes (few: ranking them again costs an
// SM less time than waiting for another CTA would) with the warp walk
// (align_walk.cuh), scans the expert starts, and places the routes by expert in
// a compact list in shared memory: compact[ustart[e] + r] = the r-th route of
// expert e. CTA c then writes output slots [c * S, (c + 1) * S) and its share of
// the block owners, gathering: slot s belongs to the expert e whose padded range
// holds it (binary search of the starts), and holds compact[ustart[e] + s -
// pstart[e]] if that is one of e's routes, else the sentinel. P, not numel,
// sets the grid: the padding (up to L * (bs - 1) slots) is most of the output
// when routes are few.
#include <cub/block/block_scan.cuh>

#include <cstdlib>

#include "align/align_device.cuh"
#include "align/align_launch.h"
#include "align/align_walk.cuh"

namespace jax_moe {
namespace {

using namespace align_device;

constexpr int kGatherThreads = 512;
// Loads in flight per thread while staging (2048 routes in one round).
constexpr int kGatherItems = 4;
// Output slots per CTA: 4 stores per thread, so each thread's binary searches
// (about log2(L) dependent shared loads) overlap in one unrolled batch.
constexpr int64_t kGatherSlotsPerCta = 4 * kGatherThreads;
// CTAs per problem at most: past that (P above 256 K slots, block sizes in the
// thousands) each CTA loops over more slots instead of ranking the routes again.
constexpr int64_t kGatherMaxCtas = 128;

static_assert(kGatherMaxRoutesCap < (1 << 16), "ranks are packed in 16 bits");

// Shared words: counts [L] | ustart [L + 1] | pstart [L + 1] | whist [W, L] |
// tile [n] | compact [n].
size_t GatherSharedBytes(int64_t n, int32_t L) {
  const int64_t words = 3 * int64_t{L} + 2 + int64_t{RankWarps<kGatherThreads>(n, L)} * L +
                        2 * (n > 0 ? n : 1);
  return static_cast<size_t>(words) * sizeof(int32_t);
}

template <typename Id>
__global__ void __launch_bounds__(kGatherThreads)
    AlignGatherKernel(AlignCudaArgs a, uint32_t slots_per_cta) {
  extern __shared__ __align__(16) int32_t smem[];
  __shared__ typename cub::BlockScan<long long, kGatherThreads>::TempStorage scan_tmp;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const int32_t n = static_cast<int32_t>(p.numel);  // <= GatherMaxRoutes()
  const ProblemPtrs q = PtrsOf(a);
  const int W = RankWarps<kGatherThreads>(n, L);
  const int32_t per = RoutesPerWarp(n, W);
  int32_t* counts = smem;                               // [L] routes per expert
  int32_t* ustart = counts + L;                         // [L + 1] compact starts
  int32_t* pstart = ustart + (L + 1);                   // [L + 1] padded starts
  int32_t* whist = pstart + (L + 1);                    // [W, L] per-warp counts
  int32_t* tile = whist + W * L;                        // [n] lane | rank << 16
  int32_t* compact = tile + (n > 0 ? n : 1);            // [n] routes by expert

  for (int32_t e = threadIdx.x; e < L; e += kGatherThreads) counts[e] = 0;
  for (int32_t k = threadIdx.x; k < W * L; k += kGatherThreads) whist[k] = 0;
  ForLanes<kGatherItems>(static_cast<const Id*>(q.ids), 0, n, p.num_experts, q.expert_map, L,
                         [&](int64_t k, int32_t e) {
                           if (k < n) tile[k] = e;
                         });
  __syncthreads();
  WalkTile(tile, n, per, W, L, whist);
  __syncthreads();
  PrefixOverWarps(whist, W, L, counts);  // counts[e] := expert e's total
  __syncthreads();
  ScanExperts<kGatherThreads>(counts, L, p.block_size, ustart, pstart, scan_tmp);
  __syncthreads();
  for (int32_t k = threadIdx.x; k < n; k += kGatherThreads) {
    const int32_t v = tile[k];
    const int32_t e = v & 0xffff;
    if (e < L) compact[ustart[e] + whist[(k / per) * L + e] + (v >> 16)] = k;
  }
  __syncthreads();

  // P < 2^31 (checked at trace time): slots and blocks fit in 32 bits.
  const uint32_t total = static_cast<uint32_t>(pstart[L]);  // num_tokens_post_pad
  if (blockIdx.x == 0 && threadIdx.x == 0) *q.post_pad = static_cast<int32_t>(total);
  const int32_t sentinel = n;
  const uint32_t P = static_cast<uint32_t>(p.padded_len);
  const uint32_t s0 = blockIdx.x * slots_per_cta;
  const uint32_t s1 = min(s0 + slots_per_cta, P);
#pragma unroll 4
  for (uint32_t s = s0 + threadIdx.x; s < s1; s += kGatherThreads) {
    int32_t v = sentinel;
    if (s < total) {
      const int32_t e = OwnerOfSlot(pstart, L, s);
      const uint32_t r = s - static_cast<uint32_t>(pstart[e]);
      if (r < static_cast<uint32_t>(counts[e])) v = compact[ustart[e] + r];
    }
    q.sorted[s] = v;
  }
  BlockOwnersShare<kGatherThreads>(pstart, L, p, q.expert_ids);
}

}  // namespace

// JAX_MOE_ALIGN_GATHER (A/B testing, read once per process): "0" turns the
// path off; a number in [33, kGatherMaxRoutesCap] sets its largest input.
int64_t GatherMaxRoutes() {
  static const int64_t max_routes = [] {
    const char* v = std::getenv("JAX_MOE_ALIGN_GATHER");
    if (v == nullptr) return kGatherMaxRoutes;
    const long long r = std::atoll(v);
    if (r == 0) return int64_t{0};
    return r > kOneWarpMaxRoutes && r <= kGatherMaxRoutesCap ? int64_t{r} : kGatherMaxRoutes;
  }();
  return max_routes;
}

cudaError_t LaunchGatherAlign(const AlignCudaArgs& a, cudaStream_t stream) {
  const AlignProblem& p = a.problem;
  int64_t ctas = CeilDiv(p.padded_len, kGatherSlotsPerCta);
  ctas = ctas < 1 ? 1 : (ctas > kGatherMaxCtas ? kGatherMaxCtas : ctas);
  // P < 2^31: a CTA's slot count and first slot fit in 32 bits.
  const uint32_t slots = static_cast<uint32_t>(CeilDiv(p.padded_len, ctas));
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(a.batch));
  const size_t bytes = GatherSharedBytes(p.numel, p.num_local);
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignGatherKernel<decltype(id)>;
    const cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kGatherThreads, bytes, stream>>>(a, slots);
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
