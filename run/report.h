// run/report.h: a run's diagnostics turned into files: the metrics history, the plots, the
// expert-specialisation report and the summary fields (issue 5, items 2 and 3).
//
// Host-only C++ on top of diagnostics.cuh (MoeStats, ExpertCharCounts, DomainExpertTable), plot.h
// and safetensors.h's JSON reader. Nothing here touches the device.
//
// Wiring into a trainer (about 20 lines):
//
//   RunHistory history;                                          // before the loop
//   if (resuming) history.load_metrics(metrics_path, error);     // after truncate_metrics: the steps so far
//   ...at a log step, with `stats` the MoeStats of every MoE layer (empty for a dense model):
//   history.log_train(done, last.ce, lr, stats, last.total);
//   if (!stats.empty()) record.raw("moe", moe_layers_json(stats));
//   ...at an eval step:
//   history.log_val(done, last_val);
//   ...at the end:
//   if (mc.moe()) {
//       Specialisation sp(mc.layers, mc.experts, data.vocab, !data.domains.empty());
//       dl.reset_val();
//       for (int i = 0; i < cfg.eval_batches; i++) {
//           dl.next_val(vx.data(), vy.data(), starts.data());
//           model_forward(m, vx.data(), vy.data(), B, T, false, 0);
//           std::vector<int> dom = batch_domains(data.domains, starts.data(), B, T);
//           for (int l = 0; l < mc.layers; l++) {
//               moe_copy_routing(idx, kept, m.blocks[l].moe, m.moe_cfg[l]);
//               sp.add(l, vx.data(), dom.empty() ? nullptr : dom.data(), idx.data(), kept.data(), B * T, mc.top_k);
//           }
//       }
//       write_text_atomic(out + "/specialisation.txt", sp.text(), error); fputs(sp.text().c_str(), stdout);
//       summary.raw("specialisation", sp.summary_json());
//   }
//   for (auto& [k, v] : summary_metrics(history)) summary.num(k, v);
//   if (cfg.plots) write_run_plots(history, out, &error);
//
// Files written into the run directory by write_run_plots (a dense run writes loss.png only):
//   loss.png               train cross-entropy (every log step) and validation loss (eval steps) vs step
//   expert_load.png        heatmap: tokens routed to each expert (before capacity) per log step, a panel per layer
//   drop_entropy.png       drop rate, mean router entropy (with ln E marked) and load imbalance over time, per layer
//                          (expert choice: the untaken tokens and the most experts on a token; reroute: the rerouted choices too)
//   expert_grad_norms.png  per-expert gradient L2 norm over time, a panel per layer, log axis
//   load_histogram.png     tokens per expert at the last log step (routed and kept), a panel per layer,
//                          with the uniform level N*K/E and the capacity marked
//   bias.png               --bias-rate only: each layer's selection bias per expert over time, a panel per layer
//   coverage.png           --routing expert only: tokens taken by 0, 1, ..., E experts at the last log step, a panel per layer
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "data/synthetic.h"
#include "diagnostics.cuh"
#include "run/plot.h"
#include "run/safetensors.h"

// ================================================================================================
// Metrics lines

// The "moe" field of a metrics.jsonl record: one moe_stats_json object per MoE layer, in layer order.
inline std::string moe_layers_json(const std::vector<MoeStats>& layers) {
    std::string s = "[";
    for (size_t l = 0; l < layers.size(); l++) {
        if (l) s += ",";
        s += moe_stats_json(layers[l]);
    }
    return s + "]";
}

namespace report_detail {
inline double number_or_nan(const json::Value* v) {
    return v && v->is_number() ? v->number : NAN;  // null (a non-finite value) and missing -> NaN
}
inline long long integer_or(const json::Value* v, long long fallback = 0) {
    return v && v->is_number() && std::fabs(v->number) < 9e18 ? (long long)v->number : fallback;
}
template <typename T>
inline std::vector<T> number_array(const json::Value* v) {
    std::vector<T> out;
    if (!v || !v->is_array()) return out;
    for (const json::Value& x : v->array) {
        if constexpr (std::is_integral_v<T>) out.push_back((T)integer_or(&x, 0));
        else out.push_back(x.is_number() ? (T)x.number : (T)NAN);
    }
    return out;
}
}  // namespace report_detail

