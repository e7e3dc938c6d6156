/* test_sizeclass.c: the size-class tables (sizeclass.c) checked against the
 * properties the rest of the allocator relies on: every small request maps to
 * the smallest class that fits, waste stays bounded, spans are well shaped,
 * the division-free divisibility test agrees with %, and aligned lookups give
 * classes whose every object is aligned. */
#include <criterion/criterion.h>

#include <stdint.h>
#include <string.h>

#include "internal.h"

static void setup(void) {
    ta_ensure_init();
}

TestSuite(sizeclass, .init = setup, .timeout = 30);

Test(sizeclass, table_shape) {
    cr_assert_gt(ta_nclasses, 2u, "only %u classes", ta_nclasses);
    cr_assert_leq(ta_nclasses, (uint32_t)TA_MAX_CLASSES);
    /* the class number is stored in the low 8 bits of a pagemap info word and
     * in span->cls (uint8_t) */
    cr_assert_leq(ta_nclasses, 256u);
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        uint32_t sz = ta_class[c].size;
        cr_assert_gt(sz, 0u, "class %u has size 0", c);
        cr_assert_eq(sz % TA_ALIGN, 0u, "class %u: size %u is not a multiple of %d", c, sz, TA_ALIGN);
        if (c > 1)
            cr_assert_gt(sz, ta_class[c - 1].size, "class %u (%u) not above class %u (%u)", c, sz, c - 1,
                         ta_class[c - 1].size);
    }
    cr_assert_eq(ta_class[1].size, 16u, "smallest class should be 16 bytes, is %u", ta_class[1].size);
    cr_assert_eq(ta_class[ta_nclasses - 1].size, (uint32_t)TA_MAX_SMALL, "largest class %u, want %zu",
                 ta_class[ta_nclasses - 1].size, TA_MAX_SMALL);
}

/* Every request 1..256 KiB: a valid class, the smallest that fits, bounded waste. */
Test(sizeclass, every_small_size_maps_to_smallest_fitting_class) {
    uint32_t prev_cls = 0;
    for (size_t n = 1; n <= TA_MAX_SMALL; n++) {
        uint32_t c = ta_size_to_class(n);
        if (!c || c >= ta_nclasses)
            cr_assert_fail("size %zu: class %u out of range 1..%u", n, c, ta_nclasses - 1);
        size_t sz = ta_class[c].size;
        if (sz < n) cr_assert_fail("size %zu: class %u holds only %zu bytes", n, c, sz);
        if (c > 1 && ta_class[c - 1].size >= n)
            cr_assert_fail("size %zu: class %u (%zu) chosen but class %u (%u) fits", n, c, sz, c - 1,
                     ta_class[c - 1].size);
        if (n > 128) {
            if ((sz - n) * 8 >= sz) cr_assert_fail("size %zu: class size %zu wastes >= 12.5%%", n, sz);
        } else {
            if (sz - n >= 16) cr_assert_fail("size %zu: class size %zu wastes >= 16 bytes", n, sz);
        }
        if (c < prev_cls) cr_assert_fail("size %zu: class %u below the class of size %zu (%u)", n, c, n - 1, prev_cls);
        prev_cls = c;
    }
    /* the classes are all reachable: the last request reaches the last class */
    cr_assert_eq(prev_cls, ta_nclasses - 1);
}

Test(sizeclass, every_class_size_maps_to_itself) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        cr_assert_eq(ta_size_to_class(ta_class[c].size), c, "size %u maps to class %u, not %u",
                     ta_class[c].size, ta_size_to_class(ta_class[c].size), c);
        cr_assert_eq(ta_size_to_class(ta_class[c].size + 1), c + 1 < ta_nclasses ? c + 1 : 0,
                     "size %u+1 maps to class %u", ta_class[c].size, ta_size_to_class(ta_class[c].size + 1));
    }
}

Test(sizeclass, large_requests_have_no_class) {
    const size_t big[] = {TA_MAX_SMALL + 1, TA_MAX_SMALL + 16, TA_MAX_SMALL + 4096, 2 * TA_MAX_SMALL,
                          (size_t)1 << 30, TA_MAX_REQUEST, SIZE_MAX / 2, SIZE_MAX - 15, SIZE_MAX};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        cr_assert_eq(ta_size_to_class(big[i]), 0u, "size %zu got class %u", big[i], ta_size_to_class(big[i]));
}

Test(sizeclass, spans_are_well_shaped) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        const ta_class_info_t *ci = &ta_class[c];
        size_t span = (size_t)ci->pages << TA_PAGE_SHIFT;
        cr_assert_geq(ci->pages, 1u, "class %u: no pages", c);
        /* a span's page index lives in the 24 high bits of the info word */
        cr_assert_lt(ci->pages, 1u << 24);
        cr_assert_leq(span, (size_t)4 << 20, "class %u (%u B): span of %zu bytes is unreasonably big", c,
                      ci->size, span);
        cr_assert_geq(ci->objects, 1u, "class %u: no object fits", c);
        /* objects is exactly how many whole objects fit */
        cr_assert_leq((size_t)ci->objects * ci->size, span, "class %u: %u objects of %u B overflow %zu", c,
                      ci->objects, ci->size, span);
        cr_assert_gt((size_t)(ci->objects + 1) * ci->size, span, "class %u: room for more than %u objects", c,
                     ci->objects);
        size_t tail = span - (size_t)ci->objects * ci->size;
        cr_assert_leq(tail * 8, span, "class %u (%u B): tail %zu of %zu-byte span exceeds 1/8", c, ci->size, tail,
                      span);
        /* up to 32 KiB the tail shares a page with blocks (resident, holding
         * nothing): at most 1/32; above, it is whole 4 KiB pages no block touches */
        if (ci->size <= 32768)
            cr_assert_leq(tail * 32, span, "class %u (%u B): tail %zu of %zu-byte span exceeds 1/32", c, ci->size,
                          tail, span);
        else
            cr_assert_eq(tail % 4096, 0u, "class %u (%u B): a tail of %zu bytes shares a page with the block", c,
                         ci->size, tail);
    }
}

