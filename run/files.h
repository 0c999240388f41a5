// run/files.h: what a training run leaves on disk, and reading it back for --resume.
//
// A run directory (--out, default runs/<YYYYmmdd-HHMMSS>) holds:
//   metrics.jsonl       one JSON object per logged step, one per line, flushed as written
//   samples.txt         generated text, a "--- step N ---" header before each sample
//   model.safetensors   the weights (docs/model.md, 28. Tensor names); metadata = the configuration by flag
//                       name, "vocab", and "step" (optimizer steps completed)
//   state.safetensors   everything else a resumed run needs, beside the model (see below)
//   summary.json        written at the end of the run
//   specialisation.txt  MoE: which characters (and synthetic domains) each expert receives, at the end
//   *.png               plots of the run at the end (run/report.h; --plots 0 turns them off)
//
// state.safetensors: tensors "m.<name>" and "v.<name>" (F32, the AdamW moments of every weight,
// shaped like it); metadata "format" = "moe.cu-state-1", "step" (must equal the model's),
// "data_hash" (FNV-1a of the training text, hex), "rng.train" / "rng.val" / "rng.sample" (PCG32
// states, "state inc"), any further "x.*" strings the model needs (e.g. its noise generator), and
// the configuration fields again, so a model and a state from different runs cannot be paired.
// Both files are written atomically (temporary + fsync + rename), the state first: a kill between
// the two renames leaves files whose steps differ, which --resume reports instead of using.
//
// Everything here validates before it touches anything and returns a one-line error.
#pragma once
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <type_traits>
#include <vector>
#include <sys/stat.h>
#include <unistd.h>

#include "run/config.h"
#include "data/dataloader.h"
#include "run/safetensors.h"

// ------------------------------------------------------------------------------------ JSON lines

// One JSON object built field by field (keys in insertion order).
struct JsonObject {
    std::string body;
    JsonObject& raw(const std::string& key, const std::string& json_text) {
        if (!body.empty()) body += ",";
        body += json::quote(key) + ":" + json_text;
        return *this;
    }
    JsonObject& integer(const std::string& key, long long v) { return raw(key, std::to_string(v)); }
    JsonObject& num(const std::string& key, double v) { return raw(key, json::number(v)); }
    // A float as its shortest exact decimal ("2.5131", not "2.513099908828735"); NaN/inf -> null.
    JsonObject& flt(const std::string& key, float v) { return raw(key, std::isfinite(v) ? format_float(v) : "null"); }
    JsonObject& str(const std::string& key, const std::string& v) { return raw(key, json::quote(v)); }
    JsonObject& boolean(const std::string& key, bool v) { return raw(key, v ? "true" : "false"); }
    template <typename T>
    JsonObject& flts(const std::string& key, const std::vector<T>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); i++) {
            if (i) s += ",";
            if constexpr (std::is_integral_v<T>) s += std::to_string(v[i]);
            else s += std::isfinite((float)v[i]) ? format_float((float)v[i]) : "null";
        }
        return raw(key, s + "]");
    }
    std::string str() const { return "{" + body + "}"; }
};

// ----------------------------------------------------------------------------------- filesystem

inline bool path_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}
inline bool is_directory(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
inline std::string dir_of(const std::string& path) { return safetensors::detail::parent_dir(path); }

// mkdir -p
inline bool make_dirs(const std::string& path, std::string& error) {
    std::string cur;
    size_t i = 0;
    while (i <= path.size()) {
        size_t slash = path.find('/', i);
        if (slash == std::string::npos) slash = path.size();
        cur = path.substr(0, slash);
        i = slash + 1;
        if (cur.empty()) continue;
        if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
            error = "cannot create directory " + cur + ": " + strerror(errno);
            return false;
        }
        if (!is_directory(cur)) {
            error = "cannot create directory " + path + ": " + cur + " is not a directory";
            return false;
        }
    }
    return true;
}

inline bool write_text_atomic(const std::string& path, const std::string& text, std::string& error) {
    return safetensors::write_file_atomic(path, {{text.data(), text.size()}}, error);
}

