// Launch geometry and vector types shared by the permute family's row kernels.
//
// A row of H elements is cut into "units": 16-byte vectors when every row
// pointer is 16-byte aligned (row bytes % 16 == 0 and aligned bases), single
// elements otherwise. A 256-thread block covers rows_per_block rows (or
// tokens) with threads_per_row threads each, so narrow rows still fill warps;
// grids are capped and kernels grid-stride.
//
// Bandwidth comes from bytes in flight: a DRAM round trip is ~1 us under load,
// so every thread issues all the loads of one step (several units, or the K
// route rows of a token) before it uses any of them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace jax_moe {

// N elements of storage type S, loaded and stored as one access.
template <typename S, int N>
struct alignas(sizeof(S) * N) Vec {
  S v[N];
};

constexpr int kBlockThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
// Routes of one token whose rows a thread loads at once (register budget: 8
// 16-byte vectors = 32 registers). Tokens with more routes go in chunks.
constexpr int kRouteChunk = 8;

struct RowGeometry {
  dim3 block;  // (threads per row, rows per block)
  dim3 grid;
};

// Threads per row: the smallest power of two giving each thread at most
// `per_thread` units, capped at a block, so one row (token) is a short work
// item and the grid's last wave is short too. Rows wider than a block take
// several passes of one unit per thread; a group half as wide that divides the
// row exactly is preferred, so that no pass runs with idle threads (H 7168
// bf16 = 896 units: 7 passes of 128 threads, not 3.5 of 256).
inline RowGeometry RowsGeometry(int64_t rows, int64_t units_per_row, int per_thread = 1) {
  int tpr = 1;
  while (static_cast<int64_t>(tpr) * per_thread < units_per_row && tpr < kBlockThreads) tpr <<= 1;
  while (per_thread == 1 && tpr > 32 && units_per_row > tpr && units_per_row % tpr != 0 &&
         units_per_row % (tpr / 2) == 0)
    tpr >>= 1;
  const int rpb = kBlockThreads / tpr;
  int64_t blocks = (rows + rpb - 1) / rpb;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return {dim3(tpr, rpb), dim3(static_cast<unsigned>(blocks))};
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Elements per 16-byte vector when rows of `hidden` elements of `elem_bytes`
// can use them (with all the given bases aligned), else 1.
inline bool RowsVectorizable(int64_t hidden, int elem_bytes, const void* a, const void* b,
                             const void* c = nullptr) {
  return (hidden * elem_bytes) % 16 == 0 && Aligned16(a) && Aligned16(b) &&
         (c == nullptr || Aligned16(c));
}

}  // namespace jax_moe
