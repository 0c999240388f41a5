// moe_dispatch.cuh: moving tokens to their experts and back (docs/model.md, sections 14, 15 and 18):
//
//   capacity:  which choices get a row (a slot) in their expert's buffer, and which are dropped
//   dispatch:  x_e[slot] = u_t                       (gather the tokens into the expert buffers)
//   combine:   out_t = sum_s ys_s[t] + sum_{kept j} g_tj y_{e_tj}[slot_tj]   (scatter them back)
//
// Every expert buffer has the static shape R = buffer_rows; the slots are found on the device, so
// the host never learns how many tokens an expert got and no step waits for a device-to-host copy.
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------------------------
// capacity
//
// Token groups (--groups G; G = 1 by default): group g holds the tokens g*Ng .. (g+1)*Ng - 1,
// Ng = N/G, and every expert has `capacity` slots in EACH group. The layout of an expert's buffer
// (R = buffer_rows = G*Rg rows, Rg = min(capacity, Ng)): group g owns the rows g*Rg .. (g+1)*Rg - 1,
// filled from the front (slot k of group g is row g*Rg + k); rows past a group's last slot are
// empty (-1 in slot_choice). Everything that assigns rows (this step, the reroute rounds of
// moe_reroute.cuh, expert choice) uses this layout; slot[c] is always the row in the whole buffer.
//
// Priority order of the choices inside group g: q = j*Ng + (t - g*Ng) (the group's first choices in
// token order, then its second choices, ...). For expert e, the k-th choice of group g in that
// order that picked e gets slot k of group g and is kept when k < capacity; the rest are dropped
// (their token gets nothing from expert e). Also counts routed_e (choices for e, all groups) and
// kept_e (sum over the groups of min(routed_eg, capacity)), and, when group_fill is given, the
// slots used in each group (the reroute rounds continue from there).
//
// One block per expert, walking the G groups in order. Thread i owns a contiguous chunk of the
// group's q and counts the choices for e in it; an exclusive scan of the per-thread counts (one
// thread, in shared memory: a few dozen adds) gives each thread the number of earlier choices for
// e, and a second pass over its chunk hands out the slots. Integer work only; E blocks is a small
// grid, but the whole step is a few microseconds. (A grid of E*G blocks would spread the groups over
// more multiprocessors, at the price of a second pass summing the per-group counts.)
__global__ void moe_capacity_kernel(int* kept,             // (N,K)   1 kept, 0 dropped
                                    int* slot,             // (N,K)   row in the expert's buffer, -1 dropped
                                    int* slot_choice,      // (E,R)   choice c held by each row, -1 empty
                                    int* routed,           // (E)     choices per expert before capacity
                                    int* kept_count,       // (E)     after capacity
                                    int* group_fill,       // (E,G)   slots used per group (nullptr: not wanted)
                                    const int* topk_idx,   // (N,K)
                                    int N, int K, int capacity, int R, int groups) {
    extern __shared__ int offsets[];  // (blockDim.x + 1)
    const int e = blockIdx.x;
    const int group_tokens = N / groups, group_rows = R / groups;
    const int total = group_tokens * K;
    const int chunk = (total + blockDim.x - 1) / blockDim.x;
    const int begin = min(total, (int)threadIdx.x * chunk);
    const int end = min(total, begin + chunk);
    int routed_e = 0, kept_e = 0;
    for (int g = 0; g < groups; g++) {
        const int first_token = g * group_tokens;
        int* group_slot_choice = slot_choice + (long)e * R + (long)g * group_rows;
        int count = 0;
        for (int q = begin; q < end; q++) {
            int t = first_token + q % group_tokens, j = q / group_tokens;
            count += topk_idx[t * K + j] == e;
        }
        offsets[threadIdx.x] = count;
        __syncthreads();
        if (threadIdx.x == 0) {  // exclusive scan of the blockDim.x counts
            int run = 0;
            for (int i = 0; i < (int)blockDim.x; i++) {
                int c = offsets[i];
                offsets[i] = run;
                run += c;
            }
            offsets[blockDim.x] = run;
        }
        __syncthreads();
        int pos = offsets[threadIdx.x];
        for (int q = begin; q < end; q++) {
            int t = first_token + q % group_tokens, j = q / group_tokens;
            int c = t * K + j;
            if (topk_idx[c] != e) continue;
            if (pos < capacity) {
                kept[c] = 1;
                slot[c] = g * group_rows + pos;
                group_slot_choice[pos] = c;
            } else {
                kept[c] = 0;
                slot[c] = -1;
            }
            pos++;
        }
        // rows past the kept tokens are empty (a token picks e at most once, so routed_eg <= Ng and
        // kept_eg <= min(capacity, Ng) = Rg)
        const int routed_g = offsets[blockDim.x];
        const int kept_g = min(routed_g, capacity);
        for (int r = kept_g + threadIdx.x; r < group_rows; r += blockDim.x) group_slot_choice[r] = -1;
        routed_e += routed_g;
        kept_e += kept_g;
        if (threadIdx.x == 0 && group_fill) group_fill[e * groups + g] = kept_g;
        __syncthreads();  // every thread has read offsets[blockDim.x] before the next group's scan
    }
    if (threadIdx.x == 0) {
        routed[e] = routed_e;
        kept_count[e] = kept_e;
    }
}

