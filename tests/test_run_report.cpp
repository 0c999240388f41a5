// Tests of run/report.h: the plots of a run (every PNG written, decodable, of the expected size and
// with visible content), the metrics-line JSON (parses with safetensors.h's reader and reads back
// into a RunHistory), the summary scalars, and the specialisation report of a hand-made routing.
// PNGs go to a fresh temporary directory, or to $MOE_REPORT_TEST_DIR when set (to look at them).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include "run/files.h"
#include "run/report.h"
#include "tests/png_check.h"

namespace {

std::string fresh_dir(const std::string& name) {
    std::string base;
    if (const char* env = getenv("MOE_REPORT_TEST_DIR")) base = env;
    else {
        char tmpl[] = "/tmp/moe_report_test_XXXXXX";
        char* d = mkdtemp(tmpl);
        base = d ? d : "/tmp";
    }
    std::string dir = base + "/" + name, err;
    EXPECT_TRUE(make_dirs(dir, err)) << err;
    return dir;
}

// Layer statistics of a step: layer 1 drifts towards experts 0 and 1; expert 5 of layer 1 dies.
MoeStats fake_stats(int layer, int j, int steps, int N = 1024, int K = 2, int E = 8) {
    MoeStats s;
    s.N = N;
    s.K = K;
    s.E = E;
    s.C = 64;
    s.ep_ranks = 4;
    ModelConfig routing;
    routing.experts = E;
    routing.top_k = K;
    routing.capacity_factor = 1.25;
    s.capacity = expert_capacity(routing, N);
    const double skew = layer == 0 ? 0.1 : (double)j / steps;
    std::vector<double> w(E);
    double tot = 0;
    for (int e = 0; e < E; e++) {
        w[e] = 1.0 + skew * (e < 2 ? 6.0 : 0.0) + 0.2 * std::sin(0.9 * e + 0.3 * j);
        if (layer == 1 && e == 5 && j > steps / 2) w[e] = 0;
        tot += w[e];
    }
    int assigned = 0;
    for (int e = 0; e < E; e++) {
        int c = e + 1 < E ? (int)std::floor(N * K * w[e] / tot) : N * K - assigned;
        s.tokens_routed.push_back(c);
        s.tokens_kept.push_back(std::min(c, s.capacity));
        assigned += c;
    }
    long dropped = 0;
    int mx = 0;
    for (int e = 0; e < E; e++) {
        dropped += s.tokens_routed[e] - s.tokens_kept[e];
        mx = std::max(mx, s.tokens_routed[e]);
    }
    s.dropped_choices = dropped;
    s.drop_rate = (double)dropped / (N * K);
    s.tokens_all_dropped = (int)(dropped / 10);
    s.load_imbalance = mx / ((double)N * K / E);
    s.load_imbalance_kept = 1.0;
    s.router_entropy = std::log((double)E) * (1 - 0.6 * skew);
    s.aux = 1 + skew;
    s.z = 4 + j * 0.01;
    for (int e = 0; e < E; e++)
        s.expert_grad_norm.push_back(s.tokens_kept[e] == 0 ? 0.0 : 0.02 * (1 + e) * std::exp(-j / 60.0));
    s.cross_rank_choices = 1000;
    s.cross_rank_bytes = 2.0 * 4 * s.C * 1000;
    return s;
}

RunHistory fake_history(bool moe, int steps = 100) {
    RunHistory h;
    h.params_total = 309400;
    h.params_active = 110500;
    for (int j = 1; j <= steps; j++) {
        std::vector<MoeStats> stats;
        if (moe)
            for (int l = 0; l < 2; l++) stats.push_back(fake_stats(l, j, steps));
        const double ce = 1.5 + 2.7 * std::exp(-j / 25.0) + 0.03 * std::sin(j * 1.7);
        h.log_train(10LL * j, ce, 1e-3, stats, ce + 0.02, 0.5, 5000);
        if (j % 10 == 0) h.log_val(10LL * j, ce + 0.1);
    }
    return h;
}

const char* kMoePlots[] = {"loss.png", "expert_load.png", "drop_entropy.png", "expert_grad_norms.png", "load_histogram.png"};

}  // namespace

