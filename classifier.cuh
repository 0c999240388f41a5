// classifier.cuh: the loss head (docs/model.md section 7). The logits themselves are a
// matmul (lnf(x) wte^T, weights tied); here: fused softmax + cross-entropy with its gradient,
// and the mean of the per-position losses.
#pragma once
#include <cmath>
#include "common.cuh"

// per row n, with m = max_j logits[n,j] and S = sum_j exp(logits[n,j] - m):
//   losses[n] = log S + m - logits[n, target]
//   dlogits[n,j] = (exp(logits[n,j] - m) / S - [j == target]) * dloss
// A group of `lanes` = threads_per_row(V) consecutive threads per row (common.cuh): lane l reads
// columns l, l + lanes, ... (each step of the group is `lanes` consecutive floats: coalesced), and
// max and sum are butterfly __shfl_xor_sync reductions inside the group, after which every lane
// holds the same bits. The logits are read three times (max, sum, gradient) and dlogits written
// once: the kernel is memory-bound, and each row's second and third passes hit the cache.
// Groups past the last row load and store nothing but still take part in the shuffles (a shuffle
// needs every lane of its mask).
__global__ void crossentropy_forward_backward_kernel(float* losses,          // (N)
                                                     float* dlogits,         // (N,V) or nullptr
                                                     const float* logits,    // (N,V)
                                                     const int* targets,     // (N)
                                                     int N, int V, float dloss, int lanes) {
    const int lane = threadIdx.x % lanes;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    const int len = row < N ? V : 0;  // idle groups skip the loops
    const float* l = logits + (long)row * V;

    float maxval = -INFINITY;
    for (int j = lane; j < len; j += lanes) maxval = fmaxf(maxval, l[j]);
    for (int offset = lanes / 2; offset > 0; offset /= 2) maxval = fmaxf(maxval, __shfl_xor_sync(0xffffffff, maxval, offset));

    float sum = 0.0f;
    for (int j = lane; j < len; j += lanes) sum += expf(l[j] - maxval);
    for (int offset = lanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);

    if (len == 0) return;  // after the last shuffle
    const int target = targets[row];
    if (lane == 0) losses[row] = logf(sum) + maxval - l[target];
    if (dlogits != nullptr) {
        const float inv_sum = 1.0f / sum;
        float* dl = dlogits + (long)row * V;
        for (int j = lane; j < V; j += lanes) {
            const float p = expf(l[j] - maxval) * inv_sum;
            dl[j] = (p - (j == target ? 1.0f : 0.0f)) * dloss;
        }
    }
}

// out[0] = sum_i x[i] / n
// A single warp (n is the number of positions, a few thousand): lane l sums x[l], x[l+32], ... in
// order (coalesced), then a shuffle tree; deterministic.
__global__ void mean_forward_kernel(float* out,      // (1)
                                    const float* x,  // (n)
                                    int n) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += 32) sum += x[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (threadIdx.x == 0) out[0] = n > 0 ? sum / n : 0.0f;
}

inline void crossentropy_forward_backward(float* losses,        // (N)
                                          float* dlogits,       // (N,V) overwritten, = (softmax - onehot) * dloss; nullptr = forward only
                                          const float* logits,  // (N,V)
                                          const int* targets,   // (N)
                                          int N, int V, float dloss /* = 1/N */) {
    if (N <= 0) return;
    const int lanes = threads_per_row(V);
    crossentropy_forward_backward_kernel<<<ceil_div((long)N * lanes, 128), 128>>>(losses, dlogits, logits, targets,
                                                                                  N, V, dloss, lanes);
    CUDA_CHECK(cudaGetLastError());
}

inline void mean_forward(float* out,      // (1)
                         const float* x,  // (n)
                         int n) {
    mean_forward_kernel<<<1, 32>>>(out, x, n);
    CUDA_CHECK(cudaGetLastError());
}
