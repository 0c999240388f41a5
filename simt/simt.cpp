// simt/simt.cpp: the SIMT execution layer (see simt.h for the overview).
//
// Layout of this file:
//   1. errors and counters         5. the block scheduler (barriers, warp operations)
//   2. device memory               6. launches and the worker pool
//   3. the SIGSEGV reporter        7. runtime API
//   4. fibers and stacks           8. cuBLAS (OpenBLAS)     9. cuRAND
#include "simt/simt.h"

#include <cblas.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define SIMT_ASAN 0
#endif

#ifdef SIMT_FIBERS_UCONTEXT
#include <ucontext.h>
#else
#include <boost/context/detail/fcontext.hpp>
#endif

// Racecheck: the ThreadSanitizer build (make test-tsan). The kernels and tests are compiled with
// -fsanitize=thread; this file is not (its scheduler state is shared by the fibers of a block in
// ways TSan cannot see as ordered) but tells TSan, through its annotation interface, what a GPU
// orders: every CUDA thread is a TSan fiber, switched with the no-sync flag so that running one
// after another is not mistaken for synchronisation; a __syncthreads orders the block's threads,
// a completed warp operation orders the lanes that took part, a launch orders what the host did
// before it with every thread, and every thread with what the host does after it.
#if defined(SIMT_TSAN) && SIMT_TSAN
#define SIMT_RACECHECK 1
#ifndef SIMT_FIBERS_UCONTEXT
#error "the ThreadSanitizer build needs ucontext fibers (-DSIMT_FIBERS_UCONTEXT)"
#endif
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#else
#define SIMT_RACECHECK 0
#endif

thread_local constinit uint3 threadIdx = {0, 0, 0};
thread_local constinit uint3 blockIdx = {0, 0, 0};
thread_local constinit dim3 blockDim = dim3(1, 1, 1);
thread_local constinit dim3 gridDim = dim3(1, 1, 1);

