// test_simt.cpp: the SIMT execution layer (simt/simt.h) against plain C++ loops, and every
// fidelity check it promises (each with a deliberately wrong kernel or host call that must be
// caught, loudly, instead of hanging or silently working on the CPU).
//
// The kernels are in tests/simt_test_kernels.cuh (plain CUDA; nvcc compiles them too). A few
// CPU-only kernels that throw C++ exceptions or overflow their stack live here.
// Every test runs with device-memory protection on and restores the layer's global settings.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/simt_test_kernels.cuh"
#include "tests/test_util.h"

namespace {

using test_util::contains;
using test_util::DeviceBuffer;

// ------------------------------------------------------------------ helpers
std::vector<float> random_floats(size_t n, unsigned seed, float lo = -3.0f, float hi = 3.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ------------------------------------------------------------------ plain C++ references
std::vector<float> ref_softmax(const std::vector<float>& in, int rows, int cols) {
    std::vector<float> out(in.size());
    for (int r = 0; r < rows; ++r) {
        const float* x = &in[(size_t)r * cols];
        double m = -INFINITY, s = 0;
        for (int c = 0; c < cols; ++c) m = std::max(m, (double)x[c]);
        for (int c = 0; c < cols; ++c) s += std::exp((double)x[c] - m);
        for (int c = 0; c < cols; ++c) out[(size_t)r * cols + c] = (float)(std::exp((double)x[c] - m) / s);
    }
    return out;
}

// Row-major C (M x N) = A (M x K) * B (K x N), or A * B^T when b_transposed (B is N x K).
std::vector<float> ref_matmul(const std::vector<float>& A, const std::vector<float>& B, int M, int N, int K,
                              bool b_transposed) {
    std::vector<float> C((size_t)M * N);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k)
                s += (double)A[(size_t)i * K + k] * (b_transposed ? B[(size_t)j * K + k] : B[(size_t)k * N + j]);
            C[(size_t)i * N + j] = (float)s;
        }
    return C;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float tol) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], want[i], tol * (1.0f + std::fabs(want[i]))) << "at index " << i;
}

// Row-major GEMMs through column-major cuBLAS: C^T = B^T A^T, i.e. swap the operands.
cublasStatus_t row_major_matmul(float* C, const float* A, const float* B, int M, int N, int K, bool b_transposed) {
    const float one = 1.0f, zero = 0.0f;
    if (b_transposed)  // C = A B^T: column-major C^T (N x M) = B (N x K, i.e. ld K, op T) * A^T
        return cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, B, K, A, K, &zero, C, N);
    return cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B, N, A, K, &zero, C, N);
}

// Every test: protection on, default settings, no pending error; restored afterwards.
class Simt : public ::testing::Test {
protected:
    void SetUp() override {
        threads_ = simt::worker_threads();
        shuffle_ = simt::shuffle_seed();
        protect_ = simt::device_memory_protection();
        strict_ = simt::strict_sync();
        simt::set_device_memory_protection(true);
        (void)cudaGetLastError();
    }
    void TearDown() override {
        simt::set_worker_threads(threads_);
        simt::set_shuffle(shuffle_);
        simt::set_device_memory_protection(protect_);
        simt::set_strict_sync(strict_);
        (void)cudaGetLastError();
    }
    bool strict_ = true;
    int threads_ = 1;
    unsigned long long shuffle_ = 0;
    bool protect_ = false;
};

// ================================================================== kernels against references
TEST_F(Simt, SoftmaxWithDynamicSharedAndShuffles) {
    for (int cols : {100, 37, 256, 1}) {
        for (int threads : {32, 64, 96}) {
            const int rows = 13;
            auto h = random_floats((size_t)rows * cols, 1 + cols);
            DeviceBuffer<float> in(h), out((size_t)rows * cols);
            ASSERT_EQ(simt_softmax(out.ptr, in.ptr, rows, cols, threads), cudaSuccess);
            expect_close(out.download(), ref_softmax(h, rows, cols), 1e-6f);
        }
    }
}

TEST_F(Simt, AtomicHistogram) {
    const int n = 10007, nbins = 37;
    std::vector<int> values(n), want(nbins, 0);
    std::mt19937 rng(5);
    for (int& v : values) v = (int)(rng() % 100000);
    for (int v : values) ++want[v % nbins];
    DeviceBuffer<int> d_values(values), bins(nbins);
    bins.fill_bytes(0);
    ASSERT_EQ(simt_histogram(bins.ptr, d_values.ptr, n, nbins), cudaSuccess);
    EXPECT_EQ(bins.download(), want);
}

TEST_F(Simt, TiledTransposeWithStaticShared) {
    for (auto [rows, cols] : {std::pair{45, 77}, std::pair{33, 64}, std::pair{1, 5}, std::pair{64, 32}}) {
        auto h = random_floats((size_t)rows * cols, rows * 100 + cols);
        DeviceBuffer<float> in(h), out((size_t)rows * cols);
        ASSERT_EQ(simt_transpose(out.ptr, in.ptr, rows, cols), cudaSuccess);
        std::vector<float> want((size_t)rows * cols);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) want[(size_t)c * rows + r] = h[(size_t)r * cols + c];
        EXPECT_TRUE(bit_identical(out.download(), want)) << rows << "x" << cols;
    }
}

