// bench/gpu_profile.cpp: the GPU cost report (make gpu-profile). Runs training steps of the
// trainer at the GPU build's default shapes through the SIMT layer, with every global load and
// store of the kernels counted (this file is compiled with the profile build's instrumentation,
// see simt/profile.h and the Makefile), and prints per kernel and cuBLAS call what a GPU would
// move and compute, with an estimated H100 and A100 time.
//
//   make gpu-profile                                   one step at the GPU defaults
//   make gpu-profile PROFILE_ARGS="--profile-steps 3"  three steps, the report per step
//   build/prof/gpu_profile --experts 0                 any trainer flag (the dense model here)
//
// A step is exactly train_moe.cu's: forward (with router noise), zero grads, backward, clip and
// AdamW. What the trainer does only every --log-every or --eval-every steps (reading the losses,
// diagnostics, evaluation, samples, checkpoints) is left out.
//
// Before the model, a self-check runs two copy kernels whose counts are known exactly (a coalesced
// copy and a strided one), so a change in the compiler's instrumentation shows up here loudly.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "model.cuh"
#include "run/config.h"
#include "simt/profile.h"

namespace {

// out[i] = in[i * stride]: one 4-byte load and one 4-byte store per thread.
__global__ void profile_check_copy_kernel(float* out, const float* in, int n, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[(long)i * stride];
}

// The counts the instrumented build must give for the two copies of n floats (n a multiple of 32,
// buffers from cudaMalloc, 256-byte aligned): n/32 warp instructions each way; reads of 4 sectors
// per instruction when coalesced, 32 when each lane's float lies in its own sector (stride 8).
bool self_check() {
    const int n = 4096, stride = 8;
    float *in = nullptr, *out = nullptr;
    CUDA_CHECK(cudaMalloc(&in, (size_t)n * stride * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&out, (size_t)n * sizeof(float)));
    CUDA_CHECK(cudaMemset(in, 0, (size_t)n * stride * sizeof(float)));
    bool ok = true;
    auto expect = [&](const char* what, unsigned long long got, unsigned long long want) {
        if (got != want) {
            fprintf(stderr, "gpu_profile self-check: %s: counted %llu, expected %llu\n", what, got, want);
            ok = false;
        }
    };
    for (int s : {1, stride}) {
        profile_check_copy_kernel<<<n / 128, 128>>>(out, in, n, s);
        CUDA_CHECK(cudaGetLastError());
        const simt::profile::LaunchCounts c = simt::profile::last_launch();
        const unsigned long long read_sectors = s == 1 ? n / 8 : n;
        expect("read instructions", c.instructions[0], n / 32);
        expect("write instructions", c.instructions[1], n / 32);
        expect("bytes read", c.bytes[0], 4ull * n);
        expect("bytes written", c.bytes[1], 4ull * n);
        expect("read sectors", c.sectors[0], read_sectors);
        expect("written sectors", c.sectors[1], n / 8);
        expect("distinct sectors read", c.unique_read_sectors, read_sectors);
        expect("distinct sectors written", c.unique_written_sectors, n / 8);
        expect("loads of the busiest warp", c.longest_warp_loads, 1);
    }
    CUDA_CHECK(cudaFree(in));
    CUDA_CHECK(cudaFree(out));
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    // --profile-steps is ours; every other flag is the trainer's, with the GPU build's defaults.
    // One step by default: at N = 16,384 tokens a step takes minutes on the CPU with every access
    // recorded, and the counts of one step are those of every step but for the data-dependent
    // kernels of the MoE layer (how many tokens each expert takes).
    int steps = 1;
    std::vector<char*> trainer_args{argv[0]};
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "--profile-steps" && i + 1 < argc) {
            steps = atoi(argv[++i]);
        } else if (a.rfind("--profile-steps=", 0) == 0) {
            steps = atoi(a.c_str() + 16);
        } else {
            trainer_args.push_back(argv[i]);
        }
    }
    if (steps < 1) {
        fprintf(stderr, "error: --profile-steps must be at least 1\n");
        return 2;
    }
    TrainConfig cfg;
    std::string error;
    if (!parse_config((int)trainer_args.size(), trainer_args.data(), /*gpu_backend=*/true, cfg, error)) {
        fprintf(stderr, "error: %s\n", error.c_str());
        return 2;
    }
    if (cfg.help) {
        printf("usage: gpu_profile [--profile-steps N] [trainer flags; defaults of the GPU build]\n\n%s",
               config_help(true).c_str());
        return 0;
    }
    TextData data;
    if (!load_dataset(cfg.data, cfg.block_size, data, error)) {
        fprintf(stderr, "error: %s\n", error.c_str());
        return 2;
    }
    cfg.vocab_size = (int)data.vocab.size();
    // as the trainer: a worker per core (at most 4), single-threaded OpenBLAS; the counts do not
    // depend on either
    if (!getenv("SIMT_THREADS")) simt::set_worker_threads(std::min(simt::available_cpus(), 4));
    if (!getenv("OPENBLAS_NUM_THREADS")) simt::set_blas_threads(1);

    printf("config      | %s\n", config_summary(cfg).c_str());
    printf("tokens      | N = %d x %d = %d per step; %d step%s profiled on %d worker threads\n", cfg.batch,
           cfg.block_size, cfg.batch * cfg.block_size, steps, steps == 1 ? "" : "s", simt::worker_threads());
    Model m;
    model_build(m, cfg, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);  // not part of a step: not counted

    simt::profile::start();
    if (!self_check()) {
        fprintf(stderr, "gpu_profile: the instrumentation does not count the check kernels right; no report\n");
        return 1;
    }
    simt::profile::reset();
    printf("gpu_profile | self-check passed (coalesced and strided copies counted exactly)\n");

    DataLoader loader;
    loader.init(data, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);
    const int B = cfg.batch, T = cfg.block_size;
    std::vector<int32_t> x((size_t)B * T), y((size_t)B * T);
    OptimConfig opt{cfg.lr, cfg.beta1, cfg.beta2, 1e-8f, cfg.weight_decay, cfg.grad_clip};
    for (int step = 0; step < steps; step++) {
        const auto begin = std::chrono::steady_clock::now();
        opt.lr = cosine_lr(step, cfg.warmup, cfg.steps, cfg.lr, cfg.min_lr);
        loader.next_train(x.data(), y.data());
        simt::profile::set_phase("forward");
        model_forward(m, x.data(), y.data(), B, T, true, (long)step);
        simt::profile::set_phase("zero_grad");
        model_zero_grad(m);
        simt::profile::set_phase("backward");
        model_backward(m);
        simt::profile::set_phase("update");
        model_update(m, opt, step + 1);
        CUDA_CHECK(cudaDeviceSynchronize());
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
        printf("step %d/%d   | %.1f s on this CPU with the instrumentation\n", step + 1, steps, seconds);
    }
    simt::profile::stop();
    printf("\n");
    simt::profile::print_report(stdout, steps);
    model_free(m);
    return 0;
}