namespace simt {
namespace detail {
thread_local constinit unsigned char* dynamic_shared_base = nullptr;
}

// =====================================================================================
// 1. Errors and counters
// =====================================================================================
namespace {
std::mutex g_error_mutex;
cudaError_t g_last_error = cudaSuccess;   // cleared by cudaGetLastError
cudaError_t g_async_error = cudaSuccess;  // a kernel failure, also returned by the next sync call
std::string g_last_message;
std::atomic<long> g_d2h_copies{0};
std::atomic<long> g_syncs{0};

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// Every error the layer detects goes through here: printed once, remembered, returned.
cudaError_t report(cudaError_t code, const std::string& message, bool async = false) {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    fprintf(stderr, "%s\n", message.c_str());
    fflush(stderr);
    g_last_message = message;
    g_last_error = code;
    if (async) g_async_error = code;
    return code;
}

cudaError_t take_async_error() {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    cudaError_t e = g_async_error;
    g_async_error = cudaSuccess;
    return e;
}

long env_long(const char* name, long fallback) {
    const char* v = getenv(name);
    if (v == nullptr || *v == 0) return fallback;
    return strtol(v, nullptr, 0);
}
}  // namespace

const char* last_error_message() {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> lock(g_error_mutex);
    copy = g_last_message;
    return copy.c_str();
}
void reset_counters() {
    g_d2h_copies = 0;
    g_syncs = 0;
}
long device_to_host_copies() { return g_d2h_copies.load(); }
long synchronizations() { return g_syncs.load(); }

// =====================================================================================
// 2. Device memory: one reserved region, first-fit free list with coalescing
// =====================================================================================
namespace {
constexpr size_t kAlign = 256;
constexpr size_t kPage = 4096;
#if SIMT_ASAN || SIMT_RACECHECK
constexpr size_t kDefaultReserveGiB = 16;
#else
constexpr size_t kDefaultReserveGiB = 64;
#endif

struct DeviceMemory {
    std::recursive_mutex mutex;
    std::atomic<char*> base{nullptr};
    size_t reserved = 0;
    size_t committed = 0;                 // [base, base+committed) has been made accessible once
    std::map<size_t, size_t> free_blocks; // offset -> size
    std::map<size_t, size_t> allocations; // offset -> requested bytes
    std::map<size_t, size_t> rounded;     // offset -> rounded bytes
    bool protect = false;
    int access_depth = 0;
};
DeviceMemory& dmem() {
    static DeviceMemory* m = new DeviceMemory();  // never destroyed: used by the signal handler
    return *m;
}

void install_signal_handler();

void protect_range(char* p, size_t bytes, bool accessible) {
    if (bytes == 0) return;
    if (mprotect(p, bytes, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
        perror("simt: mprotect");
        abort();
    }
}

// Reserves the region on first use (cheap: no memory is committed).
char* region() {
    DeviceMemory& m = dmem();
    char* b = m.base.load(std::memory_order_acquire);
    if (b != nullptr) return b;
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    b = m.base.load();
    if (b != nullptr) return b;
    size_t gib = (size_t)env_long("SIMT_DEVICE_GIB", (long)kDefaultReserveGiB);
    m.reserved = gib << 30;
    void* p = mmap(nullptr, m.reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("simt: cannot reserve the device memory region");
        abort();
    }
    m.free_blocks[0] = m.reserved;
    if (env_long("SIMT_PROTECT", 0) != 0) m.protect = true;
    m.base.store((char*)p, std::memory_order_release);
    install_signal_handler();
    return (char*)p;
}

bool accessible_now(const DeviceMemory& m) { return !m.protect || m.access_depth > 0; }

// The live allocation containing [p, p+bytes), as (offset, size); size 0 if none.
std::pair<size_t, size_t> find_allocation(const void* p, size_t bytes) {
    DeviceMemory& m = dmem();
    char* b = m.base.load();
    if (b == nullptr || (const char*)p < b || (const char*)p >= b + m.reserved) return {0, 0};
    size_t off = (size_t)((const char*)p - b);
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    auto it = m.allocations.upper_bound(off);
    if (it == m.allocations.begin()) return {0, 0};
    --it;
    const size_t start = it->first, size = it->second;
    // A zero-byte range may sit one past the end (a kernel argument like `ptr + n`).
    const bool ok = bytes == 0 ? off <= start + size : off + bytes <= start + size;
    return ok ? std::pair<size_t, size_t>{start, size} : std::pair<size_t, size_t>{0, 0};
}

// Checks that [p, p+bytes) lies inside one live cudaMalloc allocation.
bool inside_allocation(const void* p, size_t bytes) { return find_allocation(p, bytes).second != 0; }

std::string describe_device_address(const void* p) {
    DeviceMemory& m = dmem();
    char* b = m.base.load();
    size_t off = (size_t)((const char*)p - b);
    auto it = m.allocations.upper_bound(off);
    if (it != m.allocations.begin()) {
        --it;
        if (off < it->first + it->second)
            return format("%zu bytes into a cudaMalloc of %zu bytes", off - it->first, it->second);
    }
    return "not inside any live cudaMalloc allocation";
}
}  // namespace

bool is_device_pointer(const void* p) {
    DeviceMemory& m = dmem();
    char* b = m.base.load(std::memory_order_acquire);
    return b != nullptr && (const char*)p >= b && (const char*)p < b + m.reserved;
}

void set_device_memory_protection(bool on) {
    region();
    DeviceMemory& m = dmem();
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    m.protect = on;
    protect_range(m.base.load(), m.committed, accessible_now(m));
}
bool device_memory_protection() {
    region();
    return dmem().protect;
}

DeviceAccess::DeviceAccess() {
    region();
    DeviceMemory& m = dmem();
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    if (m.access_depth++ == 0 && m.protect) protect_range(m.base.load(), m.committed, true);
}
DeviceAccess::~DeviceAccess() {
    DeviceMemory& m = dmem();
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    if (--m.access_depth == 0 && m.protect) protect_range(m.base.load(), m.committed, false);
}

// =====================================================================================
// 3. The SIGSEGV reporter: host code touching device memory, fiber stack overflow
// =====================================================================================
namespace {
struct sigaction g_old_segv;
std::atomic<bool> g_handler_installed{false};

// Guard pages of fiber stacks, registered when a stack is created (fixed array: signal-safe reads).
constexpr int kMaxGuards = 1 << 16;
std::atomic<int> g_guard_count{0};
uintptr_t g_guards[kMaxGuards];
thread_local const char* tls_kernel_name = nullptr;

void write_stderr(const char* s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

void segv_handler(int sig, siginfo_t* info, void* context) {
    char* addr = (char*)info->si_addr;
    DeviceMemory& m = dmem();
    char* b = m.base.load();
    if (b != nullptr && addr >= b && addr < b + m.reserved) {
        char line[512];
        snprintf(line, sizeof line, "simt: host code touched device memory at %p (%s)\n", (void*)addr,
                 describe_device_address(addr).c_str());
        write_stderr(line);
        abort();
    }
    uintptr_t a = (uintptr_t)addr;
    int n = std::min(g_guard_count.load(), kMaxGuards);
    for (int i = 0; i < n; ++i) {
        if (a >= g_guards[i] && a < g_guards[i] + kPage) {
            char line[512];
            snprintf(line, sizeof line,
                     "simt: fiber stack overflow in kernel '%s' (a CUDA thread used more than its stack; "
                     "raise SIMT_STACK_KB)\n",
                     tls_kernel_name ? tls_kernel_name : "?");
            write_stderr(line);
            abort();
        }
    }
    // Not ours: hand the fault to whoever was installed before us.
    if ((g_old_segv.sa_flags & SA_SIGINFO) && g_old_segv.sa_sigaction != nullptr) {
        g_old_segv.sa_sigaction(sig, info, context);
        return;
    }
    if (g_old_segv.sa_handler != SIG_DFL && g_old_segv.sa_handler != SIG_IGN) {
        g_old_segv.sa_handler(sig);
        return;
    }
    sigaction(SIGSEGV, &g_old_segv, nullptr);  // re-executing the access now takes the default action
}

void install_signal_handler() {
    if (g_handler_installed.exchange(true)) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
}

// A stack overflow runs the handler on the overflowed stack unless the thread has an alternate
// signal stack: give every thread that runs fibers one.
void ensure_alt_stack() {
    static thread_local bool done = false;
    if (done) return;
    done = true;
    stack_t old;
    if (sigaltstack(nullptr, &old) == 0 && !(old.ss_flags & SS_DISABLE)) return;
    stack_t ss;
    ss.ss_size = 64 * 1024;
    ss.ss_sp = mmap(nullptr, ss.ss_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ss.ss_flags = 0;
    if (ss.ss_sp != MAP_FAILED) sigaltstack(&ss, nullptr);
}
}  // namespace

// =====================================================================================
// 4. Fibers and stacks
// =====================================================================================
namespace detail {
namespace {
// The cost report's hooks (simt/profile.h); null unless a profiler installed them.
std::atomic<const ProfileHooks*> g_profile_hooks{nullptr};

#if SIMT_ASAN
constexpr size_t kDefaultStackKiB = 256;  // ASan's redzones make frames much bigger
#elif SIMT_RACECHECK
constexpr size_t kDefaultStackKiB = 128;
#else
constexpr size_t kDefaultStackKiB = 64;
#endif

size_t stack_bytes() {
    static size_t bytes = [] {
        long kib = env_long("SIMT_STACK_KB", (long)kDefaultStackKiB);
        if (kib < 16) kib = 16;
        return ((size_t)kib * 1024 + kPage - 1) / kPage * kPage;
    }();
    return bytes;
}

struct Stack {
    char* lo;     // lowest usable byte (the guard page is just below)
    size_t size;
    char* top;    // where the fiber's stack starts (below lo + size, see new_stack)
};

// One mmap per stack with a PROT_NONE guard page below it. Created on demand, never freed:
// each worker keeps its stacks in a free list and reuses them for every later block.
[[maybe_unused]] Stack new_stack() {
    size_t size = stack_bytes();
    char* p = (char*)mmap(nullptr, size + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                          -1, 0);
    if (p == MAP_FAILED) {
        perror("simt: cannot allocate a fiber stack");
        abort();
    }
    protect_range(p, kPage, false);
    int i = g_guard_count.fetch_add(1);
    if (i < kMaxGuards) g_guards[i] = (uintptr_t)p;
    // Cache colouring: stacks are a multiple of 4 KiB apart, so the hot top-of-stack lines of all
    // fibers would fall into the same L1 set and evict each other at every switch. Starting each
    // stack at a different 64-byte offset spreads them over the sets.
    size_t colour = (size_t)(i % 61) * 64;
    return Stack{p + kPage, size, p + kPage + size - colour};
}

enum FiberState : unsigned char {
    kNew,      // not started yet (no stack)
    kReady,    // started, parked, released: will continue when resumed
    kRunning,  // the fiber that is executing right now
    kBarrier,  // parked at __syncthreads
    kWarp,     // parked at a warp operation
    kDone,     // returned from the kernel (or was unwound)
};

struct Fiber {
#ifdef SIMT_FIBERS_UCONTEXT
    ucontext_t context;
#else
    boost::context::detail::fcontext_t context;
#endif
    Stack* stack;                 // owned by the worker, recycled
    unsigned long long value;     // this lane's contribution
    unsigned long long result;    // what the operation returns to this lane
    std::source_location site;    // where it is parked
    uint3 tid;
    unsigned mask;                // warp operations: the mask argument
    int arg;                      // warp operations: srcLane / delta / laneMask
    short width;                  // warp operations: width (1..32)
    FiberState state;
    unsigned char op;             // BarrierOp or WarpOp while parked
#if SIMT_RACECHECK
    void* tsan_fiber;             // this CUDA thread's TSan fiber (created for each block)
    void* warp_sync;              // the sync object of the warp operation it waits at
    unsigned warp_group_generation;  // warp operations completed whose mask's lowest lane is this one
#endif
};
#ifndef SIMT_FIBERS_UCONTEXT
static_assert(sizeof(Fiber) == 64, "one cache line per CUDA thread");
#endif

// Everything one OS worker thread needs to run blocks, allocated once and reused.
struct Worker {
    int index = 0;
    std::vector<Fiber> fibers;
    std::vector<int> round;         // the fibers to run in this round, in order
    size_t pos = 0;                 // next entry of `round`
    std::vector<int> runlist;       // released for the next round
    std::vector<std::unique_ptr<Stack>> stacks;  // every stack this worker ever created
    std::vector<Stack*> free_stacks;
    unsigned char* shared = nullptr;  // dynamic shared memory (kMaxDynamicSharedOptin bytes)
    // Static __shared__ variables of the block being run: (site, type) -> offset in static_arena.
    struct StaticSlot {
        const void* site;
        const void* type;
        void* address;
    };
    std::vector<StaticSlot> static_slots;
    unsigned char* static_arena = nullptr;  // kMaxStaticShared bytes
    size_t static_used = 0;
#if SIMT_RACECHECK
    // Racecheck: every block gets fresh stacks, shared memory and sync objects (new memory has no
    // TSan history, so nothing a previous block did on this worker looks ordered or racy), and
    // fresh TSan fibers created by the worker's own context (the launch's start is all they inherit).
    void* tsan_scheduler = nullptr;  // the worker thread's own TSan context
    char* tsan_stack_region = nullptr;
    size_t tsan_stack_region_bytes = 0;
    std::vector<Stack> tsan_stacks;
    unsigned long long* tsan_sync = nullptr;  // [0..1] barrier generations, then 2 per thread
    unsigned barrier_generation = 0;
    // Finished fibers are destroyed only this many blocks' worth later: TSan reuses the slot of a
    // destroyed one soon, and with it goes the stack trace of its accesses, which a race report
    // with a later block needs ("Previous write ... by thread T6").
    std::vector<void*> tsan_finished;
#endif

    // The block being run.
    const Launch* launch = nullptr;
    unsigned long long block = 0;   // linear block index
    int nthreads = 0, live = 0, barrier_waiters = 0, warp_waiters = 0;
    // The barrier being gathered: the first arrival's site; later arrivals only compare with it.
    std::source_location barrier_site;
    unsigned char barrier_op = 0;
    bool barrier_mixed = false;     // someone arrived at a different barrier: divergence
    int barrier_count = 0, barrier_and = 1, barrier_or = 0;
    std::vector<int> barrier_list;  // arrival order
    bool aborting = false;          // unwinding every fiber of the block
    bool failed = false;
    std::string error;
    unsigned long long rng = 0;     // shuffled mode
    bool shuffle = false;
    Fiber* current = nullptr;
#ifdef SIMT_FIBERS_UCONTEXT
    ucontext_t scheduler;
    Fiber* switch_from = nullptr;   // who switched to the context that is arriving
#else
    boost::context::detail::fcontext_t scheduler = nullptr;
#endif
#if SIMT_ASAN
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
#endif

    Worker() : fibers(kMaxThreadsPerBlock) {
        runlist.reserve(kMaxThreadsPerBlock);
        round.reserve(kMaxThreadsPerBlock);
        barrier_list.reserve(kMaxThreadsPerBlock);
        static_slots.reserve(16);
#if !SIMT_RACECHECK
        shared = (unsigned char*)aligned_alloc(4096, (kMaxDynamicSharedOptin + 4095) / 4096 * 4096);
        static_arena = (unsigned char*)aligned_alloc(4096, kMaxStaticShared);
#endif
    }
    ~Worker() {
        free(shared);
        free(static_arena);
    }
};
thread_local Worker* tls_worker = nullptr;
#if SIMT_RACECHECK
char g_tsan_launch_start, g_tsan_launch_end;  // TSan sync objects: the host's side of every launch
#endif

// Thrown into parked fibers to unwind them when their block is abandoned.
struct FiberUnwind {};
// Thrown by trap(): a device-side failure.
struct DeviceTrap {
    std::string message;
};

std::string block_string(const Worker& w) {
    return format("block (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z);
    (void)w;
}
std::string thread_string(const uint3& t) { return format("thread (%u,%u,%u)", t.x, t.y, t.z); }

void record_failure(Worker* w, const std::string& what) {
    if (!w->failed) {
        w->failed = true;
        w->error = format("simt: %s in kernel '%s' %s %s", what.c_str(), w->launch->name, block_string(*w).c_str(),
                          thread_string(w->current->tid).c_str());
    }
    w->aborting = true;
#if SIMT_RACECHECK
    __tsan_release(&g_tsan_launch_end);  // the message, built on this fiber, is read by the host
#endif
}

// Runs one CUDA thread to completion; any exception ends the block.
void run_thread(Worker* w) {
    try {
        w->launch->thunk(w->launch->bound);
    } catch (const FiberUnwind&) {
    } catch (const DeviceTrap& e) {
        record_failure(w, e.message);
    } catch (const std::exception& e) {
        record_failure(w, format("exception (%s)", e.what()));
    } catch (...) {
        record_failure(w, "unknown exception");
    }
}

// ---- switching ----
// A fiber that parks (barrier, warp operation) or finishes picks the next fiber itself and
// switches straight to it: one context switch per CUDA thread per barrier, not two. The worker's
// own stack (the "main" context, `nullptr` below) only starts the block and gets control back
// when the block is done or has to be abandoned.
Fiber* pick_next(Worker* w);

// Makes `to` the running fiber (creating its context on its first run).
#ifdef SIMT_FIBERS_UCONTEXT
void fiber_entry_point();
#endif
inline void prepare(Worker* w, Fiber* to) {
    if (to->state == kNew) {
#if SIMT_RACECHECK
        to->stack = &w->tsan_stacks[to - w->fibers.data()];  // the block's own (see run_block)
#else
        if (w->free_stacks.empty()) {
            w->stacks.push_back(std::make_unique<Stack>(new_stack()));
            w->free_stacks.push_back(w->stacks.back().get());
        }
        to->stack = w->free_stacks.back();
        w->free_stacks.pop_back();
#endif
#if SIMT_ASAN
        // A recycled stack still carries the poisoned redzones of frames that never returned.
        __asan_unpoison_memory_region(to->stack->lo, to->stack->size);
#endif
#ifdef SIMT_FIBERS_UCONTEXT
        getcontext(&to->context);
        to->context.uc_stack.ss_sp = to->stack->lo;
        to->context.uc_stack.ss_size = (size_t)(to->stack->top - to->stack->lo);
        to->context.uc_link = nullptr;
        makecontext(&to->context, fiber_entry_point, 0);
#endif
    }
    to->state = kRunning;
    w->current = to;
    threadIdx = to->tid;
}

// On arrival in a context: a fiber that finished and switched here gives its stack back (it is
// no longer running on it).
inline void recycle_if_done(Worker* w, Fiber* prev) {
#if SIMT_RACECHECK
    (void)w, (void)prev;  // stacks live as long as their block
#else
    if (prev != nullptr && prev->state == kDone) w->free_stacks.push_back(prev->stack);
#endif
}

#ifdef SIMT_FIBERS_UCONTEXT
// Switches from `from` to `to` (nullptr = the worker's main context); returns when some fiber
// switches back to `from`.
void transfer(Worker* w, Fiber* from, Fiber* to) {
    if (to != nullptr) prepare(w, to);
    else w->current = nullptr;
    ucontext_t* save = from != nullptr ? &from->context : &w->scheduler;
    ucontext_t* target = to != nullptr ? &to->context : &w->scheduler;
    w->switch_from = from;
#if SIMT_ASAN
    void* fake = nullptr;
    const bool dying = from != nullptr && from->state == kDone;
    if (to != nullptr) __sanitizer_start_switch_fiber(dying ? nullptr : &fake, to->stack->lo, (size_t)(to->stack->top - to->stack->lo));
    else __sanitizer_start_switch_fiber(dying ? nullptr : &fake, w->scheduler_stack_bottom, w->scheduler_stack_size);
#endif
#if SIMT_RACECHECK
    __tsan_switch_to_fiber(to != nullptr ? to->tsan_fiber : w->tsan_scheduler, 1 /* no_sync */);
#endif
    swapcontext(save, target);
#if SIMT_ASAN
    const void* old_bottom = nullptr;
    size_t old_size = 0;
    __sanitizer_finish_switch_fiber(fake, &old_bottom, &old_size);
    if (w->switch_from == nullptr) w->scheduler_stack_bottom = old_bottom, w->scheduler_stack_size = old_size;
#endif
    recycle_if_done(w, w->switch_from);
}

void fiber_entry_point() {
    Worker* w = tls_worker;
#if SIMT_ASAN
    const void* old_bottom = nullptr;
    size_t old_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &old_bottom, &old_size);
    if (w->switch_from == nullptr) w->scheduler_stack_bottom = old_bottom, w->scheduler_stack_size = old_size;
#endif
    recycle_if_done(w, w->switch_from);
    Fiber* self = w->current;
    run_thread(w);
#if SIMT_RACECHECK
    __tsan_release(&g_tsan_launch_end);  // everything this thread did happens before the host's next step
#endif
    self->state = kDone;
    --w->live;
    transfer(w, self, pick_next(w));  // never comes back: a finished fiber is not resumed
    abort();
}
#else
namespace bctx = boost::context::detail;

inline void arrived(Worker* w, bctx::transfer_t t) {
    Fiber* prev = static_cast<Fiber*>(t.data);
    if (prev == nullptr) w->scheduler = t.fctx;
    else if (prev->state == kDone) w->free_stacks.push_back(prev->stack);
    else prev->context = t.fctx;
}

void fiber_entry(bctx::transfer_t t);

#if defined(__x86_64__) && defined(__ELF__)
// jump_fcontext entered with a jmp instead of a call. Boost's jump_fcontext leaves through an
// indirect jmp, never a ret, so a plain call would leave one stale entry on the CPU's
// return-stack predictor at every switch and every return of the resumed fiber would be
// mispredicted (measured: ~40% of the cost of a barrier). Without the call the predictor stays
// balanced: the resumed fiber runs the same code as the one that parked, so its returns are
// predicted right. The asm skips the red zone before pushing its return address, and clobbers
// everything a call may clobber (jump_fcontext itself preserves the callee-saved registers).
inline bctx::transfer_t jump(bctx::fcontext_t to, void* data) {
    void* from_context;
    void* from_data;
    __asm__ volatile(
        "subq $128, %%rsp\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "jmp jump_fcontext@PLT\n\t"
        "1:\n\t"
        "addq $128, %%rsp\n\t"
        : "=a"(from_context), "=d"(from_data), "+D"(to), "+S"(data)
        :
        : "rcx", "r8", "r9", "r10", "r11", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
          "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
#ifdef __AVX512F__
          "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
          "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5", "k6", "k7",
#endif
          "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
    return bctx::transfer_t{from_context, from_data};
}
#else
inline bctx::transfer_t jump(bctx::fcontext_t to, void* data) { return bctx::jump_fcontext(to, data); }
#endif

void transfer(Worker* w, Fiber* from, Fiber* to) {
    bctx::fcontext_t target;
    if (to != nullptr) {
        const bool start = to->state == kNew;
        prepare(w, to);
        if (start) to->context = bctx::make_fcontext(to->stack->top, (size_t)(to->stack->top - to->stack->lo), fiber_entry);
        target = to->context;
    } else {
        w->current = nullptr;
        target = w->scheduler;
    }
    arrived(w, jump(target, from));
}

void fiber_entry(bctx::transfer_t t) {
    Worker* w = tls_worker;
    arrived(w, t);
    Fiber* self = w->current;
    run_thread(w);
    self->state = kDone;
    --w->live;
    transfer(w, self, pick_next(w));  // never comes back: a finished fiber is not resumed
    abort();
}
#endif

// Fiber side: the current fiber has recorded why it waits; run whoever is next.
inline void park(Worker* w, Fiber* self) {
    Fiber* next = pick_next(w);
    if (next == self) {  // released already (e.g. the last lane of a warp operation)
        self->state = kRunning;
        w->current = self;
        return;
    }
    transfer(w, self, next);
}

// "./tests/x.cuh" -> "tests/x.cuh" (an include found through -I. has the ./ prefix).
const char* clean_path(const char* file) {
    while (file[0] == '.' && file[1] == '/') file += 2;
    return file;
}

bool same_site(const std::source_location& a, const std::source_location& b) {
    // libstdc++'s source_location is one pointer to a per-call-site constant: equal bits, same site.
    if (std::memcmp(&a, &b, sizeof a) == 0) return true;
    return a.line() == b.line() && a.column() == b.column() &&
           (a.file_name() == b.file_name() || strcmp(a.file_name(), b.file_name()) == 0);
}

// Fiber side: park the current fiber (its state says why) and run the scheduler.
inline Fiber* current_fiber(const char* what) {
    Worker* w = tls_worker;
    if (w == nullptr || w->current == nullptr) {
        fprintf(stderr, "simt: %s called outside a kernel\n", what);
        abort();
    }
    return w->current;
}

}  // namespace

// =====================================================================================
// 5. Barriers and warp operations
// =====================================================================================
int block_barrier(BarrierOp op, int predicate, const std::source_location& loc) {
    Fiber* f = current_fiber("__syncthreads");
    Worker* w = tls_worker;
    if (w->aborting) throw FiberUnwind{};
    f->state = kBarrier;
    f->op = (unsigned char)op;
    f->site = loc;
    f->value = predicate != 0;
    if (w->barrier_waiters++ == 0) {
        w->barrier_site = loc;
        w->barrier_op = (unsigned char)op;
        w->barrier_mixed = false;
        w->barrier_count = 0, w->barrier_and = 1, w->barrier_or = 0;
    } else if (w->barrier_op != (unsigned char)op || !same_site(w->barrier_site, loc)) {
        w->barrier_mixed = true;
    }
    w->barrier_count += predicate != 0;
    w->barrier_and &= predicate != 0;
    w->barrier_or |= predicate != 0;
    w->barrier_list.push_back((int)(f - w->fibers.data()));
#if SIMT_RACECHECK
    // One sync object per barrier generation, two alternating: every thread of the block resumes
    // from generation g (and acquires) before any thread can arrive at generation g + 2.
    unsigned long long* sync = &w->tsan_sync[w->barrier_generation & 1];
    __tsan_release(sync);
#endif
    park(w, f);
#if SIMT_RACECHECK
    __tsan_acquire(sync);
#endif
    if (w->aborting) throw FiberUnwind{};
    return (int)f->result;
}

unsigned long long warp_op(WarpOp op, unsigned mask, unsigned long long value, int arg, int width,
                           const std::source_location& loc) {
    Fiber* f = current_fiber("a warp operation");
    Worker* w = tls_worker;
    if (w->aborting) throw FiberUnwind{};
    f->state = kWarp;
    f->op = (unsigned char)op;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = (short)(width < -1 ? -1 : width > 64 ? 64 : width);  // validated when the warp resolves
    f->site = loc;
    ++w->warp_waiters;
#if SIMT_RACECHECK
    // One sync object per operation: the lanes of an operation share its mask, so its lowest lane
    // names it (two pending operations of a warp cannot share a lane), and that lane's count of
    // completed operations picks one of two objects (every lane resumes from operation g before
    // any operation g + 2 of the same lowest lane can complete). Lanes outside the mask use other
    // objects: a warp operation orders only the lanes it names.
    {
        const int self = (int)(f - w->fibers.data()), base = self & ~31;
        const int lanes = std::min(32, w->nthreads - base);
        const unsigned named = mask & (lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1));
        const int low = named != 0 ? base + __builtin_ctz(named) : self;
        f->warp_sync = &w->tsan_sync[2 + 2 * low + (w->fibers[(size_t)low].warp_group_generation & 1)];
        __tsan_release(f->warp_sync);
    }
#endif
    park(w, f);
#if SIMT_RACECHECK
    __tsan_acquire(f->warp_sync);
#endif
    if (w->aborting) throw FiberUnwind{};
    return f->result;
}

void* static_shared_slot(const void* site, const void* type, size_t bytes, size_t alignment) {
    Fiber* f = current_fiber("a static __shared__ declaration");
    (void)f;
    Worker* w = tls_worker;
    for (const Worker::StaticSlot& slot : w->static_slots)
        if (slot.site == site && slot.type == type) return slot.address;
    const size_t offset = (w->static_used + alignment - 1) / alignment * alignment;
    if (offset + bytes > kMaxStaticShared)
        throw DeviceTrap{format("static __shared__ variables of more than %zu bytes (nvcc rejects this kernel)",
                                kMaxStaticShared)};
#if SIMT_RACECHECK
    // Allocated and poisoned on this CUDA thread's fiber but invisibly to TSan: the poison is no
    // access of this thread that the others would race with.
    __tsan_ignore_thread_begin();
    if (w->static_arena == nullptr) w->static_arena = (unsigned char*)aligned_alloc(64, kMaxStaticShared);
    memset(w->static_arena + offset, 0xFF, bytes);
    __tsan_ignore_thread_end();
#else
    memset(w->static_arena + offset, 0xFF, bytes);
#endif
    w->static_used = offset + bytes;
    w->static_slots.push_back(Worker::StaticSlot{site, type, w->static_arena + offset});
    return w->static_arena + offset;
}

unsigned active_mask() {
    Fiber* f = current_fiber("__activemask");
    Worker* w = tls_worker;
    int linear = (int)(f - w->fibers.data());
    int base = linear & ~31;
    unsigned m = 0;
    for (int l = 0; l < 32 && base + l < w->nthreads; ++l)
        if (w->fibers[base + l].state != kDone) m |= 1u << l;
    return m;
}

}  // namespace detail

[[noreturn]] void trap(const char* why, std::source_location loc) {
    detail::current_fiber(why);
    throw detail::DeviceTrap{format("%s at %s:%u", why, detail::clean_path(loc.file_name()), (unsigned)loc.line())};
}

namespace detail {
namespace {
const char* op_name(FiberState state, unsigned char op) {
    if (state == kBarrier) {
        switch ((BarrierOp)op) {
            case BarrierOp::Sync: return "__syncthreads";
            case BarrierOp::Count: return "__syncthreads_count";
            case BarrierOp::And: return "__syncthreads_and";
            case BarrierOp::Or: return "__syncthreads_or";
        }
    }
    switch ((WarpOp)op) {
        case WarpOp::Sync: return "__syncwarp";
        case WarpOp::ShflIdx: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::ReduceAddU: return "__reduce_add_sync";
        case WarpOp::ReduceMinU:
        case WarpOp::ReduceMinI: return "__reduce_min_sync";
        case WarpOp::ReduceMaxU:
        case WarpOp::ReduceMaxI: return "__reduce_max_sync";
        case WarpOp::ReduceAnd: return "__reduce_and_sync";
        case WarpOp::ReduceOr: return "__reduce_or_sync";
        case WarpOp::ReduceXor: return "__reduce_xor_sync";
    }
    return "?";
}


// "16 threads at tests/x.cuh:12 (__syncthreads), 16 threads exited" over the given fibers.
std::string describe_threads(Worker* w, int first, int count) {
    struct Group {
        FiberState state;
        unsigned char op;
        std::source_location site;
        int n;
    };
    std::vector<Group> groups;
    int exited = 0, running = 0;
    for (int i = first; i < first + count && i < w->nthreads; ++i) {
        Fiber& f = w->fibers[i];
        if (f.state == kDone) {
            ++exited;
            continue;
        }
        if (f.state != kBarrier && f.state != kWarp) {
            ++running;
            continue;
        }
        bool found = false;
        for (Group& g : groups)
            if (g.state == f.state && g.op == f.op && same_site(g.site, f.site)) {
                ++g.n;
                found = true;
                break;
            }
        if (!found) groups.push_back(Group{f.state, f.op, f.site, 1});
    }
    std::string s;
    for (const Group& g : groups) {
        if (!s.empty()) s += ", ";
        s += format("%d thread%s at %s:%u (%s)", g.n, g.n == 1 ? "" : "s", clean_path(g.site.file_name()), (unsigned)g.site.line(),
                    op_name(g.state, g.op));
    }
    if (running) s += format("%s%d threads released", s.empty() ? "" : ", ", running);
    if (exited) s += format("%s%d thread%s exited", s.empty() ? "" : ", ", exited, exited == 1 ? "" : "s");
    return s;
}

void fail_block(Worker* w, const std::string& message) {
    if (!w->failed) {
        w->failed = true;
        w->error = message;
    }
    w->aborting = true;
#if SIMT_RACECHECK
    __tsan_release(&g_tsan_launch_end);  // the message, built on whichever fiber runs this, is read by the host
#endif
}

unsigned long long splitmix64(unsigned long long& state) {
    unsigned long long z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::atomic<unsigned long long> g_shuffle{0};
std::atomic<bool> g_shuffle_init{false};
std::atomic<bool> g_strict_sync{true};

void shuffle_runlist(Worker* w) {
    std::vector<int>& r = w->runlist;
    for (size_t i = r.size(); i > 1; --i) {
        size_t j = (size_t)(splitmix64(w->rng) % i);
        std::swap(r[i - 1], r[j]);
    }
}

// Completes the warp operations of warp `warp` whose lanes have all arrived. Returns false on error.
bool resolve_warp(Worker* w, int warp) {
    const int base = warp * 32;
    const int lanes = std::min(32, w->nthreads - base);
    const unsigned exist = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    Fiber* F = &w->fibers[base];
    for (int lane = 0; lane < lanes; ++lane) {
        Fiber& f = F[lane];
        if (f.state != kWarp) continue;
        const unsigned M = f.mask & exist;
        if (!((M >> lane) & 1u)) {
            fail_block(w, format("simt: warp divergence in kernel '%s' %s: lane %d calls %s at %s:%u with mask 0x%08x "
                                 "that does not include itself",
                                 w->launch->name, block_string(*w).c_str(), lane, op_name(kWarp, f.op),
                                 clean_path(f.site.file_name()), (unsigned)f.site.line(), f.mask));
            return false;
        }
        // One pass over the lanes the mask names: any exited (error), all arrived, all at the same
        // operation (same kind, mask and call site; __syncwarp may differ in call site).
        bool complete = true, same = true;
        const bool any_site = (WarpOp)f.op == WarpOp::Sync;
        for (unsigned bits = M; bits; bits &= bits - 1) {
            const Fiber& g = F[__builtin_ctz(bits)];
            if (g.state == kDone) {
                fail_block(w, format("simt: warp divergence in kernel '%s' %s warp %d: %s at %s:%u with mask 0x%08x "
                                     "names lane %d, which has exited (%s)",
                                     w->launch->name, block_string(*w).c_str(), warp, op_name(kWarp, f.op),
                                     clean_path(f.site.file_name()), (unsigned)f.site.line(), f.mask,
                                     __builtin_ctz(bits), describe_threads(w, base, lanes).c_str()));
                return false;
            }
            if (g.state != kWarp) complete = false;
            else same = same && g.op == f.op && (g.mask & exist) == M && (any_site || same_site(g.site, f.site));
        }
        if (!complete) continue;
        if (!same) {
            fail_block(w, format("simt: warp divergence in kernel '%s' %s warp %d: lanes of mask 0x%08x are at "
                                 "different warp operations: %s",
                                 w->launch->name, block_string(*w).c_str(), warp, f.mask,
                                 describe_threads(w, base, lanes).c_str()));
            return false;
        }
        // Everyone is here: exchange.
        const WarpOp op = (WarpOp)f.op;
        unsigned long long combined = 0;
        switch (op) {
            case WarpOp::Ballot:
            case WarpOp::Any:
            case WarpOp::All: {
                unsigned ballot = 0;
                for (unsigned bits = M; bits; bits &= bits - 1) {
                    int j = __builtin_ctz(bits);
                    if (F[j].value) ballot |= 1u << j;
                }
                combined = op == WarpOp::Ballot ? ballot : op == WarpOp::Any ? (ballot != 0) : (ballot == M);
                break;
            }
            case WarpOp::ReduceAddU:
            case WarpOp::ReduceMinU:
            case WarpOp::ReduceMaxU:
            case WarpOp::ReduceMinI:
            case WarpOp::ReduceMaxI:
            case WarpOp::ReduceAnd:
            case WarpOp::ReduceOr:
            case WarpOp::ReduceXor: {
                bool first = true;
                unsigned acc = 0;
                for (unsigned bits = M; bits; bits &= bits - 1) {
                    unsigned v = (unsigned)F[__builtin_ctz(bits)].value;
                    if (first) {
                        acc = v;
                        first = false;
                        continue;
                    }
                    switch (op) {
                        case WarpOp::ReduceAddU: acc += v; break;
                        case WarpOp::ReduceMinU: acc = std::min(acc, v); break;
                        case WarpOp::ReduceMaxU: acc = std::max(acc, v); break;
                        case WarpOp::ReduceMinI: acc = (unsigned)std::min((int)acc, (int)v); break;
                        case WarpOp::ReduceMaxI: acc = (unsigned)std::max((int)acc, (int)v); break;
                        case WarpOp::ReduceAnd: acc &= v; break;
                        case WarpOp::ReduceOr: acc |= v; break;
                        default: acc ^= v; break;
                    }
                }
                combined = acc;
                break;
            }
            default: break;
        }
        const bool is_shuffle = op == WarpOp::ShflIdx || op == WarpOp::ShflUp || op == WarpOp::ShflDown ||
                                op == WarpOp::ShflXor;
        if (is_shuffle) {
            int width = f.width;
            if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
                fail_block(w, format("simt: invalid width %d for %s at %s:%u in kernel '%s' (must be a power of 2 "
                                     "<= 32)",
                                     width, op_name(kWarp, f.op), clean_path(f.site.file_name()), (unsigned)f.site.line(), w->launch->name));
                return false;
            }
        }
#if SIMT_RACECHECK
        ++F[__builtin_ctz(M)].warp_group_generation;  // this operation's sync object is done with
#endif
        for (unsigned bits = M; bits; bits &= bits - 1) {
            const int l = __builtin_ctz(bits);
            Fiber& g = F[l];
            if (is_shuffle) {
                // PTX shfl.sync with c = ((32 - width) << 8) | (up ? 0 : 0x1f).
                const int segmask = (32 - g.width) & 31;
                const int cval = op == WarpOp::ShflUp ? 0 : 31;
                const int bval = g.arg & 31;
                const int max_lane = (l & segmask) | (cval & ~segmask & 31);
                const int min_lane = l & segmask;
                int j = l;
                bool ok = false;
                switch (op) {
                    case WarpOp::ShflUp: j = l - bval; ok = j >= max_lane; break;
                    case WarpOp::ShflDown: j = l + bval; ok = j <= max_lane; break;
                    case WarpOp::ShflXor: j = l ^ bval; ok = j <= max_lane; break;
                    default: j = min_lane | (bval & ~segmask & 31); ok = j <= max_lane; break;
                }
                if (!ok) j = l;
                g.result = ((M >> j) & 1u) ? F[j].value : ~0ull;  // a lane outside the mask: undefined
            } else {
                g.result = combined;
            }
            g.state = kReady;
            --w->warp_waiters;
            w->runlist.push_back(base + l);
        }
    }
    return true;
}

// Called when no fiber can run: complete warp operations, else the barrier, else report.
bool resolve(Worker* w) {
    if (w->warp_waiters > 0) {
        const int warps = (w->nthreads + 31) / 32;
        for (int warp = 0; warp < warps; ++warp)
            if (!resolve_warp(w, warp)) return false;
        if (!w->runlist.empty()) return true;
    }
    if (w->barrier_waiters == w->live && w->live > 0 && !w->barrier_mixed) {
        if (w->live < w->nthreads && g_strict_sync.load(std::memory_order_relaxed)) {
            fail_block(w, format("simt: barrier divergence in kernel '%s' %s: %s; a __syncthreads must be reached by "
                                 "every thread of the block, and threads that exit before it make it undefined "
                                 "(strict synccheck; SIMT_STRICT_SYNC=0 lets exited threads count as arrived)",
                                 w->launch->name, block_string(*w).c_str(), describe_threads(w, 0, w->nthreads).c_str()));
            return false;
        }
        unsigned long long result = 0;
        switch ((BarrierOp)w->barrier_op) {
            case BarrierOp::Count: result = (unsigned)w->barrier_count; break;
            case BarrierOp::And: result = (unsigned)w->barrier_and; break;
            case BarrierOp::Or: result = (unsigned)w->barrier_or; break;
            default: break;
        }
        for (int i : w->barrier_list) {
            Fiber& f = w->fibers[i];
            f.state = kReady;
            f.result = result;
        }
        w->runlist.swap(w->barrier_list);  // released in arrival order (ascending unless shuffled)
        w->barrier_list.clear();
        w->barrier_waiters = 0;
#if SIMT_RACECHECK
        ++w->barrier_generation;
#endif
        return true;
    }
    fail_block(w, format("simt: %s divergence in kernel '%s' %s: %s", w->warp_waiters ? "warp" : "barrier",
                         w->launch->name, block_string(*w).c_str(), describe_threads(w, 0, w->nthreads).c_str()));
    return false;
}

// The scheduler's decision, made on the stack of the fiber that just parked or finished: the next
// fiber of this round; at the end of the round, resolve barriers / warp operations and start the
// next round; nullptr (= back to the worker's main context) when the block is done or failed.
Fiber* pick_next(Worker* w) {
    for (;;) {
        if (w->aborting) return nullptr;
        if (w->pos < w->round.size()) return &w->fibers[w->round[w->pos++]];
        if (w->live == 0) return nullptr;
        if (!resolve(w)) return nullptr;
        if (w->shuffle) shuffle_runlist(w);
        w->round.swap(w->runlist);
        w->runlist.clear();
        w->pos = 0;
    }
}

// Unwinds every parked fiber of an abandoned block (their destructors run) and drops the rest.
void abort_block(Worker* w) {
    w->aborting = true;
    for (int pass = 0; pass < 4 && w->live > 0; ++pass) {
        for (int i = 0; i < w->nthreads; ++i) {
            Fiber& f = w->fibers[i];
            if (f.state == kNew) {
                f.state = kDone;
                --w->live;
            } else if (f.state == kReady || f.state == kBarrier || f.state == kWarp) {
                transfer(w, nullptr, &f);  // it throws FiberUnwind where it waits and comes back here
            }
        }
    }
    if (w->live > 0) {
        fprintf(stderr, "simt: a kernel thread keeps running after its block was abandoned (does it catch "
                        "everything?)\n");
        abort();
    }
}

#if SIMT_RACECHECK
constexpr size_t kTsanFinishedFibers = 512;  // per worker (TSan allows 8,128 threads in all)

// Called on the worker's own context before the block's first thread runs: new stacks, new
// dynamic shared memory and new sync objects (fresh memory carries no TSan history).
void tsan_block_memory(Worker* w, const Launch& L, int n) {
    w->tsan_scheduler = __tsan_get_current_fiber();
    const size_t stack = stack_bytes();
    w->tsan_stack_region_bytes = (size_t)n * (stack + kPage);
    // Inside an ignore region TSan resets the new mapping's history instead of recording a write
    // to every byte of it (which costs four bytes of shadow per byte of stack).
    __tsan_ignore_thread_begin();
    w->tsan_stack_region = (char*)mmap(nullptr, w->tsan_stack_region_bytes, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    __tsan_ignore_thread_end();
    if (w->tsan_stack_region == MAP_FAILED) {
        perror("simt: cannot allocate the fiber stacks of a block");
        abort();
    }
    w->tsan_stacks.resize((size_t)n);
    for (int i = 0; i < n; ++i) {
        char* guard = w->tsan_stack_region + (size_t)i * (stack + kPage);
        protect_range(guard, kPage, false);
        const size_t colour = (size_t)(i % 61) * 64;
        w->tsan_stacks[(size_t)i] = Stack{guard + kPage, stack, guard + kPage + stack - colour};
    }
    w->shared = (unsigned char*)aligned_alloc(16, std::max<size_t>(16, (L.shared_bytes + 15) / 16 * 16));
    dynamic_shared_base = w->shared;
    w->static_arena = nullptr;  // allocated by the first static __shared__ declaration reached
    w->tsan_sync = (unsigned long long*)calloc(2 + 2 * (size_t)n, sizeof(unsigned long long));
    w->barrier_generation = 0;
}

// Then, once the shared memory is poisoned: one new TSan fiber per CUDA thread, named after it,
// which inherits the worker context's clock (the launch's start and the poisoning) and nothing else.
void tsan_block_fibers(Worker* w, const Launch& L, int n) {
    char name[192];
    for (int i = 0; i < n; ++i) {
        Fiber& f = w->fibers[(size_t)i];
        f.tsan_fiber = __tsan_create_fiber(0);
        f.warp_group_generation = 0;
        snprintf(name, sizeof name, "thread (%d,%d,%d) block (%u,%u,%u) %s", i % (int)L.block.x,
                 (i / (int)L.block.x) % (int)L.block.y, i / (int)(L.block.x * L.block.y), blockIdx.x, blockIdx.y,
                 blockIdx.z, L.name);
        __tsan_set_fiber_name(f.tsan_fiber, name);
    }
}

// Called on the worker's own context when the block is over. The frees are not accesses (the
// block's threads are not ordered with this context; the next allocation of this memory resets
// its history anyway).
void tsan_block_end(Worker* w) {
    for (int i = 0; i < w->nthreads; ++i) w->tsan_finished.push_back(w->fibers[(size_t)i].tsan_fiber);
    if (w->tsan_finished.size() > kTsanFinishedFibers + kTsanFinishedFibers / 2) {
        const size_t excess = w->tsan_finished.size() - kTsanFinishedFibers;
        for (size_t i = 0; i < excess; ++i) __tsan_destroy_fiber(w->tsan_finished[i]);
        w->tsan_finished.erase(w->tsan_finished.begin(), w->tsan_finished.begin() + (long)excess);
    }
    munmap(w->tsan_stack_region, w->tsan_stack_region_bytes);
    w->tsan_stack_region = nullptr;
    __tsan_ignore_thread_begin();
    free(w->shared);
    free(w->static_arena);
    free(w->tsan_sync);
    __tsan_ignore_thread_end();
    w->shared = w->static_arena = nullptr;
    w->tsan_sync = nullptr;
    dynamic_shared_base = nullptr;
}
#endif

void run_block(Worker* w, const Launch& L, unsigned long long linear) {
    const unsigned gx = L.grid.x, gy = L.grid.y;
    blockIdx = uint3{(unsigned)(linear % gx), (unsigned)((linear / gx) % gy), (unsigned)(linear / ((unsigned long long)gx * gy))};
    w->block = linear;
    const int bx = (int)L.block.x, by = (int)L.block.y;
    const int n = bx * by * (int)L.block.z;
    w->nthreads = n;
    w->live = n;
    w->barrier_waiters = w->warp_waiters = 0;
    const ProfileHooks* hooks = g_profile_hooks.load(std::memory_order_relaxed);
    if (hooks != nullptr) hooks->block_begin(n);
    w->barrier_list.clear();
    w->aborting = false;
#if SIMT_ASAN
    // Under ASan, bytes past the launch's shared_bytes are poisoned: an overrun is reported.
    const size_t cap = (kMaxDynamicSharedOptin + 4095) / 4096 * 4096;
    __asan_unpoison_memory_region(w->shared, cap);
    __asan_poison_memory_region(w->shared + L.shared_bytes, cap - L.shared_bytes);
#endif
#if SIMT_RACECHECK
    tsan_block_memory(w, L, n);
#endif
    if (L.shared_bytes > 0) memset(w->shared, 0xFF, L.shared_bytes);
#if SIMT_RACECHECK
    tsan_block_fibers(w, L, n);
#endif
    w->static_slots.clear();
    w->static_used = 0;
    w->runlist.clear();
    for (int i = 0; i < n; ++i) {
        Fiber& f = w->fibers[i];
        f.state = kNew;
        f.tid = uint3{(unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / (bx * by))};
        w->runlist.push_back(i);
    }
    w->rng = g_shuffle.load(std::memory_order_relaxed);
    w->shuffle = w->rng != 0;
    if (w->shuffle) {
        w->rng ^= linear * 0xd1b54a32d192ed03ull;
        shuffle_runlist(w);
    }
    w->round.swap(w->runlist);
    w->runlist.clear();
    w->pos = 0;
    transfer(w, nullptr, pick_next(w));  // back here when the block is done or abandoned
    if (w->aborting) abort_block(w);
    w->current = nullptr;
    if (hooks != nullptr) hooks->block_end(w->static_used);
#if SIMT_RACECHECK
    tsan_block_end(w);
#endif
}
}  // namespace

// =====================================================================================
// 6. Launches and the worker pool
// =====================================================================================
namespace {
std::mutex g_attr_mutex;
std::map<const void*, size_t> g_max_dynamic_shared;  // kernels that opted in to more shared memory

struct Pool {
    std::mutex mutex;
    std::condition_variable start_cv, done_cv;
    std::vector<std::thread> threads;
    std::vector<std::unique_ptr<Worker>> workers;  // [0] runs on the launching thread
    unsigned long long generation = 0;
    int pending = 0;
    bool stop = false;
    const Launch* job = nullptr;
    unsigned long long total_blocks = 0;
    std::atomic<bool> grid_failed{false};
    int configured = 0;
};
Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: worker threads may still wait on it at exit
    return *p;
}
std::mutex g_launch_mutex;

void run_share(Worker* w, const Launch& L, unsigned long long total, int nworkers) {
    Worker* saved = tls_worker;
    tls_worker = w;
    ensure_alt_stack();
    tls_kernel_name = L.name;
    blockDim = L.block;
    gridDim = L.grid;
    dynamic_shared_base = w->shared;
#if SIMT_RACECHECK
    __tsan_acquire(&g_tsan_launch_start);  // the fibers this context creates inherit the host's past
#endif
    Pool& p = pool();
    for (unsigned long long b = (unsigned long long)w->index; b < total; b += (unsigned long long)nworkers) {
        if (p.grid_failed.load(std::memory_order_relaxed)) break;
        w->failed = false;
        w->launch = &L;
        run_block(w, L, b);
        if (w->failed) {
            p.grid_failed.store(true);
            break;
        }
    }
    tls_kernel_name = nullptr;
    tls_worker = saved;
}

void worker_main(Worker* w, unsigned long long seen) {
    Pool& p = pool();
    for (;;) {
        const Launch* job;
        unsigned long long total;
        int n;
        {
            std::unique_lock<std::mutex> lock(p.mutex);
            p.start_cv.wait(lock, [&] { return p.stop || p.generation != seen; });
            if (p.stop) return;
            seen = p.generation;
            job = p.job;
            total = p.total_blocks;
            n = p.configured;
        }
        run_share(w, *job, total, n);
        {
            std::lock_guard<std::mutex> lock(p.mutex);
            if (--p.pending == 0) p.done_cv.notify_one();
        }
    }
}

void configure_pool(int n) {
    Pool& p = pool();
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    {
        std::lock_guard<std::mutex> lock(p.mutex);
        p.stop = true;
    }
    p.start_cv.notify_all();
    for (std::thread& t : p.threads) t.join();
    p.threads.clear();
    p.stop = false;
    while ((int)p.workers.size() < n) {
        p.workers.push_back(std::make_unique<Worker>());
        p.workers.back()->index = (int)p.workers.size() - 1;
    }
    // Workers beyond n are kept (idle) with their stacks, for the next time the count goes up.
    for (int i = 1; i < n; ++i) p.threads.emplace_back(worker_main, p.workers[i].get(), p.generation);
    p.configured = n;
}

void ensure_pool() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (pool().configured == 0) configure_pool((int)env_long("SIMT_THREADS", 1));
    });
}
}  // namespace

// ---- the resource table of the nvcc check, and the launch log it is checked against ----
struct KernelResources {
    std::string arch;
    int registers;
    long static_shared;
};
std::mutex g_resources_mutex;
std::map<std::string, std::vector<KernelResources>> g_resources;  // base name -> one entry per arch
std::string g_resources_path;
std::string g_launch_log_path;
std::vector<std::string> g_logged_launches;

// "ns::kernel<T, 4>" -> "kernel" (the name ptxas's table uses; instantiations share it and the
// table holds their largest numbers); "" for a parenthesized kernel expression.
std::string kernel_base_name(const char* name) {
    std::string s = name;
    if (s.empty() || s[0] == '(') return "";
    s = s.substr(0, s.find('<'));
    const size_t colons = s.rfind("::");
    if (colons != std::string::npos) s = s.substr(colons + 2);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    while (!s.empty() && s.front() == ' ') s.erase(0, 1);
    return s;
}

void log_launch(const Launch& L, size_t attribute) {
    std::lock_guard<std::mutex> lock(g_resources_mutex);
    if (g_launch_log_path.empty()) return;
    const unsigned long long threads = (unsigned long long)L.block.x * L.block.y * L.block.z;
    const std::string line = format("%s\t%llu\t%zu\t%lld\n", L.name, threads, L.shared_bytes,
                                    attribute == 0 ? -1LL : (long long)attribute);
    for (const std::string& seen : g_logged_launches)
        if (seen == line) return;
    g_logged_launches.push_back(line);
    if (FILE* f = fopen(g_launch_log_path.c_str(), "a")) {
        fputs(line.c_str(), f);
        fclose(f);
    }
}

// A GPU refuses a launch whose block needs more registers than an SM has (registers are given
// to warps in units of 256) or more dynamic shared memory than the kernel's limit, which is
// 48 KiB minus its static shared memory unless raised with cudaFuncSetAttribute.
bool check_launch_resources(const Launch& L, size_t attribute) {
    std::lock_guard<std::mutex> lock(g_resources_mutex);
    if (g_resources.empty()) return true;
    auto it = g_resources.find(kernel_base_name(L.name));
    if (it == g_resources.end()) return true;
    const unsigned long long threads = (unsigned long long)L.block.x * L.block.y * L.block.z;
    const unsigned long long warps = (threads + 31) / 32;
    for (const KernelResources& r : it->second) {
        const unsigned long long per_warp = ((unsigned long long)r.registers * 32 + 255) / 256 * 256;
        if (warps * per_warp > 65536) {
            report(cudaErrorLaunchOutOfResources,
                   format("simt: kernel '%s' launched with %llu threads per block: at %d registers per thread (ptxas, "
                          "%s) the block needs %llu registers, more than the SM's 65536 (too many resources requested "
                          "for launch; table %s)",
                          L.name, threads, r.registers, r.arch.c_str(), warps * per_warp, g_resources_path.c_str()));
            return false;
        }
        const long limit = attribute != 0 ? (long)attribute : (long)kDefaultDynamicShared - r.static_shared;
        if ((long)L.shared_bytes > limit) {
            report(cudaErrorInvalidValue,
                   format("simt: kernel '%s' launched with %zu bytes of dynamic shared memory; with its %ld bytes of "
                          "static shared memory (ptxas, %s) the limit is %ld bytes%s (table %s)",
                          L.name, L.shared_bytes, r.static_shared, r.arch.c_str(), limit,
                          attribute != 0 ? " (its cudaFuncAttributeMaxDynamicSharedMemorySize)" : "",
                          g_resources_path.c_str()));
            return false;
        }
    }
    return true;
}

bool validate_launch(const Launch& L) {
    const dim3 g = L.grid, b = L.block;
    const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    const char* why = nullptr;
    if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0) why = "a zero dimension";
    else if (threads > (unsigned long long)kMaxThreadsPerBlock) why = "more than 1024 threads per block";
    else if (b.x > 1024 || b.y > 1024 || b.z > 64) why = "block dimensions above (1024, 1024, 64)";
    else if (g.x > 2147483647u || g.y > 65535 || g.z > 65535) why = "grid dimensions above (2^31-1, 65535, 65535)";
    if (why != nullptr) {
        report(cudaErrorInvalidConfiguration,
               format("simt: invalid configuration for kernel '%s': grid (%u,%u,%u), block (%u,%u,%u): %s", L.name, g.x,
                      g.y, g.z, b.x, b.y, b.z, why));
        return false;
    }
    size_t limit = kDefaultDynamicShared, attribute = 0;
    {
        std::lock_guard<std::mutex> lock(g_attr_mutex);
        auto it = g_max_dynamic_shared.find(L.kernel);
        if (it != g_max_dynamic_shared.end()) limit = std::max(limit, it->second), attribute = it->second;
    }
    if (L.shared_bytes > limit) {
        report(cudaErrorInvalidValue,
               format("simt: kernel '%s' launched with %zu bytes of dynamic shared memory; the limit is %zu bytes%s",
                      L.name, L.shared_bytes, limit,
                      limit == kDefaultDynamicShared
                          ? " (raise it with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
                            "bytes), at most 163 KiB)"
                          : ""));
        return false;
    }
    if (!check_launch_resources(L, attribute)) return false;
    // Only launches that pass these checks go to the log the resource gate reads (the tests'
    // deliberately oversized launches are refused here, and their tests say so).
    log_launch(L, attribute);
    return true;
}

bool check_pointer_argument(const char* kernel, int index, const void* p) {
    if (!is_device_pointer(p)) {
        report(cudaErrorInvalidValue,
               format("simt: kernel '%s' argument %d is a host pointer (%p); kernels can only dereference device "
                      "memory",
                      kernel, index, p));
        return false;
    }
    if (find_allocation(p, 0).second == 0) {
        report(cudaErrorInvalidValue,
               format("simt: kernel '%s' argument %d (%p) points into device memory that is not allocated (freed?)",
                      kernel, index, p));
        return false;
    }
    return true;
}

void run_launch(const Launch& L) {
    if (tls_worker != nullptr && tls_worker->current != nullptr) {
        report(cudaErrorNotSupported,
               format("simt: kernel '%s' launched from device code (kernel '%s'): dynamic parallelism is not "
                      "supported",
                      L.name, tls_worker->launch->name));
        return;
    }
    std::lock_guard<std::mutex> launch_lock(g_launch_mutex);
    ensure_pool();
    DeviceAccess access;
    Pool& p = pool();
    const unsigned long long total = (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
    p.grid_failed.store(false);
    const int n = p.configured;
    const ProfileHooks* hooks = g_profile_hooks.load(std::memory_order_relaxed);
    if (hooks != nullptr) hooks->launch_begin(L);
#if SIMT_RACECHECK
    __tsan_release(&g_tsan_launch_start);
#endif
    if (n > 1 && total > 1) {
        {
            std::lock_guard<std::mutex> lock(p.mutex);
            p.job = &L;
            p.total_blocks = total;
            p.pending = n - 1;
            ++p.generation;
        }
        p.start_cv.notify_all();
        run_share(p.workers[0].get(), L, total, n);
        std::unique_lock<std::mutex> lock(p.mutex);
        p.done_cv.wait(lock, [&] { return p.pending == 0; });
    } else {
        run_share(p.workers[0].get(), L, total, 1);
    }
#if SIMT_RACECHECK
    __tsan_acquire(&g_tsan_launch_end);
#endif
    if (hooks != nullptr) hooks->launch_end(L);
    if (p.grid_failed.load()) {
        // Report the failure of the lowest-numbered failed block (deterministic for any worker count).
        Worker* first = nullptr;
        for (int i = 0; i < n; ++i) {
            Worker* w = p.workers[i].get();
            if (w->failed && (first == nullptr || w->block < first->block)) first = w;
        }
        for (auto& w : p.workers) w->failed = false;
        if (first != nullptr) report(cudaErrorLaunchFailure, first->error, /*async=*/true);
    }
}
}  // namespace detail

namespace detail {
void set_profile_hooks(const ProfileHooks* hooks) {
    std::lock_guard<std::mutex> launch_lock(g_launch_mutex);  // never while a launch runs
    g_profile_hooks.store(hooks);
}
void device_region(const char** lo, size_t* bytes) {
    *lo = region();
    *bytes = dmem().reserved;
}
// Profiled device memory operations outside kernels (memset, copies, cuRAND).
void profile_memory_op(MemoryOp op, size_t bytes) {
    if (const ProfileHooks* hooks = g_profile_hooks.load(std::memory_order_relaxed)) hooks->memory_op(op, bytes);
}
}  // namespace detail

void set_worker_threads(int n) {
    std::lock_guard<std::mutex> launch_lock(detail::g_launch_mutex);
    detail::configure_pool(n);
}
int worker_threads() {
    detail::ensure_pool();
    return detail::pool().configured;
}
void set_blas_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }
int available_cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}
void set_shuffle(unsigned long long seed) {
    detail::g_shuffle_init = true;
    detail::g_shuffle = seed;
}
unsigned long long shuffle_seed() { return detail::g_shuffle.load(); }
void set_strict_sync(bool on) { detail::g_strict_sync = on; }
bool strict_sync() { return detail::g_strict_sync.load(); }
bool racecheck() { return SIMT_RACECHECK != 0; }

