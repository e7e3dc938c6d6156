/* arena.c: tier 0, the scoped stack arena.
 *
 * A thread's scopes share one chain of chunks.  A chunk is a span of the page
 * heap (taken with class 0, then marked with the reserved class TA_SPAN_ARENA
 * and registered on every page, with info 0 so the small-block free fast path
 * sends its pointers to ta_free_slow).  Allocation bumps a cursor in the top
 * chunk; a scope's mark is the cursor position when it began, and ending the
 * scope moves the cursor back there, handing the chunks taken since to the
 * thread's spare list (beyond a retained limit, back to the page heap).
 *
 * Every block is preceded by an 8-byte header: its size in the high half, the
 * tag of the scope that made it in the low half (serial << 8 | depth).  The
 * thread remembers the serial of the open scope at each depth, so a pointer
 * whose scope has ended is recognised either by its position (beyond the
 * cursor, or in a chunk that is no longer in the chain) or by a header whose
 * scope is no longer the one open at its depth.  Blocks are 16-byte aligned:
 * headers sit at addresses = 8 (mod 16), and a block of n bytes takes
 * round16(n + 8) bytes, like a malloc block.
 *
 * Requests too big for a chunk (over CHUNK_MAX/4) get a chunk of their own on
 * a separate per-thread list, tagged with the scope depth they belong to.
 *
 * All state is thread-local except the statistics (relaxed atomics); the only
 * locks taken are the page heap's, when a chunk comes from it or goes back. */
#define TA_SCOPE_NO_INLINE 1 /* the out-of-line definitions live here */
#include "internal.h"

#include <errno.h>
#include <string.h>

#include "tieralloc.h"

#define CHUNK_MIN ((size_t)64 << 10)  /* first chunk of a chain */
#define CHUNK_MAX ((size_t)4 << 20)   /* chain chunks grow by doubling up to this */
#define BIG_MIN (CHUNK_MAX / 4)       /* larger requests get a chunk of their own */
#define RETAIN ((size_t)4 << 20)      /* spare chunk bytes a thread keeps */
#define TRACK 32                      /* depths 1..TRACK-1 keep their serial */
#define CHUNK_MAGIC 0x7a5c09e5c4a11ce5ull

enum { CH_CHAIN = 1, CH_SPARE = 2, CH_BIG = 3 };
enum { AR_NEW = 0, AR_LIVE = 1, AR_DEAD = 2 };

typedef struct arena arena_t;
typedef struct chunk chunk_t;

/* At the start of every chunk (56 bytes: the first header follows at +56, the
 * first block at +64). */
struct chunk {
    uint64_t magic;   /* CHUNK_MAGIC ^ address */
    arena_t *owner;   /* the thread that holds it */
    chunk_t *link;    /* chain: the chunk below; spare and big lists: next */
    ta_span_t *span;
    char *end;        /* end of the chunk */
    char *used;       /* chain chunks below the top: where the cursor left it */
    uint32_t state;   /* CH_* */
    uint32_t depth;   /* big chunks: depth of the scope they belong to */
};

struct arena {
    chunk_t *top;      /* chain top: the chunk the cursor is in */
    chunk_t *spare;    /* free chunks kept for reuse */
    chunk_t *big;      /* chunks of single big blocks, newest first */
    char *idle_pos;    /* depth 0: where the cursor resumes in top */
    size_t spare_bytes;
    uint32_t depth;    /* open scopes */
    uint32_t serial;   /* last serial handed out (24 bits, never 0) */
    uint32_t state;    /* AR_* */
    uint32_t serials[TRACK]; /* serial of the open scope at depth d < TRACK */
};

/* The cursor is public (the header's inline fast path bumps it); the rest of
 * the thread's state is private. */
TA_EXPORT __thread ta_scope_cursor_t ta_scope_cur __attribute__((tls_model("initial-exec")));
static __thread arena_t tls_arena __attribute__((tls_model("initial-exec")));

