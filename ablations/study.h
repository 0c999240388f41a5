// ablations/study.h: the runs of the MoE ablation study (ablate.cpp trains them and writes the report).
//
// Two kinds of numbers set a run. The study's own choices are written here: its scale (2 layers of
// width 96, batch 16), its cadence (evaluation, checkpoints), the top-2 baseline its run names are
// built around, and each run's change. Everything else is the trainer's default, read from the
// trainer's flag table (run/config.h) rather than written again, so the study follows the trainer.
// The study runs train_moe_cpu, so these are the CPU build's defaults.
#pragma once
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "run/config.h"

// The trainer's default for --name, as its flag table spells it (e.g. "1.25", "1e-3").
inline std::string trainer_default(const std::string& name) { return flag_default(name, false); }

// The trainer's defaults as numbers (widths still 0 = derived).
inline const TrainConfig& trainer_defaults() {
    static const TrainConfig defaults = default_config(false);
    return defaults;
}

struct Sweep {
    std::string trainer = "./train_moe_cpu";
    std::string data = trainer_default("data");
    std::string runs_dir = "ablations/runs";
    std::string out_dir = "ablations";
    // the study's scale and cadence
    int layers = 2, dim = 96, batch = 16;
    int eval_every = 100, eval_batches = 16, checkpoint_every = 250;
    int top_k = 2;           // the baseline's K: the runs are named top2 (baseline) and top1
    int expert_hidden = 0;   // 0: 2*dim, as the trainer derives it
    // the trainer's defaults
    int heads = trainer_defaults().heads, block = trainer_defaults().block_size, steps = trainer_defaults().steps;
    int warmup = trainer_defaults().warmup, seed = trainer_defaults().seed, experts = trainer_defaults().experts;
    int log_every = trainer_defaults().log_every;
    // this invocation
    int jobs = 2;
    bool report_only = false, dry_run = false;
    std::set<std::string> only;
    int F() const { return expert_hidden > 0 ? expert_hidden : 2 * dim; }
    // The routing variants' own settings (the README says how they were chosen):
    std::string bias_rate = "0.001";     // --bias-rate of the bias-balancing runs
    std::string entropy_coef = "0.01";   // --entropy-coef of the entropy runs, + and -
    // The synthetic-data runs (aux coefficient against specialisation) train half the steps: their
    // four domains are told apart within a few hundred steps, and the study has to fit its budget.
    int synthetic_steps() const { return std::max(1, steps / 2); }
};

struct RunSpec {
    std::string name;   // directory name
    std::string label;  // one line for the table
    std::map<std::string, std::string> flags;  // trajectory flags beyond the common ones
    double cost = 1;    // relative compute, for scheduling the longest first
};

// The MoE flags every MoE run passes at the trainer's default unless it changes them. They are passed
// explicitly so that a run directory's stored configuration can be checked against the sweep.
inline const std::vector<std::string>& moe_default_flags() {
    static const std::vector<std::string> names = {"capacity-factor", "router-noise", "aux-coef", "z-coef", "shared-experts"};
    return names;
}

// The common flags of every run (model size, optimisation, data, logging) and the MoE defaults.
inline std::map<std::string, std::string> common_flags(const Sweep& s) {
    std::map<std::string, std::string> f = {{"data", s.data},
                                            {"layers", std::to_string(s.layers)},
                                            {"heads", std::to_string(s.heads)},
                                            {"dim", std::to_string(s.dim)},
                                            {"block-size", std::to_string(s.block)},
                                            {"batch", std::to_string(s.batch)},
                                            {"steps", std::to_string(s.steps)},
                                            {"warmup", std::to_string(s.warmup)},
                                            {"seed", std::to_string(s.seed)},
                                            {"eval-every", std::to_string(s.eval_every)},
                                            {"eval-batches", std::to_string(s.eval_batches)},
                                            {"log-every", std::to_string(s.log_every)},
                                            {"checkpoint-every", std::to_string(s.checkpoint_every)},
                                            {"sample-every", "0"},
                                            {"sample-len", trainer_default("sample-len")},
                                            {"experts", std::to_string(s.experts)},
                                            {"expert-hidden", std::to_string(s.F())},
                                            {"top-k", std::to_string(s.top_k)}};
    for (const auto& name : moe_default_flags()) f[name] = trainer_default(name);
    return f;
}

// "cf 1.25, noise, aux 0.01, z 0.001": the MoE defaults of the baseline, for its label.
inline std::string baseline_settings() {
    return "cf " + trainer_default("capacity-factor") + (trainer_default("router-noise") == "1" ? ", noise" : ", no noise") +
           ", aux " + trainer_default("aux-coef") + ", z " + trainer_default("z-coef");
}

