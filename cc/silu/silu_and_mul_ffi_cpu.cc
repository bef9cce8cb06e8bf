// FFI handlers: silu_and_mul forward, forward with FP8 output, and backward on the CPU.
#include "common/ieee_denormals.h"
#include <type_traits>

#include "common/registry.h"
#include "silu/silu_and_mul_cpu.h"
#include "silu/silu_ffi_args.h"

namespace jax_moe {
namespace {

// Calls f(Tag<T>{}) with the CPU storage type of a row dtype (checked by DecodeSiluArgs).
template <typename F>
void DispatchRowType(ffi::DataType dt, F&& f) {
  switch (dt) {
    case ffi::DataType::BF16: f(static_cast<Bf16Bits*>(nullptr)); break;
    case ffi::DataType::F16: f(static_cast<F16Bits*>(nullptr)); break;
    default: f(static_cast<float*>(nullptr)); break;
  }
}

ffi::Error SiluCpuImpl(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                       ffi::Result<ffi::AnyBuffer> y, int64_t num_batch_dims, bool zero_fill) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  SiluProblem p;
  ffi::Error err = DecodeSiluFwd(h, counts, *y, num_batch_dims, zero_fill, &p);
  if (err.failure()) return err;
  DispatchRowType(h.element_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    SiluAndMulCpu<T>(p, static_cast<const T*>(h.untyped_data()), static_cast<T*>(y->untyped_data()));
  });
  return ffi::Error::Success();
}

ffi::Error SiluFp8CpuImpl(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts,
                          ffi::Result<ffi::AnyBuffer> q, ffi::Result<ffi::AnyBuffer> scales,
                          int64_t num_batch_dims, bool zero_fill) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  SiluProblem p;
  ffi::Error err = DecodeSiluFp8(h, counts, *q, *scales, num_batch_dims, zero_fill, &p);
  if (err.failure()) return err;
  DispatchRowType(h.element_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    SiluAndMulFp8Cpu<T>(p, static_cast<const T*>(h.untyped_data()),
                        static_cast<uint8_t*>(q->untyped_data()),
                        static_cast<float*>(scales->untyped_data()));
  });
  return ffi::Error::Success();
}

ffi::Error SiluBwdCpuImpl(ffi::AnyBuffer h, ffi::Buffer<ffi::S32> counts, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dh, int64_t num_batch_dims) {
  const ScopedIeeeDenormals ieee;  // bits as on CUDA (see the header)
  SiluProblem p;
  ffi::Error err = DecodeSiluBwd(h, counts, dy, *dh, num_batch_dims, &p);
  if (err.failure()) return err;
  DispatchRowType(h.element_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    SiluAndMulBwdCpu<T>(p, static_cast<const T*>(h.untyped_data()),
                        static_cast<const T*>(dy.untyped_data()), static_cast<T*>(dh->untyped_data()));
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kSiluCpu, SiluCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Ret<ffi::AnyBuffer>()         // y [B..., P..., I]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("zero_fill"));

XLA_FFI_DEFINE_HANDLER(kSiluFp8Cpu, SiluFp8CpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Ret<ffi::AnyBuffer>()         // q f8e4m3fn [B..., P..., I]
                           .Ret<ffi::AnyBuffer>()         // scales f32 [B..., P..., I/128]
                           .Attr<int64_t>("num_batch_dims")
                           .Attr<bool>("zero_fill"));

XLA_FFI_DEFINE_HANDLER(kSiluBwdCpu, SiluBwdCpuImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()         // h [B..., P..., 2I]
                           .Arg<ffi::Buffer<ffi::S32>>()  // counts [B..., 0 or 1]
                           .Arg<ffi::AnyBuffer>()         // dy [B..., P..., I]
                           .Ret<ffi::AnyBuffer>()         // dh [B..., P..., 2I]
                           .Attr<int64_t>("num_batch_dims"));

JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_cpu", kSiluCpu);
JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_fp8_cpu", kSiluFp8Cpu);
JAX_MOE_FFI_TARGET("jax_moe_silu_and_mul_bwd_cpu", kSiluBwdCpu);

}  // namespace
}  // namespace jax_moe
