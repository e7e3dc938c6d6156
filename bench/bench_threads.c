/* bench/bench_threads.c: multi-threaded workloads.
 *
 *   producer_consumer  thread 0 mallocs blocks and passes them through a ring
 *                      to thread 1, which frees them (op: one block passed)
 *   batch_mt           the batch workload on 1, 2 and 4 threads at once
 *                      (op: one malloc+free pair, all threads together)
 *   false_sharing      cache-scratch: each thread frees a block the first
 *                      thread allocated, then repeatedly mallocs a small block,
 *                      writes it many times and frees it (op: one such round);
 *                      the shared_lines counter (0 is right) counts, over 16
 *                      hand-offs after the timed loop, the small blocks a new
 *                      thread got in the cache line of a block another thread
 *                      is using
 *   server             larson-like: threads replace random blocks of a shared
 *                      pool, so most frees are of another thread's block
 *                      (op: one replacement)
 *   thread_churn       short-lived threads that allocate a little, and leave
 *                      some blocks to be freed by the main thread
 *                      (op: one thread created, run and joined)
 *
 * All use wall time: items_per_second is the throughput of all threads, and
 * its inverse the time per operation. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "workloads.h"

/* ---- producer / consumer ------------------------------------------------- */
/* The producer hands over batches of PC_BATCH blocks through a ring of RING
 * batch slots, so that the cost measured is the allocator's (malloc on one
 * thread, free on the other), not one cache-line handshake per block. */
#define RING 16 /* a power of two */
#define PC_BATCH 64
static struct {
    _Alignas(64) size_t _Atomic head; /* written by the producer */
    _Alignas(64) size_t _Atomic tail; /* written by the consumer */
    _Alignas(64) char *slot[RING][PC_BATCH];
} ring;

static void bm_producer_consumer(tb_state *st, void *arg)
{
    (void)arg;
    if (tb_threads(st) != 2) {
        tb_skip_with_error(st, "producer_consumer needs exactly 2 threads");
        return;
    }
    /* Both threads run the same number of iterations, so the consumer frees
     * exactly what the producer allocated and the ring is empty at the end. */
    if (tb_thread_index(st) == 0) {
        bench_rng r = { 11 };
        while (tb_keep_running(st)) {
            size_t h = atomic_load_explicit(&ring.head, memory_order_relaxed);
            unsigned spins = 0;
            while (h - atomic_load_explicit(&ring.tail, memory_order_acquire) == RING)
                bench_backoff(&spins);
            char **batch = ring.slot[h & (RING - 1)];
            for (int i = 0; i < PC_BATCH; i++) {
                size_t n = bench_rand_range(&r, 16, 512);
                char *p = malloc(n);
                if (!p)
                    abort(); /* the consumer would wait for it forever */
                p[0] = (char)n;
                p[n - 1] = 2;
                batch[i] = p;
            }
            atomic_store_explicit(&ring.head, h + 1, memory_order_release);
        }
        tb_set_items_processed(st, tb_iterations(st) * PC_BATCH);
    } else {
        while (tb_keep_running(st)) {
            size_t t = atomic_load_explicit(&ring.tail, memory_order_relaxed);
            unsigned spins = 0;
            while (atomic_load_explicit(&ring.head, memory_order_acquire) == t)
                bench_backoff(&spins);
            char **batch = ring.slot[t & (RING - 1)];
            for (int i = 0; i < PC_BATCH; i++) {
                tb_do_not_optimize(batch[i][0]);
                free(batch[i]);
            }
            atomic_store_explicit(&ring.tail, t + 1, memory_order_release);
        }
    }
}

/* ---- batch on several threads --------------------------------------------- */
#define MT_BLOCKS 4096
static void *mt_ptrs[BENCH_MAX_THREADS][MT_BLOCKS];
static uint32_t mt_sizes[BENCH_MAX_THREADS][MT_BLOCKS];
static uint32_t mt_order[BENCH_MAX_THREADS][MT_BLOCKS];

