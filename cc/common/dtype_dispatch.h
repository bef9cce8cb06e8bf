// Call f(Tag<T>{}) with the C++ type of an FFI integer element type.
#pragma once

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace jax_moe {

template <typename T>
struct Tag {
  using type = T;
};

// Returns false when `dtype` is not an integer type.
template <typename F>
bool DispatchIntegerType(::xla::ffi::DataType dtype, F&& f) {
  using ::xla::ffi::DataType;
  switch (dtype) {
    case DataType::S8: f(Tag<int8_t>{}); return true;
    case DataType::S16: f(Tag<int16_t>{}); return true;
    case DataType::S32: f(Tag<int32_t>{}); return true;
    case DataType::S64: f(Tag<int64_t>{}); return true;
    case DataType::U8: f(Tag<uint8_t>{}); return true;
    case DataType::U16: f(Tag<uint16_t>{}); return true;
    case DataType::U32: f(Tag<uint32_t>{}); return true;
    case DataType::U64: f(Tag<uint64_t>{}); return true;
    default: return false;
  }
}

}  // namespace jax_moe
