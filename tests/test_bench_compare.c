/* test_bench_compare.c: tools/tieralloc-compare, on programs (no benchmark
 * binary needed): arguments, allocators found or skipped, failed runs reported,
 * the order of the runs, and the table and chart written.  Nothing is timed.
 *
 * The stand-in allocator tests/.libs/test_bench_fakealloc.so forwards to glibc
 * and, with TB_FAKEALLOC=crash, kills the process that preloads it. */
#include "testutil.h"

#include <criterion/criterion.h>

static char *tool(void) { return tu_fmt("%s/tools/tieralloc-compare", tu_src_dir()); }
/* the stand-in allocator, by its real path (as the tool passes it to ld.so) */
static char *fakealloc(void)
{
    char *p = tu_fmt("%s/tests/.libs/test_bench_fakealloc.so", tu_build_dir());
    char *real = realpath(p, NULL);
    if (real) {
        free(p);
        return real;
    }
    return p;
}

/* run the tool with up to 30 arguments (NULL-terminated), env extra entries */
static tu_result_t compare(char *const *env, const char *first, ...)
{
    char *argv[40];
    int n = 0;
    argv[n++] = tool();
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 38; a = va_arg(ap, const char *))
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    tu_result_t r = tu_run(argv, env, NULL, 90);
    free(argv[0]);
    return r;
}

#define ASSERT_EXIT(r, code)                                                                  \
    cr_assert(!(r).timed_out && !(r).signaled && (r).exit_code == (code),                     \
              "expected exit %d, got exit %d signal %d timeout %d\nstdout:\n%s\nstderr:\n%s", \
              (code), (r).exit_code, (r).signo, (int)(r).timed_out, (r).out, (r).err)

static char *slurp_in(const char *dir, const char *name)
{
    char *p = tu_fmt("%s/%s", dir, name);
    char *s = tu_slurp(p);
    free(p);
    return s;
}

static void check_fake_built(void)
{
    char *f = fakealloc();
    cr_assert(access(f, R_OK) == 0, "%s is missing: build it with make check", f);
    free(f);
}

Test(compare_args, help_describes_the_options)
{
    tu_result_t r = compare(NULL, "--help", NULL);
    ASSERT_EXIT(r, 0);
    const char *words[] = { "usage:", "--allocator", "--allocators", "--repetitions", "--out",
                            "--baseline", "--bench", "-- PROGRAM", "jemalloc" };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        cr_expect(strstr(r.out, words[i]) != NULL, "--help does not mention %s:\n%s", words[i],
                  r.out);
    tu_result_free(&r);
}

Test(compare_args, unknown_flag_is_an_error)
{
    tu_result_t r = compare(NULL, "--frobnicate", NULL);
    ASSERT_EXIT(r, 2);
    cr_expect(strstr(r.err, "--frobnicate") != NULL, "the message does not name the flag:\n%s",
              r.err);
    cr_expect(strstr(r.err, "usage") != NULL);
    tu_result_free(&r);
}

