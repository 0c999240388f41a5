// tests/reference_moe.h: plain C++ reference of the MoE layer (moe_layer.cuh), forward and backward.
//
// Two levels:
//  - one ref_moe_<stage> per kernel of moe_layer.cuh, same arguments in the same order (host
//    memory), for the stage tests;
//  - ref_moe_forward / ref_moe_backward: the whole layer written the plain way, token by token
//    (each kept choice runs its expert's FFN on u_t directly: no buffers, no slots), so it checks
//    the buffer machinery of the kernels rather than repeating it.
// Templated on the scalar type: double for the finite-difference tests. The routing (softmax,
// top-K, gates) is computed in T with the kernel's operation order, so in float it reproduces the
// kernel's decisions; the other sums accumulate in double.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>
#include "moe_layer.cuh"  // MoeConfig, moe_config_finalize

// ---------------------------------------------------------------- parameters and saved state

// Host copy of MoeWeights (the same tensors, the same layouts).
template <typename T>
struct RefMoeParams {
    std::vector<T> router, noise, fc_w, fc_b, proj_w, proj_b, shared_fc_w, shared_fc_b, shared_proj_w, shared_proj_b;
    RefMoeParams() = default;
    explicit RefMoeParams(const MoeConfig& cfg) {
        const size_t C = cfg.C, E = cfg.E, F = cfg.F, S = cfg.S, Fs = cfg.Fs;
        router.assign(E * C, T(0));
        noise.assign(E * C, T(0));
        fc_w.assign(E * F * C, T(0));
        fc_b.assign(E * F, T(0));
        proj_w.assign(E * C * F, T(0));
        proj_b.assign(E * C, T(0));
        shared_fc_w.assign(S * Fs * C, T(0));
        shared_fc_b.assign(S * Fs, T(0));
        shared_proj_w.assign(S * C * Fs, T(0));
        shared_proj_b.assign(S * C, T(0));
    }
    // fn(name, vector&) over the ten tensors, in MoeWeights order
    template <typename Fn>
    void for_each(Fn fn) {
        fn("router", router);
        fn("noise", noise);
        fn("fc_w", fc_w);
        fn("fc_b", fc_b);
        fn("proj_w", proj_w);
        fn("proj_b", proj_b);
        fn("shared_fc_w", shared_fc_w);
        fn("shared_fc_b", shared_fc_b);
        fn("shared_proj_w", shared_proj_w);
        fn("shared_proj_b", shared_proj_b);
    }
};

// What ref_moe_forward records (the MoeActivations a test compares against).
template <typename T>
struct RefMoeState {
    std::vector<T> router_logits, noise_logits, noise_eps, probs, gates, lse;  // noise_eps: set by the caller
    std::vector<int> topk_idx, kept, slot, slot_choice, routed, kept_count;
    T aux = T(0), z = T(0);
    explicit RefMoeState(const MoeConfig& cfg)
        : router_logits((size_t)cfg.N * cfg.E), noise_logits((size_t)cfg.N * cfg.E), noise_eps((size_t)cfg.N * cfg.E),
          probs((size_t)cfg.N * cfg.E), gates((size_t)cfg.N * cfg.K), lse(cfg.N), topk_idx((size_t)cfg.N * cfg.K),
          kept((size_t)cfg.N * cfg.K), slot((size_t)cfg.N * cfg.K), slot_choice((size_t)cfg.E * cfg.buffer_rows),
          routed(cfg.E), kept_count(cfg.E) {}
};

// ---------------------------------------------------------------- small math

template <typename T>
T ref_moe_softplus(T x) { return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x))); }
template <typename T>
T ref_moe_sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <typename T>
T ref_moe_gelu(T z) {
    const T s = T(0.7978845608028654);
    return T(0.5) * z * (T(1) + std::tanh(s * (z + T(0.044715) * z * z * z)));
}
template <typename T>
T ref_moe_gelu_grad(T z) {
    const T s = T(0.7978845608028654);
    const T th = std::tanh(s * (z + T(0.044715) * z * z * z));
    return T(0.5) * (T(1) + th) + T(0.5) * z * (T(1) - th * th) * s * (T(1) + T(3) * T(0.044715) * z * z);
}

