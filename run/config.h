// run/config.h: every training flag, its default and its help text, in one table (nanoGPT style).
//
//   TrainConfig cfg; std::string err;
//   if (!parse_config(argc, argv, gpu_backend, cfg, err)) { fprintf(stderr, "error: %s\n", err.c_str()); exit(2); }
//   if (cfg.help) { fputs(config_help(gpu_backend).c_str(), stdout); exit(0); }
//
// Flags are `--name value` or `--name=value`. Defaults depend on the backend: the CPU build
// trains nanoGPT's "baby" Shakespeare model, the GPU build nanoGPT's shakespeare-char model.
// Widths given as 0 are derived after parsing (expert/shared hidden = 2*dim, dense hidden =
// 4*dim), so the stored configuration always holds the resolved numbers.
//
// A configuration is also stored as safetensors metadata (every field under its flag name, see
// config_to_metadata) and read back from a checkpoint for --resume (config_from_metadata,
// merge_resume_config).
//
// Host-only C++: ablations/ablate.cpp reads the defaults from this table too.
#pragma once
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "model_config.h"

// The model's fields (layers, dim, experts, capacity_factor, ...) are ModelConfig's; a TrainConfig
// adds the run's own. The model is built from the TrainConfig itself (a ModelConfig, once the data
// has set vocab_size).
struct TrainConfig : ModelConfig {
    // data and run
    std::string data, out, resume, dump_state, device;
    int ep_ranks = 0;  // simulated expert-parallel ranks (a diagnostic; not part of the model)
    // optimisation
    int batch = 0, steps = 0, warmup = 0, seed = 0;
    float lr = 0, min_lr = 0, weight_decay = 0, grad_clip = 0, beta1 = 0, beta2 = 0;
    // evaluation, sampling, logging, checkpoints
    int eval_every = 0, eval_batches = 0, sample_every = 0, sample_len = 0, log_every = 0, checkpoint_every = 0;
    int plots = 0;
    int stop_at = 0;  // stop after this step as if interrupted (0 = never)

    bool help = false;            // --help was given: print config_help() and exit 0
    std::set<std::string> given;  // flags that were set on the command line (for --resume)
};

// One row of the table. `trajectory` marks the fields that decide the training run's numbers
// (model, optimisation, seed): a resumed run must agree with its checkpoint on all of them. The
// others (logging cadence, paths, device) may change between a run and its resumption; the data
// is checked by its content (vocabulary and hash, see run/files.h), not by its path.
struct FlagSpec {
    const char* name;
    // The model's fields are ModelConfig members: `int ModelConfig::*` converts to `int TrainConfig::*`.
    std::variant<int TrainConfig::*, float TrainConfig::*, double TrainConfig::*, std::string TrainConfig::*> field;
    const char* cpu_default;
    const char* gpu_default;
    bool trajectory;
    const char* help;
};

