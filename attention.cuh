// attention.cuh: causal multi-head self-attention (docs/model.md section 4), llm.c style.
//
// qkv (B,T,3C) is the c_attn output: q, k, v are its three C-wide thirds, head h uses columns
// h*hs .. (h+1)*hs-1 of each (hs = C/NH). Per head, with scale = 1/sqrt(hs):
//   preatt = q k^T              (T,T)   cuBLAS, strided-batched over the B*NH heads
//   att    = causal_softmax(scale * preatt)   our kernel; masked entries (key > query) exactly 0
//   y      = att v              (T,hs)  cuBLAS, written straight into out (B,T,C)
// Backward, with dy the head's slice of dout and dpreatt = scale * softmax'(datt):
//   datt = dy v^T,  dv = att^T dy,  dq = dpreatt k,  dk = dpreatt^T q
//
// Layouts. qkvr (3,B,NH,T,hs) holds q, k, v permuted so each head is a contiguous (T,hs) matrix.
// The products that touch out/dout/dqkv address the head slices in place instead of permuting:
// head h of sequence b is the (T,hs) matrix at column h*hs with leading dimension C (or 3C), and
// consecutive heads are hs floats apart, so one strided-batched call covers the NH heads of a
// sequence. cuBLAS is column-major: a row-major (R,K) matrix is its transpose with leading dim K.
#pragma once
#include <cmath>
#include "common.cuh"

// qkvr[which,b,h,t,d] = qkv[b,t, which*C + h*hs + d]   (which = 0,1,2 for q,k,v)
// A block copies a run of 32 token rows (b,t). Thread j owns columns j, j+blockDim, ... of the 3C:
// it splits a column into (which, h, d) once and then copies it for every row of the run, so there
// is no integer division per element. At each step a warp reads consecutive columns of one row
// (coalesced) and writes runs of hs consecutive floats.
__global__ void attention_permute_kernel(float* qkvr,       // (3,B,NH,T,hs)
                                         const float* qkv,  // (B,T,3C)
                                         int B, int T, int C, int NH) {
    const int hs = C / NH, rows = B * T;
    const int row_begin = blockIdx.x * 32, row_end = min(rows, row_begin + 32);
    for (int col = threadIdx.x; col < 3 * C; col += blockDim.x) {
        const int which = col / C, h = (col % C) / hs, d = col % hs;
        float* dst = qkvr + (long)which * rows * C + (long)h * T * hs + d;  // row (b,t) adds (b*NH*T + t)*hs
        int b = row_begin / T, t = row_begin % T;
        for (int bt = row_begin; bt < row_end; bt++) {
            dst[((long)b * NH * T + t) * hs] = qkv[(long)bt * 3 * C + col];
            if (++t == T) t = 0, b++;
        }
    }
}

// att[t,j] = exp(scale*pre[t,j] - max) / sum_{j'<=t} exp(scale*pre[t,j'] - max) for j <= t, 0 for j > t
// A group of `lanes` = threads_per_row(T) consecutive threads per row (b,h,t) (common.cuh), in
// place: lane l reads and writes columns l, l + lanes, ... of its row only (coalesced), and max and
// sum are butterfly __shfl_xor_sync reductions inside the group. Only the t+1 visible keys are read;
// the masked ones are just written as 0. Memory-bound: the (B*NH, T, T) matrix is read once and
// written once (the second pass over a row hits the cache).
__global__ void attention_softmax_kernel(float* att,  // (B*NH,T,T) in: q k^T, out: probabilities
                                         int rows, int T, float scale, int lanes) {
    const int lane = threadIdx.x % lanes;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    const int t = row < rows ? row % T : -1;  // query position: keys 0..t are visible (idle group: none)
    const int len = row < rows ? T : 0;
    float* a = att + (long)row * T;

    float maxval = -INFINITY;
    for (int j = lane; j <= t; j += lanes) maxval = fmaxf(maxval, a[j]);
    for (int offset = lanes / 2; offset > 0; offset /= 2) maxval = fmaxf(maxval, __shfl_xor_sync(0xffffffff, maxval, offset));
    maxval *= scale;  // scale > 0, so max(scale * x) = scale * max(x), bit for bit

    float sum = 0.0f;
    for (int j = lane; j <= t; j += lanes) {
        const float e = expf(scale * a[j] - maxval);
        a[j] = e;
        sum += e;
    }
    for (int offset = lanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    const float inv_sum = 1.0f / sum;

    for (int j = lane; j < len; j += lanes) a[j] = j <= t ? a[j] * inv_sum : 0.0f;
}

// dpre[t,j] = scale * att[t,j] * (datt[t,j] - sum_{j'<=t} att[t,j'] datt[t,j'])  for j <= t, 0 for j > t
// A group of `lanes` threads per row, in place on datt, mapped as in the forward: a butterfly for the
// dot product, then one coalesced pass that writes the row.
__global__ void attention_softmax_backward_kernel(float* datt,       // (B*NH,T,T) in: datt, out: dpreatt
                                                  const float* att,  // (B*NH,T,T)
                                                  int rows, int T, float scale, int lanes) {
    const int lane = threadIdx.x % lanes;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    const int t = row < rows ? row % T : -1;
    const int len = row < rows ? T : 0;
    float* d = datt + (long)row * T;
    const float* a = att + (long)row * T;

    float dot = 0.0f;
    for (int j = lane; j <= t; j += lanes) dot += a[j] * d[j];
    for (int offset = lanes / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffff, dot, offset);

    for (int j = lane; j < len; j += lanes) d[j] = j <= t ? scale * a[j] * (d[j] - dot) : 0.0f;
}

// Floats of scratch attention_backward needs: datt (B,NH,T,T). (The gradients of q, k, v are
// written straight into dqkv, so no permuted (3,B,NH,T,hs) buffer is needed.)
inline size_t attention_scratch_floats(int B, int T, int C, int NH) {
    (void)C;
    return (size_t)B * NH * T * T;
}

inline void attention_forward(float* out,        // (B,T,C)
                              float* qkvr,       // (3,B,NH,T,hs) scratch kept for backward
                              float* att,        // (B,NH,T,T) softmax probs kept for backward
                              const float* qkv,  // (B,T,3C)
                              int B, int T, int C, int NH) {
    if ((long)B * T * C <= 0) return;
    const int hs = C / NH;
    const long head = (long)T * hs;  // floats of one head's q (or k, v) in qkvr
    const float* q = qkvr;           // (B,NH,T,hs)
    const float* k = qkvr + (long)B * NH * head;
    const float* v = qkvr + 2L * B * NH * head;
    const float one = 1.0f, zero = 0.0f;

    attention_permute_kernel<<<ceil_div((long)B * T, 32), 128>>>(qkvr, qkv, B, T, C, NH);
    CUDA_CHECK(cudaGetLastError());

    // preatt = q k^T: column-major (Tk,Tq) = k (Tk,hs) . q^T (hs,Tq), i.e. row-major (Tq,Tk)
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs,
                                           &one, k, hs, head, q, hs, head, &zero, att, T, (long)T * T, B * NH));

    const int rows = B * NH * T, lanes = threads_per_row(T);
    attention_softmax_kernel<<<ceil_div((long)rows * lanes, 128), 128>>>(att, rows, T, 1.0f / sqrtf((float)hs), lanes);
    CUDA_CHECK(cudaGetLastError());

    // y = att v per sequence: column-major (hs,Tq) = v^T (hs,Tk) . att^T (Tk,Tq), written into out
    // at column h*hs with leading dimension C (the unpermute is folded into the output layout)
    for (int b = 0; b < B; b++) {
        CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T,
                                               &one, v + (long)b * NH * head, hs, head,
                                               att + (long)b * NH * T * T, T, (long)T * T,
                                               &zero, out + (long)b * T * C, C, hs, NH));
    }
}

