// ablations/ablate.cpp: the MoE ablation study (`make ablate`).
//
// Trains every run of the study with ./train_moe_cpu (one subprocess per run, stdout and stderr
// into ablations/runs/<name>/train.log), then reads each run's summary.json and metrics.jsonl and
// writes ablations/README.md (one table, the comparison plots, and sentences generated from the
// measured numbers) and the plots beside it.
//
// Resumable: a run whose summary.json exists is skipped; a run that was interrupted after a
// checkpoint (model.safetensors but no summary.json) continues with --resume; a run interrupted
// before its first checkpoint starts again. So an interrupted sweep continues where it stopped.
// A run directory that holds a run of another configuration is an error (delete it, or use
// another --runs-dir).
//
// Runs share the experiments: e.g. the top-2 baseline is the "aux on, noise on, z-loss on,
// capacity 1.25, no shared expert" point of every experiment, and "top-2, noise off" is both the
// aux-on side of the aux experiment and the noise-off side of the noise experiment. The routing
// variants reuse them the same way: cf1.0 is token choice beside expert choice and the dropping side
// at capacity 1.0, aux-off and noise-off are "none" and "aux loss" of the balancing experiment, top1
// and top2 the E = 8 points of the E x K surface.
//
//   ablate [--steps N] [--jobs J] [--runs-dir DIR] [--out-dir DIR] [--trainer PATH] [--data PATH]
//          [--only a,b,...] [--report-only] [--dry-run]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ablations/study.h"
#include "run/plot.h"
#include "run/report.h"
#include "run/safetensors.h"

extern char** environ;

namespace {

// ------------------------------------------------------------------------------------------------
// The study (the runs: study.h)

struct Experiment {
    std::string key, title;
    std::vector<std::string> runs;
    std::map<std::string, std::string> alias;  // legend names of runs in this experiment's plots
    std::string name_of(const std::string& run) const {
        auto it = alias.find(run);
        return it == alias.end() ? run : it->second;
    }
};

std::vector<Experiment> experiments() {
    return {{"dense_vs_moe", "Dense versus MoE", {"dense-active", "top1", "top2", "dense-total"}, {}},
            {"aux", "Load-balancing loss off versus on (router noise off in both)", {"aux-off", "noise-off"},
             {{"aux-off", "aux off (aux-off)"}, {"noise-off", "aux on (noise-off)"}}},
            {"capacity", "Capacity factor", {"cf0.5", "cf1.0", "top2", "cf2.0", "cf-unlimited"},
             {{"top2", "cf" + trainer_default("capacity-factor") + " (top2)"}}},
            {"shared", "Shared expert versus none, at equal active compute", {"top2", "shared"}, {}},
            {"noise", "Router noise on versus off", {"top2", "noise-off"}, {{"top2", "noise on (top2)"}, {"noise-off", "noise off (noise-off)"}}},
            {"zloss", "Router z-loss on versus off", {"top2", "z-off"}, {{"top2", "z-loss on (top2)"}, {"z-off", "z-loss off (z-off)"}}},
            // the routing variants (docs/model.md, 31)
            {"routing", "Token choice versus expert choice, at equal capacity and active compute", {"cf1.0", "ec-cf1.0"},
             {{"cf1.0", "token choice (cf1.0)"}, {"ec-cf1.0", "expert choice (ec-cf1.0)"}}},
            {"balancing", "Load balancing: none, aux loss, bias, both (router noise off in all four)", {"aux-off", "noise-off", "bias", "aux-bias"},
             {{"aux-off", "none (aux-off)"}, {"noise-off", "aux loss (noise-off)"}, {"bias", "bias (bias)"}, {"aux-bias", "aux loss + bias (aux-bias)"}}},
            {"gate", "Softmax versus sigmoid scores (both with bias balancing)", {"bias", "sigmoid-bias"},
             {{"bias", "softmax (bias)"}, {"sigmoid-bias", "sigmoid (sigmoid-bias)"}}},
            {"overflow", "Dropping versus rerouting the overflow, at capacity factors 1.0 and 0.5", {"cf1.0", "reroute-cf1.0", "cf0.5", "reroute-cf0.5"},
             {{"cf1.0", "drop, cf 1.0 (cf1.0)"}, {"reroute-cf1.0", "reroute, cf 1.0 (reroute-cf1.0)"}, {"cf0.5", "drop, cf 0.5 (cf0.5)"},
              {"reroute-cf0.5", "reroute, cf 0.5 (reroute-cf0.5)"}}},
            {"entropy", "Router entropy bonus, positive and negative", {"entropy-neg", "top2", "entropy-pos"},
             {{"entropy-neg", "negative (entropy-neg)"}, {"top2", "none (top2)"}, {"entropy-pos", "positive (entropy-pos)"}}},
            {"ek", "Experts E by top-K, at fixed expert width", {"E4-top1", "top1", "E16-top1", "E4-top2", "top2", "E16-top2"},
             {{"top1", "E8-top1 (top1)"}, {"top2", "E8-top2 (top2)"}}},
            {"specialisation", "Balancing strength against specialisation (synthetic data)", {"syn-aux0", "syn-aux0.001", "syn-aux0.01", "syn-aux0.1"},
             {{"syn-aux0", "aux 0"}, {"syn-aux0.001", "aux 0.001"}, {"syn-aux0.01", "aux 0.01"}, {"syn-aux0.1", "aux 0.1"}}}};
}

// ------------------------------------------------------------------------------------------------
// Small helpers

std::string read_file(const std::string& path, bool* ok = nullptr) {
    FILE* f = fopen(path.c_str(), "rb");
    if (ok) *ok = f != nullptr;
    if (!f) return "";
    std::string s;
    char buf[1 << 15];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

bool write_file(const std::string& path, const std::string& text) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
    ok = fclose(f) == 0 && ok;
    return ok && rename(tmp.c_str(), path.c_str()) == 0;
}

bool exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

std::string fmt(const char* f, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string human_count(double n) {
    if (n >= 1e6) return fmt("%.2fM", n / 1e6);
    if (n >= 1e3) return fmt("%.1fK", n / 1e3);
    return fmt("%.0f", n);
}

std::string human_duration(double seconds) {
    long s = (long)(seconds + 0.5);
    char buf[32];
    if (s >= 3600) snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, sizeof buf, "%lds", s);
    return buf;
}

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string tail_lines(const std::string& text, int n) {
    size_t pos = text.size();
    for (int i = 0; i <= n && pos != std::string::npos && pos > 0; i++) pos = text.rfind('\n', pos - 1);
    return pos == std::string::npos ? text : text.substr(pos + 1);
}

// Two flag values agree: the same text, or the same number (the trainer stores "0.001" for "1e-3").
bool same_value(const std::string& a, const std::string& b) {
    if (a == b) return true;
    char *ea = nullptr, *eb = nullptr;
    double x = strtod(a.c_str(), &ea), y = strtod(b.c_str(), &eb);
    if (ea == a.c_str() || eb == b.c_str() || *ea || *eb) return false;
    return std::fabs(x - y) <= 1e-6 * std::max(1.0, std::fabs(x));
}

// ------------------------------------------------------------------------------------------------
// Running

enum class RunState { Done, Resume, Fresh };

// One line per trainer invocation of a run: "<cpu seconds> <wall seconds>" (written by ablate).
constexpr const char* kCpuFile = "ablate_time.txt";
double g_invocation_cpu = 0;  // CPU seconds of the trainer processes this invocation started
// One line per invocation of ablate that trained runs: "<unix time> <runs trained> <wall seconds> <cpu seconds>".
constexpr const char* kSweepFile = "sweep_history.txt";

struct RunPlan {
    const RunSpec* spec;
    std::string dir;
    std::map<std::string, std::string> flags;
    RunState state;
    long long resume_step = 0;
};

// What to do with a run directory; false (and a message) when it holds another configuration.
bool plan_run(const Sweep& s, const RunSpec& spec, RunPlan& plan, std::string& error) {
    plan.spec = &spec;
    plan.dir = s.runs_dir + "/" + spec.name;
    plan.flags = run_flags(s, spec);
    const std::string summary = plan.dir + "/summary.json", model = plan.dir + "/model.safetensors";
    std::map<std::string, std::string> stored;
    if (exists(summary)) {
        json::Value v;
        std::string e;
        if (!json::parse(read_file(summary), v, e) || !v.get("config") || !v.get("config")->is_object()) {
            error = summary + ": not a run summary (" + e + ")";
            return false;
        }
        for (const auto& [k, val] : v.get("config")->object) stored[k] = val.text;
        plan.state = RunState::Done;
    } else if (exists(model)) {
        safetensors::File f;
        std::string e;
        if (!safetensors::read(model, f, e)) {
            error = model + ": " + e;
            return false;
        }
        stored = f.metadata;
        plan.state = RunState::Resume;
        const std::string* step = f.meta("step");
        plan.resume_step = step ? atoll(step->c_str()) : 0;
    } else {
        plan.state = RunState::Fresh;
        return true;
    }
    for (const auto& [k, v] : plan.flags) {
        // the data is checked by the trainer (by content); the others do not change the numbers
        if (k == "data" || k == "checkpoint-every" || k == "sample-every" || k == "sample-len") continue;
        auto it = stored.find(k);
        if (it == stored.end() || !same_value(it->second, v)) {
            error = plan.dir + " holds a run with --" + k + " " + (it == stored.end() ? "(none)" : it->second) +
                    ", this sweep wants " + v + ": delete the directory (or choose another --runs-dir)";
            return false;
        }
    }
    return true;
}

std::vector<std::string> trainer_args(const Sweep& s, const RunPlan& p, bool resume) {
    std::vector<std::string> a = {s.trainer, "--out", p.dir};
    if (resume) a.insert(a.end(), {"--resume", p.dir + "/model.safetensors"});
    for (const auto& [k, v] : p.flags) a.insert(a.end(), {"--" + k, v});
    return a;
}

std::string command_line(const std::vector<std::string>& args) {
    std::string s;
    for (const auto& a : args) s += (s.empty() ? "" : " ") + a;
    return s;
}

// Starts the trainer with stdout and stderr appended to <dir>/train.log. Returns the pid (or -1).
pid_t spawn_run(const std::vector<std::string>& args, const std::string& log, const std::vector<std::string>& env_extra) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> env_store;
    for (char** e = environ; *e; e++) {
        std::string kv = *e;
        bool overridden = false;
        for (const auto& x : env_extra) overridden = overridden || kv.compare(0, x.find('=') + 1, x, 0, x.find('=') + 1) == 0;
        if (!overridden) env_store.push_back(kv);
    }
    for (const auto& x : env_extra) env_store.push_back(x);
    std::vector<char*> envp;
    for (auto& e : env_store) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0 ? pid : -1;
}