// One moe_stats_json object back into a MoeStats. E comes from the length of tokens_routed; N and
// K are not in the JSON (their product is the sum of tokens_routed) and are left 0; C is derived
// from the all-to-all bytes when there was traffic. False when `v` is not such an object.
inline bool moe_stats_from_json(const json::Value& v, MoeStats& s) {
    using report_detail::integer_or;
    using report_detail::number_array;
    using report_detail::number_or_nan;
    if (!v.is_object() || !v.get("tokens_routed") || !v.get("tokens_routed")->is_array()) return false;
    s = MoeStats{};
    s.tokens_routed = number_array<int>(v.get("tokens_routed"));
    s.tokens_kept = number_array<int>(v.get("tokens_kept"));
    s.E = (int)s.tokens_routed.size();
    s.capacity = (int)integer_or(v.get("capacity"));
    s.dropped_choices = (long)integer_or(v.get("dropped_choices"));
    s.drop_rate = number_or_nan(v.get("drop_rate"));
    s.tokens_all_dropped = (int)integer_or(v.get("tokens_all_dropped"));
    s.load_imbalance = number_or_nan(v.get("load_imbalance"));
    s.load_imbalance_kept = number_or_nan(v.get("load_imbalance_kept"));
    s.router_entropy = number_or_nan(v.get("router_entropy"));
    s.aux = number_or_nan(v.get("aux"));
    s.z = number_or_nan(v.get("z"));
    s.expert_grad_norm = number_array<double>(v.get("expert_grad_norm"));
    if (v.get("coverage") && v.get("coverage")->is_array())  // --routing expert
        moe_stats_set_coverage(s, number_array<int>(v.get("coverage")));
    s.ep_ranks = (int)integer_or(v.get("ep_ranks"), 1);
    s.cross_rank_choices = (long)integer_or(v.get("cross_rank_choices"));
    s.cross_rank_bytes = number_or_nan(v.get("cross_rank_bytes"));
    if (s.cross_rank_choices > 0 && std::isfinite(s.cross_rank_bytes))
        s.C = (int)std::lround(s.cross_rank_bytes / (8.0 * s.cross_rank_choices));
    if (v.get("bias")) moe_stats_set_bias(s, number_array<float>(v.get("bias")));  // --bias-rate
    if (v.get("rerouted_per_round")) {  // --overflow reroute
        s.rerouted_per_round = number_array<int>(v.get("rerouted_per_round"));
        s.rerouted_choices = (long)integer_or(v.get("rerouted_choices"));
    }
    return true;
}

// Choices routed in the step (N*K: every choice picks an expert) and the uniform load N*K/E.
inline long long routed_choices(const MoeStats& s) {
    long long n = 0;
    for (int c : s.tokens_routed) n += c;
    return n;
}
inline double uniform_load(const MoeStats& s) {
    return s.tokens_routed.empty() ? 0.0 : (double)routed_choices(s) / (double)s.tokens_routed.size();
}

// ================================================================================================
// RunHistory: what a run logged, step by step

struct StepRecord {
    long long step = 0;
    double loss = NAN;          // total training loss (CE + aux_coef*aux + z_coef*z) of the step's batch
    double ce = NAN;            // training cross-entropy of the step's batch
    double val_loss = NAN;      // validation cross-entropy (eval steps only)
    double lr = NAN;
    double grad_norm = NAN;     // before clipping
    double tokens_per_s = NAN;  // training throughput since the previous log step
    std::vector<MoeStats> moe;  // one per MoE layer (empty: dense model, or not a log step)
    bool logged() const { return std::isfinite(ce); }
};

struct RunHistory {
    std::vector<StepRecord> records;  // ascending step, at most one per step
    // from the step-0 record of metrics.jsonl (0 / empty when unknown)
    long long params_total = 0, params_active = 0;
    std::vector<int> capacity;  // per MoE layer

    // The record of `step`, created in order when missing.
    StepRecord& at(long long step) {
        auto it = std::lower_bound(records.begin(), records.end(), step,
                                   [](const StepRecord& r, long long s) { return r.step < s; });
        if (it != records.end() && it->step == step) return *it;
        it = records.insert(it, StepRecord{});
        it->step = step;
        return *it;
    }
    const StepRecord* find(long long step) const {
        for (const StepRecord& r : records)
            if (r.step == step) return &r;
        return nullptr;
    }

    // A log step: the training losses, the learning rate, every MoE layer's statistics.
    void log_train(long long step, double ce, double lr, std::vector<MoeStats> moe = {}, double loss = NAN,
                   double grad_norm = NAN, double tokens_per_s = NAN) {
        StepRecord& r = at(step);
        r.ce = ce;
        r.lr = lr;
        r.loss = loss;
        r.grad_norm = grad_norm;
        r.tokens_per_s = tokens_per_s;
        r.moe = std::move(moe);
    }
    void log_val(long long step, double val_loss) { at(step).val_loss = val_loss; }

    // Drops every record after `step` (a resumed run logs them again).
    void truncate_after(long long step) {
        while (!records.empty() && records.back().step > step) records.pop_back();
    }

    int moe_layers() const {
        size_t n = 0;
        for (const StepRecord& r : records) n = std::max(n, r.moe.size());
        return (int)n;
    }
    int experts() const {
        for (const StepRecord& r : records)
            if (!r.moe.empty()) return r.moe[0].E;
        return 0;
    }
    // The last record with MoE statistics (nullptr: none).
    const StepRecord* last_moe() const {
        for (auto it = records.rbegin(); it != records.rend(); ++it)
            if (!it->moe.empty()) return &*it;
        return nullptr;
    }

