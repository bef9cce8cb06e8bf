// Receiver-side plan of the EP dispatch on the CPU (see ep_cpu.h).
#include <algorithm>
#include <vector>

#include "ep/ep_cpu.h"
#include "ep/ep_route.h"

namespace jax_moe {

void EpRouteCpu(const int32_t* recv_local, int64_t M, int64_t K, int64_t El,
                int64_t mode, int64_t N, int32_t* recv_index, int32_t* row_src,
                int32_t* counts, int32_t* group_sizes, int32_t* dropped) {
  std::fill(recv_index, recv_index + M * K, -1);
  std::fill(row_src, row_src + N, -1);
  std::fill(counts, counts + El, 0);

  // First occurrence of each local expert in a row: that route owns the row's
  // copy for the expert; later routes naming the same expert are duplicates.
  auto first_of = [&](int64_t m, int64_t k) {
    const int32_t e = recv_local[m * K + k];
    if (e < 0 || e >= El) return false;
    for (int64_t k2 = 0; k2 < k; ++k2)
      if (recv_local[m * K + k2] == e) return false;
    return true;
  };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      if (first_of(m, k)) ++counts[recv_local[m * K + k]];

  // Start row of each expert, and how many of its rows fit.
  std::vector<int64_t> cursor(static_cast<size_t>(El));
  int64_t start = 0, placed = 0, routed = 0;
  for (int64_t e = 0; e < El; ++e) {
    routed += counts[e];
    if (mode == kEpLowLatency) {
      cursor[e] = e * M;
      group_sizes[e] = counts[e];
    } else {
      cursor[e] = start;
      const int64_t room = std::max<int64_t>(0, N - start);
      group_sizes[e] = static_cast<int32_t>(std::min<int64_t>(counts[e], room));
      start += counts[e];
    }
    placed += group_sizes[e];
  }
  dropped[0] = static_cast<int32_t>(routed - placed);

  // Place rows in received order = (source rank, source token) ascending.
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      if (!first_of(m, k)) continue;
      const int32_t e = recv_local[m * K + k];
      const int64_t n = cursor[e]++;
      if (n >= N) continue;  // normal mode past the capacity: dropped, counted above
      recv_index[m * K + k] = static_cast<int32_t>(n);
      row_src[n] = static_cast<int32_t>(m);
    }
  }
}

}  // namespace jax_moe
