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

// Local expert owning block b of expert_ids, or -1 for a block of no group (the
// unused blocks, and any id outside [0, L)).
JAX_MOE_HD int32_t BlockGroup(const int32_t* expert_ids, int64_t b, int64_t num_local) {
  const int32_t id = expert_ids[b];
  return id >= 0 && id < num_local ? id : -1;
}

// group_sizes[e] = block_size * (blocks owned by e): the rows of local expert e
// in x_sorted (its routes plus block padding; a valid plan's blocks of e are
// contiguous). The tail rows from num_tokens_post_pad to P belong to no group.
// Defined by counting, so that any expert_ids, however corrupt, gives one answer
// on every backend.

}  // namespace jax_moe
