/* test_central.c: tier 2 (central.c).  Objects travel as arrays of slots
 * (object, state byte): ta_central_alloc fills an array with distinct,
 * properly placed, FREE objects of the class, each with its own state byte; objects given back in whole and partial batches
 * return their spans to the page heap once drained; batches come back intact
 * (object for object, contents untouched) through the transfer caches, which
 * count hits and misses, halve once per decay period and overflow to the
 * spans; a refill's batch holds each span's objects highest first, fresh or
 * given back (release build); four threads working one class never receive the same object twice.
 *
 * Runs in both tier-1 modes (tests/test_central_perthread.sh sets
 * TIERALLOC_PERCPU=0): quiesce() empties whichever caches there are, so that
 * central holds only spans at the start of a test.
 *
 * The test's own malloc is tieralloc: sections whose counters are compared
 * exactly call nothing that allocates (no Criterion assertion, static arrays). */
#define _GNU_SOURCE 1
#include <criterion/criterion.h>

#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "pcache.h"

static void setup(void) {
    ta_ensure_init();
    ta_cfg.decay_ms = (uint64_t)1 << 40; /* no release behind the tests' back */
    /* one kind of tier-1 cache throughout a test: in auto mode the threads of
     * a test (and the test runner's) must not make the process switch
     * halfway (the switch has its tests in test_pcache; this binary runs
     * again with TIERALLOC_PERCPU=1 and =0) */
    if (ta_cfg.percpu == TA_PERCPU_AUTO) ta_cfg.percpu_threads = 1u << 20;
}
TestSuite(central, .init = setup, .timeout = 60);

/* ---- a set of pointers without malloc (linear probing, backward-shift delete) */
#define SET_BITS 17
#define SET_SIZE ((size_t)1 << SET_BITS)
typedef struct {
    pthread_mutex_t lock;
    size_t n;
    uintptr_t slot[SET_SIZE];
} ptrset_t;

static size_t set_hash(uintptr_t p) { return (size_t)((p * 0x9e3779b97f4a7c15ull) >> (64 - SET_BITS)); }
static void set_clear(ptrset_t *s) {
    memset(s->slot, 0, sizeof s->slot);
    s->n = 0;
    pthread_mutex_init(&s->lock, NULL);
}
/* false if p was already there */
static bool set_add(ptrset_t *s, const void *p) {
    uintptr_t k = (uintptr_t)p;
    for (size_t i = set_hash(k);; i = (i + 1) & (SET_SIZE - 1)) {
        if (s->slot[i] == k) return false;
        if (!s->slot[i]) {
            s->slot[i] = k;
            s->n++;
            return true;
        }
    }
}
/* false if p was not there */
static bool set_del(ptrset_t *s, const void *p) {
    uintptr_t k = (uintptr_t)p;
    size_t i = set_hash(k);
    while (s->slot[i] != k) {
        if (!s->slot[i]) return false;
        i = (i + 1) & (SET_SIZE - 1);
    }
    s->slot[i] = 0;
    s->n--;
    for (size_t j = (i + 1) & (SET_SIZE - 1); s->slot[j]; j = (j + 1) & (SET_SIZE - 1)) {
        size_t h = set_hash(s->slot[j]);
        /* move slot j to the hole i unless its home lies cyclically in (i, j] */
        bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            s->slot[i] = s->slot[j];
            s->slot[j] = 0;
            i = j;
        }
    }
    return true;
}
static bool set_add_locked(ptrset_t *s, const void *p) {
    pthread_mutex_lock(&s->lock);
    bool r = set_add(s, p);
    pthread_mutex_unlock(&s->lock);
    return r;
}
static bool set_del_locked(ptrset_t *s, const void *p) {
    pthread_mutex_lock(&s->lock);
    bool r = set_del(s, p);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static ptrset_t seen;

/* NULL if p is a proper free object of class cls, else what is wrong with it */
static const char *bad_object(const void *p, uint32_t cls) {
    uintptr_t a = (uintptr_t)p, page = a >> TA_PAGE_SHIFT;
    if (!p) return "NULL in the array";
    if (a % TA_ALIGN) return "misaligned";
    uint64_t info = ta_pagemap_info(page);
    if (TA_INFO_CLASS(info) != cls) return "page info names another class";
    ta_span_t *s = ta_pagemap_span(page);
    if (!s) return "page has no span";
    if (s->cls != cls) return "span of another class";
    if (s->state != TA_SPAN_INUSE) return "span not in use";
    if (page - s->page != TA_INFO_PAGE_INDEX(info)) return "info page index disagrees with span";
    size_t off = a - (uintptr_t)ta_span_addr(s);
    if (off % ta_class[cls].size) return "not at an object boundary";
    if (off + ta_class[cls].size > (size_t)ta_class[cls].objects * ta_class[cls].size) return "past the span's objects";
    if (!ta_obj_cached_state(*ta_state_of(p, cls))) return "state byte is not FREE or ZERO (central hands out free objects)";
    return NULL;
}

/* Check n objects of an array; NULL or an error message. */
static const char *check(void *const *objs, uint32_t n, uint32_t cls) {
    for (uint32_t i = 0; i < n; i++) {
        const char *e = bad_object(objs[i], cls);
        if (e) return e;
    }
    return NULL;
}

/* A clean starting point: the calling thread's cache, every CPU's cache and
 * the transfer caches emptied, so central holds only spans. */
static void quiesce(void) {
    ta_pcache_flush_current();
    ta_pcache_drain_all();
    ta_central_drain();
}

/* the number of transfer-cache shards central uses (central.c: one per CPU, at most 4) */
static uint32_t nshards(void) { return ta_cfg.ncpu < 1 ? 1 : ta_cfg.ncpu > 4 ? 4 : (uint32_t)ta_cfg.ncpu; }

#define MAXOBJ 8192

/* Central moves slots (an object and the address of its state byte); these
 * tests work on objects.  c_alloc also checks that every slot it gets carries
 * its object's own state byte, c_free and c_free_spans pass the right ones.
 * (A thread's own buffer, no malloc: see above.) */
static __thread ta_slot_t wrap_buf[MAXOBJ];
/* (others: as a CPU cache's refill, which may take what other shards park
 * above their keep; c_alloc_own: as a thread cache's, which never does) */
static uint32_t c_alloc_as(uint32_t cls, void **out, uint32_t want, uint32_t shard, bool others) {
    if (want > MAXOBJ) abort();
    uint32_t got = ta_central_alloc(cls, wrap_buf, want, shard, others);
    for (uint32_t i = 0; i < got; i++) {
        if (wrap_buf[i].state != ta_state_of(wrap_buf[i].obj, cls)) abort();
        out[i] = wrap_buf[i].obj;
    }
    return got;
}
static uint32_t c_alloc(uint32_t cls, void **out, uint32_t want, uint32_t shard) { return c_alloc_as(cls, out, want, shard, true); }
static uint32_t c_alloc_own(uint32_t cls, void **out, uint32_t want, uint32_t shard) { return c_alloc_as(cls, out, want, shard, false); }
static const ta_slot_t *to_slots(uint32_t cls, void *const *objs, uint32_t n) {
    if (n > MAXOBJ) abort();
    for (uint32_t i = 0; i < n; i++) wrap_buf[i] = (ta_slot_t){objs[i], ta_state_of(objs[i], cls)};
    return wrap_buf;
}
static void c_free(uint32_t cls, void *const *objs, uint32_t n) { /* (each to its own shard's transfer cache) */
    ta_central_free(cls, to_slots(cls, objs, n), n);
}
static void c_free_spans(uint32_t cls, void *const *objs, uint32_t n) {
    ta_central_free_spans(cls, to_slots(cls, objs, n), n);
}
static void *objs[MAXOBJ];

/* Every free object of the class's spans, taken by the shard whose list holds
 * its span (after quiesce() the transfer caches are empty, so a refill of a
 * shard with a listed span takes from it): no shard has a span of the class
 * listed afterwards, so what a test takes next comes from spans it sees
 * carved.  The objects stay in held[] until release_held(). */
static void *held[MAXOBJ];
static uint32_t nheld;
static void hold_all_free(uint32_t c) {
    nheld = 0;
    for (uint32_t sh = 0; sh < nshards(); sh++)
        while (ta_central_listed(c, sh) && nheld < MAXOBJ && c_alloc(c, held + nheld, 1, sh)) nheld++;
    for (uint32_t sh = 0; sh < nshards(); sh++)
        cr_assert_eq(ta_central_listed(c, sh), 0u, "class %u: shard %u still lists a span", c, sh);
}
static void release_held(uint32_t c) {
    c_free_spans(c, held, nheld);
    nheld = 0;
}

Test(central, arrays_hold_distinct_valid_objects) {
    quiesce();
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        const uint32_t batch = ta_class[c].batch, per_span = ta_class[c].objects;
        const uint32_t wants[] = {1, 2, batch, batch + 1, per_span + 3};
        for (size_t w = 0; w < sizeof wants / sizeof wants[0]; w++) {
            uint32_t want = wants[w];
            if (want > MAXOBJ) continue;
            uint32_t n = c_alloc(c, objs, want, 0);
            cr_assert_eq(n, want, "class %u: asked %u, got %u", c, want, n);
            const char *e = check(objs, n, c);
            cr_assert_null(e, "class %u (size %u), want %u: object %s", c, ta_class[c].size, want, e);
            set_clear(&seen);
            for (uint32_t i = 0; i < n; i++)
                cr_assert(set_add(&seen, objs[i]), "class %u: object %p twice in one array", c, objs[i]);
            /* the objects are usable memory of the full class size */
            for (uint32_t i = 0; i < n; i++) memset(objs[i], 0x6b, ta_class[c].size);
            /* give them back: a whole batch when there is one, then odd pieces */
            uint32_t done = 0;
            if (n >= batch) {
                c_free(c, objs, batch);
                done = batch;
            }
            while (done < n) {
                uint32_t k = n - done > 3 ? 3 : n - done;
                c_free(c, objs + done, k);
                done += k;
            }
        }
    }
    ta_central_drain();
}

