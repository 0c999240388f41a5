// tests/reference.h: plain C++ reference for every GPT kernel, forward and backward.
//
// Straight loops over the math of MODEL_SPEC.md, host memory only, one function per launcher:
// ref_<kernel> takes the same arguments in the same order. Templated on the scalar type so the
// double versions serve the finite-difference tests; sums accumulate in double either way.
// Gradient convention, as in the kernels: parameter gradients and layernorm's dinp accumulate
// (+=), other activation gradients are overwritten.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

// ---------------------------------------------------------------- encoder
// out[b,t,:] = wte[idx[b,t],:] + wpe[t,:]
template <typename T>
void ref_encoder_forward(T* out, const int* idx, const T* wte, const T* wpe, int B, int Tn, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int c = 0; c < C; c++)
                out[((long)b * Tn + t) * C + c] = wte[(long)idx[b * Tn + t] * C + c] + wpe[(long)t * C + c];
}

// dwte[idx[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]
template <typename T>
void ref_encoder_backward(T* dwte, T* dwpe, const T* dout, const int* idx, int B, int Tn, int C, int V) {
    (void)V;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int c = 0; c < C; c++) {
                const T d = dout[((long)b * Tn + t) * C + c];
                dwte[(long)idx[b * Tn + t] * C + c] += d;
                dwpe[(long)t * C + c] += d;
            }
}

// ---------------------------------------------------------------- layernorm
// y = (x - mean) / sqrt(var + 1e-5) * w + b, biased variance over C
template <typename T>
void ref_layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
    for (int n = 0; n < N; n++) {
        const T* x = inp + (long)n * C;
        double m = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double var = 0.0;
        for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
        var /= C;
        const double s = 1.0 / std::sqrt(var + 1e-5);
        for (int c = 0; c < C; c++) out[(long)n * C + c] = (T)((x[c] - m) * s * weight[c] + bias[c]);
        mean[n] = (T)m;
        rstd[n] = (T)s;
    }
}

// norm = (x - mean) * rstd, dnorm = w * dy
// dx += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)); dw += dy * norm; db += dy
template <typename T>
void ref_layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                            const T* mean, const T* rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const T* x = inp + (long)n * C;
        const T* dy = dout + (long)n * C;
        double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const double norm = ((double)x[c] - mean[n]) * rstd[n];
            dnorm_mean += (double)weight[c] * dy[c];
            dnorm_norm_mean += (double)weight[c] * dy[c] * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int c = 0; c < C; c++) {
            const double norm = ((double)x[c] - mean[n]) * rstd[n];
            const double dnorm = (double)weight[c] * dy[c];
            dinp[(long)n * C + c] += (T)(rstd[n] * (dnorm - dnorm_mean - norm * dnorm_norm_mean));
        }
    }
    for (int c = 0; c < C; c++) {
        double dw = 0.0, db = 0.0;
        for (int n = 0; n < N; n++) {
            const double dy = dout[(long)n * C + c];
            dw += dy * ((double)inp[(long)n * C + c] - mean[n]) * rstd[n];
            db += dy;
        }
        dweight[c] += (T)dw;
        dbias[c] += (T)db;
    }
}

// ---------------------------------------------------------------- matmul
// out[n,o] = sum_i inp[n,i] * weight[o,i] + bias[o]
template <typename T>
void ref_matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double acc = bias != nullptr ? (double)bias[o] : 0.0;
            for (int i = 0; i < IC; i++) acc += (double)inp[(long)n * IC + i] * weight[(long)o * IC + i];
            out[(long)n * OC + o] = (T)acc;
        }
}

// dbias[o] += sum_n dout[n,o]
template <typename T>
void ref_bias_backward(T* dbias, const T* dout, int N, int OC) {
    for (int o = 0; o < OC; o++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++) acc += dout[(long)n * OC + o];
        dbias[o] += (T)acc;
    }
}

