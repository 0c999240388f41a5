// simt/profile_hooks.cpp: the runtime of the profile build's instrumentation (simt/profile.h).
//
// The profile build compiles the kernel code with g++ -fsanitize=thread but links no TSan runtime:
// these definitions take its place. Every load and store of the instrumented code calls
// __tsan_readN / __tsan_writeN (or a _range variant) with its address first, and every atomic is
// a call that must also perform the operation. Each forwards the access to simt::profile::record,
// which ignores it unless a profiled kernel is running and the address is device memory.
//
// This file must be compiled without the instrumentation, and linked only into the profile build:
// anywhere else these symbols would shadow the real ThreadSanitizer runtime.
#include <cstddef>

#include "simt/profile.h"

using simt::profile::Access;
using simt::profile::record;

namespace {
// The atomics: the operation itself (sequentially consistent whatever the requested order: stronger
// is always correct) and its record as one atomic access.
template <class T>
T atomic_load(const volatile T* a) {
    record((const void*)a, sizeof(T), Access::Read);
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);
}
template <class T>
void atomic_store(volatile T* a, T v) {
    record((const void*)a, sizeof(T), Access::Write);
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);
}
template <class T>
bool atomic_compare_exchange(volatile T* a, T* expected, T desired) {
    record((const void*)a, sizeof(T), Access::Atomic);
    return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
enum class Rmw { Exchange, Add, Sub, And, Or, Xor, Nand };
template <class T>
T atomic_rmw(volatile T* a, T v, Rmw op) {
    record((const void*)a, sizeof(T), Access::Atomic);
    switch (op) {
        case Rmw::Exchange: return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);
        case Rmw::Add: return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
        case Rmw::Sub: return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);
        case Rmw::And: return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);
        case Rmw::Or: return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);
        case Rmw::Xor: return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);
        case Rmw::Nand: return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);
    }
    return v;
}
}  // namespace

