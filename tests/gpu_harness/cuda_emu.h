// A CPU runtime for radint's CUDA kernels, for tests only: g++ compiles a kernel module's own
// source (the text handed to cupy.RawModule, headers inlined) after this header, and
// emu::launch runs a kernel over its grid as CUDA would: every thread of a block is a fiber,
// a warp's 32 fibers take turns, and a warp shuffle (__shfl_*_sync) is a rendezvous of the
// lanes its mask names. So the kernels' index arithmetic, grid sizing, output layout and warp
// reductions run here as written, not as a harness re-implements them.
//
// A kernel touching memory it may not (the fake CuPy puts an inaccessible page right after every
// device allocation) fails its launch with the thread and the address, as compute-sanitizer would
// report it; the fiber is abandoned, the process lives on.
//
// Checked as a GPU would only be by luck: a shuffle whose mask names a lane that has exited or
// waits at another shuffle, lanes of one shuffle disagreeing on mask/width/type, a width that
// is not a power of two <= 32, a read of a lane outside the mask, a kernel called with the
// wrong number or sizes of arguments. Each fails the launch with a message.
//
// A block past the kernel's __launch_bounds__ (or 1024 threads), or an empty grid, fails.
//
// __syncwarp(mask) is a rendezvous like a shuffle (lanes may meet at different __syncwarp
// calls, as on Volta and later). Dynamic shared memory (`extern __shared__ T name[];`, which
// the fake CuPy rewrites into a pointer to emu::dynamic_shared()) is one buffer per block of the
// launch's shared_mem bytes: filled with 0xff bytes when each block starts (NaN doubles, huge
// integers: CUDA does not clear it), ending at an inaccessible page, and refused past 48 KiB
// unless the kernel's max_dynamic_shared_size_bytes allows more, as on a GPU.
// Between two rendezvous a warp's lanes run one after another, lane 0 first; with
// RADINT_FAKE_CUPY_LANE_ORDER=reverse lane 31 first, with =random:SEED in an order shuffled
// anew at every rendezvous (a GPU interleaves its lanes' instructions: a race that needs
// neither end first shows only so). A kernel whose lanes read each other's shared or global
// writes without a __syncwarp between gives different results in different orders: that is
// how the tests look for intra-warp races.
//
// Not modelled: __syncthreads and static __shared__ arrays (radint's kernels use neither),
// races between warps, and timing. Warps and blocks run one after another, so a kernel relying
// on inter-block order is not caught.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <type_traits>
#include <utility>

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// Compile the kernel source's device branches, as NVRTC does.
#define __CUDACC_RTC__ 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

// The running lane's coordinates: the scheduler sets them before it switches to a lane.
static thread_local uint3 threadIdx, blockIdx;
static thread_local dim3 blockDim, gridDim;
static const int warpSize = 32;

