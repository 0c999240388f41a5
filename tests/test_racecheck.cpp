// test_racecheck.cpp: racecheck, the ThreadSanitizer build of the kernel tests (make test-tsan;
// this file is compiled in that build only).
//
// Every CUDA thread is a TSan fiber and the layer tells TSan where CUDA orders threads (simt.cpp,
// SIMT_RACECHECK), so an access pair that a GPU does not order is a TSan data race report with
// both stack traces, whatever order the fibers ran in here. Two halves:
//   - each deliberately racy kernel of tests/racy_kernels.cuh runs in a child process with
//     TSAN_OPTIONS=halt_on_error=1, which must die with a data race report naming the kernel in
//     both stacks; its correct twin runs in this process and must be clean;
//   - every test of this binary (the SIMT layer's, the GPT and MoE kernels', the diagnostics', a
//     training step's) fails when TSan reported anything while it ran (the listener below), so
//     the project's kernels are checked by the tests that already run them.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/racy_kernels.cuh"
#include "tests/test_util.h"

#if !defined(__SANITIZE_THREAD__)
#error "tests/test_racecheck.cpp belongs to the ThreadSanitizer build (make test-tsan)"
#endif

namespace {
std::atomic<int> g_tsan_reports{0};
}  // namespace

// TSan calls this (a weak function of its runtime) for every report it prints.
extern "C" void __tsan_on_report(void*) { g_tsan_reports.fetch_add(1); }

