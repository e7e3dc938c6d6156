/* test_arena.c: tier 0, the scoped stack arena (alloc/arena.c) and how the
 * heap entry points treat scoped pointers.  Links the core statically, so
 * malloc/free here are tieralloc's and the arena's statistics are visible.
 *
 * Misuse (a pointer used after its scope ended, a scope ended twice) must
 * abort with one "tieralloc: " line naming the address: those cases run in a
 * forked child, which passes the offending address through a shared page. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/mman.h>

#include "internal.h"
#include "tieralloc.h"

#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#pragma GCC diagnostic ignored "-Wuse-after-free"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static uint64_t arena_held(void) {
    ta_arena_stats_t s;
    ta_arena_stats(&s);
    return s.held_bytes;
}

/* [p, p+n) and [q, q+m) do not overlap */
static int disjoint(const void *p, size_t n, const void *q, size_t m) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)q;
    return a + n <= b || b + m <= a;
}

/* ---- basics ------------------------------------------------------------------ */
Test(arena, blocks_are_distinct_aligned_and_keep_their_contents) {
    cr_assert_eq(ta_scope_depth(), 0);
    ta_scope_t m = ta_scope_begin();
    cr_assert_eq(ta_scope_depth(), 1);
    enum { N = 2000 };
    static char *p[N];
    static size_t n[N];
    uint64_t rng = 1;
    for (int i = 0; i < N; i++) {
        n[i] = tu_rand_range(&rng, 0, i % 50 == 0 ? 20000 : 300);
        p[i] = ta_scope_alloc(tu_hide_size(n[i]));
        cr_assert_not_null(p[i]);
        cr_assert_eq((uintptr_t)p[i] % 16, 0, "block %d of %zu bytes at %p", i, n[i], (void *)p[i]);
        tu_fill(p[i], n[i], 7);
        cr_assert_geq(malloc_usable_size(p[i]), n[i]);
        cr_assert_lt(malloc_usable_size(p[i]), n[i] + 16);
        cr_assert(ta_owns(p[i]), "a live scoped block is tieralloc's");
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(tu_check(p[i], n[i], 7), (size_t)-1, "block %d was overwritten", i);
        if (i) cr_assert(disjoint(p[i - 1], n[i - 1] ? n[i - 1] : 1, p[i], n[i] ? n[i] : 1));
    }
    ta_scope_end(m);
    cr_assert_eq(ta_scope_depth(), 0);
}

Test(arena, zero_sized_blocks_are_unique) {
    ta_scope_t m = ta_scope_begin();
    void *a = ta_scope_alloc(0), *b = ta_scope_alloc(0), *c = ta_scope_alloc(1);
    cr_assert(a && b && c);
    cr_assert(a != b && b != c && a != c);
    ta_scope_end(m);
}

Test(arena, end_resets_the_bump_pointer_so_the_next_scope_reuses_the_memory) {
    ta_scope_t m = ta_scope_begin();
    char *first = ta_scope_alloc(100);
    for (int i = 0; i < 100; i++) ta_scope_alloc(1000); /* past the first chunk */
    ta_scope_end(m);
    m = ta_scope_begin();
    char *again = ta_scope_alloc(100);
    ta_scope_end(m);
    cr_assert_eq(again, first, "a new scope starts where the last one did");
}

/* ---- nesting ----------------------------------------------------------------- */
Test(arena, nested_scopes_release_only_their_own_blocks) {
    ta_scope_t outer = ta_scope_begin();
    char *a = ta_scope_alloc(64);
    tu_fill(a, 64, 1);
    ta_scope_t inner = ta_scope_begin();
    cr_assert_eq(ta_scope_depth(), 2);
    char *b = ta_scope_alloc(64);
    tu_fill(b, 64, 2);
    char *big = ta_scope_alloc(200 * KiB); /* forces further chunks */
    for (int i = 0; i < 50; i++) ta_scope_alloc(4000);
    memset(big, 0x5a, 200 * KiB);
    ta_scope_end(inner);
    cr_assert_eq(ta_scope_depth(), 1);
    cr_assert_eq(tu_check(a, 64, 1), (size_t)-1, "the outer block survives the inner end");
    free(a); /* still live: a no-op */
    /* the inner scope's space is the outer's again */
    char *c = ta_scope_alloc(64);
    cr_assert_eq(c, b, "the outer scope continues where the inner began");
    ta_scope_t inner2 = ta_scope_begin();
    char *d = ta_scope_alloc(32);
    cr_assert(disjoint(d, 32, c, 64) && disjoint(d, 32, a, 64));
    ta_scope_end(inner2);
    cr_assert_eq(tu_check(a, 64, 1), (size_t)-1);
    ta_scope_end(outer);
    cr_assert_eq(ta_scope_depth(), 0);
}

