// What one route contributes to moe_align_block_size, and the output sizes.
// Shared by the CPU and CUDA kernels (and mirrored by jax_moe/align.py's shape
// rule), so every backend agrees on validity and sizes.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/hd.h"

namespace jax_moe {

// Local expert of one route id, or `num_local` when the route is dropped: ids
// outside [0, num_experts), and ids the expert map sends outside [0, num_local).
// The map is read only at in-range ids, so no id can cause an out-of-bounds read.
template <typename Id>
JAX_MOE_HD int32_t AlignLocalExpert(Id id, int64_t num_experts,
                                    const int32_t* expert_map, int32_t num_local) {
  if constexpr (std::is_signed_v<Id>) {
    if (id < 0) return num_local;
  }
  if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_experts)) return num_local;
  const int32_t e = expert_map ? expert_map[static_cast<int64_t>(id)]
                               : static_cast<int32_t>(id);
  return (e >= 0 && e < num_local) ? e : num_local;
}

// P = numel + min(numel, L) * (bs - 1), optionally rounded up to a multiple of bs.
JAX_MOE_HD int64_t AlignPaddedLength(int64_t numel, int64_t num_local,
                                     int64_t block_size, bool pad_sorted_ids) {
  const int64_t busy = numel < num_local ? numel : num_local;
  int64_t p = numel + busy * (block_size - 1);
  if (pad_sorted_ids) p = (p + block_size - 1) / block_size * block_size;
  return p;
}

JAX_MOE_HD int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace jax_moe
