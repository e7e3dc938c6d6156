/* test_pagemap.c: the page → (span, info) radix tree (pagemap.c).  Entries set
 * on pages at the bottom, top and leaf boundaries of the 48-bit space read back
 * exactly and touch no neighbour; unknown pages and addresses beyond 48 bits
 * read as nothing; ensure() creates each missing leaf exactly once, also when
 * threads race for it.  The pages used are never mapped by the process
 * (below mmap_min_addr, or far from where Linux places mappings). */
#include <criterion/criterion.h>

#include <pthread.h>
#include <sched.h>
#include <stdint.h>

#include "internal.h"

#define LEAF_PAGES ((uintptr_t)1 << TA_PM_LEAF_BITS)
#define MAX_PAGES ((uintptr_t)1 << (TA_PM_ROOT_BITS + TA_PM_LEAF_BITS)) /* 2^35 */

static void tu_init_allocator(void) { ta_ensure_init(); }
TestSuite(pagemap, .init = tu_init_allocator, .timeout = 30);

static ta_span_t fake[8];

static void check_empty(uintptr_t page) {
    cr_assert_null(ta_pagemap_span(page), "page %#lx: unexpected span %p", (unsigned long)page,
                   (void *)ta_pagemap_span(page));
    cr_assert_eq(ta_pagemap_info(page), 0u, "page %#lx: unexpected info %#llx", (unsigned long)page,
                 (unsigned long long)ta_pagemap_info(page));
    cr_assert_eq(ta_pm_entry_info(ta_pagemap_entry(page)), 0u, "page %#lx: free's lookup finds an info", (unsigned long)page);
    cr_assert_eq(ta_pagemap_entry(page)->magic, 0u, "page %#lx: free's lookup finds a class constant", (unsigned long)page);
}

/* free's lookup (through the first leaf's shortcut or the root) reads what
 * the plain lookup reads, and beside it the class's constant */
static void check_free_lookup(uintptr_t page, uint64_t info) {
    const ta_pm_entry_t *e = ta_pagemap_entry(page);
    uint64_t got = ta_pm_entry_info(e);
    cr_assert_eq(got, info, "page %#lx: free's lookup reads %#llx, not %#llx", (unsigned long)page,
                 (unsigned long long)got, (unsigned long long)info);
    if (info) {
        cr_assert_eq(e->magic, ta_class_magic[TA_INFO_CLASS(info) & (TA_MAX_CLASSES - 1)], "page %#lx", (unsigned long)page);
    }
}

static size_t missing_leaves(uintptr_t first, uintptr_t n) {
    size_t m = 0;
    for (uintptr_t i = first >> TA_PM_LEAF_BITS; i <= (first + n - 1) >> TA_PM_LEAF_BITS; i++) m += !ta_pm_root[i];
    return m;
}

Test(pagemap, geometry) {
    cr_assert_eq(TA_PAGE_SHIFT + TA_PM_ROOT_BITS + TA_PM_LEAF_BITS, 48);
    cr_assert_eq(sizeof ta_pm_root / sizeof ta_pm_root[0], (size_t)1 << TA_PM_ROOT_BITS);
}

