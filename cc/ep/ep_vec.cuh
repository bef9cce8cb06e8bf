// Small helpers shared by the EP row kernels on CUDA (ep_rows.cu, ep_pack_fp8.cu):
// vector types for 16-byte memory accesses and grid sizing.
#pragma once

#include <cstdint>

namespace jax_moe {
namespace ep_vec {

// Grid-stride loops cover any row count; 65535 blocks are plenty to fill an H200.
constexpr int64_t kMaxBlocks = 65535;

inline unsigned Blocks(int64_t items) {
  return static_cast<unsigned>(items < 1 ? 1 : (items < kMaxBlocks ? items : kMaxBlocks));
}

inline bool AlignedTo(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// V elements of T moved as one aligned access (16 bytes for V * sizeof(T) == 16,
// two for 32: the compiler emits vector loads/stores for the whole struct).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

}  // namespace ep_vec
}  // namespace jax_moe
