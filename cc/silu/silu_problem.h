// The shape of one silu_and_mul custom call, as the kernels see it: `problems`
// independent problems (the call's leading batch dims), each `rows` rows of
// h = [gate | up] (2 * inter values) -> y (inter values). With `counts` (one
// int32 per problem), only the first clamp(count, 0, rows) rows of a problem are
// read; the others are written with zeros when `zero_fill`, else not touched.
#pragma once

#include <cstdint>

namespace jax_moe {

struct SiluProblem {
  int64_t problems;
  int64_t rows;      // rows per problem
  int64_t inter;     // I: output channels per row
  const int32_t* counts;  // [problems] or null (every row valid)
  bool zero_fill;    // write zeros to the rows past the count
};

}  // namespace jax_moe
