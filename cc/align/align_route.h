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

// Integer dtypes of ids, for kernels that read them through a void pointer (one
// kernel instantiation serves every dtype; the switch is uniform per launch).
enum class IdKind : int32_t { kS8, kS16, kS32, kS64, kU8, kU16, kU32, kU64 };

template <typename Id>
constexpr IdKind IdKindOf() {
  if constexpr (std::is_same_v<Id, int8_t>) return IdKind::kS8;
  else if constexpr (std::is_same_v<Id, int16_t>) return IdKind::kS16;
  else if constexpr (std::is_same_v<Id, int32_t>) return IdKind::kS32;
  else if constexpr (std::is_same_v<Id, int64_t>) return IdKind::kS64;
  else if constexpr (std::is_same_v<Id, uint8_t>) return IdKind::kU8;
  else if constexpr (std::is_same_v<Id, uint16_t>) return IdKind::kU16;
  else if constexpr (std::is_same_v<Id, uint32_t>) return IdKind::kU32;
  else return IdKind::kU64;
}

// AlignLocalExpert of element i of an id array of dtype `kind`.
JAX_MOE_HD int32_t AlignLocalExpertAt(const void* ids, IdKind kind, int64_t i,
                                      int64_t num_experts, const int32_t* expert_map,
                                      int32_t num_local) {
  switch (kind) {
#define JAX_MOE_CASE(K, T) \
  case IdKind::K:          \
    return AlignLocalExpert(static_cast<const T*>(ids)[i], num_experts, expert_map, num_local);
    JAX_MOE_CASE(kS8, int8_t)
    JAX_MOE_CASE(kS16, int16_t)
    JAX_MOE_CASE(kS32, int32_t)
    JAX_MOE_CASE(kS64, int64_t)
    JAX_MOE_CASE(kU8, uint8_t)
    JAX_MOE_CASE(kU16, uint16_t)
    JAX_MOE_CASE(kU32, uint32_t)
    JAX_MOE_CASE(kU64, uint64_t)
#undef JAX_MOE_CASE
  }
  return num_local;
}

JAX_MOE_HD int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace jax_moe
