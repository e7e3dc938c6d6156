/* test_stats.c: statistics and sampled-allocation hooks, through the public
 * API of the shared library (ta_stats_get, ta_stats_print, mallinfo2,
 * malloc_info, ta_hooks_set) and TIERALLOC_STATS / TIERALLOC_SAMPLE_BYTES in
 * child processes.
 *
 * The accounting identity of tieralloc.h is checked after single- and
 * multi-threaded random workloads and in snapshots taken while four threads
 * allocate; the bytes in use are checked to the byte against the blocks the
 * test holds (sum of malloc_usable_size). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>

#include "tieralloc.h"

extern char **environ;

static void snap(struct ta_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    cr_assert_eq(ta_stats_get(st), 0, "ta_stats_get failed");
}

/* Everything but the in-use bytes: what the tiers hold. */
static uint64_t tiers_sum(const struct ta_stats *s) {
    return s->inuse_bytes + s->thread_cache_bytes + s->central_bytes + s->span_free_bytes +
           s->span_tail_bytes + s->pageheap_free_bytes + s->arena_bytes + s->metadata_bytes + s->guard_bytes;
}

/* The identity and its per-class form; returns NULL or what is wrong. */
static const char *identity_error(const struct ta_stats *s) {
    static char why[512];
    if (s->version != TA_STATS_VERSION || s->size != sizeof *s) return "bad version or size";
    if (s->released_bytes > s->mapped_bytes) return "released > mapped";
    if (tiers_sum(s) != s->mapped_bytes - s->released_bytes) {
        snprintf(why, sizeof why,
                 "identity broken: tiers %llu != mapped %llu - released %llu = %llu (in use %llu, caches %llu, "
                 "central %llu, span free %llu, tails %llu, ph free %llu, arena %llu, meta %llu)",
                 (unsigned long long)tiers_sum(s), (unsigned long long)s->mapped_bytes,
                 (unsigned long long)s->released_bytes, (unsigned long long)(s->mapped_bytes - s->released_bytes),
                 (unsigned long long)s->inuse_bytes, (unsigned long long)s->thread_cache_bytes,
                 (unsigned long long)s->central_bytes, (unsigned long long)s->span_free_bytes,
                 (unsigned long long)s->span_tail_bytes, (unsigned long long)s->pageheap_free_bytes,
                 (unsigned long long)s->arena_bytes, (unsigned long long)s->metadata_bytes);
        return why;
    }
    if (s->inuse_bytes != s->small_inuse_bytes + s->large_inuse_bytes) return "inuse != small + large";
    if (s->nclasses < 2 || s->nclasses > TA_STATS_CLASSES) return "nclasses out of range";
    uint64_t small = 0, cache = 0, central = 0, sfree = 0, tail = 0;
    for (uint32_t c = 1; c < s->nclasses; c++) {
        const struct ta_class_stats *k = &s->cls[c];
        if (!k->size || k->size > (256u << 10) || k->span_bytes % 8192 || k->objects_per_span * k->size > k->span_bytes) {
            snprintf(why, sizeof why, "class %u: bad geometry (size %llu, span %llu, objects %llu)", c,
                     (unsigned long long)k->size, (unsigned long long)k->span_bytes,
                     (unsigned long long)k->objects_per_span);
            return why;
        }
        uint64_t objs = k->inuse_objects + k->cache_objects + k->central_objects + k->span_free_objects;
        if (k->spans * k->span_bytes != objs * k->size + k->tail_bytes ||
            k->tail_bytes != k->spans * (k->span_bytes - k->objects_per_span * k->size) ||
            k->inuse_bytes != k->inuse_objects * k->size) {
            snprintf(why, sizeof why, "class %u (size %llu): spans %llu do not add up to %llu objects", c,
                     (unsigned long long)k->size, (unsigned long long)k->spans, (unsigned long long)objs);
            return why;
        }
        small += k->inuse_bytes;
        cache += k->cache_objects * k->size;
        central += k->central_objects * k->size;
        sfree += k->span_free_objects * k->size;
        tail += k->tail_bytes;
    }
    if (small != s->small_inuse_bytes || cache != s->thread_cache_bytes || central != s->central_bytes ||
        sfree != s->span_free_bytes || tail != s->span_tail_bytes)
        return "class rows do not add up to the totals";
    return NULL;
}

#define CHECK_IDENTITY(s, when)                                                         \
    do {                                                                                \
        const char *e_ = identity_error(s);                                             \
        cr_assert_null(e_, "%s: %s", when, e_ ? e_ : "");                               \
    } while (0)

/* ---- a random workload -------------------------------------------------------- */
static size_t pick_size(uint64_t *rng) {
    uint64_t r = tu_rand(rng) % 1000;
    if (r < 700) return tu_rand_range(rng, 0, 512);
    if (r < 950) return tu_rand_range(rng, 513, 32768);
    if (r < 995) return tu_rand_range(rng, 32769, 256 << 10);
    return tu_rand_range(rng, (256 << 10) + 1, 3 << 20);
}

#define MAILBOX 64
static pthread_mutex_t mailbox_lock = PTHREAD_MUTEX_INITIALIZER;
static void *mailbox[MAILBOX];

typedef struct work {
    uint64_t seed;
    int iterations;
    int slots;
    void *keep[64];  /* blocks that survive the thread */
    int nkeep;
    int bad;         /* a content check failed */
} work_t;

