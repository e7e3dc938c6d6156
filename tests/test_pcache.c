/* test_pcache.c: tier 1 (pcache.h, pcache.c, the inline fast paths in api.h).
 *
 * The cache is a slab of per-class headers {cur, begin, end} and slots
 * {obj, state}; the tests read it directly: in per-thread mode the calling
 * thread's slab (ta_tls.slab), in per-CPU mode the slab of the CPU the thread
 * is pinned to.  The mode is chosen at start-up from TIERALLOC_PERCPU: this
 * binary runs three times under `make check`: as is (auto, the default:
 * per-thread caches until the process has more than TIERALLOC_PERCPU_THREADS
 * threads, then per-CPU caches where rseq works), through
 * tests/test_pcache_percpu.sh (=1, per CPU from the start) and through
 * tests/test_pcache_perthread.sh (=0).  Tests that only mean something in one
 * mode skip in the others.
 *
 *  - the slab: freed objects stay in the cache, LIFO, with their state bytes;
 *    each class starts in its short slot range and moves to its full one as it
 *    grows, also while other threads on the CPU use it;
 *    headers keep begin <= cur <= end <= the end of the range they are in;
 *    flush/drain/malloc_trim empty it (every CPU's, per CPU);
 *  - capacity grows on misses, within the budget (a CPU's fixed one, a
 *    thread's share of the global pool) and moves to the classes in use; idle
 *    classes drain over decay periods;
 *  - many threads on one CPU, threads migrating between CPUs, signals, and
 *    malloc_trim / ta_stats_get (remote drains with membarrier fences) at the
 *    same time: no object handed out twice, no corruption;
 *  - auto mode: the switch to per-CPU caches past the thread limit, while
 *    threads allocate and free (contents checked, nothing left in the
 *    retired thread caches), and in a child of fork;
 *  - 2000 threads each churning 1 MiB: CPU caches hold at most 2 MiB per CPU
 *    (per CPU from the start, or after auto mode's switch);
 *  - per-thread mode: thread exit gives everything back, records are reused,
 *    frees alone grow a class to one batch, allocation during thread exit;
 *    a new thread's cache takes a central shard no busy thread uses, so two
 *    threads do not refill from the same spans; two threads freeing each
 *    other's blocks at random keep their caches bounded;
 *  - objects go home: per CPU, a block of another shard's span freed here waits
 *    in the CPU's outbox (never handed out here, counted in the statistics)
 *    and goes to its shard when the outbox fills or the cache drains; per
 *    thread, only a block under a cache line, on its class's home-bound stack;
 *  - misuse: double free of a cached block, after overflow, in an outbox, and
 *    free of an object never handed out abort (object state bytes).
 *
 * Work that needs a cache nobody else touched runs in a fresh thread that
 * reports back; the assertions run on the main thread. */
#define _GNU_SOURCE 1
#include <criterion/criterion.h>

#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "pcache.h"
#include "testutil.h"
#include "tieralloc.h"

static void setup(void) {
    ta_ensure_init();
    ta_cfg.decay_ms = (uint64_t)1 << 40; /* no decay behind the tests' back */
    ta_cfg.quarantine_bytes = 0; /* (hardened build) freed blocks go straight to tier 1 */
}
TestSuite(pcache, .init = setup, .timeout = 120);

#define NEED_PERCPU()                                                                   \
    do {                                                                                \
        if (!ta_fe_percpu) cr_skip_test("per-CPU caches only (this run: per thread)"); \
    } while (0)
/* (in auto mode the test's threads must not make the process switch) */
#define NEED_PERTHREAD()                                                                   \
    do {                                                                                   \
        if (ta_fe_percpu) cr_skip_test("per-thread caches only (TIERALLOC_PERCPU=0 run)"); \
        ta_cfg.percpu_threads = 1u << 20;                                                  \
    } while (0)

static void run_thread(void *(*fn)(void *), void *arg) {
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
}

/* A small request served by a sampled allocation (sample.c) gets a page-heap
 * span of its own, with pagemap info 0: it never enters a cache. */
static bool sampled(const void *p) { return ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT) == 0; }

/* ---- CPUs --------------------------------------------------------------------- */
static int ncpu_allowed(int *cpus, int max) {
    cpu_set_t s;
    CPU_ZERO(&s);
    if (sched_getaffinity(0, sizeof s, &s) != 0) return 0;
    int n = 0;
    for (int i = 0; i < CPU_SETSIZE && n < max; i++)
        if (CPU_ISSET(i, &s)) cpus[n++] = i;
    return n;
}
static int first_cpu(void) {
    int c[1];
    return ncpu_allowed(c, 1) ? c[0] : 0;
}
static bool pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof s, &s) == 0;
}
static long ncpus_conf(void) {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n < 1 ? 1 : n;
}

/* ---- the slab ------------------------------------------------------------------ */
static ta_slot_t *cpu_slab(int cpu) { return (ta_slot_t *)(ta_cpu_slabs + ((size_t)cpu << TA_SLAB_SHIFT)); }
/* The caller's slab: its thread's, or (pinned) its CPU's. */
static ta_slot_t *my_slab(void) { return ta_fe_percpu ? cpu_slab(sched_getcpu()) : ta_tls.slab; }
static ta_slab_hdr_t hdr(const ta_slot_t *slab, uint32_t cls) {
    ta_slab_hdr_t h;
    h.word = __atomic_load_n(&((const ta_slab_hdr_t *)slab)[cls].word, __ATOMIC_RELAXED);
    return h;
}
static uint32_t held(const ta_slot_t *slab, uint32_t cls) {
    ta_slab_hdr_t h = hdr(slab, cls);
    return h.cur > h.begin ? (uint32_t)(h.cur - h.begin) : 0;
}
static uint32_t cap(const ta_slot_t *slab, uint32_t cls) {
    ta_slab_hdr_t h = hdr(slab, cls);
    return h.end > h.begin ? (uint32_t)(h.end - h.begin) : 0;
}
static uint64_t slab_bytes(const ta_slot_t *slab, bool capacity) {
    uint64_t b = 0;
    for (uint32_t c = 1; c < ta_nclasses; c++) b += (uint64_t)(capacity ? cap(slab, c) : held(slab, c)) * ta_class[c].size;
    return b;
}
static bool in_slab(const ta_slot_t *slab, uint32_t cls, const void *p) {
    ta_slab_hdr_t h = hdr(slab, cls);
    for (uint32_t i = h.begin; i < h.cur; i++)
        if (slab[i].obj == p) return true;
    return false;
}

/* a set of pointers without malloc (linear probing, backward-shift delete) */
#define SET_BITS 17
#define SET_SIZE ((size_t)1 << SET_BITS)
typedef struct {
    size_t n;
    uintptr_t slot[SET_SIZE];
} ptrset_t;
static size_t set_hash(uintptr_t p, unsigned bits) { return (size_t)((p * 0x9e3779b97f4a7c15ull) >> (64 - bits)); }
static bool set_add(ptrset_t *s, const void *p) {
    uintptr_t k = (uintptr_t)p;
    for (size_t i = set_hash(k, SET_BITS);; i = (i + 1) & (SET_SIZE - 1)) {
        if (s->slot[i] == k) return false;
        if (!s->slot[i]) {
            s->slot[i] = k;
            s->n++;
            return true;
        }
    }
}
static ptrset_t slab_seen;

/* What is wrong with a quiet slab (NULL if nothing): header order, slot
 * ranges, and every cached object a free object of its class, with the
 * address of its own state byte, and not cached twice (across all slabs
 * checked since slab_seen was cleared). */
static char slab_err[256];
static const char *check_slab(const ta_slot_t *slab) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        ta_slab_hdr_t h = hdr(slab, c);
        if (!h.word) continue; /* never laid out */
        /* the class is in its short range or in its full one (layout_is_sound: they do not overlap) */
        ta_slot_ranges_t r = ta_pcache_ranges(c);
        uint32_t max_end = h.begin == r.short_begin ? r.short_begin + r.short_n : r.full_begin + r.full_n;
        if (h.begin != r.short_begin && h.begin != r.full_begin) {
            snprintf(slab_err, sizeof slab_err, "class %u: begin %u is neither %u nor %u", c, h.begin, r.short_begin,
                     r.full_begin);
            return slab_err;
        }
        if (!(h.begin <= h.cur && h.cur <= h.end && h.end <= max_end)) {
            snprintf(slab_err, sizeof slab_err, "class %u: header cur %u begin %u end %u, range end %u", c, h.cur,
                     h.begin, h.end, max_end);
            return slab_err;
        }
        for (uint32_t i = h.begin; i < h.cur; i++) {
            void *p = slab[i].obj;
            uint64_t info = p ? ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT) : 0;
            const char *e = NULL;
            if (!p) e = "NULL object";
            else if (TA_INFO_CLASS(info) != c) e = "object of another class";
            else if (slab[i].state != ta_state_of(p, c)) e = "slot names another state byte";
            else if (!ta_obj_cached_state(*slab[i].state)) e = "cached object is not FREE or ZERO";
            else if (!set_add(&slab_seen, p)) e = "object cached twice";
            if (e) {
                snprintf(slab_err, sizeof slab_err, "class %u slot %u (%p): %s", c, i, p, e);
                return slab_err;
            }
        }
    }
    return NULL;
}
static void slab_seen_clear(void) {
    memset(&slab_seen, 0, sizeof slab_seen);
}

static ta_pcache_stats_t pc_stats(void) {
    static ta_pcache_stats_t s; /* large: not on a small thread stack */
    ta_pcache_stats_t r;
    ta_pcache_lock_all(false);
    ta_pcache_stats_locked(&s);
    ta_pcache_unlock_all(false);
    r = s;
    return r;
}

/* Empty what this thread can: its own cache (per thread), every CPU's (per
 * CPU), the transfer caches. */
static void quiesce(void) {
    ta_pcache_flush_current();
    ta_pcache_drain_all();
    ta_central_drain();
}

/* ---- the slab: LIFO, state bytes, flush -------------------------------------- */
Test(pcache, freed_objects_stay_in_the_cache) {
    const size_t sz = 720;
    const uint32_t c = ta_size_to_class(sz);
    enum { N = 10 };
    void *p[N], *cached[N];
    int nc = 0;
    pin(first_cpu());
    /* a few rounds: the class's capacity grows past N */
    for (int r = 0; r < 8; r++) {
        for (int i = 0; i < N; i++) p[i] = malloc(sz);
        for (int i = 0; i < N; i++) free(p[i]);
    }
    const ta_slot_t *slab = my_slab();
    cr_assert_geq(cap(slab, c), (uint32_t)N, "capacity %u after 8 rounds of %d", cap(slab, c), N);
    for (int i = 0; i < N; i++) p[i] = malloc(sz);
    uint64_t b0 = ta_pcache_bytes(c);
    uint32_t h0 = held(slab, c);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(*ta_state_of(p[i], c), sampled(p[i]) ? TA_OBJ_FREE : TA_OBJ_LIVE);
        free(p[i]);
    }
    uint64_t b1 = ta_pcache_bytes(c);
    for (int i = 0; i < N; i++)
        if (!sampled(p[i])) cached[nc++] = p[i];
    cr_assert_gt(nc, 0, "all %d blocks were sampled", N);
    cr_assert_eq(held(slab, c) - h0, (uint32_t)nc, "%d frees, the cache grew by %u", nc, held(slab, c) - h0);
    cr_assert_eq(b1 - b0, nc * (uint64_t)ta_class[c].size, "cache bytes grew by %lu for %d frees",
                 (unsigned long)(b1 - b0), nc);
    /* the top slots are the freed objects, most recent on top, each with its state byte, FREE */
    ta_slab_hdr_t h = hdr(slab, c);
    for (int i = 0; i < nc; i++) {
        const ta_slot_t *s = &slab[h.cur - 1 - i];
        cr_assert_eq(s->obj, cached[nc - 1 - i], "slot %d from the top is not the block freed %d-th last", i, i);
        cr_assert_eq(s->state, ta_state_of(s->obj, c));
        cr_assert_eq(*s->state, TA_OBJ_FREE);
    }
    slab_seen_clear();
    const char *e = check_slab(slab);
    cr_assert_null(e, "%s", e);
    /* the next mallocs are served from the cache, most recent first, and marked live */
    void *extra[N];
    int ne = 0;
    for (int i = nc - 1; i >= 0;) {
        void *q = malloc(sz);
        if (sampled(q)) {
            extra[ne++] = q;
            cr_assert_lt(ne, N);
            continue;
        }
        cr_assert_eq(q, cached[i], "malloc did not reuse the last freed block");
        cr_assert_eq(*ta_state_of(q, c), TA_OBJ_LIVE);
        i--;
    }
    for (int i = 0; i < nc; i++) free(cached[i]);
    for (int i = 0; i < ne; i++) free(extra[i]);
}

/* per thread: ta_pcache_flush_current; per CPU: ta_pcache_drain_all.  The
 * capacity stays; the cache works afterwards. */