/* Set and read back pages across the whole range, one at a time. */
Test(pagemap, set_lookup_low_high_and_leaf_boundaries) {
    const uintptr_t pages[] = {
        1,                                 /* address 8 KiB: below mmap_min_addr */
        2,
        LEAF_PAGES - 1,                    /* last page of leaf 0 (2 GiB - 8 KiB) */
        LEAF_PAGES,                        /* first page of leaf 1 */
        3 * LEAF_PAGES - 1,
        3 * LEAF_PAGES,
        ((uintptr_t)1 << 33) - 1,          /* around 2^46: between the heap and mmap areas */
        (uintptr_t)1 << 33,
        MAX_PAGES - LEAF_PAGES - 1,
        MAX_PAGES - LEAF_PAGES,            /* first page of the last leaf */
        MAX_PAGES - 2,
        MAX_PAGES - 1,                     /* the very last page below 2^48 */
    };
    const size_t np = sizeof pages / sizeof pages[0];
    for (size_t i = 0; i < np; i++) check_empty(pages[i]);

    for (size_t i = 0; i < np; i++) {
        uintptr_t pg = pages[i];
        size_t missing = missing_leaves(pg, 1);
        uint64_t before = ta_pagemap_bytes();
        cr_assert(ta_pagemap_ensure(pg, 1), "ensure(%#lx, 1) failed", (unsigned long)pg);
        cr_assert_eq(ta_pagemap_bytes() - before, missing * sizeof(ta_pm_leaf_t), "page %#lx: %zu leaves missing",
                     (unsigned long)pg, missing);
        cr_assert_not_null(ta_pm_root[pg >> TA_PM_LEAF_BITS]);
        /* a leaf is created empty */
        check_empty(pg);
        uint32_t info = (uint32_t)(i + 1) | (uint32_t)(i << 8) | 0x80000000u;
        ta_pagemap_set(pg, &fake[i % 8], info);
        cr_assert_eq(ta_pagemap_span(pg), &fake[i % 8]);
        cr_assert_eq(ta_pagemap_info(pg), info);
    }
    /* all still there, none overwrote another (several share a leaf) */
    for (size_t i = 0; i < np; i++) {
        uint32_t info = (uint32_t)(i + 1) | (uint32_t)(i << 8) | 0x80000000u;
        cr_assert_eq(ta_pagemap_span(pages[i]), &fake[i % 8], "page %#lx lost its span", (unsigned long)pages[i]);
        cr_assert_eq(ta_pagemap_info(pages[i]), info, "page %#lx lost its info", (unsigned long)pages[i]);
        check_free_lookup(pages[i], info);
    }
    /* untouched pages next to them stay empty */
    const uintptr_t others[] = {3, 4, LEAF_PAGES - 2, LEAF_PAGES + 1, 3 * LEAF_PAGES - 2, 3 * LEAF_PAGES + 1,
                                ((uintptr_t)1 << 33) + 1, MAX_PAGES - 3};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) check_empty(others[i]);

    /* overwrite, then clear */
    for (size_t i = 0; i < np; i++) {
        ta_pagemap_set(pages[i], &fake[7 - i % 8], 0xFFFFFFFFu);
        cr_assert_eq(ta_pagemap_span(pages[i]), &fake[7 - i % 8]);
        cr_assert_eq(ta_pagemap_info(pages[i]), 0xFFFFFFFFu);
        ta_pagemap_set(pages[i], NULL, 0);
        check_empty(pages[i]);
    }
}

/* A range across leaf boundaries: every page in it can be set afterwards. */
Test(pagemap, ensure_range_across_leaves) {
    const uintptr_t first = 6 * LEAF_PAGES - 5, n = 2 * LEAF_PAGES + 10; /* touches leaves 5, 6, 7, 8 */
    size_t missing = missing_leaves(first, n);
    uint64_t before = ta_pagemap_bytes();
    cr_assert(ta_pagemap_ensure(first, n));
    cr_assert_eq(ta_pagemap_bytes() - before, missing * sizeof(ta_pm_leaf_t));
    for (uintptr_t l = first >> TA_PM_LEAF_BITS; l <= (first + n - 1) >> TA_PM_LEAF_BITS; l++)
        cr_assert_not_null(ta_pm_root[l], "leaf %lu missing", (unsigned long)l);
    /* a second ensure of the same range creates nothing */
    before = ta_pagemap_bytes();
    cr_assert(ta_pagemap_ensure(first, n));
    cr_assert(ta_pagemap_ensure(first + 7, 1));
    cr_assert_eq(ta_pagemap_bytes(), before);

    for (uintptr_t pg = first; pg < first + n; pg += 997) {
        ta_pagemap_set(pg, &fake[pg % 8], (uint32_t)pg);
        cr_assert_eq(ta_pagemap_span(pg), &fake[pg % 8]);
        cr_assert_eq(ta_pagemap_info(pg), (uint32_t)pg);
    }
    uintptr_t last = first + n - 1;
    ta_pagemap_set(last, &fake[1], 77);
    cr_assert_eq(ta_pagemap_span(last), &fake[1]);
    cr_assert_eq(ta_pagemap_info(last), 77u);
    check_empty(last + 1);
    for (uintptr_t pg = first; pg < first + n; pg += 997) ta_pagemap_set(pg, NULL, 0);
    ta_pagemap_set(last, NULL, 0);
}

Test(pagemap, unknown_pages_are_empty) {
    int on_stack;
    static int in_data;
    const uintptr_t pages[] = {
        0,
        (uintptr_t)&on_stack >> TA_PAGE_SHIFT,     /* real memory tieralloc does not own */
        (uintptr_t)&in_data >> TA_PAGE_SHIFT,
        (uintptr_t)&check_empty >> TA_PAGE_SHIFT,
        ((uintptr_t)1 << 34) + 12345,             /* leaf never created */
        MAX_PAGES - 7,
    };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) check_empty(pages[i]);
}

