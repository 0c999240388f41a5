// tests/test_routing_expert.cpp: expert-choice routing (--routing expert, moe_expert_choice.cuh)
// through the SIMT layer, against the plain C++ reference (reference_model.h):
//
//  - the per-expert selection (bitonic sort of (score, token) keys) against a stable sort, with
//    ties, and exact and deterministic at N = 16384, E = 8 (1 and 2 worker threads);
//  - the whole layer, forward and backward, against ref_moe_forward / ref_moe_backward (shared
//    experts, noise, CF 1 and 2, 1 and 2 token groups), selections exact;
//  - finite differences of the reference backward in double (selection held fixed: asserted);
//  - coverage (tokens taken by 0, 1, ..., E experts) on a hand-made example;
//  - bit-identical results for 1 and 2 worker threads and shuffled thread order; no host copy;
//  - token choice keeps its layout (no expert-choice views); the trainer end to end (--steps 2,
//    --dump-state with ec_tokens / ec_gates).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "diagnostics.cuh"
#include "moe_layer.cuh"
#include "reference_model.h"
#include "run/safetensors.h"
#include "tests/moe_fixture.h"

namespace {

using namespace moe_test;

ModelConfig ec_config(int C, int E, int K, int F, int S, int Fs, double cf, bool noise, int groups = 1) {
    ModelConfig c = moe_config(C, E, K, F, S, Fs, cf, noise);
    c.routing = "expert";
    c.groups = groups;
    return c;
}

// The selection kernel alone on given scores (N, E), and the reference's on the same scores.
struct Selection {
    std::vector<int> slot_choice, ec_slot, routed, kept;
    std::vector<float> ec_gates;
};

Selection select_on_device(const ModelConfig& cfg, int N, const std::vector<float>& probs) {
    const int E = cfg.experts, G = cfg.groups, cap = expert_capacity(cfg, N), R = expert_buffer_rows(cfg, N);
    const int P = expert_choice_sort_length(N, G);
    float* d_probs = dalloc<float>(probs.size());
    upload(d_probs, probs);
    int *slot_choice = dalloc<int>((size_t)E * R), *ec_slot = dalloc<int>((size_t)N * E),
        *ids = dalloc<int>((size_t)N * E), *taken = dalloc<int>((size_t)N * E), *routed = dalloc<int>(E),
        *kept = dalloc<int>(E);
    float* gates = dalloc<float>((size_t)E * R);
    unsigned long long* keys = dalloc<unsigned long long>((size_t)E * G * P);
    expert_choice_select(slot_choice, gates, ec_slot, ids, taken, routed, kept, keys, d_probs, N, E, G, cap);
    Selection s;
    s.slot_choice = download(slot_choice, (size_t)E * R);
    s.ec_slot = download(ec_slot, (size_t)N * E);
    s.ec_gates = download(gates, (size_t)E * R);
    s.routed = download(routed, E);
    s.kept = download(kept, E);
    std::vector<int> id = download(ids, (size_t)N * E), tk = download(taken, (size_t)N * E);
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) {
            EXPECT_EQ(id[(size_t)t * E + e], e);
            EXPECT_EQ(tk[(size_t)t * E + e], s.ec_slot[(size_t)t * E + e] >= 0 ? 1 : 0);
        }
    for (void* p : {(void*)d_probs, (void*)slot_choice, (void*)ec_slot, (void*)ids, (void*)taken, (void*)routed,
                    (void*)kept, (void*)gates, (void*)keys})
        cudaFree(p);
    return s;
}

Selection select_reference(const ModelConfig& cfg, int N, const std::vector<float>& probs) {
    RefMoeState<float> st(cfg, N);
    st.probs = probs;
    ref_moe_expert_choice_select(st, cfg, N);
    return Selection{st.slot_choice, st.ec_slot, st.routed, st.kept_count, st.ec_gates};
}

void expect_same_selection(const Selection& got, const Selection& want) {
    EXPECT_EQ(got.slot_choice, want.slot_choice);
    EXPECT_EQ(got.ec_slot, want.ec_slot);
    EXPECT_EQ(got.ec_gates, want.ec_gates);  // copies of the scores: bit for bit
    EXPECT_EQ(got.routed, want.routed);
    EXPECT_EQ(got.kept, want.kept);
}

