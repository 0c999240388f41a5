// simt/ptxas_gate.cpp: the resource gate of the nvcc check (see simt/ptxas_gate.h).
//   ptxas_gate [--launches LAUNCH_LOG] [--table OUT.tsv] PTXAS_LOG...
// Prints the per-kernel table and its headline, writes the table file the CPU layer reads
// (SIMT_RESOURCES), and exits 1 (after listing every failure) when a kernel fails the gate.
#include "simt/ptxas_gate.h"

#include <fstream>
#include <iostream>
#include <sstream>

namespace {
bool read_file(const std::string& path, std::string& text) {
    std::ifstream in(path);
    if (!in) return false;
    std::stringstream s;
    s << in.rdbuf();
    text = s.str();
    return true;
}
}  // namespace

int main(int argc, char** argv) {
    std::string launches_path, table_path, ptxas;
    int logs = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if ((a == "--launches" || a == "--table") && i + 1 < argc) {
            (a == "--launches" ? launches_path : table_path) = argv[++i];
            continue;
        }
        std::string text;
        if (!read_file(a, text)) {
            std::cerr << "ptxas_gate: cannot read " << a << "\n";
            return 2;
        }
        ptxas += text;
        ++logs;
    }
    if (logs == 0) {
        std::cerr << "usage: ptxas_gate [--launches LAUNCH_LOG] [--table OUT.tsv] PTXAS_LOG...\n";
        return 2;
    }
    ptxas_gate::Table table;
    ptxas_gate::parse_ptxas(ptxas, table);
    if (table.empty()) {
        std::cerr << "ptxas_gate: no kernel in the ptxas output (was it compiled with -Xptxas -v?)\n";
        return 2;
    }
    std::string launch_text;
    if (!launches_path.empty() && !read_file(launches_path, launch_text))
        std::cout << "ptxas_gate: no launch log at " << launches_path
                  << ": block sizes and dynamic shared memory are not checked\n";
    const ptxas_gate::Verdict v = ptxas_gate::check(table, ptxas_gate::parse_launches(launch_text));
    std::cout << v.table << "resources: " << v.headline << "\n";
    if (!table_path.empty()) {
        std::ofstream out(table_path);
        out << v.tsv;
        if (!out) {
            std::cerr << "ptxas_gate: cannot write " << table_path << "\n";
            return 2;
        }
    }
    for (const std::string& f : v.failures) std::cout << "FAIL " << f << "\n";
    return v.failures.empty() ? 0 : 1;
}