Test(pcache, flush_empties_the_cache) {
    const size_t sizes[] = {24, 100, 720, 3000, 20000, 200000};
    enum { N = 40 };
    static void *p[6][N];
    pin(first_cpu());
    for (int r = 0; r < 3; r++) {
        for (int s = 0; s < 6; s++)
            for (int i = 0; i < N; i++) p[s][i] = malloc(sizes[s]);
        for (int s = 0; s < 6; s++)
            for (int i = 0; i < N; i++) free(p[s][i]);
    }
    const ta_slot_t *slab = my_slab();
    uint64_t in_cache = slab_bytes(slab, false), capacity = slab_bytes(slab, true);
    uint64_t all0 = ta_pcache_bytes(0);
    if (ta_fe_percpu) ta_pcache_drain_all();
    else ta_pcache_flush_current();
    uint64_t all1 = ta_pcache_bytes(0);
    cr_assert_gt(in_cache, 0u, "the cache held nothing before the flush");
    for (uint32_t c = 1; c < ta_nclasses; c++)
        cr_assert_eq(held(slab, c), 0u, "class %u: %u objects left after the flush", c, held(slab, c));
    /* per CPU the drain empties the other CPUs' caches too */
    if (ta_fe_percpu) {
        cr_assert_eq(all1, 0u, "%lu bytes left in CPU caches", (unsigned long)all1);
        cr_assert_geq(all0, in_cache);
    } else {
        cr_assert_eq(all0 - all1, in_cache, "ta_pcache_bytes fell by %lu, the cache held %lu",
                     (unsigned long)(all0 - all1), (unsigned long)in_cache);
    }
    cr_assert_eq(slab_bytes(slab, true), capacity, "the flush changed the capacity");
    slab_seen_clear();
    const char *e = check_slab(slab);
    cr_assert_null(e, "%s", e);
    /* still a working cache afterwards */
    void *q = malloc(100);
    cr_assert_not_null(q);
    free(q);
    if (!sampled(q)) cr_assert(in_slab(slab, ta_size_to_class(100), q));
}

/* malloc_trim empties every CPU's cache. */
static void *fill_on_cpu(void *arg) {
    int cpu = (int)(intptr_t)arg;
    pin(cpu);
    static __thread void *p[300];
    const size_t sizes[] = {32, 256, 1000, 4000};
    for (int r = 0; r < 4; r++)
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i < 300; i++) p[i] = malloc(sizes[s]);
            for (int i = 0; i < 300; i++) free(p[i]);
        }
    return NULL;
}

Test(pcache, malloc_trim_empties_every_cpu) {
    NEED_PERCPU();
    int cpus[64];
    int n = ncpu_allowed(cpus, 64);
    for (int i = 0; i < n; i++) run_thread(fill_on_cpu, (void *)(intptr_t)cpus[i]);
    uint64_t before = ta_pcache_bytes(0);
    uint32_t filled = 0;
    for (int i = 0; i < n; i++) filled += slab_bytes(cpu_slab(cpus[i]), false) > 0;
    malloc_trim(0);
    uint64_t after = ta_pcache_bytes(0);
    cr_assert_gt(before, 0u);
    cr_assert_eq(filled, (uint32_t)n, "only %u of %d CPUs' caches were filled", filled, n);
    cr_assert_eq(after, 0u, "%lu bytes left in CPU caches after malloc_trim", (unsigned long)after);
    slab_seen_clear();
    for (long i = 0; i < ncpus_conf(); i++) {
        cr_assert_eq(slab_bytes(cpu_slab((int)i), false), 0u, "CPU %ld still holds objects", i);
        const char *e = check_slab(cpu_slab((int)i));
        cr_assert_null(e, "CPU %ld: %s", i, e);
    }
}

/* ---- capacity ------------------------------------------------------------------ */
struct growth_report {
    int cpu;        /* per CPU: the CPU to pin to */
    size_t size[8]; /* classes worked in turn; size[0] is the one watched */
    int nsizes, nobj, rounds;
    uint32_t cap_first, cap_last, cap_seen; /* size[0]'s capacity: first, after its last phase, most */
    uint32_t cap_end[8];            /* each class's capacity after its phase of the last round */
    uint64_t frees_missed_last;     /* frees that took the slow path in the last round */
    uint64_t miss_first, miss_last; /* alloc + free misses in a round */
    uint64_t worst_cache_bytes;     /* most the cache held at any point checked */
    uint64_t worst_committed;       /* most sum(capacity * size) over classes */
    bool held_over_cap;
    const char *slab_error;
};

static void *grow_classes(void *arg) {
    struct growth_report *r = arg;
    if (ta_fe_percpu) pin(r->cpu);
    const uint32_t c = ta_size_to_class(r->size[0]);
    void **p = calloc((size_t)r->nobj, sizeof *p);
    free(malloc(r->size[0]));
    const ta_slot_t *slab = my_slab();
    r->cap_first = cap(slab, c);
    for (int round = 0; round < r->rounds; round++) {
        ta_pcache_stats_t s0 = pc_stats();
        for (int k = 0; k < r->nsizes; k++) {
            uint32_t ck = ta_size_to_class(r->size[k]);
            for (int i = 0; i < r->nobj; i++) p[i] = malloc(r->size[k]);
            for (int i = 0; i < r->nobj; i++) {
                free(p[i]);
                if (held(slab, ck) > cap(slab, ck)) r->held_over_cap = true;
            }
            /* (the phases of the other classes may take it back) */
            r->cap_end[k] = cap(slab, ck);
            if (k == 0 && r->cap_end[0] > r->cap_seen) r->cap_seen = r->cap_end[0];
            uint64_t h = slab_bytes(slab, false), committed = slab_bytes(slab, true);
            if (h > r->worst_cache_bytes) r->worst_cache_bytes = h;
            if (committed > r->worst_committed) r->worst_committed = committed;
        }
        ta_pcache_stats_t s1 = pc_stats();
        uint64_t misses = s1.alloc_misses + s1.free_misses - s0.alloc_misses - s0.free_misses;
        r->frees_missed_last = s1.free_misses - s0.free_misses;
        if (round == 0) r->miss_first = misses;
        r->miss_last = misses;
    }
    r->cap_last = r->cap_end[0];
    slab_seen_clear();
    r->slab_error = check_slab(slab);
    free(p);
    return NULL;
}

/* The layout: after the headers, every class's short range, side by side
 * (a few pages for all classes), then the full ranges, each starting one
 * line (TA_SLOT_SKEW) past the previous one's end; no two overlap, all
 * within what a header's 16-bit index can name. */
Test(pcache, layout_is_sound) {
    uint32_t next = TA_SLAB_HDR_SLOTS, full_start = 0, prev_end = 0;
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        ta_slot_ranges_t r = ta_pcache_ranges(c);
        cr_assert_eq(r.short_begin, next, "class %u: short range at %u, the previous one ends at %u", c, r.short_begin,
                     next);
        cr_assert(r.short_n >= 1 && r.short_n <= 16 && r.short_n <= r.full_n, "class %u: short range of %u slots", c,
                  r.short_n);
        next += r.short_n;
    }
    /* a small process writes its slab's first pages only, not a page per class */
    cr_assert_leq((uint64_t)next * sizeof(ta_slot_t), (uint64_t)6 << 12, "the short ranges take %u slots", next);
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        ta_slot_ranges_t r = ta_pcache_ranges(c);
        if (r.full_begin == r.short_begin) { /* a short class: one range */
            cr_assert_eq(r.full_n, r.short_n, "class %u", c);
            continue;
        }
        cr_assert_gt(r.full_n, 16u, "class %u has a full range of %u slots, no longer than its short one", c, r.full_n);
        uint32_t want = full_start ? prev_end + TA_SLOT_SKEW : next + TA_SLOT_SKEW;
        cr_assert_eq(r.full_begin, want, "class %u: full range at %u, expected %u", c, r.full_begin, want);
        if (!full_start) full_start = r.full_begin;
        prev_end = (uint32_t)r.full_begin + r.full_n;
        cr_assert_lt(prev_end, 65536u);
    }
}

/* A cache starts a class in its short range and moves it, with what it
 * holds, to its full one when its capacity grows past it. */
struct move_report {
    int cpu;
    ta_slab_hdr_t before, short_full, after;
    uint32_t held_short, held_after;
    const char *slab_error;
};
static void *move_class(void *arg) {
    struct move_report *r = arg;
    pin(r->cpu);
    enum { SIZE = 13 << 10, N = 60 }; /* a class no test harness uses, whose full range is long */
    uint32_t cls = ta_size_to_class(SIZE);
    free(malloc(16)); /* the thread's cache exists */
    ta_slot_t *slab = my_slab();
    r->before = hdr(slab, cls);
    void *p[N];
    /* a few at a time: capacity grows in small steps within the short range */
    for (int i = 0; i < 4; i++) p[i] = malloc(SIZE);
    for (int i = 0; i < 4; i++) free(p[i]);
    r->short_full = hdr(slab, cls);
    r->held_short = held(slab, cls);
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < N; i++) p[i] = malloc(SIZE);
        for (int i = 0; i < N; i++) free(p[i]);
    }
    r->after = hdr(slab, cls);
    r->held_after = held(slab, cls);
    slab_seen_clear();
    r->slab_error = check_slab(slab);
    return NULL;
}
Test(pcache, a_class_starts_short_and_moves_to_its_full_range_as_it_grows) {
    NEED_PERTHREAD(); /* a new thread's cache is laid out afresh; a CPU's was laid out before the test */
    struct move_report r = {.cpu = first_cpu()};
    run_thread(move_class, &r);
    ta_slot_ranges_t rg = ta_pcache_ranges(ta_size_to_class(13 << 10));
    cr_assert_neq(rg.full_begin, rg.short_begin);
    cr_assert_eq(r.before.begin, rg.short_begin, "a fresh cache's class begins at %u, not its short range (%u)",
                 r.before.begin, rg.short_begin);
    cr_assert_eq(r.short_full.begin, rg.short_begin, "moved after 4 blocks");
    cr_assert_geq(r.held_short, 1u, "4 blocks freed, none cached");
    cr_assert_eq(r.after.begin, rg.full_begin, "after 8 rounds of 60 blocks the class is still at %u (capacity %u)",
                 r.after.begin, (unsigned)(r.after.end - r.after.begin));
    cr_assert_gt((uint32_t)(r.after.end - r.after.begin), (uint32_t)rg.short_n);
    cr_assert_leq((uint32_t)r.after.end, (uint32_t)(rg.full_begin + rg.full_n));
    cr_assert_geq(r.held_after, (uint32_t)rg.short_n, "only %u of 60 freed blocks cached", r.held_after);
    cr_assert_null(r.slab_error, "%s", r.slab_error);
}

/* Classes move to their full ranges while other threads on the same CPU use
 * them: 8 threads pinned to one CPU grow 60 classes (mostly ones no test
 * harness uses, so they start in their short ranges) round after round,
 * each block filled with a pattern its thread checks before freeing it;
 * then the CPU's slab (or each thread's) passes check_slab. */
#define MOVERS 8
struct mover_report {
    int cpu, id;
    char err[160];
};
static void *mover(void *arg) {
    struct mover_report *r = arg;
    pin(r->cpu);
    static __thread unsigned char *p[300];
    for (int round = 1; round <= 30 && !r->err[0]; round++) {
        for (int c = 0; c < 60 && !r->err[0]; c++) {
            size_t sz = 16 + (size_t)c * 48 + (size_t)(r->id % 3) * 16;
            int k = round * 7 % 300 + 1;
            for (int i = 0; i < k; i++) {
                if (!(p[i] = malloc(sz))) {
                    snprintf(r->err, sizeof r->err, "malloc(%zu) returned NULL", sz);
                    k = i;
                    break;
                }
                memset(p[i], (r->id * 31 + i) & 0xff, sz);
            }
            for (int i = 0; i < k && !r->err[0]; i++) {
                unsigned char v = (unsigned char)((r->id * 31 + i) & 0xff);
                if (p[i][0] != v || p[i][sz / 2] != v || p[i][sz - 1] != v)
                    snprintf(r->err, sizeof r->err, "thread %d: block %d of %zu bytes overwritten", r->id, i, sz);
            }
            for (int i = 0; i < k; i++) free(p[i]);
            if ((c & 7) == 0) sched_yield();
        }
    }
    if (!ta_fe_percpu && !r->err[0]) { /* a thread's own slab: checked before the thread's exit flush */
        slab_seen_clear();
        const char *e = check_slab(my_slab());
        if (e) snprintf(r->err, sizeof r->err, "%s", e);
    }
    return NULL;
}
Test(pcache, classes_move_while_other_threads_on_the_cpu_use_them) {
    static struct mover_report r[MOVERS];
    pthread_t t[MOVERS];
    int cpu = first_cpu();
    /* (per CPU: the classes must start short on this CPU, or nothing moves here) */
    uint32_t short_at_start = 0;
    for (int c = 0; ta_fe_percpu && c < 60; c++) {
        uint32_t cls = ta_size_to_class(16 + (size_t)c * 48);
        ta_slab_hdr_t h = hdr(cpu_slab(cpu), cls);
        ta_slot_ranges_t rg = ta_pcache_ranges(cls);
        short_at_start += rg.full_begin != rg.short_begin && (!h.word || h.begin == rg.short_begin);
    }
    if (ta_fe_percpu) cr_assert_geq(short_at_start, 20u, "only %u classes start in their short range", short_at_start);
    for (int i = 0; i < MOVERS; i++) {
        r[i] = (struct mover_report){.cpu = cpu, .id = i};
        cr_assert_eq(pthread_create(&t[i], NULL, mover, &r[i]), 0);
    }
    for (int i = 0; i < MOVERS; i++) cr_assert_eq(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < MOVERS; i++) cr_assert_eq(r[i].err[0], 0, "%s", r[i].err);
    if (ta_fe_percpu) {
        pin(cpu);
        slab_seen_clear();
        const char *e = check_slab(cpu_slab(cpu));
        cr_assert_null(e, "%s", e);
        /* and they moved: the classes that started short grew into their full ranges */
        uint32_t full_now = 0;
        for (int c = 0; c < 60; c++) {
            uint32_t cls = ta_size_to_class(16 + (size_t)c * 48);
            ta_slot_ranges_t rg = ta_pcache_ranges(cls);
            full_now += rg.full_begin != rg.short_begin && hdr(cpu_slab(cpu), cls).begin == rg.full_begin;
        }
        cr_log_info("%u classes started short, %u are in their full ranges now", short_at_start, full_now);
        cr_assert_geq(full_now, short_at_start / 2, "%u of %u classes moved", full_now, short_at_start);
    }
}

