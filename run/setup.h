// run/setup.h: everything the trainer checks before it writes anything.
//
// Order of business, so that bad input never damages anything: parse and check the flags, read
// and check the --resume checkpoint, load and check the data, check the model's tensors against the
// checkpoint, check the output paths; only then create the run directory. Any bad input ends the
// program with one line on stderr and exit status 2 (bad_input); a failure while running (disk
// full, ...) with status 1 (runtime_failure).
//
// Host-only C++: the model enters through model_config.h (its configuration and its tensor table).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "model_config.h"
#include "run/config.h"
#include "run/files.h"

[[noreturn]] inline void bad_input(const std::string& message) {
    fprintf(stderr, "error: %s\n", message.c_str());
    exit(2);
}
[[noreturn]] inline void runtime_failure(const std::string& message) {
    fprintf(stderr, "error: %s\n", message.c_str());
    exit(1);
}

// "1.23M", "45.6K", "789": parameter counts on the console.
inline std::string human_count(double n) {
    char buf[32];
    if (n >= 1e6) snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (n >= 1e3) snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
    else snprintf(buf, sizeof buf, "%.0f", n);
    return buf;
}

// "1h02m", "3m05s", "42s".
inline std::string human_duration(double seconds) {
    long s = (long)(seconds + 0.5);
    char buf[32];
    if (s >= 3600) snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, sizeof buf, "%lds", s);
    return buf;
}

// What this binary runs on: the nvcc build on a GPU, the g++ build on the CPU through the SIMT layer.
struct Backend {
    bool gpu = false;
    bool available = true;    // false: the GPU build found no CUDA device
    std::string description;  // for the console and summary.json
};

// A run whose inputs have all been checked.
struct RunSetup {
    TrainConfig cfg;          // the command line's, or for --resume the checkpoint's with the command line's
                              // logging flags on top; vocab_size is the data's
    bool resuming = false;
    Checkpoint checkpoint;    // --resume: weights, moments and generators, checked against data and model
    TextData data;
    size_t total_params = 0, active_params = 0;
    long long start_step = 0;  // steps done before this process (the checkpoint's step, or 0)
    long long end_step = 0;    // the step this process stops after (--steps, or --stop-at)
    std::string out;           // the run directory, created (empty with --dump-state)
};

// The model's tensors, name and shape, as a checkpoint must hold them.
inline std::vector<TensorShape> model_shapes(const ModelConfig& mc) {
    std::vector<TensorShape> shapes;
    for (const auto& p : model_parameter_table(mc)) shapes.push_back({p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end())});
    for (const auto& p : model_buffer_table(mc)) shapes.push_back({p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end())});
    return shapes;
}

