// diagnostics.cuh: what an MoE layer did in a step, as numbers (docs/model.md, section 26).
//
// Two halves:
//   1. Expert specialisation, in plain C++ on the host: which characters each expert received
//      (ExpertCharCounts), how each domain of a multi-domain corpus spread over the experts
//      (DomainExpertTable), and the mutual information between domain and expert.
//   2. Device statistics: for one MoE layer, a few kernels read the layer's routing tensors and the
//      expert gradients where they live and fill one small device buffer (`MoeStatsBuffer`); at a
//      log step the host copies that buffer once (`moe_stats_read`, a single cudaMemcpy) into a
//      `MoeStats`. Deterministic: integer counts use shared-memory int atomics only; every float
//      sum is a fixed-order reduction in double (a fixed grid of MOE_STATS_BLOCKS blocks, a tree in
//      each block, then the block partials added in block order). No float atomics.
//
// Definitions (docs/model.md, section 26; N tokens, K choices per token, E experts, R ranks):
//   tokens_routed[e]    choices that picked e before capacity (rank j = 0..K-1 all count)
//   tokens_kept[e]      choices of e that got a slot (kept[t,j] == 1)
//   drop_rate           dropped choices / (N*K)
//   tokens_all_dropped  tokens whose K choices were all dropped (the residual alone carries them)
//   load_imbalance      max_e tokens_routed[e] / mean_e tokens_routed[e], mean = N*K/E; routed, i.e.
//                       BEFORE capacity, because capacity clips the kept counts and would hide a
//                       collapsing router; load_imbalance_kept is the same over tokens_kept (mean =
//                       kept choices / E)
//   router_entropy      mean over tokens of H(p_t) = -sum_i p_t[i] ln p_t[i] (natural log, 0 ln 0 = 0);
//                       with --gate sigmoid, of the normalised scores pn_t = s_t / sum_i s_t[i];
//                       ln E for a uniform router, 0 for a one-hot one
//   aux, z              the layer's own load-balance and z losses (before their coefficients)
//   expert_grad_norm[e] sqrt of the sum of squares of expert e's gradient over its four tensors
//                       (c_fc.weight, c_fc.bias, c_proj.weight, c_proj.bias), as accumulated by the
//                       backward pass, before clipping
//   cross_rank_choices  kept choices (t, j) with rank(expert) != rank(token), where expert e lives on
//                       rank floor(e*R/E) and token t starts on rank floor(t*R/N)
//   cross_rank_bytes    2 * 4 * C * cross_rank_choices: each such token row goes out and comes back
//                       as float32
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.cuh"
#include "model_config.h"
#include "moe_layer.cuh"

// ================================================================================================
// 1. Expert specialisation (host)

// Mutual information (nats) between the row and the column variable of a joint count table
// (rows x cols, row-major): sum p(r,c) ln(p(r,c) / (p(r) p(c))). 0 for independent rows and
// columns; ln(rows) when every row goes to its own column.
inline double mutual_information(const std::vector<double>& joint, int rows, int cols) {
    double total = 0;
    for (double v : joint) total += v;
    if (!(total > 0)) return 0.0;
    std::vector<double> pr(rows, 0.0), pc(cols, 0.0);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            pr[r] += joint[(size_t)r * cols + c] / total;
            pc[c] += joint[(size_t)r * cols + c] / total;
        }
    double mi = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double p = joint[(size_t)r * cols + c] / total;
            if (p > 0) mi += p * std::log(p / (pr[r] * pc[c]));
        }
    return std::max(0.0, mi);
}

// Expert specialisation by character: for every layer, how often each expert received each token id.
// Counts every KEPT choice (t, j) once: a token routed to two experts counts for both.
class ExpertCharCounts {
  public:
    ExpertCharCounts() = default;
    ExpertCharCounts(int layers, int experts, int vocab)
        : L_(layers), E_(experts), V_(vocab), counts_((size_t)layers * experts * vocab, 0) {}
    int layers() const { return L_; }
    int experts() const { return E_; }
    int vocab() const { return V_; }