namespace emu {

constexpr int kWarp = 32;
constexpr std::size_t kStack = 512 * 1024;  // radint's fit kernel keeps a few KB per thread

enum State { kReady, kAtShuffle, kExited };
enum Mode { kDown, kUp, kXor, kIdx, kSync };

struct Lane {
    void* sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
    // kStack bytes above an inaccessible page, mapped on first use (pages touched as used): a
    // lane overflowing its stack faults, and the launch fails, instead of corrupting memory.
    unsigned char* stack = nullptr;
    uint3 tid{};
    State state = kExited;
    // The shuffle the lane waits at, and its result.
    const void* site = nullptr;  // the shuffle's call site
    unsigned mask = 0;
    int mode = 0, arg = 0, width = 0;
    std::size_t size = 0;
    unsigned char value[8] = {}, result[8] = {};
};

struct Warp {
    Lane lanes[kWarp];
    int n = 0;
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_ctx;
#endif
    const std::function<void()>* body = nullptr;
    bool reverse = false;  // resume lanes from the last (RADINT_FAKE_CUPY_LANE_ORDER=reverse)
    unsigned long long shuffle = 0;  // xorshift state of =random:SEED; 0: no shuffling
    char error[512] = {};
};

// The running block's dynamic shared memory (null when the launch asked for none).
static thread_local unsigned char* g_shared = nullptr;
static void* dynamic_shared() { return g_shared; }

static thread_local Warp* g_warp = nullptr;

// One per host thread, its lane stacks allocated on first use and kept.
static Warp& the_warp() {
    static thread_local Warp warp;
    return warp;
}
static thread_local int g_lane = 0;

#if defined(__x86_64__)
// switch_stack(&save, load): push the callee-saved registers, keep the stack pointer in *save,
// continue on `load` (a stack left by switch_stack or prepared by start_stack).
extern "C" void emu_switch_stack(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .hidden emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
)");
#endif

static void to_scheduler(Lane& lane) {
#if defined(__x86_64__)
    emu_switch_stack(&lane.sp, g_warp->sched_sp);
#else
    swapcontext(&lane.ctx, &g_warp->sched_ctx);
#endif
}

static void lane_main() {
    Warp* w = g_warp;
    (*w->body)();
    Lane& lane = w->lanes[g_lane];
    lane.state = kExited;
    to_scheduler(lane);  // never resumed
}

static void start_lane(Lane& lane) {
    if (!lane.stack) {
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
        void* base = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) std::abort();  // no memory for a test's lane stack
        mprotect(base, page, PROT_NONE);
        lane.stack = static_cast<unsigned char*>(base) + page;
    }
#if defined(__x86_64__)
    // As if switch_stack had saved this lane just before `call lane_main`: six registers, then
    // lane_main as the return address, entered with rsp + 8 16-byte aligned.
    auto top = reinterpret_cast<std::uintptr_t>(lane.stack + kStack) & ~std::uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;  // lane_main's own return address: it never returns
    *--sp = reinterpret_cast<void*>(&lane_main);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    lane.sp = sp;
#else
    getcontext(&lane.ctx);
    lane.ctx.uc_stack.ss_sp = lane.stack;
    lane.ctx.uc_stack.ss_size = kStack;
    lane.ctx.uc_link = nullptr;
    makecontext(&lane.ctx, &lane_main, 0);
#endif
    lane.state = kReady;
}

static void resume(Warp& w, int i) {
    g_lane = i;
    threadIdx = w.lanes[i].tid;
#if defined(__x86_64__)
    emu_switch_stack(&w.sched_sp, w.lanes[i].sp);
#else
    swapcontext(&w.sched_ctx, &w.lanes[i].ctx);
#endif
}

template <typename... A>
static bool fail(Warp& w, const char* fmt, A... a) {
    std::snprintf(w.error, sizeof w.error, fmt, a...);
    return false;
}

// Whether lanes a and b wait at the same shuffle (call site, mask, mode, width, value size);
// a __syncwarp matches any __syncwarp of the same mask.
static bool same_shuffle(const Lane& a, const Lane& b) {
    return b.state == kAtShuffle && (b.site == a.site || a.mode == kSync) && b.mask == a.mask &&
           b.mode == a.mode && b.width == a.width && b.size == a.size;
}

// Source lane of lane i's shuffle, as CUDA defines it (down/up/idx stay in the lane's
// width-group; xor may read an earlier group, a later one gives the lane's own value).
static int source_lane(const Lane& b, int i) {
    const int seg = i & ~(b.width - 1), pos = i - seg;
    switch (b.mode) {
        case kDown: return pos + b.arg < b.width ? i + b.arg : i;
        case kUp: return pos >= b.arg ? i - b.arg : i;
        case kXor: {
            const int j = i ^ (b.arg & (kWarp - 1));
            return j <= seg + b.width - 1 ? j : i;
        }
        case kSync: return i;
        default: return seg + (b.arg & (b.width - 1));
    }
}