TEST_F(Simt, RowMajorSgemm) {
    const int M = 37, N = 29, K = 45;
    auto A = random_floats((size_t)M * K, 1), B = random_floats((size_t)K * N, 2), W = random_floats((size_t)N * K, 3);
    DeviceBuffer<float> dA(A), dB(B), dW(W), dC((size_t)M * N);
    ASSERT_EQ(row_major_matmul(dC.ptr, dA.ptr, dB.ptr, M, N, K, false), CUBLAS_STATUS_SUCCESS);
    expect_close(dC.download(), ref_matmul(A, B, M, N, K, false), 1e-5f);
    ASSERT_EQ(row_major_matmul(dC.ptr, dA.ptr, dW.ptr, M, N, K, true), CUBLAS_STATUS_SUCCESS);
    expect_close(dC.download(), ref_matmul(A, W, M, N, K, true), 1e-5f);
}

TEST_F(Simt, SgemmBetaZeroOverwritesNaNAndKZeroScales) {
    const int M = 5, N = 7, K = 3;
    auto A = random_floats((size_t)M * K, 1), B = random_floats((size_t)K * N, 2);
    DeviceBuffer<float> dA(A), dB(B), dC((size_t)M * N);  // dC is all NaN
    ASSERT_EQ(row_major_matmul(dC.ptr, dA.ptr, dB.ptr, M, N, K, false), CUBLAS_STATUS_SUCCESS);
    for (float x : dC.download()) ASSERT_TRUE(std::isfinite(x));
    // k == 0: C = beta * C.
    std::vector<float> c0((size_t)M * N, 2.0f);
    dC.upload(c0);
    const float one = 1.0f, half = 0.5f;
    ASSERT_EQ(cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, N, M, 0, &one, dB.ptr, N, dA.ptr, 1, &half,
                          dC.ptr, N),
              CUBLAS_STATUS_SUCCESS);
    for (float x : dC.download()) ASSERT_EQ(x, 1.0f);
}

TEST_F(Simt, StridedBatchedSgemm) {
    const int batch = 3, M = 9, N = 11, K = 13;
    auto A = random_floats((size_t)batch * M * K, 4), B = random_floats((size_t)batch * K * N, 5);
    DeviceBuffer<float> dA(A), dB(B), dC((size_t)batch * M * N);
    const float one = 1.0f, zero = 0.0f;
    ASSERT_EQ(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, dB.ptr, N,
                                        (long long)K * N, dA.ptr, K, (long long)M * K, &zero, dC.ptr, N,
                                        (long long)M * N, batch),
              CUBLAS_STATUS_SUCCESS);
    auto C = dC.download();
    for (int b = 0; b < batch; ++b) {
        std::vector<float> a(A.begin() + (long)b * M * K, A.begin() + (long)(b + 1) * M * K);
        std::vector<float> bb(B.begin() + (long)b * K * N, B.begin() + (long)(b + 1) * K * N);
        std::vector<float> c(C.begin() + (long)b * M * N, C.begin() + (long)(b + 1) * M * N);
        expect_close(c, ref_matmul(a, bb, M, N, K, false), 1e-5f);
    }
}

