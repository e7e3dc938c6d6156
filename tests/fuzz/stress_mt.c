/* tests/fuzz/stress_mt.c: threads driving the ta_* API at once, for the race
 * detector (the tsan stage) and valgrind (the valgrind stage).
 *
 *   stress_mt [THREADS [ROUNDS]]     (default 4 threads, 20000 rounds each)
 *
 * Each thread allocates blocks of varied sizes (ta_malloc, ta_calloc,
 * ta_memalign, ta_realloc, scoped blocks), writes a pattern into each, checks
 * it before freeing, and hands a share of its blocks to the other threads
 * through a mutex-protected exchange, so that blocks are freed by threads that
 * did not allocate them (the remote-free paths of tiers 1 and 2).  Every
 * thread also calls ta_malloc_trim now and then.  It exits 1 on a pattern
 * mismatch or a failed allocation, 0 otherwise.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tieralloc.h"

#define EXCHANGE 256
#define LOCAL 64

struct blk {
    unsigned char *p;
    size_t n;
    unsigned char tag;
};

static struct blk exchange[EXCHANGE];
static pthread_mutex_t exchange_lock = PTHREAD_MUTEX_INITIALIZER;
static int rounds = 20000;
static int failed;

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t r) {
    switch (r % 8) {
    case 0: return r >> 8 & 15;
    case 1: case 2: case 3: return r >> 8 & 1023;
    case 4: case 5: return r >> 8 & 16383;
    case 6: return r >> 8 & 0x3ffff;
    default: return (r >> 8 & 0x7ffff) + 0x40000; /* large blocks */
    }
}

static void fill(const struct blk *b) {
    size_t n = b->n < 256 ? b->n : 256;
    memset(b->p, b->tag, n);
    if (b->n > 256) memset(b->p + b->n - 64, b->tag, 64);
}

static int intact(const struct blk *b) {
    size_t n = b->n < 256 ? b->n : 256;
    for (size_t i = 0; i < n; i++)
        if (b->p[i] != b->tag) return 0;
    if (b->n > 256)
        for (size_t i = b->n - 64; i < b->n; i++)
            if (b->p[i] != b->tag) return 0;
    return 1;
}

static void fail(const char *what, const struct blk *b) {
    fprintf(stderr, "stress_mt: %s (block %p, %zu bytes)\n", what, b ? (void *)b->p : NULL, b ? b->n : 0);
    __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
}

static void drop(struct blk *b) {
    if (!b->p) return;
    if (!intact(b)) fail("contents changed", b);
    if (ta_malloc_usable_size(b->p) < b->n) fail("usable size below the requested size", b);
    ta_free(b->p);
    b->p = NULL;
}

static void *worker(void *arg) {
    uint64_t seed = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    struct blk local[LOCAL] = {{0}};
    for (int round = 0; round < rounds && !__atomic_load_n(&failed, __ATOMIC_RELAXED); round++) {
        uint64_t r = next_rand(&seed);
        struct blk *b = &local[r % LOCAL];
        unsigned op = (unsigned)(r >> 32) % 16;
        if (op < 9) { /* a new block in a local slot */
            drop(b);
            size_t n = pick_size(next_rand(&seed));
            switch (op % 3) {
            case 0: b->p = ta_malloc(n); break;
            case 1: b->p = ta_calloc(1, n); break;
            default: b->p = ta_memalign((size_t)64 << (r >> 40) % 6, n); break;
            }
            if (!b->p) { fail("allocation failed", b); break; }
            b->n = n;
            b->tag = (unsigned char)(r >> 48);
            fill(b);
        } else if (op < 11) { /* realloc keeps the prefix */
            if (!b->p) continue;
            if (!intact(b)) fail("contents changed before realloc", b);
            size_t n = pick_size(next_rand(&seed));
            unsigned char *p = ta_realloc(b->p, n ? n : 1);
            if (!p) { fail("realloc failed", b); break; }
            b->p = p;
            size_t keep = n < b->n ? n : b->n; /* the head of the pattern is kept */
            for (size_t i = 0; i < keep && i < 256; i++)
                if (p[i] != b->tag) { fail("realloc lost the contents", b); break; }
            b->n = n ? n : 1;
            fill(b);
        } else if (op < 14) { /* hand a block to another thread, take one from it */
            struct blk mine = *b, theirs;
            b->p = NULL;
            pthread_mutex_lock(&exchange_lock);
            struct blk *x = &exchange[next_rand(&seed) % EXCHANGE];
            theirs = *x;
            *x = mine;
            pthread_mutex_unlock(&exchange_lock);
            drop(&theirs); /* freed here, allocated elsewhere */
        } else if (op == 14) { /* a scope with a few blocks, one escaping */
            ta_scope_t m = ta_scope_begin();
            struct blk s[4];
            for (int i = 0; i < 4; i++) {
                s[i].n = pick_size(next_rand(&seed)) & 4095;
                s[i].p = ta_scope_alloc(s[i].n);
                if (!s[i].p) { fail("scoped allocation failed", NULL); break; }
                s[i].tag = (unsigned char)i;
                fill(&s[i]);
            }
            for (int i = 0; i < 4; i++)
                if (s[i].p && !intact(&s[i])) fail("scoped block changed", &s[i]);
            struct blk e = s[0];
            drop(b);
            e.p = s[0].p ? ta_escape(s[0].p) : NULL;
            ta_scope_end(m);
            if (e.p) {
                if (!intact(&e)) fail("escaped copy differs", &e);
                *b = e;
            }
        } else if ((r >> 20) % 64 == 0) {
            ta_malloc_trim(0);
        }
    }
    for (int i = 0; i < LOCAL; i++) drop(&local[i]);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) rounds = atoi(argv[2]);
    if (threads < 1 || threads > 64 || rounds < 1) {
        fprintf(stderr, "usage: stress_mt [THREADS [ROUNDS]]\n");
        return 2;
    }
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i)) {
            fprintf(stderr, "stress_mt: pthread_create failed\n");
            return 2;
        }
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < EXCHANGE; i++) drop(&exchange[i]);
    if (failed) return 1;
    printf("stress_mt: %d threads x %d rounds: ok\n", threads, rounds);
    return 0;
}
