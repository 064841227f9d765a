// tickets.hpp - the ticket counters of a CUDA plan, which the public API
// does not expose. The norm kernel's last block, the block that folds each
// fold lane and the apply's last block are found by counters that count
// modulo the blocks they wait for (docs/semantics.md, "Streams and
// ordering"; docs/gpu-launch.md), so all must read 0 between operations, whatever
// ran before: a counter left off 0 would make the next launch pick a wrong
// last block.
//
// The counters live in the plan's device workspace; the plan's CUDA state
// (host/cuda_backend.c) starts with its device tables (gclip_kernels.h), so
// the tests read them through the internal headers, as the robustness
// suites reach the allocation hook. Before trusting that route, read_tickets
// checks that the tables' result slot and partial are the ones the public
// API gives: if the state's layout changes, the tests say so instead of
// reading the wrong memory.
#ifndef GCLIP_GPU_TICKETS_HPP
#define GCLIP_GPU_TICKETS_HPP

#include "gclip.h"

#include <string>

namespace gpu {

struct Tickets {
    bool readable = false;
    std::string why;          // when not readable
    unsigned norm = ~0u;      // the norm kernel's counter
    unsigned apply = ~0u;     // the apply (scale kernel under GCLIP_OP_APPLY) counter
    unsigned lanes_off = ~0u; // fold lanes whose counter is not 0
};

// Waits for the plan's last operation (gclip_get_result), then reads both
// counters from device memory.
Tickets read_tickets(gclip_plan *plan);

// Every counter at 0; `when` names the moment in the failure message.
void expect_tickets_at_zero(gclip_plan *plan, const std::string &when);

} // namespace gpu

#endif // GCLIP_GPU_TICKETS_HPP