static void *workload(void *arg) {
    work_t *w = arg;
    uint64_t rng = w->seed;
    void *slot[512] = {0};
    size_t size[512] = {0};
    for (int it = 0; it < w->iterations; it++) {
        int i = (int)(tu_rand(&rng) % (uint64_t)w->slots);
        if (slot[i]) {
            if (tu_check(slot[i], size[i] < 64 ? size[i] : 64, (uint64_t)i) != (size_t)-1) w->bad++;
            if (tu_rand(&rng) % 8 == 0) {
                /* trade with another thread: it will free what we allocated */
                int m = (int)(tu_rand(&rng) % MAILBOX);
                pthread_mutex_lock(&mailbox_lock);
                void *q = mailbox[m];
                mailbox[m] = slot[i];
                pthread_mutex_unlock(&mailbox_lock);
                free(q);
            } else {
                free(slot[i]);
            }
            slot[i] = NULL;
        } else {
            size[i] = pick_size(&rng);
            slot[i] = malloc(size[i]);
            if (!slot[i]) {
                w->bad++;
                continue;
            }
            tu_fill(slot[i], size[i] < 64 ? size[i] : 64, (uint64_t)i);
        }
    }
    w->nkeep = 0;
    for (int i = 0; i < w->slots; i++) {
        if (!slot[i]) continue;
        if (w->nkeep < 64)
            w->keep[w->nkeep++] = slot[i];
        else
            free(slot[i]);
    }
    return NULL;
}

static void run_threads(int n, work_t *w) {
    pthread_t t[8];
    for (int i = 0; i < n; i++) cr_assert_eq(pthread_create(&t[i], NULL, workload, &w[i]), 0);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
}

/* ---- version, size and the snapshot itself ----------------------------------------- */
Test(stats, versioned_struct_fills_only_what_the_caller_has) {
    struct ta_stats s = TA_STATS_INIT;
    cr_assert_eq(s.size, sizeof s);
    cr_assert_eq(ta_stats_read(&s), 0);
    cr_assert_eq(s.version, TA_STATS_VERSION);
    cr_assert_eq(s.size, sizeof s);
    cr_assert_gt(s.mapped_bytes, 0);

    /* an older, shorter struct: the tail is left alone */
    unsigned char buf[sizeof(struct ta_stats) + 64];
    memset(buf, 0xa5, sizeof buf);
    struct ta_stats *p = (struct ta_stats *)(void *)buf;
    uint32_t short_size = (uint32_t)offsetof(struct ta_stats, small_inuse_bytes);
    p->size = short_size;
    cr_assert_eq(ta_stats_get(p), 0);
    cr_assert_eq(p->version, TA_STATS_VERSION);
    cr_assert_eq(p->size, short_size, "size says %u bytes filled, expected %u", p->size, short_size);
    cr_assert_gt(p->mapped_bytes, 0);
    for (size_t i = short_size; i < sizeof buf; i++)
        cr_assert_eq(buf[i], 0xa5, "byte %zu beyond the caller's size was written", i);

    /* nonsense */
    errno = 0;
    cr_assert_eq(ta_stats_get(NULL), -1);
    cr_assert_eq(errno, EINVAL);
    struct ta_stats tiny = {.size = 4};
    errno = 0;
    cr_assert_eq(ta_stats_get(&tiny), -1);
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(ta_stats_print(NULL, TA_STATS_TEXT), -1);
}

/* metadata_resident_bytes counts the pages of metadata in memory, not the
 * mappings: a pagemap leaf maps 6 MiB for 2 GiB of heap, a thread's slab
 * 1 MiB, and a small heap touches little of either; new spans write their
 * records, state bytes and pagemap entries, and the count grows. */
Test(stats, metadata_resident_counts_pages_in_memory_not_mappings) {
    struct ta_stats a, b;
    snap(&a);
    cr_assert_gt(a.metadata_resident_bytes, 0);
    cr_assert_eq(a.metadata_resident_bytes % 4096, 0);
    cr_assert_lt(a.metadata_resident_bytes, a.metadata_bytes / 2, "resident %llu of %llu: the mappings, not the pages",
                 (unsigned long long)a.metadata_resident_bytes, (unsigned long long)a.metadata_bytes);
    enum { N = 20000 };
    static void *v[N];
    for (int i = 0; i < N; i++) {
        v[i] = malloc(16 + (size_t)(i % 97) * 40);
        cr_assert_not_null(v[i]);
    }
    snap(&b);
    cr_assert_gt(b.metadata_resident_bytes, a.metadata_resident_bytes, "%llu spans more, resident %llu -> %llu",
                 (unsigned long long)(b.pageheap_allocs_total - a.pageheap_allocs_total),
                 (unsigned long long)a.metadata_resident_bytes, (unsigned long long)b.metadata_resident_bytes);
    cr_assert_leq(b.metadata_resident_bytes, b.metadata_bytes);
    cr_assert_null(identity_error(&b), "%s", identity_error(&b));
    for (int i = 0; i < N; i++) free(v[i]);
}

/* Many threads alive at once: with per-thread caches (the suite's
 * TIERALLOC_PERCPU=0 run) each has a slab of its own, a metadata mapping
 * each, more than the first table of mappings holds; the count stays within
 * the metadata and the identity holds while they live and after. */
#define MANY 48
static pthread_barrier_t many_started, many_looked;
static void *many_thread(void *arg) {
    (void)arg;
    void *v[32];
    for (int i = 0; i < 32; i++) v[i] = malloc(16 + (size_t)i * 24);
    pthread_barrier_wait(&many_started);
    pthread_barrier_wait(&many_looked);
    for (int i = 0; i < 32; i++) free(v[i]);
    return NULL;
}
Test(stats, metadata_resident_with_a_slab_per_thread) {
    pthread_t t[MANY];
    cr_assert_eq(pthread_barrier_init(&many_started, NULL, MANY + 1), 0);
    cr_assert_eq(pthread_barrier_init(&many_looked, NULL, MANY + 1), 0);
    for (int i = 0; i < MANY; i++) cr_assert_eq(pthread_create(&t[i], NULL, many_thread, NULL), 0);
    pthread_barrier_wait(&many_started);
    struct ta_stats a, b;
    snap(&a);
    pthread_barrier_wait(&many_looked);
    for (int i = 0; i < MANY; i++) pthread_join(t[i], NULL);
    snap(&b);
    const struct ta_stats *both[] = {&a, &b};
    for (int k = 0; k < 2; k++) {
        const struct ta_stats *s = both[k];
        cr_assert_gt(s->metadata_resident_bytes, 0);
        cr_assert_leq(s->metadata_resident_bytes, s->metadata_bytes, "resident %llu of %llu",
                      (unsigned long long)s->metadata_resident_bytes, (unsigned long long)s->metadata_bytes);
        cr_assert_null(identity_error(s), "%s", identity_error(s));
    }
    pthread_barrier_destroy(&many_started);
    pthread_barrier_destroy(&many_looked);
}