Test(arena, deep_nesting_beyond_the_tracked_depth) {
    enum { D = 100 };
    static ta_scope_t m[D];
    static char *p[D];
    for (int i = 0; i < D; i++) {
        m[i] = ta_scope_begin();
        p[i] = ta_scope_alloc(48);
        tu_fill(p[i], 48, (uint64_t)i);
        free(p[i]); /* live at every depth: a no-op */
    }
    cr_assert_eq(ta_scope_depth(), D);
    for (int i = D - 1; i >= 0; i--) {
        for (int j = 0; j <= i; j++) cr_assert_eq(tu_check(p[j], 48, (uint64_t)j), (size_t)-1);
        cr_assert_eq(malloc_usable_size(p[i]), 56);
        ta_scope_end(m[i]);
    }
    cr_assert_eq(ta_scope_depth(), 0);
}

/* Ending an outer scope ends the inner ones too (how longjmp out of nested
 * scopes is cleaned up). */
static jmp_buf jb;
static void inner_work_then_jump(void) {
    ta_scope_begin();
    ta_scope_alloc(100);
    ta_scope_begin();
    ta_scope_alloc(100 * KiB);
    longjmp(jb, 1);
}
Test(arena, ending_an_outer_scope_ends_the_inner_ones) {
    ta_scope_t outer = ta_scope_begin();
    char *a = ta_scope_alloc(32);
    if (!setjmp(jb)) inner_work_then_jump();
    cr_assert_eq(ta_scope_depth(), 3);
    ta_scope_end(outer);
    cr_assert_eq(ta_scope_depth(), 0);
    ta_scope_t again = ta_scope_begin();
    cr_assert_eq(ta_scope_alloc(32), a, "everything since the outer mark was released");
    ta_scope_end(again);
}

/* ---- TA_SCOPE: every way out of the block ends the scope -------------------------- */
static char *seen; /* the first block of the last TA_SCOPE */

static void scoped_normal(void) {
    TA_SCOPE;
    seen = ta_scope_alloc(40);
    cr_assert_eq(ta_scope_depth(), 1);
}

static int scoped_return(int x) {
    TA_SCOPE;
    seen = ta_scope_alloc(40);
    if (x) return 7;
    ta_scope_alloc(10);
    return 8;
}

Test(arena, TA_SCOPE_ends_at_the_end_of_the_block_and_on_return) {
    scoped_normal();
    cr_assert_eq(ta_scope_depth(), 0);
    char *first = seen;
    cr_assert_eq(scoped_return(1), 7);
    cr_assert_eq(ta_scope_depth(), 0);
    cr_assert_eq(seen, first, "the scope's memory was released");
    cr_assert_eq(scoped_return(0), 8);
    cr_assert_eq(ta_scope_depth(), 0);
}

Test(arena, TA_SCOPE_ends_on_break_and_continue) {
    char *first = NULL;
    int iterations = 0;
    for (int i = 0; i < 10; i++) {
        TA_SCOPE;
        char *p = ta_scope_alloc(40);
        if (!first) first = p;
        cr_assert_eq(p, first, "iteration %d: the last iteration's scope was not ended", i);
        cr_assert_eq(ta_scope_depth(), 1);
        iterations++;
        if (i % 2) continue;
        ta_scope_alloc(3000);
        if (i == 6) break;
    }
    cr_assert_eq(iterations, 7);
    cr_assert_eq(ta_scope_depth(), 0);
    while (1) {
        TA_SCOPE;
        ta_scope_alloc(1);
        break;
    }
    cr_assert_eq(ta_scope_depth(), 0);
}

Test(arena, TA_SCOPE_ends_on_goto_out_of_the_block) {
    int n = 0;
    {
        TA_SCOPE;
        ta_scope_alloc(10);
        {
            TA_SCOPE; /* two nested levels left by one goto */
            ta_scope_alloc(10);
            cr_assert_eq(ta_scope_depth(), 2);
            if (tu_hide_size(1)) goto out;
        }
        n = 1;
    }
out:
    cr_assert_eq(n, 0);
    cr_assert_eq(ta_scope_depth(), 0);
}

Test(arena, two_TA_SCOPEs_in_one_block_nest) {
    {
        TA_SCOPE;
        char *a = ta_scope_alloc(16);
        TA_SCOPE;
        char *b = ta_scope_alloc(16);
        cr_assert_neq(a, b);
        cr_assert_eq(ta_scope_depth(), 2);
    }
    cr_assert_eq(ta_scope_depth(), 0);
}