/* Whatever is handed out and given back (whole and partial batches, in any
 * order, through any shard or straight to the spans) leaves no span behind
 * once drained. */
static void round_trip_returns_spans(uint32_t c, uint32_t spans_worth) {
    const uint32_t batch = ta_class[c].batch;
    uint32_t total = ta_class[c].objects * spans_worth;
    if (total > MAXOBJ) total = MAXOBJ;
    ta_pageheap_stats_t h0, h1, h2;
    ta_central_stats_t c0, c1, c2;
    uint32_t n = 0, calls = 0;
    const char *bad = NULL;

    quiesce();
    ta_pageheap_stats(&h0);
    ta_central_stats(c, &c0);
    /* take: batches and odd counts */
    while (n < total) {
        uint32_t want = (calls % 3 == 0) ? batch : 1 + (calls * 7) % (batch + 5);
        if (want > total - n) want = total - n;
        uint32_t got = c_alloc(c, objs + n, want, calls % 4);
        if (!got) break;
        if (got != want && !bad) bad = "short array";
        const char *e = check(objs + n, got, c);
        if (e && !bad) bad = e;
        n += got;
        calls++;
    }
    ta_pageheap_stats(&h1);
    ta_central_stats(c, &c1);
    /* give back: reverse order, alternating whole batches and partial ones;
     * every fifth straight to the spans */
    uint32_t left = n, k = 0;
    while (left) {
        uint32_t m = (k % 2 == 0) ? batch : 1 + k % (batch > 1 ? batch - 1 : 1);
        if (m > left) m = left;
        if (k % 5 == 4) c_free_spans(c, objs + left - m, m);
        else c_free(c, objs + left - m, m);
        left -= m;
        k++;
    }
    ta_central_drain();
    ta_pageheap_stats(&h2);
    ta_central_stats(c, &c2);

    cr_assert_null(bad, "class %u: %s", c, bad);
    cr_assert_eq(n, total, "class %u: got %u of %u objects", c, n, total);
    cr_assert_eq(c1.to_caches - c0.to_caches, (uint64_t)n, "class %u: to_caches counted %lu of %u", c,
                 (unsigned long)(c1.to_caches - c0.to_caches), n);
    cr_assert_eq(c2.from_caches - c1.from_caches, (uint64_t)n, "class %u: from_caches counted %lu of %u", c,
                 (unsigned long)(c2.from_caches - c1.from_caches), n);
    /* conservation: every object came from free space already in the class's
     * spans or from spans newly taken from the page heap */
    uint64_t new_spans = (h1.inuse_bytes - h0.inuse_bytes) / ((uint64_t)ta_class[c].pages * TA_PAGE_SIZE);
    cr_assert_geq(new_spans * ta_class[c].objects + c0.span_free_bytes / ta_class[c].size, (uint64_t)n,
                  "class %u: %u objects out of %lu new spans and %lu free bytes", c, n, (unsigned long)new_spans,
                  (unsigned long)c0.span_free_bytes);
    cr_assert_eq(h2.inuse_bytes, h0.inuse_bytes, "class %u: %ld bytes of spans not returned after drain", c,
                 (long)(h2.inuse_bytes - h0.inuse_bytes));
    cr_assert_eq(c2.transfer_bytes, 0u, "class %u: transfer caches hold %lu bytes after drain", c,
                 (unsigned long)c2.transfer_bytes);
    cr_assert_eq(c2.span_free_bytes, c0.span_free_bytes, "class %u: free bytes in spans %lu, were %lu", c,
                 (unsigned long)c2.span_free_bytes, (unsigned long)c0.span_free_bytes);
}

Test(central, spans_return_to_page_heap_small) {
    round_trip_returns_spans(ta_size_to_class(16), 5);
    round_trip_returns_spans(ta_size_to_class(112), 4);
}
Test(central, spans_return_to_page_heap_medium) {
    round_trip_returns_spans(ta_size_to_class(1000), 6);
    round_trip_returns_spans(ta_size_to_class(5000), 5);
}
Test(central, spans_return_to_page_heap_large) {
    round_trip_returns_spans(ta_size_to_class(40000), 4);
    round_trip_returns_spans(ta_size_to_class(TA_MAX_SMALL), 6);
}

Test(central, every_class_round_trips) {
    for (uint32_t c = 1; c < ta_nclasses; c++) round_trip_returns_spans(c, 2);
}