// Runs every plan that is not done, at most s.jobs at a time, longest first. Returns the names that failed.
std::vector<std::string> run_all(const Sweep& s, std::vector<RunPlan>& plans) {
    std::vector<RunPlan*> todo;
    for (auto& p : plans)
        if (p.state != RunState::Done) todo.push_back(&p);
    std::stable_sort(todo.begin(), todo.end(), [](const RunPlan* a, const RunPlan* b) { return a->spec->cost > b->spec->cost; });
    std::vector<std::string> failed;
    if (todo.empty()) return failed;

    // Two runs at once on two cores: one SIMT worker and one OpenBLAS thread each (unless set).
    const int cores = std::max(1u, std::thread::hardware_concurrency());
    const int per_run = std::max(1, cores / std::max(1, s.jobs));
    std::vector<std::string> env;
    if (!getenv("SIMT_THREADS")) env.push_back("SIMT_THREADS=" + std::to_string(per_run));
    if (!getenv("OPENBLAS_NUM_THREADS")) env.push_back("OPENBLAS_NUM_THREADS=" + std::to_string(per_run));

    struct Active {
        RunPlan* plan;
        double start;
        bool resumed;
    };
    std::map<pid_t, Active> active;
    size_t next = 0, finished = 0;
    std::set<RunPlan*> retried;
    const double t0 = now_seconds();
    auto start = [&](RunPlan* p, bool resume) {
        std::vector<std::string> args = trainer_args(s, *p, resume);
        std::error_code ec;
        std::filesystem::create_directories(p->dir, ec);
        const std::string log = p->dir + "/train.log";
        FILE* f = fopen(log.c_str(), "a");
        if (f) {
            fprintf(f, "### %s\n", command_line(args).c_str());
            fclose(f);
        }
        pid_t pid = spawn_run(args, log, env);
        if (pid < 0) {
            fprintf(stderr, "ablate: cannot start %s: %s\n", s.trainer.c_str(), strerror(errno));
            failed.push_back(p->spec->name);
            finished++;
            return;
        }
        active[pid] = {p, now_seconds(), resume};
        printf("[%s] start  %-13s %s\n", human_duration(now_seconds() - t0).c_str(), p->spec->name.c_str(),
               resume ? ("(resuming at step " + std::to_string(p->resume_step) + ")").c_str() : "");
        fflush(stdout);
    };
    while (finished < todo.size()) {
        while ((int)active.size() < std::max(1, s.jobs) && next < todo.size()) {
            RunPlan* p = todo[next++];
            if (p->state == RunState::Fresh) {  // a run killed before its first checkpoint starts again
                std::error_code ec;
                std::filesystem::remove_all(p->dir, ec);
            }
            start(p, p->state == RunState::Resume);
        }
        if (active.empty()) break;
        int status = 0;
        struct rusage ru {};
        pid_t pid = wait4(-1, &status, 0, &ru);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        auto it = active.find(pid);
        if (it == active.end()) continue;
        Active a = it->second;
        active.erase(it);
        {  // the CPU time of this invocation of the trainer (the machine may be shared: wall time alone says little)
            const double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
            g_invocation_cpu += cpu;
            if (FILE* f = fopen((a.plan->dir + "/" + kCpuFile).c_str(), "a")) {
                fprintf(f, "%.3f %.3f\n", cpu, now_seconds() - a.start);
                fclose(f);
            }
        }
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && exists(a.plan->dir + "/summary.json");
        if (!ok && a.resumed && !retried.count(a.plan)) {
            // e.g. killed after the final checkpoint but before the summary: the trainer refuses to
            // resume a complete run, so that run starts again from scratch.
            printf("[%s] resume of %s failed (log: %s/train.log); starting it again from scratch\n",
                   human_duration(now_seconds() - t0).c_str(), a.plan->spec->name.c_str(), a.plan->dir.c_str());
            retried.insert(a.plan);
            std::error_code ec;
            std::filesystem::remove_all(a.plan->dir, ec);
            start(a.plan, false);
            continue;
        }
        finished++;
        if (ok) {
            printf("[%s] done   %-13s in %s (%zu of %zu)\n", human_duration(now_seconds() - t0).c_str(),
                   a.plan->spec->name.c_str(), human_duration(now_seconds() - a.start).c_str(), finished, todo.size());
        } else {
            failed.push_back(a.plan->spec->name);
            printf("[%s] FAILED %s (%s %d); the end of %s/train.log:\n%s\n", human_duration(now_seconds() - t0).c_str(),
                   a.plan->spec->name.c_str(), WIFEXITED(status) ? "exit status" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), a.plan->dir.c_str(),
                   tail_lines(read_file(a.plan->dir + "/train.log"), 15).c_str());
        }
        fflush(stdout);
    }
    return failed;
}

// ------------------------------------------------------------------------------------------------
// Results

struct Result {
    const RunSpec* spec = nullptr;
    bool ok = false;
    RunHistory h;
    std::map<std::string, double> m;  // summary_metrics over the last 10% of the log steps
    double val = NAN, best_val = NAN, tokens_per_s = NAN, wall = NAN, train_seconds = NAN;
    double cpu_seconds = NAN, run_wall = NAN;  // summed over the run's trainer invocations (ablate_time.txt)
    long long params_total = 0, params_active = 0;
    bool moe = false;
    int E = 0;
    double max_grad_norm = NAN;  // largest pre-clip gradient norm after warmup
    std::vector<std::vector<double>> tail_load;  // per layer, tokens routed per expert, mean over the tail
    std::vector<double> tail_imbalance;          // per layer, load imbalance, mean over the tail
    int starved = 0;  // experts (all layers) whose tail load is below a tenth of the uniform load
    double tokens_per_cpu_s = NAN;  // tokens trained / CPU seconds of the trainer processes (eval and sampling included)
    long long steps = 0;            // the run's own (the synthetic-data runs train fewer)
    // tokens per step taken by 0, 1, 2, ... experts, mean over the layers and the tail: expert choice's
    // coverage, and for token choice with K <= 2 the same count from the kept choices (empty otherwise)
    std::vector<double> coverage;
    std::vector<double> rerouted_per_round;  // --overflow reroute: choices per step placed in each round
    int log_steps = 0, rerouted_log_steps = 0;  // log records with MoE statistics; those where rerouting placed any choice
    long long rerouted_last_step = 0;            // the last of them
    double bias_mean_end = NAN;                  // --bias-rate: the mean of b over the experts and layers at the last log step
    std::vector<double> mutual_information;  // --data synthetic: I(domain; expert) per layer (specialisation)
    // tokens per CPU-second when the CPU time is known (steady on a shared machine), else the trainer's tokens/s
    double throughput() const { return std::isfinite(tokens_per_cpu_s) ? tokens_per_cpu_s : tokens_per_s; }
    double get(const std::string& k) const {
        auto it = m.find(k);
        return it == m.end() ? NAN : it->second;
    }
};

constexpr double kTail = 0.1;

// Token choice's coverage, tokens per step whose kept choices went to 0, 1, ..., K experts (mean
// over the layers and the tail), for K <= 2, where the counts fix it: the tokens that lost every
// choice are counted, and the kept choices add up to n1 + 2*n2. Empty for K > 2.
std::vector<double> token_choice_coverage(const RunHistory& h, int N) {
    std::vector<double> cov;
    int n = 0;
    for (const StepRecord* r : tail_records(h, kTail))
        for (const MoeStats& st : r->moe) {
            const long long choices = routed_choices(st), K = N > 0 ? choices / N : 0;
            if (K < 1 || K > 2 || K * N != choices) return {};
            long long kept = 0;
            for (int c : st.tokens_kept) kept += c;
            const double n0 = st.tokens_all_dropped, n2 = K == 2 ? (double)kept - (N - n0) : 0.0;
            const std::vector<double> counts = K == 2 ? std::vector<double>{n0, N - n0 - n2, n2} : std::vector<double>{n0, N - n0};
            if (cov.size() < counts.size()) cov.resize(counts.size(), 0.0);
            for (size_t i = 0; i < counts.size(); i++) cov[i] += counts[i];
            n++;
        }
    for (double& x : cov) x /= std::max(1, n);
    return cov;
}

Result load_result(const Sweep& s, const RunSpec& spec) {
    Result r;
    r.spec = &spec;
    const std::string dir = s.runs_dir + "/" + spec.name;
    bool have = false;
    std::string text = read_file(dir + "/summary.json", &have);
    json::Value v;
    std::string e;
    if (!have || !json::parse(text, v, e)) return r;
    auto num = [&](const char* k) {
        const json::Value* x = v.get(k);
        return x && x->is_number() ? x->number : NAN;
    };
    r.val = num("final_val_loss");
    r.best_val = num("best_val_loss");
    r.tokens_per_s = num("tokens_per_s");
    r.wall = num("wall_seconds");
    r.train_seconds = num("train_seconds");
    r.params_total = (long long)(std::isfinite(num("params_total")) ? num("params_total") : 0);
    r.params_active = (long long)(std::isfinite(num("params_active")) ? num("params_active") : 0);
    r.steps = (long long)(std::isfinite(num("steps")) ? num("steps") : s.steps);
    if (const json::Value* sp = v.get("specialisation"); sp && sp->get("layers") && sp->get("layers")->is_array())
        for (const json::Value& layer : sp->get("layers")->array)
            if (const json::Value* mi = layer.get("mutual_information"); mi && mi->is_number()) r.mutual_information.push_back(mi->number);
    bool timed = false;
    std::string times = read_file(dir + "/" + kCpuFile, &timed);
    if (timed) {
        r.cpu_seconds = r.run_wall = 0;
        double c = 0, w = 0;
        for (const char* p = times.c_str(); sscanf(p, "%lf %lf", &c, &w) == 2;) {
            r.cpu_seconds += c;
            r.run_wall += w;
            p = strchr(p, '\n');
            if (!p) break;
            p++;
        }
    }
    if (!r.h.load_metrics(dir + "/metrics.jsonl", e)) {
        fprintf(stderr, "ablate: %s\n", e.c_str());
        return r;
    }
    if (r.params_total == 0) r.params_total = r.h.params_total;
    if (r.params_active == 0) r.params_active = r.h.params_active;
    for (const auto& [k, x] : summary_metrics(r.h, kTail)) r.m[k] = x;
    if (r.cpu_seconds > 0) r.tokens_per_cpu_s = (double)r.steps * s.batch * s.block / r.cpu_seconds;
    r.moe = r.h.moe_layers() > 0;
    r.E = r.h.experts();
    for (const auto& [k, x] : summary_histograms(r.h, kTail)) {
        if (k == "coverage") r.coverage = x;
        if (k == "rerouted_per_round") r.rerouted_per_round = x;
    }
    if (r.moe && r.coverage.empty()) r.coverage = token_choice_coverage(r.h, s.batch * s.block);
    for (const StepRecord& rec : r.h.records) {
        if (rec.moe.empty()) continue;
        r.log_steps++;
        long placed = 0;
        for (const MoeStats& st : rec.moe) placed += st.rerouted_choices;
        if (placed > 0) r.rerouted_log_steps++, r.rerouted_last_step = rec.step;
    }
    if (const StepRecord* last = r.h.last_moe(); last && !last->moe[0].bias.empty()) {
        double sum = 0;
        int n = 0;
        for (const MoeStats& st : last->moe)
            for (float b : st.bias) sum += b, n++;
        r.bias_mean_end = sum / n;
    }
    // tail loads, starved experts, the largest gradient norm after warmup
    long long last = r.h.records.empty() ? 0 : r.h.records.back().step;
    const double from = last * (1 - kTail);
    const int L = r.h.moe_layers();
    r.tail_load.assign(L, std::vector<double>(r.E, 0.0));
    r.tail_imbalance.assign(L, 0.0);
    int n = 0;
    for (const StepRecord& rec : r.h.records) {
        if (rec.step > s.warmup && std::isfinite(rec.grad_norm))
            r.max_grad_norm = std::isfinite(r.max_grad_norm) ? std::max(r.max_grad_norm, rec.grad_norm) : rec.grad_norm;
        if (rec.step < from || (int)rec.moe.size() != L || L == 0) continue;
        for (int l = 0; l < L; l++)
            for (int x = 0; x < r.E && x < (int)rec.moe[l].tokens_routed.size(); x++) r.tail_load[l][x] += rec.moe[l].tokens_routed[x];
        n++;
    }
    {  // per layer over the records summary_metrics averages, so that the layers' mean is its load_imbalance
        const std::vector<const StepRecord*> tail = tail_records(r.h, kTail);
        for (const StepRecord* rec : tail)
            for (int l = 0; l < L && l < (int)rec->moe.size(); l++) r.tail_imbalance[l] += rec->moe[l].load_imbalance / (double)tail.size();
    }
    for (auto& layer : r.tail_load) {
        double total = 0;
        for (double& x : layer) total += x /= std::max(1, n);
        for (double x : layer) r.starved += x < 0.1 * total / std::max(1, r.E);
    }
    r.ok = std::isfinite(r.val);
    return r;
}

