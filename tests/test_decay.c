/* test_decay.c: the decay policy and its background thread, as a program sees
 * them (the shared library, default options: decay 1 s, background thread on).
 *
 *  - A program whose demand alternates between a large and a small heap, with
 *    the small phase longer than the decay period, keeps the large heap's
 *    pages resident: writing the large heap again takes (almost) no page
 *    faults (getrusage's minor faults).
 *  - An idle process returns its free pages: after a large heap is freed and
 *    the process stops calling the allocator, its RSS (/proc/self/statm)
 *    falls, without malloc_trim; the background thread does it.
 *  - Across fork: the child of a process whose background thread runs
 *    allocates, frees, trims, starts its own thread and exits cleanly; the
 *    parent goes on as before.
 *
 * The checks are on memory and faults, never on how long anything took; the
 * polling loops only bound how long a broken build makes the test wait. */
#include "testutil.h"

#include <malloc.h>
#include <pthread.h>

#define BIG_BLOCKS 48
#define BIG_SIZE ((size_t)512 << 10) /* large blocks: straight from the page heap */
#define PAGE 4096

static long minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void write_all(char **b, int n, size_t size, int v) {
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < size; j += PAGE) b[i][j] = (char)(v + i);
}

/* The small phase: a few MiB in use, and page-heap activity (a large block
 * allocated and freed every 20 ms) so that the heap is not idle, for `ms`. */
static void small_phase(unsigned ms) {
    char *keep[8];
    for (int i = 0; i < 8; i++) {
        keep[i] = malloc(BIG_SIZE);
        cr_assert_not_null(keep[i]);
        memset(keep[i], 1, BIG_SIZE);
    }
    uint64_t end = tu_now_ms() + ms;
    while (tu_now_ms() < end) {
        char *p = tu_hide(malloc(300 << 10));
        cr_assert_not_null(p);
        p[0] = 1;
        free(p);
        tu_sleep_ms(20);
    }
    for (int i = 0; i < 8; i++) free(keep[i]);
}

Test(decay, alternating_demand_keeps_the_larger_heap_resident, .timeout = 120) {
    static char *big[BIG_BLOCKS];
    long faults[3];
    for (int cycle = 0; cycle < 3; cycle++) {
        long before = minflt();
        for (int i = 0; i < BIG_BLOCKS; i++) {
            big[i] = malloc(BIG_SIZE);
            cr_assert_not_null(big[i]);
        }
        write_all(big, BIG_BLOCKS, BIG_SIZE, cycle);
        faults[cycle] = minflt() - before;
        for (int i = 0; i < BIG_BLOCKS; i++) free(big[i]);
        /* longer than the decay period (1 s): the old policy released the
         * large heap's pages here */
        small_phase(1500);
    }
    long pages = (long)(BIG_BLOCKS * BIG_SIZE / PAGE);
    /* the first cycle faults the heap in (the measure is not vacuous) */
    cr_assert_geq(faults[0], pages / 2, "first cycle: %ld faults for %ld pages", faults[0], pages);
    /* later cycles find it resident */
    for (int c = 1; c < 3; c++)
        cr_assert_lt(faults[c], pages / 10, "cycle %d faulted %ld of %ld pages back in (first: %ld)", c, faults[c],
                     pages, faults[0]);
}

/* Free a large heap, then let the process go idle: the background thread
 * gives the pages back. */
