/* test_pcache.c: tier 1 (pcache.c and the inline fast paths in api.c).  A
 * thread's cache keeps what it frees and flushes on request; a thread that
 * exits gives its objects back and its cache is reused by the next thread;
 * lists grow when they keep missing, within the per-thread budget; freed
 * objects carry the guard word and malloc clears it.
 *
 * Work that needs a cache nobody else touched runs in a fresh thread that
 * reports back; the assertions run on the main thread. */
#include <criterion/criterion.h>
#include <unistd.h>
#include <criterion/redirect.h>

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

static void setup(void) {
    ta_ensure_init();
    ta_cfg.decay_ms = (uint64_t)1 << 40;
}
TestSuite(pcache, .init = setup, .timeout = 60);

/* for the tests that end in the allocator's abort() */
static void setup_quiet(void) {
    setup();
    cr_redirect_stderr();
}

static void run_thread(void *(*fn)(void *), void *arg) {
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
}

/* A small request served by a sampled allocation (sample.c) gets a page-heap
 * span of its own, with pagemap info 0: it never enters a cache list. */
static bool sampled(const void *p) { return ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT) == 0; }

/* Objects on the list, counted by walking it; -1 if it looks broken. */
static long list_length(const ta_list_t *l, uint32_t cls) {
    long n = 0;
    for (void *p = l->head; p; p = *(void **)p) {
        if ((ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT) & 0xff) != cls) return -1;
        if (++n > 1000000) return -1;
    }
    return n;
}

static bool on_list(const ta_list_t *l, const void *q) {
    for (void *p = l->head; p; p = *(void **)p)
        if (p == q) return true;
    return false;
}

Test(pcache, freed_objects_stay_in_the_thread_cache) {
    const size_t sz = 720;
    const uint32_t c = ta_size_to_class(sz);
    enum { N = 10 };
    void *p[N], *cached[N];
    int nc = 0;
    free(malloc(sz)); /* make sure this thread has a live cache */
    ta_pcache_flush_current();
    for (int i = 0; i < N; i++) p[i] = malloc(sz);
    uint64_t b0 = ta_pcache_bytes(c);
    for (int i = 0; i < N; i++) free(p[i]);
    uint64_t b1 = ta_pcache_bytes(c);
    for (int i = 0; i < N; i++)
        if (!sampled(p[i])) cached[nc++] = p[i];

    ta_pcache_t *pc = ta_tls_cache;
    cr_assert_eq(pc->state, TA_PC_LIVE);
    const ta_list_t *l = &pc->list[c];
    cr_assert_gt(nc, 0, "all %d blocks were sampled", N);
    cr_assert_gt(l->count, 0u);
    cr_assert_eq(list_length(l, c), (long)l->count, "list count %u, but %ld objects linked", l->count,
                 list_length(l, c));
    cr_assert_leq(l->count, l->max);
    for (int i = 0; i < nc; i++) cr_assert(on_list(l, cached[i]), "freed object %d is not in the cache", i);
    cr_assert_eq(b1 - b0, nc * (uint64_t)ta_class[c].size, "cache bytes grew by %lu for %d frees",
                 (unsigned long)(b1 - b0), nc);
    /* the next mallocs are served from the cache, most recent first */
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
        i--;
    }
    for (int i = 0; i < nc; i++) free(cached[i]);
    for (int i = 0; i < ne; i++) free(extra[i]);
}

Test(pcache, flush_current_empties_the_cache) {
    const size_t sizes[] = {24, 100, 720, 3000, 20000, 200000};
    enum { N = 40 };
    static void *p[6][N];
    for (int s = 0; s < 6; s++)
        for (int i = 0; i < N; i++) p[s][i] = malloc(sizes[s]);
    for (int s = 0; s < 6; s++)
        for (int i = 0; i < N; i++) free(p[s][i]);
    ta_pcache_t *pc = ta_tls_cache;
    uint64_t held = 0;
    for (uint32_t c = 1; c < ta_nclasses; c++) held += (uint64_t)pc->list[c].count * ta_class[c].size;
    uint64_t all0 = ta_pcache_bytes(0);
    ta_pcache_flush_current();
    uint64_t all1 = ta_pcache_bytes(0);

    cr_assert_gt(held, 0u, "the cache held nothing before the flush");
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        cr_assert_eq(pc->list[c].count, 0u, "class %u: %u objects left after flush", c, pc->list[c].count);
        cr_assert_null(pc->list[c].head, "class %u: list head left after flush", c);
    }
    cr_assert_eq(all0 - all1, held, "ta_pcache_bytes fell by %lu, the cache held %lu", (unsigned long)(all0 - all1),
                 (unsigned long)held);
    /* still a working cache afterwards */
    void *q = malloc(100);
    cr_assert_not_null(q);
    free(q);
    const ta_list_t *l = &pc->list[ta_size_to_class(100)];
    cr_assert_eq(list_length(l, ta_size_to_class(100)), (long)l->count);
    cr_assert(on_list(l, q));
}

