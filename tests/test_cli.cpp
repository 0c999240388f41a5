// tests/test_cli.cpp: the trainer binary end to end, on tiny models and small generated texts.
//
//   - every kind of bad input: exit status 2, exactly one line on stderr naming the problem,
//     nothing on stdout, and not one byte changed in an earlier run's directory
//   - determinism: the same seed gives bit-identical losses and weights, run to run
//   - resume: stopping at step N and resuming gives the same losses and weights as never stopping
//   - --help, --dump-state, the files of a run
//
// The binary is ./train_moe_cpu of the repository (`make test-cpu` builds it before the suite
// runs), found next to the test binary's build directory or in the current directory; the
// environment variable MOE_TRAINER overrides the path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "data/synthetic.h"
#include "run/files.h"
#include "run/safetensors.h"
#include "tests/test_util.h"

namespace {

using test_util::find_trainer;
using test_util::read_file;
using test_util::shell_quote;
using test_util::write_file;

struct Result {
    int status = -1;
    std::string out, err;
    int err_lines() const {
        int n = 0;
        for (char c : err) n += c == '\n';
        return n;
    }
};

// Everything the suite shares: the binary, a scratch directory, text files, one earlier run.
class Cli : public ::testing::Test {
protected:
    static std::string bin, dir;
    static std::string good, other, empty, short_text;
    static std::map<std::string, std::string> prev_files;  // the earlier run's files, byte for byte

    // A tiny configuration: one layer, width 16, block 8, batch 2.
    static std::vector<std::string> tiny(std::vector<std::string> more = {}) {
        std::vector<std::string> a = {"--data", good, "--layers", "1", "--dim", "16", "--heads", "2", "--block-size", "8",
                                      "--batch", "2", "--steps", "3", "--eval-batches", "2", "--sample-len", "16",
                                      "--experts", "4", "--top-k", "2"};
        a.insert(a.end(), more.begin(), more.end());
        return a;
    }
    static Result run(const std::vector<std::string>& args) {
        static int counter = 0;
        std::string out = dir + "/stdout" + std::to_string(counter), err = dir + "/stderr" + std::to_string(counter);
        counter++;
        std::string cmd = "cd " + shell_quote(dir) + " && " + shell_quote(bin);
        for (const auto& a : args) cmd += " " + shell_quote(a);
        cmd += " >" + shell_quote(out) + " 2>" + shell_quote(err) + " </dev/null";
        int status = std::system(cmd.c_str());
        Result r;
        r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        r.out = read_file(out);
        r.err = read_file(err);
        return r;
    }
    static std::map<std::string, std::string> snapshot(const std::string& d) {
        std::map<std::string, std::string> files;
        std::string listing = dir + "/listing";
        std::system(("ls -A " + shell_quote(d) + " > " + shell_quote(listing)).c_str());
        std::istringstream names(read_file(listing));
        std::string name;
        while (std::getline(names, name)) files[name] = read_file(d + "/" + name);
        return files;
    }

    static void SetUpTestSuite() {
        bin = find_trainer();
        char tmpl[] = "/tmp/moe_test_cli_XXXXXX";
        dir = mkdtemp(tmpl);
        if (bin.empty()) return;
        if (bin[0] != '/') {
            char cwd[4096];
            bin = std::string(getcwd(cwd, sizeof cwd)) + "/" + bin;
        }
        good = dir + "/good.txt";
        other = dir + "/other.txt";
        empty = dir + "/empty.txt";
        short_text = dir + "/short.txt";
        write_file(good, make_synthetic_corpus(11, 4000).text);
        std::string text = make_synthetic_corpus(11, 4000).text;
        write_file(other, std::string(text.rbegin(), text.rend()));  // same vocabulary, another text
        write_file(empty, "");
        write_file(short_text, "to be or not to be");  // 18 characters: 16 train, 2 validation
        Result r = run(tiny({"--out", dir + "/prev"}));
        ASSERT_EQ(r.status, 0) << r.err;
        prev_files = snapshot(dir + "/prev");
    }
    static void TearDownTestSuite() { std::system(("rm -rf " + shell_quote(dir)).c_str()); }