/* Batches given back whole are handed out again unchanged: the same objects
 * in the same order, their contents (all of them: nothing is linked through
 * the objects any more) untouched; the transfer cache accounts for them. */
Test(central, batches_survive_the_transfer_cache) {
    const uint32_t c = ta_size_to_class(96), batch = ta_class[c].batch, size = ta_class[c].size;
    enum { K = 2 };
    static void *given[K][MAXOBJ / K], *back[K][MAXOBJ / K];
    cr_assert_leq(batch, MAXOBJ / K);
    quiesce();
    for (int i = 0; i < K; i++) {
        uint32_t got = c_alloc(c, given[i], batch, 0);
        cr_assert_eq(got, batch, "asked a batch of %u, got %u", batch, got);
        cr_assert_null(check(given[i], batch, c));
        for (uint32_t j = 0; j < batch; j++) memset(given[i][j], (int)(i * 31 + j) & 0xff, size);
    }
    ta_central_stats_t s0, s1, s2;
    uint32_t got[K];
    ta_central_stats(c, &s0);
    for (int i = 0; i < K; i++) c_free(c, given[i], batch);
    ta_central_stats(c, &s1);
    for (int i = 0; i < K; i++) got[i] = c_alloc(c, back[i], batch, 0);
    ta_central_stats(c, &s2);

    cr_assert_eq(s1.transfer_bytes - s0.transfer_bytes, (uint64_t)K * batch * size,
                 "transfer caches grew by %lu bytes for %d batches", (unsigned long)(s1.transfer_bytes - s0.transfer_bytes),
                 K);
    cr_assert_eq(s2.transfer_bytes, s0.transfer_bytes);
    cr_assert_eq(s2.hits - s1.hits, (uint64_t)K, "%lu transfer hits for %d batches", (unsigned long)(s2.hits - s1.hits),
                 K);
    cr_assert_eq(s2.misses, s1.misses);
    /* LIFO: the last batch given back comes out first, object for object */
    for (int i = 0; i < K; i++) {
        int from = K - 1 - i;
        cr_assert_eq(got[i], batch);
        for (uint32_t j = 0; j < batch; j++) {
            cr_assert_eq(back[i][j], given[from][j], "batch %d object %u differs", i, j);
            const unsigned char *b = back[i][j];
            for (uint32_t x = 0; x < size; x++)
                cr_assert_eq(b[x], (unsigned char)((from * 31 + j) & 0xff), "object %p byte %u changed in transit",
                             back[i][j], x);
        }
    }
    for (int i = 0; i < K; i++) c_free(c, back[i], batch);
    ta_central_drain();
    ta_central_stats(c, &s2);
    cr_assert_eq(s2.transfer_bytes, 0u);
}

/* A refill that wants part of a batch, of a shard with neither a transfer
 * cache nor spans of its own, takes what it asks from the objects parked in
 * another shard above what that shard keeps (its own is empty: a miss
 * there); the rest stays parked. */
Test(central, partial_refill_takes_from_another_shard) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), batch = ta_class[c].batch, size = ta_class[c].size;
    const uint32_t parked = ta_central_keep(c) + batch; /* a batch above the kept ones */
    static void *mine[MAXOBJ], *part[MAXOBJ];
    cr_assert_leq(parked, MAXOBJ);
    quiesce();
    hold_all_free(c); /* shard 0 has no span of the class listed */
    cr_assert_geq(batch, 8u);
    uint32_t got = c_alloc(c, mine, parked, 1); /* fresh spans of shard 1 */
    cr_assert_eq(got, parked);
    c_free(c, mine, parked); /* parked in shard 1 */
    ta_central_stats_t s0, s1;
    ta_central_stats(c, &s0);
    const uint32_t want = 3;
    uint32_t n = c_alloc(c, part, want, 0); /* from shard 0: looks at the others too */
    ta_central_stats(c, &s1);
    cr_assert_eq(n, want, "asked %u, got %u", want, n);
    const char *e = check(part, n, c);
    cr_assert_null(e, "%s", e);
    /* the top of the parked array */
    for (uint32_t i = 0; i < n; i++) cr_assert_eq(part[i], mine[parked - want + i]);
    cr_assert_eq(s0.transfer_bytes - s1.transfer_bytes, (uint64_t)want * size, "transfer caches gave %lu bytes",
                 (unsigned long)(s0.transfer_bytes - s1.transfer_bytes));
    cr_assert_eq(s1.span_free_bytes, s0.span_free_bytes, "the spans were touched");
    cr_assert_eq(s1.hits - s0.hits, 1u);
    cr_assert_eq(s1.misses - s0.misses, 1u, "the empty own shard is a miss");
    c_free(c, part, n);
    ta_central_drain();
    release_held(c);
}

static ta_span_t *span_of(const void *p) { return ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT); }

/* What a shard flushed, up to ta_central_keep objects, stays its own: a
 * refill of another shard with nothing else to take carves a fresh span
 * rather than take them (the two threads would otherwise share the objects'
 * cache lines), and takes only what lies above when there is more.  The
 * shard takes its objects back itself. */
Test(central, a_refill_leaves_another_shard_what_it_keeps) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), size = ta_class[c].size, keep = ta_central_keep(c);
    const uint32_t per_span = ta_class[c].objects;
    static void *kept[MAXOBJ], *x[MAXOBJ], *back[MAXOBJ];
    cr_assert_eq(keep, 2u * ta_class[c].batch < 8192 / size ? 2u * ta_class[c].batch : 8192 / size);
    cr_assert_gt(keep, 4u);
    cr_assert_leq(keep + 4, MAXOBJ);
    cr_assert_leq(per_span, MAXOBJ);
    quiesce();
    hold_all_free(c);
    cr_assert_eq(c_alloc(c, kept, keep + 4, 1), keep + 4);
    c_free(c, kept, keep); /* exactly what shard 1 keeps */
    ta_central_stats_t s0, s1;
    ta_central_stats(c, &s0);
    cr_assert_eq(c_alloc(c, x, per_span, 0), per_span); /* a fresh span, all of it */
    ta_central_stats(c, &s1);
    cr_assert_eq(s1.transfer_bytes, s0.transfer_bytes, "shard 0 took objects shard 1 keeps");
    for (uint32_t i = 0; i < per_span; i++) {
        cr_assert_eq(span_of(x[i]), span_of(x[0]), "object %u is from a second span", i);
        for (uint32_t j = 0; j < keep; j++) cr_assert_neq(x[i], kept[j]);
    }
    cr_assert_eq(span_of(x[0])->shard, 0u);
    cr_assert_eq(ta_central_listed(c, 0), 0u);
    /* four more parked: shard 0 takes those four, the top of the array */
    c_free(c, kept + keep, 4);
    void *y[8];
    uint32_t n = c_alloc(c, y, 8, 0);
    cr_assert_eq(n, 8u);
    for (uint32_t i = 0; i < 4; i++) cr_assert_eq(y[i], kept[keep + i], "object %u is not one above what shard 1 keeps", i);
    for (uint32_t i = 4; i < 8; i++) cr_assert_eq(span_of(y[i])->shard, 0u, "object %u is not from a span of shard 0", i);
    /* shard 1 gets its own back */
    cr_assert_eq(c_alloc(c, back, keep, 1), keep);
    for (uint32_t i = 0; i < keep; i++) cr_assert_eq(back[i], kept[i], "shard 1 did not get object %u back", i);
    const char *e = check(back, keep, c);
    cr_assert_null(e, "%s", e);
    c_free(c, back, keep);
    c_free(c, x, per_span);
    c_free(c, y, n);
    ta_central_drain();
    release_held(c);
}

