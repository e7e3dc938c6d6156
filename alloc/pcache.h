/* pcache.h: the tier-1 front-end interface: ta_fe_pop / ta_fe_push, inline,
 * plus the slow paths in pcache.c.  The API (api.c) uses nothing else of
 * tier 1.
 *
 * A cache is a slab: per size class a 64-bit header and a range of slots.
 * A slot holds an object and the address of its state byte (pageheap.c), so
 * that malloc marks the object live with one store and no lookup.  Header:
 * cur (next free slot), begin (first slot of the class), end (capacity
 * limit), slot indexes into the slab; cur is a 32-bit word of its own (see
 * TA_SLAB_POP), begin and end 16 bits.  Pop takes slots[cur-1] when cur >
 * begin; push stores into slots[cur] when cur < end.  Neither touches the
 * object: the slot array is all they read and write.  Per CPU, push hands
 * another shard's object back to its caller instead (TA_SLAB_SHARD_CHECK),
 * for the outbox that sends it home (pcache.c); per thread, only one under
 * a cache line (TA_SLAB_THREAD_SHARD_CHECK), for its class's home-bound
 * stack.
 *
 * Two kinds of cache:
 *  - per CPU: one slab per CPU; pop and push are restartable sequences (rseq)
 *    that read the CPU number from glibc's rseq area and commit with one
 *    store of cur; the kernel restarts them on preemption, migration or
 *    signal, so they need no lock and no atomic read-modify-write;
 *  - per thread: one slab per thread, reached through TLS, with plain loads
 *    and stores (only its thread ever touches it).
 * By default a process starts with per-thread caches and switches to per-CPU
 * ones, once and for good, when it has more than TIERALLOC_PERCPU_THREADS
 * threads with a cache (pcache.c, switch_to_percpu).  The fast paths read
 * ta_fe.percpu on every call and take the CPU's slab once it is set; a
 * thread's own slab is emptied by that thread on its next slow path (or its
 * exit, or malloc_trim), never by another, so that the plain operations need
 * nothing to guard them.  With TIERALLOC_PERCPU=0, or where rseq is not
 * available, there is no switch.
 * A thread that has no slab yet, or a CPU slab not yet set up, has all-zero
 * headers: cur = begin = end = 0, so both operations miss into pcache.c. */
#ifndef TA_PCACHE_H
#define TA_PCACHE_H

#include "internal.h"

#define TA_SLAB_SHIFT 20 /* a slab is 1 MiB of address space: 64 Ki slots of 16 bytes */
#define TA_SLAB_HDR_SLOTS (TA_MAX_CLASSES * 8 / 16) /* the headers take the first slots */
#define TA_SLOT_SKEW 4 /* slots (one cache line) between two classes' ranges (pcache.c) */
/* Two headers that are no class's (classes end below TA_MAX_CLASSES - 2):
 * the outbox, whose range holds other shards' objects on their way home
 * (pcache.c), and the cache's shard, a word of its own, shifted as in a
 * state byte's address (TA_SLAB_SHARD_CHECK). */
#define TA_SLAB_OUTBOX (TA_MAX_CLASSES - 2)
#define TA_SLAB_SHARD (TA_MAX_CLASSES - 1)
/* A thread's home-bound stacks, one per class up to TA_CLASS_LINE_SHARED
 * (class c's under header TA_SLAB_HOME + c): another shard's blocks under a
 * cache line, freed by the thread, wait there for their way home (pcache.c).
 * Per class rather than in the outbox, so that they go home a batch of one
 * class at a time, as a class's own flush does. */
#define TA_SLAB_HOME (TA_SLAB_OUTBOX - 1 - TA_CLASS_LINE_SHARED)

/* (ta_slot_t, an object and its state byte's address: internal.h) */