// out (M,OC) = inp (M,IC) W^T (+ b),  W (OC,IC)
template <typename T>
void ref_moe_linear(T* out, const T* inp, const T* w, const T* b, int M, int IC, int OC) {
    for (int m = 0; m < M; m++)
        for (int o = 0; o < OC; o++) {
            double acc = b ? (double)b[o] : 0.0;
            for (int i = 0; i < IC; i++) acc += (double)inp[(long)m * IC + i] * (double)w[(long)o * IC + i];
            out[(long)m * OC + o] = (T)acc;
        }
}

// dinp (M,IC) = dout W (overwritten, if given); dW (OC,IC) += dout^T inp; db (OC) += column sums of dout (if given)
template <typename T>
void ref_moe_linear_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, int M, int IC, int OC) {
    for (int m = 0; m < M && dinp; m++)
        for (int i = 0; i < IC; i++) {
            double acc = 0.0;
            for (int o = 0; o < OC; o++) acc += (double)dout[(long)m * OC + o] * w[(long)o * IC + i];
            dinp[(long)m * IC + i] = (T)acc;
        }
    for (int o = 0; o < OC; o++) {
        for (int i = 0; i < IC; i++) {
            double acc = 0.0;
            for (int m = 0; m < M; m++) acc += (double)dout[(long)m * OC + o] * inp[(long)m * IC + i];
            dw[(long)o * IC + i] += (T)acc;
        }
        if (db) {
            double acc = 0.0;
            for (int m = 0; m < M; m++) acc += dout[(long)m * OC + o];
            db[o] += (T)acc;
        }
    }
}

// ---------------------------------------------------------------- forward stages

// h = r (+ eps softplus(nl)); p = softmax(h); top-K of p (ties: lower index); gates; lse of r
template <typename T>
void ref_moe_route(T* probs, T* gates, int* topk_idx, T* lse, const T* logits, const T* noise_logits, const T* eps,
                   int N, int E, int K, int use_noise) {
    std::vector<T> p(E);
    for (int t = 0; t < N; t++) {
        const T* r = logits + (long)t * E;
        T hmax = -INFINITY, rmax = -INFINITY;
        for (int i = 0; i < E; i++) {
            T h = r[i];
            rmax = std::max(rmax, h);
            if (use_noise) h += eps[(long)t * E + i] * ref_moe_softplus(noise_logits[(long)t * E + i]);
            p[i] = h;
            hmax = std::max(hmax, h);
        }
        T sum = 0, rsum = 0;
        for (int i = 0; i < E; i++) {
            p[i] = std::exp(p[i] - hmax);
            sum += p[i];
            rsum += std::exp(r[i] - rmax);
        }
        for (int i = 0; i < E; i++) {
            p[i] = p[i] / sum;
            probs[(long)t * E + i] = p[i];
        }
        lse[t] = rmax + std::log(rsum);
        // the K largest, highest first; among equal values the lower index comes first
        std::vector<int> order(E);
        for (int i = 0; i < E; i++) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
        T chosen = 0;
        for (int j = 0; j < K; j++) {
            topk_idx[(long)t * K + j] = order[j];
            chosen += p[order[j]];
        }
        for (int j = 0; j < K; j++) gates[(long)t * K + j] = K > 1 ? p[order[j]] / chosen : p[order[j]];
    }
}

