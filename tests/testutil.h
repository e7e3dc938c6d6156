/* testutil.h: the one helper library of the tests (every test includes it).
 *
 *  - tu_rss_bytes():   resident set size of this process, from /proc/self/statm
 *  - tu_has_bg_thread(), tu_start_bg_thread(): tieralloc's background thread
 *  - tu_run_child():   run a function in a forked child, capturing its stdout and
 *                      stderr (up to 16 KiB each) and how it ended (exit code,
 *                      signal, or timeout)
 *  - tu_run_exec():    the same for another program (execve)
 *  - tu_run():         run a program found in PATH, in a directory, with extra
 *                      environment entries; output of any length (malloc'd)
 *  - tu_wait_pid():    waitpid with a time limit (kills the child on timeout)
 *  - tu_lib_path(), tu_build_path(), tu_build_dir(), tu_src_dir(): the build
 *                      ($TA_BUILDDIR) and source ($TA_SRCDIR) trees
 *  - tu_slurp(), tu_file_size(), tu_tmpdir(), tu_rmtree(), tu_fmt(): files, text
 *  - tu_json_number(), tu_md_cell(), tu_is_png(): reading the bench tools' output
 *  - tu_fill()/tu_check(): a content pattern derived from (address, size, seed)
 *  - tu_rand():        a small deterministic PRNG
 *  - tu_expect_abort(): misuse in a child must abort with one diagnostic
 *
 * Everything is static: each test binary includes this header once. */
#ifndef TA_TESTUTIL_H
#define TA_TESTUTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#define TU_FN static __attribute__((unused))

/* Hide a pointer's origin from the optimiser, so that it can neither drop
 * the call it is passed to nor diagnose it at compile time. */
TU_FN void *tu_hide(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}
TU_FN size_t tu_hide_size(size_t n) {
    __asm__ volatile("" : "+r"(n));
    return n;
}

/* ---- time ----------------------------------------------------------------- */
TU_FN uint64_t tu_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

TU_FN void tu_sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- memory --------------------------------------------------------------- */
/* Resident set size in bytes (the second field of /proc/self/statm, in pages).
 * Read with open/read so that measuring does not allocate. */
TU_FN size_t tu_rss_bytes(void) {
    char buf[256];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    unsigned long size = 0, resident = 0;
    if (sscanf(buf, "%lu %lu", &size, &resident) != 2) return 0;
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Does the process have a thread named tieralloc-bg? */
TU_FN bool tu_has_bg_thread(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t k = read(fd, name, sizeof name - 1);
        close(fd);
        if (k > 0) name[k] = '\0';
        found = strncmp(name, "tieralloc-bg", 12) == 0;
    }
    closedir(d);
    return found;
}

/* Let the background thread start now (a malloc in a heap of 4 MiB; unless
 * TIERALLOC_BACKGROUND=0): its start allocates glibc's TLS vector for it
 * once, which a test counting bytes in use to the byte must not see. */
TU_FN void tu_start_bg_thread(void) {
    const char *bg = getenv("TIERALLOC_BACKGROUND");
    if (bg && strcmp(bg, "0") == 0) return;
    for (int i = 0; i < 200 && !tu_has_bg_thread(); i++) {
        void *volatile p = malloc(8 << 20);
        free(p);
        usleep(10000);
    }
}

#define TU_MiB ((size_t)1 << 20)

/* ---- a deterministic PRNG (splitmix64) ------------------------------------ */
TU_FN uint64_t tu_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
TU_FN uint64_t tu_rand(uint64_t *state) {
    *state += 0x9e3779b97f4a7c15ull;
    return tu_mix(*state);
}
/* uniform in [lo, hi] */
TU_FN size_t tu_rand_range(uint64_t *state, size_t lo, size_t hi) {
    return lo + (size_t)(tu_rand(state) % (uint64_t)(hi - lo + 1));
}

/* ---- content patterns -------------------------------------------------------
 * Word i of a block holds mix(address ^ size ^ seed) + i * odd constant, so a
 * block handed to two owners, a block moved without its contents, or a stray
 * write shows up as a mismatch. Blocks are 16-byte aligned, so the words are
 * accessed directly; a tail shorter than a word is filled byte by byte. */
TU_FN uint64_t tu_pattern_base(const void *p, size_t n, uint64_t seed) {
    return tu_mix((uint64_t)(uintptr_t)p ^ ((uint64_t)n << 17) ^ seed);
}

