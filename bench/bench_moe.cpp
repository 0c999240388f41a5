// bench_moe.cpp: time of every stage of the MoE layer (moe_layer.cuh) at the default MoE shapes
// (N=768 tokens, C=128, E=8 experts, K=2, F=256, capacity factor 1.25, router noise on, no shared
// expert), next to the dense FFN of equal active compute (F=4C=512) built from matmul.cuh and
// activations.cuh. Prints the median over REPS repetitions of each stage, in milliseconds.
// Worker threads: env SIMT_THREADS (or the first argument). BENCH_MIN=1 reports the minimum instead
// of the median, BENCH_CPU=1 thread CPU time instead of wall time (both for a busy machine).
//
//   make bench-moe            or   build/cpu/bench_moe [worker_threads]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <random>
#include <vector>

#include "activations.cuh"
#include "matmul.cuh"
#include "moe_layer.cuh"

namespace {

constexpr int REPS = 30;

float* device_floats(size_t n, std::mt19937& rng, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> h(std::max<size_t>(n, 1));
    for (float& x : h) x = dist(rng);
    float* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, h.size() * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

// Wall clock in ms; with BENCH_CPU=1 the calling thread's CPU time instead, which a busy shared machine
// disturbs much less (meaningful with 1 worker thread and OPENBLAS_NUM_THREADS=1, where all work runs
// on this thread).
double now_ms() {
    static const bool cpu = getenv("BENCH_CPU") != nullptr;
    if (cpu) {
        timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median wall time of f() in ms, after one warm-up call; setup() (untimed) runs before every call.
double median_ms(const std::function<void()>& f, const std::function<void()>& setup = nullptr) {
    if (setup) setup();
    f();
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> t(REPS);
    for (double& ms : t) {
        if (setup) setup();
        CUDA_CHECK(cudaDeviceSynchronize());
        const double start = now_ms();
        f();
        CUDA_CHECK(cudaDeviceSynchronize());
        ms = now_ms() - start;
    }
    std::sort(t.begin(), t.end());
    if (getenv("BENCH_MIN")) return t[0];  // on a shared, busy machine the minimum is the steadier number
    return t[REPS / 2];
}

void row(const char* name, double fwd, double bwd) {
    auto cell = [](double ms) {
        static char buf[4][32];
        static int k = 0;
        char* b = buf[k++ % 4];
        if (ms < 0) snprintf(b, 32, "%10s", "-");
        else snprintf(b, 32, "%10.3f", ms);
        return b;
    };
    printf("| %-44s | %s | %s |\n", name, cell(fwd), cell(bwd));
}

}  // namespace

int main(int argc, char** argv) {
#ifndef __CUDACC__
    if (argc > 1) simt::set_worker_threads(atoi(argv[1]));
    printf("backend: %s\n", simt::backend_name());
#else
    (void)argc, (void)argv;
#endif
    ModelConfig cfg{};
    const int N = 768;
    cfg.dim = 128, cfg.experts = 8, cfg.top_k = 2, cfg.expert_hidden = 256, cfg.shared_experts = 0;
    cfg.capacity_factor = 1.25, cfg.router_noise = 1, cfg.aux_coef = 0.01f, cfg.z_coef = 0.001f;
    const int C = cfg.dim, E = cfg.experts, K = cfg.top_k, F = cfg.expert_hidden, R = expert_buffer_rows(cfg, N);
    const int capacity = expert_capacity(cfg, N);
    printf("MoE layer: N=%d C=%d E=%d K=%d F=%d CF=%.2f capacity=%d noise=on; median of %d, ms\n\n", N, C, E, K, F,
           cfg.capacity_factor, capacity, REPS);

    std::mt19937 rng(1);
    MoeWeights w{}, g{};
    w.router = device_floats((size_t)E * C, rng, 0.3f);
    w.noise = device_floats((size_t)E * C, rng, 0.1f);
    w.experts.fc_w = device_floats((size_t)E * F * C, rng, 0.05f);
    w.experts.fc_b = device_floats((size_t)E * F, rng, 0.01f);
    w.experts.proj_w = device_floats((size_t)E * C * F, rng, 0.05f);
    w.experts.proj_b = device_floats((size_t)E * C, rng, 0.01f);
    g.router = device_floats((size_t)E * C, rng, 0.0f);
    g.noise = device_floats((size_t)E * C, rng, 0.0f);
    g.experts.fc_w = device_floats((size_t)E * F * C, rng, 0.0f);
    g.experts.fc_b = device_floats((size_t)E * F, rng, 0.0f);
    g.experts.proj_w = device_floats((size_t)E * C * F, rng, 0.0f);
    g.experts.proj_b = device_floats((size_t)E * C, rng, 0.0f);
    float* u = device_floats((size_t)N * C, rng, 1.0f);
    float* dout = device_floats((size_t)N * C, rng, 1.0f / N);
    float* out = device_floats((size_t)N * C, rng, 0.0f);
    float* du = device_floats((size_t)N * C, rng, 0.0f);
    float* act_f = nullptr;
    int* act_i = nullptr;
    CUDA_CHECK(cudaMalloc(&act_f, moe_activation_floats(cfg, N) * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&act_i, moe_activation_ints(cfg, N) * sizeof(int)));
    MoeActivations a{};
    moe_activation_views(a, act_f, act_i, cfg, N);
    RouterNoise noise;
    router_noise_create(noise, 1337);
    moe_forward(out, a, w, u, cfg, N, &noise, 0);  // routing in place for the stage timings
    moe_backward(du, g, dout, a, w, u, cfg);

    const long long RC = (long long)R * C, RF = (long long)R * F, FC = (long long)F * C;
    printf("| %-44s | %10s | %10s |\n", "stage", "forward", "backward");
    printf("|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(12, '-').c_str(), std::string(12, '-').c_str());
    double total_f = 0, total_b = 0;
    // the in-place stages start from the same values every time (a GELU slope applied 30 times over
    // would drive the gradients into denormals)
    float* saved_hidden = nullptr;
    CUDA_CHECK(cudaMalloc(&saved_hidden, (size_t)E * R * F * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(saved_hidden, a.d_expert_hidden, (size_t)E * R * F * sizeof(float), cudaMemcpyDeviceToDevice));
    auto restore = [&] {
        CUDA_CHECK(cudaMemcpy(a.d_expert_hidden, saved_hidden, (size_t)E * R * F * sizeof(float),
                              cudaMemcpyDeviceToDevice));
    };
    auto stage = [&](const char* name, const std::function<void()>& f, const std::function<void()>& b) {
        double tf = f ? median_ms(f, restore) : -1, tb = b ? median_ms(b, restore) : -1;
        row(name, tf, tb);
        if (tf > 0) total_f += tf;
        if (tb > 0) total_b += tb;
    };
    stage("router GEMMs (W_r u, W_n u; bwd: du, dW_r, dW_n)",
          [&] { moe_router_logits_forward(a.router_logits, a.noise_logits, w.router, w.noise, u, N, C, E, true); },
          [&] {
              moe_router_logits_backward(du, g.router, g.noise, a.d_router_logits, a.d_noise_logits, w.router,
                                         w.noise, u, N, C, E, true);
          });
    stage("noise draw, softmax/top-k/gates (bwd: + aux, z)",
          [&] {
              router_noise_draw(a.noise_eps, noise, 0, N, E);
              moe_route(a.probs, a.gates, a.topk_idx, a.router_lse, a.router_logits, a.noise_logits, a.noise_eps, N,
                        E, K);
          },
          [&] {
              moe_router_backward(a.d_router_logits, a.d_noise_logits, a.d_gates, a.probs, a.gates, a.topk_idx,
                                  a.router_logits, a.router_lse, a.noise_logits, a.noise_eps,
                                  a.tokens_per_expert_routed, N, E, K, cfg.aux_coef, cfg.z_coef);
          });
    stage("capacity scan",
          [&] {
              moe_capacity(a.kept, a.slot, a.slot_choice, a.tokens_per_expert_routed, a.tokens_per_expert_kept,
                           a.topk_idx, N, E, K, capacity, R);
          },
          nullptr);
    stage("dispatch (bwd: gather du)", [&] { moe_dispatch(a.expert_in, u, a.slot_choice, E, R, C, K); },
          [&] { moe_dispatch_backward(du, a.d_expert_in, a.d_shared_in, a.topk_idx, a.kept, a.slot, N, C, K, R, 0); });
    stage("expert fc GEMM (batched over E)",
          [&] { batched_linear_forward(a.expert_pre, RF, a.expert_in, RC, w.experts.fc_w, FC, E, R, C, F); },
          [&] {
              batched_linear_backward_weight(g.experts.fc_w, FC, a.d_expert_hidden, RF, a.expert_in, RC, E, R, C, F);
              batched_linear_backward_input(a.d_expert_in, RC, a.d_expert_hidden, RF, w.experts.fc_w, FC, E, R, C, F);
          });
    stage("expert bias+GELU (bwd: GELU', bias grads)",
          [&] { expert_hidden_forward(a.expert_pre, a.expert_act, w.experts.fc_b, a.slot_choice, E, R, F); },
          [&] {
              gelu_backward(a.d_expert_hidden, a.expert_pre, a.d_expert_hidden, (long)E * R * F);
              bias_backward(g.experts.fc_b, a.d_expert_hidden, RF, E, R, F, 1);
              bias_backward(g.experts.proj_b, a.d_expert_out, RC, E, R, C, 1);
          });
    stage("expert proj GEMM + bias (batched over E)",
          [&] {
              batched_linear_forward(a.expert_out, RC, a.expert_act, RF, w.experts.proj_w, FC, E, R, F, C);
              expert_output_bias(a.expert_out, w.experts.proj_b, a.slot_choice, E, R, C);
          },
          [&] {
              batched_linear_backward_input(a.d_expert_hidden, RF, a.d_expert_out, RC, w.experts.proj_w, FC, E, R, F, C);
              batched_linear_backward_weight(g.experts.proj_w, FC, a.d_expert_out, RC, a.expert_act, RF, E, R, F, C);
          });
    stage("combine (bwd: dy = g dout per row; dg per choice)",
          [&] { moe_combine(out, a.expert_out, a.shared_out, a.gates, a.topk_idx, a.kept, a.slot, N, C, K, R, 0); },
          [&] {
              moe_combine_backward(a.d_expert_out, a.d_gates, dout, a.expert_out, a.gates, a.topk_idx, a.kept, a.slot,
                                   a.slot_choice, N, E, C, K, R);
          });
    stage("aux/z losses (bwd: inside the router backward)",
          [&] { moe_router_losses(a.aux, a.z, a.probs, a.router_lse, a.tokens_per_expert_routed, N, E, K); }, nullptr);
    row("sum of stages", total_f, total_b);
    const double moe_f = median_ms([&] { moe_forward(out, a, w, u, cfg, N, &noise, 0); });
    const double moe_b = median_ms([&] { moe_backward(du, g, dout, a, w, u, cfg); });
    row("moe_forward / moe_backward", moe_f, moe_b);

    // the dense FFN of equal active compute: F = 4C on every token (K=2 experts of F=2C each)
    const int FD = 4 * C;
    float* w1 = device_floats((size_t)FD * C, rng, 0.05f);
    float* b1 = device_floats(FD, rng, 0.01f);
    float* w2 = device_floats((size_t)C * FD, rng, 0.05f);
    float* b2 = device_floats(C, rng, 0.01f);
    float* gw1 = device_floats((size_t)FD * C, rng, 0.0f);
    float* gb1 = device_floats(FD, rng, 0.0f);
    float* gw2 = device_floats((size_t)C * FD, rng, 0.0f);
    float* gb2 = device_floats(C, rng, 0.0f);
    float* h = device_floats((size_t)N * FD, rng, 0.0f);
    float* hg = device_floats((size_t)N * FD, rng, 0.0f);
    float* dh = device_floats((size_t)N * FD, rng, 0.0f);
    float* dhg = device_floats((size_t)N * FD, rng, 0.0f);
    const double dense_f = median_ms([&] {
        matmul_forward(h, u, w1, b1, N, C, FD);
        gelu_forward(hg, h, (long)N * FD);
        matmul_forward(out, hg, w2, b2, N, FD, C);
    });
    const double dense_b = median_ms([&] {
        matmul_backward(dhg, gw2, gb2, dout, hg, w2, N, FD, C);
        gelu_backward(dh, h, dhg, (long)N * FD);
        matmul_backward(du, gw1, gb1, dh, u, w1, N, C, FD);
    });
    row("dense FFN F=4C (matmul + GELU + matmul)", dense_f, dense_b);
    printf("\nMoE layer / dense FFN time: forward %.2f, backward %.2f, step %.2f\n", moe_f / dense_f, moe_b / dense_b,
           (moe_f + moe_b) / (dense_f + dense_b));
#ifndef __CUDACC__
    simt::set_worker_threads(1);  // joins the extra workers before exit
#endif
    return 0;
}