    // tokens (N), topk_idx (N,K), kept (N,K): host arrays of one step of this layer.
    void add(int layer, const int* tokens, const int* topk_idx, const int* kept, int N, int K) {
        for (int t = 0; t < N; t++)
            for (int j = 0; j < K; j++) {
                int e = topk_idx[(size_t)t * K + j], v = tokens[t];
                if (!kept[(size_t)t * K + j] || e < 0 || e >= E_ || v < 0 || v >= V_) continue;
                counts_[((size_t)layer * E_ + e) * V_ + v]++;
            }
    }
    long long count(int layer, int expert, int token) const { return counts_[((size_t)layer * E_ + expert) * V_ + token]; }
    long long expert_total(int layer, int expert) const {
        long long s = 0;
        for (int v = 0; v < V_; v++) s += count(layer, expert, v);
        return s;
    }
    // The n token ids this expert received most often (count > 0), most frequent first, ties to the lower id.
    std::vector<std::pair<int, long long>> top(int layer, int expert, int n) const {
        std::vector<std::pair<int, long long>> all;
        for (int v = 0; v < V_; v++)
            if (count(layer, expert, v) > 0) all.push_back({v, count(layer, expert, v)});
        std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
        if ((int)all.size() > n) all.resize(std::max(0, n));
        return all;
    }

  private:
    int L_ = 0, E_ = 0, V_ = 0;
    std::vector<long long> counts_;  // (L, E, V)
};

// Domain versus expert (synthetic multi-domain corpus): counts of kept choices by (domain of the
// token, expert). All kept choices count, weighted equally (with K = 2 a token contributes two).
class DomainExpertTable {
  public:
    DomainExpertTable() = default;
    DomainExpertTable(int domains, int experts) : D_(domains), E_(experts), counts_((size_t)domains * experts, 0) {}
    int domains() const { return D_; }
    int experts() const { return E_; }

    // domain (N) per-token domain ids, topk_idx (N,K), kept (N,K): host arrays.
    void add(const int* domain, const int* topk_idx, const int* kept, int N, int K) {
        for (int t = 0; t < N; t++)
            for (int j = 0; j < K; j++) {
                int e = topk_idx[(size_t)t * K + j], d = domain[t];
                if (!kept[(size_t)t * K + j] || e < 0 || e >= E_ || d < 0 || d >= D_) continue;
                counts_[(size_t)d * E_ + e] += 1;
            }
    }
    double count(int d, int e) const { return counts_[(size_t)d * E_ + e]; }
    const std::vector<double>& counts() const { return counts_; }
    // (D, E) row-major: share of domain d's kept choices that went to expert e (each row sums to 1,
    // or is all 0 for a domain never seen).
    std::vector<double> shares() const {
        std::vector<double> s(counts_.size(), 0.0);
        for (int d = 0; d < D_; d++) {
            double row = 0;
            for (int e = 0; e < E_; e++) row += count(d, e);
            if (row > 0)
                for (int e = 0; e < E_; e++) s[(size_t)d * E_ + e] = count(d, e) / row;
        }
        return s;
    }
    // I(domain; expert) in nats over the kept choices; 0 = the router ignores the domain,
    // ln(D) = every domain has experts of its own (the upper bound when D <= E).
    double mutual_information() const { return ::mutual_information(counts_, D_, E_); }

  private:
    int D_ = 0, E_ = 0;
    std::vector<double> counts_;  // (D, E)
};

// ================================================================================================
// 2. Device statistics of one MoE layer