/* Byte j of the pattern is byte j % 8 of word j / 8, so any prefix of a
 * pattern checks against the same base whatever its length. */
#define TU_PAT_STEP 0x9e3779b97f4a7c15ull
TU_FN unsigned char tu_pattern_byte(uint64_t base, size_t j) {
    return (unsigned char)((base + (uint64_t)(j / 8) * TU_PAT_STEP) >> ((j % 8) * 8));
}

TU_FN void tu_fill_base(void *p, size_t n, uint64_t base) {
    uint64_t *w = p;
    size_t nw = (uintptr_t)p % 8 == 0 ? n / 8 : 0;
    for (size_t i = 0; i < nw; i++) w[i] = base + i * TU_PAT_STEP;
    unsigned char *b = p;
    for (size_t j = nw * 8; j < n; j++) b[j] = tu_pattern_byte(base, j);
}

/* Offset of the first byte that differs from the pattern, or (size_t)-1. */
TU_FN size_t tu_check_base(const void *p, size_t n, uint64_t base) {
    const uint64_t *w = p;
    size_t nw = (uintptr_t)p % 8 == 0 ? n / 8 : 0;
    for (size_t i = 0; i < nw; i++)
        if (w[i] != base + i * TU_PAT_STEP) {
            const unsigned char *b = p;
            for (size_t j = i * 8;; j++)
                if (b[j] != tu_pattern_byte(base, j)) return j;
        }
    const unsigned char *b = p;
    for (size_t j = nw * 8; j < n; j++)
        if (b[j] != tu_pattern_byte(base, j)) return j;
    return (size_t)-1;
}

/* The address-derived pattern: for blocks that do not move. */
TU_FN void tu_fill(void *p, size_t n, uint64_t seed) { tu_fill_base(p, n, tu_pattern_base(p, n, seed)); }
TU_FN size_t tu_check(const void *p, size_t n, uint64_t seed) {
    return tu_check_base(p, n, tu_pattern_base(p, n, seed));
}

/* ---- paths ------------------------------------------------------------------ */
TU_FN const char *tu_env_dir(const char *var) {
    const char *d = getenv(var);
    return d && *d ? d : ".";
}
TU_FN const char *tu_build_dir(void) { return tu_env_dir("TA_BUILDDIR"); }
TU_FN const char *tu_src_dir(void) { return tu_env_dir("TA_SRCDIR"); }

/* The built shared library (libtool puts it under .libs). */
TU_FN const char *tu_lib_path(void) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/.libs/libtieralloc.so", tu_build_dir());
    return path;
}

/* A file under the build directory, e.g. tu_build_path("tests/ctor_prog"). */
TU_FN const char *tu_build_path(const char *rel) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", tu_build_dir(), rel);
    return path;
}

/* ---- children ------------------------------------------------------------- */
#define TU_CAPTURE 16384

typedef struct tu_child {
    pid_t pid;
    int timed_out;           /* killed after the time limit */
    int exited, exit_code;   /* WIFEXITED / WEXITSTATUS */
    int signaled, signal;    /* WIFSIGNALED / WTERMSIG */
    char out[TU_CAPTURE];    /* captured stdout (NUL-terminated, truncated) */
    size_t out_len;
    char err[TU_CAPTURE];    /* captured stderr */
    size_t err_len;
} tu_child_t;

/* Wait for pid for at most timeout_ms; on timeout kill it (SIGKILL) and reap it.
 * Returns 0 with *status set, or -1 on timeout (then *status is the kill status). */
TU_FN int tu_wait_pid(pid_t pid, unsigned timeout_ms, int *status) {
    uint64_t deadline = tu_now_ms() + timeout_ms;
    unsigned nap = 1;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return 0;
        if (r < 0 && errno != EINTR) return 0;
        if (tu_now_ms() >= deadline) {
            kill(-pid, SIGKILL); /* its process group, when it leads one (tu_run) */
            kill(pid, SIGKILL);
            while (waitpid(pid, status, 0) < 0 && errno == EINTR) {
            }
            return -1;
        }
        tu_sleep_ms(nap);
        if (nap < 20) nap *= 2;
    }
}

TU_FN void tu_decode_status(tu_child_t *c, int status) {
    c->exited = WIFEXITED(status);
    c->exit_code = c->exited ? WEXITSTATUS(status) : -1;
    c->signaled = WIFSIGNALED(status);
    c->signal = c->signaled ? WTERMSIG(status) : 0;
}

