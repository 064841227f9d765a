// plan_util.hpp - small conveniences for tests that drive the public API.
//
//   PlanPtr        owns a gclip_plan (destroyed at scope exit, even when an
//                  assertion returns early)
//   make_plan      gclip_plan_create into a PlanPtr, returning the status
//   result_of      gclip_get_result into a fresh gclip_result
//   names_index    whether an error message mentions a tensor index
#ifndef GCLIP_TEST_PLAN_UTIL_HPP
#define GCLIP_TEST_PLAN_UTIL_HPP

#include "gclip.h"

#include <cctype>
#include <memory>
#include <string>
#include <vector>

namespace testutil {

struct PlanDeleter {
    void operator()(gclip_plan *p) const { gclip_plan_destroy(p); }
};
using PlanPtr = std::unique_ptr<gclip_plan, PlanDeleter>;

inline gclip_status make_plan(PlanPtr &out, const std::vector<gclip_tensor> &t,
                              int device = GCLIP_DEVICE_CPU)
{
    gclip_plan *p = nullptr;
    const gclip_status s = gclip_plan_create(&p, t.empty() ? nullptr : t.data(), t.size(), device);
    out.reset(p);
    return s;
}

// Result of the plan's last operation; `status` receives get_result's status.
inline gclip_result result_of(gclip_plan *plan, gclip_status *status = nullptr)
{
    gclip_result r{};
    const gclip_status s = gclip_get_result(plan, &r);
    if (status)
        *status = s;
    return r;
}

inline gclip_norm_options norm_options(float max_norm, float norm_type = 2.0f)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = max_norm;
    o.norm_type = norm_type;
    return o;
}

// True if `index` appears in `msg` as a word of its own (not inside a longer
// number or a hex address), as in "tensors 1 and 5 overlap".
inline bool names_index(const std::string &msg, size_t index)
{
    const std::string n = std::to_string(index);
    for (size_t at = msg.find(n); at != std::string::npos; at = msg.find(n, at + 1)) {
        const size_t end = at + n.size();
        const bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(msg[at - 1]));
        const bool right = end == msg.size() || !std::isalnum(static_cast<unsigned char>(msg[end]));
        if (left && right)
            return true;
    }
    return false;
}

} // namespace testutil

#endif // GCLIP_TEST_PLAN_UTIL_HPP