struct MoeStats {  // per MoE layer, per logged step (host copy)
    int N = 0, E = 0, K = 0, C = 0, ep_ranks = 1;
    std::vector<int> tokens_routed, tokens_kept;  // (E) before / after capacity
    int capacity = 0;
    long dropped_choices = 0;
    double drop_rate = 0;        // dropped choices / (N*K)
    int tokens_all_dropped = 0;  // tokens with every choice dropped
    double load_imbalance = 0;       // max / mean of tokens_routed (before capacity)
    double load_imbalance_kept = 0;  // max / mean of tokens_kept (after capacity)
    double router_entropy = 0;       // mean_t H(p_t), nats
    double aux = 0, z = 0;           // NaN when the layer's aux / z were not given
    std::vector<double> expert_grad_norm;  // (E); empty when no gradients were given
    long cross_rank_choices = 0;
    double cross_rank_bytes = 0;  // 2 * 4 * C * cross_rank_choices
    std::vector<float> bias;      // (E) --bias-rate's selection bias b after the step; empty when off
    double bias_range = 0;        // max_i b_i - min_i b_i (0 when off)
    // --routing expert: every expert takes exactly its capacity, so nothing is dropped (drop_rate 0,
    // tokens_routed = tokens_kept = G*cap); what varies is how many experts take each token
    bool expert_choice = false;
    std::vector<int> coverage;        // (E+1) tokens taken by 0, 1, ..., E experts
    double experts_per_token_mean = 0;
    int experts_per_token_max = 0;
    // --overflow reroute: choices placed by rerouting in each round r = 1 .. E-K (empty otherwise);
    // tokens_routed then counts the ORIGINAL choices (before capacity and rerouting), tokens_kept the final ones
    std::vector<int> rerouted_per_round;
    long rerouted_choices = 0;    // their sum
};

// Coverage (expert choice) into the statistics: the histogram, its mean and its maximum.
inline void moe_stats_set_coverage(MoeStats& s, const std::vector<int>& coverage) {
    s.expert_choice = true;
    s.coverage = coverage;
    long tokens = 0, taken = 0;
    s.experts_per_token_max = 0;
    for (size_t k = 0; k < coverage.size(); k++) {
        tokens += coverage[k];
        taken += (long)k * coverage[k];
        if (coverage[k] > 0) s.experts_per_token_max = (int)k;
    }
    s.experts_per_token_mean = tokens > 0 ? (double)taken / (double)tokens : 0.0;
}

// Rerouting (host copies of the layer's tokens_per_expert_routed (E) and reroute_placed (E-K, E))
// into the statistics: the per-round placements, and routed = the original choices (the token
// kernel counted the final experts).
inline void moe_stats_set_reroute(MoeStats& s, const std::vector<int>& routed_original,
                                  const std::vector<int>& placed_per_round_expert) {
    const int E = (int)routed_original.size(), rounds = E > 0 ? (int)placed_per_round_expert.size() / E : 0;
    s.tokens_routed = routed_original;
    s.rerouted_per_round.assign(rounds, 0);
    s.rerouted_choices = 0;
    for (int r = 0; r < rounds; r++) {
        for (int e = 0; e < E; e++) s.rerouted_per_round[r] += placed_per_round_expert[(size_t)r * E + e];
        s.rerouted_choices += s.rerouted_per_round[r];
    }
    int max_routed = 0;
    for (int x : s.tokens_routed) max_routed = std::max(max_routed, x);
    const double choices = (double)s.N * s.K;
    s.load_imbalance = choices > 0 ? max_routed / (choices / E) : 0.0;
}

// The selection bias of a layer (host copy) into its statistics: b and its range.
inline void moe_stats_set_bias(MoeStats& s, const std::vector<float>& bias) {
    s.bias = bias;
    s.bias_range = 0;
    if (bias.empty()) return;
    const auto [lo, hi] = std::minmax_element(bias.begin(), bias.end());
    s.bias_range = (double)*hi - (double)*lo;
}