inline void attention_backward(float* dqkv,         // (B,T,3C) overwritten
                               float* scratch,      // (attention_scratch_floats) = datt (B,NH,T,T)
                               const float* dout,   // (B,T,C)
                               const float* qkvr,   // (3,B,NH,T,hs) from attention_forward
                               const float* att,    // (B,NH,T,T) from attention_forward
                               int B, int T, int C, int NH) {
    if ((long)B * T * C <= 0) return;
    const int hs = C / NH;
    const long head = (long)T * hs;
    const float* q = qkvr;  // (B,NH,T,hs)
    const float* k = qkvr + (long)B * NH * head;
    const float* v = qkvr + 2L * B * NH * head;
    float* datt = scratch;  // (B,NH,T,T), becomes dpreatt in place
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t handle = cublas_handle();

    for (int b = 0; b < B; b++) {
        const float* dy = dout + (long)b * T * C;  // head h: (T,hs) at column h*hs, leading dim C
        const float* v_b = v + (long)b * NH * head;
        const float* att_b = att + (long)b * NH * T * T;
        float* datt_b = datt + (long)b * NH * T * T;
        float* dv = dqkv + (long)b * T * 3 * C + 2 * C;  // head h: (T,hs) at column 2C + h*hs, leading dim 3C
        // datt = dy v^T: column-major (Tk,Tq) = v (Tk,hs) . dy^T (hs,Tq)
        CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs,
                                               &one, v_b, hs, head, dy, C, hs, &zero, datt_b, T, (long)T * T, NH));
        // dv = att^T dy: column-major (hs,Tk) = dy^T (hs,Tq) . att (Tq,Tk)
        CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T,
                                               &one, dy, C, hs, att_b, T, (long)T * T, &zero, dv, 3 * C, hs, NH));
    }

    const int rows = B * NH * T, lanes = threads_per_row(T);
    attention_softmax_backward_kernel<<<ceil_div((long)rows * lanes, 128), 128>>>(datt, att, rows, T,
                                                                                  1.0f / sqrtf((float)hs), lanes);
    CUDA_CHECK(cudaGetLastError());

    for (int b = 0; b < B; b++) {
        const float* dpre_b = datt + (long)b * NH * T * T;
        const float* q_b = q + (long)b * NH * head;
        const float* k_b = k + (long)b * NH * head;
        float* dq = dqkv + (long)b * T * 3 * C;      // leading dim 3C
        float* dk = dqkv + (long)b * T * 3 * C + C;  // leading dim 3C
        // dq = dpreatt k: column-major (hs,Tq) = k^T (hs,Tk) . dpreatt^T (Tk,Tq)
        CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T,
                                               &one, k_b, hs, head, dpre_b, T, (long)T * T, &zero, dq, 3 * C, hs, NH));
        // dk = dpreatt^T q: column-major (hs,Tk) = q^T (hs,Tq) . dpreatt (Tq,Tk)
        CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T,
                                               &one, q_b, hs, head, dpre_b, T, (long)T * T, &zero, dk, 3 * C, hs, NH));
    }
}
