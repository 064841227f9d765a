/*
 * bench.h - types shared by the parts of gclip-bench.
 *
 * The benchmark times each operation on each workload for every
 * implementation present (gclip on the CPU and on CUDA, a naive C loop, and
 * the peers: PyTorch and JAX/optax through bench/torch_baseline.py and
 * bench/jax_baseline.py) and compares the achieved bandwidth with the
 * machine's own limit measured next to each op.
 * Compiles as C11 and as C++ (the CUDA part is a .cu file).
 */
#ifndef GCLIP_BENCH_H
#define GCLIP_BENCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gclip.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- operations ----------------------------------------------------------- */

typedef enum bench_op {
    BENCH_NORM = 0,        /* total norm only */
    BENCH_CLIP = 1,        /* global-norm clipping, coefficient < 1 */
    BENCH_CLIP_NOOP = 2,   /* global-norm clipping, coefficient == 1 */
    BENCH_VALUE = 3,       /* value clipping */
    BENCH_TENSOR_NORM = 4, /* per-tensor norm clipping, every tensor clipped */
    BENCH_UNSCALE_CLIP = 5, /* AMP inv_scale fused with global-norm clipping */
    BENCH_OP_COUNT = 6
} bench_op;

const char *bench_op_name(bench_op op);
/* Whether the operation writes the gradients (its data is restored between runs). */
int bench_op_writes(bench_op op);
/* Passes over the data: reads (1 for the norm), read-write passes (1 to scale or clamp). */
void bench_op_passes(bench_op op, int *reads, int *read_writes);
/* Minimal bytes the operation must move over data of `data_bytes` bytes:
 * norm and clip-noop read once; value reads and writes once; the clipping
 * ops read once for the norm, then read and write once. */
double bench_op_bytes(bench_op op, double data_bytes);
/* The matching roofline from a read bandwidth and a read-write bandwidth
 * (both in GB/s counting every byte moved). */
double bench_op_roofline(bench_op op, double read_gbps, double rw_gbps);

/* Arguments of one operation, chosen per workload from its pristine data so
 * that each op is in the regime it is named for (see bench_params_for). */
typedef struct bench_params {
    float max_norm;   /* clip, clip-noop, tensor-norm, unscale-clip */
    float clip_value; /* value */
    float inv_scale;  /* unscale-clip (1 otherwise) */
    int nonfinite;    /* gclip's gclip_nonfinite_policy (--policy; SKIP by default) */
} bench_params;

/* ---- workloads -------------------------------------------------------------- */

typedef struct bench_shape {
    int rank;
    int64_t dims[4];
    gclip_dtype dtype;
} bench_shape;

typedef struct bench_workload {
    const char *name;
    size_t count;
    bench_shape *shapes;    /* [count] */
    gclip_tensor *tensors;  /* [count], pointing into `data` */
    unsigned char *data;    /* the working copy the ops run on */
    unsigned char *pristine; /* the generated values, restored before writing runs */
    size_t arena_bytes;     /* bytes of `data` including alignment padding */
    double data_bytes;      /* sum of numel * element size */
    int64_t elems;
    /* from the pristine data, in double */
    double norm;            /* global L2 norm */
    double min_tensor_norm; /* smallest per-tensor L2 norm */
    double rms;             /* root mean square of the elements */
    int dirty;              /* `data` was written since it was restored */
} bench_workload;

/* Names of the workloads, in the order they run. */
extern const char *const bench_workload_names[];
extern const size_t bench_workload_count;

/* Build workload `name` with seeded normal data. `huge_elems` is the size of
 * one-huge. Returns 0 on success. */
int bench_workload_create(bench_workload *w, const char *name, int64_t huge_elems,
                          int threads);
void bench_workload_destroy(bench_workload *w);
/* Before a run: restore the pristine values if the op writes or the last
 * one did, then evict the caches. */
void bench_workload_prepare(bench_workload *w, int writes, int threads);
/* Per-op arguments that put op in its regime on this workload's data. */
bench_params bench_params_for(const bench_workload *w, bench_op op);

/* bf16 <-> float for the data generator and the naive baseline (finite
 * values only; round to nearest even). */
