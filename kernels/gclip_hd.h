/*
 * gclip_hd.h - how the per-thread core (gclip_dtype.h, gclip_tables.h,
 * gclip_norm_math.h) compiles in each of its three homes: as CUDA C++ under
 * nvcc, where every function is __host__ __device__; as C11 in the host
 * library (the CPU path and the plan builder); as C++17 in the SIMT emulator
 * and the tests. The host runs, and tests, the exact code the kernels run.
 */
#ifndef GCLIP_HD_H
#define GCLIP_HD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gclip.h"

#if defined(__CUDACC__)
#define GCLIP_HD __host__ __device__ __forceinline__
#else
#define GCLIP_HD static inline
#endif

#endif /* GCLIP_HD_H */
