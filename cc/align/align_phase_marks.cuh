// Device side of the align kernels' phase clocks (profiling builds only, see
// align_phases.h): ALIGN_PHASE(buffer, i) has thread 0 of each recorded CTA
// store clock64() as mark i of a kernel's [kPhaseCtas][kPhaseSlots] buffer
// (mark 0 also stores gridDim.x in the last slot); CopyPhaseMarks copies a
// buffer out and zeroes it. In normal builds ALIGN_PHASE is empty.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "align/align_phases.h"

#ifdef JAX_MOE_ALIGN_PHASES
#define ALIGN_PHASE(buffer, i)                                                \
  do {                                                                        \
    if (threadIdx.x == 0 && blockIdx.y == 0 && blockIdx.x < jax_moe::kPhaseCtas) { \
      (buffer)[blockIdx.x][i] = clock64();                                    \
      if ((i) == 0) (buffer)[blockIdx.x][jax_moe::kPhaseMarks] = gridDim.x;   \
    }                                                                         \
  } while (0)

namespace jax_moe {

using PhaseMarks = long long[kPhaseCtas][kPhaseSlots];

// Copies a kernel's marks to out ([kPhaseCtas * kPhaseSlots]) and zeroes them.
inline int CopyPhaseMarks(const PhaseMarks& symbol, int64_t* out) {
  static_assert(sizeof(long long) == sizeof(int64_t), "clock64 marks copy as int64");
  cudaError_t err = cudaMemcpyFromSymbol(out, symbol, sizeof(PhaseMarks));
  static const PhaseMarks zeros = {};
  if (err == cudaSuccess) err = cudaMemcpyToSymbol(symbol, zeros, sizeof(PhaseMarks));
  return static_cast<int>(err);
}

}  // namespace jax_moe
#else
#define ALIGN_PHASE(buffer, i) \
  do {                         \
  } while (0)
#endif
