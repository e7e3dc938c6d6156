/* os.c: tier 4, the only file that talks to the kernel about memory.
 *
 * Two kinds of mappings.  Memory that backs blocks (and the allocator's dense
 * records) is mapped without MAP_NORESERVE, so the kernel accounts it and its
 * overcommit policy applies: a request the machine cannot back fails here, at
 * mmap, instead of the process being OOM-killed later.  Large sparse tables
 * (the pagemap's leaves, of which only the entries for pages in use are ever
 * touched) are mapped with MAP_NORESERVE: their size follows the address
 * space they describe, not the memory the process uses. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef TA_SYS_RAW
long ta_sys(long nr, long a, long b, long c, long d, long e, long f) {
    int saved = errno;
    long r = syscall(nr, a, b, c, d, e, f);
    if (r == -1) r = -errno;
    errno = saved;
    return r;
}
#endif

static uint64_t os_mapped, os_released, os_nmmap, os_nmunmap, os_nmadvise, os_nmoved;

static void *map_raw(void *hint, size_t size, int extra) {
    long r = ta_sys6(SYS_mmap, hint, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
    return r < 0 && r > -4096 ? NULL : (void *)r;
}
static long unmap_raw(void *p, size_t size) { return ta_sys2(SYS_munmap, p, size); }

static void *map(void *hint, size_t size, size_t align, int extra) {
    __atomic_fetch_add(&os_nmmap, 1, __ATOMIC_RELAXED);
    if (align < 4096) align = 4096;
    char *p = NULL;
    if (align <= TA_PAGE_SIZE) {
        /* Exactly size bytes first, at the hint if there is one: mappings
         * placed next to each other leave no holes, and the page heap can
         * merge them.  Over-mapping (below) is for when the kernel's choice
         * is misaligned. */
        p = map_raw(hint, size, extra);
        if (p && (uintptr_t)p % align) {
            unmap_raw(p, size);
            p = NULL;
        } else if (!p)
            return NULL; /* not even size bytes: more would fail too */
    }
    if (!p) {
        /* over-map by the alignment, then trim both ends */
        size_t span = size + align;
        if (span < size) return NULL;
        char *q = map_raw(NULL, span, extra);
        if (!q) return NULL;
        uintptr_t start = ((uintptr_t)q + align - 1) & ~(uintptr_t)(align - 1);
        if (start > (uintptr_t)q) unmap_raw(q, start - (uintptr_t)q);
        uintptr_t end = (uintptr_t)q + span, want_end = start + size;
        if (end > want_end) unmap_raw((void *)want_end, end - want_end);
        p = (char *)start;
    }
    __atomic_fetch_add(&os_mapped, size, __ATOMIC_RELAXED);
    return p;
}

void *ta_os_map(size_t size, size_t align) { return map(NULL, size, align, 0); }

void *ta_os_map_near(void *hint, size_t size, size_t align) {
    if ((uintptr_t)hint % (align < 4096 ? 4096 : align)) hint = NULL;
    return map(hint, size, align, 0);
}

void *ta_os_map_sparse(size_t size, size_t align) { return map(NULL, size, align, MAP_NORESERVE); }

bool ta_os_unmap(void *p, size_t size) {
    /* munmap can fail when it would split a mapping past vm.max_map_count */
    bool ok = unmap_raw(p, size) == 0;
    if (ok) {
        __atomic_fetch_sub(&os_mapped, size, __ATOMIC_RELAXED);
        __atomic_fetch_add(&os_nmunmap, 1, __ATOMIC_RELAXED);
    }
    return ok;
}

bool ta_os_protect(void *p, size_t size, bool access) {
    return ta_sys3(SYS_mprotect, p, size, access ? PROT_READ | PROT_WRITE : PROT_NONE) == 0;
}

void ta_os_release(void *p, size_t size) {
    /* MADV_DONTNEED drops the pages at once, so RSS tells the truth (MADV_FREE
     * would leave them counted until the kernel is under pressure). */
    ta_sys3(SYS_madvise, p, size, MADV_DONTNEED);
    __atomic_fetch_add(&os_released, size, __ATOMIC_RELAXED);
    __atomic_fetch_add(&os_nmadvise, 1, __ATOMIC_RELAXED);
}