/* Run fn(arg) in a forked child with stdout and stderr going to pipes; the child
 * exits 0 when fn returns.  Captures both streams and waits at most timeout_ms
 * (then kills the child and sets timed_out).  Core dumps are disabled in the
 * child so that expected aborts stay cheap. */
TU_FN void tu_run_child(void (*fn)(void *), void *arg, unsigned timeout_ms, tu_child_t *c) {
    int po[2], pe[2];
    memset(c, 0, sizeof *c);
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        c->exit_code = -1;
        snprintf(c->err, sizeof c->err, "pipe failed: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        c->exit_code = -1;
        snprintf(c->err, sizeof c->err, "fork failed: %s", strerror(errno));
        close(po[0]); close(po[1]); close(pe[0]); close(pe[1]);
        return;
    }
    if (pid == 0) {
        struct rlimit nocore = {0, 0};
        setrlimit(RLIMIT_CORE, &nocore);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        fn(arg);
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    c->pid = pid;
    close(po[1]);
    close(pe[1]);
    uint64_t deadline = tu_now_ms() + timeout_ms;
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        uint64_t now = tu_now_ms();
        if (now >= deadline) break;
        int r = poll(fds, 2, (int)(deadline - now));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char *buf = i == 0 ? c->out : c->err;
            size_t *len = i == 0 ? &c->out_len : &c->err_len;
            char scratch[4096];
            ssize_t n = read(fds[i].fd, scratch, sizeof scratch);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t room = TU_CAPTURE - 1 - *len;
            size_t take = (size_t)n < room ? (size_t)n : room;
            memcpy(buf + *len, scratch, take);
            *len += take;
            buf[*len] = '\0';
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0) close(fds[i].fd);
    uint64_t now = tu_now_ms();
    int status = 0;
    c->timed_out = tu_wait_pid(pid, now < deadline ? (unsigned)(deadline - now) : 0, &status) != 0;
    tu_decode_status(c, status);
}

typedef struct tu_exec_args {
    char *const *argv;
    char *const *envp;
} tu_exec_args_t;

TU_FN void tu_exec_fn(void *arg) {
    tu_exec_args_t *a = arg;
    execve(a->argv[0], a->argv, a->envp);
    fprintf(stderr, "execve %s: %s\n", a->argv[0], strerror(errno));
    _exit(127);
}

/* Run a program (argv[0] is its path) with the environment envp. */
TU_FN void tu_run_exec(char *const argv[], char *const envp[], unsigned timeout_ms, tu_child_t *c) {
    tu_exec_args_t a = {argv, envp};
    tu_run_child(tu_exec_fn, &a, timeout_ms, c);
}

/* A short description of how a child ended, for assertion messages. */
TU_FN const char *tu_describe(const tu_child_t *c) {
    static char buf[TU_CAPTURE + 256];
    if (c->timed_out)
        snprintf(buf, sizeof buf, "child timed out (killed); stderr: %.4000s", c->err);
    else if (c->signaled)
        snprintf(buf, sizeof buf, "child killed by signal %d (%s); stderr: %.4000s", c->signal,
                 strsignal(c->signal), c->err);
    else
        snprintf(buf, sizeof buf, "child exited with %d; stderr: %.4000s", c->exit_code, c->err);
    return buf;
}

/* In a child: report a failed check on stderr and exit 1. */
#define TU_CHILD_CHECK(cond, ...)                                                      \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
            fflush(stderr);                                                            \
            _exit(1);                                                                  \
        }                                                                              \
    } while (0)

/* ---- text -------------------------------------------------------------------- */
/* Number of lines of s that start with prefix; the first of them is
 * copied into line (at most cap bytes, without the newline). */
TU_FN int tu_count_lines(const char *s, const char *prefix, char *line, size_t cap) {
    int n = 0;
    size_t plen = strlen(prefix);
    if (cap) line[0] = '\0';
    while (*s) {
        const char *end = strchr(s, '\n');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len >= plen && strncmp(s, prefix, plen) == 0) {
            if (n == 0 && cap) {
                size_t k = len < cap - 1 ? len : cap - 1;
                memcpy(line, s, k);
                line[k] = '\0';
            }
            n++;
        }
        s += len;
        if (*s == '\n') s++;
    }
    return n;
}

/* Does text contain the address in the form printf("%p") gives (0x + lowercase
 * hex) as a whole token (not followed by another hex digit)? */