    // One metrics.jsonl line into the history. The step-0 record (params_total, params_active,
    // capacity) fills the run's sizes. False (with a message) when the line is not a JSON object
    // with a numeric "step"; blank lines are accepted and ignored.
    bool add_metrics_line(const std::string& line, std::string& error) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) return true;
        json::Value v;
        std::string e;
        if (!json::parse(line, v, e)) {
            error = "not JSON: " + e;
            return false;
        }
        const json::Value* step = v.is_object() ? v.get("step") : nullptr;
        if (!step || !step->is_number()) {
            error = "a record without a numeric \"step\"";
            return false;
        }
        using report_detail::number_or_nan;
        const long long s = report_detail::integer_or(step);
        if (s == 0) {
            params_total = report_detail::integer_or(v.get("params_total"), params_total);
            params_active = report_detail::integer_or(v.get("params_active"), params_active);
            if (v.get("capacity")) capacity = report_detail::number_array<int>(v.get("capacity"));
            if (!v.get("ce") && !v.get("val_loss")) return true;  // the sizes only
        }
        StepRecord& r = at(s);
        double ce = number_or_nan(v.get("ce")), loss = number_or_nan(v.get("loss"));
        if (!std::isfinite(ce) && v.get("loss") && !v.get("aux")) ce = loss;  // dense: the loss is the CE
        if (v.get("ce") || v.get("loss")) {
            r.ce = ce;
            r.loss = loss;
        }
        if (v.get("lr")) r.lr = number_or_nan(v.get("lr"));
        if (v.get("grad_norm")) r.grad_norm = number_or_nan(v.get("grad_norm"));
        if (v.get("tokens_per_s")) r.tokens_per_s = number_or_nan(v.get("tokens_per_s"));
        if (v.get("val_loss")) r.val_loss = number_or_nan(v.get("val_loss"));
        if (const json::Value* moe = v.get("moe"); moe && moe->is_array()) {
            r.moe.clear();
            for (const json::Value& layer : moe->array) {
                MoeStats st;
                if (!moe_stats_from_json(layer, st)) {
                    error = "step " + std::to_string(s) + ": a \"moe\" entry is not a layer's statistics";
                    return false;
                }
                r.moe.push_back(std::move(st));
            }
        }
        return true;
    }

    // Rebuilds the history from a metrics.jsonl file (replacing what was there). A torn last line
    // (a run killed mid-write) is skipped; any other bad line fails with its line number.
    bool load_metrics(const std::string& path, std::string& error) {
        *this = RunHistory{};
        FILE* f = fopen(path.c_str(), "rb");
        if (!f) {
            error = "cannot open " + path;
            return false;
        }
        std::vector<std::string> lines(1);
        int c;
        while ((c = fgetc(f)) != EOF) {
            if (c == '\n') lines.emplace_back();
            else lines.back() += (char)c;
        }
        fclose(f);
        const bool torn_tail = !lines.back().empty();  // no newline after the last record
        for (size_t i = 0; i < lines.size(); i++) {
            std::string e;
            if (!add_metrics_line(lines[i], e)) {
                if (torn_tail && i + 1 == lines.size()) break;
                error = path + ":" + std::to_string(i + 1) + ": " + e;
                return false;
            }
        }
        return true;
    }
};

// The log records of the last `tail` fraction of the run, measured in steps between the first and
// the last log record: the stretch the summary averages (one batch is noisy; the final stretch is not).
inline std::vector<const StepRecord*> tail_records(const RunHistory& h, double tail) {
    std::vector<const StepRecord*> logged, out;
    for (const StepRecord& r : h.records)
        if (r.logged()) logged.push_back(&r);
    if (logged.empty()) return out;
    const long long last = logged.back()->step, first = logged.front()->step;
    const double from = last - tail * (double)(last - first);
    for (const StepRecord* r : logged)
        if (r->step >= from) out.push_back(r);
    return out;
}

// Scalars for summary.json, each averaged over the MoE layers and over tail_records(h, tail):
//   drop_rate, tokens_all_dropped (tokens with every choice dropped, per step), load_imbalance
//   (max/mean routed), load_imbalance_kept, router_entropy (nats), router_entropy_ratio
//   (entropy / ln E), aux, z, router_lse_rms (sqrt z: the typical size of logsumexp of the router
//   logits), load_imbalance_max (the largest per-layer imbalance in the tail); the variants'
//   own in the comments below.
// Plus final_train_ce (mean CE over the same tail records). Empty for a history without records.
inline std::vector<std::pair<std::string, double>> summary_metrics(const RunHistory& h, double tail = 0.1) {
    std::vector<std::pair<std::string, double>> out;
    const std::vector<const StepRecord*> logged = tail_records(h, tail);
    if (logged.empty()) return out;
    double ce = 0;
    for (const StepRecord* r : logged) ce += r->ce;
    out.push_back({"final_train_ce", ce / (double)logged.size()});

    double drop = 0, all_dropped = 0, imb = 0, imb_kept = 0, ent = 0, ent_ratio = 0, aux = 0, z = 0, lse = 0,
           imb_max = 0;
    int n = 0, nz = 0;
    for (const StepRecord* r : logged) {
        for (const MoeStats& s : r->moe) {
            drop += s.drop_rate;
            all_dropped += s.tokens_all_dropped;
            imb += s.load_imbalance;
            imb_kept += s.load_imbalance_kept;
            imb_max = std::max(imb_max, s.load_imbalance);
            ent += s.router_entropy;
            ent_ratio += s.E > 1 ? s.router_entropy / std::log((double)s.E) : 0.0;
            if (std::isfinite(s.aux) && std::isfinite(s.z)) {
                aux += s.aux;
                z += s.z;
                lse += std::sqrt(std::max(0.0, s.z));
                nz++;
            }
            n++;
        }
    }
    if (n == 0) return out;
    // expert choice: the mean and the largest number of experts per token, and the share of tokens
    // no expert took (tokens_all_dropped counts those; drop_rate is 0 by construction)
    double ept_mean = 0, ept_max = 0, untaken = 0;
    int n_ec = 0;
    for (const StepRecord* r : logged) {
        for (const MoeStats& s : r->moe)
            if (s.expert_choice && !s.coverage.empty()) {
                long tokens = 0;
                for (int c : s.coverage) tokens += c;
                ept_mean += s.experts_per_token_mean;
                ept_max = std::max(ept_max, (double)s.experts_per_token_max);
                untaken += tokens > 0 ? (double)s.coverage[0] / tokens : 0.0;
                n_ec++;
            }
    }
    if (n_ec > 0) {
        out.push_back({"experts_per_token_mean", ept_mean / n_ec});
        out.push_back({"experts_per_token_max", ept_max});
        out.push_back({"tokens_untaken_rate", untaken / n_ec});
    }
    // --overflow reroute: the share of the choices that rerouting placed (drop_rate is what it could not place)
    double rerouted = 0;
    int n_rr = 0;
    for (const StepRecord* r : logged)
        for (const MoeStats& s : r->moe)
            if (!s.rerouted_per_round.empty()) {
                const long long choices = routed_choices(s);
                rerouted += choices > 0 ? (double)s.rerouted_choices / (double)choices : 0.0;
                n_rr++;
            }
    if (n_rr > 0) out.push_back({"rerouted_rate", rerouted / n_rr});
    out.push_back({"drop_rate", drop / n});
    out.push_back({"tokens_all_dropped", all_dropped / n});
    out.push_back({"load_imbalance", imb / n});
    out.push_back({"load_imbalance_kept", imb_kept / n});
    out.push_back({"load_imbalance_max", imb_max});
    out.push_back({"router_entropy", ent / n});
    out.push_back({"router_entropy_ratio", ent_ratio / n});
    if (nz > 0) {
        out.push_back({"aux", aux / nz});
        out.push_back({"z", z / nz});
        out.push_back({"router_lse_rms", lse / nz});
    }
    // --bias-rate: the selection biases' spread (max - min) at the last log step, mean and largest over layers
    if (const StepRecord* r = h.last_moe(); r && !r->moe.empty() && !r->moe[0].bias.empty()) {
        double range = 0, range_max = 0;
        for (const MoeStats& s : r->moe) range += s.bias_range, range_max = std::max(range_max, s.bias_range);
        out.push_back({"bias_range", range / (double)r->moe.size()});
        out.push_back({"bias_range_max", range_max});
    }
    return out;
}

