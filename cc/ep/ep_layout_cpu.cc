// Source-side plan of the EP dispatch on the CPU (see ep_cpu.h).
#include <algorithm>
#include <vector>

#include "ep/ep_cpu.h"
#include "ep/ep_route.h"

namespace jax_moe {

void EpLayoutCpu(const int32_t* ids, int64_t T, int64_t K, int64_t num_experts,
                 int64_t R, int32_t* send_rows, int32_t* send_local,
                 int32_t* token_index) {
  const int64_t El = num_experts / R;
  std::fill(send_rows, send_rows + R * T, -1);
  std::fill(send_local, send_local + R * T * K, -1);
  std::fill(token_index, token_index + T * R, -1);
  std::vector<int64_t> filled(static_cast<size_t>(R), 0);
  std::vector<int64_t> slot(static_cast<size_t>(R));
  for (int64_t t = 0; t < T; ++t) {
    // Slot of this token on every rank it goes to (one per rank: de-duplication).
    std::fill(slot.begin(), slot.end(), -1);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t id = ids[t * K + k];
      const int32_t r = EpRankOf(id, num_experts, El);
      if (r < 0) continue;
      if (slot[r] < 0) {
        slot[r] = filled[r]++;
        send_rows[r * T + slot[r]] = static_cast<int32_t>(t);
        token_index[t * R + r] = static_cast<int32_t>(r * T + slot[r]);
      }
      send_local[(r * T + slot[r]) * K + k] = static_cast<int32_t>(id - r * El);
    }
  }
}

}  // namespace jax_moe
