/*
 * chunk_cost.c - what one tensor costs the CPU path's norm: `count` tensors
 * of `numel` elements, back to back in one buffer (64-byte aligned starts),
 * gclip_total_norm timed `reps` times, the fastest kept. Small and without
 * a roofline or peers, so that it runs under callgrind or perf in seconds:
 *
 *   gclip-chunk-cost COUNT NUMEL [f32|f16|bf16] [THREADS] [REPS] [plain] [cold]
 *                    [value|scale]
 *
 * With `plain`, each repetition is followed by a plain read of the same
 * bytes (bench_read_kernel, the roofline's read: sum of squares, 32-byte
 * vectors, several streams a thread), and the medians of both are printed
 * with their ratio: the read pass against the memory's speed on this very
 * buffer, two figures taken together on a machine whose bandwidth drifts.
 * With `cold`, the buffer is evicted from the caches before each timed
 * norm and each plain read (bench_evict, as gclip-bench does before each
 * run); without it, what a buffer smaller than the last-level cache leaves
 * there is read again.
 *
 * With `value` or `scale`, the update pass is timed instead of the norm:
 * gclip_clip_grad_value with the bound 0.25 (about half the elements
 * clamped; the second and later repetitions find them in range and write
 * them all the same), or gclip_clip_grads_with_norm with a factor of 0.5
 * and 2 in turn (exact for these values, so the data stays as it was). The
 * plain pass is then the roofline's in-place scale (bench_scale_kernel),
 * and GB/s count the bytes read and written.
 *
 * The data is seeded and never zero; the norm is printed so that the work
 * cannot be skipped.
 */
#include <gclip.h>

#include "bench.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* xorshift64*: 24 random mantissa bits for a value in [-0.5, 0.5) */
static float next_value(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    const uint64_t r = *s * 2685821657736338717ull;
    return (float)(r >> 40) / 16777216.0f - 0.5f;
}

static void store(void *p, gclip_dtype dt, size_t i, float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    if (dt == GCLIP_F32) {
        ((float *)p)[i] = v;
    } else if (dt == GCLIP_BF16) {
        ((uint16_t *)p)[i] = (uint16_t)(b >> 16);
    } else { /* f16 of |v| < 0.5: a normal half (or zero) with the top 10 mantissa bits */
        const uint32_t sign = (b >> 16) & 0x8000u;
        const int e = (int)((b >> 23) & 0xff) - 127 + 15;
        ((uint16_t *)p)[i] =
            (uint16_t)(e <= 0 ? sign : sign | (uint32_t)e << 10 | ((b >> 13) & 0x3ffu));
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s COUNT NUMEL [f32|f16|bf16] [THREADS] [REPS] [plain] [cold] "
                "[value|scale]\n",
                argv[0]);
        return 2;
    }
    const size_t count = strtoull(argv[1], NULL, 10);
    const int64_t numel = strtoll(argv[2], NULL, 10);
    const char *dts = argc > 3 ? argv[3] : "f32";
    const gclip_dtype dt = !strcmp(dts, "f16") ? GCLIP_F16 : !strcmp(dts, "bf16") ? GCLIP_BF16 : GCLIP_F32;
    const int threads = argc > 4 ? atoi(argv[4]) : 1;
    const int reps = argc > 5 ? atoi(argv[5]) : 40;
    int plain = 0, cold = 0;
    const char *op = "norm";
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "plain")) {
            plain = 1;
        } else if (!strcmp(argv[i], "cold")) {
            cold = 1;
        } else if (!strcmp(argv[i], "value") || !strcmp(argv[i], "scale")) {
            op = argv[i];
        } else {
            fprintf(stderr, "unknown word %s (plain, cold, value, scale)\n", argv[i]);
            return 2;
        }
    }
    if (count == 0 || numel <= 0 || threads < 0 || reps <= 0) {
        fprintf(stderr, "COUNT, NUMEL and REPS must be positive, THREADS >= 0\n");
        return 2;
    }
    const size_t esize = dt == GCLIP_F32 ? 4 : 2;
    const size_t stride = ((size_t)numel * esize + 63) / 64 * 64;
    char *buf = NULL;
    gclip_tensor *t = malloc(count * sizeof *t);
    if (posix_memalign((void **)&buf, 4096, stride * count) || !t) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t k = 0; k < count; k++) {
        t[k].data = buf + k * stride;
        t[k].numel = numel;
        t[k].dtype = dt;
        for (int64_t i = 0; i < numel; i++)
            store(t[k].data, dt, (size_t)i, next_value(&seed));
    }
    gclip_plan *plan = NULL;
    if (gclip_plan_create(&plan, t, count, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS ||
        gclip_plan_set_num_threads(plan, threads) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "plan: %s\n", gclip_last_error());
        return 1;
    }
    const gclip_norm_options o = gclip_norm_options_default();
    const int update = strcmp(op, "norm") != 0;
    /* an update reads and writes every byte */
    const double moved = update ? 2.0 : 1.0;
    double best = 1e30;
    double *ms = malloc(2 * (size_t)reps * sizeof *ms), *plain_ms = ms + reps;
    if (!ms) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    const int team = threads > 0 ? threads : omp_get_max_threads();
