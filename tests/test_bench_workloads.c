/* test_bench_workloads.c: bench/tieralloc-bench and the comparison runner on it.
 *
 *  - every workload of the issue is registered under its documented name;
 *  - the whole suite runs to the end without a benchmark error, under glibc
 *    and under tieralloc (LD_PRELOAD of the built library), very briefly;
 *  - the benchmark binary says which library answered malloc;
 *  - the memory workload's counters are consistent (the peak holds at least
 *    what was live), and the false-sharing counter is in its range;
 *  - every idle thread allocated its MiB, and the resident set while they
 *    wait is reported;
 *  - `--cpu-roundtrip` reports the latency between two CPUs (or that there is one);
 *  - tools/tieralloc-compare on the benchmark binary writes the table (time
 *    per operation, peak RSS, geometric mean, counters, the cross-CPU latency
 *    it probed) and the PNG chart.
 * Nothing is timed. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <sched.h>
#include <stdio.h>

static const char *const workloads[] = {
    "fastpath/size:16", "fastpath/size:64", "fastpath/size:256", "fastpath/size:1024",
    "fastpath/size:4096", "fastpath/size:32768", "fastpath_random", "fastpath_random_small", "new_delete/size:16", "new_delete/size:64",
    "new_delete_random", "batch/blocks:4096",
    "scattered_reuse/blocks:32768", "teardown/blocks:1048576/min_time:1.000", "realloc_growth", "large/size:65536", "large/size:524288", "large/size:8388608",
    "realloc_growth_64k", "realloc_doubling/mib:32", "large_ends/size:65536", "large_ends/size:262144",
    "large_ends/size:1048576", "large_ends/size:4194304", "large_ends_mixed", "fork/heap_mib:16/real_time",
    "fork_threaded/heap_mib:16/real_time", "spawn_small/real_time",
    "producer_consumer/real_time/threads:2", "batch_mt/real_time/threads:1",
    "batch_mt/real_time/threads:2", "batch_mt/real_time/threads:4",
    "false_sharing/real_time/threads:2", "server/real_time/threads:2",
    "thread_churn/real_time", "memory/iterations:1",
    /* bench_shapes.c */
    "pipeline64/real_time/threads:2", "working_set/real_time/threads:2",
    "working_set_shared_start/real_time/threads:2",
    "remote_frees/real_time/threads:8", "remote_frees/real_time/threads:16",
    "idle_threads/n:256/iterations:1/real_time", "idle_threads/n:2000/iterations:1/real_time",
    "swap/iterations:20000/real_time/threads:16", "swap/iterations:5000/real_time/threads:64",
    "swap/iterations:1250/real_time/threads:256",
};
#define NWORKLOADS (sizeof workloads / sizeof workloads[0])

static char *bench(void) { return tu_fmt("%s/bench/tieralloc-bench", tu_build_dir()); }
static char *tieralloc_lib(void)
{
    return tu_fmt("%s/.libs/libtieralloc.so", tu_build_dir());
}

#define ASSERT_EXIT0(r)                                                                  \
    cr_assert(!(r).timed_out && !(r).signaled && (r).exit_code == 0,                     \
              "exit %d signal %d timeout %d\nstdout:\n%.4000s\nstderr:\n%.4000s",        \
              (r).exit_code, (r).signo, (int)(r).timed_out, (r).out, (r).err)

Test(bench_binary, registers_every_workload)
{
    char *b = bench();
    char *argv[] = { b, "--benchmark_list_tests=true", NULL };
    tu_result_t r = tu_run(argv, NULL, NULL, 30);
    ASSERT_EXIT0(r);
    /* the allocator workloads; arena/ ones (scoped arena vs malloc/free) come on top */
    size_t lines = 0;
    for (const char *p = r.out; *p; p++) {
        if (strncmp(p, "arena/", 6) != 0)
            lines++;
        p = strchr(p, '\n');
        if (!p)
            break;
    }
    cr_expect_eq(lines, NWORKLOADS, "%zu benchmarks listed:\n%s", lines, r.out);
    for (size_t i = 0; i < NWORKLOADS; i++) {
        char *line = tu_fmt("%s\n", workloads[i]);
        cr_expect(strstr(r.out, line) != NULL, "%s is not registered", workloads[i]);
        free(line);
    }
    tu_result_free(&r);
    free(b);
}

