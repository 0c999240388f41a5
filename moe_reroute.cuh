// moe_reroute.cuh: --overflow reroute, the choices that capacity dropped get further chances at the
// token's next-best experts (docs/model.md, "Routing variants").
//
//   rank_t        token t's E experts ordered by the selection score (p_t, or p_t + b with a bias),
//                 highest first, ties to the lower index; rank_t[0..K-1] are its original choices
//   round r = 1 .. E-K:
//     proposal    every token with an unplaced choice proposes expert rank_t[K + r - 1] for its
//                 unplaced choice of lowest rank j
//     accept      each expert takes the proposals of each token group in token order while it has
//                 free slots in that group (the slots continue after those of the capacity step)
//   a placed choice j names its new expert (topk_idx[t*K + j]); one still unplaced after the last
//   round stays dropped (it keeps its original expert and contributes nothing)
//   gates         step 5 again, over the token's final K experts:
//                 g_j = p[e_j] / sum_j' p[e_j'] (K > 1), g_1 = p[e_1] (K = 1)
//
// The backward needs nothing of its own: the combine, dispatch and router backward read the final
// topk_idx, kept, slot and gates, so the gates' gradient reaches p of the final experts (the
// renormalisation over the final set), while the aux loss keeps counting the ORIGINAL choices
// (tokens_per_expert_routed is written by the capacity step, before rerouting, and not touched here).
//
// Buffer rows: the group layout of moe_dispatch.cuh (group g's slots of expert e are rows
// g*Rg .. (g+1)*Rg - 1 of e's buffer, Rg = min(capacity, N/G)). A token's final experts are
// distinct (it proposes each expert of its rank at most once, and never one of its first K), so no
// expert holds more than N/G tokens of a group and the rows always suffice.
#pragma once
#include "common.cuh"
#include "moe_router.cuh"

// ----------------------------------------------------------------------------------------------
// rank:  rank_t = the E experts by selection score, highest first (ties: lower index)
//
// One thread per token: E passes of argmax over the experts not ranked yet (a 64-bit mask, strict
// '>', exactly router_top_k's comparisons), so rank_t[0..K-1] equals the token's top-K bit for bit.
// E^2 <= 4096 compares per token, in registers; the (N,E) result is read by every round.
__global__ void moe_reroute_rank_kernel(int* expert_rank,    // (N,E)
                                        const float* probs,  // (N,E)
                                        const float* bias,   // (E) selection bias (nullptr: none)
                                        int N, int E) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float* p = probs + (long)t * E;
    unsigned long long taken = 0;
    for (int k = 0; k < E; k++) {
        int best = -1;
        float best_score = 0.0f;
        for (int i = 0; i < E; i++) {
            if ((taken >> i) & 1ull) continue;
            const float score = router_selection_score(p, bias, i);
            if (best < 0 || score > best_score) { best_score = score; best = i; }
        }
        taken |= 1ull << best;
        expert_rank[(long)t * E + k] = best;
    }
}

