// tests/test_routing_gate.cpp: the sigmoid score function (--gate sigmoid) and the router entropy
// bonus (--entropy-coef), through the SIMT layer, against the plain C++ reference.
//
//  - the route, losses and router-backward kernels against the reference stage by stage, for the
//    sigmoid gate and for softmax with the entropy bonus (routing exact, values close);
//  - the whole layer against the token-by-token reference over a grid (gate, K 1/2, noise on/off,
//    capacity with and without drops, entropy bonus on/off);
//  - finite differences of the reference in double for the new gradients: the sigmoid path, the
//    aux loss on the normalised scores, the entropy with either gate (routing held fixed: asserted);
//  - bit-identical results for 1 and 2 worker threads and a shuffled thread order;
//  - the defaults: the same buffers, the loss vector's entropy slot untouched;
//  - the trainer: `--gate sigmoid --entropy-coef 0.01` trains, and its state dump holds loss.entropy.
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
#include "moe_layer.cuh"
#include "reference_model.h"
#include "run/safetensors.h"
#include "tests/moe_fixture.h"
#include "tests/test_util.h"

namespace {

using test_util::find_trainer;
using test_util::read_file;

using namespace moe_test;

ModelConfig gate_config(int E, int K, double cf, bool noise, bool sigmoid, float entropy_coef, int S = 1) {
    ModelConfig c = moe_config(24, E, K, 40, S, 20, cf, noise);
    c.gate = sigmoid ? "sigmoid" : "softmax";
    c.entropy_coef = entropy_coef;
    return c;
}

std::string describe_gate(const ModelConfig& c, int N) {
    return describe(c, N) + " gate=" + c.gate + " entropy_coef=" + std::to_string(c.entropy_coef);
}

std::vector<int> routed_counts(const std::vector<int>& topk, int E) {
    std::vector<int> routed(E, 0);
    for (int e : topk) routed[e]++;
    return routed;
}

// ---------------------------------------------------------------- the router's kernels, stage by stage

// Route, losses and router backward on the fixture's own logits, each against its reference on the
// kernel's inputs (so the routing decisions must match exactly).
void check_router_kernels(const ModelConfig& cfg, unsigned seed) {
    const int N = 37;
    MoeFixture fx(cfg, N, seed);
    const int C = fx.d.C, E = fx.d.E, K = fx.d.K;
    const bool noise = cfg.router_noise != 0, sigmoid = cfg.sigmoid_gate(), entropy = cfg.entropy_coef != 0;
    SCOPED_TRACE(describe_gate(cfg, N));
    MoeActivations& a = fx.acts;

    moe_router_logits_forward(a.router_logits, a.noise_logits, fx.dw.router, fx.dw.noise, fx.d_u, N, C, E, noise);
    moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, noise ? a.noise_logits : nullptr,
              noise ? a.noise_eps : nullptr, N, E, K, nullptr, sigmoid, sigmoid ? a.norm_probs : nullptr,
              entropy ? a.token_entropy : nullptr);
    const std::vector<float> r = download(a.router_logits, fx.NE());
    const std::vector<float> nl = noise ? download(a.noise_logits, fx.NE()) : std::vector<float>(fx.NE());
    std::vector<float> probs(fx.NE()), pn(fx.NE()), gates(fx.NK()), lse(N);
    std::vector<int> topk(fx.NK());
    ref_moe_route(probs.data(), gates.data(), topk.data(), lse.data(), r.data(), nl.data(), fx.eps.data(), N, E, K,
                  noise ? 1 : 0, (const float*)nullptr, sigmoid ? 1 : 0, pn.data());
    ASSERT_EQ(download(a.topk_idx, fx.NK()), topk);
    EXPECT_TRUE(all_close(download(a.probs, fx.NE()), probs, 1e-5)) << "scores";
    EXPECT_TRUE(all_close(download(a.gates, fx.NK()), gates, 1e-5)) << "gates";
    if (sigmoid) {
        EXPECT_TRUE(all_close(download(a.norm_probs, fx.NE()), pn, 1e-5)) << "normalised scores";
        for (float s : probs) ASSERT_TRUE(s > 0.0f && s < 1.0f);
    } else {
        EXPECT_EQ(pn, probs) << "softmax: pn = p";
    }
    std::vector<float> token_h(N);
    for (int t = 0; t < N; t++) ref_moe_entropy(&token_h[t], &pn[(size_t)t * E], 1, E);
    if (entropy) {
        EXPECT_TRUE(all_close(download(a.token_entropy, N), token_h, 1e-5)) << "token entropy";
    }

