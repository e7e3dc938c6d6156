/* test_stress.c: multi-threaded stress that checks the contents of every block.
 *
 *  - exchange: threads hand blocks of random sizes to each other through a
 *    shared ring; whoever takes a block verifies all of it, sometimes reallocs
 *    it (the prefix must survive) and passes it on, or frees it;
 *  - contention: more threads than CPUs allocate and free the same size
 *    classes, in batches small enough to stay in the thread cache and large
 *    enough to spill into the central lists;
 *  - producer/consumer: one thread allocates, another frees, streaming and in
 *    bulk; memory freed remotely must come back (RSS stays flat).
 * Threads never assert: they count failures and keep the first message. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "tieralloc.h"

/* ---- failure reporting from threads -------------------------------------- */
static atomic_int n_errors;
static atomic_int have_msg;
static char first_msg[512];

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    atomic_fetch_add(&n_errors, 1);
    if (atomic_exchange(&have_msg, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_msg, sizeof first_msg, fmt, ap);
        va_end(ap);
    }
}

static void reset_errors(void) {
    atomic_store(&n_errors, 0);
    atomic_store(&have_msg, 0);
    first_msg[0] = '\0';
}

#define ASSERT_NO_ERRORS() \
    cr_assert_eq(atomic_load(&n_errors), 0, "%d errors; first: %s", atomic_load(&n_errors), first_msg)

static void start_threads(pthread_t *t, int n, void *(*fn)(void *), void *args, size_t arg_size) {
    for (int i = 0; i < n; i++) {
        int r = pthread_create(&t[i], NULL, fn, (char *)args + (size_t)i * arg_size);
        cr_assert_eq(r, 0, "pthread_create: %s", strerror(r));
    }
}
static void join_threads(pthread_t *t, int n) {
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
}

/* ---- 1. exchange ring with verification ----------------------------------- */
typedef struct item {
    unsigned char *p;
    size_t n;
    uint64_t base;  /* pattern base of the contents */
    uint64_t check; /* guards the item itself */
} item_t;

static uint64_t item_check(const item_t *it) { return tu_mix((uint64_t)(uintptr_t)it->p ^ it->n ^ it->base); }

enum { RING = 1024 };
static _Atomic(item_t *) ring[RING];

typedef struct xargs {
    int id;
    int ops;
    long allocated, verified, reallocs;
} xargs_t;

static size_t random_size(uint64_t *rng) {
    uint64_t r = tu_rand(rng) % 1000;
    if (r < 940) return tu_rand_range(rng, 1, 1024);
    if (r < 996) return tu_rand_range(rng, 1025, 64 << 10);
    return tu_rand_range(rng, 256 << 10, 2 << 20);
}

static item_t *new_item(uint64_t *rng, size_t n) {
    item_t *it = malloc(sizeof *it);
    unsigned char *p = malloc(n);
    if (!it || !p) {
        fail("malloc(%zu) returned NULL", n);
        free(it);
        free(p);
        return NULL;
    }
    if (n > 8 && ((uintptr_t)p & 15)) fail("malloc(%zu) = %p is not 16-aligned", n, (void *)p);
    it->p = p;
    it->n = n;
    it->base = tu_rand(rng);
    tu_fill_base(p, n, it->base);
    it->check = item_check(it);
    return it;
}

static int verify_item(const item_t *it) {
    if (it->check != item_check(it)) {
        fail("item %p header corrupted", (void *)it);
        return 0;
    }
    size_t bad = tu_check_base(it->p, it->n, it->base);
    if (bad != (size_t)-1) {
        fail("block %p (size %zu) corrupted at offset %zu", (void *)it->p, it->n, bad);
        return 0;
    }
    return 1;
}

static void free_item(item_t *it) {
    free(it->p);
    free(it);
}

static void *exchange_thread(void *arg) {
    xargs_t *a = arg;
    uint64_t rng = 0x1234567ull * (uint64_t)(a->id + 1);
    for (int op = 0; op < a->ops && atomic_load(&n_errors) == 0; op++) {
        item_t *it = new_item(&rng, random_size(&rng));
        if (!it) break;
        a->allocated++;
        item_t *old = atomic_exchange(&ring[tu_rand(&rng) % RING], it);
        if (!old) continue;
        if (!verify_item(old)) break;
        a->verified++;
        if (tu_rand(&rng) % 4 == 0) {
            /* realloc: the common prefix must survive, then the block travels on */
            size_t m = random_size(&rng);
            unsigned char *q = realloc(old->p, m);
            if (!q) {
                fail("realloc(%zu -> %zu) returned NULL", old->n, m);
                break;
            }
            size_t keep = old->n < m ? old->n : m;
            size_t bad = tu_check_base(q, keep, old->base);
            if (bad != (size_t)-1) {
                fail("realloc %zu -> %zu lost byte %zu", old->n, m, bad);
                break;
            }
            a->reallocs++;
            old->p = q;
            old->n = m;
            old->base = tu_rand(&rng);
            tu_fill_base(q, m, old->base);
            old->check = item_check(old);
            item_t *other = atomic_exchange(&ring[tu_rand(&rng) % RING], old);
            if (other) {
                if (!verify_item(other)) break;
                a->verified++;
                free_item(other);
            }
        } else {
            free_item(old);
        }
    }
    return NULL;
}

