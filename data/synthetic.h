// data/synthetic.h: a deterministic multi-domain corpus, for tests and for measuring whether
// experts specialise. Lines of four clearly different kinds ("domains") are interleaved in a
// seeded random order; every character (its line's '\n' included) carries its line's domain id.
//
//   0 arithmetic  "37+58=95", "12*7=84", "91-45=46"         (digits and + - * =)
//   1 brackets    "([{}])()"                                (balanced, nested; only ()[]{})
//   2 words       "the small cat sees a red fox."           (a tiny grammar, lowercase words)
//   3 pattern     "k4l5m6n7o8"                              (letters and digits counting up in step)
//
// The domains share almost no characters apart from '\n', so a router can tell them apart from
// the token alone, and each has its own structure to learn (carries, nesting, syntax, counting).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

enum SyntheticDomain : uint8_t { kDomainArithmetic = 0, kDomainBrackets = 1, kDomainWords = 2, kDomainPattern = 3 };
constexpr int kSyntheticDomains = 4;
inline const char* synthetic_domain_name(int d) {
    static const char* names[kSyntheticDomains] = {"arithmetic", "brackets", "words", "pattern"};
    return d >= 0 && d < kSyntheticDomains ? names[d] : "?";
}

// `--data synthetic` is always this corpus (the training seed varies the run, not the data).
constexpr uint64_t kSyntheticSeed = 20240601;
constexpr size_t kSyntheticBytes = 1 << 20;

struct SyntheticCorpus {
    std::string text;
    std::vector<uint8_t> domains;  // one per byte of text
};

namespace synthetic_detail {
// SplitMix64: a self-contained generator, so the corpus never changes when the data loader's does.
struct Mix {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    int below(int n) { return (int)(next() % (uint64_t)n); }
};

inline std::string arithmetic_line(Mix& r) {
    int a = r.below(100), b = r.below(100);
    switch (r.below(3)) {
        case 0: return std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b);
        case 1: {
            if (a < b) std::swap(a, b);  // no negative results
            return std::to_string(a) + "-" + std::to_string(b) + "=" + std::to_string(a - b);
        }
        default: b = r.below(10); return std::to_string(a) + "*" + std::to_string(b) + "=" + std::to_string(a * b);
    }
}

// A random balanced sequence of about `budget` brackets: each group is a pair around a nested group.
inline void brackets(Mix& r, std::string& out, int budget, int depth) {
    static const char open[] = "([{", close[] = ")]}";
    while (budget >= 2) {
        int kind = r.below(3);
        int inner = depth < 4 ? r.below(budget - 1) : 0;
        inner -= inner % 2;
        out += open[kind];
        brackets(r, out, inner, depth + 1);
        out += close[kind];
        budget -= inner + 2;
        if (r.below(3) == 0) break;
    }
}

inline std::string words_line(Mix& r) {
    static const char* det[] = {"the", "a", "every", "one"};
    static const char* adj[] = {"small", "red", "quiet", "old", "bright", "lazy"};
    static const char* noun[] = {"cat", "fox", "river", "king", "stone", "bird", "town", "ship"};
    static const char* verb[] = {"sees", "finds", "follows", "likes", "builds", "hears"};
    auto pick = [&](const char* const* list, int n) { return std::string(list[r.below(n)]); };
    auto phrase = [&]() {
        std::string p = pick(det, 4) + " ";
        if (r.below(2)) p += pick(adj, 6) + " ";
        return p + pick(noun, 8);
    };
    std::string s = phrase() + " " + pick(verb, 6) + " " + phrase();
    if (r.below(3) == 0) s += " and " + pick(verb, 6) + " " + phrase();
    return s + ".";
}

inline std::string pattern_line(Mix& r) {
    int letter = r.below(26), digit = r.below(10), n = 3 + r.below(6);
    std::string s;
    for (int i = 0; i < n; i++) {
        s += (char)('a' + (letter + i) % 26);
        s += (char)('0' + (digit + i) % 10);
    }
    return s;
}
}  // namespace synthetic_detail

// About `bytes` characters (whole lines; at least one line of each domain), same seed -> same text.
inline SyntheticCorpus make_synthetic_corpus(uint64_t seed, size_t bytes) {
    using namespace synthetic_detail;
    Mix r{seed};
    SyntheticCorpus c;
    c.text.reserve(bytes + 64);
    c.domains.reserve(bytes + 64);
    for (int line = 0; c.text.size() < bytes || line < kSyntheticDomains; line++) {
        // The first four lines show every domain once; after that the order is random.
        int domain = line < kSyntheticDomains ? line : r.below(kSyntheticDomains);
        std::string s;
        switch (domain) {
            case kDomainArithmetic: s = arithmetic_line(r); break;
            case kDomainBrackets: brackets(r, s, 2 + 2 * r.below(12), 0); break;
            case kDomainWords: s = words_line(r); break;
            default: s = pattern_line(r); break;
        }
        s += '\n';
        c.text += s;
        c.domains.insert(c.domains.end(), s.size(), (uint8_t)domain);
    }
    return c;
}
