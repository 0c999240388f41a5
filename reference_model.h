// reference_model.h: the whole model in plain C++. Read this file first.
//
// Everything moe.cu computes in a training step, written as straight loops over host memory: the
// GPT layers, the Mixture-of-Experts layer token by token, the losses, the backward pass of every
// layer, gradient clipping and AdamW, and the step that composes them. No CUDA, no buffers, no
// launch geometry: only the C++ standard library and model_config.h. The CUDA headers compute the
// same numbers faster (one kernel per stage, one launch per batch), and the tests hold them to
// this file: test_gpt_kernels.cpp layer by layer, test_moe.cpp for the MoE layer, test_model.cpp
// for whole training steps, and test_reference_grads.cpp checks every backward here against finite
// differences. The formulas are spelled out in docs/model.md; the comments cite its sections.
//
// Contents
//   1. The data: letters, layouts, the parameter table, the MoE layer's weights and routing record
//   2. Forward, layer by layer: embedding, LayerNorm, linear, attention, GELU, residual
//   3. The MoE layer, token by token: route, capacity, expert FFNs, combine, aux and z losses
//   4. The loss: cross-entropy and the mean
//   5. Backward, in reverse: LM head and linears, LayerNorm, GELU, the MoE layer, residual,
//      attention, embedding
//   6. The update: global norm, clipping, AdamW
//   7. The whole training step (RefModel): forward, loss, backward, update
//
// Scalar type. Every function is a template on T, the type of its tensors: float to compare with
// the kernels, double for the finite-difference tests. Sums accumulate in double either way. The
// MoE routing (softmax, top-K, gates) is the exception: it is computed in T, in the kernels'
// operation order, so that in float it makes the kernels' discrete decisions bit for bit.
//
// Gradient convention (as the kernels): parameter gradients accumulate (+=); LayerNorm's input
// gradient accumulates too (it lands on the residual stream, which already holds the skip
// connection's gradient); every other activation gradient is overwritten.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model_config.h"

// ================================================================================================
// 1. The data
//
// Letters (docs/model.md, 1. Notation): B sequences of Tn tokens (Tn is the sequence length; the
// docs call it T, which here names the scalar type), N = B*Tn tokens, V vocabulary, C width, NH
// heads of size hs = C/NH, L blocks. MoE: E routed experts of hidden width F, K of them per token,
// S shared experts of width Fs, cap = expert_capacity(cfg, N) choices per expert and
// R = expert_buffer_rows(cfg, N) = min(cap, N) rows in an expert's buffer.
//
// Activations are row-major with the token outermost: x[n*C + c], token n = b*Tn + t. A linear
// map keeps its weight as PyTorch's nn.Linear does, W (out, in): out = inp W^T + b.
//
// Token t's j-th expert pick is the choice c = t*K + j (j = 0 is its best expert).
//
// Parameters live in one flat array, in the order of model_parameter_table(cfg) (model_config.h),
// which names each tensor and gives its shape and offset: wte, wpe, then per block ln_1,
// attn.c_attn, attn.c_proj, ln_2 and either mlp.c_fc / mlp.c_proj (dense) or moe.router,
// moe.noise, moe.experts.*, moe.shared.* (MoE), then ln_f. The LM head reuses wte (tied weights).
// Gradients and the AdamW moments use the same layout.

// One MoE layer's weights (or their gradients), in the layout of model_parameter_table.
template <typename T>
struct RefMoeParams {
    std::vector<T> router;         // (E, C)      W_r
    std::vector<T> noise;          // (E, C)      W_n, the noise scale projection
    std::vector<T> fc_w, fc_b;     // (E, F, C), (E, F)     each routed expert's first linear
    std::vector<T> proj_w, proj_b; // (E, C, F), (E, C)     and its second
    std::vector<T> shared_fc_w, shared_fc_b;      // (S, Fs, C), (S, Fs)
    std::vector<T> shared_proj_w, shared_proj_b;  // (S, C, Fs), (S, C)
    std::vector<T> router_bias;    // (E) --bias-rate's selection bias b, or empty (off). Not trained: no
                                   // gradient, so not one of the tensors for_each visits; ref_moe_bias_update moves it
    RefMoeParams() = default;
    explicit RefMoeParams(const ModelConfig& cfg) {  // all zero
        const size_t C = cfg.dim, E = cfg.experts, F = cfg.expert_hidden, S = cfg.shared_experts,
                     Fs = cfg.shared_hidden;
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
    // fn(short name, vector&) over the ten tensors, in the order above
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

// What one MoE forward pass decided and computed, for the backward pass and for the tests.
template <typename T>
struct RefMoeState {
    std::vector<T> router_logits;  // (N, E)  r = u W_r^T
    std::vector<T> noise_logits;   // (N, E)  u W_n^T (computed only when noise applies)
    std::vector<T> noise_eps;      // (N, E)  the standard normal draws: set by the caller before the forward
    std::vector<T> probs;          // (N, E)  p = softmax(h)
    std::vector<T> gates;          // (N, K)  g per choice
    std::vector<T> lse;            // (N)     logsumexp of the clean logits r (for the z-loss)
    std::vector<int> topk_idx;     // (N, K)  the expert of each choice
    std::vector<int> kept;         // (N, K)  1: the choice got a slot
    std::vector<int> slot;         // (N, K)  its row in the expert's buffer, -1 if dropped
    std::vector<int> slot_choice;  // (E, R)  the choice holding each buffer row, -1 if none
    std::vector<int> routed;       // (E)     choices per expert before capacity
    std::vector<int> kept_count;   // (E)     choices per expert after capacity (and rerouting)
    std::vector<int> reroute_placed;  // (E-K, E) --overflow reroute: choices each expert took per round (else empty)
    std::vector<T> ec_gates;       // (E, R)  --routing expert: the gate p_t[e] of each buffer row (else empty)
    std::vector<int> ec_slot;      // (N, E)  --routing expert: row of token t in expert e's buffer, -1: not taken
    int noise_applied = 0;         // 1: this pass added noise (training with cfg.router_noise)
    T aux = T(0), z = T(0);        // the layer's load-balance and z losses, before their coefficients
    std::vector<T> norm_probs;     // (N, E)  pn = s / sum_i s (--gate sigmoid; = probs with softmax)
    T entropy = T(0);              // the layer's router entropy H = mean_t H(pn_t) (the --entropy-coef bonus)
    explicit RefMoeState(const ModelConfig& cfg, int N)
        : router_logits((size_t)N * cfg.experts), noise_logits((size_t)N * cfg.experts),
          noise_eps((size_t)N * cfg.experts), probs((size_t)N * cfg.experts), gates((size_t)N * cfg.top_k), lse(N),
          topk_idx((size_t)N * cfg.top_k), kept((size_t)N * cfg.top_k), slot((size_t)N * cfg.top_k),
          slot_choice((size_t)cfg.experts * expert_buffer_rows(cfg, N)), routed(cfg.experts),
          kept_count(cfg.experts),
          reroute_placed(cfg.reroute() ? (size_t)(cfg.experts - cfg.top_k) * cfg.experts : 0),
          ec_gates(cfg.expert_choice() ? (size_t)cfg.experts * expert_buffer_rows(cfg, N) : 0),
          ec_slot(cfg.expert_choice() ? (size_t)N * cfg.experts : 0) {
        norm_probs.resize((size_t)N * cfg.experts);
    }
};

// ================================================================================================
// 2. Forward, layer by layer

// Embedding (docs/model.md, 2): out[b,t,:] = wte[idx[b,t],:] + wpe[t,:]
template <typename T>
void ref_encoder_forward(T* out, const int* idx, const T* wte, const T* wpe, int B, int Tn, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int c = 0; c < C; c++)
                out[((long)b * Tn + t) * C + c] = wte[(long)idx[b * Tn + t] * C + c] + wpe[(long)t * C + c];
}

// LayerNorm (3), per token over its C values, biased variance:
//   y = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + 1e-5);   mean and rstd are kept for the backward
template <typename T>
void ref_layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
    for (int n = 0; n < N; n++) {
        const T* x = inp + (long)n * C;
        double m = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double var = 0.0;
        for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
        var /= C;
        const double s = 1.0 / std::sqrt(var + 1e-5);
        for (int c = 0; c < C; c++) out[(long)n * C + c] = (T)((x[c] - m) * s * weight[c] + bias[c]);
        mean[n] = (T)m;
        rstd[n] = (T)s;
    }
}