// Scores on a coarse grid: many exact ties, within and across experts.
std::vector<float> tied_scores(int N, int E, unsigned seed, int levels) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> level(0, levels - 1);
    std::vector<float> p((size_t)N * E);
    for (auto& x : p) x = (float)level(rng) / (float)levels;
    return p;
}

// ---------------------------------------------------------------- selection

TEST_F(MoeTest, ExpertChoiceSelectionMatchesReferenceWithTies) {
    for (int N : {1, 7, 37, 64, 100})
        for (int G : {1, 2})
            for (double cf : {0.3, 1.0, 2.0, 8.0}) {
                if (N % G) continue;
                ModelConfig cfg = ec_config(8, 4, 2, 8, 0, 0, cf, false, G);
                SCOPED_TRACE(describe(cfg, N) + " G=" + std::to_string(G));
                std::vector<float> p = tied_scores(N, 4, N * 31 + G, 5);
                expect_same_selection(select_on_device(cfg, N, p), select_reference(cfg, N, p));
            }
}

TEST_F(MoeTest, ExpertChoiceTiesGoToTheLowerToken) {
    // every score equal: each expert takes the first cap tokens of each group, in token order
    const int N = 12, E = 3;
    ModelConfig cfg = ec_config(8, E, 1, 8, 0, 0, 1.0, false, 2);  // cap = ceil(6*1/3) = 2 per group
    ASSERT_EQ(expert_capacity(cfg, N), 2);
    std::vector<float> p((size_t)N * E, 0.25f);
    Selection s = select_on_device(cfg, N, p);
    for (int e = 0; e < E; e++)
        EXPECT_EQ(std::vector<int>(s.slot_choice.begin() + e * 4, s.slot_choice.begin() + e * 4 + 4),
                  (std::vector<int>{0, 1, 6, 7}))
            << e;
    // a higher score jumps the queue; a zero and a negative zero tie (lower token first)
    std::vector<float> q((size_t)N * E, 0.0f);
    q[(size_t)3 * E + 0] = -0.0f;
    q[(size_t)5 * E + 0] = 0.5f;
    Selection s2 = select_on_device(cfg, N, q);
    EXPECT_EQ(s2.slot_choice[0], 5);
    EXPECT_EQ(s2.slot_choice[1], 0);
    expect_same_selection(s2, select_reference(cfg, N, q));
}

TEST_F(MoeTest, ExpertChoiceSelectionExactAndDeterministicAt16384Tokens) {
    const int N = 16384, E = 8;
    ModelConfig cfg = ec_config(8, E, 2, 8, 0, 0, 1.25, false);
    std::vector<float> p = tied_scores(N, E, 7, 1000);  // ~16 tokens per score value and expert
    // and a softmax-like column of distinct values for one expert
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> U(0.0f, 1.0f);
    for (int t = 0; t < N; t++) p[(size_t)t * E + 3] = U(rng);
    Selection want = select_reference(cfg, N, p);
    simt::set_worker_threads(1);
    Selection one = select_on_device(cfg, N, p);
    simt::set_worker_threads(2);
    Selection two = select_on_device(cfg, N, p);
    expect_same_selection(one, want);
    expect_same_selection(two, want);
    EXPECT_EQ(expert_capacity(cfg, N), 5120);
}

// ---------------------------------------------------------------- the whole layer