Test(pcache, capacity_grows_on_misses) {
    /* fewer objects than the class's slot range (2048 for 64 bytes) */
    struct growth_report r = {.cpu = first_cpu(), .size = {64}, .nsizes = 1, .nobj = 1500, .rounds = 30};
    run_thread(grow_classes, &r);
    cr_assert_geq(r.cap_first, 1u, "a class that just missed has capacity 0");
    cr_assert_gt(r.cap_last, r.cap_first, "capacity stayed at %u through %d rounds of misses", r.cap_first, r.rounds);
    cr_assert_geq(r.cap_last, 1500u);
    cr_assert_not(r.held_over_cap, "a class held more than its capacity");
    cr_assert_null(r.slab_error, "%s", r.slab_error);
    /* growing is what makes the working set stop missing */
    cr_assert_lt(r.miss_last, r.miss_first, "misses per round: first %lu, last %lu", (unsigned long)r.miss_first,
                 (unsigned long)r.miss_last);
    cr_assert_eq(r.miss_last, 0u, "a class that grew to fit the working set still misses");
}

/* six classes of 4..12 KiB, 600 blocks each per round: far more than one
 * cache may keep (a thread's budget is lowered to 1 MiB for the test) */
static struct growth_report six_classes(void) {
    struct growth_report r = {.cpu = first_cpu(),
                              .size = {4096, 5120, 6144, 8192, 10240, 12288},
                              .nsizes = 6,
                              .nobj = 600,
                              .rounds = 8};
    ta_cfg.thread_cache_max = (uint64_t)1 << 20;
    run_thread(grow_classes, &r);
    return r;
}
static uint64_t budget(void) { return ta_fe_percpu ? ta_cfg.cpu_cache_bytes : ta_cfg.thread_cache_max; }

Test(pcache, capacity_is_bounded_by_the_budget) {
    struct growth_report r = six_classes();
    const uint64_t b = budget();
    cr_assert_gt(r.cap_last, r.cap_first);
    cr_assert_not(r.held_over_cap);
    cr_assert_null(r.slab_error, "%s", r.slab_error);
    cr_assert_leq((uint64_t)r.cap_seen * 4096, b, "capacity %u objects of 4 KiB exceeds the %lu-byte budget", r.cap_seen,
                  (unsigned long)b);
    cr_assert_leq(r.worst_committed, b, "classes may hold %lu bytes, budget %lu", (unsigned long)r.worst_committed,
                  (unsigned long)b);
    cr_assert_leq(r.worst_cache_bytes, b, "the cache held %lu bytes, budget %lu", (unsigned long)r.worst_cache_bytes,
                  (unsigned long)b);
    /* and the budget is used: the classes together hold a good part of it */
    cr_assert_geq(r.worst_cache_bytes, b / 4, "the cache never held more than %lu bytes",
                  (unsigned long)r.worst_cache_bytes);
}

/* Every class in use gets room: capacity moves to the class that keeps
 * missing (taken from the others) instead of staying with the first ones to
 * grow.  (The classes are used in turn and together want far more than the
 * budget, so each one's capacity is looked at after its own phase.) */
Test(pcache, budget_moves_to_the_classes_in_use) {
    struct growth_report r = six_classes();
    for (int k = 0; k < r.nsizes; k++) cr_log_info("class of %zu B: capacity %u", r.size[k], r.cap_end[k]);
    cr_log_info("first %u last %u seen %u; frees missed in the last round %lu", r.cap_first, r.cap_last, r.cap_seen,
                (unsigned long)r.frees_missed_last);
    for (int k = 0; k < r.nsizes; k++)
        cr_assert_gt(r.cap_end[k], 0u,
                     "class of %zu B still has capacity 0 after %d rounds of %d misses "
                     "(the budget stayed with the classes used first)",
                     r.size[k], r.rounds, r.nobj);
    cr_assert_lt(r.frees_missed_last, (uint64_t)r.nsizes * r.nobj / 4,
                 "%lu of %d frees in the last round took the slow path", (unsigned long)r.frees_missed_last,
                 r.nsizes * r.nobj);
}

/* A CPU used by one thread lends it the budget of a thread cache: a working
 * set of 4 MiB (twice the base budget of a CPU) stops missing; once more than
 * CPU_USERS (32, pcache.c) live threads have used that CPU, it gives the
 * borrowed budget back and holds no more than its base.  Threads that have
 * exited do not count: as many that come and go one at a time leave it its
 * budget.
 * (The six-classes tests keep thread_cache_max at 1 MiB, below the CPU base:
 * no borrowing there.) */
static struct growth_report lone_thread;
static pthread_barrier_t crowd_all_in; /* the crowd: its members wait for each other before they exit */
static bool crowd_waits;
static void *crowd_member(void *arg) {
    pin(*(int *)arg);
    enum { N = 3000 }; /* more than a class keeps: this thread takes slow paths */
    static __thread void *p[N];
    for (int i = 0; i < N; i++) p[i] = malloc(48);
    for (int i = 0; i < N; i++) free(p[i]);
    if (crowd_waits) pthread_barrier_wait(&crowd_all_in); /* all alive together */
    return NULL;
}
static void lone_thread_borrows(void) {
    lone_thread = (struct growth_report){.cpu = first_cpu(), .size = {768, 1024, 1536, 2048}, .nsizes = 4,
                                         .nobj = 1024, .rounds = 6};
    run_thread(grow_classes, &lone_thread);
    const uint64_t base = ta_cfg.cpu_cache_bytes;
    cr_log_info("one thread: misses first round %lu, last %lu; cache held at most %lu bytes (base %lu)",
                (unsigned long)lone_thread.miss_first, (unsigned long)lone_thread.miss_last,
                (unsigned long)lone_thread.worst_cache_bytes, (unsigned long)base);
    cr_assert_null(lone_thread.slab_error, "%s", lone_thread.slab_error);
    cr_assert_gt(lone_thread.worst_cache_bytes, base, "a CPU with one thread held %lu bytes, no more than its base %lu",
                 (unsigned long)lone_thread.worst_cache_bytes, (unsigned long)base);
    cr_assert_leq(lone_thread.worst_committed, ta_cfg.thread_cache_max, "capacity %lu above a thread's most",
                  (unsigned long)lone_thread.worst_committed);
    cr_assert_lt(lone_thread.miss_last, (uint64_t)lone_thread.nobj * lone_thread.nsizes / 8,
                 "the 4 MiB working set still misses %lu times a round", (unsigned long)lone_thread.miss_last);
}
Test(pcache, a_cpu_used_by_one_thread_borrows_budget_and_a_crowded_one_returns_it) {
    NEED_PERCPU();
    lone_thread_borrows();
    enum { CROWD = 40 }; /* more than CPU_USERS */
    pthread_t t[CROWD];
    crowd_waits = true;
    cr_assert_eq(pthread_barrier_init(&crowd_all_in, NULL, CROWD), 0);
    for (int i = 0; i < CROWD; i++) cr_assert_eq(pthread_create(&t[i], NULL, crowd_member, &lone_thread.cpu), 0);
    for (int i = 0; i < CROWD; i++) cr_assert_eq(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&crowd_all_in);
    const uint64_t base = ta_cfg.cpu_cache_bytes;
    uint64_t held_after = slab_bytes(cpu_slab(lone_thread.cpu), false);
    uint64_t cap_after = slab_bytes(cpu_slab(lone_thread.cpu), true);
    cr_assert_leq(cap_after, base, "after 40 threads at once the CPU's capacity is %lu bytes, base %lu",
                  (unsigned long)cap_after, (unsigned long)base);
    cr_assert_leq(held_after, base);
}
Test(pcache, threads_that_come_and_go_one_at_a_time_leave_a_cpu_its_budget) {
    NEED_PERCPU();
    ta_cfg.decay_ms = 60000; /* (no decay period ends during the test: it would also give budget back) */
    lone_thread_borrows();
    crowd_waits = false;
    for (int i = 0; i < 12; i++) run_thread(crowd_member, &lone_thread.cpu);
    const uint64_t base = ta_cfg.cpu_cache_bytes;
    uint64_t cap_after = slab_bytes(cpu_slab(lone_thread.cpu), true);
    cr_log_info("after 12 threads one at a time: capacity %lu bytes (base %lu)", (unsigned long)cap_after,
                (unsigned long)base);
    cr_assert_gt(cap_after, base,
                 "12 threads that used the CPU one after another took its budget: capacity %lu bytes, base %lu",
                 (unsigned long)cap_after, (unsigned long)base);
}

/* The same, where each thread frees blocks from a destructor of its own that
 * runs after tier 1's (a key made later: glibc runs them in key order), as
 * libraries that keep per-thread state do: a slow path taken then must not
 * count the thread among the CPU's users again, for good. */
static pthread_key_t late_key;
static void late_frees(void *arg) {
    void **p = arg;
    for (int i = 0; i < 3000; i++) free(p[i]);
    free(p);
}
static void *crowd_member_late(void *arg) {
    pin(*(int *)arg);
    void **p = malloc(3000 * sizeof *p);
    for (int i = 0; i < 3000; i++) p[i] = malloc(48); /* more than a class keeps: slow paths */
    pthread_setspecific(late_key, p);
    return NULL;
}
Test(pcache, threads_that_free_in_their_last_destructors_leave_a_cpu_its_budget) {
    NEED_PERCPU();
    ta_cfg.decay_ms = 60000;
    cr_assert_eq(pthread_key_create(&late_key, late_frees), 0);
    lone_thread_borrows();
    for (int i = 0; i < 40; i++) run_thread(crowd_member_late, &lone_thread.cpu); /* (more than CPU_USERS) */
    const uint64_t base = ta_cfg.cpu_cache_bytes;
    uint64_t cap_after = slab_bytes(cpu_slab(lone_thread.cpu), true);
    cr_assert_gt(cap_after, base,
                 "40 threads that freed in a late destructor, one after another, took the CPU's budget: capacity %lu "
                 "bytes, base %lu",
                 (unsigned long)cap_after, (unsigned long)base);
}

/* The records of exited threads wait for the next thread with their slabs;
 * those slabs' pages (headers and the slots of every class a thread used)
 * go back to the OS at malloc_trim (and once a decay period old), where they
 * stayed resident for good: 1 000 threads under TIERALLOC_PERCPU=0 left 37 MB. */
static pthread_barrier_t slab_all_in;
static void *many_classes(void *arg) {
    (void)arg;
    static __thread void *p[64];
    for (int i = 0; i < 64; i++) p[i] = malloc(16 + (size_t)i * 97); /* 64 classes' slots touched */
    pthread_barrier_wait(&slab_all_in);                                 /* all alive at once: a slab each */
    for (int i = 0; i < 64; i++) free(p[i]);
    return NULL;
}
Test(pcache, exited_threads_slabs_go_back_to_the_os_at_malloc_trim) {
    NEED_PERTHREAD();
    enum { T = 32 };
    pthread_t t[T];
    cr_assert_eq(pthread_barrier_init(&slab_all_in, NULL, T), 0);
    for (int i = 0; i < T; i++) cr_assert_eq(pthread_create(&t[i], NULL, many_classes, NULL), 0);
    for (int i = 0; i < T; i++) cr_assert_eq(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&slab_all_in);
    struct ta_stats before = TA_STATS_INIT, after = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&before), 0);
    malloc_trim(0);
    cr_assert_eq(ta_stats_get(&after), 0);
    cr_log_info("metadata resident: %lu bytes before malloc_trim, %lu after", (unsigned long)before.metadata_resident_bytes,
                (unsigned long)after.metadata_resident_bytes);
    /* each slab had at least its header page and a page of slots resident */
    cr_assert_geq(before.metadata_resident_bytes, after.metadata_resident_bytes + (uint64_t)T * 2 * 4096,
                  "metadata resident %lu bytes before malloc_trim, %lu after: %d exited threads' slabs stayed",
                  (unsigned long)before.metadata_resident_bytes, (unsigned long)after.metadata_resident_bytes, T);
    /* and the next threads take those records again */
    cr_assert_eq(pthread_barrier_init(&slab_all_in, NULL, T), 0);
    for (int i = 0; i < T; i++) cr_assert_eq(pthread_create(&t[i], NULL, many_classes, NULL), 0);
    for (int i = 0; i < T; i++) cr_assert_eq(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&slab_all_in);
    struct ta_stats again = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&again), 0);
    /* A new slab maps about 840 KiB (every class's full range), so 32 new
     * ones would add some 26 MiB.  The bound leaves room for the rest that
     * the second wave may map (state array pages of new spans, a transfer
     * cache of a shard and class the first wave did not use): with 128 KiB
     * a thread (4 MiB) 1 run in about 300 failed on a loaded machine, 6.3
     * MiB more, with the code of stop 38 as well as stop 39's. */
    cr_assert_lt(again.metadata_bytes, after.metadata_bytes + (uint64_t)T * (384 << 10),
                 "new slabs were mapped: %lu bytes of metadata, %lu before", (unsigned long)again.metadata_bytes,
                 (unsigned long)after.metadata_bytes);
}

