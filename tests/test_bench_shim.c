/* test_bench_shim.c: the C interface to google-benchmark (bench/shim.h).
 *
 * Each test registers its own C benchmarks (Criterion runs every test in its
 * own process), runs them through tb_run with a filter and a JSON output file,
 * and checks what the benchmark functions saw and what google-benchmark
 * reported.  Only deterministic quantities are checked (arguments, threads,
 * iteration counts, counters whose value does not depend on time). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <pthread.h>

#include "../bench/shim.h"

/* ---- running ------------------------------------------------------------- */

static char *json_path;
static char *json_text;

/* run the benchmarks matching filter; returns tb_run's result and leaves
 * the JSON report in json_text */
static long run_filter(const char *filter, const char *extra)
{
    char *dir = tu_tmpdir();
    cr_assert(dir);
    free(json_path);
    json_path = tu_fmt("%s/out.json", dir);
    char *f = tu_fmt("--benchmark_filter=%s", filter);
    char *o = tu_fmt("--benchmark_out=%s", json_path);
    char *argv[] = { "test_bench_shim", f, o, "--benchmark_out_format=json",
                     "--benchmark_min_time=0.001", (char *)extra, NULL };
    int argc = extra ? 6 : 5;
    long n = tb_run(argc, argv);
    free(json_text);
    json_text = tu_slurp(json_path);
    tu_rmtree(dir);
    free(dir);
    free(f);
    free(o);
    return n;
}

static const char *object(const char *name)
{
    cr_assert(json_text, "no JSON report");
    const char *o = tu_json_object(json_text, name);
    cr_assert(o, "no result named %s in\n%s", name, json_text);
    return o;
}

/* ---- what the benchmark functions saw -------------------------------------- */

#define MAX_SEEN 4096
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct seen {
    const char *tag; /* the registration's argument */
    int64_t r0, r1;
    int threads, index;
    int64_t loops, iterations, max_iterations;
} seen[MAX_SEEN];
static int nseen;

static void record(tb_state *st, const char *tag, int64_t loops)
{
    pthread_mutex_lock(&seen_lock);
    cr_assert_lt(nseen, MAX_SEEN);
    seen[nseen++] = (struct seen){ tag, tb_range(st, 0), tb_range(st, 1), tb_threads(st),
                                   tb_thread_index(st), loops, tb_iterations(st),
                                   tb_max_iterations(st) };
    pthread_mutex_unlock(&seen_lock);
}

static bool saw_arg(const char *tag, int64_t r0)
{
    for (int i = 0; i < nseen; i++)
        if (strcmp(seen[i].tag, tag) == 0 && seen[i].r0 == r0)
            return true;
    return false;
}

/* arg: a tag string, recorded with what the function saw */
static void bm_record(tb_state *st, void *arg)
{
    int64_t loops = 0;
    while (tb_keep_running(st))
        loops++;
    record(st, arg, loops);
}

Test(shim, arguments_and_ranges_reach_the_function)
{
    tb_bench *b = tb_register("args", bm_record, "args");
    tb_bench_arg(tb_bench_arg(b, 3), 7);
    tb_bench_range(tb_bench_range_multiplier(tb_register("range", bm_record, "range"), 2), 8, 64);
    tb_bench_dense_range(tb_register("dense", bm_record, "dense"), 100, 103, 1);
    long n = run_filter("^(args|range|dense)/", NULL);
    cr_expect_eq(n, 2 + 4 + 4, "benchmarks run: %ld", n);
    struct {
        const char *tag;
        int64_t arg;
    } want[] = { { "args", 3 },    { "args", 7 },    { "range", 8 },   { "range", 16 },
                 { "range", 32 },  { "range", 64 },  { "dense", 100 }, { "dense", 101 },
                 { "dense", 102 }, { "dense", 103 } };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(saw_arg(want[i].tag, want[i].arg), "%s never ran with %lld", want[i].tag,
                  (long long)want[i].arg);
    cr_assert_gt(nseen, 0);
    for (int i = 0; i < nseen; i++) {
        cr_expect_gt(seen[i].loops, 0);
        cr_expect_eq(seen[i].loops, seen[i].iterations, "tb_iterations disagrees with the loop");
        cr_expect_eq(seen[i].loops, seen[i].max_iterations);
    }
    object("args/3");
    object("range/64");
    object("dense/103");
}