TEST_F(Simt, BallotAnyAllWithPartialWarps) {
    const int n = 70, threads = 48;  // blocks of 48: warp 1 of each block has 16 lanes
    std::vector<int> v(n);
    for (int i = 0; i < n; ++i) v[i] = i % 3 == 0 ? 1 : 0;
    for (int i = 32; i < 48; ++i) v[i] = 1;  // block 0's 16-lane warp: all true
    DeviceBuffer<int> dv(v), any(n), all(n);
    DeviceBuffer<unsigned> ballot(n);
    simt_vote_kernel<<<ceil_div(n, threads), threads>>>(ballot.ptr, any.ptr, all.ptr, dv.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto b = ballot.download();
    auto a = any.download();
    auto l = all.download();
    for (int i = 0; i < n; ++i) {
        const int block = i / threads, t = i % threads, warp_first = block * threads + (t / 32) * 32;
        const int lanes = std::min(32, threads - (t / 32) * 32);
        unsigned want = 0;
        for (int lane = 0; lane < lanes; ++lane) {
            int j = warp_first + lane;
            if (j < n && v[j] > 0) want |= 1u << lane;
        }
        const unsigned mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        ASSERT_EQ(b[i], want) << i;
        ASSERT_EQ(a[i], want != 0) << i;
        ASSERT_EQ(l[i], want == mask) << i;
    }
}

// CUDA's documented semantics, written out per lane (independently of the layer's PTX formulas).
int ref_shfl(int kind, int lane, int width, int src, int delta, int lane_mask) {
    const int group = lane / width * width, v = 1000 + lane;
    switch (kind) {
        case 0: return 1000 + group + ((src % width) + width) % width;                   // idx: wraps in the group
        case 1: return lane % width >= delta ? v - delta : v;                            // up
        case 2: return lane % width + delta < width ? v + delta : v;                     // down
        default: {                                                                       // xor
            const int target = lane ^ lane_mask;
            return target / width > lane / width ? v : 1000 + target;                    // later groups: own
        }
    }
}

TEST_F(Simt, ShuffleIdxUpDownXorWithWidth) {
    struct Case { int width, src, delta, lane_mask; };
    for (Case c : {Case{8, 3, 2, 5}, Case{8, 11, 7, 8}, Case{16, 15, 1, 16}, Case{32, 31, 31, 31}, Case{4, -1, 3, 1},
                   Case{2, 1, 1, 3}, Case{1, 0, 1, 1}}) {
        const int threads = 64;
        DeviceBuffer<int> out(4 * threads);
        simt_shuffle_width_kernel<<<1, threads>>>(out.ptr, c.width, c.src, c.delta, c.lane_mask);
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        auto o = out.download();
        for (int i = 0; i < threads; ++i) {
            const int lane = i % 32, base = i - lane;
            for (int k = 0; k < 4; ++k)
                ASSERT_EQ(o[4 * i + k], base + ref_shfl(k, lane, c.width, c.src, c.delta, c.lane_mask))
                    << "thread " << i << " kind " << k << " width " << c.width;
        }
    }
}

TEST_F(Simt, Shuffle64BitTypes) {
    DeviceBuffer<double> d(64);
    DeviceBuffer<long long> l(64);
    simt_shuffle64_kernel<<<1, 64>>>(d.ptr, l.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto hd = d.download();
    auto hl = l.download();
    for (int i = 0; i < 64; ++i) {
        const int lane = i % 32;
        EXPECT_EQ(hd[i], 0.5 + ((lane + 1) % 32) * 1e10);
        EXPECT_EQ(hl[i], (1LL << 40) + (lane ^ 1));
    }
}

TEST_F(Simt, AtomicMaxMinCasExchAcrossWorkers) {
    for (int workers : {1, 2}) {
        simt::set_worker_threads(workers);
        const int n = 5000;
        std::vector<int> v(n);
        std::mt19937 rng(9);
        unsigned want_sum = 0;
        for (int& x : v) {
            x = (int)(rng() % 2000001) - 1000000;
            want_sum += (unsigned)(x & 0xff);
        }
        DeviceBuffer<int> dv(v), mx(std::vector<int>{INT_MIN}), mn(std::vector<int>{INT_MAX});
        DeviceBuffer<unsigned> sum(std::vector<unsigned>{0}), ex(std::vector<unsigned>{0});
        simt_atomic_kernel<<<ceil_div(n, 128), 128>>>(mx.ptr, mn.ptr, sum.ptr, ex.ptr, dv.ptr, n);
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(mx.download()[0], *std::max_element(v.begin(), v.end()));
        EXPECT_EQ(mn.download()[0], *std::min_element(v.begin(), v.end()));
        EXPECT_EQ(sum.download()[0], want_sum);
        EXPECT_EQ(ex.download()[0], 7u);
    }
}

TEST_F(Simt, FloatAtomicAdd) {
    simt::set_worker_threads(2);
    const int n = 3000;
    std::vector<float> v(n);
    double want = 0;
    for (int i = 0; i < n; ++i) want += v[i] = (float)(i % 17 - 8);
    DeviceBuffer<float> dv(v), sum(std::vector<float>{0.0f});
    DeviceBuffer<double> dsum(std::vector<double>{0.0});
    simt_float_atomic_kernel<<<ceil_div(n, 64), 64>>>(sum.ptr, dsum.ptr, dv.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(sum.download()[0], (float)want);
    EXPECT_EQ(dsum.download()[0], want);
}

TEST_F(Simt, HalfWarpMasksAndWarpReductions) {
    DeviceBuffer<unsigned> out(4 * 64);
    simt_half_warp_kernel<<<1, 64>>>(out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int t = 0; t < 64; ++t) {
        const unsigned lane = t % 32, first = lane < 16 ? 0 : 16;
        unsigned sum = 0, mx = 0, ballot = 0;
        int mn = INT_MAX;
        for (unsigned l = first; l < first + 16; ++l) {
            sum += l;
            mx = std::max(mx, l * 7 % 23);
            mn = std::min(mn, (int)l - 20);
            if (l % 3 == 0) ballot |= 1u << l;
        }
        EXPECT_EQ(o[4 * t + 0], sum) << t;
        EXPECT_EQ(o[4 * t + 1], mx) << t;
        EXPECT_EQ((int)o[4 * t + 2], mn) << t;
        EXPECT_EQ(o[4 * t + 3], ballot) << t;
    }
}

TEST_F(Simt, SyncthreadsCountAndOr) {
    DeviceBuffer<int> out(3);
    simt_block_vote_kernel<<<1, 128>>>(out.ptr, 77);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(out.download(), (std::vector<int>{77, 0, 1}));
    simt_block_vote_kernel<<<1, 128>>>(out.ptr, 128);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(out.download(), (std::vector<int>{128, 1, 1}));
}

TEST_F(Simt, ThreeDimensionalIndices) {
    dim3 grid(3, 2, 2), block(4, 3, 2);
    const int n = 3 * 2 * 2 * 4 * 3 * 2;
    DeviceBuffer<int> out(n);
    ASSERT_EQ(simt_launch_index(out.ptr, grid, block), cudaSuccess);
    auto o = out.download();
    int i = 0;
    for (unsigned bz = 0; bz < 2; ++bz)
        for (unsigned by = 0; by < 2; ++by)
            for (unsigned bx = 0; bx < 3; ++bx)
                for (unsigned tz = 0; tz < 2; ++tz)
                    for (unsigned ty = 0; ty < 3; ++ty)
                        for (unsigned tx = 0; tx < 4; ++tx)
                            ASSERT_EQ(o[i++], (int)(tx | ty << 4 | tz << 8 | bx << 12 | by << 16 | bz << 20));
}

// With strict synccheck off (its default is on: tests/test_sanitizers.cpp), as current GPUs do.
TEST_F(Simt, ExitedThreadsDoNotBlockBarriers) {
    simt::set_strict_sync(false);
    const int n = 20;
    auto h = random_floats(n, 3);
    DeviceBuffer<float> in(h), out(n);
    simt_early_exit_kernel<<<1, 32, sizeof(float) * 32>>>(out.ptr, in.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto o = out.download();
    for (int i = 0; i < n; ++i) EXPECT_EQ(o[i], h[n - 1 - i]);
    DeviceBuffer<int> flags(32);
    simt_exit_then_barrier_kernel<<<1, 32>>>(flags.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    auto f = flags.download();
    for (int i = 0; i < 16; ++i) EXPECT_EQ(f[i], 1);
    for (int i = 16; i < 32; ++i) EXPECT_EQ(f[i], -1);  // never written: still 0xFF bytes
}

TEST_F(Simt, CurandNormalStatistics) {
    curandGenerator_t gen;
    ASSERT_EQ(create_generator(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10), CURAND_STATUS_SUCCESS);
    ASSERT_EQ(curandSetPseudoRandomGeneratorSeed(gen, 1234), CURAND_STATUS_SUCCESS);
    const int n = 200000;
    DeviceBuffer<float> d(n);
    ASSERT_EQ(curandGenerateNormal(gen, d.ptr, n, 0.0f, 1.0f), CURAND_STATUS_SUCCESS);
    auto h = d.download();
    double s = 0, s2 = 0, s4 = 0;
    for (float x : h) {
        ASSERT_TRUE(std::isfinite(x));
        s += x, s2 += (double)x * x, s4 += (double)x * x * x * x;
    }
    EXPECT_NEAR(s / n, 0.0, 0.01);
    EXPECT_NEAR(s2 / n, 1.0, 0.02);
    EXPECT_NEAR(s4 / n, 3.0, 0.1);  // kurtosis of a normal
    // Same seed and offset, same numbers (setting the seed alone keeps the stream position).
    ASSERT_EQ(curandSetPseudoRandomGeneratorSeed(gen, 1234), CURAND_STATUS_SUCCESS);
    ASSERT_EQ(curandSetGeneratorOffset(gen, 0), CURAND_STATUS_SUCCESS);
    DeviceBuffer<float> again(n);
    ASSERT_EQ(curandGenerateNormal(gen, again.ptr, n, 0.0f, 1.0f), CURAND_STATUS_SUCCESS);
    EXPECT_TRUE(bit_identical(again.download(), h));
    // Uniform in (0, 1]; odd counts are rejected for normals; host memory is rejected.
    ASSERT_EQ(curandGenerateUniform(gen, d.ptr, n), CURAND_STATUS_SUCCESS);
    for (float x : d.download()) ASSERT_TRUE(x > 0.0f && x <= 1.0f);
    EXPECT_EQ(curandGenerateNormal(gen, d.ptr, 3, 0.0f, 1.0f), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
    std::vector<float> host(8);
    EXPECT_NE(curandGenerateNormal(gen, host.data(), 8, 0.0f, 1.0f), CURAND_STATUS_SUCCESS);
    EXPECT_EQ(curandDestroyGenerator(gen), CURAND_STATUS_SUCCESS);
}

TEST_F(Simt, EventsStreamsAndCounters) {
    cudaEvent_t start, stop;
    cudaStream_t stream;
    ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    simt::reset_counters();
    ASSERT_EQ(cudaEventRecord(start, stream), cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<float> h(10, 1.5f), back(10);
    DeviceBuffer<float> d(10);
    ASSERT_EQ(cudaMemcpyAsync(d.ptr, h.data(), 40, cudaMemcpyHostToDevice, stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(back.data(), d.ptr, 40, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(back.data(), d.ptr, 40, cudaMemcpyDefault), cudaSuccess);  // inferred D2H
    ASSERT_EQ(cudaEventRecord(stop, stream), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    float ms = -1;
    ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
    EXPECT_GE(ms, 15.0f);
    EXPECT_LT(ms, 5000.0f);
    EXPECT_EQ(back, h);
    EXPECT_EQ(simt_device_to_host_copies(), 2);
    EXPECT_EQ(simt_synchronizations(), 3);  // event, stream and device synchronize
    simt::reset_counters();
    EXPECT_EQ(simt_device_to_host_copies(), 0);
    EXPECT_EQ(cudaEventDestroy(start), cudaSuccess);
    EXPECT_EQ(cudaEventDestroy(stop), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST_F(Simt, DeviceQueries) {
    int count = 0;
    ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
    EXPECT_EQ(count, 1);
    EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
    cudaDeviceProp prop;
    ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    EXPECT_EQ(prop.maxThreadsPerBlock, 1024);
    EXPECT_EQ(prop.sharedMemPerBlock, 48u * 1024);
    EXPECT_EQ(prop.warpSize, 32);
    EXPECT_TRUE(contains(simt::backend_name(), "SIMT"));
    EXPECT_STREQ(cudaGetErrorName(cudaErrorInvalidConfiguration), "cudaErrorInvalidConfiguration");
    EXPECT_STREQ(cudaGetErrorString(cudaErrorLaunchFailure), "unspecified launch failure");
}

TEST_F(Simt, AllocatorAlignsReusesAndCoalesces) {
    void *a, *b, *c, *d, *e;
    ASSERT_EQ(cudaMalloc(&a, 1000), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&b, 3000), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&c, 10), cudaSuccess);
    for (void* p : {a, b, c}) {
        EXPECT_EQ((uintptr_t)p % 256, 0u);
        EXPECT_TRUE(simt::is_device_pointer(p));
    }
    EXPECT_FALSE(simt::is_device_pointer(&a));
    ASSERT_EQ(cudaFree(b), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&d, 2000), cudaSuccess);  // first fit: b's hole
    EXPECT_EQ(d, b);
    ASSERT_EQ(cudaFree(d), cudaSuccess);
    ASSERT_EQ(cudaFree(a), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&e, 4000), cudaSuccess);  // a's and b's holes merged
    EXPECT_EQ(e, a);
    EXPECT_EQ(cudaFree(e), cudaSuccess);
    EXPECT_EQ(cudaFree(c), cudaSuccess);
    EXPECT_EQ(cudaFree(c), cudaErrorInvalidValue);  // double free
    (void)cudaGetLastError();
}

// ================================================================== fidelity checks
TEST_F(Simt, TooManyThreadsOrBadBlockShapeIsInvalidConfiguration) {
    DeviceBuffer<float> out(4), in(4);
    for (dim3 block : {dim3(1025), dim3(1024, 2), dim3(1, 1, 65), dim3(2048, 1, 1), dim3(0, 1, 1), dim3(1, 0, 1)}) {
        simt_copy_kernel<<<1, block>>>(out.ptr, in.ptr, 4);
        EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << block.x << "," << block.y << "," << block.z;
        EXPECT_TRUE(contains(simt::last_error_message(), "simt_copy_kernel"));
    }
    DeviceBuffer<int> index(1024);  // exactly 1024 is fine (each thread writes its own word)
    EXPECT_EQ(simt_launch_index(index.ptr, dim3(1), dim3(32, 32, 1)), cudaSuccess);
}

TEST_F(Simt, GridTooBigIsInvalidConfiguration) {
    DeviceBuffer<float> out(4), in(4);
    for (dim3 grid : {dim3(1, 65536), dim3(1, 1, 65536), dim3(2147483648u), dim3(0)}) {
        simt_copy_kernel<<<grid, 32>>>(out.ptr, in.ptr, 4);
        EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    }
    simt_copy_kernel<<<-1, 32>>>(out.ptr, in.ptr, 4);  // a negative int grid
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

TEST_F(Simt, DynamicSharedAbove48KiBNeedsOptIn) {
    DeviceBuffer<float> out(1);
    const int nfloats = 64 * 1024 / 4;  // 64 KiB
    out.fill_bytes(0);
    EXPECT_EQ(simt_launch_big_shared(out.ptr, nfloats), cudaErrorInvalidValue);
    EXPECT_TRUE(contains(simt::last_error_message(), "cudaFuncSetAttribute"));
    EXPECT_EQ(simt_allow_big_shared(200 * 1024), cudaErrorInvalidValue);  // above the 163 KiB opt-in maximum
    (void)cudaGetLastError();
    ASSERT_EQ(simt_allow_big_shared(nfloats * 4), cudaSuccess);
    ASSERT_EQ(simt_launch_big_shared(out.ptr, nfloats), cudaSuccess);
    EXPECT_EQ(out.download()[0], (float)(2 * (nfloats / 16) * 120));  // two blocks, each sums (i & 15)
    EXPECT_EQ(simt_launch_big_shared(out.ptr, nfloats + 1), cudaErrorInvalidValue);  // above the raised limit
}

TEST_F(Simt, DivergentSyncthreadsIsAnErrorNotAHang) {
    DeviceBuffer<int> out(32);
    bad_divergent_barrier_kernel<<<2, 32>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "barrier divergence")) << msg;
    EXPECT_TRUE(contains(msg, "bad_divergent_barrier_kernel")) << msg;
    EXPECT_TRUE(contains(msg, "16 threads at tests/simt_test_kernels.cuh:")) << msg;
    EXPECT_TRUE(contains(msg, "(__syncthreads)")) << msg;
}

TEST_F(Simt, SkippedSyncthreadsThenAnotherBarrierIsDivergence) {
    DeviceBuffer<int> out(32);
    bad_skipped_barrier_kernel<<<1, 32>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "barrier divergence in kernel 'bad_skipped_barrier_kernel'")) << msg;
    // Two groups of 16 at two different lines.
    size_t first = msg.find("16 threads at"), second = msg.find("16 threads at", first + 1);
    EXPECT_NE(first, std::string::npos) << msg;
    EXPECT_NE(second, std::string::npos) << msg;
}

TEST_F(Simt, ShuffleNotReachedByAllLanesIsAnError) {
    DeviceBuffer<int> out(64);
    bad_partial_shuffle_kernel<<<1, 64>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "warp divergence")) << msg;
    EXPECT_TRUE(contains(msg, "exited")) << msg;
    EXPECT_TRUE(contains(msg, "__shfl_sync")) << msg;

    bad_shuffle_vs_barrier_kernel<<<1, 64>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "__shfl_down_sync")) << msg;
    EXPECT_TRUE(contains(msg, "__syncthreads")) << msg;
}

TEST_F(Simt, HostPointerArgumentIsInvalidValue) {
    std::vector<float> host(16, 1.0f);
    DeviceBuffer<float> dev(16);
    simt_copy_kernel<<<1, 32>>>(dev.ptr, host.data(), 16);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "simt_copy_kernel")) << msg;
    EXPECT_TRUE(contains(msg, "argument 1")) << msg;
    for (float x : dev.download()) EXPECT_TRUE(std::isnan(x));  // the kernel did not run
    // nullptr is fine (kernels may take optional pointers).
    simt_copy_kernel<<<1, 32>>>(dev.ptr, (const float*)nullptr, 0);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST_F(Simt, FreedDevicePointerArgumentIsInvalidValue) {
    float* p;
    ASSERT_EQ(cudaMalloc(&p, 1 << 20), cudaSuccess);
    ASSERT_EQ(cudaFree(p), cudaSuccess);
    simt_copy_kernel<<<1, 32>>>(p + 1000, (const float*)nullptr, 0);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
    EXPECT_TRUE(contains(simt::last_error_message(), "not allocated"));
}