/* A class nobody uses any more gives back half of what it holds (and as much
 * capacity) once per decay period, from the slow paths of other classes: the
 * thread's own (per thread) or any CPU's (per CPU: every CPU is scanned).
 * Each step below is exactly one period: one slow path (the first malloc of
 * a class this cache never used is a miss) with the period set to 0 ms. */
static void one_decay_period(size_t size) {
    ta_cfg.decay_ms = 0;
    void *p = malloc(size);
    while (sampled(p)) { /* (a sampled block takes no slow path of tier 1) */
        free(p);
        p = malloc(size);
    }
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    free(p);
}

Test(pcache, idle_classes_drain_over_decay_periods) {
    const uint32_t idle = ta_size_to_class(720);
    static void *p[400];
    pin(first_cpu());
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 400; i++) p[i] = malloc(720);
        for (int i = 0; i < 400; i++) free(p[i]);
    }
    const ta_slot_t *slab = my_slab();
    uint32_t h0 = held(slab, idle), cap0 = cap(slab, idle);
    cr_assert_gt(h0, 16u, "the 720-byte class holds only %u blocks", h0);
    /* (classes nothing here used, small enough that growing them takes no
     * capacity from the others: that would shrink the idle class too) */
    const size_t steps[] = {9000, 11000, 13000, 15500, 18500, 22000};
    uint32_t seen[6], caps[6];
    for (int period = 0; period < 6; period++) {
        one_decay_period(steps[period]);
        seen[period] = held(slab, idle);
        caps[period] = cap(slab, idle);
    }
    /* the first period only forgets that the class was in use (it missed while
     * it was being filled); each later one halves it, capacity with it */
    cr_assert_eq(seen[0], h0, "the first period took %u of %u blocks from a class just in use", h0 - seen[0], h0);
    cr_assert_eq(caps[0], cap0);
    uint32_t want = h0, want_cap = cap0;
    for (int period = 1; period < 6; period++) {
        uint32_t k = (want + 1) / 2;
        want -= k;
        want_cap -= k < want_cap ? k : want_cap;
        cr_assert_eq(seen[period], want, "period %d: %u blocks held, want %u (held %u at the start)", period,
                     seen[period], want, h0);
        cr_assert_eq(caps[period], want_cap, "period %d: capacity %u, want %u (%u at the start)", period, caps[period],
                     want_cap, cap0);
    }
    slab_seen_clear();
    const char *e = check_slab(slab);
    cr_assert_null(e, "%s", e);
}

/* ---- thread exit (per thread) ---------------------------------------------------- */
struct exit_report {
    size_t size;
    int nobj;
    void *cache;
    uint32_t held_before_exit;
    uint64_t bytes_before_exit; /* ta_pcache_bytes(cls) seen by the thread */
};

static void *fill_and_exit(void *arg) {
    struct exit_report *r = arg;
    enum { MAXN = 600 };
    void *p[MAXN];
    int n = r->nobj < MAXN ? r->nobj : MAXN;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < n; i++) p[i] = malloc(r->size);
        for (int i = 0; i < n; i++) free(p[i]);
    }
    uint32_t c = ta_size_to_class(r->size);
    r->cache = ta_tls.cache;
    r->held_before_exit = held(ta_tls.slab, c);
    r->bytes_before_exit = ta_pcache_bytes(c);
    return NULL;
}

Test(pcache, exiting_thread_gives_its_objects_back) {
    NEED_PERTHREAD();
    const size_t sz = 2600; /* a class nothing else here uses */
    const uint32_t c = ta_size_to_class(sz);
    ta_central_stats_t c0, c1;
    quiesce();
    ta_central_stats(c, &c0);
    uint64_t pc0 = ta_pcache_bytes(c), caches0 = pc_stats().caches;
    struct exit_report r = {.size = sz, .nobj = 500};
    run_thread(fill_and_exit, &r);
    uint64_t pc1 = ta_pcache_bytes(c), caches1 = pc_stats().caches;
    ta_central_drain();
    ta_central_stats(c, &c1);

    cr_assert_gt(r.held_before_exit, 0u, "the thread's cache held nothing before exit");
    cr_assert_eq(r.bytes_before_exit - pc0, (uint64_t)r.held_before_exit * ta_class[c].size);
    cr_assert_eq(pc1, pc0, "%lu bytes of class %u still counted in caches after the thread exited",
                 (unsigned long)(pc1 - pc0), c);
    cr_assert_eq(caches1, caches0, "the dead thread's cache is still registered");
    /* every object is back in central: its spans are exactly as before */
    cr_assert_eq(c1.transfer_bytes, 0u);
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes, "class %u: %ld free bytes missing from central", c,
                 (long)(c0.span_free_bytes - c1.span_free_bytes));
}

/* Two busy threads do not share a central shard while another is free: the
 * threads of one shard refill from the same spans, so their blocks (and the
 * state bytes malloc and free write) would lie side by side for as long as
 * they live.  In a child of fork (the test runner's other threads are gone
 * there, and their caches count for no shard) the main thread keeps blocks of
 * a class live; threads started one after another (each after the last one
 * exited, as a pool replaces its workers) take blocks of that class: none may
 * get a block in a page of the main thread's.  (Before the shards were
 * balanced, every second such thread shared the main thread's shard.) */
struct shard_report {
    size_t size;
    void *p[64];
};
static void *take_blocks(void *arg) {
    struct shard_report *r = arg;
    for (int i = 0; i < 64; i++) r->p[i] = malloc(r->size);
    for (int i = 0; i < 64; i++) free(r->p[i]); /* (the addresses stay in r) */
    return NULL;
}
static int blocks_in_pages_of(void *const *theirs, void *const *mine) {
    int shared = 0;
    for (int i = 0; i < 64; i++) {
        if (sampled(theirs[i])) continue;
        for (int j = 0; j < 64; j++)
            if ((uintptr_t)theirs[i] >> TA_PAGE_SHIFT == (uintptr_t)mine[j] >> TA_PAGE_SHIFT) {
                shared++;
                break;
            }
    }
    return shared;
}

Test(pcache, successive_threads_keep_off_the_main_threads_shard) {
    NEED_PERTHREAD();
    if (ta_central_shards() < 2) cr_skip_test("one central shard here (one CPU)");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        const size_t sz = 1800; /* a class nothing else here uses */
        static void *mine[64];
        for (int i = 0; i < 64; i++) mine[i] = malloc(sz);
        int shared = 0;
        for (int t = 0; t < 6; t++) {
            struct shard_report r = {.size = sz};
            pthread_t th;
            if (pthread_create(&th, NULL, take_blocks, &r) != 0 || pthread_join(th, NULL) != 0) _exit(255);
            shared += blocks_in_pages_of(r.p, mine);
        }
        _exit(shared > 250 ? 250 : shared);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st), "the child died (status %#x)", st);
    cr_assert_eq(WEXITSTATUS(st), 0, "%d blocks of the threads in pages of the main thread's", WEXITSTATUS(st));
}

/* With a busy main thread and an idle one (each a shard of its own), new
 * threads take the idle thread's shard: a thread that has taken no slow path
 * in the last decay period counts as a lighter neighbour than a busy one. */
static pthread_mutex_t idler_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idler_cv = PTHREAD_COND_INITIALIZER;
static int idler_go, idler_ready;
static void *idler(void *arg) {
    (void)arg;
    free(malloc(200)); /* a cache, then nothing more */
    pthread_mutex_lock(&idler_lock);
    idler_ready = 1;
    pthread_cond_broadcast(&idler_cv);
    while (!idler_go) pthread_cond_wait(&idler_cv, &idler_lock);
    pthread_mutex_unlock(&idler_lock);
    return NULL;
}

Test(pcache, new_threads_take_the_shard_of_an_idle_thread_not_a_busy_one) {
    NEED_PERTHREAD();
    if (ta_central_shards() != 2) cr_skip_test("this test wants exactly two central shards (two CPUs)");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ta_cfg.decay_ms = 500; /* (a busy thread must start its next within this) */
        const size_t sz = 1800;
        static void *mine[64];
        for (int i = 0; i < 64; i++) mine[i] = malloc(sz);
        pthread_t idle;
        if (pthread_create(&idle, NULL, idler, NULL) != 0) _exit(255);
        pthread_mutex_lock(&idler_lock);
        while (!idler_ready) pthread_cond_wait(&idler_cv, &idler_lock);
        pthread_mutex_unlock(&idler_lock);
        usleep(800 * 1000); /* the idler is idle past a decay period */
        int shared = 0;
        for (int t = 0; t < 4; t++) {
            ta_pcache_flush_current();
            free(malloc(sz)); /* a slow path: the main thread is busy */
            struct shard_report r = {.size = sz};
            pthread_t th;
            if (pthread_create(&th, NULL, take_blocks, &r) != 0 || pthread_join(th, NULL) != 0) _exit(255);
            shared += blocks_in_pages_of(r.p, mine);
        }
        pthread_mutex_lock(&idler_lock);
        idler_go = 1;
        pthread_cond_broadcast(&idler_cv);
        pthread_mutex_unlock(&idler_lock);
        pthread_join(idle, NULL);
        _exit(shared > 250 ? 250 : shared);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st), "the child died (status %#x)", st);
    cr_assert_eq(WEXITSTATUS(st), 0, "%d blocks of the new threads in pages of the busy main thread's",
                 WEXITSTATUS(st));
}

/* Two threads that replace random blocks of a shared pool (the `server`
 * shape: most frees are of the other thread's blocks) keep their caches
 * bounded: each class's mallocs and frees take turns at random, so it runs
 * dry now and then however large it is; it grows past a few objects only
 * when it runs dry often within a refill window, and gives capacity back when
 * it seldom does.  Before, every refill grew it: the two caches held 3.8 MB
 * after 10^6 replacements each and 7.2 MB after 2*10^7, for 2.2 MB in use. */
#define SRV_POOL 4096
static char *_Atomic srv_pool[SRV_POOL];
static pthread_barrier_t srv_done, srv_leave;
static uint64_t srv_ops[2];
static void *srv_worker(void *arg) {
    long t = (long)arg;
    uint64_t r = 1000 + (uint64_t)t, ops = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (int i = 0; i < 4096; i++, ops++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            size_t n = 16 + (size_t)((r >> 32) % 1009);
            char *p = malloc(n);
            p[0] = 1, p[n - 1] = 2;
            free(atomic_exchange(&srv_pool[r & (SRV_POOL - 1)], p));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 400);
    srv_ops[t] = ops;
    pthread_barrier_wait(&srv_done); /* both alive while the main thread looks */
    pthread_barrier_wait(&srv_leave);
    return NULL;
}

Test(pcache, random_cross_thread_frees_keep_thread_caches_bounded) {
    NEED_PERTHREAD();
    ta_cfg.decay_ms = 100; /* refill windows of 5 ms */
    uint64_t r = 99, in_pool = 0;
    for (int i = 0; i < SRV_POOL; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t n = 16 + (size_t)(r % 1009);
        srv_pool[i] = malloc(n);
        in_pool += ta_class[ta_size_to_class(n)].size;
    }
    cr_assert_eq(pthread_barrier_init(&srv_done, NULL, 3), 0);
    cr_assert_eq(pthread_barrier_init(&srv_leave, NULL, 3), 0);
    pthread_t t[2];
    for (long i = 0; i < 2; i++) cr_assert_eq(pthread_create(&t[i], NULL, srv_worker, (void *)i), 0);
    pthread_barrier_wait(&srv_done);
    uint64_t cached = ta_pcache_bytes(0);
    pthread_barrier_wait(&srv_leave);
    for (int i = 0; i < 2; i++) cr_assert_eq(pthread_join(t[i], NULL), 0);
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    for (int i = 0; i < SRV_POOL; i++) free(srv_pool[i]);
    cr_log_info("%lu and %lu replacements: thread caches hold %lu bytes, the pool %lu", (unsigned long)srv_ops[0],
                (unsigned long)srv_ops[1], (unsigned long)cached, (unsigned long)in_pool);
    cr_assert_leq(cached, in_pool * 3 / 2, "thread caches hold %lu bytes for a pool of %lu (%lu and %lu replacements)",
                  (unsigned long)cached, (unsigned long)in_pool, (unsigned long)srv_ops[0], (unsigned long)srv_ops[1]);
}

/* A thread that only frees (blocks it got from another thread) has a cache too,
 * and it is flushed at exit. */
static void *free_only(void *arg) {
    void **p = arg;
    for (int i = 0; p[i]; i++) free(p[i]);
    return NULL;
}

