// simt/ptxas_gate.h: the resource gate of the nvcc check (run by simt/ptxas_gate.cpp).
//
// The nvcc check compiles every CUDA source with -Xptxas -v; ptxas then reports, per kernel and
// architecture, its registers per thread, stack frame, spill stores and loads, and static shared
// memory. The CPU test run writes a launch log (simt::set_launch_log: every distinct kernel,
// threads per block, dynamic shared bytes, opt-in limit). This gate joins the two, per kernel
// (instantiations of a template share their base name and the table holds their largest numbers):
//   - any spill fails (a spilling kernel runs at local-memory speed; the fix is in the kernel);
//   - a kernel whose registers (given to warps in units of 256) times its largest launch's block
//     exceed the SM's 65,536 fails (the launch would fail with "too many resources requested");
//   - a kernel whose launch asks for more dynamic shared memory than its limit (48 KiB minus its
//     static shared memory, or the opt-in attribute), or whose static shared memory plus opt-in
//     limit exceed the architecture's per-block maximum, fails;
// and it prints the table with the occupancy the largest launch gets on sm_80 and sm_90.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace ptxas_gate {

struct Arch {
    const char* name;
    long registers_per_sm;
    long max_warps_per_sm;
    long max_blocks_per_sm;
    long shared_per_sm;         // bytes available to blocks
    long max_shared_per_block;  // opt-in maximum
};
inline const Arch kArchs[] = {
    {"sm_80", 65536, 64, 32, 164 * 1024, 163 * 1024},
    {"sm_90", 65536, 64, 32, 228 * 1024, 227 * 1024},
};
inline constexpr long kRegistersPerBlock = 65536;
inline constexpr long kDefaultDynamicLimit = 48 * 1024;
inline constexpr long kReservedSharedPerBlock = 1024;  // the driver's share of every block (sm_80+)

struct Usage {
    int registers = 0;
    long stack = 0, spill_stores = 0, spill_loads = 0, shared = 0;
};
struct Launch {
    long threads = 0;         // the largest block
    long dynamic_shared = 0;  // the largest request
    long attribute = -1;      // cudaFuncAttributeMaxDynamicSharedMemorySize, -1 if never set
};

// "_Z2tkILi64EEvPf" -> "tk"; "_ZN2ns6kernelEv" -> "kernel" (what the CPU layer's launch names
// reduce to, see simt.cpp's kernel_base_name).
inline std::string base_name(const std::string& mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), std::free);
    std::string s = status == 0 && d ? std::string(d.get()) : mangled;
    // cut the parameter list: the first '(' outside template arguments
    int depth = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '<') depth++;
        if (s[i] == '>') depth--;
        if (s[i] == '(' && depth == 0) {
            s.resize(i);
            break;
        }
    }
    // drop trailing template arguments
    while (!s.empty() && s.back() == '>') {
        int d2 = 0;
        size_t i = s.size();
        while (i-- > 0) {
            if (s[i] == '>') d2++;
            if (s[i] == '<' && --d2 == 0) break;
        }
        s.resize(i == (size_t)-1 ? 0 : i);
    }
    // the return type of a template ("void tk") and the namespaces
    const size_t space = s.rfind(' ');
    if (space != std::string::npos) s = s.substr(space + 1);
    const size_t colons = s.rfind("::");
    if (colons != std::string::npos) s = s.substr(colons + 2);
    return s;
}

// Base name (of a launch as the CPU layer names it: "ns::k<T, 4>" -> "k").
inline std::string launch_base_name(const std::string& name) {
    if (name.empty() || name[0] == '(') return "";
    std::string s = name.substr(0, name.find('<'));
    const size_t colons = s.rfind("::");
    if (colons != std::string::npos) s = s.substr(colons + 2);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    while (!s.empty() && s.front() == ' ') s.erase(0, 1);
    return s;
}

// kernel base name -> arch -> the largest numbers over its instantiations and translation units.
using Table = std::map<std::string, std::map<std::string, Usage>>;

