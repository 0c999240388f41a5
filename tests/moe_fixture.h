// tests/moe_fixture.h: one MoE layer on the device with random weights, its host copy for the
// references, and the helpers the MoE tests share (test_moe.cpp and the routing-variant tests).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moe_layer.cuh"
#include "reference_model.h"
#include "tests/test_util.h"

namespace moe_test {

// the device memory helpers of every test (tests/test_util.h)
using test_util::dalloc;
using test_util::download;
using test_util::upload;

inline void fill_uniform(std::vector<float>& v, std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (auto& x : v) x = dist(rng);
}

// |got - want| <= rtol * (|want| + rms(want)) elementwise: float rounding, relative to the element
// and to the tensor's typical size (an element that is a near-cancelling sum carries the error of its terms).
inline ::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& want, double rtol) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
    double rms = 0.0;
    for (float w : want) rms += (double)w * w;
    rms = want.empty() ? 0.0 : std::sqrt(rms / want.size());
    for (size_t i = 0; i < got.size(); i++) {
        double tol = rtol * (std::abs((double)want[i]) + rms);
        if (!(std::abs((double)got[i] - want[i]) <= tol))
            return ::testing::AssertionFailure() << "element " << i << ": got " << got[i] << ", want " << want[i]
                                                 << " (tol " << tol << ", rms " << rms << ")";
    }
    return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------- a layer on the device

// The shape of a test layer in the math's letters: the model's fields plus what N decides.
struct Dims {
    int N, C, E, K, F, S, Fs, capacity, R;
};
inline Dims dims_of(const ModelConfig& c, int N) {
    return Dims{N, c.dim, c.experts, c.top_k, c.expert_hidden, c.shared_experts, c.shared_hidden,
                expert_capacity(c, N), expert_buffer_rows(c, N)};
}
inline ModelConfig moe_config(int C, int E, int K, int F, int S, int Fs, double cf, bool noise) {
    ModelConfig c{};
    c.dim = C, c.experts = E, c.top_k = K, c.expert_hidden = F, c.shared_experts = S, c.shared_hidden = Fs;
    c.capacity_factor = cf, c.router_noise = noise ? 1 : 0;
    return c;
}

struct MoeFixture {
    ModelConfig cfg{};
    Dims d{};
    RefMoeParams<float> w;         // host weights (what upload_weights copies)
    std::vector<float> u, dout, eps;
    float* weight_base = nullptr;
    float* grad_base = nullptr;
    MoeWeights dw{}, dg{};
    float *d_u = nullptr, *d_dout = nullptr, *d_out = nullptr, *d_du = nullptr, *act_floats = nullptr;
    int* act_ints = nullptr;
    MoeActivations acts{};
    RouterNoise noise;             // draw 0 of it is the eps of every noisy forward

    // Weights, u and dout at random (seeded); router weights scaled so routing is far from uniform.
    MoeFixture(int N, int C, int E, int K, int F, int S, int Fs, double cf, bool noisy, unsigned seed)
        : MoeFixture(moe_config(C, E, K, F, S, Fs, cf, noisy), N, seed) {}
    // Any configuration (the routing variants set their fields on cfg first).
    MoeFixture(const ModelConfig& config, int N, unsigned seed) {
        cfg = config;
        const int C = cfg.dim, E = cfg.experts;
        d = dims_of(cfg, N);
        w = RefMoeParams<float>(cfg);
        std::mt19937 rng(seed);
        fill_uniform(w.router, rng, -0.6f, 0.6f);
        fill_uniform(w.noise, rng, -0.4f, 0.4f);
        fill_uniform(w.fc_w, rng, -0.3f, 0.3f);
        fill_uniform(w.fc_b, rng, -0.1f, 0.1f);
        fill_uniform(w.proj_w, rng, -0.3f, 0.3f);
        fill_uniform(w.proj_b, rng, -0.1f, 0.1f);
        fill_uniform(w.shared_fc_w, rng, -0.3f, 0.3f);
        fill_uniform(w.shared_fc_b, rng, -0.1f, 0.1f);
        fill_uniform(w.shared_proj_w, rng, -0.3f, 0.3f);
        fill_uniform(w.shared_proj_b, rng, -0.1f, 0.1f);
        u.resize((size_t)N * C);
        dout.resize((size_t)N * C);
        fill_uniform(u, rng, -1.0f, 1.0f);
        fill_uniform(dout, rng, -1.0f / N, 1.0f / N);

        size_t total = 0;
        w.for_each([&](const char*, std::vector<float>& v) { total += v.size(); });
        weight_base = dalloc<float>(total);
        grad_base = dalloc<float>(total);
        dw = views(weight_base);
        dg = views(grad_base);
        d_u = dalloc<float>(u.size());
        d_dout = dalloc<float>(dout.size());
        d_out = dalloc<float>(u.size());
        d_du = dalloc<float>(u.size());
        act_floats = dalloc<float>(moe_activation_floats(cfg, N));
        act_ints = dalloc<int>(moe_activation_ints(cfg, N));
        moe_activation_views(acts, act_floats, act_ints, cfg, N);
        // the noise the layer draws (draw 0, seeded), read back for the references
        router_noise_create(noise, seed);
        router_noise_draw(acts.noise_eps, noise, 0, N, E);
        eps = download(acts.noise_eps, (size_t)N * E);
        upload_all();
    }
    ~MoeFixture() {
        router_noise_destroy(noise);
        for (void* p : {(void*)weight_base, (void*)grad_base, (void*)d_u, (void*)d_dout, (void*)d_out, (void*)d_du,
                        (void*)act_floats, (void*)act_ints})
            cudaFree(p);
    }
    MoeFixture(const MoeFixture&) = delete;
    MoeFixture& operator=(const MoeFixture&) = delete;

