/* bench/bench_single.c: single-threaded workloads.
 *
 *   fastpath/size:N    malloc(N), write, free, at fixed N (16 B .. 32 KiB)
 *   fastpath_random    the same at random sizes in 1 .. 1024 B
 *   batch/blocks:N     N live blocks of mixed sizes, freed in random order
 *   realloc_growth     one block grown by realloc from 16 B to 4 MiB
 *   large/size:N       malloc(N) with N in 64 KiB .. 8 MiB, every page touched, free
 *
 * One operation is one malloc+free pair (one realloc call for realloc_growth);
 * items_per_second is operations per second, so 1/items_per_second is the time
 * per operation. */
#include <stdlib.h>

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

#define RANDOM_SIZES 4096 /* a power of two */
static void bm_fastpath_random(tb_state *st, void *arg)
{
    (void)arg;
    static uint16_t sizes[RANDOM_SIZES];
    bench_rng r = { 42 };
    for (size_t i = 0; i < RANDOM_SIZES; i++)
        sizes[i] = (uint16_t)bench_rand_range(&r, 1, 1024);
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

#define BATCH_MAX 65536
static void bm_batch(tb_state *st, void *arg)
{
    (void)arg;
    static void *ptrs[BATCH_MAX];
    static uint32_t sizes[BATCH_MAX], order[BATCH_MAX];
    size_t n = (size_t)tb_range(st, 0);
    if (n > BATCH_MAX) {
        tb_skip_with_error(st, "too many blocks");
        return;
    }
    bench_rng r = { 7 };
    for (size_t i = 0; i < n; i++)
        sizes[i] = (uint32_t)bench_mixed_size(&r);
    bench_permutation(order, n, &r);
    while (tb_keep_running(st)) {
        for (size_t i = 0; i < n; i++) {
            char *p = malloc(sizes[i]);
            if (!p) {
                tb_skip_with_error(st, "malloc returned NULL");
                break;
            }
            p[0] = (char)i;
            ptrs[i] = p;
        }
        tb_clobber_memory();
        for (size_t i = 0; i < n; i++) {
            free(ptrs[order[i]]);
            ptrs[order[i]] = NULL;
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * (int64_t)n);
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

void bench_register_single(void)
{
    static const int64_t fast_sizes[] = { 16, 64, 256, 1024, 4096, 32768 };
    tb_bench *b = tb_bench_arg_name(tb_register("fastpath", bm_fastpath, NULL), "size");
    for (size_t i = 0; i < sizeof fast_sizes / sizeof fast_sizes[0]; i++)
        tb_bench_arg(b, fast_sizes[i]);

    tb_register("fastpath_random", bm_fastpath_random, NULL);

    tb_bench_arg(tb_bench_arg_name(tb_register("batch", bm_batch, NULL), "blocks"), 4096);

    tb_bench_unit(tb_register("realloc_growth", bm_realloc_growth, NULL), TB_US);

    static const int64_t large_sizes[] = { 64 << 10, 512 << 10, 8 << 20 };
    b = tb_bench_unit(tb_bench_arg_name(tb_register("large", bm_large, NULL), "size"), TB_US);
    for (size_t i = 0; i < sizeof large_sizes / sizeof large_sizes[0]; i++)
        tb_bench_arg(b, large_sizes[i]);
}