// Histograms for summary.json, per step, averaged like summary_metrics over the MoE layers and
// tail_records(h, tail); each only when the run logs it:
//   coverage (--routing expert): tokens taken by 0, 1, ..., E experts
//   rerouted_per_round (--overflow reroute): choices placed by rerouting in rounds 1, 2, ..., E-K
inline std::vector<std::pair<std::string, std::vector<double>>> summary_histograms(const RunHistory& h, double tail = 0.1) {
    std::vector<std::pair<std::string, std::vector<double>>> out;
    const std::vector<const StepRecord*> logged = tail_records(h, tail);
    auto mean_over_tail = [&](const std::string& name, std::vector<int> MoeStats::*field) {
        std::vector<double> sum;
        int n = 0;
        for (const StepRecord* r : logged)
            for (const MoeStats& s : r->moe) {
                const std::vector<int>& v = s.*field;
                if (v.empty()) continue;
                if (sum.size() < v.size()) sum.resize(v.size(), 0.0);
                for (size_t i = 0; i < v.size(); i++) sum[i] += v[i];
                n++;
            }
        if (n == 0) return;
        for (double& x : sum) x /= n;
        out.push_back({name, sum});
    };
    mean_over_tail("coverage", &MoeStats::coverage);
    mean_over_tail("rerouted_per_round", &MoeStats::rerouted_per_round);
    return out;
}

// ================================================================================================
// Plots

namespace report_detail {
inline std::string fmt(const char* format, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, format, v);
    return buf;
}
inline std::string layer_name(int l) { return "layer " + std::to_string(l); }
}  // namespace report_detail

// Train CE (line) and validation loss (dots) against the step, log value axis.
inline plot::Figure loss_figure(const RunHistory& h, const std::string& title = "Loss") {
    plot::Series train, val;
    train.name = "train (cross-entropy of the step's batch)";
    train.width = 1.6;
    val.name = "validation";
    val.markers = true;
    val.width = 2.2;
    for (const StepRecord& r : h.records) {
        if (std::isfinite(r.ce)) {
            train.x.push_back((double)r.step);
            train.y.push_back(r.ce);
        }
        if (std::isfinite(r.val_loss)) {
            val.x.push_back((double)r.step);
            val.y.push_back(r.val_loss);
        }
    }
    std::string t = title;
    if (!val.y.empty()) t += " (final validation " + report_detail::fmt("%.4f", val.y.back()) + ")";
    return plot::line_figure(t, "step", "cross-entropy (nats)", {train, val}, true);
}

// Heatmap of tokens routed to each expert (before capacity) per log step, one panel per layer.
inline plot::Figure expert_load_figure(const RunHistory& h) {
    const int L = h.moe_layers(), E = h.experts();
    std::vector<const StepRecord*> cols;
    for (const StepRecord& r : h.records)
        if ((int)r.moe.size() == L && L > 0) cols.push_back(&r);
    std::vector<std::vector<double>> m(L, std::vector<double>((size_t)E * cols.size(), NAN));
    std::vector<double> x;
    for (size_t j = 0; j < cols.size(); j++) {
        x.push_back((double)cols[j]->step);
        for (int l = 0; l < L; l++) {
            const MoeStats& s = cols[j]->moe[l];
            for (int e = 0; e < E && e < (int)s.tokens_routed.size(); e++)
                m[l][(size_t)e * cols.size() + j] = s.tokens_routed[e];
        }
    }
    std::vector<std::string> titles;
    double uniform = cols.empty() ? 0 : uniform_load(cols.back()->moe[0]);
    for (int l = 0; l < L; l++) titles.push_back(report_detail::layer_name(l));
    plot::Figure f = plot::heatmap_figure("Expert load: tokens routed to each expert per log step (before capacity; uniform = " +
                                              report_detail::fmt("%.0f", uniform) + ")",
                                          m, E, (int)cols.size(), x, titles, "step", "expert", "tokens");
    for (auto& ax : f.axes) ax.vmin = 0;
    return f;
}

