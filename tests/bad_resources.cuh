// tests/bad_resources.cuh: kernels the resource gate of the nvcc check must reject (compiled by
// `make nvcc-check` on their own, with the made-up launches of tests/bad_resources.launches; never
// part of the project's table). A .cuh so that the nvcc check's tests/*.cu does not pick it up.

// Limited to 32 registers by its launch bounds (1024 threads, 2 blocks per SM) while it keeps 64
// values live: ptxas spills.
__global__ void __launch_bounds__(1024, 2) gate_bad_spill_kernel(float* x, int n) {
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = x[i * n + threadIdx.x];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + j) % 64] + 1.0f;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; ++i) s += acc[i] * x[i];
    x[threadIdx.x] = s;
}

// The same work without launch bounds: ptxas gives it far more than 64 registers per thread, too
// many for a block of 1024 threads (its made-up launch).
__global__ void gate_bad_register_hungry_kernel(float* x, int n) {
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = x[i * n + threadIdx.x];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + j) % 64] + 1.0f;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; ++i) s += acc[i] * x[i];
    x[threadIdx.x] = s;
}

// 40,000 bytes of static shared memory, launched with 16 KiB of dynamic shared memory on top and
// no opt-in: over the 48 KiB a launch gets by default.
__global__ void gate_bad_static_shared_kernel(float* x) {
    __shared__ float big[10000];
    for (int i = threadIdx.x; i < 10000; i += blockDim.x) big[i] = x[i];
    __syncthreads();
    x[threadIdx.x] = big[9999 - threadIdx.x];
}
