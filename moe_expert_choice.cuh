// moe_expert_choice.cuh: expert-choice routing (--routing expert; Zhou et al. 2022, docs/model.md,
// "Routing variants"). The experts pick their tokens instead of the tokens picking their experts:
//
//   p_t = the router's scores (softmax of the noisy logits, or their sigmoid with --gate sigmoid)
//   for every expert e and token group g (G groups of N/G consecutive tokens; G = 1 by default):
//       e takes the cap = expert_capacity(cfg, N) tokens of g with the largest p_t[e],
//       highest first; equal scores go to the lower token index
//   out_t = sum_s SharedFFN_s(u_t) + sum over the experts e that took t of p_t[e] FFN_e(u_t)
//           (in expert order; the gate is the raw score, never renormalised; 0..E experts per token)
//   aux = 0 (every expert holds exactly cap tokens of every group); z unchanged
//
// Backward, for fixed selections (the selection is piecewise constant in the scores):
//   dy_e[row] = p_t[e] dout_t                       for the token t in that row
//   dp_t[e]   = dout_t . y_e[row of t in e]         for every (e, t) taken, 0 otherwise
//   then the score function's backward (softmax: dh = p (dp - p.dp); sigmoid: dh = dp s (1 - s)),
//   the z-loss on the clean logits, the entropy bonus (on pn, as in token choice) and the noise
//   path; no aux gradient.
//
// Layout: expert e's buffer holds R = G*cap rows, group after group, each group's tokens highest
// score first; slot_choice (E, R) holds the token index of each row (the dispatch and the expert
// FFNs of token choice read it with K = 1), ec_gates (E, R) its gate p_t[e], and ec_slot (N, E) the
// row of t in e or -1, so the combine and its backward run per token, over e in order, without
// atomics.
#pragma once
#include <algorithm>
#include <cstdint>
#include "common.cuh"
#include "model_config.h"  // MOE_MAX_EXPERTS

// ----------------------------------------------------------------------------------------------
// selection: a bitonic sort per (expert, group) of 64-bit keys
//
//   key(t) = (~orderable(p_t[e]) << 32) | (t - group start)
//
// where orderable() maps a float to an unsigned int of the same order (the sign bit flipped for
// positives, every bit for negatives; -0 is made +0 first, so equal scores make equal high halves).
// Ascending keys are then: higher score first, and among equal scores the lower token first. The
// keys are distinct (the token is part of them), so the sorted order, and the selection, do not
// depend on how the compare-exchanges are scheduled: exact and deterministic. The first cap keys
// after the sort are the expert's tokens for the group, in order.
//
// One block per (expert, group), blockIdx.x = e * G + g. The group's n = N/G keys are padded to
// P = next power of two >= n with all-ones keys (they sort last), in a global scratch of E*G*P keys.
// The sort has log2(P)(log2(P)+1)/2 stages (105 at P = 16384), each a pass of P/2 compare-exchanges
// split over the block's threads, then __syncthreads(). On a GPU the block's P keys (128 KB at
// P = 16384) stay in L2; for P <= 4096 they would fit shared memory, and the stages with a stride
// below the block size could run there. E*G blocks are a small grid: the sort is O(P log^2 P) per
// block, ~1.7 M compare-exchanges at N = 16384, a few tens of microseconds on a GPU.
__device__ inline unsigned long long expert_choice_key(float score, int local_token) {
    if (score == 0.0f) score = 0.0f;  // -0 -> +0
    unsigned int u = __float_as_uint(score);
    const unsigned int ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)(~ordered) << 32) | (unsigned long long)(unsigned int)local_token;
}

