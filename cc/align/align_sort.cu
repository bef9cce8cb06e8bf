// Sort-ranked CUDA align kernels (any number of local experts).
//
// A tile of routes is sorted stably by local-expert lane with a block radix
// sort; a route's rank is its distance to the start of its lane's run, so each
// expert's routes land in ascending route index, as in the CPU kernel. Used
// when num_local is too large for warp ranking (align_warp_rank.cu), or when
// JAX_MOE_ALIGN_RANKING=sort asks for it (A/B tests).
#include <cub/block/block_discontinuity.cuh>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "align/align_device.cuh"
#include "align/align_launch.h"

namespace jax_moe {
namespace {

using namespace align_device;

// Own functor: CCCL 3 removed cub::Inequality.
struct NotEqual {
  __device__ __forceinline__ bool operator()(uint32_t a, uint32_t b) const { return a != b; }
};

// One tile of routes sorted by lane, stably. Thread t ends up with sorted
// positions t*kItems + j: lane, route index, rank inside its lane's run in this
// tile, and whether it is the run's last item.
template <int kT, int kI>
struct TileSorter {
  using Sort = cub::BlockRadixSort<uint32_t, kT, kI, int32_t>;
  using Disc = cub::BlockDiscontinuity<uint32_t, kT>;
  using Scan = cub::BlockScan<int32_t, kT>;
  union Storage {
    typename Sort::TempStorage sort;
    typename Disc::TempStorage disc;
    typename Scan::TempStorage scan;
  };

  uint32_t lane[kI];
  int32_t route[kI];
  int32_t rank[kI];
  int tail[kI];

  template <typename Id>
  __device__ void Run(Storage& s, const Id* ids, int64_t begin, int64_t end,
                      int64_t num_experts, const int32_t* expert_map, int32_t num_local,
                      int lane_bits) {
    const int t = threadIdx.x;
#pragma unroll
    for (int j = 0; j < kI; ++j) {
      const int64_t i = begin + static_cast<int64_t>(t) * kI + j;
      lane[j] = i < end ? static_cast<uint32_t>(AlignLocalExpert(ids[i], num_experts,
                                                                 expert_map, num_local))
                        : static_cast<uint32_t>(num_local);
      route[j] = static_cast<int32_t>(i);
    }
    Sort(s.sort).Sort(lane, route, 0, lane_bits);
    __syncthreads();
    int head[kI];
    Disc(s.disc).FlagHeadsAndTails(head, tail, lane, NotEqual());
    __syncthreads();
    int32_t head_pos[kI];
#pragma unroll
    for (int j = 0; j < kI; ++j) head_pos[j] = head[j] ? t * kI + j : 0;
    Scan(s.scan).InclusiveScan(head_pos, head_pos, MaxOp());
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kI; ++j) rank[j] = t * kI + j - head_pos[j];
  }
};

// ---- small path: one launch ----------------------------------------------
// CTA 0 sorts the (single) tile and scatters the routes; CTAs 1.. fill the
// padding. Every CTA recomputes the tiny histogram and expert scan itself, so
// no CTA waits for another.

template <int kT, int kI>
union SmallStorage {
  typename TileSorter<kT, kI>::Storage tile;
  typename ExpertScan<kT>::TempStorage expert_scan;
};

template <int kT, int kI>
size_t SmallSharedBytes(int32_t num_local) {
  return sizeof(SmallStorage<kT, kI>) + 2 * (static_cast<size_t>(num_local) + 1) * sizeof(int32_t);
}

template <typename Id, int kT, int kI>
__global__ void __launch_bounds__(kT) AlignSmallKernel(AlignCudaArgs a, int lane_bits) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto& s = *reinterpret_cast<SmallStorage<kT, kI>*>(smem);
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  int32_t* counts = reinterpret_cast<int32_t*>(smem + sizeof(SmallStorage<kT, kI>));
  int32_t* pstart = counts + (L + 1);
  const ProblemPtrs q = PtrsOf(a);
  const Id* ids = static_cast<const Id*>(q.ids);

