// simt/cuda.h: the one header every kernel file includes.
//
// Under nvcc it is the CUDA runtime, cuBLAS and cuRAND, plus two spellings that both compilers
// accept: LAUNCH(...) for a kernel launch and dynamic_shared<T>() for dynamic shared memory.
// Under g++ it is the SIMT execution layer (simt/simt.h), which runs the very same kernel source
// on the CPU: block threads as fibers, shared memory, barriers, warp shuffles, atomics, and the
// runtime / cuBLAS / cuRAND subset the project uses.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <curand.h>

// LAUNCH(kernel, grid, block, shared_bytes, stream, args...) is kernel<<<grid, block, shared_bytes, stream>>>(args...)
#define LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)

// The block's dynamic shared memory (the `shared_bytes` of the launch), viewed as T[].
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
    extern __shared__ __align__(16) unsigned char simt_dynamic_shared_memory[];
    return reinterpret_cast<T*>(simt_dynamic_shared_memory);
}

// The only line that differs between builds for random numbers: on a GPU the device generator,
// on the CPU libcurand's host generator (which writes into the layer's "device" memory).
inline curandStatus_t create_generator(curandGenerator_t* generator, curandRngType_t type) {
    return curandCreateGenerator(generator, type);
}

// Counters the CPU layer keeps; on a GPU they are not tracked.
inline long simt_device_to_host_copies() { return -1; }
inline long simt_synchronizations() { return -1; }
#else
#include "simt.h"
#endif