/* ---- statistics -------------------------------------------------------------- */
static struct {
    uint64_t held_bytes, held_chunks, spare_bytes;
    uint64_t n_from_heap, n_to_heap, n_reused, n_big;
} st;
#define ST_ADD(f, v) __atomic_add_fetch(&st.f, (uint64_t)(v), __ATOMIC_RELAXED)
#define ST_SUB(f, v) __atomic_sub_fetch(&st.f, (uint64_t)(v), __ATOMIC_RELAXED)
#define ST_GET(f) __atomic_load_n(&st.f, __ATOMIC_RELAXED)

uint64_t ta_arena_bytes(void) { return ST_GET(held_bytes); }

void ta_arena_stats(ta_arena_stats_t *out) {
    out->held_bytes = ST_GET(held_bytes);
    out->held_chunks = ST_GET(held_chunks);
    out->spare_bytes = ST_GET(spare_bytes);
    out->n_chunks_from_heap = ST_GET(n_from_heap);
    out->n_chunks_to_heap = ST_GET(n_to_heap);
    out->n_chunks_reused = ST_GET(n_reused);
    out->n_big = ST_GET(n_big);
}

/* ---- thread registration ------------------------------------------------- */
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_thread_exit(void *arg);
static void make_key(void) { pthread_key_create(&arena_key, arena_thread_exit); }

/* First chunk of a thread: make sure its chunks go back when it exits. */
static void arena_register(arena_t *a) {
    if (a->state != AR_NEW) return;
    pthread_once(&arena_once, make_key);
    a->state = AR_LIVE;
    pthread_setspecific(arena_key, a);
}

/* ---- chunks -------------------------------------------------------------- */
static inline size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }
static inline size_t chunk_size(const chunk_t *c) { return (size_t)(c->end - (char *)c); }
/* first header position: = 8 (mod 16) just past the chunk record */
static inline char *chunk_first(chunk_t *c) {
    return (char *)c + round16(sizeof(chunk_t) + 8) - 8;
}

/* The chunk a pointer lies in, if it lies in a chunk some arena holds. */
static chunk_t *chunk_in(ta_span_t *s) {
    if (!s) return NULL;
    chunk_t *c = ta_span_addr(s);
    if (c->magic != (CHUNK_MAGIC ^ (uintptr_t)c) || c->span != s) return NULL;
    return c;
}
static chunk_t *chunk_of(const void *p) { return chunk_in(ta_arena_span(p)); }

/* A chunk of at least `bytes` (a multiple of the page), aligned to align_pages. */
static chunk_t *chunk_from_heap(arena_t *a, size_t bytes, uintptr_t align_pages) {
    ta_ensure_init();
    uintptr_t npages = bytes >> TA_PAGE_SHIFT;
    ta_span_t *s = ta_pageheap_alloc_arena(npages, align_pages);
    if (!s) return NULL;
    chunk_t *c = ta_span_addr(s);
    c->magic = CHUNK_MAGIC ^ (uintptr_t)c;
    c->owner = a;
    c->span = s;
    c->end = (char *)c + ta_span_usable(s); /* (hardened build: the guard page follows) */
    c->link = NULL;
    c->used = NULL;
    c->state = 0;
    c->depth = 0;
    ST_ADD(held_bytes, ta_span_usable(s));
    ST_ADD(held_chunks, 1);
    ST_ADD(n_from_heap, 1);
    arena_register(a);
    return c;
}

static void chunk_to_heap(chunk_t *c) {
    ta_span_t *s = c->span;
    size_t bytes = chunk_size(c);
    c->magic = 0;
    c->state = 0;
    ST_SUB(held_bytes, bytes);
    ST_SUB(held_chunks, 1);
    ST_ADD(n_to_heap, 1);
    ta_pageheap_free_arena(s);
}

/* Keep a chunk no longer in use, or give it back beyond the retained limit
 * (the smallest spares go first). */
