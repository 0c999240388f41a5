// tests/test_routing_bias.cpp: aux-loss-free balancing (--bias-rate gamma, docs/model.md "Routing
// variants"): each MoE layer's selection bias b (E floats, from 0, no gradient).
//
//   - selection: top-K on p + b (ties to the lower index), gates from the unbiased p; kernel against
//     reference_model.h, a large bias overriding the router, b = 0 and no bias giving the same bits
//   - the update b_i += gamma sign(N*K/E - routed_i) (sign(0) = 0): reference on hand-made counts,
//     kernel against reference bit for bit
//   - in the model: training steps move b exactly by the rule, evaluation and sampling forwards do
//     not, no host round trip, bit-identical for 1 and 2 worker threads (shuffled too)
//   - the reference backward with a fixed non-zero bias against finite differences (double)
//   - metrics (b and its range), summary_metrics, bias.png only when the bias is on
//   - the trainer end to end: --bias-rate trains, writes h.{l}.moe.router.bias into the checkpoint
//     and the state dump, and a stopped and resumed run is bit-identical to an uninterrupted one
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "data/synthetic.h"
#include "model.cuh"
#include "run/files.h"
#include "run/report.h"
#include "run/safetensors.h"
#include "tests/moe_fixture.h"
#include "tests/png_check.h"
#include "tests/test_util.h"

using namespace moe_test;