/* ---- escape --------------------------------------------------------------------- */
Test(arena, escape_copies_to_a_heap_block_that_outlives_the_scope) {
    static const size_t sizes[] = {0, 1, 15, 16, 17, 100, 4000, 70000, 300 * KiB, 3 * MiB};
    enum { N = sizeof sizes / sizeof sizes[0] };
    char *kept[N];
    ta_scope_t m = ta_scope_begin();
    for (size_t i = 0; i < N; i++) {
        char *p = ta_scope_alloc(sizes[i]);
        cr_assert_not_null(p);
        tu_fill_base(p, sizes[i], 1000 + i);
        kept[i] = ta_escape(p);
        cr_assert_not_null(kept[i]);
        cr_assert_neq(kept[i], p);
        cr_assert_null(ta_arena_span(kept[i]), "the copy is not in an arena chunk");
        cr_assert(ta_owns(kept[i]));
        cr_assert_geq(malloc_usable_size(kept[i]), sizes[i]);
    }
    ta_scope_end(m);
    /* a later scope writes over the old scope's memory */
    m = ta_scope_begin();
    for (int i = 0; i < 100; i++) memset(ta_scope_alloc(4000), 0xee, 4000);
    ta_scope_end(m);
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(tu_check_base(kept[i], sizes[i], 1000 + i), (size_t)-1, "escaped block %zu", i);
        kept[i] = realloc(kept[i], sizes[i] + 10); /* an ordinary heap block */
        cr_assert_not_null(kept[i]);
        cr_assert_eq(tu_check_base(kept[i], sizes[i], 1000 + i), (size_t)-1);
        free(kept[i]);
    }
}

Test(arena, escape_of_a_heap_pointer_returns_it_unchanged) {
    char *h = malloc(100);
    char *big = malloc(2 * MiB);
    cr_assert_null(ta_escape(NULL));
    ta_scope_t m = ta_scope_begin();
    cr_assert_eq(ta_escape(h), h);
    cr_assert_eq(ta_escape(big), big);
    ta_scope_end(m);
    cr_assert_eq(ta_escape(h), h);
    free(h);
    free(big);
}

/* ---- the heap's entry points on scoped pointers --------------------------------- */
Test(arena, free_of_a_scoped_block_is_a_no_op) {
    ta_scope_t m = ta_scope_begin();
    char *a = ta_scope_alloc(64), *b = ta_scope_alloc(64), *c = ta_scope_alloc(64);
    char *big = ta_scope_alloc(2 * MiB);
    tu_fill(a, 64, 1);
    tu_fill(b, 64, 2);
    tu_fill(c, 64, 3);
    tu_fill(big, 2 * MiB, 4);
    free(tu_hide(b));
    free(tu_hide(b)); /* twice: still nothing */
    free(tu_hide(big));
    ta_free(tu_hide(a));
    ta_free_sized(tu_hide(c), 64);
    char *d = ta_scope_alloc(64);
    cr_assert(disjoint(d, 64, a, 64) && disjoint(d, 64, b, 64) && disjoint(d, 64, c, 64),
              "a freed scoped block is not reused inside its scope");
    cr_assert_eq(tu_check(a, 64, 1), (size_t)-1);
    cr_assert_eq(tu_check(b, 64, 2), (size_t)-1);
    cr_assert_eq(tu_check(c, 64, 3), (size_t)-1);
    cr_assert_eq(tu_check(big, 2 * MiB, 4), (size_t)-1);
    ta_scope_end(m);
}

Test(arena, realloc_moves_a_scoped_block_to_the_heap) {
    ta_scope_t m = ta_scope_begin();
    char *p = ta_scope_alloc(100);
    tu_fill_base(p, 100, 5);
    char *grown = realloc(p, 5000);
    cr_assert_not_null(grown);
    cr_assert_null(ta_arena_span(grown), "the new block is a heap block");
    cr_assert_eq(tu_check_base(grown, 100, 5), (size_t)-1);
    cr_assert_eq(tu_check_base(p, 100, 5), (size_t)-1, "the old block stays until the scope ends");
    char *q = ta_scope_alloc(1000);
    tu_fill_base(q, 1000, 6);
    char *shrunk = realloc(q, 10);
    cr_assert_null(ta_arena_span(shrunk));
    cr_assert_eq(tu_check_base(shrunk, 10, 6), (size_t)-1);
    char *r = ta_scope_alloc(50);
    cr_assert_null(realloc(r, 0), "realloc(p, 0) frees (a no-op here) and gives NULL");
    char *big = ta_scope_alloc(3 * MiB);
    tu_fill_base(big, 3 * MiB, 7);
    char *bigger = reallocarray(big, 2, 2 * MiB);
    cr_assert_not_null(bigger);
    cr_assert_eq(tu_check_base(bigger, 3 * MiB, 7), (size_t)-1);
    ta_scope_end(m);
    /* the heap copies outlive the scope and are freed as usual */
    cr_assert_eq(tu_check_base(grown, 100, 5), (size_t)-1);
    free(grown);
    free(shrunk);
    free(bigger);
}

