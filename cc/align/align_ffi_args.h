// Decoding and checking the align custom call's buffers; shared by the CPU and
// CUDA handlers. Leading `num_batch_dims` dims of every operand and result are
// batch dims (vmap); the rest describe one problem.
#pragma once

#include <cstdint>
#include <string>

#include "align/align_cpu.h"
#include "align/align_route.h"
#include "common/ffi_helpers.h"

namespace jax_moe {

struct AlignBatch {
  AlignProblem problem;
  int64_t batch;          // problems
  int64_t map_stride;     // elements between the expert maps of two problems (0: no map)
};

inline ffi::Error DecodeAlignArgs(ffi::AnyBuffer ids, ffi::Buffer<ffi::S32> expert_map,
                                  ffi::Result<ffi::Buffer<ffi::S32>>& sorted_ids,
                                  ffi::Result<ffi::Buffer<ffi::S32>>& expert_ids,
                                  ffi::Result<ffi::Buffer<ffi::S32>>& post_pad,
                                  int64_t num_batch_dims, int64_t num_experts,
                                  int64_t num_local_experts, int64_t block_size,
                                  bool pad_sorted_ids, AlignBatch* out) {
  const std::string op = "moe_align_block_size";
  const auto ids_dims = ids.dimensions();
  const auto map_dims = expert_map.dimensions();
  const size_t nb = static_cast<size_t>(num_batch_dims);
  if (num_batch_dims < 0 || ids_dims.size() < nb || map_dims.size() != nb + 1)
    return InvalidArgument(op, "operand ranks disagree with num_batch_dims");
  if (num_experts < 1 || num_local_experts < 1 || block_size < 1)
    return InvalidArgument(op, "num_experts, num_local_experts and block_size must be >= 1");
  for (size_t i = 0; i < nb; ++i)
    if (map_dims[i] != ids_dims[i]) return InvalidArgument(op, "expert_map batch dims differ from topk_ids'");
  const int64_t map_len = map_dims[nb];
  if (map_len != 0 && map_len != num_experts)
    return InvalidArgument(op, "expert_map must hold num_experts entries");

  AlignBatch& b = *out;
  b.batch = DimProduct(ids_dims, 0, nb);
  b.map_stride = map_len;
  AlignProblem& p = b.problem;
  p.numel = DimProduct(ids_dims, nb, ids_dims.size());
  p.num_experts = num_experts;
  p.num_local = static_cast<int32_t>(num_local_experts);
  p.block_size = block_size;
  p.padded_len = AlignPaddedLength(p.numel, num_local_experts, block_size, pad_sorted_ids);
  p.num_blocks = CeilDiv(p.padded_len, block_size);
  if (p.padded_len >= (int64_t{1} << 31))
    return InvalidArgument(op, "padded length does not fit in int32");
  if (sorted_ids->element_count() != b.batch * p.padded_len ||
      expert_ids->element_count() != b.batch * p.num_blocks ||
      post_pad->element_count() != b.batch)
    return InvalidArgument(op, "result shapes disagree with the operands");
  return ffi::Error::Success();
}

}  // namespace jax_moe
