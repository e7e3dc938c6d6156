/* test_pageheap.c: tier 3 (pageheap.c).  Spans are page aligned, honour
 * align_pages and are registered in the pagemap; freed pages are reused and
 * coalesce with free neighbours; release gives the pages back to the OS (stats
 * and RSS); grow extends a span in place into a free neighbour; the counters
 * move by exactly the bytes involved and add up with the OS tier's.
 *
 * Counter snapshots are taken around code that calls nothing but the page heap
 * (no Criterion assertion in between: the test's malloc is tieralloc too). */
#include "testutil.h"

#include <criterion/criterion.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "tieralloc.h"

#define PG TA_PAGE_SIZE
/* the hardened build's guard page after every span in use (0 or 1): a span
 * asked for n pages has n + G; its blocks have the first n */
#define G TA_GUARD_PAGES

/* Cases that check the default build's layout page by page (which span lands
 * where, how many pages merge) skip in the hardened build; test_hardened
 * checks the guard pages themselves. */
#define SKIP_IF_GUARDED()                                                                         \
    do {                                                                                          \
        if (G) cr_skip_test("page-exact layout of the default build (the hardened build adds guard pages)"); \
    } while (0)

/* Free spans decay only when a test says so: no release depends on timing;
 * and no background thread, whose stack could land between the mappings
 * these tests lay out. */
static void setup(void) {
    ta_ensure_init();
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    ta_cfg.background = false;
}
TestSuite(pageheap, .init = setup, .timeout = 60);

static long rss_pages(void) { return (long)(tu_rss_bytes() / 4096); }

static bool span_is_zero(const ta_span_t *s) {
    const uint64_t *w = ta_span_addr(s);
    for (size_t i = 0; i < ta_span_usable(s) / 8; i++)
        if (w[i]) return false;
    return true;
}

/* `count` large spans of k pages each, back to back in memory.  Spans taken
 * on the way that do not fit the run are given back. */
static bool get_run(uintptr_t k, int count, ta_span_t **out) {
    enum { MAXP = 512 };
    ta_span_t *pool[MAXP];
    int np = 0;
    bool found = false;
    while (np < MAXP) {
        ta_span_t *s = ta_pageheap_alloc(k, 1, 0);
        if (!s) break;
        pool[np++] = s;
        if (np < count) continue;
        found = true;
        for (int i = np - count + 1; i < np; i++)
            if (pool[i]->page != pool[i - 1]->page + k + G) found = false;
        if (found) break;
    }
    int keep_from = found ? np - count : np;
    for (int i = 0; i < keep_from; i++) ta_pageheap_free(pool[i]);
    for (int i = 0; found && i < count; i++) out[i] = pool[keep_from + i];
    return found;
}

/* bytes the page heap holds: it must equal what the OS tier mapped, less the
 * metadata and pagemap leaves (the only other users of ta_os_map) */
static void check_totals(const char *where) {
    ta_pageheap_stats_t h;
    ta_os_stats_t o;
    ta_pageheap_stats(&h);
    ta_os_stats(&o);
    uint64_t meta = ta_meta_bytes(), pm = ta_pagemap_bytes();
    cr_assert_eq(h.free_bytes + h.released_bytes + h.inuse_bytes, o.mapped_bytes - meta - pm,
                 "%s: heap free %lu + released %lu + inuse %lu != os mapped %lu - meta %lu - pagemap %lu", where,
                 (unsigned long)h.free_bytes, (unsigned long)h.released_bytes, (unsigned long)h.inuse_bytes,
                 (unsigned long)o.mapped_bytes, (unsigned long)meta, (unsigned long)pm);
    cr_assert_leq(h.large_bytes, h.inuse_bytes, "%s", where);
    cr_assert_eq(h.free_bytes % PG, 0u);
    cr_assert_eq(h.released_bytes % PG, 0u);
    cr_assert_eq(h.inuse_bytes % PG, 0u);
}

Test(pageheap, large_spans_are_registered_at_both_ends) {
    const uintptr_t sizes[] = {1, 2, 3, 7, 64, 128, 129, 300, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uintptr_t n = sizes[i];
        ta_pageheap_stats_t a, b;
        ta_pageheap_stats(&a);
        ta_span_t *s = ta_pageheap_alloc(n, 1, 0);
        ta_pageheap_stats(&b);
        cr_assert_not_null(s, "alloc of %lu pages failed", (unsigned long)n);
        cr_assert_eq(s->npages, n + G);
        cr_assert_eq(s->state, TA_SPAN_INUSE);
        cr_assert_eq(s->cls, 0);
        cr_assert_eq((uintptr_t)ta_span_addr(s) % PG, 0u);
        cr_assert_eq((uintptr_t)ta_span_addr(s) >> TA_PAGE_SHIFT, s->page);
        cr_assert_eq(ta_pagemap_span(s->page), s);
        cr_assert_eq(ta_pagemap_span(s->page + n + G - 1), s);
        cr_assert_eq(ta_pagemap_info(s->page), 0u);
        cr_assert_eq(ta_pagemap_info(s->page + n + G - 1), 0u);
        /* the neighbours are not this span */
        cr_assert_neq(ta_pagemap_span(s->page - 1), s);
        cr_assert_neq(ta_pagemap_span(s->page + n + G), s);
        cr_assert_eq(b.inuse_bytes - a.inuse_bytes, (n + G) * PG);
        cr_assert_eq(b.large_bytes - a.large_bytes, n * PG);
        cr_assert_eq(b.large_count - a.large_count, 1u);
        cr_assert_eq(b.n_alloc - a.n_alloc, 1u);
        memset(ta_span_addr(s), 0xab, ta_span_usable(s)); /* all of it is ours */

        ta_pageheap_free(s);
        ta_pageheap_stats(&b);
        cr_assert_eq(b.inuse_bytes, a.inuse_bytes);
        cr_assert_eq(b.large_bytes, a.large_bytes);
        cr_assert_eq(b.large_count, a.large_count);
        cr_assert_eq(b.n_free - a.n_free, 1u);
    }
    check_totals("after large spans");
}

Test(pageheap, small_class_spans_register_every_page) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        uintptr_t n = ta_class[c].pages;
        ta_pageheap_stats_t a, b;
        ta_pageheap_stats(&a);
        ta_span_t *s = ta_pageheap_alloc(n, 1, c);
        ta_pageheap_stats(&b);
        cr_assert_not_null(s);
        cr_assert_eq(s->npages, n + G);
        cr_assert_eq(s->cls, c);
        cr_assert_eq(s->state, TA_SPAN_INUSE);
        for (uintptr_t i = 0; i < n; i++) {
            cr_assert_eq(ta_pagemap_span(s->page + i), s, "class %u page %lu", c, (unsigned long)i);
            uint64_t info = ta_pagemap_info(s->page + i);
            cr_assert_eq(info & 0xffff, TA_INFO(c, i), "class %u page %lu: info %#llx", c, (unsigned long)i,
                         (unsigned long long)info);
            cr_assert_neq(ta_info_states(info), NULL, "class %u page %lu: no object states", c, (unsigned long)i);
            /* free's gate: the class's constant, set with the info */
            cr_assert_eq(ta_pagemap_entry(s->page + i)->magic, ta_class[c].div_magic, "class %u page %lu", c,
                         (unsigned long)i);
        }
        if (G) { /* the guard page: the span's, but no objects (info 0) */
            cr_assert_eq(ta_pagemap_span(s->page + n), s);
            cr_assert_eq(ta_pagemap_info(s->page + n), 0u);
        }
        cr_assert_eq(b.inuse_bytes - a.inuse_bytes, (n + G) * PG);
        cr_assert_eq(b.large_bytes, a.large_bytes, "a small span counted as large");
        cr_assert_eq(b.large_count, a.large_count);
        uintptr_t first = s->page;
        ta_pageheap_free(s);
        /* no page of a freed span still claims a class: a late free() of one
         * of its objects must not look like a live small block */
        for (uintptr_t i = 0; i < n; i++) {
            cr_assert_eq(ta_pagemap_info(first + i), 0u, "class %u: freed page %lu keeps info %#llx", c,
                         (unsigned long)i, (unsigned long long)ta_pagemap_info(first + i));
            /* nor free's gate: its object-start test must fail there by itself */
            cr_assert_eq(ta_pagemap_entry(first + i)->magic, 0u, "class %u: freed page %lu keeps its constant", c,
                         (unsigned long)i);
        }
    }
}

