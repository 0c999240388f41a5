// simt/cuda.h: the one header every kernel file includes.
//
// Under nvcc it is the CUDA runtime, cuBLAS and cuRAND. Under g++ it is the SIMT execution layer
// (simt/simt.h), which runs the same kernel source on the CPU: block threads as fibers, shared
// memory, barriers, warp shuffles, atomics, and the runtime / cuBLAS / cuRAND subset the project
// uses. The kernels are written in CUDA's own spelling (kernel<<<...>>>(...), extern __shared__);
// the g++ build compiles copies in which the Makefile's rewrite (simt/cuda_to_cpp.h) has turned
// those two spellings into calls of the SIMT layer.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <curand.h>

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
