// Launch plan of the CUDA align kernels. jax_moe/_align_cuda_plan.py mirrors the
// workspace size; the handler checks the workspace it gets is large enough.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace jax_moe {
namespace align_plan {

// Multi-block path, sort ranking: CTAs of kThreads x kItems routes per tile.
constexpr int kThreads = 256;
constexpr int kItems = 16;
constexpr int64_t kTile = kThreads * kItems;
constexpr int64_t kMaxCtas = 128;

// Single-block path (one launch): up to kSmallTile routes and kSmallMaxExperts
// local experts (per-expert tables live in shared memory).
constexpr int kSmallThreads = 1024;
constexpr int kSmallItems = 8;
constexpr int64_t kSmallTile = kSmallThreads * kSmallItems;
constexpr int kTinyThreads = 256;
constexpr int kTinyItems = 4;
constexpr int64_t kTinyTile = kTinyThreads * kTinyItems;
constexpr int64_t kSmallMaxExperts = 4096;

// Routes per CTA of the multi-block path until kMaxCtas CTAs: fewer than a
// sort tile, so that mid sizes (32K routes) spread over 16 SMs.
constexpr int64_t kCtaRoutes = 2048;

JAX_MOE_HD int64_t NumCtas(int64_t numel) {
  int64_t g = (numel + kCtaRoutes - 1) / kCtaRoutes;
  return g < 1 ? 1 : (g > kMaxCtas ? kMaxCtas : g);
}

// Routes per CTA (the same in the histogram and scatter kernels).
JAX_MOE_HD int64_t CtaChunk(int64_t numel, int64_t ctas) { return (numel + ctas - 1) / ctas; }

// Grid-sync path (align_gridsync.cu): CTAs publish their chunk's expert counts
// as rows [G, L] of the workspace, G <= SyncRows(numel): one row per
// kSyncMinChunk routes, at most kMaxCtas.
constexpr int64_t kSyncMinChunk = 512;

JAX_MOE_HD int64_t SyncRows(int64_t numel) {
  int64_t g = (numel + kSyncMinChunk - 1) / kSyncMinChunk;
  return g < 1 ? 1 : (g > kMaxCtas ? kMaxCtas : g);
}

// Workspace (int32 words): offsets [G, L] | starts [L + 1] | counts [L] for the
// multi-block path; rows [G', L] for the grid-sync path (SyncRows >= NumCtas).
JAX_MOE_HD int64_t WorkspaceWords(int64_t numel, int64_t num_local) {
  return SyncRows(numel) * num_local + 2 * num_local + 1;
}

}  // namespace align_plan
}  // namespace jax_moe
