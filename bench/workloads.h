/* bench/workloads.h: what the benchmark files share.
 *
 * Every workload allocates through the plain malloc/free/realloc names, so the
 * one binary measures whichever allocator is preloaded.  The bookkeeping
 * (arrays of pointers, sizes, permutations) is static, so the allocator under
 * test sees only the workload's own requests. */
#ifndef TIERALLOC_BENCH_WORKLOADS_H
#define TIERALLOC_BENCH_WORKLOADS_H

#include <stddef.h>
#include <stdint.h>

#include "shim.h"

#define BENCH_PAGE 4096
#define BENCH_MAX_THREADS 16

/* ---- deterministic pseudo-random numbers (splitmix64) -------------------- */
typedef struct { uint64_t s; } bench_rng;
static inline uint64_t bench_rand(bench_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* uniform in [lo, hi] */
static inline size_t bench_rand_range(bench_rng *r, size_t lo, size_t hi)
{
    return lo + (size_t)(bench_rand(r) % (hi - lo + 1));
}

/* A mix of sizes like a program's: mostly small, some medium, a few larger
 * (75% 16..256 B, 20% 257..2048 B, 5% 2049..16384 B). */
size_t bench_mixed_size(bench_rng *r);
int bench_small_process(void); /* bench_single.c: the program spawn_small starts */
/* `tieralloc-bench --cpu-roundtrip`: print the round-trip time of a cache line
 * between the first two CPUs this process may use (util.c). */
int bench_cpu_roundtrip(void);
/* p[0..n) = a random permutation of 0..n-1 */
void bench_permutation(uint32_t *p, size_t n, bench_rng *r);

/* Write one byte in every page of [p, p+n) (and the last byte), so that the
 * memory is really committed. */
void bench_touch(void *p, size_t from, size_t n);

/* ---- memory of the process ----------------------------------------------- */
/* VmRSS / VmHWM of this process in bytes (0 if /proc is unreadable). */
size_t bench_rss(void);
size_t bench_peak_rss(void);
/* Reset VmHWM to the current RSS (Linux >= 4.0); 0 on success. */
int bench_reset_peak_rss(void);

/* This thread's index among the benchmark's threads, for per-thread arrays
 * of BENCH_MAX_THREADS entries; -1 (the benchmark is skipped with an error)
 * if there are more threads than that. */
int bench_thread_slot(tb_state *st);

/* Spin politely: a pause, and after a while a yield (the machine may have
 * fewer cores than the benchmark has threads). */
void bench_backoff(unsigned *spins);

/* ---- which library answers malloc in this process ------------------------ */
const char *bench_malloc_origin(void);

/* ---- registration, one function per file ---------------------------------- */
void bench_register_single(void);   /* bench_single.c */
void bench_register_threads(void);  /* bench_threads.c */
void bench_register_memory(void);   /* bench_memory.c */
void bench_register_shapes(void);   /* bench_shapes.c */
void bench_register_arena(void);    /* arena_bench.c: only when tieralloc is preloaded */

#endif
