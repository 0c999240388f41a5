// test_reference_grads.cpp: the backward passes of reference_model.h against central finite
// differences, in double precision: every GPT layer's, then a whole training step's (every
// parameter's gradient of the total loss, dense and MoE). The kernels are tested against these
// references (test_gpt_kernels.cpp, test_moe.cpp, test_model.cpp), so together they tie the CUDA
// gradients to the forward math. (The MoE layer alone is checked the same way in test_moe.cpp.)
//
// Each test builds a scalar loss L = sum(out * G) for a fixed random G (for cross-entropy: the
// mean of the per-position losses), runs the reference backward with dout = G, and compares every
// gradient entry with (L(x + eps) - L(x - eps)) / (2 eps), eps = 1e-6. In double the truncation
// error is ~eps^2 and the rounding error ~1e-16 |L| / eps ~ 1e-10, so a relative error of 1e-6
// leaves a wide margin while still catching any wrong term.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "reference_model.h"

namespace {

using Vec = std::vector<double>;

Vec random_vec(size_t n, std::mt19937& rng, double scale = 1.0) {
    std::normal_distribution<double> dist(0.0, scale);
    Vec v(n);
    for (double& x : v) x = dist(rng);
    return v;
}

double dot(const Vec& a, const Vec& b) {
    double s = 0.0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// Central differences of loss() with respect to every entry of x (x is restored afterwards).
Vec numeric_grad(Vec& x, const std::function<double()>& loss, double eps = 1e-6) {
    Vec g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        const double saved = x[i];
        x[i] = saved + eps;
        const double plus = loss();
        x[i] = saved - eps;
        const double minus = loss();
        x[i] = saved;
        g[i] = (plus - minus) / (2 * eps);
    }
    return g;
}

// |analytic - numeric| <= 1e-6 * (|analytic| + |numeric|) + 1e-9 for every entry.
void expect_grad_near(const Vec& analytic, const Vec& numeric, const char* what) {
    ASSERT_EQ(analytic.size(), numeric.size()) << what;
    double max_abs = 0.0;
    for (double x : analytic) max_abs = std::max(max_abs, std::fabs(x));
    EXPECT_GT(max_abs, 1e-3) << what << ": gradient is (almost) zero, the check would prove nothing";
    for (size_t i = 0; i < analytic.size(); i++) {
        const double tol = 1e-6 * (std::fabs(analytic[i]) + std::fabs(numeric[i])) + 1e-9;
        EXPECT_NEAR(analytic[i], numeric[i], tol) << what << "[" << i << "]";
    }
}

TEST(ReferenceGrads, Encoder) {
    const int B = 2, T = 3, C = 4, V = 5, maxT = 4;
    std::mt19937 rng(1);
    Vec wte = random_vec(V * C, rng), wpe = random_vec(maxT * C, rng), G = random_vec(B * T * C, rng);
    const std::vector<int> idx = {3, 0, 3, 1, 4, 3};
    Vec out(B * T * C);
    auto loss = [&] {
        ref_encoder_forward(out.data(), idx.data(), wte.data(), wpe.data(), B, T, C);
        return dot(out, G);
    };
    Vec dwte(V * C, 0.0), dwpe(maxT * C, 0.0);
    ref_encoder_backward(dwte.data(), dwpe.data(), G.data(), idx.data(), B, T, C, V);
    // token 2 never occurs and position 3 is past T: those rows must stay exactly 0
    expect_grad_near(dwte, numeric_grad(wte, loss), "dwte");
    expect_grad_near(dwpe, numeric_grad(wpe, loss), "dwpe");
    for (int c = 0; c < C; c++) {
        EXPECT_EQ(dwte[2 * C + c], 0.0);
        EXPECT_EQ(dwpe[3 * C + c], 0.0);
    }
}

TEST(ReferenceGrads, LayerNorm) {
    const int N = 3, C = 7;
    std::mt19937 rng(2);
    Vec inp = random_vec(N * C, rng, 2.0), weight = random_vec(C, rng), bias = random_vec(C, rng);
    const Vec G = random_vec(N * C, rng);
    Vec out(N * C), mean(N), rstd(N);
    auto loss = [&] {
        ref_layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);
        return dot(out, G);
    };
    loss();
    Vec dinp(N * C, 0.0), dweight(C, 0.0), dbias(C, 0.0);
    ref_layernorm_backward(dinp.data(), dweight.data(), dbias.data(), G.data(), inp.data(), weight.data(),
                           mean.data(), rstd.data(), N, C);
    expect_grad_near(dinp, numeric_grad(inp, loss), "dinp");
    expect_grad_near(dweight, numeric_grad(weight, loss), "dweight");
    expect_grad_near(dbias, numeric_grad(bias, loss), "dbias");
}

