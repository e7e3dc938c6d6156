/* test_trace.c: TIERALLOC_TRACE recording and tools/tieralloc-replay.
 *
 * Programs run under the built library with TIERALLOC_TRACE set; their traces
 * are replayed (under glibc: the replayer is not linked with tieralloc), which
 * checks that it did the recorded calls, each operation as often as the trace
 * says, with the same peak live bytes.  Damaged traces must be refused with a
 * message, never a crash. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <sys/stat.h>

extern char **environ;
static char tmpdir[256];

static void setup(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ta_trace.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void) {
    char *argv[] = {"/bin/rm", "-rf", tmpdir, NULL};
    tu_child_t c;
    tu_run_exec(argv, environ, 30000, &c);
}

TestSuite(trace, .init = setup, .fini = teardown, .timeout = 120);

/* the caller's environment without TIERALLOC_* and LD_PRELOAD, plus extra */
static char **env_with(char *const *extra) {
    static char *env[256];
    int n = 0;
    for (char **e = environ; *e && n < 240; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "TIERALLOC_", 10) && strncmp(*e, "PYTHONMALLOC=", 13))
            env[n++] = *e;
    for (; extra && *extra && n < 254; extra++) env[n++] = *extra;
    env[n] = NULL;
    return env;
}

/* run argv under tieralloc with TIERALLOC_TRACE=tmpdir/name */
static void record(const char *name, char *const argv[], const char *input) {
    static char tr[600], pre[4200];
    snprintf(tr, sizeof tr, "TIERALLOC_TRACE=%s/%s", tmpdir, name);
    snprintf(pre, sizeof pre, "LD_PRELOAD=%s", tu_lib_path());
    char *extra[] = {tr, pre, "PYTHONMALLOC=malloc", NULL};
    tu_child_t c;
    if (input) {
        char *sh[] = {"/bin/sh", "-c", "exec \"$@\" < \"$0\"", (char *)input, NULL, NULL, NULL, NULL, NULL, NULL};
        for (int i = 0; argv[i] && i < 5; i++) sh[4 + i] = argv[i];
        tu_run_exec(sh, env_with(extra), 60000, &c);
    } else {
        tu_run_exec(argv, env_with(extra), 60000, &c);
    }
    cr_assert(c.exited && c.exit_code == 0, "%s under TIERALLOC_TRACE: %s\n%s", argv[0], tu_describe(&c), c.err);
}

static tu_child_t rp;
/* tools/tieralloc-replay FILE; its output in rp */
static void replay(const char *file) {
    char *argv[] = {(char *)tu_build_path("tools/tieralloc-replay"), (char *)file, NULL};
    tu_run_exec(argv, env_with(NULL), 60000, &rp);
    cr_assert(!rp.signaled && !rp.timed_out, "replay crashed: %s\n%s", tu_describe(&rp), rp.err);
}

static unsigned long long field(const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\n%s=", key);
    const char *p = strstr(rp.out, k);
    cr_assert_not_null(p, "no %s in the replay output:\n%s", key, rp.out);
    return strtoull(p + strlen(k), NULL, 10);
}

static void replay_ok(const char *name) {
    char f[600];
    snprintf(f, sizeof f, "%s/%s", tmpdir, name);
    replay(f);
    cr_assert(rp.exited && rp.exit_code == 0 && strstr(rp.out, "check=ok"), "replay of %s: %s\n%s\n%s", name,
              tu_describe(&rp), rp.out, rp.err);
    /* the counts it did are the ones the trace holds: "malloc=N (trace N)" */
    for (const char *p = rp.out; (p = strstr(p, " (trace ")); p++) {
        const char *eq = p;
        while (eq > rp.out && eq[-1] != '=') eq--;
        cr_assert_eq(strtoull(eq, NULL, 10), strtoull(p + 8, NULL, 10), "replay of %s:\n%s", name, rp.out);
    }
    cr_assert_gt(field("peak_live_bytes"), 0);
}

Test(trace, python3_records_and_replays) {
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("no /usr/bin/python3");
    char *argv[] = {"/usr/bin/python3", "-c", "d = {str(i): [i] * (i % 9) for i in range(20000)}; print(len(d))", NULL};
    record("py.bin", argv, NULL);
    replay_ok("py.bin");
    cr_assert_gt(field("malloc"), 20000, "%s", rp.out);
    cr_assert_gt(field("free"), 10000, "%s", rp.out);
    cr_assert_eq(field("peak_live_bytes"), field("replayed_peak_live_bytes"), "%s", rp.out);
}

Test(trace, sort_records_and_replays) {
    char in[600];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 20000; i++) fprintf(f, "%d line %d\n", (i * 7919) % 20000, i);
    fclose(f);
    char *argv[] = {"/usr/bin/sort", NULL};
    record("sort.bin", argv, in);
    replay_ok("sort.bin");
    cr_assert_gt(field("malloc") + field("realloc"), 10, "%s", rp.out);
    cr_assert_eq(field("peak_live_bytes"), field("replayed_peak_live_bytes"), "%s", rp.out);
}

