/* sizeclass.c: request size → size class, by two table lookups.
 * Classes step by 16 bytes up to 256, then by 1/8 of the power of two below
 * (8 classes per doubling) up to 256 KiB: a request wastes < 16 bytes below
 * 128 bytes and < 12.5% of its block above. */
#include "internal.h"

ta_class_info_t ta_class[TA_MAX_CLASSES];
uint64_t ta_class_magic[TA_MAX_CLASSES];
uint32_t ta_nclasses;
uint8_t ta_class_small[1024 + 1];
uint8_t ta_class_large[((TA_MAX_SMALL - 1024) >> 7) + 1];

/* Pages per span: the fewest pages whose tail (bytes left over after the last
 * whole object) is at most 1/8 of the span and which hold at least a few objects. */
static uint32_t span_pages(uint32_t size) {
    uint32_t min_objs = size <= 4096 ? 8 : (size <= 32768 ? 4 : 1);
    for (uint32_t pages = 1;; pages++) {
        size_t bytes = (size_t)pages << TA_PAGE_SHIFT;
        if (bytes < size * (size_t)min_objs) continue;
        if ((bytes % size) * 8 <= bytes) return pages;
    }
}

static void add_class(uint32_t size) {
    ta_class_info_t *c = &ta_class[ta_nclasses++];
    c->size = size;
    c->pages = span_pages(size);
    c->objects = (uint32_t)(((size_t)c->pages << TA_PAGE_SHIFT) / size);
    /* move ~64 KiB at a time between a cache and central, 2..64 objects */
    uint32_t b = (64u << 10) / size;
    c->batch = b < 2 ? 2 : (b > 64 ? 64 : b);
    c->div_magic = UINT64_MAX / size + 1;
    ta_class_magic[c - ta_class] = c->div_magic;
}

void ta_sizeclass_init(void) {
    if (ta_nclasses) return;
    ta_nclasses = 1; /* class 0: not a small block */
    for (uint32_t s = 16; s <= 256; s += 16) add_class(s);
    for (uint32_t base = 256; base < TA_MAX_SMALL; base *= 2)
        for (uint32_t s = base + base / 8; s <= base * 2; s += base / 8) add_class(s);
    /* lookup tables: the smallest class that fits */
    uint32_t c = 1;
    for (size_t n = 0; n < sizeof ta_class_small; n++) {
        while (ta_class[c].size < n) c++;
        ta_class_small[n] = (uint8_t)c;
    }
    for (size_t i = 0; i < sizeof ta_class_large; i++) {
        size_t n = 1024 + (i << 7);
        while (ta_class[c].size < n) c++;
        ta_class_large[i] = (uint8_t)c;
    }
}

uint32_t ta_class_for_aligned(size_t n, size_t align) {
    if (align > TA_PAGE_SIZE || n > TA_MAX_SMALL) return 0;
    for (uint32_t c = ta_size_to_class(n < align ? align : n); c && c < ta_nclasses; c++)
        if (ta_class[c].size % align == 0) return c;
    return 0;
}
