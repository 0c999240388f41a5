// test_gpt_kernels.cpp: every GPT kernel launcher, run through the SIMT layer, against its plain
// C++ reference in reference_model.h (float in, sums in double).
//
// Tolerances (float32 has a unit roundoff of 6e-8):
//   exact         gathers, copies, single additions: the same float operations as the reference
//   1e-5          elementwise math (a few roundings, tanhf/expf good to a couple of ulps) and short
//                 row reductions (softmax, layernorm statistics over C <= 300)
//   1e-4          GEMMs and long reductions: K up to a few hundred float products summed in a
//                 different order than the reference; the error grows like sqrt(K) * 6e-8 * |terms|
// Each is relative to |expected| + rms(expected), so entries that cancel to ~0 are judged on the
// scale of the tensor instead of their own.
//
// Device memory starts as NaN (the layer fills cudaMalloc with 0xFF bytes), so an output element
// a kernel forgets to write fails the comparison; with device-memory protection on, any host
// touch of device memory crashes the test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "activations.cuh"
#include "attention.cuh"
#include "classifier.cuh"
#include "encoder.cuh"
#include "layernorm.cuh"
#include "matmul.cuh"
#include "optim.cuh"
#include "reference_model.h"

namespace {

// ---------------------------------------------------------------- helpers
template <typename T>
struct DeviceArray {
    T* ptr = nullptr;
    size_t n = 0;
    explicit DeviceArray(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T))); }
    explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
    ~DeviceArray() { cudaFree(ptr); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    void upload(const std::vector<T>& host) {
        ASSERT_EQ(host.size(), n);
        CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> host() const {
        std::vector<T> out(n);
        CUDA_CHECK(cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return out;
    }
};

using Floats = std::vector<float>;

Floats random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    Floats v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

std::vector<int> random_ints(size_t n, int hi, std::mt19937& rng) {
    std::uniform_int_distribution<int> dist(0, hi - 1);
    std::vector<int> v(n);
    for (int& x : v) x = dist(rng);
    return v;
}

// |got - want| <= rtol * (|want| + rms(want)) for every entry (see the tolerance note at the top).
void expect_close(const Floats& got, const Floats& want, double rtol, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double sq = 0.0;
    for (float w : want) sq += (double)w * w;
    const double rms = want.empty() ? 0.0 : std::sqrt(sq / want.size());
    int reported = 0;
    for (size_t i = 0; i < want.size(); i++) {
        const double tol = rtol * (std::fabs(want[i]) + rms);
        const bool ok = std::fabs((double)got[i] - want[i]) <= tol;  // false for NaN
        if (!ok && reported++ < 5) ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
    }
    EXPECT_EQ(reported, 0) << what << ": " << reported << " of " << want.size() << " entries out of tolerance";
}

void expect_equal(const Floats& got, const Floats& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << what << " differs";
}

std::string shape(std::initializer_list<long> dims) {
    std::string s;
    for (long d : dims) s += (s.empty() ? "" : ",") + std::to_string(d);
    return "(" + s + ")";
}

// Every test runs with device-memory protection on; the layer's global settings are restored after.
class GptKernels : public ::testing::Test {
protected:
    void SetUp() override {
        saved_workers_ = simt::worker_threads();
        saved_shuffle_ = simt::shuffle_seed();
        saved_protection_ = simt::device_memory_protection();
        simt::set_device_memory_protection(true);
    }
    void TearDown() override {
        simt::set_worker_threads(saved_workers_);
        simt::set_shuffle(saved_shuffle_);
        simt::set_device_memory_protection(saved_protection_);
    }
    int saved_workers_ = 1;
    unsigned long long saved_shuffle_ = 0;
    bool saved_protection_ = false;
};

constexpr double kExact = 0.0, kElementwise = 1e-5, kReduction = 1e-4;

// ---------------------------------------------------------------- encoder
TEST_F(GptKernels, Encoder) {
    struct Shape { int B, T, C, V; };
    for (Shape s : {Shape{1, 7, 48, 65}, Shape{2, 13, 100, 65}, Shape{3, 33, 128, 65}, Shape{2, 5, 300, 7}}) {
        const std::string tag = shape({s.B, s.T, s.C, s.V});
        const int maxT = s.T + 3, N = s.B * s.T;
        std::mt19937 rng(10 + s.C);
        const std::vector<int> idx = random_ints(N, s.V, rng);
        const Floats wte = random_floats(s.V * s.C, rng), wpe = random_floats(maxT * s.C, rng);
        DeviceArray<int> d_idx(idx);
        DeviceArray<float> d_wte(wte), d_wpe(wpe), d_out(N * s.C);
        encoder_forward(d_out.ptr, d_idx.ptr, d_wte.ptr, d_wpe.ptr, s.B, s.T, s.C);
        Floats want(N * s.C);
        ref_encoder_forward(want.data(), idx.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
        expect_close(d_out.host(), want, kExact, "encoder_forward out " + tag);

        // backward accumulates into non-zero gradients
        const Floats dout = random_floats(N * s.C, rng);
        Floats dwte = random_floats(s.V * s.C, rng), dwpe = random_floats(maxT * s.C, rng);
        DeviceArray<float> d_dout(dout), d_dwte(dwte), d_dwpe(dwpe);
        encoder_backward(d_dwte.ptr, d_dwpe.ptr, d_dout.ptr, d_idx.ptr, s.B, s.T, s.C, s.V);
        ref_encoder_backward(dwte.data(), dwpe.data(), dout.data(), idx.data(), s.B, s.T, s.C, s.V);
        expect_close(d_dwte.host(), dwte, kElementwise, "encoder_backward dwte " + tag);
        expect_close(d_dwpe.host(), dwpe, kElementwise, "encoder_backward dwpe " + tag);
    }
}

// ---------------------------------------------------------------- layernorm
TEST_F(GptKernels, LayerNorm) {
    struct Shape { int N, C; };
    for (Shape s : {Shape{7, 48}, Shape{33, 100}, Shape{64, 128}, Shape{5, 300}, Shape{3, 5}, Shape{700, 48}}) {
        const std::string tag = shape({s.N, s.C});
        std::mt19937 rng(20 + s.C);
        Floats inp = random_floats(s.N * s.C, rng, 2.0f);
        for (float& x : inp) x += 3.0f;  // a non-zero mean, as in a residual stream
        const Floats weight = random_floats(s.C, rng), bias = random_floats(s.C, rng);
        DeviceArray<float> d_inp(inp), d_w(weight), d_b(bias), d_out(s.N * s.C), d_mean(s.N), d_rstd(s.N);
        layernorm_forward(d_out.ptr, d_mean.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, d_b.ptr, s.N, s.C);
        Floats out(s.N * s.C), mean(s.N), rstd(s.N);
        ref_layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), s.N, s.C);
        expect_close(d_out.host(), out, kElementwise, "layernorm_forward out " + tag);
        expect_close(d_mean.host(), mean, kElementwise, "layernorm_forward mean " + tag);
        expect_close(d_rstd.host(), rstd, kElementwise, "layernorm_forward rstd " + tag);

        // backward from the kernel's own statistics; all three gradients accumulate
        const Floats kmean = d_mean.host(), krstd = d_rstd.host();
        const Floats dout = random_floats(s.N * s.C, rng);
        Floats dinp = random_floats(s.N * s.C, rng), dw = random_floats(s.C, rng), db = random_floats(s.C, rng);
        DeviceArray<float> d_dout(dout), d_dinp(dinp), d_dw(dw), d_db(db);
        layernorm_backward(d_dinp.ptr, d_dw.ptr, d_db.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_mean.ptr, d_rstd.ptr,
                           s.N, s.C);
        ref_layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), weight.data(),
                               kmean.data(), krstd.data(), s.N, s.C);
        expect_close(d_dinp.host(), dinp, kReduction, "layernorm_backward dinp " + tag);
        expect_close(d_dw.host(), dw, kReduction, "layernorm_backward dweight " + tag);
        expect_close(d_db.host(), db, kReduction, "layernorm_backward dbias " + tag);
    }
}

