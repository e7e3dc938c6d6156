/* tieralloc: a tiered, TCMalloc-style memory allocator for Linux/glibc.
 *
 * Loading libtieralloc (LD_PRELOAD or linking -ltieralloc) replaces every glibc
 * allocation entry point (malloc, free, calloc, realloc, memalign, ... and the
 * C++ operators new/delete).  The functions below are the same operations under
 * a ta_ prefix; they work whether or not the standard names are overridden.
 *
 * Errors follow glibc: impossible sizes give NULL with errno ENOMEM; bad
 * alignments give EINVAL (posix_memalign returns it); heap misuse that can be
 * seen (double free, free of a pointer tieralloc never returned, interior
 * pointers) aborts with one line on stderr naming the address, e.g.
 *   tieralloc: double free of 0x7f12345678a0
 */
#ifndef TIERALLOC_H
#define TIERALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h> /* FILE, for ta_stats_print */

#ifdef __cplusplus
extern "C" {
#endif

#define TIERALLOC_VERSION_MAJOR 0
#define TIERALLOC_VERSION_MINOR 1
#define TIERALLOC_VERSION "0.1.0"

/* ---- the standard operations, prefixed ---------------------------------- */
void *ta_malloc(size_t size);
void ta_free(void *p);
void *ta_calloc(size_t n, size_t size);
void *ta_realloc(void *p, size_t size);
void *ta_reallocarray(void *p, size_t n, size_t size);
void *ta_memalign(size_t alignment, size_t size);       /* rounds a non-power-of-two alignment up */
int ta_posix_memalign(void **out, size_t alignment, size_t size);
void *ta_aligned_alloc(size_t alignment, size_t size);  /* EINVAL unless alignment is a power of two */
void *ta_valloc(size_t size);                           /* page aligned */
void *ta_pvalloc(size_t size);                          /* page aligned, size rounded up to pages */
size_t ta_malloc_usable_size(void *p);                  /* real size of the block; 0 for NULL */
void ta_free_sized(void *p, size_t size);               /* C23; the size is a hint (ignored: the pagemap knows) */
void ta_free_aligned_sized(void *p, size_t alignment, size_t size);

/* Return every free page to the OS now (flushes the calling thread's cache and
 * the central caches first).  Returns 1 if any memory was released, else 0. */
int ta_malloc_trim(size_t pad);

/* 1 if p is the start of a live block that tieralloc handed out, else 0
 * (never aborts: a diagnostic aid). */
int ta_owns(const void *p);

/* ---- statistics -----------------------------------------------------------
 * ta_stats_get() fills a snapshot of every tier, taken with all of the
 * allocator's locks held at once (a pause of some microseconds for every
 * thread that needs a lock meanwhile), so the figures are consistent.
 *
 * Units.  A small block (<= 256 KiB) counts at the size of its size class, a
 * large block at its span, a whole number of 8 KiB pages; "bytes" fields are
 * current amounts, "_total" fields count since the start of the process.
 *
 * The identity.  Every byte tieralloc has mapped and not handed back to the OS
 * is in exactly one place:
 *
 *   mapped_bytes - released_bytes ==
 *       inuse_bytes                  blocks the program holds (small + large)
 *     + thread_cache_bytes           free blocks in per-thread caches
 *     + central_bytes                free blocks in central transfer caches
 *     + span_free_bytes              free blocks inside spans of size classes
 *     + span_tail_bytes              span ends too short for another block
 *     + pageheap_free_bytes          free pages still resident
 *     + arena_bytes                  scoped-arena chunks (tier 0)
 *     + metadata_bytes               span records, caches, pagemap, samples
 *
 * It holds exactly in every snapshot, even while other threads allocate.  The
 * split between inuse_bytes and thread_cache_bytes is exact once the other
 * threads are quiet: a running thread's cache is read without stopping it
 * (blocks on their way between a cache and central count as in use).  Per
 * size class, spans * span_bytes == (inuse + cache + central + span_free) *
 * size + tail_bytes.
 *
 * Versioning.  Set size to sizeof(struct ta_stats) before the call (TA_STATS_INIT
 * or ta_stats_read does); the library fills at most that many bytes and sets
 * version and size to what it filled.  New fields are only ever added at the
 * end, so a program built against an older header keeps working. */
#define TA_STATS_VERSION 1
#define TA_STATS_CLASSES 128

struct ta_class_stats {
    uint64_t size;              /* block size of the class */
    uint64_t span_bytes;        /* bytes in one span of the class */
    uint64_t objects_per_span;
    uint64_t spans;             /* spans carved for the class now */
    uint64_t inuse_objects;     /* blocks the program holds */
    uint64_t inuse_bytes;       /* = inuse_objects * size */
    uint64_t cache_objects;     /* free, in thread caches */
    uint64_t central_objects;   /* free, in central transfer caches */
    uint64_t span_free_objects; /* free, inside spans (including never used) */
    uint64_t tail_bytes;        /* spans * (span_bytes - objects_per_span * size) */
    uint64_t to_caches_total;   /* blocks central handed to thread caches */
    uint64_t from_caches_total; /* blocks thread caches gave back */
    uint64_t transfer_hits_total, transfer_misses_total; /* batch refills served / not by a transfer cache */
};

struct ta_stats {
    uint32_t version;             /* TA_STATS_VERSION of the library */
    uint32_t size;                /* in: room in the struct; out: bytes filled */
    /* where the memory is (bytes, now) */
    uint64_t mapped_bytes;        /* mapped from the OS */
    uint64_t released_bytes;      /* free pages given back to the OS (mapped, not resident) */
    uint64_t inuse_bytes;         /* = small_inuse_bytes + large_inuse_bytes */
    uint64_t small_inuse_bytes;
    uint64_t large_inuse_bytes;   /* includes sampled small blocks: each has a span of its own */
    uint64_t large_inuse_blocks;
    uint64_t thread_cache_bytes;
    uint64_t central_bytes;
    uint64_t span_free_bytes;
    uint64_t span_tail_bytes;
    uint64_t pageheap_free_bytes;
    uint64_t arena_bytes;
    uint64_t metadata_bytes;
    /* activity (counts since the start) */
    uint64_t allocated_bytes_total;   /* bytes requested from malloc and friends; each thread adds
                                         its count every sampling interval (and at exit), so other
                                         running threads' last partial interval is not in it yet */
    uint64_t cache_alloc_misses_total;/* mallocs that found their thread cache list empty (refills) */
    uint64_t cache_free_misses_total; /* frees that found it full (a batch went to central) */
    uint64_t transfer_hits_total, transfer_misses_total;
    uint64_t pageheap_allocs_total, pageheap_frees_total;
    uint64_t pageheap_grows_total;    /* times the page heap asked the OS for memory */
    uint64_t pageheap_coalesces_total;
    uint64_t os_mmap_total, os_munmap_total, os_madvise_total; /* system calls */
    uint64_t os_released_bytes_total; /* bytes given back with madvise, in all */
    uint64_t threads;                 /* threads with a cache now */
    /* sampling (TIERALLOC_SAMPLE_BYTES) */
    uint64_t sample_rate;             /* mean bytes between samples; 0 = sampling off */
    uint64_t samples_total;           /* allocations sampled */
    uint64_t sampled_live_blocks;     /* sampled blocks not freed yet */
    uint64_t sampled_live_bytes;      /* their requested bytes */
    /* per size class: cls[1 .. nclasses-1]; cls[0] is unused */
    uint32_t nclasses;
    uint32_t reserved_;
    struct ta_class_stats cls[TA_STATS_CLASSES];
};
#ifndef __cplusplus
#define TA_STATS_INIT {.version = TA_STATS_VERSION, .size = (uint32_t)sizeof(struct ta_stats)}
#endif

/* 0 on success; -1 with EINVAL if st is NULL or st->size < 8. */
int ta_stats_get(struct ta_stats *st);
/* The usual call: the whole struct as this header declares it. */
static __inline__ int ta_stats_read(struct ta_stats *st) {
    st->size = (uint32_t)sizeof *st;
    return ta_stats_get(st);
}

/* Write a snapshot to fp: TA_STATS_TEXT is a readable report (a table per tier
 * and one row per size class in use), TA_STATS_JSON one JSON object (the fields
 * of struct ta_stats, classes as an array).  The text is formatted in stack
 * buffers, without malloc.  0, or -1 if writing failed. */
#define TA_STATS_TEXT 0
#define TA_STATS_JSON 1
int ta_stats_print(FILE *fp, int flags);

/* Environment: TIERALLOC_STATS=1 prints the text report to stderr at exit;
 * TIERALLOC_STATS=json:PATH writes the JSON to PATH at exit (%p in PATH is
 * replaced by the process id).  Both are written with write(2), no malloc. */

/* ---- sampled allocations: hooks and heap profiles ---------------------------
 * Each thread counts down the bytes it allocates; when the count runs out, the
 * allocation that crossed it is sampled and a new count is drawn from an
 * exponential distribution of mean TIERALLOC_SAMPLE_BYTES (default 524288, as
 * Go's MemProfileRate; 0 turns sampling off).  An allocation of n bytes is
 * thus sampled with probability 1 - exp(-n / rate), and stands for
 * weight = 1 / (1 - exp(-n / rate)) allocations like it.  The cost when nothing
 * is sampled is one subtraction and branch per malloc.
 *
 * Samples are recorded only once somebody looks: when TIERALLOC_PROFILE or
 * TIERALLOC_SAMPLE_BYTES is set in the environment, or from the first
 * ta_hooks_set() with a hook.  Until then the countdown only counts bytes, so a
 * program that asks for nothing pays the subtraction and nothing else
 * (ta_profile_dump then writes an empty profile).
 *
 * A sampled block is recorded with its size and call stack (return addresses,
 * read by following frame pointers: frames of code built without them are
 * skipped or end the stack).  The hooks set with ta_hooks_set() are called on
 * the allocating thread right after a sampled allocation, and on the freeing
 * thread just before a sampled block is freed; they run without allocator locks
 * and may call malloc and free (allocations made inside a hook are not
 * sampled).  event->stack is valid for the life of the process.
 *
 * TIERALLOC_PROFILE=PATH writes the heap profile of the live sampled blocks at
 * exit (%p = pid); ta_profile_dump(path) writes it now.  The profile is in the
 * legacy gperftools text format ("heap profile: ... @ heapprofile", then
 * MAPPED_LIBRARIES), with every count already scaled by the weights, so it
 * estimates the whole heap:  google-pprof --text PROGRAM PATH. */
struct ta_sample_event {
    void *ptr;             /* the block */
    size_t size;           /* bytes requested */
    double weight;         /* allocations this sample stands for */
    uint32_t depth;        /* entries in stack */
    void *const *stack;    /* return addresses, innermost first (the caller of malloc first) */
};
struct ta_hooks {
    void (*on_alloc)(const struct ta_sample_event *event, void *arg); /* or NULL */
    void (*on_free)(const struct ta_sample_event *event, void *arg);  /* or NULL */
    void *arg;
};
/* Replace the hooks (NULL removes them); the previous ones go to *old when old
 * is not NULL.  Returns 0. */
int ta_hooks_set(const struct ta_hooks *hooks, struct ta_hooks *old);
/* Write the heap profile to path (%p = pid).  0, or -1 with errno. */
int ta_profile_dump(const char *path);

/* ---- the scoped stack arena (tier 0) -------------------------------------
 * Memory that does not outlive a piece of work, without a free per object: open
 * a scope, allocate in it by bumping a pointer, and release everything at once
 * when the scope ends.  Each thread has its own stack of scopes.
 *
 *   void handle(const char *req) {
 *       TA_SCOPE;                                  // ends when the block is left
 *       struct node *tree = parse(req);            // parse uses ta_scope_alloc
 *       struct result *r = ta_escape(build(tree)); // a heap copy that outlives it
 *       publish(r);                                // ...freed later with free()
 *   }                                              // the tree goes here, in O(1)
 *
 * ta_scope_begin() opens a scope and returns its mark; ta_scope_end(mark)
 * releases every block allocated since (in this scope and in the scopes nested
 * in it, which it closes too) in O(1).  Scopes nest; ending a scope that is not
 * open (ended twice, or begun by another thread) aborts with a diagnostic.
 *
 * ta_scope_alloc(n) gives n bytes, 16-byte aligned, from the innermost open
 * scope of the calling thread.  With no scope open it falls back to the heap
 * (ta_malloc), so library code may use it without knowing whether its caller
 * opened a scope; it then frees the block with free(), which is right in both
 * cases.  ta_scope_alloc_aligned(alignment, n) takes any power-of-two alignment
 * (EINVAL otherwise); ta_scope_calloc(n, size) zeroes and checks n*size for
 * overflow (ENOMEM).  Impossible sizes give NULL with errno ENOMEM.
 *
 * Blocks and the heap:
 *  - free(p) of a scoped block is a no-op while its scope is open;
 *  - realloc(p, n) moves it to the heap (the old block stays until its scope
 *    ends), and malloc_usable_size(p) answers for it;
 *  - ta_escape(p) copies a scoped block to a new heap block and returns it (or
 *    NULL and ENOMEM), or returns p unchanged when p is not scoped;
 *  - free, realloc, malloc_usable_size or ta_escape of a scoped pointer after
 *    its scope ended abort with one line naming the address, e.g.
 *      tieralloc: free of scoped pointer 0x7f...: it was released when its scope ended
 *    whenever that can be seen: the memory is no longer in a scope, or lies past
 *    the current end of an open one, or its header names an ended scope.  (Once
 *    a later scope has put a block at that very address, it cannot be told.)
 * Memory comes in chunks from the page heap (64 KiB, doubling up to 4 MiB;
 * requests over 1 MiB get a chunk of their own); chunks are reused across
 * scopes, up to 4 MiB of spare chunks are kept per thread (malloc_trim gives
 * back the calling thread's), and a thread's chunks go back when it exits.
 * A scope may be left by longjmp: ending an outer scope ends the inner ones.
 * Each block costs 8 bytes of header (its size and its scope) on top of the
 * 16-byte rounding. */
typedef struct ta_scope {
    void *pos_;   /* private: where the scope began */
    uint64_t id_; /* private: serial and depth */
} ta_scope_t;

ta_scope_t ta_scope_begin(void);
void ta_scope_end(ta_scope_t mark);
unsigned ta_scope_depth(void); /* scopes open in this thread; 0 = allocations go to the heap */
void *ta_scope_alloc(size_t size);
void *ta_scope_alloc_aligned(size_t alignment, size_t size);
void *ta_scope_calloc(size_t n, size_t size);
void *ta_escape(void *p);

/* TA_SCOPE; opens a scope that ends when the enclosing block is left in any
 * way: its end, break, continue, return or goto (the cleanup attribute; not
 * longjmp, see above).  Several in one block nest. */
static __inline__ void ta_scope_cleanup_(ta_scope_t *mark) { ta_scope_end(*mark); }
#define TA_SCOPE_CAT2_(a, b) a##b
#define TA_SCOPE_CAT_(a, b) TA_SCOPE_CAT2_(a, b)
#define TA_SCOPE                                                                       \
    ta_scope_t TA_SCOPE_CAT_(ta_scope_mark_, __COUNTER__)                              \
        __attribute__((cleanup(ta_scope_cleanup_), unused)) = ta_scope_begin()

/* The fast path of ta_scope_alloc, inline: a bump of the calling thread's
 * cursor.  Private layout; define TA_SCOPE_NO_INLINE to call the library
 * instead (e.g. when libtieralloc may be absent at run time). */
typedef struct ta_scope_cursor {
    char *ptr;    /* next block header (= 8 mod 16); NULL when no scope is open */
    char *end;    /* end of the current chunk */
    uint64_t tag; /* the scope's tag, kept in each block's header */
} ta_scope_cursor_t;
void *ta_scope_alloc_slow(size_t size); /* private: what the inline path does not do */
#if defined(__GNUC__) && !defined(TA_SCOPE_NO_INLINE)
extern __thread ta_scope_cursor_t ta_scope_cur __attribute__((tls_model("initial-exec")));
extern __inline__ __attribute__((gnu_inline, always_inline)) void *ta_scope_alloc(size_t size) {
    ta_scope_cursor_t *c = &ta_scope_cur;
    size_t need = (size + 23) & ~(size_t)15; /* an 8-byte header, 16-byte alignment */
    char *h = c->ptr;
    if (__builtin_expect(need > size && need <= (size_t)(c->end - h), 1)) {
        c->ptr = h + need;
        *(uint64_t *)(void *)h = (uint64_t)size << 32 | c->tag;
        return h + 8;
    }
    return ta_scope_alloc_slow(size);
}
#endif

#ifdef __cplusplus
}
#endif
#endif
