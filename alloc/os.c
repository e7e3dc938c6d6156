/* os.c: tier 4, the only file that talks to the kernel about memory. */
#include "internal.h"

#include <errno.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t os_mapped, os_released, os_nmmap, os_nmunmap, os_nmadvise;

void *ta_os_map(size_t size, size_t align) {
    int saved = errno;
    /* over-map by the alignment, then trim both ends */
    size_t span = size + (align > 4096 ? align : 0);
    if (span < size) return NULL;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    __atomic_fetch_add(&os_nmmap, 1, __ATOMIC_RELAXED);
    if (p == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    if (start > (uintptr_t)p) munmap(p, start - (uintptr_t)p);
    uintptr_t end = (uintptr_t)p + span, want_end = start + size;
    if (end > want_end) munmap((void *)want_end, end - want_end);
    __atomic_fetch_add(&os_mapped, size, __ATOMIC_RELAXED);
    errno = saved;
    return (void *)start;
}

void ta_os_unmap(void *p, size_t size) {
    int saved = errno;
    munmap(p, size);
    __atomic_fetch_sub(&os_mapped, size, __ATOMIC_RELAXED);
    __atomic_fetch_add(&os_nmunmap, 1, __ATOMIC_RELAXED);
    errno = saved;
}

void ta_os_release(void *p, size_t size) {
    int saved = errno;
    /* MADV_DONTNEED drops the pages at once, so RSS tells the truth (MADV_FREE
     * would leave them counted until the kernel is under pressure). */
    madvise(p, size, MADV_DONTNEED);
    __atomic_fetch_add(&os_released, size, __ATOMIC_RELAXED);
    __atomic_fetch_add(&os_nmadvise, 1, __ATOMIC_RELAXED);
    errno = saved;
}

uint64_t ta_os_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void ta_os_stats(ta_os_stats_t *out) {
    out->mapped_bytes = __atomic_load_n(&os_mapped, __ATOMIC_RELAXED);
    out->released_bytes = __atomic_load_n(&os_released, __ATOMIC_RELAXED);
    out->n_mmap = __atomic_load_n(&os_nmmap, __ATOMIC_RELAXED);
    out->n_munmap = __atomic_load_n(&os_nmunmap, __ATOMIC_RELAXED);
    out->n_madvise = __atomic_load_n(&os_nmadvise, __ATOMIC_RELAXED);
}
