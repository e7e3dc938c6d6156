/* test_os.c: tier 4 (os.c).  Mappings come back aligned, zeroed, writable and
 * not yet resident, and take exactly the address space asked for; releasing
 * pages zeroes them and gives the memory back (RSS and mincore); the counters
 * move by exactly what was done; the clock never goes back.
 *
 * Between two counter snapshots the tests call nothing that may allocate
 * (no Criterion assertion): the test binary's malloc is tieralloc too. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "overcommit.h"

#define OS_PAGE 4096

static void tu_init_allocator(void) { ta_ensure_init(); }
TestSuite(os, .init = tu_init_allocator, .timeout = 30);

/* /proc/self/statm fields (in OS pages) without allocating: 0 = size, 1 = resident */
static long statm_field(int field) {
    char buf[256];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    const char *p = buf;
    for (int i = 0; i < field; i++) {
        while (*p && *p != ' ') p++;
        if (*p) p++;
    }
    long v = 0;
    while (*p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return v;
}

/* OS pages of [p, p+size) resident according to mincore, or -1 if the range
 * is not (entirely) mapped */
static long resident_pages(void *p, size_t size) {
    static unsigned char vec[(64u << 20) / OS_PAGE];
    size_t n = (size + OS_PAGE - 1) / OS_PAGE;
    if (n > sizeof vec) return -2;
    if (mincore(p, size, vec) != 0) return -1;
    long r = 0;
    for (size_t i = 0; i < n; i++) r += vec[i] & 1;
    return r;
}

static bool all_zero(const void *p, size_t size) {
    const uint64_t *w = p;
    for (size_t i = 0; i < size / 8; i++)
        if (w[i]) return false;
    return true;
}

Test(os, map_is_aligned_zeroed_writable_and_lazy) {
    const size_t sizes[] = {TA_PAGE_SIZE, 3 * TA_PAGE_SIZE, (size_t)1 << 20, (size_t)5 << 20};
    for (size_t align = (size_t)8 << 10; align <= (size_t)4 << 20; align *= 2) {
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t size = sizes[si];
            ta_os_stats_t a, b, c;
            ta_os_stats(&a);
            long vm0 = statm_field(0);
            char *p = ta_os_map(size, align);
            long vm1 = statm_field(0);
            ta_os_stats(&b);
            long res = p ? resident_pages(p, size) : -3;

            cr_assert_not_null(p, "ta_os_map(%zu, %zu) failed", size, align);
            cr_assert_eq((uintptr_t)p % align, 0u, "ta_os_map(%zu, %zu) = %p misaligned", size, align, (void *)p);
            /* exactly `size` bytes of address space: the over-mapping is trimmed */
            cr_assert_eq((vm1 - vm0) * OS_PAGE, (long)size, "map(%zu, %zu): address space grew by %ld bytes", size,
                         align, (vm1 - vm0) * OS_PAGE);
            cr_assert_eq(b.mapped_bytes - a.mapped_bytes, size);
            cr_assert_eq(b.n_mmap - a.n_mmap, 1u);
            cr_assert_eq(res, 0, "fresh mapping has %ld resident pages", res);
            cr_assert(all_zero(p, size), "fresh mapping not zero");

            for (size_t off = 0; off < size; off += OS_PAGE) {
                p[off] = (char)(off / OS_PAGE + 1);
                p[off + OS_PAGE - 1] = (char)0xA5;
            }
            for (size_t off = 0; off < size; off += OS_PAGE) {
                cr_assert_eq(p[off], (char)(off / OS_PAGE + 1));
                cr_assert_eq(p[off + OS_PAGE - 1], (char)0xA5);
            }

            vm0 = statm_field(0);
            ta_os_unmap(p, size);
            vm1 = statm_field(0);
            ta_os_stats(&c);
            cr_assert_eq((vm0 - vm1) * OS_PAGE, (long)size, "unmap gave back %ld bytes of %zu",
                         (vm0 - vm1) * OS_PAGE, size);
            cr_assert_eq(resident_pages(p, size), -1, "range still mapped after ta_os_unmap");
            cr_assert_eq(c.mapped_bytes, a.mapped_bytes);
            cr_assert_eq(c.n_munmap - b.n_munmap, 1u);
        }
    }
}

