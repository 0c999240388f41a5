// reference_diagnostics.h: plain C++ reference of every per-layer MoE diagnostic (docs/model.md,
// section 26), straight from the definitions, in double, host memory only. The device
// statistics of diagnostics.cuh must reproduce these numbers.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

struct RefMoeStats {
    std::vector<int> tokens_routed, tokens_kept;  // (E)
    long dropped_choices = 0;
    double drop_rate = 0;
    int tokens_all_dropped = 0;
    double load_imbalance = 0, load_imbalance_kept = 0;
    double router_entropy = 0;
    std::vector<double> expert_grad_norm;  // (E)
    long cross_rank_choices = 0;
    double cross_rank_bytes = 0;
};

// probs (N,E), topk_idx (N,K), kept (N,K); gradients fc_w (E,F,C), fc_b (E,F), proj_w (E,C,F),
// proj_b (E,C) (empty vectors: no gradient norms); R ranks.
inline RefMoeStats ref_moe_stats(const std::vector<float>& probs, const std::vector<int>& topk_idx,
                                 const std::vector<int>& kept, const std::vector<float>& fc_w,
                                 const std::vector<float>& fc_b, const std::vector<float>& proj_w,
                                 const std::vector<float>& proj_b, int N, int E, int K, int C, int F, int R) {
    RefMoeStats s;
    s.tokens_routed.assign(E, 0);
    s.tokens_kept.assign(E, 0);
    for (int t = 0; t < N; t++) {
        bool any_kept = false;
        for (int j = 0; j < K; j++) {
            int e = topk_idx[t * K + j];
            s.tokens_routed[e]++;
            if (kept[t * K + j]) {
                s.tokens_kept[e]++;
                any_kept = true;
                int expert_rank = (int)std::floor((double)e * R / E);
                int token_rank = (int)std::floor((double)t * R / N);
                if (expert_rank != token_rank) s.cross_rank_choices++;
            } else {
                s.dropped_choices++;
            }
        }
        if (!any_kept) s.tokens_all_dropped++;
    }
    s.drop_rate = (double)s.dropped_choices / ((double)N * K);
    double mean_routed = (double)N * K / E;
    s.load_imbalance = *std::max_element(s.tokens_routed.begin(), s.tokens_routed.end()) / mean_routed;
    long kept_total = 0;
    for (int e = 0; e < E; e++) kept_total += s.tokens_kept[e];
    s.load_imbalance_kept =
        kept_total > 0 ? *std::max_element(s.tokens_kept.begin(), s.tokens_kept.end()) / ((double)kept_total / E) : 0.0;
    double h = 0;
    for (int t = 0; t < N; t++)
        for (int i = 0; i < E; i++) {
            double p = probs[t * E + i];
            if (p > 0) h += -p * std::log(p);
        }
    s.router_entropy = h / N;
    if (!fc_w.empty()) {
        for (int e = 0; e < E; e++) {
            double sq = 0;
            for (long i = 0; i < (long)F * C; i++) sq += (double)fc_w[e * (long)F * C + i] * fc_w[e * (long)F * C + i];
            for (long i = 0; i < F; i++) sq += (double)fc_b[e * (long)F + i] * fc_b[e * (long)F + i];
            for (long i = 0; i < (long)C * F; i++) sq += (double)proj_w[e * (long)C * F + i] * proj_w[e * (long)C * F + i];
            for (long i = 0; i < C; i++) sq += (double)proj_b[e * (long)C + i] * proj_b[e * (long)C + i];
            s.expert_grad_norm.push_back(std::sqrt(sq));
        }
    }
    s.cross_rank_bytes = 2.0 * 4 * C * s.cross_rank_choices;
    return s;
}
