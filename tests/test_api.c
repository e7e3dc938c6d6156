/* test_api.c: conformance of tieralloc's public entry points to glibc's
 * behaviour, through both the standard names (which this binary takes from
 * libtieralloc.so, as any program linked with -ltieralloc does) and the ta_*
 * prefixed names. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <dlfcn.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include "tieralloc.h"
#ifdef HAVE_CONFIG_H
#include "config.h" /* TA_HARDENED: the library under test is the hardened build */
#endif

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

/* C23 names that glibc 2.36 does not declare, and glibc's internal aliases.
 * Weak, so that a missing definition is a test failure rather than a link error. */
extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));
extern void cfree(void *) __attribute__((weak));
extern void *__libc_malloc(size_t) __attribute__((weak));
extern void __libc_free(void *) __attribute__((weak));
extern void *__libc_calloc(size_t, size_t) __attribute__((weak));
extern void *__libc_realloc(void *, size_t) __attribute__((weak));
extern void *__libc_memalign(size_t, size_t) __attribute__((weak));
extern void *__libc_valloc(size_t) __attribute__((weak));
extern void *__libc_pvalloc(size_t) __attribute__((weak));
extern int __posix_memalign(void **, size_t, size_t) __attribute__((weak));

/* ---- the two faces of the API ------------------------------------------------ */
typedef struct api {
    const char *name;
    void *(*malloc_)(size_t);
    void (*free_)(void *);
    void *(*calloc_)(size_t, size_t);
    void *(*realloc_)(void *, size_t);
    void *(*reallocarray_)(void *, size_t, size_t);
    void *(*memalign_)(size_t, size_t);
    int (*posix_memalign_)(void **, size_t, size_t);
    void *(*aligned_alloc_)(size_t, size_t);
    void *(*valloc_)(size_t);
    void *(*pvalloc_)(size_t);
    size_t (*usable_)(void *);
} api_t;

static const api_t apis[2] = {
    {"standard", malloc, free, calloc, realloc, reallocarray, memalign, posix_memalign, aligned_alloc,
     valloc, pvalloc, malloc_usable_size},
    {"ta_", ta_malloc, ta_free, ta_calloc, ta_realloc, ta_reallocarray, ta_memalign, ta_posix_memalign,
     ta_aligned_alloc, ta_valloc, ta_pvalloc, ta_malloc_usable_size},
};
#define FOR_EACH_API(a) for (const api_t *a = apis; a < apis + 2; a++)

/* Sizes that no allocator can serve on x86-64 (47-bit user address space). */
static const size_t impossible[] = {
    SIZE_MAX,
    SIZE_MAX - 4095,
    SIZE_MAX / 2, /* == PTRDIFF_MAX */
    (size_t)PTRDIFF_MAX + 1,
    (size_t)1 << 48,
    ((size_t)1 << 47) + 4096,
    (size_t)1 << 47,
};
#define N_IMPOSSIBLE (sizeof impossible / sizeof impossible[0])