// ---------------------------------------------------------------- matmul
TEST_F(GptKernels, Matmul) {
    struct Shape { int N, IC, OC; };
    for (Shape s : {Shape{7, 48, 144}, Shape{33, 100, 65}, Shape{64, 128, 512}, Shape{1, 3, 1}}) {
        for (bool with_bias : {true, false}) {
            const std::string tag = shape({s.N, s.IC, s.OC}) + (with_bias ? " bias" : " no bias");
            std::mt19937 rng(30 + s.OC + with_bias);
            const Floats inp = random_floats(s.N * s.IC, rng), weight = random_floats(s.OC * s.IC, rng),
                         bias = random_floats(s.OC, rng);
            DeviceArray<float> d_inp(inp), d_w(weight), d_b(bias), d_out(s.N * s.OC);
            matmul_forward(d_out.ptr, d_inp.ptr, d_w.ptr, with_bias ? d_b.ptr : nullptr, s.N, s.IC, s.OC);
            Floats out(s.N * s.OC);
            ref_matmul_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, s.N, s.IC, s.OC);
            expect_close(d_out.host(), out, kReduction, "matmul_forward " + tag);

            // dinp overwritten (starts as NaN); dweight, dbias accumulate
            const Floats dout = random_floats(s.N * s.OC, rng);
            Floats dinp(s.N * s.IC), dw = random_floats(s.OC * s.IC, rng), db = random_floats(s.OC, rng);
            DeviceArray<float> d_dout(dout), d_dinp(s.N * s.IC), d_dw(dw), d_db(db);
            matmul_backward(d_dinp.ptr, d_dw.ptr, with_bias ? d_db.ptr : nullptr, d_dout.ptr, d_inp.ptr, d_w.ptr,
                            s.N, s.IC, s.OC);
            ref_matmul_backward(dinp.data(), dw.data(), with_bias ? db.data() : nullptr, dout.data(), inp.data(),
                                weight.data(), s.N, s.IC, s.OC);
            expect_close(d_dinp.host(), dinp, kReduction, "matmul_backward dinp " + tag);
            expect_close(d_dw.host(), dw, kReduction, "matmul_backward dweight " + tag);
            expect_close(d_db.host(), db, kReduction, "matmul_backward dbias " + tag);  // untouched without bias

            // dinp = nullptr skips the input gradient
            Floats dw2 = dw;
            DeviceArray<float> d_dw2(dw2);
            matmul_backward(nullptr, d_dw2.ptr, nullptr, d_dout.ptr, d_inp.ptr, d_w.ptr, s.N, s.IC, s.OC);
            ref_matmul_backward((float*)nullptr, dw2.data(), (float*)nullptr, dout.data(), inp.data(), weight.data(),
                                s.N, s.IC, s.OC);
            expect_close(d_dw2.host(), dw2, kReduction, "matmul_backward(dinp=nullptr) dweight " + tag);
        }
    }
}