// ----------------------------------------------------------------------------------------------
// one round r: token t proposes rank_t[K + r - 1] when it has an unplaced choice; expert e accepts
// the proposals of group g in token order while its group-g slots last:
//   accepted proposal number k (0-based, token order) of group g gets slot fill_eg + k, if < capacity
//
// One block per expert, walking the groups in order, as the capacity kernel: thread i owns a
// contiguous chunk of the group's tokens and counts the proposals to e in it, a one-thread
// exclusive scan in shared memory gives each thread its first slot, a second pass hands them out.
// Only block e ever writes the choices of a token proposing e in this round, and another block
// reads that token's kept flags only after seeing that its proposal is not for it (rank first),
// so the blocks never race. placed[e] = the choices e took this round (the diagnostics sum them).
__global__ void moe_reroute_round_kernel(int* topk_idx,           // (N,K)  the placed choice's new expert
                                         int* kept,               // (N,K)
                                         int* slot,               // (N,K)
                                         int* slot_choice,        // (E,R)
                                         int* group_fill,         // (E,G)  slots used per (expert, group)
                                         int* kept_count,         // (E)    += this round's placements
                                         int* placed,             // (E)    this round's placements
                                         const int* expert_rank,  // (N,E)
                                         int N, int E, int K, int capacity, int R, int groups, int round) {
    extern __shared__ int offsets[];  // (blockDim.x + 1)
    const int e = blockIdx.x;
    const int proposal_rank = K + round - 1;
    const int group_tokens = N / groups, group_rows = R / groups;
    const int chunk = (group_tokens + blockDim.x - 1) / blockDim.x;
    const int begin = min(group_tokens, (int)threadIdx.x * chunk);
    const int end = min(group_tokens, begin + chunk);
    int placed_e = 0;
    for (int g = 0; g < groups; g++) {
        const int first_token = g * group_tokens;
        int count = 0;
        for (int i = begin; i < end; i++) {
            const int t = first_token + i;
            if (expert_rank[(long)t * E + proposal_rank] != e) continue;
            int unplaced = 0;
            for (int j = 0; j < K; j++) unplaced += kept[t * K + j] == 0;
            count += unplaced > 0;
        }
        offsets[threadIdx.x] = count;
        __syncthreads();
        if (threadIdx.x == 0) {  // exclusive scan of the blockDim.x counts
            int run = 0;
            for (int i = 0; i < (int)blockDim.x; i++) {
                int c = offsets[i];
                offsets[i] = run;
                run += c;
            }
            offsets[blockDim.x] = run;
        }
        __syncthreads();
        const int fill = group_fill[e * groups + g];
        int pos = fill + offsets[threadIdx.x];
        for (int i = begin; i < end && pos < capacity; i++) {
            const int t = first_token + i;
            if (expert_rank[(long)t * E + proposal_rank] != e) continue;
            int j = 0;
            while (j < K && kept[t * K + j]) j++;
            if (j == K) continue;  // every choice placed: no proposal
            const int c = t * K + j, row = g * group_rows + pos;
            kept[c] = 1;
            slot[c] = row;
            topk_idx[c] = e;
            slot_choice[(long)e * R + row] = c;
            pos++;
        }
        const int accepted = min(offsets[blockDim.x], capacity - fill);
        placed_e += accepted;
        __syncthreads();  // every thread has read group_fill and offsets[blockDim.x]
        if (threadIdx.x == 0) group_fill[e * groups + g] = fill + accepted;
    }
    if (threadIdx.x == 0) {
        kept_count[e] += placed_e;
        placed[e] = placed_e;
    }
}

// ----------------------------------------------------------------------------------------------
// gates over the final experts: step 5 again (the same float operations as router_top_k: the sum
// of p over the choices in rank order, then one division each). One thread per token.
__device__ inline void router_gates_of_choices(float* gates, const int* experts, const float* p, int K) {
    float chosen_sum = 0.0f;
    for (int j = 0; j < K; j++) {
        gates[j] = p[experts[j]];
        chosen_sum += p[experts[j]];
    }
    if (K > 1)
        for (int j = 0; j < K; j++) gates[j] = gates[j] / chosen_sum;
}

__global__ void moe_reroute_gates_kernel(float* gates,          // (N,K)
                                         const int* topk_idx,   // (N,K) the final experts
                                         const float* probs,    // (N,E)
                                         int N, int E, int K) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    router_gates_of_choices(gates + (long)t * K, topk_idx + (long)t * K, probs + (long)t * E, K);
}

// The rounds after the capacity step (which filled kept, slot, slot_choice, kept_count and
// group_fill), then the gates. E-K + 2 launches, all on the device: the host never learns how many
// choices were placed. placed_per_round is (E-K, E): round r's placements per expert.
inline void moe_reroute(int* topk_idx, int* kept, int* slot, int* slot_choice, int* group_fill, int* kept_count,
                        int* placed_per_round, int* expert_rank, float* gates, const float* probs, const float* bias,
                        int N, int E, int K, int capacity, int R, int groups) {
    const int token_block = 64, block_size = 64;
    moe_reroute_rank_kernel<<<ceil_div(N, token_block), token_block>>>(expert_rank, probs, bias, N, E);
    CUDA_CHECK(cudaGetLastError());
    for (int round = 1; round <= E - K; round++) {
        moe_reroute_round_kernel<<<E, block_size, (block_size + 1) * sizeof(int)>>>(
            topk_idx, kept, slot, slot_choice, group_fill, kept_count, placed_per_round + (long)(round - 1) * E,
            expert_rank, N, E, K, capacity, R, groups, round);
        CUDA_CHECK(cudaGetLastError());
    }
    moe_reroute_gates_kernel<<<ceil_div(N, token_block), token_block>>>(gates, topk_idx, probs, N, E, K);
    CUDA_CHECK(cudaGetLastError());
}
