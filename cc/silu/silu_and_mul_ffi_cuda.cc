// FFI handlers: silu_and_mul forward, forward with FP8 output, and backward on
// CUDA. Launch on XLA's stream only, check every launch, no host sync: safe to
// capture in a CUDA graph.
#include <string>

#include "common/registry.h"
#include "silu/silu_and_mul_cuda.h"
#include "silu/silu_ffi_args.h"

namespace jax_moe {
namespace {

SiluDtype ToSiluDtype(ffi::DataType dt) {  // checked by DecodeSiluArgs
  switch (dt) {
    case ffi::DataType::BF16: return SiluDtype::kBf16;
    case ffi::DataType::F16: return SiluDtype::kF16;
    default: return SiluDtype::kF32;
  }
}

ffi::Error LaunchStatus(const std::string& op, cudaError_t err) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(op + ": CUDA launch failed: " + cudaGetErrorString(err));
}

ffi::Error SiluCudaImpl(cudaStream_t stream, ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                        ffi::Result<ffi::AnyBuffer> y, int64_t num_batch_dims, bool zero_fill) {
  SiluProblem p;
  ffi::Error err = DecodeSiluFwd(h, counts, *y, num_batch_dims, zero_fill, &p);
  if (err.failure()) return err;
  const SiluDtype dt = ToSiluDtype(h.element_type());
  return LaunchStatus("silu_and_mul",
                      LaunchSiluAndMul(dt, p, h.untyped_data(), y->untyped_data(), stream));
}

ffi::Error SiluFp8CudaImpl(cudaStream_t stream, ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                           ffi::Result<ffi::AnyBuffer> q, ffi::Result<ffi::AnyBuffer> scales,
                           int64_t num_batch_dims, bool zero_fill) {
  SiluProblem p;
  ffi::Error err = DecodeSiluFp8(h, counts, *q, *scales, num_batch_dims, zero_fill, &p);
  if (err.failure()) return err;
  const SiluDtype dt = ToSiluDtype(h.element_type());
  return LaunchStatus("silu_and_mul(fp8=True)",
                      LaunchSiluAndMulFp8(dt, p, h.untyped_data(),
                                          static_cast<uint8_t*>(q->untyped_data()),
                                          static_cast<float*>(scales->untyped_data()), stream));
}

ffi::Error SiluBwdCudaImpl(cudaStream_t stream, ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                           ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dh,
                           int64_t num_batch_dims) {
  SiluProblem p;
  ffi::Error err = DecodeSiluBwd(h, counts, dy, *dh, num_batch_dims, &p);
  if (err.failure()) return err;
  const SiluDtype dt = ToSiluDtype(h.element_type());
  return LaunchStatus("silu_and_mul backward",
                      LaunchSiluAndMulBwd(dt, p, h.untyped_data(), dy.untyped_data(),
                                          dh->untyped_data(), stream));
}

XLA_FFI_DEFINE_HANDLER(kSiluCuda, SiluCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Ret<ffi::AnyBuffer>()         // y [B..., P..., I]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("zero_fill"),
                       {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER(kSiluFp8Cuda, SiluFp8CudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Ret<ffi::AnyBuffer>()         // q f8e4m3fn [B..., P..., I]
                           .Ret<ffi::AnyBuffer>()         // scales f32 [B..., P..., I/128]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("zero_fill"),
                       {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER(kSiluBwdCuda, SiluBwdCudaImpl,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Arg<ffi::AnyBuffer>()         // dy [B..., P..., I]
                           .Ret<ffi::AnyBuffer>()         // dh [B..., P..., 2I]
                           .Attr<int64_t>("num_batch_dims"),
                       {ffi::Traits::kCmdBufferCompatible});

JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_cuda", kSiluCuda);
JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_fp8_cuda", kSiluFp8Cuda);
JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_bwd_cuda", kSiluBwdCuda);

}  // namespace
}  // namespace jax_moe