inline bool same_file(const std::string& a, const std::string& b) {
    struct stat sa, sb;
    return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// ---------------------------------------------------------------------------------- run directory

constexpr const char* kRunFiles[] = {"metrics.jsonl", "samples.txt", "model.safetensors", "state.safetensors", "summary.json"};

// runs/<YYYYmmdd-HHMMSS>, with -2, -3, ... when that name is taken (two runs in one second).
inline std::string default_run_dir() {
    char buf[32];
    time_t now = time(nullptr);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
    std::string base = std::string("runs/") + buf, dir = base;
    for (int i = 2; path_exists(dir); i++) dir = base + "-" + std::to_string(i);
    return dir;
}

// Checks, without touching anything, that a run may write into `dir`: it must be a directory or
// not exist yet, and must not hold another run's files, except when this run resumes the
// checkpoint in that very directory (`resume_dir`, empty when not resuming).
inline bool check_run_dir(const std::string& dir, const std::string& resume_dir, std::string& error) {
    if (path_exists(dir) && !is_directory(dir)) {
        error = "--out " + dir + " exists and is not a directory";
        return false;
    }
    if (!is_directory(dir)) return true;
    if (!resume_dir.empty() && same_file(dir, resume_dir)) return true;
    for (const char* f : kRunFiles)
        if (path_exists(dir + "/" + f)) {
            error = "--out " + dir + " already holds a run (" + f + "); choose another --out, or --resume " + dir +
                    "/model.safetensors";
            return false;
        }
    return true;
}

// Appends one JSON object per line and flushes it, so a killed run keeps every line it logged.
struct MetricsLog {
    FILE* f = nullptr;
    bool open(const std::string& path, std::string& error) {
        f = fopen(path.c_str(), "a");
        if (!f) error = "cannot open " + path + ": " + strerror(errno);
        return f != nullptr;
    }
    void write(const JsonObject& o) {
        if (!f) return;
        fputs(o.str().c_str(), f);
        fputc('\n', f);
        fflush(f);
    }
    ~MetricsLog() {
        if (f) fclose(f);
    }
};

// For a resumed run: drop the records of steps after the checkpoint (they will be logged again),
// keep every other line as it is. Rewritten atomically; a missing file is fine.
inline bool truncate_metrics(const std::string& path, long long max_step, std::string& error) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return true;
    std::string kept, line;
    int c;
    bool changed = false;
    auto flush_line = [&]() {
        json::Value v;
        std::string e;
        const json::Value* step = nullptr;
        if (json::parse(line, v, e) && v.is_object()) step = v.get("step");
        if (step && step->is_number() && step->number > (double)max_step) changed = true;
        else if (!line.empty()) kept += line + "\n";
        line.clear();
    };
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n') flush_line();
        else line += (char)c;
    }
    if (!line.empty()) changed = true;  // a torn last line (killed mid-write) goes too
    fclose(f);
    return !changed || write_text_atomic(path, kept, error);
}

// The same for samples.txt: everything from the first "--- step N ---" header with N > max_step on.
inline bool truncate_samples(const std::string& path, long long max_step, std::string& error) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return true;
    std::string text;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    fclose(f);
    for (size_t at = 0; at < text.size();) {
        long long step;
        if (sscanf(text.c_str() + at, "--- step %lld ---", &step) == 1 && step > max_step)
            return write_text_atomic(path, text.substr(0, at), error);
        size_t next = text.find('\n', at);
        if (next == std::string::npos) break;
        at = next + 1;
    }
    return true;
}

inline bool append_sample(const std::string& path, long long step, const std::string& text, std::string& error) {
    FILE* f = fopen(path.c_str(), "a");
    if (!f) {
        error = "cannot open " + path + ": " + strerror(errno);
        return false;
    }
    fprintf(f, "--- step %lld ---\n%s\n\n", step, text.c_str());
    fclose(f);
    return true;
}

// ------------------------------------------------------------------------------------ state file

constexpr const char* kStateFormat = "moe.cu-state-1";

struct TrainState {
    long long step = 0;                           // optimizer steps completed
    uint64_t data_hash = 0;                       // text_hash of the training text
    Rng train_rng, val_rng, sample_rng;
    std::map<std::string, std::string> extra;     // model-side states, keys without the "x." prefix
    std::map<std::string, std::string> config;    // config_to_metadata of the run
    std::vector<safetensors::Tensor> m, v;        // AdamW moments, named and shaped like the weights
};

inline std::string hex64(uint64_t x) {
    char buf[24];
    snprintf(buf, sizeof buf, "%016" PRIx64, x);
    return buf;
}