    // the losses kernel: P on pn, H = mean_t H_t
    const std::vector<int> routed = routed_counts(topk, E);
    upload(a.tokens_per_expert_routed, routed);
    moe_router_losses(a.aux, a.z, sigmoid ? a.norm_probs : a.probs, a.router_lse, a.tokens_per_expert_routed, N, E, K,
                      entropy ? a.token_entropy : nullptr, a.entropy);
    float aux = 0, z = 0, h = 0;
    ref_moe_aux_z(&aux, &z, pn.data(), lse.data(), routed.data(), N, E, K);
    ref_moe_entropy(&h, pn.data(), N, E);
    EXPECT_NEAR(download(a.aux, 1)[0], aux, 1e-5 * aux);
    EXPECT_NEAR(download(a.z, 1)[0], z, 1e-5 * z);
    if (entropy) {
        EXPECT_NEAR(download(a.entropy, 1)[0], h, 1e-5 * h);
        EXPECT_GT(h, 0.0f);
        EXPECT_LE(h, std::log((float)E) * 1.0001f);
    }

    // the router backward: random gate gradients (a dropped choice would carry 0: any values do here)
    std::mt19937 rng(seed + 1);
    std::vector<float> d_gates(fx.NK());
    fill_uniform(d_gates, rng, -0.5f, 0.5f);
    upload(a.d_gates, d_gates);
    const float aux_coef = 0.3f, z_coef = 0.05f;
    moe_router_backward(a.d_router_logits, noise ? a.d_noise_logits : nullptr, a.d_gates, a.probs, a.gates,
                        a.topk_idx, a.router_logits, a.router_lse, a.noise_logits, a.noise_eps,
                        a.tokens_per_expert_routed, N, E, K, aux_coef, z_coef, sigmoid, cfg.entropy_coef);
    const std::vector<float> kp = download(a.probs, fx.NE()), kg = download(a.gates, fx.NK()),
                             klse = download(a.router_lse, N);
    std::vector<float> dr(fx.NE()), dnl(fx.NE());
    for (int t = 0; t < N; t++) {
        const size_t o = (size_t)t * E, c = (size_t)t * K;
        ref_moe_router_token_backward(&dr[o], &dnl[o], &d_gates[c], &kp[o], &kg[c], &topk[c], &r[o], klse[t], &nl[o],
                                      &fx.eps[o], routed.data(), N, E, K, aux_coef, z_coef, noise ? 1 : 0,
                                      sigmoid ? 1 : 0, cfg.entropy_coef);
    }
    EXPECT_TRUE(all_close(download(a.d_router_logits, fx.NE()), dr, 1e-4)) << "d router logits";
    if (noise) {
        EXPECT_TRUE(all_close(download(a.d_noise_logits, fx.NE()), dnl, 1e-4)) << "d noise logits";
    }
}

TEST_F(MoeTest, GateRouterKernelsMatchReference) {
    int checked = 0;
    for (bool sigmoid : {true, false})
        for (float coef : {0.0f, 0.05f, -0.2f})
            for (int K : {1, 2})
                for (bool noise : {false, true}) {
                    if (!sigmoid && coef == 0.0f) continue;  // the default: test_moe.cpp
                    check_router_kernels(gate_config(6, K, 1.0, noise, sigmoid, coef), 300 + K * 5 + noise * 3);
                    checked++;
                }
    EXPECT_EQ(checked, 20);
}

// ---------------------------------------------------------------- the whole layer

