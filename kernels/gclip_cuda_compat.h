/*
 * gclip_cuda_compat.h - the one place where kernel sources learn whether they
 * are compiled by nvcc for a GPU or by the host compiler for the SIMT
 * emulator (tests/emu). Kernel files include this and use plain CUDA C++ plus
 * the two macros below; nothing else in them depends on the mode.
 *
 *   GCLIP_LAUNCH(kernel, grid, block, stream, args...)  launch one kernel
 *   GCLIP_LAUNCH_STATUS()  the launch error as int (0 = success)
 */
#ifndef GCLIP_CUDA_COMPAT_H
#define GCLIP_CUDA_COMPAT_H

#if defined(GCLIP_SIMT_EMULATION)
/* tests/emu/simt_emu.h defines threadIdx, blockIdx, blockDim, gridDim,
 * __syncthreads, __threadfence, atomicAdd, atomicExch, uint4, the CUDA
 * keywords, gclip_emu_block_reduce and both macros. */
#include "simt_emu.h"
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#define GCLIP_LAUNCH(kernel, grid, block, stream, ...) \
    kernel<<<(grid), (block), 0, (cudaStream_t)(stream)>>>(__VA_ARGS__)
#define GCLIP_LAUNCH_STATUS() ((int)cudaGetLastError())
#else
#error "kernel sources are compiled by nvcc or with GCLIP_SIMT_EMULATION"
#endif

#endif /* GCLIP_CUDA_COMPAT_H */
