/* override.c: the standard names a program calls: glibc's malloc family and
 * its __libc_* aliases, mallopt/mallinfo/malloc_stats/malloc_info, and the C++
 * operators (Itanium ABI names).  malloc, free and the operators
 * inline the fast paths of api.h; the rest hand over to api.c's operations.
 * A program never sees a block that two allocators handle. */
#include "api.h"

#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "tieralloc.h"

#define TA_ALIAS(name, target) \
    extern __typeof(target) name __attribute__((alias(#target), visibility("default")))

/* ---- the malloc family ------------------------------------------------------- */
TA_EXPORT TA_HOT_ENTRY void *malloc(size_t n) { return ta_do_malloc(n); }
TA_EXPORT TA_HOT_ENTRY void free(void *p) { ta_do_free(p); }
TA_EXPORT void *calloc(size_t n, size_t size) { return ta_impl_calloc(n, size); }
TA_EXPORT void *realloc(void *p, size_t n) { return ta_impl_realloc(p, n); }
TA_EXPORT void *reallocarray(void *p, size_t n, size_t size) { return ta_impl_reallocarray(p, n, size); }
TA_EXPORT void *memalign(size_t align, size_t n) { return ta_impl_memalign(align, n); }
TA_EXPORT int posix_memalign(void **out, size_t align, size_t n) { return ta_impl_posix_memalign(out, align, n); }
TA_EXPORT void *aligned_alloc(size_t align, size_t n) { return ta_impl_aligned_alloc(align, n); }
TA_EXPORT void *valloc(size_t n) { return ta_impl_valloc(n); }
TA_EXPORT void *pvalloc(size_t n) { return ta_impl_pvalloc(n); }
TA_EXPORT size_t malloc_usable_size(void *p) { return ta_impl_malloc_usable_size(p); }
TA_EXPORT void free_sized(void *p, size_t size) { ta_do_free_sized(p, size); }
TA_EXPORT void free_aligned_sized(void *p, size_t align, size_t size) {
    (void)align;
    (void)size;
    ta_do_free(p);
}
TA_EXPORT int malloc_trim(size_t pad) { return ta_impl_malloc_trim(pad); }

/* (the aliases need not repeat the attributes glibc's headers give the names) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#pragma GCC diagnostic ignored "-Wmissing-attributes"
TA_ALIAS(__libc_malloc, malloc);
TA_ALIAS(__libc_free, free);
TA_ALIAS(cfree, free);
TA_ALIAS(__libc_cfree, free);
TA_ALIAS(__libc_calloc, calloc);
TA_ALIAS(__libc_realloc, realloc);
TA_ALIAS(__libc_reallocarray, reallocarray);
TA_ALIAS(__libc_memalign, memalign);
TA_ALIAS(__posix_memalign, posix_memalign);
TA_ALIAS(__libc_aligned_alloc, aligned_alloc);
TA_ALIAS(__libc_valloc, valloc);
TA_ALIAS(__libc_pvalloc, pvalloc);
TA_ALIAS(__malloc_usable_size, malloc_usable_size);
TA_ALIAS(__libc_free_sized, free_sized);
TA_ALIAS(__libc_free_aligned_sized, free_aligned_sized);
TA_ALIAS(__malloc_trim, malloc_trim);
#pragma GCC diagnostic pop

/* mallopt: glibc's tunables mean nothing here; answer as glibc 2.36 does: 1
 * (success) for every parameter, known or not, except M_MXFAST with a value
 * outside 0..160 (its MAX_FAST_SIZE on 64-bit), which it refuses with 0. */
static int do_mallopt(int param, int value) {
    if (param == M_MXFAST && (value < 0 || value > 80 * (int)sizeof(size_t) / 4)) return 0;
    return 1;
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
    if (options != 0) return EINVAL; /* as glibc: the error as the result, errno untouched */
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
        void *p = align ? ta_alloc_aligned(align, n) : ta_do_malloc(n);
        if (p) return p;
    }
    if (nothrow) return NULL;
    if (_ZSt17__throw_bad_allocv) _ZSt17__throw_bad_allocv();
    ta_fatal("operator new of %zu bytes failed: out of memory", n);
}

static inline void *cxx_new(size_t n) {
    void *p = ta_do_malloc(n);
    return TA_LIKELY(p) ? p : new_failed(n, 0, false);
}
static inline void *cxx_new_nothrow(size_t n) {
    void *p = ta_do_malloc(n);
    return TA_LIKELY(p) ? p : new_failed(n, 0, true);
}
static inline void *cxx_new_aligned(size_t n, size_t al) {
    void *p = ta_is_pow2(al) ? ta_alloc_aligned(al, n) : NULL;
    return TA_LIKELY(p) ? p : new_failed(n, al, false);
}
static inline void *cxx_new_aligned_nothrow(size_t n, size_t al) {
    void *p = ta_is_pow2(al) ? ta_alloc_aligned(al, n) : NULL;
    return TA_LIKELY(p) ? p : new_failed(n, al, true);
}

#define NOTHROW_T const void * /* const std::nothrow_t & */
TA_EXPORT TA_HOT_ENTRY void *_Znwm(size_t n) { return cxx_new(n); }
TA_EXPORT TA_HOT_ENTRY void *_Znam(size_t n) { return cxx_new(n); }
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
TA_EXPORT TA_HOT_ENTRY void _ZdlPv(void *p) { ta_do_free(p); }
TA_EXPORT TA_HOT_ENTRY void _ZdaPv(void *p) { ta_do_free(p); }
TA_EXPORT TA_HOT_ENTRY void _ZdlPvm(void *p, size_t n) { ta_do_free_sized(p, n); }
TA_EXPORT TA_HOT_ENTRY void _ZdaPvm(void *p, size_t n) { ta_do_free_sized(p, n); }
TA_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, NOTHROW_T t) { (void)t; ta_do_free(p); }
TA_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, NOTHROW_T t) { (void)t; ta_do_free(p); }
TA_EXPORT void _ZdlPvSt11align_val_t(void *p, size_t al) { (void)al; ta_do_free(p); }
TA_EXPORT void _ZdaPvSt11align_val_t(void *p, size_t al) { (void)al; ta_do_free(p); }
TA_EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; ta_do_free(p); }
TA_EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; ta_do_free(p); }
TA_EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, NOTHROW_T t) {
    (void)al; (void)t;
    ta_do_free(p);
}
TA_EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, NOTHROW_T t) {
    (void)al; (void)t;
    ta_do_free(p);
}
