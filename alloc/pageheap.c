/* pageheap.c: tier 3.  Spans of whole pages: carved for size classes or handed
 * out whole for large blocks; freed spans coalesce with free neighbours of the
 * same kind; free pages go back to the OS after decay_ms (or at once on trim).
 *
 * Free spans are either FREE (pages still resident: reused without faults) or
 * RELEASED (madvised away: zero and not resident).  The two kinds are kept in
 * separate lists and only merge with their own kind, so every byte is counted
 * exactly once; a FREE span that decays becomes RELEASED and then merges.
 *
 * The heap's mappings are accounted memory (os.c), placed next to each other.
 * Released spans go back to the OS with munmap on trim (those of 2 MiB or
 * more) and, with every free page, when the OS refuses a mapping.  Running
 * out of memory or metadata fails the request and leaves the heap as it was:
 * span records come from a small reserve filled before anything changes. */
#include "internal.h"

#include <string.h>
#include <sys/syscall.h>

#define PH_EXACT 128               /* lists 1..128 hold spans of exactly that many pages */
#define PH_GROW_PAGES 256          /* grow the heap 2 MiB at a time at least */

static ta_lock_t ph_lock = TA_LOCK_INIT(TA_RANK_PAGEHEAP);
/* [kind][npages or 0 for larger]; sentinels, each made on first use (ph_head):
 * the lists are four pages that a small process would otherwise write at start */
static ta_span_t ph_list[2][PH_EXACT + 1];
/* bit i of ph_nonempty[kind]: exact list i (1..PH_EXACT) holds a span, so that
 * a fit is found without looking at every list head */
#define PH_WORDS (PH_EXACT / 64 + 1)
static uint64_t ph_nonempty[2][PH_WORDS];
static ta_pageheap_stats_t ph_stats;
/* inuse_bytes and free_bytes change under ph_lock but are read without it
 * (ta_pageheap_bg_due): written with relaxed atomic stores, which cost what a
 * plain store does, so the unlocked read is not a data race. */
static inline void ph_stat_add(uint64_t *field, uint64_t delta) {
    __atomic_store_n(field, __atomic_load_n(field, __ATOMIC_RELAXED) + delta, __ATOMIC_RELAXED);
}
static uint64_t ph_class_spans[TA_MAX_CLASSES]; /* in-use spans of each size class (stats) */
static uint64_t ph_last_decay_ms;

/* Demand, by decay period (rings of the last periods; `cur` is the current
 * period's):
 *  - in use: the most bytes in use.  The decay keeps free pages resident up to
 *    the recent peak: a program whose demand oscillates does not fault its
 *    pages back in at every swing.
 *  - resident: the heap's resident bytes (in use + free resident) each time a
 *    request had to take released pages because no resident free span fitted.
 *    Free pages are scattered among the spans in use, so a busy heap needs
 *    more resident than its peak in use: this peak says how much it needed
 *    (when it grew, or faulted back pages the decay gave it), and the decay
 *    keeps that much resident for a longer window (a churning heap would
 *    otherwise be released and faulted back every few periods): 16 periods,
 *    doubled (up to 64) each time pages released after such a window are
 *    faulted back again, and back to 16 once the heap went idle. */
#define PH_PEAK_SLOTS 4
#define PH_RES_MIN 16 /* periods the resident peak is held */
#define PH_RES_SLOTS 64
static unsigned ph_res_window = PH_RES_MIN;
static bool ph_refault_seen; /* since the decay's last release */
typedef struct {
    uint64_t slot[PH_RES_SLOTS];
    uint64_t cur;
} ph_ring_t;
static ph_ring_t ph_inuse_peak, ph_res_peak;
static uint64_t ph_peak_epoch;
static uint64_t ph_ops_seen, ph_idle_since_ms; /* page-heap activity, for "idle" */
static uint64_t ph_fork_ms; /* a child of fork: when its heap first became big enough for a background thread, 0 before */
/* The process that made the heap (ta_pageheap_init): under another pid the
 * heap is a fork child's.  Asked, not noted by the child: fork_child writing
 * a flag cost every child a page copied (a shell forks for every command). */
static int ph_pid;
bool ta_pageheap_bg_active;                    /* the background thread runs the decay */

static inline void note_inuse(void) {
    if (ph_stats.inuse_bytes > ph_inuse_peak.cur) ph_inuse_peak.cur = ph_stats.inuse_bytes;
}

/* A recent block's pages are resident free bytes, counted apart: the free
 * resident bytes are ph_stats.free_bytes (those on the free lists) plus
 * ph_recent_bytes (written like free_bytes: read without the lock), which
 * ta_pageheap_stats adds up.  A recent block taken or put back then changes
 * one counter, and the free lists' bytes are one load (the decay's tick). */
static uint64_t ph_recent_bytes;
static inline void account_free_recent(const ta_span_t *s, int sign) {
    ph_stat_add(&ph_recent_bytes, sign * (uint64_t)ta_span_bytes(s));
}
static inline uint64_t free_resident(void) {
    return __atomic_load_n(&ph_stats.free_bytes, __ATOMIC_RELAXED) + __atomic_load_n(&ph_recent_bytes, __ATOMIC_RELAXED);
}


/* ---- recently freed large blocks ---------------------------------------------
 * A program that frees a large block and asks for one of the same size again
 * (a buffer per request, a scratch block per iteration) gets the same pages
 * back, resident, without the work of splitting, registering and merging: the
 * last PH_RECENT large blocks freed are kept whole, off the free lists, in
 * state RECENT (counted as free bytes; nothing merges with or grows into them;
 * a free of one is a double free).  A request of cls 0 takes one whose length
 * is between its own and an eighth more (the extra pages are the block's
 * usable size).  Each decay pass, trim and the out-of-memory path put them on
 * the free lists, where they merge and decay like any free span. */
#define PH_RECENT 8
#define PH_GROW_SLACK 16 /* pages a growing buffer may keep beyond its size (128 KiB) */
/* oldest first; each with its length and page, so that a look for a fit
 * reads this array only */
static struct ph_recent {
    ta_span_t *s;
    uintptr_t page, npages;
} ph_recent[PH_RECENT];
static int ph_nrecent;

static void free_insert(ta_span_t *s);

/* Recent blocks are not stamped when freed (no clock read on that path):
 * every decay pass empties the cache, so a block found in it was freed after
 * the previous pass, ph_last_decay_ms: its age counts from then. */
static void recent_to_lists(ta_span_t *s) {
    account_free_recent(s, -1);
    s->state = TA_SPAN_FREE;
    s->free_since_ms = ph_last_decay_ms;
    free_insert(s);
}

static void recent_flush_locked(void) {
    int n = ph_nrecent;
    ph_nrecent = 0;
    for (int i = 0; i < n; i++) recent_to_lists(ph_recent[i].s);
}

/* Take entry i out of the cache (its block stays counted as free). */
static ta_span_t *recent_drop(int i) {
    ta_span_t *s = ph_recent[i].s;
    for (int j = i; j + 1 < ph_nrecent; j++) ph_recent[j] = ph_recent[j + 1];
    ph_nrecent--;
    return s;
}

/* Keep freed block s (its accounting done, off every list) as recent, where
 * there is room (ph_nrecent < PH_RECENT) ...  Its page and length are read
 * one by one: gcc copies the two with one 16-byte load, which waits for the
 * store of npages a split made just before (a narrower store is not
 * forwarded to a wider load; large_ends_mixed's cut of a recent block ran
 * 2-5% slower). */
__attribute__((unused)) TA_ALWAYS_INLINE void recent_append_locked(ta_span_t *s) {
    s->state = TA_SPAN_RECENT;
    account_free_recent(s, +1);
    struct ph_recent *r = &ph_recent[ph_nrecent++];
    r->s = s;
    r->page = __atomic_load_n(&s->page, __ATOMIC_RELAXED);
    r->npages = __atomic_load_n(&s->npages, __ATOMIC_RELAXED);
}
/* ... or after the oldest recent block went to the free lists */
__attribute__((unused)) /* (not in the hardened build) */ static void recent_put_locked(ta_span_t *s) {
    s->state = TA_SPAN_RECENT; /* first: the oldest may be its neighbour */
    s->next = s->prev = NULL;
    if (ph_nrecent == PH_RECENT) recent_to_lists(recent_drop(0));
    recent_append_locked(s);
}

