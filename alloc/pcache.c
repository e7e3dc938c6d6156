/* pcache.c: tier 1's slow paths, for both kinds of cache (pcache.h): refills
 * and flushes in batches through central, capacity under a budget, decay of
 * what is not used, the thread-exit flush, malloc_trim's drain, statistics.
 *
 * Capacity.  A class's capacity (end - begin slots) starts at 0 and grows on
 * allocation misses: slowly at first (2, 6, 14, ... up to a batch), then a batch
 * at a time up to the class's slot range; in a thread cache, past 16 objects
 * only on every 8th refill of a 50 ms window, and a class that seldom runs dry
 * gives a quarter back at the end of a window (grow, trim_thread_cache).
 * Frees alone grow it to one batch at
 * most, so a thread or CPU that frees what others allocated flushes in batches
 * but does not hoard.  The sum over classes of capacity x size never exceeds
 * the cache's budget: a thread draws its own from a global pool
 * (TIERALLOC_CACHE_BYTES), up to 8 MiB; a CPU has a base
 * (TIERALLOC_CPU_CACHE_BYTES) and borrows more from the same pool, up to what a
 * thread may have, only while few live threads have used it (CPU_USERS): a
 * few program threads with large working sets get the caches thread caches
 * would give them, while thousands of threads sharing a CPU get no more than
 * the base.  The borrowed budget goes back when a CPU becomes
 * crowded or its classes shrink by decay.  Past the budget, a class takes
 * capacity from the others (halving them, the largest in bytes first).
 *
 * Per-CPU caches.  A slow path works on the CPU it runs on, holding that
 * CPU's lock, and changes the slab only through restartable sequences that
 * check the CPU number first (rseq_take, rseq_put, rseq_set_end): if the
 * thread was migrated meanwhile, the sequence fails and the slow path lets go.
 * Another thread that must empty a CPU's cache (decay, malloc_trim) takes its
 * lock, closes every class (begin = 0xffff, end = 0: every pop and push
 * misses), and fences the CPU with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ),
 * which restarts any sequence running there; after that the slab is its own
 * until it writes the headers back. */
#define _GNU_SOURCE 1
#include "pcache.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CPU_USERS 32  /* live threads that may have used a CPU's cache while it still borrows budget */
#define USER_BITS 1024 /* CPUs whose users are counted (note_user); those from here on keep their base */
typedef struct ta_pcache {
    ta_slot_t *slab;          /* its slab (pcache.h) */
    int cpu;                  /* the CPU it belongs to, -1 for a thread's cache */
    ta_lock_t lock;           /* per-CPU: held by whoever changes capacity or drains */
    bool ready;               /* headers laid out */
    uint64_t budget;          /* bytes of capacity it may have */
    uint64_t committed;       /* sum over classes of capacity x size: never above budget */
    uint32_t shard;           /* central shard it uses */
    uint8_t active[TA_MAX_CLASSES]; /* class missed or overflowed since the last decay */
    uint8_t refills[TA_MAX_CLASSES]; /* thread caches: its allocation misses in this window (up to 255) */
    uint64_t window_ms;       /* thread caches: when the refill window began (see grow) */
    uint16_t begin[TA_MAX_CLASSES]; /* each class's range now: its short one or its full one (layout) */
    uint64_t scavenged_ms;    /* thread caches: when idle classes were last trimmed */
    uint64_t active_ms;       /* thread caches: when its thread last took a slow path */
    uint32_t state;           /* TA_PC_* (thread caches) */
    bool slab_released;       /* EMPTY: its slab's pages went back to the OS (release_free_slabs) */
    uint64_t freed_ms;        /* EMPTY: when its thread exited */
    struct ta_pcache *next_all, *prev_all; /* registry of live thread caches */
    uint64_t n_alloc_miss, n_free_miss;
    /* per-CPU: live threads that have taken a slow path on it (note_user) */
    uint32_t users;
    bool crowded; /* more than CPU_USERS of them: its base budget only */
} __attribute__((aligned(64))) ta_pcache_t; /* the CPUs' records side by side share no line */
/* A thread cache is LIVE from its creation to its thread's exit flush
 * (EXITING until it leaves the registry, EMPTY on the list for reuse), or
 * until its thread empties it after the switch to per-CPU caches (then
 * RETIRED: off the registry, never reused, as its thread still points to it).
 * In a child after fork, the caches of the parent's other threads are
 * ORPHANs: nobody uses them.  pcache_dead (DEAD) is every exited thread's. */
enum { TA_PC_EMPTY = 0, TA_PC_LIVE, TA_PC_DEAD, TA_PC_EXITING, TA_PC_RETIRED, TA_PC_ORPHAN };

/* headers only, all zero: every operation misses (a new thread, an exited one) */
static uint64_t slab_none[TA_MAX_CLASSES] __attribute__((aligned(64)));
__thread ta_tls_t ta_tls __attribute__((tls_model("initial-exec"))) = {.slab = (ta_slot_t *)slab_none};

ta_fe_t ta_fe;

/* Every class has two slot ranges in a slab: a short one among the short
 * ranges of all classes, side by side in the pages after the headers, and its
 * full one further on.  A cache starts each class in its short range and
 * moves it to the full one the first time its capacity must grow past it
 * (move_to_full).  So a process that uses a few objects of many classes (a
 * shell, a short-lived tool, a child of fork) writes two or three pages of
 * slab, not one per class: each is a page fault, and one more page that fork
 * copies.  A class whose full range is no longer than SHORT_SLOTS has only
 * the short one. */
#define SHORT_SLOTS 16
static uint16_t short_begin[TA_MAX_CLASSES], short_max[TA_MAX_CLASSES];
static uint16_t slot_begin[TA_MAX_CLASSES], slot_max[TA_MAX_CLASSES]; /* each class's full range */
static size_t slab_bytes;  /* a thread slab: headers and every class's range */

static ta_lock_t reg_lock = TA_LOCK_INIT(TA_RANK_REGISTRY);
static ta_pcache_t reg_head = {.next_all = &reg_head, .prev_all = &reg_head};
static ta_pcache_t *pcache_free;             /* caches of exited threads, for reuse */
static ta_pcache_t pcache_dead = {.state = TA_PC_DEAD};
static pthread_key_t pcache_key;
static uint32_t pcache_seq;
static uint32_t shard_users[64];             /* live thread caches per central shard (reg_lock) */
static int64_t budget_pool;                  /* thread budget not given to any thread */
static uint64_t dead_alloc_miss, dead_free_miss;
static uint32_t live_threads;                /* LIVE thread caches: past percpu_threads, the switch */

static ta_pcache_t *cpus;                    /* per-CPU caches, ncpus of them (set before ta_fe.percpu) */
static uint32_t ncpus;                       /* (read with acquire: the switch may set it meanwhile) */
static __thread bool thread_registered;      /* pcache_key set: the exit destructor runs */
static __thread bool thread_gone;            /* past its exit destructor: counted among no CPU's users */

#define BUDGET_STEP ((uint64_t)64 << 10)
/* Every thread may hold this much even when the global pool is spent. */
#define THREAD_BUDGET_FLOOR ((uint64_t)256 << 10)
#define MAX_BATCH 64
/* Objects go home.  A free of another shard's object (its span belongs to
 * another CPU, or another thread's shard) puts it in the outbox, a range of
 * the slab of its own, not in its class's slots: were it handed out again
 * here, its state byte's line (shared with its span's other objects) would
 * be written by two CPUs from then on, and every free on either would wait
 * for it.  Threads that move between CPUs made every span's objects drift
 * into both CPUs' caches that way (`remote_frees` with no remote free at
 * all, 8 threads on 2 CPUs: 27 ns a malloc+free against tcmalloc's 11; with
 * objects sent home 10, alloc/README.md).  A full outbox goes home in one
 * slow path: its objects sorted by shard and class, each run into its
 * shard's transfer cache, where that shard's CPU takes them back.  Only
 * objects of up to OUTBOX_OBJ_MAX bytes wait there (a full outbox then holds
 * at most 256 KiB); a larger one goes home at once.  A thread's cache sends
 * home only another shard's blocks under a cache line, each class's through
 * a home-bound stack of its own (pcache.h, TA_SLAB_HOME). */
#define OUTBOX_SLOTS 64
#define OUTBOX_OBJ_MAX 4096
/* A thread's home-bound stacks (pcache.h, TA_SLAB_HOME): the batch of the
 * classes they serve (BATCH, sizeclass.c: 64 for blocks under 1 KiB). */
#define HOME_SLOTS 64
_Static_assert(TA_NCLASSES <= TA_SLAB_HOME + 1, "the home-bound stacks' headers are no class's");
_Static_assert(HOME_SLOTS <= OUTBOX_SLOTS, "a home-bound stack goes home through the outbox's buffers");
static inline bool is_home(uint32_t k) { return k > TA_SLAB_HOME && k <= TA_SLAB_HOME + TA_CLASS_LINE_SHARED; }

/* ---- restartable sequences on a CPU's slab --------------------------------- */
#if TA_HAVE_RSEQ
/* After the prologue: fail (result -1) unless on CPU %[cpu]; else %%rax is
 * that CPU's slab. */
#define TA_RSEQ_ON_CPU(result)                                                                   \
    "movq $-1, %[" result "]\n\t"                                                               \
    "cmpl %k[cpu], %%eax\n\t"                                                                   \
    "jne 4f\n\t"                                                                                \
    "shlq $20, %%rax\n\t"                                                                       \
    "addq %[base], %%rax\n\t"