static void chunk_retire(arena_t *a, chunk_t *c) {
    size_t size = chunk_size(c);
    if (a->state == AR_DEAD || size > RETAIN) {
        chunk_to_heap(c);
        return;
    }
    while (a->spare_bytes + size > RETAIN) {
        chunk_t **victim = &a->spare;
        for (chunk_t **pp = &a->spare; *pp; pp = &(*pp)->link)
            if (chunk_size(*pp) < chunk_size(*victim)) victim = pp;
        chunk_t *v = *victim;
        if (chunk_size(v) > size) { /* the newcomer is the smaller one */
            chunk_to_heap(c);
            return;
        }
        *victim = v->link;
        a->spare_bytes -= chunk_size(v);
        ST_SUB(spare_bytes, chunk_size(v));
        chunk_to_heap(v);
    }
    c->state = CH_SPARE;
    c->used = NULL;
    c->link = a->spare;
    a->spare = c;
    a->spare_bytes += size;
    ST_ADD(spare_bytes, size);
}

/* A chunk of at least `need` bytes for the chain (target: the geometric size):
 * the smallest spare of at least target, else the largest spare of at least
 * need, else a new one. */
static chunk_t *chunk_get(arena_t *a, size_t need, size_t target) {
    chunk_t **best = NULL, **fallback = NULL;
    for (chunk_t **pp = &a->spare; *pp; pp = &(*pp)->link) {
        size_t sz = chunk_size(*pp);
        if (sz < need) continue; /* never a chunk the block does not fit */
        if (sz >= target) {
            if (!best || sz < chunk_size(*best)) best = pp;
        } else {
            if (!fallback || sz > chunk_size(*fallback)) fallback = pp;
        }
    }
    if (!best) best = fallback;
    if (best) {
        chunk_t *c = *best;
        *best = c->link;
        a->spare_bytes -= chunk_size(c);
        ST_SUB(spare_bytes, chunk_size(c));
        ST_ADD(n_reused, 1);
        c->link = NULL;
        return c;
    }
    size_t bytes = target > need ? target : need;
    bytes = (bytes + TA_PAGE_SIZE - 1) & ~(TA_PAGE_SIZE - 1);
    return chunk_from_heap(a, bytes, 1);
}

/* ---- scopes ---------------------------------------------------------------- */
static inline uint32_t tag_for(const arena_t *a, uint32_t depth) {
    if (depth >= TRACK) return TRACK; /* deep scopes: serial 0, position checks only */
    return a->serials[depth] << 8 | depth;
}

/* The cursor's position whether or not a scope is open. */
static inline char *cursor_pos(const arena_t *a) {
    return a->depth ? ta_scope_cur.ptr : a->idle_pos;
}

TA_EXPORT ta_scope_t ta_scope_begin(void) {
    arena_t *a = &tls_arena;
    if (TA_UNLIKELY(ta_trace_on)) ta_trace_mark(TA_TR_SCOPE_BEGIN);
    if (TA_UNLIKELY(a->state == AR_DEAD)) return (ta_scope_t){NULL, 0}; /* past thread exit */
    uint32_t serial = (a->serial + 1) & 0xffffff;
    if (TA_UNLIKELY(!a->serial)) /* first scope of the thread: start somewhere of its own */
        serial = (uint32_t)(((uintptr_t)a >> 4) * 0x9e3779b1u) & 0xffffff;
    if (!serial) serial = 1;
    a->serial = serial;
    uint32_t depth = ++a->depth;
    if (depth < TRACK) a->serials[depth] = serial;
    char *pos;
    if (depth == 1) {
        pos = a->idle_pos;
        ta_scope_cur.ptr = pos;
        ta_scope_cur.end = a->top ? a->top->end : NULL;
    } else {
        pos = ta_scope_cur.ptr;
    }
    ta_scope_cur.tag = tag_for(a, depth);
    return (ta_scope_t){pos, (uint64_t)serial << 32 | depth};
}

