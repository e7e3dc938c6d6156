/* api.c: the ta_* entry points (include/tieralloc.h) and the policies behind
 * them: large blocks, alignment, realloc, the one pointer classifier every
 * slow path uses.  The standard names are in override.c; process start and
 * fork in init.c.  Both fast paths are inline, in api.h. */
#include "api.h"

#include <string.h>

#include "tieralloc.h"

#define OS_PAGE 4096 /* valloc/pvalloc promise the OS page */

void *ta_fail_nomem(void) {
    errno = ENOMEM;
    return NULL;
}

TA_COLD static void bad_pointer(const char *what, const void *p) { ta_fatal("%s %p", what, p); }

/* ---- what a pointer is ----------------------------------------------------- */
typedef enum {
    PTR_FOREIGN,   /* not tieralloc's (or never handed out) */
    PTR_SMALL,     /* a live block of a size class */
    PTR_LARGE,     /* the start of a live block with a span of its own (large or sampled) */
    PTR_SCOPED,    /* inside a scoped-arena chunk */
    PTR_INTERIOR,  /* inside a block, not at its start */
    PTR_FREED,     /* a block that is free */
} ptr_kind_t;

typedef struct {
    ptr_kind_t kind;
    uint32_t cls;    /* PTR_SMALL */
    ta_span_t *span; /* PTR_LARGE, PTR_SCOPED */
} ptr_class_t;

/* One pagemap lookup says what p is (info: its pagemap word, already read by
 * the caller); every slow path acts on the answer. */
static ptr_class_t classify_info(const void *p, uint64_t info) {
    ptr_class_t r = {PTR_FOREIGN, 0, NULL};
    uintptr_t page = (uintptr_t)p >> TA_PAGE_SHIFT;
    if (info) {
        uint32_t cls = TA_INFO_CLASS(info);
        bool start;
        uint32_t idx = ta_object_index(ta_info_offset(p, info), cls, &start);
        if (!start) r.kind = PTR_INTERIOR;
        else if (idx >= ta_class[cls].objects) r.kind = PTR_FOREIGN; /* the span's tail */
        else if (ta_state_get(ta_info_states(info) + idx) != TA_OBJ_LIVE) r.kind = PTR_FREED;
        else r.kind = PTR_SMALL, r.cls = cls;
        return r;
    }
    ta_span_t *s = ta_pagemap_span(page);
    if (!s || !s->npages || page < s->page || page - s->page >= s->npages) return r;
    r.span = s;
    if (s->state != TA_SPAN_INUSE) r.kind = PTR_FREED;
    else if (s->cls == TA_SPAN_ARENA) r.kind = PTR_SCOPED;
    else if (TA_GUARD_PAGES && s->cls && page == s->page + s->npages - 1) r.kind = PTR_FOREIGN; /* its guard */
    else if (s->cls) r.kind = PTR_FREED; /* a page of a small span since freed */
    else r.kind = ta_span_addr(s) == p ? PTR_LARGE : PTR_INTERIOR;
    return r;
}

static ptr_class_t classify(const void *p) { return classify_info(p, ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT)); }

/* The diagnostic for a pointer that op (NULL: free) cannot take. */
TA_COLD static void bad_class(ptr_kind_t k, const void *p, const char *op) {
    char what[96];
    const char *tail = k == PTR_INTERIOR ? "an interior pointer:"
                       : k == PTR_FREED  ? "freed pointer"
                                         : "a pointer tieralloc never returned:";
    if (!op) bad_pointer(k == PTR_FREED ? "double free of" : k == PTR_INTERIOR ? "free of an interior pointer:"
                                                                              : "free of a pointer tieralloc never returned:",
                         p);
    ta_format(what, sizeof what, "%s of %s", op, tail);
    bad_pointer(what, p);
}

/* Size of the live block at p; aborts naming op when p is not one. */
static size_t block_size(const void *p, ptr_class_t c, const char *op) {
    switch (c.kind) {
    case PTR_SMALL: return ta_class[c.cls].size;
    case PTR_LARGE: return ta_span_usable(c.span); /* up to the guard page in the hardened build */
    case PTR_SCOPED: return ta_arena_usable_size(p, c.span);
    default:
        if (c.kind == PTR_FOREIGN && ta_boot_size(p)) return ta_boot_size(p);
        bad_class(c.kind, p, op);
    }
    return 0;
}

