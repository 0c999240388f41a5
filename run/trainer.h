// run/trainer.h: what the training loop of train_moe.cu calls besides the model: checkpoints in and
// out of the device, evaluation, sampling, the state dump, the console and metrics log of every
// logged step, and the reports at the end of a run.
//
// A resumed run continues exactly where its checkpoint left off, because everything that decides a
// step (weights, moments, step, the batch generator, the sampling generator) is in the checkpoint
// and the router noise depends only on (seed, step).
#pragma once
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "diagnostics.cuh"
#include "model.cuh"
#include "run/files.h"
#include "run/report.h"
#include "run/safetensors.h"
#include "run/setup.h"

// ------------------------------------------------------------------------------------ backend

// The device count is only asked under nvcc (the CPU layer reports its one "device" and would say nothing).
inline Backend detect_backend() {
    Backend b;
#ifdef __CUDACC__
    b.gpu = true;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        b.available = false;
        b.description = "gpu (no CUDA device found)";
    } else {
        cudaDeviceProp prop;
        CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        b.description = std::string("gpu (") + prop.name + ")";
    }
#else
    // The kernels' blocks run on the SIMT layer's worker threads, the GEMMs on OpenBLAS. One worker
    // per core (up to 4) with single-threaded OpenBLAS trains faster than one worker with OpenBLAS
    // on every core (README, "Speed": measured on 2 cores only) and gives the same bits: no kernel
    // depends on the worker count. SIMT_THREADS / OPENBLAS_NUM_THREADS override either choice.
    if (!getenv("SIMT_THREADS")) simt::set_worker_threads(std::min(simt::available_cpus(), 4));
    if (!getenv("OPENBLAS_NUM_THREADS")) simt::set_blas_threads(1);
    const int workers = simt::worker_threads();
    b.description = "cpu (SIMT execution layer, " + std::to_string(workers) + " worker thread" + (workers == 1 ? ")" : "s)");
#endif
    return b;
}

// ------------------------------------------------------------------------------- model <-> files

inline std::vector<float> device_to_host(const float* device, size_t n) {
    std::vector<float> host(n);
    CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}
inline std::vector<int> device_to_host_int(const int* device, size_t n) {
    std::vector<int> host(n);
    CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(int), cudaMemcpyDeviceToHost));
    return host;
}

inline safetensors::Tensor make_tensor(const ParamTensor& p, const float* host_base) {
    safetensors::File f;
    f.add_f32(p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end()), host_base + p.offset);
    return std::move(f.tensors.back());
}

