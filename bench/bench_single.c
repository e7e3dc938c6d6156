/* bench/bench_single.c: single-threaded workloads.
 *
 *   fastpath/size:N    malloc(N), write, free, at fixed N (16 B .. 32 KiB)
 *   fastpath_random    the same at random sizes in 1 .. 1024 B
 *   fastpath_random_small  the same at random sizes in 1 .. 128 B (short
 *                      strings and nodes made and dropped: a handful of
 *                      classes, so a free and the next malloc often, but
 *                      not always, share one)
 *   new_delete/size:N  C++ `new` and sized `delete` (what a compiler emits for
 *                      `delete` of a complete type, and std::allocator),
 *                      write, at fixed N (16, 64 B)
 *   new_delete_random  the same at random sizes in 1 .. 128 B
 *   batch/blocks:N     N live blocks of mixed sizes, freed in random order
 *   scattered_reuse/blocks:N  N blocks of 64 B, each written whole when it is
 *                      allocated (as a constructor does), then all freed in
 *                      random order: more than the caches hold, so most go
 *                      back to their spans and come out of them again
 *   teardown/blocks:N  N blocks of 16 .. 256 B (a large structure of small
 *                      objects: a tree, a dict), the first byte of each
 *                      written, then all freed in random order: a heap of
 *                      some 140 MiB, far larger than the CPU's caches, so each
 *                      free pays for the cache lines of the allocator's own
 *                      records of the block
 *   realloc_growth     one block grown by realloc from 16 B to 4 MiB
 *   realloc_growth_64k one block grown by a quarter at a time from 16 B to
 *                      64 KiB, every new byte written, then freed
 *   realloc_doubling/mib:N  two buffers grown in turn by doubling from 4 KiB
 *                      to N MiB each, every new page written, then freed (a
 *                      program reading two big files into buffers; the two
 *                      keep each other from growing in place for long)
 *                      (op: both grown and freed)
 *   large/size:N       malloc(N) with N in 64 KiB .. 8 MiB, every page touched, free
 *   large_ends/size:N  malloc(N) with N in 64 KiB .. 4 MiB, first and last page
 *                      touched, free
 *   large_ends_mixed   the same with N cycling through 64 KiB .. 4 MiB
 *   fork/heap_mib:N    a process with N MiB of blocks of mixed sizes forks a
 *                      child that frees and allocates a few and exits; the
 *                      parent waits for it (op: one fork and wait; shells,
 *                      make and subprocess calls do this all the time)
 *   fork_threaded/heap_mib:N  the same from a process with a second thread of
 *                      its own, which allocated and now waits (a program's
 *                      thread pool, a logger): the allocator can no longer
 *                      count on being alone at fork
 *   spawn_small        start a short-lived program and wait for it: this binary
 *                      run as `tieralloc-bench --small-process` (it inherits
 *                      LD_PRELOAD, so the same allocator), which allocates a
 *                      hundred blocks of assorted sizes, writes them, frees half
 *                      and exits (op: one spawn and wait; what a shell script,
 *                      make or a configure script does for every command:
 *                      start-up, first use of many size classes, exit)
 *
 * One operation is one malloc+free pair (one realloc call for the realloc rows);
 * items_per_second is operations per second, so 1/items_per_second is the time
 * per operation. */
#include <pthread.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workloads.h"

/* pairs per benchmark iteration: amortises the shim's loop call */
#define PAIRS 64