static int is_aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    size_t i = 0;
    for (; i < n && ((uintptr_t)(b + i) & 7); i++)
        if (b[i]) return 0;
    for (; i + 8 <= n; i += 8)
        if (*(const uint64_t *)(b + i)) return 0;
    for (; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* ---- malloc ------------------------------------------------------------------ */
Test(api, malloc_zero_returns_distinct_pointers) {
    FOR_EACH_API(a) {
        enum { N = 64 };
        void *p[N];
        for (int i = 0; i < N; i++) {
            p[i] = a->malloc_(0);
            cr_assert_not_null(p[i], "%s malloc(0) returned NULL", a->name);
            cr_assert(ta_owns(p[i]), "%s malloc(0) block not owned by tieralloc", a->name);
            for (int j = 0; j < i; j++) cr_assert_neq(p[i], p[j], "%s malloc(0) returned %p twice", a->name, p[i]);
        }
        for (int i = 0; i < N; i++) a->free_(p[i]);
    }
}

Test(api, malloc_impossible_sizes_fail_with_enomem) {
    FOR_EACH_API(a) {
        for (size_t i = 0; i < N_IMPOSSIBLE; i++) {
            errno = 0;
            void *p = a->malloc_(impossible[i]);
            cr_assert_null(p, "%s malloc(%#zx) returned %p", a->name, impossible[i], p);
            cr_assert_eq(errno, ENOMEM, "%s malloc(%#zx): errno %d, want ENOMEM", a->name, impossible[i], errno);
        }
        /* and the allocator still works afterwards */
        void *p = a->malloc_(100);
        cr_assert_not_null(p);
        a->free_(p);
    }
}

/* Every size 0..4096, then geometric sizes to 64 MiB (and their neighbours):
 * aligned, usable size >= request, the whole usable size writable, and the
 * contents of a batch of live blocks intact until they are freed. */
typedef struct blk {
    void *p;
    size_t n, usable;
} blk_t;

static void check_and_free_batch(const api_t *a, blk_t *b, int *count, size_t *bytes) {
    for (int i = 0; i < *count; i++) {
        size_t bad = tu_check(b[i].p, b[i].usable, 7);
        cr_assert_eq(bad, (size_t)-1, "%s: block %p of size %zu corrupted at offset %zu", a->name, b[i].p,
                     b[i].n, bad);
        a->free_(b[i].p);
    }
    *count = 0;
    *bytes = 0;
}

static void alloc_one(const api_t *a, size_t n, blk_t *b, int *count, size_t *bytes) {
    void *p = a->malloc_(n);
    cr_assert_not_null(p, "%s malloc(%zu) returned NULL", a->name, n);
    size_t want = n > 8 ? 16 : 8;
    cr_assert(is_aligned(p, want), "%s malloc(%zu) = %p is not %zu-aligned", a->name, n, p, want);
    size_t u = a->usable_(p);
    cr_assert_geq(u, n, "%s malloc_usable_size(malloc(%zu)) = %zu", a->name, n, u);
    tu_fill(p, u, 7);
    b[*count] = (blk_t){p, n, u};
    (*count)++;
    *bytes += u;
}

Test(api, many_sizes_aligned_usable_and_intact, .timeout = 120) {
    enum { BATCH = 64 };
    blk_t b[BATCH];
    FOR_EACH_API(a) {
        int count = 0;
        size_t bytes = 0;
        for (size_t n = 0; n <= 4096; n++) {
            alloc_one(a, n, b, &count, &bytes);
            if (count == BATCH) check_and_free_batch(a, b, &count, &bytes);
        }
        for (size_t n = 4096; n <= 64 * TU_MiB; n += n / 4) {
            size_t around[3] = {n - 1, n, n + 1};
            for (int k = 0; k < 3; k++) {
                alloc_one(a, around[k], b, &count, &bytes);
                if (count == BATCH || bytes >= 160 * TU_MiB) check_and_free_batch(a, b, &count, &bytes);
            }
        }
        check_and_free_batch(a, b, &count, &bytes);
    }
}

Test(api, malloc_usable_size_covers_request) {
    FOR_EACH_API(a) {
        cr_assert_eq(a->usable_(NULL), 0, "%s malloc_usable_size(NULL) != 0", a->name);
        for (size_t n = 0; n <= TU_MiB; n = n < 4096 ? n + 1 : n + n / 7 + 3) {
            unsigned char *p = a->malloc_(n);
            cr_assert_not_null(p);
            size_t u = a->usable_(p);
            cr_assert_geq(u, n, "%s malloc_usable_size(malloc(%zu)) = %zu", a->name, n, u);
            /* Usable slack should stay modest (size classes waste < 12.5%). */
            if (n >= 256) cr_assert_leq(u, n + n / 4 + 8192, "%s usable %zu for %zu is too large", a->name, u, n);
            for (size_t i = 0; i < u; i++) p[i] = (unsigned char)i;
            size_t bad = u;
            for (size_t i = 0; i < u && bad == u; i++)
                if (p[i] != (unsigned char)i) bad = i;
            cr_assert_eq(bad, u, "%s: byte %zu of a %zu-byte block did not keep its value", a->name, bad, n);
            a->free_(p);
        }
    }
}

/* ---- free ---------------------------------------------------------------------- */
Test(api, free_null_is_a_noop) {
    FOR_EACH_API(a) {
        errno = 77;
        a->free_(NULL);
        cr_assert_eq(errno, 77, "%s free(NULL) changed errno", a->name);
    }
    if (free_sized) free_sized(NULL, 0);
    if (free_aligned_sized) free_aligned_sized(NULL, 64, 0);
}

Test(api, free_preserves_errno) {
    FOR_EACH_API(a) {
        enum { N = 20000 };
        void **v = a->malloc_(N * sizeof *v);
        cr_assert_not_null(v);
        static const size_t sizes[] = {1, 16, 100, 1000, 5000, 40000, 300000, 4 << 20, 40 << 20};
        for (int i = 0; i < N; i++) v[i] = a->malloc_(sizes[i % 9] < 300000 ? sizes[i % 9] : 64);
        void *big[9];
        for (int k = 0; k < 9; k++) big[k] = a->malloc_(sizes[k]);
        for (int k = 0; k < 9; k++) {
            errno = 1234;
            a->free_(big[k]);
            cr_assert_eq(errno, 1234, "%s free of a %zu-byte block changed errno to %d", a->name, sizes[k], errno);
        }
        /* enough frees to overflow the thread cache and reach the lower tiers */
        for (int i = 0; i < N; i++) {
            errno = 1234;
            a->free_(v[i]);
            cr_assert_eq(errno, 1234, "%s free #%d changed errno to %d", a->name, i, errno);
        }
        errno = 1234;
        a->free_(v);
        cr_assert_eq(errno, 1234);
        errno = 1234;
        ta_malloc_trim(0);
        void *p = a->malloc_(8 << 20);
        a->free_(p);
        cr_assert_eq(errno, 1234, "%s free after malloc_trim changed errno to %d", a->name, errno);
    }
}

/* A sized free whose size is not the block's (a block realloc shrank in
 * place, a size too large or too small, a small block given a large size,
 * a large block given a small one) frees the block by its own class: the
 * given size's class never gets it.  Every block the two classes hand out
 * afterwards has its class's usable size, and the block comes back, whole,
 * from its own class.  C++ sized delete takes the same path. */
extern void _ZdlPvm(void *, size_t);
Test(api, sized_free_with_a_wrong_size_frees_by_the_blocks_class) {
    void (*fs[3])(void *, size_t) = {free_sized, ta_free_sized, _ZdlPvm};
    static const size_t cases[][2] = {/* {allocated, stated} */
                                      {64, 16},   {16, 64},     {100, 1000},  {1000, 100},     {48, 5000},
                                      {5000, 48}, {64, 300000}, {300000, 64}, {2000, 262144}, {40000, 32}};
    for (int k = 0; k < 3; k++) {
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            size_t n = cases[c][0], said = cases[c][1];
            char *p = malloc(n);
            cr_assert_not_null(p);
            size_t own = malloc_usable_size(p);
            tu_fill(p, own, 7);
            fs[k](tu_hide(p), said);
            cr_assert_not(ta_owns(p), "sized free (form %d) of %zu bytes as %zu did not free it", k, n, said);
            /* the stated size's class: every block is of that class */
            enum { N = 300 };
            static char *q[N];
            size_t said_usable = 0;
            for (int i = 0; i < N; i++) {
                q[i] = malloc(said);
                cr_assert_not_null(q[i]);
                size_t u = malloc_usable_size(q[i]);
                if (!said_usable) said_usable = u;
                cr_assert_eq(u, said_usable, "malloc(%zu) gave a block of %zu bytes after a block of %zu was freed as %zu",
                             said, u, n, said);
                cr_assert(own == said_usable || q[i] != p, "the block of %zu bytes came back as one of %zu", own, said);
            }
            for (int i = 0; i < N; i++) free(q[i]);
            /* its own class has it back, with its size */
            bool seen = false;
            for (int i = 0; i < N; i++) {
                q[i] = malloc(n);
                cr_assert_eq(malloc_usable_size(q[i]), own);
                seen |= q[i] == p;
                tu_fill(q[i], own, 9);
            }
            for (int i = 0; i < N; i++) free(q[i]);
            if (own <= 32768) /* (a larger block's span may have gone back to the page heap) */
                cr_assert(seen || ta_owns(p) == 0, "the block did not come back from its class");
        }
        /* a block that realloc shrank in place, freed with its new size */
        char *p = malloc(900);
        char *r = realloc(p, 20);
        cr_assert_not_null(r);
        size_t own = malloc_usable_size(r);
        fs[k](r, 20);
        cr_assert_not(ta_owns(r));
        for (int i = 0; i < 100; i++) {
            char *q = malloc(20);
            cr_assert_leq(malloc_usable_size(q), 32, "malloc(20) gave %zu bytes (the shrunk block has %zu)",
                          malloc_usable_size(q), own);
            free(q);
        }
    }
}

Test(api, free_sized_and_free_aligned_sized) {
    cr_assert_not_null((void *)free_sized, "free_sized is not exported");
    cr_assert_not_null((void *)free_aligned_sized, "free_aligned_sized is not exported");
    void (*fs[2])(void *, size_t) = {free_sized, ta_free_sized};
    void (*fas[2])(void *, size_t, size_t) = {free_aligned_sized, ta_free_aligned_sized};
    static const size_t sizes[] = {0, 1, 8, 17, 100, 1024, 4000, 70000, 262144, 262145, 1 << 20, 5 << 20};
    for (int k = 0; k < 2; k++) {
        for (int rep = 0; rep < 3; rep++) {
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                char *p = malloc(sizes[i]);
                cr_assert_not_null(p);
                tu_fill(p, sizes[i], 1);
                fs[k](p, sizes[i]);
                cr_assert_not(ta_owns(p), "free_sized(%p, %zu) did not free the block", (void *)p, sizes[i]);
                for (size_t al = 16; al <= 65536; al *= 16) {
                    size_t n = (sizes[i] + al - 1) / al * al; /* aligned_alloc wants a multiple */
                    p = aligned_alloc(al, n ? n : al);
                    cr_assert_not_null(p);
                    cr_assert(is_aligned(p, al));
                    fas[k](p, al, n ? n : al);
                    cr_assert_not(ta_owns(p), "free_aligned_sized(%p, %zu, %zu) did not free the block", (void *)p,
                                  al, n ? n : al);
                }
            }
        }
    }
    /* the memory is reusable afterwards */
    void *p = malloc(100);
    cr_assert(ta_owns(p));
    free(p);
}

