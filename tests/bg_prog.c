/* bg_prog: programs for tests/test_background.c, with the shared library
 * linked in (the background thread on, its default).  Each prints one line
 * of figures and exits 0 when its own checks hold.
 *
 *   bg_prog join         a heap of 4 MiB with free pages a decay period old
 *                        (when the old start, from a free, became due), then the
 *                        join of a thread that ran on a stack of the caller's
 *                        (pthread_attr_setstack): glibc frees the thread's TLS
 *                        vector while it holds its stack-cache lock.  A
 *                        background thread started from that free would wait
 *                        for that lock forever (the test runs it with a CPU
 *                        cache of 0 bytes so that every free takes the slow
 *                        path).  Prints "joined".
 *   bg_prog forks N      a parent with 2 threads that allocate, free and
 *                        create threads, forks N children one after another;
 *                        each child allocates with 2 threads of its own while
 *                        it forks a grandchild, lives until its background
 *                        thread has started (or 2 s), and exits.  A child or
 *                        grandchild not done within 20 s counts as hung.
 *                        Prints "forks N hung H failed F with_thread T".
 *   bg_prog churn T      T threads swap fresh blocks (the bench's swap sizes,
 *                        up to 2.25 MiB, every byte written) into 4096 shared
 *                        slots: a warm-up of 40 000 swaps, then twice as many
 *                        by the same threads in bursts, one per decay period
 *                        for 12 periods; then every block is freed and the
 *                        process waits, idle, for its resident set to fall.
 *                        Prints "churn warm_faults W busy_faults B busy_swaps S
 *                        rss_busy R rss_idle I" (minor faults; RSS in KiB).
 *   bg_prog lonefork N   a process with one thread of its own (and the
 *                        background thread, unless TIERALLOC_BACKGROUND=0)
 *                        and a heap of every tier (small blocks of many
 *                        classes, large ones) forks N
 *                        children one after another; each checks and frees
 *                        the blocks it inherited, allocates its own, and
 *                        exits.  The parent's minor faults in fork and wait
 *                        are counted (it writes nothing of its own between):
 *                        every page the allocator writes after fork is copied.
 *                        Prints "lonefork N failed F parent_faults P" (P in
 *                        all N forks).
 *   bg_prog threadfork N the same with a second thread of the program that
 *                        allocates and frees blocks of every tier flat out
 *                        meanwhile (fork then waits for its operations under
 *                        way: init.c); the forking thread's own minor faults
 *                        are counted.  Prints "threadfork N failed F
 *                        parent_faults P".
 *   bg_prog samplestart  every allocation sampled (the test sets
 *                        TIERALLOC_SAMPLE_BYTES=1) and seen by a hook; a block
 *                        of 8 MiB makes the heap big enough that the malloc
 *                        starts the background thread, whose creation
 *                        allocates (glibc's TLS vector); the block is freed
 *                        once the thread runs.  Prints "samplestart allocs A
 *                        frees F block_sampled S bg B": S 1 if the 8 MiB
 *                        block was sampled, B 1 if the thread ran. */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "tieralloc.h"

static long minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static uint64_t rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* the bench's swap sizes: 70% < 264 B, 25% < 8 KiB, 4.5% < 264 KiB, 0.5% up to 2.25 MiB */
static size_t swap_size(uint64_t *s) {
    unsigned pick = (unsigned)(rng(s) % 1000);
    uint64_t r = rng(s);
    if (pick < 700) return 1 + r % 263;
    if (pick < 950) return 264 + r % ((8 << 10) - 264);
    if (pick < 995) return (8 << 10) + r % ((264 << 10) - (8 << 10));
    return (264 << 10) + r % ((2u << 20) + (256 << 10) - (264 << 10));
}