// Linear map: out[n,o] = sum_i inp[n,i] * weight[o,i] + bias[o]   (bias may be nullptr)
template <typename T>
void ref_matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double acc = bias != nullptr ? (double)bias[o] : 0.0;
            for (int i = 0; i < IC; i++) acc += (double)inp[(long)n * IC + i] * weight[(long)o * IC + i];
            out[(long)n * OC + o] = (T)acc;
        }
}

// Causal self-attention (4), per sequence b and head h (q, k, v = the three C-wide thirds of a
// qkv row; head h = their columns h*hs .. h*hs+hs-1):
//   att[t,j] = softmax over j <= t of (q_t . k_j / sqrt(hs)), 0 for j > t
//   out[b,t,h*hs+d] = sum_j att[t,j] v_j[d]
// qkvr receives q, k, v permuted to (3, B, NH, Tn, hs), the layout the kernel keeps for the backward.
template <typename T>
void ref_attention_forward(T* out, T* qkvr, T* att, const T* qkv, int B, int Tn, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    auto Q = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 0 * C + h * hs + d]; };
    auto K = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 1 * C + h * hs + d]; };
    auto Vv = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 2 * C + h * hs + d]; };
    for (int which = 0; which < 3; which++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < hs; d++)
                        qkvr[((((long)which * B + b) * NH + h) * Tn + t) * hs + d] =
                            qkv[((long)b * Tn + t) * 3 * C + which * C + h * hs + d];
    std::vector<double> logits(Tn);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++) {
                T* a = att + (((long)b * NH + h) * Tn + t) * Tn;
                double maxval = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++) dot += (double)Q(b, t, h, d) * K(b, j, h, d);
                    logits[j] = dot * scale;
                    maxval = std::max(maxval, logits[j]);
                }
                double sum = 0.0;
                for (int j = 0; j <= t; j++) sum += std::exp(logits[j] - maxval);
                for (int j = 0; j < Tn; j++) a[j] = j <= t ? (T)(std::exp(logits[j] - maxval) / sum) : (T)0;
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int j = 0; j <= t; j++) acc += (double)a[j] * Vv(b, j, h, d);
                    out[((long)b * Tn + t) * C + h * hs + d] = (T)acc;
                }
            }
}

// GELU, tanh form (5), and its derivative, evaluated in the scalar type U:
//   gelu(z)  = 0.5 z (1 + tanh(s (z + 0.044715 z^3))),   s = sqrt(2/pi)
//   gelu'(z) = 0.5 (1 + th) + 0.5 z (1 - th^2) s (1 + 3 * 0.044715 z^2),   th = tanh(s (z + 0.044715 z^3))
template <typename U>
U ref_gelu(U z) {
    const U s = U(0.7978845608028654);
    return U(0.5) * z * (U(1) + std::tanh(s * (z + U(0.044715) * z * z * z)));
}
template <typename U>
U ref_gelu_grad(U z) {
    const U s = U(0.7978845608028654);
    const U th = std::tanh(s * (z + U(0.044715) * z * z * z));
    return U(0.5) * (U(1) + th) + U(0.5) * z * (U(1) - th * th) * s * (U(1) + U(3) * U(0.044715) * z * z);
}

// The dense FFN's GELU over n values, evaluated in double and rounded to T (the routed experts of
// section 3 evaluate it in T, as their kernel does).
template <typename T>
void ref_gelu_forward(T* out, const T* inp, long n) {
    for (long i = 0; i < n; i++) out[i] = (T)ref_gelu((double)inp[i]);
}

