// The norm's CPU read pass exists in two builds: the generic one
// (baseline x86-64 and AVX2 clones, or any other CPU), and on x86-64 one
// compiled for AVX2 and F16C that converts f16 vectors with vcvtph2ps. The
// library picks one per machine, so the other is not covered by the rest of
// the suite; here both compute every chunk's partial of the same plans and
// must agree bit for bit, and each finite partial must be within 1e-6 of the
// long-double sum of its chunk's terms.
#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

using oracle::TestBuffer;

namespace {

// Values from every part of a dtype's range: normal, subnormal (for f16 and
// bf16 the smallest halves), zeros of both signs, and, when asked, an Inf or
// a NaN now and then.
void fill_wide(TestBuffer &b, oracle::Rng &rng, bool nonfinite)
{
    for (int64_t i = 0; i < b.numel(); ++i) {
        const int64_t r = rng.range(0, 99);
        float v;
        if (r < 70)
            v = static_cast<float>(rng.normal(1.0));
        else if (r < 80)
            v = static_cast<float>(std::pow(10.0, rng.uniform(-9.0, -4.0)));
        else if (r < 85)
            v = r % 2 ? 0.0f : -0.0f;
        else if (r < 95)
            v = static_cast<float>(std::pow(10.0, rng.uniform(1.0, 4.7)));
        else
            v = static_cast<float>(rng.normal(1e-3));
        if (nonfinite && rng.range(0, 4999) == 0)
            v = rng.range(0, 1) ? std::numeric_limits<float>::infinity()
                                : std::numeric_limits<float>::quiet_NaN();
        b.set(i, r % 3 ? v : -v);
    }
}

// The sum of |x|^p over a chunk of `t`, in long double (the partial's value).
long double chunk_terms(const TestBuffer &t, int64_t begin, int64_t n, int32_t kind, float p)
{
    long double s = 0.0L;
    for (int64_t i = begin; i < begin + n; ++i) {
        const long double a = std::fabs(t.get_exact(i));
        s += kind == GCLIP_KIND_L2 ? a * a : kind == GCLIP_KIND_L1 ? a : std::pow(a, (long double)p);
    }
    return s;
}

std::vector<double> read_partials(gclip_plan *plan, int32_t kind, float p, bool f16c)
{
    std::vector<double> partials(plan->num_chunks, -1.0);
    const gclip_read_arg arg = {partials.data(), kind, p};
#if GCLIP_TEST_READ_F16C
    if (f16c) {
        gclip_read_run_f16c(plan, 0, plan->num_chunks, &arg);
        return partials;
    }
#else
    (void)f16c;
#endif
    gclip_read_run_generic(plan, 0, plan->num_chunks, &arg);
    return partials;
}

// The generic build's partials, once the F16C build (where this CPU has it)
// gave the same bits for every chunk.
std::vector<double> partials_of_both_builds(gclip_plan *plan, int32_t kind, float p)
{
    const std::vector<double> a = read_partials(plan, kind, p, false);
#if GCLIP_TEST_READ_F16C
    if (gclip_cpu_has_f16c()) {
        const std::vector<double> f = read_partials(plan, kind, p, true);
        for (std::size_t c = 0; c < a.size(); ++c)
            EXPECT_EQ(std::memcmp(&a[c], &f[c], sizeof(double)), 0)
                << "chunk " << c << ": generic " << a[c] << ", f16c " << f[c];
    }
#endif
    return a;
}

} // namespace

TEST(ReadPass, GenericAndF16cBuildsGiveTheSameBits)
{
#if GCLIP_TEST_READ_F16C
    if (!gclip_cpu_has_f16c())
        GTEST_SKIP() << "this CPU lacks AVX2 or F16C: only the generic read pass exists here";
#else
    GTEST_SKIP() << "the library was built without the F16C read pass (not x86-64 GCC/Clang)";
#endif
    oracle::Rng rng(2026);
    // sizes that reach every part of a chunk's walk: head and tail elements
    // (odd offsets), single vectors, a partial batch, whole batches, and
    // more than one chunk
    const int64_t sizes[] = {1, 7, 8, 9, 63, 100, 257, 1023, 4096 + 3, 8192 + 11, 16384,
                             20000, 65536, 65536 + 4100, 200003};
    for (gclip_dtype dt : {GCLIP_F16, GCLIP_BF16, GCLIP_F32}) {
        std::vector<TestBuffer> bufs;
        int k = 0;
        for (int64_t n : sizes) {
            bufs.emplace_back(dt, n, k % 8);
            fill_wide(bufs.back(), rng, k % 4 == 3);
            ++k;
        }
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        const struct {
            int32_t kind;
            float p;
        } kinds[] = {{GCLIP_KIND_L2, 2.0f}, {GCLIP_KIND_L1, 1.0f}, {GCLIP_KIND_P, 3.0f},
                     {GCLIP_KIND_INF, INFINITY}};
        for (const auto &kd : kinds) {
            SCOPED_TRACE(std::string(oracle::dtype_name(dt)) + " kind " + std::to_string(kd.kind));
            const std::vector<double> a = read_partials(plan.get(), kd.kind, kd.p, false);
            const std::vector<double> b = read_partials(plan.get(), kd.kind, kd.p, true);
            ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)), 0);
            if (kd.kind == GCLIP_KIND_INF)
                continue;
            int checked = 0;
            for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                const gclip_chunk &ch = plan->chunks[c];
                int64_t begin, n;
                gclip_chunk_range(bufs[ch.tensor].numel(), ch.index, &begin, &n);
                bool finite = true; // from the elements themselves, as floats
                for (int64_t i = begin; i < begin + n; ++i)
                    finite = finite && std::isfinite(bufs[ch.tensor].get(i));
                if (!finite) {
                    EXPECT_FALSE(std::isfinite(a[c])) << "chunk " << c;
                    continue;
                }
                const long double want = chunk_terms(bufs[ch.tensor], begin, n, kd.kind, kd.p);
                EXPECT_LE(std::fabs((a[c] - want) / want), 1e-6L) << "chunk " << c;
                ++checked;
            }
            EXPECT_GT(checked, 10);
        }
    }
}