// Puts a checkpoint's weights and moments into the model (shapes were checked before).
inline void load_checkpoint_into(Model& m, const Checkpoint& c) {
    auto find = [](const std::vector<safetensors::Tensor>& list, const std::string& name) -> const safetensors::Tensor& {
        for (const auto& t : list)
            if (t.name == name) return t;
        runtime_failure("internal: checkpoint tensor " + name + " vanished");
    };
    for (const auto& p : m.tensors) {
        std::vector<float> w = c.model.find(p.name)->floats(), mm = find(c.state.m, p.name).floats(),
                           vv = find(c.state.v, p.name).floats();
        CUDA_CHECK(cudaMemcpy(m.params + p.offset, w.data(), p.numel * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(m.adam_m + p.offset, mm.data(), p.numel * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(m.adam_v + p.offset, vv.data(), p.numel * sizeof(float), cudaMemcpyHostToDevice));
    }
    for (const auto& b : m.buffers) {  // --bias-rate's selection biases (no moments)
        std::vector<float> value = c.model.find(b.name)->floats();
        CUDA_CHECK(cudaMemcpy(m.router_bias + b.offset, value.data(), b.numel * sizeof(float), cudaMemcpyHostToDevice));
    }
}

// The model's non-parameter tensors (model_buffer_table: the selection biases), as safetensors.
inline std::vector<safetensors::Tensor> model_buffer_tensors(const Model& m) {
    std::vector<safetensors::Tensor> out;
    if (m.buffers.empty()) return out;
    const std::vector<float> bias = device_to_host(m.router_bias, (size_t)m.cfg.layers * m.cfg.experts);
    for (const auto& b : m.buffers) out.push_back(make_tensor(b, bias.data()));
    return out;
}

inline void save_checkpoint(const Model& m, const std::string& dir, const TrainConfig& cfg, const TextData& data,
                            long long step, const DataLoader& dl, const Rng& sample_rng) {
    std::vector<float> params = device_to_host(m.params, m.num_parameters);
    std::vector<float> mom1 = device_to_host(m.adam_m, m.num_parameters);
    std::vector<float> mom2 = device_to_host(m.adam_v, m.num_parameters);
    safetensors::File weights;
    TrainState state;
    for (const auto& p : m.tensors) {
        weights.tensors.push_back(make_tensor(p, params.data()));
        state.m.push_back(make_tensor(p, mom1.data()));
        state.v.push_back(make_tensor(p, mom2.data()));
    }
    for (auto& b : model_buffer_tensors(m)) weights.tensors.push_back(std::move(b));
    state.step = step;
    state.data_hash = data.hash;
    state.train_rng = dl.train_rng;
    state.val_rng = dl.val_rng;
    state.sample_rng = sample_rng;
    state.config = config_to_metadata(cfg);
    std::string error;
    if (!write_checkpoint(dir, weights, state, cfg, data.vocab, error)) runtime_failure(error);
}

// --------------------------------------------------------------------- evaluation and sampling

// Mean validation cross-entropy over the same `batches` windows every time (reset_val).
inline float evaluate(Model& m, DataLoader& dl, int batches, std::vector<int32_t>& x, std::vector<int32_t>& y) {
    dl.reset_val();
    double sum = 0;
    for (int i = 0; i < batches; i++) {
        dl.next_val(x.data(), y.data());
        model_forward(m, x.data(), y.data(), dl.B, dl.T, false, 0);
        sum += model_read_losses(m).ce;
    }
    return (float)(sum / batches);
}

// `length` characters from the model at temperature 1, starting after a newline (or token 0
// when the text has none), each drawn with the seeded sampling generator.
inline std::string generate(Model& m, const std::string& vocab, Rng& rng, int length) {
    const int V = m.cfg.vocab_size, block = m.cfg.block_size;
    size_t newline = vocab.find('\n');
    std::vector<int32_t> context = {newline == std::string::npos ? 0 : (int32_t)newline};
    std::vector<float> logits(V);
    std::vector<double> probs(V);
    for (int i = 0; i < length; i++) {
        int T = (int)std::min<size_t>(context.size(), (size_t)block);
        model_forward(m, context.data() + context.size() - T, nullptr, 1, T, false, 0);
        model_read_logits(m, 0, T - 1, logits.data());
        double max_logit = logits[0], total = 0;
        for (int v = 1; v < V; v++) max_logit = std::max(max_logit, (double)logits[v]);
        for (int v = 0; v < V; v++) total += probs[v] = std::exp((double)logits[v] - max_logit);
        double u = rng.uniform() * total, acc = 0;
        int next = V - 1;
        for (int v = 0; v < V; v++) {
            acc += probs[v];
            if (u < acc) { next = v; break; }
        }
        context.push_back(next);
    }
    return decode(context.data() + 1, context.size() - 1, vocab);
}

// ------------------------------------------------------------------------------------ state dump

// --dump-state (docs/model.md, 30. State dump): one forward + backward on the first training batch
// with the initial weights; every weight and gradient, the batch, the logits, the losses, the routing.
// With --resume (`checkpoint` not null): the checkpoint's model (weights, and whatever else the
// model holds, loaded exactly as a resumed run loads it) on the batch that run would train next
// (the checkpoint's batch generator), with that step's router noise (the draw of step
// `checkpoint->step`): the dump's losses are the ones the resumed run's first step computes.
inline void dump_state(Model& m, const TrainConfig& cfg, const TextData& data, const std::string& path,
                       const Checkpoint* checkpoint = nullptr) {
    const int B = cfg.batch, T = cfg.block_size, N = B * T, V = m.cfg.vocab_size;
    DataLoader dl;
    dl.init(data, B, T, (uint64_t)cfg.seed);
    long step = 0;  // the step whose batch and noise the dump sees
    if (checkpoint) {
        load_checkpoint_into(m, *checkpoint);
        dl.train_rng = checkpoint->state.train_rng;
        step = (long)checkpoint->step;
        printf("resume | state dump of %s at step %ld: the batch and router noise of step %ld\n", cfg.resume.c_str(), step, step + 1);
    }
    std::vector<int32_t> x(N), y(N);
    dl.next_train(x.data(), y.data());
    model_forward(m, x.data(), y.data(), B, T, true, step);
    model_zero_grad(m);
    model_backward(m);
    Losses losses = model_read_losses(m);

    safetensors::File f;
    std::vector<float> params = device_to_host(m.params, m.num_parameters);
    std::vector<float> grads = device_to_host(m.grads, m.num_parameters);
    for (const auto& p : m.tensors) {
        f.tensors.push_back(make_tensor(p, params.data()));
        safetensors::Tensor g = make_tensor(p, grads.data());
        g.name = "grad." + p.name;
        f.tensors.push_back(std::move(g));
    }
    for (auto& b : model_buffer_tensors(m)) f.tensors.push_back(std::move(b));  // the selection biases (no gradient)
    f.add_i32("inputs", {B, T}, x.data());
    f.add_i32("targets", {B, T}, y.data());
    f.add_f32("logits", {B, T, V}, device_to_host(m.logits, (size_t)N * V).data());
    f.add_f32("loss.total", {}, &losses.total);
    f.add_f32("loss.ce", {}, &losses.ce);
    f.add_f32("loss.aux", {}, &losses.aux);
    f.add_f32("loss.z", {}, &losses.z);
    // with a non-zero --entropy-coef (0 is the default: the bonus is off and H is not computed)
    if (m.cfg.entropy_coef != 0) f.add_f32("loss.entropy", {}, &losses.entropy);
    if (m.cfg.moe()) {
        const int K = m.cfg.top_k, E = m.cfg.experts;
        for (int l = 0; l < m.cfg.layers; l++) {
            const MoeActivations& a = m.blocks[l].moe;
            std::string h = "h." + std::to_string(l) + ".moe.";
            if (m.cfg.expert_choice()) {  // the tokens each expert took (per group, best first) and their gates
                const int R = expert_buffer_rows(m.cfg, N);
                f.add_i32(h + "ec_tokens", {E, R}, device_to_host_int(a.slot_choice, (size_t)E * R).data());
                f.add_f32(h + "ec_gates", {E, R}, device_to_host(a.ec_gates, (size_t)E * R).data());
            } else {
                f.add_i32(h + "topk_idx", {N, K}, device_to_host_int(a.topk_idx, (size_t)N * K).data());
                f.add_i32(h + "kept", {N, K}, device_to_host_int(a.kept, (size_t)N * K).data());
                f.add_f32(h + "gates", {N, K}, device_to_host(a.gates, (size_t)N * K).data());
            }
            if (m.cfg.router_noise) f.add_f32(h + "noise_eps", {N, E}, device_to_host(a.noise_eps, (size_t)N * E).data());
        }
    }
    f.metadata = config_to_metadata(cfg);
    f.metadata["vocab"] = data.vocab;
    std::string error;
    if (!safetensors::write(path, f, error)) runtime_failure(error);
    printf("state dump: %s (%zu tensors; loss %.6f, ce %.6f, aux %.6f, z %.6f)\n", path.c_str(), f.tensors.size(),
           losses.total, losses.ce, losses.aux, losses.z);
}

// ------------------------------------------------------------------------------------ the run

inline double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Training time, without the pauses for evaluation, samples and checkpoints. A window is the steps
// between two log steps; the log line reports its milliseconds per step and tokens per second.
struct TrainingClock {
    double run_start = 0, window_start = 0, pause_start = 0;
    double paused = 0;         // seconds of pauses inside the current window
    double train_seconds = 0;  // training time of every closed window
    long long window_steps = 0;

    void start() { run_start = window_start = now_seconds(); }
    void count_step() { window_steps++; }
    // Ends the window at time t: its training seconds.
    double close_window(double t) {
        const double window = t - window_start - paused;
        train_seconds += window;
        return window;
    }
    void open_window() {
        window_start = now_seconds();
        paused = 0;
        window_steps = 0;
    }
    void pause() { pause_start = now_seconds(); }
    void resume() { paused += now_seconds() - pause_start; }
};

// A run in progress: its batches and sampler, its metrics log and history, its clock. Created after
// the model is built; with --resume it loads the checkpoint's weights, moments and generators.
struct TrainingRun {
    Model& m;
    RunSetup& setup;
    const TrainConfig& cfg;
    const std::string metrics_path, samples_path;
    DataLoader loader;
    Rng sample_rng;
    MetricsLog metrics;
    RunHistory history;                     // what the run logged (for the plots and the summary)
    std::vector<MoeStatsBuffer> moe_stats;  // one per MoE layer, filled on the device at log steps
    std::vector<int32_t> val_x, val_y;      // one validation batch
    TrainingClock clock;
    Losses last{NAN, NAN, NAN, NAN, NAN};     // of the last log step
    float last_val = NAN, best_val = INFINITY;

    TrainingRun(Model& model, RunSetup& run)
        : m(model), setup(run), cfg(run.cfg), metrics_path(run.out + "/metrics.jsonl"), samples_path(run.out + "/samples.txt"),
          val_x((size_t)run.cfg.batch * run.cfg.block_size), val_y(val_x.size()) {
        std::string error;
        loader.init(setup.data, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);
        sample_rng = Rng::seeded((uint64_t)cfg.seed, kStreamSample);
        if (setup.resuming) {
            load_checkpoint_into(m, setup.checkpoint);
            loader.train_rng = setup.checkpoint.state.train_rng;
            loader.val_rng = setup.checkpoint.state.val_rng;
            sample_rng = setup.checkpoint.state.sample_rng;
            setup.checkpoint = Checkpoint{};  // the host copies are no longer needed
            // Records and samples after the checkpoint's step will be written again by this run.
            if (!truncate_metrics(metrics_path, setup.start_step, error) || !truncate_samples(samples_path, setup.start_step, error))
                runtime_failure(error);
            printf("resume | from %s at step %lld\n", cfg.resume.c_str(), setup.start_step);
        }
        printf("run    | %s\n", setup.out.c_str());
        const bool fresh_metrics = !path_exists(metrics_path);
        if (!metrics.open(metrics_path, error)) runtime_failure(error);
        if (fresh_metrics) {  // the run's sizes, once, as step 0
            JsonObject head;
            head.integer("step", 0).integer("params_total", (long long)setup.total_params)
                .integer("params_active", (long long)setup.active_params)
                .num("params_ratio", std::round(1e4 * (double)setup.total_params / (double)setup.active_params) / 1e4);
            if (cfg.moe()) head.flts("capacity", std::vector<int>(cfg.layers, expert_capacity(cfg, (long)cfg.batch * cfg.block_size)));
            metrics.write(head);
        }
        // A run resumed in its own directory starts from the records before its checkpoint.
        if (!fresh_metrics && !history.load_metrics(metrics_path, error)) runtime_failure(error);
        if (cfg.moe())
            for (int l = 0; l < cfg.layers; l++) moe_stats.push_back(moe_stats_alloc(cfg.experts));
        clock.start();
    }

    // A log step: the losses (waiting for the step, so the timing is real), the console line, the
    // routing of every MoE layer, the metrics record's training fields and the history.
    void log_training(long long done, float lr, JsonObject& record) {
        const int B = cfg.batch, T = cfg.block_size;
        last = model_read_losses(m);
        const float grad_norm = model_read_grad_norm(m);
        const double t = now_seconds(), window = clock.close_window(t);
        const double ms = 1000.0 * window / (double)clock.window_steps;
        const double tokens_per_s = (double)B * T * clock.window_steps / std::max(window, 1e-9);
        record.flt("loss", last.total).flt("ce", last.ce);
        if (cfg.moe()) record.flt("aux", last.aux).flt("z", last.z);
        if (cfg.entropy_coef != 0) record.flt("entropy", last.entropy);  // sum over layers of H (the bonus's)
        record.flt("lr", lr).flt("grad_norm", grad_norm).num("ms_per_step", std::round(ms * 1000) / 1000)
            .num("tokens_per_s", std::round(tokens_per_s));
        const double eta = (t - clock.run_start) / (double)(done - setup.start_step) * (double)(cfg.steps - done);
        printf("step %*lld/%d | loss %.4f", (int)std::to_string(cfg.steps).size(), done, cfg.steps, last.total);
        if (cfg.moe() && cfg.entropy_coef != 0) printf(" (ce %.4f, entropy %.4f)", last.ce, last.entropy);
        else if (cfg.moe()) printf(" (ce %.4f)", last.ce);
        printf(" | lr %.2e | norm %.3f | %.1f ms/step | %.0f tok/s | eta %s", lr, grad_norm, ms, tokens_per_s,
               human_duration(eta).c_str());
        std::vector<MoeStats> stats;  // the routing of this step, every layer (after the timing)
        if (cfg.moe()) {
            double drop = 0, entropy = 0, imbalance = 0, bias_range = 0, untaken = 0, rerouted = 0;
            int most_experts = 0;  // expert choice: the most experts any token got, over layers
            for (int l = 0; l < cfg.layers; l++) {
                moe_stats_compute(moe_stats[l], m.blocks[l].moe, m.g.blocks[l].moe, m.cfg, B * T, cfg.ep_ranks);
                stats.push_back(moe_stats_read(moe_stats[l], m.cfg, B * T, cfg.ep_ranks));
                if (m.w.blocks[l].moe.router_bias)  // --bias-rate: b after this step's update (E floats)
                    moe_stats_set_bias(stats.back(), device_to_host(m.w.blocks[l].moe.router_bias, (size_t)cfg.experts));
                if (cfg.reroute())  // --overflow reroute: the original routed counts, the placements per round
                    moe_stats_set_reroute(stats.back(),
                                          device_to_host_int(m.blocks[l].moe.tokens_per_expert_routed, (size_t)cfg.experts),
                                          device_to_host_int(m.blocks[l].moe.reroute_placed,
                                                         (size_t)(cfg.experts - cfg.top_k) * cfg.experts));
                bias_range = std::max(bias_range, stats.back().bias_range);
                drop += stats.back().drop_rate / cfg.layers;
                rerouted += (double)stats.back().rerouted_choices / ((double)B * T * cfg.top_k) / cfg.layers;
                entropy += stats.back().router_entropy / cfg.layers;
                imbalance = std::max(imbalance, stats.back().load_imbalance);
                if (stats.back().expert_choice) {
                    untaken += (double)stats.back().coverage[0] / (B * T) / cfg.layers;
                    most_experts = std::max(most_experts, stats.back().experts_per_token_max);
                }
            }
            record.raw("moe", moe_layers_json(stats));
            if (cfg.expert_choice())  // nothing is dropped: the share of tokens no expert took, and the most experts on one token
                printf(" | untaken %.1f%% | H %.2f | max experts/token %d", 100 * untaken, entropy, most_experts);
            else
                printf(" | drop %.1f%% | H %.2f | imb %.2f", 100 * drop, entropy, imbalance);
            if (cfg.reroute()) printf(" | rerouted %.1f%%", 100 * rerouted);  // choices placed by rerouting; drop is what remained
            if (m.router_bias) printf(" | bias range %.3g", bias_range);  // the largest over layers
        }
        printf("\n");
        history.log_train(done, last.ce, lr, std::move(stats), last.total, grad_norm, tokens_per_s);
        clock.open_window();
    }

    void log_validation(long long done, JsonObject& record) {
        last_val = evaluate(m, loader, cfg.eval_batches, val_x, val_y);
        best_val = std::min(best_val, last_val);
        record.flt("val_loss", last_val);
        history.log_val(done, last_val);
        printf("step %lld | val loss %.4f\n", done, last_val);
    }

    void write_sample(long long done) {
        std::string error, text = generate(m, setup.data.vocab, sample_rng, cfg.sample_len);
        if (!append_sample(samples_path, done, text, error)) runtime_failure(error);
    }

    void save_checkpoint(long long done) { ::save_checkpoint(m, setup.out, cfg, setup.data, done, loader, sample_rng); }

    // --stop-at: the run ends as if interrupted right after its checkpoint.
    void report_stop() const {
        printf("stop   | at step %lld of %d (--stop-at); continue with --resume %s/model.safetensors\n", setup.end_step,
               cfg.steps, setup.out.c_str());
    }

    // The end of the run: specialisation.txt (MoE), summary.json, the plots and the last console line.
    void finish(const Backend& backend) {
        std::string error;
        const std::string specialisation_json = cfg.moe() ? write_specialisation() : "";
        const double wall = now_seconds() - clock.run_start;
        const long long trained = cfg.steps - setup.start_step;
        JsonObject summary;
        summary.str("backend", backend.description).integer("steps", cfg.steps).integer("start_step", setup.start_step)
            .flt("final_loss", last.total).flt("final_ce", last.ce).flt("final_val_loss", last_val)
            .flt("best_val_loss", best_val).integer("params_total", (long long)setup.total_params)
            .integer("params_active", (long long)setup.active_params).integer("vocab_size", (long long)setup.data.vocab.size())
            .num("train_seconds", std::round(clock.train_seconds * 1000) / 1000).num("wall_seconds", std::round(wall * 1000) / 1000)
            .num("tokens_per_s", std::round((double)cfg.batch * cfg.block_size * trained / std::max(clock.train_seconds, 1e-9)));
        for (const auto& [k, v] : summary_metrics(history)) summary.num(k, v);
        for (const auto& [k, v] : summary_histograms(history)) summary.raw(k, diagnostics_json_array(v));
        if (!specialisation_json.empty()) summary.raw("specialisation", specialisation_json);
        if (!m.buffers.empty()) {  // --bias-rate: the final selection bias of every layer, [L][E]
            const std::vector<float> bias = device_to_host(m.router_bias, (size_t)cfg.layers * cfg.experts);
            std::string rows = "[";
            for (int l = 0; l < cfg.layers; l++)
                rows += (l ? "," : "") + diagnostics_json_array(std::vector<float>(bias.begin() + (size_t)l * cfg.experts,
                                                                                   bias.begin() + (size_t)(l + 1) * cfg.experts));
            summary.raw("router_bias", rows + "]");
        }
        JsonObject config_json;
        for (const auto& [k, v] : config_to_metadata(cfg)) config_json.str(k, v);
        summary.raw("config", config_json.str());
        if (!write_text_atomic(setup.out + "/summary.json", summary.str() + "\n", error)) runtime_failure(error);
        if (cfg.plots) {  // a plot that cannot be written costs the picture, not the finished run
            std::string plot_error;
            if (!write_run_plots(history, setup.out, &plot_error)) fprintf(stderr, "warning: %s\n", plot_error.c_str());
        }
        printf("done   | %lld steps in %s, final val loss %.4f, run directory %s\n", trained, human_duration(wall).c_str(),
               last_val, setup.out.c_str());
    }

    // Which characters (and synthetic-corpus domains) each expert receives on the validation
    // windows: specialisation.txt and the console; returns the summary's JSON of it.
    std::string write_specialisation() {
        const int B = cfg.batch, T = cfg.block_size;
        const TextData& data = setup.data;
        Specialisation sp(cfg.layers, cfg.experts, data.vocab, !data.domains.empty(), kSyntheticDomains);
        std::vector<int64_t> starts(B);
        std::vector<int> idx, kept;
        loader.reset_val();
        for (int i = 0; i < cfg.eval_batches; i++) {
            loader.next_val(val_x.data(), val_y.data(), starts.data());
            model_forward(m, val_x.data(), val_y.data(), B, T, false, 0);
            std::vector<int> domains = batch_domains(data.domains, starts.data(), B, T);
            for (int l = 0; l < cfg.layers; l++) {
                const int width = moe_copy_routing(idx, kept, m.blocks[l].moe, m.cfg, B * T);  // K, or E (expert choice)
                sp.add(l, val_x.data(), domains.empty() ? nullptr : domains.data(), idx.data(), kept.data(), B * T, width);
            }
        }
        const std::string text = sp.text();
        std::string error;
        if (!write_text_atomic(setup.out + "/specialisation.txt", text, error)) runtime_failure(error);
        fputs(text.c_str(), stdout);
        return sp.summary_json();
    }

    void free() {
        for (auto& b : moe_stats) moe_stats_free(b);
        moe_stats.clear();
    }
};
