// Source-side plan of the EP dispatch on CUDA (contract: EpLayoutCpu in ep_cpu.h).
//
// The tokens are cut into tiles, consecutive tiles into chunks (ep_layout_plan.h);
// one CTA per (chunk, group of up to 64 ranks), two launches:
//   count: per rank, tokens of the chunk sent there       -> workspace[r][chunk]
//   write: start of the chunk on rank r = sum of the earlier chunks' counts, then
//          per tile a ballot per rank gives each token its slot (tokens in
//          ascending order: slot = start + tokens before it in the tile), and the
//          chunk's share of the empty slots [filled_r, T) is set to -1.
// With one chunk (T <= 256) the count launch is skipped: start is 0 and the
// running count is the total. Positions come from ballots and prefix sums only
// (no atomics): the same slots as the CPU's sequential loop.
//
// Why this shape: the old kernel had one CTA per rank walking all T*K ids serially
// (58 us at T=4096, R=8). Here each CTA loads its tile's ids once, coalesced, into
// shared memory and handles all ranks of its group from them, and the outputs are
// spread over T/64 CTAs. kThreadsPerToken adjacent threads share a token: its K
// routes, its token_index row and its send_local rows.
#include <cstdint>

#include "ep/ep_cuda.h"
#include "ep/ep_layout_plan.h"

