/* api.c: the public entry points.  The ta_* functions are the implementation;
 * the glibc names (malloc, free, ..., __libc_*) and the C++ operators are
 * aliases or thin wrappers, so a program never sees a block that two
 * allocators handle.  The small-block fast paths are here, inline: a cache pop
 * for malloc, a pagemap lookup, two checks and a cache push for free. */
#include "internal.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "tieralloc.h"

volatile int ta_inited;
uintptr_t ta_guard_key = 0x5bd1e9955bd1e995ull;
static ta_lock_t init_lock = TA_LOCK_INIT;

#define OS_PAGE 4096 /* valloc/pvalloc promise the OS page */

/* ---- initialisation ------------------------------------------------------- */
void ta_init_slow(void) {
    ta_lock(&init_lock);
    if (!ta_inited) {
        ta_config_init();
        ta_sizeclass_init();
        ta_pageheap_init();
        ta_central_init();
        ta_pcache_init();
        ta_sample_init();
        /* the guard key mixes the kernel's random bytes with an address */
        const uintptr_t *rnd = (const uintptr_t *)getauxval(AT_RANDOM);
        uintptr_t k = rnd ? rnd[0] ^ rnd[1] : (uintptr_t)&k * 0x9e3779b97f4a7c15ull;
        ta_guard_key = k | 1;
        __atomic_store_n(&ta_inited, 1, __ATOMIC_RELEASE);
    }
    ta_unlock(&init_lock);
}

static void fork_prepare(void) {
    ta_lock(&init_lock);
    ta_sample_lock_all();
    ta_pcache_lock_all();
    ta_central_lock_all();
    ta_pageheap_lock_all();
    ta_meta_lock_all();
}
static void fork_parent(void) {
    ta_meta_unlock_all(false);
    ta_pageheap_unlock_all(false);
    ta_central_unlock_all(false);
    ta_pcache_unlock_all(false);
    ta_sample_unlock_all(false);
    ta_unlock(&init_lock);
}
static void fork_child(void) {
    ta_meta_unlock_all(true);
    ta_pageheap_unlock_all(true);
    ta_central_unlock_all(true);
    ta_pcache_unlock_all(true);
    ta_sample_unlock_all(true);
    pthread_mutex_init(&init_lock, NULL);
}

__attribute__((constructor)) static void ta_constructor(void) {
    ta_ensure_init();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    ta_stats_at_start();
}

/* ---- errors ---------------------------------------------------------------- */
static void *fail_nomem(void) {
    errno = ENOMEM;
    return NULL;
}

TA_COLD static void bad_pointer(const char *what, const void *p) { ta_fatal("%s %p", what, p); }

