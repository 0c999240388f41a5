// simt/simt.h: the SIMT execution layer. Runs CUDA kernel source on the CPU (g++).
//
// The kernel headers are plain CUDA. For the g++ build the Makefile first copies every source
// through simt/cuda_to_cpp (see simt/cuda_to_cpp.h), which rewrites CUDA's two non-C++ spellings
// and nothing else: kernel<<<grid, block, shared_bytes, stream>>>(args) becomes
// ::simt::launch("kernel", kernel, grid, block, shared_bytes, stream)(args) and
// `extern __shared__ T name[];` becomes `T* name = ::simt::dynamic_shared<T>();`, with #line
// directives so that errors and __FILE__ / __LINE__ name the original file and line. Everything
// else (qualifiers, built-in variables, intrinsics, runtime, cuBLAS, cuRAND) is declared here.
//
// How it works, in one paragraph: every CUDA thread of a block is a fiber (a tiny coroutine with
// its own stack, Boost.Context's fcontext; POSIX ucontext with -DSIMT_FIBERS_UCONTEXT). A block
// runs entirely on one OS thread: its fibers take turns in rounds, each running until it finishes
// or reaches a __syncthreads() or a warp operation (shuffle, vote, __syncwarp), where it parks and
// switches straight to the next fiber of the round. When the round is over and every live thread
// of the block waits at the same barrier, they are all released into the next round; when every
// lane a warp operation names has arrived, the values are exchanged and those lanes are released.
// Nothing ever waits forever: when no thread can make progress the block fails with a message
// that names the kernel and the waiting call sites (barrier / warp divergence). Blocks are
// spread over N OS worker threads (env SIMT_THREADS, default 1, which makes every result
// bit-for-bit repeatable). Device memory is one big reserved virtual region carved up by our own
// cudaMalloc; cuBLAS is forwarded to OpenBLAS and cuRAND is libcurand's host generator.
//
// The layer is also a checker: it reports (loudly, with the kernel's name and the source line)
// launch configurations a GPU would reject, barriers and shuffles not reached by every thread,
// host pointers passed to kernels, host code touching device memory (when protection is on),
// memory nobody wrote (cudaMalloc and dynamic shared memory start filled with 0xFF bytes, i.e.
// float NaN / int -1) and missing barriers (SIMT_SHUFFLE=<seed> runs threads in a random order).
//
// What kernels cost on the CPU layer. The kernel headers describe how each kernel maps onto a GPU;
// these are the reasons behind some of their launch shapes (numbers from `make bench-simt` on the
// project's 2-core machine, README "Speed"; earlier versions of the layer cost about twice as much):
//   - A CUDA thread is a fiber: 24-30 ns to start and finish, so a thread should do real work. The
//     elementwise kernels give each thread 32 to 64 elements, the gradient-norm partials ~256.
//   - A barrier or a shuffle parks the fiber and switches to the next one: ~21 ns per thread for a
//     __syncthreads, 25-28 ns per lane for a shuffle. A butterfly over a full warp is 5 shuffles x
//     32 lanes, which is why the row kernels use 4 to 32 threads per row (threads_per_row in
//     common.cuh): at C = 128 a full warp per row made the LayerNorm forward ~25x slower here
//     than 4 lanes per row.
//   - The threads of a block run one after another on one core, so a block that owns a contiguous
//     tile (the elementwise kernels' 32 * blockDim elements, the column-sum kernels' 32 columns)
//     keeps it in L1; a grid-stride loop over the whole tensor would refetch each cache line once
//     per thread that shares it and is several times slower here (on a GPU both are coalesced).
//   - Transcendentals are libm's: tanhf costs 3-4 times an expf, so GELU is computed through
//     0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) (on a GPU the two are within a few instructions).
//   - Overall, a kernel whose threads each do one element and synchronise costs 60-80x a plain
//     loop; kernels that give each thread a row segment or a tile come much closer to loops.
//
// Never include a CUDA header in this build: everything CUDA-shaped the project uses is declared
// here, with the real numeric values of the enums.
#pragma once

#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

