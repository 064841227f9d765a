/*
 * cuda_backend.c - the CUDA backend of a plan: its device workspace, the one
 * upload of the tensor and chunk tables, the launches of each step and the
 * reading of results. Compiled only in builds with GCLIP_ENABLE_CUDA.
 *
 * A step waits for the plan's previous operation (its event), launches its
 * kernels and records the event again: no allocation, copy or
 * synchronization, so a step can be captured in a CUDA graph. While a stream
 * is captured, the wait and the record become external event nodes of the
 * graph, so every replay also waits for the plan's previous operation and
 * marks itself as the plan's last one: gclip_get_result and destroy wait on
 * that one event whatever mix of eager calls and replays ran, with no
 * cudaDeviceSynchronize. Every function works on the plan's device and gives
 * the caller's current device back before returning.
 *
 * Every CUDA failure becomes GCLIP_STATUS_CUDA_ERROR (OUT_OF_MEMORY for a
 * failed allocation) with the call, the CUDA error name and string and
 * file:line in gclip_last_error().
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gclip_internal.h"
#include "gclip_kernels.h"


/* The plan's CUDA state (plan->engine). */
typedef struct gclip_cuda_state {
    gclip_device_tables tables;  /* what the kernels get, all in `block` */
    gclip_tensor_desc *tensors;  /* writable alias of tables.tensors, for rebind */
    void *block;                 /* the one device allocation of the plan */
    cudaEvent_t done;            /* recorded by every operation, replays included */
    cudaStream_t copy_stream;    /* private, non-blocking: setup uploads and result reads */
} gclip_cuda_state;

/* ---- errors -------------------------------------------------------------- */

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* The runtime's last error cleared when it is `e`, an error of this call
 * that its status reports: a caller that checks cudaGetLastError after its
 * own launches (PyTorch does) must not meet it there. An error the caller
 * left unread, of another code, stays. */
static void forget_error(cudaError_t e)
{
    if (e != cudaSuccess && cudaPeekAtLastError() == e)
        (void)cudaGetLastError();
}

static gclip_status cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    forget_error(e);
    gclip_status s = e == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY
                                                    : GCLIP_STATUS_CUDA_ERROR;
    return gclip_fail(s, "%s failed: %s (%s) at %s:%d", what, cudaGetErrorName(e),
                      cudaGetErrorString(e), base_name(file), line);
}

