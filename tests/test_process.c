/* test_process.c: tieralloc across process-level events.
 *
 *  - fork from a multi-threaded program: the children can allocate (no lock
 *    was left held) and create threads; a deadlock is a timeout, not a hang;
 *  - thread churn: 20,000 short-lived threads, and threads that only free;
 *    memory must not grow with the number of threads;
 *  - malloc_trim gives freed memory (large and small blocks) back to the OS;
 *  - decay: without malloc_trim, free pages go back after TIERALLOC_DECAY_MS
 *    on later allocator activity (this binary re-executes itself with the
 *    variable set: the option is read once at start);
 *  - ctor_prog: allocation before main, in threads and at exit under LD_PRELOAD.
 * Measurements that must not be disturbed by other tests run in a child. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "tieralloc.h"

extern char **environ;

/* ---- (a) fork from a multi-threaded program ------------------------------- */
static atomic_int stop_workers;
static atomic_long worker_errors;

static void *busy_worker(void *arg) {
    uint64_t rng = (uint64_t)(uintptr_t)arg;
    enum { B = 48 };
    unsigned char *v[B];
    size_t n[B];
    while (!atomic_load(&stop_workers)) {
        for (int i = 0; i < B; i++) {
            uint64_t r = tu_rand(&rng) % 100;
            n[i] = r < 90 ? tu_rand_range(&rng, 1, 2048) : r < 99 ? tu_rand_range(&rng, 2049, 100000)
                                                               : tu_rand_range(&rng, 300000, 400000);
            v[i] = malloc(n[i]);
            if (!v[i]) {
                atomic_fetch_add(&worker_errors, 1);
                return NULL;
            }
            tu_fill(v[i], n[i], 1);
        }
        for (int i = 0; i < B; i++) {
            if (tu_check(v[i], n[i], 1) != (size_t)-1) atomic_fetch_add(&worker_errors, 1);
            free(v[i]);
        }
    }
    return NULL;
}

enum { INHERITED = 200 };
static unsigned char *inherited[INHERITED];

static void *child_thread(void *arg) {
    (void)arg;
    void *v[200];
    for (int i = 0; i < 200; i++) {
        v[i] = malloc((size_t)i * 40 + 1);
        if (!v[i]) return (void *)1;
        memset(v[i], 0x5a, (size_t)i * 40 + 1);
    }
    for (int i = 0; i < 200; i++) free(v[i]);
    void *big = malloc(2 << 20);
    if (!big) return (void *)1;
    memset(big, 1, 2 << 20);
    free(big);
    return NULL;
}

/* What each forked child does, in a process whose parent had busy threads. */
static void fork_child_body(void *arg) {
    int which = (int)(intptr_t)arg;
    static const size_t sizes[] = {8, 24, 100, 700, 3000, 12000, 40};
    unsigned char *v[1000];
    for (int i = 0; i < 1000; i++) {
        size_t n = sizes[i % 7];
        v[i] = malloc(n);
        TU_CHILD_CHECK(v[i] != NULL, "malloc(%zu) in the child", n);
        tu_fill(v[i], n, 9);
    }
    for (int i = 0; i < 1000; i++) {
        TU_CHILD_CHECK(tu_check(v[i], sizes[i % 7], 9) == (size_t)-1, "block %d corrupted", i);
        free(v[i]);
    }
    unsigned char *big = malloc(2 << 20);
    TU_CHILD_CHECK(big != NULL, "large malloc in the child");
    memset(big, 7, 2 << 20);
    free(big);
    /* blocks the parent allocated before fork belong to the child too */
    for (int i = which % 2; i < INHERITED; i += 2) {
        TU_CHILD_CHECK(tu_check(inherited[i], (size_t)i * 50 + 1, 3) == (size_t)-1, "inherited block %d", i);
        free(inherited[i]);
    }
    pthread_t t;
    void *ret = (void *)1;
    TU_CHILD_CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0, "pthread_create in the child");
    pthread_join(t, &ret);
    TU_CHILD_CHECK(ret == NULL, "the child's thread could not allocate");
}

