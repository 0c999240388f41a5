// moe_layer.cuh: the Mixture-of-Experts FFN (MODEL_SPEC "MoE FFN"), forward and backward.
//
// Read top to bottom, the forward pass of one layer is:
//
//   u (N,C) --router GEMM--> r (N,E) --(+ eps*softplus(W_n u))--> h --softmax--> p --top-K--> e_tj, g_tj
//           --capacity scan--> kept_tj, slot_tj       (which row of expert e_tj's buffer the token gets)
//           --dispatch--> x_e (E,R,C)                 (the tokens of each expert, gathered into its buffer)
//           --batched FFN--> y_e (E,R,C)               (GELU(x_e W1_e^T + b1_e) W2_e^T, one GEMM per layer of the FFN)
//           --combine--> out_t = sum_{kept j} g_tj (y_{e_tj}[slot_tj] + b2_{e_tj}) + sum_s SharedFFN_s(u_t)
//   plus the two router losses: aux = E sum_i f_i P_i (load balance) and z = mean_t logsumexp(r_t)^2.
//
// and the backward pass walks the same chain the other way. Everything stays on the device: the
// capacity slots are found by a per-expert scan on the GPU, so the host never learns how many tokens
// an expert got; every expert buffer has the static shape R = buffer_rows, and rows nobody uses are
// zero so the GEMMs never touch garbage. All reductions run in a fixed order (no float atomics), so
// results are bit-identical from run to run and independent of the number of CPU worker threads.
//
// Shapes: N tokens, C model width, E routed experts, K experts per token, F expert hidden width,
// S shared experts of hidden width Fs, R = buffer_rows = min(capacity, N) rows per expert buffer.
// A "choice" is a pair (token t, rank j), flattened as c = t*K + j; rank 0 is the token's best expert.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include "common.cuh"

constexpr int MOE_MAX_EXPERTS = 64;  // the router kernels keep a token's E logits in a thread's registers

// ----------------------------------------------------------------------------------------------
// configuration, weights, activations

struct MoeConfig {
    int N;                  // tokens in the step (B*T)
    int C;                  // model width
    int E, K, F;            // routed experts, experts per token, expert hidden width
    int S, Fs;              // shared experts, shared hidden width (S may be 0)
    double capacity_factor; // <= 0: no limit
    int capacity;           // filled by moe_config_finalize: ceil(CF*N*K/E) computed in double, or N when CF <= 0
    int buffer_rows;        // min(capacity, N): rows per expert buffer actually allocated (a token uses an expert at most once)
    bool noise;             // router noise enabled (applied only when moe_forward's training == true)
};

inline void moe_config_finalize(MoeConfig& cfg) {
    bool ok = cfg.N > 0 && cfg.C > 0 && cfg.E > 0 && cfg.F > 0 && cfg.K >= 1 && cfg.K <= cfg.E && cfg.S >= 0 &&
              (cfg.S == 0 || cfg.Fs > 0);
    if (!ok) {
        fprintf(stderr, "[MoE] invalid config N=%d C=%d E=%d K=%d F=%d S=%d Fs=%d\n", cfg.N, cfg.C, cfg.E, cfg.K,
                cfg.F, cfg.S, cfg.Fs);
        exit(EXIT_FAILURE);
    }
    if (cfg.E > MOE_MAX_EXPERTS) {
        fprintf(stderr, "[MoE] E=%d experts: at most %d are supported\n", cfg.E, MOE_MAX_EXPERTS);
        exit(EXIT_FAILURE);
    }
    // MODEL_SPEC 6: cap = ceil(CF * N * K / E), in double, left to right
    if (cfg.capacity_factor > 0.0)
        cfg.capacity = (int)std::ceil(cfg.capacity_factor * (double)cfg.N * (double)cfg.K / (double)cfg.E);
    else
        cfg.capacity = cfg.N;
    cfg.buffer_rows = std::min(cfg.capacity, cfg.N);
}

struct MoeWeights {         // a view; gradients use the same struct
    float* router;          // (E, C)   W_r
    float* noise;           // (E, C)   W_n
    float* fc_w;            // (E, F, C)
    float* fc_b;            // (E, F)
    float* proj_w;          // (E, C, F)
    float* proj_b;          // (E, C)
    float* shared_fc_w;     // (S, Fs, C)   nullptr when S == 0
    float* shared_fc_b;     // (S, Fs)
    float* shared_proj_w;   // (S, C, Fs)
    float* shared_proj_b;   // (S, C)
};

struct MoeActivations {     // views into one float allocation and one int allocation, made by moe_activation_views
    // routing (forward results, read by the trainer's diagnostics and state dump)
    float* router_logits;   // (N, E)  clean r = W_r u
    float* noise_logits;    // (N, E)  W_n u (pre-softplus)
    float* noise_eps;       // (N, E)  eps ~ N(0,1), filled by the caller before moe_forward when noise applies (allocated rounded up to an even count)
    float* probs;           // (N, E)  p = softmax(h)
    float* gates;           // (N, K)
    int*   topk_idx;        // (N, K)  expert of each choice, highest probability first, ties to the lower index
    int*   kept;            // (N, K)  1 kept, 0 dropped
    int*   slot;            // (N, K)  row in the expert's buffer, -1 when dropped
    int*   tokens_per_expert_routed; // (E) choices per expert before capacity
    int*   tokens_per_expert_kept;   // (E) after capacity
    float* aux;             // (1) load-balance loss of this layer (before its coefficient)
    float* z;               // (1) router z-loss of this layer (before its coefficient)
    // internal: forward
    float* router_lse;      // (N)        logsumexp_i r_t[i] (the z-loss and its gradient)
    int*   slot_choice;     // (E, R)     choice c = t*K + j held in each buffer row, -1 for an empty row
    float* expert_in;       // (E, R, C)  x_e: the dispatched tokens (empty rows 0)
    float* expert_fc;       // (E, R, F)  x_e W1_e^T from the GEMM; then GELU'(x_e W1_e^T + b1_e), kept for the backward
    float* expert_act;      // (E, R, F)  GELU(x_e W1_e^T + b1_e)
    float* expert_out;      // (E, R, C)  act W2_e^T (the bias b2_e is added by combine)
    float* shared_fc;       // (S, N, Fs) as expert_fc
    float* shared_act;      // (S, N, Fs)
    float* shared_out;      // (S, N, C)  (without bias)
    // internal: backward scratch
    float* d_gates;         // (N, K)     dL/dg for kept choices (dropped: 0)
    float* d_router_logits; // (N, E)
    float* d_noise_logits;  // (N, E)
    float* d_expert_out;    // (E, R, C)
    float* d_expert_hidden; // (E, R, F)  dL/d act, then dL/d (x W1^T + b1) (in place)
    float* d_expert_in;     // (E, R, C)
    float* d_shared_hidden; // (S, N, Fs)
    float* d_shared_in;     // (S, N, C)
};

