// tests/simt_test_kernels.cuh: small purpose-written CUDA kernels that exercise the SIMT layer.
//
// Plain CUDA: nvcc compiles this file too (tests/nvcc_simt_kernels.cu), so everything the CPU
// layer accepts here is also valid on a GPU. Some kernels are deliberately wrong (named bad_*):
// the layer must catch them. Every launcher returns cudaGetLastError() so a test can look at it.
#pragma once
#include <cmath>

#include "common.cuh"

// ------------------------------------------------------------------ correct kernels

// out[r, :] = softmax(in[r, :]); one block of a multiple-of-32 threads per row; the row is staged
// in dynamic shared memory (cols floats) followed by one float per warp for the reductions.
__global__ void simt_softmax_kernel(float* out, const float* in, int cols) {
    extern __shared__ float row[];
    float* partial = row + cols;
    const float* x = in + (long)blockIdx.x * cols;
    const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize, warps = blockDim.x / warpSize;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        row[c] = x[c];
        m = fmaxf(m, row[c]);
    }
    for (int o = warpSize / 2; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) partial[warp] = m;
    __syncthreads();
    m = partial[0];
    for (int w = 1; w < warps; ++w) m = fmaxf(m, partial[w]);
    __syncthreads();  // everyone has read partial[] before it is reused
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        row[c] = expf(row[c] - m);
        s += row[c];
    }
    for (int o = warpSize / 2; o > 0; o /= 2) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    s = 0.0f;
    for (int w = 0; w < warps; ++w) s += partial[w];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = row[c] / s;
}

inline cudaError_t simt_softmax(float* out, const float* in, int rows, int cols, int threads) {
    simt_softmax_kernel<<<rows, threads, sizeof(float) * (cols + 32)>>>(out, in, cols);
    return cudaGetLastError();
}

// bins[v % nbins] += 1 for every value: a per-block histogram in dynamic shared memory, then
// one global atomicAdd per bin and block.
__global__ void simt_histogram_kernel(int* bins, const int* values, int n, int nbins) {
    extern __shared__ int local[];
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local[values[i] % nbins], 1);
    __syncthreads();
    for (int b = threadIdx.x; b < nbins; b += blockDim.x)
        if (local[b] != 0) atomicAdd(&bins[b], local[b]);
}

inline cudaError_t simt_histogram(int* bins, const int* values, int n, int nbins) {
    simt_histogram_kernel<<<7, 128, sizeof(int) * nbins>>>(bins, values, n, nbins);
    return cudaGetLastError();
}

// out (cols x rows) = in (rows x cols)^T through a static 32x33 shared tile; blocks of 32x8.
constexpr int kTile = 32;
__global__ void simt_transpose_kernel(float* out, const float* in, int rows, int cols) {
    __shared__ float tile[kTile][kTile + 1];
    const int c0 = blockIdx.x * kTile, r0 = blockIdx.y * kTile;
    for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
        int r = r0 + dy, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[dy][threadIdx.x] = in[(long)r * cols + c];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
        int c = c0 + dy, r = r0 + threadIdx.x;  // output row c, column r
        if (r < rows && c < cols) out[(long)c * rows + r] = tile[threadIdx.x][dy];
    }
}

inline cudaError_t simt_transpose(float* out, const float* in, int rows, int cols) {
    dim3 grid(ceil_div(cols, kTile), ceil_div(rows, kTile)), block(kTile, 8);
    simt_transpose_kernel<<<grid, block>>>(out, in, rows, cols);
    return cudaGetLastError();
}

// Votes: per thread, ballot / any / all of (value[i] > 0) over its warp (partial last warp OK).
__global__ void simt_vote_kernel(unsigned* ballot, int* any, int* all, const int* value, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int in_block = blockDim.x - (threadIdx.x / warpSize) * warpSize;
    const unsigned mask = in_block >= warpSize ? 0xffffffffu : (1u << in_block) - 1u;
    const int pred = i < n && value[i] > 0;
    unsigned b = __ballot_sync(mask, pred);
    int a = __any_sync(mask, pred);
    int l = __all_sync(mask, pred);
    if (i < n) {
        ballot[i] = b;
        any[i] = a;
        all[i] = l;
    }
}

