/* internal.h: the types every tier shares and each file's exports, grouped by
 * file.  Layer rule: a tier calls only the tiers below it
 *   api → pcache → central → pageheap → pagemap/meta → os → diag/config
 * (stats reads all of them).  Nothing here calls malloc. */
#ifndef TA_INTERNAL_H
#define TA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define TA_HAVE_SINGLE_THREADED 1
#endif
#endif

/* Everything declared below is the library's own (-fvisibility=hidden
 * defines it hidden): declared so too, its variables are read with one
 * instruction, not through the GOT (or a relaxed lea and a load). */
#pragma GCC visibility push(hidden)

#define TA_EXPORT __attribute__((visibility("default")))
/* The entry points of the fast paths each start a cache line: where the
 * linker happened to put malloc and free (the same instructions at other
 * offsets) moved the fastpath rows by 5-20% (pinned, 8 interleaved rounds:
 * 16 B 1.05x, 64 B 1.22x, 1 KiB 1.16x, random sizes 1.04x faster aligned). */
#define TA_HOT_ENTRY __attribute__((aligned(64)))
#define TA_LIKELY(x) __builtin_expect(!!(x), 1)
#define TA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TA_NOINLINE __attribute__((noinline))
#define TA_COLD __attribute__((cold, noinline))
#define TA_ALWAYS_INLINE static inline __attribute__((always_inline))
/* TA_TSAN: built for ThreadSanitizer (gcc or clang), where the fast paths'
 * plain reads of flags written once become atomic loads */
#if defined(__SANITIZE_THREAD__)
#define TA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TA_TSAN 1
#endif
#endif
#ifndef TA_TSAN
#define TA_TSAN 0
#endif

/* ---- system calls ------------------------------------------------------------
 * tieralloc's own calls to the kernel (mappings, futexes, membarrier, the CPU
 * mask, /proc reads) go to it directly, not through libc's wrappers: those lie
 * in pages of libc's text that a program may never run, and the kernel maps
 * each page it faults in with its 64 KiB neighbourhood (fault-around), so
 * calling them at start made every process 60-100 KiB larger.  ta_sys
 * returns the kernel's answer, -errno on failure, and never touches errno.
 * Built for a sanitizer, or off x86-64, the calls go through libc, whose
 * wrappers the sanitizers watch. */
#if defined(__x86_64__) && !TA_TSAN && !defined(__SANITIZE_ADDRESS__)
#define TA_SYS_RAW 1
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#undef TA_SYS_RAW
#endif
#endif
#endif
#ifdef TA_SYS_RAW
static inline long ta_sys(long nr, long a, long b, long c, long d, long e, long f) {
    register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
    long ret;
    __asm__ __volatile__("syscall"
                         : "=a"(ret)
                         : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                         : "rcx", "r11", "memory");
    return ret;
}
#else
long ta_sys(long nr, long a, long b, long c, long d, long e, long f); /* (os.c: libc's syscall) */
#endif
#define ta_sys0(nr) ta_sys((nr), 0, 0, 0, 0, 0, 0)
#define ta_sys1(nr, a) ta_sys((nr), (long)(a), 0, 0, 0, 0, 0)
#define ta_sys2(nr, a, b) ta_sys((nr), (long)(a), (long)(b), 0, 0, 0, 0)
#define ta_sys3(nr, a, b, c) ta_sys((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define ta_sys4(nr, a, b, c, d) ta_sys((nr), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define ta_sys6(nr, a, b, c, d, e, f) ta_sys((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

/* ---- geometry -------------------------------------------------------------- */
#define TA_PAGE_SHIFT 13 /* 8 KiB pages: the unit of spans and of the pagemap */
#define TA_PAGE_SIZE ((size_t)1 << TA_PAGE_SHIFT)
#define TA_ALIGN 16                   /* every block is 16-byte aligned */
#define TA_MAX_SMALL ((size_t)256 << 10) /* larger requests are whole spans */
#define TA_MAX_CLASSES 128            /* class 0 means "not a small block" */
/* Largest request we ever try to serve: anything above this is ENOMEM, so
 * page arithmetic can never overflow. */
#define TA_MAX_REQUEST (((size_t)1 << 47) - ((size_t)1 << 30))

/* ---- the hardened build (./configure --enable-hardened) ------------------------
 * Every span in use ends with a guard page (PROT_NONE, never resident) that is
 * not part of its blocks; fresh spans hand out their objects in a shuffled
 * order; freed small blocks wait in a quarantine before they can be reused.
 * In the default build TA_GUARD_PAGES is 0 and none of it is compiled. */
#ifdef TA_HARDENED
#define TA_GUARD_PAGES 1
#else
#define TA_GUARD_PAGES 0
#endif

/* ---- locks ----------------------------------------------------------------- */
/* A lock that spins briefly before it sleeps: the central and transfer locks
 * are held for a few hundred cycles, so a waiter that sleeps at once (futex)
 * pays a system call and a wake-up for nothing.  state: 0 free, 1 held, 2 held
 * with sleepers.  Every lock has a rank, its place in the one lock order
 * (init.c): a thread holding a lock takes only locks of higher rank (or of the
 * same rank at a higher address: fork takes whole arrays in order).  The debug
 * build (--enable-debug) checks this on every acquisition (lock.c). */
enum ta_lock_rank {
    TA_RANK_INIT = 1,
    TA_RANK_SAMPLE,
    TA_RANK_QUARANTINE, /* quarantine shards (hardened build) */
    TA_RANK_REGISTRY, /* thread-cache registry */
    TA_RANK_CPU,      /* a CPU's cache */
    TA_RANK_TRANSFER, /* transfer cache shards */
    TA_RANK_CLASS,    /* central span lists */
    TA_RANK_PAGEHEAP,
    TA_RANK_PAGEMAP,
    TA_RANK_TRACE,    /* trace.c: buffer list, address -> id shards */
    TA_RANK_META,
};
typedef struct ta_lock {
    int state;
    int rank;
} ta_lock_t;
#define TA_LOCK_INIT(rank) {0, (rank)}
/* the rank of a lock made at run time: read by the debug build's witness
 * only, so a release build does not write it (an array of locks nobody takes
 * yet stays untouched, not faulted in at every start) */
#ifdef TA_DEBUG
#define ta_lock_set_rank(l, r) ((l)->rank = (r))
#else
#define ta_lock_set_rank(l, r) ((void)(l), (void)(r))
#endif
void ta_lock_wait(ta_lock_t *l);
void ta_lock_wake(ta_lock_t *l);
/* let go of l taken with an atomic, waking a sleeper if there is one */
static inline void ta_lock_release_atomic(ta_lock_t *l) {
    if (TA_UNLIKELY(__atomic_exchange_n(&l->state, 0, __ATOMIC_RELEASE) == 2)) ta_lock_wake(l);
}
/* The fork gate (init.c, lock.c): closed by fork_prepare, opened after fork.
 * A thread that takes a lock with an atomic while it holds none (ta_lock_depth
 * 0) and finds the gate closed lets the lock go at once and waits until the
 * gate opens (ta_fork_gate_wait); one that holds locks already goes on, so
 * that fork_prepare, which waits until each lock is free in the lock order
 * (ta_lock_drain), sees every operation under way end.  0 open, 1 closed, 2
 * closed with threads waiting. */
extern struct ta_gate_line { int v; } __attribute__((aligned(64))) ta_fork_gate_line; /* a line of its own */
#define ta_fork_gate (ta_fork_gate_line.v)
extern __thread int ta_lock_depth __attribute__((tls_model("initial-exec"))); /* locks held, taken with atomics */
void ta_fork_gate_wait(void);
void ta_lock_drain(ta_lock_t *l); /* wait until nobody holds l (fork_prepare) */
#ifdef TA_DEBUG
void ta_witness_acquire(const ta_lock_t *l, bool try_only);
void ta_witness_release(const ta_lock_t *l);
void ta_witness_forget_all(void); /* fork child: every lock was started afresh */
#else
#define ta_witness_acquire(l, t) ((void)0)
#define ta_witness_release(l) ((void)0)
#define ta_witness_forget_all() ((void)0)
#endif
/* While the process has one thread (glibc's __libc_single_threaded: true at
 * start, false from the first pthread_create on, before the new thread runs)
 * nobody can contend for a lock: it is taken and let go with plain stores, as
 * glibc does for its arenas.  No lock is ever held across the creation of a
 * thread, so a lock taken that way is let go before a second thread exists. */