/* ---- calloc --------------------------------------------------------------------- */
Test(api, calloc_overflow_and_impossible_sizes) {
    static const size_t pairs[][2] = {
        {SIZE_MAX, 2},
        {2, SIZE_MAX},
        {SIZE_MAX, SIZE_MAX},
        {((size_t)1 << 32) + 1, (size_t)1 << 32},
        {(size_t)1 << 33, (size_t)1 << 31},
        {(size_t)1 << 40, (size_t)1 << 8},       /* no overflow, but 2^48 bytes */
        {1, SIZE_MAX / 2},
        {(size_t)PTRDIFF_MAX / 2 + 1, 2},
    };
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
            errno = 0;
            void *p = a->calloc_(tu_hide_size(pairs[i][0]), tu_hide_size(pairs[i][1]));
            cr_assert_null(p, "%s calloc(%#zx, %#zx) returned %p", a->name, pairs[i][0], pairs[i][1], p);
            cr_assert_eq(errno, ENOMEM, "%s calloc(%#zx, %#zx): errno %d", a->name, pairs[i][0], pairs[i][1],
                         errno);
        }
        /* a zero product is fine and gives a unique block */
        void *p = a->calloc_(0, tu_hide_size(SIZE_MAX));
        void *q = a->calloc_(tu_hide_size(SIZE_MAX), 0);
        cr_assert_not_null(p, "%s calloc(0, SIZE_MAX) returned NULL", a->name);
        cr_assert_not_null(q, "%s calloc(SIZE_MAX, 0) returned NULL", a->name);
        cr_assert_neq(p, q);
        a->free_(p);
        a->free_(q);
    }
}

/* Blocks handed back by calloc are zero even when the memory was just freed
 * dirty (small classes reuse list links and guard words; large blocks reuse
 * page-heap spans). */
Test(api, calloc_zeroes_reused_dirty_memory) {
    static const size_t sizes[] = {1,     8,      16,     24,     100,     255,       1000,      4096,
                                   10000, 100000, 262144, 300000, 1 << 20, (1 << 20) + 1, 4 << 20};
    enum { BATCH = 40 };
    FOR_EACH_API(a) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            int batch = n > 200000 ? 4 : BATCH;
            int reps = n > 200000 ? 8 : 25;
            for (int rep = 0; rep < reps; rep++) {
                void *v[BATCH];
                for (int i = 0; i < batch; i++) {
                    v[i] = a->malloc_(n);
                    cr_assert_not_null(v[i]);
                    memset(v[i], 0xff, a->usable_(v[i]));
                }
                for (int i = 0; i < batch; i++) a->free_(v[i]);
                for (int i = 0; i < batch; i++) {
                    v[i] = a->calloc_(1, n);
                    cr_assert_not_null(v[i]);
                    cr_assert(all_zero(v[i], n), "%s calloc(1, %zu) = %p is not zeroed (rep %d)", a->name, n, v[i],
                              rep);
                    memset(v[i], 0xee, n);
                }
                for (int i = 0; i < batch; i++) a->free_(v[i]);
                /* element-count form too */
                void *p = a->calloc_(n ? n : 1, 3);
                cr_assert_not_null(p);
                cr_assert(all_zero(p, (n ? n : 1) * 3), "%s calloc(%zu, 3) not zeroed", a->name, n);
                memset(p, 0xdd, (n ? n : 1) * 3);
                a->free_(p);
            }
        }
    }
}

/* ---- realloc ----------------------------------------------------------------- */
Test(api, realloc_null_is_malloc) {
    FOR_EACH_API(a) {
        for (size_t n = 0; n < 3 * TU_MiB; n = n * 3 + 1) {
            void *p = a->realloc_(NULL, n);
            cr_assert_not_null(p, "%s realloc(NULL, %zu) returned NULL", a->name, n);
            cr_assert(ta_owns(p));
            cr_assert_geq(a->usable_(p), n);
            tu_fill(p, n, 3);
            a->free_(p);
        }
    }
}

Test(api, realloc_zero_frees_and_returns_null) {
    FOR_EACH_API(a) {
        static const size_t sizes[] = {1, 100, 5000, 300000, 3 << 20};
        for (size_t i = 0; i < 5; i++) {
            void *p = a->malloc_(sizes[i]);
            cr_assert_not_null(p);
            void *r = a->realloc_(p, 0);
            cr_assert_null(r, "%s realloc(p, 0) returned %p, want NULL (glibc frees)", a->name, r);
            cr_assert_not(ta_owns(p), "%s realloc(%p, 0) did not free the block", a->name, p);
        }
    }
}

Test(api, realloc_impossible_size_keeps_block) {
    FOR_EACH_API(a) {
        static const size_t sizes[] = {10, 1000, 100000, 2 << 20};
        for (size_t s = 0; s < 4; s++) {
            unsigned char *p = a->malloc_(sizes[s]);
            cr_assert_not_null(p);
            tu_fill_base(p, sizes[s], 11);
            for (size_t i = 0; i < N_IMPOSSIBLE; i++) {
                errno = 0;
                void *r = a->realloc_(p, impossible[i]);
                cr_assert_null(r, "%s realloc(p, %#zx) returned %p", a->name, impossible[i], r);
                cr_assert_eq(errno, ENOMEM, "%s realloc(p, %#zx): errno %d", a->name, impossible[i], errno);
                cr_assert(ta_owns(p), "%s realloc failure freed the old block", a->name);
                cr_assert_eq(tu_check_base(p, sizes[s], 11), (size_t)-1, "%s realloc failure changed the block",
                             a->name);
            }
            /* still usable and freeable */
            p = a->realloc_(p, sizes[s] * 2);
            cr_assert_not_null(p);
            cr_assert_eq(tu_check_base(p, sizes[s], 11), (size_t)-1);
            a->free_(p);
        }
    }
}

/* Grow and shrink through every tier; the common prefix survives each move. */
Test(api, realloc_keeps_contents) {
    const uint64_t base = 0x0123456789abcdefull;
    FOR_EACH_API(a) {
        uint64_t rng = 42;
        size_t n = 1;
        unsigned char *p = a->malloc_(n);
        cr_assert_not_null(p);
        tu_fill_base(p, n, base);
        for (int step = 0; step < 600; step++) {
            size_t m;
            switch (step % 4) {
            case 0: m = tu_rand_range(&rng, 0, 600); break;
            case 1: m = tu_rand_range(&rng, 0, 70000); break;
            case 2: m = tu_rand_range(&rng, 200000, 5 << 20); break;
            default: m = n + tu_rand_range(&rng, 0, n / 2 + 16); break; /* in-place growth */
            }
            unsigned char *q = a->realloc_(p, m);
            if (m == 0) {
                cr_assert_null(q);
                p = a->malloc_(1);
                n = 1;
                tu_fill_base(p, n, base);
                continue;
            }
            cr_assert_not_null(q, "%s realloc(%zu -> %zu) failed", a->name, n, m);
            cr_assert(ta_owns(q));
            cr_assert(is_aligned(q, 16));
            cr_assert_geq(a->usable_(q), m);
            size_t keep = n < m ? n : m;
            size_t bad = tu_check_base(q, keep, base);
            cr_assert_eq(bad, (size_t)-1, "%s realloc %zu -> %zu lost byte %zu", a->name, n, m, bad);
            tu_fill_base(q, m, base);
            p = q;
            n = m;
        }
        a->free_(p);
    }
}

/* A block grown step by step past 64 KiB leaves the size classes for a span
 * placed where it can keep growing: from then on realloc extends it in place
 * (no copy) nearly every time; shrinking it gives the tail back in place. */