// =====================================================================================
// 1. Qualifiers
// =====================================================================================
// On the CPU every function is host code, so the execution-space qualifiers vanish. Kernels live
// in headers that several translation units include; `inline` keeps them one definition each.
#define __global__ inline
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory: the source rewrite (simt/cuda_to_cpp.h) turns every `__shared__ T name[N];`
// inside a function into a reference to the block's own copy, ::simt::static_shared<T[N]>() below,
// which starts every block as 0xFF bytes (NaN / -1) like dynamic shared memory. This macro is only
// the fallback for a source that did not go through the rewrite: one copy per OS thread (a block
// runs on one OS thread, so one copy per block), not poisoned.
#define __shared__ static thread_local
// __restrict__ is understood by g++ natively.

// =====================================================================================
// 2. Vector types and the built-in variables
// =====================================================================================
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
// The small vector types with CUDA's alignment (float4 loads are 16-byte loads on a GPU).
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// Set by the scheduler: blockIdx/blockDim/gridDim when a block starts on a worker thread,
// threadIdx every time a fiber is resumed. `constinit` tells g++ there is no dynamic
// initializer, so reading them is a single %fs-relative load (no TLS wrapper call).
extern thread_local constinit uint3 threadIdx;
extern thread_local constinit uint3 blockIdx;
extern thread_local constinit dim3 blockDim;
extern thread_local constinit dim3 gridDim;
inline constexpr int warpSize = 32;

// =====================================================================================
// 3. Runtime types and error codes (real numeric values from driver_types.h)
// =====================================================================================
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorAssert = 710,
    cudaErrorIllegalInstruction = 715,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

// Streams and events exist so that code written for a GPU compiles; everything here executes
// synchronously, in call order.
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

// The subset of cudaDeviceProp the project reads (not ABI-compatible with the real struct).
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;       // 48 KiB: the default dynamic shared memory limit
    size_t sharedMemPerBlockOptin;  // 163 KiB: the sm_80 limit after cudaFuncSetAttribute
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int multiProcessorCount;        // = SIMT worker threads
    int major, minor;               // reported as 8.0
};