void check_gate_layer(MoeFixture& fx, bool training, float aux_coef, float z_coef) {
    SCOPED_TRACE(describe_gate(fx.cfg, fx.d.N) + (training ? " training" : " eval"));
    fx.forward(training);
    fx.backward(aux_coef, z_coef);
    RefRun ref(fx, training, aux_coef, z_coef);
    ASSERT_EQ(download(fx.acts.topk_idx, fx.NK()), ref.st.topk_idx);
    ASSERT_EQ(download(fx.acts.kept, fx.NK()), ref.st.kept);
    ASSERT_EQ(download(fx.acts.slot, fx.NK()), ref.st.slot);
    EXPECT_EQ(download(fx.acts.tokens_per_expert_routed, fx.d.E), ref.st.routed);
    EXPECT_TRUE(all_close(download(fx.acts.probs, fx.NE()), ref.st.probs, 1e-4)) << "scores";
    if (fx.cfg.sigmoid_gate()) {
        EXPECT_TRUE(all_close(download(fx.acts.norm_probs, fx.NE()), ref.st.norm_probs, 1e-4)) << "pn";
    }
    EXPECT_TRUE(all_close(download(fx.acts.gates, fx.NK()), ref.st.gates, 1e-4)) << "gates";
    EXPECT_NEAR(download(fx.acts.aux, 1)[0], ref.st.aux, 1e-4 * ref.st.aux);
    EXPECT_NEAR(download(fx.acts.z, 1)[0], ref.st.z, 1e-4 * ref.st.z);
    if (fx.cfg.entropy_coef != 0) {
        EXPECT_NEAR(download(fx.acts.entropy, 1)[0], ref.st.entropy, 1e-4 * ref.st.entropy);
    }
    EXPECT_TRUE(all_close(download(fx.d_out, fx.NC()), ref.out, 1e-4)) << "out";
    EXPECT_TRUE(all_close(download(fx.d_du, fx.NC()), ref.du, 1e-4)) << "du";
    RefMoeParams<float> g = fx.download_grads();
    std::vector<std::vector<float>*> got;
    g.for_each([&](const char*, std::vector<float>& v) { got.push_back(&v); });
    int k = 0;
    const bool noise_active = fx.cfg.router_noise && training;
    ref.grads.for_each([&](const char* name, std::vector<float>& want) {
        std::vector<float>& have = *got[k++];
        if (!noise_active && std::strcmp(name, "noise") == 0) return;
        EXPECT_TRUE(all_close(have, want, 1e-4)) << name;
    });
}

TEST_F(MoeTest, GateLayerMatchesReferenceOverGrid) {
    int checked = 0, dropping = 0;
    for (bool sigmoid : {true, false})
        for (float coef : {0.0f, 0.05f})
            for (int K : {1, 2})
                for (double cf : {0.5, 1.25})
                    for (bool noise : {false, true}) {
                        if (!sigmoid && coef == 0.0f) continue;  // the default: test_moe.cpp
                        ModelConfig cfg = gate_config(6, K, cf, noise, sigmoid, coef);
                        MoeFixture fx(cfg, 37, 500 + K * 7 + (int)(cf * 4) + noise * 11 + sigmoid * 13);
                        check_gate_layer(fx, true, 0.3f, 0.05f);
                        int dropped = 0;
                        for (int x : download(fx.acts.kept, fx.NK())) dropped += x == 0;
                        dropping += dropped > 0;
                        checked++;
                    }
    EXPECT_EQ(checked, 24);
    EXPECT_GT(dropping, 0) << "some configurations must drop choices";
    // evaluation: no noise, the entropy on the clean scores
    MoeFixture fx(gate_config(6, 2, 0.5, true, true, 0.1f), 37, 71);
    check_gate_layer(fx, false, 0.3f, 0.05f);
}

// ---------------------------------------------------------------- finite differences of the reference

