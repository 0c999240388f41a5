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
// step through it with stride blockDim: each warp step reads and writes 32 consecutive floats
// (coalesced); the bias row is small and stays in cache.
__global__ void add_bias_kernel(float* out,         // (N,OC)
                                const float* bias,  // (OC)
                                int N, int OC) {
    const long n = (long)N * OC;
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] += bias[i % OC];
}

// The bias gradient of a batch of linear layers (the project's one bias-gradient kernel):
//   dbias[b,o] += sum_n dout[b,n,o]
// Grid (column tiles of 32, batch); block = 32 columns x G row groups (blockDim.x = 32 G). Thread
// (g, lane) sums rows g, g+G, g+2G, ... of column o in order: at each row a warp reads 32
// consecutive floats (one coalesced 128-byte load). The G partials then meet in shared memory
// and warp 0 adds them in group order. G is chosen by the launcher from the shapes only, so the
// order of every float sum is fixed (no atomics, same bits on every run). With G = 1 the sum is
// exactly a sequential in-order sum of the column followed by one `dbias +=` (0 + partial is exact).
// What limits it: there are only ceil(OC/32) * batch blocks, so for a single matrix with many rows
// the G warps per block are what keeps the GPU busy; a batch of matrices brings its own blocks.
__global__ void bias_backward_kernel(float* dbias,       // (batch,OC) +=
                                     const float* dout,  // (batch,N,OC), batch b at dout + b * dout_stride
                                     long dout_stride, int N, int OC) {
    extern __shared__ float partial[];  // (G, 32)
    const int lane = threadIdx.x % 32;
    const int group = threadIdx.x / 32;
    const int groups = blockDim.x / 32;
    const int o = blockIdx.x * 32 + lane;
    const float* d = dout + blockIdx.y * dout_stride;

    float acc = 0.0f;
    if (o < OC) {
        for (int n = group; n < N; n += groups) acc += d[(long)n * OC + o];
    }
    partial[group * 32 + lane] = acc;
    __syncthreads();
    if (group == 0 && o < OC) {
        float sum = 0.0f;
        for (int g = 0; g < groups; g++) sum += partial[g * 32 + lane];
        dbias[(long)blockIdx.y * OC + o] += sum;
    }
}

// Batched form: batch b adds the column sums of its (N,OC) matrix into row b of dbias. dout_stride
// is the distance between the batch's matrices (0: every b sums the same matrix); row_groups is G
// above, 1 to 32 (1 = one sequential in-order sum per column).
inline void bias_backward(float* dbias,       // (batch,OC) +=
                          const float* dout,  // (batch,N,OC) with batch stride dout_stride (0: one shared matrix)
                          long dout_stride, int batch, int N, int OC, int row_groups) {
    if (OC <= 0 || batch <= 0) return;
    bias_backward_kernel<<<dim3(ceil_div(OC, 32), batch), row_groups * 32, row_groups * 32 * sizeof(float)>>>(
        dbias, dout, dout_stride, N, OC);
    CUDA_CHECK(cudaGetLastError());
}

// One linear layer: ~64 rows per thread (G = N/64, 1..32).
inline void bias_backward(float* dbias,       // (OC) +=
                          const float* dout,  // (N,OC)
                          int N, int OC) {
    const int row_groups = N / 64 < 1 ? 1 : N / 64 > 32 ? 32 : N / 64;
    bias_backward(dbias, dout, 0, 1, N, OC, row_groups);
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
        add_bias_kernel<<<ceil_div((long)N * OC, 32L * 128), 128>>>(out, bias, N, OC);
        CUDA_CHECK(cudaGetLastError());
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
