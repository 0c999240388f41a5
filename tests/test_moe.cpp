// tests/test_moe.cpp: the MoE layer (moe_layer.cuh and its stages) through the SIMT layer, against
// the plain C++ references.
//
//  - every stage kernel, forward and backward, against its ref_moe_<stage> (tests/reference_moe_stages.h);
//  - the whole moe_forward / moe_backward against the token-by-token reference over a grid of
//    configurations (E, K, capacity factor, shared experts, noise), routing decisions exact;
//  - finite differences of the reference backward in double (routing held fixed: asserted);
//  - capacity drops that follow the priority rule, ties, aux = 1 for uniform routing;
//  - bit-identical results for 1 and 2 worker threads and shuffled thread order;
//  - no device-to-host copy and no synchronisation inside forward + backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "moe_layer.cuh"
#include "reference_model.h"
#include "tests/moe_fixture.h"
#include "tests/reference_moe_stages.h"

namespace {

using namespace moe_test;

// ---------------------------------------------------------------- configuration

TEST(MoeConfigTest, CapacityFormula) {
    ModelConfig c = moe_config(128, 8, 2, 256, 0, 0, 1.25, false);
    EXPECT_EQ(expert_capacity(c, 768), 240);
    EXPECT_EQ(expert_buffer_rows(c, 768), 240);
    c.experts = 4, c.capacity_factor = 0.5;  // ceil(0.5*37*2/4) = ceil(9.25)
    EXPECT_EQ(expert_capacity(c, 37), 10);
    c.capacity_factor = 0.0;  // no limit
    EXPECT_EQ(expert_capacity(c, 37), 37);
    EXPECT_EQ(expert_buffer_rows(c, 37), 37);
    c.capacity_factor = 8.0;  // cap above N: buffers still need only N rows
    EXPECT_EQ(expert_capacity(c, 37), 148);
    EXPECT_EQ(expert_buffer_rows(c, 37), 37);
    c.experts = 8, c.top_k = 1, c.capacity_factor = 1.0;  // 10/8 = 1.25 -> 2
    EXPECT_EQ(expert_capacity(c, 10), 2);
    c.capacity_factor = 0.7;  // the double 0.7, not the float: ceil(0.7*100*1/7) = ceil(10.000000000000002) = 11
    c.experts = 7;
    EXPECT_EQ(expert_capacity(c, 100), (int)std::ceil(0.7 * 100.0 * 1.0 / 7.0));
}

TEST(MoeConfigDeathTest, MoreThan64ExpertsIsAnError) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");  // the layer's worker threads may exist already
    ModelConfig c = moe_config(8, 65, 2, 8, 0, 0, 1.25, false);
    MoeActivations a{};
    MoeWeights w{};
    EXPECT_EXIT(moe_forward(nullptr, a, w, nullptr, c, 8, nullptr, 0), ::testing::ExitedWithCode(EXIT_FAILURE),
                "E <= 64");
}

TEST(MoeConfigTest, ActivationViewsAreDisjointAndGrowWithN) {
    ModelConfig a = moe_config(24, 8, 2, 40, 1, 20, 1.25, true);
    EXPECT_LT(moe_activation_floats(a, 37), moe_activation_floats(a, 100));
    EXPECT_LT(moe_activation_ints(a, 37), moe_activation_ints(a, 100));
    // views of a fake base: every view inside the allocation, in order, without overlap
    MoeActivations v{};
    float* fb = reinterpret_cast<float*>(size_t(1) << 20);
    int* ib = reinterpret_cast<int*>(size_t(1) << 30);
    moe_activation_views(v, fb, ib, a, 37);
    EXPECT_EQ(v.N, 37);
    size_t float_end = 0, int_end = 0;
    moe_for_each_view(
        v, a, 37,
        [&](float*& p, size_t n) {
            if (n == 0) {  // a view this configuration does not use
                EXPECT_EQ(p, nullptr);
                return;
            }
            size_t off = p - fb;
            EXPECT_GE(off, float_end);
            float_end = off + n;
        },
        [&](int*& p, size_t n) {
            if (n == 0) {
                EXPECT_EQ(p, nullptr);
                return;
            }
            size_t off = p - ib;
            EXPECT_GE(off, int_end);
            int_end = off + n;
        });
    EXPECT_LE(float_end, moe_activation_floats(a, 37));
    EXPECT_LE(int_end, moe_activation_ints(a, 37));
    EXPECT_EQ((size_t)(v.noise_eps - fb) % 2, 0u);
}

// ---------------------------------------------------------------- forward stages