    void SetUp() override {
        ASSERT_FALSE(bin.empty()) << "train_moe_cpu not found: build it first (make test-cpu builds it), or set MOE_TRAINER";
        ASSERT_FALSE(prev_files.empty());
    }

    // Bad input: status 2, one line on stderr containing `expect`, nothing on stdout, the earlier
    // run untouched.
    static void expect_rejected(const std::vector<std::string>& args, const std::string& expect) {
        Result r = run(args);
        std::string cmd;
        for (const auto& a : args) cmd += " " + a;
        EXPECT_EQ(r.status, 2) << cmd << "\n" << r.err;
        EXPECT_EQ(r.err_lines(), 1) << cmd << "\n" << r.err;
        EXPECT_NE(r.err.find(expect), std::string::npos) << cmd << "\nexpected \"" << expect << "\" in: " << r.err;
        EXPECT_EQ(r.out, "") << cmd;
        EXPECT_TRUE(snapshot(dir + "/prev") == prev_files) << cmd << ": the earlier run's directory changed";
    }

    // A copy of the earlier run's checkpoint pair in a fresh directory, for corrupting.
    static std::string checkpoint_copy(const std::string& name) {
        std::string d = dir + "/" + name;
        std::string error;
        make_dirs(d, error);
        write_file(d + "/model.safetensors", prev_files.at("model.safetensors"));
        write_file(d + "/state.safetensors", prev_files.at("state.safetensors"));
        return d;
    }
};
std::string Cli::bin, Cli::dir, Cli::good, Cli::other, Cli::empty, Cli::short_text;
std::map<std::string, std::string> Cli::prev_files;

// A parsed JSON value back as text, numbers exactly as written.
std::string to_text(const json::Value& v) {
    switch (v.type) {
        case json::Value::Type::Number: return v.text;
        case json::Value::Type::String: return json::quote(v.text);
        case json::Value::Type::Array: {
            std::string s = "[";
            for (const auto& x : v.array) s += to_text(x) + ",";
            return s + "]";
        }
        case json::Value::Type::Object: {
            std::string s = "{";
            for (const auto& [k, x] : v.object) s += k + ":" + to_text(x) + ",";
            return s + "}";
        }
        case json::Value::Type::Bool: return v.boolean ? "true" : "false";
        default: return "null";
    }
}

// The records of metrics.jsonl without the timing fields, which differ run to run.
std::vector<std::string> losses_of(const std::string& metrics_path) {
    std::vector<std::string> records;
    std::istringstream lines(read_file(metrics_path));
    std::string line;
    while (std::getline(lines, line)) {
        json::Value v;
        std::string err;
        EXPECT_TRUE(json::parse(line, v, err)) << line;
        std::string r;
        for (const auto& [k, x] : v.object)
            if (k != "ms_per_step" && k != "tokens_per_s") r += k + "=" + to_text(x) + " ";
        records.push_back(r);
    }
    return records;
}

}  // namespace