static inline float bench_bf16_load(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bench_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* f16 <-> float for the data generator and the naive baseline (finite
 * values below 65504 only), through the C library's exact scaling: written
 * apart from the library's bit manipulations on purpose. */
static inline float bench_f16_load(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float a = e ? ldexpf((float)(m | 1024), e - 25) : ldexpf((float)m, -24);
    return (h & 0x8000u) ? -a : a;
}

static inline uint16_t bench_f16_round(float f)
{
    uint16_t sign = signbit(f) ? 0x8000u : 0;
    float a = fabsf(f);
    if (a < 0x1p-14f) /* subnormal half: a multiple of 2^-24, rounded to nearest even */
        return (uint16_t)(sign | (uint16_t)nearbyintf(a * 0x1p24f));
    int k;
    float m = frexpf(a, &k); /* a = m * 2^k, m in [0.5, 1) */
    int q = (int)nearbyintf(m * 2048.0f); /* 11 significant bits */
    if (q == 2048) {
        q = 1024;
        k++;
    }
    return (uint16_t)(sign | (uint16_t)((k + 14) << 10) | (uint16_t)(q - 1024));
}

/* Any 16-bit element as float, and float rounded to a 16-bit element. */
static inline float bench_half_load(gclip_dtype dtype, uint16_t h)
{
    return dtype == GCLIP_F16 ? bench_f16_load(h) : bench_bf16_load(h);
}

static inline uint16_t bench_half_round(gclip_dtype dtype, float f)
{
    return dtype == GCLIP_F16 ? bench_f16_round(f) : bench_bf16_round(f);
}

/* Bytes of one element, and element k of `data` as double, for any dtype. */
static inline size_t bench_dtype_bytes(gclip_dtype dtype)
{
    return dtype == GCLIP_F64 ? 8 : dtype == GCLIP_F32 ? 4 : 2;
}

static inline double bench_load_element(const void *data, gclip_dtype dtype, int64_t k)
{
    switch (dtype) {
    case GCLIP_F32:
        return ((const float *)data)[k];
    case GCLIP_F64:
        return ((const double *)data)[k];
    default:
        return bench_half_load(dtype, ((const uint16_t *)data)[k]);
    }
}

/* ---- CPU roofline kernels (roofline.c) --------------------------------------- */

void *bench_alloc(size_t bytes);
void bench_free(void *p);
/* Sum of squares of n floats with independent vector accumulators. */
double bench_read_kernel(const float *x, size_t n, int threads);
/* Where timed reads store their result, so that they are not optimized away. */
extern volatile double bench_sink;
/* x *= a in place: the read-write pattern of an in-place clip. */
void bench_scale_kernel(float *x, size_t n, float a, int threads);
/* Take `bytes` at `data` out of the CPU caches (outside timed regions). */
void bench_evict(const void *data, size_t bytes, int threads);
void bench_evict_release(void);
/* The roofline buffer (256 MiB, far larger than the caches) and one timed
 * pass over it: a read (sum of squares), or an in-place scale (read + write
 * of every line). The benchmark runs these between the repetitions of each
 * op, so an op's ratio compares two figures measured together. */
typedef struct bench_roof bench_roof;
bench_roof *bench_roof_create(int threads);
void bench_roof_destroy(bench_roof *r);
double bench_roof_bytes(void);
double bench_roof_read_ms(bench_roof *r);
double bench_roof_rw_ms(bench_roof *r);
/* Median read and read-write bandwidth in GB/s of `runs` passes each,
 * counting every byte moved. */
int bench_cpu_roofline(bench_roof *r, int runs, double *read_gbps, double *rw_gbps);

/* ---- timing ------------------------------------------------------------------- */

typedef struct bench_stats {
    double median_ms, min_ms, max_ms;
} bench_stats;

double bench_now_ms(void);
bench_stats bench_stats_of(double *ms, int n); /* sorts ms */

/* ---- results -------------------------------------------------------------------- */

typedef struct bench_record {
    char workload[24];
    char op[16];
    char impl[24]; /* "gclip", "naive", or a peer's label such as "torch-2.15.0" */
    char backend[8];
    int threads;
    bench_stats t;
    double bytes;
    double gbps;
    double roofline_gbps;  /* the limit for this op's passes */
    int roofline_interleaved; /* measured between this record's repetitions */
    int launches_per_step; /* CUDA only; -1 elsewhere */
    char policy[12]; /* gclip's non-finite policy ("skip", "propagate"); empty for the others */
    int check_failed; /* the result or the data after the runs was not the op's */
    int checked;      /* a peer's record: its script checked its output (peer_common.py) */
    int has_norm_error;
    double norm_error; /* a peer's returned norm over the exact one, less 1 */
    char note[96];
} bench_record;

typedef struct bench_results {
    bench_record *r;
    size_t n, cap;
} bench_results;

/* A new zeroed record at the end of `res` (NULL if out of memory). */
bench_record *bench_results_add(bench_results *res);
void bench_results_free(bench_results *res);
/* The readable table: one row per record, with its ratio to the roofline
 * and gclip's speed-up over the naive loop and over PyTorch. */
void bench_print_table(const bench_results *res);
/* One JSON object per record, in an array. Returns 0 on success. */
int bench_write_json(const bench_results *res, const char *path);

/* ---- peers (peer_runner.c) ------------------------------------------------------------ */

/* A peer library in one Python interpreter: PyTorch (bench/torch_baseline.py)
 * or JAX with optax, jitted (bench/jax_baseline.py). */
typedef struct bench_peer {
    char python[512];
    char kind[8];      /* "torch" or "jax" */
    char label[24];    /* the records' impl: "torch-2.15.0", "jax-0.10.2" */
    char versions[64]; /* for the report: "torch 2.15.0+cu132", "jax 0.10.2, optax 0.2.5" */
} bench_peer;

/* The peers importable from the interpreters of the comma-separated `list`
 * (NULL: python3, then /usr/bin/python3), at most `max`; one label is kept
 * once. Prints what each interpreter offers, or that it offers nothing (a
 * missing peer is reported, never an error). Returns the number found. */
int bench_peers_find(const char *list, bench_peer *peers, int max);
/* Run the peer's script (in `script_dir`) on the shapes of `w` and append
 * its records. `ops` is a bit mask over bench_op; `devices` e.g. "cpu" or
 * "cpu,cuda". */
int bench_peer_run(const bench_peer *peer, const char *script_dir, const bench_workload *w,
                   unsigned ops, int warmup, int runs, int threads, const char *devices,
                   bench_results *res);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_BENCH_H */