inline std::vector<RunSpec> study(const Sweep& s) {
    const int E = s.experts, F = s.F(), K = s.top_k;
    const std::string moe = "MoE " + std::to_string(E) + "x" + std::to_string(F);
    std::vector<RunSpec> r;
    r.push_back({"dense-total", "dense, FFN " + std::to_string(E * F) + " (= E*F: the MoE's total size)",
                 {{"experts", "0"}, {"ffn-hidden", std::to_string(E * F)}}, 1.7});
    r.push_back({"top2", moe + " top-2 (baseline: " + baseline_settings() + ")", {}, 1.0});
    r.push_back({"top2-seed2", moe + " top-2, seed " + std::to_string(s.seed + 1) + " (noise reference)",
                 {{"seed", std::to_string(s.seed + 1)}}, 1.0});
    r.push_back({"aux-off", moe + " top-2, aux loss off, noise off", {{"aux-coef", "0"}, {"router-noise", "0"}}, 1.0});
    r.push_back({"noise-off", moe + " top-2, noise off (aux on)", {{"router-noise", "0"}}, 1.0});
    r.push_back({"z-off", moe + " top-2, z-loss off", {{"z-coef", "0"}}, 1.0});
    r.push_back({"cf0.5", moe + " top-2, capacity factor 0.5", {{"capacity-factor", "0.5"}}, 0.9});
    r.push_back({"cf1.0", moe + " top-2, capacity factor 1.0", {{"capacity-factor", "1"}}, 1.0});
    r.push_back({"cf2.0", moe + " top-2, capacity factor 2.0", {{"capacity-factor", "2"}}, 1.0});
    r.push_back({"cf-unlimited", moe + " top-2, unlimited capacity", {{"capacity-factor", "0"}}, 1.0});
    r.push_back({"shared", "1 shared expert (" + std::to_string(F) + ") + " + moe + " top-1",
                 {{"top-k", "1"}, {"shared-experts", "1"}, {"shared-hidden", std::to_string(F)}}, 1.0});
    r.push_back({"top1", moe + " top-1", {{"top-k", "1"}}, 0.8});
    r.push_back({"dense-active", "dense, FFN " + std::to_string(K * F) + " (= K*F: the MoE's active size)",
                 {{"experts", "0"}, {"ffn-hidden", std::to_string(K * F)}}, 0.7});

    // The routing variants (docs/model.md, 31). Each changes the run it is compared with in one
    // place; the balancing runs keep the router noise off like aux-off and noise-off, their partners.
    const std::map<std::string, std::string> no_noise = {{"router-noise", "0"}};
    auto with = [](std::map<std::string, std::string> base, const std::map<std::string, std::string>& more) {
        for (const auto& [k, v] : more) base[k] = v;
        return base;
    };
    r.push_back({"ec-cf1.0", moe + " expert choice, capacity factor 1.0", {{"routing", "expert"}, {"capacity-factor", "1"}}, 1.05});
    r.push_back({"bias", moe + " top-2, bias balancing (rate " + s.bias_rate + "), aux loss off, noise off",
                 with(no_noise, {{"aux-coef", "0"}, {"bias-rate", s.bias_rate}}), 1.05});
    r.push_back({"aux-bias", moe + " top-2, aux loss and bias balancing, noise off", with(no_noise, {{"bias-rate", s.bias_rate}}), 1.05});
    r.push_back({"sigmoid-bias", moe + " top-2, sigmoid scores, bias balancing, aux loss off, noise off",
                 with(no_noise, {{"gate", "sigmoid"}, {"aux-coef", "0"}, {"bias-rate", s.bias_rate}}), 1.0});
    r.push_back({"reroute-cf1.0", moe + " top-2, capacity factor 1.0, overflow rerouted", {{"capacity-factor", "1"}, {"overflow", "reroute"}}, 0.95});
    r.push_back({"reroute-cf0.5", moe + " top-2, capacity factor 0.5, overflow rerouted", {{"capacity-factor", "0.5"}, {"overflow", "reroute"}}, 0.8});
    r.push_back({"entropy-pos", moe + " top-2, entropy bonus +" + s.entropy_coef, {{"entropy-coef", s.entropy_coef}}, 1.0});
    r.push_back({"entropy-neg", moe + " top-2, entropy bonus -" + s.entropy_coef, {{"entropy-coef", "-" + s.entropy_coef}}, 1.0});
    for (int e : {4, 16})  // the E x K surface around top1 and top2 (E = 8), at the same expert width
        for (int k : {1, 2}) {
            const std::string name = "E" + std::to_string(e) + "-top" + std::to_string(k);
            r.push_back({name, "MoE " + std::to_string(e) + "x" + std::to_string(F) + " top-" + std::to_string(k),
                         {{"experts", std::to_string(e)}, {"top-k", std::to_string(k)}}, (e == 16 ? 0.9 : 0.8) + 0.1 * (k - 1)});
        }
    for (const char* coef : {"0", "0.001", "0.01", "0.1"})
        r.push_back({std::string("syn-aux") + coef,
                     moe + " top-2, aux " + coef + ", synthetic data, " + std::to_string(s.synthetic_steps()) + " steps",
                     {{"data", "synthetic"}, {"steps", std::to_string(s.synthetic_steps())}, {"aux-coef", coef}}, 0.55});
    return r;
}

inline std::map<std::string, std::string> run_flags(const Sweep& s, const RunSpec& r) {
    std::map<std::string, std::string> f = common_flags(s);
    for (const auto& [k, v] : r.flags) f[k] = v;
    if (f["experts"] == "0")  // dense: the MoE flags do not apply (left at the trainer's defaults)
        for (const char* k : {"expert-hidden", "top-k", "capacity-factor", "router-noise", "aux-coef", "z-coef", "shared-experts"})
            f.erase(k);
    return f;
}