// ------------------------------------------------------------------------------------------------
// Plots

// Centered moving average over +-w records (train CE of one batch is noisy).
std::pair<std::vector<double>, std::vector<double>> smoothed_ce(const RunHistory& h, int w = 5) {
    std::vector<double> xs, ys, out_x, out_y;
    for (const StepRecord& r : h.records)
        if (std::isfinite(r.ce)) {
            xs.push_back((double)r.step);
            ys.push_back(r.ce);
        }
    for (size_t i = 0; i < xs.size(); i++) {
        size_t a = i >= (size_t)w ? i - w : 0, b = std::min(xs.size() - 1, i + w);
        double sum = 0;
        for (size_t j = a; j <= b; j++) sum += ys[j];
        out_x.push_back(xs[i]);
        out_y.push_back(sum / (double)(b - a + 1));
    }
    return {out_x, out_y};
}

plot::Figure loss_overlay(const std::string& title, const std::vector<const Result*>& runs, const std::vector<std::string>& names,
                          int log_every) {
    std::vector<plot::Axes> panels(2);
    panels[0].title = "train cross-entropy (moving average over " + std::to_string(11 * log_every) + " steps)";
    panels[1].title = "validation loss";
    for (auto& p : panels) {
        p.xlabel = "step";
        p.ylabel = "cross-entropy (nats)";
        p.log_y = true;
    }
    double vmin = INFINITY, tmin = INFINITY;
    for (size_t i = 0; i < runs.size(); i++) {
        const Result& r = *runs[i];
        plot::Series t, v;
        t.name = v.name = names[i];
        t.color = v.color = (int)i;
        t.width = 1.8;
        v.markers = true;
        auto [x, y] = smoothed_ce(r.h);
        t.x = x;
        t.y = y;
        for (double q : y) tmin = std::min(tmin, q);
        for (const StepRecord& rec : r.h.records)
            if (std::isfinite(rec.val_loss)) {
                v.x.push_back((double)rec.step);
                v.y.push_back(rec.val_loss);
                vmin = std::min(vmin, rec.val_loss);
            }
        panels[0].series.push_back(std::move(t));
        panels[1].series.push_back(std::move(v));
    }
    // the interesting part is the end: clip the start of the curves (loss ~4.2 at step 0)
    if (std::isfinite(tmin)) {
        panels[0].ymin = tmin * 0.97;
        panels[0].ymax = tmin + 1.2;
    }
    if (std::isfinite(vmin)) {
        panels[1].ymin = vmin * 0.97;
        panels[1].ymax = vmin + 1.2;
    }
    return plot::grid_figure(title, panels, 2, 700, 460);
}

// Tokens routed per expert (mean over the last 10% of the log steps): one panel per layer and run.
plot::Figure load_histograms(const std::string& title, const std::vector<const Result*>& runs, const std::vector<std::string>& names) {
    std::vector<plot::Axes> panels;
    int L = 0;
    for (const Result* r : runs) L = std::max(L, (int)r->tail_load.size());
    for (int l = 0; l < L; l++)
        for (size_t i = 0; i < runs.size(); i++) {
            const Result& r = *runs[i];
            if (l >= (int)r.tail_load.size()) continue;
            std::vector<std::string> cats;
            double total = 0;
            for (int e = 0; e < r.E; e++) cats.push_back(std::to_string(e)), total += r.tail_load[l][e];
            const double uniform = total / std::max(1, r.E);
            double mx = 0;
            for (double x : r.tail_load[l]) mx = std::max(mx, x);
            plot::Axes ax = plot::bar_axes(names[i] + ", layer " + std::to_string(l) + ": max/mean " + fmt("%.2f", mx / uniform),
                                           cats, r.tail_load[l], "expert", "tokens routed per step", uniform,
                                           "uniform N*K/E = " + fmt("%.0f", uniform), (int)i);
            panels.push_back(std::move(ax));
        }
    // the same value axis for every panel
    double top = 0;
    for (const auto& p : panels)
        for (double x : p.bars[0].values) top = std::max(top, x);
    for (auto& p : panels) p.ymax = top * 1.25;
    return plot::grid_figure(title, panels, (int)runs.size(), 560, 360);
}

// One metric over time for several runs: of MoE layer `layer`, or the mean of the layers (layer < 0);
// smooth > 0 draws the centred moving average over +-smooth log records (several noisy runs overlap).
plot::Axes metric_over_time(const std::string& title, const std::string& ylabel, const std::vector<const Result*>& runs,
                            const std::vector<std::string>& names, double (*metric)(const MoeStats&), int layer, int smooth = 0) {
    plot::Axes ax;
    ax.title = title;
    ax.xlabel = "step";
    ax.ylabel = ylabel;
    for (size_t i = 0; i < runs.size(); i++) {
        const Result& r = *runs[i];
        const int L = r.h.moe_layers();
        plot::Series sr;
        sr.name = names[i];
        sr.color = (int)i;
        sr.width = 1.6;
        for (const StepRecord& rec : r.h.records) {
            if ((int)rec.moe.size() != L || L == 0 || layer >= L) continue;
            double y = 0;
            if (layer < 0) {
                for (const MoeStats& st : rec.moe) y += metric(st) / L;
            } else {
                y = metric(rec.moe[layer]);
            }
            sr.x.push_back((double)rec.step);
            sr.y.push_back(y);
        }
        if (smooth > 0) {
            std::vector<double> avg(sr.y.size());
            for (size_t j = 0; j < sr.y.size(); j++) {
                const size_t a = j >= (size_t)smooth ? j - smooth : 0, b = std::min(sr.y.size() - 1, j + smooth);
                double sum = 0;
                for (size_t q = a; q <= b; q++) sum += sr.y[q];
                avg[j] = sum / (double)(b - a + 1);
            }
            sr.y = std::move(avg);
        }
        ax.series.push_back(std::move(sr));
    }
    return ax;
}

plot::Figure capacity_figure(const std::vector<const Result*>& runs, const std::vector<std::string>& cf_labels) {
    std::vector<plot::Axes> panels;
    std::vector<double> drop, val;
    for (const Result* r : runs) {
        drop.push_back(100.0 * r->get("drop_rate"));
        val.push_back(r->val);
    }
    panels.push_back(plot::bar_axes("drop rate (mean of the last 10% of steps)", cf_labels, drop, "capacity factor",
                                    "dropped choices (%)", NAN, "", 3));
    plot::Axes v = plot::bar_axes("final validation loss", cf_labels, val, "capacity factor", "cross-entropy (nats)", NAN, "", 0);
    double lo = INFINITY, hi = -INFINITY;
    for (double x : val)
        if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
    if (std::isfinite(lo)) {
        double pad = std::max(0.01, (hi - lo) * 0.6);
        v.ymin = lo - pad;
        v.ymax = hi + pad * 0.6;
    }
    panels.push_back(std::move(v));
    return plot::grid_figure("Capacity factor: drop rate and validation loss", panels, 2, 560, 400);
}

// Share of the tokens taken by 0, 1, 2, ... experts (Result::coverage, mean of the layers and the tail):
// grouped bars, one group per run, on a linear and on a log axis (the long tail of expert choice).
plot::Figure coverage_compare_figure(const std::vector<const Result*>& runs, const std::vector<std::string>& names) {
    size_t width = 0;
    for (const Result* r : runs) width = std::max(width, r->coverage.size());
    std::vector<std::string> cats;
    for (size_t k = 0; k < width; k++) cats.push_back(std::to_string(k));
    std::vector<plot::Axes> panels(2);
    for (int p = 0; p < 2; p++) {
        plot::Axes& ax = panels[p];
        ax.title = p == 0 ? "share of the tokens" : "the same, log axis";
        ax.xlabel = "experts that took the token";
        ax.ylabel = "tokens (%)";
        ax.categories = cats;
        ax.log_y = p == 1;
        for (size_t i = 0; i < runs.size(); i++) {
            double total = 0;
            for (double x : runs[i]->coverage) total += x;
            plot::BarGroup g;
            g.name = names[i];
            g.color = (int)i;
            for (size_t k = 0; k < width; k++)
                g.values.push_back(k < runs[i]->coverage.size() && total > 0 ? 100.0 * runs[i]->coverage[k] / total : 0.0);
            ax.bars.push_back(std::move(g));
        }
    }
    panels[0].ymin = 0;
    return plot::grid_figure("Coverage: how many experts took each token (mean of the layers and of the last 10% of steps)", panels, 2, 640, 420);
}

// Each bias run's selection bias per expert over time (report.h's bias.png of the run), all in one figure.
plot::Figure bias_trajectories_figure(const std::vector<const Result*>& runs, const std::vector<std::string>& names) {
    std::vector<plot::Axes> panels;
    int L = 1;
    for (size_t i = 0; i < runs.size(); i++) {
        plot::Figure f = bias_figure(runs[i]->h);
        L = std::max(L, (int)f.axes.size());
        for (plot::Axes& ax : f.axes) {
            ax.title = names[i] + ", " + ax.title;
            ax.legend = panels.empty() && runs[i]->E <= 10;
            panels.push_back(std::move(ax));
        }
    }
    return plot::grid_figure("Selection bias per expert over time (b_i += rate * sign(N*K/E - load_i)); colours as in the first legend",
                             panels, L, 640, 380);
}

// Drop versus reroute: what happened to the choices, the rounds that placed them, the validation loss.
plot::Figure overflow_figure(const std::vector<const Result*>& runs, const std::vector<std::string>& labels, int N) {
    std::vector<plot::Axes> panels;
    plot::Axes fate;
    fate.title = "choices dropped and rerouted; tokens with every choice dropped";
    fate.xlabel = "run";
    fate.ylabel = "% (of N*K choices, of N tokens)";
    fate.categories = labels;
    plot::BarGroup dropped{"dropped choices", {}, 3}, rerouted{"choices placed by rerouting", {}, 2}, lost{"tokens that lost every choice", {}, 1};
    for (const Result* r : runs) {
        dropped.values.push_back(100 * r->get("drop_rate"));
        rerouted.values.push_back(std::isfinite(r->get("rerouted_rate")) ? 100 * r->get("rerouted_rate") : 0.0);
        lost.values.push_back(100 * r->get("tokens_all_dropped") / N);
    }
    fate.bars = {dropped, rerouted, lost};
    fate.ymin = 0;
    panels.push_back(std::move(fate));
    plot::Axes rounds;
    rounds.title = "choices placed in each rerouting round, per step";
    rounds.xlabel = "round";
    rounds.ylabel = "choices per step (mean of the layers)";
    rounds.log_y = true;
    for (size_t i = 0; i < runs.size(); i++) {
        if (runs[i]->rerouted_per_round.empty()) continue;
        plot::Series sr;
        sr.name = labels[i];
        sr.color = (int)i;
        sr.markers = true;
        for (size_t k = 0; k < runs[i]->rerouted_per_round.size(); k++)
            sr.x.push_back((double)k + 1), sr.y.push_back(runs[i]->rerouted_per_round[k]);
        rounds.series.push_back(std::move(sr));
    }
    panels.push_back(std::move(rounds));
    std::vector<double> val;
    for (const Result* r : runs) val.push_back(r->val);
    plot::Axes v = plot::bar_axes("final validation loss", labels, val, "run", "cross-entropy (nats)", NAN, "", 0);
    double lo = *std::min_element(val.begin(), val.end()), hi = *std::max_element(val.begin(), val.end());
    v.ymin = lo - std::max(0.01, (hi - lo) * 0.6);
    v.ymax = hi + std::max(0.01, (hi - lo) * 0.4);
    panels.push_back(std::move(v));
    return plot::grid_figure("Overflow: dropped versus rerouted", panels, 3, 600, 420);
}

