// train_moe.cu: the moe.cu trainer. One source, two binaries: nvcc builds train_moe for a GPU,
// g++ builds train_moe_cpu, which runs the very same kernels through the SIMT layer.
//
//   ./train_moe_cpu                      the default run (nanoGPT "baby" Shakespeare, MoE 8x top-2)
//   ./train_moe_cpu --experts 0          the dense model
//   ./train_moe_cpu --help               every flag and its default
//
// Order of business, so that bad input never damages anything: parse and check the flags, read
// and check the --resume checkpoint, load and check the data, check the model's tensors against the
// checkpoint, check the run directory; only then create files. Any bad input ends the program with
// one line on stderr and exit status 2; a failure while running (disk full, ...) with status 1.
//
// A training step: forward (router noise drawn from (seed, step)), zero grads, backward, clip +
// AdamW, all on the device; the host reads the loss only at log steps. Same seed, same losses, bit
// for bit on the CPU build; a resumed run continues exactly where the checkpoint left off, because
// everything that decides a step (weights, moments, step, the batch generator, the sampling
// generator) is in the checkpoint and the router noise depends only on (seed, step).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model.cuh"
#include "diagnostics.cuh"
#include "config.h"
#include "data/dataloader.h"
#include "run_files.h"
#include "run_report.h"
#include "safetensors.h"

static_assert(kMaxExperts == MOE_MAX_EXPERTS, "config.h's expert limit must match moe_layer.cuh");

namespace {

[[noreturn]] void bad_input(const std::string& message) {
    fprintf(stderr, "error: %s\n", message.c_str());
    exit(2);
}
[[noreturn]] void runtime_failure(const std::string& message) {
    fprintf(stderr, "error: %s\n", message.c_str());
    exit(1);
}

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string human_count(double n) {
    char buf[32];
    if (n >= 1e6) snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (n >= 1e3) snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
    else snprintf(buf, sizeof buf, "%.0f", n);
    return buf;
}

std::string human_duration(double seconds) {
    long s = (long)(seconds + 0.5);
    char buf[32];
    if (s >= 3600) snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, sizeof buf, "%lds", s);
    return buf;
}

// ------------------------------------------------------------------------------------ backend

// The nvcc build runs on a GPU, the g++ build on the CPU through the SIMT layer. The device
// count is only asked under nvcc (the CPU layer reports its one "device" and would say nothing).
struct Backend {
    bool gpu = false;
    bool available = true;
    std::string description;
};

Backend detect_backend() {
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

// ------------------------------------------------------------------------------------ model glue

ModelConfig model_config(const TrainConfig& c, int vocab_size) {
    ModelConfig m;
    m.vocab_size = vocab_size;
    m.block_size = c.block_size;
    m.layers = c.layers;
    m.heads = c.heads;
    m.dim = c.dim;
    m.ffn_hidden = c.ffn_hidden;
    m.experts = c.experts;
    m.top_k = c.top_k;
    m.expert_hidden = c.expert_hidden;
    m.shared_experts = c.shared_experts;
    m.shared_hidden = c.shared_hidden;
    // Through the decimal text the metadata stores, so capacity = ceil(cf*N*K/E) is computed from
    // the same double here and in any independent implementation reading the checkpoint (0.7f is
    // not 0.7, and ceil can tell the difference).
    m.capacity_factor = strtod(format_float(c.capacity_factor).c_str(), nullptr);
    m.router_noise = c.router_noise != 0;
    m.aux_coef = c.aux_coef;
    m.z_coef = c.z_coef;
    return m;
}

std::vector<TensorShape> model_shapes(const ModelConfig& mc) {
    std::vector<TensorShape> shapes;
    for (const auto& p : model_parameter_table(mc)) shapes.push_back({p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end())});
    return shapes;
}

std::vector<float> device_to_host(const float* device, size_t n) {
    std::vector<float> host(n);
    CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}
std::vector<int> device_to_host_int(const int* device, size_t n) {
    std::vector<int> host(n);
    CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(int), cudaMemcpyDeviceToHost));
    return host;
}

safetensors::Tensor make_tensor(const ParamTensor& p, const float* host_base) {
    safetensors::File f;
    f.add_f32(p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end()), host_base + p.offset);
    return std::move(f.tensors.back());
}

// Puts a checkpoint's weights and moments into the model (shapes were checked before).
void load_checkpoint_into(Model& m, const Checkpoint& c) {
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
}

