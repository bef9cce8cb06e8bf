// CUDA kernels of the permute plan: route_rows (inverse of sorted_token_ids) and
// group_sizes. Two flat launches on one stream: every route is first marked
// dropped and every group emptied, then each occupied slot writes its row into
// its (unique) route, and each run of blocks of one expert adds its length to
// the expert's group: -first*bs at the run's first block, +(last+1)*bs at its
// last. Integer atomics, at most two per run, so the sums are exact and
// deterministic; they equal the CPU's block count for any expert_ids (a valid
// plan has one run per expert). No bisection: its chain of ~30 dependent loads
// per expert was the plan's critical path.
#include "permute/permute_cuda.h"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

__global__ void PlanInitKernel(PlanShape s, int32_t* __restrict__ route_rows,
                               int32_t* __restrict__ group_sizes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < s.batch * s.numel; i += stride) route_rows[i] = -1;
  for (int64_t i = first; i < s.batch * s.num_local; i += stride) group_sizes[i] = 0;
}

__global__ void PlanInvertKernel(PlanShape s, const int32_t* __restrict__ sorted_ids,
                                 const int32_t* __restrict__ expert_ids,
                                 int32_t* __restrict__ route_rows,
                                 int32_t* __restrict__ group_sizes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < s.batch * s.rows; i += stride) {
    const int64_t b = i / s.rows;
    const int32_t r = sorted_ids[i];
    if (ValidRoute(r, s.numel)) route_rows[b * s.numel + r] = static_cast<int32_t>(i - b * s.rows);
  }
  for (int64_t i = first; i < s.batch * s.num_blocks; i += stride) {
    const int64_t b = i / s.num_blocks;
    const int64_t k = i - b * s.num_blocks;
    const int32_t* ids = expert_ids + b * s.num_blocks;
    const int32_t e = BlockGroup(ids, k, s.num_local);
    if (e < 0) continue;
    // Sums are taken mod 2^32 (unsigned): (k+1)*bs may pass INT32_MAX by less
    // than bs while the group's total, at most P, never does.
    unsigned* gs = reinterpret_cast<unsigned*>(group_sizes + b * s.num_local + e);
    if (k == 0 || BlockGroup(ids, k - 1, s.num_local) != e)
      atomicAdd(gs, static_cast<unsigned>(-k * s.block_size));
    if (k + 1 == s.num_blocks || BlockGroup(ids, k + 1, s.num_local) != e)
      atomicAdd(gs, static_cast<unsigned>((k + 1) * s.block_size));
  }
}

unsigned FlatBlocks(int64_t n) {
  int64_t blocks = (n + kBlockThreads - 1) / kBlockThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

cudaError_t LaunchPermutePlan(cudaStream_t stream, const PlanShape& s, const int32_t* sorted_ids,
                              const int32_t* expert_ids, int32_t* route_rows,
                              int32_t* group_sizes) {
  const int64_t init = s.batch * (s.numel > s.num_local ? s.numel : s.num_local);
  if (init > 0) {
    PlanInitKernel<<<FlatBlocks(init), kBlockThreads, 0, stream>>>(s, route_rows, group_sizes);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const int64_t work = s.batch * (s.rows > s.num_blocks ? s.rows : s.num_blocks);
  if (work > 0 && (s.numel > 0 || s.num_local > 0)) {
    PlanInvertKernel<<<FlatBlocks(work), kBlockThreads, 0, stream>>>(s, sorted_ids, expert_ids,
                                                                    route_rows, group_sizes);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace jax_moe