Test(api, realloc_growth_happens_in_place) {
    const uint64_t base = 0x5eed5eed5eed5eedull;
    unsigned char *p = NULL;
    size_t n = 0;
    int moves = 0, steps = 0;
    for (size_t m = 16; m <= ((size_t)8 << 20); m += m / 8 + 16) {
        unsigned char *q = realloc(p, m);
        cr_assert_not_null(q);
        if (n) {
            size_t bad = tu_check_base(q, n, base);
            cr_assert_eq(bad, (size_t)-1, "grow %zu -> %zu lost byte %zu", n, m, bad);
        }
        if (p && q != p && n > ((size_t)128 << 10)) moves++;
        if (n > ((size_t)128 << 10)) steps++;
        tu_fill_base(q, m, base);
        p = q;
        n = m;
    }
    cr_assert_leq(moves, 3, "%d of %d growth steps above 128 KiB moved the block", moves, steps);
    /* shrink by halves: the block stays where it is while it is large */
    while (n > ((size_t)256 << 10)) {
        size_t m = n / 2 - 1;
        unsigned char *q = realloc(p, m);
        cr_assert_eq(q, p, "shrinking %zu -> %zu moved the block", n, m);
        cr_assert_geq(malloc_usable_size(q), m);
        cr_assert_lt(malloc_usable_size(q), n, "shrinking did not give the tail back");
        size_t bad = tu_check_base(q, m, base);
        cr_assert_eq(bad, (size_t)-1, "shrink %zu -> %zu lost byte %zu", n, m, bad);
        n = m;
    }
    free(p);
}

/* A buffer doubled by realloc to 128 MiB, every page written: the steps that
 * must move it (above 1 MiB: every other one, the move leaves as much room
 * again) move its pages, not its bytes (stats:
 * os_moves_total), so the old copy is not left resident behind it: the
 * resident set grows by about the buffer, not by the buffer and the copies
 * it left (glibc, which mremaps its mmapped chunks, 1x; a copy, 1.7x).  Two
 * buffers grown in turn, so that neither can simply stay at the heap's end.
 * Where the kernel cannot move pages (Linux before 5.7, the hardened build),
 * only the contents are checked. */
Test(api, a_buffer_doubled_to_128_mib_moves_its_pages_not_its_bytes, .timeout = 120) {
    const size_t top = (size_t)128 << 20;
    struct ta_stats a = TA_STATS_INIT, b = TA_STATS_INIT;
    malloc_trim(0);
    size_t rss0 = tu_rss_bytes();
    cr_assert_eq(ta_stats_get(&a), 0);
    unsigned char *p[2] = {NULL, NULL};
    size_t n[2] = {0, 0};
    for (size_t m = 4096; m <= top; m *= 2)
        for (int k = 0; k < 2; k++) {
            unsigned char *q = realloc(p[k], m);
            cr_assert_not_null(q);
            for (size_t i = 0; i < n[k]; i += 4096)
                cr_assert_eq(q[i], (unsigned char)(i / 4096 * 7 + k), "buffer %d lost page %zu growing to %zu", k,
                             i / 4096, m);
            for (size_t i = n[k]; i < m; i += 4096) q[i] = (unsigned char)(i / 4096 * 7 + k);
            p[k] = q;
            n[k] = m;
        }
    size_t grown = tu_rss_bytes() - rss0;
    cr_assert_eq(ta_stats_get(&b), 0);
    for (size_t i = 0; i < top; i += 4096) {
        cr_assert_eq(p[0][i], (unsigned char)(i / 4096 * 7));
        cr_assert_eq(p[1][i], (unsigned char)(i / 4096 * 7 + 1));
    }
    free(p[0]);
    free(p[1]);
#ifndef TA_HARDENED
    if (b.os_moves_total == a.os_moves_total) {
        void *x = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void *y = mremap(x, 8192, 8192, MREMAP_MAYMOVE | 4 /* MREMAP_DONTUNMAP */, NULL);
        munmap(x, 8192);
        if (y != MAP_FAILED) munmap(y, 8192);
        cr_assert_eq(y, MAP_FAILED, "the kernel moves pages, yet no block moved");
        return;
    }
    cr_assert_geq(b.os_moves_total - a.os_moves_total, 2u * 3, "%llu moves",
                  (unsigned long long)(b.os_moves_total - a.os_moves_total));
    cr_assert_lt(grown, 2 * top + top / 4, "the resident set grew by %zu MiB for 2 x %zu MiB", grown >> 20, top >> 20);
#endif
}

/* A buffer grown by realloc a quarter at a time to 64 KiB, freed, then grown
 * again (a program that builds one buffer per request): the second one,
 * once it leaves the size classes, takes the pages the first one was freed
 * from, with room to reach 64 KiB where it is (no copy, no page-heap call). */
static unsigned char *grow_buffer(size_t to, unsigned char **first_span, size_t *usable_then) {
    unsigned char *p = NULL;
    size_t n = 0;
    *first_span = NULL;
    for (size_t m = 16;; m += m / 4 > 16 ? m / 4 : 16) {
        if (m > to) m = to;
        unsigned char *q = realloc(p, m);
        if (!q) return NULL;
        for (size_t i = 0; i < n; i++)
            if (q[i] != (unsigned char)i) return NULL;
        for (size_t i = n; i < m; i++) q[i] = (unsigned char)i;
        if (m > 4096 && !*first_span) {
            *first_span = q;
            *usable_then = malloc_usable_size(q);
        }
        if (*first_span && q != *first_span) *first_span = (unsigned char *)1; /* moved */
        p = q;
        n = m;
        if (m == to) return p;
    }
}

Test(api, regrown_buffer_starts_in_the_pages_of_the_last_one) {
#ifdef TA_HARDENED
    cr_skip_test("the hardened build keeps no freed large block for reuse (its guard page moves with it)");
#endif
    const size_t to = (size_t)64 << 10;
    bool ok = false;
    size_t usable = 0;
    unsigned char *last = NULL, *span = NULL;
    /* a decay pass may run between the free and the growth (it puts the freed
     * block among the free pages): three tries */
    for (int attempt = 0; attempt < 3 && !ok; attempt++) {
        unsigned char *p = grow_buffer(to, &span, &usable);
        cr_assert_not_null(p, "the first buffer lost its contents or could not grow");
        free(p);
        last = p;
        p = grow_buffer(to, &span, &usable);
        cr_assert_not_null(p, "the second buffer lost its contents or could not grow");
        ok = span == last && usable >= to;
        free(p);
    }
    cr_assert(ok, "the regrown buffer left the classes at %p with %zu usable bytes (the last one was at %p; %s)",
              (void *)span, usable, (void *)last, span == (unsigned char *)1 ? "it moved later" : "");
}

/* realloc remembers the large block it kept or grew last (alloc/api.c); once
 * that block is freed and its pages serve other blocks, a realloc of a block
 * at the same address answers for the new block: a large one in its place,
 * then small ones that may be carved from its pages. */
