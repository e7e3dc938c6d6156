/* quarantine.c: delayed reuse of freed small blocks, in the hardened build
 * (./configure --enable-hardened; nothing here is compiled otherwise).
 *
 * free() of a small block marks it FREE (its state byte: a second free is a
 * double free, as always), fills it with TA_QUARANTINE_FILL and queues it at
 * the tail of a FIFO shard instead of pushing it on tier 1.  A shard holds at
 * most ta_cfg.quarantine_bytes (TIERALLOC_QUARANTINE_BYTES, 256 KiB by
 * default) and a fixed number of blocks; the oldest leave when it is over,
 * with the shard's lock let go: each is checked to still hold the pattern
 * (a changed word means the program wrote to it after free: "write after
 * free of 0x...") and goes to tier 1 like any freed block.  So a freed block
 * is handed out again only after the shard has taken in its bound's worth of
 * other frees.
 *
 * Shards: one per CPU the process may use (up to 64); a thread is dealt one,
 * round-robin, at its first free and keeps it.  The memory held thus scales
 * with CPUs, as tier 1 does, and a thread's exit leaves nothing behind that
 * later frees to its shard would not flush.  Blocks wait in global shards, not
 * in the thread, so thread exit, fork (the locks are taken in the fork order)
 * and per-CPU or per-thread tier 1 need nothing special; malloc_trim drains
 * every shard (ta_quarantine_drain). */
#include "pcache.h"

#include <string.h>

#ifdef TA_HARDENED

#define Q_MAX_SHARDS 64
#define Q_MIN_SLOTS 64
#define Q_MAX_SLOTS (1u << 16)
#define Q_BATCH 32 /* blocks leaving per lock hold */

/* a queued block: its address, and its state byte's address with the class
 * in the top byte (metadata lies below 2^48) */
typedef struct q_entry {
    void *p;
    uintptr_t state_cls;
} q_entry_t;

typedef struct q_shard {
    ta_lock_t lock;
    uint32_t head, n;  /* the oldest block is ring[head]; n blocks queued */
    uint64_t bytes;    /* their class sizes together */
    q_entry_t *ring;   /* ring_slots entries, mapped at the first free */
    uint32_t count[TA_MAX_CLASSES]; /* blocks queued per class (statistics) */
} __attribute__((aligned(64))) q_shard_t;

static q_shard_t shards[Q_MAX_SHARDS];
static uint32_t nshards = 1, ring_slots = Q_MIN_SLOTS, next_shard;
static __thread uint32_t my_shard __attribute__((tls_model("initial-exec"))); /* shard + 1; 0: none yet */

void ta_quarantine_init(void) {
    nshards = ta_cfg.ncpu < 1 ? 1 : ta_cfg.ncpu > Q_MAX_SHARDS ? Q_MAX_SHARDS : (uint32_t)ta_cfg.ncpu;
    /* room for the bound's worth of the smallest blocks */
    uint64_t slots = ta_cfg.quarantine_bytes / TA_ALIGN;
    ring_slots = slots < Q_MIN_SLOTS ? Q_MIN_SLOTS : slots > Q_MAX_SLOTS ? Q_MAX_SLOTS : (uint32_t)slots;
    for (uint32_t i = 0; i < Q_MAX_SHARDS; i++) ta_lock_set_rank(&shards[i].lock, TA_RANK_QUARANTINE);
}

static inline void to_tier1(void *p, uint8_t *state, uint32_t cls) {
    int r = ta_fe_push(p, state, cls);
    if (r == TA_PUSH_FOREIGN) ta_pcache_free_foreign(p, state, cls);
    else if (r == TA_PUSH_FULL) ta_pcache_free_slow(p, cls, state);
}

TA_COLD static void write_after_free(const void *p, size_t off) {
    ta_fatal("write after free of %p (byte %zu of the block changed while it was in quarantine)", p, off);
}

/* A block leaving: still the fill pattern everywhere, or the program wrote to it. */
static void release(const q_entry_t *e) {
    uint32_t cls = (uint32_t)(e->state_cls >> 56);
    uint8_t *state = (uint8_t *)(e->state_cls & (((uintptr_t)1 << 56) - 1));
    const uint64_t pat = 0x0101010101010101ull * TA_QUARANTINE_FILL;
    const uint64_t *w = e->p;
    for (size_t i = 0, n = ta_class[cls].size / 8; i < n; i++)
        if (TA_UNLIKELY(w[i] != pat)) {
            size_t off = i * 8;
            while (((const uint8_t *)e->p)[off] == TA_QUARANTINE_FILL) off++;
            write_after_free(e->p, off);
        }
    to_tier1(e->p, state, cls);
}

