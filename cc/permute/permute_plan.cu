// CUDA kernels of the permute plan: route_rows (inverse of sorted_token_ids) and
// group_sizes. Two launches on one stream: every route is first marked dropped,
// then each occupied slot writes its row into its (unique) route. No atomics:
// a valid plan has each route in at most one slot.
#include "permute/permute_cuda.h"
#include "permute/row_launch.cuh"

namespace jax_moe {
namespace {

__global__ void PlanInitKernel(PlanShape s, const int32_t* __restrict__ expert_ids,
                               int32_t* __restrict__ route_rows,
                               int32_t* __restrict__ group_sizes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < s.batch * s.numel; i += stride) route_rows[i] = -1;
  for (int64_t i = first; i < s.batch * s.num_local; i += stride) {
    const int64_t b = i / s.num_local;
    group_sizes[i] = GroupSize(expert_ids + b * s.num_blocks, s, i - b * s.num_local);
  }
}

__global__ void PlanInvertKernel(PlanShape s, const int32_t* __restrict__ sorted_ids,
                                 int32_t* __restrict__ route_rows) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < s.batch * s.rows; i += stride) {
    const int64_t b = i / s.rows;
    const int32_t r = sorted_ids[i];
    if (ValidRoute(r, s.numel)) route_rows[b * s.numel + r] = static_cast<int32_t>(i - b * s.rows);
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
    PlanInitKernel<<<FlatBlocks(init), kBlockThreads, 0, stream>>>(s, expert_ids, route_rows,
                                                                   group_sizes);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (s.batch * s.rows > 0 && s.numel > 0) {
    PlanInvertKernel<<<FlatBlocks(s.batch * s.rows), kBlockThreads, 0, stream>>>(s, sorted_ids,
                                                                               route_rows);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace jax_moe
