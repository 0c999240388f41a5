// tests/reference_moe_stages.h: plain C++ references of the MoE layer's stage kernels, one per
// kernel, taking the same arguments in the same order (host memory), for the stage tests of
// test_moe.cpp. The whole layer, token by token, is in reference_model.h (ref_moe_forward,
// ref_moe_backward), together with the stages it shares with these: the routing (ref_moe_route),
// capacity (ref_moe_capacity), the aux and z losses (ref_moe_aux_z) and one token's router backward
// (ref_moe_router_token_backward). The expert FFNs are checked against the plain linear layers
// (ref_matmul_forward / ref_matmul_backward) and ref_gelu directly.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "reference_model.h"

// ---------------------------------------------------------------- forward stages

// x_e[r] = u[token of row r] or 0
template <typename T>
void ref_moe_dispatch(T* expert_in, const T* u, const int* slot_choice, int rows, int C, int K) {
    for (int row = 0; row < rows; row++)
        for (int i = 0; i < C; i++)
            expert_in[(long)row * C + i] = slot_choice[row] < 0 ? T(0) : u[(long)(slot_choice[row] / K) * C + i];
}

// pre = pre + b1 (per batch entry), act = GELU(pre); rows with row_choice < 0: pre = act = 0
template <typename T>
void ref_moe_expert_hidden(T* pre, T* act, const T* bias, const int* row_choice, int rows, int M, int W) {
    for (int row = 0; row < rows; row++)
        for (int i = 0; i < W; i++) {
            const long k = (long)row * W + i;
            if (row_choice && row_choice[row] < 0) {
                pre[k] = act[k] = T(0);
                continue;
            }
            pre[k] = pre[k] + bias[(long)(row / M) * W + i];
            act[k] = ref_gelu(pre[k]);
        }
}

// out += b2 (per batch entry); rows with row_choice < 0 are left alone
template <typename T>
void ref_moe_expert_output_bias(T* out, const T* bias, const int* row_choice, int rows, int M, int W) {
    for (int row = 0; row < rows; row++) {
        if (row_choice && row_choice[row] < 0) continue;
        for (int i = 0; i < W; i++) out[(long)row * W + i] = out[(long)row * W + i] + bias[(long)(row / M) * W + i];
    }
}

// out_t = sum_s ys_s[t] + sum_{kept j} g_tj y_{e_tj}[slot_tj]
template <typename T>
void ref_moe_combine(T* out, const T* expert_out, const T* shared_out, const T* gates, const int* topk_idx,
                     const int* kept, const int* slot, int N, int C, int K, int R, int S) {
    for (int t = 0; t < N; t++)
        for (int i = 0; i < C; i++) {
            double acc = 0.0;
            for (int s = 0; s < S; s++) acc += (double)shared_out[((long)s * N + t) * C + i];
            for (int j = 0; j < K; j++) {
                const int c = t * K + j;
                if (!kept[c]) continue;
                acc += (double)gates[c] * expert_out[((long)topk_idx[c] * R + slot[c]) * C + i];
            }
            out[(long)t * C + i] = (T)acc;
        }
}

// ---------------------------------------------------------------- backward stages

// dy_e[r] = g dout[t] (empty rows 0)
template <typename T>
void ref_moe_combine_backward(T* d_expert_out, const T* dout, const T* gates, const int* slot_choice, int rows, int C,
                              int K) {
    for (int row = 0; row < rows; row++) {
        const int c = slot_choice[row];
        for (int i = 0; i < C; i++)
            d_expert_out[(long)row * C + i] = c < 0 ? T(0) : gates[c] * dout[(long)(c / K) * C + i];
    }
}

// dg_tj = dout_t . y_{e_tj}[slot_tj] for a kept choice, 0 for a dropped one
template <typename T>
void ref_moe_combine_backward_gates(T* d_gates, const T* dout, const T* expert_out, const int* topk_idx,
                                    const int* kept, const int* slot, int N, int C, int K, int R) {
    for (int c = 0; c < N * K; c++) {
        double dg = 0.0;
        if (kept[c])
            for (int i = 0; i < C; i++)
                dg += (double)dout[(long)(c / K) * C + i] * expert_out[((long)topk_idx[c] * R + slot[c]) * C + i];
        d_gates[c] = (T)dg;
    }
}

// every token's router backward, from the gate gradients dg to dr (and dnl with noise)
template <typename T>
void ref_moe_router_backward(T* d_logits, T* d_noise_logits, const T* d_gates, const T* probs, const T* gates,
                             const int* topk_idx, const T* logits, const T* lse, const T* noise_logits, const T* eps,
                             const int* routed, int N, int E, int K, T aux_coef, T z_coef, int use_noise) {
    for (int t = 0; t < N; t++) {
        const long o = (long)t * E;
        ref_moe_router_token_backward(d_logits + o, d_noise_logits + o, d_gates + (long)t * K, probs + o,
                                      gates + (long)t * K, topk_idx + (long)t * K, logits + o, lse[t],
                                      noise_logits + o, eps + o, routed, N, E, K, aux_coef, z_coef, use_noise);
    }
}

// du_t = sum_s dxs_s[t] + sum_{kept j} dx_{e_j}[slot_j]
template <typename T>
void ref_moe_dispatch_backward(T* du, const T* d_expert_in, const T* d_shared_in, const int* topk_idx, const int* kept,
                               const int* slot, int N, int C, int K, int R, int S) {
    for (int t = 0; t < N; t++)
        for (int i = 0; i < C; i++) {
            double acc = 0.0;
            for (int s = 0; s < S; s++) acc += d_shared_in[((long)s * N + t) * C + i];
            for (int j = 0; j < K; j++) {
                const int c = t * K + j;
                if (kept[c]) acc += d_expert_in[((long)topk_idx[c] * R + slot[c]) * C + i];
            }
            du[(long)t * C + i] = (T)acc;
        }
}