Test(pageheap, align_pages_is_honoured) {
    ta_span_t *live[64];
    int nl = 0;
    for (uintptr_t align = 1; align <= 512; align *= 2) {
        const uintptr_t ns[] = {1, 3, align, align + 1};
        for (int j = 0; j < 4; j++) {
            ta_span_t *s = ta_pageheap_alloc(ns[j], align, j & 1 ? 0 : 2);
            cr_assert_not_null(s);
            cr_assert_eq(s->page % align, 0u, "alloc(%lu, align %lu) at page %#lx", (unsigned long)ns[j],
                         (unsigned long)align, (unsigned long)s->page);
            cr_assert_eq(s->npages, ns[j] + G);
            cr_assert_eq(ta_pagemap_span(s->page), s);
            cr_assert_eq(ta_pagemap_span(s->page + s->npages - 1), s);
            memset(ta_span_addr(s), j, ta_span_usable(s));
            live[nl++] = s;
        }
    }
    /* none overlaps another */
    for (int i = 0; i < nl; i++)
        for (int j = i + 1; j < nl; j++)
            cr_assert(live[i]->page + live[i]->npages <= live[j]->page ||
                          live[j]->page + live[j]->npages <= live[i]->page,
                      "spans %d and %d overlap", i, j);
    for (int i = 0; i < nl; i++) ta_pageheap_free(live[i]);
    check_totals("after aligned spans");
}

Test(pageheap, free_then_alloc_reuses_the_pages) {
    ta_span_t *run[3];
    cr_assert(get_run(13, 3, run));
    uintptr_t page = run[1]->page;
    memset(ta_span_addr(run[1]), 0x5c, 13 * PG);
    ta_pageheap_free(run[1]);
    ta_span_t *s = ta_pageheap_alloc(13, 1, 0);
    cr_assert_not_null(s);
    cr_assert_eq(s->page, page, "re-alloc got page %#lx, freed %#lx", (unsigned long)s->page, (unsigned long)page);
    /* the pages stayed resident and were not wiped: the span must not claim to be zero */
    cr_assert_not(s->zeroed, "a span of dirty reused pages is marked zeroed");
    ta_pageheap_free(s);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[2]);
}

Test(pageheap, freed_neighbours_coalesce) {
    SKIP_IF_GUARDED();
    const uintptr_t k = 9;
    ta_span_t *run[5]; /* guard, A, B, C, guard */
    cr_assert(get_run(k, 5, run));
    uintptr_t a = run[1]->page, b = run[2]->page, c = run[3]->page;
    cr_assert_eq(b, a + k);
    cr_assert_eq(c, b + k);

    ta_pageheap_stats_t s0, s1, s2;
    ta_pageheap_stats(&s0);
    ta_pageheap_free(run[1]);
    ta_pageheap_free(run[3]);
    ta_pageheap_stats(&s1);
    ta_pageheap_free(run[2]);
    ta_pageheap_stats(&s2);
    ta_span_t *merged = ta_pagemap_span(a), *merged_end = ta_pagemap_span(a + 3 * k - 1);
    uintptr_t m_page = merged ? merged->page : 0, m_n = merged ? merged->npages : 0;
    int m_state = merged ? merged->state : -1;

    /* A and C had in-use neighbours only: nothing to merge with */
    cr_assert_eq(s1.free_bytes - s0.free_bytes, 2 * k * PG);
    cr_assert_geq(s2.n_coalesce - s1.n_coalesce, 2u, "freeing B merged %lu times",
                  (unsigned long)(s2.n_coalesce - s1.n_coalesce));
    cr_assert_eq(s2.free_bytes - s0.free_bytes, 3 * k * PG);
    cr_assert_eq(s0.inuse_bytes - s2.inuse_bytes, 3 * k * PG);
    cr_assert_not_null(merged);
    cr_assert_eq(merged, merged_end, "first and last page of A+B+C point at different spans");
    cr_assert_eq(m_page, a, "merged span starts at %#lx, A at %#lx", (unsigned long)m_page, (unsigned long)a);
    cr_assert_eq(m_n, 3 * k);
    cr_assert_eq(m_state, TA_SPAN_FREE);

    ta_span_t *s = ta_pageheap_alloc(3 * k, 1, 0);
    cr_assert_not_null(s);
    cr_assert_eq(s->page, a, "alloc of A+B+C pages at %#lx, A was %#lx", (unsigned long)s->page, (unsigned long)a);
    memset(ta_span_addr(s), 1, ta_span_usable(s));
    ta_pageheap_free(s);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[4]);
    check_totals("after coalescing");
}

/* Freed spans merge with the free space on both sides into one span that a
 * single alloc of the combined size gets back. */
Test(pageheap, many_frees_in_any_order_merge_into_one) {
    SKIP_IF_GUARDED();
    enum { N = 24 };
    const uintptr_t k = 4;
    ta_span_t *run[N + 2];
    cr_assert(get_run(k, N + 2, run));
    uintptr_t first = run[1]->page;
    /* free the inner spans in a scrambled order */
    for (int i = 0; i < N; i++) ta_pageheap_free(run[1 + (i * 7) % N]);
    ta_span_t *m = ta_pagemap_span(first);
    cr_assert_not_null(m);
    cr_assert_eq(m->page, first);
    cr_assert_eq(m->npages, N * k);
    cr_assert_eq(ta_pagemap_span(first + N * k - 1), m);
    ta_span_t *s = ta_pageheap_alloc(N * k, 1, 0);
    cr_assert_eq(s->page, first);
    ta_pageheap_free(s);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[N + 1]);
}

Test(pageheap, release_all_moves_free_to_released_and_drops_rss) {
    const uintptr_t n = 1024; /* 8 MiB */
    ta_span_t *s = ta_pageheap_alloc(n, 1, 0);
    cr_assert_not_null(s);
    memset(ta_span_addr(s), 0xee, ta_span_usable(s));
    ta_pageheap_free(s);

    ta_pageheap_stats_t a, b;
    ta_os_stats_t oa, ob;
    long rss0 = rss_pages();
    ta_pageheap_stats(&a);
    ta_os_stats(&oa);
    size_t got = ta_pageheap_release(true);
    ta_os_stats(&ob);
    ta_pageheap_stats(&b);
    long rss1 = rss_pages();

    /* release(true) is malloc_trim: it also unmaps released spans of 2 MiB
     * or more, the 8 MiB just freed among them */
    uint64_t unmapped = b.unmapped_bytes - a.unmapped_bytes;
    cr_assert_geq(a.free_bytes, n * PG);
    cr_assert_geq(unmapped, n * PG, "only %lu bytes unmapped", (unsigned long)unmapped);
    cr_assert_eq(got, a.free_bytes + unmapped, "released %zu of %lu free bytes, unmapped %lu", got,
                 (unsigned long)a.free_bytes, (unsigned long)unmapped);
    cr_assert_eq(b.free_bytes, 0u);
    cr_assert_eq(b.released_bytes, a.released_bytes + a.free_bytes - unmapped);
    cr_assert_eq(b.inuse_bytes, a.inuse_bytes);
    cr_assert_eq(ob.released_bytes - oa.released_bytes, a.free_bytes, "the OS tier saw %lu bytes released",
                 (unsigned long)(ob.released_bytes - oa.released_bytes));
    cr_assert_eq(oa.mapped_bytes - ob.mapped_bytes, unmapped);
    cr_assert_geq((rss0 - rss1) * 4096, (long)(n * PG - n * PG / 16), "RSS fell by %ld bytes of %lu",
                  (rss0 - rss1) * 4096, (unsigned long)(n * PG));

    /* nothing left to release */
    cr_assert_eq(ta_pageheap_release(true), 0u);
    check_totals("after release");
}

