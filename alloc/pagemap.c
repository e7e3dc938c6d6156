/* pagemap.c: page number → (span, info), a two-level radix tree.  The root is
 * a static array (untouched entries cost no memory); leaves come from the OS on
 * first use (MAP_NORESERVE: sparse) and are never freed, so a lookup never
 * races with a free.  When the heap unmaps address space it clears the entries
 * of its pages, so a later mapping there (ours or anyone's) starts unknown. */
#include "internal.h"

ta_pm_leaf_t *ta_pm_root[1 << TA_PM_ROOT_BITS];
const ta_pm_entry_t ta_pm_none; /* what free() reads for a page no leaf covers */
struct ta_pm_hot ta_pm_hot __attribute__((aligned(64))) = {
    .base = TA_PM_NONCANONICAL, .leaf = (ta_pm_leaf_t *)TA_PM_NONCANONICAL};
static ta_lock_t pm_lock = TA_LOCK_INIT(TA_RANK_PAGEMAP);
static uint64_t pm_bytes;

bool ta_pagemap_ensure(uintptr_t first, uintptr_t n) {
    uintptr_t last = first + n - 1;
    if (n == 0 || last < first || (last >> (TA_PM_ROOT_BITS + TA_PM_LEAF_BITS))) return false;
    for (uintptr_t i = first >> TA_PM_LEAF_BITS; i <= last >> TA_PM_LEAF_BITS; i++) {
        ta_touch_for_write(&ta_pm_root[i]); /* (the root's page is written when empty) */
        if (__atomic_load_n(&ta_pm_root[i], __ATOMIC_ACQUIRE)) continue;
        ta_lock(&pm_lock);
        if (!ta_pm_root[i]) {
            /* 10 MiB describing 2 GiB, of which only the entries of pages the
             * heap uses are ever touched: sparse, not accounted */
            ta_pm_leaf_t *leaf = ta_os_map_sparse(sizeof(ta_pm_leaf_t), 4096);
            if (!leaf) {
                ta_unlock(&pm_lock);
                return false;
            }
            pm_bytes += sizeof(ta_pm_leaf_t);
            __atomic_store_n(&ta_pm_root[i], leaf, __ATOMIC_RELEASE);
            if (ta_pm_hot.base == TA_PM_NONCANONICAL) { /* the first leaf: the leaf, then its base (read first) */
                ta_pm_hot.leaf = leaf;
                __atomic_store_n(&ta_pm_hot.base, i * TA_PM_LEAF_SPAN, __ATOMIC_RELEASE);
            }
        }
        ta_unlock(&pm_lock);
    }
    return true;
}

void ta_pagemap_clear(uintptr_t first, uintptr_t n) {
    for (uintptr_t page = first; page < first + n; page++) {
        ta_pm_leaf_t *leaf = ta_pm_root[page >> TA_PM_LEAF_BITS];
        if (!leaf) {
            page |= ((uintptr_t)1 << TA_PM_LEAF_BITS) - 1; /* to the end of this leaf's range */
            continue;
        }
        uintptr_t i = page & ((1u << TA_PM_LEAF_BITS) - 1);
        /* only entries that are set are written: an untouched part of a
         * leaf stays untouched (not resident) */
        if (leaf->entry[i].info) ta_pm_entry_clear(&leaf->entry[i]);
        if (__atomic_load_n(&leaf->span[i], __ATOMIC_RELAXED)) __atomic_store_n(&leaf->span[i], NULL, __ATOMIC_RELAXED);
    }
}

uint64_t ta_pagemap_bytes(void) { return pm_bytes; }

/* The first leaf is ta_pm_hot's; a heap spread over more than its 2 GiB has
 * more, found through the root (a read of its 1 MiB, untouched parts
 * mapping the shared zero page: no memory).  Leaves are never unmapped. */
uint64_t ta_pagemap_resident(void) {
    ta_lock(&pm_lock);
    uint64_t leaves = pm_bytes / sizeof(ta_pm_leaf_t), r = 0;
    if (leaves == 1) {
        r = ta_os_resident(ta_pm_hot.leaf, sizeof(ta_pm_leaf_t));
    } else if (leaves > 1) {
        for (size_t i = 0; i < sizeof ta_pm_root / sizeof ta_pm_root[0]; i++)
            if (ta_pm_root[i]) r += ta_os_resident(ta_pm_root[i], sizeof(ta_pm_leaf_t));
    }
    ta_unlock(&pm_lock);
    return r;
}