/* ---- large blocks ---------------------------------------------------------- */
/* A large block; growable: it is being grown by realloc (see ta_pageheap_alloc_growable). */
static void *alloc_span_for(size_t size, size_t align, bool zero, bool growable) {
    ta_ensure_init();
    if (size > TA_MAX_REQUEST || align > TA_MAX_REQUEST) return fail_nomem();
    uintptr_t npages = (size + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT;
    if (!npages) npages = 1;
    uintptr_t align_pages = align > TA_PAGE_SIZE ? align >> TA_PAGE_SHIFT : 1;
    ta_span_t *s = growable ? ta_pageheap_alloc_growable(npages) : ta_pageheap_alloc(npages, align_pages, 0);
    if (!s) return fail_nomem();
    void *p = ta_span_addr(s);
    if (zero && !s->zeroed) memset(p, 0, size);
    return p;
}

static void *alloc_span(size_t size, size_t align, bool zero) { return alloc_span_for(size, align, zero, false); }

void *ta_alloc_large(size_t size, size_t align, bool zero) {
    void *p = alloc_span(size, align, zero);
    /* sampling: the same countdown as the small fast path */
    if (p && TA_UNLIKELY((ta_tls.sample_left -= (int64_t)size) < 0) && ta_sample_tick(size))
        ta_sample_record(p, size, __builtin_frame_address(0));
    return p;
}

/* ---- small blocks: the fast paths ----------------------------------------- */
TA_NOINLINE static void *alloc_small_slow(size_t n, uint32_t cls) {
    ta_ensure_init();
    if (!cls) cls = ta_size_to_class(n); /* tables were empty before init */
    void *p = ta_pcache_alloc_slow(cls);
    return p ? p : fail_nomem();
}

static inline void *alloc_pop(uint32_t cls, size_t n) {
    ta_pcache_t *c = ta_tls_cache;
    ta_list_t *l = &c->list[cls];
    void **p = l->head;
    if (TA_UNLIKELY(!p)) return alloc_small_slow(n, cls);
    l->head = p[0];
    l->count--;
    p[1] = NULL; /* clear the guard word: this block is live now */
    return p;
}

/* The sampling countdown ran out (or this thread has not started it yet).  A
 * sampled block gets a span of its own: its pagemap info is 0, so free() finds
 * it on the slow path it already takes for large blocks. */
TA_NOINLINE static void *alloc_sample_slow(size_t n, uint32_t cls) {
    ta_ensure_init();
    if (!cls) cls = ta_size_to_class(n); /* tables were empty before init */
    if (ta_sample_tick(n)) {
        void *p = alloc_span(n, 0, false);
        if (p) {
            ta_sample_record(p, n, __builtin_frame_address(0));
            return p;
        }
    }
    return alloc_pop(cls, n);
}

/* The fast path: one sub-and-branch for sampling, then a list pop. */
static inline void *alloc_class(uint32_t cls, size_t n) {
    if (TA_UNLIKELY((ta_tls.sample_left -= (int64_t)n) < 0)) return alloc_sample_slow(n, cls);
    return alloc_pop(cls, n);
}

static inline void *do_malloc(size_t n) {
    if (TA_LIKELY(n <= TA_MAX_SMALL)) return alloc_class(ta_size_to_class(n), n);
    return ta_alloc_large(n, 0, false);
}

/* Block of a small class: the class from the pagemap info word, or 0. */
static inline uint32_t small_class_of(const void *p, uint32_t info) {
    uint32_t cls = TA_INFO_CLASS(info);
    uint32_t off = ta_info_offset(p, info);
    /* offset must be a multiple of the class size: one multiply, no division */
    uint64_t m = ta_class_magic[cls];
    if (TA_UNLIKELY((uint64_t)off * m > m - 1)) return 0;
    return cls;
}

TA_NOINLINE void ta_free_slow(void *p) {
    if (!p) return;
    uint32_t info = ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT);
    if (info) {
        if (!small_class_of(p, info)) bad_pointer("free of an interior pointer:", p);
        bad_pointer("double free of", p);
    }
    if (ta_arena_free(p)) return; /* a scoped block: a no-op while its scope is open */
    if (__atomic_load_n(&ta_sample_live, __ATOMIC_RELAXED)) ta_sample_free(p); /* free hook */
    const char *err = ta_pageheap_free_large(p);
    if (err) bad_pointer(err, p);
}

static inline void do_free(void *p) {
    uintptr_t page = (uintptr_t)p >> TA_PAGE_SHIFT;
    uint32_t info = ta_pagemap_info(page);
    if (TA_LIKELY(info)) {
        uint32_t cls = TA_INFO_CLASS(info);
        uint32_t off = ta_info_offset(p, info);
        uint64_t m = ta_class_magic[cls];
        void **o = p;
        /* an interior pointer (offset not a multiple of the size) and a set
         * guard word (double free) both go to the slow path, which says which */
        if (TA_LIKELY((uint64_t)off * m <= m - 1 && (uintptr_t)o[1] != ta_guard(p))) {
            ta_list_t *l = &ta_tls_cache->list[cls];
            if (TA_LIKELY(l->count < l->max)) {
                o[0] = l->head;
                o[1] = (void *)ta_guard(p);
                l->head = o;
                l->count++;
                return;
            }
            ta_pcache_free_slow(p, cls);
            return;
        }
    }
    ta_free_slow(p);
}

/* Size of the block at p, or abort if p is not a live block. */
static size_t block_size(const void *p, const char *op) {
    uint32_t info = ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT);
    if (info) {
        uint32_t cls = small_class_of(p, info);
        if (!cls) bad_pointer(op[0] == 'r' ? "realloc of an interior pointer:" : "interior pointer:", p);
        if ((uintptr_t)((void *const *)p)[1] == ta_guard(p))
            bad_pointer(op[0] == 'r' ? "realloc of freed pointer" : "use of freed pointer", p);
        return ta_class[cls].size;
    }
    if (ta_arena_span(p)) return ta_arena_usable_size(p);
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    if (!s || s->state != TA_SPAN_INUSE || s->cls || ta_span_addr(s) != p)
        bad_pointer(op[0] == 'r' ? "realloc of a pointer tieralloc never returned:"
                                 : "pointer tieralloc never returned:", p);
    return ta_span_bytes(s);
}