// An axis range around every point of the axes' series, with a margin (a share of the span, or of
// the value on a log axis), so that no point sits on the frame.
void pad_x_to_points(plot::Axes& ax, double margin = 0.08) {
    double lo = INFINITY, hi = -INFINITY;
    for (const plot::Series& sr : ax.series)
        for (double x : sr.x)
            if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
    if (!std::isfinite(lo)) return;
    if (ax.log_x) {
        ax.xmin = lo / (1 + margin);
        ax.xmax = hi * (1 + margin);
    } else {
        const double span = std::max(hi - lo, 1e-3 * std::max(1.0, std::fabs(hi)));
        ax.xmin = lo - margin * span;
        ax.xmax = hi + margin * span;
    }
}

// Validation loss against the parameters a token uses and against all of them: a line per top-K
// through E = 4, 8, 16, and the two dense models (for which both counts are the same).
plot::Figure ek_surface_figure(const std::vector<std::vector<const Result*>>& by_k, const std::vector<std::string>& k_names,
                               const std::vector<const Result*>& dense) {
    std::vector<plot::Axes> panels(2);
    for (int p = 0; p < 2; p++) {
        plot::Axes& ax = panels[p];
        ax.title = p == 0 ? "against the active parameters (per token)" : "against the total parameters";
        ax.xlabel = p == 0 ? "active parameters" : "total parameters";
        ax.ylabel = "final validation loss (nats)";
        auto params = [p](const Result* r) { return (double)(p == 0 ? r->params_active : r->params_total); };
        for (size_t k = 0; k < by_k.size(); k++) {
            plot::Series sr;
            sr.name = k_names[k];
            sr.color = (int)k;
            sr.markers = true;
            for (const Result* r : by_k[k]) sr.x.push_back(params(r)), sr.y.push_back(r->val);
            ax.series.push_back(std::move(sr));
        }
        plot::Series d;
        d.name = "dense (FFN K*F and E*F)";
        d.color = 7;
        d.markers = true;
        d.dashed = true;
        for (const Result* r : dense) d.x.push_back(params(r)), d.y.push_back(r->val);
        ax.series.push_back(std::move(d));
        pad_x_to_points(ax);
    }
    return plot::grid_figure("Experts E x top-K at fixed expert width: validation loss (E = 4, 8, 16 along each line)", panels, 2, 640, 440);
}

// Load imbalance against I(domain; expert), a point per layer and run; and both against the aux coefficient.
plot::Figure specialisation_figure(const std::vector<const Result*>& runs, const std::vector<std::string>& coefs) {
    std::vector<plot::Axes> panels;
    plot::Axes sc;
    sc.title = "a point per layer and run (the largest possible: ln 4 = 1.386)";
    sc.xlabel = "load imbalance (max / mean, last 10% of steps)";
    sc.ylabel = "I(domain; expert) (nats)";
    int L = 0;
    for (const Result* r : runs) L = std::max(L, (int)std::min(r->mutual_information.size(), r->tail_load.size()));
    std::vector<std::vector<double>> imb(L), mi(L);
    for (size_t i = 0; i < runs.size(); i++) {
        const Result& r = *runs[i];
        plot::Series pts;
        pts.name = "aux " + coefs[i];
        pts.color = (int)i;
        pts.markers = true;
        for (int l = 0; l < L; l++) {
            const double x = l < (int)r.tail_imbalance.size() ? r.tail_imbalance[l] : NAN;
            const double y = l < (int)r.mutual_information.size() ? r.mutual_information[l] : NAN;
            if (l) pts.x.push_back(NAN), pts.y.push_back(NAN);  // points, not a line between the layers
            pts.x.push_back(x), pts.y.push_back(y);
            imb[l].push_back(x);
            mi[l].push_back(y);
        }
        sc.series.push_back(std::move(pts));
    }
    sc.ymin = 0;
    pad_x_to_points(sc);
    panels.push_back(std::move(sc));
    for (int p = 0; p < 2; p++) {
        plot::Axes ax;
        ax.title = p == 0 ? "I(domain; expert) by aux coefficient" : "load imbalance by aux coefficient";
        ax.xlabel = "aux coefficient";
        ax.ylabel = p == 0 ? "nats" : "max / mean";
        ax.categories = coefs;
        for (int l = 0; l < L; l++) ax.bars.push_back(plot::BarGroup{"layer " + std::to_string(l), p == 0 ? mi[l] : imb[l], l});
        ax.ymin = 0;
        panels.push_back(std::move(ax));
    }
    return plot::grid_figure("Balancing strength against specialisation (synthetic data: 4 domains)", panels, 3, 560, 420);
}

// ------------------------------------------------------------------------------------------------
// README

// "+0.012", "-0.012"; "0.000" without a sign when it rounds to zero
std::string signed3(double d) { return std::lround(d * 1000) == 0 ? "0.000" : (d >= 0 ? "+" : "") + fmt("%.3f", d); }
std::string f4(double x) { return std::isfinite(x) ? fmt("%.4f", x) : "n/a"; }
std::string pct(double x) { return std::isfinite(x) ? fmt("%.1f%%", 100 * x) : "n/a"; }
std::string f2(double x) { return std::isfinite(x) ? fmt("%.2f", x) : "n/a"; }
std::string f3(double x) { return std::isfinite(x) ? fmt("%.3f", x) : "n/a"; }

// "lower" / "higher" / "the same" for a - b, at the printed precision of `decimals`.
std::string lower_higher(double a, double b, int decimals = 3) {
    double q = std::pow(10.0, decimals);
    long d = std::lround((a - b) * q);
    return d < 0 ? "lower" : d > 0 ? "higher" : "the same";
}

struct Report {
    const Sweep& s;
    std::map<std::string, Result>& res;
    double seed_delta = NAN;  // |val(top2) - val(top2-seed2)|

    const Result* get(const std::string& n) const {
        auto it = res.find(n);
        return it != res.end() && it->second.ok ? &it->second : nullptr;
    }
    // ", within the seed-to-seed difference of 0.012" / ", more than ..." (empty without the reference run)
    std::string noise_note(double delta) const {
        if (!std::isfinite(seed_delta)) return "";
        return (std::fabs(delta) <= seed_delta ? ", within" : ", more than") + std::string(" the seed-to-seed difference of ") +
               fmt("%.3f", seed_delta);
    }
    // "a reached validation loss X vs Y for b (Δ = +0.012: lower, within the seed-to-seed difference of 0.020)"
    std::string vs(const std::string& a, const std::string& b) const {
        const Result *ra = get(a), *rb = get(b);
        if (!ra || !rb) return "(missing runs)";
        double d = ra->val - rb->val;
        return a + " reached validation loss " + f4(ra->val) + " vs " + f4(rb->val) + " for " + b + " (Δ = " + signed3(d) + ": " +
               lower_higher(ra->val, rb->val) + noise_note(d) + ")";
    }
};

std::string table(const Sweep& s, const std::vector<RunSpec>& specs, std::map<std::string, Result>& res) {
    std::string t =
        "| run | configuration | train CE | val loss | drop rate | load imbalance | router entropy | tokens/s | tokens/CPU-s | params total | params active |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const RunSpec& spec : specs) {
        const Result& r = res[spec.name];
        if (!r.ok) {
            t += "| " + spec.name + " | " + spec.label + " | missing | | | | | | | | |\n";
            continue;
        }
        const bool moe = r.moe;
        t += "| " + spec.name + " | " + spec.label + " | " + f4(r.get("final_train_ce")) + " | " + f4(r.val) + " | " +
             (moe ? pct(r.get("drop_rate")) : "-") + " | " + (moe ? f2(r.get("load_imbalance")) : "-") + " | " +
             (moe ? fmt("%.3f", r.get("router_entropy")) + " (" + fmt("%.0f%%", 100 * r.get("router_entropy_ratio")) + ")" : "-") +
             " | " + fmt("%.0f", r.tokens_per_s) + " | " + (std::isfinite(r.tokens_per_cpu_s) ? fmt("%.0f", r.tokens_per_cpu_s) : "n/a") +
             " | " + human_count((double)r.params_total) + " | " +
             human_count((double)r.params_active) + " |\n";
    }
    (void)s;
    return t;
}

double lse_rms(const MoeStats& s) { return std::sqrt(std::max(0.0, s.z)); }
double entropy_of(const MoeStats& s) { return s.router_entropy; }
double imbalance_of(const MoeStats& s) { return s.load_imbalance; }

// Result::coverage read as shares: the tokens no expert took, one, two, three or more; the mean and
// the largest number of experts on a token (the largest with a nonzero mean count in the tail).
struct CoverageShares {
    double none = NAN, one = NAN, two = NAN, more = NAN, mean = NAN;
    int max = 0;
};
CoverageShares coverage_shares(const std::vector<double>& cov) {
    CoverageShares c;
    double total = 0, taken = 0;
    for (size_t k = 0; k < cov.size(); k++) total += cov[k], taken += (double)k * cov[k];
    if (total <= 0) return c;
    auto at = [&](size_t k) { return k < cov.size() ? cov[k] / total : 0.0; };
    c.none = at(0), c.one = at(1), c.two = at(2), c.more = 1 - c.none - c.one - c.two, c.mean = taken / total;
    for (size_t k = 0; k < cov.size(); k++)
        if (cov[k] > 0) c.max = (int)k;
    return c;
}

// The mean over the MoE layers and over the log records with first <= step <= last of a layer statistic.
double mean_between(const RunHistory& h, double first, double last, double (*metric)(const MoeStats&)) {
    double sum = 0;
    int n = 0;
    for (const StepRecord& r : h.records)
        if (r.step >= first && r.step <= last)
            for (const MoeStats& st : r.moe) sum += metric(st), n++;
    return n > 0 ? sum / n : NAN;
}

// The mean over the layers of I(domain; expert) (NaN without the specialisation report).
double mean_mi(const Result& r) {
    if (r.mutual_information.empty()) return NAN;
    double mi = 0;
    for (double x : r.mutual_information) mi += x;
    return mi / (double)r.mutual_information.size();
}