// Slots by priority: all first choices in token order, then all second choices, ...
inline void ref_moe_capacity(int* kept, int* slot, int* slot_choice, int* routed, int* kept_count, const int* topk_idx, int N,
                      int K, int cap, int R, int E) {
    std::vector<int> used(E, 0);
    for (int e = 0; e < E; e++) routed[e] = 0;
    for (int i = 0; i < E * R; i++) slot_choice[i] = -1;
    for (int j = 0; j < K; j++)
        for (int t = 0; t < N; t++) {
            const int c = t * K + j, e = topk_idx[c];
            routed[e]++;
            if (used[e] < cap) {
                kept[c] = 1;
                slot[c] = used[e];
                slot_choice[e * R + used[e]] = c;
                used[e]++;
            } else {
                kept[c] = 0;
                slot[c] = -1;
            }
        }
    for (int e = 0; e < E; e++) kept_count[e] = used[e];
}

// x_e[r] = u[token of row r] or 0
template <typename T>
void ref_moe_dispatch(T* expert_in, const T* u, const int* slot_choice, int rows, int C, int K) {
    for (int row = 0; row < rows; row++)
        for (int i = 0; i < C; i++)
            expert_in[(long)row * C + i] = slot_choice[row] < 0 ? T(0) : u[(long)(slot_choice[row] / K) * C + i];
}

// z = fc + bias (per batch entry); act = GELU(z); fc = GELU'(z) (the slope the backward multiplies by);
// rows with row_choice < 0: act = fc = 0
template <typename T>
void ref_moe_bias_gelu(T* fc, T* act, const T* bias, const int* row_choice, int rows, int M, int W) {
    for (int row = 0; row < rows; row++)
        for (int i = 0; i < W; i++) {
            const long k = (long)row * W + i;
            if (row_choice && row_choice[row] < 0) {
                fc[k] = act[k] = T(0);
                continue;
            }
            const T z = fc[k] + bias[(long)(row / M) * W + i];
            act[k] = ref_moe_gelu(z);
            fc[k] = ref_moe_gelu_grad(z);
        }
}

// out_t = sum_s (ys + bs) + sum_{kept j} g (y + b)
template <typename T>
void ref_moe_combine(T* out, const T* expert_out, const T* proj_b, const T* shared_out, const T* shared_proj_b,
                     const T* gates, const int* topk_idx, const int* kept, const int* slot, int N, int C, int K, int R,
                     int S) {
    for (int t = 0; t < N; t++)
        for (int i = 0; i < C; i++) {
            double acc = 0.0;
            for (int s = 0; s < S; s++) acc += (double)shared_out[((long)s * N + t) * C + i] + shared_proj_b[s * C + i];
            for (int j = 0; j < K; j++) {
                const int c = t * K + j;
                if (!kept[c]) continue;
                const int e = topk_idx[c];
                acc += (double)gates[c] * ((double)expert_out[((long)e * R + slot[c]) * C + i] + proj_b[e * C + i]);
            }
            out[(long)t * C + i] = (T)acc;
        }
}

