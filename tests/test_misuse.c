/* test_misuse.c: heap misuse that tieralloc can see must abort with exactly one
 * diagnostic line "tieralloc: ..." naming the address.  Each case runs in a
 * forked child; the parent checks that the child died of SIGABRT and reads its
 * stderr.  The child passes the offending address through a shared page. */
#include "testutil.h"

#include "config.h" /* TA_HARDENED: the library under test is the hardened build */

#include <criterion/criterion.h>
#include <malloc.h>
#include <sys/mman.h>

#include "tieralloc.h"

#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wmismatched-dealloc"

/* every case must report the address it misuses */
static void expect_abort(void (*fn)(void *), const char *what) { tu_expect_abort(fn, what, 1); }

/* ---- double frees ------------------------------------------------------------ */
static void double_free_small_now(void *arg) {
    (void)arg;
    char *p = malloc(64);
    memset(p, 1, 64);
    report(p);
    free(tu_hide(p));
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(misuse, double_free_small_right_away) { expect_abort(double_free_small_now, "double free"); }

/* 1000 other allocations and frees, of the same size and others, between the
 * two frees.  Every block allocated in between is freed again, so whatever
 * the allocator did with p meanwhile, p is free when it is freed again.  An
 * anchor of the same size stays live so that p's span stays in use. */
static void double_free_small_later(void *arg) {
    (void)arg;
    void *anchor = malloc(64);
    char *p = malloc(64);
    memset(p, 2, 64);
    report(p);
    free(tu_hide(p));
    uint64_t rng = 99;
    for (int round = 0; round < 10; round++) {
        void *v[100];
        for (int i = 0; i < 100; i++) {
            size_t n = i % 2 ? 64 : tu_rand_range(&rng, 1, 3000);
            v[i] = malloc(n);
            memset(v[i], 3, n);
        }
        for (int i = 0; i < 100; i++) free(v[(i * 37) % 100]);
    }
    free(tu_hide(p));
    shared->reached_end = 1;
    free(anchor);
}
Test(misuse, double_free_small_after_1000_other_allocations) {
    expect_abort(double_free_small_later, "double free");
}

/* the sized frees check as free does (C23 free_sized, C++ sized delete) */
extern void free_sized(void *, size_t);
extern void _ZdlPvm(void *, size_t);
static void double_free_sized_now(void *arg) {
    (void)arg;
    char *p = malloc(48);
    memset(p, 1, 48);
    report(p);
    free_sized(tu_hide(p), 48);
    _ZdlPvm(tu_hide(p), 48);
    shared->reached_end = 1;
}
Test(misuse, double_free_by_sized_frees_right_away) { expect_abort(double_free_sized_now, "double free"); }

static void interior_sized_free(void *arg) {
    (void)arg;
    char *p = malloc(64);
    report(p + 16);
    _ZdlPvm(tu_hide(p + 16), 48);
    shared->reached_end = 1;
}
Test(misuse, sized_free_of_an_interior_pointer) { expect_abort(interior_sized_free, NULL); }

static void double_free_medium_now(void *arg) {
    (void)arg;
    char *p = malloc(100000);
    memset(p, 1, 100000);
    report(p);
    free(tu_hide(p));
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(misuse, double_free_100k_block_right_away) { expect_abort(double_free_medium_now, "double free"); }

static void double_free_large_now(void *arg) {
    (void)arg;
    char *p = malloc(4 << 20);
    memset(p, 1, 4096);
    report(p);
    free(tu_hide(p));
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(misuse, double_free_large_right_away) { expect_abort(double_free_large_now, "double free"); }

/* Other large blocks stay live around p, and more come and go between the two
 * frees (each freed again before p's second free). */
static void double_free_large_later(void *arg) {
    (void)arg;
    void *keep[4];
    keep[0] = malloc(1 << 20);
    char *p = malloc(4 << 20);
    keep[1] = malloc(2 << 20);
    keep[2] = malloc(4 << 20);
    keep[3] = malloc(8 << 20);
    memset(p, 1, 4 << 20);
    report(p);
    free(tu_hide(p));
    static const size_t sizes[] = {3 << 20, 4 << 20, 5 << 20, 300000, 6 << 20, 4 << 20, 1 << 20};
    for (int round = 0; round < 3; round++) {
        void *v[7];
        for (int i = 0; i < 7; i++) {
            v[i] = malloc(sizes[i]);
            memset(v[i], 4, 8192);
        }
        for (int i = 0; i < 7; i++) free(v[i]);
    }
    free(tu_hide(p));
    shared->reached_end = 1;
    for (int i = 0; i < 4; i++) free(keep[i]);
}
Test(misuse, double_free_large_after_other_large_allocations) {
    expect_abort(double_free_large_later, "double free");
}

/* ---- pointers tieralloc never handed out ---------------------------------------- */
static void free_stack(void *arg) {
    (void)arg;
    char buf[64];
    memset(buf, 0, sizeof buf);
    report(buf);
    free(tu_hide(buf));
    shared->reached_end = 1;
}
Test(misuse, free_of_stack_address) { expect_abort(free_stack, NULL); }

static long a_global[32];
static void free_global(void *arg) {
    (void)arg;
    report(&a_global[4]);
    free(tu_hide(&a_global[4]));
    shared->reached_end = 1;
}
Test(misuse, free_of_global) { expect_abort(free_global, NULL); }

static void free_wild_high(void *arg) {
    (void)arg;
    void *p = (void *)0x123456789000;
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(misuse, free_of_wild_address) { expect_abort(free_wild_high, NULL); }

static void free_wild_low(void *arg) {
    (void)arg;
    void *p = (void *)0x10;
    report(p);
    free(tu_hide(p));
    shared->reached_end = 1;
}
Test(misuse, free_of_address_0x10) { expect_abort(free_wild_low, NULL); }

/* ---- interior pointers ------------------------------------------------------------- */
static void free_interior_small(void *arg) {
    (void)arg;
    char *p = malloc(64);
    memset(p, 1, 64);
    report(p + 16);
    free(tu_hide(p + 16));
    shared->reached_end = 1;
}
Test(misuse, free_of_interior_pointer_small) { expect_abort(free_interior_small, NULL); }

static void free_interior_large_page(void *arg) {
    (void)arg;
    char *p = malloc(1 << 20);
    memset(p, 1, 1 << 20);
    report(p + 8192);
    free(tu_hide(p + 8192));
    shared->reached_end = 1;
}
Test(misuse, free_of_interior_pointer_large_next_page) { expect_abort(free_interior_large_page, NULL); }

static void free_interior_large_16(void *arg) {
    (void)arg;
    char *p = malloc(1 << 20);
    memset(p, 1, 1 << 20);
    report(p + 16);
    free(tu_hide(p + 16));
    shared->reached_end = 1;
}
Test(misuse, free_of_interior_pointer_large_plus_16) { expect_abort(free_interior_large_16, NULL); }

/* The same on pages that carried small-block spans before: their per-page
 * size-class records must not make an interior pointer look like a block. */
static void free_interior_large_reused(void *arg) {
    (void)arg;
    enum { N = 40000 };
    static void *v[N];
    for (int i = 0; i < N; i++) v[i] = malloc(48 + (size_t)(i % 4) * 16);
    for (int i = 0; i < N; i++) free(v[i]);
    malloc_trim(0); /* empty spans go back to the page heap */
    char *big[4];
    for (int i = 0; i < 4; i++) {
        big[i] = malloc(1 << 20);
        memset(big[i], 1, 1 << 20);
    }
    char *q = big[0] + 3 * 8192 + 64; /* a multiple of every size above */
    report(q);
    free(tu_hide(q));
    shared->reached_end = 1;
}
Test(misuse, free_of_interior_pointer_large_on_reused_pages) { expect_abort(free_interior_large_reused, NULL); }

/* ---- realloc of pointers that are not blocks ------------------------------------- */
static void realloc_stack(void *arg) {
    (void)arg;
    char buf[64];
    memset(buf, 0, sizeof buf);
    report(buf);
    void *r = realloc(tu_hide(buf), 128);
    shared->reached_end = 1;
    (void)r;
}
Test(misuse, realloc_of_stack_address) { expect_abort(realloc_stack, NULL); }

static void realloc_interior(void *arg) {
    (void)arg;
    char *p = malloc(64);
    memset(p, 1, 64);
    report(p + 16);
    void *r = realloc(tu_hide(p + 16), 1000);
    shared->reached_end = 1;
    (void)r;
}
Test(misuse, realloc_of_interior_pointer) { expect_abort(realloc_interior, NULL); }

static void realloc_interior_large(void *arg) {
    (void)arg;
    char *p = malloc(1 << 20);
    memset(p, 1, 1 << 20);
    report(p + 8192);
    void *r = realloc(tu_hide(p + 8192), 2 << 20);
    shared->reached_end = 1;
    (void)r;
}
Test(misuse, realloc_of_interior_pointer_large) { expect_abort(realloc_interior_large, NULL); }

static void realloc_freed(void *arg) {
    (void)arg;
    char *p = malloc(200);
    memset(p, 1, 200);
    report(p);
    free(tu_hide(p));
    void *r = realloc(tu_hide(p), 400);
    shared->reached_end = 1;
    (void)r;
}
Test(misuse, realloc_of_freed_block) { expect_abort(realloc_freed, NULL); }

/* a buffer grown by realloc past the size classes, freed, then realloc'd: the
 * record realloc keeps of the block it grew last must not answer for it */
static void realloc_freed_grown(void *arg) {
    (void)arg;
    char *p = NULL;
    for (size_t n = 16; n <= ((size_t)64 << 10); n += n / 4 + 16) {
        p = realloc(p, n);
        if (!p) return;
        memset(p, 1, n);
    }
    p = realloc(p, (size_t)80 << 10); /* once more: the block's record is the one kept */
    if (!p) return;
    report(p);
    free(tu_hide(p));
    void *r = realloc(tu_hide(p), (size_t)96 << 10);
    shared->reached_end = 1;
    (void)r;
}
Test(misuse, realloc_of_freed_block_grown_by_realloc) { expect_abort(realloc_freed_grown, NULL); }

/* ---- malloc_usable_size of a wild pointer: abort with a diagnostic, or return 0,
 * but never crash on the lookup. ------------------------------------------------------ */
static void usable_of(void *p) {
    report(p);
    shared->result = (size_t)-1;
    shared->result = malloc_usable_size(tu_hide(p));
    shared->reached_end = 1;
}
static void usable_wild_high(void *arg) { (void)arg; usable_of((void *)0x123456789000); }
static void usable_wild_low(void *arg) { (void)arg; usable_of((void *)0x10); }
static void usable_stack(void *arg) {
    (void)arg;
    char buf[32];
    memset(buf, 0, sizeof buf);
    usable_of(buf);
}
static void usable_ta(void *arg) {
    (void)arg;
    void *p = (void *)0x7ff012345670;
    report(p);
    shared->result = (size_t)-1;
    shared->result = ta_malloc_usable_size(tu_hide(p));
    shared->reached_end = 1;
}

static void expect_abort_or_zero(void (*fn)(void *)) {
    tu_shared_reset();
    static tu_child_t c;
    tu_run_child(fn, NULL, 30000, &c);
    cr_assert(!c.timed_out, "%s", tu_describe(&c));
    if (c.exited) {
        cr_assert_eq(c.exit_code, 0, "%s", tu_describe(&c));
        cr_assert(shared->reached_end);
        cr_assert_eq(shared->result, 0, "malloc_usable_size(%p) returned %zu for a pointer it does not own",
                     (void *)shared->addr, shared->result);
        return;
    }
    cr_assert(c.signaled && c.signal == SIGABRT, "want SIGABRT or a return of 0: %s", tu_describe(&c));
    char line[1024];
    int n = tu_count_lines(c.err, "tieralloc: ", line, sizeof line);
    cr_assert_eq(n, 1, "want one 'tieralloc: ' line, got %d: %s", n, c.err);
    cr_assert(tu_has_addr(line, (void *)shared->addr), "diagnostic does not name %p: %s", (void *)shared->addr,
              line);
}

/* A freed block and an interior pointer of a live one: the pagemap knows them,
 * so the answer is a diagnostic, not a size. */
static void usable_freed(void *arg) {
    (void)arg;
    char *p = malloc(48);
    memset(p, 1, 48);
    free(tu_hide(p));
    usable_of(p);
}
static void usable_interior(void *arg) {
    (void)arg;
    char *p = malloc(48);
    memset(p, 1, 48);
    usable_of(p + 16);
}
Test(misuse, malloc_usable_size_of_freed_block) { expect_abort(usable_freed, "malloc_usable_size of freed pointer"); }
Test(misuse, malloc_usable_size_of_interior_pointer) {
    expect_abort(usable_interior, "malloc_usable_size of an interior pointer");
}

Test(misuse, malloc_usable_size_of_wild_pointer) { expect_abort_or_zero(usable_wild_high); }
Test(misuse, malloc_usable_size_of_0x10) { expect_abort_or_zero(usable_wild_low); }
Test(misuse, malloc_usable_size_of_stack_address) { expect_abort_or_zero(usable_stack); }
Test(misuse, ta_malloc_usable_size_of_wild_pointer) { expect_abort_or_zero(usable_ta); }

/* ---- the harness itself: a correct program is not reported -------------------- */
static void correct_program(void *arg) {
    (void)arg;
    void *v[300];
    for (int i = 0; i < 300; i++) v[i] = malloc((size_t)i * 333);
    for (int i = 0; i < 300; i++) free(v[i]);
    void *p = malloc(64);
    report(p);
    free(p);
    shared->reached_end = 1;
}
Test(misuse, correct_program_is_not_reported) {
    tu_shared_reset();
    static tu_child_t c;
    tu_run_child(correct_program, NULL, 30000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(shared->reached_end);
    cr_assert_eq(c.err_len, 0, "stderr: %s", c.err);
}

/* ---- corruption of free memory ------------------------------------------------
 * A pointer planted in a freed block's first word (a write after free) must
 * not make malloc return it.  The blocks go back to their span (malloc_trim),
 * and then 20000 mallocs of their size take them again.  The release build
 * keeps a span's returned blocks in its object-state bytes, never in the
 * blocks, so the planted word is never read; the hardened build links them
 * through their first word, encoded and checked, so the refill that reaches
 * it reports the corruption, naming the block. */
static char planted_target[64];
static void planted_link(void *arg) {
    (void)arg;
    void *x[64];
    for (int i = 0; i < 64; i++) x[i] = malloc(48);
    for (int i = 1; i < 64; i++) free(x[i]); /* x[0] keeps the span in use */
    malloc_trim(0);                          /* the frees reach the span */
    report(x[10]);
    *(void **)tu_hide(x[10]) = planted_target;
    bool reused = false;
    for (int i = 0; i < 20000; i++) {
        char *p = malloc(48);
        if (p >= planted_target && p < planted_target + sizeof planted_target) _exit(3); /* followed it */
        reused |= p == x[10];
    }
    shared->reached_end = reused;
}
#ifdef TA_HARDENED
Test(misuse, write_after_free_into_a_free_list_is_caught) { expect_abort(planted_link, "corrupted free list"); }
#else
Test(misuse, a_pointer_written_into_a_free_block_is_never_followed) {
    tu_shared_reset();
    static tu_child_t c;
    tu_run_child(planted_link, NULL, 30000, &c);
    cr_assert(c.exited && c.exit_code == 0, "%s", tu_describe(&c));
    cr_assert(shared->reached_end, "the written block was never handed out again");
    cr_assert_eq(c.err_len, 0, "stderr: %s", c.err);
}
#endif