// Every lane that is not done waits at a shuffle. Each shuffle whose mask's lanes all wait at
// it is carried out (lanes of other masks may wait elsewhere: divergent code, valid since
// Volta); if none can be, the lanes meet at different shuffles: a deadlock on a GPU.
static bool exchange(Warp& w) {
    for (int i = 0; i < w.n; ++i) {
        const Lane& a = w.lanes[i];
        if (a.state != kAtShuffle) continue;
        if (!((a.mask >> i) & 1u))
            return fail(w, "lane %d waits at a shuffle whose mask 0x%08x does not name it", i,
                        a.mask);
        if (a.width <= 0 || a.width > kWarp || (a.width & (a.width - 1)))
            return fail(w, "shuffle width %d is not a power of two <= 32", a.width);
        for (int j = 0; j < kWarp; ++j) {
            if (!((a.mask >> j) & 1u)) continue;
            if (j >= w.n)
                return fail(w, "a shuffle's mask 0x%08x names lane %d, past the block's last thread",
                            a.mask, j);
            if (w.lanes[j].state == kExited)
                return fail(w, "a shuffle's or __syncwarp's mask 0x%08x names lane %d, which has exited", a.mask, j);
        }
    }
    unsigned ready = 0;  // lanes whose shuffle is carried out this round
    for (int i = 0; i < w.n; ++i) {
        const Lane& a = w.lanes[i];
        if (a.state != kAtShuffle || ((ready >> i) & 1u)) continue;
        bool complete = true;
        for (int j = 0; j < w.n && complete; ++j)
            if ((a.mask >> j) & 1u) complete = same_shuffle(a, w.lanes[j]);
        if (complete) ready |= a.mask;
    }
    if (!ready) {
        for (int i = 0; i < w.n; ++i) {
            const Lane& a = w.lanes[i];
            if (a.state != kAtShuffle) continue;
            for (int j = 0; j < w.n; ++j) {
                const Lane& b = w.lanes[j];
                if (((a.mask >> j) & 1u) && !same_shuffle(a, b))
                    return fail(w,
                                "lanes %d and %d meet at different shuffles (site %p vs %p, mask "
                                "0x%08x vs 0x%08x, width %d vs %d, %zu vs %zu bytes)",
                                i, j, a.site, b.site, a.mask, b.mask, a.width, b.width, a.size,
                                b.size);
            }
        }
        return fail(w, "the lanes wait at shuffles none of which can complete");
    }
    for (int i = 0; i < w.n; ++i) {
        Lane& b = w.lanes[i];
        if (!((ready >> i) & 1u)) continue;
        const int src = source_lane(b, i);
        if (!((b.mask >> src) & 1u))
            return fail(w, "lane %d reads lane %d, which the shuffle's mask 0x%08x leaves out", i,
                        src, b.mask);
        std::memcpy(b.result, w.lanes[src].value, b.size);
    }
    for (int i = 0; i < w.n; ++i)
        if ((ready >> i) & 1u) w.lanes[i].state = kReady;
    return true;
}

// Runs the warp's lanes to completion; false (with w.error) on a broken shuffle.
static bool run_warp(Warp& w) {
    for (;;) {
        int order[kWarp];
        for (int k = 0; k < w.n; ++k) order[k] = w.reverse ? w.n - 1 - k : k;
        for (int k = w.n - 1; w.shuffle && k > 0; --k) {  // Fisher–Yates
            w.shuffle ^= w.shuffle << 13;
            w.shuffle ^= w.shuffle >> 7;
            w.shuffle ^= w.shuffle << 17;
            const int j = int(w.shuffle % (unsigned long long)(k + 1));
            const int t = order[k];
            order[k] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < w.n; ++k) {
            const int i = order[k];
            if (w.lanes[i].state == kReady) resume(w, i);
        }
        bool waiting = false;
        for (int i = 0; i < w.n; ++i) waiting |= w.lanes[i].state == kAtShuffle;
        if (!waiting) return true;
        if (!exchange(w)) return false;
    }
}

template <typename T>
static T shuffle(const void* site, Mode mode, unsigned mask, T var, int arg, int width) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "shuffles move values of at most 8 bytes");
    Warp& w = *g_warp;
    Lane& lane = w.lanes[g_lane];
    lane.state = kAtShuffle;
    lane.site = site;
    lane.mask = mask;
    lane.mode = mode;
    lane.arg = arg;
    lane.width = width;
    lane.size = sizeof(T);
    std::memcpy(lane.value, &var, sizeof(T));
    to_scheduler(lane);
    T out;
    std::memcpy(&out, lane.result, sizeof(T));
    return out;
}

static void sync_warp(unsigned mask) {
    Warp& w = *g_warp;
    Lane& lane = w.lanes[g_lane];
    lane.state = kAtShuffle;
    lane.site = nullptr;
    lane.mask = mask;
    lane.mode = kSync;
    lane.arg = 0;
    lane.width = kWarp;
    lane.size = 0;
    to_scheduler(lane);
}

