// CUDA launchers of silu_and_mul (no XLA headers: included by the .cu and by the
// host-side FFI handlers). Everything is enqueued on `stream`; no host sync.
// `p.counts` is a device pointer (or null). Return the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "silu/silu_problem.h"

namespace jax_moe {

enum class SiluDtype { kF32, kBf16, kF16 };

cudaError_t LaunchSiluAndMul(SiluDtype dt, const SiluProblem& p, const void* h, void* y,
                             cudaStream_t stream);

// q: e4m3 bytes [rows, I]; scales: float32 [rows, I / 128]. I % 128 == 0.
cudaError_t LaunchSiluAndMulFp8(SiluDtype dt, const SiluProblem& p, const void* h, uint8_t* q,
                                float* scales, cudaStream_t stream);

// dh rows past the count are zero (p.zero_fill is ignored).
cudaError_t LaunchSiluAndMulBwd(SiluDtype dt, const SiluProblem& p, const void* h,
                                const void* dy, void* dh, cudaStream_t stream);

}  // namespace jax_moe
