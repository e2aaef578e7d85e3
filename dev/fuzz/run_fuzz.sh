#!/usr/bin/env bash
# run_fuzz.sh SECONDS [checkpoint|dataset ...]
#
# Builds the libFuzzer harnesses (clang, -fsanitize=fuzzer,address,undefined)
# into build/fuzz/, seeds their corpora with small valid files from
# dev/test/make_bad_inputs.py, runs each for SECONDS, one after the other, and
# reports executions and crashes from libFuzzer's final stats. Corpora are kept
# in build/fuzz/corpus/NAME between runs; inputs that crash are written to
# build/fuzz/artifacts/NAME/ (turn each into a case of make_bad_inputs.py).
# Ends with "N passed, N failed" and exits non-zero when a harness crashed.
#
# Environment: CLANG (default clang), PYTHON (default python3),
#              FUZZ_FLAGS (extra libFuzzer flags, e.g. -jobs=2).
set -u
secs="${1:-}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 SECONDS [checkpoint|dataset ...]" >&2
    exit 2
fi
shift
harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then harnesses=(checkpoint dataset); fi
cd "$(dirname "$0")/../.." || exit 2
CLANG="${CLANG:-clang}"
PYTHON="${PYTHON:-python3}"
out=build/fuzz
mkdir -p "$out"
"$PYTHON" dev/test/make_bad_inputs.py --fuzz-seeds "$out/seeds" >/dev/null || { echo "seed generation failed"; exit 2; }

passed=0
failed=0
for h in "${harnesses[@]}"; do
    src="dev/fuzz/fuzz_$h.c"
    bin="$out/fuzz_$h"
    if [ ! -f "$src" ]; then echo "fuzz_$h: no harness $src"; failed=$((failed + 1)); continue; fi
    if ! "$CLANG" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
            -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -o "$bin" "$src" -lm; then
        echo "fuzz_$h: build failed"; failed=$((failed + 1)); continue
    fi
    corpus="$out/corpus/$h"
    artifacts="$out/artifacts/$h"
    mkdir -p "$corpus" "$artifacts"
    cp -n "$out/seeds/$h"/* "$corpus/" 2>/dev/null
    before=$(find "$artifacts" -type f | wc -l)
    log="$out/fuzz_$h.log"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "./$bin" -max_total_time="$secs" -print_final_stats=1 -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" ${FUZZ_FLAGS:-} "$corpus" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    rate=$(grep -E '^stat::average_exec_per_sec:' "$log" | tail -1 | awk '{print $2}')
    after=$(find "$artifacts" -type f | wc -l)
    crashes=$((after - before))
    units=$(find "$corpus" -type f | wc -l)
    echo "fuzz_$h: ${took}s, ${execs:-?} executions (${rate:-?}/s), corpus $units files, $crashes crashes, exit $rc (log $log)"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ] || [ -z "$execs" ]; then
        failed=$((failed + 1))
        find "$artifacts" -type f -newer "$src" | sed 's/^/  artifact: /'
        grep -E 'ERROR: |runtime error|SUMMARY|^accepted|^rejected|out of bounds|Assertion' "$log" | head -5 | sed 's/^/  /'
    else
        passed=$((passed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
