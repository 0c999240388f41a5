// activations.cuh: elementwise kernels: GELU (tanh form, MODEL_SPEC) forward and backward, the
// residual add, and an in-place accumulate.
//
// Launch shape (used by every elementwise kernel of the project): block b owns the contiguous tile
// [b*tile, (b+1)*tile), tile = 32 * blockDim.x, and its threads step through it with stride
// blockDim.x. On a GPU each warp load reads 128 consecutive bytes (coalesced); on the CPU layer,
// where the threads of a block run one after another, the tile stays in cache (a grid-stride loop
// over the whole tensor would refetch every cache line once per thread that shares it) and each
// thread does 32 elements of work for its ~50 ns start-up.
#pragma once
#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)

// out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)    (MODEL_SPEC's tanh form)
// computed through the identity 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)): the same function with one
// expf instead of tanhf (3x cheaper on the CPU, and no worse on a GPU); for x -> -inf it gives -0.
__global__ void gelu_forward_kernel(float* out,        // (n)
                                    const float* inp,  // (n)
                                    long n) {
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u));
    }
}

// dinp = dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx),  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// with s = 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) and 0.5 (1 - tanh^2 u) = 2 s (1 - s):
// dinp = dout * (s + 2 x s (1 - s) du/dx)
__global__ void gelu_backward_kernel(float* dinp,        // (n) overwritten
                                     const float* inp,   // (n)
                                     const float* dout,  // (n)
                                     long n) {
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        const float s = 1.0f / (1.0f + expf(-2.0f * u));
        const float du_dx = GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * (s + 2.0f * x * s * (1.0f - s) * du_dx);
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
    LAUNCH(gelu_forward_kernel, ceil_div(n, 32L * 128), 128, 0, 0, out, inp, n);
    CUDA_CHECK_LAUNCH();
}

inline void gelu_backward(float* dinp,        // (n) overwritten
                          const float* inp,   // (n)
                          const float* dout,  // (n)
                          long n) {
    if (n <= 0) return;
    LAUNCH(gelu_backward_kernel, ceil_div(n, 32L * 128), 128, 0, 0, dinp, inp, dout, n);
    CUDA_CHECK_LAUNCH();
}

inline void residual_forward(float* out,      // (n), may alias a
                             const float* a,  // (n)
                             const float* b,  // (n)
                             long n) {
    if (n <= 0) return;
    LAUNCH(residual_forward_kernel, ceil_div(n, 32L * 128), 128, 0, 0, out, a, b, n);
    CUDA_CHECK_LAUNCH();
}

inline void add_inplace(float* acc,      // (n) +=
                        const float* x,  // (n)
                        long n) {
    if (n <= 0) return;
    LAUNCH(add_inplace_kernel, ceil_div(n, 32L * 128), 128, 0, 0, acc, x, n);
    CUDA_CHECK_LAUNCH();
}