TA_EXPORT void ta_scope_end(ta_scope_t mark) {
    arena_t *a = &tls_arena;
    if (TA_UNLIKELY(ta_trace_on)) ta_trace_mark(TA_TR_SCOPE_END);
    uint32_t depth = (uint32_t)mark.id_;
    uint32_t serial = (uint32_t)(mark.id_ >> 32);
    if (TA_UNLIKELY(depth == 0)) return; /* a mark from a thread past its exit */
    if (TA_UNLIKELY(a->state == AR_DEAD)) return;
    if (TA_UNLIKELY(depth > a->depth || (depth < TRACK && a->serials[depth] != serial)))
        ta_fatal("ta_scope_end of a scope that is not open (ended twice, or begun by another "
                 "thread): depth %u, position %p", depth, mark.pos_);
    /* single big blocks of this scope and the ones nested in it */
    while (a->big && a->big->depth >= depth) {
        chunk_t *c = a->big;
        a->big = c->link;
        chunk_retire(a, c);
    }
    /* back down the chain to the chunk holding the mark (the bottom one when
     * the chain was empty at the mark: it is kept, reset to its start) */
    char *pos = mark.pos_;
    chunk_t *c = a->top;
    while (c && !(pos > (char *)c && pos <= c->end) && (pos || c->link)) {
        chunk_t *below = c->link;
        chunk_retire(a, c);
        c = below;
    }
    if (pos && !c)
        ta_fatal("ta_scope_end: mark %p is in no chunk of this thread (corrupt mark)", pos);
    a->top = c;
    if (c) {
        c->used = NULL;
        if (!pos) pos = chunk_first(c);
    }
    a->depth = depth - 1;
    if (a->depth == 0) {
        a->idle_pos = pos;
        ta_scope_cur.ptr = ta_scope_cur.end = NULL; /* no scope: allocations go to the heap */
        ta_scope_cur.tag = 0;
    } else {
        ta_scope_cur.ptr = pos;
        ta_scope_cur.end = c ? c->end : NULL;
        ta_scope_cur.tag = tag_for(a, a->depth);
    }
}

TA_EXPORT unsigned ta_scope_depth(void) { return tls_arena.depth; }

/* ---- allocation ------------------------------------------------------------ */
static void *fail_nomem(void) {
    errno = ENOMEM;
    return NULL;
}

static inline void *write_block(char *p, size_t n, uint32_t tag) {
    *(uint64_t *)(p - 8) = (uint64_t)n << 32 | tag;
    return p;
}

/* A chunk of its own for one big block (depth: the scope it belongs to). */
static void *alloc_big(arena_t *a, size_t n, size_t align) {
    size_t lead = round16(sizeof(chunk_t) + 8); /* offset of the block */
    uintptr_t align_pages = 1;
    if (align > lead) lead = align;
    if (align > TA_PAGE_SIZE) align_pages = align >> TA_PAGE_SHIFT;
    size_t bytes = (lead + n + TA_PAGE_SIZE - 1) & ~(TA_PAGE_SIZE - 1);
    chunk_t *c = NULL;
    if (align_pages == 1) { /* a spare that is big enough will do */
        chunk_t **best = NULL;
        for (chunk_t **pp = &a->spare; *pp; pp = &(*pp)->link)
            if (chunk_size(*pp) >= bytes && (!best || chunk_size(*pp) < chunk_size(*best))) best = pp;
        if (best) {
            c = *best;
            *best = c->link;
            a->spare_bytes -= chunk_size(c);
            ST_SUB(spare_bytes, chunk_size(c));
            ST_ADD(n_reused, 1);
        }
    }
    if (!c) c = chunk_from_heap(a, bytes, align_pages);
    if (!c) return fail_nomem();
    c->state = CH_BIG;
    c->depth = a->depth;
    c->link = a->big;
    a->big = c;
    ST_ADD(n_big, 1);
    /* sizes that do not fit the header's 32 bits read as all ones: the real
     * size is then the rest of the chunk */
    return write_block((char *)c + lead, n < 0xffffffffu ? n : 0xffffffffu, tag_for(a, a->depth));
}