TEST(SimtDeath, HostDereferenceOfDeviceMemoryCrashesWithAMessage) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            simt::set_device_memory_protection(true);
            float* d = nullptr;
            if (cudaMalloc(&d, 4096) != cudaSuccess) abort();
            d[100] = 1.0f;  // host code writing device memory
        },
        "simt: host code touched device memory at 0x[0-9a-f]+ \\(400 bytes into a cudaMalloc of 4096 bytes\\)");
}

__global__ void cpu_only_recursive_kernel(int depth, int* out) {
    volatile char frame[1024];
    frame[0] = (char)depth;
    if (depth > 0) cpu_only_recursive_kernel(depth - 1, out);
    if (depth == 1 << 30) out[0] = frame[0];
}

TEST(SimtDeath, FiberStackOverflowIsReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            int* d = nullptr;
            if (cudaMalloc(&d, 4) != cudaSuccess) abort();
            cpu_only_recursive_kernel<<<1, 32>>>(100000, d);
        },
        "simt: fiber stack overflow in kernel 'cpu_only_recursive_kernel'");
}

TEST_F(Simt, UnwrittenDeviceMemoryReadsAsNaN) {
    DeviceBuffer<float> never_written(100), out(100);
    ASSERT_EQ(simt_launch_copy(out.ptr, never_written.ptr, 100), cudaSuccess);
    for (float x : out.download()) EXPECT_TRUE(std::isnan(x));
    DeviceBuffer<int> ints(4);
    for (int x : ints.download()) EXPECT_EQ(x, -1);
}

