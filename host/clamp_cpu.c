/*
 * clamp_cpu.c - the CPU twin of kernels/clamp_kernel.cu: every element
 * clamped in place to [-clip_value, clip_value], NaN kept (f64 elements to
 * the double bound, the others to the float nearest it); the slot says that
 * no norm was computed.
 */
#include <math.h>

#include "cpu_walk.h"

static void clamp_run(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg)
{
    gclip_update_run_cpu(plan, first, last, 1, *(const double *)arg, NULL);
}

void gclip_clamp_cpu(gclip_plan *plan, double clip_value)
{
    gclip_cpu_state *st = plan->engine;
    if (clip_value != INFINITY)
        gclip_cpu_for_chunks(plan, clamp_run, &clip_value);
    gclip_value_slot(st->result.sequence, &st->result);
}
