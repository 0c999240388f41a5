// train_moe.cu: the moe.cu trainer. One source, two binaries: nvcc builds train_moe for a GPU,
// g++ builds train_moe_cpu, which runs the very same kernels through the SIMT layer.
//
//   ./train_moe_cpu                      the default run (nanoGPT "baby" Shakespeare, MoE 8x top-2)
//   ./train_moe_cpu --experts 0          the dense model
//   ./train_moe_cpu --help               every flag and its default
//
// main() is the training loop; the run machinery it calls lives in run/: the flags (run/config.h),
// the checks made before anything is written (run/setup.h: bad input ends the program with one line
// on stderr and exit status 2, a failure while running with status 1), checkpoints, evaluation,
// sampling, logging and the end-of-run reports (run/trainer.h, run/files.h, run/report.h).
//
// A training step: forward (router noise drawn from (seed, step)), zero grads, backward, clip +
// AdamW, all on the device; the host reads the loss only at log steps. Same seed, same losses, bit
// for bit on the CPU build; a resumed run continues exactly where the checkpoint left off.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "model.cuh"
#include "run/config.h"
#include "run/setup.h"
#include "run/trainer.h"

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // one line at a time, also into a pipe or a log file
    const Backend backend = detect_backend();
    // Flags, checkpoint, data, model shapes and output paths, all checked before anything is written.
    RunSetup setup = setup_run(argc, argv, backend);
    const TrainConfig& cfg = setup.cfg;
    print_run_header(backend, setup);

    Model m;
    model_build(m, cfg, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);  // cfg is the ModelConfig
    if (!cfg.dump_state.empty()) {
        dump_state(m, cfg, setup.data, cfg.dump_state, setup.resuming ? &setup.checkpoint : nullptr);
        model_free(m);
        return 0;
    }
    TrainingRun run(m, setup);  // batches, sampler, metrics log; with --resume the checkpoint's state

    const int B = cfg.batch, T = cfg.block_size;
    std::vector<int32_t> x((size_t)B * T), y((size_t)B * T);
    OptimConfig opt{cfg.lr, cfg.beta1, cfg.beta2, 1e-8f, cfg.weight_decay, cfg.grad_clip};
    auto every = [](long long step, int period) { return period > 0 && step % period == 0; };
    for (long long step = setup.start_step; step < setup.end_step; step++) {
        const long long done = step + 1;  // steps completed once this one is
        const bool final_step = done == cfg.steps;
        opt.lr = cosine_lr((int)step, cfg.warmup, cfg.steps, cfg.lr, cfg.min_lr);
        run.loader.next_train(x.data(), y.data());
        model_forward(m, x.data(), y.data(), B, T, true, (long)step);
        model_zero_grad(m);
        model_backward(m);
        model_update(m, opt, (int)done);
        run.clock.count_step();

        const bool log = every(done, cfg.log_every) || final_step;
        const bool eval = every(done, cfg.eval_every) || final_step;
        JsonObject record;  // this step's line of metrics.jsonl
        record.integer("step", done);
        if (log) run.log_training(done, opt.lr, record);  // console line, losses, routing statistics
        run.clock.pause();  // evaluation, samples and checkpoints are not training time
        if (eval) run.log_validation(done, record);
        if (log || eval) run.metrics.write(record);
        if (every(done, cfg.sample_every) || final_step) run.write_sample(done);
        if (every(done, cfg.checkpoint_every) || final_step || done == setup.end_step) run.save_checkpoint(done);
        run.clock.resume();
    }
    if (setup.end_step < cfg.steps) run.report_stop();  // --stop-at
    else run.finish(backend);  // specialisation, summary.json, plots
    run.free();
    model_free(m);
    return 0;
}