// The routing variants' own numbers, for every MoE run: the coverage (token choice too: a token whose
// choices were all dropped was taken by no expert), rerouting, the bias and the specialisation.
std::string routing_table(const std::vector<RunSpec>& specs, std::map<std::string, Result>& res) {
    std::string t =
        "| run | tokens no expert took | experts per token (mean / max) | choices placed by rerouting | bias range at the end | "
        "I(domain; expert), nats |\n|---|---:|---:|---:|---:|---:|\n";
    for (const RunSpec& spec : specs) {
        const Result& r = res[spec.name];
        if (!r.ok || !r.moe) continue;
        const CoverageShares c = coverage_shares(r.coverage);
        t += "| " + spec.name + " | " + pct(c.none) + " | " + (std::isfinite(c.mean) ? f2(c.mean) + " / " + std::to_string(c.max) : "n/a") +
             " | " + (std::isfinite(r.get("rerouted_rate")) ? pct(r.get("rerouted_rate")) : "-") + " | " +
             (std::isfinite(r.get("bias_range")) ? fmt("%.3f", r.get("bias_range")) : "-") + " | " +
             (r.mutual_information.empty() ? "-" : fmt("%.3f", mean_mi(r))) + " |\n";
    }
    return t;
}

// The sentences of the routing-variant experiments (docs/model.md, 31).
std::string routing_variant_text(const Report& R, const Experiment& x) {
    for (const auto& n : x.runs)
        if (!R.get(n)) return "Some runs of this experiment are missing.\n";
    auto g = [&](const std::string& n) { return R.get(n); };
    const int N = R.s.batch * R.s.block;
    const bool cpu_timed = std::isfinite(g(x.runs[0])->tokens_per_cpu_s);
    const std::string speed_unit = cpu_timed ? " tokens per CPU-second" : " tokens/s";
    auto speed = [](const Result* r) { return fmt("%.0f", r->throughput()); };
    auto entropy = [](const Result* r) { return fmt("%.3f", r->get("router_entropy")); };
    // "+0.012 (lower, within the seed-to-seed difference of 0.033)"
    auto delta = [&](const Result* a, const Result* b) {
        return signed3(a->val - b->val) + " (" + lower_higher(a->val, b->val) + R.noise_note(a->val - b->val) + ")";
    };
    // the first 10% of the steps, against the last 10% (the summary's tail)
    auto early = [](const Result* r, double (*metric)(const MoeStats&)) {
        const double last = r->h.records.empty() ? 0 : (double)r->h.records.back().step;
        return mean_between(r->h, 0, kTail * last, metric);
    };
    std::string t;
    if (x.key == "routing") {
        const Result *tc = g("cf1.0"), *ec = g("ec-cf1.0");
        const int E = ec->E, cap = ec->h.capacity.empty() ? 0 : ec->h.capacity[0];
        const CoverageShares a = coverage_shares(tc->coverage), b = coverage_shares(ec->coverage);
        t += "At capacity factor 1.0 both give every expert " + std::to_string(cap) + " slots per layer and step: E x capacity = " +
             std::to_string(E * cap) + " expert-token pairs for N x K = " + std::to_string(N * R.s.top_k) +
             " choices, so both run the same expert FFN work per step, and both count " + human_count((double)ec->params_active) +
             " active parameters per token (expert choice on average: a token gets " + f2(b.mean) +
             " experts). Expert choice has no load-balancing loss (aux = 0 by definition); everything else is the same. ";
        t += R.vs("ec-cf1.0", "cf1.0") + ". ";
        t += (b.none > 0 ? "Expert choice left " + pct(b.none) + " of the tokens to no expert (the residual stream alone carried them through the layer), gave "
                         : std::string("Expert choice took every token with at least one expert (none was left to the residual stream alone), gave ")) +
             pct(b.one) + " one expert, " + pct(b.two) + " two and " + pct(b.more) + " three or more (at most " + std::to_string(b.max) +
             " on one token); token choice, which dropped " + pct(tc->get("drop_rate")) + " of its choices, left " + pct(a.none) +
             " with no expert, " + pct(a.one) + " with one and " + pct(a.two) + " with both (means of the layers and of the last 10% of steps). ";
        t += "Router entropy " + entropy(ec) + " vs " + entropy(tc) + " nats; throughput " + speed(ec) + " vs " + speed(tc) + speed_unit +
             " (expert choice sorts every expert's N scores).\n";
    } else if (x.key == "balancing") {
        const std::vector<std::pair<std::string, const Result*>> v = {
            {"none", g("aux-off")}, {"aux loss", g("noise-off")}, {"bias", g("bias")}, {"aux loss + bias", g("aux-bias")}};
        std::string imb, imb_early, starved, drop, val;
        const std::pair<std::string, const Result*>* best = nullptr;
        for (const auto& e : v) {
            const std::string sep = imb.empty() ? "" : ", ";
            imb += sep + e.first + " " + f2(e.second->get("load_imbalance"));
            imb_early += sep + e.first + " " + f2(early(e.second, imbalance_of));
            starved += sep + e.first + " " + std::to_string(e.second->starved);
            drop += sep + e.first + " " + pct(e.second->get("drop_rate"));
            val += sep + e.first + " " + f4(e.second->val);
            if (!best || e.second->get("load_imbalance") < best->second->get("load_imbalance")) best = &e;
        }
        const Result *none = g("aux-off"), *bias = g("bias"), *both = g("aux-bias");
        t += "Load imbalance (max / mean tokens per expert before capacity, mean of the layers and of the last 10% of steps): " + imb +
             "; over the first 10% of steps: " + imb_early + ". The most balanced at the end: " + best->first + ". ";
        t += "Experts starved (tail load below a tenth of the uniform level, of " + std::to_string(none->E * (int)none->tail_load.size()) +
             "): " + starved + ". Drop rate: " + drop + ". ";
        t += "Validation loss: " + val + "; against none, bias " + delta(bias, none) + ", aux loss + bias " + delta(both, none) +
             ", aux loss " + delta(g("noise-off"), none) + ". ";
        t += "The selection bias (rate " + R.s.bias_rate + " per step) ended with a spread (max - min over the experts, mean of the layers) of " +
             fmt("%.3f", bias->get("bias_range")) + " alone and " + fmt("%.3f", both->get("bias_range")) +
             " beside the aux loss: the size of the score differences it offsets. ";
        std::string means;
        for (const auto& n : {"bias", "aux-bias", "sigmoid-bias"})
            if (const Result* r = g(n); r && std::isfinite(r->bias_mean_end)) means += (means.empty() ? "" : ", ") + std::string(n) + " " + signed3(r->bias_mean_end);
        const double drift = bias->bias_mean_end;
        if (std::isfinite(drift) && std::fabs(drift) >= 0.5 * std::max(1e-12, bias->get("bias_range")))
            t += "The biases also drifted together (their mean over the experts at the end: " + means +
                 "). A shift common to every expert changes no selection; it comes from the sign rule, which moves an expert by the same step "
                 "however far its load is from the mean, so the mean bias " + (drift > 0 ? "rises" : "falls") + " whenever more experts are " +
                 (drift > 0 ? "below" : "above") + " the mean load than " + (drift > 0 ? "above" : "below") + " it, as when a few experts are " +
                 (drift > 0 ? "overloaded" : "underloaded") + " by a lot.";
        t += "\n";
    } else if (x.key == "gate") {
        const Result *sm = g("bias"), *sg = g("sigmoid-bias");
        t += "Both select their top-2 by score + bias (rate " + R.s.bias_rate + "), with no aux loss and no router noise. " +
             R.vs("sigmoid-bias", "bias") + ". ";
        t += "Load imbalance " + f2(sg->get("load_imbalance")) + " (sigmoid) vs " + f2(sm->get("load_imbalance")) + " (softmax), drop rate " +
             pct(sg->get("drop_rate")) + " vs " + pct(sm->get("drop_rate")) + ", experts starved " + std::to_string(sg->starved) + " vs " +
             std::to_string(sm->starved) + ", router entropy of the normalised scores " + entropy(sg) + " vs " + entropy(sm) +
             " nats, bias spread at the end " + fmt("%.3f", sg->get("bias_range")) + " vs " + fmt("%.3f", sm->get("bias_range")) +
             " (the bias trajectories of both are in the plot of the balancing section above).\n";
    } else if (x.key == "overflow") {
        for (const char* cf : {"1.0", "0.5"}) {
            const Result *d = g(std::string("cf") + cf), *rr = g(std::string("reroute-cf") + cf);
            const int cap = rr->h.capacity.empty() ? 0 : rr->h.capacity[0], slots = rr->E * cap;
            const double floor = std::max(0.0, 1.0 - (double)slots / ((double)N * R.s.top_k));
            double placed = 0;
            for (double c : rr->rerouted_per_round) placed += c;
            t += "At capacity factor " + std::string(cf) + " (capacity " + std::to_string(cap) + ", E x capacity = " + std::to_string(slots) +
                 " slots for " + std::to_string(N * R.s.top_k) + " choices";
            t += floor > 0 ? ", so at least " + pct(floor) + " of the choices must be dropped whatever the rule): " : "): ";
            t += "dropping lost " + pct(d->get("drop_rate")) + " of the choices" +
                 (floor > 0 ? " (" + pct(std::max(0.0, d->get("drop_rate") - floor)) + " above that floor: the slots it left empty)" : std::string()) +
                 " and left " + fmt("%.1f", d->get("tokens_all_dropped")) + " tokens per step with no expert; rerouting placed " + pct(rr->get("rerouted_rate")) + " of the choices at a later expert (" +
                 (placed > 0 ? pct(rr->rerouted_per_round[0] / placed) + " of them in the first round" : std::string("none in any round")) +
                 "), dropped " + pct(rr->get("drop_rate")) + " and left " + fmt("%.1f", rr->get("tokens_all_dropped")) + " tokens per step with none";
            if (rr->rerouted_log_steps < rr->log_steps)  // rerouting that rarely finds a free slot: say when it did
                t += "; over the whole run it placed choices at " + std::to_string(rr->rerouted_log_steps) + " of the " +
                     std::to_string(rr->log_steps) + " log steps" +
                     (rr->rerouted_log_steps > 0 ? ", the last at step " + std::to_string(rr->rerouted_last_step) +
                                                       " (the two runs train identically until it first places a choice; evaluation, on other batches, reroutes too)"
                                                 : std::string());
            t += ". ";
            t += R.vs(rr->spec->name, d->spec->name) + "; throughput " + speed(rr) + " vs " + speed(d) + speed_unit + ". ";
        }
        t += "\n";
    } else if (x.key == "entropy") {
        const Result *neg = g("entropy-neg"), *none = g("top2"), *pos = g("entropy-pos");
        const double lnE = std::log((double)none->E);
        auto ent = [&](const Result* r) { return entropy(r) + " (" + fmt("%.0f%%", 100 * r->get("router_entropy") / lnE) + " of ln " + std::to_string(none->E) + ")"; };
        t += "The bonus subtracts c times the layers' router entropy from the loss (c = +" + R.s.entropy_coef + " rewards undecided routing, c = -" +
             R.s.entropy_coef + " decided routing). Router entropy (mean of the layers and of the last 10% of steps): " + ent(neg) + " with c = -" +
             R.s.entropy_coef + ", " + ent(none) + " without, " + ent(pos) + " with c = +" + R.s.entropy_coef + "; over the first 10% of steps " +
             f3(early(neg, entropy_of)) + ", " + f3(early(none, entropy_of)) + " and " + f3(early(pos, entropy_of)) + ". ";
        t += "Load imbalance " + f2(neg->get("load_imbalance")) + ", " + f2(none->get("load_imbalance")) + ", " + f2(pos->get("load_imbalance")) +
             "; drop rate " + pct(neg->get("drop_rate")) + ", " + pct(none->get("drop_rate")) + ", " + pct(pos->get("drop_rate")) + ". ";
        t += R.vs("entropy-pos", "top2") + "; " + R.vs("entropy-neg", "top2") + ".\n";
    } else if (x.key == "ek") {
        const std::vector<int> Es = {4, 8, 16};
        auto run = [&](int e, int k) { return g(e == R.s.experts ? "top" + std::to_string(k) : "E" + std::to_string(e) + "-top" + std::to_string(k)); };
        for (int k : {1, 2}) {
            t += "Top-" + std::to_string(k) + ": validation loss ";
            for (size_t i = 0; i < Es.size(); i++)
                t += (i ? ", " : "") + std::string("E = ") + std::to_string(Es[i]) + ": " + f4(run(Es[i], k)->val) + " (" +
                     human_count((double)run(Es[i], k)->params_total) + " total)";
            t += ", all with about " + human_count((double)run(8, k)->params_active) + " active parameters per token; from 4 to 16 experts " +
                 delta(run(16, k), run(4, k)) + ". ";
        }
        t += "Top-2 against top-1 (" + human_count((double)run(8, 2)->params_active) + " vs " + human_count((double)run(8, 1)->params_active) +
             " active parameters): ";
        for (size_t i = 0; i < Es.size(); i++) t += (i ? ", " : "") + std::string("E = ") + std::to_string(Es[i]) + ": " + delta(run(Es[i], 2), run(Es[i], 1));
        const Result* best = nullptr;
        for (int e : Es)
            for (int k : {1, 2})
                if (!best || run(e, k)->val < best->val) best = run(e, k);
        t += ". The lowest: " + best->spec->name + ". Throughput" + speed_unit + ": ";
        for (int k : {1, 2})
            for (size_t i = 0; i < Es.size(); i++)
                t += std::string(k == 1 && i == 0 ? "" : ", ") + "E = " + std::to_string(Es[i]) + " top-" + std::to_string(k) + ": " + speed(run(Es[i], k));
        t += " (with capacity, the expert buffers hold CF x N x K rows in all, whatever E).\n";
    } else if (x.key == "specialisation") {
        std::vector<const Result*> v;
        for (const auto& n : x.runs) v.push_back(g(n));
        t += "On `--data synthetic` (four domains: arithmetic, brackets, words, counting patterns, told apart by their characters), " +
             std::to_string(R.s.synthetic_steps()) + " steps, router noise on. By aux coefficient: ";
        for (size_t i = 0; i < v.size(); i++) {
            t += (i ? "; " : "") + x.name_of(x.runs[i]) + ": load imbalance " + f2(v[i]->get("load_imbalance")) + ", I(domain; expert) " +
                 fmt("%.3f", mean_mi(*v[i])) + " nats (layers";
            for (double mi : v[i]->mutual_information) t += " " + fmt("%.3f", mi);
            t += "), drop rate " + pct(v[i]->get("drop_rate")) + ", validation loss " + f4(v[i]->val);
        }
        const double mi0 = mean_mi(*v.front()), mi1 = mean_mi(*v.back());
        t += ". From aux 0 to aux 0.1 the load imbalance went from " + f2(v.front()->get("load_imbalance")) + " to " + f2(v.back()->get("load_imbalance")) +
             " and the mutual information from " + fmt("%.3f", mi0) + " to " + fmt("%.3f", mi1) + " nats (ln 4 = " + fmt("%.3f", std::log(4.0)) +
             ": every domain on experts of its own): ";
        double mi_lo = INFINITY, mi_hi = -INFINITY;
        for (const Result* r : v) mi_lo = std::min(mi_lo, mean_mi(*r)), mi_hi = std::max(mi_hi, mean_mi(*r));
        t += mi1 < mi0 - 0.05 ? "stronger balancing cost specialisation here"
             : mi1 > mi0 + 0.05 ? "stronger balancing did not cost specialisation here; the routing followed the domains more"
                                : "the balancing strength barely changed the specialisation here";
        t += " (the four runs span " + fmt("%.3f", mi_lo) + " to " + fmt("%.3f", mi_hi) +
             " nats; no second seed was run on this data, so how much of that is run-to-run noise is not measured)";
        t += ". With 8 experts, top-2 and 4 domains, two experts per domain would be both specialised and, were the domains of equal size, "
             "balanced, so this setup does not force the two apart.\n";
    }
    return t;
}