// Every view starts on a 256-byte boundary (64 floats or ints) of its allocation.
inline size_t moe_align(size_t n) { return (n + 63) / 64 * 64; }

// The float views in allocation order, as (pointer member, element count). One list serves the size
// and the views, so the two can never disagree.
template <typename Fn>
inline void moe_for_each_float_view(MoeActivations& a, const MoeConfig& cfg, Fn fn) {
    const size_t N = cfg.N, C = cfg.C, E = cfg.E, K = cfg.K, F = cfg.F, S = cfg.S, Fs = cfg.Fs, R = cfg.buffer_rows;
    fn(a.router_logits, N * E);
    fn(a.noise_logits, N * E);
    fn(a.noise_eps, (N * E + 1) / 2 * 2);
    fn(a.probs, N * E);
    fn(a.gates, N * K);
    fn(a.aux, (size_t)1);
    fn(a.z, (size_t)1);
    fn(a.router_lse, N);
    fn(a.expert_in, E * R * C);
    fn(a.expert_fc, E * R * F);
    fn(a.expert_act, E * R * F);
    fn(a.expert_out, E * R * C);
    fn(a.shared_fc, S * N * Fs);
    fn(a.shared_act, S * N * Fs);
    fn(a.shared_out, S * N * C);
    fn(a.d_gates, N * K);
    fn(a.d_router_logits, N * E);
    fn(a.d_noise_logits, N * E);
    fn(a.d_expert_out, E * R * C);
    fn(a.d_expert_hidden, E * R * F);
    fn(a.d_expert_in, E * R * C);
    fn(a.d_shared_hidden, S * N * Fs);
    fn(a.d_shared_in, S * N * C);
}

template <typename Fn>
inline void moe_for_each_int_view(MoeActivations& a, const MoeConfig& cfg, Fn fn) {
    const size_t N = cfg.N, E = cfg.E, K = cfg.K, R = cfg.buffer_rows;
    fn(a.topk_idx, N * K);
    fn(a.kept, N * K);
    fn(a.slot, N * K);
    fn(a.tokens_per_expert_routed, E);
    fn(a.tokens_per_expert_kept, E);
    fn(a.slot_choice, E * R);
}

inline size_t moe_activation_floats(const MoeConfig& cfg) {
    MoeActivations a{};
    size_t total = 0;
    moe_for_each_float_view(a, cfg, [&](float*&, size_t n) { total += moe_align(n); });
    return total;
}

inline size_t moe_activation_ints(const MoeConfig& cfg) {
    MoeActivations a{};
    size_t total = 0;
    moe_for_each_int_view(a, cfg, [&](int*&, size_t n) { total += moe_align(n); });
    return total;
}

// Empty views (S == 0) are nullptr.
inline void moe_activation_views(MoeActivations& acts, float* float_base, int* int_base, const MoeConfig& cfg) {
    size_t offset = 0;
    moe_for_each_float_view(acts, cfg, [&](float*& p, size_t n) {
        p = n > 0 ? float_base + offset : nullptr;
        offset += moe_align(n);
    });
    offset = 0;
    moe_for_each_int_view(acts, cfg, [&](int*& p, size_t n) {
        p = n > 0 ? int_base + offset : nullptr;
        offset += moe_align(n);
    });
}

// ----------------------------------------------------------------------------------------------
// launch geometry
//
// Row kernels give each row a group of `tpr` consecutive threads (a power of two <= 32, so a group
// never straddles a warp); lane l of the group handles columns l, l+tpr, l+2tpr, ... On a GPU the
// group reads tpr consecutive floats per step; on the CPU layer, where every thread is a fiber that
// costs ~50 ns to start, a thread gets a row segment of about MOE_ROW_SEGMENT elements.
constexpr int MOE_ROW_SEGMENT = 32;
constexpr int MOE_ROW_BLOCK = 128;      // threads per block of a row kernel (a multiple of 32)
constexpr int MOE_TOKEN_BLOCK = 64;     // threads per block of a thread-per-token kernel
constexpr int MOE_SCAN_THREADS = 64;    // threads of a capacity-scan block
constexpr int MOE_REDUCE_THREADS = 256; // threads of the aux/z block (8 warps)
constexpr int MOE_COLUMN_BLOCK = 256;   // threads per block of the column-sum (bias gradient) kernel
constexpr int MOE_ELEMENTWISE_BLOCK = 64;      // an elementwise block covers a tile of 64 * 64 floats (16 KB)
constexpr int MOE_ELEMENTS_PER_THREAD = 64;

inline int moe_threads_per_row(int width) {
    int t = 1;
    while (t < 32 && 2 * t * MOE_ROW_SEGMENT <= width) t *= 2;
    return t;
}

inline int moe_row_grid(long rows, int tpr) { return std::max(1, ceil_div(rows * tpr, MOE_ROW_BLOCK)); }

// ----------------------------------------------------------------------------------------------
// small device math