// Chunks of at most 256 whole vectors from an aligned start (no head or
// tail element) take a shorter walk: each thread's one group goes straight
// into the block tree, unless a group's float sum is outside the safe
// range. Values whose squares overflow or underflow float make such groups
// in f32 and bf16; each partial must still be within 1e-6 of the
// long-double sum, in both builds, and bitwise the same in both.
TEST(ReadPass, SmallAlignedChunksOfExtremeValues)
{
    oracle::Rng rng(2027);
    const int64_t sizes[] = {8, 64, 100, 256, 1000, 1024, 1032, 2048, 2056};
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_BF16, GCLIP_F16}) {
        std::vector<TestBuffer> bufs;
        int k = 0;
        for (int64_t n : sizes) {
            for (int regime = 0; regime < 4; ++regime) {
                bufs.emplace_back(dt, n, 0);
                TestBuffer &b = bufs.back();
                for (int64_t i = 0; i < n; ++i) {
                    double lo = -1.0, hi = 1.0; // regime 0: ordinary values
                    if (dt != GCLIP_F16 && regime == 1)
                        lo = 22.0, hi = 30.0; // squares past float's range
                    else if (dt != GCLIP_F16 && regime == 2)
                        lo = -30.0, hi = -20.0; // squares below it
                    else if (regime == 3)
                        lo = i % 2 ? (dt == GCLIP_F16 ? -7.0 : -30.0) : -1.0,
                        hi = i % 2 ? (dt == GCLIP_F16 ? -5.0 : 30.0) : 1.0; // both
                    const float v = static_cast<float>(std::pow(10.0, rng.uniform(lo, hi)));
                    b.set(i, (i + k) % 3 ? v : -v);
                }
                ++k;
            }
        }
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
            SCOPED_TRACE(std::string(oracle::dtype_name(dt)) + " kind " + std::to_string(kind));
            const float p = kind == GCLIP_KIND_L2 ? 2.0f : 1.0f;
            const std::vector<double> a = partials_of_both_builds(plan.get(), kind, p);
            ASSERT_EQ(plan->num_chunks, bufs.size());
            for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                const TestBuffer &t = bufs[plan->chunks[c].tensor];
                const long double want = chunk_terms(t, 0, t.numel(), kind, p);
                ASSERT_TRUE(std::isfinite(a[c])) << "chunk " << c;
                EXPECT_LE(std::fabs((a[c] - want) / want), 1e-6L)
                    << "chunk " << c << " of " << t.numel() << " elements: " << a[c] << " vs "
                    << static_cast<double>(want);
            }
        }
    }
}