namespace {

using test_util::find_trainer;
using test_util::read_file;
using test_util::shell_quote;

// A fixture whose layer has the selection bias `bias` (host and device copies).
struct BiasedLayer {
    float* d_bias = nullptr;
    BiasedLayer(MoeFixture& fx, const std::vector<float>& bias) {
        d_bias = dalloc<float>(bias.size());
        upload(d_bias, bias);
        fx.dw.router_bias = d_bias;
        fx.w.router_bias = bias;
    }
    ~BiasedLayer() { cudaFree(d_bias); }
};

ModelConfig bias_config(int N_unused = 0) {
    (void)N_unused;
    ModelConfig c = moe_config(16, 8, 2, 24, 1, 12, 1.0, true);
    c.bias_rate = 0.01f;
    return c;
}

// Exact equality of two float vectors, bit for bit.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

// ================================================================================================
// selection

// A bias of +2 on experts 5 and 7 (p <= 1) makes every token choose them, 5 first unless p_7 > p_5;
// the gates are the unbiased p of those two, renormalised. Without the bias the router chooses otherwise.
TEST_F(MoeTest, BiasLargeOverridesTheSelectionGatesStayUnbiased) {
    ModelConfig cfg = bias_config();
    cfg.router_noise = 0;
    MoeFixture fx(cfg, 64, 3);
    fx.forward(false);
    const std::vector<int> unbiased_idx = download(fx.acts.topk_idx, fx.NK());
    std::vector<float> bias(8, 0.0f);
    bias[5] = 2.0f, bias[7] = 2.0f;
    BiasedLayer layer(fx, bias);
    fx.forward(false);
    const std::vector<int> idx = download(fx.acts.topk_idx, fx.NK());
    const std::vector<float> gates = download(fx.acts.gates, fx.NK()), probs = download(fx.acts.probs, fx.NE());
    int changed = 0;
    for (int t = 0; t < fx.d.N; t++) {
        const float* p = &probs[(size_t)t * 8];
        const int first = p[7] > p[5] ? 7 : 5, second = 12 - first;
        ASSERT_EQ(idx[t * 2], first) << "token " << t;
        ASSERT_EQ(idx[t * 2 + 1], second) << "token " << t;
        const float sum = p[first] + p[second];
        EXPECT_EQ(gates[t * 2], p[first] / sum) << "token " << t;  // unbiased p, not p + b
        EXPECT_EQ(gates[t * 2 + 1], p[second] / sum) << "token " << t;
        changed += unbiased_idx[t * 2] != first || unbiased_idx[t * 2 + 1] != second;
    }
    EXPECT_GT(changed, fx.d.N / 2) << "the unbiased router should mostly choose other experts";
    // the reference decides the same
    RefRun ref(fx, false, 0.0f, 0.0f, false);
    EXPECT_EQ(idx, ref.st.topk_idx);
    EXPECT_TRUE(all_close(gates, ref.st.gates, 1e-6));
}

// Equal selection scores go to the lower index: with p uniform (zero router weights) and b equal
// on experts 2 and 6, K = 2 picks (2, 6); with b[6] one ulp larger, (6, 2).
TEST_F(MoeTest, BiasTiesGoToTheLowerIndex) {
    ModelConfig cfg = bias_config();
    cfg.router_noise = 0;
    MoeFixture fx(cfg, 8, 5);
    std::fill(fx.w.router.begin(), fx.w.router.end(), 0.0f);
    fx.upload_all();
    std::vector<float> bias(8, 0.0f);
    bias[2] = bias[6] = 0.25f;
    {
        BiasedLayer layer(fx, bias);
        fx.forward(false);
        const std::vector<int> idx = download(fx.acts.topk_idx, fx.NK());
        for (int t = 0; t < 8; t++) EXPECT_EQ(idx[t * 2] * 10 + idx[t * 2 + 1], 26) << t;
        const std::vector<float> gates = download(fx.acts.gates, fx.NK());
        for (float g : gates) EXPECT_EQ(g, 0.5f);  // uniform p: equal gates
    }
    bias[6] = std::nextafter(0.25f, 1.0f);
    BiasedLayer layer(fx, bias);
    fx.forward(false);
    const std::vector<int> idx = download(fx.acts.topk_idx, fx.NK());
    for (int t = 0; t < 8; t++) EXPECT_EQ(idx[t * 2] * 10 + idx[t * 2 + 1], 62) << t;
}

// A random bias of the size of the probabilities' differences, with noise, drops and a shared
// expert: the layer's forward and backward match the reference (routing exactly).
TEST_F(MoeTest, BiasedLayerMatchesReference) {
    for (int K : {1, 2}) {
        ModelConfig cfg = bias_config();
        cfg.top_k = K;
        cfg.capacity_factor = 0.75;
        MoeFixture fx(cfg, 96, 11 + K);
        SCOPED_TRACE(describe(fx));
        std::vector<float> bias(8);
        std::mt19937 rng(7 + K);
        fill_uniform(bias, rng, -0.15f, 0.15f);
        BiasedLayer layer(fx, bias);
        fx.forward(true);
        fx.backward(0.1f, 0.01f);
        RefRun ref(fx, true, 0.1f, 0.01f);
        EXPECT_EQ(download(fx.acts.topk_idx, fx.NK()), ref.st.topk_idx);
        EXPECT_EQ(download(fx.acts.kept, fx.NK()), ref.st.kept);
        EXPECT_EQ(download(fx.acts.tokens_per_expert_routed, 8), ref.st.routed);
        EXPECT_TRUE(all_close(download(fx.acts.gates, fx.NK()), ref.st.gates, 1e-6));
        EXPECT_TRUE(all_close(download(fx.d_out, fx.NC()), ref.out, 1e-4));
        EXPECT_TRUE(all_close(download(fx.d_du, fx.NC()), ref.du, 1e-4));
        RefMoeParams<float> g = fx.download_grads();
        EXPECT_TRUE(all_close(g.router, ref.grads.router, 1e-4));
        EXPECT_TRUE(all_close(g.noise, ref.grads.noise, 1e-4));
        EXPECT_TRUE(all_close(g.fc_w, ref.grads.fc_w, 1e-4));
        // the bias changed the routing (else this test would prove little)
        RefMoeParams<float> unbiased = fx.w;
        unbiased.router_bias.clear();
        RefMoeState<float> st(fx.cfg, fx.d.N);
        st.noise_eps = fx.eps;
        std::vector<float> out(fx.NC());
        ref_moe_forward(out.data(), st, unbiased, fx.u.data(), fx.cfg, fx.d.N, true);
        EXPECT_NE(st.topk_idx, ref.st.topk_idx);
    }
}

// No bias (nullptr) and a bias of zeros give the same bits: p + 0 = p.
TEST_F(MoeTest, ZeroBiasGivesTheUnbiasedRoutingBitForBit) {
    MoeFixture fx(bias_config(), 80, 21);
    fx.forward(true);
    fx.backward(0.1f, 0.01f);
    const std::vector<float> out = download(fx.d_out, fx.NC()), du = download(fx.d_du, fx.NC()),
                             gates = download(fx.acts.gates, fx.NK());
    const std::vector<int> idx = download(fx.acts.topk_idx, fx.NK());
    fx.upload_all();  // gradients to zero
    BiasedLayer layer(fx, std::vector<float>(8, 0.0f));
    fx.forward(true);
    fx.backward(0.1f, 0.01f);
    EXPECT_EQ(download(fx.acts.topk_idx, fx.NK()), idx);
    EXPECT_TRUE(same_bits(download(fx.acts.gates, fx.NK()), gates));
    EXPECT_TRUE(same_bits(download(fx.d_out, fx.NC()), out));
    EXPECT_TRUE(same_bits(download(fx.d_du, fx.NC()), du));
}

// ================================================================================================
// the update rule

// N = 10, K = 2, E = 4: the balanced load is N*K/E = 5.
TEST(RoutingBiasUpdate, ReferenceOnHandMadeCounts) {
    std::vector<float> b = {0.5f, 0.25f, -1.0f, 0.0f};
    const std::vector<int> routed = {5, 7, 0, 8};  // on target (sign 0), over, under, over
    ref_moe_bias_update(b.data(), routed.data(), 10, 4, 2, 0.125f);
    EXPECT_EQ(b, (std::vector<float>{0.5f, 0.125f, -0.875f, -0.125f}));
    // a target that is not an integer: N = 3, K = 1, E = 2 -> 1.5; loads 1 and 2
    std::vector<float> c = {0.0f, 0.0f};
    const std::vector<int> r2 = {1, 2};
    ref_moe_bias_update(c.data(), r2.data(), 3, 2, 1, 0.01f);
    EXPECT_EQ(c, (std::vector<float>{0.01f, -0.01f}));
    // balanced everywhere: nothing moves (bit for bit)
    std::vector<float> d = {0.3f, -0.7f, 1e-8f, 0.0f};
    const std::vector<float> d0 = d;
    const std::vector<int> even = {5, 5, 5, 5};
    ref_moe_bias_update(d.data(), even.data(), 10, 4, 2, 0.5f);
    EXPECT_TRUE(same_bits(d, d0));
}

// The kernel against the reference, bit for bit, at E up to 64, for 1 and 2 worker threads.
TEST_F(MoeTest, BiasUpdateKernelMatchesReference) {
    std::mt19937 rng(99);
    for (int E : {1, 3, 8, 64}) {
        for (int workers : {1, 2}) {
            simt::set_worker_threads(workers);
            const int N = 37, K = std::min(E, 2);
            std::vector<int> routed(E);
            std::uniform_int_distribution<int> count(0, 2 * N * K / E + 1);
            for (int& r : routed) r = count(rng);
            if (E == 8) routed[3] = N * K / E, routed[4] = N * K / E + 1;  // around the target 9.25
            std::vector<float> b(E);
            fill_uniform(b, rng, -0.5f, 0.5f);
            std::vector<float> want = b;
            ref_moe_bias_update(want.data(), routed.data(), N, E, K, 0.003f);
            float* d_b = dalloc<float>(E);
            int* d_r = dalloc<int>(E);
            upload(d_b, b);
            upload(d_r, routed);
            moe_bias_update(d_b, d_r, N, E, K, 0.003f);
            EXPECT_TRUE(same_bits(download(d_b, E), want)) << "E " << E << " workers " << workers;
            cudaFree(d_b);
            cudaFree(d_r);
        }
    }
}

// ================================================================================================
// in the model

namespace {

ModelConfig tiny_bias_model(float rate) {
    ModelConfig c;
    c.vocab_size = 13; c.block_size = 8; c.layers = 2; c.heads = 2; c.dim = 16; c.ffn_hidden = 64;
    c.experts = 4; c.top_k = 2; c.expert_hidden = 24; c.shared_experts = 0; c.shared_hidden = 20;
    c.capacity_factor = 1.25; c.router_noise = 1; c.aux_coef = 0.0f; c.z_coef = 0.001f;
    c.bias_rate = rate;
    return c;
}

void lcg_batch(int B, int T, int V, unsigned seed, std::vector<int>& in, std::vector<int>& tg) {
    in.resize((size_t)B * T);
    tg.resize((size_t)B * T);
    unsigned s = seed;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        in[i] = (int)((s >> 8) % V);
        s = s * 1664525u + 1013904223u;
        tg[i] = (int)((s >> 8) % V);
    }
}

std::vector<float> bias_of(const Model& m) {
    return download(m.router_bias, (size_t)m.cfg.layers * m.cfg.experts);
}

const OptimConfig kOptim{1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f};

}  // namespace