Test(os, os_page_alignment_is_enough_for_small_aligns) {
    for (int i = 0; i < 16; i++) {
        char *p = ta_os_map(OS_PAGE * (size_t)(i + 1), OS_PAGE);
        cr_assert_not_null(p);
        cr_assert_eq((uintptr_t)p % OS_PAGE, 0u);
        cr_assert(all_zero(p, OS_PAGE * (size_t)(i + 1)));
        memset(p, 0x5a, OS_PAGE * (size_t)(i + 1));
        ta_os_unmap(p, OS_PAGE * (size_t)(i + 1));
    }
}

Test(os, release_zeroes_pages_and_drops_rss) {
    const size_t size = (size_t)16 << 20;
    char *p = ta_os_map(size, (size_t)2 << 20);
    cr_assert_not_null(p);
    for (size_t off = 0; off < size; off += OS_PAGE) memset(p + off, 0x77, 64);
    long res_before = resident_pages(p, size);
    long rss0 = statm_field(1);
    ta_os_stats_t a, b;
    ta_os_stats(&a);
    ta_os_release(p, size);
    ta_os_stats(&b);
    long rss1 = statm_field(1);
    long res_after = resident_pages(p, size);

    cr_assert_eq(res_before, (long)(size / OS_PAGE), "written pages not resident (%ld)", res_before);
    cr_assert_eq(res_after, 0, "%ld pages still resident after release", res_after);
    /* the process gave back (nearly) all of it: other threads may fault a few pages in */
    cr_assert_geq((rss0 - rss1) * OS_PAGE, (long)(size - size / 16), "RSS fell by only %ld bytes of %zu",
                  (rss0 - rss1) * OS_PAGE, size);
    cr_assert_eq(b.n_madvise - a.n_madvise, 1u);
    cr_assert_eq(b.released_bytes - a.released_bytes, size);
    cr_assert_eq(b.mapped_bytes, a.mapped_bytes, "release must not unmap");
    cr_assert(all_zero(p, size), "released pages do not read as zero");

    /* still mapped and usable after release */
    for (size_t off = 0; off < size; off += OS_PAGE) p[off] = 1;
    cr_assert_eq(resident_pages(p, size), (long)(size / OS_PAGE));
    ta_os_unmap(p, size);
}

Test(os, partial_release_leaves_the_rest) {
    const size_t size = 64 * (size_t)OS_PAGE;
    char *p = ta_os_map(size, TA_PAGE_SIZE);
    cr_assert_not_null(p);
    memset(p, 0x33, size);
    ta_os_release(p + 16 * OS_PAGE, 16 * OS_PAGE);
    /* (before reading: a read maps the zero page, which mincore counts) */
    cr_assert_eq(resident_pages(p, size), 48);
    for (size_t i = 0; i < size; i++) {
        char want = (i >= 16 * OS_PAGE && i < 32 * OS_PAGE) ? 0 : 0x33;
        if (p[i] != want) cr_assert_fail("byte %zu is %d, want %d", i, p[i], want);
    }
    ta_os_unmap(p, size);
}

Test(os, impossible_maps_fail_cleanly) {
    ta_os_stats_t a, b;
    ta_os_stats(&a);
    errno = 1234;
    void *p1 = ta_os_map((size_t)1 << 62, TA_PAGE_SIZE);        /* more than the address space */
    int e1 = errno;
    void *p2 = ta_os_map(SIZE_MAX - 8192, (size_t)4 << 20);      /* size + alignment overflows */
    int e2 = errno;
    void *p3 = ta_os_map(((size_t)1 << 47) + 4096, (size_t)1 << 22); /* larger than user space */
    int e3 = errno;
    ta_os_stats(&b);
    cr_assert_null(p1);
    cr_assert_null(p2);
    cr_assert_null(p3);
    cr_assert_eq(e1, 1234, "errno changed to %d", e1);
    cr_assert_eq(e2, 1234, "errno changed to %d", e2);
    cr_assert_eq(e3, 1234, "errno changed to %d", e3);
    cr_assert_eq(b.mapped_bytes, a.mapped_bytes, "failed maps were counted as mapped");
}

Test(os, errno_preserved_by_successful_calls) {
    errno = 4321;
    void *p = ta_os_map((size_t)1 << 20, (size_t)1 << 20);
    cr_assert_not_null(p);
    ta_os_release(p, (size_t)1 << 20);
    ta_os_unmap(p, (size_t)1 << 20);
    cr_assert_eq(errno, 4321);
}