/* What a push did: the object is in the cache; the cache has no room for
 * it (the slow path, ta_pcache_free_slow); or it is another shard's object
 * (TA_SLAB_SHARD_CHECK; in a thread's cache only for blocks under a cache
 * line, TA_SLAB_THREAD_SHARD_CHECK), for ta_pcache_free_foreign.  The
 * caller makes those calls, in tail position: a call inside the push left
 * every free with a stack frame to set up (gcc), or took clang 14 minutes
 * to compile. */
enum { TA_PUSH_FULL = 0, TA_PUSH_DONE = 1, TA_PUSH_FOREIGN = 2 };
/* Another shard's object freed: into the caller's outbox, which goes home
 * in groups when full (pcache.c). */
void ta_pcache_free_foreign(void *p, uint8_t *state, uint32_t cls);

typedef union ta_slab_hdr {
    uint64_t word;
    struct {
        uint32_t cur; /* (below 2^16, as every slot index) */
        uint16_t begin, end;
    };
} ta_slab_hdr_t;

/* The thread's state that the fast paths read: one TLS block. */
typedef struct ta_tls {
    ta_slot_t *slab;     /* per-thread mode: this thread's slab (a static empty one at first) */
    int64_t sample_left; /* bytes still to allocate before the next sample (< 0: slow path) */
    struct ta_pcache *cache; /* per-thread mode: the cache record owning slab */
} ta_tls_t;
extern __thread ta_tls_t ta_tls;

/* What the fast paths read, together (one base address for all of it). */
typedef struct ta_fe {
    bool rseq;     /* rseq works here (and membarrier is registered): CPU caches may be had */
    bool percpu;   /* the operations are restartable sequences on the CPUs' slabs (set once,
                      at start-up or by the switch); else plain, on the thread's slab */
    bool guarded;  /* the switch may happen (auto mode, rseq works; read by the slow paths only) */
    long rseq_off; /* glibc's __rseq_offset: the rseq area from the thread pointer */
    char *slabs;   /* slab of CPU n at slabs + (n << TA_SLAB_SHIFT) */
} ta_fe_t;
extern ta_fe_t ta_fe;
#define ta_fe_percpu (__atomic_load_n(&ta_fe.percpu, __ATOMIC_ACQUIRE)) /* (a plain load on x86-64) */
/* The fast paths' read of it: plain, so that it folds into a compare.  A
 * stale false is harmless (the thread's own slab, which only it touches),
 * and the flag never goes back; ThreadSanitizer gets an atomic load. */
#if TA_TSAN
#define ta_fe_percpu_fast() __atomic_load_n(&ta_fe.percpu, __ATOMIC_RELAXED)
#else
#define ta_fe_percpu_fast() (ta_fe.percpu)
#endif
#define ta_rseq_off (ta_fe.rseq_off)
#define ta_cpu_slabs (ta_fe.slabs)

#if defined(__x86_64__)
/* Pop and push on the slab at %[t], class %[cls] (%[c] a scratch register):
 * load cur, compare it with begin (end), move the slot, commit cur with one
 * store.  The new cur (%[n]) is computed from the loaded one in one
 * instruction: the next operation's load of cur waits for this store's data,
 * and a malloc+free loop is as fast as that chain.  cur is loaded and stored
 * as 32 bits: on AMD's Zen 3 that chain is much shorter than with 16-bit
 * accesses (alloc/README.md has the measurement).  The slot's address is
 * formed in a register (an add) and the slot is read and written through it,
 * not with base+index addressing: on the Intel Xeon VM of stop 48 the same
 * instructions otherwise took 10.4-11.7 ns a malloc(16)+free pair against
 * 9.0-10.6 (6 interleaved runs, pinned), and the `fastpath` rows 0.91x of the time
 * (alloc/README.md, "The slot through a register").  In a restartable sequence
 * on a CPU's slab, or plain on a thread's own. */
