/* stats.c: one snapshot of every tier's counters, and the reports built from
 * it (malloc_stats, mallinfo2, malloc_info, TIERALLOC_STATS at exit).  Reports
 * are formatted into stack buffers and written with write(2). */
#include "internal.h"

#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tieralloc.h"

void ta_snapshot(ta_snapshot_t *s) {
    memset(s, 0, sizeof *s);
    ta_ensure_init();
    ta_os_stats(&s->os);
    ta_pageheap_stats(&s->ph);
    for (uint32_t c = 1; c < ta_nclasses; c++) {
        ta_central_stats_t cs;
        ta_central_stats(c, &cs);
        s->transfer_bytes += cs.transfer_bytes;
        s->span_free_bytes += cs.span_free_bytes;
        s->transfer_hits += cs.hits;
        s->transfer_misses += cs.misses;
    }
    s->cache_bytes = ta_pcache_bytes(0);
    s->meta_bytes = ta_meta_bytes() + ta_pagemap_bytes();
    uint64_t small_spans = s->ph.inuse_bytes - s->ph.large_bytes;
    uint64_t held = s->cache_bytes + s->transfer_bytes + s->span_free_bytes;
    s->small_inuse_bytes = small_spans > held ? small_spans - held : 0;
    s->inuse_bytes = s->small_inuse_bytes + s->ph.large_bytes;
}

void ta_stats_mallinfo(struct mallinfo2 *mi) {
    ta_snapshot_t s;
    ta_snapshot(&s);
    memset(mi, 0, sizeof *mi);
    mi->arena = s.os.mapped_bytes;
    mi->hblks = s.ph.large_count;
    mi->hblkhd = s.ph.large_bytes;
    mi->uordblks = s.inuse_bytes;
    mi->fordblks = s.cache_bytes + s.transfer_bytes + s.span_free_bytes + s.ph.free_bytes;
    mi->fsmblks = s.cache_bytes + s.transfer_bytes;
    mi->keepcost = s.ph.released_bytes;
}

#define MIB(x) (unsigned long long)((x) >> 20), (unsigned)((((x) & ((1 << 20) - 1)) * 10) >> 20)

size_t ta_stats_format_text(char *buf, size_t cap) {
    ta_snapshot_t s;
    ta_snapshot(&s);
    return ta_format(buf, cap,
        "tieralloc %s: statistics (pid %d)\n"
        "  in use by the program   %llu.%u MiB (small %llu.%u, large %llu.%u in %llu blocks)\n"
        "  thread caches           %llu.%u MiB\n"
        "  central transfer caches %llu.%u MiB, free in spans %llu.%u MiB\n"
        "  page heap free          %llu.%u MiB resident, %llu.%u MiB released to the OS\n"
        "  metadata                %llu.%u MiB\n"
        "  mapped from the OS      %llu.%u MiB (%llu mmap, %llu madvise, %llu.%u MiB released in all)\n",
        TIERALLOC_VERSION, (int)getpid(), MIB(s.inuse_bytes), MIB(s.small_inuse_bytes),
        MIB(s.ph.large_bytes), (unsigned long long)s.ph.large_count, MIB(s.cache_bytes),
        MIB(s.transfer_bytes), MIB(s.span_free_bytes), MIB(s.ph.free_bytes), MIB(s.ph.released_bytes),
        MIB(s.meta_bytes), MIB(s.os.mapped_bytes), (unsigned long long)s.os.n_mmap,
        (unsigned long long)s.os.n_madvise, MIB(s.os.released_bytes));
}

void ta_stats_write_text(int fd) {
    char buf[2048];
    size_t n = ta_stats_format_text(buf, sizeof buf);
    ta_write_fd(fd, buf, n);
}

int ta_stats_write_xml(FILE *fp) {
    ta_snapshot_t s;
    ta_snapshot(&s);
    char buf[1024];
    size_t n = ta_format(buf, sizeof buf,
        "<malloc version=\"tieralloc-%s\">\n"
        "<heap nr=\"0\">\n"
        "<total type=\"inuse\" size=\"%llu\"/>\n"
        "<total type=\"thread_cache\" size=\"%llu\"/>\n"
        "<total type=\"central\" size=\"%llu\"/>\n"
        "<total type=\"free\" size=\"%llu\"/>\n"
        "<total type=\"released\" size=\"%llu\"/>\n"
        "<total type=\"large\" count=\"%llu\" size=\"%llu\"/>\n"
        "</heap>\n"
        "<system type=\"current\" size=\"%llu\"/>\n"
        "<system type=\"metadata\" size=\"%llu\"/>\n"
        "</malloc>\n",
        TIERALLOC_VERSION, (unsigned long long)s.inuse_bytes, (unsigned long long)s.cache_bytes,
        (unsigned long long)(s.transfer_bytes + s.span_free_bytes), (unsigned long long)s.ph.free_bytes,
        (unsigned long long)s.ph.released_bytes, (unsigned long long)s.ph.large_count,
        (unsigned long long)s.ph.large_bytes, (unsigned long long)s.os.mapped_bytes,
        (unsigned long long)s.meta_bytes);
    return fwrite(buf, 1, n, fp) == n ? 0 : -1;
}

static int stats_fd = -1;

void ta_stats_at_start(void) {
    const char *v = ta_getenv("TIERALLOC_STATS");
    if (v && v[0] == '1' && !v[1]) stats_fd = 2;
}

__attribute__((destructor)) static void ta_stats_at_exit(void) {
    if (stats_fd >= 0) ta_stats_write_text(stats_fd);
}
