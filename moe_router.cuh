// moe_router.cuh: the router: which experts a token goes to, with what weights, and the two losses
// that keep it healthy (docs/model.md, sections 9-13 and 19-21).
//
//   r_t = W_r u_t                                  router logits (N,E)
//   h_t = r_t + eps_t * softplus(W_n u_t)          noisy logits, training only (else h = r)
//   p_t = softmax(h_t)                             probabilities
//         (--gate sigmoid: s_t = sigmoid(h_t) elementwise takes p_t's place in every line below, and
//          pn_t = s_t / sum_i s_t[i] is the normalised score the aux loss and the entropy use;
//          with softmax pn_t = p_t)
//   e_t1..e_tK = the K largest p_t[i]              top-K, highest first, ties to the lower index
//   g_tj = p_t[e_tj] / sum_j' p_t[e_tj']           gates (K > 1; with K = 1, g_t1 = p_t[e_t1])
//   aux = E sum_i f_i P_i                          load balance, f_i = routed_i / (N K), P_i = mean_t pn_t[i]
//   z   = (1/N) sum_t logsumexp(r_t)^2             keeps the logits small
//   H   = (1/N) sum_t -sum_i pn_t[i] ln pn_t[i]    router entropy (--entropy-coef c only)
//   loss += aux_coef * aux + z_coef * z - entropy_coef * H
//   with --bias-rate: top-K on p_t + b (gates still from p_t); b_i += gamma sign(NK/E - routed_i) after each update
//
// Each step's forward and backward are device functions side by side below; one kernel per
// direction (a thread per token, its E <= MOE_MAX_EXPERTS values in registers) runs them in order.
#pragma once
#include <cstdint>
#include "common.cuh"
#include "model_config.h"  // MOE_MAX_EXPERTS

// ----------------------------------------------------------------------------------------------
// router logits:  r = u W_r^T  and, with noise, n = u W_n^T   (both (N,E), no bias)

inline void moe_router_logits_forward(float* logits,        // (N,E)
                                      float* noise_logits,  // (N,E), written when noisy
                                      const float* router_w,// (E,C)
                                      const float* noise_w, // (E,C)
                                      const float* u,       // (N,C)
                                      int N, int C, int E, bool noisy) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, E, N, C, &one, router_w, C, u, C, &zero,
                             logits, E));
    if (noisy)
        CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, E, N, C, &one, noise_w, C, u, C, &zero,
                                 noise_logits, E));
}

// du += dr W_r (+ dn W_n);   dW_r += dr^T u;   dW_n += dn^T u
inline void moe_router_logits_backward(float* du,                  // (N,C) +=
                                       float* d_router_w,          // (E,C) +=
                                       float* d_noise_w,           // (E,C) +=
                                       const float* d_logits,      // (N,E)
                                       const float* d_noise_logits,// (N,E)
                                       const float* router_w, const float* noise_w, const float* u,
                                       int N, int C, int E, bool noisy) {
    const float one = 1.0f;
    cublasHandle_t h = cublas_handle();
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, E, &one, router_w, C, d_logits, E, &one, du, C));
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, E, N, &one, u, C, d_logits, E, &one, d_router_w, C));
    if (noisy) {
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, E, &one, noise_w, C, d_noise_logits, E, &one, du,
                                 C));
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, E, N, &one, u, C, d_noise_logits, E, &one, d_noise_w,
                                 C));
    }
}

// ----------------------------------------------------------------------------------------------
// router noise:  eps ~ N(0, 1), a fresh (N,E) draw for every (training step, layer)
//
// The draws come from one Philox stream per run; draw d = step * layers + layer starts at offset
// d * count (count = N*E rounded up to even, as cuRAND's normal generator wants), so a resumed run
// sees exactly the noise it would have seen. The generator remembers where it stands: moving it
// costs a re-initialisation, which consecutive draws skip.
struct RouterNoise {
    curandGenerator_t generator = nullptr;
    unsigned long long position = ~0ull;  // offset of the generator's next number
};

inline void router_noise_create(RouterNoise& noise, uint64_t seed) {
    CURAND_CHECK(create_generator(&noise.generator, CURAND_RNG_PSEUDO_PHILOX4_32_10));
    CURAND_CHECK(curandSetPseudoRandomGeneratorSeed(noise.generator, seed ^ 0x6E6F697365ull));  // "noise"
}

