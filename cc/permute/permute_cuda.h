// CUDA launchers of the permute family (kernels in permute_plan.cu,
// permute_rows.cu, unpermute.cu). Host-callable, free of XLA headers; each
// enqueues on `stream` only (no sync, no allocation) and returns the launch
// status from cudaGetLastError.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "permute/permute_shape.h"

namespace jax_moe {

enum class RowType { kF32, kBf16, kF16 };

// route_rows (inverse of sorted_ids, -1 for dropped) and group_sizes.
cudaError_t LaunchPermutePlan(cudaStream_t stream, const PlanShape& s, const int32_t* sorted_ids,
                              const int32_t* expert_ids, int32_t* route_rows,
                              int32_t* group_sizes);

// out[j] = scale[r] * x[r / K], r = sorted_ids[j]; a bitwise copy when scale is
// null; zero rows for empty slots. route_rows (the plan's inverse) lets each
// token row be read once; it is checked against sorted_ids, not trusted.
cudaError_t LaunchPermute(cudaStream_t stream, RowType type, const PermuteShape& s,
                          const void* x, const float* scale, const int32_t* sorted_ids,
                          const int32_t* route_rows, void* out);

// y[t] = sum_k w[t, k] * y_sorted[route_rows[t, k]], float32 in increasing k,
// one thread group per token (deterministic, no atomics). w null: unit weights.
cudaError_t LaunchUnpermute(cudaStream_t stream, RowType type, const PermuteShape& s,
                            const void* y_sorted, const float* weights,
                            const int32_t* route_rows, void* y);

// dw[t, k] = <g[t], y_sorted[route_rows[t, k]]> in float32, one warp per route.
cudaError_t LaunchUnpermuteWgrad(cudaStream_t stream, RowType type, const PermuteShape& s,
                                 const void* g, const void* y_sorted,
                                 const int32_t* route_rows, float* dw);

}  // namespace jax_moe
