/* test_release.c: what is shipped besides the code.
 *
 * One version everywhere.  It is written once, in configure.ac
 * (PACKAGE_VERSION in config.h); everything that shows it must show the same:
 * the header's macros, the library's statistics reports (text and JSON),
 * tieralloc.pc, tieralloc-run --version, the man pages, and debian/changelog
 * (in a git checkout; the dist tarball has no debian/ and that check is
 * skipped there).
 *
 * The man pages render without a warning (groff -ww -z -man). */
#include "testutil.h"

#include <config.h>
#include <criterion/criterion.h>
#include <tieralloc.h>

extern char **environ;

/* The whole of a small file (NUL-terminated), or NULL when it cannot be read. */
static char *slurp(const char *path) {
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* The first line of text, as a new string, for messages. */
static const char *first_line(const char *text) {
    static char line[512];
    size_t n = strcspn(text, "\n");
    if (n >= sizeof line) n = sizeof line - 1;
    memcpy(line, text, n);
    line[n] = '\0';
    return line;
}

Test(version, header_macros_are_the_configured_version) {
    cr_assert_str_eq(TIERALLOC_VERSION, PACKAGE_VERSION);
    char parts[64];
    snprintf(parts, sizeof parts, "%d.%d.%d", TIERALLOC_VERSION_MAJOR, TIERALLOC_VERSION_MINOR,
             TIERALLOC_VERSION_PATCH);
    cr_assert_str_eq(parts, PACKAGE_VERSION, "MAJOR.MINOR.PATCH macros give %s", parts);
    cr_assert_eq(TIERALLOC_VERSION_NUMBER,
                 TIERALLOC_VERSION_MAJOR * 10000 + TIERALLOC_VERSION_MINOR * 100 + TIERALLOC_VERSION_PATCH);
}

Test(version, stats_reports_name_the_version) {
    char want[128];
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    cr_assert_eq(ta_stats_print(f, TA_STATS_TEXT), 0);
    cr_assert_eq(ta_stats_print(f, TA_STATS_JSON), 0);
    fflush(f);
    rewind(f);
    static char text[1 << 17];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    snprintf(want, sizeof want, "tieralloc %s statistics", PACKAGE_VERSION);
    cr_assert_not_null(strstr(text, want), "text report lacks \"%s\"", want);
    snprintf(want, sizeof want, "{\"tieralloc\": \"%s\"", PACKAGE_VERSION);
    cr_assert_not_null(strstr(text, want), "JSON report lacks %s", want);
}

Test(version, pkg_config_file) {
    const char *pc = slurp(tu_build_path("tieralloc.pc"));
    cr_assert_not_null(pc, "cannot read %s", tu_build_path("tieralloc.pc"));
    char want[128];
    snprintf(want, sizeof want, "\nVersion: %s\n", PACKAGE_VERSION);
    cr_assert_not_null(strstr(pc, want), "tieralloc.pc has no line \"Version: %s\"", PACKAGE_VERSION);
}

Test(version, tieralloc_run_version) {
    char run[4096];
    snprintf(run, sizeof run, "%s", tu_build_path("tools/tieralloc-run"));
    char *argv[] = {"/bin/sh", run, "--version", NULL};
    tu_child_t c;
    tu_run_exec(argv, environ, 30000, &c);
    cr_assert(c.exited && c.exit_code == 0, "tieralloc-run --version: %s", tu_describe(&c));
    char want[128];
    snprintf(want, sizeof want, "tieralloc-run (tieralloc) %s\n", PACKAGE_VERSION);
    cr_assert_str_eq(c.out, want);
}

static const char *const pages[] = {"man/tieralloc.3", "man/tieralloc-run.1", "man/tieralloc-compare.1",
                                    "man/tieralloc-bench.1"};

Test(version, man_pages) {
    char want[128];
    snprintf(want, sizeof want, "\"tieralloc %s\"", PACKAGE_VERSION);
    for (size_t i = 0; i < sizeof pages / sizeof *pages; i++) {
        const char *text = slurp(tu_build_path(pages[i]));
        cr_assert_not_null(text, "cannot read %s", pages[i]);
        cr_assert(strncmp(text, ".TH ", 4) == 0 && strstr(first_line(text), want),
                  "%s: its .TH line should name %s: %s", pages[i], want, first_line(text));
    }
}

/* debian/changelog's first entry: "tieralloc (VERSION-REVISION) ..." */
Test(version, debian_changelog) {
    const char *src = getenv("TA_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/debian/changelog", src && *src ? src : tu_build_dir());
    const char *text = slurp(path);
    if (!text) cr_skip_test("no %s (a dist tarball has no debian/)", path);
    char want[128];
    snprintf(want, sizeof want, "tieralloc (%s-", PACKAGE_VERSION);
    cr_assert(strncmp(text, want, strlen(want)) == 0, "debian/changelog starts \"%s\", not \"%s\"",
              first_line(text), want);
}

Test(man, pages_render_without_warnings) {
    for (size_t i = 0; i < sizeof pages / sizeof *pages; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s", tu_build_path(pages[i]));
        char *argv[] = {"/usr/bin/groff", "-ww", "-z", "-man", path, NULL};
        tu_child_t c;
        tu_run_exec(argv, environ, 60000, &c);
        cr_assert(c.exited && c.exit_code == 0, "groff %s: %s", pages[i], tu_describe(&c));
        cr_assert_eq(c.err_len, 0, "groff -ww warns about %s:\n%s", pages[i], c.err);
    }
}
