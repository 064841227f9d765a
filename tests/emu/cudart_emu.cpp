// cudart_emu.cpp - the CUDA runtime on the host; see cudart_emu.h for the model.
#include "cudart_emu.h"

#include "emu_intercept.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <vector>

// ---- the runtime's objects (opaque in the CUDA headers) ---------------------------

struct Node {
    cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
    gclip_emu::Intercepted *launch = nullptr; // kernel nodes: owned
    void *dst = nullptr;                   // memcpy and memset nodes
    const void *src = nullptr;
    std::size_t bytes = 0;
    int value = 0;
    cudaEvent_t event = nullptr;           // event nodes
    ~Node()
    {
        if (launch)
            gclip_emu::free_intercepted(launch);
    }
};

struct CUgraphNode_st {
    std::shared_ptr<Node> node;
};

struct CUstream_st {
    int device = 0;
    unsigned flags = 0;
    bool capturing = false;
    bool invalidated = false;
    cudaGraph_t graph = nullptr; // being captured
};

struct CUevent_st {
    int device = 0;
    unsigned flags = 0;
    bool recorded = false;
};

struct CUgraph_st {
    std::vector<std::unique_ptr<CUgraphNode_st>> nodes;
};

struct CUgraphExec_st {
    std::vector<std::shared_ptr<Node>> nodes;
};