/* Take up to max of the oldest blocks out of q (locked) into out while it
 * holds more than bound bytes or is full; returns how many. */
static uint32_t take_oldest(q_shard_t *q, q_entry_t *out, uint32_t max, uint64_t bound) {
    uint32_t k = 0;
    while (q->n && (q->bytes > bound || q->n >= ring_slots) && k < max) {
        q_entry_t e = q->ring[q->head];
        uint32_t cls = (uint32_t)(e.state_cls >> 56);
        q->head = q->head + 1 == ring_slots ? 0 : q->head + 1;
        q->n--;
        q->bytes -= ta_class[cls].size;
        __atomic_store_n(&q->count[cls], q->count[cls] - 1, __ATOMIC_RELAXED);
        out[k++] = e;
    }
    return k;
}

void ta_quarantine_put(void *p, uint8_t *state, uint32_t cls) {
    /* off (TIERALLOC_QUARANTINE_BYTES=0), or tracing, which records a free
     * when the block reaches tier 1 */
    if (TA_UNLIKELY(!ta_cfg.quarantine_bytes || ta_trace_on)) {
        to_tier1(p, state, cls);
        return;
    }
    uint32_t size = ta_class[cls].size;
    memset(p, TA_QUARANTINE_FILL, size);
    uint32_t me = my_shard;
    if (TA_UNLIKELY(!me)) my_shard = me = __atomic_fetch_add(&next_shard, 1, __ATOMIC_RELAXED) % nshards + 1;
    q_shard_t *q = &shards[me - 1];
    q_entry_t out[Q_BATCH];
    ta_lock(&q->lock);
    if (TA_UNLIKELY(!q->ring)) {
        /* address space; its pages become resident as the ring fills */
        q->ring = ta_meta_map((size_t)ring_slots * sizeof(q_entry_t), 4096);
        if (!q->ring) { /* no memory for it: no delay */
            ta_unlock(&q->lock);
            to_tier1(p, state, cls);
            return;
        }
    }
    /* a free slot for p first, then p at the tail, then the oldest out while over the bound */
    uint32_t k = q->n >= ring_slots ? take_oldest(q, out, 1, UINT64_MAX) : 0;
    uint32_t tail = q->head + q->n;
    q->ring[tail >= ring_slots ? tail - ring_slots : tail] = (q_entry_t){p, (uintptr_t)state | (uintptr_t)cls << 56};
    q->n++;
    q->bytes += size;
    __atomic_store_n(&q->count[cls], q->count[cls] + 1, __ATOMIC_RELAXED);
    for (;;) {
        k += take_oldest(q, out + k, Q_BATCH - k, ta_cfg.quarantine_bytes);
        ta_unlock(&q->lock);
        for (uint32_t i = 0; i < k; i++) release(&out[i]);
        if (k < Q_BATCH) return;
        k = 0;
        ta_lock(&q->lock); /* a full batch left: there may be more */
    }
}

void ta_quarantine_drain(void) {
    q_entry_t out[Q_BATCH];
    for (uint32_t s = 0; s < nshards; s++) {
        q_shard_t *q = &shards[s];
        for (;;) {
            if (!__atomic_load_n(&q->n, __ATOMIC_RELAXED)) break;
            ta_lock(&q->lock);
            uint32_t k = take_oldest(q, out, Q_BATCH, 0);
            ta_unlock(&q->lock);
            for (uint32_t i = 0; i < k; i++) release(&out[i]);
        }
    }
}

void ta_quarantine_counts(uint64_t *objects) {
    for (uint32_t s = 0; s < nshards; s++)
        for (uint32_t c = 1; c < ta_nclasses; c++) objects[c] += __atomic_load_n(&shards[s].count[c], __ATOMIC_RELAXED);
}

void ta_quarantine_lock_all(bool fork) {
    for (uint32_t s = 0; s < nshards; s++) ta_lock_or_drain(&shards[s].lock, fork);
}

void ta_quarantine_unlock_all(bool child) {
    for (uint32_t s = 0; s < nshards; s++) ta_lock_after_fork(&shards[s].lock, child);
}

#endif
