/* stats.c: one consistent snapshot of every tier (struct ta_stats), and the
 * reports built from it: ta_stats_print (text or JSON), malloc_stats,
 * mallinfo2/mallinfo, malloc_info, and TIERALLOC_STATS / TIERALLOC_PROFILE at
 * exit.  Reports are formatted into stack buffers (ta_format) and written with
 * write(2), or fwrite for a caller's FILE, never through malloc.
 *
 * How the snapshot adds up.  The counters live in their tiers: the page heap
 * counts spans (in use per size class, large, free, released), central counts
 * free objects in spans and batches in transfer caches, each thread cache
 * counts its lists, the OS layer counts mapped bytes, metadata counts its
 * chunks.  The snapshot holds the registry, central, page-heap and metadata
 * locks together (the fork order), so the page heap, central and metadata
 * figures are one instant; only thread-cache list lengths are read while
 * their owners run.  Blocks in use are then what is left of each class's
 * spans after the free blocks: spans * objects - span free - transfer - cached.
 * That makes the identity of tieralloc.h exact in every snapshot, and the
 * in-use figure exact whenever the other threads are quiet. */
#include "internal.h"
#include "pcache.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tieralloc.h"

/* ---- the snapshot --------------------------------------------------------- */
static uint64_t take(int64_t *have, int64_t want) {
    int64_t t = *have < want ? *have : want;
    if (t < 0) t = 0;
    *have -= t;
    return (uint64_t)t;
}

