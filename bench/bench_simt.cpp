// bench/bench_simt.cpp: what the SIMT layer costs per CUDA thread (make bench-simt).
//
// Rows: an empty kernel (fiber start + finish), __syncthreads and warp shuffles per thread, and a
// shared-memory row softmax against the same math as a plain C++ loop. Median of several runs.
// Env SIMT_THREADS picks the worker count, as everywhere.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "common.cuh"

namespace {
constexpr int kBarriers = 64;
constexpr int kShuffles = 64;

__global__ void empty_kernel() {}

__global__ void barrier_kernel(int* out) {
    int x = threadIdx.x;
    for (int i = 0; i < kBarriers; ++i) {
        x = x * 3 + 1;
        __syncthreads();
    }
    if (x == 42) out[0] = x;  // keeps the loop alive
}

__global__ void shuffle_kernel(int* out) {
    int x = threadIdx.x;
    for (int i = 0; i < kShuffles; ++i) x += __shfl_xor_sync(0xffffffffu, x, i & 31);
    if (x == 42) out[0] = x;
}

// One block per row; block-wide max and sum through warp shuffles and a shared array of partials.
__global__ void softmax_kernel(float* out, const float* in, int cols) {
    extern __shared__ float row[];  // [cols]
    float* partial = row + cols;    // [32]
    const float* x = in + (long)blockIdx.x * cols;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        row[c] = x[c];
        m = fmaxf(m, row[c]);
    }
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) partial[warp] = m;
    __syncthreads();
    m = partial[0];
    for (int w = 1; w < warps; ++w) m = fmaxf(m, partial[w]);
    __syncthreads();
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        row[c] = expf(row[c] - m);
        s += row[c];
    }
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    s = 0.0f;
    for (int w = 0; w < warps; ++w) s += partial[w];
    const float inv = 1.0f / s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = row[c] * inv;
}

void softmax_cpu(float* out, const float* in, int rows, int cols) {
    for (int r = 0; r < rows; ++r) {
        const float* x = in + (long)r * cols;
        float* y = out + (long)r * cols;
        float m = -INFINITY;
        for (int c = 0; c < cols; ++c) m = fmaxf(m, x[c]);
        float s = 0.0f;
        for (int c = 0; c < cols; ++c) {
            y[c] = expf(x[c] - m);
            s += y[c];
        }
        const float inv = 1.0f / s;
        for (int c = 0; c < cols; ++c) y[c] *= inv;
    }
}

double cpu_ms() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Median over `reps` runs of the process CPU time (all worker threads), or of the wall time with
// BENCH_WALL=1. CPU time is the default because the build machine is shared: wall time there
// measures the other jobs too.
double median_ms(int reps, const std::function<void()>& f) {
    static const bool wall = getenv("BENCH_WALL") != nullptr;
    f();  // warm-up: stacks, pages
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        auto w0 = std::chrono::steady_clock::now();
        double c0 = cpu_ms();
        f();
        double c1 = cpu_ms();
        auto w1 = std::chrono::steady_clock::now();
        t.push_back(wall ? std::chrono::duration<double, std::milli>(w1 - w0).count() : c1 - c0);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
}  // namespace

int main() {
    const int blocks = 4096, threads = 256, rows = 4096, cols = 256, reps = 5;
    const double nthreads = (double)blocks * threads;
    int* d_sink;
    float *d_in, *d_out;
    CUDA_CHECK(cudaMalloc(&d_sink, sizeof(int)));
    CUDA_CHECK(cudaMalloc(&d_in, sizeof(float) * rows * cols));
    CUDA_CHECK(cudaMalloc(&d_out, sizeof(float) * rows * cols));
    std::vector<float> h_in((size_t)rows * cols), h_out((size_t)rows * cols), h_ref((size_t)rows * cols);
    for (size_t i = 0; i < h_in.size(); ++i) h_in[i] = (float)((i * 2654435761u) % 1000) * 0.01f - 5.0f;
    CUDA_CHECK(cudaMemcpy(d_in, h_in.data(), sizeof(float) * h_in.size(), cudaMemcpyHostToDevice));

    printf("SIMT layer benchmark: %s, %s time, median of %d runs\n", simt::backend_name(),
           getenv("BENCH_WALL") ? "wall" : "process CPU", reps);
    printf("%-46s %10s %12s\n", "measurement", "ms", "ns per unit");

    double t = median_ms(reps, [&] {
        empty_kernel<<<blocks, threads>>>();
        CUDA_CHECK(cudaGetLastError());
    });
    printf("%-46s %10.2f %12.1f\n", "empty kernel 4096x256 (per CUDA thread)", t, t * 1e6 / nthreads);
    const double t_empty = t;

    t = median_ms(reps, [&] {
        barrier_kernel<<<blocks, threads>>>(d_sink);
        CUDA_CHECK(cudaGetLastError());
    });
    printf("%-46s %10.2f %12.1f\n", "64 x __syncthreads (per barrier per thread)", t,
           (t - t_empty) * 1e6 / (nthreads * kBarriers));

    t = median_ms(reps, [&] {
        shuffle_kernel<<<blocks, threads>>>(d_sink);
        CUDA_CHECK(cudaGetLastError());
    });
    printf("%-46s %10.2f %12.1f\n", "64 x __shfl_xor_sync (per shuffle per thread)", t,
           (t - t_empty) * 1e6 / (nthreads * kShuffles));

    const size_t shared = sizeof(float) * (cols + 32);
    const double t_simt = median_ms(reps, [&] {
        softmax_kernel<<<rows, threads, shared>>>(d_out, d_in, cols);
        CUDA_CHECK(cudaGetLastError());
    });
    printf("%-46s %10.2f %12.1f\n", "softmax 4096x256, SIMT kernel (per element)", t_simt,
           t_simt * 1e6 / ((double)rows * cols));
    const double t_cpu = median_ms(reps, [&] { softmax_cpu(h_ref.data(), h_in.data(), rows, cols); });
    printf("%-46s %10.2f %12.1f\n", "softmax 4096x256, plain C++ loop (per element)", t_cpu,
           t_cpu * 1e6 / ((double)rows * cols));
    printf("%-46s %10.1fx\n", "ratio SIMT / plain loop", t_simt / t_cpu);

    CUDA_CHECK(cudaMemcpy(h_out.data(), d_out, sizeof(float) * h_out.size(), cudaMemcpyDeviceToHost));
    double err = 0;
    for (size_t i = 0; i < h_out.size(); ++i) err = std::max(err, (double)fabsf(h_out[i] - h_ref[i]));
    printf("softmax max |SIMT - loop| = %.3g\n", err);
    CUDA_CHECK(cudaFree(d_sink));
    CUDA_CHECK(cudaFree(d_in));
    CUDA_CHECK(cudaFree(d_out));
    return err < 1e-5 ? 0 : 1;
}