/* Copy %%r11d bytes between src and dst, 8 at a time; %%edx counts the bytes
 * (from 0) and %%r9d the slab offset, both advancing. */
#define TA_RSEQ_COPY(src, dst)                                                                    \
    "6:\n\t"                                                                                      \
    "cmpl %%r11d, %%edx\n\t"                                                                      \
    "jae 7f\n\t"                                                                                  \
    "movq " src ", %%r10\n\t"                                                                     \
    "movq %%r10, " dst "\n\t"                                                                     \
    "addl $8, %%r9d\n\t"                                                                          \
    "addl $8, %%edx\n\t"                                                                          \
    "jmp 6b\n\t"                                                                                  \
    "7:\n\t"

/* Take up to n objects off the top of cls's slots on CPU cpu into out: the
 * count, or -1 when the caller is not on that CPU. */
static int rseq_take(int cpu, uint32_t cls, ta_slot_t *out, uint32_t n) {
    long k;
    uintptr_t t;
    __asm__ __volatile__(TA_RSEQ_PROLOGUE TA_RSEQ_ON_CPU("k")
                         "movl (%%rax,%[cls],8), %%ecx\n\t" /* cur */
                         "movzwl 4(%%rax,%[cls],8), %%edx\n\t" /* begin */
                         "movl %%ecx, %%r8d\n\t"
                         "subl %%edx, %%r8d\n\t"
                         "cmpl %k[n], %%r8d\n\t"
                         "cmoval %k[n], %%r8d\n\t" /* k = min(cur - begin, n) */
                         "subl %%r8d, %%ecx\n\t"   /* the new cur */
                         "movl %%ecx, %%r9d\n\t"
                         "shll $4, %%r9d\n\t"      /* its byte offset */
                         "movl %%r8d, %%r11d\n\t"
                         "shll $4, %%r11d\n\t"     /* bytes to copy */
                         "xorl %%edx, %%edx\n\t"
                         TA_RSEQ_COPY("(%%rax,%%r9)", "(%[out],%%rdx)")
                         "movq %%r8, %[k]\n\t"
                         "movl %%ecx, (%%rax,%[cls],8)\n\t" /* commit */
                         "4:\n\t"
: [k] "=&r"(k), [t] "=&a"(t)
                         : [rs] "r"(ta_rseq_off), [cpu] "r"(cpu), [base] "m"(ta_cpu_slabs),
                           [cls] "r"((uintptr_t)cls), [out] "r"(out), [n] "r"(n)
                         : "rcx", "rdx", "r8", "r9", "r10", "r11", "memory", "cc");
    return (int)k;
}

/* Put up to n objects from in on top of cls's slots on CPU cpu: the count
 * stored (in[0..count)), or -1 when the caller is not on that CPU. */
static int rseq_put(int cpu, uint32_t cls, const ta_slot_t *in, uint32_t n) {
    long k;
    uintptr_t t;
    __asm__ __volatile__(TA_RSEQ_PROLOGUE TA_RSEQ_ON_CPU("k")
                         "movl (%%rax,%[cls],8), %%ecx\n\t" /* cur */
                         "movzwl 6(%%rax,%[cls],8), %%r8d\n\t" /* end */
                         "xorl %%edx, %%edx\n\t"
                         "subl %%ecx, %%r8d\n\t"
                         "cmovbl %%edx, %%r8d\n\t" /* room = end > cur ? end - cur : 0 */
                         "cmpl %k[n], %%r8d\n\t"
                         "cmoval %k[n], %%r8d\n\t"
                         "movl %%ecx, %%r9d\n\t"
                         "shll $4, %%r9d\n\t"
                         "movl %%r8d, %%r11d\n\t"
                         "shll $4, %%r11d\n\t"
                         TA_RSEQ_COPY("(%[in],%%rdx)", "(%%rax,%%r9)")
                         "movq %%r8, %[k]\n\t"
                         "addl %%r8d, %%ecx\n\t"
                         "movl %%ecx, (%%rax,%[cls],8)\n\t" /* commit */
                         "4:\n\t"
: [k] "=&r"(k), [t] "=&a"(t)
                         : [rs] "r"(ta_rseq_off), [cpu] "r"(cpu), [base] "m"(ta_cpu_slabs),
                           [cls] "r"((uintptr_t)cls), [in] "r"(in), [n] "r"(n)
                         : "rcx", "rdx", "r8", "r9", "r10", "r11", "memory", "cc");
    return (int)k;
}

/* Set cls's end on CPU cpu: 1, or 0 when more objects than that are cached
 * (take some first), or -1 when the caller is not on that CPU. */
static int rseq_set_end(int cpu, uint32_t cls, uint32_t end) {
    long r;
    uintptr_t t;
    __asm__ __volatile__(TA_RSEQ_PROLOGUE TA_RSEQ_ON_CPU("r")
                         "movq $0, %[r]\n\t"
                         "movl (%%rax,%[cls],8), %%ecx\n\t" /* cur */
                         "cmpl %k[end], %%ecx\n\t"
                         "ja 4f\n\t"
                         "movq $1, %[r]\n\t"
                         "movw %w[end], 6(%%rax,%[cls],8)\n\t" /* commit */
                         "4:\n\t"
: [r] "=&r"(r), [t] "=&a"(t)
                         : [rs] "r"(ta_rseq_off), [cpu] "r"(cpu), [base] "m"(ta_cpu_slabs),
                           [cls] "r"((uintptr_t)cls), [end] "r"(end)
                         : "rcx", "memory", "cc");
    return (int)r;
}

/* Replace cls's header on CPU cpu by `to` if it is `from`: 1, or 0 when it is
 * not, or -1 when the caller is not on that CPU. */
static int rseq_replace(int cpu, uint32_t cls, uint64_t from, uint64_t to) {
    long r;
    uintptr_t t;
    __asm__ __volatile__(TA_RSEQ_PROLOGUE TA_RSEQ_ON_CPU("r")
                         "movq $0, %[r]\n\t"
                         "cmpq %[from], (%%rax,%[cls],8)\n\t"
                         "jne 4f\n\t"
                         "movq $1, %[r]\n\t"
                         "movq %[to], (%%rax,%[cls],8)\n\t" /* commit */
                         "4:\n\t"
: [r] "=&r"(r), [t] "=&a"(t)
                         : [rs] "r"(ta_rseq_off), [cpu] "r"(cpu), [base] "m"(ta_cpu_slabs),
                           [cls] "r"((uintptr_t)cls), [from] "r"(from), [to] "r"(to)
                         : "memory", "cc");
    return (int)r;
}

static int current_cpu(void) {
    return (int)__atomic_load_n((volatile uint32_t *)((char *)__builtin_thread_pointer() + ta_rseq_off + 4),
                                __ATOMIC_RELAXED);
}
#else
static int rseq_take(int cpu, uint32_t cls, ta_slot_t *out, uint32_t n) { (void)cpu; (void)cls; (void)out; (void)n; return -1; }
static int rseq_put(int cpu, uint32_t cls, const ta_slot_t *in, uint32_t n) { (void)cpu; (void)cls; (void)in; (void)n; return -1; }
static int rseq_set_end(int cpu, uint32_t cls, uint32_t end) { (void)cpu; (void)cls; (void)end; return -1; }
static int rseq_replace(int cpu, uint32_t cls, uint64_t from, uint64_t to) { (void)cpu; (void)cls; (void)from; (void)to; return -1; }
static int current_cpu(void) { return 0; }
#endif

/* The rseq fence; a process not registered for it (a child of fork, on a
 * kernel that does not carry the parent's registration over) registers on
 * this first need, not at every fork (a shell forks once per command). */
