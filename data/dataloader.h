// data/dataloader.h: the character-level data pipeline for any text file.
//
//   vocabulary  the sorted set of bytes that occur in the text (a string of 1..256 bytes, stored
//               with the model); a token is a byte's index in it
//   split       the first 90% of the text (by position) trains, the last 10% validates
//   batches     B random windows of T+1 tokens: inputs = the first T, targets = the last T
//               (shifted by one); window starts come from a seeded PCG32 generator, one for
//               training and one for validation, each fully described by two integers so a
//               resumed run continues the exact same sequence of batches
//
// Every failure (missing, empty or unreadable file, a text too short for the block size, a bad
// vocabulary) is a one-line error string; nothing here throws or exits.
#pragma once
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <sys/stat.h>

#include "synthetic.h"

// ------------------------------------------------------------------------------------ generator
// PCG32 (O'Neill 2014, pcg32_srandom_r / pcg32_random_r): small, fast, statistically sound, and
// its whole state is two 64-bit integers.
struct Rng {
    uint64_t state = 0, inc = 1;

    // `stream` selects an independent sequence for the same seed (train, val, sampling, ...).
    static Rng seeded(uint64_t seed, uint64_t stream) {
        Rng r;
        r.state = 0;
        r.inc = (stream << 1u) | 1u;
        r.next_u32();
        r.state += seed;
        r.next_u32();
        return r;
    }
    uint32_t next_u32() {
        uint64_t old = state;
        state = old * 6364136223846793005ULL + inc;
        uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
        uint32_t rot = (uint32_t)(old >> 59u);
        return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
    }
    uint64_t next_u64() {
        uint64_t hi = next_u32();
        return (hi << 32) | next_u32();
    }
    // Uniform in [0, n) without modulo bias (rejection of the incomplete last block), n >= 1.
    uint64_t below(uint64_t n) {
        if (n <= 1) return 0;
        if (n <= 0xFFFFFFFFull) {
            uint32_t threshold = (uint32_t)((0x100000000ull - n) % n);
            while (true) {
                uint32_t r = next_u32();
                if (r >= threshold) return r % n;
            }
        }
        uint64_t threshold = (0 - n) % n;
        while (true) {
            uint64_t r = next_u64();
            if (r >= threshold) return r % n;
        }
    }
    // Uniform float in [0, 1) with 24 random bits.
    float uniform() { return (float)(next_u32() >> 8) * (1.0f / 16777216.0f); }

    // "state inc" in decimal, for checkpoints.
    std::string save() const {
        char buf[64];
        snprintf(buf, sizeof buf, "%" PRIu64 " %" PRIu64, state, inc);
        return buf;
    }
    bool restore(const std::string& s) {
        size_t space = s.find(' ');
        uint64_t a = 0, b = 0;
        if (space == std::string::npos || !parse_u64(s.substr(0, space), a) || !parse_u64(s.substr(space + 1), b) || (b & 1) == 0)
            return false;
        state = a;
        inc = b;
        return true;
    }
    static bool parse_u64(const std::string& s, uint64_t& out) {
        if (s.empty() || s.size() > 20) return false;
        for (char c : s)
            if (c < '0' || c > '9') return false;
        errno = 0;
        out = strtoull(s.c_str(), nullptr, 10);
        return errno != ERANGE;
    }
    bool operator==(const Rng& o) const { return state == o.state && inc == o.inc; }
};

// Generator streams of one seed (data sampling here; the trainer uses the others).
enum RngStream : uint64_t { kStreamTrain = 1, kStreamVal = 2, kStreamSample = 3, kStreamInit = 4, kStreamNoise = 5 };

// ----------------------------------------------------------------------------------- vocabulary

inline std::string build_vocab(const std::string& text) {
    bool seen[256] = {};
    for (unsigned char c : text) seen[c] = true;
    std::string vocab;
    for (int c = 0; c < 256; c++)
        if (seen[c]) vocab += (char)c;
    return vocab;
}

// A vocabulary read from a checkpoint: 1..256 distinct bytes in increasing order.
inline bool validate_vocab(const std::string& vocab, std::string& error) {
    if (vocab.empty()) { error = "empty vocabulary"; return false; }
    if (vocab.size() > 256) { error = "vocabulary of " + std::to_string(vocab.size()) + " entries (a byte vocabulary has at most 256)"; return false; }
    for (size_t i = 1; i < vocab.size(); i++)
        if ((unsigned char)vocab[i - 1] >= (unsigned char)vocab[i]) {
            error = "vocabulary is not a sorted set of distinct bytes";
            return false;
        }
    return true;
}

inline bool encode(const std::string& text, const std::string& vocab, std::vector<int32_t>& out, std::string& error) {
    int lookup[256];
    std::fill(lookup, lookup + 256, -1);
    for (size_t i = 0; i < vocab.size(); i++) lookup[(unsigned char)vocab[i]] = (int)i;
    out.resize(text.size());
    for (size_t i = 0; i < text.size(); i++) {
        int id = lookup[(unsigned char)text[i]];
        if (id < 0) {
            error = "character " + std::to_string((unsigned char)text[i]) + " at position " + std::to_string(i) + " is not in the vocabulary";
            return false;
        }
        out[i] = id;
    }
    return true;
}

// Ids outside the vocabulary (which a correct model never produces) decode as '?'.
inline std::string decode(const int32_t* ids, size_t n, const std::string& vocab) {
    std::string s(n, '?');
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && (size_t)ids[i] < vocab.size()) s[i] = vocab[(size_t)ids[i]];
    return s;
}

