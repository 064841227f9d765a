/*
 * roofline.c - the CPU's own limits, measured with the thread count of the
 * benchmark: a STREAM-like read (sum of squares) and an in-place scale
 * (read + write of the same lines, the access pattern of an in-place clip).
 * Both are written so that the memory system, not the arithmetic, bounds
 * them: 32-byte vectors, several streams per thread, and an AVX2 clone
 * picked at load time where the CPU has it (as gclip's CPU path does), so
 * the limit is never lower than what the library can reach.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef float v8f __attribute__((vector_size(32)));

/* Elements per loop step of one stream: four vectors. */
#define STEP 32

/* Each thread cuts its share of the buffer into STREAMS parts and walks them
 * in lockstep. Several concurrent sequential streams per core get more
 * memory-level parallelism out of the hardware prefetchers than one does:
 * about a third more bandwidth, read and read-write, on the 2-core VMs we
 * measured; a limit measured with one stream would be beaten by code that
 * reads several tensors at once. */
#define STREAMS 4

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

void *bench_alloc(size_t bytes)
{
    void *p = NULL;
    /* page aligned, so that every buffer gets the same TLB treatment */
    if (posix_memalign(&p, 4096, bytes ? bytes : 1))
        return NULL;
    return p;
}

void bench_free(void *p)
{
    free(p);
}

/* Unaligned vector load; a macro, as a function returning a 32-byte vector
 * would have a different ABI in the two clones. */
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(v8f))

/* The calling thread's share of n elements: [*begin, *begin + *count), and
 * the length of each of its streams (a multiple of STEP). */
static size_t thread_share(size_t n, size_t *begin, size_t *count)
{
    size_t t = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    size_t per = n / t;
    *begin = id * per;
    *count = id + 1 == t ? n - *begin : per;
    return *count / STREAMS / STEP * STEP;
}

CLONES double bench_read_kernel(const float *x, size_t n, int threads)
{
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        size_t begin, count, part = thread_share(n, &begin, &count);
        v8f acc[STREAMS];
        memset(acc, 0, sizeof acc);
        for (size_t i = 0; i < part; i += STEP)
            for (int s = 0; s < STREAMS; s++) {
                const float *p = x + begin + (size_t)s * part + i;
                v8f v0, v1, v2, v3;
                LOAD8(v0, p);
                LOAD8(v1, p + 8);
                LOAD8(v2, p + 16);
                LOAD8(v3, p + 24);
                acc[s] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
            }
        for (int s = 0; s < STREAMS; s++)
            for (int k = 0; k < 8; k++)
                total += (double)acc[s][k];
        for (size_t i = begin + STREAMS * part; i < begin + count; i++)
            total += (double)x[i] * x[i];
    }
    return total;
}

CLONES void bench_scale_kernel(float *x, size_t n, float a, int threads)
{
#pragma omp parallel num_threads(threads)
    {
        size_t begin, count, part = thread_share(n, &begin, &count);
        for (size_t i = 0; i < part; i += STEP)
            for (int s = 0; s < STREAMS; s++) {
                float *p = x + begin + (size_t)s * part + i;
                for (int k = 0; k < STEP; k += 8) {
                    v8f v;
                    LOAD8(v, p + k);
                    v *= a;
                    memcpy(p + k, &v, sizeof v);
                }
            }
        for (size_t i = begin + STREAMS * part; i < begin + count; i++)
            x[i] *= a;
    }
}

/* Results of timed reads are stored here so the reads cannot be optimized away. */
volatile double bench_sink;

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* clflush takes every line of the range out of every cache level (writing
 * dirty ones back): unlike streaming another buffer through the caches, it
 * does not depend on the last level's replacement policy. */
void bench_evict(const void *data, size_t bytes, int threads)
{
    const char *p = data;
    int64_t lines = (int64_t)((bytes + 63) / 64);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < lines; i++)
        _mm_clflush(p + i * 64);
    _mm_mfence();
}