TEST_F(Simt, DynamicSharedMemoryStartsAs0xFFInEveryBlock) {
    const int n = 100, blocks = 3;
    DeviceBuffer<unsigned> out((size_t)n * blocks);
    simt_read_dynamic_shared_kernel<<<blocks, 64, sizeof(unsigned) * n>>>(out.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    for (unsigned x : out.download()) EXPECT_EQ(x, 0xffffffffu);
}

TEST_F(Simt, MissingSyncthreadsIsExposedByShuffledMode) {
    const int n = 64;
    auto h = random_floats(n, 11);
    std::vector<float> want(n);
    for (int i = 0; i < n; ++i) want[i] = i > 0 ? h[i - 1] : 0.0f;
    DeviceBuffer<float> in(h), out(n);
    // In index order the bad kernel happens to work: that is why the shuffled mode exists.
    simt::set_shuffle(0);
    bad_missing_sync_kernel<<<1, n, sizeof(float) * n>>>(out.ptr, in.ptr, n);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(out.download(), want);
    for (unsigned long long seed : {1ull, 2ull, 3ull}) {
        simt::set_shuffle(seed);
        bad_missing_sync_kernel<<<1, n, sizeof(float) * n>>>(out.ptr, in.ptr, n);
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        auto got = out.download();
        EXPECT_NE(got, want) << "seed " << seed;
        EXPECT_TRUE(std::any_of(got.begin(), got.end(), [](float x) { return std::isnan(x); })) << "seed " << seed;
        simt_shift_kernel<<<1, n, sizeof(float) * n>>>(out.ptr, in.ptr, n);  // the correct twin
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(out.download(), want) << "seed " << seed;
    }
}

TEST_F(Simt, TrapAbandonsTheLaunchAndLaterLaunchesWork) {
    DeviceBuffer<int> out(4 * 64);
    bad_trap_kernel<<<4, 64>>>(out.ptr, 2, 5);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    const std::string msg = simt::last_error_message();
    EXPECT_TRUE(contains(msg, "__trap()")) << msg;
    EXPECT_TRUE(contains(msg, "bad_trap_kernel")) << msg;
    EXPECT_TRUE(contains(msg, "block (2,0,0) thread (5,0,0)")) << msg;
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
    // The same kernel without the trap runs to completion.
    bad_trap_kernel<<<4, 64>>>(out.ptr, -1, -1);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    for (int x : out.download()) EXPECT_EQ(x, 1);
}

// CPU-only: a C++ exception inside a kernel unwinds every fiber of the block (destructors run).
std::atomic<int> g_alive{0};
struct Tracked {
    Tracked() { ++g_alive; }
    ~Tracked() { --g_alive; }
};
__global__ void cpu_only_throwing_kernel(int* out) {
    Tracked t;
    __syncthreads();
    if (threadIdx.x == 3) throw std::runtime_error("boom from thread 3");
    __syncthreads();
    out[threadIdx.x] = 1;
}

TEST_F(Simt, ExceptionInKernelIsALaunchFailureAndFibersUnwind) {
    DeviceBuffer<int> out(64);
    cpu_only_throwing_kernel<<<2, 32>>>(out.ptr);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);  // reported by the next sync too
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    EXPECT_TRUE(contains(simt::last_error_message(), "boom from thread 3"));
    EXPECT_EQ(g_alive.load(), 0);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(simt_launch_copy((float*)out.ptr, (const float*)out.ptr, 64), cudaSuccess);
}

