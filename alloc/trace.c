/* trace.c: TIERALLOC_TRACE, a record of every allocation call (docs/trace-format.md).
 *
 * Switched on at init when the option is set; then the per-thread cache mode
 * is forced and every thread's fast-path slab stays the all-zero one, and its
 * sampling countdown stays negative: every malloc reaches ta_alloc_sample_slow
 * (or ta_alloc_large) and every free ta_pcache_free_slow (or ta_free_slow),
 * which call in here.  With the option off nothing here runs.
 *
 * Objects are named by ids (address -> id in a side table mapped from the OS); records go into a per-thread buffer (mapped
 * too) that its thread writes to the file with one write(2) per chunk
 * (O_APPEND, so chunks of different threads never mix).  Nothing here calls
 * malloc. */
#include "internal.h"
#include "api.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

bool ta_trace_on;
__thread int ta_trace_busy __attribute__((tls_model("initial-exec")));

/* ---- address -> id: a side table indexed by address ------------------------
 * One 64-bit id per 16 bytes of address space, in leaves of 16 MiB of address
 * space (8 MiB, mapped sparse: only the pages written become memory) under a
 * sparse root.  A block's slot is written by the thread that allocated it and
 * cleared by the one that frees it; between the two the program itself orders
 * them, so no lock is needed.  Neighbouring blocks have neighbouring slots. */
#define LEAF_SHIFT 24
#define ROOT_LEN ((size_t)1 << (48 - LEAF_SHIFT))
static uint64_t **root;
static uint64_t min_id; /* ids below it were the parent's (after fork) */