Test(shim, several_arguments_and_argument_names)
{
    const int64_t xs[] = { 5, 9 };
    tb_bench_args(tb_register("pair", bm_record, "pair"), xs, 2);
    tb_bench_arg(tb_bench_arg_name(tb_register("named", bm_record, "named"), "size"), 48);
    tb_register("noargs", bm_record, "noargs");
    long n = run_filter("^(pair|named|noargs)", NULL);
    cr_expect_eq(n, 3);
    int pair = 0, named = 0, noargs = 0;
    for (int i = 0; i < nseen; i++) {
        if (strcmp(seen[i].tag, "pair") == 0) {
            pair++;
            cr_expect(seen[i].r0 == 5 && seen[i].r1 == 9, "range(0), range(1) = %lld, %lld",
                      (long long)seen[i].r0, (long long)seen[i].r1);
        } else if (strcmp(seen[i].tag, "named") == 0) {
            /* past the last argument tb_range is 0 */
            named++;
            cr_expect(seen[i].r0 == 48 && seen[i].r1 == 0);
        } else if (strcmp(seen[i].tag, "noargs") == 0) {
            noargs++;
            cr_expect(seen[i].r0 == 0 && seen[i].r1 == 0);
        }
    }
    cr_expect(pair && named && noargs, "runs: pair %d named %d noargs %d", pair, named, noargs);
    object("pair/5/9");
    object("named/size:48");
    object("noargs");
}

Test(shim, exact_iterations_and_batches)
{
    tb_bench_iterations(tb_register("exact", bm_record, "exact"), 17);
    long n = run_filter("^exact", NULL);
    cr_expect_eq(n, 1);
    cr_assert_eq(nseen, 1, "an exact iteration count is run once");
    cr_expect_eq(seen[0].loops, 17);
    cr_expect_eq(tu_json_number(object("exact/iterations:17"), "iterations"), 17);
}

static int64_t batch_calls;
static void bm_batches(tb_state *st, void *arg)
{
    (void)arg;
    while (tb_keep_running_batch(st, 10))
        batch_calls++;
}

Test(shim, keep_running_batch)
{
    tb_bench_iterations(tb_register("batches", bm_batches, NULL), 100);
    run_filter("^batches", NULL);
    cr_expect_eq(batch_calls, 10);
    cr_expect_eq(tu_json_number(object("batches/iterations:100"), "iterations"), 100);
}

Test(shim, threads_and_thread_indexes)
{
    /* every thread records (threads, index) */
    tb_bench *b = tb_bench_use_real_time(tb_register("thr", bm_record, "thr"));
    tb_bench_threads(tb_bench_threads(b, 2), 3);
    tb_bench_thread_range(tb_register("thrrange", bm_record, "thrrange"), 1, 4);
    long n = run_filter("^thr", NULL);
    cr_expect_eq(n, 2 + 3, "runs: %ld", n);
    /* for each thread count t, indexes 0..t-1 were all seen */
    const int counts[] = { 1, 2, 3, 4 };
    for (size_t c = 0; c < 4; c++) {
        int t = counts[c];
        for (int idx = 0; idx < t; idx++) {
            bool found = false;
            for (int i = 0; i < nseen; i++)
                if (seen[i].threads == t && seen[i].index == idx)
                    found = true;
            cr_expect(found, "thread %d of %d never ran", idx, t);
        }
    }
    for (int i = 0; i < nseen; i++)
        cr_expect_lt(seen[i].index, seen[i].threads);
    object("thr/real_time/threads:2");
    object("thr/real_time/threads:3");
    object("thrrange/threads:4");
}

/* counters whose reported value does not depend on time */
static double got_after_adds;
static void bm_counters(tb_state *st, void *arg)
{
    (void)arg;
    double x = 1.5;
    while (tb_keep_running(st)) {
        tb_do_not_optimize(x);
        tb_clobber_memory();
    }
    tb_counter_set(st, "plain", 42, TB_COUNTER_DEFAULT);
    tb_counter_set(st, "per_iter", 100, TB_COUNTER_AVG_ITERATIONS);       /* 100 / 4 */
    tb_counter_set(st, "times_iter", 3, TB_COUNTER_ITER_INVARIANT);       /* 3 * 4 */
    tb_counter_set(st, "inverted", 4, TB_COUNTER_INVERT);                 /* 1 / 4 */
    tb_counter_set(st, "per_thread", 10, TB_COUNTER_AVG_THREADS);         /* 10*2 / 2 */
    tb_counter_set(st, "rate", 1000, TB_COUNTER_RATE);
    tb_counter_set(st, "bytes", 3 << 20, TB_COUNTER_BASE_1024);
    tb_counter_add(st, "sum", 1.5, 0);
    tb_counter_add(st, "sum", 1.5, 0);
    if (tb_thread_index(st) == 0)
        got_after_adds = tb_counter_get(st, "sum");
    tb_set_items_processed(st, tb_iterations(st) * 8);
    tb_set_bytes_processed(st, tb_iterations(st) * 64);
    tb_set_label(st, "a label");
}