namespace cudart_emu {
namespace {

struct Fault {
    unsigned countdown;
    int error;
};

struct Allocation {
    std::size_t bytes;
    int device;
};

struct State {
    std::recursive_mutex lock;
    int devices = 2;
    std::map<std::string, unsigned> calls;
    std::map<std::string, std::vector<Fault>> faults;
    std::vector<Fault> launch_faults;
    unsigned blocking = 0;
    unsigned launches = 0;
    std::map<std::uintptr_t, Allocation> allocations;
    std::set<cudaStream_t> streams;
    std::size_t events = 0;
    unsigned wrong_device = 0;
    std::string first_wrong;
};

State &st()
{
    static State s;
    return s;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last = cudaSuccess;

using Lock = std::lock_guard<std::recursive_mutex>;

cudaError_t fail(cudaError_t e)
{
    if (e != cudaSuccess)
        t_last = e;
    return e;
}

// Counts the call; the injected error of this call, or cudaSuccess.
cudaError_t enter(const char *name, bool blocking = false)
{
    State &s = st();
    ++s.calls[name];
    if (blocking)
        ++s.blocking;
    auto it = s.faults.find(name);
    if (it == s.faults.end())
        return cudaSuccess;
    int error = 0;
    for (auto f = it->second.begin(); f != it->second.end();) {
        if (--f->countdown == 0) {
            error = f->error;
            f = it->second.erase(f);
        } else {
            ++f;
        }
    }
    return fail(static_cast<cudaError_t>(error));
}

// The allocation holding [p, p + bytes), or null.
const Allocation *allocation_of(const void *p, std::size_t bytes)
{
    State &s = st();
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    auto it = s.allocations.upper_bound(a);
    if (it == s.allocations.begin())
        return nullptr;
    --it;
    if (a < it->first || a + bytes > it->first + it->second.bytes)
        return nullptr;
    return &it->second;
}

void note_wrong(const char *call, const std::string &what)
{
    State &s = st();
    if (s.wrong_device++ == 0)
        s.first_wrong = std::string(call) + ": " + what;
}

// Device memory in [p, p + bytes) must be the current device's.
void check_memory(const char *call, const void *p, std::size_t bytes)
{
    const Allocation *a = allocation_of(p, bytes);
    if (a && a->device != t_device) {
        std::ostringstream m;
        m << "memory of device " << a->device << " used with device " << t_device << " current";
        note_wrong(call, m.str());
    }
}

int stream_device(cudaStream_t s)
{
    return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread ? t_device
                                                                             : s->device;
}

bool is_handle(cudaStream_t s)
{
    return s != nullptr && s != cudaStreamLegacy && s != cudaStreamPerThread;
}

bool capturing(cudaStream_t s)
{
    return is_handle(s) && s->capturing;
}

// Whether an operation may be issued into `s` now: an operation in the
// legacy default stream while a blocking stream is being captured is
// implicitly ordered with that capture, which it invalidates, and an
// invalidated capture takes nothing more.
cudaError_t use_stream(cudaStream_t s)
{
    if (s == nullptr || s == cudaStreamLegacy) {
        bool hit = false;
        for (cudaStream_t c : st().streams)
            if (c->capturing && !(c->flags & cudaStreamNonBlocking)) {
                c->invalidated = true;
                hit = true;
            }
        return hit ? fail(cudaErrorStreamCaptureImplicit) : cudaSuccess;
    }
    if (capturing(s) && s->invalidated)
        return fail(cudaErrorStreamCaptureInvalidated);
    return cudaSuccess;
}

Node &add_node(cudaStream_t s, cudaGraphNodeType type)
{
    auto n = std::make_unique<CUgraphNode_st>();
    n->node = std::make_shared<Node>();
    n->node->type = type;
    Node &ref = *n->node;
    s->graph->nodes.push_back(std::move(n));
    return ref;
}

int run_node(const Node &n)
{
    switch (n.type) {
    case cudaGraphNodeTypeKernel:
        ++st().launches;
        return gclip_emu::run_intercepted(n.launch);
    case cudaGraphNodeTypeMemcpy:
        std::memmove(n.dst, n.src, n.bytes);
        return 0;
    case cudaGraphNodeTypeMemset:
        std::memset(n.dst, n.value, n.bytes);
        return 0;
    case cudaGraphNodeTypeEventRecord:
        n.event->recorded = true;
        return 0;
    default:
        return 0;
    }
}

// Every kernel launch of the emulated kernels comes here.
int intercept(gclip_emu::Intercepted *l, const void *stream_arg)
{
    State &s = st();
    Lock guard(s.lock);
    auto owned = std::make_shared<Node>();
    owned->type = cudaGraphNodeTypeKernel;
    owned->launch = l; // freed with the node, however this returns
    cudaStream_t stream = static_cast<cudaStream_t>(const_cast<void *>(stream_arg));
    int injected = 0;
    for (auto f = s.launch_faults.begin(); f != s.launch_faults.end();) {
        if (--f->countdown == 0) {
            injected = f->error;
            f = s.launch_faults.erase(f);
        } else {
            ++f;
        }
    }
    // a failed launch is also the thread's last error, as the runtime's are
    if (injected != 0)
        return fail(static_cast<cudaError_t>(injected));
    if (stream_device(stream) != t_device)
        return fail(cudaErrorInvalidResourceHandle);
    if (const cudaError_t e = use_stream(stream))
        return e;
    if (capturing(stream)) {
        ++s.launches;
        auto n = std::make_unique<CUgraphNode_st>();
        n->node = std::move(owned);
        stream->graph->nodes.push_back(std::move(n));
        return 0;
    }
    const int e = run_node(*owned);
    if (e != 0)
        fail(static_cast<cudaError_t>(e));
    return e;
}

[[maybe_unused]] const bool installed = [] {
    gclip_emu::set_interceptor(&intercept);
    return true;
}();

} // namespace

void reset(int devices)
{
    State &s = st();
    Lock guard(s.lock);
    s.devices = devices;
    s.calls.clear();
    s.faults.clear();
    s.launch_faults.clear();
    s.blocking = 0;
    s.launches = 0;
    s.wrong_device = 0;
    s.first_wrong.clear();
    t_device = 0;
    t_last = cudaSuccess;
}

void fail_call(const char *name, unsigned nth, cudaError_t error)
{
    Lock guard(st().lock);
    st().faults[name].push_back(Fault{nth, static_cast<int>(error)});
}

void fail_launch(unsigned nth, int status)
{
    Lock guard(st().lock);
    st().launch_faults.push_back(Fault{nth, status});
}

unsigned calls(const char *name)
{
    Lock guard(st().lock);
    auto it = st().calls.find(name);
    return it == st().calls.end() ? 0 : it->second;
}

unsigned blocking_calls()
{
    Lock guard(st().lock);
    return st().blocking;
}

unsigned launches()
{
    Lock guard(st().lock);
    return st().launches;
}

std::size_t live_allocations()
{
    Lock guard(st().lock);
    return st().allocations.size();
}

std::size_t live_streams()
{
    Lock guard(st().lock);
    return st().streams.size();
}

std::size_t live_events()
{
    Lock guard(st().lock);
    return st().events;
}

unsigned wrong_device_uses()
{
    Lock guard(st().lock);
    return st().wrong_device;
}

std::string first_wrong_device_use()
{
    Lock guard(st().lock);
    return st().first_wrong;
}

void set_last_error(cudaError_t error) { t_last = error; }

} // namespace cudart_emu

// ---- the runtime API ------------------------------------------------------------------

using cudart_emu::enter;
using cudart_emu::fail;
using cudart_emu::st;
using cudart_emu::t_device;
using cudart_emu::t_last;
using Lock = std::lock_guard<std::recursive_mutex>;

#define ENTER(...)                                        \
    Lock guard_(st().lock);                               \
    do {                                                  \
        const cudaError_t injected_ = enter(__VA_ARGS__); \
        if (injected_ != cudaSuccess)                     \
            return injected_;                             \
    } while (0)

extern "C" {

cudaError_t CUDARTAPI cudaGetDeviceCount(int *count)
{
    ENTER("cudaGetDeviceCount");
    if (!count)
        return fail(cudaErrorInvalidValue);
    *count = st().devices;
    return st().devices > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t CUDARTAPI cudaGetDevice(int *device)
{
    ENTER("cudaGetDevice");
    if (!device)
        return fail(cudaErrorInvalidValue);
    if (st().devices == 0)
        return fail(cudaErrorNoDevice);
    *device = t_device;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaSetDevice(int device)
{
    ENTER("cudaSetDevice");
    if (device < 0 || device >= st().devices)
        return fail(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    ENTER("cudaDeviceGetAttribute");
    if (!value || device < 0 || device >= st().devices)
        return fail(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMultiProcessorCount:
        *value = 8;
        return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
        *value = 9;
        return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
        *value = 0;
        return cudaSuccess;
    default:
        return fail(cudaErrorInvalidValue);
    }
}

cudaError_t CUDARTAPI cudaDeviceSynchronize(void)
{
    ENTER("cudaDeviceSynchronize", true);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaDeviceReset(void)
{
    ENTER("cudaDeviceReset", true);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGetLastError(void)
{
    Lock guard(st().lock);
    const cudaError_t e = t_last;
    t_last = cudaSuccess;
    return e;
}

cudaError_t CUDARTAPI cudaPeekAtLastError(void)
{
    Lock guard(st().lock);
    return t_last;
}

static const char *error_text(cudaError_t e, bool name)
{
    switch (static_cast<int>(e)) {
    case cudaSuccess: return name ? "cudaSuccess" : "no error";
    case cudaErrorInvalidValue: return name ? "cudaErrorInvalidValue" : "invalid argument";
    case cudaErrorMemoryAllocation: return name ? "cudaErrorMemoryAllocation" : "out of memory";
    case cudaErrorNoDevice: return name ? "cudaErrorNoDevice" : "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return name ? "cudaErrorInvalidDevice" : "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
        return name ? "cudaErrorInvalidResourceHandle" : "invalid resource handle";
    case cudaErrorNotSupported: return name ? "cudaErrorNotSupported" : "operation not supported";
    case cudaErrorLaunchFailure: return name ? "cudaErrorLaunchFailure" : "unspecified launch failure";
    case cudaErrorLaunchOutOfResources:
        return name ? "cudaErrorLaunchOutOfResources" : "too many resources requested for launch";
    case cudaErrorNoKernelImageForDevice:
        return name ? "cudaErrorNoKernelImageForDevice"
                    : "no kernel image is available for execution on the device";
    case cudaErrorStreamCaptureUnsupported:
        return name ? "cudaErrorStreamCaptureUnsupported"
                    : "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return name ? "cudaErrorStreamCaptureInvalidated"
                    : "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
        return name ? "cudaErrorStreamCaptureImplicit"
                    : "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorIllegalState: return name ? "cudaErrorIllegalState" : "illegal state";
    default: return "unrecognized error code";
    }
}

const char *CUDARTAPI cudaGetErrorName(cudaError_t error) { return error_text(error, true); }
const char *CUDARTAPI cudaGetErrorString(cudaError_t error) { return error_text(error, false); }

cudaError_t CUDARTAPI cudaMalloc(void **devPtr, size_t size)
{
    ENTER("cudaMalloc", true);
    if (!devPtr)
        return fail(cudaErrorInvalidValue);
    *devPtr = nullptr;
    if (st().devices == 0)
        return fail(cudaErrorNoDevice);
    if (size == 0)
        return cudaSuccess;
    // 256-byte aligned, as cudaMalloc's are; exact size, so ASan sees any
    // access past the end
    void *p = std::aligned_alloc(256, (size + 255) / 256 * 256);
    if (!p)
        return fail(cudaErrorMemoryAllocation);
    st().allocations[reinterpret_cast<std::uintptr_t>(p)] = {size, t_device};
    *devPtr = p;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaFree(void *devPtr)
{
    ENTER("cudaFree", true);
    if (!devPtr)
        return cudaSuccess;
    auto it = st().allocations.find(reinterpret_cast<std::uintptr_t>(devPtr));
    if (it == st().allocations.end())
        return fail(cudaErrorInvalidValue);
    st().allocations.erase(it);
    std::free(devPtr);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
    ENTER("cudaMemGetInfo", true);
    // a small device: the suite's tests of very large tensors skip
    *total = std::size_t(1) << 30;
    std::size_t used = 0;
    for (const auto &a : st().allocations)
        used += a.second.bytes;
    *free_bytes = used < *total ? *total - used : 0;
    return cudaSuccess;
}

static void copy_checked(const char *call, void *dst, const void *src, std::size_t count)
{
    cudart_emu::check_memory(call, dst, count);
    cudart_emu::check_memory(call, src, count);
    if (count)
        std::memmove(dst, src, count);
}

cudaError_t CUDARTAPI cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    ENTER("cudaMemcpy", true);
    (void)kind;
    if (const cudaError_t e = cudart_emu::use_stream(nullptr))
        return e;
    copy_checked("cudaMemcpy", dst, src, count);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemcpyAsync(void *dst, const void *src, size_t count,
                                      enum cudaMemcpyKind kind, cudaStream_t stream)
{
    ENTER("cudaMemcpyAsync");
    (void)kind;
    if (const cudaError_t e = cudart_emu::use_stream(stream))
        return e;
    if (cudart_emu::capturing(stream)) {
        Node &n = cudart_emu::add_node(stream, cudaGraphNodeTypeMemcpy);
        n.dst = dst;
        n.src = src;
        n.bytes = count;
        return cudaSuccess;
    }
    copy_checked("cudaMemcpyAsync", dst, src, count);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemset(void *devPtr, int value, size_t count)
{
    ENTER("cudaMemset", true);
    if (const cudaError_t e = cudart_emu::use_stream(nullptr))
        return e;
    cudart_emu::check_memory("cudaMemset", devPtr, count);
    std::memset(devPtr, value, count);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream)
{
    ENTER("cudaMemsetAsync");
    if (const cudaError_t e = cudart_emu::use_stream(stream))
        return e;
    if (cudart_emu::capturing(stream)) {
        Node &n = cudart_emu::add_node(stream, cudaGraphNodeTypeMemset);
        n.dst = devPtr;
        n.value = value;
        n.bytes = count;
        return cudaSuccess;
    }
    cudart_emu::check_memory("cudaMemsetAsync", devPtr, count);
    std::memset(devPtr, value, count);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, const void *func,
                                                                    int blockSize,
                                                                    size_t dynamicSMemSize)
{
    ENTER("cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    (void)func, (void)blockSize, (void)dynamicSMemSize;
    *numBlocks = 4;
    return cudaSuccess;
}

// ---- streams ----

cudaError_t CUDARTAPI cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    ENTER("cudaStreamCreateWithFlags");
    if (!pStream)
        return fail(cudaErrorInvalidValue);
    if (st().devices == 0)
        return fail(cudaErrorNoDevice);
    auto *s = new CUstream_st;
    s->device = t_device;
    s->flags = flags;
    st().streams.insert(s);
    *pStream = s;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamCreate(cudaStream_t *pStream)
{
    return cudaStreamCreateWithFlags(pStream, cudaStreamDefault);
}

cudaError_t CUDARTAPI cudaStreamDestroy(cudaStream_t stream)
{
    ENTER("cudaStreamDestroy");
    if (!cudart_emu::is_handle(stream) || !st().streams.count(stream))
        return fail(cudaErrorInvalidResourceHandle);
    if (stream->graph) {
        delete stream->graph;
        stream->graph = nullptr;
    }
    st().streams.erase(stream);
    delete stream;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamSynchronize(cudaStream_t stream)
{
    ENTER("cudaStreamSynchronize", true);
    if (cudart_emu::capturing(stream)) {
        stream->invalidated = true;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamGetDevice(cudaStream_t hStream, int *device)
{
    ENTER("cudaStreamGetDevice");
    *device = cudart_emu::stream_device(hStream);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamIsCapturing(cudaStream_t stream,
                                            enum cudaStreamCaptureStatus *pCaptureStatus)
{
    ENTER("cudaStreamIsCapturing");
    *pCaptureStatus = !cudart_emu::capturing(stream) ? cudaStreamCaptureStatusNone
                      : stream->invalidated          ? cudaStreamCaptureStatusInvalidated
                                                     : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    ENTER("cudaStreamBeginCapture");
    (void)mode;
    if (!cudart_emu::is_handle(stream) || stream->capturing)
        return fail(cudaErrorIllegalState);
    stream->capturing = true;
    stream->invalidated = false;
    stream->graph = new CUgraph_st;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph)
{
    ENTER("cudaStreamEndCapture");
    if (!cudart_emu::capturing(stream))
        return fail(cudaErrorIllegalState);
    stream->capturing = false;
    cudaGraph_t g = stream->graph;
    stream->graph = nullptr;
    if (stream->invalidated) {
        delete g;
        *pGraph = nullptr;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    *pGraph = g;
    return cudaSuccess;
}

// ---- events ----

cudaError_t CUDARTAPI cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    ENTER("cudaEventCreateWithFlags");
    if (!event)
        return fail(cudaErrorInvalidValue);
    auto *e = new CUevent_st;
    e->device = t_device;
    e->flags = flags;
    ++st().events;
    *event = e;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaEventDestroy(cudaEvent_t event)
{
    ENTER("cudaEventDestroy");
    if (!event)
        return fail(cudaErrorInvalidResourceHandle);
    delete event;
    --st().events;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream,
                                               unsigned int flags)
{
    ENTER("cudaEventRecordWithFlags");
    if (!event || event->device != cudart_emu::stream_device(stream))
        return fail(cudaErrorInvalidResourceHandle);
    if (const cudaError_t e = cudart_emu::use_stream(stream))
        return e;
    if (cudart_emu::capturing(stream)) {
        if (flags & cudaEventRecordExternal)
            cudart_emu::add_node(stream, cudaGraphNodeTypeEventRecord).event = event;
        return cudaSuccess;
    }
    event->recorded = true;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
    ENTER("cudaStreamWaitEvent");
    if (!event)
        return fail(cudaErrorInvalidResourceHandle);
    if (const cudaError_t e = cudart_emu::use_stream(stream))
        return e;
    if (cudart_emu::capturing(stream) && (flags & cudaEventWaitExternal))
        cudart_emu::add_node(stream, cudaGraphNodeTypeWaitEvent).event = event;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaEventSynchronize(cudaEvent_t event)
{
    ENTER("cudaEventSynchronize", true);
    return event ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}

// ---- graphs ----

cudaError_t CUDARTAPI cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph,
                                           unsigned long long flags)
{
    ENTER("cudaGraphInstantiate");
    (void)flags;
    if (!graph || !pGraphExec)
        return fail(cudaErrorInvalidValue);
    auto *x = new CUgraphExec_st;
    for (const auto &n : graph->nodes)
        x->nodes.push_back(n->node);
    *pGraphExec = x;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream)
{
    ENTER("cudaGraphLaunch");
    if (!graphExec)
        return fail(cudaErrorInvalidValue);
    if (cudart_emu::stream_device(stream) != t_device)
        return fail(cudaErrorInvalidResourceHandle);
    if (const cudaError_t e = cudart_emu::use_stream(stream))
        return e;
    for (const auto &n : graphExec->nodes) {
        const int e = cudart_emu::run_node(*n);
        if (e != 0)
            return fail(static_cast<cudaError_t>(e));
    }
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphExecDestroy(cudaGraphExec_t graphExec)
{
    ENTER("cudaGraphExecDestroy");
    delete graphExec;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphDestroy(cudaGraph_t graph)
{
    ENTER("cudaGraphDestroy");
    delete graph;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *numNodes)
{
    ENTER("cudaGraphGetNodes");
    if (!graph || !numNodes)
        return fail(cudaErrorInvalidValue);
    if (!nodes) {
        *numNodes = graph->nodes.size();
        return cudaSuccess;
    }
    const std::size_t n = std::min(*numNodes, graph->nodes.size());
    for (std::size_t i = 0; i < n; ++i)
        nodes[i] = graph->nodes[i].get();
    *numNodes = n;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphNodeGetType(cudaGraphNode_t node, enum cudaGraphNodeType *pType)
{
    ENTER("cudaGraphNodeGetType");
    if (!node || !pType)
        return fail(cudaErrorInvalidValue);
    *pType = node->node->type;
    return cudaSuccess;
}

} // extern "C"
