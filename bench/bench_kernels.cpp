// bench_kernels.cpp: time of every GPT kernel launcher at the default CPU model shapes
// (B=12, T=64, C=128, NH=4, V=65, F=512; 4 dense layers for the optimizer's parameter count).
// Prints one row per launcher: the median over REPS repetitions of the forward and of the
// backward call, in milliseconds of wall time, and beside them the median process CPU time (all
// threads), which is the steadier number on a machine shared with other jobs.
// Worker threads: env SIMT_THREADS (or the first argument).
//
//   make bench-kernels            or   build/cpu/bench_kernels [worker_threads]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <random>
#include <vector>

#include "activations.cuh"
#include "attention.cuh"
#include "classifier.cuh"
#include "encoder.cuh"
#include "layernorm.cuh"
#include "matmul.cuh"
#include "optim.cuh"

namespace {

constexpr int REPS = 20;

// A device buffer of n floats with N(0, scale^2) values (or ints in [0, hi)).
float* device_floats(long n, std::mt19937& rng, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> h(n);
    for (float& x : h) x = dist(rng);
    float* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}
int* device_ints(long n, int hi, std::mt19937& rng) {
    std::uniform_int_distribution<int> dist(0, hi - 1);
    std::vector<int> h(n);
    for (int& x : h) x = dist(rng);
    int* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, n * sizeof(int)));
    CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    return d;
}

double cpu_ms() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

struct Timing {
    double wall, cpu;  // medians, ms
};

