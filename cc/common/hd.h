// Marks helpers shared verbatim by the C++ (CPU) and CUDA kernels, so both
// backends compute the same function from the same source.
#pragma once

#ifdef __CUDACC__
#define JAX_MOE_HD __host__ __device__ __forceinline__
#else
#define JAX_MOE_HD inline
#endif