// =====================================================================================
// 4. The layer's own API (namespace simt)
// =====================================================================================
namespace simt {

// Limits the launch checks enforce (those of an sm_80 GPU).
inline constexpr int kMaxThreadsPerBlock = 1024;
inline constexpr size_t kDefaultDynamicShared = 48 * 1024;
inline constexpr size_t kMaxDynamicSharedOptin = 163 * 1024;
inline constexpr size_t kMaxStaticShared = 48 * 1024;  // static __shared__ per block (a compile error on a GPU)

// Number of OS threads that run blocks (default: env SIMT_THREADS, else 1).
void set_worker_threads(int n);
int worker_threads();
// Threads OpenBLAS uses for the forwarded cuBLAS calls (its own default: every core, or env
// OPENBLAS_NUM_THREADS), and the CPUs this process may run on (its affinity mask).
void set_blas_threads(int n);
int available_cpus();
// Shuffled mode (0 = off; default: env SIMT_SHUFFLE): the run order of a block's threads, at the
// start and after every barrier, is a permutation seeded by (seed, block index).
void set_shuffle(unsigned long long seed);
unsigned long long shuffle_seed();
// Strict synccheck (default on; env SIMT_STRICT_SYNC=0 turns it off): a __syncthreads that some
// thread of the block never reaches because it has exited is an error, as the CUDA programming
// guide makes it undefined (a barrier in conditional code must be reached by the whole block).
// Off, exited threads do not count (what current GPUs happen to do).
void set_strict_sync(bool on);
bool strict_sync();
// The resource table of the nvcc check (env SIMT_RESOURCES=<file>, written by simt/ptxas_gate):
// per kernel, its registers per thread and static shared memory on sm_80 / sm_90. When loaded,
// every launch of a kernel in the table is checked as a GPU would check it: registers x threads
// within the SM's 65,536 and static + dynamic shared memory within the launch's limit
// (cudaErrorLaunchOutOfResources / cudaErrorInvalidValue otherwise). Returns the kernels read.
int load_resource_table(const char* path);
// Launch log (env SIMT_LAUNCH_LOG=<file>): every distinct (kernel, threads per block, dynamic
// shared bytes, dynamic shared limit) this process launches is appended once, as a tab-separated
// line; simt/ptxas_gate reads it to check each kernel's largest launch against ptxas's numbers.
void set_launch_log(const char* path);
// True in the ThreadSanitizer build (racecheck): every CUDA thread is a TSan fiber.
bool racecheck();
// Device memory protection (default: env SIMT_PROTECT=1, else off): outside launches, memcpy /
// memset and cuBLAS / cuRAND calls the device region is PROT_NONE, so host code that dereferences
// a device pointer dies with a one-line message naming the allocation.
void set_device_memory_protection(bool on);
bool device_memory_protection();
// True for any address inside the reserved device region (live or freed).
bool is_device_pointer(const void* p);
// The message of the most recent error the layer reported (also printed to stderr once).
// Errors are process-wide (CUDA keeps them per host thread; this project launches from one).
// A kernel failure (trap, exception, divergence) is returned once by cudaGetLastError and also
// by the next synchronizing call (cudaDeviceSynchronize, cudaMemcpy, ...) unless read before;
// it is not sticky: later launches work.
const char* last_error_message();
// "CPU (SIMT layer, N worker threads)"
const char* backend_name();
void reset_counters();
long device_to_host_copies();
long synchronizations();

// Device-side failure: abandons the block; the launch reports cudaErrorLaunchFailure.
[[noreturn]] void trap(const char* why = "trap", std::source_location loc = std::source_location::current());
inline void device_assert(bool ok, const char* what = "device_assert",
                          std::source_location loc = std::source_location::current()) {
    if (!ok) trap(what, loc);
}

// While one of these is alive the device region is readable/writable by host code (nested OK).
// The layer holds one during launches, memcpy/memset and library calls.
struct DeviceAccess {
    DeviceAccess();
    ~DeviceAccess();
    DeviceAccess(const DeviceAccess&) = delete;
    DeviceAccess& operator=(const DeviceAccess&) = delete;
};

namespace detail {
// ---- barriers and warp operations (implemented in simt.cpp; they switch fibers) ----
enum class BarrierOp : unsigned char { Sync, Count, And, Or };
int block_barrier(BarrierOp op, int predicate, const std::source_location& loc);

enum class WarpOp : unsigned char {
    Sync, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All,
    ReduceAddU, ReduceMinU, ReduceMaxU, ReduceMinI, ReduceMaxI, ReduceAnd, ReduceOr, ReduceXor
};
// Parks the calling lane until every lane of `mask` arrived at the same operation; returns this
// lane's result (the shuffled value's bits, the ballot, ...).
unsigned long long warp_op(WarpOp op, unsigned mask, unsigned long long value, int arg, int width,
                           const std::source_location& loc);
unsigned active_mask();

// The current block's dynamic shared memory (16-byte aligned, 0xFF-filled at block start).
extern thread_local constinit unsigned char* dynamic_shared_base;
// The current block's copy of the static __shared__ variable declared at `site` (one per call site
// and type): allocated and filled with 0xFF bytes by the first thread that reaches the declaration
// in each block; later threads of the block get the same address.
void* static_shared_slot(const void* site, const void* type, size_t bytes, size_t alignment);

// ---- launch ----
struct Launch {
    const char* name;
    const void* kernel;            // identifies the kernel for cudaFuncSetAttribute
    dim3 grid, block;
    size_t shared_bytes;
    void (*thunk)(void* bound);    // runs one CUDA thread: calls kernel(args...)
    void* bound;                   // the kernel pointer and its converted arguments
};
// Checks the configuration (grid/block/shared memory); reports the error and returns false if bad.
bool validate_launch(const Launch& launch);
// Checks that a pointer argument points into device memory; reports and returns false if not.
bool check_pointer_argument(const char* kernel, int index, const void* p);
// Runs every block of the grid; returns when all are done (or one failed).
void run_launch(const Launch& launch);

// ---- profiling hooks (simt/profile.h, the GPU cost report) ----
// The layer calls these at every launch, block, cuBLAS call and device memory operation while a
// profiler has installed them; otherwise the pointer is null and the cost is one load per block.
struct GemmCall {
    const char* call;              // "cublasSgemm" / "cublasSgemmStridedBatched"
    bool transa, transb;           // CUBLAS_OP_T
    int m, n, k, batch;
    bool beta_nonzero;             // C is read as well as written
    bool tf32;                     // the handle's math mode allows TF32 tensor cores
    std::source_location site;     // the call in the project's source
};
enum class MemoryOp : unsigned char { Memset, HostToDevice, DeviceToHost, DeviceToDevice, RandomFill };
struct ProfileHooks {
    void (*launch_begin)(const Launch& launch);   // on the launching thread, before any block runs
    void (*launch_end)(const Launch& launch);     // on the launching thread, after every block finished
    void (*block_begin)(int threads);             // on the worker thread that runs the block
    void (*block_end)(size_t static_shared_bytes);
    void (*gemm)(const GemmCall& call);
    void (*memory_op)(MemoryOp op, size_t bytes);
};
void set_profile_hooks(const ProfileHooks* hooks);
// The reserved device region [lo, lo + bytes): every global memory address lies inside it.
void device_region(const char** lo, size_t* bytes);

template <class T>
bool check_argument(const char* kernel, int index, const T& value) {
    if constexpr (std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>) {
        if (value != nullptr) return check_pointer_argument(kernel, index, (const void*)value);
    }
    (void)kernel, (void)index, (void)value;
    return true;
}
}  // namespace detail

// kernel<<<grid, block, shared_bytes, stream>>>(args...) lands here: the Makefile's source rewrite
// (simt/cuda_to_cpp.h) turns it into ::simt::launch("kernel", kernel, grid, block, shared_bytes,
// stream)(args...). launch() takes the configuration and returns the launch; calling it with the
// arguments converts them to the kernel's parameter types once (as a CUDA launch does), checks
// them, and every CUDA thread then calls kernel(args...) with its own copy. Synchronous: returns
// when every block is done.
template <class... Params>
struct KernelLaunch {
    const char* name;
    void (*kernel)(Params...);
    dim3 grid, block;
    size_t shared_bytes;

