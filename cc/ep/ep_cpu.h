// CPU kernels of the expert-parallel dispatch/combine (one problem each; the
// FFI handlers in ep_ffi_cpu.cc decode buffers and call these).
//
// Vocabulary (shared/spec/dispatch.md section 2): T tokens per rank, K routes per
// token, R ranks, El local experts per rank, M = R*T received rows (T slots per
// source rank), N rows of the expert-side layout (El*M or the capacity C).
#pragma once

#include <cstdint>

namespace jax_moe {

// Source-side plan. A token is sent to rank r once if any of its routes lives on
// r (per-rank de-duplication); the slots of rank r are filled in ascending token
// order, so received rows come ordered by (source rank, source token).
//   send_rows[r*T + j]      token in slot j of rank r's send buffer, -1 if empty
//   send_local[(r*T+j)*K+k] local expert (on r) of route k of that token, or -1
//   token_index[t*R + r]    r*T + slot of token t in rank r's buffer, or -1
void EpLayoutCpu(const int32_t* ids, int64_t T, int64_t K, int64_t num_experts,
                 int64_t R, int32_t* send_rows, int32_t* send_local,
                 int32_t* token_index);

// Receiver-side plan, from recv_local[M*K] (the peers' send_local after the
// exchange). Each (received row, local expert) pair gets one expert-side row,
// even when several routes of the token name that expert (those duplicates get
// index -1 and their weights are merged by the caller).
//   recv_index[m*K + k]  expert-side row of route (m, k), -1 if none / duplicate / dropped
//   row_src[n]           received row of expert-side row n, -1 for padding
//   counts[e]            rows routed to local expert e
//   group_sizes[e]       rows placed for e (== counts unless normal mode overflows C)
//   dropped[0]           sum(counts) - sum(group_sizes)
void EpRouteCpu(const int32_t* recv_local, int64_t M, int64_t K, int64_t El,
                int64_t mode, int64_t N, int32_t* recv_index, int32_t* row_src,
                int32_t* counts, int32_t* group_sizes, int32_t* dropped);

// out[n] = in[rows[n]] (row_bytes bytes each), zeros where rows[n] is outside
// [0, num_in).
void EpGatherCpu(const void* in, int64_t num_in, int64_t row_bytes, const int32_t* rows,
                 int64_t num_out, void* out);

// Gather + FP8 cast (spec section 3): q[n] = e4m3(x[rows[n]] / scale), one float32
// scale per 128 channels; zero rows (q = 0, scale = 0) where rows[n] is invalid.
template <typename T>
void EpPackFp8Cpu(const T* x, int64_t num_in, int64_t H, const int32_t* rows,
                  int64_t num_out, uint8_t* q, float* scales);

// out[m] = sum_j w[m*J+j] * y[index[m*J+j]] accumulated in float32 in increasing
// j (a fixed order: deterministic), entries with index outside [0, N) skipped;
// cast to T once at the end.
template <typename T>
void EpCombineCpu(const T* y, int64_t N, int64_t H, const int32_t* index,
                  const float* w, int64_t M, int64_t J, T* out);

}  // namespace jax_moe
