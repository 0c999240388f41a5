// model.cuh: the GPT (dense or Mixture-of-Experts) assembled from the layer kernels.
//
// x = wte[idx] + wpe[t]
// for each block:  x = x + attn(LN1(x));   x = x + FFN(LN2(x))      (FFN dense or MoE)
// logits = LN_f(x) wte^T;  loss = CE + aux_coef * sum aux + z_coef * sum z - entropy_coef * sum H
//
// Memory follows llm.c: parameters, gradients, AdamW moments and activations each live in one
// device allocation; every tensor is a named view into it. The tensor names are those of
// docs/model.md, section 28.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"
#include "encoder.cuh"
#include "layernorm.cuh"
#include "matmul.cuh"
#include "attention.cuh"
#include "activations.cuh"
#include "classifier.cuh"
#include "optim.cuh"
#include "moe_layer.cuh"
#include "model_config.h"

// Per-block views of one parameter-shaped allocation (parameters, gradients).
struct BlockWeights {
    float* ln1_w;     // (C)
    float* ln1_b;     // (C)
    float* qkv_w;     // (3C, C)
    float* qkv_b;     // (3C)
    float* attproj_w; // (C, C)
    float* attproj_b; // (C)
    float* ln2_w;     // (C)
    float* ln2_b;     // (C)
    float* fc_w;      // (F, C)   dense only
    float* fc_b;      // (F)
    float* fcproj_w;  // (C, F)
    float* fcproj_b;  // (C)
    MoeWeights moe;   // MoE only
};
struct Weights {
    float* wte;       // (V, C)
    float* wpe;       // (block_size, C)
    float* lnf_w;     // (C)
    float* lnf_b;     // (C)
    std::vector<BlockWeights> blocks;
};

// Per-block activations, each a view into one allocation sized for (B, T) at their maximum.
struct BlockActivations {
    float* ln1;        // (N, C)
    float* ln1_mean;   // (N)
    float* ln1_rstd;   // (N)
    float* qkv;        // (N, 3C)
    float* qkvr;       // (3, B, NH, T, hs)
    float* att;        // (B, NH, T, T)
    float* atty;       // (N, C)   heads concatenated
    float* attproj;    // (N, C)
    float* residual2;  // (N, C)   x after the attention half
    float* ln2;        // (N, C)   u, the FFN input
    float* ln2_mean;   // (N)
    float* ln2_rstd;   // (N)
    float* fch;        // (N, F)   dense only
    float* fch_gelu;   // (N, F)
    float* ffn_out;    // (N, C)   FFN(u), dense or MoE
    float* residual3;  // (N, C)   x after the block
    MoeActivations moe; // MoE only: its own views (routing, expert buffers, aux, z)
    float* moe_floats;  // the block's MoE float region (moe_activation_floats of the full batch)
    int* moe_ints;      // the block's MoE int region
};

