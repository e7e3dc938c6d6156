/* test_profile.c: heap profiles and tools/tieralloc-run.
 *
 * tests/prof_prog (built -O0 -fno-omit-frame-pointer) allocates 64 MiB in
 * 64 KiB blocks in big_allocator and 1 MiB in 64-byte blocks in
 * small_allocator; it runs under tools/tieralloc-run, which preloads the
 * library.  Debian's google-pprof must then name big_allocator first in its
 * top list (the test is skipped when google-pprof is not installed).  The
 * script's own behaviour (help, errors, exit status, options) is tested too. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <sys/stat.h>

extern char **environ;

static char run_path[4096], prog_path[4096], tmpdir[256];

static void setup(void) {
    /* configure writes tools/tieralloc-run (its version) in the build tree */
    snprintf(run_path, sizeof run_path, "%s", tu_build_path("tools/tieralloc-run"));
    snprintf(prog_path, sizeof prog_path, "%s", tu_build_path("tests/prof_prog"));
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ta_profile.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void) {
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(tmpdir);
}

TestSuite(profile, .init = setup, .fini = teardown);

/* The environment without any TIERALLOC_* or LD_PRELOAD of the caller's. */
static char **clean_env(void) {
    static char *env[256];
    int n = 0;
    for (char **e = environ; *e && n < 250; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "TIERALLOC_", 10)) env[n++] = *e;
    env[n] = NULL;
    return env;
}

/* tieralloc-run --lib <built library> args... */
static void run_tool(tu_child_t *c, const char *const *args) {
    char *argv[32];
    int n = 0;
    argv[n++] = "/bin/sh";
    argv[n++] = run_path;
    argv[n++] = "--lib";
    argv[n++] = (char *)tu_lib_path();
    for (; *args && n < 31; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    tu_run_exec(argv, clean_env(), 120000, c);
}

static size_t read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return n;
}

/* Is prog in PATH? */
static int have_program(const char *prog) {
    const char *path = getenv("PATH");
    char buf[4096];
    if (!path) path = "/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        snprintf(buf, sizeof buf, "%.*s/%s", (int)len, path, prog);
        if (access(buf, X_OK) == 0) return 1;
        path += len;
        if (*path == ':') path++;
    }
    return 0;
}

/* "heap profile: N: B [N2: B2] @ heapprofile" */
static void parse_header(const char *text, unsigned long long v[4]) {
    cr_assert_eq(sscanf(text, "heap profile: %llu: %llu [%llu: %llu] @ heapprofile", &v[0], &v[1], &v[2], &v[3]),
                 4, "not a heap profile header: %.200s", text);
}

/* google-pprof --text [opt] prog profile; returns its output (static). */
static const char *pprof_text(const char *opt, const char *profile) {
    static tu_child_t c;
    char *argv[] = {"/bin/sh", "-c", "exec google-pprof --text $1 \"$2\" \"$3\"", "sh", (char *)opt, prog_path,
                    (char *)profile, NULL};
    tu_run_exec(argv, clean_env(), 120000, &c);
    cr_assert(c.exited && c.exit_code == 0, "google-pprof failed: %s\n%s", tu_describe(&c), c.out);
    return c.out;
}

/* The function named on the first line after "Total:", and its flat MB. */
static void top_entry(const char *out, char *fn, size_t cap, double *mb) {
    const char *t = strstr(out, "Total:");
    cr_assert_not_null(t, "no Total: line in google-pprof's output:\n%s", out);
    const char *line = strchr(t, '\n');
    cr_assert_not_null(line, "%s", out);
    line++;
    char name[256];
    double flat, pct1, pct2, cum, pct3;
    cr_assert_eq(sscanf(line, "%lf %lf%% %lf%% %lf %lf%% %255s", &flat, &pct1, &pct2, &cum, &pct3, name), 6,
                 "cannot read the top line of:\n%s", out);
    snprintf(fn, cap, "%s", name);
    *mb = flat;
}