Test(pageheap, released_pages_come_back_zeroed) {
    const uintptr_t n = 300;
    ta_span_t *s = ta_pageheap_alloc(n, 1, 0);
    cr_assert_not_null(s);
    if (s->zeroed) cr_assert(span_is_zero(s), "span marked zeroed holds data");
    memset(ta_span_addr(s), 0x42, ta_span_usable(s));
    ta_pageheap_free(s);
    ta_pageheap_release(true);
    /* only released spans are free now: whatever we get is zero and says so */
    for (int i = 0; i < 4; i++) {
        ta_span_t *t = ta_pageheap_alloc(n, 1, 0);
        cr_assert_not_null(t);
        cr_assert(t->zeroed, "span from released pages not marked zeroed");
        cr_assert(span_is_zero(t), "span from released pages holds data");
        memset(ta_span_addr(t), 0x43, ta_span_usable(t));
        ta_pageheap_free(t);
        ta_pageheap_release(true);
    }
}

/* decay_ms decides which free spans release(false) returns to the OS. */
Test(pageheap, release_honours_decay) {
    uint64_t saved = ta_cfg.decay_ms;
    ta_span_t *run[3];
    cr_assert(get_run(20, 3, run));
    ta_pageheap_release(true);
    ta_cfg.decay_ms = (uint64_t)1 << 40; /* nothing is that old */
    ta_pageheap_free(run[1]);
    ta_pageheap_stats_t a;
    ta_pageheap_stats(&a);
    size_t r1 = ta_pageheap_release(false);
    ta_cfg.decay_ms = 0; /* everything is old enough */
    size_t r2 = ta_pageheap_release(false);
    ta_pageheap_stats_t b;
    ta_pageheap_stats(&b);
    ta_cfg.decay_ms = saved;
    cr_assert_eq(a.free_bytes, (20 + G) * PG);
    cr_assert_eq(r1, 0u, "release(false) released %zu bytes of young spans", r1);
    cr_assert_eq(r2, (20 + G) * PG, "release(false) with decay 0 released %zu bytes", r2);
    cr_assert_eq(b.free_bytes, 0u);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[2]);
}

Test(pageheap, grow_in_place_into_free_neighbour) {
    SKIP_IF_GUARDED();
    ta_span_t *run[3]; /* S, N, guard */
    cr_assert(get_run(6, 3, run));
    ta_span_t *s = run[0];
    uintptr_t page = s->page;
    memset(ta_span_addr(s), 7, ta_span_usable(s));
    ta_pageheap_free(run[1]);

    cr_assert(ta_pageheap_grow(s, 4), "shrinking request must succeed trivially");
    cr_assert_eq(s->npages, 6u);
    cr_assert(ta_pageheap_grow(s, 6));
    cr_assert_eq(s->npages, 6u);

    ta_pageheap_stats_t a, b;
    ta_pageheap_stats(&a);
    bool too_far = ta_pageheap_grow(s, 13); /* N has only 6 pages before the guard */
    ta_pageheap_stats(&b);
    cr_assert_not(too_far, "grow past an in-use neighbour succeeded");
    cr_assert_eq(s->npages, 6u);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "failed grow changed the stats");

    ta_pageheap_stats(&a);
    bool ok = ta_pageheap_grow(s, 9); /* half of N */
    ta_pageheap_stats(&b);
    cr_assert(ok);
    cr_assert_eq(s->page, page, "grow moved the span");
    cr_assert_eq(s->npages, 9u);
    cr_assert_eq(ta_pagemap_span(page), s);
    cr_assert_eq(ta_pagemap_span(page + 8), s, "last page of the grown span not registered");
    cr_assert_eq(b.inuse_bytes - a.inuse_bytes, 3 * PG);
    cr_assert_eq(b.large_bytes - a.large_bytes, 3 * PG);
    cr_assert_eq(a.free_bytes - b.free_bytes, 3 * PG);
    cr_assert_eq(b.large_count, a.large_count);
    /* the rest of N is still a free span of its own */
    ta_span_t *rest = ta_pagemap_span(page + 9);
    cr_assert_not_null(rest);
    cr_assert_eq(rest->page, page + 9);
    cr_assert_eq(rest->npages, 3u);
    cr_assert_neq(rest->state, TA_SPAN_INUSE);
    for (char *p = (char *)ta_span_addr(s) + 6 * PG; p < (char *)ta_span_addr(s) + 9 * PG; p++) *p = 9;

    ok = ta_pageheap_grow(s, 12); /* the rest of N, exactly */
    cr_assert(ok);
    cr_assert_eq(s->npages, 12u);
    cr_assert_eq(ta_pagemap_span(page + 11), s);
    cr_assert_eq(run[2]->page, page + 12);
    cr_assert_not(ta_pageheap_grow(s, 13), "grew into the in-use guard");
    cr_assert_eq(s->npages, 12u);
    cr_assert_eq(ta_pagemap_span(page + 12), run[2], "guard's first page no longer points at the guard");

    ta_pageheap_stats(&a);
    ta_pageheap_free(s);
    ta_pageheap_stats(&b);
    cr_assert_eq(a.inuse_bytes - b.inuse_bytes, 12 * PG);
    cr_assert_eq(a.large_bytes - b.large_bytes, 12 * PG);
    ta_pageheap_free(run[2]);
    check_totals("after grow");
}

/* Can this kernel move pages and leave their mapping in place
 * (MREMAP_DONTUNMAP, Linux 5.7)?  Asked of a scratch mapping of the test's. */
static bool kernel_moves_pages(void) {
    size_t n = 4 * 4096;
    void *a = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) return false;
    void *b = mremap(a, n, n, MREMAP_MAYMOVE | 4 /* MREMAP_DONTUNMAP */, NULL) /* (with it, the kernel reads new_address: give it) */;
    munmap(a, n);
    if (b == MAP_FAILED) return false;
    munmap(b, n);
    return true;
}

/* A large block that must move to grow moves its pages: the bytes arrive
 * without a copy, the old pages are free, released (not resident) pages of
 * the heap, the new block has as many pages of room behind it and grows into
 * them in place, but not past them (a block in two kernel mappings could not
 * move again), and moves again from there.  The counters add up throughout. */
Test(pageheap, a_moved_block_keeps_its_bytes_and_frees_its_old_pages) {
    if (G) cr_skip_test("the hardened build copies (its guard page would move along)");
    if (!kernel_moves_pages()) cr_skip_test("the kernel cannot move pages (MREMAP_DONTUNMAP: Linux 5.7)");
    enum { N = 200 }; /* pages: 1.6 MiB */
    ta_span_t *s = ta_pageheap_alloc(N, 1, 0);
    cr_assert_not_null(s);
    for (uintptr_t i = 0; i < N; i++) *(uint64_t *)((char *)ta_span_addr(s) + i * PG) = 0xabc0000 + i;
    uintptr_t old_page = s->page;
    ta_pageheap_stats_t a, b;
    ta_os_stats_t oa, ob;
    ta_pageheap_stats(&a);
    ta_os_stats(&oa);
    ta_span_t *t = ta_pageheap_move_large(s, 3 * N);
    ta_pageheap_stats(&b);
    ta_os_stats(&ob);
    cr_assert_not_null(t, "the move failed");
    cr_assert_eq(ob.n_moved, oa.n_moved + 1);
    cr_assert_eq(t->npages, 3u * N);
    cr_assert_eq(t->state, TA_SPAN_INUSE);
    cr_assert_eq(ta_pagemap_span(t->page), t);
    cr_assert_eq(ta_pagemap_span(t->page + 3 * N - 1), t);
    for (uintptr_t i = 0; i < N; i++)
        cr_assert_eq(*(uint64_t *)((char *)ta_span_addr(t) + i * PG), 0xabc0000 + i, "page %lu lost its bytes",
                     (unsigned long)i);
    for (uintptr_t i = N; i < 3 * N; i++) cr_assert_eq(*(uint64_t *)((char *)ta_span_addr(t) + i * PG), 0u);
    /* the old pages: a released free span of the heap, not resident */
    ta_span_t *o = ta_pagemap_span(old_page);
    cr_assert_not_null(o);
    cr_assert_eq(o->state, TA_SPAN_RELEASED);
    cr_assert_eq(ta_os_resident((void *)(old_page << TA_PAGE_SHIFT), N * PG), 0u, "the old pages are resident");
    cr_assert_eq(b.inuse_bytes - a.inuse_bytes, 2u * N * PG);
    cr_assert_eq(b.large_bytes - a.large_bytes, 2u * N * PG);
    cr_assert_eq(b.large_count, a.large_count);
    cr_assert_geq(b.released_bytes - a.released_bytes, (uint64_t)N * PG + 3u * N * PG, "old pages and room");
    check_totals("after a move");

    /* room for as much again behind it, and no more */
    cr_assert(ta_pageheap_grow(t, 6 * N), "no room behind the moved block");
    cr_assert_eq(t->npages, 6u * N);
    cr_assert_not(ta_pageheap_grow(t, 6 * N + 1), "grew past the end of its mapping");
    for (uintptr_t i = 0; i < N; i++) cr_assert_eq(*(uint64_t *)((char *)ta_span_addr(t) + i * PG), 0xabc0000 + i);

    /* and it moves again */
    uintptr_t where = t->page;
    ta_span_t *u = ta_pageheap_move_large(t, 7 * N);
    cr_assert_not_null(u, "a moved block could not move again");
    cr_assert_neq(u->page, where);
    for (uintptr_t i = 0; i < N; i++) cr_assert_eq(*(uint64_t *)((char *)ta_span_addr(u) + i * PG), 0xabc0000 + i);
    check_totals("after a second move");
    ta_pageheap_free(u);
    check_totals("after the free");
}

