/*
 * gclip_cuda_compat.h - the one place where kernel sources learn whether they
 * are compiled by nvcc for a GPU or by the host compiler for the SIMT
 * emulator (tests/emu). Kernel files include this and use plain CUDA C++ plus
 * the macros below; nothing else in them depends on the mode.
 *
 *   GCLIP_LAUNCH(kernel, grid, block, stream, args...)
 *       launch one kernel; evaluates to that launch's own status as an int
 *       (0 = success), never to an error left by an earlier call
 *   GCLIP_LAUNCH_DEPENDENT(kernel, dependent, grid, block, stream, args...)
 *       the same; when `dependent` is nonzero the launch is a programmatic
 *       dependent launch (cudaLaunchAttributeProgrammaticStreamSerialization,
 *       sm_90 and later): its blocks may be scheduled once every block of the
 *       kernel before it in the stream has called gclip_release_dependents()
 *       or exited, so the kernel must call gclip_wait_prior_grids() before
 *       it touches global memory
 *   GCLIP_BLOCKS_PER_SM(out, kernel, block)
 *       blocks of `kernel` one SM holds at once (host code, asked once at
 *       plan creation); evaluates to a status as GCLIP_LAUNCH does
 * and these functions:
 *   gclip_prefetch_l2(p)
 *       a hint that some thread will soon read the line at p: it is brought
 *       into L2, not into this SM's L1
 *   gclip_wait_prior_grids()
 *       the calling thread waits until the grids before this one in the
 *       stream have completed and their memory operations are visible to
 *       it (griddepcontrol.wait from sm_90; a launch without the dependent
 *       attribute starts only after them anyway)
 *   gclip_release_dependents()
 *       this block lets a dependent launch after it be scheduled
 *       (griddepcontrol.launch_dependents from sm_90)
 * The last two do nothing before sm_90; the emulator models them
 * (tests/emu/simt_emu.h), where the prefetches read the byte they name.
 *
 * Staging of global data into shared memory with no register in between
 * (cp.async, sm_80 and later; callers use them only there):
 *   gclip_stage_u32(dst, src)
 *       start copying the 4 bytes at global `src` to shared `dst`
 *       (through L1, like __ldca)
 *   gclip_stage_f64x2_l2(dst, src)
 *       start copying the 16 bytes (two doubles) at global `src` to shared
 *       `dst`, both 16-byte aligned, through L2 only (cp.async.cg)
 *   gclip_stage_wait()
 *       every copy the calling thread started has landed and is visible to
 *       it (not to other threads: they need a barrier)
 * The emulator copies at once and its wait does nothing, so the code that
 * uses them runs unchanged.
 */
#ifndef GCLIP_CUDA_COMPAT_H
#define GCLIP_CUDA_COMPAT_H

#include <stdint.h>

#if defined(GCLIP_SIMT_EMULATION)
/* tests/emu/simt_emu.h defines threadIdx, blockIdx, blockDim, gridDim,
 * __syncthreads, __threadfence, the atomics, uint4, the CUDA keywords,
 * GCLIP_LAUNCH and GCLIP_LAUNCH_DEPENDENT, and models the dependent launch. */
#include "simt_emu.h"
#define GCLIP_BLOCKS_PER_SM(out, kernel, block) ((void)(kernel), (void)(block), *(out) = 4, 0)
/* A prefetch reads one byte of its line here: under AddressSanitizer, a
 * request for memory outside every buffer is reported as the read it would
 * be. */
inline void gclip_prefetch_l2(const void *p)
{
    (void)*(const volatile char *)p;
}
inline void gclip_wait_prior_grids()
{
    ::gclip_emu::wait_prior_grids();
}
inline void gclip_release_dependents()
{
    ::gclip_emu::release_dependents();
}
/* volatile: the value another block stored, read when the copy is issued */
inline void gclip_stage_u32(uint32_t *dst, const uint32_t *src)
{
    *dst = *(const volatile uint32_t *)src;
}
inline void gclip_stage_f64x2_l2(double *dst, const double *src)
{
    dst[0] = ((const volatile double *)src)[0];
    dst[1] = ((const volatile double *)src)[1];
}
inline void gclip_stage_wait() {}
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
/* cudaLaunchKernelEx returns the status of this launch; a <<<>>> launch
 * checked with cudaGetLastError() could report an earlier, unrelated error. */
template <class... P, class... A>
static inline int gclip_launch_ex(void (*kernel)(P...), int dependent, unsigned grid,
                                  unsigned block, cudaStream_t stream, A &&...args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(block);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cfg.attrs = dependent ? attr : nullptr;
    cfg.numAttrs = dependent ? 1 : 0;
    return (int)cudaLaunchKernelEx(&cfg, kernel, static_cast<A &&>(args)...);
}
#define GCLIP_LAUNCH(kernel, grid, block, stream, ...) \
    gclip_launch_ex(kernel, 0, (grid), (block), (cudaStream_t)(stream), __VA_ARGS__)
#define GCLIP_LAUNCH_DEPENDENT(kernel, dependent, grid, block, stream, ...) \
    gclip_launch_ex(kernel, (dependent), (grid), (block), (cudaStream_t)(stream), __VA_ARGS__)
#define GCLIP_BLOCKS_PER_SM(out, kernel, block) \
    ((int)cudaOccupancyMaxActiveBlocksPerMultiprocessor((out), (kernel), (block), 0))
__device__ __forceinline__ void gclip_prefetch_l2(const void *p)
{
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void gclip_wait_prior_grids()
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}
__device__ __forceinline__ void gclip_release_dependents()
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
#else
__device__ __forceinline__ void gclip_wait_prior_grids() {}
__device__ __forceinline__ void gclip_release_dependents() {}
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void gclip_stage_u32(uint32_t *dst, const uint32_t *src)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void gclip_stage_f64x2_l2(double *dst, const double *src)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void gclip_stage_wait()
{
    asm volatile("cp.async.wait_all;" ::: "memory");
}
#endif
#else
#error "kernel sources are compiled by nvcc or with GCLIP_SIMT_EMULATION"
#endif

#endif /* GCLIP_CUDA_COMPAT_H */