Test(compare_args, bad_values_are_errors)
{
    struct {
        const char *a, *b, *c, *says;
    } cases[] = {
        { "--repetitions", "0", NULL, "at least 1" },
        { "--repetitions", "many", NULL, "not an integer" },
        { "--min-time", "-1", NULL, "positive" },
        { "--allocator", "bad name=/x.so", NULL, "name" },
        { "--filter", "(", NULL, "regular expression" },
        { "--", NULL, NULL, "nothing after" },
        { "--allocators", ",", "--list", "empty" },
        { "--suite", "nosuch", NULL, "invalid choice" },
        { "--suite", "programs", "--bench=/bin/true", "runs its own programs" },
        { "--workload-budget", "-1", NULL, "0 or more" },
        { "--cpus", "1-0", NULL, "not a CPU list" },
        { "--cpus", "100000", NULL, "not one this process may run on" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_result_t r = compare(NULL, cases[i].a, cases[i].b, cases[i].c, NULL);
        ASSERT_EXIT(r, 2);
        cr_expect(strstr(r.err, cases[i].says) != NULL, "%s %s: message lacks '%s':\n%s",
                  cases[i].a, cases[i].b ? cases[i].b : "", cases[i].says, r.err);
        tu_result_free(&r);
    }
}

Test(compare_allocators, list_names_every_known_allocator)
{
    /* whatever is installed, each known name is either found or skipped */
    tu_result_t r = compare(NULL, "--list", NULL);
    ASSERT_EXIT(r, 0);
    const char *names[] = { "glibc", "jemalloc", "tcmalloc", "mimalloc", "tieralloc" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *found = tu_fmt("found    %s", names[i]), *skipped = tu_fmt("skipped  %s", names[i]);
        cr_expect(strstr(r.out, found) || strstr(r.out, skipped), "%s not listed:\n%s", names[i],
                  r.out);
        free(found);
        free(skipped);
    }
    cr_expect(strstr(r.out, "found    glibc") != NULL, "glibc (no preload) is always there");
    tu_result_free(&r);
}

Test(compare_allocators, missing_library_is_skipped_with_a_message, .timeout = 120)
{
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir);
    tu_result_t r = compare(NULL, "--allocators", "glibc,ghost,nosuch", "--allocator",
                           "ghost=/nonexistent/libghost.so", "--repetitions", "1", "--no-chart",
                           "--out", out, "--", "/bin/sh", "-c", "exit 0", NULL);
    ASSERT_EXIT(r, 0);
    cr_expect(strstr(r.out, "skipped  ghost") && strstr(r.out, "/nonexistent/libghost.so: no such file"),
              "no message about the missing library:\n%s", r.out);
    cr_expect(strstr(r.out, "skipped  nosuch") && strstr(r.out, "unknown allocator"),
              "no message about the unknown name:\n%s", r.out);
    cr_expect(strstr(r.err, "baseline jemalloc is not available") != NULL,
              "no message about the baseline:\n%s", r.err);
    char *md = slurp_in(out, "results.md");
    cr_assert(md, "no results.md");
    cr_expect(strstr(md, "- ghost: /nonexistent/libghost.so: no such file") != NULL,
              "the report does not list the skipped library:\n%s", md);
    char *cell = tu_md_cell(md, "Wall time", "sh -c exit 0", "glibc");
    cr_assert(cell, "no glibc cell in the wall time table:\n%s", md);
    cr_expect(strstr(cell, "FAILED") == NULL && strstr(cell, "(1.00x)"), "glibc cell: %s", cell);
    char *ghost = tu_md_cell(md, "Wall time", "sh -c exit 0", "ghost");
    cr_expect(ghost == NULL, "a skipped allocator has a column");
    free(cell);
    free(ghost);
    free(md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(out);
    free(dir);
}

Test(compare_allocators, non_library_files_are_refused, .timeout = 120)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *text = tu_fmt("%s/text.so", dir);
    FILE *f = fopen(text, "w");
    cr_assert(f);
    fputs("not a library\n", f);
    fclose(f);
    char *spec = tu_fmt("text=%s", text);
    /* an ELF file that ld.so refuses to preload (an executable): the run fails */
    tu_result_t r = compare(NULL, "--allocator", spec, "--allocator", "exe=/bin/true",
                           "--allocators", "glibc,text,exe", "--baseline", "glibc",
                           "--repetitions", "1", "--no-chart", "--out", out, "--", "/bin/sh",
                           "-c", "exit 0", NULL);
    ASSERT_EXIT(r, 0);
    cr_expect(strstr(r.out, "skipped  text") && strstr(r.out, "not an ELF shared library"),
              "%s", r.out);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    char *cell = tu_md_cell(md, "Wall time", "sh -c exit 0", "exe");
    cr_assert(cell, "no column for exe:\n%s", md);
    cr_expect(strncmp(cell, "FAILED 1/1", 10) == 0, "exe cell: %s", cell);
    cr_expect(strstr(md, "under exe: could not be preloaded") != NULL, "%s", md);
    free(cell);
    free(md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(spec);
    free(text);
    free(out);
    free(dir);
}

Test(compare_failures, crash_under_one_allocator_is_reported, .timeout = 120)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *fake = fakealloc();
    char *spec = tu_fmt("crashy=%s", fake);
    char *env[] = { "TB_FAKEALLOC=crash", NULL };
    tu_result_t r = compare(env, "--allocator", spec, "--allocators", "glibc,crashy",
                           "--baseline", "glibc", "--repetitions", "2", "--out", out, "--",
                           "/bin/sh", "-c", "exit 0", NULL);
    ASSERT_EXIT(r, 0);
    cr_expect(strstr(r.err, "failed") != NULL, "no warning on stderr:\n%s", r.err);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    char *crashy = tu_md_cell(md, "Wall time", "sh -c exit 0", "crashy");
    char *glibc = tu_md_cell(md, "Wall time", "sh -c exit 0", "glibc");
    cr_assert(crashy && glibc, "cells missing:\n%s", md);
    cr_expect(strcmp(crashy, "FAILED 2/2") == 0, "crashy cell: %s", crashy);
    cr_expect(strstr(glibc, "FAILED") == NULL, "glibc cell: %s", glibc);
    cr_expect(strstr(md, "## Failed runs") && strstr(md, "under crashy: crashed (SIGSEGV)"),
              "the failure is not explained:\n%s", md);
    char *rss = tu_md_cell(md, "Peak RSS", "sh -c exit 0", "crashy");
    cr_expect(rss && strncmp(rss, "FAILED", 6) == 0, "peak RSS cell: %s", rss ? rss : "(none)");
    /* the geometric mean of the failed allocator has nothing to average */
    char *g = tu_md_cell(md, "Wall time", "**geometric mean of ratios**", "crashy");
    cr_expect(g && strcmp(g, "n/a") == 0, "geomean of crashy: %s", g ? g : "(none)");
    free(g);
    free(rss);
    free(crashy);
    free(glibc);
    free(md);
    tu_result_free(&r);

    /* --strict turns the failure into the exit status */
    r = compare(env, "--allocator", spec, "--allocators", "glibc,crashy", "--repetitions", "1",
                "--no-chart", "--strict", "--out", out, "--", "/bin/sh", "-c", "exit 0", NULL);
    ASSERT_EXIT(r, 1);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(spec);
    free(fake);
    free(out);
    free(dir);
}