Test(arena, malloc_usable_size_answers_for_scoped_blocks) {
    ta_scope_t m = ta_scope_begin();
    for (size_t n = 0; n < 600; n++) {
        char *p = ta_scope_alloc(n);
        size_t u = malloc_usable_size(p);
        cr_assert(u >= n && u < n + 16, "n=%zu usable=%zu", n, u);
        memset(p, 0xab, u); /* all of it may be written */
    }
    char *big = ta_scope_alloc(5 * MiB + 3);
    cr_assert_geq(malloc_usable_size(big), 5 * MiB + 3);
    char *al = ta_scope_alloc_aligned(4096, 100);
    cr_assert_geq(malloc_usable_size(al), 100);
    ta_scope_end(m);
}

Test(arena, calloc_variant_zeroes_reused_memory_and_checks_overflow) {
    ta_scope_t m = ta_scope_begin();
    memset(ta_scope_alloc(8000), 0xff, 8000);
    ta_scope_end(m);
    m = ta_scope_begin();
    unsigned char *z = ta_scope_calloc(1000, 8);
    for (size_t i = 0; i < 8000; i++) cr_assert_eq(z[i], 0, "byte %zu", i);
    errno = 0;
    cr_assert_null(ta_scope_calloc(SIZE_MAX / 2, 3));
    cr_assert_eq(errno, ENOMEM);
    ta_scope_end(m);
}

Test(arena, impossible_sizes_give_ENOMEM) {
    ta_scope_t m = ta_scope_begin();
    errno = 0;
    cr_assert_null(ta_scope_alloc(tu_hide_size(SIZE_MAX)));
    cr_assert_eq(errno, ENOMEM);
    errno = 0;
    cr_assert_null(ta_scope_alloc(tu_hide_size(SIZE_MAX - 20)));
    cr_assert_eq(errno, ENOMEM);
    errno = 0;
    cr_assert_null(ta_scope_alloc(tu_hide_size((size_t)1 << 62)));
    cr_assert_eq(errno, ENOMEM);
    errno = 0;
    cr_assert_null(ta_scope_alloc_aligned(64, SIZE_MAX - 10));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_not_null(ta_scope_alloc(16), "the scope still works");
    ta_scope_end(m);
}

/* ---- without a scope: the heap ------------------------------------------------------ */
Test(arena, without_a_scope_allocations_are_heap_blocks) {
    cr_assert_eq(ta_scope_depth(), 0);
    char *p = ta_scope_alloc(100);
    cr_assert_not_null(p);
    cr_assert_null(ta_arena_span(p));
    cr_assert(ta_owns(p));
    cr_assert_eq(ta_escape(p), p, "already a heap block");
    char *a = ta_scope_alloc_aligned(4096, 10);
    cr_assert_eq((uintptr_t)a % 4096, 0);
    cr_assert_null(ta_arena_span(a));
    unsigned char *z = ta_scope_calloc(10, 10);
    for (int i = 0; i < 100; i++) cr_assert_eq(z[i], 0);
    free(p); /* real frees */
    free(a);
    free(z);
    /* and after a scope has come and gone, too */
    ta_scope_t m = ta_scope_begin();
    ta_scope_alloc(10);
    ta_scope_end(m);
    char *q = ta_scope_alloc(10);
    cr_assert_null(ta_arena_span(q));
    free(q);
}

/* ---- alignment ---------------------------------------------------------------------- */
Test(arena, aligned_variant_honours_every_power_of_two) {
    ta_scope_t m = ta_scope_begin();
    for (int round = 0; round < 3; round++) {
        for (size_t al = 1; al <= 4 * MiB; al <<= 1) {
            ta_scope_alloc(24); /* something unaligned in between */
            size_t n = al < 4096 ? 40 + al : 1000;
            char *p = ta_scope_alloc_aligned(al, n);
            cr_assert_not_null(p, "alignment %zu", al);
            cr_assert_eq((uintptr_t)p % (al < 16 ? 16 : al), 0, "alignment %zu: %p", al, (void *)p);
            tu_fill(p, n, al);
            cr_assert_geq(malloc_usable_size(p), n);
            cr_assert_eq(tu_check(p, n, al), (size_t)-1);
            free(p); /* a no-op: a scoped block */
            cr_assert_eq(tu_check(p, n, al), (size_t)-1);
        }
    }
    errno = 0;
    cr_assert_null(ta_scope_alloc_aligned(24, 10));
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(ta_scope_alloc_aligned(0, 10));
    cr_assert_eq(errno, EINVAL);
    ta_scope_end(m);
}

