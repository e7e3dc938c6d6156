/* bench/shim.h: google-benchmark for C.
 *
 * bench/shim.cc wraps the C++ library so that benchmarks can be written in
 * plain C: a C function is registered under a name, configured with arguments
 * and thread counts, and called by google-benchmark with an opaque state.
 *
 *   static void bm_pairs(tb_state *st, void *arg)
 *   {
 *       size_t n = (size_t)tb_range(st, 0);
 *       while (tb_keep_running(st)) {
 *           void *p = malloc(n);
 *           tb_do_not_optimize(p);
 *           free(p);
 *       }
 *       tb_set_items_processed(st, tb_iterations(st));
 *   }
 *   ...
 *   tb_bench_range(tb_register("pairs", bm_pairs, NULL), 16, 4096);
 *   return tb_main(argc, argv);
 *
 * The semantics are google-benchmark's (see benchmark/benchmark.h); this header
 * only restates what a C caller needs to know.
 */
#ifndef TIERALLOC_BENCH_SHIM_H
#define TIERALLOC_BENCH_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tb_state tb_state;  /* a benchmark::State */
typedef struct tb_bench tb_bench;  /* a benchmark::internal::Benchmark */
typedef void (*tb_fn)(tb_state *st, void *arg);

/* ---- registering ---------------------------------------------------------
 * Every tb_bench_* call returns its first argument so calls can be nested.
 * Register before tb_main/tb_run. */
tb_bench *tb_register(const char *name, tb_fn fn, void *arg);
tb_bench *tb_bench_arg(tb_bench *b, int64_t x);
tb_bench *tb_bench_args(tb_bench *b, const int64_t *xs, size_t n);   /* one run with n arguments */
tb_bench *tb_bench_range(tb_bench *b, int64_t lo, int64_t hi);      /* lo, lo*m, ..., hi */
tb_bench *tb_bench_range_multiplier(tb_bench *b, int m);
tb_bench *tb_bench_dense_range(tb_bench *b, int64_t lo, int64_t hi, int step);
tb_bench *tb_bench_arg_name(tb_bench *b, const char *name);         /* "size" gives name/size:16 */
tb_bench *tb_bench_threads(tb_bench *b, int n);                     /* may be called several times */
tb_bench *tb_bench_thread_range(tb_bench *b, int lo, int hi);       /* lo, 2lo, ..., hi */
tb_bench *tb_bench_use_real_time(tb_bench *b);                      /* rates over wall time */
tb_bench *tb_bench_measure_process_cpu_time(tb_bench *b);
tb_bench *tb_bench_min_time(tb_bench *b, double seconds);           /* overrides --benchmark_min_time */
tb_bench *tb_bench_iterations(tb_bench *b, int64_t n);              /* exactly n, no estimation */
tb_bench *tb_bench_repetitions(tb_bench *b, int n);

typedef enum { TB_NS, TB_US, TB_MS, TB_S } tb_unit;
tb_bench *tb_bench_unit(tb_bench *b, tb_unit unit);

/* ---- running ------------------------------------------------------------
 * tb_main: parse --benchmark_* flags (an unknown flag prints a message and
 * returns 1), run the selected benchmarks and return 0.  Without an explicit
 * --benchmark_min_time, TB_DEFAULT_MIN_TIME seconds are used per benchmark, so
 * that the whole suite runs in a few seconds.
 * tb_run: the same with the arguments given (argv[0] is the program name);
 * returns the number of benchmarks run, or -1 on an unknown flag.
 * google-benchmark runs once per process: a second tb_main/tb_run call
 * prints a message and fails. */
#define TB_DEFAULT_MIN_TIME 0.05
int tb_main(int argc, char **argv);
long tb_run(int argc, char **argv);

/* key/value shown in the report's context (console header, JSON "context") */
void tb_add_context(const char *key, const char *value);

/* ---- inside a benchmark ------------------------------------------------- */
bool tb_keep_running(tb_state *st);
bool tb_keep_running_batch(tb_state *st, int64_t n); /* may overshoot by up to n */
int64_t tb_range(tb_state *st, size_t i);            /* i-th argument of this run, 0 past the last */
int64_t tb_iterations(tb_state *st);                 /* iterations run so far */
int64_t tb_max_iterations(tb_state *st);             /* the iterations this run asked for */
int tb_threads(tb_state *st);
int tb_thread_index(tb_state *st);
void tb_pause_timing(tb_state *st);
void tb_resume_timing(tb_state *st);
void tb_skip_with_error(tb_state *st, const char *msg); /* then leave the loop */
bool tb_error_occurred(tb_state *st);
void tb_set_items_processed(tb_state *st, int64_t items); /* prints items_per_second */
void tb_set_bytes_processed(tb_state *st, int64_t bytes); /* prints bytes_per_second */
void tb_set_label(tb_state *st, const char *label);

/* Counters: per thread, summed over threads, then adjusted by the flags. */
enum {
    TB_COUNTER_DEFAULT = 0,
    TB_COUNTER_RATE = 1 << 0,             /* divided by the (cpu or real) time */
    TB_COUNTER_AVG_THREADS = 1 << 1,      /* divided by the thread count */
    TB_COUNTER_ITER_INVARIANT = 1 << 2,   /* multiplied by the iterations */
    TB_COUNTER_AVG_ITERATIONS = 1 << 3,   /* divided by the iterations */
    TB_COUNTER_INVERT = 1 << 4,           /* 1/x, after the above: RATE|INVERT = time per unit */
    TB_COUNTER_BASE_1024 = 1 << 5         /* print with Ki/Mi prefixes */
};
void tb_counter_set(tb_state *st, const char *name, double value, unsigned flags);
void tb_counter_add(tb_state *st, const char *name, double value, unsigned flags);
double tb_counter_get(tb_state *st, const char *name); /* 0 if unset */

/* ---- keeping work the compiler could remove ------------------------------
 * tb_do_not_optimize(x): x (a scalar or pointer) is treated as read and the
 * memory it may point to as read and written.  tb_clobber_memory(): every
 * pending store is treated as observed. */
#define tb_do_not_optimize(x) __asm__ volatile("" : : "g"(x) : "memory")
static inline void tb_clobber_memory(void) { __asm__ volatile("" : : : "memory"); }

#ifdef __cplusplus
}
#endif
#endif
