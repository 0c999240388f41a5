// test_sanitizers.cpp: the CPU layer's compute-sanitizer checks that every build runs (the
// ThreadSanitizer racecheck is tests/test_racecheck.cpp, in the TSan build only):
//   - strict synccheck: a __syncthreads that threads skip by exiting, a warp operation whose
//     mask names exited lanes;
//   - initcheck of static __shared__ memory: it starts every block as 0xFF bytes;
//   - the resource table of the nvcc check (registers and static shared memory from ptxas -v)
//     applied to launches, and the launch log the nvcc check reads.
// Each check has a deliberately wrong kernel (tests/racy_kernels.cuh) that must be caught for the
// right reason, next to a correct twin that must pass.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "tests/racy_kernels.cuh"
#include "tests/test_util.h"

namespace {

using test_util::contains;
using test_util::DeviceBuffer;

// The line of `needle` in tests/racy_kernels.cuh (the messages name file:line).
int line_of(const std::string& needle) {
    for (const char* path : {"tests/racy_kernels.cuh", "../tests/racy_kernels.cuh", "../../tests/racy_kernels.cuh"}) {
        std::ifstream in(path);
        std::string line;
        for (int n = 1; std::getline(in, line); ++n)
            if (contains(line, needle)) return n;
    }
    return -1;
}

class Sanitizers : public ::testing::Test {
protected:
    void SetUp() override {
        strict_ = simt::strict_sync();
        simt::set_device_memory_protection(true);
        (void)cudaGetLastError();
    }
    void TearDown() override {
        simt::set_strict_sync(strict_);
        simt::set_device_memory_protection(false);
        (void)cudaGetLastError();
    }
    bool strict_ = true;
};

// ================================================================== strict synccheck

TEST_F(Sanitizers, StrictSynccheckIsOnByDefault) {
    // The layer's default, which the test suites and the trainer run with (SIMT_STRICT_SYNC=0 is
    // the only way to turn it off).
    const char* env = getenv("SIMT_STRICT_SYNC");
    if (env == nullptr || std::string(env) != "0") {
        EXPECT_TRUE(strict_);
    }
}

TEST_F(Sanitizers, BarrierSkippedByExitingThreadsIsAStrictSynccheckError) {
    const int oc = 40, threads = 64;
    std::vector<float> h(threads);
    for (int i = 0; i < threads; ++i) h[(size_t)i] = (float)i;
    DeviceBuffer<float> in(h), out(threads);

    simt::set_strict_sync(true);
    bad_barrier_in_bounds_check_kernel<<<1, threads, sizeof(float) * threads>>>(out.ptr, in.ptr, oc);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "barrier divergence in kernel 'bad_barrier_in_bounds_check_kernel' block (0,0,0)")) << msg;
    const int barrier_line = line_of("if (o < oc) {") + 2;  // the __syncthreads inside the if
    EXPECT_TRUE(contains(msg, "40 threads at tests/racy_kernels.cuh:" + std::to_string(barrier_line) + " (__syncthreads)"))
        << msg;
    EXPECT_TRUE(contains(msg, "24 threads exited")) << msg;
    EXPECT_TRUE(contains(msg, "strict synccheck")) << msg;

    // What the layer did before strict mode (and what a GPU happens to do): the exited threads
    // count as arrived and the kernel "works".
    simt::set_strict_sync(false);
    bad_barrier_in_bounds_check_kernel<<<1, threads, sizeof(float) * threads>>>(out.ptr, in.ptr, oc);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int i = 0; i < oc; ++i) EXPECT_EQ(o[(size_t)i], (float)(oc - 1 - i));

    // The twin keeps every thread at the barrier: clean under strict synccheck.
    simt::set_strict_sync(true);
    guarded_barrier_kernel<<<1, threads, sizeof(float) * threads>>>(out.ptr, in.ptr, oc);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    o = out.download();
    for (int i = 0; i < oc; ++i) EXPECT_EQ(o[(size_t)i], (float)(oc - 1 - i));
}

TEST_F(Sanitizers, WarpOperationNamingExitedLanesIsAnError) {
    DeviceBuffer<int> out(32);
    simt::set_strict_sync(true);
    bad_syncwarp_names_exited_lanes_kernel<<<1, 32>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "warp divergence in kernel 'bad_syncwarp_names_exited_lanes_kernel'")) << msg;
    EXPECT_TRUE(contains(msg, "__syncwarp at tests/racy_kernels.cuh:" +
                                  std::to_string(line_of("__syncwarp(0x0000ffffu);"))))
        << msg;
    EXPECT_TRUE(contains(msg, "names lane 8, which has exited")) << msg;

    syncwarp_names_live_lanes_kernel<<<1, 32>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int i = 0; i < 8; ++i) EXPECT_EQ(o[(size_t)i], i);
}

// ================================================================== static shared initcheck

