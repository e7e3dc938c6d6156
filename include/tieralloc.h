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
void ta_free_sized(void *p, size_t size);               /* C23; the size is checked, not trusted */
void ta_free_aligned_sized(void *p, size_t alignment, size_t size);

/* Return every free page to the OS now (flushes the calling thread's cache and
 * the central caches first).  Returns 1 if any memory was released, else 0. */
int ta_malloc_trim(size_t pad);

/* 1 if p is the start of a live block that tieralloc handed out, else 0
 * (never aborts: a diagnostic aid). */
int ta_owns(const void *p);

#ifdef __cplusplus
}
#endif
#endif