// Shuffles with a sub-warp width: out[4*i + k] for k = idx, up, down, xor.
__global__ void simt_shuffle_width_kernel(int* out, int width, int src, int delta, int lane_mask) {
    const int i = threadIdx.x;
    const int v = 1000 + i;
    out[4 * i + 0] = __shfl_sync(0xffffffffu, v, src, width);
    out[4 * i + 1] = __shfl_up_sync(0xffffffffu, v, delta, width);
    out[4 * i + 2] = __shfl_down_sync(0xffffffffu, v, delta, width);
    out[4 * i + 3] = __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
}

// 64-bit shuffles: doubles and long longs go around the warp.
__global__ void simt_shuffle64_kernel(double* outd, long long* outl) {
    const int lane = threadIdx.x % warpSize;
    double d = 0.5 + lane * 1e10;
    long long l = (1LL << 40) + lane;
    outd[threadIdx.x] = __shfl_sync(0xffffffffu, d, (lane + 1) % warpSize);
    outl[threadIdx.x] = __shfl_xor_sync(0xffffffffu, l, 1);
}

// atomicMax / atomicMin on ints, and a CAS loop that adds (the classic atomic emulation).
__global__ void simt_atomic_kernel(int* max_out, int* min_out, unsigned* cas_sum, unsigned* exch, const int* v, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicMax(max_out, v[i]);
    atomicMin(min_out, v[i]);
    // The first guess is an atomic read: a plain one would race with the other threads' CAS
    // (the racecheck reports it; the loop would still correct a stale guess).
    unsigned old = atomicOr(cas_sum, 0u), assumed;
    do {
        assumed = old;
        old = atomicCAS(cas_sum, assumed, assumed + (unsigned)(v[i] & 0xff));
    } while (old != assumed);
    atomicExch(exch, 7u);
}

// Float atomicAdd of small integers (exact in float whatever the order).
__global__ void simt_float_atomic_kernel(float* sum, double* dsum, const float* v, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(sum, v[i]);
        atomicAdd(dsum, (double)v[i]);
    }
}

// Two half-warps that synchronise and reduce independently (sub-warp masks), sm_80 reductions.
__global__ void simt_half_warp_kernel(unsigned* out) {
    const unsigned lane = threadIdx.x % warpSize;
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    out[4 * threadIdx.x + 0] = __reduce_add_sync(half, lane);
    __syncwarp(half);
    out[4 * threadIdx.x + 1] = __reduce_max_sync(half, lane * 7 % 23);
    out[4 * threadIdx.x + 2] = (unsigned)__reduce_min_sync(half, (int)lane - 20);
    out[4 * threadIdx.x + 3] = __ballot_sync(half, lane % 3 == 0);
}

// __syncthreads_count/and/or and sub-warp reductions.
__global__ void simt_block_vote_kernel(int* out, int threshold) {
    const int t = threadIdx.x;
    int c = __syncthreads_count(t < threshold);
    int a = __syncthreads_and(t < threshold);
    int o = __syncthreads_or(t < threshold);
    if (t == 0) {
        out[0] = c;
        out[1] = a;
        out[2] = o;
    }
}

// Every thread writes its coordinates: checks threadIdx/blockIdx/blockDim/gridDim in 3D.
__global__ void simt_index_kernel(int* out) {
    const int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int i = bx * (blockDim.x * blockDim.y * blockDim.z) + tx;
    out[i] = (int)(threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 | blockIdx.z << 20);
}

// Threads past the end exit before the barrier: undefined in CUDA, rejected by the strict
// synccheck; with it off the barrier waits only for live threads (what GPUs happen to do).
__global__ void simt_early_exit_kernel(float* out, const float* in, int n) {
    extern __shared__ float s[];
    const int i = threadIdx.x;
    if (i >= n) return;
    s[i] = in[i];
    __syncthreads();
    out[i] = s[n - 1 - i];
}