/* allocate, write and free `rounds` blocks of mixed sizes (large ones too) */
static void churn_some(uint64_t seed, int rounds) {
    void *b[32] = {0};
    seed |= 1;
    for (int r = 0; r < rounds; r++) {
        int i = (int)(rng(&seed) & 31);
        free(b[i]);
        size_t n = swap_size(&seed);
        if (rng(&seed) % 8 == 0) n += 300 << 10;
        b[i] = malloc(n);
        if (!b[i]) abort();
        memset(b[i], 1, n < 8192 ? n : 8192);
    }
    for (int i = 0; i < 32; i++) free(b[i]);
}

/* ---- join ------------------------------------------------------------------ */
static void *idle_body(void *a) {
    tu_sleep_ms(1300);
    return a;
}

static int run_join(void) {
    char *big = malloc(4 << 20); /* free pages in the heap */
    if (!big) return 1;
    memset(big, 1, 4 << 20);
    free(big);
    size_t sz = 1 << 20;
    void *stack = NULL;
    if (posix_memalign(&stack, 4096, sz)) return 1;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstack(&a, stack, sz);
    pthread_t t;
    if (pthread_create(&t, &a, idle_body, NULL)) return 1;
    /* at about 1.3 s, the heap a decay period old: the join frees the
     * thread's TLS vector under glibc's stack-cache lock */
    pthread_join(t, NULL);
    pthread_attr_destroy(&a);
    free(stack);
    printf("joined\n");
    return 0;
}

/* ---- forks ----------------------------------------------------------------- */
static atomic_int stop;

static void *short_body(void *a) {
    churn_some((uint64_t)(uintptr_t)a, 40);
    return NULL;
}

static void *parent_worker(void *a) {
    uint64_t s = (uint64_t)(uintptr_t)a;
    while (!atomic_load(&stop)) {
        churn_some(s++, 100);
        pthread_t t; /* thread creation racing the forks */
        if (pthread_create(&t, NULL, short_body, (void *)(uintptr_t)s) == 0) pthread_join(t, NULL);
    }
    return NULL;
}

/* exit status of pid, -1 when it is not done within secs */
static int wait_for(pid_t pid, int secs) {
    for (int i = 0; i < secs * 500; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) return 127;
        tu_sleep_ms(2);
    }
    return -1;
}

/* exit 0: done, with a background thread; 5: done, without one */
static void fork_child(int k) {
    pthread_t t[2];
    int made[2];
    churn_some((uint64_t)k * 7919, 60);
    for (int i = 0; i < 2; i++) made[i] = !pthread_create(&t[i], NULL, short_body, (void *)(uintptr_t)(k * 31 + i));
    pid_t g = fork(); /* while the child's threads allocate (and its thread may be starting) */
    if (g == 0) {
        churn_some((uint64_t)k * 104729, 60);
        _exit(0);
    }
    for (int i = 0; i < 2; i++)
        if (made[i]) pthread_join(t[i], NULL);
    int rc = g > 0 ? wait_for(g, 20) : 1;
    if (rc) {
        fprintf(stderr, "bg_prog: grandchild %d of child %d: %s %d\n", (int)g, (int)getpid(),
                rc < 0 ? "hung" : "exit", rc);
        if (rc < 0) kill(g, SIGKILL);
        exit(3);
    }
    /* live until the child's own thread has started (a decay period of a heap
     * with free pages, then a malloc), 2 s at most */
    uint64_t end = tu_now_ms() + 2000;
    int bg;
    while (!(bg = tu_has_bg_thread()) && tu_now_ms() < end) {
        churn_some((uint64_t)k * 13 + tu_now_ms(), 20);
        tu_sleep_ms(5);
    }
    exit(bg ? 0 : 5);
}

/* ---- samplestart ---- */
#define SS_BYTES ((size_t)8 << 20)
static void *ss_seen; /* the event of the program's block (called inside its malloc) */
static int ss_allocs, ss_frees;

