// cudart_emu.h - the CUDA runtime calls that gclip's CUDA backend
// (host/cuda_backend.c) and its GPU suite (tests/gpu) make, implemented on
// the host (cudart_emu.cpp), with the kernels' launches run by the SIMT
// emulator. Linked in place of libcudart, it lets the backend's host code and
// the GPU suite run on a machine without a device.
//
// The model:
//   devices   `devices` of them (2 unless reset() says otherwise), compute
//             capability 9.0, 8 SMs each; "device memory" is host memory
//             from cudaMalloc, tagged with the device current at the call
//   streams   every operation runs to completion when it is issued, in the
//             calling thread, so every stream is in order and a
//             synchronization has nothing to wait for; a stream belongs to
//             the device current when it was created (the default stream
//             handles to the current device)
//   launches  a kernel launched into a stream of another device than the
//             current one fails (cudaErrorInvalidResourceHandle), as an
//             event recorded into another device's stream does
//   capture   between cudaStreamBeginCapture and cudaStreamEndCapture a
//             stream records copies, memsets, kernel launches and external
//             event nodes into a graph instead of running them; a replay
//             (cudaGraphLaunch) runs the nodes in order; an event recorded
//             or waited for with default flags adds no node
//   errors    a failing call sets the calling thread's last error, as the
//             runtime does for the calls that report it there
// Every entry point takes one process-wide lock, so host threads may share it.
#ifndef GCLIP_CUDART_EMU_H
#define GCLIP_CUDART_EMU_H

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace cudart_emu {

// Forget injected faults and counters, set the device count (0: no device).
// Live allocations, streams and events are kept.
void reset(int devices = 2);

// The `nth` call (1 = the next) of runtime function `name` (for example
// "cudaMalloc") from now fails with `error` and does nothing else.
void fail_call(const char *name, unsigned nth, cudaError_t error);

// The `nth` kernel launch from now (1 = the next) fails with `status`
// without running; a launch captured into a graph counts when captured.
void fail_launch(unsigned nth, int status);

// Calls of runtime function `name` since the last reset().
unsigned calls(const char *name);
// Calls since the last reset() that allocate or free device memory or wait
// for the device (cudaMalloc, cudaFree, cudaMemcpy, cudaMemset, the
// synchronizations and cudaMemGetInfo): a step call must make none.
unsigned blocking_calls();
// Kernel launches since the last reset() (captured ones included).
unsigned launches();

// Objects alive now (created and not yet destroyed or freed).
std::size_t live_allocations();
std::size_t live_streams();
std::size_t live_events();

// Calls that used device memory or a stream with another device current
// since the last reset(), and the first of them, described.
unsigned wrong_device_uses();
std::string first_wrong_device_use();

// Set the calling thread's last error, as a failed call of the caller's
// would have left it.
void set_last_error(cudaError_t error);

} // namespace cudart_emu

#endif // GCLIP_CUDART_EMU_H