inline void moe_capacity(int* kept, int* slot, int* slot_choice, int* routed, int* kept_count, const int* topk_idx,
                         int N, int E, int K, int capacity, int R, int groups = 1, int* group_fill = nullptr) {
    const int block_size = 64;
    moe_capacity_kernel<<<E, block_size, (block_size + 1) * sizeof(int)>>>(
        kept, slot, slot_choice, routed, kept_count, group_fill, topk_idx, N, K, capacity, R, groups);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// dispatch:  x_e[r] = u_t for the choice c = t*K + j held in row r of expert e; an empty row is 0
//
// One group of `lanes` threads per buffer row (E*R rows); lane l copies columns l, l + lanes, ...
// A group reads consecutive floats of u_t and writes consecutive floats of x_e[r] (coalesced).
__global__ void moe_dispatch_kernel(float* expert_in,        // (E,R,C)
                                    const float* u,          // (N,C)
                                    const int* slot_choice,  // (E,R)
                                    int rows, int C, int K, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / lanes, lane = g % lanes;
    if (row >= rows) return;
    const int c = slot_choice[row];
    float* dst = expert_in + (long)row * C;
    if (c < 0) {
        for (int i = lane; i < C; i += lanes) dst[i] = 0.0f;
    } else {
        const float* src = u + (long)(c / K) * C;
        for (int i = lane; i < C; i += lanes) dst[i] = src[i];
    }
}

inline void moe_dispatch(float* expert_in, const float* u, const int* slot_choice, int E, int R, int C, int K) {
    const int rows = E * R, lanes = threads_per_row(C), block_size = 128;
    moe_dispatch_kernel<<<ceil_div((long)rows * lanes, block_size), block_size>>>(expert_in, u, slot_choice, rows, C,
                                                                                K, lanes);
    CUDA_CHECK(cudaGetLastError());
}

// The backward of dispatch (and of the shared experts' reading of u): every copy of u_t hands its
// gradient back,
//   du_t = sum_s dxs_s[t] + sum_{kept j} dx_{e_tj}[slot_tj]      (overwritten; in this order)
// One group of `lanes` threads per token; each output element is summed by one thread, so the
// order is fixed (no atomics).
__global__ void moe_dispatch_backward_kernel(float* du,                // (N,C) overwritten
                                             const float* d_expert_in, // (E,R,C)
                                             const float* d_shared_in, // (S,N,C)
                                             const int* topk_idx,      // (N,K)
                                             const int* kept,          // (N,K)
                                             const int* slot,          // (N,K)
                                             int N, int C, int K, int R, int S, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = g / lanes, lane = g % lanes;
    if (t >= N) return;
    float* o = du + (long)t * C;
    for (int i = lane; i < C; i += lanes) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += d_shared_in[((long)s * N + t) * C + i];
        o[i] = acc;
    }
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        if (!kept[c]) continue;
        const float* dx = d_expert_in + ((long)topk_idx[c] * R + slot[c]) * C;
        for (int i = lane; i < C; i += lanes) o[i] += dx[i];
    }
}

