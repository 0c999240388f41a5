// moe_layer.cuh: the Mixture-of-Experts FFN, forward and backward (docs/model.md, sections 8-22).
//
// The forward pass of one layer, read top to bottom:
//
//   u (N,C) --router GEMM--> r (N,E) --(+ eps*softplus(W_n u))--> h --softmax--> p --top-K--> e_tj, g_tj
//           --capacity scan--> kept_tj, slot_tj       (which row of expert e_tj's buffer the token gets)
//           --dispatch--> x_e (E,R,C)                 (the tokens of each expert, gathered into its buffer)
//           --batched FFN--> y_e (E,R,C)               (GELU(x_e W1_e^T + b1_e) W2_e^T + b2_e, all E at once)
//           --combine--> out_t = sum_s SharedFFN_s(u_t) + sum_{kept j} g_tj y_{e_tj}[slot_tj]
//   plus the two router losses: aux = E sum_i f_i P_i (load balance) and z = mean_t logsumexp(r_t)^2,
//   added to the model's loss with their coefficients.
//
// The backward pass walks the same chain the other way. Everything stays on the device: the
// capacity slots are found by a per-expert scan on the GPU, so the host never learns how many
// tokens an expert got; every expert buffer has the static shape R = buffer_rows, and rows nobody
// uses are zero. All reductions run in a fixed order (no float atomics): results are the same bits
// from run to run.
//
// Vocabulary: N tokens (B*T), C model width, E routed experts, K experts per token, F expert hidden
// width, S shared experts of hidden width Fs, R = buffer_rows = min(capacity, N) rows per expert
// (with G token groups, --groups: capacity is per group and R = G * min(capacity, N/G), group g
// owning rows g*R/G .. (g+1)*R/G - 1; moe_dispatch.cuh's capacity section documents the layout).
// A *choice* is a pair (token t, rank j), flattened as c = t*K + j; rank 0 is the token's best
// expert. A choice is *routed* to its expert, and *kept* if it gets a *slot* (a buffer row).
//
// This file is the layer: its tensors, and its forward and backward as the lists of stages they
// are. The stages live, each as math comment, kernel and launcher together, in
//   moe_router.cuh    router logits, noise, softmax, top-K, gates, aux and z losses
//   moe_dispatch.cuh  capacity (per token group), dispatch, combine
//   moe_reroute.cuh   --overflow reroute: dropped choices retried at the token's next experts
//   moe_experts.cuh   the expert FFNs (routed and shared)
// and reference_model.h computes the same layer token by token, with plain loops.
#pragma once
#include <cstddef>
#include "common.cuh"
#include "model_config.h"
#include "moe_router.cuh"
#include "moe_dispatch.cuh"
#include "moe_reroute.cuh"
#include "moe_experts.cuh"
#include "moe_expert_choice.cuh"

struct MoeWeights {          // a view into the model's parameters; gradients use the same struct
    float* router;           // (E, C)  W_r
    float* noise;            // (E, C)  W_n
    ExpertWeights experts;   // E routed experts of hidden width F: fc_w (E,F,C), fc_b (E,F), proj_w (E,C,F), proj_b (E,C)
    ExpertWeights shared;    // S shared experts of hidden width Fs (all nullptr when S == 0)
    float* router_bias = nullptr;  // (E) selection bias b of --bias-rate (not a parameter: no gradient,
                                   // no AdamW; lives in Model::router_bias); nullptr when off and in gradients
};

