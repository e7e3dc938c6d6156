/* pcache.c: tier 1, one cache per thread (per-CPU with rseq is the next step;
 * the interface stays).  The fast paths live inline in api.c; this file holds
 * what is rare: creating a cache, refilling from central, flushing to it,
 * sizing lists under the global budget, and the thread-exit flush.
 *
 * Every thread starts pointing at a static empty cache whose lists are all
 * empty with max 0, so the fast paths never test for initialisation: the first
 * malloc or free simply misses into this file. */
#include "internal.h"

#include <string.h>

static ta_pcache_t pcache_empty;            /* what a new thread sees */
static ta_pcache_t pcache_dead = {.state = TA_PC_DEAD}; /* after its exit flush */
__thread ta_tls_t ta_tls __attribute__((tls_model("initial-exec"))) = {.cache = &pcache_empty};

static ta_lock_t reg_lock = TA_LOCK_INIT;
static ta_pcache_t reg_head = {.next_all = &reg_head, .prev_all = &reg_head};
static ta_pcache_t *pcache_free;            /* caches of exited threads, for reuse */
static pthread_key_t pcache_key;
static uint32_t pcache_seq;
static int64_t budget_pool;                 /* bytes of cache budget not given to any thread */
static uint64_t dead_alloc_miss, dead_free_miss; /* slow-path counts of exited threads (reg_lock) */

#define BUDGET_STEP ((uint64_t)64 << 10)

void ta_pcache_init(void) {
    budget_pool = (int64_t)ta_cfg.cache_bytes;
    pthread_key_create(&pcache_key, ta_pcache_thread_exit);
}

/* Longest a class's list may get: about 1 MiB of objects, at least two batches. */
static uint32_t list_cap(uint32_t cls) {
    uint32_t cap = (uint32_t)((1u << 20) / ta_class[cls].size);
    if (cap > 8192) cap = 8192;
    if (cap < 2 * ta_class[cls].batch) cap = 2 * ta_class[cls].batch;
    return cap;
}


static void release_objects(ta_pcache_t *c, uint32_t cls, uint32_t n);

/* Every thread may hold this much even when the global pool is spent, so a new
 * busy thread is never reduced to one object at a time while idle threads sit
 * on their budget (the pool then runs an overdraft). */
#define THREAD_BUDGET_FLOOR ((uint64_t)256 << 10)

/* Take budget for `need` more bytes of list capacity from the global pool. */
static bool take_budget(ta_pcache_t *c, uint64_t need) {
    uint64_t want = need < BUDGET_STEP ? BUDGET_STEP : need;
    if (c->budget + want > ta_cfg.thread_cache_max) return false;
    if (__atomic_sub_fetch(&budget_pool, (int64_t)want, __ATOMIC_RELAXED) < 0 &&
        c->budget + want > THREAD_BUDGET_FLOOR) {
        __atomic_add_fetch(&budget_pool, (int64_t)want, __ATOMIC_RELAXED);
        return false;
    }
    c->budget += want;
    return true;
}

/* Move capacity to cls from the thread's other lists, round-robin: halve their
 * maximum and give back the objects above it.  Lists in use grow back on their
 * next miss; idle ones stay small. */
static int64_t steal_capacity(ta_pcache_t *c, uint32_t cls, int64_t spare, uint64_t need) {
    for (uint32_t n = 1; n < ta_nclasses && spare < (int64_t)need; n++) {
        uint32_t j = c->steal_next = c->steal_next + 1 >= ta_nclasses ? 1 : c->steal_next + 1;
        ta_list_t *l = &c->list[j];
        if (j == cls || !l->max) continue;
        uint32_t keep = l->max / 2;
        if (keep < ta_class[j].batch) keep = 0;
        uint64_t freed = (uint64_t)(l->max - keep) * ta_class[j].size;
        spare += (int64_t)freed;
        c->committed -= freed;
        l->max = keep;
        if (l->count > keep) release_objects(c, j, l->count - keep);
    }
    return spare;
}

/* Raise cls's list max by a batch if the thread's budget (topped up from the
 * global pool, or taken from its other lists) allows; the sum of max*size over
 * lists never exceeds the budget. */