inline void router_noise_destroy(RouterNoise& noise) {
    if (noise.generator) curandDestroyGenerator(noise.generator);
    noise = RouterNoise{};
}

// Noise values one draw needs for N tokens and E experts.
inline size_t router_noise_count(int N, int E) {
    const size_t count = (size_t)N * E;
    return count + count % 2;
}

inline void router_noise_draw(float* eps,  // (router_noise_count(N, E))
                              RouterNoise& noise, unsigned long long draw, int N, int E) {
    const size_t count = router_noise_count(N, E);
    const unsigned long long offset = draw * count;
    if (offset != noise.position) CURAND_CHECK(curandSetGeneratorOffset(noise.generator, offset));
    CURAND_CHECK(curandGenerateNormal(noise.generator, eps, count, 0.0f, 1.0f));
    noise.position = offset + count;
}

// noisy logits:  h_i = r_i + eps_i softplus(n_i)
// backward:      dn_i = dh_i eps_i sigmoid(n_i)            (softplus' = sigmoid; dr_i = dh_i)
__device__ inline float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ inline void router_noisy_logits(float* h, const float* r, const float* n, const float* eps, int E) {
    for (int i = 0; i < E; i++) h[i] = n ? r[i] + eps[i] * softplus(n[i]) : r[i];
}

__device__ inline void router_noisy_logits_backward(float* dn, const float* dh, const float* n, const float* eps,
                                                    int E) {
    for (int i = 0; i < E; i++) dn[i] = dh[i] * eps[i] * sigmoid(n[i]);
}

// ----------------------------------------------------------------------------------------------
// softmax:   p_i = exp(h_i - max h) / sum_k exp(h_k - max h)
// backward:  dh_i = p_i (dp_i - sum_k p_k dp_k)              (in place on dp)

__device__ inline void router_softmax(float* p, const float* h, int E) {
    float hmax = -INFINITY;
    for (int i = 0; i < E; i++) hmax = fmaxf(hmax, h[i]);
    float sum = 0.0f;
    for (int i = 0; i < E; i++) {
        p[i] = expf(h[i] - hmax);
        sum += p[i];
    }
    for (int i = 0; i < E; i++) p[i] = p[i] / sum;
}

__device__ inline void router_softmax_backward(float* dp_to_dh, const float* p, int E) {
    float pdp = 0.0f;
    for (int i = 0; i < E; i++) pdp += p[i] * dp_to_dh[i];
    for (int i = 0; i < E; i++) dp_to_dh[i] = p[i] * (dp_to_dh[i] - pdp);
}

// ----------------------------------------------------------------------------------------------
// sigmoid scores (--gate sigmoid, DeepSeek-V3): each expert scored on its own
//   s_i = sigmoid(h_i) = 1 / (1 + exp(-h_i))
// backward:  dh_i = ds_i s_i (1 - s_i)                    (in place on ds)

__device__ inline void router_sigmoid_scores(float* s, const float* h, int E) {
    for (int i = 0; i < E; i++) s[i] = sigmoid(h[i]);
}

__device__ inline void router_sigmoid_backward(float* ds_to_dh, const float* s, int E) {
    for (int i = 0; i < E; i++) ds_to_dh[i] = ds_to_dh[i] * (s[i] * (1.0f - s[i]));
}

// normalised scores (sigmoid gate; what the aux loss and the entropy see):
//   pn_i = s_i / S,  S = sum_k s_k            (returns S; the sum runs in expert order)
// backward:  ds_k = (dpn_k - sum_i pn_i dpn_i) / S       (in place on dpn)

__device__ inline float router_normalise(float* pn, const float* s, int E) {
    float sum = 0.0f;
    for (int i = 0; i < E; i++) sum += s[i];
    for (int i = 0; i < E; i++) pn[i] = s[i] / sum;
    return sum;
}

__device__ inline void router_normalise_backward(float* dpn_to_ds, const float* pn, float score_sum, int E) {
    float pdp = 0.0f;
    for (int i = 0; i < E; i++) pdp += pn[i] * dpn_to_ds[i];
    for (int i = 0; i < E; i++) dpn_to_ds[i] = (dpn_to_ds[i] - pdp) / score_sum;
}