TEST(MoeReferenceTest, GateAndEntropyBackwardMatchFiniteDifferences) {
    struct Case { int E, K; double cf; int S; bool noise; bool sigmoid; double coef; };
    for (Case k : {Case{4, 2, 0.5, 1, true, true, 0.0}, Case{4, 1, 0.5, 0, true, true, 0.4},
                   Case{5, 2, 1.25, 0, true, true, -0.3}, Case{3, 3, 0.0, 1, false, true, 0.5},
                   Case{4, 2, 0.5, 1, true, false, 0.4}, Case{4, 1, 1.25, 0, false, false, -0.3}}) {
        const int N = 13;
        ModelConfig cfg = moe_config(6, k.E, k.K, 7, k.S, 5, k.cf, k.noise);
        cfg.gate = k.sigmoid ? "sigmoid" : "softmax";
        cfg.entropy_coef = (float)k.coef;
        cfg.aux_coef = 0.7f, cfg.z_coef = 0.3f;
        SCOPED_TRACE(describe_gate(cfg, N));
        std::mt19937 rng(k.E * 10 + k.K + (k.sigmoid ? 100 : 0));
        std::uniform_real_distribution<double> U(-1.0, 1.0);
        std::normal_distribution<double> G(0.0, 1.0);
        RefMoeParams<double> w(cfg);
        w.for_each([&](const char*, std::vector<double>& v) {
            for (auto& x : v) x = 0.5 * U(rng);
        });
        for (auto& x : w.router) x *= 2.0;
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
        EXPECT_GT(base.entropy, 0.0);
        if (k.sigmoid) {  // pn is s normalised; aux on pn is 1 at uniform, here just positive
            double row = 0.0;
            for (int i = 0; i < cfg.experts; i++) row += base.norm_probs[i];
            EXPECT_NEAR(row, 1.0, 1e-12);
        }

        auto loss_at = [&](std::vector<double>& x, size_t i, double h) {
            const double keep = x[i];
            x[i] = keep + h;
            RefMoeState<double> st(cfg, N);
            st.noise_eps = eps;
            std::vector<double> o(u.size());
            ref_moe_forward(o.data(), st, w, u.data(), cfg, N, true);
            x[i] = keep;
            EXPECT_EQ(st.topk_idx, base.topk_idx);
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
        std::vector<std::vector<double>*> gv;
        grads.for_each([&](const char*, std::vector<double>& v) { gv.push_back(&v); });
        int idx = 0;
        w.for_each([&](const char* name, std::vector<double>& v) {
            if (!k.noise && std::strcmp(name, "noise") == 0) {
                idx++;
                return;
            }
            check(name, v, *gv[idx++]);
        });
    }
}

// The router's part alone (aux on pn, entropy, sigmoid), away from the experts: the gradient of
// aux_coef aux - entropy_coef H with respect to the router logits, in double, by central differences.
TEST(MoeReferenceTest, AuxOnNormalisedScoresAndEntropyGradients) {
    const int N = 5, E = 4, K = 2;
    std::mt19937 rng(9);
    std::uniform_real_distribution<double> U(-2.0, 2.0);
    std::vector<double> r((size_t)N * E);
    for (auto& x : r) x = U(rng);
    for (int sigmoid : {1, 0}) {
        SCOPED_TRACE(sigmoid ? "sigmoid" : "softmax");
        const double aux_coef = 0.9, entropy_coef = 0.6;
        std::vector<double> probs(r.size()), pn(r.size()), gates((size_t)N * K), lse(N);
        std::vector<int> topk((size_t)N * K);
        auto loss_of = [&](const std::vector<double>& logits, std::vector<int>* routed_out) {
            ref_moe_route(probs.data(), gates.data(), topk.data(), lse.data(), logits.data(), logits.data(),
                          logits.data(), N, E, K, 0, (const double*)nullptr, sigmoid, pn.data());
            std::vector<int> routed = routed_counts(topk, E);
            if (routed_out) *routed_out = routed;
            double aux = 0, z = 0, h = 0;
            ref_moe_aux_z(&aux, &z, pn.data(), lse.data(), routed.data(), N, E, K);
            ref_moe_entropy(&h, pn.data(), N, E);
            return aux_coef * aux - entropy_coef * h;
        };
        std::vector<int> routed;
        loss_of(r, &routed);
        const std::vector<int> topk0 = topk;
        const std::vector<double> p0 = probs, g0 = gates, lse0 = lse;
        std::vector<double> zero_dg(K, 0.0), dr(E), dnl(E);
        for (int t = 0; t < N; t++) {
            const size_t o = (size_t)t * E;
            ref_moe_router_token_backward(dr.data(), dnl.data(), zero_dg.data(), &p0[o], &g0[(size_t)t * K],
                                          &topk0[(size_t)t * K], &r[o], lse0[t], &r[o], &r[o], routed.data(), N, E,
                                          K, aux_coef, 0.0, 0, sigmoid, entropy_coef);
            for (int i = 0; i < E; i++) {
                std::vector<double> x = r;
                const double h = 1e-6;
                x[o + i] += h;
                const double up = loss_of(x, nullptr);
                ASSERT_EQ(topk, topk0);
                x[o + i] -= 2 * h;
                const double down = loss_of(x, nullptr);
                ASSERT_EQ(topk, topk0);
                const double fd = (up - down) / (2 * h);
                ASSERT_NEAR(dr[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << "token " << t << " expert " << i;
            }
        }
    }
}

// ---------------------------------------------------------------- determinism

struct GateSnapshot {
    std::vector<std::vector<float>> floats;
    std::vector<int> ints;
    bool operator==(const GateSnapshot& o) const {
        if (floats.size() != o.floats.size() || ints != o.ints) return false;
        for (size_t i = 0; i < floats.size(); i++)
            if (floats[i].size() != o.floats[i].size() ||
                std::memcmp(floats[i].data(), o.floats[i].data(), floats[i].size() * sizeof(float)) != 0)
                return false;
        return true;
    }
};

GateSnapshot run_gate_snapshot(MoeFixture& fx) {
    fx.upload_all();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    GateSnapshot s;
    const MoeActivations& a = fx.acts;
    s.floats = {download(fx.d_out, fx.NC()), download(fx.d_du, fx.NC()), download(a.probs, fx.NE()),
                download(a.norm_probs, fx.NE()), download(a.gates, fx.NK()), download(a.aux, 1), download(a.z, 1),
                download(a.entropy, 1), download(a.token_entropy, fx.d.N), download(a.d_router_logits, fx.NE()),
                download(a.d_noise_logits, fx.NE())};
    RefMoeParams<float> g = fx.download_grads();
    g.for_each([&](const char*, std::vector<float>& v) { s.floats.push_back(v); });
    for (const int* p : {a.topk_idx, a.kept, a.slot}) {
        auto v = download(p, fx.NK());
        s.ints.insert(s.ints.end(), v.begin(), v.end());
    }
    return s;
}

TEST_F(MoeTest, GateBitIdenticalAcrossWorkerThreadsAndShuffledOrder) {
    MoeFixture fx(gate_config(8, 2, 1.0, true, true, 0.02f), 300, 23);
    simt::set_worker_threads(1);
    GateSnapshot one = run_gate_snapshot(fx);
    simt::set_worker_threads(2);
    GateSnapshot two = run_gate_snapshot(fx);
    EXPECT_TRUE(one == two) << "1 vs 2 worker threads";
    simt::set_shuffle(777);
    GateSnapshot shuffled = run_gate_snapshot(fx);
    EXPECT_TRUE(one == shuffled) << "shuffled thread order";
    simt::set_shuffle(0);
    simt::set_worker_threads(1);
    EXPECT_TRUE(one == run_gate_snapshot(fx)) << "repeat";
}

// ---------------------------------------------------------------- the defaults

TEST_F(MoeTest, GateDefaultsAddNothing) {
    ModelConfig def = gate_config(6, 2, 1.0, true, false, 0.0f);
    ASSERT_FALSE(def.sigmoid_gate());
    MoeFixture fx(def, 37, 5);
    // the views of pn and the entropy exist in every configuration (static shapes); the flags
    // decide whether they are written, not the layout
    ModelConfig sig = def, ent = def;
    sig.gate = "sigmoid";
    ent.entropy_coef = 0.01f;
    EXPECT_EQ(moe_activation_floats(sig, 37), moe_activation_floats(def, 37));
    EXPECT_EQ(moe_activation_floats(ent, 37), moe_activation_floats(def, 37));
    EXPECT_EQ(moe_activation_ints(sig, 37), moe_activation_ints(def, 37));

    // the loss vector: the default leaves the entropy slot alone and adds aux and z as before
    fx.forward(true);
    float* losses = dalloc<float>(5);
    upload(losses, std::vector<float>{2.0f, 2.0f, 0.0f, 0.0f, 0.0f});
    fx.cfg.aux_coef = 0.01f, fx.cfg.z_coef = 0.001f;
    moe_loss_forward(losses, fx.acts, fx.cfg);
    std::vector<float> l = download(losses, 5);
    const float aux = download(fx.acts.aux, 1)[0], z = download(fx.acts.z, 1)[0];
    EXPECT_FLOAT_EQ(l[0], 2.0f + (0.01f * aux + 0.001f * z));
    EXPECT_EQ(l[2], aux);
    EXPECT_EQ(l[3], z);
    EXPECT_EQ(l[4], 0.0f);
    // with the bonus: total -= c H, the slot holds H
    MoeFixture fe(ent, 37, 5);
    fe.forward(true);
    upload(losses, std::vector<float>{2.0f, 2.0f, 0.0f, 0.0f, 0.0f});
    fe.cfg.aux_coef = 0.01f, fe.cfg.z_coef = 0.001f;
    moe_loss_forward(losses, fe.acts, fe.cfg);
    l = download(losses, 5);
    const float h = download(fe.acts.entropy, 1)[0];
    EXPECT_GT(h, 0.0f);
    EXPECT_EQ(l[4], h);
    EXPECT_FLOAT_EQ(l[0], (2.0f + (0.01f * download(fe.acts.aux, 1)[0] + 0.001f * download(fe.acts.z, 1)[0])) - 0.01f * h);
    // softmax with the bonus routes exactly as the default (same scores, same choices, same gates)
    EXPECT_EQ(download(fe.acts.topk_idx, fe.NK()), download(fx.acts.topk_idx, fx.NK()));
    EXPECT_EQ(download(fe.acts.gates, fe.NK()), download(fx.acts.gates, fx.NK()));
    cudaFree(losses);
}

// ---------------------------------------------------------------- the trainer

int run_trainer(const std::string& bin, const std::string& dir, const std::string& args, const std::string& tag) {
    const std::string cmd = "cd '" + dir + "' && '" + bin + "' " + args + " >'" + dir + "/" + tag + ".out' 2>'" + dir +
                            "/" + tag + ".err' </dev/null";
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(RoutingGateCli, SigmoidWithEntropyBonusTrainsAndDumps) {
    const std::string bin = find_trainer();
    ASSERT_FALSE(bin.empty()) << "train_moe_cpu not found: build it first, or set MOE_TRAINER";
    char tmpl[] = "/tmp/moe_test_gate_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    {
        std::ofstream f(dir + "/corpus.txt", std::ios::binary);
        f << make_synthetic_corpus(11, 4000).text;
    }
    const std::string tiny = "--data corpus.txt --layers 1 --dim 16 --heads 2 --block-size 8 --batch 2 "
                             "--eval-batches 2 --sample-len 16 --experts 4 --top-k 2 ";
    const std::string variant = "--gate sigmoid --entropy-coef 0.01 ";
    EXPECT_EQ(run_trainer(bin, dir, tiny + variant + "--steps 2 --out run", "train"), 0) << read_file(dir + "/train.err");
    const std::string metrics = read_file(dir + "/run/metrics.jsonl");
    EXPECT_NE(metrics.find("\"entropy\""), std::string::npos) << metrics;
    EXPECT_NE(read_file(dir + "/train.out").find("entropy"), std::string::npos);

    // the state dump holds loss.entropy, and total = ce + aux_coef aux + z_coef z - entropy_coef H
    ASSERT_EQ(run_trainer(bin, dir, tiny + variant + "--steps 2 --dump-state dump.safetensors", "dump"), 0)
        << read_file(dir + "/dump.err");
    safetensors::File f;
    std::string error;
    ASSERT_TRUE(safetensors::read(dir + "/dump.safetensors", f, error)) << error;
    const safetensors::Tensor* h = f.find("loss.entropy");
    ASSERT_NE(h, nullptr);
    const float H = h->floats()[0], ce = f.find("loss.ce")->floats()[0], aux = f.find("loss.aux")->floats()[0],
                z = f.find("loss.z")->floats()[0], total = f.find("loss.total")->floats()[0];
    EXPECT_GT(H, 0.0f);
    EXPECT_LE(H, std::log(4.0f) * 1.0001f);  // one layer
    EXPECT_NEAR(total, ce + 0.01f * aux + 0.001f * z - 0.01f * H, 1e-5);

    // without the flag: no loss.entropy
    ASSERT_EQ(run_trainer(bin, dir, tiny + "--steps 2 --dump-state plain.safetensors", "plain"), 0)
        << read_file(dir + "/plain.err");
    safetensors::File plain;
    ASSERT_TRUE(safetensors::read(dir + "/plain.safetensors", plain, error)) << error;
    EXPECT_EQ(plain.find("loss.entropy"), nullptr);
    std::system(("rm -rf '" + dir + "'").c_str());
}

}  // namespace
