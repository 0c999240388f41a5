// simt/profile.h: the GPU cost report. Counts what every kernel launch, cuBLAS call and device
// memory operation of the SIMT layer would move and compute on a GPU, and turns the counts into an
// estimated time on an H100 and an A100 with a stated, simple model. No GPU is involved: this is
// how the project sees GPU costs without one (make gpu-profile, bench/gpu_profile.cpp).
//
// What is counted, and how:
//   - Global memory accesses of the kernels. The profile build compiles the kernel code with g++'s
//     ThreadSanitizer instrumentation (-fsanitize=thread, only at compile time: the runtime is
//     ours, simt/profile_hooks.cpp), which calls __tsan_read4(addr), __tsan_write4(addr), ... before
//     every load and store and turns every atomic into a call. Those land in record() below. An
//     access counts when its address lies in the layer's device region (cudaMalloc memory): shared
//     memory and the fibers' stacks (local memory) live elsewhere and are left out. (The kernel
//     AddressSanitizer's callbacks, which issue 11 suggested, merge the check of a read-modify-write
//     into one: `x[i] += y` is seen as a load only. TSan's pass reports the load and the store.)
//   - Warp instructions. The i-th global access of each of the 32 lanes of a warp (consecutive
//     linear thread indices of a block, as on a GPU) form one warp instruction, separately for
//     reads, writes and atomics; its cost is the number of distinct 32-byte sectors its lanes touch
//     (a fully coalesced 4-byte load of 32 lanes: 4 sectors; lanes 32 bytes apart: 32 sectors).
//     Lanes that diverge (different numbers of accesses) are matched by position all the same.
//   - The launch's footprint: the distinct sectors it reads and writes (one bit per sector of the
//     device region), i.e. what must cross HBM at least once if the L2 caught every reuse.
//   - cuBLAS calls by their shapes (FLOPs = 2 m n k per batch entry; bytes = A, B and C once, C
//     twice when beta != 0), with the handle's math mode (FP32 unless TF32 was set).
//   - cudaMemset, host<->device copies and cuRAND fills by their sizes.
//
// The time model, per launch (constants in GpuSpec, printed with every report):
//   kernel  t = max(launch floor, launch gap + max(t_hbm, t_l2, t_latency))
//           t_hbm     = footprint bytes / HBM bandwidth x tail
//           t_l2      = sector bytes of all warp instructions / L2 bandwidth x tail
//           t_latency = the longest chain of load instructions of one warp x latency / loads in
//                       flight per warp x ceil(blocks / (SMs x resident blocks per SM))
//           tail      = ceil(blocks / SMs) x SMs / blocks: an SM draws at most 1/SMs of the
//                       bandwidth, so a grid of 12 blocks gets 12/132 of an H100's
//   cuBLAS  t = max(cuBLAS floor, launch gap + max(t_flop, t_hbm)), t_flop = waves of output
//           tiles (one per SM at a time) x a tile's FLOPs at one SM's share of the peak, with the
//           fastest of four tile shapes (128 or 64 on each side: cuBLAS's choice, crudely);
//           a GEMM with fewer tiles than SMs splits K (split-K) to fill them, its partial sums
//           written and read once more
//   minimum (the roofline) = max(footprint bytes / HBM bandwidth, FLOPs / peak), no latency, no tail
// Arithmetic of the hand-written kernels is not counted: they are modelled as memory-bound.
#pragma once
#include <cstddef>
#include <cstdio>

namespace simt::profile {

// The numbers of one GPU that the model uses. Datasheet figures where there is one; the rest are
// assumptions (see README "GPU cost report"); all are printed with the report.
struct GpuSpec {
    const char* name;
    int sms;
    double hbm_bytes_per_s;
    double l2_bytes_per_s;            // assumption: 2.5x HBM
    double fp32_flops_per_s;          // FP32 on the CUDA cores (no tensor cores)
    double tf32_flops_per_s;          // TF32 tensor cores, dense
    int max_threads_per_sm, max_blocks_per_sm;
    size_t shared_per_sm;             // shared memory per SM available to blocks
    size_t shared_reserved_per_block; // the driver's 1 KiB per block
    double launch_floor_s;            // a kernel launch costs at least this (host issue, no CUDA Graph)
    double cublas_floor_s;            // a cuBLAS call costs at least this (its host side, one or two kernels)
    double launch_gap_s;              // between two dependent launches on one stream
    double load_latency_s;            // a global load that misses in L1
    int loads_in_flight_per_warp;     // independent loads a warp keeps in flight (unrolled loops)
    int gemm_tile;                    // cuBLAS output tiles: gemm_tile or half of it on each side
    int splitk_min_k;                 // split-K slices are at least this deep
    double host_copy_bytes_per_s;     // pageable host memory over PCIe
    double host_copy_floor_s;
};
const GpuSpec& h100();
const GpuSpec& a100();

// What one kernel launch did, as counted (kind: 0 reads, 1 writes, 2 atomics).
struct LaunchCounts {
    unsigned long long blocks = 0, threads_per_block = 0;
    size_t shared_bytes = 0;                       // dynamic + the largest static use of a block
    unsigned long long instructions[3] = {};       // warp instructions
    unsigned long long bytes[3] = {};              // bytes the lanes asked for
    unsigned long long sectors[3] = {};            // 32-byte sectors of those warp instructions
    unsigned long long ideal_sectors[3] = {};      // ceil(bytes / 32) per warp instruction
    unsigned long long unique_read_sectors = 0;    // the footprint
    unsigned long long unique_written_sectors = 0;
    unsigned long long longest_warp_loads = 0;     // load (and atomic) instructions of the busiest warp
};

// Installs the layer's hooks and starts counting (the instrumentation records only from now on).
void start();
// Removes the hooks; the counts stay until reset().
void stop();
void reset();
// The label of the launches that follow ("forward", "backward", ...), a string literal.
void set_phase(const char* phase);
// The counters of the most recent kernel launch (for tests and self-checks).
LaunchCounts last_launch();
// The estimated time of a launch with these counts on `gpu`, and its roofline minimum (seconds).
double kernel_time(const GpuSpec& gpu, const LaunchCounts& c, double* minimum = nullptr);
// The estimated time of a cuBLAS SGEMM (batch of m x n x k products) on `gpu`, and how it got there.
struct GemmEstimate {
    int tile_m = 0, tile_n = 0, split = 1;  // assumed output tile and split-K slices
    double tiles = 0;                       // output tiles over the batch
    double minimum = 0;                     // roofline minimum: max(FLOPs / peak, A + B + C bytes / HBM)
    bool flop_bound = true;
};
double gemm_time(const GpuSpec& gpu, int m, int n, int k, int batch, bool beta_nonzero, bool tf32,
                 GemmEstimate* estimate = nullptr);
// Resident blocks per SM (threads and shared memory only: registers are unknown here).
int blocks_per_sm(const GpuSpec& gpu, unsigned long long threads_per_block, size_t shared_bytes);

// The report: every kernel and call per step (totals divided by `steps`), the ten most expensive,
// the totals and the model's assumptions and blind spots.
void print_report(FILE* out, int steps);

// One global memory access of the running CUDA thread (the instrumentation hooks call this; a
// test may call it directly). Outside a profiled block, or outside device memory, it does nothing.
enum class Access : unsigned char { Read = 0, Write = 1, Atomic = 2 };
void record(const void* address, unsigned bytes, Access kind);

}  // namespace simt::profile
