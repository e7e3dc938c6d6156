/* bench/bench_shapes.c: the shapes of work where programs found tieralloc slow
 * (issue 9 item 7, issue 11 item 1).
 *
 *   pipeline64         thread 0 mallocs 64-byte blocks and hands them one by one
 *                      through a bounded single-producer/single-consumer ring of
 *                      pointers to thread 1, which frees them, flat out
 *                      (op: one block passed)
 *   working_set        each of 2 threads keeps 1000 live blocks and replaces a
 *                      random one per step; sizes inverse-square distributed in
 *                      4 B .. 32 KiB (half are under 8 B), every byte of a new
 *                      block written; nothing shared (op: one free+malloc)
 *   working_set_shared_start  the same, but the two threads allocate their
 *                      1000 blocks on one CPU, taking turns every 16 blocks (as
 *                      the threads of a pool that start together may), then run
 *                      on CPUs of their own: blocks of the two threads side by
 *                      side in memory (with one allowed CPU, both stay on it)
 *   remote_frees       8 and 16 threads allocate random sizes; a quarter of the
 *                      blocks go into shared slots by atomic exchange, and the
 *                      block displaced (most often another thread's) is freed
 *                      (op: one malloc+free)
 *   idle_threads/n:N   N threads (64 KiB stacks) each allocate and free about
 *                      1 MiB of small blocks, then wait, all alive; counter
 *                      rss_idle: the resident set while they all wait
 *                      (op: one thread created, run and joined)
 *   swap               16, 64 and 256 threads swap freshly allocated blocks (70% under
 *                      264 B, 25% under 8 KiB, 4.5% under 264 KiB, 0.5% up to
 *                      2.25 MiB; every byte written) into 16384 shared slots and
 *                      free what they displace (op: one swap)
 *
 * All are timed in wall time over all threads. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "workloads.h"

/* ---- pipeline: one block at a time through an SPSC ring --------------------- */
#define PIPE_RING 1024 /* a power of two */
#define PIPE_SIZE 64
static struct {
    _Alignas(64) size_t _Atomic head; /* written by the producer */
    _Alignas(64) size_t _Atomic tail; /* written by the consumer */
    _Alignas(64) char *_Atomic slot[PIPE_RING];
} pipe_ring;

static void bm_pipeline(tb_state *st, void *arg)
{
    (void)arg;
    if (tb_threads(st) != 2) {
        tb_skip_with_error(st, "pipeline64 needs exactly 2 threads");
        return;
    }
    /* Both threads run the same number of iterations: the consumer frees
     * exactly what the producer passed, and the ring ends empty. */
    if (tb_thread_index(st) == 0) {
        size_t h = atomic_load_explicit(&pipe_ring.head, memory_order_relaxed);
        size_t t_seen = atomic_load_explicit(&pipe_ring.tail, memory_order_acquire);
        while (tb_keep_running(st)) {
            char *p = malloc(PIPE_SIZE);
            if (!p)
                abort(); /* the consumer would wait for it forever */
            p[0] = (char)h;
            p[PIPE_SIZE - 1] = 1;
            unsigned spins = 0;
            while (h - t_seen == PIPE_RING) {
                t_seen = atomic_load_explicit(&pipe_ring.tail, memory_order_acquire);
                if (h - t_seen == PIPE_RING)
                    bench_backoff(&spins);
            }
            atomic_store_explicit(&pipe_ring.slot[h & (PIPE_RING - 1)], p, memory_order_relaxed);
            atomic_store_explicit(&pipe_ring.head, ++h, memory_order_release);
        }
        tb_set_items_processed(st, tb_iterations(st));
    } else {
        size_t t = atomic_load_explicit(&pipe_ring.tail, memory_order_relaxed);
        size_t h_seen = atomic_load_explicit(&pipe_ring.head, memory_order_acquire);
        while (tb_keep_running(st)) {
            unsigned spins = 0;
            while (h_seen == t) {
                h_seen = atomic_load_explicit(&pipe_ring.head, memory_order_acquire);
                if (h_seen == t)
                    bench_backoff(&spins);
            }
            char *p = atomic_load_explicit(&pipe_ring.slot[t & (PIPE_RING - 1)],
                                           memory_order_relaxed);
            tb_do_not_optimize(p[PIPE_SIZE - 1]);
            free(p);
            atomic_store_explicit(&pipe_ring.tail, ++t, memory_order_release);
        }
    }
}