Test(pcache, free_only_thread_flushes_at_exit) {
    NEED_PERTHREAD();
    const size_t sz = 3300;
    const uint32_t c = ta_size_to_class(sz);
    static void *p[301];
    ta_central_stats_t c0, c1;
    quiesce();
    ta_central_stats(c, &c0);
    uint64_t pc0 = ta_pcache_bytes(c);
    for (int i = 0; i < 300; i++) p[i] = malloc(sz);
    p[300] = NULL;
    ta_pcache_flush_current(); /* the refill leftovers leave this thread's cache */
    run_thread(free_only, p);
    uint64_t pc1 = ta_pcache_bytes(c);
    ta_central_drain();
    ta_central_stats(c, &c1);
    cr_assert_eq(pc1, pc0, "%lu bytes stranded in caches", (unsigned long)(pc1 - pc0));
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes);
}

/* Per CPU, a thread's exit leaves the CPU's cache alone (it is the CPU's);
 * nothing is lost: draining the CPUs brings every object back. */
Test(pcache, exited_threads_objects_stay_with_the_cpu) {
    NEED_PERCPU();
    const size_t sz = 2600;
    const uint32_t c = ta_size_to_class(sz);
    ta_central_stats_t c0, c1;
    quiesce();
    ta_central_stats(c, &c0);
    struct exit_report r = {.size = sz, .nobj = 500};
    run_thread(fill_and_exit, &r);
    uint64_t pc1 = ta_pcache_bytes(c);
    cr_assert_null(r.cache, "a thread got a thread cache in per-CPU mode");
    quiesce();
    ta_central_stats(c, &c1);
    cr_assert_gt(pc1, 0u, "the CPU caches hold none of the exited thread's objects");
    cr_assert_eq(ta_pcache_bytes(c), 0u);
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes, "class %u: %ld free bytes missing from central", c,
                 (long)(c0.span_free_bytes - c1.span_free_bytes));
}

/* Objects go home (pcache.c, OUTBOX_SLOTS): per CPU, a free of an object whose
 * span belongs to another shard puts it in the outbox, never in the class's
 * slots, so that this CPU does not hand it out; the outbox goes to the
 * object's shard's transfer cache when it is full or the cache is drained.
 * Two CPUs of different shards: allocate on the first, free on the second. */
/* ta_stats_get's identity: what is mapped and not released is the sum of the parts. */
static void assert_stats_identity(const char *when) {
    struct ta_stats st = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&st), 0);
    uint64_t sum = st.inuse_bytes + st.thread_cache_bytes + st.central_bytes + st.span_free_bytes +
                   st.span_tail_bytes + st.pageheap_free_bytes + st.arena_bytes + st.metadata_bytes + st.guard_bytes;
    cr_assert_eq(st.mapped_bytes - st.released_bytes, sum, "%s: mapped-released %lu, parts %lu", when,
                 (unsigned long)(st.mapped_bytes - st.released_bytes), (unsigned long)sum);
}

static bool two_shards(int *cpu0, int *cpu1) {
    int cpus[64], n = ncpu_allowed(cpus, 64);
    uint32_t shards = ta_central_shards();
    for (int i = 1; i < n; i++)
        if ((uint32_t)cpus[i] % shards != (uint32_t)cpus[0] % shards) {
            *cpu0 = cpus[0];
            *cpu1 = cpus[i];
            return true;
        }
    return false;
}

/* Pinned to cpu, n blocks of sz bytes, each filled with its index: those of
 * cpu's central shard in mine (their count returned, at least half), the
 * others (sampled, or taken from another shard) in others. */
static int alloc_on(int cpu, size_t sz, int n, void **mine, void **others) {
    uint32_t c = ta_size_to_class(sz), home = (uint32_t)cpu % ta_central_shards();
    int k = 0;
    cr_assert(pin(cpu));
    for (int i = 0; i < n; i++) {
        void *b = malloc(sz);
        cr_assert_not_null(b);
        memset(b, i, sz);
        if (!sampled(b) && ta_states_shard(ta_state_of(b, c)) == home) mine[k++] = b;
        else others[i - k] = b;
    }
    cr_assert_geq(k, n / 2, "only %d of %d blocks belong to CPU %d's shard", k, n, cpu);
    return k;
}

Test(pcache, another_shards_objects_go_home) {
    NEED_PERCPU();
    int cpu0, cpu1;
    if (!two_shards(&cpu0, &cpu1)) cr_skip_test("needs two allowed CPUs of different central shards");
    const size_t sz = 3000;
    const uint32_t c = ta_size_to_class(sz);
    enum { N = 48 };
    void *p[N], *q[N];
    quiesce(); /* (every outbox empty) */
    int nf = alloc_on(cpu0, sz, N, p, q);
    cr_assert(pin(cpu1));
    free(malloc(sz)); /* (the CPU's slab laid out) */
    ta_slot_t *slab = cpu_slab(cpu1);
    uint32_t class_before = held(slab, c);
    for (int i = 0; i < nf; i++) free(p[i]);
    cr_assert_eq(held(slab, TA_SLAB_OUTBOX), (uint32_t)nf, "%u of %d freed blocks in CPU %d's outbox",
                 held(slab, TA_SLAB_OUTBOX), nf, cpu1);
    cr_assert_leq(held(slab, c), class_before, "another shard's blocks went into the class's slots");
    cr_assert_geq(ta_pcache_bytes(c), (uint64_t)nf * ta_class[c].size, "the outbox's blocks are not counted");
    assert_stats_identity("blocks in an outbox");
    /* this CPU does not hand them out */
    void *r[N];
    for (int i = 0; i < nf; i++) {
        r[i] = malloc(sz);
        cr_assert_not_null(r[i]);
        for (int j = 0; j < nf; j++) cr_assert_neq(r[i], p[j], "CPU %d handed out a block of another shard", cpu1);
    }
    for (int i = 0; i < nf; i++) free(r[i]);
    for (int i = 0; i < N - nf; i++) free(q[i]);
    /* the drain sends the outbox home: CPU 0's shard hands them out again */
    ta_pcache_drain_all();
    cr_assert_eq(held(slab, TA_SLAB_OUTBOX), 0u, "the drain left the outbox with objects");
    cr_assert(pin(cpu0));
    int back = 0;
    for (int i = 0; i < nf; i++) {
        r[i] = malloc(sz);
        for (int j = 0; j < nf; j++) back += r[i] == p[j];
    }
    for (int i = 0; i < nf; i++) free(r[i]);
    cr_assert_gt(back, 0, "none of the %d blocks came back to their shard's CPU", nf);
    quiesce();
}

/* A CPU that frees a class it never allocates (a pipeline's consumer) has
 * no room in that class: another shard's blocks of it still go to the outbox
 * on the fast path, not through the slow path and the CPU's lock. */
Test(pcache, a_cpu_that_only_frees_a_class_sends_it_home_on_the_fast_path) {
    NEED_PERCPU();
    int cpu0, cpu1;
    if (!two_shards(&cpu0, &cpu1)) cr_skip_test("needs two allowed CPUs of different central shards");
    enum { N = 40 };
    void *p[N];
    quiesce();
    /* a class in which the second CPU has no room (the test runner's own
     * allocations may have used one or two of these) */
    cr_assert(pin(cpu1));
    free(malloc(16)); /* (the CPU's slab laid out, through another class) */
    ta_slot_t *slab = cpu_slab(cpu1);
    const size_t sizes[] = {1500, 1800, 2200, 2600, 3000, 3500, 4000};
    size_t sz = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes && !sz; k++)
        if (cap(slab, ta_size_to_class(sizes[k])) == 0) sz = sizes[k];
    if (!sz) cr_skip_test("CPU %d has room in every class tried", cpu1);
    const uint32_t c = ta_size_to_class(sz);
    void *others[N];
    int nf = alloc_on(cpu0, sz, N, p, others); /* (the others stay allocated) */
    cr_assert(pin(cpu1));
    cr_assert_eq(cap(slab, c), 0u, "CPU %d has room in class %u already", cpu1, c);
    uint64_t m0 = pc_stats().free_misses;
    for (int i = 0; i < nf; i++) free(p[i]);
    uint64_t missed = pc_stats().free_misses - m0;
    cr_assert_eq(held(slab, TA_SLAB_OUTBOX), (uint32_t)nf, "%u of %d blocks in the outbox", held(slab, TA_SLAB_OUTBOX), nf);
    cr_assert_eq(missed, 0u, "%lu of %d frees took the slow path", (unsigned long)missed, nf);
    quiesce();
}

/* Past the outbox's capacity it goes home at once, in runs of shard and
 * class: nothing is lost (the stats identity) and nothing handed out twice. */
Test(pcache, a_full_outbox_goes_home) {
    NEED_PERCPU();
    int cpu0, cpu1;
    if (!two_shards(&cpu0, &cpu1)) cr_skip_test("needs two allowed CPUs of different central shards");
    enum { N = 2000 };
    static char *p[N];
    quiesce();
    cr_assert(pin(cpu0));
    for (int i = 0; i < N; i++) {
        size_t sz = 16 + (size_t)(i * 37) % 2000; /* many classes in one outbox */
        p[i] = malloc(sz);
        cr_assert_not_null(p[i]);
        memset(p[i], (int)(i & 0xff), sz);
    }
    cr_assert(pin(cpu1));
    for (int i = 0; i < N; i++) free(p[i]);
    cr_assert_leq(held(cpu_slab(cpu1), TA_SLAB_OUTBOX), 64u);
    assert_stats_identity("after outboxes went home");
    /* all come back once, none twice */
    cr_assert(pin(cpu0));
    for (int i = 0; i < N; i++) {
        size_t sz = 16 + (size_t)(i * 37) % 2000;
        p[i] = malloc(sz);
        cr_assert_not_null(p[i]);
        memset(p[i], (int)(i & 0xff), sz);
    }
    for (int i = 0; i < N; i++) {
        size_t sz = 16 + (size_t)(i * 37) % 2000;
        for (size_t k = 0; k < sz; k++)
            cr_assert_eq((unsigned char)p[i][k], (unsigned char)(i & 0xff), "block %d overwritten: handed out twice", i);
    }
    for (int i = 0; i < N; i++) free(p[i]);
    quiesce();
}

/* Per thread too, a block smaller than a cache line that a thread of another
 * shard allocated goes onto the freeing thread's home-bound stack of its
 * class (TA_SLAB_HOME), not into its class's slots: that thread never hands
 * it out again, so two threads do not write one cache line (passive false
 * sharing, the `false_sharing` benchmark); the stack goes home when full and
 * at the thread's exit.  A block of a line or more stays in
 * the freeing thread's class slots and is reused there (pcache.h,
 * TA_SLAB_THREAD_SHARD_CHECK). */
enum { XS_N = 40, XS_M = 8 };
static void *xs_small[XS_N], *xs_line[XS_M];
static struct {
    uint32_t shard, outbox, small_reused, line_held, line_reused;
} xs;
static void *free_anothers(void *arg) {
    const uint32_t cl = ta_size_to_class(64), *other = arg;
    free(malloc(16)), free(malloc(64)); /* (the thread's cache, laid out) */
    ta_slot_t *slab = ta_tls.slab;
    xs.shard = (uint32_t)(((const ta_slab_hdr_t *)slab)[TA_SLAB_SHARD].word >> TA_STATES_SHARD_SHIFT);
    if (xs.shard == *other) return NULL; /* (the caller tries another thread) */
    uint32_t line_before = held(slab, cl);
    for (int i = 0; i < XS_N; i++) free(xs_small[i]);
    xs.outbox = held(slab, TA_SLAB_HOME + ta_size_to_class(16));
    void *r[XS_N];
    for (int i = 0; i < XS_N; i++) {
        r[i] = malloc(16);
        for (int j = 0; j < XS_N; j++) xs.small_reused += r[i] == xs_small[j];
    }
    for (int i = 0; i < XS_M; i++) free(xs_line[i]);
    xs.line_held = held(slab, cl) - line_before;
    void *q = malloc(64);
    for (int j = 0; j < XS_M; j++) xs.line_reused += q == xs_line[j];
    free(q);
    for (int i = 0; i < XS_N; i++) free(r[i]);
    return NULL;
}

Test(pcache, a_thread_sends_a_small_block_of_another_shard_home) {
    NEED_PERTHREAD();
    if (ta_central_shards() < 2) cr_skip_test("one central shard here (one CPU)");
    const uint32_t cs = ta_size_to_class(16);
    cr_assert_leq(cs, (uint32_t)TA_CLASS_LINE_SHARED);
    cr_assert_gt(ta_size_to_class(64), (uint32_t)TA_CLASS_LINE_SHARED);
    for (int i = 0; i < XS_N; i++) cr_assert_not_null(xs_small[i] = malloc(16));
    for (int i = 0; i < XS_M; i++) cr_assert_not_null(xs_line[i] = malloc(64));
    uint32_t mine = ta_states_shard(ta_state_of(xs_small[0], cs));
    for (int i = 0; i < XS_N; i++)
        if (sampled(xs_small[i]) || ta_states_shard(ta_state_of(xs_small[i], cs)) != mine)
            cr_skip_test("block %d sampled, or of another shard", i);
    for (int t = 0; t < 8 && (t == 0 || xs.shard == mine); t++) run_thread(free_anothers, &mine);
    if (xs.shard == mine) cr_skip_test("8 threads took the main thread's shard (%u)", mine);
    cr_assert_eq(xs.outbox, (uint32_t)XS_N, "%u of %d blocks of shard %u waiting to go home from a thread of shard %u",
                 xs.outbox, XS_N, mine, xs.shard);
    cr_assert_eq(xs.small_reused, 0u, "the freeing thread handed out %u of the other thread's small blocks",
                 xs.small_reused);
    cr_assert_eq(xs.line_held, (uint32_t)XS_M, "%u of %d 64-byte blocks kept in the class's slots", xs.line_held, XS_M);
    cr_assert_eq(xs.line_reused, 1u, "a 64-byte block freed there was not handed out again there");
    assert_stats_identity("after the thread's home-bound blocks went home");
    /* home: the main thread's shard hands them out again */
    ta_pcache_flush_current();
    int back = 0;
    void *r[XS_N];
    for (int i = 0; i < XS_N; i++) {
        r[i] = malloc(16);
        for (int j = 0; j < XS_N; j++) back += r[i] == xs_small[j];
    }
    for (int i = 0; i < XS_N; i++) free(r[i]);
    cr_assert_gt(back, 0, "none of the %d blocks came back to their shard", XS_N);
}