Test(trace, threads_and_cross_thread_frees) {
    char *argv[] = {(char *)tu_build_path("tests/trace_prog"), "threads", NULL};
    record("thr.bin", argv, NULL);
    replay_ok("thr.bin");
    cr_assert_geq(field("threads"), 6, "%s", rp.out); /* main, 4 workers, the consumer */
    /* the consumer's 2000 frees of the main thread's blocks are in the trace */
    cr_assert_geq(field("free"), 4 * 5000 * 6 / 7 + 2000, "%s", rp.out);
    cr_assert_geq(field("calloc"), 4 * 714, "%s", rp.out);
    cr_assert_geq(field("realloc"), 4 * 714, "%s", rp.out);
    cr_assert_geq(field("aligned_alloc"), 4 * 714, "%s", rp.out);
    cr_assert_geq(field("posix_memalign"), 4 * 714, "%s", rp.out);
    /* tools/tieralloc-trace-report sees the consumer's frees as cross-thread */
    char f[600];
    snprintf(f, sizeof f, "%s/thr.bin", tmpdir);
    char tool[4200];
    snprintf(tool, sizeof tool, "%s/tools/tieralloc-trace-report", tu_src_dir());
    char *rep[] = {"/usr/bin/env", "python3", tool, f, NULL};
    tu_child_t c;
    tu_run_exec(rep, env_with(NULL), 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "trace-report: %s\n%s", tu_describe(&c), c.err);
    const char *x = strstr(c.out, "frees of a block another thread allocated: ");
    cr_assert_not_null(x, "%s", c.out);
    cr_assert_geq(strtoull(x + 43, NULL, 10), 2000, "%s", c.out);
    cr_assert_not_null(strstr(c.out, "aligned_alloc"), "%s", c.out);
}

Test(trace, thread_churn) {
    char *argv[] = {(char *)tu_build_path("tests/trace_prog"), "churn", NULL};
    record("churn.bin", argv, NULL);
    replay_ok("churn.bin");
    cr_assert_geq(field("threads"), 65, "%s", rp.out);
    cr_assert_geq(field("malloc"), 64 * 2142, "%s", rp.out);
}

/* Threads that free in a destructor of their own, after the library's has
 * run: those frees are in the trace (flushed, not left in a buffer no thread
 * owns any more), every block freed. */
Test(trace, frees_in_a_threads_last_destructors_are_recorded) {
    char *argv[] = {(char *)tu_build_path("tests/trace_prog"), "late", NULL};
    record("late.bin", argv, NULL);
    replay_ok("late.bin");
    /* each thread: 51 mallocs and 10 pairs in its destructor, all freed */
    cr_assert_geq(field("malloc"), 32 * 61, "%s", rp.out);
    cr_assert_geq(field("free"), 32 * 61, "%s", rp.out);
}

Test(trace, fork_gives_the_child_its_own_file) {
    char *argv[] = {(char *)tu_build_path("tests/trace_prog"), "fork", NULL};
    record("fork.%p.bin", argv, NULL);
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "fork.", 5)) continue;
        n++;
        replay_ok(e->d_name);
        cr_assert_geq(field("calloc"), 285, "%s: %s", e->d_name, rp.out); /* 2000 calls, 1 in 7 calloc */
    }
    closedir(d);
    cr_assert_eq(n, 2, "parent and child traces expected, found %d", n);
}

static void write_bytes(const char *name, const void *p, size_t n) {
    char f[600];
    snprintf(f, sizeof f, "%s/%s", tmpdir, name);
    FILE *o = fopen(f, "w");
    cr_assert_not_null(o);
    if (n) cr_assert_eq(fwrite(p, 1, n, o), n);
    fclose(o);
}

static void refused(const char *name, const char *what) {
    char f[600];
    snprintf(f, sizeof f, "%s/%s", tmpdir, name);
    replay(f);
    cr_assert(rp.exited && rp.exit_code == 2, "%s: %s\n%s", name, tu_describe(&rp), rp.err);
    cr_assert(strstr(rp.err, "not a usable trace") && strstr(rp.err, what), "%s: expected \"%s\":\n%s", name, what,
              rp.err);
}

Test(trace, damaged_traces_are_refused) {
    char *argv[] = {(char *)tu_build_path("tests/trace_prog"), "threads", NULL};
    record("good.bin", argv, NULL);
    char f[600];
    snprintf(f, sizeof f, "%s/good.bin", tmpdir);
    FILE *in = fopen(f, "r");
    cr_assert_not_null(in);
    static unsigned char buf[8 << 20];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    cr_assert(n > 1000 && n < sizeof buf);
    write_bytes("empty.bin", buf, 0);
    refused("empty.bin", "no TATRACE1 header");
    write_bytes("text.bin", "hello, world\n", 13);
    refused("text.bin", "no TATRACE1 header");
    write_bytes("cut.bin", buf, n - 5);
    refused("cut.bin", "truncated");
    write_bytes("cuthdr.bin", buf, 8 + 10);
    refused("cuthdr.bin", "truncated chunk header");
    buf[n / 2] ^= 0x5a;
    write_bytes("flip.bin", buf, n);
    refused("flip.bin", "damaged");
    buf[n / 2] ^= 0x5a;
    /* a whole chunk left out: refused (frees of blocks the trace never
     * allocated, ids out of step) or, if that chunk stood alone, fewer calls */
    replay(f);
    cr_assert(strstr(rp.out, "check=ok"), "%s", rp.out);
    unsigned long long all = field("calls");
    uint32_t first = buf[8] | buf[9] << 8 | buf[10] << 16 | (uint32_t)buf[11] << 24;
    memmove(buf + 8, buf + 8 + 16 + first, n - 8 - 16 - first);
    write_bytes("nochunk.bin", buf, n - 16 - first);
    snprintf(f, sizeof f, "%s/nochunk.bin", tmpdir);
    replay(f);
    cr_assert(rp.exited, "%s", tu_describe(&rp));
    if (rp.exit_code == 0) cr_assert_lt(field("calls"), all, "%s", rp.out);
    else cr_assert(strstr(rp.err, "not a usable trace"), "%s", rp.err);
}