/* ---- random working set ---------------------------------------------------------- */
#define WS_LIVE 1000
#define WS_SIZES 8192 /* a power of two */
#define WS_MIN 4
#define WS_MAX 32768

/* density proportional to 1/n^2 on [WS_MIN, WS_MAX]: the inverse of its CDF */
static size_t inverse_square_size(bench_rng *r)
{
    double u = (double)(bench_rand(r) >> 11) * 0x1p-53;
    double inv = 1.0 / WS_MIN - u * (1.0 / WS_MIN - 1.0 / WS_MAX);
    size_t n = (size_t)(1.0 / inv);
    return n < WS_MIN ? WS_MIN : n > WS_MAX ? WS_MAX : n;
}

static char *ws_blocks[BENCH_MAX_THREADS][WS_LIVE];
static uint16_t ws_sizes[BENCH_MAX_THREADS][WS_SIZES];
static uint16_t ws_slots[BENCH_MAX_THREADS][WS_SIZES];

/* the n-th CPU (mod their count) of set `allowed` */
static int nth_cpu(const cpu_set_t *allowed, int n)
{
    int count = CPU_COUNT(allowed);
    if (count <= 0)
        return -1;
    for (int c = 0, k = n % count; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, allowed) && k-- == 0)
            return c;
    return -1;
}
static void pin_to(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);
}

static void bm_working_set(tb_state *st, void *arg)
{
    bool shared_start = arg != NULL;
    cpu_set_t allowed;
    if (shared_start && (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || nth_cpu(&allowed, 0) < 0)) {
        tb_skip_with_error(st, "sched_getaffinity failed");
        return;
    }
    int t = bench_thread_slot(st);
    if (t < 0)
        return;
    char **blocks = ws_blocks[t];
    uint16_t *sizes = ws_sizes[t], *slots = ws_slots[t];
    bench_rng r = { 300 + (uint64_t)t };
    for (size_t i = 0; i < WS_SIZES; i++) {
        sizes[i] = (uint16_t)(inverse_square_size(&r) - 1); /* 32768 does not fit: stored - 1 */
        slots[i] = (uint16_t)(bench_rand(&r) % WS_LIVE);
    }
    if (shared_start)
        pin_to(nth_cpu(&allowed, 0));
    for (size_t i = 0; i < WS_LIVE; i++) {
        size_t n = (size_t)sizes[i] + 1;
        if (!(blocks[i] = malloc(n))) {
            tb_skip_with_error(st, "malloc returned NULL");
            if (shared_start)
                sched_setaffinity(0, sizeof allowed, &allowed);
            return;
        }
        memset(blocks[i], (int)i, n);
        if (shared_start && i % 16 == 15)
            sched_yield(); /* the other thread's turn */
    }
    if (shared_start)
        pin_to(nth_cpu(&allowed, t));
    size_t k = 0;
    while (tb_keep_running(st)) {
        size_t i = slots[k & (WS_SIZES - 1)], n = (size_t)sizes[k & (WS_SIZES - 1)] + 1;
        k++;
        free(blocks[i]);
        char *p = malloc(n);
        if (!p) {
            blocks[i] = NULL;
            tb_skip_with_error(st, "malloc returned NULL");
            break;
        }
        memset(p, (int)k, n);
        blocks[i] = p;
    }
    tb_set_items_processed(st, tb_iterations(st));
    for (size_t i = 0; i < WS_LIVE; i++) {
        free(blocks[i]);
        blocks[i] = NULL;
    }
    if (shared_start)
        sched_setaffinity(0, sizeof allowed, &allowed);
}

/* ---- many threads, a share of the frees remote ---------------------------------- */
#define RF_SLOTS 4096 /* shared; a power of two */
#define RF_LOCAL 256  /* per thread */
static char *_Atomic rf_shared[RF_SLOTS];
static char *rf_local[BENCH_MAX_THREADS][RF_LOCAL];

