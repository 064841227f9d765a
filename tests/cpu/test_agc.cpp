// test_agc.cpp - unit-wise adaptive gradient clipping (gclip_agc_*, the CPU
// path): the conformance vectors of timm's / optax's AGC derived by hand,
// seeded tensors of every dtype and norm type against a long-double oracle
// of timm's formula, NaN/Inf units, validation, thread-count independence,
// no allocation in a step, and the result slot.
#include "gclip_adapt.h"
#include "gclip_internal.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using testutil::make_plan;
using testutil::PlanPtr;

struct AgcDeleter {
    void operator()(gclip_agc *a) const { gclip_agc_destroy(a); }
};
using AgcPtr = std::unique_ptr<gclip_agc, AgcDeleter>;

// One parameter/gradient pair: `rows` units of `cols` elements (rows = 1 for
// a 1-D tensor), stored as bytes of `dtype`.
struct Pair {
    gclip_dtype dtype;
    int64_t rows, cols;
    std::vector<unsigned char> w, g;
    Pair(gclip_dtype d, int64_t r, int64_t c)
        : dtype(d), rows(r), cols(c),
          w(static_cast<size_t>(r * c) * gclip_dtype_size(d) + 8),
          g(static_cast<size_t>(r * c) * gclip_dtype_size(d) + 8)
    {
    }
    int64_t numel() const { return rows * cols; }
    double get(const std::vector<unsigned char> &b, int64_t i) const
    {
        if (dtype == GCLIP_F64) {
            double x;
            std::memcpy(&x, b.data() + 8 * i, 8);
            return x;
        }
        return oracle::load(b.data(), dtype, i); // the test's own decoder
    }
    void set(std::vector<unsigned char> &b, int64_t i, double x)
    {
        if (dtype == GCLIP_F64)
            std::memcpy(b.data() + 8 * i, &x, 8);
        else
            oracle::store(b.data(), dtype, i, static_cast<float>(x)); // and encoder
    }
};

struct AgcRun {
    PlanPtr plan;
    AgcPtr agc;
    gclip_status create(std::vector<Pair> &pairs, const gclip_agc_options &o)
    {
        std::vector<gclip_tensor> g, w;
        std::vector<int64_t> units;
        for (Pair &p : pairs) {
            g.push_back({p.g.data(), p.numel(), p.dtype});
            w.push_back({p.w.data(), p.numel(), p.dtype});
            units.push_back(p.rows);
        }
        EXPECT_EQ(make_plan(plan, g), GCLIP_STATUS_SUCCESS);
        gclip_agc *a = nullptr;
        const gclip_status s = gclip_agc_create(&a, plan.get(), w.data(), units.data(), &o);
        agc.reset(a);
        return s;
    }
};

gclip_agc_options options(double clip_factor, double eps = 1e-3, float p = 2.0f)
{
    gclip_agc_options o = GCLIP_AGC_OPTIONS_INIT;
    o.clip_factor = clip_factor;
    o.eps = eps;
    o.norm_type = p;
    return o;
}

