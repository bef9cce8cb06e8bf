// Expert-parallel routing arithmetic shared by the CPU and CUDA kernels
// (shared/spec/dispatch.md section 2): which rank owns an expert id, and the
// static buffer sizes every backend and jax_moe/_ep_kernels.py agree on.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace jax_moe {

// Rank that owns expert `id` (expert e lives on rank e / El), or -1 for a
// dropped route (id outside [0, E)). Never used as an index before this check.
JAX_MOE_HD int32_t EpRankOf(int32_t id, int64_t num_experts, int64_t num_local) {
  if (id < 0 || static_cast<int64_t>(id) >= num_experts) return -1;
  return static_cast<int32_t>(id / num_local);
}

// Modes of the receive layout (attribute `mode` of jax_moe_ep_route).
enum EpMode : int64_t {
  kEpLowLatency = 0,  // y rows [El, R*T]: expert e owns rows [e*R*T, e*R*T + count_e)
  kEpNormal = 1,      // y rows [C]: experts packed back to back, truncated at C
};

}  // namespace jax_moe
