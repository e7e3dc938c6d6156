/* tieralloc-replay: perform the allocation calls of a TIERALLOC_TRACE file
 * (docs/trace-format.md) again, in the same threads and each thread's order,
 * under whatever allocator is loaded (LD_PRELOAD).  Not linked with tieralloc.
 *
 *   tieralloc-replay [--touch] [--quiet] TRACE
 *
 * The whole trace is read and checked first (a damaged or truncated trace is
 * refused with a message naming the problem), then replayed; a free of a block
 * another thread allocated waits for that allocation (a ready flag per
 * object).  Prints key=value lines: calls, seconds, calls_per_s, peak_rss_kib,
 * the counts per operation and the peak live bytes, and whether they equal
 * what the trace says (exit status 0 only if they do). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OP_MALLOC = 1, OP_CALLOC, OP_REALLOC, OP_MEMALIGN, OP_POSIX_MEMALIGN, OP_ALIGNED_ALLOC, OP_VALLOC,
       OP_PVALLOC, OP_FREE, OP_SCOPE_BEGIN, OP_SCOPE_END, OP_N };
static const char *op_name[OP_N] = {"?", "malloc", "calloc", "realloc", "memalign", "posix_memalign",
                                    "aligned_alloc", "valloc", "pvalloc", "free", "scope_begin", "scope_end"};
#define F_SEQ 0x10
#define F_OLDNULL 0x20
#define F_NORESULT 0x40
#define NONE UINT32_MAX

typedef struct { uint32_t a, b; uint64_t v; } rec_t; /* a: object (old for realloc), b: new object or align log2; v: size << 8 | op */
typedef struct { void *p; uint64_t size; atomic_int ready; } obj_t;
typedef struct {
    uint32_t num;
    rec_t *recs;
    size_t n, cap;
    uint64_t prev_id;
    pthread_t th;
    uint64_t done[OP_N], failed;
    int64_t live, peak;
} thr_t;

static obj_t *objs;
static size_t nobjs, objs_cap;
static thr_t *thrs;
static size_t nthrs;
static bool touch;
static atomic_int go;

static _Noreturn void refuse(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(const char *path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tieralloc-replay: %s: not a usable trace: ", path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static _Noreturn void oom(void) {
    fprintf(stderr, "tieralloc-replay: out of memory\n");
    exit(3);
}
static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) oom();
    return q;
}

/* ---- id -> object index (open addressing, used while decoding) ----------- */
static uint64_t *idkeys;
static uint32_t *idvals;
static size_t idcap, idn;
static uint32_t *id_slot(uint64_t id, bool *fresh) {
    if ((idn + 1) * 2 > idcap) {
        size_t oc = idcap, nc = idcap ? idcap * 2 : 1 << 16;
        uint64_t *ok = idkeys;
        uint32_t *ov = idvals;
        idkeys = calloc(nc, sizeof *idkeys);
        idvals = calloc(nc, sizeof *idvals);
        if (!idkeys || !idvals) oom();
        idcap = nc;
        for (size_t i = 0; i < oc; i++) {
            if (!ok[i]) continue;
            size_t j = (ok[i] * 0x9e3779b97f4a7c15ull) >> 20 & (nc - 1);
            while (idkeys[j]) j = (j + 1) & (nc - 1);
            idkeys[j] = ok[i];
            idvals[j] = ov[i];
        }
        free(ok);
        free(ov);
    }
    size_t j = (id * 0x9e3779b97f4a7c15ull) >> 20 & (idcap - 1);
    while (idkeys[j] && idkeys[j] != id) j = (j + 1) & (idcap - 1);
    *fresh = !idkeys[j];
    if (*fresh) {
        idkeys[j] = id;
        idn++;
    }
    return &idvals[j];
}

static int pass; /* 0: register the objects the trace creates; 1: the rest */

