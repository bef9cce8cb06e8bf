// CUDA launchers of the expert-parallel kernels (ep_*.cu). Same contracts as the
// CPU kernels in ep_cpu.h, bit-identical results. Each launches on `stream`
// only, never synchronizes, allocates nothing (CUDA-graph safe), and returns
// the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace jax_moe {

enum class EpRowType { kF32, kBf16, kF16 };

cudaError_t LaunchEpLayout(const int32_t* ids, int64_t T, int64_t K, int64_t num_experts,
                           int64_t R, int32_t* send_rows, int32_t* send_local,
                           int32_t* token_index, int32_t* workspace, cudaStream_t stream);

cudaError_t LaunchEpRoute(const int32_t* recv_local, int64_t M, int64_t K, int64_t El,
                          int64_t mode, int64_t N, int32_t* recv_index, int32_t* row_src,
                          int32_t* counts, int32_t* group_sizes, int32_t* dropped,
                          int32_t* workspace, cudaStream_t stream);

cudaError_t LaunchEpGather(const void* in, int64_t num_in, int64_t row_bytes,
                           const int32_t* rows, int64_t num_out, void* out, cudaStream_t stream);

cudaError_t LaunchEpPackFp8(EpRowType type, const void* x, int64_t num_in, int64_t H,
                            const int32_t* rows, int64_t num_out, uint8_t* q, float* scales,
                            cudaStream_t stream);

cudaError_t LaunchEpCombine(EpRowType type, const void* y, int64_t N, int64_t H,
                            const int32_t* index, const float* w, int64_t M, int64_t J,
                            void* out, cudaStream_t stream);

}  // namespace jax_moe
