/*
 * gclip_internal.h - the plan, the backend interface, error reporting,
 * allocation and validation. Not installed. Included by the host C files,
 * the CUDA glue and the tests.
 */
#ifndef GCLIP_INTERNAL_H
#define GCLIP_INTERNAL_H

#include "gclip.h"
#include "gclip_norm_math.h"
#include "gclip_tables.h"

/* Inlined whatever the compiler's cost model says: the CPU path's
 * per-element, per-chunk and per-tensor helpers. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#ifdef __cplusplus
extern "C" {
#endif

/* One step as the backends see it: the op and its validated parameters. */
typedef struct gclip_step {
    int32_t op;           /* gclip_op */
    gclip_norm_params np; /* every op but GCLIP_OP_CLIP_VALUE; np.op == op */
    double clip_value;    /* GCLIP_OP_CLIP_VALUE: f64 elements clamped to it, others to (float) */
} gclip_step;

/* A backend: what a plan needs from the engine that runs it. The entry
 * points in host/plan.c and host/steps.c validate, then call through this
 * table; they never ask which backend it is. */
typedef struct gclip_backend {
    const char *name;
    /* workspace, device tables and result slot of a new plan */
    gclip_status (*init)(gclip_plan *plan);
    /* waits for the plan's last operation, frees */
    void (*release)(gclip_plan *plan);
    /* the host tensor table changed (rebind): make the engine's copy follow */
    gclip_status (*upload_tensors)(gclip_plan *plan, gclip_stream stream);
    /* run (or enqueue) one step */
    gclip_status (*run)(gclip_plan *plan, const gclip_step *step, gclip_stream stream);
    /* wait for the plan's last operation and copy its result slot */
    gclip_status (*read_result)(gclip_plan *plan, gclip_result_slot *out);
    /* the slot and the plan's partial in the engine's memory */
    const gclip_result_slot *(*result_slot)(const gclip_plan *plan);
    const gclip_partial *(*partial)(const gclip_plan *plan);
    /* memory of the plan's device for what is built on the plan (adaptive
     * state, AGC tables): allocate, free, and copies from and to the host
     * that have completed when the call returns (never in a step) */
    gclip_status (*mem_alloc)(const gclip_plan *plan, size_t bytes, void **ptr);
    void (*mem_free)(const gclip_plan *plan, void *ptr);
    gclip_status (*mem_write)(const gclip_plan *plan, void *dst, const void *src, size_t bytes);
    gclip_status (*mem_read)(const gclip_plan *plan, void *dst, const void *src, size_t bytes);
} gclip_backend;

extern const gclip_backend gclip_cpu_backend;  /* host/cpu_backend.c */
extern const gclip_backend gclip_cuda_backend; /* host/cuda_backend.c or host/cuda_stub.c */

/* CUDA devices visible to this build (0 without the CUDA backend). */
int gclip_cuda_visible_devices(void);

/* Whether a CUDA plan launches its scale kernel as a programmatic dependent
 * launch: only when `setting` (the environment's GCLIP_DEPENDENT_LAUNCH at
 * plan creation, NULL when unset) is "1", and only on devices of compute
 * capability 9.0 and later (older ones have no dependent launch). The
 * default is a plain launch: on an H200 the dependent one made a clip step
 * slower (docs/gpu-launch.md). */
int gclip_dependent_launch_wanted(int compute_major, const char *setting);

/* Blocks per SM of a CUDA plan's scale and clamp launches, from their
 * occupancy (`occupancy` blocks of each fit on an SM): two, enough 16-byte
 * loads in flight per SM to stream large chunks at full bandwidth, unless at
 * least half of the plan's chunks are small (walked a warp each,
 * gclip_chunk_is_small): then as many as fit, since a warp has only its own
 * chunk's loads in flight and the SM needs more warps to keep memory busy. */
int gclip_scale_blocks_wanted(int occupancy, const gclip_plan *plan);

struct gclip_plan {
    const gclip_backend *backend;
    int device;                 /* GCLIP_DEVICE_CPU or CUDA ordinal */
    size_t count;               /* tensors */
    uint32_t num_chunks;
    gclip_tensor_desc *tensors; /* host copy, [count] */
    gclip_chunk *chunks;        /* host copy, [num_chunks] */
    size_t *scratch;            /* [count], the non-empty tensors by address (overlap check) */
    size_t nonempty;            /* tensors with numel > 0 */
    int64_t total_elems;        /* elements of all tensors */
    void **saved_data;          /* [count], old pointers while rebinding */
    int num_threads;            /* CPU plans: OpenMP threads, 0 = default */
    int accumulated;            /* a gclip_norm_accumulate has been issued */
    void *engine;               /* the backend's own state */
};