// An AGC vector derived by hand, in timm's row layout: W = [[3,4],[0,0]],
// G = [[3,4],[0,0.001]], clip_factor 0.1: unit norms of W 5 and 0 (-> eps
// 1e-3), max_norm 0.5 and 1e-4, both units clipped by 0.1. The bias:
// W = [0,0], G = [3e-5,4e-5], clip_factor 0.01: max_norm 1e-5, ||g|| 5e-5,
// factor 0.2.
TEST(Agc, ConformanceVectorsByHand)
{
    std::vector<Pair> pairs;
    pairs.emplace_back(GCLIP_F32, 2, 2);
    const double w0[] = {3, 4, 0, 0}, g0[] = {3, 4, 0, 0.001};
    for (int i = 0; i < 4; ++i) {
        pairs[0].set(pairs[0].w, i, w0[i]);
        pairs[0].set(pairs[0].g, i, g0[i]);
    }
    AgcRun r;
    ASSERT_EQ(r.create(pairs, options(0.1)), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    ASSERT_EQ(gclip_agc_step(r.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
    const double want[] = {0.3, 0.4, 0.0, 1e-4};
    for (int i = 0; i < 4; ++i)
        EXPECT_NEAR(pairs[0].get(pairs[0].g, i), want[i], 2e-7 * std::fabs(want[i])) << i;
    // a step that scaled units reports that it changed the gradients
    gclip_result res{};
    ASSERT_EQ(gclip_get_result(r.plan.get(), &res), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(res.op, GCLIP_OP_AGC);
    EXPECT_EQ(res.applied, 1);

    std::vector<Pair> bias;
    bias.emplace_back(GCLIP_F32, 1, 2);
    bias[0].set(bias[0].w, 0, 0.0);
    bias[0].set(bias[0].w, 1, 0.0);
    bias[0].set(bias[0].g, 0, 3e-5);
    bias[0].set(bias[0].g, 1, 4e-5);
    AgcRun b;
    ASSERT_EQ(b.create(bias, options(0.01)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_agc_step(b.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_NEAR(bias[0].get(bias[0].g, 0), 6e-6, 6e-6 * 3e-7);
    EXPECT_NEAR(bias[0].get(bias[0].g, 1), 8e-6, 8e-6 * 3e-7);
}

// ||g|| < max_norm keeps the unit bit for bit; the trigger is strict, and a
// unit exactly at max_norm is "clipped" by a factor of exactly 1.
TEST(Agc, UnitsBelowTheThresholdAreKeptBitForBit)
{
    std::vector<Pair> pairs;
    pairs.emplace_back(GCLIP_F32, 3, 2);
    const double w[] = {3, 4, 6, 8, 1, 0}, g[] = {0.03, 0.04, 0.6, 0.8, 0.125, 0.0};
    for (int i = 0; i < 6; ++i) {
        pairs[0].set(pairs[0].w, i, w[i]);
        pairs[0].set(pairs[0].g, i, g[i]);
    }
    const std::vector<unsigned char> before = pairs[0].g;
    AgcRun r;
    // unit 0: 0.05 < 0.5 kept; unit 1: ||g|| = 1 = 0.1 * 10 clipped by 1;
    // unit 2: max_norm 0.1 < 0.125: factor 0.8
    ASSERT_EQ(r.create(pairs, options(0.1)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_agc_step(r.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(std::memcmp(pairs[0].g.data(), before.data(), 16), 0);
    EXPECT_FLOAT_EQ(static_cast<float>(pairs[0].get(pairs[0].g, 4)), 0.1f);
    EXPECT_EQ(pairs[0].get(pairs[0].g, 5), 0.0);
}

// The long-double oracle of timm's formula for one unit.
struct OracleUnit {
    long double wn, gn, max_norm, factor;
    bool keep;
};

long double unit_norm(const Pair &p, const std::vector<unsigned char> &b, int64_t row, float np)
{
    long double acc = 0;
    for (int64_t j = 0; j < p.cols; ++j) {
        const long double a = std::fabs(static_cast<long double>(p.get(b, row * p.cols + j)));
        if (std::isinf(np))
            acc = a > acc ? a : acc;
        else
            acc += std::pow(a, static_cast<long double>(np));
    }
    return std::isinf(np) ? acc : std::pow(acc, 1.0L / np);
}

OracleUnit oracle(const Pair &p, int64_t row, double clip_factor, double eps, float np)
{
    OracleUnit u;
    u.wn = unit_norm(p, p.w, row, np);
    u.gn = unit_norm(p, p.g, row, np);
    u.max_norm = (u.wn < eps ? eps : u.wn) * clip_factor;
    u.keep = u.gn < u.max_norm;
    u.factor = u.max_norm / (u.gn < 1e-6L ? 1e-6L : u.gn);
    return u;
}

// Seeded tensors of every dtype, 1-D, many short rows, and rows longer than
// a piece, under p = 2, 1, inf and 3: every element within the dtype's
// rounding of the oracle's, kept units bit for bit.
TEST(Agc, SeededTensorsMatchTheLongDoubleOracle)
{
    const float norm_types[] = {2.0f, 1.0f, std::numeric_limits<float>::infinity(), 3.0f};
    for (float np : norm_types) {
        SCOPED_TRACE(np);
        // p = inf seeds 99 (converting inf to an integer is undefined)
        std::mt19937_64 rng(std::isinf(np) ? 99 : static_cast<uint64_t>(np * 10 + 1));
        std::vector<Pair> pairs;
        pairs.emplace_back(GCLIP_F32, 37, 129);
        pairs.emplace_back(GCLIP_F16, 5, 300);
        pairs.emplace_back(GCLIP_BF16, 9, 64);
        pairs.emplace_back(GCLIP_F64, 4, 33);
        pairs.emplace_back(GCLIP_F32, 1, 1000);        // a 1-D tensor: one unit
        pairs.emplace_back(GCLIP_F32, 2, 40000);       // rows of three pieces
        pairs.emplace_back(GCLIP_F32, 3, 0);           // empty units
        std::normal_distribution<double> nd(0.0, 1.0);
        std::uniform_real_distribution<double> scale(0.001, 0.1);
        for (Pair &p : pairs)
            for (int64_t r = 0; r < p.rows; ++r) {
                // gradient rows of either side of the threshold
                const double s = r % 3 == 0 ? 1e-4 : scale(rng);
                for (int64_t j = 0; j < p.cols; ++j) {
                    p.set(p.w, r * p.cols + j, nd(rng));
                    p.set(p.g, r * p.cols + j, nd(rng) * s);
                }
            }
        const std::vector<Pair> before = pairs;
        const double cf = 0.02;
        AgcRun run;
        ASSERT_EQ(run.create(pairs, options(cf, 1e-3, np)), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        ASSERT_EQ(gclip_agc_step(run.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
        int clipped = 0, kept = 0;
        for (size_t t = 0; t < pairs.size(); ++t) {
            const Pair &p = pairs[t], &b = before[t];
            const double tol = p.dtype == GCLIP_F64 ? 1e-13
                               : p.dtype == GCLIP_F32 ? 4e-7
                               : p.dtype == GCLIP_F16 ? 1.5e-3 : 8e-3;
            // f16's subnormals are 2^-24 apart
            const double abs_tol = p.dtype == GCLIP_F16 ? 6e-8 : 1e-30;
            for (int64_t r = 0; r < p.rows && p.cols > 0; ++r) {
                const OracleUnit u = oracle(b, r, cf, 1e-3, np);
                if (std::fabs(u.gn - u.max_norm) < 1e-5L * u.max_norm)
                    continue; // within the float rounding of the threshold
                (u.keep ? kept : clipped)++;
                for (int64_t j = 0; j < p.cols; ++j) {
                    const int64_t i = r * p.cols + j;
                    const double x = b.get(b.g, i), got = p.get(p.g, i);
                    if (u.keep) {
                        ASSERT_EQ(got, x) << "tensor " << t << " row " << r;
                    } else {
                        const double want = static_cast<double>(x * u.factor);
                        ASSERT_NEAR(got, want, tol * std::fabs(want) + abs_tol)
                            << "tensor " << t << " row " << r << " col " << j;
                    }
                }
            }
        }
        EXPECT_GT(clipped, 10);
        EXPECT_GT(kept, 10);
        // the parameters are read, never written
        for (size_t t = 0; t < pairs.size(); ++t)
            EXPECT_EQ(pairs[t].w, before[t].w);
    }
}

// timm's NaN/Inf arithmetic: a NaN in a unit of g or W makes the unit NaN,
// an Inf gradient norm zeroes the finite elements (Inf * 0 = NaN), an Inf
// parameter norm keeps the unit; other units are untouched. Every NaN the
// step writes is the canonical NaN, the bits FP arithmetic on the GPU gives
// (x86 would keep the input NaN's sign and payload, and make 0xffc00000 of
// Inf * 0), so the CPU path and the kernel write the same bytes.
TEST(Agc, NonFiniteUnitsFollowTimm)
{
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F64}) {
        SCOPED_TRACE(dt == GCLIP_F32 ? "f32" : "f64");
        std::vector<Pair> pairs;
        pairs.emplace_back(dt, 5, 4);
        for (int64_t i = 0; i < 20; ++i) {
            pairs[0].set(pairs[0].w, i, 1.0 + 0.1 * static_cast<double>(i));
            pairs[0].set(pairs[0].g, i, 0.5 - 0.05 * static_cast<double>(i));
        }
        // NaNs of a negative sign and a payload, as the input brings them
        const double nan = -std::nan("0x5a5");
        const double inf = std::numeric_limits<double>::infinity();
        pairs[0].set(pairs[0].g, 1, nan);  // row 0: NaN gradient
        pairs[0].set(pairs[0].g, 6, inf);  // row 1: Inf gradient
        pairs[0].set(pairs[0].w, 9, nan);  // row 2: NaN parameter
        pairs[0].set(pairs[0].w, 13, inf); // row 3: Inf parameter
        const Pair before = pairs[0];
        AgcRun r;
        ASSERT_EQ(r.create(pairs, options(0.01)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_agc_step(r.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
        const Pair &p = pairs[0];
        const auto canonical_nan = [&](int64_t i) {
            if (dt == GCLIP_F64) {
                uint64_t u;
                std::memcpy(&u, p.g.data() + 8 * i, 8);
                return u == 0x7fffffffffffffffull;
            }
            uint32_t u;
            std::memcpy(&u, p.g.data() + 4 * i, 4);
            return u == 0x7fffffffu;
        };
        for (int j = 0; j < 4; ++j) {
            EXPECT_TRUE(canonical_nan(j)) << j;
            EXPECT_TRUE(j == 2 ? canonical_nan(4 + j) : p.get(p.g, 4 + j) == 0.0) << j;
            EXPECT_TRUE(canonical_nan(8 + j)) << j;
            EXPECT_EQ(p.get(p.g, 12 + j), before.get(before.g, 12 + j)) << j;
        }
        // row 4 is finite and clipped as the oracle says
        const OracleUnit u = oracle(before, 4, 0.01, 1e-3, 2.0f);
        ASSERT_FALSE(u.keep);
        const double rel = dt == GCLIP_F64 ? 1e-13 : 4e-7;
        for (int j = 0; j < 4; ++j) {
            const double want = before.get(before.g, 16 + j) * static_cast<double>(u.factor);
            EXPECT_NEAR(p.get(p.g, 16 + j), want, rel * std::fabs(want)) << j;
        }
    }
}

TEST(Agc, InvalidArgumentsAreRejectedAtCreation)
{
    std::vector<Pair> pairs;
    pairs.emplace_back(GCLIP_F32, 4, 3);
    const auto expect_bad = [&](const gclip_agc_options &o, gclip_status want, const char *word) {
        AgcRun r;
        EXPECT_EQ(r.create(pairs, o), want) << word;
        EXPECT_EQ(r.agc, nullptr);
        EXPECT_NE(std::string(gclip_last_error()).find(word), std::string::npos)
            << gclip_last_error();
    };
    const double nan = std::nan("");
    const double inf = std::numeric_limits<double>::infinity();
    for (double cf : {0.0, -0.01, nan, inf})
        expect_bad(options(cf), GCLIP_STATUS_INVALID_ARGUMENT, "clip_factor");
    for (double eps : {-1e-3, nan, inf})
        expect_bad(options(0.01, eps), GCLIP_STATUS_INVALID_ARGUMENT, "eps");
    for (float np : {0.0f, -2.0f, std::nanf(""), -std::numeric_limits<float>::infinity()})
        expect_bad(options(0.01, 1e-3, np), GCLIP_STATUS_INVALID_ARGUMENT, "norm_type");
    gclip_agc_options o = options(0.01);
    o.version = 0;
    expect_bad(o, GCLIP_STATUS_VERSION_MISMATCH, "GCLIP_AGC_OPTIONS_INIT");
    o = options(0.01);
    o.size = sizeof o + 8;
    expect_bad(o, GCLIP_STATUS_VERSION_MISMATCH, "version");
    o = options(0.01);
    o.version = GCLIP_AGC_OPTIONS_VERSION + 1;
    expect_bad(o, GCLIP_STATUS_VERSION_MISMATCH, "version");

    // the pairing: units, numel, dtype, NULL tables
    PlanPtr plan;
    gclip_tensor g{pairs[0].g.data(), 12, GCLIP_F32};
    ASSERT_EQ(make_plan(plan, {g}), GCLIP_STATUS_SUCCESS);
    gclip_tensor w{pairs[0].w.data(), 12, GCLIP_F32};
    gclip_agc *a = nullptr;
    const gclip_agc_options ok = options(0.01);
    for (int64_t units : {int64_t{0}, int64_t{5}, int64_t{-1}}) {
        EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w, &units, &ok),
                  GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(a, nullptr);
        EXPECT_NE(std::string(gclip_last_error()).find("units"), std::string::npos);
    }
    const int64_t four = 4;
    gclip_tensor w_short{pairs[0].w.data(), 11, GCLIP_F32};
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w_short, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    gclip_tensor w_f16{pairs[0].w.data(), 12, GCLIP_F16};
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w_f16, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    gclip_tensor w_null{nullptr, 12, GCLIP_F32};
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w_null, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    // the message names the parameter, not "tensor 0" (the plan's gradient)
    EXPECT_NE(std::string(gclip_last_error()).find("params[0]"), std::string::npos)
        << gclip_last_error();
    gclip_tensor w_odd{pairs[0].w.data() + 1, 12, GCLIP_F32};
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w_odd, &four, &ok), GCLIP_STATUS_MISALIGNED);
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), nullptr, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_agc_create(&a, plan.get(), &w, nullptr, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_agc_create(&a, nullptr, &w, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_agc_create(nullptr, plan.get(), &w, &four, &ok), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_agc_step(nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_agc_destroy(nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(a, nullptr);

    // eps = 0 is taken (a unit of zero weights then clips its gradient to 0)
    {
        AgcRun r;
        EXPECT_EQ(r.create(pairs, options(0.01, 0.0)), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    }
    // 2^31 pieces: two tensors of 2^30 elements, one unit per element. The
    // addresses are never read: the count is refused before any table is made.
    const int64_t big = int64_t(1) << 30;
    const uintptr_t at = uintptr_t(1) << 44;
    PlanPtr huge;
    ASSERT_EQ(make_plan(huge, {gclip_tensor{reinterpret_cast<void *>(at), big, GCLIP_F32},
                               gclip_tensor{reinterpret_cast<void *>(at + 4 * big), big, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    const gclip_tensor huge_w[2] = {{reinterpret_cast<void *>(at + 8 * big), big, GCLIP_F32},
                                    {reinterpret_cast<void *>(at + 12 * big), big, GCLIP_F32}};
    const int64_t per_element[2] = {big, big};
    EXPECT_EQ(gclip_agc_create(&a, huge.get(), huge_w, per_element, &ok),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_last_error()).find("2^31 - 1 pieces"), std::string::npos)
        << gclip_last_error();
    EXPECT_EQ(a, nullptr);
}

// A parameter that shares bytes with a gradient is refused at creation
// (OVERLAP): the step scales some units while others read their parameters,
// so the result would depend on the order the pieces run in. Parameters
// that share bytes with each other are only read, and are taken.
TEST(Agc, ParametersInsideGradientsAreRefused)
{
    oracle::Rng rng(77);
    const int64_t n = 3 * 16384;
    std::vector<float> g0(n), g1(n), w(n);
    for (auto *v : {&g0, &g1, &w})
        for (float &x : *v)
            x = static_cast<float>(rng.normal(1.0));
    PlanPtr plan;
    ASSERT_EQ(make_plan(plan, {gclip_tensor{g0.data(), n, GCLIP_F32},
                               gclip_tensor{g1.data(), n, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS);
    const std::vector<float> p0 = g0, p1 = g1;
    const int64_t units[2] = {3, 1};
    const gclip_agc_options o = options(0.01);
    struct Case {
        const float *w0, *w1;
        const char *what;
    };
    const Case bad[] = {
        {g1.data(), g0.data(), "the parameters are the other pair's gradients"},
        {g0.data(), w.data(), "a parameter is its own gradient"},
        {w.data(), g1.data() + 5000, "a parameter starts inside a gradient"},
    };
    for (const Case &c : bad) {
        const gclip_tensor params[2] = {{const_cast<float *>(c.w0), n, GCLIP_F32},
                                        {const_cast<float *>(c.w1), n, GCLIP_F32}};
        gclip_agc *a = reinterpret_cast<gclip_agc *>(&a);
        EXPECT_EQ(gclip_agc_create(&a, plan.get(), params, units, &o), GCLIP_STATUS_OVERLAP)
            << c.what;
        EXPECT_EQ(a, nullptr) << c.what;
        EXPECT_NE(std::string(gclip_last_error()).find("params["), std::string::npos)
            << gclip_last_error();
    }
    // within one buffer: a parameter whose last elements are a gradient's
    // first ones, and one that ends where the gradient starts
    std::vector<float> arena(3 * n);
    PlanPtr inner;
    ASSERT_EQ(make_plan(inner, {gclip_tensor{arena.data() + n, n, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS);
    const gclip_tensor tail{arena.data() + 7, n, GCLIP_F32};
    gclip_agc *a = nullptr;
    EXPECT_EQ(gclip_agc_create(&a, inner.get(), &tail, units, &o), GCLIP_STATUS_OVERLAP);
    const gclip_tensor before_it{arena.data(), n, GCLIP_F32}; // ends where it starts
    ASSERT_EQ(gclip_agc_create(&a, inner.get(), &before_it, units, &o), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    gclip_agc_destroy(a);

    // both pairs read the same parameter: taken, and each gradient is
    // clipped against it as if the two were separate copies
    const gclip_tensor shared[2] = {{w.data(), n, GCLIP_F32}, {w.data(), n, GCLIP_F32}};
    a = nullptr;
    ASSERT_EQ(gclip_agc_create(&a, plan.get(), shared, units, &o), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    AgcPtr agc(a);
    std::vector<float> w2 = w;
    std::vector<float> h0 = p0, h1 = p1;
    PlanPtr twin;
    ASSERT_EQ(make_plan(twin, {gclip_tensor{h0.data(), n, GCLIP_F32},
                               gclip_tensor{h1.data(), n, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS);
    const gclip_tensor copies[2] = {{w.data(), n, GCLIP_F32}, {w2.data(), n, GCLIP_F32}};
    gclip_agc *b = nullptr;
    ASSERT_EQ(gclip_agc_create(&b, twin.get(), copies, units, &o), GCLIP_STATUS_SUCCESS);
    AgcPtr agc_b(b);
    ASSERT_EQ(gclip_agc_step(agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_agc_step(agc_b.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(g0, h0);
    EXPECT_EQ(g1, h1);
    EXPECT_NE(g0, p0) << "clip_factor 0.01 of unit-scale data clips";
}

size_t g_allocations = 0;
int count_allocations(size_t, size_t)
{
    ++g_allocations;
    return 0;
}

// The same data under 1 and 4 threads gives the same bits (the order of
// every sum is the unit's), a step allocates nothing, and the slot says AGC.
TEST(Agc, ThreadCountDoesNotChangeTheBitsAndStepsAllocateNothing)
{
    std::vector<std::vector<unsigned char>> results;
    for (int threads : {1, 4}) {
        std::vector<Pair> pairs;
        pairs.emplace_back(GCLIP_F32, 300, 96);
        pairs.emplace_back(GCLIP_BF16, 3, 20000);
        std::mt19937_64 rng(5);
        std::normal_distribution<double> nd(0.0, 1.0);
        for (Pair &p : pairs)
            for (int64_t i = 0; i < p.numel(); ++i) {
                p.set(p.w, i, nd(rng));
                p.set(p.g, i, nd(rng) * 0.05);
            }
        AgcRun r;
        ASSERT_EQ(r.create(pairs, options(0.01)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_plan_set_num_threads(r.plan.get(), threads), GCLIP_STATUS_SUCCESS);
        g_allocations = 0;
        gclip_set_alloc_hook(count_allocations);
        const gclip_status s = gclip_agc_step(r.agc.get(), nullptr);
        gclip_set_alloc_hook(nullptr);
        ASSERT_EQ(s, GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(g_allocations, 0u);
        gclip_result res{};
        ASSERT_EQ(gclip_get_result(r.plan.get(), &res), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(res.op, GCLIP_OP_AGC);
        EXPECT_TRUE(std::isnan(res.total_norm));
        EXPECT_EQ(res.clip_coef, 1.0f);
        std::vector<unsigned char> all = pairs[0].g;
        all.insert(all.end(), pairs[1].g.begin(), pairs[1].g.end());
        results.push_back(all);
    }
    EXPECT_EQ(results[0], results[1]);
}

} // namespace
