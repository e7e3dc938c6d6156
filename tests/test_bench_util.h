/* test_bench_util.h: helpers of the tests of bench/ and tools/tieralloc-compare.
 *
 *  - tbu_run():        run a program with a time limit, capturing its output
 *  - tbu_slurp():      read a whole file
 *  - tbu_tmpdir() / tbu_rmtree(): a scratch directory and its removal
 *  - tbu_srcdir() / tbu_builddir(): $TA_SRCDIR / $TA_BUILDDIR (set by make check)
 *  - tbu_json_number(): a number field of the JSON object that has a given name
 *  - tbu_md_cell():    a cell of a Markdown table, by row label and column name
 *
 * Everything is static: each test file includes this header once. */
#ifndef TEST_BENCH_UTIL_H
#define TEST_BENCH_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TBU_FN static __attribute__((unused))

typedef struct {
    int exit_code;  /* valid if !signaled and !timed_out */
    int signo;      /* valid if signaled */
    bool signaled, timed_out;
    char *out;      /* stdout, NUL-terminated (malloc'd) */
    char *err;      /* stderr, NUL-terminated (malloc'd) */
} tbu_result;

TBU_FN char *tbu_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
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
    if (buf)
        buf[len] = '\0';
    return buf;
}

TBU_FN size_t tbu_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

static int tbu_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

TBU_FN void tbu_rmtree(const char *dir)
{
    if (dir && *dir)
        nftw(dir, tbu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* a new scratch directory (malloc'd path) */
TBU_FN char *tbu_tmpdir(void)
{
    char *t = strdup("/tmp/tieralloc-test-bench-XXXXXX");
    if (!t || !mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

TBU_FN const char *tbu_env_dir(const char *var)
{
    const char *d = getenv(var);
    return d && *d ? d : ".";
}
TBU_FN const char *tbu_srcdir(void) { return tbu_env_dir("TA_SRCDIR"); }
TBU_FN const char *tbu_builddir(void) { return tbu_env_dir("TA_BUILDDIR"); }

/* printf into a malloc'd string */
TBU_FN char *tbu_fmt(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* Run argv (NULL-terminated; argv[0] searched in PATH) in dir (NULL: here),
 * with the extra environment entries in env (NULL-terminated "K=V", may be
 * NULL).  Killed after timeout_s seconds. */
TBU_FN tbu_result tbu_run(char *const argv[], char *const env[], const char *dir, int timeout_s)
{
    tbu_result r = { 0 };
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
        for (size_t i = 0; env && env[i]; i++)
            putenv(env[i]);
        if (dir && chdir(dir) != 0)
            _exit(126);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    struct timespec t0, now, nap = { 0, 10 * 1000 * 1000 };
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= timeout_s) {
            r.timed_out = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        nanosleep(&nap, NULL);
    }
    if (!r.timed_out) {
        if (WIFSIGNALED(status)) {
            r.signaled = true;
            r.signo = WTERMSIG(status);
        } else {
            r.exit_code = WEXITSTATUS(status);
        }
    }
    close(fo);
    close(fe);
    r.out = tbu_slurp(outp);
    r.err = tbu_slurp(errp);
    unlink(outp);
    unlink(errp);
    if (!r.out)
        r.out = strdup("");
    if (!r.err)
        r.err = strdup("");
    return r;
}

TBU_FN void tbu_result_free(tbu_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* The JSON text of google-benchmark's object whose "name" is name: a pointer
 * to its "name" key, or NULL.  The object ends at the next "name" key. */
TBU_FN const char *tbu_json_object(const char *json, const char *name)
{
    char *needle = tbu_fmt("\"name\": \"%s\"", name);
    const char *p = needle ? strstr(json, needle) : NULL;
    free(needle);
    return p;
}

/* The number after "key": inside the object at obj (up to the next object);
 * NAN if it is not there. */
TBU_FN double tbu_json_number(const char *obj, const char *key)
{
    if (!obj)
        return __builtin_nan("");
    const char *end = strstr(obj + 1, "\"name\": \"");
    char *needle = tbu_fmt("\"%s\": ", key);
    const char *p = needle ? strstr(obj, needle) : NULL;
    double v = __builtin_nan("");
    if (p && (!end || p < end)) {
        p += strlen(needle);
        char *e;
        double x = strtod(p, &e);
        if (e != p)
            v = x;
    }
    free(needle);
    return v;
}

/* true if "key": true appears in the object at obj */
TBU_FN bool tbu_json_true(const char *obj, const char *key)
{
    if (!obj)
        return false;
    const char *end = strstr(obj + 1, "\"name\": \"");
    char *needle = tbu_fmt("\"%s\": true", key);
    const char *p = needle ? strstr(obj, needle) : NULL;
    free(needle);
    return p && (!end || p < end);
}

/* Split a Markdown table row "| a | b |" into at most max trimmed cells (in
 * place); returns the count. */
static int tbu_md_split(char *line, char **cells, int max)
{
    int n = 0;
    char *s = strchr(line, '|'), *tok;
    if (!s)
        return 0;
    s++;
    while (n < max && (tok = strsep(&s, "|")) != NULL && s != NULL) {
        while (*tok == ' ')
            tok++;
        char *e = tok + strlen(tok);
        while (e > tok && e[-1] == ' ')
            *--e = '\0';
        cells[n++] = tok;
    }
    return n;
}

/* The cell of the table under the heading that starts with "## heading" whose
 * row starts with row_label and whose column is column (malloc'd), or NULL. */
TBU_FN char *tbu_md_cell(const char *md, const char *heading, const char *row_label,
                         const char *column)
{
    char *h = tbu_fmt("## %s", heading);
    const char *sec = h ? strstr(md, h) : NULL;
    free(h);
    if (!sec)
        return NULL;
    const char *next = strstr(sec + 3, "\n## ");
    /* the header row: the first line of the section that starts with "| " */
    const char *hdr = strstr(sec, "\n| ");
    if (!hdr || (next && hdr > next))
        return NULL;
    hdr++;
    char *hline = strndup(hdr, strcspn(hdr, "\n"));
    char *cells[64];
    int nh = tbu_md_split(hline, cells, 64), col = -1;
    for (int i = 0; i < nh; i++)
        if (strcmp(cells[i], column) == 0)
            col = i;
    char *found = NULL;
    const char *line = hdr;
    while (col >= 0 && (line = strchr(line, '\n')) && (!next || line < next)) {
        line++;
        if (strncmp(line, "| ", 2) != 0)
            continue;
        char *l = strndup(line, strcspn(line, "\n"));
        char *rc[64];
        int nr = tbu_md_split(l, rc, 64);
        if (nr > col && strcmp(rc[0], row_label) == 0)
            found = strdup(rc[col]);
        free(l);
        if (found)
            break;
    }
    free(hline);
    return found;
}

TBU_FN bool tbu_is_png(const char *path)
{
    static const unsigned char sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    unsigned char buf[8];
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = fread(buf, 1, 8, f);
    fclose(f);
    return n == 8 && memcmp(buf, sig, 8) == 0;
}

#endif