TEST_F(Cli, EarlierRunWroteEveryFile) {
    const char* files[] = {"metrics.jsonl", "samples.txt", "model.safetensors", "state.safetensors", "summary.json",
                           "specialisation.txt", "loss.png", "expert_load.png", "drop_entropy.png",
                           "expert_grad_norms.png", "load_histogram.png"};
    for (const char* f : files) EXPECT_EQ(prev_files.count(f), 1u) << f;
    EXPECT_EQ(prev_files.size(), std::size(files));  // no temporaries left behind
    json::Value summary;
    std::string err;
    ASSERT_TRUE(json::parse(prev_files.at("summary.json"), summary, err)) << err;
    EXPECT_EQ(summary.get("steps")->number, 3);
    EXPECT_TRUE(summary.get("final_val_loss")->is_number());
    std::vector<std::string> records = losses_of(dir + "/prev/metrics.jsonl");
    ASSERT_FALSE(records.empty());
    EXPECT_NE(records.back().find("step=3 "), std::string::npos);
    EXPECT_NE(records.back().find("val_loss="), std::string::npos);
    EXPECT_NE(records.back().find("moe=[{tokens_routed:["), std::string::npos) << records.back();
    EXPECT_NE(records.back().find("drop_rate:"), std::string::npos);
    EXPECT_NE(records.front().find("step=0 params_total="), std::string::npos) << records.front();
    EXPECT_NE(records.front().find("capacity=[10,]"), std::string::npos) << records.front();  // ceil(1.25*16*2/4)
    safetensors::File model;
    ASSERT_TRUE(safetensors::read(dir + "/prev/model.safetensors", model, err)) << err;
    EXPECT_EQ(*model.meta("dim"), "16");
    EXPECT_EQ(*model.meta("step"), "3");
    EXPECT_NE(model.find("h.0.moe.experts.c_fc.weight"), nullptr);
}

TEST_F(Cli, HelpListsTheFlags) {
    Result r = run({"--help"});
    EXPECT_EQ(r.status, 0);
    for (const char* flag : {"--data", "--resume", "--dump-state", "--experts", "--capacity-factor", "--device"})
        EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
}

TEST_F(Cli, BadFlagsAreRejected) {
    const std::string prev = dir + "/prev";
    expect_rejected(tiny({"--out", prev, "--bogus", "1"}), "unknown flag --bogus");
    expect_rejected(tiny({"--out", prev, "--steps", "12x"}), "--steps: \"12x\" is not an integer");
    expect_rejected(tiny({"--out", prev, "--lr", "1e999"}), "--lr: \"1e999\"");
    expect_rejected(tiny({"--out", prev, "--batch"}), "missing value for --batch");
    expect_rejected(tiny({"--out", prev, "--heads", "3"}), "--heads 3 does not divide --dim 16");
    expect_rejected(tiny({"--out", prev, "--layers", "0"}), "--layers must be at least 1");
    expect_rejected(tiny({"--out", prev, "--batch", "-2"}), "--batch must be at least 1");
    expect_rejected(tiny({"--out", prev, "--dim", "0"}), "--dim must be at least 1");
    expect_rejected(tiny({"--out", prev, "--block-size", "0"}), "--block-size must be at least 1");
    expect_rejected(tiny({"--out", prev, "--top-k", "5"}), "--top-k 5 exceeds --experts 4");
    expect_rejected(tiny({"--out", prev, "--aux-coef", "-1"}), "--aux-coef must not be negative");
    expect_rejected(tiny({"--out", prev, "--device", "gpu"}), "this is the CPU build");
}

TEST_F(Cli, BadDataIsRejected) {
    const std::string prev = dir + "/prev";
    expect_rejected(tiny({"--out", prev, "--data", dir + "/missing.txt"}), "missing.txt: No such file");
    expect_rejected(tiny({"--out", prev, "--data", empty}), "is empty");
    expect_rejected(tiny({"--out", prev, "--data", short_text}), "--block-size 8 needs at least 9 characters");
    expect_rejected(tiny({"--out", prev, "--block-size", "1000"}), "--block-size 1000 needs at least 1001 characters");
}

TEST_F(Cli, ExistingRunDirectoryIsNotOverwritten) {
    expect_rejected(tiny({"--out", dir + "/prev"}), "already holds a run");
    expect_rejected(tiny({"--out", dir + "/prev/metrics.jsonl"}), "is not a directory");
    expect_rejected(tiny({"--out", dir + "/prev/metrics.jsonl/sub"}), "--out cannot create directory");
    expect_rejected(tiny({"--out", dir + "/prev", "--dump-state", dir + "/nodir/dump.safetensors"}), "does not exist");
}

