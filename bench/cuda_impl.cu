/*
 * cuda_impl.cu - gclip's CUDA backend under the benchmark interface, timed
 * with CUDA events, and the device's own limit (a device-to-device copy).
 * Built only when the CUDA backend is.
 */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "impl.h"

// Flush buffer: several times the L2 of current data-center GPUs (50-60 MiB).
static const size_t kFlushBytes = size_t(256) << 20;

struct cuda_ctx {
    bench_workload *w;
    gclip_plan *plan;
    cudaStream_t stream;
    cudaEvent_t start, stop;
    unsigned char *data, *pristine, *flush;
    bool dirty; // data written since it was restored
    std::vector<gclip_tensor> tensors;
};

static bool ok(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    std::fprintf(stderr, "gclip-bench: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

static void cuda_prepare(void *vctx, int writes)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    if (writes || c->dirty)
        cudaMemcpyAsync(c->data, c->pristine, c->w->arena_bytes, cudaMemcpyDeviceToDevice,
                        c->stream);
    c->dirty = writes != 0;
    cudaMemsetAsync(c->flush, 0, kFlushBytes, c->stream);
    cudaStreamSynchronize(c->stream);
}

static double cuda_run(void *vctx, bench_op op, const bench_params *p, char *err)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    cudaEventRecord(c->start, c->stream);
    gclip_status st = bench_gclip_step(c->plan, op, p, c->stream);
    cudaEventRecord(c->stop, c->stream);
    cudaError_t e = cudaEventSynchronize(c->stop);
    if (st != GCLIP_STATUS_SUCCESS || e != cudaSuccess) {
        std::snprintf(err, 96, "%s %s", gclip_status_string(st),
                      st ? gclip_last_error() : cudaGetErrorString(e));
        return -1.0;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, c->start, c->stop);
    return ms;
}

static int cuda_check(void *vctx, bench_op op, const bench_params *p, char *note)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    return bench_gclip_check(c->plan, c->w, op, p, note);
}

// Kernel launches of one step, counted by capturing it into a CUDA graph
// (the capture records the work without running it). -1 if it cannot be
// captured.
static int cuda_launches(void *vctx, bench_op op, const bench_params *p)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return -1;
    gclip_status st = bench_gclip_step(c->plan, op, p, c->stream);
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (st != GCLIP_STATUS_SUCCESS || e != cudaSuccess || !graph) {
        cudaGetLastError();
        return -1;
    }
    size_t n = 0;
    cudaGraphGetNodes(graph, nullptr, &n);
    std::vector<cudaGraphNode_t> nodes(n);
    cudaGraphGetNodes(graph, nodes.data(), &n);
    int kernels = 0;
    for (size_t i = 0; i < n; i++) {
        cudaGraphNodeType type;
        if (cudaGraphNodeGetType(nodes[i], &type) == cudaSuccess && type == cudaGraphNodeTypeKernel)
            kernels++;
    }
    cudaGraphDestroy(graph);
    return kernels;
}

static void cuda_close(void *vctx)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    gclip_plan_destroy(c->plan);
    cudaFree(c->data);
    cudaFree(c->pristine);
    cudaFree(c->flush);
    cudaEventDestroy(c->start);
    cudaEventDestroy(c->stop);
    cudaStreamDestroy(c->stream);
    delete c;
}

extern "C" int bench_gclip_cuda_open(bench_impl *impl, bench_workload *w)
{
    cuda_ctx *c = new cuda_ctx();
    c->w = w;
    bool good = ok(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "stream") &&
                ok(cudaEventCreate(&c->start), "event") && ok(cudaEventCreate(&c->stop), "event") &&
                ok(cudaMalloc(&c->data, w->arena_bytes), "cudaMalloc data") &&
                ok(cudaMalloc(&c->pristine, w->arena_bytes), "cudaMalloc pristine") &&
                ok(cudaMalloc(&c->flush, kFlushBytes), "cudaMalloc flush") &&
                ok(cudaMemcpy(c->pristine, w->pristine, w->arena_bytes, cudaMemcpyHostToDevice),
                   "upload") &&
                ok(cudaMemcpy(c->data, c->pristine, w->arena_bytes, cudaMemcpyDeviceToDevice),
                   "copy");
    if (good) {
        // same layout as the host arena, rebased onto the device copy
        c->tensors.assign(w->tensors, w->tensors + w->count);
        for (gclip_tensor &t : c->tensors)
            t.data = c->data + (static_cast<unsigned char *>(t.data) - w->data);
        gclip_status st = gclip_plan_create(&c->plan, c->tensors.data(), w->count, 0);
        if (st != GCLIP_STATUS_SUCCESS) {
            std::fprintf(stderr, "gclip cuda plan for %s: %s: %s\n", w->name,
                         gclip_status_string(st), gclip_last_error());
            good = false;
        }
    }
    if (!good) {
        cuda_close(c);
        return -1;
    }
    impl->impl = "gclip";
    impl->backend = "cuda";
    impl->threads = 0;
    impl->ctx = c;
    impl->prepare = cuda_prepare;
    impl->run = cuda_run;
    impl->check = cuda_check;
    impl->launches = cuda_launches;
    impl->close = cuda_close;
    return 0;
}

extern "C" double bench_cuda_copy_gbps(size_t bytes, int runs)
{
    void *a = nullptr, *b = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    std::vector<double> ms;
    if (ok(cudaMalloc(&a, bytes), "cudaMalloc") && ok(cudaMalloc(&b, bytes), "cudaMalloc") &&
        ok(cudaEventCreate(&start), "event") && ok(cudaEventCreate(&stop), "event") &&
        ok(cudaMemset(a, 0, bytes), "memset")) {
        for (int i = 0; i < runs + 2; i++) { // two warm-up copies
            cudaEventRecord(start);
            cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
            cudaEventRecord(stop);
            cudaEventSynchronize(stop);
            float t = 0.0f;
            cudaEventElapsedTime(&t, start, stop);
            if (i >= 2)
                ms.push_back(t);
        }
    }
    cudaFree(a);
    cudaFree(b);
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    if (ms.empty())
        return -1.0;
    std::sort(ms.begin(), ms.end());
    double med = ms.size() % 2 ? ms[ms.size() / 2]
                               : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    return 2.0 * static_cast<double>(bytes) / med / 1e6; // read + write bytes
}

extern "C" const char *bench_cuda_device_name(void)
{
    static cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
        return "unknown device";
    return prop.name;
}
