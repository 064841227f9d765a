/*
 * impl.h - one implementation under test, behind a common interface so the
 * timing loop is written once.
 */
#ifndef GCLIP_BENCH_IMPL_H
#define GCLIP_BENCH_IMPL_H

#include "bench.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bench_impl {
    const char *impl;    /* "gclip", "naive" */
    const char *backend; /* "cpu", "cuda" */
    int threads;         /* CPU threads used (0 for CUDA) */
    void *ctx;
    /* Outside the timed region, before every run: start from the pristine
     * data (`writes`: the op about to run writes it), evict the caches. */
    void (*prepare)(void *ctx, int writes);
    /* One timed run in milliseconds; negative on failure, with the reason
     * in `err` (at least 96 bytes). */
    double (*run)(void *ctx, bench_op op, const bench_params *p, char *err);
    /* After the runs: 0 if the last run was in the op's regime (clipped,
     * not clipped, norm as expected), else nonzero with a note. */
    int (*check)(void *ctx, bench_op op, const bench_params *p, char *note);
    /* Kernel launches per step of `op` (CUDA), or -1. */
    int (*launches)(void *ctx, bench_op op, const bench_params *p);
    void (*close)(void *ctx);
} bench_impl;

/* gclip on the CPU path with `threads` OpenMP threads (impl_gclip.c). */
int bench_gclip_cpu_open(bench_impl *impl, bench_workload *w, int threads);
/* The hand-written baseline: one thread, per-tensor loops (naive.c).
 * `threads` is only used to evict the caches between runs. */
int bench_naive_open(bench_impl *impl, bench_workload *w, int threads);

/* Shared by the CPU and CUDA implementations of gclip (impl_gclip.c). */
gclip_status bench_gclip_step(gclip_plan *plan, bench_op op, const bench_params *p,
                              gclip_stream stream);
int bench_gclip_check(gclip_plan *plan, const bench_workload *w, bench_op op,
                      const bench_params *p, char *note);
/* Whether a norm matches the workload's double-precision reference. */
int bench_norm_matches(double got, double want);
/* After the runs of `op` on the CPU: the data in `w` must be what one run
 * of `op` makes of the pristine values (`scale`: the factor the global
 * clipping ops applied). 0 if it is, else nonzero with a note. Checks every
 * tensor, or 64 spread over the list (check_output.c). */
int bench_check_output(const bench_workload *w, bench_op op, const bench_params *p, float scale,
                       char *note);

#ifdef GCLIP_BENCH_CUDA
/* gclip on CUDA device 0, timed with CUDA events (cuda_impl.cu). */
int bench_gclip_cuda_open(bench_impl *impl, bench_workload *w);
/* Device-to-device copy bandwidth in GB/s (read + write bytes), median of
 * `runs`, or a negative value on failure. */
double bench_cuda_copy_gbps(size_t bytes, int runs);
/* The device's name for the report. */
const char *bench_cuda_device_name(void);
/* --cuda-steps: microseconds per step of many steps back to back (eager and graph
 * replays), against a device-to-device copy, and launches per step, for the
 * workloads in the bit mask; writes PREFIX.csv and PREFIX.json. Nonzero
 * without a device or when a measurement failed. */
int bench_cuda_steps(unsigned workloads, int runs, int threads, const char *prefix);
#endif

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_BENCH_IMPL_H */
