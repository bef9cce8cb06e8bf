// The routes of one token, a chunk of up to kRouteChunk at a time, held in
// registers by every thread of the token's group: the row of y_sorted each
// route went to (-1 when dropped or out of range) and its weight.
//
// Why chunks: a thread loads the unit u of all the chunk's rows before it
// adds any of them, so K independent 16-byte loads are in flight per thread
// instead of one; the adds then run in increasing k, as the CPU kernel's.
#pragma once

#include <cstdint>

#include "permute/permute_shape.h"
#include "permute/row_launch.cuh"

namespace jax_moe {

struct RouteChunk {
  int32_t row[kRouteChunk];
  float w[kRouteChunk];
};

// Routes [0, n) of rr / w (n may exceed the chunk: only the first kRouteChunk
// are read). w null: unit weights.
__device__ __forceinline__ RouteChunk LoadRouteChunk(const int32_t* __restrict__ rr,
                                                     const float* __restrict__ w, int64_t n,
                                                     int64_t rows) {
  RouteChunk c;
#pragma unroll
  for (int k = 0; k < kRouteChunk; ++k) {
    const int32_t j = k < n ? __ldg(rr + k) : -1;
    c.row[k] = ValidRow(j, rows) ? j : -1;
    c.w[k] = (w != nullptr && k < n) ? __ldg(w + k) : 1.0f;
  }
  return c;
}

// Unit u of every live row of the chunk (rows of `units` vectors from base).
// Dead slots are left untouched: callers test c.row[k] before using val[k].
template <typename V>
__device__ __forceinline__ void LoadChunkUnits(const V* __restrict__ base, int64_t units,
                                               int64_t u, const RouteChunk& c,
                                               V (&val)[kRouteChunk]) {
#pragma unroll
  for (int k = 0; k < kRouteChunk; ++k) {
    if (c.row[k] >= 0) val[k] = base[static_cast<int64_t>(c.row[k]) * units + u];
  }
}

}  // namespace jax_moe
