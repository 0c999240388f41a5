// tests/test_routing_groups.cpp: token groups (--groups G) and rerouting of dropped choices
// (--overflow reroute), through the SIMT layer, against the plain C++ reference.
//
//  - capacity with groups: the kernel against ref_moe_capacity, and a hand-made G = 2 example
//    (slots handed out per group, by choice rank then token order inside the group);
//  - reroute: the stage kernels against ref_moe_reroute, and a hand-made example (a dropped choice
//    refused by a full expert, then placed at the token's next expert with room; gates
//    renormalised over the final set; the aux loss's counts still the original choices);
//  - the whole layer against the reference over G 1/2, drop/reroute, K 1/2, CF 0.5/1.0, noise;
//  - finite differences of the reference backward with rerouting (routing held fixed);
//  - bit-identical across 1 and 2 worker threads and a shuffled thread order;
//  - the defaults: G = 1 gives the single-group priority rule, no reroute views;
//  - the trainer accepts --groups 2 and --overflow reroute and trains.
#include <gtest/gtest.h>

#include <climits>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "moe_layer.cuh"
#include "reference_model.h"
#include "tests/moe_fixture.h"

namespace {

using namespace moe_test;

ModelConfig variant(int C, int E, int K, int F, int S, int Fs, double cf, bool noise, int groups, bool reroute) {
    ModelConfig c = moe_config(C, E, K, F, S, Fs, cf, noise);
    c.groups = groups;
    c.overflow = reroute ? "reroute" : "drop";
    return c;
}

// ---------------------------------------------------------------- capacity with groups

// Random choices (K distinct experts per token) through the kernel and the reference.
TEST_F(MoeTest, GroupCapacityMatchesReference) {
    struct Case { int N, E, K, G; double cf; };
    for (Case k : {Case{36, 4, 2, 2, 0.5}, Case{36, 4, 1, 3, 1.0}, Case{40, 8, 2, 4, 1.25}, Case{36, 6, 3, 1, 0.5},
                   Case{30, 5, 2, 2, 0.0}}) {
        ModelConfig cfg = variant(8, k.E, k.K, 8, 0, 0, k.cf, false, k.G, false);
        const int N = k.N, E = k.E, K = k.K, G = k.G, cap = expert_capacity(cfg, N), R = expert_buffer_rows(cfg, N);
        SCOPED_TRACE(describe(cfg, N) + " G=" + std::to_string(G));
        std::mt19937 rng(N * 7 + E + K * 3 + G);
        std::vector<int> topk((size_t)N * K);
        for (int t = 0; t < N; t++) {
            std::vector<int> perm(E);
            for (int i = 0; i < E; i++) perm[i] = i;
            std::shuffle(perm.begin(), perm.end(), rng);
            for (int j = 0; j < K; j++) topk[(size_t)t * K + j] = perm[j];
        }
        int *d_topk = dalloc<int>(topk.size()), *kept = dalloc<int>(N * K), *slot = dalloc<int>(N * K),
            *sc = dalloc<int>(E * R), *routed = dalloc<int>(E), *kc = dalloc<int>(E), *fill = dalloc<int>(E * G);
        upload(d_topk, topk);
        moe_capacity(kept, slot, sc, routed, kc, d_topk, N, E, K, cap, R, G, fill);
        std::vector<int> w_kept(N * K), w_slot(N * K), w_sc(E * R), w_routed(E), w_kc(E), w_fill(E * G);
        ref_moe_capacity(w_kept.data(), w_slot.data(), w_sc.data(), w_routed.data(), w_kc.data(), topk.data(), N, K,
                         cap, R, E, G, w_fill.data());
        EXPECT_EQ(download(kept, N * K), w_kept);
        EXPECT_EQ(download(slot, N * K), w_slot);
        EXPECT_EQ(download(sc, E * R), w_sc);
        EXPECT_EQ(download(routed, E), w_routed);
        EXPECT_EQ(download(kc, E), w_kc);
        EXPECT_EQ(download(fill, E * G), w_fill);
        for (int x : w_fill) EXPECT_LE(x, cap);
        if (k.cf == 0.5) {
            int drops = 0;
            for (int x : w_kept) drops += x == 0;
            EXPECT_GT(drops, 0);
        }
        for (int* p : {d_topk, kept, slot, sc, routed, kc, fill}) cudaFree(p);
    }
}

// N = 6 tokens in G = 2 groups of 3, E = 3, K = 2, cap = 2 per expert and group; Rg = 2, R = 4.
//   group 0: t0 (0,1)  t1 (0,2)  t2 (1,0)        group 1: t3 (2,0)  t4 (0,1)  t5 (0,2)
// group 0, first choices: t0->0 s0, t1->0 s1, t2->1 s0; second: t0->1 s1, t1->2 s0, t2->0 full: dropped
// group 1, first choices: t3->2 s0, t4->0 s0, t5->0 s1; second: t3->0 full: dropped, t4->1 s0, t5->2 s1
// (group 1's slot k is row 2 + k). One group of 6 would have dropped t4's and t5's first choices.
TEST_F(MoeTest, GroupCapacityHandExample) {
    const int N = 6, E = 3, K = 2, G = 2, cap = 2, R = 4;
    ModelConfig cfg = variant(8, E, K, 8, 0, 0, 1.0, false, G, false);
    ASSERT_EQ(expert_capacity(cfg, N), cap);  // ceil(1.0 * 3 * 2 / 3)
    ASSERT_EQ(expert_buffer_rows(cfg, N), R);
    const std::vector<int> topk = {0, 1, 0, 2, 1, 0, 2, 0, 0, 1, 0, 2};
    int *d_topk = dalloc<int>(N * K), *kept = dalloc<int>(N * K), *slot = dalloc<int>(N * K), *sc = dalloc<int>(E * R),
        *routed = dalloc<int>(E), *kc = dalloc<int>(E), *fill = dalloc<int>(E * G);
    upload(d_topk, topk);
    moe_capacity(kept, slot, sc, routed, kc, d_topk, N, E, K, cap, R, G, fill);
    EXPECT_EQ(download(kept, N * K), (std::vector<int>{1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1}));
    EXPECT_EQ(download(slot, N * K), (std::vector<int>{0, 1, 1, 0, 0, -1, 2, -1, 2, 2, 3, 3}));
    // rows of expert 0, 1, 2 (choice c = t*K + j)
    EXPECT_EQ(download(sc, E * R), (std::vector<int>{0, 2, 8, 10, 4, 1, 9, -1, 3, -1, 6, 11}));
    EXPECT_EQ(download(routed, E), (std::vector<int>{6, 3, 3}));
    EXPECT_EQ(download(kc, E), (std::vector<int>{4, 3, 3}));
    EXPECT_EQ(download(fill, E * G), (std::vector<int>{2, 2, 2, 1, 1, 2}));
    // the reference agrees
    std::vector<int> w_kept(N * K), w_slot(N * K), w_sc(E * R), w_routed(E), w_kc(E);
    ref_moe_capacity(w_kept.data(), w_slot.data(), w_sc.data(), w_routed.data(), w_kc.data(), topk.data(), N, K, cap,
                     R, E, G);
    EXPECT_EQ(download(slot, N * K), w_slot);
    EXPECT_EQ(download(sc, E * R), w_sc);
    for (int* p : {d_topk, kept, slot, sc, routed, kc, fill}) cudaFree(p);
}

// The defaults: one group, the single priority order over all N tokens (written out here as it was
// before groups existed), and no reroute record in the reference.
TEST_F(MoeTest, OneGroupIsThePlainPriorityRule) {
    const int N = 37, E = 5, K = 2, cap = 9, R = 9;
    std::mt19937 rng(3);
    std::vector<int> topk((size_t)N * K);
    for (int t = 0; t < N; t++) {
        topk[t * K] = (int)(rng() % E);
        topk[t * K + 1] = (topk[t * K] + 1 + (int)(rng() % (E - 1))) % E;
    }
    std::vector<int> want_kept(N * K), want_slot(N * K), used(E, 0);
    for (int j = 0; j < K; j++)
        for (int t = 0; t < N; t++) {
            const int c = t * K + j, e = topk[c];
            want_kept[c] = used[e] < cap;
            want_slot[c] = used[e] < cap ? used[e] : -1;
            used[e]++;
        }
    int *d_topk = dalloc<int>(N * K), *kept = dalloc<int>(N * K), *slot = dalloc<int>(N * K), *sc = dalloc<int>(E * R),
        *routed = dalloc<int>(E), *kc = dalloc<int>(E);
    upload(d_topk, topk);
    moe_capacity(kept, slot, sc, routed, kc, d_topk, N, E, K, cap, R);  // the defaults: G = 1, no fill
    EXPECT_EQ(download(kept, N * K), want_kept);
    EXPECT_EQ(download(slot, N * K), want_slot);
    for (int* p : {d_topk, kept, slot, sc, routed, kc}) cudaFree(p);

    ModelConfig d = moe_config(24, 8, 2, 40, 1, 20, 1.25, true);
    RefMoeState<float> st(d, 37);
    EXPECT_TRUE(st.reroute_placed.empty());
}

// ---------------------------------------------------------------- reroute

// Hand-made routing through the route, capacity and reroute kernels (no noise), E = 4, K = 2,
// N = 4, CF 1: cap = 2. Router logits (softmax keeps their order):
//   t0, t1: [4,3,2,1]  rank 0 1 2 3      t2: [1,4,3,2]  rank 1 2 3 0      t3: [1,2,4,3]  rank 2 3 1 0
// capacity, first choices: t0->0, t1->0, t2->1, t3->2; second: t0->1, t1->1 (expert 1 full: dropped),
// t2->2, t3->3. Round 1: t1 proposes its third expert, 2: full (t3, t2), refused. Round 2: t1
// proposes its fourth, 3: one slot used (t3), accepted as slot 1. t1 ends with experts (0, 3),
// gates p0/(p0+p3), p3/(p0+p3); the aux loss still counts expert 1 for t1 (routed 2, 3, 2, 1).
TEST_F(MoeTest, RerouteHandExample) {
    const int N = 4, E = 4, K = 2;
    ModelConfig cfg = variant(8, E, K, 8, 0, 0, 1.0, false, 1, true);
    MoeFixture fx(cfg, N, 21);
    const int cap = fx.d.capacity, R = fx.d.R;
    ASSERT_EQ(cap, 2);
    const std::vector<float> logits = {4, 3, 2, 1, 4, 3, 2, 1, 1, 4, 3, 2, 1, 2, 4, 3};
    MoeActivations& a = fx.acts;
    upload(a.router_logits, logits);
    moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, nullptr, nullptr, N, E, K);
    EXPECT_EQ(download(a.topk_idx, N * K), (std::vector<int>{0, 1, 0, 1, 1, 2, 2, 3}));
    moe_capacity(a.kept, a.slot, a.slot_choice, a.tokens_per_expert_routed, a.tokens_per_expert_kept, a.topk_idx, N, E,
                 K, cap, R, 1, a.group_fill);
    EXPECT_EQ(download(a.kept, N * K), (std::vector<int>{1, 1, 1, 0, 1, 1, 1, 1}));
    moe_reroute(a.topk_idx, a.kept, a.slot, a.slot_choice, a.group_fill, a.tokens_per_expert_kept, a.reroute_placed,
                a.expert_rank, a.gates, a.probs, nullptr, N, E, K, cap, R, 1);
    EXPECT_EQ(download(a.topk_idx, N * K), (std::vector<int>{0, 1, 0, 3, 1, 2, 2, 3}));
    EXPECT_EQ(download(a.kept, N * K), (std::vector<int>{1, 1, 1, 1, 1, 1, 1, 1}));
    EXPECT_EQ(download(a.slot, N * K), (std::vector<int>{0, 1, 1, 1, 0, 1, 0, 0}));
    EXPECT_EQ(download(a.slot_choice, E * R), (std::vector<int>{0, 2, 4, 1, 6, 5, 7, 3}));
    EXPECT_EQ(download(a.reroute_placed, (E - K) * E), (std::vector<int>{0, 0, 0, 0, 0, 0, 0, 1}));
    EXPECT_EQ(download(a.tokens_per_expert_routed, E), (std::vector<int>{2, 3, 2, 1}));  // the original choices
    EXPECT_EQ(download(a.tokens_per_expert_kept, E), (std::vector<int>{2, 2, 2, 2}));
    EXPECT_EQ(download(a.expert_rank, N * E), (std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3, 1, 2, 3, 0, 2, 3, 1, 0}));
    const std::vector<float> p = download(a.probs, N * E), g = download(a.gates, N * K);
    const float sum1 = p[4] + p[7];
    EXPECT_EQ(g[2], p[4] / sum1);
    EXPECT_EQ(g[3], p[7] / sum1);
    EXPECT_NEAR(g[2] + g[3], 1.0f, 1e-6f);
    const float sum0 = p[0] + p[1];
    EXPECT_EQ(g[0], p[0] / sum0);  // an untouched token keeps its gates
}

