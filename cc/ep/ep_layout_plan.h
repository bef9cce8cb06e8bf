// Launch plan of the CUDA ep_layout kernels, mirrored by jax_moe/_ep_kernels.py
// (which sizes the device workspace the lowering adds as an extra result).
//
// Tokens are cut into tiles (kTileTokens, or one tile of up to kSingleTokens
// tokens when T is small: one launch, no counts). Consecutive tiles form a chunk,
// one CTA per (chunk, group of up to kRankGroup ranks). The write kernel of chunk
// c sums the per-chunk counts of every chunk for its ranks (start and total), so
// chunks are capped at kMaxPrefixWords / group: that sum stays a few loads per
// thread, and long inputs get several tiles per chunk instead.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace jax_moe {
namespace ep_layout_plan {

constexpr int64_t kTileTokens = 64;       // tokens per tile (two 32-bit ballot words)
constexpr int64_t kSingleTokens = 256;    // T up to this: one tile, one CTA, one launch
constexpr int64_t kRankGroup = 64;        // ranks per CTA: one uint64 rank mask per token
constexpr int64_t kMaxPrefixWords = 4096; // chunks * group, bounds the prefix sum
constexpr int64_t kThreadsPerToken = 4;   // threads sharing a token's K routes

JAX_MOE_HD int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tokens per tile: a multiple of 32 (whole ballot words), at most kSingleTokens.
JAX_MOE_HD int64_t TileTokens(int64_t T) {
  if (T <= kSingleTokens) return T <= 32 ? 32 : CeilDiv(T, 32) * 32;
  return kTileTokens;
}

JAX_MOE_HD int64_t NumTiles(int64_t T) { return T > 0 ? CeilDiv(T, TileTokens(T)) : 1; }

JAX_MOE_HD int64_t Group(int64_t R) { return R < kRankGroup ? R : kRankGroup; }

JAX_MOE_HD int64_t NumGroups(int64_t R) { return CeilDiv(R, kRankGroup); }

JAX_MOE_HD int64_t TilesPerChunk(int64_t T, int64_t R) {
  int64_t max_chunks = kMaxPrefixWords / (Group(R) > 0 ? Group(R) : 1);
  if (max_chunks < 1) max_chunks = 1;
  return CeilDiv(NumTiles(T), max_chunks);
}

JAX_MOE_HD int64_t NumChunks(int64_t T, int64_t R) {
  return CeilDiv(NumTiles(T), TilesPerChunk(T, R));
}

// int32 words: per (rank, chunk) counts of tokens sent, rank-major.
JAX_MOE_HD int64_t WorkspaceWords(int64_t T, int64_t R) { return R * NumChunks(T, R); }

}  // namespace ep_layout_plan
}  // namespace jax_moe
