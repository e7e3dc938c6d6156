/* central.c: tier 2.  Per size class: sharded transfer caches holding whole
 * batches (a thread cache's refill or flush is one pointer push/pop under a
 * shard lock), over a central free list of spans with free objects (one lock
 * per class) that carves objects out of spans from the page heap and gives
 * spans back when all their objects are free.
 * Lock order: transfer shard → class lock → page heap (never the reverse). */
#include "internal.h"

#include <string.h>

#define TC_SLOTS 64              /* batches a shard may hold, at most */
#define TC_BYTES ((size_t)128 << 10) /* and about this many bytes */
#define MAX_SHARDS 4

typedef struct central_class {
    ta_lock_t lock;
    ta_span_t nonempty;     /* sentinel: spans with a free or uncarved object */
    uint64_t spans;         /* spans of this class */
    uint64_t free_objects;  /* free objects inside those spans (incl. uncarved) */
    uint64_t to_caches, from_caches; /* objects out of / back into central (relaxed atomics, stats) */
} __attribute__((aligned(64))) central_class_t;

/* A transfer cache's lock and counts, one cache line; its slots live apart
 * (transfer_slots), so that taking every lock at fork touches 64 bytes a
 * cache, not the slot arrays. */
typedef struct transfer {
    ta_lock_t lock;
    uint32_t n;
    uint64_t hits, misses;
} __attribute__((aligned(64))) transfer_t;

static central_class_t central[TA_MAX_CLASSES];
/* Zero-initialised (a zero pthread mutex is an unlocked one) and written only
 * when used: a shard-class pair nobody touches costs no resident memory. */
static transfer_t transfer[MAX_SHARDS][TA_MAX_CLASSES];
/* heads of chains of exactly ta_class[cls].batch objects */
static void *transfer_slots[MAX_SHARDS][TA_MAX_CLASSES][TC_SLOTS];
static uint32_t tc_cap[TA_MAX_CLASSES]; /* batches a transfer cache of the class may hold */

static inline void **slots_of(const transfer_t *t) {
    return transfer_slots[0][0] + (t - &transfer[0][0]) * TC_SLOTS;
}
static uint32_t nshards = 1;

void ta_central_init(void) {
    nshards = ta_cfg.ncpu < MAX_SHARDS ? (uint32_t)ta_cfg.ncpu : MAX_SHARDS;
    if (nshards < 1) nshards = 1;
    for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) {
        central[c].nonempty.next = central[c].nonempty.prev = &central[c].nonempty;
        size_t bytes = c < ta_nclasses ? (size_t)ta_class[c].batch * ta_class[c].size : 0;
        uint32_t cap = bytes ? (uint32_t)(TC_BYTES / bytes) : 0;
        if (c && c < ta_nclasses && cap < 2) cap = 2;
        tc_cap[c] = cap > TC_SLOTS ? TC_SLOTS : cap;
    }
}


static void span_list_push(central_class_t *cc, ta_span_t *s) {
    s->next = cc->nonempty.next;
    s->prev = &cc->nonempty;
    cc->nonempty.next->prev = s;
    cc->nonempty.next = s;
    s->in_list = 1;
}

static void span_list_remove(ta_span_t *s) {
    s->prev->next = s->next;
    s->next->prev = s->prev;
    s->next = s->prev = NULL;
    s->in_list = 0;
}

/* Take up to want objects from the class's spans, getting spans from the page
 * heap as needed. */
static uint32_t alloc_from_spans(uint32_t cls, uint32_t want, void **head) {
    central_class_t *cc = &central[cls];
    const uint32_t size = ta_class[cls].size;
    const size_t span_objs_bytes = (size_t)ta_class[cls].objects * size;
    void *chain = NULL;
    uint32_t got = 0;
    ta_lock(&cc->lock);
    while (got < want) {
        ta_span_t *s = cc->nonempty.next;
        if (s == &cc->nonempty) {
            ta_unlock(&cc->lock);
            s = ta_pageheap_alloc(ta_class[cls].pages, 1, cls);
            ta_lock(&cc->lock);
            if (!s) break;
            s->carve = ta_span_addr(s);
            s->freelist = NULL;
            s->allocated = 0;
            cc->spans++;
            cc->free_objects += ta_class[cls].objects;
            span_list_push(cc, s);
        }
        char *carve_end = (char *)ta_span_addr(s) + span_objs_bytes;
        while (got < want) {
            void *obj;
            if (s->freelist) {
                obj = s->freelist;
                s->freelist = *(void **)obj;
            } else if (s->carve < carve_end) {
                obj = s->carve;
                s->carve += size;
            } else {
                break;
            }
            *(void **)obj = chain;
            chain = obj;
            got++;
            s->allocated++;
        }
        if (!s->freelist && s->carve >= carve_end) span_list_remove(s);
    }
    cc->free_objects -= got;
    ta_unlock(&cc->lock);
    *head = chain;
    return got;
}

/* Return n chained objects to their spans; spans left with nothing handed out
 * go back to the page heap. */
static void free_to_spans(uint32_t cls, void *head, uint32_t n) {
    central_class_t *cc = &central[cls];
    ta_span_t *empty = NULL;
    ta_lock(&cc->lock);
    for (uint32_t i = 0; i < n && head; i++) {
        void *obj = head;
        head = *(void **)obj;
        ta_span_t *s = ta_pagemap_span((uintptr_t)obj >> TA_PAGE_SHIFT);
        TA_ASSERT(s && s->cls == cls && s->allocated > 0);
        *(void **)obj = s->freelist;
        s->freelist = obj;
        s->allocated--;
        cc->free_objects++;
        if (s->allocated == 0) {
            if (s->in_list) span_list_remove(s);
            s->next = empty;
            empty = s;
            cc->spans--;
            cc->free_objects -= ta_class[cls].objects;
        } else if (!s->in_list) {
            span_list_push(cc, s);
        }
    }
    ta_unlock(&cc->lock);
    while (empty) {
        ta_span_t *s = empty;
        empty = s->next;
        s->next = NULL;
        ta_pageheap_free(s);
    }
}

