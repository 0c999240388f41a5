// encoder.cuh: the embedding layer (docs/model.md section 2): x = wte[idx] + wpe[t].
//
// Forward is a gather; backward is a scatter-add, done without float atomics: every gradient row
// is summed by one owner in a fixed order, so the result does not depend on scheduling.
#pragma once
#include "common.cuh"

// out[b,t,c] = wte[idx[b,t], c] + wpe[t, c]
// A block handles a run of 32 token rows; its threads stride over the C channels of each row
// (coalesced), so there is no integer division per element.
__global__ void encoder_forward_kernel(float* out,        // (B,T,C)
                                       const int* idx,    // (B,T)
                                       const float* wte,  // (V,C)
                                       const float* wpe,  // (maxT,C)
                                       int B, int T, int C) {
    const int row_begin = blockIdx.x * 32, row_end = min(B * T, row_begin + 32);
    int t = row_begin % T;
    for (int bt = row_begin; bt < row_end; bt++) {
        const float* wte_row = wte + (long)idx[bt] * C;
        const float* wpe_row = wpe + (long)t * C;
        float* out_row = out + (long)bt * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) out_row[c] = wte_row[c] + wpe_row[c];
        if (++t == T) t = 0;
    }
}

// dwte[v,c] += sum over positions n with idx[n] == v (in token order) of dout[n,c]
// One 32-thread block per vocabulary row; lane l owns channels l, l+32, ... and scans the tokens
// in order (idx[n] is a broadcast read), so each sum has a fixed order. Work is O(V*N) index
// compares, cheap for a character vocabulary.
__global__ void encoder_backward_wte_kernel(float* dwte,         // (V,C) +=
                                            const float* dout,   // (B,T,C)
                                            const int* idx,      // (B,T)
                                            int N, int C) {
    const int v = blockIdx.x;
    for (int c0 = 0; c0 < C; c0 += 32 * 4) {
        // four channels per lane per pass keep the index scan short for C <= 128
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int n = 0; n < N; n++) {
            if (idx[n] != v) continue;
            const float* d = dout + (long)n * C;
            for (int k = 0; k < 4; k++) {
                const int c = c0 + k * 32 + threadIdx.x;
                if (c < C) acc[k] += d[c];
            }
        }
        for (int k = 0; k < 4; k++) {
            const int c = c0 + k * 32 + threadIdx.x;
            if (c < C) dwte[(long)v * C + c] += acc[k];
        }
    }
}

// dwpe[t,c] += sum_b dout[b,t,c]
// Tiles of the T*C outputs as in the forward; each thread sums its entry over b in order.
__global__ void encoder_backward_wpe_kernel(float* dwpe,        // (maxT,C) +=, rows 0..T-1 touched
                                            const float* dout,  // (B,T,C)
                                            int B, int T, int C) {
    const long n = (long)T * C;
    const long tile = 32L * blockDim.x, begin = tile * blockIdx.x, end = begin + tile < n ? begin + tile : n;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float acc = 0.0f;
        for (int b = 0; b < B; b++) acc += dout[(long)b * n + i];
        dwpe[i] += acc;
    }
}

inline void encoder_forward(float* out,        // (B,T,C)
                            const int* idx,    // (B,T)
                            const float* wte,  // (V,C)
                            const float* wpe,  // (maxT,C)
                            int B, int T, int C) {
    if ((long)B * T * C <= 0) return;
    encoder_forward_kernel<<<ceil_div((long)B * T, 32), 128>>>(out, idx, wte, wpe, B, T, C);
    CUDA_CHECK(cudaGetLastError());
}

inline void encoder_backward(float* dwte,        // (V,C) +=
                             float* dwpe,        // (maxT,C) +=
                             const float* dout,  // (B,T,C)
                             const int* idx,     // (B,T)
                             int B, int T, int C, int V) {
    if ((long)B * T * C <= 0) return;
    encoder_backward_wte_kernel<<<V, 32>>>(dwte, dout, idx, B * T, C);
    CUDA_CHECK(cudaGetLastError());
    encoder_backward_wpe_kernel<<<ceil_div((long)T * C, 32L * 128), 128>>>(dwpe, dout, B, T, C);
    CUDA_CHECK(cudaGetLastError());
}