TEST(RoutingBiasModel, OnlyWithABiasRateAndNotAParameter) {
    ModelConfig off = tiny_bias_model(0.0f), on = tiny_bias_model(0.01f);
    EXPECT_TRUE(model_buffer_table(off).empty());
    const std::vector<ParamTensor> buffers = model_buffer_table(on);
    ASSERT_EQ(buffers.size(), 2u);
    EXPECT_EQ(buffers[1].name, "h.1.moe.router.bias");
    EXPECT_EQ(buffers[1].shape, std::vector<int>{4});
    EXPECT_EQ(buffers[1].offset, 4u);
    // the parameters (and so AdamW, the gradients and the moments) are the same with and without it
    const auto a = model_parameter_table(off), b = model_parameter_table(on);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i].name, b[i].name);
    ModelConfig dense = on;
    dense.experts = 0;
    EXPECT_TRUE(model_buffer_table(dense).empty());
    Model m;
    model_build(m, off, 2, 8, 1);
    EXPECT_EQ(m.router_bias, nullptr);
    EXPECT_EQ(m.w.blocks[0].moe.router_bias, nullptr);
    model_free(m);
}

// Every training step moves every layer's b by exactly gamma * sign(N*K/E - routed_i) of that
// step's routing; evaluation forwards (full and smaller batches, as evaluate and generate run them)
// read b and leave it alone.
TEST(RoutingBiasModel, TrainingStepsMoveTheBiasByTheRuleEvaluationDoesNot) {
    simt::set_device_memory_protection(true);
    const float rate = 0.01f;
    ModelConfig c = tiny_bias_model(rate);
    const int B = 3, T = 8, N = B * T, E = c.experts, K = c.top_k;
    Model m;
    model_build(m, c, B, T, 42);
    ASSERT_NE(m.router_bias, nullptr);
    for (float b : bias_of(m)) EXPECT_EQ(b, 0.0f);
    int moved = 0;
    for (int step = 0; step < 6; step++) {
        std::vector<int> in, tg;
        lcg_batch(B, T, c.vocab_size, 100 + step, in, tg);
        const std::vector<float> before = bias_of(m);
        model_zero_grad(m);
        model_forward(m, in.data(), tg.data(), B, T, true, step);
        model_backward(m);
        std::vector<float> want = before;
        for (int l = 0; l < c.layers; l++) {
            const std::vector<int> routed = download(m.blocks[l].moe.tokens_per_expert_routed, (size_t)E);
            ref_moe_bias_update(want.data() + (size_t)l * E, routed.data(), N, E, K, rate);
        }
        model_update(m, kOptim, step + 1);
        const std::vector<float> after = bias_of(m);
        EXPECT_TRUE(same_bits(after, want)) << "step " << step;
        for (size_t i = 0; i < after.size(); i++) moved += after[i] != before[i];
        // evaluation: the full batch, then one sequence of 5 tokens (sampling)
        model_forward(m, in.data(), tg.data(), B, T, false, 0);
        model_forward(m, in.data(), nullptr, 1, 5, false, 0);
        EXPECT_TRUE(same_bits(bias_of(m), after)) << "step " << step;
    }
    EXPECT_GT(moved, 0);
    simt::set_device_memory_protection(false);
    model_free(m);
}