/* Frees alone grow a class to one batch at most: a consumer thread flushes in
 * batches but does not hoard blocks it will never allocate again. */
static uint32_t consumer_cap, consumer_held;
static void *free_only_report(void *arg) {
    void **p = arg;
    uint32_t c = ta_size_to_class(200);
    for (int i = 0; p[i]; i++) free(p[i]);
    consumer_cap = cap(ta_tls.slab, c);
    consumer_held = held(ta_tls.slab, c);
    return NULL;
}

Test(pcache, frees_alone_grow_a_class_to_one_batch) {
    NEED_PERTHREAD();
    const uint32_t c = ta_size_to_class(200), batch = ta_class[c].batch;
    static void *p[2001];
    for (int i = 0; i < 2000; i++) p[i] = malloc(200);
    p[2000] = NULL;
    run_thread(free_only_report, p);
    cr_assert_gt(consumer_cap, 0u, "a free-only class never got any capacity");
    cr_assert_leq(consumer_cap, batch, "a free-only class grew to %u (batch %u)", consumer_cap, batch);
    cr_assert_leq(consumer_held, batch, "a free-only class held %u blocks (batch %u)", consumer_held, batch);
}

static void *touch_and_report(void *arg) {
    void **out = arg;
    void *a = malloc(64), *b = malloc(1000);
    free(a);
    free(b);
    *out = ta_tls.cache;
    return NULL;
}

Test(pcache, thousand_threads_reuse_caches) {
    NEED_PERTHREAD();
    void *first = NULL, *seen_caches[4] = {0};
    int distinct = 0;
    run_thread(touch_and_report, &first); /* warm up: one cache made and freed */
    uint64_t m0 = ta_meta_bytes(), caches0 = pc_stats().caches;
    for (int i = 0; i < 1000; i++) {
        void *c = NULL;
        run_thread(touch_and_report, &c);
        cr_assert_not_null(c);
        bool known = false;
        for (int j = 0; j < distinct; j++) known |= seen_caches[j] == c;
        if (!known) {
            cr_assert_lt(distinct, 4, "thread %d got a new cache: exited threads' caches are not reused", i);
            seen_caches[distinct++] = c;
        }
    }
    uint64_t m1 = ta_meta_bytes(), caches1 = pc_stats().caches;
    /* (a cache is a record and a slab of some hundred KiB: a few of them at most) */
    cr_assert_lt(m1 - m0, (uint64_t)4 << 20, "metadata grew by %lu bytes over 1000 threads", (unsigned long)(m1 - m0));
    cr_assert(first == seen_caches[0], "the second thread did not reuse the first one's cache");
    cr_assert_eq(caches1, caches0, "%lu caches registered after 1000 threads, %lu before", (unsigned long)caches1,
                 (unsigned long)caches0);
}

/* Threads that filled their caches and then went idle must not leave a busy
 * thread without any cache: the global pool has a floor for every thread. */
static pthread_barrier_t hogs_filled, hogs_release;

static void *hog(void *arg) {
    (void)arg;
    struct growth_report r = {.size = {4096, 5120, 6144, 8192, 10240, 12288}, .nsizes = 6, .nobj = 600, .rounds = 3};
    grow_classes(&r);
    pthread_barrier_wait(&hogs_filled);
    pthread_barrier_wait(&hogs_release); /* idle, cache full, until the busy thread is done */
    return NULL;
}

struct busy_report {
    uint32_t cap;
    uint64_t frees, free_misses;
};

static void *busy(void *arg) {
    struct busy_report *r = arg;
    enum { N = 500 };
    void *p[N];
    const uint32_t c = ta_size_to_class(64);
    uint64_t m0 = pc_stats().free_misses;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < N; i++) p[i] = malloc(64);
        for (int i = 0; i < N; i++) free(p[i]);
    }
    r->cap = cap(ta_tls.slab, c);
    r->frees = 20 * N;
    r->free_misses = pc_stats().free_misses - m0; /* the hogs are idle: these are the busy thread's */
    return NULL;
}

Test(pcache, idle_threads_do_not_starve_a_busy_one) {
    NEED_PERTHREAD();
    enum { HOGS = 3 };
    pthread_t h[HOGS];
    /* a small pool: the hogs take all of it */
    ta_cfg.thread_cache_max = (uint64_t)2 << 20;
    pthread_barrier_init(&hogs_filled, NULL, HOGS + 1);
    pthread_barrier_init(&hogs_release, NULL, HOGS + 1);
    for (int i = 0; i < HOGS; i++) cr_assert_eq(pthread_create(&h[i], NULL, hog, NULL), 0);
    pthread_barrier_wait(&hogs_filled);
    struct busy_report r = {0};
    pthread_t b;
    int rc = pthread_create(&b, NULL, busy, &r);
    if (rc == 0) pthread_join(b, NULL);
    pthread_barrier_wait(&hogs_release);
    for (int i = 0; i < HOGS; i++) pthread_join(h[i], NULL);
    pthread_barrier_destroy(&hogs_filled);
    pthread_barrier_destroy(&hogs_release);
    cr_assert_eq(rc, 0);
    cr_assert_gt(r.cap, 0u, "the busy thread's 64-byte class has capacity 0: %d idle threads hold the whole budget",
                 HOGS);
    cr_assert_lt(r.free_misses * 4, r.frees, "%lu of %lu frees of the busy thread took the slow path",
                 (unsigned long)r.free_misses, (unsigned long)r.frees);
}

/* ---- malloc and free after the thread's cache is gone --------------------------- */
static pthread_key_t late_key;
static int late_ok;

static void late_destructor(void *arg) {
    (void)arg;
    /* runs during thread exit, after tieralloc's own exit flush (its key is older) */
    void *p[50];
    int ok = 1;
    for (int i = 0; i < 50; i++) {
        p[i] = malloc(2900);
        if (!p[i]) {
            late_ok = 0;
            return;
        }
        if (!sampled(p[i]) && *ta_state_of(p[i], ta_size_to_class(2900)) != TA_OBJ_LIVE) ok = 0;
        tu_fill_base(p[i], 2900, tu_pattern_base(p[i], 2900, 7));
    }
    for (int i = 0; i < 50; i++) {
        if (tu_check_base(p[i], 2900, tu_pattern_base(p[i], 2900, 7)) != (size_t)-1) ok = 0;
        free(p[i]);
    }
    for (int i = 0; i < 50; i++)
        if (!sampled(p[i]) && *ta_state_of(p[i], ta_size_to_class(2900)) == TA_OBJ_LIVE) ok = 0; /* FREE, or SPAN: back in its span */
    late_ok = ok ? 1 : 2;
}

static void *late_thread(void *arg) {
    (void)arg;
    free(malloc(2900));
    pthread_setspecific(late_key, (void *)1);
    return NULL;
}

Test(pcache, allocation_during_thread_exit_is_not_stranded) {
    const uint32_t c = ta_size_to_class(2900);
    cr_assert_eq(pthread_key_create(&late_key, late_destructor), 0);
    quiesce();
    uint64_t pc0 = ta_pcache_bytes(c);
    ta_central_stats_t c0, c1;
    ta_central_stats(c, &c0);
    run_thread(late_thread, NULL);
    uint64_t pc1 = ta_pcache_bytes(c);
    cr_assert_eq(late_ok, 1, "malloc/free in a thread-exit destructor misbehaved (%d)", late_ok);
    if (!ta_fe_percpu)
        cr_assert_eq(pc1, pc0, "%lu bytes left in caches by an exited thread", (unsigned long)(pc1 - pc0));
    quiesce();
    ta_central_stats(c, &c1);
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes, "class %u: objects lost", c);
}

/* ---- many threads on one CPU, migrating threads, trims ------------------------------
 * Every block a worker holds is in a sharded set (a second owner is seen at
 * once) and carries a pattern from its address, size and owner, checked before
 * free.  Pinned workers share one CPU's slab and preempt each other; a
 * signaller interrupts them (an rseq sequence that takes a signal restarts);
 * migrating workers move between CPUs; the trimmer drains every CPU
 * (membarrier fences) and takes snapshots while they run. */
#define LIVE_SHARDS 1024
#define LIVE_SLOTS 64
typedef struct {
    pthread_mutex_t lock;
    uintptr_t slot[LIVE_SLOTS];
} live_shard_t;
static live_shard_t live[LIVE_SHARDS];

static live_shard_t *live_shard(const void *p) { return &live[set_hash((uintptr_t)p, 10)]; }
/* 0 added, 1 already live (handed out twice), 2 shard full */
static int live_add(const void *p) {
    live_shard_t *s = live_shard(p);
    int r = 2;
    pthread_mutex_lock(&s->lock);
    int free_i = -1;
    for (int i = 0; i < LIVE_SLOTS; i++) {
        if (s->slot[i] == (uintptr_t)p) {
            r = 1;
            break;
        }
        if (!s->slot[i] && free_i < 0) free_i = i;
    }
    if (r != 1 && free_i >= 0) {
        s->slot[free_i] = (uintptr_t)p;
        r = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}
static bool live_del(const void *p) {
    live_shard_t *s = live_shard(p);
    bool r = false;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < LIVE_SLOTS; i++)
        if (s->slot[i] == (uintptr_t)p) {
            s->slot[i] = 0;
            r = true;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    return r;
}

#define NPINNED 16
#define NMIGRATE 3
#define HOLD 48
typedef struct {
    int id;
    int pin_cpu;   /* >= 0: pinned there; -1: migrates */
    pthread_t tid;
    uint64_t ops, migrations;
    char err[200];
} worker_t;
static worker_t workers[NPINNED + NMIGRATE];
static volatile int stop_flag;
static uint64_t trims, snapshots, signals_sent;
static char trim_err[200];

/* Mostly a few small classes, so that the threads on one CPU keep working the
 * same headers; sometimes larger blocks. */
static size_t random_size(uint64_t *rng) {
    uint64_t r = tu_rand(rng) % 100;
    if (r < 80) return 16 * tu_rand_range(rng, 1, 4) - tu_rand_range(rng, 0, 15);
    if (r < 95) return tu_rand_range(rng, 65, 1024);
    return tu_rand_range(rng, 1025, 65536);
}

/* The pattern covers the first and last bytes of a block (the whole of it
 * when small): the checks must not take so long that preemption rarely
 * falls inside a restartable sequence. */
#define EDGE 48
static void fill_edges(void *p, size_t n, uint64_t seed) {
    uint64_t base = tu_pattern_base(p, n, seed);
    if (n <= 2 * EDGE) {
        tu_fill_base(p, n, base);
        return;
    }
    tu_fill_base(p, EDGE, base);
    tu_fill_base((char *)p + n - EDGE, EDGE, base ^ 1);
}
static size_t check_edges(const void *p, size_t n, uint64_t seed) {
    uint64_t base = tu_pattern_base(p, n, seed);
    if (n <= 2 * EDGE) return tu_check_base(p, n, base);
    size_t bad = tu_check_base(p, EDGE, base);
    if (bad != (size_t)-1) return bad;
    bad = tu_check_base((const char *)p + n - EDGE, EDGE, base ^ 1);
    return bad == (size_t)-1 ? bad : n - EDGE + bad;
}

static void *worker(void *arg) {
    worker_t *w = arg;
    int cpus[64];
    int ncpu = ncpu_allowed(cpus, 64);
    if (w->pin_cpu >= 0 && !pin(w->pin_cpu)) snprintf(w->err, sizeof w->err, "sched_setaffinity failed");
    uint64_t rng = (uint64_t)w->id * 7919 + 1;
    void *p[HOLD] = {0};
    size_t n[HOLD] = {0};
    uint64_t seed = (uint64_t)w->id << 32;
    while (!__atomic_load_n(&stop_flag, __ATOMIC_RELAXED) && !w->err[0]) {
        if (w->pin_cpu < 0 && ncpu > 1 && w->ops % 64 == 0) {
            int to = cpus[tu_rand(&rng) % (uint64_t)ncpu];
            if (pin(to)) w->migrations++;
        }
        int i = (int)(tu_rand(&rng) % HOLD);
        if (p[i]) {
            size_t bad = check_edges(p[i], n[i], seed);
            if (bad != (size_t)-1) {
                snprintf(w->err, sizeof w->err, "block %p (%zu bytes) corrupted at byte %zu", p[i], n[i], bad);
                break;
            }
            if (!live_del(p[i])) {
                snprintf(w->err, sizeof w->err, "block %p no longer in the live set", p[i]);
                break;
            }
            free(p[i]);
            p[i] = NULL;
        }
        size_t sz = random_size(&rng);
        bool zero = (tu_rand(&rng) & 15) == 0;
        unsigned char *q = zero ? calloc(1, sz) : malloc(sz);
        if (!q) {
            snprintf(w->err, sizeof w->err, "malloc(%zu) failed", sz);
            break;
        }
        int r = live_add(q);
        if (r == 1) {
            snprintf(w->err, sizeof w->err, "block %p handed out while another thread holds it", (void *)q);
            break;
        }
        if (r == 2) {
            snprintf(w->err, sizeof w->err, "live set shard full (test problem)");
            break;
        }
        if (zero && (q[0] || q[sz - 1] || q[sz / 2])) {
            snprintf(w->err, sizeof w->err, "calloc(1, %zu) gave %p not cleared", sz, (void *)q);
            break;
        }
        p[i] = q;
        n[i] = sz;
        fill_edges(q, sz, seed);
        __atomic_store_n(&w->ops, w->ops + 1, __ATOMIC_RELAXED); /* (read by the test's wait) */
    }
    for (int i = 0; i < HOLD; i++)
        if (p[i]) {
            if (!w->err[0] && check_edges(p[i], n[i], seed) != (size_t)-1)
                snprintf(w->err, sizeof w->err, "block %p corrupted (at the end)", p[i]);
            live_del(p[i]);
            free(p[i]);
        }
    return NULL;
}

static void *trimmer(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop_flag, __ATOMIC_RELAXED)) {
        malloc_trim(0);
        trims++;
        ta_pcache_drain_all();
        struct ta_stats st = TA_STATS_INIT;
        if (ta_stats_get(&st) != 0) {
            snprintf(trim_err, sizeof trim_err, "ta_stats_get failed");
            break;
        }
        snapshots++;
        uint64_t sum = st.inuse_bytes + st.thread_cache_bytes + st.central_bytes + st.span_free_bytes +
                       st.span_tail_bytes + st.pageheap_free_bytes + st.arena_bytes + st.metadata_bytes +
                       st.guard_bytes;
        if (st.mapped_bytes - st.released_bytes != sum) {
            snprintf(trim_err, sizeof trim_err, "stats identity broken: mapped-released %lu, parts %lu",
                     (unsigned long)(st.mapped_bytes - st.released_bytes), (unsigned long)sum);
            break;
        }
        tu_sleep_ms(1);
    }
    return NULL;
}