static bool rseq_fence(unsigned flags, int cpu) {
    long r = ta_sys3(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, flags, cpu);
    if (r == 0) return true;
    return r == -EPERM && ta_sys3(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0 &&
           ta_sys3(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, flags, cpu) == 0;
}

/* Restart whatever sequence runs on any CPU of the process (and order
 * memory there against the caller); false if the kernel refused. */
static bool fence_all(void) { return rseq_fence(0, 0); }

/* Restart whatever sequence runs on cpu; false if the kernel refused (a
 * seccomp filter, say): then the CPU's slab must not be touched. */
static bool fence_cpu(int cpu) {
    /* One thread, the caller, outside any sequence: none to restart, and no
     * interrupt sent to the CPU (a short-lived process lays out its CPU's
     * slab once, and would pay for an IPI to do it) */
    if (ta_single_threaded()) return true;
    return rseq_fence(MEMBARRIER_CMD_FLAG_CPU, cpu) || fence_all();
}

/* ---- slab operations, for either kind of cache ----------------------------- */
static inline ta_slab_hdr_t *hdr_of(const ta_pcache_t *c, uint32_t cls) { return (ta_slab_hdr_t *)c->slab + cls; }

static int slab_take(ta_pcache_t *c, uint32_t cls, ta_slot_t *out, uint32_t n) {
    if (c->cpu >= 0) return rseq_take(c->cpu, cls, out, n);
    ta_slab_hdr_t *h = hdr_of(c, cls);
    uint32_t k = h->cur - h->begin;
    if (k > n) k = n;
    h->cur -= k;
    memcpy(out, c->slab + h->cur, k * sizeof(ta_slot_t));
    return (int)k;
}

static int slab_put(ta_pcache_t *c, uint32_t cls, const ta_slot_t *in, uint32_t n) {
    if (c->cpu >= 0) return rseq_put(c->cpu, cls, in, n);
    ta_slab_hdr_t *h = hdr_of(c, cls);
    uint32_t k = h->end > h->cur ? h->end - h->cur : 0;
    if (k > n) k = n;
    memcpy(c->slab + h->cur, in, k * sizeof(ta_slot_t));
    h->cur += k;
    return (int)k;
}

/* Give k cached objects back to central (to_spans: straight to their spans). */
static void give_back(uint32_t cls, const ta_slot_t *slots, uint32_t k, bool to_spans) {
    while (k) { /* a batch at a time: central's locks are held for one batch */
        uint32_t n = k < MAX_BATCH ? k : MAX_BATCH;
        if (to_spans) ta_central_free_spans(cls, slots, n);
        else ta_central_free(cls, slots, n);
        slots += n;
        k -= n;
    }
}

/* Slots in cls's range now (capacity may grow to that without a move). */
static inline uint32_t range_max(const ta_pcache_t *c, uint32_t cls) {
    return c->begin[cls] == slot_begin[cls] ? slot_max[cls] : short_max[cls];
}

/* Move cls from its short range to its full one, with its capacity and what
 * it holds; false when a per-CPU caller was migrated meanwhile.  The header
 * changes in one store, made on the CPU in a restartable sequence that checks
 * it first: a fast path of another thread on the CPU sees the old header or
 * the new one, never a mix (no other CPU touches the slab: the caller holds
 * its lock). */
static bool move_to_full(ta_pcache_t *c, uint32_t cls) {
    uint32_t from = c->begin[cls], to = slot_begin[cls];
    uint32_t cap = __atomic_load_n(&hdr_of(c, cls)->end, __ATOMIC_RELAXED) - from; /* only we change end */
    ta_slab_hdr_t empty = {.cur = from, .begin = (uint16_t)from, .end = (uint16_t)(from + cap)};
    ta_slab_hdr_t moved = {.cur = to, .begin = (uint16_t)to, .end = (uint16_t)(to + cap)};
    ta_slot_t buf[SHORT_SLOTS];
    for (;;) {
        int k = slab_take(c, cls, buf, SHORT_SLOTS), r;
        if (k < 0) return false;
        if (c->cpu >= 0) {
            r = rseq_replace(c->cpu, cls, empty.word, moved.word);
        } else {
            r = hdr_of(c, cls)->word == empty.word;
            if (r) hdr_of(c, cls)->word = moved.word;
        }
        if (r <= 0) { /* migrated, or another thread on the CPU pushed meanwhile */
            give_back(cls, buf, (uint32_t)k, false);
            if (r < 0) return false;
            continue;
        }
        __atomic_store_n(&c->begin[cls], (uint16_t)to, __ATOMIC_RELAXED); /* (statistics read it unlocked) */
        int n = slab_put(c, cls, buf, (uint32_t)k); /* (room: cap >= k) */
        if (n < 0) n = 0;
        give_back(cls, buf + n, (uint32_t)k - (uint32_t)n, false);
        return true;
    }
}

/* Change cls's capacity to cap slots (at most slot_max[cls]), giving back (to
 * central) what is cached above it; false when a per-CPU caller was migrated
 * meanwhile. */
static bool slab_set_capacity(ta_pcache_t *c, uint32_t cls, uint32_t cap) {
    if (cap > range_max(c, cls) && !move_to_full(c, cls)) return false;
    uint32_t end = c->begin[cls] + cap;
    for (;;) {
        int r;
        if (c->cpu >= 0) {
            r = rseq_set_end(c->cpu, cls, end);
        } else {
            r = hdr_of(c, cls)->cur <= end;
            if (r) hdr_of(c, cls)->end = (uint16_t)end;
        }
        if (r) return r > 0;
        ta_slot_t buf[MAX_BATCH];
        uint32_t cur = __atomic_load_n(&hdr_of(c, cls)->cur, __ATOMIC_RELAXED);
        uint32_t n = cur > end ? cur - end : 1;
        int k = slab_take(c, cls, buf, n < MAX_BATCH ? n : MAX_BATCH);
        if (k < 0) return false;
        give_back(cls, buf, (uint32_t)k, false);
    }
}

static inline uint32_t capacity(const ta_pcache_t *c, uint32_t cls) {
    return hdr_of(c, cls)->end - c->begin[cls];
}

/* The cache's invariants (debug builds): every header within its class's
 * range, capacity within the budget, every cached object free. */
static void check_cache(const ta_pcache_t *c, uint32_t cls) {
#ifdef TA_DEBUG
    ta_slab_hdr_t h = {.word = __atomic_load_n(&hdr_of(c, cls)->word, __ATOMIC_RELAXED)};
    TA_ASSERT(h.begin == c->begin[cls] && h.begin <= h.cur && h.end <= c->begin[cls] + range_max(c, cls));
    TA_ASSERT(c->committed <= c->budget);
    if (c->cpu < 0) { /* a thread's own cache: nothing moves under us */
        TA_ASSERT(h.cur <= h.end);
        for (uint32_t i = h.begin; i < h.cur; i++)
            TA_ASSERT(c->slab[i].obj && ta_obj_cached_state(*c->slab[i].state) &&
                      c->slab[i].state == ta_state_of(c->slab[i].obj, cls));
    }
#else
    (void)c;
    (void)cls;
#endif
}

/* ---- layout ------------------------------------------------------------------ */
/* Most slots a class may have: about 1 MiB of objects, at least two batches. */
static uint32_t class_max(uint32_t cls) {
    uint32_t cap = (uint32_t)((1u << 20) / ta_class[cls].size);
    uint32_t top = ta_class[cls].size <= 128 ? 2048 : 1024;
    if (cap > top) cap = top;
    if (cap < 2 * ta_class[cls].batch) cap = 2 * ta_class[cls].batch;
    return cap;
}

/* The word of header TA_SLAB_SHARD: the cache's central shard, where a state
 * byte's address has it (TA_SLAB_SHARD_CHECK). */
static inline uint64_t shard_word(const ta_pcache_t *c) {
    return (uint64_t)(c->shard % ta_central_shards()) << TA_STATES_SHARD_SHIFT;
}

/* Header h closed: every pop (cur <= begin) and push (cur >= end) misses. */
static inline ta_slab_hdr_t closed(ta_slab_hdr_t h) {
    h.begin = 0xffff;
    h.end = 0;
    return h;
}

/* A thread cache's copy of it in header 0 (no class's), which shares its
 * line with the small classes' headers that the push reads anyway
 * (TA_SLAB_THREAD_SHARD_CHECK; read at 1016 it was one more line for every
 * free: `batch_mt/threads:1` pinned, 4 interleaved runs, 26.8-28.0 against
 * 26.3-27.0 us here); closed (begin above cur, end 0), so that it reads as
 * an empty, full class. */
static inline uint64_t thread_shard_word(const ta_pcache_t *c) {
    return shard_word(c) | closed((ta_slab_hdr_t){.word = 0}).word;
}

/* A CPU's headers are all zero until then (every pop and push misses), but
 * the caller may run on another CPU by now: as in release(), cur is set with
 * the class closed, and opened after a fence, so that no push reads the old
 * cur (0, the headers' slot) with the new end. */
static void layout_headers(ta_pcache_t *c) {
    ta_slab_hdr_t h[TA_MAX_CLASSES];
    for (uint32_t cls = 0; cls < TA_MAX_CLASSES; cls++) {
        __atomic_store_n(&c->begin[cls], short_begin[cls], __ATOMIC_RELAXED);
        h[cls] = (ta_slab_hdr_t){.cur = short_begin[cls], .begin = short_begin[cls], .end = short_begin[cls]};
    }
    h[TA_SLAB_OUTBOX].end = (uint16_t)(short_begin[TA_SLAB_OUTBOX] + OUTBOX_SLOTS);
    if (c->cpu < 0) /* (a CPU's push sends every other shard's object to the outbox) */
        for (uint32_t cls = 1; cls <= TA_CLASS_LINE_SHARED; cls++)
            h[TA_SLAB_HOME + cls].end = (uint16_t)(short_begin[TA_SLAB_HOME + cls] + HOME_SLOTS);
    h[TA_SLAB_SHARD].word = shard_word(c);
    if (c->cpu < 0) h[0].word = thread_shard_word(c);
    if (c->cpu >= 0) {
        for (uint32_t cls = 0; cls < TA_MAX_CLASSES; cls++)
            __atomic_store_n(&hdr_of(c, cls)->word, closed(h[cls]).word, __ATOMIC_RELEASE);
        (void)fence_cpu(c->cpu); /* (refused: the window is a few instructions wide) */
    }
    for (uint32_t cls = 0; cls < TA_MAX_CLASSES; cls++) __atomic_store_n(&hdr_of(c, cls)->word, h[cls].word, __ATOMIC_RELEASE);
    c->committed = 0;
    c->ready = true;
}

static bool cpu_caches_make(void);

/* Is rseq usable: glibc registered its area for this thread, and the kernel
 * can fence a CPU's sequences (membarrier)? */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
static bool percpu_possible(void) {
#if TA_HAVE_RSEQ
    if (!&__rseq_offset || !&__rseq_size || __rseq_size < 8) return false;
    ta_rseq_off = (long)__rseq_offset;
    if (current_cpu() < 0) return false; /* registration failed or was turned off */
    if (ta_sys3(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) return false;
    return true;
#else
    return false;
#endif
}

void ta_pcache_init(void) {
    uint32_t slot = TA_SLAB_HDR_SLOTS; /* the headers take the first slots */
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) { /* the short ranges */
        slot_max[cls] = (uint16_t)class_max(cls);
        short_begin[cls] = (uint16_t)slot;
        short_max[cls] = (uint16_t)(slot_max[cls] < SHORT_SLOTS ? slot_max[cls] : SHORT_SLOTS);
        slot += short_max[cls];
    }
    slot += TA_SLOT_SKEW;
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        if (slot_max[cls] <= SHORT_SLOTS) { /* the short range is the whole */
            slot_begin[cls] = short_begin[cls];
            continue;
        }
        slot_begin[cls] = (uint16_t)slot;
        /* plus a line: the class ranges (32 KiB for small classes) would all
         * start in the same L1 set, and so would the tops of their stacks */
        slot += slot_max[cls] + TA_SLOT_SKEW;
    }
    /* the outbox: a range of its own, its capacity fixed (layout_headers) */
    _Static_assert(TA_NCLASSES <= TA_SLAB_OUTBOX, "the outbox and shard headers are no class's");
    short_begin[TA_SLAB_OUTBOX] = slot_begin[TA_SLAB_OUTBOX] = (uint16_t)slot;
    short_max[TA_SLAB_OUTBOX] = slot_max[TA_SLAB_OUTBOX] = OUTBOX_SLOTS;
    slot += OUTBOX_SLOTS + TA_SLOT_SKEW;
    for (uint32_t cls = 1; cls <= TA_CLASS_LINE_SHARED; cls++) { /* the home-bound stacks */
        short_begin[TA_SLAB_HOME + cls] = slot_begin[TA_SLAB_HOME + cls] = (uint16_t)slot;
        short_max[TA_SLAB_HOME + cls] = slot_max[TA_SLAB_HOME + cls] = HOME_SLOTS;
        slot += HOME_SLOTS;
    }
    slot += TA_SLOT_SKEW;
    if (slot >= 65536) ta_fatal("the slab layout needs %u slots, more than a header can count", slot);
    for (uint32_t cls = ta_nclasses; cls < TA_MAX_CLASSES; cls++)
        if (cls != TA_SLAB_OUTBOX && !is_home(cls)) short_begin[cls] = slot_begin[cls] = (uint16_t)slot;
    slab_bytes = ((size_t)slot * sizeof(ta_slot_t) + 4095) & ~(size_t)4095;
    budget_pool = (int64_t)ta_cfg.cache_bytes;
    pthread_key_create(&pcache_key, ta_pcache_thread_exit);

    if (ta_cfg.percpu == TA_PERCPU_NEVER || !percpu_possible()) return;
    if (ta_cfg.percpu == TA_PERCPU_ALWAYS) {
        if (!cpu_caches_make()) return;
        ta_fe.percpu = ta_fe.rseq = true;
        return;
    }
    ta_fe.guarded = ta_fe.rseq = true; /* auto: per-thread caches until switch_to_percpu */
}

