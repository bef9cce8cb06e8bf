// FFI handler: moe_align_block_size on CUDA (kernels in align.cu).
#include <cuda_runtime_api.h>

#include "align/align_cuda.h"
#include "align/align_ffi_args.h"
#include "align/align_plan.h"
#include "common/dtype_dispatch.h"
#include "common/registry.h"

namespace jax_moe {
namespace {

ffi::Error AlignCudaImpl(cudaStream_t stream, ffi::AnyBuffer ids, ffi::Buffer<ffi::S32> expert_map,
                         ffi::Result<ffi::Buffer<ffi::S32>> sorted_ids,
                         ffi::Result<ffi::Buffer<ffi::S32>> expert_ids,
                         ffi::Result<ffi::Buffer<ffi::S32>> post_pad,
                         ffi::Result<ffi::Buffer<ffi::S32>> workspace,
                         int64_t num_batch_dims, int64_t num_experts,
                         int64_t num_local_experts, int64_t block_size, bool pad_sorted_ids) {
  const std::string op = "moe_align_block_size";
  AlignBatch b;
  ffi::Error err = DecodeAlignArgs(ids, expert_map, sorted_ids, expert_ids, post_pad,
                                   num_batch_dims, num_experts, num_local_experts,
                                   block_size, pad_sorted_ids, &b);
  if (err.failure()) return err;
  AlignCudaArgs a;
  a.problem = b.problem;
  a.batch = b.batch;
  if (!DispatchIntegerType(ids.element_type(), [&](auto tag) {
        a.id_kind = IdKindOf<typename decltype(tag)::type>();
      }))
    return InvalidArgument(op, "topk_ids must have an integer dtype");
  a.ids = ids.untyped_data();
  a.expert_map = b.map_stride ? expert_map.typed_data() : nullptr;
  a.map_stride = b.map_stride;
  a.sorted_token_ids = sorted_ids->typed_data();
  a.expert_ids = expert_ids->typed_data();
  a.num_tokens_post_pad = post_pad->typed_data();
  a.workspace = workspace->typed_data();
  a.workspace_stride = b.batch ? static_cast<int64_t>(workspace->element_count()) / b.batch : 0;
  if (a.workspace_stride < align_plan::WorkspaceWords(a.problem.numel, a.problem.num_local))
    return ffi::Error::Internal(op + ": CUDA workspace too small (Python plan out of sync)");
  const cudaError_t cuda_err = LaunchAlignCuda(a, stream);
  if (cuda_err != cudaSuccess)
    return ffi::Error::Internal(op + ": CUDA launch failed: " + cudaGetErrorString(cuda_err));
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kAlignCuda, AlignCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()            // topk_ids [B..., routes...]
                           .Arg<ffi::Buffer<ffi::S32>>()     // expert_map [B..., E or 0]
                           .Ret<ffi::Buffer<ffi::S32>>()     // sorted_token_ids [B..., P]
                           .Ret<ffi::Buffer<ffi::S32>>()     // expert_ids [B..., P/bs]
                           .Ret<ffi::Buffer<ffi::S32>>()     // num_tokens_post_pad [B..., 1]
                           .Ret<ffi::Buffer<ffi::S32>>()     // workspace [B..., W]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<int64_t>("num_experts")
                           .Attr<int64_t>("num_local_experts")
                           .Attr<int64_t>("block_size")
                           .Attr<bool>("pad_sorted_ids"),
                       {ffi::Traits::kCmdBufferCompatible});

JAX_MOE_FFI_TARGET("jax_moe_align_cuda", kAlignCuda);

}  // namespace
}  // namespace jax_moe