static void idle_returns(void) {
    static char *big[BIG_BLOCKS * 2];
    size_t rss0 = tu_rss_bytes();
    for (int i = 0; i < BIG_BLOCKS * 2; i++) {
        big[i] = malloc(BIG_SIZE);
        cr_assert_not_null(big[i]);
    }
    write_all(big, BIG_BLOCKS * 2, BIG_SIZE, 3);
    tu_sleep_ms(1100); /* a process that has run a while (the thread starts in heaps a decay period old) */
    size_t total = (size_t)BIG_BLOCKS * 2 * BIG_SIZE, rss1 = tu_rss_bytes();
    cr_assert_geq(rss1, rss0 + total / 2, "RSS %zu → %zu after writing %zu bytes", rss0, rss1, total);
    for (int i = 0; i < BIG_BLOCKS * 2; i++) free(big[i]);
    size_t rss2 = tu_rss_bytes();
    /* not given back at once (that would be the fighting policy) */
    cr_assert_geq(rss2, rss0 + total / 2, "RSS %zu right after the frees (was %zu)", rss2, rss1);
    size_t rss = rss2;
    for (int i = 0; i < 200 && rss >= rss0 + total / 4; i++) { /* ~2 s expected; 20 s at most */
        tu_sleep_ms(100);
        rss = tu_rss_bytes();
    }
    cr_assert_lt(rss, rss0 + total / 4, "idle: RSS still %zu (%zu before the heap, %zu with it)", rss, rss0, rss1);
    cr_assert(tu_has_bg_thread(), "no tieralloc-bg thread");
}

Test(decay, idle_process_returns_its_pages, .timeout = 60) { idle_returns(); }

/* the thread runs in the parent; the child of fork (which has none: fork
 * copies only the caller) allocates, frees, trims, starts its own thread once
 * it has lived a decay period, forks again and exits cleanly */
static void child_work(void *arg) {
    (void)arg;
    static char *b[64];
    for (int r = 0; r < 4; r++) {
        for (int i = 0; i < 64; i++) {
            b[i] = malloc((size_t)(i + 1) * 37 + (i % 8 ? 0 : BIG_SIZE));
            TU_CHILD_CHECK(b[i] != NULL, "malloc failed");
            memset(b[i], i, (size_t)(i + 1) * 37);
        }
        for (int i = 0; i < 64; i++) free(b[i]);
    }
    malloc_trim(0); /* releases at once */
    /* a child that lives a decay period starts its own thread at its next
     * malloc (one that would exec right away never does) */
    TU_CHILD_CHECK(!tu_has_bg_thread(), "a background thread in the child at once");
    tu_sleep_ms(1100);
    char *p = malloc(4 << 20);
    TU_CHILD_CHECK(p != NULL, "malloc failed");
    memset(p, 1, 4 << 20);
    free(p);
    for (int i = 0; i < 100 && !tu_has_bg_thread(); i++) tu_sleep_ms(20);
    TU_CHILD_CHECK(tu_has_bg_thread(), "the child never started a background thread");
    /* and forks again while it runs */
    pid_t pid = fork();
    TU_CHILD_CHECK(pid >= 0, "fork");
    if (pid == 0) {
        char *q = malloc(1 << 20);
        if (!q) _exit(3);
        memset(q, 2, 1 << 20);
        free(q);
        malloc_trim(0);
        _exit(0);
    }
    int st = 0;
    TU_CHILD_CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "grandchild: %#x", st);
    exit(0);
}

Test(decay, background_thread_across_fork, .timeout = 120) {
    char *p = malloc(8 << 20); /* a heap of a few MiB: the thread starts */
    cr_assert_not_null(p);
    memset(p, 1, 8 << 20);
    free(p);
    for (int i = 0; i < 100 && !tu_has_bg_thread(); i++) tu_sleep_ms(20);
    cr_assert(tu_has_bg_thread(), "no background thread after a large malloc");
    /* fork while the thread may be mid-pass, many times */
    for (int i = 0; i < 8; i++) {
        static tu_child_t c;
        tu_run_child(child_work, NULL, 60000, &c);
        cr_assert(!c.timed_out && !c.signaled && c.exit_code == 0, "child %d: %s", i, tu_describe(&c));
        char *q = malloc(BIG_SIZE * 4);
        cr_assert_not_null(q);
        memset(q, 3, BIG_SIZE * 4);
        free(q);
    }
    /* malloc_trim still gives everything back at once */
    cr_assert_eq(malloc_trim(0), 1);
}
