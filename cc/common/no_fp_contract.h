// Include first in a CPU kernel file whose float math must match the CUDA kernel
// bit for bit: products and sums then round separately (no fused multiply-add),
// as the CUDA kernels do (__fmul_rn/__fadd_rn or explicit fmaf). GNU mode would
// otherwise contract `acc += w * v` on FMA targets (e.g. aarch64, -march=native).
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
