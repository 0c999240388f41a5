// model_config.h: the model's configuration, in one struct, and what follows from it.
//
// Every field is a flag of the trainer (run/config.h holds the flag table: names, defaults, help),
// except vocab_size, which the data decides. The trainer's TrainConfig extends this struct with the
// run's own fields (optimisation, logging, paths), so the model's numbers are stored once.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

// The router keeps a token's E scores in one thread's registers, and the top-K step marks the
// experts already taken in one 64-bit word: at most 64 routed experts per layer.
constexpr int MOE_MAX_EXPERTS = 64;

struct ModelConfig {
    int vocab_size = 0;           // V: distinct characters of the data
    int block_size = 0;           // T: the longest sequence (the position table's length)
    int layers = 0;               // L transformer blocks
    int heads = 0;                // NH attention heads (divide dim)
    int dim = 0;                  // C, the width of the residual stream
    int ffn_hidden = 0;           // hidden width of the dense FFN (used when experts == 0)
    int experts = 0;              // E routed experts per MoE layer; 0 = every block has a dense FFN
    int top_k = 0;                // K experts per token
    int expert_hidden = 0;        // F, hidden width of a routed expert
    int shared_experts = 0;       // S always-on experts per MoE layer
    int shared_hidden = 0;        // Fs, hidden width of a shared expert
    double capacity_factor = 0;   // expert capacity = ceil(capacity_factor * N * K / E); <= 0: no limit
    int router_noise = 0;         // 1: noisy top-k gating while training
    float aux_coef = 0;           // weight of the load-balancing loss in the total loss
    float z_coef = 0;             // weight of the router z-loss in the total loss
    // routing variants (docs/model.md, "Routing variants"); the defaults are the layer above
    std::string gate = "softmax";    // router scores: softmax over the experts | sigmoid of each
    std::string routing = "token";   // token: each token picks K experts | expert: each expert picks its tokens
    std::string overflow = "drop";   // a choice over capacity: drop | reroute (to the token's next experts)
    float bias_rate = 0;          // aux-loss-free balancing: step of the selection bias (0: off)
    float entropy_coef = 0;       // router entropy bonus: total loss -= entropy_coef * sum_layers H
    int groups = 1;               // G token groups, each with its own capacity (G divides the batch)

    bool moe() const { return experts > 0; }
    bool sigmoid_gate() const { return gate == "sigmoid"; }
    bool expert_choice() const { return routing == "expert"; }
    bool reroute() const { return overflow == "reroute"; }
};

// How many tokens one expert may take from each group of a step of N tokens (N = B*T, G groups of
// N/G tokens; one group unless --groups says otherwise):
//   capacity = ceil(capacity_factor * (N/G) * K / E), computed in double, left to right;
// without a limit (capacity_factor <= 0) every token fits: capacity = N/G. With expert choice the
// capacity is also capped at N/G (an expert cannot take a token twice).
// The token groups of a pass of N tokens: --groups G when G divides N (every training and
// evaluation batch: G divides B), else 1 (a pass G does not divide, e.g. sampling one sequence of
// odd length, routes as one group rather than leave tokens outside every group).
inline int token_groups(const ModelConfig& c, long N) { return N % c.groups == 0 ? c.groups : 1; }

inline int expert_capacity(const ModelConfig& c, long N) {
    const long group_tokens = N / token_groups(c, N);
    if (c.capacity_factor <= 0.0) return (int)group_tokens;
    const int cap = (int)std::ceil(c.capacity_factor * (double)group_tokens * (double)c.top_k / (double)c.experts);
    return c.expert_choice() ? (int)std::min<long>(cap, group_tokens) : cap;
}

// Rows of an expert's buffer: a token picks an expert at most once, so no expert ever holds more
// than N/G tokens of a group, whatever the capacity; the buffer holds the G groups' rows one group
// after the other.
inline int expert_buffer_rows(const ModelConfig& c, long N) {
    const int G = token_groups(c, N);
    return G * (int)std::min<long>(expert_capacity(c, N), N / G);
}

// Parameters of one FFN of hidden width H on width C: two matrices and two biases.
inline size_t ffn_parameters(size_t C, size_t H) { return 2 * C * H + H + C; }

// Parameters a token actually uses: all of them except, in every MoE layer, the E - K routed
// experts it does not visit. (The router and noise weights, the shared experts and everything
// outside the FFNs are used by every token.)
inline size_t active_parameters(const ModelConfig& c, size_t total) {
    if (!c.moe()) return total;
    const size_t skipped = (size_t)(c.experts - c.top_k) * ffn_parameters(c.dim, c.expert_hidden);
    return total - (size_t)c.layers * skipped;
}

// ----------------------------------------------------------------------------------------------
// the parameter tensors, in their fixed order (names as in docs/model.md)