/* ---- large blocks ------------------------------------------------------------------- */
Test(arena, blocks_bigger_than_a_chunk) {
    uint64_t before = arena_held();
    ta_scope_t m = ta_scope_begin();
    char *small = ta_scope_alloc(100);
    tu_fill(small, 100, 1);
    static const size_t sizes[] = {1 * MiB + 1, 5 * MiB, 16 * MiB + 100, 48 * KiB, 2 * MiB};
    char *p[5];
    for (int i = 0; i < 5; i++) {
        p[i] = ta_scope_alloc(sizes[i]);
        cr_assert_not_null(p[i]);
        cr_assert_eq((uintptr_t)p[i] % 16, 0);
        tu_fill(p[i], sizes[i], (uint64_t)i);
        cr_assert_geq(malloc_usable_size(p[i]), sizes[i]);
    }
    char *after = ta_scope_alloc(100);
    cr_assert(disjoint(after, 100, small, 100));
    cr_assert_geq(arena_held(), before + 24 * MiB);
    ta_scope_t inner = ta_scope_begin();
    char *ib = ta_scope_alloc(6 * MiB);
    memset(ib, 1, 6 * MiB);
    ta_scope_end(inner);
    for (int i = 0; i < 5; i++) cr_assert_eq(tu_check(p[i], sizes[i], (uint64_t)i), (size_t)-1);
    cr_assert_eq(tu_check(small, 100, 1), (size_t)-1);
    char *e = ta_escape(p[2]);
    uint64_t e_base = tu_pattern_base(p[2], sizes[2], 2);
    ta_scope_end(m);
    /* all but the retained few MiB went back to the page heap */
    cr_assert_leq(arena_held(), before + 4 * MiB + 64 * KiB + 16 * MiB / 16,
                  "held %llu bytes after the scope", (unsigned long long)arena_held());
    cr_assert_eq(tu_check_base(e, sizes[2], e_base), (size_t)-1, "the escaped copy of a big block");
    free(e);
}

/* ---- memory is reused ----------------------------------------------------------------- */
Test(arena, chunks_are_reused_over_100k_scopes) {
    ta_scope_t w = ta_scope_begin(); /* warm up: every size once */
    ta_scope_end(w);
    uint64_t rng = 3;
    size_t held_max = 0;
    ta_arena_stats_t s0, s1;
    ta_arena_stats(&s0);
    size_t rss0 = tu_rss_bytes();
    for (int i = 0; i < 100000; i++) {
        ta_scope_t m = ta_scope_begin();
        int objs = (int)tu_rand_range(&rng, 1, 20);
        for (int k = 0; k < objs; k++) ta_scope_alloc(tu_rand_range(&rng, 1, 400));
        if (i % 1000 == 0) { /* now and then a scope that needs several chunks */
            for (int k = 0; k < 300; k++) *(char *)ta_scope_alloc(4000) = 1;
            if (i % 10000 == 0) *(char *)ta_scope_alloc(3 * MiB) = 1;
        }
        ta_scope_end(m);
        size_t h = arena_held();
        if (h > held_max) held_max = h;
    }
    ta_arena_stats(&s1);
    size_t rss1 = tu_rss_bytes();
    cr_assert_leq(held_max, 12 * MiB, "arenas held up to %zu bytes", held_max);
    cr_assert_leq(s1.held_bytes, 4 * MiB + 64 * KiB);
    /* chunk traffic with the page heap is bounded by the big scopes, not by
     * the number of scopes */
    cr_assert_leq(s1.n_chunks_from_heap - s0.n_chunks_from_heap, 100,
                  "%llu chunks taken from the page heap",
                  (unsigned long long)(s1.n_chunks_from_heap - s0.n_chunks_from_heap));
    cr_assert_lt(rss1, rss0 + 32 * MiB, "RSS grew from %zu to %zu", rss0, rss1);
}

/* ---- threads ------------------------------------------------------------------------- */
typedef struct worker {
    int id;
    int failures;
    char *escaped;
    size_t escaped_n;
    uint64_t escaped_base;
    pthread_barrier_t *barrier;
    uintptr_t chunk_seen;
} worker_t;

