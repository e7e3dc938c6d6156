/* bench/arena_bench.c: the scoped stack arena against malloc/free, on a
 * request-like workload and two allocation-bound ones.
 *
 *   arena/request/malloc_free/items:N   each request is parsed with malloc'd
 *                                       objects, which are all freed after it
 *   arena/request/scope/items:N         the same code allocating with
 *                                       ta_scope_alloc inside a scope per request
 *
 * A request is JSON-like text with N items (about 75 bytes each):
 *   {"req":7,"user":"u4821","items":[{"id":17,"name":"widget-3","qty":2,
 *    "price":1999,"tags":["red","big"]},...],"note":"..."}
 * Handling it tokenizes the text (a token record per token and a copy of each
 * string and number), builds a tree of nodes (a node per value, a copy of each
 * key and string), walks the tree to total the order, and formats a short
 * result string.  One request in 8 keeps its result beyond the request (with
 * malloc it is simply not freed; in a scope it is ta_escape'd), in a ring of 64
 * results whose oldest is freed when a new one comes: both variants do the
 * same heap work for results.  About 0.7 allocations per byte of request, all
 * small (8..48 bytes), as a parser makes them.
 *
 *   arena/request/floor/items:N         the same code on a bare bump pointer in a
 *                                       static buffer: the floor for any allocator
 *   arena/tree/{malloc_free,scope,floor}/nodes:N
 *                                       allocation-bound: a tree of N small
 *                                       nodes, each with a copied name, built,
 *                                       summed and released (see below)
 *   arena/list/{malloc_free,scope,floor}/nodes:N
 *                                       allocation only: N records with a tag
 *                                       each on a list (see below)
 *
 * For the request workloads one operation is one request (items_per_second =
 * requests per second; the counter allocs_per_request says how many
 * allocations each made); for the tree and the list, items_per_second counts
 * allocations.
 *
 * The malloc/free variant measures whichever allocator is loaded.  The scope
 * variant needs libtieralloc in the process (LD_PRELOAD=libtieralloc.so) and
 * is not registered otherwise: the scope API is referenced weakly, and the inline
 * fast path's thread-local cursor needs the link flag
 * -Wl,-z,dynamic-undefined-weak so that its reference is bound at load time
 * (checked before the run).  The ratio of interest is the scope variant's
 * rate over the best malloc/free rate among the allocators; the floor variant
 * bounds that ratio from above for the workload (the work per object that no
 * allocator removes: scanning, copying, linking). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "tieralloc.h"
#include "workloads.h"

/* present only when libtieralloc is loaded */
#pragma weak ta_scope_begin
#pragma weak ta_scope_end
#pragma weak ta_scope_alloc_slow
#pragma weak ta_escape
#pragma weak ta_scope_cur

#define AI __attribute__((always_inline)) static inline

enum { M_MALLOC = 0, M_SCOPE = 1, M_COUNT = 2, M_FLOOR = 3 };
static size_t alloc_count; /* M_COUNT only */

/* M_FLOOR: a bare bump pointer in a static buffer, reset after each round:
 * no headers, no checks, nothing thread-local.  What no allocator can beat;
 * the distance of the scope variant from it is the arena's own cost. */
#define FLOOR_BYTES ((size_t)4 << 20)
static char floor_buf[FLOOR_BYTES] __attribute__((aligned(16)));
static size_t floor_pos;

AI void *bench_alloc(int mode, size_t n)
{
    if (mode == M_SCOPE)
        return ta_scope_alloc(n);
    if (mode == M_FLOOR) {
        size_t need = (n + 15) & ~(size_t)15;
        if (floor_pos + need > FLOOR_BYTES) /* cannot happen: sized for REQ_MAX, TREE_MAX */
            abort();
        void *p = floor_buf + floor_pos;
        floor_pos += need;
        return p;
    }
    if (mode == M_COUNT)
        alloc_count++;
    return malloc(n);
}

/* ---- the request texts ----------------------------------------------------- */
#define NREQ 32
#define REQ_MAX (16u << 10) /* enough for 128 items */
static char req_text[NREQ][REQ_MAX];
static int64_t req_total[NREQ]; /* what handling must find: sum of qty*price */
static int req_items = -1;      /* the item count they were made for */