namespace {

// A float product and sum each rounded on its own (a volatile store cannot
// be fused into a multiply-add).
float rounded(float v)
{
    volatile float r = v;
    return r;
}

// The norm kernel's partial of one aligned chunk of nv whole vectors, its
// groups all in the safe range, from the kernel's description: each of the
// 256 threads adds to its double accumulator, in order, the float group of
// each batch it takes (vectors t + (4b + k) 256, k = 0..3: word q summed
// over the rows as (k0 + k2) + (k1 + k3), then the words as
// (w0 + w2) + (w1 + w3)); after the full batches, threads t < rest - 768
// take one more batch, the others their single vectors of the rest's rows
// (the words' tree of one vector); then the block tree.
double batch_model(const TestBuffer &b, int64_t nv, int32_t kind)
{
    const int64_t nt = 256;
    const int halves = b.dtype() == GCLIP_F32 ? 1 : 2;
    auto word = [&](int64_t v, int m) {
        float w = 0.0f;
        for (int h = 0; h < halves; ++h) {
            const float x = b.get((4 * v + m) * halves + h);
            const float term = kind == GCLIP_KIND_L2 ? rounded(x * x) : std::fabs(x);
            w = h == 0 ? term : rounded(w + term);
        }
        return w;
    };
    auto words_tree = [](const float w[4]) {
        return rounded(rounded(w[0] + w[2]) + rounded(w[1] + w[3]));
    };
    auto batch_group = [&](int64_t v0) { // vectors v0 + k 256
        float w[4];
        for (int m = 0; m < 4; ++m)
            w[m] = rounded(rounded(word(v0, m) + word(v0 + 2 * nt, m)) +
                           rounded(word(v0 + nt, m) + word(v0 + 3 * nt, m)));
        return words_tree(w);
    };
    std::vector<double> acc(nt, 0.0);
    const int64_t full = nv >= 4 * nt ? (nv - 4 * nt) / (4 * nt) + 1 : 0;
    for (int64_t bt = 0; bt < full; ++bt)
        for (int64_t t = 0; t < nt; ++t)
            acc[t] += static_cast<double>(batch_group(t + 4 * nt * bt));
    const int64_t base = 4 * nt * full, rest = nv - base;
    const int64_t with_batch = rest > 3 * nt ? rest - 3 * nt : 0;
    for (int64_t t = 0; t < with_batch; ++t)
        acc[t] += static_cast<double>(batch_group(base + t));
    for (int64_t j = 0; j < 4; ++j)
        for (int64_t t = with_batch; t < std::min(nt, rest - j * nt); ++t) {
            float w[4];
            for (int m = 0; m < 4; ++m)
                w[m] = word(base + j * nt + t, m);
            acc[t] += static_cast<double>(words_tree(w));
        }
    for (int64_t s = nt / 2; s >= 1; s /= 2)
        for (int64_t t = 0; t < s; ++t)
            acc[t] += acc[t + s];
    return acc[0];
}

// A value of either sign whose magnitude is spread over 12 decades (9 for
// f16), so that the groups' sums in double round and a tree that added them
// in another order would differ, with every group in the safe range; with
// `extreme`, now and then (1 in 200, not for f16) one whose square leaves
// float's range.
float spread_value(oracle::Rng &rng, gclip_dtype dt, bool extreme)
{
    double lo = dt == GCLIP_F16 ? -4.0 : -6.0, hi = dt == GCLIP_F16 ? 4.5 : 6.0;
    if (extreme && dt != GCLIP_F16 && rng.range(0, 199) == 0)
        lo = rng.range(0, 1) ? 22.0 : -30.0, hi = lo + 8.0;
    const float v = static_cast<float>(std::pow(10.0, rng.uniform(lo, hi)));
    return rng.range(0, 1) ? v : -v;
}

} // namespace

// Chunks of 1 to 256 whole vectors from an aligned start take the shortest
// walk (groups eight at a time, the last nv % 8 padded with +0 without
// reading past the chunk, and up to 32 vectors without the slots leaving
// registers). Each partial must be bitwise the block tree of its groups,
// in both builds. The buffers have their exact size, so AddressSanitizer
// and valgrind catch a read past a chunk's last vector.
TEST(ReadPass, WholeVectorChunksAreTheBlockTreeOfTheirGroups)
{
    oracle::Rng rng(2028);
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16}) {
        const int64_t lanes = 16 / oracle::dtype_size(dt);
        std::vector<TestBuffer> bufs;
        for (int nv = 1; nv <= 256; ++nv) {
            bufs.emplace_back(dt, nv * lanes, 0);
            for (int64_t i = 0; i < nv * lanes; ++i)
                bufs.back().set(i, spread_value(rng, dt, false));
        }
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(plan->num_chunks, bufs.size());
        for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
            SCOPED_TRACE(std::string(oracle::dtype_name(dt)) + " kind " + std::to_string(kind));
            const float p = kind == GCLIP_KIND_L2 ? 2.0f : 1.0f;
            std::vector<std::vector<double>> builds = {read_partials(plan.get(), kind, p, false)};
#if GCLIP_TEST_READ_F16C
            if (gclip_cpu_has_f16c())
                builds.push_back(read_partials(plan.get(), kind, p, true));
#endif
            for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                const int nv = static_cast<int>(c) + 1;
                const double want = batch_model(bufs[plan->chunks[c].tensor], nv, kind);
                for (const std::vector<double> &got : builds)
                    ASSERT_EQ(std::memcmp(&got[c], &want, sizeof want), 0)
                        << nv << " vectors: " << got[c] << " vs " << want;
            }
        }
    }
}