static void ss_on_alloc(const struct ta_sample_event *e, void *arg) {
    (void)arg;
    __atomic_add_fetch(&ss_allocs, 1, __ATOMIC_RELAXED);
    if (e->size == SS_BYTES) ss_seen = e->ptr;
}
static void ss_on_free(const struct ta_sample_event *e, void *arg) {
    (void)arg;
    (void)e;
    __atomic_add_fetch(&ss_frees, 1, __ATOMIC_RELAXED);
}

static int run_samplestart(void) {
    if (tu_has_bg_thread()) return 4; /* (too early: nothing to see) */
    struct ta_hooks h = {ss_on_alloc, ss_on_free, NULL};
    ta_hooks_set(&h, NULL);
    char *p = malloc(SS_BYTES);
    if (!p) abort();
    memset(p, 1, SS_BYTES);
    /* (tu_has_bg_thread allocates too, and frees what it allocates) */
    uint64_t end = tu_now_ms() + 2000;
    while (!tu_has_bg_thread() && tu_now_ms() < end) tu_sleep_ms(5);
    int bg = tu_has_bg_thread();
    free(p);
    ta_hooks_set(NULL, NULL);
    printf("samplestart allocs %d frees %d block_sampled %d bg %d\n", ss_allocs, ss_frees, ss_seen == p, bg);
    return 0;
}

static int run_forks(int n) {
    pthread_t w[2];
    for (int i = 0; i < 2; i++) pthread_create(&w[i], NULL, parent_worker, (void *)(uintptr_t)(i * 1000 + 1));
    int hung = 0, failed = 0, with_thread = 0;
    for (int k = 0; k < n && !hung; k++) {
        churn_some((uint64_t)k * 13 + 5, 20);
        pid_t pid = fork();
        if (pid == 0) fork_child(k);
        if (pid < 0) {
            failed++;
            continue;
        }
        int rc = wait_for(pid, 20);
        if (rc < 0) {
            /* left for a debugger for a while, then killed */
            fprintf(stderr, "bg_prog: child %d (fork %d) hung\n", (int)pid, k);
            hung++;
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        } else if (rc == 0) {
            with_thread++;
        } else if (rc != 5) {
            fprintf(stderr, "bg_prog: child %d (fork %d) exit %d\n", (int)pid, k, rc);
            failed++;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(w[i], NULL);
    printf("forks %d hung %d failed %d with_thread %d\n", n, hung, failed, with_thread);
    return hung || failed;
}

/* ---- churn ----------------------------------------------------------------- */
#define CHURN_SLOTS 4096
static char *_Atomic slot[CHURN_SLOTS];
static atomic_long swaps_left;
static int churn_periods;            /* bursts of the phase (1: one run, no pacing) */
static pthread_barrier_t burst_start, burst_end;

static void swap_until_done(uint64_t *s) {
    while (atomic_fetch_sub_explicit(&swaps_left, 1, memory_order_relaxed) > 0) {
        size_t n = swap_size(s);
        char *p = malloc(n);
        if (!p) abort();
        memset(p, (int)n, n);
        char *old = atomic_exchange(&slot[rng(s) & (CHURN_SLOTS - 1)], p);
        free(old);
    }
}

static void *churn_worker(void *a) {
    uint64_t s = (uint64_t)(uintptr_t)a * 0x9e3779b97f4a7c15ull | 1;
    if (churn_periods == 1) {
        swap_until_done(&s);
        return NULL;
    }
    for (int i = 0; i < churn_periods; i++) {
        pthread_barrier_wait(&burst_start);
        swap_until_done(&s);
        pthread_barrier_wait(&burst_end);
    }
    return NULL;
}

/* swaps by `threads` threads; with periods > 1, the same threads do them in
 * that many bursts, one at the start of each period of period_ms (the rest
 * of each period they wait) */
static void churn_phase(int threads, long swaps, int periods, uint64_t period_ms) {
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 << 10);
    churn_periods = periods;
    if (periods == 1) atomic_store(&swaps_left, swaps);
    if (periods > 1) {
        pthread_barrier_init(&burst_start, NULL, (unsigned)threads + 1);
        pthread_barrier_init(&burst_end, NULL, (unsigned)threads + 1);
    }
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], &a, churn_worker, (void *)(uintptr_t)(i + 1))) abort();
    for (int i = 0; periods > 1 && i < periods; i++) {
        uint64_t t0 = tu_now_ms();
        atomic_store(&swaps_left, swaps / periods);
        pthread_barrier_wait(&burst_start);
        pthread_barrier_wait(&burst_end);
        uint64_t took = tu_now_ms() - t0;
        if (took < period_ms) tu_sleep_ms(period_ms - took);
    }
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    if (periods > 1) {
        pthread_barrier_destroy(&burst_start);
        pthread_barrier_destroy(&burst_end);
    }
    pthread_attr_destroy(&a);
    free(t);
}