/* Everything the inline fast path does not do: no scope open (heap), a full
 * chunk, big blocks, alignment above 16. */
static void *scope_alloc(size_t n, size_t align) {
    arena_t *a = &tls_arena;
    if (!a->depth) { /* no scope: an ordinary heap block (free() releases it) */
        return ta_heap_alloc(n, align, false);
    }
    if (n > TA_MAX_REQUEST || align > TA_MAX_REQUEST) return fail_nomem();
    ta_scope_cursor_t *cur = &ta_scope_cur;
    size_t body = round16(n + 8) - 8; /* bytes from the block to the next header */
    if (cur->ptr) {
        char *p = (char *)(((uintptr_t)cur->ptr + 8 + align - 1) & ~(uintptr_t)(align - 1));
        if (p <= cur->end && body <= (size_t)(cur->end - p)) {
            cur->ptr = p + body;
            return write_block(p, n, (uint32_t)cur->tag);
        }
    }
    size_t hdr = round16(sizeof(chunk_t) + 8);
    if (n + align > BIG_MIN || align > TA_PAGE_SIZE) return alloc_big(a, n, align);
    /* a new chain chunk: double the top one's size, up to CHUNK_MAX */
    size_t need = hdr + (align > 16 ? align : 0) + body;
    size_t target = CHUNK_MIN;
    if (a->top) {
        target = chunk_size(a->top) * 2;
        if (target > CHUNK_MAX) target = CHUNK_MAX;
        if (target < CHUNK_MIN) target = CHUNK_MIN;
    }
    chunk_t *c = chunk_get(a, need, target);
    if (!c) return fail_nomem();
    if (a->top) a->top->used = cur->ptr;
    c->state = CH_CHAIN;
    c->owner = a;
    c->link = a->top;
    c->used = NULL;
    a->top = c;
    char *p = (char *)(((uintptr_t)chunk_first(c) + 8 + align - 1) & ~(uintptr_t)(align - 1));
    cur->end = c->end;
    cur->ptr = p + body;
    return write_block(p, n, (uint32_t)cur->tag);
}

TA_EXPORT void *ta_scope_alloc_slow(size_t n) { return scope_alloc(n, TA_ALIGN); }

TA_EXPORT void *ta_scope_alloc(size_t n) {
    ta_scope_cursor_t *c = &ta_scope_cur;
    size_t need = (n + 23) & ~(size_t)15;
    char *h = c->ptr;
    if (TA_LIKELY(need > n && need <= (size_t)(c->end - h))) {
        c->ptr = h + need;
        *(uint64_t *)h = (uint64_t)n << 32 | c->tag;
        return h + 8;
    }
    return scope_alloc(n, TA_ALIGN);
}

TA_EXPORT void *ta_scope_alloc_aligned(size_t align, size_t n) {
    if (!align || (align & (align - 1))) {
        errno = EINVAL;
        return NULL;
    }
    return scope_alloc(n, align < TA_ALIGN ? TA_ALIGN : align);
}

TA_EXPORT void *ta_scope_calloc(size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return fail_nomem();
    if (!tls_arena.depth) return ta_heap_alloc(total, 0, true);
    void *p = ta_scope_alloc(total);
    if (p) memset(p, 0, total);
    return p;
}

/* ---- pointers handed back ---------------------------------------------------
 * What is wrong with p (a pointer into chunk c), or NULL with the block's size
 * in *size.  Only the owning thread can judge its own scopes; a pointer into
 * another thread's chunk is taken at its header's word. */
