/* prof_prog: a program with known allocation sites, run by test_profile under
 * tieralloc-run (LD_PRELOAD).  Built with -O0 -fno-omit-frame-pointer so that
 * every function keeps its frame and heap-profile stacks name it.  It does not
 * link libtieralloc: the ta_* calls are looked up with dlsym when preloaded.
 *
 *   prof_prog sites            big_allocator: 64 MiB in 64 KiB blocks,
 *                              small_allocator: 1 MiB in 64-byte blocks; all
 *                              kept live until exit (TIERALLOC_PROFILE)
 *   prof_prog dump LIVE FREED  the same, ta_profile_dump(LIVE); free them all;
 *                              ta_profile_dump(FREED)
 *   prof_prog stats            allocate and free 64 MiB in 64 KiB blocks, then
 *                              print "rate=R samples=S live=L"
 *   prof_prog exit N           allocate a little, exit with status N
 *
 * Exit status: 0, or 3 if a ta_* symbol is missing, 4 if a dump fails, 2 for
 * bad arguments. */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tieralloc.h"

#define BIG_BLOCK (64 << 10)
#define BIG_COUNT 1024 /* 64 MiB */
#define SMALL_BLOCK 64
#define SMALL_COUNT 16384 /* 1 MiB */

static void *big[BIG_COUNT];
static void *small[SMALL_COUNT];

void big_allocator(void) {
    for (int i = 0; i < BIG_COUNT; i++) {
        big[i] = malloc(BIG_BLOCK);
        memset(big[i], 0x11, 64);
    }
}

void small_allocator(void) {
    for (int i = 0; i < SMALL_COUNT; i++) {
        small[i] = malloc(SMALL_BLOCK);
        memset(small[i], 0x22, SMALL_BLOCK);
    }
}

static void free_all(void) {
    for (int i = 0; i < BIG_COUNT; i++) free(big[i]);
    for (int i = 0; i < SMALL_COUNT; i++) free(small[i]);
}

static void *need(const char *name) {
    void *f = dlsym(RTLD_DEFAULT, name);
    if (!f) {
        fprintf(stderr, "prof_prog: %s not found (is libtieralloc preloaded?)\n", name);
        exit(3);
    }
    return f;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "sites") == 0) {
        big_allocator();
        small_allocator();
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "dump") == 0) {
        int (*dump)(const char *) = (int (*)(const char *))need("ta_profile_dump");
        big_allocator();
        small_allocator();
        if (dump(argv[2]) != 0) return 4;
        free_all();
        if (dump(argv[3]) != 0) return 4;
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "stats") == 0) {
        int (*get)(struct ta_stats *) = (int (*)(struct ta_stats *))need("ta_stats_get");
        big_allocator();
        for (int i = 0; i < BIG_COUNT; i++) free(big[i]);
        struct ta_stats st = TA_STATS_INIT;
        if (get(&st) != 0) return 3;
        printf("rate=%llu samples=%llu live=%llu\n", (unsigned long long)st.sample_rate,
               (unsigned long long)st.samples_total, (unsigned long long)st.sampled_live_blocks);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "exit") == 0) {
        small_allocator();
        return atoi(argv[2]);
    }
    fprintf(stderr, "usage: prof_prog sites | dump LIVE FREED | stats | exit N\n");
    return 2;
}
