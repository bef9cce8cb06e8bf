// Call f(Tag<Format>{}) with the row format (half_bits.h) of an FFI dtype.
#pragma once

#include "common/dtype_dispatch.h"
#include "common/half_bits.h"
#include "xla/ffi/api/ffi.h"

namespace jax_moe {

// Returns false when `dtype` is not float32, bfloat16 or float16.
template <typename F>
bool DispatchRowFormat(::xla::ffi::DataType dtype, F&& f) {
  using ::xla::ffi::DataType;
  switch (dtype) {
    case DataType::F32: f(Tag<F32Format>{}); return true;
    case DataType::BF16: f(Tag<Bf16Format>{}); return true;
    case DataType::F16: f(Tag<F16Format>{}); return true;
    default: return false;
  }
}

}  // namespace jax_moe
