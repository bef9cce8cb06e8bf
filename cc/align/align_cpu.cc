#include "align/align_cpu.h"

#include <algorithm>
#include <vector>

#include "align/align_route.h"

namespace jax_moe {

template <typename Id>
void AlignCpu(const AlignProblem& p, const Id* ids, const int32_t* expert_map,
              int32_t* sorted_token_ids, int32_t* expert_ids,
              int32_t* num_tokens_post_pad) {
  const int32_t L = p.num_local;
  const int64_t bs = p.block_size;
  const int32_t sentinel = static_cast<int32_t>(p.numel);

  // Lane L collects dropped routes; it is never placed.
  std::vector<int32_t> lane(p.numel);
  std::vector<int64_t> cursor(static_cast<size_t>(L) + 1, 0);
  for (int64_t i = 0; i < p.numel; ++i) {
    lane[i] = AlignLocalExpert(ids[i], p.num_experts, expert_map, L);
    ++cursor[lane[i]];
  }

  std::fill(sorted_token_ids, sorted_token_ids + p.padded_len, sentinel);
  std::fill(expert_ids, expert_ids + p.num_blocks, -1);
  int64_t start = 0;
  for (int32_t e = 0; e < L; ++e) {
    const int64_t count = cursor[e];
    const int64_t padded = CeilDiv(count, bs) * bs;
    std::fill(expert_ids + start / bs, expert_ids + (start + padded) / bs, e);
    cursor[e] = start;  // from here on: the next free slot of expert e
    start += padded;
  }
  *num_tokens_post_pad = static_cast<int32_t>(start);

  for (int64_t i = 0; i < p.numel; ++i) {
    const int32_t e = lane[i];
    if (e < L) sorted_token_ids[cursor[e]++] = static_cast<int32_t>(i);
  }
}

#define JAX_MOE_INSTANTIATE(Id)                                                  \
  template void AlignCpu<Id>(const AlignProblem&, const Id*, const int32_t*,    \
                             int32_t*, int32_t*, int32_t*);
JAX_MOE_INSTANTIATE(int8_t)
JAX_MOE_INSTANTIATE(int16_t)
JAX_MOE_INSTANTIATE(int32_t)
JAX_MOE_INSTANTIATE(int64_t)
JAX_MOE_INSTANTIATE(uint8_t)
JAX_MOE_INSTANTIATE(uint16_t)
JAX_MOE_INSTANTIATE(uint32_t)
JAX_MOE_INSTANTIATE(uint64_t)
#undef JAX_MOE_INSTANTIATE

}  // namespace jax_moe