// router entropy of one token (--entropy-coef):  H_t = -sum_i pn_i ln pn_i   (0 ln 0 = 0)
// backward of the loss term -c H with H = (1/N) sum_t H_t:  dpn_i += (c/N) (ln pn_i + 1). The "+1"
// is left out: a constant added to every dpn_i is removed exactly by the next stage (the softmax's
// or the normalisation's "- sum_i pn_i dpn_i", since sum_i pn_i = 1). An expert with pn_i = 0 gets
// no entropy gradient (its term's derivative p ln p -> 0 through either backward).

__device__ inline float router_entropy(const float* pn, int E) {
    float h = 0.0f;
    for (int i = 0; i < E; i++)
        if (pn[i] > 0.0f) h -= pn[i] * logf(pn[i]);
    return h;
}

__device__ inline void router_entropy_backward(float* dpn, const float* pn, float entropy_coef, int N, int E) {
    const float scale = entropy_coef / (float)N;
    for (int i = 0; i < E; i++)
        if (pn[i] > 0.0f) dpn[i] += scale * logf(pn[i]);
}

// ----------------------------------------------------------------------------------------------
// top-K and gates:  e_1..e_K = the K largest p_i (highest first; equal values go to the lower
// index i), g_j = p_{e_j} / D with D = sum_j' p_{e_j'} when K > 1, g_1 = p_{e_1} when K = 1.
// backward (D counts every chosen expert, dropped ones too):
//   K > 1:  dp_{e_j} += (dg_j - sum_j' dg_j' g_j') / D
//   K = 1:  dp_{e_1} += dg_1

// The score a token's experts are ranked by: p_i, or p_i + b_i with aux-loss-free balancing
// (--bias-rate: the layer's selection bias b, not trained by gradient). The bias only decides WHICH
// experts are chosen; the gates are always computed from the unbiased p. Every ranking of a
// token's experts (top-K, the reroute order) goes through this one function, so they agree bit
// for bit with each other and with the reference (one float add, p + b).
__device__ inline float router_selection_score(const float* p, const float* bias, int i) {
    return bias ? p[i] + bias[i] : p[i];
}

// K passes of argmax over the experts not taken yet (a 64-bit mask: E <= 64); the strict '>'
// keeps the lower index on ties, and a row of NaNs still yields K distinct experts. The argmax is
// over the selection score (p, or p + b with a bias: `bias` nullptr means none); the gate of a
// chosen expert is its unbiased p.
__device__ inline void router_top_k(int* topk_idx, float* gates, const float* p, int E, int K,
                                    const float* bias = nullptr) {
    unsigned long long taken = 0;
    float chosen_sum = 0.0f;
    for (int j = 0; j < K; j++) {
        int best = -1;
        float best_score = 0.0f;
        for (int i = 0; i < E; i++) {
            if ((taken >> i) & 1ull) continue;
            const float score = router_selection_score(p, bias, i);
            if (best < 0 || score > best_score) { best_score = score; best = i; }
        }
        taken |= 1ull << best;
        topk_idx[j] = best;
        gates[j] = p[best];
        chosen_sum += p[best];
    }
    if (K > 1)
        for (int j = 0; j < K; j++) gates[j] = gates[j] / chosen_sum;
}

__device__ inline void router_top_k_backward(float* dp, const float* d_gates, const float* gates, const int* topk_idx,
                                             const float* p, int K) {
    float denom = 0.0f, dg_dot_g = 0.0f;
    for (int j = 0; j < K; j++) {
        denom += p[topk_idx[j]];
        dg_dot_g += d_gates[j] * gates[j];
    }
    for (int j = 0; j < K; j++) dp[topk_idx[j]] += K > 1 ? (d_gates[j] - dg_dot_g) / denom : d_gates[j];
}

// ----------------------------------------------------------------------------------------------
// the auxiliary losses
//
//   aux = E sum_i f_i P_i,   f_i = routed_i / (N K) (choices before capacity drops),  P_i = (1/N) sum_t p_t[i]
//         1 for perfectly uniform routing; f is a count, so only P carries a gradient:
//         d(aux_coef aux)/dp_t[i] = aux_coef E f_i / N
//         (sigmoid gate: P_i = (1/N) sum_t pn_t[i], and the same value is d(aux_coef aux)/dpn_t[i])
//   z   = (1/N) sum_t lse_t^2,   lse_t = logsumexp_i r_t[i]   (on the clean logits r)
//         d(z_coef z)/dr_t[i] = z_coef (2/N) lse_t softmax(r_t)_i