Test(pageheap, grow_into_released_neighbour) {
    SKIP_IF_GUARDED();
    ta_span_t *run[3];
    cr_assert(get_run(5, 3, run));
    ta_pageheap_free(run[1]);
    ta_pageheap_release(true); /* N is now released */
    ta_span_t *s = run[0];
    cr_assert(ta_pageheap_grow(s, 10));
    cr_assert_eq(s->npages, 10u);
    char *p = ta_span_addr(s);
    for (size_t i = 5 * PG; i < 10 * PG; i++) cr_assert_eq(p[i], 0);
    memset(p, 3, 10 * PG);
    ta_pageheap_free(s);
    ta_pageheap_free(run[2]);
    check_totals("after grow into released");
}

/* S, then a resident free span, then a released one, then a guard: growth
 * may use both free spans together. */
Test(pageheap, grow_across_resident_and_released_neighbours) {
    SKIP_IF_GUARDED();
    ta_span_t *run[4];
    cr_assert(get_run(4, 4, run));
    ta_span_t *s = run[0];
    ta_pageheap_free(run[2]);
    ta_pageheap_release(true); /* run[2] is released */
    ta_pageheap_free(run[1]);  /* run[1] stays resident: the kinds do not merge */
    cr_assert_eq(ta_pagemap_span(run[0]->page + 4)->state, TA_SPAN_FREE);
    cr_assert_eq(ta_pagemap_span(run[0]->page + 8)->state, TA_SPAN_RELEASED);
    ta_pageheap_stats_t a, b;
    ta_pageheap_stats(&a);
    bool ok = ta_pageheap_grow(s, 10); /* 4 + 4 resident + 2 of the released */
    ta_pageheap_stats(&b);
    cr_assert(ok, "growth over a resident and a released neighbour failed");
    cr_assert_eq(s->npages, 10u);
    cr_assert_eq(ta_pagemap_span(s->page + 9), s);
    cr_assert_eq(b.inuse_bytes - a.inuse_bytes, 6 * PG);
    cr_assert_eq(a.free_bytes - b.free_bytes, 4 * PG);
    cr_assert_eq(a.released_bytes - b.released_bytes, 2 * PG);
    memset(ta_span_addr(s), 5, 10 * PG);
    cr_assert_not(ta_pageheap_grow(s, 13), "grew into the in-use guard");
    ta_pageheap_free(s);
    ta_pageheap_free(run[3]);
    check_totals("after grow across kinds");
}

Test(pageheap, shrink_gives_the_tail_back) {
    SKIP_IF_GUARDED();
    ta_span_t *run[2]; /* S, guard */
    cr_assert(get_run(8, 2, run));
    ta_span_t *s = run[0];
    uintptr_t page = s->page;
    memset(ta_span_addr(s), 1, 8 * PG);
    ta_pageheap_stats_t a, b;
    ta_pageheap_stats(&a);
    ta_pageheap_shrink(s, 3, false);
    ta_pageheap_stats(&b);
    cr_assert_eq(s->page, page);
    cr_assert_eq(s->npages, 3u);
    cr_assert_eq(ta_pagemap_span(page + 2), s, "new last page not registered");
    cr_assert_eq(a.inuse_bytes - b.inuse_bytes, 5 * PG);
    cr_assert_eq(a.large_bytes - b.large_bytes, 5 * PG);
    cr_assert_eq(b.free_bytes - a.free_bytes, 5 * PG, "a written tail is resident free memory");
    ta_span_t *tail = ta_pagemap_span(page + 3);
    cr_assert_eq(tail->page, page + 3);
    cr_assert_eq(tail->state, TA_SPAN_FREE);
    /* and the span can grow back into it */
    cr_assert(ta_pageheap_grow(s, 8));
    ta_pageheap_free(s);
    ta_pageheap_free(run[1]);
    check_totals("after shrink");
}

Test(pageheap, growable_spans_start_the_longest_free_span) {
    SKIP_IF_GUARDED();
    ta_span_t *x = ta_pageheap_alloc(64, 1, 0);
    cr_assert_not_null(x);
    uintptr_t page = x->page;
    ta_pageheap_shrink(x, 20, false);          /* pages 20..63 free */
    ta_span_t *longest = ta_pagemap_span(page + 20);
    cr_assert_geq(longest->npages, 44u);
    ta_span_t *g = ta_pageheap_alloc_growable(3);
    cr_assert_not_null(g);
    /* it went to the start of the longest free span of the heap, which is at
     * least as long as the 44 pages after x */
    ta_span_t *after = ta_pagemap_span(g->page + 3);
    cr_assert_not_null(after);
    cr_assert_eq(after->page, g->page + 3);
    cr_assert_neq(after->state, TA_SPAN_INUSE, "a growable span has free pages behind it");
    cr_assert_geq(after->npages, 41u);
    cr_assert(ta_pageheap_grow(g, 40), "growable span could not grow in place");
    ta_pageheap_free(g);
    ta_pageheap_free(x);
    check_totals("after growable");
}

/* A freed large block is kept whole for the next request of its size (up to
 * an eighth smaller): the same pages and record come back without a split,
 * a merge or a new mapping; it counts as free meanwhile; a second free of it
 * is a double free; trim puts it back on the free lists and releases it. */
/* A request shorter than a recent block takes its head; the rest stays a
 * recent block (not on the free lists).  The head freed stays apart from it,
 * and a request of another size moves the boundary between the two (one of
 * their joint length takes both, one block again): a program that frees each
 * block before it asks for the next, of another size, works in one block. */
