/* sizeclass.c: request size → size class, by two table lookups.
 * Classes step by 16 bytes up to 256, then by 1/8 of the power of two below
 * (8 classes per doubling) up to 256 KiB: a request wastes < 16 bytes below
 * 128 bytes and < 12.5% of its block above.
 *
 * The tables are constants, built here by the compiler: they sit in the
 * library's read-only pages, shared by every process that maps it, so a
 * program's start neither computes them (some 38 000 instructions) nor
 * faults in the three zero pages they took when they were filled at start. */
#include "internal.h"

/* Each class as X(index, size of the class below, size). */
#define BY16(X, i) X(i, 16 * ((i) - 1), 16 * (i))
#define DOUBLING(X, i, b)                                                                                          \
    X(i, (b), (b) + (b) / 8) X((i) + 1, (b) + (b) / 8, (b) + 2 * (b) / 8)                                          \
    X((i) + 2, (b) + 2 * (b) / 8, (b) + 3 * (b) / 8) X((i) + 3, (b) + 3 * (b) / 8, (b) + 4 * (b) / 8)              \
    X((i) + 4, (b) + 4 * (b) / 8, (b) + 5 * (b) / 8) X((i) + 5, (b) + 5 * (b) / 8, (b) + 6 * (b) / 8)              \
    X((i) + 6, (b) + 6 * (b) / 8, (b) + 7 * (b) / 8) X((i) + 7, (b) + 7 * (b) / 8, 2 * (b))
/* classes 1..32: sizes up to 1 KiB (the table indexed by n itself) */
#define CLASSES_TO_1K(X)                                                                                          \
    BY16(X, 1) BY16(X, 2) BY16(X, 3) BY16(X, 4) BY16(X, 5) BY16(X, 6) BY16(X, 7) BY16(X, 8) BY16(X, 9)            \
    BY16(X, 10) BY16(X, 11) BY16(X, 12) BY16(X, 13) BY16(X, 14) BY16(X, 15) BY16(X, 16)                            \
    DOUBLING(X, 17, 256) DOUBLING(X, 25, 512)
/* classes 33..96: above 1 KiB, up to TA_MAX_SMALL */
#define CLASSES_ABOVE_1K(X)                                                                                       \
    DOUBLING(X, 33, 1024) DOUBLING(X, 41, 2048) DOUBLING(X, 49, 4096) DOUBLING(X, 57, 8192)                        \
    DOUBLING(X, 65, 16384) DOUBLING(X, 73, 32768) DOUBLING(X, 81, 65536) DOUBLING(X, 89, 131072)

/* Pages per span.  A class of blocks up to 32 KiB: the fewest pages, from
 * those that hold MIN_OBJECTS blocks to 15 more, whose tail (the bytes after
 * the last whole block) is at most 1/32 of the span.  The tail shares a page
 * with the span's last blocks, so it is resident and holds nothing: sqlite's
 * page buffers (4 104 and 4 368 bytes, class 4 608) came 5 to 3 pages with
 * 1 536 bytes of tail, 6.2%, and take 7 to 4 pages now, 1.6% (its bulk
 * script's peak RSS 17.6 -> 17.2 MiB, alloc/README.md).  A larger class (a
 * block a span, its size a multiple of 4 KiB: the tail is whole pages no
 * block touches), or one with no such span within 15 pages: the fewest pages
 * whose tail is at most 1/8 (one within 15 pages is checked below for every
 * class, as the 1/32 of the classes up to 32 KiB is by tests/test_sizeclass.c). */
#define MIN_OBJECTS(s) ((s) <= 4096 ? 8 : (s) <= 32768 ? 4 : 1)
#define ROOM_PAGES(s) ((((s) * MIN_OBJECTS(s)) + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT)
#define TAIL_AT_MOST(p, s, frac) ((((size_t)(p) << TA_PAGE_SHIFT) % (s)) * (frac) <= ((size_t)(p) << TA_PAGE_SHIFT))
/* the first page count in r .. r + 15 whose tail is at most 1/frac, else 0 */
#define FIRST_PAGES(r, s, frac) \
    (TAIL_AT_MOST((r) + 0, s, frac) ? (r) + 0 : TAIL_AT_MOST((r) + 1, s, frac) ? (r) + 1 : \
     TAIL_AT_MOST((r) + 2, s, frac) ? (r) + 2 : TAIL_AT_MOST((r) + 3, s, frac) ? (r) + 3 : \
     TAIL_AT_MOST((r) + 4, s, frac) ? (r) + 4 : TAIL_AT_MOST((r) + 5, s, frac) ? (r) + 5 : \
     TAIL_AT_MOST((r) + 6, s, frac) ? (r) + 6 : TAIL_AT_MOST((r) + 7, s, frac) ? (r) + 7 : \
     TAIL_AT_MOST((r) + 8, s, frac) ? (r) + 8 : TAIL_AT_MOST((r) + 9, s, frac) ? (r) + 9 : \
     TAIL_AT_MOST((r) + 10, s, frac) ? (r) + 10 : TAIL_AT_MOST((r) + 11, s, frac) ? (r) + 11 : \
     TAIL_AT_MOST((r) + 12, s, frac) ? (r) + 12 : TAIL_AT_MOST((r) + 13, s, frac) ? (r) + 13 : \
     TAIL_AT_MOST((r) + 14, s, frac) ? (r) + 14 : TAIL_AT_MOST((r) + 15, s, frac) ? (r) + 15 : 0)