Test(stats, inuse_bytes_match_the_blocks_held_exactly) {
    tu_start_bg_thread(); /* its TLS vector is not among the blocks */
    enum { N = 3000 };
    static void *v[N];
    static size_t req[N];
    uint64_t rng = 42;
    for (int i = 0; i < N; i++) req[i] = pick_size(&rng);
    struct ta_stats a, b, c;
    snap(&a);
    CHECK_IDENTITY(&a, "before");
    uint64_t usable = 0, requested = 0;
    for (int i = 0; i < N; i++) {
        v[i] = malloc(req[i]);
        cr_assert_not_null(v[i]);
        requested += req[i];
    }
    for (int i = 0; i < N; i++) usable += malloc_usable_size(v[i]);
    snap(&b);
    CHECK_IDENTITY(&b, "holding the blocks");
    cr_assert_eq(b.inuse_bytes - a.inuse_bytes, usable,
                 "in use grew by %lld bytes, the blocks held have %llu usable bytes",
                 (long long)(b.inuse_bytes - a.inuse_bytes), (unsigned long long)usable);
    /* this thread's allocations are all in allocated_bytes_total, to the byte */
    cr_assert_eq(b.allocated_bytes_total - a.allocated_bytes_total, requested,
                 "allocated_bytes_total grew by %llu, %llu bytes were requested",
                 (unsigned long long)(b.allocated_bytes_total - a.allocated_bytes_total),
                 (unsigned long long)requested);
    for (int i = 0; i < N; i++) free(v[i]);
    snap(&c);
    CHECK_IDENTITY(&c, "after freeing");
    cr_assert_eq(c.inuse_bytes, a.inuse_bytes, "in use %llu after freeing everything, %llu before",
                 (unsigned long long)c.inuse_bytes, (unsigned long long)a.inuse_bytes);
    cr_assert_eq(c.sampled_live_blocks, a.sampled_live_blocks, "sampled blocks outlived their free");

    /* trimming moves memory between tiers (this thread's cache empties, pages
     * go back to the OS), never out of the identity */
    struct ta_stats d;
    snap(&d);
    malloc_trim(0);
    snap(&c);
    CHECK_IDENTITY(&c, "after malloc_trim");
    cr_assert_eq(c.inuse_bytes, a.inuse_bytes);
    cr_assert_lt(c.thread_cache_bytes, d.thread_cache_bytes, "malloc_trim left the caches at %llu bytes",
                 (unsigned long long)c.thread_cache_bytes);
    /* pages go back to the OS (released, or unmapped altogether): what stays
     * mapped and not released never grows */
    cr_assert_leq(c.mapped_bytes - c.released_bytes, d.mapped_bytes - d.released_bytes);
}

Test(stats, counters_of_each_tier_move) {
    struct ta_stats a, b;
    /* class of 3000-byte blocks: its row must show the blocks */
    snap(&a);
    enum { N = 2000 };
    static void *v[N];
    for (int i = 0; i < N; i++) v[i] = tu_hide(malloc(3000));
    void *big = tu_hide(malloc(5 << 20));
    snap(&b);
    CHECK_IDENTITY(&b, "holding");
    uint32_t cls = 0;
    for (uint32_t c = 1; c < b.nclasses; c++)
        if (b.cls[c].size >= 3000 && (!cls || b.cls[c].size < b.cls[cls].size)) cls = c;
    cr_assert_neq(cls, 0, "no size class for 3000 bytes");
    uint64_t sampled = b.sampled_live_blocks - a.sampled_live_blocks; /* these are large spans */
    cr_assert_geq(b.cls[cls].inuse_objects - a.cls[cls].inuse_objects + sampled, (uint64_t)N,
                  "class %u (size %llu): in use went %llu -> %llu for %d blocks (%llu sampled)", cls,
                  (unsigned long long)b.cls[cls].size, (unsigned long long)a.cls[cls].inuse_objects,
                  (unsigned long long)b.cls[cls].inuse_objects, N, (unsigned long long)sampled);
    cr_assert_gt(b.cls[cls].to_caches_total, a.cls[cls].to_caches_total);
    cr_assert_gt(b.cls[cls].spans, 0);
    cr_assert_gt(b.cache_alloc_misses_total, a.cache_alloc_misses_total, "no thread-cache refill counted");
    cr_assert_gt(b.pageheap_allocs_total, a.pageheap_allocs_total);
    cr_assert_geq(b.large_inuse_bytes - a.large_inuse_bytes, (uint64_t)5 << 20);
    cr_assert_geq(b.large_inuse_blocks, a.large_inuse_blocks + 1);
    cr_assert_gt(b.os_mmap_total, 0);
    cr_assert_geq(b.threads, 1);
    for (int i = 0; i < N; i++) free(v[i]);
    free(big);
    struct ta_stats c;
    snap(&c);
    cr_assert_gt(c.cls[cls].from_caches_total, a.cls[cls].from_caches_total,
                 "freeing 2000 blocks returned none to central");
    cr_assert_gt(c.cache_free_misses_total, a.cache_free_misses_total);
    cr_assert_gt(c.pageheap_frees_total, a.pageheap_frees_total);
    /* trimming gives pages back with madvise */
    malloc_trim(0);
    snap(&c);
    cr_assert_gt(c.os_madvise_total, a.os_madvise_total, "malloc_trim made no madvise call");
    cr_assert_gt(c.os_released_bytes_total, a.os_released_bytes_total);
    cr_assert_gt(c.released_bytes, 0);
}

