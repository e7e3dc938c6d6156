#!/bin/sh
# test_decay with the background thread (on by default; set here so that a run
# with TIERALLOC_BACKGROUND=0 in the environment still tests it)
TIERALLOC_BACKGROUND=1 exec "${TA_BUILDDIR:-.}/tests/test_decay" "$@"