Test(profile, google_pprof_puts_big_allocator_at_the_top) {
    if (!have_program("google-pprof")) cr_skip_test("google-pprof not installed (package google-perftools)");
    char opt[512];
    snprintf(opt, sizeof opt, "%s/heap.%%p", tmpdir);
    tu_child_t c;
    const char *args[] = {"--profile", opt, prog_path, "sites", NULL};
    run_tool(&c, args);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    char path[512];
    snprintf(path, sizeof path, "%s/heap.%d", tmpdir, (int)c.pid); /* the script execs the program */
    static char text[1 << 16];
    read_file(path, text, sizeof text);
    unsigned long long h[4];
    parse_header(text, h);
    /* 65 MiB live: the estimate is within a few standard deviations (~9%) */
    double mib = (double)h[1] / (1 << 20);
    cr_assert(mib > 65 * 0.55 && mib < 65 * 1.45, "profile estimates %.1f MiB live, 65 MiB are", mib);
    cr_assert_not_null(strstr(text, "\nMAPPED_LIBRARIES:\n"));
    cr_assert_not_null(strstr(text, "prof_prog"), "the maps do not name the program");

    const char *out = pprof_text("", path);
    char fn[256];
    double mb;
    top_entry(out, fn, sizeof fn, &mb);
    cr_assert_str_eq(fn, "big_allocator", "google-pprof's top entry is %s:\n%s", fn, out);
    cr_assert(mb > 64 * 0.55 && mb < 64 * 1.45, "big_allocator holds %.1f MB by the profile, 64 are live", mb);
    /* and the stacks go up through main */
    cr_assert_not_null(strstr(out, " main\n"), "main is not in the stacks:\n%s", out);
}

Test(profile, ta_profile_dump_on_demand_live_then_freed) {
    char live[512], freed[512];
    snprintf(live, sizeof live, "%s/live.prof", tmpdir);
    snprintf(freed, sizeof freed, "%s/freed.%%p.prof", tmpdir);
    tu_child_t c;
    /* an explicit rate turns recording on (without it nothing is recorded) */
    const char *args[] = {"--sample-bytes", "512k", prog_path, "dump", live, freed, NULL};
    run_tool(&c, args);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    static char text[1 << 16];
    unsigned long long h[4], g[4];
    read_file(live, text, sizeof text);
    parse_header(text, h);
    double mib = (double)h[1] / (1 << 20);
    cr_assert(mib > 65 * 0.55 && mib < 65 * 1.45, "live profile estimates %.1f MiB, 65 MiB are live", mib);
    cr_assert_geq(h[3], h[1], "allocated in all < live");
    cr_assert_not_null(strstr(text, "] @ 0x"), "no stack in the profile:\n%.500s", text);
    cr_assert_not_null(strstr(text, "\nMAPPED_LIBRARIES:\n"));

    char freed_path[512];
    snprintf(freed_path, sizeof freed_path, "%s/freed.%d.prof", tmpdir, (int)c.pid);
    read_file(freed_path, text, sizeof text);
    parse_header(text, g);
    cr_assert_eq(g[0], 0, "%llu objects live after everything was freed", g[0]);
    cr_assert_eq(g[1], 0, "%llu bytes live after everything was freed", g[1]);
    cr_assert_eq(g[3], h[3], "the allocated totals changed without allocations (%llu -> %llu)", h[3], g[3]);

    if (!have_program("google-pprof")) cr_skip_test("google-pprof not installed: profiles not read back");
    /* what was allocated, even though it is all freed now */
    const char *out = pprof_text("--alloc_space", freed_path);
    char fn[256];
    double mb;
    top_entry(out, fn, sizeof fn, &mb);
    cr_assert_str_eq(fn, "big_allocator", "top allocation site %s:\n%s", fn, out);
}

/* ---- tieralloc-run ------------------------------------------------------------------- */
Test(profile, run_help_and_usage_errors) {
    tu_child_t c;
    const char *help[] = {"--help", NULL};
    run_tool(&c, help);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.out, "usage: tieralloc-run"), "%s", c.out);
    cr_assert_not_null(strstr(c.out, "--profile PATH"));
    cr_assert_not_null(strstr(c.out, "--json PATH"));
    cr_assert_not_null(strstr(c.out, "--stats"));

    const char *none[] = {NULL};
    run_tool(&c, none);
    cr_assert(c.exited && c.exit_code == 2, "no program: %s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "usage:"));

    const char *bad[] = {"--frobnicate", "true", NULL};
    run_tool(&c, bad);
    cr_assert(c.exited && c.exit_code == 2, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "--frobnicate"), "%s", c.err);

    const char *noarg[] = {"--json", NULL};
    run_tool(&c, noarg);
    cr_assert(c.exited && c.exit_code == 2, "%s", tu_describe(&c));

    const char *badrate[] = {"--sample-bytes", "lots", "true", NULL};
    run_tool(&c, badrate);
    cr_assert(c.exited && c.exit_code == 2, "%s", tu_describe(&c));
}