/* The entry of recent block s. */
static int recent_index(const ta_span_t *s) {
    int i = ph_nrecent - 1; /* (the newest, most often) */
    while (i > 0 && ph_recent[i].s != s) i--;
    TA_ASSERT(ph_recent[i].s == s);
    return i;
}

/* Take recent block s out of the cache (it stays counted as free). */
static void recent_remove_locked(ta_span_t *s) { recent_drop(recent_index(s)); }

/* A recent block of npages .. most pages starting on a multiple of
 * align_pages (the newest such), taken out; NULL if none. */
static ta_span_t *recent_take_locked(uintptr_t npages, uintptr_t most, uintptr_t align_pages) {
    for (int i = ph_nrecent - 1; i >= 0; i--) {
        const struct ph_recent *r = &ph_recent[i];
        if (r->npages < npages || r->npages > most || (r->page & (align_pages - 1))) continue;
        ta_span_t *s = recent_drop(i);
        account_free_recent(s, -1);
        return s;
    }
    return NULL;
}

/* the decay has released pages (since the start or the last idle release) */
static bool ph_decay_released;

/* released pages were just handed out (s->zeroed): how much was resident then */
static inline void note_refault(void) {
    uint64_t r = ph_stats.inuse_bytes + free_resident();
    if (r > ph_res_peak.cur) ph_res_peak.cur = r;
    /* the first since a release: the heap needed what went back; hold longer */
    if (ph_decay_released && !ph_refault_seen) {
        ph_refault_seen = true;
        if (ph_res_window < PH_RES_SLOTS) ph_res_window *= 2;
    }
}

static ta_span_t *ph_head(int kind, uintptr_t i) {
    ta_span_t *h = &ph_list[kind][i];
    if (TA_UNLIKELY(!h->next)) ta_spanlist_init(h);
    return h;
}
/* a list never made holds nothing */
static inline bool ph_made(const ta_span_t *h) { return h->next != NULL; }

static ta_span_t *free_list_for(const ta_span_t *s) {
    int kind = s->state == TA_SPAN_RELEASED;
    return ph_head(kind, s->npages <= PH_EXACT ? s->npages : 0);
}

void ta_pageheap_init(void) { /* once, from ta_init_slow */
    /* the lists of large spans, which the first growth uses in every process:
     * made here, written before anything reads them, their pages fault once
     * (a first read maps the zero page, and the first write then copies it) */
    ta_spanlist_init(&ph_list[0][0]);
    ta_spanlist_init(&ph_list[1][0]);
    ph_last_decay_ms = ta_os_now_ms();
    ph_peak_epoch = ph_last_decay_ms / (ta_cfg.decay_ms ? ta_cfg.decay_ms : 1);
    ph_idle_since_ms = ph_last_decay_ms;
    ph_pid = (int)ta_sys0(SYS_getpid);
}

/* first and last page → s, both with info 0 (free spans and large blocks) */
static void register_ends(ta_span_t *s) {
    ta_pagemap_set(s->page, s, 0);
    if (s->npages > 1) ta_pagemap_set(s->page + s->npages - 1, s, 0);
}

static void account_free(const ta_span_t *s, int sign) {
    uint64_t b = ta_span_bytes(s);
    if (s->state == TA_SPAN_RELEASED)
        ph_stats.released_bytes += sign * b;
    else
        ph_stat_add(&ph_stats.free_bytes, sign * b);
}

static void free_remove(ta_span_t *s) {
    TA_ASSERT(s->state != TA_SPAN_INUSE && s->next && s->prev);
    ta_spanlist_remove(s);
    if (s->npages <= PH_EXACT) {
        int kind = s->state == TA_SPAN_RELEASED;
        if (ta_spanlist_empty(&ph_list[kind][s->npages]))
            ph_nonempty[kind][s->npages >> 6] &= ~((uint64_t)1 << (s->npages & 63));
    }
    account_free(s, -1);
}

/* ---- span records ----------------------------------------------------------
 * An operation that splits spans takes the records it may need before it
 * changes anything, so that running out of metadata fails it cleanly, with
 * the heap as it was.  Unused records stay here for the next operation. */
#define PH_SPARE 4
static ta_span_t *ph_spare[PH_SPARE];
static int ph_nspare;

static size_t give_back_locked(void);

static bool spare_fill(int need) {
    while (ph_nspare < need) {
        ta_span_t *s = ta_span_new();
        /* address space the heap does not use may be what the records need */
        if (!s && give_back_locked()) s = ta_span_new();
        if (!s) return false;
        ph_spare[ph_nspare++] = s;
    }
    return true;
}

/* A record no span uses any more (merged away): kept as a spare when there
 * is room, so that the next split takes it without the metadata lock.  Like
 * ta_span_delete, it no longer matches any page (npages 0). */
static void span_retire(ta_span_t *s) {
    if (ph_nspare == PH_SPARE) {
        ta_span_delete(s);
        return;
    }
    s->state = TA_SPAN_FREE;
    s->npages = 0;
    ph_spare[ph_nspare++] = s;
}

static ta_span_t *spare_take(void) {
    TA_ASSERT(ph_nspare > 0);
    ta_span_t *s = ph_spare[--ph_nspare];
    ph_spare[ph_nspare] = NULL;
    return s;
}

static void free_insert(ta_span_t *s);
static void put_back(ta_span_t *s);
static void tick_at(uint64_t now);

/* Can free span s merge with n, its free neighbour of the same kind?  Always:
 * nothing is released on the paths that free (the decay pass does that, in
 * batches, off the allocation path).  The merged span keeps the older age, so
 * pages next to a block freed over and over still decay. */
static bool merge_ok(ta_span_t *n, const ta_span_t *s) {
    (void)n, (void)s;
    return true;
}

/* Put a free span on its list, merging it first with neighbours of its kind.
 * A merged span keeps the older age: every page in it decays no later than
 * decay_ms after it was freed (a freshly freed part may go back earlier). */
static void free_insert(ta_span_t *s) {
    ta_span_t *prev = s->page ? ta_pagemap_span(s->page - 1) : NULL;
    if (prev && prev->state == s->state && prev->npages && prev->page + prev->npages == s->page &&
        merge_ok(prev, s)) {
        free_remove(prev);
        ta_pagemap_set(s->page, s, 0); /* the old block start now points at the merged span */
        s->page = prev->page;
        s->npages += prev->npages;
        if (prev->free_since_ms < s->free_since_ms) s->free_since_ms = prev->free_since_ms;
        span_retire(prev);
        ph_stats.n_coalesce++;
    }
    ta_span_t *next = ta_pagemap_span(s->page + s->npages);
    if (next && next->state == s->state && next->npages && next->page == s->page + s->npages &&
        merge_ok(next, s)) {
        free_remove(next);
        ta_pagemap_set(next->page, s, 0);
        s->npages += next->npages;
        if (next->free_since_ms < s->free_since_ms) s->free_since_ms = next->free_since_ms;
        span_retire(next);
        ph_stats.n_coalesce++;
    }
    put_back(s);
}

/* Smallest span of `kind` with at least n pages (lowest address among the
 * large ones of equal size, to keep the heap compact). */
static ta_span_t *find_fit(int kind, uintptr_t n) {
    for (uintptr_t w = n >> 6; n <= PH_EXACT && w < PH_WORDS; w++) {
        uint64_t m = ph_nonempty[kind][w];
        if (w == n >> 6) m &= ~(uint64_t)0 << (n & 63);
        if (m) return ph_list[kind][w * 64 + (uintptr_t)__builtin_ctzll(m)].next;
    }
    ta_span_t *best = NULL, *h = ph_head(kind, 0);
    for (ta_span_t *s = h->next; s != h; s = s->next)
        if (s->npages >= n && (!best || s->npages < best->npages ||
                               (s->npages == best->npages && s->page < best->page)))
            best = s;
    return best;
}