__global__ void expert_choice_select_kernel(int* slot_choice,             // (E, R)  token of each row
                                            float* ec_gates,              // (E, R)  its gate p_t[e]
                                            int* ec_slot,                 // (N, E)  row of t in e, -1: not taken
                                            int* expert_ids,              // (N, E)  e (the stats read (N,E) choices)
                                            int* taken,                   // (N, E)  1 taken, 0 not
                                            int* routed,                  // (E)     G*cap
                                            int* kept_count,              // (E)     G*cap
                                            unsigned long long* keys,     // (E*G, P) scratch
                                            const float* probs,           // (N, E)  the scores p
                                            int N, int E, int G, int cap, int P) {
    const int e = blockIdx.x / G, g = blockIdx.x % G;
    const int n = N / G, first = g * n, R = G * cap;
    unsigned long long* k = keys + (long)blockIdx.x * P;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        k[i] = i < n ? expert_choice_key(probs[(long)(first + i) * E + e], i) : ~0ull;
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < P; i += blockDim.x) {
                const int j = i ^ stride;
                if (j <= i) continue;
                const bool ascending = (i & size) == 0;
                const unsigned long long a = k[i], b = k[j];
                if (ascending ? a > b : a < b) {
                    k[i] = b;
                    k[j] = a;
                }
            }
            __syncthreads();
        }
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
        const int t = first + (int)(k[r] & 0xffffffffull);
        const long te = (long)t * E + e;
        const int row = g * cap + r;
        expert_ids[te] = e;
        taken[te] = r < cap;
        ec_slot[te] = r < cap ? row : -1;
        if (r < cap) {
            slot_choice[(long)e * R + row] = t;
            ec_gates[(long)e * R + row] = probs[te];
        }
    }
    if (g == 0 && threadIdx.x == 0) {
        routed[e] = R;
        kept_count[e] = R;
    }
}

// Keys of the scratch one (expert, group) sorts: the group's N/G tokens, padded to a power of two.
inline int expert_choice_sort_length(int N, int G) {
    int P = 1;
    while (P < N / G) P <<= 1;
    return P;
}

inline void expert_choice_select(int* slot_choice, float* ec_gates, int* ec_slot, int* expert_ids, int* taken,
                                 int* routed, int* kept_count, unsigned long long* keys, const float* probs, int N,
                                 int E, int G, int cap) {
    const int P = expert_choice_sort_length(N, G);
    const int block_size = std::min(512, std::max(32, P / 2));
    expert_choice_select_kernel<<<E * G, block_size>>>(slot_choice, ec_gates, ec_slot, expert_ids, taken, routed,
                                                       kept_count, keys, probs, N, E, G, cap, P);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// combine:  out_t = sum_s ys_s[t] + sum_{e = 0..E-1, t taken by e} p_t[e] y_e[ec_slot[t,e]]
//
// One group of `lanes` threads per token; each output element is written by one thread, shared
// experts first, then the experts in index order (fixed order, no atomics).
__global__ void expert_choice_combine_kernel(float* out,               // (N,C) overwritten
                                             const float* expert_out,  // (E,R,C)
                                             const float* shared_out,  // (S,N,C)
                                             const float* probs,       // (N,E)
                                             const int* ec_slot,       // (N,E)
                                             int N, int E, int C, int R, int S, int lanes) {
    const int gi = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = gi / lanes, lane = gi % lanes;
    if (t >= N) return;
    float* o = out + (long)t * C;
    for (int i = lane; i < C; i += lanes) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += shared_out[((long)s * N + t) * C + i];
        o[i] = acc;
    }
    for (int e = 0; e < E; e++) {
        const int row = ec_slot[(long)t * E + e];
        if (row < 0) continue;
        const float gate = probs[(long)t * E + e];
        const float* y = expert_out + ((long)e * R + row) * C;
        for (int i = lane; i < C; i += lanes) o[i] += gate * y[i];
    }
}

inline void expert_choice_combine(float* out, const float* expert_out, const float* shared_out, const float* probs,
                                  const int* ec_slot, int N, int E, int C, int R, int S) {
    const int lanes = threads_per_row(C), block_size = 128;
    expert_choice_combine_kernel<<<ceil_div((long)N * lanes, block_size), block_size>>>(out, expert_out, shared_out,
                                                                                      probs, ec_slot, N, E, C, R, S,
                                                                                      lanes);
    CUDA_CHECK(cudaGetLastError());
}