// The direction: after the first step (b was 0), an expert that got more than N*K/E choices has
// b < 0, one that got fewer has b > 0, one exactly on target still 0.
TEST(RoutingBiasModel, TheBiasFallsOnOverloadedExpertsAndRisesOnIdleOnes) {
    ModelConfig c = tiny_bias_model(0.05f);
    c.router_noise = 0;
    const int B = 2, T = 8, E = c.experts;
    Model m;
    model_build(m, c, B, T, 5);
    std::vector<int> in, tg;
    lcg_batch(B, T, c.vocab_size, 9, in, tg);
    model_zero_grad(m);
    model_forward(m, in.data(), tg.data(), B, T, true, 0);
    model_backward(m);
    const std::vector<int> routed = download(m.blocks[0].moe.tokens_per_expert_routed, (size_t)E);
    model_update(m, kOptim, 1);
    const std::vector<float> b = bias_of(m);
    for (int i = 0; i < E; i++) {
        const double target = (double)B * T * c.top_k / E;
        if (routed[i] > target) {
            EXPECT_LT(b[i], 0.0f) << "expert " << i << " routed " << routed[i];
        } else if (routed[i] < target) {
            EXPECT_GT(b[i], 0.0f) << "expert " << i << " routed " << routed[i];
        } else {
            EXPECT_EQ(b[i], 0.0f) << "expert " << i;
        }
    }
    model_free(m);
}