__device__ inline float moe_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ inline float moe_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// GELU, tanh form (MODEL_SPEC.md):  GELU(z) = 0.5 z (1 + tanh(a)),  a = sqrt(2/pi) (z + 0.044715 z^3).
// Since 0.5 (1 + tanh(a)) = sigmoid(2a) =: s, the same function is z s, and its derivative
//   GELU'(z) = 0.5 (1 + tanh a) + 0.5 z (1 - tanh^2 a) da/dz = s + 2 z s (1 - s) da/dz,
//   da/dz = sqrt(2/pi) (1 + 3 * 0.044715 z^2):
// one expf for both (tanhf costs 3-4 times as much on the CPU layer).
#define MOE_GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)
__device__ inline float moe_gelu_sigmoid(float z) {  // s = sigmoid(2a)
    const float a = MOE_GELU_SCALE * (z + 0.044715f * z * z * z);
    return 1.0f / (1.0f + expf(-2.0f * a));
}
__device__ inline float moe_gelu_slope(float z, float s) {  // GELU'(z) given s
    return s + 2.0f * z * s * (1.0f - s) * MOE_GELU_SCALE * (1.0f + 3.0f * 0.044715f * z * z);
}

// ----------------------------------------------------------------------------------------------
// batched linear layers (cuBLAS, column-major: every row-major product is issued as its transpose,
// as in matmul.cuh). Batch b uses inp + b*inp_stride etc.; a stride of 0 shares one matrix across
// the batch (the shared experts all read the same u).

// out[b] (M,OC) = inp[b] (M,IC) W[b]^T,   W[b] (OC,IC)
inline void moe_batched_linear_forward(float* out, long long out_stride, const float* inp, long long inp_stride,
                                       const float* weight, long long weight_stride, int batch, int M, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, M, IC, &one, weight, IC,
                                           weight_stride, inp, IC, inp_stride, &zero, out, OC, out_stride, batch));
}

// dinp[b] (M,IC) = dout[b] (M,OC) W[b]            (overwritten)
inline void moe_batched_linear_backward_input(float* dinp, long long dinp_stride, const float* dout,
                                              long long dout_stride, const float* weight, long long weight_stride,
                                              int batch, int M, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, IC, M, OC, &one, weight, IC,
                                           weight_stride, dout, OC, dout_stride, &zero, dinp, IC, dinp_stride, batch));
}

// dW[b] (OC,IC) += dout[b]^T (OC,M) inp[b] (M,IC)  (accumulated)
inline void moe_batched_linear_backward_weight(float* dweight, long long weight_stride, const float* dout,
                                               long long dout_stride, const float* inp, long long inp_stride,
                                               int batch, int M, int IC, int OC) {
    const float one = 1.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, M, &one, inp, IC,
                                           inp_stride, dout, OC, dout_stride, &one, dweight, IC, weight_stride, batch));
}

// ----------------------------------------------------------------------------------------------
// 1. router logits:  r_t = W_r u_t  and (noise) W_n u_t,  both (N,E), no bias

inline void moe_router_forward(MoeActivations& acts, const MoeWeights& w, const float* u, const MoeConfig& cfg,
                               bool noise_active) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, cfg.E, cfg.N, cfg.C, &one, w.router, cfg.C, u,
                             cfg.C, &zero, acts.router_logits, cfg.E));
    if (noise_active)
        CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, cfg.E, cfg.N, cfg.C, &one, w.noise, cfg.C,
                                 u, cfg.C, &zero, acts.noise_logits, cfg.E));
}

// ----------------------------------------------------------------------------------------------
// 2. softmax, top-K and gates (one thread per token; its E <= 64 values live in registers)
//
//   h_t = r_t + eps_t * softplus(W_n u_t)   (noise)   or   h_t = r_t
//   p_t = softmax(h_t)
//   e_t1..e_tK = the K largest p_t[i], highest first; equal values go to the lower index i
//   g_tj = p_t[e_tj] / sum_j' p_t[e_tj']  (K > 1)   or   g_t1 = p_t[e_t1]  (K = 1)
//   lse_t = logsumexp_i r_t[i]   (for the z-loss, on the clean logits)
__global__ void moe_route_kernel(float* probs,            // (N,E)
                                 float* gates,            // (N,K)
                                 int* topk_idx,           // (N,K)
                                 float* lse,              // (N)
                                 const float* logits,     // (N,E) r
                                 const float* noise_logits, // (N,E) W_n u   (read only when use_noise)
                                 const float* eps,        // (N,E)           (read only when use_noise)
                                 int N, int E, int K, int use_noise) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float* r = logits + (long)t * E;
    float p[MOE_MAX_EXPERTS];
    float hmax = -INFINITY, rmax = -INFINITY;
    for (int i = 0; i < E; i++) {
        float h = r[i];
        rmax = fmaxf(rmax, h);
        if (use_noise) h += eps[(long)t * E + i] * moe_softplus(noise_logits[(long)t * E + i]);
        p[i] = h;
        hmax = fmaxf(hmax, h);
    }
    float sum = 0.0f, rsum = 0.0f;
    for (int i = 0; i < E; i++) {
        p[i] = expf(p[i] - hmax);
        sum += p[i];
        rsum += expf(r[i] - rmax);
    }
    for (int i = 0; i < E; i++) {
        p[i] = p[i] / sum;
        probs[(long)t * E + i] = p[i];
    }
    lse[t] = rmax + logf(rsum);
    // top-K by K passes of argmax over the experts not taken yet (a bit mask: E <= 64); the strict
    // '>' keeps the lower index on ties (and a NaN row still yields K distinct experts)
    unsigned long long taken = 0;
    float chosen_sum = 0.0f;
    for (int j = 0; j < K; j++) {
        int best = -1;
        float best_p = 0.0f;
        for (int i = 0; i < E; i++) {
            if ((taken >> i) & 1ull) continue;
            if (best < 0 || p[i] > best_p) { best_p = p[i]; best = i; }
        }
        taken |= 1ull << best;
        topk_idx[(long)t * K + j] = best;
        gates[(long)t * K + j] = best_p;
        chosen_sum += best_p;
    }
    if (K > 1)
        for (int j = 0; j < K; j++) gates[(long)t * K + j] = gates[(long)t * K + j] / chosen_sum;
}