void bench_evict_release(void)
{
}
#else
/* Elsewhere: stream a buffer four times the largest last-level cache of the
 * machines we run on (32 MiB) through the caches. */
#define FLUSH_BYTES ((size_t)128 << 20)
static float *flush_buf;

void bench_evict(const void *data, size_t bytes, int threads)
{
    (void)data;
    (void)bytes;
    size_t n = FLUSH_BYTES / sizeof(float);
    if (!flush_buf) {
        flush_buf = bench_alloc(FLUSH_BYTES);
        if (!flush_buf)
            return;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (size_t i = 0; i < n; i++)
            flush_buf[i] = 1.0f;
    }
    bench_sink = bench_read_kernel(flush_buf, n, threads);
}

void bench_evict_release(void)
{
    bench_free(flush_buf);
    flush_buf = NULL;
}
#endif

/* Roofline buffer: eight times the last-level cache, so nothing is served
 * from cache. */
#define ROOF_BYTES ((size_t)256 << 20)

struct bench_roof {
    float *x;
    size_t n;
    int threads;
};

bench_roof *bench_roof_create(int threads)
{
    bench_roof *r = malloc(sizeof *r);
    if (!r)
        return NULL;
    r->n = ROOF_BYTES / sizeof(float);
    r->threads = threads;
    r->x = bench_alloc(ROOF_BYTES);
    if (!r->x) {
        free(r);
        return NULL;
    }
    /* first touch by the same static schedule the kernels use */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t i = 0; i < r->n; i++)
        r->x[i] = 1.0f;
    /* warm-up: page tables and the clone choice out of the first timing */
    for (int i = 0; i < 2; i++) {
        bench_roof_read_ms(r);
        bench_roof_rw_ms(r);
    }
    return r;
}

void bench_roof_destroy(bench_roof *r)
{
    if (r)
        bench_free(r->x);
    free(r);
}

double bench_roof_bytes(void)
{
    return (double)ROOF_BYTES;
}

/* Every thread of the pass busy for about 2 ms, untimed, right before it
 * (arithmetic only: no memory the pass reads is touched). A pass that came
 * after an idle spell, as a peer's do after ROOF_IDLE_S and the naive
 * loop's after one busy thread, ran slower than one that came after work
 * on every thread: a vCPU that idled is slow to run again. */
static void wake_threads(int threads)
{
#pragma omp parallel num_threads(threads)
    {
        const double end = bench_now_ms() + 2.0;
        double x = 1.0;
        while (bench_now_ms() < end)
            for (int i = 0; i < 1000; i++)
                x = x * 0.999999 + 1e-7;
        if (x == 0.0)
            bench_sink = x;
    }
}

double bench_roof_read_ms(bench_roof *r)
{
    wake_threads(r->threads);
    double t0 = bench_now_ms();
    bench_sink = bench_read_kernel(r->x, r->n, r->threads);
    return bench_now_ms() - t0;
}

double bench_roof_rw_ms(bench_roof *r)
{
    wake_threads(r->threads);
    double t0 = bench_now_ms();
    /* -1 is exact and cannot be folded away: every run reads and writes */
    bench_scale_kernel(r->x, r->n, -1.0f, r->threads);
    return bench_now_ms() - t0;
}

int bench_cpu_roofline(bench_roof *r, int runs, double *read_gbps, double *rw_gbps)
{
    double *ms = malloc((size_t)runs * sizeof *ms);
    if (!ms)
        return -1;
    for (int i = 0; i < runs; i++)
        ms[i] = bench_roof_read_ms(r);
    *read_gbps = ROOF_BYTES / bench_stats_of(ms, runs).median_ms / 1e6;
    for (int i = 0; i < runs; i++)
        ms[i] = bench_roof_rw_ms(r);
    *rw_gbps = 2.0 * ROOF_BYTES / bench_stats_of(ms, runs).median_ms / 1e6;
    free(ms);
    return 0;
}