/* Objects go home: whoever gives them back, they land in the transfer cache
 * of their span's shard, and a refill of that shard takes them first.  And a
 * thread cache's refill (c_alloc_own) takes nothing another shard parked, as
 * much as lies above its keep: it would keep those objects, and the two
 * threads would write the same state-byte lines from then on; it carves a
 * fresh span of its own instead. */
Test(central, objects_go_home_and_thread_caches_take_only_their_own) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), batch = ta_class[c].batch, size = ta_class[c].size;
    const uint32_t parked = ta_central_keep(c) + 2 * batch; /* well above what shard 1 keeps */
    static void *theirs[MAXOBJ], *mine[MAXOBJ], *again[MAXOBJ];
    cr_assert_leq(parked, MAXOBJ);
    quiesce();
    hold_all_free(c);
    cr_assert_eq(c_alloc(c, theirs, parked, 1), parked); /* fresh spans of shard 1 */
    for (uint32_t i = 0; i < parked; i++) cr_assert_eq(span_of(theirs[i])->shard, 1u);
    ta_central_stats_t s0, s1, s2;
    ta_central_stats(c, &s0);
    c_free(c, theirs, parked); /* given back by anyone: parked in shard 1's transfer cache */
    ta_central_stats(c, &s1);
    cr_assert_eq(s1.transfer_bytes - s0.transfer_bytes, (uint64_t)parked * size);
    /* a thread cache of shard 0: a fresh span of its own, not shard 1's objects */
    uint32_t n = c_alloc_own(c, mine, batch, 0);
    ta_central_stats(c, &s2);
    cr_assert_eq(n, batch);
    cr_assert_eq(s2.transfer_bytes, s1.transfer_bytes, "a thread cache of shard 0 took shard 1's objects");
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(span_of(mine[i])->shard, 0u, "object %u is not from a span of shard 0", i);
        for (uint32_t j = 0; j < parked; j++) cr_assert_neq(mine[i], theirs[j]);
    }
    /* shard 1 takes its own back from its transfer cache (a hit, no span touched) */
    uint32_t k = c_alloc_own(c, again, parked, 1);
    cr_assert_eq(k, parked);
    for (uint32_t i = 0; i < k; i++) cr_assert_eq(span_of(again[i])->shard, 1u, "object %u is not shard 1's", i);
    const char *e = check(again, k, c);
    cr_assert_null(e, "%s", e);
    c_free(c, again, k);
    c_free(c, mine, n);
    ta_central_drain();
    release_held(c);
}

/* A shard that has spans of its own refills from them before it takes a batch
 * parked in another shard's transfer cache: the objects of a span stay with
 * the CPU that carved it. */
Test(central, refill_takes_own_spans_before_another_shards_batch) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), batch = ta_class[c].batch, per_span = ta_class[c].objects;
    static void *a[MAXOBJ], *b[MAXOBJ], *part[MAXOBJ];
    cr_assert_leq(per_span, MAXOBJ);
    quiesce();
    hold_all_free(c);
    /* shard 1 carves a whole span, shard 0 another (no span is listed, and
     * shard 1's is full: nothing to take but a fresh one) */
    cr_assert_eq(c_alloc(c, b, per_span, 1), per_span);
    cr_assert_eq(c_alloc(c, a, per_span, 0), per_span);
    ta_span_t *sa = span_of(a[0]), *sb = span_of(b[0]);
    cr_assert_neq(sa, sb);
    cr_assert_eq(sa->shard, 0u);
    cr_assert_eq(sb->shard, 1u);
    for (uint32_t i = 0; i < per_span; i++) cr_assert(span_of(a[i]) == sa && span_of(b[i]) == sb);
    c_free_spans(c, a, 4);         /* four objects back into shard 0's span: listed */
    c_free(c, b, batch);        /* a batch parked in shard 1's transfer cache */
    cr_assert_eq(ta_central_listed(c, 0), 1u);
    ta_central_stats_t s0, s1;
    ta_central_stats(c, &s0);
    uint32_t n = c_alloc(c, part, 3, 0);
    ta_central_stats(c, &s1);
    cr_assert_eq(n, 3u);
    for (uint32_t i = 0; i < n; i++) cr_assert_eq(span_of(part[i]), sa, "object %u is not from shard 0's span", i);
    cr_assert_eq(s1.transfer_bytes, s0.transfer_bytes, "the other shard's batch was taken");
    cr_assert_eq(s0.span_free_bytes - s1.span_free_bytes, 3ull * ta_class[c].size);
    c_free_spans(c, part, n);
    c_free_spans(c, a + 4, per_span - 4);
    c_free_spans(c, b + batch, per_span - batch);
    ta_central_drain();
    release_held(c);
}

/* A shard without spans of its own and with its fresh credit spent takes
 * another shard's span that has had objects back (and it becomes its own)
 * before it carves a fresh one; a span its owner is still carving (fresh) it
 * leaves alone. */
Test(central, empty_shard_takes_a_used_span_not_a_fresh_one) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), per_span = ta_class[c].objects;
    const uint64_t span_bytes = ((uint64_t)ta_class[c].pages + TA_GUARD_PAGES) * TA_PAGE_SIZE; /* (hardened: a guard) */
    static void *b[MAXOBJ];
    void *x, *y;
    ta_pageheap_stats_t h0, h1, h2;
    quiesce();
    ta_central_fresh_credit_set(0);
    hold_all_free(c);
    /* a fresh span of shard 1, partly carved: shard 0 carves its own */
    cr_assert_eq(c_alloc(c, b, 2, 1), 2u);
    ta_span_t *sb = span_of(b[0]);
    ta_pageheap_stats(&h0);
    cr_assert_eq(c_alloc(c, &x, 1, 0), 1u);
    ta_pageheap_stats(&h1);
    cr_assert_neq(span_of(x), sb, "shard 0 took an object of shard 1's fresh span");
    cr_assert_eq(span_of(x)->shard, 0u);
    cr_assert_eq(h1.inuse_bytes - h0.inuse_bytes, span_bytes);
    c_free_spans(c, &x, 1); /* shard 0's span goes back to the page heap */
    /* shard 1's span, carved to the end and then given an object back: shard 0 takes it */
    cr_assert_eq(c_alloc(c, b + 2, per_span - 2, 1), per_span - 2);
    for (uint32_t i = 0; i < per_span; i++) cr_assert_eq(span_of(b[i]), sb);
    c_free_spans(c, b, 1);
    cr_assert_eq(ta_central_listed(c, 1), 1u);
    ta_pageheap_stats(&h1);
    cr_assert_eq(c_alloc(c, &y, 1, 0), 1u);
    ta_pageheap_stats(&h2);
    cr_assert_eq(y, b[0], "shard 0 did not take the free object of shard 1's span");
    cr_assert_eq(h2.inuse_bytes, h1.inuse_bytes, "a span was carved while another had a free object");
    cr_assert_eq(sb->shard, 0u, "the span taken is not shard 0's now");
    c_free_spans(c, &y, 1);
    cr_assert_eq(ta_central_listed(c, 0), 1u, "the span's objects do not come back to its new owner");
    cr_assert_eq(ta_central_listed(c, 1), 0u);
    c_free_spans(c, b + 1, per_span - 1);
    ta_central_drain();
    release_held(c);
    ta_central_fresh_credit_set(TA_FRESH_CREDIT_BYTES);
}