struct MoeActivations {      // views into one float and one int allocation (moe_activation_views)
    int N = 0;               // the tokens the views are laid out for
    bool noisy = false;      // the last forward drew router noise (its backward follows the noise path)
    // routing: the forward's results, read by the diagnostics and the state dump
    float* router_logits;    // (N, E)   r = W_r u
    float* noise_logits;     // (N, E)   n = W_n u
    float* noise_eps;        // (N, E)   eps ~ N(0,1) (allocated as router_noise_count(N, E))
    float* probs;            // (N, E)   p = softmax(h)  (--gate sigmoid: the scores s = sigmoid(h))
    float* gates;            // (N, K)
    int*   topk_idx;         // (N, K)   expert of each choice, highest probability first
    int*   kept;             // (N, K)   1 kept, 0 dropped
    int*   slot;             // (N, K)   row in the expert's buffer, -1 when dropped
    int*   tokens_per_expert_routed; // (E) choices per expert before capacity
    int*   tokens_per_expert_kept;   // (E) after capacity
    float* aux;              // (1)      load-balance loss of this layer (before its coefficient)
    float* z;                // (1)      router z-loss of this layer (before its coefficient)
    float* router_lse;       // (N)      logsumexp_t r_t (the z-loss and its gradient)
    float* norm_probs;       // (N, E)   pn = s / sum_i s (written with --gate sigmoid only; else pn = probs)
    float* token_entropy;    // (N)      H(pn_t) per token (written with --entropy-coef only)
    float* entropy;          // (1)      router entropy H = mean_t H(pn_t) of this layer (--entropy-coef only)
    // the experts' buffers
    int*   slot_choice;      // (E, R)   choice c held in each buffer row, -1 for an empty row
                             //          (with G token groups: group g owns rows g*R/G .. (g+1)*R/G - 1)
    // token groups and --overflow reroute; tokens_per_expert_routed stays the ORIGINAL choices
    int*   group_fill;       // (E, G)   slots used per (expert, token group)
    int*   expert_rank;      // (N, E)   each token's experts by selection score, best first
    int*   reroute_placed;   // (E-K, E) choices each expert took in each reroute round
    float* expert_in;        // (E, R, C)  x_e: the dispatched tokens (empty rows 0)
    float* expert_pre;       // (E, R, F)  x_e W1_e^T + b1_e
    float* expert_act;       // (E, R, F)  GELU(expert_pre)
    float* expert_out;       // (E, R, C)  y_e = expert_act W2_e^T + b2_e
    float* shared_pre;       // (S, N, Fs) the same for the shared experts, over all N tokens
    float* shared_act;       // (S, N, Fs)
    float* shared_out;       // (S, N, C)
    // backward scratch
    float* d_gates;          // (N, K)     dL/dg (dropped choices: 0)
    float* d_router_logits;  // (N, E)
    float* d_noise_logits;   // (N, E)
    float* d_expert_out;     // (E, R, C)
    float* d_expert_hidden;  // (E, R, F)
    float* d_expert_in;      // (E, R, C)
    float* d_shared_hidden;  // (S, N, Fs)
    float* d_shared_in;      // (S, N, C)
    // expert choice (--routing expert, moe_expert_choice.cuh; all nullptr otherwise). slot_choice
    // then holds the token index of each row, and all R = G*cap rows are used.
    float* ec_gates;         // (E, R)   gate of each row: p_t[e] of its token t
    int*   ec_slot;          // (N, E)   row of token t in expert e's buffer, -1: e did not take t
    int*   ec_expert_ids;    // (N, E)   e, and
    int*   ec_taken;         // (N, E)   1 if e took t: the (N, E) "choices" the diagnostics count
    int*   ec_sort_keys;     // (E*G, P) 64-bit sort keys of the selection (scratch; P = 2^ceil(log2(N/G)))
};

// ----------------------------------------------------------------------------------------------
// expert choice (--routing expert): the stages after the router (moe_expert_choice.cuh)
//
//   p --per-expert top-cap of each group--> slot_choice (tokens), ec_gates, ec_slot (N,E)
//     --dispatch (a row holds a token: K = 1)--> x_e --batched FFN--> y_e
//     --combine--> out_t = sum_s SharedFFN_s(u_t) + sum_{e took t} p_t[e] y_e[ec_slot[t,e]]
//   aux = 0; z (and the entropy) as in token choice.
// Backward: dy_e = gate dout; dp_t[e] = dout_t . y_e[row]; the score, z, entropy and noise
// backward (no aux); du_t = shared + sum_{e took t} dx_e[row]; the router GEMMs.