inline const std::vector<FlagSpec>& flag_table() {
    using C = TrainConfig;
    static const std::vector<FlagSpec> table = {
        // name              field                  CPU default                 GPU default   trajectory
        {"data",             &C::data,             "data/tinyshakespeare.txt", "data/tinyshakespeare.txt", false,
         "training text (any file; characters = bytes), or \"synthetic\" for the built-in multi-domain corpus"},
        {"out",              &C::out,              "",      "",      false, "run directory (empty: runs/<YYYYmmdd-HHMMSS>; with --resume: the checkpoint's directory)"},
        {"resume",           &C::resume,           "",      "",      false, "continue the run of this model.safetensors (its state.safetensors sits beside it)"},
        {"dump-state",       &C::dump_state,       "",      "",      false, "write one forward+backward pass of the initial model (with --resume: the checkpoint's model on its next batch) to this safetensors file and exit"},
        {"device",           &C::device,           "auto",  "auto",  false, "cpu | gpu | auto (the backend this binary was built for)"},
        {"layers",           &C::layers,           "4",     "6",     true,  "transformer blocks"},
        {"heads",            &C::heads,            "4",     "6",     true,  "attention heads (must divide --dim)"},
        {"dim",              &C::dim,              "128",   "384",   true,  "model width C"},
        {"block-size",       &C::block_size,       "64",    "256",   true,  "context length T"},
        {"ffn-hidden",       &C::ffn_hidden,       "0",     "0",     true,  "dense FFN hidden width (0 = 4*dim)"},
        {"experts",          &C::experts,          "8",     "8",     true,  "routed experts per MoE layer (0 = dense FFN)"},
        {"top-k",            &C::top_k,            "2",     "2",     true,  "experts per token"},
        {"expert-hidden",    &C::expert_hidden,    "0",     "0",     true,  "routed expert hidden width (0 = 2*dim)"},
        {"shared-experts",   &C::shared_experts,   "0",     "0",     true,  "always-on shared experts per MoE layer"},
        {"shared-hidden",    &C::shared_hidden,    "0",     "0",     true,  "shared expert hidden width (0 = 2*dim)"},
        {"capacity-factor",  &C::capacity_factor,  "1.25",  "1.25",  true,  "expert capacity = ceil(cf*N*k/E) tokens (0 = unlimited)"},
        {"router-noise",     &C::router_noise,     "1",     "1",     true,  "noisy top-k gating during training, 0|1"},
        {"aux-coef",         &C::aux_coef,         "0.01",  "0.01",  true,  "load-balancing loss coefficient"},
        {"z-coef",           &C::z_coef,           "0.001", "0.001", true,  "router z-loss coefficient"},
        {"gate",             &C::gate,             "softmax", "softmax", true, "router scores: softmax (over the experts) | sigmoid (each expert on its own)"},
        {"routing",          &C::routing,          "token", "token", true,  "token (each token picks --top-k experts) | expert (each expert picks its capacity of tokens)"},
        {"overflow",         &C::overflow,         "drop",  "drop",  true,  "a choice over capacity: drop | reroute (to the token's next-best experts with room)"},
        {"bias-rate",        &C::bias_rate,        "0",     "0",     true,  "aux-loss-free balancing: selection bias step, b_i += rate*sign(mean load - load_i) (0 = off)"},
        {"entropy-coef",     &C::entropy_coef,     "0",     "0",     true,  "router entropy bonus: loss -= coef * sum of the layers' mean router entropy (negative sharpens)"},
        {"groups",           &C::groups,           "1",     "1",     true,  "token groups (whole sequences) with their own capacity; must divide --batch"},
        {"ep-ranks",         &C::ep_ranks,         "4",     "4",     false, "simulated expert-parallel ranks for the all-to-all traffic metric"},
        {"batch",            &C::batch,            "12",    "64",    true,  "sequences per step B"},
        {"steps",            &C::steps,            "2000",  "5000",  true,  "training steps"},
        {"lr",               &C::lr,               "1e-3",  "1e-3",  true,  "peak learning rate"},
        {"min-lr",           &C::min_lr,           "1e-4",  "1e-4",  true,  "final learning rate of the cosine decay"},
        {"warmup",           &C::warmup,           "100",   "100",   true,  "linear warmup steps"},
        {"weight-decay",     &C::weight_decay,     "0.1",   "0.1",   true,  "AdamW weight decay (weight matrices and expert weight stacks; never biases or LayerNorm)"},
        {"grad-clip",        &C::grad_clip,        "1.0",   "1.0",   true,  "clip the global gradient norm to this (0 = off)"},
        {"beta1",            &C::beta1,            "0.9",   "0.9",   true,  "AdamW beta1"},
        {"beta2",            &C::beta2,            "0.99",  "0.99",  true,  "AdamW beta2"},
        {"seed",             &C::seed,             "1337",  "1337",  true,  "seed of the weights, the batches, the router noise and the samples"},
        {"eval-every",       &C::eval_every,       "250",   "250",   false, "validation loss every this many steps, and at the last (0 = last only)"},
        {"eval-batches",     &C::eval_batches,     "20",    "50",    false, "validation batches per evaluation"},
        {"sample-every",     &C::sample_every,     "500",   "500",   false, "write a sample to samples.txt every this many steps, and at the last (0 = last only)"},
        {"sample-len",       &C::sample_len,       "200",   "500",   false, "characters per sample"},
        {"log-every",        &C::log_every,        "10",    "10",    false, "console line and metrics.jsonl record every this many steps"},
        {"checkpoint-every", &C::checkpoint_every, "500",   "500",   false, "model.safetensors + state.safetensors every this many steps, and at the end (0 = end only)"},
        {"plots",            &C::plots,            "1",     "1",     false, "draw plots of the run at the end, 0|1"},
        {"stop-at",          &C::stop_at,          "0",     "0",     false, "stop after this step as if interrupted, with a checkpoint (continue with --resume; 0 = run all --steps)"},
    };
    return table;
}

