/* lock.c: the slow half of ta_lock (internal.h).  A waiter spins for a while,
 * since the allocator's locks are held for short stretches and the holder is
 * usually running on the other core, and only then sleeps on a futex. */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

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
     * FUTEX_WAIT that finds the word changed fails with EAGAIN: the caller's
     * errno is kept (free and friends must not change it). */
    int saved = errno;
    while (__atomic_exchange_n(&l->state, 2, __ATOMIC_ACQUIRE) != 0)
        syscall(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
    errno = saved;
}

void ta_lock_wake(ta_lock_t *l) {
    int saved = errno;
    syscall(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    errno = saved;
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