static uint32_t add_object(void) {
    if (nobjs == objs_cap) {
        objs_cap = objs_cap ? objs_cap * 2 : 1 << 16;
        objs = xrealloc(objs, objs_cap * sizeof *objs);
    }
    uint32_t k = (uint32_t)nobjs++;
    memset(&objs[k], 0, sizeof objs[k]);
    return k;
}

/* the object a record creates: registered in pass 0, found in pass 1 (id 0:
 * a block the recorder could not name, created in pass 1) */
static uint32_t new_object(uint64_t id, const char *path) {
    bool fresh;
    if (!id) return pass ? add_object() : NONE;
    uint32_t *v = id_slot(id, &fresh);
    if (pass) return *v;
    if (!fresh) refuse(path, "object %" PRIu64 " allocated twice", id);
    return *v = add_object();
}

static uint32_t old_object(uint64_t id, const char *path) {
    bool fresh;
    if (!pass) return NONE;
    if (!idcap) refuse(path, "free of object %" PRIu64 " that the trace never allocated (truncated?)", id);
    uint32_t *v = id_slot(id, &fresh);
    if (fresh) refuse(path, "free of object %" PRIu64 " that the trace never allocated (truncated?)", id);
    return *v;
}

static uint64_t unzig(uint64_t prev, uint64_t z);
static int64_t want_live;

/* the object a free (or realloc) of t names by zz; in pass 1, checked to be
 * freed once and taken off the live bytes */
static uint32_t freed_object(thr_t *t, uint64_t zz, const char *path) {
    t->prev_id = unzig(t->prev_id, zz);
    uint32_t k = old_object(t->prev_id, path);
    if (pass) {
        if (objs[k].ready) refuse(path, "object %" PRIu64 " freed twice", t->prev_id);
        objs[k].ready = 1;
        want_live -= (int64_t)objs[k].size;
    }
    return k;
}

static thr_t *thread_of(uint32_t num) {
    for (size_t i = 0; i < nthrs; i++)
        if (thrs[i].num == num) return &thrs[i];
    thrs = xrealloc(thrs, (nthrs + 1) * sizeof *thrs);
    memset(&thrs[nthrs], 0, sizeof *thrs);
    thrs[nthrs].num = num;
    return &thrs[nthrs++];
}

static uint32_t get32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

typedef struct { const uint8_t *p, *end; bool bad; } rd_t;
static uint64_t var(rd_t *r) {
    uint64_t v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (r->p >= r->end) { r->bad = true; return 0; }
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return v;
    }
    r->bad = true;
    return 0;
}
static uint64_t unzig(uint64_t prev, uint64_t z) { return prev + (uint64_t)((int64_t)(z >> 1) ^ -(int64_t)(z & 1)); }

/* per-op counts and peak live bytes as the trace says, in file order */
static uint64_t want[OP_N];
static int64_t want_peak;

