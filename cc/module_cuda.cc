// _jax_moe_cuda: the CUDA FFI handlers. Built when nvcc is found; links the static
// CUDA runtime; imported by Python only when lowering for a CUDA backend.
#include "common/module_table.h"

NB_MODULE(_jax_moe_cuda, m) {
  m.def("registrations", &jax_moe::Registrations,
        "Map of FFI target name -> handler capsule for platform 'CUDA'.");
}