void ta_snapshot(struct ta_stats *st, bool resident) {
    ta_ensure_init();
    memset(st, 0, sizeof *st);
    ta_os_stats_t os;
    ta_pageheap_stats_t ph;
    uint64_t class_spans[TA_MAX_CLASSES];
    ta_central_stats_t cs[TA_MAX_CLASSES];
    ta_pcache_stats_t pc;
    ta_arena_stats_t ar;

    ta_pcache_lock_all(false);
    ta_central_lock_all(false);
    ta_pageheap_lock_all(false);
    ta_meta_lock_all(false);
    ta_os_stats(&os);
    ta_pageheap_stats_locked(&ph, class_spans);
    for (uint32_t c = 1; c < ta_nclasses; c++) ta_central_stats_locked(c, &cs[c]);
    ta_pcache_stats_locked(&pc);
    uint64_t quarantined[TA_MAX_CLASSES] = {0};
#ifdef TA_HARDENED
    ta_quarantine_counts(quarantined); /* read racily, as the caches are */
#endif
    uint64_t meta = ta_meta_bytes() + ta_pagemap_bytes();
    ta_arena_stats(&ar);
    ta_meta_unlock_all(false);
    ta_pageheap_unlock_all(false);
    ta_central_unlock_all(false);
    ta_pcache_unlock_all(false);

    st->version = TA_STATS_VERSION;
    st->size = sizeof *st;
    st->nclasses = ta_nclasses < TA_STATS_CLASSES ? ta_nclasses : TA_STATS_CLASSES;
    for (uint32_t c = 1; c < st->nclasses; c++) {
        const ta_class_info_t *ci = &ta_class[c];
        struct ta_class_stats *k = &st->cls[c];
        k->size = ci->size;
        k->span_bytes = (uint64_t)ci->pages << TA_PAGE_SHIFT;
        k->objects_per_span = ci->objects;
        k->spans = class_spans[c];
        k->tail_bytes = k->spans * (k->span_bytes - k->objects_per_span * k->size);
        /* every object of the class's spans is in exactly one place; the
         * thread-cache counts are racy, so a shortfall comes out of them */
        int64_t left = (int64_t)(k->spans * k->objects_per_span);
        k->span_free_objects = take(&left, (int64_t)(cs[c].span_free_bytes / ci->size));
        k->central_objects = take(&left, (int64_t)(cs[c].transfer_bytes / ci->size));
        /* the quarantine counts as tier 1: freed blocks on their way back to it */
        k->cache_objects = take(&left, (int64_t)(pc.objects[c] + quarantined[c]));
        st->quarantine_bytes += (quarantined[c] < k->cache_objects ? quarantined[c] : k->cache_objects) * ci->size;
        k->inuse_objects = (uint64_t)left;
        k->inuse_bytes = k->inuse_objects * k->size;
        k->to_caches_total = cs[c].to_caches;
        k->from_caches_total = cs[c].from_caches;
        k->transfer_hits_total = cs[c].hits;
        k->transfer_misses_total = cs[c].misses;

        st->small_inuse_bytes += k->inuse_bytes;
        st->thread_cache_bytes += k->cache_objects * k->size;
        st->central_bytes += k->central_objects * k->size;
        st->span_free_bytes += k->span_free_objects * k->size;
        st->span_tail_bytes += k->tail_bytes;
        st->transfer_hits_total += cs[c].hits;
        st->transfer_misses_total += cs[c].misses;
    }
    /* arena chunks are large spans to the page heap; its counter moves just
     * after the page heap's, so it may briefly lag (never lead) */
    uint64_t arena = ar.held_bytes < ph.large_bytes ? ar.held_bytes : ph.large_bytes;
    uint64_t arena_chunks = ar.held_chunks < ph.large_count ? ar.held_chunks : ph.large_count;
    st->arena_bytes = arena;
    st->large_inuse_bytes = ph.large_bytes - arena;
    st->large_inuse_blocks = ph.large_count - arena_chunks;
    st->inuse_bytes = st->small_inuse_bytes + st->large_inuse_bytes;
    st->mapped_bytes = os.mapped_bytes;
    st->released_bytes = ph.released_bytes;
    st->pageheap_free_bytes = ph.free_bytes;
    st->metadata_bytes = meta;
    /* after the locks are let go (a look at every page of the mappings, a
     * system call per mapping and per 4 MiB): a chunk mapped meanwhile is not
     * in `meta`.  Not for mallinfo2 and malloc_info, which programs may poll */
    if (resident) {
        uint64_t meta_res = ta_meta_resident() + ta_pagemap_resident();
        st->metadata_resident_bytes = meta_res < meta ? meta_res : meta;
    }
    st->guard_bytes = ph.guard_bytes;

    st->cache_alloc_misses_total = pc.alloc_misses;
    st->cache_free_misses_total = pc.free_misses;
    st->threads = pc.caches;
    st->pageheap_allocs_total = ph.n_alloc;
    st->pageheap_frees_total = ph.n_free;
    st->pageheap_grows_total = ph.n_grow_os;
    st->pageheap_coalesces_total = ph.n_coalesce;
    st->os_mmap_total = os.n_mmap;
    st->os_munmap_total = os.n_munmap;
    st->os_madvise_total = os.n_madvise;
    st->os_moves_total = os.n_moved;
    st->os_released_bytes_total = os.released_bytes;
    ta_sample_counts(&st->sample_rate, &st->samples_total, &st->sampled_live_blocks,
                     &st->sampled_live_bytes, &st->allocated_bytes_total);
}

TA_EXPORT int ta_stats_get(struct ta_stats *st) {
    if (!st || st->size < 8) {
        errno = EINVAL;
        return -1;
    }
    struct ta_stats s;
    ta_snapshot(&s, true);
    uint32_t n = st->size < sizeof s ? st->size : (uint32_t)sizeof s;
    s.size = n;
    memcpy(st, &s, n);
    return 0;
}

/* ---- output: ta_out_t (diag.c), to an fd or a caller's FILE ------------------ */
static int file_sink(void *fp, const char *s, size_t n) {
    return fwrite(s, 1, n, fp) == n ? 0 : -1;
}

/* A writer into a caller's stdio stream. */
static void out_to_file(ta_out_t *o, FILE *fp) {
    ta_out_init(o, -1);
    o->sink = file_sink;
    o->sink_arg = fp;
}