Test(compare_failures, failing_program_is_reported_under_every_allocator, .timeout = 120)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *fake = fakealloc();
    char *spec = tu_fmt("fake=%s", fake);
    tu_result_t r = compare(NULL, "--allocator", spec, "--allocators", "glibc,fake",
                           "--baseline", "glibc", "--repetitions", "1", "--no-chart", "--out",
                           out, "--program", "/bin/sh -c 'exit 0'", "--program",
                           "/bin/sh -c 'echo bad input >&2; exit 1'", NULL);
    ASSERT_EXIT(r, 0);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    const char *row_ok = "1. sh -c exit 0";
    const char *row_bad = "2. sh -c echo bad input >&2; exit 1";
    const char *allocs[] = { "glibc", "fake" };
    for (int i = 0; i < 2; i++) {
        char *ok = tu_md_cell(md, "Wall time", row_ok, allocs[i]);
        char *bad = tu_md_cell(md, "Wall time", row_bad, allocs[i]);
        cr_assert(ok && bad, "cells missing for %s:\n%s", allocs[i], md);
        cr_expect(strstr(ok, "FAILED") == NULL, "%s: %s", allocs[i], ok);
        cr_expect(strcmp(bad, "FAILED 1/1") == 0, "%s: %s", allocs[i], bad);
        char *why = tu_fmt("under %s: exit status 1: bad input", allocs[i]);
        cr_expect(strstr(md, why) != NULL, "no '%s' in\n%s", why, md);
        free(why);
        free(ok);
        free(bad);
    }
    /* the geometric mean covers the one program both ran */
    char *g = tu_md_cell(md, "Wall time", "**geometric mean of ratios**", "glibc");
    cr_expect(g && strcmp(g, "1.00x (1 of 2)") == 0, "geomean: %s", g ? g : "(none)");
    free(g);
    free(md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(spec);
    free(fake);
    free(out);
    free(dir);
}

