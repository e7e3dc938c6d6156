/* meta.c: memory for the allocator's own records (spans, thread caches),
 * bump-allocated from OS chunks (accounted memory: when the OS refuses one,
 * the allocation returns NULL and its caller fails cleanly) and never unmapped (a stale pagemap entry may
 * still point at a span record, so its memory must stay readable).  Span
 * records come in page-sized slabs and are recycled through a free list; on
 * malloc_trim, slabs whose records are all free are given back to the OS
 * (they read as zero: a stale lookup still sees "no span there"). */
#include "internal.h"

#include <string.h>

#define META_CHUNK ((size_t)1 << 20)

static ta_lock_t meta_lock = TA_LOCK_INIT(TA_RANK_META);
static char *meta_cur, *meta_end;
static uint64_t meta_total;
static ta_span_t *span_free; /* recycled span records, linked through next */

#define SLAB 4096
#define SLAB_RECORDS (SLAB / sizeof(ta_span_t))
static uint64_t slabs_total;      /* slabs of span records ever made */
static uintptr_t *slabs_released; /* slabs given back to the OS, to be reused first */
static size_t slabs_released_n, slabs_released_cap;

/* Every mapping counted in meta_total, so that the statistics can tell how
 * much of it is resident (ta_meta_resident): a cache's slab is mapped whole
 * and touched only where classes hold slots, a chunk only up to its cursor.
 * The table is metadata itself, carved from the chunks (the first from the
 * first chunk's first page, which the first record touches anyway: a
 * process start writes no page more); when it is full, one twice its size
 * replaces it (the old one stays in its chunk: 16 bytes a mapping). */
typedef struct meta_region {
    uintptr_t addr;
    size_t len;
} meta_region_t;
static meta_region_t *regions;
static size_t nregions, regions_cap;

static void *meta_alloc_locked(size_t size, size_t align);

/* (meta_lock held) a new mapping of metadata; false when no room is left
 * to note it (the caller gives the mapping back) */
static bool region_add(void *p, size_t len) {
    if (nregions == regions_cap) {
        size_t ncap = regions_cap ? 2 * regions_cap : 32;
        /* (may map a chunk, noted first, by this function: then the table
         * it grew is the one copied here) */
        meta_region_t *n = meta_alloc_locked(ncap * sizeof *n, 64);
        if (!n) return false;
        if (nregions) memcpy(n, regions, nregions * sizeof *n);
        regions = n;
        regions_cap = ncap;
    }
    regions[nregions++] = (meta_region_t){(uintptr_t)p, len};
    return true;
}

/* (meta_lock held) the mapping at p is given back */
static void region_remove(void *p) {
    for (size_t i = 0; i < nregions; i++)
        if (regions[i].addr == (uintptr_t)p) {
            regions[i] = regions[--nregions];
            return;
        }
}

/* One region at a time under the lock, each looked at after it (a process
 * with 2 000 threads has as many slabs: the lock is not held across as many
 * system calls).  Regions are appended, and removed only when the stack of
 * released record slabs moves: a look that races with that may miss or
 * count twice one region, a statistics' error that the next snapshot does
 * not have. */
uint64_t ta_meta_resident(void) {
    uint64_t r = 0;
    for (size_t i = 0;; i++) {
        ta_lock(&meta_lock);
        if (i >= nregions) {
            ta_unlock(&meta_lock);
            return r;
        }
        meta_region_t g = regions[i];
        ta_unlock(&meta_lock);
        r += ta_os_resident((void *)g.addr, g.len);
    }
}

/* NULL when the OS refuses a chunk: the caller fails its allocation (the
 * rest of the current chunk stays for smaller requests). */
static void *meta_alloc_locked(size_t size, size_t align) {
    ta_touch_for_write(&meta_cur); /* (written below in any case) */
#define META_ALIGNED(a) ((char *)(((uintptr_t)(a) + align - 1) & ~(uintptr_t)(align - 1)))
    char *cur = META_ALIGNED(meta_cur);
    if (cur > meta_end) cur = meta_end;
    if ((size_t)(meta_end - cur) < size) {
        size_t need = size + align;
        if (nregions == regions_cap) /* the table of mappings may grow into the chunk */
            need += (regions_cap ? 2 * regions_cap : 32) * sizeof(meta_region_t) + 64;
        size_t chunk = need > META_CHUNK ? (need + META_CHUNK - 1) & ~(META_CHUNK - 1) : META_CHUNK;
        if (need < size || chunk < need) return NULL;
        char *p = ta_os_map(chunk, SLAB);
        if (!p) return NULL;
        meta_cur = p;
        meta_end = p + chunk;
        meta_total += chunk;
        /* noted before the request is carved: the table may grow into the
         * new chunk (a few hundred bytes of a chunk of at least a MiB, made
         * bigger than the request when the request is big) */
        if (!region_add(p, chunk)) return NULL; /* (not reached: the chunk has room for the table) */
        cur = META_ALIGNED(meta_cur);
        if ((size_t)(meta_end - cur) < size) return NULL;
    }
#undef META_ALIGNED
    meta_cur = cur + size;
    return cur; /* fresh from mmap: already zero */
}

