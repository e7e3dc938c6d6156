/* init.c: process start and fork.  Called from above (the API's slow paths
 * and the library constructor); calls every tier's init downwards.
 *
 * The lock order, the one every path follows and fork takes in full:
 *   init → sample → quarantine shards (hardened build) → thread-cache registry →
 *   CPU caches → transfer shards →
 *   class (span list) locks → page heap → pagemap → metadata
 * A path that holds a lock takes only locks to its right. */
#include "internal.h"
#include "pcache.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

volatile int ta_inited;
static ta_lock_t init_lock = TA_LOCK_INIT(TA_RANK_INIT);
static __thread bool initialising; /* this thread is inside ta_init_slow */

/* Allocations made while this very thread initialises (a sanitizer's
 * runtime, or libc, calling malloc from a function init calls) cannot wait
 * for init: they get bump-allocated blocks from a static buffer, with a
 * 16-byte header holding the size; free ignores them, realloc copies them. */
static char boot_buf[256 << 10] __attribute__((aligned(64)));
static size_t boot_used;

void *ta_boot_alloc(size_t n, size_t align) {
    if (align < 16) align = 16;
    for (;;) {
        size_t used = __atomic_load_n(&boot_used, __ATOMIC_RELAXED);
        size_t start = (used + 16 + align - 1) & ~(align - 1);
        if (n > sizeof boot_buf || start + n > sizeof boot_buf) return NULL;
        if (__atomic_compare_exchange_n(&boot_used, &used, start + n, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            *(size_t *)(boot_buf + start - 16) = n;
            return boot_buf + start; /* static storage: already zero */
        }
    }
}

size_t ta_boot_size(const void *p) {
    if ((const char *)p < boot_buf || (const char *)p >= boot_buf + sizeof boot_buf) return 0;
    return *(const size_t *)((const char *)p - 16);
}

bool ta_init_slow(void) {
    if (initialising) return false; /* re-entered from inside init: the caller uses ta_boot_alloc */
    ta_lock(&init_lock);
    initialising = true;
    if (!ta_inited) {
        ta_config_init();
        ta_pageheap_init();
        ta_central_init();
        ta_pcache_init();
#ifdef TA_HARDENED
        ta_quarantine_init();
#endif
        ta_sample_init();
        ta_trace_init();
        __atomic_store_n(&ta_inited, 1, __ATOMIC_RELEASE);
    }
    initialising = false;
    ta_unlock(&init_lock);
    return true;
}

/* ---- the background thread --------------------------------------------------
 * It takes each lock briefly and in the order above (the CPU caches, the
 * transfer shards, the page heap), never holds one while it sleeps or while
 * the page heap's pages are being madvised, so fork_prepare, which takes them
 * all, parks it within one short step.
 *
 * Where it is started matters more than what it does.  pthread_create takes
 * glibc's stack-cache lock, and glibc frees memory while it holds that lock
 * (a joined thread's TLS vector, in __nptl_deallocate_stack): a start from a
 * free path would wait for a lock its own thread holds, with every signal
 * blocked.  So it starts only from a malloc (tier 1's refill, a large block),
 * never from a free, never re-entered (pthread_create's own allocations find
 * ta_bg_state STARTING), with no lock of ours held, and only in a heap of a few
 * MiB (small programs never see it) and, in a child of fork, after a decay
 * period (children that go on to exec never see it).  The start holds init_lock, which fork_prepare
 * takes first: a fork waits until pthread_create has returned, so a child
 * never inherits a half-created thread.  A child of fork has no such thread
 * (fork copies only the caller): fork_child clears the state, the page heap
 * counts the child's heap as new, and a child that lives a decay period
 * starts its own. */
int ta_bg_state;

static void *bg_main(void *arg) {
    (void)arg;
    ta_sys2(SYS_prctl, PR_SET_NAME, "tieralloc-bg");
    __atomic_store_n(&ta_pageheap_bg_active, true, __ATOMIC_RELAXED);
    for (;;) {
        uint64_t ms = ta_cfg.decay_ms / 4;
        if (ms < 1) ms = 1;
        if (ms > 60000) ms = 60000;
        struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
        while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
        }
        ta_solo_pause(); /* the program thread takes locks with atomics meanwhile */
        uint64_t ops = ta_pageheap_ops();
        ta_pcache_decay_tick(); /* idle caches drain (tiers 1 and 2) */
        ta_pageheap_ops_by_decay(ops); /* (what that did to the page heap is not the program's) */
        ta_pageheap_decay(false);
        ta_solo_resume();
    }
    return NULL;
}

/* the thread is due and none started yet (out of line: a heap too small for
 * one asks at every large malloc, and this has a large frame) */
