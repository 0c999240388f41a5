// activations.cuh: elementwise kernels: GELU (tanh form, MODEL_SPEC) forward and backward, the
// residual add, and an in-place accumulate.
//
// All are grid-stride loops over n elements (consecutive threads touch consecutive floats, so
// accesses are coalesced) launched with enough blocks for ~16 elements per thread: plenty of
// parallelism on a GPU for the tensors that matter, and few fibers on the CPU layer.
#pragma once
#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)

// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
__global__ void gelu_forward_kernel(float* out,        // (n)
                                    const float* inp,  // (n)
                                    long n) {
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x = inp[i];
        const float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

// with u = sqrt(2/pi) (x + 0.044715 x^3):
// dinp = dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
__global__ void gelu_backward_kernel(float* dinp,        // (n) overwritten
                                     const float* inp,   // (n)
                                     const float* dout,  // (n)
                                     long n) {
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x = inp[i];
        const float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        const float th = tanhf(u);
        const float du_dx = GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx);
    }
}

// out = a + b   (out may alias a)
__global__ void residual_forward_kernel(float* out, const float* a, const float* b, long n) {  // all (n)
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = a[i] + b[i];
}

// acc += x
__global__ void add_inplace_kernel(float* acc, const float* x, long n) {  // both (n)
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc[i] += x[i];
}

// Blocks for an elementwise launch of n elements: ~16 elements per thread, at least one block.
inline int elementwise_grid(long n, int block) { return n > 0 ? ceil_div(n, block * 16L) : 1; }

inline void gelu_forward(float* out,        // (n)
                         const float* inp,  // (n)
                         long n) {
    if (n <= 0) return;
    LAUNCH(gelu_forward_kernel, elementwise_grid(n, 256), 256, 0, 0, out, inp, n);
    CUDA_CHECK_LAUNCH();
}

inline void gelu_backward(float* dinp,        // (n) overwritten
                          const float* inp,   // (n)
                          const float* dout,  // (n)
                          long n) {
    if (n <= 0) return;
    LAUNCH(gelu_backward_kernel, elementwise_grid(n, 256), 256, 0, 0, dinp, inp, dout, n);
    CUDA_CHECK_LAUNCH();
}

inline void residual_forward(float* out,      // (n), may alias a
                             const float* a,  // (n)
                             const float* b,  // (n)
                             long n) {
    if (n <= 0) return;
    LAUNCH(residual_forward_kernel, elementwise_grid(n, 256), 256, 0, 0, out, a, b, n);
    CUDA_CHECK_LAUNCH();
}

inline void add_inplace(float* acc,      // (n) +=
                        const float* x,  // (n)
                        long n) {
    if (n <= 0) return;
    LAUNCH(add_inplace_kernel, elementwise_grid(n, 256), 256, 0, 0, acc, x, n);
    CUDA_CHECK_LAUNCH();
}