TEST_F(MoeTest, RouteMatchesReference) {
    struct Case { int N, E, K; bool noise; };
    for (Case k : {Case{37, 8, 2, false}, Case{37, 8, 2, true}, Case{50, 5, 1, true}, Case{70, 64, 3, true},
                   Case{33, 4, 4, false}}) {
        MoeFixture fx(k.N, 16, k.E, k.K, 8, 0, 0, 1.25, k.noise, 11 + k.E);
        std::mt19937 rng(5);
        std::vector<float> r(fx.NE()), nl(fx.NE());
        fill_uniform(r, rng, -3.0f, 3.0f);
        fill_uniform(nl, rng, -3.0f, 3.0f);
        upload(fx.acts.router_logits, r);
        upload(fx.acts.noise_logits, nl);
        MoeActivations& a = fx.acts;
        moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, k.noise ? a.noise_logits : nullptr,
                  k.noise ? a.noise_eps : nullptr, k.N, k.E, k.K);
        RefMoeState<float> st(fx.cfg, k.N);
        ref_moe_route(st.probs.data(), st.gates.data(), st.topk_idx.data(), st.lse.data(), r.data(), nl.data(),
                      fx.eps.data(), k.N, k.E, k.K, k.noise);
        SCOPED_TRACE(describe(fx));
        EXPECT_EQ(download(a.topk_idx, fx.NK()), st.topk_idx);
        EXPECT_TRUE(all_close(download(a.probs, fx.NE()), st.probs, 1e-6));
        EXPECT_TRUE(all_close(download(a.gates, fx.NK()), st.gates, 1e-6));
        EXPECT_TRUE(all_close(download(a.router_lse, k.N), st.lse, 1e-6));
    }
}

TEST_F(MoeTest, RouteTiesGoToTheLowerIndex) {
    const int N = 4, E = 6, K = 3;
    MoeFixture fx(N, 8, E, K, 8, 0, 0, 0.0, false, 1);
    std::vector<float> r = {
        0, 0, 0, 0, 0, 0,   // all equal: 0, 1, 2
        1, 3, 3, 0, 3, 2,   // three-way tie at the top: 1, 2, 4
        5, 1, 2, 2, 1, 2,   // 0, then the tie 2, 3, 5 -> 2, 3
        -1, 4, -1, 4, -1, 4 // 1, 3, 5
    };
    upload(fx.acts.router_logits, r);
    MoeActivations& a = fx.acts;
    moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, nullptr, nullptr, N, E, K);
    std::vector<int> want = {0, 1, 2, 1, 2, 4, 0, 2, 3, 1, 3, 5};
    EXPECT_EQ(download(a.topk_idx, fx.NK()), want);
    auto g = download(a.gates, fx.NK());
    for (int j = 0; j < K; j++) EXPECT_FLOAT_EQ(g[j], 1.0f / 3.0f);  // equal logits: equal renormalised gates
}

TEST_F(MoeTest, CapacityScanMatchesReference) {
    struct Case { int N, E, K; double cf; };
    for (Case k : {Case{37, 8, 2, 1.25}, Case{37, 4, 1, 0.5}, Case{1000, 7, 3, 0.8}, Case{5, 8, 2, 0.0},
                   Case{301, 16, 2, 1.0}}) {
        MoeFixture fx(k.N, 4, k.E, k.K, 4, 0, 0, k.cf, false, 3);
        // skewed choices (expert e with weight ~ 1/(e+1)), distinct within a token
        std::mt19937 rng(k.N + k.E);
        std::vector<int> topk(fx.NK());
        for (int t = 0; t < k.N; t++) {
            std::vector<int> perm(k.E);
            for (int e = 0; e < k.E; e++) perm[e] = e;
            for (int e = 0; e < k.E; e++) {  // partial shuffle biased to low indices
                std::uniform_int_distribution<int> d(e, std::min(k.E - 1, e + 2));
                std::swap(perm[e], perm[d(rng)]);
            }
            for (int j = 0; j < k.K; j++) topk[t * k.K + j] = perm[j];
        }
        upload(fx.acts.topk_idx, topk);
        MoeActivations& a = fx.acts;
        moe_capacity(a.kept, a.slot, a.slot_choice, a.tokens_per_expert_routed, a.tokens_per_expert_kept, a.topk_idx,
                     k.N, k.E, k.K, fx.d.capacity, fx.d.R);
        RefMoeState<float> st(fx.cfg, k.N);
        ref_moe_capacity(st.kept.data(), st.slot.data(), st.slot_choice.data(), st.routed.data(), st.kept_count.data(),
                         topk.data(), k.N, k.K, fx.d.capacity, fx.d.R, k.E);
        SCOPED_TRACE(describe(fx));
        EXPECT_EQ(download(a.kept, fx.NK()), st.kept);
        EXPECT_EQ(download(a.slot, fx.NK()), st.slot);
        EXPECT_EQ(download(a.slot_choice, (size_t)k.E * fx.d.R), st.slot_choice);
        EXPECT_EQ(download(a.tokens_per_expert_routed, k.E), st.routed);
        EXPECT_EQ(download(a.tokens_per_expert_kept, k.E), st.kept_count);
    }
}