#define SPAN_PAGES(s)                                                                                    \
    (MIN_OBJECTS(s) > 1 && FIRST_PAGES(ROOM_PAGES(s), s, 32) ? FIRST_PAGES(ROOM_PAGES(s), s, 32)        \
                                                             : FIRST_PAGES(ROOM_PAGES(s), s, 8))
/* move ~64 KiB at a time between a cache and central, 2..64 objects */
#define BATCH(s) ((65536 / (s)) < 2 ? 2 : (65536 / (s)) > 64 ? 64 : (65536 / (s)))
#define MAGIC(s) (UINT64_MAX / (s) + 1)

#define CHECK(i, below, s) _Static_assert(SPAN_PAGES(s) != 0 && (below) < (s), "class " #i);
CLASSES_TO_1K(CHECK)
CLASSES_ABOVE_1K(CHECK)
#define ONE(i, below, s) +1
_Static_assert(1 CLASSES_TO_1K(ONE) CLASSES_ABOVE_1K(ONE) == TA_NCLASSES, "TA_NCLASSES is the count of classes, 0 included");
_Static_assert(TA_NCLASSES <= TA_MAX_CLASSES, "too many classes");
#define IS_CLASS_1K(i, below, s) +((i) == TA_CLASS_1K && (s) == 1024)
_Static_assert(0 CLASSES_TO_1K(IS_CLASS_1K) == 1, "TA_CLASS_1K is the class of 1 KiB blocks");
#define IS_LINE_SHARED(i, below, s) +((i) == TA_CLASS_LINE_SHARED && (s) < 64) + ((i) == TA_CLASS_LINE_SHARED + 1 && (s) >= 64)
_Static_assert(0 CLASSES_TO_1K(IS_LINE_SHARED) == 2, "TA_CLASS_LINE_SHARED is the last class of blocks under 64 bytes");
_Static_assert(2 * 131072 == TA_MAX_SMALL, "the last class is TA_MAX_SMALL");

#define CLASS(i, below, s)                                                                                        \
    [i] = {.size = (s), .pages = SPAN_PAGES(s), .batch = BATCH(s), .objects = (SPAN_PAGES(s) << TA_PAGE_SHIFT) / (s), \
           .div_magic = MAGIC(s)},
const ta_class_info_t ta_class[TA_MAX_CLASSES] = {CLASSES_TO_1K(CLASS) CLASSES_ABOVE_1K(CLASS)};

#define CLASS_MAGIC(i, below, s) [i] = MAGIC(s),
const uint64_t ta_class_magic[TA_MAX_CLASSES] = {CLASSES_TO_1K(CLASS_MAGIC) CLASSES_ABOVE_1K(CLASS_MAGIC)};

/* the smallest class that fits: n <= 1024 by n itself (0 gets the first class) */
#define UPTO_1K(i, below, s) [(below) + 1 ... (s)] = (i),
const uint8_t ta_class_small[1024 + 1] = {[0] = 1, CLASSES_TO_1K(UPTO_1K)};
/* 1024 < n <= TA_MAX_SMALL by (n - 1024 + 127) >> 7; the sizes above 1 KiB are
 * multiples of 128, so each class owns whole slots (slot 0 is n == 1024) */
#define ABOVE_1K(i, below, s) [((below) - 1024) / 128 + 1 ... ((s) - 1024) / 128] = (i),
const uint8_t ta_class_large[((TA_MAX_SMALL - 1024) >> 7) + 1] = {[0] = 32, CLASSES_ABOVE_1K(ABOVE_1K)};

uint32_t ta_class_for_aligned(size_t n, size_t align) {
    if (align > TA_PAGE_SIZE || n > TA_MAX_SMALL) return 0;
    for (uint32_t c = ta_size_to_class(n < align ? align : n); c && c < ta_nclasses; c++)
        if (ta_class[c].size % align == 0) return c;
    return 0;
}