/* ---- errors (host/status.c) ---- */

/* Record `status` with a printf-style detail for gclip_last_error and return
 * it, so that callers can write `return gclip_fail(...)`. */
gclip_status gclip_fail(gclip_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Clear the calling thread's detail message (done by every entry point). */
void gclip_clear_error(void);

/* The name of an op as the API spells it ("gclip_clip_grad_norm"). */
const char *gclip_op_name(int32_t op);

/* ---- the floating-point environment ----
 *
 * The library computes in the default environment whatever the caller's:
 * round to nearest even, no flush-to-zero, no denormals-are-zero, every
 * exception masked. Each entry point that computes in floating point (a
 * step, a result, a fold, an option check) saves the calling thread's
 * control and status register, sets the default (GCLIP_FP_SCOPE), and puts
 * the caller's back on every return, its exception flags included; each
 * CPU thread does the same for its part of a parallel region. So a caller
 * that flushes denormals (PyTorch's set_flush_denormal) gets the bits any
 * other caller gets, and one that unmasks FE_INVALID to catch NaNs in its
 * own code gets a NaN norm or a skipped step, not SIGFPE inside the
 * library. x86 only (the SSE register, MXCSR); elsewhere the caller's
 * environment applies. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
typedef unsigned int gclip_fp_env;
#define GCLIP_FP_DEFAULT 0x1f80u /* every exception masked, nearest, no FTZ/DAZ */
static inline gclip_fp_env gclip_fp_enter(void)
{
    gclip_fp_env saved;
    const gclip_fp_env def = GCLIP_FP_DEFAULT;
    __asm__ volatile("stmxcsr %0" : "=m"(saved) : : "memory");
    __asm__ volatile("ldmxcsr %0" : : "m"(def) : "memory");
    return saved;
}
static inline void gclip_fp_leave(const gclip_fp_env *saved)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(*saved) : "memory");
}
#define GCLIP_FP_SCOPE()                                                              \
    const gclip_fp_env gclip_fp_saved_ __attribute__((cleanup(gclip_fp_leave), unused)) = \
        gclip_fp_enter()
#else
#define GCLIP_FP_SCOPE() ((void)0)
#endif

/* ---- host allocation (host/alloc.c): every host allocation goes through
 * here, so that tests can make each one fail in turn. ---- */
void *gclip_host_alloc(size_t bytes);
void gclip_host_free(void *ptr);

/* A zeroed object of `bytes` in *ptr; on failure *ptr is NULL and the status
 * is GCLIP_STATUS_OUT_OF_MEMORY, with the message "<what>: host allocation
 * failed". */
gclip_status gclip_host_alloc_zeroed(size_t bytes, const char *what, void **ptr);

/* Test hook: when set, called before every host allocation with a running
 * index (0, 1, ...); returning nonzero makes that allocation fail. Not part of
 * the public API. */
typedef int (*gclip_alloc_hook_fn)(size_t index, size_t bytes);
void gclip_set_alloc_hook(gclip_alloc_hook_fn hook);

/* ---- validation (host/validate.c) ---- */

/* Check one tensor descriptor; `index` is used in the message. */
gclip_status gclip_validate_tensor(const gclip_tensor *t, size_t index);

/* Check that no two of the n (data, bytes) ranges overlap. `order` is
 * scratch of n entries. Names both indices on failure. */
gclip_status gclip_check_overlap(const gclip_tensor_desc *tensors, size_t n, size_t *order);

/* Whether the m tensors listed in `order` (the non-empty ones, in the order
 * the last gclip_check_overlap left) still start each at or after the end of
 * the one before: then no two overlap. O(m), for rebinds where the allocator
 * handed back addresses in the same order. */
int gclip_still_disjoint(const gclip_tensor_desc *tensors, const size_t *order, size_t m);

/* OVERLAP when the `bytes` at ptr share a byte with one of the plan's
 * tensors (binary search over plan->scratch, which lists the non-empty
 * tensors by address after every plan call); `what` names the range. */
gclip_status gclip_check_outside_tensors(const gclip_plan *plan, const void *ptr, size_t bytes,
                                        const char *what);

/* The pointers of a step's parameters checked against the plan: max_norm_ptr
 * and inv_scale_ptr outside the plan's result slot (the step rewrites it
 * while its blocks read them), tensor_norms outside the slot and every
 * tensor (host/steps.c). */
gclip_status gclip_check_step_pointers(const gclip_plan *plan, const gclip_norm_params *np);

/* Translate and check user options into the step parameters of `op`
 * (options NULL = defaults). */
