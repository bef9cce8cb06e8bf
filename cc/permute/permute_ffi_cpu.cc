// FFI handlers: the permute family on the CPU.
#include "common/ieee_denormals.h"
#include "common/registry.h"
#include "permute/permute_cpu.h"
#include "permute/permute_ffi_args.h"
#include "permute/row_format.h"

namespace jax_moe {
namespace {

ffi::Error PlanCpuImpl(ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> expert_ids,
                       ffi::Result<ffi::Buffer<ffi::S32>> route_rows,
                       ffi::Result<ffi::Buffer<ffi::S32>> group_sizes, int64_t num_batch_dims,
                       int64_t block_size) {
  PlanShape s;
  ffi::Error err = DecodePlanArgs(sorted_ids, expert_ids, *route_rows, *group_sizes,
                                  num_batch_dims, block_size, &s);
  if (err.failure()) return err;
  for (int64_t b = 0; b < s.batch; ++b) {
    PermutePlanCpu(s, sorted_ids.typed_data() + b * s.rows,
                   expert_ids.typed_data() + b * s.num_blocks,
                   route_rows->typed_data() + b * s.numel,
                   group_sizes->typed_data() + b * s.num_local);
  }
  return ffi::Error::Success();
}

ffi::Error PermuteCpuImpl(ffi::AnyBuffer x, ffi::AnyBuffer scale,
                          ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> route_rows,
                          ffi::Result<ffi::AnyBuffer> out, int64_t num_batch_dims,
                          bool weighted) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  PermuteShape s;
  ffi::Error err = DecodePermuteArgs(x, scale, sorted_ids, route_rows, *out, num_batch_dims,
                                     weighted, &s);
  if (err.failure()) return err;
  DispatchRowFormat(x.element_type(), [&](auto tag) {
    using Fmt = typename decltype(tag)::type;
    using S = typename Fmt::Storage;
    const S* xs = static_cast<const S*>(x.untyped_data());
    S* os = static_cast<S*>(out->untyped_data());
    const float* sc = weighted ? static_cast<const float*>(scale.untyped_data()) : nullptr;
    for (int64_t b = 0; b < s.batch; ++b) {
      PermuteCpu<Fmt>(s, xs + b * s.tokens * s.hidden, sc ? sc + b * s.numel() : nullptr,
                      sorted_ids.typed_data() + b * s.rows, os + b * s.rows * s.hidden);
    }
  });
  return ffi::Error::Success();
}

ffi::Error UnpermuteCpuImpl(ffi::AnyBuffer y_sorted, ffi::AnyBuffer weights,
                            ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> route_rows,
                            ffi::Result<ffi::AnyBuffer> out, int64_t num_batch_dims,
                            bool weighted) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  PermuteShape s;
  ffi::Error err = DecodeUnpermuteArgs(y_sorted, weights, sorted_ids, route_rows, *out,
                                       num_batch_dims, weighted, &s);
  if (err.failure()) return err;
  DispatchRowFormat(y_sorted.element_type(), [&](auto tag) {
    using Fmt = typename decltype(tag)::type;
    using S = typename Fmt::Storage;
    const S* ys = static_cast<const S*>(y_sorted.untyped_data());
    S* os = static_cast<S*>(out->untyped_data());
    const float* w = weighted ? static_cast<const float*>(weights.untyped_data()) : nullptr;
    for (int64_t b = 0; b < s.batch; ++b) {
      UnpermuteCpu<Fmt>(s, ys + b * s.rows * s.hidden, w ? w + b * s.numel() : nullptr,
                        route_rows.typed_data() + b * s.numel(), os + b * s.tokens * s.hidden);
    }
  });
  return ffi::Error::Success();
}

ffi::Error WgradCpuImpl(ffi::AnyBuffer g, ffi::AnyBuffer y_sorted,
                        ffi::Buffer<ffi::S32> sorted_ids, ffi::Buffer<ffi::S32> route_rows,
                        ffi::Result<ffi::Buffer<ffi::F32>> dw, int64_t num_batch_dims) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  PermuteShape s;
  ffi::Error err =
      DecodeWgradArgs(g, y_sorted, sorted_ids, route_rows, *dw, num_batch_dims, &s);
  if (err.failure()) return err;
  DispatchRowFormat(g.element_type(), [&](auto tag) {
    using Fmt = typename decltype(tag)::type;
    using S = typename Fmt::Storage;
    const S* gs = static_cast<const S*>(g.untyped_data());
    const S* ys = static_cast<const S*>(y_sorted.untyped_data());
    for (int64_t b = 0; b < s.batch; ++b) {
      UnpermuteWgradCpu<Fmt>(s, gs + b * s.tokens * s.hidden, ys + b * s.rows * s.hidden,
                             route_rows.typed_data() + b * s.numel(),
                             dw->typed_data() + b * s.numel());
    }
  });
  return ffi::Error::Success();
}

// Every row call takes both plan index arrays (sorted_token_ids, route_rows) and
// reads the one it needs: the four calls are then each other's transposes with
// the same operands (see jax_moe/_permute_prims.py).
XLA_FFI_DEFINE_HANDLER(kPlanCpu, PlanCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // expert_ids [B..., NB]
                           .Ret<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // group_sizes [B..., L]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<int64_t>("block_size"));

XLA_FFI_DEFINE_HANDLER(kPermuteCpu, PermuteCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // x [B..., T, H]
                           .Arg<ffi::AnyBuffer>()         // scale f32 [B..., T, K] or [B..., 0]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::AnyBuffer>()         // x_sorted [B..., P, H]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("weighted"));

XLA_FFI_DEFINE_HANDLER(kUnpermuteCpu, UnpermuteCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // y_sorted [B..., P, H]
                           .Arg<ffi::AnyBuffer>()         // weights f32 [B..., T, K] or [B..., 0]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::AnyBuffer>()         // y [B..., T, H]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("weighted"));

XLA_FFI_DEFINE_HANDLER(kWgradCpu, WgradCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // g [B..., T, H]
                           .Arg<ffi::AnyBuffer>()         // y_sorted [B..., P, H]
                           .Arg<ffi::Buffer<ffi::S32>>()  // sorted_token_ids [B..., P]
                           .Arg<ffi::Buffer<ffi::S32>>()  // route_rows [B..., T, K]
                           .Ret<ffi::Buffer<ffi::F32>>()  // dw [B..., T, K]
                           .Attr<int64_t>("num_batch_dims"));

JAX_MOE_FFI_TARGET("jax_moe_permute_plan_cpu", kPlanCpu);
JAX_MOE_FFI_TARGET("jax_moe_permute_cpu", kPermuteCpu);
JAX_MOE_FFI_TARGET("jax_moe_unpermute_cpu", kUnpermuteCpu);
JAX_MOE_FFI_TARGET("jax_moe_unpermute_wgrad_cpu", kWgradCpu);

}  // namespace
}  // namespace jax_moe