// Whether any layer of any record has the statistic of a routing variant.
inline bool history_has(const RunHistory& h, bool (*has)(const MoeStats&)) {
    for (const StepRecord& r : h.records)
        for (const MoeStats& s : r.moe)
            if (has(s)) return true;
    return false;
}
inline bool has_bias(const MoeStats& s) { return !s.bias.empty(); }
inline bool has_coverage(const MoeStats& s) { return s.expert_choice && !s.coverage.empty(); }
inline bool has_reroute(const MoeStats& s) { return !s.rerouted_per_round.empty(); }

// The share of the step's tokens that no expert took (expert choice: coverage[0] / N).
inline double untaken_share(const MoeStats& s) {
    long tokens = 0;
    for (int c : s.coverage) tokens += c;
    return tokens > 0 && !s.coverage.empty() ? (double)s.coverage[0] / (double)tokens : 0.0;
}

// Drop rate (%), mean router entropy (with ln E) and load imbalance over time, one series per layer.
// Expert choice drops nothing and is balanced by construction, so there the first panel shows the
// tokens no expert took and the third the most experts on one token. With rerouting the first panel
// adds, dashed, the choices that rerouting placed (the drop rate is what it could not place).
inline plot::Figure drop_entropy_figure(const RunHistory& h) {
    const int L = h.moe_layers(), E = h.experts();
    const bool expert_choice = history_has(h, has_coverage), reroute = history_has(h, has_reroute);
    std::vector<plot::Axes> panels(3);
    panels[0].title = expert_choice ? "tokens no expert took" : reroute ? "drop rate (solid), placed by rerouting (dashed)" : "drop rate";
    panels[0].ylabel = expert_choice ? "coverage[0] / N  (%)" : reroute ? "choices / (N*K)  (%)" : "dropped choices / (N*K)  (%)";
    panels[1].title = "router entropy";
    panels[1].ylabel = "mean H(p) (nats)";
    panels[2].title = expert_choice ? "experts per token: the most on one token" : "load imbalance (before capacity)";
    panels[2].ylabel = expert_choice ? "experts" : "max / mean tokens per expert";
    for (auto& p : panels) p.xlabel = "step";
    for (int l = 0; l < L; l++) {
        plot::Series d, rr, en, im;
        d.name = en.name = im.name = report_detail::layer_name(l);
        rr.name = report_detail::layer_name(l) + ", rerouted";
        d.color = rr.color = en.color = im.color = l;
        rr.dashed = true;
        for (const StepRecord& r : h.records) {
            if ((int)r.moe.size() <= l) continue;
            const MoeStats& s = r.moe[l];
            const double x = (double)r.step;
            d.x.push_back(x);
            d.y.push_back(100.0 * (expert_choice ? untaken_share(s) : s.drop_rate));
            if (has_reroute(s)) {
                const long long choices = routed_choices(s);
                rr.x.push_back(x);
                rr.y.push_back(choices > 0 ? 100.0 * (double)s.rerouted_choices / (double)choices : 0.0);
            }
            en.x.push_back(x);
            en.y.push_back(s.router_entropy);
            im.x.push_back(x);
            im.y.push_back(expert_choice ? (double)s.experts_per_token_max : s.load_imbalance);
        }
        panels[0].series.push_back(d);
        if (reroute) panels[0].series.push_back(rr);
        panels[1].series.push_back(en);
        panels[2].series.push_back(im);
    }
    panels[0].ymin = 0;
    panels[1].ymin = 0;
    if (E > 1) {
        panels[1].hlines.push_back(plot::RefLine{std::log((double)E), "ln " + std::to_string(E) + " (uniform router)",
                                                 plot::rgb(120, 120, 120), true});
        panels[1].ymax = std::log((double)E) * 1.12;
    }
    if (expert_choice) {
        panels[2].ymin = 0;
        if (const StepRecord* r = h.last_moe())
            panels[2].hlines.push_back(plot::RefLine{r->moe[0].experts_per_token_mean, "mean (E*cap/N)", plot::rgb(120, 120, 120), true});
    } else {
        panels[2].hlines.push_back(plot::RefLine{1.0, "1 (balanced)", plot::rgb(120, 120, 120), true});
    }
    return plot::grid_figure("Routing over time", panels, 3, 520, 400);
}

