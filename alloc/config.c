/* config.c: TIERALLOC_* options, read once at init straight from environ
 * (getenv is safe, but we may run before libc has finished starting). */
#define _GNU_SOURCE 1
#include "internal.h"

#include <sched.h>
#include <string.h>

extern char **environ;

ta_config_t ta_cfg = {
    .decay_ms = 1000,
    .cache_bytes = 8 << 20,
    .thread_cache_max = 4 << 20,
    .ncpu = 1,
    .percpu = true,
    .cpu_cache_bytes = (uint64_t)3 << 19,
};

const char *ta_getenv(const char *name) {
    char **env = environ;
    if (!env) return NULL;
    size_t n = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') return *env + n + 1;
    return NULL;
}

/* Parse "123", "64k", "8M", "1g" (an optional b/B after); def when malformed or too big. */
uint64_t ta_parse_size(const char *s, uint64_t def) {
    if (!s || !*s) return def;
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10) return def;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == s) return def;
    unsigned shift = 0;
    switch (*p) {
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    default: break;
    }
    if (*p == 'b' || *p == 'B') p++;
    if (*p || (shift && v > (UINT64_MAX >> shift))) return def;
    return v << shift;
}

void ta_config_init(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        ta_cfg.ncpu = n > 0 ? n : 1;
    }
    /* thread caches together may hold 8 MiB per CPU (at least 32 MiB, as
     * much as gperftools' default): enough for a few busy threads per CPU */
    uint64_t budget = (uint64_t)ta_cfg.ncpu << 23;
    if (budget < (32 << 20)) budget = 32 << 20;
    ta_cfg.cache_bytes = ta_parse_size(ta_getenv("TIERALLOC_CACHE_BYTES"), budget);
    /* one thread's list capacity (sum of max length x size); what it really
     * holds is usually well under it */
    ta_cfg.thread_cache_max = ta_cfg.cache_bytes < (8 << 20) ? ta_cfg.cache_bytes : (8 << 20);
    ta_cfg.decay_ms = ta_parse_size(ta_getenv("TIERALLOC_DECAY_MS"), 1000);
    /* per-CPU caches over rseq where the system has them (TIERALLOC_PERCPU=0:
     * per-thread caches), each with this much capacity */
    const char *pc = ta_getenv("TIERALLOC_PERCPU");
    ta_cfg.percpu = !(pc && pc[0] == '0' && !pc[1]);
    ta_cfg.cpu_cache_bytes = ta_parse_size(ta_getenv("TIERALLOC_CPU_CACHE_BYTES"), (uint64_t)3 << 19);
}
