// Distributed plans without a transport, every rank simulated in one
// process: the caller gathers the partials itself (as torch.distributed
// would) by copying each rank's send partial into its peers' gather buffers.
// These tests pin down the logic the MPI and NCCL transports share: roles,
// groups, the fold order, the poison, mismatch reports and argument checks.
#include "dist_world.hpp"
#include "fold_reference.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

extern "C" size_t gclip_dist_header_c11_layout(size_t *offset_group, size_t *offset_role);

using distw::Layout;
using distw::Rank;

namespace {

struct DistPlanDeleter {
    void operator()(gclip_dist_plan *p) const { gclip_dist_plan_destroy(p); }
};
using DistPlanPtr = std::unique_ptr<gclip_dist_plan, DistPlanDeleter>;

// A simulated job: every rank's data and external plan.
struct Job {
    std::vector<Rank> ranks;
    std::vector<DistPlanPtr> plans;

    Job(uint64_t seed, int size, bool two_groups)
    {
        const distw::Global global = distw::make_global(seed);
        for (int r = 0; r < size; ++r) {
            Layout l;
            l.rank = r;
            l.size = size;
            l.ep = distw::default_ep(size);
            l.two_groups = two_groups;
            ranks.push_back(distw::make_rank(global, l));
        }
        for (auto &w : ranks) {
            std::vector<int> gr, gs;
            distw::group_coords(w.layout, gr, gs);
            gclip_dist_plan *p = nullptr;
            EXPECT_EQ(gclip_dist_plan_create_external(&p, w.entries.data(), w.entries.size(),
                                                      GCLIP_DEVICE_CPU, gr.data(), gs.data(),
                                                      gr.size()),
                      GCLIP_STATUS_SUCCESS)
                << gclip_dist_last_error();
            plans.emplace_back(p);
        }
    }

    int size() const { return static_cast<int>(ranks.size()); }

    // Every rank's accumulate with its own options; returns their statuses.
    std::vector<gclip_status> accumulate(const std::vector<gclip_norm_options> &o)
    {
        std::vector<gclip_status> s;
        for (int r = 0; r < size(); ++r)
            s.push_back(gclip_dist_accumulate(plans[r].get(), &o[r], nullptr));
        return s;
    }

    // What the caller's collective does: each group's send partials, in
    // group-rank order, into every member's gather buffer.
    void gather()
    {
        for (int r = 0; r < size(); ++r)
            for (size_t g = 0; g < ranks[r].num_groups(); ++g) {
                gclip_partial *buf = nullptr;
                size_t n = 0;
                ASSERT_EQ(gclip_dist_plan_gather_buffer(plans[r].get(), g, &buf, &n),
                          GCLIP_STATUS_SUCCESS);
                const auto members = distw::group_members(ranks[r].layout, int(g), r);
                ASSERT_EQ(n, members.size());
                for (size_t i = 0; i < n; ++i) {
                    const gclip_partial *send = nullptr;
                    ASSERT_EQ(gclip_dist_plan_send_partial(plans[members[i]].get(), g, &send),
                              GCLIP_STATUS_SUCCESS);
                    buf[i] = *send;
                }
            }
    }

    // finalize + apply on every rank; the results and get_result statuses.
    void finish(const std::vector<gclip_norm_options> &o, std::vector<gclip_result> &res,
                std::vector<gclip_status> &status)
    {
        res.assign(size(), gclip_result{});
        status.assign(size(), GCLIP_STATUS_SUCCESS);
        for (int r = 0; r < size(); ++r) {
            EXPECT_EQ(gclip_dist_finalize(plans[r].get(), &o[r], nullptr), GCLIP_STATUS_SUCCESS)
                << gclip_dist_last_error();
            EXPECT_EQ(gclip_dist_apply_clip_factor(plans[r].get(), nullptr), GCLIP_STATUS_SUCCESS);
            status[r] = gclip_dist_get_result(plans[r].get(), &res[r]);
        }
    }