// Chunks whose rest after their full batches is more than three rows (769
// to 1,023 vectors), so that some threads take one more batch and the
// others single vectors, next to chunks of whole batches only: each partial
// is bitwise the kernel's as its description gives it (batch_model) in both
// builds where every group is in the safe range, and within 1e-6 of the
// long-double sum where values past float's range make groups that are not.
TEST(ReadPass, ThreadsThatTakeOneMoreBatchAddTheKernelsGroups)
{
    oracle::Rng rng(2029);
    const int64_t vectors[] = {769, 776, 800, 1000, 1023, 1024, 1024 + 900, 2048 + 1001,
                               4096 + 777, 4096 + 1024};
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16}) {
        const int64_t lanes = 16 / oracle::dtype_size(dt);
        for (int regime = 0; regime < 2; ++regime) {
            std::vector<TestBuffer> bufs;
            for (int64_t nv : vectors) {
                if (nv * lanes > 65536)
                    continue; // one chunk per tensor
                bufs.emplace_back(dt, nv * lanes, 0);
                for (int64_t i = 0; i < nv * lanes; ++i)
                    bufs.back().set(i, spread_value(rng, dt, regime == 1));
            }
            testutil::PlanPtr plan;
            ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(plan->num_chunks, bufs.size());
            for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
                SCOPED_TRACE(std::string(oracle::dtype_name(dt)) + " regime " +
                             std::to_string(regime) + " kind " + std::to_string(kind));
                const float p = kind == GCLIP_KIND_L2 ? 2.0f : 1.0f;
                const std::vector<double> a = partials_of_both_builds(plan.get(), kind, p);
                for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                    const TestBuffer &t = bufs[plan->chunks[c].tensor];
                    const int64_t nv = t.numel() / lanes;
                    if (regime == 0) {
                        const double want = batch_model(t, nv, kind);
                        EXPECT_EQ(std::memcmp(&a[c], &want, sizeof want), 0)
                            << nv << " vectors: " << a[c] << " vs " << want;
                    }
                    const long double exact = chunk_terms(t, 0, t.numel(), kind, p);
                    EXPECT_LE(std::fabs((a[c] - exact) / exact), 1e-6L) << nv << " vectors";
                }
            }
        }
    }
}

namespace {

// The plan's partials read with its large chunks taken two at a time or one
// at a time (the CPU state's switch, set as a plan of more than
// GCLIP_CPU_PAIR_BYTES sets it), the chunks cut into runs at `cuts` as
// threads take them: a pair never reaches past the end of a run.
std::vector<double> read_runs(gclip_plan *plan, int32_t kind, bool pairs, bool f16c,
                              const std::vector<uint32_t> &cuts)
{
    auto *st = static_cast<gclip_cpu_state *>(plan->engine);
    const int was = st->read_pairs;
    st->read_pairs = pairs;
    std::vector<double> partials(plan->num_chunks, -1.0);
    const gclip_read_arg arg = {partials.data(), kind, kind == GCLIP_KIND_L2 ? 2.0f : 1.0f};
    uint32_t first = 0;
    std::vector<uint32_t> ends = cuts;
    ends.push_back(plan->num_chunks);
    for (uint32_t last : ends) {
#if GCLIP_TEST_READ_F16C
        if (f16c)
            gclip_read_run_f16c(plan, first, last, &arg);
        else
            gclip_read_run_generic(plan, first, last, &arg);
#else
        (void)f16c;
        gclip_read_run_generic(plan, first, last, &arg);
#endif
        first = last;
    }
    st->read_pairs = was;
    return partials;
}

// The builds of the read pass this binary can run: the generic one (false),
// and the F16C one (true) where it is built and the CPU has F16C.
std::vector<bool> read_builds()
{
    std::vector<bool> builds = {false};
#if GCLIP_TEST_READ_F16C
    if (gclip_cpu_has_f16c())
        builds.push_back(true);
#endif
    return builds;
}

// The partials of kind from the one-stream walk, after checking that the
// walk with read_pairs set, its chunks cut into runs at each of `cuts`,
// gives every chunk the same bits (the first difference is a failure).
std::vector<double> same_bits_both_walks(gclip_plan *plan, int32_t kind, bool f16c,
                                         const std::vector<std::vector<uint32_t>> &cuts)
{
    const std::vector<double> one = read_runs(plan, kind, false, f16c, {});
    for (const auto &cut : cuts) {
        const std::vector<double> two = read_runs(plan, kind, true, f16c, cut);
        for (uint32_t c = 0; c < plan->num_chunks; ++c)
            if (std::memcmp(&one[c], &two[c], sizeof(double)) != 0) {
                ADD_FAILURE() << (f16c ? "f16c" : "generic") << " kind " << kind << ", "
                              << cut.size() + 1 << " runs, chunk " << c << ": " << one[c]
                              << " in one stream, " << two[c] << " in two";
                break;
            }
    }
    return one;
}

} // namespace