TEST(ReferenceGrads, Matmul) {
    const int N = 3, IC = 5, OC = 4;
    std::mt19937 rng(3);
    Vec inp = random_vec(N * IC, rng), weight = random_vec(OC * IC, rng), bias = random_vec(OC, rng);
    const Vec G = random_vec(N * OC, rng);
    Vec out(N * OC);
    auto loss = [&] {
        ref_matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), N, IC, OC);
        return dot(out, G);
    };
    Vec dinp(N * IC, 0.0), dweight(OC * IC, 0.0), dbias(OC, 0.0);
    ref_matmul_backward(dinp.data(), dweight.data(), dbias.data(), G.data(), inp.data(), weight.data(), N, IC, OC);
    expect_grad_near(dinp, numeric_grad(inp, loss), "dinp");
    expect_grad_near(dweight, numeric_grad(weight, loss), "dweight");
    expect_grad_near(dbias, numeric_grad(bias, loss), "dbias");

    Vec dbias2(OC, 0.0);
    ref_bias_backward(dbias2.data(), G.data(), N, OC);
    expect_grad_near(dbias2, numeric_grad(bias, loss), "bias_backward");
}

// The whole attention block: qkv -> (permute, q k^T, causal softmax, att v) -> out.
TEST(ReferenceGrads, Attention) {
    const int B = 2, T = 4, C = 6, NH = 2, hs = C / NH;
    std::mt19937 rng(4);
    Vec qkv = random_vec(B * T * 3 * C, rng);
    const Vec G = random_vec(B * T * C, rng);
    Vec out(B * T * C), qkvr(3 * B * NH * T * hs), att(B * NH * T * T);
    auto loss = [&] {
        ref_attention_forward(out.data(), qkvr.data(), att.data(), qkv.data(), B, T, C, NH);
        return dot(out, G);
    };
    loss();
    Vec dqkv(B * T * 3 * C, 123.0);  // overwritten, so start from garbage
    ref_attention_backward(dqkv.data(), (double*)nullptr, G.data(), qkvr.data(), att.data(), B, T, C, NH);
    expect_grad_near(dqkv, numeric_grad(qkv, loss), "dqkv");
    // causal mask: exact zeros above the diagonal, rows sum to 1
    for (int bh = 0; bh < B * NH; bh++)
        for (int t = 0; t < T; t++) {
            double sum = 0.0;
            for (int j = 0; j < T; j++) {
                if (j > t) {
                    EXPECT_EQ(att[(bh * T + t) * T + j], 0.0);
                }
                sum += att[(bh * T + t) * T + j];
            }
            EXPECT_NEAR(sum, 1.0, 1e-12);
        }
}

TEST(ReferenceGrads, Gelu) {
    const int n = 13;
    Vec x(n);
    for (int i = 0; i < n; i++) x[i] = -3.0 + 0.5 * i;  // covers both tails and 0
    std::mt19937 rng(5);
    const Vec G = random_vec(n, rng);
    Vec out(n);
    auto loss = [&] {
        ref_gelu_forward(out.data(), x.data(), n);
        return dot(out, G);
    };
    Vec dinp(n, 123.0);
    ref_gelu_backward(dinp.data(), x.data(), G.data(), n);
    expect_grad_near(dinp, numeric_grad(x, loss), "gelu dinp");
}

TEST(ReferenceGrads, CrossEntropy) {
    const int N = 3, V = 5;
    std::mt19937 rng(6);
    Vec logits = random_vec(N * V, rng, 2.0);
    const std::vector<int> targets = {4, 0, 2};
    const double dloss = 1.0 / N;
    Vec losses(N);
    auto loss = [&] {  // the mean cross-entropy
        ref_crossentropy_forward_backward(losses.data(), (double*)nullptr, logits.data(), targets.data(), N, V, dloss);
        double mean = 0.0;
        ref_mean_forward(&mean, losses.data(), N);
        return mean;
    };
    Vec dlogits(N * V, 123.0);
    ref_crossentropy_forward_backward(losses.data(), dlogits.data(), logits.data(), targets.data(), N, V, dloss);
    expect_grad_near(dlogits, numeric_grad(logits, loss), "dlogits");
}

