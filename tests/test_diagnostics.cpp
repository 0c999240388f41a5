// tests/test_diagnostics.cpp: diagnostics.cuh, and the routing and accounting formulas it reports.
//
//  - worked examples of the formulas: the top-K tie rule (the oracle of tests/moe_formulas.h and
//    reference_model.h's routing), capacity (model_config.h), drop rate, aux loss, entropy, FFN and
//    active parameter counts, the ranks of experts and tokens;
//  - whole-model parameter counts: a closed form (tests/moe_formulas.h) against model_config.h's
//    tensor table and active_parameters;
//  - the device statistics against tests/reference_diagnostics.h on random routings over a grid of
//    (N, E, K, F, C, R): integer counts exact, floats to 1e-6; bit-identical on a second run and with
//    2 worker threads; a real moe_forward's own counts, aux and z come through unchanged;
//  - specialisation tables: top characters, domain shares, mutual information (0 for an independent
//    table, ln D for a perfectly specialised one).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "diagnostics.cuh"
#include "model_config.h"
#include "reference_model.h"
#include "tests/moe_formulas.h"
#include "tests/reference_diagnostics.h"
#include "tests/test_util.h"

namespace {

using test_util::dalloc;
using test_util::download;

template <typename T>
T* dupload(const std::vector<T>& h) {
    T* d = dalloc<T>(h.size());
    if (!h.empty()) CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
class Diagnostics : public ::testing::Test {
  protected:
    void SetUp() override { simt::set_device_memory_protection(true); }
    void TearDown() override {
        simt::set_device_memory_protection(false);
        simt::set_worker_threads(1);
    }
};

// A random routing: softmax probabilities (some rows peaked, some with exact zeros), top-K by
// probability (distinct experts), random keeps (with some tokens dropped entirely), random gradients.
struct RandomRouting {
    int N, E, K, C, F, R;
    std::vector<float> probs, fc_w, fc_b, proj_w, proj_b;
    std::vector<int> topk, kept;

    RandomRouting(int N_, int E_, int K_, int C_, int F_, int R_, unsigned seed)
        : N(N_), E(E_), K(K_), C(C_), F(F_), R(R_) {
        std::mt19937 rng(seed);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::uniform_real_distribution<float> unif(0.0f, 1.0f);
        probs.resize((size_t)N * E);
        for (int t = 0; t < N; t++) {
            float scale = t % 7 == 0 ? 8.0f : 1.5f;
            std::vector<double> l(E);
            double mx = -1e30, s = 0;
            for (int i = 0; i < E; i++) mx = std::max(mx, l[i] = scale * normal(rng));
            for (int i = 0; i < E; i++) s += (l[i] = std::exp(l[i] - mx));
            for (int i = 0; i < E; i++) probs[(size_t)t * E + i] = (float)(l[i] / s);
            if (t % 11 == 3 && E > 1) {  // exact zeros (0 ln 0 = 0) and a one-hot row
                for (int i = 0; i < E; i++) probs[(size_t)t * E + i] = i == t % E ? 1.0f : 0.0f;
            }
            std::vector<double> p(probs.begin() + (size_t)t * E, probs.begin() + (size_t)(t + 1) * E);
            std::vector<int> top = top_k(p, K);
            for (int j = 0; j < K; j++) {
                topk.push_back(top[j]);
                kept.push_back(unif(rng) < (t % 5 == 0 ? 0.15f : 0.8f) ? 1 : 0);
            }
        }
        auto fill = [&](std::vector<float>& v, size_t n) {
            v.resize(n);
            for (auto& x : v) x = 0.01f * normal(rng);
        };
        fill(fc_w, (size_t)E * F * C);
        fill(fc_b, (size_t)E * F);
        fill(proj_w, (size_t)E * C * F);
        fill(proj_b, (size_t)E * C);
    }
};

// Device stats of a routing (aux/z given as device scalars).
MoeStats device_stats(const RandomRouting& r, float aux, float z, bool with_grads, std::vector<unsigned char>* header = nullptr) {
    float* d_probs = dupload(r.probs);
    int* d_topk = dupload(r.topk);
    int* d_kept = dupload(r.kept);
    float* d_aux = dupload(std::vector<float>{aux});
    float* d_z = dupload(std::vector<float>{z});
    float *d_fw = nullptr, *d_fb = nullptr, *d_pw = nullptr, *d_pb = nullptr;
    if (with_grads) {
        d_fw = dupload(r.fc_w);
        d_fb = dupload(r.fc_b);
        d_pw = dupload(r.proj_w);
        d_pb = dupload(r.proj_b);
    }
    MoeStatsBuffer buf = moe_stats_alloc(r.E);
    moe_stats_compute_raw(buf, d_probs, d_topk, d_kept, d_aux, d_z, d_fw, d_fb, d_pw, d_pb, r.N, r.E, r.K, r.C, r.F, r.R);
    const int cap = 123;
    MoeStats s = moe_stats_read(buf, r.N, r.E, r.K, r.C, cap, r.R);
    if (header) {
        MoeStatsLayout lay{r.E};
        header->resize(lay.header_bytes());
        CUDA_CHECK(cudaMemcpy(header->data(), buf.device, header->size(), cudaMemcpyDeviceToHost));
    }
    moe_stats_free(buf);
    for (void* p : {(void*)d_probs, (void*)d_topk, (void*)d_kept, (void*)d_aux, (void*)d_z, (void*)d_fw, (void*)d_fb,
                    (void*)d_pw, (void*)d_pb})
        if (p) CUDA_CHECK(cudaFree(p));
    return s;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Routing and accounting formulas: worked examples

namespace {
ModelConfig routing_config(int E, int K, double capacity_factor) {
    ModelConfig c;
    c.experts = E;
    c.top_k = K;
    c.capacity_factor = capacity_factor;
    return c;
}
}  // namespace

TEST(MoeFormulas, TopTwoTiesGoToTheLowerIndex) {
    std::vector<int> top2 = top_k({0.10, 0.40, 0.25, 0.25}, 2);
    ASSERT_EQ(top2.size(), 2u);
    EXPECT_EQ(top2[0], 1);
    EXPECT_EQ(top2[1], 2);  // 0.25 twice: expert 2 before expert 3 (docs/model.md, 12)
    // reference_model.h routes a token with these probabilities (logits ln p) the same way
    const double p[4] = {0.10, 0.40, 0.25, 0.25};
    float logits[4], probs[4], gates[2], lse = 0;
    int topk[2];
    for (int i = 0; i < 4; i++) logits[i] = (float)std::log(p[i]);
    ref_moe_route_token(probs, gates, topk, &lse, logits, (const float*)nullptr, (const float*)nullptr, 4, 2, 0);
    EXPECT_EQ(probs[2], probs[3]);  // a true tie
    EXPECT_EQ(topk[0], 1);
    EXPECT_EQ(topk[1], 2);
    EXPECT_NEAR(gates[0], 0.40 / 0.65, 1e-6);
    EXPECT_NEAR(gates[1], 0.25 / 0.65, 1e-6);
}

TEST(MoeFormulas, ExpertParameterCounts) {
    // one expert, an FFN 1024 -> 4096 -> 1024: two 1024 x 4096 matrices and biases of 4096 and 1024
    EXPECT_EQ(ffn_parameters(1024, 4096), 8388608u + 5120u);
    // 8 such experts (weights: 67,108,864), 2 per token (16,777,216): a token skips 6 in each layer
    ModelConfig c = routing_config(8, 2, 1.25);
    c.layers = 3;
    c.dim = 1024;
    c.expert_hidden = 4096;
    const size_t total = 500000000;
    EXPECT_EQ(active_parameters(c, total), total - 3 * 6 * (8388608u + 5120u));
    c.top_k = 8;
    EXPECT_EQ(active_parameters(c, total), total);  // every expert visited
    c.experts = 0;
    EXPECT_EQ(active_parameters(c, 12345), 12345u);  // dense: every parameter is active
}

TEST(MoeFormulas, Capacity) {
    EXPECT_EQ(expert_capacity(routing_config(8, 1, 1.25), 100), 16);   // ceil(12.5)
    EXPECT_EQ(expert_capacity(routing_config(8, 2, 1.25), 100), 32);   // ceil(31.25)
    EXPECT_EQ(expert_capacity(routing_config(8, 1, 0.0), 100), 100);   // no limit
    EXPECT_EQ(expert_capacity(routing_config(8, 2, 1.0), 64), 16);     // exact: no spurious round-up
    EXPECT_EQ(expert_capacity(routing_config(8, 2, 1.25), 768), 240);  // the default run (docs/model.md, 14)
    // a token uses an expert at most once: never more buffer rows than tokens
    EXPECT_EQ(expert_capacity(routing_config(2, 2, 2.0), 10), 20);
    EXPECT_EQ(expert_buffer_rows(routing_config(2, 2, 2.0), 10), 10);
    EXPECT_EQ(expert_buffer_rows(routing_config(8, 2, 1.25), 100), 32);
}

TEST(MoeFormulas, DropRate) {
    EXPECT_NEAR(drop_rate_from_loads({20, 10, 15, 5}, 12), 0.22, 1e-12);  // (8 + 0 + 3 + 0) / 50
    EXPECT_EQ(drop_rate_from_loads({}, 12), 0.0);
}

TEST(MoeFormulas, AuxLoss) {
    EXPECT_NEAR(aux_loss({0.5, 0.25, 0.25, 0.0}, {0.4, 0.3, 0.2, 0.1}), 1.3, 1e-12);
    EXPECT_NEAR(aux_loss({0.25, 0.25, 0.25, 0.25}, {0.25, 0.25, 0.25, 0.25}), 1.0, 1e-12);  // uniform
}

TEST(MoeFormulas, Entropy) {
    EXPECT_NEAR(entropy({0.7, 0.1, 0.1, 0.1}), 0.9404, 1e-4);
    EXPECT_NEAR(entropy({0.25, 0.25, 0.25, 0.25}), std::log(4.0), 1e-12);
    EXPECT_EQ(entropy({1.0, 0.0}), 0.0);
}

// ------------------------------------------------------------------------------------------------
// Whole-model parameter counts

TEST(DiagnosticsParams, MatchTheModelsTensorTable) {
    struct Case {
        int E, K, F, S, Fs;
    };
    for (Case c : {Case{0, 0, 256, 0, 0}, Case{4, 1, 64, 0, 0}, Case{8, 2, 96, 1, 48}, Case{16, 4, 32, 2, 64}}) {
        ModelConfig mc;
        mc.vocab_size = 67;
        mc.block_size = 48;
        mc.layers = 3;
        mc.heads = 4;
        mc.dim = 64;
        mc.ffn_hidden = c.E == 0 ? c.F : 0;
        mc.experts = c.E;
        mc.top_k = c.K;
        mc.expert_hidden = c.E > 0 ? c.F : 0;
        mc.shared_experts = c.S;
        mc.shared_hidden = c.Fs;
        size_t total = 0;
        for (const ParamTensor& t : model_parameter_table(mc)) total += t.numel;
        ParamCounts p = model_param_counts(67, 48, 3, 64, c.F, c.E, c.K, c.S, c.Fs);
        EXPECT_EQ(p.total, (long long)total) << "E=" << c.E;
        EXPECT_EQ(p.active, (long long)active_parameters(mc, total)) << "E=" << c.E;
        if (c.E == 0) {
            EXPECT_EQ(p.active, p.total);
        } else {
            EXPECT_LT(p.active, p.total);
        }
    }
    // by hand: a dense one-layer model V=2, block 1, C=1, F=1:
    // wte 2 + wpe 1 + ln_f 2 + ln_1 2 + c_attn 3+3 + c_proj 1+1 + ln_2 2 + mlp 1+1+1+1 = 21
    EXPECT_EQ(model_param_counts(2, 1, 1, 1, 1).total, 21);
    // the same with E=4 experts of width 1, K=1: router 4 + noise 4 + 4 experts * 4
    ParamCounts m = model_param_counts(2, 1, 1, 1, 1, 4, 1);
    EXPECT_EQ(m.total, 21 - 4 + 8 + 16);
    EXPECT_EQ(m.active, 21 - 4 + 8 + 4);
}

// ------------------------------------------------------------------------------------------------
// Device statistics against the reference

TEST_F(Diagnostics, DeviceStatsMatchReferenceOnRandomRoutings) {
    struct Case {
        int N, E, K, C, F, R;
    };
    const Case cases[] = {{1, 1, 1, 3, 2, 1},     {37, 4, 2, 5, 7, 2},     {300, 8, 1, 16, 24, 3},
                          {1000, 16, 4, 8, 12, 4}, {513, 64, 2, 4, 6, 8},  {200, 8, 2, 6, 5, 16},
                          {64, 8, 8, 3, 3, 5},     {2050, 6, 3, 2, 70, 1},  {40, 2, 1, 64, 130, 2}};
    EXPECT_EQ(moe_stats_token_blocks(2050), 5);  // several token blocks and gradient blocks are covered
    EXPECT_EQ(moe_stats_grad_blocks(64, 130), 3);
    unsigned seed = 1;
    for (const Case& c : cases) {
        SCOPED_TRACE("N=" + std::to_string(c.N) + " E=" + std::to_string(c.E) + " K=" + std::to_string(c.K) +
                     " R=" + std::to_string(c.R));
        RandomRouting r(c.N, c.E, c.K, c.C, c.F, c.R, seed++);
        RefMoeStats want = ref_moe_stats(r.probs, r.topk, r.kept, r.fc_w, r.fc_b, r.proj_w, r.proj_b, c.N, c.E, c.K,
                                         c.C, c.F, c.R);
        MoeStats got = device_stats(r, 1.25f, 3.5f, true);
        EXPECT_EQ(got.tokens_routed, want.tokens_routed);
        EXPECT_EQ(got.tokens_kept, want.tokens_kept);
        EXPECT_EQ(got.dropped_choices, want.dropped_choices);
        EXPECT_EQ(got.tokens_all_dropped, want.tokens_all_dropped);
        EXPECT_EQ(got.cross_rank_choices, want.cross_rank_choices);
        EXPECT_EQ(got.capacity, 123);
        EXPECT_NEAR(got.drop_rate, want.drop_rate, 1e-12);
        EXPECT_NEAR(got.load_imbalance, want.load_imbalance, 1e-12);
        EXPECT_NEAR(got.load_imbalance_kept, want.load_imbalance_kept, 1e-12);
        EXPECT_NEAR(got.router_entropy, want.router_entropy, 1e-6);
        EXPECT_NEAR(got.cross_rank_bytes, want.cross_rank_bytes, 1e-6);
        ASSERT_EQ(got.expert_grad_norm.size(), want.expert_grad_norm.size());
        for (int e = 0; e < c.E; e++)
            EXPECT_NEAR(got.expert_grad_norm[e], want.expert_grad_norm[e], 1e-6 * std::max(1.0, want.expert_grad_norm[e]));
        EXPECT_EQ(got.aux, 1.25);
        EXPECT_EQ(got.z, 3.5);
        if (c.R == 1) {
            EXPECT_EQ(got.cross_rank_choices, 0);
        }
        // sanity of the test data itself: some drops, some tokens fully dropped in the larger cases
        if (c.N >= 300) {
            EXPECT_GT(want.dropped_choices, 0);
            EXPECT_GT(want.tokens_all_dropped, 0);
        }
    }
}

TEST_F(Diagnostics, NoGradientsAndNoLosses) {
    RandomRouting r(50, 4, 2, 3, 3, 2, 99);
    float* d_probs = dupload(r.probs);
    int* d_topk = dupload(r.topk);
    int* d_kept = dupload(r.kept);
    MoeStatsBuffer buf = moe_stats_alloc(4);
    moe_stats_compute_raw(buf, d_probs, d_topk, d_kept, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 50, 4, 2, 3,
                          3, 2);
    MoeStats s = moe_stats_read(buf, 50, 4, 2, 3, 25, 2);
    EXPECT_TRUE(s.expert_grad_norm.empty());
    EXPECT_TRUE(std::isnan(s.aux));
    EXPECT_TRUE(std::isnan(s.z));
    RefMoeStats want = ref_moe_stats(r.probs, r.topk, r.kept, {}, {}, {}, {}, 50, 4, 2, 3, 3, 2);
    EXPECT_EQ(s.tokens_routed, want.tokens_routed);
    std::string json = moe_stats_json(s);
    EXPECT_NE(json.find("\"aux\":null"), std::string::npos);
    EXPECT_NE(json.find("\"expert_grad_norm\":[]"), std::string::npos);
    moe_stats_free(buf);
    CUDA_CHECK(cudaFree(d_probs));
    CUDA_CHECK(cudaFree(d_topk));
    CUDA_CHECK(cudaFree(d_kept));
}

// Expert e lives on rank floor(e*R/E), token t starts on rank floor(t*R/N) (docs/model.md, 26).
// 4 experts on 2 ranks (0, 0, 1, 1); 4 tokens starting on ranks 0, 0, 1, 1, picking experts 1, 2, 2, 0:
// tokens 1 (rank 0 -> expert 2 on rank 1) and 3 (rank 1 -> expert 0 on rank 0) cross.
TEST_F(Diagnostics, CrossRankChoicesOfAHandRouting) {
    RandomRouting r(4, 4, 1, 3, 2, 2, 11);
    r.topk = {1, 2, 2, 0};
    r.kept = {1, 1, 1, 1};
    MoeStats s = device_stats(r, 0.0f, 0.0f, false);
    EXPECT_EQ(s.cross_rank_choices, 2);
    EXPECT_EQ(s.cross_rank_bytes, 2.0 * 4 * 3 * 2);  // out and back, C = 3 floats each
    r.kept = {1, 0, 1, 1};  // a dropped choice does not travel
    EXPECT_EQ(device_stats(r, 0.0f, 0.0f, false).cross_rank_choices, 1);
    r.R = 1;  // one rank: nothing crosses
    EXPECT_EQ(device_stats(r, 0.0f, 0.0f, false).cross_rank_choices, 0);
}

TEST_F(Diagnostics, DeterministicAcrossRunsAndWorkerThreads) {
    RandomRouting r(777, 8, 2, 12, 20, 4, 7);
    std::vector<unsigned char> a, b, c;
    device_stats(r, 1.0f, 2.0f, true, &a);
    device_stats(r, 1.0f, 2.0f, true, &b);
    simt::set_worker_threads(2);
    device_stats(r, 1.0f, 2.0f, true, &c);
    simt::set_worker_threads(1);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, c);
}

TEST_F(Diagnostics, OneDeviceToHostCopyPerRead) {
    RandomRouting r(100, 4, 1, 4, 4, 2, 5);
    float* d_probs = dupload(r.probs);
    int* d_topk = dupload(r.topk);
    int* d_kept = dupload(r.kept);
    MoeStatsBuffer buf = moe_stats_alloc(4);
    long before = simt_device_to_host_copies();
    moe_stats_compute_raw(buf, d_probs, d_topk, d_kept, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 100, 4, 1,
                          4, 4, 2);
    EXPECT_EQ(simt_device_to_host_copies(), before);  // computing copies nothing
    moe_stats_read(buf, 100, 4, 1, 4, 25, 2);
    EXPECT_EQ(simt_device_to_host_copies(), before + 1);
    moe_stats_free(buf);
    CUDA_CHECK(cudaFree(d_probs));
    CUDA_CHECK(cudaFree(d_topk));
    CUDA_CHECK(cudaFree(d_kept));
}

// The statistics of a real layer: its own counts, aux and z come through unchanged.
TEST_F(Diagnostics, AgreeWithTheLayersOwnCounts) {
    ModelConfig cfg;
    cfg.dim = 16;
    cfg.experts = 8;
    cfg.top_k = 2;
    cfg.expert_hidden = 24;
    cfg.capacity_factor = 0.75;  // some drops
    const int N = 96, C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto rand_vec = [&](size_t n, float s) {
        std::vector<float> v(n);
        for (auto& x : v) x = s * normal(rng);
        return v;
    };
    MoeWeights w{}, g{};
    w.router = dupload(rand_vec((size_t)E * C, 1.0f));
    w.noise = dupload(rand_vec((size_t)E * C, 0.0f));
    w.experts.fc_w = dupload(rand_vec((size_t)E * F * C, 0.1f));
    w.experts.fc_b = dupload(rand_vec((size_t)E * F, 0.1f));
    w.experts.proj_w = dupload(rand_vec((size_t)E * C * F, 0.1f));
    w.experts.proj_b = dupload(rand_vec((size_t)E * C, 0.1f));
    std::vector<float> hg = rand_vec((size_t)E * F * C, 0.01f);
    g.experts.fc_w = dupload(hg);
    g.experts.fc_b = dupload(rand_vec((size_t)E * F, 0.01f));
    g.experts.proj_w = dupload(rand_vec((size_t)E * C * F, 0.01f));
    g.experts.proj_b = dupload(rand_vec((size_t)E * C, 0.01f));
    float* u = dupload(rand_vec((size_t)N * C, 1.0f));
    float* out = dalloc<float>((size_t)N * C);
    float* act_f = dalloc<float>(moe_activation_floats(cfg, N));
    int* act_i = dalloc<int>(moe_activation_ints(cfg, N));
    MoeActivations acts{};
    moe_activation_views(acts, act_f, act_i, cfg, N);
    moe_forward(out, acts, w, u, cfg, N, nullptr, 0);

    MoeStatsBuffer buf = moe_stats_alloc(E);
    moe_stats_compute(buf, acts, g, cfg, N, 2);
    MoeStats s = moe_stats_read(buf, cfg, N, 2);
    std::vector<int> routed = download(acts.tokens_per_expert_routed, E);
    std::vector<int> kept_count = download(acts.tokens_per_expert_kept, E);
    EXPECT_EQ(s.tokens_routed, routed);
    EXPECT_EQ(s.tokens_kept, kept_count);
    EXPECT_EQ(s.capacity, expert_capacity(cfg, N));
    EXPECT_EQ(s.capacity, 18);  // ceil(0.75 * 96 * 2 / 8)
    EXPECT_EQ((float)s.aux, download(acts.aux, 1)[0]);
    EXPECT_EQ((float)s.z, download(acts.z, 1)[0]);
    long over = 0;
    for (int e = 0; e < E; e++) over += std::max(0, routed[e] - s.capacity);
    EXPECT_GT(over, 0);
    EXPECT_EQ(s.dropped_choices, over);  // the layer drops exactly what does not fit
    std::vector<int> loads(routed.begin(), routed.end());
    EXPECT_NEAR(s.drop_rate, drop_rate_from_loads(loads, s.capacity), 1e-12);
    std::vector<float> probs = download(acts.probs, (size_t)N * E);
    std::vector<int> topk, kept;
    moe_copy_routing(topk, kept, acts, cfg, N);
    EXPECT_EQ(topk, download(acts.topk_idx, (size_t)N * K));
    EXPECT_EQ(kept, download(acts.kept, (size_t)N * K));
    RefMoeStats want = ref_moe_stats(probs, topk, kept, {}, {}, {}, {}, N, E, K, C, F, 2);
    EXPECT_NEAR(s.router_entropy, want.router_entropy, 1e-6);
    EXPECT_EQ(s.cross_rank_choices, want.cross_rank_choices);
    ASSERT_EQ(s.expert_grad_norm.size(), (size_t)E);
    double sq0 = 0;
    for (int i = 0; i < F * C; i++) sq0 += (double)hg[i] * hg[i];
    EXPECT_GT(s.expert_grad_norm[0], std::sqrt(sq0));  // plus the other three tensors
    // aux from its definition on the layer's own f and P
    std::vector<double> f(E), P(E, 0.0);
    for (int e = 0; e < E; e++) f[e] = routed[e] / (double)(N * K);
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) P[e] += probs[(size_t)t * E + e] / N;
    EXPECT_NEAR(s.aux, aux_loss(f, P), 1e-5);

    moe_stats_free(buf);
    for (float* p : {w.router, w.noise, w.experts.fc_w, w.experts.fc_b, w.experts.proj_w, w.experts.proj_b,
                     g.experts.fc_w, g.experts.fc_b, g.experts.proj_w, g.experts.proj_b, u, out, act_f})
        CUDA_CHECK(cudaFree(p));
    CUDA_CHECK(cudaFree(act_i));
}

// ------------------------------------------------------------------------------------------------
// Specialisation

TEST(DiagnosticsSpecialisation, MutualInformation) {
    // independent: every domain spreads the same way over the experts
    std::vector<double> indep = {10, 20, 30, 40, 5, 10, 15, 20, 1, 2, 3, 4};
    EXPECT_NEAR(mutual_information(indep, 3, 4), 0.0, 1e-12);
    // perfectly specialised: domain d only ever goes to expert d
    std::vector<double> diag = {7, 0, 0, 0, 9, 0, 0, 0, 4};
    EXPECT_NEAR(mutual_information(diag, 3, 3), entropy({0.35, 0.45, 0.2}), 1e-12);  // = H(domain), below ln 3
    std::vector<double> diag_even = {5, 0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0};
    EXPECT_NEAR(mutual_information(diag_even, 3, 4), std::log(3.0), 1e-12);
    // one domain per pair of experts: still a deterministic domain given the expert
    std::vector<double> blocks = {3, 3, 0, 0, 0, 0, 3, 3};
    EXPECT_NEAR(mutual_information(blocks, 2, 4), std::log(2.0), 1e-12);
    EXPECT_EQ(mutual_information({0, 0, 0, 0}, 2, 2), 0.0);
}

TEST(DiagnosticsSpecialisation, DomainExpertTable) {
    // 4 tokens, K=2: domains 0,0,1,1; domain 0 goes to experts 0/1, domain 1 to 2/3, one drop
    std::vector<int> domain = {0, 0, 1, 1};
    std::vector<int> topk = {0, 1, 1, 0, 2, 3, 3, 2};
    std::vector<int> kept = {1, 1, 1, 1, 1, 0, 1, 1};
    DomainExpertTable t(2, 4);
    t.add(domain.data(), topk.data(), kept.data(), 4, 2);
    EXPECT_EQ(t.count(0, 0), 2);
    EXPECT_EQ(t.count(0, 1), 2);
    EXPECT_EQ(t.count(1, 2), 2);
    EXPECT_EQ(t.count(1, 3), 1);  // the dropped choice does not count
    std::vector<double> s = t.shares();
    EXPECT_NEAR(s[0 * 4 + 0], 0.5, 1e-12);
    EXPECT_NEAR(s[1 * 4 + 2], 2.0 / 3.0, 1e-12);
    EXPECT_NEAR(s[1 * 4 + 0], 0.0, 1e-12);
    EXPECT_NEAR(t.mutual_information(), mutual_information(t.counts(), 2, 4), 1e-15);
    // the expert determines the domain: I = H(domain) over the 7 kept choices (4 of domain 0, 3 of domain 1)
    EXPECT_NEAR(t.mutual_information(), entropy({4.0 / 7, 3.0 / 7}), 1e-12);
}

TEST(DiagnosticsSpecialisation, ExpertCharCounts) {
    // layer 0: tokens 'a','b','a','c' (ids 0,1,0,2), K=1, experts 1,1,1,0, the last one dropped
    std::vector<int> tokens = {0, 1, 0, 2};
    std::vector<int> topk = {1, 1, 1, 0};
    std::vector<int> kept = {1, 1, 1, 0};
    ExpertCharCounts c(2, 2, 3);
    c.add(0, tokens.data(), topk.data(), kept.data(), 4, 1);
    c.add(0, tokens.data(), topk.data(), kept.data(), 4, 1);
    EXPECT_EQ(c.count(0, 1, 0), 4);
    EXPECT_EQ(c.count(0, 1, 1), 2);
    EXPECT_EQ(c.count(0, 0, 2), 0);
    EXPECT_EQ(c.expert_total(0, 1), 6);
    EXPECT_EQ(c.expert_total(1, 1), 0);
    auto top = c.top(0, 1, 5);
    ASSERT_EQ(top.size(), 2u);
    EXPECT_EQ(top[0].first, 0);
    EXPECT_EQ(top[0].second, 4);
    EXPECT_EQ(top[1].first, 1);
    EXPECT_TRUE(c.top(0, 0, 5).empty());
}
