// Launch plan of the CUDA ep_route kernels, mirrored by jax_moe/_ep_kernels.py
// (which sizes the device workspace the lowering adds as an extra result).
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace jax_moe {
namespace ep_route_plan {

// Received rows per block: blocks are (local expert, chunk of rows) pairs.
constexpr int64_t kChunkRows = 1024;

JAX_MOE_HD int64_t NumChunks(int64_t M) { return M > 0 ? (M + kChunkRows - 1) / kChunkRows : 1; }

// int32 words: per (expert, chunk) row counts, turned into offsets in place.
JAX_MOE_HD int64_t WorkspaceWords(int64_t M, int64_t El) { return El * NumChunks(M); }

}  // namespace ep_route_plan
}  // namespace jax_moe
