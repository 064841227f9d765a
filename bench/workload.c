/*
 * workload.c - workload data: seeded normal values, the pristine copy that
 * writing runs are restored from, and the per-op arguments.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "shapes.h"

/* Gradient-like magnitude of the generated values. */
#define DATA_SIGMA 1e-3
/* Loss scale the unscale-clip data is taken to carry (a power of two, as AMP uses). */
#define LOSS_SCALE 1024.0f
/* Tensors start on 64-byte boundaries, as framework allocators place them. */
#define TENSOR_ALIGN 64
/* Elements generated per job: a job has its own seed, so the values do not
 * depend on the thread count. */
#define GEN_BLOCK 4096
#define SEED 0x9e3779b97f4a7c15ull

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (-1, 1) from 24 random bits, exact in float. */
static float uniform_pm1(uint64_t *s)
{
    return (float)((int32_t)(splitmix64(s) >> 40) - (1 << 23)) * 0x1.0p-23f;
}

/* Two N(0, 1) values by Marsaglia's polar method: no trigonometry, so the
 * hundreds of millions of values of the large workloads take well under a
 * second per core. */
static void normal_pair(uint64_t *s, float z[2])
{
    float u, v, r;
    do {
        u = uniform_pm1(s);
        v = uniform_pm1(s);
        r = u * u + v * v;
    } while (r >= 1.0f || r == 0.0f);
    float f = sqrtf(-2.0f * logf(r) / r);
    z[0] = u * f;
    z[1] = v * f;
}

/* Fill one block with N(0, DATA_SIGMA^2) values; returns the sum of
 * squares of the values as stored. */
static double fill_block(void *data, gclip_dtype dtype, int64_t begin, int64_t n, uint64_t seed)
{
    double sumsq = 0.0;
    for (int64_t i = 0; i < n; i += 2) {
        float z[2];
        normal_pair(&seed, z);
        for (int64_t k = 0; k < 2 && i + k < n; k++) {
            int64_t j = begin + i + k;
            float v = z[k] * (float)DATA_SIGMA;
            if (dtype != GCLIP_F32) {
                uint16_t h = bench_half_round(dtype, v);
                ((uint16_t *)data)[j] = h;
                v = bench_half_load(dtype, h);
            } else {
                ((float *)data)[j] = v;
            }
            sumsq += (double)v * v;
        }
    }
    return sumsq;
}

/* Generate every tensor in GEN_BLOCK jobs spread over the threads and set
 * the norms the per-op arguments derive from. */
static int generate(bench_workload *w, int threads)
{
    int64_t jobs = 0;
    for (size_t i = 0; i < w->count; i++)
        jobs += (w->tensors[i].numel + GEN_BLOCK - 1) / GEN_BLOCK;
    uint32_t *job_tensor = malloc((size_t)jobs * sizeof *job_tensor);
    int64_t *job_begin = malloc((size_t)jobs * sizeof *job_begin);
    double *job_sumsq = malloc((size_t)jobs * sizeof *job_sumsq);
    if (!job_tensor || !job_begin || !job_sumsq) {
        free(job_tensor);
        free(job_begin);
        free(job_sumsq);
        return -1;
    }
    int64_t j = 0;
    for (size_t i = 0; i < w->count; i++)
        for (int64_t b = 0; b < w->tensors[i].numel; b += GEN_BLOCK, j++) {
            job_tensor[j] = (uint32_t)i;
            job_begin[j] = b;
        }
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t k = 0; k < jobs; k++) {
        const gclip_tensor *t = &w->tensors[job_tensor[k]];
        int64_t n = t->numel - job_begin[k];
        n = n < GEN_BLOCK ? n : GEN_BLOCK;
        job_sumsq[k] = fill_block(t->data, t->dtype, job_begin[k], n, SEED ^ (uint64_t)k);
    }
    double total = 0.0, min_tensor = INFINITY, tensor = 0.0;
    for (int64_t k = 0; k < jobs; k++) {
        tensor += job_sumsq[k];
        if (k + 1 == jobs || job_tensor[k + 1] != job_tensor[k]) {
            total += tensor;
            min_tensor = fmin(min_tensor, sqrt(tensor));
            tensor = 0.0;
        }
    }
    w->norm = sqrt(total);
    w->min_tensor_norm = min_tensor;
    w->rms = sqrt(total / (double)w->elems);
    free(job_tensor);
    free(job_begin);
    free(job_sumsq);
    return 0;
}