// ----------------------------------------------------------------------------------------------
// 3. capacity: who gets a row in an expert's buffer (MODEL_SPEC 6)
//
// Priority order of the choices: q = j*N + t (every token's first choice in token order, then every
// second choice, ...). For expert e, the k-th choice (in that order) that picked e gets slot k, and
// is kept when k < cap. One block per expert: each thread counts the choices for e in its contiguous
// chunk of q, an exclusive scan over the threads' counts gives each thread the number of earlier
// choices for e, and a second pass over the chunk hands out the slots. Integer work only, all on the
// device: the host never sees the counts.
__global__ void moe_capacity_kernel(int* kept,          // (N,K)
                                    int* slot,          // (N,K)
                                    int* slot_choice,   // (E,R)
                                    int* routed,        // (E)
                                    int* kept_count,    // (E)
                                    const int* topk_idx, // (N,K)
                                    int N, int K, int cap, int R) {
    const int e = blockIdx.x;
    const int total = N * K;
    const int chunk = (total + blockDim.x - 1) / blockDim.x;
    const int begin = min(total, (int)threadIdx.x * chunk);
    const int end = min(total, begin + chunk);
    int* offsets = dynamic_shared<int>();  // (blockDim.x + 1)

    int count = 0;
    for (int q = begin; q < end; q++) {
        int t = q % N, j = q / N;
        count += topk_idx[t * K + j] == e;
    }
    offsets[threadIdx.x] = count;
    __syncthreads();
    // exclusive scan of the blockDim counts by one thread: a few dozen adds, two barriers in all
    if (threadIdx.x == 0) {
        int run = 0;
        for (int i = 0; i < (int)blockDim.x; i++) {
            int c = offsets[i];
            offsets[i] = run;
            run += c;
        }
        offsets[blockDim.x] = run;
    }
    __syncthreads();
    int pos = offsets[threadIdx.x];
    for (int q = begin; q < end; q++) {
        int t = q % N, j = q / N;
        int c = t * K + j;
        if (topk_idx[c] != e) continue;
        if (pos < cap) {
            kept[c] = 1;
            slot[c] = pos;
            slot_choice[e * R + pos] = c;
        } else {
            kept[c] = 0;
            slot[c] = -1;
        }
        pos++;
    }
    // rows past the kept tokens are empty (a token picks e at most once, so the routed count <= N,
    // and the kept count <= min(cap, N) = R)
    const int routed_e = offsets[blockDim.x];
    const int kept_e = min(routed_e, cap);
    for (int r = kept_e + threadIdx.x; r < R; r += blockDim.x) slot_choice[e * R + r] = -1;
    if (threadIdx.x == 0) {
        routed[e] = routed_e;
        kept_count[e] = kept_e;
    }
}

// ----------------------------------------------------------------------------------------------
// 4. dispatch: x_e[r] = u[t] for the choice (t, j) held in row r of expert e; an empty row is 0

__global__ void moe_dispatch_kernel(float* expert_in,        // (E,R,C)
                                    const float* u,          // (N,C)
                                    const int* slot_choice,  // (E,R)
                                    int rows, int C, int K, int tpr) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / tpr, lane = g % tpr;
    if (row >= rows) return;
    const int c = slot_choice[row];
    float* dst = expert_in + (long)row * C;
    if (c < 0) {
        for (int i = lane; i < C; i += tpr) dst[i] = 0.0f;
    } else {
        const float* src = u + (long)(c / K) * C;
        for (int i = lane; i < C; i += tpr) dst[i] = src[i];
    }
}

// ----------------------------------------------------------------------------------------------
// 5. bias + GELU for a batch of hidden layers (routed: batch E of R rows; shared: batch S of N rows)
//
//   z = fc[b,m,f] + b1[b,f];   act[b,m,f] = GELU(z);   fc[b,m,f] = GELU'(z)
// The slope GELU'(z) costs a few multiplies here (the exp is shared) and replaces z in memory:
// the backward is then a plain multiply, dL/dz = dL/dact * GELU'(z).
// An empty buffer row (row_choice < 0) is nobody's token: it gets act = slope = 0 without the exp,
// which is what the padding of the capacity buffers would otherwise cost.
__global__ void moe_bias_gelu_kernel(float* fc,             // (B,M,W) in: x W1^T, out: GELU'(x W1^T + b1)
                                     float* act,            // (B,M,W)
                                     const float* bias,     // (B,W)
                                     const int* row_choice, // (B*M) choice held by each row, or nullptr (all used)
                                     int rows /*B*M*/, int M, int W, int tpr) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / tpr, lane = g % tpr;
    if (row >= rows) return;
    const float* b = bias + (long)(row / M) * W;
    float* x = fc + (long)row * W;
    float* y = act + (long)row * W;
    if (row_choice != nullptr && row_choice[row] < 0) {
        for (int i = lane; i < W; i += tpr) x[i] = y[i] = 0.0f;
        return;
    }
    for (int i = lane; i < W; i += tpr) {
        const float z = x[i] + b[i];
        const float s = moe_gelu_sigmoid(z);
        y[i] = z * s;
        x[i] = moe_gelu_slope(z, s);
    }
}

// ----------------------------------------------------------------------------------------------
// 6. combine: out_t = sum_s (ys_s[t] + b2s_s) + sum_{kept j} g_tj (y_{e_tj}[slot_tj] + b2_{e_tj})
// Each output element is written by one thread, shared experts first, then j = 0..K-1 in order.
__global__ void moe_combine_kernel(float* out,                // (N,C)
                                   const float* expert_out,   // (E,R,C) without bias
                                   const float* proj_b,       // (E,C)
                                   const float* shared_out,   // (S,N,C) without bias
                                   const float* shared_proj_b,// (S,C)
                                   const float* gates,        // (N,K)
                                   const int* topk_idx,       // (N,K)
                                   const int* kept,           // (N,K)
                                   const int* slot,           // (N,K)
                                   int N, int C, int K, int R, int S, int tpr) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = g / tpr, lane = g % tpr;
    if (t >= N) return;
    float* o = out + (long)t * C;
    for (int i = lane; i < C; i += tpr) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += shared_out[((long)s * N + t) * C + i] + shared_proj_b[(long)s * C + i];
        o[i] = acc;
    }
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        if (!kept[c]) continue;
        const int e = topk_idx[c];
        const float gate = gates[c];
        const float* y = expert_out + ((long)e * R + slot[c]) * C;
        const float* b = proj_b + (long)e * C;
        for (int i = lane; i < C; i += tpr) o[i] += gate * (y[i] + b[i]);
    }
}