/* For functions with a `gclip_status st` and a `done:` cleanup label. */
#define CUDA_TRY(call)                                            \
    do {                                                          \
        cudaError_t e_ = (call);                                  \
        if (e_ != cudaSuccess) {                                  \
            st = cuda_fail(e_, #call, __FILE__, __LINE__);        \
            goto done;                                            \
        }                                                         \
    } while (0)

/* ---- the caller's current device ------------------------------------------ */

typedef struct device_guard {
    int prev;
    int switched;
} device_guard;

static gclip_status enter_device(int device, device_guard *g)
{
    g->switched = 0;
    cudaError_t e = cudaGetDevice(&g->prev);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaGetDevice", __FILE__, __LINE__);
    if (g->prev != device) {
        e = cudaSetDevice(device);
        if (e != cudaSuccess)
            return cuda_fail(e, "cudaSetDevice", __FILE__, __LINE__);
        g->switched = 1;
    }
    return GCLIP_STATUS_SUCCESS;
}

static void leave_device(const device_guard *g)
{
    if (g->switched)
        (void)cudaSetDevice(g->prev);
}

/* ---- workspace layout -------------------------------------------------------- */

/* Offsets in the plan's device allocation; gclip_partial_slots sizes the
 * partials (one slot per chunk, whatever the grid, and a pad). */
typedef struct layout {
    size_t tensors, chunks, partials, factors, tickets, fold, partial, result, total;
} layout;

static size_t align_up(size_t x)
{
    return (x + 255u) & ~(size_t)255u;
}

static layout plan_layout(const gclip_plan *plan)
{
    layout l;
    size_t off = 0;
    l.tensors = off;
    off = align_up(off + plan->count * sizeof(gclip_tensor_desc));
    l.chunks = off;
    off = align_up(off + (size_t)plan->num_chunks * sizeof(gclip_chunk));
    l.partials = off;
    off = align_up(off + gclip_partial_slots(plan->num_chunks) * sizeof(double));
    l.factors = off;
    off = align_up(off + plan->count * sizeof(float));
    l.tickets = off;
    off = align_up(off + 2 * sizeof(unsigned int));
    l.fold = off;
    off = align_up(off + sizeof(gclip_fold_workspace));
    l.partial = off;
    off = align_up(off + sizeof(gclip_partial));
    l.result = off;
    l.total = off + sizeof(gclip_result_slot);
    return l;
}

static void point_tables(gclip_cuda_state *s, const gclip_plan *plan, const layout *l)
{
    char *b = (char *)s->block;
    s->tensors = (gclip_tensor_desc *)(void *)(b + l->tensors);
    s->tables.tensors = s->tensors;
    s->tables.chunks = (const gclip_chunk *)(const void *)(b + l->chunks);
    s->tables.num_tensors = (uint32_t)plan->count;
    s->tables.num_chunks = plan->num_chunks;
    s->tables.partials = (double *)(void *)(b + l->partials);
    s->tables.tensor_factor = (float *)(void *)(b + l->factors);
    s->tables.ticket = (unsigned int *)(void *)(b + l->tickets);
    s->tables.apply_ticket = s->tables.ticket + 1;
    s->tables.fold = (gclip_fold_workspace *)(void *)(b + l->fold);
    s->tables.partial = (gclip_partial *)(void *)(b + l->partial);
    s->tables.result = (gclip_result_slot *)(void *)(b + l->result);
}

/* ---- setup and teardown ---------------------------------------------------------- */

int gclip_cuda_visible_devices(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

static void free_state(gclip_cuda_state *s)
{
    if (s->done)
        forget_error(cudaEventDestroy(s->done));
    if (s->copy_stream)
        forget_error(cudaStreamDestroy(s->copy_stream));
    if (s->block)
        forget_error(cudaFree(s->block));
    gclip_host_free(s);
}

/* Tables, zero tickets (the fold lanes' too), a zero partial and the "no operation yet" result
 * slot, uploaded once. */
static gclip_status upload_initial(gclip_cuda_state *s, const gclip_plan *plan)
{
    gclip_status st = GCLIP_STATUS_SUCCESS;
    const gclip_result_slot initial = {NAN, 1.0f, 1.0f, 0, GCLIP_OP_NONE, 0, 0, 0, 0, 0};
    cudaStream_t cs = s->copy_stream;
    if (plan->count > 0)
        CUDA_TRY(cudaMemcpyAsync(s->tensors, plan->tensors, plan->count * sizeof(gclip_tensor_desc),
                                 cudaMemcpyHostToDevice, cs));
    if (plan->num_chunks > 0)
        CUDA_TRY(cudaMemcpyAsync((void *)s->tables.chunks, plan->chunks,
                                 (size_t)plan->num_chunks * sizeof(gclip_chunk),
                                 cudaMemcpyHostToDevice, cs));
    CUDA_TRY(cudaMemsetAsync(s->tables.ticket, 0, 2 * sizeof(unsigned int), cs));
    CUDA_TRY(cudaMemsetAsync(s->tables.fold, 0, sizeof(gclip_fold_workspace), cs));
    CUDA_TRY(cudaMemsetAsync(s->tables.partial, 0, sizeof(gclip_partial), cs));
    CUDA_TRY(cudaMemcpyAsync(s->tables.result, &initial, sizeof initial, cudaMemcpyHostToDevice, cs));
    /* the host sources live on this stack and in the plan: wait for the copies */
    CUDA_TRY(cudaStreamSynchronize(cs));
done:
    return st;
}

/* The grid caps (gclip_device_tables), once per plan: the norm kernel fills
 * every SM at its occupancy; the scale and clamp kernels take two blocks per
 * SM (fewer if fewer fit), which keeps 2 x 256 threads x 4 16-byte loads
 * in flight per SM, enough to stream large chunks at full bandwidth, while
 * an unclipped scale launch stays a couple of blocks per SM that read the
 * factor and leave; a plan of mostly small chunks takes as many as fit
 * (gclip_scale_blocks_wanted). No step asks the device anything. The same
 * call decides whether the scale kernel is a dependent launch
 * (gclip_dependent_launch_wanted). */
static gclip_status grid_caps(int device, const gclip_plan *plan, gclip_device_tables *t)
{
    int sms = 0, norm_blocks = 0, scale_blocks = 0, clamp_blocks = 0;
    cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaDeviceGetAttribute(MultiProcessorCount)", __FILE__, __LINE__);
    e = (cudaError_t)gclip_norm_blocks_per_sm(&norm_blocks);
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
        /* the first query of a kernel: a device older than the build's
         * architectures (sm_75 and newer by default) has no image of it */
        forget_error(e);
        int major = 0, minor = 0;
        (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED,
                          "CUDA device %d (compute capability %d.%d) has no image of gclip's "
                          "kernels in this build (%s); build for its architecture "
                          "(CMAKE_CUDA_ARCHITECTURES) or use GCLIP_DEVICE_CPU",
                          device, major, minor, cudaGetErrorName(e));
    }
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaOccupancyMaxActiveBlocksPerMultiprocessor(norm kernel)",
                         __FILE__, __LINE__);
    e = (cudaError_t)gclip_scale_blocks_per_sm(&scale_blocks);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaOccupancyMaxActiveBlocksPerMultiprocessor(scale kernel)",
                         __FILE__, __LINE__);
    /* the clamp kernel takes the same grid: no more blocks than it fits
     * either, or the last ones would wait for a second wave */
    e = (cudaError_t)gclip_clamp_blocks_per_sm(&clamp_blocks);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaOccupancyMaxActiveBlocksPerMultiprocessor(clamp kernel)",
                         __FILE__, __LINE__);
    if (clamp_blocks < scale_blocks)
        scale_blocks = clamp_blocks;
    int major = 0;
    e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaDeviceGetAttribute(ComputeCapabilityMajor)", __FILE__, __LINE__);
    t->dependent_launch =
        (uint32_t)gclip_dependent_launch_wanted(major, getenv("GCLIP_DEPENDENT_LAUNCH"));
    scale_blocks = gclip_scale_blocks_wanted(scale_blocks, plan);
    t->norm_grid_cap = (uint32_t)(sms > 0 && norm_blocks > 0 ? sms * norm_blocks : 0);
    t->scale_grid_cap = (uint32_t)(sms > 0 && scale_blocks > 0 ? sms * scale_blocks : 0);
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status cuda_init(gclip_plan *plan)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return gclip_fail(GCLIP_STATUS_NO_DEVICE,
                          "CUDA device %d requested, but CUDA reports no usable device: %s (%s); "
                          "use GCLIP_DEVICE_CPU",
                          plan->device, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    if (plan->device >= n)
        return gclip_fail(GCLIP_STATUS_NO_DEVICE,
                          "CUDA device %d does not exist: %d device(s) visible", plan->device, n);

    gclip_cuda_state *s = gclip_host_alloc(sizeof *s);
    if (!s)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: CUDA state host allocation failed");
    memset(s, 0, sizeof *s);

    device_guard g;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS) {
        gclip_host_free(s);
        return st;
    }
    const layout l = plan_layout(plan);
    CUDA_TRY(cudaStreamCreateWithFlags(&s->copy_stream, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    CUDA_TRY(cudaMalloc(&s->block, l.total));
    point_tables(s, plan, &l);
    st = grid_caps(plan->device, plan, &s->tables);
    if (st == GCLIP_STATUS_SUCCESS)
        st = upload_initial(s, plan);
done:
    if (st == GCLIP_STATUS_SUCCESS)
        plan->engine = s;
    else
        free_state(s);
    leave_device(&g);
    return st;
}

static void cuda_release(gclip_plan *plan)
{
    gclip_cuda_state *s = plan->engine;
    if (!s)
        return;
    device_guard g;
    const int entered = enter_device(plan->device, &g) == GCLIP_STATUS_SUCCESS;
    /* the plan's last operation, eager or replayed, may still use its tables */
    (void)cudaEventSynchronize(s->done);
    free_state(s);
    plan->engine = NULL;
    if (entered)
        leave_device(&g);
}

/* ---- ordering ------------------------------------------------------------------------ */

/* Whether `stream` is being captured into a CUDA graph. */
static gclip_status capture_state(gclip_stream stream, int *captured)
{
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaError_t e = cudaStreamIsCapturing((cudaStream_t)stream, &cs);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaStreamIsCapturing", __FILE__, __LINE__);
    *captured = cs != cudaStreamCaptureStatusNone;
    return GCLIP_STATUS_SUCCESS;
}

/* Make `stream` wait for the plan's previous operation, whatever stream (or
 * graph replay) issued it. */
static gclip_status after_previous(gclip_cuda_state *s, gclip_stream stream, int captured)
{
    cudaError_t e = cudaStreamWaitEvent((cudaStream_t)stream, s->done,
                                        captured ? cudaEventWaitExternal : cudaEventWaitDefault);
    return e == cudaSuccess ? GCLIP_STATUS_SUCCESS
                            : cuda_fail(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
}

/* Mark the end of an operation; in a captured stream the record is a node of
 * the graph, so that each replay records the event when it runs. `quiet`:
 * the operation has failed already and said why; a failed record then
 * keeps that message (a launch that fails in a capture invalidates it, and
 * the record after it fails too). */
static gclip_status mark_done(gclip_cuda_state *s, gclip_stream stream, int captured, int quiet)
{
    cudaError_t e = cudaEventRecordWithFlags(s->done, (cudaStream_t)stream,
                                             captured ? cudaEventRecordExternal
                                                      : cudaEventRecordDefault);
    if (e == cudaSuccess)
        return GCLIP_STATUS_SUCCESS;
    if (quiet) {
        forget_error(e);
        return GCLIP_STATUS_CUDA_ERROR;
    }
    return cuda_fail(e, "cudaEventRecordWithFlags", __FILE__, __LINE__);
}

/* ---- rebind ------------------------------------------------------------------------ */

/* INVALID_ARGUMENT when `stream` belongs to another device than the plan's.
 * A copy into another device's stream is accepted by the runtime, but the
 * event record after it is not: a rebind would have queued its new table
 * and then failed, unordered, with the host table put back. The handles of
 * the current device's default streams need no query (the plan's device is
 * current here). Without cudaStreamGetDevice (before CUDA 12.8), no check. */
static gclip_status stream_on_device(gclip_stream stream, int device)
{
#if CUDART_VERSION >= 12080
    const cudaStream_t st = (cudaStream_t)stream;
    if (st == NULL || st == cudaStreamLegacy || st == cudaStreamPerThread)
        return GCLIP_STATUS_SUCCESS;
    int dev = -1;
    const cudaError_t e = cudaStreamGetDevice(st, &dev);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaStreamGetDevice", __FILE__, __LINE__);
    if (dev != device)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "the stream belongs to CUDA device %d, the plan to device %d", dev,
                          device);
#else
    (void)stream;
    (void)device;
#endif
    return GCLIP_STATUS_SUCCESS;
}

/* Whether a rebind changes a pointer: plan.c has swapped the new pointers
 * in and kept the old ones, which the device table holds, in saved_data. */
static int pointers_changed(const gclip_plan *plan)
{
    for (size_t i = 0; i < plan->count; i++)
        if (plan->tensors[i].data != plan->saved_data[i])
            return 1;
    return 0;
}

/* The new table was queued but the event after it could not be recorded:
 * plan.c puts the old pointers back in the host table, and this queues them
 * for the device's, after the new ones in `stream` (the copy from pageable
 * memory consumes the host table before it returns). Best effort: the
 * call's status and message are those of the failure before. */
static void swap_saved_data(gclip_plan *plan)
{
    for (size_t i = 0; i < plan->count; i++) {
        void *p = plan->tensors[i].data;
        plan->tensors[i].data = plan->saved_data[i];
        plan->saved_data[i] = p;
    }
}

static void put_old_table_back(gclip_plan *plan, gclip_stream stream)
{
    gclip_cuda_state *s = plan->engine;
    swap_saved_data(plan);
    forget_error(cudaMemcpyAsync(s->tensors, plan->tensors,
                                 plan->count * sizeof(gclip_tensor_desc), cudaMemcpyHostToDevice,
                                 (cudaStream_t)stream));
    swap_saved_data(plan);
}

/* The new table is copied in `stream` order after the plan's previous
 * operation, and the copy becomes the plan's last operation, so operations
 * queued before keep the old pointers and later ones, on any stream, see the
 * new ones. A copy from pageable memory has consumed its source when the
 * call returns, so the next rebind may overwrite the host table at once.
 * On a stream being captured only a rebind to the pointers the table holds
 * is taken: nothing to copy, nothing recorded (frameworks that rebind before
 * every call can then be captured). */
static gclip_status cuda_upload_tensors(gclip_plan *plan, gclip_stream stream)
{
    gclip_cuda_state *s = plan->engine;
    device_guard g;
    int captured = 0;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    st = stream_on_device(stream, plan->device);
    if (st == GCLIP_STATUS_SUCCESS)
        st = capture_state(stream, &captured);
    if (st == GCLIP_STATUS_SUCCESS && captured) {
        if (!pointers_changed(plan))
            goto done; /* the device table already holds these pointers */
        st = gclip_fail(GCLIP_STATUS_NOT_SUPPORTED,
                        "gclip_plan_rebind to new pointers on a stream being captured: a graph "
                        "would keep the host table's address; rebind before capturing");
    }
    if (st == GCLIP_STATUS_SUCCESS)
        st = after_previous(s, stream, 0);
    if (st == GCLIP_STATUS_SUCCESS && plan->count > 0)
        CUDA_TRY(cudaMemcpyAsync(s->tensors, plan->tensors, plan->count * sizeof(gclip_tensor_desc),
                                 cudaMemcpyHostToDevice, (cudaStream_t)stream));
    if (st == GCLIP_STATUS_SUCCESS) {
        st = mark_done(s, stream, 0, 0);
        if (st != GCLIP_STATUS_SUCCESS)
            put_old_table_back(plan, stream);
    }
done:
    leave_device(&g);
    return st;
}

/* ---- step calls -------------------------------------------------------------------- */

/* The kernels of each op, in launch order. */
typedef int (*launcher_fn)(const gclip_device_tables *, const gclip_norm_params *, gclip_stream);

typedef struct launch_plan {
    int n;
    launcher_fn fn[3];
    const char *name[3];
} launch_plan;

static launch_plan launches_of(int32_t op)
{
    launch_plan lp = {0, {NULL, NULL, NULL}, {NULL, NULL, NULL}};
    switch (op) {
    case GCLIP_OP_ADAPTIVE_CLIP:
    case GCLIP_OP_ADAPTIVE_SKIP:
        lp.fn[lp.n] = gclip_launch_norm;
        lp.name[lp.n++] = "norm kernel";
        lp.fn[lp.n] = gclip_launch_adapt;
        lp.name[lp.n++] = "adapt kernel";
        if (op == GCLIP_OP_ADAPTIVE_CLIP) {
            lp.fn[lp.n] = gclip_launch_adapt_scale;
            lp.name[lp.n++] = "scale kernel";
        }
        break;
    case GCLIP_OP_AGC:
        lp.fn[lp.n] = gclip_launch_agc_norm;
        lp.name[lp.n++] = "AGC norm kernel";
        lp.fn[lp.n] = gclip_launch_agc_scale;
        lp.name[lp.n++] = "AGC scale kernel";
        break;
    case GCLIP_OP_CLIP_VALUE: /* its bound is a double: launched by cuda_run */
        lp.fn[lp.n] = NULL;
        lp.name[lp.n++] = "clamp kernel";
        break;
    case GCLIP_OP_FINALIZE:
        lp.fn[lp.n] = gclip_launch_finalize;
        lp.name[lp.n++] = "finalize kernel";
        break;
    case GCLIP_OP_CLIP_WITH_NORM:
    case GCLIP_OP_APPLY:
        lp.fn[lp.n] = gclip_launch_scale;
        lp.name[lp.n++] = "scale kernel";
        break;
    default:
        lp.fn[lp.n] = gclip_launch_norm;
        lp.name[lp.n++] = "norm kernel";
        if (gclip_op_applies(op)) {
            lp.fn[lp.n] = gclip_launch_scale;
            lp.name[lp.n++] = "scale kernel";
        }
        break;
    }
    return lp;
}

/* After launch k > 0 failed, launch k - 1 has left a slot whose factor was
 * never applied: say so in the slot itself, in stream order. */
static void mark_failed(gclip_cuda_state *s, gclip_stream stream)
{
    (void)cudaMemsetAsync(&s->tables.result->failed, 0xff, sizeof(int32_t),
                          (cudaStream_t)stream);
}

static gclip_status cuda_run(gclip_plan *plan, const gclip_step *step, gclip_stream stream)
{
    gclip_cuda_state *s = plan->engine;
    device_guard g;
    int captured = 0;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    st = capture_state(stream, &captured);
    if (st == GCLIP_STATUS_SUCCESS)
        st = after_previous(s, stream, captured);
    if (st == GCLIP_STATUS_SUCCESS) {
        const gclip_norm_params np = step->np;
        const launch_plan lp = launches_of(step->op);
        int queued = 0;
        for (int k = 0; k < lp.n; k++) {
            const cudaError_t err =
                (cudaError_t)(lp.fn[k] ? lp.fn[k](&s->tables, &np, stream)
                                       : gclip_launch_clamp(&s->tables, step->clip_value, stream));
            if (err != cudaSuccess) {
                forget_error(err);
                /* the first launch wrote the slot, but AGC's: its unit norms
                 * go to the workspace, and its scale launch writes the slot */
                const int slot_written = k > 0 && step->op != GCLIP_OP_AGC;
                if (slot_written)
                    mark_failed(s, stream);
                /* an adaptive's statistics are updated by its second launch */
                const int adapted = k > 1 && (step->op == GCLIP_OP_ADAPTIVE_CLIP ||
                                              step->op == GCLIP_OP_ADAPTIVE_SKIP);
                st = gclip_fail(err == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY
                                                                 : GCLIP_STATUS_CUDA_ERROR,
                                "%s: %s launch failed: %s (%s); %s%s", gclip_op_name(step->op),
                                lp.name[k], cudaGetErrorName(err), cudaGetErrorString(err),
                                slot_written ? "the norm was computed but no gradient was "
                                               "written, and the result slot is marked failed"
                                : k > 0 ? "no gradient was written and the result slot is "
                                          "unchanged"
                                        : "nothing was queued and the result slot is unchanged",
                                adapted ? "; the adaptive's state already holds this step" : "");
                break;
            }
            queued++;
        }
        /* whatever was queued is the plan's last operation */
        if (queued > 0) {
            const gclip_status m = mark_done(s, stream, captured, st != GCLIP_STATUS_SUCCESS);
            if (st == GCLIP_STATUS_SUCCESS)
                st = m;
        }
    }
    leave_device(&g);
    return st;
}

/* ---- results ----------------------------------------------------------------------- */

static gclip_status cuda_read_result(gclip_plan *plan, gclip_result_slot *out)
{
    gclip_cuda_state *s = plan->engine;
    device_guard g;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    CUDA_TRY(cudaEventSynchronize(s->done));
    /* a private non-blocking stream: no implicit wait for the caller's other work */
    CUDA_TRY(cudaMemcpyAsync(out, s->tables.result, sizeof *out, cudaMemcpyDeviceToHost,
                             s->copy_stream));
    CUDA_TRY(cudaStreamSynchronize(s->copy_stream));
done:
    leave_device(&g);
    return st;
}

static const gclip_result_slot *cuda_result_slot(const gclip_plan *plan)
{
    const gclip_cuda_state *s = plan->engine;
    return s->tables.result;
}

static const gclip_partial *cuda_partial(const gclip_plan *plan)
{
    const gclip_cuda_state *s = plan->engine;
    return s->tables.partial;
}

/* ---- memory for what is built on the plan ------------------------------------------ */

static gclip_status cuda_mem_alloc(const gclip_plan *plan, size_t bytes, void **ptr)
{
    device_guard g;
    *ptr = NULL;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    CUDA_TRY(cudaMalloc(ptr, bytes));
done:
    leave_device(&g);
    return st;
}

static void cuda_mem_free(const gclip_plan *plan, void *ptr)
{
    device_guard g;
    const int entered = enter_device(plan->device, &g) == GCLIP_STATUS_SUCCESS;
    if (ptr)
        forget_error(cudaFree(ptr));
    if (entered)
        leave_device(&g);
}

/* On the plan's private non-blocking stream, waited for: the caller's
 * streams are neither waited for nor disturbed. */
static gclip_status cuda_mem_copy(const gclip_plan *plan, void *dst, const void *src,
                                  size_t bytes, enum cudaMemcpyKind kind)
{
    const gclip_cuda_state *s = plan->engine;
    device_guard g;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, s->copy_stream));
    CUDA_TRY(cudaStreamSynchronize(s->copy_stream));
done:
    leave_device(&g);
    return st;
}

static gclip_status cuda_mem_write(const gclip_plan *plan, void *dst, const void *src,
                                   size_t bytes)
{
    return cuda_mem_copy(plan, dst, src, bytes, cudaMemcpyHostToDevice);
}

static gclip_status cuda_mem_read(const gclip_plan *plan, void *dst, const void *src,
                                  size_t bytes)
{
    return cuda_mem_copy(plan, dst, src, bytes, cudaMemcpyDeviceToHost);
}

const gclip_backend gclip_cuda_backend = {
    "cuda",     cuda_init,        cuda_release,     cuda_upload_tensors,
    cuda_run,   cuda_read_result, cuda_result_slot, cuda_partial,
    cuda_mem_alloc, cuda_mem_free, cuda_mem_write,  cuda_mem_read,
};