TEST(RunReport, MoePlotsAreWrittenAndLegible) {
    const std::string dir = fresh_dir("moe");
    RunHistory h = fake_history(true);
    std::string error;
    std::vector<std::string> written;
    ASSERT_TRUE(write_run_plots(h, dir, &error, &written)) << error;
    EXPECT_EQ(written.size(), 5u);
    const plot::Figure figs[] = {loss_figure(h), expert_load_figure(h), drop_entropy_figure(h), expert_grad_norm_figure(h),
                                 load_histogram_figure(h)};
    for (int i = 0; i < 5; i++) {
        SCOPED_TRACE(kMoePlots[i]);
        Image im = load(dir + "/" + kMoePlots[i]);
        ASSERT_TRUE(im.ok);
        EXPECT_EQ(im.w, figs[i].width);
        EXPECT_EQ(im.h, figs[i].height);
        EXPECT_GT(distinct_colours(im), 40u);
        EXPECT_GT(non_white_fraction(im), 0.03);
        EXPECT_GT(dark_pixels(im, 0, 40), 40);  // a title
    }
    // panels: one heatmap per layer, three routing panels, one gradient and one histogram panel per layer
    EXPECT_EQ(figs[1].axes.size(), 2u);
    EXPECT_EQ(figs[2].axes.size(), 3u);
    EXPECT_EQ(figs[3].axes.size(), 2u);
    EXPECT_EQ(figs[4].axes.size(), 2u);
    EXPECT_EQ(figs[1].axes[0].heat_rows, 8);
    EXPECT_EQ(figs[1].axes[0].heat_cols, 100);
    // the histogram marks the uniform level N*K/E = 256
    ASSERT_FALSE(figs[4].axes[0].hlines.empty());
    EXPECT_DOUBLE_EQ(figs[4].axes[0].hlines[0].y, 256.0);
    // the entropy panel marks ln E
    ASSERT_FALSE(figs[2].axes[1].hlines.empty());
    EXPECT_NEAR(figs[2].axes[1].hlines[0].y, std::log(8.0), 1e-12);
}

TEST(RunReport, DenseRunWritesTheLossPlotOnly) {
    const std::string dir = fresh_dir("dense");
    RunHistory h = fake_history(false);
    std::vector<std::string> written;
    ASSERT_TRUE(write_run_plots(h, dir, nullptr, &written));
    ASSERT_EQ(written.size(), 1u);
    EXPECT_EQ(written[0], dir + "/loss.png");
    Image im = load(dir + "/loss.png");
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, 960);
    EXPECT_EQ(im.h, 560);
    EXPECT_GT(non_white_fraction(im), 0.03);
    EXPECT_FALSE(load(dir + "/expert_load.png").ok);
}

TEST(RunReport, UnwritableDirectoryFails) {
    RunHistory h = fake_history(false, 5);
    std::string error;
    EXPECT_FALSE(write_run_plots(h, "/nonexistent/dir", &error));
    EXPECT_NE(error.find("loss.png"), std::string::npos);
}