Test(profile, run_missing_or_unrunnable_program) {
    tu_child_t c;
    const char *missing[] = {"ta-no-such-program-xyz", "arg", NULL};
    run_tool(&c, missing);
    cr_assert(c.exited && c.exit_code == 127, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "ta-no-such-program-xyz"), "message does not name it: %s", c.err);
    cr_assert_not_null(strstr(c.err, "no such program"), "%s", c.err);

    char path[512];
    snprintf(path, sizeof path, "%s/nothing-here", tmpdir);
    const char *missing_path[] = {path, NULL};
    run_tool(&c, missing_path);
    cr_assert(c.exited && c.exit_code == 127, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, path), "%s", c.err);

    /* a file that is not executable */
    snprintf(path, sizeof path, "%s/not-exec", tmpdir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("#!/bin/sh\nexit 0\n", f);
    fclose(f);
    chmod(path, 0644);
    const char *noexec[] = {path, NULL};
    run_tool(&c, noexec);
    cr_assert(c.exited && c.exit_code == 126, "%s", tu_describe(&c));

    /* a library that does not exist */
    char *argv[] = {"/bin/sh", run_path, "--lib", "/nonexistent/libtieralloc.so", "true", NULL};
    tu_run_exec(argv, clean_env(), 60000, &c);
    cr_assert(c.exited && c.exit_code == 127, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "/nonexistent/libtieralloc.so"), "%s", c.err);
}

Test(profile, run_passes_exit_status_signals_and_arguments_through) {
    tu_child_t c;
    const char *e37[] = {prog_path, "exit", "37", NULL};
    run_tool(&c, e37);
    cr_assert(c.exited && c.exit_code == 37, "%s", tu_describe(&c));

    const char *e0[] = {prog_path, "exit", "0", NULL};
    run_tool(&c, e0);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(c.err_len, 0, "stderr without options: %s", c.err);

    const char *sig[] = {"sh", "-c", "kill -USR1 $$", NULL};
    run_tool(&c, sig);
    cr_assert(c.signaled && c.signal == SIGUSR1, "%s", tu_describe(&c));

    /* arguments arrive unchanged (spaces, an option-looking one), and the
     * library is preloaded */
    const char *echo[] = {"--", "sh", "-c", "printf '%s|' \"$@\"; printf '%s' \"$LD_PRELOAD\"", "sh", "a b",
                          "--stats", "", NULL};
    run_tool(&c, echo);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(strncmp(c.out, "a b|--stats||", 13) == 0, "arguments arrived as %s", c.out);
    cr_assert_not_null(strstr(c.out, "libtieralloc.so"), "LD_PRELOAD is %s", c.out + 13);
}

Test(profile, run_stats_json_and_sample_options) {
    tu_child_t c;
    const char *st[] = {"--stats", prog_path, "exit", "5", NULL};
    run_tool(&c, st);
    cr_assert(c.exited && c.exit_code == 5, "%s", tu_describe(&c));
    cr_assert_not_null(strstr(c.err, "statistics, pid"), "no report: %s", c.err);
    cr_assert_not_null(strstr(c.err, "in use by the program"));
    cr_assert_eq(c.out_len, 0, "%s", c.out);

    /* --json with a relative path lands in the caller's directory even though
     * the program changes directory */
    char script[1024];
    snprintf(script, sizeof script, "cd '%s' && exec /bin/sh '%s' --lib '%s' --json rel.%%p.json sh -c 'cd / && exec \"$0\" exit 0' '%s'",
             tmpdir, run_path, tu_lib_path(), prog_path);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    tu_run_exec(argv, clean_env(), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    char path[512];
    snprintf(path, sizeof path, "%s/rel.%d.json", tmpdir, (int)c.pid);
    static char text[1 << 17];
    size_t n = read_file(path, text, sizeof text);
    cr_assert_gt(n, 100);
    cr_assert_eq(text[0], '{');
    cr_assert_not_null(strstr(text, "\"inuse_bytes\": "));
    cr_assert_not_null(strstr(text, "\"classes\": ["));

    /* --sample-bytes reaches the library */
    unsigned long long rate, samples, live;
    const char *off[] = {"--sample-bytes", "0", prog_path, "stats", NULL};
    run_tool(&c, off);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(sscanf(c.out, "rate=%llu samples=%llu live=%llu", &rate, &samples, &live), 3, "%s", c.out);
    cr_assert_eq(rate, 0);
    cr_assert_eq(samples, 0);
    const char *on[] = {"--sample-bytes=8k", prog_path, "stats", NULL};
    run_tool(&c, on);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(sscanf(c.out, "rate=%llu samples=%llu live=%llu", &rate, &samples, &live), 3, "%s", c.out);
    cr_assert_eq(rate, 8192);
    cr_assert_geq(samples, 1000, "64 KiB blocks at 1 in 8 KiB: nearly all 1024 should be sampled, %llu were",
                  samples);
}
