// tests/test_model.cpp: whole training steps of tiny models (dense and a grid of MoE configurations)
// through the SIMT layer against reference_model.h's RefModel (logits, losses, routing, every
// gradient, the update); determinism; no host synchronisation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model.cuh"
#include "reference_model.h"

namespace {

struct ProtectDeviceMemory : ::testing::Test {
    void SetUp() override { simt::set_device_memory_protection(true); }
    void TearDown() override {
        simt::set_device_memory_protection(false);
        simt::set_worker_threads(1);
        simt::set_shuffle(0);
    }
};

ModelConfig tiny_config(int experts) {
    ModelConfig c;
    c.vocab_size = 13; c.block_size = 8; c.layers = 2; c.heads = 2; c.dim = 16; c.ffn_hidden = 64;
    c.experts = experts; c.top_k = 2; c.expert_hidden = 24; c.shared_experts = 0; c.shared_hidden = 20;
    c.capacity_factor = 1.25; c.router_noise = 1; c.aux_coef = 0.01f; c.z_coef = 0.001f;
    return c;
}

// A batch of token ids from a fixed LCG (targets: the next id, like a real window).
void make_batch(int B, int T, int V, unsigned seed, std::vector<int>& inputs, std::vector<int>& targets) {
    inputs.resize((size_t)B * T); targets.resize((size_t)B * T);
    unsigned s = seed;
    for (int b = 0; b < B; b++) {
        std::vector<int> window(T + 1);
        for (int t = 0; t <= T; t++) { s = s * 1664525u + 1013904223u; window[t] = (int)((s >> 8) % V); }
        for (int t = 0; t < T; t++) { inputs[b * T + t] = window[t]; targets[b * T + t] = window[t + 1]; }
    }
}

template <typename T>
std::vector<T> to_host(const T* device, size_t n) {
    std::vector<T> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

double max_abs(const float* x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = std::max(m, (double)std::fabs(x[i]));
    return m;
}

// Every tensor of `got` within tol * (largest |value| of that tensor in `want`) of `want`.
void expect_tensors_near(const Model& m, const std::vector<float>& got, const std::vector<float>& want, double tol,
                         const std::string& what) {
    for (const auto& t : m.tensors) {
        const double scale = std::max(max_abs(want.data() + t.offset, t.numel), 1e-8);
        double worst = 0; size_t at = 0;
        for (size_t i = 0; i < t.numel; i++) {
            double d = std::fabs((double)got[t.offset + i] - want[t.offset + i]);
            if (d > worst) { worst = d; at = i; }
        }
        EXPECT_LE(worst / scale, tol) << what << " " << t.name << "[" << at << "]: got " << got[t.offset + at]
                                      << " want " << want[t.offset + at] << " (largest " << scale << ")";
    }
}

// Runs one training step on the device and on the reference and compares everything.
void check_step_against_reference(const ModelConfig& cfg, int B, int T, const std::string& label) {
    Model m;
    model_build(m, cfg, B, T, 1234);
    std::vector<float> initial = to_host(m.params, m.num_parameters);
    RefModel<float> ref(cfg, initial);
    std::vector<int> inputs, targets;
    make_batch(B, T, cfg.vocab_size, 99, inputs, targets);
    const OptimConfig o{1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f};

    model_zero_grad(m);
    model_forward(m, inputs.data(), targets.data(), B, T, true, 0);
    model_backward(m);
    Losses dl = model_read_losses(m);
    std::vector<std::vector<float>> eps(cfg.layers);
    if (cfg.moe() && cfg.router_noise)
        for (int l = 0; l < cfg.layers; l++) eps[l] = to_host(m.blocks[l].moe.noise_eps, (size_t)B * T * cfg.experts);
    RefModelResult<float> r = ref.step(inputs.data(), targets.data(), B, T, true, eps);

    const int N = B * T;
    EXPECT_NEAR(dl.ce, r.ce, 1e-5 * std::fabs(r.ce)) << label;
    EXPECT_NEAR(dl.total, r.total, 1e-5 * std::fabs(r.total)) << label;
    EXPECT_NEAR(dl.aux, r.aux, 1e-5 * std::max(1.0f, std::fabs(r.aux))) << label;
    EXPECT_NEAR(dl.z, r.z, 1e-5 * std::max(1.0f, std::fabs(r.z))) << label;
    std::vector<float> logits = to_host(m.logits, (size_t)N * cfg.vocab_size);
    const double lscale = max_abs(r.logits.data(), r.logits.size());
    for (size_t i = 0; i < logits.size(); i++) ASSERT_NEAR(logits[i], r.logits[i], 1e-4 * lscale) << label << " logit " << i;
    if (cfg.moe())
        for (int l = 0; l < cfg.layers; l++) {
            const MoeActivations& a = m.blocks[l].moe;
            const size_t NK = (size_t)N * cfg.top_k;
            EXPECT_EQ(to_host(a.topk_idx, NK), r.moe[l].topk_idx) << label << " block " << l;
            EXPECT_EQ(to_host(a.kept, NK), r.moe[l].kept) << label << " block " << l;
            std::vector<float> gates = to_host(a.gates, NK);
            for (size_t i = 0; i < NK; i++) EXPECT_NEAR(gates[i], r.moe[l].gates[i], 1e-5) << label;
        }
    expect_tensors_near(m, to_host(m.grads, m.num_parameters), r.grads, 2e-4, label + " grad");

    // The update on the device's own gradients (they were compared above): AdamW divides by
    // sqrt(v), so a parameter whose gradient is ~1e-9 would amplify rounding of the gradient itself.
    std::vector<float> device_grads = to_host(m.grads, m.num_parameters);
    model_update(m, o, 1);
    ref.update(device_grads, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.grad_clip, 1);
    std::vector<float> updated = to_host(m.params, m.num_parameters);
    for (const auto& t : m.tensors)
        for (size_t i = 0; i < t.numel; i++)
            ASSERT_NEAR(updated[t.offset + i], ref.params[t.offset + i], 1e-4 * o.lr)
                << label << " updated " << t.name << "[" << i << "]";
    model_free(m);
}

}  // namespace

TEST_F(ProtectDeviceMemory, DenseStepMatchesReference) {
    check_step_against_reference(tiny_config(0), 3, 7, "dense");
}

TEST_F(ProtectDeviceMemory, DenseStepMatchesReferenceFullBlockTwoWorkersShuffled) {
    simt::set_worker_threads(2);
    simt::set_shuffle(7);
    ModelConfig c = tiny_config(0);
    c.layers = 1; c.heads = 4; c.dim = 24; c.ffn_hidden = 40;
    check_step_against_reference(c, 2, 8, "dense-2w");
}

// E in {4, 8}, K in {1, 2}, capacity factor in {0.5, 1.25, 0}, S in {0, 1}, noise on and off.
TEST_F(ProtectDeviceMemory, SlowMoeGridStepsMatchReference) {
    for (int E : {4, 8})
        for (int K : {1, 2})
            for (double cf : {0.5, 1.25, 0.0})
                for (int S : {0, 1})
                    for (int noise : {0, 1}) {
                        ModelConfig c = tiny_config(E);
                        c.top_k = K; c.capacity_factor = cf; c.shared_experts = S; c.router_noise = noise;
                        std::string label = "E" + std::to_string(E) + " K" + std::to_string(K) + " CF" +
                                            std::to_string(cf) + " S" + std::to_string(S) + " noise" +
                                            std::to_string(noise);
                        check_step_against_reference(c, 3, 7, label);
                        if (HasFailure()) return;
                    }
}

// The same seed gives bit-identical losses run to run, with 1 or 2 worker threads.
TEST_F(ProtectDeviceMemory, TrainingIsBitForBitRepeatable) {
    ModelConfig c = tiny_config(4);
    const int B = 3, T = 8;
    auto run = [&](int workers) {
        simt::set_worker_threads(workers);
        Model m;
        model_build(m, c, B, T, 42);
        std::vector<float> losses;
        const OptimConfig o{1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f};
        for (int step = 0; step < 4; step++) {
            std::vector<int> in, tg;
            make_batch(B, T, c.vocab_size, 500 + step, in, tg);
            model_zero_grad(m);
            model_forward(m, in.data(), tg.data(), B, T, true, step);
            model_backward(m);
            model_update(m, o, step + 1);
            losses.push_back(model_read_losses(m).total);
        }
        std::vector<float> params = to_host(m.params, m.num_parameters);
        model_free(m);
        losses.insert(losses.end(), params.begin(), params.end());
        return losses;
    };
    std::vector<float> a = run(1), b = run(1), c2 = run(2);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, memcmp(a.data(), b.data(), a.size() * sizeof(float)));
    EXPECT_EQ(0, memcmp(a.data(), c2.data(), a.size() * sizeof(float)));
}