static char *put(char *o, const char *s)
{
    while (*s)
        *o++ = *s++;
    return o;
}
static char *put_num(char *o, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while (v /= 10);
    while (n)
        *o++ = tmp[--n];
    return o;
}

static void make_requests(int items)
{
    static const char *names[] = { "widget", "gadget", "sprocket", "flange", "grommet", "doohickey" };
    static const char *tags[] = { "red", "big", "new", "sale", "eco", "blue", "xl", "gift" };
    if (req_items == items)
        return;
    bench_rng r = { 0x5eed };
    for (int q = 0; q < NREQ; q++) {
        char *o = req_text[q];
        int64_t total = 0;
        o = put(o, "{\"req\":");
        o = put_num(o, (uint64_t)q);
        o = put(o, ",\"user\":\"u");
        o = put_num(o, bench_rand_range(&r, 1000, 99999));
        o = put(o, "\",\"items\":[");
        for (int i = 0; i < items; i++) {
            uint64_t qty = bench_rand_range(&r, 1, 9), price = bench_rand_range(&r, 99, 99999);
            total += (int64_t)(qty * price);
            o = put(o, i ? ",{\"id\":" : "{\"id\":");
            o = put_num(o, bench_rand_range(&r, 1, 100000));
            o = put(o, ",\"name\":\"");
            o = put(o, names[bench_rand(&r) % 6]);
            o = put(o, "-");
            o = put_num(o, bench_rand_range(&r, 1, 99));
            o = put(o, "\",\"qty\":");
            o = put_num(o, qty);
            o = put(o, ",\"price\":");
            o = put_num(o, price);
            o = put(o, ",\"tags\":[");
            int nt = (int)bench_rand_range(&r, 0, 3);
            for (int t = 0; t < nt; t++) {
                o = put(o, t ? ",\"" : "\"");
                o = put(o, tags[bench_rand(&r) % 8]);
                o = put(o, "\"");
            }
            o = put(o, "]}");
        }
        o = put(o, "],\"note\":\"deliver to the side door after five\"}");
        *o = '\0';
        req_total[q] = total;
    }
    req_items = items;
}

/* ---- tokens ---------------------------------------------------------------------- */
enum { T_PUNCT, T_STR, T_NUM };
typedef struct tok {
    struct tok *next;
    char *text;  /* strings and numbers: a copy */
    uint32_t len;
    char kind;   /* T_* */
    char punct;  /* T_PUNCT: the character */
} tok_t;