struct Model {
    ModelConfig cfg;
    int B = 0, T = 0;                       // allocated batch and sequence length
    std::vector<ParamTensor> tensors;       // every parameter (docs/model.md names), fixed order
    size_t num_parameters = 0;
    float* params = nullptr;                // (num_parameters)
    float* grads = nullptr;                 // (num_parameters)
    float* adam_m = nullptr;                // (num_parameters)
    float* adam_v = nullptr;                // (num_parameters)
    Weights w, g;                           // views of params and grads
    // tensors that are not parameters (model_buffer_table: no gradient, no AdamW), saved with the weights
    std::vector<ParamTensor> buffers;       // with --bias-rate: h.{l}.moe.router.bias, offsets into router_bias
    float* router_bias = nullptr;           // (L, E) the selection biases b (nullptr when --bias-rate is 0);
                                            // w.blocks[l].moe.router_bias points at row l
    // activations
    float* acts = nullptr;                  // one allocation
    int* acts_int = nullptr;                // one allocation (MoE routing indices)
    float* encoded = nullptr;               // (N, C)
    std::vector<BlockActivations> blocks;
    float* lnf = nullptr;                   // (N, C)
    float* lnf_mean = nullptr;              // (N)
    float* lnf_rstd = nullptr;              // (N)
    float* logits = nullptr;                // (N, V)
    float* dlogits = nullptr;               // (N, V)
    float* token_losses = nullptr;          // (N)
    float* losses = nullptr;                // (5): total, ce, aux, z, router entropy H (each summed over layers)
    // backward scratch
    float* dresidual = nullptr;             // (N, C)
    float* dln = nullptr;                   // (N, C)
    float* datty = nullptr;                 // (N, C)
    float* dqkv = nullptr;                  // (N, 3C)
    float* dfch = nullptr;                  // (N, max(F, 1))
    float* dfch_gelu = nullptr;             // (N, max(F, 1))
    float* att_scratch = nullptr;           // attention_scratch_floats
    float* norm_scratch = nullptr;          // (1024)
    float* grad_norm_sq = nullptr;          // (1)
    float* grad_scale = nullptr;            // (1)
    int* inputs = nullptr;                  // (B, T)
    int* targets = nullptr;                 // (B, T)
    RouterNoise router_noise;               // the run's router-noise generator (MoE with noise only)
    uint64_t seed = 0;
    // the (B, T, training) of the last forward pass
    int cur_B = 0, cur_T = 0;
    bool cur_training = false;
};

inline const ParamTensor* model_find_tensor(const Model& m, const std::string& name) {
    for (const auto& p : m.tensors) if (p.name == name) return &p;
    return nullptr;
}

// Points every view of `w` at its place in `base` (a parameter-shaped allocation).
inline void model_weight_views(Weights& w, float* base, const Model& m) {
    auto at = [&](const std::string& name) -> float* {
        const ParamTensor* p = model_find_tensor(m, name);
        return p ? base + p->offset : nullptr;
    };
    w.wte = at("wte"); w.wpe = at("wpe"); w.lnf_w = at("ln_f.weight"); w.lnf_b = at("ln_f.bias");
    w.blocks.assign(m.cfg.layers, BlockWeights{});
    for (int l = 0; l < m.cfg.layers; l++) {
        std::string h = "h." + std::to_string(l) + ".";
        BlockWeights& b = w.blocks[l];
        b.ln1_w = at(h + "ln_1.weight"); b.ln1_b = at(h + "ln_1.bias");
        b.qkv_w = at(h + "attn.c_attn.weight"); b.qkv_b = at(h + "attn.c_attn.bias");
        b.attproj_w = at(h + "attn.c_proj.weight"); b.attproj_b = at(h + "attn.c_proj.bias");
        b.ln2_w = at(h + "ln_2.weight"); b.ln2_b = at(h + "ln_2.bias");
        b.fc_w = at(h + "mlp.c_fc.weight"); b.fc_b = at(h + "mlp.c_fc.bias");
        b.fcproj_w = at(h + "mlp.c_proj.weight"); b.fcproj_b = at(h + "mlp.c_proj.bias");
        b.moe.router = at(h + "moe.router.weight");
        b.moe.noise = at(h + "moe.noise.weight");
        b.moe.experts = {at(h + "moe.experts.c_fc.weight"), at(h + "moe.experts.c_fc.bias"),
                         at(h + "moe.experts.c_proj.weight"), at(h + "moe.experts.c_proj.bias")};
        b.moe.shared = {at(h + "moe.shared.c_fc.weight"), at(h + "moe.shared.c_fc.bias"),
                        at(h + "moe.shared.c_proj.weight"), at(h + "moe.shared.c_proj.bias")};
    }
}

// ----------------------------------------------------------------------------------------------
// initialisation: a small counter-based generator so the weights are the same on every machine