Test(api, realloc_after_the_block_it_grew_is_freed) {
    unsigned char *span = NULL;
    size_t usable = 0;
    unsigned char *p = grow_buffer((size_t)64 << 10, &span, &usable);
    cr_assert_not_null(p);
    free(p);
    unsigned char *b = malloc((size_t)64 << 10); /* most likely where p was */
    cr_assert_not_null(b);
    tu_fill_base(b, (size_t)64 << 10, 7);
    unsigned char *c = realloc(b, (size_t)48 << 10);
    cr_assert_not_null(c);
    cr_assert_eq(tu_check_base(c, (size_t)48 << 10, 7), (size_t)-1);
    c = realloc(c, 1000); /* to a size class */
    cr_assert_not_null(c);
    cr_assert_eq(tu_check_base(c, 1000, 7), (size_t)-1);
    cr_assert_geq(malloc_usable_size(c), 1000);
    cr_assert_lt(malloc_usable_size(c), 4096);
    malloc_trim(0); /* the freed pages among the free ones, for small spans to take */
    /* small blocks until one is carved at p or b (the free pages below them
     * go first; 32 MiB at most) */
    enum { MAX = 1 << 17 };
    unsigned char **small = malloc(MAX * sizeof *small);
    cr_assert_not_null(small);
    int n = 0, at_p = 0;
    while (n < MAX && !at_p) {
        small[n] = malloc(256);
        cr_assert_not_null(small[n]);
        tu_fill_base(small[n], 256, (uint64_t)n);
        at_p += small[n] == p || small[n] == b;
        n++;
    }
#ifndef TA_HARDENED
    /* (the hardened build hands a fresh span's objects out in a random order
     * and keeps freed pages in quarantine: no block need land there) */
    cr_assert_gt(at_p, 0, "no small block at a freed grown block's address: the case is not tested");
#endif
    /* a block of a size class never grows where it is: one byte past its
     * class, it moves (taken for the large block once at its address, it
     * would stay) */
    for (int i = 0; i < n; i++) {
        size_t u = malloc_usable_size(small[i]);
        unsigned char *q = realloc(small[i], u + 1);
        cr_assert_not_null(q);
        cr_assert_neq(q, small[i], "block %d (%s) grew in place past its class", i,
                      small[i] == p || small[i] == b ? "at a grown block's address" : "elsewhere");
        cr_assert_eq(tu_check_base(q, 256, (uint64_t)i), (size_t)-1, "block %d lost its contents", i);
        cr_assert_geq(malloc_usable_size(q), u + 1);
        small[i] = q;
    }
    for (int i = 0; i < n; i++) free(small[i]);
    free(small);
    free(c);
}

/* The fast paths stay short: every path from the entry of malloc and of
 * free to a ret of theirs (the cache hits: per CPU in a restartable
 * sequence, per thread in plain loads and stores), in the built library, read
 * with objdump; the longest stays under a ceiling (gcc 12 today: 34 and 62,
 * clang 14: 35 and 66: the per-CPU hits of the small classes, and for free
 * a page outside the pagemap's first leaf; malloc's include the three
 * instructions that prefetch the next object up to 1 KiB, free's the four
 * of the per-CPU push's shard check, pcache.h).  C++ sized delete is free
 * with the size's class found and compared with the entry's (gcc 12: 77,
 * clang 14: 82).
 * A lock, an atomic or a loop slipped onto a fast path fails this: a loop on
 * a path to a ret is reported as such. */
#define FP_MAX 512
typedef struct {
    unsigned long addr[FP_MAX], target[FP_MAX];
    int kind[FP_MAX]; /* 0 plain, 1 ret, 2 jmp, 3 conditional jump, 4 leaves (indirect jump, ud2) */
    int n, memo[FP_MAX];
} fp_code_t;
enum { FP_NONE = -1, FP_LOOP = -2, FP_BUSY = -3, FP_TODO = -4 };

static int fp_index(const fp_code_t *c, unsigned long a) {
    for (int i = 0; i < c->n; i++)
        if (c->addr[i] == a) return i;
    return -1;
}
/* Instructions from i to a ret on the longest path, FP_NONE if none, FP_LOOP
 * if a loop lies on a path to one. */
static int fp_longest(fp_code_t *c, int i) {
    if (i < 0 || i >= c->n) return FP_NONE; /* out of the function: a tail call */
    if (c->memo[i] == FP_BUSY) return FP_LOOP;
    if (c->memo[i] != FP_TODO) return c->memo[i];
    c->memo[i] = FP_BUSY;
    int best = FP_NONE, next[2] = {-1, -1};
    if (c->kind[i] == 1) best = 0;
    else if (c->kind[i] == 0) next[0] = i + 1;
    else if (c->kind[i] == 2) next[0] = fp_index(c, c->target[i]);
    else if (c->kind[i] == 3) next[0] = i + 1, next[1] = fp_index(c, c->target[i]);
    for (int k = 0; k < 2 && best != FP_LOOP; k++) {
        if (next[k] < 0) continue;
        int r = fp_longest(c, next[k]);
        if (r == FP_LOOP) best = FP_LOOP;
        else if (r >= 0 && r + 1 > best) best = r + 1;
    }
    return c->memo[i] = best;
}

static int fast_path_length(const char *lib, const char *sym) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "set -- $(nm -D -S '%s' | awk '$4==\"%s\"{print $1, $2}'); [ -n \"$1\" ] || exit 3; "
             "objdump -d --no-show-raw-insn --start-address=0x$1 --stop-address=$(printf 0x%%x $((0x$1 + 0x$2))) '%s' "
             "| awk -F'\t' '/^ *[0-9a-f]+:/{sub(/:$/, \"\", $1); print $1, $2}'",
             lib, sym, lib);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    static fp_code_t c;
    memset(&c, 0, sizeof c);
    char line[512];
    while (c.n < FP_MAX && fgets(line, sizeof line, f)) {
        char op[32] = "";
        unsigned long a, t = 0;
        if (sscanf(line, "%lx %31s %lx", &a, op, &t) < 2) continue;
        c.addr[c.n] = a;
        c.target[c.n] = t;
        c.kind[c.n] = !strncmp(op, "ret", 3)                          ? 1
                      : !strcmp(op, "jmp") && !strchr(line, '*')      ? 2
                      : op[0] == 'j' && strcmp(op, "jmp") != 0        ? 3
                      : !strcmp(op, "jmp") || !strcmp(op, "ud2")      ? 4
                                                                      : 0;
        c.memo[c.n] = FP_TODO;
        c.n++;
    }
    pclose(f);
    if (c.n == 0) return -1;
    return fp_longest(&c, 0);
}

Test(api, fast_paths_stay_short) {
    if (system("command -v objdump >/dev/null 2>&1 && command -v nm >/dev/null 2>&1") != 0)
        cr_skip_test("objdump or nm missing (binutils)");
    const char *lib = tu_lib_path();
    int m = fast_path_length(lib, "malloc"), f = fast_path_length(lib, "free"), d = fast_path_length(lib, "_ZdlPvm");
    cr_assert_neq(m, FP_LOOP, "a loop on a path of malloc to its return");
    cr_assert_neq(f, FP_LOOP, "a loop on a path of free to its return");
    cr_assert_gt(m, 5, "could not read malloc's code from %s", lib);
#ifdef TA_HARDENED
    /* free ends in a jump to the quarantine (out of line by design) */
    cr_assert_leq(m, 40, "malloc's fast path is %d instructions", m);
    cr_log_info("fast paths: malloc %d instructions; free goes through the quarantine", m);
    return;
#endif
    cr_assert_gt(f, 5, "could not read free's code from %s", lib);
    cr_assert_leq(m, 38, "malloc's fast path is %d instructions", m);
    cr_assert_leq(f, 68, "free's fast path is %d instructions", f);
    /* sized delete: free's, and the size's class (a compare, a table) checked against the entry's */
    cr_assert_neq(d, FP_LOOP, "a loop on a path of sized delete to its return");
    cr_assert_gt(d, 5, "could not read sized delete's code from %s", lib);
    cr_assert_leq(d, 84, "sized delete's fast path is %d instructions", d);
    cr_log_info("fast paths: malloc %d, free %d, sized delete %d instructions", m, f, d);
}

/* The fast paths are inline asm goto; GCC 12 has dropped the blocks of their
 * labels when inlining them into large functions, leaving an undefined local
 * symbol that a shared library links with and that crashes on the first
 * miss.  None may be left. */
Test(api, no_asm_label_is_left_undefined) {
    if (system("command -v nm >/dev/null 2>&1") != 0) cr_skip_test("nm missing (binutils)");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "nm -D -u '%s' | grep -c ' \\.L'", tu_lib_path());
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    int n = -1;
    cr_assert_eq(fscanf(f, "%d", &n), 1);
    pclose(f);
    cr_assert_eq(n, 0, "%d undefined local labels in %s (nm -D -u)", n, tu_lib_path());
}