#define TA_SLAB_POP                                                                           \
    "movl (%[t],%[cls],8), %k[c]\n\t"                                                         \
    "cmpw 4(%[t],%[cls],8), %w[c]\n\t"                                                        \
    "jbe %l[miss]\n\t"                                                                        \
    "movl %k[c], %k[p]\n\t"                                                                   \
    "shll $4, %k[p]\n\t"   /* (p: the slot's address, until it holds the object) */           \
    "addq %[t], %q[p]\n\t"                                                                    \
    "decl %k[c]\n\t"                                                                          \
    "movq -8(%q[p]), %[st]\n\t"                                                               \
    "movq -16(%q[p]), %[p]\n\t"                                                               \
    "movl %k[c], (%[t],%[cls],8)\n\t" /* commit */
/* After a pop, outside any critical section: the object the next pop of the
 * class will return, slots[cur-1], is prefetched for writing.  The allocator
 * never touches an object, so the program's first store into a block is
 * where its line is fetched; a program that allocates many blocks in a row
 * (a collection built, a batch) then waits for each in turn.  Fetched one
 * malloc ahead, it is there (alloc/README.md: `batch` -13%).  The slot may
 * lie below the class's range (its last object was just taken) or the thread
 * may be on another CPU by now: the slab is readable throughout, and a
 * prefetch never faults, whatever address it is given.
 * Only for blocks of up to 1 KiB (the pops' `near`, a constant: malloc's
 * path for larger sizes has its own copy without it; TA_CLASS_1K).  A larger block's
 * neighbour lies on another page, which may never have been touched: a
 * prefetch there costs a page walk every time and brings nothing in.  A
 * program that reuses one such block (a 4 KiB buffer allocated and freed in
 * a loop) paid that walk on every malloc: `fastpath/size:4096` 12-13 ns
 * against 5.5 without it on the AMD Zen 5 VM (alloc/README.md). */
#define TA_SLAB_PREFETCH_NEXT                                                                 \
    "shll $4, %k[c]\n\t"                                                                      \
    "movq -16(%[t],%q[c]), %[c]\n\t"                                                          \
    "prefetchw (%[c])\n\t"
/* Push sends another shard's object to the outbox (pcache.c, "Objects go
 * home"): the shard of an object's span is in its state byte's address
 * (bits TA_STATES_SHARD_SHIFT.., meta.c), the cache's in the word of header
 * TA_SLAB_SHARD, kept shifted the same way; the two differ in those bits
 * only for another shard's object.  Tested before the room: a CPU that only
 * frees a class (a pipeline's consumer) has no room in it, and would take
 * the slow path, with its CPU's lock, for every such free.  (Header 127 is
 * never closed in those bits: closing changes begin and end alone.) */
#define TA_SLAB_SHARD_CHECK                                                                   \
    "movq %[st], %[n]\n\t"                                                                    \
    "xorq 1016(%[t]), %[n]\n\t" /* TA_SLAB_SHARD's word */                                   \
    "testl $0x3000, %k[n]\n\t"  /* TA_STATES_SHARD_MASK */                                   \
    "jne %l[foreign]\n\t"
_Static_assert(TA_SLAB_SHARD * 8 == 1016 && TA_STATES_SHARD_MASK == 0x3000,
               "TA_SLAB_SHARD_CHECK spells the header's offset and the mask as literals");
/* Push marks the object FREE in its state byte too, after the slot's stores
 * and before the commit: never visible in a cache while its state still says
 * LIVE (another thread on this CPU may pop it the moment cur is stored), and
 * a restart only repeats the store.  There rather than before the push,
 * where free did it until stop 34: the same instructions, yet `batch` and
 * `scattered_reuse` about 6% faster (alloc/README.md, free(p)). */