TA_NOINLINE static void bg_create(void) {
    int saved = errno;
    ta_lock(&init_lock);
    if (ta_bg_state != TA_BG_NONE) { /* another thread started it meanwhile */
        ta_unlock(&init_lock);
        return;
    }
    __atomic_store_n(&ta_bg_state, TA_BG_STARTING, __ATOMIC_RELAXED);
    /* the thread takes none of the program's signals; pthread_create may call
     * malloc (the thread's TLS vector): that malloc sees TA_BG_STARTING, and
     * is not sampled (a hook would see a block the program never had) */
    bool muted = ta_sample_mute(true);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t a;
    pthread_t t;
    ta_solo_start(); /* the program's one thread goes on taking locks without atomics */
    int rc = pthread_attr_init(&a);
    if (!rc) {
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&a, 64 << 10);
        rc = pthread_create(&t, &a, bg_main, NULL);
        pthread_attr_destroy(&a);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    ta_sample_mute(muted);
    /* no thread (resource limits): the slow paths go on running the decay */
    __atomic_store_n(&ta_bg_state, rc ? TA_BG_FAILED : TA_BG_RUNNING, __ATOMIC_RELEASE);
    ta_unlock(&init_lock);
    errno = saved;
}

/* ta_background_kick (internal.h) found none started */
void ta_background_start(void) {
    if (ta_pageheap_bg_due()) bg_create(); /* not in a small heap, or a child of fork that may exec */
}

/* No thread may be halfway through an operation under one of our locks when
 * fork copies the process: the child would inherit the lock held by a thread
 * it does not have.  When no other thread can hold one, nothing is done: the
 * process has one thread (glibc's __libc_single_threaded: none, ours
 * included, exists or can start before fork returns), or its one thread
 * besides our background thread holds solo mode (lock.c), taken here as for a
 * lock: until it is let go after fork, the background thread does not start
 * a pass and a thread of the program that needs a lock waits.  Otherwise
 * fork_prepare closes the fork gate and waits, in the lock order, until each
 * lock is free (internal.h): a thread that then takes its first lock lets it
 * go at once and waits for the gate to open after fork, and one in the middle
 * of an operation finishes it (it takes only locks later in the order than
 * those it holds, and fork_prepare has passed none of them).  The calling
 * thread is not inside tieralloc.  fork_prepare writes no lock: after a fork
 * every page written is copied (or at least faulted) in the parent and again
 * in the child, and until stop 41 it took every lock and let them go after
 * fork, which wrote the 20-odd pages they live in on both sides of every fork
 * of a threaded program (tests/bg_prog threadfork). */
int ta_fork_mode; /* (internal.h) */
static void fork_prepare(void) {
    int mode = ta_single_threaded() ? TA_FORK_LONE : ta_solo_enter() ? TA_FORK_SOLO : TA_FORK_LOCKED;
    if (ta_fork_mode != mode) ta_fork_mode = mode; /* (written only when it changes: its page too) */
    if (mode != TA_FORK_LOCKED) return;
    /* (another fork under way: its gate first) */
    for (int g = 0; !__atomic_compare_exchange_n(&ta_fork_gate, &g, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED); g = 0)
        ta_fork_gate_wait();
    ta_lock_drain(&init_lock);
    ta_sample_lock_all(true);
#ifdef TA_HARDENED
    ta_quarantine_lock_all(true);
#endif
    ta_pcache_lock_all(true);
    ta_central_lock_all(true);
    ta_pageheap_lock_all(true);
    ta_trace_lock_all(true);
    ta_meta_lock_all(true);
}
/* The parent holds no lock of ours (fork_prepare let them go): it opens the
 * gate, or lets go of solo mode. */
static void fork_parent(void) {
    if (ta_fork_mode == TA_FORK_SOLO)
        ta_solo_leave();
    else if (ta_fork_mode == TA_FORK_LOCKED && __atomic_exchange_n(&ta_fork_gate, 0, __ATOMIC_RELEASE) == 2)
        ta_sys3(SYS_futex, &ta_fork_gate, FUTEX_WAKE_PRIVATE, INT32_MAX);
}
/* The child has one thread: its locks start afresh (those found held, when
 * other threads could hold them) and so does what the others left. */
static void fork_child(void) {
    if (ta_fork_mode == TA_FORK_LOCKED) /* first: the locks taken below must not wait */
        __atomic_store_n(&ta_fork_gate, 0, __ATOMIC_RELAXED);
    ta_solo_after_fork(true);
    ta_witness_forget_all();
    if (ta_bg_state != TA_BG_NONE) ta_bg_state = TA_BG_NONE; /* started again lazily (the page heap forgets it too) */
    ta_meta_unlock_all(true);
    ta_trace_unlock_all(true);
    ta_pageheap_unlock_all(true);
    ta_central_unlock_all(true);
    ta_pcache_unlock_all(true);
#ifdef TA_HARDENED
    ta_quarantine_unlock_all(true);
#endif
    ta_sample_unlock_all(true);
    ta_lock_after_fork(&init_lock, true);
}

__attribute__((constructor)) static void ta_constructor(void) {
    ta_touch_for_write(&ta_inited); /* read next, written by init: one fault */
    ta_ensure_init();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    ta_stats_at_start();
}