inline const FlagSpec* find_flag(const std::string& name) {
    for (const auto& f : flag_table())
        if (name == f.name) return &f;
    return nullptr;
}

// ------------------------------------------------------------------------------ value parsing
// Strict: the whole text must be the number; no spaces, no "12x", no "" and nothing that
// overflows the field's type.

inline bool parse_int_value(const std::string& s, int& out) {
    if (s.empty()) return false;
    const char* p = s.c_str();
    if (*p == '+' || *p == '-') p++;
    if (*p == '\0') return false;
    for (const char* q = p; *q; q++)
        if (*q < '0' || *q > '9') return false;
    errno = 0;
    char* end = nullptr;
    long long v = strtoll(s.c_str(), &end, 10);
    if (errno == ERANGE || *end != '\0' || v < INT32_MIN || v > INT32_MAX) return false;
    out = (int)v;
    return true;
}

inline bool parse_float_value(const std::string& s, float& out) {
    if (s.empty()) return false;
    for (char c : s)  // plain decimal notation only: no "nan", "inf", hex or spaces
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return false;
    errno = 0;
    char* end = nullptr;
    double v = strtod(s.c_str(), &end);
    if (*end != '\0' || end == s.c_str()) return false;
    if (errno == ERANGE || !std::isfinite(v) || std::fabs(v) > FLT_MAX) return false;  // 1e999, 1e-999, 1e39
    if (v != 0 && std::fabs(v) < FLT_MIN) return false;
    out = (float)v;
    return true;
}

// The same rules for a double field (--capacity-factor): finite, not subnormal.
inline bool parse_double_value(const std::string& s, double& out) {
    if (s.empty()) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return false;
    errno = 0;
    char* end = nullptr;
    double v = strtod(s.c_str(), &end);
    if (*end != '\0' || end == s.c_str()) return false;
    if (errno == ERANGE || !std::isfinite(v)) return false;  // 1e999, 1e-999
    if (v != 0 && std::fabs(v) < DBL_MIN) return false;
    out = v;
    return true;
}

// The shortest %g text that reads back to the same float ("0.001", not "0.00100000005").
inline std::string format_float(float x) {
    char buf[64];
    for (int precision = 1; precision <= 9; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, (double)x);
        if (strtof(buf, nullptr) == x) break;
    }
    return buf;
}

// The shortest of %.15g, %.16g, %.17g that reads back to the same double ("1.25", "0.7"); any
// decimal of at most 15 significant digits comes back as it was written.
inline std::string format_double(double x) {
    char buf[64];
    for (int precision = 15; precision <= 17; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, x);
        if (strtod(buf, nullptr) == x) break;
    }
    return buf;
}

inline std::string get_flag_value(const TrainConfig& c, const FlagSpec& f) {
    if (auto p = std::get_if<int TrainConfig::*>(&f.field)) return std::to_string(c.*(*p));
    if (auto p = std::get_if<float TrainConfig::*>(&f.field)) return format_float(c.*(*p));
    if (auto p = std::get_if<double TrainConfig::*>(&f.field)) return format_double(c.*(*p));
    return c.*std::get<std::string TrainConfig::*>(f.field);
}

