/* test_config.c: the services at the bottom of the allocator: the buffered
 * writer (diag.c), the options (config.c, secure-execution mode included, as
 * ta_config_read sees it) and the seed from AT_RANDOM. */
#include "testutil.h"

#include <pthread.h>
#include <sys/auxv.h>

#include "internal.h"

/* ---- the writer ------------------------------------------------------------------- */
typedef struct reader {
    int fd;
    char buf[1 << 20];
    size_t len;
} reader_t;

static void *read_all(void *arg) {
    reader_t *r = arg;
    for (;;) {
        ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        r->len += (size_t)n;
        tu_sleep_ms(1); /* slower than the writer: it meets a full pipe */
    }
    return NULL;
}

static volatile int interrupts;
static void on_signal(int sig) {
    (void)sig;
    interrupts++;
}

static pthread_t writer_thread;
static volatile int writing;
static void *interrupter(void *arg) {
    (void)arg;
    while (writing) {
        pthread_kill(writer_thread, SIGUSR1);
        tu_sleep_ms(1);
    }
    return NULL;
}

/* Through a small pipe that a slow reader drains, with a signal (no
 * SA_RESTART) every millisecond: writes come back short or with EINTR, and
 * every byte still arrives once, in order. */
Test(writer, short_writes_and_eintr_lose_nothing) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    static reader_t r;
    r.fd = p[0];
    pthread_t rt, it;
    pthread_create(&rt, NULL, read_all, &r);
    writer_thread = pthread_self();
    writing = 1;
    pthread_create(&it, NULL, interrupter, NULL);
    static ta_out_t o;
    ta_out_init(&o, p[1]);
    enum { LINES = 20000 };
    for (int i = 0; i < LINES; i++) ta_out_printf(&o, "line %d of %s\n", i, "the test");
    cr_assert_eq(ta_out_flush(&o), 0);
    writing = 0;
    pthread_join(it, NULL);
    close(p[1]);
    pthread_join(rt, NULL);
    close(p[0]);
    cr_assert_gt(interrupts, 0, "no signal arrived while writing");
    static char want[sizeof r.buf];
    size_t n = 0;
    for (int i = 0; i < LINES; i++) n += (size_t)snprintf(want + n, sizeof want - n, "line %d of %s\n", i, "the test");
    cr_assert_eq(r.len, n, "%zu bytes arrived, %zu written", r.len, n);
    cr_assert_eq(memcmp(r.buf, want, n), 0);
}

static char sunk[3 * TA_OUT_BUF];
static size_t sunk_len;
static int sinks;
static int sink(void *arg, const char *s, size_t n) {
    cr_assert_eq(arg, (void *)sunk);
    cr_assert_leq(sunk_len + n, sizeof sunk);
    memcpy(sunk + sunk_len, s, n);
    sunk_len += n;
    sinks++;
    return 0;
}

/* A printf that does not fit in what is left of the buffer is not cut: the
 * buffer is sent first; one longer than the whole buffer is cut to it. */
Test(writer, printf_across_the_buffer_end_and_a_sink) {
    static ta_out_t o;
    ta_out_init(&o, -1);
    o.sink = sink;
    o.sink_arg = sunk;
    static char big[TA_OUT_BUF + 100];
    memset(big, 'x', sizeof big - 1);
    char pad[TA_OUT_BUF - 10];
    memset(pad, 'p', sizeof pad);
    ta_out_put(&o, pad, sizeof pad);
    ta_out_printf(&o, "%s|%d", "a string of twenty...", 42); /* 24 bytes: does not fit in 10 */
    cr_assert_eq(sinks, 1, "the buffer was not sent before the printf");
    ta_out_printf(&o, "%s", big); /* longer than a buffer */
    cr_assert_eq(ta_out_flush(&o), 0);
    cr_assert_eq(sunk_len, sizeof pad + 24 + TA_OUT_BUF - 1);
    cr_assert_eq(memcmp(sunk + sizeof pad, "a string of twenty...|42", 24), 0);
    cr_assert_eq(sunk[sizeof pad + 24], 'x');
}

