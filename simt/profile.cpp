// simt/profile.cpp: the GPU cost report (simt/profile.h says what is counted and how it is costed).
//
// The recording path is on every instrumented load and store of a profiled kernel, so it is kept
// to a range check and a push_back: each worker thread owns a Recorder holding, per CUDA thread of
// the block it runs, the list of that thread's global accesses in order. When the block is done,
// its warps are folded into warp instructions (the i-th access of each lane) and counted; when the
// launch is done, the workers' counts are summed, the footprint bitmap is counted and cleared, and
// the launch is costed and added to its row of the report.
#include "simt/profile.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "simt/simt.h"

namespace simt::profile {

// Datasheet figures: SMs, HBM bandwidth, FP32 and dense TF32 peaks, threads, blocks and shared
// memory per SM. The rest are this model's assumptions (README, "GPU cost report").
const GpuSpec& h100() {
    static const GpuSpec spec{.name = "H100 SXM5", .sms = 132, .hbm_bytes_per_s = 3.35e12,
                              .l2_bytes_per_s = 2.5 * 3.35e12, .fp32_flops_per_s = 67e12, .tf32_flops_per_s = 494.7e12,
                              .max_threads_per_sm = 2048, .max_blocks_per_sm = 32, .shared_per_sm = 228 * 1024,
                              .shared_reserved_per_block = 1024, .launch_floor_s = 3e-6, .cublas_floor_s = 5e-6,
                              .launch_gap_s = 1e-6, .load_latency_s = 0.5e-6, .loads_in_flight_per_warp = 4,
                              .gemm_tile = 128, .splitk_min_k = 512, .host_copy_bytes_per_s = 10e9,
                              .host_copy_floor_s = 10e-6};
    return spec;
}
const GpuSpec& a100() {
    static const GpuSpec spec{.name = "A100 SXM4 80GB", .sms = 108, .hbm_bytes_per_s = 2.039e12,
                              .l2_bytes_per_s = 2.5 * 2.039e12, .fp32_flops_per_s = 19.5e12, .tf32_flops_per_s = 156e12,
                              .max_threads_per_sm = 2048, .max_blocks_per_sm = 32, .shared_per_sm = 164 * 1024,
                              .shared_reserved_per_block = 1024, .launch_floor_s = 3e-6, .cublas_floor_s = 5e-6,
                              .launch_gap_s = 1e-6, .load_latency_s = 0.5e-6, .loads_in_flight_per_warp = 4,
                              .gemm_tile = 128, .splitk_min_k = 512, .host_copy_bytes_per_s = 10e9,
                              .host_copy_floor_s = 10e-6};
    return spec;
}

namespace {

constexpr int kKinds = 3;
constexpr unsigned kSectorShift = 5;  // 32-byte sectors

// One access, packed: offset into the device region (< 2^40) << 24 | bytes (< 2^22) << 2 | kind.
inline uint64_t pack(uint64_t offset, unsigned bytes, Access kind) {
    return offset << 24 | (uint64_t)std::min(bytes, (1u << 22) - 1) << 2 | (uint64_t)kind;
}
inline uint64_t packed_offset(uint64_t a) { return a >> 24; }
inline unsigned packed_bytes(uint64_t a) { return (unsigned)(a >> 2) & ((1u << 22) - 1); }
inline int packed_kind(uint64_t a) { return (int)(a & 3); }

// The counts of the launch in progress on one worker thread.
struct Accumulator {
    unsigned long long instructions[kKinds] = {}, bytes[kKinds] = {}, sectors[kKinds] = {}, ideal[kKinds] = {};
    unsigned long long longest_warp_loads = 0;
    size_t static_shared = 0;
    size_t lo_word = SIZE_MAX, hi_word = 0;  // footprint bitmap words this worker touched
};

struct Recorder {
    std::vector<std::vector<uint64_t>> lanes = std::vector<std::vector<uint64_t>>(kMaxThreadsPerBlock);
    int threads = 0;
    Accumulator acc;
    std::vector<uint64_t> sectors[kKinds];  // scratch of one warp instruction
};

// The device region and two bitmaps over its sectors (read, written): reserved, not committed
// (MAP_NORESERVE), so only the pages of memory a kernel touches cost anything.
uintptr_t g_region_lo = 0;
size_t g_region_bytes = 0;
uint64_t* g_read_bits = nullptr;
uint64_t* g_write_bits = nullptr;

std::mutex g_mutex;                    // the recorders list and the report's rows
// One recorder per worker thread that ever ran a profiled block, never destroyed (like the worker
// threads themselves): a global vector's destructor at exit would leave them unreachable.
std::vector<Recorder*>& recorders() {
    static std::vector<Recorder*>* list = new std::vector<Recorder*>();
    return *list;
}
thread_local Recorder* tls_recorder = nullptr;
thread_local Recorder* tls_active = nullptr;  // set while this thread runs a profiled block
const char* g_phase = "";
LaunchCounts g_last;

// One row of the report: the launches of one kernel (or call) with one configuration in one phase.
enum Bound { kLaunch, kHbm, kL2, kLatency, kFp32, kTf32, kPcie, kBounds };
const char* const kBoundNames[kBounds] = {"launch", "HBM", "L2", "latency", "FP32", "TF32", "PCIe"};
enum class RowType { Kernel, Gemm, MemoryOp, HostCopy };
struct Row {
    std::string phase, name, grid, block;
    RowType type = RowType::Kernel;
    long launches = 0;
    double waves = 0;                 // per launch, on the H100
    LaunchCounts sum;                 // summed over launches (blocks: per launch)
    double flops = 0, gemm_read = 0, gemm_written = 0, op_bytes = 0;
    double time[2] = {}, minimum[2] = {};  // H100, A100: sums over launches
    double by_bound[kBounds] = {};         // H100 time by what bounded it
    size_t order = 0;                      // first seen
};
std::map<std::string, Row> g_rows;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string dims(const dim3& d) {
    if (d.z > 1) return format("%u,%u,%u", d.x, d.y, d.z);
    if (d.y > 1) return format("%u,%u", d.x, d.y);
    return format("%u", d.x);
}

Row& row(const std::string& key, const std::string& name, RowType type) {
    auto it = g_rows.find(key);
    if (it == g_rows.end()) {
        it = g_rows.emplace(key, Row{}).first;
        it->second.phase = g_phase;
        it->second.name = name;
        it->second.type = type;
        it->second.order = g_rows.size();
    }
    return it->second;
}

inline void mark(uint64_t* bits, uint64_t sector, Accumulator& acc) {
    const size_t word = (size_t)(sector >> 6);
    const uint64_t bit = 1ull << (sector & 63);
    if ((__atomic_load_n(&bits[word], __ATOMIC_RELAXED) & bit) == 0) __atomic_fetch_or(&bits[word], bit, __ATOMIC_RELAXED);
    acc.lo_word = std::min(acc.lo_word, word);
    acc.hi_word = std::max(acc.hi_word, word);
}

// Folds the finished block's accesses into warp instructions and counts them.
void fold_block(Recorder& r) {
    Accumulator& acc = r.acc;
    for (int first = 0; first < r.threads; first += 32) {
        const int last = std::min(first + 32, r.threads);
        size_t depth = 0;
        for (int l = first; l < last; ++l) depth = std::max(depth, r.lanes[l].size());
        unsigned long long loads = 0;
        for (size_t i = 0; i < depth; ++i) {
            unsigned long long bytes[kKinds] = {};
            for (auto& s : r.sectors) s.clear();
            for (int l = first; l < last; ++l) {
                if (i >= r.lanes[l].size()) continue;
                const uint64_t a = r.lanes[l][i];
                const int kind = packed_kind(a);
                const uint64_t offset = packed_offset(a);
                const unsigned n = packed_bytes(a);
                bytes[kind] += n;
                for (uint64_t s = offset >> kSectorShift; s <= (offset + n - 1) >> kSectorShift; ++s) r.sectors[kind].push_back(s);
            }
            for (int kind = 0; kind < kKinds; ++kind) {
                std::vector<uint64_t>& s = r.sectors[kind];
                if (s.empty()) continue;
                if (!std::is_sorted(s.begin(), s.end())) std::sort(s.begin(), s.end());
                s.erase(std::unique(s.begin(), s.end()), s.end());
                acc.instructions[kind]++;
                acc.bytes[kind] += bytes[kind];
                acc.sectors[kind] += s.size();
                // the fewest sectors those bytes could take (a broadcast already takes fewer)
                acc.ideal[kind] += std::min<unsigned long long>(s.size(), (bytes[kind] + 31) / 32);
                if (kind != (int)Access::Write) loads++;  // stores do not stall the warp; loads and atomics wait
                for (uint64_t sector : s) {
                    if (kind != (int)Access::Write) mark(g_read_bits, sector, acc);
                    if (kind != (int)Access::Read) mark(g_write_bits, sector, acc);
                }
            }
        }
        acc.longest_warp_loads = std::max(acc.longest_warp_loads, loads);
    }
    for (int l = 0; l < r.threads; ++l) r.lanes[l].clear();
}

unsigned long long count_and_clear(uint64_t* bits, size_t lo, size_t hi) {
    unsigned long long n = 0;
    for (size_t w = lo; w <= hi; ++w) n += (unsigned long long)__builtin_popcountll(bits[w]);
    std::memset(bits + lo, 0, (hi - lo + 1) * sizeof(uint64_t));
    return n;
}

// ---- the hooks the layer calls ----
void on_block_begin(int threads) {
    Recorder* r = tls_recorder;
    if (r == nullptr) {
        r = tls_recorder = new Recorder();  // kept for the life of the process, like the worker threads
        std::lock_guard<std::mutex> lock(g_mutex);
        recorders().push_back(r);
    }
    r->threads = threads;
    tls_active = r;
}

void on_block_end(size_t static_shared_bytes) {
    Recorder* r = tls_active;
    if (r == nullptr) return;
    tls_active = nullptr;
    r->acc.static_shared = std::max(r->acc.static_shared, static_shared_bytes);
    fold_block(*r);
}

// Nothing to prepare before the blocks run: the previous launch_end emptied every counter.
void on_launch_begin(const detail::Launch&) {}

void add_time(Row& row, int index, double t, double minimum, Bound bound) {
    row.time[index] += t;
    row.minimum[index] += minimum;
    if (index == 0) row.by_bound[bound] += t;
}

// The terms of a kernel's time on one GPU (simt/profile.h, "The time model").
struct KernelTerms {
    double hbm, l2, latency, minimum;
};
KernelTerms kernel_terms(const GpuSpec& gpu, const LaunchCounts& c) {
    const double blocks = (double)std::max(1ull, c.blocks);
    const double tail = std::ceil(blocks / gpu.sms) * gpu.sms / blocks;
    const double footprint = 32.0 * (double)(c.unique_read_sectors + c.unique_written_sectors);
    const double sector_bytes = 32.0 * (double)(c.sectors[0] + c.sectors[1] + c.sectors[2]);
    const int resident = blocks_per_sm(gpu, c.threads_per_block, c.shared_bytes);
    const double rounds = std::ceil(blocks / ((double)gpu.sms * resident));
    return KernelTerms{footprint / gpu.hbm_bytes_per_s * tail, sector_bytes / gpu.l2_bytes_per_s * tail,
                       (double)c.longest_warp_loads * gpu.load_latency_s / gpu.loads_in_flight_per_warp * rounds,
                       footprint / gpu.hbm_bytes_per_s};
}

void on_launch_end(const detail::Launch& L) {
    LaunchCounts c;
    c.blocks = (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
    c.threads_per_block = (unsigned long long)L.block.x * L.block.y * L.block.z;
    size_t lo = SIZE_MAX, hi = 0, static_shared = 0;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        for (Recorder* r : recorders()) {
            Accumulator& a = r->acc;
            for (int k = 0; k < kKinds; ++k) {
                c.instructions[k] += a.instructions[k];
                c.bytes[k] += a.bytes[k];
                c.sectors[k] += a.sectors[k];
                c.ideal_sectors[k] += a.ideal[k];
            }
            c.longest_warp_loads = std::max(c.longest_warp_loads, a.longest_warp_loads);
            static_shared = std::max(static_shared, a.static_shared);
            lo = std::min(lo, a.lo_word);
            hi = std::max(hi, a.hi_word);
            a = Accumulator{};
        }
    }
    c.shared_bytes = L.shared_bytes + static_shared;
    if (lo <= hi) {
        c.unique_read_sectors = count_and_clear(g_read_bits, lo, hi);
        c.unique_written_sectors = count_and_clear(g_write_bits, lo, hi);
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    g_last = c;
    const std::string grid = dims(L.grid), block = dims(L.block);
    Row& r = row(format("%s|%s|%s|%s|%zu", g_phase, L.name, grid.c_str(), block.c_str(), L.shared_bytes), L.name, RowType::Kernel);
    r.grid = grid;
    r.block = block;
    r.launches++;
    r.sum.blocks = c.blocks;
    r.sum.threads_per_block = c.threads_per_block;
    r.sum.shared_bytes = std::max(r.sum.shared_bytes, c.shared_bytes);
    for (int k = 0; k < kKinds; ++k) {
        r.sum.instructions[k] += c.instructions[k];
        r.sum.bytes[k] += c.bytes[k];
        r.sum.sectors[k] += c.sectors[k];
        r.sum.ideal_sectors[k] += c.ideal_sectors[k];
    }
    r.sum.unique_read_sectors += c.unique_read_sectors;
    r.sum.unique_written_sectors += c.unique_written_sectors;
    r.sum.longest_warp_loads = std::max(r.sum.longest_warp_loads, c.longest_warp_loads);
    r.waves = (double)c.blocks / ((double)h100().sms * blocks_per_sm(h100(), c.threads_per_block, c.shared_bytes));
    const GpuSpec* gpus[2] = {&h100(), &a100()};
    for (int g = 0; g < 2; ++g) {
        const GpuSpec& gpu = *gpus[g];
        const KernelTerms k = kernel_terms(gpu, c);
        const double busy = std::max({k.hbm, k.l2, k.latency});
        const Bound bound = gpu.launch_gap_s + busy <= gpu.launch_floor_s ? kLaunch
                            : busy == k.hbm                               ? kHbm
                            : busy == k.l2                                ? kL2
                                                                          : kLatency;
        add_time(r, g, kernel_time(gpu, c), k.minimum, bound);
    }
}

void on_gemm(const detail::GemmCall& g) {
    const double flops = 2.0 * g.m * g.n * (double)g.k * g.batch;
    const double read = 4.0 * ((double)g.m * g.k + (double)g.k * g.n + (g.beta_nonzero ? (double)g.m * g.n : 0.0)) * g.batch;
    const double written = 4.0 * (double)g.m * g.n * g.batch;
    std::string file = g.site.file_name();
    if (size_t slash = file.rfind('/'); slash != std::string::npos) file = file.substr(slash + 1);
    const std::string name = format("cuBLAS %s%s %dx%dx%d%s @%s:%u", g.transa ? "T" : "N", g.transb ? "T" : "N", g.m,
                                    g.n, g.k, g.batch > 1 ? format(" x%d", g.batch).c_str() : "", file.c_str(),
                                    (unsigned)g.site.line());
    std::lock_guard<std::mutex> lock(g_mutex);
    Row& r = row(format("%s|%s|%d", g_phase, name.c_str(), g.tf32 ? 1 : 0), name, RowType::Gemm);
    r.launches++;
    r.flops += flops;
    r.gemm_read += read;
    r.gemm_written += written;
    const GpuSpec* gpus[2] = {&h100(), &a100()};
    for (int i = 0; i < 2; ++i) {
        const GpuSpec& gpu = *gpus[i];
        GemmEstimate e;
        const double t = gemm_time(gpu, g.m, g.n, g.k, g.batch, g.beta_nonzero, g.tf32, &e);
        const Bound bound = t == gpu.cublas_floor_s ? kLaunch : e.flop_bound ? (g.tf32 ? kTf32 : kFp32) : kHbm;
        add_time(r, i, t, e.minimum, bound);
        if (i == 0) {
            r.grid = e.split > 1 ? format("%.0f tiles x%d split-K", e.tiles, e.split) : format("%.0f tiles", e.tiles);
            r.block = format("%dx%d", e.tile_m, e.tile_n);
            r.waves = e.tiles * e.split / gpu.sms;
        }
    }
}

void on_memory_op(detail::MemoryOp op, size_t bytes) {
    const bool host = op == detail::MemoryOp::HostToDevice || op == detail::MemoryOp::DeviceToHost;
    const char* what = op == detail::MemoryOp::Memset         ? "cudaMemset"
                       : op == detail::MemoryOp::HostToDevice ? "cudaMemcpy host to device"
                       : op == detail::MemoryOp::DeviceToHost ? "cudaMemcpy device to host"
                       : op == detail::MemoryOp::DeviceToDevice ? "cudaMemcpy device to device"
                                                                : "cuRAND fill";
    // bytes through HBM: a copy within the device reads and writes
    const double moved = op == detail::MemoryOp::DeviceToDevice ? 2.0 * bytes : (double)bytes;
    const std::string name = format("%s %s", what, bytes >= (1 << 20) ? format("%.1f MB", bytes / 1048576.0).c_str()
                                                                      : format("%.1f KB", bytes / 1024.0).c_str());
    std::lock_guard<std::mutex> lock(g_mutex);
    Row& r = row(format("%s|%s", g_phase, name.c_str()), name, host ? RowType::HostCopy : RowType::MemoryOp);
    r.launches++;
    r.op_bytes += moved;
    const GpuSpec* gpus[2] = {&h100(), &a100()};
    for (int i = 0; i < 2; ++i) {
        const GpuSpec& gpu = *gpus[i];
        if (host) {
            const double t = bytes / gpu.host_copy_bytes_per_s;
            add_time(r, i, gpu.host_copy_floor_s + t, t, kPcie);
        } else {
            const double t = moved / gpu.hbm_bytes_per_s;
            add_time(r, i, std::max(gpu.launch_floor_s, gpu.launch_gap_s + t), t,
                     gpu.launch_gap_s + t <= gpu.launch_floor_s ? kLaunch : kHbm);
        }
    }
}

const detail::ProfileHooks kHooks{on_launch_begin, on_launch_end, on_block_begin, on_block_end, on_gemm, on_memory_op};

}  // namespace

int blocks_per_sm(const GpuSpec& gpu, unsigned long long threads_per_block, size_t shared_bytes) {
    const unsigned long long warps_threads = (threads_per_block + 31) / 32 * 32;
    long n = std::min<long>(gpu.max_blocks_per_sm, (long)(gpu.max_threads_per_sm / std::max(1ull, warps_threads)));
    if (shared_bytes > 0) n = std::min<long>(n, (long)(gpu.shared_per_sm / (shared_bytes + gpu.shared_reserved_per_block)));
    return (int)std::max(1L, n);
}

double gemm_time(const GpuSpec& gpu, int m, int n, int k, int batch, bool beta_nonzero, bool tf32, GemmEstimate* out) {
    const double flops = 2.0 * m * n * (double)k * batch;
    const double bytes = 4.0 * ((double)m * k + (double)k * n + (double)m * n * (beta_nonzero ? 2 : 1)) * batch;
    const double peak = tf32 ? gpu.tf32_flops_per_s : gpu.fp32_flops_per_s;
    // cuBLAS's heuristics, crudely: the fastest of four tile shapes, the larger on a tie
    const int big = gpu.gemm_tile, small = gpu.gemm_tile / 2;
    const int shapes[4][2] = {{big, big}, {big, small}, {small, big}, {small, small}};
    GemmEstimate best;
    double best_time = 0;
    for (const auto& shape : shapes) {
        GemmEstimate e;
        e.tile_m = shape[0];
        e.tile_n = shape[1];
        e.tiles = std::ceil((double)m / e.tile_m) * std::ceil((double)n / e.tile_n) * batch;
        // too few tiles to fill the SMs: K is cut into slices (split-K), each slice a tile's work on
        // its own SM, the partial results summed in one more pass through memory
        if (e.tiles < gpu.sms)
            e.split = (int)std::max(1.0, std::min(std::floor(gpu.sms / e.tiles), std::floor((double)k / gpu.splitk_min_k)));
        const double partials = e.split > 1 ? 2.0 * 4.0 * (double)m * n * e.split * batch : 0.0;
        const double t_flop = std::ceil(e.tiles * e.split / gpu.sms) * 2.0 * e.tile_m * e.tile_n *
                              std::ceil((double)k / e.split) / (peak / gpu.sms);
        const double t_hbm = (bytes + partials) / gpu.hbm_bytes_per_s;
        e.flop_bound = t_flop >= t_hbm;
        e.minimum = std::max(flops / peak, bytes / gpu.hbm_bytes_per_s);
        const double t = std::max(gpu.cublas_floor_s, gpu.launch_gap_s + std::max(t_flop, t_hbm));
        if (best.tiles == 0 || t < best_time) best = e, best_time = t;
    }
    if (out != nullptr) *out = best;
    return best_time;
}

double kernel_time(const GpuSpec& gpu, const LaunchCounts& c, double* minimum) {
    const KernelTerms k = kernel_terms(gpu, c);
    if (minimum != nullptr) *minimum = k.minimum;
    return std::max(gpu.launch_floor_s, gpu.launch_gap_s + std::max({k.hbm, k.l2, k.latency}));
}

void start() {
    const char* lo = nullptr;
    size_t bytes = 0;
    detail::device_region(&lo, &bytes);
    if (g_read_bits == nullptr) {
        const size_t bitmap_bytes = (bytes >> kSectorShift) / 8 + 8;
        for (uint64_t** bits : {&g_read_bits, &g_write_bits}) {
            void* p = mmap(nullptr, bitmap_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) {
                perror("simt profile: cannot reserve the sector bitmaps");
                abort();
            }
            *bits = (uint64_t*)p;
        }
    }
    g_region_bytes = bytes;
    __atomic_store_n(&g_region_lo, (uintptr_t)lo, __ATOMIC_RELEASE);
    detail::set_profile_hooks(&kHooks);
}

void stop() { detail::set_profile_hooks(nullptr); }

void reset() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_rows.clear();
    g_last = LaunchCounts{};
}

void set_phase(const char* phase) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_phase = phase;
}