static void *worker_main(void *arg) {
    worker_t *w = arg;
    uint64_t rng = (uint64_t)w->id * 7919 + 1;
    pthread_barrier_wait(w->barrier);
    for (int round = 0; round < 300; round++) {
        TA_SCOPE;
        enum { N = 200 };
        char *p[N];
        size_t n[N];
        for (int i = 0; i < N; i++) {
            n[i] = tu_rand_range(&rng, 1, i == 7 ? 100000 : 500);
            p[i] = ta_scope_alloc(n[i]);
            tu_fill(p[i], n[i], (uint64_t)w->id);
        }
        {
            TA_SCOPE;
            char *q = ta_scope_alloc(1000);
            memset(q, w->id, 1000);
        }
        for (int i = 0; i < N; i++)
            if (tu_check(p[i], n[i], (uint64_t)w->id) != (size_t)-1) w->failures++;
        if (ta_scope_depth() != 1) w->failures++;
        if (round == 0) { /* every thread has its first chunk at once */
            w->chunk_seen = (uintptr_t)ta_arena_span(p[0]);
            pthread_barrier_wait(w->barrier);
        }
        if (round == 299) {
            w->escaped = ta_escape(p[3]);
            w->escaped_n = n[3];
            w->escaped_base = tu_pattern_base(p[3], n[3], (uint64_t)w->id);
        }
    }
    if (ta_scope_depth() != 0) w->failures++;
    return NULL;
}

Test(arena, threads_have_their_own_scopes) {
    enum { T = 4 };
    pthread_t th[T];
    worker_t w[T];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, T);
    for (int i = 0; i < T; i++) {
        w[i] = (worker_t){.id = i + 1, .barrier = &barrier};
        cr_assert_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < T; i++) {
        cr_assert_eq(w[i].failures, 0, "thread %d saw %d corrupted blocks", i, w[i].failures);
        cr_assert_not_null(w[i].escaped);
        cr_assert_eq(tu_check_base(w[i].escaped, w[i].escaped_n, w[i].escaped_base), (size_t)-1,
                     "thread %d's escaped block", i);
        for (int j = 0; j < i; j++)
            cr_assert_neq(w[i].chunk_seen, w[j].chunk_seen, "threads %d and %d share a chunk", i, j);
        free(w[i].escaped);
    }
    cr_assert_eq(ta_scope_depth(), 0, "the main thread's depth is its own");
}

static void *thread_holding_chunks(void *arg) {
    (void)arg;
    ta_scope_begin(); /* left open on purpose: exit must release it all */
    for (int i = 0; i < 500; i++) memset(ta_scope_alloc(2000), 1, 2000);
    ta_scope_alloc(6 * MiB);
    ta_scope_begin();
    ta_scope_alloc(300 * KiB);
    return (void *)(uintptr_t)arena_held();
}

static void *thread_with_spares(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++) {
        TA_SCOPE;
        for (int k = 0; k < 400; k++) ta_scope_alloc(3000);
    }
    return (void *)(uintptr_t)arena_held();
}

Test(arena, thread_exit_releases_the_chunks) {
    uint64_t before = arena_held();
    ta_pageheap_stats_t ph0, ph1;
    ta_pageheap_stats(&ph0);
    for (int round = 0; round < 20; round++) {
        pthread_t t;
        void *held;
        cr_assert_eq(pthread_create(&t, NULL, round % 2 ? thread_with_spares : thread_holding_chunks, NULL), 0);
        pthread_join(t, &held);
        cr_assert_gt((uint64_t)(uintptr_t)held, before, "the thread held chunks");
        cr_assert_eq(arena_held(), before, "round %d: %llu bytes still held after the thread exited",
                     round, (unsigned long long)arena_held());
    }
    ta_pageheap_stats(&ph1);
    cr_assert_leq(ph1.large_bytes, ph0.large_bytes, "the page heap has the chunks back");
}

static void *free_other_threads_block(void *arg) {
    free(arg); /* a scoped block of another thread whose scope is open: a no-op */
    return ta_escape(arg);
}

Test(arena, another_thread_may_free_or_escape_a_live_scoped_block) {
    TA_SCOPE;
    char *p = ta_scope_alloc(300);
    tu_fill(p, 300, 9);
    pthread_t t;
    void *copy;
    pthread_create(&t, NULL, free_other_threads_block, p);
    pthread_join(t, &copy);
    cr_assert_eq(tu_check(p, 300, 9), (size_t)-1);
    cr_assert_not_null(copy);
    cr_assert_eq(memcmp(copy, p, 300), 0);
    free(copy);
}