// Runs of tensors of at most 32 whole vectors (128 f32, 256 halves) are
// walked by a loop of their own, which stops at a tensor of another dtype
// or size and, when a thread walks its run as two halves, hands over to the
// other half every few kilobytes. Here such tensors come in runs of one
// dtype and of changing dtypes, between larger tensors and tensors that
// start inside a vector or end inside one; a few hold a value whose square
// leaves float's range (a group outside the safe range) or a NaN. In both
// walks and both builds, each partial of whole vectors from an aligned start
// whose groups are all safe must be bitwise the block tree of its groups
// (batch_model), every other finite one within 1e-6 of the long-double sum,
// and a chunk with a NaN must have a NaN.
TEST(ReadPass, RunsOfTinyTensorsAreTheBlockTreeOfTheirGroups)
{
    oracle::Rng rng(2049);
    const gclip_dtype dtypes[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16};
    std::vector<TestBuffer> bufs;
    std::vector<bool> modelled; // whole vectors, aligned, every group safe
    gclip_dtype dt = GCLIP_F32;
    int tiny = 0, extreme = 0, nan = 0;
    for (int i = 0; i < 1500; ++i) {
        if (rng.range(0, 9) == 0) // a run of another dtype
            dt = dtypes[rng.range(0, 2)];
        const int64_t lanes = 16 / oracle::dtype_size(dt);
        const int64_t r = rng.range(0, 99);
        int64_t numel, offset = 0;
        if (r < 80) {
            numel = rng.range(1, 32) * lanes;
            ++tiny;
        } else if (r < 90) {
            numel = rng.range(33, 256) * lanes;
        } else if (r < 95) {
            numel = rng.range(1, 32) * lanes;
            offset = rng.range(1, lanes - 1);
        } else {
            numel = rng.range(1, 31) * lanes + rng.range(1, lanes - 1);
        }
        bufs.emplace_back(dt, numel, offset);
        TestBuffer &b = bufs.back();
        bool safe = offset == 0 && numel % lanes == 0;
        for (int64_t k = 0; k < numel; ++k) {
            const float v = spread_value(rng, dt, true);
            const float a = std::fabs(v);
            if (a > 1e20f || a < 1e-20f) {
                safe = false;
                ++extreme;
            }
            b.set(k, v);
        }
        if (i % 97 == 13) {
            b.set(rng.range(0, numel - 1), std::numeric_limits<float>::quiet_NaN());
            safe = false;
            ++nan;
        }
        modelled.push_back(safe);
    }
    ASSERT_GT(tiny, 1000);
    ASSERT_GT(extreme, 5);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    const uint32_t nc = plan->num_chunks;
    ASSERT_EQ(nc, bufs.size());
    const std::vector<std::vector<uint32_t>> cuts = {
        {}, {nc / 3}, {5, 6, 40, nc / 2 + 1}, {1, 2, 3, 101, 102, nc - 4}};
    for (const bool f16c : read_builds()) {
        for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
            SCOPED_TRACE(std::string(f16c ? "f16c" : "generic") + " kind " + std::to_string(kind));
            const std::vector<double> one = same_bits_both_walks(plan.get(), kind, f16c, cuts);
            int bitwise = 0, near = 0, nonfinite = 0;
            for (uint32_t c = 0; c < nc; ++c) {
                const TestBuffer &b = bufs[plan->chunks[c].tensor];
                bool finite = true;
                for (int64_t k = 0; k < b.numel(); ++k)
                    finite = finite && std::isfinite(b.get(k));
                if (!finite) {
                    EXPECT_TRUE(std::isnan(one[c])) << "chunk " << c;
                    ++nonfinite;
                } else if (modelled[plan->chunks[c].tensor]) {
                    const int64_t nv = b.numel() * oracle::dtype_size(b.dtype()) / 16;
                    const double want = batch_model(b, nv, kind);
                    EXPECT_EQ(std::memcmp(&one[c], &want, sizeof want), 0)
                        << "chunk " << c << ", " << nv << " vectors: " << one[c] << " vs " << want;
                    ++bitwise;
                } else {
                    const long double want = chunk_terms(b, 0, b.numel(), kind,
                                                         kind == GCLIP_KIND_L2 ? 2.0f : 1.0f);
                    EXPECT_LE(std::fabs((one[c] - want) / want), 1e-6L) << "chunk " << c;
                    ++near;
                }
            }
            EXPECT_GT(bitwise, 900);
            EXPECT_GT(near, 100);
            EXPECT_EQ(nonfinite, nan);
        }
    }
}

// In a plan of more than GCLIP_CPU_PAIR_BYTES the read pass takes large
// chunks two at a time, reading their batches side by side. Each partial
// must be bitwise the one the chunk gets alone, whatever pairs the runs
// make (two chunks of one tensor, the last of one tensor with the first of
// the next, chunks of different lengths and heads, groups outside the safe
// range in either chunk of a pair), and within 1e-6 of the long-double sum.
TEST(ReadPass, LargeChunksReadTwoAtATimeGiveTheSameBits)
{
    oracle::Rng rng(2028);
    const int64_t C = GCLIP_CHUNK_ELEMS;
    const struct {
        gclip_dtype dt;
        int64_t n, offset;
    } shapes[] = {{GCLIP_F32, 3 * C + 30000, 1}, {GCLIP_F32, 4 * C + 7, 0},
                  {GCLIP_F32, 2 * C, 3},         {GCLIP_BF16, 5 * C + 40001, 3},
                  {GCLIP_F16, 5 * C + 123, 2},   {GCLIP_BF16, 2 * C + 9000, 0},
                  {GCLIP_F32, C + 5000, 2}};
    std::vector<TestBuffer> bufs;
    int k = 0;
    for (const auto &s : shapes) {
        bufs.emplace_back(s.dt, s.n, s.offset);
        fill_wide(bufs.back(), rng, k == 2);
        ++k;
    }
    // groups outside the safe range: squares past float's range and below
    // it, in the first and in the second chunk of pairs, f32 and bf16
    for (int t : {0, 1, 3, 5})
        for (int64_t i : {int64_t{5}, C + 777, 2 * C + 4321})
            if (i < bufs[t].numel())
                bufs[t].set(i, (i / C) % 2 ? 3e25f : 2e-27f);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    // small enough to stay below the switch: one chunk at a time by default
    ASSERT_EQ(static_cast<gclip_cpu_state *>(plan->engine)->read_pairs, 0);
    const std::vector<std::vector<uint32_t>> cuts = {{}, {1}, {3, 4, 9}, {2, 5, 6, 13, 20}};
    int unsafe_checked = 0;
    for (const bool f16c : read_builds()) {
        for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
            const std::vector<double> one = same_bits_both_walks(plan.get(), kind, f16c, cuts);
            int checked = 0;
            for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                const gclip_chunk &ch = plan->chunks[c];
                int64_t begin, n;
                gclip_chunk_range(bufs[ch.tensor].numel(), ch.index, &begin, &n);
                bool finite = true, unsafe = false;
                for (int64_t i = begin; i < begin + n; ++i) {
                    const float v = std::fabs(bufs[ch.tensor].get(i));
                    finite = finite && std::isfinite(v);
                    unsafe = unsafe || v == 3e25f || v == 2e-27f;
                }
                if (!finite) {
                    EXPECT_FALSE(std::isfinite(one[c])) << "chunk " << c;
                    continue;
                }
                const long double want = chunk_terms(bufs[ch.tensor], begin, n, kind,
                                                     kind == GCLIP_KIND_L2 ? 2.0f : 1.0f);
                EXPECT_LE(std::fabs((one[c] - want) / want), 1e-6L) << "chunk " << c;
                ++checked;
                unsafe_checked += unsafe;
            }
            EXPECT_GT(checked, 20);
        }
    }
    EXPECT_GT(unsafe_checked, 4);
}

