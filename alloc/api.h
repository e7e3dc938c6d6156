/* api.h: the inline fast paths of malloc and free, shared by the ta_* names
 * (api.c) and the standard names (override.c), and what api.c exports to
 * them.  malloc: a size class from a table, the sampling countdown, a pop from
 * tier 1, the object marked live.  free: the pagemap entry of the page, two
 * checks (block start, live), the object marked free, a push on tier 1.
 * Neither reads the block. */
#ifndef TA_API_H
#define TA_API_H

#include "internal.h"
#include "pcache.h"

#include <errno.h>
#include <string.h>

/* ---- slow paths (api.c) ------------------------------------------------------ */
void *ta_alloc_small_slow(size_t n, uint32_t cls);  /* tier-1 miss */
void *ta_alloc_sample_slow(size_t n, uint32_t cls); /* the sampling countdown ran out */
void *ta_alloc_large(size_t size, size_t align, bool zero);
void *ta_malloc_large(size_t n);                     /* ta_alloc_large(n, 0, false), the common case first */
void *ta_alloc_aligned(size_t align, size_t n);      /* align: a power of two */
void ta_free_slow(void *p, uint64_t info);           /* anything but a live small block; info: p's pagemap word */
void *ta_fail_nomem(void);                           /* errno = ENOMEM, NULL */

/* The fast path: one sub-and-branch for sampling, then a pop.  With `zero`
 * (calloc; a constant, so malloc's code has none of it) the block is cleared,
 * unless its state says it was never handed out and lies on pages the OS gave
 * zeroed (ZERO). */
TA_ALWAYS_INLINE void *ta_alloc_class_as(uint32_t cls, size_t n, bool zero, bool near) {
    void *p;
    if (TA_UNLIKELY((ta_tls.sample_left -= (int64_t)n) < 0)) {
        p = ta_alloc_sample_slow(n, cls);
    } else {
        uint8_t *state;
        p = ta_fe_pop_as(cls, &state, near);
        if (TA_LIKELY(p)) {
            if (zero) {
                /* LIVE first, so that the clearing is a tail call: calloc's
                 * hit then saves no registers */
                bool fresh = ta_state_get(state) == TA_OBJ_ZERO;
                ta_state_set(state, TA_OBJ_LIVE);
                return fresh ? p : memset(p, 0, n);
            }
            ta_state_set(state, TA_OBJ_LIVE);
            return p;
        }
        p = ta_alloc_small_slow(n, cls);
    }
    if (zero && p) memset(p, 0, n);
    return p;
}
/* (memalign's path: near decided by the class, as ta_fe_pop) */
TA_ALWAYS_INLINE void *ta_alloc_class(uint32_t cls, size_t n) { return ta_alloc_class_as(cls, n, false, cls <= TA_CLASS_1K); }

/* malloc, and with `zero` (a constant) calloc: the common sizes first, one
 * compare and one table for n <= 1 KiB. */
TA_ALWAYS_INLINE void *ta_do_alloc(size_t n, bool zero) {
    if (TA_LIKELY(n <= 1024)) return ta_alloc_class_as(ta_class_upto_1k(n), n, zero, true);
    /* (no prefetch of the next block above 1 KiB: TA_SLAB_PREFETCH_NEXT) */
    if (TA_LIKELY(n <= TA_MAX_SMALL)) return ta_alloc_class_as(ta_class_above_1k(n), n, zero, false);
    return zero ? ta_alloc_large(n, 0, true) : ta_malloc_large(n);
}
TA_ALWAYS_INLINE void *ta_do_malloc(size_t n) { return ta_do_alloc(n, false); }

/* A live small block goes back: its state byte marked FREE (so that a second
 * free of it is seen) and the block put in tier 1, or in the hardened build
 * in the quarantine first (quarantine.c).  The push marks it itself, just
 * before its commit (TA_SLAB_PUSH); a full cache leaves that to this path. */
TA_ALWAYS_INLINE void ta_free_small(void *p, uint8_t *state, uint32_t cls) {
#ifdef TA_HARDENED
    ta_state_set(state, TA_OBJ_FREE);
    ta_quarantine_put(p, state, cls);
#else
    int r = ta_fe_push(p, state, cls);
    if (TA_LIKELY(r == TA_PUSH_DONE)) return;
    if (r == TA_PUSH_FOREIGN) {
        ta_pcache_free_foreign(p, state, cls);
        return;
    }
    ta_state_set(state, TA_OBJ_FREE);
    ta_pcache_free_slow(p, cls, state);
#endif
}