// Per-expert gradient L2 norm over time, one panel per layer (log axis). An expert with no
// gradient at all (no tokens) has norm 0, drawn at the bottom of the axis (a tenth of the smallest
// positive norm) so a dead expert shows instead of vanishing.
inline plot::Figure expert_grad_norm_figure(const RunHistory& h) {
    const int L = h.moe_layers(), E = h.experts();
    double min_pos = INFINITY;
    for (const StepRecord& r : h.records)
        for (const MoeStats& s : r.moe)
            for (double g : s.expert_grad_norm)
                if (g > 0 && std::isfinite(g)) min_pos = std::min(min_pos, g);
    const double floor_value = std::isfinite(min_pos) ? min_pos / 10 : 1e-8;
    bool any_zero = false;
    std::vector<plot::Axes> panels;
    for (int l = 0; l < L; l++) {
        plot::Axes ax;
        ax.title = report_detail::layer_name(l);
        ax.xlabel = "step";
        ax.ylabel = "||grad|| of the expert (4 tensors)";
        ax.log_y = true;
        ax.legend = l == 0 && E <= 10;  // the colours are the same in every panel: one legend is enough
        for (int e = 0; e < E; e++) {
            plot::Series s;
            s.name = "expert " + std::to_string(e);
            s.width = 1.5;
            s.color = e;
            for (const StepRecord& r : h.records) {
                if ((int)r.moe.size() <= l || (int)r.moe[l].expert_grad_norm.size() <= e) continue;
                double g = r.moe[l].expert_grad_norm[e];
                if (g == 0) any_zero = true;
                s.x.push_back((double)r.step);
                s.y.push_back(g > 0 ? g : floor_value);
            }
            ax.series.push_back(std::move(s));
        }
        panels.push_back(std::move(ax));
    }
    std::string title = "Expert gradient norms (before clipping)";
    if (L > 1 && E <= 10) title += ", colours as in the legend of layer 0";
    if (any_zero) title += "; 0 = no tokens, drawn at " + plot::format_number(floor_value, 2 + (int)std::max(0.0, -std::floor(std::log10(floor_value))));
    return plot::grid_figure(title, panels, std::min(L, 2), 720, 500);
}

// Tokens per expert at the last log step: routed (before capacity) and kept (after), one panel per
// layer, the uniform level N*K/E dashed red, the capacity dashed grey when it is near the bars.
inline plot::Figure load_histogram_figure(const RunHistory& h, const std::string& title_prefix = "") {
    const StepRecord* r = h.last_moe();
    std::vector<plot::Axes> panels;
    if (!r) return plot::grid_figure("no MoE statistics", panels, 1);
    for (size_t l = 0; l < r->moe.size(); l++) {
        const MoeStats& s = r->moe[l];
        std::vector<std::string> cats;
        std::vector<double> routed, kept;
        double top = 0;
        for (int e = 0; e < s.E; e++) {
            cats.push_back(std::to_string(e));
            routed.push_back(s.tokens_routed[e]);
            kept.push_back(e < (int)s.tokens_kept.size() ? s.tokens_kept[e] : NAN);
            top = std::max(top, (double)s.tokens_routed[e]);
        }
        const double uniform = uniform_load(s);
        plot::Axes ax = plot::bar_axes(report_detail::layer_name((int)l) + ": capacity " + std::to_string(s.capacity) +
                                           ", drop " + report_detail::fmt("%.1f%%", 100 * s.drop_rate) + ", imbalance " +
                                           report_detail::fmt("%.2f", s.load_imbalance),
                                       cats, routed, "expert", "tokens", uniform,
                                       "uniform N*K/E = " + report_detail::fmt("%.0f", uniform), 0);
        ax.bars[0].name = "routed (before capacity)";
        plot::BarGroup k;
        k.name = "kept (after capacity)";
        k.values = kept;
        k.color = 2;
        ax.bars.push_back(std::move(k));
        if (s.capacity > 0 && s.capacity <= 2.0 * std::max(top, uniform))
            ax.hlines.push_back(plot::RefLine{(double)s.capacity, "capacity " + std::to_string(s.capacity), plot::rgb(90, 90, 90), true});
        panels.push_back(std::move(ax));
    }
    return plot::grid_figure(title_prefix + "Tokens per expert at step " + std::to_string(r->step), panels,
                             std::min<int>(2, (int)panels.size()), 640, 420);
}

// --routing expert: the coverage at the last log step, tokens taken by 0, 1, ..., E experts, one
// panel per layer. Token choice would put every token at K; expert choice spreads them, and the bar
// at 0 is the tokens only the residual stream (and shared experts) carried.
inline plot::Figure coverage_figure(const RunHistory& h) {
    const StepRecord* r = h.last_moe();
    std::vector<plot::Axes> panels;
    if (!r) return plot::grid_figure("no MoE statistics", panels, 1);
    for (size_t l = 0; l < r->moe.size(); l++) {
        const MoeStats& s = r->moe[l];
        std::vector<std::string> cats;
        std::vector<double> tokens;
        for (size_t k = 0; k < s.coverage.size(); k++) {
            cats.push_back(std::to_string(k));
            tokens.push_back(s.coverage[k]);
        }
        panels.push_back(plot::bar_axes(report_detail::layer_name((int)l) + ": untaken " +
                                            report_detail::fmt("%.1f%%", 100 * untaken_share(s)) + ", mean " +
                                            report_detail::fmt("%.2f", s.experts_per_token_mean) + ", max " +
                                            std::to_string(s.experts_per_token_max),
                                        cats, tokens, "experts that took the token", "tokens", NAN, "", 0));
    }
    return plot::grid_figure("Coverage at step " + std::to_string(r->step) + ": tokens taken by 0, 1, ..., E experts", panels,
                             std::min<int>(2, (int)panels.size()), 640, 420);
}