// Residual connection (6): out = a + b
template <typename T>
void ref_residual_forward(T* out, const T* a, const T* b, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// ================================================================================================
// 3. The MoE layer, token by token (docs/model.md, 8-20)
//
// The layer maps u = LN(x; ln_2) (N, C) to out (N, C). It is written the plain way: every token
// picks its experts, capacity decides which picks are kept, and each kept pick runs its expert's
// FFN on the token directly, with no expert buffers. The kernels do the same work expert by expert
// through buffers of R rows; the tests check that machinery against this.

template <typename T>
T ref_softplus(T x) { return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x))); }
template <typename T>
T ref_sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// Routing of one token (9-13), from its router logits r (E) and, with noise, its noise logits
// nl = u W_n^T (E) and draws eps (E):
//   h = r + eps * softplus(nl)   (with noise; otherwise h = r)
//   p = softmax(h)                                                      -> probs (E)
//   the K largest p, best first; of equal values the lower index first  -> topk (K)
//     (with a selection bias b, --bias-rate: the K largest p + b instead, same tie rule)
//   gates: p of the chosen, divided by their sum when K > 1             -> gates (K)
//     (always the unbiased p, over the experts so chosen)
//   lse = logsumexp(r), of the clean logits                             -> *lse
// With sigmoid_gate (--gate sigmoid), p = sigmoid(h) elementwise (the scores s) takes softmax's
// place in every line above; norm_probs (if given) receives pn = p / sum_i p (= p with softmax).
// All in T, in the order the route kernel uses.
template <typename T>
void ref_moe_route_token(T* probs, T* gates, int* topk, T* lse, const T* r, const T* nl, const T* eps, int E, int K,
                         int use_noise, const T* bias = nullptr, int sigmoid_gate = 0, T* norm_probs = nullptr) {
    std::vector<T> p(E);
    T hmax = -INFINITY, rmax = -INFINITY;
    for (int i = 0; i < E; i++) {
        T h = r[i];
        rmax = std::max(rmax, h);
        if (use_noise) h += eps[i] * ref_softplus(nl[i]);
        p[i] = h;
        hmax = std::max(hmax, h);
    }
    T sum = 0, rsum = 0;
    for (int i = 0; i < E; i++) {
        if (!sigmoid_gate) {
            p[i] = std::exp(p[i] - hmax);
            sum += p[i];
        }
        rsum += std::exp(r[i] - rmax);
    }
    for (int i = 0; i < E; i++) {
        p[i] = sigmoid_gate ? ref_sigmoid(p[i]) : p[i] / sum;
        probs[i] = p[i];
    }
    if (norm_probs) {
        T score_sum = 0;
        for (int i = 0; i < E; i++) score_sum += p[i];
        for (int i = 0; i < E; i++) norm_probs[i] = sigmoid_gate ? p[i] / score_sum : p[i];
    }
    *lse = rmax + std::log(rsum);
    // the K largest selection scores (p, or p + b), highest first; among equal values the lower index first
    std::vector<T> score(E);
    for (int i = 0; i < E; i++) score[i] = bias ? p[i] + bias[i] : p[i];
    std::vector<int> order(E);
    for (int i = 0; i < E; i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
    T chosen = 0;
    for (int j = 0; j < K; j++) {
        topk[j] = order[j];
        chosen += p[order[j]];
    }
    for (int j = 0; j < K; j++) gates[j] = K > 1 ? p[order[j]] / chosen : p[order[j]];
}

// The same for all N tokens: logits, noise_logits, eps, probs (N, E); gates, topk_idx (N, K); lse (N).
template <typename T>
void ref_moe_route(T* probs, T* gates, int* topk_idx, T* lse, const T* logits, const T* noise_logits, const T* eps,
                   int N, int E, int K, int use_noise, const T* bias = nullptr, int sigmoid_gate = 0,
                   T* norm_probs = nullptr) {
    for (int t = 0; t < N; t++) {
        const long o = (long)t * E;
        ref_moe_route_token(probs + o, gates + (long)t * K, topk_idx + (long)t * K, lse + t, logits + o,
                            noise_logits + o, eps + o, E, K, use_noise, bias, sigmoid_gate,
                            norm_probs ? norm_probs + o : nullptr);
    }
}

// Router entropy (--entropy-coef), before its coefficient: H = mean_t -sum_i pn_t[i] ln pn_t[i]
// (natural log, 0 ln 0 = 0), on the normalised scores pn (N, E) of the step (with noise where it applied).
template <typename T>
void ref_moe_entropy(T* entropy, const T* norm_probs, int N, int E) {
    double h = 0.0;
    for (long i = 0; i < (long)N * E; i++) {
        const double x = norm_probs[i];
        if (x > 0.0) h -= x * std::log(x);
    }
    *entropy = (T)(N > 0 ? h / N : 0.0);
}

// Capacity (14): the one step that looks at all tokens at once. Slots are handed out in priority
// order: all first choices in token order, then all second choices, ...; expert e's k-th incoming
// choice gets slot k and is kept while k < cap. Fills kept, slot (N, K), slot_choice (E, R: -1 for
// rows nobody holds), routed and kept_count (E).
// With G token groups (--groups): the same inside each group g (tokens g*N/G .. (g+1)*N/G - 1),
// with cap slots per expert and group; group g's slots of expert e are the rows g*Rg .. (g+1)*Rg - 1
// of e's buffer (Rg = R/G = min(cap, N/G)), slot k of group g being row g*Rg + k. group_fill (E, G),
// if given, receives the slots used per (expert, group).
inline void ref_moe_capacity(int* kept, int* slot, int* slot_choice, int* routed, int* kept_count, const int* topk_idx,
                             int N, int K, int cap, int R, int E, int G = 1, int* group_fill = nullptr) {
    const int Ng = N / G, Rg = R / G;
    std::vector<int> used((size_t)E * G, 0);  // (E, G)
    for (int e = 0; e < E; e++) routed[e] = 0;
    for (int i = 0; i < E * R; i++) slot_choice[i] = -1;
    for (int g = 0; g < G; g++)
        for (int j = 0; j < K; j++)
            for (int t = g * Ng; t < (g + 1) * Ng; t++) {
                const int c = t * K + j, e = topk_idx[c];
                int& u = used[(size_t)e * G + g];
                routed[e]++;
                if (u < cap) {
                    kept[c] = 1;
                    slot[c] = g * Rg + u;
                    slot_choice[e * R + g * Rg + u] = c;
                    u++;
                } else {
                    kept[c] = 0;
                    slot[c] = -1;
                }
            }
    for (int e = 0; e < E; e++) {
        kept_count[e] = 0;
        for (int g = 0; g < G; g++) kept_count[e] += used[(size_t)e * G + g];
    }
    if (group_fill)
        for (size_t i = 0; i < used.size(); i++) group_fill[i] = used[i];
}

// Rerouting (--overflow reroute), after capacity, for the choices it dropped. rank_t = token t's
// experts by selection score (p, or p + b with a bias: one float add, as the kernel), highest
// first, ties to the lower index. Rounds r = 1 .. E-K: every token with an unplaced choice proposes
// rank_t[K + r - 1] for its unplaced choice of lowest rank j (proposals fixed at the round's start:
// a token proposes once per round); expert e takes the proposals of group g in token order while
// it has slots there (continuing after capacity's: group_fill). A placed choice names its new
// expert (topk_idx) and gets the next slot; one unplaced after the last round stays dropped with
// its original expert. Then every token's gates are step 5 over its final K experts, in T in the
// kernel's order. routed (the original choices, for the aux loss) is not touched; kept_count grows.
template <typename T>
void ref_moe_reroute(int* topk_idx, int* kept, int* slot, int* slot_choice, int* kept_count, int* group_fill,
                     int* placed_per_round /* (E-K, E) */, T* gates, const T* probs, const T* bias, int N, int E,
                     int K, int cap, int R, int G) {
    const int Ng = N / G, Rg = R / G;
    std::vector<int> rank((size_t)N * E);
    std::vector<T> score(E);
    for (int t = 0; t < N; t++) {
        const T* p = probs + (size_t)t * E;
        for (int i = 0; i < E; i++) score[i] = bias ? p[i] + bias[i] : p[i];
        int* rk = &rank[(size_t)t * E];
        for (int i = 0; i < E; i++) rk[i] = i;
        std::stable_sort(rk, rk + E, [&](int a, int b) { return score[a] > score[b]; });
    }
    for (int r = 1; r <= E - K; r++) {
        int* placed = placed_per_round + (size_t)(r - 1) * E;
        for (int e = 0; e < E; e++) placed[e] = 0;
        for (int t = 0; t < N; t++) {
            int j = 0;
            while (j < K && kept[t * K + j]) j++;
            if (j == K) continue;  // nothing unplaced: no proposal
            const int e = rank[(size_t)t * E + K + r - 1], g = t / Ng, c = t * K + j;
            int& fill = group_fill[(size_t)e * G + g];
            if (fill >= cap) continue;  // no room: the proposal is refused
            kept[c] = 1;
            slot[c] = g * Rg + fill;
            slot_choice[e * R + g * Rg + fill] = c;
            topk_idx[c] = e;
            fill++;
            kept_count[e]++;
            placed[e]++;
        }
    }
    for (int t = 0; t < N; t++) {
        const T* p = probs + (size_t)t * E;
        T chosen = 0;
        for (int j = 0; j < K; j++) chosen += p[topk_idx[t * K + j]];
        for (int j = 0; j < K; j++) {
            const T pj = p[topk_idx[t * K + j]];
            gates[t * K + j] = K > 1 ? pj / chosen : pj;
        }
    }
}

// One FFN on one token (16, 17): hidden pre-activation a (F), output y (C):
//   a = W1 u + b1,   y = W2 gelu(a) + b2        W1 (F, C), b1 (F), W2 (C, F), b2 (C); gelu in T
template <typename T>
void ref_moe_ffn_token(T* a, T* y, const T* u, const T* w1, const T* b1, const T* w2, const T* b2, int C, int F) {
    for (int f = 0; f < F; f++) {
        double acc = b1[f];
        for (int i = 0; i < C; i++) acc += (double)w1[(long)f * C + i] * u[i];
        a[f] = (T)acc;
    }
    for (int i = 0; i < C; i++) {
        double acc = b2[i];
        for (int f = 0; f < F; f++) acc += (double)w2[(long)i * F + f] * ref_gelu(a[f]);
        y[i] = (T)acc;
    }
}

// The layer's two losses (19, 20), before their coefficients:
//   aux = E * sum_i f_i P_i,   f_i = routed[i] / (N K) (before capacity),   P_i = mean_t p_t[i]
//   z   = mean_t lse_t^2
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

// Expert choice (--routing expert), what follows the scores p (N, E) (softmax, or the sigmoid
// scores with --gate sigmoid): for every group g of N/G tokens and every expert e, sort the
// group's tokens by p_t[e], highest first, equal scores to the lower token index, and let e take
// the first cap (rows g*cap .. g*cap + cap - 1 of its buffer, in that order). Fills slot_choice
// (the token of each row), ec_gates (its p_t[e]), ec_slot (N, E), routed = kept_count = G*cap.
template <typename T>
void ref_moe_expert_choice_select(RefMoeState<T>& st, const ModelConfig& cfg, int N) {
    const int E = cfg.experts, G = cfg.groups, Ng = N / G, cap = expert_capacity(cfg, N),
              R = expert_buffer_rows(cfg, N);
    std::fill(st.ec_slot.begin(), st.ec_slot.end(), -1);
    std::vector<int> order(Ng);
    for (int e = 0; e < E; e++) {
        for (int g = 0; g < G; g++) {
            for (int i = 0; i < Ng; i++) order[i] = g * Ng + i;
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
                return st.probs[(size_t)a * E + e] > st.probs[(size_t)b * E + e];
            });
            for (int k = 0; k < cap; k++) {
                const int t = order[k], row = g * cap + k;
                st.slot_choice[(size_t)e * R + row] = t;
                st.ec_gates[(size_t)e * R + row] = st.probs[(size_t)t * E + e];
                st.ec_slot[(size_t)t * E + e] = row;
            }
        }
        st.routed[e] = st.kept_count[e] = G * cap;
    }
}

