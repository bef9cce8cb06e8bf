// The body shared by the two extension modules: export the FFI target table.
#pragma once

#include <nanobind/nanobind.h>

#include "common/registry.h"

namespace jax_moe {

std::vector<FfiTarget>& FfiTargets() {
  static std::vector<FfiTarget> targets;
  return targets;
}

inline nanobind::dict Registrations() {
  nanobind::dict out;
  for (const FfiTarget& t : FfiTargets()) {
    out[t.name] = nanobind::capsule(reinterpret_cast<void*>(t.handler));
  }
  return out;
}

}  // namespace jax_moe