std::string experiment_text(const Report& R, const Experiment& x) {
    auto g = [&](const std::string& n) { return R.get(n); };
    std::string t;
    if (x.key == "dense_vs_moe") {
        const Result *da = g("dense-active"), *t1 = g("top1"), *t2 = g("top2"), *dt = g("dense-total");
        if (!da || !t1 || !t2 || !dt) return "Some runs of this experiment are missing.\n";
        t += R.vs("top2", "dense-active") + ", with " + human_count((double)t2->params_active) + " vs " +
             human_count((double)da->params_active) + " active parameters per token and " +
             fmt("%.2f", (double)t2->params_total / (double)da->params_total) + "x the total parameters. ";
        t += R.vs("top2", "dense-total") + "; dense-total has " + human_count((double)dt->params_total) +
             " parameters, all of them active. ";
        t += R.vs("top1", "top2") + ". ";
        std::vector<const Result*> order = {da, t1, t2, dt};
        std::sort(order.begin(), order.end(), [](const Result* a, const Result* b) { return a->val < b->val; });
        t += "Ordered by validation loss: ";
        for (size_t i = 0; i < order.size(); i++) t += (i ? " < " : "") + order[i]->spec->name + " (" + f4(order[i]->val) + ")";
        const std::string unit = std::isfinite(t2->tokens_per_cpu_s) ? " tokens per CPU-second" : " tokens/s";
        t += ". Throughput: top-2 " + fmt("%.0f", t2->throughput()) + unit + ", dense-active " + fmt("%.0f", da->throughput()) +
             ", dense-total " + fmt("%.0f", dt->throughput()) + ", top-1 " + fmt("%.0f", t1->throughput()) + ": top-2 trained at " +
             fmt("%.2f", t2->throughput() / da->throughput()) + "x the speed of dense-active and " +
             fmt("%.2f", t2->throughput() / dt->throughput()) + "x that of dense-total.\n";
    } else if (x.key == "aux") {
        const Result *off = g("aux-off"), *on = g("noise-off");
        if (!off || !on) return "Some runs of this experiment are missing.\n";
        t += "Without the load-balancing loss the load imbalance (max/mean tokens per expert, before capacity, mean of the last 10% of steps) was " +
             f2(off->get("load_imbalance")) + " vs " + f2(on->get("load_imbalance")) + " with it (aux coefficient " + trainer_default("aux-coef") + "), the router entropy " +
             fmt("%.3f", off->get("router_entropy")) + " vs " + fmt("%.3f", on->get("router_entropy")) + " nats (ln " +
             std::to_string(on->E) + " = " + fmt("%.3f", std::log((double)on->E)) + " is uniform), and the drop rate " +
             pct(off->get("drop_rate")) + " vs " + pct(on->get("drop_rate")) + ". ";
        t += "Experts starved (mean load below a tenth of the uniform level, over both layers): " + std::to_string(off->starved) +
             " of " + std::to_string(off->E * (int)off->tail_load.size()) + " without the aux loss, " + std::to_string(on->starved) +
             " with it; " +
             (off->starved > on->starved || off->get("load_imbalance") > 1.5 * on->get("load_imbalance")
                  ? "so the router without the aux loss concentrates its load (toward collapse)"
                  : "so at this size and length the router without the aux loss did not collapse") +
             ". " + R.vs("aux-off", "noise-off") + ".\n";
    } else if (x.key == "capacity") {
        std::vector<std::pair<std::string, std::string>> cf = {
            {"cf0.5", "0.5"}, {"cf1.0", "1.0"}, {"top2", trainer_default("capacity-factor")}, {"cf2.0", "2.0"}, {"cf-unlimited", "unlimited"}};
        std::string drops, vals, speeds;
        const Result* best = nullptr;
        std::string best_cf;
        for (const auto& [n, label] : cf) {
            const Result* r = g(n);
            if (!r) return "Some runs of this experiment are missing.\n";
            drops += (drops.empty() ? "" : ", ") + label + ": " + pct(r->get("drop_rate"));
            vals += (vals.empty() ? "" : ", ") + label + ": " + f4(r->val);
            speeds += (speeds.empty() ? "" : ", ") + label + ": " + fmt("%.0f", r->throughput());
            if (!best || r->val < best->val) best = r, best_cf = label;
        }
        const Result *lo = g("cf0.5"), *un = g("cf-unlimited");
        t += "Drop rate by capacity factor (mean of the last 10% of steps): " + drops + ". Validation loss: " + vals + ". ";
        t += "The lowest validation loss was at capacity factor " + best_cf + "; capacity 0.5 ended " + signed3(lo->val - un->val) +
             " nats from unlimited capacity (" + lower_higher(lo->val, un->val) + R.noise_note(lo->val - un->val) + "), having dropped " + pct(lo->get("drop_rate")) +
             " of its choices (" + fmt("%.1f", lo->get("tokens_all_dropped")) + " tokens per step lost both choices and rode the residual alone). Throughput (" +
             (std::isfinite(lo->tokens_per_cpu_s) ? "tokens per CPU-second" : "tokens/s") + ") by capacity factor: " + speeds +
             " (the expert buffers, and the expert GEMMs over them, hold E x capacity rows; unlimited capacity is N rows per expert).\n";
    } else if (x.key == "shared") {
        const Result *t2 = g("top2"), *sh = g("shared");
        if (!t2 || !sh) return "Some runs of this experiment are missing.\n";
        t += R.vs("shared", "top2") + ". Both use two expert FFNs of width " + std::to_string(R.s.F()) + " per token: " +
             human_count((double)sh->params_active) + " vs " + human_count((double)t2->params_active) + " active parameters, " +
             human_count((double)sh->params_total) + " vs " + human_count((double)t2->params_total) + " in total. ";
        t += "Routed-expert drop rate " + pct(sh->get("drop_rate")) + " vs " + pct(t2->get("drop_rate")) + ", load imbalance " +
             f2(sh->get("load_imbalance")) + " vs " + f2(t2->get("load_imbalance")) + "; throughput " + fmt("%.0f", sh->throughput()) +
             " vs " + fmt("%.0f", t2->throughput()) + (std::isfinite(t2->tokens_per_cpu_s) ? " tokens per CPU-second.\n" : " tokens/s.\n");
    } else if (x.key == "noise") {
        const Result *on = g("top2"), *off = g("noise-off");
        if (!on || !off) return "Some runs of this experiment are missing.\n";
        t += "With router noise (top2) vs without (noise-off): " + R.vs("top2", "noise-off") + ". Router entropy " +
             fmt("%.3f", on->get("router_entropy")) + " vs " + fmt("%.3f", off->get("router_entropy")) + " nats, load imbalance " +
             f2(on->get("load_imbalance")) + " vs " + f2(off->get("load_imbalance")) + ", drop rate " + pct(on->get("drop_rate")) +
             " vs " + pct(off->get("drop_rate")) + " (the statistics of training steps, where the noise is applied).\n";
    } else if (x.key == "zloss") {
        const Result *on = g("top2"), *off = g("z-off");
        if (!on || !off) return "Some runs of this experiment are missing.\n";
        t += "Router logit size, as the RMS over tokens of logsumexp of the clean router logits (sqrt of the z-loss, mean of the layers and of the last 10% of steps): " +
             fmt("%.3f", on->get("router_lse_rms")) + " with the z-loss (coefficient " + trainer_default("z-coef") + ") vs " + fmt("%.3f", off->get("router_lse_rms")) +
             " without (z = " + fmt("%.3f", on->get("z")) + " vs " + fmt("%.3f", off->get("z")) + "; all-zero logits give ln " +
             std::to_string(on->E) + " = " + fmt("%.3f", std::log((double)on->E)) + "). ";
        t += "Stability: the largest gradient norm (before clipping) after warmup was " + f2(on->max_grad_norm) + " vs " +
             f2(off->max_grad_norm) + ". " + R.vs("top2", "z-off") + ".\n";
    } else {
        t += routing_variant_text(R, x);
    }
    return t;
}


