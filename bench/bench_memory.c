/* bench/bench_memory.c: the fragmentation workload.
 *
 * One run: allocate many small blocks, free three in four of them (every page
 * of small blocks stays partly used), allocate larger blocks that cannot fit
 * in the holes, then free everything and call malloc_trim(0).  Counters, in
 * bytes (the console prints them with Ki/Mi prefixes):
 *   rss_start       resident set before the run
 *   peak_rss        highest resident set during the run (VmHWM, reset at the
 *                   start when the kernel allows)
 *   live_peak       the most bytes the program itself had live (for scale)
 *   rss_after_free  resident set once every block is freed
 *   rss_after_trim  resident set after malloc_trim(0)
 *   trim_vs_start   rss_after_trim / rss_start (1.0 = all given back)
 * Under jemalloc, tcmalloc or mimalloc, malloc_trim is glibc's and trims only
 * glibc's own (empty) heap: that is part of what is measured. */
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "workloads.h"

#define SMALL 100000
#define KEEP_EVERY 4
#define LARGER 25000

static char *small[SMALL];
static char *larger[LARGER];

static void bm_memory(tb_state *st, void *arg)
{
    (void)arg;
    size_t rss_start = 0, peak = 0, after_free = 0, after_trim = 0, live_peak = 0;
    int reset_ok = 0;
    int64_t ops = 0;
    while (tb_keep_running(st)) {
        tb_pause_timing(st);
        /* the pointer arrays are resident before the start is measured, so
         * that the RSS after the run compares the allocator's memory only */
        memset(small, 0, sizeof small);
        memset(larger, 0, sizeof larger);
        malloc_trim(0);
        rss_start = bench_rss();
        reset_ok = bench_reset_peak_rss() == 0;
        tb_resume_timing(st);

        bench_rng r = { 2024 };
        size_t live = 0;
        for (size_t i = 0; i < SMALL; i++) {
            size_t n = bench_rand_range(&r, 16, 512);
            if (!(small[i] = malloc(n))) {
                tb_skip_with_error(st, "malloc returned NULL");
                return;
            }
            memset(small[i], (int)i, n);
            live += n;
        }
        live_peak = live;
        for (size_t i = 0; i < SMALL; i++)
            if (i % KEEP_EVERY != 0) {
                free(small[i]);
                small[i] = NULL;
            }
        for (size_t i = 0; i < LARGER; i++) {
            size_t n = bench_rand_range(&r, 1024, 4096);
            if (!(larger[i] = malloc(n))) {
                tb_skip_with_error(st, "malloc returned NULL");
                return;
            }
            memset(larger[i], (int)i, n);
        }
        live = 0;
        for (size_t i = 0; i < SMALL; i += KEEP_EVERY)
            live += malloc_usable_size(small[i]);
        for (size_t i = 0; i < LARGER; i++)
            live += malloc_usable_size(larger[i]);
        if (live > live_peak)
            live_peak = live;
        for (size_t i = 0; i < SMALL; i += KEEP_EVERY) {
            free(small[i]);
            small[i] = NULL;
        }
        for (size_t i = 0; i < LARGER; i++)
            free(larger[i]);
        ops += SMALL + LARGER;

        tb_pause_timing(st);
        peak = bench_peak_rss();
        after_free = bench_rss();
        malloc_trim(0);
        after_trim = bench_rss();
        tb_resume_timing(st);
    }
    tb_set_items_processed(st, ops);
    unsigned f = TB_COUNTER_BASE_1024;
    tb_counter_set(st, "rss_start", (double)rss_start, f);
    tb_counter_set(st, "peak_rss", (double)peak, f);
    tb_counter_set(st, "live_peak", (double)live_peak, f);
    tb_counter_set(st, "rss_after_free", (double)after_free, f);
    tb_counter_set(st, "rss_after_trim", (double)after_trim, f);
    tb_counter_set(st, "trim_vs_start", rss_start ? (double)after_trim / (double)rss_start : 0, 0);
    if (!reset_ok)
        tb_set_label(st, "peak_rss is the process's (VmHWM could not be reset)");
}

void bench_register_memory(void)
{
    /* a fixed single iteration: the counters describe one run from a known start */
    tb_bench_unit(tb_bench_iterations(tb_register("memory", bm_memory, NULL), 1), TB_MS);
}