Test(compare_failures, hung_program_is_killed_and_reported, .timeout = 120)
{
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir);
    tu_result_t r = compare(NULL, "--allocators", "glibc", "--repetitions", "1", "--timeout", "1",
                           "--no-chart", "--out", out, "--", "/bin/sh", "-c", "sleep 60", NULL);
    ASSERT_EXIT(r, 0);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    cr_expect(strstr(md, "under glibc: timed out after 1 s") != NULL, "%s", md);
    free(md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(out);
    free(dir);
}

/* The runs of `sh -c "CMD >> LOG"` under glibc and the stand-in allocator
 * (its path in *fake), reps repetitions, pinned by --cpus cpus unless cpus is
 * NULL: what they appended to LOG, and the report in *md. */
static char *logged_runs(const char *cmd, const char *reps, const char *cpus, char **fake, char **md)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir);
    *fake = fakealloc();
    char *spec = tu_fmt("fake=%s", *fake), *log = tu_fmt("%s/runs.log", dir);
    char *script = tu_fmt("%s >> %s", cmd, log);
    /* (without --cpus its place holds --no-chart again) */
    tu_result_t r = compare(NULL, "--allocator", spec, "--allocators", "glibc,fake", "--repetitions", reps,
                           cpus ? "--cpus" : "--no-chart", cpus ? cpus : "--no-chart", "--no-chart", "--out",
                           out, "--", "/bin/sh", "-c", script, NULL);
    ASSERT_EXIT(r, 0);
    char *runs = tu_slurp(log);
    cr_assert(runs, "the program did not run");
    *md = slurp_in(out, "results.md");
    cr_assert(*md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(script);
    free(log);
    free(spec);
    free(out);
    free(dir);
    return runs;
}

Test(compare_runs, allocators_are_interleaved_and_repeated, .timeout = 120)
{
    char *fake, *md;
    char *order = logged_runs("echo \"${LD_PRELOAD:-none}\"", "3", NULL, &fake, &md);
    /* repetition k starts with allocator k mod 2: none fake | fake none | none fake */
    char *want = tu_fmt("none\n%s\n%s\nnone\nnone\n%s\n", fake, fake, fake);
    cr_expect(strcmp(order, want) == 0, "order of the runs:\n%s\nwanted:\n%s", order, want);
    free(want);
    free(order);
    free(md);
    free(fake);
}

/* --cpus: every run is pinned to the CPUs given, and the report says so */
Test(compare_runs, cpus_pins_every_run, .timeout = 120)
{
    char *fake, *md;
    char *seen = logged_runs("grep Cpus_allowed_list /proc/self/status", "2", "0", &fake, &md);
    const char *want = "Cpus_allowed_list:\t0\n";
    size_t runs = 0;
    for (const char *q = seen; (q = strstr(q, want)); q += strlen(want)) runs++;
    cr_expect(runs == 4 && strlen(seen) == 4 * strlen(want), "affinity of the runs:\n%s", seen);
    cr_expect(strstr(md, "pinned to CPU 0 (--cpus)") != NULL, "the report does not say:\n%s", md);
    free(md);
    free(seen);
    free(fake);
}