// Launch geometry: a function of the shapes only, so every float sum has the same order on every
// run, device and worker-thread count.
constexpr int MOE_STATS_BLOCKS = 32;       // at most this many token blocks (each a contiguous range of tokens)
constexpr int MOE_STATS_GRAD_BLOCKS = 16;  // at most this many blocks per expert for the gradient norms
constexpr int MOE_STATS_THREADS = 128;     // a power of two (tree reductions)

// About 4 tokens per thread, and 64 gradient elements per thread, so a thread's share of the block's
// tree reduction is small next to its own work.
inline int moe_stats_token_blocks(int N) { return std::clamp(ceil_div(N, MOE_STATS_THREADS * 4), 1, MOE_STATS_BLOCKS); }
inline int moe_stats_grad_blocks(int C, int F) {
    const long per_expert = 2L * F * C + F + C;
    return std::clamp(ceil_div(per_expert, MOE_STATS_THREADS * 64L), 1, MOE_STATS_GRAD_BLOCKS);
}

// Layout of the device buffer (bytes), E experts. The first `header` bytes are what the host copies.
struct MoeStatsLayout {
    int E;
    // doubles: [0] mean entropy, [1] aux, [2] z, [3 .. 3+E) expert gradient norms (-1: none)
    size_t doubles() const { return 3 + (size_t)E; }
    // ints: [0, E) routed, [E, 2E) kept, [2E] dropped choices, [2E+1] tokens all dropped, [2E+2] cross-rank choices
    int count_fields() const { return 2 * E + 3; }
    size_t ints_offset() const { return doubles() * sizeof(double); }
    // then, with expert choice, the coverage: (E+1) ints (tokens taken by 0..E experts)
    size_t coverage_offset() const { return ints_offset() + (size_t)count_fields() * sizeof(int); }
    size_t header_bytes() const { return coverage_offset() + (size_t)(E + 1) * sizeof(int); }
    // scratch (not copied): double partials, then int partials
    size_t entropy_partials_offset() const { return (header_bytes() + 15) / 16 * 16; }
    size_t grad_partials_offset() const { return entropy_partials_offset() + MOE_STATS_BLOCKS * sizeof(double); }
    size_t count_partials_offset() const {
        return grad_partials_offset() + (size_t)E * MOE_STATS_GRAD_BLOCKS * sizeof(double);
    }
    size_t bytes() const { return count_partials_offset() + (size_t)MOE_STATS_BLOCKS * count_fields() * sizeof(int); }
};

struct MoeStatsBuffer {  // one per MoE layer
    void* device = nullptr;
    int E = 0;
};

inline MoeStatsBuffer moe_stats_alloc(int E) {
    MoeStatsBuffer b;
    b.E = E;
    CUDA_CHECK(cudaMalloc(&b.device, MoeStatsLayout{E}.bytes()));
    return b;
}
inline void moe_stats_free(MoeStatsBuffer& b) {
    if (b.device) CUDA_CHECK(cudaFree(b.device));
    b.device = nullptr;
}

