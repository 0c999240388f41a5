// test_cuda_to_cpp.cpp: the CPU build's source rewrite (simt/cuda_to_cpp.h), on strings and in this
// very build: the file is itself compiled from its rewritten copy, so the kernels launched at the
// bottom run only if the rewrite took their launches apart correctly.
#include <gtest/gtest.h>

#include <algorithm>
#include <source_location>
#include <string>
#include <vector>

#include "simt/cuda_to_cpp.h"
#include "tests/simt_test_kernels.cuh"

namespace {

// The rewrite of `source` without its first line (the #line directive), so line k of the result
// corresponds to line k of the input.
std::string body(const cuda_to_cpp::Result& r) {
    const size_t newline = r.text.find('\n');
    return newline == std::string::npos ? std::string() : r.text.substr(newline + 1);
}

std::string rewrite_ok(const std::string& source) {
    const cuda_to_cpp::Result r = cuda_to_cpp::rewrite(source, "in.cu");
    EXPECT_TRUE(r.errors.empty()) << "first error: line " << r.errors.front().line << ": " << r.errors.front().message;
    return body(r);
}

std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> out(1);
    for (char c : s) {
        if (c == '\n') out.emplace_back();
        else out.back() += c;
    }
    return out;
}

// ---------------------------------------------------------------- what is rewritten
TEST(CudaToCpp, LaunchFormsBecomeSimtLaunchCalls) {
    EXPECT_EQ(rewrite_ok("k<<<1, 32>>>(p);"), "::simt::launch(\"k\", k, 1, 32)(p);");
    EXPECT_EQ(rewrite_ok("k<<<grid, block, bytes>>>(a, b);"), "::simt::launch(\"k\", k, grid, block, bytes)(a, b);");
    EXPECT_EQ(rewrite_ok("k<<<g, b, 0, s>>>();"), "::simt::launch(\"k\", k, g, b, 0, s)();");
    // commas inside the configuration's parentheses, and a launch as the body of an if
    EXPECT_EQ(rewrite_ok("if (t == 0) k<<<dim3(x, y), f(a, b)>>>(q);"),
              "if (t == 0) ::simt::launch(\"k\", k, dim3(x, y), f(a, b))(q);");
}

TEST(CudaToCpp, TemplateAndQualifiedKernels) {
    EXPECT_EQ(rewrite_ok("k<float, 4><<<1, 2>>>(x);"), "::simt::launch(\"k<float, 4>\", k<float, 4>, 1, 2)(x);");
    EXPECT_EQ(rewrite_ok("ns::k<<<1, 2>>>(x);"), "::simt::launch(\"ns::k\", ns::k, 1, 2)(x);");
    EXPECT_EQ(rewrite_ok("::k<<<1, 2>>>(x);"), "::simt::launch(\"::k\", ::k, 1, 2)(x);");
    // a template argument list that itself ends in >> (nested templates) and holds a call
    EXPECT_EQ(rewrite_ok("k<Pair<A<int>>, sizeof(f(1, 2))><<<1, 2>>>(x);"),
              "::simt::launch(\"k<Pair<A<int>>, sizeof(f(1, 2))>\", k<Pair<A<int>>, sizeof(f(1, 2))>, 1, 2)(x);");
    EXPECT_EQ(rewrite_ok("return (table[i])<<<1, 2>>>(x);"),
              "return ::simt::launch(\"(table[i])\", (table[i]), 1, 2)(x);");
}