static void load(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "tieralloc-replay: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) refuse(path, "not a regular file");
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) oom();
    size_t got = 0;
    while (got < len) {
        ssize_t k = read(fd, buf + got, len - got);
        if (k <= 0) refuse(path, "read failed");
        got += (size_t)k;
    }
    close(fd);
    if (len < 8 || memcmp(buf, "TATRACE1", 8) != 0) refuse(path, "no TATRACE1 header (not a tieralloc trace)");
    for (pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < nthrs; i++) thrs[i].prev_id = 0;
    size_t off = 8;
    while (off < len) {
        if (len - off < 16) refuse(path, "truncated chunk header at byte %zu", off);
        uint32_t n = get32(buf + off), num = get32(buf + off + 4), nrec = get32(buf + off + 8), sum = get32(buf + off + 12);
        if (n > len - off - 16) refuse(path, "chunk at byte %zu is truncated (%u bytes announced, %zu left)", off, n, len - off - 16);
        const uint8_t *d = buf + off + 16;
        uint32_t h = 2166136261u;
        for (uint32_t i = 0; i < n; i++) h = (h ^ d[i]) * 16777619u;
        if (h != sum) refuse(path, "chunk at byte %zu is damaged (checksum)", off);
        thr_t *t = thread_of(num);
        rd_t r = {d, d + n, false};
        for (uint32_t i = 0; i < nrec; i++) {
            if (r.p >= r.end) refuse(path, "chunk at byte %zu has fewer records than announced", off);
            uint8_t ob = *r.p++;
            int op = ob & 15;
            if (op == 0 || op >= OP_N || (ob & 0x80)) refuse(path, "unknown record kind %u at byte %zu", ob, (size_t)(r.p - 1 - buf));
            rec_t rc = {NONE, NONE, (uint64_t)op};
            uint64_t size = 0;
            if (op == OP_FREE) {
                rc.a = freed_object(t, var(&r), path);
            } else if (op == OP_REALLOC) {
                if (!(ob & F_OLDNULL)) {
                    rc.a = freed_object(t, var(&r), path);
                }
                size = var(&r);
                if (!(ob & F_NORESULT)) {
                    t->prev_id = ob & F_SEQ ? t->prev_id + 1 : unzig(t->prev_id, var(&r));
                    rc.b = new_object(t->prev_id, path);
                }
            } else if (op != OP_SCOPE_BEGIN && op != OP_SCOPE_END) {
                size = var(&r);
                if (op >= OP_MEMALIGN && op <= OP_ALIGNED_ALLOC) {
                    uint64_t al = var(&r);
                    if (!al || (al & (al - 1))) refuse(path, "alignment %" PRIu64 " is not a power of two", al);
                    rc.b = (uint32_t)__builtin_ctzll(al);
                }
                t->prev_id = ob & F_SEQ ? t->prev_id + 1 : unzig(t->prev_id, var(&r));
                rc.a = new_object(t->prev_id, path);
            }
            if (r.bad) refuse(path, "a record runs past its chunk at byte %zu", off);
            if (size >> 48) refuse(path, "size %" PRIu64 " is implausible", size);
            if (!pass) continue;
            uint32_t nw = op == OP_REALLOC ? rc.b : (op == OP_FREE || op >= OP_SCOPE_BEGIN) ? NONE : rc.a;
            if (nw != NONE) {
                objs[nw].size = size;
                want_live += (int64_t)size;
                if (want_live > want_peak) want_peak = want_live;
            }
            rc.v |= size << 8;
            want[op]++;
            if (t->n == t->cap) {
                t->cap = t->cap ? t->cap * 2 : 1024;
                t->recs = xrealloc(t->recs, t->cap * sizeof *t->recs);
            }
            t->recs[t->n++] = rc;
        }
        if (r.p != r.end) refuse(path, "chunk at byte %zu has bytes after its last record", off);
        off += 16 + n;
    }
    }
    free(buf);
    free(idkeys);
    free(idvals);
    for (size_t i = 0; i < nobjs; i++) atomic_store(&objs[i].ready, 0);
}

static void wait_ready(uint32_t k) {
    for (int spins = 0; !atomic_load_explicit(&objs[k].ready, memory_order_acquire); spins++)
        if (spins > 64) sched_yield();
}

static void made(thr_t *t, uint32_t k, void *p, uint64_t size) {
    if (!p) {
        if (size) t->failed++;
        atomic_store_explicit(&objs[k].ready, 1, memory_order_release);
        return;
    }
    if (touch) memset(p, 0xa5, size);
    else if (size) memset(p, 0xa5, size < 16 ? size : 16);
    objs[k].p = p;
    t->live += (int64_t)size;
    if (t->live > t->peak) t->peak = t->live;
    atomic_store_explicit(&objs[k].ready, 1, memory_order_release);
}