/* s right-aligned in a field of w characters */
static void out_col(ta_out_t *o, const char *s, int w) {
    int n = (int)strlen(s);
    for (int i = n; i < w; i++) ta_out_put(o, " ", 1);
    ta_out_put(o, s, (size_t)n);
}
static void out_num(ta_out_t *o, uint64_t v, int w) {
    char b[24];
    ta_format(b, sizeof b, "%llu", (unsigned long long)v);
    out_col(o, b, w);
}
/* bytes as MiB with one decimal */
static void out_mib(ta_out_t *o, uint64_t v, int w) {
    char b[32];
    uint64_t tenths = (v * 10 + (1 << 19)) >> 20;
    if (v > (UINT64_MAX / 10)) tenths = (v >> 20) * 10;
    ta_format(b, sizeof b, "%llu.%u", (unsigned long long)(tenths / 10), (unsigned)(tenths % 10));
    out_col(o, b, w);
}

/* ---- the text report -------------------------------------------------------- */
static void mem_row(ta_out_t *o, const char *name, uint64_t bytes) {
    ta_out_printf(o, "  %s", name);
    for (int i = (int)strlen(name); i < 34; i++) ta_out_put(o, " ", 1);
    out_num(o, bytes, 16);
    out_mib(o, bytes, 11);
    ta_out_put(o, "\n", 1);
}

