// tests/test_io.cpp: safetensors, the JSON reader/writer, the configuration table, the data
// pipeline, the synthetic corpus and the run files. No kernels, no model: host code only.
#include <gtest/gtest.h>

#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "ablations/study.h"
#include "data/dataloader.h"
#include "data/synthetic.h"
#include "run/config.h"
#include "run/files.h"
#include "run/safetensors.h"
#include "tests/test_util.h"

namespace {

using test_util::read_file;
using test_util::write_file;

// A fresh directory under /tmp, removed with everything in it when the test ends.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/moe_test_io_XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

// A safetensors file from a literal header and `data_bytes` zero bytes (no padding added).
std::string raw_file(const std::string& header, size_t data_bytes) {
    uint64_t n = header.size();
    std::string s((const char*)&n, 8);
    return s + header + std::string(data_bytes, '\0');
}

safetensors::File sample_file() {
    safetensors::File f;
    std::vector<float> a = {1.5f, -2.25f, 3e-8f, 1e30f, 0.0f, -0.0f};
    std::vector<int32_t> b = {7, -1, 2147483647, -2147483647 - 1};
    float scalar = 42.0f;
    f.add_f32("h.0.attn.c_attn.weight", {2, 3}, a.data());
    f.add_i32("inputs", {4}, b.data());
    f.add_f32("loss.total", {}, &scalar);
    f.add_f32("empty", {0, 5}, nullptr);
    f.metadata["layers"] = "4";
    f.metadata["vocab"] = std::string("\n !\"\\'abc\t\x01\x7f", 12) + "\xc3\xa9\xff";
    f.metadata["empty"] = "";
    return f;
}

}  // namespace

// ===================================================================================== JSON

TEST(Json, ParsesValuesAndEscapes) {
    json::Value v;
    std::string err;
    ASSERT_TRUE(json::parse(R"( {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00"} )", v, err)) << err;
    ASSERT_TRUE(v.is_object());
    const json::Value* a = v.get("a");
    ASSERT_TRUE(a && a->is_array());
    ASSERT_EQ(a->array.size(), 5u);
    EXPECT_EQ(a->array[1].number, -2500.0);
    EXPECT_TRUE(a->array[2].boolean);
    EXPECT_EQ(v.get("s")->text, std::string("x\"\\/\b\f\n\r\tA\xe9\xe2\x82\xac\xf0\x9f\x98\x80"));
}

TEST(Json, RejectsMalformedDocuments) {
    const char* bad[] = {"", "{", "{\"a\":}", "{\"a\" 1}", "[1,]", "[1 2]", "{\"a\":1,}", "\"abc", "tru", "01", "1.",
                         "-", "1e", "{\"a\":1}{", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "{\"a\":1,\"a\":2}",
                         "\"a\nb\""};
    for (const char* text : bad) {
        json::Value v;
        std::string err;
        EXPECT_FALSE(json::parse(text, v, err)) << text;
        EXPECT_TRUE(one_line(err)) << text;
    }
    json::Value v;
    std::string err;
    EXPECT_FALSE(json::parse(std::string(1000, '['), v, err));  // deep nesting is an error, not a stack overflow
    EXPECT_NE(err.find("deep"), std::string::npos);
    EXPECT_FALSE(json::parse("{\"k\":1,\"k\":2}", v, err));
    EXPECT_NE(err.find("duplicate"), std::string::npos);
}

TEST(Json, QuoteRoundTripsEveryByteAsAscii) {
    std::string all;
    for (int c = 0; c < 256; c++) all += (char)c;
    std::string q = json::quote(all);
    for (unsigned char c : q) EXPECT_TRUE(c >= 0x20 && c < 0x7F);
    json::Value v;
    std::string err;
    ASSERT_TRUE(json::parse(q, v, err)) << err;
    EXPECT_EQ(v.text, all);
}

TEST(Json, NumbersRoundTrip) {
    for (double x : {0.0, 1.0, -2.5, 0.1, 1e-7, 3.141592653589793, 1e300}) EXPECT_EQ(strtod(json::number(x).c_str(), nullptr), x);
    EXPECT_EQ(json::number(NAN), "null");
    EXPECT_EQ(json::number(INFINITY), "null");
}

// ============================================================================== safetensors

TEST(Safetensors, RoundTripF32I32AndMetadata) {
    TempDir dir;
    std::string path = dir / "a.safetensors", err;
    safetensors::File f = sample_file();
    ASSERT_TRUE(safetensors::write(path, f, err)) << err;
    EXPECT_FALSE(path_exists(path + ".tmp"));

    std::string bytes = read_file(path);
    uint64_t n;
    memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(n % 8, 0u);  // header padded: the data starts 8-byte aligned
    EXPECT_EQ(bytes[8], '{');

    safetensors::File g;
    ASSERT_TRUE(safetensors::read(path, g, err)) << err;
    EXPECT_EQ(g.metadata, f.metadata);
    ASSERT_EQ(g.tensors.size(), f.tensors.size());
    for (size_t i = 0; i < f.tensors.size(); i++) {
        const safetensors::Tensor* t = g.find(f.tensors[i].name);
        ASSERT_NE(t, nullptr) << f.tensors[i].name;
        EXPECT_EQ(t->dtype, f.tensors[i].dtype);
        EXPECT_EQ(t->shape, f.tensors[i].shape);
        EXPECT_EQ(t->data, f.tensors[i].data);
    }
    EXPECT_EQ(g.find("inputs")->ints()[2], 2147483647);
    EXPECT_EQ(g.find("h.0.attn.c_attn.weight")->floats()[3], 1e30f);
    EXPECT_EQ(g.find("loss.total")->numel(), 1);
}

TEST(Safetensors, ReadsAFileWrittenByAnotherWriter) {
    // What Python's safetensors writes for {"x": torch.tensor([1., 2.])} plus metadata: the same layout.
    TempDir dir;
    std::string header = R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    while (header.size() % 8) header += ' ';
    uint64_t n = header.size();
    float data[2] = {1, 2};
    write_file(dir / "x.safetensors", std::string((const char*)&n, 8) + header + std::string((const char*)data, 8));
    safetensors::File f;
    std::string err;
    ASSERT_TRUE(safetensors::read(dir / "x.safetensors", f, err)) << err;
    EXPECT_EQ(f.find("x")->floats()[1], 2.0f);
    EXPECT_EQ(*f.meta("format"), "pt");
}

