#!/bin/sh
# tests/test_central with per-CPU caches from the start (TIERALLOC_PERCPU=1);
# see tests/test_pcache_percpu.sh.
exec env TIERALLOC_PERCPU=1 "${TA_BUILDDIR:-.}/tests/test_central" "$@"
