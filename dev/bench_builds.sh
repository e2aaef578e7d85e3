#!/usr/bin/env bash
# Matmul speed of every build dev/test_builds.sh tests: for gcc and clang and
# each -march this CPU can run, builds dev/bench_sft.c, measures the FMA peak
# of the ISA that build's kernel uses (`bench_sft peak`), then the 12 products
# of the four linear layers of GPT-2 124M at N = B*T (`bench_sft matmul`), and
# prints one row per build: peak, slowest and fastest product, both as % of
# that build's peak (the portable C kernel: of the -march=native peak, since
# its own build measures a scalar one). Run it on an otherwise idle machine.
#
#   dev/bench_builds.sh [-B 8] [-T 256] [--threads N]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=8; T=256; THREADS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        -B) B=$2; shift ;;
        -T) T=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
OUT=$ROOT/build/bench_builds
mkdir -p "$OUT"
source "$ROOT/dev/builds.sh"
cpuinfo() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'; }
echo "cpu: $(cpuinfo 'model name') (family $(cpuinfo 'cpu family') model $(cpuinfo model)), $THREADS threads, N = $((B * T))"
printf '%-6s %-16s %-22s %9s %17s %15s\n' cc march kernel "peak" "GFLOP/s (min-max)" "% of peak"
for cc in gcc clang; do
    command -v $cc >/dev/null || continue
    for build in "${BUILDS[@]}"; do
        name=${build%%:*}; flags=${build#*:}
        [ "$name" = reference ] && continue # the triple loop: minutes per product, and not meant to be fast
        if ! can_run $cc "$flags"; then printf '%-6s %-16s skipped: this CPU or compiler cannot run it\n' $cc $name; continue; fi
        bin=$OUT/bench_sft_${cc}_$name
        $cc $BUILD_FLAGS $flags \
            -o "$bin" "$ROOT/dev/bench_sft.c" -lm || { echo "$cc $name: build failed"; continue; }
        out=$(OMP_NUM_THREADS=$THREADS "$bin" matmul -B $B -T $T)
        echo "$out" > "$bin.log"
        [ "$name" = native ] && native_peak=$(echo "$out" | awk '/^result: peak/ { print $4 }')
        echo "$out" | awk -v cc=$cc -v name=$name -v native_peak="${native_peak:-0}" '
            /^build:/ { match($0, /matmul .* tile [0-9]+x[0-9]+/); k = substr($0, RSTART + 7, RLENGTH - 7); sub(/ vectors/, "", k); sub(/ tile /, " ", k) }
            /^result: peak/ { peak = $4 }
            /^result: matmul/ { for (i = 7; i <= 11; i += 2) { g = $(i + 1); if (min == "" || g < min) min = g; if (g > max) max = g } }
            END { if (name == "portable") peak = native_peak
                  printf "%-6s %-16s %-22s %9.1f %8.1f-%-8.1f %6.0f-%-3.0f%%\n", cc, name, k, peak, min, max, 100 * min / peak, 100 * max / peak }'
    done
done
