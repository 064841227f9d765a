/*
 * cuda_backend.c - the CUDA backend of a plan: its device workspace, the one
 * upload of the tensor and chunk tables, the launches of each step and the
 * reading of results. Compiled only in builds with GCLIP_ENABLE_CUDA.
 *
 * Step calls (norm_op, value_op) only launch kernels and record an event: no
 * allocation, copy, memset or synchronization, so a step can be captured in
 * a CUDA graph. Every function works on the plan's device and gives the
 * caller's current device back before returning.
 *
 * Every CUDA failure becomes GCLIP_STATUS_CUDA_ERROR (OUT_OF_MEMORY for a
 * failed allocation) with the call, the CUDA error name and string and
 * file:line in gclip_last_error().
 */
#include <math.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gclip_internal.h"
#include "gclip_kernels.h"

_Static_assert(sizeof(gclip_result_slot) == sizeof(gclip_device_result),
               "the kernels' result slot is what gclip_plan_device_result exposes");

/* The plan's CUDA state (plan->cuda). */
typedef struct gclip_cuda_state {
    gclip_device_tables tables;  /* what the kernels get, all in `block` */
    gclip_tensor_desc *tensors;  /* writable alias of tables.tensors, for rebind */
    void *block;                 /* the one device allocation of the plan */
    cudaEvent_t done;            /* recorded after every eager operation */
    cudaStream_t copy_stream;    /* private, non-blocking: setup uploads and result reads */
    int last_captured;           /* last operation went into a CUDA graph: no event */
} gclip_cuda_state;

/* ---- errors -------------------------------------------------------------- */

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static gclip_status cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    /* clear a non-sticky error so that a later launch check does not report it again */
    (void)cudaGetLastError();
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

/* Offsets in the plan's device allocation; gclip_kernel_grid sizes the
 * partials, so the workspace and the launch shape come from one function. */
typedef struct layout {
    size_t tensors, chunks, partials, factors, ticket, result, total;
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
    off = align_up(off + (size_t)gclip_kernel_grid(plan->num_chunks) * sizeof(double));
    l.factors = off;
    off = align_up(off + plan->count * sizeof(float));
    l.ticket = off;
    off = align_up(off + sizeof(unsigned int));
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
    s->tables.ticket = (unsigned int *)(void *)(b + l->ticket);
    s->tables.result = (gclip_result_slot *)(void *)(b + l->result);
}

/* ---- setup and teardown ---------------------------------------------------------- */

int gclip_cuda_count_devices(void)
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
        (void)cudaEventDestroy(s->done);
    if (s->copy_stream)
        (void)cudaStreamDestroy(s->copy_stream);
    if (s->block)
        (void)cudaFree(s->block);
    (void)cudaGetLastError();
    gclip_host_free(s);
}

/* Tables, a zero ticket and the "no operation yet" result slot, uploaded once. */
static gclip_status upload_initial(gclip_cuda_state *s, const gclip_plan *plan)
{
    gclip_status st = GCLIP_STATUS_SUCCESS;
    const gclip_result_slot initial = {NAN, 1.0f, 1.0f, 0};
    cudaStream_t cs = s->copy_stream;
    if (plan->count > 0)
        CUDA_TRY(cudaMemcpyAsync(s->tensors, plan->tensors, plan->count * sizeof(gclip_tensor_desc),
                                 cudaMemcpyHostToDevice, cs));
    if (plan->num_chunks > 0)
        CUDA_TRY(cudaMemcpyAsync((void *)s->tables.chunks, plan->chunks,
                                 (size_t)plan->num_chunks * sizeof(gclip_chunk),
                                 cudaMemcpyHostToDevice, cs));
    CUDA_TRY(cudaMemsetAsync(s->tables.ticket, 0, sizeof(unsigned int), cs));
    CUDA_TRY(cudaMemcpyAsync(s->tables.result, &initial, sizeof initial, cudaMemcpyHostToDevice, cs));
    /* the host sources live on this stack and in the plan: wait for the copies */
    CUDA_TRY(cudaStreamSynchronize(cs));
done:
    return st;
}

gclip_status gclip_cuda_init(gclip_plan *plan)
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
    st = upload_initial(s, plan);
done:
    if (st == GCLIP_STATUS_SUCCESS)
        plan->cuda = s;
    else
        free_state(s);
    leave_device(&g);
    return st;
}