namespace {

// Fails the running test if TSan reported anything during it. Inserted before the default
// printer, so that "[  FAILED  ]" is what the log shows for such a test.
class TsanReportListener : public ::testing::EmptyTestEventListener {
    int before_ = 0;
    void OnTestStart(const ::testing::TestInfo&) override { before_ = g_tsan_reports.load(); }
    void OnTestEnd(const ::testing::TestInfo&) override {
        const int n = g_tsan_reports.load() - before_;
        if (n > 0)
            ADD_FAILURE() << "ThreadSanitizer reported " << n << " problem" << (n == 1 ? "" : "s")
                          << " while this test ran (the report is printed above)";
    }
};

const bool g_listener_installed = [] {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    ::testing::TestEventListener* printer = listeners.Release(listeners.default_result_printer());
    listeners.Append(new TsanReportListener);
    if (printer != nullptr) listeners.Append(printer);
    return true;
}();

using test_util::DeviceBuffer;

std::vector<float> iota_floats(int n) {
    std::vector<float> v((size_t)n);
    for (int i = 0; i < n; ++i) v[(size_t)i] = (float)i;
    return v;
}

// The racy kernel runs in a child (gtest's threadsafe death-test style re-executes this binary,
// so TSAN_OPTIONS is read afresh): TSan must stop it at the first report, exit code 66.
class Racecheck : public ::testing::Test {
protected:
    void SetUp() override {
        GTEST_FLAG_SET(death_test_style, "threadsafe");
        const char* old = getenv("TSAN_OPTIONS");
        saved_ = old != nullptr ? old : "";
        had_ = old != nullptr;
        setenv("TSAN_OPTIONS", (saved_ + (saved_.empty() ? "" : ":") + "halt_on_error=1:exitcode=66").c_str(), 1);
        reports_ = g_tsan_reports.load();
    }
    void TearDown() override {
        if (had_) setenv("TSAN_OPTIONS", saved_.c_str(), 1);
        else unsetenv("TSAN_OPTIONS");
        simt::set_worker_threads(1);
        (void)cudaGetLastError();
    }
    // No report in this process since SetUp (the correct twins run here).
    void expect_clean() { EXPECT_EQ(g_tsan_reports.load(), reports_) << "TSan reported a correct kernel"; }
    std::string saved_;
    bool had_ = false;
    int reports_ = 0;
};

// A data race report whose two accesses are both in `kernel` (both stack traces), by two CUDA
// threads the report names.
std::string race_in(const std::string& kernel) {
    return "WARNING: ThreadSanitizer: data race.*" + kernel + ".*Previous (write|read|atomic).*" + kernel +
           ".*thread \\([0-9]+,[0-9]+,[0-9]+\\) block \\([0-9]+,[0-9]+,[0-9]+\\) " + kernel.substr(0, 8);
}

// ================================================================== within a block

TEST_F(Racecheck, SharedMemoryReadWithoutABarrierIsARace) {
    const int n = 64;
    const auto racy = [&] {
        DeviceBuffer<float> in(iota_floats(n)), out(n);
        racy_shared_neighbour_kernel<<<1, n, sizeof(float) * n>>>(out.ptr, in.ptr, n);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_shared_neighbour_kernel"));
    DeviceBuffer<float> in(iota_floats(n)), out(n);
    synced_shared_neighbour_kernel<<<1, n, sizeof(float) * n>>>(out.ptr, in.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int i = 0; i + 1 < n; ++i) EXPECT_EQ(o[(size_t)i], (float)(i + 1));
    expect_clean();
}

TEST_F(Racecheck, WarpsReadModifyWriteOneSharedArrayIsARace) {
    const int threads = 128;
    const auto racy = [&] {
        DeviceBuffer<float> in(iota_floats(threads)), out(32);
        racy_warps_accumulate_kernel<<<1, threads>>>(out.ptr, in.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_warps_accumulate_kernel"));
    DeviceBuffer<float> in(iota_floats(threads)), out(32);
    turns_warps_accumulate_kernel<<<1, threads>>>(out.ptr, in.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int lane = 0; lane < 32; ++lane) EXPECT_EQ(o[(size_t)lane], (float)(4 * lane + 32 + 64 + 96));
    expect_clean();
}

TEST_F(Racecheck, TwoThreadsOfABlockWritingOneWordIsARace) {
    const auto racy = [&] {
        DeviceBuffer<int> out(1);
        racy_block_write_kernel<<<1, 64>>>(out.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_block_write_kernel"));
    DeviceBuffer<int> out(1);
    single_block_write_kernel<<<1, 64>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(out.download()[0], 63);
    expect_clean();
}

// ================================================================== within a warp

TEST_F(Racecheck, LanesExchangingWithoutSyncwarpIsARace) {
    const auto racy = [&] {
        DeviceBuffer<int> out(32);
        racy_warp_exchange_kernel<<<1, 32>>>(out.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_warp_exchange_kernel"));
    DeviceBuffer<int> out(32);
    syncwarp_exchange_kernel<<<1, 32>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int lane = 0; lane < 32; ++lane) EXPECT_EQ(o[(size_t)lane], (lane ^ 1) * 10);
    expect_clean();
}

TEST_F(Racecheck, AWarpOperationOrdersOnlyTheLanesItsMaskNames) {
    const auto racy = [&] {
        DeviceBuffer<int> out(32);
        racy_half_warp_masks_kernel<<<1, 32>>>(out.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_half_warp_masks_kernel"));
    DeviceBuffer<int> out(32);
    full_warp_mask_kernel<<<1, 32>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int lane = 0; lane < 32; ++lane) EXPECT_EQ(o[(size_t)lane], (lane ^ 16) + (lane & 16));
    expect_clean();
}

// ================================================================== between blocks

class RacecheckWorkers : public Racecheck, public ::testing::WithParamInterface<int> {};

// One worker runs the blocks one after another on one OS thread, two run them on two: a race
// between blocks is reported either way (each block's threads are fresh TSan fibers that inherit
// only the launch's start).
TEST_P(RacecheckWorkers, BlocksWritingTheSameOutputIsARace) {
    const int workers = GetParam();
    const auto racy = [&] {
        simt::set_worker_threads(workers);
        DeviceBuffer<int> out(32);
        racy_blocks_same_output_kernel<<<4, 32>>>(out.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_blocks_same_output_kernel"));
    simt::set_worker_threads(workers);
    DeviceBuffer<int> out(4 * 32);
    own_output_per_block_kernel<<<4, 32>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int i = 0; i < 4 * 32; ++i) EXPECT_EQ(o[(size_t)i], i / 32);
    expect_clean();
}

TEST_P(RacecheckWorkers, ReadingAnotherBlocksOutputInTheSameLaunchIsARace) {
    const int workers = GetParam();
    const auto racy = [&] {
        simt::set_worker_threads(workers);
        DeviceBuffer<int> out(4 * 32), seen(4 * 32);
        racy_read_previous_block_kernel<<<4, 32>>>(out.ptr, seen.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_read_previous_block_kernel"));
    // In a second launch it is ordered (the launches of a stream run one after the other).
    simt::set_worker_threads(workers);
    DeviceBuffer<int> out(4 * 32), seen(4 * 32);
    write_own_block_kernel<<<4, 32>>>(out.ptr);
    read_previous_block_kernel<<<4, 32>>>(out.ptr, seen.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto s = seen.download();
    for (int i = 32; i < 4 * 32; ++i) EXPECT_EQ(s[(size_t)i], i / 32);
    expect_clean();
}

TEST_P(RacecheckWorkers, LastBlockReductionNeedsItsFences) {
    const int workers = GetParam(), blocks = 6;
    const auto racy = [&] {
        simt::set_worker_threads(workers);
        DeviceBuffer<float> partials(blocks), total(1);
        DeviceBuffer<unsigned> count(std::vector<unsigned>{0u});
        racy_last_block_sum_kernel<<<blocks, 32>>>(partials.ptr, count.ptr, total.ptr);
        (void)cudaDeviceSynchronize();
        exit(0);
    };
    EXPECT_EXIT(racy(), ::testing::ExitedWithCode(66), race_in("racy_last_block_sum_kernel"));
    simt::set_worker_threads(workers);
    DeviceBuffer<float> partials(blocks), total(1);
    DeviceBuffer<unsigned> count(std::vector<unsigned>{0u});
    fenced_last_block_sum_kernel<<<blocks, 32>>>(partials.ptr, count.ptr, total.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(total.download()[0], (float)(blocks * (blocks + 1) / 2));
    expect_clean();
}

TEST_P(RacecheckWorkers, AtomicsDoNotRaceWithEachOther) {
    simt::set_worker_threads(GetParam());
    DeviceBuffer<int> count(std::vector<int>{0});
    atomic_count_kernel<<<8, 64>>>(count.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(count.download()[0], 8 * 64);
    expect_clean();
}

INSTANTIATE_TEST_SUITE_P(OneAndTwoWorkers, RacecheckWorkers, ::testing::Values(1, 2));

// ================================================================== the host's side of a launch

// A host write before a launch, the kernel's accesses, and a host read after it are ordered (as
// on a GPU); this is what every kernel test of this binary relies on, checked once on its own.
TEST_F(Racecheck, HostCopiesBeforeAndAfterALaunchAreOrdered) {
    for (int workers : {1, 2}) {
        simt::set_worker_threads(workers);
        DeviceBuffer<float> in(iota_floats(64)), out(64);
        for (int round = 0; round < 3; ++round) {
            synced_shared_neighbour_kernel<<<1, 64, sizeof(float) * 64>>>(out.ptr, in.ptr, 64);
            ASSERT_EQ(cudaGetLastError(), cudaSuccess);
            auto o = out.download();
            EXPECT_EQ(o[0], (float)(round + 1));  // each round shifts by one more
            ASSERT_EQ(cudaMemcpy(in.ptr, o.data(), sizeof(float) * 64, cudaMemcpyHostToDevice), cudaSuccess);
        }
    }
    expect_clean();
}

}  // namespace
