// tickets.cpp - the plan's ticket counters, read through the internal headers.
#include "tickets.hpp"

#include "gclip_internal.h"
#include "gclip_kernels.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

namespace gpu {

Tickets read_tickets(gclip_plan *plan)
{
    Tickets t;
    const gclip_device_result *slot = nullptr;
    const gclip_partial *partial = nullptr;
    if (!plan || gclip_plan_device_result(plan, &slot) != GCLIP_STATUS_SUCCESS ||
        gclip_plan_partial(plan, &partial) != GCLIP_STATUS_SUCCESS) {
        t.why = "not a plan whose slot and partial can be queried";
        return t;
    }
    // the CUDA state starts with the device tables the kernels get
    const auto *tables = static_cast<const gclip_device_tables *>(plan->engine);
    if (!tables || static_cast<const void *>(tables->result) != static_cast<const void *>(slot) ||
        tables->partial != partial || !tables->ticket || !tables->apply_ticket || !tables->fold) {
        t.why = "the plan's CUDA state no longer starts with its device tables "
                "(host/cuda_backend.c): update tests/gpu/tickets.cpp";
        return t;
    }
    gclip_result r;
    (void)gclip_get_result(plan, &r); // waits for the last operation, whatever its status
    if (cudaMemcpy(&t.norm, tables->ticket, sizeof t.norm, cudaMemcpyDeviceToHost) != cudaSuccess ||
        cudaMemcpy(&t.apply, tables->apply_ticket, sizeof t.apply, cudaMemcpyDeviceToHost) !=
            cudaSuccess) {
        t.why = std::string("cudaMemcpy of a ticket failed: ") + cudaGetErrorString(cudaGetLastError());
        return t;
    }
    unsigned lanes[GCLIP_FOLD_LANES];
    if (cudaMemcpy(lanes, tables->fold->ticket, sizeof lanes, cudaMemcpyDeviceToHost) != cudaSuccess) {
        t.why = std::string("cudaMemcpy of the lanes' tickets failed: ") +
                cudaGetErrorString(cudaGetLastError());
        return t;
    }
    t.lanes_off = 0;
    for (unsigned v : lanes)
        t.lanes_off += v != 0;
    t.readable = true;
    return t;
}

void expect_tickets_at_zero(gclip_plan *plan, const std::string &when)
{
    const Tickets t = read_tickets(plan);
    ASSERT_TRUE(t.readable) << when << ": " << t.why;
    EXPECT_EQ(t.norm, 0u) << when << ": the norm kernel's ticket is off 0";
    EXPECT_EQ(t.apply, 0u) << when << ": the apply ticket is off 0";
    EXPECT_EQ(t.lanes_off, 0u) << when << ": fold lanes whose ticket is off 0";
}

} // namespace gpu