TEST(RoutingBiasModel, TrainingIsBitIdenticalAcrossWorkerThreads) {
    ModelConfig c = tiny_bias_model(0.02f);
    const int B = 3, T = 8;
    auto run = [&](int workers, unsigned shuffle) {
        simt::set_worker_threads(workers);
        simt::set_shuffle(shuffle);
        Model m;
        model_build(m, c, B, T, 42);
        for (int step = 0; step < 4; step++) {
            std::vector<int> in, tg;
            lcg_batch(B, T, c.vocab_size, 500 + step, in, tg);
            model_zero_grad(m);
            model_forward(m, in.data(), tg.data(), B, T, true, step);
            model_backward(m);
            model_update(m, kOptim, step + 1);
        }
        std::vector<float> out = download(m.params, m.num_parameters), bias = bias_of(m);
        out.insert(out.end(), bias.begin(), bias.end());
        model_free(m);
        return out;
    };
    const std::vector<float> one = run(1, 0), two = run(2, 0), shuffled = run(2, 4242);
    simt::set_worker_threads(1);
    simt::set_shuffle(0);
    EXPECT_TRUE(same_bits(one, two));
    EXPECT_TRUE(same_bits(one, shuffled));
    bool nonzero = false;
    for (size_t i = one.size() - 8; i < one.size(); i++) nonzero = nonzero || one[i] != 0.0f;
    EXPECT_TRUE(nonzero);
}

TEST(RoutingBiasModel, TrainingStepMakesNoHostRoundTrip) {
    ModelConfig c = tiny_bias_model(0.01f);
    Model m;
    const int B = 2, T = 8;
    model_build(m, c, B, T, 3);
    std::vector<int> in, tg;
    lcg_batch(B, T, c.vocab_size, 5, in, tg);
    simt::reset_counters();
    model_zero_grad(m);
    model_forward(m, in.data(), tg.data(), B, T, true, 0);
    model_backward(m);
    model_update(m, kOptim, 1);
    EXPECT_EQ(simt::device_to_host_copies(), 0);
    EXPECT_EQ(simt::synchronizations(), 0);
    model_free(m);
}

// ================================================================================================
// the backward with a fixed bias: b has no gradient, the selection it makes is held fixed, and the
// gates' gradient is the unbiased one: finite differences of the reference agree.
TEST(RoutingBiasReference, BackwardWithAFixedBiasMatchesFiniteDifferences) {
    for (int K : {1, 2}) {
        const int N = 11;
        ModelConfig cfg = moe_config(5, 4, K, 6, 1, 4, 0.75, true);
        cfg.bias_rate = 0.01f;
        cfg.aux_coef = 0.7f, cfg.z_coef = 0.3f;
        SCOPED_TRACE(describe(cfg, N));
        std::mt19937 rng(31 + K);
        std::uniform_real_distribution<double> U(-1.0, 1.0);
        std::normal_distribution<double> G(0.0, 1.0);
        RefMoeParams<double> w(cfg);
        w.for_each([&](const char*, std::vector<double>& v) {
            for (auto& x : v) x = 0.5 * U(rng);
        });
        for (auto& x : w.router) x *= 2.0;
        w.router_bias = {0.3, -0.2, 0.05, -0.35};
        std::vector<double> u((size_t)N * cfg.dim), dout(u.size()), eps((size_t)N * cfg.experts);
        for (auto& x : u) x = U(rng);
        for (auto& x : dout) x = U(rng);
        for (auto& x : eps) x = G(rng);
        RefMoeState<double> base(cfg, N);
        base.noise_eps = eps;
        std::vector<double> out(u.size()), du(u.size());
        ref_moe_forward(out.data(), base, w, u.data(), cfg, N, true);
        RefMoeParams<double> grads(cfg);
        ref_moe_backward(du.data(), grads, dout.data(), base, w, u.data(), cfg, N);
        {  // the bias matters here: without it some token chooses differently
            RefMoeParams<double> plain = w;
            plain.router_bias.clear();
            RefMoeState<double> st(cfg, N);
            st.noise_eps = eps;
            std::vector<double> o(u.size());
            ref_moe_forward(o.data(), st, plain, u.data(), cfg, N, true);
            EXPECT_NE(st.topk_idx, base.topk_idx);
        }
        auto loss_at = [&](std::vector<double>& x, size_t i, double h) {
            const double keep = x[i];
            x[i] = keep + h;
            RefMoeState<double> st(cfg, N);
            st.noise_eps = eps;
            std::vector<double> o(u.size());
            ref_moe_forward(o.data(), st, w, u.data(), cfg, N, true);
            x[i] = keep;
            EXPECT_EQ(st.topk_idx, base.topk_idx);  // the selection is held fixed
            EXPECT_EQ(st.kept, base.kept);
            return ref_moe_loss(o.data(), dout.data(), st, cfg, N);
        };
        auto check = [&](const char* name, std::vector<double>& x, const std::vector<double>& analytic) {
            const double h = 1e-6;
            for (size_t i = 0; i < x.size(); i++) {
                const double fd = (loss_at(x, i, h) - loss_at(x, i, -h)) / (2 * h);
                ASSERT_NEAR(analytic[i], fd, 1e-7 + 1e-6 * std::abs(fd)) << name << "[" << i << "]";
            }
        };
        check("u", u, du);
        check("router", w.router, grads.router);
        check("noise", w.noise, grads.noise);
        check("fc_w", w.fc_w, grads.fc_w);
    }
}

