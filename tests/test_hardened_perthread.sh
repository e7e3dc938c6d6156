#!/bin/sh
# tests/test_hardened with per-thread caches (TIERALLOC_PERCPU=0): the
# quarantine hands its blocks to tier 1 in either mode.
exec env TIERALLOC_PERCPU=0 "${TA_BUILDDIR:-.}/tests/test_hardened" "$@"