inline void moe_expert_choice_forward(float* out, MoeActivations& a, const MoeWeights& w, const float* u,
                                      const ModelConfig& cfg, int N) {
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden, R = expert_buffer_rows(cfg, N), capacity = expert_capacity(cfg, N);
    expert_choice_select(a.slot_choice, a.ec_gates, a.ec_slot, a.ec_expert_ids, a.ec_taken,
                         a.tokens_per_expert_routed, a.tokens_per_expert_kept,
                         reinterpret_cast<unsigned long long*>(a.ec_sort_keys), a.probs, N, E, token_groups(cfg, N), capacity);
    moe_dispatch(a.expert_in, u, a.slot_choice, E, R, C, 1);
    expert_ffn_forward(a.expert_out, a.expert_pre, a.expert_act, a.expert_in, (long long)R * C, w.experts,
                       a.slot_choice, E, R, C, F);
    if (S > 0) expert_ffn_forward(a.shared_out, a.shared_pre, a.shared_act, u, 0, w.shared, nullptr, S, N, C, Fs);
    expert_choice_combine(out, a.expert_out, a.shared_out, a.probs, a.ec_slot, N, E, C, R, S);
    moe_router_losses(a.aux, a.z, cfg.sigmoid_gate() ? a.norm_probs : a.probs, a.router_lse,
                      a.tokens_per_expert_routed, N, E, K, cfg.entropy_coef != 0 ? a.token_entropy : nullptr,
                      a.entropy);
    expert_choice_zero_aux(a.aux);
}

inline void moe_expert_choice_backward(float* du, const MoeWeights& grads, const float* dout, MoeActivations& a,
                                       const MoeWeights& w, const float* u, const ModelConfig& cfg) {
    const int N = a.N, C = cfg.dim, E = cfg.experts, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden, R = expert_buffer_rows(cfg, N);
    expert_choice_combine_backward(a.d_expert_out, dout, a.ec_gates, a.slot_choice, E, R, C);
    expert_ffn_backward(a.d_expert_in, a.d_expert_hidden, grads.experts, a.d_expert_out, (long long)R * C,
                        a.expert_pre, a.expert_act, a.expert_in, (long long)R * C, w.experts, E, R, C, F);
    if (S > 0)
        expert_ffn_backward(a.d_shared_in, a.d_shared_hidden, grads.shared, dout, 0, a.shared_pre, a.shared_act, u, 0,
                            w.shared, S, N, C, Fs);
    expert_choice_router_backward(a.d_router_logits, a.noisy ? a.d_noise_logits : nullptr, dout, a.expert_out,
                                  a.ec_slot, a.probs, a.router_logits, a.router_lse, a.noise_logits, a.noise_eps, N,
                                  E, C, R, cfg.z_coef, cfg.sigmoid_gate(), cfg.entropy_coef);
    expert_choice_dispatch_backward(du, a.d_expert_in, a.d_shared_in, a.ec_slot, N, E, C, R, S);
    moe_router_logits_backward(du, grads.router, grads.noise, a.d_router_logits, a.d_noise_logits, w.router, w.noise,
                               u, N, C, E, a.noisy);
}

// ----------------------------------------------------------------------------------------------
// forward

// out = MoE-FFN(u); also fills the routing tensors, the token counts, aux and z. With `noise`
// (training with router noise on), eps is drawn first, as draw number `noise_draw` of the run.
inline void moe_forward(float* out,                 // (N, C) overwritten
                        MoeActivations& a,
                        const MoeWeights& w,
                        const float* u,             // (N, C)
                        const ModelConfig& cfg, int N,
                        RouterNoise* noise, unsigned long long noise_draw) {
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden, R = expert_buffer_rows(cfg, N), capacity = expert_capacity(cfg, N);
    if (E < 1 || E > MOE_MAX_EXPERTS || K < 1 || K > E) {  // the router keeps E values per thread
        fprintf(stderr, "[MoE] E=%d, K=%d: need 1 <= K <= E <= %d\n", E, K, MOE_MAX_EXPERTS);
        exit(EXIT_FAILURE);
    }
    a.noisy = noise != nullptr;
    if (a.noisy) router_noise_draw(a.noise_eps, *noise, noise_draw, N, E);
    const float* noise_logits = a.noisy ? a.noise_logits : nullptr;
    const float* eps = a.noisy ? a.noise_eps : nullptr;

    moe_router_logits_forward(a.router_logits, a.noise_logits, w.router, w.noise, u, N, C, E, a.noisy);
    moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, noise_logits, eps, N, E, K, w.router_bias,
              cfg.sigmoid_gate(), cfg.sigmoid_gate() ? a.norm_probs : nullptr,
              cfg.entropy_coef != 0 ? a.token_entropy : nullptr);
    if (cfg.expert_choice()) {  // the experts pick their tokens: the rest of the forward differs
        moe_expert_choice_forward(out, a, w, u, cfg, N);
        return;
    }
    moe_capacity(a.kept, a.slot, a.slot_choice, a.tokens_per_expert_routed, a.tokens_per_expert_kept, a.topk_idx, N,
                 E, K, capacity, R, token_groups(cfg, N), a.group_fill);
    if (cfg.reroute())
        moe_reroute(a.topk_idx, a.kept, a.slot, a.slot_choice, a.group_fill, a.tokens_per_expert_kept,
                    a.reroute_placed, a.expert_rank, a.gates, a.probs, w.router_bias, N, E, K, capacity, R,
                    token_groups(cfg, N));
    moe_dispatch(a.expert_in, u, a.slot_choice, E, R, C, K);
    expert_ffn_forward(a.expert_out, a.expert_pre, a.expert_act, a.expert_in, (long long)R * C, w.experts,
                       a.slot_choice, E, R, C, F);
    if (S > 0) expert_ffn_forward(a.shared_out, a.shared_pre, a.shared_act, u, 0, w.shared, nullptr, S, N, C, Fs);
    moe_combine(out, a.expert_out, a.shared_out, a.gates, a.topk_idx, a.kept, a.slot, N, C, K, R, S);
    moe_router_losses(a.aux, a.z, cfg.sigmoid_gate() ? a.norm_probs : a.probs, a.router_lse,
                      a.tokens_per_expert_routed, N, E, K, cfg.entropy_coef != 0 ? a.token_entropy : nullptr,
                      a.entropy);
}

