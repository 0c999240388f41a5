// model.cuh: the GPT (dense or Mixture-of-Experts) assembled from the layer kernels.
//
// x = wte[idx] + wpe[t]
// for each block:  x = x + attn(LN1(x));   x = x + FFN(LN2(x))      (FFN dense or MoE)
// logits = LN_f(x) wte^T;  loss = CE + aux_coef * sum aux + z_coef * sum z
//
// Memory follows llm.c: parameters, gradients, AdamW moments and activations each live in one
// device allocation; every tensor is a named view into it. The tensor names are MODEL_SPEC.md's.
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

// ----------------------------------------------------------------------------------------------
// configuration

struct ModelConfig {
    int vocab_size = 0;      // V
    int block_size = 0;      // maximum sequence length
    int layers = 0;          // L
    int heads = 0;           // NH
    int dim = 0;             // C
    int ffn_hidden = 0;      // dense FFN hidden width F (used when experts == 0)
    int experts = 0;         // E routed experts per block; 0 = dense FFN
    int top_k = 0;           // K
    int expert_hidden = 0;   // F of a routed expert
    int shared_experts = 0;  // S
    int shared_hidden = 0;   // Fs
    double capacity_factor = 0.0;
    bool router_noise = false;
    float aux_coef = 0.0f;
    float z_coef = 0.0f;
    bool moe() const { return experts > 0; }
};

// A named view of one parameter tensor (and, at the same offset, its gradient and moments).
struct ParamTensor {
    std::string name;          // MODEL_SPEC name, e.g. "h.0.attn.c_attn.weight"
    std::vector<int> shape;
    size_t offset = 0;         // in floats, into every parameter-shaped allocation
    size_t numel = 0;
    bool is_matrix = false;    // weight decay applies (matrices only; never biases or LayerNorm)
    float init_std = 0.0f;     // 0 = constant init
    float init_value = 0.0f;   // for constant init (LayerNorm weight 1, biases 0)
};

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
    std::vector<ParamTensor> tensors;       // every parameter, MODEL_SPEC names, fixed order
    size_t num_parameters = 0;
    float* params = nullptr;                // (num_parameters)
    float* grads = nullptr;                 // (num_parameters)
    float* adam_m = nullptr;                // (num_parameters)
    float* adam_v = nullptr;                // (num_parameters)
    Weights w, g;                           // views of params and grads
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
    float* losses = nullptr;                // (4): total, ce, aux (sum over layers), z (sum over layers)
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
    std::vector<MoeConfig> moe_cfg;         // per block, for the current (B, T)
    curandGenerator_t noise_rng = nullptr;
    unsigned long long noise_position = ~0ull;  // where noise_rng's sequence stands (re-seeking is slow)
    uint64_t seed = 0;
    // the (B, T, training) of the last forward pass
    int cur_B = 0, cur_T = 0;
    bool cur_training = false;
};

// ----------------------------------------------------------------------------------------------
// parameter table

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

// Parameters a token actually uses: everything except the E-K routed experts it skips per MoE block.
inline size_t model_active_parameters(const ModelConfig& c, size_t total) {
    if (!c.moe()) return total;
    size_t per_expert = 2 * (size_t)c.expert_hidden * c.dim + c.expert_hidden + c.dim;
    return total - (size_t)c.layers * (size_t)(c.experts - c.top_k) * per_expert;
}

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
        b.moe.fc_w = at(h + "moe.experts.c_fc.weight");
        b.moe.fc_b = at(h + "moe.experts.c_fc.bias");
        b.moe.proj_w = at(h + "moe.experts.c_proj.weight");
        b.moe.proj_b = at(h + "moe.experts.c_proj.bias");
        b.moe.shared_fc_w = at(h + "moe.shared.c_fc.weight");
        b.moe.shared_fc_b = at(h + "moe.shared.c_fc.bias");
        b.moe.shared_proj_w = at(h + "moe.shared.c_proj.weight");
        b.moe.shared_proj_b = at(h + "moe.shared.c_proj.bias");
    }
}

