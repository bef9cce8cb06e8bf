// Decoding and checking the permute family's buffers; shared by the CPU and CUDA
// handlers. The leading `num_batch_dims` dims of every operand and result are
// batch dims (vmap), equal across operands; the rest describe one problem:
//   sorted_token_ids [P], route_rows [T, K], token rows [T, H], sorted rows [P, H],
//   weights [T, K] (or [0] when the call is unweighted).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/ffi_helpers.h"
#include "permute/permute_shape.h"

namespace jax_moe {

// True when `dims` is the first `nb` dims of `batch_like` followed by `tail`.
template <typename DimsA, typename DimsB>
bool HasShape(const DimsA& dims, const DimsB& batch_like, size_t nb,
              std::initializer_list<int64_t> tail) {
  if (dims.size() != nb + tail.size() || batch_like.size() < nb) return false;
  for (size_t i = 0; i < nb; ++i)
    if (dims[i] != batch_like[i]) return false;
  size_t i = nb;
  for (int64_t d : tail)
    if (dims[i++] != d) return false;
  return true;
}

inline bool IsRowType(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}

// Batch, P, T, K from sorted_token_ids [B..., P] and route_rows [B..., T, K].
inline ffi::Error DecodeIndex(const std::string& op, int64_t num_batch_dims,
                              const ffi::Buffer<ffi::S32>& sorted_ids,
                              const ffi::Buffer<ffi::S32>& route_rows, PermuteShape* s) {
  const auto sd = sorted_ids.dimensions();
  const auto rd = route_rows.dimensions();
  const size_t nb = static_cast<size_t>(num_batch_dims);
  if (num_batch_dims < 0 || sd.size() != nb + 1 || rd.size() != nb + 2)
    return InvalidArgument(op, "index operand ranks disagree with num_batch_dims");
  if (!HasShape(rd, sd, nb, {rd[nb], rd[nb + 1]}))
    return InvalidArgument(op, "route_rows batch dims differ from sorted_token_ids'");
  s->batch = DimProduct(sd, 0, nb);
  s->rows = sd[nb];
  s->tokens = rd[nb];
  s->topk = rd[nb + 1];
  if (s->rows >= (int64_t{1} << 31) || s->numel() >= (int64_t{1} << 31))
    return InvalidArgument(op, "rows and routes must fit in int32");
  return ffi::Error::Success();
}

// Checks the weights operand: float32 [B..., T, K] when weighted, [B..., 0] otherwise.
inline ffi::Error CheckWeights(const std::string& op, const ffi::AnyBuffer& weights,
                               const ffi::Buffer<ffi::S32>& sorted_ids, size_t nb,
                               bool weighted, const PermuteShape& s) {
  if (weights.element_type() != ffi::DataType::F32)
    return InvalidArgument(op, "weights must be float32");
  const bool ok = weighted ? HasShape(weights.dimensions(), sorted_ids.dimensions(), nb,
                                      {s.tokens, s.topk})
                           : HasShape(weights.dimensions(), sorted_ids.dimensions(), nb, {0});
  if (!ok) return InvalidArgument(op, "weights shape disagrees with route_rows");
  return ffi::Error::Success();
}

// Checks a row buffer: [B..., lead, H] with a row dtype; sets *hidden from it
// when *hidden < 0, otherwise requires that H.
inline ffi::Error CheckRows(const std::string& op, const char* name, ffi::DataType dtype,
                            ffi::Span<const int64_t> dims,
                            const ffi::Buffer<ffi::S32>& sorted_ids, size_t nb,
                            int64_t lead, int64_t* hidden) {
  if (!IsRowType(dtype)) return InvalidArgument(op, std::string(name) + ": dtype must be f32/bf16/f16");
  if (dims.size() != nb + 2) return InvalidArgument(op, std::string(name) + ": wrong rank");
  if (*hidden < 0) *hidden = dims[nb + 1];
  if (!HasShape(dims, sorted_ids.dimensions(), nb, {lead, *hidden}))
    return InvalidArgument(op, std::string(name) + ": shape disagrees with the plan");
  return ffi::Error::Success();
}

// The permute call: x [B..., T, H] -> x_sorted [B..., P, H].
inline ffi::Error DecodePermuteArgs(const ffi::AnyBuffer& x, const ffi::AnyBuffer& scale,
                                    const ffi::Buffer<ffi::S32>& sorted_ids,
                                    const ffi::Buffer<ffi::S32>& route_rows,
                                    const ffi::AnyBuffer& out, int64_t num_batch_dims,
                                    bool weighted, PermuteShape* s) {
  const std::string op = "permute";
  const size_t nb = static_cast<size_t>(num_batch_dims);
  ffi::Error err = DecodeIndex(op, num_batch_dims, sorted_ids, route_rows, s);
  if (err.failure()) return err;
  s->hidden = -1;
  err = CheckRows(op, "x", x.element_type(), x.dimensions(), sorted_ids, nb, s->tokens, &s->hidden);
  if (err.failure()) return err;
  err = CheckRows(op, "x_sorted", out.element_type(), out.dimensions(), sorted_ids, nb, s->rows,
                  &s->hidden);
  if (err.failure()) return err;
  if (out.element_type() != x.element_type())
    return InvalidArgument(op, "x_sorted dtype differs from x's");
  return CheckWeights(op, scale, sorted_ids, nb, weighted, *s);
}

// The unpermute call: y_sorted [B..., P, H] -> y [B..., T, H].
inline ffi::Error DecodeUnpermuteArgs(const ffi::AnyBuffer& y_sorted, const ffi::AnyBuffer& weights,
                                      const ffi::Buffer<ffi::S32>& sorted_ids,
                                      const ffi::Buffer<ffi::S32>& route_rows,
                                      const ffi::AnyBuffer& out, int64_t num_batch_dims,
                                      bool weighted, PermuteShape* s) {
  const std::string op = "unpermute";
  const size_t nb = static_cast<size_t>(num_batch_dims);
  ffi::Error err = DecodeIndex(op, num_batch_dims, sorted_ids, route_rows, s);
  if (err.failure()) return err;
  s->hidden = -1;
  err = CheckRows(op, "y_sorted", y_sorted.element_type(), y_sorted.dimensions(), sorted_ids, nb,
                  s->rows, &s->hidden);
  if (err.failure()) return err;
  err = CheckRows(op, "y", out.element_type(), out.dimensions(), sorted_ids, nb, s->tokens,
                  &s->hidden);
  if (err.failure()) return err;
  if (out.element_type() != y_sorted.element_type())
    return InvalidArgument(op, "y dtype differs from y_sorted's");
  return CheckWeights(op, weights, sorted_ids, nb, weighted, *s);
}

// The weight-gradient call: g [B..., T, H], y_sorted [B..., P, H] -> dw f32 [B..., T, K].
inline ffi::Error DecodeWgradArgs(const ffi::AnyBuffer& g, const ffi::AnyBuffer& y_sorted,
                                  const ffi::Buffer<ffi::S32>& sorted_ids,
                                  const ffi::Buffer<ffi::S32>& route_rows,
                                  const ffi::Buffer<ffi::F32>& out, int64_t num_batch_dims,
                                  PermuteShape* s) {
  const std::string op = "unpermute_wgrad";
  const size_t nb = static_cast<size_t>(num_batch_dims);
  ffi::Error err = DecodeIndex(op, num_batch_dims, sorted_ids, route_rows, s);
  if (err.failure()) return err;
  s->hidden = -1;
  err = CheckRows(op, "g", g.element_type(), g.dimensions(), sorted_ids, nb, s->tokens, &s->hidden);
  if (err.failure()) return err;
  err = CheckRows(op, "y_sorted", y_sorted.element_type(), y_sorted.dimensions(), sorted_ids, nb,
                  s->rows, &s->hidden);
  if (err.failure()) return err;
  if (g.element_type() != y_sorted.element_type())
    return InvalidArgument(op, "g dtype differs from y_sorted's");
  if (!HasShape(out.dimensions(), sorted_ids.dimensions(), nb, {s->tokens, s->topk}))
    return InvalidArgument(op, "dw shape disagrees with route_rows");
  return ffi::Error::Success();
}

// The plan call: sorted_token_ids [B..., P], expert_ids [B..., NB] ->
// route_rows [B..., T, K], group_sizes [B..., L].
inline ffi::Error DecodePlanArgs(const ffi::Buffer<ffi::S32>& sorted_ids,
                                 const ffi::Buffer<ffi::S32>& expert_ids,
                                 const ffi::Buffer<ffi::S32>& route_rows,
                                 const ffi::Buffer<ffi::S32>& group_sizes,
                                 int64_t num_batch_dims, int64_t block_size, PlanShape* p) {
  const std::string op = "permute_plan";
  PermuteShape s;
  ffi::Error err = DecodeIndex(op, num_batch_dims, sorted_ids, route_rows, &s);
  if (err.failure()) return err;
  const size_t nb = static_cast<size_t>(num_batch_dims);
  const auto ed = expert_ids.dimensions();
  const auto gd = group_sizes.dimensions();
  if (ed.size() != nb + 1 || !HasShape(ed, sorted_ids.dimensions(), nb, {ed[nb]}))
    return InvalidArgument(op, "expert_ids shape disagrees with sorted_token_ids'");
  if (gd.size() != nb + 1 || !HasShape(gd, sorted_ids.dimensions(), nb, {gd[nb]}))
    return InvalidArgument(op, "group_sizes shape disagrees with sorted_token_ids'");
  if (block_size < 1) return InvalidArgument(op, "block_size must be >= 1");
  p->batch = s.batch;
  p->numel = s.numel();
  p->rows = s.rows;
  p->num_blocks = ed[nb];
  p->num_local = gd[nb];
  p->block_size = block_size;
  return ffi::Error::Success();
}

}  // namespace jax_moe