/* CPUs the system may ever have (the slabs must cover every CPU number): the
 * highest of /sys/devices/system/cpu/possible ("0-3,8-11") plus one, 0 when
 * it cannot be read.  Read here rather than by sysconf, which may allocate. */
static uint32_t possible_cpus(void) {
    char buf[256];
    long n = ta_os_read_file("/sys/devices/system/cpu/possible", buf, sizeof buf - 1);
    if (n <= 0) return 0;
    buf[n] = '\0';
    uint32_t top = 0, v = 0;
    bool digits = false;
    for (char *q = buf; *q; q++) {
        if (*q >= '0' && *q <= '9') {
            v = v * 10 + (uint32_t)(*q - '0');
            digits = true;
            if (v > 65535) return 0;
        } else {
            if (digits && v + 1 > top) top = v + 1;
            v = 0;
            digits = false;
        }
    }
    if (digits && v + 1 > top) top = v + 1;
    return top;
}

/* Set up the per-CPU caches (address space only: a CPU's slab becomes
 * resident as its classes fill); false if they cannot be had. */
static bool cpu_caches_make(void) {
    uint32_t n = possible_cpus();
    if (n < 1 || n > 4096) return false;
    char *slabs = ta_meta_map((size_t)n << TA_SLAB_SHIFT, (size_t)1 << TA_SLAB_SHIFT);
    ta_pcache_t *cs = ta_meta_alloc((size_t)n * sizeof *cs);
    if (!slabs || !cs) return false;
    for (uint32_t i = 0; i < n; i++) {
        cs[i].slab = (ta_slot_t *)(slabs + ((size_t)i << TA_SLAB_SHIFT));
        cs[i].cpu = (int)i;
        ta_lock_set_rank(&cs[i].lock, TA_RANK_CPU);
        cs[i].budget = ta_cfg.cpu_cache_bytes;
        cs[i].shard = i;
        cs[i].state = TA_PC_LIVE;
    }
    ta_cpu_slabs = slabs;
    cpus = cs;
    __atomic_store_n(&ncpus, n, __ATOMIC_RELEASE);
    return true;
}

ta_slot_ranges_t ta_pcache_ranges(uint32_t cls) {
    return (ta_slot_ranges_t){short_begin[cls], short_max[cls], slot_begin[cls], slot_max[cls]};
}

/* ---- capacity ---------------------------------------------------------------- */
/* Take budget for `need` more bytes of capacity from the global pool. */
static bool take_budget(ta_pcache_t *c, uint64_t need) {
    if (c->cpu >= 0 && c->crowded) return false; /* shared: the base only */
    uint64_t want = need < BUDGET_STEP ? BUDGET_STEP : need;
    if (c->budget + want > ta_cfg.thread_cache_max) return false;
    bool above_floor = c->budget + want > THREAD_BUDGET_FLOOR;
    /* a spent pool is read, not written: every thread of a busy program would
     * otherwise take and give back the same shared line on each growth */
    if (above_floor && __atomic_load_n(&budget_pool, __ATOMIC_RELAXED) < (int64_t)want) return false;
    if (__atomic_sub_fetch(&budget_pool, (int64_t)want, __ATOMIC_RELAXED) < 0 && above_floor) {
        __atomic_add_fetch(&budget_pool, (int64_t)want, __ATOMIC_RELAXED);
        return false;
    }
    c->budget += want;
    return true;
}

/* Shrink cls's capacity by `slots` (what is cached above it goes to central). */
static bool shrink(ta_pcache_t *c, uint32_t cls, uint32_t slots) {
    uint32_t cap = capacity(c, cls);
    if (slots > cap) slots = cap;
    if (!slab_set_capacity(c, cls, cap - slots)) return false;
    c->committed -= (uint64_t)slots * ta_class[cls].size;
    return true;
}

/* A CPU's budget above its base and above what its classes use goes back to
 * the pool (in steps, so that a busy CPU does not bounce at the limit). */
static void return_borrowed(ta_pcache_t *c) {
    uint64_t keep = c->committed > ta_cfg.cpu_cache_bytes ? c->committed : ta_cfg.cpu_cache_bytes;
    if (c->cpu < 0 || c->budget <= keep) return;
    uint64_t give = (c->budget - keep) / BUDGET_STEP * BUDGET_STEP;
    c->budget -= give;
    __atomic_add_fetch(&budget_pool, (int64_t)give, __ATOMIC_RELAXED);
}

/* The CPUs whose caches the thread has used (bit n: CPU n), which its exit
 * counts off (forget_user). */
static __thread uint64_t used_cpus[USER_BITS / 64];

/* The calling thread is counted among the users of cpu (false past USER_BITS). */
static inline bool is_user(uint32_t cpu) { return cpu < USER_BITS && (used_cpus[cpu / 64] >> (cpu % 64) & 1); }

/* The calling thread uses CPU cache c (its lock held, running on it): count it
 * among the CPU's users the first time; once they are more than CPU_USERS,
 * give up what was borrowed, largest classes first.  Users are the threads
 * still alive, not the threads seen in a period: a program with more threads
 * than that keeps every CPU at its base for as long as they live (2 000
 * threads that each churned 1 MiB and wait: a CPU holds at most its base),
 * while one with a few busy threads a CPU (16 on 2 CPUs) lets its CPUs
 * borrow as a thread cache would.  (Counting the threads seen in each decay
 * period, as until stop 32, could not tell the two apart: 8 threads a period
 * kept the 16 busy ones at the base, and 32 let the first 32 of the 2 000
 * borrow again after each period.) */
static void note_user(ta_pcache_t *c) {
    uint32_t cpu = (uint32_t)c->cpu;
    if (cpu < USER_BITS) {
        if (!is_user(cpu) && !thread_gone) {
            used_cpus[cpu / 64] |= (uint64_t)1 << (cpu % 64);
            if (++c->users > CPU_USERS) c->crowded = true;
        }
    } else {
        c->crowded = true; /* (its users are not counted: the base only) */
    }
    /* crowded: back to the base.  Also when already crowded, while it is
     * still above it: a shrink fails when the thread is migrated, and the
     * next slow path of another thread must go on with it */
    if (!c->crowded || c->committed <= ta_cfg.cpu_cache_bytes) return;
    for (uint32_t cls = ta_nclasses - 1; cls >= 1 && c->committed > ta_cfg.cpu_cache_bytes; cls--)
        if (!shrink(c, cls, capacity(c, cls))) break; /* migrated: the next slow path goes on */
    return_borrowed(c);
}