// In a plan of more than GCLIP_CPU_PAIR_BYTES a thread also walks its run
// as two halves at once, reading the small tensors of the two side by side
// (33 to 256 whole vectors each) and the other chunks one at a time. Here
// most tensors are such small ones, of every length in vectors, between
// tiny tensors, tensors that start or end inside a vector, a few large ones
// and tensors of the other dtypes, some with groups outside the safe range
// or an Inf or NaN. Each partial must be bitwise the one the chunk gets in
// a one-stream walk, however the runs are cut, and within 1e-6 of the
// long-double sum.
TEST(ReadPass, SmallTensorsReadSideBySideGiveTheSameBits)
{
    oracle::Rng rng(2046);
    const int64_t C = GCLIP_CHUNK_ELEMS;
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_BF16, GCLIP_F16}) {
        SCOPED_TRACE(oracle::dtype_name(dt));
        std::vector<TestBuffer> bufs;
        int slot_rows = 0;
        for (int i = 0; i < 240; ++i) {
            const int64_t r = rng.range(0, 99);
            gclip_dtype d = dt;
            if (r >= 92)
                d = dt == GCLIP_F32 ? GCLIP_BF16 : GCLIP_F32;
            const int lanes = 16 / static_cast<int>(oracle::dtype_size(d));
            if (r < 70) { // 33..256 whole vectors from a 16-byte start
                bufs.emplace_back(d, rng.range(33, 256) * lanes, 0);
                slot_rows += d == dt;
            } else if (r < 78) { // at most 32 whole vectors
                bufs.emplace_back(d, rng.range(1, 32) * lanes, 0);
            } else if (r < 86) { // whole vectors from a start inside one
                bufs.emplace_back(d, rng.range(33, 256) * lanes, rng.range(1, lanes - 1));
            } else if (r < 90) { // a part of a vector at the end
                bufs.emplace_back(d, rng.range(33, 256) * lanes + rng.range(1, lanes - 1), 0);
            } else if (r < 92) {
                bufs.emplace_back(d, C + rng.range(1, 3 * C), rng.range(0, 3));
            } else {
                bufs.emplace_back(d, rng.range(100, 5000), rng.range(0, 2));
            }
            TestBuffer &b = bufs.back();
            fill_wide(b, rng, i % 23 == 7);
            // a group outside the safe range now and then (f16's squares
            // stay inside it)
            if (d != GCLIP_F16 && i % 11 == 4)
                b.set(rng.range(0, b.numel() - 1), i % 2 ? 3e25f : 2e-27f);
        }
        ASSERT_GT(slot_rows, 120);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        const uint32_t nc = plan->num_chunks;
        const std::vector<std::vector<uint32_t>> cuts = {
            {}, {nc / 3}, {5, 6, 40, nc / 2 + 1}, {1, 2, 3, 101, 102, nc - 4}};
        for (const bool f16c : read_builds()) {
            for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
                const std::vector<double> one = same_bits_both_walks(plan.get(), kind, f16c, cuts);
                int checked = 0, nonfinite = 0;
                for (uint32_t c = 0; c < nc; ++c) {
                    const gclip_chunk &ch = plan->chunks[c];
                    int64_t begin, n;
                    gclip_chunk_range(bufs[ch.tensor].numel(), ch.index, &begin, &n);
                    bool finite = true;
                    for (int64_t i = begin; i < begin + n; ++i)
                        finite = finite && std::isfinite(bufs[ch.tensor].get(i));
                    if (!finite) {
                        EXPECT_FALSE(std::isfinite(one[c])) << "chunk " << c;
                        ++nonfinite;
                        continue;
                    }
                    const long double want = chunk_terms(bufs[ch.tensor], begin, n, kind,
                                                         kind == GCLIP_KIND_L2 ? 2.0f : 1.0f);
                    EXPECT_LE(std::fabs((one[c] - want) / want), 1e-6L) << "chunk " << c;
                    ++checked;
                }
                EXPECT_GT(checked, 200);
                EXPECT_GT(nonfinite, 0);
            }
        }
    }
}