struct InitRng {
    uint64_t state;
    explicit InitRng(uint64_t seed) : state(seed) {}
    uint64_t next() {  // splitmix64
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
    double normal() {  // Box-Muller, one value per call (simple beats clever here)
        double u1 = uniform(), u2 = uniform();
        return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    }
};

// Host copy of the initial parameters: N(0, std) for matrices, constants elsewhere.
inline std::vector<float> model_initial_parameters(const std::vector<ParamTensor>& tensors, size_t total, uint64_t seed) {
    std::vector<float> host(total);
    InitRng rng(seed);
    for (const auto& p : tensors) {
        float* dst = host.data() + p.offset;
        for (size_t i = 0; i < p.numel; i++)
            dst[i] = p.init_std > 0 ? (float)(p.init_std * rng.normal()) : p.init_value;
    }
    return host;
}

// ----------------------------------------------------------------------------------------------
// allocation

// Every activation view in allocation order, as (pointer member, element count), for a batch of
// (B, T): one list serves the size of the allocation and the views, so the two cannot disagree
// (the MoE layer lays out its own region the same way, moe_for_each_view).
template <typename FloatFn, typename IntFn>
inline void model_for_each_activation(Model& m, int B, int T, FloatFn f, IntFn i) {
    const ModelConfig& c = m.cfg;
    const size_t N = (size_t)B * T, C = c.dim, V = c.vocab_size;
    const size_t F = c.moe() ? 0 : c.ffn_hidden, Fmax = F > 0 ? F : 1;
    f(m.encoded, N * C);
    for (BlockActivations& a : m.blocks) {
        f(a.ln1, N * C); f(a.ln1_mean, N); f(a.ln1_rstd, N);
        f(a.qkv, N * 3 * C); f(a.qkvr, 3 * N * C); f(a.att, (size_t)B * c.heads * T * T);
        f(a.atty, N * C); f(a.attproj, N * C); f(a.residual2, N * C);
        f(a.ln2, N * C); f(a.ln2_mean, N); f(a.ln2_rstd, N);
        f(a.fch, N * F); f(a.fch_gelu, N * F);
        f(a.ffn_out, N * C); f(a.residual3, N * C);
        if (c.moe()) {
            f(a.moe_floats, moe_activation_floats(c, (int)N));
            i(a.moe_ints, moe_activation_ints(c, (int)N));
        }
    }
    f(m.lnf, N * C); f(m.lnf_mean, N); f(m.lnf_rstd, N);
    f(m.logits, N * V); f(m.dlogits, N * V); f(m.token_losses, N); f(m.losses, (size_t)5);
    f(m.dresidual, N * C); f(m.dln, N * C); f(m.datty, N * C); f(m.dqkv, N * 3 * C);
    f(m.dfch, N * Fmax); f(m.dfch_gelu, N * Fmax);
    f(m.att_scratch, attention_scratch_floats(B, T, (int)C, c.heads));
    f(m.norm_scratch, (size_t)1024); f(m.grad_norm_sq, (size_t)1); f(m.grad_scale, (size_t)1);
}

inline void model_build(Model& m, const ModelConfig& cfg, int B, int T, uint64_t seed) {
    m.cfg = cfg; m.B = B; m.T = T; m.seed = seed;
    const size_t N = (size_t)B * T;
    m.blocks.assign(cfg.layers, BlockActivations{});

    m.tensors = model_parameter_table(cfg);
    m.num_parameters = 0;
    for (const auto& p : m.tensors) m.num_parameters += p.numel;
    const size_t P = m.num_parameters;
    CUDA_CHECK(cudaMalloc(&m.params, P * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&m.grads, P * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&m.adam_m, P * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&m.adam_v, P * sizeof(float)));
    std::vector<float> init = model_initial_parameters(m.tensors, P, seed);
    CUDA_CHECK(cudaMemcpy(m.params, init.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(m.grads, 0, P * sizeof(float)));
    CUDA_CHECK(cudaMemset(m.adam_m, 0, P * sizeof(float)));
    CUDA_CHECK(cudaMemset(m.adam_v, 0, P * sizeof(float)));
    model_weight_views(m.w, m.params, m);
    model_weight_views(m.g, m.grads, m);
    m.buffers = model_buffer_table(cfg);  // the selection biases start at 0
    if (!m.buffers.empty()) {
        const size_t n = (size_t)cfg.layers * cfg.experts;
        CUDA_CHECK(cudaMalloc(&m.router_bias, n * sizeof(float)));
        CUDA_CHECK(cudaMemset(m.router_bias, 0, n * sizeof(float)));
        for (int l = 0; l < cfg.layers; l++) m.w.blocks[l].moe.router_bias = m.router_bias + (size_t)l * cfg.experts;
    }

    // activations: one allocation, views handed out by model_for_each_activation
    size_t floats = 0, ints = 0;
    model_for_each_activation(m, B, T, [&](float*&, size_t n) { floats += n; }, [&](int*&, size_t n) { ints += n; });
    CUDA_CHECK(cudaMalloc(&m.acts, floats * sizeof(float)));
    if (ints > 0) CUDA_CHECK(cudaMalloc(&m.acts_int, ints * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&m.inputs, N * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&m.targets, N * sizeof(int)));
    floats = ints = 0;
    model_for_each_activation(m, B, T, [&](float*& p, size_t n) { p = m.acts + floats; floats += n; },
                              [&](int*& p, size_t n) { p = m.acts_int + ints; ints += n; });
    for (BlockActivations& a : m.blocks)
        if (cfg.moe()) moe_activation_views(a.moe, a.moe_floats, a.moe_ints, cfg, (int)N);

    if (cfg.moe() && cfg.router_noise) router_noise_create(m.router_noise, seed);
}

inline void model_free(Model& m) {
    router_noise_destroy(m.router_noise);
    cudaFree(m.params); cudaFree(m.grads); cudaFree(m.adam_m); cudaFree(m.adam_v);
    if (m.router_bias) cudaFree(m.router_bias);
    cudaFree(m.acts); if (m.acts_int) cudaFree(m.acts_int);
    cudaFree(m.inputs); cudaFree(m.targets);
    m = Model{};
}

// ----------------------------------------------------------------------------------------------
// small kernels that only the model needs

// losses = [total, ce, aux sum, z sum, entropy sum] start as [ce, ce, 0, 0, 0]; each MoE layer adds
// its share (the entropy only with --entropy-coef)
__global__ void losses_init_kernel(float* losses /*(5)*/, const float* ce /*(1)*/) {
    losses[0] = ce[0]; losses[1] = ce[0]; losses[2] = 0.0f; losses[3] = 0.0f; losses[4] = 0.0f;
}

// ----------------------------------------------------------------------------------------------
// forward

// Runs the model on inputs (B, T) (host ints). With targets, also the loss; with training and
// targets, also dlogits (the fused classifier computes both) and router noise for this step.
// B <= m.B and T <= m.T; `step` selects the router-noise draw so a resumed run sees the same noise.
inline void model_forward(Model& m, const int* inputs_host, const int* targets_host, int B, int T, bool training, long step) {
    const ModelConfig& c = m.cfg;
    const int C = c.dim, V = c.vocab_size, NH = c.heads, L = c.layers;
    const int N = B * T;
    const int F = c.ffn_hidden;
    m.cur_B = B; m.cur_T = T; m.cur_training = training && targets_host != nullptr;
    // asynchronous uploads: a synchronous cudaMemcpy would make the host wait for the device
    CUDA_CHECK(cudaMemcpyAsync(m.inputs, inputs_host, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, 0));
    if (targets_host)
        CUDA_CHECK(cudaMemcpyAsync(m.targets, targets_host, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, 0));

    if (c.moe() && m.blocks[0].moe.N != N)  // a different batch shape: new capacity, new views
        for (BlockActivations& a : m.blocks)    // (they fit: the regions were sized for the full batch)
            moe_activation_views(a.moe, a.moe_floats, a.moe_ints, c, N);

    encoder_forward(m.encoded, m.inputs, m.w.wte, m.w.wpe, B, T, C);
    for (int l = 0; l < L; l++) {
        const BlockWeights& w = m.w.blocks[l];
        BlockActivations& a = m.blocks[l];
        const float* residual = l == 0 ? m.encoded : m.blocks[l - 1].residual3;
        layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, w.ln1_w, w.ln1_b, N, C);
        matmul_forward(a.qkv, a.ln1, w.qkv_w, w.qkv_b, N, C, 3 * C);
        attention_forward(a.atty, a.qkvr, a.att, a.qkv, B, T, C, NH);
        matmul_forward(a.attproj, a.atty, w.attproj_w, w.attproj_b, N, C, C);
        residual_forward(a.residual2, residual, a.attproj, (long)N * C);
        layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.residual2, w.ln2_w, w.ln2_b, N, C);
        if (!c.moe()) {
            matmul_forward(a.fch, a.ln2, w.fc_w, w.fc_b, N, C, F);
            gelu_forward(a.fch_gelu, a.fch, (long)N * F);
            matmul_forward(a.ffn_out, a.fch_gelu, w.fcproj_w, w.fcproj_b, N, F, C);
        } else {
            // router noise while training: draw number step*L + l of the run, so a resumed run
            // sees the noise it would have seen
            RouterNoise* noise = training && c.router_noise ? &m.router_noise : nullptr;
            moe_forward(a.ffn_out, a.moe, w.moe, a.ln2, c, N, noise, (unsigned long long)step * L + l);
        }
        residual_forward(a.residual3, a.residual2, a.ffn_out, (long)N * C);
    }
    const float* x = m.blocks[L - 1].residual3;
    layernorm_forward(m.lnf, m.lnf_mean, m.lnf_rstd, x, m.w.lnf_w, m.w.lnf_b, N, C);
    matmul_forward(m.logits, m.lnf, m.w.wte, nullptr, N, C, V);
    if (targets_host) {
        crossentropy_forward_backward(m.token_losses, m.cur_training ? m.dlogits : nullptr, m.logits, m.targets,
                                      N, V, 1.0f / N);
        mean_forward(m.losses + 1, m.token_losses, N);  // ce into losses[1] first
        losses_init_kernel<<<1, 1>>>(m.losses, m.losses + 1);
        CUDA_CHECK(cudaGetLastError());
        if (c.moe())
            for (int l = 0; l < L; l++) moe_loss_forward(m.losses, m.blocks[l].moe, c);
    }
}