// --bias-rate: each layer's selection bias b_e per expert over time (one panel per layer, a line
// per expert, colours as in expert_grad_norm_figure), with 0 (the start) marked.
inline plot::Figure bias_figure(const RunHistory& h) {
    const int L = h.moe_layers(), E = h.experts();
    std::vector<plot::Axes> panels;
    for (int l = 0; l < L; l++) {
        plot::Axes ax;
        ax.title = report_detail::layer_name(l);
        ax.xlabel = "step";
        ax.ylabel = "selection bias b";
        ax.legend = l == 0 && E <= 10;
        for (int e = 0; e < E; e++) {
            plot::Series s;
            s.name = "expert " + std::to_string(e);
            s.width = 1.5;
            s.color = e;
            for (const StepRecord& r : h.records) {
                if ((int)r.moe.size() <= l || (int)r.moe[l].bias.size() <= e) continue;
                s.x.push_back((double)r.step);
                s.y.push_back(r.moe[l].bias[e]);
            }
            ax.series.push_back(std::move(s));
        }
        ax.hlines.push_back(plot::RefLine{0.0, "0 (start)", plot::rgb(120, 120, 120), true});
        panels.push_back(std::move(ax));
    }
    std::string title = "Selection bias per expert (aux-loss-free balancing: b_i += rate * sign(N*K/E - load_i))";
    if (L > 1 && E <= 10) title += ", colours as in the legend of layer 0";
    return plot::grid_figure(title, panels, std::min(L, 2), 720, 500);
}

// Writes the run's plots into run_dir (see the file comment); a dense history writes loss.png only.
// False (and *error) when a file could not be written; `written` receives the paths that were.
inline bool write_run_plots(const RunHistory& h, const std::string& run_dir, std::string* error = nullptr,
                            std::vector<std::string>* written = nullptr) {
    std::vector<std::pair<std::string, plot::Figure>> figs;
    figs.push_back({"loss.png", loss_figure(h)});
    if (h.moe_layers() > 0 && h.experts() > 0) {
        figs.push_back({"expert_load.png", expert_load_figure(h)});
        figs.push_back({"drop_entropy.png", drop_entropy_figure(h)});
        bool grads = false;
        for (const StepRecord& r : h.records)
            for (const MoeStats& s : r.moe) grads = grads || !s.expert_grad_norm.empty();
        if (grads) figs.push_back({"expert_grad_norms.png", expert_grad_norm_figure(h)});
        figs.push_back({"load_histogram.png", load_histogram_figure(h)});
        if (history_has(h, has_bias)) figs.push_back({"bias.png", bias_figure(h)});
        if (history_has(h, has_coverage)) figs.push_back({"coverage.png", coverage_figure(h)});
    }
    bool ok = true;
    for (const auto& [name, fig] : figs) {
        const std::string path = run_dir + "/" + name;
        if (plot::save_png(fig, path)) {
            if (written) written->push_back(path);
        } else {
            ok = false;
            if (error) *error += (error->empty() ? "" : "; ") + std::string("cannot write ") + path;
        }
    }
    return ok;
}

// ================================================================================================
// Specialisation

// A character made visible: quoted, with \n, \t, \r, \\ and \' escaped and other control or
// non-ASCII bytes as \xNN (' ' shows as ' ').
inline std::string printable_char(unsigned char c) {
    switch (c) {
        case '\n': return "'\\n'";
        case '\t': return "'\\t'";
        case '\r': return "'\\r'";
        case '\\': return "'\\\\'";
        case '\'': return "'\\''";
        default: break;
    }
    if (c < 32 || c >= 127) {
        char buf[16];
        snprintf(buf, sizeof buf, "'\\x%02x'", c);
        return buf;
    }
    return std::string("'") + (char)c + "'";
}