TEST(RunReport, MetricsLineParsesAndReadsBack) {
    std::vector<MoeStats> stats = {fake_stats(0, 3, 10), fake_stats(1, 7, 10)};
    stats[1].aux = NAN;  // written as null
    JsonObject record;
    record.integer("step", 30).flt("loss", 2.5f).flt("ce", 2.45f).flt("lr", 1e-3f).num("tokens_per_s", 5123);
    record.raw("moe", moe_layers_json(stats));
    const std::string line = record.str();

    json::Value v;
    std::string e;
    ASSERT_TRUE(json::parse(line, v, e)) << e << "\n" << line;
    const json::Value* moe = v.get("moe");
    ASSERT_TRUE(moe && moe->is_array());
    ASSERT_EQ(moe->array.size(), 2u);
    ASSERT_TRUE(moe->array[0].get("tokens_routed")->is_array());
    EXPECT_EQ(moe->array[0].get("tokens_routed")->array.size(), 8u);
    EXPECT_EQ(moe->array[1].get("aux")->type, json::Value::Type::Null);
    EXPECT_EQ(moe_layers_json({}), "[]");

    RunHistory h;
    ASSERT_TRUE(h.add_metrics_line(line, e)) << e;
    ASSERT_EQ(h.records.size(), 1u);
    const StepRecord& r = h.records[0];
    EXPECT_EQ(r.step, 30);
    EXPECT_FLOAT_EQ((float)r.ce, 2.45f);
    EXPECT_FLOAT_EQ((float)r.loss, 2.5f);
    EXPECT_DOUBLE_EQ(r.tokens_per_s, 5123);
    EXPECT_TRUE(std::isnan(r.val_loss));
    ASSERT_EQ(r.moe.size(), 2u);
    for (int l = 0; l < 2; l++) {
        const MoeStats &a = stats[l], &b = r.moe[l];
        EXPECT_EQ(b.E, 8);
        EXPECT_EQ(b.tokens_routed, a.tokens_routed);
        EXPECT_EQ(b.tokens_kept, a.tokens_kept);
        EXPECT_EQ(b.capacity, a.capacity);
        EXPECT_EQ(b.dropped_choices, a.dropped_choices);
        EXPECT_EQ(b.tokens_all_dropped, a.tokens_all_dropped);
        EXPECT_NEAR(b.drop_rate, a.drop_rate, 1e-8);
        EXPECT_NEAR(b.load_imbalance, a.load_imbalance, 1e-8);
        EXPECT_NEAR(b.router_entropy, a.router_entropy, 1e-8);
        EXPECT_NEAR(b.z, a.z, 1e-8);
        ASSERT_EQ(b.expert_grad_norm.size(), 8u);
        for (int k = 0; k < 8; k++) EXPECT_NEAR(b.expert_grad_norm[k], a.expert_grad_norm[k], 1e-9);
        EXPECT_EQ(b.ep_ranks, 4);
        EXPECT_EQ(b.cross_rank_choices, 1000);
        EXPECT_EQ(b.C, 64);
        EXPECT_DOUBLE_EQ(uniform_load(b), 256.0);
    }
    EXPECT_TRUE(std::isnan(r.moe[1].aux));
    EXPECT_NEAR(r.moe[0].aux, stats[0].aux, 1e-8);

    // a val-only record merges into the same step; bad lines fail
    ASSERT_TRUE(h.add_metrics_line("{\"step\":30,\"val_loss\":2.6}", e)) << e;
    EXPECT_EQ(h.records.size(), 1u);
    EXPECT_DOUBLE_EQ(h.records[0].val_loss, 2.6);
    EXPECT_FALSE(h.add_metrics_line("{\"loss\":1}", e));
    EXPECT_FALSE(h.add_metrics_line("{\"step\":1,\"moe\":[{\"x\":1}]}", e));
    EXPECT_FALSE(h.add_metrics_line("not json", e));
}

TEST(RunReport, LoadMetricsFileWithHeaderAndTornTail) {
    const std::string dir = fresh_dir("metrics");
    const std::string path = dir + "/metrics.jsonl";
    FILE* f = fopen(path.c_str(), "w");
    ASSERT_TRUE(f);
    fprintf(f, "{\"step\":0,\"params_total\":1000,\"params_active\":400,\"params_ratio\":2.5,\"capacity\":[320,320]}\n");
    for (int s = 10; s <= 30; s += 10) {
        JsonObject r;
        r.integer("step", s).flt("loss", 3.0f - s * 0.01f).flt("ce", 2.9f - s * 0.01f).flt("lr", 1e-3f);
        r.raw("moe", moe_layers_json({fake_stats(0, s, 30), fake_stats(1, s, 30)}));
        if (s == 20) r.flt("val_loss", 2.8f);
        fprintf(f, "%s\n", r.str().c_str());
    }
    fprintf(f, "{\"step\":40,\"loss\":2.");  // killed mid-write
    fclose(f);
    RunHistory h;
    std::string error;
    ASSERT_TRUE(h.load_metrics(path, error)) << error;
    EXPECT_EQ(h.params_total, 1000);
    EXPECT_EQ(h.params_active, 400);
    EXPECT_EQ(h.capacity, (std::vector<int>{320, 320}));
    ASSERT_EQ(h.records.size(), 3u);
    EXPECT_EQ(h.moe_layers(), 2);
    EXPECT_EQ(h.experts(), 8);
    EXPECT_FLOAT_EQ((float)h.records[1].val_loss, 2.8f);
    h.truncate_after(20);
    EXPECT_EQ(h.records.size(), 2u);

    // a bad line in the middle is an error naming the line
    f = fopen(path.c_str(), "w");
    fprintf(f, "{\"step\":10,\"ce\":1}\ngarbage\n{\"step\":20,\"ce\":1}\n");
    fclose(f);
    EXPECT_FALSE(h.load_metrics(path, error));
    EXPECT_NE(error.find(":2:"), std::string::npos) << error;
    EXPECT_FALSE(h.load_metrics(dir + "/missing.jsonl", error));
}

