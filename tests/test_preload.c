/* test_preload: real programs nobody here wrote, run with
 * LD_PRELOAD=$TA_BUILDDIR/.libs/libtieralloc.so, their output checked against
 * the same run under glibc malloc (or against a value computed here).
 *
 * This binary is not linked with tieralloc; only the programs it starts load
 * it.  Each program runs in its own process group with a deadline: a hang is
 * killed and fails the test.  Preloaded runs set TIERALLOC_STATS=1 and the
 * test checks that tieralloc's report is on stderr, so a run where the library
 * was not loaded (or did not serve the process) cannot pass. */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* What the statistics report printed at exit (TIERALLOC_STATS=1) contains. */
#define STATS_MARK_1 "tieralloc"
#define STATS_MARK_2 "mapped"

#define RUN_TIMEOUT_S 60 /* any single program run */

/* ---- paths ------------------------------------------------------------------ */
static char builddir[PATH_MAX];
static char libpath[PATH_MAX];
static char tmpdir[PATH_MAX];

/* snprintf into a PATH_MAX buffer; a path too long fails the test */
static void __attribute__((format(printf, 2, 3))) path_fmt(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_MAX, fmt, ap);
    va_end(ap);
    cr_assert(n >= 0 && n < PATH_MAX, "path too long");
}

/* TA_BUILDDIR from make check, else the parent of this binary's directory. */
static void find_builddir(void) {
    const char *b = getenv("TA_BUILDDIR");
    if (b && *b) {
        path_fmt(builddir, "%s", b);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        cr_assert(n > 0, "readlink /proc/self/exe: %s", strerror(errno));
        exe[n] = 0;
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            cr_assert(slash != NULL);
            *slash = 0;
        }
        path_fmt(builddir, "%s", exe);
    }
    path_fmt(libpath, "%s/.libs/libtieralloc.so", builddir);
}

static void setup(void) {
    find_builddir();
    cr_assert(access(libpath, R_OK) == 0, "%s: %s (build the library first)", libpath, strerror(errno));
    const char *t = getenv("TMPDIR");
    path_fmt(tmpdir, "%s/ta_preload.XXXXXX", t && *t ? t : "/tmp");
    cr_assert(mkdtemp(tmpdir) != NULL, "mkdtemp %s: %s", tmpdir, strerror(errno));
}

static void teardown(void);

TestSuite(preload, .init = setup, .fini = teardown, .timeout = 150);

/* ---- running a program ---------------------------------------------------- */
typedef struct run_spec {
    const char *const *argv;  /* argv[0] is an absolute path */
    const char *const *env;   /* extra VAR=VALUE entries, NULL-terminated, or NULL */
    bool preload;             /* LD_PRELOAD=libtieralloc.so */
    bool stats;               /* with preload: TIERALLOC_STATS=1 */
    const char *cwd;          /* NULL: the temporary directory */
    const char *in_path;      /* stdin; NULL: /dev/null */
    const char *out_path;     /* stdout to this file; NULL: captured */
    int timeout_s;            /* 0: RUN_TIMEOUT_S */
} run_spec_t;

typedef struct run_result {
    int status; /* from waitpid */
    bool timed_out;
    char *out, *err;
    size_t out_len, err_len;
    char what[160];
} run_t;

typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        cr_assert(b->p != NULL, "out of memory");
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static bool drop_from_env(const char *e) {
    static const char *const drop[] = {"LD_PRELOAD=", "TIERALLOC_", "LC_ALL=", "LANG=", "LANGUAGE=",
                                       "PYTHON", "MALLOC_", "GLIBC_TUNABLES="};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strncmp(e, drop[i], strlen(drop[i])) == 0) return true;
    return false;
}

