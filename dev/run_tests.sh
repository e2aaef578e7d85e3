#!/usr/bin/env bash
# Runs every test suite, each of which ends with a line "N passed, N failed",
# and prints the sum of those lines last. Exits non-zero if any suite failed
# or did not report. Suites are given as arguments: "name::command".
set -u
total_passed=0
total_failed=0
status=0
start=$(date +%s)
for suite in "$@"; do
    name="${suite%%::*}"
    cmd="${suite#*::}"
    echo "=== $name: $cmd"
    t0=$(date +%s)
    log=$(mktemp)
    bash -c "$cmd" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    rm -f "$log"
    if [ -z "$line" ]; then
        echo "=== $name: no result line (exit $rc), counted as 1 failure"
        total_failed=$((total_failed + 1)); status=1; continue
    fi
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
        status=1
        if [ "$f" -eq 0 ]; then total_failed=$((total_failed + 1)); fi
    fi
    echo "=== $name: $line (exit $rc) in $(( $(date +%s) - t0 )) s"
done
echo "=== $# suites in $(( $(date +%s) - start )) s"
echo "$total_passed passed, $total_failed failed"
exit $status
