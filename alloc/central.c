/* central.c: tier 2.  Per size class: sharded transfer caches holding whole
 * batches (a thread cache's refill or flush is one pointer push/pop under a
 * shard lock), over lists of spans with free objects, one per shard (one lock
 * per class), that carve objects out of spans from the page heap and give
 * spans back when all their objects are free.  A span belongs to one shard:
 * the CPU that carves it refills from it, so two CPUs do not write one span.
 * Lock order: transfer shard → class lock → page heap (never the reverse). */
#include "internal.h"

#include <string.h>

#define MAX_SHARDS 4

#define TC_BYTES ((size_t)128 << 10) /* a transfer cache holds about this many bytes */
#define TC_MAX_OBJS 4096

/* A list of spans through their next/prev links, NULL at both ends: two
 * pointers, where a sentinel would be a whole span record (central[] is
 * small enough that the classes a small process uses share a few pages). */
typedef struct span_list {
    ta_span_t *first, *last;
} span_list_t;

typedef struct central_class {
    ta_lock_t lock;
    /* spans with a free or uncarved object, by the shard (CPU)
     * the span belongs to (span->shard).  A CPU refills from its own spans, so
     * the objects (and object-state bytes) of a span stay with one CPU and two
     * CPUs do not write the same cache lines.  One with none left takes
     * another shard's span, which becomes its own, unless that span is fresh
     * (its owner may be carving it): then it carves a fresh span of its own. */
    span_list_t nonempty[MAX_SHARDS];
    uint32_t listed[MAX_SHARDS]; /* spans on each list (written under the lock, peeked without) */
    uint64_t spans;         /* spans of this class */
    uint64_t free_objects;  /* free objects inside those spans (incl. uncarved) */
#ifdef TA_HARDENED
    uint64_t rng;           /* the class's generator for shuffling fresh spans (under lock) */
#endif
} __attribute__((aligned(64))) central_class_t;

/* A transfer cache: an array of free objects, its lock and counts in one cache
 * line; the array is mapped on first use, so a shard-class pair nobody
 * touches costs no resident memory. */
typedef struct transfer {
    ta_lock_t lock;
    uint32_t n;
    bool used;          /* taken from or put into since the last decay period (under lock) */
    ta_slot_t *slots;
    uint64_t hits, misses;
    /* objects out of central to the shard's caches, and back into central
     * from them (relaxed atomics, statistics): here, on a line the shard's
     * slow paths write anyway, not on one line per class that every CPU's
     * refill and flush wrote (remote_frees/8: 8% of the time on that add) */
    uint64_t to_caches, from_caches;
} __attribute__((aligned(64))) transfer_t;
_Static_assert(sizeof(transfer_t) == 64, "a transfer cache's lock and counts share one line");

static central_class_t central[TA_MAX_CLASSES];
static transfer_t transfer[MAX_SHARDS][TA_MAX_CLASSES];
static uint32_t tc_cap[TA_MAX_CLASSES]; /* objects a transfer cache of the class may hold */
/* objects of the class another shard leaves in a transfer cache (ta_central_alloc) */
static uint32_t tc_keep[TA_MAX_CLASSES];
#define TC_KEEP_BYTES 8192
static uint32_t nshards = 1;
static uintptr_t link_key; /* secret of the span free lists' links (below) */

/* What a shard may carve in fresh spans, per decay period, while another
 * shard has a span with free objects that it could take instead
 * (span_with_objects).  A span taken from another shard still holds that
 * shard's objects, live or in its caches, and their state bytes share cache
 * lines with those of the objects taken: both CPUs then write those lines
 * for as long as the objects stay (`working_set`: a dozen spans taken when a
 * run's threads start made the whole run 1.3x slower, alloc/README.md).  A
 * shard that needs a span now and then carves its own; one that keeps
 * needing them (a thread reusing what another left fragmented) takes the
 * others' once the credit is spent, so the heap grows by at most the credit
 * per shard and period for it. */
static uint64_t fresh_credit[MAX_SHARDS]; /* (relaxed atomics: taken under different class locks) */

void ta_central_fresh_credit_set(uint64_t bytes) {
    for (uint32_t sh = 0; sh < MAX_SHARDS; sh++) __atomic_store_n(&fresh_credit[sh], bytes, __ATOMIC_RELAXED);
}