// The whole layer's routing, exactly, plus its numbers, against the reference.
void check_groups_layer(MoeFixture& fx, bool training, float aux_coef, float z_coef) {
    const Dims c = fx.d;
    SCOPED_TRACE(describe(fx) + " G=" + std::to_string(fx.cfg.groups) + " " + fx.cfg.overflow +
                 (training ? " training" : " eval"));
    fx.forward(training);
    fx.backward(aux_coef, z_coef);
    RefRun ref(fx, training, aux_coef, z_coef);
    ASSERT_EQ(download(fx.acts.topk_idx, fx.NK()), ref.st.topk_idx);
    ASSERT_EQ(download(fx.acts.kept, fx.NK()), ref.st.kept);
    ASSERT_EQ(download(fx.acts.slot, fx.NK()), ref.st.slot);
    ASSERT_EQ(download(fx.acts.slot_choice, (size_t)c.E * c.R), ref.st.slot_choice);
    EXPECT_EQ(download(fx.acts.tokens_per_expert_routed, c.E), ref.st.routed);
    EXPECT_EQ(download(fx.acts.tokens_per_expert_kept, c.E), ref.st.kept_count);
    if (fx.cfg.reroute()) {
        EXPECT_EQ(download(fx.acts.reroute_placed, ref.st.reroute_placed.size()), ref.st.reroute_placed);
    }
    EXPECT_TRUE(all_close(download(fx.acts.probs, fx.NE()), ref.st.probs, 1e-4));
    EXPECT_TRUE(all_close(download(fx.acts.gates, fx.NK()), ref.st.gates, 1e-4));
    EXPECT_NEAR(download(fx.acts.aux, 1)[0], ref.st.aux, 1e-4 * ref.st.aux);
    EXPECT_NEAR(download(fx.acts.z, 1)[0], ref.st.z, 1e-4 * ref.st.z);
    EXPECT_TRUE(all_close(download(fx.d_out, fx.NC()), ref.out, 1e-4)) << "out";
    EXPECT_TRUE(all_close(download(fx.d_du, fx.NC()), ref.du, 1e-4)) << "du";
    RefMoeParams<float> g = fx.download_grads();
    const bool noise_active = fx.cfg.router_noise && training;
    ref.grads.for_each([&](const char* name, std::vector<float>& want) {
        std::vector<float> got;
        g.for_each([&](const char* n2, std::vector<float>& t) {
            if (std::strcmp(name, n2) == 0) got = t;
        });
        if (!noise_active && std::strcmp(name, "noise") == 0) return;
        EXPECT_TRUE(all_close(got, want, 1e-4)) << name;
    });
}