static uint64_t thread_caches_now(void);

static void on_usr1(int sig) { (void)sig; }

static void *signaller(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop_flag, __ATOMIC_RELAXED)) {
        for (int i = 0; i < NPINNED + NMIGRATE; i++) {
            pthread_kill(workers[i].tid, SIGUSR1);
            signals_sent++;
        }
        usleep(200);
    }
    return NULL;
}

Test(pcache, threads_on_one_cpu_migrations_and_trims) {
    ta_pcache_flush_current(); /* what the other threads' caches hold, before */
    const uint64_t others_before = ta_pcache_bytes(0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    for (int i = 0; i < LIVE_SHARDS; i++) pthread_mutex_init(&live[i].lock, NULL);
    int cpu0 = first_cpu();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 << 10);
    stop_flag = 0;
    for (int i = 0; i < NPINNED + NMIGRATE; i++) {
        workers[i].id = i;
        workers[i].pin_cpu = i < NPINNED ? cpu0 : -1;
        cr_assert_eq(pthread_create(&workers[i].tid, &attr, worker, &workers[i]), 0);
    }
    pthread_t tt, ts;
    cr_assert_eq(pthread_create(&tt, &attr, trimmer, NULL), 0);
    cr_assert_eq(pthread_create(&ts, &attr, signaller, NULL), 0);
    tu_sleep_ms(3000);
    /* every worker gets to run before the end, however loaded the machine (CI
     * runs other tests next to this one: once a worker had not been scheduled
     * at all in 3 s); up to 30 s more */
    for (int waited = 0; waited < 30000; waited += 10) {
        bool all_ran = true;
        for (int i = 0; i < NPINNED + NMIGRATE; i++)
            all_ran &= __atomic_load_n(&workers[i].ops, __ATOMIC_RELAXED) > 0 || __atomic_load_n(&workers[i].err[0], __ATOMIC_RELAXED);
        if (all_ran) break;
        tu_sleep_ms(10);
    }
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < NPINNED + NMIGRATE; i++) pthread_join(workers[i].tid, NULL);
    pthread_join(tt, NULL);
    pthread_join(ts, NULL);
    pthread_attr_destroy(&attr);
    signal(SIGUSR1, SIG_DFL);

    uint64_t ops = 0, migrations = 0;
    for (int i = 0; i < NPINNED + NMIGRATE; i++) {
        cr_assert_eq(workers[i].err[0], 0, "worker %d (%s): %s", i, workers[i].pin_cpu >= 0 ? "pinned" : "migrating",
                     workers[i].err);
        cr_assert_gt(workers[i].ops, 0u, "worker %d never ran", i);
        ops += workers[i].ops;
        migrations += workers[i].migrations;
    }
    cr_assert_eq(trim_err[0], 0, "%s", trim_err);
    cr_assert_gt(trims, 0u);
    cr_log_info("%lu operations, %lu migrations, %lu trims, %lu snapshots, %lu signals", (unsigned long)ops,
                (unsigned long)migrations, (unsigned long)trims, (unsigned long)snapshots, (unsigned long)signals_sent);
    /* everything quiet: every cache is well formed, no object cached twice */
    slab_seen_clear();
    if (ta_fe_percpu) {
        for (long i = 0; i < ncpus_conf(); i++) {
            const char *e = check_slab(cpu_slab((int)i));
            cr_assert_null(e, "CPU %ld: %s", i, e);
        }
    } else {
        const char *e = check_slab(ta_tls.slab);
        cr_assert_null(e, "%s", e);
    }
    for (int i = 0; i < LIVE_SHARDS; i++)
        for (int j = 0; j < LIVE_SLOTS; j++) cr_assert_eq(live[i].slot[j], 0u, "a block was never freed");
    /* and all of it comes back, but what the caches of threads from before
     * the test hold (the runner's: after the switch to per-CPU caches, only
     * its thread empties a thread cache) */
    malloc_trim(0);
    if (ta_fe_percpu)
        cr_assert_leq(ta_pcache_bytes(0), others_before, "%lu bytes in tier 1 after malloc_trim (%lu thread caches), %lu before",
                      (unsigned long)ta_pcache_bytes(0), (unsigned long)thread_caches_now(), (unsigned long)others_before);
}

/* ---- auto mode: per-thread caches, then per-CPU ones ---------------------------------
 * The default: a process starts with caches that follow its threads and
 * switches to per-CPU caches, for good, once it has more than percpu_threads
 * threads with a cache.  The threads below keep allocating, writing, checking
 * and freeing blocks of many classes while the switch happens under them
 * (each empties its own cache on its next slow path, or at its exit): no
 * block may be handed out twice or lose its contents, and nothing may stay
 * behind in the retired thread caches. */
static volatile int sw_stop, sw_started;
static char sw_error[160];

static void *switch_churn(void *arg) {
    uint64_t seed = (uint64_t)(uintptr_t)arg, rng = seed * 7919 + 1;
    enum { K = 96 };
    void *p[K] = {0};
    size_t sz[K];
    bool started = false;
    for (unsigned long n = 0; !__atomic_load_n(&sw_stop, __ATOMIC_RELAXED) || n < 2000; n++) {
        int i = (int)tu_rand_range(&rng, 0, K - 1);
        if (p[i]) {
            if (tu_check(p[i], sz[i], seed) != (size_t)-1)
                snprintf(sw_error, sizeof sw_error, "thread %lu: a block of %zu bytes changed", (unsigned long)seed, sz[i]);
            free(p[i]);
        }
        sz[i] = tu_rand_range(&rng, 1, 3000);
        p[i] = malloc(sz[i]);
        if (!p[i]) {
            snprintf(sw_error, sizeof sw_error, "malloc(%zu) failed", sz[i]);
            break;
        }
        tu_fill(p[i], sz[i], seed);
        if (!started && n == 200) {
            started = true;
            __atomic_add_fetch(&sw_started, 1, __ATOMIC_RELAXED);
        }
    }
    for (int i = 0; i < K; i++) {
        if (p[i] && tu_check(p[i], sz[i], seed) != (size_t)-1)
            snprintf(sw_error, sizeof sw_error, "thread %lu: a block changed before its last free", (unsigned long)seed);
        free(p[i]);
    }
    return NULL;
}

static uint64_t thread_caches_now(void) {
    ta_pcache_stats_t st;
    ta_pcache_lock_all(false);
    ta_pcache_stats_locked(&st);
    ta_pcache_unlock_all(false);
    return st.thread_caches;
}

/* Start n churning threads (t[first..first+n)) and wait until they run. */
static void start_churn(pthread_t *t, int first, int n) {
    for (int i = first; i < first + n; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, switch_churn, (void *)(uintptr_t)(i + 1)), 0);
    while (__atomic_load_n(&sw_started, __ATOMIC_RELAXED) < first + n) sched_yield();
}

#define NEED_AUTO()                                                                               \
    do {                                                                                          \
        if (ta_cfg.percpu != TA_PERCPU_AUTO || !ta_fe.guarded || ta_fe_percpu)                    \
            cr_skip_test("auto mode only, where rseq works (this run: TIERALLOC_PERCPU=%d)", ta_cfg.percpu); \
    } while (0)

Test(pcache, auto_mode_switches_to_cpu_caches_past_its_thread_limit) {
    NEED_AUTO();
    free(malloc(100)); /* this thread's cache */
    struct ta_stats st0 = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&st0), 0);
    /* (the test runner's and the background thread may have one too) */
    const uint64_t others = thread_caches_now();
    cr_assert_lt(others, ta_cfg.percpu_threads);
    ta_pcache_flush_current(); /* what the others (not this thread) hold */
    const uint64_t others_bytes = ta_pcache_bytes(0);
    const int below = (int)(ta_cfg.percpu_threads - others), over = 8;
    static pthread_t t[256];
    cr_assert_leq(below + over, 256);
    start_churn(t, 0, below);
    uint64_t before = thread_caches_now();
    cr_assert_not(ta_fe_percpu, "switched with %lu thread caches, the limit is %u", (unsigned long)before,
                  ta_cfg.percpu_threads);
    cr_assert_eq(before, others + (uint64_t)below, "%lu thread caches for %lu threads", (unsigned long)before,
                 (unsigned long)(others + (uint64_t)below));
    start_churn(t, below, over);
    cr_assert(ta_fe_percpu, "no switch with %lu threads", (unsigned long)(others + (uint64_t)(below + over)));
    tu_sleep_ms(100); /* the threads go on, now on the CPUs' caches */
    __atomic_store_n(&sw_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < below + over; i++) pthread_join(t[i], NULL);
    cr_assert_eq(sw_error[0], 0, "%s", sw_error);
    /* the threads emptied theirs at their exit, this one at malloc_trim; the
     * runner's threads (others - 1) empty theirs on their next slow path */
    free(malloc(100));
    malloc_trim(0);
    cr_assert_leq(thread_caches_now(), others - 1, "%lu thread caches left after the switch, %lu before",
                  (unsigned long)thread_caches_now(), (unsigned long)others);
    /* nothing was stranded in a retired cache: the drain empties tier 1 */
    cr_assert_leq(ta_pcache_bytes(0), others_bytes, "%lu bytes left in tier 1 after malloc_trim (the runner's threads: %lu)",
                  (unsigned long)ta_pcache_bytes(0), (unsigned long)others_bytes);
    struct ta_stats st = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&st), 0);
    uint64_t held = st.inuse_bytes + st.thread_cache_bytes + st.central_bytes + st.span_free_bytes +
                    st.span_tail_bytes + st.pageheap_free_bytes + st.arena_bytes + st.metadata_bytes + st.guard_bytes;
    cr_assert_eq(held, st.mapped_bytes - st.released_bytes, "the statistics' identity is broken after the switch");
    /* the threads freed all they allocated: an object lost in a retired cache
     * would count as in use */
    cr_log_info("small blocks in use: %lu bytes before the threads, %lu after", (unsigned long)st0.small_inuse_bytes,
                (unsigned long)st.small_inuse_bytes);
    cr_assert_leq(st.small_inuse_bytes, st0.small_inuse_bytes + 4096, "%lu bytes of small blocks more in use after the switch",
                  (unsigned long)(st.small_inuse_bytes - st0.small_inuse_bytes));
    for (uint32_t c = 1; c < st.nclasses; c++) { /* every object of every span is somewhere counted */
        const struct ta_class_stats *k = &st.cls[c];
        cr_assert_eq(k->spans * k->span_bytes,
                     (k->inuse_objects + k->cache_objects + k->central_objects + k->span_free_objects) * k->size +
                         k->tail_bytes,
                     "class %u does not add up after the switch", c);
    }
}

/* A child of fork inherits the parent's thread caches; those of the parent's
 * other threads have no thread in the child (one may have been halfway
 * through a slow path).  The child's own switch must neither wait for their
 * locks nor touch them. */