TEST(CudaToCpp, MultiLineLaunchKeepsEveryLineInPlace) {
    const std::string in =
        "void f() {\n"
        "    k<float, 2><<<rows,\n"
        "        64,   // block\n"
        "        bytes, stream>>>(a,\n"
        "        b);\n"
        "    int after = __LINE__;\n"
        "}\n";
    const std::string out = rewrite_ok(in);
    const auto in_lines = lines(in), out_lines = lines(out);
    ASSERT_EQ(out_lines.size(), in_lines.size());
    EXPECT_EQ(out_lines[1], "    ::simt::launch(\"k<float, 2>\", k<float, 2>, rows,");
    EXPECT_EQ(out_lines[2], "        64,   // block");
    EXPECT_EQ(out_lines[3], "        bytes, stream)(a,");
    EXPECT_EQ(out_lines[4], "        b);");
    EXPECT_EQ(out_lines[5], in_lines[5]);
}

TEST(CudaToCpp, ExternSharedBecomesAPointerToTheDynamicSharedMemory) {
    EXPECT_EQ(rewrite_ok("__global__ void k() { extern __shared__ float buf[]; }"),
              "__global__ void k() { float* buf = ::simt::dynamic_shared<float>(); }");
    EXPECT_EQ(rewrite_ok("void k() {\n    extern __shared__ __align__(16) unsigned char raw[];\n}"),
              "void k() {\n    unsigned char* raw = ::simt::dynamic_shared<unsigned char, 16>();\n}");
    EXPECT_EQ(rewrite_ok("void k() { extern __shared__ alignas(8) T values [ ] ; }"),
              "void k() { T* values = ::simt::dynamic_shared<T, 8>(); }");
    // one name, one type, in two kernels (nvcc links them to the same symbol): fine
    EXPECT_EQ(rewrite_ok("void a() { extern __shared__ float p[]; }\nvoid b() { extern __shared__ float p[]; }"),
              "void a() { float* p = ::simt::dynamic_shared<float>(); }\n"
              "void b() { float* p = ::simt::dynamic_shared<float>(); }");
    // a declaration over two lines keeps its line break (after the statement)
    const std::string out = rewrite_ok("void k() {\n    extern __shared__\n        double red[];\n    use(red);\n}\n");
    EXPECT_EQ(out, "void k() {\n    double* red = ::simt::dynamic_shared<double>();\n\n    use(red);\n}\n");
}

TEST(CudaToCpp, StaticSharedBecomesTheBlocksOwnCopy) {
    EXPECT_EQ(rewrite_ok("__global__ void k() { __shared__ float tile[32][33]; }"),
              "__global__ void k() { float (&tile)[32][33] = ::simt::static_shared<float[32][33]>(); }");
    EXPECT_EQ(rewrite_ok("void k() { __shared__ float partial[warps][MOE_MAX_EXPERTS]; }"),
              "void k() { float (&partial)[warps][MOE_MAX_EXPERTS] = ::simt::static_shared<float[warps][MOE_MAX_EXPERTS]>(); }");
    EXPECT_EQ(rewrite_ok("void k() { __shared__ __align__(16) unsigned int w[kTile + 1]; }"),
              "void k() { unsigned int (&w)[kTile + 1] = ::simt::static_shared<unsigned int[kTile + 1], 16>(); }");
    EXPECT_EQ(rewrite_ok("void k() { __shared__ int count; }"), "void k() { int& count = ::simt::static_shared<int>(); }");
    // the #define of the fallback macro, and extern __shared__, are not static shared declarations
    EXPECT_EQ(rewrite_ok("#define __shared__ static thread_local\n"), "#define __shared__ static thread_local\n");
    // a declaration over two lines keeps its line break (after the statement)
    EXPECT_EQ(rewrite_ok("void k() {\n    __shared__ float\n        s[8];\n}\n"),
              "void k() {\n    float (&s)[8] = ::simt::static_shared<float[8]>();\n\n}\n");
    const cuda_to_cpp::Result r = cuda_to_cpp::rewrite("void k() { __shared__ float a[2]; __shared__ int b; }", "in.cu");
    EXPECT_EQ(r.static_shared, 2);
}

TEST(CudaToCpp, LineDirectiveNamesTheOriginalFile) {
    const cuda_to_cpp::Result r = cuda_to_cpp::rewrite("int x;\n", "tests/some \"file\".cu");
    EXPECT_EQ(r.text, "#line 1 \"tests/some \\\"file\\\".cu\"\nint x;\n");
}