// How the routing variants' settings were chosen (the runs: study.h).
std::string routing_variant_settings(const Sweep& s) {
    const double rate = atof(s.bias_rate.c_str()), c = atof(s.entropy_coef.c_str()), lnE = std::log((double)s.experts);
    // the numbers of the look before the study are quoted, not measured here: they hold for these settings only
    std::string t = "Routing-variant runs ([docs/model.md, 31](../docs/model.md#31-routing-variants)) each change one thing of the run "
                    "they are compared with. ";
    t += "Expert choice refuses `--bias-rate`, `--overflow reroute` and `--capacity-factor 0` (31.7), so it is compared with token "
         "choice at capacity factor 1.0 (`cf1.0`), where both have E x capacity = N x K slots per layer. ";
    t += "The bias runs use `--bias-rate " + s.bias_rate + "` (DeepSeek-V3's value): each step moves every b_i by " + s.bias_rate +
         ", so within the " + std::to_string(s.warmup) + " warmup steps a bias can travel " + fmt("%.2f", rate * s.warmup) +
         " (against the uniform softmax score 1/E = " + fmt("%.3f", 1.0 / s.experts) + "), while one step stays a small nudge. "
         "A 400-step look before the study (top-2, no aux loss, no noise; not rerun by `make ablate`; means over steps 200 to 400 of "
         "the larger layer's imbalance) chose it: with rate 0.01 the sign rule overshot, flipping experts back and forth (imbalance 1.47, "
         "2.2% of the choices dropped), against 1.23 and 0.2% with 0.001. ";
    t += "The entropy runs use c = +" + s.entropy_coef + " and -" + s.entropy_coef + ": the bonus is c x (sum over the " +
         std::to_string(s.layers) + " layers of H), with H at most ln E = " + fmt("%.3f", lnE) + ", so it moves the loss by at most " +
         fmt("%.3f", c * s.layers * lnE) + " nats, the order of the aux term (coefficient " + trainer_default("aux-coef") +
         " x aux of about 1). In the same look (the baseline's settings), c = +0.1 pinned the router entropy at 2.07 (ln 8 = 2.079) and "
         "c = -0.1 sent every token to the same two experts (imbalance 4.00 = E/K, 48% of the choices dropped), while c = +0.01 and "
         "-0.01 moved it to 2.00 and 0.82 from 1.79 without breaking the balance. ";
    t += "The synthetic-data runs train " + std::to_string(s.synthetic_steps()) + " steps (half), to keep the whole study within its "
         "time budget: their four domains differ in their characters, and the routing tells them apart within a few hundred steps.\n\n";
    return t;
}

bool write_report(const Sweep& s, const std::vector<RunSpec>& specs, std::map<std::string, Result>& res) {
    Report R{s, res};
    if (R.get("top2") && R.get("top2-seed2")) R.seed_delta = std::fabs(R.get("top2")->val - R.get("top2-seed2")->val);
    std::vector<std::string> pngs;
    auto save = [&](const plot::Figure& f, const std::string& name) {
        if (plot::save_png(f, s.out_dir + "/" + name)) pngs.push_back(name);
        else fprintf(stderr, "ablate: cannot write %s/%s\n", s.out_dir.c_str(), name.c_str());
    };
    auto runs_of = [&](const std::vector<std::string>& names) {
        std::vector<const Result*> v;
        for (const auto& n : names)
            if (R.get(n)) v.push_back(R.get(n));
        return v;
    };

    std::string md;
    md += "# MoE ablations\n\n";
    md += "Generated by `make ablate` (`ablations/ablate.cpp`) from the runs in `ablations/runs/`: every number and sentence "
          "below is computed from the runs' `summary.json` and `metrics.jsonl` (except the short look taken before the study to "
          "choose two coefficients, which the setup quotes as such); rerunning the study rewrites this file.\n\n";
    md += "## Setup\n\n";
    md += "Every run: tiny Shakespeare (`" + s.data + "`, character level; the specialisation runs `syn-*`: `--data synthetic`), seed " +
          std::to_string(s.seed) + " (except the noise reference), " +
          std::to_string(s.layers) + " layers, dim " + std::to_string(s.dim) + ", " + std::to_string(s.heads) + " heads, block " +
          std::to_string(s.block) + ", batch " + std::to_string(s.batch) + " (N = " + std::to_string(s.batch * s.block) +
          " tokens per step), " + std::to_string(s.steps) + " steps (the `syn-*` runs " + std::to_string(s.synthetic_steps()) +
          ") of AdamW (lr " + trainer_default("lr") + " cosine to " +
          trainer_default("min-lr") + ", warmup " + std::to_string(s.warmup) + ", weight decay " + trainer_default("weight-decay") +
          ", clip " + trainer_default("grad-clip") + "). MoE runs: " + std::to_string(s.experts) +
          " experts of hidden width " + std::to_string(s.F()) +
          " in every layer, and unless the run says otherwise top-" + std::to_string(s.top_k) + ", capacity factor " +
          trainer_default("capacity-factor") + ", router noise " + (trainer_default("router-noise") == "1" ? "on" : "off") +
          ", aux coefficient " + trainer_default("aux-coef") + ", z coefficient " + trainer_default("z-coef") + ", " +
          (trainer_default("shared-experts") == "0" ? std::string("no shared expert") : trainer_default("shared-experts") + " shared experts") +
          ". Validation loss: the same " +
          std::to_string(s.eval_batches) + " validation batches for every run, every " + std::to_string(s.eval_every) +
          " steps and at the end.\n\n";
    md += routing_variant_settings(s);
    md += "Columns: *train CE* is the mean training cross-entropy of the log steps in the last 10% of the run (one batch is "
          "noisy); *val loss* the final validation loss; *drop rate* (dropped choices / N*K), *load imbalance* (max / mean tokens "
          "routed per expert, before capacity) and *router entropy* (mean over tokens of H(p), nats, and as a share of ln E) are "
          "means over the MoE layers and over the log steps of the last 10% of the run; *tokens/s* is the trainer's training "
          "throughput in wall time, which depends on what else the machine was doing; *tokens/CPU-s* is the tokens trained per "
          "second of CPU time of the trainer process, evaluation, sampling and checkpoints included (steadier on a shared machine; "
          + std::to_string(s.jobs) + " runs at a time, each with " +
          (getenv("SIMT_THREADS") ? std::string(getenv("SIMT_THREADS")) : std::to_string(std::max(1, (int)std::thread::hardware_concurrency() / std::max(1, s.jobs)))) +
          " worker thread(s)); *params active* counts the parameters one token uses.\n\n";
    double total_cpu = 0, total_run_wall = 0;
    int counted = 0, timed = 0;
    for (const RunSpec& spec : specs) {
        const Result& r = res[spec.name];
        if (!r.ok) continue;
        counted++;
        if (std::isfinite(r.cpu_seconds)) total_cpu += r.cpu_seconds, total_run_wall += r.run_wall, timed++;
    }
    const int cores = std::max(1, (int)std::thread::hardware_concurrency());
    md += "Time: " + std::to_string(counted) + " runs. ";
    if (timed > 0)
        md += "The trainer processes of " + std::to_string(timed) + " of them used " + human_duration(total_cpu) +
              " of CPU time in total (" + human_duration(total_run_wall) + " of run wall time, " + std::to_string(s.jobs) +
              " runs at a time), which is " + human_duration(total_cpu / cores) + " of wall time on " + std::to_string(cores) +
              " idle cores. ";
    // every invocation of ablate that trained runs (sweep_history.txt): the sweep's wall time, even when interrupted and resumed
    {
        bool have = false;
        std::string hist = read_file(s.runs_dir + "/" + kSweepFile, &have);
        double wall = 0, cpu = 0;
        int invocations = 0, trained = 0;
        long long when = 0;
        int n = 0;
        double w = 0, c = 0;
        for (const char* p = hist.c_str(); have && sscanf(p, "%lld %d %lf %lf", &when, &n, &w, &c) == 4;) {
            invocations++, trained += n, wall += w, cpu += c;
            p = strchr(p, '\n');
            if (!p) break;
            p++;
        }
        if (invocations > 0)
            md += "Sweep wall time: " + human_duration(wall) + " (" + std::to_string(invocations) + " invocation(s) of `ablate` that trained " +
                  std::to_string(trained) + " run(s)), during which the trainer processes kept " + fmt("%.2f", cpu / std::max(1e-9, wall)) +
                  " of the " + std::to_string(cores) + " cores busy on average.\n\n";
        else
            md += "\n\n";
    }
    if (std::isfinite(R.seed_delta))
        md += "Noise reference: the top-2 baseline trained again with seed " + std::to_string(s.seed + 1) +
              " (other initial weights, batches and router noise) ended " + fmt("%.3f", R.seed_delta) +
              " nats of validation loss away from the baseline; differences of that order between runs are within run-to-run noise.\n\n";

    md += "## Results\n\n" + table(s, specs, res) + "\n";
    md += "The routing variants' own numbers, for every MoE run (means of the layers and of the last 10% of steps): the tokens no expert "
          "took (token choice: the tokens that lost every choice), how many experts a token got, the choices placed by rerouting, "
          "the spread of the selection bias at the last log step (max - min over the experts), and on the synthetic data the mutual "
          "information between a token's domain and its experts (specialisation.txt, at the end of the run).\n\n" +
          routing_table(specs, res) + "\n";

    for (const Experiment& x : experiments()) {
        md += "## " + x.title + "\n\n";
        std::vector<const Result*> runs = runs_of(x.runs);
        std::vector<std::string> names;
        for (const Result* r : runs) names.push_back(x.name_of(r->spec->name));
        if (!runs.empty()) {
            std::string name = "loss_" + x.key + ".png";
            save(loss_overlay(x.title + ": loss curves", runs, names, s.log_every), name);
            md += "![" + x.title + " loss curves](" + name + ")\n\n";
        }
        if (x.key == "aux" && runs.size() == 2) {
            save(load_histograms("Tokens routed per expert (mean of the last 10% of steps): aux loss off vs on", runs, names),
                 "load_aux.png");
            md += "![load histograms, aux off vs on](load_aux.png)\n\n";
            std::vector<plot::Axes> p;
            const int L = runs[0]->h.moe_layers();
            for (int l = 0; l < L; l++) {
                p.push_back(metric_over_time("router entropy, layer " + std::to_string(l), "mean H(p) (nats)", runs, names, entropy_of, l, 5));
                p.back().hlines.push_back(plot::RefLine{std::log((double)runs[0]->E), "ln E (uniform)", plot::rgb(120, 120, 120), true});
                p.back().ymin = 0;
                p.back().ymax = std::log((double)runs[0]->E) * 1.15;
            }
            for (int l = 0; l < L; l++) {
                p.push_back(metric_over_time("load imbalance (before capacity), layer " + std::to_string(l), "max / mean tokens per expert",
                                             runs, names, imbalance_of, l));
                p.back().hlines.push_back(plot::RefLine{1.0, "1 (balanced)", plot::rgb(120, 120, 120), true});
            }
            save(plot::grid_figure("Routing over time, aux loss off vs on", p, std::max(1, L), 700, 400), "routing_aux.png");
            md += "![routing over time, aux off vs on](routing_aux.png)\n\n";
        }
        if (x.key == "capacity" && runs.size() == x.runs.size()) {
            save(capacity_figure(runs, {"0.5", "1.0", trainer_default("capacity-factor"), "2.0", "unlimited"}), "capacity.png");
            md += "![drop rate and validation loss against capacity factor](capacity.png)\n\n";
        }
        if (x.key == "zloss" && !runs.empty()) {
            std::vector<const Result*> zr = runs_of({"top2", "z-off", "noise-off"});
            std::vector<std::string> zn;
            for (const Result* r : zr)
                zn.push_back(r->spec->name == "top2" ? "z on, noise on (top2)" : r->spec->name == "z-off" ? "z off, noise on (z-off)" : "z on, noise off (noise-off)");
            std::vector<plot::Axes> p = {metric_over_time("RMS logsumexp of the router logits (sqrt z), mean of the layers",
                                                          "sqrt(z)", zr, zn, lse_rms, -1)};
            plot::Axes gn;
            gn.title = "gradient norm before clipping";
            gn.xlabel = "step";
            gn.ylabel = "||grad||";
            gn.log_y = true;
            for (size_t i = 0; i < zr.size(); i++) {
                plot::Series sr;
                sr.name = zn[i];
                sr.color = (int)i;
                sr.width = 1.3;
                for (const StepRecord& rec : zr[i]->h.records)
                    if (std::isfinite(rec.grad_norm)) sr.x.push_back((double)rec.step), sr.y.push_back(rec.grad_norm);
                gn.series.push_back(std::move(sr));
            }
            p.push_back(std::move(gn));
            save(plot::grid_figure("Router logit size and stability", p, 2, 700, 440), "router_logits.png");
            md += "![router logit size and gradient norms](router_logits.png)\n\n";
        }
        if (x.key == "routing" && runs.size() == x.runs.size()) {
            save(coverage_compare_figure(runs, names), "coverage.png");
            md += "![coverage: how many experts took each token, token vs expert choice](coverage.png)\n\n";
        }
        if (x.key == "balancing" && runs.size() == x.runs.size()) {
            std::vector<plot::Axes> p;
            for (int l = 0; l < runs[0]->h.moe_layers(); l++) {
                p.push_back(metric_over_time("load imbalance (before capacity), layer " + std::to_string(l), "max / mean tokens per expert",
                                             runs, names, imbalance_of, l, 5));
                p.back().hlines.push_back(plot::RefLine{1.0, "1 (balanced)", plot::rgb(120, 120, 120), true});
            }
            save(plot::grid_figure("Load imbalance over time (moving average over " + std::to_string(11 * s.log_every) +
                                       " steps): none, aux loss, bias, both",
                                   p, 1, 1100, 380),
                 "routing_balancing.png");
            md += "![load imbalance over time, four balancing schemes](routing_balancing.png)\n\n";
            save(load_histograms("Tokens routed per expert (mean of the last 10% of steps): none, aux loss, bias, both", runs, names),
                 "load_balancing.png");
            md += "![load histograms of the four balancing schemes](load_balancing.png)\n\n";
            std::vector<const Result*> br = runs_of({"bias", "aux-bias", "sigmoid-bias"});
            if (!br.empty()) {
                std::vector<std::string> bn;
                for (const Result* r : br) bn.push_back(r->spec->name);
                save(bias_trajectories_figure(br, bn), "bias.png");
                md += "![selection bias per expert over time](bias.png)\n\n";
            }
        }
        if (x.key == "overflow" && runs.size() == x.runs.size()) {
            save(overflow_figure(runs, {"drop, cf 1.0", "reroute, cf 1.0", "drop, cf 0.5", "reroute, cf 0.5"}, s.batch * s.block), "overflow.png");
            md += "![dropped and rerouted choices, rerouting rounds, validation loss](overflow.png)\n\n";
        }
        if (x.key == "entropy" && runs.size() == x.runs.size()) {
            std::vector<plot::Axes> p;
            for (int l = 0; l < runs[0]->h.moe_layers(); l++) {
                p.push_back(metric_over_time("router entropy, layer " + std::to_string(l), "mean H(p) (nats)", runs, names, entropy_of, l, 5));
                p.back().hlines.push_back(plot::RefLine{std::log((double)runs[0]->E), "ln E (uniform)", plot::rgb(120, 120, 120), true});
                p.back().ymin = 0;
                p.back().ymax = std::log((double)runs[0]->E) * 1.15;
            }
            save(plot::grid_figure("Router entropy over time (moving average over " + std::to_string(11 * s.log_every) +
                                       " steps), with the entropy bonus negative, off and positive",
                                   p, 2, 700, 420),
                 "entropy.png");
            md += "![router entropy over time with the entropy bonus](entropy.png)\n\n";
        }
        if (x.key == "ek" && runs.size() == x.runs.size()) {
            std::vector<const Result*> dense = runs_of({"dense-active", "dense-total"});
            save(ek_surface_figure({runs_of({"E4-top1", "top1", "E16-top1"}), runs_of({"E4-top2", "top2", "E16-top2"})}, {"top-1", "top-2"}, dense),
                 "ek_surface.png");
            md += "![validation loss against active and total parameters, E x K](ek_surface.png)\n\n";
        }
        if (x.key == "specialisation" && runs.size() == x.runs.size()) {
            std::vector<std::string> coefs;
            for (const Result* r : runs) coefs.push_back(r->spec->flags.at("aux-coef"));
            save(specialisation_figure(runs, coefs), "specialisation.png");
            md += "![load imbalance against domain/expert mutual information](specialisation.png)\n\n";
        }
        md += experiment_text(R, x) + "\n";
    }
    md += "## Reproduce\n\n```\nmake ablate            # builds train_moe_cpu and the data, then trains the runs that are missing\n```\n\n";
    md += "Each run is `" + s.trainer + " --out " + s.runs_dir + "/<run> <flags>`; its console log is `" + s.runs_dir +
          "/<run>/train.log` (the first line of each invocation is its command), and its own plots (loss, expert load, "
          "routing, gradient norms, load histogram) are in its directory. An interrupted sweep continues where it stopped.\n";
    return write_file(s.out_dir + "/README.md", md);
}