gclip_status gclip_make_params(const gclip_norm_options *options, int32_t op,
                               gclip_norm_params *out);

/* ---- the CPU twins of the kernels (host/norm_cpu.c and its siblings) ---- */

/* A chunk as the CPU path's read and update passes walk it: its first byte,
 * its size in bytes and its dtype, looked up once per plan (and again after
 * a rebind) rather than from the chunk and tensor tables at every step. */
typedef struct gclip_cpu_span {
    char *start;
    int32_t bytes; /* at most GCLIP_CHUNK_ELEMS * 8 */
    int32_t dtype;
} gclip_cpu_span;

/* The CPU plan's workspace (plan->engine of a CPU plan). */
typedef struct gclip_cpu_state {
    double *partials;         /* [num_chunks] */
    float *tensor_factor;     /* [count] per-tensor scale factors */
    gclip_partial partial;    /* the plan's own partial */
    gclip_result_slot result; /* the plan's result slot */
    uint32_t *grain_first;    /* [num_grains + 1] first chunk of each grain, then num_chunks */
    uint32_t num_grains;      /* runs of contiguous chunks the CPU threads take in turn */
    uint32_t *segment_first;  /* [num_segments + 1] first chunk of each segment of whole
                                 tensors (tensor_clip_cpu.c), then num_chunks */
    uint32_t num_segments;
    int64_t *chunk_weight_before; /* [num_chunks + 1] running weight of the chunks before */
    gclip_cpu_span *spans;        /* [num_chunks] where each chunk's bytes are */
    int read_pairs; /* the read and update passes walk two streams a thread */
} gclip_cpu_state;

/* A plan of more bytes than this has its read pass take large chunks two at
 * a time (cpu_walk.h, chunk_sum_pair) and walk each thread's run as two
 * halves at once, small tensors of the two read side by side
 * (read_chunks_kind), and its update pass do the same with the f32 chunks
 * of at most 16 KiB (update_run, scale_cpu.c): two sequential streams per
 * thread, which move more bytes per second out of memory than one. Below
 * it, the gradients may still be in the last-level cache after the
 * backward pass, where the one-stream walk computes faster
 * (docs/benchmark.md, "Two chunks side by side"). */
#define GCLIP_CPU_PAIR_BYTES ((int64_t)32 << 20)

/* What a chunk weighs when the CPU threads share chunks out: its elements
 * plus this, for what starting a chunk costs (its table entries, its
 * dispatch, the read pass's per-chunk fold). */
#define GCLIP_CPU_CHUNK_WEIGHT 256
int64_t gclip_cpu_chunk_weight(const gclip_plan *plan, uint32_t c); /* cpu_backend.c */

void gclip_norm_cpu(gclip_plan *plan, const gclip_norm_params *np);     /* norm_kernel.cu */
void gclip_finalize_cpu(gclip_plan *plan, const gclip_norm_params *np); /* finalize_kernel.cu */
/* The tail of gclip_norm_cpu: the fold of the plan's partials into its
 * partial and result slot (and, for the per-tensor op, the factors). The
 * fold runs with fold_np (np, or np with less to write per tensor), the
 * slot is filled for np. */
void gclip_norm_fold_cpu(gclip_plan *plan, const gclip_norm_params *np,
                         const gclip_norm_params *fold_np, const gclip_scalars *sc);
/* The per-tensor op under GCLIP_NONFINITE_PROPAGATE, segment by segment
 * (tensor_clip_cpu.c), when gclip_tensor_clip_blocked says it applies. */
gclip_status gclip_cpu_cut_segments(gclip_plan *plan);
int gclip_tensor_clip_blocked(const gclip_plan *plan, const gclip_norm_params *np);
void gclip_tensor_clip_cpu(gclip_plan *plan, const gclip_norm_params *np);
/* The accumulator the fold of gclip_fold.h gives the tensor whose chunks are
 * [first, end) of num_chunks, from their partials alone. */
double gclip_tensor_acc_cpu(const double *partials, uint32_t num_chunks, uint32_t first,
                            uint32_t end, int32_t kind);
void gclip_scale_cpu(gclip_plan *plan, const gclip_norm_params *np);    /* scale_kernel.cu */
void gclip_clamp_cpu(gclip_plan *plan, double clip_value);               /* clamp_kernel.cu */

/* The norm kernel's fold of the chunk partials (kernels/gclip_fold.h), as its
 * last block runs it: per-tensor norms into np->tensor_norms (if set), under
 * the per-tensor op the factors into tensor_factor (as if the step writes),
 * the plan's accumulator and the number of tensors whose norm is not
 * finite. Bitwise what the kernel computes from the same partials, on
 * any number of threads (its lanes are split among up to `threads`). */