void set_launch_log(const char* path) {
    std::lock_guard<std::mutex> lock(detail::g_resources_mutex);
    detail::g_launch_log_path = path != nullptr ? path : "";
    detail::g_logged_launches.clear();
}

// The table simt/ptxas_gate writes: '#' comment lines, then per kernel and architecture
// "kernel<TAB>arch<TAB>registers<TAB>stack<TAB>spill_stores<TAB>spill_loads<TAB>static_shared...".
// An empty path (or nullptr) unloads it.
int load_resource_table(const char* path) {
    std::lock_guard<std::mutex> lock(detail::g_resources_mutex);
    detail::g_resources.clear();
    detail::g_resources_path = path != nullptr ? path : "";
    if (path == nullptr || *path == 0) return 0;
    FILE* f = fopen(path, "r");
    if (f == nullptr) {
        fprintf(stderr, "simt: cannot read the resource table %s\n", path);
        return 0;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char name[512], arch[32];
        int registers = 0;
        long stack = 0, spill_stores = 0, spill_loads = 0, shared = 0;
        if (sscanf(line, "%511[^\t]\t%31[^\t]\t%d\t%ld\t%ld\t%ld\t%ld", name, arch, &registers, &stack, &spill_stores,
                   &spill_loads, &shared) == 7)
            detail::g_resources[name].push_back(detail::KernelResources{arch, registers, shared});
    }
    fclose(f);
    return (int)detail::g_resources.size();
}