Test(os, clock_is_monotonic) {
    uint64_t prev = ta_os_now_ms();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t mono_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    for (int i = 0; i < 200000; i++) {
        uint64_t now = ta_os_now_ms();
        if (now < prev) cr_assert_fail("ta_os_now_ms went back from %lu to %lu", prev, now);
        prev = now;
    }
    /* the same time base as CLOCK_MONOTONIC (within a coarse tick or so) */
    uint64_t t0 = ta_os_now_ms();
    cr_assert_lt(t0 > mono_ms ? t0 - mono_ms : mono_ms - t0, (uint64_t)60000,
                 "ta_os_now_ms %lu vs CLOCK_MONOTONIC %lu ms", t0, mono_ms);
    /* 60 ms of sleep is at least 60 ms of monotonic time; a coarse clock may
     * lag by a scheduler tick (<= 10 ms) */
    struct timespec d = {0, 60 * 1000000};
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {
    }
    uint64_t t1 = ta_os_now_ms();
    cr_assert_geq(t1 - t0, (uint64_t)40, "clock advanced %lu ms over a 60 ms sleep", t1 - t0);
}

/* Block memory is accounted (no MAP_NORESERVE): under the heuristic or the
 * strict overcommit policy, a mapping larger than RAM + swap fails at once,
 * leaving no address space behind.  A sparse table (MAP_NORESERVE) of the
 * same size is allowed under the heuristic policy: the two differ. */
Test(os, block_memory_is_accounted_by_the_kernel) {
    int mode = need_accounting();
    void *got[11];
    long vm0 = statm_field(0);
    ta_os_stats_t a, b;
    ta_os_stats(&a);
    for (int i = 0; i <= 10; i++) got[i] = ta_os_map((size_t)1 << (36 + i), TA_PAGE_SIZE);
    void *aligned = ta_os_map((size_t)1 << 36, (size_t)1 << 30);
    void *near = ta_os_map_near((void *)((uintptr_t)1 << 44), (size_t)1 << 36, TA_PAGE_SIZE);
    ta_os_stats(&b);
    long vm1 = statm_field(0);
    for (int i = 0; i <= 10; i++) cr_assert_null(got[i], "a mapping of 2^%d bytes succeeded", 36 + i);
    cr_assert_null(aligned);
    cr_assert_null(near);
    cr_assert_eq(b.mapped_bytes, a.mapped_bytes);
    cr_assert_eq(vm1, vm0, "failed mappings left %ld pages of address space", vm1 - vm0);

    if (mode == 0) {
        void *sparse = ta_os_map_sparse((size_t)1 << 36, 4096);
        cr_assert_not_null(sparse, "a sparse (MAP_NORESERVE) table of 2^36 bytes was refused");
        cr_assert(ta_os_unmap(sparse, (size_t)1 << 36));
    }
}

/* Successive mappings asked for next to each other are adjacent: the page
 * heap's growth leaves no holes. */
Test(os, mappings_near_a_hint_are_adjacent) {
    const size_t size = (size_t)2 << 20;
    char *p[8];
    p[0] = ta_os_map(size, TA_PAGE_SIZE);
    for (int i = 1; i < 8; i++) p[i] = p[i - 1] ? ta_os_map_near(p[i - 1] - size, size, TA_PAGE_SIZE) : NULL;
    int adjacent = 0;
    for (int i = 1; i < 8; i++) {
        cr_assert_not_null(p[i]);
        cr_assert_eq((uintptr_t)p[i] % TA_PAGE_SIZE, 0u);
        adjacent += p[i] + size == p[i - 1];
    }
    /* something else may take one of the places; not most of them */
    cr_assert_geq(adjacent, 6, "only %d of 7 mappings went where asked", adjacent);
    for (int i = 0; i < 8; i++) cr_assert(ta_os_unmap(p[i], size));
}

/* ta_os_move moves pages without copying them: the bytes arrive at the start
 * of the destination, the rest of it is zero, the source stays mapped, zero
 * and not resident.  A source that lies in two kernel mappings (here: one
 * half made read-only, which splits it) is refused before anything changes:
 * the source keeps its bytes and the destination is given up (unmapped), and
 * the counters say both. */