// Copies a buffer (used to read memory that nobody wrote, and dynamic shared memory as is).
__global__ void simt_copy_kernel(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
__global__ void simt_read_dynamic_shared_kernel(unsigned* out, int n) {
    extern __shared__ unsigned words[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = words[i];
    __syncthreads();
    extern __shared__ unsigned same_words[];  // a second name for the same memory, as in CUDA
    for (int i = threadIdx.x; i < n; i += blockDim.x) same_words[i] = 0;  // the next block must see 0xFF again
}

// Uses `bytes` of dynamic shared memory (more than 48 KiB needs the opt-in).
__global__ void simt_big_shared_kernel(float* out, int nfloats) {
    extern __shared__ float s[];
    for (int i = threadIdx.x; i < nfloats; i += blockDim.x) s[i] = (float)(i & 15);
    __syncthreads();
    float acc = 0.0f;
    for (int i = threadIdx.x; i < nfloats; i += blockDim.x) acc += s[nfloats - 1 - i];
    atomicAdd(out, acc);
}

// out[i] = in[i - 1] through shared memory. Correct with the barrier; the bad twin omits it.
__global__ void simt_shift_kernel(float* out, const float* in, int n) {
    extern __shared__ float s[];
    const int i = threadIdx.x;
    if (i < n) s[i] = in[i];
    __syncthreads();
    if (i < n) out[i] = i > 0 ? s[i - 1] : 0.0f;
}

// out[r, c] = kFactor * in[r, cols-1-c]: a template kernel that stages its row in dynamic shared
// memory, launched with a configuration of four arguments spread over several lines (the forms the
// CPU build's source rewrite must take apart, see simt/cuda_to_cpp.h). An extern __shared__ array
// has one type per translation unit under nvcc, so a template declares aligned bytes and views
// them as T (the usual CUDA idiom).
template <typename T, int kFactor>
__global__ void simt_reverse_scale_kernel(T* out, const T* in, int cols) {
    extern __shared__ __align__(16) unsigned char staged_bytes[];
    T* staged = reinterpret_cast<T*>(staged_bytes);  // (cols)
    const T* x = in + (long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) staged[c] = x[c];
    __syncthreads();
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = kFactor * staged[cols - 1 - c];
}

template <typename T, int kFactor>
inline cudaError_t simt_reverse_scale(T* out, const T* in, int rows, int cols, cudaStream_t stream) {
    simt_reverse_scale_kernel<T, kFactor><<<rows,
                                           64,
                                           cols * sizeof(T),  // the staged row
                                           stream>>>(out, in,
                                                     cols);
    return cudaGetLastError();
}

// ------------------------------------------------------------------ deliberately wrong kernels

// No barrier between the shared-memory write and the read of a neighbour's element: passes when
// threads run in index order, fails under SIMT_SHUFFLE.
__global__ void bad_missing_sync_kernel(float* out, const float* in, int n) {
    extern __shared__ float s[];
    const int i = threadIdx.x;
    if (i < n) s[i] = in[i];
    if (i < n) out[i] = i > 0 ? s[i - 1] : 0.0f;
}

// Two different __syncthreads in the two branches of an if.
__global__ void bad_divergent_barrier_kernel(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
        out[threadIdx.x] = 1;
    } else {
        __syncthreads();
        out[threadIdx.x] = 2;
    }
}

// Half of the block skips the first barrier and then waits at the second one.
__global__ void bad_skipped_barrier_kernel(int* out) {
    if (threadIdx.x < 16) __syncthreads();
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Half of the block exits while the other half waits at a barrier and then a second barrier:
// passes with the strict synccheck off (exited threads do not count), unlike the case above.
__global__ void simt_exit_then_barrier_kernel(int* out) {
    if (threadIdx.x >= 16) return;
    __syncthreads();
    __syncthreads();
    out[threadIdx.x] = 1;
}

// A full-warp shuffle that only half the lanes reach (the others have exited).
__global__ void bad_partial_shuffle_kernel(int* out) {
    const int lane = threadIdx.x % warpSize;
    if (lane >= 16) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, lane, 0);
}

// A full-warp shuffle that half the lanes reach while the other half waits at a barrier.
__global__ void bad_shuffle_vs_barrier_kernel(int* out) {
    const int lane = threadIdx.x % warpSize;
    int v = lane;
    if (lane < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// A device-side trap in one thread of one block while its neighbours wait at a barrier.
__global__ void bad_trap_kernel(int* out, int trap_block, int trap_thread) {
    if ((int)blockIdx.x == trap_block && (int)threadIdx.x == trap_thread) __trap();
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// ------------------------------------------------------------------ nvcc sees the launchers too
inline cudaError_t simt_launch_index(int* out, dim3 grid, dim3 block) {
    simt_index_kernel<<<grid, block>>>(out);
    return cudaGetLastError();
}
inline cudaError_t simt_launch_copy(float* out, const float* in, int n) {
    simt_copy_kernel<<<ceil_div(n, 128), 128>>>(out, in, n);
    return cudaGetLastError();
}
inline cudaError_t simt_launch_big_shared(float* out, int nfloats) {
    simt_big_shared_kernel<<<2, 256, sizeof(float) * nfloats>>>(out, nfloats);
    return cudaGetLastError();
}
inline cudaError_t simt_allow_big_shared(int bytes) {
    return cudaFuncSetAttribute(simt_big_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
