/* tests/fuzz/fuzz_api.c: a libFuzzer harness for the ta_* API.
 *
 * The input is a sequence of operations (one opcode byte, then a few argument
 * bytes each; a short input ends the sequence).  Every operation is applied to
 * the allocator and to a shadow model of the live blocks, and the model is
 * checked against the allocator:
 *   - each live block has its requested size, its alignment, a kind (heap or
 *     scoped, with the scope depth it was allocated at) and a seed;
 *   - its contents are a pattern derived from the seed, written when it is
 *     allocated and checked before it is freed, reallocated or escaped
 *     (realloc must keep the common prefix, calloc must give zeros);
 *   - malloc_usable_size >= the requested size, and the slack up to the usable
 *     size is written too (a usable size that lies overwrites a neighbour);
 *   - a new block does not overlap any live one; ta_owns holds for heap blocks;
 *   - invalid requests (overflowing calloc, huge sizes, bad alignments) fail
 *     with the right errno.
 * At the end of an input every block is freed and every scope ended, so that
 * each input starts from an empty model.
 *
 * The shadow lives in static arrays: the harness never allocates.  The
 * allocator (linked in statically, with glibc's names) serves libFuzzer's own
 * allocations as well.
 *
 * Build: make fuzz (clang -fsanitize=fuzzer); run:
 *   tests/fuzz/fuzz_api -max_total_time=60 tests/fuzz/corpus
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tieralloc.h"

#define SLOTS 128          /* live blocks at most */
#define MAX_DEPTH 8        /* open scopes at most */
#define CHECK_SPAN 4096    /* a big block's pattern: its first and last 4 KiB */
#define SLACK_MAX 64       /* bytes past the requested size that are written */

enum kind { FREE_SLOT = 0, HEAP, SCOPED };

struct block {
    unsigned char *p;
    size_t size;       /* requested */
    size_t align;      /* promised alignment */
    uint32_t seed;     /* the pattern's */
    unsigned char kind;
    unsigned char depth; /* SCOPED: scope depth it was allocated in (1..MAX_DEPTH) */
};

static struct block slots[SLOTS];
static ta_scope_t marks[MAX_DEPTH];
static unsigned depth;          /* scopes open now */
static uint32_t next_seed;

/* ---- the input ------------------------------------------------------------ */
static const uint8_t *in;
static size_t in_left;

static unsigned byte(void) {
    if (!in_left) return 0;
    in_left--;
    return *in++;
}

static unsigned u16(void) {
    unsigned lo = byte();
    return lo | byte() << 8;
}

/* a size: mostly small, sometimes a class boundary, medium or large */
static size_t size_arg(void) {
    unsigned sel = byte();
    unsigned v = u16();
    switch (sel & 7) {
    case 0: return v & 15;                 /* tiny, including 0 */
    case 1:
    case 2: return v & 1023;               /* small classes */
    case 3: return ((size_t)16 << (v % 15)) + (v >> 8) % 3 - 1; /* around powers of two */
    case 4: return v & 0x3ffff;            /* up to 256 KiB (the largest class) */
    case 5: return (size_t)(256 << 10) - 8 + (v & 31); /* the small/large boundary */
    case 6: return ((size_t)v << 4) & 0xfffff; /* up to 1 MiB, large blocks */
    default: return v & 255;
    }
}

/* a power-of-two alignment up to 1 MiB (biased towards small ones) */
static size_t align_arg(void) {
    unsigned s = byte();
    unsigned shift = (s & 0x80) ? s % 21 : s % 13;
    return (size_t)1 << shift;
}

/* ---- tracing: FUZZ_TRACE=1 prints every call as a line of C (s[] = slots, m[] = scopes),
 * to turn a crash into a stand-alone reproduction */
static int tracing = -1;
#define TR(...)                                                                     \
    do {                                                                            \
        if (tracing < 0) tracing = getenv("FUZZ_TRACE") != NULL;                    \
        if (tracing) dprintf(2, __VA_ARGS__);                                       \
    } while (0)

/* ---- failures ------------------------------------------------------------- */
static void fail(const char *what, const struct block *b, size_t at) {
    TR("/* fails here */\n");
    fprintf(stderr, "fuzz_api: %s: block %p size %zu align %zu kind %u depth %u seed %u, offset %zu\n", what,
            b ? (void *)b->p : NULL, b ? b->size : 0, b ? b->align : 0, b ? b->kind : 0,
            b ? b->depth : 0, b ? b->seed : 0, at);
    abort();
}