namespace jax_moe {
namespace {

namespace plan = ep_layout_plan;

constexpr int kMaxTile = static_cast<int>(plan::kSingleTokens);  // tokens of the largest tile
constexpr int kMaxWords = kMaxTile / 32;                          // ballot words per rank
constexpr int kGroup = static_cast<int>(plan::kRankGroup);
constexpr int kTpt = static_cast<int>(plan::kThreadsPerToken);
constexpr int kMaxThreads = kMaxTile * kTpt;
// A tile's ids are staged in shared memory up to this many words (32 KB, under the
// 48 KB a launch gets without opting in); larger K reads them from global memory.
constexpr int64_t kMaxStageWords = 8192;
static_assert(kTpt == 4, "BuildTile ORs a token's marks over 4 adjacent lanes");
static_assert(kGroup == 64, "one uint64 rank mask per token");
static_assert(plan::kTileTokens % 32 == 0 && plan::kTileTokens <= kMaxTile, "whole words");

struct Problem {
  const int32_t* ids;
  int64_t T, K, E, R, El;
  uint32_t el32;  // El clamped to 32 bits (see RankOf)
  int64_t tile, tiles, tiles_per_chunk, chunks;
  bool staged;
};

// Shared state of one (tile, rank group); g indexes ranks r0 + g.
struct TileState {
  unsigned long long tok_mask[kMaxTile];  // bit g: the token goes to rank r0 + g
  uint32_t word[kGroup][kMaxWords];       // bit l of word w: token 32w + l goes to r0 + g
  int32_t word_before[kGroup][kMaxWords]; // tokens of words < w going to r0 + g
  int32_t tile_count[kGroup];             // tokens of the tile going to r0 + g
};

// EpRankOf (ep_route.h) with a 32-bit division: a valid id is < 2^31, so when
// El does not fit in 32 bits the quotient is 0 with the clamped divisor too.
__device__ __forceinline__ int64_t RankOf(int32_t id, const Problem& p) {
  if (id < 0 || static_cast<int64_t>(id) >= p.E) return -1;
  return static_cast<uint32_t>(id) / p.el32;
}

// Marks the ranks [r0, r0 + G) of tokens [t0, t0 + n) and ballots them into
// per-rank words. Returns where the tile's ids are read (shared memory when
// staged, else global). Ends with the block synchronized.
__device__ const int32_t* BuildTile(const Problem& p, int64_t t0, int64_t n, int64_t r0, int G,
                                    int32_t* stage, TileState& s) {
  const int32_t* src = p.ids + t0 * p.K;
  if (p.staged) {  // one coalesced pass over the tile's n*K ids
    for (int64_t i = threadIdx.x; i < n * p.K; i += blockDim.x) stage[i] = src[i];
    src = stage;
    __syncthreads();
  }
  const int t = threadIdx.x / kTpt, part = threadIdx.x % kTpt;  // t < tile always
  unsigned long long m = 0;
  if (t < n) {
    for (int64_t k = part; k < p.K; k += kTpt) {
      const int64_t g = RankOf(src[t * p.K + k], p) - r0;
      if (g >= 0 && g < G) m |= 1ull << g;
    }
  }
  m |= __shfl_xor_sync(0xffffffffu, m, 1);  // the token's 4 threads are adjacent lanes
  m |= __shfl_xor_sync(0xffffffffu, m, 2);
  if (part == 0) s.tok_mask[t] = m;
  __syncthreads();
  // Warp-uniform loop over (rank, word) pairs: one ballot each.
  const int words = static_cast<int>(p.tile / 32);
  const int lane = threadIdx.x % 32;
  for (int q = threadIdx.x / 32; q < G * words; q += blockDim.x / 32) {
    const int g = q / words, w = q % words;
    const unsigned b = __ballot_sync(0xffffffffu, (s.tok_mask[w * 32 + lane] >> g) & 1ull);
    if (lane == 0) s.word[g][w] = b;
  }
  __syncthreads();
  if (threadIdx.x < G) {
    int before = 0;
    for (int w = 0; w < words; ++w) {
      s.word_before[threadIdx.x][w] = before;
      before += __popc(s.word[threadIdx.x][w]);
    }
    s.tile_count[threadIdx.x] = before;
  }
  __syncthreads();
  return src;
}

struct ChunkPos {
  int64_t c, r0, first_tile, end_tile;
  int G;
};

__device__ __forceinline__ ChunkPos PosOf(const Problem& p) {
  ChunkPos q;
  q.c = blockIdx.x % p.chunks;
  q.r0 = static_cast<int64_t>(blockIdx.x / p.chunks) * kGroup;
  q.G = static_cast<int>(p.R - q.r0 < kGroup ? p.R - q.r0 : kGroup);
  q.first_tile = q.c * p.tiles_per_chunk;
  q.end_tile = q.first_tile + p.tiles_per_chunk < p.tiles ? q.first_tile + p.tiles_per_chunk
                                                          : p.tiles;
  return q;
}

__device__ __forceinline__ int64_t TileLen(const Problem& p, int64_t t0) {
  return p.T - t0 < p.tile ? p.T - t0 : p.tile;
}

__global__ void __launch_bounds__(kMaxThreads)
    EpLayoutCountKernel(Problem p, int32_t* __restrict__ counts) {
  extern __shared__ int32_t stage[];
  __shared__ TileState s;
  const ChunkPos q = PosOf(p);
  int total = 0;  // thread g < G: tokens of the chunk going to rank r0 + g
  for (int64_t tile = q.first_tile; tile < q.end_tile; ++tile) {
    const int64_t t0 = tile * p.tile;
    BuildTile(p, t0, TileLen(p, t0), q.r0, q.G, stage, s);
    // tile_count is rewritten only after the next tile's first barriers.
    if (threadIdx.x < q.G) total += s.tile_count[threadIdx.x];
  }
  if (threadIdx.x < q.G) counts[(q.r0 + threadIdx.x) * p.chunks + q.c] = total;
}

__global__ void __launch_bounds__(kMaxThreads)
    EpLayoutWriteKernel(Problem p, const int32_t* __restrict__ counts,
                        int32_t* __restrict__ send_rows, int32_t* __restrict__ send_local,
                        int32_t* __restrict__ token_index) {
  extern __shared__ int32_t stage[];
  __shared__ TileState s;
  __shared__ int32_t start[kGroup];  // next free slot of rank r0 + g
  __shared__ int32_t total[kGroup];  // slots used on rank r0 + g (chunks > 1)
  const ChunkPos q = PosOf(p);
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (p.chunks > 1) {
    // A warp per rank sums the chunks' counts: those before this chunk and all.
    for (int g = threadIdx.x / 32; g < q.G; g += warps) {
      const int32_t* row = counts + (q.r0 + g) * p.chunks;
      int before = 0, all = 0;
      for (int64_t j = lane; j < p.chunks; j += 32) {
        const int v = row[j];
        all += v;
        before += j < q.c ? v : 0;
      }
      for (int d = 16; d > 0; d /= 2) {
        before += __shfl_xor_sync(0xffffffffu, before, d);
        all += __shfl_xor_sync(0xffffffffu, all, d);
      }
      if (lane == 0) {
        start[g] = before;
        total[g] = all;
      }
    }
  } else if (threadIdx.x < q.G) {
    start[threadIdx.x] = 0;
  }
  // (BuildTile's barriers order these before their first use.)

  const int t = threadIdx.x / kTpt, part = threadIdx.x % kTpt;
  for (int64_t tile = q.first_tile; tile < q.end_tile; ++tile) {
    const int64_t t0 = tile * p.tile, n = TileLen(p, t0);
    const int32_t* src = BuildTile(p, t0, n, q.r0, q.G, stage, s);
    if (t < n) {
      const unsigned long long m = s.tok_mask[t];
      const int w = t / 32;
      const unsigned below = (1u << (t % 32)) - 1u;  // earlier tokens of the word
      const int64_t tok = t0 + t;
      // Slot of this token on rank r0 + g (valid when bit g of m is set).
      auto slot = [&](int g) {
        return static_cast<int64_t>(start[g]) + s.word_before[g][w] +
               __popc(s.word[g][w] & below);
      };
      // token_index row: the group's ranks split over the token's threads.
      for (int g = part; g < q.G; g += kTpt) {
        const int64_t r = q.r0 + g;
        token_index[tok * p.R + r] =
            (m >> g) & 1ull ? static_cast<int32_t>(r * p.T + slot(g)) : -1;
      }
      // One send_local row per rank the token goes to, its K entries split over
      // the token's threads (routes elsewhere are -1).
      for (unsigned long long left = m; left; left &= left - 1) {
        const int g = __ffsll(static_cast<long long>(left)) - 1;
        const int64_t r = q.r0 + g, row = r * p.T + slot(g), lo = r * p.El;
        if (part == 0) send_rows[row] = static_cast<int32_t>(tok);
        for (int64_t k = part; k < p.K; k += kTpt) {
          const int32_t id = src[t * p.K + k];
          send_local[row * p.K + k] = id >= lo && id < lo + p.El ? static_cast<int32_t>(id - lo)
                                                                 : -1;
        }
      }
    }
    __syncthreads();  // every thread is done with start and the tile state
    if (threadIdx.x < q.G) start[threadIdx.x] += s.tile_count[threadIdx.x];
  }
  __syncthreads();

  // Empty slots: this chunk takes the slots [c_lo, c_hi) of every rank of the
  // group (the same span as its tokens) and clears those past the rank's total.
  const int64_t span = p.tiles_per_chunk * p.tile;
  const int64_t c_lo = q.c * span, c_hi = c_lo + span < p.T ? c_lo + span : p.T;
  for (int g = 0; g < q.G; ++g) {
    const int64_t filled = p.chunks > 1 ? total[g] : start[g];
    const int64_t lo = filled > c_lo ? filled : c_lo;
    if (lo >= c_hi) continue;
    const int64_t base = (q.r0 + g) * p.T;
    for (int64_t i = base + lo + threadIdx.x; i < base + c_hi; i += blockDim.x) send_rows[i] = -1;
    for (int64_t i = (base + lo) * p.K + threadIdx.x; i < (base + c_hi) * p.K; i += blockDim.x)
      send_local[i] = -1;
  }
}

}  // namespace

cudaError_t LaunchEpLayout(const int32_t* ids, int64_t T, int64_t K, int64_t num_experts,
                           int64_t R, int32_t* send_rows, int32_t* send_local,
                           int32_t* token_index, int32_t* workspace, cudaStream_t stream) {
  if (R <= 0 || T <= 0) return cudaSuccess;  // nothing to plan (results are empty)
  Problem p;
  p.ids = ids;
  p.T = T;
  p.K = K;
  p.E = num_experts;
  p.R = R;
  p.El = num_experts / R;
  p.el32 = p.El > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(p.El);
  p.tile = plan::TileTokens(T);
  p.tiles = plan::NumTiles(T);
  p.tiles_per_chunk = plan::TilesPerChunk(T, R);
  p.chunks = plan::NumChunks(T, R);
  p.staged = p.tile * K <= kMaxStageWords;
  const int64_t blocks = p.chunks * plan::NumGroups(R);
  if (p.El < 1 || blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const unsigned threads = static_cast<unsigned>(p.tile * kTpt);
  const size_t smem = p.staged ? static_cast<size_t>(p.tile * K) * sizeof(int32_t) : 0;
  if (p.chunks > 1) {
    EpLayoutCountKernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(p, workspace);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  EpLayoutWriteKernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
      p, workspace, send_rows, send_local, token_index);
  return cudaGetLastError();
}

}  // namespace jax_moe