TEST_F(GptKernels, BiasBackward) {
    struct Shape { int N, OC; };
    for (Shape s : {Shape{7, 48}, Shape{33, 100}, Shape{700, 65}, Shape{1, 1}}) {
        std::mt19937 rng(40 + s.OC);
        const Floats dout = random_floats(s.N * s.OC, rng);
        Floats db = random_floats(s.OC, rng);
        DeviceArray<float> d_dout(dout), d_db(db);
        bias_backward(d_db.ptr, d_dout.ptr, s.N, s.OC);
        ref_bias_backward(db.data(), dout.data(), s.N, s.OC);
        expect_close(d_db.host(), db, kReduction, "bias_backward " + shape({s.N, s.OC}));
    }
}

// The batched form with one row group is a plain in-order float sum per column, then one +=: the
// bits of the sequential loop below (the MoE layer's bias gradients rely on exactly that).
TEST_F(GptKernels, BiasBackwardOneRowGroupIsTheSequentialSum) {
    const int batch = 3, N = 301, OC = 70;  // OC not a multiple of 32: a partial column tile
    std::mt19937 rng(44);
    const Floats dout = random_floats((size_t)batch * N * OC, rng);
    const Floats db0 = random_floats((size_t)batch * OC, rng);
    Floats want = db0;
    for (int b = 0; b < batch; b++)
        for (int o = 0; o < OC; o++) {
            float acc = 0.0f;
            for (int n = 0; n < N; n++) acc += dout[((size_t)b * N + n) * OC + o];
            want[(size_t)b * OC + o] += acc;
        }
    DeviceArray<float> d_dout(dout), d_db(db0);
    bias_backward(d_db.ptr, d_dout.ptr, (long)N * OC, batch, N, OC, 1);
    const Floats got = d_db.host();
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "not bit-identical";
}