/* ---- the public operations ------------------------------------------------ */
TA_EXPORT void *ta_malloc(size_t n) { return do_malloc(n); }
TA_EXPORT void ta_free(void *p) { do_free(p); }

TA_EXPORT void *ta_calloc(size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return fail_nomem();
    if (total > TA_MAX_SMALL) return ta_alloc_large(total, 0, true);
    void *p = alloc_class(ta_size_to_class(total), total);
    if (p) memset(p, 0, total);
    return p;
}

static void *realloc_move(void *p, size_t old, size_t n) {
    void *q = do_malloc(n);
    if (!q) return NULL; /* errno is ENOMEM; p is untouched */
    memcpy(q, p, old < n ? old : n);
    do_free(p);
    return q;
}

TA_EXPORT void *ta_realloc(void *p, size_t n) {
    if (!p) return do_malloc(n);
    if (n == 0) { /* glibc: frees and returns NULL */
        do_free(p);
        return NULL;
    }
    if (TA_UNLIKELY(ta_arena_span(p))) return ta_arena_realloc(p, n); /* scoped: to the heap */
    size_t old = block_size(p, "realloc");
    if (n > TA_MAX_REQUEST) return fail_nomem();
    const size_t span_min = (size_t)32 << 10; /* below this a block belongs in a size class */
    if (ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT)) { /* a small-class block */
        /* keep the block when the new size still fits and wastes < half */
        if (n <= old && n > old / 2) return p;
        /* Growing past 32 KiB, a block leaves the size classes for a span of
         * its own (page granular: under 25% waste there, and a growing buffer
         * has headroom anyway), placed where it can keep growing in place: no
         * more copies at every class boundary. */
        if (n <= old || n <= span_min) return realloc_move(p, old, n);
        void *q = alloc_span_for(n, 0, false, true);
        if (!q) return NULL;
        memcpy(q, p, old);
        do_free(p);
        return q;
    }
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    uintptr_t npages = (n + TA_PAGE_SIZE - 1) >> TA_PAGE_SHIFT;
    /* a block with a span of its own */
    if (n <= old) {
        if (n > old / 2) return p;
        if (n <= span_min) return realloc_move(p, old, n);
        ta_pageheap_shrink(s, npages, false); /* the tail goes back to the heap */
        return p;
    }
    /* grow in place into the free pages that follow, by a quarter more when
     * they allow it, so that a block grown step by step takes the page-heap
     * lock once every few steps rather than at each one */
    if (ta_pageheap_grow(s, npages + npages / 4) || ta_pageheap_grow(s, npages)) return p;
    /* otherwise move to the start of the longest free span, so that the
     * next growth happens in place */
    void *q = alloc_span_for(n, 0, false, true);
    if (!q) return NULL;
    memcpy(q, p, old);
    do_free(p);
    return q;
}

TA_EXPORT void *ta_reallocarray(void *p, size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return fail_nomem();
    return ta_realloc(p, total);
}

/* alignment: a power of two */
static void *alloc_aligned(size_t align, size_t n) {
    if (align <= TA_ALIGN) return do_malloc(n);
    if (n > TA_MAX_REQUEST || align > TA_MAX_REQUEST) return fail_nomem();
    ta_ensure_init();
    if (align <= TA_PAGE_SIZE && n <= TA_MAX_SMALL) {
        /* a class whose size is a multiple of align: spans start on pages, so
         * every object of it is aligned */
        uint32_t cls = ta_class_for_aligned(n, align);
        if (cls) return alloc_class(cls, n);
    }
    return ta_alloc_large(n, align, false);
}

static bool is_pow2(size_t a) { return a && !(a & (a - 1)); }

TA_EXPORT void *ta_memalign(size_t align, size_t n) {
    if (!is_pow2(align)) {
        /* glibc rounds a non-power-of-two alignment up */
        if (align > ((size_t)1 << 62)) return fail_nomem();
        size_t a = 1;
        while (a < align) a <<= 1;
        align = a;
    }
    return alloc_aligned(align, n);
}

TA_EXPORT int ta_posix_memalign(void **out, size_t align, size_t n) {
    if (!is_pow2(align) || align % sizeof(void *)) return EINVAL;
    int saved = errno;
    void *p = alloc_aligned(align, n);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    *out = p;
    return 0;
}

