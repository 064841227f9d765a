// adapt_emu_util.hpp - shared by the emulated adaptive and AGC tests: the
// device tables of a CPU plan (its host memory is what the kernels see as
// device memory) and the thread/block orders the tests cycle through.
#ifndef GCLIP_EMU_ADAPT_EMU_UTIL_HPP
#define GCLIP_EMU_ADAPT_EMU_UTIL_HPP

#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "simt_emu.h"

// `tickets` (two counters, zero) stands in for the device's tickets.
inline gclip_device_tables cpu_plan_tables(gclip_plan *p, unsigned *tickets,
                                           gclip_fold_workspace *fold)
{
    gclip_cpu_state *st = static_cast<gclip_cpu_state *>(p->engine);
    gclip_device_tables t{};
    t.tensors = p->tensors;
    t.chunks = p->chunks;
    t.num_tensors = static_cast<uint32_t>(p->count);
    t.num_chunks = p->num_chunks;
    t.partials = st->partials;
    t.tensor_factor = st->tensor_factor;
    t.ticket = &tickets[0];
    t.apply_ticket = &tickets[1];
    t.fold = fold;
    t.partial = &st->partial;
    t.result = &st->result;
    return t;
}

// Schedule i of a cycle of thread orders (forward, reverse, shuffled) and
// block orders, seeded from `seed`.
inline gclip_emu::Schedule varied_schedule(int i, uint64_t seed)
{
    gclip_emu::Schedule s;
    s.threads = i % 3 == 0 ? gclip_emu::Order::forward
                           : (i % 3 == 1 ? gclip_emu::Order::reverse : gclip_emu::Order::shuffled);
    s.blocks = i % 2 ? gclip_emu::Order::reverse : gclip_emu::Order::shuffled;
    s.seed = seed + static_cast<uint64_t>(i);
    s.yield_at_atomics = i % 2 == 0;
    return s;
}

#endif // GCLIP_EMU_ADAPT_EMU_UTIL_HPP
