// Self-registration of XLA FFI handlers.
//
// Each handler file adds its handlers to the table of the extension module it is
// linked into (CPU or CUDA) with JAX_MOE_FFI_TARGET; the module exports the table
// and Python registers every entry with jax.ffi.register_ffi_target. Adding an op
// therefore touches no shared file.
#pragma once

#include <vector>

#include "xla/ffi/api/c_api.h"

namespace jax_moe {

struct FfiTarget {
  const char* name;
  XLA_FFI_Handler* handler;
};

// Defined once per extension module (module_cpu.cc / module_cuda.cc).
std::vector<FfiTarget>& FfiTargets();

struct FfiTargetRegistration {
  FfiTargetRegistration(const char* name, XLA_FFI_Handler* handler) {
    FfiTargets().push_back({name, handler});
  }
};

}  // namespace jax_moe

#define JAX_MOE_CONCAT_INNER(a, b) a##b
#define JAX_MOE_CONCAT(a, b) JAX_MOE_CONCAT_INNER(a, b)
#define JAX_MOE_FFI_TARGET(name, handler)                   \
  static ::jax_moe::FfiTargetRegistration JAX_MOE_CONCAT(   \
      jax_moe_ffi_target_, __COUNTER__)(name, handler)
