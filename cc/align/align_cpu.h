// CPU kernel of moe_align_block_size: one problem (no batch dims).
#pragma once

#include <cstdint>

namespace jax_moe {

struct AlignProblem {
  int64_t numel;        // routes
  int64_t num_experts;  // E: ids in [0, E) are in range
  int32_t num_local;    // L: experts in the output
  int64_t block_size;   // bs >= 1
  int64_t padded_len;   // P
  int64_t num_blocks;   // ceil(P / bs)
};

// O(numel + L) counting sort: one pass to count, one scan, one stable pass to
// place (ascending route index inside each expert), sentinel `numel` elsewhere.
// `expert_map` may be null (ids used as is).
template <typename Id>
void AlignCpu(const AlignProblem& p, const Id* ids, const int32_t* expert_map,
              int32_t* sorted_token_ids, int32_t* expert_ids,
              int32_t* num_tokens_post_pad);

}  // namespace jax_moe