Test(pageheap, cut_block_and_its_rest_serve_other_sizes) {
    SKIP_IF_GUARDED(); /* the hardened build keeps no recent blocks */
    ta_span_t *run[3];
    cr_assert(get_run(64, 3, run)); /* run[1] between two blocks in use: no free neighbour */
    ta_span_t *s = run[1];
    uintptr_t page = s->page;
    cr_assert_null(ta_pageheap_free_large(s, ta_span_addr(s)));
    ta_pageheap_stats_t a, b, c;
    ta_pageheap_stats(&a);
    ta_span_t *t = ta_pageheap_alloc_large(16);
    cr_assert_not_null(t);
    ta_pageheap_stats(&b);
    cr_assert_eq(t->page, page, "not the head of the recent block");
    cr_assert_eq(t->npages, 16u);
    ta_span_t *rest = ta_pagemap_span(page + 16);
    cr_assert(rest && rest->page == page + 16 && rest->npages == 48, "the rest is not one span of 48 pages");
    cr_assert_eq(rest->state, TA_SPAN_RECENT, "the rest went to the free lists (state %d)", rest->state);
    cr_assert_eq(b.free_bytes, a.free_bytes - 16 * PG);
    check_totals("head cut from a recent block");
    /* freed, the head stays a block of its own beside its rest */
    cr_assert_null(ta_pageheap_free_large(t, ta_span_addr(t)));
    ta_pageheap_stats(&c);
    cr_assert_eq(t->npages, 16u);
    cr_assert_eq(t->state, TA_SPAN_RECENT);
    cr_assert_eq(c.free_bytes, a.free_bytes);
    const char *err = ta_pageheap_free_large(t, ta_span_addr(t));
    cr_assert(err && !strcmp(err, "double free of"), "a second free of the head: %s", err ? err : "accepted");
    check_totals("head freed");
    /* 40 pages: the same head, the boundary moved; then 10: moved back */
    const uintptr_t sizes[] = {40, 10, 47};
    for (int k = 0; k < 3; k++) {
        ta_span_t *u = ta_pageheap_alloc_large(sizes[k]);
        cr_assert_eq(u, t, "%lu pages: not the head", (unsigned long)sizes[k]);
        cr_assert_eq(u->page, page);
        cr_assert_eq(u->npages, sizes[k]);
        ta_span_t *r = ta_pagemap_span(page + sizes[k]);
        cr_assert_eq(r, rest, "%lu pages: the rest does not start where the head ends", (unsigned long)sizes[k]);
        cr_assert_eq(r->npages, 64 - sizes[k]);
        cr_assert_eq(r->state, TA_SPAN_RECENT);
        ta_pageheap_stats(&b);
        cr_assert_eq(b.free_bytes, a.free_bytes - sizes[k] * PG);
        check_totals("boundary moved");
        cr_assert_null(ta_pageheap_free_large(u, ta_span_addr(u)));
    }
    /* their joint length: one block again, as it was */
    ta_span_t *u = ta_pageheap_alloc_large(64);
    ta_pageheap_stats(&c);
    cr_assert_eq(u, t);
    cr_assert_eq(u->npages, 64u);
    cr_assert_eq(c.n_coalesce, a.n_coalesce + 1);
    check_totals("head and rest one block");
    /* cut again and left cut: the rest goes to the free lists registered at
     * both ends (the cut registered its first page only) */
    cr_assert_null(ta_pageheap_free_large(u, ta_span_addr(u)));
    t = ta_pageheap_alloc_large(16);
    cr_assert_eq(t->page, page);
    ta_pageheap_release(true); /* trim: recent blocks to the free lists */
    rest = ta_pagemap_span(page + 16);
    cr_assert(rest && rest->page == page + 16 && rest->npages == 48, "the rest is not one free span of 48 pages");
    cr_assert(rest->state == TA_SPAN_FREE || rest->state == TA_SPAN_RELEASED, "state %d", rest->state);
    cr_assert_eq(ta_pagemap_span(page + 63), rest);
    check_totals("rest on the free lists");
    ta_pageheap_free(t);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[2]);
    check_totals("all freed");
}

Test(pageheap, freed_large_block_comes_back_whole) {
    SKIP_IF_GUARDED(); /* the hardened build keeps no recent blocks */
    ta_span_t *run[3];
    cr_assert(get_run(64, 3, run)); /* run[1] between two blocks in use: no free neighbour */
    ta_span_t *s = run[1];
    uintptr_t page = s->page;
    memset(ta_span_addr(s), 0x3c, 64 * PG);
    ta_pageheap_stats_t a, b, c;
    ta_pageheap_stats(&a);
    cr_assert_null(ta_pageheap_free_large(s, ta_span_addr(s)));
    ta_pageheap_stats(&b);
    const char *again = ta_pageheap_free_large(s, ta_span_addr(s));
    ta_span_t *t = ta_pageheap_alloc(57, 1, 0); /* 57 + 57/8 = 64 */
    ta_pageheap_stats(&c);
    cr_assert_str_eq(again ? again : "(accepted)", "double free of");
    cr_assert_eq(b.free_bytes, a.free_bytes + 64 * PG, "a freed block counts as free");
    cr_assert_eq(b.inuse_bytes, a.inuse_bytes - 64 * PG);
    cr_assert_eq(b.large_count, a.large_count - 1);
    cr_assert_eq(t, s, "the freed block's record did not come back");
    cr_assert_eq(t->page, page);
    cr_assert_eq(t->npages, 64u, "the block was cut to %lu pages", (unsigned long)t->npages);
    cr_assert_eq(c.n_coalesce, a.n_coalesce, "the block merged on its way");
    cr_assert_eq(c.n_grow_os, a.n_grow_os);
    cr_assert_eq(c.free_bytes, a.free_bytes);
    cr_assert_eq(((unsigned char *)ta_span_addr(t))[5 * PG], 0x3c, "the pages were not the same resident ones");
    cr_assert_not(t->zeroed);
    check_totals("recent block reused");
    /* too small a request (less than 8/9 of it) does not take it whole */
    cr_assert_null(ta_pageheap_free_large(t, ta_span_addr(t)));
    ta_span_t *u = ta_pageheap_alloc(40, 1, 0);
    cr_assert_not_null(u);
    cr_assert(u != t || u->npages == 40, "a 40-page request took %lu pages", (unsigned long)u->npages);
    ta_pageheap_free(u);
    /* trim: the recent blocks go back to the lists, merge and are released */
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[2]);
    ta_pageheap_release(true);
    ta_pageheap_stats(&c);
    cr_assert_eq(c.free_bytes, 0u, "%lu free bytes left resident after trim", (unsigned long)c.free_bytes);
    ta_span_t *whole = ta_pagemap_span(page); /* released, or unmapped with its neighbours */
    cr_assert(!whole || (whole->state == TA_SPAN_RELEASED && whole->page <= page - 64 &&
                         whole->page + whole->npages >= page + 128),
              "the three blocks' pages did not merge into one released span");
    check_totals("after trim");
}

/* The decay's tick runs from large frees alone, each of them taking a recent
 * block and putting it back (every 32nd free looks at the clock): a decay
 * pass puts the recent block nobody asked for again on the free lists.  Until
 * that pass, the block freed is the one that comes back; after it, any 64
 * resident pages may (per CPU, the pass also empties the CPUs' caches, whose
 * spans go back to the page heap resident too). */
Test(pageheap, large_frees_of_a_recycled_block_run_the_decay) {
    SKIP_IF_GUARDED(); /* the hardened build keeps no recent blocks */
    ta_span_t *run[3];
    cr_assert(get_run(64, 3, run));
    ta_span_t *x = run[1], *y = run[2];
    uintptr_t xpage = x->page;
    cr_assert_null(ta_pageheap_free_large(x, ta_span_addr(x)));
    cr_assert_eq(x->state, TA_SPAN_RECENT);
    uint64_t decay = ta_cfg.decay_ms;
    ta_cfg.decay_ms = 40;
    tu_sleep_ms(60); /* the last pass is older than a quarter of the period */
    int frees = 0;
    ta_span_t *held = y;
    while (frees < 64) {
        cr_assert_null(ta_pageheap_free_large(held, ta_span_addr(held)));
        frees++;
        bool passed = ta_pagemap_span(xpage)->state != TA_SPAN_RECENT;
        held = ta_pageheap_alloc_large(64);
        cr_assert_not_null(held);
        if (passed) break;
        cr_assert_eq(held, y, "the newest recent block did not come back (free %d)", frees);
    }
    ta_cfg.decay_ms = decay;
    cr_assert_neq(ta_pagemap_span(xpage)->state, TA_SPAN_RECENT, "%d large frees ran no decay pass", frees);
    cr_assert_leq(frees, 32);
    check_totals("recent block flushed by the tick of large frees");
    ta_pageheap_free(held);
    ta_pageheap_free(run[0]);
    check_totals("all freed");
}

/* A block grown by realloc starts in the pages of the large block freed just
 * before it, keeping up to 16 pages of them as room to grow; the rest goes
 * back behind it as free pages. */
