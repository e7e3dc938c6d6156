#!/bin/sh
# tests/test_pcache with per-thread caches: tier 1's mode is chosen once at
# start-up from TIERALLOC_PERCPU, so the same binary runs again with it set.
exec env TIERALLOC_PERCPU=0 "${TA_BUILDDIR:-.}/tests/test_pcache" "$@"