static void bm_remote_frees(tb_state *st, void *arg)
{
    (void)arg;
    int t = bench_thread_slot(st);
    if (t < 0)
        return;
    char **local = rf_local[t];
    bench_rng r = { 5000 + (uint64_t)t };
    while (tb_keep_running(st)) {
        uint64_t x = bench_rand(&r);
        size_t n = bench_mixed_size(&r);
        char *p = malloc(n);
        if (!p)
            abort(); /* other threads may hold pointers into the slots */
        p[0] = (char)x;
        p[n - 1] = 1;
        char *old;
        if ((x & 3) == 0) /* one in four: through a shared slot */
            old = atomic_exchange_explicit(&rf_shared[(x >> 2) & (RF_SLOTS - 1)], p,
                                           memory_order_acq_rel);
        else {
            size_t i = (size_t)((x >> 2) % RF_LOCAL);
            old = local[i];
            local[i] = p;
        }
        if (old)
            tb_do_not_optimize(old[0]);
        free(old);
    }
    tb_set_items_processed(st, tb_iterations(st));
    for (size_t i = 0; i < RF_LOCAL; i++) {
        free(local[i]);
        local[i] = NULL;
    }
    /* past the loop's end barrier no thread touches the shared slots */
    if (t == 0)
        for (size_t i = 0; i < RF_SLOTS; i++)
            free(atomic_exchange_explicit(&rf_shared[i], NULL, memory_order_relaxed));
}

/* ---- many mostly idle threads ---------------------------------------------------- */
#define IDLE_BYTES (1u << 20)
#define IDLE_STACK (64u << 10)
static struct {
    pthread_mutex_t lock;
    pthread_cond_t all_done, go;
    size_t done, target;
    int released;
} idle = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
           0, 0, 0 };

typedef struct {
    uint64_t seed;
    size_t bytes; /* what the thread allocated, written and freed */
} idle_arg;

static void *idle_main(void *argp)
{
    idle_arg *a = argp;
    bench_rng r = { a->seed };
    /* the live blocks are chained through their first word: no bookkeeping
     * memory (the stack is small) */
    void *head = NULL;
    size_t total = 0;
    while (total < IDLE_BYTES) {
        size_t n = bench_rand_range(&r, 16, 256);
        char *p = malloc(n);
        if (!p)
            break;
        memset(p, (int)n, n);
        *(void **)p = head;
        head = p;
        total += n;
    }
    while (head) {
        void *next = *(void **)head;
        free(head);
        head = next;
    }
    a->bytes = total;
    pthread_mutex_lock(&idle.lock);
    if (++idle.done == idle.target)
        pthread_cond_signal(&idle.all_done);
    while (!idle.released)
        pthread_cond_wait(&idle.go, &idle.lock);
    pthread_mutex_unlock(&idle.lock);
    return NULL;
}

static void bm_idle_threads(tb_state *st, void *arg)
{
    (void)arg;
    size_t n = (size_t)tb_range(st, 0);
    pthread_t *th = calloc(n, sizeof *th);
    idle_arg *args = calloc(n, sizeof *args);
    if (!th || !args) {
        free(th);
        free(args);
        tb_skip_with_error(st, "calloc failed");
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, IDLE_STACK);
    size_t rss_idle = 0, bytes = 0, created = 0;
    int64_t threads = 0;
    while (tb_keep_running(st)) {
        pthread_mutex_lock(&idle.lock);
        idle.done = 0;
        idle.target = n; /* lowered below if a thread cannot be created */
        idle.released = 0;
        pthread_mutex_unlock(&idle.lock);
        for (created = 0; created < n; created++) {
            args[created].seed = 77 + created;
            args[created].bytes = 0;
            if (pthread_create(&th[created], &attr, idle_main, &args[created]) != 0)
                break;
        }
        pthread_mutex_lock(&idle.lock);
        idle.target = created;
        while (idle.done < created)
            pthread_cond_wait(&idle.all_done, &idle.lock);
        rss_idle = bench_rss(); /* every thread alive, waiting, its blocks freed */
        idle.released = 1;
        pthread_cond_broadcast(&idle.go);
        pthread_mutex_unlock(&idle.lock);
        bytes = 0;
        for (size_t i = 0; i < created; i++) {
            pthread_join(th[i], NULL);
            bytes += args[i].bytes;
        }
        threads += (int64_t)created;
        if (created < n) {
            tb_skip_with_error(st, "pthread_create failed");
            break;
        }
    }
    pthread_attr_destroy(&attr);
    free(th);
    free(args);
    tb_set_items_processed(st, threads);
    unsigned f = TB_COUNTER_BASE_1024;
    tb_counter_set(st, "rss_idle", (double)rss_idle, f);
    tb_counter_set(st, "allocated_per_thread", created ? (double)bytes / (double)created : 0, f);
}

