// Source-side plan of the EP dispatch on CUDA (contract: EpLayoutCpu in ep_cpu.h).
// One block per destination rank walks the tokens in ascending order with a
// block-wide scan, so slots are assigned exactly as on the CPU (no atomics).
// Latency-bound metadata: a thread takes kPerThread consecutive tokens per tile,
// so a tile is 4096 tokens and T = 4096 needs one load round and one scan
// (instead of one per 256 tokens); the rank test is a range compare, no division.
#include <cub/block/block_scan.cuh>

#include "ep/ep_cuda.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 1024;
constexpr int kPerThread = 4;
constexpr int64_t kTile = static_cast<int64_t>(kThreads) * kPerThread;

__global__ void __launch_bounds__(kThreads)
    EpLayoutKernel(const int32_t* __restrict__ ids, int64_t T, int64_t K, int64_t num_experts,
                   int64_t R, int32_t* __restrict__ send_rows, int32_t* __restrict__ send_local,
                   int32_t* __restrict__ token_index) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  const int64_t r = blockIdx.x;
  const int64_t El = num_experts / R;
  // Expert id e is on rank r iff lo <= e < hi (ids outside [0, E) never are).
  const int64_t lo = r * El, hi = lo + El;
  int64_t filled = 0;  // slots of rank r used so far (same value in every thread)
  for (int64_t base = 0; base < T; base += kTile) {
    const int64_t t0 = base + static_cast<int64_t>(threadIdx.x) * kPerThread;
    unsigned flags = 0;  // bit p: token t0 + p goes to rank r
#pragma unroll
    for (int p = 0; p < kPerThread; ++p) {
      const int64_t t = t0 + p;
      if (t >= T) break;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t id = ids[t * K + k];
        if (id >= lo && id < hi) flags |= 1u << p;
      }
    }
    int pos, total;
    Scan(scan_tmp).ExclusiveSum(__popc(flags), pos, total);
    int64_t slot = filled + pos;
#pragma unroll
    for (int p = 0; p < kPerThread; ++p) {
      const int64_t t = t0 + p;
      if (t >= T) break;
      const bool sent = (flags >> p) & 1u;
      token_index[t * R + r] = sent ? static_cast<int32_t>(r * T + slot) : -1;
      if (!sent) continue;
      send_rows[r * T + slot] = static_cast<int32_t>(t);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t id = ids[t * K + k];
        send_local[(r * T + slot) * K + k] = id >= lo && id < hi ? static_cast<int32_t>(id - lo) : -1;
      }
      ++slot;
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
