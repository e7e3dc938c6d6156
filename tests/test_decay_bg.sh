#!/bin/sh
# test_decay with the background thread on (it is off by default)
TIERALLOC_BACKGROUND=1 exec "${TA_BUILDDIR:-.}/tests/test_decay" "$@"