Test(pageheap, growable_block_takes_a_freed_block) {
    SKIP_IF_GUARDED(); /* the hardened build keeps no recent blocks */
    ta_span_t *run[3];
    cr_assert(get_run(40, 3, run));
    ta_span_t *s = run[1];
    uintptr_t page = s->page;
    cr_assert_null(ta_pageheap_free_large(s, ta_span_addr(s)));
    ta_span_t *g = ta_pageheap_alloc_growable(2);
    cr_assert_not_null(g);
    cr_assert_eq(g->page, page, "the growing block went to page %#lx, not to the freed block's %#lx",
                 (unsigned long)g->page, (unsigned long)page);
    cr_assert_eq(g->npages, 18u, "%lu pages kept (2 asked + 16 of room)", (unsigned long)g->npages);
    ta_span_t *rest = ta_pagemap_span(page + 18);
    cr_assert(rest && rest->state == TA_SPAN_FREE && rest->page == page + 18 && rest->npages == 22,
              "the rest of the freed block is not a free span behind the growing one");
    cr_assert(ta_pageheap_grow(g, 40), "the growing block could not take the rest in place");
    check_totals("growable from a recent block");
    ta_pageheap_free(g);
    ta_pageheap_free(run[0]);
    ta_pageheap_free(run[2]);
}

/* Span records of spans that are gone come back to the OS on trim, whole
 * slabs at a time, and are reused afterwards. */
Test(pageheap, trim_gives_back_free_span_record_slabs) {
    SKIP_IF_GUARDED();
    enum { N = 3000 };
    static ta_span_t *sp[N];
    for (int i = 0; i < N; i++) {
        sp[i] = ta_pageheap_alloc(1, 1, 0);
        cr_assert_not_null(sp[i]);
    }
    /* every other one first: no coalescing can hide a record */
    for (int i = 0; i < N; i += 2) ta_pageheap_free(sp[i]);
    for (int i = 1; i < N; i += 2) ta_pageheap_free(sp[i]);
    size_t released = ta_meta_trim();
    cr_assert_geq(released, (size_t)4096 * 10, "only %zu bytes of span records given back", released);
    cr_assert_eq(released % 4096, 0u);
    /* records come from the released slabs again, zeroed and usable */
    for (int i = 0; i < N; i++) {
        sp[i] = ta_pageheap_alloc(1, 1, 0);
        cr_assert_not_null(sp[i]);
        cr_assert_eq(sp[i]->npages, 1u);
        cr_assert_eq(ta_pagemap_span(sp[i]->page), sp[i]);
    }
    for (int i = 0; i < N; i++) ta_pageheap_free(sp[i]);
    check_totals("after span records were trimmed and reused");
}

Test(pageheap, impossible_requests_fail) {
    ta_pageheap_stats_t a, b;
    ta_pageheap_stats(&a);
    ta_span_t *s1 = ta_pageheap_alloc(0, 1, 0);
    ta_span_t *s2 = ta_pageheap_alloc((TA_MAX_REQUEST >> TA_PAGE_SHIFT) + 1, 1, 0);
    ta_span_t *s3 = ta_pageheap_alloc(UINTPTR_MAX, 1, 0);
    ta_span_t *s4 = ta_pageheap_alloc(2, (uintptr_t)1 << 62, 0);
    ta_pageheap_stats(&b);
    cr_assert_null(s1);
    cr_assert_null(s2);
    cr_assert_null(s3);
    cr_assert_null(s4);
    cr_assert_eq(b.inuse_bytes, a.inuse_bytes);
    check_totals("after impossible requests");
}

/* A deterministic random walk of allocs and frees: the in-use counter always
 * equals the bytes of live spans, and the heap's totals match the OS tier's. */
Test(pageheap, stats_track_a_random_workload) {
    enum { SLOTS = 64, STEPS = 3000 };
    ta_span_t *slot[SLOTS] = {0};
    ta_pageheap_stats_t base, now;
    ta_pageheap_stats(&base);
    uint64_t live = 0, live_large = 0, nlarge = 0;
    uint32_t x = 12345;
    for (int step = 0; step < STEPS; step++) {
        x = x * 1103515245u + 12345u;
        int i = (x >> 8) % SLOTS;
        if (slot[i]) {
            live -= ta_span_bytes(slot[i]);
            if (!slot[i]->cls) live_large -= ta_span_usable(slot[i]), nlarge--;
            ta_pageheap_free(slot[i]);
            slot[i] = NULL;
        } else {
            uintptr_t n = 1 + ((x >> 16) % 40);
            if ((x >> 24) % 16 == 0) n += 200;
            uint32_t cls = (x >> 28) % 2 ? 0 : 1 + (x >> 3) % (ta_nclasses - 1);
            slot[i] = ta_pageheap_alloc(n, 1, cls);
            if (!slot[i]) cr_assert_fail("alloc of %lu pages failed", (unsigned long)n);
            /* a span that says it is zero must be; then dirty every page so
             * that reuse of these pages is not zero */
            for (uintptr_t pg = 0; pg < n; pg++) {
                uint64_t *w = (uint64_t *)((char *)ta_span_addr(slot[i]) + pg * PG);
                for (int j = 0; j < 8; j++) {
                    if (slot[i]->zeroed && w[j])
                        cr_assert_fail("step %d: span marked zeroed has data on page %lu", step, (unsigned long)pg);
                    w[j] = (uint64_t)step + 1;
                }
            }
            live += ta_span_bytes(slot[i]);
            if (!cls) live_large += ta_span_usable(slot[i]), nlarge++;
        }
        if (step % 500 == 499) ta_pageheap_release(step % 1000 == 999);
        ta_pageheap_stats(&now);
        if (now.inuse_bytes - base.inuse_bytes != live)
            cr_assert_fail("step %d: inuse grew by %lu, live spans hold %lu", step,
                     (unsigned long)(now.inuse_bytes - base.inuse_bytes), (unsigned long)live);
        if (now.large_bytes - base.large_bytes != live_large || now.large_count - base.large_count != nlarge)
            cr_assert_fail("step %d: large stats off", step);
    }
    check_totals("during the random walk");
    for (int i = 0; i < SLOTS; i++)
        if (slot[i]) ta_pageheap_free(slot[i]);
    ta_pageheap_stats(&now);
    cr_assert_eq(now.inuse_bytes, base.inuse_bytes);
    check_totals("after the random walk");
}

/* Four threads allocating and freeing spans at once never get overlapping
 * spans: each stamps its spans and checks the stamp survives. */
#define NT 4
static void *span_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    enum { SLOTS = 16 };
    ta_span_t *slot[SLOTS] = {0};
    uint32_t x = (uint32_t)id * 7919u + 1;
    for (int step = 0; step < 4000; step++) {
        x = x * 1664525u + 1013904223u;
        int i = (x >> 10) % SLOTS;
        if (slot[i]) {
            uint64_t *w = ta_span_addr(slot[i]);
            uint64_t want = (id << 56) | (uintptr_t)slot[i];
            if (w[0] != want || w[ta_span_usable(slot[i]) / 8 - 1] != want) return (void *)1;
            ta_pageheap_free(slot[i]);
            slot[i] = NULL;
        } else {
            slot[i] = ta_pageheap_alloc(1 + (x >> 20) % 12, 1, (x >> 5) % 3 ? 0 : 3);
            if (!slot[i]) return (void *)2;
            uint64_t *w = ta_span_addr(slot[i]);
            w[0] = w[ta_span_usable(slot[i]) / 8 - 1] = (id << 56) | (uintptr_t)slot[i];
        }
    }
    for (int i = 0; i < SLOTS; i++)
        if (slot[i]) ta_pageheap_free(slot[i]);
    return NULL;
}

