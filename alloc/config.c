/* config.c: every TIERALLOC_* option, read once at init straight from environ
 * (getenv is safe, but we may run before libc has finished starting) into
 * ta_cfg; the other files read ta_cfg, never the environment.
 *
 * Secure execution (setuid/setgid programs, file capabilities: the kernel's
 * AT_SECURE): the options that make the process write a file or a report
 * (TIERALLOC_STATS, TIERALLOC_PROFILE) come from the user who started the
 * program, not from its owner, so they are ignored, and one line on stderr
 * says so.  The tuning options (sizes, periods) are still honoured. */
#define _GNU_SOURCE 1
#include "internal.h"

#include <sched.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <time.h>

extern char **environ;

/* The defaults, as ta_config_init leaves them when nothing is set (cache_bytes
 * is then 8 MiB per CPU, at least 32 MiB; see ta_config_read). */
ta_config_t ta_cfg = {
    .decay_ms = 1000,
    .cache_bytes = 32 << 20,
    .thread_cache_max = 8 << 20,
    .ncpu = 1,
    .percpu = TA_PERCPU_AUTO,
    .percpu_threads = 2,
    .background = true,
    .cpu_cache_bytes = (uint64_t)3 << 19,
    .sample_bytes = TA_DEFAULT_SAMPLE_BYTES,
};

static const char *env_get(char **env, const char *name) {
    if (!env) return NULL;
    size_t n = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') return *env + n + 1;
    return NULL;
}

const char *ta_getenv(const char *name) { return env_get(environ, name); }

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

/* Copy a report path into dst (TA_PATH_MAX bytes); a warning and "" when it
 * is empty or too long. */
static void copy_path(char *dst, const char *src, const char *var) {
    size_t n = strlen(src);
    dst[0] = '\0';
    if (!n || n >= TA_PATH_MAX) {
        ta_printf_fd(2, "tieralloc: %s: %s path (ignored)\n", var, n ? "too long a" : "empty");
        return;
    }
    memcpy(dst, src, n + 1);
}

void ta_config_read(char **env, int ncpu, bool secure) {
    ta_cfg.ncpu = ncpu > 0 ? ncpu : 1;
    /* thread caches together may hold 8 MiB per CPU (at least 32 MiB, as
     * much as gperftools' default): enough for a few busy threads per CPU */
    uint64_t budget = (uint64_t)ta_cfg.ncpu << 23;
    if (budget < (32 << 20)) budget = 32 << 20;
    ta_cfg.cache_bytes = ta_parse_size(env_get(env, "TIERALLOC_CACHE_BYTES"), budget);
    /* one thread's list capacity (sum of max length x size); what it really
     * holds is usually well under it */
    ta_cfg.thread_cache_max = ta_cfg.cache_bytes < (8 << 20) ? ta_cfg.cache_bytes : (8 << 20);
    ta_cfg.decay_ms = ta_parse_size(env_get(env, "TIERALLOC_DECAY_MS"), 1000);
    /* tier 1: caches that follow their thread while a process has few
     * threads (a thread's objects stay in its core's caches however it is
     * scheduled), per-CPU caches over rseq once it has more than one per CPU
     * and one more (a main thread that waits): then threads share CPUs, and
     * per-thread caches would hold more than the CPUs' would (the caches'
     * memory scales with CPUs, not threads); TIERALLOC_PERCPU=0: per thread
     * always, =1: per CPU from the start */
    const char *pc = env_get(env, "TIERALLOC_PERCPU");
    ta_cfg.percpu = pc && pc[0] == '0' && !pc[1]   ? TA_PERCPU_NEVER
                    : pc && pc[0] == '1' && !pc[1] ? TA_PERCPU_ALWAYS
                                                   : TA_PERCPU_AUTO;
    uint64_t pt = ta_parse_size(env_get(env, "TIERALLOC_PERCPU_THREADS"), (uint64_t)ta_cfg.ncpu + 1);
    ta_cfg.percpu_threads = pt < (1u << 30) ? (uint32_t)pt : 1u << 30;
    /* a background thread releases free pages, so an idle process gives them
     * back and busy threads never madvise (started from a malloc only, see
     * init.c); TIERALLOC_BACKGROUND=0: none, the slow paths run the same
     * decay passes */
    const char *bg = env_get(env, "TIERALLOC_BACKGROUND");
    ta_cfg.background = !(bg && bg[0] == '0' && !bg[1]);
    ta_cfg.cpu_cache_bytes = ta_parse_size(env_get(env, "TIERALLOC_CPU_CACHE_BYTES"), (uint64_t)3 << 19);
    /* hardened build only: what each quarantine shard holds (0: no quarantine) */
    ta_cfg.quarantine_bytes = ta_parse_size(env_get(env, "TIERALLOC_QUARANTINE_BYTES"), (uint64_t)256 << 10);
    const char *rate = env_get(env, "TIERALLOC_SAMPLE_BYTES");
    ta_cfg.sample_set = rate != NULL;
    ta_cfg.sample_bytes = ta_parse_size(rate, TA_DEFAULT_SAMPLE_BYTES);

    ta_cfg.secure = secure;
    ta_cfg.stats = TA_CFG_STATS_OFF;
    ta_cfg.stats_json_path[0] = ta_cfg.profile_path[0] = '\0';
    ta_cfg.profile_set = false;
    ta_cfg.trace_path[0] = '\0';
    const char *tr = env_get(env, "TIERALLOC_TRACE");
    const char *st = env_get(env, "TIERALLOC_STATS");
    const char *prof = env_get(env, "TIERALLOC_PROFILE");
    if (secure) {
        if ((st && *st) || (prof && *prof) || (tr && *tr))
            ta_printf_fd(2, "tieralloc: secure-execution mode (setuid, setgid or capabilities): "
                            "TIERALLOC_STATS, TIERALLOC_PROFILE and TIERALLOC_TRACE ignored\n");
        return;
    }
    if (st && *st) {
        if (strcmp(st, "1") == 0) {
            ta_cfg.stats = TA_CFG_STATS_TEXT;
        } else if (strncmp(st, "json:", 5) == 0) {
            copy_path(ta_cfg.stats_json_path, st + 5, "TIERALLOC_STATS=json:PATH");
            if (ta_cfg.stats_json_path[0]) ta_cfg.stats = TA_CFG_STATS_JSON;
        } else if (strcmp(st, "0") != 0) {
            ta_printf_fd(2, "tieralloc: TIERALLOC_STATS=%s not understood (1, or json:PATH)\n", st);
        }
    }
    ta_cfg.profile_set = prof != NULL;
    if (prof && *prof) copy_path(ta_cfg.profile_path, prof, "TIERALLOC_PROFILE");
    if (tr && *tr) copy_path(ta_cfg.trace_path, tr, "TIERALLOC_TRACE");
    if (ta_cfg.trace_path[0]) ta_cfg.percpu = TA_PERCPU_NEVER; /* tracing runs on the per-thread slow paths */
}

