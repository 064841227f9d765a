/*
 * memory_cuda.c - buffers of CUDA plans and the ordering of their steps.
 *
 * One cudaMalloc at plan creation holds the gather buffer, the poison
 * partial and (plans without a transport) the send slots. A step is made of
 * operations on several core plans and a collective; each core plan orders
 * its own operations, but nothing orders the collective of step k+1, which
 * overwrites the gather buffer, after the finalize of step k, nor the
 * accumulate of step k+1 after the apply of step k, when the caller changes
 * stream between steps. So every distributed call waits for the plan's
 * event first and records it last, as the core does for a plan: while a
 * stream is captured both become external event nodes, so graph replays are
 * ordered too. No call synchronizes the host except setup and results.
 */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dist_internal.h"

typedef struct cuda_state {
    void *block;
    cudaEvent_t done;       /* recorded at the end of every distributed call */
    cudaStream_t copy;      /* private, non-blocking: setup and results */
} cuda_state;

void gclip_dist_forget_cuda_error(int error)
{
    const cudaError_t e = (cudaError_t)error;
    if (e != cudaSuccess && cudaPeekAtLastError() == e)
        (void)cudaGetLastError();
}

static gclip_status cuda_fail(cudaError_t e, const char *what)
{
    gclip_dist_forget_cuda_error(e);
    return gclip_dist_fail(e == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY
                                                          : GCLIP_STATUS_CUDA_ERROR,
                           "%s failed: %s (%s)", what, cudaGetErrorName(e),
                           cudaGetErrorString(e));
}

/* Run on the plan's device and give the caller's current device back. */
typedef struct device_guard {
    int prev;
    int switched;
} device_guard;

static gclip_status enter(const gclip_dist_plan *p, device_guard *g)
{
    g->switched = 0;
    cudaError_t e = cudaGetDevice(&g->prev);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaGetDevice");
    if (g->prev != p->device) {
        e = cudaSetDevice(p->device);
        if (e != cudaSuccess)
            return cuda_fail(e, "cudaSetDevice");
        g->switched = 1;
    }
    return GCLIP_STATUS_SUCCESS;
}

static void leave(const device_guard *g)
{
    if (g->switched)
        (void)cudaSetDevice(g->prev);
}

static void free_state(cuda_state *s)
{
    if (s->done)
        gclip_dist_forget_cuda_error(cudaEventDestroy(s->done));
    if (s->copy)
        gclip_dist_forget_cuda_error(cudaStreamDestroy(s->copy));
    if (s->block)
        gclip_dist_forget_cuda_error(cudaFree(s->block));
    memset(s, 0, sizeof *s);
}

static gclip_status cuda_init(gclip_dist_plan *p)
{
    cuda_state *s = calloc(1, sizeof *s);
    if (!s)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    device_guard g;
    gclip_status st = enter(p, &g);
    if (st != GCLIP_STATUS_SUCCESS) {
        free(s);
        return st;
    }
    const size_t n = p->offsets[p->num_groups] + 1 + (p->transport ? 0 : p->num_groups);
    cudaError_t e = cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaMalloc(&s->block, n * sizeof(gclip_partial));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->block, 0, n * sizeof(gclip_partial), s->copy);
    gclip_partial *base = s->block;
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(base + p->offsets[p->num_groups], &p->poison_value,
                            sizeof p->poison_value, cudaMemcpyHostToDevice, s->copy);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(s->copy);
    if (e != cudaSuccess) {
        st = cuda_fail(e, "gather buffer setup");
        free_state(s);
        free(s);
    } else {
        p->memory_state = s;
        p->gather = base;
        p->poison = base + p->offsets[p->num_groups];
        p->send = p->transport ? NULL : p->poison + 1;
    }
    leave(&g);
    return st;
}

static void cuda_release(gclip_dist_plan *p)
{
    cuda_state *s = p->memory_state;
    device_guard g;
    const int entered = enter(p, &g) == GCLIP_STATUS_SUCCESS;
    /* the last step's collective and finalize may still use the buffer */
    (void)cudaEventSynchronize(s->done);
    free_state(s);
    free(s);
    p->memory_state = NULL;
    if (entered)
        leave(&g);
}

static gclip_status capturing(gclip_stream stream, int *captured)
{
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaError_t e = cudaStreamIsCapturing((cudaStream_t)stream, &cs);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaStreamIsCapturing");
    *captured = cs != cudaStreamCaptureStatusNone;
    return GCLIP_STATUS_SUCCESS;
}

/* A step waits for the plan's previous operation (begin) and marks itself as
 * the plan's last one (end); in a captured stream both are external event
 * nodes, so every replay does the same. */
static gclip_status cuda_order(gclip_dist_plan *p, gclip_stream stream, int record)
{
    cuda_state *s = p->memory_state;
    device_guard g;
    int captured = 0;
    gclip_status st = enter(p, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    st = capturing(stream, &captured);
    if (st == GCLIP_STATUS_SUCCESS) {
        const cudaError_t e =
            record ? cudaEventRecordWithFlags(s->done, (cudaStream_t)stream,
                                              captured ? cudaEventRecordExternal
                                                       : cudaEventRecordDefault)
                   : cudaStreamWaitEvent((cudaStream_t)stream, s->done,
                                         captured ? cudaEventWaitExternal : cudaEventWaitDefault);
        if (e != cudaSuccess)
            st = cuda_fail(e, record ? "cudaEventRecordWithFlags" : "cudaStreamWaitEvent");
    }
    leave(&g);
    return st;
}

static gclip_status cuda_begin(gclip_dist_plan *p, gclip_stream stream)
{
    return cuda_order(p, stream, 0);
}

static gclip_status cuda_end(gclip_dist_plan *p, gclip_stream stream)
{
    return cuda_order(p, stream, 1);
}

static gclip_status cuda_copy(gclip_dist_plan *p, void *dst, const void *src, size_t bytes,
                              gclip_dist_copy_kind kind, int sync, gclip_stream stream)
{
    cuda_state *s = p->memory_state;
    device_guard g;
    gclip_status st = enter(p, &g);
    if (st != GCLIP_STATUS_SUCCESS)
        return st;
    const enum cudaMemcpyKind k = kind == GCLIP_DIST_TO_HOST     ? cudaMemcpyDeviceToHost
                                  : kind == GCLIP_DIST_TO_DEVICE ? cudaMemcpyHostToDevice
                                                                 : cudaMemcpyDeviceToDevice;
    cudaStream_t on = sync ? s->copy : (cudaStream_t)stream;
    if (sync) {
        /* after the plan's last step, without waiting for the caller's other work */
        cudaError_t e = cudaStreamWaitEvent(on, s->done, cudaEventWaitDefault);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dst, src, bytes, k, on);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(on);
        if (e != cudaSuccess)
            st = cuda_fail(e, "copy of the gathered partials");
    } else {
        const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, k, on);
        if (e != cudaSuccess)
            st = cuda_fail(e, "cudaMemcpyAsync of a send slot");
    }
    leave(&g);
    return st;
}

const gclip_dist_memory gclip_dist_cuda_memory = {cuda_init, cuda_release, cuda_begin, cuda_end,
                                                  cuda_copy};