struct Losses { float total, ce, aux, z, entropy; };  // entropy: sum over layers of H (0 without --entropy-coef)
// The only device-to-host copy of a training step, made at log steps.
inline Losses model_read_losses(const Model& m) {
    float h[5];
    CUDA_CHECK(cudaMemcpy(h, m.losses, sizeof(h), cudaMemcpyDeviceToHost));
    return Losses{h[0], h[1], h[2], h[3], h[4]};
}

// ----------------------------------------------------------------------------------------------
// backward

inline void model_zero_grad(Model& m) {
    CUDA_CHECK(cudaMemset(m.grads, 0, m.num_parameters * sizeof(float)));
}

// Gradients of the last training forward's total loss, accumulated into m.grads.
inline void model_backward(Model& m) {
    if (!m.cur_training) { fprintf(stderr, "model_backward: the last forward was not a training forward\n"); exit(1); }
    const ModelConfig& c = m.cfg;
    const int B = m.cur_B, T = m.cur_T, C = c.dim, V = c.vocab_size, NH = c.heads, L = c.layers;
    const int N = B * T, F = c.ffn_hidden;

    // logits = lnf wte^T  ->  d lnf, d wte (tied: the encoder adds its part below)
    matmul_backward(m.dln, m.g.wte, nullptr, m.dlogits, m.lnf, m.w.wte, N, C, V);
    CUDA_CHECK(cudaMemset(m.dresidual, 0, (size_t)N * C * sizeof(float)));
    layernorm_backward(m.dresidual, m.g.lnf_w, m.g.lnf_b, m.dln, m.blocks[L - 1].residual3, m.w.lnf_w,
                       m.lnf_mean, m.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const BlockWeights& w = m.w.blocks[l];
        const BlockWeights& g = m.g.blocks[l];
        BlockActivations& a = m.blocks[l];
        const float* residual = l == 0 ? m.encoded : m.blocks[l - 1].residual3;
        // x3 = x2 + FFN(LN2(x2)): dresidual is d x3; the FFN path adds into it through LN2
        if (!c.moe()) {
            matmul_backward(m.dfch_gelu, g.fcproj_w, g.fcproj_b, m.dresidual, a.fch_gelu, w.fcproj_w, N, F, C);
            gelu_backward(m.dfch, a.fch, m.dfch_gelu, (long)N * F);
            matmul_backward(m.dln, g.fc_w, g.fc_b, m.dfch, a.ln2, w.fc_w, N, C, F);
        } else {
            moe_backward(m.dln, g.moe, m.dresidual, a.moe, w.moe, a.ln2, c);
        }
        layernorm_backward(m.dresidual, g.ln2_w, g.ln2_b, m.dln, a.residual2, w.ln2_w, a.ln2_mean, a.ln2_rstd, N, C);
        // x2 = x + c_proj(attention(LN1(x)))
        matmul_backward(m.datty, g.attproj_w, g.attproj_b, m.dresidual, a.atty, w.attproj_w, N, C, C);
        attention_backward(m.dqkv, m.att_scratch, m.datty, a.qkvr, a.att, B, T, C, NH);
        matmul_backward(m.dln, g.qkv_w, g.qkv_b, m.dqkv, a.ln1, w.qkv_w, N, C, 3 * C);
        layernorm_backward(m.dresidual, g.ln1_w, g.ln1_b, m.dln, residual, w.ln1_w, a.ln1_mean, a.ln1_rstd, N, C);
    }
    encoder_backward(m.g.wte, m.g.wpe, m.dresidual, m.inputs, B, T, C, V);
}