    MoeWeights views(float* base) {
        MoeWeights v{};
        float** fields[] = {&v.router, &v.noise, &v.experts.fc_w, &v.experts.fc_b, &v.experts.proj_w,
                            &v.experts.proj_b, &v.shared.fc_w, &v.shared.fc_b, &v.shared.proj_w, &v.shared.proj_b};
        size_t off = 0;
        int k = 0;
        w.for_each([&](const char*, std::vector<float>& t) {
            *fields[k++] = t.empty() ? nullptr : base + off;
            off += t.size();
        });
        return v;
    }
    // weights, u, dout to the device; gradients zeroed
    void upload_all() {
        size_t off = 0;
        w.for_each([&](const char*, std::vector<float>& t) {
            upload(weight_base + off, t);
            off += t.size();
        });
        CUDA_CHECK(cudaMemset(grad_base, 0, std::max<size_t>(off, 1) * sizeof(float)));
        upload(d_u, u);
        upload(d_dout, dout);
    }
    RefMoeParams<float> download_grads() {
        RefMoeParams<float> g(cfg);
        size_t off = 0;
        g.for_each([&](const char*, std::vector<float>& t) {
            if (!t.empty()) t = download(grad_base + off, t.size());
            off += t.size();
        });
        return g;
    }
    // a training forward draws noise when the layer has it on; an evaluation forward never does
    void forward(bool training) {
        moe_forward(d_out, acts, dw, d_u, cfg, d.N, training && cfg.router_noise ? &noise : nullptr, 0);
    }
    void backward(float aux_coef, float z_coef) {
        cfg.aux_coef = aux_coef, cfg.z_coef = z_coef;
        moe_backward(d_du, dg, d_dout, acts, dw, d_u, cfg);
    }
    size_t NE() const { return (size_t)d.N * d.E; }
    size_t NK() const { return (size_t)d.N * d.K; }
    size_t NC() const { return (size_t)d.N * d.C; }
};

// The reference run on the fixture's data (float).
struct RefRun {
    RefMoeState<float> st;
    std::vector<float> out, du;
    RefMoeParams<float> grads;
    RefRun(MoeFixture& fx, bool training, float aux_coef, float z_coef, bool backward = true)
        : st(fx.cfg, fx.d.N), out(fx.NC()), du(fx.NC()), grads(fx.cfg) {
        ModelConfig c = fx.cfg;
        c.aux_coef = aux_coef, c.z_coef = z_coef;
        st.noise_eps = fx.eps;
        ref_moe_forward(out.data(), st, fx.w, fx.u.data(), c, fx.d.N, training);
        if (backward) ref_moe_backward(du.data(), grads, fx.dout.data(), st, fx.w, fx.u.data(), c, fx.d.N);
    }
};

inline std::string describe(const ModelConfig& c, int N) {
    char buf[160];
    snprintf(buf, sizeof buf, "N=%d C=%d E=%d K=%d F=%d S=%d Fs=%d CF=%g cap=%d noise=%d", N, c.dim, c.experts,
             c.top_k, c.expert_hidden, c.shared_experts, c.shared_hidden, c.capacity_factor, expert_capacity(c, N),
             c.router_noise);
    return buf;
}
inline std::string describe(const MoeFixture& fx) { return describe(fx.cfg, fx.d.N); }

class MoeTest : public ::testing::Test {
   protected:
    void SetUp() override { simt::set_device_memory_protection(true); }
    void TearDown() override {
        simt::set_device_memory_protection(false);
        simt::set_worker_threads(1);
        simt::set_shuffle(0);
    }
};

}  // namespace moe_test