/* Linux 5.7+: the source stays mapped, as fresh zero pages (older kernels
 * refuse the flag with EINVAL, before they change anything) */
#ifndef MREMAP_MAYMOVE /* (<sys/mman.h> has them with _GNU_SOURCE only) */
#define MREMAP_MAYMOVE 1
#define MREMAP_FIXED 2
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
static bool move_refused; /* the kernel has no MREMAP_DONTUNMAP: copy, as before */
/* Each move leaves a kernel mapping more in the process for good (the new
 * one's pages never merge with their neighbours'), and vm.max_map_count
 * (65 530 by default) bounds the mappings of the whole process, the program's
 * own included: past this many moves, realloc copies again. */
#define OS_MOVES_MAX 1024

bool ta_os_can_move(void) {
    return !__atomic_load_n(&move_refused, __ATOMIC_RELAXED) &&
           __atomic_load_n(&os_nmoved, __ATOMIC_RELAXED) < OS_MOVES_MAX;
}

/* Two steps, so that no failure leaves a hole in a mapping of ours that
 * another thread's mmap could take meanwhile.  mremap with MREMAP_FIXED
 * unmaps its destination first and may fail after that (the source spans two
 * mappings, no memory for the kernel's records); without it, the kernel
 * places the pages where it likes and fails before it changes anything.  So
 * the pages first go where the kernel likes, whole mapping left in place
 * (MREMAP_DONTUNMAP), and only then, from that one mapping of exactly their
 * size, over `to`.  Should that second step fail, the bytes go back by copy
 * and `to` is given up: unmapped when it is surely ours, else left alone
 * (false either way; the caller stops using it). */
bool ta_os_move(void *from, size_t size, void *to, size_t to_size) {
    if (!ta_os_can_move()) {
        ta_os_unmap(to, to_size);
        return false;
    }
    long tmp = ta_sys4(SYS_mremap, from, size, size, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
    if (tmp < 0 && tmp > -4096) {
        if (tmp == -EINVAL) __atomic_store_n(&move_refused, true, __ATOMIC_RELAXED);
        ta_os_unmap(to, to_size);
        return false;
    }
    long r = ta_sys6(SYS_mremap, tmp, size, to_size, MREMAP_MAYMOVE | MREMAP_FIXED, to, 0);
    if (r == (long)to) {
        __atomic_fetch_add(&os_nmoved, 1, __ATOMIC_RELAXED);
        return true;
    }
    /* (never seen: only the kernel running out of memory for its records) */
    memcpy(from, (void *)tmp, size);
    unmap_raw((void *)tmp, size);
    /* `to` may have been unmapped, all of it, before the failure: when the
     * whole range is free, it was ours and is again, and goes; when any of
     * it is mapped, that may be ours still or another thread's new mapping,
     * and nothing of it is touched (ours then stays mapped, unused) */
    void *back = map_raw(to, to_size, MAP_FIXED_NOREPLACE);
    if (back == to) {
        unmap_raw(to, to_size);
    } else if (back) {
        unmap_raw(back, to_size); /* (a kernel that took the flag for a hint) */
    }
    __atomic_fetch_sub(&os_mapped, to_size, __ATOMIC_RELAXED);
    return false;
}

uint64_t ta_os_resident(const void *p, size_t size) {
    unsigned char vec[1024]; /* one byte per OS page: 4 MiB per call */
    uint64_t resident = 0;
    for (uintptr_t a = (uintptr_t)p, end = a + size; a < end;) {
        size_t len = end - a < sizeof vec * 4096 ? end - a : sizeof vec * 4096;
        if (ta_sys3(SYS_mincore, a, len, vec) != 0) return resident; /* (not a mapping of ours: stop) */
        for (size_t i = 0; i < (len + 4095) / 4096; i++) resident += (vec[i] & 1) ? 4096 : 0;
        a += len;
    }
    return resident < size ? resident : size;
}

long ta_os_read_file(const char *path, void *buf, size_t size) {
    long fd = ta_sys3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    long n = ta_sys3(SYS_read, fd, buf, size);
    ta_sys1(SYS_close, fd);
    return n < 0 ? -1 : n;
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
    out->n_moved = __atomic_load_n(&os_nmoved, __ATOMIC_RELAXED);
}
