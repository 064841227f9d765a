// The per-thread core (kernels/gclip_dtype.h, gclip_tables.h,
// gclip_norm_math.h), which both the CUDA kernels and the CPU path run,
// checked against the oracle's independently written conversions and
// arithmetic.
#include "gclip_norm_math.h"
#include "gclip_tables.h"
#include "fold_reference.hpp"
#include "oracle.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <limits>
#include <cstring>
#include <vector>

namespace {

bool same_float(float a, float b)
{
    if (std::isnan(a) || std::isnan(b))
        return std::isnan(a) && std::isnan(b);
    return oracle::float_to_bits(a) == oracle::float_to_bits(b);
}

TEST(CoreConversions, EveryHalfAndBfloatPatternDecodesLikeTheOracle)
{
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t b = static_cast<uint16_t>(h);
        ASSERT_TRUE(same_float(gclip_f16_to_f32(b), oracle::f16_to_float(b))) << std::hex << h;
        ASSERT_TRUE(same_float(gclip_bf16_to_f32(b), oracle::bf16_to_float(b))) << std::hex << h;
    }
}

// Floats just around every rounding boundary of the 16-bit formats: each
// representable value and each midpoint between neighbours (the ties), with
// the floats one ulp either side.
// `inf_bits` is the format's +Inf pattern, the end of the finite values.
std::vector<float> boundary_floats(float (*decode)(uint16_t), uint32_t inf_bits)
{
    std::vector<float> out;
    for (uint32_t h = 0; h < inf_bits; ++h) {
        const float a = decode(static_cast<uint16_t>(h));
        const float b = decode(static_cast<uint16_t>(h + 1));
        const float mids[] = {a, static_cast<float>((static_cast<long double>(a) + b) / 2)};
        for (float m : mids) {
            if (!std::isfinite(m))
                continue;
            for (float v : {m, std::nextafter(m, 0.0f), std::nextafter(m, INFINITY)}) {
                out.push_back(v);
                out.push_back(-v);
            }
        }
    }
    return out;
}

TEST(CoreConversions, HalfEncodingRoundsToNearestEvenAtEveryBoundary)
{
    for (float f : boundary_floats(oracle::f16_to_float, 0x7c00))
        ASSERT_EQ(gclip_f32_to_f16(f), oracle::float_to_f16(f)) << f;
    for (float f : {65504.0f, 65519.99f, 65520.0f, 1e30f, FLT_MAX, INFINITY, -INFINITY,
                    FLT_MIN, FLT_TRUE_MIN, 2.9802322e-8f, 2.9802326e-8f, -0.0f})
        EXPECT_EQ(gclip_f32_to_f16(f), oracle::float_to_f16(f)) << f;
}

TEST(CoreConversions, BfloatEncodingRoundsToNearestEvenAtEveryBoundary)
{
    for (float f : boundary_floats(oracle::bf16_to_float, 0x7f80))
        ASSERT_EQ(gclip_f32_to_bf16(f), oracle::float_to_bf16(f)) << f;
    for (float f : {FLT_MAX, INFINITY, -INFINITY, FLT_MIN, FLT_TRUE_MIN, -0.0f})
        EXPECT_EQ(gclip_f32_to_bf16(f), oracle::float_to_bf16(f)) << f;
}

TEST(CoreConversions, SampledFloatsEncodeLikeTheOracle)
{
    // a prime stride through all 2^32 patterns reaches every exponent
    for (uint64_t u = 0; u < (1ull << 32); u += 3989) {
        const float f = oracle::bits_to_float(static_cast<uint32_t>(u));
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(gclip_f16_to_f32(gclip_f32_to_f16(f))));
            EXPECT_TRUE(std::isnan(gclip_bf16_to_f32(gclip_f32_to_bf16(f))));
            continue;
        }
        ASSERT_EQ(gclip_f32_to_f16(f), oracle::float_to_f16(f)) << std::hex << u;
        ASSERT_EQ(gclip_f32_to_bf16(f), oracle::float_to_bf16(f)) << std::hex << u;
    }
}

