// test_profile.cpp: the GPU cost report's counting and time model (simt/profile.h).
//
// The profile build's instrumentation calls simt::profile::record() before every load and store of
// the kernels; here the kernels call it themselves, so this file needs no instrumented build and
// runs with the rest of the suite. (make gpu-profile checks the instrumentation itself: its driver
// runs a coalesced and a strided copy compiled with it before the model, bench/gpu_profile.cpp.)
// Every expected number below is worked out from the access pattern: a warp instruction costs the
// distinct 32-byte sectors its 32 lanes touch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common.cuh"
#include "simt/profile.h"

namespace {

using simt::profile::Access;
using simt::profile::LaunchCounts;

// out[i] = in[i * stride], each access announced as the instrumentation would.
__global__ void recorded_copy_kernel(float* out, const float* in, int n, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        simt::profile::record(&in[(long)i * stride], 4, Access::Read);
        simt::profile::record(&out[i], 4, Access::Write);
        out[i] = in[(long)i * stride];
    }
}

// Every lane reads in[0] (a broadcast), then thread 0's warp alone reads `extra` more times.
__global__ void recorded_broadcast_kernel(float* out, const float* in, int extra) {
    simt::profile::record(&in[0], 4, Access::Read);
    float x = in[0];
    if (threadIdx.x < 32)
        for (int j = 0; j < extra; j++) {
            simt::profile::record(&in[j], 4, Access::Read);
            x += in[j];
        }
    if (threadIdx.x == 0) {
        simt::profile::record(&out[0], 4, Access::Write);
        out[0] = x;
    }
}

// Shared memory and a local variable: neither is global memory, neither is counted.
__global__ void recorded_shared_kernel(float* out) {
    __shared__ float tile[128];
    float local = 1.0f;
    simt::profile::record(&tile[threadIdx.x], 4, Access::Write);
    tile[threadIdx.x] = local;
    simt::profile::record(&local, 4, Access::Read);
    __syncthreads();
    simt::profile::record(&out[threadIdx.x], 4, Access::Write);
    out[threadIdx.x] = tile[threadIdx.x] + local;
}

class Profile : public ::testing::Test {
protected:
    static constexpr int n = 4096, stride = 8;
    float* in = nullptr;
    float* out = nullptr;
    int saved_workers = 1;
    void SetUp() override {
        saved_workers = simt::worker_threads();
        ASSERT_EQ(cudaMalloc(&in, (size_t)n * stride * sizeof(float)), cudaSuccess);  // 256-byte aligned
        ASSERT_EQ(cudaMalloc(&out, (size_t)n * sizeof(float)), cudaSuccess);
        ASSERT_EQ(cudaMemset(in, 0, (size_t)n * stride * sizeof(float)), cudaSuccess);
        simt::profile::start();
    }
    void TearDown() override {
        simt::profile::stop();
        simt::profile::reset();
        simt::set_worker_threads(saved_workers);
        EXPECT_EQ(cudaFree(in), cudaSuccess);
        EXPECT_EQ(cudaFree(out), cudaSuccess);
    }
    LaunchCounts copy(const float* source, int s) {
        recorded_copy_kernel<<<n / 128, 128>>>(out, source, n, s);
        EXPECT_EQ(cudaGetLastError(), cudaSuccess);
        return simt::profile::last_launch();
    }
};

TEST_F(Profile, CoalescedCopyReadsAndWritesFourSectorsPerWarpInstruction) {
    const LaunchCounts c = copy(in, 1);
    EXPECT_EQ(c.blocks, (unsigned long long)n / 128);
    EXPECT_EQ(c.threads_per_block, 128u);
    for (int kind : {0, 1}) {
        EXPECT_EQ(c.instructions[kind], (unsigned long long)n / 32);  // one per warp each way
        EXPECT_EQ(c.bytes[kind], 4ull * n);
        EXPECT_EQ(c.sectors[kind], (unsigned long long)n / 8);        // 128 bytes = 4 sectors per warp
        EXPECT_EQ(c.ideal_sectors[kind], (unsigned long long)n / 8);
    }
    EXPECT_EQ(c.instructions[2], 0u);
    EXPECT_EQ(c.unique_read_sectors, (unsigned long long)n / 8);
    EXPECT_EQ(c.unique_written_sectors, (unsigned long long)n / 8);
    EXPECT_EQ(c.longest_warp_loads, 1u);
}