// Block b (of gridDim.x) takes tokens [b*chunk, min(N, (b+1)*chunk)). Per token: its entropy (double) and its K
// choices into the block's int histogram (shared memory, int atomics). Writes the block's entropy
// sum and its (2E+3) counts to the partials.
__global__ void moe_stats_token_kernel(double* entropy_partials,  // (gridDim.x)
                                       int* count_partials,       // (gridDim.x, 2E+3)
                                       const float* probs,        // (N,E)
                                       const int* topk_idx,       // (N,K)
                                       const int* kept,           // (N,K)
                                       int N, int E, int K, int R) {
    extern __shared__ double red[];                        // (blockDim.x)
    int* hist = reinterpret_cast<int*>(red + blockDim.x);  // (2E+3)
    const int fields = 2 * E + 3;
    for (int i = threadIdx.x; i < fields; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const int chunk = (N + gridDim.x - 1) / gridDim.x;
    const int begin = min(N, (int)blockIdx.x * chunk), end = min(N, begin + chunk);
    double h_sum = 0.0;
    int dropped = 0, all_dropped = 0, cross = 0;
    for (int t = begin + threadIdx.x; t < end; t += blockDim.x) {
        const float* p = probs + (long)t * E;
        double h = 0.0;
        for (int i = 0; i < E; i++) {
            double x = (double)p[i];
            if (x > 0.0) h -= x * log(x);
        }
        h_sum += h;
        const int token_rank = (int)((long)t * R / N);
        int kept_here = 0;
        for (int j = 0; j < K; j++) {
            const int e = topk_idx[(long)t * K + j];
            if (e < 0 || e >= E) continue;  // not a valid choice: counted nowhere
            atomicAdd(&hist[e], 1);
            if (kept[(long)t * K + j]) {
                atomicAdd(&hist[E + e], 1);
                kept_here++;
                cross += (int)((long)e * R / E) != token_rank;
            } else {
                dropped++;
            }
        }
        all_dropped += kept_here == 0;
    }
    atomicAdd(&hist[2 * E], dropped);
    atomicAdd(&hist[2 * E + 1], all_dropped);
    atomicAdd(&hist[2 * E + 2], cross);
    red[threadIdx.x] = h_sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) entropy_partials[blockIdx.x] = red[0];
    for (int i = threadIdx.x; i < fields; i += blockDim.x) count_partials[(long)blockIdx.x * fields + i] = hist[i];
}

// Block (g, e) sums the squares of slice g (of gridDim.x) of each of expert e's four gradient tensors.
__global__ void moe_stats_grad_kernel(double* grad_partials,  // (E, gridDim.x)
                                      const float* fc_w,      // (E,F,C)
                                      const float* fc_b,      // (E,F)
                                      const float* proj_w,    // (E,C,F)
                                      const float* proj_b,    // (E,C)
                                      int C, int F) {
    extern __shared__ double red[];  // (blockDim.x)
    const int e = blockIdx.y, g = blockIdx.x, G = gridDim.x;
    double s = 0.0;
    const float* tensors[4] = {fc_w, fc_b, proj_w, proj_b};
    const long sizes[4] = {(long)F * C, (long)F, (long)C * F, (long)C};
    for (int k = 0; k < 4; k++) {
        const long n = sizes[k];
        const float* base = tensors[k] + (long)e * n;
        const long lo = n * g / G, hi = n * (g + 1) / G;
        for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double x = (double)base[i];
            s += x * x;
        }
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) grad_partials[(long)e * G + g] = red[0];
}

// One block: adds the partials in block order into the header of the buffer.
__global__ void moe_stats_finalize_kernel(double* doubles,                // (3+E)
                                          int* counts,                    // (2E+3)
                                          const double* entropy_partials, // (token_blocks)
                                          const double* grad_partials,    // (E, grad_blocks)
                                          const int* count_partials,      // (token_blocks, 2E+3)
                                          const float* aux,               // (1) or nullptr
                                          const float* z,                 // (1) or nullptr
                                          int N, int E, int token_blocks, int grad_blocks /* 0: no gradients */) {
    const int fields = 2 * E + 3;
    for (int i = threadIdx.x; i < fields; i += blockDim.x) {
        int s = 0;
        for (int b = 0; b < token_blocks; b++) s += count_partials[(long)b * fields + i];
        counts[i] = s;
    }
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double s = 0.0;
        for (int g = 0; g < grad_blocks; g++) s += grad_partials[(long)e * grad_blocks + g];
        doubles[3 + e] = grad_blocks > 0 ? sqrt(s) : -1.0;
    }
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int b = 0; b < token_blocks; b++) s += entropy_partials[b];
        doubles[0] = N > 0 ? s / (double)N : 0.0;
        doubles[1] = aux != nullptr ? (double)aux[0] : (double)NAN;
        doubles[2] = z != nullptr ? (double)z[0] : (double)NAN;
    }
}