// Dynamic shared memory of `bytes` (16-byte aligned) ending at most 15 bytes before an
// inaccessible page; kept and grown per host thread.
static unsigned char* shared_buffer(std::size_t bytes) {
    static thread_local unsigned char* base = nullptr;
    static thread_local std::size_t mapped = 0;  // accessible bytes below the guard page
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    const std::size_t need = (bytes + 15) & ~std::size_t(15);
    if (need > mapped) {
        if (base) munmap(base, mapped + page);
        mapped = (need + page - 1) / page * page;
        void* m = mmap(nullptr, mapped + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) std::abort();  // no memory for a test's shared memory
        base = static_cast<unsigned char*>(m);
        mprotect(base + mapped, page, PROT_NONE);
    }
    return base + mapped - need;
}

// A SIGSEGV / SIGBUS inside a launch jumps back to it; outside one the previous handler (e.g.
// Python's faulthandler) gets the signal: ours steps aside and the access faults again.
static thread_local sigjmp_buf g_fault_jump;
static thread_local volatile sig_atomic_t g_in_launch = 0;
static thread_local void* volatile g_fault_address = nullptr;
static struct sigaction g_previous[2];

static void on_fault(int sig, siginfo_t* info, void*) {
    if (!g_in_launch) {
        sigaction(sig, &g_previous[sig == SIGBUS], nullptr);
        return;
    }
    g_fault_address = info->si_addr;
    siglongjmp(g_fault_jump, 1);
}

static void catch_faults() {
    static std::once_flag installed;
    std::call_once(installed, [] {
        struct sigaction action {};
        action.sa_sigaction = &on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &g_previous[0]);
        sigaction(SIGBUS, &action, &g_previous[1]);
    });
    // The handler needs a stack of its own: the fault may be a lane's stack overflowing.
    static thread_local std::unique_ptr<unsigned char[]> alt;
    if (!alt) {
        alt.reset(new unsigned char[1 << 16]);
        stack_t st{};
        st.ss_sp = alt.get();
        st.ss_size = 1 << 16;
        sigaltstack(&st, nullptr);
    }
}

template <typename... P, std::size_t... I>
static void call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<P*>(args[I])...);
}