    template <class... Args>
    void operator()(Args&&... args) const {
        static_assert(sizeof...(Params) == sizeof...(Args), "kernel launch: wrong number of kernel arguments");
        struct Bound {
            void (*kernel)(Params...);
            std::tuple<std::decay_t<Params>...> args;
        };
        Bound bound{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
        detail::Launch launch{name, (const void*)kernel, grid, block, shared_bytes,
                              [](void* b) { std::apply(static_cast<Bound*>(b)->kernel, static_cast<Bound*>(b)->args); },
                              &bound};
        if (!detail::validate_launch(launch)) return;
        bool pointers_ok = std::apply(
            [&](const auto&... a) {
                int index = 0;
                bool ok = true;
                ((ok = detail::check_argument(name, index++, a) && ok), ...);
                return ok;
            },
            bound.args);
        if (!pointers_ok) return;
        detail::run_launch(launch);
    }
};

// The <<<grid, block[, shared_bytes[, stream]]>>> of a launch. Streams are accepted and ignored
// (everything runs in call order).
template <class... Params>
[[nodiscard]] KernelLaunch<Params...> launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                                             size_t shared_bytes = 0, cudaStream_t stream = 0) {
    (void)stream;
    return KernelLaunch<Params...>{name, kernel, grid, block, shared_bytes};
}

// `extern __shared__ [__align__(A)] T name[];` becomes `T* name = ::simt::dynamic_shared<T, A>();`:
// the block's dynamic shared memory (the launch's shared_bytes, 16-byte aligned and filled with
// 0xFF bytes when the block starts), viewed as T[]. Every such array of a kernel starts at the same
// address, as on a GPU.
template <class T, size_t Alignment = alignof(T)>
inline T* dynamic_shared() {
    static_assert(Alignment <= 16 && alignof(T) <= 16, "dynamic shared memory is 16-byte aligned");
    return reinterpret_cast<T*>(detail::dynamic_shared_base);
}

// `__shared__ [__align__(A)] T name[N]...;` becomes `T (&name)[N]... = ::simt::static_shared<T[N]..., A>();`
// (a scalar `__shared__ T name;` becomes `T& name = ...`): the block's own copy, 0xFF bytes when
// the block starts (initcheck: a read of an element nobody wrote gives NaN / -1, not what the
// previous block left). The call site identifies the variable (libstdc++'s source_location is one
// pointer to a per-site constant), the type tells apart template instantiations.
template <class T, size_t Alignment = alignof(T)>
inline T& static_shared(std::source_location site = std::source_location::current()) {
    static_assert(Alignment <= 16 && std::is_trivially_copyable_v<T>, "static shared memory: trivially copyable, at most 16-byte aligned");
    static constexpr char type_tag = 0;
    const void* key;
    static_assert(sizeof site == sizeof key, "libstdc++'s source_location is one pointer");
    std::memcpy(&key, &site, sizeof key);
    return *static_cast<T*>(
        detail::static_shared_slot(key, &type_tag, sizeof(T), Alignment > alignof(T) ? Alignment : alignof(T)));
}
}  // namespace simt

