// FFI handlers of the EP kernels on CUDA: jax_moe_ep_{layout,route,gather,
// pack_fp8,combine}_cuda. Same decoding as the CPU handlers (ep_ffi_args.h);
// launches on XLA's stream only, no host synchronization (CUDA-graph safe).
#include <cuda_runtime_api.h>

#include <string>

#include "common/registry.h"
#include "ep/ep_cuda.h"
#include "ep/ep_ffi_args.h"
#include "ep/ep_layout_plan.h"
#include "ep/ep_route_plan.h"

namespace jax_moe {
namespace {

ffi::Error Launched(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(op) + ": CUDA launch failed: " +
                              cudaGetErrorString(err));
}

bool RowTypeOf(ffi::DataType dtype, EpRowType* type) {
  switch (dtype) {
    case ffi::F32: *type = EpRowType::kF32; return true;
    case ffi::BF16: *type = EpRowType::kBf16; return true;
    case ffi::F16: *type = EpRowType::kF16; return true;
    default: return false;
  }
}

ffi::Error LayoutImpl(cudaStream_t stream, ffi::Buffer<ffi::S32> ids,
                      ffi::Result<ffi::Buffer<ffi::S32>> send_rows,
                      ffi::Result<ffi::Buffer<ffi::S32>> send_local,
                      ffi::Result<ffi::Buffer<ffi::S32>> token_index,
                      ffi::Result<ffi::Buffer<ffi::S32>> workspace, int64_t num_experts,
                      int64_t num_ranks) {
  EpLayoutArgs a;
  ffi::Error err = DecodeEpLayout(ids, send_rows, send_local, token_index, num_experts,
                                  num_ranks, &a);
  if (err.failure()) return err;
  if (Elems(*workspace) < ep_layout_plan::WorkspaceWords(a.T, a.R))
    return ffi::Error::Internal("ep_layout: CUDA workspace too small (Python plan out of sync)");
  return Launched("ep_layout",
                  LaunchEpLayout(ids.typed_data(), a.T, a.K, a.E, a.R, send_rows->typed_data(),
                                 send_local->typed_data(), token_index->typed_data(),
                                 workspace->typed_data(), stream));
}

XLA_FFI_DEFINE_HANDLER(kLayout, LayoutImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::Buffer<ffi::S32>>()  // topk_ids [T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // send_rows [R, T]
                           .Ret<ffi::Buffer<ffi::S32>>()  // send_local [R*T, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // token_index [T, R]
                           .Ret<ffi::Buffer<ffi::S32>>()  // workspace [R * chunks]
                           .Attr<int64_t>("num_experts")
                           .Attr<int64_t>("num_ranks"),
                       {ffi::Traits::kCmdBufferCompatible});
JAX_MOE_FFI_TARGET("jax_moe_ep_layout_cuda", kLayout);

ffi::Error RouteImpl(cudaStream_t stream, ffi::Buffer<ffi::S32> recv_local,
                     ffi::Result<ffi::Buffer<ffi::S32>> recv_index,
                     ffi::Result<ffi::Buffer<ffi::S32>> row_src,
                     ffi::Result<ffi::Buffer<ffi::S32>> counts,
                     ffi::Result<ffi::Buffer<ffi::S32>> group_sizes,
                     ffi::Result<ffi::Buffer<ffi::S32>> dropped,
                     ffi::Result<ffi::Buffer<ffi::S32>> workspace, int64_t num_local,
                     int64_t mode) {
  EpRouteArgs a;
  ffi::Error err = DecodeEpRoute(recv_local, recv_index, row_src, counts, group_sizes, dropped,
                                 num_local, mode, &a);
  if (err.failure()) return err;
  if (Elems(*workspace) < ep_route_plan::WorkspaceWords(a.M, a.El))
    return ffi::Error::Internal("ep_route: CUDA workspace too small (Python plan out of sync)");
  return Launched("ep_route",
                  LaunchEpRoute(recv_local.typed_data(), a.M, a.K, a.El, a.mode, a.N,
                                recv_index->typed_data(), row_src->typed_data(),
                                counts->typed_data(), group_sizes->typed_data(),
                                dropped->typed_data(), workspace->typed_data(), stream));
}

XLA_FFI_DEFINE_HANDLER(kRoute, RouteImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::Buffer<ffi::S32>>()  // recv_local [M, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // recv_index [M, K]
                           .Ret<ffi::Buffer<ffi::S32>>()  // row_src [N]
                           .Ret<ffi::Buffer<ffi::S32>>()  // counts [El]
                           .Ret<ffi::Buffer<ffi::S32>>()  // group_sizes [El]
                           .Ret<ffi::Buffer<ffi::S32>>()  // dropped [1]
                           .Ret<ffi::Buffer<ffi::S32>>()  // workspace [El * chunks]
                           .Attr<int64_t>("num_local")
                           .Attr<int64_t>("mode"),
                       {ffi::Traits::kCmdBufferCompatible});
JAX_MOE_FFI_TARGET("jax_moe_ep_route_cuda", kRoute);

ffi::Error GatherImpl(cudaStream_t stream, ffi::AnyBuffer in, ffi::Buffer<ffi::S32> rows,
                      ffi::Result<ffi::AnyBuffer> out) {
  EpRowsArgs a;
  ffi::Error err = DecodeEpGather(in, rows, out, &a);
  if (err.failure()) return err;
  const int64_t row_bytes = a.row_elems * static_cast<int64_t>(ffi::ByteWidth(in.element_type()));
  return Launched("ep_gather", LaunchEpGather(in.untyped_data(), a.num_in, row_bytes,
                                              rows.typed_data(), a.num_out, out->untyped_data(),
                                              stream));
}

XLA_FFI_DEFINE_HANDLER(kGather, GatherImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // rows in [num_in, C]
                           .Arg<ffi::Buffer<ffi::S32>>()  // row index [num_out]
                           .Ret<ffi::AnyBuffer>(),        // rows out [num_out, C]
                       {ffi::Traits::kCmdBufferCompatible});
JAX_MOE_FFI_TARGET("jax_moe_ep_gather_cuda", kGather);

ffi::Error PackFp8Impl(cudaStream_t stream, ffi::AnyBuffer x, ffi::Buffer<ffi::S32> rows,
                       ffi::Result<ffi::AnyBuffer> q, ffi::Result<ffi::Buffer<ffi::F32>> scales) {
  EpRowsArgs a;
  ffi::Error err = DecodeEpPackFp8(x, rows, q, scales, &a);
  if (err.failure()) return err;
  EpRowType type;
  if (!RowTypeOf(x.element_type(), &type))
    return InvalidArgument("ep_pack_fp8", "x must be float32, bfloat16 or float16");
  return Launched("ep_pack_fp8",
                  LaunchEpPackFp8(type, x.untyped_data(), a.num_in, a.row_elems,
                                  rows.typed_data(), a.num_out,
                                  static_cast<uint8_t*>(q->untyped_data()),
                                  scales->typed_data(), stream));
}

XLA_FFI_DEFINE_HANDLER(kPackFp8, PackFp8Impl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()          // x [T, H]
                           .Arg<ffi::Buffer<ffi::S32>>()   // rows [M]
                           .Ret<ffi::AnyBuffer>()          // q float8_e4m3fn [M, H]
                           .Ret<ffi::Buffer<ffi::F32>>(),  // scales [M, H/128]
                       {ffi::Traits::kCmdBufferCompatible});
JAX_MOE_FFI_TARGET("jax_moe_ep_pack_fp8_cuda", kPackFp8);

ffi::Error CombineImpl(cudaStream_t stream, ffi::AnyBuffer y, ffi::Buffer<ffi::S32> index,
                       ffi::Buffer<ffi::F32> w, ffi::Result<ffi::AnyBuffer> out) {
  EpCombineArgs a;
  ffi::Error err = DecodeEpCombine(y, index, w, out, &a);
  if (err.failure()) return err;
  EpRowType type;
  if (!RowTypeOf(y.element_type(), &type))
    return InvalidArgument("ep_combine", "y must be float32, bfloat16 or float16");
  return Launched("ep_combine",
                  LaunchEpCombine(type, y.untyped_data(), a.N, a.H, index.typed_data(),
                                  w.typed_data(), a.M, a.J, out->untyped_data(), stream));
}

XLA_FFI_DEFINE_HANDLER(kCombine, CombineImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()          // y [N, H]
                           .Arg<ffi::Buffer<ffi::S32>>()   // index [M, J]
                           .Arg<ffi::Buffer<ffi::F32>>()   // weights [M, J]
                           .Ret<ffi::AnyBuffer>(),         // out [M, H]
                       {ffi::Traits::kCmdBufferCompatible});
JAX_MOE_FFI_TARGET("jax_moe_ep_combine_cuda", kCombine);

}  // namespace
}  // namespace jax_moe