void check_ec_layer(MoeFixture& fx, bool training, float aux_coef, float z_coef) {
    SCOPED_TRACE(describe(fx) + " G=" + std::to_string(fx.cfg.groups) + (training ? " training" : " eval"));
    const int N = fx.d.N, E = fx.d.E, R = fx.d.R;
    fx.forward(training);
    fx.backward(aux_coef, z_coef);
    RefRun ref(fx, training, aux_coef, z_coef);
    ASSERT_EQ(R, fx.cfg.groups * fx.d.capacity);
    ASSERT_EQ(download(fx.acts.slot_choice, (size_t)E * R), ref.st.slot_choice);
    ASSERT_EQ(download(fx.acts.ec_slot, (size_t)N * E), ref.st.ec_slot);
    EXPECT_TRUE(all_close(download(fx.acts.ec_gates, (size_t)E * R), ref.st.ec_gates, 1e-5));
    EXPECT_EQ(download(fx.acts.tokens_per_expert_kept, E), ref.st.kept_count);
    EXPECT_TRUE(all_close(download(fx.acts.probs, fx.NE()), ref.st.probs, 1e-5));
    EXPECT_EQ(download(fx.acts.aux, 1)[0], 0.0f);
    EXPECT_NEAR(download(fx.acts.z, 1)[0], ref.st.z, 1e-4 * ref.st.z);
    EXPECT_TRUE(all_close(download(fx.d_out, fx.NC()), ref.out, 1e-4)) << "out";
    EXPECT_TRUE(all_close(download(fx.d_du, fx.NC()), ref.du, 1e-4)) << "du";
    RefMoeParams<float> g = fx.download_grads();
    const bool noise_active = fx.cfg.router_noise && training;
    ref.grads.for_each([&](const char* name, std::vector<float>& want) {
        std::vector<float> got;
        g.for_each([&](const char* n2, std::vector<float>& t) {
            if (std::strcmp(name, n2) == 0) got = t;
        });
        if (!noise_active && std::strcmp(name, "noise") == 0) {
            for (float x : got) ASSERT_EQ(x, 0.0f) << "W_n gets no gradient without noise";
            return;
        }
        EXPECT_TRUE(all_close(got, want, 1e-4)) << name;
    });
}

TEST_F(MoeTest, ExpertChoiceLayerMatchesReference) {
    int checked = 0;
    for (int G : {1, 2})
        for (double cf : {1.0, 2.0})
            for (int S : {0, 1})
                for (bool noise : {false, true}) {
                    MoeFixture fx(ec_config(24, 4, 2, 40, S, 20, cf, noise, G), 38, 200 + G * 13 + S + noise * 7);
                    check_ec_layer(fx, true, 0.3f, 0.05f);
                    checked++;
                }
    EXPECT_EQ(checked, 16);
    MoeFixture fx(ec_config(24, 8, 1, 40, 1, 20, 1.0, true), 37, 9);  // eval: no noise; K = 1
    check_ec_layer(fx, false, 0.3f, 0.05f);
    // with the sigmoid scores and the entropy bonus
    for (const char* gate : {"softmax", "sigmoid"}) {
        ModelConfig c = ec_config(24, 4, 2, 40, 1, 20, 1.0, true, 2);
        c.gate = gate;
        c.entropy_coef = 0.2f;
        MoeFixture fs(c, 38, 31);
        check_ec_layer(fs, true, 0.3f, 0.05f);
    }
}

// The reference backward by central differences in double, selections held fixed (asserted).
TEST(MoeReferenceTest, ExpertChoiceBackwardMatchesFiniteDifferences) {
    struct Case { int E, K; double cf; int S; bool noise; int G; const char* gate; float entropy; };
    for (Case k : {Case{4, 2, 1.0, 1, true, 1, "softmax", 0.0f}, Case{3, 1, 2.0, 0, false, 1, "softmax", 0.0f},
                   Case{4, 2, 1.0, 0, true, 2, "softmax", 0.4f}, Case{4, 2, 1.0, 1, true, 2, "sigmoid", 0.4f}}) {
        const int N = 14;
        ModelConfig cfg = ec_config(6, k.E, k.K, 7, k.S, 5, k.cf, k.noise, k.G);
        cfg.gate = k.gate;
        cfg.entropy_coef = k.entropy;
        cfg.aux_coef = 0.7f, cfg.z_coef = 0.3f;
        SCOPED_TRACE(describe(cfg, N));
        std::mt19937 rng(k.E * 10 + k.K + k.G);
        std::uniform_real_distribution<double> U(-1.0, 1.0);
        std::normal_distribution<double> Gauss(0.0, 1.0);
        RefMoeParams<double> w(cfg);
        w.for_each([&](const char*, std::vector<double>& v) {
            for (auto& x : v) x = 0.5 * U(rng);
        });
        for (auto& x : w.router) x *= 2.0;
        std::vector<double> u((size_t)N * cfg.dim), dout(u.size()), eps((size_t)N * cfg.experts);
        for (auto& x : u) x = U(rng);
        for (auto& x : dout) x = U(rng);
        for (auto& x : eps) x = Gauss(rng);

        RefMoeState<double> base(cfg, N);
        base.noise_eps = eps;
        std::vector<double> out(u.size()), du(u.size());
        ref_moe_forward(out.data(), base, w, u.data(), cfg, N, true);
        EXPECT_EQ(base.aux, 0.0);
        RefMoeParams<double> grads(cfg);
        ref_moe_backward(du.data(), grads, dout.data(), base, w, u.data(), cfg, N);

        auto loss_at = [&](std::vector<double>& x, size_t i, double h) {
            const double keep = x[i];
            x[i] = keep + h;
            RefMoeState<double> st(cfg, N);
            st.noise_eps = eps;
            std::vector<double> o(u.size());
            ref_moe_forward(o.data(), st, w, u.data(), cfg, N, true);
            x[i] = keep;
            EXPECT_EQ(st.ec_slot, base.ec_slot);
            EXPECT_EQ(st.slot_choice, base.slot_choice);
            return ref_moe_loss(o.data(), dout.data(), st, cfg, N);
        };
        auto check = [&](const char* name, std::vector<double>& x, const std::vector<double>& analytic) {
            const double h = 1e-6;
            for (size_t i = 0; i < x.size(); i++) {
                const double fd = (loss_at(x, i, h) - loss_at(x, i, -h)) / (2 * h);
                ASSERT_NEAR(analytic[i], fd, 1e-7 + 1e-6 * std::abs(fd)) << name << "[" << i << "]";
            }
        };
        check("u", u, du);
        std::vector<std::vector<double>*> gv;
        grads.for_each([&](const char*, std::vector<double>& v) { gv.push_back(&v); });
        int idx = 0;
        w.for_each([&](const char* name, std::vector<double>& v) {
            if (!k.noise && std::strcmp(name, "noise") == 0) {
                idx++;
                return;
            }
            check(name, v, *gv[idx++]);
        });
    }
}

