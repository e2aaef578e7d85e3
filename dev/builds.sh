# Sourced by dev/test_builds.sh and dev/bench_builds.sh: the builds of the
# matmul kernel they test and measure, as "name:flags", and can_run.
BUILDS=("native:-march=native" "x86-64-v4:-march=x86-64-v4" "sapphirerapids:-march=sapphirerapids"
        "x86-64-v3:-march=x86-64-v3" "znver3:-march=znver3" "default:"
        "portable:-march=native -DGEMM_PORTABLE" "reference:-march=native -DGEMM_REFERENCE")
BUILD_FLAGS="-O3 -ffp-contract=fast -fno-math-errno -std=c99 -D_POSIX_C_SOURCE=200809L -fopenmp"

host_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
# can_run CC FLAGS: the compiler takes FLAGS and this CPU has every x86 vector
# extension they enable
can_run() {
    local macros
    macros=$("$1" $2 -dM -E - </dev/null 2>/dev/null) || return 1
    for ext in AVX512F:avx512f AVX2:avx2 FMA:fma AVX512BW:avx512bw AVX512VL:avx512vl AVX512FP16:avx512_fp16; do
        if echo "$macros" | grep -q "__${ext%%:*}__ 1" && ! echo " $host_flags " | grep -q " ${ext#*:} "; then return 1; fi
    done
}