// Every NaN becomes the canonical NaN of the target format, sign and payload
// dropped, as the GPU's conversion instructions do (docs/gpu-arithmetic.md).
TEST(CoreConversions, NanBecomesTheCanonicalNan)
{
    const float nans[] = {oracle::bits_to_float(0x7fc00000u), oracle::bits_to_float(0xffc00001u),
                          oracle::bits_to_float(0x7f800001u), oracle::bits_to_float(0xff812345u)};
    for (float n : nans) {
        const float h = gclip_f16_to_f32(gclip_f32_to_f16(n));
        const float b = gclip_bf16_to_f32(gclip_f32_to_bf16(n));
        EXPECT_TRUE(std::isnan(h));
        EXPECT_TRUE(std::isnan(b));
        EXPECT_EQ(gclip_f32_to_f16(n), 0x7fff);
        EXPECT_EQ(gclip_f32_to_bf16(n), 0x7fff);
        EXPECT_EQ(oracle::float_to_bits(h), 0x7fffffffu);
        EXPECT_EQ(oracle::float_to_bits(b), 0x7fff0000u);
    }
}

TEST(CoreLoadStore, RoundTripsEveryDtypeAtTheRightElement)
{
    oracle::Rng rng(11);
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16}) {
        oracle::TestBuffer buf(dt, 37, 3);
        buf.fill(rng, 3.0);
        for (int64_t i = 0; i < buf.numel(); ++i)
            ASSERT_TRUE(same_float(gclip_load(buf.data(), dt, i), buf.get(i))) << i;
        oracle::TestBuffer out(dt, 37, 1);
        for (int64_t i = 0; i < buf.numel(); ++i) {
            const float v = static_cast<float>(rng.normal(100.0));
            gclip_store(out.data(), dt, i, v);
            ASSERT_TRUE(same_float(out.get(i), oracle::quantize(v, dt))) << i;
        }
    }
}

TEST(CoreChunks, ChunkRangesTileEveryTensorExactly)
{
    for (int64_t numel : {int64_t{1}, int64_t{2}, int64_t{65535}, int64_t{65536}, int64_t{65537},
                          int64_t{3} * 65536 + 5, (int64_t{1} << 33) + 7}) {
        const uint32_t n = gclip_chunks_for(numel);
        EXPECT_EQ(static_cast<int64_t>(n), (numel + 65535) / 65536);
        int64_t next = 0;
        for (uint32_t c = 0; c < n; ++c) {
            int64_t begin = -1, count = -1;
            gclip_chunk_range(numel, c, &begin, &count);
            EXPECT_EQ(begin, next);
            EXPECT_GT(count, 0);
            EXPECT_LE(count, GCLIP_CHUNK_ELEMS);
            next = begin + count;
        }
        EXPECT_EQ(next, numel);
    }
    EXPECT_EQ(gclip_chunks_for(0), 0u);
}

// The split must cover [addr, addr + count*size) exactly, with every vector
// 16-byte aligned, the head shorter than one vector and as long as the
// elements before the first 16-byte boundary, and the tail shorter than one
// vector; for every dtype size, and counts past 32 bits.
TEST(CoreSplit, HeadVectorsTailCoverTheRangeWithAlignedVectors)
{
    const int64_t big = (int64_t(1) << 33) + 5;
    for (int size : {2, 4, 8}) {
        for (uintptr_t addr = 4096; addr < 4096 + 32; addr += size) {
            const int64_t to_boundary = (int64_t)((16 - addr % 16) % 16) / size;
            for (int64_t count : {int64_t(0), int64_t(1), int64_t(2), int64_t(3), int64_t(5),
                                  int64_t(7), int64_t(8), int64_t(9), int64_t(15), int64_t(16),
                                  int64_t(17), int64_t(31), int64_t(39), int64_t(1000),
                                  int64_t(65536), big, big + 1, big + 7}) {
                const gclip_split s = gclip_split_vectors(addr, count, size);
                ASSERT_GE(s.head, 0);
                ASSERT_GE(s.vectors, 0);
                ASSERT_GE(s.tail, 0);
                ASSERT_EQ(s.head + s.vectors * (16 / size) + s.tail, count);
                ASSERT_LT(s.tail, 16 / size);
                ASSERT_EQ(s.head, count < to_boundary ? count : to_boundary) << addr << " " << count;
                if (s.vectors > 0) {
                    ASSERT_EQ((addr + s.head * size) % 16, 0u) << addr << " " << count;
                    ASSERT_LT(s.head, 16 / size);
                }
            }
        }
    }
}