void gclip_cuda_release(gclip_plan *plan)
{
    gclip_cuda_state *s = plan->cuda;
    if (!s)
        return;
    device_guard g;
    const int entered = enter_device(plan->device, &g) == GCLIP_STATUS_SUCCESS;
    /* pending work of the plan may still use its tables and workspace;
     * a captured step may be replayed in any stream, hence the device-wide wait */
    if (s->last_captured)
        (void)cudaDeviceSynchronize();
    else
        (void)cudaEventSynchronize(s->done);
    free_state(s);
    plan->cuda = NULL;
    if (entered)
        leave_device(&g);
}

/* ---- rebind ------------------------------------------------------------------------ */

gclip_status gclip_cuda_upload_tensors(gclip_plan *plan, gclip_stream stream)
{
    gclip_cuda_state *s = plan->cuda;
    device_guard g;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    if (plan->count > 0) {
        /* in stream order, so that steps already queued on `stream` use the old pointers */
        CUDA_TRY(cudaMemcpyAsync(s->tensors, plan->tensors, plan->count * sizeof(gclip_tensor_desc),
                                 cudaMemcpyHostToDevice, (cudaStream_t)stream));
        CUDA_TRY(cudaStreamSynchronize((cudaStream_t)stream));
    }
done:
    leave_device(&g);
    return st;
}

/* ---- step calls -------------------------------------------------------------------- */

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

/* Mark the end of an operation for gclip_cuda_fetch_result. An event recorded
 * during capture cannot be waited on later, so a captured operation records
 * none and the fetch waits for the device instead. */
static gclip_status finish_op(gclip_cuda_state *s, gclip_stream stream, int captured)
{
    gclip_status st = GCLIP_STATUS_SUCCESS;
    s->last_captured = captured;
    if (!captured)
        CUDA_TRY(cudaEventRecord(s->done, (cudaStream_t)stream));
done:
    return st;
}

/* The launches of one step: the norm kernel, then (for clipping) the scale
 * kernel, or the clamp kernel alone. Returns 0 or the first launch error and
 * names the kernel that failed. */
static int launch_step(const gclip_cuda_state *s, const gclip_norm_params *np, float clip_value,
                       gclip_stream stream, const char **kernel)
{
    if (!np) {
        *kernel = "clamp kernel launch";
        return gclip_launch_clamp(&s->tables, clip_value, stream);
    }
    *kernel = "norm kernel launch";
    int err = gclip_launch_norm(&s->tables, np, stream);
    if (err == 0 && np->op != GCLIP_OP_TOTAL) {
        *kernel = "scale kernel launch";
        err = gclip_launch_scale(&s->tables, np->op, stream);
    }
    return err;
}

/* One step on the plan's device: launches, then the event (or none while
 * the stream is being captured). */
static gclip_status run_step(gclip_plan *plan, const gclip_norm_params *np, float clip_value,
                             gclip_stream stream)
{
    gclip_cuda_state *s = plan->cuda;
    device_guard g;
    int captured = 0;
    const char *kernel = "";
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    st = capture_state(stream, &captured);
    if (st == GCLIP_STATUS_SUCCESS) {
        int err = launch_step(s, np, clip_value, stream, &kernel);
        st = err != 0 ? cuda_fail((cudaError_t)err, kernel, __FILE__, __LINE__)
                      : finish_op(s, stream, captured);
    }
    leave_device(&g);
    return st;
}

gclip_status gclip_cuda_norm_op(gclip_plan *plan, const gclip_norm_params *np, gclip_stream stream)
{
    return run_step(plan, np, 0.0f, stream);
}

gclip_status gclip_cuda_value_op(gclip_plan *plan, float clip_value, gclip_stream stream)
{
    return run_step(plan, NULL, clip_value, stream);
}

/* ---- results ----------------------------------------------------------------------- */

gclip_status gclip_cuda_fetch_result(gclip_plan *plan, gclip_result_slot *out)
{
    gclip_cuda_state *s = plan->cuda;
    device_guard g;
    gclip_status st = enter_device(plan->device, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    if (s->last_captured)
        CUDA_TRY(cudaDeviceSynchronize());
    else
        CUDA_TRY(cudaEventSynchronize(s->done));
    /* a private non-blocking stream: no implicit wait for the caller's other work */
    CUDA_TRY(cudaMemcpyAsync(out, s->tables.result, sizeof *out, cudaMemcpyDeviceToHost,
                             s->copy_stream));
    CUDA_TRY(cudaStreamSynchronize(s->copy_stream));
done:
    leave_device(&g);
    return st;
}

const gclip_device_result *gclip_cuda_device_result(const gclip_plan *plan)
{
    const gclip_cuda_state *s = plan->cuda;
    return s ? (const gclip_device_result *)(const void *)s->tables.result : NULL;
}