// Expert choice, the rest of the forward (after the router logits and scores):
//   out_t = sum_s shared_s(u_t) + sum over the experts e that took t, in order, of p_t[e] FFN_e(u_t)
//   aux = 0 (every expert holds exactly cap tokens of each group); z (and the entropy) as in token choice
template <typename T>
void ref_moe_expert_choice_forward(T* out, RefMoeState<T>& st, const RefMoeParams<T>& w, const T* u,
                                   const ModelConfig& cfg, int N) {
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden;
    ref_moe_expert_choice_select(st, cfg, N);
    std::vector<T> a(std::max(F, Fs)), y(C);
    for (int t = 0; t < N; t++) {
        const T* ut = u + (long)t * C;
        std::vector<double> acc(C, 0.0);
        for (int s = 0; s < S; s++) {
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.shared_fc_w[(size_t)s * Fs * C], &w.shared_fc_b[(size_t)s * Fs],
                              &w.shared_proj_w[(size_t)s * C * Fs], &w.shared_proj_b[(size_t)s * C], C, Fs);
            for (int i = 0; i < C; i++) acc[i] += y[i];
        }
        for (int e = 0; e < E; e++) {
            if (st.ec_slot[(size_t)t * E + e] < 0) continue;
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.fc_w[(size_t)e * F * C], &w.fc_b[(size_t)e * F],
                              &w.proj_w[(size_t)e * C * F], &w.proj_b[(size_t)e * C], C, F);
            for (int i = 0; i < C; i++) acc[i] += (double)st.probs[(size_t)t * E + e] * y[i];
        }
        for (int i = 0; i < C; i++) out[(long)t * C + i] = (T)acc[i];
    }
    ref_moe_aux_z(&st.aux, &st.z, st.norm_probs.data(), st.lse.data(), st.routed.data(), N, E, K);
    st.aux = T(0);
    ref_moe_entropy(&st.entropy, st.norm_probs.data(), N, E);
}

// The MoE layer's forward on u (N, C), N tokens: out (N, C), and st records the routing.
// st.noise_eps must hold the draws when noise applies (training with cfg.router_noise).
//   1. router logits r = u W_r^T (and u W_n^T with noise), then every token's routing
//   2. capacity: which choices keep a slot
//   3. out_t = sum_s shared_s(u_t) + sum_{kept j} g_tj FFN_{e_tj}(u_t)   (18: shared first, then j = 0..K-1)
//   4. aux and z
template <typename T>
void ref_moe_forward(T* out, RefMoeState<T>& st, const RefMoeParams<T>& w, const T* u, const ModelConfig& cfg, int N,
                     bool training) {
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden;
    const int use_noise = cfg.router_noise && training;
    st.noise_applied = use_noise;
    ref_matmul_forward(st.router_logits.data(), u, w.router.data(), (const T*)nullptr, N, C, E);
    if (use_noise) ref_matmul_forward(st.noise_logits.data(), u, w.noise.data(), (const T*)nullptr, N, C, E);
    ref_moe_route(st.probs.data(), st.gates.data(), st.topk_idx.data(), st.lse.data(), st.router_logits.data(),
                  st.noise_logits.data(), st.noise_eps.data(), N, E, K, use_noise,
                  w.router_bias.empty() ? (const T*)nullptr : w.router_bias.data(), cfg.sigmoid_gate() ? 1 : 0,
                  st.norm_probs.data());
    if (cfg.expert_choice()) {  // the experts pick their tokens (ref_moe_expert_choice_forward)
        ref_moe_expert_choice_forward(out, st, w, u, cfg, N);
        return;
    }
    const int G = token_groups(cfg, N);
    std::vector<int> group_fill((size_t)E * G);
    ref_moe_capacity(st.kept.data(), st.slot.data(), st.slot_choice.data(), st.routed.data(), st.kept_count.data(),
                     st.topk_idx.data(), N, K, expert_capacity(cfg, N), expert_buffer_rows(cfg, N), E, G,
                     group_fill.data());
    if (cfg.reroute())
        ref_moe_reroute(st.topk_idx.data(), st.kept.data(), st.slot.data(), st.slot_choice.data(),
                        st.kept_count.data(), group_fill.data(), st.reroute_placed.data(), st.gates.data(),
                        st.probs.data(), w.router_bias.empty() ? (const T*)nullptr : w.router_bias.data(), N, E, K,
                        expert_capacity(cfg, N), expert_buffer_rows(cfg, N), G);
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
            if (!st.kept[c]) continue;  // a dropped choice adds nothing
            const int e = st.topk_idx[c];
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.fc_w[(size_t)e * F * C], &w.fc_b[(size_t)e * F],
                              &w.proj_w[(size_t)e * C * F], &w.proj_b[(size_t)e * C], C, F);
            for (int i = 0; i < C; i++) acc[i] += (double)st.gates[c] * y[i];
        }
        for (int i = 0; i < C; i++) out[(long)t * C + i] = (T)acc[i];
    }
    ref_moe_aux_z(&st.aux, &st.z, st.norm_probs.data(), st.lse.data(), st.routed.data(), N, E, K);  // P on pn
    ref_moe_entropy(&st.entropy, st.norm_probs.data(), N, E);
}

// Aux-loss-free balancing (--bias-rate gamma): after a training step's optimizer update, every
// expert's selection bias moves by gamma towards balance:
//   b_i += gamma * sign(N*K/E - routed_i),   sign(0) = 0,
// routed_i the step's choices of expert i before capacity. N*K/E need not be an integer, so the
// sign is taken in integers, of N*K - E*routed_i; the step is one float add, as in the kernel.
template <typename T>
void ref_moe_bias_update(T* bias, const int* routed, int N, int E, int K, T gamma) {
    for (int i = 0; i < E; i++) {
        const long long target_minus_load = (long long)N * K - (long long)E * routed[i];
        const int sign = target_minus_load > 0 ? 1 : target_minus_load < 0 ? -1 : 0;
        if (sign != 0) bias[i] = bias[i] + (T)sign * gamma;
    }
}

// ================================================================================================
// 4. The loss (docs/model.md, 7 and 21)
//
// loss = mean_n CE_n + aux_coef * sum_layers aux + z_coef * sum_layers z - entropy_coef * sum_layers H

// Cross-entropy of each token, fused with its gradient (7):
//   losses[n] = -log softmax(logits[n,:])[target[n]]
//   dlogits[n,j] = (softmax(logits[n,:])[j] - [j == target[n]]) * dloss   (skipped if dlogits is nullptr)
// With dloss = 1/N, dlogits is the gradient of the mean.
template <typename T>
void ref_crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int* targets, int N, int V,
                                       T dloss) {
    for (int n = 0; n < N; n++) {
        const T* l = logits + (long)n * V;
        double maxval = -INFINITY;
        for (int j = 0; j < V; j++) maxval = std::max(maxval, (double)l[j]);
        double sum = 0.0;
        for (int j = 0; j < V; j++) sum += std::exp((double)l[j] - maxval);
        losses[n] = (T)(std::log(sum) + maxval - l[targets[n]]);
        if (dlogits != nullptr)
            for (int j = 0; j < V; j++) {
                const double p = std::exp((double)l[j] - maxval) / sum;
                dlogits[(long)n * V + j] = (T)((p - (j == targets[n] ? 1.0 : 0.0)) * dloss);
            }
    }
}

// out = mean of x (0 for n = 0)
template <typename T>
void ref_mean_forward(T* out, const T* x, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i];
    out[0] = (T)(n > 0 ? sum / n : 0.0);
}

// The MoE layer alone as a loss, for finite-difference tests of ref_moe_backward: for a fixed
// output gradient dout, loss = dout . out + aux_coef aux + z_coef z - entropy_coef H, whose gradient
// ref_moe_backward computes.
template <typename T>
double ref_moe_loss(const T* out, const T* dout, const RefMoeState<T>& st, const ModelConfig& cfg, int N) {
    double l = 0.0;
    for (long i = 0; i < (long)N * cfg.dim; i++) l += (double)dout[i] * out[i];
    return l + (double)cfg.aux_coef * st.aux + (double)cfg.z_coef * st.z - (double)cfg.entropy_coef * st.entropy;
}

// ================================================================================================
// 5. Backward, in reverse order of the forward
//
// The cross-entropy's gradient came with the loss (section 4); from there the gradient flows back
// through the LM head, ln_f, each block from the last to the first, and the embedding.