// aux = E sum_i f_i P_i;  z = mean_t lse_t^2
template <typename T>
void ref_moe_aux_z(T* aux, T* z, const T* probs, const T* lse, const int* routed, int N, int E, int K) {
    double a = 0.0;
    for (int i = 0; i < E; i++) {
        double P = 0.0;
        for (int t = 0; t < N; t++) P += probs[(long)t * E + i];
        a += ((double)routed[i] / ((double)N * K)) * (P / N);
    }
    *aux = (T)(E * a);
    double s = 0.0;
    for (int t = 0; t < N; t++) s += (double)lse[t] * lse[t];
    *z = (T)(s / N);
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

// dbias[b, w] += sum_m d[b*d_stride + m*W + w]
template <typename T>
void ref_moe_bias_backward(T* dbias, const T* d, long d_stride, int B, int M, int W) {
    for (int b = 0; b < B; b++)
        for (int w = 0; w < W; w++) {
            double acc = 0.0;
            for (int m = 0; m < M; m++) acc += d[b * d_stride + (long)m * W + w];
            dbias[b * W + w] += (T)acc;
        }
}

// d *= GELU'(z), the slope saved by the forward
template <typename T>
void ref_moe_gelu_backward(T* d, const T* slope, long n) {
    for (long i = 0; i < n; i++) d[i] = d[i] * slope[i];
}

// One token's router backward from its gate gradients dg (K; dropped choices 0) to dr and d(W_n u):
// the gates' renormalisation, the aux loss's constant push f_i on p, softmax, z-loss, noise path.
template <typename T>
void ref_moe_router_token_backward(T* dr, T* dnl, const T* dg, const T* p, const T* gates, const int* topk,
                                   const T* r, T lse, const T* nl, const T* eps, const int* routed, int N, int E, int K,
                                   T aux_coef, T z_coef, int use_noise) {
    std::vector<double> dp(E);
    for (int i = 0; i < E; i++) dp[i] = (double)aux_coef * E * ((double)routed[i] / ((double)N * K)) / N;
    if (K == 1) {
        dp[topk[0]] += dg[0];
    } else {
        double D = 0.0, dgg = 0.0;
        for (int j = 0; j < K; j++) {
            D += p[topk[j]];
            dgg += (double)dg[j] * gates[j];
        }
        for (int j = 0; j < K; j++) dp[topk[j]] += ((double)dg[j] - dgg) / D;
    }
    double pdp = 0.0;
    for (int i = 0; i < E; i++) pdp += p[i] * dp[i];
    for (int i = 0; i < E; i++) {
        const double dh = p[i] * (dp[i] - pdp);
        dr[i] = (T)(dh + (double)z_coef * 2.0 * lse / N * std::exp((double)r[i] - lse));
        if (use_noise) dnl[i] = (T)(dh * eps[i] * ref_moe_sigmoid((double)nl[i]));
    }
}

template <typename T>
void ref_moe_router_backward(T* d_logits, T* d_noise_logits, T* d_gates, const T* dout, const T* expert_out,
                             const T* proj_b, const T* probs, const T* gates, const int* topk_idx, const int* kept,
                             const int* slot, const T* logits, const T* lse, const T* noise_logits, const T* eps,
                             const int* routed, int N, int C, int E, int K, int R, T aux_coef, T z_coef,
                             int use_noise) {
    for (int t = 0; t < N; t++) {
        for (int j = 0; j < K; j++) {
            const int c = t * K + j;
            double dg = 0.0;
            if (kept[c]) {
                const int e = topk_idx[c];
                for (int i = 0; i < C; i++)
                    dg += (double)dout[(long)t * C + i] *
                          ((double)expert_out[((long)e * R + slot[c]) * C + i] + proj_b[e * C + i]);
            }
            d_gates[c] = (T)dg;
        }
        const long o = (long)t * E;
        ref_moe_router_token_backward(d_logits + o, d_noise_logits + o, d_gates + (long)t * K, probs + o,
                                      gates + (long)t * K, topk_idx + (long)t * K, logits + o, lse[t],
                                      noise_logits + o, eps + o, routed, N, E, K, aux_coef, z_coef, use_noise);
    }
}

// du_t = sum_s dxs_s[t] + sum_{kept j} dx_{e_j}[slot_j]
template <typename T>
void ref_moe_gather_backward(T* du, const T* d_expert_in, const T* d_shared_in, const int* topk_idx, const int* kept,
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

// ---------------------------------------------------------------- the whole layer

// One FFN on one token: hidden pre-activation a (F), output y (C) = W2 GELU(W1 u + b1) + b2.
template <typename T>
void ref_moe_ffn_token(T* a, T* y, const T* u, const T* w1, const T* b1, const T* w2, const T* b2, int C, int F) {
    for (int f = 0; f < F; f++) {
        double acc = b1[f];
        for (int i = 0; i < C; i++) acc += (double)w1[(long)f * C + i] * u[i];
        a[f] = (T)acc;
    }
    for (int i = 0; i < C; i++) {
        double acc = b2[i];
        for (int f = 0; f < F; f++) acc += (double)w2[(long)i * F + f] * ref_moe_gelu(a[f]);
        y[i] = (T)acc;
    }
}

// Its backward for an output gradient dy: dW1, db1, dW2, db2 +=; du +=.
template <typename T>
void ref_moe_ffn_token_backward(T* du, T* dw1, T* db1, T* dw2, T* db2, const T* dy, const T* u, const T* a,
                                const T* w1, const T* w2, int C, int F) {
    for (int f = 0; f < F; f++) {
        const T h = ref_moe_gelu(a[f]);
        double dh = 0.0;
        for (int i = 0; i < C; i++) {
            dh += (double)w2[(long)i * F + f] * dy[i];
            dw2[(long)i * F + f] += dy[i] * h;
        }
        const T da = (T)(dh * ref_moe_gelu_grad(a[f]));
        db1[f] += da;
        for (int i = 0; i < C; i++) {
            dw1[(long)f * C + i] += da * u[i];
            du[i] += da * w1[(long)f * C + i];
        }
    }
    for (int i = 0; i < C; i++) db2[i] += dy[i];
}

// out (N,C) = FFN_moe(u); fills st (st.noise_eps must hold the draws when noise applies).
template <typename T>
void ref_moe_forward(T* out, RefMoeState<T>& st, const RefMoeParams<T>& w, const T* u, const MoeConfig& cfg,
                     bool training) {
    const int N = cfg.N, C = cfg.C, E = cfg.E, K = cfg.K, F = cfg.F, S = cfg.S, Fs = cfg.Fs;
    const int use_noise = cfg.noise && training;
    ref_moe_linear(st.router_logits.data(), u, w.router.data(), (const T*)nullptr, N, C, E);
    if (use_noise) ref_moe_linear(st.noise_logits.data(), u, w.noise.data(), (const T*)nullptr, N, C, E);
    ref_moe_route(st.probs.data(), st.gates.data(), st.topk_idx.data(), st.lse.data(), st.router_logits.data(),
                  st.noise_logits.data(), st.noise_eps.data(), N, E, K, use_noise);
    ref_moe_capacity(st.kept.data(), st.slot.data(), st.slot_choice.data(), st.routed.data(), st.kept_count.data(),
                     st.topk_idx.data(), N, K, cfg.capacity, cfg.buffer_rows, E);
    std::vector<T> a(std::max(F, Fs)), y(C);
    for (int t = 0; t < N; t++) {
        const T* ut = u + (long)t * C;
        std::vector<double> acc(C, 0.0);
        for (int s = 0; s < S; s++) {
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.shared_fc_w[(size_t)s * Fs * C], &w.shared_fc_b[(size_t)s * Fs],
                              &w.shared_proj_w[(size_t)s * C * Fs], &w.shared_proj_b[(size_t)s * C], C, Fs);
            for (int i = 0; i < C; i++) acc[i] += y[i];
        }
        for (int j = 0; j < K; j++) {
            const int c = t * K + j;
            if (!st.kept[c]) continue;
            const int e = st.topk_idx[c];
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.fc_w[(size_t)e * F * C], &w.fc_b[(size_t)e * F],
                              &w.proj_w[(size_t)e * C * F], &w.proj_b[(size_t)e * C], C, F);
            for (int i = 0; i < C; i++) acc[i] += (double)st.gates[c] * y[i];
        }
        for (int i = 0; i < C; i++) out[(long)t * C + i] = (T)acc[i];
    }
    ref_moe_aux_z(&st.aux, &st.z, st.probs.data(), st.lse.data(), st.routed.data(), N, E, K);
}