// A full training step (forward, backward, update) makes no device-to-host copy and no
// synchronisation; reading the loss at a log step is exactly one copy.
TEST_F(ProtectDeviceMemory, TrainingStepMakesNoHostRoundTrip) {
    for (int experts : {0, 8}) {
        ModelConfig c = tiny_config(experts);
        Model m;
        const int B = 2, T = 8;
        model_build(m, c, B, T, 3);
        std::vector<int> in, tg;
        make_batch(B, T, c.vocab_size, 5, in, tg);
        const OptimConfig o{1e-3f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f};
        simt::reset_counters();
        model_zero_grad(m);
        model_forward(m, in.data(), tg.data(), B, T, true, 0);
        model_backward(m);
        model_update(m, o, 1);
        EXPECT_EQ(simt::device_to_host_copies(), 0) << "experts " << experts;
        EXPECT_EQ(simt::synchronizations(), 0) << "experts " << experts;
        model_read_losses(m);
        EXPECT_EQ(simt::device_to_host_copies(), 1);
        model_free(m);
    }
}

// Evaluation with a smaller batch than allocated (and back) gives the same loss as a model built for it.
TEST_F(ProtectDeviceMemory, SmallerBatchForwardMatchesExactModel) {
    ModelConfig c = tiny_config(4);
    c.router_noise = false;
    std::vector<int> in, tg;
    make_batch(1, 5, c.vocab_size, 8, in, tg);
    Model big, exact;
    model_build(big, c, 3, 8, 11);
    model_build(exact, c, 1, 5, 11);
    model_forward(big, in.data(), tg.data(), 1, 5, false, 0);
    model_forward(exact, in.data(), tg.data(), 1, 5, false, 0);
    EXPECT_EQ(model_read_losses(big).total, model_read_losses(exact).total);
    model_free(big);
    model_free(exact);
}