// 64-bit FNV-1a: identifies the training text in checkpoints (a resumed run must train on the same text).
inline uint64_t text_hash(const std::string& text) {
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : text) h = (h ^ c) * 1099511628211ULL;
    return h;
}

// ------------------------------------------------------------------------------------- dataset

struct TextData {
    std::string name;               // the path, or "synthetic"
    std::string vocab;              // sorted distinct bytes
    std::vector<int32_t> tokens;    // the whole text as ids
    std::vector<uint8_t> domains;   // per character: synthetic-corpus domain id (empty for files)
    size_t split = 0;               // tokens [0, split) train, [split, size) validate
    uint64_t hash = 0;              // text_hash of the text

    size_t train_size() const { return split; }
    size_t val_size() const { return tokens.size() - split; }
};

inline bool read_text_file(const std::string& path, std::string& text, std::string& error) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
        error = "data file " + path + ": " + strerror(errno) + (errno == ENOENT ? " (run `make data` for tiny Shakespeare)" : "");
        return false;
    }
    if (S_ISDIR(st.st_mode)) { error = "data file " + path + " is a directory"; return false; }
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) { error = "data file " + path + ": " + strerror(errno); return false; }
    text.clear();
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    bool failed = ferror(f);
    fclose(f);
    if (failed) { error = "data file " + path + ": read error"; return false; }
    if (text.empty()) { error = "data file " + path + " is empty"; return false; }
    return true;
}

// The text as a dataset: vocabulary, ids, the 90/10 split by position.
inline bool make_dataset(const std::string& text, const std::string& name, TextData& d, std::string& error) {
    d = TextData{};
    d.name = name;
    if (text.empty()) { error = name + " is empty"; return false; }
    d.vocab = build_vocab(text);
    if (!validate_vocab(d.vocab, error) || !encode(text, d.vocab, d.tokens, error)) {
        error = name + ": " + error;
        return false;
    }
    d.split = text.size() * 9 / 10;
    d.hash = text_hash(text);
    return true;
}

// Both splits must hold at least one window of T+1 tokens.
inline bool check_block_size(const TextData& d, int block_size, std::string& error) {
    size_t need = (size_t)block_size + 1;
    if (d.train_size() >= need && d.val_size() >= need) return true;
    error = "--block-size " + std::to_string(block_size) + " needs at least " + std::to_string(need) +
            " characters in both the training and the validation split, but " + d.name + " has " +
            std::to_string(d.tokens.size()) + " characters (" + std::to_string(d.train_size()) + " train, " +
            std::to_string(d.val_size()) + " validation); use a longer text or a smaller --block-size";
    return false;
}

// `source` is a path or "synthetic" (the built-in corpus, about 1 MB, always the same text).
inline bool load_dataset(const std::string& source, int block_size, TextData& d, std::string& error) {
    std::string text;
    std::vector<uint8_t> domains;
    if (source == "synthetic") {
        SyntheticCorpus corpus = make_synthetic_corpus(kSyntheticSeed, kSyntheticBytes);
        text = std::move(corpus.text);
        domains = std::move(corpus.domains);
    } else if (!read_text_file(source, text, error)) {
        return false;
    }
    if (!make_dataset(text, source, d, error)) return false;
    d.domains = std::move(domains);
    return check_block_size(d, block_size, error);
}

// ------------------------------------------------------------------------------------- batches

enum class Split { Train, Val };

// Draws B windows of the split: inputs[b*T + t] = tokens[s_b + t], targets[b*T + t] =
// tokens[s_b + t + 1], s_b uniform over every valid start of the split. `starts` (optional, B
// entries) receives the windows' absolute positions in the text (for per-domain statistics).
// The split must hold T+1 tokens (check_block_size).
inline void sample_batch(const TextData& d, Split split, Rng& rng, int B, int T, int32_t* inputs, int32_t* targets,
                         int64_t* starts = nullptr) {
    size_t begin = split == Split::Train ? 0 : d.split;
    size_t size = split == Split::Train ? d.train_size() : d.val_size();
    uint64_t windows = size - (size_t)T;  // starts 0 .. size-T-1
    for (int b = 0; b < B; b++) {
        size_t s = begin + (size_t)rng.below(windows);
        const int32_t* src = d.tokens.data() + s;
        std::copy(src, src + T, inputs + (size_t)b * T);
        std::copy(src + 1, src + T + 1, targets + (size_t)b * T);
        if (starts) starts[b] = (int64_t)s;
    }
}

// The two batch generators of a run. The validation generator is reset to its seeded start at
// every evaluation (reset_val), so every evaluation of a run, and of every run with the same
// seed, scores the same validation windows: curves and ablations compare like with like.
struct DataLoader {
    const TextData* data = nullptr;
    int B = 0, T = 0;
    uint64_t seed = 0;
    Rng train_rng, val_rng;

    void init(const TextData& d, int batch, int block, uint64_t s) {
        data = &d;
        B = batch;
        T = block;
        seed = s;
        train_rng = Rng::seeded(seed, kStreamTrain);
        reset_val();
    }
    void reset_val() { val_rng = Rng::seeded(seed, kStreamVal); }
    void next_train(int32_t* inputs, int32_t* targets, int64_t* starts = nullptr) {
        sample_batch(*data, Split::Train, train_rng, B, T, inputs, targets, starts);
    }
    void next_val(int32_t* inputs, int32_t* targets, int64_t* starts = nullptr) {
        sample_batch(*data, Split::Val, val_rng, B, T, inputs, targets, starts);
    }
};