// CPU-only: a kernel that launches a kernel (dynamic parallelism) is refused, not deadlocked.
__global__ void cpu_only_child_kernel(int* out) { out[threadIdx.x] = 2; }
__global__ void cpu_only_parent_kernel(int* out) {
    if (threadIdx.x == 0) cpu_only_child_kernel<<<1, 4>>>(out);
}

TEST_F(Simt, LaunchFromDeviceCodeIsNotSupported) {
    DeviceBuffer<int> out(4);
    cpu_only_parent_kernel<<<1, 32>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorNotSupported);
    EXPECT_TRUE(contains(simt::last_error_message(), "dynamic parallelism"));
    for (int x : out.download()) EXPECT_EQ(x, -1);
}

// A shuffle width that is not a power of two is reported (undefined on a GPU).
__global__ void bad_width_kernel(int* out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1, 12); }

TEST_F(Simt, ShuffleWidthMustBeAPowerOfTwo) {
    DeviceBuffer<int> out(32);
    bad_width_kernel<<<1, 32>>>(out.ptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    EXPECT_TRUE(contains(simt::last_error_message(), "invalid width 12"));
}

TEST_F(Simt, CublasArgumentChecks) {
    DeviceBuffer<float> A(64), B(64), C(64);
    const float one = 1.0f, zero = 0.0f;
    auto h = cublas_handle();
    // lda < m for op N
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, A.ptr, 7, B.ptr, 8, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    // lda < k for op T, ldb < n for op T, ldc < m
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 4, 8, 6, &one, A.ptr, 5, B.ptr, 8, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, 8, 8, 8, &one, A.ptr, 8, B.ptr, 7, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, A.ptr, 8, B.ptr, 8, &zero, C.ptr, 7),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 8, 8, &one, A.ptr, 8, B.ptr, 8, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.ptr, 2, 4, B.ptr, 2, 4, &zero,
                                        C.ptr, 2, 4, -1),
              CUBLAS_STATUS_INVALID_VALUE);
    // Host matrices, and matrices reaching past their allocation.
    std::vector<float> host(64);
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, host.data(), 8, B.ptr, 8, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_TRUE(contains(simt::last_error_message(), "not a device pointer"));
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 9, 8, &one, A.ptr, 8, B.ptr, 8, &zero, C.ptr, 8),
              CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.ptr, 4, 16, B.ptr, 4, 16,
                                        &zero, C.ptr, 4, 16, 5),
              CUBLAS_STATUS_INVALID_VALUE);
    // The valid corner cases.
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, 8, 8, &one, A.ptr, 1, B.ptr, 8, &zero, C.ptr, 1),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.ptr, 4, 16, B.ptr, 4, 16,
                                        &zero, C.ptr, 4, 16, 4),
              CUBLAS_STATUS_SUCCESS);
}

