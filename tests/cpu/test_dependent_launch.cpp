// When a CUDA plan makes its scale kernel a programmatic dependent launch
// (gclip_dependent_launch_wanted, asked once at plan creation): from compute
// capability 9.0, unless GCLIP_DEPENDENT_LAUNCH is "0". The launches
// themselves need a device (tests/gpu, GpuDependentLaunchTest).
#include "gclip_internal.h"

#include <gtest/gtest.h>

TEST(DependentLaunch, OnFromComputeCapabilityNineWhenUnset)
{
    EXPECT_EQ(gclip_dependent_launch_wanted(7, nullptr), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(8, nullptr), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(9, nullptr), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(10, nullptr), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(12, nullptr), 1);
}

TEST(DependentLaunch, ZeroTurnsItOffEverywhere)
{
    for (int major : {7, 8, 9, 10, 12})
        EXPECT_EQ(gclip_dependent_launch_wanted(major, "0"), 0) << "compute capability " << major;
}

TEST(DependentLaunch, OtherSettingsKeepTheDefault)
{
    for (const char *s : {"", "1", "yes", "00", " 0", "0 "}) {
        EXPECT_EQ(gclip_dependent_launch_wanted(8, s), 0) << "'" << s << "' on 8.x";
        EXPECT_EQ(gclip_dependent_launch_wanted(9, s), 1) << "'" << s << "' on 9.x";
    }
}
