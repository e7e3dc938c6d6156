/* test_oom.c: honest failures (issue 10, items 2 and 4), through the public
 * API of the shared library, as programs see it.
 *
 * - Sizes the machine cannot back fail with NULL/ENOMEM, as with glibc,
 *   instead of succeeding on unaccounted address space; nothing stays mapped.
 * - Address space given back to the heap is given back to the OS (trim, or a
 *   mapping that fails), so that under RLIMIT_AS a larger block fits where
 *   many smaller ones were. */
#include "testutil.h"

#include <malloc.h>

#include "overcommit.h"

TestSuite(oom, .timeout = 60);

/* Address space of the process in bytes (VmSize), before any limit is set. */
static size_t vm_bytes(void) {
    size_t kb = 0;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
    fclose(f);
    return kb << 10;
}

Test(oom, impossible_sizes_fail_with_enomem) {
    need_accounting();
    size_t vm0 = vm_bytes();
    for (int b = 36; b <= 46; b++) {
        size_t n = tu_hide_size((size_t)1 << b);
        errno = 0;
        void *p = malloc(n);
        int e = errno;
        cr_assert_null(p, "malloc(2^%d) succeeded", b);
        cr_assert_eq(e, ENOMEM, "malloc(2^%d): errno %d", b, e);
        errno = 0;
        p = calloc(1, n);
        e = errno;
        cr_assert_null(p, "calloc(1, 2^%d) succeeded", b);
        cr_assert_eq(e, ENOMEM);
        p = calloc(n >> 4, 16);
        cr_assert_null(p, "calloc(2^%d, 16) succeeded", b - 4);
    }
    char *q = malloc(100);
    cr_assert_not_null(q);
    memset(q, 0x5c, 100);
    errno = 0;
    void *r = realloc(q, tu_hide_size((size_t)1 << 45));
    cr_assert_null(r, "realloc to 2^45 succeeded");
    cr_assert_eq(errno, ENOMEM);
    for (int i = 0; i < 100; i++) cr_assert_eq(q[i], 0x5c, "realloc failed but changed the block");
    free(q);
    void *a = NULL;
    cr_assert_eq(posix_memalign(&a, (size_t)1 << 40, 1), ENOMEM);
    errno = 0;
    cr_assert_null(aligned_alloc(tu_hide_size((size_t)1 << 38), (size_t)1 << 38));
    cr_assert_eq(errno, ENOMEM);
    malloc_trim(0);
    size_t vm1 = vm_bytes();
    /* none of it stays mapped (the process may have grown a little meanwhile) */
    cr_assert_lt(vm1, vm0 + ((size_t)64 << 20), "address space grew from %zu to %zu bytes", vm0, vm1);
    /* and the heap still works */
    void *ok = malloc((size_t)1 << 20);
    cr_assert_not_null(ok);
    memset(ok, 1, (size_t)1 << 20);
    free(ok);
}

/* Under RLIMIT_AS: fill the address space with 1 MB blocks (10^6 bytes: not
 * a divisor of the heap's 2 MiB growth step, so pieces of every mapping are
 * left over), free them all, then ask for one 50 MiB block.  trim: after malloc_trim(0) (the heap
 * unmaps its released address space); otherwise the failing mapping makes
 * the heap unmap it and try again. */
static void refill_child(void *arg) {
    int trim = arg != NULL;
    enum { MAXB = 4096 };
    static void *blocks[MAXB];
    struct rlimit rl;
    rlim_t lim = (rlim_t)vm_bytes() + (rlim_t)200000 * 1024; /* ulimit -v 200000, over what is mapped now */
    rl.rlim_cur = rl.rlim_max = lim;
    TU_CHILD_CHECK(setrlimit(RLIMIT_AS, &rl) == 0, "setrlimit: %s", strerror(errno));
    int n = 0;
    while (n < MAXB && (blocks[n] = malloc(1000000)) != NULL) {
        memset(blocks[n], n, 4096);
        n++;
    }
    TU_CHILD_CHECK(n < MAXB, "the limit never stopped malloc");
    TU_CHILD_CHECK(n >= 100, "only %d blocks of 1 MB under a 200 MB limit", n);
    for (int i = 0; i < n; i++) free(blocks[i]);
    if (trim) malloc_trim(0);
    char *big = malloc((size_t)50 << 20);
    TU_CHILD_CHECK(big != NULL, "malloc(50 MiB) failed after freeing %d MB (trim %d): errno %d", n, trim, errno);
    memset(big, 7, (size_t)50 << 20);
    free(big);
    /* and the small blocks fit again too */
    for (int i = 0; i < n / 2; i++) {
        blocks[i] = malloc(1000000);
        TU_CHILD_CHECK(blocks[i] != NULL, "block %d of %d no longer fits", i, n / 2);
    }
    for (int i = 0; i < n / 2; i++) free(blocks[i]);
    printf("%d blocks\n", n);
}

Test(oom, address_space_is_reused_after_trim) {
    static tu_child_t c;
    tu_run_child(refill_child, (void *)1, 50000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(strstr(c.out, " blocks") != NULL, "stdout: %s", c.out);
}

Test(oom, address_space_is_reused_when_a_mapping_fails) {
    static tu_child_t c;
    tu_run_child(refill_child, NULL, 50000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(strstr(c.out, " blocks") != NULL, "stdout: %s", c.out);
}