// Linear map backward (the LM head and every linear of the blocks):
//   dinp = dout W (overwritten; skipped if nullptr);  dweight += dout^T inp;  dbias += column sums of dout
template <typename T>
void ref_bias_backward(T* dbias, const T* dout, int N, int OC) {
    for (int o = 0; o < OC; o++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++) acc += dout[(long)n * OC + o];
        dbias[o] += (T)acc;
    }
}

template <typename T>
void ref_matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                         int N, int IC, int OC) {
    if (dinp != nullptr)
        for (int n = 0; n < N; n++)
            for (int i = 0; i < IC; i++) {
                double acc = 0.0;
                for (int o = 0; o < OC; o++) acc += (double)dout[(long)n * OC + o] * weight[(long)o * IC + i];
                dinp[(long)n * IC + i] = (T)acc;
            }
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < IC; i++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += (double)dout[(long)n * OC + o] * inp[(long)n * IC + i];
            dweight[(long)o * IC + i] += (T)acc;
        }
    if (dbias != nullptr) ref_bias_backward(dbias, dout, N, OC);
}

// LayerNorm backward (3), with norm = (x - mean) * rstd and dnorm = w * dy:
//   dx += rstd * (dnorm - mean_c(dnorm) - norm * mean_c(dnorm * norm));  dw += sum_n dy * norm;  db += sum_n dy
template <typename T>
void ref_layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                            const T* mean, const T* rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const T* x = inp + (long)n * C;
        const T* dy = dout + (long)n * C;
        double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const double norm = ((double)x[c] - mean[n]) * rstd[n];
            dnorm_mean += (double)weight[c] * dy[c];
            dnorm_norm_mean += (double)weight[c] * dy[c] * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int c = 0; c < C; c++) {
            const double norm = ((double)x[c] - mean[n]) * rstd[n];
            const double dnorm = (double)weight[c] * dy[c];
            dinp[(long)n * C + c] += (T)(rstd[n] * (dnorm - dnorm_mean - norm * dnorm_norm_mean));
        }
    }
    for (int c = 0; c < C; c++) {
        double dw = 0.0, db = 0.0;
        for (int n = 0; n < N; n++) {
            const double dy = dout[(long)n * C + c];
            dw += dy * ((double)inp[(long)n * C + c] - mean[n]) * rstd[n];
            db += dy;
        }
        dweight[c] += (T)dw;
        dbias[c] += (T)db;
    }
}

// The dense FFN's GELU backward: dinp = gelu'(inp) * dout, evaluated in double
template <typename T>
void ref_gelu_backward(T* dinp, const T* inp, const T* dout, long n) {
    for (long i = 0; i < n; i++) dinp[i] = (T)(ref_gelu_grad((double)inp[i]) * dout[i]);
}

// ---------------------------------------------------------------- the MoE layer's backward

// One FFN on one token, backward, for its output gradient dy (C), with a = its saved pre-activation:
//   dW2 += dy gelu(a)^T,  db2 += dy,  da = (W2^T dy) * gelu'(a),  dW1 += da u^T,  db1 += da,  du += W1^T da
template <typename T>
void ref_moe_ffn_token_backward(T* du, T* dw1, T* db1, T* dw2, T* db2, const T* dy, const T* u, const T* a,
                                const T* w1, const T* w2, int C, int F) {
    for (int f = 0; f < F; f++) {
        const T h = ref_gelu(a[f]);
        double dh = 0.0;
        for (int i = 0; i < C; i++) {
            dh += (double)w2[(long)i * F + f] * dy[i];
            dw2[(long)i * F + f] += dy[i] * h;
        }
        const T da = (T)(dh * ref_gelu_grad(a[f]));
        db1[f] += da;
        for (int i = 0; i < C; i++) {
            dw1[(long)f * C + i] += da * u[i];
            du[i] += da * w1[(long)f * C + i];
        }
    }
    for (int i = 0; i < C; i++) db2[i] += dy[i];
}

// One token's router backward: from the gradients dg (K) of its gates (0 for dropped choices) to
// the gradients of its router logits dr (E) and, with noise, of its noise logits dnl (E):
//   gates (13):     K > 1: dp[e_j] += (dg_j - sum_j' dg_j' g_j') / D,  D = sum_j p[e_j];  K = 1: dp[e_0] += dg_0
//   aux loss (19):  dp[i] += aux_coef * E * f_i / N   (f_i = routed[i] / (N K), a constant)
//   softmax (11):   dh = p * (dp - sum_i p_i dp_i)
// With the entropy bonus, dpn[i] += entropy_coef (ln pn_i + 1) / N (the gradient of -entropy_coef H).
// With sigmoid_gate, p holds the scores s: the aux and entropy gradients are on pn = s / S
// (S = sum_i s_i), ds = (dpn - sum_i pn_i dpn_i) / S, then the gates' gradient is added to ds, and
// dh = ds * s (1 - s) replaces the softmax backward.
//   z-loss (20):    dr = dh + z_coef * 2 lse / N * softmax(r)   (on the clean logits)
//   noise (10):     dnl = dh * eps * sigmoid(nl)
template <typename T>
void ref_moe_router_token_backward(T* dr, T* dnl, const T* dg, const T* p, const T* gates, const int* topk,
                                   const T* r, T lse, const T* nl, const T* eps, const int* routed, int N, int E, int K,
                                   T aux_coef, T z_coef, int use_noise, int sigmoid_gate = 0,
                                   T entropy_coef = T(0)) {
    std::vector<double> dp(E);
    for (int i = 0; i < E; i++) dp[i] = (double)aux_coef * E * ((double)routed[i] / ((double)N * K)) / N;
    if (sigmoid_gate || entropy_coef != T(0)) {  // dp is dpn so far
        std::vector<double> pn(E);
        double score_sum = 0.0;
        for (int i = 0; i < E; i++) score_sum += p[i];
        for (int i = 0; i < E; i++) pn[i] = sigmoid_gate ? p[i] / score_sum : (double)p[i];
        if (entropy_coef != T(0))
            for (int i = 0; i < E; i++)
                if (pn[i] > 0.0) dp[i] += (double)entropy_coef * (std::log(pn[i]) + 1.0) / N;
        if (sigmoid_gate) {
            double pdp = 0.0;
            for (int i = 0; i < E; i++) pdp += pn[i] * dp[i];
            for (int i = 0; i < E; i++) dp[i] = (dp[i] - pdp) / score_sum;
        }
    }
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
    if (!sigmoid_gate)
        for (int i = 0; i < E; i++) pdp += p[i] * dp[i];
    for (int i = 0; i < E; i++) {
        const double dh = sigmoid_gate ? dp[i] * ((double)p[i] * (1.0 - (double)p[i])) : p[i] * (dp[i] - pdp);
        dr[i] = (T)(dh + (double)z_coef * 2.0 * lse / N * std::exp((double)r[i] - lse));
        if (use_noise) dnl[i] = (T)(dh * eps[i] * ref_sigmoid((double)nl[i]));
    }
}

// Expert choice (--routing expert), one token's router backward: dg (E) holds dout_t . FFN_e(u_t)
// for every expert e that took t (0 for the others); the gate is the raw score, so dp[e] = dg[e].
// No aux gradient (aux is 0 by definition). The entropy bonus, the score function (softmax or
// sigmoid), the z-loss and the noise path are as in ref_moe_router_token_backward.
template <typename T>
void ref_moe_expert_choice_token_backward(T* dr, T* dnl, const T* dg, const T* p, const T* r, T lse, const T* nl,
                                          const T* eps, int N, int E, T z_coef, int use_noise, int sigmoid_gate,
                                          T entropy_coef) {
    std::vector<double> dp(E, 0.0);
    if (entropy_coef != T(0)) {  // dp is dpn so far
        std::vector<double> pn(E);
        double score_sum = 0.0;
        for (int i = 0; i < E; i++) score_sum += p[i];
        for (int i = 0; i < E; i++) pn[i] = sigmoid_gate ? p[i] / score_sum : (double)p[i];
        for (int i = 0; i < E; i++)
            if (pn[i] > 0.0) dp[i] += (double)entropy_coef * (std::log(pn[i]) + 1.0) / N;
        if (sigmoid_gate) {
            double pdp = 0.0;
            for (int i = 0; i < E; i++) pdp += pn[i] * dp[i];
            for (int i = 0; i < E; i++) dp[i] = (dp[i] - pdp) / score_sum;
        }
    }
    for (int i = 0; i < E; i++) dp[i] += (double)dg[i];
    double pdp = 0.0;
    if (!sigmoid_gate)
        for (int i = 0; i < E; i++) pdp += p[i] * dp[i];
    for (int i = 0; i < E; i++) {
        const double dh = sigmoid_gate ? dp[i] * ((double)p[i] * (1.0 - (double)p[i])) : p[i] * (dp[i] - pdp);
        dr[i] = (T)(dh + (double)z_coef * 2.0 * lse / N * std::exp((double)r[i] - lse));
        if (use_noise) dnl[i] = (T)(dh * eps[i] * ref_sigmoid((double)nl[i]));
    }
}

