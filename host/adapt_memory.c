/*
 * adapt_memory.c - the memory of an adaptive clipper on its plan's device:
 * host memory for CPU plans, one cudaMalloc for CUDA plans, and the copies
 * that create, export and import its state. None of this runs in a step.
 *
 * CUDA copies go through a private non-blocking stream and are waited for,
 * so they neither wait for nor disturb the caller's streams; the callers in
 * adapt.c first wait for the plan's last operation.
 */
#include <string.h>

#include "gclip_internal.h"

#if defined(GCLIP_HAVE_CUDA)
#include <cuda_runtime_api.h>

static gclip_status cuda_status(cudaError_t e, const char *what)
{
    return gclip_fail(e == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY
                                                     : GCLIP_STATUS_CUDA_ERROR,
                      "adaptive state: %s failed: %s (%s)", what, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

/* Run on the memory's device, giving the caller's current device back. */
typedef struct device_guard {
    int prev;
    int switched;
} device_guard;

static cudaError_t enter(int device, device_guard *g)
{
    g->switched = 0;
    cudaError_t e = cudaGetDevice(&g->prev);
    if (e == cudaSuccess && g->prev != device) {
        e = cudaSetDevice(device);
        g->switched = e == cudaSuccess;
    }
    return e;
}

static void leave(const device_guard *g)
{
    if (g->switched)
        (void)cudaSetDevice(g->prev);
}

static gclip_status cuda_alloc(size_t bytes, gclip_adapt_memory *m)
{
    device_guard g;
    cudaError_t e = enter(m->device, &g);
    if (e != cudaSuccess)
        return cuda_status(e, "cudaSetDevice");
    cudaStream_t s = NULL;
    e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e == cudaSuccess) {
        m->stream = s;
        e = cudaMalloc(&m->ptr, bytes);
    }
    leave(&g);
    return e == cudaSuccess ? GCLIP_STATUS_SUCCESS : cuda_status(e, "cudaMalloc");
}

static void cuda_free(gclip_adapt_memory *m)
{
    device_guard g;
    const int entered = enter(m->device, &g) == cudaSuccess;
    if (m->ptr)
        (void)cudaFree(m->ptr);
    if (m->stream)
        (void)cudaStreamDestroy((cudaStream_t)m->stream);
    (void)cudaGetLastError();
    if (entered)
        leave(&g);
}

static gclip_status cuda_copy(const gclip_adapt_memory *m, void *dst, const void *src,
                              size_t bytes, enum cudaMemcpyKind kind)
{
    device_guard g;
    cudaError_t e = enter(m->device, &g);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dst, src, bytes, kind, (cudaStream_t)m->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize((cudaStream_t)m->stream);
    leave(&g);
    return e == cudaSuccess ? GCLIP_STATUS_SUCCESS : cuda_status(e, "cudaMemcpyAsync");
}
#endif

gclip_status gclip_adapt_mem_alloc(const gclip_plan *plan, size_t bytes, gclip_adapt_memory *m)
{
    memset(m, 0, sizeof *m);
    m->device = plan->device;
    if (plan->device == GCLIP_DEVICE_CPU) {
        m->ptr = gclip_host_alloc(bytes);
        return m->ptr ? GCLIP_STATUS_SUCCESS
                      : gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY,
                                   "adaptive state: host allocation of %zu bytes failed", bytes);
    }
#if defined(GCLIP_HAVE_CUDA)
    return cuda_alloc(bytes, m);
#else
    return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED, "this gclip build has no CUDA backend");
#endif
}

void gclip_adapt_mem_free(gclip_adapt_memory *m)
{
    if (m->device == GCLIP_DEVICE_CPU)
        gclip_host_free(m->ptr);
#if defined(GCLIP_HAVE_CUDA)
    else
        cuda_free(m);
#endif
    m->ptr = NULL;
    m->stream = NULL;
}

gclip_status gclip_adapt_mem_write(const gclip_adapt_memory *m, size_t offset, const void *src,
                                   size_t bytes)
{
    char *dst = (char *)m->ptr + offset;
    if (m->device == GCLIP_DEVICE_CPU) {
        memcpy(dst, src, bytes);
        return GCLIP_STATUS_SUCCESS;
    }
#if defined(GCLIP_HAVE_CUDA)
    return cuda_copy(m, dst, src, bytes, cudaMemcpyHostToDevice);
#else
    return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED, "this gclip build has no CUDA backend");
#endif
}

gclip_status gclip_adapt_mem_read(const gclip_adapt_memory *m, size_t offset, void *dst,
                                  size_t bytes)
{
    const char *src = (const char *)m->ptr + offset;
    if (m->device == GCLIP_DEVICE_CPU) {
        memcpy(dst, src, bytes);
        return GCLIP_STATUS_SUCCESS;
    }
#if defined(GCLIP_HAVE_CUDA)
    return cuda_copy(m, dst, src, bytes, cudaMemcpyDeviceToHost);
#else
    return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED, "this gclip build has no CUDA backend");
#endif
}