inline MoeConfig model_moe_config(const ModelConfig& c, int N) {
    MoeConfig mc{};
    mc.N = N; mc.C = c.dim; mc.E = c.experts; mc.K = c.top_k; mc.F = c.expert_hidden;
    mc.S = c.shared_experts; mc.Fs = c.shared_hidden; mc.capacity_factor = c.capacity_factor;
    mc.noise = c.router_noise;
    moe_config_finalize(mc);
    return mc;
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

inline void model_build(Model& m, const ModelConfig& cfg, int B, int T, uint64_t seed) {
    m.cfg = cfg; m.B = B; m.T = T; m.seed = seed;
    const int C = cfg.dim, V = cfg.vocab_size, L = cfg.layers, NH = cfg.heads;
    const size_t N = (size_t)B * T;
    const int F = cfg.moe() ? 0 : cfg.ffn_hidden;

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

    // activations: count, allocate once, then hand out views in the same order
    MoeConfig mc{};
    if (cfg.moe()) mc = model_moe_config(cfg, (int)N);
    const size_t moe_floats = cfg.moe() ? moe_activation_floats(mc) : 0;
    const size_t moe_ints = cfg.moe() ? moe_activation_ints(mc) : 0;
    const size_t per_block = N * C * 7 + N * 4 + N * 3 * C + 3 * N * C + (size_t)B * NH * T * T + 2 * N * F + moe_floats;
    const size_t Fmax = (size_t)(F > 0 ? F : 1);
    const size_t total = N * C + per_block * L + N * C + 2 * N + 2 * N * V + N + 4 +
                         N * C * 3 + N * 3 * C + 2 * N * Fmax + attention_scratch_floats(B, T, C, NH) + 1024 + 2;
    CUDA_CHECK(cudaMalloc(&m.acts, total * sizeof(float)));
    if (moe_ints > 0) CUDA_CHECK(cudaMalloc(&m.acts_int, moe_ints * L * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&m.inputs, N * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&m.targets, N * sizeof(int)));
    float* p = m.acts;
    auto take = [&](size_t n) { float* v = p; p += n; return v; };
    m.encoded = take(N * C);
    m.blocks.assign(L, BlockActivations{});
    for (int l = 0; l < L; l++) {
        BlockActivations& a = m.blocks[l];
        a.ln1 = take(N * C); a.ln1_mean = take(N); a.ln1_rstd = take(N);
        a.qkv = take(N * 3 * C); a.qkvr = take(3 * N * C); a.att = take((size_t)B * NH * T * T);
        a.atty = take(N * C); a.attproj = take(N * C); a.residual2 = take(N * C);
        a.ln2 = take(N * C); a.ln2_mean = take(N); a.ln2_rstd = take(N);
        a.fch = take(N * F); a.fch_gelu = take(N * F);
        a.ffn_out = take(N * C); a.residual3 = take(N * C);
        if (cfg.moe()) {
            a.moe_floats = take(moe_floats);
            a.moe_ints = m.acts_int + (size_t)l * moe_ints;
            moe_activation_views(a.moe, a.moe_floats, a.moe_ints, mc);
        }
    }
    m.lnf = take(N * C); m.lnf_mean = take(N); m.lnf_rstd = take(N);
    m.logits = take(N * V); m.dlogits = take(N * V); m.token_losses = take(N); m.losses = take(4);
    m.dresidual = take(N * C); m.dln = take(N * C); m.datty = take(N * C); m.dqkv = take(N * 3 * C);
    m.dfch = take(N * Fmax); m.dfch_gelu = take(N * Fmax);
    m.att_scratch = take(attention_scratch_floats(B, T, C, NH));
    m.norm_scratch = take(1024); m.grad_norm_sq = take(1); m.grad_scale = take(1);
    if ((size_t)(p - m.acts) > total) { fprintf(stderr, "model_build: activation layout overflow\n"); exit(1); }
    m.moe_cfg.assign(L, mc);

    if (cfg.moe() && cfg.router_noise) {
        CURAND_CHECK(create_generator(&m.noise_rng, CURAND_RNG_PSEUDO_PHILOX4_32_10));
        CURAND_CHECK(curandSetPseudoRandomGeneratorSeed(m.noise_rng, seed ^ 0x6E6F697365ull));
    }
}

inline void model_free(Model& m) {
    if (m.noise_rng) curandDestroyGenerator(m.noise_rng);
    cudaFree(m.params); cudaFree(m.grads); cudaFree(m.adam_m); cudaFree(m.adam_v);
    cudaFree(m.acts); if (m.acts_int) cudaFree(m.acts_int);
    cudaFree(m.inputs); cudaFree(m.targets);
    m = Model{};
}

// ----------------------------------------------------------------------------------------------
// small kernels that only the model needs

// losses = [total, ce, aux_sum, z_sum]: starts as [ce, ce, 0, 0]
__global__ void losses_init_kernel(float* losses /*(4)*/, const float* ce /*(1)*/) {
    losses[0] = ce[0]; losses[1] = ce[0]; losses[2] = 0.0f; losses[3] = 0.0f;
}
// adds one MoE layer's aux and z: total += aux_coef*aux + z_coef*z
__global__ void losses_add_layer_kernel(float* losses /*(4)*/, const float* aux /*(1)*/, const float* z /*(1)*/,
                                        float aux_coef, float z_coef) {
    losses[0] += aux_coef * aux[0] + z_coef * z[0];
    losses[2] += aux[0];
    losses[3] += z[0];
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

    if (c.moe() && m.moe_cfg[0].N != N) {  // a different batch shape: new capacity, new views
        MoeConfig mc = model_moe_config(c, N);  // fits: the regions were sized for the full batch
        for (int l = 0; l < L; l++) {
            moe_activation_views(m.blocks[l].moe, m.blocks[l].moe_floats, m.blocks[l].moe_ints, mc);
            m.moe_cfg[l] = mc;
        }
    }

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
            const MoeConfig& mc = m.moe_cfg[l];
            bool noisy = training && c.router_noise;
            if (noisy) {  // eps ~ N(0, 1), a fresh draw per (step, layer), reproducible on resume
                size_t count = (size_t)N * c.experts;
                count += count % 2;  // cuRAND's normal generator wants an even count
                const unsigned long long offset = (unsigned long long)(step * L + l) * count;
                // Seek only when the sequence is not already there (after a resume, or an odd step
                // order): re-seeking re-initialises cuRAND's host generator, which costs milliseconds.
                if (offset != m.noise_position) CURAND_CHECK(curandSetGeneratorOffset(m.noise_rng, offset));
                CURAND_CHECK(curandGenerateNormal(m.noise_rng, a.moe.noise_eps, count, 0.0f, 1.0f));
                m.noise_position = offset + count;
            }
            moe_forward(a.ffn_out, a.moe, w.moe, a.ln2, mc, noisy);
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
        LAUNCH(losses_init_kernel, 1, 1, 0, 0, m.losses, m.losses + 1);
        CUDA_CHECK_LAUNCH();
        if (c.moe())
            for (int l = 0; l < L; l++) {
                LAUNCH(losses_add_layer_kernel, 1, 1, 0, 0, m.losses, m.blocks[l].moe.aux, m.blocks[l].moe.z,
                       c.aux_coef, c.z_coef);
                CUDA_CHECK_LAUNCH();
            }
    }
}

struct Losses { float total, ce, aux, z; };
// The only device-to-host copy of a training step, made at log steps.
inline Losses model_read_losses(const Model& m) {
    float h[4];
    CUDA_CHECK(cudaMemcpy(h, m.losses, sizeof(h), cudaMemcpyDeviceToHost));
    return Losses{h[0], h[1], h[2], h[3]};
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
            moe_backward(m.dln, g.moe, m.dresidual, a.moe, w.moe, a.ln2, m.moe_cfg[l], c.aux_coef, c.z_coef,
                         c.router_noise);
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
inline void model_update(Model& m, const OptimConfig& o, int step) {
    global_norm_squared(m.grad_norm_sq, m.norm_scratch, m.grads, (long)m.num_parameters);
    clip_scale(m.grad_scale, m.grad_norm_sq, o.grad_clip);
    for (const auto& p : m.tensors)
        adamw_update(m.params + p.offset, m.grads + p.offset, m.adam_m + p.offset, m.adam_v + p.offset,
                     (long)p.numel, o.lr, o.beta1, o.beta2, o.eps, p.is_matrix ? o.weight_decay : 0.0f, step,
                     m.grad_scale);
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