/* An exiting thread is no longer a user of the CPUs it used: a CPU counts the
 * threads that use it, not those that did.  (A program that starts a thread
 * per task, or a benchmark harness that starts its threads again for each
 * run, would otherwise crowd every CPU: before stop 31 `remote_frees` on 8
 * threads missed tier 1 168 k times in a one-second run, and 1.8 k times once
 * the dead were left out.) */
static void forget_user(void) {
    uint32_t n = __atomic_load_n(&ncpus, __ATOMIC_ACQUIRE);
    for (uint32_t w = 0; w < USER_BITS / 64; w++) {
        uint64_t m = used_cpus[w];
        used_cpus[w] = 0;
        for (; m; m &= m - 1) {
            uint32_t cpu = w * 64 + (uint32_t)__builtin_ctzll(m);
            if (cpu >= n) continue;
            ta_pcache_t *c = &cpus[cpu];
            ta_lock(&c->lock);
            if (c->users && --c->users <= CPU_USERS) c->crowded = false;
            ta_unlock(&c->lock);
        }
    }
}

/* Move capacity to cls from the other classes, halving them, the one whose
 * capacity takes the most bytes first.  (Round-robin, as it was, halved the
 * small classes as often as the large ones: a crowded CPU cache with a mix
 * of sizes, its budget filled by a batch of each class of 2-16 KiB, kept
 * halving the classes of 16-256 bytes that take three quarters of the calls,
 * which then started again from two slots.) */
static int64_t steal_capacity(ta_pcache_t *c, uint32_t cls, int64_t spare, uint64_t need) {
    while (spare < (int64_t)need) {
        uint32_t victim = 0;
        uint64_t most = 0;
        for (uint32_t j = 1; j < ta_nclasses; j++) {
            uint64_t bytes = (uint64_t)capacity(c, j) * ta_class[j].size;
            if (j != cls && bytes > most) most = bytes, victim = j;
        }
        if (!victim) break;
        uint32_t cap = capacity(c, victim), keep = cap / 2;
        if (keep < ta_class[victim].batch) keep = 0;
        uint64_t before = c->committed;
        if (!shrink(c, victim, cap - keep)) break;
        spare += (int64_t)(before - c->committed);
    }
    return spare;
}

/* Raise cls's capacity (slow start, then a batch at a time) if the budget,
 * topped up or taken from other classes, allows.
 *
 * A thread cache's class grows past FREE_OBJECTS (or its batch, if smaller)
 * only on every GROW_REFILLS-th refill within the current refill window (a
 * twentieth of the decay period, 50 ms by default); at the end of a window,
 * a class in use that ran dry fewer than FEW_REFILLS times gives a quarter of
 * its capacity above that back, with what it holds above the rest
 * (trim_thread_cache).  A class whose mallocs and frees take turns at random
 * (a server's threads freeing each other's blocks) runs dry now and then
 * however large it is, and used to grow by a batch at every such refill: two
 * threads of the `server` shape held 3.8 MB in their caches after 10^6
 * replacements each and 7.1-7.5 MB after 2*10^7 to 8*10^7, for 2.2 MB in
 * use (now 1.8-2.1 MB after 10^6, 3.0-3.5 MB after 2*10^7 to 8*10^7).  A class that allocates a burst runs dry many times in a
 * window and grows nearly as fast as before.  (Per-CPU caches have a fixed
 * base budget instead.) */
#define FREE_OBJECTS 16
#define GROW_REFILLS 8
#define FEW_REFILLS 2
static inline uint32_t free_capacity(uint32_t cls) {
    return ta_class[cls].batch < FREE_OBJECTS ? ta_class[cls].batch : FREE_OBJECTS;
}
static void grow(ta_pcache_t *c, uint32_t cls) {
    uint32_t cap = capacity(c, cls), top = slot_max[cls];
    if (cap >= top) return;
    if (c->cpu < 0 && cap >= free_capacity(cls) && c->refills[cls] % GROW_REFILLS) return;
    uint32_t batch = ta_class[cls].batch, step = batch > 4 ? 2 : 1;
    uint32_t add = cap >= batch ? batch : (cap + step < batch - cap ? cap + step : batch - cap);
    if (cap + add > top) add = top - cap;
    uint64_t need = (uint64_t)add * ta_class[cls].size;
    int64_t spare = (int64_t)c->budget - (int64_t)c->committed;
    if (spare < (int64_t)need && !take_budget(c, need - (uint64_t)(spare > 0 ? spare : 0))) {
        spare = steal_capacity(c, cls, spare, need);
        if (spare < (int64_t)need) return;
    }
    if (slab_set_capacity(c, cls, cap + add)) c->committed += need;
}

/* ---- a thread's own cache on its slow paths ------------------------------------ */
/* The calling thread may work on its own cache c: false once the switch to
 * per-CPU caches has happened (then c is to be retired, see switch_to_percpu)
 * or c is no longer live.  Only its thread touches it: nothing to mark, and
 * nothing to undo when it is done. */
static inline bool own_enter(ta_pcache_t *c) {
    return TA_LIKELY(!__atomic_load_n(&ta_fe.percpu, __ATOMIC_RELAXED) &&
                     __atomic_load_n(&c->state, __ATOMIC_RELAXED) == TA_PC_LIVE);
}

/* ---- objects going home (OUTBOX_SLOTS) --------------------------------------- */
static ta_pcache_t *cache_lock(void);
static inline void cache_unlock(ta_pcache_t *c);

/* The headers that hold objects, in turn: the classes, then the outbox, then
 * 0 (a loop `for (cls = 1; cls; cls = next_cached(cls))`). */
static inline uint32_t next_cached(uint32_t cls) {
    return cls + 1 < ta_nclasses ? cls + 1 : cls == TA_SLAB_OUTBOX ? 0 : TA_SLAB_OUTBOX;
}

/* The class of a cached object (its pagemap word: the span is in use while
 * the object is in a cache). */
static inline uint32_t object_class(const void *p) {
    return TA_INFO_CLASS(ta_pagemap_info_known((uintptr_t)p >> TA_PAGE_SHIFT));
}

/* n free objects (their bytes marked FREE) into their shards' transfer
 * caches: sorted by shard and class, a run of each at a time. */
static void outbox_send(const ta_slot_t *in, uint32_t n) {
    if (!n) return;
    ta_slot_t buf[OUTBOX_SLOTS + 1];
    uint32_t key[OUTBOX_SLOTS + 1];
    while (n) {
        uint32_t m = n < OUTBOX_SLOTS + 1 ? n : OUTBOX_SLOTS + 1;
        for (uint32_t i = 0; i < m; i++) { /* insertion sort: a few dozen at most */
            uint32_t k = ta_states_shard(in[i].state) << 8 | object_class(in[i].obj), j = i;
            for (; j && key[j - 1] > k; j--) {
                key[j] = key[j - 1];
                buf[j] = buf[j - 1];
            }
            key[j] = k;
            buf[j] = in[i];
        }
        for (uint32_t i = 0, j; i < m; i = j) {
            for (j = i + 1; j < m && key[j] == key[i]; j++) {}
            ta_central_free(key[i] & 0xff, buf + i, j - i);
        }
        in += m;
        n -= m;
    }
}

/* Put p (state its byte, class cls) where it waits to go home: the outbox
 * of the caller's CPU, or per thread the class's home-bound stack (only
 * blocks under a cache line come here, TA_SLAB_THREAD_SHARD_CHECK); false
 * when full.  The push of TA_SLAB_PUSH without its shard check (it marks p
 * FREE). */
static bool outbox_push(void *p, uint8_t *state, uint32_t cls) {
    if (!ta_fe_percpu) return cls <= TA_CLASS_LINE_SHARED && ta_thread_home_push(p, state, cls);
#if TA_HAVE_RSEQ
    uintptr_t box = TA_SLAB_OUTBOX, t, c, n;
    __asm__ __volatile__ goto(TA_RSEQ_ARM_USING("c") TA_RSEQ_SLAB TA_SLAB_PUSH_AS("") "4:\n\t"
                              : [t] "=&r"(t), [c] "=&r"(c), [n] "=&r"(n)
                              : [p] "r"(p), [st] "r"(state), [rs] "r"(ta_rseq_off), [base] "m"(ta_cpu_slabs),
                                [cls] "r"(box)
                              : "memory", "cc"
                              : full);
    return true;
full:
#else
    (void)p;
    (void)state;
#endif
    return false;
}

static void free_foreign(void *p, uint8_t *state, uint32_t cls) {
    if (ta_class[cls].size <= OUTBOX_OBJ_MAX && outbox_push(p, state, cls)) return;
    /* full (or p is large): the outbox goes home now, p with it; a thread's
     * home-bound stack goes home without p, which starts the next batch (as a
     * class's flush keeps the block just freed: a batch of the blocks freed
     * one after the other, whose state bytes share lines, goes home whole,
     * and the owner does not take back the block whose line the freeing
     * thread writes next; measured in alloc/README.md) */
    ta_state_set(state, TA_OBJ_FREE);
    ta_slot_t buf[OUTBOX_SLOTS + 1], mine = {p, state};
    uint32_t n = 0;
    ta_pcache_t *c = cache_lock();
    if (c && c->state != TA_PC_DEAD) {
        c->n_free_miss++;
        uint32_t from = c->cpu < 0 && cls <= TA_CLASS_LINE_SHARED ? TA_SLAB_HOME + cls : TA_SLAB_OUTBOX;
        int k = slab_take(c, from, buf, from == TA_SLAB_OUTBOX ? OUTBOX_SLOTS : HOME_SLOTS);
        if (k > 0) n = (uint32_t)k;
        bool kept = from != TA_SLAB_OUTBOX && slab_put(c, from, &mine, 1) == 1;
        cache_unlock(c);
        if (kept) {
            ta_central_free(cls, buf, n);
            return;
        }
    }
    buf[n++] = mine;
    outbox_send(buf, n);
}

