// optim.cuh: the optimizer: global gradient norm (deterministic two-pass reduction), the clip
// scale computed on the device (no host read), AdamW with PyTorch semantics, and the learning-rate
// schedule (host).
#pragma once
#include <cmath>
#include "common.cuh"

// partial[b] = sum of x[i]^2 over block b's tile [b*tile, (b+1)*tile)
// Pass 1 of 2: each thread accumulates its elements in index order (stride blockDim inside the tile,
// so each warp step reads 32 consecutive floats: coalesced), then a shuffle tree per warp, then
// thread 0 adds the warp sums in warp order. tile and the grid depend on n only, so the result is
// fixed. Memory-bound: every gradient float is read once.
__global__ void norm_squared_partial_kernel(float* partial,   // (gridDim.x)
                                            const float* x,   // (n)
                                            long n, long tile) {
    __shared__ float warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const long begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    float sum = 0.0f;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) sum += x[i] * x[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float block_sum = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) block_sum += warp_sums[w];
        partial[blockIdx.x] = block_sum;
    }
}

// out[0] = sum_{b < count} partial[b]
// Pass 2 of 2: a single warp (at most 1024 partials), lane l sums partial[l], partial[l+32], ...
// then a shuffle tree.
__global__ void norm_squared_final_kernel(float* out,             // (1)
                                          const float* partial,   // (count)
                                          int count) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < count; i += 32) sum += partial[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (threadIdx.x == 0) out[0] = sum;
}

// scale = max_norm > 0 ? min(1, max_norm / (sqrt(norm_squared) + 1e-6)) : 1
__global__ void clip_scale_kernel(float* scale,               // (1)
                                  const float* norm_squared,  // (1)
                                  float max_norm) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        scale[0] = max_norm > 0.0f ? fminf(1.0f, max_norm / (sqrtf(norm_squared[0]) + 1e-6f)) : 1.0f;
    }
}

// g = grad * scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
// p -= lr * ((m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p)
// Block b owns the tile [b*32*blockDim, (b+1)*32*blockDim) (threads step by blockDim, so every
// warp access is 32 consecutive floats: coalesced); the bias corrections come from the host.
// Memory-bound: four floats read and three written per parameter.
__global__ void adamw_kernel(float* params,             // (n)
                             const float* grads,        // (n)
                             float* m,                  // (n) first moment
                             float* v,                  // (n) second moment
                             long n, float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bias_correction1,    // 1 - beta1^step
                             float bias_correction2,    // 1 - beta2^step
                             const float* grad_scale) { // (1) or nullptr (= 1)
    const float scale = grad_scale != nullptr ? grad_scale[0] : 1.0f;
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float g = grads[i] * scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / bias_correction1;
        const float vhat = vi / bias_correction2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
    }
}

inline void global_norm_squared(float* out,          // (1) overwritten
                                float* scratch,      // (>= 1024 floats)
                                const float* x,      // (n)
                                long n) {
    // ~256 elements per thread (so the 5 shuffles and the barrier of a thread are a small part of its
    // work), at most 1024 blocks (one partial per scratch float); tiles split n evenly
    const int block = 256;
    long blocks = (n + block * 256L - 1) / (block * 256L);
    if (blocks < 1) blocks = 1;
    if (blocks > 1024) blocks = 1024;
    const long tile = (n + blocks - 1) / blocks;
    norm_squared_partial_kernel<<<(int)blocks, block>>>(scratch, x, n, tile);
    CUDA_CHECK(cudaGetLastError());
    norm_squared_final_kernel<<<1, 32>>>(out, scratch, (int)blocks);
    CUDA_CHECK(cudaGetLastError());
}

inline void clip_scale(float* scale,               // (1)
                       const float* norm_squared,  // (1)
                       float max_norm) {
    clip_scale_kernel<<<1, 1>>>(scale, norm_squared, max_norm);
    CUDA_CHECK(cudaGetLastError());
}

inline void adamw_update(float* params,           // (n)
                         const float* grads,      // (n)
                         float* m,                // (n)
                         float* v,                // (n)
                         long n, float lr, float beta1, float beta2, float eps, float weight_decay,
                         int step,                // 1-based
                         const float* grad_scale) {  // (1) device, or nullptr for 1
    if (n <= 0) return;
    const float bias_correction1 = 1.0f - powf(beta1, (float)step);
    const float bias_correction2 = 1.0f - powf(beta2, (float)step);
    adamw_kernel<<<ceil_div(n, 32L * 128), 128>>>(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay,
                                                  bias_correction1, bias_correction2, grad_scale);
    CUDA_CHECK(cudaGetLastError());
}

// Learning rate at 0-based `step`: linear warmup lr * (step+1) / warmup for step < warmup, then a
// cosine from lr (at step = warmup) down to min_lr (at step = total_steps - 1, and after).
inline float cosine_lr(int step, int warmup, int total_steps, float lr, float min_lr) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    const int decay_steps = total_steps - 1 - warmup;
    double progress = decay_steps > 0 ? (double)(step - warmup) / decay_steps : (step > warmup ? 1.0 : 0.0);
    if (progress > 1.0) progress = 1.0;
    const double coeff = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));  // 1 -> 0
    return (float)(min_lr + coeff * (lr - min_lr));
}