static const char *check_block(const char *p, chunk_t *c, size_t *size) {
    arena_t *a = &tls_arena;
    if (((uintptr_t)p & 15) || p < chunk_first(c) + 8 || p > c->end)
        return "is not the start of a scoped block";
    uint64_t hdr = *(const uint64_t *)(p - 8);
    size_t n = (size_t)(hdr >> 32);
    uint32_t tag = (uint32_t)hdr;
    uint32_t d = tag & 0xff;
    if (c->state == CH_BIG && n == 0xffffffffu) n = (size_t)(c->end - p);
    if (c->owner != a) { /* another thread's scope: no way to tell, trust the header */
        if (c->state == CH_SPARE) return "was released when its scope ended";
        if (n > (size_t)(c->end - p)) return "is not the start of a scoped block";
        *size = n;
        return NULL;
    }
    if (c->state == CH_SPARE || !a->depth) return "was released when its scope ended";
    const char *limit = c->state == CH_BIG ? c->end : c == a->top ? cursor_pos(a) : c->used;
    if (!limit || p > limit || p - 8 >= limit) return "was released when its scope ended";
    bool open = d >= 1 && d <= a->depth && d <= TRACK &&
                (d < TRACK ? a->serials[d] == tag >> 8 : tag >> 8 == 0);
    if (!open || n > (size_t)(limit - p))
        return "is not a live scoped block (its scope ended, or an interior pointer)";
    *size = n;
    return NULL;
}

static size_t checked_size(const void *p, chunk_t *c, const char *op) {
    size_t n = 0;
    const char *err = check_block(p, c, &n);
    if (err) ta_fatal("%s of scoped pointer %p: it %s", op, p, err);
    /* what the block can hold: up to the next header */
    return c->state == CH_BIG && n >= 0xffffffffu ? n : round16(n + 8) - 8;
}

/* p is in a span marked as a chunk whose record does not match: memory tieralloc
 * does not recognise */
static chunk_t *chunk_or_die(const void *p, ta_span_t *s, const char *op) {
    chunk_t *c = chunk_in(s);
    if (!c) ta_fatal("%s of a pointer tieralloc never returned: %p", op, p);
    return c;
}

void ta_arena_free(void *p, ta_span_t *s) {
    checked_size(p, chunk_or_die(p, s, "free"), "free"); /* inside its scope: nothing to do */
}

size_t ta_arena_usable_size(const void *p, ta_span_t *s) {
    return checked_size(p, chunk_or_die(p, s, "malloc_usable_size"), "malloc_usable_size");
}

void *ta_arena_realloc(void *p, ta_span_t *s, size_t n) {
    chunk_t *c = chunk_or_die(p, s, "realloc");
    size_t old = checked_size(p, c, "realloc");
    void *q = ta_heap_alloc(n, 0, false);
    if (q) memcpy(q, p, old < n ? old : n);
    return q; /* p stays in its scope, released with it */
}

int ta_arena_owns(const void *p, ta_span_t *s) {
    chunk_t *c = chunk_in(s);
    size_t n;
    return c && !check_block(p, c, &n);
}

TA_EXPORT void *ta_escape(void *p) {
    if (!p) return NULL;
    chunk_t *c = chunk_of(p);
    if (!c) return p; /* already a heap block */
    size_t n = checked_size(p, c, "ta_escape");
    void *q = ta_heap_alloc(n, 0, false);
    if (q) memcpy(q, p, n);
    return q;
}

void ta_arena_trim_current(void) {
    arena_t *a = &tls_arena;
    while (a->spare) {
        chunk_t *c = a->spare;
        a->spare = c->link;
        a->spare_bytes -= chunk_size(c);
        ST_SUB(spare_bytes, chunk_size(c));
        chunk_to_heap(c);
    }
}

/* ---- thread exit ------------------------------------------------------------ */
static void arena_thread_exit(void *arg) {
    arena_t *a = arg;
    a->state = AR_DEAD;
    while (a->big) {
        chunk_t *c = a->big;
        a->big = c->link;
        chunk_to_heap(c);
    }
    while (a->top) {
        chunk_t *c = a->top;
        a->top = c->link;
        chunk_to_heap(c);
    }
    ta_arena_trim_current();
    a->depth = 0;
    a->idle_pos = NULL;
    ta_scope_cur.ptr = ta_scope_cur.end = NULL;
    ta_scope_cur.tag = 0;
}
