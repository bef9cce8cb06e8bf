// Sizes of one permute problem and the index rules every backend shares.
//
// Routes r = t*K + k in [0, numel); rows j in [0, P) of x_sorted. The plan links
// them both ways: sorted_token_ids[j] = r (anything outside [0, numel) marks an
// empty row) and route_rows[r] = j (anything outside [0, P) marks a dropped
// route). Kernels test every index they read against these ranges, so no plan,
// however corrupt, can make them read or write out of bounds.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace jax_moe {

struct PermuteShape {
  int64_t batch;   // independent problems (vmapped leading dims)
  int64_t tokens;  // T
  int64_t topk;    // K
  int64_t hidden;  // H: elements per row
  int64_t rows;    // P: rows of x_sorted
  JAX_MOE_HD int64_t numel() const { return tokens * topk; }
};

struct PlanShape {
  int64_t batch;       // independent problems
  int64_t numel;       // routes (T * K)
  int64_t rows;        // P: length of sorted_token_ids
  int64_t num_blocks;  // length of expert_ids
  int64_t num_local;   // L: length of group_sizes
  int64_t block_size;  // bs
};

JAX_MOE_HD bool ValidRoute(int32_t r, int64_t numel) { return r >= 0 && r < numel; }
JAX_MOE_HD bool ValidRow(int32_t j, int64_t rows) { return j >= 0 && j < rows; }

// First block whose expert is >= e. Blocks come in increasing expert order with
// the unused (-1) blocks last (align.md), so keying -1 (and any id outside
// [0, L)) as L gives a non-decreasing sequence to bisect.
JAX_MOE_HD int64_t FirstBlockOf(const int32_t* expert_ids, int64_t num_blocks,
                                int64_t e, int64_t num_local) {
  int64_t lo = 0, hi = num_blocks;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const int32_t id = expert_ids[mid];
    const int64_t key = (id >= 0 && id < num_local) ? id : num_local;
    if (key < e) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Rows of local expert e in x_sorted (its routes plus block padding). The tail
// rows from num_tokens_post_pad to P belong to no group.
JAX_MOE_HD int32_t GroupSize(const int32_t* expert_ids, const PlanShape& s, int64_t e) {
  const int64_t blocks = FirstBlockOf(expert_ids, s.num_blocks, e + 1, s.num_local) -
                         FirstBlockOf(expert_ids, s.num_blocks, e, s.num_local);
  return static_cast<int32_t>(blocks * s.block_size);
}

}  // namespace jax_moe