// losses = [total, ce, aux sum, z sum, entropy sum] += this layer's
//          [aux_coef aux + z_coef z - entropy_coef H, 0, aux, z, H]   (H only with the entropy bonus)
inline void moe_loss_forward(float* losses, const MoeActivations& a, const ModelConfig& cfg) {
    moe_add_losses(losses, a.aux, a.z, cfg.aux_coef, cfg.z_coef, cfg.entropy_coef != 0 ? a.entropy : nullptr,
                   cfg.entropy_coef);
}

// ----------------------------------------------------------------------------------------------
// backward

// Backward of  dout . out + aux_coef aux + z_coef z - entropy_coef H  through the routing of the last moe_forward
// (dout already carries the 1/N of the mean cross-entropy). du is overwritten; the weight
// gradients accumulate (+=) into grads.
inline void moe_backward(float* du,                 // (N, C) overwritten
                         const MoeWeights& grads,   // +=
                         const float* dout,         // (N, C)
                         MoeActivations& a,
                         const MoeWeights& w,
                         const float* u,            // (N, C)
                         const ModelConfig& cfg) {
    const int N = a.N, C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, S = cfg.shared_experts,
              Fs = cfg.shared_hidden, R = expert_buffer_rows(cfg, N);
    if (cfg.expert_choice()) {
        moe_expert_choice_backward(du, grads, dout, a, w, u, cfg);
        return;
    }
    moe_combine_backward(a.d_expert_out, a.d_gates, dout, a.expert_out, a.gates, a.topk_idx, a.kept, a.slot,
                         a.slot_choice, N, E, C, K, R);
    expert_ffn_backward(a.d_expert_in, a.d_expert_hidden, grads.experts, a.d_expert_out, (long long)R * C,
                        a.expert_pre, a.expert_act, a.expert_in, (long long)R * C, w.experts, E, R, C, F);
    if (S > 0)
        expert_ffn_backward(a.d_shared_in, a.d_shared_hidden, grads.shared, dout, 0, a.shared_pre, a.shared_act, u, 0,
                            w.shared, S, N, C, Fs);
    moe_router_backward(a.d_router_logits, a.noisy ? a.d_noise_logits : nullptr, a.d_gates, a.probs, a.gates,
                        a.topk_idx, a.router_logits, a.router_lse, a.noise_logits, a.noise_eps,
                        a.tokens_per_expert_routed, N, E, K, cfg.aux_coef, cfg.z_coef, cfg.sigmoid_gate(),
                        cfg.entropy_coef);
    moe_dispatch_backward(du, a.d_expert_in, a.d_shared_in, a.topk_idx, a.kept, a.slot, N, C, K, R, S);
    moe_router_logits_backward(du, grads.router, grads.noise, a.d_router_logits, a.d_noise_logits, w.router, w.noise,
                               u, N, C, E, a.noisy);
}