void ta_pcache_free_foreign(void *p, uint8_t *state, uint32_t cls) {
    /* (a free reaches tier 1 here or in ta_pcache_free_slow: tracing records it
     * at either; a thread that traces has an empty slab, but another shard's
     * block under a cache line comes here rather than to the slow path) */
    if (TA_UNLIKELY(ta_trace_on)) ta_trace_free(p);
    free_foreign(p, state, cls);
}

/* ---- decay and draining ------------------------------------------------------ */
/* Give back half of what each class that neither missed nor overflowed since
 * the last time holds, with as much capacity; with `all`, everything it holds
 * (capacity stays).  Thread caches: only the owner calls it.  CPU caches: the
 * caller holds c->lock, and the CPU is closed and fenced first, so that its
 * slab is the caller's until the headers are written back.
 *
 * Written back in two steps, with a second fence between them: first each
 * class's new cur, the class still closed; then, after the fence, begin and
 * end.  A fast path reads cur and then begin (or end) in two loads: had one
 * store opened the class with its new cur, a pop that read the old cur just
 * before it and the new begin just after would hand out an object already
 * given back, and commit the old cur - 1 over the new one (every object
 * between the two cached twice).  The second fence restarts any sequence that
 * read a cur from before. */
static void release(ta_pcache_t *c, bool all, bool to_spans) {
    if (!c->ready) return;
    ta_slab_hdr_t *h = hdr_of(c, 0), open[TA_MAX_CLASSES];
    uint16_t end[TA_MAX_CLASSES]; /* only slow paths under c->lock change end */
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) end[cls] = h[cls].end;
    bool percpu = c->cpu >= 0;
    end[TA_SLAB_OUTBOX] = h[TA_SLAB_OUTBOX].end;
    if (percpu) {
        for (uint32_t cls = 1; cls; cls = next_cached(cls)) {
            __atomic_store_n(&h[cls].begin, (uint16_t)0xffff, __ATOMIC_RELAXED);
            __atomic_store_n(&h[cls].end, (uint16_t)0, __ATOMIC_RELAXED);
        }
        if (!fence_cpu(c->cpu)) { /* cannot take the slab: open it again as it was (cur unchanged) */
            for (uint32_t cls = 1; cls; cls = next_cached(cls)) {
                __atomic_store_n(&h[cls].begin, c->begin[cls], __ATOMIC_RELAXED);
                __atomic_store_n(&h[cls].end, end[cls], __ATOMIC_RELAXED);
            }
            return;
        }
    }
    { /* the outbox goes home whole, at every release (an idle cache keeps none) */
        uint32_t begin = c->begin[TA_SLAB_OUTBOX], cur = __atomic_load_n(&h[TA_SLAB_OUTBOX].cur, __ATOMIC_RELAXED);
        outbox_send(c->slab + begin, cur - begin);
        open[TA_SLAB_OUTBOX] = (ta_slab_hdr_t){.cur = begin, .begin = (uint16_t)begin, .end = end[TA_SLAB_OUTBOX]};
        __atomic_store_n(&h[TA_SLAB_OUTBOX].word, (percpu ? closed(open[TA_SLAB_OUTBOX]) : open[TA_SLAB_OUTBOX]).word,
                         __ATOMIC_RELEASE);
    }
    if (!percpu) /* and a thread's home-bound stacks (a CPU has none) */
        for (uint32_t cls = 1; cls <= TA_CLASS_LINE_SHARED; cls++) {
            uint32_t k = TA_SLAB_HOME + cls, begin = c->begin[k], cur = __atomic_load_n(&h[k].cur, __ATOMIC_RELAXED);
            if (cur <= begin) continue;
            ta_central_free(cls, c->slab + begin, cur - begin);
            __atomic_store_n(&h[k].cur, begin, __ATOMIC_RELAXED);
        }
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        uint32_t begin = c->begin[cls], cur = __atomic_load_n(&h[cls].cur, __ATOMIC_RELAXED);
        uint32_t held = cur - begin, cap = end[cls] - begin, k = 0, shrink_by = 0;
        if (all) {
            k = held;
        } else if (!c->active[cls]) {
            k = (held + 1) / 2;
            shrink_by = k < cap ? k : cap;
        }
        c->active[cls] = 0;
        if (k) {
            give_back(cls, c->slab + cur - k, k, to_spans);
        }
        c->committed -= (uint64_t)shrink_by * ta_class[cls].size;
        open[cls] = (ta_slab_hdr_t){.cur = cur - k, .begin = (uint16_t)begin, .end = (uint16_t)(end[cls] - shrink_by)};
        __atomic_store_n(&h[cls].word, (percpu ? closed(open[cls]) : open[cls]).word, __ATOMIC_RELEASE);
    }
    if (!percpu) return;
    /* (it worked a moment ago: a refusal now would leave the CPU closed for good) */
    if (!fence_cpu(c->cpu)) ta_fatal("membarrier failed while releasing the cache of CPU %d", c->cpu);
    for (uint32_t cls = 1; cls; cls = next_cached(cls))
        __atomic_store_n(&h[cls].word, open[cls].word, __ATOMIC_RELEASE);
}

/* The end of a thread cache's refill window (see grow): a class in use that
 * ran dry fewer than FEW_REFILLS times gives back a quarter of its capacity
 * (not going below free_capacity) and what it holds above the rest. */
static void trim_thread_cache(ta_pcache_t *c) {
    if (!c->ready) return;
    ta_slab_hdr_t *h = hdr_of(c, 0);
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        uint32_t refills = c->refills[cls];
        c->refills[cls] = 0;
        ta_slab_hdr_t hd = {.word = h[cls].word};
        uint32_t cap = (uint32_t)(hd.end - hd.begin), floor = free_capacity(cls);
        /* (an idle class halves at the decay instead) */
        if (refills >= FEW_REFILLS || cap <= floor || !c->active[cls]) continue;
        uint32_t keep = cap - cap / 4;
        if (keep < floor) keep = floor;
        uint32_t held = (uint32_t)(hd.cur - hd.begin), k = held > keep ? held - keep : 0;
        if (k) give_back(cls, c->slab + hd.cur - k, k, false);
        c->committed -= (uint64_t)(cap - keep) * ta_class[cls].size;
        hd.cur -= k;
        hd.end = (uint16_t)(hd.begin + keep);
        __atomic_store_n(&h[cls].word, hd.word, __ATOMIC_RELEASE);
    }
}

/* The pages of thread cache c's slab go back to the OS (it reads as zero
 * after); not ta_os_release: these are metadata, not heap pages. */
static void slab_release(ta_pcache_t *c) {
    ta_sys3(SYS_madvise, c->slab, slab_bytes, MADV_DONTNEED);
    c->slab_released = true;
}

/* The records of exited threads wait on pcache_free for the next thread,
 * each with its slab, whose touched pages (headers and the slots of the
 * classes it used: 30-40 KiB each in a program of many sizes) stay resident:
 * after a burst of 1 000 threads under TIERALLOC_PERCPU=0, 37 MB that
 * malloc_trim did not give back.  The slabs of those that exited before
 * `freed_before` (ms) go back to the OS: once per decay period those unused
 * for a period (a program that starts threads all the time reuses resident
 * ones), at malloc_trim all.  The list is taken off while the pages are
 * released (a system call each), so that creating and ending threads does
 * not wait for them.  Returns the bytes released. */
size_t ta_pcache_release_free_slabs(uint64_t freed_before) {
    ta_lock(&reg_lock);
    ta_pcache_t *list = pcache_free;
    bool any = false;
    for (ta_pcache_t *c = list; c && !any; c = c->next_all) any = !c->slab_released && c->freed_ms <= freed_before;
    if (any) pcache_free = NULL;
    ta_unlock(&reg_lock);
    if (!any) return 0;
    size_t bytes = 0;
    for (ta_pcache_t *c = list; c; c = c->next_all) {
        if (c->slab_released || c->freed_ms > freed_before) continue;
        slab_release(c);
        bytes += slab_bytes;
    }
    ta_lock(&reg_lock); /* back, after those freed meanwhile (resident: reused first) */
    ta_pcache_t **end = &pcache_free;
    while (*end) end = &(*end)->next_all;
    *end = list;
    ta_unlock(&reg_lock);
    return bytes;
}

/* Once per decay period: idle classes of every CPU (or of the calling
 * thread) give back half, then the tiers below run their decay.  From the
 * background thread (own NULL) when it runs; a slow path then does only what
 * no other thread may do, its own thread cache. */
static void tick(ta_pcache_t *own, bool may_start) {
    static uint64_t last_ms;
    bool bg = own && __atomic_load_n(&ta_pageheap_bg_active, __ATOMIC_RELAXED);
    uint64_t now = ta_os_now_ms();
    if (own && own->cpu < 0) __atomic_store_n(&own->active_ms, now, __ATOMIC_RELAXED);
    if (!bg && ta_period_claim(&last_ms, now, ta_cfg.decay_ms)) {
        ta_pcache_release_free_slabs(now - ta_cfg.decay_ms);
        if (ta_fe_percpu) {
            for (uint32_t i = 0; i < ncpus; i++) {
                ta_pcache_t *c = &cpus[i];
                if (!__atomic_load_n(&c->ready, __ATOMIC_ACQUIRE) || !ta_trylock(&c->lock)) continue;
                release(c, false, false);
                return_borrowed(c);
                ta_unlock(&c->lock);
            }
        }
    }
    if (own && own->cpu < 0) { /* the thread's own cache: its refill window, then its decay */
        bool window = now - own->window_ms >= ta_cfg.decay_ms / 20, decay = now - own->scavenged_ms >= ta_cfg.decay_ms;
        if ((window || decay) && own_enter(own)) {
            if (window) own->window_ms = now, trim_thread_cache(own);
            if (decay) own->scavenged_ms = now, release(own, false, false);
        }
    }
    if (!bg) ta_central_tick(now);
    if (may_start) ta_background_kick();
}