/* ---- the identity under threads ---------------------------------------------------- */
static void warm_up_threads(void) {
    /* glibc allocates per-thread structures (the DTV) on the first pthread_create
     * and keeps them with its cached stacks: create the threads once first */
    work_t w[4];
    memset(w, 0, sizeof w);
    for (int i = 0; i < 4; i++) {
        w[i].seed = 1000 + (uint64_t)i;
        w[i].iterations = 10;
        w[i].slots = 8;
    }
    run_threads(4, w);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < w[i].nkeep; k++) free(w[i].keep[k]);
}

Test(stats, identity_and_inuse_exact_after_four_threads) {
    tu_start_bg_thread(); /* its TLS vector is not among the blocks */
    warm_up_threads();
    for (int m = 0; m < MAILBOX; m++) {
        free(mailbox[m]);
        mailbox[m] = NULL;
    }
    struct ta_stats a, b, c;
    snap(&a);
    CHECK_IDENTITY(&a, "before the threads");
    for (int round = 0; round < 3; round++) {
        work_t w[4];
        memset(w, 0, sizeof w);
        for (int i = 0; i < 4; i++) {
            w[i].seed = (uint64_t)(round * 16 + i + 1);
            w[i].iterations = 20000;
            w[i].slots = 256;
        }
        run_threads(4, w);
        uint64_t usable = 0;
        for (int i = 0; i < 4; i++) {
            cr_assert_eq(w[i].bad, 0, "thread %d saw a damaged block", i);
            for (int k = 0; k < w[i].nkeep; k++) usable += malloc_usable_size(w[i].keep[k]);
        }
        for (int m = 0; m < MAILBOX; m++)
            if (mailbox[m]) usable += malloc_usable_size(mailbox[m]);
        snap(&b);
        CHECK_IDENTITY(&b, "after the threads");
        cr_assert_eq(b.inuse_bytes - a.inuse_bytes, usable,
                     "round %d: in use grew by %lld bytes, the surviving blocks have %llu usable bytes", round,
                     (long long)(b.inuse_bytes - a.inuse_bytes), (unsigned long long)usable);
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < w[i].nkeep; k++) free(w[i].keep[k]);
        for (int m = 0; m < MAILBOX; m++) {
            free(mailbox[m]);
            mailbox[m] = NULL;
        }
        snap(&c);
        CHECK_IDENTITY(&c, "after freeing the survivors");
        cr_assert_eq(c.inuse_bytes, a.inuse_bytes, "round %d: %lld bytes still in use after freeing everything",
                     round, (long long)(c.inuse_bytes - a.inuse_bytes));
    }
}

static volatile int churn_stop;
static void *churn(void *arg) {
    work_t *w = arg;
    while (!churn_stop) {
        workload(w);
        for (int k = 0; k < w->nkeep; k++) free(w->keep[k]);
        w->nkeep = 0;
    }
    return NULL;
}

Test(stats, identity_holds_in_snapshots_taken_while_threads_allocate) {
    pthread_t t[4];
    work_t w[4];
    memset(w, 0, sizeof w);
    churn_stop = 0;
    for (int i = 0; i < 4; i++) {
        w[i].seed = 777 + (uint64_t)i;
        w[i].iterations = 2000;
        w[i].slots = 128;
        cr_assert_eq(pthread_create(&t[i], NULL, churn, &w[i]), 0);
    }
    struct ta_stats s;
    int busy = 0;
    uint64_t first_alloc = 0, misses = 0;
    for (int i = 0; i < 300; i++) {
        snap(&s);
        const char *e = identity_error(&s);
        if (e) {
            churn_stop = 1;
            for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
            cr_assert_fail("snapshot %d: %s", i, e);
        }
        if (i == 0) first_alloc = s.pageheap_allocs_total;
        /* the workers ran while this snapshot was taken: tier 1 missed since
         * the last one (caches are per CPU or per thread, so count activity,
         * not caches) */
        if (i > 0 && s.cache_alloc_misses_total + s.cache_free_misses_total > misses) busy++;
        misses = s.cache_alloc_misses_total + s.cache_free_misses_total;
        tu_sleep_ms(1);
    }
    churn_stop = 1;
    for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
    cr_assert_gt(busy, 0, "no snapshot saw the worker threads");
    snap(&s);
    CHECK_IDENTITY(&s, "after the threads");
    cr_assert_gt(s.pageheap_allocs_total, first_alloc, "the threads did not allocate meanwhile");
    for (int m = 0; m < MAILBOX; m++) {
        free(mailbox[m]);
        mailbox[m] = NULL;
    }
}

Test(stats, scoped_arena_chunks_are_a_tier_of_their_own) {
    struct ta_stats a, b, c;
    snap(&a);
    ta_scope_t mark = ta_scope_begin();
    for (int i = 0; i < 2048; i++) cr_assert_not_null(tu_hide(ta_scope_alloc(1000)));
    void *big = tu_hide(ta_scope_alloc(3 << 20)); /* a chunk of its own */
    cr_assert_not_null(big);
    snap(&b);
    CHECK_IDENTITY(&b, "inside a scope");
    cr_assert_geq(b.arena_bytes - a.arena_bytes, (uint64_t)5 << 20, "arena grew by %llu bytes for 5 MiB of scoped "
                  "blocks", (unsigned long long)(b.arena_bytes - a.arena_bytes));
    cr_assert_eq(b.inuse_bytes, a.inuse_bytes, "scoped blocks were counted as heap blocks in use");
    ta_scope_end(mark);
    snap(&c);
    CHECK_IDENTITY(&c, "after the scope");
    cr_assert_eq(c.inuse_bytes, a.inuse_bytes);
}