Test(os, move_takes_the_pages_or_changes_nothing) {
    const size_t size = (size_t)1 << 20, to_size = 2 * size;
    char *src = ta_os_map(size, TA_PAGE_SIZE), *dst = ta_os_map(to_size, TA_PAGE_SIZE);
    cr_assert(src && dst);
    for (size_t i = 0; i < size; i += OS_PAGE) src[i] = (char)(i / OS_PAGE + 1);
    ta_os_stats_t a, b;
    ta_os_stats(&a);
    bool moved = ta_os_move(src, size, dst, to_size);
    ta_os_stats(&b);
    if (!moved && b.n_moved == a.n_moved && b.mapped_bytes == a.mapped_bytes - to_size) {
        cr_assert(ta_os_unmap(src, size));
        cr_skip_test("the kernel cannot move pages (MREMAP_DONTUNMAP: Linux 5.7)");
    }
    cr_assert(moved);
    cr_assert_eq(b.n_moved, a.n_moved + 1);
    cr_assert_eq(b.mapped_bytes, a.mapped_bytes, "a move maps nothing more");
    for (size_t i = 0; i < size; i += OS_PAGE) cr_assert_eq(dst[i], (char)(i / OS_PAGE + 1), "page %zu", i / OS_PAGE);
    cr_assert(all_zero(dst + size, to_size - size));
    cr_assert_eq(resident_pages(src, size), 0, "the source's pages stayed resident");
    cr_assert(all_zero(src, size), "the source reads other than zero");
    src[0] = 1; /* and is writable still */

    /* a source in two mappings */
    char *two = ta_os_map(size, TA_PAGE_SIZE), *to = ta_os_map(size, TA_PAGE_SIZE);
    cr_assert(two && to);
    memset(two, 7, size);
    cr_assert_eq(mprotect(two + size / 2, size / 2, PROT_READ), 0);
    ta_os_stats(&a);
    moved = ta_os_move(two, size, to, size);
    ta_os_stats(&b);
    cr_assert_not(moved, "a source in two mappings moved");
    cr_assert_eq(b.n_moved, a.n_moved);
    cr_assert_eq(b.mapped_bytes, a.mapped_bytes - size, "the destination was not given up");
    cr_assert_eq(resident_pages(to, size), -1, "the destination is still mapped");
    for (size_t i = 0; i < size; i++)
        if (two[i] != 7) cr_assert_fail("the source lost byte %zu", i);
    cr_assert(ta_os_unmap(two, size));
    cr_assert(ta_os_unmap(src, size));
    cr_assert(ta_os_unmap(dst, to_size));
}

/* Each move leaves a kernel mapping more in the process for good: after
 * 1 024 of them ta_os_move refuses (and gives the destination up), so that a
 * long-running program that grows many large buffers cannot run the process
 * into vm.max_map_count. */
Test(os, moves_stop_after_1024) {
    const size_t size = 2 * OS_PAGE;
    /* a first move tells whether the kernel can (it refuses it with EINVAL before Linux 5.7) */
    char *s0 = ta_os_map(size, TA_PAGE_SIZE), *t0 = ta_os_map(size, TA_PAGE_SIZE);
    cr_assert(s0 && t0);
    if (!ta_os_move(s0, size, t0, size) && !ta_os_can_move())
        cr_skip_test("the kernel cannot move pages (MREMAP_DONTUNMAP: Linux 5.7)");
    ta_os_stats_t a;
    ta_os_stats(&a);
    char *keep = ta_os_map(1024 * size, TA_PAGE_SIZE); /* the destinations, side by side */
    cr_assert_not_null(keep);
    for (uint64_t moved = a.n_moved; moved < 1024; moved++) {
        char *src = ta_os_map(size, TA_PAGE_SIZE);
        cr_assert_not_null(src);
        src[0] = (char)moved;
        char *to = keep + (moved - a.n_moved) * size;
        bool ok = ta_os_move(src, size, to, size);
        if (!ok) cr_assert_fail("move %llu failed", (unsigned long long)moved);
        if (to[0] != (char)moved) cr_assert_fail("move %llu lost its byte", (unsigned long long)moved);
        cr_assert(ta_os_unmap(src, size));
    }
    cr_assert_not(ta_os_can_move(), "still moving after 1 024 moves");
    char *src = ta_os_map(size, TA_PAGE_SIZE), *to = ta_os_map(size, TA_PAGE_SIZE);
    cr_assert(src && to);
    src[0] = 5;
    ta_os_stats_t b, c;
    ta_os_stats(&b);
    bool ok = ta_os_move(src, size, to, size);
    ta_os_stats(&c);
    cr_assert_not(ok);
    cr_assert_eq(c.n_moved, b.n_moved);
    cr_assert_eq(c.mapped_bytes, b.mapped_bytes - size, "the destination was not given up");
    cr_assert_eq(src[0], 5);
    cr_assert(ta_os_unmap(src, size));
}