// dispatch, bias+GELU, output bias, combine, aux/z on the routing of a real forward pass
TEST_F(MoeTest, DispatchGeluCombineAuxZMatchReference) {
    MoeFixture fx(37, 24, 4, 2, 40, 2, 20, 1.25, false, 21);
    fx.forward(true);
    const Dims c = fx.d;
    MoeActivations& a = fx.acts;
    const int R = c.R, rows = c.E * R;
    auto slot_choice = download(a.slot_choice, (size_t)rows);
    ASSERT_NE(std::count(slot_choice.begin(), slot_choice.end(), -1), 0) << "want empty buffer rows";
    // dispatch
    std::vector<float> xin((size_t)rows * c.C);
    ref_moe_dispatch(xin.data(), fx.u.data(), slot_choice.data(), rows, c.C, c.K);
    EXPECT_EQ(download(a.expert_in, xin.size()), xin);
    // bias + GELU on known fc outputs
    std::mt19937 rng(2);
    std::vector<float> pre((size_t)rows * c.F), act(pre.size());
    fill_uniform(pre, rng, -4.0f, 4.0f);
    upload(a.expert_pre, pre);
    expert_hidden_forward(a.expert_pre, a.expert_act, fx.dw.experts.fc_b, a.slot_choice, c.E, R, c.F);
    ref_moe_expert_hidden(pre.data(), act.data(), fx.w.fc_b.data(), slot_choice.data(), rows, R, c.F);
    EXPECT_TRUE(all_close(download(a.expert_pre, pre.size()), pre, 1e-6));
    EXPECT_TRUE(all_close(download(a.expert_act, act.size()), act, 1e-6));
    // output bias on known GEMM outputs: empty rows stay 0
    std::vector<float> y((size_t)rows * c.C);
    fill_uniform(y, rng, -1.0f, 1.0f);
    for (int row = 0; row < rows; row++)
        if (slot_choice[row] < 0) std::fill(y.begin() + (size_t)row * c.C, y.begin() + (size_t)(row + 1) * c.C, 0.0f);
    upload(a.expert_out, y);
    expert_output_bias(a.expert_out, fx.dw.experts.proj_b, a.slot_choice, c.E, R, c.C);
    ref_moe_expert_output_bias(y.data(), fx.w.proj_b.data(), slot_choice.data(), rows, R, c.C);
    EXPECT_EQ(download(a.expert_out, y.size()), y);
    // combine on known expert and shared outputs
    std::vector<float> ys((size_t)c.S * c.N * c.C), out(fx.NC());
    fill_uniform(y, rng, -1.0f, 1.0f);
    fill_uniform(ys, rng, -1.0f, 1.0f);
    upload(a.expert_out, y);
    upload(a.shared_out, ys);
    moe_combine(fx.d_out, a.expert_out, a.shared_out, a.gates, a.topk_idx, a.kept, a.slot, c.N, c.C, c.K, R, c.S);
    auto gates = download(a.gates, fx.NK());
    auto topk = download(a.topk_idx, fx.NK());
    auto kept = download(a.kept, fx.NK());
    auto slot = download(a.slot, fx.NK());
    ref_moe_combine(out.data(), y.data(), ys.data(), gates.data(), topk.data(), kept.data(), slot.data(), c.N, c.C,
                    c.K, R, c.S);
    EXPECT_TRUE(all_close(download(fx.d_out, out.size()), out, 1e-6));
    // aux, z
    auto probs = download(a.probs, fx.NE());
    auto lse = download(a.router_lse, c.N);
    auto routed = download(a.tokens_per_expert_routed, c.E);
    float aux = 0, z = 0;
    ref_moe_aux_z(&aux, &z, probs.data(), lse.data(), routed.data(), c.N, c.E, c.K);
    EXPECT_NEAR(download(a.aux, 1)[0], aux, 1e-5 * aux);
    EXPECT_NEAR(download(a.z, 1)[0], z, 1e-5 * z);
}