TEST(Safetensors, EveryTruncationIsRejected) {
    TempDir dir;
    std::string path = dir / "a.safetensors", err;
    ASSERT_TRUE(safetensors::write(path, sample_file(), err)) << err;
    std::string bytes = read_file(path);
    uint64_t n;
    memcpy(&n, bytes.data(), 8);
    std::set<size_t> cuts = {0, 1, 4, 7, 8, 9, 8 + n / 2, 8 + n - 1, 8 + n, 8 + n + 1, bytes.size() - 4, bytes.size() - 1};
    for (size_t cut : cuts) {
        write_file(dir / "cut", bytes.substr(0, cut));
        safetensors::File g;
        std::string e;
        EXPECT_FALSE(safetensors::read(dir / "cut", g, e)) << "cut at " << cut;
        EXPECT_TRUE(one_line(e)) << e;
        EXPECT_NE(e.find(dir / "cut"), std::string::npos) << e;
    }
    // Trailing bytes after the last tensor are rejected too.
    write_file(dir / "long", bytes + "xxxx");
    safetensors::File g;
    EXPECT_FALSE(safetensors::read(dir / "long", g, err));
    EXPECT_NE(err.find("trailing"), std::string::npos) << err;
}

TEST(Safetensors, FlippedHeaderBytesNeverCrashAndFailCleanly) {
    TempDir dir;
    std::string path = dir / "a.safetensors", err;
    ASSERT_TRUE(safetensors::write(path, sample_file(), err)) << err;
    std::string bytes = read_file(path);
    uint64_t n;
    memcpy(&n, bytes.data(), 8);
    int rejected = 0;
    for (size_t i = 0; i < 8 + n; i++) {
        for (unsigned char x : {i % 2 ? 0x01 : 0x80}) {  // low and high bits, alternating
            std::string b = bytes;
            b[i] = (char)(b[i] ^ x);
            write_file(dir / "flip", b);
            safetensors::File g;
            std::string e;
            if (!safetensors::read(dir / "flip", g, e)) {
                rejected++;
                EXPECT_TRUE(one_line(e)) << e;
            }
        }
    }
    EXPECT_GT(rejected, (int)(8 + n) / 2);  // most flips break something; none crashes
}

TEST(Safetensors, CorruptHeadersGiveClearErrors) {
    TempDir dir;
    struct Case {
        std::string file, expect;
    };
    const std::string t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    std::vector<Case> cases = {
        {"", "shorter than the 8-byte"},
        {"abc", "shorter than the 8-byte"},
        {"hello world, this is text", "not a safetensors file"},
        {std::string("\xff\xff\xff\xff\xff\xff\xff\x0f", 8) + "{}", "header length"},
        {raw_file("", 0), "header of 0 bytes"},
        {raw_file("[1,2,3]", 0), "does not start with '{'"},
        {raw_file("{\"t\":", 0), "not valid JSON"},
        {raw_file("{" + t + "," + t + "}", 8), "duplicate key \"t\""},
        {raw_file(R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", 16), "unsupported dtype F64"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", 8), "out of range"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,4]}})", 8), "out of range"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "dtype and shape need 12"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "invalid dimension"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", 8), "not non-negative integers"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", 8), "not non-negative integers"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "data_offsets"},
        {raw_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8), "dtype"},
        {raw_file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", 8), "shape"},
        {raw_file(R"({"t":[1]})", 8), "not an object"},
        {raw_file(R"({"__metadata__":{"a":1}})", 0), "not a string"},
        {raw_file(R"({"__metadata__":"x"})", 0), "__metadata__ is not an object"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "gap"},
        {raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "overlaps"},
        {raw_file(R"({"t":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})", 8), "need more"},
    };
    for (const auto& c : cases) {
        write_file(dir / "bad", c.file);
        safetensors::File f;
        std::string err;
        EXPECT_FALSE(safetensors::read(dir / "bad", f, err)) << c.expect;
        EXPECT_TRUE(one_line(err)) << err;
        EXPECT_NE(err.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in: " << err;
    }
    safetensors::File f;
    std::string err;
    EXPECT_FALSE(safetensors::read(dir / "missing", f, err));
    EXPECT_NE(err.find("No such file"), std::string::npos) << err;
    EXPECT_FALSE(safetensors::read(dir.path, f, err));
    EXPECT_NE(err.find("directory"), std::string::npos) << err;
}

TEST(Safetensors, WriterRejectsInvalidInput) {
    TempDir dir;
    std::string err;
    safetensors::File f = sample_file();
    f.tensors.push_back(f.tensors[0]);
    EXPECT_FALSE(safetensors::write(dir / "x", f, err));
    EXPECT_NE(err.find("duplicate"), std::string::npos);
    f = sample_file();
    f.tensors[0].dtype = "F16";
    EXPECT_FALSE(safetensors::write(dir / "x", f, err));
    f = sample_file();
    f.tensors[0].data.pop_back();
    EXPECT_FALSE(safetensors::write(dir / "x", f, err));
    EXPECT_FALSE(path_exists(dir / "x"));
    EXPECT_FALSE(path_exists(dir / "x.tmp"));
    // An unwritable place: an error, no file, no temporary.
    EXPECT_FALSE(safetensors::write(dir / "no/such/dir/x", sample_file(), err));
    EXPECT_TRUE(one_line(err));
}

TEST(Safetensors, FailedRenameLeavesTheOldFileAndNoTemporary) {
    TempDir dir;
    std::string err;
    ASSERT_TRUE(make_dirs(dir / "target", err));  // renaming a file over a directory fails
    EXPECT_FALSE(safetensors::write(dir / "target", sample_file(), err));
    EXPECT_NE(err.find("rename"), std::string::npos) << err;
    EXPECT_TRUE(is_directory(dir / "target"));
    EXPECT_FALSE(path_exists(dir / "target.tmp"));
}

// A writer killed at random moments never leaves a torn file under the real name: the file is
// always either the old version or a complete new one.
TEST(Safetensors, KilledWriterNeverLeavesATornFile) {
    TempDir dir;
    std::string path = dir / "model.safetensors", err;
    safetensors::File old_file = sample_file();
    ASSERT_TRUE(safetensors::write(path, old_file, err)) << err;
    std::vector<float> big(4 << 20, 0.5f);  // 16 MB: a write takes long enough to be interrupted
    safetensors::File f;  // built before the fork: the child only writes
    f.add_f32("big", {(int64_t)big.size()}, big.data());
    for (int trial = 0; trial < 4; trial++) {
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            std::string e;
            for (int i = 0;; i++) {
                f.metadata["i"] = std::to_string(i);
                safetensors::write(path, f, e);
            }
        }
        usleep(20000 + 15000 * trial);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        safetensors::File g;
        ASSERT_TRUE(safetensors::read(path, g, err)) << err;
        ASSERT_EQ(g.tensors.size(), g.find("big") ? 1u : old_file.tensors.size());
    }
}

// ================================================================================== config

namespace {
bool parse(std::vector<std::string> args, TrainConfig& c, std::string& err, bool gpu = false) {
    std::vector<char*> argv = {(char*)"train_moe"};
    for (auto& a : args) argv.push_back(a.data());
    return parse_config((int)argv.size(), argv.data(), gpu, c, err);
}
}  // namespace

