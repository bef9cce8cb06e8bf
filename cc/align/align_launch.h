// Launchers of the CUDA align kernels by ranking strategy; LaunchAlignCuda
// (align.cu) picks the path. Host-callable, no kernel code.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "align/align_cuda.h"

namespace jax_moe {

// Warp ranking (align_warp_rank.cu), for num_local <= kWarpRankMaxExperts.
constexpr int32_t kWarpRankMaxExperts = 1024;
// One warp's worth of routes (align_tiny.cu), num_local <= kWarpRankMaxExperts:
// one launch without CTA barriers, every warp ranks all routes itself.
constexpr int64_t kOneWarpMaxRoutes = 32;
cudaError_t LaunchOneWarpAlign(const AlignCudaArgs& a, cudaStream_t stream);
// One cooperative launch with one grid barrier (align_gridsync.cu), num_local <=
// kWarpRankMaxExperts, chunks of <= kSmallTile routes per CTA. Sets *launched to
// false (and launches nothing) below its sizes (GridSyncSize), when the grid
// could not be co-resident, the chunks would be too long, or
// JAX_MOE_ALIGN_GRIDSYNC=0.
cudaError_t LaunchGridSyncAlign(const AlignCudaArgs& a, cudaStream_t stream, bool* launched);
// One launch of several CTAs without inter-CTA communication (align_onepass.cu),
// kOnePassMinRoutes < numel <= kOnePassMaxRoutes, num_local <= kWarpRankMaxExperts
// (and the exception in align.cu's UseOnePass): every CTA counts all routes and
// ranks its own chunk of <= 256. Above, every CTA would count more than 32768
// routes (64 per thread) and read numel * CTAs ids from L2, growing with numel
// squared.
constexpr int64_t kOnePassMinRoutes = 512;
constexpr int64_t kOnePassMaxRoutes = 32768;
cudaError_t LaunchOnePassAlign(const AlignCudaArgs& a, cudaStream_t stream);
// One launch for numel <= align_plan::kSmallTile.
cudaError_t LaunchWarpRankSmall(const AlignCudaArgs& a, cudaStream_t stream);
// Step (3) of the multi-block path: scatter by the first `ctas` CTAs, padding
// by the rest.
cudaError_t LaunchWarpRankScatter(const AlignCudaArgs& a, int64_t ctas, cudaStream_t stream);

// Tile radix sort ranking (align_sort.cu), any num_local.
// One launch for numel <= kSmallTile and num_local <= kSmallMaxExperts.
cudaError_t LaunchSortSmall(const AlignCudaArgs& a, cudaStream_t stream);
cudaError_t LaunchSortScatter(const AlignCudaArgs& a, int64_t ctas, cudaStream_t stream);

}  // namespace jax_moe
