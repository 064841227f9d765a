/*
 * adapt_cpu.c - the CPU twin of kernels/adapt_kernel.cu: the global
 * decision, every row in index order, then the commit of the shared scalars
 * and the result slot, with the arithmetic of gclip_adapt_math.h. The rows
 * are independent, so the order gives the kernel's bits.
 */
#include "gclip_adapt_math.h"
#include "gclip_internal.h"

void gclip_adapt_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    gclip_adapt_device *a = np->adapt;
    const gclip_adapt_input in = gclip_adapt_begin(&st->result, np);
    gclip_adapt_decision d;
    gclip_adapt_decide(a, &in, &d);
    uint32_t clipped = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const float coef = gclip_adapt_row(a, &in, &d, (uint32_t)i);
        clipped += coef < 1.0f;
        st->tensor_factor[i] = gclip_adapt_factor(&in, coef);
    }
    gclip_adapt_commit(a, &in, &d, clipped, &st->result);
}

void gclip_adapt_scale_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_norm_params s = *np;
    s.op = GCLIP_OP_CLIP_PER_TENSOR;
    gclip_scale_cpu(plan, &s);
}