Test(bench_binary, rejects_unknown_flags)
{
    char *b = bench();
    char *argv[] = { b, "--benchmark_no_such_flag=1", NULL };
    tu_result_t r = tu_run(argv, NULL, NULL, 30);
    cr_expect(!r.timed_out && !r.signaled && r.exit_code != 0, "exit %d", r.exit_code);
    cr_expect(strstr(r.err, "benchmark_no_such_flag") != NULL, "%s", r.err);
    tu_result_free(&r);
    free(b);
}

static int cpus_allowed(void)
{
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

/* --cpu-roundtrip, the comparison's probe of the machine: a round trip
 * between two CPUs, or "none" with one CPU allowed. */
Test(bench_binary, cpu_roundtrip_probe_reports_two_cpus_latency)
{
    char *b = bench();
    char *argv[] = { b, "--cpu-roundtrip", NULL };
    tu_result_t r = tu_run(argv, NULL, NULL, 30);
    ASSERT_EXIT0(r);
    if (cpus_allowed() >= 2) {
        int c0 = -1, c1 = -1;
        double ns = 0, lo = 0, hi = 0;
        cr_assert_eq(sscanf(r.out, "cpu_roundtrip cpus %d %d ns %lf min %lf max %lf", &c0, &c1, &ns, &lo, &hi), 5,
                     "%s", r.out);
        cr_expect(c0 >= 0 && c1 > c0, "CPUs %d and %d", c0, c1);
        cr_expect(lo > 0 && lo <= ns && ns <= hi && hi < 1e7, "round trip %g (%g..%g) ns", ns, lo, hi);
    }
    tu_result_free(&r);
    char *one[] = { "taskset", "-c", "0", b, "--cpu-roundtrip", NULL };
    r = tu_run(one, NULL, NULL, 30);
    ASSERT_EXIT0(r);
    cr_expect(strstr(r.out, "cpu_roundtrip none: one CPU") != NULL, "%s", r.out);
    tu_result_free(&r);
    free(b);
}

/* Run the whole suite briefly with LD_PRELOAD=preload (NULL: none); returns
 * the JSON report (malloc'd). */
static char *run_suite(const char *preload)
{
    char *dir = tu_tmpdir(), *b = bench();
    char *json = tu_fmt("%s/out.json", dir), *o = tu_fmt("--benchmark_out=%s", json);
    char *argv[] = { b, o, "--benchmark_out_format=json", "--benchmark_min_time=0.002", NULL };
    char *pre = preload ? tu_fmt("LD_PRELOAD=%s", preload) : NULL;
    char *env[] = { pre, NULL };
    tu_result_t r = tu_run(argv, preload ? env : NULL, NULL, 290);
    ASSERT_EXIT0(r);
    char *text = tu_slurp(json);
    cr_assert(text, "no JSON report");
    tu_result_free(&r);
    tu_rmtree(dir);
    free(pre);
    free(o);
    free(json);
    free(b);
    free(dir);
    return text;
}

static void check_suite(const char *text, const char *malloc_lib)
{
    char *mf = tu_fmt("\"malloc_from\": \"");
    const char *p = strstr(text, mf);
    cr_assert(p, "no malloc_from in the context");
    p += strlen(mf);
    size_t n = strcspn(p, "\"");
    char *from = strndup(p, n);
    cr_expect(strstr(from, malloc_lib) != NULL, "malloc answered by %s, not %s", from, malloc_lib);
    free(from);
    free(mf);
    cr_expect(strstr(text, "\"error_occurred\": true") == NULL, "a workload failed:\n%s", text);
    for (size_t i = 0; i < NWORKLOADS; i++) {
        const char *o = tu_json_object(text, workloads[i]);
        cr_assert(o, "%s did not run", workloads[i]);
        double ips = tu_json_number(o, "items_per_second");
        cr_expect(ips > 0, "%s: items_per_second %g", workloads[i], ips);
    }
    const char *m = tu_json_object(text, "memory/iterations:1");
    double peak = tu_json_number(m, "peak_rss"), live = tu_json_number(m, "live_peak");
    double start = tu_json_number(m, "rss_start"), freed = tu_json_number(m, "rss_after_free");
    double trimmed = tu_json_number(m, "rss_after_trim");
    cr_expect(live > 40e6, "live_peak %g", live);
    cr_expect(peak >= live, "peak RSS %g below the live bytes %g", peak, live);
    cr_expect(start > 0 && freed > 0 && trimmed > 0, "RSS counters %g %g %g", start, freed,
              trimmed);
    cr_expect(peak >= freed && peak >= trimmed);
    double shared = tu_json_number(tu_json_object(text, "false_sharing/real_time/threads:2"),
                                    "shared_lines");
    cr_expect(shared >= 0 && shared <= 16, "shared_lines %g (of 16 rounds)", shared);
    const char *idle[] = { "idle_threads/n:256/iterations:1/real_time",
                           "idle_threads/n:2000/iterations:1/real_time" };
    for (int i = 0; i < 2; i++) {
        const char *o = tu_json_object(text, idle[i]);
        double each = tu_json_number(o, "allocated_per_thread");
        double rss = tu_json_number(o, "rss_idle");
        cr_expect(each >= 1048576 && each < 1048576 + 4096, "%s: allocated_per_thread %g", idle[i],
                  each);
        cr_expect(rss > 0, "%s: rss_idle %g", idle[i], rss);
    }
}

Test(bench_binary, every_workload_runs_under_glibc, .timeout = 300)
{
    char *text = run_suite(NULL);
    check_suite(text, "libc.so");
    free(text);
}

Test(bench_binary, every_workload_runs_under_tieralloc, .timeout = 300)
{
    char *lib = tieralloc_lib();
    cr_assert(access(lib, R_OK) == 0, "%s is missing", lib);
    char *text = run_suite(lib);
    check_suite(text, "libtieralloc.so");
    free(text);
    free(lib);
}

Test(bench_compare, table_and_chart_from_the_benchmarks, .timeout = 120)
{
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *b = bench();
    char *lib = tieralloc_lib(), *spec = tu_fmt("tieralloc=%s", lib);
    char *tool = tu_fmt("%s/tools/tieralloc-compare", tu_src_dir());
    char *argv[] = { tool, "--bench", b, "--filter", "^(fastpath/size:64|memory)", "--min-time",
                     "0.002", "--repetitions", "1", "--allocators", "glibc,tieralloc",
                     "--allocator", spec, "--baseline", "glibc", "--out", out, NULL };
    tu_result_t r = tu_run(argv, NULL, NULL, 110);
    ASSERT_EXIT0(r);
    char *mdp = tu_fmt("%s/results.md", out);
    char *md = tu_slurp(mdp);
    cr_assert(md, "no results.md");
    const char *tables[] = { "Time per operation", "Peak RSS" };
    for (int t = 0; t < 2; t++) {
        char *g = tu_md_cell(md, tables[t], "**geometric mean of ratios**", "glibc");
        cr_expect(g && strcmp(g, "1.00x") == 0, "%s: glibc geomean %s", tables[t], g ? g : "-");
        char *tg = tu_md_cell(md, tables[t], "**geometric mean of ratios**", "tieralloc");
        cr_expect(tg && tg[strlen(tg) - 1] == 'x', "%s: tieralloc geomean %s", tables[t],
                  tg ? tg : "-");
        const char *rows[] = { "fastpath/size:64", "memory" };
        for (int i = 0; i < 2; i++) {
            char *c = tu_md_cell(md, tables[t], rows[i], "tieralloc");
            cr_expect(c && strstr(c, "x)") && !strstr(c, "FAILED"), "%s / %s: %s", tables[t],
                      rows[i], c ? c : "-");
            free(c);
        }
        free(g);
        free(tg);
    }
    char *peak = tu_md_cell(md, "Counters of memory", "peak_rss", "tieralloc");
    cr_expect(peak && strstr(peak, "MiB"), "memory counters: %s", peak ? peak : "-");
    cr_expect(strstr(md, "libtieralloc.so") != NULL, "malloc_from not reported");
    if (cpus_allowed() >= 2) /* the machine's cross-CPU latency, probed before each workload */
        cr_expect(strstr(md, "- Cross-CPU round trip of a cache line") && strstr(md, "ns over 2 probes"),
                  "no cross-CPU round trip in the report:\n%.2000s", md);
    char *png = tu_fmt("%s/compare.png", out);
    cr_expect(tu_is_png(png), "no PNG chart:\n%s", r.err);
    free(png);
    free(peak);
    free(md);
    free(mdp);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(tool);
    free(spec);
    free(lib);
    free(b);
    free(out);
    free(dir);
}