void save_checkpoint(const Model& m, const std::string& dir, const TrainConfig& cfg, const TextData& data,
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
    state.step = step;
    state.data_hash = data.hash;
    state.train_rng = dl.train_rng;
    state.val_rng = dl.val_rng;
    state.sample_rng = sample_rng;
    state.config = config_to_metadata(cfg);
    std::string error;
    if (!write_checkpoint(dir, weights, state, cfg, data.vocab, error)) runtime_failure(error);
}

// Mean validation cross-entropy over the same `eval_batches` windows every time (reset_val).
float evaluate(Model& m, DataLoader& dl, int batches, std::vector<int32_t>& x, std::vector<int32_t>& y) {
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
std::string generate(Model& m, const std::string& vocab, Rng& rng, int length) {
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

// MODEL_SPEC "State dump": one forward + backward on the first training batch with the initial
// weights, every weight and gradient, the batch, the logits, the losses and the routing.
void dump_state(Model& m, const TrainConfig& cfg, const TextData& data, const std::string& path) {
    const int B = cfg.batch, T = cfg.block_size, N = B * T, V = m.cfg.vocab_size;
    DataLoader dl;
    dl.init(data, B, T, (uint64_t)cfg.seed);
    std::vector<int32_t> x(N), y(N);
    dl.next_train(x.data(), y.data());
    model_forward(m, x.data(), y.data(), B, T, true, 0);
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
    f.add_i32("inputs", {B, T}, x.data());
    f.add_i32("targets", {B, T}, y.data());
    f.add_f32("logits", {B, T, V}, device_to_host(m.logits, (size_t)N * V).data());
    f.add_f32("loss.total", {}, &losses.total);
    f.add_f32("loss.ce", {}, &losses.ce);
    f.add_f32("loss.aux", {}, &losses.aux);
    f.add_f32("loss.z", {}, &losses.z);
    if (m.cfg.moe()) {
        const int K = m.cfg.top_k, E = m.cfg.experts;
        for (int l = 0; l < m.cfg.layers; l++) {
            const MoeActivations& a = m.blocks[l].moe;
            std::string h = "h." + std::to_string(l) + ".moe.";
            f.add_i32(h + "topk_idx", {N, K}, device_to_host_int(a.topk_idx, (size_t)N * K).data());
            f.add_i32(h + "kept", {N, K}, device_to_host_int(a.kept, (size_t)N * K).data());
            f.add_f32(h + "gates", {N, K}, device_to_host(a.gates, (size_t)N * K).data());
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

}  // namespace

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // one line at a time, also into a pipe or a log file
    const Backend backend = detect_backend();

    // ---- 1. flags (and, for --resume, the checkpoint's configuration)
    TrainConfig cli, cfg;
    std::string error;
    if (!parse_args(argc, argv, backend.gpu, cli, error)) bad_input(error);
    if (cli.help) {
        fputs(config_help(backend.gpu).c_str(), stdout);
        return 0;
    }
    Checkpoint ckpt;
    const bool resuming = !cli.resume.empty();
    if (resuming) {
        if (!cli.dump_state.empty()) bad_input("--dump-state writes the initial model; it cannot be combined with --resume");
        if (!read_checkpoint(cli.resume, backend.gpu, ckpt, error)) bad_input("--resume " + error);
        if (!merge_resume_config(cli, ckpt.config, cfg, error)) bad_input(error);
    } else {
        cfg = cli;
        if (!resolve_and_validate(cfg, error)) bad_input(error);
    }
    if (cfg.device == "cpu" && backend.gpu) bad_input("--device cpu: this is the GPU build; run train_moe_cpu (make train_moe_cpu)");
    if (cfg.device == "gpu" && !backend.gpu) bad_input("--device gpu: this is the CPU build; run train_moe (make train_moe, needs nvcc)");
    if (!backend.available) runtime_failure("no CUDA device found; on a machine without a GPU use train_moe_cpu");

    // ---- 2. data
    TextData data;
    if (!load_dataset(cfg.data, cfg.block_size, data, error)) bad_input(error);
    if (resuming) {
        if (data.vocab != ckpt.vocab)
            bad_input("--resume: the checkpoint's vocabulary differs from the one of " + data.name + " (another text?)");
        if (data.hash != ckpt.state.data_hash)
            bad_input("--resume: " + data.name + " is not the text the checkpoint was trained on (its hash differs)");
    }

    // ---- 3. model shape against the checkpoint
    const ModelConfig mc = model_config(cfg, (int)data.vocab.size());
    size_t total_params = 0;
    for (const auto& s : model_shapes(mc)) {
        size_t n = 1;
        for (int64_t d : s.shape) n *= (size_t)d;
        total_params += n;
    }
    const size_t active_params = model_active_parameters(mc, total_params);
    long long start_step = 0;
    if (resuming) {
        if (!check_resume_tensors(ckpt, model_shapes(mc), error)) bad_input("--resume " + error);
        start_step = ckpt.step;
        if (start_step >= cfg.steps)
            bad_input("--resume: the checkpoint is at step " + std::to_string(start_step) + " of " +
                      std::to_string(cfg.steps) + ": that run is already complete");
        if (cfg.stop_at > 0 && cfg.stop_at <= start_step)
            bad_input("--stop-at " + std::to_string(cfg.stop_at) + " is not after the checkpoint's step " + std::to_string(start_step));
    }
    const long long end_step = cfg.stop_at > 0 ? std::min<long long>(cfg.stop_at, cfg.steps) : cfg.steps;

    // ---- 4. where the output goes (checked, not yet touched)
    if (!cfg.dump_state.empty()) {
        if (is_directory(cfg.dump_state)) bad_input("--dump-state " + cfg.dump_state + " is a directory");
        if (!is_directory(dir_of(cfg.dump_state)))
            bad_input("--dump-state " + cfg.dump_state + ": directory " + dir_of(cfg.dump_state) + " does not exist");
    }
    const std::string resume_dir = resuming ? dir_of(cfg.resume) : "";
    std::string out = cfg.out;
    if (out.empty()) out = resuming ? resume_dir : default_run_dir();
    if (cfg.dump_state.empty()) {
        if (!check_run_dir(out, resume_dir, error)) bad_input(error);
        // The first write of the run; a directory that cannot be made is still bad input (--out).
        if (!make_dirs(out, error)) bad_input("--out " + error);
    }

    // ---- 5. everything checked: report, build, write
    printf("moe.cu | backend %s\n", backend.description.c_str());
    printf("config | %s\n", config_summary(cfg).c_str());
    printf("data   | %s: %zu characters, vocabulary %zu, %zu train / %zu validation\n", data.name.c_str(),
           data.tokens.size(), data.vocab.size(), data.train_size(), data.val_size());
    // Every MoE layer sees the same N tokens per step, so the capacity is the same in each.
    const int capacity = mc.moe() ? model_moe_config(mc, cfg.batch * cfg.block_size).capacity : 0;
    if (mc.moe())
        printf("model  | %s parameters, %s active per token (%.2fx; %d experts, top-%d, %d shared), capacity %d "
               "tokens per expert per layer\n",
               human_count((double)total_params).c_str(), human_count((double)active_params).c_str(),
               (double)total_params / (double)active_params, mc.experts, mc.top_k, mc.shared_experts, capacity);
    else
        printf("model  | %s parameters (dense)\n", human_count((double)total_params).c_str());

    Model m;
    model_build(m, mc, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);
    if (!cfg.dump_state.empty()) {
        dump_state(m, cfg, data, cfg.dump_state);
        model_free(m);
        return 0;
    }
    const std::string metrics_path = out + "/metrics.jsonl", samples_path = out + "/samples.txt";
    DataLoader dl;
    dl.init(data, cfg.batch, cfg.block_size, (uint64_t)cfg.seed);
    Rng sample_rng = Rng::seeded((uint64_t)cfg.seed, kStreamSample);
    if (resuming) {
        load_checkpoint_into(m, ckpt);
        dl.train_rng = ckpt.state.train_rng;
        dl.val_rng = ckpt.state.val_rng;
        sample_rng = ckpt.state.sample_rng;
        ckpt = Checkpoint{};  // the host copies are no longer needed
        // Records and samples after the checkpoint's step will be written again by this run.
        if (!truncate_metrics(metrics_path, start_step, error) || !truncate_samples(samples_path, start_step, error))
            runtime_failure(error);
        printf("resume | from %s at step %lld\n", cfg.resume.c_str(), start_step);
    }
    printf("run    | %s\n", out.c_str());
    const bool fresh_metrics = !path_exists(metrics_path);
    MetricsLog metrics;
    if (!metrics.open(metrics_path, error)) runtime_failure(error);
    if (fresh_metrics) {  // the run's sizes, once, as step 0
        JsonObject head;
        head.integer("step", 0).integer("params_total", (long long)total_params)
            .integer("params_active", (long long)active_params)
            .num("params_ratio", std::round(1e4 * (double)total_params / (double)active_params) / 1e4);
        if (mc.moe()) head.flts("capacity", std::vector<int>(mc.layers, capacity));
        metrics.write(head);
    }
    // What the run logged (for the plots and the summary); a run resumed in its own directory
    // starts from the records before its checkpoint.
    RunHistory history;
    if (!fresh_metrics && !history.load_metrics(metrics_path, error)) runtime_failure(error);
    std::vector<MoeStatsBuffer> moe_stats;  // one per MoE layer, filled on the device at log steps
    if (mc.moe())
        for (int l = 0; l < mc.layers; l++) moe_stats.push_back(moe_stats_alloc(mc.experts));

    // ---- 6. training
    const int B = cfg.batch, T = cfg.block_size;
    std::vector<int32_t> x((size_t)B * T), y((size_t)B * T), vx((size_t)B * T), vy((size_t)B * T);
    const OptimConfig opt_base{cfg.lr, cfg.beta1, cfg.beta2, 1e-8f, cfg.weight_decay, cfg.grad_clip};
    auto every = [](long long step, int period) { return period > 0 && step % period == 0; };

    const double run_start = now_seconds();
    double window_start = run_start, excluded = 0, train_seconds = 0;
    long long window_steps = 0;
    Losses last{NAN, NAN, NAN, NAN};
    float last_val = NAN, best_val = INFINITY;
    for (long long step = start_step; step < end_step; step++) {
        const long long done = step + 1;
        const bool final_step = done == cfg.steps;
        const float lr = cosine_lr((int)step, cfg.warmup, cfg.steps, cfg.lr, cfg.min_lr);
        dl.next_train(x.data(), y.data());
        model_forward(m, x.data(), y.data(), B, T, true, (long)step);
        model_zero_grad(m);
        model_backward(m);
        OptimConfig opt = opt_base;
        opt.lr = lr;
        model_update(m, opt, (int)done);
        window_steps++;

        const bool log = every(done, cfg.log_every) || final_step;
        const bool eval = every(done, cfg.eval_every) || final_step;
        JsonObject record;
        record.integer("step", done);
        if (log) {
            last = model_read_losses(m);  // waits for the step: the timing below is real
            const float grad_norm = model_read_grad_norm(m);
            const double t = now_seconds(), window = t - window_start - excluded;
            train_seconds += window;
            const double ms = 1000.0 * window / (double)window_steps;
            const double tokens_per_s = (double)B * T * window_steps / std::max(window, 1e-9);
            record.flt("loss", last.total).flt("ce", last.ce);
            if (mc.moe()) record.flt("aux", last.aux).flt("z", last.z);
            record.flt("lr", lr).flt("grad_norm", grad_norm).num("ms_per_step", std::round(ms * 1000) / 1000)
                .num("tokens_per_s", std::round(tokens_per_s));
            const double eta = (t - run_start) / (double)(done - start_step) * (double)(cfg.steps - done);
            printf("step %*lld/%d | loss %.4f", (int)std::to_string(cfg.steps).size(), done, cfg.steps, last.total);
            if (mc.moe()) printf(" (ce %.4f)", last.ce);
            printf(" | lr %.2e | norm %.3f | %.1f ms/step | %.0f tok/s | eta %s", lr, grad_norm, ms, tokens_per_s,
                   human_duration(eta).c_str());
            std::vector<MoeStats> stats;  // the routing of this step, every layer (after the timing)
            if (mc.moe()) {
                double drop = 0, entropy = 0, imbalance = 0;
                for (int l = 0; l < mc.layers; l++) {
                    moe_stats_compute(moe_stats[l], m.blocks[l].moe, m.g.blocks[l].moe, m.moe_cfg[l], cfg.ep_ranks);
                    stats.push_back(moe_stats_read(moe_stats[l], m.moe_cfg[l], cfg.ep_ranks));
                    drop += stats.back().drop_rate / mc.layers;
                    entropy += stats.back().router_entropy / mc.layers;
                    imbalance = std::max(imbalance, stats.back().load_imbalance);
                }
                record.raw("moe", moe_layers_json(stats));
                printf(" | drop %.1f%% | H %.2f | imb %.2f", 100 * drop, entropy, imbalance);
            }
            printf("\n");
            history.log_train(done, last.ce, lr, std::move(stats), last.total, grad_norm, tokens_per_s);
            window_start = now_seconds();
            excluded = 0;
            window_steps = 0;
        }
        const double extra_start = now_seconds();
        if (eval) {
            last_val = evaluate(m, dl, cfg.eval_batches, vx, vy);
            best_val = std::min(best_val, last_val);
            record.flt("val_loss", last_val);
            history.log_val(done, last_val);
            printf("step %lld | val loss %.4f\n", done, last_val);
        }
        if (log || eval) metrics.write(record);
        if (every(done, cfg.sample_every) || final_step) {
            std::string text = generate(m, data.vocab, sample_rng, cfg.sample_len);
            if (!append_sample(samples_path, done, text, error)) runtime_failure(error);
        }
        if (every(done, cfg.checkpoint_every) || final_step || done == end_step)
            save_checkpoint(m, out, cfg, data, done, dl, sample_rng);
        excluded += now_seconds() - extra_start;
    }
    if (end_step < cfg.steps) {  // --stop-at: as if interrupted right after a checkpoint
        printf("stop   | at step %lld of %d (--stop-at); continue with --resume %s/model.safetensors\n", end_step,
               cfg.steps, out.c_str());
        for (auto& b : moe_stats) moe_stats_free(b);
        model_free(m);
        return 0;
    }

    // ---- 7. specialisation, summary, plots
    std::string specialisation_json;
    if (mc.moe()) {  // which characters (and synthetic-corpus domains) each expert receives, on the validation windows
        Specialisation sp(mc.layers, mc.experts, data.vocab, !data.domains.empty(), kSyntheticDomains);
        std::vector<int64_t> starts(B);
        std::vector<int> idx, kept;
        dl.reset_val();
        for (int i = 0; i < cfg.eval_batches; i++) {
            dl.next_val(vx.data(), vy.data(), starts.data());
            model_forward(m, vx.data(), vy.data(), B, T, false, 0);
            std::vector<int> domains = batch_domains(data.domains, starts.data(), B, T);
            for (int l = 0; l < mc.layers; l++) {
                moe_copy_routing(idx, kept, m.blocks[l].moe, m.moe_cfg[l]);
                sp.add(l, vx.data(), domains.empty() ? nullptr : domains.data(), idx.data(), kept.data(), B * T, mc.top_k);
            }
        }
        const std::string text = sp.text();
        if (!write_text_atomic(out + "/specialisation.txt", text, error)) runtime_failure(error);
        fputs(text.c_str(), stdout);
        specialisation_json = sp.summary_json();
    }
    const double wall = now_seconds() - run_start;
    const long long trained = cfg.steps - start_step;
    JsonObject summary;
    summary.str("backend", backend.description).integer("steps", cfg.steps).integer("start_step", start_step)
        .flt("final_loss", last.total).flt("final_ce", last.ce).flt("final_val_loss", last_val)
        .flt("best_val_loss", best_val).integer("params_total", (long long)total_params)
        .integer("params_active", (long long)active_params).integer("vocab_size", (long long)data.vocab.size())
        .num("train_seconds", std::round(train_seconds * 1000) / 1000).num("wall_seconds", std::round(wall * 1000) / 1000)
        .num("tokens_per_s", std::round((double)B * T * trained / std::max(train_seconds, 1e-9)));
    for (const auto& [k, v] : summary_metrics(history)) summary.num(k, v);
    if (!specialisation_json.empty()) summary.raw("specialisation", specialisation_json);
    JsonObject config_json;
    for (const auto& [k, v] : config_to_metadata(cfg)) config_json.str(k, v);
    summary.raw("config", config_json.str());
    if (!write_text_atomic(out + "/summary.json", summary.str() + "\n", error)) runtime_failure(error);
    if (cfg.plots) {  // a plot that cannot be written costs the picture, not the finished run
        std::string plot_error;
        if (!write_run_plots(history, out, &plot_error)) fprintf(stderr, "warning: %s\n", plot_error.c_str());
    }
    printf("done   | %lld steps in %s, final val loss %.4f, run directory %s\n", trained, human_duration(wall).c_str(),
           last_val, out.c_str());
    for (auto& b : moe_stats) moe_stats_free(b);
    model_free(m);
    return 0;
}
