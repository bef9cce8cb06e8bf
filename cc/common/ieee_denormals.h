// Keeps subnormal floats in the CPU kernels' arithmetic.
//
// XLA's CPU runtime runs with flush-to-zero / denormals-are-zero set (seen with
// jax 0.10: jit(x * 1e-30)(1e-10) == 0), while CUDA kernels built without
// --use_fast_math keep subnormals. A float kernel that should give the same
// bits on both backends (silu_and_mul's backward meets sig ~ 1e-39 at g ~ -90)
// therefore switches IEEE behaviour on for its own duration and restores the
// caller's mode afterwards. Construct one at the top of a CPU handler.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace jax_moe {

class ScopedIeeeDenormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  ScopedIeeeDenormals() : saved_(_mm_getcsr()) {
    constexpr unsigned kFlushToZero = 1u << 15, kDenormalsAreZero = 1u << 6;
    _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero));
  }
  ~ScopedIeeeDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#elif defined(__aarch64__)
  ScopedIeeeDenormals() {
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    const uint64_t ieee = saved_ & ~(uint64_t{1} << 24);  // FZ bit
    asm volatile("msr fpcr, %0" : : "r"(ieee));
  }
  ~ScopedIeeeDenormals() { asm volatile("msr fpcr, %0" : : "r"(saved_)); }

 private:
  uint64_t saved_;
#else
  ScopedIeeeDenormals() = default;
#endif
  ScopedIeeeDenormals(const ScopedIeeeDenormals&) = delete;
  ScopedIeeeDenormals& operator=(const ScopedIeeeDenormals&) = delete;
};

}  // namespace jax_moe