/* A new mapping of `pages` pages, placed just below the previous one when
 * that address is free (the kernel maps top-down): the heap's address space
 * stays contiguous and its free spans merge across mappings. */
static char *ph_last_map; /* start of the newest mapping: the next one goes just below it */
static void *map_pages(uintptr_t pages) {
    size_t bytes = pages << TA_PAGE_SHIFT;
    char *hint = (uintptr_t)ph_last_map > bytes ? ph_last_map - bytes : NULL;
    char *p = ta_os_map_near(hint, bytes, TA_PAGE_SIZE);
    if (p) ph_last_map = p;
    return p;
}

/* At least n pages of new mapping (PH_GROW_PAGES when the OS allows). */
static void *map_at_least(uintptr_t n, uintptr_t *pages) {
    *pages = n < PH_GROW_PAGES ? PH_GROW_PAGES : n;
    void *p = map_pages(*pages);
    if (!p && *pages != n) p = map_pages(*pages = n); /* just what is needed */
    return p;
}

/* Map more memory; it enters the heap as a RELEASED span (zero, not resident).
 * Needs one spare record.  When the OS refuses and this is the last try
 * (last), all the heap's free address space goes back to it and the mapping
 * is tried once more; a failure leaves nothing mapped. */
static bool grow(uintptr_t n, bool last) {
    uintptr_t pages;
    void *p = map_at_least(n, &pages);
    if (!p && last && give_back_locked()) p = map_at_least(n, &pages);
    if (!p) return false;
    uintptr_t page = (uintptr_t)p >> TA_PAGE_SHIFT;
    if (!ta_pagemap_ensure(page, pages) && !(last && give_back_locked() && ta_pagemap_ensure(page, pages))) {
        ta_os_unmap(p, pages << TA_PAGE_SHIFT);
        return false;
    }
    ta_span_t *s = spare_take();
    s->page = page;
    s->npages = pages;
    s->state = TA_SPAN_RELEASED;
    s->free_since_ms = 0;
    ph_stats.n_grow_os++;
    /* its end cells written before free_insert reads their neighbours' (which
     * share their pagemap page: one fault, not a read's and then a write's) */
    register_ends(s);
    free_insert(s);
    return true;
}

/* Cut free span s (off its list) at page n: s keeps the first n pages, a new
 * record (returned, off the lists) the rest; both keep s's kind and age. */
static ta_span_t *split(ta_span_t *s, uintptr_t n) {
    ta_span_t *t = spare_take(); /* the caller filled the spares */
    t->page = s->page + n;
    t->npages = s->npages - n;
    t->state = s->state;
    t->free_since_ms = s->free_since_ms;
    s->npages = n;
    return t;
}

/* A free piece goes back on its list (no merging: its neighbours were merged already). */
static void put_back(ta_span_t *s) {
    register_ends(s);
    ta_spanlist_push(free_list_for(s), s);
    if (s->npages <= PH_EXACT)
        ph_nonempty[s->state == TA_SPAN_RELEASED][s->npages >> 6] |= (uint64_t)1 << (s->npages & 63);
    account_free(s, +1);
    /* a free span is whole and registered at both ends; its neighbours of its
     * own kind were merged */
    TA_ASSERT(s->npages && (s->state == TA_SPAN_FREE || s->state == TA_SPAN_RELEASED));
    TA_ASSERT(ta_pagemap_span(s->page) == s && ta_pagemap_span(s->page + s->npages - 1) == s);
    TA_ASSERT(ta_pagemap_info(s->page) == 0);
}

/* Keep the first n pages of s; the rest goes back to the heap. */
static void split_tail(ta_span_t *s, uintptr_t n) {
    if (s->npages != n) put_back(split(s, n));
}

/* Give the first `lead` pages of s back to the heap; returns the rest. */
static ta_span_t *split_head(ta_span_t *s, uintptr_t lead) {
    ta_span_t *t = split(s, lead);
    put_back(s);
    return t;
}


/* The longest span of `kind` (lowest address among equals). */
static ta_span_t *find_largest(int kind) {
    ta_span_t *best = NULL, *h = ph_head(kind, 0);
    for (ta_span_t *s = h->next; s != h; s = s->next)
        if (!best || s->npages > best->npages || (s->npages == best->npages && s->page < best->page))
            best = s;
    for (int w = PH_WORDS - 1; !best && w >= 0; w--)
        if (ph_nonempty[kind][w]) best = ph_list[kind][w * 64 + 63 - __builtin_clzll(ph_nonempty[kind][w])].next;
    return best;
}

static ta_span_t *alloc_span(uintptr_t npages, uintptr_t align_pages, uint32_t cls, uint32_t shard, bool growable,
                             bool consolidate);

/* ---- guard pages (hardened build) ---------------------------------------------
 * Every span in use ends with a guard page: its last page, PROT_NONE, so a
 * linear overflow off the end of a large block or of a small span's last
 * object faults before it reaches the next span.  The page is in the span
 * (it moves with the span when realloc grows or shrinks it in place) but
 * holds no block; it is madvised away before it is protected (never resident)
 * and made accessible again when the span is freed, so free spans, coalescing,
 * decay, trim and unmapping never see a protected page.  Counted in
 * ph_stats.guard_bytes.  A guard that the kernel refuses (vm.max_map_count:
 * each one splits a mapping) fails the allocation. */
#if TA_GUARD_PAGES
TA_COLD static void guard_failed(uintptr_t page) {
    ta_fatal("mprotect failed for the guard page at %p", (void *)(page << TA_PAGE_SHIFT));
}

/* page becomes a guard; resident: it may hold memory (it is dropped first) */
static bool guard_on(uintptr_t page, bool resident) {
    void *a = (void *)(page << TA_PAGE_SHIFT);
    if (resident) ta_os_release(a, TA_PAGE_SIZE);
    return ta_os_protect(a, TA_PAGE_SIZE, false);
}

/* page, a guard, becomes an ordinary page (zero, not resident) */
static void guard_off(uintptr_t page) {
    /* merging the page back into its neighbours' mapping cannot need a new one */
    if (!ta_os_protect((void *)(page << TA_PAGE_SHIFT), TA_PAGE_SIZE, true)) guard_failed(page);
}

/* s grew or shrank in place: old_last stops being its guard, its last page becomes it */
static void guard_move(ta_span_t *s, uintptr_t old_last) {
    guard_off(old_last); /* first: the kernel merges the mapping back, so the next one cannot run out */
    if (!guard_on(s->page + s->npages - 1, true)) guard_failed(s->page + s->npages - 1);
}
#endif

ta_span_t *ta_pageheap_alloc(uintptr_t npages, uintptr_t align_pages, uint32_t cls) {
    return alloc_span(npages, align_pages, cls, 0, false, false);
}

ta_span_t *ta_pageheap_alloc_small(uint32_t cls, uint32_t shard) {
    return alloc_span(ta_class[cls].pages, 1, cls, shard, false, false);
}

/* A large block (class 0, page aligned): a recent block of npages ..
 * npages + npages/8 pages when there is one (the newest), with no more work
 * than its counters; else the head of the shortest longer one (its pages were
 * used last: resident), the rest staying a recent block that the head joins
 * again when it is freed; else the recent
 * blocks go to the free lists, where they merge, and the general path serves
 * (so that pages freed just now are reused before untouched ones). */
/* recent block s (INUSE, registered) is handed out as a large block: the
 * counters of an allocation */
TA_ALWAYS_INLINE void large_out(ta_span_t *s) {
    uint64_t b = ta_span_bytes(s);
    s->zeroed = 0; /* (rest_follows stays: the hint of a head and its rest) */
    s->sample = NULL;
    ph_stats.large_bytes += b;
    ph_stats.large_count++;
    ph_stat_add(&ph_stats.inuse_bytes, b);
    note_inuse();
    ph_stats.n_alloc++;
}

/* recent entry i fits the request: handed out whole, ph_lock let go */
TA_ALWAYS_INLINE ta_span_t *recent_out(int i, int how) {
    ta_span_t *s = recent_drop(i);
    account_free_recent(s, -1);
    s->state = TA_SPAN_INUSE; /* registered, cls 0, no free list, not zero: as it was freed */
    large_out(s);
    ta_unlock_how(&ph_lock, how);
    return s;
}