/* memcpy by all threads: restoring a gigabyte between runs stays cheap. */
static void parallel_copy(unsigned char *dst, const unsigned char *src, size_t bytes, int threads)
{
    const size_t block = (size_t)4 << 20;
    int64_t blocks = (int64_t)((bytes + block - 1) / block);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        size_t off = (size_t)b * block;
        memcpy(dst + off, src + off, bytes - off < block ? bytes - off : block);
    }
}

int bench_workload_create(bench_workload *w, const char *name, int64_t huge_elems, int threads)
{
    memset(w, 0, sizeof *w);
    if (bench_shapes_for(name, huge_elems, &w->shapes, &w->count))
        return -1;
    w->name = name;
    w->tensors = calloc(w->count, sizeof *w->tensors);
    if (!w->tensors)
        return -1;
    size_t offset = 0;
    for (size_t i = 0; i < w->count; i++) {
        int64_t n = bench_shape_numel(&w->shapes[i]);
        size_t size = w->shapes[i].dtype == GCLIP_F32 ? 4 : 2;
        w->tensors[i].numel = n;
        w->tensors[i].dtype = w->shapes[i].dtype;
        w->tensors[i].data = (void *)offset; /* rebased below */
        w->elems += n;
        w->data_bytes += (double)n * (double)size;
        offset += ((size_t)n * size + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    }
    w->arena_bytes = offset;
    w->data = bench_alloc(offset);
    w->pristine = bench_alloc(offset);
    if (!w->data || !w->pristine)
        return -1;
    /* generate into the working copy (its pages first touched by the
     * threads that will use them), then keep it as the pristine values */
    for (size_t i = 0; i < w->count; i++)
        w->tensors[i].data = w->data + (size_t)w->tensors[i].data;
    if (generate(w, threads))
        return -1;
    parallel_copy(w->pristine, w->data, offset, threads);
    return 0;
}

void bench_workload_destroy(bench_workload *w)
{
    bench_free(w->data);
    bench_free(w->pristine);
    free(w->tensors);
    free(w->shapes);
    memset(w, 0, sizeof *w);
}

void bench_workload_prepare(bench_workload *w, int writes, int threads)
{
    /* every run starts from the pristine values, also after a writing op */
    if (writes || w->dirty)
        parallel_copy(w->data, w->pristine, w->arena_bytes, threads);
    w->dirty = writes;
    bench_evict(w->data, w->arena_bytes, threads);
}

bench_params bench_params_for(const bench_workload *w, bench_op op)
{
    bench_params p = {(float)w->norm, (float)w->rms, 1.0f, GCLIP_NONFINITE_SKIP};
    switch (op) {
    case BENCH_CLIP:
        p.max_norm = (float)(0.5 * w->norm); /* coefficient about 0.5 */
        break;
    case BENCH_CLIP_NOOP:
        p.max_norm = (float)(2.0 * w->norm); /* coefficient exactly 1: nothing written */
        break;
    case BENCH_TENSOR_NORM:
        p.max_norm = (float)(0.5 * w->min_tensor_norm); /* every tensor clipped */
        break;
    case BENCH_UNSCALE_CLIP:
        p.inv_scale = 1.0f / LOSS_SCALE;
        p.max_norm = (float)(0.5 * w->norm / LOSS_SCALE);
        break;
    default: /* norm: none used; value: clamp at 1 rms, about a third of the elements */
        break;
    }
    return p;
}