TEST_F(Cli, BadCheckpointsAreRejected) {
    const std::string prev = dir + "/prev", model = prev_files.at("model.safetensors");
    // truncated at several points
    for (size_t cut : {(size_t)0, (size_t)5, (size_t)100, model.size() / 2, model.size() - 1}) {
        std::string d = checkpoint_copy("trunc" + std::to_string(cut));
        write_file(d + "/model.safetensors", model.substr(0, cut));
        expect_rejected(tiny({"--out", prev, "--resume", d + "/model.safetensors"}), "--resume " + d + "/model.safetensors");
        expect_rejected(tiny({"--resume", d + "/model.safetensors"}), "--resume");  // into its own directory
    }
    // corrupt: a header byte flipped, the JSON broken
    {
        std::string d = checkpoint_copy("corrupt"), bad = model;
        bad[8] = '[';
        write_file(d + "/model.safetensors", bad);
        expect_rejected(tiny({"--out", prev, "--resume", d + "/model.safetensors"}), "not a safetensors file");
        bad = model;
        bad[9] = '\x01';
        write_file(d + "/model.safetensors", bad);
        expect_rejected(tiny({"--out", prev, "--resume", d + "/model.safetensors"}), "header is not valid JSON");
    }
    // not a safetensors file at all; no file
    write_file(dir + "/notes.txt", "these are not weights, just a text file of some length\n");
    expect_rejected(tiny({"--out", prev, "--resume", dir + "/notes.txt"}), "not a safetensors file");
    expect_rejected(tiny({"--out", prev, "--resume", dir + "/nothing.safetensors"}), "No such file");
    // a safetensors file that is not a checkpoint (the earlier run's state file)
    expect_rejected(tiny({"--out", prev, "--resume", prev + "/state.safetensors"}), "not a moe.cu checkpoint");
    // another configuration, on the command line (the run directory is the checkpoint's own)
    expect_rejected(tiny({"--resume", prev + "/model.safetensors", "--dim", "32", "--heads", "2"}),
                    "the checkpoint was trained with --dim 16, not 32");
    expect_rejected(tiny({"--resume", prev + "/model.safetensors", "--experts", "0"}), "--experts 4, not 0");
    // another text
    expect_rejected(tiny({"--resume", prev + "/model.safetensors", "--data", other}), "not the text the checkpoint was trained on");
    // the state of another run beside the model
    {
        std::string d = dir + "/mixed";
        Result r = run(tiny({"--out", d, "--lr", "0.002"}));
        ASSERT_EQ(r.status, 0) << r.err;
        write_file(d + "/model.safetensors", model);
        expect_rejected(tiny({"--out", prev, "--resume", d + "/model.safetensors"}), "belongs to another run");
    }
    // a model without its state
    {
        std::string d = checkpoint_copy("nostate");
        unlink((d + "/state.safetensors").c_str());
        expect_rejected(tiny({"--resume", d + "/model.safetensors"}), "state.safetensors: missing");
    }
    // a finished run cannot be resumed
    expect_rejected(tiny({"--resume", prev + "/model.safetensors"}), "already complete");
}