// ================================================================================================
// diagnostics, summary and the plot

namespace {

RunHistory bias_history(bool with_bias, int steps = 40) {
    RunHistory h;
    for (int j = 1; j <= steps; j++) {
        std::vector<MoeStats> stats;
        for (int l = 0; l < 2; l++) {
            MoeStats s;
            s.N = 64, s.K = 2, s.E = 4, s.C = 16, s.capacity = 40;
            s.tokens_routed = {60 - j / 2, 24 + j / 6, 22 + j / 6, 22 + j / 6};
            s.tokens_kept = {40, 24, 22, 22};
            s.router_entropy = 1.0, s.load_imbalance = 1.5, s.aux = 1.1, s.z = 3;
            if (with_bias) {
                const float g = 0.01f * (float)j;
                moe_stats_set_bias(s, {-g, 0.5f * g, 0.25f * g * (float)(l + 1), 0.1f * g});
            }
            stats.push_back(s);
        }
        h.log_train(10LL * j, 2.0 - 0.01 * j, 1e-3, stats, 2.0, 0.5, 1000);
    }
    return h;
}

std::string temp_dir(const std::string& name) {
    char tmpl[] = "/tmp/moe_bias_test_XXXXXX";
    std::string dir = std::string(mkdtemp(tmpl)) + "/" + name, err;
    EXPECT_TRUE(make_dirs(dir, err)) << err;
    return dir;
}

}  // namespace

TEST(RoutingBiasReport, MetricsHoldTheBiasAndItsRangeAndReadBack) {
    MoeStats s;
    s.E = 3;
    s.tokens_routed = {1, 2, 3};
    s.tokens_kept = {1, 2, 3};
    moe_stats_set_bias(s, {0.125f, -0.0625f, 0.03f});
    EXPECT_DOUBLE_EQ(s.bias_range, 0.125 + 0.0625);
    const std::string j = moe_stats_json(s);
    EXPECT_NE(j.find("\"bias\":[0.125,-0.0625,0.0299999993]"), std::string::npos) << j;
    EXPECT_NE(j.find("\"bias_range\":0.1875"), std::string::npos) << j;
    json::Value v;
    std::string err;
    ASSERT_TRUE(json::parse(j, v, err)) << err;
    MoeStats back;
    ASSERT_TRUE(moe_stats_from_json(v, back));
    EXPECT_TRUE(same_bits(back.bias, s.bias));  // %.9g round-trips a float
    EXPECT_DOUBLE_EQ(back.bias_range, s.bias_range);
    // without a bias the record is as before: no bias fields
    MoeStats plain;
    plain.tokens_routed = {1};
    EXPECT_EQ(moe_stats_json(plain).find("bias"), std::string::npos);
}

TEST(RoutingBiasReport, SummaryHasTheFinalBiasRange) {
    auto find = [](const std::vector<std::pair<std::string, double>>& m, const std::string& k) -> double {
        for (const auto& [name, v] : m)
            if (name == k) return v;
        return NAN;
    };
    const auto with = summary_metrics(bias_history(true)), without = summary_metrics(bias_history(false));
    // step 400: g = 0.4, layer 0 range 0.2 - (-0.4) = 0.6 (0.5 g is the max), layer 1 likewise 0.6
    EXPECT_NEAR(find(with, "bias_range"), 0.6, 1e-6);
    EXPECT_NEAR(find(with, "bias_range_max"), 0.6, 1e-6);
    EXPECT_TRUE(std::isnan(find(without, "bias_range")));
}

