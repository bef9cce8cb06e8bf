// _jax_moe_cuda: the CUDA FFI handlers. Built when nvcc is found; links the static
// CUDA runtime; imported by Python only when lowering for a CUDA backend.
#include "common/module_table.h"

#ifdef JAX_MOE_ALIGN_PHASES
#include <stdexcept>
#include <string>
#include <vector>

#include <nanobind/stl/vector.h>

#include "align/align_phases.h"
#endif

NB_MODULE(_jax_moe_cuda, m) {
  m.def("registrations", &jax_moe::Registrations,
        "Map of FFI target name -> handler capsule for platform 'CUDA'.");
#ifdef JAX_MOE_ALIGN_PHASES
  // Profiling builds only (align/align_phases.h): a kernel's clock64 marks since
  // the last call, [kPhaseCtas * kPhaseSlots], then zeroed.
  m.attr("align_phase_slots") = jax_moe::kPhaseSlots;
  auto marks = [](int (*copy)(int64_t*), const char* name) {
    std::vector<int64_t> out(size_t{jax_moe::kPhaseCtas} * jax_moe::kPhaseSlots);
    const int err = copy(out.data());
    if (err != 0) throw std::runtime_error(std::string(name) + ": CUDA error " + std::to_string(err));
    return out;
  };
  m.def("onepass_phases", [marks] { return marks(jax_moe::CopyOnePassPhases, "onepass_phases"); });
  m.def("gridsync_phases", [marks] { return marks(jax_moe::CopyGridSyncPhases, "gridsync_phases"); });
  m.def("staged_phases", [marks] { return marks(jax_moe::CopyStagedPhases, "staged_phases"); });
#endif
}