inline void moe_dispatch_backward(float* du, const float* d_expert_in, const float* d_shared_in, const int* topk_idx,
                                  const int* kept, const int* slot, int N, int C, int K, int R, int S) {
    const int lanes = threads_per_row(C), block_size = 128;
    moe_dispatch_backward_kernel<<<ceil_div((long)N * lanes, block_size), block_size>>>(
        du, d_expert_in, d_shared_in, topk_idx, kept, slot, N, C, K, R, S, lanes);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// combine:  out_t = sum_s ys_s[t] + sum_{kept j} g_tj y_{e_tj}[slot_tj]
//
// A dropped choice adds nothing: its gate is not renormalised away, so a token that lost an expert
// to capacity gets a smaller update (and, without shared experts, only the residual stream).
// One group of `lanes` threads per token; each output element is written by one thread, shared
// experts first, then j = 0..K-1 in order.
__global__ void moe_combine_kernel(float* out,                // (N,C) overwritten
                                   const float* expert_out,   // (E,R,C)
                                   const float* shared_out,   // (S,N,C)
                                   const float* gates,        // (N,K)
                                   const int* topk_idx,       // (N,K)
                                   const int* kept,           // (N,K)
                                   const int* slot,           // (N,K)
                                   int N, int C, int K, int R, int S, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = g / lanes, lane = g % lanes;
    if (t >= N) return;
    float* o = out + (long)t * C;
    for (int i = lane; i < C; i += lanes) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += shared_out[((long)s * N + t) * C + i];
        o[i] = acc;
    }
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        if (!kept[c]) continue;
        const float gate = gates[c];
        const float* y = expert_out + ((long)topk_idx[c] * R + slot[c]) * C;
        for (int i = lane; i < C; i += lanes) o[i] += gate * y[i];
    }
}

inline void moe_combine(float* out, const float* expert_out, const float* shared_out, const float* gates,
                        const int* topk_idx, const int* kept, const int* slot, int N, int C, int K, int R, int S) {
    const int lanes = threads_per_row(C), block_size = 128;
    moe_combine_kernel<<<ceil_div((long)N * lanes, block_size), block_size>>>(out, expert_out, shared_out, gates,
                                                                            topk_idx, kept, slot, N, C, K, R, S,
                                                                            lanes);
    CUDA_CHECK(cudaGetLastError());
}

// The backward of combine, to the expert outputs (one group of `lanes` threads per buffer row):
//   dy_e[r] = g_tj dout_t    for the choice (t, j) in row r of expert e;   an empty row: dy = 0
// (the shared experts' output gradient is dout itself, read in place by their backward)
__global__ void moe_combine_backward_kernel(float* d_expert_out,    // (E,R,C)
                                            const float* dout,      // (N,C)
                                            const float* gates,     // (N,K)
                                            const int* slot_choice, // (E,R)
                                            int rows, int C, int K, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / lanes, lane = g % lanes;
    if (row >= rows) return;
    const int c = slot_choice[row];
    float* dst = d_expert_out + (long)row * C;
    if (c < 0) {
        for (int i = lane; i < C; i += lanes) dst[i] = 0.0f;
    } else {
        const float gate = gates[c];
        const float* src = dout + (long)(c / K) * C;
        for (int i = lane; i < C; i += lanes) dst[i] = gate * src[i];
    }
}

// ... and to the gates (one thread per choice; the C products are summed in order):
//   dg_tj = dout_t . y_{e_tj}[slot_tj]   for a kept choice;   a dropped choice: 0
__global__ void moe_combine_backward_gates_kernel(float* d_gates,          // (N,K)
                                                  const float* dout,       // (N,C)
                                                  const float* expert_out, // (E,R,C)
                                                  const int* topk_idx,     // (N,K)
                                                  const int* kept,         // (N,K)
                                                  const int* slot,         // (N,K)
                                                  int N, int C, int K, int R) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N * K) return;
    float dg = 0.0f;
    if (kept[c]) {
        const float* d_o = dout + (long)(c / K) * C;
        const float* y = expert_out + ((long)topk_idx[c] * R + slot[c]) * C;
        for (int i = 0; i < C; i++) dg += d_o[i] * y[i];
    }
    d_gates[c] = dg;
}

inline void moe_combine_backward(float* d_expert_out, float* d_gates, const float* dout, const float* expert_out,
                                 const float* gates, const int* topk_idx, const int* kept, const int* slot,
                                 const int* slot_choice, int N, int E, int C, int K, int R) {
    const int rows = E * R, lanes = threads_per_row(C), block_size = 128;
    moe_combine_backward_kernel<<<ceil_div((long)rows * lanes, block_size), block_size>>>(d_expert_out, dout, gates,
                                                                                        slot_choice, rows, C, K,
                                                                                        lanes);
    CUDA_CHECK(cudaGetLastError());
    const int choice_block = 64;
    moe_combine_backward_gates_kernel<<<ceil_div((long)N * K, choice_block), choice_block>>>(
        d_gates, dout, expert_out, topk_idx, kept, slot, N, C, K, R);
    CUDA_CHECK(cudaGetLastError());
}