TEST(Config, CpuDefaultsAreNanoGptBaby) {
    TrainConfig c;
    std::string err;
    ASSERT_TRUE(parse({}, c, err)) << err;
    EXPECT_EQ(c.layers, 4);
    EXPECT_EQ(c.heads, 4);
    EXPECT_EQ(c.dim, 128);
    EXPECT_EQ(c.block_size, 64);
    EXPECT_EQ(c.batch, 12);
    EXPECT_EQ(c.steps, 2000);
    EXPECT_EQ(c.lr, 1e-3f);
    EXPECT_EQ(c.min_lr, 1e-4f);
    EXPECT_EQ(c.warmup, 100);
    EXPECT_EQ(c.beta1, 0.9f);
    EXPECT_EQ(c.beta2, 0.99f);
    EXPECT_EQ(c.weight_decay, 0.1f);
    EXPECT_EQ(c.grad_clip, 1.0f);
    EXPECT_EQ(c.seed, 1337);
    EXPECT_EQ(c.data, "data/tinyshakespeare.txt");
    EXPECT_EQ(c.experts, 8);
    EXPECT_EQ(c.top_k, 2);
    EXPECT_EQ(c.expert_hidden, 256);  // 0 = 2*dim, resolved
    EXPECT_EQ(c.shared_experts, 0);
    EXPECT_EQ(c.shared_hidden, 256);
    EXPECT_EQ(c.ffn_hidden, 512);  // 0 = 4*dim
    EXPECT_EQ(c.capacity_factor, 1.25);
    EXPECT_EQ(c.router_noise, 1);
    EXPECT_EQ(c.aux_coef, 0.01f);
    EXPECT_EQ(c.z_coef, 0.001f);
    EXPECT_EQ(c.ep_ranks, 4);
    EXPECT_EQ(c.plots, 1);
    EXPECT_EQ(c.device, "auto");
    EXPECT_EQ(c.eval_batches, 20);
    EXPECT_TRUE(c.given.empty());
    EXPECT_FALSE(c.help);
}

TEST(Config, GpuDefaultsAreNanoGptShakespeareChar) {
    TrainConfig c;
    std::string err;
    ASSERT_TRUE(parse({}, c, err, true)) << err;
    EXPECT_EQ(c.layers, 6);
    EXPECT_EQ(c.heads, 6);
    EXPECT_EQ(c.dim, 384);
    EXPECT_EQ(c.block_size, 256);
    EXPECT_EQ(c.batch, 64);
    EXPECT_EQ(c.steps, 5000);
    EXPECT_EQ(c.lr, 1e-3f);
    EXPECT_EQ(c.min_lr, 1e-4f);
    EXPECT_EQ(c.beta2, 0.99f);
    EXPECT_EQ(c.expert_hidden, 768);
    EXPECT_EQ(c.ffn_hidden, 1536);
}

TEST(Config, BothSpellingsAndDerivedWidths) {
    TrainConfig c;
    std::string err;
    ASSERT_TRUE(parse({"--dim=64", "--heads", "8", "--lr", "3e-4", "--min-lr=0", "--experts", "0", "--data", "synthetic",
                       "--expert-hidden", "100", "--capacity-factor", "0"},
                      c, err))
        << err;
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.heads, 8);
    EXPECT_EQ(c.lr, 3e-4f);
    EXPECT_EQ(c.min_lr, 0.0f);
    EXPECT_EQ(c.experts, 0);
    EXPECT_EQ(c.expert_hidden, 100);
    EXPECT_EQ(c.shared_hidden, 128);
    EXPECT_EQ(c.ffn_hidden, 256);
    EXPECT_EQ(c.capacity_factor, 0.0);
    EXPECT_EQ(c.data, "synthetic");
    EXPECT_EQ(c.given, (std::set<std::string>{"dim", "heads", "lr", "min-lr", "experts", "data", "expert-hidden", "capacity-factor"}));
}

TEST(Config, HelpListsEveryFlagWithItsDefault) {
    TrainConfig c;
    std::string err;
    ASSERT_TRUE(parse({"--help"}, c, err));
    EXPECT_TRUE(c.help);
    std::string help = config_help(false);
    for (const auto& f : flag_table()) {
        EXPECT_NE(help.find(std::string("--") + f.name + " "), std::string::npos) << f.name;
        if (*f.cpu_default) {
            EXPECT_NE(help.find(std::string("(default ") + f.cpu_default + ")"), std::string::npos) << f.name;
        }
    }
    const char* required[] = {"data", "out", "layers", "heads", "dim", "block-size", "batch", "steps", "lr", "min-lr",
                              "warmup", "weight-decay", "grad-clip", "beta1", "beta2", "eval-every", "eval-batches",
                              "sample-every", "sample-len", "log-every", "checkpoint-every", "resume", "seed", "dump-state",
                              "experts", "top-k", "expert-hidden", "shared-experts", "shared-hidden", "capacity-factor",
                              "router-noise", "aux-coef", "z-coef", "ffn-hidden", "ep-ranks", "plots", "device"};
    for (const char* r : required) EXPECT_NE(find_flag(r), nullptr) << r;
    EXPECT_NE(config_help(true).find("(default 384)"), std::string::npos);
}