Test(shim, counters_items_and_labels)
{
    tb_bench_threads(tb_bench_iterations(tb_register("counters", bm_counters, NULL), 4), 2);
    run_filter("^counters", NULL);
    const char *o = object("counters/iterations:4/threads:2");
    cr_expect_eq(tu_json_number(o, "plain"), 84, "summed over 2 threads");
    /* google-benchmark sums counters and iterations over the threads: 8 iterations */
    cr_expect_eq(tu_json_number(o, "iterations"), 8);
    cr_expect_eq(tu_json_number(o, "per_iter"), 25);      /* (100+100) / 8 */
    cr_expect_eq(tu_json_number(o, "times_iter"), 48);    /* (3+3) * 8 */
    cr_expect_eq(tu_json_number(o, "per_thread"), 10);
    cr_expect_eq(tu_json_number(o, "bytes"), 2 * (3 << 20));
    cr_expect_eq(tu_json_number(o, "sum"), 6);
    cr_expect_eq(got_after_adds, 3.0, "tb_counter_get after two adds: %g", got_after_adds);
    cr_expect_gt(tu_json_number(o, "rate"), 0);
    cr_expect_gt(tu_json_number(o, "items_per_second"), 0);
    cr_expect_gt(tu_json_number(o, "bytes_per_second"), 0);
    double inv = tu_json_number(o, "inverted");
    cr_expect_eq(inv, 0.125, "1 / (4+4) expected, got %g", inv);
    cr_expect(strstr(o, "\"label\": \"a label\"") != NULL);
}

static void bm_error(tb_state *st, void *arg)
{
    (void)arg;
    while (tb_keep_running(st)) {
        tb_skip_with_error(st, "deliberate failure");
        cr_expect(tb_error_occurred(st));
        break;
    }
}

Test(shim, errors_are_reported)
{
    tb_register("failing", bm_error, NULL);
    run_filter("^failing$", NULL);
    const char *o = object("failing");
    cr_expect(tu_json_true(o, "error_occurred"));
    cr_expect(strstr(o, "\"error_message\": \"deliberate failure\"") != NULL, "%s", o);
}

static int64_t paused_loops;
static void bm_pause(tb_state *st, void *arg)
{
    (void)arg;
    while (tb_keep_running(st)) {
        tb_pause_timing(st);
        paused_loops++;
        tb_resume_timing(st);
    }
}

Test(shim, pause_resume_and_units)
{
    tb_bench_unit(tb_bench_iterations(tb_register("paused", bm_pause, NULL), 5), TB_MS);
    tb_bench_unit(tb_bench_iterations(tb_register("unit_us", bm_pause, NULL), 1), TB_US);
    run_filter("^(paused|unit_us)", NULL);
    cr_expect_eq(paused_loops, 6);
    const char *o = object("paused/iterations:5");
    cr_expect(!tu_json_true(o, "error_occurred"));
    cr_expect(strstr(o, "\"time_unit\": \"ms\"") != NULL);
    cr_expect(strstr(object("unit_us/iterations:1"), "\"time_unit\": \"us\"") != NULL);
}

Test(shim, context_and_repetitions)
{
    tb_add_context("shim_key", "shim value");
    tb_bench_repetitions(tb_bench_iterations(tb_register("rep", bm_record, "rep"), 3), 4);
    run_filter("^rep", NULL);
    cr_assert(json_text);
    cr_expect(strstr(json_text, "\"shim_key\": \"shim value\"") != NULL, "context missing");
    cr_expect_eq(nseen, 4, "4 repetitions run: %d", nseen);
    cr_expect(strstr(json_text, "\"aggregate_name\": \"median\"") != NULL);
}

Test(shim, min_time_is_accepted_per_benchmark)
{
    tb_bench_min_time(tb_register("mintime", bm_record, "mintime"), 0.001);
    tb_bench_measure_process_cpu_time(tb_register("proccpu", bm_record, "proccpu"));
    long n = run_filter("^(mintime|proccpu)", NULL);
    cr_expect_eq(n, 2);
    object("mintime/min_time:0.001");
    object("proccpu/process_time");
}

Test(shim, unknown_flags_are_refused)
{
    tb_register("never", bm_record, "never");
    long n = run_filter("^never$", "--no_such_benchmark_flag");
    cr_expect_eq(n, -1);
    cr_expect_eq(nseen, 0, "nothing may run after a bad flag");
}

Test(shim, main_refuses_unknown_flags)
{
    tb_register("never", bm_record, "never");
    char *argv[] = { "test_bench_shim", "--benchmark_filter=^never$", "--also_not_a_flag", NULL };
    cr_expect_eq(tb_main(3, argv), 1);
    cr_expect_eq(nseen, 0);
}

Test(shim, runs_once_per_process)
{
    tb_register("once", bm_record, "once");
    cr_expect_eq(run_filter("^once$", NULL), 1);
    int before = nseen;
    cr_expect_gt(before, 0);
    /* google-benchmark 1.7 cannot run twice: the shim says so instead of crashing */
    cr_expect_eq(run_filter("^once$", NULL), -1);
    cr_expect_eq(nseen, before);
}
