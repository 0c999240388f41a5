// tests/reference_model.h: the whole model (model.cuh) composed from the plain C++ references.
//
// One training step on the host: forward, loss, backward, clip + AdamW, written with the ref_*
// functions of tests/reference.h and tests/reference_moe.h over a host copy of the parameters laid
// out exactly like model.cuh's (model_parameter_table). The tests run the device model and this
// composition on the same weights and batch and compare logits, losses, routing, every gradient
// and the updated parameters.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "model.cuh"
#include "tests/reference.h"
#include "tests/reference_moe.h"

struct RefModelResult {
    std::vector<float> logits;                 // (N, V)
    float total = 0, ce = 0, aux = 0, z = 0;   // losses
    std::vector<float> grads;                  // (num_parameters), model.cuh layout
    std::vector<RefMoeState<float>> moe;       // per block (MoE only)
};

struct RefModel {
    ModelConfig cfg;
    std::vector<ParamTensor> tensors;
    std::vector<float> params, adam_m, adam_v;

    RefModel(const ModelConfig& c, const std::vector<float>& initial) : cfg(c), tensors(model_parameter_table(c)) {
        params = initial;
        adam_m.assign(params.size(), 0.0f);
        adam_v.assign(params.size(), 0.0f);
    }
    size_t offset(const std::string& name) const {
        for (const auto& t : tensors) if (t.name == name) return t.offset;
        fprintf(stderr, "reference_model: no tensor %s\n", name.c_str());
        abort();
    }
    const float* p(const std::string& name) const { return params.data() + offset(name); }

    // Host copy of one block's MoE weights (or gradients) in the reference's struct.
    RefMoeParams<float> moe_params(const std::vector<float>& from, int l, const MoeConfig& mc) const {
        RefMoeParams<float> w(mc);
        const std::string h = "h." + std::to_string(l) + ".moe.";
        auto copy = [&](std::vector<float>& dst, const std::string& name) {
            if (dst.empty()) return;
            const float* src = from.data() + offset(h + name);
            dst.assign(src, src + dst.size());
        };
        copy(w.router, "router.weight"); copy(w.noise, "noise.weight");
        copy(w.fc_w, "experts.c_fc.weight"); copy(w.fc_b, "experts.c_fc.bias");
        copy(w.proj_w, "experts.c_proj.weight"); copy(w.proj_b, "experts.c_proj.bias");
        if (mc.S > 0) {
            copy(w.shared_fc_w, "shared.c_fc.weight"); copy(w.shared_fc_b, "shared.c_fc.bias");
            copy(w.shared_proj_w, "shared.c_proj.weight"); copy(w.shared_proj_b, "shared.c_proj.bias");
        }
        return w;
    }
    void add_moe_grads(std::vector<float>& grads, int l, RefMoeParams<float>& g, const MoeConfig& mc) const {
        const std::string h = "h." + std::to_string(l) + ".moe.";
        auto add = [&](const std::vector<float>& src, const std::string& name) {
            if (src.empty()) return;
            float* dst = grads.data() + offset(h + name);
            for (size_t i = 0; i < src.size(); i++) dst[i] += src[i];
        };
        add(g.router, "router.weight"); add(g.noise, "noise.weight");
        add(g.fc_w, "experts.c_fc.weight"); add(g.fc_b, "experts.c_fc.bias");
        add(g.proj_w, "experts.c_proj.weight"); add(g.proj_b, "experts.c_proj.bias");
        if (mc.S > 0) {
            add(g.shared_fc_w, "shared.c_fc.weight"); add(g.shared_fc_b, "shared.c_fc.bias");
            add(g.shared_proj_w, "shared.c_proj.weight"); add(g.shared_proj_b, "shared.c_proj.bias");
        }
    }