/* ---- patterns --------------------------------------------------------------- */
static inline unsigned char pat(uint32_t seed, size_t i) {
    return (unsigned char)(seed ^ (i * 0x9d) ^ (i >> 8) ^ (seed >> 8));
}

/* write (or check) the pattern over [from, to) */
static void range(const struct block *b, size_t from, size_t to, int write) {
    for (size_t i = from; i < to; i++) {
        if (write)
            b->p[i] = pat(b->seed, i);
        else if (b->p[i] != pat(b->seed, i))
            fail("contents changed", b, i);
    }
}

static void check_range(const struct block *b, size_t from, size_t to) { range(b, from, to, 0); }

/* the parts of a block that carry the pattern: all of it, or its two ends */
static void parts(const struct block *b, int write) {
    if (b->size <= 2 * CHECK_SPAN) {
        range(b, 0, b->size, write);
    } else {
        range(b, 0, CHECK_SPAN, write);
        range(b, b->size - CHECK_SPAN, b->size, write);
    }
}

static void fill(const struct block *b) { parts(b, 1); }
static void check(const struct block *b) { parts(b, 0); }

/* check what was written of the first n bytes (what realloc keeps) */
static void check_prefix(const struct block *b, size_t n) {
    if (b->size <= 2 * CHECK_SPAN) {
        check_range(b, 0, n);
    } else {
        check_range(b, 0, n < CHECK_SPAN ? n : CHECK_SPAN);
        if (n > b->size - CHECK_SPAN) check_range(b, b->size - CHECK_SPAN, n);
    }
}

/* ---- the model ---------------------------------------------------------------- */
static int slot_arg(void) { return byte() % SLOTS; }

static void overlap_check(const struct block *nb) {
    uintptr_t a = (uintptr_t)nb->p, ae = a + (nb->size ? nb->size : 1);
    for (int i = 0; i < SLOTS; i++) {
        const struct block *b = &slots[i];
        if (b->kind == FREE_SLOT || b == nb) continue;
        uintptr_t c = (uintptr_t)b->p, ce = c + (b->size ? b->size : 1);
        if (a < ce && c < ae) fail("new block overlaps a live one", nb, (size_t)(c - a));
    }
}

/* a block the allocator just gave: check it, record it, write its pattern */
static void adopt(int s, void *p, size_t size, size_t align, enum kind kind, int zeroed) {
    struct block *b = &slots[s];
    b->p = p;
    b->size = size;
    b->align = align < 16 ? 16 : align;
    b->seed = ++next_seed;
    b->kind = (unsigned char)kind;
    b->depth = kind == SCOPED ? (unsigned char)depth : 0;
    if ((uintptr_t)p % b->align) fail("misaligned", b, (uintptr_t)p % b->align);
    overlap_check(b);
    if (zeroed) {
        size_t n = size <= 2 * CHECK_SPAN ? size : CHECK_SPAN;
        for (size_t i = 0; i < n; i++)
            if (b->p[i]) fail("calloc block not zeroed", b, i);
        for (size_t i = size - (size - n < CHECK_SPAN ? size - n : CHECK_SPAN); i < size; i++)
            if (b->p[i]) fail("calloc block not zeroed (tail)", b, i);
    }
    size_t us = ta_malloc_usable_size(p);
    if (us < size) fail("usable size below the requested size", b, us);
    if (kind == HEAP) {
        if (!ta_owns(p)) fail("ta_owns is 0 for a live block", b, 0);
        /* the slack is the program's too */
        size_t end = us - size > SLACK_MAX ? size + SLACK_MAX : us;
        memset(b->p + size, 0xa5, end - size);
    }
    fill(b);
}

static void forget(int s) { memset(&slots[s], 0, sizeof slots[s]); }

/* a free slot for a new block: the given one, after freeing what is in it */
static void release(int s);
static int take(int s) {
    if (slots[s].kind != FREE_SLOT) release(s);
    return s;
}

static void release(int s) {
    struct block *b = &slots[s];
    if (b->kind == FREE_SLOT) return;
    check(b);
    TR("ta_free(s[%d]);\n", s);
    ta_free(b->p); /* a scoped block: a no-op while its scope is open */
    forget(s);
}