TEST(RunReport, SummaryMetricsAverageTheTail) {
    RunHistory h;
    for (int j = 1; j <= 10; j++) {
        MoeStats a, b;
        a.E = b.E = 4;
        a.tokens_routed = b.tokens_routed = {1, 1, 1, 1};
        a.drop_rate = 0.1 * j;
        b.drop_rate = 0.0;
        a.load_imbalance = 2.0;
        b.load_imbalance = 4.0;
        a.router_entropy = b.router_entropy = std::log(4.0) / 2;
        a.aux = b.aux = 1.0;
        a.z = b.z = 9.0;
        h.log_train(j * 10, 2.0 + j, 1e-3, {a, b});
    }
    auto m = summary_metrics(h, 0.0);  // the last record only
    auto get = [&](const std::string& k) -> double {
        for (auto& [key, v] : m)
            if (key == k) return v;
        ADD_FAILURE() << "missing " << k;
        return NAN;
    };
    EXPECT_DOUBLE_EQ(get("final_train_ce"), 12.0);
    EXPECT_DOUBLE_EQ(get("drop_rate"), 0.5);  // (1.0 + 0.0) / 2 layers
    EXPECT_DOUBLE_EQ(get("load_imbalance"), 3.0);
    EXPECT_DOUBLE_EQ(get("load_imbalance_max"), 4.0);
    EXPECT_DOUBLE_EQ(get("router_entropy_ratio"), 0.5);
    EXPECT_DOUBLE_EQ(get("router_lse_rms"), 3.0);
    m = summary_metrics(h, 0.25);  // steps >= 77.5: records 80, 90, 100
    EXPECT_NEAR(get("final_train_ce"), 11.0, 1e-12);
    EXPECT_NEAR(get("drop_rate"), (0.8 + 0.9 + 1.0) / 6, 1e-12);
    EXPECT_TRUE(summary_metrics(RunHistory{}).empty());
    // dense: the CE only
    RunHistory d;
    d.log_train(10, 3.0, 1e-3);
    m = summary_metrics(d);
    ASSERT_EQ(m.size(), 1u);
    EXPECT_EQ(m[0].first, "final_train_ce");
}