TEST_F(Cli, SameSeedSameLossesAndResumeContinuesExactly) {
    auto args = [&](const std::string& out, std::vector<std::string> more = {}) {
        std::vector<std::string> a = tiny({"--out", out, "--steps", "12", "--log-every", "1", "--eval-every", "4",
                                           "--sample-every", "4", "--warmup", "3"});
        a.insert(a.end(), more.begin(), more.end());
        return a;
    };
    const std::string a = dir + "/det_a", b = dir + "/det_b", c = dir + "/det_c";
    Result ra = run(args(a)), rb = run(args(b));
    ASSERT_EQ(ra.status, 0) << ra.err;
    ASSERT_EQ(rb.status, 0) << rb.err;
    std::vector<std::string> la = losses_of(a + "/metrics.jsonl");
    ASSERT_EQ(la.size(), 13u);  // step 0 (sizes), then steps 1..12
    EXPECT_NE(la[0].find("params_total="), std::string::npos) << la[0];
    EXPECT_NE(la[12].find("step=12 "), std::string::npos) << la[12];
    EXPECT_EQ(la, losses_of(b + "/metrics.jsonl"));
    EXPECT_EQ(read_file(a + "/model.safetensors"), read_file(b + "/model.safetensors"));
    EXPECT_EQ(read_file(a + "/samples.txt"), read_file(b + "/samples.txt"));

    // Stop after step 6, then resume from the checkpoint in the same directory.
    Result rc = run(args(c, {"--stop-at", "6"}));
    ASSERT_EQ(rc.status, 0) << rc.err;
    EXPECT_FALSE(path_exists(c + "/summary.json"));
    EXPECT_EQ(losses_of(c + "/metrics.jsonl").size(), 7u);
    safetensors::File stopped;
    std::string err;
    ASSERT_TRUE(safetensors::read(c + "/model.safetensors", stopped, err)) << err;
    EXPECT_EQ(*stopped.meta("capacity-factor"), "1.25");  // spelled as the float flag spelled it
    Result rr = run({"--resume", c + "/model.safetensors"});  // everything else comes from the checkpoint
    ASSERT_EQ(rr.status, 0) << rr.err;
    EXPECT_NE(rr.out.find("from " + c + "/model.safetensors at step 6"), std::string::npos) << rr.out;
    EXPECT_EQ(losses_of(c + "/metrics.jsonl"), la);
    EXPECT_EQ(read_file(c + "/model.safetensors"), read_file(a + "/model.safetensors"));
    EXPECT_EQ(read_file(c + "/samples.txt"), read_file(a + "/samples.txt"));
    EXPECT_EQ(read_file(c + "/specialisation.txt"), read_file(a + "/specialisation.txt"));
    EXPECT_TRUE(path_exists(c + "/summary.json"));

    // A different seed gives different losses.
    Result rd = run(args(dir + "/det_d", {"--seed", "7"}));
    ASSERT_EQ(rd.status, 0) << rd.err;
    EXPECT_NE(losses_of(dir + "/det_d/metrics.jsonl"), la);
}

// The model's capacity is ceil(cf * N * K / E) from the double the flag holds. With cf 0.1, N 20,
// K 1, E 2 that is 1 (exactly 1.0 before the ceil); the float 0.1f would make it 2.
TEST_F(Cli, CapacityComesFromTheDoubleCapacityFactor) {
    struct Case {
        std::vector<std::string> flags;
        int capacity;
    };
    const std::vector<Case> cases = {
        {{"--capacity-factor", "0.1", "--batch", "5", "--block-size", "4", "--experts", "2", "--top-k", "1"}, 1},
        {{"--capacity-factor", "0.7"}, (int)std::ceil(0.7 * 16 * 2 / 4)},  // tiny: N = 16, K = 2, E = 4
    };
    for (size_t i = 0; i < cases.size(); i++) {
        const std::string out = dir + "/capacity" + std::to_string(i), cap = std::to_string(cases[i].capacity);
        std::vector<std::string> more = {"--out", out, "--steps", "1", "--plots", "0"};
        more.insert(more.end(), cases[i].flags.begin(), cases[i].flags.end());
        Result r = run(tiny(more));
        ASSERT_EQ(r.status, 0) << r.err;
        EXPECT_NE(r.out.find("capacity " + cap + " tokens per expert"), std::string::npos) << r.out;
        std::vector<std::string> records = losses_of(out + "/metrics.jsonl");
        ASSERT_EQ(records.size(), 2u);
        EXPECT_NE(records[0].find("capacity=[" + cap + ",]"), std::string::npos) << records[0];
        EXPECT_NE(records[1].find(",capacity:" + cap + ","), std::string::npos) << records[1];  // the layer's own
        safetensors::File model;
        std::string err;
        ASSERT_TRUE(safetensors::read(out + "/model.safetensors", model, err)) << err;
        EXPECT_EQ(*model.meta("capacity-factor"), cases[i].flags[1]);
    }
    EXPECT_EQ((int)std::ceil((double)0.1f * 20 * 1 / 2), 2);  // the float would have made the first case 2
}

