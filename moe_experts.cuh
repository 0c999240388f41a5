// moe_experts.cuh: the experts themselves. Every expert is an ordinary FFN (docs/model.md, sections
// 16 and 17):
//
//   y = GELU(x W1^T + b1) W2^T + b2          W1 (H, C), b1 (H), W2 (C, H), b2 (C)
//
// and a layer runs a batch of them at once: the E routed experts, each over the R rows of its
// buffer, or the S shared experts, each over all N tokens. The two matrix products of a whole batch
// are one strided-batched cuBLAS call each; the biases and the GELU are one kernel each.
//
// An empty buffer row (a slot no token took, row_choice < 0) stays exactly zero through the whole
// FFN, forward and backward, so the padding of the buffers never shows up in any result.
#pragma once
#include "common.cuh"
#include "activations.cuh"  // gelu, gelu_sigmoid, gelu_backward
#include "matmul.cuh"       // bias_backward

// ----------------------------------------------------------------------------------------------
// batched linear layers: cuBLAS is column-major, so every row-major product is issued as its
// transpose (as in matmul.cuh). Batch b reads inp + b*inp_stride, and so on; a stride of 0 gives
// every b the same matrix (the shared experts all read the same u).

// out[b] (M,OC) = inp[b] (M,IC) W[b]^T,   W[b] (OC,IC)
inline void batched_linear_forward(float* out, long long out_stride, const float* inp, long long inp_stride,
                                   const float* weight, long long weight_stride, int batch, int M, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, M, IC, &one, weight, IC,
                                           weight_stride, inp, IC, inp_stride, &zero, out, OC, out_stride, batch));
}

// dinp[b] (M,IC) = dout[b] (M,OC) W[b]            (overwritten)
inline void batched_linear_backward_input(float* dinp, long long dinp_stride, const float* dout, long long dout_stride,
                                          const float* weight, long long weight_stride, int batch, int M, int IC,
                                          int OC) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, IC, M, OC, &one, weight, IC,
                                           weight_stride, dout, OC, dout_stride, &zero, dinp, IC, dinp_stride, batch));
}

// dW[b] (OC,IC) += dout[b]^T (OC,M) inp[b] (M,IC)  (accumulated)
inline void batched_linear_backward_weight(float* dweight, long long weight_stride, const float* dout,
                                           long long dout_stride, const float* inp, long long inp_stride, int batch,
                                           int M, int IC, int OC) {
    const float one = 1.0f;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, M, &one, inp, IC,
                                           inp_stride, dout, OC, dout_stride, &one, dweight, IC, weight_stride, batch));
}

// ----------------------------------------------------------------------------------------------
// the biases and the GELU
//
//   hidden:  pre[b,m,:] = pre[b,m,:] + b1[b,:]   (in place: the GEMM's x W1^T becomes x W1^T + b1)
//            act[b,m,:] = GELU(pre[b,m,:])
//   output:  out[b,m,:] += b2[b,:]
// Each row (b, m) gets a group of threads_per_row(W) consecutive threads of one warp; lane l takes
// columns l, l + lanes, ..., so a group reads consecutive floats (coalesced). Rows with
// row_choice[row] < 0 (empty buffer rows) are set to zero instead (row_choice nullptr: all rows
// are used). The backward of the GELU needs GELU'(pre), computed again from `pre` (one exp): cheaper
// than a third (rows, H) buffer, and `pre` is what the math calls it.
__global__ void expert_hidden_forward_kernel(float* pre,              // (B,M,W) in: x W1^T, out: + b1
                                             float* act,              // (B,M,W) GELU(pre)
                                             const float* bias,       // (B,W)
                                             const int* row_choice,   // (B*M) or nullptr
                                             int rows /* B*M */, int M, int W, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / lanes, lane = g % lanes;
    if (row >= rows) return;
    const float* b = bias + (long)(row / M) * W;
    float* z = pre + (long)row * W;
    float* y = act + (long)row * W;
    if (row_choice != nullptr && row_choice[row] < 0) {
        for (int i = lane; i < W; i += lanes) z[i] = y[i] = 0.0f;
        return;
    }
    for (int i = lane; i < W; i += lanes) {
        z[i] = z[i] + b[i];
        y[i] = gelu(z[i]);
    }
}

__global__ void expert_output_bias_kernel(float* out,             // (B,M,W) +=
                                          const float* bias,      // (B,W)
                                          const int* row_choice,  // (B*M) or nullptr
                                          int rows /* B*M */, int M, int W, int lanes) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = g / lanes, lane = g % lanes;
    if (row >= rows) return;
    if (row_choice != nullptr && row_choice[row] < 0) return;  // stays 0
    const float* b = bias + (long)(row / M) * W;
    float* y = out + (long)row * W;
    for (int i = lane; i < W; i += lanes) y[i] = y[i] + b[i];
}

