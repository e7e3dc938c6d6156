/* test_hardening.c: the reports at exit and their files, in hostile settings
 * (issue 10, items 1 and 6): a setuid program run by another user, report
 * paths that are symlinks, FIFOs or files of someone else, and a program
 * whose fd 2 is not the stderr it started with. */
#include "testutil.h"

#include <dirent.h>
#include <sys/stat.h>

#include "tieralloc.h"

extern char **environ;

static char dir[64];
static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/ta_hard.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(chmod(dir, 0755), 0); /* the unprivileged user of the setuid test may enter */
}
static void teardown(void) { tu_rmtree(dir); }
TestSuite(hardening, .init = setup, .fini = teardown);

static const char *in_dir(const char *name) {
    static char paths[4][256];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void put_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* the whole file (at most 64 KiB) as a string in a static buffer */
static const char *file_text(const char *path) {
    static char buf[65536];
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static int count_prefix(const char *d, const char *prefix) {
    DIR *dp = opendir(d);
    cr_assert_not_null(dp);
    int n = 0;
    for (struct dirent *e; (e = readdir(dp));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(dp);
    return n;
}

/* ---- item 1: secure execution ---------------------------------------------- */
/* A setuid-root copy of report_prog, run as nobody with TIERALLOC_STATS naming
 * a root-owned file and TIERALLOC_PROFILE a root-only directory: the file stays
 * as it was, no profile is made, and stderr says why, once. */
Test(hardening, setuid_program_ignores_the_output_options) {
    if (geteuid() != 0) cr_skip_test("needs root to make a setuid-root program");
    const char *copy = in_dir("suid_prog");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tu_build_path("tests/report_prog"), copy);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(chown(copy, 0, 0), 0);
    cr_assert_eq(chmod(copy, 04755), 0);
    const char *victim = in_dir("victim");
    put_file(victim, "root's data\n");
    char stats[512], prof[512];
    snprintf(stats, sizeof stats, "TIERALLOC_STATS=json:%s", victim);
    snprintf(prof, sizeof prof, "TIERALLOC_PROFILE=%s/prof-%%p", dir);
    char *envp[] = {stats, prof, "PATH=/usr/bin:/bin", NULL};
    char *argv[] = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", (char *)copy,
                    "alloc", NULL};
    static tu_child_t c;
    tu_run_exec(argv, envp, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_str_eq(c.out, "ok\n");
    cr_assert_str_eq(file_text(victim), "root's data\n", "the setuid program wrote the root-owned file");
    cr_assert_eq(count_prefix(dir, "prof-"), 0, "the setuid program made a profile in a root-only directory");
    char line[1024];
    int n = tu_count_lines(c.err, "tieralloc: ", line, sizeof line);
    cr_assert_eq(n, 1, "want one 'tieralloc: ' line, got %d: %s", n, c.err);
    cr_assert(strstr(line, "secure-execution") && strstr(line, "TIERALLOC_STATS") &&
                  strstr(line, "TIERALLOC_PROFILE"),
              "%s", line);

    /* the same program without the setuid bit honours them (the test can fail) */
    cr_assert_eq(chmod(copy, 0755), 0);
    char *argv2[] = {(char *)copy, "alloc", NULL};
    tu_run_exec(argv2, envp, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_eq(c.err_len, 0, "%s", c.err);
    cr_assert(strstr(file_text(victim), "\"inuse_bytes\""), "no JSON report: %s", file_text(victim));
    cr_assert_eq(count_prefix(dir, "prof-"), 1);
}

/* ---- item 1: the files reports go to ---------------------------------------- */
Test(hardening, report_path_that_is_a_symlink_is_not_followed) {
    const char *target = in_dir("target"), *link = in_dir("link");
    put_file(target, "keep\n");
    cr_assert_eq(symlink(target, link), 0);
    errno = 0;
    cr_assert_eq(ta_profile_dump(link), -1, "dumped through a symlink");
    cr_assert_eq(errno, ELOOP, "errno %d", errno);
    cr_assert_str_eq(file_text(target), "keep\n");
}

Test(hardening, report_path_owned_by_another_user_is_not_truncated) {
    if (geteuid() == 65534) cr_skip_test("runs as nobody, whose file it would make");
    const char *other = in_dir("other");
    put_file(other, "someone else's\n");
    if (chown(other, 65534, 65534) != 0) cr_skip_test("cannot give a file to nobody (not root)");
    cr_assert_eq(chmod(other, 0666), 0);
    errno = 0;
    cr_assert_eq(ta_profile_dump(other), -1, "rewrote a file of uid 65534");
    cr_assert_eq(errno, EPERM, "errno %d", errno);
    cr_assert_str_eq(file_text(other), "someone else's\n");
}

static void dump_to_fifo(void *arg) {
    int r = ta_profile_dump(arg);
    printf("%d %d\n", r, errno);
}

Test(hardening, report_path_that_is_a_fifo_is_refused_without_blocking) {
    const char *fifo = in_dir("fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    static tu_child_t c;
    tu_run_child(dump_to_fifo, (void *)fifo, 10000, &c);
    cr_assert(!c.timed_out, "ta_profile_dump blocked on a FIFO");
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    int r = 0, e = 0;
    cr_assert_eq(sscanf(c.out, "%d %d", &r, &e), 2, "%s", c.out);
    /* no reader: ENXIO from the open; with one, the check of the file type */
    cr_assert(r == -1 && (e == ENXIO || e == EPERM), "ta_profile_dump to a FIFO: %d, errno %d", r, e);
}

Test(hardening, report_file_of_our_own_is_replaced_and_a_new_one_made) {
    const char *mine = in_dir("mine");
    put_file(mine, "an old profile that is much longer than the first line of a new one\n"
                   "and goes on\n");
    cr_assert_eq(ta_profile_dump(mine), 0, "%s", strerror(errno));
    const char *t = file_text(mine);
    cr_assert(strncmp(t, "heap profile: ", 14) == 0, "%.200s", t);
    cr_assert_null(strstr(t, "old profile"), "not truncated");
    const char *fresh = in_dir("fresh");
    mode_t old = umask(022);
    cr_assert_eq(ta_profile_dump(fresh), 0, "%s", strerror(errno));
    umask(old);
    struct stat st;
    cr_assert_eq(stat(fresh, &st), 0);
    cr_assert(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0644, "mode %o", (unsigned)st.st_mode);
    cr_assert_eq(st.st_uid, geteuid());
}

/* ---- item 6: the text report and fd 2 ------------------------------------------ */
static char *stats_env[] = {"TIERALLOC_STATS=1", NULL};

/* The program closes stderr (and every descriptor above it) and opens a data
 * file, which gets fd 2: the report must not land in the data. */
Test(hardening, stats_report_never_goes_to_a_file_that_took_fd_2) {
    const char *data = in_dir("data");
    put_file(data, "");
    char *argv[] = {(char *)tu_build_path("tests/report_prog"), "fd2", (char *)data, NULL};
    static tu_child_t c;
    tu_run_exec(argv, stats_env, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_str_eq(file_text(data), "data\n", "the report went into the program's file");
}

/* The same for a program started with fd 2 closed. */
static void exec_without_fd2(void *arg) {
    char *argv[] = {(char *)tu_build_path("tests/report_prog"), "fd2", arg, NULL};
    close(2);
    execve(argv[0], argv, stats_env);
    _exit(127);
}

Test(hardening, stats_report_never_goes_to_fd_2_when_it_was_closed_at_start) {
    const char *data = in_dir("data");
    put_file(data, "");
    static tu_child_t c;
    tu_run_child(exec_without_fd2, (void *)data, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_str_eq(file_text(data), "data\n", "the report went into the program's file");
}

/* A program that closes stderr before it exits still gets its report, through
 * the copy taken at start (so the checks above are not "never write"). */
Test(hardening, stats_report_survives_a_closed_stderr) {
    char *argv[] = {(char *)tu_build_path("tests/report_prog"), "close2", NULL};
    static tu_child_t c;
    tu_run_exec(argv, stats_env, 60000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(strstr(c.err, "statistics, pid"), "no report: %s", c.err);
}