// Batched sums against the double reference: each batch entry its own matrix, or (stride 0) every
// entry the same one; several row groups; rows of dbias that are not in the batch stay untouched.
TEST_F(GptKernels, BiasBackwardBatchedAndSharedMatrix) {
    const int batch = 4, N = 130, OC = 33;
    std::mt19937 rng(45);
    const Floats dout = random_floats((size_t)batch * N * OC, rng);
    for (long stride : {(long)N * OC, 0L}) {
        for (int row_groups : {1, 3, 32}) {
            Floats db0 = random_floats((size_t)(batch + 1) * OC, rng);  // one extra row past the batch
            if (stride == 0)  // the same starting row everywhere, so every entry must end with the same bits
                for (int b = 1; b < batch; b++) std::copy(db0.begin(), db0.begin() + OC, db0.begin() + (long)b * OC);
            Floats want = db0;
            for (int b = 0; b < batch; b++) ref_bias_backward(&want[(size_t)b * OC], &dout[(size_t)b * stride], N, OC);
            DeviceArray<float> d_dout(dout), d_db(db0);
            bias_backward(d_db.ptr, d_dout.ptr, stride, batch, N, OC, row_groups);
            const Floats got = d_db.host();
            const std::string tag = "stride " + std::to_string(stride) + " row_groups " + std::to_string(row_groups);
            expect_close(Floats(got.begin(), got.begin() + (long)batch * OC),
                         Floats(want.begin(), want.begin() + (long)batch * OC), kReduction, "bias_backward batched " + tag);
            for (int o = 0; o < OC; o++) ASSERT_EQ(got[(size_t)batch * OC + o], db0[(size_t)batch * OC + o]) << tag;
            if (stride == 0) {
                for (int b = 1; b < batch; b++)
                    for (int o = 0; o < OC; o++) ASSERT_EQ(got[(size_t)b * OC + o], got[o]) << tag;
            }
        }
    }
}

TEST(ThreadsPerRow, PowersOfTwoFrom4To32AtAbout32ColumnsEach) {
    const int widths[] = {1, 64, 128, 129, 256, 257, 512, 513, 4096};
    const int want[] = {4, 4, 4, 8, 8, 16, 16, 32, 32};
    for (int i = 0; i < 9; i++) EXPECT_EQ(threads_per_row(widths[i]), want[i]) << "width " << widths[i];
}