_Static_assert(TA_OBJ_FREE == 0, "TA_SLAB_PUSH stores TA_OBJ_FREE as the immediate 0");
#define TA_SLAB_PUSH_AS(check)                                                                \
    check                                                                                     \
    "movl (%[t],%[cls],8), %k[c]\n\t"                                                         \
    "cmpw 6(%[t],%[cls],8), %w[c]\n\t"                                                        \
    "jae %l[full]\n\t"                                                                        \
    "leal 1(%q[c]), %k[n]\n\t"                                                                \
    "shll $4, %k[c]\n\t"                                                                      \
    "addq %[t], %q[c]\n\t"                                                                    \
    "movq %[p], (%q[c])\n\t"                                                                  \
    "movq %[st], 8(%q[c])\n\t"                                                                \
    "movb $0, (%[st])\n\t" /* the object's state: TA_OBJ_FREE */                              \
    "movl %k[n], (%[t],%[cls],8)\n\t" /* commit */
#define TA_SLAB_PUSH TA_SLAB_PUSH_AS(TA_SLAB_SHARD_CHECK)

#define TA_HAVE_RSEQ 1
/* An rseq critical section [start, commit] with its descriptor in section
 * __rseq_cs and its abort handler (preceded by the signature glibc registered)
 * out of line; the handler restarts the section from the top.  Labels: 1 the
 * descriptor, 3 start, 4 the end (first instruction after the commit), 5 abort. */
#define TA_RSEQ_ARM_USING(r)                                                                          \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                                      \
    ".balign 32\n\t"                                                                          \
    "1:\n\t"                                                                                  \
    ".long 0, 0\n\t"                                                                          \
    ".quad 3f, 4f - 3f, 5f\n\t"                                                               \
    ".popsection\n\t"                                                                         \
    ".pushsection .text.unlikely, \"ax\"\n\t"                                                 \
    ".long 0x53053053\n\t"                                                                    \
    "5:\n\t"                                                                                  \
    "jmp 3f\n\t"                                                                              \
    ".popsection\n\t"                                                                         \
    "3:\n\t"                                                                                  \
    "leaq 1b(%%rip), %[" r "]\n\t"                                                            \
    "movq %[" r "], %%fs:8(%[rs])\n\t" /* rseq->rseq_cs = &descriptor: armed */
#define TA_RSEQ_ARM TA_RSEQ_ARM_USING("t")
#define TA_RSEQ_PROLOGUE TA_RSEQ_ARM "movl %%fs:4(%[rs]), %k[t]\n\t" /* rseq->cpu_id */

/* The CPU's slab in %[t]: slabs + (cpu << TA_SLAB_SHIFT). */
#define TA_RSEQ_SLAB                                                                          \
    "movl %%fs:4(%[rs]), %k[t]\n\t" /* rseq->cpu_id */                                        \
    "shlq $20, %[t]\n\t"                                                                      \
    "addq %[base], %[t]\n\t"

/* The pop as a sequence ending in tail (TA_SLAB_PREFETCH_NEXT, or nothing). */
#define TA_RSEQ_POP_ASM(tail)                                                                 \
    __asm__ __volatile__ goto(TA_RSEQ_ARM_USING("c") TA_RSEQ_SLAB TA_SLAB_POP "4:\n\t" tail     \
                              : [p] "=&r"(p), [st] "=&r"(st), [t] "=&r"(t), [c] "=&r"(c)      \
                              : [rs] "r"(ta_rseq_off), [base] "m"(ta_cpu_slabs),            \
                                [cls] "r"((uintptr_t)cls)                                   \
                              : "memory", "cc"                                              \
                              : miss)
TA_ALWAYS_INLINE void *ta_rseq_pop(uint32_t cls, uint8_t **state, bool near) {
    void *p;
    uint8_t *st;
    uintptr_t t, c;
    if (near)
        TA_RSEQ_POP_ASM(TA_SLAB_PREFETCH_NEXT);
    else
        TA_RSEQ_POP_ASM("");
    if (!p) __builtin_unreachable(); /* slots hold objects only */
    *state = st;
    return p;
miss:
    return NULL;
}