static void grow_list(ta_pcache_t *c, uint32_t cls) {
    ta_list_t *l = &c->list[cls];
    uint32_t cap = list_cap(cls);
    if (l->max >= cap) return;
    /* slow start: 2, 6, 14, ... up to a batch (1, 2 for the big classes,
     * whose batch is 2), then a batch at a time, so a class used a few times
     * does not pull in a whole batch */
    uint32_t batch = ta_class[cls].batch, step = batch > 4 ? 2 : 1;
    uint32_t add = l->max >= batch ? batch : (l->max + step < batch - l->max ? l->max + step : batch - l->max);
    if (l->max + add > cap) add = cap - l->max;
    uint64_t need = (uint64_t)add * ta_class[cls].size;
    int64_t spare = (int64_t)c->budget - (int64_t)c->committed;
    if (spare < (int64_t)need && !take_budget(c, need - (uint64_t)(spare > 0 ? spare : 0))) {
        spare = steal_capacity(c, cls, spare, need);
        if (spare < (int64_t)need) return;
    }
    l->max += add;
    c->committed += need;
}

static ta_pcache_t *cache_create(void) {
    ta_ensure_init();
    ta_lock(&reg_lock);
    ta_pcache_t *c = pcache_free;
    if (c) pcache_free = c->next_all;
    ta_unlock(&reg_lock);
    if (!c) c = ta_meta_alloc(sizeof *c);
    memset(c, 0, sizeof *c);
    c->state = TA_PC_LIVE;
    ta_lock(&reg_lock);
    c->shard = pcache_seq++;
    c->next_all = reg_head.next_all;
    c->prev_all = &reg_head;
    reg_head.next_all->prev_all = c;
    reg_head.next_all = c;
    ta_unlock(&reg_lock);
    /* set TLS first: if pthread_setspecific allocates, it finds the cache */
    ta_tls_cache = c;
    pthread_setspecific(pcache_key, c);
    return c;
}

/* Detach up to n objects from the head of the list and give them to central. */
static void release_objects(ta_pcache_t *c, uint32_t cls, uint32_t n) {
    ta_list_t *l = &c->list[cls];
    if (n > l->count) n = l->count;
    if (!n) return;
    void *head = l->head, *last = head;
    for (uint32_t i = 1; i < n; i++) last = *(void **)last;
    l->head = *(void **)last;
    *(void **)last = NULL;
    l->count -= n;
    ta_central_free(cls, head, n, c->shard);
}

/* Once per decay period, on its own slow path, a cache gives back half of
 * every list that neither missed nor overflowed since the last time, and the
 * capacity with it: what a thread stopped using drains away instead of
 * holding spans (and so pages) for ever. */
static void scavenge_maybe(ta_pcache_t *c) {
    uint64_t now = ta_os_now_ms();
    if (now - c->scavenged_ms < ta_cfg.decay_ms) return;
    c->scavenged_ms = now;
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        ta_list_t *l = &c->list[cls];
        if (c->active[cls]) {
            c->active[cls] = 0;
            continue;
        }
        if (!l->count) continue;
        uint32_t k = (l->count + 1) / 2;
        release_objects(c, cls, k);
        uint32_t shrink = k < l->max ? k : l->max;
        l->max -= shrink;
        c->committed -= (uint64_t)shrink * ta_class[cls].size;
    }
}

void *ta_pcache_alloc_slow(uint32_t cls) {
    ta_pcache_t *c = ta_tls_cache;
    if (TA_UNLIKELY(c->state != TA_PC_LIVE)) {
        if (c->state == TA_PC_DEAD) {
            /* thread is past its exit flush: no cache, straight to central */
            void *p;
            if (!ta_central_alloc(cls, 1, &p, 0)) return NULL;
            ((void **)p)[1] = NULL;
            return p;
        }
        c = cache_create();
    }
    c->n_alloc_miss++;
    c->active[cls] = 1;
    ta_list_t *l = &c->list[cls];
    if (l->head) { /* a re-entrant call (or a racing handler) refilled it */
        void **p = l->head;
        l->head = p[0];
        l->count--;
        p[1] = NULL;
        return p;
    }
    grow_list(c, cls);
    scavenge_maybe(c);
    ta_central_decay();
    ta_pageheap_tick();
    /* never take more than the list may hold: a list the budget refused to
     * grow (max 0) gets single objects */
    uint32_t want = ta_class[cls].batch;
    if (want > l->max) want = l->max ? l->max : 1;
    void *chain;
    uint32_t got = ta_central_alloc(cls, want, &chain, c->shard);
    if (!got) return NULL;
    void **p = chain;
    /* the rest goes on the list (the list was empty) */
    l->head = p[0];
    l->count = got - 1;
    p[1] = NULL;
    return p;
}