/* While its fresh credit lasts, a shard without spans of its own carves a
 * fresh span rather than take another shard's that still holds that shard's
 * objects (they would share state-byte lines); with the credit spent it
 * takes it; the next decay period gives the credit back. */
Test(central, empty_shard_carves_its_own_span_while_its_credit_lasts) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    const uint32_t c = ta_size_to_class(96), per_span = ta_class[c].objects;
    const uint64_t span_bytes = ((uint64_t)ta_class[c].pages + TA_GUARD_PAGES) * TA_PAGE_SIZE; /* (hardened: a guard) */
    const uint64_t credit_span = (uint64_t)ta_class[c].pages << TA_PAGE_SHIFT; /* what a carve costs */
    static void *b[MAXOBJ];
    void *x, *y, *z;
    ta_pageheap_stats_t h0, h1, h2, h3;
    quiesce();
    hold_all_free(c);
    /* shard 1's span, carved to the end, one object back: a span shard 0 could take */
    cr_assert_leq(per_span, MAXOBJ);
    cr_assert_eq(c_alloc(c, b, per_span, 1), per_span);
    ta_span_t *sb = span_of(b[0]);
    for (uint32_t i = 0; i < per_span; i++) cr_assert_eq(span_of(b[i]), sb);
    c_free_spans(c, b, 1);
    cr_assert_eq(ta_central_listed(c, 1), 1u);
    /* credit for one span: shard 0 carves its own */
    ta_central_fresh_credit_set(credit_span);
    ta_pageheap_stats(&h0);
    cr_assert_eq(c_alloc(c, &x, 1, 0), 1u);
    ta_pageheap_stats(&h1);
    cr_assert_neq(span_of(x), sb, "shard 0 took shard 1's span with credit left");
    cr_assert_eq(span_of(x)->shard, 0u);
    cr_assert_eq(h1.inuse_bytes - h0.inuse_bytes, span_bytes, "no fresh span was carved");
    cr_assert_eq(sb->shard, 1u);
    /* its own span emptied and given back, the credit spent: it takes shard 1's */
    c_free_spans(c, &x, 1);
    cr_assert_eq(ta_central_listed(c, 0), 0u, "shard 0's emptied span stayed listed");
    cr_assert_eq(c_alloc(c, &y, 1, 0), 1u);
    ta_pageheap_stats(&h2);
    cr_assert_eq(y, b[0], "with its credit spent, shard 0 did not take the free object of shard 1's span");
    cr_assert_eq(sb->shard, 0u);
    cr_assert_eq(h2.inuse_bytes, h0.inuse_bytes, "a span was carved with the credit spent");
    /* a new decay period: credit again, so shard 1 (now without spans) carves */
    c_free_spans(c, &y, 1);
    cr_assert_eq(ta_central_listed(c, 0), 1u);
    uint64_t decay = ta_cfg.decay_ms;
    ta_cfg.decay_ms = 0; /* every call is a new period */
    ta_central_tick(ta_os_now_ms());
    ta_cfg.decay_ms = decay;
    cr_assert_eq(c_alloc(c, &z, 1, 1), 1u);
    ta_pageheap_stats(&h3);
    cr_assert_neq(span_of(z), sb, "after a decay period, shard 1 took shard 0's span instead of carving");
    cr_assert_eq(h3.inuse_bytes - h2.inuse_bytes, span_bytes);
    c_free_spans(c, &z, 1);
    c_free_spans(c, b + 1, per_span - 1);
    ta_central_drain();
    release_held(c);
    ta_central_fresh_credit_set(TA_FRESH_CREDIT_BYTES);
}

/* Once per decay period a transfer cache used in the period gives half of
 * what it holds back to the spans (at most 256 objects of a class per shard
 * and period), one nobody used gives back all: a cache nobody uses drains
 * away, at once once it is idle. */
Test(central, transfer_caches_decay_by_half_and_idle_ones_at_once) {
    const uint32_t c = ta_size_to_class(160), batch = ta_class[c].batch, size = ta_class[c].size;
    enum { K = 4 };
    static void *objs4[K][MAXOBJ / K];
    cr_assert_leq(batch, MAXOBJ / K);
    quiesce();
    for (int i = 0; i < K; i++) {
        cr_assert_eq(c_alloc(c, objs4[i], batch, 0), batch);
        cr_assert_null(check(objs4[i], batch, c));
    }
    for (int i = 0; i < K; i++) c_free(c, objs4[i], batch);
    ta_central_stats_t s0, s1, s2, s3;
    ta_central_stats(c, &s0);
    cr_assert_eq(s0.transfer_bytes, (uint64_t)K * batch * size);
    ta_cfg.decay_ms = 0; /* every call is a new period */
    ta_central_tick(ta_os_now_ms()); /* used (the frees above): half */
    ta_central_stats(c, &s1);
    void *one[1];
    cr_assert_eq(c_alloc(c, one, 1, 0), 1u); /* used again in the next period, */
    c_free(c, one, 1);                    /* as much held as before */
    ta_central_tick(ta_os_now_ms()); /* half again */
    ta_central_stats(c, &s2);
    ta_central_tick(ta_os_now_ms()); /* not used since: all */
    ta_central_stats(c, &s3);
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    uint64_t n0 = (uint64_t)K * batch, h = (n0 + 1) / 2 > 256 ? 256 : (n0 + 1) / 2, n1 = n0 - h;
    h = (n1 + 1) / 2 > 256 ? 256 : (n1 + 1) / 2;
    uint64_t n2 = n1 - h;
    cr_assert_eq(s1.transfer_bytes, n1 * size, "one period: %lu bytes left, want %lu", (unsigned long)s1.transfer_bytes,
                 (unsigned long)(n1 * size));
    cr_assert_eq(s2.transfer_bytes, n2 * size, "two periods: %lu bytes left, want %lu", (unsigned long)s2.transfer_bytes,
                 (unsigned long)(n2 * size));
    cr_assert_gt(n2, 0u);
    cr_assert_eq(s3.transfer_bytes, 0u, "a period unused: %lu bytes left", (unsigned long)s3.transfer_bytes);
}

/* The transfer cache holds a bounded amount; beyond it objects go to spans,
 * and nothing is lost either way. */
