/* report_prog: a program with the allocator linked in (libtieralloc_core,
 * statically, so that a setuid copy of it works), for the tests of the
 * reports at exit (test_hardening.c).
 *
 *   report_prog alloc        allocate and free a little, print "ok"
 *   report_prog fd2 DATA     the same, then close fd 2 and every fd above it
 *                            and open DATA for appending, which gets fd 2; write
 *                            "data\n" to it and exit (exit 3 if it got another fd)
 *   report_prog close2       close fd 2, as programs that check their output
 *                            before exit do (the report must still come out) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void churn(void) {
    void *v[64];
    for (int i = 0; i < 64; i++) {
        v[i] = malloc((size_t)(i + 1) * 100);
        if (!v[i]) exit(4);
        memset(v[i], i, (size_t)(i + 1) * 100);
    }
    for (int i = 0; i < 64; i++) free(v[i]);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    churn();
    if (strcmp(argv[1], "alloc") == 0) {
        puts("ok");
        return 0;
    }
    if (strcmp(argv[1], "fd2") == 0 && argc == 3) {
        close(2);
        closefrom(3);
        int fd = open(argv[2], O_WRONLY | O_APPEND);
        if (fd != 2) return 3;
        if (write(fd, "data\n", 5) != 5) return 5;
        churn();
        return 0;
    }
    if (strcmp(argv[1], "close2") == 0) {
        close(2);
        churn();
        return 0;
    }
    return 2;
}
