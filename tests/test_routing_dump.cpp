// tests/test_routing_dump.cpp: --dump-state together with --resume, end to end through the trainer
// binary (docs/model.md, 30. State dump).
//
// A dump of a checkpoint must be exactly the step the resumed run trains next: the checkpoint's
// weights bit for bit, the batch its batch generator draws next, that step's router noise, and so
// the very loss the resumed run logs for that step. The default dump (no --resume) stays the first
// step of a fresh run.
//
// The binary is ./train_moe_cpu of the repository (as in tests/test_cli.cpp); the environment
// variable MOE_TRAINER overrides the path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "data/dataloader.h"
#include "data/synthetic.h"
#include "run/files.h"
#include "run/safetensors.h"
#include "tests/test_util.h"

namespace {

using test_util::find_trainer;
using test_util::read_file;
using test_util::shell_quote;

struct Ran {
    int status = -1;
    std::string out, err;
};

// The records of metrics.jsonl by step (step 0 is the run's sizes).
std::map<long long, json::Value> records_by_step(const std::string& path) {
    std::map<long long, json::Value> records;
    std::istringstream lines(read_file(path));
    std::string line;
    while (std::getline(lines, line)) {
        json::Value v;
        std::string err;
        EXPECT_TRUE(json::parse(line, v, err)) << line;
        records[(long long)v.get("step")->number] = v;
    }
    return records;
}

// A float field of a record, exactly as logged (the log writes the float's shortest exact text).
float logged(const json::Value& record, const char* key) {
    const json::Value* v = record.get(key);
    EXPECT_NE(v, nullptr) << key;
    return v ? strtof(v->text.c_str(), nullptr) : NAN;
}

float scalar(const safetensors::File& f, const char* name) {
    const safetensors::Tensor* t = f.find(name);
    EXPECT_NE(t, nullptr) << name;
    return t ? t->floats().at(0) : NAN;
}

class ResumeDump : public ::testing::Test {
protected:
    static std::string bin, dir, text;

    static void SetUpTestSuite() {
        bin = find_trainer();
        char tmpl[] = "/tmp/moe_test_dump_XXXXXX";
        dir = mkdtemp(tmpl);
        text = dir + "/text.txt";
        std::ofstream(text, std::ios::binary) << make_synthetic_corpus(5, 4000).text;
    }
    static void TearDownTestSuite() { std::system(("rm -rf " + shell_quote(dir)).c_str()); }
    void SetUp() override { ASSERT_FALSE(bin.empty()) << "train_moe_cpu not found: build it first, or set MOE_TRAINER"; }

    // A tiny MoE (one layer, width 16, block 8, batch 2, 4 experts top-2, router noise on) that
    // logs every step.
    static std::vector<std::string> tiny(std::vector<std::string> more) {
        std::vector<std::string> a = {"--data", text, "--layers", "1", "--dim", "16", "--heads", "2", "--block-size", "8",
                                      "--batch", "2", "--steps", "6", "--eval-batches", "2", "--sample-len", "8",
                                      "--experts", "4", "--top-k", "2", "--log-every", "1", "--plots", "0", "--seed", "3"};
        a.insert(a.end(), more.begin(), more.end());
        return a;
    }
    static Ran run(const std::vector<std::string>& args) {
        static int counter = 0;
        const std::string out = dir + "/stdout" + std::to_string(counter), err = dir + "/stderr" + std::to_string(counter);
        counter++;
        std::string cmd = "cd " + shell_quote(dir) + " && " + shell_quote(bin);
        for (const auto& a : args) cmd += " " + shell_quote(a);
        cmd += " >" + shell_quote(out) + " 2>" + shell_quote(err) + " </dev/null";
        const int status = std::system(cmd.c_str());
        Ran r;
        r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        r.out = read_file(out);
        r.err = read_file(err);
        return r;
    }
    static safetensors::File read(const std::string& path) {
        safetensors::File f;
        std::string err;
        EXPECT_TRUE(safetensors::read(path, f, err)) << err;
        return f;
    }
    // The batch a fresh run of tiny() draws at its step `step` (1-based), from the data loader itself.
    static void batch_of_step(int step, std::vector<int32_t>& x, std::vector<int32_t>& y) {
        TextData data;
        std::string err;
        ASSERT_TRUE(load_dataset(text, 8, data, err)) << err;
        DataLoader dl;
        dl.init(data, 2, 8, 3);
        x.assign(16, 0);
        y.assign(16, 0);
        for (int s = 1; s <= step; s++) dl.next_train(x.data(), y.data());
    }
    // Every tensor of the checkpoint's model file is in the dump under its name, bit for bit.
    static void expect_checkpoint_weights(const safetensors::File& dump, const std::string& model_path) {
        const safetensors::File model = read(model_path);
        ASSERT_FALSE(model.tensors.empty());
        for (const auto& t : model.tensors) {
            const safetensors::Tensor* d = dump.find(t.name);
            ASSERT_NE(d, nullptr) << t.name;
            EXPECT_EQ(d->dtype, t.dtype) << t.name;
            EXPECT_EQ(d->shape, t.shape) << t.name;
            EXPECT_TRUE(d->data == t.data) << t.name << " differs from the checkpoint's";
        }
    }
};
std::string ResumeDump::bin, ResumeDump::dir, ResumeDump::text;

}  // namespace