static void *run(void *arg) {
    thr_t *t = arg;
    while (!atomic_load_explicit(&go, memory_order_acquire)) sched_yield();
    for (size_t i = 0; i < t->n; i++) {
        rec_t rc = t->recs[i];
        int op = (int)(rc.v & 0xff);
        uint64_t size = rc.v >> 8;
        void *p = NULL;
        switch (op) {
        case OP_MALLOC: p = malloc(size); break;
        case OP_CALLOC: p = calloc(1, size); break;
        case OP_MEMALIGN: p = memalign((size_t)1 << rc.b, size); break;
        case OP_POSIX_MEMALIGN: if (posix_memalign(&p, (size_t)1 << rc.b, size)) p = NULL; break;
        case OP_ALIGNED_ALLOC: p = aligned_alloc((size_t)1 << rc.b, size); break;
        case OP_VALLOC: p = valloc(size); break;
        case OP_PVALLOC: p = pvalloc(size); break;
        case OP_FREE:
            wait_ready(rc.a);
            free(objs[rc.a].p);
            t->live -= (int64_t)objs[rc.a].size;
            break;
        case OP_REALLOC: {
            void *old = NULL;
            if (rc.a != NONE) {
                wait_ready(rc.a);
                old = objs[rc.a].p;
                t->live -= (int64_t)objs[rc.a].size;
            }
            p = realloc(old, size);
            if (rc.b != NONE) {
                /* only the bytes past the old size are new: touch those */
                objs[rc.b].p = p;
                if (!p && size) t->failed++;
                if (p) {
                    t->live += (int64_t)size;
                    if (t->live > t->peak) t->peak = t->live;
                    if (touch) memset(p, 0xa5, size);
                }
                atomic_store_explicit(&objs[rc.b].ready, 1, memory_order_release);
            }
            break;
        }
        default: break; /* scope marks: counted only */
        }
        if (op != OP_FREE && op != OP_REALLOC && rc.a != NONE) made(t, rc.a, p, size);
        t->done[op]++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    bool quiet = false;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--touch")) touch = true;
        else if (!strcmp(argv[i], "--quiet")) quiet = true;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "usage: tieralloc-replay [--touch] [--quiet] TRACE\n");
            return 2;
        } else path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "usage: tieralloc-replay [--touch] [--quiet] TRACE\n");
        return 2;
    }
    load(path);
    for (size_t i = 0; i < nthrs; i++)
        if (pthread_create(&thrs[i].th, NULL, run, &thrs[i]) != 0) {
            fprintf(stderr, "tieralloc-replay: cannot start thread %zu of %zu\n", i + 1, nthrs);
            return 3;
        }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    atomic_store_explicit(&go, 1, memory_order_release);
    for (size_t i = 0; i < nthrs; i++) pthread_join(thrs[i].th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t done[OP_N] = {0}, calls = 0, failed = 0;
    int64_t peak = 0;
    for (size_t i = 0; i < nthrs; i++) {
        for (int op = 1; op < OP_N; op++) done[op] += thrs[i].done[op];
        failed += thrs[i].failed;
        peak = thrs[i].peak; /* exact only with one thread */
    }
    bool ok = failed == 0;
    for (int op = 1; op < OP_N; op++) {
        calls += done[op];
        if (done[op] != want[op]) ok = false;
    }
    if (nthrs == 1 && peak != want_peak) ok = false;
    printf("trace=%s\nthreads=%zu\ncalls=%" PRIu64 "\nseconds=%.6f\ncalls_per_s=%.0f\npeak_rss_kib=%ld\n", path, nthrs,
           calls, sec, sec > 0 ? (double)calls / sec : 0.0, ru.ru_maxrss);
    if (!quiet)
        for (int op = 1; op < OP_N; op++)
            if (want[op] || done[op]) printf("%s=%" PRIu64 " (trace %" PRIu64 ")\n", op_name[op], done[op], want[op]);
    printf("peak_live_bytes=%" PRId64 "\n", want_peak);
    if (nthrs == 1) printf("replayed_peak_live_bytes=%" PRId64 "\n", peak);
    printf("failed_allocations=%" PRIu64 "\ncheck=%s\n", failed, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