// The norm's split is by element index: no head, as many whole vectors as
// the count holds, the rest (fewer than one vector) in the tail; for an
// aligned address it is the address split.
TEST(CoreSplit, ElementSplitCountsVectorsFromTheFirstElement)
{
    const int64_t big = (int64_t(1) << 33) + 5;
    for (int size : {2, 4, 8}) {
        const int64_t lanes = 16 / size;
        for (int64_t count : {int64_t(0), int64_t(1), int64_t(7), int64_t(8), int64_t(9), int64_t(17),
                              int64_t(1000), int64_t(1027), int64_t(65536), big, big + 7}) {
            const gclip_split s = gclip_split_elements(count, size);
            EXPECT_EQ(s.head, 0);
            EXPECT_EQ(s.vectors, count / lanes) << size << " " << count;
            EXPECT_EQ(s.tail, count % lanes) << size << " " << count;
            const gclip_split a = gclip_split_vectors(4096, count, size);
            EXPECT_EQ(a.head, s.head);
            EXPECT_EQ(a.vectors, s.vectors);
            EXPECT_EQ(a.tail, s.tail);
        }
    }
}

TEST(CoreTerms, AccumulatorsMatchTheLongDoubleOracle)
{
    oracle::Rng rng(5);
    oracle::TestBuffer buf(GCLIP_F32, 1000);
    buf.fill(rng, 10.0);
    const gclip_tensor t = buf.tensor();
    for (float p : {1.0f, 2.0f, 3.0f, 0.5f, INFINITY}) {
        const int32_t kind = std::isinf(p) ? GCLIP_KIND_INF
                             : p == 1.0f  ? GCLIP_KIND_L1
                             : p == 2.0f  ? GCLIP_KIND_L2
                                          : GCLIP_KIND_P;
        // two halves combined, as two chunks would be
        double a = GCLIP_TERM_ZERO, b = GCLIP_TERM_ZERO;
        for (int64_t i = 0; i < 500; ++i)
            a = gclip_term_add(a, buf.get(i), kind, p);
        for (int64_t i = 500; i < 1000; ++i)
            b = gclip_term_add(b, buf.get(i), kind, p);
        const double n = gclip_term_root(gclip_term_combine(a, b, kind), kind, p);
        const long double want = oracle::norms(&t, 1, p).total;
        EXPECT_NEAR(static_cast<long double>(n), want, 1e-12L * want) << p;
    }
}

TEST(CoreTerms, MaxKeepsNan)
{
    const double nan = std::nan("");
    EXPECT_TRUE(std::isnan(gclip_term_add(1.0, NAN, GCLIP_KIND_INF, 0)));
    EXPECT_TRUE(std::isnan(gclip_term_add(nan, 5.0f, GCLIP_KIND_INF, 0)));
    EXPECT_TRUE(std::isnan(gclip_term_combine(nan, 3.0, GCLIP_KIND_INF)));
    EXPECT_TRUE(std::isnan(gclip_term_combine(3.0, nan, GCLIP_KIND_INF)));
}

TEST(CoreFinalize, CoefficientIsPyTorchsFloatFormula)
{
    oracle::Rng rng(17);
    for (int i = 0; i < 10000; ++i) {
        const float n = static_cast<float>(std::fabs(rng.normal(10.0)));
        const float c = static_cast<float>(std::fabs(rng.normal(10.0)));
        ASSERT_TRUE(same_float(gclip_clip_coef(n, c, 1e-6f), oracle::expected_coef(n, c, 1e-6f)));
    }
    EXPECT_EQ(gclip_clip_coef(0.0f, 1.0f, 1e-6f), 1.0f);
    EXPECT_EQ(gclip_clip_coef(INFINITY, 1.0f, 1e-6f), 0.0f);
    EXPECT_TRUE(std::isnan(gclip_clip_coef(NAN, 1.0f, 1e-6f)));
    EXPECT_EQ(gclip_clip_coef(5.0f, 0.0f, 1e-6f), 0.0f);
}