// =====================================================================================
// 5. Barriers, warp operations (CUDA semantics; the source_location identifies the call site)
// =====================================================================================
// All live (not exited) threads of the block must arrive at the same __syncthreads() call site.
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    simt::detail::block_barrier(simt::detail::BarrierOp::Sync, 0, loc);
}
inline int __syncthreads_count(int predicate, std::source_location loc = std::source_location::current()) {
    return simt::detail::block_barrier(simt::detail::BarrierOp::Count, predicate, loc);
}
inline int __syncthreads_and(int predicate, std::source_location loc = std::source_location::current()) {
    return simt::detail::block_barrier(simt::detail::BarrierOp::And, predicate, loc);
}
inline int __syncthreads_or(int predicate, std::source_location loc = std::source_location::current()) {
    return simt::detail::block_barrier(simt::detail::BarrierOp::Or, predicate, loc);
}

inline constexpr unsigned kFullMask = 0xffffffffu;

// Every lane named in `mask` must reach a __syncwarp (any call site, as on sm_70+).
inline void __syncwarp(unsigned mask = kFullMask, std::source_location loc = std::source_location::current()) {
    simt::detail::warp_op(simt::detail::WarpOp::Sync, mask, 0, 0, 32, loc);
}
inline unsigned __activemask() { return simt::detail::active_mask(); }

namespace simt::detail {
// Values travel between lanes as their bit pattern (a 64-bit shuffle is two 32-bit ones on a GPU).
template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle: type must be at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
inline T from_bits(unsigned long long bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}
template <class T>
inline T shuffle(WarpOp op, unsigned mask, T var, int arg, int width, const std::source_location& loc) {
    return from_bits<T>(warp_op(op, mask, to_bits(var), arg, width, loc));
}
}  // namespace simt::detail

// Shuffles follow PTX shfl.sync exactly: `width` splits the warp into segments; a source lane
// outside the caller's segment (up/down/xor) returns the caller's own value; idx wraps modulo
// width. Reading a lane that is not in `mask` gives all-ones bits (undefined on a GPU).
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                     std::source_location loc = std::source_location::current()) {
    return simt::detail::shuffle(simt::detail::WarpOp::ShflIdx, mask, var, srcLane, width, loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                        std::source_location loc = std::source_location::current()) {
    return simt::detail::shuffle(simt::detail::WarpOp::ShflUp, mask, var, (int)delta, width, loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                          std::source_location loc = std::source_location::current()) {
    return simt::detail::shuffle(simt::detail::WarpOp::ShflDown, mask, var, (int)delta, width, loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         std::source_location loc = std::source_location::current()) {
    return simt::detail::shuffle(simt::detail::WarpOp::ShflXor, mask, var, laneMask, width, loc);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::Ballot, mask, predicate != 0, 0, 32, loc);
}
inline int __any_sync(unsigned mask, int predicate, std::source_location loc = std::source_location::current()) {
    return (int)simt::detail::warp_op(simt::detail::WarpOp::Any, mask, predicate != 0, 0, 32, loc);
}
inline int __all_sync(unsigned mask, int predicate, std::source_location loc = std::source_location::current()) {
    return (int)simt::detail::warp_op(simt::detail::WarpOp::All, mask, predicate != 0, 0, 32, loc);
}
// sm_80 warp reductions.
inline unsigned __reduce_add_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceAddU, mask, value, 0, 32, loc);
}
inline int __reduce_add_sync(unsigned mask, int value, std::source_location loc = std::source_location::current()) {
    return (int)(unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceAddU, mask, (unsigned)value, 0, 32, loc);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceMinU, mask, value, 0, 32, loc);
}
inline int __reduce_min_sync(unsigned mask, int value, std::source_location loc = std::source_location::current()) {
    return (int)(unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceMinI, mask, (unsigned)value, 0, 32, loc);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceMaxU, mask, value, 0, 32, loc);
}
inline int __reduce_max_sync(unsigned mask, int value, std::source_location loc = std::source_location::current()) {
    return (int)(unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceMaxI, mask, (unsigned)value, 0, 32, loc);
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceAnd, mask, value, 0, 32, loc);
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceOr, mask, value, 0, 32, loc);
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned value, std::source_location loc = std::source_location::current()) {
    return (unsigned)simt::detail::warp_op(simt::detail::WarpOp::ReduceXor, mask, value, 0, 32, loc);
}

