/* overcommit.h: for the tests of honest failures (test_os, test_oom).  Block
 * memory is accounted, so a mapping of 2^36 bytes fails when the kernel's
 * overcommit policy is heuristic (0) or strict (2) and RAM + swap is less
 * than that.  Include after <criterion/criterion.h>. */
#ifndef TA_TEST_OVERCOMMIT_H
#define TA_TEST_OVERCOMMIT_H

#include <fcntl.h>
#include <stdint.h>
#include <sys/sysinfo.h>
#include <unistd.h>

/* vm.overcommit_memory (0 heuristic, 1 always, 2 strict), or -1 */
static int overcommit_mode(void) {
    char c = 0;
    int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, &c, 1);
    close(fd);
    return n == 1 && c >= '0' && c <= '2' ? c - '0' : -1;
}

/* Skip the test unless the kernel refuses a single mapping of 2^36 bytes;
 * returns the overcommit mode. */
static int need_accounting(void) {
    int mode = overcommit_mode();
    struct sysinfo si;
    cr_assert_eq(sysinfo(&si), 0);
    uint64_t backing = ((uint64_t)si.totalram + si.totalswap) * si.mem_unit;
    if (mode != 0 && mode != 2) cr_skip_test("vm.overcommit_memory is %d: every size is possible", mode);
    if (backing >= (uint64_t)1 << 36)
        cr_skip_test("%lu bytes of RAM + swap: 2^36 is not impossible here", (unsigned long)backing);
    return mode;
}

#endif