// ---------------------------------------------------------------- coverage

// E = 2, N = 4, K = 1, CF 1: cap = 2. Expert 0 scores (0.9, 0.8, 0.1, 0.2) -> tokens 0, 1;
// expert 1 scores (0.7, 0.1, 0.2, 0.6) -> tokens 0, 3. Token 0 is taken twice, 1 and 3 once, 2 never.
TEST_F(MoeTest, ExpertChoiceCoverageCountsTokensPerNumberOfExperts) {
    const int N = 4, E = 2;
    ModelConfig cfg = ec_config(8, E, 1, 8, 0, 0, 1.0, false);
    const std::vector<float> p = {0.9f, 0.7f, 0.8f, 0.1f, 0.1f, 0.2f, 0.2f, 0.6f};
    Selection s = select_on_device(cfg, N, p);
    EXPECT_EQ(s.slot_choice, (std::vector<int>{0, 1, 0, 3}));
    int* ec_slot = dalloc<int>((size_t)N * E);
    int* coverage = dalloc<int>(E + 1);
    upload(ec_slot, s.ec_slot);
    expert_choice_coverage(coverage, ec_slot, N, E);
    EXPECT_EQ(download(coverage, E + 1), (std::vector<int>{1, 2, 1}));
    MoeStats st;
    moe_stats_set_coverage(st, {1, 2, 1});
    EXPECT_DOUBLE_EQ(st.experts_per_token_mean, 1.0);
    EXPECT_EQ(st.experts_per_token_max, 2);
    cudaFree(ec_slot);
    cudaFree(coverage);
}

TEST_F(MoeTest, ExpertChoiceDiagnosticsReportCoverage) {
    MoeFixture fx(ec_config(24, 4, 2, 40, 0, 20, 1.0, false), 37, 21);
    fx.forward(true);
    MoeStatsBuffer buf = moe_stats_alloc(fx.d.E);
    moe_stats_compute(buf, fx.acts, MoeWeights{}, fx.cfg, fx.d.N, 2);
    MoeStats s = moe_stats_read(buf, fx.cfg, fx.d.N, 2);
    moe_stats_free(buf);
    RefRun ref(fx, true, 0.0f, 0.0f, false);
    std::vector<int> want(fx.d.E + 1, 0);
    int most = 0;
    for (int t = 0; t < fx.d.N; t++) {
        int n = 0;
        for (int e = 0; e < fx.d.E; e++) n += ref.st.ec_slot[(size_t)t * fx.d.E + e] >= 0;
        want[n]++;
        most = std::max(most, n);
    }
    EXPECT_TRUE(s.expert_choice);
    EXPECT_EQ(s.coverage, want);
    EXPECT_EQ(s.experts_per_token_max, most);
    EXPECT_NEAR(s.experts_per_token_mean, (double)fx.d.E * fx.d.capacity / fx.d.N, 1e-12);
    EXPECT_EQ(s.tokens_all_dropped, want[0]);
    EXPECT_EQ(s.drop_rate, 0.0);
    for (int e = 0; e < fx.d.E; e++) EXPECT_EQ(s.tokens_kept[e], fx.d.capacity);
    const std::string json = moe_stats_json(s);
    EXPECT_NE(json.find("\"coverage\":["), std::string::npos) << json;
    EXPECT_NE(json.find("\"experts_per_token_mean\":"), std::string::npos) << json;
    EXPECT_NE(json.find("\"experts_per_token_max\":"), std::string::npos) << json;
}

