// CPU kernels of silu_and_mul (forward, forward with FP8 output, backward).
#pragma once

#include <cstdint>

#include "silu/silu_problem.h"

namespace jax_moe {

// Storage types of the supported row dtypes (float32, bfloat16, float16 bits).
struct Bf16Bits { uint16_t bits; };
struct F16Bits { uint16_t bits; };

template <typename T>
void SiluAndMulCpu(const SiluProblem& p, const T* h, T* y);

// q: e4m3 bytes [rows, I]; scales: float32 [rows, I / 128].
template <typename T>
void SiluAndMulFp8Cpu(const SiluProblem& p, const T* h, uint8_t* q, float* scales);

// dh = d(silu(g) * u) for dy; rows past the count get zeros (always).
template <typename T>
void SiluAndMulBwdCpu(const SiluProblem& p, const T* h, const T* dy, T* dh);

}  // namespace jax_moe