Test(pageheap, concurrent_spans_never_overlap) {
    pthread_t t[NT];
    ta_pageheap_stats_t a, b;
    ta_pageheap_stats(&a);
    for (uintptr_t i = 0; i < NT; i++) cr_assert_eq(pthread_create(&t[i], NULL, span_worker, (void *)(i + 1)), 0);
    for (int i = 0; i < NT; i++) {
        void *r;
        pthread_join(t[i], &r);
        cr_assert_null(r, "thread %d: %s", i, r == (void *)1 ? "span overwritten by another" : "alloc failed");
    }
    ta_pageheap_stats(&b);
    /* the threads themselves may have cached small objects through malloc:
     * compare only the large spans, which only this test makes */
    cr_assert_eq(b.large_count, a.large_count);
    cr_assert_eq(b.large_bytes, a.large_bytes);
}

/* ---- issue 10 ---------------------------------------------------------------- */

/* Resident OS pages of [p, p + size), or -1 when the range is not mapped. */
static long resident(void *p, size_t size) {
    static unsigned char vec[(64u << 20) / 4096];
    size_t n = size / 4096;
    if (n > sizeof vec) return -2;
    if (mincore(p, size, vec) != 0) return -1;
    long r = 0;
    for (size_t i = 0; i < n; i++) r += vec[i] & 1;
    return r;
}

/* A block freed and allocated again every 300 ms, with a large free span
 * right behind it: each free merges the two.  With TIERALLOC_DECAY_MS=100
 * the span's pages must still go back to the OS (the merge used to give the
 * whole span the block's fresh age, so they never did). */
Test(pageheap, pages_next_to_a_recycled_block_still_decay) {
    SKIP_IF_GUARDED();
    enum { A = 1024, B = 4096 }; /* an 8 MiB block, 32 MiB free behind it */
    ta_pageheap_release(true);   /* no resident free span anywhere else */
    ta_span_t *x = ta_pageheap_alloc(A + B, 1, 0);
    cr_assert_not_null(x);
    uintptr_t page = x->page;
    memset(ta_span_addr(x), 1, ta_span_usable(x));
    cr_assert(ta_pageheap_shrink(x, A, false)); /* B: free and resident */
    char *b = (char *)ta_span_addr(x) + A * PG;
    long b_res0 = resident(b, B * PG);
    size_t rss0 = tu_rss_bytes();
    ta_cfg.decay_ms = 100; /* TIERALLOC_DECAY_MS=100 */
    int moved = 0;
    for (int i = 0; i < 3; i++) {
        tu_sleep_ms(300);
        ta_pageheap_free(x);
        x = ta_pageheap_alloc(A, 1, 0);
        if (!x) break;
        moved += x->page != page;
        memset(ta_span_addr(x), 2, ta_span_usable(x)); /* the block is in use */
    }
    size_t rss1 = tu_rss_bytes();
    long b_res1 = resident(b, B * PG);
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    cr_assert_not_null(x);
    cr_assert_eq(moved, 0, "the block moved %d times: the scenario did not happen", moved);
    cr_assert_eq(b_res0, (long)(B * PG / 4096), "B was not resident to begin with (%ld pages)", b_res0);
    cr_assert_eq(b_res1, 0, "%ld pages of B are still resident after 0.9 s idle with a 100 ms decay", b_res1);
    cr_assert_geq(rss0, rss1 + B * PG - B * PG / 8, "RSS went from %zu to %zu bytes", rss0, rss1);
    ta_span_t *bs = ta_pagemap_span(page + A);
    cr_assert(bs && bs->page == page + A && bs->state == TA_SPAN_RELEASED);
    ta_pageheap_free(x);
    check_totals("after decay next to a recycled block");
}

/* The background thread's decay step gives idle caches' objects back to
 * their spans and spans to the page heap: those operations are the decay's,
 * not the program's, and must not make an idle heap look busy (an idle
 * process whose caches drained over two periods kept its free pages two
 * periods longer).  Here the heap is idle but for such operations, bracketed
 * as bg_main brackets them: the next pass releases the free block. */
Test(pageheap, the_decays_own_operations_leave_an_idle_heap_idle) {
    SKIP_IF_GUARDED();
    enum { N = 2048 }; /* 8 MiB */
    ta_pageheap_release(true);
    ta_cfg.decay_ms = 300;
    ta_pageheap_bg_active = true; /* passes only where this test runs them, as in bg_main */
    ta_pageheap_decay(false); /* (the peaks are kept by period: periods of 300 ms from here) */
    /* in use, never touched: a busy heap keeps as much resident as its peak
     * in use, this block and big, so big's pages stay while it is busy */
    ta_span_t *hold = ta_pageheap_alloc(8 * N, 1, 0);
    ta_span_t *big = ta_pageheap_alloc(N, 1, 0);
    cr_assert(hold && big);
    char *p = ta_span_addr(big);
    memset(p, 1, (size_t)N * PG);
    ta_pageheap_free(big); /* free and resident */
    ta_pageheap_decay(false); /* sees the free: busy from now */
    tu_sleep_ms(350);
    uint64_t ops = ta_pageheap_ops();
    ta_span_t *s = ta_pageheap_alloc(1, 1, 0); /* what a cache's drain does */
    cr_assert_not_null(s);
    ta_pageheap_free(s);
    ta_pageheap_ops_by_decay(ops);
    /* a decay period with no operation of the program's: idle (had the drain
     * counted, the heap would be busy until a period after it) */
    tu_sleep_ms(50);
    ta_pageheap_decay(false);
    long left = resident(p, (size_t)N * PG);
    ta_pageheap_bg_active = false;
    ta_cfg.decay_ms = (uint64_t)1 << 40;
    ta_pageheap_free(hold);
    cr_assert_eq(left, 0, "%ld pages of the free block still resident after a decay period idle", left);
    check_totals("after an idle release");
}

/* A program that frees its small blocks and goes on with large ones: the
 * free pages lie in pieces, cut apart by spans that the objects in its cache
 * and the transfer caches keep in use.  A large request that no resident
 * free span fits while the heap holds that much free has those caches go
 * back to their spans first, and is served from the merged pages instead of
 * new ones (before: 20 MB more mapped and resident at the last block). */
Test(pageheap, a_large_request_reuses_pages_small_blocks_freed) {
    /* (the hardened build: each freed span's guard page comes back released,
     * not resident, and only spans of one kind merge, so its resident free
     * pages stay in span-sized pieces whatever the caches do: 441 MiB free,
     * the caches drained, 119 MiB mapped for the large blocks) */
    SKIP_IF_GUARDED();
    enum { N = 200000 };
    static void *v[N];
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)(i * 7919) % 3000 + 1;
        v[i] = malloc(n);
        cr_assert_not_null(v[i]);
        memset(v[i], 1, n);
    }
    for (int i = 0; i < N; i++) free(v[i]);
    struct ta_stats before = TA_STATS_INIT, after = TA_STATS_INIT;
    cr_assert_eq(ta_stats_get(&before), 0);
    static void *b[20];
    size_t total = 0;
    for (int i = 0; i < 20; i++) {
        size_t n = (size_t)(i + 1) << 20;
        b[i] = malloc(n);
        cr_assert_not_null(b[i]);
        memset(b[i], 1, n);
        total += n;
    }
    cr_assert_eq(ta_stats_get(&after), 0);
    for (int i = 0; i < 20; i++) free(b[i]);
    cr_log_info("%zu MiB of large blocks after %lu MiB of small ones freed: %lu MiB mapped before, %lu after",
                total >> 20, (unsigned long)(before.pageheap_free_bytes >> 20), (unsigned long)(before.mapped_bytes >> 20),
                (unsigned long)(after.mapped_bytes >> 20));
    cr_assert_geq(before.pageheap_free_bytes, total, "the scenario needs %zu bytes free in the heap, it has %lu", total,
                  (unsigned long)before.pageheap_free_bytes);
    cr_assert_leq(after.mapped_bytes, before.mapped_bytes + (4 << 20), "%lu bytes mapped before the large blocks, %lu after",
                  (unsigned long)before.mapped_bytes, (unsigned long)after.mapped_bytes);
}

/* A merged span keeps the older of the two ages: the part freed long ago
 * decays on time even when something was freed next to it just now. */
