/* trace_prog: heap traffic for test_trace (run under TIERALLOC_TRACE).
 *   threads  4 threads allocating with every call kind, and blocks handed
 *            from the main thread to a consumer thread that frees them
 *   churn    64 short-lived threads, a few at a time
 *   fork     allocations before, in the child and after a fork
 *   late     32 threads, one at a time, that free their blocks (and
 *            allocate more) in a destructor of their own, which runs after
 *            the library's (its key is made later) */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define XFER 2000
static void *volatile handed[XFER];
static volatile int handed_n;

static void work(unsigned seed, int n) {
    void *keep[64] = {0};
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned k = (seed >> 8) % 64, sz = 1 + (seed >> 16) % 3000;
        void *p;
        switch (i % 7) {
        case 0: p = calloc(3, sz); break;
        case 1: p = realloc(keep[k], sz); keep[k] = NULL; break;
        case 2: p = aligned_alloc(64, 64 * (1 + sz % 8)); break;
        case 3: if (posix_memalign(&p, 256, sz)) p = NULL; break;
        case 4: p = malloc(300000 + sz); break; /* large */
        default: p = malloc(sz); break;
        }
        if (p) memset(p, 1, 8);
        free(keep[k]);
        keep[k] = p;
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
}

static void *worker(void *arg) {
    work((unsigned)(size_t)arg, 5000);
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    for (int i = 0; i < XFER; i++) {
        while (__atomic_load_n(&handed_n, __ATOMIC_ACQUIRE) <= i) sched_yield();
        free(handed[i]);
    }
    return NULL;
}

#define LATE_BLOCKS 50
static pthread_key_t late_key;
static void late_destructor(void *arg) {
    void **p = arg;
    for (int i = 0; i < LATE_BLOCKS; i++) free(p[i]);
    free(p);
    for (int i = 0; i < 10; i++) {
        char *q = malloc(100 + i);
        *(volatile char *)q = 1; /* (or the compiler drops the pair) */
        free(q);
    }
}
static void *late_worker(void *arg) {
    (void)arg;
    void **p = malloc(LATE_BLOCKS * sizeof *p);
    for (int i = 0; i < LATE_BLOCKS; i++) p[i] = malloc(40 + i);
    pthread_setspecific(late_key, p);
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "threads";
    if (!strcmp(mode, "threads")) {
        pthread_t t[5];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(size_t)(i + 1));
        pthread_create(&t[4], NULL, consumer, NULL);
        for (int i = 0; i < XFER; i++) {
            handed[i] = malloc(16 + i % 500);
            __atomic_store_n(&handed_n, i + 1, __ATOMIC_RELEASE);
        }
        for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
    } else if (!strcmp(mode, "churn")) {
        for (int r = 0; r < 16; r++) {
            pthread_t t[4];
            for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(size_t)(r * 4 + i + 1));
            for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        }
    } else if (!strcmp(mode, "late")) {
        free(malloc(1)); /* the library's key first */
        if (pthread_key_create(&late_key, late_destructor)) return 1;
        for (int i = 0; i < 32; i++) {
            pthread_t t;
            pthread_create(&t, NULL, late_worker, NULL);
            pthread_join(t, NULL);
        }
    } else if (!strcmp(mode, "fork")) {
        work(7, 2000);
        void *kept = malloc(100);
        pid_t pid = fork();
        if (pid == 0) {
            work(8, 2000);
            free(kept); /* the parent's block: not in the child's trace */
            exit(0); /* (_exit would skip the flush at exit) */
        }
        int st;
        waitpid(pid, &st, 0);
        work(9, 2000);
        free(kept);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) return 1;
    } else {
        return 2;
    }
    puts("done");
    return 0;
}