TEST_F(Simt, CudaMemcpyValidatesKindsAndRanges) {
    DeviceBuffer<float> d(16), d2(16);
    std::vector<float> h(16, 2.0f), h2(16);
    EXPECT_EQ(cudaMemcpy(d.ptr, d2.ptr, 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // src is device
    EXPECT_EQ(cudaMemcpy(h.data(), h2.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // dst is host
    EXPECT_EQ(cudaMemcpy(h2.data(), h.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);  // src is host
    EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), 64, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), 68, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // past the end
    EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), 64, (cudaMemcpyKind)7), cudaErrorInvalidMemcpyDirection);
    EXPECT_EQ(cudaMemset(d.ptr + 8, 0, 64), cudaErrorInvalidValue);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // the last failing call
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    // Default infers every direction.
    EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), 64, cudaMemcpyDefault), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d2.ptr, d.ptr, 64, cudaMemcpyDefault), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h2.data(), d2.ptr, 64, cudaMemcpyDefault), cudaSuccess);
    EXPECT_EQ(h2, h);
}

// ================================================================== determinism and shuffled mode
struct Outputs {
    std::vector<float> softmax, transpose, matmul;
    std::vector<int> histogram;
};

Outputs run_reference_kernels() {
    Outputs o;
    const int rows = 29, cols = 75, M = 33, N = 21, K = 40, n = 5000, nbins = 19;
    auto x = random_floats((size_t)rows * cols, 7);
    DeviceBuffer<float> in(x), out((size_t)rows * cols);
    EXPECT_EQ(simt_softmax(out.ptr, in.ptr, rows, cols, 64), cudaSuccess);
    o.softmax = out.download();
    EXPECT_EQ(simt_transpose(out.ptr, in.ptr, rows, cols), cudaSuccess);
    o.transpose = out.download();
    auto A = random_floats((size_t)M * K, 8), B = random_floats((size_t)K * N, 9);
    DeviceBuffer<float> dA(A), dB(B), dC((size_t)M * N);
    EXPECT_EQ(row_major_matmul(dC.ptr, dA.ptr, dB.ptr, M, N, K, false), CUBLAS_STATUS_SUCCESS);
    o.matmul = dC.download();
    std::vector<int> values(n);
    for (int i = 0; i < n; ++i) values[i] = (i * 7919) % 1000;
    DeviceBuffer<int> dv(values), bins(nbins);
    bins.fill_bytes(0);
    EXPECT_EQ(simt_histogram(bins.ptr, dv.ptr, n, nbins), cudaSuccess);
    o.histogram = bins.download();
    return o;
}

