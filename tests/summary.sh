#!/bin/sh
# tests/summary.sh DIR: one line for a whole `make check` run.
#
# Reads the logs automake's test harness wrote in DIR (NAME.log and NAME.trs
# per test binary), prints a line per binary and the details of failures, and
# as its LAST line exactly "N passed, N failed", summed over every Criterion
# test.  Exit status 0 iff nothing failed.
#
# Counting:
#  - a log with Criterion's "Synthesis: Tested: T | Passing: P | Failing: F |
#    Crashing: C" line gives P passed and F failed (Criterion 2.4 counts a
#    crashed test under Failing as well; a crash it did not count there is
#    added);
#  - a binary whose .trs says FAIL or ERROR but whose log shows no failure
#    (it crashed, hung, or exited non-zero outside a test) counts 1 failed;
#  - a binary without a Synthesis line counts 1 passed or 1 failed from its
#    .trs (SKIP counts neither);
#  - a test the Makefile lists but that has no result (it did not build, or
#    make check stopped early) counts 1 failed, and so does a run that left
#    no results at all.
set -u

dir=${1:-tests}
if [ ! -d "$dir" ]; then
    echo "summary: $dir: no such directory"
    echo "0 passed, 1 failed"
    exit 1
fi

# The tests the Makefile declares ($(TESTS)), as paths relative to its
# directory, when DIR sits in a configured build tree; else the .trs files
# found in DIR.
top=$(cd "$dir/.." && pwd)
expected=
if [ -f "$top/Makefile" ] && command -v make >/dev/null 2>&1; then
    # -o Makefile: read the Makefile as it is, never regenerate it here
    # shellcheck disable=SC2016
    expected=$(printf 'ta-summary-list-tests:\n\t@echo $(TESTS)\n' |
        MAKEFLAGS='' make -s --no-print-directory -o Makefile -C "$top" -f Makefile -f - \
            ta-summary-list-tests 2>/dev/null) || expected=
fi
if [ -n "$expected" ]; then
    logs=
    for t in $expected; do logs="$logs $top/${t%.exe}.log"; done
else
    logs=
    for trs in "$dir"/*.trs; do
        [ -e "$trs" ] && logs="$logs ${trs%.trs}.log"
    done
fi

total_pass=0
total_fail=0
n_results=0
for log in $logs; do
    name=${log#"$top"/}
    name=${name%.log}
    trs=${log%.log}.trs
    if [ ! -f "$log" ] && [ ! -f "$trs" ]; then
        printf '%-28s no result (not built, or not run)\n' "$name"
        total_fail=$((total_fail + 1))
        continue
    fi
    n_results=$((n_results + 1))
    result=
    [ -f "$trs" ] && result=$(sed -n 's/^:test-result: *\([A-Z]*\).*/\1/p' "$trs" | head -n 1)
    # "P F" from the last Synthesis line, or nothing
    counts=
    [ -f "$log" ] && counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
        /Synthesis: Tested:/ {
            t = p = f = c = 0
            for (i = 1; i <= NF; i++) {
                if ($i == "Tested:") t = $(i + 1)
                if ($i == "Passing:") p = $(i + 1)
                if ($i == "Failing:") f = $(i + 1)
                if ($i == "Crashing:") c = $(i + 1)
            }
            extra = t - p - f
            if (extra < 0) extra = 0
            if (c < extra) extra = c
            line = p " " (f + extra)
        }
        END { if (line != "") print line }')
    note=
    if [ -n "$counts" ]; then
        pass=${counts% *}
        fail=${counts#* }
        case $result in
        FAIL | ERROR)
            if [ "$fail" -eq 0 ]; then
                fail=1
                note=" (binary $result after its tests: crash at exit or non-zero status)"
            fi ;;
        esac
    else
        pass=0
        fail=0
        case $result in
        PASS | XFAIL) pass=1 ;;
        SKIP) ;;
        *)
            fail=1
            note=" (no Criterion synthesis: ${result:-no .trs}; crashed, hung or did not start)" ;;
        esac
    fi
    printf '%-28s %4d passed %4d failed%s\n' "$name" "$pass" "$fail" "$note"
    if [ "$fail" -gt 0 ] && [ -f "$log" ]; then
        if [ -n "$counts" ]; then
            # Criterion's messages of the failed tests
            sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^\[(----|FAIL)\]' | grep -v '^\[----\] *$' |
                head -n 60 | sed 's/^/    /'
        else
            tail -n 20 "$log" | sed 's/^/    /'
        fi
    fi
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + fail))
done

if [ "$n_results" -eq 0 ]; then
    echo "summary: no test results in $dir (did make check run?)"
    [ "$total_fail" -eq 0 ] && total_fail=1
fi
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
