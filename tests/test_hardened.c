/* test_hardened.c: the hardened build's features (./configure --enable-hardened):
 * guard pages after spans, shuffled fresh spans, the quarantine of freed small
 * blocks.  This binary links libtieralloc_hardened.la, a copy of the allocator
 * compiled with TA_HARDENED whatever configure said, so every make check runs
 * these; tests/test_hardened_perthread.sh runs them again with per-thread
 * caches.  Each misuse runs in a forked child: overflows must end in SIGSEGV
 * at the guard page, writes after free in the one-line diagnostic. */
#include "testutil.h"

#include <malloc.h>
#include <pthread.h>

#include "tieralloc.h"

#define PAGE 8192

static void snap(struct ta_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    cr_assert_eq(ta_stats_get(st), 0);
}

/* the class whose blocks are exactly size bytes (0 if none) */
static uint32_t class_of_size(const struct ta_stats *st, uint64_t size) {
    for (uint32_t c = 1; c < st->nclasses; c++)
        if (st->cls[c].size == size) return c;
    return 0;
}

/* Run fn in a child: it must die of SIGSEGV; shared->result is what it wrote
 * before (how far it got). */
static void expect_segv(void (*fn)(void *), const char *what) {
    tu_shared_reset();
    static tu_child_t c;
    tu_run_child(fn, NULL, 30000, &c);
    cr_assert(!c.timed_out, "%s: %s", what, tu_describe(&c));
    cr_assert(c.signaled && c.signal == SIGSEGV, "%s: expected SIGSEGV: %s", what, tu_describe(&c));
    cr_assert_not(shared->reached_end, "%s: the child went on past the block", what);
}

/* ---- guard pages ------------------------------------------------------------ */
/* Every usable byte of a large block can be written; the first byte past
 * malloc_usable_size faults. */
static void large_overflow(void *arg) {
    (void)arg;
    size_t n = (300 << 10) + 100;
    volatile char *p = tu_hide(malloc(n));
    size_t usable = malloc_usable_size((void *)p);
    if (!p || usable < n || usable - n >= PAGE) _exit(3); /* the block ends within a page of n */
    memset((void *)p, 1, usable);
    shared->result = usable;
    p[usable] = 2; /* the guard page */
    shared->reached_end = 1;
}

Test(hardened, overflow_past_a_large_block_faults) {
    expect_segv(large_overflow, "malloc(300 KiB + 100)");
    cr_assert_gt(shared->result, (size_t)300 << 10, "the block itself was not writable");
}

/* The same after realloc grew the block in place and shrank it: the guard
 * moves with the end of the span. */
static void realloc_overflow(void *arg) {
    (void)arg;
    char *p = tu_hide(malloc(300 << 10));
    memset(p, 1, 300 << 10);
    for (size_t n = 400 << 10; n <= (4 << 20); n += 300 << 10) {
        p = tu_hide(realloc(p, n));
        if (!p) _exit(3);
        memset(p, 1, malloc_usable_size(p));
    }
    p = tu_hide(realloc(p, 1 << 20)); /* shrinks in place: the tail goes back */
    size_t usable = malloc_usable_size(p);
    memset(p, 1, usable);
    shared->result = usable;
    ((volatile char *)p)[usable] = 2;
    shared->reached_end = 1;
}

Test(hardened, overflow_after_realloc_in_place_faults) {
    expect_segv(realloc_overflow, "realloc grown and shrunk");
    cr_assert_geq(shared->result, (size_t)1 << 20);
}

/* Writing forward from a small block runs through the rest of its span (one
 * page for 64-byte blocks) and faults at the span's end, not in the next span. */
static void small_overflow(void *arg) {
    (void)arg;
    volatile char *p = tu_hide(malloc(64));
    shared->addr = (uintptr_t)p;
    for (size_t i = 0; i < 4 * PAGE; i++) {
        shared->result = i;
        p[i] = 0x55;
    }
    shared->reached_end = 1;
}