#if defined(__x86_64__) || defined(__i386__)
    /* The plain pass reads an f16 buffer's pairs of halves as floats: a pair
     * whose upper half is below 2^-10 or so reads as a float whose square is
     * subnormal, and each such square took a microcode assist (the plain read
     * of 100,000 tensors of 100 f16 ran at half the speed of bf16's). The
     * team's threads (libgomp keeps them from region to region, and a new one
     * inherits the master's register) flush and read subnormals as zero,
     * which changes no byte the pass reads. gclip's own calls set and restore
     * their threads' MXCSR, so the timed op is not affected. */
#pragma omp parallel num_threads(team)
    _mm_setcsr(_mm_getcsr() | 0x8040u); /* FTZ | DAZ */
#endif
    for (int r = 0; r < reps; r++) {
        if (cold)
            bench_evict(buf, stride * count, team);
        gclip_norm_options so = o; /* coefficient 1 (max_norm far above 1), factor inv_scale */
        so.max_norm = 1e30f;
        so.inv_scale = r % 2 ? 2.0f : 0.5f;
        const double a = now();
        const gclip_status st = !strcmp(op, "value")   ? gclip_clip_grad_value(plan, 0.25f, NULL)
                                : !strcmp(op, "scale") ? gclip_clip_grads_with_norm(plan, &so, 1.0f,
                                                                                     NULL, NULL)
                                                       : gclip_total_norm(plan, &o, NULL);
        if (st != GCLIP_STATUS_SUCCESS) {
            fprintf(stderr, "%s: %s\n", op, gclip_last_error());
            return 1;
        }
        const double s = now() - a;
        best = s < best ? s : best;
        ms[r] = s * 1e3;
        if (plain) { /* the whole buffer, padding included, as floats */
            if (cold)
                bench_evict(buf, stride * count, team);
            const double b = now();
            if (update)
                bench_scale_kernel((float *)buf, stride * count / 4, 1.0f, team);
            else
                bench_sink = bench_read_kernel((const float *)buf, stride * count / 4, team);
            plain_ms[r] = (now() - b) * 1e3;
        }
    }
    gclip_result res;
    gclip_get_result(plan, &res);
    printf("%s, %zu x %lld %s, %d thread(s): best of %d %.3f ms, %.1f ns per tensor, %.2f GB/s, "
           "norm %.7g\n",
           op, count, (long long)numel, dts, threads, reps, best * 1e3, best * 1e9 / (double)count,
           moved * (double)count * (double)numel * (double)esize / best / 1e9, res.total_norm);
    if (plain) {
        const double g = bench_stats_of(ms, reps).median_ms;
        const double q = bench_stats_of(plain_ms, reps).median_ms;
        const double b = moved * (double)(stride * count);
        printf("medians: %s %.3f ms (%.2f GB/s of the buffer), plain %s %.3f ms (%.2f GB/s), "
               "ratio %.3f\n",
               op, g, b / g / 1e6, update ? "in-place scale" : "read", q, b / q / 1e6, q / g);
    }
    free(ms);
    gclip_plan_destroy(plan);
    free(t);
    free(buf);
    return 0;
}