// Median wall and CPU time of f() in ms, after one warm-up call.
Timing median_ms(const std::function<void()>& f) {
    f();
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> wall(REPS), cpu(REPS);
    for (int r = 0; r < REPS; r++) {
        const auto start = std::chrono::steady_clock::now();
        const double cpu_start = cpu_ms();
        f();
        CUDA_CHECK(cudaDeviceSynchronize());
        cpu[r] = cpu_ms() - cpu_start;
        wall[r] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
    std::sort(wall.begin(), wall.end());
    std::sort(cpu.begin(), cpu.end());
    return {wall[REPS / 2], cpu[REPS / 2]};
}

void row(const char* name, const char* shape, const std::function<void()>& fwd, const std::function<void()>& bwd) {
    char f[16] = "-", b[16] = "-", fc[16] = "-", bc[16] = "-";
    if (fwd) {
        const Timing t = median_ms(fwd);
        snprintf(f, sizeof f, "%.3f", t.wall);
        snprintf(fc, sizeof fc, "%.3f", t.cpu);
    }
    if (bwd) {
        const Timing t = median_ms(bwd);
        snprintf(b, sizeof b, "%.3f", t.wall);
        snprintf(bc, sizeof bc, "%.3f", t.cpu);
    }
    printf("%-30s %-22s %10s %10s %10s %10s\n", name, shape, f, b, fc, bc);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1) simt::set_worker_threads(atoi(argv[1]));
    const int B = 12, T = 64, C = 128, NH = 4, V = 65, F = 512, L = 4, N = B * T;
    std::mt19937 rng(1337);

    int* idx = device_ints(N, V, rng);
    int* targets = device_ints(N, V, rng);
    float* wte = device_floats(V * C, rng);
    float* wpe = device_floats(T * C, rng);
    float* dwte = device_floats(V * C, rng);
    float* dwpe = device_floats(T * C, rng);
    float* x = device_floats(N * C, rng);       // residual stream
    float* dx = device_floats(N * C, rng);
    float* ln = device_floats(N * C, rng);
    float* dln = device_floats(N * C, rng);
    float* mean = device_floats(N, rng);
    float* rstd = device_floats(N, rng);
    float* lw = device_floats(C, rng);
    float* lb = device_floats(C, rng);
    float* dlw = device_floats(C, rng);
    float* dlb = device_floats(C, rng);
    float* qkv = device_floats(N * 3 * C, rng);
    float* dqkv = device_floats(N * 3 * C, rng);
    float* qkvr = device_floats(3 * N * C, rng);
    float* att = device_floats((long)B * NH * T * T, rng);
    float* att_scratch = device_floats(attention_scratch_floats(B, T, C, NH), rng);
    float* y = device_floats(N * C, rng);
    float* dy = device_floats(N * C, rng);
    float* w = device_floats((long)F * C, rng);  // largest weight: (F,C) / (C,F) / (3C,C)
    float* dw = device_floats((long)F * C, rng);
    float* bias = device_floats(F, rng);
    float* dbias = device_floats(F, rng);
    float* h = device_floats(N * F, rng);
    float* dh = device_floats(N * F, rng);
    float* hg = device_floats(N * F, rng);
    float* dhg = device_floats(N * F, rng);
    float* big_out = device_floats(N * F, rng);
    float* logits = device_floats(N * V, rng, 2.0f);
    float* dlogits = device_floats(N * V, rng);
    float* losses = device_floats(N, rng);
    float* loss = device_floats(1, rng);
    const long P = (long)V * C + (long)T * C + 2L * C +
                   L * (4L * C + 3L * C * C + 3L * C + (long)C * C + C + (long)F * C + F + (long)C * F + C);
    float* params = device_floats(P, rng);
    float* grads = device_floats(P, rng, 1e-2f);
    float* adam_m = device_floats(P, rng, 1e-3f);
    float* adam_v = device_floats(P, rng, 1e-3f);
    float* norm = device_floats(1, rng);
    float* norm_scratch = device_floats(1024, rng);
    float* scale = device_floats(1, rng);
    // the optimizer's inputs must stay sane across repetitions: |v| >= 0
    {
        std::vector<float> ones(P, 1e-4f);
        CUDA_CHECK(cudaMemcpy(adam_v, ones.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    }

#ifndef __CUDACC__
    printf("%s, median of %d runs (ms): wall time, then process CPU time\n", simt::backend_name(), REPS);
#endif
    printf("%-30s %-22s %10s %10s %10s %10s\n", "kernel", "shape", "forward", "backward", "fwd cpu", "bwd cpu");
    char s[64];
    snprintf(s, sizeof s, "B=%d T=%d C=%d V=%d", B, T, C, V);
    row("encoder", s, [&] { encoder_forward(x, idx, wte, wpe, B, T, C); },
        [&] { encoder_backward(dwte, dwpe, dx, idx, B, T, C, V); });
    snprintf(s, sizeof s, "N=%d C=%d", N, C);
    row("layernorm", s, [&] { layernorm_forward(ln, mean, rstd, x, lw, lb, N, C); },
        [&] { layernorm_backward(dx, dlw, dlb, dln, x, lw, mean, rstd, N, C); });
    struct Mm { const char* name; int IC, OC; bool bias; };
    for (Mm m : {Mm{"matmul c_attn", C, 3 * C, true}, Mm{"matmul attn c_proj", C, C, true},
                 Mm{"matmul mlp c_fc", C, F, true}, Mm{"matmul mlp c_proj", F, C, true},
                 Mm{"matmul lm_head (tied wte)", C, V, false}}) {
        snprintf(s, sizeof s, "N=%d %d->%d", N, m.IC, m.OC);
        row(m.name, s, [&] { matmul_forward(big_out, h, w, m.bias ? bias : nullptr, N, m.IC, m.OC); },
            [&] { matmul_backward(dh, dw, m.bias ? dbias : nullptr, dhg, h, w, N, m.IC, m.OC); });
    }
    snprintf(s, sizeof s, "N=%d OC=%d", N, F);
    row("bias_backward", s, nullptr, [&] { bias_backward(dbias, dh, N, F); });
    snprintf(s, sizeof s, "B=%d T=%d C=%d NH=%d", B, T, C, NH);
    row("attention", s, [&] { attention_forward(y, qkvr, att, qkv, B, T, C, NH); },
        [&] { attention_backward(dqkv, att_scratch, dy, qkvr, att, B, T, C, NH); });
    snprintf(s, sizeof s, "n=%d", N * F);
    row("gelu", s, [&] { gelu_forward(hg, h, (long)N * F); }, [&] { gelu_backward(dh, h, dhg, (long)N * F); });
    snprintf(s, sizeof s, "n=%d", N * C);
    row("residual_forward", s, [&] { residual_forward(y, x, ln, (long)N * C); }, nullptr);
    row("add_inplace", s, [&] { add_inplace(dy, dx, (long)N * C); }, nullptr);
    snprintf(s, sizeof s, "N=%d V=%d", N, V);
    row("crossentropy (fwd | fwd+bwd)", s,
        [&] { crossentropy_forward_backward(losses, nullptr, logits, targets, N, V, 1.0f / N); },
        [&] { crossentropy_forward_backward(losses, dlogits, logits, targets, N, V, 1.0f / N); });
    snprintf(s, sizeof s, "n=%d", N);
    row("mean_forward", s, [&] { mean_forward(loss, losses, N); }, nullptr);
    snprintf(s, sizeof s, "n=%ld (L=%d dense)", P, L);
    row("global_norm_squared", s, [&] { global_norm_squared(norm, norm_scratch, grads, P); }, nullptr);
    row("clip_scale", "1", [&] { clip_scale(scale, norm, 1.0f); }, nullptr);
    row("adamw_update", s,
        [&] { adamw_update(params, grads, adam_m, adam_v, P, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.1f, 10, scale); }, nullptr);
    return 0;
}