/* ---- statistics ----------------------------------------------------------------------- */
Test(arena, statistics_count_the_chunks) {
    ta_arena_stats_t s;
    uint64_t before = ta_arena_bytes();
    ta_scope_t m = ta_scope_begin();
    ta_scope_alloc(100);
    ta_arena_stats(&s);
    cr_assert_geq(s.held_bytes, before + 64 * KiB);
    cr_assert_eq(s.held_bytes, ta_arena_bytes());
    cr_assert_geq(s.held_chunks, 1);
    ta_pageheap_stats_t ph;
    ta_pageheap_stats(&ph);
    cr_assert_geq(ph.large_bytes, s.held_bytes, "the page heap counts chunks among large spans");
    ta_scope_alloc(3 * MiB);
    ta_arena_stats(&s);
    cr_assert_geq(s.n_big, 1);
    ta_scope_end(m);
    ta_arena_stats(&s);
    cr_assert_gt(s.spare_bytes, 0, "the big block's chunk is kept for reuse");
    cr_assert_leq(s.spare_bytes, s.held_bytes);
    uint64_t held = s.held_bytes;
    malloc_trim(0); /* the spares go back */
    ta_arena_stats(&s);
    cr_assert_eq(s.spare_bytes, 0);
    cr_assert_leq(s.held_bytes, held - 3 * MiB);
    ta_scope_t again = ta_scope_begin(); /* and the arena still works */
    memset(ta_scope_alloc(3 * MiB), 1, 3 * MiB);
    ta_scope_end(again);
}

/* ---- misuse, in a child ----------------------------------------------------------------- */
/* some misuse (ending a scope twice) has no block address to name */
static void expect_abort(void (*fn)(void *), const char *what) { tu_expect_abort(fn, what, 0); }