LaunchCounts last_launch() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_last;
}

void record(const void* address, unsigned bytes, Access kind) {
    Recorder* r = tls_active;
    if (r == nullptr || bytes == 0) return;
    const uint64_t offset = (uint64_t)((uintptr_t)address - g_region_lo);
    if (offset >= g_region_bytes) return;  // not global memory: a stack (local memory), shared memory, the host
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    r->lanes[thread].push_back(pack(offset, bytes, kind));
}

// ---------------------------------------------------------------------------------------- report
namespace {

std::string number(double x, int decimals = 1) {
    if (x == 0) return "-";
    return format("%.*f", decimals, x);
}

std::string per_step(double launches, int steps) {
    const double x = launches / steps;
    return x == std::floor(x) ? format("%.0f", x) : format("%.2f", x);
}

void print_rows(FILE* out, const std::vector<const Row*>& rows, int steps, double total_h100) {
    fprintf(out,
            "| # | phase | kernel or call | launches/step | grid | block | waves H100 | read MB | written MB | "
            "footprint MB | sectors/request (ideal) | GFLOP | H100 us | share | bound | min H100 us | A100 us |\n"
            "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|\n");
    int index = 0;
    for (const Row* r : rows) {
        const LaunchCounts& s = r->sum;
        const double instructions = (double)(s.instructions[0] + s.instructions[1] + s.instructions[2]);
        const double sectors = (double)(s.sectors[0] + s.sectors[1] + s.sectors[2]);
        const double ideal = (double)(s.ideal_sectors[0] + s.ideal_sectors[1] + s.ideal_sectors[2]);
        double read = (double)(s.bytes[0] + s.bytes[2]), written = (double)(s.bytes[1] + s.bytes[2]);
        double footprint = 32.0 * (double)(s.unique_read_sectors + s.unique_written_sectors);
        const bool op = r->type == RowType::MemoryOp || r->type == RowType::HostCopy;
        if (r->type == RowType::Gemm) read = r->gemm_read, written = r->gemm_written, footprint = read + written;
        if (op) read = 0, written = r->op_bytes, footprint = r->op_bytes;
        int bound = 0;
        for (int b = 1; b < kBounds; ++b)
            if (r->by_bound[b] > r->by_bound[bound]) bound = b;
        const std::string coalescing = instructions > 0 ? format("%.1f (%.1f)", sectors / instructions, ideal / instructions) : "-";
        fprintf(out, "| %d | %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f%% | %s | %.1f | %.1f |\n",
                ++index, r->phase.c_str(), r->name.c_str(), per_step((double)r->launches, steps).c_str(),
                op ? "-" : r->grid.c_str(), op ? "-" : r->block.c_str(), op ? "-" : format("%.2f", r->waves).c_str(),
                number(read / steps / 1e6).c_str(),
                number(written / steps / 1e6).c_str(), number(footprint / steps / 1e6).c_str(), coalescing.c_str(),
                number(r->flops / steps / 1e9).c_str(), r->time[0] / steps * 1e6,
                100.0 * r->time[0] / std::max(total_h100, 1e-30), kBoundNames[bound], r->minimum[0] / steps * 1e6,
                r->time[1] / steps * 1e6);
    }
}

void print_spec(FILE* out, const GpuSpec& g) {
    fprintf(out,
            "- %s: %d SMs; HBM %.2f TB/s; L2 %.2f TB/s (assumed 2.5x HBM); FP32 %.1f TFLOP/s; TF32 tensor %.1f "
            "TFLOP/s (dense); %d threads and %d blocks per SM; %zu KiB shared memory per SM (1 KiB reserved per "
            "block)\n",
            g.name, g.sms, g.hbm_bytes_per_s / 1e12, g.l2_bytes_per_s / 1e12, g.fp32_flops_per_s / 1e12,
            g.tf32_flops_per_s / 1e12, g.max_threads_per_sm, g.max_blocks_per_sm, g.shared_per_sm / 1024);
}

}  // namespace