    void step(const gclip_norm_options &o, std::vector<gclip_result> &res,
              std::vector<gclip_status> &status)
    {
        const std::vector<gclip_norm_options> all(size(), o);
        for (gclip_status s : accumulate(all))
            EXPECT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        gather();
        finish(all, res, status);
    }

    uint64_t checksum() const
    {
        uint64_t h = 0;
        for (const auto &w : ranks)
            h = h * 31 + w.checksum();
        return h;
    }
};

gclip_norm_options options(float max_norm, float p, float inv_scale = 1.0f)
{
    gclip_norm_options o = testutil::norm_options(max_norm, p);
    o.inv_scale = inv_scale;
    return o;
}

// One step of `job` at norm type p (max_norm 0.05, inv_scale 0.5): every
// rank succeeds with the oracle's norm and the single-process plan's within
// 1e-6, the same bits of norm and factor as rank 0, a factor that clips and
// was applied, and every element of its own clipped by it. The results.
std::vector<gclip_result> expect_one_agreeing_step(Job &job, float p)
{
    const gclip_norm_options o = options(0.05f, p, 0.5f);
    const auto want = distw::reference_norm(job.ranks[0], p, 0.5);
    const gclip_result single = distw::single_process_result(job.ranks[0], o);
    std::vector<gclip_result> res;
    std::vector<gclip_status> st;
    job.step(o, res, st);
    for (int r = 0; r < job.size(); ++r) {
        EXPECT_EQ(st[r], GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        EXPECT_TRUE(oracle::rel_close(res[r].total_norm, want.total, 1e-6L))
            << res[r].total_norm << " vs " << static_cast<double>(want.total);
        EXPECT_TRUE(oracle::rel_close(res[r].total_norm, single.total_norm, 1e-6L));
        EXPECT_EQ(distw::bits(res[r].total_norm), distw::bits(res[0].total_norm));
        EXPECT_EQ(distw::bits(res[r].scale), distw::bits(res[0].scale));
        EXPECT_LT(res[r].clip_coef, 1.0f); // clipped (scale also holds inv_scale)
        EXPECT_EQ(distw::bits(res[r].scale), distw::bits(distw::expected_factor(res[r], o)));
        EXPECT_EQ(res[r].applied, 1);
        EXPECT_EQ(distw::misclipped(job.ranks[r], distw::expected_factor(res[r], o)), 0)
            << "rank " << r;
    }
    return res;
}

TEST(DistExternal, EveryRankGetsTheSingleProcessNormBitForBit)
{
    for (bool two_groups : {false, true})
        for (int size = 1; size <= 4; ++size)
            for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
                SCOPED_TRACE(testing::Message() << "size " << size << " p " << p << " groups "
                                                << (two_groups ? 2 : 1));
                Job job(100 + size, size, two_groups);
                expect_one_agreeing_step(job, p);
            }
}

// Groups of more than 32 ranks, whose finalize folds the gathered partials
// in groups of leaves rather than one after the other: as above, and rank
// 0's norm (so every rank's) has the bits of the documented fold of its
// gather buffer (tests/common/fold_reference.hpp), computed here.
TEST(DistExternal, LargeGroupsGiveEveryRankTheFoldOfTheGatheredPartials)
{
    for (int size : {33, 70})
        for (float p : {2.0f, 1.0f, INFINITY}) {
            SCOPED_TRACE(testing::Message() << "size " << size << " p " << p);
            Job job(300 + size, size, false);
            const std::vector<gclip_result> res = expect_one_agreeing_step(job, p);
            gclip_partial *buf = nullptr;
            size_t n = 0;
            ASSERT_EQ(gclip_dist_plan_gather_buffer(job.plans[0].get(), 0, &buf, &n),
                      GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(n, static_cast<size_t>(size));
            const foldref::Fold fold = foldref::shape_fold(buf, n, std::isinf(p));
            const double root = p == 2.0f ? std::sqrt(fold.acc) : fold.acc;
            EXPECT_EQ(distw::bits(res[0].total_norm), distw::bits(static_cast<float>(root * 0.5)));
            if (::testing::Test::HasFailure())
                return;
        }
}

TEST(DistExternal, ReplicatedAndTiedTensorsCountOnce)
{
    const int size = 3;
    Job job(7, size, false);
    const gclip_norm_options o = options(1e9f, 2.0f); // never clips
    std::vector<gclip_result> res;
    std::vector<gclip_status> st;
    job.step(o, res, st);
    const auto once = distw::reference_norm(job.ranks[0], 2.0, 1.0);
    EXPECT_TRUE(oracle::rel_close(res[1].total_norm, once.total, 1e-6L));

    // The same job with every copy counted: the norm of a set in which each
    // replicated tensor appears `size` times and the tied one twice.
    std::vector<oracle::TestBuffer> twice = job.ranks[0].global;
    for (size_t g = 0; g < job.ranks[0].global.size(); ++g) {
        const auto k = job.ranks[0].kind[g];
        const int extra = k == distw::Kind::replicated ? size - 1 : k == distw::Kind::tied ? 1 : 0;
        for (int i = 0; i < extra; ++i)
            twice.push_back(job.ranks[0].global[g]);
    }
    const auto counted_twice = oracle::norms(twice, 2.0);
    Job naive(7, size, false);
    for (int r = 0; r < size; ++r) {
        for (auto &e : naive.ranks[r].entries)
            e.role = GCLIP_DIST_SHARDED;
        std::vector<int> gr, gs;
        distw::group_coords(naive.ranks[r].layout, gr, gs);
        gclip_dist_plan *p = nullptr;
        ASSERT_EQ(gclip_dist_plan_create_external(&p, naive.ranks[r].entries.data(),
                                                  naive.ranks[r].entries.size(), GCLIP_DEVICE_CPU,
                                                  gr.data(), gs.data(), gr.size()),
                  GCLIP_STATUS_SUCCESS);
        naive.plans[r].reset(p);
    }
    naive.step(o, res, st);
    EXPECT_TRUE(oracle::rel_close(res[0].total_norm, counted_twice.total, 1e-6L));
    EXPECT_FALSE(oracle::rel_close(res[0].total_norm, once.total, 1e-3L))
        << "the data cannot tell counting once from counting every copy";
}

TEST(DistExternal, NonFiniteOnOneRankMakesEveryRankSkip)
{
    for (float p : {2.0f, INFINITY})
        for (float bad : {NAN, INFINITY}) {
            SCOPED_TRACE(testing::Message() << "p " << p << " value " << bad);
            Job job(21, 4, true);
            job.ranks[3].local[1].set(0, bad);
            job.ranks[3].pristine[1].set(0, bad);
            const uint64_t before = job.checksum();
            std::vector<gclip_result> res;
            std::vector<gclip_status> st;
            job.step(options(0.01f, p), res, st);
            for (int r = 0; r < 4; ++r) {
                EXPECT_EQ(res[r].nonfinite, 1) << "rank " << r;
                EXPECT_EQ(res[r].applied, 0);
                EXPECT_EQ(distw::bits(res[r].total_norm), distw::bits(res[0].total_norm));
            }
            EXPECT_EQ(job.checksum(), before) << "a gradient was written";
        }
}

TEST(DistExternal, MismatchedOptionsAreReportedOnEveryRankAndNothingIsWritten)
{
    Job job(31, 3, false);
    const uint64_t before = job.checksum();
    std::vector<gclip_norm_options> o(3, options(0.01f, 2.0f));
    o[1].norm_type = 1.0f;
    for (gclip_status s : job.accumulate(o))
        EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
    job.gather();
    std::vector<gclip_result> res;
    std::vector<gclip_status> st;
    job.finish(o, res, st);
    for (int r = 0; r < 3; ++r) {
        EXPECT_EQ(st[r], GCLIP_STATUS_MISMATCH) << "rank " << r;
        EXPECT_EQ(res[r].applied, 0);
    }
    EXPECT_EQ(job.checksum(), before);
    // the report names the rank that differs, as seen from rank 0
    gclip_result r0;
    ASSERT_EQ(gclip_dist_get_result(job.plans[0].get(), &r0), GCLIP_STATUS_MISMATCH);
    const std::string msg = gclip_dist_last_error();
    EXPECT_NE(msg.find("group 0 rank 1 (another norm_type"), std::string::npos) << msg;
}

TEST(DistExternal, ARankWhoseOptionsAreRejectedPoisonsItsPeers)
{
    Job job(41, 3, true);
    const uint64_t before = job.checksum();
    std::vector<gclip_norm_options> o(3, options(0.01f, 2.0f));
    o[2].max_norm = -1.0f;
    const auto acc = job.accumulate(o);
    EXPECT_EQ(acc[0], GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(acc[2], GCLIP_STATUS_INVALID_ARGUMENT);
    job.gather();
    for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(gclip_dist_finalize(job.plans[r].get(), &o[r], nullptr), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(gclip_dist_apply_clip_factor(job.plans[r].get(), nullptr), GCLIP_STATUS_SUCCESS);
        gclip_result res;
        EXPECT_EQ(gclip_dist_get_result(job.plans[r].get(), &res), GCLIP_STATUS_MISMATCH);
        EXPECT_NE(std::string(gclip_dist_last_error()).find("rank 2 (its own call was rejected"),
                  std::string::npos)
            << gclip_dist_last_error();
    }
    EXPECT_EQ(job.checksum(), before);

    // the next step with good options is whole again
    std::vector<gclip_result> res;
    std::vector<gclip_status> st;
    job.step(options(0.01f, 2.0f), res, st);
    for (int r = 0; r < 3; ++r)
        EXPECT_EQ(st[r], GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
}

// A step whose factor is computed and left for the optimizer, then a step in
// which one rank's options are rejected and that rank finalizes with them too
// (the core refuses them): its slot says MISMATCH like its peers', so the
// first step's factor is not left pending there to be applied alone.
TEST(DistExternal, ARejectedStepLeavesNoEarlierFactorPendingOnTheRejectingRank)
{
    Job job(47, 3, true);
    const uint64_t before = job.checksum();
    const std::vector<gclip_norm_options> good(3, options(0.01f, 2.0f));
    for (gclip_status s : job.accumulate(good))
        ASSERT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
    job.gather();
    for (int r = 0; r < 3; ++r)
        ASSERT_EQ(gclip_dist_finalize(job.plans[r].get(), &good[r], nullptr), GCLIP_STATUS_SUCCESS)
            << gclip_dist_last_error();
    gclip_result first{};
    ASSERT_EQ(gclip_dist_get_result(job.plans[0].get(), &first), GCLIP_STATUS_SUCCESS);
    ASSERT_LT(first.scale, 1.0f); // a factor is pending on every rank

    std::vector<gclip_norm_options> o = good;
    o[0].norm_type = NAN;
    const auto acc = job.accumulate(o);
    EXPECT_EQ(acc[0], GCLIP_STATUS_INVALID_ARGUMENT);
    job.gather();
    EXPECT_EQ(gclip_dist_finalize(job.plans[0].get(), &o[0], nullptr),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("norm_type"), std::string::npos)
        << gclip_dist_last_error();
    for (int r = 1; r < 3; ++r)
        EXPECT_EQ(gclip_dist_finalize(job.plans[r].get(), &o[r], nullptr), GCLIP_STATUS_SUCCESS);
    for (int r = 0; r < 3; ++r) {
        SCOPED_TRACE(r);
        gclip_result res{};
        EXPECT_EQ(gclip_dist_get_result(job.plans[r].get(), &res), GCLIP_STATUS_MISMATCH);
        const gclip_device_result *slot = nullptr;
        ASSERT_EQ(gclip_dist_plan_device_result(job.plans[r].get(), &slot), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(slot->status, GCLIP_STATUS_MISMATCH);
        // no norm: not that of the partials that happened to match, which
        // differs from rank to rank
        EXPECT_TRUE(std::isnan(res.total_norm)) << res.total_norm;
        (void)gclip_dist_apply_clip_factor(job.plans[r].get(), nullptr);
    }
    EXPECT_EQ(job.checksum(), before) << "a rank applied a factor";
}

// A finalize rejected on one rank after a good accumulate and gather (its
// options: NaN max_norm, NULL, tensor_norms set) leaves that rank's slot at
// MISMATCH with no factor: its apply writes nothing. The gathered partials
// were sound, so a finalize of them with default options would have made a
// factor of max_norm 1.
TEST(DistExternal, ARejectedFinalizeAfterAGoodGatherLeavesNoFactor)
{
    float norms[8];
    for (int bad = 0; bad < 3; ++bad) {
        SCOPED_TRACE(bad);
        Job job(53, 3, true);
        const std::vector<gclip_norm_options> good(3, options(100.0f, 2.0f));
        for (gclip_status s : job.accumulate(good))
            ASSERT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        job.gather();
        gclip_norm_options o = good[0];
        o.max_norm = NAN;
        if (bad == 2) {
            o = good[0];
            o.tensor_norms = norms;
        }
        const uint64_t before = job.checksum();
        EXPECT_EQ(gclip_dist_finalize(job.plans[0].get(), bad == 1 ? nullptr : &o, nullptr),
                  GCLIP_STATUS_INVALID_ARGUMENT);
        gclip_result res{};
        EXPECT_EQ(gclip_dist_get_result(job.plans[0].get(), &res), GCLIP_STATUS_MISMATCH);
        EXPECT_NE(std::string(gclip_dist_last_error()).find("no factor is pending here"),
                  std::string::npos)
            << gclip_dist_last_error();
        EXPECT_TRUE(std::isnan(res.total_norm)) << res.total_norm;
        EXPECT_EQ(res.scale, 1.0f);
        (void)gclip_dist_apply_clip_factor(job.plans[0].get(), nullptr);
        EXPECT_EQ(job.checksum(), before) << "the rejecting rank applied a factor";
        // the next step with good options on every rank is whole again
        for (gclip_status s : job.accumulate(good))
            ASSERT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        job.gather();
        for (int r = 0; r < 3; ++r) {
            ASSERT_EQ(gclip_dist_finalize(job.plans[r].get(), &good[r], nullptr),
                      GCLIP_STATUS_SUCCESS)
                << gclip_dist_last_error();
            EXPECT_EQ(gclip_dist_get_result(job.plans[r].get(), &res), GCLIP_STATUS_SUCCESS);
            // above the defaults' max_norm 1, so a factor of the defaults
            // would have clipped
            EXPECT_GT(res.total_norm, 1.0f);
        }
    }
}

TEST(DistExternal, FinalizeWithOtherOptionsThanTheAccumulateIsAMismatch)
{
    Job job(43, 2, false);
    std::vector<gclip_norm_options> o(2, options(0.01f, 2.0f));
    job.accumulate(o);
    job.gather();
    o[0].nonfinite = GCLIP_NONFINITE_PROPAGATE;
    EXPECT_EQ(gclip_dist_finalize(job.plans[0].get(), &o[0], nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r;
    EXPECT_EQ(gclip_dist_get_result(job.plans[0].get(), &r), GCLIP_STATUS_MISMATCH);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("every gathered partial"), std::string::npos);
}

TEST(DistExternal, FactorThenApplyEqualsTheSameStepAppliedOnce)
{
    Job a(51, 2, true), b(51, 2, true);
    std::vector<gclip_result> ra, rb;
    std::vector<gclip_status> st;
    a.step(options(0.02f, 2.0f), ra, st);
    const std::vector<gclip_norm_options> o(2, options(0.02f, 2.0f));
    b.accumulate(o);
    b.gather();
    for (int r = 0; r < 2; ++r)
        ASSERT_EQ(gclip_dist_finalize(b.plans[r].get(), &o[r], nullptr), GCLIP_STATUS_SUCCESS);
    const uint64_t unapplied = b.checksum();
    for (int r = 0; r < 2; ++r) {
        gclip_result f;
        ASSERT_EQ(gclip_dist_get_result(b.plans[r].get(), &f), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(f.op, GCLIP_OP_FINALIZE);
        EXPECT_EQ(f.scale, ra[r].scale);
        ASSERT_EQ(gclip_dist_apply_clip_factor(b.plans[r].get(), nullptr), GCLIP_STATUS_SUCCESS);
    }
    EXPECT_NE(b.checksum(), unapplied);
    EXPECT_EQ(b.checksum(), a.checksum());
}

TEST(DistExternal, RebindMovesEveryPartOfThePlan)
{
    Job job(61, 2, true), moved(61, 2, true);
    std::vector<gclip_result> want, got;
    std::vector<gclip_status> st;
    job.step(options(0.02f, 2.0f), want, st);
    // fresh buffers with the pristine values, bound in place of the old ones
    std::vector<std::vector<oracle::TestBuffer>> fresh(2);
    for (int r = 0; r < 2; ++r) {
        fresh[r] = moved.ranks[r].pristine;
        std::vector<void *> data;
        for (auto &b : fresh[r])
            data.push_back(b.data());
        EXPECT_EQ(gclip_dist_plan_rebind(moved.plans[r].get(), data.data(), data.size() + 1, nullptr),
                  GCLIP_STATUS_INVALID_ARGUMENT);
        ASSERT_EQ(gclip_dist_plan_rebind(moved.plans[r].get(), data.data(), data.size(), nullptr),
                  GCLIP_STATUS_SUCCESS)
            << gclip_dist_last_error();
    }
    const uint64_t untouched = moved.checksum();
    moved.step(options(0.02f, 2.0f), got, st);
    EXPECT_EQ(moved.checksum(), untouched) << "the old buffers were written";
    for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(got[r].scale, want[r].scale);
        EXPECT_EQ(oracle::checksum(fresh[r]), job.ranks[r].checksum());
    }
}

TEST(DistExternal, ArgumentsAreCheckedAndNamed)
{
    Rank w = distw::make_rank(71, Layout{0, 2, 2, false});
    int ranks[2] = {0, 0}, sizes[2] = {2, 2};
    gclip_dist_plan *p = reinterpret_cast<gclip_dist_plan *>(1);
    auto create = [&](size_t groups) {
        return gclip_dist_plan_create_external(&p, w.entries.data(), w.entries.size(),
                                               GCLIP_DEVICE_CPU, ranks, sizes, groups);
    };
    EXPECT_EQ(create(0), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(p, nullptr);
    ranks[0] = 2;
    EXPECT_EQ(create(1), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("rank 2 of size 2"), std::string::npos);
    ranks[0] = 0;
    w.entries[3].group = 1;
    EXPECT_EQ(create(1), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("tensor 3"), std::string::npos);
    w.entries[3].group = 0;
    w.entries[2].role = static_cast<gclip_dist_role>(7);
    EXPECT_EQ(create(1), GCLIP_STATUS_INVALID_ARGUMENT);
    w.entries[2].role = GCLIP_DIST_SHARDED;
    w.entries[4].tensor = w.entries[1].tensor; // the same buffer twice
    EXPECT_EQ(create(1), GCLIP_STATUS_OVERLAP);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("overlap"), std::string::npos)
        << gclip_dist_last_error();
    w.entries[4].tensor = w.local[4].tensor();
    ASSERT_EQ(create(1), GCLIP_STATUS_SUCCESS);
    DistPlanPtr plan(p);

    gclip_norm_options o = options(0.1f, 2.0f);
    // a finalize before any accumulate says so (it said the options differed)
    EXPECT_EQ(gclip_dist_finalize(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("no gclip_dist_accumulate"),
              std::string::npos)
        << gclip_dist_last_error();
    EXPECT_EQ(gclip_dist_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_NOT_SUPPORTED);
    EXPECT_EQ(gclip_dist_accumulate(plan.get(), nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    float norms[64];
    o.tensor_norms = norms;
    EXPECT_EQ(gclip_dist_accumulate(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("tensor_norms"), std::string::npos);
    const gclip_partial *send = nullptr;
    EXPECT_EQ(gclip_dist_plan_send_partial(plan.get(), 1, &send), GCLIP_STATUS_INVALID_ARGUMENT);
    gclip_partial *buf = nullptr;
    size_t n = 0;
    EXPECT_EQ(gclip_dist_plan_gather_buffer(plan.get(), 0, &buf, &n), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(n, 2u);
    int rank = -1, size = -1;
    EXPECT_EQ(gclip_dist_plan_group(plan.get(), 0, &rank, &size), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(rank, 0);
    EXPECT_EQ(size, 2);
    EXPECT_EQ(gclip_dist_clip_grad_norm(nullptr, &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_dist_get_result(plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_dist_plan_destroy(nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_NE(gclip_dist_transports(), 0);
}

TEST(DistExternal, ARankWithNoTensorsStillContributesAValidPartial)
{
    const int ranks[1] = {1}, sizes[1] = {2};
    gclip_dist_plan *p = nullptr;
    ASSERT_EQ(gclip_dist_plan_create_external(&p, nullptr, 0, GCLIP_DEVICE_CPU, ranks, sizes, 1),
              GCLIP_STATUS_SUCCESS);
    DistPlanPtr empty(p);
    const gclip_norm_options o = options(0.1f, 2.0f);
    ASSERT_EQ(gclip_dist_accumulate(empty.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_partial *send = nullptr;
    ASSERT_EQ(gclip_dist_plan_send_partial(empty.get(), 0, &send), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(send->acc, 0.0);
    EXPECT_EQ(send->nonfinite, 0u);
    gclip_partial *buf = nullptr;
    size_t n = 0;
    ASSERT_EQ(gclip_dist_plan_gather_buffer(empty.get(), 0, &buf, &n), GCLIP_STATUS_SUCCESS);
    buf[0] = *send;
    buf[0].acc = 25.0; // the peer's sum of squares
    buf[1] = *send;
    ASSERT_EQ(gclip_dist_finalize(empty.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r;
    ASSERT_EQ(gclip_dist_get_result(empty.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.total_norm, 5.0f);
    // a rebind of its empty list, as gclip_plan_rebind takes it: no data
    // pointer is needed for no tensor
    EXPECT_EQ(gclip_dist_plan_rebind(empty.get(), nullptr, 0, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    EXPECT_EQ(gclip_dist_plan_rebind(empty.get(), nullptr, 1, nullptr),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("data is NULL"), std::string::npos)
        << gclip_dist_last_error();
}

TEST(DistExternal, TheResultNeverHoldsALocalNorm)
{
    // one group, every tensor counted: the case where the plan of the counted
    // tensors and the plan of every tensor hold the same list
    std::vector<oracle::TestBuffer> bufs;
    oracle::Rng rng(81);
    for (int64_t n : {1000, 70000}) {
        bufs.emplace_back(GCLIP_F32, n, 0);
        bufs.back().fill(rng, 1.0);
    }
    std::vector<gclip_dist_tensor> t;
    for (auto &b : bufs)
        t.push_back({b.tensor(), 0, GCLIP_DIST_SHARDED});
    const int ranks[1] = {0}, sizes[1] = {2};
    gclip_dist_plan *p = nullptr;
    ASSERT_EQ(gclip_dist_plan_create_external(&p, t.data(), t.size(), GCLIP_DEVICE_CPU, ranks,
                                              sizes, 1),
              GCLIP_STATUS_SUCCESS);
    DistPlanPtr plan(p);
    const gclip_norm_options o = options(0.1f, 2.0f);
    ASSERT_EQ(gclip_dist_accumulate(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r;
    ASSERT_EQ(gclip_dist_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.op, GCLIP_OP_NONE) << "the local norm reached the plan's result";
    EXPECT_EQ(r.has_norm, 0);
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_dist_plan_device_result(plan.get(), &slot), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(slot->flags & GCLIP_RESULT_LOCAL, 0);
}

TEST(DistExternal, CAndCppSeeTheSameLayout)
{
    size_t group = 0, role = 0;
    EXPECT_EQ(gclip_dist_header_c11_layout(&group, &role), sizeof(gclip_dist_tensor));
    EXPECT_EQ(group, offsetof(gclip_dist_tensor, group));
    EXPECT_EQ(role, offsetof(gclip_dist_tensor, role));
}

} // namespace