Test(compare_report, table_chart_and_raw_results_are_written, .timeout = 120)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *fake = fakealloc();
    char *spec = tu_fmt("fake=%s", fake);
    tu_result_t r = compare(NULL, "--allocator", spec, "--allocators", "glibc,fake",
                           "--baseline", "glibc", "--repetitions", "1", "--title", "test run",
                           "--out", out, "--program", "/bin/sh -c 'exit 0'", "--program",
                           "/bin/true", NULL);
    ASSERT_EXIT(r, 0);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    cr_expect(strncmp(md, "# test run\n", 11) == 0, "title: %.40s", md);
    /* user and system times may be 0 (no ratio then): only their rows are checked */
    const char *cpu_tables[] = { "User CPU time", "System CPU time" };
    for (size_t i = 0; i < 2; i++) {
        char *g = tu_md_cell(md, cpu_tables[i], "**geometric mean of ratios**", "glibc");
        char *v = tu_md_cell(md, cpu_tables[i], "2. true", "fake");
        cr_expect(g && v, "%s: no geomean row or no cell", cpu_tables[i]);
        free(g);
        free(v);
    }
    const char *tables[] = { "Wall time", "Peak RSS" };
    for (size_t i = 0; i < 2; i++) {
        char *g = tu_md_cell(md, tables[i], "**geometric mean of ratios**", "glibc");
        char *f = tu_md_cell(md, tables[i], "**geometric mean of ratios**", "fake");
        cr_expect(g && strcmp(g, "1.00x") == 0, "%s: glibc geomean %s", tables[i], g ? g : "-");
        cr_expect(f && f[strlen(f) - 1] == 'x', "%s: fake geomean %s", tables[i], f ? f : "-");
        char *v = tu_md_cell(md, tables[i], "2. true", "fake");
        cr_expect(v && strstr(v, "x)"), "%s: cell %s", tables[i], v ? v : "-");
        free(g);
        free(f);
        free(v);
    }
    cr_expect(strstr(md, "![ratios to glibc](compare.png)") != NULL);
    char *png = tu_fmt("%s/compare.png", out);
    cr_expect(tu_is_png(png), "%s is not a PNG (gnuplot-nox installed?)\n%s", png, r.err);
    cr_expect(tu_file_size(png) > 2000, "the chart is suspiciously small");
    char *csv = slurp_in(out, "results.csv");
    cr_assert(csv);
    cr_expect(strncmp(csv, "workload,allocator,status,", 26) == 0);
    cr_expect(strstr(csv, "2. true,fake,ok,") != NULL, "%s", csv);
    char *json = slurp_in(out, "results.json");
    cr_assert(json);
    cr_expect(strstr(json, "\"summary\"") && strstr(json, "\"samples\""));
    /* the table is printed too */
    cr_expect(strstr(r.out, "| **geometric mean of ratios** |") != NULL, "%s", r.out);
    free(json);
    free(csv);
    free(png);
    free(md);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(spec);
    free(fake);
    free(out);
    free(dir);
}

Test(compare_allocators, a_known_name_can_be_given_another_library, .timeout = 120)
{
    check_fake_built();
    char *dir = tu_tmpdir(), *out = tu_fmt("%s/out", dir), *fake = fakealloc();
    char *spec = tu_fmt("tieralloc=%s", fake);
    /* every allocator found runs; tieralloc is the stand-in, in one column */
    tu_result_t r = compare(NULL, "--allocator", spec, "--repetitions", "1", "--no-chart",
                           "--out", out, "--", "/bin/true", NULL);
    ASSERT_EXIT(r, 0);
    char *line = tu_fmt("found    tieralloc  %s", fake);
    cr_expect(strstr(r.out, line) != NULL, "%s", r.out);
    char *md = slurp_in(out, "results.md");
    cr_assert(md);
    const char *hdr = strstr(md, "\n| workload |");
    cr_assert(hdr);
    char *header = strndup(hdr + 1, strcspn(hdr + 1, "\n"));
    const char *first = strstr(header, "| tieralloc |");
    cr_expect(first && !strstr(first + 1, "| tieralloc |"), "header: %s", header);
    char *row = tu_fmt("| tieralloc | %s |", fake);
    cr_expect(strstr(md, row) != NULL, "the allocators table does not give %s", fake);
    free(row);
    free(header);
    free(md);
    free(line);
    tu_result_free(&r);
    tu_rmtree(dir);
    free(spec);
    free(fake);
    free(out);
    free(dir);
}

/* a temporary output directory and the stand-in allocator as --alloc fake=PATH */
typedef struct {
    char *dir, *out, *fake, *spec;
} fixture;

static fixture fixture_open(void)
{
    check_fake_built();
    fixture f;
    f.dir = tu_tmpdir();
    f.out = tu_fmt("%s/out", f.dir);
    f.fake = fakealloc();
    f.spec = tu_fmt("fake=%s", f.fake);
    return f;
}

static void fixture_close(fixture *f)
{
    tu_rmtree(f->dir);
    free(f->spec);
    free(f->fake);
    free(f->out);
    free(f->dir);
}

/* tools/tieralloc-compare --suite programs --filter FILTER on glibc and the
 * stand-in, once each, with env extra entries; its exit checked; results.md */