// Each of a block's threads sums its own groups into its own accumulator,
// and the block tree adds the accumulators in a fixed order. Both builds
// form a thread's group from its words in their own lane orders (the F16C
// build keeps f16 words as 0 1 4 5 | 2 3 6 7 through the tree), so a group
// given to another thread's slot would change nothing on data whose
// accumulators add exactly, as most data's do. Here every thread's elements
// lie in a binade of their own, spread so widely that the tree's sums round:
// a group in a wrong slot changes the partial's bits.
TEST(ReadPass, GroupsOfWidelySpreadThreadsKeepTheirSlots)
{
    oracle::Rng rng(2031);
    const int64_t C = GCLIP_CHUNK_ELEMS;
    int rounded = 0;
    for (gclip_dtype dt : {GCLIP_F16, GCLIP_BF16, GCLIP_F32}) {
        const int lanes = 16 / static_cast<int>(oracle::dtype_size(dt));
        // f16: the normal binades below 2^15 (where [1, 2) * 2^15 could
        // round to Inf); bf16 and f32: squares from 2^-60 to 2^62
        const int lo = dt == GCLIP_F16 ? -14 : -30, hi = dt == GCLIP_F16 ? 14 : 30;
        int binade[GCLIP_BLOCK_THREADS];
        for (int &b : binade)
            b = static_cast<int>(rng.range(lo, hi));
        std::vector<TestBuffer> bufs;
        bufs.emplace_back(dt, 2 * C + 5 * 4096, 0); // whole batches from an aligned start
        TestBuffer &b = bufs.back();
        for (int64_t i = 0; i < b.numel(); ++i) {
            const int t = static_cast<int>((i / lanes) % GCLIP_BLOCK_THREADS);
            const double v = std::ldexp(rng.uniform(1.0, 2.0), binade[t]);
            b.set(i, static_cast<float>(rng.range(0, 1) ? v : -v));
        }
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        for (const int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1}) {
            SCOPED_TRACE(std::string(oracle::dtype_name(dt)) + " kind " + std::to_string(kind));
            const float p = kind == GCLIP_KIND_L2 ? 2.0f : 1.0f;
            const std::vector<double> a = partials_of_both_builds(plan.get(), kind, p);
            for (uint32_t c = 0; c < plan->num_chunks; ++c) {
                int64_t begin, n;
                gclip_chunk_range(b.numel(), plan->chunks[c].index, &begin, &n);
                const long double want = chunk_terms(b, begin, n, kind, p);
                EXPECT_LE(std::fabs((a[c] - want) / want), 1e-6L) << "chunk " << c;
                // the partial is not the exact sum: the tree's order shows
                rounded += static_cast<long double>(a[c]) != want;
            }
        }
    }
    EXPECT_GT(rounded, 6);
}

// The switch itself: set for a plan of more than GCLIP_CPU_PAIR_BYTES, not
// for one of exactly that many (the data is never read).
TEST(ReadPass, PairsAreTakenAboveTheSizeLimit)
{
    const int64_t n = GCLIP_CPU_PAIR_BYTES / 4;
    for (const int64_t extra : {int64_t{0}, int64_t{1}}) {
        TestBuffer big(GCLIP_F32, n - 1000), rest(GCLIP_F32, 1000 + extra);
        std::vector<TestBuffer> bufs;
        bufs.push_back(std::move(big));
        bufs.push_back(std::move(rest));
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(static_cast<gclip_cpu_state *>(plan->engine)->read_pairs, extra ? 1 : 0);
    }
}