// Fills `buf` from raw device pointers. aux / z may be nullptr (reported as NaN); the four gradient
// pointers may all be nullptr (no gradient norms). ep_ranks R >= 1.
inline void moe_stats_compute_raw(MoeStatsBuffer& buf,
                                  const float* probs,      // (N,E)
                                  const int* topk_idx,     // (N,K)
                                  const int* kept,         // (N,K)
                                  const float* aux,        // (1) or nullptr
                                  const float* z,          // (1) or nullptr
                                  const float* grad_fc_w,  // (E,F,C) or nullptr
                                  const float* grad_fc_b,  // (E,F)
                                  const float* grad_proj_w,// (E,C,F)
                                  const float* grad_proj_b,// (E,C)
                                  int N, int E, int K, int C, int F, int ep_ranks) {
    const MoeStatsLayout lay{E};
    unsigned char* base = static_cast<unsigned char*>(buf.device);
    double* doubles = reinterpret_cast<double*>(base);
    int* counts = reinterpret_cast<int*>(base + lay.ints_offset());
    double* entropy_partials = reinterpret_cast<double*>(base + lay.entropy_partials_offset());
    double* grad_partials = reinterpret_cast<double*>(base + lay.grad_partials_offset());
    int* count_partials = reinterpret_cast<int*>(base + lay.count_partials_offset());
    const int R = std::max(1, ep_ranks);

    const size_t token_shared = MOE_STATS_THREADS * sizeof(double) + (size_t)lay.count_fields() * sizeof(int);
    const int token_blocks = moe_stats_token_blocks(N);
    moe_stats_token_kernel<<<token_blocks, MOE_STATS_THREADS, token_shared>>>(entropy_partials, count_partials, probs,
                                                                             topk_idx, kept, N, E, K, R);
    CUDA_CHECK(cudaGetLastError());
    const bool grads = grad_fc_w && grad_fc_b && grad_proj_w && grad_proj_b;
    const int grad_blocks = grads ? moe_stats_grad_blocks(C, F) : 0;
    if (grads) {
        moe_stats_grad_kernel<<<dim3(grad_blocks, E), MOE_STATS_THREADS, MOE_STATS_THREADS * sizeof(double)>>>(
            grad_partials, grad_fc_w, grad_fc_b, grad_proj_w, grad_proj_b, C, F);
        CUDA_CHECK(cudaGetLastError());
    }
    moe_stats_finalize_kernel<<<1, MOE_STATS_THREADS>>>(doubles, counts, entropy_partials,
                                                        grads ? grad_partials : nullptr, count_partials, aux, z, N, E,
                                                        token_blocks, grad_blocks);
    CUDA_CHECK(cudaGetLastError());
}

// The statistics of one MoE layer after its forward (and, for the gradient norms, its backward)
// pass. grads.experts.fc_w == nullptr: no gradient norms (e.g. an evaluation step).
inline void moe_stats_compute(MoeStatsBuffer& buf, const MoeActivations& acts, const MoeWeights& grads,
                              const ModelConfig& cfg, int N, int ep_ranks) {
    const ExpertWeights& g = grads.experts;
    const float* entropy_scores = cfg.sigmoid_gate() ? acts.norm_probs : acts.probs;  // pn (= p with softmax)
    if (cfg.expert_choice()) {  // the (N, E) pairs (token, expert) with "kept" = taken; then the coverage
        moe_stats_compute_raw(buf, entropy_scores, acts.ec_expert_ids, acts.ec_taken, acts.aux, acts.z, g.fc_w, g.fc_b,
                              g.proj_w, g.proj_b, N, cfg.experts, cfg.experts, cfg.dim, cfg.expert_hidden, ep_ranks);
        expert_choice_coverage(reinterpret_cast<int*>(static_cast<unsigned char*>(buf.device) +
                                                      MoeStatsLayout{cfg.experts}.coverage_offset()),
                               acts.ec_slot, N, cfg.experts);
        return;
    }
    moe_stats_compute_raw(buf, entropy_scores, acts.topk_idx, acts.kept, acts.aux, acts.z, g.fc_w, g.fc_b, g.proj_w,
                          g.proj_b, N, cfg.experts, cfg.top_k, cfg.dim, cfg.expert_hidden, ep_ranks);
}