TA_ALWAYS_INLINE int ta_rseq_push(void *p, uint8_t *state, uint32_t cls) {
    uintptr_t t, c, n;
    __asm__ __volatile__ goto(TA_RSEQ_ARM_USING("c") TA_RSEQ_SLAB
                 TA_SLAB_PUSH
                 "4:\n\t"
                 : [t] "=&r"(t), [c] "=&r"(c), [n] "=&r"(n)
                 : [p] "r"(p), [st] "r"(state), [rs] "r"(ta_rseq_off), [base] "m"(ta_cpu_slabs),
                   [cls] "r"((uintptr_t)cls)
                 : "memory", "cc"
                 : full, foreign);
    return TA_PUSH_DONE;
full:
    return TA_PUSH_FULL;
foreign:
    return TA_PUSH_FOREIGN;
}
#else
#define TA_HAVE_RSEQ 0
TA_ALWAYS_INLINE void *ta_rseq_pop(uint32_t cls, uint8_t **state, bool near) { (void)cls; (void)state; (void)near; return NULL; }
TA_ALWAYS_INLINE int ta_rseq_push(void *p, uint8_t *state, uint32_t cls) { (void)p; (void)state; (void)cls; return TA_PUSH_FULL; }
#endif

/* The thread's own slab: plain loads and stores, the same instructions as
 * the sequences above without the CPU and the arming (x86-64), or C. */
#if defined(__x86_64__)
#define TA_THREAD_POP_ASM(tail)                                                               \
    __asm__ __volatile__ goto(TA_SLAB_POP tail                                                \
                              : [p] "=&r"(p), [st] "=&r"(st), [c] "=&r"(c)                    \
                              : [t] "r"(ta_tls.slab), [cls] "r"((uintptr_t)cls)             \
                              : "memory", "cc"                                              \
                              : miss)
TA_ALWAYS_INLINE void *ta_thread_pop(uint32_t cls, uint8_t **state, bool near) {
    void *p;
    uint8_t *st;
    uintptr_t c;
    if (near)
        TA_THREAD_POP_ASM(TA_SLAB_PREFETCH_NEXT);
    else
        TA_THREAD_POP_ASM("");
    if (!p) __builtin_unreachable(); /* slots hold objects only */
    *state = st;
    return p;
miss:
    return NULL;
}

/* A thread's push checks the shard of blocks that share cache lines
 * (classes up to TA_CLASS_LINE_SHARED) only: such a block that another
 * thread allocated goes home instead of being handed out again here, where
 * its neighbours' owner still writes their line (passive false sharing:
 * `false_sharing`, alloc/README.md); it waits on its class's home-bound
 * stack (TA_SLAB_HOME).  A larger block stays in the freeing thread's cache,
 * as before, so that a pipeline's consumer or a server's threads keep
 * reusing what they free without a trip through central.  Without a branch
 * on the class (sizes that change from call to call would mispredict it):
 * the shard bits are masked with cls - 4, whose bits 12-13 are set for
 * classes 1-3 (it wraps below zero) and clear for every other class (all
 * under 4 096). */
#define TA_SLAB_THREAD_SHARD_CHECK                                                            \
    "movq %[st], %[n]\n\t"                                                                    \
    "xorl (%[t]), %k[n]\n\t"    /* header 0: the thread's shard (pcache.c) */                \
    "leal -4(%q[cls]), %k[c]\n\t" /* cls - (TA_CLASS_LINE_SHARED + 1) */                      \
    "andl %k[c], %k[n]\n\t"                                                                   \
    "testl $0x3000, %k[n]\n\t"  /* TA_STATES_SHARD_MASK */                                   \
    "jne %l[foreign]\n\t"