// A checkpoint written while the capacity factor was a float holds the float's shortest text,
// which for 20 is "2e+01" (in the model and in the state). Such a checkpoint resumes, and the run
// continues exactly as if it had never stopped.
TEST_F(Cli, ResumeReadsTheFloatFlagsSpelling) {
    auto args = [&](const std::string& out, std::vector<std::string> more = {}) {
        std::vector<std::string> a = tiny({"--out", out, "--steps", "6", "--log-every", "1", "--capacity-factor", "20",
                                           "--plots", "0"});
        a.insert(a.end(), more.begin(), more.end());
        return a;
    };
    const std::string whole = dir + "/cf20_whole", stopped = dir + "/cf20_stopped";
    Result ra = run(args(whole)), rb = run(args(stopped, {"--stop-at", "3"}));
    ASSERT_EQ(ra.status, 0) << ra.err;
    ASSERT_EQ(rb.status, 0) << rb.err;
    for (const char* name : {"/model.safetensors", "/state.safetensors"}) {
        safetensors::File f;
        std::string err;
        ASSERT_TRUE(safetensors::read(stopped + name, f, err)) << err;
        EXPECT_EQ(*f.meta("capacity-factor"), "20");
        f.metadata["capacity-factor"] = "2e+01";
        ASSERT_TRUE(safetensors::write(stopped + name, f, err)) << err;
    }
    Result rr = run({"--resume", stopped + "/model.safetensors"});
    ASSERT_EQ(rr.status, 0) << rr.err;
    EXPECT_NE(rr.out.find("capacity-factor=20 "), std::string::npos) << rr.out;
    EXPECT_EQ(losses_of(stopped + "/metrics.jsonl"), losses_of(whole + "/metrics.jsonl"));
    EXPECT_EQ(read_file(stopped + "/model.safetensors"), read_file(whole + "/model.safetensors"));
    // and a command line that names the factor in either spelling agrees with it
    Result agree = run({"--resume", stopped + "/model.safetensors", "--capacity-factor", "2e+01", "--steps", "6"});
    EXPECT_EQ(agree.status, 2);  // the run is complete now, which is the only complaint
    EXPECT_NE(agree.err.find("already complete"), std::string::npos) << agree.err;
}

TEST_F(Cli, DenseModelTrains) {
    Result r = run(tiny({"--out", dir + "/dense", "--experts", "0", "--steps", "4", "--plots", "0"}));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("(dense)"), std::string::npos) << r.out;
    EXPECT_FALSE(path_exists(dir + "/dense/loss.png"));  // --plots 0
    EXPECT_FALSE(path_exists(dir + "/dense/specialisation.txt"));  // no experts
    safetensors::File model;
    std::string err;
    ASSERT_TRUE(safetensors::read(dir + "/dense/model.safetensors", model, err)) << err;
    EXPECT_NE(model.find("h.0.mlp.c_fc.weight"), nullptr);
    EXPECT_EQ(model.find("h.0.moe.router.weight"), nullptr);
}

TEST_F(Cli, SyntheticCorpusReportsDomainsPerExpert) {
    Result r = run(tiny({"--out", dir + "/synthetic", "--data", "synthetic", "--steps", "2", "--plots", "0"}));
    ASSERT_EQ(r.status, 0) << r.err;
    std::string report = read_file(dir + "/synthetic/specialisation.txt");
    for (const char* domain : {"arithmetic", "brackets", "words", "pattern"}) EXPECT_NE(report.find(domain), std::string::npos) << domain;
    EXPECT_NE(read_file(dir + "/synthetic/summary.json").find("\"specialisation\""), std::string::npos);
}