TU_FN int tu_has_addr(const char *text, const void *addr) {
    char want[40];
    snprintf(want, sizeof want, "0x%lx", (unsigned long)(uintptr_t)addr);
    size_t wl = strlen(want);
    for (const char *s = strstr(text, want); s; s = strstr(s + 1, want)) {
        char next = s[wl];
        int hex = (next >= '0' && next <= '9') || (next >= 'a' && next <= 'f') || (next >= 'A' && next <= 'F');
        int prev_ok = s == text || !((s[-1] >= '0' && s[-1] <= '9') || (s[-1] >= 'a' && s[-1] <= 'z') ||
                                     (s[-1] >= 'A' && s[-1] <= 'Z'));
        if (!hex && prev_ok) return 1;
    }
    return 0;
}

/* ---- misuse in a child ------------------------------------------------------
 * The child reports the pointer it passes to the bad call in a page shared
 * with the parent, then sets reached_end if it survives the call. */
typedef struct tu_shared {
    volatile uintptr_t addr;  /* the pointer passed to the bad call */
    volatile size_t result;   /* a value the child computed, when it returns */
    volatile int reached_end; /* the child survived the bad call */
} tu_shared_t;
static tu_shared_t *shared __attribute__((unused));

/* map the shared page once, and clear it */
TU_FN void tu_shared_reset(void) {
    if (!shared) {
        shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(shared, MAP_FAILED);
    }
    memset((void *)shared, 0, sizeof *shared);
}

TU_FN void report(const void *p) { shared->addr = (uintptr_t)p; }

/* Run fn in a child and check: SIGABRT before reached_end, exactly one
 * "tieralloc: " line on stderr, naming the reported address (which must have
 * been reported when need_addr) and containing `what` when that is not NULL. */
TU_FN void tu_expect_abort(void (*fn)(void *), const char *what, int need_addr) {
    tu_shared_reset();
    static tu_child_t c;
    tu_run_child(fn, NULL, 30000, &c);
    cr_assert(!c.timed_out, "%s", tu_describe(&c));
    cr_assert(c.signaled && c.signal == SIGABRT, "expected SIGABRT: %s", tu_describe(&c));
    cr_assert_not(shared->reached_end, "the child went on after the bad call");
    char line[1024];
    int n = tu_count_lines(c.err, "tieralloc: ", line, sizeof line);
    cr_assert_eq(n, 1, "want exactly one 'tieralloc: ' line on stderr, got %d: %s", n, c.err);
    void *addr = (void *)shared->addr;
    if (need_addr) cr_assert_neq(addr, NULL, "the child did not report the address");
    if (addr) cr_assert(tu_has_addr(line, addr), "diagnostic does not name %p: %s", addr, line);
    if (what) cr_assert(strstr(line, what) != NULL, "diagnostic lacks \"%s\": %s", what, line);
}

/* ---- files, and programs with output of any length (the bench tests) ------ */
/* What tu_run saw. */
typedef struct tu_result {
    int exit_code; /* valid if !signaled and !timed_out */
    int signo;     /* valid if signaled */
    bool signaled, timed_out;
    char *out; /* stdout, NUL-terminated (malloc'd) */
    char *err; /* stderr, NUL-terminated (malloc'd) */
} tu_result_t;

TU_FN char *tu_slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

TU_FN size_t tu_file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

TU_FN int tu_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