Test(central, transfer_cache_overflow_goes_to_spans) {
    const uint32_t c = ta_size_to_class(2048), batch = ta_class[c].batch, size = ta_class[c].size;
    uint32_t nb = MAXOBJ / batch;
    if (nb > 48) nb = 48;
    ta_pageheap_stats_t h0, h2;
    ta_central_stats_t s1;
    uint32_t n = 0;
    const char *bad = NULL;
    quiesce();
    ta_pageheap_stats(&h0);
    for (uint32_t i = 0; i < nb; i++) {
        uint32_t got = c_alloc(c, objs + n, batch, 0);
        if (got != batch && !bad) bad = "short array";
        const char *e = check(objs + n, got, c);
        if (e && !bad) bad = e;
        n += got;
    }
    for (uint32_t i = 0; i < nb; i++) c_free(c, objs + i * batch, batch);
    ta_central_stats(c, &s1);
    ta_central_drain();
    ta_pageheap_stats(&h2);
    cr_assert_null(bad, "%s", bad);
    /* a transfer cache is a cache, not a second heap: about 128 KiB of a class
     * (at least two batches) per shard.  The statistics sum the shards, and the
     * objects may come from more than one: a refill that finds no span of
     * its own shard takes another shard's, whose objects (their state bytes
     * on that shard's pages) go home to that shard's cache (stop 46's CI, per-CPU
     * caches: 143 360 bytes, 70 objects, against 131 072 for one shard) */
    uint64_t cap = (uint64_t)128 << 10;
    if (cap < 2ull * batch * size) cap = 2ull * batch * size;
    cr_assert_gt(s1.transfer_bytes, 0u);
    cr_assert_leq(s1.transfer_bytes, cap * nshards(), "transfer caches hold %lu bytes (%u shards)",
                  (unsigned long)s1.transfer_bytes, nshards());
    cr_assert_lt(s1.transfer_bytes, (uint64_t)n * size, "nothing overflowed to the spans");
    cr_assert_eq(h2.inuse_bytes, h0.inuse_bytes);
}

/* Straight to the spans: the transfer caches are bypassed, so whole spans
 * go back to the page heap at once. */
Test(central, free_spans_bypasses_the_transfer_cache) {
    const uint32_t c = ta_size_to_class(4000);
    const uint32_t n = ta_class[c].objects * 3 > MAXOBJ ? MAXOBJ : ta_class[c].objects * 3;
    ta_pageheap_stats_t h0, h1;
    ta_central_stats_t s0, s1;
    quiesce();
    ta_pageheap_stats(&h0);
    ta_central_stats(c, &s0);
    uint32_t got = 0;
    while (got < n) {
        uint32_t k = c_alloc(c, objs + got, n - got > 64 ? 64 : n - got, 0);
        if (!k) break;
        got += k;
    }
    c_free_spans(c, objs, got);
    ta_central_stats(c, &s1);
    ta_pageheap_stats(&h1);
    cr_assert_eq(got, n);
    cr_assert_eq(s1.transfer_bytes, 0u, "objects went into a transfer cache");
    cr_assert_eq(s1.from_caches - s0.from_caches, (uint64_t)n);
    cr_assert_eq(h1.inuse_bytes, h0.inuse_bytes, "%ld bytes of spans kept", (long)(h1.inuse_bytes - h0.inuse_bytes));
    cr_assert_eq(s1.span_free_bytes, s0.span_free_bytes);
}

/* A refill's batch holds each span's objects highest address first (tier 1
 * pops from the end, so a span's objects go out lowest first): fresh ones
 * carved, and ones given back in random order and taken again. */
static void check_highest_first(uint32_t c, void *const *o, uint32_t n, const char *what) {
    for (uint32_t i = 1; i < n; i++) {
        ta_span_t *a = ta_pagemap_span((uintptr_t)o[i - 1] >> TA_PAGE_SHIFT), *b = ta_pagemap_span((uintptr_t)o[i] >> TA_PAGE_SHIFT);
        cr_assert(a && b && a->cls == c && b->cls == c, "%s: object %u not of class %u", what, i, c);
        if (a == b)
            cr_assert_gt((uintptr_t)o[i - 1], (uintptr_t)o[i], "%s: objects %u and %u of one span in rising order", what, i - 1, i);
    }
}
Test(central, refill_batches_hold_each_span_highest_first) {
#ifdef TA_HARDENED
    cr_skip_test("hardened build: a fresh span's objects go out shuffled, given-back ones from a free list");
#endif
    const uint32_t c = ta_size_to_class(200);
    const uint32_t per_span = ta_class[c].objects;
    quiesce();
    hold_all_free(c);
    /* two spans' worth, from fresh spans */
    uint32_t n = 2 * per_span > MAXOBJ ? MAXOBJ : 2 * per_span, got = 0;
    while (got < n) {
        uint32_t k = c_alloc(c, objs + got, n - got, 0);
        if (!k) break;
        check_highest_first(c, objs + got, k, "fresh");
        got += k;
    }
    cr_assert_eq(got, n);
    /* give back every third object in a shuffled order, then take them again */
    static void *back[MAXOBJ], *again[MAXOBJ];
    uint32_t nb = 0;
    for (uint32_t i = 0; i < got; i += 3) back[nb++] = objs[i];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = nb; i > 1; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t j = (uint32_t)(x % i);
        void *t = back[i - 1];
        back[i - 1] = back[j];
        back[j] = t;
    }
    c_free_spans(c, back, nb);
    uint32_t na = c_alloc(c, again, nb, 0);
    cr_assert_eq(na, nb, "took %u of the %u given back", na, nb);
    check_highest_first(c, again, na, "given back");
    /* the same objects (the spans had nothing else free) */
    static ptrset_t seen;
    set_clear(&seen);
    for (uint32_t i = 0; i < nb; i++) set_add(&seen, back[i]);
    for (uint32_t i = 0; i < na; i++) cr_assert(set_del(&seen, again[i]), "object %p was not given back, or came twice", again[i]);
    for (uint32_t i = 0; i < got; i += 3) objs[i] = NULL;
    uint32_t k = 0;
    for (uint32_t i = 0; i < got; i++)
        if (objs[i]) objs[k++] = objs[i];
    c_free_spans(c, objs, k);
    c_free_spans(c, again, na);
    release_held(c);
}

/* ---- four threads on one class ------------------------------------------------ */
#define NT 4
#define STASH 1024
static uint32_t conc_cls;
static pthread_barrier_t conc_barrier;
static const char *conc_err[NT];