Test(pageheap, merged_spans_keep_the_older_age) {
    SKIP_IF_GUARDED();
    ta_span_t *run[4]; /* A, B, C, guard */
    cr_assert(get_run(8, 4, run));
    uintptr_t a = run[0]->page;
    ta_pageheap_free(run[1]); /* B: free since t0 */
    uint64_t t0 = ta_pagemap_span(a + 8)->free_since_ms;
    tu_sleep_ms(30);
    ta_pageheap_free(run[0]); /* A, later: merges with B behind it */
    ta_pageheap_free(run[2]); /* C, later: merges with A+B in front of it */
    ta_span_t *m = ta_pagemap_span(a);
    cr_assert_eq(m->page, a);
    cr_assert_eq(m->npages, 24u);
    cr_assert_eq(m->free_since_ms, t0, "merged span is %lu ms old, B was freed at %lu",
                 (unsigned long)m->free_since_ms, (unsigned long)t0);
    ta_pageheap_free(run[3]);
}

/* Growth leaves no holes: spans from successive new mappings are adjacent, so
 * that freed they merge into one span that a larger request can use. */
Test(pageheap, growth_leaves_no_holes) {
    SKIP_IF_GUARDED();
    enum { N = 8, K = 256 }; /* 2 MiB each: one new mapping each */
    ta_pageheap_release(true); /* no released span of 2 MiB or more left */
    ta_span_t *sp[N];
    for (int i = 0; i < N; i++) sp[i] = ta_pageheap_alloc(K, 1, 0);
    int adjacent = 0;
    for (int i = 0; i < N; i++) cr_assert_not_null(sp[i]);
    for (int i = 1; i < N; i++)
        adjacent += sp[i]->page + K + G == sp[i - 1]->page || sp[i - 1]->page + K + G == sp[i]->page;
    uintptr_t pages[N];
    for (int i = 0; i < N; i++) pages[i] = sp[i]->page;
    for (int i = 0; i < N; i++) ta_pageheap_free(sp[i]);
    /* (metadata chunks, a thread-cache slab or a pagemap leaf may land between
     * two of them: a few, not more; so the largest merged span is looked at,
     * wherever the intruder landed) */
    cr_assert_geq(adjacent, N - 4, "only %d of %d new mappings are next to the previous one", adjacent, N - 1);
    /* the longest run of spans that lay end to end must have merged whole
     * (intruders between some of them split the runs) */
    uintptr_t merged = 0, run = 0;
    for (int i = 0; i < N; i++) {
        ta_span_t *m = ta_pagemap_span(pages[i]);
        cr_assert_not_null(m);
        if (m->npages > merged) merged = m->npages;
        uintptr_t len = 1;
        for (uintptr_t end = pages[i] + K + G;; end += K + G) {
            int j = 0;
            while (j < N && pages[j] != end) j++;
            if (j == N) break;
            len++;
        }
        if (len > run) run = len;
    }
    cr_assert_geq(run, 2u, "no two new mappings lie end to end");
    cr_assert_geq(merged, run * K, "the freed spans merged into %lu pages at most; %lu spans lay end to end",
                  (unsigned long)merged, (unsigned long)run);
    check_totals("after growth");
}

/* malloc_trim (release(true)) unmaps released address space: the range is
 * gone, its pagemap entries cleared, the OS tier's count down; the heap maps
 * afresh afterwards. */
Test(pageheap, trim_unmaps_free_address_space) {
    const uintptr_t n = 8192; /* 64 MiB */
    ta_span_t *s = ta_pageheap_alloc(n, 1, 0);
    cr_assert_not_null(s);
    uintptr_t page = s->page;
    char *p = ta_span_addr(s);
    memset(p, 5, 1 << 20);
    ta_pageheap_free(s);
    ta_os_stats_t oa, ob;
    ta_pageheap_stats_t a, b;
    ta_os_stats(&oa);
    ta_pageheap_stats(&a);
    ta_pageheap_release(true);
    ta_pageheap_stats(&b);
    ta_os_stats(&ob);
    cr_assert_geq(b.unmapped_bytes - a.unmapped_bytes, n * PG);
    cr_assert_eq(oa.mapped_bytes - ob.mapped_bytes, b.unmapped_bytes - a.unmapped_bytes);
    cr_assert_geq(b.n_unmap_os - a.n_unmap_os, 1u);
    cr_assert_eq(resident(p, (size_t)1 << 20), -1, "the range is still mapped");
    for (uintptr_t i = 0; i < n; i += 97) cr_assert_null(ta_pagemap_span(page + i), "page %lu still mapped to a span", (unsigned long)i);
    cr_assert_null(ta_pagemap_span(page + n - 1));
    check_totals("after trim");
    s = ta_pageheap_alloc(n, 1, 0);
    cr_assert_not_null(s);
    cr_assert(s->zeroed);
    memset(ta_span_addr(s), 6, ta_span_usable(s));
    ta_pageheap_free(s);
    check_totals("after a new mapping");
}

/* Span records run out (no address space for more metadata): the request
 * fails with NULL instead of aborting, the failed request changes nothing, the
 * heap stays usable, and freeing makes records available again. */
#define BIG_PAGES 131072 /* 1 GiB of free pages cut into 1-page spans: more records than a metadata chunk holds */
static ta_span_t *rec_spans[BIG_PAGES];
static void records_run_out_child(void *arg) {
    (void)arg;
    ta_pageheap_release(true); /* unmaps the released spans */
    ta_pageheap_stats_t base, a, b;
    ta_pageheap_stats(&base);
    ta_span_t *big = ta_pageheap_alloc(BIG_PAGES, 1, 0);
    TU_CHILD_CHECK(big != NULL, "no 1 GiB span");
    ta_pageheap_free(big); /* free pages (of the resident kind, though never touched) */
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    TU_CHILD_CHECK(got > 0, "statm");
    buf[got] = 0;
    rlim_t vm = (rlim_t)atol(buf) * 4096;
    /* room for the stack to grow, not for a metadata chunk */
    struct rlimit rl = {vm + (256 << 10), RLIM_INFINITY};
    TU_CHILD_CHECK(setrlimit(RLIMIT_AS, &rl) == 0, "setrlimit");
    int n = 0;
    for (;;) {
        ta_pageheap_stats(&a);
        if (n == BIG_PAGES || !(rec_spans[n] = ta_pageheap_alloc(1, 1, 0))) break;
        n++;
    }
    ta_pageheap_stats(&b);
    TU_CHILD_CHECK(n < BIG_PAGES, "span records never ran out (%d spans)", n);
    TU_CHILD_CHECK(a.inuse_bytes == b.inuse_bytes && a.n_alloc == b.n_alloc && a.large_count == b.large_count &&
                       a.free_bytes + a.released_bytes == b.free_bytes + b.released_bytes + b.unmapped_bytes -
                                                              a.unmapped_bytes,
                   "the failed request changed the heap");
    /* usable: one freed span's record serves the next request */
    ta_pageheap_free(rec_spans[--n]);
    rec_spans[n] = ta_pageheap_alloc(1, 1, 0);
    TU_CHILD_CHECK(rec_spans[n] != NULL, "no span after a free");
    n++;
    for (int i = 0; i < n; i++) ta_pageheap_free(rec_spans[i]);
    ta_pageheap_stats(&b);
    TU_CHILD_CHECK(b.inuse_bytes == base.inuse_bytes && b.large_count == base.large_count,
                   "in use: %lu bytes in %lu blocks, %lu in %lu before", (unsigned long)b.inuse_bytes,
                   (unsigned long)b.large_count, (unsigned long)base.inuse_bytes, (unsigned long)base.large_count);
    /* with room again, the whole gigabyte in one request */
    rl.rlim_cur = RLIM_INFINITY;
    TU_CHILD_CHECK(setrlimit(RLIMIT_AS, &rl) == 0, "setrlimit");
    big = ta_pageheap_alloc(BIG_PAGES, 1, 0);
    TU_CHILD_CHECK(big != NULL, "no 1 GiB span after the limit was lifted");
    ta_pageheap_free(big);
    printf("%d spans\n", n);
}

Test(pageheap, running_out_of_span_records_fails_cleanly) {
    static tu_child_t c;
    tu_run_child(records_run_out_child, NULL, 50000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(strstr(c.out, " spans") != NULL, "stdout: %s", c.out);
}