// Sets one flag from its text; on failure an error naming the flag and the text.
inline bool set_flag_value(TrainConfig& c, const FlagSpec& f, const std::string& value, std::string& error) {
    if (auto p = std::get_if<int TrainConfig::*>(&f.field)) {
        if (!parse_int_value(value, c.*(*p))) {
            error = std::string("--") + f.name + ": \"" + value + "\" is not an integer (or out of range)";
            return false;
        }
    } else if (auto p = std::get_if<float TrainConfig::*>(&f.field)) {
        if (!parse_float_value(value, c.*(*p))) {
            error = std::string("--") + f.name + ": \"" + value + "\" is not a number (or out of range)";
            return false;
        }
    } else if (auto p = std::get_if<double TrainConfig::*>(&f.field)) {
        if (!parse_double_value(value, c.*(*p))) {
            error = std::string("--") + f.name + ": \"" + value + "\" is not a number (or out of range)";
            return false;
        }
    } else {
        c.*std::get<std::string TrainConfig::*>(f.field) = value;
    }
    return true;
}

inline void apply_defaults(TrainConfig& c, bool gpu_backend) {
    std::string unused;
    for (const auto& f : flag_table()) set_flag_value(c, f, gpu_backend ? f.gpu_default : f.cpu_default, unused);
}

// The defaults of one build as a configuration (widths left at 0 = derived from --dim).
inline TrainConfig default_config(bool gpu_backend) {
    TrainConfig c;
    apply_defaults(c, gpu_backend);
    return c;
}

// One flag's default exactly as the table spells it ("1e-3", "1.25"), for programs that drive the
// trainer (ablations/ablate.cpp). A name that is not a flag is a programming error: it aborts.
inline std::string flag_default(const std::string& name, bool gpu_backend) {
    const FlagSpec* f = find_flag(name);
    if (!f) {
        fprintf(stderr, "internal error: flag_default(\"%s\"): no such flag\n", name.c_str());
        abort();
    }
    return gpu_backend ? f->gpu_default : f->cpu_default;
}

// ------------------------------------------------------------------------ command line, checks

// Defaults, then the command line, without derivation or checks (see parse_config).
inline bool parse_args(int argc, char** argv, bool gpu_backend, TrainConfig& c, std::string& error) {
    c = TrainConfig{};
    apply_defaults(c, gpu_backend);
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            c.help = true;
            continue;
        }
        if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
            error = "unexpected argument \"" + arg + "\" (flags are --name value; see --help)";
            return false;
        }
        std::string name = arg.substr(2), value;
        bool inline_value = false;
        if (size_t eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            inline_value = true;
        }
        const FlagSpec* f = find_flag(name);
        if (!f) {
            error = "unknown flag --" + name + " (see --help)";
            return false;
        }
        if (!inline_value) {
            // A following "--flag" is the next flag, not this one's value (negative numbers have one dash).
            if (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0) {
                error = "missing value for --" + name;
                return false;
            }
            value = argv[++i];
        }
        if (!set_flag_value(c, *f, value, error)) return false;
        c.given.insert(name);
    }
    return true;
}

