// CPU kernels of the permute family: one problem each (the handlers loop over
// batch dims). Row math is float32 through half_bits.h, as on CUDA.
#pragma once

#include <cstdint>

#include "permute/permute_shape.h"

namespace jax_moe {

// route_rows [numel] (inverse of sorted_ids, -1 for dropped routes) and
// group_sizes [L] (rows per local expert, padding included).
void PermutePlanCpu(const PlanShape& s, const int32_t* sorted_ids, const int32_t* expert_ids,
                    int32_t* route_rows, int32_t* group_sizes);

// out[j] = scale[r] * x[r / K] for r = sorted_ids[j] (a plain copy when scale is
// null), zero rows for empty slots.
template <typename Fmt>
void PermuteCpu(const PermuteShape& s, const typename Fmt::Storage* x, const float* scale,
                const int32_t* sorted_ids, typename Fmt::Storage* out);

// y[t] = sum_k w[t, k] * y_sorted[route_rows[t, k]] over valid routes, float32
// accumulation in increasing k (w = 1 when weights is null).
template <typename Fmt>
void UnpermuteCpu(const PermuteShape& s, const typename Fmt::Storage* y_sorted,
                  const float* weights, const int32_t* route_rows, typename Fmt::Storage* y);

// dw[t, k] = <g[t], y_sorted[route_rows[t, k]]> in float32, 0 for dropped routes.
template <typename Fmt>
void UnpermuteWgradCpu(const PermuteShape& s, const typename Fmt::Storage* g,
                       const typename Fmt::Storage* y_sorted, const int32_t* route_rows,
                       float* dw);

}  // namespace jax_moe