// ----------------------------------------------------------------------------------------------
// memory: one float and one int allocation per layer, laid out by one list of views

// Every view starts on a 256-byte boundary (64 floats or ints) of its allocation.
inline size_t moe_align(size_t n) { return (n + 63) / 64 * 64; }

// The views in allocation order, as (pointer member, element count): one list serves the sizes and
// the views, so the two cannot disagree.
template <typename FloatFn, typename IntFn>
inline void moe_for_each_view(MoeActivations& a, const ModelConfig& cfg, int tokens, FloatFn f, IntFn i) {
    const size_t N = tokens, C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden,
                 S = cfg.shared_experts, Fs = cfg.shared_hidden, R = expert_buffer_rows(cfg, tokens);
    f(a.router_logits, N * E);
    f(a.noise_logits, N * E);
    f(a.noise_eps, router_noise_count(tokens, cfg.experts));
    f(a.probs, N * E);
    f(a.gates, N * K);
    f(a.aux, (size_t)1);
    f(a.z, (size_t)1);
    f(a.router_lse, N);
    f(a.expert_in, E * R * C);
    f(a.expert_pre, E * R * F);
    f(a.expert_act, E * R * F);
    f(a.expert_out, E * R * C);
    f(a.shared_pre, S * N * Fs);
    f(a.shared_act, S * N * Fs);
    f(a.shared_out, S * N * C);
    f(a.d_gates, N * K);
    f(a.d_router_logits, N * E);
    f(a.d_noise_logits, N * E);
    f(a.d_expert_out, E * R * C);
    f(a.d_expert_hidden, E * R * F);
    f(a.d_expert_in, E * R * C);
    f(a.d_shared_hidden, S * N * Fs);
    f(a.d_shared_in, S * N * C);
    f(a.norm_probs, N * E);   // written with --gate sigmoid only
    f(a.token_entropy, N);    // written with --entropy-coef only
    f(a.entropy, (size_t)1);  // written with --entropy-coef only
    i(a.topk_idx, N * K);
    i(a.kept, N * K);
    i(a.slot, N * K);
    i(a.tokens_per_expert_routed, E);
    i(a.tokens_per_expert_kept, E);
    i(a.slot_choice, E * R);
    // (allocated whatever the flags: a few ints per token, and no view is ever empty)
    const size_t G = token_groups(cfg, tokens);
    i(a.group_fill, E * G);
    i(a.expert_rank, N * E);
    i(a.reroute_placed, std::max<size_t>(E - K, 1) * E);
    const size_t ec = cfg.expert_choice() ? 1 : 0;
    f(a.ec_gates, ec * E * R);
    i(a.ec_slot, ec * N * E);
    i(a.ec_expert_ids, ec * N * E);
    i(a.ec_taken, ec * N * E);
    i(a.ec_sort_keys, ec * 2 * E * G * (size_t)expert_choice_sort_length(tokens, (int)G));
}

inline size_t moe_activation_floats(const ModelConfig& cfg, int N) {
    MoeActivations a{};
    size_t total = 0;
    moe_for_each_view(a, cfg, N, [&](float*&, size_t n) { total += moe_align(n); }, [](int*&, size_t) {});
    return total;
}

inline size_t moe_activation_ints(const ModelConfig& cfg, int N) {
    MoeActivations a{};
    size_t total = 0;
    moe_for_each_view(a, cfg, N, [](float*&, size_t) {}, [&](int*&, size_t n) { total += moe_align(n); });
    return total;
}

// Points every view into the two allocations for a step of N tokens (empty views are nullptr).
inline void moe_activation_views(MoeActivations& a, float* float_base, int* int_base, const ModelConfig& cfg, int N) {
    size_t float_offset = 0, int_offset = 0;
    moe_for_each_view(
        a, cfg, N,
        [&](float*& p, size_t n) {
            p = n > 0 ? float_base + float_offset : nullptr;
            float_offset += moe_align(n);
        },
        [&](int*& p, size_t n) {
            p = n > 0 ? int_base + int_offset : nullptr;
            int_offset += moe_align(n);
        });
    a.N = N;
}