// The combine's backward to the expert outputs, one group of `lanes` threads per buffer row:
//   dy_e[row] = ec_gates[e,row] dout_t   (t = the row's token; an empty row, never the case with
//   expert choice, would get 0)
__global__ void expert_choice_combine_backward_kernel(float* d_expert_out,     // (E,R,C)
                                                      const float* dout,       // (N,C)
                                                      const float* ec_gates,   // (E,R)
                                                      const int* slot_choice,  // (E,R) tokens
                                                      int rows, int C, int lanes) {
    const int gi = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = gi / lanes, lane = gi % lanes;
    if (row >= rows) return;
    const int t = slot_choice[row];
    float* dst = d_expert_out + (long)row * C;
    if (t < 0) {
        for (int i = lane; i < C; i += lanes) dst[i] = 0.0f;
    } else {
        const float gate = ec_gates[row];
        const float* src = dout + (long)t * C;
        for (int i = lane; i < C; i += lanes) dst[i] = gate * src[i];
    }
}

inline void expert_choice_combine_backward(float* d_expert_out, const float* dout, const float* ec_gates,
                                           const int* slot_choice, int E, int R, int C) {
    const int rows = E * R, lanes = threads_per_row(C), block_size = 128;
    expert_choice_combine_backward_kernel<<<ceil_div((long)rows * lanes, block_size), block_size>>>(
        d_expert_out, dout, ec_gates, slot_choice, rows, C, lanes);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// router backward, one thread per token (its E values in registers):
//   dp_e = the entropy bonus's gradient (through the normalisation with the sigmoid gate; 0 without
//          the bonus), + dout_t . y_e[ec_slot[t,e]] for e that took t (C products summed in order)
//   dh   = softmax backward: p (dp - p.dp)     or, with the sigmoid gate, dp s (1 - s)
//   dr   = dh + the z-loss gradient;   dn = dh eps sigmoid(n)   (with noise)
// A GPU thread reads one dout row and E expert rows of C floats: E*C loads per token, as the token
// choice gates' backward does for K rows.
__global__ void expert_choice_router_backward_kernel(float* d_logits,           // (N,E)
                                                     float* d_noise_logits,     // (N,E) or nullptr (no noise)
                                                     const float* dout,         // (N,C)
                                                     const float* expert_out,   // (E,R,C)
                                                     const int* ec_slot,        // (N,E)
                                                     const float* probs,        // (N,E)
                                                     const float* logits,       // (N,E)
                                                     const float* lse,          // (N)
                                                     const float* noise_logits, // (N,E)
                                                     const float* eps,          // (N,E)
                                                     int N, int E, int C, int R, float z_coef, int sigmoid_gate,
                                                     float entropy_coef) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const long row = (long)t * E;
    const float* p = probs + row;
    const float* d_o = dout + (long)t * C;
    float d[MOE_MAX_EXPERTS];  // dpn, then dp (ds), then dh in place
    for (int e = 0; e < E; e++) d[e] = 0.0f;
    if (entropy_coef != 0.0f) {  // as the token-choice router backward, without the aux term
        float pn_sigmoid[MOE_MAX_EXPERTS], score_sum = 1.0f;
        const float* pn = p;
        if (sigmoid_gate) {
            score_sum = router_normalise(pn_sigmoid, p, E);
            pn = pn_sigmoid;
        }
        router_entropy_backward(d, pn, entropy_coef, N, E);
        if (sigmoid_gate) router_normalise_backward(d, pn, score_sum, E);
    }
    for (int e = 0; e < E; e++) {
        const int slot = ec_slot[row + e];
        if (slot < 0) continue;
        const float* y = expert_out + ((long)e * R + slot) * C;
        float dp = 0.0f;
        for (int i = 0; i < C; i++) dp += d_o[i] * y[i];
        d[e] += dp;
    }
    if (sigmoid_gate)
        router_sigmoid_backward(d, p, E);
    else
        router_softmax_backward(d, p, E);
    z_loss_backward(d_logits + row, d, logits + row, lse[t], z_coef, N, E);
    if (d_noise_logits) router_noisy_logits_backward(d_noise_logits + row, d, noise_logits + row, eps + row, E);
}