TEST_F(Profile, StridedReadTakesOneSectorPerLane) {
    const LaunchCounts c = copy(in, stride);  // lanes 32 bytes apart
    EXPECT_EQ(c.bytes[0], 4ull * n);
    EXPECT_EQ(c.sectors[0], (unsigned long long)n);         // 32 per warp instruction
    EXPECT_EQ(c.ideal_sectors[0], (unsigned long long)n / 8);
    EXPECT_EQ(c.unique_read_sectors, (unsigned long long)n);
    EXPECT_EQ(c.sectors[1], (unsigned long long)n / 8);     // the writes stay coalesced
}

TEST_F(Profile, MisalignedReadStraddlesFiveSectors) {
    const LaunchCounts c = copy(in + 1, 1);  // each warp's 128 bytes start 4 bytes into a sector
    EXPECT_EQ(c.sectors[0], 5ull * n / 32);
    EXPECT_EQ(c.unique_read_sectors, (unsigned long long)n / 8 + 1);
}

TEST_F(Profile, BroadcastIsOneSectorAndTheBusiestWarpIsMeasured) {
    recorded_broadcast_kernel<<<1, 128>>>(out, in, 10);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const LaunchCounts c = simt::profile::last_launch();
    // 4 warps read in[0] once; warp 0 then reads in[0..9]: 10 more instructions
    EXPECT_EQ(c.instructions[0], 4u + 10u);
    EXPECT_EQ(c.sectors[0], 4u + 10u);  // every one within a single sector
    EXPECT_EQ(c.ideal_sectors[0], 4u + 10u);
    EXPECT_EQ(c.bytes[0], 4ull * (128 + 32 * 10));
    EXPECT_EQ(c.longest_warp_loads, 11u);
    EXPECT_EQ(c.instructions[1], 1u);
    EXPECT_EQ(c.unique_read_sectors, 2u);  // in[0..9] spans two sectors
}

TEST_F(Profile, SharedAndLocalMemoryAreNotCounted) {
    recorded_shared_kernel<<<1, 128>>>(out);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const LaunchCounts c = simt::profile::last_launch();
    EXPECT_EQ(c.instructions[0], 0u);
    EXPECT_EQ(c.instructions[1], 4u);  // only the stores to out
    EXPECT_EQ(c.sectors[1], 16u);
}

TEST_F(Profile, CountsDoNotDependOnWorkerThreads) {
    const LaunchCounts one = copy(in, stride);
    simt::set_worker_threads(2);
    const LaunchCounts two = copy(in, stride);
    for (int kind = 0; kind < 3; kind++) {
        EXPECT_EQ(one.instructions[kind], two.instructions[kind]);
        EXPECT_EQ(one.sectors[kind], two.sectors[kind]);
    }
    EXPECT_EQ(one.unique_read_sectors, two.unique_read_sectors);
    EXPECT_EQ(one.unique_written_sectors, two.unique_written_sectors);
}

TEST(ProfileModel, ResidentBlocksPerSm) {
    const simt::profile::GpuSpec& h = simt::profile::h100();
    EXPECT_EQ(simt::profile::blocks_per_sm(h, 1024, 0), 2);   // 2048 threads per SM
    EXPECT_EQ(simt::profile::blocks_per_sm(h, 128, 0), 16);
    EXPECT_EQ(simt::profile::blocks_per_sm(h, 32, 0), 32);    // the 32-block limit
    EXPECT_EQ(simt::profile::blocks_per_sm(h, 48, 0), 32);    // 48 threads take two warps: 2048/64 = 32
    EXPECT_EQ(simt::profile::blocks_per_sm(h, 256, 100 * 1024), 2);  // 228 KiB / (100 + 1) KiB
}

TEST(ProfileModel, BandwidthTimeTailAndLaunchFloor) {
    const simt::profile::GpuSpec& h = simt::profile::h100();
    LaunchCounts c;
    c.threads_per_block = 128;
    // 16 full rounds of 132 blocks moving 335 MB: 100 us at 3.35 TB/s, plus the 1 us launch gap
    c.blocks = 132 * 16;
    c.unique_read_sectors = 335000000 / 32 / 2;
    c.unique_written_sectors = 335000000 / 32 / 2;
    double minimum = 0;
    EXPECT_NEAR(simt::profile::kernel_time(h, c, &minimum) * 1e6, 101.0, 1e-6);
    EXPECT_NEAR(minimum * 1e6, 100.0, 1e-6);
    // the same bytes in 12 blocks: each SM draws 1/132 of the bandwidth, so 11x longer
    c.blocks = 12;
    EXPECT_NEAR(simt::profile::kernel_time(h, c, &minimum) * 1e6, 1101.0, 1e-6);
    EXPECT_NEAR(minimum * 1e6, 100.0, 1e-6);
    // a tiny kernel costs the launch floor
    c.unique_read_sectors = c.unique_written_sectors = 1;
    EXPECT_NEAR(simt::profile::kernel_time(h, c) * 1e6, 3.0, 1e-9);
    // one warp issuing 1000 dependent-ish loads: 1000 x 0.5 us / 4 in flight
    c.longest_warp_loads = 1000;
    EXPECT_NEAR(simt::profile::kernel_time(h, c) * 1e6, 126.0, 1e-6);
}

