// main of the MPI suite: every rank runs every test (the step calls are
// collectives), rank 0 prints the usual report and the other ranks print
// only their failures, prefixed with their rank. The exit status is the
// worst over all ranks, so a failure on any rank fails the run.
#include <mpi.h>

#include <gtest/gtest.h>

#include <cstdio>

namespace {

class FailuresOnly : public ::testing::EmptyTestEventListener {
public:
    explicit FailuresOnly(int rank) : rank_(rank) {}

    void OnTestPartResult(const ::testing::TestPartResult &r) override
    {
        if (!r.failed())
            return;
        std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                     r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
    }

    void OnTestEnd(const ::testing::TestInfo &t) override
    {
        if (t.result()->Failed())
            std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, t.test_suite_name(), t.name());
    }

private:
    int rank_;
};

} // namespace

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank != 0) {
        auto &listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new FailuresOnly(rank));
    }
    int local = RUN_ALL_TESTS();
    int worst = 0;
    MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0 && worst != local)
        std::fprintf(stderr, "another rank failed (see its [rank N] lines)\n");
    MPI_Finalize();
    return worst;
}