static char *run_programs(fixture *f, char *const *env, const char *filter)
{
    tu_result_t r = compare(env, "--suite", "programs", "--filter", filter, "--alloc", f->spec,
                           "--allocators", "glibc,fake", "--baseline", "glibc",
                           "--repetitions", "1", "--out", f->out, NULL);
    ASSERT_EXIT(r, 0);
    char *md = slurp_in(f->out, "results.md");
    cr_assert(md, "no results.md:\n%s", r.err);
    tu_result_free(&r);
    return md;
}

Test(compare_runs, a_workload_over_its_budget_is_not_repeated, .timeout = 120)
{
    fixture f = fixture_open();
    char *log = tu_fmt("%s/runs.log", f.dir), *var = tu_fmt("TB_RUNLOG=%s", log);
    char *env[] = { var, NULL };
    tu_result_t r = compare(env, "--alloc", f.spec, "--allocators", "glibc,fake",
                           "--repetitions", "3", "--workload-budget", "0.000001", "--no-chart",
                           "--out", f.out, "--", "/bin/sh", "-c", "echo run >> \"$TB_RUNLOG\"",
                           NULL);
    ASSERT_EXIT(r, 0);
    char *runs = tu_slurp(log);
    cr_assert(runs, "the program did not run");
    cr_expect(strcmp(runs, "run\nrun\n") == 0, "one run per allocator expected:\n%s", runs);
    char *md = slurp_in(f.out, "results.md");
    cr_assert(md);
    cr_expect(strstr(md, "Not repeated") && strstr(md, "(1 run)"), "%s", md);
    char *v = tu_md_cell(md, "Wall time", "sh -c echo run >> \"$TB_RUNLOG\"", "fake");
    cr_expect(v && strstr(v, "x)"), "cell %s", v ? v : "-");
    free(v);
    free(md);
    free(runs);
    free(var);
    free(log);
    tu_result_free(&r);
    fixture_close(&f);
}

/* the programs suite, on two of its programs (sqlite3 and xz, installed by
 * tools/quickstart), with the stand-in allocator given by --alloc: every run's
 * output is checked by the tool, so a cell with a ratio is a checked run */
Test(compare_programs, suite_runs_real_programs_and_checks_them, .timeout = 240)
{
    fixture f = fixture_open();
    char *md = run_programs(&f, NULL, "^(sqlite3|xz)$");
    cr_expect(strstr(md, "Suite: real programs") != NULL, "%s", md);
    cr_expect(strstr(md, "Failed runs") == NULL, "%s", md);
    const char *rows[] = { "sqlite3: bulk insert, index, queries", "xz -T2 -1: 6 MiB of text" };
    const char *tables[] = { "Wall time", "Peak RSS" };
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 2; i++) {
            char *v = tu_md_cell(md, tables[t], rows[i], "fake");
            cr_expect(v && strstr(v, "x)"), "%s / %s: %s", tables[t], rows[i], v ? v : "-");
            free(v);
        }
    /* the inputs were written where the report is */
    char *sql = tu_fmt("%s/inputs/bulk.sql", f.out), *png = tu_fmt("%s/compare.png", f.out);
    cr_expect(access(sql, R_OK) == 0);
    cr_expect(tu_is_png(png), "no chart");
    free(png);
    free(sql);
    free(md);
    fixture_close(&f);
}

/* a program whose output is wrong fails its cell, with the reason */
Test(compare_programs, a_wrong_output_fails_the_run, .timeout = 120)
{
    fixture f = fixture_open();
    /* under the stand-in, sqlite3 runs and exits 0 but its output is lost */
    char *env[] = { "TB_FAKEALLOC=mute", NULL };
    char *md = run_programs(&f, env, "^sqlite3$");
    const char *row = "sqlite3: bulk insert, index, queries";
    char *v = tu_md_cell(md, "Wall time", row, "fake"), *g = tu_md_cell(md, "Wall time", row, "glibc");
    cr_expect(v && strstr(v, "FAILED"), "fake: %s", v ? v : "-");
    cr_expect(g && strstr(g, "1.00x"), "glibc: %s", g ? g : "-");
    cr_expect(strstr(md, "under fake: wrong output: expected") != NULL, "%s", md);
    free(g);
    free(v);
    free(md);
    fixture_close(&f);
}
