// One-warp CUDA align path: at most kOneWarpMaxRoutes (32) routes, num_local <=
// kWarpRankMaxExperts. One launch, no CTA barrier, nothing in global memory
// but the outputs.
//
// Every warp of the launch ranks all routes itself, one route per lane (cheap
// next to waiting at a barrier for one warp that ranks): the ballots over the
// bits of the lane values give each lane its peers and the lanes of smaller
// experts, so a route's compact position (valid routes of smaller experts,
// then peers in lower lanes) and its expert's first block (the block counts of
// smaller experts, from one ballot per bit of the counts) need no loop over
// experts. Each block holds at least one route, so at most 32 blocks hold
// routes: lane b then describes block b (expert, routes in it, compact
// position of its first route). Warp g writes output slots and block owners
// [g * kWarpSlots, (g + 1) * kWarpSlots) with coalesced stores: a slot's block
// by one division, the block's description by one shuffle, the route by one
// shared load. P (up to 32 * bs) spreads over one warp per kWarpSlots slots.
#include "align/align_device.cuh"
#include "align/align_launch.h"

namespace jax_moe {
namespace {

using namespace align_device;

constexpr int kCtaThreads = 256;
constexpr int kCtaWarps = kCtaThreads / 32;
constexpr int kSlotsPerLane = 4;
constexpr uint32_t kWarpSlots = 32 * kSlotsPerLane;
constexpr int64_t kCtaSlots = int64_t{kCtaWarps} * kWarpSlots;
// Bits of a per-expert block count (<= 32 routes, so <= 32 blocks).
constexpr int kBlockCountBits = 6;

static_assert(kOneWarpMaxRoutes == 32, "one route per lane");
static_assert(kWarpRankMaxExperts < (1 << 16), "experts are packed in 16 bits");

// A run of routes of one expert, packed: expert | routes << 16 | compact
// position of the first << 24 (routes <= 32, positions < 32).
__device__ __forceinline__ uint32_t PackRun(uint32_t expert, uint32_t routes, uint32_t first) {
  return expert | routes << 16 | first << 24;
}
__device__ __forceinline__ uint32_t RunExpert(uint32_t run) { return run & 0xffffu; }
__device__ __forceinline__ uint32_t RunRoutes(uint32_t run) { return (run >> 16) & 0xffu; }
__device__ __forceinline__ uint32_t RunFirst(uint32_t run) { return run >> 24; }

template <typename Id>
__global__ void __launch_bounds__(kCtaThreads) AlignOneWarpKernel(AlignCudaArgs a) {
  __shared__ int32_t route_at[kCtaWarps][32];     // compact position -> route
  __shared__ uint32_t expert_run[kCtaWarps][32];  // first block of an expert -> its run
  const AlignProblem& p = a.problem;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  // P < 2^31: slot numbers fit in 32 bits.
  const uint32_t P = static_cast<uint32_t>(p.padded_len);
  const uint32_t slot0 = (blockIdx.x * kCtaWarps + w) * kWarpSlots;
  // Warp 0 writes num_tokens_post_pad even when P = 0; block owners are
  // numbered like slots (num_blocks <= P).
  if (slot0 > 0 && slot0 >= P) return;

  const ProblemPtrs q = PtrsOf(a);
  const int32_t L = p.num_local;
  const int32_t n = static_cast<int32_t>(p.numel);
  const int32_t e = lane < n ? AlignLocalExpert(static_cast<const Id*>(q.ids)[lane],
                                                p.num_experts, q.expert_map, L)
                             : L;
  unsigned smaller;  // lanes of smaller experts (dropped routes hold L, the largest)
  const unsigned peers = MatchLanes(e, LaneBits(L), &smaller);
  const bool valid = e < L;
  const bool leader = valid && lane == __ffs(peers) - 1;  // lowest lane of its expert
  const uint32_t bs = BlockSize32(p.block_size);
  const uint32_t count = __popc(peers);
  const uint32_t blocks = (count + bs - 1) / bs;  // count <= 32, bs < 2^31: no overflow

  // Blocks of the experts below this lane's (its expert's first block) and of
  // all experts, from one ballot per bit of the leaders' block counts.
  uint32_t first_block = 0, total_blocks = 0;
#pragma unroll
  for (int bit = 0; bit < kBlockCountBits; ++bit) {
    const unsigned plane = __ballot_sync(0xffffffffu, leader && ((blocks >> bit) & 1u));
    first_block += __popc(plane & smaller) << bit;
    total_blocks += __popc(plane) << bit;
  }
  const uint32_t expert_first = __popc(smaller);  // compact position of the expert's first route
  if (valid) route_at[w][expert_first + __popc(peers & LanesBelow())] = lane;
  if (leader) expert_run[w][first_block] = PackRun(e, count, expert_first);
  // First blocks of the experts, as bits (sm_80+ reduction; < 32 for leaders).
  const unsigned starts = __reduce_or_sync(0xffffffffu, leader ? 1u << first_block : 0u);
  __syncwarp();

  // Lane b < total_blocks: the run of block b (its expert's run from the
  // expert's first block on, the highest start <= b).
  uint32_t block_run = 0;
  if (static_cast<uint32_t>(lane) < total_blocks) {
    const unsigned upto = LanesBelow() | (1u << lane);
    const uint32_t first = 31 - __clz(starts & upto);
    const uint32_t run = expert_run[w][first];
    const uint32_t done = (lane - first) * bs;  // routes in the expert's earlier blocks, < count
    block_run = PackRun(RunExpert(run), min(bs, RunRoutes(run) - done), RunFirst(run) + done);
  }
  // total_blocks * bs = num_tokens_post_pad <= P < 2^31.
  const uint32_t total = total_blocks * bs;
  if (slot0 == 0 && lane == 0) *q.post_pad = static_cast<int32_t>(total);

  const int32_t sentinel = n;
  const uint32_t num_blocks = static_cast<uint32_t>(p.num_blocks);
#pragma unroll
  for (int j = 0; j < kSlotsPerLane; ++j) {
    const uint32_t s = slot0 + j * 32 + lane;
    const bool routed = s < total;
    const uint32_t b = routed ? s / bs : 0;  // < total_blocks <= 32
    const uint32_t run = __shfl_sync(0xffffffffu, block_run, b);
    const uint32_t offset = routed ? s - b * bs : bs;  // bs >= routes of any run
    int32_t v = sentinel;
    if (offset < RunRoutes(run)) v = route_at[w][RunFirst(run) + offset];
    if (s < P) q.sorted[s] = v;
    // Block s: below total_blocks (<= 32) only for s == lane in warp 0.
    if (s < num_blocks)
      q.expert_ids[s] = s < total_blocks ? static_cast<int32_t>(RunExpert(block_run)) : -1;
  }
}

}  // namespace

cudaError_t LaunchOneWarpAlign(const AlignCudaArgs& a, cudaStream_t stream) {
  const int64_t ctas = CeilDiv(a.problem.padded_len, kCtaSlots);
  const dim3 grid(static_cast<unsigned>(ctas > 0 ? ctas : 1), static_cast<unsigned>(a.batch));
  return WithIdType(a.id_kind, [&](auto id) {
    AlignOneWarpKernel<decltype(id)><<<grid, kCtaThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