// The update pass walks a run as two halves at once in the same plans, and
// updates the f32 chunks of at most 16 KiB of the two side by side. Every
// element must get the bits the one-walk update gives it, whatever the run
// cuts, under a clamp (bounds +0, -0 and positive), a global factor and
// per-tensor factors (some tensors at factor 1, whose bits must not change:
// some hold a signaling NaN, which a multiply by 1 would make quiet); and each
// f32 element must be the contract's result, computed here: the product
// correctly rounded to float (the double product of two floats is exact),
// or the clamp's upper bound, then lower, as gclip_clamp orders them.
TEST(UpdatePass, SmallTensorsUpdatedSideBySideGiveTheSameBits)
{
    oracle::Rng rng(2047);
    const int64_t C = GCLIP_CHUNK_ELEMS;
    std::vector<TestBuffer> bufs;
    int pairable = 0;
    for (int i = 0; i < 300; ++i) {
        const int64_t r = rng.range(0, 99);
        if (r < 70) { // f32 chunks of at most 16 KiB, any start
            bufs.emplace_back(GCLIP_F32, rng.range(1, 4096), rng.range(0, 3));
            ++pairable;
        } else if (r < 80) {
            bufs.emplace_back(r % 2 ? GCLIP_BF16 : GCLIP_F16, rng.range(1, 9000), rng.range(0, 1));
        } else if (r < 85) {
            bufs.emplace_back(GCLIP_F64, rng.range(1, 3000), 0);
        } else if (r < 88) {
            bufs.emplace_back(GCLIP_F32, C + rng.range(1, 2 * C), rng.range(0, 3));
        } else {
            bufs.emplace_back(GCLIP_F32, rng.range(4097, 20000), rng.range(0, 3));
        }
        fill_wide(bufs.back(), rng, i % 13 == 5);
        // a signaling NaN, which any multiply makes quiet: a tensor whose
        // factor is 1 must keep its bits (no write at all)
        if (bufs.back().dtype() == GCLIP_F32 && i % 4 == 1) {
            const uint32_t snan = 0x7fa00001u;
            std::memcpy(static_cast<char *>(bufs.back().data()) +
                            4 * rng.range(0, bufs.back().numel() - 1),
                        &snan, 4);
        }
    }
    ASSERT_GT(pairable, 180);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    auto *st = static_cast<gclip_cpu_state *>(plan->engine);
    const uint32_t nc = plan->num_chunks;
    std::vector<float> factor(bufs.size());
    for (auto &f : factor)
        f = rng.range(0, 3) == 0 ? 1.0f : static_cast<float>(rng.uniform(0.05, 1.5));
    const struct {
        int clamp;
        float f;
        const float *factor;
    } ops[] = {{1, 0.7f, nullptr},  {1, 0.0f, nullptr}, {1, -0.0f, nullptr},
               {0, 0.37f, nullptr}, {0, 0.0f, nullptr}, {0, 1.0f, factor.data()}};
    const std::vector<std::vector<uint32_t>> cuts = {
        {}, {nc / 3}, {1, 2, 3, 57, 58, nc - 3}, {4, 9, nc / 2, nc / 2 + 5}};
    const int was = st->read_pairs;
    int checked = 0, untouched = 0;
    for (const auto &op : ops) {
        SCOPED_TRACE("clamp " + std::to_string(op.clamp) + " f " + std::to_string(op.f) +
                     (op.factor ? " per tensor" : ""));
        // one walk, the whole plan in one run
        std::vector<TestBuffer> one = bufs;
        {
            testutil::PlanPtr p1;
            ASSERT_EQ(testutil::make_plan(p1, oracle::tensors_of(one)), GCLIP_STATUS_SUCCESS);
            static_cast<gclip_cpu_state *>(p1->engine)->read_pairs = 0;
            gclip_update_run_cpu(p1.get(), 0, p1->num_chunks, op.clamp, op.f, op.factor);
        }
        for (size_t t = 0; t < bufs.size(); ++t) {
            if (bufs[t].dtype() != GCLIP_F32)
                continue;
            const float f = op.factor ? op.factor[t] : op.f;
            if (op.factor && f == 1.0f) {
                ASSERT_EQ(std::memcmp(bufs[t].data(), one[t].data(), bufs[t].bytes()), 0)
                    << "tensor " << t << " has factor 1 and was written";
                ++untouched;
            }
            for (int64_t i = 0; i < bufs[t].numel(); ++i) {
                const float x = bufs[t].get(i), y = one[t].get(i);
                float want;
                if (op.clamp) {
                    const float upper = f < x ? f : x, lower = -f;
                    want = lower > upper ? lower : upper;
                } else {
                    want = static_cast<float>(static_cast<double>(x) * static_cast<double>(f));
                }
                if (std::isnan(want)) {
                    ASSERT_TRUE(std::isnan(y)) << "tensor " << t << " element " << i;
                } else {
                    ASSERT_EQ(std::memcmp(&want, &y, sizeof y), 0)
                        << "tensor " << t << " element " << i << ": " << x << " -> " << y
                        << ", want " << want;
                }
                ++checked;
            }
        }
        for (const auto &cut : cuts) {
            std::vector<TestBuffer> two = bufs;
            testutil::PlanPtr p2;
            ASSERT_EQ(testutil::make_plan(p2, oracle::tensors_of(two)), GCLIP_STATUS_SUCCESS);
            static_cast<gclip_cpu_state *>(p2->engine)->read_pairs = 1;
            uint32_t first = 0;
            std::vector<uint32_t> ends = cut;
            ends.push_back(p2->num_chunks);
            for (uint32_t last : ends) {
                gclip_update_run_cpu(p2.get(), first, last, op.clamp, op.f, op.factor);
                first = last;
            }
            for (size_t t = 0; t < bufs.size(); ++t)
                ASSERT_EQ(std::memcmp(one[t].data(), two[t].data(), one[t].bytes()), 0)
                    << "tensor " << t << " (" << oracle::dtype_name(bufs[t].dtype()) << ", "
                    << bufs[t].numel() << " elements), " << cut.size() + 1 << " runs";
        }
    }
    st->read_pairs = was;
    EXPECT_GT(checked, 1000000);
    EXPECT_GT(untouched, 40);
}