namespace {
// SIMT_SHUFFLE is read when the program starts.
struct EnvInit {
    EnvInit() {
        long s = env_long("SIMT_SHUFFLE", 0);
        if (s != 0 && !detail::g_shuffle_init) detail::g_shuffle = (unsigned long long)s;
        if (env_long("SIMT_STRICT_SYNC", 1) == 0) detail::g_strict_sync = false;
        if (const char* log = getenv("SIMT_LAUNCH_LOG")) set_launch_log(log);
        if (const char* table = getenv("SIMT_RESOURCES"); table != nullptr && *table != 0) load_resource_table(table);
    }
} g_env_init;
}  // namespace

const char* backend_name() {
    static std::string name;
    name = format("CPU (SIMT layer, %d worker thread%s)", worker_threads(), worker_threads() == 1 ? "" : "s");
    return name.c_str();
}
}  // namespace simt

// =====================================================================================
// 7. Runtime API
// =====================================================================================
using simt::format;
using simt::report;

namespace {
bool host_range_ok(const void* p) { return !simt::is_device_pointer(p); }
}  // namespace

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    if (ptr == nullptr) return report(cudaErrorInvalidValue, "simt: cudaMalloc with a null result pointer");
    *ptr = nullptr;
    if (bytes == 0) return cudaSuccess;
    char* base = simt::region();
    simt::DeviceAccess access;
    simt::DeviceMemory& m = simt::dmem();
    size_t rounded = (bytes + simt::kAlign - 1) / simt::kAlign * simt::kAlign;
    size_t offset = 0;
    {
        std::lock_guard<std::recursive_mutex> lock(m.mutex);
        auto it = m.free_blocks.begin();
        while (it != m.free_blocks.end() && it->second < rounded) ++it;
        if (it == m.free_blocks.end())
            return report(cudaErrorMemoryAllocation,
                          format("simt: cudaMalloc of %zu bytes: out of device memory (SIMT_DEVICE_GIB)", bytes));
        offset = it->first;
        size_t remaining = it->second - rounded;
        m.free_blocks.erase(it);
        if (remaining > 0) m.free_blocks[offset + rounded] = remaining;
        m.allocations[offset] = bytes;
        m.rounded[offset] = rounded;
        size_t end = (offset + rounded + simt::kPage - 1) / simt::kPage * simt::kPage;
        if (end > m.committed) {
            simt::protect_range(base + m.committed, end - m.committed, true);  // we hold DeviceAccess
#if SIMT_ASAN
            __asan_poison_memory_region(base + m.committed, end - m.committed);
#endif
            m.committed = end;
        }
    }
