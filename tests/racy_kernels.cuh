// tests/racy_kernels.cuh: kernels for the CPU layer's compute-sanitizer checks (racecheck,
// strict synccheck, static shared initcheck), each deliberately wrong one (racy_* / bad_*) next to
// a correct twin that differs only in the synchronisation it adds.
//
// Plain CUDA: nvcc compiles this file too (tests/nvcc_racy_kernels.cu). The racy kernels compute
// the right answer on the CPU layer, whose fibers run one after another, and wrong answers on a
// GPU; only the ThreadSanitizer build (make test-tsan) sees them, and must report every one.
#pragma once

#include "common.cuh"

// ------------------------------------------------------------------ racecheck: within a block

// out[i] = in[i + 1] through shared memory. The racy kernel reads its neighbour's element with no
// barrier after the write (read-after-write hazard); the twin has the barrier.
__global__ void racy_shared_neighbour_kernel(float* out, const float* in, int n) {
    extern __shared__ float staged[];
    const int i = threadIdx.x;
    staged[i] = in[i];
    out[i] = i + 1 < n ? staged[i + 1] : 0.0f;
}
__global__ void synced_shared_neighbour_kernel(float* out, const float* in, int n) {
    extern __shared__ float staged[];
    const int i = threadIdx.x;
    staged[i] = in[i];
    __syncthreads();
    out[i] = i + 1 < n ? staged[i + 1] : 0.0f;
}

// The reduction the issue found in a copy of the kernels: every warp of the block adds its lanes'
// values into one shared array with a read-modify-write, `partial[lane] += v`. Fibers never
// interleave, so the CPU gets the sum; warps of a GPU run at the same time and lose updates. The
// twin lets the warps take turns, a barrier between turns.
__global__ void racy_warps_accumulate_kernel(float* out, const float* in) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (warp == 0) partial[lane] = 0.0f;
    __syncthreads();
    partial[lane] += in[threadIdx.x];
    __syncthreads();
    if (warp == 0) out[lane] = partial[lane];
}
__global__ void turns_warps_accumulate_kernel(float* out, const float* in) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (warp == 0) partial[lane] = 0.0f;
    __syncthreads();
    for (int turn = 0; turn < (int)blockDim.x / 32; ++turn) {
        if (turn == warp) partial[lane] += in[threadIdx.x];
        __syncthreads();
    }
    if (warp == 0) out[lane] = partial[lane];
}

// Two threads of a block write the same global word (write-write). The twin lets one thread write.
__global__ void racy_block_write_kernel(int* out) { out[0] = (int)threadIdx.x; }
__global__ void single_block_write_kernel(int* out) {
    if (threadIdx.x == blockDim.x - 1) out[0] = (int)threadIdx.x;
}

// ------------------------------------------------------------------ racecheck: within a warp

// Lane i reads what lane i ^ 1 wrote to shared memory: without a __syncwarp the lanes of a warp
// are not ordered (independent thread scheduling, sm_70+). The twin synchronises the warp.
__global__ void racy_warp_exchange_kernel(int* out) {
    __shared__ int word[32];
    const int lane = threadIdx.x % 32;
    word[lane] = lane * 10;
    out[lane] = word[lane ^ 1];
}
__global__ void syncwarp_exchange_kernel(int* out) {
    __shared__ int word[32];
    const int lane = threadIdx.x % 32;
    word[lane] = lane * 10;
    __syncwarp();
    out[lane] = word[lane ^ 1];
}

// A warp operation orders only the lanes its mask names: each half-warp shuffles with its own
// mask, then lane i reads what lane i ^ 16 (the other half) wrote before the shuffle. The twin
// uses one full-warp shuffle, which orders all 32 lanes.
__global__ void racy_half_warp_masks_kernel(int* out) {
    __shared__ int word[32];
    const int lane = threadIdx.x % 32;
    word[lane] = lane;
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    const int first = __shfl_sync(half, lane, 0, 16);
    out[lane] = word[lane ^ 16] + first;
}
__global__ void full_warp_mask_kernel(int* out) {
    __shared__ int word[32];
    const int lane = threadIdx.x % 32;
    word[lane] = lane;
    const int first = __shfl_sync(0xffffffffu, lane, lane & 16, 16);
    out[lane] = word[lane ^ 16] + first;
}

// ------------------------------------------------------------------ racecheck: between blocks

// Every block writes the same words of the output (write-write between blocks). The twin gives
// each block its own words.
__global__ void racy_blocks_same_output_kernel(int* out) { out[threadIdx.x] = (int)blockIdx.x; }
__global__ void own_output_per_block_kernel(int* out) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = (int)blockIdx.x;
}

