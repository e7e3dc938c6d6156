/* sample.c: sampled allocations, their call stacks, the hooks a program sets
 * to observe them, and the heap profile built from them.
 *
 * Choosing.  Each thread counts down the bytes it allocates (ta_tls.sample_left,
 * decremented inline by malloc).  When the count goes below zero the allocation
 * that crossed it is sampled and a new count is drawn from an exponential
 * distribution of mean `rate` bytes: allocations are picked by a Poisson
 * process over the allocated bytes, so one of n bytes is picked with
 * probability 1 - exp(-n/rate) and stands for 1/(1 - exp(-n/rate)) such
 * allocations.  With sampling off (rate 0), or while nobody looks, the count
 * still runs, in 64 MiB steps (a large-block loop reaches the shared total
 * with an atomic add once per 64 MiB), and feeds the allocated-bytes total.
 *
 * Serving.  api.c gives a sampled small allocation a page-heap span of its own
 * and calls ta_sample_record(); the span points to the sample's record, and
 * free() of it reaches ta_free_slow (pagemap info 0), which calls
 * ta_sample_free() while any sampled block lives.
 *
 * Stacks are read by following frame pointers from the allocator's frame,
 * checking before each read that the memory is readable (one cheap system call
 * per new page of stack), and leading frames inside libtieralloc itself are
 * dropped.  Nothing here calls malloc: records and stack buckets come from the
 * metadata allocator and are reused; output is formatted into stack buffers
 * and written with write(2).
 *
 * Lock order: sample_lock is taken before the metadata lock and never with any
 * other allocator lock; hooks are called with no lock held. */
#define _GNU_SOURCE 1
#include "internal.h"
#include "pcache.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tieralloc.h"

#define MAX_DEPTH 32
#define NBUCKETS 4096                         /* hash heads of the stack table */
#define OFF_STEP ((int64_t)64 << 20)          /* countdown step with sampling off */
#define MAX_STEP ((int64_t)1 << 40)

/* One distinct allocation stack, with the weighted sums of its samples. */
typedef struct bucket {
    struct bucket *next; /* hash chain */
    uint64_t hash;
    uint32_t depth;
    uint64_t live_samples;
    double live_objs, live_bytes;   /* estimated: sums of weight and weight * size */
    double alloc_objs, alloc_bytes; /* the same over every sample ever taken */
    void *stack[MAX_DEPTH];
} bucket_t;

/* One live sampled block. */
struct ta_srec {
    struct ta_srec *next_free;
    bucket_t *b;
    void *ptr;
    size_t size;
    double weight;
};

static ta_lock_t sample_lock = TA_LOCK_INIT(TA_RANK_SAMPLE);
static bucket_t *table[NBUCKETS];
static struct ta_srec *rec_free;
static struct ta_hooks hooks;
static uint64_t sample_rate = TA_DEFAULT_SAMPLE_BYTES;
static uintptr_t own_lo, own_hi; /* libtieralloc's code, when it is a shared object */

uint64_t ta_sample_live;                  /* live sampled blocks (relaxed atomics) */
static uint64_t live_bytes, n_samples;    /* relaxed atomics */
static uint64_t allocated_done;           /* bytes counted by finished countdown steps */

static __thread struct {
    int64_t step;   /* the length the countdown was set to */
    uint64_t rng;
    uint8_t started, in_hook; /* in_hook: in a hook, or muted (ta_sample_mute) */
} tls __attribute__((tls_model("initial-exec")));

/* ---- numbers ----------------------------------------------------------------- */
/* natural log of x in (0, 1]: x = m * 2^e, ln m = 2 atanh((m-1)/(m+1)) */
/* Short series instead of libm (linking libm would map half a megabyte into
 * every process): sampling needs a few correct digits, not all of them. */

/* ln x for x > 0: x = m 2^e with m in [1, 2), ln m = 2 atanh((m-1)/(m+1)),
 * the series in t = (m-1)/(m+1) <= 1/3 to t^11 (relative error < 1e-6). */
static double ln01(double x) {
    union { double d; uint64_t u; } v = {.d = x};
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & ~((uint64_t)0x7ff << 52)) | ((uint64_t)1023 << 52);
    double t = (v.d - 1) / (v.d + 1), t2 = t * t;
    double s = t * (1 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7 + t2 * (1.0 / 9 + t2 / 11)))));
    return e * 0.69314718055994530942 + 2 * s;
}

