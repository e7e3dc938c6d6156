/* diag.c: text output for diagnostics and reports, without malloc or stdio.
 * A tiny printf subset formats into caller buffers; the one buffered writer
 * (ta_out_t: a buffer on the caller's stack and an fd) collects text and
 * sends it with write(2), through EINTR and short writes. */
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

/* Format into buf (at most cap bytes with the NUL); returns the length the
 * whole text needs, which may be cap or more (then it was cut). */
static size_t format_full(char *buf, size_t cap, const char *fmt, va_list ap) {
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
    return o.len;
}

size_t ta_vformat(char *buf, size_t cap, const char *fmt, va_list ap) {
    size_t n = format_full(buf, cap, fmt, ap);
    return n < cap ? n : (cap ? cap - 1 : 0);
}

size_t ta_format(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t n = ta_vformat(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

/* ---- the buffered writer ------------------------------------------------- */
bool ta_write_fd(int fd, const char *s, size_t n) {
    int saved = errno;
    bool ok = true;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ok = false;
            break;
        }
        s += w;
        n -= (size_t)w;
    }
    errno = saved;
    return ok;
}

void ta_out_init(ta_out_t *o, int fd) {
    o->fd = fd;
    o->failed = false;
    o->sink = NULL;
    o->sink_arg = NULL;
    o->len = 0;
}

int ta_out_flush(ta_out_t *o) {
    if (o->len && !o->failed) {
        bool ok = o->sink ? o->sink(o->sink_arg, o->buf, o->len) == 0 : ta_write_fd(o->fd, o->buf, o->len);
        if (!ok) o->failed = true;
    }
    o->len = 0;
    return o->failed ? -1 : 0;
}

void ta_out_put(ta_out_t *o, const char *s, size_t n) {
    while (n) {
        if (o->len == sizeof o->buf) ta_out_flush(o);
        size_t k = sizeof o->buf - o->len;
        if (k > n) k = n;
        memcpy(o->buf + o->len, s, k);
        o->len += k;
        s += k;
        n -= k;
    }
}

void ta_out_vprintf(ta_out_t *o, const char *fmt, va_list ap) {
    va_list again;
    va_copy(again, ap);
    size_t room = sizeof o->buf - o->len;
    size_t n = format_full(o->buf + o->len, room, fmt, ap);
    if (n >= room) { /* did not fit: flush, and format again into the whole buffer */
        ta_out_flush(o);
        n = format_full(o->buf, sizeof o->buf, fmt, again);
        if (n >= sizeof o->buf) n = sizeof o->buf - 1; /* longer than a buffer: cut */
    }
    va_end(again);
    o->len += n;
}

void ta_out_printf(ta_out_t *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ta_out_vprintf(o, fmt, ap);
    va_end(ap);
}

void ta_printf_fd(int fd, const char *fmt, ...) {
    ta_out_t o;
    ta_out_init(&o, fd);
    va_list ap;
    va_start(ap, fmt);
    ta_out_vprintf(&o, fmt, ap);
    va_end(ap);
    ta_out_flush(&o);
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