// Launch `kernel` on grid × block with CUDA's argument array (one pointer per parameter, to a
// value of that parameter's size). 0 on success, else -1 with the reason in `err`.
template <typename... P>
int launch(void (*kernel)(P...), unsigned max_threads, const unsigned* grid,
           const unsigned* block, unsigned long long shared_bytes,
           unsigned long long max_shared_bytes, void** args, const unsigned long long* sizes,
           int n_args, char* err, int err_len) {
    const std::size_t want[] = {sizeof(P)..., 0};
    const unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    if (threads == 0 || threads > max_threads || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) {
        // A GPU refuses these launches (too many resources / invalid configuration).
        std::snprintf(err, err_len,
                      "grid (%u, %u, %u) of blocks (%u, %u, %u): a block of 1-%u threads (its "
                      "__launch_bounds__, else 1024) and a non-empty grid are needed",
                      grid[0], grid[1], grid[2], block[0], block[1], block[2], max_threads);
        return -1;
    }
    const unsigned long long shared_limit = max_shared_bytes > 49152 ? max_shared_bytes : 49152;
    if (shared_bytes > shared_limit) {
        std::snprintf(err, err_len,
                      "%llu bytes of dynamic shared memory: past the %llu a block may have (48 "
                      "KiB unless the kernel's max_dynamic_shared_size_bytes allows more)",
                      shared_bytes, shared_limit);
        return -1;
    }
    if (n_args != int(sizeof...(P))) {
        std::snprintf(err, err_len, "%d arguments for a kernel of %d parameters", n_args,
                      int(sizeof...(P)));
        return -1;
    }
    for (int i = 0; i < n_args; ++i) {
        if (sizes[i] != want[i]) {
            std::snprintf(err, err_len, "argument %d is %llu bytes, the parameter %zu", i, sizes[i],
                          want[i]);
            return -1;
        }
    }
    const std::function<void()> body = [&] {
        call(kernel, args, std::index_sequence_for<P...>{});
    };
    Warp& warp = the_warp();
    g_warp = &warp;
    warp.body = &body;
    warp.error[0] = 0;
    const char* order = std::getenv("RADINT_FAKE_CUPY_LANE_ORDER");
    warp.reverse = order && std::strcmp(order, "reverse") == 0;
    // Seeded once per launch, so a launch is repeatable; never 0 (which means "no shuffling").
    warp.shuffle = order && std::strncmp(order, "random:", 7) == 0
                       ? std::strtoull(order + 7, nullptr, 10) * 2654435761ull + 88172645463325252ull
                       : 0;
    unsigned char* shared = shared_bytes ? shared_buffer(std::size_t(shared_bytes)) : nullptr;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const unsigned long long per_block = 1ull * block[0] * block[1] * block[2];
    catch_faults();
    volatile int rc = 0;
    volatile unsigned bx = 0, by = 0, bz = 0;
    volatile unsigned long long t0 = 0;
    if (sigsetjmp(g_fault_jump, 1)) {
        g_in_launch = 0;
        const uint3 t = threadIdx;
        std::snprintf(err, err_len,
                      "block (%u, %u, %u), thread (%u, %u, %u): invalid memory access at %p (past "
                      "the end of a device allocation, a bad pointer, or the thread's stack, "
                      "512 KiB here, overflowing)",
                      bx, by, bz, t.x, t.y, t.z, g_fault_address);
        return -1;
    }
    g_in_launch = 1;
    for (bz = 0; bz < grid[2] && rc == 0; ++bz)
        for (by = 0; by < grid[1] && rc == 0; ++by)
            for (bx = 0; bx < grid[0] && rc == 0; ++bx) {
                blockIdx = {bx, by, bz};
                if (shared) std::memset(shared, 0xff, std::size_t(shared_bytes));
                g_shared = shared;
                for (t0 = 0; t0 < per_block && rc == 0; t0 += kWarp) {
                    warp.n = int(per_block - t0 < kWarp ? per_block - t0 : kWarp);
                    for (int i = 0; i < warp.n; ++i) {
                        const unsigned long long t = t0 + i;
                        warp.lanes[i].tid = {unsigned(t % block[0]),
                                             unsigned(t / block[0] % block[1]),
                                             unsigned(t / (1ull * block[0] * block[1]))};
                        start_lane(warp.lanes[i]);
                    }
                    for (int i = warp.n; i < kWarp; ++i) warp.lanes[i].state = kExited;
                    if (!run_warp(warp)) {
                        std::snprintf(err, err_len, "block (%u, %u, %u), threads %llu-%llu: %s",
                                      bx, by, bz, t0, t0 + warp.n - 1, warp.error);
                        rc = -1;
                    }
                }
            }
    g_in_launch = 0;
    g_shared = nullptr;
    return rc;
}

}  // namespace emu

__attribute__((noinline)) inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::sync_warp(mask);
}
template <typename T>
__attribute__((noinline)) T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::shuffle<T>(__builtin_return_address(0), emu::kDown, mask, var, int(delta), width);
}
template <typename T>
__attribute__((noinline)) T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::shuffle<T>(__builtin_return_address(0), emu::kUp, mask, var, int(delta), width);
}
template <typename T>
__attribute__((noinline)) T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return emu::shuffle<T>(__builtin_return_address(0), emu::kXor, mask, var, lane_mask, width);
}
template <typename T>
__attribute__((noinline)) T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return emu::shuffle<T>(__builtin_return_address(0), emu::kIdx, mask, var, src_lane, width);
}

// One exported launcher per kernel, for ctypes: emu_launch_<kernel>; MAX_THREADS is its
// __launch_bounds__ (else CUDA's 1024 threads a block).
#define EMU_EXPORT(NAME, MAX_THREADS)                                                          \
    extern "C" int emu_launch_##NAME(const unsigned* grid, const unsigned* block,              \
                                     unsigned long long shared_bytes,                          \
                                     unsigned long long max_shared_bytes, void** args,         \
                                     const unsigned long long* sizes, int n_args, char* err,   \
                                     int err_len) {                                            \
        return emu::launch(&NAME, MAX_THREADS, grid, block, shared_bytes, max_shared_bytes,    \
                           args, sizes, n_args, err, err_len);                                 \
    }