AI char *dup_text(int mode, const char *s, size_t n)
{
    char *c = bench_alloc(mode, n + 1);
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

AI tok_t *tokenize(int mode, const char *s)
{
    tok_t *head = NULL, **tail = &head;
    for (;;) {
        char ch = *s;
        if (!ch)
            break;
        if (ch == ' ' || ch == '\n') {
            s++;
            continue;
        }
        tok_t *t = bench_alloc(mode, sizeof *t);
        t->next = NULL;
        t->text = NULL;
        t->len = 0;
        if (ch == '"') {
            const char *e = ++s;
            while (*e != '"')
                e++;
            t->kind = T_STR;
            t->len = (uint32_t)(e - s);
            t->text = dup_text(mode, s, t->len);
            s = e + 1;
        } else if (ch >= '0' && ch <= '9') {
            const char *e = s;
            while (*e >= '0' && *e <= '9')
                e++;
            t->kind = T_NUM;
            t->len = (uint32_t)(e - s);
            t->text = dup_text(mode, s, t->len);
            s = e;
        } else {
            t->kind = T_PUNCT;
            t->punct = ch;
            s++;
        }
        *tail = t;
        tail = &t->next;
    }
    return head;
}

/* ---- the tree ---------------------------------------------------------------------- */
enum { N_OBJ, N_ARR, N_STR, N_NUM };
typedef struct node {
    struct node *child, *last, *next;
    char *key; /* member of an object: a copy of its key */
    char *str; /* N_STR: a copy */
    int64_t num;
    uint32_t keylen;
    int kind;
} node_t;

#define MAX_DEPTH 16

AI node_t *new_node(int mode, int kind, char *key, uint32_t keylen)
{
    node_t *n = bench_alloc(mode, sizeof *n);
    n->child = n->last = n->next = NULL;
    n->key = key;
    n->keylen = keylen;
    n->str = NULL;
    n->num = 0;
    n->kind = kind;
    return n;
}

/* iterative, so that one body serves every mode */
AI node_t *build(int mode, const tok_t *t)
{
    node_t *stack[MAX_DEPTH];
    int sp = 0;
    node_t *root = NULL;
    char *key = NULL;
    uint32_t keylen = 0;
    for (; t; t = t->next) {
        node_t *n = NULL;
        if (t->kind == T_PUNCT) {
            if (t->punct == '{' || t->punct == '[') {
                n = new_node(mode, t->punct == '{' ? N_OBJ : N_ARR, key, keylen);
            } else if (t->punct == '}' || t->punct == ']') {
                sp--;
                continue;
            } else {
                continue; /* , and : */
            }
        } else if (t->kind == T_STR && sp && stack[sp - 1]->kind == N_OBJ && !key) {
            key = dup_text(mode, t->text, t->len); /* a member's name */
            keylen = t->len;
            continue;
        } else if (t->kind == T_STR) {
            n = new_node(mode, N_STR, key, keylen);
            n->str = dup_text(mode, t->text, t->len);
        } else {
            n = new_node(mode, N_NUM, key, keylen);
            int64_t v = 0;
            for (uint32_t i = 0; i < t->len; i++)
                v = v * 10 + (t->text[i] - '0');
            n->num = v;
        }
        key = NULL;
        if (sp) {
            node_t *parent = stack[sp - 1];
            if (parent->last)
                parent->last->next = n;
            else
                parent->child = n;
            parent->last = n;
        } else {
            root = n;
        }
        if ((n->kind == N_OBJ || n->kind == N_ARR) && sp < MAX_DEPTH)
            stack[sp++] = n;
    }
    return root;
}

static void free_tokens(tok_t *t)
{
    while (t) {
        tok_t *next = t->next;
        free(t->text);
        free(t);
        t = next;
    }
}

static void free_tree(node_t *n)
{
    while (n) {
        node_t *next = n->next;
        free_tree(n->child);
        free(n->key);
        free(n->str);
        free(n);
        n = next;
    }
}

/* the member named key (of length len) of an object */
AI const node_t *member(const node_t *obj, const char *key, uint32_t len)
{
    for (const node_t *c = obj ? obj->child : NULL; c; c = c->next)
        if (c->keylen == len && c->key[0] == key[0] && !memcmp(c->key, key, len))
            return c;
    return NULL;
}
#define MEMBER(obj, lit) member(obj, lit, sizeof lit - 1)

/* Parse, total the order, format "user=... items=... tags=... total=...".
 * With malloc, everything but the result is freed before returning. */
AI char *handle(int mode, const char *text, int64_t *total_out)
{
    tok_t *toks = tokenize(mode, text);
    node_t *root = build(mode, toks);
    int64_t total = 0, items = 0, tags = 0;
    const node_t *list = MEMBER(root, "items");
    for (const node_t *it = list ? list->child : NULL; it; it = it->next) {
        const node_t *q = MEMBER(it, "qty"), *p = MEMBER(it, "price"), *tg = MEMBER(it, "tags");
        if (q && p)
            total += q->num * p->num;
        for (const node_t *t = tg ? tg->child : NULL; t; t = t->next)
            tags++;
        items++;
    }
    const node_t *user = MEMBER(root, "user");
    char buf[128];
    char *o = buf;
    o = put(o, "user=");
    o = put(o, user && user->str ? user->str : "?");
    o = put(o, " items=");
    o = put_num(o, (uint64_t)items);
    o = put(o, " tags=");
    o = put_num(o, (uint64_t)tags);
    o = put(o, " total=");
    o = put_num(o, (uint64_t)total);
    char *result = dup_text(mode, buf, (size_t)(o - buf));
    if (mode == M_MALLOC || mode == M_COUNT) {
        free_tree(root);
        free_tokens(toks);
    }
    *total_out = total;
    return result;
}

/* ---- the benchmarks ------------------------------------------------------------------- */
#define KEEP 64
#define KEEP_EVERY 8

static void *kept[KEEP];
static size_t kept_next;

static void keep(void *result)
{
    free(kept[kept_next]);
    kept[kept_next] = result;
    kept_next = (kept_next + 1) % KEEP;
}

static void drop_kept(void)
{
    for (size_t i = 0; i < KEEP; i++) {
        free(kept[i]);
        kept[i] = NULL;
    }
}

static __attribute__((noinline)) char *handle_malloc(const char *text, int64_t *total)
{
    return handle(M_MALLOC, text, total);
}
static __attribute__((noinline)) char *handle_scoped(const char *text, int64_t *total)
{
    return handle(M_SCOPE, text, total);
}
static __attribute__((noinline)) char *handle_floor(const char *text, int64_t *total)
{
    return handle(M_FLOOR, text, total);
}
static __attribute__((noinline)) void count_allocs(const char *text)
{
    int64_t total;
    alloc_count = 0;
    free(handle(M_COUNT, text, &total));
}

static void bm_malloc_free(tb_state *st, void *arg)
{
    (void)arg;
    make_requests((int)tb_range(st, 0));
    count_allocs(req_text[0]);
    size_t k = 0;
    while (tb_keep_running(st)) {
        size_t q = k++ % NREQ;
        int64_t total;
        char *res = handle_malloc(req_text[q], &total);
        if (!res || total != req_total[q]) {
            tb_skip_with_error(st, "wrong total: the request was mishandled");
            break;
        }
        if (k % KEEP_EVERY == 0)
            keep(res);
        else
            free(res);
    }
    drop_kept();
    tb_set_items_processed(st, tb_iterations(st));
    tb_counter_set(st, "allocs_per_request", (double)alloc_count, TB_COUNTER_DEFAULT);
}

static void bm_floor(tb_state *st, void *arg)
{
    (void)arg;
    make_requests((int)tb_range(st, 0));
    count_allocs(req_text[0]);
    size_t k = 0;
    while (tb_keep_running(st)) {
        size_t q = k++ % NREQ;
        int64_t total;
        floor_pos = 0;
        char *res = handle_floor(req_text[q], &total);
        if (total != req_total[q]) {
            tb_skip_with_error(st, "wrong total: the request was mishandled");
            break;
        }
        if (k % KEEP_EVERY == 0) { /* a heap copy, as ta_escape makes */
            size_t len = strlen(res) + 1;
            char *copy = malloc(len);
            memcpy(copy, res, len);
            keep(copy);
        }
    }
    drop_kept();
    tb_set_items_processed(st, tb_iterations(st));
    tb_counter_set(st, "allocs_per_request", (double)alloc_count, TB_COUNTER_DEFAULT);
}

/* Is the scope API there, and is the inline path's cursor bound to it? */
static const char *scope_unavailable(void)
{
    if (!ta_scope_begin || !ta_scope_end || !ta_scope_alloc_slow || !ta_escape)
        return "the scope API needs libtieralloc (LD_PRELOAD=libtieralloc.so)";
    if ((void *)&ta_scope_cur != dlsym(RTLD_DEFAULT, "ta_scope_cur"))
        return "the thread-local cursor is not bound: link with -Wl,-z,dynamic-undefined-weak";
    return NULL;
}

static void bm_scope(tb_state *st, void *arg)
{
    (void)arg;
    const char *why = scope_unavailable();
    if (why) {
        tb_skip_with_error(st, why);
        return;
    }
    make_requests((int)tb_range(st, 0));
    count_allocs(req_text[0]);
    size_t k = 0;
    while (tb_keep_running(st)) {
        size_t q = k++ % NREQ;
        int64_t total;
        ta_scope_t mark = ta_scope_begin();
        char *res = handle_scoped(req_text[q], &total);
        if (!res || total != req_total[q]) {
            ta_scope_end(mark);
            tb_skip_with_error(st, "wrong total: the request was mishandled");
            break;
        }
        if (k % KEEP_EVERY == 0)
            keep(ta_escape(res));
        ta_scope_end(mark);
    }
    drop_kept();
    tb_set_items_processed(st, tb_iterations(st));
    tb_counter_set(st, "allocs_per_request", (double)alloc_count, TB_COUNTER_DEFAULT);
}

/* ---- allocation-bound: a tree of small nodes and strings ---------------------------
 * Each round builds a tree of N nodes (48 bytes) each with a name (a copy of
 * one of a few short words, 4..20 bytes), attached to a parent chosen in
 * advance, sums it, and releases it: a walk that frees every block, or the end
 * of a scope.  Almost nothing but allocation: the ratio's upper end. */
#define TREE_MAX 4096
typedef struct tnode {
    struct tnode *child, *next;
    char *name;
    uint64_t value;
    uint32_t len;
} tnode_t;
static uint32_t tree_parent[TREE_MAX], tree_word[TREE_MAX];
static const char *const tree_words[8] = { "id", "name", "price", "quantity", "description",
                                           "tags", "created_at_timestamp", "owner" };
static uint32_t tree_len[8];

static void make_tree_plan(size_t n)
{
    bench_rng r = { 0x77 };
    for (size_t i = 0; i < n; i++) {
        tree_parent[i] = i ? (uint32_t)bench_rand_range(&r, 0, i - 1) : 0;
        tree_word[i] = (uint32_t)(bench_rand(&r) % 8);
    }
    for (int w = 0; w < 8; w++)
        tree_len[w] = (uint32_t)strlen(tree_words[w]);
}

static void free_tnodes(tnode_t *t)
{
    while (t) {
        tnode_t *next = t->next;
        free_tnodes(t->child);
        free(t->name);
        free(t);
        t = next;
    }
}

AI uint64_t tree_round(int mode, size_t n)
{
    tnode_t *nodes[TREE_MAX];
    for (size_t i = 0; i < n; i++) {
        tnode_t *t = bench_alloc(mode, sizeof *t);
        uint32_t w = tree_word[i];
        t->len = tree_len[w];
        t->name = dup_text(mode, tree_words[w], t->len);
        t->value = i;
        t->child = NULL;
        t->next = NULL;
        if (i) {
            tnode_t *p = nodes[tree_parent[i]];
            t->next = p->child;
            p->child = t;
        }
        nodes[i] = t;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += nodes[i]->value + nodes[i]->len + (unsigned char)nodes[i]->name[0];
    if (mode == M_MALLOC)
        free_tnodes(nodes[0]);
    return sum;
}
static __attribute__((noinline)) uint64_t tree_malloc(size_t n) { return tree_round(M_MALLOC, n); }
static __attribute__((noinline)) uint64_t tree_scoped(size_t n) { return tree_round(M_SCOPE, n); }
static __attribute__((noinline)) uint64_t tree_floor(size_t n) { return tree_round(M_FLOOR, n); }

static uint64_t tree_expected(size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += i + tree_len[tree_word[i]] + (unsigned char)tree_words[tree_word[i]][0];
    return sum;
}

static void bm_tree(tb_state *st, void *arg)
{
    int mode = *(const int *)arg;
    const char *why = mode == M_SCOPE ? scope_unavailable() : NULL;
    if (why) {
        tb_skip_with_error(st, why);
        return;
    }
    size_t n = (size_t)tb_range(st, 0);
    if (n < 1 || n > TREE_MAX) {
        tb_skip_with_error(st, "bad node count");
        return;
    }
    make_tree_plan(n);
    uint64_t want = tree_expected(n);
    while (tb_keep_running(st)) {
        uint64_t got;
        if (mode == M_SCOPE) {
            ta_scope_t mark = ta_scope_begin();
            got = tree_scoped(n);
            ta_scope_end(mark);
        } else if (mode == M_FLOOR) {
            floor_pos = 0;
            got = tree_floor(n);
        } else {
            got = tree_malloc(n);
        }
        if (got != want) {
            tb_skip_with_error(st, "wrong sum: the tree was mangled");
            break;
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * (int64_t)n * 2); /* allocations */
}

/* ---- allocation only: a list of records ------------------------------------------
 * N records of 24 bytes, each with a 16-byte tag filled by two stores, pushed
 * on a list, summed, released.  No copying or searching: close to nothing but
 * the allocator, the regime where a bump pointer shows its full advantage. */
typedef struct lnode {
    struct lnode *next;
    char *tag;
    uint64_t v;
} lnode_t;

AI uint64_t list_round(int mode, size_t n)
{
    lnode_t *head = NULL;
    for (size_t i = 0; i < n; i++) {
        lnode_t *x = bench_alloc(mode, sizeof *x);
        char *tag = bench_alloc(mode, 16);
        memcpy(tag, "record-tag-0123", 16);
        tag[7] = (char)('a' + i % 26);
        x->tag = tag;
        x->v = i;
        x->next = head;
        head = x;
    }
    uint64_t sum = 0;
    for (lnode_t *x = head; x; x = x->next)
        sum += x->v + (unsigned char)x->tag[7];
    if (mode == M_MALLOC) {
        while (head) {
            lnode_t *next = head->next;
            free(head->tag);
            free(head);
            head = next;
        }
    }
    return sum;
}
static __attribute__((noinline)) uint64_t list_malloc(size_t n) { return list_round(M_MALLOC, n); }
static __attribute__((noinline)) uint64_t list_scoped(size_t n) { return list_round(M_SCOPE, n); }
static __attribute__((noinline)) uint64_t list_floor(size_t n) { return list_round(M_FLOOR, n); }

static void bm_list(tb_state *st, void *arg)
{
    int mode = *(const int *)arg;
    const char *why = mode == M_SCOPE ? scope_unavailable() : NULL;
    if (why) {
        tb_skip_with_error(st, why);
        return;
    }
    size_t n = (size_t)tb_range(st, 0);
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++)
        want += i + (uint64_t)('a' + i % 26);
    while (tb_keep_running(st)) {
        uint64_t got;
        if (mode == M_SCOPE) {
            ta_scope_t mark = ta_scope_begin();
            got = list_scoped(n);
            ta_scope_end(mark);
        } else if (mode == M_FLOOR) {
            floor_pos = 0;
            got = list_floor(n);
        } else {
            got = list_malloc(n);
        }
        if (got != want) {
            tb_skip_with_error(st, "wrong sum: the list was mangled");
            break;
        }
    }
    tb_set_items_processed(st, tb_iterations(st) * (int64_t)n * 2); /* allocations */
}

void bench_register_arena(void)
{
    static const int modes[] = { M_MALLOC, M_SCOPE, M_FLOOR };
    static const char *const tree_names[] = { "arena/tree/malloc_free", "arena/tree/scope", "arena/tree/floor" };
    static const char *const list_names[] = { "arena/list/malloc_free", "arena/list/scope", "arena/list/floor" };
    /* the scope variants exist only where they can run (see the top) */
    int scope_ok = scope_unavailable() == NULL;
    for (int i = 0; i < 3; i++) {
        if (modes[i] == M_SCOPE && !scope_ok)
            continue;
        tb_bench_arg(tb_bench_arg_name(tb_register(tree_names[i], bm_tree, (void *)&modes[i]), "nodes"), 1000);
        tb_bench_arg(tb_bench_arg_name(tb_register(list_names[i], bm_list, (void *)&modes[i]), "nodes"), 1000);
    }

    static const int64_t items[] = { 8, 64 };
    tb_bench *m = tb_bench_arg_name(tb_register("arena/request/malloc_free", bm_malloc_free, NULL), "items");
    tb_bench *s = scope_ok ? tb_bench_arg_name(tb_register("arena/request/scope", bm_scope, NULL), "items") : NULL;
    tb_bench *f = tb_bench_arg_name(tb_register("arena/request/floor", bm_floor, NULL), "items");
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        tb_bench_arg(m, items[i]);
        if (s)
            tb_bench_arg(s, items[i]);
        tb_bench_arg(f, items[i]);
    }
}