/* Addresses above 48 bits: lookups give nothing, ensure refuses, no crash. */
Test(pagemap, beyond_48_bits) {
    const uintptr_t pages[] = {MAX_PAGES, MAX_PAGES + 1, MAX_PAGES * 2, (uintptr_t)1 << 40,
                               UINTPTR_MAX >> TA_PAGE_SHIFT, /* a kernel address such as 0xffff8000... */
                               (uintptr_t)0xffff800000000000ull >> TA_PAGE_SHIFT, UINTPTR_MAX - 1, UINTPTR_MAX};
    uint64_t before = ta_pagemap_bytes();
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        check_empty(pages[i]);
        cr_assert_not(ta_pagemap_ensure(pages[i], 1), "ensure(%#lx) accepted", (unsigned long)pages[i]);
    }
    /* ranges that run past the top, wrap around, or are empty */
    cr_assert_not(ta_pagemap_ensure(MAX_PAGES - 1, 2));
    cr_assert_not(ta_pagemap_ensure(MAX_PAGES - LEAF_PAGES, LEAF_PAGES + 1));
    cr_assert_not(ta_pagemap_ensure(5, UINTPTR_MAX));
    cr_assert_not(ta_pagemap_ensure(UINTPTR_MAX, 2));
    cr_assert_not(ta_pagemap_ensure(1000, 0));
    cr_assert_eq(ta_pagemap_bytes(), before, "a refused ensure created leaves");
    /* the last page below the limit is fine */
    cr_assert(ta_pagemap_ensure(MAX_PAGES - 1, 1));
}

/* Threads racing to create the same leaves make each exactly once.  A spinning
 * barrier before each leaf lines the threads up closely (one thread per CPU). */
#define RACERS 2
#define RACE_LEAVES 128
static unsigned race_arrived, race_gen;
static void spin_barrier(void) {
    unsigned gen = __atomic_load_n(&race_gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&race_arrived, 1, __ATOMIC_ACQ_REL) == RACERS) {
        __atomic_store_n(&race_arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&race_gen, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&race_gen, __ATOMIC_ACQUIRE) == gen; spins++)
        if (spins > (1u << 22)) sched_yield();
}
static void *race_ensure(void *arg) {
    uintptr_t base = (uintptr_t)arg;
    bool ok = true;
    for (uintptr_t l = 0; l < RACE_LEAVES; l++) {
        spin_barrier();
        ok &= ta_pagemap_ensure(base + l * LEAF_PAGES + 17, 1);
    }
    return (void *)(uintptr_t)ok;
}

static size_t count_leaves(void) {
    size_t n = 0;
    for (size_t i = 0; i < sizeof ta_pm_root / sizeof ta_pm_root[0]; i++) n += ta_pm_root[i] != NULL;
    return n;
}

Test(pagemap, concurrent_ensure_creates_one_leaf_each) {
    /* leaves 32..159: addresses 64..320 GiB, far below where Linux maps */
    const uintptr_t base = (uintptr_t)32 << TA_PM_LEAF_BITS;
    size_t missing = missing_leaves(base, RACE_LEAVES * LEAF_PAGES);
    cr_assert_eq(missing, RACE_LEAVES, "leaves 32..159 already exist");
    pthread_t t[RACERS];
    size_t leaves0 = count_leaves();
    uint64_t before = ta_pagemap_bytes();
    for (int i = 0; i < RACERS; i++) cr_assert_eq(pthread_create(&t[i], NULL, race_ensure, (void *)base), 0);
    for (int i = 0; i < RACERS; i++) {
        void *ok;
        pthread_join(t[i], &ok);
        cr_assert(ok, "ensure failed in thread %d", i);
    }
    uint64_t grown = ta_pagemap_bytes() - before;
    size_t made = count_leaves() - leaves0; /* ours, and any the heap needed meanwhile */
    for (uintptr_t l = 0; l < RACE_LEAVES; l++) cr_assert_not_null(ta_pm_root[(base >> TA_PM_LEAF_BITS) + l]);
    cr_assert_geq(made, (size_t)RACE_LEAVES);
    cr_assert_eq(grown, made * sizeof(ta_pm_leaf_t), "%lu bytes of leaves for %zu new leaves: a leaf was made twice",
                 (unsigned long)grown, made);
}

