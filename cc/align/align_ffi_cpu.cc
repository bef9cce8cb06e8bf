// FFI handler: moe_align_block_size on the CPU.
#include "align/align_cpu.h"
#include "align/align_ffi_args.h"
#include "common/dtype_dispatch.h"
#include "common/registry.h"

namespace jax_moe {
namespace {

ffi::Error AlignCpuImpl(ffi::AnyBuffer ids, ffi::Buffer<ffi::S32> expert_map,
                        ffi::Result<ffi::Buffer<ffi::S32>> sorted_ids,
                        ffi::Result<ffi::Buffer<ffi::S32>> expert_ids,
                        ffi::Result<ffi::Buffer<ffi::S32>> post_pad,
                        int64_t num_batch_dims, int64_t num_experts,
                        int64_t num_local_experts, int64_t block_size, bool pad_sorted_ids) {
  AlignBatch b;
  ffi::Error err = DecodeAlignArgs(ids, expert_map, sorted_ids, expert_ids, post_pad,
                                   num_batch_dims, num_experts, num_local_experts,
                                   block_size, pad_sorted_ids, &b);
  if (err.failure()) return err;
  const AlignProblem& p = b.problem;
  const bool ok = DispatchIntegerType(ids.element_type(), [&](auto tag) {
    using Id = typename decltype(tag)::type;
    const Id* all_ids = static_cast<const Id*>(ids.untyped_data());
    for (int64_t i = 0; i < b.batch; ++i) {
      AlignCpu<Id>(p, all_ids + i * p.numel,
                   b.map_stride ? expert_map.typed_data() + i * b.map_stride : nullptr,
                   sorted_ids->typed_data() + i * p.padded_len,
                   expert_ids->typed_data() + i * p.num_blocks, post_pad->typed_data() + i);
    }
  });
  if (!ok) return InvalidArgument("moe_align_block_size", "topk_ids must have an integer dtype");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kAlignCpu, AlignCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()            // topk_ids [B..., routes...]
                           .Arg<ffi::Buffer<ffi::S32>>()     // expert_map [B..., E or 0]
                           .Ret<ffi::Buffer<ffi::S32>>()     // sorted_token_ids [B..., P]
                           .Ret<ffi::Buffer<ffi::S32>>()     // expert_ids [B..., P/bs]
                           .Ret<ffi::Buffer<ffi::S32>>()     // num_tokens_post_pad [B..., 1]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<int64_t>("num_experts")
                           .Attr<int64_t>("num_local_experts")
                           .Attr<int64_t>("block_size")
                           .Attr<bool>("pad_sorted_ids"));

JAX_MOE_FFI_TARGET("jax_moe_align_cpu", kAlignCpu);

}  // namespace
}  // namespace jax_moe