inline void expert_hidden_forward(float* pre, float* act, const float* bias, const int* row_choice, int batch, int M,
                                  int W) {
    const int rows = batch * M, lanes = threads_per_row(W), block_size = 128;
    expert_hidden_forward_kernel<<<ceil_div((long)rows * lanes, block_size), block_size>>>(pre, act, bias, row_choice,
                                                                                         rows, M, W, lanes);
    CUDA_CHECK(cudaGetLastError());
}

inline void expert_output_bias(float* out, const float* bias, const int* row_choice, int batch, int M, int W) {
    const int rows = batch * M, lanes = threads_per_row(W), block_size = 128;
    expert_output_bias_kernel<<<ceil_div((long)rows * lanes, block_size), block_size>>>(out, bias, row_choice, rows,
                                                                                      M, W, lanes);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------
// a batch of expert FFNs, forward and backward

// The weights of a batch of `batch` FFNs of hidden width H on width C (gradients use the same struct).
struct ExpertWeights {
    float* fc_w;    // (batch, H, C)  W1
    float* fc_b;    // (batch, H)     b1
    float* proj_w;  // (batch, C, H)  W2
    float* proj_b;  // (batch, C)     b2
};

// out[b] = GELU(inp[b] W1_b^T + b1_b) W2_b^T + b2_b for b < batch, M rows each.
// inp_stride is M*C for per-expert inputs, 0 when every FFN reads the same M rows.
inline void expert_ffn_forward(float* out,             // (batch, M, C)
                               float* pre,             // (batch, M, H)  x W1^T + b1, kept for the backward
                               float* act,             // (batch, M, H)  GELU(pre), kept for the backward
                               const float* inp,       // (batch, M, C) with batch stride inp_stride
                               long long inp_stride,
                               const ExpertWeights& w,
                               const int* row_choice,  // (batch*M) choice in each row, -1 empty; nullptr: all used
                               int batch, int M, int C, int H) {
    batched_linear_forward(pre, (long long)M * H, inp, inp_stride, w.fc_w, (long long)H * C, batch, M, C, H);
    expert_hidden_forward(pre, act, w.fc_b, row_choice, batch, M, H);
    batched_linear_forward(out, (long long)M * C, act, (long long)M * H, w.proj_w, (long long)C * H, batch, M, H, C);
    expert_output_bias(out, w.proj_b, row_choice, batch, M, C);
}

// The backward of expert_ffn_forward, from dout to dinp (overwritten) and the weight gradients (+=).
// dout_stride is M*C per FFN, or 0 when every FFN receives the same gradient (the shared experts:
// each one's output enters the layer's output with weight 1). d_hidden is scratch.
//   db2 = column sums of dout;  d act = dout W2;  dW2 += dout^T act;
//   d pre = d act * GELU'(pre);  db1 = column sums of d pre;  dW1 += d pre^T x;  dx = d pre W1
// Each expert sums its bias gradient over its rows in row order (one row group: bit-for-bit the
// order the layer has always used).
inline void expert_ffn_backward(float* dinp,           // (batch, M, C) overwritten
                                float* d_hidden,       // (batch, M, H) scratch
                                const ExpertWeights& grads,
                                const float* dout,     // (batch, M, C) with batch stride dout_stride
                                long long dout_stride,
                                const float* pre,      // (batch, M, H)
                                const float* act,      // (batch, M, H)
                                const float* inp,      // (batch, M, C) with batch stride inp_stride
                                long long inp_stride,
                                const ExpertWeights& w,
                                int batch, int M, int C, int H) {
    bias_backward(grads.proj_b, dout, dout_stride, batch, M, C, 1);
    batched_linear_backward_input(d_hidden, (long long)M * H, dout, dout_stride, w.proj_w, (long long)C * H, batch, M,
                                  H, C);
    batched_linear_backward_weight(grads.proj_w, (long long)C * H, dout, dout_stride, act, (long long)M * H, batch, M,
                                   H, C);
    gelu_backward(d_hidden, pre, d_hidden, (long)batch * M * H);
    bias_backward(grads.fc_b, d_hidden, (long long)M * H, batch, M, H, 1);
    batched_linear_backward_weight(grads.fc_w, (long long)H * C, d_hidden, (long long)M * H, inp, inp_stride, batch, M,
                                   C, H);
    batched_linear_backward_input(dinp, (long long)M * C, d_hidden, (long long)M * H, w.fc_w, (long long)H * C, batch,
                                  M, C, H);
}