/* ---- glibc's introspection from the same snapshot -------------------------------- */
Test(stats, mallinfo2_and_malloc_info_agree_with_the_snapshot) {
    void *p = tu_hide(malloc(700000));
    void *q = tu_hide(malloc(100));
    struct ta_stats s;
    snap(&s);
    struct mallinfo2 mi = mallinfo2();
    cr_assert_eq(mi.uordblks, s.inuse_bytes);
    cr_assert_eq(mi.arena, s.mapped_bytes);
    cr_assert_eq(mi.hblkhd, s.large_inuse_bytes);
    cr_assert_eq(mi.hblks, s.large_inuse_blocks);
    cr_assert_eq(mi.keepcost, s.released_bytes);
    cr_assert_eq(mi.uordblks + mi.fordblks + s.metadata_bytes + s.guard_bytes, s.mapped_bytes - s.released_bytes,
                 "mallinfo2: in use + free + metadata != mapped - released");

    char buf[4096];
    FILE *f = fmemopen(buf, sizeof buf, "w");
    cr_assert_not_null(f);
    setvbuf(f, NULL, _IONBF, 0);
    snap(&s);
    cr_assert_eq(malloc_info(0, f), 0);
    fclose(f);
    char want[128];
    snprintf(want, sizeof want, "<total type=\"inuse\" size=\"%llu\"/>", (unsigned long long)s.inuse_bytes);
    cr_assert_not_null(strstr(buf, want), "malloc_info lacks %s:\n%s", want, buf);
    snprintf(want, sizeof want, "<system type=\"current\" size=\"%llu\"/>", (unsigned long long)s.mapped_bytes);
    cr_assert_not_null(strstr(buf, want), "malloc_info lacks %s:\n%s", want, buf);
    free(p);
    free(q);
}

/* ---- reports ---------------------------------------------------------------------- */
static size_t slurp(FILE *f, char *buf, size_t cap) {
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    return n;
}

static unsigned long long number_after(const char *text, const char *label) {
    const char *s = strstr(text, label);
    cr_assert_not_null(s, "no \"%s\" in the report", label);
    s += strlen(label);
    while (*s == ' ') s++;
    return strtoull(s, NULL, 10);
}

Test(stats, text_report_has_the_tiers_and_the_classes) {
    enum { N = 500 };
    static void *v[N];
    for (int i = 0; i < N; i++) v[i] = malloc(5000);
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    fputc('\n', f); /* stdio takes its buffer now, not while the report is written */
    fflush(f);
    struct ta_stats a, b;
    snap(&a);
    cr_assert_eq(ta_stats_print(f, TA_STATS_TEXT), 0);
    snap(&b);
    static char text[65536];
    slurp(f, text, sizeof text);
    fclose(f);
    cr_assert_eq(a.inuse_bytes, b.inuse_bytes, "the report allocated");
    cr_assert_eq(number_after(text, "in use by the program"), a.inuse_bytes, "report:\n%s", text);
    cr_assert_eq(number_after(text, "mapped from the OS"), a.mapped_bytes);
    cr_assert_eq(number_after(text, "= mapped - released"), a.mapped_bytes - a.released_bytes);
    cr_assert_eq(number_after(text, "metadata"), a.metadata_bytes);
    uint64_t resident = number_after(text, "of which resident");
    cr_assert(resident > 0 && resident <= a.metadata_bytes, "metadata resident %llu of %llu",
              (unsigned long long)resident, (unsigned long long)a.metadata_bytes);
    const char *words[] = {"caches (", "central transfer caches", "page heap", "Activity by tier",
                           "transfer caches", "OS ", "sampling", "Size classes"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        cr_assert_not_null(strstr(text, words[i]), "no \"%s\" in the report:\n%s", words[i], text);
    /* one row per class with spans, starting with its number and size */
    const char *table = strstr(text, "Size classes");
    int rows = 0;
    for (uint32_t c = 1; c < a.nclasses; c++) {
        if (!a.cls[c].spans) continue;
        char row[64];
        snprintf(row, sizeof row, "\n%6u%8llu", c, (unsigned long long)a.cls[c].size);
        cr_assert_not_null(strstr(table, row), "no row for class %u:\n%s", c, table);
        rows++;
    }
    cr_assert_gt(rows, 0);
    for (int i = 0; i < N; i++) free(v[i]);
}

/* Run python3 (when there is one) on a JSON file: parse it and check the
 * identity and the classes.  Returns its exit status, or 127 without python3. */
static int python_check_json(const char *path) {
    static const char script[] =
        "import json, sys\n"
        "d = json.load(open(sys.argv[1]))\n"
        "held = sum(d[k] for k in ('inuse_bytes', 'thread_cache_bytes', 'central_bytes', 'span_free_bytes',\n"
        "                          'span_tail_bytes', 'pageheap_free_bytes', 'arena_bytes', 'metadata_bytes',\n"
        "                          'guard_bytes'))\n"
        "assert held == d['mapped_bytes'] - d['released_bytes'], (held, d['mapped_bytes'], d['released_bytes'])\n"
        "assert d['version'] >= 1 and d['pid'] > 0\n"
        "assert 0 < d['metadata_resident_bytes'] <= d['metadata_bytes'], d['metadata_resident_bytes']\n"
        "cl = d['classes']\n"
        "assert len(cl) > 10 and [c['class'] for c in cl] == list(range(1, len(cl) + 1))\n"
        "assert sum(c['inuse_bytes'] for c in cl) == d['small_inuse_bytes']\n"
        "for c in cl:\n"
        "    assert c['spans'] * c['span_bytes'] == (c['inuse_objects'] + c['cache_objects'] + c['central_objects']\n"
        "        + c['span_free_objects']) * c['size'] + c['tail_bytes'], c\n"
        "print('json ok', len(cl))\n";
    char *argv[] = {"/bin/sh", "-c",
                    "command -v python3 >/dev/null 2>&1 || exit 127; exec python3 -c \"$1\" \"$2\"", "sh",
                    (char *)script, (char *)path, NULL};
    tu_child_t c;
    tu_run_exec(argv, environ, 60000, &c);
    if (c.exited && c.exit_code == 127) return 127;
    cr_assert(c.exited && c.exit_code == 0, "python3 rejected %s: %s\n%s", path, tu_describe(&c), c.out);
    cr_assert_not_null(strstr(c.out, "json ok"));
    return 0;
}

/* Tests that write files do it in a directory removed after the test, pass or fail. */
static char files_dir[64];
static void files_setup(void) {
    snprintf(files_dir, sizeof files_dir, "/tmp/ta_stats.XXXXXX");
    cr_assert_not_null(mkdtemp(files_dir));
}
static void files_teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", files_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", files_dir);
}
TestSuite(stats_files, .init = files_setup, .fini = files_teardown);

