// FFI handlers of the EP kernels on the CPU: jax_moe_ep_{layout,route,gather,
// pack_fp8,combine}_cpu.
#include "common/ieee_denormals.h"
#include "common/registry.h"
#include "ep/ep_cpu.h"
#include "ep/ep_ffi_args.h"
#include "ep/ep_float.h"

namespace jax_moe {
namespace {

ffi::Error LayoutImpl(ffi::Buffer<ffi::S32> ids, ffi::Result<ffi::Buffer<ffi::S32>> send_rows,
                      ffi::Result<ffi::Buffer<ffi::S32>> send_local,
                      ffi::Result<ffi::Buffer<ffi::S32>> token_index, int64_t num_experts,
                      int64_t num_ranks) {
  EpLayoutArgs a;
  ffi::Error err = DecodeEpLayout(ids, send_rows, send_local, token_index, num_experts,
                                  num_ranks, &a);
  if (err.failure()) return err;
  EpLayoutCpu(ids.typed_data(), a.T, a.K, a.E, a.R, send_rows->typed_data(),
              send_local->typed_data(), token_index->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kLayout, LayoutImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::Buffer<ffi::S32>>()  // topk_ids [T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // send_rows [R, T]
                           .Ret<ffi::Buffer<ffi::S32>>()  // send_local [R*T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // token_index [T, R]
                           .Attr<int64_t>("num_experts")
                           .Attr<int64_t>("num_ranks"));
JAX_MOE_FFI_TARGET("jax_moe_ep_layout_cpu", kLayout);

ffi::Error RouteImpl(ffi::Buffer<ffi::S32> recv_local,
                     ffi::Result<ffi::Buffer<ffi::S32>> recv_index,
                     ffi::Result<ffi::Buffer<ffi::S32>> row_src,
                     ffi::Result<ffi::Buffer<ffi::S32>> counts,
                     ffi::Result<ffi::Buffer<ffi::S32>> group_sizes,
                     ffi::Result<ffi::Buffer<ffi::S32>> dropped, int64_t num_local,
                     int64_t mode) {
  EpRouteArgs a;
  ffi::Error err = DecodeEpRoute(recv_local, recv_index, row_src, counts, group_sizes, dropped,
                                 num_local, mode, &a);
  if (err.failure()) return err;
  EpRouteCpu(recv_local.typed_data(), a.M, a.K, a.El, a.mode, a.N, recv_index->typed_data(),
             row_src->typed_data(), counts->typed_data(), group_sizes->typed_data(),
             dropped->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kRoute, RouteImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::Buffer<ffi::S32>>()  // recv_local [M, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // recv_index [M, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // row_src [N]
                           .Ret<ffi::Buffer<ffi::S32>>()  // counts [El]
                           .Ret<ffi::Buffer<ffi::S32>>()  // group_sizes [El]
                           .Ret<ffi::Buffer<ffi::S32>>()  // dropped [1]
                           .Attr<int64_t>("num_local")
                           .Attr<int64_t>("mode"));
JAX_MOE_FFI_TARGET("jax_moe_ep_route_cpu", kRoute);

ffi::Error GatherImpl(ffi::AnyBuffer in, ffi::Buffer<ffi::S32> rows,
                      ffi::Result<ffi::AnyBuffer> out) {
  EpRowsArgs a;
  ffi::Error err = DecodeEpGather(in, rows, out, &a);
  if (err.failure()) return err;
  const int64_t row_bytes = a.row_elems * static_cast<int64_t>(ffi::ByteWidth(in.element_type()));
  EpGatherCpu(in.untyped_data(), a.num_in, row_bytes, rows.typed_data(), a.num_out,
              out->untyped_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kGather, GatherImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // rows in [num_in, C]
                           .Arg<ffi::Buffer<ffi::S32>>()  // row index [num_out]
                           .Ret<ffi::AnyBuffer>());       // rows out [num_out, C]
JAX_MOE_FFI_TARGET("jax_moe_ep_gather_cpu", kGather);

// Calls f(Tag<T>{}) for the float row types; false for others.
template <typename F>
bool DispatchRowType(ffi::DataType dtype, F&& f) {
  switch (dtype) {
    case ffi::F32: f(static_cast<float*>(nullptr)); return true;
    case ffi::BF16: f(static_cast<Bf16*>(nullptr)); return true;
    case ffi::F16: f(static_cast<F16*>(nullptr)); return true;
    default: return false;
  }
}

ffi::Error PackFp8Impl(ffi::AnyBuffer x, ffi::Buffer<ffi::S32> rows,
                       ffi::Result<ffi::AnyBuffer> q, ffi::Result<ffi::Buffer<ffi::F32>> scales) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  EpRowsArgs a;
  ffi::Error err = DecodeEpPackFp8(x, rows, q, scales, &a);
  if (err.failure()) return err;
  const bool ok = DispatchRowType(x.element_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    EpPackFp8Cpu<T>(static_cast<const T*>(x.untyped_data()), a.num_in, a.row_elems,
                    rows.typed_data(), a.num_out, static_cast<uint8_t*>(q->untyped_data()),
                    scales->typed_data());
  });
  if (!ok) return InvalidArgument("ep_pack_fp8", "x must be float32, bfloat16 or float16");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kPackFp8, PackFp8Impl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // x [T, H]
                           .Arg<ffi::Buffer<ffi::S32>>()  // rows [M]
                           .Ret<ffi::AnyBuffer>()         // q float8_e4m3fn [M, H]
                           .Ret<ffi::Buffer<ffi::F32>>()); // scales [M, H/128]
JAX_MOE_FFI_TARGET("jax_moe_ep_pack_fp8_cpu", kPackFp8);

ffi::Error CombineImpl(ffi::AnyBuffer y, ffi::Buffer<ffi::S32> index, ffi::Buffer<ffi::F32> w,
                       ffi::Result<ffi::AnyBuffer> out) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  EpCombineArgs a;
  ffi::Error err = DecodeEpCombine(y, index, w, out, &a);
  if (err.failure()) return err;
  const bool ok = DispatchRowType(y.element_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    EpCombineCpu<T>(static_cast<const T*>(y.untyped_data()), a.N, a.H, index.typed_data(),
                    w.typed_data(), a.M, a.J, static_cast<T*>(out->untyped_data()));
  });
  if (!ok) return InvalidArgument("ep_combine", "y must be float32, bfloat16 or float16");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kCombine, CombineImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // y [N, H]
                           .Arg<ffi::Buffer<ffi::S32>>()  // index [M, J]
                           .Arg<ffi::Buffer<ffi::F32>>()  // weights [M, J]
                           .Ret<ffi::AnyBuffer>());       // out [M, H]
JAX_MOE_FFI_TARGET("jax_moe_ep_combine_cpu", kCombine);

}  // namespace
}  // namespace jax_moe