// Derives the 0 = "from dim" widths, then checks every field and their combinations.
inline bool resolve_and_validate(TrainConfig& c, std::string& error) {
    if (c.ffn_hidden == 0) c.ffn_hidden = 4 * c.dim;
    if (c.expert_hidden == 0) c.expert_hidden = 2 * c.dim;
    if (c.shared_hidden == 0) c.shared_hidden = 2 * c.dim;

    auto fail = [&](const std::string& msg) { error = msg; return false; };
    auto at_least = [&](const char* flag, long v, long lo) {
        if (v >= lo) return true;
        return fail(std::string("--") + flag + " must be at least " + std::to_string(lo) + " (got " + std::to_string(v) + ")");
    };
    auto non_negative = [&](const char* flag, auto v) {
        if (v >= 0) return true;
        return fail(std::string("--") + flag + " must not be negative (got " + get_flag_value(c, *find_flag(flag)) + ")");
    };
    auto flag01 = [&](const char* flag, int v) {
        if (v == 0 || v == 1) return true;
        return fail(std::string("--") + flag + " must be 0 or 1 (got " + std::to_string(v) + ")");
    };

    if (c.data.empty()) return fail("--data must name a text file or \"synthetic\"");
    if (c.device != "cpu" && c.device != "gpu" && c.device != "auto")
        return fail("--device must be cpu, gpu or auto (got \"" + c.device + "\")");
    if (!at_least("layers", c.layers, 1) || !at_least("heads", c.heads, 1) || !at_least("dim", c.dim, 1) ||
        !at_least("block-size", c.block_size, 1) || !at_least("batch", c.batch, 1) || !at_least("steps", c.steps, 1))
        return false;
    if (c.dim % c.heads != 0)
        return fail("--heads " + std::to_string(c.heads) + " does not divide --dim " + std::to_string(c.dim));
    if (!at_least("ffn-hidden", c.ffn_hidden, 1) || !at_least("experts", c.experts, 0) ||
        !at_least("top-k", c.top_k, 1) || !at_least("expert-hidden", c.expert_hidden, 1) ||
        !at_least("shared-experts", c.shared_experts, 0) || !at_least("shared-hidden", c.shared_hidden, 1) ||
        !at_least("ep-ranks", c.ep_ranks, 1))
        return false;
    if (c.experts > MOE_MAX_EXPERTS)
        return fail("--experts " + std::to_string(c.experts) + " exceeds the supported maximum of " + std::to_string(MOE_MAX_EXPERTS));
    if (c.experts > 0 && c.top_k > c.experts)
        return fail("--top-k " + std::to_string(c.top_k) + " exceeds --experts " + std::to_string(c.experts));
    if (!non_negative("capacity-factor", c.capacity_factor) || !non_negative("aux-coef", c.aux_coef) ||
        !non_negative("z-coef", c.z_coef) || !non_negative("weight-decay", c.weight_decay) ||
        !non_negative("grad-clip", c.grad_clip) || !non_negative("min-lr", c.min_lr) ||
        !flag01("router-noise", c.router_noise) || !flag01("plots", c.plots))
        return false;
    if (!(c.lr > 0)) return fail("--lr must be positive (got " + format_float(c.lr) + ")");
    if (c.min_lr > c.lr)
        return fail("--min-lr " + format_float(c.min_lr) + " exceeds --lr " + format_float(c.lr));
    if (!(c.beta1 >= 0 && c.beta1 < 1)) return fail("--beta1 must be in [0, 1) (got " + format_float(c.beta1) + ")");
    if (!(c.beta2 >= 0 && c.beta2 < 1)) return fail("--beta2 must be in [0, 1) (got " + format_float(c.beta2) + ")");
    if (!at_least("warmup", c.warmup, 0) || !at_least("seed", c.seed, 0) || !at_least("eval-every", c.eval_every, 0) ||
        !at_least("eval-batches", c.eval_batches, 1) || !at_least("sample-every", c.sample_every, 0) ||
        !at_least("sample-len", c.sample_len, 1) || !at_least("log-every", c.log_every, 1) ||
        !at_least("checkpoint-every", c.checkpoint_every, 0) || !at_least("stop-at", c.stop_at, 0))
        return false;

    // The kernels index with 32-bit ints: every buffer must stay below 2^31 elements.
    const double limit = 2147483647.0;
    const double N = (double)c.batch * c.block_size, C = c.dim;
    auto fits = [&](const char* what, double elements) {
        if (elements <= limit) return true;
        char buf[64];
        snprintf(buf, sizeof buf, "%.3g", elements);
        return fail(std::string("configuration too large: ") + what + " would need " + buf +
                    " elements (limit 2^31); reduce --batch, --block-size or the widths");
    };
    double widest = std::max({3 * C, (double)c.ffn_hidden, 256.0});
    if (!fits("activations (batch*block-size*width)", N * widest) ||
        !fits("attention scores (batch*heads*block-size^2)", (double)c.batch * c.heads * c.block_size * c.block_size) ||
        !fits("position embedding (block-size*dim)", (double)c.block_size * C) ||
        !fits("FFN weights (hidden*dim)", std::max((double)c.ffn_hidden, (double)c.shared_experts * c.shared_hidden) * C))
        return false;
    // routing variants
    auto one_of = [&](const char* flag, const std::string& v, const char* a, const char* b) {
        if (v == a || v == b) return true;
        return fail(std::string("--") + flag + " must be " + a + " or " + b + " (got \"" + v + "\")");
    };
    if (!one_of("gate", c.gate, "softmax", "sigmoid") || !one_of("routing", c.routing, "token", "expert") ||
        !one_of("overflow", c.overflow, "drop", "reroute") || !non_negative("bias-rate", c.bias_rate) ||
        !at_least("groups", c.groups, 1))
        return false;
    if (!std::isfinite(c.entropy_coef)) return fail("--entropy-coef must be a finite number");
    if (c.batch % c.groups != 0)
        return fail("--groups " + std::to_string(c.groups) + " does not divide --batch " + std::to_string(c.batch));
    const bool variant = c.gate != "softmax" || c.routing != "token" || c.overflow != "drop" || c.bias_rate != 0 ||
                         c.entropy_coef != 0 || c.groups != 1;
    if (c.experts == 0 && variant)
        return fail("the routing flags (--gate, --routing, --overflow, --bias-rate, --entropy-coef, --groups) need --experts > 0");
    // Impossible combinations first, so their message does not depend on what has landed.
    if (c.expert_choice()) {
        if (c.bias_rate != 0) return fail("--routing expert cannot be combined with --bias-rate (experts choose their tokens: there is no token-side selection to bias)");
        if (c.reroute()) return fail("--routing expert cannot be combined with --overflow reroute (every expert takes exactly its capacity)");
        if (c.experts > 0 && !(c.capacity_factor > 0))
            return fail("--routing expert needs --capacity-factor > 0 (it sets how many tokens each expert takes)");
    }
    if (c.experts == 0) return true;
    // The capacity is a count of tokens (an int): N fits one here, cf*N*K/E must too.
    if (c.capacity_factor * N * c.top_k / c.experts > limit)
        return fail("--capacity-factor " + format_double(c.capacity_factor) +
                    " is too large: an expert's capacity would exceed 2^31 tokens");
    const double rows = expert_buffer_rows(c, (long)N);
    if (!fits("expert buffers (experts*capacity*width)", (double)c.experts * rows * std::max(C, (double)c.expert_hidden)) ||
        !fits("routed tokens (batch*block-size*top-k*expert-hidden)", N * c.top_k * c.expert_hidden) ||
        !fits("shared expert activations", N * c.shared_experts * c.shared_hidden) ||
        !fits("expert weights (experts*expert-hidden*dim)", (double)c.experts * c.expert_hidden * C))
        return false;
    return true;
}