Test(hardened, overflow_off_a_small_span_faults_at_its_end) {
    struct ta_stats st;
    free(tu_hide(malloc(64)));
    snap(&st);
    uint32_t c = class_of_size(&st, 64);
    cr_assert(c && st.cls[c].span_bytes == PAGE, "64-byte blocks are expected in one-page spans");
    expect_segv(small_overflow, "writing past a 64-byte block");
    /* it faulted on the first byte past the span: the guard page is right there */
    size_t to_end = PAGE - shared->addr % PAGE;
    cr_assert_eq(shared->result, to_end, "faulted %zu bytes past the block, its span ends %zu past it",
                 (size_t)shared->result, to_end);
}

/* ---- shuffled fresh spans --------------------------------------------------- */
Test(hardened, consecutive_mallocs_of_a_fresh_span_are_not_neighbours) {
    enum { N = 64, SIZE = 208 }; /* a class no other part of this test uses */
    char *p[N];
    for (int i = 0; i < N; i++) p[i] = tu_hide(malloc(SIZE));
    int neighbours = 0, ascending = 0, descending = 0;
    for (int i = 0; i + 1 < N; i++) {
        intptr_t d = p[i + 1] - p[i];
        neighbours += d == SIZE || d == -SIZE;
        ascending += d > 0;
        descending += d < 0;
    }
    /* carved in order they are all neighbours; shuffled over a span of ~39
     * objects, two in a row are neighbours with probability ~1/20 */
    cr_assert_lt(neighbours, N / 2, "%d of %d consecutive blocks are neighbours", neighbours, N - 1);
    cr_assert(ascending && descending, "addresses are monotonic (%d up, %d down)", ascending, descending);
    for (int i = 0; i < N; i++) free(p[i]);
}

/* ---- the quarantine ------------------------------------------------------------ */
Test(hardened, a_freed_block_is_not_handed_out_again_at_once) {
    enum { N = 1000 };
    static char *q[N];
    char *p = tu_hide(malloc(100));
    free(p);
    for (int i = 0; i < N; i++) {
        q[i] = tu_hide(malloc(100));
        cr_assert_neq(q[i], p, "the freed block came back after %d mallocs", i);
    }
    for (int i = 0; i < N; i++) free(q[i]);
}

Test(hardened, freed_blocks_are_filled) {
    unsigned char *p = tu_hide(malloc(96));
    memset(p, 0, 96);
    free(p);
    /* (reading a freed block: what a use after free would see) */
    unsigned char *v = tu_hide(p);
    for (int i = 0; i < 96; i++) cr_assert_eq(v[i], 0xdf, "byte %d is %#x", i, v[i]);
}

static void write_after_free_trim(void *arg) {
    (void)arg;
    char *p = tu_hide(malloc(64));
    report(p);
    free(p);
    ((volatile char *)p)[40] = 1;
    malloc_trim(0); /* drains the quarantine: p is checked */
    shared->reached_end = 1;
}

Test(hardened, a_write_after_free_is_caught_when_trim_drains_the_quarantine) {
    tu_expect_abort(write_after_free_trim, "write after free of", 1);
}

static void write_after_free_evicted(void *arg) {
    (void)arg;
    char *p = tu_hide(malloc(64));
    report(p);
    free(p);
    *(volatile uint64_t *)p = 0x4141414141414141ull; /* the word a free list would use */
    /* 256 KiB of later frees push p out */
    for (int i = 0; i < 20000; i++) free(tu_hide(malloc(64)));
    shared->reached_end = 1;
}

Test(hardened, a_write_after_free_is_caught_when_the_block_leaves_the_quarantine) {
    tu_expect_abort(write_after_free_evicted, "write after free of", 1);
}

static void double_free(void *arg) {
    (void)arg;
    char *p = tu_hide(malloc(64));
    report(p);
    free(p);
    free(p); /* p is in the quarantine, FREE by its state byte */
    shared->reached_end = 1;
}

Test(hardened, a_double_free_of_a_quarantined_block_is_caught) {
    tu_expect_abort(double_free, "double free of", 1);
}

static void usable_size_of_freed(void *arg) {
    (void)arg;
    char *p = tu_hide(malloc(64));
    report(p);
    free(p);
    shared->result = malloc_usable_size(p);
    shared->reached_end = 1;
}

Test(hardened, malloc_usable_size_of_a_quarantined_block_is_caught) {
    tu_expect_abort(usable_size_of_freed, "freed pointer", 1);
}

