/* test_bench_fakealloc.c: a stand-in allocator for the tests of
 * tools/tieralloc-compare, built as tests/.libs/test_bench_fakealloc.so.
 *
 * It replaces malloc, free, calloc and realloc by forwarders to glibc's
 * __libc_* functions (so a program preloaded with it runs normally, and the
 * benchmark binary reports this library as the one answering malloc), and it
 * misbehaves on request, read from TB_FAKEALLOC when it is loaded:
 *   crash   the process dies of SIGSEGV before main
 *   exit    the process exits with status 3 before main
 *   mute    the process runs, but its standard output goes to /dev/null
 * Only processes that preload it are affected, so in a comparison the
 * workload fails under this allocator alone. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

__attribute__((visibility("default"))) void *malloc(size_t n) { return __libc_malloc(n); }
__attribute__((visibility("default"))) void free(void *p) { __libc_free(p); }
__attribute__((visibility("default"))) void *calloc(size_t n, size_t m)
{
    return __libc_calloc(n, m);
}
__attribute__((visibility("default"))) void *realloc(void *p, size_t n)
{
    return __libc_realloc(p, n);
}

__attribute__((constructor)) static void fakealloc_init(void)
{
    const char *mode = getenv("TB_FAKEALLOC");
    if (!mode)
        return;
    if (strcmp(mode, "crash") == 0) {
        static const char msg[] = "fakealloc: crashing on purpose\n";
        (void)!write(2, msg, sizeof msg - 1);
        raise(SIGSEGV);
    } else if (strcmp(mode, "exit") == 0) {
        _exit(3);
    } else if (strcmp(mode, "mute") == 0) {
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd >= 0 && fd != 1) {
            dup2(fd, 1);
            close(fd);
        }
    }
}