Test(process, fork_from_multithreaded_program, .timeout = 300) {
    enum { T = 4, FORKS = 50 };
    for (int i = 0; i < INHERITED; i++) {
        inherited[i] = malloc((size_t)i * 50 + 1);
        tu_fill(inherited[i], (size_t)i * 50 + 1, 3);
    }
    atomic_store(&stop_workers, 0);
    pthread_t t[T];
    for (int i = 0; i < T; i++) cr_assert_eq(pthread_create(&t[i], NULL, busy_worker, (void *)(uintptr_t)(i + 1)), 0);
    static tu_child_t c;
    int failures = 0;
    char first[2048] = "";
    for (int k = 0; k < FORKS; k++) {
        tu_run_child(fork_child_body, (void *)(intptr_t)k, 20000, &c);
        if (!(c.exited && c.exit_code == 0)) {
            if (!failures++) snprintf(first, sizeof first, "fork %d: %s", k, tu_describe(&c));
            if (c.timed_out) break; /* a deadlock: do not wait 20 s more per fork */
        }
    }
    atomic_store(&stop_workers, 1);
    for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
    cr_assert_eq(failures, 0, "%d of %d children failed; first: %s", failures, FORKS, first);
    cr_assert_eq(atomic_load(&worker_errors), 0, "the parent's threads saw corrupted blocks");
    for (int i = 0; i < INHERITED; i++) {
        cr_assert_eq(tu_check(inherited[i], (size_t)i * 50 + 1, 3), (size_t)-1);
        free(inherited[i]);
    }
}

/* ---- (b) thread churn -------------------------------------------------------- */
enum { WAVE = 8, LEFT = 4 };
typedef struct slot {
    unsigned char *left[LEFT]; /* blocks left by the previous thread in this slot */
    size_t left_n[LEFT];
    uint64_t rng; /* carried from thread to thread: the run is deterministic */
    int errors;
} slot_t;

static void *churn_thread(void *arg) {
    slot_t *s = arg;
    for (int i = 0; i < LEFT; i++) {
        if (!s->left[i]) continue;
        if (tu_check(s->left[i], s->left_n[i], 5) != (size_t)-1) s->errors++;
        free(s->left[i]);
        s->left[i] = NULL;
    }
    uint64_t rng = s->rng;
    unsigned char *v[16];
    for (int round = 0; round < 100 / 16 + 1; round++) {
        for (int i = 0; i < 16; i++) {
            v[i] = malloc(tu_rand_range(&rng, 1, 1024));
            if (!v[i]) {
                s->errors++;
                return NULL;
            }
            v[i][0] = (unsigned char)i;
        }
        for (int i = 0; i < 16; i++) {
            if (v[i][0] != (unsigned char)i) s->errors++;
            free(v[i]);
        }
    }
    for (int i = 0; i < LEFT; i++) {
        s->left_n[i] = tu_rand_range(&rng, 1, 4096);
        s->left[i] = malloc(s->left_n[i]);
        if (!s->left[i]) {
            s->errors++;
            continue;
        }
        tu_fill(s->left[i], s->left_n[i], 5);
    }
    s->rng = rng;
    return NULL;
}

static void run_wave(slot_t *slots, void *(*fn)(void *)) {
    pthread_t t[WAVE];
    for (int i = 0; i < WAVE; i++) {
        int r = pthread_create(&t[i], NULL, fn, &slots[i]);
        cr_assert_eq(r, 0, "pthread_create: %s", strerror(r));
    }
    for (int i = 0; i < WAVE; i++) pthread_join(t[i], NULL);
}

