/* internal.h: the types every tier shares and each file's exports, grouped by
 * file.  Layer rule: a tier calls only the tiers below it
 *   api → pcache → central → pageheap → pagemap/meta → os → diag/config
 * (stats reads all of them).  Nothing here calls malloc. */
#ifndef TA_INTERNAL_H
#define TA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#define TA_EXPORT __attribute__((visibility("default")))
#define TA_LIKELY(x) __builtin_expect(!!(x), 1)
#define TA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TA_NOINLINE __attribute__((noinline))
#define TA_COLD __attribute__((cold, noinline))

/* ---- geometry -------------------------------------------------------------- */
#define TA_PAGE_SHIFT 13 /* 8 KiB pages: the unit of spans and of the pagemap */
#define TA_PAGE_SIZE ((size_t)1 << TA_PAGE_SHIFT)
#define TA_ALIGN 16                   /* every block is 16-byte aligned */
#define TA_MAX_SMALL ((size_t)256 << 10) /* larger requests are whole spans */
#define TA_MAX_CLASSES 128            /* class 0 means "not a small block" */
/* Largest request we ever try to serve: anything above this is ENOMEM, so
 * page arithmetic can never overflow. */
#define TA_MAX_REQUEST (((size_t)1 << 47) - ((size_t)1 << 30))

/* ---- locks ----------------------------------------------------------------- */
typedef pthread_mutex_t ta_lock_t;
#define TA_LOCK_INIT PTHREAD_MUTEX_INITIALIZER
static inline void ta_lock(ta_lock_t *l) { pthread_mutex_lock(l); }
static inline void ta_unlock(ta_lock_t *l) { pthread_mutex_unlock(l); }
/* after fork: the parent unlocks what fork_prepare locked; the child, whose
 * other threads are gone, starts the lock afresh */
static inline void ta_lock_after_fork(ta_lock_t *l, bool child) {
    if (child)
        pthread_mutex_init(l, NULL);
    else
        pthread_mutex_unlock(l);
}

#ifdef TA_DEBUG
#define TA_ASSERT(c) ((c) ? (void)0 : ta_assert_fail(#c, __FILE__, __LINE__))
#else
#define TA_ASSERT(c) ((void)0)
#endif

/* ---- diag.c: output without malloc ---------------------------------------- */
/* A small formatter into a caller's buffer: %s %d %u %zu %lu %llu %x %p %%
 * (and the l/ll/z modifiers on d, u and x). Returns the length written. */
