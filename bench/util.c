/* bench/util.c: helpers shared by the workloads (see workloads.h). */
#define _GNU_SOURCE
#include "workloads.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t bench_mixed_size(bench_rng *r)
{
    unsigned pick = (unsigned)(bench_rand(r) % 100);
    if (pick < 75)
        return bench_rand_range(r, 16, 256);
    if (pick < 95)
        return bench_rand_range(r, 257, 2048);
    return bench_rand_range(r, 2049, 16384);
}

void bench_permutation(uint32_t *p, size_t n, bench_rng *r)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(bench_rand(r) % i);
        uint32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

void bench_touch(void *p, size_t from, size_t n)
{
    volatile char *c = p;
    if (n == 0)
        return;
    for (size_t off = from; off < n; off += BENCH_PAGE)
        c[off] = (char)off;
    c[n - 1] = 1;
}

/* the value of "Key:   123 kB" in /proc/self/status, in bytes.  No stdio:
 * the workloads must not make allocations of their own between phases. */
static size_t status_kb(const char *key)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    size_t klen = strlen(key);
    for (char *line = buf; line && *line; ) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            char *s = line + klen + 1;
            while (*s == ' ' || *s == '\t')
                s++;
            size_t kb = 0;
            while (*s >= '0' && *s <= '9')
                kb = kb * 10 + (size_t)(*s++ - '0');
            return kb * 1024;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

size_t bench_rss(void) { return status_kb("VmRSS"); }
size_t bench_peak_rss(void) { return status_kb("VmHWM"); }

int bench_reset_peak_rss(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, "5", 1);
    close(fd);
    return n == 1 ? 0 : -1;
}

int bench_thread_slot(tb_state *st)
{
    int t = tb_thread_index(st);
    if (t >= BENCH_MAX_THREADS) {
        tb_skip_with_error(st, "too many threads");
        return -1;
    }
    return t;
}

void bench_backoff(unsigned *spins)
{
    if (++*spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ volatile("yield");
#endif
    } else
        sched_yield();
}

const char *bench_malloc_origin(void)
{
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (sym && dladdr(sym, &info) && info.dli_fname)
        return info.dli_fname;
    return "unknown";
}