/* 1 - exp(-x) for x >= 0: a series near 0 (where 1 - exp(-x) would cancel),
 * else exp(-x) = 2^-k 2^-f with k whole, f in [0, 1), 2^-f by its series. */
static double one_minus_exp_neg(double x) {
    if (x < 1e-3) return x * (1 - x * (0.5 - x / 6));
    if (x > 40) return 1;
    double y = x * 1.44269504088896340736; /* x / ln 2 */
    int k = (int)y;
    double f = (y - k) * 0.69314718055994530942; /* exp(-f), f < ln 2 */
    double e = 1 - f * (1 - f * (0.5 - f * (1.0 / 6 - f * (1.0 / 24 - f * (1.0 / 120 - f * (1.0 / 720 - f / 5040))))));
    union { double d; uint64_t u; } two = {.u = (uint64_t)(1023 - k) << 52}; /* 2^-k */
    return 1 - e * two.d;
}

static double weight_of(size_t n) {
    if (!sample_rate) return 1;
    double p = one_minus_exp_neg((double)(n ? n : 1) / (double)sample_rate);
    return p > 0 ? 1 / p : 1;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_next(void) {
    tls.rng += 0x9e3779b97f4a7c15ull;
    return mix64(tls.rng);
}

/* Whether samples are recorded.  Until somebody looks (a profile asked for in
 * the environment, an explicit sampling rate, or a hook), the countdown only
 * counts bytes: sampling then costs a decrement and nothing more. */
static bool sample_active;

static int64_t next_step(void) {
    if (!sample_rate) return OFF_STEP;
    /* nothing is recorded: the countdown only counts bytes, in long steps
     * without a random draw (a program of large blocks would otherwise run
     * out of it at nearly every call); ta_hooks_set restarts the caller's */
    if (!__atomic_load_n(&sample_active, __ATOMIC_RELAXED)) return OFF_STEP;
    double u = (double)((rng_next() >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double x = -ln01(u) * (double)sample_rate;
    if (x < 1) return 1;
    if (x > (double)MAX_STEP) return MAX_STEP;
    return (int64_t)x;
}

/* ---- set-up --------------------------------------------------------------------- */
/* The address range of our own code, when we are a shared object (LD_PRELOAD
 * or -ltieralloc), from the dynamic linker's table of loaded objects
 * (_dl_find_object: no lock, no allocation, glibc 2.35 and later); linked
 * into the program itself, we cannot tell our frames from the program's by
 * address and keep them all.  Looked up at the first sample, when the loader
 * has finished starting the process; both bounds are 0 until then, or when
 * unknown. */
static void find_own_code(void) {
#if defined(DLFO_STRUCT_HAS_EH_DBASE)
    struct dl_find_object r;
    if (_dl_find_object((void *)&find_own_code, &r) != 0) return;
    const struct link_map *m = r.dlfo_link_map;
    if (!m || !m->l_name || !m->l_name[0]) return; /* the main program */
    __atomic_store_n(&own_lo, (uintptr_t)r.dlfo_map_start, __ATOMIC_RELAXED);
    __atomic_store_n(&own_hi, (uintptr_t)r.dlfo_map_end, __ATOMIC_RELAXED);
#endif
}

void ta_sample_init(void) {
    sample_active = ta_cfg.sample_set || ta_cfg.profile_set;
    sample_rate = ta_cfg.sample_bytes;
    if (sample_rate > (uint64_t)MAX_STEP) sample_rate = (uint64_t)MAX_STEP;
}

/* ---- the countdown -------------------------------------------------------------- */
/* bytes of a finished step into the total (one thread: no atomic needed) */
static inline void count_done(uint64_t n) {
    if (ta_single_threaded())
        __atomic_store_n(&allocated_done, __atomic_load_n(&allocated_done, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
    else
        __atomic_add_fetch(&allocated_done, n, __ATOMIC_RELAXED);
}

bool ta_sample_tick(size_t n) {
    if (TA_UNLIKELY(!tls.started)) {
        /* first allocation of this thread: start the countdown as if it had
         * been running, and see whether this allocation crosses it */
        tls.started = 1;
        tls.rng = mix64((uintptr_t)&tls ^ ta_random_seed() ^ ta_os_now_ms());
        tls.step = next_step();
        ta_tls.sample_left = tls.step - (int64_t)n;
        if (ta_tls.sample_left >= 0) return false;
    }
    count_done((uint64_t)(tls.step - ta_tls.sample_left));
    tls.step = next_step();
    ta_tls.sample_left = tls.step;
    return sample_rate && __atomic_load_n(&sample_active, __ATOMIC_RELAXED) && !tls.in_hook;
}

bool ta_sample_mute(bool on) {
    bool was = tls.in_hook;
    tls.in_hook = on;
    return was;
}

/* Count the bytes of the current step (thread exit). */
void ta_sample_thread_exit(void) {
    if (!tls.started) return;
    count_done((uint64_t)(tls.step - ta_tls.sample_left));
    tls.step = ta_tls.sample_left;
}

/* ---- stacks ------------------------------------------------------------------------ */
/* Can 8 bytes at a (8-aligned) be read?  rt_sigprocmask reads its set argument
 * before it looks at `how`: EFAULT if unreadable, else EINVAL for the bad how,
 * and the signal mask is never changed. */
static bool readable(uintptr_t a) { return ta_sys4(SYS_rt_sigprocmask, ~0L, a, 0, 8) != -EFAULT; }

/* Pages of this thread's stack already seen readable: [stack_ok_lo, stack_ok_hi].
 * A thread's stack stays mapped while it runs, so later walks through the
 * same pages need no system call. */
static __thread uintptr_t stack_ok_lo __attribute__((tls_model("initial-exec")));
static __thread uintptr_t stack_ok_hi __attribute__((tls_model("initial-exec")));

static bool page_readable(uintptr_t a) {
    uintptr_t page = a >> 12;
    if (page >= stack_ok_lo && page <= stack_ok_hi) return true;
    if (!readable(a & ~(uintptr_t)7)) return false;
    /* grow the known range only when the new page touches it */
    if (!stack_ok_lo || page + 1 < stack_ok_lo || page > stack_ok_hi + 1) {
        stack_ok_lo = stack_ok_hi = page;
    } else if (page < stack_ok_lo) {
        stack_ok_lo = page;
    } else {
        stack_ok_hi = page;
    }
    return true;
}

static uint32_t walk_stack(void *frame, void **out) {
    static int own_code_looked_up;
    if (!__atomic_load_n(&own_code_looked_up, __ATOMIC_ACQUIRE)) {
        find_own_code(); /* two threads may both do it: the same answer */
        __atomic_store_n(&own_code_looked_up, 1, __ATOMIC_RELEASE);
    }
    uintptr_t self_lo = __atomic_load_n(&own_lo, __ATOMIC_RELAXED);
    uintptr_t self_hi = __atomic_load_n(&own_hi, __ATOMIC_RELAXED);
    uintptr_t fp = (uintptr_t)frame;
    bool skipping = self_lo != 0;
    uint32_t d = 0;
    if (!stack_ok_lo) stack_ok_lo = stack_ok_hi = fp >> 12; /* our own frame is readable */
    for (int steps = 0; steps < 4 * MAX_DEPTH && d < MAX_DEPTH; steps++) {
        if (!fp || (fp & 7)) break;
        /* the frame record is two words: the caller's frame, the return address */
        if (!page_readable(fp) || !page_readable(fp + 8)) break;
        uintptr_t next = ((const uintptr_t *)fp)[0], ret = ((const uintptr_t *)fp)[1];
        if (ret < 4096) break;
        if (skipping && ret >= self_lo && ret < self_hi) {
            /* still inside malloc and friends */
        } else {
            skipping = false;
            out[d++] = (void *)ret;
        }
        /* the stack grows down: a caller's frame is above, and not far */
        if (next <= fp || next - fp > ((uintptr_t)1 << 24)) break;
        fp = next;
    }
    return d;
}

static uint64_t hash_stack(void *const *st, uint32_t depth) {
    uint64_t h = depth;
    for (uint32_t i = 0; i < depth; i++) h = mix64(h ^ (uintptr_t)st[i]) + i;
    return h;
}

/* The bucket of a stack, created if new (sample_lock held). */
static bucket_t *bucket_for(void *const *st, uint32_t depth) {
    uint64_t h = hash_stack(st, depth);
    bucket_t **head = &table[h % NBUCKETS];
    for (bucket_t *b = *head; b; b = b->next)
        if (b->hash == h && b->depth == depth && memcmp(b->stack, st, depth * sizeof(void *)) == 0)
            return b;
    bucket_t *b = ta_meta_alloc(sizeof *b);
    if (!b) return NULL; /* out of memory for metadata: this block is not recorded */
    b->hash = h;
    b->depth = depth;
    memcpy(b->stack, st, depth * sizeof(void *));
    b->next = *head;
    *head = b;
    return b;
}

/* ---- recording ---------------------------------------------------------------------- */
static void call_hook(void (*fn)(const struct ta_sample_event *, void *), void *arg,
                      const struct ta_sample_event *ev) {
    tls.in_hook = 1; /* allocations the hook makes are not sampled */
    fn(ev, arg);
    tls.in_hook = 0;
}

void ta_sample_record(void *p, size_t n, void *frame) {
    void *stack[MAX_DEPTH];
    uint32_t depth = walk_stack(frame, stack);
    double w = weight_of(n);
    ta_span_t *s = ta_pagemap_span((uintptr_t)p >> TA_PAGE_SHIFT);
    ta_lock(&sample_lock);
    struct ta_srec *r = rec_free;
    if (r)
        rec_free = r->next_free;
    else
        r = ta_meta_alloc(sizeof *r);
    bucket_t *b = r ? bucket_for(stack, depth) : NULL;
    if (!b) { /* out of memory for metadata: the block stays, unrecorded */
        if (r) {
            r->next_free = rec_free;
            rec_free = r;
        }
        ta_unlock(&sample_lock);
        return;
    }
    r->next_free = NULL;
    r->b = b;
    r->ptr = p;
    r->size = n;
    r->weight = w;
    b->live_samples++;
    b->live_objs += w;
    b->live_bytes += w * (double)n;
    b->alloc_objs += w;
    b->alloc_bytes += w * (double)n;
    struct ta_hooks h = hooks;
    ta_unlock(&sample_lock);
    __atomic_store_n(&s->sample, r, __ATOMIC_RELEASE);
    __atomic_add_fetch(&n_samples, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&live_bytes, n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&ta_sample_live, 1, __ATOMIC_RELAXED);
    if (h.on_alloc) {
        struct ta_sample_event ev = {p, n, w, b->depth, b->stack};
        call_hook(h.on_alloc, h.arg, &ev);
    }
}

void ta_sample_free(void *p, ta_span_t *s) {
    (void)p;
    struct ta_srec *r = __atomic_exchange_n(&s->sample, NULL, __ATOMIC_ACQ_REL);
    if (!r) return;
    ta_lock(&sample_lock);
    bucket_t *b = r->b;
    struct ta_sample_event ev = {r->ptr, r->size, r->weight, b->depth, b->stack};
    if (--b->live_samples == 0) {
        b->live_objs = b->live_bytes = 0; /* no rounding residue */
    } else {
        b->live_objs -= r->weight;
        b->live_bytes -= r->weight * (double)r->size;
    }
    r->next_free = rec_free;
    rec_free = r;
    struct ta_hooks h = hooks;
    ta_unlock(&sample_lock);
    __atomic_sub_fetch(&live_bytes, ev.size, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&ta_sample_live, 1, __ATOMIC_RELAXED);
    if (h.on_free) call_hook(h.on_free, h.arg, &ev);
}

void ta_sample_counts(uint64_t *rate, uint64_t *total, uint64_t *live, uint64_t *lbytes,
                      uint64_t *allocated) {
    *rate = sample_rate;
    *total = __atomic_load_n(&n_samples, __ATOMIC_RELAXED);
    *live = __atomic_load_n(&ta_sample_live, __ATOMIC_RELAXED);
    *lbytes = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
    uint64_t a = __atomic_load_n(&allocated_done, __ATOMIC_RELAXED);
    if (tls.started) a += (uint64_t)(tls.step - ta_tls.sample_left); /* the caller's current step */
    *allocated = a;
}

TA_EXPORT int ta_hooks_set(const struct ta_hooks *h, struct ta_hooks *old) {
    ta_ensure_init();
    ta_lock(&sample_lock);
    if (old) *old = hooks;
    if (h) {
        hooks = *h;
        if ((h->on_alloc || h->on_free) && !__atomic_load_n(&sample_active, __ATOMIC_RELAXED)) {
            __atomic_store_n(&sample_active, true, __ATOMIC_RELAXED);
            if (tls.started) { /* the caller's countdown, in a step of the sampling rate from now on */
                count_done((uint64_t)(tls.step - ta_tls.sample_left));
                tls.step = next_step();
                ta_tls.sample_left = tls.step;
            }
        }
    } else {
        memset(&hooks, 0, sizeof hooks);
    }
    ta_unlock(&sample_lock);
    return 0;
}

/* ---- output ------------------------------------------------------------------------- */
int ta_open_report(const char *path) {
    char name[4096];
    size_t n = 0;
    if (!path || !*path) {
        errno = EINVAL;
        return -1;
    }
    for (const char *s = path; *s; s++) {
        if (s[0] == '%' && s[1] == 'p') {
            char pid[24];
            size_t k = ta_format(pid, sizeof pid, "%d", (int)getpid());
            if (n + k >= sizeof name) goto too_long;
            memcpy(name + n, pid, k);
            n += k;
            s++;
        } else {
            if (n + 1 >= sizeof name) goto too_long;
            name[n++] = *s;
        }
    }
    name[n] = '\0';
    /* a new file; or an existing one that is ours to replace */
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0 || errno != EEXIST) return fd;
    fd = open(name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    if (ftruncate(fd, 0) != 0 || fcntl(fd, F_SETFL, 0) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
too_long:
    errno = ENAMETOOLONG;
    return -1;
}

static uint64_t round_u64(double x) { return x <= 0 ? 0 : (uint64_t)(x + 0.5); }

int ta_profile_write_fd(int fd) {
    ta_ensure_init();
    int saved = errno;
    ta_out_t o;
    ta_out_init(&o, fd);
    ta_lock(&sample_lock);
    uint64_t tn = 0, tb = 0, an = 0, ab = 0;
    for (uint32_t i = 0; i < NBUCKETS; i++)
        for (bucket_t *b = table[i]; b; b = b->next) {
            if (!b->depth) continue;
            tn += round_u64(b->live_objs);
            tb += round_u64(b->live_bytes);
            an += round_u64(b->alloc_objs);
            ab += round_u64(b->alloc_bytes);
        }
    ta_out_printf(&o, "heap profile: %llu: %llu [%llu: %llu] @ heapprofile\n", (unsigned long long)tn,
                  (unsigned long long)tb, (unsigned long long)an, (unsigned long long)ab);
    for (uint32_t i = 0; i < NBUCKETS; i++)
        for (bucket_t *b = table[i]; b; b = b->next) {
            if (!b->depth) continue; /* pprof cannot place a sample without a stack */
            ta_out_printf(&o, "%llu: %llu [%llu: %llu] @", (unsigned long long)round_u64(b->live_objs),
                          (unsigned long long)round_u64(b->live_bytes),
                          (unsigned long long)round_u64(b->alloc_objs),
                          (unsigned long long)round_u64(b->alloc_bytes));
            for (uint32_t d = 0; d < b->depth; d++) ta_out_printf(&o, " %p", b->stack[d]);
            ta_out_put(&o, "\n", 1);
        }
    ta_unlock(&sample_lock);
    /* pprof maps the addresses to the program and its libraries with this */
    static const char maps_hdr[] = "\nMAPPED_LIBRARIES:\n";
    ta_out_put(&o, maps_hdr, sizeof maps_hdr - 1);
    int mfd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (mfd >= 0) {
        char chunk[1024];
        for (;;) {
            ssize_t r = read(mfd, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            ta_out_put(&o, chunk, (size_t)r);
        }
        close(mfd);
    } else {
        o.failed = true;
    }
    int r = ta_out_flush(&o);
    errno = saved;
    return r;
}

TA_EXPORT int ta_profile_dump(const char *path) {
    int saved = errno;
    int fd = ta_open_report(path);
    if (fd < 0) return -1;
    int r = ta_profile_write_fd(fd);
    if (close(fd) != 0) r = -1;
    else if (r != 0) errno = EIO;
    if (r == 0) errno = saved;
    return r;
}

void ta_sample_lock_all(bool fork) { ta_lock_or_drain(&sample_lock, fork); }
void ta_sample_unlock_all(bool child) {
    ta_lock_after_fork(&sample_lock, child);
}
