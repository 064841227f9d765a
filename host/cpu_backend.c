/*
 * cpu_backend.c - the CPU backend: the reference the GPU results are checked
 * against, and a real fallback. Its workspace lives in host memory and every
 * step has completed when the call returns; the launch sequence of each op is
 * the CUDA backend's, with each kernel replaced by its CPU twin
 * (norm_cpu.c, finalize_cpu.c, scale_cpu.c, clamp_cpu.c).
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

#include "gclip_fold.h"
#include "gclip_internal.h"

/* Below this many elements a step is over in microseconds, less than waking
 * a team of OpenMP threads costs; the default is then one thread. */
#define GCLIP_CPU_PARALLEL_ELEMS ((int64_t)1 << 18)

/* A process forked from one whose OpenMP runtime had started a team cannot
 * start one itself: GNU libgomp's pool in the child still counts the
 * parent's threads, which fork did not copy, and the first parallel region
 * waits for them forever. gclip cannot tell whether any library of the
 * parent (PyTorch, a BLAS) started one, so in every forked child its CPU
 * steps run on the calling thread; the results do not depend on it. */
static volatile int forked_child;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void mark_forked_child(void)
{
    forked_child = 1;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, mark_forked_child);
}

#if defined(__GNUC__)
/* at load, so that a fork before the first step is seen too */
__attribute__((constructor)) static void register_atfork_at_load(void)
{
    pthread_once(&atfork_once, register_atfork);
}
#endif

int gclip_cpu_threads(const gclip_plan *plan)
{
    pthread_once(&atfork_once, register_atfork);
    if (forked_child)
        return 1;
    if (plan->num_threads > 0)
        return plan->num_threads;
    return plan->total_elems < GCLIP_CPU_PARALLEL_ELEMS ? 1 : omp_get_max_threads();
}

int gclip_cpu_team(const gclip_plan *plan, int64_t items)
{
    const int threads = gclip_cpu_threads(plan);
    if (items >= threads)
        return threads;
    return items > 1 ? (int)items : 1;
}

/* The threads take the chunks in grains: runs of contiguous chunks of about
 * GRAIN_WEIGHT, a chunk weighing its elements plus GCLIP_CPU_CHUNK_WEIGHT.
 * The grains are split among the threads in equal runs (a
 * static schedule: a dynamic one measured 10% slower on 100,000 chunks of
 * 100 elements), so a plan of large and tiny tensors is split by its bytes
 * rather than by its chunk count, and each grain is one call. Which thread
 * computes a chunk never changes its result. */
#define GRAIN_WEIGHT ((int64_t)1 << 18)

int64_t gclip_cpu_chunk_weight(const gclip_plan *plan, uint32_t c)
{
    int64_t begin, n;
    gclip_chunk_range(plan->tensors[plan->chunks[c].tensor].numel, plan->chunks[c].index, &begin,
                      &n);
    return n + GCLIP_CPU_CHUNK_WEIGHT;
}

/* Each chunk's span, from the tensor table as it is now. */
static void fill_spans(gclip_plan *plan)
{
    gclip_cpu_state *st = plan->engine;
    for (uint32_t c = 0; c < plan->num_chunks; c++) {
        const gclip_tensor_desc *t = &plan->tensors[plan->chunks[c].tensor];
        int64_t begin, n;
        gclip_chunk_range(t->numel, plan->chunks[c].index, &begin, &n);
        const int64_t es = gclip_dtype_size(t->dtype);
        st->spans[c].start = (char *)t->data + begin * es;
        st->spans[c].bytes = (int32_t)(n * es);
        st->spans[c].dtype = t->dtype;
    }
}

static uint32_t cut_grains(const gclip_plan *plan, uint32_t *first)
{
    uint32_t g = 0;
    int64_t w = GRAIN_WEIGHT; /* a grain starts at chunk 0 */
    for (uint32_t c = 0; c < plan->num_chunks; c++) {
        if (w >= GRAIN_WEIGHT) {
            if (first)
                first[g] = c;
            g++;
            w = 0;
        }
        w += gclip_cpu_chunk_weight(plan, c);
    }
    if (first)
        first[g] = plan->num_chunks;
    return g;
}

/* Grains [*lo, *hi) of thread t of n: equal runs, the first ng % n threads
 * one grain more. Both directions of gclip_cpu_walk_chunks give a thread the
 * same grains, so the update pass after a read pass finds in each core's
 * caches what that core read. */
static void thread_grains(int64_t ng, int t, int n, int64_t *lo, int64_t *hi)
{
    const int64_t q = ng / n, r = ng % n;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r);
}

static void walk_grains(const gclip_cpu_state *st, int64_t lo, int64_t hi, int reverse,
                        const gclip_plan *plan, gclip_cpu_run_fn fn, const void *arg)
{
    const uint32_t *first = st->grain_first;
    if (!reverse) {
        if (lo < hi)
            fn(plan, first[lo], first[hi], arg);
        return;
    }
    for (int64_t k = hi - 1; k >= lo; k--)
        fn(plan, first[k], first[k + 1], arg);
}