TEST(ProfileModel, GemmWavesOfTilesAndSplitK) {
    const simt::profile::GpuSpec& h = simt::profile::h100();
    const double per_sm_peak = h.fp32_flops_per_s / h.sms;
    simt::profile::GemmEstimate e;
    // 32 x 32 tiles of 128 x 128: 8 waves on 132 SMs, each tile at 1/132 of the FP32 peak (the
    // smaller tiles need as many rounds of the same work: the larger tile wins the tie)
    double t = simt::profile::gemm_time(h, 4096, 4096, 4096, 1, false, false, &e);
    EXPECT_EQ(e.tiles, 1024.0);
    EXPECT_EQ(e.split, 1);
    EXPECT_NEAR(t, 1e-6 + 8 * 2.0 * 128 * 128 * 4096 / per_sm_peak, 1e-12);
    EXPECT_NEAR(e.minimum, 2.0 * 4096.0 * 4096 * 4096 / h.fp32_flops_per_s, 1e-12);
    // a weight gradient (C x C, K = N tokens): 18 tiles of 128 x 64, so K is split in 7 slices to
    // fill 126 SMs (9 tiles of 128 x 128 in 14 slices are a hair slower: 1171 x 128 > 2341 x 64)
    t = simt::profile::gemm_time(h, 384, 384, 16384, 1, false, false, &e);
    EXPECT_EQ(e.tile_m, 128);
    EXPECT_EQ(e.tile_n, 64);
    EXPECT_EQ(e.tiles, 18.0);
    EXPECT_EQ(e.split, 7);
    EXPECT_NEAR(t, 1e-6 + 2.0 * 128 * 64 * std::ceil(16384 / 7.0) / per_sm_peak, 1e-12);
    // one sequence's attention product: 24 tiles of 64 x 64 in one wave, too shallow to split
    t = simt::profile::gemm_time(h, 64, 256, 256, 6, false, false, &e);
    EXPECT_EQ(e.tile_m, 64);
    EXPECT_EQ(e.tile_n, 64);
    EXPECT_EQ(e.tiles, 24.0);
    EXPECT_EQ(e.split, 1);
    EXPECT_NEAR(t, 1e-6 + 2.0 * 64 * 64 * 256 / per_sm_peak, 1e-12);
    EXPECT_NEAR(simt::profile::gemm_time(h, 8, 8, 8, 1, false, false), h.cublas_floor_s, 1e-15);
    // TF32 tensor cores (the handle's math mode): the same tiles at the TF32 peak
    t = simt::profile::gemm_time(h, 4096, 4096, 4096, 1, false, true, &e);
    EXPECT_NEAR(t, 1e-6 + 8 * 2.0 * 128 * 128 * 4096 / (h.tf32_flops_per_s / h.sms), 1e-12);
}

TEST_F(Profile, ReportListsKernelsAndCublasCalls) {
    simt::profile::set_phase("forward");
    copy(in, 1);
    cublasHandle_t handle;
    ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f, zero = 0.0f;
    ASSERT_EQ(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &one, in, 64, in, 64, &zero, out, 64),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
    simt::profile::stop();
    char* text = nullptr;
    size_t size = 0;
    FILE* f = open_memstream(&text, &size);
    simt::profile::print_report(f, 1);
    fclose(f);
    const std::string report(text, size);
    free(text);
    EXPECT_NE(report.find("| forward | `recorded_copy_kernel` | 1 | 32 | 128 |"), std::string::npos) << report;
    EXPECT_NE(report.find("`cuBLAS NN 64x64x64 @test_profile.cpp:"), std::string::npos) << report;
    EXPECT_NE(report.find("- launches: 2 (1 kernels, 1 cuBLAS calls, 0 memsets and cuRAND fills)"), std::string::npos)
        << report;
    EXPECT_NE(report.find("What this model cannot know"), std::string::npos);
}

}  // namespace
