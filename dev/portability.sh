#!/usr/bin/env bash
# Portability checks for train_gpt2_sft.c and test_sft.c: other compilers,
# other CPUs (under qemu), a big-endian CPU, and Windows (MinGW-w64, wine).
#
#   dev/portability.sh --quick   gcc and clang, with and without OpenMP:
#                                warning-free builds (also `make NO_OMP=1`),
#                                the self-check and tiny reference test, a short training run
#   dev/portability.sh           all of --quick, then -O0 builds, tcc,
#                                aarch64 / riscv64 / armhf under qemu, s390x
#                                (big-endian: must refuse), MinGW-w64 and wine
#
# Options: --src DIR   test the sources in DIR (default: this repository)
#          --ref DIR   reference files (default: build/ref of this repository)
#          --keep      keep the scratch directory (logs, binaries)
#
# Each case prints PASS, FAIL or SKIP (a tool is not installed: the apt-get
# command that installs it is printed). The last line is "N passed, N failed"
# (", N skipped" when some were); the exit status is 1 if any case failed.
# The sources are copied to a scratch directory first, so edits made while
# this runs do not mix into it, and nothing in the repository is written.
# The reference files are only read; when they are missing, generate them
# with `make reference` (PyTorch) and run this again.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT
REF=$ROOT/build/ref
QUICK=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --src) SRC=$(cd "$2" && pwd) || exit 2; shift ;;
        --ref) REF=$(cd "$2" && pwd) || exit 2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portability.XXXXXX")