// Reads ptxas -v output (any number of files' worth, concatenated).
inline void parse_ptxas(const std::string& text, Table& table) {
    std::istringstream in(text);
    std::string line, current, arch;
    auto usage = [&]() -> Usage& { return table[base_name(current)][arch]; };
    while (std::getline(in, line)) {
        char name[1024], a[32];
        long stack, stores, loads;
        if (sscanf(line.c_str(), "ptxas info : Compiling entry function '%1023[^']' for '%31[^']'", name, a) == 2) {
            current = name;
            arch = a;
            usage();
            continue;
        }
        if (current.empty()) continue;
        if (sscanf(line.c_str(), " %ld bytes stack frame, %ld bytes spill stores, %ld bytes spill loads", &stack, &stores,
                   &loads) == 3) {
            Usage& u = usage();
            u.stack = std::max(u.stack, stack);
            u.spill_stores = std::max(u.spill_stores, stores);
            u.spill_loads = std::max(u.spill_loads, loads);
            continue;
        }
        int registers;
        if (sscanf(line.c_str(), "ptxas info : Used %d registers", &registers) == 1) {
            Usage& u = usage();
            u.registers = std::max(u.registers, registers);
            const size_t smem = line.find(" bytes smem");
            if (smem != std::string::npos) {
                size_t b = line.rfind(',', smem);
                b = b == std::string::npos ? 0 : b + 1;
                u.shared = std::max(u.shared, atol(line.c_str() + b));
            }
        }
    }
}

// Reads the launch log ("kernel<TAB>threads<TAB>dynamic_shared<TAB>attribute" lines).
inline std::map<std::string, Launch> parse_launches(const std::string& text) {
    std::map<std::string, Launch> launches;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        char name[1024];
        long threads, dynamic, attribute;
        if (line.empty() || line[0] == '#') continue;
        if (sscanf(line.c_str(), "%1023[^\t]\t%ld\t%ld\t%ld", name, &threads, &dynamic, &attribute) != 4) continue;
        const std::string base = launch_base_name(name);
        if (base.empty()) continue;
        Launch& l = launches[base];
        l.threads = std::max(l.threads, threads);
        l.dynamic_shared = std::max(l.dynamic_shared, dynamic);
        l.attribute = std::max(l.attribute, attribute);
    }
    return launches;
}

inline long registers_per_block(int registers, long threads) {
    const long per_warp = ((long)registers * 32 + 255) / 256 * 256;
    return (threads + 31) / 32 * per_warp;
}

// Resident warps per SM / the maximum, for blocks of `threads` with `shared` bytes in all.
inline double occupancy(const Arch& a, int registers, long threads, long shared) {
    const long warps = (threads + 31) / 32;
    const long per_warp = ((long)std::max(registers, 1) * 32 + 255) / 256 * 256;
    long blocks = std::min(a.max_blocks_per_sm, a.max_warps_per_sm / warps);
    blocks = std::min(blocks, a.registers_per_sm / (warps * per_warp));
    blocks = std::min(blocks, a.shared_per_sm / (shared + kReservedSharedPerBlock));
    return (double)(blocks * warps) / (double)a.max_warps_per_sm;
}

struct Verdict {
    std::vector<std::string> failures;  // "kernel: why"
    std::string table;                  // the printed table
    std::string tsv;                    // the table file the CPU layer reads
    std::string headline;
};