// A named view of one parameter tensor (and, at the same offset, its gradient and moments).
struct ParamTensor {
    std::string name;          // e.g. "h.0.attn.c_attn.weight" (docs/model.md, section 28)
    std::vector<int> shape;
    size_t offset = 0;         // in floats, into every parameter-shaped allocation
    size_t numel = 0;
    bool is_matrix = false;    // weight decay applies (matrices only; never biases or LayerNorm)
    float init_std = 0.0f;     // 0 = constant init
    float init_value = 0.0f;   // for constant init (LayerNorm weight 1, biases 0)
};


inline std::vector<ParamTensor> model_parameter_table(const ModelConfig& c) {
    std::vector<ParamTensor> t;
    const float std_w = 0.02f;
    const float std_proj = 0.02f / sqrtf(2.0f * c.layers);  // GPT-2: residual projections scaled
    auto add = [&](const std::string& name, std::vector<int> shape, bool matrix, float stdv, float value) {
        ParamTensor p;
        p.name = name; p.shape = shape; p.is_matrix = matrix; p.init_std = stdv; p.init_value = value;
        p.numel = 1;
        for (int d : shape) p.numel *= (size_t)d;
        t.push_back(p);
    };
    const int C = c.dim, E = c.experts, F = c.expert_hidden, S = c.shared_experts, Fs = c.shared_hidden;
    add("wte", {c.vocab_size, C}, true, std_w, 0);
    add("wpe", {c.block_size, C}, true, std_w, 0);
    for (int l = 0; l < c.layers; l++) {
        std::string h = "h." + std::to_string(l) + ".";
        add(h + "ln_1.weight", {C}, false, 0, 1);
        add(h + "ln_1.bias", {C}, false, 0, 0);
        add(h + "attn.c_attn.weight", {3 * C, C}, true, std_w, 0);
        add(h + "attn.c_attn.bias", {3 * C}, false, 0, 0);
        add(h + "attn.c_proj.weight", {C, C}, true, std_proj, 0);
        add(h + "attn.c_proj.bias", {C}, false, 0, 0);
        add(h + "ln_2.weight", {C}, false, 0, 1);
        add(h + "ln_2.bias", {C}, false, 0, 0);
        if (!c.moe()) {
            add(h + "mlp.c_fc.weight", {c.ffn_hidden, C}, true, std_w, 0);
            add(h + "mlp.c_fc.bias", {c.ffn_hidden}, false, 0, 0);
            add(h + "mlp.c_proj.weight", {C, c.ffn_hidden}, true, std_proj, 0);
            add(h + "mlp.c_proj.bias", {C}, false, 0, 0);
        } else {
            add(h + "moe.router.weight", {E, C}, true, std_w, 0);
            // Shazeer et al. start the noise projection at zero: noise std softplus(0) = ln 2.
            add(h + "moe.noise.weight", {E, C}, true, 0, 0);
            add(h + "moe.experts.c_fc.weight", {E, F, C}, true, std_w, 0);
            add(h + "moe.experts.c_fc.bias", {E, F}, false, 0, 0);
            add(h + "moe.experts.c_proj.weight", {E, C, F}, true, std_proj, 0);
            add(h + "moe.experts.c_proj.bias", {E, C}, false, 0, 0);
            if (S > 0) {
                add(h + "moe.shared.c_fc.weight", {S, Fs, C}, true, std_w, 0);
                add(h + "moe.shared.c_fc.bias", {S, Fs}, false, 0, 0);
                add(h + "moe.shared.c_proj.weight", {S, C, Fs}, true, std_proj, 0);
                add(h + "moe.shared.c_proj.bias", {S, C}, false, 0, 0);
            }
        }
    }
    add("ln_f.weight", {C}, false, 0, 1);
    add("ln_f.bias", {C}, false, 0, 0);
    size_t offset = 0;
    for (auto& p : t) { p.offset = offset; offset += p.numel; }
    return t;
}

// The model's tensors that are not parameters (no gradient, no AdamW moments), saved in checkpoints
// and state dumps beside the weights: with --bias-rate, each MoE layer's selection bias
// h.{l}.moe.router.bias [E] (offsets into one (L, E) allocation). Empty otherwise.
inline std::vector<ParamTensor> model_buffer_table(const ModelConfig& c) {
    std::vector<ParamTensor> t;
    if (!c.moe() || c.bias_rate == 0) return t;
    for (int l = 0; l < c.layers; l++) {
        ParamTensor p;
        p.name = "h." + std::to_string(l) + ".moe.router.bias";
        p.shape = {c.experts};
        p.numel = (size_t)c.experts;
        p.offset = (size_t)l * c.experts;
        t.push_back(p);  // starts at 0 (init_std 0, init_value 0)
    }
    return t;
}
