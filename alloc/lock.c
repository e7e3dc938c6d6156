/* lock.c: the slow half of ta_lock (internal.h).  A waiter spins for a while,
 * since the allocator's locks are held for short stretches and the holder is
 * usually running on the other core, and only then sleeps on a futex. */
#include "internal.h"

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
        if (__atomic_load_n(&l->state, __ATOMIC_RELAXED) == 0 && ta_trylock(l)) return;
    }
    /* sleep: mark the lock contended, so the holder's unlock wakes us */
    while (__atomic_exchange_n(&l->state, 2, __ATOMIC_ACQUIRE) != 0)
        syscall(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void ta_lock_wake(ta_lock_t *l) { syscall(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }
