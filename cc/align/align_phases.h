// Per-phase clocks of the one-pass align kernel, for profiling builds only
// (`JAX_MOE_ALIGN_PHASES=ON pip install ...`, i.e. CMake -DJAX_MOE_ALIGN_PHASES=ON).
// Thread 0 of each CTA of batch row 0 stores clock64() at the kernel's phase
// boundaries (SM cycles, comparable within a CTA); .ci/align_phases.py reads
// them through the CUDA module's `onepass_phases()`. Normal builds compile none
// of this.
#pragma once

#include <cstdint>

namespace jax_moe {

// Marks: 0 entry, 1 counters zeroed, 2 all routes counted, 3 chunk walked,
// 4 starts scanned, 5 padding share written, 6 prefix over warps, 7 scattered;
// slot 8 holds gridDim.x. CTAs past kPhaseCtas are not recorded.
constexpr int kPhaseMarks = 8;
constexpr int kPhaseSlots = kPhaseMarks + 1;
constexpr int kPhaseCtas = 1024;

#ifdef JAX_MOE_ALIGN_PHASES
// Copies [kPhaseCtas][kPhaseSlots] marks of the launches since the last copy
// to out, then zeroes them. Returns a cudaError_t value (0: success).
int CopyOnePassPhases(int64_t* out);
#endif

}  // namespace jax_moe