/* ---- thread exit --------------------------------------------------------------- */
struct exit_report {
    size_t size;
    int nobj;
    ta_pcache_t *cache;
    uint32_t count_before_exit;
    uint64_t bytes_before_exit; /* ta_pcache_bytes(cls) seen by the thread */
};

static void *fill_and_exit(void *arg) {
    struct exit_report *r = arg;
    enum { MAXN = 600 };
    void *p[MAXN];
    int n = r->nobj < MAXN ? r->nobj : MAXN;
    for (int i = 0; i < n; i++) p[i] = malloc(r->size);
    for (int i = 0; i < n; i++) free(p[i]);
    uint32_t c = ta_size_to_class(r->size);
    r->cache = ta_tls_cache;
    r->count_before_exit = ta_tls_cache->list[c].count;
    r->bytes_before_exit = ta_pcache_bytes(c);
    return NULL;
}

Test(pcache, exiting_thread_gives_its_objects_back) {
    const size_t sz = 2600; /* a class nothing else here uses */
    const uint32_t c = ta_size_to_class(sz);
    ta_central_stats_t c0, c1;
    ta_pcache_flush_current();
    ta_central_drain();
    ta_central_stats(c, &c0);
    uint64_t pc0 = ta_pcache_bytes(c);
    struct exit_report r = {.size = sz, .nobj = 500};
    run_thread(fill_and_exit, &r);
    uint64_t pc1 = ta_pcache_bytes(c);
    ta_central_drain();
    ta_central_stats(c, &c1);

    cr_assert_gt(r.count_before_exit, 0u, "the thread's cache held nothing before exit");
    cr_assert_eq(r.bytes_before_exit - pc0, (uint64_t)r.count_before_exit * ta_class[c].size);
    cr_assert_eq(pc1, pc0, "%lu bytes of class %u still counted in caches after the thread exited",
                 (unsigned long)(pc1 - pc0), c);
    cr_assert_neq(r.cache->state, TA_PC_LIVE, "the dead thread's cache is still live");
    cr_assert_eq(r.cache->list[c].count, 0u, "the dead thread's cache still holds objects");
    /* every object is back in central: its spans are exactly as before */
    cr_assert_eq(c1.transfer_bytes, 0u);
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes, "class %u: %ld free bytes missing from central", c,
                 (long)(c0.span_free_bytes - c1.span_free_bytes));
}

/* A thread that only frees (blocks it got from another thread) has a cache too,
 * and it is flushed at exit. */
static void *free_only(void *arg) {
    void **p = arg;
    for (int i = 0; p[i]; i++) free(p[i]);
    return NULL;
}

