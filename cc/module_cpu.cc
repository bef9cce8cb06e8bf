// _jax_moe_cpu: the CPU FFI handlers. Always built; never depends on CUDA.
#include "common/module_table.h"

NB_MODULE(_jax_moe_cpu, m) {
  m.def("registrations", &jax_moe::Registrations,
        "Map of FFI target name -> handler capsule for platform 'cpu'.");
}