static inline bool ta_single_threaded(void) {
#ifdef TA_HAVE_SINGLE_THREADED
    return __atomic_load_n(&__libc_single_threaded, __ATOMIC_RELAXED);
#else
    return false;
#endif
}
/* Solo mode (lock.c): while the program has one thread of its own (the solo
 * thread) besides tieralloc's background thread, the solo thread takes locks
 * with plain stores too, as if the process had one thread.  It counts the
 * locks it holds so in ta_solo_held (a plain store, then a compiler fence,
 * then a look at ta_solo_suspend); any other thread that needs a lock first
 * raises ta_solo_suspend, makes every running thread pass a memory barrier
 * (membarrier) and waits until ta_solo_held is 0: from then on the solo
 * thread uses atomics.  The background thread does so around each of its
 * passes and lets go after; any other thread ends solo mode for good. */
extern int ta_solo_mode;    /* 1: solo mode on (ta_solo_me names the thread) */
extern int ta_solo_suspend; /* > 0: someone else may take locks (the solo thread uses atomics) */
extern int ta_solo_held;    /* locks the solo thread holds in solo mode (written by it only) */
extern __thread bool ta_solo_me __attribute__((tls_model("initial-exec")));
extern __thread int ta_solo_window __attribute__((tls_model("initial-exec")));
void ta_solo_end_for_good(void); /* another thread takes a lock outside a window */
bool ta_solo_start(void);        /* the one thread, before it creates the background thread */
void ta_solo_pause(void);        /* another thread's window: it may take locks until ta_solo_resume */
void ta_solo_resume(void);
void ta_solo_after_fork(bool child);

/* May this thread take a lock with plain stores (solo mode on and this is the
 * solo thread)?  True: it holds one lock more in solo mode. */