Test(stats_files, json_report_parses_and_adds_up) {
    char path[128];
    snprintf(path, sizeof path, "%s/report.json", files_dir);
    FILE *f = fopen(path, "w+");
    cr_assert_not_null(f);
    void *p = tu_hide(malloc(12345));
    cr_assert_eq(ta_stats_print(f, TA_STATS_JSON), 0);
    static char text[1 << 17];
    size_t n = slurp(f, text, sizeof text);
    fclose(f);
    free(p);
    cr_assert_gt(n, 100);
    cr_assert_eq(text[0], '{');
    cr_assert_not_null(strstr(text, "\"mapped_bytes\": "));
    cr_assert_not_null(strstr(text, "\"classes\": ["));
    if (python_check_json(path) == 127) cr_skip_test("python3 not found: the JSON was not parsed");
}

/* ---- environment variables, in child processes -------------------------------------- */
static char **env_with(const char *a, const char *b) {
    static char *env[256];
    static char preload[4200];
    int n = 0;
    for (char **e = environ; *e && n < 250; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "TIERALLOC_", 10)) env[n++] = *e;
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s", tu_lib_path());
    env[n++] = preload;
    if (a) env[n++] = (char *)a;
    if (b) env[n++] = (char *)b;
    env[n] = NULL;
    return env;
}