TEST(Config, BadInputIsOneLineNamingTheFlag) {
    struct Case {
        std::vector<std::string> args;
        std::string expect;
    };
    std::vector<Case> cases = {
        {{"--bogus", "1"}, "unknown flag --bogus"},
        {{"--bogus=1"}, "unknown flag --bogus"},
        {{"stray"}, "unexpected argument \"stray\""},
        {{"-x"}, "unexpected argument"},
        {{"--steps"}, "missing value for --steps"},
        {{"--steps", "--lr", "1"}, "missing value for --steps"},
        {{"--steps", "12x"}, "--steps: \"12x\" is not an integer"},
        {{"--steps", ""}, "--steps: \"\" is not an integer"},
        {{"--steps="}, "--steps: \"\" is not an integer"},
        {{"--steps", "1.5"}, "--steps: \"1.5\""},
        {{"--steps", " 5"}, "--steps"},
        {{"--steps", "99999999999"}, "--steps: \"99999999999\""},
        {{"--lr", "1e999"}, "--lr: \"1e999\" is not a number"},
        {{"--lr", "1e39"}, "--lr: \"1e39\""},
        {{"--lr", "1e-999"}, "--lr: \"1e-999\""},
        {{"--lr", "nan"}, "--lr: \"nan\""},
        {{"--lr", "inf"}, "--lr: \"inf\""},
        {{"--lr", "0x10"}, "--lr: \"0x10\""},
        {{"--lr", "1e-3x"}, "--lr"},
        {{"--lr", ""}, "--lr"},
        {{"--layers", "0"}, "--layers must be at least 1 (got 0)"},
        {{"--heads", "-2"}, "--heads must be at least 1"},
        {{"--dim", "0"}, "--dim must be at least 1"},
        {{"--block-size", "0"}, "--block-size must be at least 1"},
        {{"--batch", "-1"}, "--batch must be at least 1"},
        {{"--steps", "0"}, "--steps must be at least 1"},
        {{"--heads", "3"}, "--heads 3 does not divide --dim 128"},
        {{"--experts", "-1"}, "--experts must be at least 0"},
        {{"--experts", "65"}, "--experts 65 exceeds the supported maximum of 64"},
        {{"--top-k", "0"}, "--top-k must be at least 1"},
        {{"--top-k", "9"}, "--top-k 9 exceeds --experts 8"},
        {{"--experts", "2", "--top-k", "3"}, "--top-k 3 exceeds --experts 2"},
        {{"--expert-hidden", "-4"}, "--expert-hidden must be at least 1"},
        {{"--shared-experts", "-1"}, "--shared-experts must be at least 0"},
        {{"--shared-hidden", "-1"}, "--shared-hidden"},
        {{"--ffn-hidden", "-1"}, "--ffn-hidden"},
        {{"--capacity-factor", "-0.5"}, "--capacity-factor must not be negative"},
        {{"--aux-coef", "-1"}, "--aux-coef must not be negative"},
        {{"--z-coef", "-1e-3"}, "--z-coef must not be negative"},
        {{"--router-noise", "2"}, "--router-noise must be 0 or 1"},
        {{"--plots", "-1"}, "--plots must be 0 or 1"},
        {{"--lr", "0"}, "--lr must be positive"},
        {{"--lr", "-1e-3"}, "--lr must be positive"},
        {{"--lr", "1e-5"}, "--min-lr 0.0001 exceeds --lr 1e-05"},
        {{"--min-lr", "-1"}, "--min-lr must not be negative"},
        {{"--weight-decay", "-0.1"}, "--weight-decay must not be negative"},
        {{"--grad-clip", "-1"}, "--grad-clip must not be negative"},
        {{"--beta1", "1"}, "--beta1 must be in [0, 1)"},
        {{"--beta2", "-0.1"}, "--beta2 must be in [0, 1)"},
        {{"--beta2", "1.5"}, "--beta2 must be in [0, 1)"},
        {{"--warmup", "-1"}, "--warmup must be at least 0"},
        {{"--seed", "-1"}, "--seed must be at least 0"},
        {{"--eval-batches", "0"}, "--eval-batches must be at least 1"},
        {{"--eval-every", "-1"}, "--eval-every must be at least 0"},
        {{"--sample-len", "0"}, "--sample-len must be at least 1"},
        {{"--log-every", "0"}, "--log-every must be at least 1"},
        {{"--checkpoint-every", "-5"}, "--checkpoint-every must be at least 0"},
        {{"--ep-ranks", "0"}, "--ep-ranks must be at least 1"},
        {{"--device", "tpu"}, "--device must be cpu, gpu or auto"},
        {{"--data", ""}, "--data must name"},
        {{"--batch", "100000", "--block-size", "100000"}, "configuration too large"},
    };
    for (const auto& c : cases) {
        TrainConfig cfg;
        std::string err;
        EXPECT_FALSE(parse(c.args, cfg, err)) << c.expect;
        EXPECT_TRUE(one_line(err)) << err;
        EXPECT_NE(err.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in: " << err;
    }
}

TEST(Config, TopKIsFreeWhenDense) {
    TrainConfig c;
    std::string err;
    EXPECT_TRUE(parse({"--experts", "0", "--top-k", "5"}, c, err)) << err;  // K is unused by a dense model
}

TEST(Config, MetadataRoundTrip) {
    TrainConfig a, b;
    std::string err;
    ASSERT_TRUE(parse({"--dim", "48", "--heads", "3", "--lr", "0.0003", "--min-lr", "3e-5", "--capacity-factor", "0.7",
                       "--shared-experts", "1", "--data", "x.txt"},
                      a, err))
        << err;
    auto meta = config_to_metadata(a);
    EXPECT_EQ(meta.at("lr"), "0.0003");
    EXPECT_EQ(meta.at("expert-hidden"), "96");
    EXPECT_EQ(meta.count("resume"), 0u);
    ASSERT_TRUE(config_from_metadata(meta, true, b, err)) << err;  // backend defaults do not leak in
    for (const auto& f : flag_table())
        if (f.trajectory) {
            EXPECT_EQ(get_flag_value(a, f), get_flag_value(b, f)) << f.name;
        }
    EXPECT_EQ(b.data, "x.txt");

    meta.erase("dim");
    EXPECT_FALSE(config_from_metadata(meta, false, b, err));
    EXPECT_NE(err.find("\"dim\""), std::string::npos) << err;
    meta = config_to_metadata(a);
    meta["heads"] = "5";
    EXPECT_FALSE(config_from_metadata(meta, false, b, err));
    EXPECT_NE(err.find("--heads 5 does not divide --dim 48"), std::string::npos) << err;
}

TEST(Config, ResumeMergeKeepsTheCheckpointAndRejectsConflicts) {
    TrainConfig ckpt, cli, merged;
    std::string err;
    ASSERT_TRUE(parse({"--dim", "16", "--heads", "2", "--layers", "1", "--steps", "30"}, ckpt, err)) << err;
    auto parse_cli = [&](std::vector<std::string> args) {
        std::vector<char*> argv = {(char*)"t"};
        for (auto& a : args) argv.push_back(a.data());
        return parse_args((int)argv.size(), argv.data(), false, cli, err);
    };
    ASSERT_TRUE(parse_cli({"--resume", "x/model.safetensors", "--log-every", "1", "--eval-every", "5"}));
    ASSERT_TRUE(merge_resume_config(cli, ckpt, merged, err)) << err;
    EXPECT_EQ(merged.dim, 16);
    EXPECT_EQ(merged.steps, 30);
    EXPECT_EQ(merged.log_every, 1);
    EXPECT_EQ(merged.eval_every, 5);
    EXPECT_EQ(merged.resume, "x/model.safetensors");

    ASSERT_TRUE(parse_cli({"--dim", "16", "--expert-hidden", "0"}));  // same values spelled on the command line
    EXPECT_TRUE(merge_resume_config(cli, ckpt, merged, err)) << err;

    ASSERT_TRUE(parse_cli({"--dim", "32"}));
    EXPECT_FALSE(merge_resume_config(cli, ckpt, merged, err));
    EXPECT_NE(err.find("--dim 16, not 32"), std::string::npos) << err;
    ASSERT_TRUE(parse_cli({"--steps", "40"}));
    EXPECT_FALSE(merge_resume_config(cli, ckpt, merged, err));
    EXPECT_NE(err.find("--steps 30, not 40"), std::string::npos) << err;
    ASSERT_TRUE(parse_cli({"--lr", "2e-3"}));
    EXPECT_FALSE(merge_resume_config(cli, ckpt, merged, err));
    EXPECT_NE(err.find("--lr"), std::string::npos) << err;
}

// The capacity factor is a double: parsed as one (same strictness as the float flags), written
// as the shortest text that reads back to the same double, and read back from checkpoints that
// were written when it was a float.
TEST(Config, CapacityFactorIsParsedStrictlyAsADouble) {
    for (const char* bad : {"", " 1", "1 ", "1.25x", "nan", "inf", "-inf", "0x1p-2", "1e999", "1e-999", "1e-310", "1,5", "--1"}) {
        TrainConfig c;
        std::string err;
        EXPECT_FALSE(parse({std::string("--capacity-factor=") + bad}, c, err)) << bad;
        EXPECT_TRUE(one_line(err)) << err;
        EXPECT_NE(err.find(std::string("--capacity-factor: \"") + bad + "\" is not a number"), std::string::npos) << err;
    }
    struct Case {
        const char* text;
        double value;
    };
    // 0.1 is the value where a float would change the capacity: (double)0.1f * 20 / 2 = 1.0000000149.
    for (const Case& k : {Case{"0.7", 0.7}, Case{"0.1", 0.1}, Case{"1.25", 1.25}, Case{"2", 2.0}, Case{"0", 0.0},
                          Case{"1e-40", 1e-40}, Case{"0.30000000000000004", 0.1 + 0.2}}) {
        TrainConfig c;
        std::string err;
        ASSERT_TRUE(parse({"--capacity-factor", k.text}, c, err)) << k.text << ": " << err;
        EXPECT_EQ(c.capacity_factor, k.value) << k.text;
        EXPECT_EQ(get_flag_value(c, *find_flag("capacity-factor")), k.text);
    }
    EXPECT_NE((double)0.1f, 0.1);  // what the float flag used to hold
    TrainConfig c;
    std::string err;
    EXPECT_FALSE(parse({"--capacity-factor", "1e30"}, c, err));
    EXPECT_NE(err.find("--capacity-factor 1e+30 is too large"), std::string::npos) << err;
    EXPECT_TRUE(parse({"--capacity-factor", "1e30", "--experts", "0"}, c, err)) << err;  // no experts, no capacity
}

TEST(Config, DoublesAreWrittenAsTheShortestTextThatReadsBack) {
    EXPECT_EQ(format_double(0.7), "0.7");
    EXPECT_EQ(format_double(1.25), "1.25");
    EXPECT_EQ(format_double(20), "20");
    EXPECT_EQ(format_double(0), "0");
    EXPECT_EQ(format_double(0.1 + 0.2), "0.30000000000000004");  // 17 digits needed
    EXPECT_EQ(format_double(1e-40), "1e-40");
    for (double x : {0.7, 0.1 + 0.2, 1.0 / 3, 2.0 / 3, 1e-300, 123456789.123456789, 4.35, 0.015625, 1e300}) {
        const std::string text = format_double(x);
        EXPECT_EQ(strtod(text.c_str(), nullptr), x) << text;
        for (int precision = 1; precision <= 17; precision++) {  // no %g text that reads back is shorter
            char other[64];
            snprintf(other, sizeof other, "%.*g", precision, x);
            if (strtod(other, nullptr) == x) {
                EXPECT_LE(text.size(), std::strlen(other)) << text << " vs " << other;
            }
        }
    }
}

TEST(Config, CapacityFactorRoundTripsThroughMetadata) {
    for (const char* text : {"0.7", "0.30000000000000004", "1.25", "0"}) {
        TrainConfig a, b;
        std::string err;
        ASSERT_TRUE(parse({"--capacity-factor", text}, a, err)) << err;
        auto meta = config_to_metadata(a);
        EXPECT_EQ(meta.at("capacity-factor"), text);
        ASSERT_TRUE(config_from_metadata(meta, false, b, err)) << err;
        EXPECT_EQ(std::memcmp(&a.capacity_factor, &b.capacity_factor, sizeof(double)), 0) << text;  // bit for bit
    }
}

// Checkpoints written while the flag was a float hold its shortest float text: "1.25", "0.7", and
// "2e+01" for 20. Each reads back as the double of that text, which is what the trainer of that
// time built its model with (it rounded the float through the same text).
TEST(Config, CheckpointMetadataFromTheFloatFlagStillReads) {
    TrainConfig defaults, c;
    std::string err;
    ASSERT_TRUE(parse({}, defaults, err)) << err;
    struct Case {
        const char* stored;
        double value;
        const char* written_now;
    };
    for (const Case& k : {Case{"1.25", 1.25, "1.25"}, Case{"0.7", 0.7, "0.7"}, Case{"2e+01", 20.0, "20"}, Case{"0.5", 0.5, "0.5"}}) {
        auto meta = config_to_metadata(defaults);
        meta["capacity-factor"] = k.stored;
        ASSERT_TRUE(config_from_metadata(meta, false, c, err)) << k.stored << ": " << err;
        EXPECT_EQ(c.capacity_factor, k.value) << k.stored;
        EXPECT_EQ(c.capacity_factor, strtod(k.stored, nullptr));
        EXPECT_EQ(config_to_metadata(c).at("capacity-factor"), k.written_now);
    }
}

// The capacity the size checks and the model use: ceil(cf * N * K / E) from the double cf.
TEST(Config, CapacityComesFromTheDoubleFactor) {
    TrainConfig c;
    std::string err;
    ASSERT_TRUE(parse({"--capacity-factor", "0.1", "--batch", "5", "--block-size", "4", "--experts", "2", "--top-k", "1"}, c, err))
        << err;
    EXPECT_EQ(expert_capacity(c, 20), 1);  // 0.1 * 20 * 1 / 2 = 1 exactly in double; 0.1f would give 2
    EXPECT_EQ(expert_capacity(c, 20), (int)std::ceil(0.1 * 20 * 1 / 2));
    ASSERT_TRUE(parse({"--capacity-factor", "0.7", "--batch", "2", "--block-size", "8", "--experts", "4", "--top-k", "2"}, c, err))
        << err;
    EXPECT_EQ(expert_capacity(c, 16), (int)std::ceil(0.7 * 16 * 2 / 4));
    EXPECT_EQ(expert_capacity(c, 16), 6);
}

// ablations/ablate.cpp passes the trainer's defaults for every flag its study does not choose
// itself; they come from the flag table, not from a second copy.
TEST(Config, AblationStudyUsesTheTrainersDefaults) {
    const TrainConfig defaults = default_config(false);
    Sweep s;
    EXPECT_EQ(s.data, defaults.data);
    EXPECT_EQ(s.heads, defaults.heads);
    EXPECT_EQ(s.block, defaults.block_size);
    EXPECT_EQ(s.steps, defaults.steps);
    EXPECT_EQ(s.warmup, defaults.warmup);
    EXPECT_EQ(s.seed, defaults.seed);
    EXPECT_EQ(s.experts, defaults.experts);
    EXPECT_EQ(s.log_every, defaults.log_every);
    const std::vector<RunSpec> runs = study(s);
    ASSERT_FALSE(runs.empty());
    int moe_runs = 0;
    for (const RunSpec& run : runs) {
        const auto flags = run_flags(s, run);
        EXPECT_EQ(flags.at("sample-len"), find_flag("sample-len")->cpu_default) << run.name;
        if (flags.at("experts") == "0") continue;
        moe_runs++;
        for (const std::string& name : moe_default_flags()) {
            const FlagSpec* f = find_flag(name);
            ASSERT_NE(f, nullptr) << name;
            if (!run.flags.count(name)) {
                EXPECT_EQ(flags.at(name), f->cpu_default) << run.name << " --" << name;
            }
        }
        // every flag the study passes is one the trainer knows, with a value it accepts
        TrainConfig parsed;
        std::vector<std::string> args;
        for (const auto& [k, v] : flags) args.insert(args.end(), {"--" + k, v});
        std::string err;
        EXPECT_TRUE(parse(args, parsed, err)) << run.name << ": " << err;
    }
    EXPECT_GE(moe_runs, 10);
    EXPECT_NE(runs[1].label.find("cf " + flag_default("capacity-factor", false) + ", noise, aux " +
                                 flag_default("aux-coef", false) + ", z " + flag_default("z-coef", false)),
              std::string::npos)
        << runs[1].label;
}

TEST(ConfigDeathTest, FlagDefaultOfAnUnknownFlagAborts) {
    EXPECT_DEATH(flag_default("no-such-flag", false), "no such flag");
}

// ================================================================================= data

TEST(Data, VocabularyIsTheSortedSetOfBytes) {
    std::string text = "hello, world!\nzebra\xff";
    std::string vocab = build_vocab(text);
    EXPECT_EQ(vocab, std::string("\n !,abdehlorwz\xff"));
    std::vector<int32_t> ids;
    std::string err;
    ASSERT_TRUE(encode(text, vocab, ids, err)) << err;
    EXPECT_EQ(ids[0], (int)vocab.find('h'));
    EXPECT_EQ(decode(ids.data(), ids.size(), vocab), text);
    EXPECT_FALSE(encode("hello?", vocab, ids, err));
    EXPECT_NE(err.find("not in the vocabulary"), std::string::npos);
    std::string e;
    EXPECT_TRUE(validate_vocab(vocab, e));
    EXPECT_FALSE(validate_vocab("ba", e));
    EXPECT_FALSE(validate_vocab("aa", e));
    EXPECT_FALSE(validate_vocab("", e));
    EXPECT_FALSE(validate_vocab(std::string(257, 'a'), e));
    EXPECT_NE(e.find("at most 256"), std::string::npos);
    int32_t bad[2] = {-1, 99};
    EXPECT_EQ(decode(bad, 2, vocab), "??");
}

TEST(Data, SplitsNinetyTen) {
    std::string text;
    for (int i = 0; i < 1000; i++) text += (char)('a' + i % 26);
    TextData d;
    std::string err;
    ASSERT_TRUE(make_dataset(text, "t", d, err)) << err;
    EXPECT_EQ(d.train_size(), 900u);
    EXPECT_EQ(d.val_size(), 100u);
    EXPECT_EQ(d.vocab.size(), 26u);
    EXPECT_EQ(d.tokens[900], 900 % 26);
}

TEST(Data, BatchesAreShiftedWindowsInsideTheirSplit) {
    std::string text;
    for (int i = 0; i < 2000; i++) text += (char)(' ' + (i * 7 + i / 13) % 90);
    TextData d;
    std::string err;
    ASSERT_TRUE(make_dataset(text, "t", d, err)) << err;
    const int B = 16, T = 10;
    DataLoader dl;
    dl.init(d, B, T, 42);
    std::vector<int32_t> x(B * T), y(B * T);
    std::vector<int64_t> starts(B);
    for (int round = 0; round < 50; round++) {
        bool val = round % 2;
        if (val) dl.next_val(x.data(), y.data(), starts.data());
        else dl.next_train(x.data(), y.data(), starts.data());
        for (int b = 0; b < B; b++) {
            int64_t s = starts[b];
            if (val) EXPECT_GE(s, (int64_t)d.split);
            else EXPECT_LE(s + T + 1, (int64_t)d.split);
            EXPECT_LE(s + T + 1, (int64_t)d.tokens.size());
            for (int t = 0; t < T; t++) {
                EXPECT_EQ(x[b * T + t], d.tokens[s + t]);
                EXPECT_EQ(y[b * T + t], d.tokens[s + t + 1]);
                if (t + 1 < T) {
                    EXPECT_EQ(y[b * T + t], x[b * T + t + 1]);
                }
            }
        }
    }
}

TEST(Data, SameSeedSameBatchesAndStateRestores) {
    SyntheticCorpus corpus = make_synthetic_corpus(7, 20000);
    TextData d;
    std::string err;
    ASSERT_TRUE(make_dataset(corpus.text, "s", d, err)) << err;
    const int B = 4, T = 8;
    auto draw = [&](DataLoader& dl, int n) {
        std::vector<int32_t> all, x(B * T), y(B * T);
        for (int i = 0; i < n; i++) {
            dl.next_train(x.data(), y.data());
            all.insert(all.end(), x.begin(), x.end());
            dl.next_val(x.data(), y.data());
            all.insert(all.end(), y.begin(), y.end());
        }
        return all;
    };
    DataLoader a, b, c;
    a.init(d, B, T, 1337);
    b.init(d, B, T, 1337);
    c.init(d, B, T, 1338);
    EXPECT_EQ(draw(a, 5), draw(b, 5));
    EXPECT_NE(draw(a, 5), draw(c, 5));

    // Save mid-way, continue, restore into a fresh loader: the continuation is identical.
    std::string train_state = a.train_rng.save(), val_state = a.val_rng.save();
    std::vector<int32_t> continued = draw(a, 7);
    DataLoader r;
    r.init(d, B, T, 1337);
    ASSERT_TRUE(r.train_rng.restore(train_state));
    ASSERT_TRUE(r.val_rng.restore(val_state));
    EXPECT_EQ(draw(r, 7), continued);

    a.reset_val();  // every evaluation sees the same validation windows
    std::vector<int32_t> x1(B * T), y1(B * T), x2(B * T), y2(B * T);
    a.next_val(x1.data(), y1.data());
    a.reset_val();
    a.next_val(x2.data(), y2.data());
    EXPECT_EQ(x1, x2);
}

TEST(Data, RngStateTextIsValidated) {
    Rng r = Rng::seeded(5, 1);
    Rng s;
    EXPECT_TRUE(s.restore(r.save()));
    EXPECT_EQ(s, r);
    for (const char* bad : {"", "1", "1 2", "x 3", "1 3 4", "-1 3", "1 3x", "99999999999999999999999 3"}) EXPECT_FALSE(s.restore(bad)) << bad;
    // below(n) stays in range and reaches both ends.
    std::set<uint64_t> seen;
    for (int i = 0; i < 2000; i++) {
        uint64_t v = r.below(10);
        ASSERT_LT(v, 10u);
        seen.insert(v);
    }
    EXPECT_EQ(seen.size(), 10u);
    EXPECT_LT(r.below(1ull << 40), 1ull << 40);
}

TEST(Data, BadFilesGiveOneLineErrors) {
    TempDir dir;
    TextData d;
    std::string err;
    EXPECT_FALSE(load_dataset(dir / "missing.txt", 8, d, err));
    EXPECT_NE(err.find("No such file"), std::string::npos) << err;
    EXPECT_TRUE(one_line(err));
    write_file(dir / "empty.txt", "");
    EXPECT_FALSE(load_dataset(dir / "empty.txt", 8, d, err));
    EXPECT_NE(err.find("is empty"), std::string::npos) << err;
    EXPECT_FALSE(load_dataset(dir.path, 8, d, err));
    EXPECT_NE(err.find("directory"), std::string::npos) << err;
    write_file(dir / "short.txt", std::string(50, 'a') + "b");  // 45 train, 6 val characters
    EXPECT_FALSE(load_dataset(dir / "short.txt", 8, d, err));
    EXPECT_NE(err.find("--block-size 8 needs at least 9 characters"), std::string::npos) << err;
    EXPECT_TRUE(one_line(err));
    EXPECT_TRUE(load_dataset(dir / "short.txt", 5, d, err)) << err;
    EXPECT_FALSE(load_dataset(dir / "short.txt", 6, d, err));  // val has 6 < 7
}

TEST(Data, SyntheticSourceLoads) {
    TextData d;
    std::string err;
    ASSERT_TRUE(load_dataset("synthetic", 256, d, err)) << err;
    EXPECT_GE(d.tokens.size(), kSyntheticBytes);
    EXPECT_EQ(d.domains.size(), d.tokens.size());
    EXPECT_EQ(d.name, "synthetic");
}

// ============================================================================ synthetic corpus

TEST(Synthetic, DeterministicWithEveryDomainWellFormed) {
    SyntheticCorpus a = make_synthetic_corpus(3, 50000), b = make_synthetic_corpus(3, 50000), c = make_synthetic_corpus(4, 50000);
    EXPECT_EQ(a.text, b.text);
    EXPECT_EQ(a.domains, b.domains);
    EXPECT_NE(a.text, c.text);
    ASSERT_EQ(a.text.size(), a.domains.size());
    EXPECT_GE(a.text.size(), 50000u);
    EXPECT_EQ(a.text.back(), '\n');

    int lines[kSyntheticDomains] = {};
    size_t begin = 0;
    while (begin < a.text.size()) {
        size_t end = a.text.find('\n', begin);
        ASSERT_NE(end, std::string::npos);
        std::string line = a.text.substr(begin, end - begin);
        int dom = a.domains[begin];
        for (size_t i = begin; i <= end; i++) ASSERT_EQ(a.domains[i], dom);  // one domain per line, '\n' included
        lines[dom]++;
        ASSERT_FALSE(line.empty());
        if (dom == kDomainArithmetic) {
            int x, y, z;
            char op;
            ASSERT_EQ(sscanf(line.c_str(), "%d%c%d=%d", &x, &op, &y, &z), 4) << line;
            EXPECT_EQ(z, op == '+' ? x + y : op == '-' ? x - y : x * y) << line;
        } else if (dom == kDomainBrackets) {
            std::string stack;
            for (char ch : line) {
                if (ch == '(' || ch == '[' || ch == '{') stack += ch;
                else {
                    ASSERT_FALSE(stack.empty()) << line;
                    char o = stack.back();
                    stack.pop_back();
                    EXPECT_TRUE((o == '(' && ch == ')') || (o == '[' && ch == ']') || (o == '{' && ch == '}')) << line;
                }
            }
            EXPECT_TRUE(stack.empty()) << line;
        } else if (dom == kDomainWords) {
            EXPECT_EQ(line.back(), '.');
            for (char ch : line.substr(0, line.size() - 1)) EXPECT_TRUE(ch == ' ' || (ch >= 'a' && ch <= 'z')) << line;
        } else {
            ASSERT_EQ(line.size() % 2, 0u);
            for (size_t i = 0; i + 2 < line.size(); i += 2) {
                EXPECT_EQ(line[i + 2], line[i] == 'z' ? 'a' : line[i] + 1) << line;
                EXPECT_EQ(line[i + 3], line[i + 1] == '9' ? '0' : line[i + 1] + 1) << line;
            }
        }
        begin = end + 1;
    }
    for (int dom = 0; dom < kSyntheticDomains; dom++) EXPECT_GT(lines[dom], 100) << synthetic_domain_name(dom);
    // Even a tiny corpus shows every domain.
    SyntheticCorpus tiny = make_synthetic_corpus(1, 1);
    std::set<int> doms(tiny.domains.begin(), tiny.domains.end());
    EXPECT_EQ(doms.size(), (size_t)kSyntheticDomains);
}

// ================================================================================= run files

TEST(RunFiles, JsonLinesAreValidJson) {
    JsonObject o;
    o.integer("step", 10).flt("loss", 2.5f).flt("nan", NAN).num("d", 0.1).str("s", "a\"b\n").boolean("b", true)
        .flts("v", std::vector<float>{1.0f, 0.25f}).flts("i", std::vector<int>{1, 2});
    json::Value v;
    std::string err;
    ASSERT_TRUE(json::parse(o.str(), v, err)) << o.str() << " " << err;
    EXPECT_EQ(v.get("step")->number, 10);
    EXPECT_EQ(v.get("loss")->text, "2.5");
    EXPECT_EQ(v.get("nan")->type, json::Value::Type::Null);
    EXPECT_EQ(v.get("s")->text, "a\"b\n");
    EXPECT_EQ(v.get("v")->array[1].number, 0.25);

    TempDir dir;
    MetricsLog log;
    ASSERT_TRUE(log.open(dir / "metrics.jsonl", err));
    for (int s = 1; s <= 5; s++) log.write(JsonObject().integer("step", s));
    EXPECT_EQ(read_file(dir / "metrics.jsonl"), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}\n{\"step\":5}\n");
    write_file(dir / "m2", "{\"step\":1}\n{\"step\":4}\n{\"note\":1}\n{\"step\":5}\n{\"step\":6,\"lo");  // torn last line
    ASSERT_TRUE(truncate_metrics(dir / "m2", 4, err)) << err;
    EXPECT_EQ(read_file(dir / "m2"), "{\"step\":1}\n{\"step\":4}\n{\"note\":1}\n");
    EXPECT_TRUE(truncate_metrics(dir / "absent", 4, err));
    EXPECT_FALSE(path_exists(dir / "absent"));

    for (int s : {2, 4, 6}) ASSERT_TRUE(append_sample(dir / "samples.txt", s, "text of step " + std::to_string(s), err));
    std::string all = read_file(dir / "samples.txt");
    EXPECT_EQ(all, "--- step 2 ---\ntext of step 2\n\n--- step 4 ---\ntext of step 4\n\n--- step 6 ---\ntext of step 6\n\n");
    ASSERT_TRUE(truncate_samples(dir / "samples.txt", 6, err));
    EXPECT_EQ(read_file(dir / "samples.txt"), all);
    ASSERT_TRUE(truncate_samples(dir / "samples.txt", 5, err));
    EXPECT_EQ(read_file(dir / "samples.txt"), all.substr(0, all.find("--- step 6")));
    EXPECT_TRUE(truncate_samples(dir / "absent", 4, err));
}

TEST(RunFiles, RunDirectoryChecks) {
    TempDir dir;
    std::string err;
    EXPECT_TRUE(check_run_dir(dir / "new/run", "", err));
    EXPECT_FALSE(path_exists(dir / "new"));  // checking touches nothing
    EXPECT_TRUE(check_run_dir(dir.path, "", err));  // an empty directory is fine
    write_file(dir / "file", "x");
    EXPECT_FALSE(check_run_dir(dir / "file", "", err));
    EXPECT_NE(err.find("not a directory"), std::string::npos);
    write_file(dir / "metrics.jsonl", "");
    EXPECT_FALSE(check_run_dir(dir.path, "", err));
    EXPECT_NE(err.find("already holds a run"), std::string::npos);
    EXPECT_TRUE(check_run_dir(dir.path, dir.path + "/.", err)) << err;  // resuming the run in this directory
    ASSERT_TRUE(make_dirs(dir / "a/b/c", err)) << err;
    EXPECT_TRUE(is_directory(dir / "a/b/c"));
    EXPECT_FALSE(make_dirs(dir / "file/sub", err));
    std::string d1 = default_run_dir();
    EXPECT_EQ(d1.rfind("runs/", 0), 0u);
    EXPECT_EQ(d1.size(), strlen("runs/YYYYmmdd-HHMMSS"));
}

namespace {
// A tiny model's worth of weights and a matching state, written as a checkpoint in `dir`.
void write_tiny_checkpoint(const std::string& dir, const TrainConfig& cfg, long long step, TrainState* out = nullptr) {
    safetensors::File w;
    std::vector<float> a(6, 0.5f), b(3, -1.0f);
    w.add_f32("wte", {2, 3}, a.data());
    w.add_f32("ln_f.bias", {3}, b.data());
    TrainState s;
    s.step = step;
    s.data_hash = 0xfeedface12345678ull;
    s.train_rng = Rng::seeded(1, 1);
    s.val_rng = Rng::seeded(1, 2);
    s.sample_rng = Rng::seeded(1, 3);
    s.extra["noise_offset"] = "1234";
    s.config = config_to_metadata(cfg);
    for (const auto& t : w.tensors) s.m.push_back(t), s.v.push_back(t);
    std::string err;
    ASSERT_TRUE(write_checkpoint(dir, w, s, cfg, "abc", err)) << err;
    if (out) *out = s;
}
}  // namespace

TEST(RunFiles, CheckpointRoundTripAndValidation) {
    TempDir dir;
    TrainConfig cfg;
    std::string err;
    ASSERT_TRUE(parse({"--dim", "16", "--heads", "2", "--layers", "1"}, cfg, err)) << err;
    TrainState written;
    write_tiny_checkpoint(dir.path, cfg, 7, &written);
    EXPECT_FALSE(path_exists(dir / "model.safetensors.tmp"));
    EXPECT_FALSE(path_exists(dir / "state.safetensors.tmp"));

    Checkpoint c;
    ASSERT_TRUE(read_checkpoint(dir / "model.safetensors", false, c, err)) << err;
    EXPECT_EQ(c.step, 7);
    EXPECT_EQ(c.vocab, "abc");
    EXPECT_EQ(c.config.dim, 16);
    EXPECT_EQ(c.state.data_hash, written.data_hash);
    EXPECT_EQ(c.state.train_rng, written.train_rng);
    EXPECT_EQ(c.state.sample_rng, written.sample_rng);
    EXPECT_EQ(c.state.extra.at("noise_offset"), "1234");
    ASSERT_EQ(c.state.m.size(), 2u);
    EXPECT_TRUE(check_resume_tensors(c, {{"wte", {2, 3}}, {"ln_f.bias", {3}}}, err)) << err;
    EXPECT_FALSE(check_resume_tensors(c, {{"wte", {2, 4}}, {"ln_f.bias", {3}}}, err));
    EXPECT_NE(err.find("has shape [2,3], the model needs [2,4]"), std::string::npos) << err;
    EXPECT_FALSE(check_resume_tensors(c, {{"wte", {2, 3}}, {"ln_f.bias", {3}}, {"wpe", {8, 3}}}, err));
    EXPECT_NE(err.find("missing weight wpe"), std::string::npos) << err;
    EXPECT_FALSE(check_resume_tensors(c, {{"wte", {2, 3}}}, err));
    EXPECT_NE(err.find("unexpected tensor ln_f.bias"), std::string::npos) << err;

    // The state of another step (a kill between the two renames).
    TempDir other;
    write_tiny_checkpoint(other.path, cfg, 8);
    ASSERT_EQ(rename((other / "state.safetensors").c_str(), (dir / "state.safetensors").c_str()), 0);
    EXPECT_FALSE(read_checkpoint(dir / "model.safetensors", false, c, err));
    EXPECT_NE(err.find("is from step 8 but the model from step 7"), std::string::npos) << err;

    // The state of another configuration.
    TrainConfig cfg2 = cfg;
    cfg2.lr = 5e-3f;
    write_tiny_checkpoint(other.path, cfg2, 7);
    ASSERT_EQ(rename((other / "state.safetensors").c_str(), (dir / "state.safetensors").c_str()), 0);
    EXPECT_FALSE(read_checkpoint(dir / "model.safetensors", false, c, err));
    EXPECT_NE(err.find("belongs to another run (its --lr"), std::string::npos) << err;

    // No state at all; a state file that is something else.
    unlink((dir / "state.safetensors").c_str());
    EXPECT_FALSE(read_checkpoint(dir / "model.safetensors", false, c, err));
    EXPECT_NE(err.find("state.safetensors: missing"), std::string::npos) << err;
    ASSERT_TRUE(safetensors::write(dir / "state.safetensors", sample_file(), err));
    EXPECT_FALSE(read_checkpoint(dir / "model.safetensors", false, c, err));
    EXPECT_NE(err.find("not a moe.cu state file"), std::string::npos) << err;

    // A safetensors file that is not a moe.cu checkpoint.
    ASSERT_TRUE(safetensors::write(dir / "model.safetensors", sample_file(), err));
    EXPECT_FALSE(read_checkpoint(dir / "model.safetensors", false, c, err));
    EXPECT_NE(err.find("not a moe.cu checkpoint"), std::string::npos) << err;
    EXPECT_TRUE(one_line(err));
}