// A whole training step of RefModel<double>: the gradient of the total loss (mean cross-entropy +
// aux_coef * aux + z_coef * z) with respect to every parameter, tensor by tensor. Parameters are
// drawn larger than a real initialisation (std 0.5, LayerNorm weights around 1) so that every
// term, including the router's, contributes visibly. The routing must stay the same under every
// perturbation (top-K and capacity are piecewise constant: the gradient is that of fixed routing).
void check_model_step(const ModelConfig& cfg, int B, int Tn, bool training, unsigned seed) {
    const std::vector<ParamTensor> tensors = model_parameter_table(cfg);
    const size_t P = tensors.back().offset + tensors.back().numel;
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    Vec init(P);
    for (const ParamTensor& t : tensors)
        for (size_t i = 0; i < t.numel; i++)
            init[t.offset + i] = t.init_std > 0 ? 0.5 * normal(rng) : t.init_value + 0.2 * normal(rng);
    const int N = B * Tn;
    std::vector<int> inputs(N), targets(N);
    for (int i = 0; i < N; i++) {
        inputs[i] = (int)(rng() % cfg.vocab_size);
        targets[i] = (int)(rng() % cfg.vocab_size);
    }
    std::vector<Vec> noise_eps(cfg.layers, Vec((size_t)N * std::max(cfg.experts, 1)));
    for (Vec& e : noise_eps)
        for (double& x : e) x = normal(rng);

    RefModel<double> model(cfg, init);
    const RefModelResult<double> base = model.step(inputs.data(), targets.data(), B, Tn, training, noise_eps);
    bool routing_changed = false;
    auto loss = [&] {
        const RefModelResult<double> r = model.step(inputs.data(), targets.data(), B, Tn, training, noise_eps);
        for (size_t l = 0; l < r.moe.size(); l++)
            routing_changed |= r.moe[l].topk_idx != base.moe[l].topk_idx || r.moe[l].kept != base.moe[l].kept;
        return r.total;
    };
    const Vec numeric = numeric_grad(model.params, loss);
    ASSERT_FALSE(routing_changed) << "a perturbation changed the routing: pick another seed";
    for (const ParamTensor& t : tensors) {
        const Vec analytic_t(base.grads.begin() + t.offset, base.grads.begin() + t.offset + t.numel);
        const Vec numeric_t(numeric.begin() + t.offset, numeric.begin() + t.offset + t.numel);
        const bool noise_unused = t.name.find("moe.noise") != std::string::npos && !(training && cfg.router_noise);
        if (noise_unused) {  // without noise W_n takes no part in the loss: exactly zero, both ways
            EXPECT_EQ(analytic_t, Vec(t.numel, 0.0)) << t.name;
            EXPECT_EQ(numeric_t, Vec(t.numel, 0.0)) << t.name;
            continue;
        }
        expect_grad_near(analytic_t, numeric_t, t.name.c_str());
    }
    if (cfg.moe()) {
        long dropped = 0;
        for (const auto& st : base.moe)
            for (int k : st.kept) dropped += !k;
        EXPECT_EQ(dropped > 0, cfg.capacity_factor > 0) << "the capacity limit should drop some choices";
        EXPECT_GT(base.aux, 0.0);
        EXPECT_GT(base.z, 0.0);
    }
}

ModelConfig tiny_model(int experts) {
    ModelConfig c;
    c.vocab_size = 5; c.block_size = 4; c.layers = 2; c.heads = 2; c.dim = 4; c.ffn_hidden = 6;
    c.experts = experts; c.top_k = 2; c.expert_hidden = 3; c.shared_experts = 1; c.shared_hidden = 2;
    c.capacity_factor = 0.75; c.router_noise = 1; c.aux_coef = 0.3f; c.z_coef = 0.2f;
    return c;
}

TEST(ReferenceGrads, DenseModelStep) { check_model_step(tiny_model(0), 2, 3, true, 1); }

// top-2 with a shared expert, drops and noise; then the same without noise (an evaluation pass)
TEST(ReferenceGrads, MoeModelStep) {
    check_model_step(tiny_model(4), 2, 3, true, 2);
    check_model_step(tiny_model(4), 2, 3, false, 3);
}

// top-1: the gate is the raw probability (no renormalisation), no shared expert
TEST(ReferenceGrads, MoeTopOneModelStep) {
    ModelConfig c = tiny_model(4);
    c.top_k = 1; c.shared_experts = 0; c.capacity_factor = 1.0;
    check_model_step(c, 2, 4, true, 4);
}

}  // namespace