/* end scopes down to depth d (ending the scope at depth d+1 and those inside) */
static void end_scopes(unsigned d) {
    if (d >= depth) return;
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].kind == SCOPED && slots[i].depth > d) {
            check(&slots[i]);
            forget(i);
        }
    TR("ta_scope_end(m[%u]);\n", d);
    ta_scope_end(marks[d]);
    depth = d;
    if (ta_scope_depth() != d) fail("ta_scope_depth after ta_scope_end", NULL, ta_scope_depth());
}

static void reset(void) {
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].kind == HEAP) release(i);
    end_scopes(0);
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].kind != FREE_SLOT) fail("block left after reset", &slots[i], 0);
}

/* ---- the operations ------------------------------------------------------------ */
static void op_malloc(void) {
    int s = take(slot_arg());
    size_t n = size_arg();
    TR("s[%d] = ta_malloc(%zu);\n", s, n);
    void *p = ta_malloc(n);
    if (!p) fail("malloc returned NULL", NULL, n);
    adopt(s, p, n, 16, HEAP, 0);
}

static void op_calloc(void) {
    int s = take(slot_arg());
    size_t n = (byte() & 15) + 1, size = size_arg() / n;
    TR("s[%d] = ta_calloc(%zu, %zu);\n", s, n, size);
    void *p = ta_calloc(n, size);
    if (!p) fail("calloc returned NULL", NULL, n * size);
    adopt(s, p, n * size, 16, HEAP, 1);
}

static void op_realloc(void) {
    int s = slot_arg();
    size_t n = size_arg();
    struct block *b = &slots[s];
    if (b->kind == FREE_SLOT) { /* realloc(NULL, n) is malloc(n) */
        TR("s[%d] = ta_realloc(NULL, %zu);\n", s, n);
        void *p = ta_realloc(NULL, n);
        if (!p) fail("realloc(NULL) returned NULL", NULL, n);
        adopt(s, p, n, 16, HEAP, 0);
        return;
    }
    check(b);
    struct block old = *b;
    TR("s[%d] = ta_realloc(s[%d], %zu);\n", s, s, n);
    void *p = ta_realloc(b->p, n);
    if (!p) {
        if (n == 0) { /* realloc(p, 0) may free p and return NULL */
            forget(s);
            return;
        }
        fail("realloc returned NULL", b, n);
    }
    /* the common prefix is kept; the old pattern is still expected there */
    old.p = p;
    check_prefix(&old, n < old.size ? n : old.size);
    forget(s);
    adopt(s, p, n, 16, HEAP, 0); /* scoped blocks move to the heap */
}

static void op_free(void) { release(slot_arg()); }

static void op_free_sized(void) {
    int s = slot_arg();
    struct block *b = &slots[s];
    if (b->kind != HEAP) return;
    check(b);
    TR("ta_free_sized(s[%d], %zu);\n", s, b->size);
    ta_free_sized(b->p, b->size);
    forget(s);
}

static void op_memalign(unsigned how) {
    int s = take(slot_arg());
    size_t a = align_arg(), n = size_arg();
    void *p = NULL;
    switch (how) {
    case 0: TR("s[%d] = ta_memalign(%zu, %zu);\n", s, a, n); p = ta_memalign(a, n); break;
    case 1: {
        if (a < sizeof(void *)) a = sizeof(void *);
        TR("ta_posix_memalign(&s[%d], %zu, %zu);\n", s, a, n);
        int rc = ta_posix_memalign(&p, a, n);
        if (rc) fail("posix_memalign failed", NULL, (size_t)rc);
        break;
    }
    default:
        n = (n + a - 1) & ~(a - 1); /* C11 wants a multiple (tieralloc does not) */
        TR("s[%d] = ta_aligned_alloc(%zu, %zu);\n", s, a, n);
        p = ta_aligned_alloc(a, n);
        break;
    }
    if (!p) fail("aligned allocation returned NULL", NULL, a);
    adopt(s, p, n, a, HEAP, 0);
}

static void op_usable(void) {
    struct block *b = &slots[slot_arg()];
    if (b->kind == FREE_SLOT) return;
    if (ta_malloc_usable_size(b->p) < b->size) fail("usable size below the requested size", b, 0);
    if (b->kind == HEAP && !ta_owns(b->p)) fail("ta_owns is 0 for a live block", b, 0);
    check(b);
}

static void op_rewrite(void) {
    struct block *b = &slots[slot_arg()];
    if (b->kind == FREE_SLOT) return;
    check(b);
    b->seed = ++next_seed;
    fill(b);
}