static int run_churn(int threads) {
    uint64_t s = 4242;
    for (int i = 0; i < CHURN_SLOTS; i++) {
        size_t n = swap_size(&s);
        char *p = malloc(n);
        if (!p) abort();
        memset(p, 1, n);
        slot[i] = p;
    }
    long f0 = minflt();
    churn_phase(threads, 40000, 1, 0); /* warm: the heap reaches its working size */
    long f1 = minflt();
    /* busy: the same threads swap twice as many again in bursts, one in each
     * of 12 decay periods (their own start-up faults count once) */
    uint64_t decay = 1000;
    const char *d = getenv("TIERALLOC_DECAY_MS");
    if (d) decay = strtoull(d, NULL, 10);
    long busy_swaps = 12 * 6667;
    churn_phase(threads, busy_swaps, 12, decay);
    long f2 = minflt();
    size_t rss_busy = (tu_rss_bytes() >> 10);
    for (int i = 0; i < CHURN_SLOTS; i++) free(atomic_exchange(&slot[i], NULL));
    /* idle: up to 20 decay periods (and 2 s at least) for the pages to go back */
    uint64_t wait = 20 * decay < 2000 ? 2000 : 20 * decay;
    size_t rss = (tu_rss_bytes() >> 10);
    for (uint64_t t0 = tu_now_ms(); tu_now_ms() - t0 < wait && rss > rss_busy / 4; rss = (tu_rss_bytes() >> 10)) tu_sleep_ms(50);
    printf("churn warm_faults %ld busy_faults %ld busy_swaps %ld rss_busy %zu rss_idle %zu\n", f1 - f0, f2 - f1,
           busy_swaps, rss_busy, rss);
    return 0;
}

/* ---- fork from a process with one thread of its own ------------------------------ */
#define LONE_BLOCKS 64
/* a heap of every tier: small blocks of many classes, large ones */
static void fork_heap_make(char **b, size_t *len) {
    for (int i = 0; i < LONE_BLOCKS; i++) {
        len[i] = i % 8 == 7 ? ((size_t)300 << 10) + (size_t)i * 4096 : (size_t)16 + (size_t)i * 97;
        b[i] = malloc(len[i]);
        memset(b[i], i, len[i]);
    }
}

/* n forks one after another: each child checks and frees the heap it
 * inherited, allocates its own and exits.  Returns the failures; *faults
 * gets the minor faults that count() saw over every fork and wait. */
static int fork_children(int n, char **b, const size_t *len, long (*count)(void), long *faults) {
    int failed = 0;
    *faults = 0;
    for (int k = 0; k < n; k++) {
        long f0 = count();
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < LONE_BLOCKS; i++) {
                if (b[i][0] != (char)i || b[i][len[i] - 1] != (char)i) _exit(3);
                free(b[i]);
            }
            for (int i = 0; i < LONE_BLOCKS; i++) {
                b[i] = malloc(len[i]);
                memset(b[i], ~i, len[i]);
            }
            for (int i = 0; i < LONE_BLOCKS; i++) free(b[i]);
            _exit(0);
        }
        if (pid < 0) {
            failed++;
            continue;
        }
        int rc = wait_for(pid, 20);
        *faults += count() - f0;
        if (rc != 0) {
            fprintf(stderr, "bg_prog: child %d (fork %d): %d\n", (int)pid, k, rc);
            failed++;
        }
    }
    return failed;
}