static void bm_fastpath(tb_state *st, void *arg)
{
    (void)arg;
    size_t n = (size_t)tb_range(st, 0);
    unsigned v = 0;
    while (tb_keep_running(st)) {
        for (int i = 0; i < PAIRS; i++) {
            char *p = malloc(n);
            if (!p) {
                tb_skip_with_error(st, "malloc returned NULL");
                break;
            }
            *(volatile char *)p = (char)v++;
            tb_do_not_optimize(p);
            free(p);
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * PAIRS);
}

/* C++'s operator new and sized operator delete, called by their symbols:
 * the allocator's, if it has them, else libstdc++'s (which calls malloc and
 * free): what a C++ program would get with it. */
extern void *_Znwm(size_t);
extern void _ZdlPvm(void *, size_t);

#define RANDOM_SIZES 4096 /* a power of two */
/* The sizes a random-size workload cycles through: 1 .. max, or all `fixed`. */
static void fill_sizes(uint16_t *sizes, uint64_t seed, size_t max, size_t fixed)
{
    bench_rng r = { seed };
    for (size_t i = 0; i < RANDOM_SIZES; i++)
        sizes[i] = (uint16_t)(fixed ? fixed : bench_rand_range(&r, 1, max));
}

/* arg: the largest size (random sizes from 1), or NULL with one size, range 0 */
static void bm_new_delete(tb_state *st, void *arg)
{
    static uint16_t sizes[RANDOM_SIZES];
    fill_sizes(sizes, 43, arg ? *(const size_t *)arg : 0, arg ? 0 : (size_t)tb_range(st, 0));
    size_t k = 0;
    while (tb_keep_running(st)) {
        for (int i = 0; i < PAIRS; i++) {
            size_t n = sizes[k++ & (RANDOM_SIZES - 1)];
            char *p = _Znwm(n); /* (throws, never returns NULL: no C++ handler here, so it aborts) */
            p[n - 1] = (char)k;
            tb_do_not_optimize(p);
            _ZdlPvm(p, n);
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * PAIRS);
}

static void bm_fastpath_random(tb_state *st, void *arg)
{
    static uint16_t sizes[RANDOM_SIZES];
    fill_sizes(sizes, 42, *(const size_t *)arg, 0);
    size_t k = 0;
    while (tb_keep_running(st)) {
        for (int i = 0; i < PAIRS; i++) {
            size_t n = sizes[k++ & (RANDOM_SIZES - 1)];
            char *p = malloc(n);
            if (!p) {
                tb_skip_with_error(st, "malloc returned NULL");
                break;
            }
            p[n - 1] = (char)k;
            tb_do_not_optimize(p);
            free(p);
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * PAIRS);
}

#define BATCH_MAX (1 << 20)
/* Rounds of: n blocks allocated (sizes[i], or 64 bytes when sizes is NULL)
 * and written (the first byte, or all of it with `whole`), then all freed in
 * the order given. */
static bool batch_round(tb_state *st, size_t n, const uint32_t *sizes, const uint32_t *order, bool whole)
{
    static void *ptrs[BATCH_MAX]; /* (all NULL between rounds) */
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        size_t size = sizes ? sizes[i] : 64;
        char *p = malloc(size);
        if (!p) {
            tb_skip_with_error(st, "malloc returned NULL");
            ok = false;
            break;
        }
        if (whole)
            memset(p, (int)i, size);
        else
            p[0] = (char)i;
        ptrs[i] = p;
    }
    tb_clobber_memory();
    for (size_t i = 0; i < n; i++) { /* (free(NULL) for those a failure left out) */
        free(ptrs[order[i]]);
        ptrs[order[i]] = NULL;
    }
    return ok;
}
static void batch_rounds(tb_state *st, size_t n, const uint32_t *sizes, const uint32_t *order, bool whole)
{
    while (tb_keep_running(st))
        if (!batch_round(st, n, sizes, order, whole)) break;
    tb_set_items_processed(st, tb_iterations(st) * (int64_t)n);
}

static size_t teardown_size(bench_rng *r) { return bench_rand_range(r, 16, 256); }

/* batch and teardown: n live blocks of sizes drawn by `size`, freed in a
 * random order; teardown first makes its heap in an untimed round, so that
 * the timed rounds measure the allocator, not the kernel's zeroing of
 * 140 MiB (as long as the allocator keeps its pages from round to round). */
typedef struct {
    uint64_t seed;
    size_t (*size)(bench_rng *r);
    bool warm;
} batch_kind;
static const batch_kind batch_mixed = { 7, bench_mixed_size, false };
static const batch_kind batch_teardown = { 13, teardown_size, true };

static void bm_batch(tb_state *st, void *arg)
{
    const batch_kind *k = arg;
    static uint32_t sizes[BATCH_MAX], order[BATCH_MAX];
    size_t n = (size_t)tb_range(st, 0);
    if (n > BATCH_MAX) {
        tb_skip_with_error(st, "too many blocks");
        return;
    }
    bench_rng r = { k->seed };
    for (size_t i = 0; i < n; i++)
        sizes[i] = (uint32_t)k->size(&r);
    bench_permutation(order, n, &r);
    if (k->warm && !batch_round(st, n, sizes, order, false)) return;
    batch_rounds(st, n, sizes, order, false);
}

static void bm_scattered_reuse(tb_state *st, void *arg)
{
    (void)arg;
    static uint32_t order[BATCH_MAX];
    size_t n = (size_t)tb_range(st, 0);
    if (n > BATCH_MAX) {
        tb_skip_with_error(st, "too many blocks");
        return;
    }
    bench_rng r = { 11 };
    bench_permutation(order, n, &r);
    batch_rounds(st, n, NULL, order, true);
}

/* Growth of 1/8 plus 16 bytes per step, as a buffer that appends does:
 * about 100 reallocs from 16 B to 4 MiB. */
#define GROW_MAX (4u << 20)
static void bm_realloc_growth(tb_state *st, void *arg)
{
    (void)arg;
    int64_t calls = 0;
    while (tb_keep_running(st)) {
        char *p = NULL;
        size_t old = 0;
        for (size_t n = 16; n <= GROW_MAX; n += n / 8 + 16) {
            char *q = realloc(p, n);
            if (!q) {
                tb_skip_with_error(st, "realloc returned NULL");
                break;
            }
            p = q;
            if (old && q[old - 1] != 1) {
                tb_skip_with_error(st, "realloc lost the contents");
                break;
            }
            bench_touch(q, old, n); /* also sets q[n-1] = 1 */
            old = n;
            calls++;
        }
        tb_do_not_optimize(p);
        free(p);
    }
    tb_set_items_processed(st, calls);
}

static void bm_realloc_doubling(tb_state *st, void *arg)
{
    (void)arg;
    size_t top = (size_t)tb_range(st, 0) << 20;
    unsigned char v = 0;
    while (tb_keep_running(st)) {
        unsigned char *p[2] = { NULL, NULL };
        size_t n[2] = { 0, 0 };
        v++;
        for (size_t m = 4096; m <= top; m *= 2)
            for (int k = 0; k < 2; k++) {
                unsigned char *q = realloc(p[k], m);
                if (!q || (n[k] && (q[0] != v || q[n[k] - 4096 + 8] != (unsigned char)(v + k)))) {
                    tb_skip_with_error(st, q ? "realloc lost the contents" : "realloc returned NULL");
                    free(q ? q : p[k]);
                    free(p[1 - k]);
                    return;
                }
                for (size_t i = n[k]; i < m; i += 4096)
                    q[i + 8] = (unsigned char)(v + k);
                q[0] = v;
                p[k] = q;
                n[k] = m;
            }
        free(p[0]);
        free(p[1]);
    }
    tb_set_items_processed(st, tb_iterations(st));
}

/* A buffer that appends: grown by a quarter (at least 16 bytes) per realloc
 * from 16 B to 64 KiB, every new byte written, then freed: 29 reallocs. */
#define GROW64_MAX (64u << 10)
static void bm_realloc_growth_64k(tb_state *st, void *arg)
{
    (void)arg;
    int64_t calls = 0;
    unsigned char v = 0;
    while (tb_keep_running(st)) {
        unsigned char *p = NULL;
        size_t old = 0;
        for (size_t n = 16;; n += n / 4 > 16 ? n / 4 : 16) {
            if (n > GROW64_MAX)
                n = GROW64_MAX;
            unsigned char *q = realloc(p, n);
            if (!q) {
                tb_skip_with_error(st, "realloc returned NULL");
                break;
            }
            p = q;
            if (old && (q[0] != v || q[old - 1] != (unsigned char)(v + 1))) {
                tb_skip_with_error(st, "realloc lost the contents");
                break;
            }
            memset(q + old, v, n - old);
            q[n - 1] = (unsigned char)(v + 1);
            old = n;
            calls++;
            if (n == GROW64_MAX)
                break;
        }
        tb_do_not_optimize(p);
        free(p);
        v++;
    }
    tb_set_items_processed(st, calls);
}

static void bm_large(tb_state *st, void *arg)
{
    (void)arg;
    size_t n = (size_t)tb_range(st, 0);
    while (tb_keep_running(st)) {
        char *p = malloc(n);
        if (!p) {
            tb_skip_with_error(st, "malloc returned NULL");
            break;
        }
        bench_touch(p, 0, n);
        tb_do_not_optimize(p);
        free(p);
    }
    tb_set_items_processed(st, tb_iterations(st));
}

/* malloc(n), first and last page written, free */
static int large_ends_once(size_t n, unsigned v)
{
    volatile char *p = malloc(n);
    if (!p)
        return -1;
    p[0] = (char)v;
    p[n - 1] = (char)v;
    tb_do_not_optimize((void *)p);
    free((void *)p);
    return 0;
}

static void bm_large_ends(tb_state *st, void *arg)
{
    (void)arg;
    size_t n = (size_t)tb_range(st, 0);
    unsigned v = 0;
    while (tb_keep_running(st)) {
        for (int i = 0; i < 16; i++)
            if (large_ends_once(n, v++)) {
                tb_skip_with_error(st, "malloc returned NULL");
                return;
            }
    }
    tb_set_items_processed(st, tb_iterations(st) * 16);
}

/* sizes from 64 KiB to 4 MiB, a few per power of two, in a fixed shuffled order */
static void bm_large_ends_mixed(tb_state *st, void *arg)
{
    (void)arg;
    enum { NSIZES = 64 };
    static size_t sizes[NSIZES];
    bench_rng r = { 11 };
    for (size_t i = 0; i < NSIZES; i++) {
        unsigned shift = 16 + (unsigned)(i % 7); /* 64 KiB .. 4 MiB */
        size_t base = (size_t)1 << shift;
        sizes[i] = shift == 22 ? base : bench_rand_range(&r, base, 2 * base);
    }
    size_t k = 0;
    unsigned v = 0;
    while (tb_keep_running(st)) {
        for (int i = 0; i < 16; i++)
            if (large_ends_once(sizes[k++ % NSIZES], v++)) {
                tb_skip_with_error(st, "malloc returned NULL");
                return;
            }
    }
    tb_set_items_processed(st, tb_iterations(st) * 16);
}

/* a child of fork: what it inherited is usable, and so is its own heap */
static void fork_child_work(char **blocks, size_t n)
{
    for (size_t i = 0; i < n && i < 16; i++)
        if (blocks[i] && blocks[i][0] != (char)i)
            _exit(3);
    for (size_t i = 0; i < n && i < 16; i++)
        free(blocks[i]);
    for (int i = 0; i < 16; i++) {
        char *p = malloc(64 + (size_t)i * 40);
        if (!p)
            _exit(4);
        p[0] = 1;
        free(p);
    }
    _exit(0);
}

/* fork_threaded's second thread: it allocates (so it has a cache, and the
 * process is threaded to the allocator too), then waits for the end */
static int fork_idle_pipe[2];
static void *fork_idle_thread(void *arg)
{
    (void)arg;
    char *p = malloc(100), c;
    if (p)
        p[0] = 1;
    while (read(fork_idle_pipe[0], &c, 1) < 0) {
    }
    free(p);
    return NULL;
}

static void bm_fork(tb_state *st, void *arg)
{
    bool threaded = arg != NULL;
    pthread_t idle;
    if (threaded) {
        if (pipe(fork_idle_pipe) != 0 || pthread_create(&idle, NULL, fork_idle_thread, NULL) != 0) {
            tb_skip_with_error(st, "pipe or pthread_create failed");
            return;
        }
    }
    size_t target = (size_t)tb_range(st, 0) << 20, total = 0, n = 0, cap = 1024;
    char **blocks = malloc(cap * sizeof *blocks);
    bench_rng r = { 77 };
    while (blocks && total < target) {
        if (n == cap) {
            char **b = realloc(blocks, 2 * cap * sizeof *blocks);
            if (!b)
                break;
            blocks = b;
            cap *= 2;
        }
        size_t sz = bench_mixed_size(&r);
        if (!(blocks[n] = malloc(sz)))
            break;
        memset(blocks[n], (int)n, sz);
        total += sz;
        n++;
    }
    if (!blocks || total < target) {
        tb_skip_with_error(st, "malloc returned NULL");
    } else {
        while (tb_keep_running(st)) {
            pid_t pid = fork();
            if (pid == 0)
                fork_child_work(blocks, n);
            int status;
            if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
                WEXITSTATUS(status) != 0) {
                tb_skip_with_error(st, "fork, or the child, failed");
                break;
            }
        }
        tb_set_items_processed(st, tb_iterations(st));
    }
    for (size_t i = 0; blocks && i < n; i++)
        free(blocks[i]);
    free(blocks);
    if (threaded) {
        if (write(fork_idle_pipe[1], "x", 1) != 1)
            abort();
        pthread_join(idle, NULL);
        close(fork_idle_pipe[0]);
        close(fork_idle_pipe[1]);
    }
}

/* The program spawn_small starts (main.c: `--small-process`): a short-lived
 * tool's heap, 128 blocks of 1 B .. 2 KiB over many size classes, each
 * written, half of them freed, the rest left to exit.  Exit status 0 when
 * every block kept its contents. */
int bench_small_process(void)
{
    enum { N = 128 };
    char *b[N];
    size_t len[N];
    bench_rng r = { 31 };
    for (int i = 0; i < N; i++) {
        len[i] = 1 + (size_t)(bench_rand(&r) % ((size_t)64 << (i % 6)));
        if (!(b[i] = malloc(len[i])))
            return 2;
        memset(b[i], i, len[i]);
    }
    for (int i = 0; i < N; i++)
        if (b[i][0] != (char)i || b[i][len[i] - 1] != (char)i)
            return 3;
    for (int i = 0; i < N; i += 2)
        free(b[i]);
    return 0;
}

extern char **environ;
static void bm_spawn_small(tb_state *st, void *arg)
{
    (void)arg;
    char *argv[] = { "tieralloc-bench", "--small-process", NULL };
    while (tb_keep_running(st)) {
        pid_t pid;
        int status;
        if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ) != 0 ||
            waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            tb_skip_with_error(st, "the small process could not start, or failed");
            break;
        }
    }
    tb_set_items_processed(st, tb_iterations(st));
}