Test(api, reallocarray_overflow_keeps_block) {
    FOR_EACH_API(a) {
        unsigned char *p = a->reallocarray_(NULL, 10, 10);
        cr_assert_not_null(p);
        cr_assert(ta_owns(p), "%s reallocarray(NULL, ...) did not come from tieralloc", a->name);
        tu_fill_base(p, 100, 5);
        static const size_t pairs[][2] = {
            {SIZE_MAX, 2}, {2, SIZE_MAX}, {(size_t)1 << 32, (size_t)1 << 32}, {(size_t)1 << 40, (size_t)1 << 9}};
        for (size_t i = 0; i < 4; i++) {
            errno = 0;
            void *r = a->reallocarray_(p, tu_hide_size(pairs[i][0]), tu_hide_size(pairs[i][1]));
            cr_assert_null(r, "%s reallocarray(p, %#zx, %#zx) returned %p", a->name, pairs[i][0], pairs[i][1], r);
            cr_assert_eq(errno, ENOMEM, "%s reallocarray overflow: errno %d", a->name, errno);
            cr_assert(ta_owns(p));
            cr_assert_eq(tu_check_base(p, 100, 5), (size_t)-1, "%s reallocarray failure changed the block", a->name);
        }
        unsigned char *q = a->reallocarray_(p, 1000, 10);
        cr_assert_not_null(q);
        cr_assert(ta_owns(q));
        cr_assert_eq(tu_check_base(q, 100, 5), (size_t)-1);
        a->free_(q);
    }
}

/* ---- aligned allocation ------------------------------------------------------ */
Test(api, posix_memalign_rejects_bad_alignment) {
    static const size_t bad[] = {0, 1, 2, 3, 4, 6, 12, 24, 48, 100, 4097, ((size_t)1 << 20) + 8,
                                 (size_t)1 << 63 | 8};
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            void *p = (void *)0x5a5a;
            errno = 4321;
            int r = a->posix_memalign_(&p, bad[i], 8);
            cr_assert_eq(r, EINVAL, "%s posix_memalign(alignment %zu) returned %d, want EINVAL", a->name, bad[i], r);
            cr_assert_eq(p, (void *)0x5a5a, "%s posix_memalign changed *p on error", a->name);
            cr_assert_eq(errno, 4321, "%s posix_memalign changed errno on error", a->name);
        }
        /* impossible sizes: ENOMEM, *p untouched */
        for (size_t i = 0; i < N_IMPOSSIBLE; i++) {
            void *p = (void *)0x5a5a;
            int r = a->posix_memalign_(&p, 64, impossible[i]);
            cr_assert_eq(r, ENOMEM, "%s posix_memalign(64, %#zx) returned %d, want ENOMEM", a->name, impossible[i],
                         r);
            cr_assert_eq(p, (void *)0x5a5a);
        }
        void *p = (void *)0x5a5a;
        int r = a->posix_memalign_(&p, (size_t)1 << 62, 16);
        cr_assert_eq(r, ENOMEM, "%s posix_memalign(2^62, 16) returned %d, want ENOMEM", a->name, r);
        cr_assert_eq(p, (void *)0x5a5a);
        /* sizeof(void *) itself is a valid alignment */
        r = a->posix_memalign_(&p, sizeof(void *), 8);
        cr_assert_eq(r, 0);
        cr_assert(ta_owns(p));
        a->free_(p);
    }
}

Test(api, aligned_alloc_rejects_bad_alignment) {
    static const size_t bad[] = {3, 24, 48, 100, 4097, (size_t)1 << 63 | 1};
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            errno = 0;
            void *p = a->aligned_alloc_(bad[i], 8);
            cr_assert_null(p, "%s aligned_alloc(%zu, 8) returned %p", a->name, bad[i], p);
            cr_assert_eq(errno, EINVAL, "%s aligned_alloc(%zu, 8): errno %d, want EINVAL", a->name, bad[i], errno);
        }
        for (size_t i = 0; i < N_IMPOSSIBLE; i++) {
            errno = 0;
            void *p = a->aligned_alloc_(4096, impossible[i]);
            cr_assert_null(p);
            cr_assert_eq(errno, ENOMEM, "%s aligned_alloc(4096, %#zx): errno %d", a->name, impossible[i], errno);
            errno = 0;
            p = a->memalign_(64, impossible[i]);
            cr_assert_null(p);
            cr_assert_eq(errno, ENOMEM, "%s memalign(64, %#zx): errno %d", a->name, impossible[i], errno);
        }
    }
}

typedef enum { F_MEMALIGN, F_POSIX_MEMALIGN, F_ALIGNED_ALLOC } align_fn_t;
static const char *const align_fn_name[] = {"memalign", "posix_memalign", "aligned_alloc"};

static void *aligned_by(const api_t *a, align_fn_t f, size_t al, size_t n) {
    void *p = NULL;
    switch (f) {
    case F_MEMALIGN: p = a->memalign_(al, n); break;
    case F_POSIX_MEMALIGN: {
        int r = a->posix_memalign_(&p, al, n);
        cr_assert_eq(r, 0, "%s posix_memalign(%zu, %zu) returned %d", a->name, al, n, r);
        break;
    }
    case F_ALIGNED_ALLOC: p = a->aligned_alloc_(al, n); break;
    }
    return p;
}

Test(api, every_power_of_two_alignment_works, .timeout = 120) {
    FOR_EACH_API(a) {
        for (int f = F_MEMALIGN; f <= F_ALIGNED_ALLOC; f++) {
            for (size_t al = 16; al <= 4 * TU_MiB; al *= 2) {
                size_t sizes[4] = {1, al - 1, al, 3 * al + 5};
                for (int s = 0; s < 4; s++) {
                    size_t n = sizes[s];
                    const char *fn = align_fn_name[f];
                    unsigned char *p = aligned_by(a, (align_fn_t)f, al, n);
                    cr_assert_not_null(p, "%s %s(%zu, %zu) returned NULL", a->name, fn, al, n);
                    cr_assert(is_aligned(p, al), "%s %s(%zu, %zu) = %p is misaligned", a->name, fn, al, n, p);
                    cr_assert(ta_owns(p), "%s %s(%zu, %zu) = %p not owned", a->name, fn, al, n, p);
                    cr_assert_geq(a->usable_(p), n);
                    tu_fill_base(p, n, al + n);
                    /* grow: the contents move along */
                    size_t big = n * 2 + 100;
                    unsigned char *q = a->realloc_(p, big);
                    cr_assert_not_null(q);
                    cr_assert_eq(tu_check_base(q, n, al + n), (size_t)-1, "%s realloc of %s(%zu, %zu) to %zu lost data",
                                 a->name, fn, al, n, big);
                    memset(q + n, 0x33, big - n);
                    /* shrink */
                    size_t small = n / 2 + 1;
                    unsigned char *r = a->realloc_(q, small);
                    cr_assert_not_null(r);
                    cr_assert_eq(tu_check_base(r, small, al + n), (size_t)-1,
                                 "%s realloc of %s(%zu, %zu) to %zu lost data", a->name, fn, al, n, small);
                    a->free_(r);
                }
            }
        }
    }
}

