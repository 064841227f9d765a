// test_gpu_extreme.cpp - extreme values on a device against the long-double
// oracle (not the CPU path): exponents across each dtype's whole range,
// subnormals only, values near the top of each range, finite data whose norm
// exceeds FLT_MAX, and f64 values beyond float's range. For p = 1, 2, Inf
// and 3: the total and per-tensor norms, global and per-tensor clipping (every
// element the IEEE product of its value and the factor), the non-finite
// policies, and value clipping at bounds from 0 to 1e30.
#include "oracle_set.hpp"

#include <cfloat>
#include <cmath>
#include <functional>

namespace gpu {
namespace {

using GpuExtremeTest = GpuTest;

struct Exponents {
    int lo, hi;
};

// A seeded value 2^e * (1 + u), e uniform in `r`, random sign. The ranges
// below keep every value finite in its dtype (2^15 * (1 + u) would round to
// Inf in f16).
double spread(oracle::Rng &rng, Exponents r)
{
    const double m = std::ldexp(1.0 + rng.uniform(0.0, 1.0), static_cast<int>(rng.range(r.lo, r.hi)));
    return rng.range(0, 1) ? -m : m;
}

struct Scenario {
    const char *name;
    std::vector<Spec> specs;
    std::function<Exponents(gclip_dtype)> exponents;
    float inv_scale;
    // extra values: (tensor, element, value)
    std::vector<std::tuple<std::size_t, int64_t, double>> planted;
};

// Every dtype at sizes from one element to several chunks, odd starts.
std::vector<Spec> every_dtype(std::initializer_list<int64_t> sizes)
{
    std::vector<Spec> v;
    int offset = 0;
    for (gclip_dtype dt : specs::all_dtypes())
        for (int64_t n : sizes)
            v.push_back(Spec{dt, n, offset++ % 8});
    return v;
}

std::vector<Scenario> scenarios()
{
    const int64_t c = specs::kChunkElems;
    const auto big = every_dtype({5, 4097, c + 1, 2 * c + 7});
    const auto small = every_dtype({1, 3, 17, 200});
    // tensor index of the k-th size of dtype `dt` in an every_dtype list of 4 sizes
    auto at = [](gclip_dtype dt, std::size_t k) {
        return (dt == GCLIP_F32 ? 0 : dt == GCLIP_F16 ? 1 : dt == GCLIP_BF16 ? 2 : 3) * 4 + k;
    };
    const auto unit = [](gclip_dtype) { return Exponents{-10, 10}; };
    return {
        {"whole_range", big,
         [](gclip_dtype dt) {
             return dt == GCLIP_F32   ? Exponents{-149, 100}
                    : dt == GCLIP_F16 ? Exponents{-24, 14}
                    : dt == GCLIP_BF16 ? Exponents{-133, 100}
                                       : Exponents{-1074, 100};
         },
         1.0f, {}},
        // f64: in float's subnormal range, where a conversion through float
        // would lose most of the bits
        {"subnormal", big,
         [](gclip_dtype dt) {
             return dt == GCLIP_F32   ? Exponents{-149, -127}
                    : dt == GCLIP_F16 ? Exponents{-24, -15}
                    : dt == GCLIP_BF16 ? Exponents{-133, -127}
                                       : Exponents{-140, -128};
         },
         1.0f, {}},
        // near the top of each range, the norm still finite for p = 2, 3,
        // Inf (p = 1 may exceed FLT_MAX); with an AMP inv_scale
        {"huge", small,
         [](gclip_dtype dt) { return dt == GCLIP_F16 ? Exponents{10, 14} : Exponents{100, 120}; },
         std::ldexp(1.0f, -16), {}},
        // finite values whose norm exceeds FLT_MAX for every finite p; p = Inf is FLT_MAX
        {"beyond_flt_max", big, unit, 1.0f,
         {{at(GCLIP_F32, 1), 7, FLT_MAX}, {at(GCLIP_F32, 3), 2 * c + 1, -FLT_MAX},
          {at(GCLIP_BF16, 2), c, -3.3e38}, {at(GCLIP_F16, 0), 2, 65504.0}}},
        // an f64 value beyond float's range: every norm is Inf once rounded to float
        {"f64_beyond_float", big, unit, 1.0f, {{at(GCLIP_F64, 2), 12, 1e300}}},
    };
}

const float kNormTypes[] = {1.0f, 2.0f, INFINITY, 3.0f};

TEST_F(GpuExtremeTest, NormsAndClippingMatchTheLongDoubleOracle)
{
    uint64_t seed = 5000;
    for (const Scenario &sc : scenarios()) {
        SCOPED_TRACE(sc.name);
        OracleSet set(sc.specs);
        oracle::Rng rng(++seed);
        for (std::size_t k = 0; k < set.count(); ++k)
            for (int64_t i = 0; i < set.specs()[k].numel; ++i)
                set.set(k, i, spread(rng, sc.exponents(set.specs()[k].dtype)));
        for (const auto &[k, i, v] : sc.planted)
            set.set(k, i, v);
        set.upload();
        DeviceBuffer dev_norms(set.count() * sizeof(float));
        for (float p : kNormTypes) {
            SCOPED_TRACE("p " + std::to_string(p));
            const oracle::Norms want = set.norms(p, sc.inv_scale);
            const float reported = oracle::as_reported(want.total);
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = p;
            o.inv_scale = sc.inv_scale;
            o.tensor_norms = dev_norms.as<float>();

            // the norms alone
            gclip_status st;
            GPU_ASSERT_OK(gclip_total_norm(set.plan(), &o, nullptr));
            gclip_result r = testutil::result_of(set.plan(), &st);
            EXPECT_EQ(st, GCLIP_STATUS_SUCCESS);
            const std::vector<float> tn = set.expect_norms(r, want, dev_norms);
            set.expect_unchanged();

            // global clipping: the factor of the reported norm, or nothing
            // written when the norm is not finite (SKIP); PROPAGATE scales
            // by max_norm / Inf = 0, every finite element becoming +-0
            for (gclip_nonfinite_policy pol : {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE}) {
                if (pol == GCLIP_NONFINITE_PROPAGATE && std::isfinite(reported))
                    continue;
                o.nonfinite = pol;
                o.max_norm = std::isfinite(reported) ? 0.5f * reported : 1.0f;
                GPU_ASSERT_OK(gclip_clip_grad_norm(set.plan(), &o, nullptr));
                r = testutil::result_of(set.plan());
                set.expect_norms(r, want, dev_norms);
                if (std::isfinite(reported) || pol == GCLIP_NONFINITE_PROPAGATE) {
                    EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, o.max_norm, o.eps));
                    EXPECT_EQ(r.scale, r.clip_coef * sc.inv_scale);
                    set.expect_scaled(r.scale);
                } else {
                    EXPECT_EQ(r.scale, 1.0f);
                    set.expect_unchanged();
                }
                set.upload();
            }
            o.nonfinite = GCLIP_NONFINITE_SKIP;

            // per-tensor clipping at half the smallest nonzero finite tensor norm
            float smallest = INFINITY;
            bool all_finite = std::isfinite(reported);
            for (float n : tn) {
                all_finite = all_finite && std::isfinite(n);
                if (n > 0.0f && n < smallest)
                    smallest = n;
            }
            o.max_norm = std::isfinite(smallest) ? 0.5f * smallest : 1.0f;
            GPU_ASSERT_OK(gclip_clip_grad_norm_per_tensor(set.plan(), &o, nullptr));
            r = testutil::result_of(set.plan());
            const std::vector<float> tn2 = set.expect_norms(r, want, dev_norms);
            std::vector<float> factor(set.count(), 1.0f);
            for (std::size_t k = 0; all_finite && k < set.count(); ++k)
                factor[k] = oracle::expected_coef(tn2[k], o.max_norm, o.eps) * sc.inv_scale;
            set.expect_scaled(factor);
            set.upload();
            if (HasFailure())
                return;
        }

        // value clipping: bit for bit, every dtype, bounds from 0 to 1e30
        for (float v : {0.0f, 1e-40f, 1.0f, 1e30f}) {
            SCOPED_TRACE("clip_value " + std::to_string(v));
            GPU_ASSERT_OK(gclip_clip_grad_value(set.plan(), v, nullptr));
            set.expect_clamped(v);
            set.upload();
        }
        if (HasFailure())
            return;
    }
}

} // namespace
} // namespace gpu