static inline bool ta_solo_enter(void) {
    if (TA_LIKELY(!__atomic_load_n(&ta_solo_mode, __ATOMIC_RELAXED))) return false;
    if (!ta_solo_me) {
        if (!ta_solo_window) ta_solo_end_for_good();
        return false;
    }
    int held = ta_solo_held;
    __atomic_store_n(&ta_solo_held, held + 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the store, then the load (membarrier does the rest) */
    /* holding one already: nobody else takes locks until it is let go */
    if (held || !__atomic_load_n(&ta_solo_suspend, __ATOMIC_ACQUIRE)) return true;
    __atomic_store_n(&ta_solo_held, held, __ATOMIC_RELEASE);
    return false;
}
/* Does this thread hold locks in solo mode?  Then nobody else takes or
 * waits for a lock until it lets them go. */
static inline bool ta_solo_holding(void) {
    return TA_UNLIKELY(__atomic_load_n(&ta_solo_mode, __ATOMIC_RELAXED)) && ta_solo_me && ta_solo_held;
}
/* one lock taken in solo mode is let go (after its state was stored) */
static inline void ta_solo_leave(void) { __atomic_store_n(&ta_solo_held, ta_solo_held - 1, __ATOMIC_RELEASE); }

/* How a lock was taken (ta_lock_how), so that the holder lets it go
 * (ta_unlock_how) without asking again: with a plain store (the process had
 * one thread), a plain store and one lock less held in solo mode, or an
 * atomic exchange. */
enum { TA_HELD_PLAIN, TA_HELD_SOLO, TA_HELD_ATOMIC };
static inline int ta_lock_how(ta_lock_t *l) {
    ta_witness_acquire(l, false);
    int how = ta_single_threaded() ? TA_HELD_PLAIN : ta_solo_enter() ? TA_HELD_SOLO : TA_HELD_ATOMIC;
    if (how != TA_HELD_ATOMIC && !__atomic_load_n(&l->state, __ATOMIC_RELAXED)) {
        __atomic_store_n(&l->state, 1, __ATOMIC_RELAXED);
        return how;
    }
    /* (a lock found held in solo mode stays counted: its unlock is a solo one) */
    for (;;) {
        int z = 0;
        if (TA_UNLIKELY(!__atomic_compare_exchange_n(&l->state, &z, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)))
            ta_lock_wait(l);
        if (how == TA_HELD_SOLO) return how;
        /* (the store of the state, then the gate's load: fork_prepare stores
         * the gate, then loads the states) */
        if (TA_LIKELY(!__atomic_load_n(&ta_fork_gate, __ATOMIC_SEQ_CST)) || ta_lock_depth) break;
        ta_lock_release_atomic(l);
        ta_fork_gate_wait();
    }
    ta_lock_depth++;
    return TA_HELD_ATOMIC;
}
static inline void ta_lock(ta_lock_t *l) { (void)ta_lock_how(l); }
static inline bool ta_trylock(ta_lock_t *l) {
    int z = 0;
    bool solo = false;
    if (ta_single_threaded() || (solo = ta_solo_enter())) { /* plain stores */
        if (__atomic_load_n(&l->state, __ATOMIC_RELAXED)) {
            if (solo) ta_solo_leave();
            return false;
        }
        __atomic_store_n(&l->state, 1, __ATOMIC_RELAXED);
    } else if (!__atomic_compare_exchange_n(&l->state, &z, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
        return false;
    } else if (TA_UNLIKELY(__atomic_load_n(&ta_fork_gate, __ATOMIC_SEQ_CST)) && !ta_lock_depth) { /* a fork */
        ta_lock_release_atomic(l);
        return false;
    } else {
        ta_lock_depth++;
    }
    ta_witness_acquire(l, true);
    return true;
}
/* Let go of a lock ta_lock_how took (how: its answer).  Only for a lock held
 * where no thread is created: one taken while the process had one thread is
 * let go with a plain store. */
static inline void ta_unlock_how(ta_lock_t *l, int how) {
    ta_witness_release(l);
    if (TA_LIKELY(how != TA_HELD_ATOMIC)) { /* nobody waits: the state is 1 */
        __atomic_store_n(&l->state, 0, __ATOMIC_RELAXED);
        if (how == TA_HELD_SOLO) ta_solo_leave();
        return;
    }
    ta_lock_depth--;
    ta_lock_release_atomic(l);
}
static inline void ta_unlock(ta_lock_t *l) {
    ta_unlock_how(l, ta_single_threaded() ? TA_HELD_PLAIN : ta_solo_holding() ? TA_HELD_SOLO : TA_HELD_ATOMIC);
}
/* *_lock_all's step: take l (a snapshot), or, for fork, with the gate closed,
 * wait until nobody holds it and take nothing (init.c). */
static inline void ta_lock_or_drain(ta_lock_t *l, bool fork) {
    if (fork)
        ta_lock_drain(l);
    else
        ta_lock(l);
}
/* Let go of l after the *_lock_all that took it (a snapshot), or, in the child
 * of fork, start it afresh: its other threads are gone, and one may have held
 * it (a thread that took it as its first while the gate was closed, about to
 * let go).  The child writes only a lock found held: every other one is left
 * as it is, its page not copied; and when no other thread could hold one
 * (init.c), not even read (each unlock_all loop covers hundreds). */
enum { TA_FORK_LONE, TA_FORK_SOLO, TA_FORK_LOCKED }; /* what fork_prepare did (init.c) */
extern int ta_fork_mode;
static inline void ta_lock_after_fork(ta_lock_t *l, bool child) {
    if (!child)
        ta_unlock(l);
    else if (ta_fork_mode == TA_FORK_LOCKED && __atomic_load_n(&l->state, __ATOMIC_RELAXED))
        l->state = 0;
}

#ifdef TA_DEBUG
#define TA_ASSERT(c) ((c) ? (void)0 : ta_assert_fail(#c, __FILE__, __LINE__))
#else
#define TA_ASSERT(c) ((void)0)
#endif

/* ---- diag.c: output without malloc ---------------------------------------- */
/* A small formatter into a caller's buffer: %s %d %u %zu %lu %llu %x %p %%
 * (and the l/ll/z modifiers on d, u and x). Returns the length written. */
size_t ta_format(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
size_t ta_vformat(char *buf, size_t cap, const char *fmt, __builtin_va_list ap);
/* write(2) all of s, through EINTR and short writes; errno is kept.  False
 * when a write fails (or writes nothing). */
bool ta_write_fd(int fd, const char *s, size_t n);
/* The one buffered writer: a buffer (on the caller's stack) and an fd.  Text
 * is appended with ta_out_put / ta_out_printf; a full buffer and
 * ta_out_flush send it with ta_write_fd, or to sink when that is set (e.g.
 * fwrite to a caller's FILE).  After a failed write the rest is dropped and
 * ta_out_flush returns -1.  One ta_out_printf writes at most TA_OUT_BUF - 1
 * characters. */
#define TA_OUT_BUF 4096
typedef struct ta_out {
    int fd;
    bool failed;
    int (*sink)(void *arg, const char *s, size_t n); /* 0 on success, else -1 */
    void *sink_arg;
    size_t len;
    char buf[TA_OUT_BUF];
} ta_out_t;
void ta_out_init(ta_out_t *o, int fd);
void ta_out_put(ta_out_t *o, const char *s, size_t n);
void ta_out_printf(ta_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ta_out_vprintf(ta_out_t *o, const char *fmt, __builtin_va_list ap);
int ta_out_flush(ta_out_t *o); /* 0, or -1 if any write failed */
/* one ta_out_printf to fd, flushed */
void ta_printf_fd(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "tieralloc: <message>\n" on stderr, then abort() */
void ta_fatal(const char *fmt, ...) __attribute__((noreturn, cold, format(printf, 1, 2)));
void ta_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn, cold));

/* ---- config.c: every TIERALLOC_* option, read once from environ ------------- */
#define TA_PATH_MAX 1024                         /* longest report path kept */
#define TA_DEFAULT_SAMPLE_BYTES ((uint64_t)512 << 10)
enum { TA_CFG_STATS_OFF = 0, TA_CFG_STATS_TEXT = 1, TA_CFG_STATS_JSON = 2 };
/* tier 1's caches: per thread (0), per CPU from the start (1), or per thread
 * until the process has more than percpu_threads threads with a cache, then
 * per CPU (auto, the default); per CPU only where rseq works (pcache.c) */
enum { TA_PERCPU_NEVER = 0, TA_PERCPU_ALWAYS = 1, TA_PERCPU_AUTO = 2 };
typedef struct ta_config {
    uint64_t decay_ms;        /* TIERALLOC_DECAY_MS: free pages older than this go back to the OS */
    uint64_t cache_bytes;     /* TIERALLOC_CACHE_BYTES: budget of all thread caches together */
    uint64_t thread_cache_max;/* most one thread's cache may hold */
    int ncpu;                 /* CPUs this process may run on */
    int percpu;               /* TIERALLOC_PERCPU: TA_PERCPU_* (default auto) */
    uint32_t percpu_threads;  /* TIERALLOC_PERCPU_THREADS: auto switches past this many thread caches */
    bool background;          /* TIERALLOC_BACKGROUND (default 1): a thread runs the decay */
    uint64_t cpu_cache_bytes; /* TIERALLOC_CPU_CACHE_BYTES: capacity of one CPU's cache */
    uint64_t quarantine_bytes;/* TIERALLOC_QUARANTINE_BYTES: freed small blocks held per shard (hardened build) */
    uint64_t sample_bytes;    /* TIERALLOC_SAMPLE_BYTES: mean bytes between samples (0: off) */
    bool sample_set;          /* TIERALLOC_SAMPLE_BYTES is in the environment */
    bool profile_set;         /* TIERALLOC_PROFILE is in the environment (and honoured) */
    bool secure;              /* AT_SECURE: the output options below were ignored */
    int stats;                /* TIERALLOC_STATS: TA_CFG_STATS_OFF, _TEXT (=1) or _JSON (=json:PATH) */
    char stats_json_path[TA_PATH_MAX]; /* the PATH of json:PATH ("" if none) */
    char profile_path[TA_PATH_MAX];    /* TIERALLOC_PROFILE ("" if none) */
    char trace_path[TA_PATH_MAX];      /* TIERALLOC_TRACE ("" if none) */
} ta_config_t;
extern ta_config_t ta_cfg;
/* Read the options (at init, once); ta_config_read does it from env, for a
 * process in secure-execution mode when secure is true (tests call it). */
void ta_config_init(void);
/* ---- init.c: the background thread ----------------------------------------
 * Started lazily (ta_background_kick, from a malloc's slow path with no lock
 * held, never from a free) the first time free pages wait for the decay in a
 * heap a decay period old; every decay_ms / 4 it lets idle caches drain and
 * runs the page heap's decay pass.  Not in a child after fork: a child that
 * lives a decay period starts its own. */
enum { TA_BG_NONE, TA_BG_STARTING, TA_BG_RUNNING, TA_BG_FAILED };
extern int ta_bg_state; /* TA_BG_NONE: not started (yet) */
void ta_background_start(void);
static inline bool ta_background_unstarted(void) {
    return ta_cfg.background && __atomic_load_n(&ta_bg_state, __ATOMIC_RELAXED) == TA_BG_NONE;
}
static inline void ta_background_kick(void) {
    if (TA_UNLIKELY(ta_background_unstarted())) ta_background_start();
}
/* the decay work of tiers 1 and 2 (pcache.c), for the background thread */
void ta_pcache_decay_tick(void);
void ta_config_read(char **env, int ncpu, bool secure);
/* value of environment variable `name` without allocating, or NULL */
const char *ta_getenv(const char *name);
/* "123", "64k", "8M", "1g" → bytes; def when the text is malformed or too big */
uint64_t ta_parse_size(const char *s, uint64_t def);
/* 64 bits from the kernel's AT_RANDOM bytes (read without a misaligned load);
 * for keys and seeds */
uint64_t ta_random_seed(void);

/* ---- os.c: tier 4 ---------------------------------------------------------- */
/* Map `size` bytes aligned to `align` (a power of two), zeroed and not yet
 * resident; NULL on failure.  The memory is accounted (no MAP_NORESERVE), so
 * the kernel's overcommit policy decides: a size the machine cannot back fails
 * here.  For memory that backs blocks, and for dense records. */
void *ta_os_map(size_t size, size_t align);
/* The same, trying the address hint first (so that successive mappings are
 * adjacent and leave no holes); the hint is ignored when it is taken. */
void *ta_os_map_near(void *hint, size_t size, size_t align);
/* MAP_NORESERVE: for large sparse tables (pagemap leaves) whose untouched
 * parts never become memory.  Never for block memory. */
void *ta_os_map_sparse(size_t size, size_t align);
/* false when the kernel refused (a split past vm.max_map_count) */
bool ta_os_unmap(void *p, size_t size);
/* Make whole OS pages inaccessible (access false: PROT_NONE) or readable and
 * writable again; false when the kernel refused (vm.max_map_count). */
bool ta_os_protect(void *p, size_t size, bool access);
/* Give the pages back to the OS (they read as zero afterwards). */
void ta_os_release(void *p, size_t size);
/* Move the pages of [from, from + size) to the start of `to`, a mapping of
 * ours of to_size >= size bytes (ta_os_map), without copying them (mremap
 * moves their page-table entries): from stays mapped, zero and not resident;
 * the rest of `to` is zero.  false: nothing moved (the kernel lacks
 * MREMAP_DONTUNMAP, from lies in two mappings, no memory), from intact and
 * `to` given up (unmapped; the caller must not use it). */
bool ta_os_move(void *from, size_t size, void *to, size_t to_size);
/* Can ta_os_move move at all (the kernel, and the bound on moves)? */
bool ta_os_can_move(void);
/* Bytes of [p, p + size) resident now (mincore: OS pages present, the shared
 * zero page included where a read mapped it); p page aligned.  For statistics. */
uint64_t ta_os_resident(const void *p, size_t size);
/* Read up to size bytes of a small file (/proc, /sys) with raw system calls
 * (libc's open and read are cancellation points, and lie in pages of libc a
 * program may never touch): the bytes read, -1 if it cannot be read. */
long ta_os_read_file(const char *path, void *buf, size_t size);
uint64_t ta_os_now_ms(void);
/* Write *p without changing it (an atomic add of 0; p: a pointer to an integer
 * or pointer), so that its page, when a process start finds it untouched
 * (BSS or fresh metadata), faults once: a first read maps the shared zero page
 * and the first write then copies it, two faults where a first write makes
 * one.  For the few records a start reads before it writes them. */
#define ta_touch_for_write(p) ((void)__atomic_fetch_add((p), 0, __ATOMIC_RELAXED))
/* Ask for p's line, to be written soon.  (gcc 12 at -O2 drops a
 * __builtin_prefetch from central.c's loop, as dead code: an asm stays.) */
#if defined(__x86_64__)
#define ta_prefetch_write(p) __asm__ __volatile__("prefetchw %0" : : "m"(*(const char *)(p)))
#else
#define ta_prefetch_write(p) __builtin_prefetch((p), 1)
#endif
/* A pass once per period across threads (the decay ticks): true for the one
 * caller that claims the period that has run out at now.  The first call
 * starts the first period (a process's start has nothing old to pass over). */
static inline bool ta_period_claim(uint64_t *last_ms, uint64_t now, uint64_t period) {
    uint64_t last = __atomic_load_n(last_ms, __ATOMIC_RELAXED);
    if (TA_UNLIKELY(!last)) {
        __atomic_compare_exchange_n(last_ms, &last, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        return false;
    }
    return now - last >= period &&
           __atomic_compare_exchange_n(last_ms, &last, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
typedef struct ta_os_stats {
    uint64_t mapped_bytes;    /* currently mapped */
    uint64_t released_bytes;  /* cumulative bytes given back with madvise */
    uint64_t n_mmap, n_munmap, n_madvise;
    uint64_t n_moved;         /* ta_os_move's that moved (blocks realloc moved without a copy) */
} ta_os_stats_t;
void ta_os_stats(ta_os_stats_t *out);

/* ---- meta.c: metadata allocator (spans, caches) over the OS tier ---------- */
/* Fixed-size object pools carved from OS chunks; never returned to the OS. */
/* zeroed, 64-aligned; NULL when the OS refuses memory (every caller must turn
 * that into a failed allocation) */
void *ta_meta_alloc(size_t size);
/* A large metadata region of its own (cache slabs), mapped and counted as
 * metadata; its pages become resident only as they are written; NULL on failure. */
void *ta_meta_map(size_t size, size_t align);
/* Records bump-allocated from OS chunks.  The chunks stay mapped (a stale
 * pagemap entry may still point at a span record), but malloc_trim gives the
 * pages of span-record slabs that are all free back to the OS (madvise; they
 * read as zero) and reuses those slabs first (ta_meta_trim). */
void *ta_meta_alloc(size_t size); /* zeroed, 16-aligned; aborts on OOM (metadata is tiny) */
uint64_t ta_meta_bytes(void);
uint64_t ta_meta_resident(void); /* of ta_meta_bytes, resident now (statistics; takes the metadata lock) */
/* span records come from their own free list */
struct ta_span;
struct ta_span *ta_span_new(void); /* zeroed; NULL when out of memory */
void ta_span_delete(struct ta_span *s);
/* Give back to the OS the slabs of span records that are all free (malloc_trim);
 * returns bytes released. */
size_t ta_meta_trim(void);
/* Per-object state bytes of a small span (n objects, n <= TA_STATES_MAX) of
 * central shard `shard`, zeroed; NULL when out of memory.  See pageheap.c. */
#define TA_STATES_MAX 512
uint8_t *ta_meta_states_new(size_t n, uint32_t shard);
/* The shard of the span an object belongs to, from its state byte's address
 * alone: a shard's arrays lie in 4 KiB pages whose address says it, in bits
 * TA_STATES_SHARD_SHIFT and up (meta.c), so that free tells another shard's
 * object from its own with no load (TA_SLAB_SHARD_CHECK, pcache.h). */
#define TA_STATES_SHARD_SHIFT 12
#define TA_STATES_SHARD_MASK ((uintptr_t)3 << TA_STATES_SHARD_SHIFT) /* shards 0..3 (central's MAX_SHARDS) */
static inline uint32_t ta_states_shard(const uint8_t *state) {
    return (uint32_t)(((uintptr_t)state & TA_STATES_SHARD_MASK) >> TA_STATES_SHARD_SHIFT);
}
void ta_meta_states_delete(uint8_t *p, size_t n);
void ta_meta_lock_all(bool fork);
void ta_meta_unlock_all(bool child);

/* ---- pagemap.c: page number → span and size class ---------------------- */
/* Two-level radix tree over 48-bit addresses: a static root of leaf pointers;
 * each leaf covers 2^18 pages (2 GiB) and holds the span and a 16-byte entry
 * per page.  For a page of a small-class span the entry's info word packs
 * what free() needs:
 *   bits 0..7 the class, bits 8..15 the page's index in its span, bits 16..63
 *   the address of the span's object states (one byte per object, pageheap.c);
 * 0 for pages of large spans and free spans.  Beside it, for free() alone,
 * the class's division magic (ta_object_index), so that free() goes from p to
 * its state byte with one load's latency (no second lookup by class): the
 * offset in the span from p's low bits and the page index, a multiply, the
 * states' address from a shift.  16 bytes a page: an entry to a page was 32
 * (the span's first byte and the states' address as words of their own, a
 * subtract instead of the unpacking), and the smaller one took
 * fastpath_random 881 -> 805 ns an iteration (medians of 6 paired rounds;
 * fewer loads in free) with one size unchanged, and the entries of a heap take
 * half the cache.
 * So free() of a small block reads the entry and the object's state byte,
 * never the block itself. */
#define TA_PM_LEAF_BITS 18
#define TA_PM_ROOT_BITS (48 - TA_PAGE_SHIFT - TA_PM_LEAF_BITS)
typedef struct ta_pm_entry {
    uint64_t info;
    uint64_t magic;  /* ta_class_magic[class]; 0 exactly when info is 0 (free's test) */
} __attribute__((aligned(16))) ta_pm_entry_t;
typedef struct ta_pm_leaf {
    ta_pm_entry_t entry[1 << TA_PM_LEAF_BITS];
    struct ta_span *span[1 << TA_PM_LEAF_BITS];
} ta_pm_leaf_t;
extern ta_pm_leaf_t *ta_pm_root[1 << TA_PM_ROOT_BITS];
/* The first leaf made (where a heap of up to 2 GiB usually lies whole): the
 * first address it covers and the leaf.  free's lookup subtracts
 * the base from p and, below 2 GiB, has the entry with a shift and an add,
 * without the root index or a load of the leaf from the root.  Until a leaf
 * is made, base and leaf are non-canonical addresses: no pointer that can be
 * read matches, and reading through one faults. */
#define TA_PM_LEAF_SPAN ((uintptr_t)1 << (TA_PM_LEAF_BITS + TA_PAGE_SHIFT)) /* bytes a leaf covers */
#define TA_PM_NONCANONICAL ((uintptr_t)1 << 63)
extern struct ta_pm_hot {
    uintptr_t base;
    ta_pm_leaf_t *leaf;
} ta_pm_hot;
extern const uint64_t ta_class_magic[]; /* (sizeclass.c) */

/* free()'s lookup: the entry of the page of address a, or an all-zero one
 * (ta_pm_none) when no leaf covers it.  (free reads the magic first, with
 * acquire: it is written last when a page becomes a small span's; other
 * readers read the info first, with acquire: base and states were written
 * before it.) */
extern const ta_pm_entry_t ta_pm_none;
static inline const ta_pm_entry_t *ta_pagemap_entry_far(uintptr_t page) {
    uintptr_t root = page >> TA_PM_LEAF_BITS;
    /* one compare rejects addresses above 48 bits */
    if (TA_UNLIKELY(root >= (1u << TA_PM_ROOT_BITS))) return &ta_pm_none;
    ta_pm_leaf_t *leaf = ta_pm_root[root];
    if (!leaf) return &ta_pm_none;
    return &leaf->entry[page & ((1u << TA_PM_LEAF_BITS) - 1)];
}
/* free's read of the base: on x86-64 a plain load, so that it folds into the
 * subtract (the hardware keeps loads in order, and the signal fence below
 * keeps the compiler from reading the leaf first: a reader that sees the new
 * base sees the leaf written before it); elsewhere, and for
 * ThreadSanitizer, an acquire load. */
#if defined(__x86_64__) && !TA_TSAN
#define TA_PM_HOT_BASE() (ta_pm_hot.base)
#else
#define TA_PM_HOT_BASE() __atomic_load_n(&ta_pm_hot.base, __ATOMIC_ACQUIRE)
#endif
static inline const ta_pm_entry_t *ta_pagemap_entry_at(uintptr_t a) {
    uintptr_t off = a - TA_PM_HOT_BASE();
    __atomic_signal_fence(__ATOMIC_ACQUIRE); /* the compiler reads the leaf after the base */
    if (TA_LIKELY(off < TA_PM_LEAF_SPAN)) return &ta_pm_hot.leaf->entry[off >> TA_PAGE_SHIFT];
    return ta_pagemap_entry_far(a >> TA_PAGE_SHIFT);
}
static inline const ta_pm_entry_t *ta_pagemap_entry(uintptr_t page) {
    return ta_pagemap_entry_at(page << TA_PAGE_SHIFT);
}
static inline uint64_t ta_pm_entry_info(const ta_pm_entry_t *e) { return __atomic_load_n(&e->info, __ATOMIC_ACQUIRE); }
/* free's gate: written last when a page becomes a small span's, first (to 0)
 * when it stops being one */
static inline uint64_t ta_pm_entry_magic(const ta_pm_entry_t *e) { return __atomic_load_n(&e->magic, __ATOMIC_ACQUIRE); }
static inline uint64_t ta_pagemap_info(uintptr_t page) { return ta_pm_entry_info(ta_pagemap_entry(page)); }
/* An entry no longer a small span's page: free's gate first, then the info. */
static inline void ta_pm_entry_clear(ta_pm_entry_t *e) {
    __atomic_store_n(&e->magic, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->info, 0, __ATOMIC_RELEASE);
}
/* The same for a page known to hold one of tieralloc's small blocks (one that
 * tier 1 just handed out): no range or leaf check. */
static inline uint64_t ta_pagemap_info_known(uintptr_t page) {
    return ta_pm_root[page >> TA_PM_LEAF_BITS]->entry[page & ((1u << TA_PM_LEAF_BITS) - 1)].info;
}
/* The span of a page known to be in use (an object that tier 1 held): no range
 * or leaf check. */
static inline struct ta_span *ta_pagemap_span_known(uintptr_t page) {
    return __atomic_load_n(&ta_pm_root[page >> TA_PM_LEAF_BITS]->span[page & ((1u << TA_PM_LEAF_BITS) - 1)],
                           __ATOMIC_RELAXED);
}
static inline struct ta_span *ta_pagemap_span(uintptr_t page) {
    if (TA_UNLIKELY(page >> (TA_PM_ROOT_BITS + TA_PM_LEAF_BITS))) return NULL;
    ta_pm_leaf_t *leaf = ta_pm_root[page >> TA_PM_LEAF_BITS];
    /* (relaxed: the page heap reads a free span's neighbours' entries under
     * its lock while an arena chunk's entries are written without it; a
     * plain load on x86-64) */
    return leaf ? __atomic_load_n(&leaf->span[page & ((1u << TA_PM_LEAF_BITS) - 1)], __ATOMIC_RELAXED) : NULL;
}
/* The span record the pagemap names for the page of address a (NULL: none) */
static inline struct ta_span *ta_pagemap_span_at(uintptr_t a) {
    uintptr_t off = a - TA_PM_HOT_BASE();
    __atomic_signal_fence(__ATOMIC_ACQUIRE); /* (as ta_pagemap_entry_at) */
    if (TA_LIKELY(off < TA_PM_LEAF_SPAN)) return __atomic_load_n(&ta_pm_hot.leaf->span[off >> TA_PAGE_SHIFT], __ATOMIC_RELAXED);
    return ta_pagemap_span(a >> TA_PAGE_SHIFT);
}
#define TA_INFO(cls, page_index) ((uint64_t)(cls) | (uint64_t)(page_index) << 8)
#define TA_INFO_STATES_MAKE(states) ((uint64_t)(uintptr_t)(states) << 16)
#define TA_INFO_CLASS(info) ((uint32_t)(info) & 0xffu)
#define TA_INFO_PAGE_INDEX(info) (((uint32_t)(info) >> 8) & 0xffu)
static inline uint8_t *ta_info_states(uint64_t info) { return (uint8_t *)(uintptr_t)(info >> 16); }
/* byte offset of p from the start of its span, for a small-class page */
static inline uint32_t ta_info_offset(const void *p, uint64_t info) {
    return ((uint32_t)(uintptr_t)p & (uint32_t)(TA_PAGE_SIZE - 1)) | (((uint32_t)info & 0xff00u) << (TA_PAGE_SHIFT - 8));
}
/* Make sure leaves exist for pages [first, first+n); false if out of memory. */
bool ta_pagemap_ensure(uintptr_t first, uintptr_t n);
/* page → (s, info); the page's leaf exists (ta_pagemap_ensure).  Inline: the
 * page heap writes a few entries on every split and merge. */
static inline void ta_pagemap_set(uintptr_t page, struct ta_span *s, uint64_t info) {
    ta_pm_leaf_t *leaf = ta_pm_root[page >> TA_PM_LEAF_BITS];
    TA_ASSERT(leaf);
    uintptr_t i = page & ((1u << TA_PM_LEAF_BITS) - 1);
    __atomic_store_n(&leaf->span[i], s, __ATOMIC_RELAXED); /* (see ta_pagemap_span) */
    ta_pm_entry_t *e = &leaf->entry[i];
    if (info) {
        __atomic_store_n(&e->info, info, __ATOMIC_RELEASE);
        __atomic_store_n(&e->magic, ta_class_magic[TA_INFO_CLASS(info) & (TA_MAX_CLASSES - 1)], __ATOMIC_RELEASE);
    } else {
        ta_pm_entry_clear(e);
    }
}
/* Clear the entries of pages [first, first+n) (address space given back to
 * the OS); entries already clear are not written. */
void ta_pagemap_clear(uintptr_t first, uintptr_t n);
uint64_t ta_pagemap_bytes(void);
uint64_t ta_pagemap_resident(void); /* of ta_pagemap_bytes, resident now (statistics) */

/* ---- sizeclass.c --------------------------------------------------------- */
/* Classes: 16..256 by 16, then 8 per doubling up to 256 KiB, so a block wastes
 * under 12.5% of its size above 128 bytes and under 16 bytes below. */
typedef struct ta_class_info {
    uint32_t size;      /* object size in bytes */
    uint32_t pages;     /* pages per span */
    uint32_t batch;     /* objects moved between a thread cache and central at once */
    uint32_t objects;   /* objects per span */
    uint64_t div_magic; /* offset % size == 0  <=>  (uint32)offset * div_magic <= div_magic - 1 */
} ta_class_info_t;
/* (constants: built by the compiler, in read-only pages) */
extern const ta_class_info_t ta_class[TA_MAX_CLASSES];
extern const uint64_t ta_class_magic[TA_MAX_CLASSES]; /* div_magic, packed (and copied into the pagemap's entries) */
#define TA_NCLASSES 97 /* (sizeclass.c checks it against its list) */
static const uint32_t ta_nclasses = TA_NCLASSES; /* classes are 1..ta_nclasses-1 */
extern const uint8_t ta_class_small[1024 + 1];                     /* by n itself, n <= 1024 */
extern const uint8_t ta_class_large[((TA_MAX_SMALL - 1024) >> 7) + 1]; /* (n-1024+127)>>7 */
/* the class of n <= 1024, and of 1024 < n <= TA_MAX_SMALL (the fast paths
 * test the first range alone: one compare for the common sizes) */
#define TA_CLASS_1K 32 /* the class of 1 KiB blocks, the last that ta_class_small gives */
/* The last class whose blocks are smaller than a cache line (48 B): blocks
 * that share their lines with neighbours (pcache.h, a thread's push). */
#define TA_CLASS_LINE_SHARED 3
static inline uint32_t ta_class_upto_1k(size_t n) { return ta_class_small[n]; }
static inline uint32_t ta_class_above_1k(size_t n) { return ta_class_large[(n - 1024 + 127) >> 7]; }
static inline uint32_t ta_size_to_class(size_t n) {
    if (TA_LIKELY(n <= 1024)) return ta_class_upto_1k(n);
    if (n <= TA_MAX_SMALL) return ta_class_above_1k(n);
    return 0;
}
/* The object index of span offset off in class cls and whether off is an
 * object start, with one multiply (m = ceil(2^64 / size): the high half of
 * off * m is off / size, the low half is <= m - 1 exactly when size divides off). */
TA_ALWAYS_INLINE uint32_t ta_object_index_m(uint32_t off, uint64_t m, bool *start) {
    unsigned __int128 prod = (unsigned __int128)off * m;
    *start = (uint64_t)prod <= m - 1;
    return (uint32_t)(prod >> 64);
}
TA_ALWAYS_INLINE uint32_t ta_object_index(uint32_t off, uint32_t cls, bool *start) {
    return ta_object_index_m(off, ta_class_magic[cls], start);
}
/* The state byte of object p of class cls (p known to be one). */
static inline uint8_t *ta_state_of(const void *p, uint32_t cls) {
    uint64_t info = ta_pagemap_info_known((uintptr_t)p >> TA_PAGE_SHIFT);
    bool start;
    return ta_info_states(info) + ta_object_index(ta_info_offset(p, info), cls, &start);
}
/* smallest class whose size is >= n and a multiple of align (align <= page), or 0 */
uint32_t ta_class_for_aligned(size_t n, size_t align);

/* ---- pageheap.c: tier 3 --------------------------------------------------- */
/* RELEASING: free, taken off the lists by a decay pass while its pages are
 * madvised (for a free() it is freed, as FREE and RELEASED are) */
enum { TA_SPAN_FREE = 0, TA_SPAN_RELEASED = 1, TA_SPAN_INUSE = 2, TA_SPAN_RELEASING = 3,
       TA_SPAN_RECENT = 4 /* a freed large block kept whole for the next request of its size */ };
typedef struct ta_span {
    uintptr_t page;          /* first page number (address >> TA_PAGE_SHIFT) */
    uintptr_t npages;
    struct ta_span *next, *prev; /* in a page-heap free list or a central span list */
    uint8_t state;           /* TA_SPAN_* */
    uint8_t cls;             /* size class, 0 for a large block */
    uint8_t zeroed : 1;      /* large block known to be all zero (fresh or released pages) */
    uint8_t rest_follows : 1; /* large block cut from a recent one: its rest may follow it (a hint; boundary_move checks) */
    /* central: on its shard's list of spans with free objects; fresh: no
     * object has come back to it since it was carved (its shard may be
     * carving it still); shard: the transfer-cache shard (CPU) it belongs to */
    uint8_t in_list : 1, fresh : 1, shard : 6;
    uint32_t allocated;      /* small: objects handed out of this span */
    char *carve;             /* small: first object never handed out (objects end at
                              * page start + objects * size) */
    /* One record per span lives as long as the process (recycled, never
     * unmapped), so it is kept to 56 bytes: each field below is used by one
     * kind of span only. */
    union {
        uint64_t free_since_ms;  /* free spans: when they became free (decay) */
        void *freelist;          /* small spans in use, hardened build: their returned objects */
        uintptr_t scan_state;    /* small spans in use, release build: no returned object's state byte
                                  * below this address; 0: none below the first (central.c) */
        struct ta_srec *sample;  /* large blocks in use: sampled-allocation record (sample.c) or NULL */
    };
} ta_span_t;
static inline void *ta_span_addr(const ta_span_t *s) { return (void *)(s->page << TA_PAGE_SHIFT); }
static inline size_t ta_span_bytes(const ta_span_t *s) { return s->npages << TA_PAGE_SHIFT; }
/* The bytes of a span in use that hold blocks: all but its guard page
 * (hardened build), which is its last page. */
static inline size_t ta_span_usable(const ta_span_t *s) { return (s->npages - TA_GUARD_PAGES) << TA_PAGE_SHIFT; }
/* Intrusive circular lists of spans through next/prev, with a sentinel head
 * (the page heap's free lists, central's lists of spans with free objects). */
static inline void ta_spanlist_init(ta_span_t *h) { h->next = h->prev = h; }
static inline bool ta_spanlist_empty(const ta_span_t *h) { return h->next == h; }
static inline void ta_spanlist_push(ta_span_t *h, ta_span_t *s) {
    s->next = h->next;
    s->prev = h;
    h->next->prev = s;
    h->next = s;
}
static inline void ta_spanlist_remove(ta_span_t *s) {
    s->prev->next = s->next;
    s->next->prev = s->prev;
    s->next = s->prev = NULL;
}
/* Object states of small spans (pagemap info word): a block handed to the
 * program is LIVE; one in a cache or a transfer cache is FREE, or ZERO when
 * it was never handed out and its memory is still the OS's zero pages (calloc
 * skips the memset, api.c); one given back to its span is SPAN (central.c;
 * the hardened build keeps FREE there, in a free list). */
enum { TA_OBJ_FREE = 0, TA_OBJ_LIVE = 1, TA_OBJ_SPAN = 2, TA_OBJ_ZERO = 4 };
/* A state byte is read and written by threads that do not synchronise with
 * each other when they are different objects' (central scans a span's bytes
 * eight at a time while malloc and free write their neighbours'): every
 * access is a relaxed atomic, which on x86-64 is the plain byte load and store. */
static inline uint8_t ta_state_get(const uint8_t *s) { return __atomic_load_n(s, __ATOMIC_RELAXED); }
static inline void ta_state_set(uint8_t *s, uint8_t v) { __atomic_store_n(s, v, __ATOMIC_RELAXED); }
/* free and cached: FREE or ZERO */
static inline bool ta_obj_cached_state(uint8_t s) { return s == TA_OBJ_FREE || s == TA_OBJ_ZERO; }

void ta_pageheap_init(void);
/* A span of n pages (n >= 1) aligned to align_pages (a power of two), marked in use
 * with class cls (registered in the pagemap on every page when cls != 0, on the
 * first and last page otherwise). NULL when the OS refuses memory or metadata
 * (the heap is then as it was).  In the hardened build the span gets one page
 * more, its guard (s->npages is n + TA_GUARD_PAGES; ta_span_usable is n pages);
 * the page counts of ta_pageheap_alloc*, _grow and _shrink are usable pages. */
ta_span_t *ta_pageheap_alloc(uintptr_t npages, uintptr_t align_pages, uint32_t cls);
/* A span of size class cls for central shard `shard` (its object states are
 * packed with the shard's others: meta.c). */
ta_span_t *ta_pageheap_alloc_small(uint32_t cls, uint32_t shard);
/* A large span for a block that is growing (realloc): placed at the start of
 * the longest free span, so that ta_pageheap_grow can extend it in place. */
ta_span_t *ta_pageheap_alloc_growable(uintptr_t npages);
void ta_pageheap_free(ta_span_t *s);
/* free() of p, the start of large span s as the classifier saw it: checked
 * again under the lock, then freed; returns NULL, or what is wrong. */
const char *ta_pageheap_free_large(ta_span_t *s, void *p);
/* The same, aborting with the one-line diagnostic naming p when it is wrong
 * (free's path: no answer to look at). */
void ta_pageheap_free_large_or_abort(ta_span_t *s, void *p);
/* Scoped-arena chunks (arena.c): spans of class TA_SPAN_ARENA, every page
 * registered with info 0 (counted among the large blocks). */
ta_span_t *ta_pageheap_alloc_arena(uintptr_t npages, uintptr_t align_pages);
void ta_pageheap_free_arena(ta_span_t *s);
/* run the decay clock (called from slow paths) */
ta_span_t *ta_pageheap_alloc_large(uintptr_t npages); /* class 0, page aligned; recent blocks first */
void ta_pageheap_tick(uint64_t now); /* now: ta_os_now_ms(), read once by the caller */
/* one decay pass now (the background thread; force: ignore the demand peak);
 * returns the bytes released */
size_t ta_pageheap_decay(bool force);
uint64_t ta_pageheap_ops(void);                 /* allocations and frees of spans so far */
void ta_pageheap_ops_by_decay(uint64_t before); /* those since `before` were the decay's: the heap stays idle */
/* the heap is worth a background thread (a few MiB; in a child of fork, a
 * decay period old) */
bool ta_pageheap_bg_due(void);
/* set while the background thread runs the decay (slow paths then do not) */
extern bool ta_pageheap_bg_active;
/* Try to grow an in-use large span in place to n pages; true on success. */
bool ta_pageheap_grow(ta_span_t *s, uintptr_t npages);
/* realloc of in-use large block s (unsampled) to npages pages where it cannot
 * grow in place: its pages move to a new mapping (ta_os_move: no copy, no page
 * faulted) with as much room again behind the block; s goes back to the heap
 * as released pages.  The new block's span, or NULL (s untouched: copy). */
ta_span_t *ta_pageheap_move_large(ta_span_t *s, uintptr_t npages);
/* Give the pages of in-use large span s beyond its first npages back to the
 * heap (untouched: nobody wrote them since the span was allocated); false
 * when out of metadata (s is left as it was, still valid). */
bool ta_pageheap_shrink(ta_span_t *s, uintptr_t npages, bool untouched);
/* Release free pages to the OS: those free for at least decay_ms, or all when
 * all is true (malloc_trim), which also unmaps every released span of 2 MiB
 * or more.  Returns bytes released plus bytes unmapped. */
size_t ta_pageheap_release(bool all);
typedef struct ta_pageheap_stats {
    uint64_t free_bytes;      /* free, still resident */
    uint64_t released_bytes;  /* free, returned to the OS */
    uint64_t inuse_bytes;     /* spans in use (small and large) */
    uint64_t large_bytes;     /* of which large blocks */
    uint64_t large_count;
    uint64_t n_alloc, n_free, n_grow_os, n_coalesce;
    uint64_t unmapped_bytes, n_unmap_os; /* released spans given back with munmap (cumulative) */
    uint64_t guard_bytes;     /* guard pages of spans in use (hardened build; in inuse_bytes,
                               * not in large_bytes) */
} ta_pageheap_stats_t;
void ta_pageheap_stats(ta_pageheap_stats_t *out);
/* The same with the lock already held (ta_pageheap_lock_all, for a consistent
 * snapshot of every tier); class_spans (TA_MAX_CLASSES entries, or NULL)
 * receives the number of in-use spans carved for each size class. */
void ta_pageheap_stats_locked(ta_pageheap_stats_t *out, uint64_t *class_spans);
void ta_pageheap_lock_all(bool fork);   /* fork */
void ta_pageheap_unlock_all(bool child);

/* ---- central.c: tier 2 ---------------------------------------------------- */
/* Objects travel as arrays of slots, each an object and the address of its
 * state byte, as tier 1 keeps them: a batch is copied, never walked, and
 * neither side looks the state bytes up again. */
typedef struct ta_slot {
    void *obj;
    uint8_t *state;
} ta_slot_t;
void ta_central_init(void);
/* Up to `want` objects of class cls into out[] for a cache of `shard`; returns
 * how many (0 = out of memory).  others: the caller may take what other
 * shards' transfer caches hold above their keep (a CPU cache, whose foreign
 * objects go home; never a thread cache, which would keep them). */
uint32_t ta_central_alloc(uint32_t cls, ta_slot_t *out, uint32_t want, uint32_t shard, bool others);
/* Before a cache's first refill of cls: the records that refill reads before
 * it writes them (the shard's transfer cache, the class's span lists) are
 * written first (ta_touch_for_write: one page fault, not two, on first use). */
void ta_central_touch(uint32_t cls, uint32_t shard);
/* Give back n objects: each to the transfer cache of its span's shard (home). */
void ta_central_free(uint32_t cls, const ta_slot_t *in, uint32_t n);
/* The same, straight into their spans, bypassing the transfer caches: for
 * caches that are going away (thread exit, trim), so whole spans can be freed. */
void ta_central_free_spans(uint32_t cls, const ta_slot_t *in, uint32_t n);
/* Called from tier 1's slow paths: once per decay period, half of every
 * transfer cache goes back to its spans; then the page heap's decay. */
void ta_central_tick(uint64_t now);
/* Move everything in the transfer caches back to spans (malloc_trim). */
void ta_central_drain(void);
/* (api.c) the caller's own cache, the CPUs' and the transfer caches back to their spans:
 * the page heap asks before a large request would take pages it has not got
 * resident, while it holds that much free (consolidate_due); no lock held */
void ta_consolidate_caches(void);
/* Spans of class cls with free objects on a shard's list (its own spans). */
uint32_t ta_central_listed(uint32_t cls, uint32_t shard);
uint32_t ta_central_shards(void); /* shards in use (1..4): shard arguments are taken modulo this */
uint32_t ta_central_keep(uint32_t cls); /* objects a refill leaves in another shard's transfer cache */
/* What each shard may carve fresh in a decay period rather than take another
 * shard's span (central.c), and a setter for the tests: each shard's credit
 * until the next decay period. */
#define TA_FRESH_CREDIT_BYTES (1u << 20)
void ta_central_fresh_credit_set(uint64_t bytes);
typedef struct ta_central_stats {
    uint64_t transfer_bytes;  /* held in transfer caches */
    uint64_t span_free_bytes; /* free objects inside partly used spans */
    uint64_t hits, misses;    /* transfer-cache hits and span refills */
    uint64_t to_caches;       /* objects handed out by ta_central_alloc (cumulative) */
    uint64_t from_caches;     /* objects taken back by ta_central_free (cumulative) */
} ta_central_stats_t;
void ta_central_stats(uint32_t cls, ta_central_stats_t *out);
/* The same with every central lock already held (ta_central_lock_all). */
void ta_central_stats_locked(uint32_t cls, ta_central_stats_t *out);
void ta_central_lock_all(bool fork);
void ta_central_unlock_all(bool child);

/* ---- pcache.c: tier 1 (its interface is pcache.h) ------------------------- */

/* ---- quarantine.c: delayed reuse (hardened build) ---------------------------
 * A freed small block (already FREE by its state byte, so a second free is
 * caught) is filled with TA_QUARANTINE_FILL and queued in a FIFO shard, which
 * holds at most ta_cfg.quarantine_bytes; the oldest blocks leave when it is
 * over, are checked (a changed byte: "write after free of 0x..."), and go to
 * tier 1.  Shards are per thread slot (threads are dealt to them round-robin),
 * one per CPU. */
#ifdef TA_HARDENED
#define TA_QUARANTINE_FILL 0xdf
void ta_quarantine_init(void);
void ta_quarantine_put(void *p, uint8_t *state, uint32_t cls);
void ta_quarantine_drain(void);                /* malloc_trim: every shard empties */
void ta_quarantine_counts(uint64_t *objects);  /* += objects held per class (read racily) */
void ta_quarantine_lock_all(bool fork);             /* fork */
void ta_quarantine_unlock_all(bool child);
#endif

/* ---- stats.c -------------------------------------------------------------- */
/* A consistent snapshot of every tier, as the public struct ta_stats
 * (include/tieralloc.h documents the fields and the identity they obey).
 * Takes the pcache registry, central, page heap and metadata locks at once,
 * in the fork order; allocates nothing. */
struct ta_stats;
void ta_snapshot(struct ta_stats *st, bool resident); /* resident: fill metadata_resident_bytes (system calls) */
struct mallinfo2;
void ta_stats_mallinfo(struct mallinfo2 *mi);
void ta_stats_write_text(int fd);          /* the TIERALLOC_STATS=1 report */
struct _IO_FILE;
int ta_stats_write_xml(struct _IO_FILE *fp);
void ta_stats_at_start(void);              /* notes stderr for the reports at exit (ta_cfg) */

/* ---- sample.c: sampled allocations, hooks, heap profiles ------------------- */
/* A per-thread byte countdown (ta_tls.sample_left) picks allocations as a
 * Poisson process of mean TIERALLOC_SAMPLE_BYTES.  A picked small allocation
 * is served as its own page-heap span (pagemap info 0), so free() of it
 * reaches ta_free_slow without any test on the fast path. */
void ta_sample_init(void);
/* The countdown went below zero after an allocation of n bytes: restart it.
 * True if this allocation is to be sampled. */
bool ta_sample_tick(size_t n);
void ta_sample_thread_exit(void); /* count the bytes of the thread's last step */
/* Record the sampled block p (the start of a large span) of n requested bytes;
 * frame is the frame address of the allocator function that made it (the stack
 * is walked from there). Calls the alloc hook. */
void ta_sample_record(void *p, size_t n, void *frame);
/* Live sampled blocks (free() checks it before looking for a record). */
extern uint64_t ta_sample_live;
/* free() of a block that may be sampled: calls the free hook and drops its record. */
void ta_sample_free(void *p, ta_span_t *s);
/* While the allocator calls out on a program's thread to code that allocates
 * for the allocator (glibc's pthread_create of the background thread: the
 * thread's TLS vector, which lives as long as that thread), those allocations
 * are not sampled: no hook sees a block the program never had, and never a
 * free of it.  Returns the previous setting, to be restored. */
bool ta_sample_mute(bool on);
void ta_sample_counts(uint64_t *rate, uint64_t *total, uint64_t *live, uint64_t *live_bytes,
                      uint64_t *allocated_bytes);
/* Write the heap profile to fd (legacy gperftools text format); 0 or -1. */
int ta_profile_write_fd(int fd);
/* Open a report file for writing: path with %p replaced by the pid.  The
 * last component is never followed as a symlink (O_NOFOLLOW), the descriptor
 * is O_CLOEXEC, and a file is never truncated unless the process owns it: a
 * new file is created (O_CREAT|O_EXCL, mode 0644 less the umask); an existing
 * one is rewritten only if it is a regular file owned by the effective uid,
 * else -1 with errno EPERM.  -1 with errno on any failure. */
int ta_open_report(const char *path);
void ta_sample_lock_all(bool fork);   /* fork */
void ta_sample_unlock_all(bool child);

/* ---- init.c: process start and fork (called from the API only) --------- */
extern volatile int ta_inited;
/* Initialise (once); false when called again from inside initialisation by
 * the same thread, which must then allocate with ta_boot_alloc. */
bool ta_init_slow(void);
static inline bool ta_ensure_init(void) { return TA_LIKELY(ta_inited) || ta_init_slow(); }
/* A block from the static bootstrap buffer (zeroed; NULL when it is spent),
 * and the size of such a block (0 for any other pointer). */
void *ta_boot_alloc(size_t n, size_t align);
size_t ta_boot_size(const void *p);

/* ---- api.c: for tier 0 --------------------------------------------------- */
/* A heap block of n bytes (align: 0 or a power of two; zero: cleared, then
 * align is not used), as the
 * arena's fallback when no scope is open and for escaping blocks. */
void *ta_heap_alloc(size_t n, size_t align, bool zero);

/* ---- arena.c: tier 0, the scoped stack arena ------------------------------ */
/* Arena chunks are page-heap spans taken with class 0 (so the page heap counts
 * them among its large blocks: ph.large_bytes / large_count include
 * ta_arena_stats().held_bytes / held_chunks) and then marked with this
 * reserved class while a thread holds them; every page of a chunk maps to its
 * span with info 0, so free() of a scoped pointer reaches ta_free_slow. */
#define TA_SPAN_ARENA 0xff
/* The chunk span p points into, or NULL when p is not in an arena chunk. */
static inline ta_span_t *ta_arena_span(const void *p) {
    uintptr_t page = (uintptr_t)p >> TA_PAGE_SHIFT;
    if (ta_pagemap_info(page)) return NULL;
    ta_span_t *s = ta_pagemap_span(page);
    if (!s || s->cls != TA_SPAN_ARENA || s->state != TA_SPAN_INUSE || page < s->page ||
        page - s->page >= s->npages)
        return NULL;
    return s;
}
/* For p inside arena chunk span s (the classifier's answer): free() is a no-op
 * for a live scoped block and aborts with a diagnostic naming p when its scope
 * has ended or p is not a block start; the others abort the same way. */
void ta_arena_free(void *p, ta_span_t *s);
size_t ta_arena_usable_size(const void *p, ta_span_t *s);
void *ta_arena_realloc(void *p, ta_span_t *s, size_t n); /* a heap copy; p stays in its scope */
int ta_arena_owns(const void *p, ta_span_t *s);          /* a live scoped block (never aborts) */
typedef struct ta_arena_stats {
    uint64_t held_bytes;      /* chunks held by all threads (in use and spare) */
    uint64_t held_chunks;
    uint64_t spare_bytes;     /* of which kept for reuse, not in any scope */
    uint64_t n_chunks_from_heap, n_chunks_to_heap, n_chunks_reused;
    uint64_t n_big;           /* blocks too big for a chunk, given their own */
} ta_arena_stats_t;
void ta_arena_stats(ta_arena_stats_t *out);
uint64_t ta_arena_bytes(void); /* = held_bytes */
/* malloc_trim: the calling thread's spare chunks go back to the page heap
 * (other threads' arenas are theirs alone; they go back when those exit) */
void ta_arena_trim_current(void);

/* ---- trace.c: TIERALLOC_TRACE, every allocation call recorded ------------- */
/* Record kinds (docs/trace-format.md); the low 4 bits of a record's first byte. */
enum {
    TA_TR_MALLOC = 1, TA_TR_CALLOC, TA_TR_REALLOC, TA_TR_MEMALIGN, TA_TR_POSIX_MEMALIGN,
    TA_TR_ALIGNED_ALLOC, TA_TR_VALLOC, TA_TR_PVALLOC, TA_TR_FREE, TA_TR_SCOPE_BEGIN, TA_TR_SCOPE_END
};
#define TA_TR_SEQ 0x10      /* the new id is the previous id + 1 (not written) */
#define TA_TR_OLDNULL 0x20  /* realloc(NULL, n) */
#define TA_TR_NORESULT 0x40 /* realloc returned NULL (n was 0) */
#define TA_TRACE_MAGIC "TATRACE1"
extern bool ta_trace_on;    /* set once at init; read only on slow paths */
extern __thread int ta_trace_busy __attribute__((tls_model("initial-exec"))); /* inside a traced call */
void ta_trace_init(void);
void ta_trace_alloc(int op, void *p, size_t n, size_t align); /* p: the new block (NULL: nothing) */
void ta_trace_free(void *p);                                   /* before p is handed back */
void ta_trace_mark(int op);                                    /* scope begin / end */
void *ta_trace_realloc(void *p, size_t n);
void *ta_trace_calloc(size_t n, size_t size);
void *ta_trace_aligned(int op, size_t align, size_t n);
void ta_trace_thread_exit(void);
void ta_trace_lock_all(bool fork);
void ta_trace_unlock_all(bool child);

#pragma GCC visibility pop

#endif