Test(process, thread_churn_memory_does_not_grow, .timeout = 300) {
    enum { THREADS = 20000, BASELINE = 1000 };
    static slot_t slots[WAVE];
    memset(slots, 0, sizeof slots);
    for (int i = 0; i < WAVE; i++) slots[i].rng = (uint64_t)i * 1000003u;
    size_t rss_base = 0;
    for (int done = 0; done < THREADS; done += WAVE) {
        run_wave(slots, churn_thread);
        if (done < BASELINE && done + WAVE >= BASELINE) rss_base = tu_rss_bytes();
    }
    size_t rss_end = tu_rss_bytes();
    cr_assert_gt(rss_base, 0);
    int errors = 0;
    for (int i = 0; i < WAVE; i++) {
        errors += slots[i].errors;
        for (int j = 0; j < LEFT; j++) free(slots[i].left[j]);
    }
    cr_assert_eq(errors, 0, "threads saw %d corrupted or missing blocks", errors);
    cr_assert_lt(rss_end, rss_base + 16 * TU_MiB, "RSS grew from %zu KiB after %d threads to %zu KiB after %d",
                 rss_base >> 10, BASELINE, rss_end >> 10, THREADS);
}

/* Threads that never allocate: they free what main allocated.  Their caches
 * are created by free alone and must still be flushed when they exit. */
enum { PER_THREAD = 300 };
typedef struct freeonly {
    unsigned char *p[PER_THREAD];
    size_t n[PER_THREAD];
    int errors;
} freeonly_t;

static void *free_only_thread(void *arg) {
    freeonly_t *f = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        if (tu_check(f->p[i], f->n[i], 8) != (size_t)-1) f->errors++;
        free(f->p[i]);
    }
    return NULL;
}

Test(process, free_only_threads_memory_does_not_grow, .timeout = 300) {
    enum { THREADS = 4000, BASELINE = 500 };
    static freeonly_t work[WAVE];
    uint64_t rng = 3;
    size_t rss_base = 0;
    for (int done = 0; done < THREADS; done += WAVE) {
        for (int w = 0; w < WAVE; w++) {
            for (int i = 0; i < PER_THREAD; i++) {
                size_t n = i % 100 == 0 ? tu_rand_range(&rng, 4096, 300000) : tu_rand_range(&rng, 1, 2048);
                work[w].n[i] = n;
                work[w].p[i] = malloc(n);
                cr_assert_not_null(work[w].p[i]);
                tu_fill(work[w].p[i], n, 8);
            }
        }
        pthread_t t[WAVE];
        for (int w = 0; w < WAVE; w++) cr_assert_eq(pthread_create(&t[w], NULL, free_only_thread, &work[w]), 0);
        for (int w = 0; w < WAVE; w++) pthread_join(t[w], NULL);
        if (done < BASELINE && done + WAVE >= BASELINE) rss_base = tu_rss_bytes();
    }
    size_t rss_end = tu_rss_bytes();
    cr_assert_gt(rss_base, 0);
    int errors = 0;
    for (int w = 0; w < WAVE; w++) errors += work[w].errors;
    cr_assert_eq(errors, 0, "%d blocks were corrupted on the way to the freeing threads", errors);
    cr_assert_lt(rss_end, rss_base + 16 * TU_MiB, "RSS grew from %zu KiB after %d free-only threads to %zu KiB after %d",
                 rss_base >> 10, BASELINE, rss_end >> 10, THREADS);
}

/* ---- (c) malloc_trim ------------------------------------------------------------ */
static size_t slack(size_t base, size_t fixed) { return fixed > base / 10 ? fixed : base / 10; }

static void trim_large_child(void *arg) {
    (void)arg;
    enum { N = 256 };
    static unsigned char *v[N];
    malloc_trim(0);
    size_t rss0 = tu_rss_bytes();
    for (int i = 0; i < N; i++) {
        v[i] = malloc(TU_MiB);
        TU_CHILD_CHECK(v[i] != NULL, "malloc(1 MiB) #%d", i);
        memset(v[i], i + 1, TU_MiB);
    }
    size_t rss_full = tu_rss_bytes();
    TU_CHILD_CHECK(rss_full >= rss0 + 200 * TU_MiB, "touching 256 MiB raised RSS only from %zu to %zu KiB",
                   rss0 >> 10, rss_full >> 10);
    for (int i = 0; i < N; i++) free(v[i]);
    int r = malloc_trim(0);
    size_t rss1 = tu_rss_bytes();
    TU_CHILD_CHECK(r == 1, "malloc_trim(0) returned %d after 256 MiB were freed", r);
    TU_CHILD_CHECK(rss1 < rss0 + slack(rss0, 20 * TU_MiB),
                   "RSS %zu KiB before, %zu KiB with 256 MiB held, %zu KiB after free + malloc_trim", rss0 >> 10,
                   rss_full >> 10, rss1 >> 10);
    /* the trimmed memory is reusable (and reads as the program wrote it, or zero) */
    unsigned char *p = calloc(64, TU_MiB);
    TU_CHILD_CHECK(p != NULL, "calloc(64 MiB) after trim");
    for (size_t i = 0; i < 64 * TU_MiB; i += 4096) TU_CHILD_CHECK(p[i] == 0, "calloc after trim not zero at %zu", i);
    free(p);
}

