// activations.cuh: elementwise kernels: GELU (tanh form) forward and backward, the residual add,
// and an in-place accumulate. The GELU device functions here are the project's one GELU (the MoE
// experts use them too).
//
// Launch shape (used by every elementwise kernel of the project): block b owns the contiguous tile
// [b*tile, (b+1)*tile), tile = 32 * blockDim.x, and its threads step through it with stride
// blockDim.x, so at every step a warp reads 32 consecutive floats (128 bytes, one coalesced
// transaction) and each thread handles 32 elements, which amortises its index arithmetic. The
// kernels are memory-bound: one read (two for the binary ones) and one write per element.
#pragma once
#include "common.cuh"

// GELU, tanh form (docs/model.md section 5):
//   GELU(x) = 0.5 x (1 + tanh(a)),  a = sqrt(2/pi) (x + 0.044715 x^3).
// Computed through the identity 0.5 (1 + tanh a) = 1 / (1 + exp(-2a)) =: s, so GELU(x) = x s with one
// expf (for x -> -inf it gives -0). Its derivative, from the same s:
//   GELU'(x) = 0.5 (1 + tanh a) + 0.5 x (1 - tanh^2 a) da/dx = s + 2 x s (1 - s) da/dx,
//   da/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)          (0.5 (1 - tanh^2 a) = 2 s (1 - s))
#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)

__device__ inline float gelu_sigmoid(float x) {  // s = 0.5 (1 + tanh a)
    const float a = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
    return 1.0f / (1.0f + expf(-2.0f * a));
}
__device__ inline float gelu(float x) { return x * gelu_sigmoid(x); }
__device__ inline float gelu_slope(float x, float s) {  // GELU'(x) given s = gelu_sigmoid(x)
    return s + 2.0f * x * s * (1.0f - s) * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
}

// out = GELU(inp)
__global__ void gelu_forward_kernel(float* out,        // (n)
                                    const float* inp,  // (n)
                                    long n) {
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] = gelu(inp[i]);
}

// dinp = dout * GELU'(inp)
__global__ void gelu_backward_kernel(float* dinp,        // (n) overwritten
                                     const float* inp,   // (n)
                                     const float* dout,  // (n)
                                     long n) {
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float x = inp[i];
        dinp[i] = dout[i] * gelu_slope(x, gelu_sigmoid(x));
    }
}

// out = a + b   (out may alias a)
__global__ void residual_forward_kernel(float* out, const float* a, const float* b, long n) {  // all (n)
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] = a[i] + b[i];
}

// acc += x
__global__ void add_inplace_kernel(float* acc, const float* x, long n) {  // both (n)
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) acc[i] += x[i];
}

inline void gelu_forward(float* out,        // (n)
                         const float* inp,  // (n)
                         long n) {
    if (n <= 0) return;
    gelu_forward_kernel<<<ceil_div(n, 32L * 128), 128>>>(out, inp, n);
    CUDA_CHECK(cudaGetLastError());
}

inline void gelu_backward(float* dinp,        // (n) overwritten
                          const float* inp,   // (n)
                          const float* dout,  // (n)
                          long n) {
    if (n <= 0) return;
    gelu_backward_kernel<<<ceil_div(n, 32L * 128), 128>>>(dinp, inp, dout, n);
    CUDA_CHECK(cudaGetLastError());
}

inline void residual_forward(float* out,      // (n), may alias a
                             const float* a,  // (n)
                             const float* b,  // (n)
                             long n) {
    if (n <= 0) return;
    residual_forward_kernel<<<ceil_div(n, 32L * 128), 128>>>(out, a, b, n);
    CUDA_CHECK(cudaGetLastError());
}

inline void add_inplace(float* acc,      // (n) +=
                        const float* x,  // (n)
                        long n) {
    if (n <= 0) return;
    add_inplace_kernel<<<ceil_div(n, 32L * 128), 128>>>(acc, x, n);
    CUDA_CHECK(cudaGetLastError());
}