void ta_central_init(void) {
    /* the secret: the kernel's random bytes mixed with an address */
    link_key = (uintptr_t)(ta_random_seed() ^ ((uintptr_t)&link_key * 0x9e3779b97f4a7c15ull));
    nshards = ta_cfg.ncpu < MAX_SHARDS ? (uint32_t)ta_cfg.ncpu : MAX_SHARDS;
    if (nshards < 1) nshards = 1;
    ta_central_fresh_credit_set(TA_FRESH_CREDIT_BYTES);
    for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) {
        ta_lock_set_rank(&central[c].lock, TA_RANK_CLASS);
        for (uint32_t sh = 0; sh < MAX_SHARDS; sh++) ta_lock_set_rank(&transfer[sh][c].lock, TA_RANK_TRANSFER);
#ifdef TA_HARDENED
        central[c].rng = link_key ^ ((uint64_t)c * 0xd1b54a32d192ed03ull);
#endif
        if (!c || c >= ta_nclasses) continue;
        size_t cap = TC_BYTES / ta_class[c].size;
        if (cap < 2 * ta_class[c].batch) cap = 2 * ta_class[c].batch;
        tc_cap[c] = cap > TC_MAX_OBJS ? TC_MAX_OBJS : (uint32_t)cap;
        uint32_t keep = (uint32_t)(TC_KEEP_BYTES / ta_class[c].size);
        tc_keep[c] = keep < 2 * ta_class[c].batch ? keep : 2 * ta_class[c].batch;
    }
}

#ifdef TA_HARDENED
/* ---- span free lists (hardened build): links kept encoded -----------------------
 * Objects given back to their span are linked through their first word, the
 * only place the allocator writes into free objects.  The link is stored
 * XORed with a per-process secret and the object's own address (so a stray
 * write, or a pointer planted after a use-after-free, decodes to garbage),
 * and every decoded link is checked before it is followed: inside the span,
 * on an object boundary, and FREE.  A bad one is reported, not followed. */
static inline void link_set(void *obj, void *next) {
    *(uintptr_t *)obj = (uintptr_t)next ^ link_key ^ ((uintptr_t)obj >> 4);
}

TA_COLD static void bad_link(const void *obj, uintptr_t next) {
    ta_fatal("corrupted free list: the free block at %p links to %p (a write after free or an overflow?)", obj,
             (void *)next);
}

static inline void *link_get(const ta_span_t *s, uint32_t cls, const void *obj) {
    uintptr_t next = *(const uintptr_t *)obj ^ link_key ^ ((uintptr_t)obj >> 4);
    if (!next) return NULL;
    uintptr_t base = (uintptr_t)ta_span_addr(s), off = next - base;
    bool start;
    uint32_t idx = ta_object_index((uint32_t)off, cls, &start);
    if (TA_UNLIKELY(next < base || off >= (uintptr_t)ta_class[cls].objects * ta_class[cls].size || !start ||
                    idx >= ta_class[cls].objects || ta_state_get(ta_state_of((void *)next, cls)) != TA_OBJ_FREE))
        bad_link(obj, next);
    return (void *)next;
}

/* ---- shuffled fresh spans (hardened build) ------------------------------------
 * A fresh span hands out its objects in a random order: all of them are linked
 * into its free list at once, in a Fisher-Yates permutation drawn from the
 * class's generator (splitmix64, seeded from the link secret: no system call),
 * so that consecutive mallocs are not neighbours and an overflow's victim is
 * not predictable. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle_fresh(central_class_t *cc, ta_span_t *s, uint32_t cls) {
    uint32_t n = ta_class[cls].objects, size = ta_class[cls].size;
    uint16_t order[TA_STATES_MAX];
    TA_ASSERT(n <= TA_STATES_MAX);
    for (uint32_t i = 0; i < n; i++) order[i] = (uint16_t)i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(((next_random(&cc->rng) >> 32) * (uint64_t)(i + 1)) >> 32);
        uint16_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    char *base = ta_span_addr(s);
    void *head = NULL;
    for (uint32_t i = n; i-- > 0;) {
        void *obj = base + (size_t)order[i] * size;
        link_set(obj, head);
        head = obj;
    }
    s->freelist = head;
    s->carve = base + (size_t)n * size; /* nothing left to carve */
}
#endif

/* the span's object-state bytes (pageheap.c), and how many of its objects were ever carved */
static inline uint8_t *span_states(const ta_span_t *s) { return ta_info_states(ta_pagemap_info_known(s->page)); }
static inline uint32_t span_carved(const ta_span_t *s, uint32_t cls) {
    return (uint32_t)((size_t)(s->carve - (char *)ta_span_addr(s)) / ta_class[cls].size);
}