/* Recent entry i is a head cut from a recent block (rest_follows) and its
 * rest, just after it, is recent too: the request takes the head, the
 * boundary between the two moved to fit it (the whole of both when the rest
 * would be under an eighth of the request); NULL if they are not such a
 * pair or too short together.  A program that frees each block before it
 * asks for the next, of whatever size, moves one boundary in one block, as
 * glibc does with its top chunk: one pagemap entry written (the rest's new
 * first page), no record made or retired, nothing joined at free. */
static ta_span_t *boundary_move(int i, uintptr_t npages, int how) {
    /* its rest: the recent entry that starts where it ends (the entries
     * only, read just now: no pagemap lookup) */
    uintptr_t end = ph_recent[i].page + ph_recent[i].npages;
    int j = ph_nrecent - 1;
    while (j >= 0 && ph_recent[j].page != end) j--;
    if (j < 0 || ph_recent[i].npages + ph_recent[j].npages < npages) return NULL;
    ta_span_t *s = ph_recent[i].s, *n = ph_recent[j].s;
    uintptr_t total = s->npages + n->npages;
    if (total - npages <= npages / 8) { /* the two are one block again, handed out whole */
        recent_drop(i > j ? i : j); /* (the later entry first: the other stays where it is) */
        recent_drop(i > j ? j : i);
        account_free_recent(n, -1);
        account_free_recent(s, -1);
        ta_pagemap_set(n->page, s, 0); /* (its old start points at the joined block) */
        s->npages = total;
        span_retire(n); /* (its last page names s still, or nothing does: see the cut) */
        s->rest_follows = 0;
        ph_stats.n_coalesce++;
    } else {
        struct ph_recent *r = &ph_recent[j];
        ph_stat_add(&ph_recent_bytes, -((uint64_t)npages << TA_PAGE_SHIFT)); /* (what s takes of the two) */
        s->npages = npages;
        n->page = r->page = s->page + npages;
        n->npages = r->npages = total - npages;
        ta_pagemap_set(n->page, n, 0); /* (only its first page: see the cut) */
        recent_drop(i); /* (after r's update: the drop moves the later entries) */
    }
    s->state = TA_SPAN_INUSE;
    large_out(s);
    ta_unlock_how(&ph_lock, how);
    return s;
}

/* ta_pageheap_alloc_large when the newest recent block does not fit (ph_lock
 * held, taken as `how` says): out of line, so that the common case saves
 * few registers */
TA_NOINLINE static ta_span_t *alloc_large_search(uintptr_t npages, int how) {
    int longer = -1, head = -1;
    for (int i = ph_nrecent - 1; i >= 0; i--) {
        if (ph_recent[i].npages - npages > npages / 8) { /* (unsigned: shorter ones too) */
            if (ph_recent[i].npages > npages && (longer < 0 || ph_recent[i].npages < ph_recent[longer].npages))
                longer = i;
            if (head < 0 && ph_recent[i].s->rest_follows) head = i; /* (the newest such) */
            continue;
        }
        return recent_out(i, how);
    }
    ta_span_t *s;
    if (head >= 0 && (s = boundary_move(head, npages, how))) return s;
    if (longer >= 0 && spare_fill(1)) {
        /* the head of the longer block; the rest stays a recent block, and
         * the two go on serving requests of other sizes by moving the
         * boundary between them (boundary_move) */
        s = recent_drop(longer);
        account_free_recent(s, -1);
        ta_span_t *t = split(s, npages);
        s->state = TA_SPAN_INUSE;
        /* only the rest's first page: boundary_move finds it there.  Its
         * last page (the block's) keeps naming s, and s's new last page is
         * not registered: nothing looks a page up there while the two are in
         * use or recent (free spans merge only with free neighbours, which
         * are registered at both ends, and a recent block is registered at
         * both ends when it goes to the free lists); each pagemap entry
         * written is two cache lines. */
        ta_pagemap_set(t->page, t, 0);
        t->next = t->prev = NULL;
        recent_append_locked(t); /* (in the entry s left) */
        large_out(s);
        s->rest_follows = 1;
        ta_unlock_how(&ph_lock, how);
        return s;
    }
    recent_flush_locked();
    ta_unlock_how(&ph_lock, how);
    return alloc_span(npages, 1, 0, 0, false, true);
}

ta_span_t *ta_pageheap_alloc_large(uintptr_t npages) {
    int how = ta_lock_how(&ph_lock);
    int i = ph_nrecent - 1;
    /* the newest recent block fits (a program that frees a block and asks
     * for one of its size again): its counters only */
    if (TA_LIKELY(i >= 0) && TA_LIKELY(ph_recent[i].npages - npages <= npages / 8)) return recent_out(i, how);
    return alloc_large_search(npages, how);
}

ta_span_t *ta_pageheap_alloc_growable(uintptr_t npages) {
    return alloc_span(npages, 1, 0, 0, true, false);
}

/* A large request that no resident free span fits, while the heap holds
 * that much free and resident: the free pages lie in pieces, cut apart by
 * spans that objects in caches keep in use.  Once in a while (an eighth of a
 * decay period), the caches go back to their spans first (api.c), so that
 * their spans come back, merge and serve the request, as glibc consolidates
 * its fast bins before a large request.
 * The same for a request of a MiB or more that does fit (fits) while most of
 * the heap is free and in pieces (a program that has freed its small blocks):
 * blocks placed in the holes between cached spans before those come back cut
 * the merged free pages apart again, and a larger request later finds none
 * that fits.  A program that frees its small blocks and goes on with large
 * ones (1-3 000 B blocks, 300 MB, then blocks of 1-20 MiB, one thread; see
 * pageheap::a_large_request_reuses_pages_small_blocks_freed) peaked at
 * 341-361 MB RSS with no consolidation, and with one at the first request
 * that did not fit (a 14 MiB block) still at 341-342 in 9 runs of 10 (a 20
 * MiB block mapped anew with 126 MiB free in pieces); with this, 321 (glibc
 * 291, jemalloc 323).  Under ph_lock; for malloc's large blocks only
 * (ta_pageheap_alloc_large), whose caller holds no other lock. */
#define CONSOLIDATE_EARLY_BYTES (1u << 20)
static bool consolidate_due(uintptr_t want, bool fits) {
    static uint64_t last_ms;
    uint64_t bytes = (uint64_t)want << TA_PAGE_SHIFT;
    /* (not in the hardened build: each freed span's guard page comes back
     * released and keeps the resident free pages apart whatever the caches
     * do; see pageheap::a_large_request_reuses_pages_small_blocks_freed) */
    if (TA_GUARD_PAGES || ph_stats.free_bytes < bytes) return false;
    if (fits && (bytes < CONSOLIDATE_EARLY_BYTES || ph_stats.free_bytes < 4 * bytes ||
                 ph_stats.free_bytes < ph_stats.inuse_bytes))
        return false;
    uint64_t now = ta_os_now_ms(), period = ta_cfg.decay_ms / 8;
    if (last_ms && now - last_ms < period) return false;
    if (fits) { /* in pieces: no resident free span holds half of it (looked at as seldom) */
        static uint64_t looked_ms;
        if (looked_ms && now - looked_ms < period) return false;
        looked_ms = now;
        ta_span_t *l = find_largest(0);
        if (l && ((uint64_t)l->npages << TA_PAGE_SHIFT) >= ph_stats.free_bytes / 2) return false;
    }
    last_ms = now;
    return true;
}

/* consolidate: a malloc's large block (no lock held): the caches may be asked
 * to go back to their spans first (consolidate_due) */
