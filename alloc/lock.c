/* lock.c: the slow half of ta_lock (internal.h).  A waiter spins for a while,
 * since the allocator's locks are held for short stretches and the holder is
 * usually running on the other core, and only then sleeps on a futex. */
#include "internal.h"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ volatile("" ::: "memory")
#endif

#define SPINS 200 /* ~ a few microseconds of pause: longer than any hold */

void ta_lock_wait(ta_lock_t *l) {
    for (int i = 0; i < SPINS; i++) {
        cpu_relax();
        int z = 0;
        if (__atomic_load_n(&l->state, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&l->state, &z, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
    }
    /* sleep: mark the lock contended, so the holder's unlock wakes us.  A
     * FUTEX_WAIT that finds the word changed fails with EAGAIN, which never
     * reaches errno (ta_sys: free and friends must not change it). */
    while (__atomic_exchange_n(&l->state, 2, __ATOMIC_ACQUIRE) != 0)
        ta_sys4(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL);
}

void ta_lock_wake(ta_lock_t *l) { ta_sys3(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1); }

/* ---- the fork gate (internal.h) ---------------------------------------------
 * A line of its own: every lock taken with an atomic reads it, and fork
 * writes it twice. */
struct ta_gate_line ta_fork_gate_line;
__thread int ta_lock_depth __attribute__((tls_model("initial-exec")));

void ta_lock_drain(ta_lock_t *l) {
    for (unsigned i = 0; __atomic_load_n(&l->state, __ATOMIC_SEQ_CST); i++) {
        if (i < SPINS) cpu_relax();
        else ta_sys0(SYS_sched_yield); /* the holder may have been preempted */
    }
}

/* Wait until the fork under way has returned in the parent (init.c opens the
 * gate and wakes every waiter). */
void ta_fork_gate_wait(void) {
    for (int i = 0; i < SPINS; i++) {
        cpu_relax();
        if (!__atomic_load_n(&ta_fork_gate, __ATOMIC_ACQUIRE)) return;
    }
    for (;;) {
        int g = __atomic_load_n(&ta_fork_gate, __ATOMIC_ACQUIRE);
        if (!g) return;
        /* closed: 1 -> 2 first, so that the opener knows to wake */
        if (g == 1 && !__atomic_compare_exchange_n(&ta_fork_gate, &g, 2, false, __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE))
            continue;
        ta_sys4(SYS_futex, &ta_fork_gate, FUTEX_WAIT_PRIVATE, 2, NULL);
    }
}

#ifdef TA_DEBUG
/* The lock-rank witness: the locks a thread holds.  A lock taken while one of
 * higher rank (or of the same rank at a higher address) is held could deadlock
 * against a thread that follows the order: abort, naming both.  Past
 * WITNESS_MAX locks (fork and snapshots take whole arrays of one rank, in
 * address order) the rest are only counted. */
#define WITNESS_MAX 64
static __thread const ta_lock_t *held[WITNESS_MAX];
static __thread int nheld, nuntracked;

void ta_witness_acquire(const ta_lock_t *l, bool try_only) {
    if (!l->rank) ta_fatal("lock %p has no rank", (const void *)l);
    for (int i = 0; !try_only && i < nheld; i++) {
        const ta_lock_t *h = held[i];
        if (h->rank > l->rank || (h->rank == l->rank && h >= l))
            ta_fatal("lock order violated: lock %p (rank %d) taken while holding %p (rank %d)", (const void *)l,
                     l->rank, (const void *)h, h->rank);
    }
    if (nheld == WITNESS_MAX) nuntracked++;
    else held[nheld++] = l;
}

void ta_witness_release(const ta_lock_t *l) {
    for (int i = nheld - 1; i >= 0; i--)
        if (held[i] == l) {
            for (int j = i; j < nheld - 1; j++) held[j] = held[j + 1];
            nheld--;
            return;
        }
    if (nuntracked) nuntracked--;
    else ta_fatal("lock %p released but not held by this thread", (const void *)l);
}

void ta_witness_forget_all(void) { nheld = nuntracked = 0; }
#endif

/* ---- solo mode (internal.h) -------------------------------------------------
 * The solo thread:   held = h + 1; (compiler fence) load suspend
 * Any other thread:  suspend += 1; membarrier(); load held, wait for 0
 * membarrier makes every running thread of the process pass a full memory
 * barrier before it returns: either the solo thread's load comes after that
 * barrier and sees the raised suspend (and uses atomics), or its store of
 * held came before it and the other thread sees it and waits.  So while
 * held > 0 no other thread takes or waits for a lock, and while suspend > 0
 * the solo thread takes no new lock with plain stores. */
int ta_solo_mode;
int ta_solo_suspend;
int ta_solo_held;
__thread bool ta_solo_me __attribute__((tls_model("initial-exec")));
__thread int ta_solo_window __attribute__((tls_model("initial-exec")));
static __thread bool window_raised; /* this thread's window raised ta_solo_suspend */
static int solo_ended;              /* someone raised ta_solo_suspend for good */

static bool barrier_all(void) { return ta_sys3(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0; }

/* wait until *word is 0 (a thread that was preempted may take a while) */
static void wait_zero(const int *word) {
    for (unsigned i = 0; __atomic_load_n(word, __ATOMIC_ACQUIRE); i++) {
        if (i < SPINS) cpu_relax();
        else ta_sys0(SYS_sched_yield);
    }
}

bool ta_solo_start(void) {
    if (!ta_single_threaded() && !(ta_solo_mode && ta_solo_me)) {
        __atomic_store_n(&ta_solo_mode, 0, __ATOMIC_RELAXED);
        return false;
    }
    /* the one thread: nobody reads these concurrently */
    if (ta_sys3(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) return false;
    ta_solo_held = 0;
    ta_solo_suspend = 0;
    solo_ended = 0;
    ta_solo_me = true;
    __atomic_store_n(&ta_solo_mode, 1, __ATOMIC_RELEASE);
    return true;
}

/* A thread other than the solo one takes a lock outside a window: a program
 * thread (solo mode ends) or a lock taken where no window was expected. */
void ta_solo_end_for_good(void) {
    if (!__atomic_exchange_n(&solo_ended, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&ta_solo_suspend, 1, __ATOMIC_SEQ_CST);
        if (!barrier_all()) ta_fatal("membarrier failed for solo mode at %p", (void *)&ta_solo_mode);
        wait_zero(&ta_solo_held);
        __atomic_store_n(&ta_solo_mode, 0, __ATOMIC_RELEASE);
    }
    wait_zero(&ta_solo_mode); /* the thread that ended it waits for the solo thread */
}

void ta_solo_pause(void) {
    if (ta_solo_window++ || !__atomic_load_n(&ta_solo_mode, __ATOMIC_ACQUIRE)) return;
    __atomic_add_fetch(&ta_solo_suspend, 1, __ATOMIC_SEQ_CST);
    window_raised = true;
    if (!barrier_all()) ta_fatal("membarrier failed for solo mode at %p", (void *)&ta_solo_mode);
    wait_zero(&ta_solo_held);
}

void ta_solo_resume(void) {
    if (--ta_solo_window || !window_raised) return;
    window_raised = false;
    __atomic_sub_fetch(&ta_solo_suspend, 1, __ATOMIC_RELEASE);
}

/* The child of fork has one thread, the caller (glibc does not say so: its
 * __libc_single_threaded stays false in a child of a threaded parent): it
 * becomes the solo thread; the locks it held are started afresh. */
void ta_solo_after_fork(bool child) {
    if (!child) return;
    /* The child of a parent with one thread and solo mode off: nothing to
     * start afresh (no lock was held, no window open) and no registration
     * needed until ta_solo_start; writing nothing spares the page copies and
     * the membarrier call in every child (a shell forks one per command). */
    if (ta_fork_mode == TA_FORK_LONE && !__atomic_load_n(&ta_solo_mode, __ATOMIC_RELAXED)) return;
    ta_solo_held = 0;
    ta_solo_suspend = 0;
    solo_ended = 0;
    ta_solo_window = 0;
    window_raised = false;
    /* (the registration belongs to the address space: the child's is new) */
    ta_solo_me = ta_sys3(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    ta_solo_mode = ta_solo_me;
}