TEST(RoutingBiasReport, BiasPlotIsWrittenOnlyWhenTheBiasIsOn) {
    const std::string dir = temp_dir("plots");
    std::vector<std::string> written;
    std::string error;
    const RunHistory h = bias_history(true);
    ASSERT_TRUE(write_run_plots(h, dir, &error, &written)) << error;
    ASSERT_EQ(written.back(), dir + "/bias.png");
    const plot::Figure f = bias_figure(h);
    ASSERT_EQ(f.axes.size(), 2u);                    // a panel per layer
    EXPECT_EQ(f.axes[0].series.size(), 4u);          // a line per expert
    EXPECT_FLOAT_EQ((float)f.axes[1].series[2].y.back(), 0.25f * (0.01f * 40.0f) * 2.0f);  // layer 1, expert 2, last step
    EXPECT_EQ(f.axes[0].series[0].x.size(), 40u);
    Image im = load(dir + "/bias.png");
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, f.width);
    EXPECT_EQ(im.h, f.height);
    EXPECT_GT(distinct_colours(im), 20u);
    EXPECT_GT(dark_pixels(im, 0, 40), 40);  // a title
    const std::string plain = temp_dir("plain");
    written.clear();
    ASSERT_TRUE(write_run_plots(bias_history(false), plain, &error, &written)) << error;
    for (const auto& p : written) EXPECT_NE(p, plain + "/bias.png");
    EXPECT_FALSE(load(plain + "/bias.png").ok);
}

// ================================================================================================
// the trainer end to end (./train_moe_cpu, or $MOE_TRAINER)

namespace {

class RoutingBiasCli : public ::testing::Test {
protected:
    static std::string bin, dir, text;
    static void SetUpTestSuite() {
        bin = find_trainer();
        char tmpl[] = "/tmp/moe_bias_cli_XXXXXX";
        dir = mkdtemp(tmpl);
        text = dir + "/text.txt";
        std::ofstream(text, std::ios::binary) << make_synthetic_corpus(11, 4000).text;
    }
    static void TearDownTestSuite() { std::system(("rm -rf " + shell_quote(dir)).c_str()); }
    void SetUp() override { ASSERT_FALSE(bin.empty()) << "train_moe_cpu not found: build it, or set MOE_TRAINER"; }