  for (int32_t e = threadIdx.x; e <= L; e += kT) counts[e] = 0;
  __syncthreads();
  CountRoutes(ids, 0, p.numel, p.num_experts, q.expert_map, L, counts);
  __syncthreads();
  ScanExperts<kT>(counts, L, p.block_size, pstart, s.expert_scan);
  __syncthreads();
  if (blockIdx.x > 0) {
    FillPadding(blockIdx.x - 1, gridDim.x - 1, pstart, counts, L, p, q.sorted, q.expert_ids);
    return;
  }
  if (threadIdx.x == 0) *q.post_pad = pstart[L];
  TileSorter<kT, kI> tile;
  tile.Run(s.tile, ids, 0, p.numel, p.num_experts, q.expert_map, L, lane_bits);
#pragma unroll
  for (int j = 0; j < kI; ++j)
    if (tile.lane[j] < static_cast<uint32_t>(L)) q.sorted[pstart[tile.lane[j]] + tile.rank[j]] = tile.route[j];
}

// (3) CTAs [0, ctas) scatter their routes, tile by tile in route order; the
// CTAs after them fill the padding slots and block owners.
template <typename Id>
__global__ void __launch_bounds__(kThreads) AlignScatterKernel(AlignCudaArgs a, int64_t ctas,
                                                               int lane_bits) {
  __shared__ typename TileSorter<kThreads, kItems>::Storage storage;
  const AlignProblem& p = a.problem;
  const int32_t L = p.num_local;
  const ProblemPtrs q = PtrsOf(a);
  const Workspace w = WorkspaceOf(q.workspace, ctas, L);
  if (FillAsPaddingWorker(p, q, w, ctas)) return;
  int32_t* offsets = w.offsets + blockIdx.x * static_cast<int64_t>(L);  // this CTA's row
  const int64_t chunk = CtaChunk(p.numel, ctas);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = min(begin + chunk, p.numel);
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    TileSorter<kThreads, kItems> tile;
    tile.Run(storage, static_cast<const Id*>(q.ids), t0, min(t0 + kTile, end), p.num_experts,
             q.expert_map, L, lane_bits);
    int32_t run_end[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const uint32_t e = tile.lane[j];
      run_end[j] = 0;
      if (e < static_cast<uint32_t>(L)) {
        const int32_t base = w.pstart[e] + offsets[e];
        q.sorted[base + tile.rank[j]] = tile.route[j];
        run_end[j] = offsets[e] + tile.rank[j] + 1;
      }
    }
    __syncthreads();  // every read of offsets[] for this tile is done
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      if (tile.tail[j] && tile.lane[j] < static_cast<uint32_t>(L)) offsets[tile.lane[j]] = run_end[j];
    __syncthreads();  // global writes of this CTA are visible to it from here on
  }
}

template <int kT, int kI>
cudaError_t LaunchSmall(const AlignCudaArgs& a, cudaStream_t stream) {
  const size_t bytes = SmallSharedBytes<kT, kI>(a.problem.num_local);
  const dim3 grid(static_cast<unsigned>(1 + FillCtas(a.problem.padded_len)),
                  static_cast<unsigned>(a.batch));
  return WithIdType(a.id_kind, [&](auto id) {
    auto kernel = AlignSmallKernel<decltype(id), kT, kI>;
    const cudaError_t err = AllowSharedBytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kT, bytes, stream>>>(a, LaneBits(a.problem.num_local));
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t LaunchSortSmall(const AlignCudaArgs& a, cudaStream_t stream) {
  if (a.problem.numel <= kTinyTile) return LaunchSmall<kTinyThreads, kTinyItems>(a, stream);
  return LaunchSmall<kSmallThreads, kSmallItems>(a, stream);
}

cudaError_t LaunchSortScatter(const AlignCudaArgs& a, int64_t ctas, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ctas + FillCtas(a.problem.padded_len)),
                  static_cast<unsigned>(a.batch));
  return WithIdType(a.id_kind, [&](auto id) {
    AlignScatterKernel<decltype(id)><<<grid, kThreads, 0, stream>>>(a, ctas,
                                                                    LaneBits(a.problem.num_local));
    return cudaGetLastError();
  });
}

}  // namespace jax_moe
