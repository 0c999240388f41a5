// tests/test_util.h: the small helpers every test file may need, defined once: device memory,
// files, and finding the trainer binary for the end-to-end tests.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common.cuh"

namespace test_util {

// ---------------------------------------------------------------- device memory

template <typename T>
T* dalloc(size_t n) {
    T* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}
template <typename T>
void upload(T* d, const std::vector<T>& h) {
    if (!h.empty()) CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
std::vector<T> download(const T* d, size_t n) {
    std::vector<T> h(n);
    if (n > 0) CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// A device array freed at the end of its scope; the CUDA calls' errors fail the running test
// (the layer tests check those errors themselves, so they do not exit as CUDA_CHECK would).
template <class T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;
    explicit DeviceBuffer(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&ptr, count * sizeof(T)), cudaSuccess); }
    explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
    ~DeviceBuffer() { EXPECT_EQ(cudaFree(ptr), cudaSuccess); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void upload(const std::vector<T>& host) {
        ASSERT_EQ(host.size(), n);
        ASSERT_EQ(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    std::vector<T> download() const {
        std::vector<T> host(n);
        EXPECT_EQ(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return host;
    }
    void fill_bytes(int value) { EXPECT_EQ(cudaMemset(ptr, value, n * sizeof(T)), cudaSuccess); }
};

// ---------------------------------------------------------------- text and files

inline bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

// The whole file ("" if it cannot be read).
inline std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
inline void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), (std::streamsize)bytes.size());
}

// One shell word: 'it'\''s' for it's.
inline std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// ---------------------------------------------------------------- the trainer binary

// $MOE_TRAINER, else the repository's train_moe_cpu: two levels above the test binary
// (build/cpu/run_tests), else in the working directory. An absolute path, or "" if none exists.
inline std::string find_trainer() {
    if (const char* env = getenv("MOE_TRAINER")) return env;
    std::vector<std::string> candidates;
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        const std::string path(exe, (size_t)n);
        candidates.push_back(path.substr(0, path.find_last_of('/')) + "/../../train_moe_cpu");
    }
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd)) candidates.push_back(std::string(cwd) + "/train_moe_cpu");
    for (const auto& c : candidates)
        if (access(c.c_str(), X_OK) == 0) return c;
    return "";
}

}  // namespace test_util