// Everything the host derives from the copied header (no device access).
inline MoeStats moe_stats_from_header(const unsigned char* header, int N, int E, int K, int C, int capacity,
                                      int ep_ranks) {
    const MoeStatsLayout lay{E};
    std::vector<double> d(lay.doubles());
    std::vector<int> c(lay.count_fields());
    std::memcpy(d.data(), header, d.size() * sizeof(double));
    std::memcpy(c.data(), header + lay.ints_offset(), c.size() * sizeof(int));
    MoeStats s;
    s.N = N;
    s.E = E;
    s.K = K;
    s.C = C;
    s.ep_ranks = std::max(1, ep_ranks);
    s.capacity = capacity;
    s.tokens_routed.assign(c.begin(), c.begin() + E);
    s.tokens_kept.assign(c.begin() + E, c.begin() + 2 * E);
    s.dropped_choices = c[2 * E];
    s.tokens_all_dropped = c[2 * E + 1];
    s.cross_rank_choices = c[2 * E + 2];
    const double choices = (double)N * K;
    s.drop_rate = choices > 0 ? s.dropped_choices / choices : 0.0;
    int max_routed = 0, max_kept = 0;
    long kept_total = 0;
    for (int e = 0; e < E; e++) {
        max_routed = std::max(max_routed, s.tokens_routed[e]);
        max_kept = std::max(max_kept, s.tokens_kept[e]);
        kept_total += s.tokens_kept[e];
    }
    s.load_imbalance = choices > 0 ? max_routed / (choices / E) : 0.0;
    s.load_imbalance_kept = kept_total > 0 ? max_kept / ((double)kept_total / E) : 0.0;
    s.router_entropy = d[0];
    s.aux = d[1];
    s.z = d[2];
    if (E > 0 && d[3] >= 0) s.expert_grad_norm.assign(d.begin() + 3, d.begin() + 3 + E);
    s.cross_rank_bytes = 2.0 * 4.0 * (double)C * (double)s.cross_rank_choices;
    return s;
}

// The single device-to-host copy of a log step, for one layer.
inline MoeStats moe_stats_read(const MoeStatsBuffer& buf, int N, int E, int K, int C, int capacity, int ep_ranks) {
    const MoeStatsLayout lay{E};
    std::vector<unsigned char> header(lay.header_bytes());
    CUDA_CHECK(cudaMemcpy(header.data(), buf.device, header.size(), cudaMemcpyDeviceToHost));
    return moe_stats_from_header(header.data(), N, E, K, C, capacity, ep_ranks);
}
// The same for a layer of the model cfg in a pass of N tokens.
inline MoeStats moe_stats_read(const MoeStatsBuffer& buf, const ModelConfig& cfg, int N, int ep_ranks) {
    if (!cfg.expert_choice())
        return moe_stats_read(buf, N, cfg.experts, cfg.top_k, cfg.dim, expert_capacity(cfg, N), ep_ranks);
    // expert choice: the counts were made over the (N, E) pairs; nothing is dropped
    const int E = cfg.experts;
    const MoeStatsLayout lay{E};
    std::vector<unsigned char> header(lay.header_bytes());
    CUDA_CHECK(cudaMemcpy(header.data(), buf.device, header.size(), cudaMemcpyDeviceToHost));
    MoeStats s = moe_stats_from_header(header.data(), N, E, E, cfg.dim, expert_capacity(cfg, N), ep_ranks);
    s.K = cfg.top_k;
    s.tokens_routed = s.tokens_kept;
    s.dropped_choices = 0;
    s.drop_rate = 0.0;
    s.load_imbalance = s.load_imbalance_kept;
    std::vector<int> coverage(E + 1);
    std::memcpy(coverage.data(), header.data() + lay.coverage_offset(), coverage.size() * sizeof(int));
    moe_stats_set_coverage(s, coverage);
    return s;
}