TEST_F(MoeTest, RerouteHandExampleLayerMatchesReference) {
    ModelConfig cfg = variant(8, 4, 2, 8, 0, 0, 1.0, false, 1, true);
    MoeFixture fx(cfg, 4, 21);
    check_groups_layer(fx, false, 0.3f, 0.05f);
}

TEST_F(MoeTest, GroupsAndRerouteLayerMatchesReferenceOverGrid) {
    int checked = 0, rerouted = 0, group_drops = 0;
    for (int G : {1, 2})
        for (bool reroute : {false, true})
            for (int K : {1, 2})
                for (double cf : {0.5, 1.0})
                    for (bool noise : {false, true}) {
                        ModelConfig cfg = variant(24, 6, K, 40, 1, 20, cf, noise, G, reroute);
                        MoeFixture fx(cfg, 36, 300 + G * 31 + reroute * 17 + K * 5 + (cf == 1.0) * 3 + noise);
                        check_groups_layer(fx, true, 0.3f, 0.05f);
                        if (reroute)
                            for (int x : download(fx.acts.reroute_placed, (size_t)(6 - K) * 6)) rerouted += x;
                        if (G == 2 && !reroute)
                            for (int x : download(fx.acts.kept, fx.NK())) group_drops += x == 0;
                        checked++;
                    }
    EXPECT_EQ(checked, 32);
    EXPECT_GT(rerouted, 0) << "the grid should exercise rerouting";
    EXPECT_GT(group_drops, 0);
}