TEST_F(Cli, DumpStateWritesTheSpecTensorsAndNoRun) {
    const std::string path = dir + "/dump.safetensors";
    Result r = run(tiny({"--dump-state", path, "--out", dir + "/dump_run"}));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_FALSE(path_exists(dir + "/dump_run"));
    safetensors::File f;
    std::string err;
    ASSERT_TRUE(safetensors::read(path, f, err)) << err;
    for (const char* name : {"wte", "grad.wte", "grad.h.0.moe.router.weight", "inputs", "targets", "logits", "loss.total",
                             "loss.ce", "loss.aux", "loss.z", "h.0.moe.topk_idx", "h.0.moe.kept", "h.0.moe.gates",
                             "h.0.moe.noise_eps"})
        EXPECT_NE(f.find(name), nullptr) << name;
    EXPECT_EQ(f.find("inputs")->dtype, "I32");
    EXPECT_EQ(f.find("inputs")->shape, (std::vector<int64_t>{2, 8}));
    EXPECT_EQ(f.find("h.0.moe.topk_idx")->shape, (std::vector<int64_t>{16, 2}));
    EXPECT_EQ(f.find("h.0.moe.noise_eps")->shape, (std::vector<int64_t>{16, 4}));
    EXPECT_EQ(f.find("loss.total")->shape, std::vector<int64_t>{});
    ASSERT_NE(f.meta("vocab"), nullptr);
    EXPECT_EQ(f.find("logits")->shape, (std::vector<int64_t>{2, 8, (int64_t)f.meta("vocab")->size()}));
    // The dump's weights are the initial ones: the same seed gives the same dump.
    Result r2 = run(tiny({"--dump-state", path + "2"}));
    ASSERT_EQ(r2.status, 0) << r2.err;
    EXPECT_EQ(read_file(path), read_file(path + "2"));
}

// The routing variants' impossible combinations (docs/model.md, 31. Routing variants): each is bad
// input with its one line, exit status 2, and nothing written (no run directory).
TEST_F(Cli, ImpossibleRoutingCombinationsAreRejected) {
    struct Case {
        std::vector<std::string> flags;
        std::string message;
    };
    const std::vector<Case> cases = {
        {{"--routing", "expert", "--bias-rate", "0.001"}, "--routing expert cannot be combined with --bias-rate"},
        {{"--routing", "expert", "--overflow", "reroute"}, "--routing expert cannot be combined with --overflow reroute"},
        {{"--routing", "expert", "--capacity-factor", "0"}, "--routing expert needs --capacity-factor > 0"},
        {{"--groups", "3"}, "--groups 3 does not divide --batch 2"},
        {{"--groups", "2", "--batch", "5"}, "--groups 2 does not divide --batch 5"},
        {{"--groups", "0"}, "--groups must be at least 1 (got 0)"},
        {{"--groups", "-1"}, "--groups must be at least 1 (got -1)"},
        {{"--gate", "relu"}, "--gate must be softmax or sigmoid (got \"relu\")"},
        {{"--gate", ""}, "--gate must be softmax or sigmoid (got \"\")"},
        {{"--routing", "tokens"}, "--routing must be token or expert (got \"tokens\")"},
        {{"--overflow", "spill"}, "--overflow must be drop or reroute (got \"spill\")"},
        {{"--bias-rate", "-0.001"}, "--bias-rate must not be negative (got -0.001)"},
        {{"--entropy-coef", "x"}, "--entropy-coef: \"x\" is not a number"},
    };
    const std::string routing_flags_need_experts =
        "the routing flags (--gate, --routing, --overflow, --bias-rate, --entropy-coef, --groups) need --experts > 0";
    std::vector<Case> all = cases;
    for (const auto& flags : std::vector<std::vector<std::string>>{{"--gate", "sigmoid"},
                                                                   {"--routing", "expert"},
                                                                   {"--overflow", "reroute"},
                                                                   {"--bias-rate", "0.001"},
                                                                   {"--entropy-coef", "0.01"},
                                                                   {"--entropy-coef", "-0.01"},
                                                                   {"--groups", "2"}}) {
        std::vector<std::string> f = flags;
        f.insert(f.end(), {"--experts", "0"});
        all.push_back({f, routing_flags_need_experts});
    }
    for (size_t i = 0; i < all.size(); i++) {
        const std::string out = dir + "/bad_routing" + std::to_string(i), dump = out + ".safetensors";
        std::vector<std::string> more = {"--out", out};
        more.insert(more.end(), all[i].flags.begin(), all[i].flags.end());
        expect_rejected(tiny(more), all[i].message);
        EXPECT_FALSE(path_exists(out)) << all[i].message;
        // the same with --dump-state: no dump either
        more.insert(more.end(), {"--dump-state", dump});
        expect_rejected(tiny(more), all[i].message);
        EXPECT_FALSE(path_exists(dump)) << all[i].message;
    }
    // The defaults spelled out are the defaults: accepted, and the same dump as none given.
    const std::string plain = dir + "/routing_plain.safetensors", spelled = dir + "/routing_spelled.safetensors";
    Result a = run(tiny({"--dump-state", plain}));
    Result b = run(tiny({"--dump-state", spelled, "--gate", "softmax", "--routing", "token", "--overflow", "drop",
                         "--bias-rate", "0", "--entropy-coef", "0", "--groups", "1"}));
    ASSERT_EQ(a.status, 0) << a.err;
    ASSERT_EQ(b.status, 0) << b.err;
    EXPECT_EQ(read_file(plain), read_file(spelled));
}