static void switch_in_child(void *arg) {
    (void)arg;
    static pthread_t t[256];
    int n = (int)ta_cfg.percpu_threads + 8;
    /* the parent's other threads' caches, orphans here, and what they hold */
    ta_pcache_flush_current();
    const uint64_t orphans = thread_caches_now() - 1, orphan_bytes = ta_pcache_bytes(0);
    __atomic_store_n(&sw_stop, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&sw_started, 0, __ATOMIC_RELAXED);
    start_churn(t, 0, n);
    bool switched = ta_fe_percpu;
    __atomic_store_n(&sw_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    if (!switched || sw_error[0]) {
        fprintf(stderr, "child: %s\n", sw_error[0] ? sw_error : "no switch");
        _exit(3);
    }
    /* the switch emptied every thread cache but the orphans (it could fence
     * the child's CPUs: its membarrier registration is its own), and
     * malloc_trim empties the CPUs' caches */
    free(malloc(100));
    malloc_trim(0);
    if (thread_caches_now() != orphans || ta_pcache_bytes(0) != orphan_bytes) {
        fprintf(stderr, "child: %lu thread caches (orphans %lu), %lu bytes in tier 1 after malloc_trim (orphans' %lu)\n",
                (unsigned long)thread_caches_now(), (unsigned long)orphans, (unsigned long)ta_pcache_bytes(0),
                (unsigned long)orphan_bytes);
        _exit(4);
    }
}

Test(pcache, auto_mode_switch_in_a_child_of_fork) {
    NEED_AUTO();
    static pthread_t t[4];
    /* threads busy in their slow paths as the fork happens, not so many that
     * the parent itself switches */
    const uint64_t others = thread_caches_now();
    const uint64_t room = ta_cfg.percpu_threads > others + 1 ? ta_cfg.percpu_threads - others - 1 : 0;
    const int k = room < 4 ? (int)room : 4;
    start_churn(t, 0, k);
    for (int round = 0; round < 3; round++) {
        tu_child_t c;
        tu_run_child(switch_in_child, NULL, 60000, &c);
        cr_assert_not(c.timed_out, "the child hung (round %d)", round);
        cr_assert(c.exited && c.exit_code == 0, "round %d: child exit %d signal %d: %s", round, c.exit_code, c.signal,
                  c.err);
    }
    cr_assert_not(ta_fe_percpu, "the parent switched with %d threads", k + 1);
    __atomic_store_n(&sw_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < k; i++) pthread_join(t[i], NULL);
    cr_assert_eq(sw_error[0], 0, "%s", sw_error);
}

/* A thread whose cache dates from before the switch and whose next slow
 * path after it is the sampling one (which only counts it among its CPU's
 * users) still retires that cache at its exit: the sampling path must not
 * take the exit destructor's key from it. */
static int late_ready, late_go;
static void *late_sampler(void *arg) {
    (void)arg;
    free(malloc(100)); /* its thread cache */
    __atomic_store_n(&late_ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&late_go, __ATOMIC_ACQUIRE)) sched_yield();
    ta_pcache_note_user(); /* what malloc's sampling slow path calls after the switch */
    return NULL;
}

static void late_sampler_child(void *arg) {
    (void)arg;
    static pthread_t t[256];
    int n = (int)ta_cfg.percpu_threads + 8;
    ta_pcache_flush_current();
    const uint64_t orphans = thread_caches_now() - 1;
    pthread_t late;
    if (pthread_create(&late, NULL, late_sampler, NULL)) _exit(5);
    while (!__atomic_load_n(&late_ready, __ATOMIC_ACQUIRE)) sched_yield();
    __atomic_store_n(&sw_stop, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&sw_started, 0, __ATOMIC_RELAXED);
    start_churn(t, 0, n);
    __atomic_store_n(&sw_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    if (!ta_fe_percpu) {
        fprintf(stderr, "child: no switch\n");
        _exit(3);
    }
    __atomic_store_n(&late_go, 1, __ATOMIC_RELEASE);
    pthread_join(late, NULL);
    free(malloc(100));
    malloc_trim(0);
    if (thread_caches_now() != orphans) {
        fprintf(stderr, "child: %lu thread caches after malloc_trim, orphans %lu\n", (unsigned long)thread_caches_now(),
                (unsigned long)orphans);
        _exit(4);
    }
}

Test(pcache, a_thread_cache_is_retired_at_exit_after_a_sampling_slow_path) {
    NEED_AUTO();
    tu_child_t c;
    tu_run_child(late_sampler_child, NULL, 60000, &c);
    cr_assert_not(c.timed_out, "the child hung");
    cr_assert(c.exited && c.exit_code == 0, "child exit %d signal %d: %s", c.exit_code, c.signal, c.err);
}

/* ---- 2000 threads: caches scale with CPUs, not threads ---------------------------- */
#define MANY 2000
static pthread_barrier_t many_done, many_exit;
static volatile int many_failed;

static void *churn_1mib(void *arg) {
    uint64_t rng = (uint64_t)(uintptr_t)arg * 31 + 5;
    enum { K = 512 };
    void *p[K];
    size_t total = 0;
    while (total < ((size_t)1 << 20)) {
        int k = 0;
        for (; k < K && total < ((size_t)1 << 20); k++) {
            size_t sz = tu_rand_range(&rng, 16, 4096);
            p[k] = malloc(sz);
            if (!p[k]) {
                many_failed = 1;
                break;
            }
            *(volatile char *)p[k] = 1;
            total += sz;
        }
        for (int i = 0; i < k; i++) free(p[i]);
        if (many_failed) break;
    }
    pthread_barrier_wait(&many_done);
    pthread_barrier_wait(&many_exit); /* wait, holding whatever a thread holds */
    return NULL;
}

Test(pcache, two_thousand_threads_hold_at_most_2mib_per_cpu, .timeout = 120) {
    if (!ta_fe_percpu && !(ta_cfg.percpu == TA_PERCPU_AUTO && ta_fe.guarded))
        cr_skip_test("per-CPU caches only (this run: per thread)");
    static pthread_t t[MANY];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 << 10);
    cr_assert_eq(pthread_barrier_init(&many_done, NULL, MANY + 1), 0);
    cr_assert_eq(pthread_barrier_init(&many_exit, NULL, MANY + 1), 0);
    /* spread over the CPUs, as a program's thousands of threads are: left to
     * the scheduler, a CPU that a busy thread (here the creating one) keeps
     * may see fewer than CPU_USERS threads, and rightly borrows
     * budget beyond its base */
    static int use[CPU_SETSIZE];
    int nuse = ncpu_allowed(use, CPU_SETSIZE);
    cr_assert_gt(nuse, 0, "sched_getaffinity failed");
    int made = 0;
    for (; made < MANY; made++) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(use[made % nuse], &one);
        pthread_attr_setaffinity_np(&attr, sizeof one, &one);
        if (pthread_create(&t[made], &attr, churn_1mib, (void *)(uintptr_t)made) != 0) break;
    }
    cr_assert_eq(made, MANY, "only %d threads could be created", made);
    pthread_barrier_wait(&many_done);
    uint64_t in_tier1 = ta_pcache_bytes(0);
    struct ta_stats st = TA_STATS_INIT;
    ta_stats_get(&st);
    uint64_t worst = 0;
    long worst_cpu = -1, n = ncpus_conf();
    for (long i = 0; i < n; i++) {
        uint64_t b = slab_bytes(cpu_slab((int)i), false);
        if (b > worst) worst = b, worst_cpu = i;
    }
    pthread_barrier_wait(&many_exit);
    for (int i = 0; i < made; i++) pthread_join(t[i], NULL);
    pthread_attr_destroy(&attr);
    cr_assert_not(many_failed, "a malloc failed");
    cr_assert(ta_fe_percpu, "2000 threads and still per-thread caches");
    cr_log_info("2000 idle threads: tier 1 holds %lu bytes (%ld CPUs), the fullest CPU %lu; ta_stats_get: "
                "%lu bytes in caches, %lu caches", (unsigned long)in_tier1, n, (unsigned long)worst,
                (unsigned long)st.thread_cache_bytes, (unsigned long)st.threads);
    cr_assert_leq(in_tier1, (uint64_t)n * (2u << 20), "tier 1 holds %lu bytes for %ld CPUs", (unsigned long)in_tier1, n);
    cr_assert_leq(st.thread_cache_bytes, (uint64_t)n * (2u << 20), "ta_stats_get: %lu bytes in caches",
                  (unsigned long)st.thread_cache_bytes);
    cr_assert_leq(worst, (uint64_t)2 << 20, "CPU %ld holds %lu bytes", worst_cpu, (unsigned long)worst);
    cr_assert_leq(worst, ta_cfg.cpu_cache_bytes, "CPU %ld holds %lu bytes, over its budget", worst_cpu,
                  (unsigned long)worst);
    /* one per CPU, and the caches of threads from before the switch that have
     * not taken a slow path since (this one's, the runner's): no new ones */
    cr_assert_leq(st.threads, (uint64_t)n + ta_cfg.percpu_threads, "%lu caches for %ld CPUs", (unsigned long)st.threads, n);
}

/* ---- misuse: object state bytes ------------------------------------------------------
 * Each runs in a child (tu_expect_abort): the child reports the address it
 * passes to the bad free; the parent checks for SIGABRT and a one-line
 * diagnostic naming it. */
static void double_free_cached(void *arg) {
    (void)arg;
    void *p = malloc(40);
    free(p);
    report(p);
    free(p);
    shared->reached_end = 1;
}
Test(pcache, double_free_of_a_cached_block_aborts) {
    tu_expect_abort(double_free_cached, "double free", 1);
}

static void double_free_overflow(void *arg) {
    (void)arg;
    /* more than the cache holds: most go on to central and to their spans */
    enum { N = 5000 };
    static void *p[N];
    for (int i = 0; i < N; i++) p[i] = malloc(40);
    /* the block freed twice, told from a sampled one while live, and a
     * neighbour in its page that stays live: its span stays in use (the
     * caller's spans are its own, so all of them would go back to the page
     * heap, and a free of a page there is another diagnostic) */
    int k = 0, keep = 1;
    while (sampled(p[k])) k++;
    while (keep < N && (keep == k || sampled(p[keep]) || (uintptr_t)p[keep] >> TA_PAGE_SHIFT != (uintptr_t)p[k] >> TA_PAGE_SHIFT))
        keep++;
    for (int i = 0; i < N; i++)
        if (i != keep) free(p[i]);
    ta_pcache_flush_current();
    ta_pcache_drain_all();
    ta_central_drain();
    report(p[k]);
    free(p[k]);
    shared->reached_end = 1;
}
Test(pcache, double_free_after_overflow_aborts) {
    tu_expect_abort(double_free_overflow, "double free", 1);
}

static void double_free_in_transfer_cache(void *arg) {
    (void)arg;
    enum { N = 3000 };
    static void *p[N];
    for (int i = 0; i < N; i++) p[i] = malloc(96);
    int k = 0;
    while (sampled(p[k])) k++; /* (while live: a freed block's page may have gone back) */
    for (int i = 0; i < N; i++) free(p[i]);
    report(p[k]);
    free(p[k]);
    shared->reached_end = 1;
}
Test(pcache, double_free_anywhere_after_many_frees_aborts) {
    tu_expect_abort(double_free_in_transfer_cache, "double free", 1);
}

/* A block freed on a CPU of another shard waits in that CPU's outbox, FREE:
 * a second free there is seen at once. */
static int df_cpu0, df_cpu1;
static void double_free_in_outbox(void *arg) {
    (void)arg;
    pin(df_cpu0);
    void *p = malloc(200);
    while (sampled(p) || ta_states_shard(ta_state_of(p, ta_size_to_class(200))) != (uint32_t)df_cpu0 % ta_central_shards())
        p = malloc(200);
    pin(df_cpu1);
    free(p);
    report(p);
    free(p);
    shared->reached_end = 1;
}
Test(pcache, double_free_of_a_block_in_an_outbox_aborts) {
    NEED_PERCPU();
    if (!two_shards(&df_cpu0, &df_cpu1)) cr_skip_test("needs two allowed CPUs of different central shards");
    tu_expect_abort(double_free_in_outbox, "double free", 1);
}

/* An object of a live span that tieralloc never handed to the program: the
 * last object of a fresh span (a class nothing else uses, one block taken). */
static void free_never_handed_out(void *arg) {
    (void)arg;
    const size_t sz = 2600;
    const uint32_t c = ta_size_to_class(sz);
    void *p = malloc(sz);
    while (sampled(p)) p = malloc(sz);
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    char *last = (char *)ta_span_addr(s) + (size_t)(ta_class[c].objects - 1) * ta_class[c].size;
    if (last == p) last = (char *)ta_span_addr(s);
    report(last);
    free(last);
    shared->reached_end = 1;
}
Test(pcache, free_of_an_object_never_handed_out_aborts) {
    tu_expect_abort(free_never_handed_out, NULL, 1);
}

/* the first address past the last object of a span (its tail) */
static void free_span_tail(void *arg) {
    (void)arg;
    uint32_t c = 1;
    for (uint32_t k = ta_nclasses - 1; k > 0; k--)
        if (ta_class[k].size >= 1024 &&
            ((size_t)ta_class[k].pages << TA_PAGE_SHIFT) > (size_t)ta_class[k].objects * ta_class[k].size) {
            c = k;
            break;
        }
    void *p = malloc(ta_class[c].size);
    while (sampled(p)) p = malloc(ta_class[c].size);
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    char *q = (char *)ta_span_addr(s) + (size_t)ta_class[c].objects * ta_class[c].size;
    report(q);
    free(q);
    shared->reached_end = 1;
}
Test(pcache, free_in_a_span_tail_aborts) {
    tu_expect_abort(free_span_tail, "never returned", 1);
}