static ta_span_t *alloc_span(uintptr_t npages, uintptr_t align_pages, uint32_t cls, uint32_t shard, bool growable,
                             bool consolidate) {
    if (align_pages < 1) align_pages = 1;
    uintptr_t want = npages + align_pages - 1;
    if (npages == 0 || want < npages || want > (TA_MAX_REQUEST >> TA_PAGE_SHIFT)) return NULL;
    npages += TA_GUARD_PAGES;
    want += TA_GUARD_PAGES;
    ta_lock(&ph_lock);
    ta_span_t *s;
    uint8_t *states = NULL;
    bool recent = !cls && !growable && ph_nrecent &&
                  (s = recent_take_locked(npages, npages + npages / 8, align_pages));
    if (recent) goto found;
    /* records for a new mapping, a head and a tail */
    if (!spare_fill(3)) {
        ta_unlock(&ph_lock);
        return NULL;
    }
    if (growable && ph_nrecent && (s = recent_take_locked(npages, UINTPTR_MAX, 1))) {
        /* A buffer that grows by realloc, in the pages of one freed just now
         * (likely the last one this program grew): resident, and with room
         * to grow in place, up to PH_GROW_SLACK pages of it; the rest goes
         * back as free pages (right behind it: the next growth may take them). */
        if (s->npages > npages + PH_GROW_SLACK) {
            ta_span_t *t = split(s, npages + PH_GROW_SLACK);
            t->state = TA_SPAN_FREE;
            t->free_since_ms = ph_last_decay_ms;
            free_insert(t); /* (s is still RECENT: t does not merge with it) */
        }
        goto found;
    }
    if (growable) {
        /* a block that is being grown goes at the start of the longest free
         * span, resident first: its next growth then happens in place (the
         * recent blocks first merge with their neighbours: the buffer grown
         * last time may be one of them) */
        recent_flush_locked();
        s = find_largest(0);
        if (!s || s->npages < want) s = find_largest(1);
        if (s && s->npages < want) s = NULL;
    } else {
        /* Resident free pages are reused first (no page faults): the decay
         * keeps about as many resident as the recent peak of demand needs,
         * and released pages serve only what they cannot. */
        s = find_fit(0, want);
        if (consolidate && consolidate_due(want, s != NULL)) {
            ta_unlock(&ph_lock);
            ta_consolidate_caches(); /* (frees spans into the heap: takes ph_lock) */
            ta_lock(&ph_lock);
            if (!spare_fill(3)) { /* (others may have taken the spares meanwhile) */
                ta_unlock(&ph_lock);
                return NULL;
            }
            s = find_fit(0, want);
        }
        if (!s) s = find_fit(1, want);
    }
    if (!s) {
        /* a growing block gets as much address space again behind it (not
         * memory: new mappings are not resident until touched) */
        uintptr_t room = growable && want <= (TA_MAX_REQUEST >> TA_PAGE_SHIFT) / 2 ? want : 0;
        if (!grow(want + room, !room) && (!room || !grow(want, true))) {
            ta_unlock(&ph_lock);
            return NULL;
        }
        s = find_fit(1, want);
        if (!s) s = find_fit(0, want);
    }
    TA_ASSERT(s && s->npages >= want);
    free_remove(s);
    uintptr_t lead = ((s->page + align_pages - 1) & ~(align_pages - 1)) - s->page;
    if (lead) s = split_head(s, lead);
    split_tail(s, npages);
    if (cls && cls < TA_MAX_CLASSES && !(states = ta_meta_states_new(ta_class[cls].objects, shard))) {
        free_insert(s); /* no metadata for it: the request fails, the heap stays whole */
        ta_unlock(&ph_lock);
        return NULL;
    }
#if TA_GUARD_PAGES
    if (!guard_on(s->page + s->npages - 1, s->state != TA_SPAN_RELEASED)) {
        if (states) ta_meta_states_delete(states, ta_class[cls].objects);
        free_insert(s);
        ta_unlock(&ph_lock);
        return NULL;
    }
    ph_stats.guard_bytes += (uint64_t)TA_GUARD_PAGES << TA_PAGE_SHIFT;
#endif
found: /* (the hardened build keeps no recent blocks: a guard is on from here) */
    s->zeroed = s->state == TA_SPAN_RELEASED;
    s->rest_follows = 0;
    s->state = TA_SPAN_INUSE;
    s->freelist = NULL; /* clears the union: no free list, no sample record */
    s->carve = NULL;
    s->allocated = 0;
    s->cls = (uint8_t)cls;
    s->next = s->prev = NULL;
    if (cls) {
        for (uintptr_t i = 0; i < npages - TA_GUARD_PAGES; i++)
            ta_pagemap_set(s->page + i, s, TA_INFO(cls, i) | TA_INFO_STATES_MAKE(states));
        if (TA_GUARD_PAGES) ta_pagemap_set(s->page + npages - 1, s, 0); /* the guard: no objects */
        if (cls < TA_MAX_CLASSES) ph_class_spans[cls]++;
    } else {
        if (!recent) register_ends(s); /* (a recent block is registered as it was) */
        ph_stats.large_bytes += ta_span_usable(s);
        ph_stats.large_count++;
    }
    ph_stat_add(&ph_stats.inuse_bytes, ta_span_bytes(s));
    note_inuse();
    if (s->zeroed) note_refault();
    ph_stats.n_alloc++;
    ta_unlock(&ph_lock);
    return s;
}

static void free_locked(ta_span_t *s, uint64_t now) {
    TA_ASSERT(s->state == TA_SPAN_INUSE && s->npages && !s->next);
    TA_ASSERT(!s->cls || s->allocated == 0); /* a small span comes back with no object handed out */
    ph_stat_add(&ph_stats.inuse_bytes, -(ta_span_bytes(s)));
#if TA_GUARD_PAGES
    guard_off(s->page + s->npages - 1);
    ph_stats.guard_bytes -= (uint64_t)TA_GUARD_PAGES << TA_PAGE_SHIFT;
#endif
    if (s->cls) {
        /* info 0 on every page: a later free() of one of its objects takes the
         * slow path and is seen as a double free */
        uint8_t *states = ta_info_states(ta_pagemap_info(s->page));
        for (uintptr_t i = 0; i < s->npages; i++) ta_pagemap_set(s->page + i, s, 0);
        if (states && s->cls < TA_MAX_CLASSES) ta_meta_states_delete(states, ta_class[s->cls].objects);
        if (s->cls < TA_MAX_CLASSES) ph_class_spans[s->cls]--;
    } else {
        ph_stats.large_bytes -= ta_span_usable(s);
        ph_stats.large_count--;
    }
    s->state = TA_SPAN_FREE;
    s->cls = 0;
    s->carve = NULL;
    s->allocated = 0;
    s->free_since_ms = now; /* (the union: freelist and sample record are gone) */
    ph_stats.n_free++;
    free_insert(s);
}

void ta_pageheap_free(ta_span_t *s) {
    uint64_t now = ta_os_now_ms();
    ta_lock(&ph_lock);
    free_locked(s, now);
    ta_unlock(&ph_lock);
    tick_at(now);
}

/* Large frees between two looks at the clock (the decay's tick): a block
 * goes to the recent cache without one. */
#define PH_TICK_FREES 32
/* ... unless the heap holds more free pages than this besides the recent
 * blocks: then every large free looks (pages worth giving back wait for it) */
#define PH_TICK_FREE_BYTES ((uint64_t)8 << 20)
static uint32_t ph_tick_left = PH_TICK_FREES;

/* free_locked's counters for large block s, which becomes a recent one, or
 * released pages after its move (neither in the hardened build) */
__attribute__((unused)) TA_ALWAYS_INLINE void large_in(ta_span_t *s) {
    uint64_t b = ta_span_bytes(s);
    ph_stat_add(&ph_stats.inuse_bytes, -(b));
    ph_stats.large_bytes -= b;
    ph_stats.large_count--;
    ph_stats.n_free++;
    s->free_since_ms = 0; /* (the union: the sample record is gone) */
}

/* a large block was freed: time for the decay's tick? */
TA_ALWAYS_INLINE bool large_free_ticks(void) {
    if (TA_UNLIKELY(--ph_tick_left == 0)) {
        ph_tick_left = PH_TICK_FREES;
        return true;
    }
    return ph_stats.free_bytes > PH_TICK_FREE_BYTES;
}