/* ---- objects given back to their span --------------------------------------------
 * The release build keeps them in the span's object-state bytes (pageheap.c),
 * not in the objects: a returned object's state is TA_OBJ_SPAN, and a refill
 * finds them by scanning the states, lowest address first.  So neither a
 * flush nor a refill touches an object's memory (a refill of objects freed in
 * random order no longer walks a chain of cache misses, and the objects come
 * out in address order), and a pointer written into a freed block is never
 * followed.  The hardened build links them into a free list through their
 * first word instead (encoded and checked, above), in a shuffled order. */
#ifndef TA_HARDENED
static inline bool has_returned(const ta_span_t *s, uint32_t cls) { return span_carved(s, cls) > s->allocated; }

static inline void put_returned(ta_span_t *s, uint32_t cls, ta_slot_t o) {
    (void)cls;
    ta_state_set(o.state, TA_OBJ_SPAN);
    /* (the slot has the state's address: where the scan starts, without the object's index) */
    if ((uintptr_t)o.state < s->scan_state) s->scan_state = (uintptr_t)o.state;
}

/* want (1 .. those given back: the caller counts them) of the span's returned
 * objects, marked FREE, written from out_end[-1] downwards, lowest first
 * (alloc_from_spans); how many were found. */
static uint32_t take_returned(ta_span_t *s, uint32_t cls, ta_slot_t *out_end, uint32_t want, uint8_t *st) {
    uint32_t carved = span_carved(s, cls), got = 0;
    TA_ASSERT(want && want <= carved - s->allocated);
    char *base = ta_span_addr(s);
    const uint32_t size = ta_class[cls].size;
    uint32_t i = s->scan_state ? (uint32_t)(s->scan_state - (uintptr_t)st) & ~7u : 0;
    /* eight states at a time: TA_OBJ_SPAN is the only state with bit 1 set */
    for (; i < carved && got < want; i += 8) {
        /* (the state array is 16-byte aligned, meta.c, and i a multiple of 8) */
        uint64_t w = __atomic_load_n((const uint64_t *)(const void *)(st + i), __ATOMIC_RELAXED);
        w &= 0x0202020202020202ull;
        /* a word with more than is wanted keeps only its lowest ones (so
         * that the loop below tests only w) and is looked at again next time */
        uint32_t room = want - got;
        bool rest = room < 8 && (uint32_t)__builtin_popcountll(w) > room; /* (8 at most in a word) */
        if (rest) {
            uint64_t past = w;
            while (room--) past &= past - 1;
            w ^= past;
        }
        while (w) {
            uint32_t k = i + (uint32_t)__builtin_ctzll(w) / 8;
            w &= w - 1;
            ta_state_set(st + k, TA_OBJ_FREE);
            *--out_end = (ta_slot_t){base + (size_t)k * size, st + k};
            got++;
        }
        if (rest) break;
    }
    s->scan_state = (uintptr_t)(st + i);
    s->allocated += got;
    return got;
}
#else
static inline bool has_returned(const ta_span_t *s, uint32_t cls) {
    (void)cls;
    return s->freelist != NULL;
}
static inline void put_returned(ta_span_t *s, uint32_t cls, ta_slot_t o) {
    (void)cls;
    link_set(o.obj, s->freelist);
    s->freelist = o.obj;
}
static uint32_t take_returned(ta_span_t *s, uint32_t cls, ta_slot_t *out_end, uint32_t want, uint8_t *st) {
    uint32_t got = 0;
    char *base = ta_span_addr(s);
    while (got < want && s->freelist) {
        bool start;
        void *obj = s->freelist;
        *--out_end = (ta_slot_t){obj, st + ta_object_index((uint32_t)((char *)obj - base), cls, &start)};
        got++;
        s->freelist = link_get(s, cls, obj);
    }
    s->allocated += got;
    return got;
}
#endif

/* A span onto (the front of) its shard's list, and off it; cc's lock held.
 * (A release build's start writes none of central[]: the classes a program
 * never uses stay untouched, no fault in the process or in a child of fork.) */
