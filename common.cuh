// common.cuh: error checks and small helpers shared by every layer header.
//
// Conventions of every kernel header:
//   - tensors are row-major with their shape in a comment beside the pointer; weights are [out, in]
//     and a linear layer computes out = inp W^T + b (cuBLAS is column-major: each call is issued as
//     the transposed product);
//   - all pointers a launcher takes are device pointers;
//   - plain CUDA: launches are kernel<<<grid, block, shared_bytes, stream>>>(args) and dynamic
//     shared memory is `extern __shared__ T name[];`. nvcc compiles these files as they are; the
//     CPU build (g++) compiles copies in which the Makefile has rewritten those two spellings into
//     calls of the SIMT layer (simt/cuda_to_cpp.h, simt/simt.h), line for line;
//   - parameter gradients accumulate (+=; the trainer zeroes them once per step); activation
//     gradients are overwritten unless the comment says they accumulate (the residual stream's do);
//   - no float atomics and fixed reduction orders: results are the same bits from run to run and
//     for any number of CPU worker threads.
#pragma once
#include <cstdio>
#include <cstdlib>
#include "simt/cuda.h"

// A CUDA call that fails stops the program with the call's file and line. After a launch,
// CUDA_CHECK(cudaGetLastError()) reports a launch that could not start (a bad configuration) and,
// on the CPU layer, a fault inside the kernel.
inline void cuda_check(cudaError_t error, const char* file, int line) {
    if (error != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(error));
        exit(EXIT_FAILURE);
    }
}
#define CUDA_CHECK(call) cuda_check((call), __FILE__, __LINE__)

inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "[cuBLAS ERROR] %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define CUBLAS_CHECK(call) cublas_check((call), __FILE__, __LINE__)

inline void curand_check(curandStatus_t status, const char* file, int line) {
    if (status != CURAND_STATUS_SUCCESS) {
        fprintf(stderr, "[cuRAND ERROR] %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define CURAND_CHECK(call) curand_check((call), __FILE__, __LINE__)


inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

// Threads that share one row of `width` columns in the row kernels (LayerNorm, the attention
// softmax, cross-entropy, the MoE row kernels): a power of two in [4, 32] that divides the warp,
// about 32 columns per thread. Lane l of the group takes columns l, l + lanes, ... so each step of
// the group reads `lanes` consecutive floats (coalesced), and the row's statistics are a butterfly
// of log2(lanes) __shfl_xor_sync steps inside the group. Narrow rows keep the group short so a
// warp covers 32 / lanes rows at once; from 513 columns a full warp takes each row.
inline int threads_per_row(int width) { return width > 512 ? 32 : width > 256 ? 16 : width > 128 ? 8 : 4; }

// One cuBLAS handle for the whole process (created on first use).
inline cublasHandle_t cublas_handle() {
    static cublasHandle_t handle = nullptr;
    if (handle == nullptr) CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}