// The eps a step's coefficient is formed with (gclip_coef_eps, for max_norm
// by value and by pointer alike): with it, a finite norm under max_norm 0
// gives +0 and under +Inf gives 1, never NaN; every coefficient PyTorch's
// formula gives a number for (and every one of a non-finite norm) keeps its
// bits; moving eps twice is moving it once; and the result is the oracle's.
// Norms from 0 and subnormals to FLT_MAX, Inf and NaN, eps from 0 to
// FLT_MAX, max_norm 0, +Inf and seeded values.
TEST(CoreFinalize, CoefficientEpsKeepsMaxNormZeroAndInfinityAndChangesNothingElse)
{
    const float sub = std::numeric_limits<float>::denorm_min();
    const std::vector<float> norms = {0.0f,  sub,    1e-40f, 2.9e-39f, 3e-39f,   1e-30f,
                                      1e-6f, 1.0f,   6.0f,   1e30f,    3.3e38f, FLT_MAX,
                                      INFINITY, NAN};
    const std::vector<float> epss = {0.0f, sub, 1e-39f, FLT_MIN, 1e-6f, 1.0f, 1e30f, 2e30f,
                                     1e38f, FLT_MAX};
    std::vector<float> maxes = {0.0f, INFINITY, sub, 1e-30f, 1.0f, 3.0f, FLT_MAX};
    oracle::Rng rng(23);
    for (int i = 0; i < 20; ++i)
        maxes.push_back(static_cast<float>(std::fabs(rng.normal(10.0))));
    std::vector<float> all_norms = norms;
    for (int i = 0; i < 200; ++i)
        all_norms.push_back(static_cast<float>(
            std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.range(-149, 127)))));
    int moved = 0;
    for (const float n : all_norms)
        for (const float e : epss)
            for (const float m : maxes) {
                const float me = gclip_coef_eps(m, e);
                ASSERT_TRUE(same_float(gclip_coef_eps(m, me), me)) << "max_norm " << m << " eps " << e;
                const float got = gclip_clip_coef(n, m, me), plain = gclip_clip_coef(n, m, e);
                ASSERT_TRUE(same_float(got, oracle::expected_op_coef(n, m, e)))
                    << "N " << n << " max_norm " << m << " eps " << e << ": " << got;
                if (std::isfinite(n) && m == 0.0f)
                    ASSERT_TRUE(same_float(got, 0.0f)) << "N " << n << " eps " << e << ": " << got;
                if (std::isfinite(n) && std::isinf(m))
                    ASSERT_EQ(got, 1.0f) << "N " << n << " eps " << e;
                if (std::isfinite(n))
                    ASSERT_FALSE(std::isnan(got)) << "N " << n << " max_norm " << m << " eps " << e;
                if (std::isnan(plain) && std::isfinite(n)) {
                    ++moved;
                } else {
                    ASSERT_TRUE(same_float(got, plain))
                        << "N " << n << " max_norm " << m << " eps " << e << ": " << got << " vs "
                        << plain;
                }
            }
    EXPECT_GT(moved, 0) << "no case reached the corner";
}

gclip_norm_params global_params(float max_norm, float inv_scale, int32_t policy)
{
    gclip_norm_params np{};
    np.kind = GCLIP_KIND_L2;
    np.op = GCLIP_OP_CLIP_NORM;
    np.p = 2.0f;
    np.policy = policy;
    np.fingerprint = gclip_fingerprint(2.0f, policy);
    np.max_norm = max_norm;
    np.eps = 1e-6f;
    np.inv_scale = inv_scale;
    return np;
}

gclip_result_slot slot_of(double acc, const gclip_norm_params &np, uint32_t nonfinite_tensors = 0)
{
    const gclip_scalars sc = gclip_resolve_scalars(&np);
    gclip_result_slot s{};
    const float n = gclip_norm_value(acc, np.kind, np.p, sc.inv_scale);
    gclip_finalize_slot(n, nonfinite_tensors, &np, &sc, sc.status, 41u, &s);
    return s;
}