void *ta_meta_alloc(size_t size) {
    if (size > ((size_t)1 << 40)) return NULL;
    size = (size + 63) & ~(size_t)63; /* cache-line aligned: no false sharing */
    ta_lock(&meta_lock);
    void *r = meta_alloc_locked(size, 64);
    ta_unlock(&meta_lock);
    return r;
}

void *ta_meta_map(size_t size, size_t align) {
    /* under the lock: a snapshot (which holds it) sees the mapping and its
     * count together or neither */
    ta_lock(&meta_lock);
    void *p = ta_os_map(size, align);
    if (p && !region_add(p, size)) {
        ta_os_unmap(p, size);
        p = NULL;
    }
    if (p) meta_total += size;
    ta_unlock(&meta_lock);
    return p;
}

uint64_t ta_meta_bytes(void) { return __atomic_load_n(&meta_total, __ATOMIC_RELAXED); }

ta_span_t *ta_span_new(void) {
    _Static_assert(sizeof(ta_span_t) <= 56, "span records stay small: one per span, for ever");
    ta_lock(&meta_lock);
    ta_span_t *s = span_free;
    if (s) {
        span_free = s->next;
    } else {
        /* a slab of records: a released one first (its page faults back in
         * as zeros), else a new one */
        ta_span_t *slab;
        if (slabs_released_n) {
            slab = (ta_span_t *)slabs_released[--slabs_released_n];
        } else {
            slab = meta_alloc_locked(SLAB, SLAB);
            if (!slab) {
                ta_unlock(&meta_lock);
                return NULL;
            }
            slabs_total++;
        }
        for (size_t i = 1; i < SLAB_RECORDS; i++) {
            slab[i].next = span_free;
            span_free = &slab[i];
        }
        s = &slab[0];
    }
    ta_unlock(&meta_lock);
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

/* malloc_trim: give back the slabs whose records are all free.  Counts free
 * records per slab in a scratch table mapped for the occasion (no malloc). */
size_t ta_meta_trim(void) {
    size_t released = 0;
    ta_lock(&meta_lock);
    size_t cap = 64;
    while (cap < 2 * slabs_total) cap *= 2;
    struct slot { uintptr_t slab; size_t free; } *tab = NULL;
    if (slabs_total) tab = ta_os_map(cap * sizeof *tab, SLAB);
    if (!tab) goto out;
    for (ta_span_t *r = span_free; r; r = r->next) {
        uintptr_t slab = (uintptr_t)r & ~(uintptr_t)(SLAB - 1);
        size_t h = (size_t)((slab >> 12) * 0x9e3779b97f4a7c15ull) & (cap - 1);
        while (tab[h].slab && tab[h].slab != slab) h = (h + 1) & (cap - 1);
        tab[h].slab = slab;
        tab[h].free++;
    }
    size_t nfull = 0;
    for (size_t i = 0; i < cap; i++) nfull += tab[i].free == SLAB_RECORDS;
    if (nfull && slabs_released_n + nfull > slabs_released_cap) {
        /* a bigger stack for the released slabs */
        size_t ncap = slabs_released_cap ? 2 * slabs_released_cap : 512;
        while (ncap < slabs_released_n + nfull) ncap *= 2;
        uintptr_t *n = ta_os_map(ncap * sizeof *n, SLAB);
        if (n && !region_add(n, ncap * sizeof *n)) {
            ta_os_unmap(n, ncap * sizeof *n);
            n = NULL;
        }
        if (!n) nfull = 0;
        else {
            if (slabs_released_n) memcpy(n, slabs_released, slabs_released_n * sizeof *n);
            if (slabs_released) {
                region_remove(slabs_released);
                ta_os_unmap(slabs_released, slabs_released_cap * sizeof *n);
                meta_total -= slabs_released_cap * sizeof *n;
            }
            slabs_released = n;
            slabs_released_cap = ncap;
            meta_total += ncap * sizeof *n; /* metadata too: the stats add up */
        }
    }
    if (nfull) {
        /* unlink the records of full slabs, then give the slabs back */
        ta_span_t **link = &span_free;
        while (*link) {
            uintptr_t slab = (uintptr_t)*link & ~(uintptr_t)(SLAB - 1);
            size_t h = (size_t)((slab >> 12) * 0x9e3779b97f4a7c15ull) & (cap - 1);
            while (tab[h].slab != slab) h = (h + 1) & (cap - 1);
            if (tab[h].free == SLAB_RECORDS)
                *link = (*link)->next;
            else
                link = &(*link)->next;
        }
        for (size_t i = 0; i < cap; i++)
            if (tab[i].free == SLAB_RECORDS) {
                ta_os_release((void *)tab[i].slab, SLAB);
                slabs_released[slabs_released_n++] = tab[i].slab;
                released += SLAB;
            }
    }
    ta_os_unmap(tab, cap * sizeof *tab);
out:
    ta_unlock(&meta_lock);
    return released;
}

/* Object-state arrays of small spans (pageheap.c): one byte per object, at
 * most TA_STATES_MAX bytes.  Packed densely, STATE_GRAIN bytes at a time, so
 * that the state bytes of the spans a program uses fill few cache lines: free()
 * reads one and malloc writes one, and a span of 8 objects in a line of its
 * own made a line per 8 blocks (with 64-byte lines, a program replacing
 * random blocks of up to 1 KiB missed L1 on 60% of its frees' state loads,
 * cachegrind; 31% packed).  Packed per central shard: the arrays of spans that
 * belong to different shards (CPUs, or groups of threads) lie in different
 * 4 KiB pages, so they never share a line that two CPUs write (a span that
 * another shard takes over keeps its array where it was).  A page's address
 * says its shard (TA_STATES_SHARD_SHIFT, internal.h): pages are mapped four
 * at a time, 16 KiB aligned, the k-th for shard k, and the other shards'
 * pages wait as spares (untouched, so not resident).  Arrays are recycled
 * through a free list per shard and
 * size; never unmapped: a stale pagemap word may still point at one. */
#define STATE_GRAIN 16
#define STATE_BUCKETS (TA_STATES_MAX / STATE_GRAIN)
#define STATE_SHARDS 4 /* shards 0..3 (central's MAX_SHARDS), one page of each quad */
static void *states_free[STATE_SHARDS][STATE_BUCKETS + 1];
_Static_assert(SLAB == (size_t)1 << TA_STATES_SHARD_SHIFT && STATE_SHARDS == (TA_STATES_SHARD_MASK >> TA_STATES_SHARD_SHIFT) + 1,
               "a states page's address says its shard");
static char *states_cur[STATE_SHARDS], *states_end[STATE_SHARDS]; /* the shard's page being carved */
static char *states_spare[STATE_SHARDS];                            /* a page for shard k, unused yet */

uint8_t *ta_meta_states_new(size_t n, uint32_t shard) {
    size_t b = (n + STATE_GRAIN - 1) / STATE_GRAIN, bytes = b * STATE_GRAIN;
    if (!b || b > STATE_BUCKETS) return NULL;
    shard &= STATE_SHARDS - 1; /* (shards are below central's MAX_SHARDS, 4) */
    ta_lock(&meta_lock);
    char *p = states_free[shard][b];
    if (p) {
        states_free[shard][b] = *(void **)p;
    } else {
        if ((size_t)(states_end[shard] - states_cur[shard]) < bytes) {
            /* a new page (the old one's tail, under TA_STATES_MAX bytes, stays unused) */
            char *page = states_spare[shard];
            states_spare[shard] = NULL;
            if (!page) {
                char *quad = meta_alloc_locked(STATE_SHARDS * SLAB, STATE_SHARDS * SLAB);
                if (!quad) {
                    ta_unlock(&meta_lock);
                    return NULL;
                }
                /* (a spare already there stays; this one is then never used) */
                for (uint32_t k = 0; k < STATE_SHARDS; k++)
                    if (k != shard && !states_spare[k]) states_spare[k] = quad + k * SLAB;
                page = quad + shard * SLAB;
            }
            states_cur[shard] = page;
            states_end[shard] = page + SLAB;
        }
        p = states_cur[shard];
        states_cur[shard] += bytes;
    }
    ta_unlock(&meta_lock);
    memset(p, 0, bytes);
    return (uint8_t *)p;
}

void ta_meta_states_delete(uint8_t *p, size_t n) {
    size_t b = (n + STATE_GRAIN - 1) / STATE_GRAIN;
    uint32_t shard = ta_states_shard(p); /* its page's */
    ta_lock(&meta_lock);
    *(void **)p = states_free[shard][b];
    states_free[shard][b] = p;
    ta_unlock(&meta_lock);
}

void ta_meta_lock_all(bool fork) { ta_lock_or_drain(&meta_lock, fork); }
void ta_meta_unlock_all(bool child) {
    ta_lock_after_fork(&meta_lock, child);
}
