// matmul.cuh: the linear layer out = inp W^T + b, W stored [out, in] (PyTorch layout), and its
// backward. The products go through cuBLAS; only the bias is a kernel of our own.
//
// cuBLAS is column-major. A row-major (R,K) matrix is, read column-major, its transpose (K,R) with
// leading dimension K, so every row-major product below is issued as its transpose:
//   out = inp W^T        <=>  out^T (OC,N) = W (OC,IC) . inp^T (IC,N)
//   dinp = dout W        <=>  dinp^T (IC,N) = W^T (IC,OC) . dout^T (OC,N)
//   dweight += dout^T inp <=> dweight^T (IC,OC) += inp^T (IC,N) . dout (N,OC)
#pragma once
#include "common.cuh"

// out[n,o] += bias[o]
// Block b owns the tile [b*32*blockDim, (b+1)*32*blockDim) of the N*OC elements and its threads
// step through it with stride blockDim (coalesced on a GPU, cache-resident on the CPU layer).
__global__ void add_bias_kernel(float* out,         // (N,OC)
                                const float* bias,  // (OC)
                                int N, int OC) {
    const long n = (long)N * OC;
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] += bias[i % OC];
}

// dbias[o] += sum_n dout[n,o]
// Block = 32 columns x G row groups: thread (g, lane) sums rows g, g+G, ... of its column in order
// (a warp reads 32 consecutive floats per row), then the G partials are added in group order.
// G depends on N only (~64 rows per thread, 1..32), so the result is deterministic; no atomics.
__global__ void bias_backward_kernel(float* dbias,        // (OC) +=
                                     const float* dout,   // (N,OC)
                                     int N, int OC) {
    const int lane = threadIdx.x % 32;
    const int group = threadIdx.x / 32;
    const int groups = blockDim.x / 32;
    const int o = blockIdx.x * 32 + lane;
    float* partial = dynamic_shared<float>();  // (groups, 32)

    float acc = 0.0f;
    if (o < OC) {
        for (int n = group; n < N; n += groups) acc += dout[(long)n * OC + o];
    }
    partial[group * 32 + lane] = acc;
    __syncthreads();
    if (group == 0 && o < OC) {
        float sum = 0.0f;
        for (int g = 0; g < groups; g++) sum += partial[g * 32 + lane];
        dbias[o] += sum;
    }
}

inline void bias_backward(float* dbias,       // (OC) +=
                          const float* dout,  // (N,OC)
                          int N, int OC) {
    if (OC <= 0) return;
    const int groups = N / 64 < 1 ? 1 : N / 64 > 32 ? 32 : N / 64;  // ~64 rows per thread
    LAUNCH(bias_backward_kernel, ceil_div(OC, 32), groups * 32, groups * 32 * sizeof(float), 0, dbias, dout, N, OC);
    CUDA_CHECK_LAUNCH();
}

inline void matmul_forward(float* out,           // (N,OC)
                           const float* inp,     // (N,IC)
                           const float* weight,  // (OC,IC)
                           const float* bias,    // (OC) or nullptr
                           int N, int IC, int OC) {
    if ((long)N * OC <= 0) return;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC,
                             &one, weight, IC, inp, IC, &zero, out, OC));
    if (bias != nullptr) {
        LAUNCH(add_bias_kernel, ceil_div((long)N * OC, 32L * 128), 128, 0, 0, out, bias, N, OC);
        CUDA_CHECK_LAUNCH();
    }
}

inline void matmul_backward(float* dinp,          // (N,IC) overwritten; nullptr = skip
                            float* dweight,       // (OC,IC) +=
                            float* dbias,         // (OC) += or nullptr
                            const float* dout,    // (N,OC)
                            const float* inp,     // (N,IC)
                            const float* weight,  // (OC,IC)
                            int N, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    if (dinp != nullptr && (long)N * IC > 0) {
        CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC,
                                 &one, weight, IC, dout, OC, &zero, dinp, IC));
    }
    if (N > 0 && (long)IC * OC > 0) {
        CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N,
                                 &one, inp, IC, dout, OC, &one, dweight, IC));
    }
    if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
}
