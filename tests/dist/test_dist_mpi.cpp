// The MPI transport, run under mpirun with 1 to 4 ranks. Each rank holds its
// pieces of one seeded global set (dist_world.hpp) and every check runs on
// every rank: results are all-gathered and compared bit for bit.
//
// Every rank must make the same collective calls in the same order, so the
// checks between two collectives are EXPECTs, never ASSERTs: a rank that
// returned early from a test would leave its peers waiting.
#include "dist_world.hpp"
#include "plan_util.hpp"

#include <mpi.h>

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

using distw::Layout;
using distw::Rank;

namespace {

struct DistPlanDeleter {
    void operator()(gclip_dist_plan *p) const { gclip_dist_plan_destroy(p); }
};
using DistPlanPtr = std::unique_ptr<gclip_dist_plan, DistPlanDeleter>;

int world_rank()
{
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int world_size()
{
    int n = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

// Every rank's value of `v`.
std::vector<uint64_t> everyone(uint64_t v)
{
    std::vector<uint64_t> all(static_cast<size_t>(world_size()));
    MPI_Allgather(&v, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
    return all;
}

// The communicators of a layout: the world, and the EP groups (consecutive
// ranks) when experts form their own group. Freed with the object.
struct Comms {
    std::vector<MPI_Comm> comms{MPI_COMM_WORLD};
    MPI_Comm ep = MPI_COMM_NULL;

    explicit Comms(const Layout &l)
    {
        if (!l.two_groups)
            return;
        MPI_Comm_split(MPI_COMM_WORLD, l.rank / l.ep, l.rank, &ep);
        comms.push_back(ep);
    }
    ~Comms()
    {
        if (ep != MPI_COMM_NULL)
            MPI_Comm_free(&ep);
    }
    Comms(const Comms &) = delete;
    Comms &operator=(const Comms &) = delete;
};

Layout layout(bool two_groups)
{
    Layout l;
    l.rank = world_rank();
    l.size = world_size();
    l.ep = distw::default_ep(l.size);
    l.two_groups = two_groups;
    return l;
}

// This rank's data, its communicators and its plan.
struct Job {
    Rank w;
    Comms comms;
    DistPlanPtr plan;
    gclip_status created = GCLIP_STATUS_SUCCESS;

    // count_every_copy: every tensor SHARDED, as a clip that ignores
    // replication would count them
    Job(const distw::Global &global, bool two_groups, bool count_every_copy = false)
        : w(distw::make_rank(global, layout(two_groups))), comms(w.layout)
    {
        if (count_every_copy)
            for (auto &e : w.entries)
                e.role = GCLIP_DIST_SHARDED;
        gclip_dist_plan *p = nullptr;
        created = gclip_dist_plan_create_mpi(&p, w.entries.data(), w.entries.size(),
                                             comms.comms.data(), comms.comms.size());
        EXPECT_EQ(created, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        plan.reset(p);
        if (p)
            gclip_dist_plan_set_num_threads(p, 1); // ranks share the cores
    }
};

gclip_norm_options options(float max_norm, float p, float inv_scale = 1.0f)
{
    gclip_norm_options o = testutil::norm_options(max_norm, p);
    o.inv_scale = inv_scale;
    return o;
}

const distw::Global &global_set(uint64_t seed)
{
    static uint64_t cached_seed = ~0ull;
    static distw::Global cached;
    if (seed != cached_seed) {
        cached = distw::make_global(seed);
        cached_seed = seed;
    }
    return cached;
}

// The bits every rank sees of the result, folded: equal on all ranks.
uint64_t result_bits(const gclip_result &r)
{
    return (uint64_t(distw::bits(r.total_norm)) << 32) ^ distw::bits(r.scale) ^
           (uint64_t(distw::bits(r.clip_coef)) << 16) ^ uint64_t(r.nonfinite) << 63;
}

TEST(DistMpi, EqualsTheSingleProcessPlanOnEveryRankBitForBitInEveryRun)
{
    for (bool two_groups : {false, true})
        for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
            SCOPED_TRACE(testing::Message() << "p " << p << ", groups " << (two_groups ? 2 : 1));
            const auto &global = global_set(1000);
            const gclip_norm_options o = options(0.05f, p, 0.5f);
            uint64_t first_run = 0;
            // two runs, each with plans built afresh
            for (int run = 0; run < 2; ++run) {
                Job job(global, two_groups);
                const auto want = distw::reference_norm(job.w, p, 0.5);
                const gclip_result single = distw::single_process_result(job.w, o);
                EXPECT_EQ(gclip_dist_clip_grad_norm(job.plan.get(), &o, nullptr),
                          GCLIP_STATUS_SUCCESS)
                    << gclip_dist_last_error();
                gclip_result r{};
                EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_SUCCESS);
                EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L))
                    << r.total_norm << " vs oracle " << static_cast<double>(want.total);
                EXPECT_TRUE(oracle::rel_close(r.total_norm, single.total_norm, 1e-6L))
                    << r.total_norm << " vs single process " << single.total_norm;
                EXPECT_LT(r.clip_coef, 1.0f); // clipped (scale also holds inv_scale)
                EXPECT_EQ(distw::bits(r.scale), distw::bits(distw::expected_factor(r, o)));
                EXPECT_EQ(r.applied, 1);
                EXPECT_EQ(distw::misclipped(job.w, distw::expected_factor(r, o)), 0);
                const auto all = everyone(result_bits(r));
                for (size_t k = 0; k < all.size(); ++k)
                    EXPECT_EQ(all[k], all[0]) << "rank " << k << " differs from rank 0";
                if (run == 0)
                    first_run = all[0];
                else
                    EXPECT_EQ(all[0], first_run) << "the second run differs from the first";
                // the replicated tensors are clipped identically everywhere
                uint64_t h = 0;
                for (size_t k = 0; k < job.w.local.size(); ++k)
                    if (job.w.kind[job.w.pieces[k].global] == distw::Kind::replicated)
                        h = h * 31 + oracle::checksum(&job.w.entries[k].tensor, 1);
                const auto sums = everyone(h);
                for (uint64_t s : sums)
                    EXPECT_EQ(s, sums[0]);
            }
        }
}

TEST(DistMpi, ReplicatedAndTiedTensorsCountOnce)
{
    const auto &global = global_set(1001);
    const gclip_norm_options o = options(1e9f, 2.0f);
    Job once(global, false);
    EXPECT_EQ(gclip_dist_compute_clip_factor(once.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r{};
    EXPECT_EQ(gclip_dist_get_result(once.plan.get(), &r), GCLIP_STATUS_SUCCESS);
    const auto want = distw::reference_norm(once.w, 2.0, 1.0);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L))
        << r.total_norm << " vs " << static_cast<double>(want.total);

    // every copy counted, as a clip that ignores replication would
    Job naive(global, false, true);
    gclip_result n{};
    EXPECT_EQ(gclip_dist_compute_clip_factor(naive.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_dist_get_result(naive.plan.get(), &n), GCLIP_STATUS_SUCCESS);
    std::vector<oracle::TestBuffer> copies = global.tensors;
    const int size = world_size();
    for (size_t g = 0; g < global.tensors.size(); ++g) {
        const int extra = global.kind[g] == distw::Kind::replicated ? size - 1
                          : global.kind[g] == distw::Kind::tied && size > 1 ? 1 : 0;
        for (int i = 0; i < extra; ++i)
            copies.push_back(global.tensors[g]);
    }
    const auto counted_each = oracle::norms(copies, 2.0);
    EXPECT_TRUE(oracle::rel_close(n.total_norm, counted_each.total, 1e-6L));
    if (size > 1)
        EXPECT_FALSE(oracle::rel_close(n.total_norm, want.total, 1e-3L))
            << "the data cannot tell counting once from counting every copy";
}

TEST(DistMpi, NonFiniteOnOneRankMakesEveryRankSkip)
{
    const auto &global = global_set(1002);
    for (float p : {2.0f, INFINITY})
        for (float bad : {NAN, INFINITY}) {
            SCOPED_TRACE(testing::Message() << "p " << p << ", value " << bad);
            Job job(global, true);
            // the last rank's largest shard gets the value
            if (job.w.layout.rank == job.w.layout.size - 1) {
                job.w.local[1].set(job.w.local[1].numel() / 2, bad);
                job.w.pristine[1].set(job.w.local[1].numel() / 2, bad);
            }
            const uint64_t before = job.w.checksum();
            const gclip_norm_options o = options(0.01f, p);
            EXPECT_EQ(gclip_dist_clip_grad_norm(job.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
            gclip_result r{};
            EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_SUCCESS);
            EXPECT_EQ(r.nonfinite, 1);
            EXPECT_EQ(r.applied, 0);
            EXPECT_EQ(job.w.checksum(), before) << "a gradient was written";
            const auto all = everyone(result_bits(r));
            for (uint64_t a : all)
                EXPECT_EQ(a, all[0]);

            // under ERROR the result says so on every rank
            gclip_norm_options err = o;
            err.nonfinite = GCLIP_NONFINITE_ERROR;
            EXPECT_EQ(gclip_dist_clip_grad_norm(job.plan.get(), &err, nullptr),
                      GCLIP_STATUS_SUCCESS);
            EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_NONFINITE);
            EXPECT_EQ(job.w.checksum(), before);
        }
}

TEST(DistMpi, MismatchedOptionsGiveAClearStatusOnEveryRank)
{
    if (world_size() < 2)
        GTEST_SKIP() << "one rank cannot disagree with another";
    const auto &global = global_set(1003);
    for (int what = 0; what < 2; ++what) {
        SCOPED_TRACE(what == 0 ? "norm type" : "non-finite policy");
        Job job(global, true);
        const uint64_t before = job.w.checksum();
        gclip_norm_options o = options(0.01f, 2.0f);
        if (world_rank() == 1) {
            if (what == 0)
                o.norm_type = 1.0f;
            else
                o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
        }
        EXPECT_EQ(gclip_dist_clip_grad_norm(job.plan.get(), &o, nullptr), GCLIP_STATUS_MISMATCH);
        const std::string msg = gclip_dist_last_error();
        EXPECT_NE(msg.find(world_rank() == 1 ? "group 0 rank 0 (another" : "group 0 rank 1 (another"),
                  std::string::npos)
            << msg;
        gclip_result r{};
        EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_MISMATCH);
        EXPECT_EQ(r.applied, 0);
        EXPECT_EQ(job.w.checksum(), before) << "a gradient was written";
    }
}

// After a step one rank's options spoiled: good options clip again, on every
// rank (the gradients were `before` until then).
void expect_the_job_carries_on(Job &job, uint64_t before)
{
    const gclip_norm_options o = options(0.01f, 2.0f);
    EXPECT_EQ(gclip_dist_clip_grad_norm(job.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    EXPECT_NE(job.w.checksum(), before);
}

// The last rank's options are rejected (max_norm -1); the others keep them.
gclip_norm_options options_rejected_on_the_last_rank()
{
    gclip_norm_options o = options(0.01f, 2.0f);
    if (world_rank() == world_size() - 1)
        o.max_norm = -1.0f;
    return o;
}

TEST(DistMpi, ARankWhoseOptionsAreRejectedDoesNotLeaveItsPeersWaiting)
{
    const auto &global = global_set(1004);
    Job job(global, true);
    const uint64_t before = job.w.checksum();
    const bool last = world_rank() == world_size() - 1;
    const gclip_norm_options o = options_rejected_on_the_last_rank();
    const gclip_status s = gclip_dist_clip_grad_norm(job.plan.get(), &o, nullptr);
    if (last) {
        EXPECT_EQ(s, GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(std::string(gclip_dist_last_error()).find("max_norm"), std::string::npos)
            << gclip_dist_last_error();
    } else {
        EXPECT_EQ(s, GCLIP_STATUS_MISMATCH);
        EXPECT_NE(std::string(gclip_dist_last_error()).find("its own call was rejected"),
                  std::string::npos)
            << gclip_dist_last_error();
    }
    EXPECT_EQ(job.w.checksum(), before);
    expect_the_job_carries_on(job, before);
}

// A factor computed by every rank, then a step whose options one rank's call
// rejects: no rank may keep the first factor pending, or the rejected rank
// alone would apply it and the ranks' gradients would part. Every slot says
// MISMATCH, the rejected rank's saying that its own part failed, and an
// apply writes nothing anywhere.
TEST(DistMpi, ARejectedStepLeavesNoEarlierFactorPendingOnAnyRank)
{
    const auto &global = global_set(1007);
    Job job(global, true);
    const uint64_t before = job.w.checksum();
    const bool last = world_rank() == world_size() - 1;
    const gclip_norm_options good = options(0.01f, 2.0f);
    EXPECT_EQ(gclip_dist_compute_clip_factor(job.plan.get(), &good, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    const gclip_norm_options o = options_rejected_on_the_last_rank();
    const gclip_status s = gclip_dist_compute_clip_factor(job.plan.get(), &o, nullptr);
    EXPECT_EQ(s, last ? GCLIP_STATUS_INVALID_ARGUMENT : GCLIP_STATUS_MISMATCH);
    gclip_result r{};
    EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_MISMATCH);
    if (last)
        EXPECT_NE(std::string(gclip_dist_last_error()).find("this rank's own part"),
                  std::string::npos)
            << gclip_dist_last_error();
    EXPECT_EQ(r.applied, 0);
    (void)gclip_dist_apply_clip_factor(job.plan.get(), nullptr);
    EXPECT_NE(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_SUCCESS); // nothing pending
    EXPECT_EQ(r.applied, 0);
    EXPECT_EQ(job.w.checksum(), before) << "rank " << world_rank();
    expect_the_job_carries_on(job, before);
}

TEST(DistMpi, GroupsThatDisagreeAreRejectedWhenThePlanIsBuilt)
{
    if (world_size() < 2)
        GTEST_SKIP() << "one rank cannot disagree with another";
    const auto &global = global_set(1005);
    Rank w = distw::make_rank(global, layout(false));
    // rank 0 passes one group, the others a second (their own, of size 1)
    std::vector<MPI_Comm> comms{MPI_COMM_WORLD};
    if (world_rank() != 0)
        comms.push_back(MPI_COMM_SELF);
    gclip_dist_plan *p = nullptr;
    EXPECT_EQ(gclip_dist_plan_create_mpi(&p, w.entries.data(), w.entries.size(), comms.data(),
                                         comms.size()),
              GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(p, nullptr);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("other groups"), std::string::npos)
        << gclip_dist_last_error();

    // a rank that cannot build its plan still tells the others
    const bool last = world_rank() == world_size() - 1;
    if (last)
        w.entries[1].tensor = w.entries[2].tensor; // the same buffer twice
    EXPECT_EQ(gclip_dist_plan_create_mpi(&p, w.entries.data(), w.entries.size(), comms.data(), 1),
              last ? GCLIP_STATUS_OVERLAP : GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(p, nullptr);
    if (!last)
        EXPECT_NE(std::string(gclip_dist_last_error()).find("could not build its plan"),
                  std::string::npos)
            << gclip_dist_last_error();

    // a rank given MPI_COMM_NULL for a later group still joins the first
    // group's exchange, so its peers there fail too instead of waiting
    Rank w2 = distw::make_rank(global, layout(false));
    const std::vector<MPI_Comm> with_null{MPI_COMM_WORLD, last ? MPI_COMM_NULL : MPI_COMM_SELF};
    EXPECT_EQ(gclip_dist_plan_create_mpi(&p, w2.entries.data(), w2.entries.size(),
                                         with_null.data(), with_null.size()),
              last ? GCLIP_STATUS_INVALID_ARGUMENT : GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(p, nullptr);
    if (last)
        EXPECT_NE(std::string(gclip_dist_last_error()).find("MPI_COMM_NULL"), std::string::npos)
            << gclip_dist_last_error();

    // a NULL plan pointer on one rank: its own INVALID_ARGUMENT (no crash),
    // and the others hear of it in the exchange
    Rank w3 = distw::make_rank(global, layout(false));
    p = nullptr;
    EXPECT_EQ(gclip_dist_plan_create_mpi(last ? nullptr : &p, w3.entries.data(), w3.entries.size(),
                                         comms.data(), 1),
              last ? GCLIP_STATUS_INVALID_ARGUMENT : GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(p, nullptr);
    if (last)
        EXPECT_NE(std::string(gclip_dist_last_error()).find("plan is NULL"), std::string::npos)
            << gclip_dist_last_error();
}

// A step refused for max_norm_ptr inside the slot of the plan that
// finalizes (which the group plans' accumulates alone would not see: it is
// checked before the gather, so the rank sends the poison) leaves no earlier
// factor pending: the apply that follows is refused and writes nothing, on
// every rank.
TEST(DistMpi, AFinalizeRefusedInsideAStepLeavesNoEarlierFactor)
{
    const auto &global = global_set(1011);
    Job job(global, false);
    ASSERT_NE(job.plan, nullptr);
    const gclip_norm_options o = options(0.01f, 2.0f);
    ASSERT_EQ(gclip_dist_compute_clip_factor(job.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    gclip_result r{};
    ASSERT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_SUCCESS);
    ASSERT_LT(r.scale, 1.0f) << "the first step must leave a factor pending";
    const uint64_t before = job.w.checksum();
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_dist_plan_device_result(job.plan.get(), &slot), GCLIP_STATUS_SUCCESS);
    gclip_norm_options bad = o;
    bad.max_norm_ptr = &slot->scale;
    EXPECT_EQ(gclip_dist_compute_clip_factor(job.plan.get(), &bad, nullptr),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_dist_last_error()).find("max_norm_ptr"), std::string::npos)
        << gclip_dist_last_error();
    EXPECT_EQ(gclip_dist_get_result(job.plan.get(), &r), GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(gclip_dist_apply_clip_factor(job.plan.get(), nullptr), GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(job.w.checksum(), before) << "the earlier factor was applied";
    // the next good step is whole again, and its factor is applied
    ASSERT_EQ(gclip_dist_compute_clip_factor(job.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    EXPECT_EQ(gclip_dist_apply_clip_factor(job.plan.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_NE(job.w.checksum(), before);
}

TEST(DistMpi, FactorThenApplyEqualsTheClip)
{
    const auto &global = global_set(1006);
    Job a(global, true), b(global, true);
    const gclip_norm_options o = options(0.03f, 2.0f);
    EXPECT_EQ(gclip_dist_clip_grad_norm(a.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_dist_compute_clip_factor(b.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const uint64_t unapplied = b.w.checksum();
    gclip_result fa{}, fb{};
    EXPECT_EQ(gclip_dist_get_result(a.plan.get(), &fa), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_dist_get_result(b.plan.get(), &fb), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(fb.op, GCLIP_OP_FINALIZE);
    EXPECT_EQ(fb.scale, fa.scale);
    EXPECT_EQ(b.w.checksum(), unapplied);
    EXPECT_EQ(gclip_dist_apply_clip_factor(b.plan.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(b.w.checksum(), a.w.checksum());
}

} // namespace