void bench_register_single(void)
{
    static const int64_t fast_sizes[] = { 16, 64, 256, 1024, 4096, 32768 };
    tb_bench *b = tb_bench_arg_name(tb_register("fastpath", bm_fastpath, NULL), "size");
    for (size_t i = 0; i < sizeof fast_sizes / sizeof fast_sizes[0]; i++)
        tb_bench_arg(b, fast_sizes[i]);

    static const size_t random_max = 1024, random_small_max = 128;
    tb_register("fastpath_random", bm_fastpath_random, (void *)&random_max);
    tb_register("fastpath_random_small", bm_fastpath_random, (void *)&random_small_max);
    b = tb_bench_arg_name(tb_register("new_delete", bm_new_delete, NULL), "size");
    tb_bench_arg(b, 16);
    tb_bench_arg(b, 64);
    tb_register("new_delete_random", bm_new_delete, (void *)&random_small_max);

    tb_bench_arg(tb_bench_arg_name(tb_register("batch", bm_batch, (void *)&batch_mixed), "blocks"), 4096);
    tb_bench_arg(tb_bench_arg_name(tb_register("scattered_reuse", bm_scattered_reuse, NULL), "blocks"), 32768);
    /* a round takes 0.1-0.3 s: a second of them, not one */
    tb_bench_min_time(tb_bench_arg(tb_bench_arg_name(tb_register("teardown", bm_batch, (void *)&batch_teardown), "blocks"), 1 << 20), 1.0);

    tb_bench_unit(tb_register("realloc_growth", bm_realloc_growth, NULL), TB_US);
    tb_register("realloc_growth_64k", bm_realloc_growth_64k, NULL);
    tb_bench_unit(tb_bench_arg(tb_bench_arg_name(tb_register("realloc_doubling", bm_realloc_doubling, NULL), "mib"), 32),
                  TB_MS);

    static const int64_t large_sizes[] = { 64 << 10, 512 << 10, 8 << 20 };
    b = tb_bench_unit(tb_bench_arg_name(tb_register("large", bm_large, NULL), "size"), TB_US);
    for (size_t i = 0; i < sizeof large_sizes / sizeof large_sizes[0]; i++)
        tb_bench_arg(b, large_sizes[i]);

    static const int64_t ends_sizes[] = { 64 << 10, 256 << 10, 1 << 20, 4 << 20 };
    b = tb_bench_arg_name(tb_register("large_ends", bm_large_ends, NULL), "size");
    for (size_t i = 0; i < sizeof ends_sizes / sizeof ends_sizes[0]; i++)
        tb_bench_arg(b, ends_sizes[i]);
    tb_register("large_ends_mixed", bm_large_ends_mixed, NULL);

    /* real time: the child runs and exits while the parent waits */
    tb_bench_use_real_time(
        tb_bench_unit(tb_bench_arg(tb_bench_arg_name(tb_register("fork", bm_fork, NULL), "heap_mib"), 16), TB_US));
    static int threaded = 1;
    tb_bench_use_real_time(tb_bench_unit(
        tb_bench_arg(tb_bench_arg_name(tb_register("fork_threaded", bm_fork, &threaded), "heap_mib"), 16), TB_US));
    tb_bench_use_real_time(tb_bench_unit(tb_register("spawn_small", bm_spawn_small, NULL), TB_US));
}