Test(process, malloc_trim_releases_freed_large_blocks, .timeout = 120) {
    static tu_child_t c;
    tu_run_child(trim_large_child, NULL, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
}

static void trim_small_child(void *arg) {
    (void)arg;
    enum { N = 1000000 };
    unsigned char **v = malloc(N * sizeof *v);
    TU_CHILD_CHECK(v != NULL, "malloc of the pointer array");
    memset(v, 0, N * sizeof *v);
    malloc_trim(0);
    size_t rss0 = tu_rss_bytes();
    for (int i = 0; i < N; i++) {
        v[i] = malloc(200);
        TU_CHILD_CHECK(v[i] != NULL, "malloc(200) #%d", i);
        memset(v[i], (unsigned char)i, 200);
    }
    size_t rss_full = tu_rss_bytes();
    TU_CHILD_CHECK(rss_full >= rss0 + 150 * TU_MiB, "1M blocks of 200 bytes raised RSS only from %zu to %zu KiB",
                   rss0 >> 10, rss_full >> 10);
    for (int i = 0; i < N; i++) {
        TU_CHILD_CHECK(v[i][199] == (unsigned char)i, "block %d changed", i);
        free(v[i]);
    }
    int r = malloc_trim(0);
    size_t rss1 = tu_rss_bytes();
    TU_CHILD_CHECK(r == 1, "malloc_trim(0) returned %d after 200 MiB of small blocks were freed", r);
    TU_CHILD_CHECK(rss1 < rss0 + slack(rss0, 20 * TU_MiB),
                   "RSS %zu KiB before, %zu KiB with 1M x 200 B held, %zu KiB after free + malloc_trim", rss0 >> 10,
                   rss_full >> 10, rss1 >> 10);
    free(v);
}

Test(process, malloc_trim_releases_freed_small_blocks, .timeout = 120) {
    static tu_child_t c;
    tu_run_child(trim_small_child, NULL, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
}

/* Small blocks freed by other threads, which have exited: malloc_trim from
 * the main thread must still find them (caches of exited threads are flushed). */
static void *fill_and_free_small(void *arg) {
    (void)arg;
    enum { N = 60000 };
    unsigned char **v = malloc(N * sizeof *v);
    if (!v) return (void *)1;
    for (int i = 0; i < N; i++) {
        v[i] = malloc(100 + (size_t)(i % 5) * 100);
        if (!v[i]) return (void *)1;
        memset(v[i], 1, 100);
    }
    for (int i = 0; i < N; i++) free(v[i]);
    free(v);
    return NULL;
}

static void trim_other_threads_child(void *arg) {
    (void)arg;
    malloc_trim(0);
    size_t rss0 = tu_rss_bytes();
    /* 16 threads in waves of 4, each filling its cache to the limit on exit */
    for (int wave = 0; wave < 4; wave++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            TU_CHILD_CHECK(pthread_create(&t[i], NULL, fill_and_free_small, NULL) == 0, "create");
        for (int i = 0; i < 4; i++) {
            void *ret = (void *)1;
            pthread_join(t[i], &ret);
            TU_CHILD_CHECK(ret == NULL, "thread %d failed to allocate", i);
        }
    }
    int r = malloc_trim(0);
    size_t rss1 = tu_rss_bytes();
    TU_CHILD_CHECK(r == 0 || r == 1, "malloc_trim returned %d", r);
    /* what exited threads had cached must have reached the page heap: only
     * metadata and the threads' cached stacks may remain */
    TU_CHILD_CHECK(rss1 < rss0 + 8 * TU_MiB,
                   "RSS %zu KiB before, %zu KiB after 16 threads freed 18 MiB each and main trimmed", rss0 >> 10,
                   rss1 >> 10);
}

Test(process, malloc_trim_releases_memory_freed_by_exited_threads, .timeout = 120) {
    static tu_child_t c;
    tu_run_child(trim_other_threads_child, NULL, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
}

/* ---- (d) decay without malloc_trim -------------------------------------------- *
 * The binary re-executes itself with TA_TEST_PROCESS_CHILD=decay and
 * TIERALLOC_DECAY_MS=200; the constructor below runs the scenario in that
 * fresh process and exits before Criterion starts. */
/* Allocate and touch 128 MiB in 1 MiB blocks, free them, then about a second
 * of light allocator activity (a 1 MiB block and a few small ones every 50 ms:
 * decay is checked on slow-path activity, not by a background thread).
 * Prints the RSS at each stage as "decay: <start> <held> <freed> <after>" KiB. */
static int decay_scenario(size_t rss[4]) {
    enum { N = 128 };
    static unsigned char *v[N];
    rss[0] = tu_rss_bytes();
    for (int i = 0; i < N; i++) {
        v[i] = malloc(TU_MiB);
        if (!v[i]) {
            fprintf(stderr, "decay: malloc(1 MiB) failed\n");
            return 1;
        }
        memset(v[i], i, TU_MiB);
    }
    rss[1] = tu_rss_bytes();
    for (int i = 0; i < N; i++) free(v[i]);
    rss[2] = tu_rss_bytes();
    for (int tick = 0; tick < 20; tick++) {
        tu_sleep_ms(50);
        void *big = malloc(TU_MiB);
        void *small[8];
        for (int i = 0; i < 8; i++) small[i] = malloc((size_t)(16 << i));
        if (!big) return 1;
        memset(big, 1, 4096);
        for (int i = 0; i < 8; i++) free(small[i]);
        free(big);
    }
    rss[3] = tu_rss_bytes();
    printf("decay: start %zu KiB, held %zu KiB, freed %zu KiB, after 1 s %zu KiB\n", rss[0] >> 10, rss[1] >> 10,
           rss[2] >> 10, rss[3] >> 10);
    if (rss[1] < rss[0] + 100 * TU_MiB) {
        fprintf(stderr, "decay: touching 128 MiB raised RSS only from %zu to %zu KiB\n", rss[0] >> 10, rss[1] >> 10);
        return 1;
    }
    return 0;
}

/* TIERALLOC_DECAY_MS=200: after a second the pages are back with the OS */
static int decay_child(void) {
    size_t rss[4];
    if (decay_scenario(rss)) return 1;
    if (rss[3] >= rss[0] + 24 * TU_MiB) {
        fprintf(stderr, "decay: RSS still %zu KiB above the start after 1 s with TIERALLOC_DECAY_MS=200\n",
                (rss[3] - rss[0]) >> 10);
        return 1;
    }
    return 0;
}

/* TIERALLOC_DECAY_MS=60000: freed pages stay resident for reuse (release is
 * lazy: faulting pages back in is what makes eager allocators slow) */
static int nodecay_child(void) {
    size_t rss[4];
    if (decay_scenario(rss)) return 1;
    if (rss[3] < rss[0] + 64 * TU_MiB) {
        fprintf(stderr, "decay: with TIERALLOC_DECAY_MS=60000 RSS fell to %zu KiB above the start within 1 s\n",
                (rss[3] - rss[0]) >> 10);
        return 1;
    }
    return 0;
}

__attribute__((constructor)) static void child_mode(void) {
    const char *mode = getenv("TA_TEST_PROCESS_CHILD");
    if (!mode) return;
    int rc = strcmp(mode, "decay") == 0 ? decay_child() : strcmp(mode, "nodecay") == 0 ? nodecay_child() : 2;
    fflush(NULL);
    _exit(rc);
}

/* environ plus the given NAME=value strings, without Criterion's own worker
 * variables (the re-executed binary must not think it is a test worker) */
static char **child_env(const char *const *extra, int nextra) {
    int n = 0;
    while (environ[n]) n++;
    char **env = calloc((size_t)(n + nextra + 1), sizeof *env);
    cr_assert_not_null(env);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (strncmp(environ[i], "BXFI_", 5) != 0 && strncmp(environ[i], "TIERALLOC_", 10) != 0 &&
            strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            env[k++] = environ[i];
    for (int i = 0; i < nextra; i++) env[k++] = (char *)extra[i];
    env[k] = NULL;
    return env;
}

static void run_self(const char *mode, const char *decay_ms, tu_child_t *c) {
    char mode_var[64], decay_var[64];
    snprintf(mode_var, sizeof mode_var, "TA_TEST_PROCESS_CHILD=%s", mode);
    snprintf(decay_var, sizeof decay_var, "TIERALLOC_DECAY_MS=%s", decay_ms);
    const char *extra[] = {mode_var, decay_var};
    char **env = child_env(extra, 2);
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(len, 0);
    self[len] = '\0';
    char *argv[] = {self, NULL};
    tu_run_exec(argv, env, 60000, c);
    free(env);
}

Test(process, free_pages_decay_without_malloc_trim, .timeout = 120) {
    static tu_child_t c;
    run_self("decay", "200", &c);
    cr_assert(c.exited && c.exit_code == 0, "%s; stdout: %s", tu_describe(&c), c.out);
    cr_assert(strstr(c.out, "decay: start") != NULL, "the child did not run the decay scenario: %s", c.out);
}

Test(process, free_pages_stay_resident_before_decay_time, .timeout = 120) {
    static tu_child_t c;
    run_self("nodecay", "60000", &c);
    cr_assert(c.exited && c.exit_code == 0, "%s; stdout: %s", tu_describe(&c), c.out);
    cr_assert(strstr(c.out, "decay: start") != NULL, "the child did not run the decay scenario: %s", c.out);
}

/* ---- (e) allocation before main, in threads and at exit (LD_PRELOAD) ------------ */
static void run_ctor_prog(int preload, tu_child_t *c) {
    char preload_var[4200];
    snprintf(preload_var, sizeof preload_var, "LD_PRELOAD=%s", tu_lib_path());
    const char *extra[] = {preload_var};
    char **env = child_env(extra, preload ? 1 : 0);
    char prog[4096];
    snprintf(prog, sizeof prog, "%s", tu_build_path("tests/ctor_prog"));
    cr_assert(access(prog, X_OK) == 0, "%s is not built", prog);
    cr_assert(access(tu_lib_path(), R_OK) == 0, "%s is not built", tu_lib_path());
    char *argv[] = {prog, NULL};
    tu_run_exec(argv, env, 60000, c);
    free(env);
}

Test(process, ctor_prog_allocates_before_main_and_at_exit, .timeout = 120) {
    static tu_child_t c;
    run_ctor_prog(1, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s; stdout: %s", tu_describe(&c), c.out);
    const char *ctor = strstr(c.out, "ctor: ");
    const char *ok = strstr(c.out, "ctor ok\n");
    const char *at_exit = strstr(c.out, "atexit ok\n");
    cr_assert(ctor && ok && at_exit, "unexpected output: %s", c.out);
    cr_assert(ctor < ok && ok < at_exit, "output out of order: %s", c.out);
    cr_assert_eq(c.err_len, 0, "stderr: %s", c.err);
}

/* The same program without the preload must notice that malloc is glibc's:
 * the checks in ctor_prog are able to fail. */
Test(process, ctor_prog_notices_missing_preload, .timeout = 120) {
    static tu_child_t c;
    run_ctor_prog(0, &c);
    cr_assert(c.exited && c.exit_code == 1, "ctor_prog without LD_PRELOAD should fail: %s", tu_describe(&c));
    cr_assert(strstr(c.err, "ctor_prog: FAIL") != NULL, "stderr: %s", c.err);
    cr_assert(strstr(c.out, "ctor ok") == NULL);
}
