/*
 * common.c - operation names, the bytes each must move, rooflines and
 * run statistics.
 */
#include <stdlib.h>
#include <time.h>

#include "bench.h"

static const char *const op_names[BENCH_OP_COUNT] = {
    "norm", "clip", "clip-noop", "value", "tensor-norm", "unscale-clip"};

const char *bench_op_name(bench_op op)
{
    return (unsigned)op < BENCH_OP_COUNT ? op_names[op] : "?";
}

int bench_op_writes(bench_op op)
{
    return op != BENCH_NORM && op != BENCH_CLIP_NOOP;
}

void bench_op_passes(bench_op op, int *reads, int *read_writes)
{
    *reads = op == BENCH_VALUE ? 0 : 1;
    *read_writes = (op == BENCH_NORM || op == BENCH_CLIP_NOOP) ? 0 : 1;
}

double bench_op_bytes(bench_op op, double data_bytes)
{
    int r, rw;
    bench_op_passes(op, &r, &rw);
    return data_bytes * (r + 2 * rw);
}

double bench_op_roofline(bench_op op, double read_gbps, double rw_gbps)
{
    int r, rw;
    bench_op_passes(op, &r, &rw);
    /* the time of each pass at its own limit, per byte of data */
    double seconds_per_byte = r / read_gbps + 2.0 * rw / rw_gbps;
    return (r + 2 * rw) / seconds_per_byte;
}

double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

bench_stats bench_stats_of(double *ms, int n)
{
    bench_stats s = {0, 0, 0};
    if (n <= 0)
        return s;
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    s.min_ms = ms[0];
    s.max_ms = ms[n - 1];
    s.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    return s;
}