TEST(CoreFinalize, SlotFollowsThePolicyTable)
{
    gclip_norm_params np = global_params(1.0f, 0.5f, GCLIP_NONFINITE_SKIP);
    gclip_result_slot s = slot_of(16.0, np); // N = sqrt(16) * 0.5 = 2
    EXPECT_EQ(s.total_norm, 2.0f);
    EXPECT_EQ(s.clip_coef, oracle::expected_coef(2.0f, 1.0f, 1e-6f));
    EXPECT_EQ(s.scale, s.clip_coef * 0.5f);
    EXPECT_EQ(s.nonfinite, 0);
    EXPECT_EQ(s.op, GCLIP_OP_CLIP_NORM);
    EXPECT_EQ(s.flags, GCLIP_RESULT_HAS_NORM | GCLIP_RESULT_APPLIES);
    EXPECT_EQ(s.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(s.sequence, 42u);

    s = slot_of(INFINITY, np);
    EXPECT_TRUE(std::isinf(s.total_norm));
    EXPECT_EQ(s.clip_coef, 1.0f);
    EXPECT_EQ(s.scale, 1.0f);
    EXPECT_EQ(s.nonfinite, 1);

    np = global_params(1.0f, 0.5f, GCLIP_NONFINITE_PROPAGATE);
    s = slot_of(INFINITY, np);
    EXPECT_EQ(s.clip_coef, 0.0f);
    EXPECT_EQ(s.scale, 0.0f);
    EXPECT_EQ(s.nonfinite, 1);
    EXPECT_TRUE(s.flags & GCLIP_RESULT_PROPAGATE);

    // a true norm above FLT_MAX is Inf, hence non-finite
    np = global_params(1.0f, 1.0f, GCLIP_NONFINITE_ERROR);
    s = slot_of(1e80, np);
    EXPECT_TRUE(std::isinf(s.total_norm));
    EXPECT_EQ(s.nonfinite, 1);
    EXPECT_TRUE(s.flags & GCLIP_RESULT_ERROR_POLICY);

    // a non-finite tensor norm counts even when the caller's total is finite
    np = global_params(1.0f, 1.0f, GCLIP_NONFINITE_SKIP);
    s = slot_of(9.0, np, 1);
    EXPECT_EQ(s.nonfinite, 1);
    EXPECT_EQ(s.scale, 1.0f);

    np.op = GCLIP_OP_TOTAL_NORM;
    s = slot_of(9.0, np);
    EXPECT_EQ(s.total_norm, 3.0f);
    EXPECT_EQ(s.clip_coef, 1.0f);
    EXPECT_EQ(s.scale, 1.0f);
    EXPECT_EQ(s.flags, GCLIP_RESULT_HAS_NORM);

    np.op = GCLIP_OP_CLIP_FACTOR; // computed, not applied
    s = slot_of(9.0, np);
    EXPECT_EQ(s.clip_coef, oracle::expected_coef(3.0f, 1.0f, 1e-6f));
    EXPECT_EQ(s.flags, GCLIP_RESULT_HAS_NORM);

    np.op = GCLIP_OP_ACCUMULATE;
    s = slot_of(9.0, np);
    EXPECT_EQ(s.scale, 1.0f);
    EXPECT_EQ(s.flags, GCLIP_RESULT_HAS_NORM | GCLIP_RESULT_LOCAL);
}

TEST(CoreKinds, OnlyPositiveInfinityIsTheMaxNorm)
{
    EXPECT_EQ(gclip_kind_of(INFINITY), GCLIP_KIND_INF);
    EXPECT_EQ(gclip_kind_of(FLT_MAX), GCLIP_KIND_P); // a huge but finite p
    EXPECT_EQ(gclip_kind_of(2.0f), GCLIP_KIND_L2);
    EXPECT_EQ(gclip_kind_of(1.0f), GCLIP_KIND_L1);
    EXPECT_EQ(gclip_kind_of(0.5f), GCLIP_KIND_P);
}

TEST(CoreScalars, DeviceScalarsAreReadAndRangeChecked)
{
    gclip_norm_params np = global_params(1.0f, 1.0f, GCLIP_NONFINITE_SKIP);
    float c = 0.25f, inv = 0.125f;
    np.max_norm_ptr = &c;
    np.inv_scale_ptr = &inv;
    gclip_scalars sc = gclip_resolve_scalars(&np);
    EXPECT_EQ(sc.max_norm, 0.25f);
    EXPECT_EQ(sc.inv_scale, 0.125f);
    EXPECT_EQ(sc.status, GCLIP_STATUS_SUCCESS);
    c = 0.5f; // read when resolved, not when the params were made
    EXPECT_EQ(gclip_resolve_scalars(&np).max_norm, 0.5f);

    for (float bad : {-1.0f, NAN}) {
        c = bad;
        EXPECT_EQ(gclip_resolve_scalars(&np).status, GCLIP_STATUS_INVALID_ARGUMENT) << bad;
    }
    c = 1.0f;
    for (float bad : {0.0f, -1.0f, INFINITY, NAN}) {
        inv = bad;
        EXPECT_EQ(gclip_resolve_scalars(&np).status, GCLIP_STATUS_INVALID_ARGUMENT) << bad;
    }
    // an invalid scalar writes nothing: factor 1 and the status in the slot
    inv = 0.0f;
    const gclip_result_slot s = slot_of(100.0, np);
    EXPECT_EQ(s.status, GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(s.scale, 1.0f);
}

TEST(CorePartials, FoldInIndexOrderAndRejectForeignFingerprints)
{
    gclip_norm_params np = global_params(1.0f, 1.0f, GCLIP_NONFINITE_SKIP);
    np.op = GCLIP_OP_FINALIZE;
    const gclip_partial parts[3] = {{9.0, 0, np.fingerprint},
                                    {16.0, 0, np.fingerprint},
                                    {0.0, 0, np.fingerprint}};
    gclip_result_slot s{};
    gclip_finalize_partials(parts, 3, nullptr, &np, 0u, &s);
    EXPECT_EQ(s.total_norm, 5.0f);
    EXPECT_EQ(s.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(s.clip_coef, oracle::expected_coef(5.0f, 1.0f, 1e-6f));

    gclip_partial odd[2] = {parts[0], parts[1]};
    odd[1].fingerprint = gclip_fingerprint(1.0f, GCLIP_NONFINITE_SKIP);
    gclip_finalize_partials(odd, 2, nullptr, &np, 0u, &s);
    EXPECT_EQ(s.status, GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(s.scale, 1.0f);

    // the policy is part of the fingerprint, and the kind sits in its low bits
    EXPECT_NE(gclip_fingerprint(2.0f, GCLIP_NONFINITE_SKIP),
              gclip_fingerprint(2.0f, GCLIP_NONFINITE_PROPAGATE));
    EXPECT_EQ(gclip_fingerprint(INFINITY, GCLIP_NONFINITE_SKIP) & 3u, (uint32_t)GCLIP_KIND_INF);
    EXPECT_EQ(gclip_fingerprint(3.0f, GCLIP_NONFINITE_SKIP) & 3u, (uint32_t)GCLIP_KIND_P);

    // a NaN on one rank reaches everyone's total; counts add
    gclip_partial nan_parts[2] = {parts[0], {NAN, 1, np.fingerprint}};
    gclip_finalize_partials(nan_parts, 2, nullptr, &np, 0u, &s);
    EXPECT_EQ(s.nonfinite, 1);
    EXPECT_EQ(s.scale, 1.0f);
}

// The finalize's fold of an array of partials, against a reference of its
// documented shape (tests/common/fold_reference.hpp): leaf i of 1024 sums the partials
// [n*i/1024, n*(i+1)/1024) left to right, group g sums leaves 32g..32g+31,
// the total sums the 32 groups (max in place of sum for p = Inf). Bitwise for
// counts on each side of 32 and 1024 and up to 100,003; up to 32 partials
// it is the left fold in index order. Accumulators spread over 2^-40..2^40,
// so the order shows in the bits: some count above 32 must differ from the
// left fold (else the comparison could not tell the shapes apart). Within
// 1e-12 of the long-double sum, non-finite counts summed exactly.
namespace {
uint64_t bits_of(double d)
{
    uint64_t u;
    std::memcpy(&u, &d, sizeof u);
    return u;
}
} // namespace

TEST(CorePartials, TheFinalizeFoldsLeavesThenGroupsInAFixedOrder)
{
    std::mt19937_64 rng(4242);
    std::uniform_real_distribution<double> mant(1.0, 2.0);
    std::uniform_int_distribution<int> expo(-40, 40);
    std::uniform_int_distribution<uint32_t> nf(0, 3);
    int differs_from_left_fold = 0;
    for (uint32_t n : {1u, 2u, 7u, 31u, 32u, 33u, 64u, 100u, 1000u, 1023u, 1024u, 1025u, 3000u,
                       16384u, 100003u}) {
        for (float p : {2.0f, INFINITY}) {
            SCOPED_TRACE("count " + std::to_string(n) + ", p = " + std::to_string(p));
            const bool max = std::isinf(p);
            const uint32_t fp = gclip_fingerprint(p, GCLIP_NONFINITE_SKIP);
            std::vector<gclip_partial> v(n);
            long double exact = 0.0L;
            for (gclip_partial &x : v) {
                x = gclip_partial{std::ldexp(mant(rng), expo(rng)), nf(rng), fp};
                exact = max ? std::max(exact, static_cast<long double>(x.acc))
                            : exact + static_cast<long double>(x.acc);
            }
            const int32_t kind = max ? GCLIP_KIND_INF : GCLIP_KIND_L2;
            const gclip_fold_part got = gclip_fold_partials(v.data(), n, fp, kind);
            const foldref::Fold want = foldref::shape_fold(v, max);
            EXPECT_EQ(bits_of(got.acc), bits_of(want.acc)) << got.acc << " vs " << want.acc;
            EXPECT_EQ(got.nonfinite, static_cast<uint32_t>(want.nonfinite));
            EXPECT_EQ(got.mismatch, 0u);
            EXPECT_LE(std::fabs(static_cast<long double>(got.acc) - exact), 1e-12L * exact);
            const double left = foldref::left_fold(v, max);
            if (n <= 32)
                EXPECT_EQ(bits_of(got.acc), bits_of(left)) << "not the left fold";
            else if (bits_of(want.acc) != bits_of(left))
                ++differs_from_left_fold;

            // the slot: through the one-thread finalize, the norm of that fold
            gclip_norm_params np = global_params(1.0f, 1.0f, GCLIP_NONFINITE_SKIP);
            np.op = GCLIP_OP_FINALIZE;
            np.kind = kind;
            np.p = p;
            np.fingerprint = fp;
            for (gclip_partial &x : v)
                x.nonfinite = 0;
            gclip_result_slot s{};
            gclip_finalize_partials(v.data(), n, nullptr, &np, 0u, &s);
            EXPECT_EQ(s.status, GCLIP_STATUS_SUCCESS);
            const float norm = static_cast<float>(max ? want.acc : std::sqrt(want.acc));
            EXPECT_EQ(s.total_norm, norm);

            // a foreign partial in the first, a middle or the last leaf
            for (uint32_t at : {0u, n / 2, n - 1}) {
                v[at].fingerprint = gclip_fingerprint(1.0f, GCLIP_NONFINITE_SKIP);
                EXPECT_EQ(gclip_fold_partials(v.data(), n, fp, kind).mismatch, 1u) << at;
                gclip_finalize_partials(v.data(), n, nullptr, &np, 0u, &s);
                EXPECT_EQ(s.status, GCLIP_STATUS_MISMATCH) << at;
                EXPECT_TRUE(std::isnan(s.total_norm)) << at;
                EXPECT_EQ(s.scale, 1.0f) << at;
                v[at].fingerprint = fp;
            }
        }
    }
    EXPECT_GE(differs_from_left_fold, 5) << "the data cannot tell the fold's shape from a left fold";
}

TEST(CoreApply, AFactorIsAppliedOnceAtMost)
{
    gclip_result_slot s{};
    s.op = GCLIP_OP_FINALIZE;
    s.scale = 0.5f;
    s.clip_coef = 0.5f;
    s.sequence = 7;
    EXPECT_TRUE(gclip_factor_pending(&s));
    gclip_applied_slot(&s);
    EXPECT_EQ(s.op, GCLIP_OP_APPLY);
    EXPECT_TRUE(s.flags & GCLIP_RESULT_APPLIES);
    EXPECT_EQ(s.sequence, 8u);
    EXPECT_FALSE(gclip_factor_pending(&s)); // a second apply finds nothing
    gclip_applied_slot(&s);
    EXPECT_EQ(s.status, GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(s.scale, 1.0f);

    s = gclip_result_slot{};
    s.op = GCLIP_OP_CLIP_NORM; // already applied by the op itself
    s.scale = 0.5f;
    EXPECT_FALSE(gclip_factor_pending(&s));
    s.op = GCLIP_OP_CLIP_FACTOR;
    s.failed = -1;
    EXPECT_FALSE(gclip_factor_pending(&s));
}

TEST(CoreGivenNorm, FactorOfAGivenNormFollowsThePolicy)
{
    gclip_norm_params np = global_params(6.5f, 1.0f, GCLIP_NONFINITE_SKIP);
    np.op = GCLIP_OP_CLIP_WITH_NORM;
    np.given_norm = 13.0f;
    gclip_result_slot s{};
    gclip_given_norm_slot(&np, 0u, &s);
    EXPECT_EQ(s.total_norm, 13.0f);
    EXPECT_EQ(s.scale, oracle::expected_coef(13.0f, 6.5f, 1e-6f));
    float device_norm = NAN;
    np.given_norm_ptr = &device_norm;
    gclip_given_norm_slot(&np, 0u, &s);
    EXPECT_EQ(s.nonfinite, 1);
    EXPECT_EQ(s.scale, 1.0f);
}

TEST(CoreElementwise, ClampKeepsNanAndBounds)
{
    EXPECT_EQ(gclip_clamp(-3.0f, 1.0f), -1.0f);
    EXPECT_EQ(gclip_clamp(0.5f, 1.0f), 0.5f);
    EXPECT_EQ(gclip_clamp(2.0f, 1.0f), 1.0f);
    EXPECT_TRUE(std::isnan(gclip_clamp(NAN, 1.0f)));
    EXPECT_EQ(gclip_clamp(-INFINITY, 0.0f), 0.0f);
    EXPECT_EQ(gclip_clamp(1e30f, INFINITY), 1e30f);
}

// The clamp is computed as min then max (gclip_norm_math.h); its bits must be
// those of the contract's expression for every x and every bound v >= 0 or
// -0, NaN payloads and signed zeros included.
template <typename T, typename Bits> Bits bits_of(T x)
{
    Bits b;
    std::memcpy(&b, &x, sizeof b);
    return b;
}

template <typename T, typename Bits> T of_bits(Bits b)
{
    T x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}

template <typename T, typename Bits> std::vector<T> clamp_inputs(std::mt19937_64 &rng)
{
    const T inf = std::numeric_limits<T>::infinity();
    const T den = std::numeric_limits<T>::denorm_min();
    const T tiny = std::numeric_limits<T>::min();
    const T big = std::numeric_limits<T>::max();
    std::vector<T> xs = {T(0), -T(0), den, -den, tiny, -tiny, T(0.5), T(-0.5), T(1), T(-1),
                         T(3), T(-3), big, -big, inf, -inf};
    const int mant = std::numeric_limits<T>::digits - 1;
    const Bits exp_all = (Bits(~Bits(0)) >> (sizeof(Bits) * 8 - (sizeof(Bits) * 8 - 1 - mant)))
                         << mant;
    const Bits sign = Bits(1) << (sizeof(Bits) * 8 - 1);
    for (Bits payload : {Bits(1), Bits(Bits(1) << (mant - 1)), Bits((Bits(1) << mant) - 1)})
        for (Bits s : {Bits(0), sign})
            xs.push_back(of_bits<T, Bits>(Bits(s | exp_all | payload)));
    const size_t special = xs.size();
    for (size_t i = 0; i < special; i++) // each special value one ulp either way
        if (std::isfinite(xs[i])) {
            xs.push_back(std::nextafter(xs[i], inf));
            xs.push_back(std::nextafter(xs[i], -inf));
        }
    for (int i = 0; i < 4000; i++) // random bit patterns: every exponent, NaN among them
        xs.push_back(of_bits<T, Bits>(Bits(rng())));
    return xs;
}

template <typename T, typename Bits> void expect_clamp_is_contract(T (*clamp)(T, T))
{
    std::mt19937_64 rng(20261204);
    const std::vector<T> xs = clamp_inputs<T, Bits>(rng);
    std::vector<T> vs = {T(0), -T(0), std::numeric_limits<T>::denorm_min(),
                         std::numeric_limits<T>::min(), T(1e-30), T(0.5), T(1), T(3),
                         std::numeric_limits<T>::max(), std::numeric_limits<T>::infinity()};
    for (int i = 0; i < 20; i++) // random bounds of every magnitude
        vs.push_back(std::fabs(of_bits<T, Bits>(Bits(rng() >> 2))));
    for (size_t i = 0; i < 20; i++) // bounds equal to inputs: the ties
        vs.push_back(std::fabs(xs[xs.size() - 1 - i]));
    size_t checked = 0;
    for (T v : vs) {
        if (std::isnan(v))
            continue;
        for (T x : xs) {
            const T want = x < -v ? -v : (x > v ? v : x);
            ASSERT_EQ((bits_of<T, Bits>(clamp(x, v))), (bits_of<T, Bits>(want)))
                << "x=" << x << " v=" << v;
            checked++;
        }
    }
    EXPECT_GT(checked, size_t(100000));
}

TEST(CoreElementwise, ClampIsTheContractsExpression)
{
    expect_clamp_is_contract<float, uint32_t>(gclip_clamp);
    expect_clamp_is_contract<double, uint64_t>(gclip_clamp_f64);
}

} // namespace