Test(pcache, free_only_thread_flushes_at_exit) {
    const size_t sz = 3300;
    const uint32_t c = ta_size_to_class(sz);
    static void *p[301];
    ta_central_stats_t c0, c1;
    ta_pcache_flush_current();
    ta_central_drain();
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

/* Frees alone grow a list to one batch at most: a consumer thread flushes in
 * batches but does not hoard blocks it will never allocate again. */
static uint32_t consumer_max, consumer_count;
static void *free_only_report(void *arg) {
    void **p = arg;
    uint32_t c = ta_size_to_class(200);
    for (int i = 0; p[i]; i++) free(p[i]);
    consumer_max = ta_tls_cache->list[c].max;
    consumer_count = ta_tls_cache->list[c].count;
    return NULL;
}

Test(pcache, frees_alone_grow_a_list_to_one_batch) {
    const uint32_t c = ta_size_to_class(200), batch = ta_class[c].batch;
    static void *p[2001];
    for (int i = 0; i < 2000; i++) p[i] = malloc(200);
    p[2000] = NULL;
    run_thread(free_only_report, p);
    cr_assert_leq(consumer_max, batch, "a free-only list grew to %u (batch %u)", consumer_max, batch);
    cr_assert_leq(consumer_count, batch, "a free-only list held %u blocks (batch %u)", consumer_count, batch);
}

/* A list the thread stopped using halves once per decay period (on the
 * thread's own slow paths), and its capacity with it. */
Test(pcache, idle_lists_drain_over_decay_periods) {
    const uint32_t idle = ta_size_to_class(720), busy = ta_size_to_class(3000);
    static void *p[800];
    for (int i = 0; i < 400; i++) p[i] = malloc(720);
    for (int i = 0; i < 400; i++) free(p[i]);
    ta_list_t *l = &ta_tls_cache->list[idle];
    uint32_t held = l->count;
    cr_assert_gt(held, 16u, "the 720-byte list holds only %u blocks", held);
    uint64_t saved = ta_cfg.decay_ms;
    ta_cfg.decay_ms = 5;
    uint32_t seen[4];
    for (int period = 0; period < 4; period++) {
        usleep(20000); /* well past the 5 ms period, whatever the clock granularity */
        /* slow paths of another class: more 3000-byte blocks than its list
         * may hold, so there are refills and flushes */
        for (int i = 0; i < 800; i++) p[i] = malloc(3000);
        for (int i = 0; i < 800; i++) free(p[i]);
        seen[period] = l->count;
    }
    ta_cfg.decay_ms = saved;
    (void)busy;
    /* the first period only forgets that the list was in use (it missed while
     * it was being filled); each later one halves it */
    cr_assert_lt(seen[1], held, "no scavenge after two decay periods (%u -> %u)", held, seen[1]);
    cr_assert_lt(seen[3], seen[1], "the idle list stopped draining (%u -> %u)", seen[1], seen[3]);
    cr_assert_leq(seen[3], held / 4 + 1, "after four periods %u of %u blocks are left", seen[3], held);
    cr_assert_geq(l->max, l->count);
}

static void *touch_and_report(void *arg) {
    ta_pcache_t **out = arg;
    void *a = malloc(64), *b = malloc(1000);
    free(a);
    free(b);
    *out = ta_tls_cache;
    return NULL;
}

Test(pcache, thousand_threads_reuse_caches) {
    ta_pcache_t *first = NULL, *seen_caches[4] = {0};
    int distinct = 0;
    run_thread(touch_and_report, &first); /* warm up: one cache made and freed */
    uint64_t m0 = ta_meta_bytes();
    for (int i = 0; i < 1000; i++) {
        ta_pcache_t *c = NULL;
        run_thread(touch_and_report, &c);
        cr_assert_not_null(c);
        cr_assert_neq(c->state, TA_PC_LIVE, "thread %d: cache still live after join", i);
        bool known = false;
        for (int j = 0; j < distinct; j++) known |= seen_caches[j] == c;
        if (!known) {
            cr_assert_lt(distinct, 4, "thread %d got a new cache: exited threads' caches are not reused", i);
            seen_caches[distinct++] = c;
        }
    }
    uint64_t m1 = ta_meta_bytes();
    cr_assert_lt(m1 - m0, 100 * sizeof(ta_pcache_t) + ((uint64_t)1 << 20),
                 "metadata grew by %lu bytes over 1000 threads", (unsigned long)(m1 - m0));
    cr_assert(first == seen_caches[0], "the second thread did not reuse the first one's cache");
}

/* ---- list sizing ------------------------------------------------------------ */
struct growth_report {
    size_t size[8]; /* classes worked in turn; size[0] is the one watched */
    int nsizes, nobj, rounds;
    uint32_t max_first, max_last, max_seen;
    uint32_t max_end[8];            /* each class's list max at the end */
    uint64_t frees_missed_last;     /* frees that took the slow path in the last round */
    uint64_t miss_first, miss_last; /* alloc + free misses in a round */
    uint64_t worst_cache_bytes;     /* most the thread's cache held at any point checked */
    uint64_t worst_committed;       /* most sum(max * size) over classes */
    bool count_over_max;
};

static uint64_t cache_bytes(const ta_pcache_t *pc, bool committed) {
    uint64_t b = 0;
    for (uint32_t c = 1; c < ta_nclasses; c++)
        b += (uint64_t)(committed ? pc->list[c].max : pc->list[c].count) * ta_class[c].size;
    return b;
}

static void *grow_lists(void *arg) {
    struct growth_report *r = arg;
    const uint32_t c = ta_size_to_class(r->size[0]);
    void **p = calloc((size_t)r->nobj, sizeof *p);
    free(malloc(r->size[0]));
    ta_pcache_t *pc = ta_tls_cache;
    r->max_first = pc->list[c].max;
    for (int round = 0; round < r->rounds; round++) {
        uint64_t miss0 = pc->n_free_miss + pc->n_alloc_miss, free_miss0 = pc->n_free_miss;
        for (int k = 0; k < r->nsizes; k++) {
            uint32_t ck = ta_size_to_class(r->size[k]);
            for (int i = 0; i < r->nobj; i++) p[i] = malloc(r->size[k]);
            for (int i = 0; i < r->nobj; i++) {
                free(p[i]);
                /* (a list whose max is 0 is reported by the max_end check) */
                if (pc->list[ck].max && pc->list[ck].count > pc->list[ck].max) r->count_over_max = true;
            }
            uint64_t held = cache_bytes(pc, false), committed = cache_bytes(pc, true);
            if (held > r->worst_cache_bytes) r->worst_cache_bytes = held;
            if (committed > r->worst_committed) r->worst_committed = committed;
        }
        uint64_t misses = pc->n_free_miss + pc->n_alloc_miss - miss0;
        r->frees_missed_last = pc->n_free_miss - free_miss0;
        if (round == 0) r->miss_first = misses;
        r->miss_last = misses;
        if (pc->list[c].max > r->max_seen) r->max_seen = pc->list[c].max;
    }
    r->max_last = pc->list[c].max;
    for (int k = 0; k < r->nsizes; k++) r->max_end[k] = pc->list[ta_size_to_class(r->size[k])].max;
    free(p);
    return NULL;
}

Test(pcache, list_max_grows_on_misses) {
    struct growth_report r = {.size = {64}, .nsizes = 1, .nobj = 3000, .rounds = 30};
    run_thread(grow_lists, &r);
    cr_assert_geq(r.max_first, 1u, "a list that just missed has max 0");
    cr_assert_gt(r.max_last, r.max_first, "max stayed at %u through %d rounds of misses", r.max_first, r.rounds);
    cr_assert_not(r.count_over_max, "a list held more than its max");
    /* growing the list is what makes the working set stop missing */
    cr_assert_lt(r.miss_last, r.miss_first, "misses per round: first %lu, last %lu", (unsigned long)r.miss_first,
                 (unsigned long)r.miss_last);
    cr_assert_eq(r.miss_last, 0u, "a list that grew to fit the working set still misses");
}

/* six classes of 4..12 KiB, 600 blocks each per round: far more than one
 * thread may keep */
static struct growth_report six_classes(void) {
    struct growth_report r = {.size = {4096, 5120, 6144, 8192, 10240, 12288}, .nsizes = 6, .nobj = 600, .rounds = 8};
    run_thread(grow_lists, &r);
    return r;
}

Test(pcache, list_max_is_bounded_by_the_thread_budget) {
    struct growth_report r = six_classes();
    const uint64_t cap = ta_cfg.thread_cache_max;
    cr_assert_gt(r.max_last, r.max_first);
    cr_assert_not(r.count_over_max);
    cr_assert_leq((uint64_t)r.max_seen * 4096, cap, "max %u objects of 4 KiB exceeds the %lu-byte thread budget",
                  r.max_seen, (unsigned long)cap);
    cr_assert_leq(r.worst_committed, cap, "lists may hold %lu bytes, budget %lu", (unsigned long)r.worst_committed,
                  (unsigned long)cap);
    /* (a list the budget refused to grow may still keep the one block just freed) */
    uint64_t slack = 0;
    for (int k = 0; k < r.nsizes; k++) slack += ta_class[ta_size_to_class(r.size[k])].size;
    cr_assert_leq(r.worst_cache_bytes, cap + slack, "the cache held %lu bytes, budget %lu",
                  (unsigned long)r.worst_cache_bytes, (unsigned long)cap);
    /* and the budget is used: the lists together hold a good part of it */
    cr_assert_geq(r.worst_cache_bytes, cap / 4, "the cache never held more than %lu bytes",
                  (unsigned long)r.worst_cache_bytes);
}

/* Every class in steady use gets room in the cache: capacity moves to the
 * lists that keep missing instead of staying with the first ones to grow. */
Test(pcache, budget_moves_to_the_lists_in_use) {
    struct growth_report r = six_classes();
    for (int k = 0; k < r.nsizes; k++)
        cr_assert_gt(r.max_end[k], 0u,
                     "class of %zu B still has list max 0 after %d rounds of %d misses "
                     "(the budget stayed with the classes used first)",
                     r.size[k], r.rounds, r.nobj);
    cr_assert_lt(r.frees_missed_last, (uint64_t)r.nsizes * r.nobj / 4,
                 "%lu of %d frees in the last round took the slow path", (unsigned long)r.frees_missed_last,
                 r.nsizes * r.nobj);
}

/* Threads that filled their caches and then went idle must not leave a busy
 * thread without any cache: capacity moves from idle caches to busy ones. */
static pthread_barrier_t hogs_filled, hogs_release;

static void *hog(void *arg) {
    (void)arg;
    struct growth_report r = {.size = {4096, 5120, 6144, 8192, 10240, 12288}, .nsizes = 6, .nobj = 600, .rounds = 3};
    grow_lists(&r);
    pthread_barrier_wait(&hogs_filled);
    pthread_barrier_wait(&hogs_release); /* idle, cache full, until the busy thread is done */
    return NULL;
}

struct busy_report {
    uint32_t max;
    uint64_t frees, free_misses;
};

static void *busy(void *arg) {
    struct busy_report *r = arg;
    enum { N = 500 };
    void *p[N];
    const uint32_t c = ta_size_to_class(64);
    ta_pcache_t *pc = NULL;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < N; i++) p[i] = malloc(64);
        pc = ta_tls_cache;
        for (int i = 0; i < N; i++) free(p[i]);
    }
    r->max = pc->list[c].max;
    r->frees = 20 * N;
    r->free_misses = pc->n_free_miss;
    return NULL;
}

