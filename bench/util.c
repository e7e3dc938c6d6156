/* bench/util.c: helpers shared by the workloads (see workloads.h). */
#define _GNU_SOURCE
#include "workloads.h"

#include <dlfcn.h>
#include <pthread.h>
#include <time.h>
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

/* ---- the machine: how long a cache line takes to go between two CPUs ------- */
/* Two threads pinned to the first two CPUs the process may use hand a counter
 * back and forth: each round trip moves the counter's cache line there and
 * back.  On a virtual machine this latency changes while the host moves the
 * virtual CPUs (here 100 ns at times, 300-480 ns at others, from one second to
 * the next), and with it the time of every workload whose threads share
 * memory (pipeline64, server, remote_frees): tools/tieralloc-compare probes it
 * before each workload and reports it, so that a row can be read with the
 * machine's state at the time. */
#define RT_TRIPS 20000
#define RT_TRIALS 3
static _Alignas(64) atomic_long rt_flag;
static atomic_int rt_stop;

static int rt_pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *rt_echo(void *arg)
{
    if (rt_pin((int)(intptr_t)arg) != 0)
        atomic_store(&rt_stop, 1);
    for (long i = 0; !atomic_load_explicit(&rt_stop, memory_order_relaxed);) {
        long v = atomic_load_explicit(&rt_flag, memory_order_acquire);
        if (v == 2 * i + 1) {
            atomic_store_explicit(&rt_flag, 2 * i + 2, memory_order_release);
            i++;
        }
    }
    return NULL;
}

static double rt_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int bench_cpu_roundtrip(void)
{
    cpu_set_t set;
    int cpu[2], n = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 1;
    for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
        if (CPU_ISSET(c, &set))
            cpu[n++] = c;
    if (n < 2) {
        printf("cpu_roundtrip none: one CPU\n");
        return 0;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, rt_echo, (void *)(intptr_t)cpu[1]) != 0 || rt_pin(cpu[0]) != 0)
        return 1;
    double best = 0, worst = 0, all = 0;
    long trips = 0;
    int trials = 0;
    for (int k = 0; k < RT_TRIALS && !atomic_load(&rt_stop); k++) {
        double t0 = rt_now_ns(), per;
        long i = 0;
        for (; i < RT_TRIPS; i++) {
            long base = 2 * (trips + i);
            atomic_store_explicit(&rt_flag, base + 1, memory_order_release);
            while (atomic_load_explicit(&rt_flag, memory_order_acquire) != base + 2)
                if (atomic_load_explicit(&rt_stop, memory_order_relaxed))
                    break;
            if (atomic_load_explicit(&rt_stop, memory_order_relaxed))
                break;
            /* a busy machine may not run the other thread for a while: give up after a second */
            if ((i & 1023) == 1023 && rt_now_ns() - t0 > 1e9)
                break;
        }
        i += i < RT_TRIPS; /* the trip that broke off counts */
        per = (rt_now_ns() - t0) / (double)i;
        trips += i;
        trials++;
        all += per;
        if (k == 0 || per < best)
            best = per;
        if (per > worst)
            worst = per;
        if (i < RT_TRIPS)
            break;
    }
    atomic_store(&rt_stop, 1);
    pthread_join(t, NULL);
    if (!trips)
        return 1;
    printf("cpu_roundtrip cpus %d %d ns %.1f min %.1f max %.1f\n", cpu[0], cpu[1], all / trials, best, worst);
    return 0;
}