static void *conc_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    const uint32_t c = conc_cls, batch = ta_class[c].batch;
    void **stash = (void **)calloc(STASH, sizeof(void *));
    void **tmp = (void **)calloc(STASH, sizeof(void *));
    uint32_t n = 0;
    uint32_t x = (uint32_t)id * 2654435761u + 7;
    const char *err = stash && tmp ? NULL : "calloc failed";
    pthread_barrier_wait(&conc_barrier);
    for (int step = 0; step < 20000 && !err; step++) {
        x = x * 1664525u + 1013904223u;
        if (n + 2 * batch + 8 <= STASH && ((x >> 7) & 1 || n == 0)) {
            uint32_t want = (x >> 9) % 3 == 0 ? batch : 1 + (x >> 12) % (2 * batch + 5);
            uint32_t got = c_alloc(c, tmp, want, (uint32_t)id + (x >> 20) % 2);
            if (!got || got > want) {
                err = "bad count";
                break;
            }
            if ((err = check(tmp, got, c))) break;
            for (uint32_t i = 0; i < got; i++) {
                if (!set_add_locked(&seen, tmp[i])) {
                    err = "object handed out twice";
                    break;
                }
                /* ours now: the last word (the first is the span free list's) */
                ((uintptr_t *)tmp[i])[ta_class[c].size / 8 - 1] = (id << 48) | i;
                stash[n++] = tmp[i];
            }
        } else {
            uint32_t k = (x >> 9) % 2 ? batch : 1 + (x >> 12) % (batch + 3);
            if (k > n) k = n;
            void **give = stash + n - k;
            for (uint32_t i = 0; i < k && !err; i++) {
                if (((uintptr_t *)give[i])[ta_class[c].size / 8 - 1] >> 48 != id) err = "object changed owner";
                if (!set_del_locked(&seen, give[i])) err = "object lost from the set";
            }
            if (err) break;
            if ((x >> 14) % 8 == 0) c_free_spans(c, give, k);
            else c_free(c, give, k);
            n -= k;
        }
    }
    for (uint32_t i = 0; i < n && !err; i++) set_del_locked(&seen, stash[i]);
    if (n && !err) c_free(c, stash, n);
    free(stash);
    free(tmp);
    conc_err[id] = err;
    return NULL;
}

static void run_concurrent(uint32_t c) {
    conc_cls = c;
    set_clear(&seen);
    pthread_barrier_init(&conc_barrier, NULL, NT);
    pthread_t t[NT];
    for (uintptr_t i = 0; i < NT; i++) {
        conc_err[i] = NULL;
        cr_assert_eq(pthread_create(&t[i], NULL, conc_worker, (void *)i), 0);
    }
    for (int i = 0; i < NT; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&conc_barrier);
    for (int i = 0; i < NT; i++)
        cr_assert_null(conc_err[i], "class %u (size %u), thread %d: %s", c, ta_class[c].size, i, conc_err[i]);
    cr_assert_eq(seen.n, 0u);
}

Test(central, concurrent_threads_never_share_an_object_small) { run_concurrent(ta_size_to_class(16)); }

Test(central, concurrent_threads_never_share_an_object_medium) {
    /* a class nothing else in the process uses: its spans must all come back */
    const uint32_t c = ta_size_to_class(1700);
    ta_pageheap_stats_t h0, h1;
    ta_central_stats_t c0, c1;
    quiesce();
    ta_central_stats(c, &c0);
    ta_pageheap_stats(&h0);
    run_concurrent(c);
    quiesce();
    ta_central_stats(c, &c1);
    ta_pageheap_stats(&h1);
    cr_assert_eq(c1.transfer_bytes, 0u);
    cr_assert_eq(c1.span_free_bytes, c0.span_free_bytes, "class %u: %ld bytes of free objects left in spans", c,
                 (long)(c1.span_free_bytes - c0.span_free_bytes));
}

Test(central, stats_count_hits_and_misses) {
    const uint32_t c = ta_size_to_class(300), batch = ta_class[c].batch;
    static void *a1[MAXOBJ], *a2[MAXOBJ];
    quiesce();
    ta_central_stats_t a, b, d;
    ta_central_stats(c, &a);
    uint32_t n1 = c_alloc(c, a1, batch, 0); /* nothing in transfer: a miss */
    ta_central_stats(c, &b);
    c_free(c, a1, n1);                   /* a whole batch: parked */
    uint32_t n2 = c_alloc(c, a2, batch, 0); /* the same batch: a hit */
    ta_central_stats(c, &d);
    cr_assert_eq(n1, batch);
    cr_assert_eq(n2, batch);
    cr_assert_eq(memcmp(a1, a2, batch * sizeof(void *)), 0, "the parked batch was not reused as it was");
    cr_assert_eq(b.misses - a.misses, 1u);
    cr_assert_eq(b.hits, a.hits);
    cr_assert_eq(d.hits - b.hits, 1u);
    cr_assert_eq(d.misses, b.misses);
    cr_assert_eq(b.to_caches - a.to_caches, (uint64_t)batch);
    cr_assert_eq(d.from_caches - b.from_caches, (uint64_t)batch);
    c_free(c, a2, n2);
    ta_central_drain();
}

/* ---- two CPUs, one class: each carves its own spans ---------------------------
 * Two threads pinned to two CPUs (of different shards) malloc blocks of one
 * class in turns, through tier 1: every refill of one CPU comes between two of
 * the other's.  With the class's spans emptied first, no span hands objects
 * to both threads (the objects and state bytes of a span are written by one
 * CPU).  In per-thread mode the two threads' caches take consecutive shards. */
#define PIN_ROUNDS 24
#define PIN_STEP 8
static uint32_t pin_cls;
static int pin_cpu[2];
static _Atomic int pin_turn;
static void *pin_blocks[2][PIN_ROUNDS * PIN_STEP];
static const char *pin_err[2];

static void *pin_worker(void *arg) {
    int id = (int)(uintptr_t)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(pin_cpu[id], &set);
    if (sched_setaffinity(0, sizeof set, &set)) {
        pin_err[id] = "sched_setaffinity failed";
        atomic_store(&pin_turn, -1);
        return NULL;
    }
    for (int r = 0; r < PIN_ROUNDS; r++) {
        int t;
        while ((t = atomic_load(&pin_turn)) != 2 * r + id)
            if (t < 0) return NULL;
            else sched_yield();
        for (int i = 0; i < PIN_STEP; i++)
            if (!(pin_blocks[id][r * PIN_STEP + i] = malloc(ta_class[pin_cls].size))) pin_err[id] = "malloc failed";
        atomic_store(&pin_turn, 2 * r + id + 1);
    }
    return NULL;
}

Test(central, two_cpus_never_share_a_span) {
    if (nshards() < 2) cr_skip_test("one transfer-cache shard (one CPU)");
    cpu_set_t allowed;
    cr_assert_eq(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    pin_cpu[0] = pin_cpu[1] = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (pin_cpu[0] < 0) pin_cpu[0] = cpu;
        else if ((uint32_t)cpu % nshards() != (uint32_t)pin_cpu[0] % nshards()) {
            pin_cpu[1] = cpu;
            break;
        }
    }
    if (pin_cpu[1] < 0) cr_skip_test("no two allowed CPUs of different shards");
    const uint32_t c = pin_cls = ta_size_to_class(176);
    cr_assert_lt(ta_class[c].objects, PIN_ROUNDS * PIN_STEP / 2, "the test wants a few spans per thread");
    quiesce();
    hold_all_free(c);
    atomic_store(&pin_turn, 0);
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++) cr_assert_eq(pthread_create(&t[i], NULL, pin_worker, (void *)i), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) cr_assert_null(pin_err[i], "thread %d: %s", i, pin_err[i]);
    /* the spans' owners: one thread each */
    enum { MAXSPANS = 2 * PIN_ROUNDS * PIN_STEP };
    static ta_span_t *spans[MAXSPANS];
    static int owner[MAXSPANS];
    uint32_t nspans = 0, shared = 0;
    for (int id = 0; id < 2; id++)
        for (int i = 0; i < PIN_ROUNDS * PIN_STEP; i++) {
            ta_span_t *s = span_of(pin_blocks[id][i]);
            if (!s || s->cls != c) continue; /* a sampled block has a span of its own */
            uint32_t j = 0;
            while (j < nspans && spans[j] != s) j++;
            if (j == nspans) {
                spans[nspans] = s;
                owner[nspans++] = id;
            } else if (owner[j] != id) {
                shared++;
            }
        }
    for (int id = 0; id < 2; id++)
        for (int i = 0; i < PIN_ROUNDS * PIN_STEP; i++) free(pin_blocks[id][i]);
    release_held(c);
    cr_assert_geq(nspans, 4u, "%u spans for both threads", nspans);
    cr_assert_eq(shared, 0u, "%u blocks of CPU %d and CPU %d came from the same spans (%u spans)", shared, pin_cpu[0],
                 pin_cpu[1], nspans);
}