inline Verdict check(const Table& table, const std::map<std::string, Launch>& launches) {
    Verdict v;
    char buf[1024];
    v.tsv = "# kernel\tarch\tregisters\tstack\tspill_stores\tspill_loads\tstatic_shared\tmax_threads\tmax_dynamic_shared\toccupancy\n";
    snprintf(buf, sizeof buf, "%-44s %9s %7s %13s %12s %8s %9s %11s\n", "kernel", "registers", "stack", "spill bytes",
             "static smem", "threads", "dyn smem", "occupancy");
    v.table = buf;
    snprintf(buf, sizeof buf, "%-44s %9s %7s %13s %12s %8s %9s %11s\n", "", "80/90", "80/90", "", "80/90", "(largest", "launch)",
             "80/90");
    v.table += buf;
    int most = -1;
    std::string most_name, most_arch;
    long spilling = 0;
    for (const auto& [name, per_arch] : table) {
        const auto l = launches.find(name);
        const bool launched = l != launches.end();
        std::string regs, stack, spills, smem, occ;
        for (const Arch& a : kArchs) {
            const auto it = per_arch.find(a.name);
            if (it == per_arch.end()) continue;
            const Usage& u = it->second;
            if (u.registers > most) most = u.registers, most_name = name, most_arch = a.name;
            auto add = [](std::string& s, const std::string& x) { s += (s.empty() ? "" : "/") + x; };
            add(regs, std::to_string(u.registers));
            add(stack, std::to_string(u.stack));
            add(spills, std::to_string(u.spill_stores + u.spill_loads));
            add(smem, std::to_string(u.shared));
            if (u.spill_stores > 0 || u.spill_loads > 0) {
                ++spilling;
                snprintf(buf, sizeof buf, "%s: %ld bytes of spill stores and %ld of spill loads on %s", name.c_str(),
                         u.spill_stores, u.spill_loads, a.name);
                v.failures.push_back(buf);
            }
            double o = -1.0;
            if (launched) {
                const Launch& L = l->second;
                const long need = registers_per_block(u.registers, L.threads);
                if (need > kRegistersPerBlock) {
                    snprintf(buf, sizeof buf,
                             "%s: %d registers per thread on %s times its largest launch of %ld threads need %ld "
                             "registers, more than the SM's %ld",
                             name.c_str(), u.registers, a.name, L.threads, need, kRegistersPerBlock);
                    v.failures.push_back(buf);
                }
                const long limit = L.attribute >= 0 ? L.attribute : kDefaultDynamicLimit - u.shared;
                if (L.dynamic_shared > limit) {
                    snprintf(buf, sizeof buf,
                             "%s: a launch asks for %ld bytes of dynamic shared memory; with %ld bytes of static "
                             "shared memory on %s its limit is %ld",
                             name.c_str(), L.dynamic_shared, u.shared, a.name, limit);
                    v.failures.push_back(buf);
                }
                if (L.attribute >= 0 && u.shared + L.attribute > a.max_shared_per_block) {
                    snprintf(buf, sizeof buf,
                             "%s: %ld bytes of static shared memory plus an opt-in of %ld exceed %s's %ld per block",
                             name.c_str(), u.shared, L.attribute, a.name, a.max_shared_per_block);
                    v.failures.push_back(buf);
                }
                if (need <= kRegistersPerBlock)
                    o = occupancy(a, u.registers, L.threads, u.shared + L.dynamic_shared);
                snprintf(buf, sizeof buf, "%.0f%%", 100.0 * o);
                add(occ, o >= 0 ? std::string(buf) : "-");
            } else {
                add(occ, "-");
            }
            snprintf(buf, sizeof buf, "%s\t%s\t%d\t%ld\t%ld\t%ld\t%ld\t%ld\t%ld\t%.3f\n", name.c_str(), a.name, u.registers,
                     u.stack, u.spill_stores, u.spill_loads, u.shared, launched ? l->second.threads : 0L,
                     launched ? l->second.dynamic_shared : 0L, o);
            v.tsv += buf;
        }
        snprintf(buf, sizeof buf, "%-44s %9s %7s %13s %12s %8s %9s %11s\n", name.c_str(), regs.c_str(), stack.c_str(),
                 spills.c_str(), smem.c_str(), launched ? std::to_string(l->second.threads).c_str() : "-",
                 launched ? std::to_string(l->second.dynamic_shared).c_str() : "-", occ.c_str());
        v.table += buf;
    }
    snprintf(buf, sizeof buf, "%zu kernels; most registers: %d (%s, %s); %s", table.size(), most, most_name.c_str(),
             most_arch.c_str(), spilling == 0 ? "no spills" : (std::to_string(spilling) + " kernel/arch pairs spill").c_str());
    v.headline = buf;
    return v;
}

}  // namespace ptxas_gate