// Domain id of every token of a batch (B windows of T starting at starts[b], absolute positions in
// the text), from the per-character domain ids of the synthetic corpus. Empty when `domains` is.
inline std::vector<int> batch_domains(const std::vector<uint8_t>& domains, const int64_t* starts, int B, int T) {
    std::vector<int> out;
    if (domains.empty()) return out;
    out.resize((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t p = (size_t)starts[b] + (size_t)t;
            out[(size_t)b * T + t] = p < domains.size() ? domains[p] : -1;
        }
    return out;
}

// End-of-run specialisation: which characters (and, on the synthetic corpus, which domains) each
// expert of each layer receives, over the routing of some batches (kept choices only).
class Specialisation {
  public:
    Specialisation(int layers, int experts, std::string vocab, bool with_domains, int domains = 4)
        : L_(layers), E_(experts), vocab_(std::move(vocab)), chars_(layers, experts, (int)vocab_.size()) {
        if (with_domains) tables_.assign(layers, DomainExpertTable(domains, experts));
        tokens_.assign(layers, 0);
    }
    // tokens (N) the token ids fed to the layer's step, domains (N) or nullptr, topk_idx / kept (N,K).
    void add(int layer, const int* tokens, const int* domains, const int* topk_idx, const int* kept, int N, int K) {
        if (layer < 0 || layer >= L_) return;
        chars_.add(layer, tokens, topk_idx, kept, N, K);
        if (domains && !tables_.empty()) tables_[layer].add(domains, topk_idx, kept, N, K);
        tokens_[layer] += N;
    }
    const ExpertCharCounts& chars() const { return chars_; }
    bool has_domains() const { return !tables_.empty(); }
    const DomainExpertTable& domain_table(int layer) const { return tables_[layer]; }
    double mutual_information(int layer) const { return tables_.empty() ? NAN : tables_[layer].mutual_information(); }

    // The report: per layer and expert its share of the kept choices, its `top_n` most frequent
    // characters with the share of the expert's tokens each makes up, and the characters it is most
    // specialised in (highest share of that character's choices in this layer, among characters
    // the layer saw at least 20 times); then, with domains, the domain x expert share table and the
    // mutual information between domain and expert.
    std::string text(int top_n = 8, const std::vector<std::string>& domain_names = {}) const {
        std::string s = "Expert specialisation (kept choices of the routing of " + std::to_string(tokens_.empty() ? 0 : tokens_[0]) +
                        " tokens)\n"
                        "  most often: the expert's most frequent characters, as a share of the expert's choices\n"
                        "  largest share of: the characters of which this expert got the largest share of the layer's choices\n"
                        "  (each token makes K choices, so without drops one expert holds at most 1/K of a character)\n";
        for (int l = 0; l < L_; l++) {
            long long layer_total = 0;
            std::vector<long long> char_total(chars_.vocab(), 0);
            for (int e = 0; e < E_; e++) {
                layer_total += chars_.expert_total(l, e);
                for (int v = 0; v < chars_.vocab(); v++) char_total[v] += chars_.count(l, e, v);
            }
            s += "\nlayer " + std::to_string(l) + "\n";
            for (int e = 0; e < E_; e++) {
                long long total = chars_.expert_total(l, e);
                char head[96];
                snprintf(head, sizeof head, "  expert %2d %6.1f%% of choices | most often:", e,
                         layer_total > 0 ? 100.0 * total / layer_total : 0.0);
                s += head;
                if (total == 0) s += " (no tokens)";
                for (const auto& [v, n] : chars_.top(l, e, top_n)) {
                    char item[48];
                    snprintf(item, sizeof item, " %s %.1f%%", printable_char((unsigned char)vocab_[v]).c_str(),
                             100.0 * (double)n / (double)total);
                    s += item;
                }
                // most specialised: share of the character's choices that came here
                std::vector<std::pair<int, double>> spec;
                for (int v = 0; v < chars_.vocab(); v++)
                    if (char_total[v] >= 20 && chars_.count(l, e, v) > 0)
                        spec.push_back({v, (double)chars_.count(l, e, v) / (double)char_total[v]});
                std::stable_sort(spec.begin(), spec.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
                if (!spec.empty()) {
                    s += "\n             largest share of:";
                    for (size_t i = 0; i < spec.size() && (int)i < std::min(top_n, 6); i++) {
                        char item[48];
                        snprintf(item, sizeof item, " %s %.0f%%", printable_char((unsigned char)vocab_[spec[i].first]).c_str(),
                                 100.0 * spec[i].second);
                        s += item;
                    }
                }
                s += "\n";
            }
            if (!tables_.empty()) {
                const DomainExpertTable& t = tables_[l];
                std::vector<double> sh = t.shares();
                s += "  domain x expert (share of the domain's kept choices routed to each expert):\n";
                s += "    " + std::string(12, ' ');
                for (int e = 0; e < E_; e++) {
                    std::string col = "e" + std::to_string(e);
                    s += std::string(col.size() < 6 ? 6 - col.size() : 0, ' ') + col;
                }
                s += "\n";
                for (int d = 0; d < t.domains(); d++) {
                    std::string name = d < (int)domain_names.size() ? domain_names[d] : synthetic_domain_name(d);
                    char lab[32];
                    snprintf(lab, sizeof lab, "    %-12s", name.c_str());
                    s += lab;
                    for (int e = 0; e < E_; e++) s += report_detail::fmt("%6.2f", sh[(size_t)d * E_ + e]);
                    s += "\n";
                }
                char mi[160];
                snprintf(mi, sizeof mi, "  mutual information I(domain; expert) = %.4f nats (0 = routing ignores the domain, ln %d = %.4f = one expert per domain)\n",
                         t.mutual_information(), t.domains(), std::log((double)t.domains()));
                s += mi;
            }
        }
        return s;
    }

    // {"tokens": N, "layers": [{"mutual_information": x, "domain_expert_share": [[...], ...]}, ...],
    //  "mutual_information_max": ln D}; without domains only "tokens" and per layer the top characters.
    std::string summary_json(int top_n = 5) const {
        std::string j = "{\"tokens\":" + std::to_string(tokens_.empty() ? 0 : tokens_[0]) + ",\"layers\":[";
        for (int l = 0; l < L_; l++) {
            if (l) j += ",";
            j += "{\"top_chars\":[";
            for (int e = 0; e < E_; e++) {
                if (e) j += ",";
                std::string chars;
                for (const auto& [v, n] : chars_.top(l, e, top_n)) chars += vocab_[v];
                j += json::quote(chars);
            }
            j += "]";
            if (!tables_.empty()) {
                j += ",\"mutual_information\":" + json::number(tables_[l].mutual_information());
                j += ",\"domain_expert_share\":[";
                std::vector<double> sh = tables_[l].shares();
                for (int d = 0; d < tables_[l].domains(); d++) {
                    if (d) j += ",";
                    j += "[";
                    for (int e = 0; e < E_; e++) {
                        if (e) j += ",";
                        j += json::number(std::round(sh[(size_t)d * E_ + e] * 1e4) / 1e4);
                    }
                    j += "]";
                }
                j += "]";
            }
            j += "}";
        }
        j += "]";
        if (!tables_.empty()) j += ",\"mutual_information_max\":" + json::number(std::log((double)tables_[0].domains()));
        return j + "}";
    }

  private:
    int L_, E_;
    std::string vocab_;
    ExpertCharCounts chars_;
    std::vector<DomainExpertTable> tables_;
    std::vector<long long> tokens_;
};
