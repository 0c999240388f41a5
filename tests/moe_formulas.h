// tests/moe_formulas.h: routing and accounting formulas of an MoE layer, written from their
// definitions (docs/model.md, 12, 19, 26, 27) in the simplest form, as independent oracles for the
// tests: a test compares what the model, the kernels or the diagnostics compute with these.
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

// The k largest entries of p, highest first; of equal values the lower index comes first
// (docs/model.md, 12. Top-K). NumPy's argsort(p)[-k:][::-1] breaks ties the other way: for
// [0.10, 0.40, 0.25, 0.25] it gives 1, 3; the model, and this function, give 1, 2.
inline std::vector<int> top_k(const std::vector<double>& p, int k) {
    std::vector<int> idx(p.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    idx.resize(std::min<size_t>(idx.size(), (size_t)std::max(0, k)));
    return idx;
}

// Share of the routed load that does not fit when every expert keeps at most `capacity` of it:
// sum_e max(0, load_e - capacity) / sum_e load_e (0 without load).
inline double drop_rate_from_loads(const std::vector<int>& loads, int capacity) {
    long over = 0, total = 0;
    for (int l : loads) {
        over += std::max(0, l - capacity);
        total += l;
    }
    return total > 0 ? (double)over / (double)total : 0.0;
}

// The Switch Transformer load-balance loss (19): E * sum_i f_i P_i, E = the length of f.
inline double aux_loss(const std::vector<double>& f, const std::vector<double>& P) {
    double s = 0;
    for (size_t i = 0; i < f.size() && i < P.size(); i++) s += f[i] * P[i];
    return (double)f.size() * s;
}

// Shannon entropy in nats, 0 ln 0 = 0.
inline double entropy(const std::vector<double>& p) {
    double h = 0;
    for (double x : p)
        if (x > 0) h -= x * std::log(x);
    return h;
}

// Parameter counts of a whole model in closed form, block by block (27), to hold against the sum
// over model_parameter_table and active_parameters (model_config.h).
struct ParamCounts {
    long long total = 0;   // every parameter (wte counted once: the LM head shares it)
    long long active = 0;  // used by one token: all but the E - K routed experts it skips, per MoE layer
};

// E == 0: a dense model whose FFN has hidden width F. E > 0: every block is MoE with E routed
// experts of width F (K per token) and S shared experts of width Fs; the router and noise weights
// (E x C each) count as total and active.
inline ParamCounts model_param_counts(int V, int block_size, int L, int C, int F, int E = 0, int K = 0, int S = 0,
                                      int Fs = 0) {
    const long long c = C;
    auto ffn = [c](long long hidden) { return 2 * hidden * c + hidden + c; };  // c_fc (w, b) + c_proj (w, b)
    long long per_block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c;   // ln_1, c_attn, c_proj, ln_2
    long long per_block_active = per_block;
    if (E == 0) {
        per_block += ffn(F);
        per_block_active += ffn(F);
    } else {
        long long routing = 2LL * E * c;  // router + noise
        per_block += routing + (long long)E * ffn(F) + (long long)S * ffn(Fs);
        per_block_active += routing + (long long)K * ffn(F) + (long long)S * ffn(Fs);
    }
    long long global = (long long)V * c + (long long)block_size * c + 2 * c;  // wte, wpe, ln_f
    ParamCounts p;
    p.total = global + L * per_block;
    p.active = global + L * per_block_active;
    return p;
}
