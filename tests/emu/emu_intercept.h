// emu_intercept.h - how a CUDA runtime emulated on the host (cudart_emu.cpp)
// takes over the SIMT emulator's kernel launches. Free of the emulator's
// CUDA stand-ins (dim3, __global__, ...), so that a file that includes the
// CUDA Toolkit's headers can include it too.
#ifndef GCLIP_EMU_INTERCEPT_H
#define GCLIP_EMU_INTERCEPT_H

namespace gclip_emu {

// One kernel launch as a launcher made it (simt_emu.h defines it).
struct Intercepted;

// While set (non-null), every launch made through GCLIP_LAUNCH outside
// launch_concurrent goes to `fn` instead of running: `fn` owns `launch` (it
// may run it at once, keep it for later runs, as a graph's kernel node, or
// fail it) and frees it with free_intercepted; `stream` is the launcher's
// stream argument. Its return value is the launch's status.
using Interceptor = int (*)(Intercepted *launch, const void *stream);
void set_interceptor(Interceptor fn);
Interceptor interceptor();

// Runs `launch` (still owned by the caller) as GCLIP_LAUNCH would: its status.
int run_intercepted(const Intercepted *launch);
void free_intercepted(Intercepted *launch);

} // namespace gclip_emu

#endif // GCLIP_EMU_INTERCEPT_H