// ------------------------------------------------------------------------------------------------

void usage() {
    puts("usage: ablate [--steps N] [--jobs J] [--dim D] [--layers L] [--batch B] [--runs-dir DIR] [--out-dir DIR]\n"
         "              [--trainer PATH] [--data PATH] [--only run,run,...] [--report-only] [--dry-run]\n"
         "Trains the MoE ablation study (each run once, resumable) and writes DIR/README.md and its plots.");
}

}  // namespace

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    Sweep s;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                fprintf(stderr, "ablate: %s needs a value\n", a.c_str());
                exit(2);
            }
            return argv[++i];
        };
        auto int_value = [&]() {
            std::string v = value();
            char* end = nullptr;
            long x = strtol(v.c_str(), &end, 10);
            if (*end || x < 1) {
                fprintf(stderr, "ablate: %s %s: not a positive integer\n", a.c_str(), v.c_str());
                exit(2);
            }
            return (int)x;
        };
        if (a == "--steps") s.steps = int_value();
        else if (a == "--jobs") s.jobs = int_value();
        else if (a == "--dim") s.dim = int_value();
        else if (a == "--layers") s.layers = int_value();
        else if (a == "--batch") s.batch = int_value();
        else if (a == "--runs-dir") s.runs_dir = value();
        else if (a == "--out-dir") s.out_dir = value();
        else if (a == "--trainer") s.trainer = value();
        else if (a == "--data") s.data = value();
        else if (a == "--report-only") s.report_only = true;
        else if (a == "--dry-run") s.dry_run = true;
        else if (a == "--only") {
            std::string v = value();
            for (size_t p = 0; p <= v.size();) {
                size_t q = v.find(',', p);
                if (q == std::string::npos) q = v.size();
                if (q > p) s.only.insert(v.substr(p, q - p));
                p = q + 1;
            }
        } else if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else {
            fprintf(stderr, "ablate: unknown argument %s\n", a.c_str());
            usage();
            return 2;
        }
    }
    s.checkpoint_every = std::min(s.checkpoint_every, std::max(1, s.steps / 4));
    if (s.eval_every > s.steps) s.eval_every = s.steps;
    if (s.warmup > s.steps / 2) s.warmup = std::max(1, s.steps / 10);

    std::vector<RunSpec> specs = study(s);
    for (const auto& n : s.only) {
        bool known = false;
        for (const auto& r : specs) known = known || r.name == n;
        if (!known) {
            fprintf(stderr, "ablate: --only: no run named %s\n", n.c_str());
            return 2;
        }
    }
    std::vector<RunPlan> plans;
    for (const RunSpec& spec : specs) {
        if (!s.only.empty() && !s.only.count(spec.name)) continue;
        RunPlan p;
        std::string error;
        if (!plan_run(s, spec, p, error)) {
            fprintf(stderr, "ablate: %s\n", error.c_str());
            return 2;
        }
        plans.push_back(p);
    }

    int executed = 0;
    double sweep_start = now_seconds();
    std::vector<std::string> failed;
    if (!s.report_only) {
        for (const RunPlan& p : plans) executed += p.state != RunState::Done;
        if (s.dry_run) {
            for (const RunPlan& p : plans)
                printf("%-13s %s\n", p.spec->name.c_str(),
                       p.state == RunState::Done ? "done" : command_line(trainer_args(s, p, p.state == RunState::Resume)).c_str());
            return 0;
        }
        if (executed > 0) {
            if (access(s.trainer.c_str(), X_OK) != 0) {
                fprintf(stderr, "ablate: trainer %s not found (make train_moe_cpu)\n", s.trainer.c_str());
                return 2;
            }
            if (access(s.data.c_str(), R_OK) != 0) {
                fprintf(stderr, "ablate: data %s not found (make data)\n", s.data.c_str());
                return 2;
            }
            printf("ablate: %d of %zu runs to train (%d at a time), %d steps each, in %s\n", executed, plans.size(), s.jobs, s.steps,
                   s.runs_dir.c_str());
            failed = run_all(s, plans);
        }
    }
    const double sweep_seconds = now_seconds() - sweep_start;
    if (executed > 0 && !s.report_only && !s.dry_run)
        if (FILE* f = fopen((s.runs_dir + "/" + kSweepFile).c_str(), "a")) {
            fprintf(f, "%lld %d %.3f %.3f\n", (long long)time(nullptr), executed, sweep_seconds, g_invocation_cpu);
            fclose(f);
        }

    std::map<std::string, Result> results;
    for (const RunSpec& spec : specs) results[spec.name] = load_result(s, spec);
    std::error_code ec;
    std::filesystem::create_directories(s.out_dir, ec);
    if (!write_report(s, specs, results)) {
        fprintf(stderr, "ablate: cannot write %s/README.md\n", s.out_dir.c_str());
        return 1;
    }
    printf("ablate: wrote %s/README.md (%s)\n", s.out_dir.c_str(), human_duration(sweep_seconds).c_str());
    if (!failed.empty()) {
        fprintf(stderr, "ablate: %zu run(s) failed:", failed.size());
        for (const auto& f : failed) fprintf(stderr, " %s", f.c_str());
        fprintf(stderr, "\n");
        return 1;
    }
    return 0;
}