void gclip_cpu_walk_chunks(const gclip_plan *plan, gclip_cpu_run_fn fn, const void *arg,
                           int reverse)
{
    const gclip_cpu_state *st = plan->engine;
    const int64_t ng = st->num_grains;
    const int threads = gclip_cpu_team(plan, ng);
    if (threads == 1) {
        walk_grains(st, 0, ng, reverse, plan, fn, arg);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        GCLIP_FP_SCOPE(); /* this thread's part in the default environment */
        int64_t lo, hi;
        thread_grains(ng, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        walk_grains(st, lo, hi, reverse, plan, fn, arg);
    }
}

void gclip_cpu_for_chunks(const gclip_plan *plan, gclip_cpu_run_fn fn, const void *arg)
{
    gclip_cpu_walk_chunks(plan, fn, arg, 0);
}

static gclip_status cpu_init(gclip_plan *plan)
{
    gclip_cpu_state *st = gclip_host_alloc(sizeof *st);
    if (!st)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: CPU workspace allocation failed");
    memset(st, 0, sizeof *st);
    plan->engine = st;
    /* the emulator tests run the kernels on these: the kernels' slot count */
    st->partials = gclip_host_alloc(gclip_partial_slots(plan->num_chunks) * sizeof(double));
    st->tensor_factor = gclip_host_alloc(plan->count * sizeof(float));
    st->num_grains = cut_grains(plan, NULL);
    st->grain_first = gclip_host_alloc(((size_t)st->num_grains + 1) * sizeof(uint32_t));
    /* + 1: an allocation even for a plan without chunks */
    st->spans = gclip_host_alloc(((size_t)plan->num_chunks + 1) * sizeof(gclip_cpu_span));
    if (!st->partials || !st->tensor_factor || !st->grain_first || !st->spans)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: CPU workspace allocation failed");
    cut_grains(plan, st->grain_first);
    fill_spans(plan);
    int64_t bytes = 0;
    for (uint32_t c = 0; c < plan->num_chunks; c++)
        bytes += st->spans[c].bytes;
    st->read_pairs = bytes > GCLIP_CPU_PAIR_BYTES;
    gclip_status s = gclip_cpu_cut_segments(plan);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    st->result.total_norm = NAN;
    st->result.clip_coef = 1.0f;
    st->result.scale = 1.0f;
    st->result.op = GCLIP_OP_NONE;
    return GCLIP_STATUS_SUCCESS;
}

static void cpu_release(gclip_plan *plan)
{
    gclip_cpu_state *st = plan->engine;
    if (!st)
        return;
    gclip_host_free(st->partials);
    gclip_host_free(st->tensor_factor);
    gclip_host_free(st->grain_first);
    gclip_host_free(st->segment_first);
    gclip_host_free(st->chunk_weight_before);
    gclip_host_free(st->spans);
    gclip_host_free(st);
    plan->engine = NULL;
}

static gclip_status cpu_upload_tensors(gclip_plan *plan, gclip_stream stream)
{
    (void)stream;
    fill_spans(plan); /* the rest of the CPU path reads the host table itself */
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status cpu_run(gclip_plan *plan, const gclip_step *step, gclip_stream stream)
{
    (void)stream;
    switch (step->op) {
    case GCLIP_OP_CLIP_VALUE:
        gclip_clamp_cpu(plan, step->clip_value);
        break;
    case GCLIP_OP_FINALIZE:
        gclip_finalize_cpu(plan, &step->np);
        break;
    case GCLIP_OP_CLIP_WITH_NORM:
    case GCLIP_OP_APPLY:
        gclip_scale_cpu(plan, &step->np);
        break;
    case GCLIP_OP_AGC:
        gclip_agc_cpu(plan, &step->np);
        break;
    case GCLIP_OP_ADAPTIVE_CLIP:
    case GCLIP_OP_ADAPTIVE_SKIP:
        gclip_norm_cpu(plan, &step->np);
        gclip_adapt_cpu(plan, &step->np);
        if (step->op == GCLIP_OP_ADAPTIVE_CLIP)
            gclip_adapt_scale_cpu(plan, &step->np);
        break;
    default:
        if (gclip_tensor_clip_blocked(plan, &step->np)) { /* per-tensor, PROPAGATE */
            gclip_tensor_clip_cpu(plan, &step->np);
            break;
        }
        gclip_norm_cpu(plan, &step->np);
        if (gclip_op_applies(step->op))
            gclip_scale_cpu(plan, &step->np);
        break;
    }
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status cpu_read_result(gclip_plan *plan, gclip_result_slot *out)
{
    *out = ((const gclip_cpu_state *)plan->engine)->result;
    return GCLIP_STATUS_SUCCESS;
}

static const gclip_result_slot *cpu_result_slot(const gclip_plan *plan)
{
    return &((const gclip_cpu_state *)plan->engine)->result;
}

static const gclip_partial *cpu_partial(const gclip_plan *plan)
{
    return &((const gclip_cpu_state *)plan->engine)->partial;
}

/* Host memory; a copy is a memcpy. */
static gclip_status cpu_mem_alloc(const gclip_plan *plan, size_t bytes, void **ptr)
{
    (void)plan;
    *ptr = gclip_host_alloc(bytes);
    return *ptr ? GCLIP_STATUS_SUCCESS
                : gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation of %zu bytes failed",
                             bytes);
}

static void cpu_mem_free(const gclip_plan *plan, void *ptr)
{
    (void)plan;
    gclip_host_free(ptr);
}

static gclip_status cpu_mem_copy(const gclip_plan *plan, void *dst, const void *src, size_t bytes)
{
    (void)plan;
    memcpy(dst, src, bytes);
    return GCLIP_STATUS_SUCCESS;
}

const gclip_backend gclip_cpu_backend = {
    "cpu",           cpu_init,        cpu_release,     cpu_upload_tensors,
    cpu_run,         cpu_read_result, cpu_result_slot, cpu_partial,
    cpu_mem_alloc,   cpu_mem_free,    cpu_mem_copy,    cpu_mem_copy,
};