/* The state bytes of spans of two shards never share a cache line (two CPUs
 * would bounce it on every malloc and free), although those of one shard are
 * packed (meta.c): a class with few objects per span, several spans for each
 * of two shards. */
static uint32_t state_lines(void **o, uint32_t n, uintptr_t *line, uint32_t max) {
    uint32_t nl = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t info = ta_pagemap_info((uintptr_t)o[i] >> TA_PAGE_SHIFT);
        uintptr_t l = (uintptr_t)ta_info_states(info) / 64;
        bool seen_line = false;
        for (uint32_t j = 0; j < nl; j++) seen_line |= line[j] == l;
        if (!seen_line && nl < max) line[nl++] = l;
    }
    return nl;
}

Test(central, state_arrays_of_two_shards_share_no_line) {
    const uint32_t c = ta_size_to_class(20000), per_span = ta_class[c].objects;
    enum { SPANS = 8 };
    static void *o[2][MAXOBJ];
    cr_assert_leq(per_span * SPANS, MAXOBJ);
    cr_assert_leq(per_span, 16u, "the class's state array is a fraction of a line");
    quiesce();
    uintptr_t line[2][SPANS];
    uint32_t nl[2];
    for (uint32_t sh = 0; sh < 2; sh++) {
        cr_assert_eq(c_alloc(c, o[sh], per_span * SPANS, sh), per_span * SPANS);
        for (uint32_t i = 0; i < per_span * SPANS; i++)
            cr_assert_eq(ta_pagemap_span((uintptr_t)o[sh][i] >> TA_PAGE_SHIFT)->shard, sh, "a span of shard %u", sh);
        nl[sh] = state_lines(o[sh], per_span * SPANS, line[sh], SPANS);
    }
    for (uint32_t sh = 0; sh < 2; sh++) c_free_spans(c, o[sh], per_span * SPANS);
    /* (how densely: new arrays lie side by side, new_state_arrays_of_a_shard_are_contiguous;
     * these may be recycled ones, from wherever the shard's spans of other classes left them) */
    cr_assert_geq(nl[0] + nl[1], 2u);
    for (uint32_t i = 0; i < nl[0]; i++)
        for (uint32_t j = 0; j < nl[1]; j++)
            cr_assert_neq(line[0][i], line[1][j], "shards 0 and 1 share the state line %p", (void *)(line[0][i] * 64));
}

/* New state arrays of a shard lie next to each other (here a shard nothing
 * else uses); a recycled one comes back zeroed and stays with its shard's. */
Test(central, new_state_arrays_of_a_shard_are_contiguous) {
    uint8_t *a[8];
    for (int i = 0; i < 8; i++) {
        a[i] = ta_meta_states_new(5, 63);
        cr_assert(a[i]);
        for (int k = 0; k < 5; k++) cr_assert_eq(a[i][k], 0);
        if (i && (uintptr_t)a[i] % 4096 > 64) cr_assert_eq(a[i], a[i - 1] + 16, "array %d at %p after %p", i, a[i], a[i - 1]);
    }
    for (int i = 0; i < 8; i++) ta_meta_states_delete(a[i], 5);
}

Test(central, recycled_state_arrays_are_zero_and_keep_their_shard) {
    uint8_t *a = ta_meta_states_new(40, 1), *b = ta_meta_states_new(40, 2);
    cr_assert(a && b);
    cr_assert_neq((uintptr_t)a / 64, (uintptr_t)b / 64);
    memset(a, 0x55, 40);
    ta_meta_states_delete(a, 40);
    uint8_t *c = ta_meta_states_new(40, 2); /* another shard: not a's */
    cr_assert_neq(c, a);
    uint8_t *d = ta_meta_states_new(40, 1); /* a's own shard and size: a again, cleared */
    cr_assert_eq(d, a);
    for (int i = 0; i < 40; i++) cr_assert_eq(d[i], 0, "byte %d", i);
    ta_meta_states_delete(b, 40);
    ta_meta_states_delete(c, 40);
    ta_meta_states_delete(d, 40);
}

/* Objects carved from a span whose pages the OS gave zeroed (a new mapping,
 * or pages released by trim) are ZERO until handed out, and calloc skips
 * their memset; objects that come back are not ZERO again.  (The hardened
 * build links a fresh span's objects into a free list: none is ZERO.) */
Test(central, fresh_objects_on_zeroed_pages_are_zero) {
    const uint32_t c = ta_size_to_class(13000); /* a class nothing else here uses: fresh spans */
    quiesce();
    malloc_trim(0); /* every free page of the heap released: zero */
    static void *o[256];
    cr_assert_eq(c_alloc(c, o, 1, 0), 0u + 1);
    cr_assert(ta_pagemap_span((uintptr_t)o[0] >> TA_PAGE_SHIFT)->fresh, "class %u was used before", c);
    c_free_spans(c, o, 1); /* its span goes back to the page heap, and trim releases it */
    malloc_trim(0);
    uint32_t n = c_alloc(c, o, 2 * ta_class[c].objects, 0);
    cr_assert_eq(n, 2 * ta_class[c].objects);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t st = *ta_state_of(o[i], c);
#ifdef TA_HARDENED
        cr_assert_eq(st, TA_OBJ_FREE, "object %u: state %u", i, st);
#else
        cr_assert_eq(st, TA_OBJ_ZERO, "object %u: state %u", i, st);
#endif
        cr_assert(ta_pagemap_span((uintptr_t)o[i] >> TA_PAGE_SHIFT)->zeroed);
#ifndef TA_HARDENED /* (there the free list's links are in the objects) */
        for (uint32_t b = 0; b < ta_class[c].size; b++) cr_assert_eq(((uint8_t *)o[i])[b], 0);
#endif
    }
    /* dirtied (as a program would after malloc), then back: FREE or SPAN, never ZERO */
    for (uint32_t i = 0; i < n; i++) {
        *ta_state_of(o[i], c) = TA_OBJ_LIVE;
        memset(o[i], 0x5a, ta_class[c].size);
        *ta_state_of(o[i], c) = TA_OBJ_FREE;
    }
    c_free(c, o, n / 2);
    c_free_spans(c, o + n / 2, n - n / 2);
    uint32_t k = c_alloc(c, o, n / 2, 0);
    for (uint32_t i = 0; i < k; i++) cr_assert_eq(*ta_state_of(o[i], c), TA_OBJ_FREE);
    c_free_spans(c, o, k);
}