#if SIMT_ASAN
    // Under ASan, device memory outside live allocations (the padding up to 256 bytes, freed
    // blocks) is poisoned, so kernels that overrun a buffer or use it after cudaFree are reported.
    __asan_unpoison_memory_region(base + offset, rounded);
#endif
    memset(base + offset, 0xFF, rounded);  // never-written memory reads as NaN / -1
#if SIMT_ASAN
    __asan_poison_memory_region(base + offset + bytes, rounded - bytes);
#endif
    *ptr = base + offset;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    if (ptr == nullptr) return cudaSuccess;
    simt::DeviceMemory& m = simt::dmem();
    char* base = m.base.load();
    if (!simt::is_device_pointer(ptr))
        return report(cudaErrorInvalidValue, format("simt: cudaFree(%p): not a device pointer", ptr));
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    size_t offset = (size_t)((char*)ptr - base);
    auto it = m.allocations.find(offset);
    if (it == m.allocations.end())
        return report(cudaErrorInvalidValue,
                      format("simt: cudaFree(%p): not the start of a live allocation (double free?)", ptr));
    size_t size = m.rounded[offset];
#if SIMT_ASAN
    __asan_poison_memory_region(ptr, size);
#endif
    m.allocations.erase(it);
    m.rounded.erase(offset);
    // Insert into the free list and merge with the neighbours.
    auto next = m.free_blocks.lower_bound(offset);
    if (next != m.free_blocks.end() && next->first == offset + size) {
        size += next->second;
        next = m.free_blocks.erase(next);
    }
    if (next != m.free_blocks.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == offset) {
            prev->second += size;
            offset = prev->first;
            size = prev->second;
        } else {
            m.free_blocks[offset] = size;
        }
    } else {
        m.free_blocks[offset] = size;
    }
    // Give big freed ranges back to the OS (they are refilled with 0xFF when allocated again).
    size_t lo = (offset + simt::kPage - 1) / simt::kPage * simt::kPage;
    size_t hi = std::min((offset + size) / simt::kPage * simt::kPage, m.committed);
    if (hi > lo && hi - lo >= (1u << 20)) madvise(base + lo, hi - lo, MADV_DONTNEED);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
    if (ptr == nullptr) return report(cudaErrorInvalidValue, "simt: cudaMallocHost with a null result pointer");
    *ptr = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    return *ptr || bytes == 0 ? cudaSuccess : report(cudaErrorMemoryAllocation, "simt: cudaMallocHost failed");
}
cudaError_t cudaFreeHost(void* ptr) {
    free(ptr);
    return cudaSuccess;
}

