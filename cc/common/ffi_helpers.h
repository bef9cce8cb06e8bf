// Small helpers for FFI handlers: dimension products and argument checks.
#pragma once

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jax_moe {

namespace ffi = ::xla::ffi;

// Product of dims[begin, end).
template <typename Dims>
int64_t DimProduct(const Dims& dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= dims[i];
  return n;
}

inline ffi::Error InvalidArgument(const std::string& op, const std::string& what) {
  return ffi::Error::InvalidArgument(op + ": " + what);
}

}  // namespace jax_moe