static uint64_t *slot_of(uintptr_t a, bool make) {
    if (a >> 48) return NULL;
    uint64_t *leaf = __atomic_load_n(&root[a >> LEAF_SHIFT], __ATOMIC_ACQUIRE);
    if (!leaf && make) {
        uint64_t *nl = ta_os_map_sparse((size_t)8 << (LEAF_SHIFT - 4), 4096);
        if (!nl) return NULL;
        if (__atomic_compare_exchange_n(&root[a >> LEAF_SHIFT], &leaf, nl, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            leaf = nl;
        else
            ta_os_unmap(nl, (size_t)8 << (LEAF_SHIFT - 4));
    }
    return leaf ? &leaf[(a & (((uintptr_t)1 << LEAF_SHIFT) - 1)) >> 4] : NULL;
}

static bool map_put(uintptr_t a, uint64_t id) {
    uint64_t *s = slot_of(a, true);
    if (s) *s = id;
    return s != NULL;
}

/* clear a's slot; its id, or 0 when a has none */
static uint64_t map_take(uintptr_t a) {
    uint64_t *s = slot_of(a, false);
    if (!s) return 0;
    uint64_t id = *s;
    *s = 0;
    return id >= min_id ? id : 0;
}

/* ---- per-thread buffers ---------------------------------------------------- */
#define BUF_BYTES (64 << 10)
#define HDR 16        /* chunk header: length, thread, records, checksum (u32 each) */
#define MAX_REC 48    /* the longest record */
typedef struct tbuf {
    struct tbuf *next_all;
    bool alive;       /* a live thread owns it */
    bool used;        /* on the list of buffers in use (else free) */
    uint32_t thread;
    uint32_t nrec;
    uint64_t prev_id; /* the last id this thread's records named */
    uint64_t next_id, id_end;
    size_t len;       /* bytes in data, header included */
    uint8_t data[];
} tbuf_t;
static ta_lock_t list_lock = TA_LOCK_INIT(TA_RANK_TRACE);
static tbuf_t *all_bufs;
static uint32_t thread_seq;
static uint64_t id_seq = 1;
static int trace_fd = -1;
static char trace_path[TA_PATH_MAX + 4];
static __thread tbuf_t *my_buf __attribute__((tls_model("initial-exec")));

static tbuf_t *buf_new(void) {
    tbuf_t *b = NULL;
    ta_lock(&list_lock);
    for (tbuf_t *x = all_bufs; x; x = x->next_all)
        if (!x->used) {
            b = x;
            b->used = true; /* taken under the lock: one thread per buffer */
            break;
        }
    ta_unlock(&list_lock);
    if (!b) {
        b = ta_os_map(BUF_BYTES, 4096);
        if (!b) return NULL;
        b->used = true;
        ta_lock(&list_lock);
        b->next_all = all_bufs;
        all_bufs = b;
        ta_unlock(&list_lock);
    }
    b->alive = true;
    b->thread = __atomic_add_fetch(&thread_seq, 1, __ATOMIC_RELAXED);
    b->nrec = 0;
    b->prev_id = b->next_id = b->id_end = 0;
    b->len = HDR;
    my_buf = b;
    return b;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* the checksum of a chunk's records (FNV-1a, 32 bits) */
static uint32_t checksum(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static void buf_flush(tbuf_t *b) {
    if (b->len == HDR) return;
    int fd = __atomic_load_n(&trace_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0) {
        put32(b->data, (uint32_t)(b->len - HDR));
        put32(b->data + 4, b->thread);
        put32(b->data + 8, b->nrec);
        put32(b->data + 12, checksum(b->data + HDR, b->len - HDR));
        if (!ta_write_fd(fd, (const char *)b->data, b->len)) {
            ta_printf_fd(2, "tieralloc: TIERALLOC_TRACE: writing %s failed (errno %d); tracing stops\n", trace_path, errno);
            __atomic_store_n(&trace_fd, -1, __ATOMIC_RELEASE);
        }
    }
    b->len = HDR;
    b->nrec = 0;
}

static inline uint8_t *put_var(uint8_t *p, uint64_t v) {
    while (v >= 0x80) { *p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *p++ = (uint8_t)v;
    return p;
}
static inline uint64_t zigzag(uint64_t a, uint64_t b) { /* a - b, signed, zigzagged */
    int64_t d = (int64_t)(a - b);
    return ((uint64_t)d << 1) ^ (uint64_t)(d >> 63);
}

/* Records of threads past their exit: the destructors of keys made after
 * tier 1's run after ta_trace_thread_exit and may still allocate and free.
 * A buffer of their own would have no owner left to flush it (its records
 * lost) or to give it back (one buffer more with every such thread), so they
 * share one, written under list_lock, flushed when full and at exit: one
 * thread of its own in the trace. */
static tbuf_t *late_buf;
static __thread bool trace_gone __attribute__((tls_model("initial-exec")));

/* late_buf, locked (NULL, not locked, without memory for it) */
static tbuf_t *late_lock(void) {
    ta_lock(&list_lock);
    tbuf_t *b = late_buf;
    if (!b && (b = ta_os_map(BUF_BYTES, 4096))) {
        b->used = b->alive = true; /* (not on all_bufs: no thread takes it) */
        b->thread = __atomic_add_fetch(&thread_seq, 1, __ATOMIC_RELAXED);
        b->len = HDR;
        __atomic_store_n(&late_buf, b, __ATOMIC_RELAXED); /* (commit compares with it unlocked) */
    }
    if (!b) ta_unlock(&list_lock);
    return b;
}

static inline tbuf_t *cur_buf(void) {
    tbuf_t *b = my_buf;
    if (TA_UNLIKELY(!b)) {
        if (TA_UNLIKELY(trace_gone)) return late_lock();
        b = buf_new();
        ta_tls.sample_left = INT64_MIN / 4; /* every malloc of this thread takes the slow path */
    }
    return b;
}

static uint64_t new_id(tbuf_t *b) {
    if (b->next_id == b->id_end) {
        b->next_id = __atomic_fetch_add(&id_seq, 4096, __ATOMIC_RELAXED);
        b->id_end = b->next_id + 4096;
    }
    return b->next_id++;
}

/* an id for q, or the record goes with 0 (no memory for the table) */
static uint8_t *put_new_id(tbuf_t *b, uint8_t *op, uint8_t *p, void *q) {
    uint64_t id = new_id(b);
    if (!map_put((uintptr_t)q, id)) id = 0;
    if (id && id == b->prev_id + 1) {
        *op |= TA_TR_SEQ;
    } else {
        p = put_var(p, zigzag(id, b->prev_id));
    }
    b->prev_id = id;
    return p;
}

static inline void commit(tbuf_t *b, uint8_t *end) {
    b->len = (size_t)(end - b->data);
    b->nrec++;
    if (b->len > BUF_BYTES - sizeof(tbuf_t) - MAX_REC) buf_flush(b);
    if (TA_UNLIKELY(b == __atomic_load_n(&late_buf, __ATOMIC_RELAXED))) ta_unlock(&list_lock); /* (cur_buf took it) */
}

void ta_trace_alloc(int op, void *q, size_t n, size_t align) {
    if (!q || ta_trace_busy) return;
    tbuf_t *b = cur_buf();
    if (!b) return;
    uint8_t *o = b->data + b->len, *p = o + 1;
    *o = (uint8_t)op;
    p = put_var(p, n);
    if (op >= TA_TR_MEMALIGN && op <= TA_TR_ALIGNED_ALLOC) p = put_var(p, align);
    p = put_new_id(b, o, p, q);
    commit(b, p);
}

void ta_trace_free(void *q) {
    if (ta_trace_busy) return;
    uint64_t id = map_take((uintptr_t)q);
    if (!id) return; /* not one of ours (made before tracing, or in the parent) */
    tbuf_t *b = cur_buf();
    if (!b) return;
    uint8_t *o = b->data + b->len, *p = o + 1;
    *o = TA_TR_FREE;
    p = put_var(p, zigzag(id, b->prev_id));
    b->prev_id = id;
    commit(b, p);
}

void ta_trace_mark(int op) {
    tbuf_t *b = cur_buf();
    if (!b) return;
    uint8_t *o = b->data + b->len;
    *o = (uint8_t)op;
    commit(b, o + 1);
}

void *ta_trace_realloc(void *old, size_t n) {
    uint64_t oid = old ? map_take((uintptr_t)old) : 0;
    ta_trace_busy++;
    void *q = ta_impl_realloc(old, n);
    ta_trace_busy--;
    if (!q && old && n) { /* failed: the old block stays */
        if (oid) map_put((uintptr_t)old, oid);
        return q;
    }
    if (old && !oid) return q; /* a block the trace never saw */
    tbuf_t *b = cur_buf();
    if (!b) return q;
    uint8_t *o = b->data + b->len, *p = o + 1;
    *o = TA_TR_REALLOC;
    if (oid) {
        p = put_var(p, zigzag(oid, b->prev_id));
        b->prev_id = oid;
    } else {
        *o |= TA_TR_OLDNULL;
    }
    p = put_var(p, n);
    if (q) p = put_new_id(b, o, p, q);
    else *o |= TA_TR_NORESULT;
    commit(b, p);
    return q;
}

void *ta_trace_calloc(size_t n, size_t size) {
    ta_trace_busy++;
    void *q = ta_impl_calloc(n, size);
    ta_trace_busy--;
    ta_trace_alloc(TA_TR_CALLOC, q, n * size, 0);
    return q;
}

void *ta_trace_aligned(int op, size_t align, size_t n) {
    void *q = NULL;
    ta_trace_busy++;
    switch (op) {
    case TA_TR_MEMALIGN: q = ta_impl_memalign(align, n); break;
    case TA_TR_POSIX_MEMALIGN: if (ta_impl_posix_memalign(&q, align, n) != 0) q = NULL; break;
    case TA_TR_ALIGNED_ALLOC: q = ta_impl_aligned_alloc(align, n); break;
    case TA_TR_VALLOC: q = ta_impl_valloc(n); break;
    default: q = ta_impl_pvalloc(n); break;
    }
    ta_trace_busy--;
    ta_trace_alloc(op, q, n, align);
    return q;
}

/* ---- the file ------------------------------------------------------------- */
static bool open_trace(const char *path) {
    int fd = ta_open_report(path);
    if (fd < 0) {
        ta_printf_fd(2, "tieralloc: TIERALLOC_TRACE: cannot open %s (errno %d); not tracing\n", path, errno);
        return false;
    }
    fcntl(fd, F_SETFL, O_APPEND);
    if (!ta_write_fd(fd, TA_TRACE_MAGIC, 8)) {
        close(fd);
        return false;
    }
    trace_fd = fd;
    return true;
}

void ta_trace_init(void) {
    if (!ta_cfg.trace_path[0]) return;
    size_t n = strlen(ta_cfg.trace_path);
    memcpy(trace_path, ta_cfg.trace_path, n + 1);
    root = ta_os_map_sparse(ROOT_LEN * sizeof *root, 4096);
    if (!root) return;
    if (open_trace(ta_cfg.trace_path)) ta_trace_on = true;
}

void ta_trace_thread_exit(void) {
    trace_gone = true; /* from now on its records go to late_buf */
    tbuf_t *b = my_buf;
    if (!b) return;
    buf_flush(b);
    my_buf = NULL;
    b->alive = false;
    __atomic_store_n(&b->used, false, __ATOMIC_RELEASE); /* reusable by the next thread */
}

__attribute__((destructor)) static void trace_at_exit(void) {
    if (!ta_trace_on) return;
    int saved = errno;
    if (my_buf) buf_flush(my_buf);
    ta_lock(&list_lock);
    for (tbuf_t *b = all_bufs; b; b = b->next_all)
        if (b->used && !b->alive) buf_flush(b);
    if (late_buf) buf_flush(late_buf);
    ta_unlock(&list_lock);
    errno = saved;
}

void ta_trace_lock_all(bool fork) {
    ta_lock_or_drain(&list_lock, fork);
}

void ta_trace_unlock_all(bool child) {
    if (child && ta_trace_on) {
        /* the child's trace holds its own calls only: the parent's buffers,
         * ids and objects are left behind */
        for (tbuf_t *b = all_bufs; b; b = b->next_all) {
            b->used = b->alive = false;
            b->len = HDR;
        }
        if (late_buf) { /* (its ids were drawn from the parent's) */
            late_buf->len = HDR;
            late_buf->nrec = 0;
            late_buf->prev_id = late_buf->next_id = late_buf->id_end = 0;
        }
        my_buf = NULL;
        min_id = id_seq;
    }
    ta_lock_after_fork(&list_lock, child);
    if (child && ta_trace_on) {
        close(trace_fd);
        trace_fd = -1;
        char path[TA_PATH_MAX + 4];
        size_t n = strlen(trace_path);
        memcpy(path, trace_path, n + 1);
        if (!strstr(path, "%p")) memcpy(path + n, ".%p", 4);
        if (!open_trace(path)) ta_trace_on = false;
    }
}