// ----------------------------------------------------------------------------------------------
// 7. router losses (one block; fixed-order reductions)
//
//   P_i = (1/N) sum_t p_t[i],   f_i = routed_i / (N K)   (choices before capacity drops)
//   aux = E sum_i f_i P_i                                 (1 for uniform routing)
//   z   = (1/N) sum_t lse_t^2
// Warp w sums the rows t = w, w+8, ... of p (lane l: columns l and l+32); the 8 partials per column
// are added in warp order by thread i, then thread 0 finishes both sums.
__global__ void moe_aux_z_kernel(float* aux,            // (1)
                                 float* z,              // (1)
                                 const float* probs,    // (N,E)
                                 const float* lse,      // (N)
                                 const int* routed,     // (E)
                                 int N, int E, int K) {
    __shared__ float col_partial[MOE_REDUCE_THREADS / 32][MOE_MAX_EXPERTS];
    __shared__ float z_partial[MOE_REDUCE_THREADS];
    __shared__ float col_sum[MOE_MAX_EXPERTS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float a0 = 0.0f, a1 = 0.0f;
    for (int t = warp; t < N; t += warps) {
        if (lane < E) a0 += probs[(long)t * E + lane];
        if (lane + 32 < E) a1 += probs[(long)t * E + lane + 32];
    }
    col_partial[warp][lane] = a0;
    col_partial[warp][lane + 32] = a1;
    float zs = 0.0f;
    for (int t = threadIdx.x; t < N; t += blockDim.x) zs += lse[t] * lse[t];
    z_partial[threadIdx.x] = zs;
    __syncthreads();
    if ((int)threadIdx.x < E) {
        float s = 0.0f;
        for (int w = 0; w < warps; w++) s += col_partial[w][threadIdx.x];
        col_sum[threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.0f;
        for (int i = 0; i < E; i++) a += ((float)routed[i] / (float)(N * K)) * (col_sum[i] / (float)N);
        *aux = (float)E * a;
        float s = 0.0f;
        for (int i = 0; i < (int)blockDim.x; i++) s += z_partial[i];
        *z = s / (float)N;
    }
}

// ----------------------------------------------------------------------------------------------
// stage launchers (the forward)

// The thread-per-token router kernels hold E values per thread: refuse more than MOE_MAX_EXPERTS.
inline void moe_check_experts(const MoeConfig& cfg) {
    if (cfg.E < 1 || cfg.E > MOE_MAX_EXPERTS || cfg.K < 1 || cfg.K > cfg.E) {
        fprintf(stderr, "[MoE] E=%d, K=%d: need 1 <= K <= E <= %d\n", cfg.E, cfg.K, MOE_MAX_EXPERTS);
        exit(EXIT_FAILURE);
    }
}

inline void moe_route(MoeActivations& acts, const MoeConfig& cfg, bool noise_active) {
    moe_check_experts(cfg);
    LAUNCH(moe_route_kernel, ceil_div(cfg.N, MOE_TOKEN_BLOCK), MOE_TOKEN_BLOCK, 0, 0, acts.probs, acts.gates,
           acts.topk_idx, acts.router_lse, acts.router_logits, acts.noise_logits, acts.noise_eps, cfg.N, cfg.E, cfg.K,
           noise_active ? 1 : 0);
    CUDA_CHECK_LAUNCH();
}

inline void moe_capacity(MoeActivations& acts, const MoeConfig& cfg) {
    LAUNCH(moe_capacity_kernel, cfg.E, MOE_SCAN_THREADS, (MOE_SCAN_THREADS + 1) * sizeof(int), 0, acts.kept,
           acts.slot, acts.slot_choice, acts.tokens_per_expert_routed, acts.tokens_per_expert_kept, acts.topk_idx,
           cfg.N, cfg.K, cfg.capacity, cfg.buffer_rows);
    CUDA_CHECK_LAUNCH();
}

inline void moe_dispatch(MoeActivations& acts, const float* u, const MoeConfig& cfg) {
    const int rows = cfg.E * cfg.buffer_rows, tpr = moe_threads_per_row(cfg.C);
    LAUNCH(moe_dispatch_kernel, moe_row_grid(rows, tpr), MOE_ROW_BLOCK, 0, 0, acts.expert_in, u, acts.slot_choice,
           rows, cfg.C, cfg.K, tpr);
    CUDA_CHECK_LAUNCH();
}

inline void moe_bias_gelu(float* fc, float* act, const float* bias, const int* row_choice, int batch, int M, int W) {
    const int rows = batch * M, tpr = moe_threads_per_row(W);
    LAUNCH(moe_bias_gelu_kernel, moe_row_grid(rows, tpr), MOE_ROW_BLOCK, 0, 0, fc, act, bias, row_choice, rows, M, W,
           tpr);
    CUDA_CHECK_LAUNCH();
}

// The routed experts as E independent FFNs over their buffers: two strided-batched GEMMs and a GELU.
inline void moe_experts_forward(MoeActivations& acts, const MoeWeights& w, const MoeConfig& cfg) {
    const int E = cfg.E, R = cfg.buffer_rows, C = cfg.C, F = cfg.F;
    moe_batched_linear_forward(acts.expert_fc, (long long)R * F, acts.expert_in, (long long)R * C, w.fc_w,
                               (long long)F * C, E, R, C, F);
    moe_bias_gelu(acts.expert_fc, acts.expert_act, w.fc_b, acts.slot_choice, E, R, F);
    moe_batched_linear_forward(acts.expert_out, (long long)R * C, acts.expert_act, (long long)R * F, w.proj_w,
                               (long long)C * F, E, R, F, C);
}

// The shared experts: the same over S, every one reading all N tokens of u (input stride 0).
inline void moe_shared_forward(MoeActivations& acts, const MoeWeights& w, const float* u, const MoeConfig& cfg) {
    if (cfg.S == 0) return;
    const int S = cfg.S, N = cfg.N, C = cfg.C, Fs = cfg.Fs;
    moe_batched_linear_forward(acts.shared_fc, (long long)N * Fs, u, 0, w.shared_fc_w, (long long)Fs * C, S, N, C,
                               Fs);
    moe_bias_gelu(acts.shared_fc, acts.shared_act, w.shared_fc_b, nullptr, S, N, Fs);
    moe_batched_linear_forward(acts.shared_out, (long long)N * C, acts.shared_act, (long long)N * Fs,
                               w.shared_proj_w, (long long)C * Fs, S, N, Fs, C);
}

inline void moe_combine(float* out, MoeActivations& acts, const MoeWeights& w, const MoeConfig& cfg) {
    const int tpr = moe_threads_per_row(cfg.C);
    LAUNCH(moe_combine_kernel, moe_row_grid(cfg.N, tpr), MOE_ROW_BLOCK, 0, 0, out, acts.expert_out, w.proj_b,
           acts.shared_out, w.shared_proj_b, acts.gates, acts.topk_idx, acts.kept, acts.slot, cfg.N, cfg.C, cfg.K,
           cfg.buffer_rows, cfg.S, tpr);
    CUDA_CHECK_LAUNCH();
}

inline void moe_aux_z(MoeActivations& acts, const MoeConfig& cfg) {
    LAUNCH(moe_aux_z_kernel, 1, MOE_REDUCE_THREADS, 0, 0, acts.aux, acts.z, acts.probs, acts.router_lse,
           acts.tokens_per_expert_routed, cfg.N, cfg.E, cfg.K);
    CUDA_CHECK_LAUNCH();
}

// out = FFN_moe(u) (routed + shared, MODEL_SPEC step 7); also fills the routing tensors, the counts,
// aux and z. With noise (cfg.noise && training) acts.noise_eps must hold fresh N(0,1) draws.
inline void moe_forward(float* out,                 // (N,C) overwritten
                        MoeActivations& acts,
                        const MoeWeights& w,
                        const float* u,             // (N,C)
                        const MoeConfig& cfg, bool training) {
    const bool noise_active = cfg.noise && training;
    moe_router_forward(acts, w, u, cfg, noise_active);
    moe_route(acts, cfg, noise_active);
    moe_capacity(acts, cfg);
    moe_dispatch(acts, u, cfg);
    moe_experts_forward(acts, w, cfg);
    moe_shared_forward(acts, w, u, cfg);
    moe_combine(out, acts, w, cfg);
    moe_aux_z(acts, cfg);
}

// ==============================================================================================
// backward

// combine, backward to the expert outputs (one row group per buffer row):
//   dy_e[r] = g_tj dout[t]   for the choice (t, j) in row r of expert e;   an empty row: dy = 0
// (the bias b2_e gets its gradient from the column sums of dy; shared experts read dout directly)
__global__ void moe_combine_backward_kernel(float* d_expert_out,    // (E,R,C)
                                            const float* dout,      // (N,C)
                                            const float* gates,     // (N,K)
                                            const int* slot_choice, // (E,R)
                                            int rows, int C, int K, int tpr) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / tpr, lane = g % tpr;
    if (row >= rows) return;
    const int c = slot_choice[row];
    float* dst = d_expert_out + (long)row * C;
    if (c < 0) {
        for (int i = lane; i < C; i += tpr) dst[i] = 0.0f;
    } else {
        const float gate = gates[c];
        const float* src = dout + (long)(c / K) * C;
        for (int i = lane; i < C; i += tpr) dst[i] = gate * src[i];
    }
}

// Column sums of a batch of matrices (the bias gradients), one thread per (b, column), rows in order:
//   dbias[b, w] += sum_m d[b, m, w]      (d_stride 0: every b sums the same matrix)
__global__ void moe_bias_backward_kernel(float* dbias,      // (B,W) +=
                                         const float* d,    // (B,M,W) with batch stride d_stride
                                         long d_stride, int B, int M, int W) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= B * W) return;
    const int b = g / W, col = g % W;
    const float* x = d + b * d_stride + col;
    float acc = 0.0f;
    for (int m = 0; m < M; m++) acc += x[(long)m * W];
    dbias[g] += acc;
}