// Rerouting places choices at their next experts, within each group's capacity, and the gates of a
// token always sum to 1 over its final K experts (K > 1).
TEST_F(MoeTest, ReroutePlacesMoreAndRespectsGroupCapacity) {
    for (int G : {1, 2}) {
        // CF 1: room in total for every choice, so what capacity drops at a full expert can move
        ModelConfig drop = variant(24, 6, 2, 40, 0, 0, 1.0, true, G, false), rr = drop;
        rr.overflow = "reroute";
        MoeFixture a(drop, 36, 9), b(rr, 36, 9);
        a.forward(true);
        b.forward(true);
        int kept_drop = 0, kept_rr = 0;
        for (int x : download(a.acts.kept, a.NK())) kept_drop += x;
        for (int x : download(b.acts.kept, b.NK())) kept_rr += x;
        EXPECT_GT(kept_rr, kept_drop) << "G=" << G;
        EXPECT_EQ(download(a.acts.tokens_per_expert_routed, 6), download(b.acts.tokens_per_expert_routed, 6))
            << "the aux loss counts the original choices";
        EXPECT_EQ(download(a.acts.aux, 1), download(b.acts.aux, 1));
        const int cap = b.d.capacity, Ng = 36 / G;
        auto topk = download(b.acts.topk_idx, b.NK()), kept = download(b.acts.kept, b.NK());
        std::vector<int> per(6 * G, 0);
        for (int t = 0; t < 36; t++)
            for (int j = 0; j < 2; j++)
                if (kept[t * 2 + j]) per[topk[t * 2 + j] * G + t / Ng]++;
        for (int x : per) EXPECT_LE(x, cap);
        auto gates = download(b.acts.gates, b.NK());
        for (int t = 0; t < 36; t++) {
            EXPECT_NE(topk[t * 2], topk[t * 2 + 1]);
            EXPECT_NEAR(gates[t * 2] + gates[t * 2 + 1], 1.0f, 1e-6f);
        }
    }
}

