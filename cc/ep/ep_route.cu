// Receiver-side plan of the EP dispatch on CUDA (contract: EpRouteCpu in ep_cpu.h).
// Blocks are (local expert e, chunk c of received rows) pairs, three passes:
//   count:  rows of chunk c naming e                      -> hist[e][c]
//   scan:   per expert, exclusive scan over chunks         -> hist[e][c] = offset, counts[e]
//           (skipped when there is one chunk: count writes offset 0 and counts[e])
//   place:  block-wide scan inside the chunk, + offset + start of e (sum of the
//           counts before e, or e*M in low_latency mode)  -> recv_index, row_src
// Deterministic (no atomics), identical to the CPU's sequential placement.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "ep/ep_cuda.h"
#include "ep/ep_route.h"
#include "ep/ep_route_plan.h"

namespace jax_moe {
namespace {

constexpr int kThreads = 256;
using ep_route_plan::kChunkRows;

// Route k of row m owns the row's copy for expert e: it names e and no earlier
// route of the row does. Returns that k, or -1. Scans backwards without an early
// exit so the K loads are independent and issue together (latency-bound kernel).
__device__ __forceinline__ int64_t FirstRouteOf(const int32_t* __restrict__ recv_local,
                                                int64_t m, int64_t K, int32_t e) {
  int64_t first = -1;
  for (int64_t k = K - 1; k >= 0; --k)
    if (recv_local[m * K + k] == e) first = k;
  return first;
}

__global__ void EpRouteCountKernel(const int32_t* __restrict__ recv_local, int64_t M, int64_t K,
                                   int64_t chunks, int32_t* __restrict__ hist,
                                   int32_t* __restrict__ counts) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int32_t e = blockIdx.y;
  const int64_t c = blockIdx.x;
  const int64_t end = (c + 1) * kChunkRows < M ? (c + 1) * kChunkRows : M;
  int mine = 0;
  for (int64_t m = c * kChunkRows + threadIdx.x; m < end; m += kThreads)
    mine += FirstRouteOf(recv_local, m, K, e) >= 0;
  const int total = Reduce(tmp).Sum(mine);
  if (threadIdx.x == 0) {
    if (chunks == 1) {  // the scan would be trivial: done here, one launch less
      hist[e] = 0;
      counts[e] = total;
    } else {
      hist[e * chunks + c] = total;
    }
  }
}

__global__ void EpRouteScanKernel(int64_t chunks, int32_t* __restrict__ hist,
                                  int32_t* __restrict__ counts) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int32_t e = blockIdx.x;
  int32_t* h = hist + e * chunks;
  int running = 0;  // same value in every thread
  for (int64_t base = 0; base < chunks; base += kThreads) {
    const int64_t c = base + threadIdx.x;
    const int v = c < chunks ? h[c] : 0;
    int off, total;
    Scan(tmp).ExclusiveSum(v, off, total);
    if (c < chunks) h[c] = running + off;
    running += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) counts[e] = running;
}

__global__ void EpRoutePlaceKernel(const int32_t* __restrict__ recv_local, int64_t M, int64_t K,
                                   int64_t El, int64_t mode, int64_t N, int64_t chunks,
                                   const int32_t* __restrict__ hist,
                                   const int32_t* __restrict__ counts,
                                   int32_t* __restrict__ recv_index, int32_t* __restrict__ row_src,
                                   int32_t* __restrict__ group_sizes,
                                   int32_t* __restrict__ dropped) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Reduce::TempStorage red_tmp;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ long long start_shared;
  const int32_t e = blockIdx.y;
  const int64_t c = blockIdx.x;

  // Start row of expert e (and, in block (0, 0), the totals).
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
    if (c == 0) {
      long long room = N - start;
      room = room < 0 ? 0 : room;
      group_sizes[e] = static_cast<int32_t>(
          mode == kEpLowLatency ? counts[e] : (counts[e] < room ? counts[e] : room));
      if (e == 0) {
        const long long over = mode == kEpLowLatency ? 0 : total - N;
        dropped[0] = static_cast<int32_t>(over > 0 ? over : 0);
      }
    }
  }
  __syncthreads();
  const long long start = start_shared + hist[e * chunks + c];

  const int64_t end = (c + 1) * kChunkRows < M ? (c + 1) * kChunkRows : M;
  long long placed = 0;  // same value in every thread
  for (int64_t base = c * kChunkRows; base < end; base += kThreads) {
    const int64_t m = base + threadIdx.x;
    const int64_t k = m < end ? FirstRouteOf(recv_local, m, K, e) : -1;
    int pos, step;
    Scan(scan_tmp).ExclusiveSum(k >= 0 ? 1 : 0, pos, step);
    if (k >= 0) {
      const long long n = start + placed + pos;
      if (n < N) {  // past the capacity (normal mode): dropped, counted above
        recv_index[m * K + k] = static_cast<int32_t>(n);
        row_src[n] = static_cast<int32_t>(m);
      }
    }
    placed += step;
    __syncthreads();
  }
}

}  // namespace

cudaError_t LaunchEpRoute(const int32_t* recv_local, int64_t M, int64_t K, int64_t El,
                          int64_t mode, int64_t N, int32_t* recv_index, int32_t* row_src,
                          int32_t* counts, int32_t* group_sizes, int32_t* dropped,
                          int32_t* workspace, cudaStream_t stream) {
  // -1 everywhere first (all bytes 0xff); the place pass writes the used entries.
  cudaError_t err = cudaSuccess;
  if (M * K > 0) err = cudaMemsetAsync(recv_index, 0xff, sizeof(int32_t) * M * K, stream);
  if (err == cudaSuccess && N > 0)
    err = cudaMemsetAsync(row_src, 0xff, sizeof(int32_t) * N, stream);
  if (err != cudaSuccess) return err;
  const int64_t chunks = ep_route_plan::NumChunks(M);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(El));
  EpRouteCountKernel<<<grid, kThreads, 0, stream>>>(recv_local, M, K, chunks, workspace,
                                                    counts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (chunks > 1) {
    EpRouteScanKernel<<<static_cast<unsigned>(El), kThreads, 0, stream>>>(chunks, workspace,
                                                                          counts);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  EpRoutePlaceKernel<<<grid, kThreads, 0, stream>>>(recv_local, M, K, El, mode, N, chunks,
                                                    workspace, counts, recv_index, row_src,
                                                    group_sizes, dropped);
  return cudaGetLastError();
}

}  // namespace jax_moe