/* ---- large blocks ---------------------------------------------------------- */
/* The large block this thread's realloc last made, kept or grew, and its span
 * record: a buffer grown step by step comes back at once, and the pagemap's
 * span word for its page and a check of the record answer what the pagemap
 * entry, the state byte and the classifier would (realloc below). */
static __thread struct realloc_last {
    void *p;
    ta_span_t *s;
} realloc_last __attribute__((tls_model("initial-exec")));

/* The record of realloc_last when p is still its block: the pagemap names it
 * for p's page first (p is live, so its page's entry and record stay as they
 * are while realloc runs; a record freed or reused since, perhaps being
 * written by another thread right now, is never read), then it is in use, a
 * large block's, starting at p.  NULL otherwise. */
TA_ALWAYS_INLINE ta_span_t *realloc_last_of(const void *p) {
    if (p != realloc_last.p) return NULL;
    ta_span_t *s = realloc_last.s;
    if (ta_pagemap_span_at((uintptr_t)p) != s) return NULL;
    return ta_span_addr(s) == p && s->state == TA_SPAN_INUSE && !s->cls && s->npages ? s : NULL;
}

/* A large block; growable: it is being grown by realloc (see ta_pageheap_alloc_growable). */
TA_ALWAYS_INLINE void *alloc_span_for(size_t size, size_t align, bool zero, bool growable) {
    if (!ta_ensure_init()) return ta_boot_alloc(size, align);
    if (size > TA_MAX_REQUEST || align > TA_MAX_REQUEST) return ta_fail_nomem();
    uintptr_t npages = (size + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT;
    if (!npages) npages = 1;
    uintptr_t align_pages = align > TA_PAGE_SIZE ? align >> TA_PAGE_SHIFT : 1;
    ta_span_t *s = growable           ? ta_pageheap_alloc_growable(npages)
                   : align_pages == 1 ? ta_pageheap_alloc_large(npages)
                                      : ta_pageheap_alloc(npages, align_pages, 0);
    if (!s) return ta_fail_nomem();
    void *p = ta_span_addr(s);
    if (growable) realloc_last = (struct realloc_last){p, s};
    if (zero && !s->zeroed) memset(p, 0, size);
    ta_background_kick(); /* no lock held, a malloc: see init.c */
    return p;
}

static void *alloc_span(size_t size, size_t align, bool zero) { return alloc_span_for(size, align, zero, false); }

/* sampling of large block p (NULL: none) of size bytes: the same countdown as
 * the small fast path (inline: the stack is the caller's) */
TA_ALWAYS_INLINE void *large_sampled(void *p, size_t size) {
    if (p && TA_UNLIKELY((ta_tls.sample_left -= (int64_t)size) < 0) && ta_sample_tick(size))
        ta_sample_record(p, size, __builtin_frame_address(0));
    return p;
}

void *ta_alloc_large(size_t size, size_t align, bool zero) {
    void *p = alloc_span(size, align, zero);
    if (TA_UNLIKELY(ta_trace_on)) { /* no sampling while tracing */
        ta_trace_alloc(TA_TR_MALLOC, p, size, 0);
        return p;
    }
    return large_sampled(p, size);
}

/* ta_malloc_large's rare part: the background thread to start, or the
 * sampling countdown (already decremented by n) ran out.  The sampling first:
 * the thread's start allocates, which would restart the countdown */
TA_NOINLINE static void *malloc_large_rare(void *p, size_t n) {
    if (ta_tls.sample_left < 0 && ta_sample_tick(n)) ta_sample_record(p, n, __builtin_frame_address(0));
    ta_background_kick();
    return p;
}

/* malloc(n) of a large block (n > TA_MAX_SMALL): when initialised, not
 * tracing and n is a size the heap may serve, straight to the page heap */
void *ta_malloc_large(size_t n) {
    if (TA_UNLIKELY(!ta_inited || ta_trace_on || n > TA_MAX_REQUEST)) return ta_alloc_large(n, 0, false);
    ta_span_t *s = ta_pageheap_alloc_large((n + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT);
    if (TA_UNLIKELY(!s)) return ta_fail_nomem();
    void *p = ta_span_addr(s);
    /* the sampling countdown, as on the small fast path; the background
     * kick's test (no lock held, a malloc: see init.c) */
    if (TA_UNLIKELY((ta_tls.sample_left -= (int64_t)n) < 0 || ta_background_unstarted()))
        return malloc_large_rare(p, n);
    return p;
}

/* ---- small blocks: the slow paths ------------------------------------------ */
TA_NOINLINE void *ta_alloc_small_slow(size_t n, uint32_t cls) {
    if (!ta_ensure_init()) return ta_boot_alloc(n, TA_ALIGN);
    if (TA_UNLIKELY(ta_trace_on) && ta_tls.sample_left >= 0) return ta_alloc_sample_slow(n, cls); /* malloc(0) */
    if (!cls) cls = ta_size_to_class(n); /* tables were empty before init */
    uint8_t *state;
    void *p = ta_fe_pop(cls, &state); /* the cache may be another one now */
    if (!p) p = ta_pcache_alloc_slow(cls);
    if (!p) return ta_fail_nomem();
    TA_ASSERT(ta_obj_cached_state(ta_state_get(ta_state_of(p, cls)))); /* tier 1 hands out free objects only */
    ta_state_set(ta_state_of(p, cls), TA_OBJ_LIVE);
    return p;
}

/* The sampling countdown ran out (or this thread has not started it yet).  A
 * sampled block gets a span of its own: its pagemap info is 0, so free() finds
 * it on the slow path it already takes for large blocks. */
TA_NOINLINE void *ta_alloc_sample_slow(size_t n, uint32_t cls) {
    if (!ta_ensure_init()) return ta_boot_alloc(n, TA_ALIGN);
    if (!cls) cls = ta_size_to_class(n); /* tables were empty before init */
    if (TA_UNLIKELY(ta_trace_on)) { /* the countdown stays negative: every malloc comes here */
        ta_tls.sample_left = INT64_MIN / 4;
        void *p = ta_alloc_small_slow(n, cls);
        ta_trace_alloc(TA_TR_MALLOC, p, n, 0);
        return p;
    }
    if (ta_fe_percpu) ta_pcache_note_user();
    if (ta_sample_tick(n)) {
        void *p = alloc_span(n, 0, false);
        if (p) {
            ta_sample_record(p, n, __builtin_frame_address(0));
            return p;
        }
    }
    uint8_t *state;
    void *p = ta_fe_pop(cls, &state);
    if (TA_UNLIKELY(!p)) return ta_alloc_small_slow(n, cls);
    ta_state_set(state, TA_OBJ_LIVE);
    return p;
}

/* ta_free_slow but for the start of a large block, unsampled and not traced */
TA_NOINLINE static void free_classified(void *p, uint64_t info) {
    if (!p) return;
    ptr_class_t c = classify_info(p, info);
    switch (c.kind) {
    case PTR_SMALL: { /* a live block (a race moved it off the fast path) */
        ta_free_small(p, ta_state_of(p, c.cls), c.cls);
        return;
    }
    case PTR_SCOPED:
        ta_arena_free(p, c.span); /* a no-op while its scope is open; aborts after */
        return;
    case PTR_LARGE: {
        if (TA_UNLIKELY(ta_trace_on)) ta_trace_free(p);
        if (c.span->sample) ta_sample_free(p, c.span); /* the free hook */
        const char *err = ta_pageheap_free_large(c.span, p);
        if (err) bad_pointer(err, p);
        return;
    }
    default:
        if (c.kind == PTR_FOREIGN && ta_boot_size(p)) return; /* made during init: kept */
        bad_class(c.kind, p, NULL);
    }
}

TA_NOINLINE void ta_free_slow(void *p, uint64_t info) {
    if (!info && p) { /* the start of a large block, unsampled and not traced: no classifying */
        ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
        if (s && s->state == TA_SPAN_INUSE && !s->cls && !s->sample && ta_span_addr(s) == p &&
            TA_LIKELY(!ta_trace_on)) {
            ta_pageheap_free_large_or_abort(s, p); /* (checks again under the lock) */
            return;
        }
    }
    free_classified(p, info);
}

/* the calls that are not malloc or free, recorded as themselves when tracing */
#define TRACED(call) \
    do { \
        if (TA_UNLIKELY(ta_trace_on) && !ta_trace_busy) return call; \
    } while (0)

/* ---- internal allocation, for tier 0 ----------------------------------------- */
void *ta_heap_alloc(size_t n, size_t align, bool zero) {
    if (zero) return ta_impl_calloc(n, 1); /* (zeroed blocks are asked for unaligned only) */
    return align > TA_ALIGN ? ta_alloc_aligned(align, n) : ta_do_malloc(n);
}

/* ---- the public operations ------------------------------------------------ */
TA_EXPORT TA_HOT_ENTRY void *ta_malloc(size_t n) { return ta_do_malloc(n); }
TA_EXPORT TA_HOT_ENTRY void ta_free(void *p) { ta_do_free(p); }

void *ta_impl_calloc(size_t n, size_t size) {
    TRACED(ta_trace_calloc(n, size));
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return ta_fail_nomem();
    return ta_do_alloc(total, true);
}

static void *realloc_move(void *p, size_t old, size_t n) {
    void *q = ta_do_malloc(n);
    if (!q) return NULL; /* errno is ENOMEM; p is untouched */
    memcpy(q, p, old < n ? old : n);
    ta_do_free(p);
    return q;
}

/* Below this a block belongs in a size class; growing past it, a block leaves
 * the classes for a span of its own that can grow in place. */
#define REALLOC_SPAN_MIN ((size_t)2 << 10)
#define REALLOC_SLACK ((size_t)128 << 10)
/* From this size a large block that must move to grow moves its pages
 * instead of its bytes (four system calls, against a copy and a fault per
 * page; each such move is a kernel mapping more, so not for every size). */
#define REALLOC_MOVE_MIN ((size_t)1 << 20)

/* The block stays where it is: a small block whose class still fits n and
 * wastes under half; a large block whose pages hold n, with a tail of at most
 * half or REALLOC_SLACK (a buffer that grows may have been given that much
 * room, see ta_pageheap_alloc_growable). */
static inline bool small_stays(size_t old, size_t n) { return n <= old && n > old / 2; }
static inline bool large_stays(size_t old, size_t n) { return n <= old && (n > old / 2 || old - n <= REALLOC_SLACK); }

static void *realloc_large(void *p, ta_span_t *s, size_t n);
TA_NOINLINE static void *realloc_small(void *p, uint8_t *state, uint32_t cls, size_t n);
TA_NOINLINE static void *realloc_slow(void *p, size_t n);

/* A realloc that leaves the block where it is (most calls of a buffer that
 * grows step by step) is answered here, in a function that saves no
 * registers; the large block realloc'd last and a live small block go on to
 * realloc_large and realloc_small with what was found here, anything else to
 * realloc_slow (callgrind, `realloc_growth_64k`'s loop: the save and restore
 * of six registers were a fifth of realloc's instructions). */
void *ta_impl_realloc(void *p, size_t n) {
    if (TA_LIKELY(p && n && n <= TA_MAX_REQUEST && !ta_trace_on)) {
        ta_span_t *s = realloc_last_of(p);
        if (s) return large_stays(ta_span_usable(s), n) ? p : realloc_large(p, s, n);
        const ta_pm_entry_t *e = ta_pagemap_entry_at((uintptr_t)p);
        uint64_t info;
        uint32_t cls;
        uint8_t *state = ta_live_small(p, e, &info, &cls, false);
        if (state) return small_stays(ta_class[cls].size, n) ? p : realloc_small(p, state, cls, n);
    }
    return realloc_slow(p, n);
}

/* A live block of a size class (state: its state byte, through which a move
 * frees it) to n <= TA_MAX_REQUEST bytes.  It stays when the new size still
 * fits and wastes < half.  A small block that grows moves to a class at least
 * twice its size (up to REALLOC_SPAN_MIN): a buffer grown a little at a time
 * is copied once per doubling, not at every class boundary.  Growing past
 * REALLOC_SPAN_MIN, it leaves the classes for a span of its own (whole pages:
 * a growing buffer has headroom anyway), placed where it can keep growing in
 * place: no more copies. */
TA_NOINLINE static void *realloc_small(void *p, uint8_t *state, uint32_t cls, size_t n) {
    size_t old = ta_class[cls].size, want = n;
    if (small_stays(old, n)) return p;
    if (n > old && n <= REALLOC_SPAN_MIN) {
        want = old * 2 > n ? old * 2 : n;
        if (want > REALLOC_SPAN_MIN) want = REALLOC_SPAN_MIN;
    }
    void *q = n > REALLOC_SPAN_MIN ? alloc_span_for(n, 0, false, true) : ta_do_malloc(want);
    if (!q) return NULL; /* errno is ENOMEM; p is untouched */
    memcpy(q, p, old < n ? old : n);
    ta_free_small(p, state, cls);
    return q;
}

/* Everything else: tracing, NULL, size 0, impossible sizes, large blocks not
 * realloc'd last, scoped and foreign blocks; live small blocks too when
 * tracing (the fast checks above are skipped then). */
TA_NOINLINE static void *realloc_slow(void *p, size_t n) {
    TRACED(ta_trace_realloc(p, n));
    if (!p) return ta_do_malloc(n);
    if (n == 0) { /* glibc: frees and returns NULL */
        ta_do_free(p);
        return NULL;
    }
    /* a live small block in one pagemap read, as free() reads it */
    const ta_pm_entry_t *e = ta_pagemap_entry_at((uintptr_t)p);
    uint64_t info;
    uint32_t cls;
    uint8_t *state = ta_live_small(p, e, &info, &cls, false);
    if (TA_LIKELY(n <= TA_MAX_REQUEST) && TA_LIKELY(state)) return realloc_small(p, state, cls, n);
    ptr_class_t c = classify_info(p, info);
    if (TA_UNLIKELY(c.kind == PTR_SCOPED)) return ta_arena_realloc(p, c.span, n); /* scoped: to the heap */
    size_t old = block_size(p, c, "realloc");
    if (n > TA_MAX_REQUEST) return ta_fail_nomem();
    if (TA_UNLIKELY(c.kind == PTR_FOREIGN)) return realloc_move(p, old, n); /* made during init */
    /* (a live small block took the path above: p is a large one) */
    return realloc_large(p, c.span, n);
}

/* realloc of p, the live large block of span s, to n (at most TA_MAX_REQUEST) bytes */
static void *realloc_large(void *p, ta_span_t *s, size_t n) {
    size_t old = ta_span_usable(s);
    realloc_last = (struct realloc_last){p, s};
    uintptr_t npages = (n + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT;
    if (large_stays(old, n)) return p;
    if (n <= old) {
        if (n <= REALLOC_SPAN_MIN) return realloc_move(p, old, n);
        ta_pageheap_shrink(s, npages, false); /* the tail goes back to the heap */
        return p;
    }
    /* grow in place into the free pages that follow, by a quarter more when
     * they allow it (twice the size under 16 pages), so that a block grown step by step takes the page-heap
     * lock once every few steps rather than at each one */
    uintptr_t more = npages < 16 ? npages : npages / 4; /* small spans double */
    if (ta_pageheap_grow(s, npages + more) || ta_pageheap_grow(s, npages)) return p;
    /* otherwise a block of REALLOC_MOVE_MIN or more moves its pages (no copy:
     * see ta_pageheap_move_large), a smaller one (or where the kernel cannot
     * move pages) goes by copy to the start of the longest free span; either
     * way with room to grow in place next time */
    if (old >= REALLOC_MOVE_MIN && !s->sample) {
        ta_span_t *t = ta_pageheap_move_large(s, npages);
        if (t) {
            void *q = ta_span_addr(t);
            realloc_last = (struct realloc_last){q, t};
            return q;
        }
    }
    void *q = alloc_span_for(n, 0, false, true);
    if (!q) return NULL;
    memcpy(q, p, old);
    /* p is a large block: free's slow path, which it would reach anyway (and
     * clang 14 took minutes over free's inlined push here) */
    ta_free_slow(p, ta_pagemap_entry_at((uintptr_t)p)->info);
    return q;
}

void *ta_impl_reallocarray(void *p, size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return ta_fail_nomem();
    return ta_impl_realloc(p, total);
}

/* alignment: a power of two */
void *ta_alloc_aligned(size_t align, size_t n) {
    if (align <= TA_ALIGN) return ta_do_malloc(n);
    if (n > TA_MAX_REQUEST || align > TA_MAX_REQUEST) return ta_fail_nomem();
    if (!ta_ensure_init()) return ta_boot_alloc(n, align);
    if (align <= TA_PAGE_SIZE && n <= TA_MAX_SMALL) {
        /* a class whose size is a multiple of align: spans start on pages, so
         * every object of it is aligned */
        uint32_t cls = ta_class_for_aligned(n, align);
        if (cls) return ta_alloc_class(cls, n);
    }
    return ta_alloc_large(n, align, false);
}

void *ta_impl_memalign(size_t align, size_t n) {
    TRACED(ta_trace_aligned(TA_TR_MEMALIGN, align, n));
    if (!ta_is_pow2(align)) {
        /* glibc rounds a non-power-of-two alignment up, and refuses one that
         * cannot be rounded (above 2^63) with EINVAL */
        if (align > SIZE_MAX / 2 + 1) {
            errno = EINVAL;
            return NULL;
        }
        size_t a = 1;
        while (a < align) a <<= 1;
        align = a;
    }
    return ta_alloc_aligned(align, n);
}

int ta_impl_posix_memalign(void **out, size_t align, size_t n) {
    if (!ta_is_pow2(align) || align % sizeof(void *)) return EINVAL;
    int saved = errno;
    void *p = TA_UNLIKELY(ta_trace_on) && !ta_trace_busy ? ta_trace_aligned(TA_TR_POSIX_MEMALIGN, align, n)
                                                         : ta_alloc_aligned(align, n);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    *out = p;
    return 0;
}

void *ta_impl_aligned_alloc(size_t align, size_t n) {
    TRACED(ta_trace_aligned(TA_TR_ALIGNED_ALLOC, align, n));
    if (!ta_is_pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return ta_alloc_aligned(align, n);
}

void *ta_impl_valloc(size_t n) {
    TRACED(ta_trace_aligned(TA_TR_VALLOC, OS_PAGE, n));
    return ta_alloc_aligned(OS_PAGE, n);
}

void *ta_impl_pvalloc(size_t n) {
    TRACED(ta_trace_aligned(TA_TR_PVALLOC, OS_PAGE, n));
    if (n > TA_MAX_REQUEST) return ta_fail_nomem();
    n = n ? (n + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1) : OS_PAGE;
    return ta_alloc_aligned(OS_PAGE, n);
}

size_t ta_impl_malloc_usable_size(void *p) {
    if (!p) return 0;
    const ta_pm_entry_t *e = ta_pagemap_entry_at((uintptr_t)p);
    uint64_t info;
    uint32_t cls;
    if (TA_LIKELY(ta_live_small(p, e, &info, &cls, false))) return ta_class[cls].size; /* (Ruby asks on every malloc and free) */
    return block_size(p, classify_info(p, info), "malloc_usable_size");
}

void ta_impl_free_sized(void *p, size_t size) { ta_do_free_sized(p, size); }

void ta_impl_free_aligned_sized(void *p, size_t align, size_t size) {
    (void)align;
    (void)size;
    ta_do_free(p);
}

/* (also the first step of malloc_trim) */
void ta_consolidate_caches(void) {
    ta_pcache_flush_current();
    ta_pcache_drain_all(); /* (the CPUs' caches, if any) */
    ta_central_drain();
}

int ta_impl_malloc_trim(size_t pad) {
    (void)pad;
    if (!ta_ensure_init()) return 0;
#ifdef TA_HARDENED
    ta_quarantine_drain(); /* the blocks it held go to tier 1, flushed below */
#endif
    ta_arena_trim_current();
    ta_consolidate_caches();
    size_t released = ta_pcache_release_free_slabs(UINT64_MAX);
    released += ta_pageheap_release(true);
    released += ta_meta_trim();
    return released > 0;
}

int ta_impl_owns(const void *p) {
    if (!p || !ta_inited) return 0;
    ptr_class_t c = classify(p);
    if (c.kind == PTR_SCOPED) return ta_arena_owns(p, c.span);
    return c.kind == PTR_SMALL || c.kind == PTR_LARGE;
}

/* ---- the ta_* names ------------------------------------------------------------ */
#define TA_ALIAS(name, target) \
    extern __typeof(target) name __attribute__((alias(#target), visibility("default")))
TA_ALIAS(ta_calloc, ta_impl_calloc);
TA_ALIAS(ta_realloc, ta_impl_realloc);
TA_ALIAS(ta_reallocarray, ta_impl_reallocarray);
TA_ALIAS(ta_memalign, ta_impl_memalign);
TA_ALIAS(ta_posix_memalign, ta_impl_posix_memalign);
TA_ALIAS(ta_aligned_alloc, ta_impl_aligned_alloc);
TA_ALIAS(ta_valloc, ta_impl_valloc);
TA_ALIAS(ta_pvalloc, ta_impl_pvalloc);
TA_ALIAS(ta_malloc_usable_size, ta_impl_malloc_usable_size);
TA_ALIAS(ta_free_sized, ta_impl_free_sized);
TA_ALIAS(ta_free_aligned_sized, ta_impl_free_aligned_sized);
TA_ALIAS(ta_malloc_trim, ta_impl_malloc_trim);
TA_ALIAS(ta_owns, ta_impl_owns);