Test(api, memalign_rounds_odd_alignment_up) {
    static const size_t cases[][2] = {{24, 32}, {48, 64}, {40, 64}, {100, 128}, {3000, 4096}, {5000, 8192},
                                      {1, 16}, {2, 16},   {4, 16},  {8, 16}};
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            for (size_t n = 1; n < 100000; n = n * 5 + 3) {
                void *p = a->memalign_(cases[i][0], n);
                cr_assert_not_null(p, "%s memalign(%zu, %zu) returned NULL", a->name, cases[i][0], n);
                size_t want = cases[i][1];
                if (n <= 8 && want == 16) want = 8;
                cr_assert(is_aligned(p, want), "%s memalign(%zu, %zu) = %p not %zu-aligned", a->name, cases[i][0], n,
                          p, want);
                cr_assert_geq(a->usable_(p), n);
                memset(p, 0x77, n);
                a->free_(p);
            }
        }
    }
}

Test(api, valloc_and_pvalloc_are_page_aligned) {
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 5000, 8192, 12289, 20000, 65536, 100000,
                                   262143, 262144, 300000, 1 << 20, (1 << 20) + 1};
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            size_t n = sizes[i];
            void *p = a->valloc_(n);
            cr_assert_not_null(p, "%s valloc(%zu) returned NULL", a->name, n);
            cr_assert(is_aligned(p, 4096), "%s valloc(%zu) = %p", a->name, n, p);
            cr_assert_geq(a->usable_(p), n);
            memset(p, 0x11, n);
            a->free_(p);

            p = a->pvalloc_(n);
            cr_assert_not_null(p, "%s pvalloc(%zu) returned NULL", a->name, n);
            cr_assert(is_aligned(p, 4096), "%s pvalloc(%zu) = %p", a->name, n, p);
            size_t u = a->usable_(p);
            if (n) {
                cr_assert_geq(u, (n + 4095) & ~(size_t)4095, "%s pvalloc(%zu): usable %zu", a->name, n, u);
                cr_assert_eq(u % 4096, 0, "%s pvalloc(%zu): usable %zu is not whole pages", a->name, n, u);
            }
            memset(p, 0x22, u);
            a->free_(p);
        }
        void *p = a->pvalloc_(1);
        cr_assert_geq(a->usable_(p), 4096, "%s pvalloc(1) usable %zu", a->name, a->usable_(p));
        a->free_(p);
    }
}

/* ---- the glibc aliases --------------------------------------------------------- */
Test(api, glibc_aliases_return_tieralloc_blocks) {
    cr_assert_not_null((void *)cfree, "cfree is not exported");
    cr_assert_not_null((void *)__libc_malloc, "__libc_malloc missing");
    cr_assert_not_null((void *)__libc_free, "__libc_free missing");
    cr_assert_not_null((void *)__libc_calloc, "__libc_calloc missing");
    cr_assert_not_null((void *)__libc_realloc, "__libc_realloc missing");
    cr_assert_not_null((void *)__libc_memalign, "__libc_memalign missing");
    cr_assert_not_null((void *)__libc_valloc, "__libc_valloc missing");
    cr_assert_not_null((void *)__libc_pvalloc, "__libc_pvalloc missing");
    cr_assert_not_null((void *)__posix_memalign, "__posix_memalign missing");

    void *p = __libc_malloc(100);
    cr_assert(ta_owns(p), "__libc_malloc block is not tieralloc's");
    p = __libc_realloc(p, 5000);
    cr_assert(ta_owns(p), "__libc_realloc block is not tieralloc's");
    __libc_free(p);

    unsigned char *z = __libc_calloc(10, 100);
    cr_assert(ta_owns(z), "__libc_calloc block is not tieralloc's");
    cr_assert(all_zero(z, 1000));
    cfree(z);

    p = __libc_memalign(256, 1000);
    cr_assert(ta_owns(p), "__libc_memalign block is not tieralloc's");
    cr_assert(is_aligned(p, 256));
    free(p);
    p = __libc_valloc(10);
    cr_assert(ta_owns(p), "__libc_valloc block is not tieralloc's");
    cr_assert(is_aligned(p, 4096));
    free(p);
    p = __libc_pvalloc(10);
    cr_assert(ta_owns(p), "__libc_pvalloc block is not tieralloc's");
    cr_assert(is_aligned(p, 4096));
    free(p);
    p = NULL;
    cr_assert_eq(__posix_memalign(&p, 128, 10), 0);
    cr_assert(ta_owns(p), "__posix_memalign block is not tieralloc's");
    cr_assert(is_aligned(p, 128));
    free(p);
    /* and blocks from the standard names can be freed through the aliases */
    p = malloc(300000);
    cr_assert(ta_owns(p));
    __libc_free(p);
    p = malloc(30);
    cfree(p);
}

static int a_global_int[16];

Test(api, ta_owns_tracks_live_block_starts) {
    int on_stack[4];
    cr_assert_eq(ta_owns(NULL), 0);
    cr_assert_eq(ta_owns(tu_hide(on_stack)), 0, "ta_owns(stack) != 0");
    cr_assert_eq(ta_owns(tu_hide(a_global_int)), 0, "ta_owns(global) != 0");
    cr_assert_eq(ta_owns((void *)0x10), 0);
    cr_assert_eq(ta_owns((void *)0x123456789000), 0);
    static const size_t sizes[] = {1, 64, 1000, 70000, 262144, 300000, 1 << 20};
    FOR_EACH_API(a) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            char *p = a->malloc_(sizes[i]);
            cr_assert_eq(ta_owns(p), 1, "%s: ta_owns(malloc(%zu)) != 1", a->name, sizes[i]);
            if (sizes[i] >= 64) cr_assert_eq(ta_owns(p + 16), 0, "ta_owns(interior of %zu-byte block) != 0", sizes[i]);
            if (sizes[i] >= 300000) cr_assert_eq(ta_owns(p + 8192), 0, "ta_owns(second page of a large block) != 0");
            a->free_(p);
            cr_assert_eq(ta_owns(p), 0, "%s: ta_owns of a freed %zu-byte block != 0", a->name, sizes[i]);
        }
    }
}

/* ---- symbol resolution ------------------------------------------------------ */
Test(api, standard_names_resolve_into_libtieralloc) {
    static const char *const names[] = {"malloc",        "free",       "calloc",     "realloc",
                                        "memalign",      "posix_memalign", "aligned_alloc", "valloc",
                                        "pvalloc",       "malloc_usable_size", "malloc_trim", "mallinfo2",
                                        "mallopt",       "malloc_stats", "malloc_info", "mallinfo"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        cr_assert_not_null(sym, "dlsym(%s) failed", names[i]);
        Dl_info info;
        cr_assert(dladdr(sym, &info), "dladdr(%s) failed", names[i]);
        cr_assert_not_null(info.dli_fname);
        cr_assert(strstr(info.dli_fname, "libtieralloc") != NULL, "%s resolves into %s, not libtieralloc", names[i],
                  info.dli_fname);
    }
    /* the binary's own references too */
    void *direct[] = {(void *)malloc, (void *)free, (void *)calloc, (void *)realloc, (void *)memalign,
                      (void *)posix_memalign, (void *)aligned_alloc, (void *)malloc_usable_size};
    for (size_t i = 0; i < sizeof direct / sizeof direct[0]; i++) {
        Dl_info info;
        cr_assert(dladdr(direct[i], &info));
        cr_assert(info.dli_fname && strstr(info.dli_fname, "libtieralloc"), "direct reference %zu goes to %s", i,
                  info.dli_fname);
    }
}