static int run_lonefork(int n) {
    char *b[LONE_BLOCKS];
    size_t len[LONE_BLOCKS];
    fork_heap_make(b, len);
    long faults;
    int failed = fork_children(n, b, len, minflt, &faults);
    /* the parent's heap is intact and in use */
    for (int i = 0; i < LONE_BLOCKS; i++) {
        if (b[i][0] != (char)i || b[i][len[i] - 1] != (char)i) failed++;
        free(b[i]);
        b[i] = malloc(len[i]);
        free(b[i]);
    }
    printf("lonefork %d failed %d parent_faults %ld\n", n, failed, faults);
    return failed != 0;
}

/* ---- fork from a process with two threads of its own ----------------------------- */
static atomic_int tf_stop;
static atomic_long tf_rounds;

/* the other thread: small and large blocks through every tier, flat out */
static void *threadfork_worker(void *arg) {
    (void)arg;
    uint64_t s = 99;
    char *v[256] = {0};
    while (!atomic_load(&tf_stop)) {
        int i = (int)(rng(&s) % 256);
        free(v[i]);
        size_t n = rng(&s) % 16 ? 16 + rng(&s) % 2000 : ((size_t)64 << 10) + rng(&s) % ((size_t)256 << 10);
        if (!(v[i] = malloc(n))) abort();
        v[i][0] = v[i][n - 1] = (char)i;
        atomic_fetch_add(&tf_rounds, 1);
    }
    for (int i = 0; i < 256; i++) free(v[i]);
    return NULL;
}

static long thread_minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_minflt;
}

static int run_threadfork(int n) {
    char *b[LONE_BLOCKS];
    size_t len[LONE_BLOCKS];
    fork_heap_make(b, len);
    pthread_t t;
    if (pthread_create(&t, NULL, threadfork_worker, NULL) != 0) return 2;
    while (atomic_load(&tf_rounds) < 1000) tu_sleep_ms(1); /* it has taken locks */
    /* (the other thread's operations under way at fork are not the child's concern) */
    long faults;
    int failed = fork_children(n, b, len, thread_minflt, &faults);
    /* the other thread still runs: the gate opened (it may wait for a CPU a
     * while when other programs run, as under make check) */
    long before = atomic_load(&tf_rounds);
    for (int ms = 0; atomic_load(&tf_rounds) == before; ms++) {
        if (ms == 10000) {
            fprintf(stderr, "bg_prog: the other thread made no progress in 10 s after the last fork\n");
            failed++;
            break;
        }
        tu_sleep_ms(1);
    }
    atomic_store(&tf_stop, 1);
    pthread_join(t, NULL);
    for (int i = 0; i < LONE_BLOCKS; i++) {
        if (b[i][0] != (char)i || b[i][len[i] - 1] != (char)i) {
            fprintf(stderr, "bg_prog: the parent's block %d changed\n", i);
            failed++;
        }
        free(b[i]);
    }
    printf("threadfork %d failed %d parent_faults %ld\n", n, failed, faults);
    return failed != 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "join") == 0) return run_join();
    if (argc >= 3 && strcmp(argv[1], "forks") == 0) return run_forks(atoi(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "churn") == 0) return run_churn(atoi(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "lonefork") == 0) return run_lonefork(atoi(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "threadfork") == 0) return run_threadfork(atoi(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "samplestart") == 0) return run_samplestart();
    fprintf(stderr, "usage: bg_prog join | forks N | churn THREADS | lonefork N | threadfork N\n");
    return 2;
}
