// FFI handlers: the permute family on CUDA. Decode and check shapes (shared
// with the CPU handlers), then enqueue the kernels on XLA's stream. No host
// sync, no allocation: safe to capture in command buffers (CUDA graphs).
#include <cuda_runtime_api.h>

#include <string>

#include "common/registry.h"
#include "permute/permute_cuda.h"
#include "permute/permute_ffi_args.h"

namespace jax_moe {
namespace {

bool ToRowType(ffi::DataType t, RowType* out) {
  switch (t) {
    case ffi::DataType::F32: *out = RowType::kF32; return true;
    case ffi::DataType::BF16: *out = RowType::kBf16; return true;
    case ffi::DataType::F16: *out = RowType::kF16; return true;
    default: return false;
  }
}

ffi::Error LaunchStatus(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(op) + ": CUDA launch failed: " +
                              cudaGetErrorString(err));
}

ffi::Error PlanCudaImpl(cudaStream_t stream, ffi::Buffer<ffi::S32> sorted_ids,
                        ffi::Buffer<ffi::S32> expert_ids,
                        ffi::Result<ffi::Buffer<ffi::S32>> route_rows,
                        ffi::Result<ffi::Buffer<ffi::S32>> group_sizes, int64_t num_batch_dims,
                        int64_t block_size) {
  PlanShape s;
  ffi::Error err = DecodePlanArgs(sorted_ids, expert_ids, *route_rows, *group_sizes,
                                  num_batch_dims, block_size, &s);
  if (err.failure()) return err;
  return LaunchStatus("permute_plan",
                      LaunchPermutePlan(stream, s, sorted_ids.typed_data(),
                                        expert_ids.typed_data(), route_rows->typed_data(),
                                        group_sizes->typed_data()));
}

ffi::Error PermuteCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                           ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> route_rows,
                           ffi::Result<ffi::AnyBuffer> out, int64_t num_batch_dims,
                           bool weighted) {
  PermuteShape s;
  ffi::Error err = DecodePermuteArgs(x, scale, sorted_ids, route_rows, *out, num_batch_dims,
                                     weighted, &s);
  if (err.failure()) return err;
  RowType type;
  if (!ToRowType(x.element_type(), &type)) return InvalidArgument("permute", "bad x dtype");
  const float* sc = weighted ? static_cast<const float*>(scale.untyped_data()) : nullptr;
  return LaunchStatus("permute", LaunchPermute(stream, type, s, x.untyped_data(), sc,
                                               sorted_ids.typed_data(), route_rows.typed_data(),
                                               out->untyped_data()));
}

ffi::Error UnpermuteCudaImpl(cudaStream_t stream, ffi::AnyBuffer y_sorted,
                             ffi::AnyBuffer weights, ffi::Buffer<ffi::S32> sorted_ids,
                             ffi::Buffer<ffi::S32> route_rows, ffi::Result<ffi::AnyBuffer> out,
                             int64_t num_batch_dims, bool weighted) {
  PermuteShape s;
  ffi::Error err = DecodeUnpermuteArgs(y_sorted, weights, sorted_ids, route_rows, *out,
                                       num_batch_dims, weighted, &s);
  if (err.failure()) return err;
  RowType type;
  if (!ToRowType(y_sorted.element_type(), &type))
    return InvalidArgument("unpermute", "bad y_sorted dtype");
  const float* w = weighted ? static_cast<const float*>(weights.untyped_data()) : nullptr;
  return LaunchStatus("unpermute",
                      LaunchUnpermute(stream, type, s, y_sorted.untyped_data(), w,
                                      route_rows.typed_data(), out->untyped_data()));
}

ffi::Error WgradCudaImpl(cudaStream_t stream, ffi::AnyBuffer g, ffi::AnyBuffer y_sorted,
                         ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> route_rows,
                         ffi::Result<ffi::Buffer<ffi::F32>> dw, int64_t num_batch_dims) {
  PermuteShape s;
  ffi::Error err =
      DecodeWgradArgs(g, y_sorted, sorted_ids, route_rows, *dw, num_batch_dims, &s);
  if (err.failure()) return err;
  RowType type;
  if (!ToRowType(g.element_type(), &type)) return InvalidArgument("unpermute_wgrad", "bad g dtype");
  return LaunchStatus("unpermute_wgrad",
                      LaunchUnpermuteWgrad(stream, type, s, g.untyped_data(),
                                           y_sorted.untyped_data(), route_rows.typed_data(),
                                           dw->typed_data()));
}

// Operand order and meaning as in permute_ffi_cpu.cc.
XLA_FFI_DEFINE_HANDLER(kPlanCuda, PlanCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // expert_ids [B..., NB]
                           .Ret<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // group_sizes [B..., L]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<int64_t>("block_size"),
                       {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER(kPermuteCuda, PermuteCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // x [B..., T, H]
                           .Arg<ffi::AnyBuffer>()         // scale f32 [B..., T, K] or [B..., 0]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::AnyBuffer>()         // x_sorted [B..., P, H]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("weighted"),
                       {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER(kUnpermuteCuda, UnpermuteCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // y_sorted [B..., P, H]
                           .Arg<ffi::AnyBuffer>()         // weights f32 [B..., T, K] or [B..., 0]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::AnyBuffer>()         // y [B..., T, H]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("weighted"),
                       {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER(kWgradCuda, WgradCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // g [B..., T, H]
                           .Arg<ffi::AnyBuffer>()         // y_sorted [B..., P, H]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::Buffer<ffi::F32>>()  // dw [B..., T, K]
                           .Attr<int64_t>("num_batch_dims"),
                       {ffi::Traits::kCmdBufferCompatible});

JAX_MOE_FFI_TARGET("jax_moe_permute_plan_cuda", kPlanCuda);
JAX_MOE_FFI_TARGET("jax_moe_permute_cuda", kPermuteCuda);
JAX_MOE_FFI_TARGET("jax_moe_unpermute_cuda", kUnpermuteCuda);
JAX_MOE_FFI_TARGET("jax_moe_unpermute_wgrad_cuda", kWgradCuda);

}  // namespace
}  // namespace jax_moe
