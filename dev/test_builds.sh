#!/usr/bin/env bash
# The matmul kernels of every instruction set this host can execute, with gcc
# and clang: each build of test_sft runs the tiny reference test (forward,
# gradients and AdamW steps against PyTorch) and, where test_sft has it, the
# self-check with no arguments (gemm against gemm_reference on odd shapes).
#
#   dev/test_builds.sh [--ref DIR]      (default: build/ref; `make reference`)
#
# Builds: -march=native, x86-64-v4 and sapphirerapids (AVX-512), x86-64-v3 and
# znver3 (AVX2), no -march (SSE2 on x86-64; the compiler's default elsewhere),
# and -march=native with -DGEMM_PORTABLE (the plain-C micro-kernel) and
# -DGEMM_REFERENCE (the triple loop). A target the CPU or compiler lacks is
# skipped, saying why. The last line is "N passed, N failed" (summed).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=$ROOT/build/ref
[ "${1:-}" = "--ref" ] && REF=$2
OUT=$ROOT/build/test_builds
mkdir -p "$OUT"
TINY="$REF/gpt2_tiny.bin $REF/gpt2_tiny_debug_state.bin $REF/gpt2_tiny_reg_debug_state.bin $REF/gpt2_tiny_dropout_debug_state.bin"
for f in $TINY; do [ -f "$f" ] || { echo "missing $f: run make reference"; echo "0 passed, 1 failed"; exit 1; }; done

source "$ROOT/dev/builds.sh"

passed=0; failed=0
for cc in gcc clang; do
    if ! command -v $cc >/dev/null; then echo "SKIP $cc: not installed (apt-get install $cc)"; continue; fi
    for build in "${BUILDS[@]}"; do
        name=${build%%:*}; flags=${build#*:}
        if ! can_run $cc "$flags"; then echo "SKIP $cc $name: this CPU or compiler cannot run $flags"; continue; fi
        bin=$OUT/test_sft_${cc}_$name
        if ! $cc $BUILD_FLAGS $flags -Wall -Wextra -Werror \
                -o "$bin" "$ROOT/test_sft.c" -lm 2>"$bin.log"; then
            echo "FAIL $cc $name: build ($bin.log)"; cat "$bin.log"; failed=$((failed + 1)); continue
        fi
        for run in "reference test:$TINY" "self-check:"; do
            what=${run%%:*}; args=${run#*:}
            if [ -z "$args" ] && ! grep -q 'selfcheck' "$ROOT/test_sft.c"; then continue; fi
            line=$("$bin" $args 2>&1 | tee "$bin.$what.log" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)
            isa=$(grep -m1 -o 'matmul kernel: .*' "$bin.$what.log" || true)
            if [ -n "$line" ] && echo "$line" | grep -q ' 0 failed'; then
                echo "PASS $cc $name ($flags) $isa, $what: $line"; passed=$((passed + 1))
            else
                echo "FAIL $cc $name ($flags) $isa, $what: ${line:-no result} ($bin.$what.log)"; failed=$((failed + 1))
            fi
        done
    done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