// the expert FFNs (batched GEMMs, biases, GELU) against plain linear layers, expert by expert
TEST_F(MoeTest, ExpertAndSharedFfnMatchReference) {
    MoeFixture fx(37, 24, 4, 2, 40, 2, 20, 1.25, false, 23);
    fx.forward(true);
    const Dims c = fx.d;
    const int R = c.R;
    auto xin = download(fx.acts.expert_in, (size_t)c.E * R * c.C);
    std::vector<float> pre((size_t)R * c.F), act(pre.size()), y((size_t)R * c.C);
    auto got_pre = download(fx.acts.expert_pre, (size_t)c.E * R * c.F);
    auto got_y = download(fx.acts.expert_out, (size_t)c.E * R * c.C);
    auto slot_choice = download(fx.acts.slot_choice, (size_t)c.E * R);
    ASSERT_NE(std::count(slot_choice.begin(), slot_choice.end(), -1), 0) << "want empty buffer rows";
    auto slice = [](const std::vector<float>& v, size_t begin, size_t n) {
        return std::vector<float>(v.begin() + begin, v.begin() + begin + n);
    };
    for (int e = 0; e < c.E; e++) {
        ref_matmul_forward(pre.data(), &xin[(size_t)e * R * c.C], &fx.w.fc_w[(size_t)e * c.F * c.C],
                           &fx.w.fc_b[(size_t)e * c.F], R, c.C, c.F);
        for (size_t i = 0; i < pre.size(); i++) {
            const bool empty = slot_choice[e * R + i / c.F] < 0;  // an empty row stays 0 all the way
            if (empty) pre[i] = 0.0f;
            act[i] = ref_gelu(pre[i]);
        }
        ref_matmul_forward(y.data(), act.data(), &fx.w.proj_w[(size_t)e * c.C * c.F], &fx.w.proj_b[(size_t)e * c.C], R,
                           c.F, c.C);
        for (int r = 0; r < R; r++)
            if (slot_choice[e * R + r] < 0) std::fill(y.begin() + (size_t)r * c.C, y.begin() + (size_t)(r + 1) * c.C, 0.0f);
        EXPECT_TRUE(all_close(slice(got_pre, (size_t)e * R * c.F, pre.size()), pre, 1e-4)) << "expert " << e;
        EXPECT_TRUE(all_close(slice(got_y, (size_t)e * R * c.C, y.size()), y, 1e-4)) << "expert " << e;
    }
    auto got_ys = download(fx.acts.shared_out, (size_t)c.S * c.N * c.C);
    std::vector<float> spre((size_t)c.N * c.Fs), sact(spre.size()), ys(fx.NC());
    for (int s = 0; s < c.S; s++) {
        ref_matmul_forward(spre.data(), fx.u.data(), &fx.w.shared_fc_w[(size_t)s * c.Fs * c.C],
                           &fx.w.shared_fc_b[(size_t)s * c.Fs], c.N, c.C, c.Fs);
        for (size_t i = 0; i < spre.size(); i++) sact[i] = ref_gelu(spre[i]);
        ref_matmul_forward(ys.data(), sact.data(), &fx.w.shared_proj_w[(size_t)s * c.C * c.Fs],
                           &fx.w.shared_proj_b[(size_t)s * c.C], c.N, c.Fs, c.C);
        EXPECT_TRUE(all_close(slice(got_ys, (size_t)s * fx.NC(), fx.NC()), ys, 1e-4)) << "shared " << s;
    }
}

// ---------------------------------------------------------------- backward stages

TEST_F(MoeTest, BackwardStagesMatchReference) {
    for (bool noise : {false, true}) {
        MoeFixture fx(37, 24, 8, 2, 40, 1, 20, noise ? 1.25 : 0.5, noise, 31);
        fx.forward(true);
        const Dims c = fx.d;
        MoeActivations& a = fx.acts;
        const int R = c.R, rows = c.E * R;
        SCOPED_TRACE(describe(fx));
        auto slot_choice = download(a.slot_choice, (size_t)rows);
        if (noise) {
            ASSERT_NE(std::count(slot_choice.begin(), slot_choice.end(), -1), 0) << "want empty buffer rows";
        }
        auto gates = download(a.gates, fx.NK());
        auto topk = download(a.topk_idx, fx.NK());
        auto kept = download(a.kept, fx.NK());
        auto slot = download(a.slot, fx.NK());
        auto probs = download(a.probs, fx.NE());
        auto r = download(a.router_logits, fx.NE());
        auto nl = download(a.noise_logits, fx.NE());
        auto lse = download(a.router_lse, c.N);
        auto routed = download(a.tokens_per_expert_routed, c.E);
        auto y = download(a.expert_out, (size_t)rows * c.C);
        // combine backward: to the expert outputs and to the gates
        moe_combine_backward(a.d_expert_out, a.d_gates, fx.d_dout, a.expert_out, a.gates, a.topk_idx, a.kept, a.slot,
                             a.slot_choice, c.N, c.E, c.C, c.K, R);
        std::vector<float> dy((size_t)rows * c.C), dgate(fx.NK());
        ref_moe_combine_backward(dy.data(), fx.dout.data(), gates.data(), slot_choice.data(), rows, c.C, c.K);
        ref_moe_combine_backward_gates(dgate.data(), fx.dout.data(), y.data(), topk.data(), kept.data(), slot.data(),
                                       c.N, c.C, c.K, R);
        EXPECT_EQ(download(a.d_expert_out, dy.size()), dy);
        EXPECT_TRUE(all_close(download(a.d_gates, fx.NK()), dgate, 1e-5));
        // router backward (gates, aux, softmax, z, noise) from known gate gradients
        std::mt19937 rng(4);
        fill_uniform(dgate, rng, -1.0f, 1.0f);
        upload(a.d_gates, dgate);
        moe_router_backward(a.d_router_logits, noise ? a.d_noise_logits : nullptr, a.d_gates, a.probs, a.gates,
                            a.topk_idx, a.router_logits, a.router_lse, a.noise_logits, a.noise_eps,
                            a.tokens_per_expert_routed, c.N, c.E, c.K, 0.3f, 0.05f);
        std::vector<float> dr(fx.NE()), dnl(fx.NE());
        ref_moe_router_backward(dr.data(), dnl.data(), dgate.data(), probs.data(), gates.data(), topk.data(), r.data(),
                                lse.data(), nl.data(), fx.eps.data(), routed.data(), c.N, c.E, c.K, 0.3f, 0.05f, noise);
        EXPECT_TRUE(all_close(download(a.d_router_logits, fx.NE()), dr, 1e-5));
        if (noise) {
            EXPECT_TRUE(all_close(download(a.d_noise_logits, fx.NE()), dnl, 1e-5));
        }
        // dispatch backward on known expert / shared input gradients
        std::vector<float> dx((size_t)rows * c.C), dxs((size_t)c.S * c.N * c.C), du(fx.NC());
        fill_uniform(dx, rng, -1.0f, 1.0f);
        fill_uniform(dxs, rng, -1.0f, 1.0f);
        upload(a.d_expert_in, dx);
        upload(a.d_shared_in, dxs);
        moe_dispatch_backward(fx.d_du, a.d_expert_in, a.d_shared_in, a.topk_idx, a.kept, a.slot, c.N, c.C, c.K, R,
                              c.S);
        ref_moe_dispatch_backward(du.data(), dx.data(), dxs.data(), topk.data(), kept.data(), slot.data(), c.N, c.C,
                                  c.K, R, c.S);
        EXPECT_TRUE(all_close(download(fx.d_du, du.size()), du, 1e-6));
    }
}

