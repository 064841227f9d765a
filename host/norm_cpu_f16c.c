/*
 * norm_cpu_f16c.c - the norm's read pass (host/cpu_walk.h) compiled for
 * AVX2 and F16C: f16 vectors are converted by vcvtph2ps rather than by
 * integer operations, the rest is the same source. Every conversion is
 * exact, so the partials are bitwise those of norm_cpu.c's read_run;
 * norm_cpu.c calls this one when the CPU has both (gclip_cpu_has_f16c).
 */
#include "cpu_walk.h"

void gclip_read_run_f16c(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg)
{
    gclip_read_chunks(plan, first, last, arg);
}