// ---------------------------------------------------------------- determinism, layout

struct EcSnapshot {
    std::vector<float> floats;
    std::vector<int> ints;
    bool operator==(const EcSnapshot& o) const {
        return floats.size() == o.floats.size() && ints == o.ints &&
               std::memcmp(floats.data(), o.floats.data(), floats.size() * sizeof(float)) == 0;
    }
};

EcSnapshot ec_snapshot(MoeFixture& fx) {
    fx.upload_all();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    EcSnapshot s;
    for (const std::vector<float>& v : {download(fx.d_out, fx.NC()), download(fx.d_du, fx.NC()),
                                        download(fx.acts.ec_gates, (size_t)fx.d.E * fx.d.R),
                                        download(fx.acts.z, 1)})
        s.floats.insert(s.floats.end(), v.begin(), v.end());
    RefMoeParams<float> g = fx.download_grads();
    g.for_each([&](const char*, std::vector<float>& v) { s.floats.insert(s.floats.end(), v.begin(), v.end()); });
    for (const std::vector<int>& v : {download(fx.acts.slot_choice, (size_t)fx.d.E * fx.d.R),
                                      download(fx.acts.ec_slot, fx.NE())})
        s.ints.insert(s.ints.end(), v.begin(), v.end());
    return s;
}

TEST_F(MoeTest, ExpertChoiceBitIdenticalAcrossWorkerThreadsAndShuffledOrder) {
    MoeFixture fx(ec_config(32, 8, 2, 48, 1, 24, 1.0, true, 2), 300, 13);
    simt::set_worker_threads(1);
    EcSnapshot one = ec_snapshot(fx);
    simt::set_worker_threads(2);
    EcSnapshot two = ec_snapshot(fx);
    EXPECT_TRUE(one == two) << "1 vs 2 worker threads";
    simt::set_shuffle(12345);
    EcSnapshot shuffled = ec_snapshot(fx);
    EXPECT_TRUE(one == shuffled) << "shuffled thread order";
}

TEST_F(MoeTest, ExpertChoiceNeverCopiesToHostNorSynchronizes) {
    MoeFixture fx(ec_config(24, 8, 2, 40, 1, 20, 1.25, true), 37, 17);
    simt::reset_counters();
    fx.forward(true);
    fx.backward(0.01f, 0.001f);
    fx.forward(false);
    EXPECT_EQ(simt_device_to_host_copies(), 0);
    EXPECT_EQ(simt_synchronizations(), 0);
}

// Token choice (the default) allocates none of expert choice's views: its layout is unchanged.
TEST(MoeConfigTest, ExpertChoiceViewsOnlyWithExpertChoice) {
    ModelConfig tc = moe_config(24, 8, 2, 40, 1, 20, 1.25, true);
    MoeActivations a{};
    moe_activation_views(a, reinterpret_cast<float*>(size_t(1) << 20), reinterpret_cast<int*>(size_t(1) << 30), tc, 37);
    EXPECT_EQ(a.ec_gates, nullptr);
    EXPECT_EQ(a.ec_slot, nullptr);
    EXPECT_EQ(a.ec_sort_keys, nullptr);
    ModelConfig ec = tc;
    ec.routing = "expert";
    EXPECT_GT(moe_activation_ints(ec, 37), moe_activation_ints(tc, 37));
    // capacity with expert choice: ceil(CF * N * K / E), capped at N (per group)
    ec.capacity_factor = 8.0;
    EXPECT_EQ(expert_capacity(ec, 37), 37);
    EXPECT_EQ(expert_buffer_rows(ec, 37), 37);
}