__device__ inline float router_logsumexp(const float* r, int E) {
    float rmax = -INFINITY;
    for (int i = 0; i < E; i++) rmax = fmaxf(rmax, r[i]);
    float sum = 0.0f;
    for (int i = 0; i < E; i++) sum += expf(r[i] - rmax);
    return rmax + logf(sum);
}

// dp_i = the aux-loss gradient (the start of dp: the gates' gradient is added after)
__device__ inline void aux_loss_backward(float* dp, const int* routed, float aux_coef, int N, int E, int K) {
    const float scale = aux_coef * (float)E / ((float)N * (float)N * (float)K);
    for (int i = 0; i < E; i++) dp[i] = scale * (float)routed[i];
}

// dr_i = dh_i + the z-loss gradient
__device__ inline void z_loss_backward(float* dr, const float* dh, const float* r, float lse, float z_coef, int N,
                                       int E) {
    const float scale = z_coef * 2.0f * lse / (float)N;
    for (int i = 0; i < E; i++) dr[i] = dh[i] + scale * expf(r[i] - lse);
}

// Both losses of one layer (one block, fixed-order reductions). Warp w sums the rows t = w, w+W,
// ... of pn (lane l: columns l and l + 32); thread i then adds the W warp partials of column i in
// warp order, and thread 0 finishes both sums. One block is enough: the work is N*E adds.
// With the entropy bonus, H = (1/N) sum_t H_t is summed like z (thread-strided partials, then
// thread 0 in thread order) from the per-token entropies of the route kernel.
__global__ void moe_router_losses_kernel(float* aux,          // (1)
                                         float* z,            // (1)
                                         const float* probs,  // (N,E) pn (= p with softmax)
                                         const float* lse,    // (N)
                                         const int* routed,   // (E)
                                         int N, int E, int K,
                                         const float* token_entropy,  // (N) H_t   (nullptr: no entropy)
                                         float* entropy) {            // (1) H
    constexpr int block_size = 256, warps = block_size / 32;
    __shared__ float column_partial[warps][MOE_MAX_EXPERTS];
    __shared__ float z_partial[block_size];
    __shared__ float entropy_partial[block_size];
    __shared__ float column_sum[MOE_MAX_EXPERTS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float a0 = 0.0f, a1 = 0.0f;
    for (int t = warp; t < N; t += warps) {
        if (lane < E) a0 += probs[(long)t * E + lane];
        if (lane + 32 < E) a1 += probs[(long)t * E + lane + 32];
    }
    column_partial[warp][lane] = a0;
    column_partial[warp][lane + 32] = a1;
    float zs = 0.0f;
    for (int t = threadIdx.x; t < N; t += block_size) zs += lse[t] * lse[t];
    z_partial[threadIdx.x] = zs;
    if (token_entropy) {
        float hs = 0.0f;
        for (int t = threadIdx.x; t < N; t += block_size) hs += token_entropy[t];
        entropy_partial[threadIdx.x] = hs;
    }
    __syncthreads();
    if ((int)threadIdx.x < E) {
        float s = 0.0f;
        for (int w = 0; w < warps; w++) s += column_partial[w][threadIdx.x];
        column_sum[threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.0f;
        for (int i = 0; i < E; i++) a += ((float)routed[i] / (float)(N * K)) * (column_sum[i] / (float)N);
        *aux = (float)E * a;
        float s = 0.0f;
        for (int i = 0; i < block_size; i++) s += z_partial[i];
        *z = s / (float)N;
        if (token_entropy) {
            float hs = 0.0f;
            for (int i = 0; i < block_size; i++) hs += entropy_partial[i];
            *entropy = hs / (float)N;
        }
    }
}

// probs: the normalised scores pn (the probabilities p with softmax). token_entropy / entropy:
// nullptr unless the entropy bonus is on.
inline void moe_router_losses(float* aux, float* z, const float* probs, const float* lse, const int* routed, int N,
                              int E, int K, const float* token_entropy = nullptr, float* entropy = nullptr) {
    moe_router_losses_kernel<<<1, 256>>>(aux, z, probs, lse, routed, N, E, K, token_entropy, entropy);
    CUDA_CHECK(cudaGetLastError());
}

// The model's losses = [total, ce, aux summed over layers, z summed over layers, entropy summed over
// layers] take this layer's share: total += aux_coef aux + z_coef z (- entropy_coef H with the
// entropy bonus; entropy nullptr: none). (One thread: five floats, no host round trip.)
__global__ void moe_add_losses_kernel(float* losses,     // (5)
                                      const float* aux,  // (1)
                                      const float* z,    // (1)
                                      float aux_coef, float z_coef,
                                      const float* entropy,  // (1) H   (nullptr: no entropy bonus)
                                      float entropy_coef) {
    losses[0] += aux_coef * aux[0] + z_coef * z[0];
    losses[2] += aux[0];
    losses[3] += z[0];
    if (entropy) {
        losses[0] -= entropy_coef * entropy[0];
        losses[4] += entropy[0];
    }
}

inline void moe_add_losses(float* losses, const float* aux, const float* z, float aux_coef, float z_coef,
                           const float* entropy = nullptr, float entropy_coef = 0.0f) {
    moe_add_losses_kernel<<<1, 1>>>(losses, aux, z, aux_coef, z_coef, entropy, entropy_coef);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// the router, forward: logits -> (noise) -> softmax -> top-K -> gates, and lse for the z-loss
// (sigmoid gate: logits -> (noise) -> sigmoid -> top-K -> gates, and pn = s / sum s; with the
// entropy bonus, each token's H_t on pn as well)
//
// One thread per token: its E logits and probabilities live in registers (E <= MOE_MAX_EXPERTS);
// the reads of a warp's 32 tokens are E floats apart, which the L1 cache absorbs for E <= 64. The
// sigmoid path keeps a second E-float array (pn) in registers; sigmoid_gate is uniform across the
// grid, so the branch never diverges within a warp.
__global__ void moe_route_kernel(float* probs,              // (N,E)
                                 float* gates,              // (N,K)
                                 int* topk_idx,             // (N,K)
                                 float* lse,                // (N)
                                 const float* logits,       // (N,E) r
                                 const float* noise_logits, // (N,E) n = W_n u   (nullptr: no noise)
                                 const float* eps,          // (N,E)             (nullptr: no noise)
                                 int N, int E, int K,
                                 const float* bias,         // (E) selection bias b   (nullptr: none)
                                 bool sigmoid_gate,         // scores s = sigmoid(h) instead of p = softmax(h)
                                 float* norm_probs,         // (N,E) pn = s / sum s   (nullptr: not kept)
                                 float* token_entropy) {    // (N) H_t = H(pn_t)      (nullptr: not needed)
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const long row = (long)t * E;
    const float* r = logits + row;
    float h[MOE_MAX_EXPERTS], p[MOE_MAX_EXPERTS];  // p: the scores (softmax p or sigmoid s)
    router_noisy_logits(h, r, noise_logits ? noise_logits + row : nullptr, eps ? eps + row : nullptr, E);
    if (sigmoid_gate)
        router_sigmoid_scores(p, h, E);
    else
        router_softmax(p, h, E);
    for (int i = 0; i < E; i++) probs[row + i] = p[i];
    if (sigmoid_gate || token_entropy) {
        float pn_sigmoid[MOE_MAX_EXPERTS];
        const float* pn = p;  // softmax: pn = p
        if (sigmoid_gate) {
            router_normalise(pn_sigmoid, p, E);
            pn = pn_sigmoid;
            if (norm_probs)
                for (int i = 0; i < E; i++) norm_probs[row + i] = pn[i];
        }
        if (token_entropy) token_entropy[t] = router_entropy(pn, E);
    }
    lse[t] = router_logsumexp(r, E);
    router_top_k(topk_idx + (long)t * K, gates + (long)t * K, p, E, K, bias);
}

inline void moe_route(float* probs, float* gates, int* topk_idx, float* lse, const float* logits,
                      const float* noise_logits, const float* eps, int N, int E, int K,
                      const float* bias = nullptr, bool sigmoid_gate = false, float* norm_probs = nullptr,
                      float* token_entropy = nullptr) {
    const int block_size = 64;
    moe_route_kernel<<<ceil_div(N, block_size), block_size>>>(probs, gates, topk_idx, lse, logits, noise_logits, eps,
                                                             N, E, K, bias, sigmoid_gate, norm_probs, token_entropy);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// the router, backward: the same steps in reverse, one thread per token
//   dp = aux gradient;  dp += gates' gradient (dg from the combine);  dh = softmax backward;
//   dr = dh + z gradient;  dn = noise backward of dh
// With the entropy bonus, dpn += its gradient after the aux's. With the sigmoid gate, the aux and
// entropy gradients are on pn: ds = normalisation backward of dpn (pn recomputed from s by the
// forward's own function, so the same bits), then ds += gates' gradient, dh = sigmoid backward.
__global__ void moe_router_backward_kernel(float* d_logits,            // (N,E)
                                           float* d_noise_logits,      // (N,E)  (nullptr: no noise)
                                           const float* d_gates,       // (N,K)  dL/dg from the combine
                                           const float* probs,         // (N,E)
                                           const float* gates,         // (N,K)
                                           const int* topk_idx,        // (N,K)
                                           const float* logits,        // (N,E)  r
                                           const float* lse,           // (N)
                                           const float* noise_logits,  // (N,E)
                                           const float* eps,           // (N,E)
                                           const int* routed,          // (E)
                                           int N, int E, int K, float aux_coef, float z_coef,
                                           bool sigmoid_gate, float entropy_coef) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const long row = (long)t * E, choices = (long)t * K;
    const float* p = probs + row;  // the scores: softmax p, or sigmoid s
    float d[MOE_MAX_EXPERTS];  // dpn, then dp (ds), then dh in place
    aux_loss_backward(d, routed, aux_coef, N, E, K);
    if (sigmoid_gate || entropy_coef != 0.0f) {
        float pn_sigmoid[MOE_MAX_EXPERTS], score_sum = 1.0f;
        const float* pn = p;  // softmax: pn = p
        if (sigmoid_gate) {
            score_sum = router_normalise(pn_sigmoid, p, E);
            pn = pn_sigmoid;
        }
        if (entropy_coef != 0.0f) router_entropy_backward(d, pn, entropy_coef, N, E);
        if (sigmoid_gate) router_normalise_backward(d, pn, score_sum, E);
    }
    router_top_k_backward(d, d_gates + choices, gates + choices, topk_idx + choices, p, K);
    if (sigmoid_gate)
        router_sigmoid_backward(d, p, E);
    else
        router_softmax_backward(d, p, E);
    z_loss_backward(d_logits + row, d, logits + row, lse[t], z_coef, N, E);
    if (d_noise_logits) router_noisy_logits_backward(d_noise_logits + row, d, noise_logits + row, eps + row, E);
}

inline void moe_router_backward(float* d_logits, float* d_noise_logits, const float* d_gates, const float* probs,
                                const float* gates, const int* topk_idx, const float* logits, const float* lse,
                                const float* noise_logits, const float* eps, const int* routed, int N, int E, int K,
                                float aux_coef, float z_coef, bool sigmoid_gate = false, float entropy_coef = 0.0f) {
    const int block_size = 64;
    moe_router_backward_kernel<<<ceil_div(N, block_size), block_size>>>(d_logits, d_noise_logits, d_gates, probs,
                                                                       gates, topk_idx, logits, lse, noise_logits,
                                                                       eps, routed, N, E, K, aux_coef, z_coef,
                                                                       sigmoid_gate, entropy_coef);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// aux-loss-free balancing (--bias-rate gamma, DeepSeek-V3): the selection bias's update
//
//   b_i += gamma * sign(N*K/E - routed_i)        after every training step's optimizer update
//
// routed_i = the step's choices that picked expert i, before capacity (tokens_per_expert_routed of
// the step's training forward), sign(0) = 0. The sign is taken exactly, in integers:
// sign(N*K/E - routed_i) = sign(N*K - E*routed_i). An overloaded expert's bias falls, an idle
// expert's rises, by gamma per step: no gradient, no loss term, no optimizer moments.
__device__ inline float router_bias_step(float b, int routed, int N, int E, int K, float gamma) {
    const long long excess = (long long)E * routed - (long long)N * K;  // E * (routed_i - N*K/E)
    return excess < 0 ? b + gamma : excess > 0 ? b - gamma : b;
}

// One thread per expert (E <= 64: one warp-sized block); reads E counts and writes E floats that
// stay on the device, so the training step needs no host round trip.
__global__ void moe_bias_update_kernel(float* bias,        // (E) b, updated in place
                                       const int* routed,  // (E)
                                       int N, int E, int K, float gamma) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < E) bias[i] = router_bias_step(bias[i], routed[i], N, E, K, gamma);
}

inline void moe_bias_update(float* bias, const int* routed, int N, int E, int K, float gamma) {
    moe_bias_update_kernel<<<1, 64>>>(bias, routed, N, E, K, gamma);
    CUDA_CHECK(cudaGetLastError());
}