export WINEPREFIX="$WORK/wine" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
WINE_STARTED=0
cleanup() {
    if [ "$WINE_STARTED" = 1 ] && command -v wineserver >/dev/null; then wineserver -k >/dev/null 2>&1; fi
    if [ "$KEEP" = 1 ]; then echo "scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/src" "$WORK/logs" "$WORK/bin" "$WORK/run" "$WORK/data"
for f in train_gpt2_sft.c test_sft.c Makefile; do
    cp "$SRC/$f" "$WORK/src/" || { echo "cannot copy $SRC/$f" >&2; exit 2; }
done
S=$WORK/src
BIN=$WORK/bin
TINY=("$REF/gpt2_tiny.bin" "$REF/gpt2_tiny_debug_state.bin" "$REF/gpt2_tiny_reg_debug_state.bin"
      "$REF/gpt2_tiny_dropout_debug_state.bin")
# Flags of the Makefile without -march=native, for the cross builds.
XFLAGS="-O2 -ffp-contract=fast -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra"
# The strict set a standalone build is held to (nothing defined on the command line).
STRICT="-std=c99 -pedantic -Wall -Wextra"
BE_ERROR="error: this program reads little-endian files and needs a little-endian CPU"
TEST_TIMEOUT=${TEST_TIMEOUT:-900}

# ---------------------------------------------------------------------------
# Case machinery. A case runs in a subshell with its output in a log; it exits
# 0 (PASS), 77 (SKIP, reason on a line "SKIP: ...") or anything else (FAIL).
# A line "NOTE: ..." is shown after the verdict.

N=0; PASSED=0; FAILED=0; SKIPPED=0
declare -A CASE_OF   # binary name -> number of the case that built it

now() { date +%s.%N; }

run_case() {
    local title=$1; shift
    N=$((N + 1))
    local log; log=$WORK/logs/$(printf '%02d' "$N").log
    local t0; t0=$(now)
    ( set -o pipefail; cd "$WORK/run"; "$@" ) >"$log" 2>&1
    local rc=$?
    local dt; dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    local verdict note
    note=$(sed -n 's/^NOTE: //p' "$log" | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if [ $rc -eq 0 ]; then verdict=PASS; PASSED=$((PASSED + 1))
    elif [ $rc -eq 77 ]; then verdict=SKIP; SKIPPED=$((SKIPPED + 1)); note=$(sed -n 's/^SKIP: //p' "$log" | tail -1)
    else verdict=FAIL; FAILED=$((FAILED + 1))
    fi
    printf '%3d  %s  %-62s %6ss  %s\n' "$N" "$verdict" "$title" "$dt" "$note"
    if [ "$verdict" = FAIL ]; then
        # the first diagnostics and failed checks, else the end of the log
        { grep -E -i -e 'warning|error|^FAIL|^\^ |failed|not built' "$log" | grep -v '^NOTE: ' | head -n 8
          grep -q -E -i -e 'warning|error|^FAIL|^\^ |failed|not built' "$log" || tail -n 8 "$log"; } | sed 's/^/       | /'
    fi
}

skip() { echo "SKIP: $*"; exit 77; }
note() { echo "NOTE: $*"; }

need() { # need TOOL "packages": skip the case when TOOL is not installed
    command -v "$1" >/dev/null 2>&1 || skip "$1 not installed (apt-get install $2)"
}

need_ref() {
    local f
    for f in "${TINY[@]}"; do
        [ -f "$f" ] || skip "no reference file $f (run: make reference)"
    done
}

# build OUT COMMAND...: runs COMMAND -o OUT. Returns 0 when the compiler
# succeeds and prints nothing, 2 when it succeeds with diagnostics, 1 on failure.
build() {
    local out=$1; shift
    local msg; msg=$("$@" -o "$out" 2>&1)
    local rc=$?
    echo "\$ $* -o $out"
    [ -n "$msg" ] && echo "$msg"
    if [ $rc -ne 0 ]; then note "$(basename "$out"): build failed: $(first_diag "$msg")"; return 1; fi
    if [ -n "$msg" ]; then note "$(basename "$out"): $(summarize_diags "$msg")"; return 2; fi
    return 0
}

# The first error (else warning, else line) of compiler output, shortened.
first_diag() {
    { printf '%s\n' "$1" | grep -m1 -i -E 'error|undefined reference'
      printf '%s\n' "$1" | grep -m1 -i 'warning'; printf '%s\n' "$1" | head -n 1; } | head -n 1 |
        sed -e "s#$WORK/src/##g" -e "s#$WORK/bin/##g" -e 's#/tmp/[^ :]*\.o:##g' | cut -c 1-110
}
summarize_diags() {
    local count; count=$(printf '%s\n' "$1" | grep -c -i 'warning')
    if [ "$count" -gt 0 ]; then echo "$count warnings, first: $(first_diag "$1")"
    else echo "printed: $(first_diag "$1")"; fi
}

# tiny_test RUNNER... BINARY: the tiny reference test, in a fresh directory
# (the test writes build/test_roundtrip_checkpoint.bin relative to it).
tiny_test() { # COMMAND...: test_sft's self-check (no arguments), then its tiny-model test
    local dir; dir=$(mktemp -d "$WORK/run/t.XXXX"); mkdir -p "$dir/build"
    local out rc line lines="" status=0 args
    for args in self tiny; do
        # (tr: programs run under wine end their lines with \r\n)
        if [ $args = self ]; then
            out=$(cd "$dir" && timeout "$TEST_TIMEOUT" "$@" 2>&1 | tr -d '\r'); rc=$?
        else
            out=$(cd "$dir" && timeout "$TEST_TIMEOUT" "$@" "${TINY[@]}" 2>&1 | tr -d '\r'); rc=$?
        fi
        echo "$out"
        line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
        lines="$lines${lines:+; }$args: ${line:-no result line} (exit $rc)"
        { [ $rc -eq 0 ] && echo "$line" | grep -q ' 0 failed$'; } || status=1
    done
    note "test: $lines"
    return $status
}

# A small labelled dataset in the format of dev/FORMATS.md (16 train, 8 test).
make_datasets() {
    command -v python3 >/dev/null || return 1
    python3 - "$WORK/data" <<'EOF'
import os, random, struct, sys
def write(path, n, seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 20) for _ in range(n)]
    offsets = [sum(lengths[:i]) for i in range(n)]
    total = sum(lengths)
    with open(path, "wb") as f:
        f.write(struct.pack("<iiiiqq", 20261127, 1, 2, 50257, n, total).ljust(1024, b"\0"))
        f.write(struct.pack("<%dq" % n, *offsets))
        f.write(struct.pack("<%di" % n, *lengths))
        f.write(struct.pack("<%di" % n, *[i % 2 for i in range(n)]))
        f.write(struct.pack("<%di" % n, *[0] * n))
        f.write(struct.pack("<%dH" % total, *[rng.randrange(50257) for _ in range(total)]))
write(os.path.join(sys.argv[1], "train.bin"), 16, 1)
write(os.path.join(sys.argv[1], "test.bin"), 8, 2)
EOF
}
DATA_OK=0
make_datasets && DATA_OK=1

# smoke RUNNER... BINARY: 6 training steps saving at steps 2, 4 and 6 (so the
# checkpoint, which holds the AdamW moments, is replaced), then predictions
# written twice to the same file: replacing an existing file must work
# (Windows' rename does not replace).
smoke() {
    need_ref
    [ "$DATA_OK" = 1 ] || skip "python3 not installed, no test dataset (apt-get install python3)"
    [ -f "${!#}" ] || { note "not built: ${!#}"; return 1; }
    local dir; dir=$(mktemp -d "$WORK/run/s.XXXX")
    local D=$WORK/data
    cd "$dir" || return 1
    timeout "$TEST_TIMEOUT" "$@" -m "${TINY[0]}" --train "$D/train.bin" --test "$D/test.bin" --max-len 16 \
        --batch-size 2 --max-steps 6 --save-every 2 --save out.bin --log-every 1 2>err.txt ||
        { cat err.txt; note "training failed: $(tr -d '\r' < err.txt | tail -n 1)"; return 1; }
    [ -f out.bin ] || { note "no checkpoint written"; return 1; }
    local step moments  # header[9] and header[10] (dev/FORMATS.md section 2)
    step=$(od -An -t d4 -j 36 -N 4 out.bin | tr -d ' '); moments=$(od -An -t d4 -j 40 -N 4 out.bin | tr -d ' ')
    [ "$step" = 6 ] && [ "$moments" = 1 ] || { note "out.bin holds step $step and moments flag $moments, not 6 and 1"; return 1; }
    local i
    for i in 1 2; do
        timeout "$TEST_TIMEOUT" "$@" -m out.bin --predict "$D/test.bin" --output pred.csv --max-len 16 2>err.txt ||
            { cat err.txt; note "prediction run $i failed: $(tr -d '\r' < err.txt | tail -n 1)"; return 1; }
    done
    [ "$(wc -l < pred.csv)" -eq 9 ] || { note "pred.csv does not have 9 lines"; return 1; }
    note "trained 6 steps, saved 3 times, predictions written twice"
}

# Case bodies ----------------------------------------------------------------

strict_warnings() { # CC [OpenMP flag]
    local cc=$1 omp=${2:-}
    need "$cc" "$cc"
    local status=0 f
    for f in train_gpt2_sft.c test_sft.c; do
        build "$BIN/strict_${cc}${omp:+_omp}_${f%.c}.o" "$cc" $STRICT $omp -O2 -c "$S/$f" || status=1
    done
    [ $status -eq 0 ] && note "no diagnostics"
    return $status
}

make_build() { # NAME CC MAKE-ARGS...: the Makefile's own build in a copy of the sources
    local name=$1 cc=$2; shift 2
    need "$cc" "$cc"
    need make make
    local dir=$BIN/$name
    mkdir -p "$dir" && cp "$S"/train_gpt2_sft.c "$S"/test_sft.c "$S"/Makefile "$dir/"
    echo "\$ make CC=$cc $* train_gpt2_sft test_sft"
    make -C "$dir" --no-print-directory CC="$cc" "$@" train_gpt2_sft test_sft >"$dir/make.out" 2>"$dir/make.err"
    local rc=$?
    cat "$dir/make.out" "$dir/make.err"
    [ $rc -ne 0 ] && { note "make failed: $(first_diag "$(cat "$dir/make.err")")"; return 1; }
    [ -s "$dir/make.err" ] && { note "$(summarize_diags "$(cat "$dir/make.err")")"; return 1; }
    note "no diagnostics"
}

o0_case() { # NAME CC MAKE-ARGS...: make_build, then its tiny test
    make_build "$@" || return 1
    make_test "$1"
}

make_test() { # NAME: the tiny test built by make_build NAME
    need_ref
    [ -x "$BIN/$1/test_sft" ] || { note "not built (see case ${CASE_OF[$1]:-?})"; return 1; }
    tiny_test "$BIN/$1/test_sft"
}

tcc_case() {
    need tcc tcc
    need_ref
    local status=0
    build "$BIN/train_tcc" tcc -Wall "$S/train_gpt2_sft.c" -lm || status=$?
    build "$BIN/test_tcc" tcc -Wall "$S/test_sft.c" -lm || status=$?
    [ -x "$BIN/test_tcc" ] || return 1
    tiny_test "$BIN/test_tcc" || return 1
    smoke "$BIN/train_tcc" || return 1
    [ $status -eq 0 ]
}

cross_case() { # TRIPLET QEMU OPENMP-FLAG-OR-"" DEBIAN-ARCH (for the package names)
    local triplet=$1 qemu=$2 omp=${3:-}
    local cc=$triplet-gcc
    need "$cc" "gcc-$triplet"
    need "$qemu" "qemu-user"
    need_ref
    [ -d "/usr/$triplet" ] || skip "no /usr/$triplet (apt-get install libc6-dev-${4:-}-cross)"
    if [ -n "$omp" ] && [ "$("$cc" -print-file-name=libgomp.so)" = libgomp.so ]; then
        skip "no libgomp for $triplet (apt-get install libgomp1-${4:-}-cross)"
    fi
    local exe=$BIN/test_$triplet${omp:+_omp} status=0
    build "$exe" "$cc" $XFLAGS $omp "$S/test_sft.c" -lm || status=$?
    [ -x "$exe" ] || return 1
    tiny_test "$qemu" -L "/usr/$triplet" "$exe" || return 1
    [ $status -eq 0 ]
}

big_endian_case() {
    local triplet=s390x-linux-gnu qemu=qemu-s390x
    need "$triplet-gcc" "gcc-$triplet"
    need "$qemu" "qemu-user"
    need_ref
    local status=0
    build "$BIN/train_s390x" "$triplet-gcc" $XFLAGS "$S/train_gpt2_sft.c" -lm || status=$?
    build "$BIN/test_s390x" "$triplet-gcc" $XFLAGS "$S/test_sft.c" -lm || status=$?
    [ -x "$BIN/train_s390x" ] && [ -x "$BIN/test_s390x" ] || return 1
    local dir; dir=$(mktemp -d "$WORK/run/b.XXXX"); mkdir -p "$dir/build"; cd "$dir" || return 1
    local train=$WORK/data/train.bin test=$WORK/data/test.bin
    local run=0 refused=0
    refuses() { # what, command...: must exit non-zero, print only the error line, write nothing
        local what=$1; shift
        run=$((run + 1))
        echo "\$ $*"
        timeout "$TEST_TIMEOUT" "$@" >out.txt 2>err.txt
        local rc=$?
        cat out.txt err.txt
        if [ $rc -ne 0 ] && [ "$(cat err.txt)" = "$BE_ERROR" ] && [ ! -s out.txt ] &&
           [ -z "$(ls "$dir/build")" ] && [ ! -e pred.csv ] && [ ! -e out.bin ]; then
            refused=$((refused + 1))
        else
            echo "^ $what: expected exit != 0, stderr exactly '$BE_ERROR', empty stdout, no file written (exit $rc)"
        fi
    }
    local q=("$qemu" -L "/usr/$triplet")
    refuses "checkpoint" "${q[@]}" "$BIN/train_s390x" -m "${TINY[0]}" --predict "$test" --output pred.csv
    refuses "dataset" "${q[@]}" "$BIN/train_s390x" -m "${TINY[0]}" --train "$train" --test "$test" --max-steps 1 --save out.bin
    refuses "test_sft" "${q[@]}" "$BIN/test_s390x" "${TINY[@]}"
    note "$refused/$run runs refused with '$BE_ERROR'"
    [ $refused -eq $run ] || return 1
    [ $status -eq 0 ]
}

mingw_case() { # [OpenMP flag]
    local omp=${1:-} cc=x86_64-w64-mingw32-gcc
    need "$cc" "gcc-mingw-w64-x86-64"
    local status=0 suffix=${omp:+_omp}
    build "$BIN/train$suffix.exe" "$cc" $XFLAGS $omp -static "$S/train_gpt2_sft.c" -lm || status=1
    build "$BIN/test_sft$suffix.exe" "$cc" $XFLAGS $omp -static "$S/test_sft.c" -lm || status=1
    [ $status -eq 0 ] && note "no diagnostics"
    return $status
}

wine_cmd() { command -v wine 2>/dev/null || command -v wine64 2>/dev/null; }

wine_test() { # [suffix]
    local suffix=${1:-} w; w=$(wine_cmd) || skip "wine not installed (apt-get install wine64 wine)"
    need_ref
    [ -f "$BIN/test_sft$suffix.exe" ] || { note "not built (see case ${CASE_OF[test_sft$suffix.exe]:-?})"; return 1; }
    tiny_test "$w" "$BIN/test_sft$suffix.exe"
}

wine_smoke() {
    local w; w=$(wine_cmd) || skip "wine not installed (apt-get install wine64 wine)"
    need_ref
    local exe=$BIN/train.exe
    [ -f "$exe" ] || exe=$BIN/train_omp.exe
    [ -f "$exe" ] || { note "not built (see cases ${CASE_OF[train.exe]:-?}, ${CASE_OF[train_omp.exe]:-?})"; return 1; }
    smoke "$w" "$exe"
}

# The cases ------------------------------------------------------------------

T0=$(now)
echo "portability checks of $SRC ($([ $QUICK = 1 ] && echo quick || echo full)), scratch $WORK"
[ -f "${TINY[0]}" ] || echo "note: reference files missing in $REF; generate them with: make reference"
[ "$DATA_OK" = 1 ] || echo "note: python3 missing, training runs are skipped (apt-get install python3)"

run_case "gcc $STRICT -fopenmp: no diagnostics" strict_warnings gcc -fopenmp
run_case "gcc $STRICT: no diagnostics" strict_warnings gcc
run_case "clang $STRICT -fopenmp: no diagnostics" strict_warnings clang -fopenmp
run_case "clang $STRICT: no diagnostics" strict_warnings clang
CASE_OF[gcc_omp]=$((N + 1));    run_case "make CC=gcc: no diagnostics" make_build gcc_omp gcc
CASE_OF[gcc_noomp]=$((N + 1));  run_case "make CC=gcc NO_OMP=1: no diagnostics" make_build gcc_noomp gcc NO_OMP=1
CASE_OF[clang_omp]=$((N + 1));  run_case "make CC=clang: no diagnostics" make_build clang_omp clang
CASE_OF[clang_noomp]=$((N + 1)); run_case "make CC=clang NO_OMP=1: no diagnostics" make_build clang_noomp clang NO_OMP=1
run_case "tiny test, gcc -O3 OpenMP" make_test gcc_omp
run_case "tiny test, gcc -O3 no OpenMP" make_test gcc_noomp
run_case "tiny test, clang -O3 OpenMP" make_test clang_omp
run_case "tiny test, clang -O3 no OpenMP" make_test clang_noomp
run_case "training run (gcc -O3 OpenMP): save, replace, predict" smoke "$BIN/gcc_omp/train_gpt2_sft"

if [ $QUICK = 0 ]; then
    for cc in gcc clang; do
        for omp in omp noomp; do
            args=(OPT=-O0); [ $omp = noomp ] && args+=(NO_OMP=1)
            run_case "make CC=$cc ${args[*]}: no diagnostics, tiny test" o0_case "${cc}_O0_$omp" "$cc" "${args[@]}"
        done
    done
    run_case "tcc: no diagnostics, tiny test, training run" tcc_case
    run_case "aarch64 (qemu): tiny test" cross_case aarch64-linux-gnu qemu-aarch64 "" arm64
    run_case "aarch64 (qemu) OpenMP: tiny test" cross_case aarch64-linux-gnu qemu-aarch64 -fopenmp arm64
    run_case "riscv64 (qemu): tiny test" cross_case riscv64-linux-gnu qemu-riscv64 "" riscv64
    run_case "riscv64 (qemu) OpenMP: tiny test" cross_case riscv64-linux-gnu qemu-riscv64 -fopenmp riscv64
    run_case "armhf, 32-bit size_t (qemu): tiny test" cross_case arm-linux-gnueabihf qemu-arm "" armhf
    run_case "s390x, big-endian (qemu): refuses to run" big_endian_case
    CASE_OF[train.exe]=$((N + 1)); CASE_OF[test_sft.exe]=$((N + 1))
    run_case "MinGW-w64 x86_64: no diagnostics" mingw_case
    CASE_OF[train_omp.exe]=$((N + 1)); CASE_OF[test_sft_omp.exe]=$((N + 1))
    run_case "MinGW-w64 x86_64 OpenMP: no diagnostics" mingw_case -fopenmp
    WINE_STARTED=1
    run_case "wine: tiny test" wine_test
    run_case "wine: tiny test, OpenMP" wine_test _omp
    run_case "wine: training run: save, replace, predict" wine_smoke
fi

echo "total $(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')s, logs in $WORK/logs$([ $KEEP = 1 ] || echo ' (removed; --keep keeps them)')"
summary="$PASSED passed, $FAILED failed"
[ $SKIPPED -gt 0 ] && summary="$summary, $SKIPPED skipped"
echo "$summary"
[ $FAILED -eq 0 ]
