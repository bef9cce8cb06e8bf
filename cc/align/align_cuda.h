// CUDA launcher of moe_align_block_size (host-callable, no CUDA kernel code).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "align/align_cpu.h"
#include "align/align_route.h"

namespace jax_moe {

struct AlignCudaArgs {
  AlignProblem problem;
  int64_t batch;            // independent problems (grid.y)
  IdKind id_kind;           // dtype of ids
  const void* ids;          // [batch, numel]
  const int32_t* expert_map;  // [batch, map_stride] or null
  int64_t map_stride;
  int32_t* sorted_token_ids;  // [batch, P]
  int32_t* expert_ids;        // [batch, num_blocks]
  int32_t* num_tokens_post_pad;  // [batch]
  int32_t* workspace;         // [batch, workspace_stride]
  int64_t workspace_stride;
};

// Enqueues the align kernels on `stream`; returns the first launch error.
cudaError_t LaunchAlignCuda(const AlignCudaArgs& args, cudaStream_t stream);

}  // namespace jax_moe