// dinp = dout W (overwritten, skipped if nullptr); dweight += dout^T inp; dbias += column sums of dout
template <typename T>
void ref_matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                         int N, int IC, int OC) {
    if (dinp != nullptr)
        for (int n = 0; n < N; n++)
            for (int i = 0; i < IC; i++) {
                double acc = 0.0;
                for (int o = 0; o < OC; o++) acc += (double)dout[(long)n * OC + o] * weight[(long)o * IC + i];
                dinp[(long)n * IC + i] = (T)acc;
            }
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < IC; i++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += (double)dout[(long)n * OC + o] * inp[(long)n * IC + i];
            dweight[(long)o * IC + i] += (T)acc;
        }
    if (dbias != nullptr) ref_bias_backward(dbias, dout, N, OC);
}

// ---------------------------------------------------------------- attention
// Per sequence b and head h (hs = C/NH, q/k/v = thirds of qkv, head h = columns h*hs..):
//   att[t,j] = softmax_j<=t (q_t . k_j / sqrt(hs)), 0 for j > t;  out[b,t,h*hs+d] = sum_j att[t,j] v_j[d]
// qkvr gets q, k, v permuted to (3,B,NH,T,hs), as the kernel keeps them for the backward.
template <typename T>
void ref_attention_forward(T* out, T* qkvr, T* att, const T* qkv, int B, int Tn, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    auto Q = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 0 * C + h * hs + d]; };
    auto K = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 1 * C + h * hs + d]; };
    auto Vv = [&](int b, int t, int h, int d) { return qkv[((long)b * Tn + t) * 3 * C + 2 * C + h * hs + d]; };
    for (int which = 0; which < 3; which++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < hs; d++)
                        qkvr[((((long)which * B + b) * NH + h) * Tn + t) * hs + d] =
                            qkv[((long)b * Tn + t) * 3 * C + which * C + h * hs + d];
    std::vector<double> logits(Tn);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++) {
                T* a = att + (((long)b * NH + h) * Tn + t) * Tn;
                double maxval = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++) dot += (double)Q(b, t, h, d) * K(b, j, h, d);
                    logits[j] = dot * scale;
                    maxval = std::max(maxval, logits[j]);
                }
                double sum = 0.0;
                for (int j = 0; j <= t; j++) sum += std::exp(logits[j] - maxval);
                for (int j = 0; j < Tn; j++) a[j] = j <= t ? (T)(std::exp(logits[j] - maxval) / sum) : (T)0;
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int j = 0; j <= t; j++) acc += (double)a[j] * Vv(b, j, h, d);
                    out[((long)b * Tn + t) * C + h * hs + d] = (T)acc;
                }
            }
}

// With dy = dout's head slice, datt[t,j] = dy_t . v_j, dv_j += sum_t att[t,j] dy_t,
// dlogit[t,j] = att[t,j] (datt[t,j] - sum_j' att[t,j'] datt[t,j']), and logit = q.k * scale:
// dq_t = scale sum_j dlogit[t,j] k_j,  dk_j = scale sum_t dlogit[t,j] q_t.  dqkv is overwritten.
// (scratch is unused: the reference keeps its temporaries on the host.)
template <typename T>
void ref_attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkvr, const T* att, int B, int Tn, int C,
                            int NH) {
    (void)scratch;
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    auto R = [&](int which, int b, int h, int t, int d) {
        return (double)qkvr[((((long)which * B + b) * NH + h) * Tn + t) * hs + d];
    };
    auto D = [&](int which, int b, int t, int h, int d) -> T& {
        return dqkv[((long)b * Tn + t) * 3 * C + which * C + h * hs + d];
    };
    for (long i = 0; i < (long)B * Tn * 3 * C; i++) dqkv[i] = (T)0;
    std::vector<double> datt(Tn);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++) {
                const T* a = att + (((long)b * NH + h) * Tn + t) * Tn;
                const T* dy = dout + ((long)b * Tn + t) * C + h * hs;
                double dot = 0.0;
                for (int j = 0; j <= t; j++) {
                    datt[j] = 0.0;
                    for (int d = 0; d < hs; d++) datt[j] += (double)dy[d] * R(2, b, h, j, d);
                    dot += (double)a[j] * datt[j];
                    for (int d = 0; d < hs; d++) D(2, b, j, h, d) += (T)((double)a[j] * dy[d]);
                }
                for (int j = 0; j <= t; j++) {
                    const double dlogit = (double)a[j] * (datt[j] - dot);
                    for (int d = 0; d < hs; d++) {
                        D(0, b, t, h, d) += (T)(scale * dlogit * R(1, b, h, j, d));
                        D(1, b, j, h, d) += (T)(scale * dlogit * R(0, b, h, t, d));
                    }
                }
            }
}