/* ---- many threads swap blocks into shared slots ----------------------------------- */
#define SWAP_SLOTS 16384 /* a power of two */
/* swaps per run, shared by the threads: issue 11's shape (64 threads, 5000
 * swaps each), long enough (a second or more) for the decay to run during it */
#define SWAP_TOTAL 320000
static char *_Atomic swap_slot[SWAP_SLOTS];

/* 70% in [1, 264), 25% in [264, 8 KiB), 4.5% in [8 KiB, 264 KiB), 0.5% in [264 KiB, 2.25 MiB] */
static size_t swap_size(bench_rng *r)
{
    unsigned pick = (unsigned)(bench_rand(r) % 1000);
    if (pick < 700)
        return bench_rand_range(r, 1, 263);
    if (pick < 950)
        return bench_rand_range(r, 264, (8 << 10) - 1);
    if (pick < 995)
        return bench_rand_range(r, 8 << 10, (264 << 10) - 1);
    return bench_rand_range(r, 264 << 10, (2u << 20) + (256 << 10));
}

static void bm_swap(tb_state *st, void *arg)
{
    (void)arg;
    int t = tb_thread_index(st);
    if (t == 0) { /* filled before the start barrier: the loop runs in the steady state */
        bench_rng r = { 4242 };
        for (size_t i = 0; i < SWAP_SLOTS; i++) {
            size_t n = swap_size(&r);
            char *p = malloc(n);
            if (!p)
                abort();
            memset(p, (int)i, n);
            atomic_store_explicit(&swap_slot[i], p, memory_order_relaxed);
        }
    }
    bench_rng r = { 9000 + (uint64_t)t };
    while (tb_keep_running(st)) {
        uint64_t x = bench_rand(&r);
        size_t n = swap_size(&r);
        char *p = malloc(n);
        if (!p)
            abort();
        memset(p, (int)x, n);
        char *old = atomic_exchange_explicit(&swap_slot[x & (SWAP_SLOTS - 1)], p,
                                             memory_order_acq_rel);
        tb_do_not_optimize(old[0]);
        free(old);
    }
    tb_set_items_processed(st, tb_iterations(st));
    if (t == 0)
        for (size_t i = 0; i < SWAP_SLOTS; i++)
            free(atomic_exchange_explicit(&swap_slot[i], NULL, memory_order_relaxed));
}

void bench_register_shapes(void)
{
    tb_bench_use_real_time(tb_bench_threads(tb_register("pipeline64", bm_pipeline, NULL), 2));

    tb_bench_use_real_time(tb_bench_threads(tb_register("working_set", bm_working_set, NULL), 2));
    static int shared_start = 1;
    tb_bench_use_real_time(tb_bench_threads(tb_register("working_set_shared_start", bm_working_set, &shared_start), 2));

    tb_bench *b = tb_bench_use_real_time(tb_register("remote_frees", bm_remote_frees, NULL));
    tb_bench_threads(tb_bench_threads(b, 8), 16);

    /* one fixed run each: the counters describe one wave of threads */
    b = tb_register("idle_threads", bm_idle_threads, NULL);
    b = tb_bench_unit(tb_bench_iterations(tb_bench_use_real_time(tb_bench_arg_name(b, "n")), 1),
                      TB_MS);
    tb_bench_arg(tb_bench_arg(b, 256), 2000);

    /* a fixed number of swaps in all, shared by the threads */
    static const int swap_threads[] = { 16, 64, 256 };
    for (size_t i = 0; i < sizeof swap_threads / sizeof swap_threads[0]; i++)
        tb_bench_unit(tb_bench_iterations(tb_bench_use_real_time(tb_bench_threads(
                          tb_register("swap", bm_swap, NULL), swap_threads[i])),
                          SWAP_TOTAL / swap_threads[i]), TB_US);
}
