#!/bin/sh
# tests/test_pcache with per-CPU caches from the start (TIERALLOC_PERCPU=1):
# by default a process runs per-thread caches until it has many threads, so
# most tests would see only those.  Tier 1's mode is chosen at start-up from
# the environment, so the same binary runs again with it set.
exec env TIERALLOC_PERCPU=1 "${TA_BUILDDIR:-.}/tests/test_pcache" "$@"
