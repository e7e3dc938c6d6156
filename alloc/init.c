/* init.c: process start and fork.  Called from above (the API's slow paths
 * and the library constructor); calls every tier's init downwards.
 *
 * The lock order, the one every path follows and fork takes in full:
 *   init → sample → thread-cache registry → CPU caches → transfer shards →
 *   class (span list) locks → page heap → pagemap → metadata
 * A path that holds a lock takes only locks to its right. */
#include "internal.h"
#include "pcache.h"

#include <sys/auxv.h>

volatile int ta_inited;
static ta_lock_t init_lock = TA_LOCK_INIT(TA_RANK_INIT);

void ta_init_slow(void) {
    ta_lock(&init_lock);
    if (!ta_inited) {
        ta_config_init();
        ta_sizeclass_init();
        ta_pageheap_init();
        ta_central_init();
        ta_pcache_init();
        ta_sample_init();
        __atomic_store_n(&ta_inited, 1, __ATOMIC_RELEASE);
    }
    ta_unlock(&init_lock);
}

static void fork_prepare(void) {
    ta_lock(&init_lock);
    ta_sample_lock_all();
    ta_pcache_lock_all();
    ta_central_lock_all();
    ta_pageheap_lock_all();
    ta_meta_lock_all();
}
static void fork_after(bool child) {
    if (child) ta_witness_forget_all();
    ta_meta_unlock_all(child);
    ta_pageheap_unlock_all(child);
    ta_central_unlock_all(child);
    ta_pcache_unlock_all(child);
    ta_sample_unlock_all(child);
    ta_lock_after_fork(&init_lock, child);
}
static void fork_parent(void) { fork_after(false); }
static void fork_child(void) { fork_after(true); }

__attribute__((constructor)) static void ta_constructor(void) {
    ta_ensure_init();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    ta_stats_at_start();
}