// the expert and shared FFN backward (batched GEMMs, GELU slope, bias sums) and the router GEMMs'
// backward, each against plain linear-layer backward passes over the same buffers
TEST_F(MoeTest, FfnAndRouterGemmBackwardMatchReference) {
    MoeFixture fx(37, 24, 4, 2, 40, 2, 20, 1.25, true, 41);
    fx.forward(true);
    const Dims c = fx.d;
    MoeActivations& a = fx.acts;
    const int R = c.R, E = c.E, S = c.S, N = c.N, C = c.C, F = c.F, Fs = c.Fs;
    auto slot_choice = download(a.slot_choice, (size_t)E * R);
    ASSERT_NE(std::count(slot_choice.begin(), slot_choice.end(), -1), 0) << "want empty buffer rows";
    // a known dy, zero on empty rows (as combine backward leaves it)
    std::mt19937 rng(6);
    std::vector<float> dy((size_t)E * R * C);
    fill_uniform(dy, rng, -1.0f, 1.0f);
    for (int row = 0; row < E * R; row++)
        if (slot_choice[row] < 0) std::fill(dy.begin() + (size_t)row * C, dy.begin() + (size_t)(row + 1) * C, 0.0f);
    upload(a.d_expert_out, dy);
    expert_ffn_backward(a.d_expert_in, a.d_expert_hidden, fx.dg.experts, a.d_expert_out, (long long)R * C,
                        a.expert_pre, a.expert_act, a.expert_in, (long long)R * C, fx.dw.experts, E, R, C, F);
    expert_ffn_backward(a.d_shared_in, a.d_shared_hidden, fx.dg.shared, fx.d_dout, 0, a.shared_pre, a.shared_act,
                        fx.d_u, 0, fx.dw.shared, S, N, C, Fs);
    std::vector<float> dr(fx.NE()), dnl(fx.NE());
    fill_uniform(dr, rng, -1.0f, 1.0f);
    fill_uniform(dnl, rng, -1.0f, 1.0f);
    upload(a.d_router_logits, dr);
    upload(a.d_noise_logits, dnl);
    std::vector<float> du0(fx.NC());
    fill_uniform(du0, rng, -1.0f, 1.0f);
    upload(fx.d_du, du0);
    moe_router_logits_backward(fx.d_du, fx.dg.router, fx.dg.noise, a.d_router_logits, a.d_noise_logits, fx.dw.router,
                               fx.dw.noise, fx.d_u, N, C, E, true);

    RefMoeParams<float> want(fx.cfg);
    auto xin = download(a.expert_in, (size_t)E * R * C);
    auto act = download(a.expert_act, (size_t)E * R * F);
    auto pre = download(a.expert_pre, (size_t)E * R * F);
    std::vector<float> dx((size_t)E * R * C), dh((size_t)R * F);
    for (int e = 0; e < E; e++) {
        const size_t oC = (size_t)e * R * C, oF = (size_t)e * R * F;
        ref_matmul_backward(dh.data(), &want.proj_w[(size_t)e * C * F], &want.proj_b[(size_t)e * C], &dy[oC], &act[oF],
                            &fx.w.proj_w[(size_t)e * C * F], R, F, C);
        for (size_t i = 0; i < dh.size(); i++) dh[i] *= ref_gelu_grad(pre[oF + i]);
        ref_matmul_backward(&dx[oC], &want.fc_w[(size_t)e * F * C], &want.fc_b[(size_t)e * F], dh.data(), &xin[oC],
                            &fx.w.fc_w[(size_t)e * F * C], R, C, F);
    }
    auto sact = download(a.shared_act, (size_t)S * N * Fs);
    auto spre = download(a.shared_pre, (size_t)S * N * Fs);
    std::vector<float> dxs((size_t)S * N * C), dhs((size_t)N * Fs);
    for (int s = 0; s < S; s++) {
        const size_t oF = (size_t)s * N * Fs;
        ref_matmul_backward(dhs.data(), &want.shared_proj_w[(size_t)s * C * Fs], &want.shared_proj_b[(size_t)s * C],
                            fx.dout.data(), &sact[oF], &fx.w.shared_proj_w[(size_t)s * C * Fs], N, Fs, C);
        for (size_t i = 0; i < dhs.size(); i++) dhs[i] *= ref_gelu_grad(spre[oF + i]);
        ref_matmul_backward(&dxs[(size_t)s * N * C], &want.shared_fc_w[(size_t)s * Fs * C],
                            &want.shared_fc_b[(size_t)s * Fs], dhs.data(), fx.u.data(),
                            &fx.w.shared_fc_w[(size_t)s * Fs * C], N, C, Fs);
    }
    std::vector<float> du(fx.NC()), du_noise(fx.NC());
    ref_matmul_backward(du.data(), want.router.data(), (float*)nullptr, dr.data(), fx.u.data(), fx.w.router.data(), N, C,
                        E);
    ref_matmul_backward(du_noise.data(), want.noise.data(), (float*)nullptr, dnl.data(), fx.u.data(), fx.w.noise.data(),
                        N, C, E);
    for (size_t i = 0; i < du.size(); i++) du[i] += du0[i] + du_noise[i];

    EXPECT_TRUE(all_close(download(a.d_expert_in, dx.size()), dx, 1e-4)) << "dx";
    EXPECT_TRUE(all_close(download(a.d_shared_in, dxs.size()), dxs, 1e-4)) << "dxs";
    EXPECT_TRUE(all_close(download(fx.d_du, du.size()), du, 1e-4)) << "du";
    RefMoeParams<float> got = fx.download_grads();
    std::vector<std::vector<float>*> g;
    got.for_each([&](const char*, std::vector<float>& v) { g.push_back(&v); });
    int k = 0;
    want.for_each([&](const char* name, std::vector<float>& v) { EXPECT_TRUE(all_close(*g[k++], v, 1e-4)) << name; });
}