// Block b > 0 reads what block b - 1 writes in the same launch (blocks are not ordered on a GPU;
// on the CPU layer they happen to run in index order). The twin reads it in a second launch.
__global__ void racy_read_previous_block_kernel(int* out, int* seen) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = (int)blockIdx.x + 1;
    if (blockIdx.x > 0) seen[blockIdx.x * blockDim.x + threadIdx.x] = out[(blockIdx.x - 1) * blockDim.x + threadIdx.x];
}
__global__ void write_own_block_kernel(int* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = (int)blockIdx.x + 1; }
__global__ void read_previous_block_kernel(const int* out, int* seen) {
    if (blockIdx.x > 0) seen[blockIdx.x * blockDim.x + threadIdx.x] = out[(blockIdx.x - 1) * blockDim.x + threadIdx.x];
}

// The last block to finish sums every block's partial (the "threadfence reduction" of the CUDA
// samples): each block writes its partial, then counts itself in with an atomic; the block that
// counts last reads all partials. The write must be fenced before the atomic: the racy kernel
// has no __threadfence, the twin has it on both sides.
__global__ void racy_last_block_sum_kernel(float* partials, unsigned* count, float* total) {
    if (threadIdx.x != 0) return;
    partials[blockIdx.x] = (float)(blockIdx.x + 1);
    const unsigned arrived = atomicAdd(count, 1u);
    if (arrived == gridDim.x - 1) {
        float s = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) s += partials[b];
        *total = s;
    }
}
__global__ void fenced_last_block_sum_kernel(float* partials, unsigned* count, float* total) {
    if (threadIdx.x != 0) return;
    partials[blockIdx.x] = (float)(blockIdx.x + 1);
    __threadfence();
    const unsigned arrived = atomicAdd(count, 1u);
    if (arrived == gridDim.x - 1) {
        __threadfence();
        float s = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) s += partials[b];
        *total = s;
    }
}

// Atomics do not race with each other: every thread of every block adds into one counter.
__global__ void atomic_count_kernel(int* count) { atomicAdd(count, 1); }

// ------------------------------------------------------------------ strict synccheck

// The bug the issue found: a barrier inside `if (o < OC)`, where the threads past the end skip
// it and exit. Undefined in CUDA; the strict synccheck reports it. The twin keeps every thread
// in the loop and guards only the work.
__global__ void bad_barrier_in_bounds_check_kernel(float* out, const float* in, int oc) {
    extern __shared__ float staged[];
    const int o = threadIdx.x;
    if (o < oc) {
        staged[o] = in[o];
        __syncthreads();
        out[o] = staged[oc - 1 - o];
    }
}
__global__ void guarded_barrier_kernel(float* out, const float* in, int oc) {
    extern __shared__ float staged[];
    const int o = threadIdx.x;
    if (o < oc) staged[o] = in[o];
    __syncthreads();
    if (o < oc) out[o] = staged[oc - 1 - o];
}

// A __syncwarp whose mask names lanes that have exited.
__global__ void bad_syncwarp_names_exited_lanes_kernel(int* out) {
    const int lane = threadIdx.x % 32;
    if (lane >= 8) return;
    out[lane] = lane;
    __syncwarp(0x0000ffffu);
}
__global__ void syncwarp_names_live_lanes_kernel(int* out) {
    const int lane = threadIdx.x % 32;
    if (lane >= 8) return;
    out[lane] = lane;
    __syncwarp(0x000000ffu);
}

// ------------------------------------------------------------------ static shared initcheck

// Sums a static shared array of which only the first `written` elements were written: the rest
// read as NaN (0xFF bytes) in every block, not as whatever the previous block left there.
__global__ void bad_static_shared_partial_write_kernel(float* out, int written) {
    __shared__ float values[64];
    if ((int)threadIdx.x < written) values[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; ++i) s += values[i];
        out[blockIdx.x] = s;
    }
}
// Reads the bytes of a static shared array before anything writes them (as unsigned words).
__global__ void static_shared_first_read_kernel(unsigned* out) {
    __shared__ __align__(16) unsigned words[8];
    __shared__ int scalar;
    if (threadIdx.x < 8) out[blockIdx.x * 9 + threadIdx.x] = words[threadIdx.x];
    if (threadIdx.x == 8) out[blockIdx.x * 9 + 8] = (unsigned)scalar;
    __syncthreads();
    if (threadIdx.x < 8) words[threadIdx.x] = 0;  // the next block must see 0xFF bytes again
    if (threadIdx.x == 0) scalar = 0;
}
// Two template instantiations: each has its own static shared array of its own size.
template <int kSize>
__global__ void static_shared_sizes_kernel(int* out) {
    __shared__ int values[kSize];
    for (int i = threadIdx.x; i < kSize; i += blockDim.x) values[i] = i;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int i = 0; i < kSize; ++i) s += values[i];
        out[0] = s;
    }
}
inline cudaError_t static_shared_sizes(int* out_small, int* out_large) {
    static_shared_sizes_kernel<8><<<1, 32>>>(out_small);
    static_shared_sizes_kernel<100><<<1, 32>>>(out_large);
    return cudaGetLastError();
}