// The routing variants' own summary fields and plots: expert choice's coverage (histogram, untaken
// share, experts per token, coverage.png) and rerouting's placements (rate, per round, the dashed
// series of drop_entropy.png); a plain history has none of them.
TEST(RunReport, VariantSummariesAndPlots) {
    RunHistory ec, rr;
    for (int j = 1; j <= 10; j++) {
        std::vector<MoeStats> a(2), b(2);
        for (int l = 0; l < 2; l++) {
            a[l].E = b[l].E = 4;
            a[l].tokens_routed = a[l].tokens_kept = {3, 3, 3, 3};  // 6 tokens, capacity 3 each (CF 1, K 2)
            // layer 0: 1 token untaken, 2 by one expert, 2 by two, 1 by four; layer 1: every token by two
            moe_stats_set_coverage(a[l], l == 0 ? std::vector<int>{1, 2, 2, 0, 1} : std::vector<int>{0, 0, 6, 0, 0});
            b[l].tokens_routed = {8, 4, 2, 2};  // N*K = 16 original choices
            b[l].tokens_kept = {4, 4, 4, 2};
            b[l].drop_rate = 2.0 / 16;
            b[l].rerouted_per_round = {l == 0 ? 2 : 4, l == 0 ? j % 2 * 2 : 0};
            b[l].rerouted_choices = b[l].rerouted_per_round[0] + b[l].rerouted_per_round[1];
        }
        ec.log_train(j * 10, 2.0, 1e-3, a);
        rr.log_train(j * 10, 2.0, 1e-3, b);
    }
    auto get = [](const auto& pairs, const std::string& k) {
        for (const auto& [key, v] : pairs)
            if (key == k) return v;
        ADD_FAILURE() << "missing " << k;
        return decltype(pairs[0].second){};
    };
    auto has = [](const auto& pairs, const std::string& k) {
        for (const auto& [key, v] : pairs)
            if (key == k) return true;
        return false;
    };
    const auto m = summary_metrics(ec, 0.0);
    const auto hist = summary_histograms(ec, 0.0);
    EXPECT_DOUBLE_EQ(get(m, "tokens_untaken_rate"), (1.0 / 6 + 0.0) / 2);
    EXPECT_DOUBLE_EQ(get(m, "experts_per_token_max"), 4.0);
    EXPECT_DOUBLE_EQ(get(m, "experts_per_token_mean"), (10.0 / 6 + 2.0) / 2);  // (0+2+4+0+4)/6 and 12/6
    EXPECT_EQ(get(hist, "coverage"), (std::vector<double>{0.5, 1, 4, 0, 0.5}));  // mean of the layers
    EXPECT_FALSE(has(m, "rerouted_rate"));
    EXPECT_FALSE(has(hist, "rerouted_per_round"));

    // rerouting over the last 25% (steps 80, 90, 100): layer 0 places 2, 4, 2 choices, layer 1 4 each, of 16
    const auto mr = summary_metrics(rr, 0.25);
    const auto hr = summary_histograms(rr, 0.25);
    EXPECT_NEAR(get(mr, "rerouted_rate"), (2 + 4 + 2 + 3 * 4) / 16.0 / 6, 1e-12);
    const std::vector<double> per_round = get(hr, "rerouted_per_round");
    ASSERT_EQ(per_round.size(), 2u);
    EXPECT_DOUBLE_EQ(per_round[0], (3 * 2 + 3 * 4) / 6.0);
    EXPECT_DOUBLE_EQ(per_round[1], (0 + 2 + 0) / 6.0);  // layer 0 places 0, 2, 0 in round 2
    EXPECT_FALSE(has(mr, "tokens_untaken_rate"));
    EXPECT_FALSE(has(hr, "coverage"));
    EXPECT_TRUE(summary_histograms(fake_history(true), 0.1).empty());

    // expert choice: coverage.png beside the usual plots; the routing panels show the untaken tokens
    // and the most experts on a token (drop rate and imbalance are 0 and 1 by construction)
    const std::string dir = fresh_dir("expert_choice");
    std::vector<std::string> written;
    ASSERT_TRUE(write_run_plots(ec, dir, nullptr, &written));
    ASSERT_FALSE(written.empty());
    EXPECT_EQ(written.back(), dir + "/coverage.png");
    const plot::Figure cov = coverage_figure(ec);
    ASSERT_EQ(cov.axes.size(), 2u);
    EXPECT_EQ(cov.axes[0].categories.size(), 5u);
    EXPECT_EQ(cov.axes[0].bars[0].values, (std::vector<double>{1, 2, 2, 0, 1}));
    Image im = load(dir + "/coverage.png");
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, cov.width);
    EXPECT_GT(non_white_fraction(im), 0.03);
    const plot::Figure routing_ec = drop_entropy_figure(ec);
    EXPECT_EQ(routing_ec.axes[0].title, "tokens no expert took");
    EXPECT_NEAR(routing_ec.axes[0].series[0].y.back(), 100.0 / 6, 1e-12);
    EXPECT_DOUBLE_EQ(routing_ec.axes[2].series[0].y.back(), 4.0);
    // rerouting: a dashed series per layer, the rerouted share of the choices
    const plot::Figure routing_rr = drop_entropy_figure(rr);
    ASSERT_EQ(routing_rr.axes[0].series.size(), 4u);
    EXPECT_TRUE(routing_rr.axes[0].series[1].dashed);
    EXPECT_DOUBLE_EQ(routing_rr.axes[0].series[1].y.back(), 100.0 * 2 / 16);  // step 100: layer 0 placed 2 + 0
    written.clear();
    ASSERT_TRUE(write_run_plots(rr, fresh_dir("reroute"), nullptr, &written));
    for (const auto& p : written) EXPECT_EQ(p.find("coverage.png"), std::string::npos) << p;
}

TEST(RunReport, PrintableCharacters) {
    EXPECT_EQ(printable_char('a'), "'a'");
    EXPECT_EQ(printable_char(' '), "' '");
    EXPECT_EQ(printable_char('\n'), "'\\n'");
    EXPECT_EQ(printable_char('\t'), "'\\t'");
    EXPECT_EQ(printable_char('\''), "'\\''");
    EXPECT_EQ(printable_char('\\'), "'\\\\'");
    EXPECT_EQ(printable_char(0x01), "'\\x01'");
    EXPECT_EQ(printable_char(0xe9), "'\\xe9'");
}