// The loss whose gradient ref_moe_backward computes: dout . out + aux_coef aux + z_coef z
template <typename T>
double ref_moe_loss(const T* out, const T* dout, const RefMoeState<T>& st, const MoeConfig& cfg, double aux_coef,
                    double z_coef) {
    double l = 0.0;
    for (long i = 0; i < (long)cfg.N * cfg.C; i++) l += (double)dout[i] * out[i];
    return l + aux_coef * st.aux + z_coef * st.z;
}

// du overwritten; grads accumulate (+=).
template <typename T>
void ref_moe_backward(T* du, RefMoeParams<T>& grads, const T* dout, const RefMoeState<T>& st,
                      const RefMoeParams<T>& w, const T* u, const MoeConfig& cfg, T aux_coef, T z_coef,
                      bool training) {
    const int N = cfg.N, C = cfg.C, E = cfg.E, K = cfg.K, F = cfg.F, S = cfg.S, Fs = cfg.Fs;
    const int use_noise = cfg.noise && training;
    std::vector<T> a(std::max(F, Fs)), y(C), dy(C), dg(K), dr(E), dnl(E);
    for (long i = 0; i < (long)N * C; i++) du[i] = T(0);
    for (int t = 0; t < N; t++) {
        const T* ut = u + (long)t * C;
        const T* dot = dout + (long)t * C;
        T* dut = du + (long)t * C;
        for (int s = 0; s < S; s++) {
            const size_t o1 = (size_t)s * Fs * C, ob = (size_t)s * Fs, o2 = (size_t)s * C * Fs, oc = (size_t)s * C;
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.shared_fc_w[o1], &w.shared_fc_b[ob], &w.shared_proj_w[o2],
                              &w.shared_proj_b[oc], C, Fs);
            ref_moe_ffn_token_backward(dut, &grads.shared_fc_w[o1], &grads.shared_fc_b[ob], &grads.shared_proj_w[o2],
                                       &grads.shared_proj_b[oc], dot, ut, a.data(), &w.shared_fc_w[o1],
                                       &w.shared_proj_w[o2], C, Fs);
        }
        for (int j = 0; j < K; j++) {
            const int c = t * K + j;
            dg[j] = T(0);
            if (!st.kept[c]) continue;  // a dropped choice: no output, no gradient through its gate
            const int e = st.topk_idx[c];
            const size_t o1 = (size_t)e * F * C, ob = (size_t)e * F, o2 = (size_t)e * C * F, oc = (size_t)e * C;
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.fc_w[o1], &w.fc_b[ob], &w.proj_w[o2], &w.proj_b[oc], C, F);
            double g = 0.0;
            for (int i = 0; i < C; i++) {
                g += (double)dot[i] * y[i];
                dy[i] = st.gates[c] * dot[i];
            }
            dg[j] = (T)g;
            ref_moe_ffn_token_backward(dut, &grads.fc_w[o1], &grads.fc_b[ob], &grads.proj_w[o2], &grads.proj_b[oc],
                                       dy.data(), ut, a.data(), &w.fc_w[o1], &w.proj_w[o2], C, F);
        }
        const long o = (long)t * E;
        ref_moe_router_token_backward(dr.data(), dnl.data(), dg.data(), &st.probs[o], &st.gates[(size_t)t * K],
                                      &st.topk_idx[(size_t)t * K], &st.router_logits[o], st.lse[t],
                                      &st.noise_logits[o], &st.noise_eps[o], st.routed.data(), N, E, K, aux_coef,
                                      z_coef, use_noise);
        for (int e = 0; e < E; e++)
            for (int i = 0; i < C; i++) {
                dut[i] += dr[e] * w.router[(size_t)e * C + i];
                grads.router[(size_t)e * C + i] += dr[e] * ut[i];
                if (use_noise) {
                    dut[i] += dnl[e] * w.noise[(size_t)e * C + i];
                    grads.noise[(size_t)e * C + i] += dnl[e] * ut[i];
                }
            }
    }
}