/* The heap itself keeps the map: a live block's page points at a span that
 * covers it.  Its info is the class and page index of a small block.  The
 * first leaf made is free's shortcut (ta_pm_hot). */
Test(pagemap, heap_blocks_are_registered) {
    cr_assert_neq(ta_pm_hot.base, TA_PM_NONCANONICAL, "no leaf yet, with a heap");
    cr_assert_eq(ta_pm_hot.base % TA_PM_LEAF_SPAN, 0u, "the shortcut's base is not a leaf's first address");
    cr_assert_eq(ta_pm_hot.leaf, ta_pm_root[ta_pm_hot.base / TA_PM_LEAF_SPAN], "the shortcut is not the leaf of its base");
    for (size_t n = 8; n <= (size_t)1 << 20; n *= 2) {
        char *p = malloc(n);
        cr_assert_not_null(p);
        uintptr_t pg = (uintptr_t)p >> TA_PAGE_SHIFT;
        ta_span_t *s = ta_pagemap_span(pg);
        cr_assert_not_null(s, "malloc(%zu) = %p: page not registered", n, (void *)p);
        cr_assert_eq(s->state, TA_SPAN_INUSE);
        cr_assert(pg >= s->page && pg < s->page + s->npages, "malloc(%zu): span does not cover the block", n);
        uint32_t info = ta_pagemap_info(pg);
        uint32_t cls = ta_size_to_class(n);
        /* a sampled small request gets a page-heap span of its own (info 0) */
        if (cls && info) {
            cr_assert_eq(info & 0xff, cls, "malloc(%zu): info class %u, want %u", n, info & 0xff, cls);
            cr_assert_eq(TA_INFO_PAGE_INDEX(info), pg - s->page);
            cr_assert_eq(s->cls, cls);
            /* the class's division constant beside it: free's object index */
            const ta_pm_entry_t *e = ta_pagemap_entry(pg);
            uint64_t full = ta_pm_entry_info(e);
            cr_assert_eq(e->magic, ta_class[cls].div_magic, "malloc(%zu): the entry's constant is not class %u's", n, cls);
            /* free's offset in the span, from p and the info alone */
            cr_assert_eq(ta_info_offset(p, full), (uint32_t)((char *)p - (char *)ta_span_addr(s)),
                         "malloc(%zu): the info places %p wrongly in its span", n, (void *)p);
            bool start;
            uint32_t idx = ta_object_index_m(ta_info_offset(p, full), e->magic, &start);
            cr_assert(start, "malloc(%zu) = %p: not an object start by the entry", n, (void *)p);
            cr_assert_eq((char *)ta_span_addr(s) + (size_t)idx * ta_class[cls].size, p);
        } else {
            cr_assert_eq(info, 0u, "malloc(%zu): large block page has info %#x", n, info);
            cr_assert_eq(s->cls, 0u);
            cr_assert_eq(ta_span_addr(s), (void *)p);
        }
        free(p);
    }
}

/* clear() empties exactly the range, across leaves, and skips leaves that do
 * not exist (it creates nothing). */
Test(pagemap, clear_empties_a_range_and_nothing_else) {
    const uintptr_t first = 10 * LEAF_PAGES - 3, n = 6; /* leaves 9 and 10 */
    cr_assert(ta_pagemap_ensure(first - 1, n + 2));
    for (uintptr_t pg = first - 1; pg < first + n + 1; pg++) ta_pagemap_set(pg, &fake[pg % 8], (uint32_t)pg | 1);
    uint64_t before = ta_pagemap_bytes();
    ta_pagemap_clear(first, n);
    ta_pagemap_clear((uintptr_t)300 << TA_PM_LEAF_BITS, 3 * LEAF_PAGES); /* leaves never made */
    cr_assert_eq(ta_pagemap_bytes(), before);
    cr_assert_null(ta_pm_root[300]);
    for (uintptr_t pg = first; pg < first + n; pg++) check_empty(pg);
    cr_assert_eq(ta_pagemap_span(first - 1), &fake[(first - 1) % 8]);
    cr_assert_eq(ta_pagemap_info(first - 1), (uint32_t)(first - 1) | 1);
    cr_assert_eq(ta_pagemap_span(first + n), &fake[(first + n) % 8]);
    cr_assert_eq(ta_pagemap_info(first + n), (uint32_t)(first + n) | 1);
    ta_pagemap_set(first - 1, NULL, 0);
    ta_pagemap_set(first + n, NULL, 0);
}
