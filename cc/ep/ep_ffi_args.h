// Decoding and checking the EP custom calls' buffers; shared by the CPU and CUDA
// handlers so both reject the same malformed calls. Shapes come from
// jax_moe/_ep_kernels.py; every row operand is 2-D [rows, row elements].
#pragma once

#include <cstdint>
#include <string>

#include "common/ffi_helpers.h"
#include "ep/ep_route.h"

namespace jax_moe {

// Element count as a signed integer (all our sizes are compared as int64_t).
template <typename B>
int64_t Elems(const B& b) {
  return static_cast<int64_t>(b.element_count());
}

struct EpLayoutArgs {
  int64_t T, K, E, R;
};

inline ffi::Error DecodeEpLayout(ffi::Buffer<ffi::S32> ids,
                                 ffi::Result<ffi::Buffer<ffi::S32>>& send_rows,
                                 ffi::Result<ffi::Buffer<ffi::S32>>& send_local,
                                 ffi::Result<ffi::Buffer<ffi::S32>>& token_index,
                                 int64_t num_experts, int64_t num_ranks, EpLayoutArgs* a) {
  const std::string op = "ep_layout";
  const auto d = ids.dimensions();
  if (d.size() != 2) return InvalidArgument(op, "topk_ids must be [T, K]");
  if (num_ranks < 1 || num_experts < 1 || num_experts % num_ranks)
    return InvalidArgument(op, "num_experts must be a positive multiple of num_ranks");
  *a = {d[0], d[1], num_experts, num_ranks};
  if (a->R * a->T >= (int64_t{1} << 31)) return InvalidArgument(op, "R*T does not fit in int32");
  if (Elems(*send_rows) != a->R * a->T ||
      Elems(*send_local) != a->R * a->T * a->K ||
      Elems(*token_index) != a->T * a->R)
    return InvalidArgument(op, "result shapes disagree with the operands");
  return ffi::Error::Success();
}

struct EpRouteArgs {
  int64_t M, K, El, mode, N;
};

inline ffi::Error DecodeEpRoute(ffi::Buffer<ffi::S32> recv_local,
                                ffi::Result<ffi::Buffer<ffi::S32>>& recv_index,
                                ffi::Result<ffi::Buffer<ffi::S32>>& row_src,
                                ffi::Result<ffi::Buffer<ffi::S32>>& counts,
                                ffi::Result<ffi::Buffer<ffi::S32>>& group_sizes,
                                ffi::Result<ffi::Buffer<ffi::S32>>& dropped,
                                int64_t num_local, int64_t mode, EpRouteArgs* a) {
  const std::string op = "ep_route";
  const auto d = recv_local.dimensions();
  if (d.size() != 2) return InvalidArgument(op, "recv_local must be [M, K]");
  if (num_local < 1) return InvalidArgument(op, "num_local must be >= 1");
  if (mode != kEpLowLatency && mode != kEpNormal) return InvalidArgument(op, "unknown mode");
  *a = {d[0], d[1], num_local, mode, Elems(*row_src)};
  if (mode == kEpLowLatency && a->N != a->El * a->M)
    return InvalidArgument(op, "low_latency needs El*M expert-side rows");
  if (a->N >= (int64_t{1} << 31)) return InvalidArgument(op, "row count does not fit in int32");
  if (Elems(*recv_index) != a->M * a->K || Elems(*counts) != a->El ||
      Elems(*group_sizes) != a->El || Elems(*dropped) != 1)
    return InvalidArgument(op, "result shapes disagree with the operands");
  return ffi::Error::Success();
}

struct EpRowsArgs {
  int64_t num_in, row_elems, num_out;
};

// in [num_in, row_elems], rows [num_out], out [num_out, row_elems] (same dtype).
inline ffi::Error DecodeEpGather(ffi::AnyBuffer in, ffi::Buffer<ffi::S32> rows,
                                 ffi::Result<ffi::AnyBuffer>& out, EpRowsArgs* a) {
  const std::string op = "ep_gather";
  const auto d = in.dimensions();
  const auto od = out->dimensions();
  if (d.size() != 2 || od.size() != 2) return InvalidArgument(op, "rows must be 2-D");
  if (out->element_type() != in.element_type()) return InvalidArgument(op, "dtype mismatch");
  *a = {d[0], d[1], Elems(rows)};
  if (od[0] != a->num_out || od[1] != a->row_elems)
    return InvalidArgument(op, "result shape disagrees with the operands");
  return ffi::Error::Success();
}

// x [num_in, H], rows [num_out], q [num_out, H], scales [num_out, H/128].
inline ffi::Error DecodeEpPackFp8(ffi::AnyBuffer x, ffi::Buffer<ffi::S32> rows,
                                  ffi::Result<ffi::AnyBuffer>& q,
                                  ffi::Result<ffi::Buffer<ffi::F32>>& scales, EpRowsArgs* a) {
  const std::string op = "ep_pack_fp8";
  const auto d = x.dimensions();
  if (d.size() != 2) return InvalidArgument(op, "x must be [T, H]");
  if (d[1] % 128) return InvalidArgument(op, "H must be a multiple of 128");
  if (q->element_type() != ffi::F8E4M3FN) return InvalidArgument(op, "q must be float8_e4m3fn");
  *a = {d[0], d[1], Elems(rows)};
  if (Elems(*q) != a->num_out * a->row_elems ||
      Elems(*scales) != a->num_out * (a->row_elems / 128))
    return InvalidArgument(op, "result shapes disagree with the operands");
  return ffi::Error::Success();
}

struct EpCombineArgs {
  int64_t N, H, M, J;
};

// y [N, H], index [M, J], w [M, J], out [M, H] (y's dtype).
inline ffi::Error DecodeEpCombine(ffi::AnyBuffer y, ffi::Buffer<ffi::S32> index,
                                  ffi::Buffer<ffi::F32> w, ffi::Result<ffi::AnyBuffer>& out,
                                  EpCombineArgs* a) {
  const std::string op = "ep_combine";
  const auto d = y.dimensions();
  const auto id = index.dimensions();
  if (d.size() != 2 || id.size() != 2) return InvalidArgument(op, "y and index must be 2-D");
  if (Elems(w) != Elems(index))
    return InvalidArgument(op, "weights and index differ in shape");
  if (out->element_type() != y.element_type()) return InvalidArgument(op, "dtype mismatch");
  *a = {d[0], d[1], id[0], id[1]};
  if (Elems(*out) != a->M * a->H)
    return InvalidArgument(op, "result shape disagrees with the operands");
  return ffi::Error::Success();
}

}  // namespace jax_moe