/* the decay's tick after a large free (ph_lock let go): NULL */
TA_NOINLINE static const char *large_free_tick(void) {
    tick_at(ta_os_now_ms());
    return NULL;
}

/* ta_pageheap_free_large, all cases (ph_lock held, taken as `how` says) */
TA_NOINLINE static const char *free_large_locked(ta_span_t *s, void *p, int how) {
    const char *err = NULL;
    if (s->state != TA_SPAN_INUSE)
        err = "double free of"; /* freed meanwhile */
    else if (s->cls || ta_span_addr(s) != p)
        err = "free of a pointer tieralloc never returned:";
#if TA_GUARD_PAGES
    /* hardened: no recent blocks (each freed block gives up its guard page) */
    if (!err) free_locked(s, ta_os_now_ms());
#else
    if (!err) {
        large_in(s);
        recent_put_locked(s); /* (a head stays apart from its rest: boundary_move) */
    }
#endif
    bool tick = !err && large_free_ticks();
    ta_unlock_how(&ph_lock, how);
    if (tick) large_free_tick();
    return err;
}

TA_ALWAYS_INLINE const char *free_large(ta_span_t *s, void *p) {
    int how = ta_lock_how(&ph_lock);
#if !TA_GUARD_PAGES
    /* the common case: a block as it was handed out and room among the
     * recent blocks (the rest: out of line) */
    if (TA_LIKELY(s->state == TA_SPAN_INUSE && !s->cls && ta_span_addr(s) == p && ph_nrecent < PH_RECENT)) {
        TA_ASSERT(!s->next && !s->prev);
        large_in(s);
        recent_append_locked(s);
        bool tick = large_free_ticks();
        ta_unlock_how(&ph_lock, how);
        return TA_UNLIKELY(tick) ? large_free_tick() : NULL;
    }
#endif
    return free_large_locked(s, p, how);
}

const char *ta_pageheap_free_large(ta_span_t *s, void *p) { return free_large(s, p); }

TA_COLD static void free_large_abort(const char *err, void *p) { ta_fatal("%s %p", err, p); }

void ta_pageheap_free_large_or_abort(ta_span_t *s, void *p) {
    const char *err = free_large(s, p);
    if (TA_UNLIKELY(err)) free_large_abort(err, p);
}

ta_span_t *ta_pageheap_alloc_arena(uintptr_t npages, uintptr_t align_pages) {
    ta_span_t *s = ta_pageheap_alloc(npages, align_pages, 0);
    if (!s) return NULL;
    /* every page → s with info 0: free() of any block in it reaches the slow
     * path, which finds the chunk from the page */
    s->cls = TA_SPAN_ARENA;
    for (uintptr_t i = 0; i < s->npages; i++) ta_pagemap_set(s->page + i, s, 0);
    return s;
}

void ta_pageheap_free_arena(ta_span_t *s) {
    s->cls = 0; /* a plain large span again, as the page heap counts it */
    ta_pageheap_free(s);
}

/* The free span starting exactly at page, of either kind or recent, or NULL. */
static ta_span_t *free_span_at(uintptr_t page) {
    ta_span_t *n = ta_pagemap_span(page);
    return n && n->npages &&
                   (n->state == TA_SPAN_FREE || n->state == TA_SPAN_RELEASED || n->state == TA_SPAN_RECENT) &&
                   n->page == page
               ? n
               : NULL;
}

bool ta_pageheap_grow(ta_span_t *s, uintptr_t npages) {
    npages += TA_GUARD_PAGES;
    if (npages <= s->npages) return true;
    ta_lock(&ph_lock);
    if (!spare_fill(1)) { /* the last free span taken may be cut */
        ta_unlock(&ph_lock);
        return false;
    }
    /* the free spans that follow s, resident and released alike, must cover
     * the extra pages together */
    uintptr_t end = s->page + s->npages, have = 0;
    for (ta_span_t *n; end + have < s->page + npages && (n = free_span_at(end + have));) have += n->npages;
    bool ok = end + have >= s->page + npages, refault = false;
    while (ok && s->page + s->npages < s->page + npages) {
        ta_span_t *n = free_span_at(s->page + s->npages);
        refault |= n->state == TA_SPAN_RELEASED;
        uintptr_t take = s->page + npages - n->page < n->npages ? s->page + npages - n->page : n->npages;
        if (n->state == TA_SPAN_RECENT) { /* a block freed just now: free pages like the others */
            recent_remove_locked(n);
            account_free_recent(n, -1);
            n->state = TA_SPAN_FREE;
            if (take < n->npages) { /* its rest: a free span that may have free neighbours */
                ta_span_t *t = split(n, take);
                n->state = TA_SPAN_INUSE; /* part of s: no merge with it */
                free_insert(t);
            }
        } else {
            free_remove(n);
            split_tail(n, take);
        }
        /* n now covers exactly the pages s takes from it */
        ph_stat_add(&ph_stats.inuse_bytes, ta_span_bytes(n));
        ph_stats.large_bytes += ta_span_bytes(n);
        ta_pagemap_set(n->page, s, 0);
        if (n->npages > 1) ta_pagemap_set(n->page + n->npages - 1, s, 0);
        s->npages += n->npages;
        span_retire(n);
    }
    if (ok) {
#if TA_GUARD_PAGES
        guard_move(s, end - 1);
#endif
        register_ends(s);
        note_inuse();
        if (refault) note_refault();
        ph_stats.n_alloc++; /* activity: the heap is not idle */
    }
    ta_unlock(&ph_lock);
    return ok;
}

/* A mapping of `pages` pages with no heap page right after it: one page
 * more is mapped and unmapped again, and the hole stays (no mapping of the
 * heap's fits in it).  For a block whose pages moved there: mremap moves the
 * pages of one kernel mapping only, and the moved ones never merge with
 * their neighbours (their page offsets are the old addresses').  A block
 * grown in place past its mapping's end would lie in two, and could not move
 * again; with the hole, growing past the end fails, and the block moves. */
#if !TA_GUARD_PAGES && !TA_TSAN
static void *map_apart(uintptr_t pages) {
    size_t bytes = pages << TA_PAGE_SHIFT;
    char *r = ta_os_map(bytes + TA_PAGE_SIZE, TA_PAGE_SIZE);
    if (r && !ta_os_unmap(r + bytes, TA_PAGE_SIZE)) {
        ta_os_unmap(r, bytes + TA_PAGE_SIZE);
        r = NULL;
    }
    return r;
}
#endif

/* A growing buffer that has run out of room moves without a copy: a copy
 * faults in every page of the new block and leaves the old one resident
 * until the decay (a buffer doubled from 4 KiB to 512 MiB, every page
 * written, peaked at 854 MiB RSS and took 662 ms; glibc, which moves its
 * mmapped chunks with mremap, 513 MiB and 343-451 ms; now 513 MiB and
 * 396-407 ms: alloc/README.md).  The new mapping comes first (with its pagemap
 * entries, and the records), so that nothing can fail once the pages have
 * moved; the moves run without the lock.  Not in the hardened build (its
 * guard page would move along or stay behind) nor under ThreadSanitizer
 * (which would not know the bytes moved). */