/* ---- statistics ---------------------------------------------------------------- */
static void check_identity(const struct ta_stats *s, const char *when) {
    uint64_t held = s->inuse_bytes + s->thread_cache_bytes + s->central_bytes + s->span_free_bytes +
                    s->span_tail_bytes + s->pageheap_free_bytes + s->arena_bytes + s->metadata_bytes +
                    s->guard_bytes;
    cr_assert_eq(held, s->mapped_bytes - s->released_bytes, "%s: identity broken: %llu != %llu - %llu", when,
                 (unsigned long long)held, (unsigned long long)s->mapped_bytes,
                 (unsigned long long)s->released_bytes);
    for (uint32_t c = 1; c < s->nclasses; c++) {
        const struct ta_class_stats *k = &s->cls[c];
        cr_assert_eq(k->spans * k->span_bytes,
                     (k->inuse_objects + k->cache_objects + k->central_objects + k->span_free_objects) * k->size +
                         k->tail_bytes,
                     "%s: class %u does not add up", when, c);
    }
    cr_assert_leq(s->quarantine_bytes, s->thread_cache_bytes, "%s", when);
}

Test(hardened, statistics_count_guards_and_the_quarantine) {
    enum { N = 400 };
    static void *v[N];
    struct ta_stats a, b, c;
    snap(&a);
    for (int i = 0; i < N; i++) v[i] = tu_hide(malloc(i % 10 == 0 ? (size_t)(300 << 10) : (size_t)(16 + i * 7)));
    snap(&b);
    check_identity(&b, "after mallocs");
    /* one guard page for every large block at least (and one per small span) */
    cr_assert_geq(b.guard_bytes - a.guard_bytes, (uint64_t)(N / 10) * PAGE);
    cr_assert_geq(b.large_inuse_bytes - a.large_inuse_bytes, (uint64_t)(N / 10) * (300 << 10));
    for (int i = 0; i < N; i++) free(v[i]);
    snap(&c);
    check_identity(&c, "after frees");
    cr_assert_gt(c.quarantine_bytes, 0, "freed blocks are in the quarantine");
    cr_assert_leq(c.guard_bytes, b.guard_bytes - (uint64_t)(N / 10) * PAGE, "guards of freed blocks stay counted");
    malloc_trim(0);
    snap(&c);
    check_identity(&c, "after malloc_trim");
    cr_assert_eq(c.quarantine_bytes, 0, "malloc_trim drains the quarantine");
}

/* ---- threads and fork ------------------------------------------------------------ */
static void *churn(void *arg) {
    uint64_t seed = (uintptr_t)arg;
    void *keep[64] = {0};
    for (int i = 0; i < 20000; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)(seed >> 58 & 63);
        free(keep[k]);
        size_t n = (seed >> 20) % 3000 + 1;
        keep[k] = malloc(n);
        if (!keep[k]) return (void *)1;
        memset(keep[k], (int)k, n);
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
    return NULL;
}

static void fork_child_work(void *arg) {
    (void)arg;
    if (churn((void *)7)) _exit(4);
    malloc_trim(0);
    struct ta_stats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    if (ta_stats_get(&s) || s.quarantine_bytes) _exit(5);
}

Test(hardened, threads_exit_and_fork_while_blocks_are_quarantined) {
    enum { T = 4 };
    pthread_t t[T];
    for (int round = 0; round < 3; round++) {
        for (uintptr_t i = 0; i < T; i++) cr_assert_eq(pthread_create(&t[i], NULL, churn, (void *)(i + 1)), 0);
        static tu_child_t c;
        tu_run_child(fork_child_work, NULL, 60000, &c); /* forked while the threads run */
        cr_assert(c.exited && c.exit_code == 0, "child: %s", tu_describe(&c));
        for (int i = 0; i < T; i++) {
            void *r;
            pthread_join(t[i], &r);
            cr_assert_null(r, "a thread's malloc failed");
        }
    }
    struct ta_stats s;
    snap(&s);
    check_identity(&s, "after the threads exited");
    malloc_trim(0);
    snap(&s);
    check_identity(&s, "after malloc_trim");
    cr_assert_eq(s.quarantine_bytes, 0);
}