static void free_after_end_no_scope(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    char *p = ta_scope_alloc(64);
    ta_scope_end(m);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(arena_misuse, free_after_the_scope_ended) {
    expect_abort(free_after_end_no_scope, "free of scoped pointer");
}

/* p lies past the cursor of the scope now open */
static void free_after_inner_end(void *arg) {
    (void)arg;
    ta_scope_t outer = ta_scope_begin();
    ta_scope_alloc(64);
    ta_scope_t inner = ta_scope_begin();
    char *p = ta_scope_alloc(64);
    ta_scope_end(inner);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
    ta_scope_end(outer);
}
Test(arena_misuse, free_of_an_inner_scopes_block_after_it_ended) {
    expect_abort(free_after_inner_end, "released when its scope ended");
}

/* p's chunk went to the spare list: not in any scope */
static void free_in_spare_chunk(void *arg) {
    (void)arg;
    ta_scope_t a = ta_scope_begin();
    char *p = NULL;
    for (int i = 0; i < 200; i++) p = ta_scope_alloc(4000); /* the last is chunks away */
    ta_scope_end(a);
    ta_scope_t b = ta_scope_begin(); /* a new scope uses only the first chunk */
    ta_scope_alloc(100);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
    ta_scope_end(b);
}
Test(arena_misuse, free_of_a_block_in_a_released_chunk) {
    expect_abort(free_in_spare_chunk, "released when its scope ended");
}

/* The region was reused by a later scope with other block boundaries: the
 * word before p is no longer a header of an open scope. */
static void free_after_reuse(void *arg) {
    (void)arg;
    ta_scope_t a = ta_scope_begin();
    ta_scope_alloc(32);
    char *p = ta_scope_alloc(32);
    ta_scope_end(a);
    ta_scope_t b = ta_scope_begin();
    char *q = ta_scope_alloc(200); /* covers p */
    memset(q, 0x11, 200);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
    ta_scope_end(b);
}
Test(arena_misuse, free_of_a_block_whose_memory_a_later_scope_reused) {
    expect_abort(free_after_reuse, "not a live scoped block");
}

/* Same layout, but the old header is still there: its scope's serial is not
 * the one open at its depth any more. */
static void free_after_reuse_same_depth(void *arg) {
    (void)arg;
    ta_scope_t a = ta_scope_begin();
    ta_scope_alloc(32);
    char *p = ta_scope_alloc(32);
    ta_scope_end(a);
    ta_scope_t b = ta_scope_begin();
    /* the next 256-aligned address is past p: p's header stays intact, and
     * below the cursor */
    char *q = ta_scope_alloc_aligned(256, 8);
    if (q <= p) _exit(3);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
    ta_scope_end(b);
}
Test(arena_misuse, free_of_a_block_from_an_ended_scope_at_the_same_depth) {
    expect_abort(free_after_reuse_same_depth, "scoped pointer");
}

static void free_interior(void *arg) {
    (void)arg;
    ta_scope_begin();
    char *p = ta_scope_alloc(200);
    memset(p, 0, 200);
    report(p + 32);
    free(tu_hide(p + 32));
    shared->reached_end = 1;
}
Test(arena_misuse, free_of_an_interior_pointer_of_a_scoped_block) {
    expect_abort(free_interior, "scoped pointer");
}

static void escape_after_end(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    char *p = ta_scope_alloc(64);
    ta_scope_end(m);
    report(p);
    ta_escape(tu_hide(p));
    shared->reached_end = 1;
}
Test(arena_misuse, escape_after_the_scope_ended) { expect_abort(escape_after_end, "ta_escape of scoped pointer"); }

static void realloc_after_end(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    ta_scope_t inner = ta_scope_begin();
    char *p = ta_scope_alloc(64);
    ta_scope_end(inner);
    report(p);
    void *volatile r = realloc(tu_hide(p), 100);
    (void)r;
    shared->reached_end = 1;
    ta_scope_end(m);
}
Test(arena_misuse, realloc_after_the_scope_ended) { expect_abort(realloc_after_end, "realloc of scoped pointer"); }

static void usable_after_end(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    char *p = ta_scope_alloc(64);
    ta_scope_end(m);
    report(p);
    malloc_usable_size(tu_hide(p));
    shared->reached_end = 1;
}
Test(arena_misuse, malloc_usable_size_after_the_scope_ended) {
    expect_abort(usable_after_end, "malloc_usable_size of scoped pointer");
}

static void big_block_after_end(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    char *p = ta_scope_alloc(2 * MiB); /* a chunk of its own, kept as a spare */
    ta_scope_end(m);
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(arena_misuse, free_of_a_big_block_after_the_scope_ended) {
    expect_abort(big_block_after_end, "released when its scope ended");
}

static void end_twice(void *arg) {
    (void)arg;
    ta_scope_t m = ta_scope_begin();
    ta_scope_alloc(10);
    ta_scope_end(m);
    ta_scope_end(m);
    shared->reached_end = 1;
}
Test(arena_misuse, ending_a_scope_twice) { expect_abort(end_twice, "not open"); }

static ta_scope_t other_thread_mark;
static void *begin_in_thread(void *arg) {
    (void)arg;
    other_thread_mark = ta_scope_begin();
    return NULL;
}
static void end_in_other_thread(void *arg) {
    (void)arg;
    ta_scope_t mine = ta_scope_begin();
    pthread_t t;
    pthread_create(&t, NULL, begin_in_thread, NULL);
    pthread_join(t, NULL);
    ta_scope_end(other_thread_mark);
    shared->reached_end = 1;
    ta_scope_end(mine);
}
Test(arena_misuse, ending_another_threads_scope) { expect_abort(end_in_other_thread, "not open"); }

/* Found by the fuzzer: a spare chunk at least the geometric target but
 * smaller than a big request was reused for it, so the scoped block ran past
 * the chunk's end over a live heap block. */
Test(arena, a_spare_chunk_smaller_than_the_block_is_not_reused) {
    ta_scope_t m = ta_scope_begin();
    cr_assert_not_null(ta_scope_alloc_aligned(1, 32768));
    cr_assert_not_null(ta_scope_alloc_aligned(1, 32768));
    char *h = ta_malloc(33); /* a live heap block */
    memset(h, 7, 33);
    ta_scope_end(m);
    m = ta_scope_begin();
    size_t n = 876688;
    char *s = ta_scope_alloc(n);
    cr_assert_not_null(s);
    cr_assert(h + 33 <= s || h >= s + n, "the scoped block %p..%p covers the live heap block %p", (void *)s,
              (void *)(s + n), (void *)h);
    memset(s, 1, n);
    for (int i = 0; i < 33; i++) cr_assert_eq(h[i], 7, "the heap block was overwritten");
    ta_scope_end(m);
    ta_free(h);
}

/* Found by the fuzzer: ta_scope_calloc with no scope open returned a large
 * heap block that was not zeroed. */
Test(arena, scope_calloc_outside_a_scope_zeroes_large_blocks) {
    size_t n = (size_t)1 << 20;
    for (int round = 0; round < 4; round++) {
        char *d = ta_malloc(n); /* dirty pages that a later block may reuse */
        memset(d, 0xa5, n);
        ta_free(d);
        unsigned char *p = ta_scope_calloc(1, n);
        cr_assert_not_null(p);
        for (size_t i = 0; i < n; i += 512) cr_assert_eq(p[i], 0, "byte %zu of a calloc'd block is %#x", i, p[i]);
        ta_free(p);
    }
}