inline bool parse_config(int argc, char** argv, bool gpu_backend, TrainConfig& c, std::string& error) {
    if (!parse_args(argc, argv, gpu_backend, c, error)) return false;
    if (c.help) return true;
    return resolve_and_validate(c, error);
}

// ------------------------------------------------------------------------------ help, summary

inline std::string config_help(bool gpu_backend) {
    std::string s =
        "usage: train_moe [--flag value | --flag=value ...]\n"
        "Trains a character-level Mixture-of-Experts GPT. Defaults are for the ";
    s += gpu_backend ? "GPU build (nanoGPT shakespeare-char)" : "CPU build (nanoGPT baby Shakespeare)";
    s += "; [other build: X] shows where the other build differs.\n\n";
    for (const auto& f : flag_table()) {
        std::string left = std::string("  --") + f.name;
        std::string def = gpu_backend ? f.gpu_default : f.cpu_default;
        std::string other = gpu_backend ? f.cpu_default : f.gpu_default;
        s += left;
        s += std::string(left.size() < 22 ? 22 - left.size() : 1, ' ');
        s += f.help;
        s += " (default " + (def.empty() ? std::string("none") : def) + ")";
        if (def != other) s += " [other build: " + other + "]";
        s += "\n";
    }
    s += "  --help              show this list\n";
    return s;
}