// ---------------------------------------------------------------- gradients

// The reference backward with rerouting, by central differences in double (routing held fixed:
// asserted). The gates' gradient reaches p of the final experts; the aux loss's f stays the
// original choices.
TEST(MoeRerouteReferenceTest, BackwardMatchesFiniteDifferences) {
    struct Case { int E, K, G; double cf; int S; bool noise; };
    for (Case k : {Case{4, 2, 1, 1.0, 1, true}, Case{5, 2, 2, 1.0, 0, true}, Case{4, 1, 2, 1.0, 0, false}}) {
        const int N = 14;
        ModelConfig cfg = variant(6, k.E, k.K, 7, k.S, 5, k.cf, k.noise, k.G, true);
        cfg.aux_coef = 0.7f, cfg.z_coef = 0.3f;
        SCOPED_TRACE(describe(cfg, N) + " G=" + std::to_string(k.G));
        std::mt19937 rng(k.E * 10 + k.K + k.G);
        std::uniform_real_distribution<double> U(-1.0, 1.0);
        std::normal_distribution<double> Gd(0.0, 1.0);
        RefMoeParams<double> w(cfg);
        w.for_each([&](const char*, std::vector<double>& v) {
            for (auto& x : v) x = 0.5 * U(rng);
        });
        for (auto& x : w.router) x *= 2.0;
        std::vector<double> u((size_t)N * cfg.dim), dout(u.size()), eps((size_t)N * cfg.experts);
        for (auto& x : u) x = U(rng);
        for (auto& x : dout) x = U(rng);
        for (auto& x : eps) x = Gd(rng);

        RefMoeState<double> base(cfg, N);
        base.noise_eps = eps;
        std::vector<double> out(u.size()), du(u.size());
        ref_moe_forward(out.data(), base, w, u.data(), cfg, N, true);
        RefMoeParams<double> grads(cfg);
        ref_moe_backward(du.data(), grads, dout.data(), base, w, u.data(), cfg, N);
        int placed = 0;
        for (int x : base.reroute_placed) placed += x;
        EXPECT_GT(placed, 0) << "this case is meant to reroute";
        // routed = the original top-K choices
        {
            RefMoeState<double> orig(cfg, N);
            orig.noise_eps = eps;
            ModelConfig d = cfg;
            d.overflow = "drop";
            std::vector<double> o(u.size());
            ref_moe_forward(o.data(), orig, w, u.data(), d, N, true);
            EXPECT_EQ(orig.routed, base.routed);
            EXPECT_NE(orig.topk_idx, base.topk_idx);
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
            EXPECT_EQ(st.slot, base.slot);
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

// ---------------------------------------------------------------- determinism

struct GroupsSnapshot {
    std::vector<float> out, du, grads, gates;
    std::vector<int> routing;
    bool operator==(const GroupsSnapshot& o) const {
        auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
            return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
        };
        return same(out, o.out) && same(du, o.du) && same(grads, o.grads) && same(gates, o.gates) &&
               routing == o.routing;
    }
};

GroupsSnapshot run_groups_snapshot(MoeFixture& fx) {
    fx.upload_all();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    GroupsSnapshot s;
    s.out = download(fx.d_out, fx.NC());
    s.du = download(fx.d_du, fx.NC());
    fx.download_grads().for_each([&](const char*, std::vector<float>& v) { s.grads.insert(s.grads.end(), v.begin(), v.end()); });
    s.gates = download(fx.acts.gates, fx.NK());
    for (const int* p : {fx.acts.topk_idx, fx.acts.kept, fx.acts.slot}) {
        auto v = download(p, fx.NK());
        s.routing.insert(s.routing.end(), v.begin(), v.end());
    }
    auto v = download(fx.acts.reroute_placed, (size_t)(fx.d.E - fx.d.K) * fx.d.E);
    s.routing.insert(s.routing.end(), v.begin(), v.end());
    return s;
}

TEST_F(MoeTest, GroupsRerouteBitIdenticalAcrossWorkerThreadsAndShuffledOrder) {
    ModelConfig cfg = variant(32, 8, 2, 48, 1, 24, 0.5, true, 2, true);
    MoeFixture fx(cfg, 300, 13);
    simt::set_worker_threads(1);
    GroupsSnapshot one = run_groups_snapshot(fx);
    simt::set_worker_threads(2);
    GroupsSnapshot two = run_groups_snapshot(fx);
    EXPECT_TRUE(one == two) << "1 vs 2 worker threads";
    simt::set_shuffle(12345);
    GroupsSnapshot shuffled = run_groups_snapshot(fx);
    EXPECT_TRUE(one == shuffled) << "shuffled thread order";
    simt::set_shuffle(0);
    simt::set_worker_threads(1);
    GroupsSnapshot again = run_groups_snapshot(fx);
    EXPECT_TRUE(one == again) << "repeat";
}

TEST_F(MoeTest, GroupsRerouteNeverCopyToHostNorSynchronize) {
    ModelConfig cfg = variant(24, 8, 2, 40, 1, 20, 0.5, true, 2, true);
    MoeFixture fx(cfg, 36, 17);
    simt::reset_counters();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    fx.forward(false);
    EXPECT_EQ(simt_device_to_host_copies(), 0);
    EXPECT_EQ(simt_synchronizations(), 0);
}

// ---------------------------------------------------------------- the trainer

std::string groups_trainer() {
    if (const char* env = getenv("MOE_TRAINER")) return env;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::vector<std::string> candidates;
    if (n > 0) {
        exe[n] = '\0';
        std::string dir(exe);
        dir = dir.substr(0, dir.rfind('/'));
        candidates.push_back(dir + "/../../train_moe_cpu");
    }
    candidates.push_back("./train_moe_cpu");
    for (const auto& c : candidates)
        if (access(c.c_str(), X_OK) == 0) {
            char absolute[PATH_MAX];  // the trainer runs in a directory of its own
            return realpath(c.c_str(), absolute) ? std::string(absolute) : c;
        }
    return "";
}

// Runs the trainer on a small text with a tiny model plus `more`; returns the exit status and
// stderr.
int run_trainer(const std::string& more, std::string* err) {
    const std::string bin = groups_trainer();
    if (bin.empty()) return -100;
    char tmpl[] = "/tmp/moe_test_groups_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    {
        std::ofstream f(dir + "/text.txt");
        for (int i = 0; i < 200; i++) f << "the quick brown fox jumps over the lazy dog " << i << "\n";
    }
    const std::string cmd = "cd " + dir + " && '" + bin + "' --data text.txt --layers 1 --dim 16 --heads 2 " +
                            "--block-size 8 --batch 4 --eval-batches 1 --sample-len 8 --experts 4 --top-k 2 " +
                            "--out run " + more + " >stdout.txt 2>stderr.txt </dev/null";
    const int status = std::system(cmd.c_str());
    std::ifstream e(dir + "/stderr.txt");
    std::stringstream ss;
    ss << e.rdbuf();
    *err = ss.str();
    std::system(("rm -rf '" + dir + "'").c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(RoutingGroupsCli, GroupsTrain) {
    std::string err;
    const int status = run_trainer("--groups 2 --steps 2", &err);
    if (status == -100) GTEST_SKIP() << "train_moe_cpu not built";
    EXPECT_EQ(status, 0) << err;
}

TEST(RoutingGroupsCli, RerouteTrains) {
    std::string err;
    const int status = run_trainer("--overflow reroute --capacity-factor 0.5 --steps 2", &err);
    if (status == -100) GTEST_SKIP() << "train_moe_cpu not built";
    EXPECT_EQ(status, 0) << err;
}

}  // namespace