Test(stress, cross_thread_exchange_verifies_every_block, .timeout = 120) {
    enum { T = 4 };
    reset_errors();
    pthread_t t[T];
    xargs_t args[T];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < T; i++) args[i] = (xargs_t){.id = i + round * T, .ops = 100000};
        start_threads(t, T, exchange_thread, args, sizeof args[0]);
        join_threads(t, T);
        ASSERT_NO_ERRORS();
        long allocated = 0, verified = 0, reallocs = 0;
        for (int i = 0; i < T; i++) {
            allocated += args[i].allocated;
            verified += args[i].verified;
            reallocs += args[i].reallocs;
        }
        cr_assert_eq(allocated, (long)T * 100000);
        cr_assert_gt(verified, allocated / 2, "few blocks changed hands (%ld of %ld)", verified, allocated);
        cr_assert_gt(reallocs, 0);
    }
    /* the main thread drains the ring: one more owner for every remaining block */
    int left = 0;
    for (int i = 0; i < RING; i++) {
        item_t *it = atomic_exchange(&ring[i], NULL);
        if (!it) continue;
        left++;
        verify_item(it);
        free_item(it);
    }
    ASSERT_NO_ERRORS();
    cr_assert_gt(left, RING / 2, "the ring should be nearly full at the end (%d)", left);
}

/* ---- 2. many threads, same size classes ------------------------------------ */
typedef struct cargs {
    int id;
    int rounds;
} cargs_t;

static const size_t contention_sizes[] = {16, 32, 48, 64, 96, 128, 256, 512, 1024, 4096};

static void *contention_thread(void *arg) {
    cargs_t *a = arg;
    enum { MAXB = 3000 };
    unsigned char **v = malloc(MAXB * sizeof *v);
    size_t *n = malloc(MAXB * sizeof *n);
    if (!v || !n) {
        fail("malloc of the thread's arrays failed");
        return NULL;
    }
    uint64_t rng = 777 + (uint64_t)a->id;
    for (int round = 0; round < a->rounds && atomic_load(&n_errors) == 0; round++) {
        /* mostly small batches (cache hits), every 8th round a big one that
         * overflows the cache into the central lists and back */
        int count = round % 8 == 7 ? MAXB : (int)tu_rand_range(&rng, 1, 64);
        size_t sz = contention_sizes[tu_rand(&rng) % 10];
        for (int i = 0; i < count; i++) {
            n[i] = i % 3 ? sz : contention_sizes[(size_t)i % 10];
            v[i] = malloc(n[i]);
            if (!v[i]) {
                fail("malloc(%zu) returned NULL", n[i]);
                return NULL;
            }
            tu_fill(v[i], n[i], (uint64_t)a->id << 32 | (uint64_t)i);
        }
        for (int i = 0; i < count; i++) {
            size_t bad = tu_check(v[i], n[i], (uint64_t)a->id << 32 | (uint64_t)i);
            if (bad != (size_t)-1) {
                fail("thread %d: block %p (size %zu) overwritten at %zu: handed out twice?", a->id, (void *)v[i],
                     n[i], bad);
                return NULL;
            }
        }
        /* free in a scrambled order: stride by a prime that does not divide count */
        size_t step = count % 7 ? 7 : count % 11 ? 11 : 13;
        for (size_t i = 0; i < (size_t)count; i++) free(v[(i * step) % (size_t)count]);
    }
    free(v);
    free(n);
    return NULL;
}

Test(stress, many_threads_same_size_classes, .timeout = 120) {
    enum { T = 8 };
    reset_errors();
    pthread_t t[T];
    cargs_t args[T];
    for (int i = 0; i < T; i++) args[i] = (cargs_t){i, 1500};
    start_threads(t, T, contention_thread, args, sizeof args[0]);
    join_threads(t, T);
    ASSERT_NO_ERRORS();
}

/* ---- 3. producer / consumer ------------------------------------------------- */
enum { QCAP = 4096 };
typedef struct spsc {
    _Atomic size_t head; /* next slot the consumer reads */
    char pad1[64];
    _Atomic size_t tail; /* next slot the producer writes */
    char pad2[64];
    void *slot[QCAP];
    size_t size[QCAP];
} spsc_t;

typedef struct pcargs {
    spsc_t *q;
    long count;
    uint64_t seed;
} pcargs_t;

static size_t pc_size(uint64_t *rng) {
    uint64_t r = tu_rand(rng) % 100;
    if (r < 90) return tu_rand_range(rng, 1, 256);
    if (r < 99) return tu_rand_range(rng, 257, 4096);
    return tu_rand_range(rng, 4097, 64 << 10);
}