Test(pcache, idle_threads_do_not_starve_a_busy_one) {
    enum { HOGS = 3 };
    pthread_t h[HOGS];
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
    cr_assert_gt(r.max, 0u, "the busy thread's 64-byte list has max 0: %d idle threads hold the whole budget", HOGS);
    cr_assert_lt(r.free_misses * 4, r.frees, "%lu of %lu frees of the busy thread took the slow path",
                 (unsigned long)r.free_misses, (unsigned long)r.frees);
}

/* ---- the guard word ------------------------------------------------------------ */
Test(pcache, freed_objects_carry_the_guard_and_malloc_clears_it) {
    enum { N = 700 }; /* more than a list holds at first: some frees overflow to central */
    static void *p[N];
    static bool smp[N];
    const size_t sizes[] = {16, 48, 200, 1024, 5000, 65536, TA_MAX_SMALL};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s] <= 5000 ? N : 100, checked = 0;
        long fresh_dirty = -1, no_guard = -1, reused_dirty = -1;
        /* (sampled blocks are page-heap spans: no guard word, and their
         * double free is caught by the page heap) */
        for (size_t i = 0; i < n; i++) {
            p[i] = malloc(sizes[s]);
            smp[i] = sampled(p[i]);
            if (!smp[i] && ((uintptr_t *)p[i])[1] && fresh_dirty < 0) fresh_dirty = (long)i;
            memset(p[i], 0xa5, sizes[s]);
        }
        for (size_t i = 0; i < n; i++) free(p[i]);
        /* wherever they went (cache list, transfer cache, span), freed blocks
         * keep the guard: a second free is caught */
        for (size_t i = 0; i < n; i++) {
            if (smp[i]) continue;
            checked++;
            if (((uintptr_t *)p[i])[1] != ta_guard(p[i]) && no_guard < 0) no_guard = (long)i;
        }
        /* the blocks come back with the guard cleared */
        for (size_t i = 0; i < n; i++) {
            p[i] = malloc(sizes[s]);
            if (!sampled(p[i]) && ((uintptr_t *)p[i])[1] && reused_dirty < 0) reused_dirty = (long)i;
        }
        for (size_t i = 0; i < n; i++) free(p[i]);
        /* (at the default rate a 256 KiB request is sampled 4 times in 10) */
        cr_assert_gt(checked, sizes[s] <= 5000 ? n / 2 : 0, "size %zu: %zu of %zu blocks sampled", sizes[s],
                     n - checked, n);
        cr_assert_eq(fresh_dirty, -1, "size %zu: new block %ld does not have 0 in its second word", sizes[s],
                     fresh_dirty);
        cr_assert_eq(no_guard, -1, "size %zu: freed block %ld lacks the guard word", sizes[s], no_guard);
        cr_assert_eq(reused_dirty, -1, "size %zu: reused block %ld keeps its second word", sizes[s], reused_dirty);
    }
    /* calloc, aligned and realloc'd blocks too */
    for (int i = 0; i < 4; i++) {
        void *q = calloc(1, 64);
        bool sq = sampled(q);
        cr_assert_eq(((uintptr_t *)q)[1], 0u);
        free(q);
        if (!sq) cr_assert_eq(((uintptr_t *)q)[1], ta_guard(q));
        q = aligned_alloc(256, 256);
        sq = sampled(q);
        cr_assert_eq((uintptr_t)q % 256, 0u);
        if (!sq) cr_assert_eq(((uintptr_t *)q)[1], 0u);
        free(q);
        if (!sq) cr_assert_eq(((uintptr_t *)q)[1], ta_guard(q));
    }
}