ta_span_t *ta_pageheap_move_large(ta_span_t *s, uintptr_t npages) {
#if TA_GUARD_PAGES || TA_TSAN
    (void)s, (void)npages;
    return NULL;
#else
    TA_ASSERT(s->state == TA_SPAN_INUSE && !s->cls && !s->sample);
    if (npages <= s->npages || npages > (TA_MAX_REQUEST >> TA_PAGE_SHIFT) || !ta_os_can_move()) return NULL;
    uintptr_t pages = npages <= (TA_MAX_REQUEST >> TA_PAGE_SHIFT) / 2 ? 2 * npages : npages;
    ta_span_t *t = ta_span_new(), *rest = ta_span_new();
    void *r = NULL;
    if (t && rest) {
        ta_lock(&ph_lock);
        r = map_apart(pages);
        if (!r && pages > npages) r = map_apart(pages = npages);
        if (r && !ta_pagemap_ensure((uintptr_t)r >> TA_PAGE_SHIFT, pages)) {
            ta_os_unmap(r, pages << TA_PAGE_SHIFT);
            r = NULL;
        }
        ta_unlock(&ph_lock);
    }
    if (!r || !ta_os_move(ta_span_addr(s), ta_span_bytes(s), r, pages << TA_PAGE_SHIFT)) {
        if (t) ta_span_delete(t);
        if (rest) ta_span_delete(rest);
        return NULL;
    }
    uint64_t now = ta_os_now_ms();
    ta_lock(&ph_lock);
    ph_stats.n_grow_os++;
    *t = (ta_span_t){.page = (uintptr_t)r >> TA_PAGE_SHIFT, .npages = npages, .state = TA_SPAN_INUSE};
    register_ends(t);
    large_out(t); /* (no guard page here: a span's bytes are its usable bytes) */
    if (pages > npages) { /* the room: released pages right behind the block */
        *rest = (ta_span_t){.page = t->page + npages, .npages = pages - npages, .state = TA_SPAN_RELEASED,
                            .free_since_ms = now};
        register_ends(rest);
        free_insert(rest);
    } else {
        ta_span_delete(rest);
    }
    /* the old block: mapped still, zero and not resident */
    large_in(s);
    s->state = TA_SPAN_RELEASED;
    s->rest_follows = 0;
    s->free_since_ms = now;
    free_insert(s);
    ta_unlock(&ph_lock);
    return t;
#endif
}

bool ta_pageheap_shrink(ta_span_t *s, uintptr_t npages, bool untouched) {
    npages += TA_GUARD_PAGES;
    if (npages >= s->npages) return true;
    uint64_t now = ta_os_now_ms();
    ta_lock(&ph_lock);
    if (!spare_fill(1)) { /* no record for the tail: s stays as it is */
        ta_unlock(&ph_lock);
        return false;
    }
    ta_span_t *t = spare_take();
    t->page = s->page + npages;
    t->npages = s->npages - npages;
    /* pages nobody wrote since they came from released memory are still zero
     * and not resident */
    t->state = untouched && s->zeroed ? TA_SPAN_RELEASED : TA_SPAN_FREE;
    t->free_since_ms = now;
    s->npages = npages;
#if TA_GUARD_PAGES
    guard_move(s, t->page + t->npages - 1);
#endif
    register_ends(s);
    ph_stat_add(&ph_stats.inuse_bytes, -(ta_span_bytes(t)));
    ph_stats.large_bytes -= ta_span_bytes(t);
    free_insert(t);
    ta_unlock(&ph_lock);
    return true;
}

/* Release FREE spans idle for decay_ms (all of them when all is set). */
static size_t release_locked(bool all, uint64_t now) {
    size_t released = 0;
    recent_flush_locked();
    for (int i = 0; i <= PH_EXACT; i++) {
        ta_span_t *h = &ph_list[0][i];
        if (!ph_made(h)) continue;
        for (ta_span_t *s = h->next, *nx; s != h; s = nx) {
            nx = s->next;
            if (!all && now - s->free_since_ms < ta_cfg.decay_ms) continue;
            free_remove(s);
            ta_os_release(ta_span_addr(s), ta_span_bytes(s));
            released += ta_span_bytes(s);
            s->state = TA_SPAN_RELEASED;
            free_insert(s); /* merges only with RELEASED spans: nx stays valid */
        }
    }
    return released;
}

/* Give released spans of at least min_pages back to the OS: unmapped, their
 * pagemap entries cleared and their records recycled, so that the address
 * space can be mapped again at any size.  Returns the bytes unmapped. */
static size_t unmap_released_locked(uintptr_t min_pages) {
    size_t done = 0;
    for (uintptr_t i = 0; i <= PH_EXACT; i++) {
        if (i && i < min_pages) continue;
        ta_span_t *h = &ph_list[1][i];
        if (!ph_made(h)) continue;
        for (ta_span_t *s = h->next, *nx; s != h; s = nx) {
            nx = s->next;
            if (s->npages < min_pages) continue;
            free_remove(s);
            if (!ta_os_unmap(ta_span_addr(s), ta_span_bytes(s))) {
                put_back(s); /* at its list's head: not seen again in this walk */
                continue;
            }
            ta_pagemap_clear(s->page, s->npages);
            done += ta_span_bytes(s);
            ph_stats.unmapped_bytes += ta_span_bytes(s);
            ph_stats.n_unmap_os++;
            ta_span_delete(s);
        }
    }
    return done;
}

/* The OS refused memory: every free page is released and every released
 * span unmapped, whatever its size.  Returns the bytes unmapped. */
static size_t give_back_locked(void) {
    release_locked(true, ta_os_now_ms());
    return unmap_released_locked(1);
}

size_t ta_pageheap_release(bool all) {
    uint64_t now = ta_os_now_ms();
    ta_lock(&ph_lock);
    size_t n = release_locked(all, now);
    /* trim: released stretches of at least a growth step are unmapped
     * (smaller holes would only split the kernel's mappings) */
    if (all) n += unmap_released_locked(PH_GROW_PAGES);
    __atomic_store_n(&ph_last_decay_ms, now, __ATOMIC_RELAXED); /* (read unlocked by tick_at) */
    ta_unlock(&ph_lock);
    return n;
}

/* ---- decay ------------------------------------------------------------------
 * A pass (every decay_ms / 4, from the background thread, or from slow paths
 * when there is none) releases free pages that stayed unused:
 *  - the resident free bytes kept are those the recent peak of demand may need
 *    again (peak in use over the last PH_PEAK_SLOTS periods minus in use now);
 *    only what lies beyond goes, and only spans free for decay_ms;
 *  - a heap with no page-heap activity for decay_ms is idle: every free page
 *    free for decay_ms goes back (an idle process returns its memory);
 *  - the spans are taken off their lists under the lock, sorted by address
 *    and released in one madvise per contiguous range with the lock let go;
 *    then they go back on the lists as RELEASED (and merge).  While they are
 *    out they count as released and are RELEASING (nobody merges with or
 *    takes them); a fork meanwhile gives the child's copy back as FREE. */
#define PH_BATCH 64
static ta_span_t *ph_flight[PH_BATCH];
static int ph_nflight;
static bool ph_decaying; /* a pass has spans out (one pass at a time) */

static void ring_rotate(ph_ring_t *r, int nslots, uint64_t epoch, uint64_t now_value) {
    /* the period that ended keeps its peak; the ones skipped had none */
    r->slot[ph_peak_epoch % (uint64_t)nslots] = r->cur;
    for (uint64_t i = 1; i <= epoch - ph_peak_epoch && i <= (uint64_t)nslots; i++)
        r->slot[(ph_peak_epoch + i) % (uint64_t)nslots] = 0;
    r->cur = now_value;
}

/* the peak of the current period and the `last` ones before it */
static uint64_t ring_max(const ph_ring_t *r, int nslots, int last) {
    uint64_t m = r->cur;
    for (int i = 1; i <= last; i++) {
        uint64_t v = r->slot[(ph_peak_epoch - (uint64_t)i) % (uint64_t)nslots];
        if (v > m) m = v;
    }
    return m;
}

static void peak_rotate(uint64_t now) {
    uint64_t period = ta_cfg.decay_ms ? ta_cfg.decay_ms : 1;
    uint64_t epoch = now / period;
    if (epoch == ph_peak_epoch) return;
    ring_rotate(&ph_inuse_peak, PH_PEAK_SLOTS, epoch, ph_stats.inuse_bytes);
    ring_rotate(&ph_res_peak, PH_RES_SLOTS, epoch, 0);
    ph_peak_epoch = epoch;
}

/* Take up to PH_BATCH FREE spans free for decay_ms, largest first, totalling
 * at least `want` bytes if there are enough; under ph_lock. */