inline bool write_state(const std::string& path, const TrainState& s, std::string& error) {
    safetensors::File f;
    f.metadata = s.config;
    f.metadata["format"] = kStateFormat;
    f.metadata["step"] = std::to_string(s.step);
    f.metadata["data_hash"] = hex64(s.data_hash);
    f.metadata["rng.train"] = s.train_rng.save();
    f.metadata["rng.val"] = s.val_rng.save();
    f.metadata["rng.sample"] = s.sample_rng.save();
    for (const auto& [k, v] : s.extra) f.metadata["x." + k] = v;
    for (const auto& t : s.m) f.tensors.push_back(t), f.tensors.back().name = "m." + t.name;
    for (const auto& t : s.v) f.tensors.push_back(t), f.tensors.back().name = "v." + t.name;
    return safetensors::write(path, f, error);
}

inline bool parse_step(const std::string* text, long long& step) {
    if (!text || text->empty() || text->size() > 12) return false;
    for (char c : *text)
        if (c < '0' || c > '9') return false;
    step = std::stoll(*text);
    return true;
}

inline bool read_state(const std::string& path, TrainState& s, std::string& error) {
    s = TrainState{};
    safetensors::File f;
    if (!safetensors::read(path, f, error)) return false;
    auto bad = [&](const std::string& what) {
        error = path + ": " + what;
        return false;
    };
    const std::string* format = f.meta("format");
    if (!format || *format != kStateFormat) return bad("not a moe.cu state file (format is not " + std::string(kStateFormat) + ")");
    if (!parse_step(f.meta("step"), s.step)) return bad("missing or invalid \"step\"");
    const std::string* hash = f.meta("data_hash");
    char* end = nullptr;
    if (!hash || hash->size() != 16 || (s.data_hash = strtoull(hash->c_str(), &end, 16), *end != '\0'))
        return bad("missing or invalid \"data_hash\"");
    struct { const char* key; Rng* rng; } rngs[] = {{"rng.train", &s.train_rng}, {"rng.val", &s.val_rng}, {"rng.sample", &s.sample_rng}};
    for (auto& r : rngs) {
        const std::string* text = f.meta(r.key);
        if (!text || !r.rng->restore(*text)) return bad(std::string("missing or invalid \"") + r.key + "\"");
    }
    for (const auto& [k, v] : f.metadata) {
        if (k.rfind("x.", 0) == 0) s.extra[k.substr(2)] = v;
        else if (find_flag(k)) s.config[k] = v;
    }
    for (auto& t : f.tensors) {
        bool is_m = t.name.rfind("m.", 0) == 0, is_v = t.name.rfind("v.", 0) == 0;
        if ((!is_m && !is_v) || t.dtype != "F32") return bad("unexpected tensor " + t.name);
        t.name = t.name.substr(2);
        (is_m ? s.m : s.v).push_back(std::move(t));
    }
    if (s.m.size() != s.v.size()) return bad("the m and v moments do not pair up");
    for (const auto& t : s.m) {
        bool paired = false;
        for (const auto& u : s.v) paired = paired || (u.name == t.name && u.shape == t.shape);
        if (!paired) return bad("the m and v moments of " + t.name + " do not pair up");
    }
    return true;
}

// ------------------------------------------------------------------------------------- checkpoint

inline bool write_model(const std::string& path, safetensors::File& weights, const TrainConfig& cfg,
                        const std::string& vocab, long long step, std::string& error) {
    weights.metadata = config_to_metadata(cfg);
    weights.metadata["vocab"] = vocab;
    weights.metadata["step"] = std::to_string(step);
    return safetensors::write(path, weights, error);
}

// Writes the state and then the model (see the file comment for why in this order).
inline bool write_checkpoint(const std::string& dir, safetensors::File& weights, const TrainState& state,
                             const TrainConfig& cfg, const std::string& vocab, std::string& error) {
    return write_state(dir + "/state.safetensors", state, error) &&
           write_model(dir + "/model.safetensors", weights, cfg, vocab, state.step, error);
}

// A checkpoint read back for --resume: model.safetensors and the state.safetensors beside it,
// checked against each other. The caller still checks them against the data and the model
// it builds (check_resume_tensors, the data hash, the vocabulary).
struct Checkpoint {
    std::string model_path, state_path;
    safetensors::File model;
    TrainConfig config;     // the configuration in the model's metadata
    std::string vocab;
    long long step = 0;
    TrainState state;
};

