// When a CUDA plan makes its scale kernel a programmatic dependent launch
// (gclip_dependent_launch_wanted, asked once at plan creation): only when
// GCLIP_DEPENDENT_LAUNCH is "1", and only from compute capability 9.0. The
// launches themselves need a device (tests/gpu, GpuDependentLaunchTest).
#include "gclip_internal.h"

#include <gtest/gtest.h>

TEST(DependentLaunch, OffWhenUnset)
{
    for (int major : {7, 8, 9, 10, 12})
        EXPECT_EQ(gclip_dependent_launch_wanted(major, nullptr), 0) << "compute capability " << major;
}

TEST(DependentLaunch, OneTurnsItOnFromComputeCapabilityNine)
{
    EXPECT_EQ(gclip_dependent_launch_wanted(7, "1"), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(8, "1"), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(9, "1"), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(10, "1"), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(12, "1"), 1);
}

TEST(DependentLaunch, OtherSettingsKeepItOff)
{
    for (const char *s : {"", "0", "yes", "01", " 1", "1 ", "true"}) {
        EXPECT_EQ(gclip_dependent_launch_wanted(8, s), 0) << "'" << s << "' on 8.x";
        EXPECT_EQ(gclip_dependent_launch_wanted(9, s), 0) << "'" << s << "' on 9.x";
    }
}