// Expert choice, the layer's backward (as ref_moe_backward, for fixed selections), token by token:
//   shared experts: their output gradient is dout_t
//   each expert e that took t: dg_e = dout_t . FFN_e(u_t), and e's output gradient is p_t[e] dout_t
//   the router: dg -> dr, dnl (ref_moe_expert_choice_token_backward), then the router GEMMs
template <typename T>
void ref_moe_expert_choice_backward(T* du, RefMoeParams<T>& grads, const T* dout, const RefMoeState<T>& st,
                                    const RefMoeParams<T>& w, const T* u, const ModelConfig& cfg, int N) {
    const int C = cfg.dim, E = cfg.experts, F = cfg.expert_hidden, S = cfg.shared_experts, Fs = cfg.shared_hidden;
    const int use_noise = st.noise_applied;
    std::vector<T> a(std::max(F, Fs)), y(C), dy(C), dg(E), dr(E), dnl(E);
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
        const long o = (long)t * E;
        for (int e = 0; e < E; e++) {
            dg[e] = T(0);
            if (st.ec_slot[(size_t)o + e] < 0) continue;  // e did not take t
            const size_t o1 = (size_t)e * F * C, ob = (size_t)e * F, o2 = (size_t)e * C * F, oc = (size_t)e * C;
            ref_moe_ffn_token(a.data(), y.data(), ut, &w.fc_w[o1], &w.fc_b[ob], &w.proj_w[o2], &w.proj_b[oc], C, F);
            const T gate = st.probs[(size_t)o + e];
            double g = 0.0;
            for (int i = 0; i < C; i++) {
                g += (double)dot[i] * y[i];
                dy[i] = gate * dot[i];
            }
            dg[e] = (T)g;
            ref_moe_ffn_token_backward(dut, &grads.fc_w[o1], &grads.fc_b[ob], &grads.proj_w[o2], &grads.proj_b[oc],
                                       dy.data(), ut, a.data(), &w.fc_w[o1], &w.proj_w[o2], C, F);
        }
        ref_moe_expert_choice_token_backward(dr.data(), dnl.data(), dg.data(), &st.probs[o], &st.router_logits[o],
                                             st.lse[t], &st.noise_logits[o], &st.noise_eps[o], N, E, (T)cfg.z_coef,
                                             use_noise, cfg.sigmoid_gate() ? 1 : 0, (T)cfg.entropy_coef);
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

// The MoE layer's backward for the output gradient dout (N, C), the routing st of its forward, the
// weights w and the input u: du (N, C) is overwritten, grads accumulate (+=). Differentiates
// dout . out + aux_coef aux + z_coef z - entropy_coef H for fixed routing (docs/model.md, 22). Token by token:
//   shared experts: their output gradient is dout_t
//   each kept choice: dg = dout_t . FFN_e(u_t) (18), and the expert's output gradient is g dout_t
//   the router: dg -> dr, dnl (ref_moe_router_token_backward), then du_t += dr W_r + dnl W_n,
//   dW_r += dr u_t^T, dW_n += dnl u_t^T
template <typename T>
void ref_moe_backward(T* du, RefMoeParams<T>& grads, const T* dout, const RefMoeState<T>& st,
                      const RefMoeParams<T>& w, const T* u, const ModelConfig& cfg, int N) {
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden;
    if (cfg.expert_choice()) {  // the experts picked their tokens
        ref_moe_expert_choice_backward(du, grads, dout, st, w, u, cfg, N);
        return;
    }
    const int use_noise = st.noise_applied;
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
                                      &st.noise_logits[o], &st.noise_eps[o], st.routed.data(), N, E, K,
                                      (T)cfg.aux_coef, (T)cfg.z_coef, use_noise,
                                      cfg.sigmoid_gate() ? 1 : 0, (T)cfg.entropy_coef);
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

// ---------------------------------------------------------------- residual, attention, embedding

// Residual backward: out = a + b passes dout to both branches unchanged; where a branch's gradient
// is already held, the other is added to it: acc += x.
template <typename T>
void ref_add_inplace(T* acc, const T* x, long n) {
    for (long i = 0; i < n; i++) acc[i] += x[i];
}

// Attention backward (4), per sequence and head, with dy = dout's head slice:
//   datt[t,j] = dy_t . v_j,   dv_j += sum_t att[t,j] dy_t
//   dlogit[t,j] = att[t,j] (datt[t,j] - sum_j' att[t,j'] datt[t,j'])   (softmax backward)
//   dq_t = scale sum_j dlogit[t,j] k_j,   dk_j = scale sum_t dlogit[t,j] q_t,   scale = 1/sqrt(hs)
// dqkv (B, Tn, 3C) is overwritten. (scratch stands for the kernel's work buffer: unused here.)
template <typename T>
void ref_attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkvr, const T* att, int B, int Tn, int C,
                            int NH) {
    (void)scratch;
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    auto R = [&](int which, int b, int h, int t, int d) {
        return (double)qkvr[((((long)which * B + b) * NH + h) * Tn + t) * hs + d];
    };
    auto D = [&](int which, int b, int t, int h, int d) -> T& {
        return dqkv[((long)b * Tn + t) * 3 * C + which * C + h * hs + d];
    };
    for (long i = 0; i < (long)B * Tn * 3 * C; i++) dqkv[i] = (T)0;
    std::vector<double> datt(Tn);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++) {
                const T* a = att + (((long)b * NH + h) * Tn + t) * Tn;
                const T* dy = dout + ((long)b * Tn + t) * C + h * hs;
                double dot = 0.0;
                for (int j = 0; j <= t; j++) {
                    datt[j] = 0.0;
                    for (int d = 0; d < hs; d++) datt[j] += (double)dy[d] * R(2, b, h, j, d);
                    dot += (double)a[j] * datt[j];
                    for (int d = 0; d < hs; d++) D(2, b, j, h, d) += (T)((double)a[j] * dy[d]);
                }
                for (int j = 0; j <= t; j++) {
                    const double dlogit = (double)a[j] * (datt[j] - dot);
                    for (int d = 0; d < hs; d++) {
                        D(0, b, t, h, d) += (T)(scale * dlogit * R(1, b, h, j, d));
                        D(1, b, j, h, d) += (T)(scale * dlogit * R(0, b, h, t, d));
                    }
                }
            }
}

// Embedding backward (2): dwte[idx[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]
template <typename T>
void ref_encoder_backward(T* dwte, T* dwpe, const T* dout, const int* idx, int B, int Tn, int C, int V) {
    (void)V;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int c = 0; c < C; c++) {
                const T d = dout[((long)b * Tn + t) * C + c];
                dwte[(long)idx[b * Tn + t] * C + c] += d;
                dwpe[(long)t * C + c] += d;
            }
}

// ================================================================================================
// 6. The update (docs/model.md, 24)

// out = sum x^2 over every gradient (scratch stands for the kernel's partial sums: unused here)
template <typename T>
void ref_global_norm_squared(T* out, T* scratch, const T* x, long n) {
    (void)scratch;
    double sum = 0.0;
    for (long i = 0; i < n; i++) sum += (double)x[i] * x[i];
    out[0] = (T)sum;
}

// scale = min(1, max_norm / (sqrt(norm_squared) + 1e-6)), or 1 when max_norm <= 0 (no clipping)
template <typename T>
void ref_clip_scale(T* scale, const T* norm_squared, T max_norm) {
    scale[0] = max_norm > 0 ? (T)std::min(1.0, (double)max_norm / (std::sqrt((double)norm_squared[0]) + 1e-6)) : (T)1;
}

