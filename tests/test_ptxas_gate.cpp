// test_ptxas_gate.cpp: the resource gate of the nvcc check (simt/ptxas_gate.h) on ptxas -v text
// as nvcc 13 prints it (the nvcc check runs it on the real output, and on the deliberately bad
// kernels of tests/bad_resources.cuh, which it must reject).
#include <gtest/gtest.h>

#include <string>

#include "simt/ptxas_gate.h"

namespace {

const char* kPtxas =
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function '_Z2tkILi64EEvPf' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z2tkILi64EEvPf\n"
    "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 10 registers, used 1 barriers, 256 bytes smem, 360 bytes cmem[0]\n"
    "ptxas info    : Compiling entry function '_Z2tkILi16EEvPf' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z2tkILi16EEvPf\n"
    "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 12 registers, used 1 barriers, 64 bytes smem, 360 bytes cmem[0]\n"
    "ptxas info    : Compiling entry function '_Z5spillPfi' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z5spillPfi\n"
    "    608 bytes stack frame, 1472 bytes spill stores, 1496 bytes spill loads\n"
    "ptxas info    : Used 32 registers, used 0 barriers, 608 bytes cumulative stack size, 364 bytes cmem[0]\n"
    "ptxas info    : Compiling entry function '_ZN2ns6kernelEPf' for 'sm_90'\n"
    "ptxas info    : Function properties for _ZN2ns6kernelEPf\n"
    "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 128 registers, used 0 barriers\n";

TEST(PtxasGate, BaseNamesOfKernelsAndLaunchesAgree) {
    EXPECT_EQ(ptxas_gate::base_name("_Z2tkILi64EEvPf"), "tk");
    EXPECT_EQ(ptxas_gate::base_name("_Z5spillPfi"), "spill");
    EXPECT_EQ(ptxas_gate::base_name("_ZN2ns6kernelEPf"), "kernel");
    EXPECT_EQ(ptxas_gate::launch_base_name("tk<64>"), "tk");
    EXPECT_EQ(ptxas_gate::launch_base_name("ns::kernel"), "kernel");
    EXPECT_EQ(ptxas_gate::launch_base_name("(pick ? a : b)"), "");
}

TEST(PtxasGate, ParsesRegistersSpillsStackAndSharedMemory) {
    ptxas_gate::Table t;
    ptxas_gate::parse_ptxas(kPtxas, t);
    ASSERT_EQ(t.size(), 3u);
    const auto& tk = t.at("tk").at("sm_80");  // the largest of the two instantiations
    EXPECT_EQ(tk.registers, 12);
    EXPECT_EQ(tk.shared, 256);
    EXPECT_EQ(tk.spill_stores, 0);
    const auto& spill = t.at("spill").at("sm_80");
    EXPECT_EQ(spill.registers, 32);
    EXPECT_EQ(spill.stack, 608);
    EXPECT_EQ(spill.spill_stores, 1472);
    EXPECT_EQ(spill.spill_loads, 1496);
    EXPECT_EQ(spill.shared, 0);
    EXPECT_EQ(t.at("kernel").at("sm_90").registers, 128);
}

TEST(PtxasGate, SpillsFailEvenWithoutALaunch) {
    ptxas_gate::Table t;
    ptxas_gate::parse_ptxas(kPtxas, t);
    const auto v = ptxas_gate::check(t, {});
    ASSERT_EQ(v.failures.size(), 1u);
    EXPECT_NE(v.failures[0].find("spill: 1472 bytes of spill stores and 1496 of spill loads on sm_80"), std::string::npos)
        << v.failures[0];
    EXPECT_NE(v.headline.find("most registers: 128 (kernel, sm_90)"), std::string::npos) << v.headline;
}

TEST(PtxasGate, RegistersTimesTheLargestBlockMustFitTheSM) {
    ptxas_gate::Table t;
    ptxas_gate::parse_ptxas(kPtxas, t);
    t.erase("spill");
    // 128 registers x 512 threads = 65,536: fits exactly; 544 threads do not.
    auto v = ptxas_gate::check(t, ptxas_gate::parse_launches("ns::kernel\t512\t0\t-1\n"));
    EXPECT_TRUE(v.failures.empty());
    v = ptxas_gate::check(t, ptxas_gate::parse_launches("ns::kernel\t512\t0\t-1\nns::kernel\t544\t0\t-1\n"));
    ASSERT_EQ(v.failures.size(), 1u);
    EXPECT_NE(v.failures[0].find("128 registers per thread on sm_90 times its largest launch of 544 threads need 69632"),
              std::string::npos)
        << v.failures[0];
}

TEST(PtxasGate, StaticPlusDynamicSharedMemoryMustFitTheLaunchsLimit) {
    ptxas_gate::Table t;
    ptxas_gate::parse_ptxas(kPtxas, t);
    t.erase("spill");
    // tk has 256 bytes of static shared memory: 48 KiB - 256 of dynamic is the default limit.
    EXPECT_TRUE(ptxas_gate::check(t, ptxas_gate::parse_launches("tk<16>\t32\t48896\t-1\n")).failures.empty());
    auto v = ptxas_gate::check(t, ptxas_gate::parse_launches("tk<16>\t32\t48900\t-1\n"));
    ASSERT_EQ(v.failures.size(), 1u);
    EXPECT_NE(v.failures[0].find("tk: a launch asks for 48900 bytes of dynamic shared memory"), std::string::npos)
        << v.failures[0];
    // With the opt-in attribute the attribute is the limit, and static + attribute must fit 163 KiB.
    EXPECT_TRUE(ptxas_gate::check(t, ptxas_gate::parse_launches("tk<16>\t32\t100000\t100000\n")).failures.empty());
    v = ptxas_gate::check(t, ptxas_gate::parse_launches("tk<16>\t32\t100000\t166912\n"));
    ASSERT_EQ(v.failures.size(), 1u);
    EXPECT_NE(v.failures[0].find("exceed sm_80's 166912 per block"), std::string::npos) << v.failures[0];
}

TEST(PtxasGate, OccupancyOfTheLargestLaunch) {
    const auto& a80 = ptxas_gate::kArchs[0];
    EXPECT_DOUBLE_EQ(ptxas_gate::occupancy(a80, 10, 32, 0), 0.5);     // 32 blocks of one warp
    EXPECT_DOUBLE_EQ(ptxas_gate::occupancy(a80, 32, 256, 0), 1.0);    // 8 blocks of 8 warps
    EXPECT_DOUBLE_EQ(ptxas_gate::occupancy(a80, 128, 256, 0), 0.25);  // registers: 2 blocks of 8 warps
    EXPECT_DOUBLE_EQ(ptxas_gate::occupancy(a80, 32, 256, 40 * 1024), 0.5);  // shared memory: 4 blocks
    ptxas_gate::Table t;
    ptxas_gate::parse_ptxas(kPtxas, t);
    const auto v = ptxas_gate::check(t, ptxas_gate::parse_launches("tk<64>\t32\t0\t-1\n"));
    EXPECT_NE(v.tsv.find("tk\tsm_80\t12\t0\t0\t0\t256\t32\t0\t0.500\n"), std::string::npos) << v.tsv;
}

}  // namespace