    static std::vector<std::string> tiny(std::vector<std::string> more) {
        std::vector<std::string> a = {"--data", text, "--layers", "2", "--dim", "16", "--heads", "2", "--block-size", "8",
                                      "--batch", "2", "--eval-batches", "2", "--sample-len", "16", "--experts", "4",
                                      "--top-k", "2", "--plots", "1"};
        a.insert(a.end(), more.begin(), more.end());
        return a;
    }
    // exit status; stdout and stderr into *out
    static int run(const std::vector<std::string>& args, std::string* out = nullptr) {
        static int counter = 0;
        const std::string log = dir + "/log" + std::to_string(counter++);
        std::string cmd = "cd " + shell_quote(dir) + " && " + shell_quote(bin);
        for (const auto& a : args) cmd += " " + shell_quote(a);
        cmd += " >" + shell_quote(log) + " 2>&1 </dev/null";
        const int status = std::system(cmd.c_str());
        if (out) *out = read_file(log);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    // metrics.jsonl without the timing fields
    static std::vector<std::string> records(const std::string& path) {
        std::vector<std::string> r;
        std::istringstream lines(read_file(path));
        std::string line;
        while (std::getline(lines, line)) {
            for (const char* key : {"\"ms_per_step\":", "\"tokens_per_s\":"}) {
                size_t at = line.find(key);
                if (at == std::string::npos) continue;
                size_t end = line.find_first_of(",}", at);
                line.erase(at, end - at);
            }
            r.push_back(line);
        }
        return r;
    }
};
std::string RoutingBiasCli::bin, RoutingBiasCli::dir, RoutingBiasCli::text;

}  // namespace

// --bias-rate 0.001 --steps 3 trains; the checkpoint holds every layer's bias (F32 [E], moved off 0,
// no AdamW moments); metrics, summary and bias.png show it.
TEST_F(RoutingBiasCli, BiasRateTrainsAndWritesTheBias) {
    const std::string out = dir + "/run";
    std::string log;
    ASSERT_EQ(run(tiny({"--bias-rate", "0.001", "--steps", "3", "--log-every", "1", "--out", out}), &log), 0) << log;
    EXPECT_NE(log.find("bias range"), std::string::npos) << log;
    safetensors::File model, state;
    std::string err;
    ASSERT_TRUE(safetensors::read(out + "/model.safetensors", model, err)) << err;
    for (int l = 0; l < 2; l++) {
        const safetensors::Tensor* t = model.find("h." + std::to_string(l) + ".moe.router.bias");
        ASSERT_NE(t, nullptr) << l;
        EXPECT_EQ(t->dtype, "F32");
        EXPECT_EQ(t->shape, std::vector<int64_t>{4});
        double sum_abs = 0;
        for (float b : t->floats()) {
            sum_abs += std::fabs(b);
            // three steps of +-0.001 (or 0): a multiple of 0.001 of size at most 0.003
            EXPECT_LE(std::fabs(b), 0.0030001f);
        }
        EXPECT_GT(sum_abs, 0.0) << "layer " << l << ": the bias never moved";
    }
    EXPECT_EQ(*model.meta("bias-rate"), "0.001");
    ASSERT_TRUE(safetensors::read(out + "/state.safetensors", state, err)) << err;
    for (const auto& t : state.tensors) EXPECT_EQ(t.name.find("router.bias"), std::string::npos) << t.name;
    const std::string metrics = read_file(out + "/metrics.jsonl");
    EXPECT_NE(metrics.find("\"bias\":["), std::string::npos);
    EXPECT_NE(metrics.find("\"bias_range\":"), std::string::npos);
    const std::string summary = read_file(out + "/summary.json");
    EXPECT_NE(summary.find("\"router_bias\":[["), std::string::npos) << summary;
    EXPECT_NE(summary.find("\"bias_range\":"), std::string::npos) << summary;
    EXPECT_TRUE(load(out + "/bias.png").ok);
    // without the flag: no bias anywhere
    const std::string plain = dir + "/plain";
    ASSERT_EQ(run(tiny({"--steps", "2", "--out", plain}), &log), 0) << log;
    ASSERT_TRUE(safetensors::read(plain + "/model.safetensors", model, err)) << err;
    EXPECT_EQ(model.find("h.0.moe.router.bias"), nullptr);
    EXPECT_EQ(read_file(plain + "/metrics.jsonl").find("\"bias\""), std::string::npos);
    EXPECT_FALSE(path_exists(plain + "/bias.png"));
}

// Stopping after step 3 and resuming gives the uninterrupted run's records and model, byte for
// byte (the bias included); --dump-state holds the initial bias (zeros).
TEST_F(RoutingBiasCli, ResumedRunIsBitIdenticalAndTheDumpHoldsTheBias) {
    auto args = [&](const std::string& out, std::vector<std::string> more = {}) {
        std::vector<std::string> a = tiny({"--bias-rate", "0.01", "--steps", "7", "--log-every", "1", "--eval-every", "3",
                                           "--sample-every", "3", "--out", out});
        a.insert(a.end(), more.begin(), more.end());
        return a;
    };
    const std::string whole = dir + "/whole", part = dir + "/part";
    std::string log;
    ASSERT_EQ(run(args(whole), &log), 0) << log;
    ASSERT_EQ(run(args(part, {"--stop-at", "3"}), &log), 0) << log;
    ASSERT_EQ(run({"--resume", part + "/model.safetensors"}, &log), 0) << log;
    EXPECT_EQ(records(part + "/metrics.jsonl"), records(whole + "/metrics.jsonl"));
    EXPECT_EQ(read_file(part + "/model.safetensors"), read_file(whole + "/model.safetensors"));
    EXPECT_EQ(read_file(part + "/samples.txt"), read_file(whole + "/samples.txt"));
    // the state dump of the initial model has the bias, all zeros, and no gradient of it
    const std::string dump = dir + "/dump.safetensors";
    ASSERT_EQ(run(tiny({"--bias-rate", "0.01", "--dump-state", dump}), &log), 0) << log;
    safetensors::File f;
    std::string err;
    ASSERT_TRUE(safetensors::read(dump, f, err)) << err;
    const safetensors::Tensor* b = f.find("h.1.moe.router.bias");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->shape, std::vector<int64_t>{4});
    for (float x : b->floats()) EXPECT_EQ(x, 0.0f);
    EXPECT_EQ(f.find("grad.h.1.moe.router.bias"), nullptr);
}