// ---------------------------------------------------------------- the trainer end to end

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string trainer_binary() {
    if (const char* env = getenv("MOE_TRAINER")) return env;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        std::string dir(exe);
        dir = dir.substr(0, dir.rfind('/'));
        std::string c = dir + "/../../train_moe_cpu";
        if (access(c.c_str(), X_OK) == 0) return c;
    }
    char cwd[4096];
    std::string c = std::string(getcwd(cwd, sizeof cwd)) + "/train_moe_cpu";
    return access(c.c_str(), X_OK) == 0 ? c : "";
}

int run_trainer(const std::string& bin, const std::string& dir, const std::string& args, std::string* out) {
    const std::string cmd = "cd " + dir + " && " + bin + " " + args + " >" + dir + "/stdout 2>" + dir + "/stderr </dev/null";
    const int status = std::system(cmd.c_str());
    if (out) *out = read_text(dir + "/stdout") + read_text(dir + "/stderr");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(ExpertChoiceCli, TrainsAndDumpsTheSelections) {
    const std::string bin = trainer_binary();
    ASSERT_FALSE(bin.empty()) << "train_moe_cpu not found (set MOE_TRAINER)";
    char tmpl[] = "/tmp/moe_test_expert_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    const std::string tiny = "--data synthetic --layers 1 --dim 16 --heads 2 --block-size 8 --batch 2 --eval-batches 2 "
                             "--sample-len 16 --experts 4 --top-k 2 --routing expert --plots 0";
    std::string log;
    ASSERT_EQ(run_trainer(bin, dir, tiny + " --steps 2 --log-every 1 --out " + dir + "/run", &log), 0) << log;
    const std::string metrics = read_text(dir + "/run/metrics.jsonl");
    EXPECT_NE(metrics.find("\"coverage\""), std::string::npos) << metrics;
    ASSERT_EQ(run_trainer(bin, dir, tiny + " --dump-state " + dir + "/dump.safetensors", &log), 0) << log;
    safetensors::File f;
    std::string err;
    ASSERT_TRUE(safetensors::read(dir + "/dump.safetensors", f, err)) << err;
    // N = 16, cap = ceil(1.25 * 16 * 2 / 4) = 10 (the default capacity factor)
    ASSERT_NE(f.find("h.0.moe.ec_tokens"), nullptr);
    ASSERT_NE(f.find("h.0.moe.ec_gates"), nullptr);
    EXPECT_EQ(f.find("h.0.moe.ec_tokens")->dtype, "I32");
    EXPECT_EQ(f.find("h.0.moe.ec_tokens")->shape, (std::vector<int64_t>{4, 10}));
    EXPECT_EQ(f.find("h.0.moe.ec_gates")->shape, (std::vector<int64_t>{4, 10}));
    EXPECT_EQ(f.find("h.0.moe.topk_idx"), nullptr);
    EXPECT_EQ(f.find("h.0.moe.kept"), nullptr);
    EXPECT_EQ(f.find("h.0.moe.gates"), nullptr);
    EXPECT_NE(f.find("h.0.moe.noise_eps"), nullptr);
    // with two token groups: [E, G*cap], cap = ceil(1.25 * 8 * 2 / 4) = 5 per group
    const int status = run_trainer(bin, dir, tiny + " --groups 2 --dump-state " + dir + "/dump2.safetensors", &log);
    if (status == 2 && log.find("--groups is not implemented yet") != std::string::npos) {
        printf("note: --groups has not landed in the trainer; the [E, G*cap] dump is not checked end to end\n");
    } else {
        ASSERT_EQ(status, 0) << log;
        safetensors::File f2;
        ASSERT_TRUE(safetensors::read(dir + "/dump2.safetensors", f2, err)) << err;
        ASSERT_NE(f2.find("h.0.moe.ec_tokens"), nullptr);
        EXPECT_EQ(f2.find("h.0.moe.ec_tokens")->shape, (std::vector<int64_t>{4, 10}));
        EXPECT_EQ(f2.find("h.0.moe.ec_gates")->shape, (std::vector<int64_t>{4, 10}));
    }
    std::system(("rm -rf " + dir).c_str());
}

}  // namespace