// Stop after step 3, dump that checkpoint, then resume it: the dump is the resumed run's step 4.
TEST_F(ResumeDump, IsTheStepTheResumedRunTrainsNext) {
    const std::string whole = dir + "/whole", stopped = dir + "/stopped", dump = dir + "/resume_dump.safetensors";
    Ran rw = run(tiny({"--out", whole}));
    ASSERT_EQ(rw.status, 0) << rw.err;
    Ran rs = run(tiny({"--out", stopped, "--stop-at", "3"}));
    ASSERT_EQ(rs.status, 0) << rs.err;
    const std::string checkpoint_model = read_file(stopped + "/model.safetensors"),
                      checkpoint_state = read_file(stopped + "/state.safetensors");
    const std::string checkpoint_copy = dir + "/checkpoint_at_3.safetensors";  // resuming rewrites the original
    std::ofstream(checkpoint_copy, std::ios::binary) << checkpoint_model;

    Ran rd = run({"--resume", stopped + "/model.safetensors", "--dump-state", dump, "--out", dir + "/no_run"});
    ASSERT_EQ(rd.status, 0) << rd.err;
    EXPECT_EQ(rd.err, "");
    EXPECT_NE(rd.out.find("at step 3"), std::string::npos) << rd.out;
    EXPECT_FALSE(path_exists(dir + "/no_run"));  // a dump writes no run
    // The checkpoint is untouched, and resuming it afterwards still continues exactly.
    EXPECT_TRUE(read_file(stopped + "/model.safetensors") == checkpoint_model);
    EXPECT_TRUE(read_file(stopped + "/state.safetensors") == checkpoint_state);
    EXPECT_EQ(records_by_step(stopped + "/metrics.jsonl").size(), 4u);  // sizes, steps 1..3
    Ran rr = run({"--resume", stopped + "/model.safetensors"});
    ASSERT_EQ(rr.status, 0) << rr.err;
    std::map<long long, json::Value> resumed = records_by_step(stopped + "/metrics.jsonl"),
                                     uninterrupted = records_by_step(whole + "/metrics.jsonl");
    ASSERT_EQ(resumed.count(4), 1u);
    ASSERT_EQ(uninterrupted.count(4), 1u);

    const safetensors::File f = read(dump);
    // the checkpoint's model, bit for bit
    expect_checkpoint_weights(f, checkpoint_copy);
    // the batch of step 4, as a fresh loader draws it (so the checkpoint's generator was restored)
    std::vector<int32_t> x, y, x1, y1;
    batch_of_step(4, x, y);
    batch_of_step(1, x1, y1);
    ASSERT_NE(x, x1);  // the check can tell the first batch from the fourth
    ASSERT_NE(f.find("inputs"), nullptr);
    ASSERT_NE(f.find("targets"), nullptr);
    EXPECT_EQ(f.find("inputs")->ints(), x);
    EXPECT_EQ(f.find("targets")->ints(), y);
    // the losses the resumed run (and the uninterrupted one) computed at step 4, exactly: the same
    // weights, batch and router noise (a different noise draw changes the loss)
    for (const auto* record : {&resumed.at(4), &uninterrupted.at(4)}) {
        EXPECT_EQ(scalar(f, "loss.total"), logged(*record, "loss"));
        EXPECT_EQ(scalar(f, "loss.ce"), logged(*record, "ce"));
        EXPECT_EQ(scalar(f, "loss.aux"), logged(*record, "aux"));
        EXPECT_EQ(scalar(f, "loss.z"), logged(*record, "z"));
    }
    EXPECT_NE(scalar(f, "loss.total"), logged(uninterrupted.at(3), "loss"));
    // the gradients are that step's: their norm is the logged one (before clipping), up to the
    // order of the summation
    double sum = 0;
    for (const auto& t : f.tensors)
        if (t.name.rfind("grad.", 0) == 0)
            for (float g : t.floats()) sum += (double)g * g;
    const double norm = logged(uninterrupted.at(4), "grad_norm");
    EXPECT_NEAR(std::sqrt(sum), norm, 1e-4 * norm);
    // and the noise of step 4 is not the noise of step 1
    const std::string fresh_dump = dir + "/fresh_dump.safetensors";
    Ran rf = run(tiny({"--dump-state", fresh_dump}));
    ASSERT_EQ(rf.status, 0) << rf.err;
    const safetensors::File fresh = read(fresh_dump);
    ASSERT_NE(f.find("h.0.moe.noise_eps"), nullptr);
    ASSERT_NE(fresh.find("h.0.moe.noise_eps"), nullptr);
    EXPECT_NE(f.find("h.0.moe.noise_eps")->data, fresh.find("h.0.moe.noise_eps")->data);
    // The dump holds the same names as a fresh one (nothing else about the dump changes).
    ASSERT_EQ(f.tensors.size(), fresh.tensors.size());
    for (size_t i = 0; i < f.tensors.size(); i++) {
        EXPECT_EQ(f.tensors[i].name, fresh.tensors[i].name);
        EXPECT_EQ(f.tensors[i].shape, fresh.tensors[i].shape) << f.tensors[i].name;
    }
}