TA_EXPORT void *ta_aligned_alloc(size_t align, size_t n) {
    if (!is_pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return alloc_aligned(align, n);
}

TA_EXPORT void *ta_valloc(size_t n) { return alloc_aligned(OS_PAGE, n); }

TA_EXPORT void *ta_pvalloc(size_t n) {
    if (n > TA_MAX_REQUEST) return fail_nomem();
    n = n ? (n + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1) : OS_PAGE;
    return alloc_aligned(OS_PAGE, n);
}

TA_EXPORT size_t ta_malloc_usable_size(void *p) { return p ? block_size(p, "usable") : 0; }

TA_EXPORT void ta_free_sized(void *p, size_t size) {
    (void)size; /* a hint; the pagemap knows the size */
    do_free(p);
}

TA_EXPORT void ta_free_aligned_sized(void *p, size_t align, size_t size) {
    (void)align;
    (void)size;
    do_free(p);
}

TA_EXPORT int ta_malloc_trim(size_t pad) {
    (void)pad;
    ta_ensure_init();
    ta_arena_trim_current();
    ta_pcache_flush_current();
    ta_central_drain();
    size_t released = ta_pageheap_release(true);
    released += ta_meta_trim();
    return released > 0;
}

TA_EXPORT int ta_owns(const void *p) {
    if (!p || !ta_inited) return 0;
    uint32_t info = ta_pagemap_info((uintptr_t)p >> TA_PAGE_SHIFT);
    if (info) return small_class_of(p, info) && (uintptr_t)((void *const *)p)[1] != ta_guard(p);
    if (ta_arena_span(p)) return ta_arena_owns(p);
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    return s && s->state == TA_SPAN_INUSE && !s->cls && ta_span_addr(s) == p;
}

/* ---- glibc names ----------------------------------------------------------- */
#define TA_ALIAS(name, target) \
    extern __typeof(target) name __attribute__((alias(#target), visibility("default")))

TA_ALIAS(malloc, ta_malloc);
TA_ALIAS(__libc_malloc, ta_malloc);
TA_ALIAS(free, ta_free);
TA_ALIAS(__libc_free, ta_free);
TA_ALIAS(cfree, ta_free);
TA_ALIAS(__libc_cfree, ta_free);
TA_ALIAS(calloc, ta_calloc);
TA_ALIAS(__libc_calloc, ta_calloc);
TA_ALIAS(realloc, ta_realloc);
TA_ALIAS(__libc_realloc, ta_realloc);
TA_ALIAS(reallocarray, ta_reallocarray);
TA_ALIAS(__libc_reallocarray, ta_reallocarray);
TA_ALIAS(memalign, ta_memalign);
TA_ALIAS(__libc_memalign, ta_memalign);
TA_ALIAS(posix_memalign, ta_posix_memalign);
TA_ALIAS(__posix_memalign, ta_posix_memalign);
TA_ALIAS(aligned_alloc, ta_aligned_alloc);
TA_ALIAS(__libc_aligned_alloc, ta_aligned_alloc);
TA_ALIAS(valloc, ta_valloc);
TA_ALIAS(__libc_valloc, ta_valloc);
TA_ALIAS(pvalloc, ta_pvalloc);
TA_ALIAS(__libc_pvalloc, ta_pvalloc);
TA_ALIAS(malloc_usable_size, ta_malloc_usable_size);
TA_ALIAS(__malloc_usable_size, ta_malloc_usable_size);
TA_ALIAS(free_sized, ta_free_sized);
TA_ALIAS(__libc_free_sized, ta_free_sized);
TA_ALIAS(free_aligned_sized, ta_free_aligned_sized);
TA_ALIAS(__libc_free_aligned_sized, ta_free_aligned_sized);
TA_ALIAS(malloc_trim, ta_malloc_trim);
TA_ALIAS(__malloc_trim, ta_malloc_trim);

/* mallopt: glibc's tunables mean nothing here; accept the ones glibc knows
 * (1), refuse others (0), as glibc does for unknown parameters. */
static int do_mallopt(int param, int value) {
    (void)value;
    switch (param) {
    case M_MXFAST: case M_TRIM_THRESHOLD: case M_TOP_PAD: case M_MMAP_THRESHOLD:
    case M_MMAP_MAX: case M_CHECK_ACTION: case M_PERTURB: case M_ARENA_TEST: case M_ARENA_MAX:
        return 1;
    default:
        return 0;
    }
}
TA_EXPORT int mallopt(int param, int value) { return do_mallopt(param, value); }
TA_EXPORT int __libc_mallopt(int param, int value) { return do_mallopt(param, value); }

TA_EXPORT struct mallinfo2 mallinfo2(void) {
    struct mallinfo2 mi;
    ta_stats_mallinfo(&mi);
    return mi;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TA_EXPORT struct mallinfo mallinfo(void) {
    struct mallinfo2 m2;
    ta_stats_mallinfo(&m2);
    struct mallinfo mi = {
        .arena = (int)m2.arena, .ordblks = (int)m2.ordblks, .smblks = (int)m2.smblks,
        .hblks = (int)m2.hblks, .hblkhd = (int)m2.hblkhd, .usmblks = (int)m2.usmblks,
        .fsmblks = (int)m2.fsmblks, .uordblks = (int)m2.uordblks, .fordblks = (int)m2.fordblks,
        .keepcost = (int)m2.keepcost,
    };
    return mi;
}
TA_ALIAS(__libc_mallinfo, mallinfo);
#pragma GCC diagnostic pop

TA_EXPORT void malloc_stats(void) { ta_stats_write_text(2); }

TA_EXPORT int malloc_info(int options, FILE *fp) {
    if (options != 0) {
        errno = EINVAL;
        return -1;
    }
    return ta_stats_write_xml(fp);
}

/* ---- C++ operators (Itanium ABI names; C cannot throw, so failure calls the
 * new-handler and then std::__throw_bad_alloc from libstdc++ when present) -- */
typedef void (*new_handler_t)(void);
extern new_handler_t _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

TA_NOINLINE static void *new_failed(size_t n, size_t align, bool nothrow) {
    for (;;) {
        new_handler_t h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
        if (!h) break;
        h();
        void *p = align ? alloc_aligned(align, n) : do_malloc(n);
        if (p) return p;
    }
    if (nothrow) return NULL;
    if (_ZSt17__throw_bad_allocv) _ZSt17__throw_bad_allocv();
    ta_fatal("operator new of %zu bytes failed: out of memory", n);
}

static inline void *cxx_new(size_t n) {
    void *p = do_malloc(n);
    return TA_LIKELY(p) ? p : new_failed(n, 0, false);
}
static inline void *cxx_new_nothrow(size_t n) {
    void *p = do_malloc(n);
    return TA_LIKELY(p) ? p : new_failed(n, 0, true);
}
static inline void *cxx_new_aligned(size_t n, size_t al) {
    void *p = is_pow2(al) ? alloc_aligned(al, n) : NULL;
    return TA_LIKELY(p) ? p : new_failed(n, al, false);
}
static inline void *cxx_new_aligned_nothrow(size_t n, size_t al) {
    void *p = is_pow2(al) ? alloc_aligned(al, n) : NULL;
    return TA_LIKELY(p) ? p : new_failed(n, al, true);
}

#define NOTHROW_T const void * /* const std::nothrow_t & */
TA_EXPORT void *_Znwm(size_t n) { return cxx_new(n); }
TA_EXPORT void *_Znam(size_t n) { return cxx_new(n); }
TA_EXPORT void *_ZnwmRKSt9nothrow_t(size_t n, NOTHROW_T t) { (void)t; return cxx_new_nothrow(n); }
TA_EXPORT void *_ZnamRKSt9nothrow_t(size_t n, NOTHROW_T t) { (void)t; return cxx_new_nothrow(n); }
TA_EXPORT void *_ZnwmSt11align_val_t(size_t n, size_t al) { return cxx_new_aligned(n, al); }
TA_EXPORT void *_ZnamSt11align_val_t(size_t n, size_t al) { return cxx_new_aligned(n, al); }
TA_EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, size_t al, NOTHROW_T t) {
    (void)t;
    return cxx_new_aligned_nothrow(n, al);
}
TA_EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, size_t al, NOTHROW_T t) {
    (void)t;
    return cxx_new_aligned_nothrow(n, al);
}
TA_EXPORT void _ZdlPv(void *p) { do_free(p); }
TA_EXPORT void _ZdaPv(void *p) { do_free(p); }
TA_EXPORT void _ZdlPvm(void *p, size_t n) { (void)n; do_free(p); }
TA_EXPORT void _ZdaPvm(void *p, size_t n) { (void)n; do_free(p); }
TA_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, NOTHROW_T t) { (void)t; do_free(p); }
TA_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, NOTHROW_T t) { (void)t; do_free(p); }
TA_EXPORT void _ZdlPvSt11align_val_t(void *p, size_t al) { (void)al; do_free(p); }
TA_EXPORT void _ZdaPvSt11align_val_t(void *p, size_t al) { (void)al; do_free(p); }
TA_EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; do_free(p); }
TA_EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; do_free(p); }
TA_EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, NOTHROW_T t) {
    (void)al; (void)t;
    do_free(p);
}
TA_EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, NOTHROW_T t) {
    (void)al; (void)t;
    do_free(p);
}