namespace {
const char* kind_name(cudaMemcpyKind kind) {
    switch (kind) {
        case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
        case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
        case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
        case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
        case cudaMemcpyDefault: return "cudaMemcpyDefault";
    }
    return "?";
}

// Validates one side of a copy: device memory must be one live allocation, host memory must not
// be in the device region.
cudaError_t check_side(const char* call, const char* side, const void* p, size_t bytes, bool device,
                       cudaMemcpyKind kind) {
    if (device) {
        if (!simt::is_device_pointer(p))
            return report(cudaErrorInvalidValue, format("simt: %s(%s): %s %p is not a device pointer", call,
                                                        kind_name(kind), side, p));
        if (!simt::inside_allocation(p, bytes))
            return report(cudaErrorInvalidValue,
                          format("simt: %s(%s): %s range [%p, +%zu bytes) is not inside one live cudaMalloc "
                                 "allocation",
                                 call, kind_name(kind), side, p, bytes));
    } else if (!host_range_ok(p)) {
        return report(cudaErrorInvalidValue,
                      format("simt: %s(%s): %s %p is a device pointer", call, kind_name(kind), side, p));
    }
    return cudaSuccess;
}

cudaError_t memcpy_impl(const char* call, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    if (dst == nullptr || src == nullptr)
        return report(cudaErrorInvalidValue, format("simt: %s with a null pointer", call));
    bool dst_dev, src_dev;
    switch (kind) {
        case cudaMemcpyHostToHost: dst_dev = false, src_dev = false; break;
        case cudaMemcpyHostToDevice: dst_dev = true, src_dev = false; break;
        case cudaMemcpyDeviceToHost: dst_dev = false, src_dev = true; break;
        case cudaMemcpyDeviceToDevice: dst_dev = true, src_dev = true; break;
        case cudaMemcpyDefault:
            dst_dev = simt::is_device_pointer(dst);
            src_dev = simt::is_device_pointer(src);
            break;
        default:
            return report(cudaErrorInvalidMemcpyDirection, format("simt: %s with invalid kind %d", call, (int)kind));
    }
    if (cudaError_t e = check_side(call, "destination", dst, bytes, dst_dev, kind)) return e;
    if (cudaError_t e = check_side(call, "source", src, bytes, src_dev, kind)) return e;
    if (src_dev && !dst_dev) simt::g_d2h_copies++;
    if (src_dev || dst_dev)
        simt::detail::profile_memory_op(src_dev && dst_dev ? simt::detail::MemoryOp::DeviceToDevice
                                        : src_dev          ? simt::detail::MemoryOp::DeviceToHost
                                                           : simt::detail::MemoryOp::HostToDevice,
                                        bytes);
    if (src_dev || dst_dev) {
        simt::DeviceAccess access;
        memmove(dst, src, bytes);
    } else {
        memmove(dst, src, bytes);
    }
    return cudaSuccess;
}
}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (cudaError_t e = simt::take_async_error()) return e;  // a blocking copy reports earlier kernel faults
    return memcpy_impl("cudaMemcpy", dst, src, bytes, kind);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
    return memcpy_impl("cudaMemcpyAsync", dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
    if (bytes == 0) return cudaSuccess;
    if (!simt::is_device_pointer(ptr) || !simt::inside_allocation(ptr, bytes))
        return report(cudaErrorInvalidValue,
                      format("simt: cudaMemset(%p, %d, %zu): not inside one live cudaMalloc allocation", ptr, value,
                             bytes));
    simt::detail::profile_memory_op(simt::detail::MemoryOp::Memset, bytes);
    simt::DeviceAccess access;
    memset(ptr, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    simt::region();
    simt::DeviceMemory& m = simt::dmem();
    std::lock_guard<std::recursive_mutex> lock(m.mutex);
    size_t used = 0;
    for (auto& a : m.rounded) used += a.second;
    if (free_bytes) *free_bytes = m.reserved - used;
    if (total_bytes) *total_bytes = m.reserved;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
    simt::g_syncs++;
    return simt::take_async_error();
}
cudaError_t cudaDeviceReset() { return cudaSuccess; }

cudaError_t cudaGetLastError() {
    std::lock_guard<std::mutex> lock(simt::g_error_mutex);
    cudaError_t e = simt::g_last_error;
    simt::g_last_error = cudaSuccess;
    simt::g_async_error = cudaSuccess;  // not sticky: one read clears it
    return e;
}
cudaError_t cudaPeekAtLastError() {
    std::lock_guard<std::mutex> lock(simt::g_error_mutex);
    return simt::g_last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInitializationError: return "cudaErrorInitializationError";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
        case cudaErrorAssert: return "cudaErrorAssert";
        case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInitializationError: return "initialization error";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorInvalidDeviceFunction: return "invalid device function";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorAssert: return "device-side assert triggered";
        case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
        case cudaErrorUnknown: return "unknown error";
    }
    return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* count) {
    if (count) *count = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    if (device) *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device != 0) return report(cudaErrorInvalidDevice, format("simt: cudaSetDevice(%d): only device 0", device));
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (prop == nullptr || device != 0) return report(cudaErrorInvalidValue, "simt: cudaGetDeviceProperties: bad argument");
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", simt::backend_name());
    simt::region();
    prop->totalGlobalMem = simt::dmem().reserved;
    prop->sharedMemPerBlock = simt::kDefaultDynamicShared;
    prop->sharedMemPerBlockOptin = simt::kMaxDynamicSharedOptin;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024, prop->maxThreadsDim[1] = 1024, prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 2147483647, prop->maxGridSize[1] = 65535, prop->maxGridSize[2] = 65535;
    prop->multiProcessorCount = simt::worker_threads();
    prop->major = 8;
    prop->minor = 0;
    return cudaSuccess;
}