static void op_scope_begin(void) {
    if (depth == MAX_DEPTH) return;
    TR("m[%u] = ta_scope_begin();\n", depth);
    marks[depth++] = ta_scope_begin();
    if (ta_scope_depth() != depth) fail("ta_scope_depth after ta_scope_begin", NULL, ta_scope_depth());
}

static void op_scope_end(void) {
    if (!depth) return;
    end_scopes(byte() % depth);
}

static void op_scope_alloc(unsigned how) {
    int s = take(slot_arg());
    size_t n = size_arg(), a = 16;
    void *p;
    int zeroed = 0;
    switch (how) {
    case 0: TR("s[%d] = ta_scope_alloc(%zu);\n", s, n); p = ta_scope_alloc(n); break;
    case 1:
        a = align_arg();
        if (a > 4096) a = 4096;
        TR("s[%d] = ta_scope_alloc_aligned(%zu, %zu);\n", s, a, n);
        p = ta_scope_alloc_aligned(a, n);
        break;
    default: {
        size_t k = (byte() & 7) + 1;
        n /= k;
        TR("s[%d] = ta_scope_calloc(%zu, %zu);\n", s, k, n);
        p = ta_scope_calloc(k, n);
        n *= k;
        zeroed = 1;
        break;
    }
    }
    if (!p) fail("scoped allocation returned NULL", NULL, n);
    /* with no scope open it is a heap block */
    adopt(s, p, n, a, depth ? SCOPED : HEAP, zeroed);
}

static void op_escape(void) {
    int s = slot_arg();
    struct block *b = &slots[s];
    if (b->kind == FREE_SLOT) return;
    check(b);
    TR("e = ta_escape(s[%d]);\n", s);
    void *p = ta_escape(b->p);
    if (!p) fail("ta_escape returned NULL", b, 0);
    if (b->kind == HEAP) {
        if (p != b->p) fail("ta_escape moved a heap block", b, 0);
        return;
    }
    struct block old = *b;
    old.p = p;
    check(&old); /* the copy has the contents */
    int t = -1; /* the copy goes to a free slot if there is one, else replaces the original */
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].kind == FREE_SLOT) { t = i; break; }
    if (t < 0) { t = s; forget(s); }
    TR("s[%d] = e;\n", t);
    adopt(t, p, old.size, 16, HEAP, 0);
}

static void op_invalid(void) {
    unsigned which = byte() % 5;
    errno = 0;
    void *p = NULL;
    switch (which) {
    case 0: p = ta_malloc(SIZE_MAX - (byte() & 0xff)); break;
    case 1: p = ta_calloc(SIZE_MAX / 2 + 2, 2 + (byte() & 3)); break;
    case 2: p = ta_aligned_alloc(24 + 16 * (byte() & 3), 64); if (!p && errno != EINVAL) fail("aligned_alloc with a bad alignment: errno", NULL, (size_t)errno); return;
    case 3: {
        int rc = ta_posix_memalign(&p, 12, 64);
        if (rc != EINVAL) fail("posix_memalign with a bad alignment", NULL, (size_t)rc);
        return;
    }
    default: p = ta_realloc(NULL, SIZE_MAX - 4096); break;
    }
    if (p) fail("an impossible request succeeded", NULL, which);
    if (errno != ENOMEM) fail("an impossible request: errno is not ENOMEM", NULL, (size_t)errno);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    in = data;
    in_left = size;
    while (in_left) {
        unsigned op = byte();
        switch (op % 20) {
        case 0: case 1: case 2: op_malloc(); break;
        case 3: op_calloc(); break;
        case 4: case 5: op_realloc(); break;
        case 6: case 7: op_free(); break;
        case 8: op_free_sized(); break;
        case 9: op_memalign(0); break;
        case 10: op_memalign(1 + (op / 20) % 2); break;
        case 11: op_usable(); break;
        case 12: op_rewrite(); break;
        case 13: op_scope_begin(); break;
        case 14: op_scope_end(); break;
        case 15: case 16: op_scope_alloc((op / 20) % 3); break;
        case 17: op_escape(); break;
        case 18: if ((op / 20) % 4 == 0) { TR("ta_malloc_trim(0);\n"); ta_malloc_trim(0); } else op_invalid(); break;
        default: op_free(); break;
        }
    }
    reset();
    return 0;
}
