// Decoding and checking the silu_and_mul custom calls' buffers; shared by the
// CPU and CUDA handlers. Operands: h [B..., P..., 2I] (B = the leading
// `num_batch_dims` dims: independent problems) and counts int32 [B..., c]:
// c == 0 means no mask (then P... are plain rows); c == 1 gives each problem a
// row count, and h must then be [B..., M, 2I].
#pragma once

#include <cstdint>
#include <string>

#include "common/ffi_helpers.h"
#include "silu/silu_problem.h"

namespace jax_moe {

inline ffi::Error DecodeSiluArgs(const std::string& op, ffi::AnyBuffer h,
                                 ffi::Buffer<ffi::S32> counts, int64_t num_batch_dims,
                                 bool zero_fill, SiluProblem* out) {
  const auto hd = h.dimensions();
  const auto cd = counts.dimensions();
  const size_t nb = static_cast<size_t>(num_batch_dims);
  if (num_batch_dims < 0 || hd.size() < nb + 1 || cd.size() != nb + 1)
    return InvalidArgument(op, "operand ranks disagree with num_batch_dims");
  for (size_t i = 0; i < nb; ++i)
    if (cd[i] != hd[i]) return InvalidArgument(op, "counts batch dims differ from h's");
  if (cd[nb] != 0 && cd[nb] != 1) return InvalidArgument(op, "counts must hold 0 or 1 value per problem");
  const bool has_counts = cd[nb] == 1;
  if (has_counts && hd.size() != nb + 2)
    return InvalidArgument(op, "with counts, each problem of h must be [rows, 2I]");
  const int64_t two_i = hd[hd.size() - 1];
  if (two_i % 2 != 0) return InvalidArgument(op, "the last dim of h must be even (gate | up)");
  const auto dt = h.element_type();
  if (dt != ffi::DataType::F32 && dt != ffi::DataType::BF16 && dt != ffi::DataType::F16)
    return InvalidArgument(op, "h must be float32, bfloat16 or float16");

  SiluProblem& p = *out;
  p.problems = DimProduct(hd, 0, nb);
  p.rows = DimProduct(hd, nb, hd.size() - 1);
  p.inter = two_i / 2;
  p.counts = has_counts ? counts.typed_data() : nullptr;
  p.zero_fill = zero_fill;
  return ffi::Error::Success();
}

inline int64_t SiluTotalRows(const SiluProblem& p) { return p.problems * p.rows; }

// Checks that `buf` has dtype `dt` and `n` elements.
inline ffi::Error CheckSiluBuffer(const std::string& op, const std::string& name,
                                  const ffi::AnyBuffer& buf, ffi::DataType dt, int64_t n) {
  if (buf.element_type() != dt) return InvalidArgument(op, name + " has the wrong dtype");
  if (static_cast<int64_t>(buf.element_count()) != n)
    return InvalidArgument(op, name + " has the wrong number of elements");
  return ffi::Error::Success();
}

// One decoder per custom call: operands, attributes and results checked together.
inline ffi::Error DecodeSiluFwd(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                                const ffi::AnyBuffer& y, int64_t num_batch_dims, bool zero_fill,
                                SiluProblem* p) {
  const std::string op = "silu_and_mul";
  ffi::Error err = DecodeSiluArgs(op, h, counts, num_batch_dims, zero_fill, p);
  if (err.failure()) return err;
  return CheckSiluBuffer(op, "y", y, h.element_type(), SiluTotalRows(*p) * p->inter);
}

inline ffi::Error DecodeSiluFp8(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                                const ffi::AnyBuffer& q, const ffi::AnyBuffer& scales,
                                int64_t num_batch_dims, bool zero_fill, SiluProblem* p) {
  const std::string op = "silu_and_mul(fp8=True)";
  ffi::Error err = DecodeSiluArgs(op, h, counts, num_batch_dims, zero_fill, p);
  if (err.failure()) return err;
  if (p->inter % 128 != 0) return InvalidArgument(op, "fp8 output needs I to be a multiple of 128");
  const int64_t n = SiluTotalRows(*p) * p->inter;
  err = CheckSiluBuffer(op, "q", q, ffi::DataType::F8E4M3FN, n);
  if (err.failure()) return err;
  return CheckSiluBuffer(op, "scales", scales, ffi::DataType::F32, n / 128);
}

// The backward pass always zero-fills: masked rows get a zero gradient.
inline ffi::Error DecodeSiluBwd(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                                const ffi::AnyBuffer& dy, const ffi::AnyBuffer& dh,
                                int64_t num_batch_dims, SiluProblem* p) {
  const std::string op = "silu_and_mul backward";
  ffi::Error err = DecodeSiluArgs(op, h, counts, num_batch_dims, /*zero_fill=*/true, p);
  if (err.failure()) return err;
  err = CheckSiluBuffer(op, "dy", dy, h.element_type(), SiluTotalRows(*p) * p->inter);
  if (err.failure()) return err;
  return CheckSiluBuffer(op, "dh", dh, h.element_type(), h.element_count());
}

}  // namespace jax_moe