extern "C" {

// ---- plain loads and stores ----
void __tsan_read1(void* p) { record(p, 1, Access::Read); }
void __tsan_read2(void* p) { record(p, 2, Access::Read); }
void __tsan_read4(void* p) { record(p, 4, Access::Read); }
void __tsan_read8(void* p) { record(p, 8, Access::Read); }
void __tsan_read16(void* p) { record(p, 16, Access::Read); }
void __tsan_write1(void* p) { record(p, 1, Access::Write); }
void __tsan_write2(void* p) { record(p, 2, Access::Write); }
void __tsan_write4(void* p) { record(p, 4, Access::Write); }
void __tsan_write8(void* p) { record(p, 8, Access::Write); }
void __tsan_write16(void* p) { record(p, 16, Access::Write); }
void __tsan_unaligned_read2(const void* p) { record(p, 2, Access::Read); }
void __tsan_unaligned_read4(const void* p) { record(p, 4, Access::Read); }
void __tsan_unaligned_read8(const void* p) { record(p, 8, Access::Read); }
void __tsan_unaligned_read16(const void* p) { record(p, 16, Access::Read); }
void __tsan_unaligned_write2(void* p) { record(p, 2, Access::Write); }
void __tsan_unaligned_write4(void* p) { record(p, 4, Access::Write); }
void __tsan_unaligned_write8(void* p) { record(p, 8, Access::Write); }
void __tsan_unaligned_write16(void* p) { record(p, 16, Access::Write); }
void __tsan_read_range(void* p, unsigned long size) { record(p, (unsigned)size, Access::Read); }
void __tsan_write_range(void* p, unsigned long size) { record(p, (unsigned)size, Access::Write); }
void __tsan_volatile_read4(void* p) { record(p, 4, Access::Read); }
void __tsan_volatile_write4(void* p) { record(p, 4, Access::Write); }

// ---- what the pass emits besides accesses: nothing to do here ----
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
// simt.h's __threadfence announces itself to TSan in a -fsanitize=thread build
void __tsan_acquire(void*) {}
void __tsan_release(void*) {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---- atomics, per width (the memory-order arguments are ignored: everything is seq_cst) ----
char __tsan_atomic8_load(const volatile char* a, int) { return atomic_load(a); }
short __tsan_atomic16_load(const volatile short* a, int) { return atomic_load(a); }
int __tsan_atomic32_load(const volatile int* a, int) { return atomic_load(a); }
long __tsan_atomic64_load(const volatile long* a, int) { return atomic_load(a); }
void __tsan_atomic8_store(volatile char* a, char v, int) { atomic_store(a, v); }
void __tsan_atomic16_store(volatile short* a, short v, int) { atomic_store(a, v); }
void __tsan_atomic32_store(volatile int* a, int v, int) { atomic_store(a, v); }
void __tsan_atomic64_store(volatile long* a, long v, int) { atomic_store(a, v); }

char __tsan_atomic8_exchange(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Exchange); }
short __tsan_atomic16_exchange(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Exchange); }
int __tsan_atomic32_exchange(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Exchange); }
long __tsan_atomic64_exchange(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Exchange); }
char __tsan_atomic8_fetch_add(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Add); }
short __tsan_atomic16_fetch_add(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Add); }
int __tsan_atomic32_fetch_add(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Add); }
long __tsan_atomic64_fetch_add(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Add); }
char __tsan_atomic8_fetch_sub(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Sub); }
short __tsan_atomic16_fetch_sub(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Sub); }
int __tsan_atomic32_fetch_sub(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Sub); }
long __tsan_atomic64_fetch_sub(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Sub); }
char __tsan_atomic8_fetch_and(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::And); }
short __tsan_atomic16_fetch_and(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::And); }
int __tsan_atomic32_fetch_and(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::And); }
long __tsan_atomic64_fetch_and(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::And); }
char __tsan_atomic8_fetch_or(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Or); }
short __tsan_atomic16_fetch_or(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Or); }
int __tsan_atomic32_fetch_or(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Or); }
long __tsan_atomic64_fetch_or(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Or); }
char __tsan_atomic8_fetch_xor(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Xor); }
short __tsan_atomic16_fetch_xor(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Xor); }
int __tsan_atomic32_fetch_xor(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Xor); }
long __tsan_atomic64_fetch_xor(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Xor); }
char __tsan_atomic8_fetch_nand(volatile char* a, char v, int) { return atomic_rmw(a, v, Rmw::Nand); }
short __tsan_atomic16_fetch_nand(volatile short* a, short v, int) { return atomic_rmw(a, v, Rmw::Nand); }
int __tsan_atomic32_fetch_nand(volatile int* a, int v, int) { return atomic_rmw(a, v, Rmw::Nand); }
long __tsan_atomic64_fetch_nand(volatile long* a, long v, int) { return atomic_rmw(a, v, Rmw::Nand); }

int __tsan_atomic8_compare_exchange_strong(volatile char* a, char* c, char v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic16_compare_exchange_strong(volatile short* a, short* c, short v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic32_compare_exchange_strong(volatile int* a, int* c, int v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic64_compare_exchange_strong(volatile long* a, long* c, long v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic8_compare_exchange_weak(volatile char* a, char* c, char v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic16_compare_exchange_weak(volatile short* a, short* c, short v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic32_compare_exchange_weak(volatile int* a, int* c, int v, int, int) { return atomic_compare_exchange(a, c, v); }
int __tsan_atomic64_compare_exchange_weak(volatile long* a, long* c, long v, int, int) { return atomic_compare_exchange(a, c, v); }
char __tsan_atomic8_compare_exchange_val(volatile char* a, char c, char v, int, int) { atomic_compare_exchange(a, &c, v); return c; }
short __tsan_atomic16_compare_exchange_val(volatile short* a, short c, short v, int, int) { atomic_compare_exchange(a, &c, v); return c; }
int __tsan_atomic32_compare_exchange_val(volatile int* a, int c, int v, int, int) { atomic_compare_exchange(a, &c, v); return c; }
long __tsan_atomic64_compare_exchange_val(volatile long* a, long c, long v, int, int) { atomic_compare_exchange(a, &c, v); return c; }

}  // extern "C"