static void write_text(ta_out_t *o, const struct ta_stats *s) {
    static const char rule[] =
        "------------------------------------------------------------------------------------------"
        "--------------\n";
    char name[80];
    ta_out_put(o, rule, sizeof rule - 1);
    ta_out_printf(o, "tieralloc %s statistics, pid %d\n", TIERALLOC_VERSION, (int)getpid());
    ta_out_put(o, rule, sizeof rule - 1);
    ta_out_printf(o, "Memory by tier                                 bytes        MiB\n");
    mem_row(o, "in use by the program", s->inuse_bytes);
    mem_row(o, "  small blocks (class sizes)", s->small_inuse_bytes);
    ta_format(name, sizeof name, "  large blocks (%llu, pages)", (unsigned long long)s->large_inuse_blocks);
    mem_row(o, name, s->large_inuse_bytes);
    if (ta_fe.percpu)
        ta_format(name, sizeof name, "CPU caches (%llu CPUs, rseq)", (unsigned long long)s->threads);
    else
        ta_format(name, sizeof name, "thread caches (%llu threads)", (unsigned long long)s->threads);
    mem_row(o, name, s->thread_cache_bytes);
    if (s->quarantine_bytes) mem_row(o, "  of which in quarantine", s->quarantine_bytes);
    mem_row(o, "central transfer caches", s->central_bytes);
    mem_row(o, "free in spans of size classes", s->span_free_bytes);
    mem_row(o, "span tails", s->span_tail_bytes);
    mem_row(o, "page heap free (resident)", s->pageheap_free_bytes);
    mem_row(o, "scoped arenas", s->arena_bytes);
    mem_row(o, "metadata", s->metadata_bytes);
    mem_row(o, "  of which resident", s->metadata_resident_bytes);
    if (s->guard_bytes) mem_row(o, "guard pages (never resident)", s->guard_bytes);
    mem_row(o, "= mapped - released", s->mapped_bytes - s->released_bytes);
    mem_row(o, "released to the OS (free)", s->released_bytes);
    mem_row(o, "mapped from the OS", s->mapped_bytes);
    ta_out_put(o, "\n", 1);
    ta_out_printf(o, "Activity by tier\n");
    ta_out_printf(o, "  tier-1 caches      alloc misses (refills) %llu, free misses (flushes) %llu\n",
               (unsigned long long)s->cache_alloc_misses_total, (unsigned long long)s->cache_free_misses_total);
    ta_out_printf(o, "  transfer caches    hits %llu, misses %llu\n", (unsigned long long)s->transfer_hits_total,
               (unsigned long long)s->transfer_misses_total);
    ta_out_printf(o, "  page heap          spans allocated %llu, freed %llu, grown from the OS %llu times, "
                  "coalesced %llu\n",
               (unsigned long long)s->pageheap_allocs_total, (unsigned long long)s->pageheap_frees_total,
               (unsigned long long)s->pageheap_grows_total, (unsigned long long)s->pageheap_coalesces_total);
    ta_out_printf(o, "  OS                 mmap %llu, munmap %llu, madvise %llu (", (unsigned long long)s->os_mmap_total,
               (unsigned long long)s->os_munmap_total, (unsigned long long)s->os_madvise_total);
    out_mib(o, s->os_released_bytes_total, 0);
    ta_out_printf(o, " MiB released in all), blocks moved by mremap %llu\n", (unsigned long long)s->os_moves_total);
    ta_out_printf(o, "  allocated in all   %llu bytes requested\n", (unsigned long long)s->allocated_bytes_total);
    if (s->sample_rate)
        ta_out_printf(o, "  sampling           1 in %llu bytes: %llu samples, %llu live (%llu bytes)\n",
                   (unsigned long long)s->sample_rate, (unsigned long long)s->samples_total,
                   (unsigned long long)s->sampled_live_blocks, (unsigned long long)s->sampled_live_bytes);
    else
        ta_out_printf(o, "  sampling           off\n");
    ta_out_put(o, "\n", 1);
    ta_out_printf(o, "Size classes with spans\n");
    static const struct {
        const char *h;
        int w;
    } cols[] = {{"class", 6},  {"size", 8},    {"spans", 8},      {"in use", 10},    {"in use MiB", 11},
                {"cached", 9}, {"central", 9}, {"span free", 10}, {"to caches", 11}, {"from caches", 12}};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) out_col(o, cols[i].h, cols[i].w);
    ta_out_put(o, "\n", 1);
    for (uint32_t c = 1; c < s->nclasses; c++) {
        const struct ta_class_stats *k = &s->cls[c];
        if (!k->spans && !k->to_caches_total) continue;
        out_num(o, c, 6);
        out_num(o, k->size, 8);
        out_num(o, k->spans, 8);
        out_num(o, k->inuse_objects, 10);
        out_mib(o, k->inuse_bytes, 11);
        out_num(o, k->cache_objects, 9);
        out_num(o, k->central_objects, 9);
        out_num(o, k->span_free_objects, 10);
        out_num(o, k->to_caches_total, 11);
        out_num(o, k->from_caches_total, 12);
        ta_out_put(o, "\n", 1);
    }
    ta_out_put(o, rule, sizeof rule - 1);
}

/* ---- JSON ------------------------------------------------------------------------ */
#define J(name) {#name, offsetof(struct ta_stats, name)}
static const struct {
    const char *name;
    size_t off;
} json_fields[] = {
    J(mapped_bytes), J(released_bytes), J(inuse_bytes), J(small_inuse_bytes), J(large_inuse_bytes),
    J(large_inuse_blocks), J(thread_cache_bytes), J(central_bytes), J(span_free_bytes),
    J(span_tail_bytes), J(pageheap_free_bytes), J(arena_bytes), J(metadata_bytes),
    J(allocated_bytes_total), J(cache_alloc_misses_total), J(cache_free_misses_total),
    J(transfer_hits_total), J(transfer_misses_total), J(pageheap_allocs_total), J(pageheap_frees_total),
    J(pageheap_grows_total), J(pageheap_coalesces_total), J(os_mmap_total), J(os_munmap_total),
    J(os_madvise_total), J(os_released_bytes_total), J(threads), J(sample_rate), J(samples_total),
    J(sampled_live_blocks), J(sampled_live_bytes), J(guard_bytes), J(quarantine_bytes),
    J(metadata_resident_bytes), J(os_moves_total),
};
#undef J
#define K(name) {#name, offsetof(struct ta_class_stats, name)}
static const struct {
    const char *name;
    size_t off;
} json_class_fields[] = {
    K(size), K(span_bytes), K(objects_per_span), K(spans), K(inuse_objects), K(inuse_bytes),
    K(cache_objects), K(central_objects), K(span_free_objects), K(tail_bytes), K(to_caches_total),
    K(from_caches_total), K(transfer_hits_total), K(transfer_misses_total),
};
#undef K

