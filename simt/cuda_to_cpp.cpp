// simt/cuda_to_cpp.cpp: the host tool the Makefile runs on every project source for the g++ builds.
//
//   cuda_to_cpp <input> <output>
//
// Writes the rewrite of <input> (see simt/cuda_to_cpp.h) to <output>, with `#line 1 "<input>"` on
// top, so diagnostics and __FILE__ name the original. On a construct it does not understand it
// prints `<input>:<line>: error: ...` (the compiler's format, so editors jump to it), writes
// nothing and exits with status 1: the build stops instead of compiling something else.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "cuda_to_cpp.h"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <input> <output>\n", argv[0]);
        return 2;
    }
    const std::string input = argv[1], output = argv[2];
    std::ifstream in(input, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "%s: error: cannot read the file\n", input.c_str());
        return 1;
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    const cuda_to_cpp::Result result = cuda_to_cpp::rewrite(buffer.str(), input);
    if (!result.errors.empty()) {
        for (const auto& e : result.errors) std::fprintf(stderr, "%s:%d: error: %s\n", input.c_str(), e.line, e.message.c_str());
        return 1;
    }
    // write to a temporary name, then rename: a failed or interrupted run never leaves a partial copy
    const std::string temporary = output + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out << result.text;
        if (!out.flush()) {
            std::fprintf(stderr, "%s: error: cannot write the file\n", temporary.c_str());
            return 1;
        }
    }
    if (std::rename(temporary.c_str(), output.c_str()) != 0) {
        std::fprintf(stderr, "%s: error: cannot rename to %s\n", temporary.c_str(), output.c_str());
        return 1;
    }
    return 0;
}