void gclip_fold_partials_cpu(const gclip_chunk *chunks, uint32_t num_chunks, uint32_t num_tensors,
                             const double *partials, const gclip_norm_params *np,
                             const gclip_scalars *sc, float *tensor_factor, double *acc,
                             uint32_t *nonfinite, int threads);

/* OpenMP threads for a CPU plan. */
int gclip_cpu_threads(const gclip_plan *plan);
/* The threads of a parallel region over `items` pieces of work: the plan's
 * count, but no thread without a piece (and at least one). */
int gclip_cpu_team(const gclip_plan *plan, int64_t items);
/* The most gclip_plan_set_num_threads accepts (documented in gclip.h). */
#define GCLIP_CPU_MAX_THREADS 1024
/* Calls fn(plan, first, last, arg) on runs of contiguous chunks [first, last)
 * covering the plan, on gclip_cpu_threads(plan) threads (cpu_backend.c). */
typedef void (*gclip_cpu_run_fn)(const gclip_plan *plan, uint32_t first, uint32_t last,
                                 const void *arg);
void gclip_cpu_for_chunks(const gclip_plan *plan, gclip_cpu_run_fn fn, const void *arg);
/* The same with `reverse` set: each thread takes the same chunks as
 * gclip_cpu_for_chunks gives it, but its grains last first (each grain's
 * chunks still in order). The update pass after a read pass walks so: what
 * the read pass read last, the caches still hold (cpu_backend.c). */
void gclip_cpu_walk_chunks(const gclip_plan *plan, gclip_cpu_run_fn fn, const void *arg,
                           int reverse);
/* The norm's read pass of a run of chunks: each chunk's partial into its
 * slot (arg: a gclip_read_arg), as the norm kernel's block computes it. The
 * generic one is compiled for the machine's baseline and AVX2 (norm_cpu.c). */
typedef struct gclip_read_arg {
    double *partials; /* one slot per chunk of the plan */
    int32_t kind;
    float p;
} gclip_read_arg;
void gclip_read_run_generic(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg);
/* The read pass's run of chunks for this CPU: the F16C one where it has
 * AVX2 and F16C, else the generic one (norm_cpu.c). */
gclip_cpu_run_fn gclip_cpu_read_run(void);
/* x86: whether the CPU has AVX2 and F16C (scale_cpu.c); asked once. */
int gclip_cpu_has_f16c(void);
/* The norm's read pass of a run of chunks, compiled for AVX2 and F16C
 * (norm_cpu_f16c.c); only called when gclip_cpu_has_f16c(). */
void gclip_read_run_f16c(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg);
/* The update of chunks [first, last): clamped to [-f, f] (f64 elements to f,
 * the others to (float)f), or scaled by the float factor f (or by
 * factor[tensor] when factor is set; factors of exactly 1 write nothing). */
void gclip_update_run_cpu(const gclip_plan *plan, uint32_t first, uint32_t last, int clamp,
                          double f, const float *factor);

/* ---- adaptive clipping (host/adapt.c, host/adapt_cpu.c, host/adapt_memory.c) ---- */

void gclip_adapt_cpu(gclip_plan *plan, const gclip_norm_params *np);       /* adapt_kernel.cu */
void gclip_adapt_scale_cpu(gclip_plan *plan, const gclip_norm_params *np); /* its scale launch */
void gclip_agc_cpu(gclip_plan *plan, const gclip_norm_params *np);         /* agc_kernel.cu */
/* The step parameters of an AGC step (host/agc.c): op, tables, pieces. */
struct gclip_agc;
gclip_status gclip_agc_params(const struct gclip_agc *agc, gclip_norm_params *np);

/* The adaptive's memory on the plan's device: one allocation through the
 * plan's backend, written and read back whole or in part with the host
 * waiting for the copy. */
typedef struct gclip_adapt_memory {
    void *ptr;               /* in the plan device's memory */
    const gclip_plan *plan;  /* whose backend allocated it */
} gclip_adapt_memory;

gclip_status gclip_adapt_mem_alloc(const gclip_plan *plan, size_t bytes, gclip_adapt_memory *m);
void gclip_adapt_mem_free(gclip_adapt_memory *m);
gclip_status gclip_adapt_mem_write(const gclip_adapt_memory *m, size_t offset, const void *src,
                                   size_t bytes);
gclip_status gclip_adapt_mem_read(const gclip_adapt_memory *m, size_t offset, void *dst,
                                  size_t bytes);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_INTERNAL_H */