uint32_t ta_central_alloc(uint32_t cls, uint32_t want, void **head, uint32_t shard) {
    const uint32_t batch = ta_class[cls].batch;
    if (want > 1 && want <= batch) {
        /* own shard first, then the others: a thread that only frees must not
         * park batches that a thread that only allocates never sees */
        for (uint32_t i = 0; i < nshards; i++) {
            transfer_t *t = &transfer[(shard + i) % nshards][cls];
            if (!__atomic_load_n(&t->n, __ATOMIC_RELAXED)) { /* empty: no lock needed to see it */
                if (!i) __atomic_add_fetch(&t->misses, 1, __ATOMIC_RELAXED);
                continue;
            }
            ta_lock(&t->lock);
            if (t->n) {
                void *chain = slots_of(t)[--t->n];
                t->hits++;
                ta_unlock(&t->lock);
                if (want < batch) {
                    /* a cache still ramping up wants part of a batch: the rest
                     * goes back to its spans rather than sit here unused */
                    void *last = chain;
                    for (uint32_t k = 1; k < want; k++) last = *(void **)last;
                    void *rest = *(void **)last;
                    *(void **)last = NULL;
                    free_to_spans(cls, rest, batch - want);
                }
                *head = chain;
                __atomic_add_fetch(&central[cls].to_caches, want, __ATOMIC_RELAXED);
                return want;
            }
            if (!i) __atomic_add_fetch(&t->misses, 1, __ATOMIC_RELAXED);
            ta_unlock(&t->lock);
        }
    }
    uint32_t got = alloc_from_spans(cls, want, head);
    __atomic_add_fetch(&central[cls].to_caches, got, __ATOMIC_RELAXED);
    return got;
}

void ta_central_free(uint32_t cls, void *head, uint32_t n, uint32_t shard) {
    transfer_t *t = &transfer[shard % nshards][cls];
    __atomic_add_fetch(&central[cls].from_caches, n, __ATOMIC_RELAXED);
    if (n == ta_class[cls].batch) {
        ta_lock(&t->lock);
        if (t->n < tc_cap[cls]) {
            slots_of(t)[t->n++] = head;
            ta_unlock(&t->lock);
            return;
        }
        ta_unlock(&t->lock);
    }
    free_to_spans(cls, head, n);
}

void ta_central_free_spans(uint32_t cls, void *head, uint32_t n) {
    __atomic_add_fetch(&central[cls].from_caches, n, __ATOMIC_RELAXED);
    free_to_spans(cls, head, n);
}

/* Every decay period, move half of what each transfer cache holds back to the
 * spans: a cache that is in use refills, one that is not drains away and its
 * spans can go back to the page heap (and from there to the OS). */
void ta_central_decay(void) {
    static uint64_t last_ms;
    uint64_t now = ta_os_now_ms(), last = __atomic_load_n(&last_ms, __ATOMIC_RELAXED);
    if (now - last < ta_cfg.decay_ms || !__atomic_compare_exchange_n(&last_ms, &last, now, false,
                                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 1; c < ta_nclasses; c++) {
            transfer_t *t = &transfer[sh][c];
            if (!__atomic_load_n(&t->n, __ATOMIC_RELAXED)) continue;
            ta_lock(&t->lock);
            uint32_t k = (t->n + 1) / 2;
            void *take[TC_SLOTS];
            for (uint32_t i = 0; i < k; i++) take[i] = slots_of(t)[--t->n];
            ta_unlock(&t->lock);
            for (uint32_t i = 0; i < k; i++) free_to_spans(c, take[i], ta_class[c].batch);
        }
}

void ta_central_drain(void) {
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 1; c < ta_nclasses; c++) {
            transfer_t *t = &transfer[sh][c];
            for (;;) {
                ta_lock(&t->lock);
                void *h = t->n ? slots_of(t)[--t->n] : NULL;
                ta_unlock(&t->lock);
                if (!h) break;
                free_to_spans(c, h, ta_class[c].batch);
            }
        }
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
    size_t batch_bytes = (size_t)ta_class[cls].batch * ta_class[cls].size;
    for (uint32_t sh = 0; sh < nshards; sh++) {
        transfer_t *t = &transfer[sh][cls];
        out->transfer_bytes += t->n * batch_bytes;
        out->hits += t->hits;
        out->misses += t->misses;
    }
    out->span_free_bytes = central[cls].free_objects * ta_class[cls].size;
    out->to_caches = __atomic_load_n(&central[cls].to_caches, __ATOMIC_RELAXED);
    out->from_caches = __atomic_load_n(&central[cls].from_caches, __ATOMIC_RELAXED);
}

void ta_central_lock_all(void) {
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) ta_lock(&transfer[sh][c].lock);
    for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) ta_lock(&central[c].lock);
}

void ta_central_unlock_all(bool child) {
    for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) {
        ta_lock_after_fork(&central[c].lock, child);
    }
    for (uint32_t sh = 0; sh < nshards; sh++)
        for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) {
            ta_lock_after_fork(&transfer[sh][c].lock, child);
        }
}