size_t ta_format(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
size_t ta_vformat(char *buf, size_t cap, const char *fmt, __builtin_va_list ap);
/* write(2) all of s, through EINTR and short writes; errno is kept.  False
 * when a write fails (or writes nothing). */
bool ta_write_fd(int fd, const char *s, size_t n);
/* The one buffered writer: a buffer (on the caller's stack) and an fd.  Text
 * is appended with ta_out_put / ta_out_printf; a full buffer and
 * ta_out_flush send it with ta_write_fd, or to sink when that is set (e.g.
 * fwrite to a caller's FILE).  After a failed write the rest is dropped and
 * ta_out_flush returns -1.  One ta_out_printf writes at most TA_OUT_BUF - 1
 * characters. */
#define TA_OUT_BUF 4096
typedef struct ta_out {
    int fd;
    bool failed;
    int (*sink)(void *arg, const char *s, size_t n); /* 0 on success, else -1 */
    void *sink_arg;
    size_t len;
    char buf[TA_OUT_BUF];
} ta_out_t;
void ta_out_init(ta_out_t *o, int fd);
void ta_out_put(ta_out_t *o, const char *s, size_t n);
void ta_out_printf(ta_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ta_out_vprintf(ta_out_t *o, const char *fmt, __builtin_va_list ap);
int ta_out_flush(ta_out_t *o); /* 0, or -1 if any write failed */
/* one ta_out_printf to fd, flushed */
void ta_printf_fd(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "tieralloc: <message>\n" on stderr, then abort() */
void ta_fatal(const char *fmt, ...) __attribute__((noreturn, cold, format(printf, 1, 2)));
void ta_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn, cold));

/* ---- config.c: every TIERALLOC_* option, read once from environ ------------- */
#define TA_PATH_MAX 1024                         /* longest report path kept */
#define TA_DEFAULT_SAMPLE_BYTES ((uint64_t)512 << 10)
enum { TA_CFG_STATS_OFF = 0, TA_CFG_STATS_TEXT = 1, TA_CFG_STATS_JSON = 2 };
typedef struct ta_config {
    uint64_t decay_ms;        /* TIERALLOC_DECAY_MS: free pages older than this go back to the OS */
    uint64_t cache_bytes;     /* TIERALLOC_CACHE_BYTES: budget of all thread caches together */
    uint64_t thread_cache_max;/* most one thread's cache may hold */
    int ncpu;                 /* CPUs this process may run on */
    uint64_t sample_bytes;    /* TIERALLOC_SAMPLE_BYTES: mean bytes between samples (0: off) */
    bool sample_set;          /* TIERALLOC_SAMPLE_BYTES is in the environment */
    bool profile_set;         /* TIERALLOC_PROFILE is in the environment (and honoured) */
    bool secure;              /* AT_SECURE: the output options below were ignored */
    int stats;                /* TIERALLOC_STATS: TA_CFG_STATS_OFF, _TEXT (=1) or _JSON (=json:PATH) */
    char stats_json_path[TA_PATH_MAX]; /* the PATH of json:PATH ("" if none) */
    char profile_path[TA_PATH_MAX];    /* TIERALLOC_PROFILE ("" if none) */
} ta_config_t;
extern ta_config_t ta_cfg;
/* Read the options (at init, once); ta_config_read does it from env, for a
 * process in secure-execution mode when secure is true (tests call it). */
void ta_config_init(void);
void ta_config_read(char **env, int ncpu, bool secure);
/* value of environment variable `name` without allocating, or NULL */
const char *ta_getenv(const char *name);
/* "123", "64k", "8M", "1g" → bytes; def when the text is malformed or too big */
uint64_t ta_parse_size(const char *s, uint64_t def);
/* 64 bits from the kernel's AT_RANDOM bytes (read without a misaligned load);
 * for keys and seeds */
uint64_t ta_random_seed(void);

/* ---- os.c: tier 4 ---------------------------------------------------------- */
/* Map `size` bytes aligned to `align` (a power of two >= the OS page), zeroed and
 * not yet resident; NULL on failure. */
void *ta_os_map(size_t size, size_t align);
void ta_os_unmap(void *p, size_t size);
/* Give the pages back to the OS (they read as zero afterwards). */
void ta_os_release(void *p, size_t size);
uint64_t ta_os_now_ms(void);
typedef struct ta_os_stats {
    uint64_t mapped_bytes;    /* currently mapped */
    uint64_t released_bytes;  /* cumulative bytes given back with madvise */
    uint64_t n_mmap, n_munmap, n_madvise;
} ta_os_stats_t;
void ta_os_stats(ta_os_stats_t *out);

/* ---- meta.c: metadata allocator (spans, caches) over the OS tier ---------- */
/* Records bump-allocated from OS chunks.  The chunks stay mapped (a stale
 * pagemap entry may still point at a span record), but malloc_trim gives the
 * pages of span-record slabs that are all free back to the OS (madvise; they
 * read as zero) and reuses those slabs first (ta_meta_trim). */
void *ta_meta_alloc(size_t size); /* zeroed, 16-aligned; aborts on OOM (metadata is tiny) */
uint64_t ta_meta_bytes(void);
/* span records come from their own free list */
struct ta_span;
struct ta_span *ta_span_new(void);
void ta_span_delete(struct ta_span *s);
/* Give back to the OS the slabs of span records that are all free (malloc_trim);
 * returns bytes released. */
size_t ta_meta_trim(void);
void ta_meta_lock_all(void);
void ta_meta_unlock_all(bool child);

/* ---- pagemap.c: page number → span and size class ---------------------- */
/* Two-level radix tree over 48-bit addresses: a static root of leaf pointers;
 * each leaf covers 2^18 pages (2 GiB) and holds the span and a 32-bit info word
 * per page.  info = size class | (page index within its span << TA_PAGE_SHIFT),
 * i.e. the class in the low byte and the page's byte offset in its span above
 * it (ta_info_offset() adds the offset within the page in one OR); 0 for
 * pages of large spans and free spans, so free() of a small block needs only
 * the info word. */
#define TA_PM_LEAF_BITS 18
#define TA_PM_ROOT_BITS (48 - TA_PAGE_SHIFT - TA_PM_LEAF_BITS)
typedef struct ta_pm_leaf {
    uint32_t info[1 << TA_PM_LEAF_BITS];
    struct ta_span *span[1 << TA_PM_LEAF_BITS];
} ta_pm_leaf_t;
extern ta_pm_leaf_t *ta_pm_root[1 << TA_PM_ROOT_BITS];

static inline uint32_t ta_pagemap_info(uintptr_t page) {
    uintptr_t root = page >> TA_PM_LEAF_BITS; /* one compare rejects addresses above 48 bits */
    if (TA_UNLIKELY(root >= (1u << TA_PM_ROOT_BITS))) return 0;
    ta_pm_leaf_t *leaf = ta_pm_root[root];
    return leaf ? leaf->info[page & ((1u << TA_PM_LEAF_BITS) - 1)] : 0;
}
static inline struct ta_span *ta_pagemap_span(uintptr_t page) {
    if (TA_UNLIKELY(page >> (TA_PM_ROOT_BITS + TA_PM_LEAF_BITS))) return NULL;
    ta_pm_leaf_t *leaf = ta_pm_root[page >> TA_PM_LEAF_BITS];
    return leaf ? leaf->span[page & ((1u << TA_PM_LEAF_BITS) - 1)] : NULL;
}
#define TA_INFO(cls, page_index) ((uint32_t)(cls) | (uint32_t)((page_index) << TA_PAGE_SHIFT))
#define TA_INFO_CLASS(info) ((info) & 0xffu)
#define TA_INFO_PAGE_INDEX(info) ((info) >> TA_PAGE_SHIFT)
/* byte offset of p from the start of its span, for a small-class page */
static inline uint32_t ta_info_offset(const void *p, uint32_t info) {
    return ((uint32_t)(uintptr_t)p & (uint32_t)(TA_PAGE_SIZE - 1)) | (info & ~(uint32_t)(TA_PAGE_SIZE - 1));
}
/* Make sure leaves exist for pages [first, first+n); false if out of memory. */
bool ta_pagemap_ensure(uintptr_t first, uintptr_t n);
/* Set span and info for one page (its leaf must exist). */
void ta_pagemap_set(uintptr_t page, struct ta_span *s, uint32_t info);
uint64_t ta_pagemap_bytes(void);

/* ---- sizeclass.c --------------------------------------------------------- */
/* Classes: 16..256 by 16, then 8 per doubling up to 256 KiB, so a block wastes
 * under 12.5% of its size above 128 bytes and under 16 bytes below. */
typedef struct ta_class_info {
    uint32_t size;      /* object size in bytes */
    uint32_t pages;     /* pages per span */
    uint32_t batch;     /* objects moved between a thread cache and central at once */
    uint32_t objects;   /* objects per span */
    uint64_t div_magic; /* offset % size == 0  <=>  (uint32)offset * div_magic <= div_magic - 1 */
} ta_class_info_t;
extern ta_class_info_t ta_class[TA_MAX_CLASSES];
extern uint64_t ta_class_magic[TA_MAX_CLASSES]; /* div_magic, packed for the free fast path */
extern uint32_t ta_nclasses; /* classes are 1..ta_nclasses-1 */
extern uint8_t ta_class_small[(1024 >> 4) + 1];            /* (n+15)>>4, n <= 1024 */
extern uint8_t ta_class_large[((TA_MAX_SMALL - 1024) >> 7) + 1]; /* (n-1024+127)>>7 */
void ta_sizeclass_init(void);
static inline uint32_t ta_size_to_class(size_t n) {
    if (TA_LIKELY(n <= 1024)) return ta_class_small[(n + 15) >> 4];
    if (n <= TA_MAX_SMALL) return ta_class_large[(n - 1024 + 127) >> 7];
    return 0;
}
/* smallest class whose size is >= n and a multiple of align (align <= page), or 0 */
uint32_t ta_class_for_aligned(size_t n, size_t align);

/* ---- pageheap.c: tier 3 --------------------------------------------------- */
enum { TA_SPAN_FREE = 0, TA_SPAN_RELEASED = 1, TA_SPAN_INUSE = 2 };
typedef struct ta_span {
    uintptr_t page;          /* first page number (address >> TA_PAGE_SHIFT) */
    uintptr_t npages;
    struct ta_span *next, *prev; /* in a page-heap free list or a central span list */
    uint8_t state;           /* TA_SPAN_* */
    uint8_t cls;             /* size class, 0 for a large block */
    uint8_t zeroed;          /* large block known to be all zero (fresh or released pages) */
    uint8_t in_list;         /* central: on the nonempty list */
    uint32_t allocated;      /* small: objects handed out of this span */
    char *carve;             /* small: first object never handed out (objects end at
                              * page start + objects * size) */
    /* One record per span lives as long as the process (recycled, never
     * unmapped), so it is kept to 56 bytes: each field below is used by one
     * kind of span only. */
    union {
        uint64_t free_since_ms;  /* free spans: when they became free (decay) */
        void *freelist;          /* small spans in use: their freed objects */
        struct ta_srec *sample;  /* large blocks in use: sampled-allocation record (sample.c) or NULL */
    };
} ta_span_t;
static inline void *ta_span_addr(const ta_span_t *s) { return (void *)(s->page << TA_PAGE_SHIFT); }
static inline size_t ta_span_bytes(const ta_span_t *s) { return s->npages << TA_PAGE_SHIFT; }

void ta_pageheap_init(void);
/* A span of n pages (n >= 1) aligned to align_pages (a power of two), marked in use
 * with class cls (registered in the pagemap on every page when cls != 0, on the
 * first and last page otherwise). NULL when the OS refuses. */
ta_span_t *ta_pageheap_alloc(uintptr_t npages, uintptr_t align_pages, uint32_t cls);
/* A large span for a block that is growing (realloc): placed at the start of
 * the longest free span, so that ta_pageheap_grow can extend it in place. */
ta_span_t *ta_pageheap_alloc_growable(uintptr_t npages);
void ta_pageheap_free(ta_span_t *s);
/* free() of a pointer that is not a small block: validates it under the lock and
 * frees the large block; returns NULL, or what is wrong ("double free of"...). */
const char *ta_pageheap_free_large(void *p);
/* run the decay clock (called from slow paths) */
void ta_pageheap_tick(void);
/* Try to grow an in-use large span in place to n pages; true on success. */
bool ta_pageheap_grow(ta_span_t *s, uintptr_t npages);
/* Give the pages of in-use large span s beyond its first npages back to the
 * heap (untouched: nobody wrote them since the span was allocated). */
void ta_pageheap_shrink(ta_span_t *s, uintptr_t npages, bool untouched);
/* Release free pages to the OS: those free for at least decay_ms, or all when
 * all is true. Returns bytes released. */
size_t ta_pageheap_release(bool all);
typedef struct ta_pageheap_stats {
    uint64_t free_bytes;      /* free, still resident */
    uint64_t released_bytes;  /* free, returned to the OS */
    uint64_t inuse_bytes;     /* spans in use (small and large) */
    uint64_t large_bytes;     /* of which large blocks */
    uint64_t large_count;
    uint64_t n_alloc, n_free, n_grow_os, n_coalesce;
} ta_pageheap_stats_t;
void ta_pageheap_stats(ta_pageheap_stats_t *out);
/* The same with the lock already held (ta_pageheap_lock_all, for a consistent
 * snapshot of every tier); class_spans (TA_MAX_CLASSES entries, or NULL)
 * receives the number of in-use spans carved for each size class. */
void ta_pageheap_stats_locked(ta_pageheap_stats_t *out, uint64_t *class_spans);
void ta_pageheap_lock_all(void);   /* fork */
void ta_pageheap_unlock_all(bool child);

/* ---- central.c: tier 2 ---------------------------------------------------- */
/* Objects travel as singly-linked chains through their first word. */
void ta_central_init(void);
/* Up to `want` objects of class cls; returns how many (0 = out of memory) and
 * the chain in *head. */
uint32_t ta_central_alloc(uint32_t cls, uint32_t want, void **head, uint32_t shard);
/* Give back n objects chained from head. */
void ta_central_free(uint32_t cls, void *head, uint32_t n, uint32_t shard);
/* The same, straight into their spans, bypassing the transfer caches: for
 * caches that are going away (thread exit, trim), so whole spans can be freed. */
void ta_central_free_spans(uint32_t cls, void *head, uint32_t n);
/* Called from slow paths: once per decay period, half of every transfer cache
 * goes back to its spans. */
void ta_central_decay(void);
/* Move everything in the transfer caches back to spans (malloc_trim). */
void ta_central_drain(void);
typedef struct ta_central_stats {
    uint64_t transfer_bytes;  /* held in transfer caches */
    uint64_t span_free_bytes; /* free objects inside partly used spans */
    uint64_t hits, misses;    /* transfer-cache hits and span refills */
    uint64_t to_caches;       /* objects handed out by ta_central_alloc (cumulative) */
    uint64_t from_caches;     /* objects taken back by ta_central_free (cumulative) */
} ta_central_stats_t;
void ta_central_stats(uint32_t cls, ta_central_stats_t *out);
/* The same with every central lock already held (ta_central_lock_all). */
void ta_central_stats_locked(uint32_t cls, ta_central_stats_t *out);
void ta_central_lock_all(void);
void ta_central_unlock_all(bool child);

/* ---- pcache.c: tier 1 ----------------------------------------------------- */
/* A freed object keeps a guard word (its address mixed with a per-process key)
 * in its second word; free() sees it and reports a double free. */
typedef struct ta_list {
    void *head;
    uint32_t count; /* objects on the list */
    uint32_t max;   /* list length above which free() returns a batch */
} ta_list_t;
typedef struct ta_pcache {
    ta_list_t list[TA_MAX_CLASSES];
    uint64_t budget;          /* its current total budget */
    uint64_t committed;       /* sum over lists of max * size: never above budget */
    uint32_t shard;           /* central shard this thread uses */
    uint32_t steal_next;      /* next list to take capacity from when the budget is spent */
    uint64_t scavenged_ms;    /* when idle lists were last trimmed */
    uint8_t active[TA_MAX_CLASSES]; /* list missed or overflowed since then */
    uint32_t state;           /* TA_PC_* */
    struct ta_pcache *next_all, *prev_all; /* registry of live caches (stats) */
    uint64_t n_alloc_miss, n_free_miss;    /* slow-path counts */
} ta_pcache_t;
enum { TA_PC_EMPTY = 0, TA_PC_LIVE = 1, TA_PC_DEAD = 2 };
/* The calling thread's state that the malloc fast path reads: its cache, and
 * the byte countdown to the next sampled allocation (sample.c).  One TLS
 * block, so both are reached through a single %fs-relative address and the
 * countdown costs the fast path one sub-and-branch. */
typedef struct ta_tls {
    ta_pcache_t *cache;
    int64_t sample_left; /* bytes still to allocate before the next sample (< 0: take the slow path) */
} ta_tls_t;
extern __thread ta_tls_t ta_tls;
#define ta_tls_cache (ta_tls.cache)
extern uintptr_t ta_guard_key;
static inline uintptr_t ta_guard(const void *p) { return (uintptr_t)p ^ ta_guard_key; }

void ta_pcache_init(void);
void *ta_pcache_alloc_slow(uint32_t cls);          /* refill, then allocate */
void ta_pcache_free_slow(void *p, uint32_t cls);   /* overflow: flush a batch */
void ta_pcache_flush_current(void);                /* empty the calling thread's cache */
void ta_pcache_thread_exit(void *arg);
uint64_t ta_pcache_bytes(uint32_t cls_or_all);     /* bytes held in all caches (approximate) */
typedef struct ta_pcache_stats {
    uint64_t objects[TA_MAX_CLASSES]; /* objects on the lists of all live caches (read racily) */
    uint64_t alloc_misses, free_misses; /* slow-path counts, exited threads included */
    uint64_t caches;                    /* live caches */
} ta_pcache_stats_t;
/* Sum over the live caches; the caller holds the registry lock (ta_pcache_lock_all). */
void ta_pcache_stats_locked(ta_pcache_stats_t *out);
void ta_pcache_lock_all(void);
void ta_pcache_unlock_all(bool child);

/* ---- stats.c -------------------------------------------------------------- */
/* A consistent snapshot of every tier, as the public struct ta_stats
 * (include/tieralloc.h documents the fields and the identity they obey).
 * Takes the pcache registry, central, page heap and metadata locks at once,
 * in the fork order; allocates nothing. */
struct ta_stats;
void ta_snapshot(struct ta_stats *st);
struct mallinfo2;
void ta_stats_mallinfo(struct mallinfo2 *mi);
void ta_stats_write_text(int fd);          /* the TIERALLOC_STATS=1 report */
struct _IO_FILE;
int ta_stats_write_xml(struct _IO_FILE *fp);
void ta_stats_at_start(void);              /* notes stderr for the reports at exit (ta_cfg) */

/* ---- sample.c: sampled allocations, hooks, heap profiles ------------------- */
/* A per-thread byte countdown (ta_tls.sample_left) picks allocations as a
 * Poisson process of mean TIERALLOC_SAMPLE_BYTES.  A picked small allocation
 * is served as its own page-heap span (pagemap info 0), so free() of it
 * reaches ta_free_slow without any test on the fast path. */
void ta_sample_init(void);
/* The countdown went below zero after an allocation of n bytes: restart it.
 * True if this allocation is to be sampled. */
bool ta_sample_tick(size_t n);
void ta_sample_thread_exit(void); /* count the bytes of the thread's last step */
/* Record the sampled block p (the start of a large span) of n requested bytes;
 * frame is the frame address of the allocator function that made it (the stack
 * is walked from there). Calls the alloc hook. */
void ta_sample_record(void *p, size_t n, void *frame);
/* Live sampled blocks (free() checks it before looking for a record). */
extern uint64_t ta_sample_live;
/* free() of a block that may be sampled: calls the free hook and drops its record. */
void ta_sample_free(void *p);
void ta_sample_counts(uint64_t *rate, uint64_t *total, uint64_t *live, uint64_t *live_bytes,
                      uint64_t *allocated_bytes);
/* Write the heap profile to fd (legacy gperftools text format); 0 or -1. */
int ta_profile_write_fd(int fd);
/* Open a report file for writing: path with %p replaced by the pid.  The
 * last component is never followed as a symlink (O_NOFOLLOW), the descriptor
 * is O_CLOEXEC, and a file is never truncated unless the process owns it: a
 * new file is created (O_CREAT|O_EXCL, mode 0644 less the umask); an existing
 * one is rewritten only if it is a regular file owned by the effective uid,
 * else -1 with errno EPERM.  -1 with errno on any failure. */
int ta_open_report(const char *path);
void ta_sample_lock_all(void);   /* fork */
void ta_sample_unlock_all(bool child);

/* ---- api.c --------------------------------------------------------------- */
extern volatile int ta_inited;
void ta_init_slow(void);
static inline void ta_ensure_init(void) {
    if (TA_UNLIKELY(!ta_inited)) ta_init_slow();
}
/* A large block: a span of its own; counts against the sampling countdown. */
void *ta_alloc_large(size_t size, size_t align, bool zero);
void ta_free_slow(void *p);

/* ---- arena.c: tier 0, the scoped stack arena ------------------------------ */
/* Arena chunks are page-heap spans taken with class 0 (so the page heap counts
 * them among its large blocks: ph.large_bytes / large_count include
 * ta_arena_stats().held_bytes / held_chunks) and then marked with this
 * reserved class while a thread holds them; every page of a chunk maps to its
 * span with info 0, so free() of a scoped pointer reaches ta_free_slow. */
#define TA_SPAN_ARENA 0xff
/* The chunk span p points into, or NULL when p is not in an arena chunk. */
static inline ta_span_t *ta_arena_span(const void *p) {
    uintptr_t page = (uintptr_t)p >> TA_PAGE_SHIFT;
    if (ta_pagemap_info(page)) return NULL;
    ta_span_t *s = ta_pagemap_span(page);
    if (!s || s->cls != TA_SPAN_ARENA || s->state != TA_SPAN_INUSE || page < s->page ||
        page - s->page >= s->npages)
        return NULL;
    return s;
}
/* free() of a pointer that may be scoped: false if it is not in an arena
 * chunk; true if it is a live scoped block (nothing to do); aborts with a
 * diagnostic naming p when its scope has ended or p is not a block start. */
bool ta_arena_free(void *p);
/* For p with ta_arena_span(p) != NULL; both abort like ta_arena_free. */
size_t ta_arena_usable_size(const void *p);
void *ta_arena_realloc(void *p, size_t n); /* a heap copy; p stays in its scope */
int ta_arena_owns(const void *p);          /* a live scoped block (never aborts) */
typedef struct ta_arena_stats {
    uint64_t held_bytes;      /* chunks held by all threads (in use and spare) */
    uint64_t held_chunks;
    uint64_t spare_bytes;     /* of which kept for reuse, not in any scope */
    uint64_t n_chunks_from_heap, n_chunks_to_heap, n_chunks_reused;
    uint64_t n_big;           /* blocks too big for a chunk, given their own */
} ta_arena_stats_t;
void ta_arena_stats(ta_arena_stats_t *out);
uint64_t ta_arena_bytes(void); /* = held_bytes */
/* malloc_trim: the calling thread's spare chunks go back to the page heap
 * (other threads' arenas are theirs alone; they go back when those exit) */
void ta_arena_trim_current(void);

#endif
