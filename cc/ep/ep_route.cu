// Receiver-side plan of the EP dispatch on CUDA (contract: EpRouteCpu in ep_cpu.h).
// Two passes of one block per local expert: count the rows naming the expert,
// then place them in received-row order with a block-wide scan. Deterministic,
// no atomics; the expert's start is the sum of the counts before it.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "ep/ep_cuda.h"
#include "ep/ep_route.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;

// Route k of row m owns the row's copy for expert e: it names e and no earlier
// route of the row does. Returns that k, or -1.
__device__ __forceinline__ int64_t FirstRouteOf(const int32_t* __restrict__ recv_local,
                                                int64_t m, int64_t K, int32_t e) {
  for (int64_t k = 0; k < K; ++k)
    if (recv_local[m * K + k] == e) return k;
  return -1;
}

__global__ void EpRouteCountKernel(const int32_t* __restrict__ recv_local, int64_t M, int64_t K,
                                   int32_t* __restrict__ counts) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int32_t e = blockIdx.x;
  int mine = 0;
  for (int64_t m = threadIdx.x; m < M; m += kThreads)
    mine += FirstRouteOf(recv_local, m, K, e) >= 0;
  const int total = Reduce(tmp).Sum(mine);
  if (threadIdx.x == 0) counts[e] = total;
}

__global__ void EpRoutePlaceKernel(const int32_t* __restrict__ recv_local, int64_t M, int64_t K,
                                   int64_t El, int64_t mode, int64_t N,
                                   const int32_t* __restrict__ counts,
                                   int32_t* __restrict__ recv_index, int32_t* __restrict__ row_src,
                                   int32_t* __restrict__ group_sizes,
                                   int32_t* __restrict__ dropped) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Reduce::TempStorage red_tmp;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ long long start_shared;
  const int32_t e = blockIdx.x;

  // Start row of expert e and (block 0) the total routed rows.
  long long before = 0, all = 0;
  for (int64_t i = threadIdx.x; i < El; i += kThreads) {
    all += counts[i];
    if (i < e) before += counts[i];
  }
  const long long start_sum = Reduce(red_tmp).Sum(before);
  __syncthreads();
  const long long total = Reduce(red_tmp).Sum(all);
  if (threadIdx.x == 0) {
    const long long start = mode == kEpLowLatency ? static_cast<long long>(e) * M : start_sum;
    start_shared = start;
    long long room = N - start;
    room = room < 0 ? 0 : room;
    group_sizes[e] = static_cast<int32_t>(
        mode == kEpLowLatency ? counts[e] : (counts[e] < room ? counts[e] : room));
    if (e == 0) {
      const long long over = mode == kEpLowLatency ? 0 : total - N;
      dropped[0] = static_cast<int32_t>(over > 0 ? over : 0);
    }
  }
  __syncthreads();
  const long long start = start_shared;

  long long placed = 0;
  for (int64_t base = 0; base < M; base += kThreads) {
    const int64_t m = base + threadIdx.x;
    const int64_t k = m < M ? FirstRouteOf(recv_local, m, K, e) : -1;
    int pos, chunk;
    Scan(scan_tmp).ExclusiveSum(k >= 0 ? 1 : 0, pos, chunk);
    if (k >= 0) {
      const long long n = start + placed + pos;
      if (n < N) {  // past the capacity (normal mode): dropped, counted above
        recv_index[m * K + k] = static_cast<int32_t>(n);
        row_src[n] = static_cast<int32_t>(m);
      }
    }
    placed += chunk;
    __syncthreads();
  }
}

}  // namespace

cudaError_t LaunchEpRoute(const int32_t* recv_local, int64_t M, int64_t K, int64_t El,
                          int64_t mode, int64_t N, int32_t* recv_index, int32_t* row_src,
                          int32_t* counts, int32_t* group_sizes, int32_t* dropped,
                          cudaStream_t stream) {
  // -1 everywhere first (all bytes 0xff); the place pass writes the used entries.
  cudaError_t err = cudaMemsetAsync(recv_index, 0xff, sizeof(int32_t) * M * K, stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(row_src, 0xff, sizeof(int32_t) * N, stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(dropped, 0, sizeof(int32_t), stream);
  if (err != cudaSuccess) return err;
  if (El <= 0) return cudaSuccess;
  EpRouteCountKernel<<<static_cast<unsigned>(El), kThreads, 0, stream>>>(recv_local, M, K,
                                                                         counts);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  EpRoutePlaceKernel<<<static_cast<unsigned>(El), kThreads, 0, stream>>>(
      recv_local, M, K, El, mode, N, counts, recv_index, row_src, group_sizes, dropped);
  return cudaGetLastError();
}

}  // namespace jax_moe