_Static_assert(TA_CLASS_LINE_SHARED == 3, "TA_SLAB_THREAD_SHARD_CHECK spells the class as a literal");
TA_ALWAYS_INLINE int ta_thread_push(void *p, uint8_t *state, uint32_t cls) {
    uintptr_t c, n;
    __asm__ __volatile__ goto(TA_SLAB_PUSH_AS(TA_SLAB_THREAD_SHARD_CHECK)
                              : [c] "=&r"(c), [n] "=&r"(n)
                              : [p] "r"(p), [st] "r"(state), [t] "r"(ta_tls.slab), [cls] "r"((uintptr_t)cls)
                              : "memory", "cc"
                              : full, foreign);
    return TA_PUSH_DONE;
full:
    return TA_PUSH_FULL;
foreign:
    return TA_PUSH_FOREIGN;
}
/* The same without the shard check, onto the thread's home-bound stack of
 * class cls (up to TA_CLASS_LINE_SHARED; pcache.c). */
TA_ALWAYS_INLINE bool ta_thread_home_push(void *p, uint8_t *state, uint32_t cls) {
    uintptr_t c, n;
    __asm__ __volatile__ goto(TA_SLAB_PUSH_AS("")
                              : [c] "=&r"(c), [n] "=&r"(n)
                              : [p] "r"(p), [st] "r"(state), [t] "r"(ta_tls.slab), [cls] "r"((uintptr_t)(TA_SLAB_HOME + cls))
                              : "memory", "cc"
                              : full);
    return true;
full:
    return false;
}
#else
TA_ALWAYS_INLINE void *ta_thread_pop(uint32_t cls, uint8_t **state, bool near) {
    (void)near; /* (no prefetch in C) */
    ta_slot_t *slab = ta_tls.slab;
    ta_slab_hdr_t *h = (ta_slab_hdr_t *)slab + cls;
    uint32_t cur = h->cur;
    if (TA_UNLIKELY(cur <= h->begin)) return NULL;
    h->cur = cur - 1;
    void *p = slab[cur - 1].obj;
    if (!p) __builtin_unreachable();
    *state = slab[cur - 1].state;
    return p;
}

/* (the push itself, on header k: false when full) */
TA_ALWAYS_INLINE bool ta_thread_push_on(void *p, uint8_t *state, uint32_t k) {
    ta_slot_t *slab = ta_tls.slab;
    ta_slab_hdr_t *h = (ta_slab_hdr_t *)slab + k;
    uint32_t cur = h->cur;
    if (TA_UNLIKELY(cur >= h->end)) return false;
    slab[cur] = (ta_slot_t){p, state};
    ta_state_set(state, TA_OBJ_FREE); /* (as TA_SLAB_PUSH: before the commit) */
    h->cur = cur + 1;
    return true;
}
TA_ALWAYS_INLINE int ta_thread_push(void *p, uint8_t *state, uint32_t cls) {
    const ta_slab_hdr_t *h = (const ta_slab_hdr_t *)ta_tls.slab;
    if (cls <= TA_CLASS_LINE_SHARED && (((uintptr_t)state ^ h[0].word) & TA_STATES_SHARD_MASK))
        return TA_PUSH_FOREIGN; /* (as TA_SLAB_THREAD_SHARD_CHECK) */
    return ta_thread_push_on(p, state, cls) ? TA_PUSH_DONE : TA_PUSH_FULL;
}
TA_ALWAYS_INLINE bool ta_thread_home_push(void *p, uint8_t *state, uint32_t cls) {
    return ta_thread_push_on(p, state, TA_SLAB_HOME + cls);
}
#endif

/* Which kind of cache free works on.  On x86-64 the flag is compared in
 * place by its own instruction (gcc otherwise forms ta_fe's address in a
 * register first, one instruction more); a stale false is harmless, as
 * above. */
#if defined(__x86_64__) && !TA_TSAN
#define TA_IF_PERCPU(label)                                                                   \
    __asm__ goto("cmpb $0, ta_fe+%c[off](%%rip)\n\tjne %l[" #label "]"                         \
                 : : [off] "i"(__builtin_offsetof(ta_fe_t, percpu)) : "cc" : label)