// AdamW as PyTorch's, step 1-based, on the clipped gradient g = grad * grad_scale[0] (nullptr: 1):
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  mhat = m / (1 - beta1^step);  vhat = v / (1 - beta2^step)
//   param -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * param)
template <typename T>
void ref_adamw_update(T* params, const T* grads, T* m, T* v, long n, T lr, T beta1, T beta2, T eps,
                      T weight_decay, int step, const T* grad_scale) {
    const double scale = grad_scale != nullptr ? (double)grad_scale[0] : 1.0;
    const double bc1 = 1.0 - std::pow((double)beta1, step), bc2 = 1.0 - std::pow((double)beta2, step);
    for (long i = 0; i < n; i++) {
        const double g = grads[i] * scale;
        m[i] = (T)(beta1 * (double)m[i] + (1.0 - beta1) * g);
        v[i] = (T)(beta2 * (double)v[i] + (1.0 - beta2) * g * g);
        const double mhat = m[i] / bc1, vhat = v[i] / bc2;
        params[i] = (T)(params[i] - lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * (double)params[i]));
    }
}

// ================================================================================================
// 7. The whole training step (model.cuh's model_forward, model_backward and model_update)

// What a forward and backward pass of RefModel::step returns.
template <typename T>
struct RefModelResult {
    std::vector<T> logits;                 // (N, V)
    T total = 0, ce = 0, aux = 0, z = 0;   // losses: aux and z summed over the layers, before coefficients
    T entropy = 0;                         // the router entropy H summed over the layers (--entropy-coef)
    std::vector<T> grads;                  // (number of parameters), the layout of model_parameter_table
    std::vector<RefMoeState<T>> moe;       // per block (MoE models only): its routing
};

// What one block's forward keeps for the backward.
template <typename T>
struct RefBlockActivations {
    std::vector<T> in;                          // (N, C)  the residual stream entering the block
    std::vector<T> ln1, ln1_mean, ln1_rstd;     // (N, C), (N), (N)
    std::vector<T> qkv, qkvr, att;              // (N, 3C), (3, B, NH, Tn, hs), (B, NH, Tn, Tn)
    std::vector<T> atty, attproj;               // (N, C)  attention output, after c_proj
    std::vector<T> res2;                        // (N, C)  in + attproj
    std::vector<T> ln2, ln2_mean, ln2_rstd;     // (N, C), (N), (N): the FFN's input u
    std::vector<T> fch, fch_gelu;               // (N, Fd) the dense FFN's hidden layer, before and after GELU
    std::vector<T> ffn_out;                     // (N, C)  the FFN's or MoE layer's output
};

template <typename T>
struct RefModel {
    ModelConfig cfg;
    std::vector<ParamTensor> tensors;  // model_parameter_table(cfg)
    std::vector<T> params, adam_m, adam_v;

    RefModel(const ModelConfig& c, const std::vector<T>& initial) : cfg(c), tensors(model_parameter_table(c)) {
        params = initial;
        adam_m.assign(params.size(), T(0));
        adam_v.assign(params.size(), T(0));
    }
    size_t offset(const std::string& name) const {
        for (const auto& t : tensors)
            if (t.name == name) return t.offset;
        fprintf(stderr, "reference_model: no tensor %s\n", name.c_str());
        abort();
    }
    const T* p(const std::string& name) const { return params.data() + offset(name); }

    // Block l's MoE tensors, copied out of a parameter-shaped array.
    RefMoeParams<T> moe_params(const std::vector<T>& from, int l) const {
        RefMoeParams<T> w(cfg);
        const std::string h = "h." + std::to_string(l) + ".moe.";
        auto copy = [&](std::vector<T>& dst, const std::string& name) {
            if (dst.empty()) return;
            const T* src = from.data() + offset(h + name);
            dst.assign(src, src + dst.size());
        };
        copy(w.router, "router.weight"); copy(w.noise, "noise.weight");
        copy(w.fc_w, "experts.c_fc.weight"); copy(w.fc_b, "experts.c_fc.bias");
        copy(w.proj_w, "experts.c_proj.weight"); copy(w.proj_b, "experts.c_proj.bias");
        if (cfg.shared_experts > 0) {
            copy(w.shared_fc_w, "shared.c_fc.weight"); copy(w.shared_fc_b, "shared.c_fc.bias");
            copy(w.shared_proj_w, "shared.c_proj.weight"); copy(w.shared_proj_b, "shared.c_proj.bias");
        }
        return w;
    }
    // Adds block l's MoE gradients into a parameter-shaped array.
    void add_moe_grads(std::vector<T>& grads, int l, const RefMoeParams<T>& g) const {
        const std::string h = "h." + std::to_string(l) + ".moe.";
        auto add = [&](const std::vector<T>& src, const std::string& name) {
            if (src.empty()) return;
            T* dst = grads.data() + offset(h + name);
            for (size_t i = 0; i < src.size(); i++) dst[i] += src[i];
        };
        add(g.router, "router.weight"); add(g.noise, "noise.weight");
        add(g.fc_w, "experts.c_fc.weight"); add(g.fc_b, "experts.c_fc.bias");
        add(g.proj_w, "experts.c_proj.weight"); add(g.proj_b, "experts.c_proj.bias");
        if (cfg.shared_experts > 0) {
            add(g.shared_fc_w, "shared.c_fc.weight"); add(g.shared_fc_b, "shared.c_fc.bias");
            add(g.shared_proj_w, "shared.c_proj.weight"); add(g.shared_proj_b, "shared.c_proj.bias");
        }
    }

