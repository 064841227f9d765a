// adaptive_methods.hpp - the adaptive clipping configurations the emulator
// and GPU suites run against the CPU path: every method and mode, with
// short warm-ups and windows so that a few dozen steps leave the warm-up.
#ifndef GCLIP_TEST_ADAPTIVE_METHODS_HPP
#define GCLIP_TEST_ADAPTIVE_METHODS_HPP

#include "gclip_adapt.h"

#include <limits>

namespace adaptive_methods {

// 0 ZClip (mean), 1 ZClip (percentile), 2 AutoClip per tensor, 3 AutoClip
// global, 4 AdaGC, 5 spike skip.
inline gclip_adaptive_options method(int which)
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    switch (which) {
    case 0:
    case 1:
        o.method = GCLIP_ADAPTIVE_ZCLIP;
        o.zclip_warmup_steps = which == 0 ? 6 : 4;
        if (which == 1) {
            o.zclip_mode = GCLIP_ZCLIP_PERCENTILE;
            o.zclip_max_grad_norm = std::numeric_limits<double>::infinity();
        }
        break;
    case 2:
    case 3:
        o.method = GCLIP_ADAPTIVE_AUTOCLIP;
        o.autoclip_history_length = which == 2 ? 9 : 5;
        o.autoclip_global = which == 3;
        o.autoclip_quantile = which == 2 ? 0.7 : 0.3;
        break;
    case 4:
        o.method = GCLIP_ADAPTIVE_ADAGC;
        o.adagc_warmup_steps = 5;
        o.adagc_lambda_abs = 20.0;
        break;
    default:
        o.method = GCLIP_ADAPTIVE_SPIKE_SKIP;
        o.spike_window = 12;
        o.spike_min_values = 5;
        o.spike_sigma = 3.0;
        break;
    }
    return o;
}

constexpr int kMethods = 6;

} // namespace adaptive_methods

#endif // GCLIP_TEST_ADAPTIVE_METHODS_HPP