static void child_exec(const run_spec_t *s, int out_fd, int err_fd, char *const *envp) {
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < 32; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    int in = open(s->in_path ? s->in_path : "/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) _exit(126);
    if (chdir(s->cwd ? s->cwd : tmpdir) != 0) _exit(126);
    execve(s->argv[0], (char *const *)s->argv, envp);
    static const char msg[] = "test_preload: exec failed\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
    _exit(127);
}

/* Runs the program and collects its output.  Fails the test only when the
 * program cannot be started; callers check the result (expect_success...). */
static run_t run(const run_spec_t *s) {
    run_t r;
    memset(&r, 0, sizeof r);
    int len = snprintf(r.what, sizeof r.what, "%s%s", s->preload ? "[tieralloc] " : "[glibc] ", s->argv[0]);
    for (int i = 1; s->argv[i] && len < (int)sizeof r.what - 1; i++)
        len += snprintf(r.what + len, sizeof r.what - len, " %s", s->argv[i]);

    /* environment: ours minus allocator/locale settings, plus LC_ALL=C */
    size_t n_env = 0, n_extra = 0;
    while (environ[n_env]) n_env++;
    while (s->env && s->env[n_extra]) n_extra++;
    char **envp = calloc(n_env + n_extra + 4, sizeof *envp);
    cr_assert(envp != NULL);
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (!drop_from_env(environ[i])) envp[k++] = environ[i];
    static char preload_var[PATH_MAX + 16];
    snprintf(preload_var, sizeof preload_var, "LD_PRELOAD=%s", libpath);
    envp[k++] = "LC_ALL=C";
    if (s->preload) {
        envp[k++] = preload_var;
        if (s->stats) envp[k++] = "TIERALLOC_STATS=1";
    }
    for (size_t i = 0; i < n_extra; i++) envp[k++] = (char *)s->env[i];
    envp[k] = NULL;

    int outp[2] = {-1, -1}, errp[2];
    int out_fd;
    if (s->out_path) {
        out_fd = open(s->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert(out_fd >= 0, "%s: %s", s->out_path, strerror(errno));
    } else {
        cr_assert(pipe2(outp, O_CLOEXEC) == 0);
        out_fd = outp[1];
    }
    cr_assert(pipe2(errp, O_CLOEXEC) == 0);

    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) child_exec(s, out_fd, errp[1], envp);
    setpgid(pid, pid); /* also in the parent, so the kill below cannot miss */
    close(out_fd);
    close(errp[1]);
    free(envp);

    buf_t out = {0}, err = {0};
    struct pollfd pf[2] = {{.fd = s->out_path ? -1 : outp[0], .events = POLLIN},
                           {.fd = errp[0], .events = POLLIN}};
    const double deadline = now_s() + (s->timeout_s ? s->timeout_s : RUN_TIMEOUT_S);
    char chunk[65536];
    while (pf[0].fd >= 0 || pf[1].fd >= 0) {
        double left = deadline - now_s();
        if (left <= 0) {
            r.timed_out = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            break;
        }
        int n = poll(pf, 2, (int)(left * 1000) + 1);
        if (n < 0 && errno == EINTR) continue;
        cr_assert(n >= 0, "poll: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (pf[i].fd < 0 || !pf[i].revents) continue;
            ssize_t got = read(pf[i].fd, chunk, sizeof chunk);
            if (got > 0) {
                buf_add(i ? &err : &out, chunk, (size_t)got);
            } else if (got == 0 || errno != EINTR) {
                close(pf[i].fd);
                pf[i].fd = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (pf[i].fd >= 0) close(pf[i].fd);
    /* the output is closed: the program should be exiting; give it the rest of
     * the deadline, then kill it */
    for (;;) {
        pid_t w = waitpid(pid, &r.status, WNOHANG);
        if (w == pid) break;
        cr_assert(w == 0, "waitpid: %s", strerror(errno));
        if (now_s() > deadline && !r.timed_out) {
            r.timed_out = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
        }
        usleep(2000);
    }
    kill(-pid, SIGKILL); /* stray grandchildren, if any */
    if (!out.p) buf_add(&out, "", 0);
    if (!err.p) buf_add(&err, "", 0);
    r.out = out.p;
    r.out_len = out.len;
    r.err = err.p;
    r.err_len = err.len;
    return r;
}

static void run_free(run_t *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

static bool exited_ok(const run_t *r) {
    return !r->timed_out && WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

static void expect_success(const run_t *r) {
    cr_assert(!r->timed_out, "%s: killed after the deadline; stderr: %.1500s", r->what, r->err);
    cr_assert(!WIFSIGNALED(r->status), "%s: killed by signal %d; stderr: %.1500s", r->what,
              WTERMSIG(r->status), r->err);
    cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0, "%s: exit status %d; stderr: %.1500s",
              r->what, WEXITSTATUS(r->status), r->err);
}

static bool has_stats_report(const char *err) {
    return strstr(err, STATS_MARK_1) && strstr(err, STATS_MARK_2);
}

/* A preloaded run that asked for statistics must show the report. */
static void expect_report(const run_t *r) {
    cr_assert(has_stats_report(r->err), "%s: no tieralloc statistics report on stderr (was the library "
              "loaded?); stderr: %.1500s", r->what, r->err);
}

/* ... one report per process, from at least `n` processes */
static void expect_reports(const run_t *r, int n) {
    expect_report(r);
    int count = 0;
    for (const char *p = r->err; (p = strstr(p, STATS_MARK_2)); p++) count++;
    cr_assert(count >= n, "%s: %d statistics reports on stderr, expected one from each of %d processes; "
              "stderr: %.3000s", r->what, count, n, r->err);
}

/* Same bytes on stdout; on a difference, say where. */
static void expect_same_output(const run_t *a, const run_t *b) {
    size_t n = a->out_len < b->out_len ? a->out_len : b->out_len, i = 0;
    while (i < n && a->out[i] == b->out[i]) i++;
    if (i == n && a->out_len == b->out_len) return;
    size_t from = i > 40 ? i - 40 : 0;
    cr_assert_fail("outputs differ at byte %zu (lengths %zu and %zu)\n%s:\n  ...%.120s\n%s:\n  ...%.120s", i,
                   a->out_len, b->out_len, a->what, a->out + from, b->what, b->out + from);
}

/* Runs `argv` under glibc and under tieralloc (with TIERALLOC_STATS=1);
 * both must succeed with the same stdout.  Returns the tieralloc run. */
static run_t run_both(const char *const *argv, const char *const *env, const char *in_path) {
    run_spec_t s = {.argv = argv, .env = env, .in_path = in_path};
    run_t plain = run(&s);
    expect_success(&plain);
    s.preload = s.stats = true;
    run_t ta = run(&s);
    expect_success(&ta);
    expect_same_output(&plain, &ta);
    expect_report(&ta);
    run_free(&plain);
    return ta;
}

static const char *find_prog(const char *name) {
    static char path[4][PATH_MAX];
    static int next;
    static const char *const dirs[] = {"/usr/bin", "/bin", "/usr/local/bin"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char *p = path[next];
        path_fmt(p, "%s/%s", dirs[i], name);
        if (access(p, X_OK) == 0) {
            next = (next + 1) % 4;
            return p;
        }
    }
    return NULL;
}

static const char *need_prog(const char *name) {
    const char *p = find_prog(name);
    cr_assert(p != NULL, "%s is not installed (tools/quickstart installs it)", name);
    return p;
}

static void teardown(void) {
    if (!tmpdir[0]) return;
    const char *rm = find_prog("rm");
    if (!rm) return;
    const char *argv[] = {rm, "-rf", tmpdir, NULL};
    run_spec_t s = {.argv = argv, .cwd = "/"};
    run_t r = run(&s);
    run_free(&r);
}

/* ---- generated data ----------------------------------------------------------- */
static uint64_t rng_state;
static uint64_t rnd(void) { /* splitmix64: the same sequence on every run */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void tmp_path(char *out, const char *name) { path_fmt(out, "%s/%s", tmpdir, name); }

static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f != NULL, "%s: %s", path, strerror(errno));
    cr_assert(fwrite(data, 1, n, f) == n);
    cr_assert(fclose(f) == 0);
}

/* `n` lines "word<sp>number<sp>word", lengths 1..~90, with repeats. */
static char *make_lines(size_t n, size_t *len_out) {
    buf_t b = {0};
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-";
    char line[128];
    for (size_t i = 0; i < n; i++) {
        uint64_t x = rnd();
        if (i > 10 && x % 10 == 0) { /* repeat an earlier key */
            x = rnd() % 1000;
        }
        int wl = 1 + (int)(x % 40), pos = 0;
        uint64_t y = rnd();
        for (int j = 0; j < wl; j++) {
            line[pos++] = alpha[y % (sizeof alpha - 1)];
            y = y / 7 + (y % 7) * 0x2545f4914f6cdd1dull;
        }
        pos += snprintf(line + pos, sizeof line - pos, " %llu ", (unsigned long long)(rnd() % 100000));
        int wl2 = (int)(rnd() % 40);
        for (int j = 0; j < wl2; j++) line[pos++] = alpha[rnd() % 26];
        line[pos++] = '\n';
        buf_add(&b, line, (size_t)pos);
    }
    *len_out = b.len;
    return b.p;
}

/* ---- (a) python ------------------------------------------------------------------ */
static const char py_script[] =
    "import hashlib, json, random, threading\n"
    "rng = random.Random(20240601)\n"
    "h = hashlib.sha256()\n"
    "def feed(x): h.update(repr(x).encode())\n"
    "# dicts of strings to lists, with deletions\n"
    "d = {}\n"
    "for i in range(150000):\n"
    "    d['k%07d-%s' % (i, 'z' * (i % 23))] = [i, str(i * i), (i % 7, i % 11)]\n"
    "for i in range(0, 150000, 3):\n"
    "    del d['k%07d-%s' % (i, 'z' * (i % 23))]\n"
    "feed(len(d)); feed(sum(v[0] for v in d.values())); feed(list(d)[::1001])\n"
    "# a big sort of floats and of strings\n"
    "nums = [rng.random() for _ in range(300000)]\n"
    "words = [''.join(rng.choice('abcdefghij') for _ in range(rng.randint(1, 12))) for _ in range(80000)]\n"
    "nums.sort(); words.sort(key=lambda w: (len(w), w))\n"
    "feed(nums[::997]); feed(words[::991])\n"
    "# json round trip of a big structure\n"
    "doc = {'items': [{'id': i, 'name': 'item%d' % i, 'tags': ['t%d' % (i % 13)] * (i % 5),\n"
    "                  'score': i / 7, 'sub': {'a': [i] * (i % 3)}} for i in range(50000)]}\n"
    "text = json.dumps(doc, sort_keys=True)\n"
    "back = json.loads(text)\n"
    "assert back == doc\n"
    "h.update(text.encode())\n"
    "# big integers\n"
    "f = 1\n"
    "for i in range(2, 5000): f *= i\n"
    "p = pow(3, 200000) * f\n"
    "feed(hex(f)[-64:]); feed(p.bit_length()); feed(p % 1000000007); feed(hex(p // (f + 1))[:64])\n"
    "# threads allocating and freeing\n"
    "out = {}\n"
    "def work(k):\n"
    "    acc = [('%d:%d' % (k, i)) * (1 + i % 4) for i in range(40000)]\n"
    "    acc = {s: len(s) for s in acc}\n"
    "    out[k] = sum(acc.values())\n"
    "ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]\n"
    "for t in ts: t.start()\n"
    "for t in ts: t.join()\n"
    "feed(sorted(out.items()))\n"
    "print('python ok', h.hexdigest())\n";

Test(preload, python) {
    const char *py = "/usr/bin/python3";
    if (access(py, X_OK) != 0) cr_skip_test("%s is not installed", py);
    char script[PATH_MAX];
    tmp_path(script, "alloc.py");
    write_file(script, py_script, sizeof py_script - 1);
    const char *argv[] = {py, "-s", "-B", script, NULL};
    const char *env[] = {"PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", NULL};
    run_t ta = run_both(argv, env, NULL);
    cr_assert(strncmp(ta.out, "python ok ", 10) == 0 && ta.out_len == 10 + 64 + 1, "unexpected output: %s",
              ta.out);
    run_free(&ta);
}

/* ---- (b) sort ------------------------------------------------------------------ */
static int cmp_bytes(const char *a, size_t na, const char *b, size_t nb) {
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

/* Order-independent fingerprint of a set of lines: sum of a hash per line. */
static uint64_t lines_fingerprint(const char *p, size_t n, size_t *count) {
    uint64_t sum = 0;
    *count = 0;
    const char *end = p + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        uint64_t h = 1469598103934665603ull;
        for (const char *c = p; c < nl; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
        sum += h * 0x9e3779b97f4a7c15ull + (h >> 17);
        (*count)++;
        p = nl + 1;
    }
    return sum;
}

Test(preload, sort) {
    const char *sort = need_prog("sort");
    rng_state = 1;
    size_t len;
    char *data = make_lines(300000, &len);
    char in[PATH_MAX];
    tmp_path(in, "lines.txt");
    write_file(in, data, len);

    /* in memory, with two threads */
    const char *argv1[] = {sort, "--parallel=2", "-S", "256M", in, NULL};
    run_t ta = run_both(argv1, NULL, NULL);
    /* independently: the output is the input's lines, in byte order */
    size_t n_in, n_out;
    uint64_t f_in = lines_fingerprint(data, len, &n_in), f_out = lines_fingerprint(ta.out, ta.out_len, &n_out);
    cr_assert_eq(n_in, 300000);
    cr_assert_eq(n_out, n_in, "sort printed %zu lines of %zu", n_out, n_in);
    cr_assert(f_in == f_out, "sort's output is not a permutation of its input");
    const char *prev = ta.out, *end = ta.out + ta.out_len;
    size_t prev_len = (size_t)((char *)memchr(prev, '\n', (size_t)(end - prev)) - prev);
    for (const char *p = prev + prev_len + 1; p < end;) {
        size_t l = (size_t)((char *)memchr(p, '\n', (size_t)(end - p)) - p);
        cr_assert(cmp_bytes(prev, prev_len, p, l) <= 0, "sort output out of order at byte %zu",
                  (size_t)(p - ta.out));
        prev = p;
        prev_len = l;
        p += l + 1;
    }
    run_free(&ta);

    /* a small buffer: temporary files and merges; numeric key, reversed, unique */
    const char *argv2[] = {sort, "-S", "512K", "-T", tmpdir, "-t", " ", "-k2,2n", "-k1,1r", "-u", in, NULL};
    ta = run_both(argv2, NULL, NULL);
    cr_assert(ta.out_len > len / 2, "sort -u printed only %zu bytes", ta.out_len);
    run_free(&ta);
    free(data);
}

/* ---- (c) gcc ------------------------------------------------------------------ */
#define GCC_NFUNC 1000
typedef struct fparams {
    uint64_t k1, k2;
    unsigned s1, s2;
} fparams_t;

/* The function the generated program has GCC_NFUNC variants of. */
static uint64_t f_model(const fparams_t *f, uint64_t x) {
    uint64_t a = x * f->k1, b = x ^ f->k2;
    a ^= a >> f->s1;
    b += a << (f->s2 & 31);
    switch (x & 3) {
    case 0: a += b; break;
    case 1: a ^= b * 3; break;
    case 2: a -= b >> 7; break;
    default: a = ~a + b;
    }
    return a ^ (b >> f->s2);
}

Test(preload, gcc) {
    const char *gcc = find_prog("gcc");
    if (!gcc) cr_skip_test("gcc is not installed");
    rng_state = 7;
    static fparams_t fp[GCC_NFUNC];
    buf_t src = {0};
    char line[1024];
    int n;
    n = snprintf(line, sizeof line,
                 "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
                 "struct node { struct node *next; unsigned long v; char name[24]; };\n");
    buf_add(&src, line, (size_t)n);
    for (int i = 0; i < GCC_NFUNC; i++) {
        fp[i].k1 = rnd() | 1;
        fp[i].k2 = rnd();
        fp[i].s1 = 1 + (unsigned)(rnd() % 63);
        fp[i].s2 = 1 + (unsigned)(rnd() % 63);
        n = snprintf(line, sizeof line,
                     "unsigned long f%d(unsigned long x) {\n"
                     "    unsigned long a = x * %lluUL, b = x ^ %lluUL;\n"
                     "    a ^= a >> %u;\n"
                     "    b += a << (%u & 31);\n"
                     "    switch (x & 3) {\n"
                     "    case 0: a += b; break;\n"
                     "    case 1: a ^= b * 3; break;\n"
                     "    case 2: a -= b >> 7; break;\n"
                     "    default: a = ~a + b;\n"
                     "    }\n"
                     "    return a ^ (b >> %u);\n"
                     "}\n",
                     i, (unsigned long long)fp[i].k1, (unsigned long long)fp[i].k2, fp[i].s1, fp[i].s2,
                     fp[i].s2);
        buf_add(&src, line, (size_t)n);
    }
    const char *tab = "static unsigned long (*const tab[])(unsigned long) = {\n";
    buf_add(&src, tab, strlen(tab));
    for (int i = 0; i < GCC_NFUNC; i++) {
        n = snprintf(line, sizeof line, "f%d,%s", i, i % 16 == 15 ? "\n" : " ");
        buf_add(&src, line, (size_t)n);
    }
    /* main also builds a linked list with malloc, so the program itself
     * allocates under tieralloc when run preloaded */
    const char *main_src =
        "};\n"
        "int main(void) {\n"
        "    unsigned long x = 12345;\n"
        "    struct node *head = NULL;\n"
        "    for (unsigned i = 0; i < sizeof tab / sizeof tab[0]; i++) {\n"
        "        x = tab[i](x);\n"
        "        struct node *n = malloc(sizeof *n);\n"
        "        if (!n) return 1;\n"
        "        n->v = x; n->next = head; snprintf(n->name, sizeof n->name, \"f%u\", i); head = n;\n"
        "    }\n"
        "    unsigned long check = 0, count = 0;\n"
        "    while (head) { struct node *n = head; head = n->next; check ^= n->v; count += strlen(n->name); free(n); }\n"
        "    printf(\"%lu %lu %lu\\n\", x, check, count);\n"
        "    return 0;\n"
        "}\n";
    buf_add(&src, main_src, strlen(main_src));
    char c_path[PATH_MAX], exe_path[PATH_MAX];
    tmp_path(c_path, "gen.c");
    tmp_path(exe_path, "gen");
    write_file(c_path, src.p, src.len);
    free(src.p);

    const char *argv[] = {gcc, "-O2", "-Wall", "-o", exe_path, c_path, NULL};
    run_spec_t s = {.argv = argv, .preload = true, .stats = true, .timeout_s = 100};
    run_t cc = run(&s);
    expect_success(&cc);
    expect_reports(&cc, 5); /* gcc, cc1, as, collect2, ld: all under tieralloc */
    run_free(&cc);

    uint64_t x = 12345, check = 0, count = 0;
    for (int i = 0; i < GCC_NFUNC; i++) {
        x = f_model(&fp[i], x);
        check ^= x;
        count += (uint64_t)snprintf(line, sizeof line, "f%d", i);
    }
    char want[128];
    snprintf(want, sizeof want, "%llu %llu %llu\n", (unsigned long long)x, (unsigned long long)check,
             (unsigned long long)count);
    for (int pre = 0; pre < 2; pre++) {
        const char *argv2[] = {exe_path, NULL};
        run_spec_t s2 = {.argv = argv2, .preload = pre, .stats = pre};
        run_t r = run(&s2);
        expect_success(&r);
        if (pre) expect_report(&r);
        cr_assert_str_eq(r.out, want, "%s printed %s, expected %s", r.what, r.out, want);
        run_free(&r);
    }
}

/* ---- (d) C++ operators --------------------------------------------------------- */
Test(preload, cxx_operators) {
    char prog[PATH_MAX];
    path_fmt(prog, "%s/tests/cxx_prog", builddir);
    cr_assert(access(prog, X_OK) == 0, "%s: %s (make check builds it)", prog, strerror(errno));
    const char *argv[] = {prog, NULL};
    run_spec_t s = {.argv = argv, .preload = true, .stats = true};
    run_t r = run(&s);
    expect_success(&r);
    expect_report(&r);
    cr_assert(r.out_len >= 7 && strcmp(r.out + r.out_len - 7, "cxx ok\n") == 0,
              "cxx_prog did not print \"cxx ok\" last; stdout: %.500s", r.out);
    run_free(&r);

    /* without tieralloc it must refuse: its checks can fail */
    s.preload = s.stats = false;
    r = run(&s);
    cr_assert(!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0,
              "cxx_prog succeeded without tieralloc loaded");
    cr_assert(strstr(r.err, "ta_owns") != NULL, "cxx_prog without tieralloc: stderr %.500s", r.err);
    run_free(&r);
}

/* ---- (e) more programs ----------------------------------------------------------- */
/* A tree of directories and files with compressible, varied content. */
static void make_tree(const char *root, int ndirs, int nfiles) {
    cr_assert(mkdir(root, 0755) == 0, "mkdir %s: %s", root, strerror(errno));
    char path[PATH_MAX + 64];
    static const char *const words[] = {"alpha", "beta", "gamma", "delta", "tier", "span", "page",
                                        "cache", "central", "heap", "malloc", "free", "\n"};
    buf_t b = {0};
    for (int d = 0; d < ndirs; d++) {
        snprintf(path, sizeof path, "%s/d%02d", root, d);
        cr_assert(mkdir(path, 0755) == 0);
        if (d % 4 == 0) {
            snprintf(path, sizeof path, "%s/d%02d/sub", root, d);
            cr_assert(mkdir(path, 0755) == 0);
        }
        for (int f = 0; f < nfiles; f++) {
            b.len = 0;
            size_t size = rnd() % (f % 5 == 0 ? 200000 : 8000);
            while (b.len < size) {
                const char *w = words[rnd() % (sizeof words / sizeof words[0])];
                buf_add(&b, w, strlen(w));
                if (rnd() % 8 == 0) {
                    char num[24];
                    int n = snprintf(num, sizeof num, " %llu ", (unsigned long long)(rnd() % 1000000));
                    buf_add(&b, num, (size_t)n);
                }
            }
            snprintf(path, sizeof path, "%s/d%02d/%sfile%03d.txt", root, d, (d % 4 == 0 && f % 2) ? "sub/" : "",
                     f);
            write_file(path, b.p ? b.p : "", b.len);
        }
    }
    free(b.p);
}

Test(preload, tar_gzip) {
    const char *tar = need_prog("tar"), *gzip = need_prog("gzip"), *diff = need_prog("diff");
    rng_state = 3;
    char tree[PATH_MAX], out[PATH_MAX], tgz[PATH_MAX];
    tmp_path(tree, "tree");
    tmp_path(out, "out");
    tmp_path(tgz, "tree.tgz");
    make_tree(tree, 30, 20);
    cr_assert(mkdir(out, 0755) == 0);

    /* tar starts gzip: both run under tieralloc */
    const char *c_argv[] = {tar, "-czf", tgz, "-C", tree, ".", NULL};
    run_spec_t s = {.argv = c_argv, .preload = true, .stats = true};
    run_t r = run(&s);
    expect_success(&r);
    expect_reports(&r, 2); /* tar and gzip */
    run_free(&r);

    const char *x_argv[] = {tar, "-xzf", tgz, "-C", out, NULL};
    s.argv = x_argv;
    r = run(&s);
    expect_success(&r);
    expect_reports(&r, 2);
    run_free(&r);

    const char *d_argv[] = {diff, "-r", tree, out, NULL};
    run_spec_t sd = {.argv = d_argv};
    r = run(&sd);
    cr_assert(exited_ok(&r), "the tree extracted under tieralloc differs: %.1000s", r.out);
    run_free(&r);

    /* the listing matches glibc's */
    const char *t_argv[] = {tar, "-tvzf", tgz, NULL};
    r = run_both(t_argv, NULL, NULL);
    cr_assert(r.out_len > 0);
    run_free(&r);

    /* gzip -9 of a file: same bytes as under glibc */
    char big[PATH_MAX];
    path_fmt(big, "%s/d00/file000.txt", tree);
    const char *g_argv[] = {gzip, "-9", "-n", "-c", big, NULL};
    r = run_both(g_argv, NULL, NULL);
    cr_assert(r.out_len > 18);
    run_free(&r);
}

Test(preload, find) {
    const char *find = need_prog("find");
    rng_state = 4;
    char tree[PATH_MAX];
    tmp_path(tree, "tree");
    make_tree(tree, 40, 30);
    const char *argv1[] = {find, tree, "-printf", "%P %s %y %d\n", NULL};
    run_t r = run_both(argv1, NULL, NULL);
    size_t count;
    lines_fingerprint(r.out, r.out_len, &count);
    cr_assert_eq(count, 1 + 40 + 10 + 40 * 30, "find listed %zu entries", count);
    run_free(&r);
    const char *argv2[] = {find, tree, "-name", "*7*", "-size", "+2k", "-newer", tree, "-o", "-type", "d",
                           "-name", "s*", "-print", NULL};
    r = run_both(argv2, NULL, NULL);
    run_free(&r);
}

Test(preload, awk) {
    const char *awk = need_prog("awk");
    rng_state = 5;
    size_t len;
    char *data = make_lines(200000, &len);
    char in[PATH_MAX];
    tmp_path(in, "lines.txt");
    write_file(in, data, len);
    free(data);
    /* a large associative array, string concatenation, split; the results do
     * not depend on the array's iteration order */
    const char *prog = "{ count[$1]++; total[$1] += $2; key = $1 \":\" (NR % 97); cat[key] = cat[key] $3 }\n"
                       "END { n = 0; s = 0; m = 0; l = 0; dup = 0\n"
                       "      for (k in count) { n++; s += total[k]; if (count[k] > 1) dup++ }\n"
                       "      for (k in cat) { m++; l += length(cat[k]); delete cat[k] }\n"
                       "      nparts = split(\"a b c d e f\", parts, \" \")\n"
                       "      print n, s, dup, m, l, nparts }\n";
    const char *argv[] = {awk, prog, in, NULL};
    run_t r = run_both(argv, NULL, NULL);
    unsigned long long n = 0, s = 0;
    cr_assert(sscanf(r.out, "%llu %llu", &n, &s) == 2 && n > 100000, "awk printed %s", r.out);
    run_free(&r);
}

Test(preload, perl) {
    const char *perl = find_prog("perl");
    if (!perl) cr_skip_test("perl is not installed");
    const char *prog =
        "use strict; use warnings;\n"
        "my %h; my @a;\n"
        "for my $i (1 .. 200000) { my $k = sprintf('k%x-%s', $i * 7919 % 1000003, 'p' x ($i % 17));\n"
        "  $h{$k} = [$i, \"v$i\"]; push @a, $k if $i % 3 == 0 }\n"
        "delete $h{$_} for @a[0 .. $#a / 2];\n"
        "my @keys = sort keys %h;\n"
        "my $s = join(',', map { $h{$_}[1] } @keys[0 .. 999]);\n"
        "(my $t = $s) =~ s/v(\\d+)/'<' . ($1 * 2) . '>'/ge;\n"
        "my $sum = 0; $sum += $h{$_}[0] for @keys;\n"
        "my $text = join(\"\\n\", map { \"$_=$h{$_}[1]\" } @keys);\n"
        "printf \"%d %d %d %s %d\\n\", scalar(@keys), $sum, length($t), unpack('%32C*', $text), length($text);\n";
    const char *argv[] = {perl, "-e", prog, NULL};
    run_t r = run_both(argv, NULL, NULL);
    cr_assert(r.out_len > 10, "perl printed %s", r.out);
    run_free(&r);
}

/* ---- (f) the report ------------------------------------------------------------- */
Test(preload, stats_report) {
    const char *ls = need_prog("ls");
    const char *argv[] = {ls, "-la", "/usr/lib", "/usr/bin", NULL};
    run_t r = run_both(argv, NULL, NULL); /* checks the report on stderr */
    run_free(&r);

    /* without TIERALLOC_STATS a preloaded program prints nothing extra */
    run_spec_t s = {.argv = argv, .preload = true};
    r = run(&s);
    expect_success(&r);
    cr_assert(r.err_len == 0, "%s wrote to stderr without TIERALLOC_STATS: %.500s", r.what, r.err);
    run_free(&r);
}