// ---------------------------------------------------------------- the whole layer

void check_layer_against_reference(MoeFixture& fx, bool training, float aux_coef, float z_coef) {
    const Dims c = fx.d;
    SCOPED_TRACE(describe(fx) + (training ? " training" : " eval"));
    fx.forward(training);
    fx.backward(aux_coef, z_coef);
    RefRun ref(fx, training, aux_coef, z_coef);
    // routing decisions: exact
    ASSERT_EQ(download(fx.acts.topk_idx, fx.NK()), ref.st.topk_idx);
    ASSERT_EQ(download(fx.acts.kept, fx.NK()), ref.st.kept);
    ASSERT_EQ(download(fx.acts.slot, fx.NK()), ref.st.slot);
    EXPECT_EQ(download(fx.acts.tokens_per_expert_routed, c.E), ref.st.routed);
    EXPECT_EQ(download(fx.acts.tokens_per_expert_kept, c.E), ref.st.kept_count);
    EXPECT_TRUE(all_close(download(fx.acts.router_logits, fx.NE()), ref.st.router_logits, 1e-4));
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
        if (!noise_active && std::strcmp(name, "noise") == 0) {
            for (float x : got) ASSERT_EQ(x, 0.0f) << "W_n gets no gradient without noise";
            return;
        }
        EXPECT_TRUE(all_close(got, want, 1e-4)) << name;
    });
}

TEST_F(MoeTest, LayerMatchesReferenceOverConfigGrid) {
    int checked = 0;
    for (int E : {4, 8})
        for (int K : {1, 2})
            for (double cf : {0.5, 1.25, 0.0})
                for (int S : {0, 1})
                    for (bool noise : {false, true}) {
                        MoeFixture fx(37, 24, E, K, 40, S, 20, cf, noise, 100 + E * 7 + K * 3 + S + noise * 11);
                        check_layer_against_reference(fx, true, 0.3f, 0.05f);
                        checked++;
                    }
    EXPECT_EQ(checked, 48);
}

TEST_F(MoeTest, EvalModeIgnoresNoiseAndDropsAreReal) {
    MoeFixture fx(37, 24, 4, 2, 40, 1, 20, 0.5, true, 77);
    check_layer_against_reference(fx, false, 0.3f, 0.05f);
    // at CF 0.5 some choices must have been dropped, and each expert holds at most cap tokens
    auto kept = download(fx.acts.kept, fx.NK());
    int dropped = 0;
    for (int k : kept) dropped += k == 0;
    EXPECT_GT(dropped, 0);
    for (int n : download(fx.acts.tokens_per_expert_kept, fx.d.E)) EXPECT_LE(n, fx.d.capacity);
}