/* The auxiliary vector's AT_SECURE and AT_RANDOM, read once at start: from
 * /proc/self/auxv with raw system calls (libc's getauxval lies in a page of
 * libc's text that few programs touch: see ta_sys in internal.h), else, with
 * no /proc, from getauxval. */
static struct {
    bool read, secure;
    const unsigned char *random;
} aux;

static void aux_read(void) {
    unsigned long v[2 * 64];
    long n = ta_os_read_file("/proc/self/auxv", v, sizeof v);
    bool found = false;
    for (long i = 0; n > 0 && i + 1 < n / (long)sizeof *v && v[i] != AT_NULL; i += 2) {
        if (v[i] == AT_SECURE) aux.secure = v[i + 1] != 0, found = true;
        else if (v[i] == AT_RANDOM) aux.random = (const unsigned char *)v[i + 1];
    }
    if (!found) {
        aux.secure = getauxval(AT_SECURE) != 0;
        aux.random = (const unsigned char *)getauxval(AT_RANDOM);
    }
    aux.read = true;
}

void ta_config_init(void) {
    /* the CPUs this process may run on (the kernel's mask, counted here) */
    unsigned long mask[1024 / (8 * sizeof(unsigned long))];
    long bytes = ta_sys3(SYS_sched_getaffinity, 0, sizeof mask, mask);
    int ncpu = 0;
    for (long i = 0; i < bytes / (long)sizeof *mask; i++) ncpu += __builtin_popcountl(mask[i]);
    if (ncpu < 1) ncpu = 1;
    if (!aux.read) aux_read();
    ta_config_read(environ, ncpu, aux.secure);
}

/* The kernel's 16 random bytes (AT_RANDOM) folded to 64 bits.  They sit at
 * any address (usually not 8-aligned), so they are copied, not loaded as
 * words.  Without them: an address and the clock, which is no secret. */
uint64_t ta_random_seed(void) {
    if (!aux.read) aux_read();
    const unsigned char *r = aux.random;
    uint64_t a, b;
    if (r) {
        __builtin_memcpy(&a, r, sizeof a);
        __builtin_memcpy(&b, r + sizeof a, sizeof b);
        return a ^ b;
    }
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)(uintptr_t)&a * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec;
}