/* The state byte of p when p is the start of a live block of a size class
 * (its class in *cls), else NULL: an interior pointer, a block that is not
 * live (double free, never handed out), a large or foreign one.  e: p's
 * pagemap entry (ta_pagemap_entry_at); *info: its info word, for the slow
 * path.  The entry's magic is 0 on every page that is not a small span's,
 * so the object-start test (the low half of the product below m) fails there
 * and no separate test of the info word is needed.  The offset is taken in
 * 32 bits (a span is far smaller), so that whatever the entry says, the
 * index stays below 2^28.  (A plain load of the byte: only a thread that was
 * handed p can write it meanwhile.)  free, realloc and malloc_usable_size
 * start here.  With for_write (free) the byte's line is asked for with
 * prefetchw first: the load then brings it in a state that the push's FREE
 * store can write without asking the other CPUs again; a block that another
 * CPU allocated (its LIVE store made the line that CPU's) otherwise pays two
 * round trips, one for the load and one for the store (`pipeline64`: 8 of 9
 * paired rounds faster, alloc/README.md). */
TA_ALWAYS_INLINE uint8_t *ta_live_small(const void *p, const ta_pm_entry_t *e, uint64_t *info, uint32_t *cls, bool for_write) {
    uint64_t m = ta_pm_entry_magic(e);
    uint64_t i = *info = e->info;
    unsigned __int128 prod = (unsigned __int128)ta_info_offset(p, i) * m;
    /* (the address as an integer until the test has passed: on a page that
     * is not a small span's, states may be NULL or stale) */
    uintptr_t state = (uintptr_t)(i >> 16) + (uint64_t)(prod >> 64);
    if (for_write) ta_prefetch_write(state);
    if (TA_LIKELY((uint64_t)prod < m && *(const uint8_t *)state == TA_OBJ_LIVE)) {
        *cls = TA_INFO_CLASS(i);
        return (uint8_t *)state;
    }
    return NULL;
}

/* free of p, with a hint of its class from the caller's size (0: none).
 * C++ sized delete (what std::allocator and `delete` of a complete type call)
 * and free_sized give one: when it is p's class, the push goes on that
 * class's stack by the hint, whose address is then known before p's pagemap
 * entry is read, and a malloc of the class right after need not wait for
 * the entry to learn where the free stored (on the Intel Xeon VM a
 * new/delete loop of 16 bytes took 10.2-10.5 ns a pair with the entry's
 * class, 6.1-6.4 with the size's; alloc/README.md, "Sized frees").  Any
 * other hint (a block that realloc shrank in place, a caller that states its
 * size wrongly) does not hold: p goes by its own class.  The checks are the
 * same either way; with no hint (free) the test folds away. */
TA_ALWAYS_INLINE void ta_free_hinted(void *p, uint32_t hint) {
    const ta_pm_entry_t *e = ta_pagemap_entry_at((uintptr_t)p);
    uint64_t info;
    uint32_t cls;
    uint8_t *state = ta_live_small(p, e, &info, &cls, true);
    if (TA_LIKELY(state)) {
        if (hint && TA_LIKELY(cls == hint)) {
            /* (hides the equality from the compiler, which would otherwise
             * take the entry's class for the push, the slower of the two) */
            __asm__("" : "+r"(hint));
            cls = hint;
        }
        ta_free_small(p, state, cls);
        return;
    }
    ta_free_slow(p, info); /* which says what p is */
}
TA_ALWAYS_INLINE void ta_do_free(void *p) { ta_free_hinted(p, 0); }
TA_ALWAYS_INLINE void ta_do_free_sized(void *p, size_t n) { ta_free_hinted(p, ta_size_to_class(n)); }

/* The operations behind the ta_* names (api.c), which override.c's standard
 * names call too.  (ta_malloc and ta_free are the inline paths above.) */
void *ta_impl_calloc(size_t n, size_t size);
void *ta_impl_realloc(void *p, size_t n);
void *ta_impl_reallocarray(void *p, size_t n, size_t size);
void *ta_impl_memalign(size_t align, size_t n);
int ta_impl_posix_memalign(void **out, size_t align, size_t n);
void *ta_impl_aligned_alloc(size_t align, size_t n);
void *ta_impl_valloc(size_t n);
void *ta_impl_pvalloc(size_t n);
size_t ta_impl_malloc_usable_size(void *p);
void ta_impl_free_sized(void *p, size_t size);
void ta_impl_free_aligned_sized(void *p, size_t align, size_t size);
int ta_impl_malloc_trim(size_t pad);
int ta_impl_owns(const void *p);

static inline bool ta_is_pow2(size_t a) { return a && !(a & (a - 1)); }

#endif