static void *producer(void *arg) {
    pcargs_t *a = arg;
    uint64_t rng = a->seed;
    for (long i = 0; i < a->count && atomic_load(&n_errors) == 0; i++) {
        size_t n = pc_size(&rng);
        unsigned char *p = malloc(n);
        if (!p) {
            fail("malloc(%zu) returned NULL", n);
            break;
        }
        tu_fill(p, n, (uint64_t)i);
        size_t t = atomic_load_explicit(&a->q->tail, memory_order_relaxed);
        while (t - atomic_load_explicit(&a->q->head, memory_order_acquire) >= QCAP) {
            if (atomic_load(&n_errors)) return NULL;
            sched_yield();
        }
        a->q->slot[t % QCAP] = p;
        a->q->size[t % QCAP] = n;
        atomic_store_explicit(&a->q->tail, t + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg) {
    pcargs_t *a = arg;
    for (long i = 0; i < a->count && atomic_load(&n_errors) == 0; i++) {
        size_t h = atomic_load_explicit(&a->q->head, memory_order_relaxed);
        while (atomic_load_explicit(&a->q->tail, memory_order_acquire) == h) {
            if (atomic_load(&n_errors)) return NULL;
            sched_yield();
        }
        unsigned char *p = a->q->slot[h % QCAP];
        size_t n = a->q->size[h % QCAP];
        size_t bad = tu_check(p, n, (uint64_t)i);
        if (bad != (size_t)-1) fail("block #%ld %p (size %zu) corrupted at %zu", i, (void *)p, n, bad);
        free(p);
        atomic_store_explicit(&a->q->head, h + 1, memory_order_release);
    }
    return NULL;
}

Test(stress, producer_consumer_stream_1e6_blocks, .timeout = 120) {
    reset_errors();
    spsc_t *q = calloc(1, sizeof *q);
    cr_assert_not_null(q);
    pcargs_t a = {q, 200000, 5};
    size_t rss_first = 0;
    for (int round = 0; round < 5; round++) {
        a.seed = 5 + (uint64_t)round;
        pthread_t tp, tc;
        cr_assert_eq(pthread_create(&tp, NULL, producer, &a), 0);
        cr_assert_eq(pthread_create(&tc, NULL, consumer, &a), 0);
        pthread_join(tp, NULL);
        pthread_join(tc, NULL);
        ASSERT_NO_ERRORS();
        cr_assert_eq(atomic_load(&q->head), atomic_load(&q->tail));
        /* the first two rounds fill the caches of every tier; after that the
         * memory freed by the consumer must be what the producer reuses */
        if (round == 1) rss_first = tu_rss_bytes();
    }
    size_t rss_last = tu_rss_bytes();
    cr_assert_lt(rss_last, rss_first + 16 * TU_MiB,
                 "RSS grew from %zu to %zu KiB over 600,000 more remotely freed blocks", rss_first >> 10, rss_last >> 10);
    free(q);
}

/* bulk: one thread allocates 200,000 blocks, then another frees all of them */
typedef struct bulk {
    unsigned char **v;
    size_t *n;
    long count;
    uint64_t seed;
} bulk_t;

static void *bulk_alloc(void *arg) {
    bulk_t *b = arg;
    uint64_t rng = b->seed;
    for (long i = 0; i < b->count; i++) {
        b->n[i] = pc_size(&rng);
        b->v[i] = malloc(b->n[i]);
        if (!b->v[i]) {
            fail("malloc(%zu) returned NULL", b->n[i]);
            b->count = i;
            break;
        }
        tu_fill(b->v[i], b->n[i], b->seed);
    }
    return NULL;
}

static void *bulk_free(void *arg) {
    bulk_t *b = arg;
    for (long i = 0; i < b->count; i++) {
        size_t bad = tu_check(b->v[i], b->n[i], b->seed);
        if (bad != (size_t)-1) fail("block #%ld (size %zu) corrupted at %zu", i, b->n[i], bad);
        free(b->v[i]);
    }
    return NULL;
}

Test(stress, one_thread_allocates_another_frees_everything, .timeout = 120) {
    reset_errors();
    enum { N = 200000 };
    bulk_t b = {malloc(N * sizeof(void *)), malloc(N * sizeof(size_t)), N, 0};
    cr_assert(b.v && b.n);
    size_t rss_first = 0;
    for (int round = 0; round < 5; round++) {
        b.seed = 100 + (uint64_t)round;
        b.count = N;
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, bulk_alloc, &b), 0);
        pthread_join(t, NULL);
        ASSERT_NO_ERRORS();
        cr_assert_eq(pthread_create(&t, NULL, bulk_free, &b), 0);
        pthread_join(t, NULL);
        ASSERT_NO_ERRORS();
        if (round == 1) rss_first = tu_rss_bytes(); /* caches of every tier are warm now */
    }
    size_t rss_last = tu_rss_bytes();
    cr_assert_lt(rss_last, rss_first + 16 * TU_MiB,
                 "RSS grew from %zu to %zu KiB: remotely freed memory is not reused", rss_first >> 10, rss_last >> 10);
    free(b.v);
    free(b.n);
}
