/* diag.c: text output for diagnostics and reports, without malloc or stdio.
 * A tiny printf subset formats into caller buffers; write(2) sends them. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct outbuf {
    char *buf;
    size_t cap, len;
} outbuf_t;

static void put_char(outbuf_t *o, char c) {
    if (o->len + 1 < o->cap) o->buf[o->len] = c;
    o->len++;
}

static void put_str(outbuf_t *o, const char *s) {
    if (!s) s = "(null)";
    while (*s) put_char(o, *s++);
}

static void put_uint(outbuf_t *o, unsigned long long v, unsigned base, int width) {
    char tmp[32];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width) tmp[n++] = '0';
    while (n) put_char(o, tmp[--n]);
}

size_t ta_vformat(char *buf, size_t cap, const char *fmt, va_list ap) {
    outbuf_t o = {buf, cap, 0};
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            put_char(&o, *f);
            continue;
        }
        f++;
        int width = 0;
        while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
        int lng = 0;
        while (*f == 'l' || *f == 'z') {
            lng++;
            f++;
        }
        switch (*f) {
        case 'd': {
            long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
            if (v < 0) {
                put_char(&o, '-');
                put_uint(&o, (unsigned long long)-(v + 1) + 1, 10, width);
            } else {
                put_uint(&o, (unsigned long long)v, 10, width);
            }
            break;
        }
        case 'u': put_uint(&o, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 10, width); break;
        case 'x': put_uint(&o, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 16, width); break;
        case 'p':
            put_str(&o, "0x");
            put_uint(&o, (uintptr_t)va_arg(ap, void *), 16, 0);
            break;
        case 's': put_str(&o, va_arg(ap, const char *)); break;
        case 'c': put_char(&o, (char)va_arg(ap, int)); break;
        case '%': put_char(&o, '%'); break;
        case '\0': f--; break;
        default: put_char(&o, '%'); put_char(&o, *f); break;
        }
    }
    if (cap) buf[o.len < cap ? o.len : cap - 1] = '\0';
    return o.len < cap ? o.len : (cap ? cap - 1 : 0);
}

size_t ta_format(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t n = ta_vformat(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

void ta_write_fd(int fd, const char *s, size_t n) {
    int saved = errno;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        s += w;
        n -= (size_t)w;
    }
    errno = saved;
}

void ta_printf_fd(int fd, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    size_t n = ta_vformat(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ta_write_fd(fd, buf, n);
}

void ta_fatal(const char *fmt, ...) {
    char buf[512];
    size_t n = ta_format(buf, sizeof buf, "tieralloc: ");
    va_list ap;
    va_start(ap, fmt);
    n += ta_vformat(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    buf[n++] = '\n';
    ta_write_fd(2, buf, n);
    abort();
}

void ta_assert_fail(const char *what, const char *file, int line) {
    ta_fatal("internal assertion failed: %s (%s:%d)", what, file, line);
}