inline void expert_choice_router_backward(float* d_logits, float* d_noise_logits, const float* dout,
                                          const float* expert_out, const int* ec_slot, const float* probs,
                                          const float* logits, const float* lse, const float* noise_logits,
                                          const float* eps, int N, int E, int C, int R, float z_coef,
                                          bool sigmoid_gate, float entropy_coef) {
    const int block_size = 64;
    expert_choice_router_backward_kernel<<<ceil_div(N, block_size), block_size>>>(
        d_logits, d_noise_logits, dout, expert_out, ec_slot, probs, logits, lse, noise_logits, eps, N, E, C, R,
        z_coef, sigmoid_gate ? 1 : 0, entropy_coef);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// dispatch backward: every copy of u_t hands its gradient back, in a fixed order,
//   du_t = sum_s dxs_s[t] + sum_{e = 0..E-1, t taken by e} dx_e[ec_slot[t,e]]      (overwritten)
// One group of `lanes` threads per token; each output element summed by one thread.
__global__ void expert_choice_dispatch_backward_kernel(float* du,                 // (N,C)
                                                       const float* d_expert_in,  // (E,R,C)
                                                       const float* d_shared_in,  // (S,N,C)
                                                       const int* ec_slot,        // (N,E)
                                                       int N, int E, int C, int R, int S, int lanes) {
    const int gi = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = gi / lanes, lane = gi % lanes;
    if (t >= N) return;
    float* o = du + (long)t * C;
    for (int i = lane; i < C; i += lanes) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += d_shared_in[((long)s * N + t) * C + i];
        o[i] = acc;
    }
    for (int e = 0; e < E; e++) {
        const int row = ec_slot[(long)t * E + e];
        if (row < 0) continue;
        const float* dx = d_expert_in + ((long)e * R + row) * C;
        for (int i = lane; i < C; i += lanes) o[i] += dx[i];
    }
}

inline void expert_choice_dispatch_backward(float* du, const float* d_expert_in, const float* d_shared_in,
                                            const int* ec_slot, int N, int E, int C, int R, int S) {
    const int lanes = threads_per_row(C), block_size = 128;
    expert_choice_dispatch_backward_kernel<<<ceil_div((long)N * lanes, block_size), block_size>>>(
        du, d_expert_in, d_shared_in, ec_slot, N, E, C, R, S, lanes);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// losses: aux is 0 by definition (one thread); z is computed as in token choice.
__global__ void expert_choice_zero_aux_kernel(float* aux) { aux[0] = 0.0f; }

inline void expert_choice_zero_aux(float* aux) {
    expert_choice_zero_aux_kernel<<<1, 1>>>(aux);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// coverage (diagnostics): coverage[k] = tokens taken by exactly k experts, k = 0..E.
// One block; each thread counts its tokens' experts, then adds 1 to its count's bin (integer
// atomics in shared memory: the counts do not depend on their order).
__global__ void expert_choice_coverage_kernel(int* coverage,       // (E+1)
                                              const int* ec_slot,  // (N,E)
                                              int N, int E) {
    __shared__ int bins[MOE_MAX_EXPERTS + 1];
    for (int k = threadIdx.x; k <= E; k += blockDim.x) bins[k] = 0;
    __syncthreads();
    for (int t = threadIdx.x; t < N; t += blockDim.x) {
        int count = 0;
        for (int e = 0; e < E; e++) count += ec_slot[(long)t * E + e] >= 0;
        atomicAdd(&bins[count], 1);
    }
    __syncthreads();
    for (int k = threadIdx.x; k <= E; k += blockDim.x) coverage[k] = bins[k];
}

inline void expert_choice_coverage(int* coverage, const int* ec_slot, int N, int E) {
    expert_choice_coverage_kernel<<<1, 256>>>(coverage, ec_slot, N, E);
    CUDA_CHECK(cudaGetLastError());
}