// ---------------------------------------------------------------- attention
TEST_F(GptKernels, Attention) {
    struct Shape { int B, T, C, NH; };
    for (Shape s : {Shape{2, 13, 48, 3}, Shape{1, 1, 8, 2}, Shape{3, 33, 96, 4}, Shape{2, 64, 128, 4}}) {
        const std::string tag = shape({s.B, s.T, s.C, s.NH});
        const int N = s.B * s.T;
        std::mt19937 rng(50 + s.T);
        const Floats qkv = random_floats(N * 3 * s.C, rng);
        DeviceArray<float> d_qkv(qkv), d_out(N * s.C), d_qkvr(3 * N * s.C), d_att(s.B * s.NH * s.T * s.T);
        attention_forward(d_out.ptr, d_qkvr.ptr, d_att.ptr, d_qkv.ptr, s.B, s.T, s.C, s.NH);
        Floats out(N * s.C), qkvr(3 * N * s.C), att(s.B * s.NH * s.T * s.T);
        ref_attention_forward(out.data(), qkvr.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
        const Floats katt = d_att.host();
        expect_close(d_qkvr.host(), qkvr, kExact, "attention_forward qkvr " + tag);
        expect_close(katt, att, kElementwise, "attention_forward att " + tag);
        expect_close(d_out.host(), out, kReduction, "attention_forward out " + tag);
        for (int row = 0; row < s.B * s.NH * s.T; row++)  // causal: exactly 0 above the diagonal
            for (int j = row % s.T + 1; j < s.T; j++) ASSERT_EQ(katt[(long)row * s.T + j], 0.0f) << tag;

        // backward from the kernel's own qkvr/att; dqkv and the scratch start as NaN
        const Floats dout = random_floats(N * s.C, rng);
        DeviceArray<float> d_dout(dout), d_dqkv(N * 3 * s.C), d_scratch(attention_scratch_floats(s.B, s.T, s.C, s.NH));
        attention_backward(d_dqkv.ptr, d_scratch.ptr, d_dout.ptr, d_qkvr.ptr, d_att.ptr, s.B, s.T, s.C, s.NH);
        Floats dqkv(N * 3 * s.C);
        ref_attention_backward(dqkv.data(), (float*)nullptr, dout.data(), qkvr.data(), katt.data(), s.B, s.T, s.C,
                               s.NH);
        expect_close(d_dqkv.host(), dqkv, kReduction, "attention_backward dqkv " + tag);
    }
}

// ---------------------------------------------------------------- activations
TEST_F(GptKernels, Gelu) {
    for (long n : {1L, 7L, 1000L, 100003L}) {
        std::mt19937 rng(60 + n);
        const Floats inp = random_floats(n, rng, 3.0f), dout = random_floats(n, rng);
        DeviceArray<float> d_inp(inp), d_dout(dout), d_out(n), d_dinp(n);
        gelu_forward(d_out.ptr, d_inp.ptr, n);
        gelu_backward(d_dinp.ptr, d_inp.ptr, d_dout.ptr, n);
        Floats out(n), dinp(n);
        ref_gelu_forward(out.data(), inp.data(), n);
        ref_gelu_backward(dinp.data(), inp.data(), dout.data(), n);
        expect_close(d_out.host(), out, kElementwise, "gelu_forward n=" + std::to_string(n));
        expect_close(d_dinp.host(), dinp, kElementwise, "gelu_backward n=" + std::to_string(n));
    }
}

TEST_F(GptKernels, ResidualAndAddInplace) {
    for (long n : {1L, 7L, 4099L, 100003L}) {
        std::mt19937 rng(70 + n);
        const Floats a = random_floats(n, rng), b = random_floats(n, rng);
        Floats sum(n);
        ref_residual_forward(sum.data(), a.data(), b.data(), n);
        DeviceArray<float> d_a(a), d_b(b), d_out(n);
        residual_forward(d_out.ptr, d_a.ptr, d_b.ptr, n);
        expect_close(d_out.host(), sum, kExact, "residual_forward n=" + std::to_string(n));
        residual_forward(d_a.ptr, d_a.ptr, d_b.ptr, n);  // out aliases a
        expect_close(d_a.host(), sum, kExact, "residual_forward aliased n=" + std::to_string(n));

        Floats acc = a;
        ref_add_inplace(acc.data(), b.data(), n);
        DeviceArray<float> d_acc(a);
        add_inplace(d_acc.ptr, d_b.ptr, n);
        expect_close(d_acc.host(), acc, kExact, "add_inplace n=" + std::to_string(n));
    }
}

// ---------------------------------------------------------------- classifier
TEST_F(GptKernels, CrossEntropy) {
    struct Shape { int N, V; };
    for (Shape s : {Shape{7, 65}, Shape{33, 100}, Shape{64, 65}, Shape{5, 3}}) {
        const std::string tag = shape({s.N, s.V});
        std::mt19937 rng(80 + s.V);
        Floats logits = random_floats(s.N * s.V, rng, 3.0f);
        logits[0] += 80.0f;  // a large logit: the max subtraction must keep exp() finite
        const std::vector<int> targets = random_ints(s.N, s.V, rng);
        const float dloss = 1.0f / s.N;
        DeviceArray<float> d_logits(logits), d_losses(s.N), d_dlogits(s.N * s.V), d_mean(1);
        DeviceArray<int> d_targets(targets);
        crossentropy_forward_backward(d_losses.ptr, d_dlogits.ptr, d_logits.ptr, d_targets.ptr, s.N, s.V, dloss);
        Floats losses(s.N), dlogits(s.N * s.V);
        ref_crossentropy_forward_backward(losses.data(), dlogits.data(), logits.data(), targets.data(), s.N, s.V,
                                          dloss);
        expect_close(d_losses.host(), losses, kElementwise, "crossentropy losses " + tag);
        expect_close(d_dlogits.host(), dlogits, kElementwise, "crossentropy dlogits " + tag);

        // forward only: dlogits = nullptr
        DeviceArray<float> d_losses2(s.N);
        crossentropy_forward_backward(d_losses2.ptr, nullptr, d_logits.ptr, d_targets.ptr, s.N, s.V, dloss);
        expect_close(d_losses2.host(), losses, kElementwise, "crossentropy forward-only " + tag);

        mean_forward(d_mean.ptr, d_losses.ptr, s.N);
        Floats mean(1);
        ref_mean_forward(mean.data(), d_losses.host().data(), s.N);
        expect_close(d_mean.host(), mean, kElementwise, "mean_forward " + tag);
    }
}

TEST_F(GptKernels, MeanForward) {
    for (int n : {1, 7, 768, 100003}) {
        std::mt19937 rng(90 + n);
        const Floats x = random_floats(n, rng);
        DeviceArray<float> d_x(x), d_out(1);
        mean_forward(d_out.ptr, d_x.ptr, n);
        Floats want(1);
        ref_mean_forward(want.data(), x.data(), n);
        // a mean of zero-mean numbers cancels to ~1/sqrt(n): judge it against the size of the
        // terms (1): float partial sums of ~3000 terms err by ~1e-4 absolute, i.e. 1e-9 after / n
        EXPECT_NEAR(d_out.host()[0], want[0], 1e-6) << "mean_forward n=" << n;
    }
}

// ---------------------------------------------------------------- optimizer
TEST_F(GptKernels, GlobalNormSquaredAndClip) {
    // odd sizes: tiles of ceil(n / blocks) elements that are not multiples of the block size
    for (long n : {1L, 100L, 12345L, 1000003L, 3000017L}) {
        Floats x(n);  // a cheap deterministic fill in [-1, 1)
        for (long i = 0; i < n; i++) x[i] = (float)((i * 2654435761UL) % 2000) / 1000.0f - 1.0f;
        DeviceArray<float> d_x(x), d_out(1), d_scratch(1024), d_scale(1);
        global_norm_squared(d_out.ptr, d_scratch.ptr, d_x.ptr, n);
        Floats want(1);
        ref_global_norm_squared(want.data(), (float*)nullptr, x.data(), n);
        expect_close(d_out.host(), want, kReduction, "global_norm_squared n=" + std::to_string(n));

        for (float max_norm : {0.0f, 0.5f, 1e9f}) {
            clip_scale(d_scale.ptr, d_out.ptr, max_norm);
            Floats scale(1);
            ref_clip_scale(scale.data(), d_out.host().data(), max_norm);
            expect_close(d_scale.host(), scale, kElementwise,
                         "clip_scale n=" + std::to_string(n) + " max_norm=" + std::to_string(max_norm));
        }
    }
    // norm 0 (all-zero gradients): scale 1, no division by zero
    DeviceArray<float> d_zero(Floats{0.0f}), d_scale(1);
    clip_scale(d_scale.ptr, d_zero.ptr, 1.0f);
    EXPECT_EQ(d_scale.host()[0], 1.0f);
    // norm 10, max 1: scale 1 / (10 + 1e-6)
    DeviceArray<float> d_hundred(Floats{100.0f});
    clip_scale(d_scale.ptr, d_hundred.ptr, 1.0f);
    EXPECT_NEAR(d_scale.host()[0], 0.1f, 1e-7f);
}

TEST_F(GptKernels, AdamW) {
    const long n = 4099;
    std::mt19937 rng(110);
    Floats params = random_floats(n, rng), m(n, 0.0f), v(n, 0.0f);
    DeviceArray<float> d_params(params), d_grads(n), d_m(m), d_v(v);
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    for (int step = 1; step <= 5; step++) {
        const Floats grads = random_floats(n, rng);
        d_grads.upload(grads);
        const bool scaled = step % 2 == 0;  // alternate a device grad scale and none (nullptr)
        const Floats scale = {0.37f};
        DeviceArray<float> d_scale(scale);
        adamw_update(d_params.ptr, d_grads.ptr, d_m.ptr, d_v.ptr, n, lr, beta1, beta2, eps, wd, step,
                     scaled ? d_scale.ptr : nullptr);
        ref_adamw_update(params.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, step,
                         scaled ? scale.data() : nullptr);
        const std::string tag = " step " + std::to_string(step);
        expect_close(d_params.host(), params, kElementwise, "adamw params" + tag);
        expect_close(d_m.host(), m, kElementwise, "adamw m" + tag);
        expect_close(d_v.host(), v, kElementwise, "adamw v" + tag);
    }
}

TEST_F(GptKernels, CosineLr) {
    const int warmup = 10, total = 101;
    const float lr = 1e-3f, min_lr = 1e-4f;
    EXPECT_FLOAT_EQ(cosine_lr(0, warmup, total, lr, min_lr), lr / warmup);       // first warmup step
    EXPECT_FLOAT_EQ(cosine_lr(4, warmup, total, lr, min_lr), lr * 5 / warmup);
    EXPECT_FLOAT_EQ(cosine_lr(warmup - 1, warmup, total, lr, min_lr), lr);       // warmup ends at lr
    EXPECT_FLOAT_EQ(cosine_lr(warmup, warmup, total, lr, min_lr), lr);           // cosine starts at lr
    EXPECT_FLOAT_EQ(cosine_lr(55, warmup, total, lr, min_lr), 0.5f * (lr + min_lr));  // halfway: 45 of 90
    EXPECT_FLOAT_EQ(cosine_lr(total - 1, warmup, total, lr, min_lr), min_lr);   // last step
    EXPECT_FLOAT_EQ(cosine_lr(total + 50, warmup, total, lr, min_lr), min_lr);  // past the end
    EXPECT_FLOAT_EQ(cosine_lr(0, 0, 1, lr, min_lr), lr);                        // no warmup, one step
    float previous = lr;
    for (int step = warmup; step < total; step++) {  // monotone decay
        const float now = cosine_lr(step, warmup, total, lr, min_lr);
        EXPECT_LE(now, previous);
        previous = now;
    }
}

// ---------------------------------------------------------------- determinism
// Every launcher on one mid-size problem; the outputs, concatenated.
Floats run_every_kernel() {
    const int B = 4, T = 37, C = 96, NH = 3, V = 65, F = 160, N = B * T;  // N = 148: 2 row groups in the column sums
    std::mt19937 rng(7);
    Floats all;
    auto keep = [&](const DeviceArray<float>& a) {
        const Floats h = a.host();
        all.insert(all.end(), h.begin(), h.end());
    };
    const std::vector<int> idx = random_ints(N, V, rng), targets = random_ints(N, V, rng);
    DeviceArray<int> d_idx(idx), d_targets(targets);
    DeviceArray<float> wte(random_floats(V * C, rng)), wpe(random_floats(T * C, rng)), x(N * C);
    encoder_forward(x.ptr, d_idx.ptr, wte.ptr, wpe.ptr, B, T, C);
    keep(x);
    DeviceArray<float> dx(random_floats(N * C, rng)), dwte(random_floats(V * C, rng)), dwpe(random_floats(T * C, rng));
    encoder_backward(dwte.ptr, dwpe.ptr, dx.ptr, d_idx.ptr, B, T, C, V);
    keep(dwte), keep(dwpe);

    DeviceArray<float> lw(random_floats(C, rng)), lb(random_floats(C, rng)), ln(N * C), mean(N), rstd(N);
    layernorm_forward(ln.ptr, mean.ptr, rstd.ptr, x.ptr, lw.ptr, lb.ptr, N, C);
    keep(ln), keep(mean), keep(rstd);
    DeviceArray<float> dlw(random_floats(C, rng)), dlb(random_floats(C, rng));
    layernorm_backward(dx.ptr, dlw.ptr, dlb.ptr, ln.ptr, x.ptr, lw.ptr, mean.ptr, rstd.ptr, N, C);
    keep(dx), keep(dlw), keep(dlb);

    DeviceArray<float> w(random_floats(3 * C * C, rng)), b(random_floats(3 * C, rng)), qkv(N * 3 * C);
    matmul_forward(qkv.ptr, ln.ptr, w.ptr, b.ptr, N, C, 3 * C);
    keep(qkv);
    DeviceArray<float> att_out(N * C), qkvr(3 * N * C), att(B * NH * T * T);
    attention_forward(att_out.ptr, qkvr.ptr, att.ptr, qkv.ptr, B, T, C, NH);
    keep(att_out), keep(att);
    DeviceArray<float> dqkv(N * 3 * C), scratch(attention_scratch_floats(B, T, C, NH));
    attention_backward(dqkv.ptr, scratch.ptr, ln.ptr, qkvr.ptr, att.ptr, B, T, C, NH);
    keep(dqkv);
    DeviceArray<float> dln(N * C), dw(random_floats(3 * C * C, rng)), db(random_floats(3 * C, rng));
    matmul_backward(dln.ptr, dw.ptr, db.ptr, dqkv.ptr, ln.ptr, w.ptr, N, C, 3 * C);
    keep(dln), keep(dw), keep(db);
    bias_backward(db.ptr, qkv.ptr, N, 3 * C);
    keep(db);

    DeviceArray<float> h(random_floats(N * F, rng)), g(N * F), dh(N * F);
    gelu_forward(g.ptr, h.ptr, (long)N * F);
    gelu_backward(dh.ptr, h.ptr, g.ptr, (long)N * F);
    keep(g), keep(dh);
    residual_forward(g.ptr, g.ptr, dh.ptr, (long)N * F);
    add_inplace(dh.ptr, g.ptr, (long)N * F);
    keep(g), keep(dh);

    DeviceArray<float> logits(random_floats(N * V, rng, 3.0f)), losses(N), dlogits(N * V), loss(1);
    crossentropy_forward_backward(losses.ptr, dlogits.ptr, logits.ptr, d_targets.ptr, N, V, 1.0f / N);
    mean_forward(loss.ptr, losses.ptr, N);
    keep(losses), keep(dlogits), keep(loss);

    const long n = 300007;
    DeviceArray<float> p(random_floats(n, rng)), grad(random_floats(n, rng)), m(Floats(n, 0.0f)), v(Floats(n, 0.0f));
    DeviceArray<float> norm(1), nscratch(1024), scale(1);
    global_norm_squared(norm.ptr, nscratch.ptr, grad.ptr, n);
    clip_scale(scale.ptr, norm.ptr, 1.0f);
    adamw_update(p.ptr, grad.ptr, m.ptr, v.ptr, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, scale.ptr);
    keep(norm), keep(scale), keep(p), keep(m), keep(v);
    return all;
}

// Bit-identical results with 1 and 2 worker threads, and with the threads of every block run in a
// shuffled order (which also exposes a missing barrier as a wrong value).
TEST_F(GptKernels, DeterministicAcrossWorkersAndThreadOrder) {
    simt::set_worker_threads(1);
    simt::set_shuffle(0);
    const Floats reference = run_every_kernel();
    ASSERT_GT(reference.size(), 100000u);
    for (float f : reference) ASSERT_TRUE(std::isfinite(f));

    simt::set_worker_threads(2);
    expect_equal(run_every_kernel(), reference, "2 workers");
    simt::set_shuffle(12345);
    expect_equal(run_every_kernel(), reference, "2 workers, shuffled thread order");
    simt::set_worker_threads(1);
    simt::set_shuffle(987654321);
    expect_equal(run_every_kernel(), reference, "1 worker, shuffled thread order");
}

}  // namespace