// The reference backward is itself checked by central differences in double, with the routing held
// fixed (the perturbation is small enough not to change top-K or drops; asserted).
TEST(MoeReferenceTest, BackwardMatchesFiniteDifferences) {
    struct Case { int E, K; double cf; int S; bool noise; };
    for (Case k : {Case{4, 2, 0.5, 1, true}, Case{4, 1, 0.5, 0, true}, Case{3, 3, 0.0, 1, false},
                   Case{5, 2, 1.25, 0, true}}) {
        const int N = 13;
        ModelConfig cfg = moe_config(6, k.E, k.K, 7, k.S, 5, k.cf, k.noise);
        cfg.aux_coef = 0.7f, cfg.z_coef = 0.3f;
        SCOPED_TRACE(describe(cfg, N));
        std::mt19937 rng(k.E * 10 + k.K);
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
        int drops = 0;
        for (int x : base.kept) drops += x == 0;
        if (k.cf == 0.5) {
            EXPECT_GT(drops, 0) << "this case is meant to drop choices";
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
        RefMoeParams<double>* gp = &grads;
        std::vector<std::vector<double>*> gv;
        gp->for_each([&](const char*, std::vector<double>& v) { gv.push_back(&v); });
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

// A router forced onto known experts, so the priority rule can be written down by hand.
// u = [1, +-1 (token parity), [t >= 30], noise]; logits: expert 2 = 10, expert 0 = 5 +- 3 + 20 [t>=30],
// expert 1 = 5 -+ 3, expert 3 = 0. So tokens 0..29 pick (2, 0) when even and (2, 1) when odd;
// tokens 30..36 pick (0, 2). CF 0.5: cap = ceil(0.5*37*2/4) = 10.
TEST_F(MoeTest, CapacityDropsFollowThePriorityRule) {
    const int N = 37, C = 8, E = 4, K = 2;
    MoeFixture fx(N, C, E, K, 12, 0, 0, 0.5, false, 5);
    ASSERT_EQ(fx.d.capacity, 10);
    std::mt19937 rng(9);
    for (int t = 0; t < N; t++) {
        fx.u[t * C + 0] = 1.0f;
        fx.u[t * C + 1] = t % 2 == 0 ? 1.0f : -1.0f;
        fx.u[t * C + 2] = t >= 30 ? 1.0f : 0.0f;
        for (int i = 3; i < C; i++) fx.u[t * C + i] = std::uniform_real_distribution<float>(-0.1f, 0.1f)(rng);
    }
    std::fill(fx.w.router.begin(), fx.w.router.end(), 0.0f);
    auto W = [&](int e, int i) -> float& { return fx.w.router[e * C + i]; };
    W(2, 0) = 10.0f;
    W(0, 0) = 5.0f, W(0, 1) = 3.0f, W(0, 2) = 20.0f;
    W(1, 0) = 5.0f, W(1, 1) = -3.0f;
    for (int i = 3; i < C; i++) W(3, i) = 0.01f;
    fx.upload_all();
    fx.forward(true);
    auto topk = download(fx.acts.topk_idx, fx.NK());
    auto kept = download(fx.acts.kept, fx.NK());
    auto slot = download(fx.acts.slot, fx.NK());
    for (int t = 0; t < N; t++) {
        SCOPED_TRACE("token " + std::to_string(t));
        const int c0 = t * K, c1 = t * K + 1;
        if (t < 30) {
            ASSERT_EQ(topk[c0], 2);
            ASSERT_EQ(topk[c1], t % 2 == 0 ? 0 : 1);
            // first choices of expert 2 in token order: tokens 0..9 keep theirs
            EXPECT_EQ(kept[c0], t < 10 ? 1 : 0);
            EXPECT_EQ(slot[c0], t < 10 ? t : -1);
            if (t % 2 == 1) {
                // expert 1 only has second choices (odd tokens 1, 3, ..., 29: 15 of them): the first 10 keep
                EXPECT_EQ(kept[c1], t <= 19 ? 1 : 0);
                EXPECT_EQ(slot[c1], t <= 19 ? t / 2 : -1);
            } else {
                // expert 0: the 7 first choices of tokens 30..36 come first (slots 0..6), then the second
                // choices of even tokens 0, 2, 4 take slots 7, 8, 9; the rest are dropped
                EXPECT_EQ(kept[c1], t <= 4 ? 1 : 0);
                EXPECT_EQ(slot[c1], t <= 4 ? 7 + t / 2 : -1);
            }
        } else {
            ASSERT_EQ(topk[c0], 0);
            ASSERT_EQ(topk[c1], 2);
            EXPECT_EQ(kept[c0], 1);
            EXPECT_EQ(slot[c0], t - 30);
            EXPECT_EQ(kept[c1], 0);  // expert 2 is full with first choices
            EXPECT_EQ(slot[c1], -1);
        }
    }
    EXPECT_EQ(download(fx.acts.tokens_per_expert_routed, E), (std::vector<int>{22, 15, 37, 0}));
    EXPECT_EQ(download(fx.acts.tokens_per_expert_kept, E), (std::vector<int>{10, 10, 10, 0}));
    // a dropped choice contributes nothing: the whole layer still matches the reference
    fx.backward(0.3f, 0.05f);
    RefRun ref(fx, true, 0.3f, 0.05f);
    EXPECT_EQ(kept, ref.st.kept);
    EXPECT_TRUE(all_close(download(fx.d_out, fx.NC()), ref.out, 1e-4));
    EXPECT_TRUE(all_close(download(fx.d_du, fx.NC()), ref.du, 1e-4));
    // tokens 10..29 with odd index > 19 or even index > 4 lost every choice: their output is exactly 0
    auto out = download(fx.d_out, fx.NC());
    for (int i = 0; i < C; i++) EXPECT_EQ(out[20 * C + i], 0.0f);
}

TEST_F(MoeTest, UniformRoutingGivesAuxOne) {
    for (int K : {1, 2}) {
        MoeFixture fx(37, 16, 8, K, 8, 0, 0, 0.0, false, 8);
        std::fill(fx.w.router.begin(), fx.w.router.end(), 0.0f);  // every logit 0: p = 1/E
        fx.upload_all();
        fx.forward(true);
        EXPECT_NEAR(download(fx.acts.aux, 1)[0], 1.0f, 1e-6);
        EXPECT_NEAR(download(fx.acts.z, 1)[0], std::log(8.0) * std::log(8.0), 1e-5);
        // ties everywhere: every token picks experts 0..K-1
        auto topk = download(fx.acts.topk_idx, fx.NK());
        for (int t = 0; t < 37; t++)
            for (int j = 0; j < K; j++) EXPECT_EQ(topk[t * K + j], j);
    }
    // balanced routing with non-uniform p also gives f_i = 1/E and so aux = E sum_i P_i / E = 1
    MoeFixture fx(64, 8, 4, 1, 8, 0, 0, 0.0, false, 9);
    std::fill(fx.w.router.begin(), fx.w.router.end(), 0.0f);
    for (int t = 0; t < 64; t++)
        for (int i = 0; i < 8; i++) fx.u[t * 8 + i] = i == t % 4 ? 1.0f : 0.0f;
    for (int e = 0; e < 4; e++) fx.w.router[e * 8 + e] = 1.5f;
    fx.upload_all();
    fx.forward(true);
    EXPECT_NEAR(download(fx.acts.aux, 1)[0], 1.0f, 1e-6);
}

// ---------------------------------------------------------------- determinism and host traffic

struct Snapshot {
    std::vector<float> out, du, aux_z, grads, probs;
    std::vector<int> routing;
    bool operator==(const Snapshot&) const = default;
};

Snapshot run_snapshot(MoeFixture& fx) {
    fx.upload_all();
    fx.forward(true);
    fx.backward(0.3f, 0.05f);
    Snapshot s;
    s.out = download(fx.d_out, fx.NC());
    s.du = download(fx.d_du, fx.NC());
    s.aux_z = {download(fx.acts.aux, 1)[0], download(fx.acts.z, 1)[0]};
    s.probs = download(fx.acts.probs, fx.NE());
    RefMoeParams<float> g = fx.download_grads();
    g.for_each([&](const char*, std::vector<float>& v) { s.grads.insert(s.grads.end(), v.begin(), v.end()); });
    for (int* p : {fx.acts.topk_idx, fx.acts.kept, fx.acts.slot}) {
        auto v = download(p, fx.NK());
        s.routing.insert(s.routing.end(), v.begin(), v.end());
    }
    return s;
}

TEST_F(MoeTest, BitIdenticalAcrossWorkerThreadsAndShuffledOrder) {
    MoeFixture fx(300, 32, 8, 2, 48, 1, 24, 1.0, true, 13);
    simt::set_worker_threads(1);
    Snapshot one = run_snapshot(fx);
    simt::set_worker_threads(2);
    Snapshot two = run_snapshot(fx);
    EXPECT_TRUE(one == two) << "1 vs 2 worker threads";
    simt::set_shuffle(12345);
    Snapshot shuffled = run_snapshot(fx);
    EXPECT_TRUE(one == shuffled) << "shuffled thread order";
    simt::set_shuffle(0);
    simt::set_worker_threads(1);
    Snapshot again = run_snapshot(fx);
    EXPECT_TRUE(one == again) << "repeat";
}

TEST_F(MoeTest, ForwardBackwardNeverCopyToHostNorSynchronize) {
    MoeFixture fx(37, 24, 8, 2, 40, 1, 20, 1.25, true, 17);
    simt::reset_counters();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    fx.forward(false);
    EXPECT_EQ(simt_device_to_host_copies(), 0);
    EXPECT_EQ(simt_synchronizations(), 0);
}

}  // namespace