Test(stats, env_stats_1_prints_the_report_to_stderr_at_exit) {
    char prog[4096];
    snprintf(prog, sizeof prog, "%s", tu_build_path("tests/prof_prog"));
    char *argv[] = {prog, "exit", "0", NULL};
    tu_child_t c;
    tu_run_exec(argv, env_with("TIERALLOC_STATS=1", NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "statistics, pid"), "no report on stderr: %s", c.err);
    cr_assert_not_null(strstr(c.err, "in use by the program"));
    cr_assert_not_null(strstr(c.err, "Size classes"));
    cr_assert_eq(c.out_len, 0, "the report went to stdout: %s", c.out);
    /* the program held 1 MiB of 64-byte blocks at exit */
    cr_assert_geq(number_after(c.err, "in use by the program"), 1u << 20, "%s", c.err);

    /* without the variable: nothing */
    tu_run_exec(argv, env_with(NULL, NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(c.err_len, 0, "stderr without TIERALLOC_STATS: %s", c.err);
}

Test(stats_files, env_stats_json_writes_the_file_named_with_the_pid) {
    const char *dir = files_dir;
    char var[256], prog[4096], path[512];
    snprintf(var, sizeof var, "TIERALLOC_STATS=json:%s/s.%%p.json", dir);
    snprintf(prog, sizeof prog, "%s", tu_build_path("tests/prof_prog"));
    char *argv[] = {prog, "exit", "0", NULL};
    tu_child_t c;
    tu_run_exec(argv, env_with(var, NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(c.err_len, 0, "stderr: %s", c.err);
    snprintf(path, sizeof path, "%s/s.%d.json", dir, (int)c.pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no %s", path);
    static char text[1 << 17];
    size_t n = slurp(f, text, sizeof text);
    fclose(f);
    cr_assert_gt(n, 100);
    cr_assert_eq(text[n - 2], '}', "the JSON does not end with }");
    char pidfield[64];
    snprintf(pidfield, sizeof pidfield, "\"pid\": %d", (int)c.pid);
    cr_assert_not_null(strstr(text, pidfield));
    if (python_check_json(path) == 127) cr_skip_test("python3 not found: the JSON was not parsed");
}

Test(stats, env_sample_bytes_sets_the_rate_and_0_turns_sampling_off) {
    char prog[4096];
    snprintf(prog, sizeof prog, "%s", tu_build_path("tests/prof_prog"));
    char *argv[] = {prog, "stats", NULL};
    tu_child_t c;
    unsigned long long rate, samples, live;

    tu_run_exec(argv, env_with("TIERALLOC_SAMPLE_BYTES=0", NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(sscanf(c.out, "rate=%llu samples=%llu live=%llu", &rate, &samples, &live), 3, "%s", c.out);
    cr_assert_eq(rate, 0);
    cr_assert_eq(samples, 0, "sampling is off, yet %llu samples", samples);

    /* 64 MiB in 64 KiB blocks at 1 in 64 KiB: each block is sampled with
     * probability 1 - 1/e, so about 647 of 1024.  No background thread: the
     * blocks glibc allocates for a new thread (its TLS) are sampled like any
     * other, and would be live (about 1 run in 250 under load) */
    tu_run_exec(argv, env_with("TIERALLOC_SAMPLE_BYTES=64k", "TIERALLOC_BACKGROUND=0"), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(sscanf(c.out, "rate=%llu samples=%llu live=%llu", &rate, &samples, &live), 3, "%s", c.out);
    cr_assert_eq(rate, 65536);
    cr_assert(samples >= 540 && samples <= 760, "%llu samples of 1024 blocks, expected about 647", samples);
    cr_assert_eq(live, 0, "%llu sampled blocks still live after they were all freed", live);

    /* the default is 512 KiB */
    tu_run_exec(argv, env_with(NULL, NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(sscanf(c.out, "rate=%llu samples=%llu live=%llu", &rate, &samples, &live), 3, "%s", c.out);
    cr_assert_eq(rate, 512 << 10);
}

/* ---- sampling and hooks, in this process (default rate 512 KiB) --------------------- */
#define MAX_EVENTS 8192
typedef struct ev {
    void *ptr;
    size_t size;
    double weight;
    uint32_t depth;
    void *stack[4];
} ev_t;
static ev_t allocs[MAX_EVENTS], frees[MAX_EVENTS];
static volatile int nallocs, nfrees, nested;
static volatile int in_alloc_hook;
static int hook_arg;
static int hook_mallocs; /* the alloc hook allocates this many 64 KiB blocks */
/* other threads of the process (the test runner's) may allocate: their sampled
 * blocks are counted apart, so that the test's own counts stay exact */
static pid_t hook_tid;
static int foreign_allocs, foreign_frees;

static int hooks_set_here(const struct ta_hooks *h) {
    hook_tid = gettid();
    __atomic_store_n(&foreign_allocs, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&foreign_frees, 0, __ATOMIC_RELAXED);
    return ta_hooks_set(h, NULL);
}

static void record(ev_t *to, volatile int *n, const struct ta_sample_event *e) {
    if (*n >= MAX_EVENTS) return;
    ev_t *r = &to[*n];
    r->ptr = e->ptr;
    r->size = e->size;
    r->weight = e->weight;
    r->depth = e->depth;
    for (uint32_t i = 0; i < 4; i++) r->stack[i] = i < e->depth ? e->stack[i] : NULL;
    (*n)++;
}

static void on_alloc(const struct ta_sample_event *e, void *arg) {
    if (gettid() != hook_tid) {
        __atomic_add_fetch(&foreign_allocs, 1, __ATOMIC_RELAXED);
        return;
    }
    if (arg != &hook_arg || in_alloc_hook) {
        nested++;
        return;
    }
    in_alloc_hook = 1;
    record(allocs, &nallocs, e);
    /* a hook may allocate; what it allocates is not sampled */
    for (int i = 0; i < hook_mallocs; i++) free(tu_hide(malloc(64 << 10)));
    in_alloc_hook = 0;
}
static void on_free(const struct ta_sample_event *e, void *arg) {
    if (gettid() != hook_tid) {
        __atomic_add_fetch(&foreign_frees, 1, __ATOMIC_RELAXED);
        return;
    }
    if (arg != &hook_arg) nested++;
    record(frees, &nfrees, e);
}

static void *volatile ret_into_outer; /* where alloc_site returns in alloc_outer */

__attribute__((noinline)) static void *alloc_site(size_t n) {
    void *p = malloc(n);
    ret_into_outer = __builtin_return_address(0);
    __asm__ volatile("" ::: "memory");
    return p;
}
/* calloc reaches the sampling code through a frame of the library's own
 * (ta_calloc): that frame must not show in the stack */
__attribute__((noinline)) static void *calloc_site(size_t n) {
    void *p = calloc(1, n);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) static void *alloc_outer(size_t n) {
    void *p = alloc_site(n);
    __asm__ volatile("" ::: "memory");
    return p;
}

Test(stats, hooks_see_sampled_allocations_with_sizes_and_stacks) {
    enum { N = 2000, SIZE = 16 << 10 }; /* 32 MiB: about 61 samples at 512 KiB */
    static void *v[N];
    struct ta_hooks h = {on_alloc, on_free, &hook_arg}, old;
    nallocs = nfrees = nested = 0;
    hook_mallocs = 0;
    cr_assert_eq(hooks_set_here(&h), 0);
    struct ta_stats a, b;
    snap(&a);
    for (int i = 0; i < N; i++) {
        v[i] = alloc_outer(SIZE);
        cr_assert_not_null(v[i]);
        memset(v[i], 0x5a, SIZE); /* sampled blocks are whole blocks */
    }
    snap(&b);
    cr_assert_eq(nested, 0);
    cr_assert_geq(nallocs, 10, "only %d sampled allocations of %d blocks of %d bytes", nallocs, N, SIZE);
    cr_assert_leq(nallocs, 200, "%d sampled allocations, expected about 61", nallocs);
    int fa = __atomic_load_n(&foreign_allocs, __ATOMIC_RELAXED), ff = __atomic_load_n(&foreign_frees, __ATOMIC_RELAXED);
    if (fa == 0 && ff == 0) { /* the statistics count every thread's samples */
        cr_assert_eq(b.samples_total - a.samples_total, (uint64_t)nallocs);
        cr_assert_eq(b.sampled_live_blocks - a.sampled_live_blocks, (uint64_t)nallocs);
        cr_assert_eq(b.sampled_live_bytes - a.sampled_live_bytes, (uint64_t)nallocs * SIZE);
    } else {
        cr_assert_geq(b.samples_total - a.samples_total, (uint64_t)nallocs);
        cr_assert_leq(b.samples_total - a.samples_total, (uint64_t)(nallocs + fa));
        cr_assert_geq((int64_t)(b.sampled_live_blocks - a.sampled_live_blocks), (int64_t)nallocs - ff);
        cr_assert_leq((int64_t)(b.sampled_live_blocks - a.sampled_live_blocks), (int64_t)nallocs + fa);
    }
    double w = 1.0 / (1.0 - exp(-(double)SIZE / (double)b.sample_rate));
    for (int i = 0; i < nallocs; i++) {
        ev_t *e = &allocs[i];
        int found = 0;
        for (int k = 0; k < N && !found; k++) found = v[k] == e->ptr;
        cr_assert(found, "hook reported %p, which the test never got", e->ptr);
        cr_assert_eq(e->size, SIZE);
        cr_assert_geq(malloc_usable_size(e->ptr), SIZE);
        cr_assert(fabs(e->weight - w) < 1e-6 * w, "weight %f, expected %f", e->weight, w);
        cr_assert_geq(e->depth, 2, "stack of depth %u", e->depth);
        /* innermost frame: the return address of malloc's call in alloc_site;
         * next: alloc_site's return into alloc_outer */
        uintptr_t r0 = (uintptr_t)e->stack[0];
        cr_assert(r0 > (uintptr_t)alloc_site && r0 < (uintptr_t)alloc_site + 256,
                  "first frame %p is not in alloc_site (%p)", e->stack[0], (void *)alloc_site);
        cr_assert_eq(e->stack[1], ret_into_outer, "second frame %p, alloc_site returns to %p", e->stack[1],
                     ret_into_outer);
    }
    cr_assert_eq(nfrees, 0, "free hook called %d times before anything was freed", nfrees);
    for (int i = 0; i < N; i++) free(v[i]);
    cr_assert_eq(nfrees, nallocs, "%d sampled blocks freed, %d free hook calls", nallocs, nfrees);
    for (int i = 0; i < nfrees; i++) {
        int found = 0;
        for (int k = 0; k < nallocs && !found; k++)
            found = frees[i].ptr == allocs[k].ptr && frees[i].size == allocs[k].size &&
                    frees[i].stack[0] == allocs[k].stack[0];
        cr_assert(found, "free hook for %p (%zu bytes) matches no sampled allocation", frees[i].ptr, frees[i].size);
    }

    /* the same through calloc */
    nallocs = nfrees = 0;
    for (int i = 0; i < N; i++) v[i] = calloc_site(SIZE);
    cr_assert_geq(nallocs, 10, "only %d sampled callocs of %d blocks of %d bytes", nallocs, N, SIZE);
    for (int i = 0; i < nallocs; i++) {
        uintptr_t r0 = (uintptr_t)allocs[i].stack[0];
        cr_assert(r0 > (uintptr_t)calloc_site && r0 < (uintptr_t)calloc_site + 256,
                  "first frame of a sampled calloc is %p, not in calloc_site (%p)", allocs[i].stack[0],
                  (void *)calloc_site);
    }
    for (int i = 0; i < N; i++) free(v[i]);
    cr_assert_eq(nfrees, nallocs);

    cr_assert_eq(ta_hooks_set(NULL, &old), 0);
    cr_assert(old.on_alloc == on_alloc && old.on_free == on_free && old.arg == &hook_arg);
    /* no hooks: nothing is called any more */
    int before = nallocs;
    for (int i = 0; i < N; i++) free(alloc_outer(SIZE));
    cr_assert_eq(nallocs, before);
}

Test(stats, hooks_may_allocate_and_their_allocations_are_not_sampled) {
    struct ta_hooks h = {on_alloc, on_free, &hook_arg};
    nallocs = nfrees = nested = 0;
    hook_mallocs = 64; /* 4 MiB per call: would be sampled 8 times on average */
    cr_assert_eq(hooks_set_here(&h), 0);
    enum { N = 512 };
    static void *v[N];
    for (int i = 0; i < N; i++) v[i] = malloc(64 << 10); /* 32 MiB */
    for (int i = 0; i < N; i++) free(v[i]);
    ta_hooks_set(NULL, NULL);
    hook_mallocs = 0;
    cr_assert_gt(nallocs, 0, "nothing sampled in 32 MiB");
    cr_assert_eq(nested, 0, "the hook was re-entered %d times from its own allocations", nested);
    cr_assert_eq(nfrees, nallocs);
}

Test(stats, sampled_blocks_behave_like_any_block) {
    /* realloc, calloc, aligned allocation and usable size of sampled blocks */
    struct ta_hooks h = {on_alloc, on_free, &hook_arg};
    nallocs = nfrees = nested = 0;
    hook_mallocs = 0;
    hooks_set_here(&h);
    enum { N = 4000 };
    static void *v[N];
    for (int i = 0; i < N; i++) {
        size_t n = 4096 + (size_t)(i % 7) * 1000;
        switch (i % 3) {
        case 0: v[i] = malloc(n); break;
        case 1: v[i] = calloc(1, n); break;
        default: cr_assert_eq(posix_memalign(&v[i], 256, n), 0); break;
        }
        cr_assert_not_null(v[i]);
        if (i % 3 == 1) {
            for (size_t k = 0; k < n; k += 512) cr_assert_eq(((unsigned char *)v[i])[k], 0);
        }
        if (i % 3 == 2) cr_assert_eq((uintptr_t)v[i] % 256, 0);
        cr_assert_geq(malloc_usable_size(v[i]), n);
        tu_fill_base(v[i], n, tu_mix((uint64_t)i)); /* independent of the address: realloc moves it */
    }
    int sampled = nallocs;
    cr_assert_gt(sampled, 0, "no sampled block among %d", N);
    for (int i = 0; i < N; i++) {
        size_t n = 4096 + (size_t)(i % 7) * 1000;
        void *q = realloc(v[i], 2 * n);
        cr_assert_not_null(q);
        cr_assert_eq(tu_check_base(q, n, tu_mix((uint64_t)i)), (size_t)-1, "realloc lost the contents of block %d", i);
        v[i] = q;
    }
    cr_assert_geq(nfrees, 1, "no sampled block was moved by realloc");
    for (int i = 0; i < N; i++) free(v[i]);
    ta_hooks_set(NULL, NULL);
    cr_assert_eq(nfrees, nallocs, "%d sampled blocks, %d freed", nallocs, nfrees);
    cr_assert_eq(nested, 0);
}
