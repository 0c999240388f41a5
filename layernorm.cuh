// layernorm.cuh: LayerNorm over the last dimension C (docs/model.md section 3: biased variance,
// eps = 1e-5, weight and bias), forward and backward.
//
// Both row kernels give each row a group of `lanes` = threads_per_row(C) consecutive threads
// (common.cuh: 4, 8, 16 or 32, ~32 columns per lane; a full warp from C = 513 up), so a warp
// normalises 32 / lanes rows at once. The lanes stride over C (each step a group reads 4*lanes
// contiguous bytes: coalesced), and the row statistics come from butterfly __shfl_xor_sync
// reductions inside the group, after which every lane holds the same bits. Groups past the last
// row load and store nothing but still take part in the shuffles (a shuffle needs every lane of
// its mask). The kernels are memory-bound: a row is read two or three times (the later passes hit
// the cache) and written once. Parameter gradients are column sums over the N rows, done by a
// separate deterministic kernel.
#pragma once
#include "common.cuh"

// mean = sum_c x_c / C,  rstd = 1 / sqrt(sum_c (x_c - mean)^2 / C + 1e-5)
// out_c = (x_c - mean) * rstd * weight_c + bias_c
__global__ void layernorm_forward_kernel(float* out,           // (N,C)
                                         float* mean,          // (N) or nullptr
                                         float* rstd,          // (N) or nullptr
                                         const float* inp,     // (N,C)
                                         const float* weight,  // (C)
                                         const float* bias,    // (C)
                                         int N, int C, int lanes) {
    const int lane = threadIdx.x % lanes;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    const int len = row < N ? C : 0;  // idle groups skip the loops
    const float* x = inp + (long)row * C;

    float sum = 0.0f;
    for (int c = lane; c < len; c += lanes) sum += x[c];
    for (int offset = lanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    const float m = sum / C;

    float sumsq = 0.0f;
    for (int c = lane; c < len; c += lanes) {
        const float d = x[c] - m;
        sumsq += d * d;
    }
    for (int offset = lanes / 2; offset > 0; offset /= 2) sumsq += __shfl_xor_sync(0xffffffff, sumsq, offset);
    const float s = 1.0f / sqrtf(sumsq / C + 1e-5f);

    float* y = out + (long)row * C;
    for (int c = lane; c < len; c += lanes) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    if (len > 0 && lane == 0) {
        if (mean != nullptr) mean[row] = m;
        if (rstd != nullptr) rstd[row] = s;
    }
}

// norm_c = (x_c - mean) * rstd,  dnorm_c = weight_c * dout_c
// dinp_c += rstd * (dnorm_c - mean_c'(dnorm) - norm_c * mean_c'(dnorm * norm))
__global__ void layernorm_backward_dinp_kernel(float* dinp,          // (N,C) +=
                                               const float* dout,    // (N,C)
                                               const float* inp,     // (N,C)
                                               const float* weight,  // (C)
                                               const float* mean,    // (N)
                                               const float* rstd,    // (N)
                                               int N, int C, int lanes) {
    const int lane = threadIdx.x % lanes;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    const int len = row < N ? C : 0;  // idle groups skip the loops
    const float* x = inp + (long)row * C;
    const float* dy = dout + (long)row * C;
    const float m = len > 0 ? mean[row] : 0.0f;
    const float s = len > 0 ? rstd[row] : 0.0f;

    float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
    for (int c = lane; c < len; c += lanes) {
        const float dnorm = weight[c] * dy[c];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * (x[c] - m) * s;
    }
    for (int offset = lanes / 2; offset > 0; offset /= 2) {
        dnorm_sum += __shfl_xor_sync(0xffffffff, dnorm_sum, offset);
        dnorm_norm_sum += __shfl_xor_sync(0xffffffff, dnorm_norm_sum, offset);
    }
    const float dnorm_mean = dnorm_sum / C;
    const float dnorm_norm_mean = dnorm_norm_sum / C;

    float* dx = dinp + (long)row * C;
    for (int c = lane; c < len; c += lanes) {
        const float norm = (x[c] - m) * s;
        dx[c] += s * (weight[c] * dy[c] - dnorm_mean - norm * dnorm_norm_mean);
    }
}

// dweight_c += sum_n dout[n,c] * norm[n,c],  dbias_c += sum_n dout[n,c]
// Block = 32 channels x G row groups: thread (g, lane) sums rows g, g+G, ... of its channel in
// order (a warp reads 32 consecutive floats per row), then the G partials are added in group
// order. G depends on N only (~64 rows per thread, 1..32), so the result is deterministic.
__global__ void layernorm_backward_params_kernel(float* dweight,      // (C) +=
                                                 float* dbias,        // (C) +=
                                                 const float* dout,   // (N,C)
                                                 const float* inp,    // (N,C)
                                                 const float* mean,   // (N)
                                                 const float* rstd,   // (N)
                                                 int N, int C) {
    const int lane = threadIdx.x % 32;
    const int group = threadIdx.x / 32;
    const int groups = blockDim.x / 32;
    const int c = blockIdx.x * 32 + lane;
    extern __shared__ float partial[];  // (2, groups, 32): dweight partials, then dbias

    float dw = 0.0f, db = 0.0f;
    if (c < C) {
        for (int n = group; n < N; n += groups) {
            const float dy = dout[(long)n * C + c];
            dw += dy * (inp[(long)n * C + c] - mean[n]) * rstd[n];
            db += dy;
        }
    }
    partial[group * 32 + lane] = dw;
    partial[(groups + group) * 32 + lane] = db;
    __syncthreads();
    if (group == 0 && c < C) {
        float sum_dw = 0.0f, sum_db = 0.0f;
        for (int g = 0; g < groups; g++) {
            sum_dw += partial[g * 32 + lane];
            sum_db += partial[(groups + g) * 32 + lane];
        }
        dweight[c] += sum_dw;
        dbias[c] += sum_db;
    }
}

inline void layernorm_forward(float* out,           // (N,C)
                              float* mean,          // (N)
                              float* rstd,          // (N)
                              const float* inp,     // (N,C)
                              const float* weight,  // (C)
                              const float* bias,    // (C)
                              int N, int C) {
    if (N <= 0) return;
    const int lanes = threads_per_row(C), block = 128;
    layernorm_forward_kernel<<<ceil_div((long)N * lanes, block), block>>>(out, mean, rstd, inp, weight, bias, N, C,
                                                                          lanes);
    CUDA_CHECK(cudaGetLastError());
}

inline void layernorm_backward(float* dinp,          // (N,C) +=, accumulates (residual stream)
                               float* dweight,       // (C) +=
                               float* dbias,         // (C) +=
                               const float* dout,    // (N,C)
                               const float* inp,     // (N,C)
                               const float* weight,  // (C)
                               const float* mean,    // (N)
                               const float* rstd,    // (N)
                               int N, int C) {
    if (N <= 0) return;
    const int lanes = threads_per_row(C), block = 128;
    layernorm_backward_dinp_kernel<<<ceil_div((long)N * lanes, block), block>>>(dinp, dout, inp, weight, mean, rstd,
                                                                                N, C, lanes);
    CUDA_CHECK(cudaGetLastError());
    const int groups = N / 64 < 1 ? 1 : N / 64 > 32 ? 32 : N / 64;  // ~64 rows per thread
    layernorm_backward_params_kernel<<<ceil_div(C, 32), groups * 32, 2 * groups * 32 * sizeof(float)>>>(
        dweight, dbias, dout, inp, mean, rstd, N, C);
    CUDA_CHECK(cudaGetLastError());
}