struct CUstream_st {
    int unused;
};
struct CUevent_st {
    std::chrono::steady_clock::time_point time;
    bool recorded;
};

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
    if (stream == nullptr) return report(cudaErrorInvalidValue, "simt: cudaStreamCreate(nullptr)");
    *stream = new CUstream_st{0};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    simt::g_syncs++;
    return simt::take_async_error();
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
    if (event == nullptr) return report(cudaErrorInvalidValue, "simt: cudaEventCreate(nullptr)");
    *event = new CUevent_st{{}, false};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
    if (event == nullptr) return report(cudaErrorInvalidResourceHandle, "simt: cudaEventRecord(nullptr)");
    event->time = std::chrono::steady_clock::now();
    event->recorded = true;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    simt::g_syncs++;
    if (event == nullptr) return report(cudaErrorInvalidResourceHandle, "simt: cudaEventSynchronize(nullptr)");
    return simt::take_async_error();
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (ms == nullptr || start == nullptr || end == nullptr)
        return report(cudaErrorInvalidValue, "simt: cudaEventElapsedTime: null argument");
    if (!start->recorded || !end->recorded)
        return report(cudaErrorInvalidResourceHandle, "simt: cudaEventElapsedTime: event was never recorded");
    *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
    return cudaSuccess;
}

