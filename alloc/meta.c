/* meta.c: memory for the allocator's own records (spans, thread caches),
 * bump-allocated from OS chunks and never given back: metadata is small and
 * span records are recycled through their own free list. */
#include "internal.h"

#include <string.h>

#define META_CHUNK ((size_t)1 << 20)

static ta_lock_t meta_lock = TA_LOCK_INIT;
static char *meta_cur, *meta_end;
static uint64_t meta_total;
static ta_span_t *span_free; /* recycled span records, linked through next */

void *ta_meta_alloc(size_t size) {
    size = (size + 63) & ~(size_t)63; /* cache-line aligned: no false sharing */
    ta_lock(&meta_lock);
    if ((size_t)(meta_end - meta_cur) < size) {
        size_t chunk = size > META_CHUNK ? (size + META_CHUNK - 1) & ~(META_CHUNK - 1) : META_CHUNK;
        char *p = ta_os_map(chunk, 4096);
        if (!p) {
            ta_unlock(&meta_lock);
            ta_fatal("out of memory for metadata (%zu bytes)", chunk);
        }
        meta_cur = p;
        meta_end = p + chunk;
        meta_total += chunk;
    }
    void *r = meta_cur;
    meta_cur += size;
    ta_unlock(&meta_lock);
    return r; /* fresh from mmap: already zero */
}

uint64_t ta_meta_bytes(void) { return __atomic_load_n(&meta_total, __ATOMIC_RELAXED); }

ta_span_t *ta_span_new(void) {
    ta_lock(&meta_lock);
    ta_span_t *s = span_free;
    if (s) span_free = s->next;
    ta_unlock(&meta_lock);
    if (!s) {
        /* carve a page of span records at a time */
        _Static_assert(sizeof(ta_span_t) <= 56, "span records stay small: one per span, for ever");
        enum { N = 4096 / sizeof(ta_span_t) };
        ta_span_t *block = ta_meta_alloc(N * sizeof(ta_span_t));
        ta_lock(&meta_lock);
        for (int i = 1; i < N; i++) {
            block[i].next = span_free;
            span_free = &block[i];
        }
        ta_unlock(&meta_lock);
        s = &block[0];
    }
    memset(s, 0, sizeof *s);
    return s;
}

void ta_span_delete(ta_span_t *s) {
    s->state = TA_SPAN_FREE;
    s->npages = 0; /* a stale pagemap entry to this record never matches a block */
    ta_lock(&meta_lock);
    s->next = span_free;
    span_free = s;
    ta_unlock(&meta_lock);
}

void ta_meta_lock_all(void) { ta_lock(&meta_lock); }
void ta_meta_unlock_all(bool child) {
    ta_lock_after_fork(&meta_lock, child);
}