Test(pcache, guard_key_is_not_trivial) {
    void *p = malloc(32);
    free(p);
    cr_assert_neq(ta_guard(p), 0u);
    cr_assert_neq(ta_guard(p), (uintptr_t)p);
    cr_assert_neq(ta_guard_key, 0x5bd1e9955bd1e995ull, "the guard key was never randomised");
    void *q = malloc(32);
    free(q);
}

Test(pcache, double_free_of_a_cached_block_aborts, .signal = SIGABRT, .init = setup_quiet) {
    void *p = malloc(40);
    free(p);
    free(p);
}

Test(pcache, double_free_after_overflow_aborts, .signal = SIGABRT, .init = setup_quiet) {
    /* the first free goes to a cache list that may overflow to central; the
     * block still carries the guard */
    enum { N = 2000 };
    static void *p[N];
    for (int i = 0; i < N; i++) p[i] = malloc(40);
    for (int i = 0; i < N; i++) free(p[i]);
    free(p[0]);
}

/* ---- malloc and free after the thread's cache is gone --------------------------- */
static pthread_key_t late_key;
static uint64_t late_pcache_after;
static int late_ok;

static void late_destructor(void *arg) {
    (void)arg;
    /* runs during thread exit, possibly after tieralloc's own flush */
    void *p[50];
    int ok = 1;
    bool smp[50];
    for (int i = 0; i < 50; i++) {
        p[i] = malloc(2900);
        if (!p[i]) {
            late_ok = 0;
            return;
        }
        smp[i] = sampled(p[i]);
        if (!smp[i] && ((uintptr_t *)p[i])[1]) ok = 0;
        memset(p[i], 1, 2900);
    }
    for (int i = 0; i < 50; i++) free(p[i]);
    for (int i = 0; i < 50; i++)
        if (!smp[i] && ((uintptr_t *)p[i])[1] != ta_guard(p[i])) ok = 0;
    late_ok = ok;
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
    ta_pcache_flush_current();
    uint64_t pc0 = ta_pcache_bytes(c);
    run_thread(late_thread, NULL);
    late_pcache_after = ta_pcache_bytes(c);
    cr_assert(late_ok, "malloc/free in a thread-exit destructor misbehaved");
    cr_assert_eq(late_pcache_after, pc0, "%lu bytes left in caches by an exited thread",
                 (unsigned long)(late_pcache_after - pc0));
}
