/* test_lock.c: the allocator's locks (lock.c, internal.h) in solo mode: while
 * the program has one thread besides tieralloc's background thread, that
 * thread takes locks with plain stores; the background thread's windows
 * (ta_solo_pause/resume) still exclude it; any other thread that takes a lock
 * ends solo mode for good.  Mutual exclusion is checked by a counter that
 * only the lock protects (a lost update shows a broken exclusion). */
#include "testutil.h"

#include <criterion/criterion.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

static ta_lock_t lk = TA_LOCK_INIT(TA_RANK_PAGEHEAP);
static volatile uint64_t counter; /* protected by lk only */
static volatile int stop;

/* a read-modify-write slow enough that two holders would interleave */
static void bump(void) {
    uint64_t v = counter;
    for (volatile int i = 0; i < 20; i++) {
    }
    counter = v + 1;
}

#define WINDOWS 2000
static void *window_thread(void *arg) {
    (void)arg;
    for (int i = 0; i < WINDOWS; i++) {
        ta_solo_pause(); /* what the background thread does around a pass */
        ta_lock(&lk);
        bump();
        ta_unlock(&lk);
        ta_solo_resume();
    }
    stop = 1;
    return NULL;
}

static void *program_thread(void *arg) {
    (void)arg;
    ta_lock(&lk); /* no window: a second program thread */
    bump();
    ta_unlock(&lk);
    return NULL;
}

/* The cases run in a forked child: its one thread is the program's only one.
 * A failed check prints a line and exits 1; 77 means "cannot run here". */
#define CHECK(c, ...)                                  \
    do {                                               \
        if (!(c)) {                                    \
            fprintf(stderr, "check failed: %s: ", #c); \
            fprintf(stderr, __VA_ARGS__);              \
            fputc('\n', stderr);                       \
            _exit(1);                                  \
        }                                              \
    } while (0)
#define CANNOT_RUN 77

static void in_child(void (*fn)(void *)) {
    static tu_child_t c;
    tu_run_child(fn, NULL, 60000, &c);
    cr_assert(!c.timed_out, "timed out: %s", tu_describe(&c));
    if (c.exited && c.exit_code == CANNOT_RUN) cr_skip_test("%s", c.err);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
}

static void solo_and_windows(void *arg) {
    (void)arg;
    ta_ensure_init();
    ta_cfg.background = false; /* this test plays the background thread */
    if (!ta_solo_start()) { /* (the child of fork is the only thread) */
        fprintf(stderr, "membarrier(PRIVATE_EXPEDITED) refused");
        _exit(CANNOT_RUN);
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, window_thread, NULL) == 0, "pthread_create");
    uint64_t mine = 0, plain = 0, told = 0;
    while (!stop || mine < 1000) {
        if (mine & 1) { /* every other time as the page heap's large paths do it */
            int how = ta_lock_how(&lk);
            CHECK((how == TA_HELD_SOLO) == (ta_solo_held > 0), "taken as %d with %d held", how, ta_solo_held);
            told += how == TA_HELD_SOLO;
            bump();
            ta_unlock_how(&lk, how);
        } else {
            ta_lock(&lk);
            if (ta_solo_held) plain++; /* taken in solo mode */
            bump();
            ta_unlock(&lk);
        }
        mine++;
    }
    pthread_join(t, NULL);
    /* no window open any more: the locks are plain ones again */
    for (int i = 0; i < 100; i++, mine++) {
        ta_lock(&lk);
        if (ta_solo_held) plain++;
        bump();
        ta_unlock(&lk);
        int how = ta_lock_how(&lk);
        told += how == TA_HELD_SOLO;
        bump();
        ta_unlock_how(&lk, how);
        mine++;
    }
    CHECK(counter == mine + WINDOWS, "lost updates: %lu of %lu", (unsigned long)(mine + WINDOWS - counter),
          (unsigned long)(mine + WINDOWS));
    CHECK(ta_solo_held == 0, "%d", ta_solo_held);
    CHECK(ta_solo_suspend == 0, "a window left solo mode suspended");
    CHECK(ta_solo_mode, "a window ended solo mode");
    CHECK(plain > 0, "the solo thread never took the lock with plain stores");
    CHECK(told > 0, "ta_lock_how never said it took the lock in solo mode");

    /* another thread of the program ends it for good */
    CHECK(pthread_create(&t, NULL, program_thread, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(!ta_solo_mode, "solo mode went on with two program threads");
    ta_lock(&lk);
    CHECK(ta_solo_held == 0, "a lock taken with plain stores after solo mode ended");
    bump();
    ta_unlock(&lk);
    int how = ta_lock_how(&lk);
    CHECK(how == TA_HELD_ATOMIC, "taken as %d with two program threads", how);
    bump();
    ta_unlock_how(&lk, how);
    CHECK(lk.state == 0, "still held");
    CHECK(counter == mine + WINDOWS + 3, "lost update");
}

Test(lock, solo_thread_takes_locks_without_atomics_and_windows_exclude_it) { in_child(solo_and_windows); }

/* The background thread leaves the program thread in solo mode: it starts
 * with a heap of a few MiB, and its passes are windows. */
static void background_keeps_solo(void *arg) {
    (void)arg;
    ta_ensure_init();
    if (!ta_cfg.background || !ta_solo_mode || !ta_solo_me) {
        fprintf(stderr, "TIERALLOC_BACKGROUND=0, or no solo mode in the child of fork");
        _exit(CANNOT_RUN);
    }
    ta_cfg.decay_ms = 4; /* a pass every millisecond */
    void *keep = malloc(8 << 20); /* the heap is big enough: the next large malloc starts the thread */
    for (int i = 0; i < 64; i++) free(malloc(1 << 20));
    for (int i = 0; i < 200 && !tu_has_bg_thread(); i++) free(malloc(1 << 20)), usleep(5000);
    CHECK(tu_has_bg_thread(), "no background thread started");
    for (int i = 0; i < 20 && ta_solo_mode; i++) { /* passes run meanwhile */
        for (int j = 0; j < 10000; j++) free(malloc(1 << 20));
        usleep(2000);
    }
    CHECK(ta_solo_mode, "the background thread ended solo mode");
    CHECK(ta_solo_me, "the program thread is not the solo one");
    free(keep);
}

Test(lock, background_thread_keeps_solo_mode) { in_child(background_keeps_solo); }
