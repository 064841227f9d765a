/*
 * scale_cpu.c - the CPU twin of kernels/scale_kernel.cu: multiply the
 * gradients in place by the factor of the op (the slot's, each tensor's, or
 * that of a given norm); chunks whose factor is exactly 1 are not touched.
 */
#include <omp.h>

#include "cpu_walk.h"

#define UPDATE_DTYPE(clamp)                                                 \
    do {                                                                    \
        switch (t->dtype) {                                                 \
        case GCLIP_F32: gclip_walk_update(t->data, GCLIP_F32, begin, n, clamp, f); break;   \
        case GCLIP_F16: gclip_walk_update(t->data, GCLIP_F16, begin, n, clamp, f); break;   \
        case GCLIP_F64: gclip_walk_update(t->data, GCLIP_F64, begin, n, clamp, f); break;   \
        default: gclip_walk_update(t->data, GCLIP_BF16, begin, n, clamp, f); break;         \
        }                                                                   \
    } while (0)

/* static: GCC exports the ifunc of a non-static target_clones function
 * whatever its visibility */
CPU_CLONES static void update_chunk(const gclip_tensor_desc *t, uint32_t index, int clamp,
                                    float f)
{
    int64_t begin, n;
    gclip_chunk_range(t->numel, index, &begin, &n);
    if (clamp)
        UPDATE_DTYPE(1);
    else
        UPDATE_DTYPE(0);
}

void gclip_update_chunk_cpu(const gclip_tensor_desc *t, uint32_t index, int clamp, float f)
{
    update_chunk(t, index, clamp, f);
}

/* The factor of the whole plan under a global op (1 = nothing to write);
 * updates the slot where the op owns it, as the kernel's blocks do. */
static float global_factor(gclip_cpu_state *st, const gclip_norm_params *np)
{
    switch (np->op) {
    case GCLIP_OP_CLIP_WITH_NORM:
        gclip_given_norm_slot(np, st->result.sequence, &st->result);
        return st->result.scale;
    case GCLIP_OP_APPLY: {
        const float f = gclip_factor_pending(&st->result) ? st->result.scale : 1.0f;
        gclip_applied_slot(&st->result);
        return f;
    }
    default: /* GCLIP_OP_CLIP_NORM */
        return st->result.scale;
    }
}

void gclip_scale_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    const gclip_tensor_desc *tensors = plan->tensors;
    const gclip_chunk *chunks = plan->chunks;
    const float *factor = st->tensor_factor;
    const int per_tensor = np->op == GCLIP_OP_CLIP_PER_TENSOR;
    const float global = per_tensor ? 1.0f : global_factor(st, np);
    if (!per_tensor && global == 1.0f)
        return;
    int64_t n = plan->num_chunks;
#pragma omp parallel for schedule(static) num_threads(gclip_cpu_threads(plan)) if (n > 1)
    for (int64_t c = 0; c < n; c++) {
        const float f = per_tensor ? factor[chunks[c].tensor] : global;
        if (f != 1.0f)
            gclip_update_chunk_cpu(&tensors[chunks[c].tensor], chunks[c].index, 0, f);
    }
}