/* ---- introspection: mallinfo, malloc_trim, mallopt, malloc_stats, malloc_info -- */
Test(api, mallinfo2_counts_bytes_in_use) {
    enum { N = 10 * 1024 };
    struct mallinfo2 before = mallinfo2();
    void **v = malloc(N * sizeof *v);
    cr_assert_not_null(v);
    for (int i = 0; i < N; i++) {
        v[i] = malloc(1024);
        cr_assert_not_null(v[i]);
        memset(v[i], 1, 1024);
    }
    struct mallinfo2 held = mallinfo2();
    cr_assert_geq(held.uordblks, before.uordblks + 9 * TU_MiB,
                  "uordblks grew by %zd bytes while 10 MiB are held (before %zu, now %zu)",
                  (ssize_t)(held.uordblks - before.uordblks), before.uordblks, held.uordblks);
    cr_assert_geq(held.arena + held.hblkhd, held.uordblks, "arena+hblkhd < uordblks");
    for (int i = 0; i < N; i++) free(v[i]);
    free(v);
    struct mallinfo2 after = mallinfo2();
    cr_assert_lt(after.uordblks, held.uordblks - 8 * TU_MiB, "uordblks did not drop after freeing (%zu -> %zu)",
                 held.uordblks, after.uordblks);

    /* the int version reports the same heap (this process holds some memory) */
    struct mallinfo old = mallinfo();
    cr_assert_gt(old.uordblks, 0, "mallinfo reports no bytes in use");
    cr_assert_gt(old.arena + old.hblkhd, 0, "mallinfo reports no memory at all");
}

Test(api, malloc_trim_returns_0_or_1_and_memory_stays_usable) {
    FOR_EACH_API(a) {
        enum { N = 2000 };
        static void *v[N];
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < N; i++) {
                v[i] = a->malloc_((size_t)(i % 50) * 97 + (i % 100 == 0 ? 600000 : 1));
                cr_assert_not_null(v[i]);
                tu_fill(v[i], a->usable_(v[i]), (uint64_t)i);
            }
            for (int i = 0; i < N; i += 2) a->free_(v[i]);
            int r = a == apis ? malloc_trim(0) : ta_malloc_trim(0);
            cr_assert(r == 0 || r == 1, "malloc_trim returned %d", r);
            for (int i = 1; i < N; i += 2) {
                cr_assert_eq(tu_check(v[i], a->usable_(v[i]), (uint64_t)i), (size_t)-1,
                             "%s malloc_trim damaged a live block", a->name);
                a->free_(v[i]);
            }
            r = a == apis ? malloc_trim(0) : ta_malloc_trim(0);
            cr_assert(r == 0 || r == 1, "malloc_trim returned %d", r);
        }
        /* a freshly trimmed heap serves (zeroed, for calloc) memory again */
        for (size_t n = 16; n <= 8 * TU_MiB; n *= 4) {
            unsigned char *p = a->calloc_(1, n);
            cr_assert_not_null(p);
            cr_assert(all_zero(p, n));
            memset(p, 0x5c, n);
            a->free_(p);
        }
    }
    int r = malloc_trim(1 << 20);
    cr_assert(r == 0 || r == 1, "malloc_trim(1 MiB) returned %d", r);
}

Test(api, mallopt_accepts_parameters_as_glibc_does) {
    cr_assert_eq(mallopt(M_TRIM_THRESHOLD, 128 * 1024), 1);
    cr_assert_eq(mallopt(M_TOP_PAD, 0), 1);
    cr_assert_eq(mallopt(M_MMAP_THRESHOLD, 256 * 1024), 1);
    cr_assert_eq(mallopt(M_MMAP_MAX, 65536), 1);
    cr_assert_eq(mallopt(M_ARENA_MAX, 4), 1);
    cr_assert_eq(mallopt(M_ARENA_TEST, 8), 1);
    cr_assert_eq(mallopt(M_PERTURB, 0), 1);
    cr_assert_eq(mallopt(-12345, 1), 1, "glibc 2.36 returns 1 for an unknown parameter");
    void *p = malloc(1000);
    cr_assert(ta_owns(p));
    free(p);
}

static void call_malloc_stats(void *arg) {
    (void)arg;
    void *p = malloc(5000);
    malloc_stats();
    free(p);
}

Test(api, malloc_stats_writes_to_stderr) {
    tu_child_t c;
    tu_run_child(call_malloc_stats, NULL, 20000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_gt(c.err_len, 0, "malloc_stats wrote nothing to stderr");
    cr_assert_eq(c.out_len, 0, "malloc_stats wrote to stdout: %s", c.out);
}

Test(api, malloc_info_writes_xml_and_rejects_options) {
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    void *p = malloc(12345);
    cr_assert_eq(malloc_info(0, f), 0);
    fflush(f);
    rewind(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    cr_assert_gt(n, 0, "malloc_info wrote nothing");
    const char *s = buf;
    while (*s == ' ' || *s == '\n') s++;
    if (strncmp(s, "<?xml", 5) == 0) s = strchr(s, '>') + 1; /* an XML declaration is fine */
    while (*s == ' ' || *s == '\n') s++;
    cr_assert(strncmp(s, "<malloc", 7) == 0, "malloc_info output does not start with <malloc: %.80s", buf);
    cr_assert_eq(malloc_info(1, f), EINVAL, "malloc_info(1, f) should fail as glibc's does");
    fclose(f);
    free(p);
}

/* glibc 2.36's answers, which programs test for: mallopt accepts every
 * parameter but an out-of-range M_MXFAST; malloc_info returns EINVAL for
 * options != 0; memalign refuses an alignment above 2^63 with EINVAL. */
Test(api, conformance_details_match_glibc) {
    cr_assert_eq(mallopt(M_TRIM_THRESHOLD, 1 << 20), 1);
    cr_assert_eq(mallopt(12345, 1), 1, "an unknown parameter: glibc returns 1");
    cr_assert_eq(mallopt(M_MXFAST, 64), 1);
    cr_assert_eq(mallopt(M_MXFAST, 100000), 0, "M_MXFAST out of range: glibc returns 0");
    FILE *f = fopen("/dev/null", "w");
    cr_assert_not_null(f);
    errno = 0;
    cr_assert_eq(malloc_info(1, f), EINVAL);
    cr_assert_eq(errno, 0);
    cr_assert_eq(malloc_info(0, f), 0);
    fclose(f);
    errno = 0;
    cr_assert_null(memalign(tu_hide_size(SIZE_MAX), 1));
    cr_assert_eq(errno, EINVAL, "memalign(SIZE_MAX, 1): errno %d, glibc gives EINVAL", errno);
    errno = 0;
    void *p = memalign(tu_hide_size(((size_t)1 << 40) + 1), 1);
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
}

/* calloc of blocks carved from pages the OS just gave back zeroed (trim
 * released them) skips the memset (their state is ZERO); blocks written and
 * freed since are cleared: every calloc returns zeros either way. */
Test(api, calloc_on_released_pages_and_after_reuse_is_zero) {
    static const size_t sizes[] = {16, 48, 256, 1000, 3000, 20000};
    enum { N = 600 };
    static void *v[N];
    FOR_EACH_API(a) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            for (int rep = 0; rep < 3; rep++) {
                for (int i = 0; i < N; i++) {
                    v[i] = a->malloc_(n);
                    cr_assert_not_null(v[i]);
                    memset(v[i], 0xab, n);
                }
                for (int i = 0; i < N; i++) a->free_(v[i]);
                if (rep != 1) malloc_trim(0); /* rep 1: the dirty blocks are reused */
                for (int i = 0; i < N; i++) {
                    v[i] = a->calloc_(1, n);
                    cr_assert_not_null(v[i]);
                    cr_assert(all_zero(v[i], n), "%s calloc(1, %zu) = %p is not zeroed (rep %d)", a->name, n, v[i], rep);
                    memset(v[i], 0xcd, n);
                }
                for (int i = 0; i < N; i++) a->free_(v[i]);
            }
        }
    }
}