// Flags, checkpoint, data, model, output paths, in that order; exits with status 2 and one line on
// stderr at the first bad input, and with status 0 after printing the flag list for --help.
inline RunSetup setup_run(int argc, char** argv, const Backend& backend) {
    RunSetup run;
    TrainConfig& cfg = run.cfg;
    std::string error;

    // ---- 1. flags (and, for --resume, the checkpoint's configuration)
    TrainConfig cli;
    if (!parse_args(argc, argv, backend.gpu, cli, error)) bad_input(error);
    if (cli.help) {
        fputs(config_help(backend.gpu).c_str(), stdout);
        exit(0);
    }
    run.resuming = !cli.resume.empty();
    if (run.resuming) {
        if (!read_checkpoint(cli.resume, backend.gpu, run.checkpoint, error)) bad_input("--resume " + error);
        if (!merge_resume_config(cli, run.checkpoint.config, cfg, error)) bad_input(error);
    } else {
        cfg = cli;
        if (!resolve_and_validate(cfg, error)) bad_input(error);
    }
    if (cfg.device == "cpu" && backend.gpu) bad_input("--device cpu: this is the GPU build; run train_moe_cpu (make train_moe_cpu)");
    if (cfg.device == "gpu" && !backend.gpu) bad_input("--device gpu: this is the CPU build; run train_moe (make train_moe, needs nvcc)");
    if (!backend.available) runtime_failure("no CUDA device found; on a machine without a GPU use train_moe_cpu");

    // ---- 2. data
    if (!load_dataset(cfg.data, cfg.block_size, run.data, error)) bad_input(error);
    if (run.resuming) {
        if (run.data.vocab != run.checkpoint.vocab)
            bad_input("--resume: the checkpoint's vocabulary differs from the one of " + run.data.name + " (another text?)");
        if (run.data.hash != run.checkpoint.state.data_hash)
            bad_input("--resume: " + run.data.name + " is not the text the checkpoint was trained on (its hash differs)");
    }
    cfg.vocab_size = (int)run.data.vocab.size();

    // ---- 3. the model's tensors against the checkpoint
    const std::vector<TensorShape> shapes = model_shapes(cfg);
    for (const auto& p : model_parameter_table(cfg)) run.total_params += p.numel;  // (not the selection biases)
    run.active_params = active_parameters(cfg, run.total_params);
    if (run.resuming) {
        if (!check_resume_tensors(run.checkpoint, shapes, error)) bad_input("--resume " + error);
        run.start_step = run.checkpoint.step;
        // --dump-state with --resume trains nothing: any checkpoint can be dumped, a finished run's too.
        if (run.start_step >= cfg.steps && cfg.dump_state.empty())
            bad_input("--resume: the checkpoint is at step " + std::to_string(run.start_step) + " of " +
                      std::to_string(cfg.steps) + ": that run is already complete");
        if (cfg.stop_at > 0 && cfg.stop_at <= run.start_step && cfg.dump_state.empty())
            bad_input("--stop-at " + std::to_string(cfg.stop_at) + " is not after the checkpoint's step " +
                      std::to_string(run.start_step));
    }
    run.end_step = cfg.stop_at > 0 ? std::min<long long>(cfg.stop_at, cfg.steps) : cfg.steps;

    // ---- 4. where the output goes (checked; the run directory is the first thing created)
    if (!cfg.dump_state.empty()) {
        if (is_directory(cfg.dump_state)) bad_input("--dump-state " + cfg.dump_state + " is a directory");
        if (!is_directory(dir_of(cfg.dump_state)))
            bad_input("--dump-state " + cfg.dump_state + ": directory " + dir_of(cfg.dump_state) + " does not exist");
        return run;
    }
    const std::string resume_dir = run.resuming ? dir_of(cfg.resume) : "";
    run.out = !cfg.out.empty() ? cfg.out : run.resuming ? resume_dir : default_run_dir();
    if (!check_run_dir(run.out, resume_dir, error)) bad_input(error);
    // The first write of the run; a directory that cannot be made is still bad input (--out).
    if (!make_dirs(run.out, error)) bad_input("--out " + error);
    return run;
}

// The console's first lines: backend, configuration, data and model sizes.
inline void print_run_header(const Backend& backend, const RunSetup& run) {
    const TrainConfig& cfg = run.cfg;
    const TextData& data = run.data;
    printf("moe.cu | backend %s\n", backend.description.c_str());
    printf("config | %s\n", config_summary(cfg).c_str());
    printf("data   | %s: %zu characters, vocabulary %zu, %zu train / %zu validation\n", data.name.c_str(),
           data.tokens.size(), data.vocab.size(), data.train_size(), data.val_size());
    if (cfg.moe())  // every MoE layer sees the same N tokens per step, so the capacity is the same in each
        printf("model  | %s parameters, %s active per token (%.2fx; %d experts, top-%d, %d shared), capacity %d "
               "tokens per expert per layer\n",
               human_count((double)run.total_params).c_str(), human_count((double)run.active_params).c_str(),
               (double)run.total_params / (double)run.active_params, cfg.experts, cfg.top_k, cfg.shared_experts,
               expert_capacity(cfg, (long)cfg.batch * cfg.block_size));
    else
        printf("model  | %s parameters (dense)\n", human_count((double)run.total_params).c_str());
}