TEST_F(Sanitizers, UnwrittenStaticSharedElementsReadAsNaNInEveryBlock) {
    DeviceBuffer<float> out(3);
    bad_static_shared_partial_write_kernel<<<3, 64>>>(out.ptr, 60);  // elements 60..63 never written
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    for (float x : out.download()) EXPECT_TRUE(std::isnan(x)) << x;
    bad_static_shared_partial_write_kernel<<<3, 64>>>(out.ptr, 64);  // every element written
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    for (float x : out.download()) EXPECT_EQ(x, 64.0f);
    // ... and a launch after the full one does not see its values either.
    bad_static_shared_partial_write_kernel<<<3, 64>>>(out.ptr, 60);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    for (float x : out.download()) EXPECT_TRUE(std::isnan(x)) << x;
}

TEST_F(Sanitizers, StaticSharedArraysAndScalarsStartAs0xFFBytesInEveryBlock) {
    const int blocks = 4;
    DeviceBuffer<unsigned> out((size_t)blocks * 9);
    for (int workers : {1, 2}) {
        simt::set_worker_threads(workers);
        static_shared_first_read_kernel<<<blocks, 32>>>(out.ptr);
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        for (unsigned x : out.download()) EXPECT_EQ(x, 0xffffffffu);
    }
    simt::set_worker_threads(1);
}

TEST_F(Sanitizers, EachTemplateInstantiationHasItsOwnStaticSharedArray) {
    DeviceBuffer<int> small(1), large(1);
    ASSERT_EQ(static_shared_sizes(small.ptr, large.ptr), cudaSuccess);
    EXPECT_EQ(small.download()[0], 28);    // 0 + 1 + ... + 7
    EXPECT_EQ(large.download()[0], 4950);  // 0 + 1 + ... + 99
}

// ================================================================== resource table and launch log

struct TempFile {
    std::string path;
    explicit TempFile(const std::string& text) {
        char name[] = "/tmp/simt_resources_XXXXXX";
        const int fd = mkstemp(name);
        EXPECT_GE(fd, 0);
        path = name;
        EXPECT_EQ(write(fd, text.data(), text.size()), (ssize_t)text.size());
        close(fd);
    }
    ~TempFile() { unlink(path.c_str()); }
};

// The table the suite runs with (env SIMT_RESOURCES, set by make when the nvcc check wrote one).
void restore_environment_table() {
    const char* env = getenv("SIMT_RESOURCES");
    simt::load_resource_table(env != nullptr ? env : "");
}

TEST_F(Sanitizers, ResourceTableRejectsABlockBeyondTheSMsRegisters) {
    // own_output_per_block_kernel, as if ptxas had given it 255 registers (255 -> 256 per thread:
    // 8,192 per warp, so 8 warps fill the SM's 65,536) and 40,000 bytes of static shared memory.
    TempFile table("# kernel\tarch\tregisters\tstack\tspill_stores\tspill_loads\tstatic_shared\n"
                   "own_output_per_block_kernel\tsm_80\t255\t0\t0\t0\t40000\n"
                   "own_output_per_block_kernel\tsm_90\t200\t0\t0\t0\t40000\n");
    ASSERT_EQ(simt::load_resource_table(table.path.c_str()), 1);
    DeviceBuffer<int> out(2 * 512);
    own_output_per_block_kernel<<<2, 256>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    own_output_per_block_kernel<<<2, 288>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
    std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "'own_output_per_block_kernel' launched with 288 threads per block")) << msg;
    EXPECT_TRUE(contains(msg, "255 registers per thread (ptxas, sm_80)")) << msg;
    EXPECT_TRUE(contains(msg, "73728 registers, more than the SM's 65536")) << msg;

    // Static (40,000) plus dynamic shared memory must stay within the default 48 KiB.
    own_output_per_block_kernel<<<2, 64, 49152 - 40000>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    own_output_per_block_kernel<<<2, 64, 49152 - 40000 + 4>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
    msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "40000 bytes of static shared memory")) << msg;
    EXPECT_TRUE(contains(msg, "the limit is 9152 bytes")) << msg;

    // A kernel the table does not list is not checked against it.
    DeviceBuffer<int> word(1);
    single_block_write_kernel<<<1, 1024>>>(word.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    restore_environment_table();
}

TEST_F(Sanitizers, LaunchLogListsEachDistinctLaunchOnce) {
    TempFile log("");
    simt::set_launch_log(log.path.c_str());
    DeviceBuffer<int> out(4 * 128);
    own_output_per_block_kernel<<<2, 128>>>(out.ptr);
    own_output_per_block_kernel<<<4, 128>>>(out.ptr);  // same block size and shared memory: not again
    own_output_per_block_kernel<<<1, 96, 256>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const char* env = getenv("SIMT_LAUNCH_LOG");
    simt::set_launch_log(env);
    std::ifstream in(log.path);
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), "own_output_per_block_kernel\t128\t0\t-1\nown_output_per_block_kernel\t96\t256\t-1\n");
}

TEST_F(Sanitizers, TheSuitesResourceTableIsLoadedWhenTheNvccCheckWroteOne) {
    const char* env = getenv("SIMT_RESOURCES");
    if (env == nullptr || *env == 0) GTEST_SKIP() << "no SIMT_RESOURCES: the nvcc check did not run before this suite";
    // Every launch of this suite is checked against it; it must hold the project's kernels.
    EXPECT_GT(simt::load_resource_table(env), 20);
}

}  // namespace
