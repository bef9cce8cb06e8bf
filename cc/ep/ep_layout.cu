// Source-side plan of the EP dispatch on CUDA (contract: EpLayoutCpu in ep_cpu.h).
// One block per destination rank walks the tokens in ascending order with a
// block-wide scan, so slots are assigned exactly as on the CPU (no atomics).
#include <cub/block/block_scan.cuh>

#include "ep/ep_cuda.h"
#include "ep/ep_route.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;

__global__ void EpLayoutKernel(const int32_t* __restrict__ ids, int64_t T, int64_t K,
                               int64_t num_experts, int64_t R, int32_t* __restrict__ send_rows,
                               int32_t* __restrict__ send_local,
                               int32_t* __restrict__ token_index) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  const int64_t r = blockIdx.x;
  const int64_t El = num_experts / R;
  int64_t filled = 0;  // slots of rank r used so far (same value in every thread)
  for (int64_t base = 0; base < T; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    int flag = 0;
    if (t < T) {
      for (int64_t k = 0; k < K; ++k)
        if (EpRankOf(ids[t * K + k], num_experts, El) == r) flag = 1;
    }
    int pos, total;
    Scan(scan_tmp).ExclusiveSum(flag, pos, total);
    if (t < T) {
      const int64_t slot = filled + pos;
      token_index[t * R + r] = flag ? static_cast<int32_t>(r * T + slot) : -1;
      if (flag) {
        send_rows[r * T + slot] = static_cast<int32_t>(t);
        for (int64_t k = 0; k < K; ++k) {
          const int32_t id = ids[t * K + k];
          send_local[(r * T + slot) * K + k] =
              EpRankOf(id, num_experts, El) == r ? static_cast<int32_t>(id - r * El) : -1;
        }
      }
    }
    filled += total;
    __syncthreads();  // scan_tmp is reused
  }
  // Empty slots of rank r.
  for (int64_t j = filled + threadIdx.x; j < T; j += kThreads) {
    send_rows[r * T + j] = -1;
    for (int64_t k = 0; k < K; ++k) send_local[(r * T + j) * K + k] = -1;
  }
}

}  // namespace

cudaError_t LaunchEpLayout(const int32_t* ids, int64_t T, int64_t K, int64_t num_experts,
                           int64_t R, int32_t* send_rows, int32_t* send_local,
                           int32_t* token_index, cudaStream_t stream) {
  if (R <= 0 || T <= 0) return cudaSuccess;  // nothing to plan (results are empty)
  EpLayoutKernel<<<static_cast<unsigned>(R), kThreads, 0, stream>>>(
      ids, T, K, num_experts, R, send_rows, send_local, token_index);
  return cudaGetLastError();
}

}  // namespace jax_moe