// Memory fences: blocks run on several OS threads, so these are real fences. Under
// ThreadSanitizer (racecheck), which does not model stand-alone fences, __threadfence is a release
// and an acquire on one object: the pattern "write, __threadfence, atomic flag" / "atomic flag,
// __threadfence, read" is then ordered, while the same pattern without the fences is reported.
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace simt::detail {
inline char tsan_fence_object;
}
inline void __threadfence() {
    __tsan_release(&simt::detail::tsan_fence_object);
    __tsan_acquire(&simt::detail::tsan_fence_object);
    __asm__ volatile("mfence" ::: "memory");
}
#else
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#endif
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap(std::source_location loc = std::source_location::current()) {
    simt::trap("__trap()", loc);
}

// =====================================================================================
// 6. Atomics: real ones (blocks of one grid run on several OS threads); relaxed, like CUDA's.
// =====================================================================================
#define SIMT_ATOMIC_INT_OPS(T)                                                                        \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }               \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }           \
    inline T atomicCAS(T* p, T compare, T v) {                                                        \
        __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);       \
        return compare;                                                                               \
    }                                                                                                 \
    inline T atomicMax(T* p, T v) {                                                                   \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                 \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                   \
    }                                                                                                 \
    inline T atomicMin(T* p, T v) {                                                                   \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                 \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                   \
    }
SIMT_ATOMIC_INT_OPS(int)
SIMT_ATOMIC_INT_OPS(unsigned int)
SIMT_ATOMIC_INT_OPS(long long)
SIMT_ATOMIC_INT_OPS(unsigned long long)
#undef SIMT_ATOMIC_INT_OPS

// Floating-point atomics are a compare-and-swap loop on the bit pattern (like sm_5x's double).
template <class F>
inline F simt_atomic_float_add(F* p, F v) {
    return std::atomic_ref<F>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline float atomicAdd(float* p, float v) { return simt_atomic_float_add(p, v); }
inline double atomicAdd(double* p, double v) { return simt_atomic_float_add(p, v); }
inline float atomicExch(float* p, float v) { return std::atomic_ref<float>(*p).exchange(v, std::memory_order_relaxed); }

// =====================================================================================
// 7. Math and bit intrinsics
// =====================================================================================
// Device code calls min/max unqualified on ints and floats; g++ only has std::min/std::max.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin((double)a, b); }
inline double max(float a, double b) { return fmax((double)a, b); }
inline double min(double a, float b) { return fmin(a, (double)b); }
inline double max(double a, float b) { return fmax(a, (double)b); }

// Fast-math intrinsics: on the CPU they are the accurate functions (a GPU is less accurate).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
template <class T>
inline T __ldg(const T* p) { return *p; }
#ifndef CUDART_INF_F
#define CUDART_INF_F __int_as_float(0x7f800000)
#define CUDART_NAN_F __int_as_float(0x7fffffff)
#define CUDART_INF __longlong_as_double(0x7ff0000000000000LL)
#endif

// =====================================================================================
// 8. Runtime API subset (synchronous; device memory is a region of this process)
// =====================================================================================
cudaError_t cudaMalloc(void** ptr, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** ptr, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(ptr), bytes); }
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);  // plain (page-aligned) host memory
template <class T>
inline cudaError_t cudaMallocHost(T** ptr, size_t bytes) { return cudaMallocHost(reinterpret_cast<void**>(ptr), bytes); }
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaDeviceReset();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaGetDeviceCount(int* count);  // 1: the CPU
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
// Raising cudaFuncAttributeMaxDynamicSharedMemorySize (up to 163 KiB) lets that kernel launch
// with more than 48 KiB of dynamic shared memory, as on a GPU.
cudaError_t simt_func_set_attribute(const void* kernel, cudaFuncAttribute attribute, int value);
template <class F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attribute, int value) {
    return simt_func_set_attribute((const void*)kernel, attribute, value);
}