// GELU backward, in place:  dL/dz = dL/dact * GELU'(z), the slope saved by the forward (0 on empty rows)
// Block b owns the contiguous tile [b*T, (b+1)*T), T = blockDim * MOE_ELEMENTS_PER_THREAD; thread i
// takes i, i + blockDim, ... of it: coalesced on a GPU, and on the CPU layer (where the block's threads
// run one after another) the tile stays in L1. A grid-wide stride would walk every thread across the
// whole array instead, several times slower there.
__global__ void moe_gelu_backward_kernel(float* d,            // (n) in: dL/d act, out: dL/dz
                                         const float* slope,  // (n) GELU'(z)
                                         long n) {
    const long begin = (long)blockIdx.x * blockDim.x * MOE_ELEMENTS_PER_THREAD;
    const long end = min(n, begin + (long)blockDim.x * MOE_ELEMENTS_PER_THREAD);
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) d[i] *= slope[i];
}

// Router backward (one thread per token): everything between the combine and the logits.
//   gate:     dg_tj = dout_t . (y_{e_tj}[slot_tj] + b2_{e_tj})        for kept j (a dropped choice: 0)
//   gates:    K > 1: g_j = p_{e_j} / D, D = sum_j' p_{e_j'} (over all K chosen, dropped ones included)
//                    dp_{e_j} = (dg_j - sum_j' dg_j' g_j') / D
//             K = 1: dp_{e_1} = dg_1
//   aux:      dp_i += aux_coef * E * f_i / N,    f_i = routed_i / (N K) (a constant)
//   softmax:  dh_i = p_i (dp_i - sum_k p_k dp_k)
//   z-loss:   dr_i = dh_i + z_coef * (2/N) lse_t softmax(r_t)_i
//   noise:    d(W_n u)_i = dh_i * eps_i * sigmoid((W_n u)_i)       (h = r + eps softplus(W_n u))
__global__ void moe_router_backward_kernel(float* d_logits,        // (N,E)
                                           float* d_noise_logits,  // (N,E) (written only when use_noise)
                                           float* d_gates,         // (N,K)
                                           const float* dout,      // (N,C)
                                           const float* expert_out,// (E,R,C)
                                           const float* proj_b,    // (E,C)
                                           const float* probs,     // (N,E)
                                           const float* gates,     // (N,K)
                                           const int* topk_idx,    // (N,K)
                                           const int* kept,        // (N,K)
                                           const int* slot,        // (N,K)
                                           const float* logits,    // (N,E) r
                                           const float* lse,       // (N)
                                           const float* noise_logits, // (N,E)
                                           const float* eps,       // (N,E)
                                           const int* routed,      // (E)
                                           int N, int C, int E, int K, int R,
                                           float aux_coef, float z_coef, int use_noise) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float* p = probs + (long)t * E;
    const float* d_o = dout + (long)t * C;
    // gate gradients and the renormalisation
    float dp[MOE_MAX_EXPERTS];
    const float aux_scale = aux_coef * (float)E / ((float)N * (float)N * (float)K);
    for (int i = 0; i < E; i++) dp[i] = aux_scale * (float)routed[i];
    float denom = 0.0f, dg_dot_g = 0.0f;
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        float dg = 0.0f;
        if (kept[c]) {
            const int e = topk_idx[c];
            const float* y = expert_out + ((long)e * R + slot[c]) * C;
            const float* b = proj_b + (long)e * C;
            for (int i = 0; i < C; i++) dg += d_o[i] * (y[i] + b[i]);
        }
        d_gates[c] = dg;
        denom += p[topk_idx[c]];
        dg_dot_g += dg * gates[c];
    }
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        dp[topk_idx[c]] += K > 1 ? (d_gates[c] - dg_dot_g) / denom : d_gates[c];
    }
    // softmax backward, then the z-loss and the noise path
    float pdp = 0.0f;
    for (int i = 0; i < E; i++) pdp += p[i] * dp[i];
    const float* r = logits + (long)t * E;
    const float z_scale = z_coef * 2.0f * lse[t] / (float)N;
    for (int i = 0; i < E; i++) {
        const float dh = p[i] * (dp[i] - pdp);
        d_logits[(long)t * E + i] = dh + z_scale * expf(r[i] - lse[t]);
        if (use_noise) {
            const long k = (long)t * E + i;
            d_noise_logits[k] = dh * eps[k] * moe_sigmoid(noise_logits[k]);
        }
    }
}

