/* ctor_prog.c: a program that allocates before main and after exit, run by
 * test_process under LD_PRELOAD=libtieralloc.so (it does not link tieralloc).
 *
 * Before main (constructor): blocks of many sizes are allocated and freed,
 * some kept; strdup, fopen/getline and printf run; a thread is started that
 * allocates blocks and exits still holding them.
 * In main: everything the constructor made is checked (contents intact and,
 * through ta_owns found with dlsym, owned by tieralloc), malloc must resolve
 * into libtieralloc, the leftover blocks of exited threads are freed here, and
 * an atexit handler allocates too.  Prints "ctor ok" and, at exit, "atexit ok";
 * any failure prints "ctor_prog: FAIL ..." on stderr and exits 1. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "ctor_prog: FAIL line %d: %s: ", __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
            fflush(NULL);                                                 \
            _exit(1);                                                     \
        }                                                                 \
    } while (0)

/* keep the compiler from eliding malloc/free pairs */
static void *opaque(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}

static unsigned char pat(const void *p, size_t i) { return (unsigned char)(((uintptr_t)p >> 4) + i * 13); }
static void fill(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = pat(p, i);
}
static int intact(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(p, i)) return 0;
    return 1;
}

/* ---- made by the constructor ------------------------------------------------ */
enum { NKEEP = 64, NTHREAD_BLOCKS = 200 };
static unsigned char *kept[NKEEP];
static size_t kept_size[NKEEP];
static char *early_str;
static int maps_mentions_tieralloc = -1;
static int ctor_ran;
static pthread_t early_thread;

typedef struct held {
    unsigned char *p[NTHREAD_BLOCKS];
    size_t n[NTHREAD_BLOCKS];
} held_t;
static held_t early_held, late_held;

/* A thread that allocates, frees some, and exits holding the rest. */
static void *allocating_thread(void *arg) {
    held_t *h = arg;
    for (int i = 0; i < NTHREAD_BLOCKS; i++) {
        size_t n = (size_t)(i * 97 % 5000) + 1;
        if (i % 50 == 0) n = 300000 + (size_t)i;
        unsigned char *tmp = malloc(n);
        if (!tmp) return (void *)1;
        free(opaque(tmp));
        h->n[i] = n;
        h->p[i] = malloc(n);
        if (!h->p[i]) return (void *)1;
        fill(h->p[i], n);
    }
    return NULL;
}

__attribute__((constructor)) static void early(void) {
    ctor_ran = 1;
    /* many sizes, every one freed except a kept sample */
    int k = 0;
    for (size_t n = 0; n < 3000000; n = n < 2048 ? n + 1 : n + n / 3) {
        unsigned char *p = malloc(n);
        if (!p) continue;
        fill(p, n);
        if (n % 61 == 7 && k < NKEEP) {
            kept[k] = p;
            kept_size[k++] = n;
        } else {
            free(opaque(p));
        }
    }
    void *c = calloc(1000, 10);
    free(opaque(c));
    early_str = strdup("made before main");

    FILE *f = fopen("/proc/self/maps", "r");
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        maps_mentions_tieralloc = 0;
        while (getline(&line, &cap, f) > 0)
            if (strstr(line, "libtieralloc")) maps_mentions_tieralloc = 1;
        free(line);
        fclose(f);
    }
    printf("ctor: %d blocks kept before main\n", k);
    if (pthread_create(&early_thread, NULL, allocating_thread, &early_held) != 0) early_thread = 0;
}

/* ---- at exit ------------------------------------------------------------------ */
static void at_exit_handler(void) {
    for (size_t n = 1; n < 1000000; n *= 3) {
        unsigned char *p = malloc(n);
        CHECK(p, "malloc(%zu) in atexit", n);
        for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 7 + 3);
        p = realloc(p, n * 2 + 1);
        CHECK(p, "realloc(%zu) in atexit", n * 2 + 1);
        for (size_t i = 0; i < n; i++) CHECK(p[i] == (unsigned char)(i * 7 + 3), "realloc in atexit lost byte %zu", i);
        free(p);
    }
    char *s = strdup("at exit");
    CHECK(s && strcmp(s, "at exit") == 0, "strdup in atexit");
    free(s);
    printf("atexit ok\n");
}

int main(void) {
    CHECK(ctor_ran, "the constructor did not run");
    int (*owns)(const void *) = (int (*)(const void *))dlsym(RTLD_DEFAULT, "ta_owns");
    CHECK(owns != NULL, "ta_owns not found: is libtieralloc preloaded?");

    void *m = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    CHECK(m && dladdr(m, &info) && info.dli_fname, "dladdr(malloc) failed");
    CHECK(strstr(info.dli_fname, "libtieralloc"), "malloc resolves into %s", info.dli_fname);
    CHECK(dladdr((void *)malloc, &info) && strstr(info.dli_fname, "libtieralloc"), "&malloc is in %s",
          info.dli_fname);
    CHECK(maps_mentions_tieralloc == 1, "fopen/getline of /proc/self/maps before main: %d",
          maps_mentions_tieralloc);

    for (int i = 0; i < NKEEP && kept[i]; i++) {
        CHECK(owns(kept[i]), "block %p of %zu bytes from the constructor is not tieralloc's", (void *)kept[i],
              kept_size[i]);
        CHECK(intact(kept[i], kept_size[i]), "block of %zu bytes from the constructor changed", kept_size[i]);
        free(kept[i]);
    }
    CHECK(early_str && owns(early_str) && strcmp(early_str, "made before main") == 0, "strdup before main");
    free(early_str);

    /* the constructor's thread exited holding its blocks; main frees them */
    CHECK(early_thread != 0, "pthread_create in the constructor failed");
    void *ret = (void *)1;
    pthread_join(early_thread, &ret);
    CHECK(ret == NULL, "the constructor's thread failed to allocate");
    for (int i = 0; i < NTHREAD_BLOCKS; i++) {
        CHECK(owns(early_held.p[i]), "block %d of the constructor's thread not owned", i);
        CHECK(intact(early_held.p[i], early_held.n[i]), "block %d of the constructor's thread changed", i);
        free(early_held.p[i]);
    }

    /* the same with a thread started from main */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, allocating_thread, &late_held) == 0, "pthread_create");
    ret = (void *)1;
    pthread_join(t, &ret);
    CHECK(ret == NULL, "thread failed to allocate");
    for (int i = 0; i < NTHREAD_BLOCKS; i++) {
        CHECK(owns(late_held.p[i]) && intact(late_held.p[i], late_held.n[i]), "block %d of an exited thread", i);
        free(late_held.p[i]);
    }

    CHECK(atexit(at_exit_handler) == 0, "atexit");
    printf("ctor ok\n");
    return 0;
}