inline bool read_checkpoint(const std::string& model_path, bool gpu_backend, Checkpoint& c, std::string& error) {
    c = Checkpoint{};
    c.model_path = model_path;
    c.state_path = dir_of(model_path) + "/state.safetensors";
    if (!safetensors::read(model_path, c.model, error)) return false;
    auto bad = [&](const std::string& path, const std::string& what) {
        error = path + ": " + what;
        return false;
    };
    std::string why;
    if (!config_from_metadata(c.model.metadata, gpu_backend, c.config, why)) return bad(model_path, "not a moe.cu checkpoint: " + why);
    const std::string* vocab = c.model.meta("vocab");
    if (!vocab) return bad(model_path, "not a moe.cu checkpoint: no \"vocab\" in the metadata");
    if (!validate_vocab(*vocab, why)) return bad(model_path, why);
    c.vocab = *vocab;
    if (!parse_step(c.model.meta("step"), c.step)) return bad(model_path, "missing or invalid \"step\" in the metadata");
    for (const auto& t : c.model.tensors)
        if (t.dtype != "F32") return bad(model_path, "weight " + t.name + " is not F32");
    if (!path_exists(c.state_path)) return bad(c.state_path, "missing (the optimizer state of the checkpoint)");
    if (!read_state(c.state_path, c.state, error)) return false;
    if (c.state.step != c.step)
        return bad(c.state_path, "is from step " + std::to_string(c.state.step) + " but the model from step " +
                                     std::to_string(c.step) + " (interrupted while checkpointing?)");
    // Compared as values, not as text: files written before --capacity-factor became a double spell
    // e.g. 20 as "2e+01", which reads back as 20 and is written as "20" from then on.
    for (const auto& f : flag_table()) {
        if (!f.trajectory) continue;
        auto it = c.state.config.find(f.name);
        // absent from both files: a field added after the checkpoint was written (config_from_metadata
        // has given it its default; it fails there for any other field)
        if (it == c.state.config.end() && !c.model.meta(f.name)) continue;
        TrainConfig state_config = c.config;
        if (it == c.state.config.end() || !set_flag_value(state_config, f, it->second, why) ||
            get_flag_value(state_config, f) != get_flag_value(c.config, f))
            return bad(c.state_path, std::string("belongs to another run (its --") + f.name + " differs from the model's)");
    }
    // the model's non-parameter tensors (--bias-rate's selection biases) have no moments
    const std::vector<ParamTensor> buffers = model_buffer_table(c.config);
    auto is_buffer = [&](const std::string& name) {
        for (const auto& b : buffers)
            if (b.name == name) return true;
        return false;
    };
    size_t trained = 0;
    for (const auto& t : c.model.tensors) trained += is_buffer(t.name) ? 0 : 1;
    if (c.state.m.size() != trained)
        return bad(c.state_path, "holds moments for " + std::to_string(c.state.m.size()) + " tensors, the model has " +
                                     std::to_string(trained));
    for (const auto& t : c.model.tensors) {
        if (is_buffer(t.name)) continue;
        bool found = false;
        for (const auto& m : c.state.m) found = found || (m.name == t.name && m.shape == t.shape);
        if (!found) return bad(c.state_path, "has no moments shaped like the weight " + t.name);
    }
    return true;
}

// The weights of a checkpoint must be exactly the model's: same names, same shapes.
struct TensorShape {
    std::string name;
    std::vector<int64_t> shape;
};
inline std::string shape_text(const std::vector<int64_t>& s) {
    std::string t = "[";
    for (size_t i = 0; i < s.size(); i++) {
        if (i) t += ',';
        t += std::to_string(s[i]);
    }
    return t + "]";
}
inline bool check_resume_tensors(const Checkpoint& c, const std::vector<TensorShape>& expected, std::string& error) {
    for (const auto& e : expected) {
        const safetensors::Tensor* t = c.model.find(e.name);
        if (!t) {
            error = c.model_path + ": missing weight " + e.name;
            return false;
        }
        if (t->shape != e.shape) {
            error = c.model_path + ": weight " + e.name + " has shape " + shape_text(t->shape) + ", the model needs " +
                    shape_text(e.shape);
            return false;
        }
    }
    if (c.model.tensors.size() != expected.size()) {
        for (const auto& t : c.model.tensors) {
            bool known = false;
            for (const auto& e : expected) known = known || e.name == t.name;
            if (!known) {
                error = c.model_path + ": unexpected tensor " + t.name;
                return false;
            }
        }
    }
    return true;
}