// Copies a layer's routing to the host (end of run: specialisation tables). Two D2H copies.
// Returns the choices per token in the copies: K (token choice) or E (expert choice).
inline int moe_copy_routing(std::vector<int>& topk_idx, std::vector<int>& kept, const MoeActivations& acts,
                            const ModelConfig& cfg, int N) {
    // expert choice: the (N, E) pairs (token, expert), "kept" where the expert took the token
    const bool ec = cfg.expert_choice();
    const int width = ec ? cfg.experts : cfg.top_k;
    const size_t n = (size_t)N * width;
    topk_idx.resize(n);
    kept.resize(n);
    CUDA_CHECK(cudaMemcpy(topk_idx.data(), ec ? acts.ec_expert_ids : acts.topk_idx, n * sizeof(int),
                          cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(kept.data(), ec ? acts.ec_taken : acts.kept, n * sizeof(int), cudaMemcpyDeviceToHost));
    return width;
}

// ------------------------------------------------------------------------------------------------
// JSON (one object per layer, for metrics.jsonl). Non-finite numbers are written as null.
inline std::string diagnostics_json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[64];
    snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

template <typename T>
inline std::string diagnostics_json_array(const std::vector<T>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) {
        if (i) s += ",";
        s += diagnostics_json_number((double)v[i]);
    }
    return s + "]";
}

inline std::string moe_stats_json(const MoeStats& s) {
    std::string j = "{";
    j += "\"tokens_routed\":" + diagnostics_json_array(s.tokens_routed);
    j += ",\"tokens_kept\":" + diagnostics_json_array(s.tokens_kept);
    j += ",\"capacity\":" + std::to_string(s.capacity);
    j += ",\"dropped_choices\":" + std::to_string(s.dropped_choices);
    j += ",\"drop_rate\":" + diagnostics_json_number(s.drop_rate);
    j += ",\"tokens_all_dropped\":" + std::to_string(s.tokens_all_dropped);
    j += ",\"load_imbalance\":" + diagnostics_json_number(s.load_imbalance);
    j += ",\"load_imbalance_kept\":" + diagnostics_json_number(s.load_imbalance_kept);
    j += ",\"router_entropy\":" + diagnostics_json_number(s.router_entropy);
    j += ",\"aux\":" + diagnostics_json_number(s.aux);
    j += ",\"z\":" + diagnostics_json_number(s.z);
    j += ",\"expert_grad_norm\":" + diagnostics_json_array(s.expert_grad_norm);
    j += ",\"ep_ranks\":" + std::to_string(s.ep_ranks);
    j += ",\"cross_rank_choices\":" + std::to_string(s.cross_rank_choices);
    j += ",\"cross_rank_bytes\":" + diagnostics_json_number(s.cross_rank_bytes);
    if (s.expert_choice) {  // --routing expert only
        j += ",\"coverage\":" + diagnostics_json_array(s.coverage);
        j += ",\"experts_per_token_mean\":" + diagnostics_json_number(s.experts_per_token_mean);
        j += ",\"experts_per_token_max\":" + std::to_string(s.experts_per_token_max);
    }
    if (!s.bias.empty()) {  // --bias-rate only
        j += ",\"bias\":" + diagnostics_json_array(s.bias);
        j += ",\"bias_range\":" + diagnostics_json_number(s.bias_range);
    }
    if (!s.rerouted_per_round.empty()) {  // --overflow reroute only
        j += ",\"rerouted_per_round\":" + diagnostics_json_array(s.rerouted_per_round);
        j += ",\"rerouted_choices\":" + std::to_string(s.rerouted_choices);
    }
    return j + "}";
}