TU_FN void tu_rmtree(const char *dir) {
    if (dir && *dir) nftw(dir, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* a new scratch directory (malloc'd path) */
TU_FN char *tu_tmpdir(void) {
    char *t = strdup("/tmp/tieralloc-test-bench-XXXXXX");
    if (!t || !mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

/* printf into a malloc'd string */
TU_FN char *tu_fmt(const char *fmt, ...) {
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

/* Run argv (NULL-terminated; argv[0] searched in PATH) in dir (NULL: here),
 * with the extra environment entries in env (NULL-terminated "K=V", may be
 * NULL), in a process group of its own.  Its output goes to files, so it may
 * be of any length; killed (with its group) after timeout_s seconds. */
TU_FN tu_result_t tu_run(char *const argv[], char *const env[], const char *dir, int timeout_s) {
    tu_result_t r = {0};
    char outp[] = "/tmp/tieralloc-test-out-XXXXXX", errp[] = "/tmp/tieralloc-test-err-XXXXXX";
    int fo = mkstemp(outp), fe = mkstemp(errp);
    if (fo < 0 || fe < 0) {
        r.timed_out = true;
        return r;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        for (size_t i = 0; env && env[i]; i++) putenv(env[i]);
        if (dir && chdir(dir) != 0) _exit(126);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    r.timed_out = tu_wait_pid(pid, (unsigned)timeout_s * 1000u, &status) != 0;
    if (!r.timed_out) {
        r.signaled = WIFSIGNALED(status);
        r.signo = r.signaled ? WTERMSIG(status) : 0;
        r.exit_code = r.signaled ? 0 : WEXITSTATUS(status);
    }
    close(fo);
    close(fe);
    r.out = tu_slurp(outp);
    r.err = tu_slurp(errp);
    unlink(outp);
    unlink(errp);
    if (!r.out) r.out = strdup("");
    if (!r.err) r.err = strdup("");
    return r;
}

TU_FN void tu_result_free(tu_result_t *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* The JSON text of google-benchmark's object whose "name" is name: a pointer
 * to its "name" key, or NULL.  The object ends at the next "name" key. */
TU_FN const char *tu_json_object(const char *json, const char *name) {
    char *needle = tu_fmt("\"name\": \"%s\"", name);
    const char *p = needle ? strstr(json, needle) : NULL;
    free(needle);
    return p;
}

/* The number after "key": inside the object at obj (up to the next object);
 * NAN if it is not there. */
TU_FN double tu_json_number(const char *obj, const char *key) {
    if (!obj) return __builtin_nan("");
    const char *end = strstr(obj + 1, "\"name\": \"");
    char *needle = tu_fmt("\"%s\": ", key);
    const char *p = needle ? strstr(obj, needle) : NULL;
    double v = __builtin_nan("");
    if (p && (!end || p < end)) {
        p += strlen(needle);
        char *e;
        double x = strtod(p, &e);
        if (e != p) v = x;
    }
    free(needle);
    return v;
}

/* true if "key": true appears in the object at obj */
TU_FN bool tu_json_true(const char *obj, const char *key) {
    if (!obj) return false;
    const char *end = strstr(obj + 1, "\"name\": \"");
    char *needle = tu_fmt("\"%s\": true", key);
    const char *p = needle ? strstr(obj, needle) : NULL;
    free(needle);
    return p && (!end || p < end);
}

/* Split a Markdown table row "| a | b |" into at most max trimmed cells (in
 * place); returns the count. */
TU_FN int tu_md_split(char *line, char **cells, int max) {
    int n = 0;
    char *s = strchr(line, '|'), *tok;
    if (!s) return 0;
    s++;
    while (n < max && (tok = strsep(&s, "|")) != NULL && s != NULL) {
        while (*tok == ' ') tok++;
        char *e = tok + strlen(tok);
        while (e > tok && e[-1] == ' ') *--e = '\0';
        cells[n++] = tok;
    }
    return n;
}

/* The cell of the table under the heading that starts with "## heading" whose
 * row starts with row_label and whose column is column (malloc'd), or NULL. */
TU_FN char *tu_md_cell(const char *md, const char *heading, const char *row_label, const char *column) {
    char *h = tu_fmt("## %s", heading);
    const char *sec = h ? strstr(md, h) : NULL;
    free(h);
    if (!sec) return NULL;
    const char *next = strstr(sec + 3, "\n## ");
    /* the header row: the first line of the section that starts with "| " */
    const char *hdr = strstr(sec, "\n| ");
    if (!hdr || (next && hdr > next)) return NULL;
    hdr++;
    char *hline = strndup(hdr, strcspn(hdr, "\n"));
    char *cells[64];
    int nh = tu_md_split(hline, cells, 64), col = -1;
    for (int i = 0; i < nh; i++)
        if (strcmp(cells[i], column) == 0) col = i;
    char *found = NULL;
    const char *line = hdr;
    while (col >= 0 && (line = strchr(line, '\n')) && (!next || line < next)) {
        line++;
        if (strncmp(line, "| ", 2) != 0) continue;
        char *l = strndup(line, strcspn(line, "\n"));
        char *rc[64];
        int nr = tu_md_split(l, rc, 64);
        if (nr > col && strcmp(rc[0], row_label) == 0) found = strdup(rc[col]);
        free(l);
        if (found) break;
    }
    free(hline);
    return found;
}

TU_FN bool tu_is_png(const char *path) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char buf[8];
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t n = fread(buf, 1, 8, f);
    fclose(f);
    return n == 8 && memcmp(buf, sig, 8) == 0;
}

#endif