cudaError_t simt_func_set_attribute(const void* kernel, cudaFuncAttribute attribute, int value) {
    if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > simt::kMaxDynamicSharedOptin)
            return report(cudaErrorInvalidValue,
                          format("simt: cudaFuncSetAttribute: %d bytes of dynamic shared memory requested; the "
                                 "maximum is %zu",
                                 value, simt::kMaxDynamicSharedOptin));
        std::lock_guard<std::mutex> lock(simt::detail::g_attr_mutex);
        simt::detail::g_max_dynamic_shared[kernel] = (size_t)value;
        return cudaSuccess;
    }
    if (attribute == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
    return report(cudaErrorInvalidValue, format("simt: cudaFuncSetAttribute: unsupported attribute %d", (int)attribute));
}

// =====================================================================================
// 8. cuBLAS on OpenBLAS
// =====================================================================================
struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
    if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

namespace {
cublasStatus_t blas_error(const std::string& message) {
    fprintf(stderr, "%s\n", message.c_str());
    {
        std::lock_guard<std::mutex> lock(simt::g_error_mutex);
        simt::g_last_message = message;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

// A column-major rows x cols matrix with leading dimension ld, repeated `batch` times `stride`
// apart, must lie inside one live allocation.
cublasStatus_t check_matrix(const char* call, const char* name, const float* p, long rows, long cols, long ld,
                            long long stride, int batch) {
    if (rows == 0 || cols == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (!simt::is_device_pointer(p))
        return blas_error(format("simt: %s: %s = %p is not a device pointer (on a GPU this faults)", call, name,
                                 (const void*)p));
    long long last = (long long)(cols - 1) * ld + (rows - 1);
    long long lo = std::min(0LL, stride * (batch - 1)), hi = std::max(0LL, stride * (batch - 1)) + last;
    if (!simt::inside_allocation(p + lo, (size_t)(hi - lo + 1) * sizeof(float)))
        return blas_error(format("simt: %s: matrix %s (%ld x %ld, ld %ld%s) reaches outside its cudaMalloc "
                                 "allocation",
                                 call, name, rows, cols, ld, batch > 1 ? ", batched" : ""));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t gemm_checked(const char* call, cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const float* alpha, const float* A, int lda,
                            long long strideA, const float* B, int ldb, long long strideB, const float* beta, float* C,
                            int ldc, long long strideC, int batch, const std::source_location& site) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
        return blas_error(format("simt: %s: only CUBLAS_OP_N and CUBLAS_OP_T are supported", call));
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return blas_error(format("simt: %s: negative size (m %d, n %d, k %d, batch %d)", call, m, n, k, batch));
    const int rows_a = transa == CUBLAS_OP_N ? m : k, cols_a = transa == CUBLAS_OP_N ? k : m;
    const int rows_b = transb == CUBLAS_OP_N ? k : n, cols_b = transb == CUBLAS_OP_N ? n : k;
    if (lda < std::max(1, rows_a))
        return blas_error(format("simt: %s: lda = %d < max(1, %s) = %d", call, lda, transa == CUBLAS_OP_N ? "m" : "k",
                                 std::max(1, rows_a)));
    if (ldb < std::max(1, rows_b))
        return blas_error(format("simt: %s: ldb = %d < max(1, %s) = %d", call, ldb, transb == CUBLAS_OP_N ? "k" : "n",
                                 std::max(1, rows_b)));
    if (ldc < std::max(1, m)) return blas_error(format("simt: %s: ldc = %d < max(1, m) = %d", call, ldc, std::max(1, m)));
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (alpha == nullptr || beta == nullptr || simt::is_device_pointer(alpha) || simt::is_device_pointer(beta))
        return blas_error(format("simt: %s: alpha and beta must be host pointers (pointer mode host)", call));
    if (k > 0) {
        if (cublasStatus_t s = check_matrix(call, "A", A, rows_a, cols_a, lda, strideA, batch)) return s;
        if (cublasStatus_t s = check_matrix(call, "B", B, rows_b, cols_b, ldb, strideB, batch)) return s;
    }
    if (cublasStatus_t s = check_matrix(call, "C", C, m, n, ldc, strideC, batch)) return s;

    const float a = *alpha, b = *beta;
    if (const simt::detail::ProfileHooks* hooks = simt::detail::g_profile_hooks.load(std::memory_order_relaxed))
        hooks->gemm(simt::detail::GemmCall{call, transa == CUBLAS_OP_T, transb == CUBLAS_OP_T, m, n, k, batch,
                                           b != 0.0f, handle->math == CUBLAS_TF32_TENSOR_OP_MATH, site});
    simt::DeviceAccess access;
    for (int i = 0; i < batch; ++i) {
        float* c = C + strideC * i;
        if (k == 0 || a == 0.0f) {
            // C = beta * C (beta == 0 writes zeros without reading C, as BLAS does).
            for (int col = 0; col < n; ++col)
                for (int row = 0; row < m; ++row) {
                    float& x = c[(long)col * ldc + row];
                    x = b == 0.0f ? 0.0f : b * x;
                }
            continue;
        }
        cblas_sgemm(CblasColMajor, transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, a, A + strideA * i, lda,
                    B + strideB * i, ldb, b, c, ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc, std::source_location site) {
    return gemm_checked("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0,
                        1, site);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb, long long strideB,
                                         const float* beta, float* C, int ldc, long long strideC, int batchCount,
                                         std::source_location site) {
    return gemm_checked("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
                        strideB, beta, C, ldc, strideC, batchCount, site);
}

// =====================================================================================
// 9. cuRAND
// =====================================================================================
namespace {
curandStatus_t check_rng_output(const char* call, const float* out, size_t n) {
    if (n == 0) return CURAND_STATUS_SUCCESS;
    if (!simt::is_device_pointer(out) || !simt::inside_allocation(out, n * sizeof(float))) {
        std::string message = format("simt: %s: output [%p, +%zu floats) is not inside one live cudaMalloc "
                                     "allocation",
                                     call, (const void*)out, n);
        fprintf(stderr, "%s\n", message.c_str());
        std::lock_guard<std::mutex> lock(simt::g_error_mutex);
        simt::g_last_message = message;
        return CURAND_STATUS_LAUNCH_FAILURE;
    }
    simt::detail::profile_memory_op(simt::detail::MemoryOp::RandomFill, n * sizeof(float));  // a kernel on a GPU
    return CURAND_STATUS_SUCCESS;
}
}  // namespace

#ifndef SIMT_NO_CURAND
// The real libcurand C functions, reached under other C++ names through asm labels (our C++
// wrappers below take the plain names).
extern "C" curandStatus_t simt_real_curand_normal(curandGenerator_t, float*, size_t, float, float) __asm__(
    "curandGenerateNormal");
extern "C" curandStatus_t simt_real_curand_uniform(curandGenerator_t, float*, size_t) __asm__("curandGenerateUniform");

curandStatus_t curandGenerateNormal(curandGenerator_t generator, float* out, size_t n, float mean, float stddev) {
    if (n % 2 != 0) return CURAND_STATUS_LENGTH_NOT_MULTIPLE;  // the GPU generator insists (Box-Muller pairs)
    if (curandStatus_t s = check_rng_output("curandGenerateNormal", out, n)) return s;
    simt::DeviceAccess access;
    return simt_real_curand_normal(generator, out, n, mean, stddev);
}
curandStatus_t curandGenerateUniform(curandGenerator_t generator, float* out, size_t n) {
    if (curandStatus_t s = check_rng_output("curandGenerateUniform", out, n)) return s;
    simt::DeviceAccess access;
    return simt_real_curand_uniform(generator, out, n);
}
#else
// Built-in fallback when libcurand is not installed: same API, different (but fixed) numbers.
struct curandGenerator_st {
    unsigned long long seed = 0, offset = 0;
};
namespace {
unsigned long long mix(unsigned long long x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
// The i-th number of the stream, uniform in (0, 1].
float uniform_at(const curandGenerator_st* g, unsigned long long i) {
    unsigned long long bits = mix(g->seed * 0x9e3779b97f4a7c15ull + mix(g->offset + i + 1));
    return (float)(((bits >> 40) + 1) * (1.0 / 16777216.0));
}
void fallback_note() {
    static std::once_flag once;
    std::call_once(once, [] {
        fprintf(stderr, "simt: built without libcurand (SIMT_NO_CURAND): using a built-in generator; random numbers "
                        "differ from cuRAND's\n");
    });
}
}  // namespace
extern "C" curandStatus_t curandCreateGeneratorHost(curandGenerator_t* generator, curandRngType_t) {
    fallback_note();
    if (generator == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    *generator = new curandGenerator_st();
    return CURAND_STATUS_SUCCESS;
}
extern "C" curandStatus_t curandDestroyGenerator(curandGenerator_t generator) {
    if (generator == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    delete generator;
    return CURAND_STATUS_SUCCESS;
}
extern "C" curandStatus_t curandSetPseudoRandomGeneratorSeed(curandGenerator_t generator, unsigned long long seed) {
    if (generator == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    generator->seed = seed;  // like libcurand, the stream position (offset) is kept
    return CURAND_STATUS_SUCCESS;
}
extern "C" curandStatus_t curandSetGeneratorOffset(curandGenerator_t generator, unsigned long long offset) {
    if (generator == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    generator->offset = offset;
    return CURAND_STATUS_SUCCESS;
}
curandStatus_t curandGenerateNormal(curandGenerator_t g, float* out, size_t n, float mean, float stddev) {
    if (g == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    if (n % 2 != 0) return CURAND_STATUS_LENGTH_NOT_MULTIPLE;
    if (curandStatus_t s = check_rng_output("curandGenerateNormal", out, n)) return s;
    simt::DeviceAccess access;
    for (size_t i = 0; i < n; i += 2) {  // Box-Muller
        float u1 = uniform_at(g, i), u2 = uniform_at(g, i + 1);
        float r = sqrtf(-2.0f * logf(u1)), t = 6.2831853071795864f * u2;
        out[i] = mean + stddev * r * cosf(t);
        out[i + 1] = mean + stddev * r * sinf(t);
    }
    g->offset += n;
    return CURAND_STATUS_SUCCESS;
}
curandStatus_t curandGenerateUniform(curandGenerator_t g, float* out, size_t n) {
    if (g == nullptr) return CURAND_STATUS_NOT_INITIALIZED;
    if (curandStatus_t s = check_rng_output("curandGenerateUniform", out, n)) return s;
    simt::DeviceAccess access;
    for (size_t i = 0; i < n; ++i) out[i] = uniform_at(g, i);
    g->offset += n;
    return CURAND_STATUS_SUCCESS;
}
#endif