static uint64_t field(const void *base, size_t off) {
    uint64_t v;
    memcpy(&v, (const char *)base + off, sizeof v);
    return v;
}

static void write_json(ta_out_t *o, const struct ta_stats *s) {
    ta_out_printf(o, "{\"tieralloc\": \"%s\", \"version\": %u, \"pid\": %d", TIERALLOC_VERSION,
               (unsigned)s->version, (int)getpid());
    for (size_t i = 0; i < sizeof json_fields / sizeof json_fields[0]; i++)
        ta_out_printf(o, ",\n \"%s\": %llu", json_fields[i].name,
                   (unsigned long long)field(s, json_fields[i].off));
    ta_out_printf(o, ",\n \"classes\": [");
    for (uint32_t c = 1; c < s->nclasses; c++) {
        ta_out_printf(o, "%s\n  {\"class\": %u", c > 1 ? "," : "", c);
        for (size_t i = 0; i < sizeof json_class_fields / sizeof json_class_fields[0]; i++)
            ta_out_printf(o, ", \"%s\": %llu", json_class_fields[i].name,
                       (unsigned long long)field(&s->cls[c], json_class_fields[i].off));
        ta_out_put(o, "}", 1);
    }
    ta_out_printf(o, "\n ]\n}\n");
}

TA_EXPORT int ta_stats_print(FILE *fp, int flags) {
    if (!fp) {
        errno = EINVAL;
        return -1;
    }
    struct ta_stats s;
    ta_snapshot(&s, true);
    ta_out_t o;
    out_to_file(&o, fp);
    if (flags & TA_STATS_JSON)
        write_json(&o, &s);
    else
        write_text(&o, &s);
    return ta_out_flush(&o);
}

void ta_stats_write_text(int fd) {
    struct ta_stats s;
    ta_snapshot(&s, true);
    ta_out_t o;
    ta_out_init(&o, fd);
    write_text(&o, &s);
    ta_out_flush(&o);
}

static int write_json_fd(int fd) {
    struct ta_stats s;
    ta_snapshot(&s, true);
    ta_out_t o;
    ta_out_init(&o, fd);
    write_json(&o, &s);
    return ta_out_flush(&o);
}

/* ---- glibc's introspection ---------------------------------------------------------- */
void ta_stats_mallinfo(struct mallinfo2 *mi) {
    struct ta_stats s;
    ta_snapshot(&s, false);
    memset(mi, 0, sizeof *mi);
    mi->arena = s.mapped_bytes;          /* all memory from the OS */
    mi->hblks = s.large_inuse_blocks;     /* blocks with a span of their own */
    mi->hblkhd = s.large_inuse_bytes;
    mi->uordblks = s.inuse_bytes;
    mi->fsmblks = s.thread_cache_bytes + s.central_bytes; /* free blocks ready to hand out */
    mi->fordblks = s.thread_cache_bytes + s.central_bytes + s.span_free_bytes + s.span_tail_bytes +
                   s.pageheap_free_bytes + s.arena_bytes;
    mi->keepcost = s.released_bytes;
}