// ---------------------------------------------------------------- activations
// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
template <typename T>
void ref_gelu_forward(T* out, const T* inp, long n) {
    const double s = std::sqrt(2.0 / 3.14159265358979323846);
    for (long i = 0; i < n; i++) {
        const double x = inp[i];
        out[i] = (T)(0.5 * x * (1.0 + std::tanh(s * (x + 0.044715 * x * x * x))));
    }
}

template <typename T>
void ref_gelu_backward(T* dinp, const T* inp, const T* dout, long n) {
    const double s = std::sqrt(2.0 / 3.14159265358979323846);
    for (long i = 0; i < n; i++) {
        const double x = inp[i];
        const double th = std::tanh(s * (x + 0.044715 * x * x * x));
        const double grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * s * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (T)(grad * dout[i]);
    }
}

template <typename T>
void ref_residual_forward(T* out, const T* a, const T* b, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <typename T>
void ref_add_inplace(T* acc, const T* x, long n) {
    for (long i = 0; i < n; i++) acc[i] += x[i];
}

// ---------------------------------------------------------------- classifier
// losses[n] = -log softmax(logits[n,:])[target];  dlogits = (softmax - onehot) * dloss (if not null)
template <typename T>
void ref_crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int* targets, int N, int V,
                                       T dloss) {
    for (int n = 0; n < N; n++) {
        const T* l = logits + (long)n * V;
        double maxval = -INFINITY;
        for (int j = 0; j < V; j++) maxval = std::max(maxval, (double)l[j]);
        double sum = 0.0;
        for (int j = 0; j < V; j++) sum += std::exp((double)l[j] - maxval);
        losses[n] = (T)(std::log(sum) + maxval - l[targets[n]]);
        if (dlogits != nullptr)
            for (int j = 0; j < V; j++) {
                const double p = std::exp((double)l[j] - maxval) / sum;
                dlogits[(long)n * V + j] = (T)((p - (j == targets[n] ? 1.0 : 0.0)) * dloss);
            }
    }
}

template <typename T>
void ref_mean_forward(T* out, const T* x, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i];
    out[0] = (T)(n > 0 ? sum / n : 0.0);
}

// ---------------------------------------------------------------- optimizer
// out = sum x^2 (scratch unused by the reference)
template <typename T>
void ref_global_norm_squared(T* out, T* scratch, const T* x, long n) {
    (void)scratch;
    double sum = 0.0;
    for (long i = 0; i < n; i++) sum += (double)x[i] * x[i];
    out[0] = (T)sum;
}

template <typename T>
void ref_clip_scale(T* scale, const T* norm_squared, T max_norm) {
    scale[0] = max_norm > 0 ? (T)std::min(1.0, (double)max_norm / (std::sqrt((double)norm_squared[0]) + 1e-6)) : (T)1;
}

// PyTorch AdamW, grad_scale is a host pointer here (nullptr = 1)
template <typename T>
void ref_adamw_update(T* params, const T* grads, T* m, T* v, long n, T lr, T beta1, T beta2, T eps,
                      T weight_decay, int step, const T* grad_scale) {
    const double scale = grad_scale != nullptr ? (double)grad_scale[0] : 1.0;
    const double bc1 = 1.0 - std::pow((double)beta1, step), bc2 = 1.0 - std::pow((double)beta2, step);
    for (long i = 0; i < n; i++) {
        const double g = grads[i] * scale;
        m[i] = (T)(beta1 * (double)m[i] + (1.0 - beta1) * g);
        v[i] = (T)(beta2 * (double)v[i] + (1.0 - beta2) * g * g);
        const double mhat = m[i] / bc1, vhat = v[i] / bc2;
        params[i] = (T)(params[i] - lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * (double)params[i]));
    }
}