static void span_list_push(central_class_t *cc, ta_span_t *s) {
    span_list_t *l = &cc->nonempty[s->shard];
    uint32_t *n = &cc->listed[s->shard];
    s->prev = NULL;
    s->next = l->first;
    if (l->first) l->first->prev = s;
    else l->last = s;
    l->first = s;
    s->in_list = 1;
    __atomic_store_n(n, *n + 1, __ATOMIC_RELAXED);
}

static void span_list_remove(central_class_t *cc, ta_span_t *s) {
    span_list_t *l = &cc->nonempty[s->shard];
    uint32_t *n = &cc->listed[s->shard];
    if (s->prev) s->prev->next = s->next;
    else l->first = s->next;
    if (s->next) s->next->prev = s->prev;
    else l->last = s->prev;
    s->next = s->prev = NULL;
    s->in_list = 0;
    __atomic_store_n(n, *n - 1, __ATOMIC_RELAXED);
}

static bool fresh_credit_take(uint32_t shard, uint64_t bytes) {
    uint64_t c = __atomic_load_n(&fresh_credit[shard], __ATOMIC_RELAXED);
    do {
        if (c < bytes) return false;
    } while (!__atomic_compare_exchange_n(&fresh_credit[shard], &c, c - bytes, true, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return true;
}

/* A span of the class with objects to take: the shard's own; with `any`, else
 * another shard's that is not fresh, the one listed longest (coldest in its
 * owner's cache), which becomes the shard's own, unless the shard's fresh
 * credit covers a span of the class and `take` is false: then NULL, as when
 * there is none, and the caller carves a fresh span. */
static ta_span_t *span_with_objects(central_class_t *cc, uint32_t cls, uint32_t shard, bool any, bool take) {
    if (cc->nonempty[shard].first) return cc->nonempty[shard].first;
    if (!any) return NULL;
    for (uint32_t i = 1; i < nshards; i++) {
        for (ta_span_t *s = cc->nonempty[(shard + i) % nshards].last; s; s = s->prev) {
            if (s->fresh) continue; /* (a shard carves only with an empty list: one at most) */
            if (!take && fresh_credit_take(shard, (uint64_t)ta_class[cls].pages << TA_PAGE_SHIFT)) return NULL;
            span_list_remove(cc, s);
            s->shard = shard & 63u;
            span_list_push(cc, s);
            return s;
        }
    }
    return NULL;
}

/* Take up to want objects from the class's spans: the shard's own; with
 * `any`, then fresh spans from the page heap (the shard's) while its fresh
 * credit lasts, then the other shards' (not fresh), then fresh spans again. */
static uint32_t alloc_from_spans(uint32_t cls, ta_slot_t *out, uint32_t want, uint32_t shard, bool any) {
    central_class_t *cc = &central[cls];
    const uint32_t size = ta_class[cls].size;
    const size_t span_objs_bytes = (size_t)ta_class[cls].objects * size;
    uint32_t got = 0;
    bool take = false; /* (set when no fresh span is to be had: take another shard's) */
    ta_lock(&cc->lock);
    while (got < want) {
        ta_span_t *s = span_with_objects(cc, cls, shard, any, take);
        if (!s) {
            if (!any || take) break;
            ta_unlock(&cc->lock);
            s = ta_pageheap_alloc_small(cls, shard);
            ta_lock(&cc->lock);
            if (!s) {
                take = true; /* out of memory: another shard's span, if there is one */
                continue;
            }
            s->carve = ta_span_addr(s);
            s->freelist = NULL; /* (and scan_state 0) */
            s->allocated = 0;
            s->shard = shard & 63u;
            s->fresh = 1;
            cc->spans++;
            cc->free_objects += ta_class[cls].objects;
#ifdef TA_HARDENED
            shuffle_fresh(cc, s, cls);
#else
            /* pages the OS gave zeroed: the objects are zero until handed out */
            if (s->zeroed) memset(span_states(s), TA_OBJ_ZERO, ta_class[cls].objects);
#endif
            span_list_push(cc, s);
        }
        char *carve_end = (char *)ta_span_addr(s) + span_objs_bytes;
        uint8_t *st = span_states(s);
        /* This span's part of the batch, highest address first: its fresh
         * objects (above all the others), then those given back.  A refill
         * hands out the last of its batch first and stacks the rest
         * (pcache.c), so the span's objects go out lowest first, and a
         * program that grows its heap finds what it allocated in address
         * order when it walks it (an interpreter's object lists, its garbage
         * collector). */
        uint32_t need = want - got, carved = span_carved(s, cls), back = carved - s->allocated;
        uint32_t r = back < need ? back : need, c = 0;
        if (r < need && s->carve < carve_end) {
            c = ta_class[cls].objects - carved;
            if (c > need - r) c = need - r;
            char *p = s->carve;
            uint8_t *sk = st + carved;
            ta_slot_t *o = out + got + c;
            for (uint32_t j = 0; j < c; j++, p += size) *--o = (ta_slot_t){p, sk + j};
            s->carve = p;
            s->allocated += c;
        }
        if (r) {
            uint32_t f = take_returned(s, cls, out + got + c + r, r, st);
            TA_ASSERT(f == r);
            if (TA_UNLIKELY(f < r)) /* (states that disagree with the counts: close the gap) */
                memmove(out + got + c, out + got + c + (r - f), f * sizeof(ta_slot_t));
            r = f;
        }
        got += c + r;
        if (!has_returned(s, cls) && s->carve >= carve_end) span_list_remove(cc, s);
    }
    cc->free_objects -= got;
    TA_ASSERT(cc->free_objects <= cc->spans * ta_class[cls].objects);
    ta_unlock(&cc->lock);
    return got;
}

/* The lines free_to_spans writes for o: its span record and its state byte;
 * asked for FREE_AHEAD objects ahead. */
#define FREE_AHEAD 8
static inline void prefetch_return(const ta_slot_t *o) {
    ta_prefetch_write(ta_pagemap_span_known((uintptr_t)o->obj >> TA_PAGE_SHIFT));
    ta_prefetch_write(o->state);
}

/* Return n objects to their spans; spans left with nothing handed out go
 * back to the page heap. */
static void free_to_spans(uint32_t cls, const ta_slot_t *in, uint32_t n) {
    central_class_t *cc = &central[cls];
    ta_span_t *empty = NULL;
    uint64_t back = 0; /* objects back in spans still in use (cc->free_objects, added once) */
    /* A batch freed in random order (a structure torn down) names spans and
     * state bytes all over the heap, each line a cache miss, one after the
     * other in this loop: they are asked for FREE_AHEAD objects ahead, so
     * that the misses overlap (alloc/README.md: teardown). */
    for (uint32_t i = 0; i < n && i < FREE_AHEAD; i++) prefetch_return(&in[i]);
    ta_lock(&cc->lock);
    for (uint32_t i = 0; i < n; i++) {
        if (i + FREE_AHEAD < n) prefetch_return(&in[i + FREE_AHEAD]);
        ta_span_t *s = ta_pagemap_span_known((uintptr_t)in[i].obj >> TA_PAGE_SHIFT);
        TA_ASSERT(s && s->cls == cls && s->state == TA_SPAN_INUSE && s->allocated > 0);
        TA_ASSERT(in[i].state == ta_state_of(in[i].obj, cls));
        TA_ASSERT(ta_obj_cached_state(ta_state_get(in[i].state))); /* no live object goes back to its span */
        put_returned(s, cls, in[i]);
        if (s->fresh) s->fresh = 0; /* (a test first: a bit-field's store is a read, a mask and a write) */
        if (--s->allocated == 0) {
            if (s->in_list) span_list_remove(cc, s);
            s->next = empty;
            empty = s;
            cc->spans--;
            cc->free_objects -= ta_class[cls].objects - 1; /* the span's, but for this one */
        } else {
            back++;
            if (!s->in_list) span_list_push(cc, s);
        }
    }
    cc->free_objects += back;
    ta_unlock(&cc->lock);
    while (empty) {
        ta_span_t *s = empty;
        empty = s->next;
        s->next = NULL;
        ta_pageheap_free(s);
    }
}

/* Up to want objects from the top of a shard's transfer cache, leaving it
 * keep; an empty own shard counts a miss. */
static uint32_t transfer_take(uint32_t sh, uint32_t cls, ta_slot_t *out, uint32_t want, bool own, uint32_t keep) {
    transfer_t *t = &transfer[sh][cls];
    if (__atomic_load_n(&t->n, __ATOMIC_RELAXED) <= keep) { /* no lock needed to see it */
        if (own) __atomic_add_fetch(&t->misses, 1, __ATOMIC_RELAXED);
        return 0;
    }
    ta_lock(&t->lock);
    uint32_t n = t->n, k = n <= keep ? 0 : n - keep < want ? n - keep : want;
    __atomic_store_n(&t->n, n - k, __ATOMIC_RELAXED); /* read unlocked above */
    memcpy(out, t->slots + (n - k), k * sizeof(ta_slot_t));
    if (k) t->hits++;
    t->used = true;
    ta_unlock(&t->lock);
    return k;
}

void ta_central_touch(uint32_t cls, uint32_t shard) {
    shard %= nshards;
    ta_touch_for_write(&transfer[shard][cls].n);
    ta_touch_for_write(&central[cls].listed[shard]);
}

uint32_t ta_central_alloc(uint32_t cls, ta_slot_t *out, uint32_t want, uint32_t shard, bool others) {
    shard %= nshards;
    /* own transfer cache, own spans, then (others) the other shards'
     * transfer caches, then another shard's span, then a fresh one.  Of
     * another shard's transfer cache, only what lies above tc_keep (two
     * batches, at most TC_KEEP_BYTES): the objects a cache flushes are the
     * ones its shard takes back when it next runs short, and a cache of
     * another shard that took them would share their cache lines, and their
     * state bytes' lines, with it (alloc/README.md: `working_set` 10.2 -> 6.6
     * ns).  Only a CPU cache takes them at all (others): its foreign objects
     * go home through its outbox, where a thread cache would keep them for
     * good, and two threads that took each other's wrote the same state-byte
     * lines on every malloc and free from then on (`batch_mt` on 2 threads,
     * thread caches: 2.2x slower, alloc/README.md).  A pipeline's producer
     * has no need of them: what its consumer frees comes home to the
     * producer's own transfer cache (ta_central_free). */
    uint32_t got = transfer_take(shard, cls, out, want, true, 0);
    if (got < want && __atomic_load_n(&central[cls].listed[shard], __ATOMIC_RELAXED))
        got += alloc_from_spans(cls, out + got, want - got, shard, false);
    for (uint32_t i = 1; others && i < nshards && got < want; i++)
        got += transfer_take((shard + i) % nshards, cls, out + got, want - got, false, tc_keep[cls]);
    if (got < want) got += alloc_from_spans(cls, out + got, want - got, shard, true);
    __atomic_add_fetch(&transfer[shard][cls].to_caches, got, __ATOMIC_RELAXED);
    return got;
}

static void free_to_transfer(uint32_t cls, const ta_slot_t *in, uint32_t n, uint32_t shard);

/* Objects go home: each run of objects of one shard's spans (the shard is in
 * the state byte's address, meta.c) into that shard's transfer cache, where
 * that shard's caches refill first, whichever cache frees them. */
void ta_central_free(uint32_t cls, const ta_slot_t *in, uint32_t n) {
    while (n) {
        uint32_t shard = ta_states_shard(in[0].state), k = 1;
        while (k < n && ta_states_shard(in[k].state) == shard) k++;
        free_to_transfer(cls, in, k, shard);
        in += k;
        n -= k;
    }
}

static void free_to_transfer(uint32_t cls, const ta_slot_t *in, uint32_t n, uint32_t shard) {
    transfer_t *t = &transfer[shard % nshards][cls];
    __atomic_add_fetch(&t->from_caches, n, __ATOMIC_RELAXED);
    if (TA_UNLIKELY(!__atomic_load_n(&t->slots, __ATOMIC_ACQUIRE))) {
        ta_slot_t *slots = ta_meta_alloc((size_t)tc_cap[cls] * sizeof(ta_slot_t));
        ta_lock(&t->lock);
        if (!t->slots) __atomic_store_n(&t->slots, slots, __ATOMIC_RELEASE);
        ta_unlock(&t->lock);
        /* (a racing second array is simply not used) */
    }
    uint32_t k = 0;
    if (t->slots) {
        ta_lock(&t->lock);
        k = tc_cap[cls] - t->n < n ? tc_cap[cls] - t->n : n;
        memcpy(t->slots + t->n, in, k * sizeof(ta_slot_t));
        __atomic_store_n(&t->n, t->n + k, __ATOMIC_RELAXED); /* read unlocked by the others */
        t->used = true;
        TA_ASSERT(t->n <= tc_cap[cls]);
        ta_unlock(&t->lock);
    }
    if (k < n) free_to_spans(cls, in + k, n - k);
}

void ta_central_free_spans(uint32_t cls, const ta_slot_t *in, uint32_t n) {
    __atomic_add_fetch(&transfer[0][cls].from_caches, n, __ATOMIC_RELAXED); /* (counted with shard 0's) */
    free_to_spans(cls, in, n);
}

/* Move a transfer cache's objects back to their spans: with `decay`, half of
 * them and 256 at most if the cache was used in the last decay period, else
 * all of them; without, all.  256 at a time, the lock let go in between. */
static void transfer_release(uint32_t sh, uint32_t c, bool decay) {
    transfer_t *t = &transfer[sh][c];
    ta_slot_t buf[256];
    if (!__atomic_load_n(&t->n, __ATOMIC_RELAXED)) return;
    ta_lock(&t->lock);
    bool half = decay && t->used;
    t->used = false;
    ta_unlock(&t->lock);
    for (;;) {
        ta_lock(&t->lock);
        uint32_t n = t->n, k = half ? (n + 1) / 2 : n;
        if (k > 256) k = 256;
        __atomic_store_n(&t->n, n - k, __ATOMIC_RELAXED);
        memcpy(buf, t->slots + (n - k), k * sizeof(ta_slot_t));
        ta_unlock(&t->lock);
        if (!k) return;
        free_to_spans(c, buf, k);
        if (half) return;
    }
}

/* Every decay period, each transfer cache gives back to the spans half of
 * what it holds if it was used in the period, all of it if not: a cache in
 * use refills, one that is not drains away and its spans can go back to the
 * page heap (and from there to the OS).  Then the page heap's own decay. */
void ta_central_tick(uint64_t now) {
    static uint64_t last_ms;
    if (ta_period_claim(&last_ms, now, ta_cfg.decay_ms)) {
        ta_central_fresh_credit_set(TA_FRESH_CREDIT_BYTES);
        for (uint32_t sh = 0; sh < nshards; sh++)
            for (uint32_t c = 1; c < ta_nclasses; c++) transfer_release(sh, c, true);
    }
    ta_pageheap_tick(now);
}

void ta_central_drain(void) {
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 1; c < ta_nclasses; c++) transfer_release(sh, c, false);
}

uint32_t ta_central_shards(void) { return nshards; }

uint32_t ta_central_keep(uint32_t cls) { return cls && cls < ta_nclasses ? tc_keep[cls] : 0; }

uint32_t ta_central_listed(uint32_t cls, uint32_t shard) {
    if (!cls || cls >= ta_nclasses) return 0;
    return __atomic_load_n(&central[cls].listed[shard % nshards], __ATOMIC_RELAXED);
}

void ta_central_stats(uint32_t cls, ta_central_stats_t *out) {
    if (!cls || cls >= ta_nclasses) {
        memset(out, 0, sizeof *out);
        return;
    }
    for (uint32_t sh = 0; sh < nshards; sh++) ta_lock(&transfer[sh][cls].lock);
    ta_lock(&central[cls].lock);
    ta_central_stats_locked(cls, out);
    ta_unlock(&central[cls].lock);
    for (uint32_t sh = 0; sh < nshards; sh++) ta_unlock(&transfer[sh][cls].lock);
}

/* Caller holds every central lock (ta_central_lock_all). */
void ta_central_stats_locked(uint32_t cls, ta_central_stats_t *out) {
    memset(out, 0, sizeof *out);
    if (!cls || cls >= ta_nclasses) return;
    for (uint32_t sh = 0; sh < nshards; sh++) {
        transfer_t *t = &transfer[sh][cls];
        out->transfer_bytes += (uint64_t)t->n * ta_class[cls].size;
        out->hits += t->hits;
        out->misses += t->misses;
        out->to_caches += __atomic_load_n(&t->to_caches, __ATOMIC_RELAXED);
        out->from_caches += __atomic_load_n(&t->from_caches, __ATOMIC_RELAXED);
    }
    out->span_free_bytes = central[cls].free_objects * ta_class[cls].size;
}

/* (the classes there are: no other lock is ever taken, and each one more is
 * a cache line written, on a page fork may have to copy) */
void ta_central_lock_all(bool fork) {
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 0; c < ta_nclasses; c++) ta_lock_or_drain(&transfer[sh][c].lock, fork);
    for (uint32_t c = 0; c < ta_nclasses; c++) ta_lock_or_drain(&central[c].lock, fork);
}

void ta_central_unlock_all(bool child) {
    for (uint32_t c = 0; c < ta_nclasses; c++) ta_lock_after_fork(&central[c].lock, child);
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 0; c < ta_nclasses; c++) ta_lock_after_fork(&transfer[sh][c].lock, child);
}