void ta_pcache_free_slow(void *p, uint32_t cls) {
    ta_pcache_t *c = ta_tls_cache;
    void **o = p;
    if (TA_UNLIKELY(c->state != TA_PC_LIVE)) {
        if (c->state == TA_PC_DEAD) {
            o[0] = NULL;
            o[1] = (void *)ta_guard(p);
            ta_central_free(cls, p, 1, 0);
            return;
        }
        c = cache_create();
    }
    c->n_free_miss++;
    ta_list_t *l = &c->list[cls];
    /* frees alone grow a list to one batch at most (enough to flush in
     * batches); beyond that only allocation misses grow it, so a thread that
     * frees what others allocated does not hoard memory it will never reuse */
    if (l->count >= l->max && l->max < ta_class[cls].batch) grow_list(c, cls);
    if (l->count >= l->max) {
        uint32_t batch = ta_class[cls].batch;
        release_objects(c, cls, l->count < batch ? l->count : batch);
        c->active[cls] = 1;
        scavenge_maybe(c);
        ta_central_decay();
        ta_pageheap_tick();
    }
    o[0] = l->head;
    o[1] = (void *)ta_guard(p);
    l->head = o;
    l->count++;
}

/* Empty every list into the spans: the cache is going away (thread exit) or
 * memory is being given back (trim), so nothing should linger in the transfer
 * caches where it would keep whole spans from the page heap. */
static void flush_all(ta_pcache_t *c) {
    for (uint32_t cls = 1; cls < ta_nclasses; cls++) {
        ta_list_t *l = &c->list[cls];
        if (!l->count) continue;
        ta_central_free_spans(cls, l->head, l->count);
        l->head = NULL;
        l->count = 0;
    }
}

void ta_pcache_flush_current(void) {
    ta_pcache_t *c = ta_tls_cache;
    if (c->state == TA_PC_LIVE) flush_all(c);
}

void ta_pcache_thread_exit(void *arg) {
    ta_pcache_t *c = arg;
    if (!c || c->state != TA_PC_LIVE) return;
    flush_all(c);
    ta_sample_thread_exit();
    ta_tls_cache = &pcache_dead;
    __atomic_add_fetch(&budget_pool, (int64_t)c->budget, __ATOMIC_RELAXED);
    ta_lock(&reg_lock);
    dead_alloc_miss += c->n_alloc_miss;
    dead_free_miss += c->n_free_miss;
    c->prev_all->next_all = c->next_all;
    c->next_all->prev_all = c->prev_all;
    c->state = TA_PC_EMPTY;
    c->next_all = pcache_free;
    pcache_free = c;
    ta_unlock(&reg_lock);
}

uint64_t ta_pcache_bytes(uint32_t cls_or_all) {
    uint64_t b = 0;
    ta_lock(&reg_lock);
    for (ta_pcache_t *c = reg_head.next_all; c != &reg_head; c = c->next_all) {
        for (uint32_t cls = 1; cls < ta_nclasses; cls++)
            if (!cls_or_all || cls == cls_or_all)
                b += (uint64_t)__atomic_load_n(&c->list[cls].count, __ATOMIC_RELAXED) * ta_class[cls].size;
    }
    ta_unlock(&reg_lock);
    return b;
}

/* Caller holds reg_lock. Other threads' counts change under our feet: each
 * is read once, atomically (a value it really had). */
void ta_pcache_stats_locked(ta_pcache_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->alloc_misses = dead_alloc_miss;
    out->free_misses = dead_free_miss;
    for (ta_pcache_t *c = reg_head.next_all; c != &reg_head; c = c->next_all) {
        out->caches++;
        out->alloc_misses += __atomic_load_n(&c->n_alloc_miss, __ATOMIC_RELAXED);
        out->free_misses += __atomic_load_n(&c->n_free_miss, __ATOMIC_RELAXED);
        for (uint32_t cls = 1; cls < ta_nclasses; cls++)
            out->objects[cls] += __atomic_load_n(&c->list[cls].count, __ATOMIC_RELAXED);
    }
}

void ta_pcache_lock_all(void) { ta_lock(&reg_lock); }
void ta_pcache_unlock_all(bool child) {
    ta_lock_after_fork(&reg_lock, child);
}