TEST(CudaToCpp, LaunchInsideAMacroStringizesTheKernelParameter) {
    EXPECT_EQ(rewrite_ok("#define RUN(kernel, ...) kernel<<<1, \\\n    32>>>(__VA_ARGS__)\nRUN(k, p);\n"),
              "#define RUN(kernel, ...) ::simt::launch(#kernel, kernel, 1, \\\n    32)(__VA_ARGS__)\nRUN(k, p);\n");
    EXPECT_EQ(rewrite_ok("#define RUN(x) fixed<<<1, 32>>>(x)\n"),
              "#define RUN(x) ::simt::launch(\"fixed\", fixed, 1, 32)(x)\n");
}

// ---------------------------------------------------------------- what is left alone
TEST(CudaToCpp, CommentsStringsAndTemplatesAreCopiedUnchanged) {
    const std::string untouched =
        "// k<<<1, 32>>>(p) in a line comment\n"
        "/* k<<<1, 32>>>(p) in a block comment,\n"
        "   over two lines */\n"
        "const char* s = \"k<<<1, 32>>>(p)\";\n"
        "const char* r = R\"x(k<<<1, \")\" 32>>>(p))x\";\n"
        "const char* u = u8\"<<<\";\n"
        "char c = '<', d = '>', e = '\\'';\n"
        "int big = 1'000'000;\n"
        "std::map<int, std::vector<std::vector<int>>> m;\n"
        "static_assert(sizeof(std::pair<A<B<int>>>) > 0);\n"
        "int shifted = a >> b << c;\n"
        "std::cout << operator<<<int>(x);\n"
        "#include <vector>\n"
        "#error don't stop here\n"
        "extern int not_shared[];\n";
    EXPECT_EQ(rewrite_ok(untouched), untouched);
}

// ---------------------------------------------------------------- what is refused, with the line
cuda_to_cpp::Error first_error(const std::string& source) {
    const cuda_to_cpp::Result r = cuda_to_cpp::rewrite(source, "in.cu");
    if (r.errors.empty()) return {0, "(no error)"};
    return r.errors.front();
}

TEST(CudaToCpp, LaunchFormsItDoesNotUnderstandAreErrors) {
    struct Case {
        const char* source;
        int line;
        const char* message_part;
    };
    const Case cases[] = {
        {"int a;\nx = <<<1, 2>>>(p);", 2, "must follow a kernel name"},
        {"make_kernel(3)<<<1, 2>>>(p);", 1, "must follow a kernel name"},
        {"obj.kernel<<<1, 2>>>(p);", 1, "must follow a kernel name"},
        {"k<<<1, 2;\n", 1, "no matching '>>>'"},
        {"k<<<>>>(p);", 1, "empty <<<>>>"},
        {"k<<<1, 2>>>;", 1, "must be followed by the argument list"},
        {"void f() {\n  extern __shared__ float fixed[32];\n}", 2, "have no size"},
        {"void f() { extern __shared__ float a[], b[]; }", 1, "declares one array"},
        {"void f() { extern __shared__ float* p; }", 1, "not understood"},
        {"void a() { extern __shared__ float x[]; }\nvoid b() { extern __shared__ int x[]; }", 2, "nvcc rejects two types"},
        {"extern __shared__ float file_scope[];", 1, "outside a function"},
        {"namespace n {\nextern __shared__ float in_namespace[];\n}", 2, "outside a function"},
        {"void f() { __shared__ float a[4], b[4]; }", 1, "one variable per declaration"},
        {"void f() {\n  __shared__ float empty[];\n}", 2, "__shared__ declaration not understood"},
        {"__shared__ float file_scope_static[8];", 1, "__shared__ outside a function"},
        {"int a;\n/* never closed", 2, "unterminated /* comment"},
        {"const char* s = \"never closed;\n", 1, "unterminated string"},
    };
    for (const Case& c : cases) {
        const cuda_to_cpp::Error e = first_error(c.source);
        EXPECT_EQ(e.line, c.line) << c.source;
        EXPECT_NE(e.message.find(c.message_part), std::string::npos) << c.source << "\n -> " << e.message;
    }
}