    // Forward of a batch (inputs, targets: (B, Tn) token ids) and the loss:
    //   x = wte[idx] + wpe
    //   per block:  x = x + attn(LN(x; ln_1));   x = x + FFN(LN(x; ln_2))   (FFN: dense or MoE)
    //   logits = LN(x; ln_f) wte^T;   loss = mean CE + aux_coef sum aux + z_coef sum z - entropy_coef sum H
    // noise_eps[l] (N*E) holds block l's noise draws when noise applies (training with router_noise).
    // Fills blk (per block), x (the final residual stream), lnf with its mean and rstd, dlogits, and
    // r's logits, losses and routing.
    void forward(std::vector<RefBlockActivations<T>>& blk, std::vector<T>& x, std::vector<T>& lnf,
                 std::vector<T>& lnf_mean, std::vector<T>& lnf_rstd, std::vector<T>& dlogits, RefModelResult<T>& r,
                 const int* inputs, const int* targets, int B, int Tn, bool training,
                 const std::vector<std::vector<T>>& noise_eps) const {
        const int C = cfg.dim, V = cfg.vocab_size, NH = cfg.heads, L = cfg.layers, F = cfg.ffn_hidden;
        const int N = B * Tn;
        const size_t NC = (size_t)N * C;
        blk.assign(L, RefBlockActivations<T>{});
        x.assign(NC, T(0));
        ref_encoder_forward(x.data(), inputs, p("wte"), p("wpe"), B, Tn, C);
        r.moe.clear();
        for (int l = 0; l < L; l++) {
            RefBlockActivations<T>& a = blk[l];
            const std::string h = "h." + std::to_string(l) + ".";
            a.in = x;
            a.ln1.resize(NC); a.ln1_mean.resize(N); a.ln1_rstd.resize(N);
            ref_layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), a.in.data(), p(h + "ln_1.weight"),
                                  p(h + "ln_1.bias"), N, C);
            a.qkv.resize(3 * NC);
            ref_matmul_forward(a.qkv.data(), a.ln1.data(), p(h + "attn.c_attn.weight"), p(h + "attn.c_attn.bias"), N, C, 3 * C);
            a.qkvr.resize(3 * NC); a.att.resize((size_t)B * NH * Tn * Tn); a.atty.resize(NC);
            ref_attention_forward(a.atty.data(), a.qkvr.data(), a.att.data(), a.qkv.data(), B, Tn, C, NH);
            a.attproj.resize(NC);
            ref_matmul_forward(a.attproj.data(), a.atty.data(), p(h + "attn.c_proj.weight"), p(h + "attn.c_proj.bias"), N, C, C);
            a.res2.resize(NC);
            ref_residual_forward(a.res2.data(), a.in.data(), a.attproj.data(), (long)NC);
            a.ln2.resize(NC); a.ln2_mean.resize(N); a.ln2_rstd.resize(N);
            ref_layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.res2.data(), p(h + "ln_2.weight"),
                                  p(h + "ln_2.bias"), N, C);
            a.ffn_out.resize(NC);
            if (!cfg.moe()) {
                a.fch.resize((size_t)N * F); a.fch_gelu.resize((size_t)N * F);
                ref_matmul_forward(a.fch.data(), a.ln2.data(), p(h + "mlp.c_fc.weight"), p(h + "mlp.c_fc.bias"), N, C, F);
                ref_gelu_forward(a.fch_gelu.data(), a.fch.data(), (long)N * F);
                ref_matmul_forward(a.ffn_out.data(), a.fch_gelu.data(), p(h + "mlp.c_proj.weight"), p(h + "mlp.c_proj.bias"),
                                   N, F, C);
            } else {
                RefMoeState<T> st(cfg, N);
                if (training && cfg.router_noise) st.noise_eps = noise_eps[l];
                ref_moe_forward(a.ffn_out.data(), st, moe_params(params, l), a.ln2.data(), cfg, N, training);
                r.moe.push_back(st);
            }
            ref_residual_forward(x.data(), a.res2.data(), a.ffn_out.data(), (long)NC);
        }
        lnf.resize(NC); lnf_mean.resize(N); lnf_rstd.resize(N);
        ref_layernorm_forward(lnf.data(), lnf_mean.data(), lnf_rstd.data(), x.data(), p("ln_f.weight"), p("ln_f.bias"), N, C);
        r.logits.resize((size_t)N * V);
        ref_matmul_forward(r.logits.data(), lnf.data(), p("wte"), (const T*)nullptr, N, C, V);
        std::vector<T> token_losses(N);
        dlogits.resize((size_t)N * V);
        ref_crossentropy_forward_backward(token_losses.data(), dlogits.data(), r.logits.data(), targets, N, V, T(1) / N);
        ref_mean_forward(&r.ce, token_losses.data(), N);
        r.total = r.ce;
        r.aux = r.z = r.entropy = T(0);
        for (const auto& st : r.moe) {
            r.aux += st.aux; r.z += st.z;
            r.total += (T)cfg.aux_coef * st.aux + (T)cfg.z_coef * st.z;
            if (cfg.entropy_coef != 0) {
                r.entropy += st.entropy;
                r.total -= (T)cfg.entropy_coef * st.entropy;
            }
        }
    }

    // Backward of the pass above into r.grads (zeroed first), in reverse order. dres holds the
    // gradient of the residual stream: each block's branch adds into it through its LayerNorm's
    // backward, while the skip connection passes it through unchanged.
    void backward(RefModelResult<T>& r, const std::vector<RefBlockActivations<T>>& blk, const std::vector<T>& x,
                  const std::vector<T>& lnf, const std::vector<T>& lnf_mean, const std::vector<T>& lnf_rstd,
                  const std::vector<T>& dlogits, const int* inputs, int B, int Tn) const {
        const int C = cfg.dim, V = cfg.vocab_size, NH = cfg.heads, L = cfg.layers, F = cfg.ffn_hidden;
        const int N = B * Tn;
        const size_t NC = (size_t)N * C;
        r.grads.assign(params.size(), T(0));
        auto g = [&](const std::string& name) { return r.grads.data() + offset(name); };
        std::vector<T> dln(NC), dres(NC, T(0)), datty(NC), dqkv(3 * NC), dfch, dfch_gelu;
        ref_matmul_backward(dln.data(), g("wte"), (T*)nullptr, dlogits.data(), lnf.data(), p("wte"), N, C, V);
        ref_layernorm_backward(dres.data(), g("ln_f.weight"), g("ln_f.bias"), dln.data(), x.data(), p("ln_f.weight"),
                               lnf_mean.data(), lnf_rstd.data(), N, C);
        for (int l = L - 1; l >= 0; l--) {
            const RefBlockActivations<T>& a = blk[l];
            const std::string h = "h." + std::to_string(l) + ".";
            // the FFN branch: dres -> d(ln2) in dln
            if (!cfg.moe()) {
                dfch.assign((size_t)N * F, T(0)); dfch_gelu.assign((size_t)N * F, T(0));
                ref_matmul_backward(dfch_gelu.data(), g(h + "mlp.c_proj.weight"), g(h + "mlp.c_proj.bias"), dres.data(),
                                    a.fch_gelu.data(), p(h + "mlp.c_proj.weight"), N, F, C);
                ref_gelu_backward(dfch.data(), a.fch.data(), dfch_gelu.data(), (long)N * F);
                ref_matmul_backward(dln.data(), g(h + "mlp.c_fc.weight"), g(h + "mlp.c_fc.bias"), dfch.data(), a.ln2.data(),
                                    p(h + "mlp.c_fc.weight"), N, C, F);
            } else {
                RefMoeParams<T> gm(cfg);
                ref_moe_backward(dln.data(), gm, dres.data(), r.moe[l], moe_params(params, l), a.ln2.data(), cfg, N);
                add_moe_grads(r.grads, l, gm);
            }
            ref_layernorm_backward(dres.data(), g(h + "ln_2.weight"), g(h + "ln_2.bias"), dln.data(), a.res2.data(),
                                   p(h + "ln_2.weight"), a.ln2_mean.data(), a.ln2_rstd.data(), N, C);
            // the attention branch: dres -> d(ln1) in dln
            ref_matmul_backward(datty.data(), g(h + "attn.c_proj.weight"), g(h + "attn.c_proj.bias"), dres.data(),
                                a.atty.data(), p(h + "attn.c_proj.weight"), N, C, C);
            ref_attention_backward(dqkv.data(), (T*)nullptr, datty.data(), a.qkvr.data(), a.att.data(), B, Tn, C, NH);
            ref_matmul_backward(dln.data(), g(h + "attn.c_attn.weight"), g(h + "attn.c_attn.bias"), dqkv.data(),
                                a.ln1.data(), p(h + "attn.c_attn.weight"), N, C, 3 * C);
            ref_layernorm_backward(dres.data(), g(h + "ln_1.weight"), g(h + "ln_1.bias"), dln.data(), a.in.data(),
                                   p(h + "ln_1.weight"), a.ln1_mean.data(), a.ln1_rstd.data(), N, C);
        }
        ref_encoder_backward(g("wte"), g("wpe"), dres.data(), inputs, B, Tn, C, V);
    }

    // One forward and backward pass: logits, losses, routing and every gradient.
    RefModelResult<T> step(const int* inputs, const int* targets, int B, int Tn, bool training,
                           const std::vector<std::vector<T>>& noise_eps) const {
        RefModelResult<T> r;
        std::vector<RefBlockActivations<T>> blk;
        std::vector<T> x, lnf, lnf_mean, lnf_rstd, dlogits;
        forward(blk, x, lnf, lnf_mean, lnf_rstd, dlogits, r, inputs, targets, B, Tn, training, noise_eps);
        backward(r, blk, x, lnf, lnf_mean, lnf_rstd, dlogits, inputs, B, Tn);
        return r;
    }

    // The update (24): clip by the global norm of all gradients, then AdamW on every tensor, weight
    // decay on matrices only (ParamTensor::is_matrix). step is 1-based.
    void update(const std::vector<T>& grads, T lr, T beta1, T beta2, T eps, T weight_decay, T grad_clip, int step) {
        T norm_sq = 0, scale = 0;
        ref_global_norm_squared(&norm_sq, (T*)nullptr, grads.data(), (long)grads.size());
        ref_clip_scale(&scale, &norm_sq, grad_clip);
        for (const auto& t : tensors)
            ref_adamw_update(params.data() + t.offset, grads.data() + t.offset, adam_m.data() + t.offset,
                             adam_v.data() + t.offset, (long)t.numel, lr, beta1, beta2, eps,
                             t.is_matrix ? weight_decay : T(0), step, &scale);
    }
};