Test(writer, a_failed_write_is_reported_and_errno_kept) {
    static ta_out_t o;
    ta_out_init(&o, 1000); /* not open */
    ta_out_printf(&o, "%s", "lost");
    errno = 1234;
    cr_assert_eq(ta_out_flush(&o), -1);
    cr_assert_eq(errno, 1234);
    ta_out_put(&o, "more", 4);
    cr_assert_eq(ta_out_flush(&o), -1, "the failure is forgotten");
}

/* ---- the options ------------------------------------------------------------------ */
static void read_secure(void *arg) {
    ta_config_read(arg, 4, true);
    printf("stats=%d json=[%s] profile=[%s] set=%d sample=%llu/%d decay=%llu\n", ta_cfg.stats,
           ta_cfg.stats_json_path, ta_cfg.profile_path, ta_cfg.profile_set,
           (unsigned long long)ta_cfg.sample_bytes, ta_cfg.sample_set, (unsigned long long)ta_cfg.decay_ms);
}
static void read_plain(void *arg) {
    ta_config_read(arg, 4, false);
    printf("stats=%d json=[%s] profile=[%s] set=%d sample=%llu/%d decay=%llu\n", ta_cfg.stats,
           ta_cfg.stats_json_path, ta_cfg.profile_path, ta_cfg.profile_set,
           (unsigned long long)ta_cfg.sample_bytes, ta_cfg.sample_set, (unsigned long long)ta_cfg.decay_ms);
}

static char *env_all[] = {"HOME=/x", "TIERALLOC_STATS=json:/tmp/s.%p.json", "TIERALLOC_PROFILE=/tmp/p-%p",
                          "TIERALLOC_SAMPLE_BYTES=64k", "TIERALLOC_DECAY_MS=250", NULL};

Test(config, options_are_parsed_into_ta_cfg) {
    static tu_child_t c;
    tu_run_child(read_plain, env_all, 10000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert_str_eq(c.out, "stats=2 json=[/tmp/s.%p.json] profile=[/tmp/p-%p] set=1 sample=65536/1 decay=250\n");
    cr_assert_eq(c.err_len, 0, "%s", c.err);
}

Test(config, secure_execution_ignores_the_output_options_and_says_so_once) {
    static tu_child_t c;
    tu_run_child(read_secure, env_all, 10000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    /* tuning options stay; the outputs are gone */
    cr_assert_str_eq(c.out, "stats=0 json=[] profile=[] set=0 sample=65536/1 decay=250\n");
    char line[512];
    cr_assert_eq(tu_count_lines(c.err, "tieralloc: ", line, sizeof line), 1, "%s", c.err);
    cr_assert(strstr(line, "secure-execution"), "%s", line);

    static char *env_text[] = {"TIERALLOC_STATS=1", NULL};
    tu_run_child(read_secure, env_text, 10000, &c);
    cr_assert_str_eq(c.out, "stats=0 json=[] profile=[] set=0 sample=524288/0 decay=1000\n");
    cr_assert_eq(tu_count_lines(c.err, "tieralloc: ", line, sizeof line), 1, "%s", c.err);

    static char *env_none[] = {"TIERALLOC_DECAY_MS=5", NULL};
    tu_run_child(read_secure, env_none, 10000, &c);
    cr_assert_eq(c.err_len, 0, "a note with nothing to ignore: %s", c.err);
}

/* ---- AT_RANDOM ---------------------------------------------------------------------- */
Test(config, random_seed_is_the_kernels_bytes_read_at_any_alignment) {
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    cr_assert_not_null(r);
    uint64_t a = 0, b = 0;
    for (int i = 7; i >= 0; i--) {
        a = a << 8 | r[i];
        b = b << 8 | r[8 + i];
    }
    cr_assert_eq(ta_random_seed(), a ^ b);
    /* the case that matters: on x86-64 Linux the bytes are usually not 8-aligned */
    cr_log_info("AT_RANDOM at %p (address mod 8 = %u)", (void *)r, (unsigned)((uintptr_t)r % 8));
}