// du_t = sum_s dxs_s[t] + sum_{kept j} dx_{e_tj}[slot_tj]     (the router's share is added by GEMMs after)
__global__ void moe_gather_backward_kernel(float* du,                // (N,C) overwritten
                                           const float* d_expert_in, // (E,R,C)
                                           const float* d_shared_in, // (S,N,C)
                                           const int* topk_idx,      // (N,K)
                                           const int* kept,          // (N,K)
                                           const int* slot,          // (N,K)
                                           int N, int C, int K, int R, int S, int tpr) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = g / tpr, lane = g % tpr;
    if (t >= N) return;
    float* o = du + (long)t * C;
    for (int i = lane; i < C; i += tpr) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += d_shared_in[((long)s * N + t) * C + i];
        o[i] = acc;
    }
    for (int j = 0; j < K; j++) {
        const int c = t * K + j;
        if (!kept[c]) continue;
        const float* dx = d_expert_in + ((long)topk_idx[c] * R + slot[c]) * C;
        for (int i = lane; i < C; i += tpr) o[i] += dx[i];
    }
}

// ----------------------------------------------------------------------------------------------
// stage launchers (the backward)

inline void moe_combine_backward(MoeActivations& acts, const float* dout, const MoeConfig& cfg) {
    const int rows = cfg.E * cfg.buffer_rows, tpr = moe_threads_per_row(cfg.C);
    LAUNCH(moe_combine_backward_kernel, moe_row_grid(rows, tpr), MOE_ROW_BLOCK, 0, 0, acts.d_expert_out, dout,
           acts.gates, acts.slot_choice, rows, cfg.C, cfg.K, tpr);
    CUDA_CHECK_LAUNCH();
}

inline void moe_bias_backward(float* dbias, const float* d, long d_stride, int B, int M, int W) {
    LAUNCH(moe_bias_backward_kernel, ceil_div((long)B * W, MOE_COLUMN_BLOCK), MOE_COLUMN_BLOCK, 0, 0,
           dbias, d, d_stride, B, M, W);
    CUDA_CHECK_LAUNCH();
}

inline void moe_gelu_backward(float* d, const float* slope, long n) {
    const int grid = std::max(1, ceil_div(n, (long)MOE_ELEMENTWISE_BLOCK * MOE_ELEMENTS_PER_THREAD));
    LAUNCH(moe_gelu_backward_kernel, grid, MOE_ELEMENTWISE_BLOCK, 0, 0, d, slope, n);
    CUDA_CHECK_LAUNCH();
}