// Counters the tests read (cuda.h's nvcc half defines them as -1).
inline long simt_device_to_host_copies() { return simt::device_to_host_copies(); }
inline long simt_synchronizations() { return simt::synchronizations(); }

// =====================================================================================
// 9. cuBLAS subset, forwarded to OpenBLAS (column-major, pointer mode host)
// =====================================================================================
enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum cublasMath_t {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
};
typedef struct cublasContext* cublasHandle_t;
cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
// The math mode is kept (the cost report reads it); the arithmetic is FP32 OpenBLAS whatever it says.
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
// `site` (the caller's line, filled in by the default argument) names the call in the cost report.
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc,
                           std::source_location site = std::source_location::current());
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb, long long strideB,
                                         const float* beta, float* C, int ldc, long long strideC, int batchCount,
                                         std::source_location site = std::source_location::current());

// =====================================================================================
// 10. cuRAND: the real libcurand host generator (declared here: curand.h drags in CUDA headers)
// =====================================================================================
extern "C" {
typedef struct curandGenerator_st* curandGenerator_t;
enum curandStatus {
    CURAND_STATUS_SUCCESS = 0,
    CURAND_STATUS_VERSION_MISMATCH = 100,
    CURAND_STATUS_NOT_INITIALIZED = 101,
    CURAND_STATUS_ALLOCATION_FAILED = 102,
    CURAND_STATUS_TYPE_ERROR = 103,
    CURAND_STATUS_OUT_OF_RANGE = 104,
    CURAND_STATUS_LENGTH_NOT_MULTIPLE = 105,
    CURAND_STATUS_DOUBLE_PRECISION_REQUIRED = 106,
    CURAND_STATUS_LAUNCH_FAILURE = 201,
    CURAND_STATUS_PREEXISTING_FAILURE = 202,
    CURAND_STATUS_INITIALIZATION_FAILED = 203,
    CURAND_STATUS_ARCH_MISMATCH = 204,
    CURAND_STATUS_INTERNAL_ERROR = 999,
};
typedef enum curandStatus curandStatus_t;
enum curandRngType {
    CURAND_RNG_TEST = 0,
    CURAND_RNG_PSEUDO_DEFAULT = 100,
    CURAND_RNG_PSEUDO_XORWOW = 101,
    CURAND_RNG_PSEUDO_MRG32K3A = 121,
    CURAND_RNG_PSEUDO_MTGP32 = 141,
    CURAND_RNG_PSEUDO_MT19937 = 142,
    CURAND_RNG_PSEUDO_PHILOX4_32_10 = 161,
};
typedef enum curandRngType curandRngType_t;
// These come straight from libcurand (or from the built-in fallback under -DSIMT_NO_CURAND).
curandStatus_t curandCreateGeneratorHost(curandGenerator_t* generator, curandRngType_t type);
curandStatus_t curandDestroyGenerator(curandGenerator_t generator);
curandStatus_t curandSetPseudoRandomGeneratorSeed(curandGenerator_t generator, unsigned long long seed);
curandStatus_t curandSetGeneratorOffset(curandGenerator_t generator, unsigned long long offset);
}
// The generate calls write into device memory: these C++ wrappers (simt.cpp) check the output
// range, lift device-memory protection for the call and forward to libcurand's C functions.
curandStatus_t curandGenerateNormal(curandGenerator_t generator, float* out, size_t n, float mean, float stddev);
curandStatus_t curandGenerateUniform(curandGenerator_t generator, float* out, size_t n);

// The one line that differs between builds (see simt/cuda.h): the host generator on the CPU.
inline curandStatus_t create_generator(curandGenerator_t* generator, curandRngType_t type) {
    return curandCreateGeneratorHost(generator, type);
}