void print_report(FILE* out, int steps) {
    std::lock_guard<std::mutex> lock(g_mutex);
    steps = std::max(steps, 1);
    std::vector<const Row*> rows;
    double total[2] = {}, minimum[2] = {}, by_bound[kBounds] = {}, flops = 0, gemm_time = 0;
    long kernels = 0, gemms = 0, memory_ops = 0, copies = 0;
    unsigned long long requested = 0, footprint = 0;
    for (const auto& [key, r] : g_rows) {
        rows.push_back(&r);
        for (int g = 0; g < 2; ++g) total[g] += r.time[g], minimum[g] += r.minimum[g];
        for (int b = 0; b < kBounds; ++b) by_bound[b] += r.by_bound[b];
        flops += r.flops;
        if (r.type == RowType::Kernel) {
            kernels += r.launches;
            for (int k = 0; k < kKinds; ++k) requested += r.sum.bytes[k];
            footprint += 32 * (r.sum.unique_read_sectors + r.sum.unique_written_sectors);
        }
        if (r.type == RowType::Gemm) gemms += r.launches, gemm_time += r.time[0];
        if (r.type == RowType::MemoryOp) memory_ops += r.launches;
        if (r.type == RowType::HostCopy) copies += r.launches;
    }
    std::sort(rows.begin(), rows.end(), [](const Row* a, const Row* b) {
        return a->time[0] != b->time[0] ? a->time[0] > b->time[0] : a->order < b->order;
    });
    const GpuSpec& h = h100();
    fprintf(out, "## GPU cost report: %d profiled step%s, figures per step\n\n", steps, steps == 1 ? "" : "s");
    fprintf(out, "Every kernel launch, cuBLAS call and device memory operation of a training step, most expensive first.\n"
                 "read / written MB: bytes the threads asked for (cuBLAS: A, B and C once, C twice with beta != 0); "
                 "footprint MB: distinct 32-byte sectors read plus written (the HBM traffic if the L2 caught every reuse "
                 "within the launch); sectors/request: 32-byte sectors per warp-wide load or store, with the ideal for "
                 "the bytes asked in parentheses; waves: blocks / (%d SMs x resident blocks per SM) (cuBLAS: assumed "
                 "output tiles / SMs); bound: what the model says limits the time.\n\n",
            h.sms);
    print_rows(out, rows, steps, total[0]);

    const double s = 1.0 / steps;
    fprintf(out, "\n## Totals per step\n\n");
    fprintf(out, "- launches: %s (%s kernels, %s cuBLAS calls, %s memsets and cuRAND fills), plus %s host-device copies\n",
            per_step((double)(kernels + gemms + memory_ops), steps).c_str(), per_step((double)kernels, steps).c_str(),
            per_step((double)gemms, steps).c_str(), per_step((double)memory_ops, steps).c_str(),
            per_step((double)copies, steps).c_str());
    fprintf(out, "- estimated step time: H100 %.2f ms, A100 %.2f ms\n", total[0] * s * 1e3, total[1] * s * 1e3);
    fprintf(out, "- sum of the roofline minima: H100 %.2f ms, A100 %.2f ms (estimate / minimum: %.2fx on the H100)\n",
            minimum[0] * s * 1e3, minimum[1] * s * 1e3, total[0] / std::max(minimum[0], 1e-30));
    fprintf(out, "- GEMM: %.1f GFLOP, %.2f ms of the H100 estimate; kernels: %.2f GB asked for, %.2f GB footprint\n",
            flops * s / 1e9, gemm_time * s * 1e3, requested * s / 1e9, footprint * s / 1e9);
    fprintf(out, "- the H100 estimate by what bounds each launch:");
    for (int b = 0; b < kBounds; ++b)
        if (by_bound[b] > 0) fprintf(out, " %s %.2f ms (%.0f%%)", kBoundNames[b], by_bound[b] * s * 1e3, 100 * by_bound[b] / total[0]);
    fprintf(out, "\n");

    fprintf(out, "\n## The ten most expensive on the H100\n\n");
    rows.resize(std::min<size_t>(rows.size(), 10));
    print_rows(out, rows, steps, total[0]);

    fprintf(out, "\n## Assumptions\n\n");
    print_spec(out, h100());
    print_spec(out, a100());
    fprintf(out,
            "- every launch costs at least %.0f us (kernel) or %.0f us (cuBLAS call): host-side issue on one stream, "
            "no CUDA Graph; otherwise %.0f us of gap plus its own time\n"
            "- a kernel's time is the largest of: footprint / HBM bandwidth, sector bytes / L2 bandwidth (both x the "
            "tail factor ceil(blocks/SMs) x SMs / blocks: an SM draws at most its 1/SMs share of the bandwidth), and "
            "the latency of its busiest warp: load instructions x %.1f us / %d loads in flight x rounds of resident "
            "blocks\n"
            "- resident blocks per SM from threads per block and shared memory only (registers unknown here)\n"
            "- cuBLAS: the fastest of %dx%d, %dx%d, %dx%d and %dx%d output tiles, one tile per SM at a time, each at "
            "1/SMs of the FP32 (or TF32, if the handle's math mode says so) peak; with fewer tiles than SMs, K split "
            "into up to SMs/tiles slices of at least %d (split-K), the partial sums written and read once; A, B, C "
            "cross HBM once\n"
            "- host-device copies from pageable memory: %.0f GB/s plus %.0f us; memsets and cuRAND fills run at HBM "
            "bandwidth\n"
            "- roofline minimum: max(footprint / HBM bandwidth, FLOPs / peak), without launch cost, latency or tail\n",
            h.launch_floor_s * 1e6, h.cublas_floor_s * 1e6, h.launch_gap_s * 1e6, h.load_latency_s * 1e6,
            h.loads_in_flight_per_warp, h.gemm_tile, h.gemm_tile, h.gemm_tile, h.gemm_tile / 2, h.gemm_tile / 2, h.gemm_tile,
            h.gemm_tile / 2, h.gemm_tile / 2, h.splitk_min_k,
            h.host_copy_bytes_per_s / 1e9, h.host_copy_floor_s * 1e6);
    fprintf(out,
            "\n## What this model cannot know\n\n"
            "- caches: the footprint assumes the L2 catches all reuse within a launch and none across launches; a "
            "working set larger than the L2 (50 MB H100, 40 MB A100) re-reads HBM, and a small one may stay in L2 "
            "for the next kernel; L1 hits are not credited (sector traffic goes to the L2)\n"
            "- occupancy and registers: no register counts (the ptxas table is not read), no achieved occupancy, no "
            "bank conflicts, no instruction issue limits: the hand-written kernels' arithmetic is not counted at "
            "all\n"
            "- overlap: launches run one after another; no concurrency between kernels, no overlap of the host's "
            "launch cost with the previous kernel beyond the launch floor\n"
            "- divergence: the i-th access of each lane is taken as one warp instruction even when the lanes took "
            "different paths; a float atomicAdd (a load and a compare-and-swap here) counts as two accesses\n"
            "- cuBLAS: its kernel choice (tile shapes, split-K or stream-K), its real efficiency (the model assumes "
            "the peak in every tile) and its memory traffic beyond A, B and C once\n"
            "- the bandwidth share: one SM alone can draw more than 1/SMs of HBM, so grids far below one wave are "
            "estimated pessimistically; the latency term is a rough floor for warps that loop over many loads\n");
}

}  // namespace simt::profile