    // Forward and backward of one batch. noise_eps[l] (N*E) holds the draws of block l when noise applies.
    RefModelResult step(const int* inputs, const int* targets, int B, int T, bool training,
                        const std::vector<std::vector<float>>& noise_eps) const {
        const int C = cfg.dim, V = cfg.vocab_size, NH = cfg.heads, L = cfg.layers, F = cfg.ffn_hidden;
        const int N = B * T;
        const size_t NC = (size_t)N * C;
        RefModelResult r;
        MoeConfig mc{};
        if (cfg.moe()) mc = model_moe_config(cfg, N);

        // ---- forward, keeping what the backward needs
        struct Block {
            std::vector<float> in, ln1, ln1_mean, ln1_rstd, qkv, qkvr, att, atty, attproj, res2, ln2, ln2_mean,
                ln2_rstd, fch, fch_gelu, ffn_out;
        };
        std::vector<Block> blk(L);
        std::vector<float> x(NC);
        ref_encoder_forward(x.data(), inputs, p("wte"), p("wpe"), B, T, C);
        r.moe.clear();
        for (int l = 0; l < L; l++) {
            Block& a = blk[l];
            const std::string h = "h." + std::to_string(l) + ".";
            a.in = x;
            a.ln1.resize(NC); a.ln1_mean.resize(N); a.ln1_rstd.resize(N);
            ref_layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), a.in.data(), p(h + "ln_1.weight"),
                                  p(h + "ln_1.bias"), N, C);
            a.qkv.resize(3 * NC);
            ref_matmul_forward(a.qkv.data(), a.ln1.data(), p(h + "attn.c_attn.weight"), p(h + "attn.c_attn.bias"), N, C, 3 * C);
            a.qkvr.resize(3 * NC); a.att.resize((size_t)B * NH * T * T); a.atty.resize(NC);
            ref_attention_forward(a.atty.data(), a.qkvr.data(), a.att.data(), a.qkv.data(), B, T, C, NH);
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
                RefMoeState<float> st(mc);
                if (training && cfg.router_noise) st.noise_eps = noise_eps[l];
                RefMoeParams<float> w = moe_params(params, l, mc);
                ref_moe_forward(a.ffn_out.data(), st, w, a.ln2.data(), mc, training);
                r.moe.push_back(st);
            }
            ref_residual_forward(x.data(), a.res2.data(), a.ffn_out.data(), (long)NC);
        }
        std::vector<float> lnf(NC), lnf_mean(N), lnf_rstd(N);
        ref_layernorm_forward(lnf.data(), lnf_mean.data(), lnf_rstd.data(), x.data(), p("ln_f.weight"), p("ln_f.bias"), N, C);
        r.logits.resize((size_t)N * V);
        ref_matmul_forward(r.logits.data(), lnf.data(), p("wte"), (const float*)nullptr, N, C, V);
        std::vector<float> token_losses(N), dlogits((size_t)N * V);
        ref_crossentropy_forward_backward(token_losses.data(), dlogits.data(), r.logits.data(), targets, N, V, 1.0f / N);
        ref_mean_forward(&r.ce, token_losses.data(), N);
        r.total = r.ce;
        for (const auto& st : r.moe) {
            r.aux += st.aux; r.z += st.z;
            r.total += cfg.aux_coef * st.aux + cfg.z_coef * st.z;
        }

        // ---- backward
        r.grads.assign(params.size(), 0.0f);
        auto g = [&](const std::string& name) { return r.grads.data() + offset(name); };
        std::vector<float> dln(NC), dres(NC, 0.0f), datty(NC), dqkv(3 * NC), dfch, dfch_gelu;
        ref_matmul_backward(dln.data(), g("wte"), (float*)nullptr, dlogits.data(), lnf.data(), p("wte"), N, C, V);
        ref_layernorm_backward(dres.data(), g("ln_f.weight"), g("ln_f.bias"), dln.data(), x.data(), p("ln_f.weight"),
                               lnf_mean.data(), lnf_rstd.data(), N, C);
        for (int l = L - 1; l >= 0; l--) {
            Block& a = blk[l];
            const std::string h = "h." + std::to_string(l) + ".";
            if (!cfg.moe()) {
                dfch.assign((size_t)N * F, 0.0f); dfch_gelu.assign((size_t)N * F, 0.0f);
                ref_matmul_backward(dfch_gelu.data(), g(h + "mlp.c_proj.weight"), g(h + "mlp.c_proj.bias"), dres.data(),
                                    a.fch_gelu.data(), p(h + "mlp.c_proj.weight"), N, F, C);
                ref_gelu_backward(dfch.data(), a.fch.data(), dfch_gelu.data(), (long)N * F);
                ref_matmul_backward(dln.data(), g(h + "mlp.c_fc.weight"), g(h + "mlp.c_fc.bias"), dfch.data(), a.ln2.data(),
                                    p(h + "mlp.c_fc.weight"), N, C, F);
            } else {
                RefMoeParams<float> w = moe_params(params, l, mc);
                RefMoeParams<float> gm(mc);
                ref_moe_backward(dln.data(), gm, dres.data(), r.moe[l], w, a.ln2.data(), mc, cfg.aux_coef, cfg.z_coef,
                                 training);
                add_moe_grads(r.grads, l, gm, mc);
            }
            ref_layernorm_backward(dres.data(), g(h + "ln_2.weight"), g(h + "ln_2.bias"), dln.data(), a.res2.data(),
                                   p(h + "ln_2.weight"), a.ln2_mean.data(), a.ln2_rstd.data(), N, C);
            ref_matmul_backward(datty.data(), g(h + "attn.c_proj.weight"), g(h + "attn.c_proj.bias"), dres.data(),
                                a.atty.data(), p(h + "attn.c_proj.weight"), N, C, C);
            ref_attention_backward(dqkv.data(), (float*)nullptr, datty.data(), a.qkvr.data(), a.att.data(), B, T, C, NH);
            ref_matmul_backward(dln.data(), g(h + "attn.c_attn.weight"), g(h + "attn.c_attn.bias"), dqkv.data(),
                                a.ln1.data(), p(h + "attn.c_attn.weight"), N, C, 3 * C);
            ref_layernorm_backward(dres.data(), g(h + "ln_1.weight"), g(h + "ln_1.bias"), dln.data(), a.in.data(),
                                   p(h + "ln_1.weight"), a.ln1_mean.data(), a.ln1_rstd.data(), N, C);
        }
        ref_encoder_backward(g("wte"), g("wpe"), dres.data(), inputs, B, T, C, V);
        return r;
    }

    // Clip by the global norm, then AdamW on every tensor (decay on matrices only), as model_update.
    void update(const std::vector<float>& grads, const OptimConfig& o, int step_1based) {
        float norm_sq = 0, scale = 0;
        ref_global_norm_squared(&norm_sq, (float*)nullptr, grads.data(), (long)grads.size());
        ref_clip_scale(&scale, &norm_sq, o.grad_clip);
        for (const auto& t : tensors)
            ref_adamw_update(params.data() + t.offset, grads.data() + t.offset, adam_m.data() + t.offset,
                             adam_v.data() + t.offset, (long)t.numel, o.lr, o.beta1, o.beta2, o.eps,
                             t.is_matrix ? o.weight_decay : 0.0f, step_1based, &scale);
    }
};