// The routed experts backward, from dy (acts.d_expert_out) to dx (acts.d_expert_in) and the weights.
inline void moe_experts_backward(MoeActivations& acts, const MoeWeights& grads, const MoeWeights& w,
                                 const MoeConfig& cfg) {
    const int E = cfg.E, R = cfg.buffer_rows, C = cfg.C, F = cfg.F;
    moe_bias_backward(grads.proj_b, acts.d_expert_out, (long)R * C, E, R, C);
    moe_batched_linear_backward_input(acts.d_expert_hidden, (long long)R * F, acts.d_expert_out, (long long)R * C,
                                      w.proj_w, (long long)C * F, E, R, F, C);
    moe_batched_linear_backward_weight(grads.proj_w, (long long)C * F, acts.d_expert_out, (long long)R * C,
                                       acts.expert_act, (long long)R * F, E, R, F, C);
    moe_gelu_backward(acts.d_expert_hidden, acts.expert_fc, (long)E * R * F);
    moe_bias_backward(grads.fc_b, acts.d_expert_hidden, (long)R * F, E, R, F);
    moe_batched_linear_backward_weight(grads.fc_w, (long long)F * C, acts.d_expert_hidden, (long long)R * F,
                                       acts.expert_in, (long long)R * C, E, R, C, F);
    moe_batched_linear_backward_input(acts.d_expert_in, (long long)R * C, acts.d_expert_hidden, (long long)R * F,
                                      w.fc_w, (long long)F * C, E, R, C, F);
}

// The shared experts backward: each one's output gradient is dout itself (weight 1), read with stride 0.
inline void moe_shared_backward(MoeActivations& acts, const MoeWeights& grads, const float* dout,
                                const MoeWeights& w, const float* u, const MoeConfig& cfg) {
    if (cfg.S == 0) return;
    const int S = cfg.S, N = cfg.N, C = cfg.C, Fs = cfg.Fs;
    moe_bias_backward(grads.shared_proj_b, dout, 0, S, N, C);
    moe_batched_linear_backward_input(acts.d_shared_hidden, (long long)N * Fs, dout, 0, w.shared_proj_w,
                                      (long long)C * Fs, S, N, Fs, C);
    moe_batched_linear_backward_weight(grads.shared_proj_w, (long long)C * Fs, dout, 0, acts.shared_act,
                                       (long long)N * Fs, S, N, Fs, C);
    moe_gelu_backward(acts.d_shared_hidden, acts.shared_fc, (long)S * N * Fs);
    moe_bias_backward(grads.shared_fc_b, acts.d_shared_hidden, (long)N * Fs, S, N, Fs);
    moe_batched_linear_backward_weight(grads.shared_fc_w, (long long)Fs * C, acts.d_shared_hidden,
                                       (long long)N * Fs, u, 0, S, N, C, Fs);
    moe_batched_linear_backward_input(acts.d_shared_in, (long long)N * C, acts.d_shared_hidden, (long long)N * Fs,
                                      w.shared_fc_w, (long long)Fs * C, S, N, C, Fs);
}

inline void moe_router_backward(MoeActivations& acts, const float* dout, const MoeWeights& w, const MoeConfig& cfg,
                                float aux_coef, float z_coef, bool noise_active) {
    moe_check_experts(cfg);
    LAUNCH(moe_router_backward_kernel, ceil_div(cfg.N, MOE_TOKEN_BLOCK), MOE_TOKEN_BLOCK, 0, 0, acts.d_router_logits,
           acts.d_noise_logits, acts.d_gates, dout, acts.expert_out, w.proj_b, acts.probs, acts.gates, acts.topk_idx,
           acts.kept, acts.slot, acts.router_logits, acts.router_lse, acts.noise_logits, acts.noise_eps,
           acts.tokens_per_expert_routed, cfg.N, cfg.C, cfg.E, cfg.K, cfg.buffer_rows, aux_coef, z_coef,
           noise_active ? 1 : 0);
    CUDA_CHECK_LAUNCH();
}

inline void moe_gather_backward(float* du, MoeActivations& acts, const MoeConfig& cfg) {
    const int tpr = moe_threads_per_row(cfg.C);
    LAUNCH(moe_gather_backward_kernel, moe_row_grid(cfg.N, tpr), MOE_ROW_BLOCK, 0, 0, du, acts.d_expert_in,
           acts.d_shared_in, acts.topk_idx, acts.kept, acts.slot, cfg.N, cfg.C, cfg.K, cfg.buffer_rows, cfg.S, tpr);
    CUDA_CHECK_LAUNCH();
}

// The router GEMMs backward:  du += dr W_r (+ d(W_n u) W_n);   dW_r += dr^T u;   dW_n += d(W_n u)^T u
inline void moe_router_logits_backward(float* du, const MoeWeights& grads, MoeActivations& acts, const MoeWeights& w,
                                       const float* u, const MoeConfig& cfg, bool noise_active) {
    const float one = 1.0f;
    const int N = cfg.N, C = cfg.C, E = cfg.E;
    cublasHandle_t h = cublas_handle();
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, E, &one, w.router, C, acts.d_router_logits, E, &one,
                             du, C));
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, E, N, &one, u, C, acts.d_router_logits, E, &one,
                             grads.router, C));
    if (noise_active) {
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, E, &one, w.noise, C, acts.d_noise_logits, E, &one,
                                 du, C));
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, E, N, &one, u, C, acts.d_noise_logits, E, &one,
                                 grads.noise, C));
    }
}

// Backward of  dout . out + aux_coef*aux + z_coef*z  (dout already carries the 1/N of the mean CE).
// du is overwritten; the weight gradients accumulate (+=) into grads. Uses the routing of the last
// moe_forward (and its noise draws: pass the same `training`).
inline void moe_backward(float* du,                 // (N,C) overwritten
                         const MoeWeights& grads,   // +=
                         const float* dout,         // (N,C)
                         MoeActivations& acts,
                         const MoeWeights& w,
                         const float* u,            // (N,C)
                         const MoeConfig& cfg, float aux_coef, float z_coef, bool training) {
    const bool noise_active = cfg.noise && training;
    moe_combine_backward(acts, dout, cfg);
    moe_experts_backward(acts, grads, w, cfg);
    moe_shared_backward(acts, grads, dout, w, u, cfg);
    moe_router_backward(acts, dout, w, cfg, aux_coef, z_coef, noise_active);
    moe_gather_backward(du, acts, cfg);
    moe_router_logits_backward(du, grads, acts, w, u, cfg, noise_active);
}