// ---------------------------------------------------------------- this file, rewritten
TEST(CudaToCpp, ThisFileWasCompiledFromItsRewrittenCopyWithOriginalNamesAndLines) {
    const int line = __LINE__;
    EXPECT_STREQ(__FILE__, "tests/test_cuda_to_cpp.cpp");
    EXPECT_STREQ(std::source_location::current().file_name(), "tests/test_cuda_to_cpp.cpp");
    float* out = nullptr;
    ASSERT_EQ(cudaMalloc(&out, 64 * sizeof(float)), cudaSuccess);
    simt_copy_kernel<<<1,
                       64>>>(out,
                             out,
                             0);
    EXPECT_EQ(__LINE__, line + 9);  // the four lines of the launch are still four lines
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    ASSERT_EQ(cudaFree(out), cudaSuccess);
}

template <typename T, int kFactor>
void check_reverse_scale(int rows, int cols) {
    std::vector<T> host((size_t)rows * cols);
    for (size_t i = 0; i < host.size(); i++) host[i] = (T)(i % 97) - (T)40;
    T *in = nullptr, *out = nullptr;
    ASSERT_EQ(cudaMalloc(&in, host.size() * sizeof(T)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&out, host.size() * sizeof(T)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(in, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ((simt_reverse_scale<T, kFactor>(out, in, rows, cols, nullptr)), cudaSuccess);
    std::vector<T> got(host.size());
    ASSERT_EQ(cudaMemcpy(got.data(), out, got.size() * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            ASSERT_EQ(got[(size_t)r * cols + c], kFactor * host[(size_t)r * cols + cols - 1 - c]) << r << "," << c;
    ASSERT_EQ(cudaFree(in), cudaSuccess);
    ASSERT_EQ(cudaFree(out), cudaSuccess);
}

// tests/simt_test_kernels.cuh's template kernel: a template-id launch over four lines with all four
// configuration arguments, and an aligned extern __shared__ array sized by the launch.
TEST(CudaToCpp, RewrittenTemplateKernelRuns) {
    check_reverse_scale<float, 3>(5, 100);
    check_reverse_scale<double, -2>(3, 257);
}

// The configuration and the kernel's name reach the layer's launch checks.
TEST(CudaToCpp, LaunchConfigurationAndNameReachTheLayer) {
    float* out = nullptr;
    ASSERT_EQ(cudaMalloc(&out, 4 * sizeof(float)), cudaSuccess);
    simt_copy_kernel<<<1, 2000>>>(out, out, 0);  // more threads than a block may have
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_NE(std::string(simt::last_error_message()).find("kernel 'simt_copy_kernel'"), std::string::npos)
        << simt::last_error_message();
    simt_copy_kernel<<<1, 32, 64 * 1024>>>(out, out, 0);  // more dynamic shared memory than the default limit
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
    EXPECT_NE(std::string(simt::last_error_message()).find("65536 bytes of dynamic shared memory"), std::string::npos)
        << simt::last_error_message();
    simt_reverse_scale_kernel<float, 3><<<1, 32, 48 * 1024 + 4>>>(out, out, 0);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
    EXPECT_NE(std::string(simt::last_error_message()).find("kernel 'simt_reverse_scale_kernel<float, 3>'"),
              std::string::npos)
        << simt::last_error_message();
    simt_copy_kernel<<<1, 32, 1024, nullptr>>>(out, out, 0);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    ASSERT_EQ(cudaFree(out), cudaSuccess);
}

}  // namespace