static void bm_batch_mt(tb_state *st, void *arg)
{
    (void)arg;
    int t = bench_thread_slot(st);
    if (t < 0)
        return;
    void **ptrs = mt_ptrs[t];
    uint32_t *sizes = mt_sizes[t], *order = mt_order[t];
    bench_rng r = { 7 + (uint64_t)t };
    for (size_t i = 0; i < MT_BLOCKS; i++)
        sizes[i] = (uint32_t)bench_mixed_size(&r);
    bench_permutation(order, MT_BLOCKS, &r);
    while (tb_keep_running(st)) {
        for (size_t i = 0; i < MT_BLOCKS; i++) {
            char *p = malloc(sizes[i]);
            if (!p)
                abort();
            p[0] = (char)i;
            ptrs[i] = p;
        }
        tb_clobber_memory();
        for (size_t i = 0; i < MT_BLOCKS; i++)
            free(ptrs[order[i]]);
    }
    tb_set_items_processed(st, tb_iterations(st) * MT_BLOCKS);
}

/* ---- false sharing (cache-scratch) ---------------------------------------- */
#define FS_OBJ 8
#define FS_WRITES 100
#define FS_ROUNDS 16
#define CACHE_LINE 64
static char *fs_handed[BENCH_MAX_THREADS];

/* After the timed loop, a check of passive false sharing that does not
 * depend on timing: this thread allocates small blocks until two of them lie
 * in one cache line; a new thread frees the second and allocates a small
 * block.  Counts the rounds (of FS_ROUNDS) in which that block lies in the
 * cache line of the first, which this thread still uses: an allocator that
 * caches freed blocks per thread without regard to who allocated them hands
 * the line back, and two threads then write to one cache line. */
#define FS_SEARCH 64
struct fs_handoff {
    char *neighbour, *got;
};

static void *fs_handoff_thread(void *arg)
{
    struct fs_handoff *h = arg;
    free(h->neighbour);
    if (!(h->got = malloc(FS_OBJ)))
        abort();
    h->got[0] = 1;
    return NULL;
}

static int fs_handoff_check(void)
{
    int shared = 0;
    for (int round = 0; round < FS_ROUNDS; round++) {
        char *blk[FS_SEARCH];
        int mine = -1, other = -1;
        for (int i = 0; i < FS_SEARCH; i++)
            if (!(blk[i] = malloc(FS_OBJ)))
                abort();
        for (int i = 0; i < FS_SEARCH && mine < 0; i++)
            for (int j = i + 1; j < FS_SEARCH; j++)
                if ((uintptr_t)blk[i] / CACHE_LINE == (uintptr_t)blk[j] / CACHE_LINE) {
                    mine = i;
                    other = j;
                    break;
                }
        for (int i = 0; i < FS_SEARCH; i++)
            if (i != mine && i != other)
                free(blk[i]);
        if (mine < 0)
            continue; /* no two small blocks share a line: nothing to hand over */
        struct fs_handoff h = { blk[other], NULL };
        pthread_t th;
        if (pthread_create(&th, NULL, fs_handoff_thread, &h) != 0)
            abort();
        pthread_join(th, NULL);
        shared += (uintptr_t)h.got / CACHE_LINE == (uintptr_t)blk[mine] / CACHE_LINE;
        free(h.got);
        free(blk[mine]);
    }
    return shared;
}

static void bm_false_sharing(tb_state *st, void *arg)
{
    (void)arg;
    int t = tb_thread_index(st), nthreads = tb_threads(st);
    if (nthreads > BENCH_MAX_THREADS) {
        tb_skip_with_error(st, "too many threads");
        return;
    }
    /* The first thread allocates one small block per thread, side by side as
     * an allocator would place them; the start barrier of the loop publishes
     * them.  Each thread frees its block, then allocates, writes and frees a
     * small block in a loop: if the allocator gives it back the block it
     * freed, threads write to one cache line. */
    if (t == 0)
        for (int u = 0; u < nthreads; u++)
            if (!(fs_handed[u] = malloc(FS_OBJ)))
                abort();
    int first = 1;
    while (tb_keep_running(st)) {
        if (first) {
            free(fs_handed[t]);
            first = 0;
        }
        volatile char *p = malloc(FS_OBJ);
        if (!p)
            abort();
        for (int w = 0; w < FS_WRITES; w++)
            for (int k = 0; k < FS_OBJ; k++)
                p[k]++;
        free((void *)p);
    }
    tb_set_items_processed(st, tb_iterations(st));
    if (t == 0)
        tb_counter_set(st, "shared_lines", fs_handoff_check(), TB_COUNTER_DEFAULT);
}

