/*
 * finalize_cpu.c - the CPU twin of kernels/finalize_kernel.cu: fold the given
 * partials (or the plan's own) in index order into the result slot.
 */
#include "gclip_internal.h"

void gclip_finalize_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    gclip_finalize_partials(np->partials, np->num_partials, &st->partial, np,
                            st->result.sequence, &st->result);
}