Test(sizeclass, batches_are_sane) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        const ta_class_info_t *ci = &ta_class[c];
        cr_assert_geq(ci->batch, 1u, "class %u: batch 0", c);
        cr_assert_leq(ci->batch, 1024u, "class %u: batch %u", c, ci->batch);
        /* a batch moved between tiers must not be a huge amount of memory */
        cr_assert_leq((uint64_t)ci->batch * ci->size, (uint64_t)1 << 20, "class %u: batch %u x %u B", c, ci->batch,
                      ci->size);
        /* small objects move in real batches, not one at a time */
        if (ci->size <= 1024) cr_assert_geq(ci->batch, 8u, "class %u (%u B): batch %u", c, ci->size, ci->batch);
    }
}

/* div_magic: for every offset inside a span (and the offset one past it),
 * the multiply test agrees with %. */
Test(sizeclass, div_magic_matches_modulo) {
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        const ta_class_info_t *ci = &ta_class[c];
        uint64_t m = ci->div_magic;
        cr_assert_neq(m, 0u, "class %u: div_magic 0", c);
        uint32_t span = ci->pages << TA_PAGE_SHIFT;
        uint32_t hits = 0;
        for (uint32_t off = 0; off <= span; off++) {
            bool magic = (uint64_t)off * m <= m - 1;
            bool mod = off % ci->size == 0;
            if (magic != mod)
                cr_assert_fail("class %u (size %u): offset %u: magic says %d, %% says %d", c, ci->size, off, magic, mod);
            hits += mod;
        }
        cr_assert_eq(hits, span / ci->size + 1);
    }
}

/* The smallest class whose size is a multiple of a and >= n, by brute force. */
static uint32_t brute_aligned(size_t n, size_t a) {
    for (uint32_t c = 1; c < ta_nclasses; c++)
        if (ta_class[c].size >= n && ta_class[c].size % a == 0) return c;
    return 0;
}

Test(sizeclass, class_for_aligned) {
    for (size_t a = 16; a <= TA_PAGE_SIZE; a *= 2) {
        /* brute force answer, walked forward as n grows (it is monotonic in n) */
        uint32_t want = brute_aligned(1, a);
        uint32_t found_any = 0;
        for (size_t n = 1; n <= TA_MAX_SMALL; n++) {
            while (want && ta_class[want].size < n) {
                do want++;
                while (want < ta_nclasses && ta_class[want].size % a != 0);
                if (want >= ta_nclasses) want = 0;
            }
            uint32_t got = ta_class_for_aligned(n, a);
            if (got != want)
                cr_assert_fail("ta_class_for_aligned(%zu, %zu) = %u (size %u), want %u (size %u)", n, a, got,
                         got < ta_nclasses ? ta_class[got].size : 0, want, ta_class[want].size);
            if (got) {
                found_any++;
                if (ta_class[got].size % a || ta_class[got].size < n)
                    cr_assert_fail("ta_class_for_aligned(%zu, %zu): class size %u", n, a, ta_class[got].size);
            }
        }
        /* every alignment up to a page is served for small sizes at least */
        cr_assert_gt(found_any, 0u, "alignment %zu never served", a);
        cr_assert_neq(ta_class_for_aligned(1, a), 0u, "alignment %zu: nothing for 1 byte", a);
    }
    /* alignments above a page, and sizes above the small limit, have no class */
    cr_assert_eq(ta_class_for_aligned(16, TA_PAGE_SIZE * 2), 0u);
    cr_assert_eq(ta_class_for_aligned(16, (size_t)1 << 20), 0u);
    cr_assert_eq(ta_class_for_aligned(TA_MAX_SMALL + 1, 16), 0u);
    cr_assert_eq(ta_class_for_aligned(SIZE_MAX, 16), 0u);
}

/* The objects of an aligned class placed from a span start are all aligned:
 * the class size is a multiple of the alignment and the span is page aligned. */
Test(sizeclass, aligned_class_objects_stay_aligned) {
    for (size_t a = 16; a <= TA_PAGE_SIZE; a *= 2) {
        for (size_t n = a / 2; n <= 3 * a; n += a / 4 ? a / 4 : 1) {
            uint32_t c = ta_class_for_aligned(n ? n : 1, a);
            if (!c) continue;
            const ta_class_info_t *ci = &ta_class[c];
            for (uint32_t i = 0; i < ci->objects; i++)
                cr_assert_eq(((size_t)i * ci->size) % a, 0u, "class %u object %u not %zu-aligned", c, i, a);
        }
    }
}