int ta_stats_write_xml(FILE *fp) {
    struct ta_stats s;
    ta_snapshot(&s, false);
    ta_out_t o;
    out_to_file(&o, fp);
    ta_out_printf(&o,
        "<malloc version=\"tieralloc-%s\">\n"
        "<heap nr=\"0\">\n"
        "<total type=\"inuse\" size=\"%llu\"/>\n"
        "<total type=\"thread_cache\" size=\"%llu\"/>\n"
        "<total type=\"central\" size=\"%llu\"/>\n"
        "<total type=\"span_free\" size=\"%llu\"/>\n"
        "<total type=\"span_tail\" size=\"%llu\"/>\n"
        "<total type=\"free\" size=\"%llu\"/>\n"
        "<total type=\"arena\" size=\"%llu\"/>\n"
        "<total type=\"released\" size=\"%llu\"/>\n"
        "<total type=\"large\" count=\"%llu\" size=\"%llu\"/>\n"
        "</heap>\n"
        "<system type=\"current\" size=\"%llu\"/>\n"
        "<system type=\"metadata\" size=\"%llu\"/>\n"
        "</malloc>\n",
        TIERALLOC_VERSION, (unsigned long long)s.inuse_bytes, (unsigned long long)s.thread_cache_bytes,
        (unsigned long long)s.central_bytes, (unsigned long long)s.span_free_bytes,
        (unsigned long long)s.span_tail_bytes, (unsigned long long)s.pageheap_free_bytes,
        (unsigned long long)s.arena_bytes, (unsigned long long)s.released_bytes,
        (unsigned long long)s.large_inuse_blocks, (unsigned long long)s.large_inuse_bytes,
        (unsigned long long)s.mapped_bytes, (unsigned long long)s.metadata_bytes);
    return ta_out_flush(&o);
}

/* ---- reports at exit ------------------------------------------------------------------ */
/* The report and its diagnostics go only to a descriptor known to be the
 * program's stderr of start-up time: that file's identity (st_dev, st_ino) is
 * taken at start, with a copy of the descriptor, since many programs close
 * stderr before they exit (coreutils' close_stdout).  At exit the copy is
 * used if it is still that file, else fd 2 if it is, else nothing is written:
 * a program that started with fd 2 closed, or reused its number (or the
 * copy's) for a file of its own, never finds the report in that file. */
static bool err_open;           /* fd 2 was open at start */
static struct stat err_st;      /* and was this file */
static int err_copy = -1;       /* our copy of it (text report only) */

static bool is_start_stderr(int fd) {
    struct stat now;
    return err_open && fd >= 0 && fstat(fd, &now) == 0 && now.st_dev == err_st.st_dev &&
           now.st_ino == err_st.st_ino && now.st_rdev == err_st.st_rdev;
}

/* where output for the user goes at exit, or -1 */
static int exit_stderr(void) {
    if (is_start_stderr(err_copy)) return err_copy;
    return is_start_stderr(2) ? 2 : -1;
}

void ta_stats_at_start(void) {
    if (ta_cfg.stats == TA_CFG_STATS_OFF && !ta_cfg.profile_path[0]) return;
    err_open = fstat(2, &err_st) == 0;
    if (err_open && ta_cfg.stats == TA_CFG_STATS_TEXT) {
        int fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
        if (fd < 0) fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
        err_copy = fd;
    }
}

static void report_to(const char *path, const char *what, int (*writer)(int)) {
    int fd = ta_open_report(path);
    int err = errno, efd = exit_stderr();
    if (fd < 0) {
        if (efd >= 0) ta_printf_fd(efd, "tieralloc: cannot write the %s to %s (errno %d)\n", what, path, err);
        return;
    }
    if (writer(fd) != 0 && efd >= 0) ta_printf_fd(efd, "tieralloc: writing the %s to %s failed\n", what, path);
    close(fd);
}

__attribute__((destructor)) static void ta_stats_at_exit(void) {
    int saved = errno;
    if (ta_cfg.stats == TA_CFG_STATS_TEXT) {
        int fd = exit_stderr();
        if (fd >= 0) ta_stats_write_text(fd);
    }
    if (ta_cfg.stats == TA_CFG_STATS_JSON) report_to(ta_cfg.stats_json_path, "statistics", write_json_fd);
    if (ta_cfg.profile_path[0]) report_to(ta_cfg.profile_path, "heap profile", ta_profile_write_fd);
    errno = saved;
}
