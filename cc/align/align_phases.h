// Per-phase clocks of the one-pass, grid-sync and staged single-CTA align
// kernels, for profiling builds only
// (`JAX_MOE_ALIGN_PHASES=ON pip install ...`, i.e. CMake -DJAX_MOE_ALIGN_PHASES=ON).
// Thread 0 of each CTA of batch row 0 stores clock64() at the kernel's phase
// boundaries (SM cycles, comparable within a CTA); .ci/align_phases.py reads
// them through the CUDA module's `onepass_phases()`, `gridsync_phases()` and
// `staged_phases()`.
// Normal builds compile none of this (align_phase_marks.cuh: the device side).
#pragma once

#include <cstdint>

namespace jax_moe {

// One-pass marks: 0 entry, 1 counters zeroed, 2 all routes counted, 3 chunk
// walked, 4 starts scanned, 5 padding share written, 6 prefix over warps, 7
// scattered. Grid-sync marks: 0 entry, 1 chunk staged, 2 walked, 3 counts
// published, 4 past the grid barrier, 5 rows summed, 6 starts scanned, 7
// padding share written, 8 scattered. Staged (single CTA, output built in
// shared memory): 0 entry, 1 routes staged (shared memory zeroed meanwhile), 2
// walked, 3 prefix over warps, 4 starts scanned, 5 routes placed and block
// owners written, 6 output copied out. Slot kPhaseMarks holds gridDim.x; unused
// marks stay 0. CTAs past kPhaseCtas are not recorded.
constexpr int kPhaseMarks = 9;
constexpr int kPhaseSlots = kPhaseMarks + 1;
constexpr int kPhaseCtas = 1024;

#ifdef JAX_MOE_ALIGN_PHASES
// Copies [kPhaseCtas][kPhaseSlots] marks of the launches since the last copy
// to out, then zeroes them. Returns a cudaError_t value (0: success).
int CopyOnePassPhases(int64_t* out);
int CopyGridSyncPhases(int64_t* out);
int CopyStagedPhases(int64_t* out);
#endif

}  // namespace jax_moe