// The default dump (no --resume) is still the first step of a fresh run: the first batch, and the
// losses the run logs at step 1.
TEST_F(ResumeDump, DefaultDumpIsTheFirstStep) {
    const std::string out = dir + "/first", dump = dir + "/first_dump.safetensors";
    Ran rt = run(tiny({"--out", out, "--steps", "2"}));
    ASSERT_EQ(rt.status, 0) << rt.err;
    Ran rd = run(tiny({"--dump-state", dump, "--steps", "2"}));
    ASSERT_EQ(rd.status, 0) << rd.err;
    const safetensors::File f = read(dump);
    std::vector<int32_t> x, y;
    batch_of_step(1, x, y);
    ASSERT_NE(f.find("inputs"), nullptr);
    EXPECT_EQ(f.find("inputs")->ints(), x);
    EXPECT_EQ(f.find("targets")->ints(), y);
    std::map<long long, json::Value> records = records_by_step(out + "/metrics.jsonl");
    ASSERT_EQ(records.count(1), 1u);
    EXPECT_EQ(scalar(f, "loss.total"), logged(records.at(1), "loss"));
    EXPECT_EQ(scalar(f, "loss.ce"), logged(records.at(1), "ce"));
    EXPECT_EQ(scalar(f, "loss.aux"), logged(records.at(1), "aux"));
    EXPECT_EQ(scalar(f, "loss.z"), logged(records.at(1), "z"));
}

// A finished run's checkpoint can be dumped too (there is no next step to train, but there is a
// next batch); and a dump needs the checkpoint's own text, as --resume does.
TEST_F(ResumeDump, FinishedRunsCheckpointAndItsChecks) {
    const std::string out = dir + "/finished", dump = dir + "/finished_dump.safetensors";
    Ran rt = run(tiny({"--out", out, "--steps", "2"}));
    ASSERT_EQ(rt.status, 0) << rt.err;
    Ran rd = run({"--resume", out + "/model.safetensors", "--dump-state", dump});
    ASSERT_EQ(rd.status, 0) << rd.err;
    const safetensors::File f = read(dump);
    expect_checkpoint_weights(f, out + "/model.safetensors");
    std::vector<int32_t> x, y;
    batch_of_step(3, x, y);
    EXPECT_EQ(f.find("inputs")->ints(), x);
    // a configuration that contradicts the checkpoint is still refused, with nothing written
    const std::string refused = dir + "/refused_dump.safetensors";
    Ran bad = run({"--resume", out + "/model.safetensors", "--dump-state", refused, "--dim", "32"});
    EXPECT_EQ(bad.status, 2);
    EXPECT_NE(bad.err.find("the checkpoint was trained with --dim 16, not 32"), std::string::npos) << bad.err;
    EXPECT_FALSE(path_exists(refused));
}

// With --bias-rate the checkpoint's trained selection bias is part of the dumped model: the dump
// holds it bit for bit, and its losses are still the resumed run's next step (the bias decides the
// routing of that step).
TEST_F(ResumeDump, HoldsTheCheckpointsBias) {
    const std::string whole = dir + "/bias_whole", stopped = dir + "/bias_stopped", dump = dir + "/bias_dump.safetensors";
    Ran rw = run(tiny({"--out", whole, "--bias-rate", "0.01"}));
    ASSERT_EQ(rw.status, 0) << rw.err;
    Ran rs = run(tiny({"--out", stopped, "--bias-rate", "0.01", "--stop-at", "3"}));
    ASSERT_EQ(rs.status, 0) << rs.err;
    Ran rd = run({"--resume", stopped + "/model.safetensors", "--dump-state", dump});
    ASSERT_EQ(rd.status, 0) << rd.err;
    const safetensors::File f = read(dump);
    expect_checkpoint_weights(f, stopped + "/model.safetensors");  // the bias among them
    const safetensors::Tensor* bias = f.find("h.0.moe.router.bias");
    ASSERT_NE(bias, nullptr);
    EXPECT_EQ(bias->shape, std::vector<int64_t>{4});
    bool trained = false;
    for (float b : bias->floats()) trained = trained || b != 0;
    EXPECT_TRUE(trained) << "three steps of --bias-rate 0.01 left the bias at 0";
    std::map<long long, json::Value> uninterrupted = records_by_step(whole + "/metrics.jsonl");
    ASSERT_EQ(uninterrupted.count(4), 1u);
    EXPECT_EQ(scalar(f, "loss.total"), logged(uninterrupted.at(4), "loss"));
    EXPECT_EQ(scalar(f, "loss.aux"), logged(uninterrupted.at(4), "aux"));
}
