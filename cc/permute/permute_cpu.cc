#include "permute/permute_cpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/half_bits.h"

#include "common/no_fp_contract.h"  // the kernels below: no FMA contraction

namespace jax_moe {

void PermutePlanCpu(const PlanShape& s, const int32_t* sorted_ids, const int32_t* expert_ids,
                    int32_t* route_rows, int32_t* group_sizes) {
  std::fill(route_rows, route_rows + s.numel, -1);
  for (int64_t j = 0; j < s.rows; ++j) {
    const int32_t r = sorted_ids[j];
    if (ValidRoute(r, s.numel)) route_rows[r] = static_cast<int32_t>(j);
  }
  // Counting blocks (permute_shape.h), as the CUDA kernel's run boundaries do.
  std::fill(group_sizes, group_sizes + s.num_local, 0);
  for (int64_t b = 0; b < s.num_blocks; ++b) {
    const int32_t e = BlockGroup(expert_ids, b, s.num_local);
    if (e >= 0) group_sizes[e] += static_cast<int32_t>(s.block_size);
  }
}

template <typename Fmt>
void PermuteCpu(const PermuteShape& s, const typename Fmt::Storage* x, const float* scale,
                const int32_t* sorted_ids, typename Fmt::Storage* out) {
  using S = typename Fmt::Storage;
  const int64_t H = s.hidden;
  for (int64_t j = 0; j < s.rows; ++j) {
    S* dst = out + j * H;
    const int32_t r = sorted_ids[j];
    if (!ValidRoute(r, s.numel())) {
      std::memset(dst, 0, sizeof(S) * H);  // +0.0 in every format
      continue;
    }
    const S* src = x + (r / s.topk) * H;
    if (scale == nullptr) {
      std::memcpy(dst, src, sizeof(S) * H);
    } else {
      const float c = scale[r];
      for (int64_t h = 0; h < H; ++h) dst[h] = Fmt::Store(c * Fmt::Load(src[h]));
    }
  }
}

template <typename Fmt>
void UnpermuteCpu(const PermuteShape& s, const typename Fmt::Storage* y_sorted,
                  const float* weights, const int32_t* route_rows, typename Fmt::Storage* y) {
  const int64_t H = s.hidden, K = s.topk;
  std::vector<float> acc(static_cast<size_t>(H));
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t j = route_rows[t * K + k];
      if (!ValidRow(j, s.rows)) continue;
      const float w = weights ? weights[t * K + k] : 1.0f;
      const auto* src = y_sorted + j * H;
      for (int64_t h = 0; h < H; ++h) acc[h] += w * Fmt::Load(src[h]);
    }
    for (int64_t h = 0; h < H; ++h) y[t * H + h] = Fmt::Store(acc[h]);
  }
}

template <typename Fmt>
void UnpermuteWgradCpu(const PermuteShape& s, const typename Fmt::Storage* g,
                       const typename Fmt::Storage* y_sorted, const int32_t* route_rows,
                       float* dw) {
  const int64_t H = s.hidden;
  for (int64_t r = 0; r < s.numel(); ++r) {
    const int32_t j = route_rows[r];
    float acc = 0.0f;
    if (ValidRow(j, s.rows)) {
      const auto* a = g + (r / s.topk) * H;
      const auto* b = y_sorted + j * H;
      for (int64_t h = 0; h < H; ++h) acc += Fmt::Load(a[h]) * Fmt::Load(b[h]);
    }
    dw[r] = acc;
  }
}

#define JAX_MOE_INSTANTIATE(Fmt)                                                          \
  template void PermuteCpu<Fmt>(const PermuteShape&, const Fmt::Storage*, const float*,   \
                                const int32_t*, Fmt::Storage*);                           \
  template void UnpermuteCpu<Fmt>(const PermuteShape&, const Fmt::Storage*, const float*, \
                                  const int32_t*, Fmt::Storage*);                         \
  template void UnpermuteWgradCpu<Fmt>(const PermuteShape&, const Fmt::Storage*,          \
                                       const Fmt::Storage*, const int32_t*, float*);
JAX_MOE_INSTANTIATE(F32Format)
JAX_MOE_INSTANTIATE(Bf16Format)
JAX_MOE_INSTANTIATE(F16Format)
#undef JAX_MOE_INSTANTIATE

}  // namespace jax_moe