TEST_F(Simt, OneAndTwoWorkerThreadsGiveBitIdenticalResults) {
    simt::set_worker_threads(1);
    Outputs one = run_reference_kernels();
    simt::set_worker_threads(2);
    EXPECT_EQ(simt::worker_threads(), 2);
    Outputs two = run_reference_kernels();
    EXPECT_TRUE(bit_identical(one.softmax, two.softmax));
    EXPECT_TRUE(bit_identical(one.transpose, two.transpose));
    EXPECT_TRUE(bit_identical(one.matmul, two.matmul));
    EXPECT_EQ(one.histogram, two.histogram);
}

TEST_F(Simt, CorrectKernelsPassUnderShuffledMode) {
    simt::set_shuffle(0);
    Outputs plain = run_reference_kernels();
    for (unsigned long long seed : {17ull, 123456789ull}) {
        simt::set_shuffle(seed);
        Outputs shuffled = run_reference_kernels();
        // The reductions run in a fixed order whatever the thread order: bit-identical.
        EXPECT_TRUE(bit_identical(plain.softmax, shuffled.softmax));
        EXPECT_TRUE(bit_identical(plain.transpose, shuffled.transpose));
        EXPECT_EQ(plain.histogram, shuffled.histogram);
    }
}

}  // namespace