static size_t flight_collect(uint64_t want, uint64_t now) {
    size_t got = 0;
    for (int i = 0; i <= PH_EXACT && got < want && ph_nflight < PH_BATCH; i++) {
        ta_span_t *h = &ph_list[0][i ? PH_EXACT + 1 - i : 0];
        if (!ph_made(h)) continue;
        for (ta_span_t *s = h->next, *nx; s != h && got < want && ph_nflight < PH_BATCH; s = nx) {
            nx = s->next;
            if (now - s->free_since_ms < ta_cfg.decay_ms) continue;
            free_remove(s);
            s->next = s->prev = NULL;
            s->state = TA_SPAN_RELEASING; /* out: no merge, no grow into it */
            ph_stats.released_bytes += ta_span_bytes(s);
            got += ta_span_bytes(s);
            ph_flight[ph_nflight++] = s;
        }
    }
    return got;
}

static void flight_return(int state, uint64_t now) {
    for (int i = 0; i < ph_nflight; i++) {
        ta_span_t *s = ph_flight[i];
        ph_stats.released_bytes -= ta_span_bytes(s);
        s->state = (uint8_t)state;
        s->free_since_ms = now;
        free_insert(s);
        ph_flight[i] = NULL;
    }
    ph_nflight = 0;
}

/* One decay pass; returns the bytes released.  force: every free page free
 * for decay_ms, whatever the demand (tests, and an idle heap). */
static size_t decay_pass(uint64_t now, bool force) {
    size_t total = 0;
    ta_lock(&ph_lock);
    if (ph_decaying) {
        ta_unlock(&ph_lock);
        return 0;
    }
    recent_flush_locked(); /* blocks not asked for again since the last pass (so
                            * every free resident byte is on the lists) */
    __atomic_store_n(&ph_last_decay_ms, now, __ATOMIC_RELAXED); /* (read unlocked by tick_at) */
    peak_rotate(now);
    uint64_t ops = ph_stats.n_alloc + ph_stats.n_free;
    if (ops != ph_ops_seen) {
        ph_ops_seen = ops;
        ph_idle_since_ms = now;
    }
    bool idle = force || now - ph_idle_since_ms >= ta_cfg.decay_ms;
    /* resident bytes to keep: the peak in use of the last PH_PEAK_SLOTS
     * periods, or more when the heap needed more resident within the last
     * ph_res_window periods (see note_refault): a heap that just grew keeps
     * what it grew to while it stays busy, as one that lost pages to the
     * decay and faulted them back does.  Not when demand fell to under a
     * quarter of that: the program is done with most of it. */
    uint64_t target = ring_max(&ph_inuse_peak, PH_PEAK_SLOTS, PH_PEAK_SLOTS);
    uint64_t res = ring_max(&ph_res_peak, PH_RES_SLOTS, (int)ph_res_window - 1);
    if (res > target && target >= res / 4) target = res;
    uint64_t resident = ph_stats.inuse_bytes + ph_stats.free_bytes;
    uint64_t want = idle ? ph_stats.free_bytes : resident > target ? resident - target : 0;
    if (want > ph_stats.free_bytes) want = ph_stats.free_bytes;
    while (want) {
        size_t got = flight_collect(want, now);
        if (!got) break;
        ph_decaying = true;
        /* by address, then one madvise per contiguous range */
        for (int i = 1; i < ph_nflight; i++)
            for (int j = i; j > 0 && ph_flight[j - 1]->page > ph_flight[j]->page; j--) {
                ta_span_t *t = ph_flight[j];
                ph_flight[j] = ph_flight[j - 1];
                ph_flight[j - 1] = t;
            }
        ta_span_t *batch[PH_BATCH];
        int n = ph_nflight;
        for (int i = 0; i < n; i++) batch[i] = ph_flight[i];
        ta_unlock(&ph_lock);
        for (int i = 0; i < n;) {
            uintptr_t page = batch[i]->page, end = page + batch[i]->npages;
            for (i++; i < n && batch[i]->page == end; i++) end += batch[i]->npages;
            ta_os_release((void *)(page << TA_PAGE_SHIFT), (end - page) << TA_PAGE_SHIFT);
        }
        ta_lock(&ph_lock);
        /* a fork in between handed the child's copy back; here the spans are ours */
        flight_return(TA_SPAN_RELEASED, now);
        ph_decaying = false;
        ph_decay_released = true;
        ph_refault_seen = false;
        if (idle) ph_res_window = PH_RES_MIN; /* demand ended, not a swing */
        total += got;
        want = got >= want ? 0 : want - got;
    }
    ta_unlock(&ph_lock);
    return total;
}

size_t ta_pageheap_decay(bool force) { return decay_pass(ta_os_now_ms(), force); }

/* The page heap's operations so far (for ta_pageheap_ops_by_decay). */
uint64_t ta_pageheap_ops(void) {
    ta_lock(&ph_lock);
    uint64_t ops = ph_stats.n_alloc + ph_stats.n_free;
    ta_unlock(&ph_lock);
    return ops;
}

/* The operations since `before` were the decay's own (the background thread
 * gave the caches' idle objects back to their spans, and their spans to the
 * page heap): they are not the program's, and do not make the heap busy.
 * Unless the program's had come first (a pass has not seen them yet): then
 * the heap was busy anyway.  Without this an idle process whose caches
 * drained over two periods kept its free pages two periods longer: 1 000
 * threads that each freed 200 blocks and exited, then nothing, gave their
 * 330 MB back 3.1 s after the last free. */
void ta_pageheap_ops_by_decay(uint64_t before) {
    ta_lock(&ph_lock);
    if (ph_ops_seen == before) ph_ops_seen = ph_stats.n_alloc + ph_stats.n_free;
    ta_unlock(&ph_lock);
}

/* From slow paths and frees: with no background thread, a pass once per
 * decay_ms / 4. */
static void tick_at(uint64_t now) {
    if (__atomic_load_n(&ta_pageheap_bg_active, __ATOMIC_RELAXED)) return;
    if (now - __atomic_load_n(&ph_last_decay_ms, __ATOMIC_RELAXED) < ta_cfg.decay_ms / 4) return;
    decay_pass(now, false);
}

void ta_pageheap_tick(uint64_t now) { tick_at(now); }

/* Is the heap worth a background thread: at least PH_BG_MIN_BYTES resident
 * (a small heap has little to give back: small programs never start one),
 * and, in a child of fork, a decay period old (a child that goes on to exec
 * never starts one)? */
#define PH_BG_MIN_BYTES ((uint64_t)4 << 20)
bool ta_pageheap_bg_due(void) {
    uint64_t r = __atomic_load_n(&ph_stats.inuse_bytes, __ATOMIC_RELAXED) + free_resident();
    if (r < PH_BG_MIN_BYTES) return false;
    if ((int)ta_sys0(SYS_getpid) == ph_pid) return true; /* (once: the thread starts) */
    /* a child of fork: the period counts from the first time its heap is big
     * enough (fork itself reads no clock: a first read costs a child a fault) */
    return ta_period_claim(&ph_fork_ms, ta_os_now_ms(), ta_cfg.decay_ms);
}

void ta_pageheap_stats(ta_pageheap_stats_t *out) {
    ta_lock(&ph_lock);
    ta_pageheap_stats_locked(out, NULL);
    ta_unlock(&ph_lock);
}

void ta_pageheap_stats_locked(ta_pageheap_stats_t *out, uint64_t *class_spans) {
    *out = ph_stats;
    out->free_bytes += ph_recent_bytes;
    if (class_spans)
        for (uint32_t c = 0; c < TA_MAX_CLASSES; c++) class_spans[c] = ph_class_spans[c];
}

void ta_pageheap_lock_all(bool fork) { ta_lock_or_drain(&ph_lock, fork); }
void ta_pageheap_unlock_all(bool child) {
    if (child) {
        /* spans a decay pass had out: the parent releases them; the child's
         * copies may or may not have been madvised, so they come back FREE */
        if (ph_nflight) flight_return(TA_SPAN_FREE, ta_os_now_ms());
        /* (each store only where the value changes: a page written is a page copied) */
        if (ph_decaying) ph_decaying = false;
        if (ta_pageheap_bg_active) ta_pageheap_bg_active = false; /* no background thread in the child */
        /* a background thread starts only in a child that lives a decay
         * period (not in one that goes on to exec): ta_pageheap_bg_due */
        if (ph_fork_ms) ph_fork_ms = 0;
    }
    ta_lock_after_fork(&ph_lock, child);
}
