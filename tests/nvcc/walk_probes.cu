/*
 * walk_probes.cu - kernels that exist only for the static checks of
 * kernels/check_kernels.sh (never built into the library or the emulator): each runs one
 * element type and norm kind of the norm kernel's per-thread accumulation,
 * or one element type of the scale kernel's update, through the same walk
 * (chunk_walk.cuh) and the same functors, so that its machine code can be
 * read in isolation (cuobjdump -sass -fun NAME) and its inner loop measured:
 * fp64 instructions per element, conversions and branches.
 */
#include "norm_kernel.cu"
#include "scale_kernel.cu"

#define GCLIP_PROBE_NORM(name, dtype, kind)                                                  \
    extern "C" __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS, GCLIP_NORM_MIN_BLOCKS) \
        name(void *base, int64_t count, float p, double *out)                                \
    {                                                                                        \
        gclip_term_sum<kind> f = {GCLIP_TERM_ZERO, 0u, 0ull, p};                             \
        gclip_walk_typed<dtype, false, GCLIP_BLOCK_THREADS>(base, count, threadIdx.x, f);    \
        out[threadIdx.x] = f.value();                                                        \
    }

GCLIP_PROBE_NORM(gclip_probe_norm_f32_l2, GCLIP_F32, GCLIP_KIND_L2)
GCLIP_PROBE_NORM(gclip_probe_norm_f32_l1, GCLIP_F32, GCLIP_KIND_L1)
GCLIP_PROBE_NORM(gclip_probe_norm_f32_inf, GCLIP_F32, GCLIP_KIND_INF)
GCLIP_PROBE_NORM(gclip_probe_norm_f16_l2, GCLIP_F16, GCLIP_KIND_L2)
GCLIP_PROBE_NORM(gclip_probe_norm_f16_l1, GCLIP_F16, GCLIP_KIND_L1)
GCLIP_PROBE_NORM(gclip_probe_norm_f16_inf, GCLIP_F16, GCLIP_KIND_INF)
GCLIP_PROBE_NORM(gclip_probe_norm_bf16_l2, GCLIP_BF16, GCLIP_KIND_L2)
GCLIP_PROBE_NORM(gclip_probe_norm_bf16_l1, GCLIP_BF16, GCLIP_KIND_L1)
GCLIP_PROBE_NORM(gclip_probe_norm_bf16_inf, GCLIP_BF16, GCLIP_KIND_INF)
GCLIP_PROBE_NORM(gclip_probe_norm_f64_l2, GCLIP_F64, GCLIP_KIND_L2)

#define GCLIP_PROBE_SCALE(name, dtype)                                                       \
    extern "C" __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)                        \
        name(void *base, int64_t count, float factor)                                        \
    {                                                                                        \
        const gclip_scale_by f = {factor};                                                   \
        gclip_walk_typed<dtype, true, GCLIP_BLOCK_THREADS>(base, count, threadIdx.x, f);     \
    }

GCLIP_PROBE_SCALE(gclip_probe_scale_f16, GCLIP_F16)
GCLIP_PROBE_SCALE(gclip_probe_scale_bf16, GCLIP_BF16)
GCLIP_PROBE_NORM(gclip_probe_norm_f16_p, GCLIP_F16, GCLIP_KIND_P)
GCLIP_PROBE_NORM(gclip_probe_norm_f32_p, GCLIP_F32, GCLIP_KIND_P)
GCLIP_PROBE_NORM(gclip_probe_norm_f64_p, GCLIP_F64, GCLIP_KIND_P)
GCLIP_PROBE_NORM(gclip_probe_norm_f64_inf, GCLIP_F64, GCLIP_KIND_INF)