// "layers=4 heads=4 dim=128 ..." for the console (paths and empty fields left out).
inline std::string config_summary(const TrainConfig& c) {
    std::string s;
    for (const auto& f : flag_table()) {
        std::string v = get_flag_value(c, f);
        if (v.empty()) continue;
        if (!s.empty()) s += ' ';
        s += std::string(f.name) + "=" + v;
    }
    return s;
}

// --------------------------------------------------------------- metadata (checkpoints, resume)

// Every field under its flag name, except the ones that only steer this process (a resumed run
// inherits the rest: same data path, same logging cadence, so its records line up with the original's).
inline std::map<std::string, std::string> config_to_metadata(const TrainConfig& c) {
    std::map<std::string, std::string> m;
    for (const auto& f : flag_table()) {
        std::string name = f.name;
        if (name == "resume" || name == "dump-state" || name == "out" || name == "device" || name == "stop-at") continue;
        m[name] = get_flag_value(c, f);
    }
    return m;
}

// The configuration a checkpoint was trained with. Every trajectory field must be present and
// valid; keys that are not flags (vocab, step, ...) are ignored.
inline bool config_from_metadata(const std::map<std::string, std::string>& meta, bool gpu_backend, TrainConfig& c,
                                 std::string& error) {
    c = TrainConfig{};
    apply_defaults(c, gpu_backend);
    for (const auto& f : flag_table()) {
        auto it = meta.find(f.name);
        if (it == meta.end()) {
            // the routing variants came later: a checkpoint without them was trained with their defaults
            static const std::set<std::string> added_later = {"gate", "routing", "overflow", "bias-rate",
                                                              "entropy-coef", "groups"};
            if (f.trajectory && !added_later.count(f.name)) {
                error = std::string("metadata lacks the configuration field \"") + f.name + "\"";
                return false;
            }
            continue;
        }
        std::string why;
        if (!set_flag_value(c, f, it->second, why)) {
            error = "metadata field " + why;
            return false;
        }
    }
    std::string why;
    if (!resolve_and_validate(c, why)) {
        error = "metadata holds an invalid configuration: " + why;
        return false;
    }
    return true;
}

// For --resume: the checkpoint's configuration, with the command line's non-trajectory flags
// (logging cadence, paths, device) on top. A trajectory flag given on the command line must
// agree with the checkpoint (after deriving 0 = "from dim" widths), else an error naming it.
// `cli` is the command line as parse_args left it (not yet resolved).
inline bool merge_resume_config(const TrainConfig& cli, const TrainConfig& ckpt, TrainConfig& merged, std::string& error) {
    merged = ckpt;
    for (const auto& name : cli.given) {
        const FlagSpec* f = find_flag(name);
        std::string unused;
        set_flag_value(merged, *f, get_flag_value(cli, *f), unused);
    }
    merged.help = cli.help;
    merged.given = cli.given;
    if (!resolve_and_validate(merged, error)) return false;
    for (const auto& f : flag_table()) {
        if (!f.trajectory) continue;
        std::string have = get_flag_value(ckpt, f), want = get_flag_value(merged, f);
        if (have != want) {
            error = std::string("--resume: the checkpoint was trained with --") + f.name + " " + have + ", not " + want;
            return false;
        }
    }
    return true;
}