// A hand-made routing of 2 experts, top-1: expert 0 gets every 'a' and the spaces, expert 1 every
// newline and 'b'; one 'b' choice is dropped (not counted).
TEST(RunReport, SpecialisationListsTheTopCharacters) {
    const std::string vocab = "\n ab";  // ids: 0 '\n', 1 ' ', 2 'a', 3 'b'
    std::vector<int> tokens, topk, kept, domains;
    auto push = [&](int tok, int e, int k, int d) {
        tokens.push_back(tok);
        topk.push_back(e);
        kept.push_back(k);
        domains.push_back(d);
    };
    for (int i = 0; i < 30; i++) push(2, 0, 1, 0);  // 'a' x30 -> expert 0
    for (int i = 0; i < 10; i++) push(1, 0, 1, 0);  // ' ' x10 -> expert 0
    for (int i = 0; i < 25; i++) push(0, 1, 1, 1);  // '\n' x25 -> expert 1
    for (int i = 0; i < 5; i++) push(3, 1, 1, 1);   // 'b' x5 -> expert 1
    push(3, 1, 0, 1);                              // dropped
    const int N = (int)tokens.size();
    Specialisation sp(1, 2, vocab, true, 2);
    sp.add(0, tokens.data(), domains.data(), topk.data(), kept.data(), N, 1);
    auto top0 = sp.chars().top(0, 0, 4), top1 = sp.chars().top(0, 1, 4);
    ASSERT_EQ(top0.size(), 2u);
    EXPECT_EQ(top0[0], (std::pair<int, long long>{2, 30}));
    EXPECT_EQ(top0[1], (std::pair<int, long long>{1, 10}));
    ASSERT_EQ(top1.size(), 2u);
    EXPECT_EQ(top1[0], (std::pair<int, long long>{0, 25}));
    EXPECT_EQ(top1[1], (std::pair<int, long long>{3, 5}));
    const std::string text = sp.text(4, {"letters", "lines"});
    // expert 0: 'a' 75.0%, ' ' 25.0%; expert 1: '\n' 83.3%, 'b' 16.7%
    EXPECT_NE(text.find("expert  0   57.1% of choices | most often: 'a' 75.0% ' ' 25.0%"), std::string::npos) << text;
    EXPECT_NE(text.find("expert  1   42.9% of choices | most often: '\\n' 83.3% 'b' 16.7%"), std::string::npos) << text;
    EXPECT_NE(text.find("largest share of: 'a' 100%"), std::string::npos) << text;
    // perfectly separated domains: MI = H(domain) = H(40/70, 30/70) = 0.6829
    const double h_domain = -(4.0 / 7 * std::log(4.0 / 7) + 3.0 / 7 * std::log(3.0 / 7));
    EXPECT_NEAR(sp.mutual_information(0), h_domain, 1e-9);
    EXPECT_NE(text.find("letters"), std::string::npos);
    EXPECT_NE(text.find("  1.00  0.00"), std::string::npos) << text;
    EXPECT_NE(text.find("I(domain; expert) = 0.6829"), std::string::npos) << text;
    // the summary fragment is valid JSON with the same numbers
    json::Value v;
    std::string e;
    ASSERT_TRUE(json::parse(sp.summary_json(), v, e)) << e << sp.summary_json();
    const json::Value* layers = v.get("layers");
    ASSERT_TRUE(layers && layers->is_array() && layers->array.size() == 1);
    EXPECT_NEAR(layers->array[0].get("mutual_information")->number, h_domain, 1e-9);
    EXPECT_EQ(layers->array[0].get("top_chars")->array[0].text, "a ");
    EXPECT_EQ(layers->array[0].get("top_chars")->array[1].text, "\nb");
    EXPECT_NEAR(v.get("mutual_information_max")->number, std::log(2.0), 1e-9);

    // without domains: no table, and batch_domains of an ordinary text is empty
    Specialisation plain(1, 2, vocab, false);
    plain.add(0, tokens.data(), nullptr, topk.data(), kept.data(), N, 1);
    EXPECT_EQ(plain.text().find("domain x expert"), std::string::npos);
    EXPECT_TRUE(std::isnan(plain.mutual_information(0)));
    int64_t starts[2] = {0, 3};
    EXPECT_TRUE(batch_domains({}, starts, 2, 2).empty());
    std::vector<uint8_t> dom = {0, 1, 2, 3, 0, 1};
    EXPECT_EQ(batch_domains(dom, starts, 2, 2), (std::vector<int>{0, 1, 3, 0}));
}