void ta_pcache_decay_tick(void) { tick(NULL, false); }

/* ---- finding the caller's cache ------------------------------------------------ */
/* Thread cache c, emptied, leaves the registry (caller holds reg_lock): its
 * budget goes back to the pool, its counts to the dead threads'. */
static void unregister(ta_pcache_t *c) {
    shard_users[c->shard]--;
    __atomic_add_fetch(&budget_pool, (int64_t)c->budget, __ATOMIC_RELAXED);
    c->budget = c->committed = 0;
    dead_alloc_miss += c->n_alloc_miss;
    dead_free_miss += c->n_free_miss;
    c->prev_all->next_all = c->next_all;
    c->next_all->prev_all = c->prev_all;
    live_threads--;
}

/* Empty thread cache c for good, after the switch to per-CPU caches: its
 * objects go to central, its budget to the pool, its slab's pages to the OS.
 * The caller is its thread and holds reg_lock. */
static void retire(ta_pcache_t *c) {
    release(c, true, false);
    unregister(c);
    slab_release(c);
    __atomic_store_n(&c->state, TA_PC_RETIRED, __ATOMIC_RELEASE);
}

/* The calling thread's own cache after the switch: emptied if still LIVE
 * (see switch_to_percpu).  Only its thread changes a LIVE cache's state. */
static void retire_own(ta_pcache_t *own) {
    if (__atomic_load_n(&own->state, __ATOMIC_RELAXED) != TA_PC_LIVE) return;
    ta_lock(&reg_lock);
    retire(own);
    ta_unlock(&reg_lock);
}

/* Auto mode, reg_lock held: the process has more than percpu_threads threads
 * with a cache; from now on every thread uses the caches of the CPUs.  The
 * fast paths read the flag on every call.  The thread caches are left to
 * their threads: a thread's operations on its own slab are plain loads and
 * stores, so no other thread may take its objects; each empties its cache on
 * its next slow path (cache_lock), at malloc_trim or at its exit (retire_own).
 * What a thread that never takes one of those holds stays counted in
 * thread_cache_bytes, as it did before the switch.  (Nothing else to order:
 * the CPUs' slabs are new, all their headers zero.) */
static void switch_to_percpu(void) {
    if (!cpu_caches_make()) {
        ta_fe.guarded = false; /* per-thread caches for good, no more switch */
        return;
    }
    __atomic_store_n(&ta_fe.percpu, true, __ATOMIC_SEQ_CST);
}

/* The central shard for a new thread cache (reg_lock held): the one with the
 * fewest busy thread caches (a slow path in the last decay period), then the
 * fewest live ones, then in turn.  Threads of one shard refill from the same
 * spans, so their objects, and the object-state bytes free and malloc write,
 * end up side by side: two busy threads on one shard write the same cache
 * lines from two CPUs for as long as they live.  (An idle main thread waiting
 * for its workers is a better neighbour than a busy worker.)  Busy caches are
 * counted while there are few: past 64 live ones only the live ones are. */
static uint32_t least_used_shard(void) {
    uint32_t n = ta_central_shards(), best = pcache_seq++ % n, busy[64] = {0};
    if (live_threads <= 64) {
        uint64_t now = ta_os_now_ms();
        for (ta_pcache_t *c = reg_head.next_all; c != &reg_head; c = c->next_all)
            if (c->state == TA_PC_LIVE && now - __atomic_load_n(&c->active_ms, __ATOMIC_RELAXED) < ta_cfg.decay_ms)
                busy[c->shard]++;
    }
    for (uint32_t k = 1; k < n; k++) {
        uint32_t i = (best + k) % n;
        if (busy[i] < busy[best] || (busy[i] == busy[best] && shard_users[i] < shard_users[best])) best = i;
    }
    return best;
}