/* ---- server (larson-like) --------------------------------------------------- */
#define POOL 4096 /* a power of two */
static char *_Atomic pool[POOL];

static void bm_server(tb_state *st, void *arg)
{
    (void)arg;
    int t = tb_thread_index(st);
    if (t == 0) {
        bench_rng r = { 99 };
        for (size_t i = 0; i < POOL; i++) {
            size_t n = bench_rand_range(&r, 16, 1024);
            char *p = malloc(n);
            if (!p)
                abort();
            p[0] = 1;
            atomic_store_explicit(&pool[i], p, memory_order_relaxed);
        }
    }
    bench_rng r = { 1000 + (uint64_t)t };
    while (tb_keep_running(st)) {
        uint64_t x = bench_rand(&r);
        size_t n = 16 + (size_t)((x >> 32) % 1009);
        char *p = malloc(n);
        if (!p)
            abort();
        p[0] = 1;
        p[n - 1] = 2;
        char *old = atomic_exchange_explicit(&pool[x & (POOL - 1)], p, memory_order_acq_rel);
        tb_do_not_optimize(old[0]);
        free(old);
    }
    tb_set_items_processed(st, tb_iterations(st));
    /* the loop's end barrier has been passed: no thread touches the pool now */
    if (t == 0)
        for (size_t i = 0; i < POOL; i++)
            free(atomic_exchange_explicit(&pool[i], NULL, memory_order_relaxed));
}

/* ---- thread churn ------------------------------------------------------------ */
#define CHURN_THREADS 2
#define CHURN_BLOCKS 64
#define CHURN_LEFT 16 /* blocks each thread leaves to the main thread */
typedef struct {
    uint64_t seed;
    void *left[CHURN_LEFT];
} churn_arg;

static void *churn_main(void *argp)
{
    churn_arg *a = argp;
    bench_rng r = { a->seed };
    void *blocks[CHURN_BLOCKS];
    for (int i = 0; i < CHURN_BLOCKS; i++) {
        size_t n = bench_rand_range(&r, 16, 512);
        char *p = malloc(n);
        if (!p)
            abort();
        memset(p, i, n < 64 ? n : 64);
        blocks[i] = p;
    }
    for (int i = 0; i < CHURN_BLOCKS; i++) {
        if (i < CHURN_LEFT)
            a->left[i] = blocks[i];
        else
            free(blocks[i]);
    }
    return NULL;
}

static void bm_thread_churn(tb_state *st, void *arg)
{
    (void)arg;
    churn_arg args[CHURN_THREADS];
    uint64_t seed = 5;
    while (tb_keep_running(st)) {
        pthread_t th[CHURN_THREADS];
        for (int i = 0; i < CHURN_THREADS; i++) {
            args[i].seed = seed++;
            if (pthread_create(&th[i], NULL, churn_main, &args[i]) != 0) {
                tb_skip_with_error(st, "pthread_create failed");
                for (int j = 0; j < i; j++)
                    pthread_join(th[j], NULL);
                return;
            }
        }
        for (int i = 0; i < CHURN_THREADS; i++) {
            pthread_join(th[i], NULL);
            for (int j = 0; j < CHURN_LEFT; j++)
                free(args[i].left[j]);
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * CHURN_THREADS);
}

void bench_register_threads(void)
{
    tb_bench_use_real_time(tb_bench_threads(
        tb_register("producer_consumer", bm_producer_consumer, NULL), 2));

    tb_bench *b = tb_bench_use_real_time(tb_register("batch_mt", bm_batch_mt, NULL));
    tb_bench_threads(tb_bench_threads(tb_bench_threads(b, 1), 2), 4);

    tb_bench_use_real_time(tb_bench_threads(
        tb_register("false_sharing", bm_false_sharing, NULL), 2));

    tb_bench_use_real_time(tb_bench_threads(tb_register("server", bm_server, NULL), 2));

    tb_bench_unit(tb_bench_use_real_time(tb_register("thread_churn", bm_thread_churn, NULL)),
                  TB_US);
}