// A checkpoint written before the routing flags existed (its metadata without gate, routing,
// overflow, bias-rate, entropy-coef, groups) resumes with their defaults and continues exactly.
TEST_F(Cli, CheckpointWithoutRoutingKeysResumes) {
    auto args = [&](const std::string& out, std::vector<std::string> more = {}) {
        std::vector<std::string> a = tiny({"--out", out, "--steps", "4", "--log-every", "1", "--plots", "0"});
        a.insert(a.end(), more.begin(), more.end());
        return a;
    };
    const std::string whole = dir + "/old_whole", old = dir + "/old_stopped";
    Result rw = run(args(whole)), rs = run(args(old, {"--stop-at", "2"}));
    ASSERT_EQ(rw.status, 0) << rw.err;
    ASSERT_EQ(rs.status, 0) << rs.err;
    const char* added_later[] = {"gate", "routing", "overflow", "bias-rate", "entropy-coef", "groups"};
    for (const char* name : {"/model.safetensors", "/state.safetensors"}) {
        safetensors::File f;
        std::string err;
        ASSERT_TRUE(safetensors::read(old + name, f, err)) << err;
        for (const char* key : added_later) {
            ASSERT_NE(f.meta(key), nullptr) << name << " " << key;  // a fresh checkpoint has them all
            f.metadata.erase(key);
        }
        ASSERT_TRUE(safetensors::write(old + name, f, err)) << err;
    }
    Result rr = run({"--resume", old + "/model.safetensors"});
    ASSERT_EQ(rr.status, 0) << rr.err;
    EXPECT_EQ(losses_of(old + "/metrics.jsonl"), losses_of(whole + "/metrics.jsonl"));
    EXPECT_EQ(read_file(old + "/model.safetensors"), read_file(whole + "/model.safetensors"));
    safetensors::File resumed;
    std::string err;
    ASSERT_TRUE(safetensors::read(old + "/model.safetensors", resumed, err)) << err;
    for (const char* key : added_later) EXPECT_NE(resumed.meta(key), nullptr) << key;  // written again
    EXPECT_EQ(*resumed.meta("gate"), "softmax");
    EXPECT_EQ(*resumed.meta("groups"), "1");
}