static ta_pcache_t *thread_cache_create(void) {
    ta_lock(&reg_lock);
    ta_pcache_t *c = pcache_free;
    if (c) pcache_free = c->next_all;
    ta_unlock(&reg_lock);
    /* a new record is written first (memset below), not read: one fault */
    ta_slot_t *slab = c ? c->slab : NULL;
    if (!c && !(c = ta_meta_alloc(sizeof *c))) return NULL;
    if (!slab) slab = ta_meta_map(slab_bytes, 4096);
    if (!slab) { /* out of memory: the record waits for the next thread */
        ta_lock(&reg_lock);
        c->next_all = pcache_free;
        pcache_free = c;
        ta_unlock(&reg_lock);
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->slab = slab;
    c->cpu = -1;
    c->state = TA_PC_LIVE;
    c->scavenged_ms = c->active_ms = c->window_ms = ta_os_now_ms();
    layout_headers(c);
    ta_lock(&reg_lock);
    c->shard = least_used_shard();
    shard_users[c->shard]++;
    hdr_of(c, TA_SLAB_SHARD)->word = shard_word(c); /* (laid out with shard 0 above; no other thread reads it) */
    hdr_of(c, 0)->word = thread_shard_word(c);
    c->next_all = reg_head.next_all;
    c->prev_all = &reg_head;
    reg_head.next_all->prev_all = c;
    reg_head.next_all = c;
    if (++live_threads > ta_cfg.percpu_threads && ta_fe.guarded && !ta_fe_percpu) switch_to_percpu();
    ta_unlock(&reg_lock);
    /* TLS first: if pthread_setspecific allocates, it finds the cache */
    ta_tls.cache = c;
    ta_tls.slab = ta_trace_on ? (ta_slot_t *)slab_none : c->slab; /* tracing: every call misses */
    pthread_setspecific(pcache_key, c);
    /* the key holds c: cpu_cache_lock (the sampling path's, after a switch)
     * must not put &pcache_dead in its place, or the exit would not retire c */
    thread_registered = true;
    return c;
}

/* The calling thread's cache (created on its first miss), &pcache_dead after
 * its exit flush, or NULL when no memory is left for one. */
static ta_pcache_t *thread_cache(void) {
    ta_pcache_t *c = ta_tls.cache;
    if (TA_LIKELY(c)) return c;
    return thread_cache_create();
}

/* The cache of the CPU the caller runs on, locked and laid out. */
static ta_pcache_t *cpu_cache_lock(void) {
    if (TA_UNLIKELY(!thread_registered)) {
        /* so that the thread's exit runs ta_pcache_thread_exit (sampling counts) */
        thread_registered = true;
        pthread_setspecific(pcache_key, &pcache_dead);
    }
    int cpu = current_cpu();
    ta_pcache_t *c = &cpus[(uint32_t)cpu < ncpus ? (uint32_t)cpu : 0];
    ta_lock(&c->lock);
    if (!c->ready) layout_headers(c);
    note_user(c);
    return c;
}

/* The caller's cache for a slow path: its CPU's, locked, or its own (NULL or
 * &pcache_dead: none, go to central).  After the switch, the caller's own
 * cache, if it still has one, is emptied first. */
static ta_pcache_t *cache_lock(void) {
    if (!ta_fe_percpu) {
        ta_pcache_t *c = thread_cache();
        if (!c || c == &pcache_dead) return c;
        if (TA_LIKELY(own_enter(c))) return c;
        /* the switch happened meanwhile (perhaps in thread_cache) */
    }
    ta_pcache_t *own = ta_tls.cache;
    if (TA_UNLIKELY(own && own != &pcache_dead)) retire_own(own);
    return cpu_cache_lock();
}

static inline void cache_unlock(ta_pcache_t *c) {
    if (c->cpu >= 0) ta_unlock(&c->lock);
}

/* ---- the slow paths ------------------------------------------------------------ */
/* From the sampling slow path, which every thread takes at its first malloc
 * and then every TIERALLOC_SAMPLE_BYTES (512 KiB) it allocates: the thread is
 * counted among its CPU's users even if the CPU's cache serves it without a
 * miss (2 000 threads that each churned 1 MiB through a CPU cache that had
 * borrowed 4 MiB: 28 of its 1 000 took a slow path, and the CPU stayed
 * uncrowded with 4.9 MB).  Once a thread is counted there, nothing to do. */
void ta_pcache_note_user(void) {
    int cpu = current_cpu();
    if ((uint32_t)cpu >= __atomic_load_n(&ncpus, __ATOMIC_ACQUIRE)) return;
    if (is_user((uint32_t)cpu) || thread_gone) return;
    cache_unlock(cpu_cache_lock()); /* (which notes it) */
}

void *ta_pcache_alloc_slow(uint32_t cls) {
    ta_pcache_t *c = cache_lock();
    ta_slot_t buf[MAX_BATCH];
    if (TA_UNLIKELY(!c || c->state == TA_PC_DEAD)) {
        /* no cache (the thread is past its exit flush, or out of memory): straight to central */
        return ta_central_alloc(cls, buf, 1, 0, true) ? buf[0].obj : NULL; /* (kept by no cache) */
    }
    c->n_alloc_miss++;
    c->active[cls] = 1;
    if (c->refills[cls] < 248) c->refills[cls]++; /* (a multiple of GROW_REFILLS: see grow) */
    else c->refills[cls] = 248 - GROW_REFILLS + 1;
    if (!capacity(c, cls)) ta_central_touch(cls, c->shard); /* first use (or after decay) */
    grow(c, cls);
    /* one for the caller, the rest for the cache (no more than it may hold) */
    uint32_t want = ta_class[cls].batch, cap = capacity(c, cls);
    if (want > cap + 1) want = cap + 1;
    uint32_t got = ta_central_alloc(cls, buf, want, c->shard, c->cpu >= 0);
    void *p = got ? buf[--got].obj : NULL;
    if (got) {
        int k = slab_put(c, cls, buf, got);
        if (k < 0) k = 0; /* migrated to another CPU: the rest goes back */
        if ((uint32_t)k < got) ta_central_free(cls, buf + k, got - (uint32_t)k);
    }
    check_cache(c, cls);
    cache_unlock(c);
    tick(c, true); /* malloc: the background thread may start (never from free) */
    return p;
}

void ta_pcache_free_slow(void *p, uint32_t cls, uint8_t *state) {
    if (TA_UNLIKELY(ta_trace_on)) ta_trace_free(p);
    ta_pcache_t *c = cache_lock();
    ta_slot_t mine = {p, state};
    if (TA_UNLIKELY(!c || c->state == TA_PC_DEAD)) {
        ta_central_free(cls, &mine, 1);
        return;
    }
    c->n_free_miss++;
    if ((c->cpu >= 0 || cls <= TA_CLASS_LINE_SHARED) && (shard_word(c) ^ (uintptr_t)state) & TA_STATES_SHARD_MASK) {
        /* another shard's object, here because the slab was not laid out yet
         * (its shard word still 0: a thread's first free, a CPU's), or the
         * thread moved to another CPU since its push: it goes home, as from
         * the fast path (per thread, blocks under a cache line only) */
        cache_unlock(c);
        free_foreign(p, state, cls);
        return;
    }
    /* frees alone grow a class to one batch at most */
    if (capacity(c, cls) < ta_class[cls].batch) grow(c, cls);
    int k = slab_put(c, cls, &mine, 1);
    if (k == 0) {
        /* full: a batch goes to central, p stays (it is the most recently used) */
        ta_slot_t buf[MAX_BATCH + 1];
        c->active[cls] = 1;
        int n = slab_take(c, cls, buf, ta_class[cls].batch);
        if (n < 0) n = 0;
        if (slab_put(c, cls, &mine, 1) != 1) buf[n++] = mine;
        give_back(cls, buf, (uint32_t)n, false);
    } else if (k < 0) {
        ta_central_free(cls, &mine, 1); /* migrated meanwhile */
    }
    check_cache(c, cls);
    cache_unlock(c);
    tick(c, false);
}

void ta_pcache_flush_current(void) {
    ta_pcache_t *c = ta_tls.cache;
    if (!c || c == &pcache_dead) return;
    if (ta_fe_percpu) { /* the thread's cache from before the switch, if it still has it */
        retire_own(c);
        return;
    }
    if (own_enter(c)) release(c, true, true);
}

void ta_pcache_drain_all(void) {
    uint32_t n = __atomic_load_n(&ncpus, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        ta_pcache_t *c = &cpus[i];
        if (!__atomic_load_n(&c->ready, __ATOMIC_ACQUIRE)) continue;
        ta_lock(&c->lock);
        release(c, true, true);
        ta_unlock(&c->lock);
    }
}

void ta_pcache_thread_exit(void *arg) {
    ta_pcache_t *c = arg;
    if (ta_trace_on) ta_trace_thread_exit();
    /* (the destructors of keys made later run after this one, and may free:
     * a slow path then must not count the thread again, for good) */
    thread_gone = true;
    forget_user();
    if (!c || c == &pcache_dead || c->cpu >= 0) {
        ta_sample_thread_exit();
        return;
    }
    if (!own_enter(c)) { /* the switch happened: emptied, or to be emptied now */
        retire_own(c);
        ta_sample_thread_exit();
        return;
    }
    release(c, true, true); /* straight into the spans: whole spans can go back */
    __atomic_store_n(&c->state, TA_PC_EXITING, __ATOMIC_RELAXED);
    ta_sample_thread_exit();
    ta_tls.cache = &pcache_dead;
    ta_tls.slab = (ta_slot_t *)slab_none;
    ta_lock(&reg_lock);
    unregister(c);
    c->state = TA_PC_EMPTY;
    c->freed_ms = ta_os_now_ms();
    c->next_all = pcache_free;
    pcache_free = c;
    ta_unlock(&reg_lock);
}

/* ---- statistics and fork ----------------------------------------------------- */
static void count_objects(const ta_pcache_t *c, uint64_t *objects) {
    if (!__atomic_load_n(&c->ready, __ATOMIC_ACQUIRE)) return;
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        uint32_t cur = __atomic_load_n(&hdr_of(c, cls)->cur, __ATOMIC_RELAXED);
        uint32_t begin = __atomic_load_n(&c->begin[cls], __ATOMIC_RELAXED);
        objects[cls] += cur > begin ? cur - begin : 0;
    }
    /* the outbox's objects, by their class (read racily, as the counts: a
     * slot may be rewritten under us, but it holds an object of the heap) */
    uint32_t cur = __atomic_load_n(&hdr_of(c, TA_SLAB_OUTBOX)->cur, __ATOMIC_RELAXED);
    for (uint32_t i = short_begin[TA_SLAB_OUTBOX]; i < cur && i < (uint32_t)short_begin[TA_SLAB_OUTBOX] + OUTBOX_SLOTS; i++) {
        void *p = __atomic_load_n(&c->slab[i].obj, __ATOMIC_RELAXED);
        uint32_t cls = p ? object_class(p) : 0;
        if (cls && cls < ta_nclasses) objects[cls]++;
    }
    for (uint32_t cls = 1; cls <= TA_CLASS_LINE_SHARED; cls++) { /* a thread's home-bound stacks */
        uint32_t k = TA_SLAB_HOME + cls, hc = __atomic_load_n(&hdr_of(c, k)->cur, __ATOMIC_RELAXED);
        uint32_t hb = __atomic_load_n(&c->begin[k], __ATOMIC_RELAXED);
        objects[cls] += hc > hb ? hc - hb : 0;
    }
}

uint64_t ta_pcache_bytes(uint32_t cls_or_all) {
    ta_pcache_stats_t st;
    ta_lock(&reg_lock);
    ta_pcache_stats_locked(&st);
    ta_unlock(&reg_lock);
    uint64_t b = 0;
    for (uint32_t cls = 1; cls < ta_nclasses; cls++)
        if (!cls_or_all || cls == cls_or_all) b += st.objects[cls] * ta_class[cls].size;
    return b;
}

/* Caller holds reg_lock.  Other threads' counts change under our feet: each
 * is read once, atomically (a value it really had). */
void ta_pcache_stats_locked(ta_pcache_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->alloc_misses = dead_alloc_miss;
    out->free_misses = dead_free_miss;
    out->percpu = ta_fe_percpu;
    for (ta_pcache_t *c = reg_head.next_all; c != &reg_head; c = c->next_all) {
        out->caches++;
        out->thread_caches++;
        out->alloc_misses += __atomic_load_n(&c->n_alloc_miss, __ATOMIC_RELAXED);
        out->free_misses += __atomic_load_n(&c->n_free_miss, __ATOMIC_RELAXED);
        count_objects(c, out->objects);
    }
    uint32_t n = __atomic_load_n(&ncpus, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        ta_pcache_t *c = &cpus[i];
        out->caches += c->ready;
        out->alloc_misses += __atomic_load_n(&c->n_alloc_miss, __ATOMIC_RELAXED);
        out->free_misses += __atomic_load_n(&c->n_free_miss, __ATOMIC_RELAXED);
        count_objects(c, out->objects);
    }
}

/* (reg_lock first: no switch is under way while it is held, so ncpus stays) */
void ta_pcache_lock_all(bool fork) {
    ta_lock_or_drain(&reg_lock, fork);
    for (uint32_t i = 0; i < ncpus; i++) ta_lock_or_drain(&cpus[i].lock, fork);
}

void ta_pcache_unlock_all(bool child) {
    for (uint32_t i = 0; i < ncpus; i++) ta_lock_after_fork(&cpus[i].lock, child);
    if (child) {
        /* the other threads' caches have no thread in the child, and one may
         * have been halfway through a slow path: nobody touches them again
         * (their objects stay counted, and lost, as a dead thread's would) */
        for (ta_pcache_t *c = reg_head.next_all; c != &reg_head; c = c->next_all) {
            if (c == ta_tls.cache || c->state == TA_PC_ORPHAN) continue;
            c->state = TA_PC_ORPHAN;
            live_threads--;
            shard_users[c->shard]--; /* a new thread may take its shard */
        }
        /* the only live user of a CPU is now the forking thread, if it used it */
        for (uint32_t i = 0; i < ncpus; i++) {
            cpus[i].users = is_user(i);
            cpus[i].crowded = i >= USER_BITS && cpus[i].crowded;
        }
    }
    ta_lock_after_fork(&reg_lock, child);
    /* (membarrier's registration belongs to the address space: a child that
     * lacks it registers at its first fence, rseq_fence) */
}