#else
#define TA_IF_PERCPU(label)                                                                   \
    do {                                                                                      \
        if (ta_fe_percpu_fast()) goto label;                                                  \
    } while (0)
#endif
/* An object of class cls from the caller's cache (and in *state the address
 * of its state byte), or NULL on a miss.  near: the object after it is
 * prefetched (classes up to 1 KiB; TA_SLAB_PREFETCH_NEXT); a constant on
 * malloc's path, so that each path has one copy of the pop. */
TA_ALWAYS_INLINE void *ta_fe_pop_as(uint32_t cls, uint8_t **state, bool near) {
    /* (not TA_IF_PERCPU: in malloc gcc then zero-extends the class again and
     * copies the state's address, two instructions for the one it saves) */
    if (ta_fe_percpu_fast()) return ta_rseq_pop(cls, state, near);
    return ta_thread_pop(cls, state, near);
}
/* The same, with near decided by the class (a branch: for the slow paths). */
TA_ALWAYS_INLINE void *ta_fe_pop(uint32_t cls, uint8_t **state) { return ta_fe_pop_as(cls, state, cls <= TA_CLASS_1K); }
/* Put a free object of class cls (state: its state byte) in the caller's
 * cache: TA_PUSH_DONE, or what the caller must do instead (TA_PUSH_FULL,
 * TA_PUSH_FOREIGN). */
TA_ALWAYS_INLINE int ta_fe_push(void *p, uint8_t *state, uint32_t cls) {
    TA_IF_PERCPU(percpu);
    return ta_thread_push(p, state, cls);
percpu:
    return ta_rseq_push(p, state, cls);
}

/* ---- the slow paths (pcache.c) -------------------------------------------- */
void ta_pcache_init(void);
/* Where cls's slots may be in a slab (pcache.c): its short range, where a
 * cache starts it, and its full one, where it moves when its capacity grows
 * past the short one; each [begin, begin + n), in slots; the same range twice
 * for a class whose full range is short. */
typedef struct ta_slot_ranges {
    uint16_t short_begin, short_n, full_begin, full_n;
} ta_slot_ranges_t;
ta_slot_ranges_t ta_pcache_ranges(uint32_t cls);
void *ta_pcache_alloc_slow(uint32_t cls);        /* refill, then allocate; NULL if out of memory */
void ta_pcache_note_user(void);                  /* per CPU: count the caller among its CPU's users */
void ta_pcache_free_slow(void *p, uint32_t cls, uint8_t *state); /* overflow: flush a batch, then keep p (state: its byte) */
void ta_pcache_flush_current(void);              /* empty the calling thread's cache (per-thread mode) */
void ta_pcache_drain_all(void);                  /* malloc_trim: empty every CPU's cache */
size_t ta_pcache_release_free_slabs(uint64_t freed_before); /* exited threads' slabs to the OS: bytes */
void ta_pcache_thread_exit(void *arg);
uint64_t ta_pcache_bytes(uint32_t cls_or_all);   /* bytes held in all caches (approximate) */
typedef struct ta_pcache_stats {
    uint64_t objects[TA_MAX_CLASSES]; /* objects held in all caches (read racily) */
    uint64_t alloc_misses, free_misses; /* slow-path counts, exited threads included */
    uint64_t caches;                    /* live caches: threads, or CPUs in use */
    uint64_t thread_caches;             /* of which threads' (auto mode: none after the switch) */
    uint64_t percpu;                    /* 1 when the caches are per CPU */
} ta_pcache_stats_t;
/* Sum over the caches; the caller holds the registry lock (ta_pcache_lock_all). */
void ta_pcache_stats_locked(ta_pcache_stats_t *out);
void ta_pcache_lock_all(bool fork);
void ta_pcache_unlock_all(bool child);

#endif