// ----------------------------------------------------------------------------------------------
// update

struct OptimConfig {
    float lr, beta1, beta2, eps, weight_decay, grad_clip;
};

// Global-norm clipping then AdamW on every tensor (decay on matrices only). `step` is 1-based.
// Everything stays on the device: the clip scale is read by the update kernel from device memory.
// With --bias-rate, then every MoE layer's selection bias moves by the load of the step's training
// forward (the last forward: b_i += gamma sign(N*K/E - routed_i), moe_bias_update).
inline void model_update(Model& m, const OptimConfig& o, int step) {
    global_norm_squared(m.grad_norm_sq, m.norm_scratch, m.grads, (long)m.num_parameters);
    clip_scale(m.grad_scale, m.grad_norm_sq, o.grad_clip);
    for (const auto& p : m.tensors)
        adamw_update(m.params + p.offset, m.grads + p.offset, m.adam_m + p.offset, m.adam_v + p.offset,
                     (long)p.numel, o.lr, o.beta1, o.beta2, o.eps, p.is_matrix ? o.weight_decay : 0.0f, step,
                     m.grad_scale);
    if (m.router_bias)
        for (int l = 0; l < m.cfg.layers; l++) {
            const MoeActivations& a = m.blocks[l].moe;
            moe_bias_update(m.w.blocks[l].moe.router_bias, a.tokens_per_expert_routed, a.N, m.cfg.experts,
                            m.cfg.top_k, m.cfg.bias_rate);
        }
}

// Global gradient L2 norm of the last update (before clipping); a device-to-host copy.
inline float model_read_grad_norm(const Model& m) {
    float h;
    CUDA_CHECK(cudaMemcpy(&h, m.grad_norm_sq, sizeof(float), cudaMemcpyDeviceToHost));
    return sqrtf(h);
}

// One row of logits (V floats) at (b, t) of the last forward, copied to the host (for sampling).
inline void model_read_logits(const Model& m, int b, int t, float* out_host) {
    const size_t row = (size_t)b * m.cur_T + t;
    CUDA_CHECK(cudaMemcpy(out_host, m.logits + row * m.cfg.vocab_size, m.cfg.vocab_size * sizeof(float),
                          cudaMemcpyDeviceToHost));
}
