/*
bench_sft.c: speed and memory of train_gpt2_sft.c's training step and matmul.

  make build/bench_sft
  ./build/bench_sft step   [--depth 12] [-B 8] [-T 256] [--steps 3] [--lengths random|full] [--dropout 0]
                           [--data data/imdb/imdb_train.bin]   (real batches, T = max length)
  ./build/bench_sft matmul [-B 8] [-T 256] [--reps 5]

`step` times forward + backward + AdamW on a random-initialised model of the
GPT-2 shapes (d12 = 124M) and prints tokens/s (real tokens, padding excluded)
and seconds per step, after one warm-up step; --dropout P also runs the
same steps with dropout and prints the time ratio (default off, as the
PyTorch baseline of dev/bench_train.py). With --data, batch s (s = 0 is
the warm-up) holds the B examples starting at (s+1)(N-B)/(steps+2) in the
order of truncated length (ties by index): length-grouped batches of real
reviews, padded to their longest; dev/bench_train.py picks the same ones. `matmul` times the three
products of every linear layer (forward y = x W^T, backward dx = dy W and
dW = dy^T x) at the model's shapes and prints GFLOP/s. Both print one
machine-readable line starting with "result:" for dev/bench_train.py.
Peak memory (max RSS) is printed at the end.
*/
#define TESTING
#include "../train_gpt2_sft.c"
#include <sys/resource.h>

static double peak_rss_mib(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss / 1024.0; // Linux reports KiB
}

static long minor_page_faults(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
}

static void fill_random(float *x, size_t n, uint64_t seed) {
    uint64_t state = rng_seed(seed);
    for (size_t i = 0; i < n; i++) { x[i] = rng_normal(&state); }
}

static const Dataset *sort_dataset; // for the qsort comparison below
static int sort_max_len;
static int by_truncated_length(const void *x, const void *y) {
    const int64_t i = *(const int64_t *)x, j = *(const int64_t *)y;
    const int li = truncated_length(sort_dataset->lengths[i], sort_max_len);
    const int lj = truncated_length(sort_dataset->lengths[j], sort_max_len);
    if (li != lj) { return li < lj ? -1 : 1; }
    return i < j ? -1 : (i > j);
}

// Memory bandwidth the way AdamW uses it: four arrays of n floats, each read
// and written once per pass (x = 0.5 x + y ...), 32 bytes per element, as
// AdamW reads and writes the parameters, m, v and the gradient (zeroed).
static double bench_bandwidth(size_t n) {
    float *x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = (float *)malloc_or_die(n * sizeof(float), "bandwidth array");
        #pragma omp parallel for schedule(static)
        for (long j = 0; j < (long)n; j++) { x[i][j] = (float)(j % 7); } // touched by the thread that uses it
    }
    double best = 0.0;
    for (int rep = 0; rep < 4; rep++) {
        const double t0 = seconds_now();
        #pragma omp parallel for schedule(static)
        for (long j = 0; j < (long)n; j++) {
            const float a = x[0][j], b = x[1][j], c = x[2][j], d = x[3][j];
            x[0][j] = 0.5f * a + b; x[1][j] = 0.5f * b + c; x[2][j] = 0.5f * c + d; x[3][j] = 0.0f;
        }
        const double gbs = 32.0 * n / (seconds_now() - t0) * 1e-9;
        if (rep > 0 && gbs > best) { best = gbs; }
    }
    for (int i = 0; i < 4; i++) { free(x[i]); }
    printf("bandwidth: 4 arrays of %zu floats read and written: %.1f GB/s\n", n, best);
    return best;
}

static double bench_step(int depth, int B, int T, int steps, int full_lengths, const char *data_path, float dropout) {
    GPT2 model;
    gpt2_build_from_scratch(&model, depth, 2, 1024, 1);
    Batch batch = batch_alloc(B, T);
    Dataset data;
    int64_t *order = NULL;
    if (data_path != NULL) {
        dataset_open(&data, data_path, 50257);
        order = (int64_t *)malloc_or_die((size_t)data.num_examples * sizeof(int64_t), "order");
        for (int64_t i = 0; i < data.num_examples; i++) { order[i] = i; }
        sort_dataset = &data;
        sort_max_len = T;
        qsort(order, (size_t)data.num_examples, sizeof(int64_t), by_truncated_length);
    }
    uint64_t state = rng_seed(7);
    OptimizerConfig opt = {5e-5f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, 0, 1000};
    double forward_s = 0, backward_s = 0, update_s = 0;
    long real_tokens = 0, positions = 0;
    gpt2_ensure_buffers(&model, B, T); // as train() does before its first step
    for (int step = -1; step < steps; step++) { // step -1 warms up
        if (data_path != NULL) {
            const int64_t start = (int64_t)(step + 2) * (data.num_examples - B) / (steps + 2);
            fill_batch(&batch, &data, order + start, B, T, TRUNCATE_HEAD, 0);
        } else {
            batch.B = B; batch.T = T;
            for (int b = 0; b < B; b++) {
                batch.lengths[b] = full_lengths || b == 0 ? T : 1 + (int)(rng_next(&state) % (uint64_t)T);
                batch.labels[b] = b % 2;
                for (int t = 0; t < T; t++) { batch.tokens[b * T + t] = (int)(rng_next(&state) % 50257); }
            }
        }
        if (step >= 0) {
            for (int b = 0; b < B; b++) { real_tokens += batch.lengths[b]; }
            positions += (long)batch.B * batch.T;
        }
        const long faults0 = minor_page_faults();
        const double t0 = seconds_now();
        const Dropout drop = dropout_for_pass(dropout, 1, (uint64_t)(step + 1));
        gpt2_forward(&model, &batch, 1.0f, dropout > 0.0f ? &drop : NULL);
        const double t1 = seconds_now();
        gpt2_backward(&model);
        const double t2 = seconds_now();
        gpt2_update(&model, &opt, step < 0 ? 0 : step);
        const double t3 = seconds_now();
        if (step >= 0) { forward_s += t1 - t0; backward_s += t2 - t1; update_s += t3 - t2; }
        // memory first touched inside a step costs a page fault per 4 KiB page
        printf("step %d: %ld minor page faults\n", step + 1, minor_page_faults() - faults0);
    }
    const double per_step = (forward_s + backward_s + update_s) / steps;
    printf("d%d B=%d T<=%d dropout %g: %ld real tokens in %ld positions over %d steps: %.3f s/step (forward %.3f, backward %.3f, AdamW+zero %.3f)\n",
           depth, B, T, dropout, real_tokens, positions, steps, per_step, forward_s / steps, backward_s / steps, update_s / steps);
    // AdamW's pass moves 32 bytes per parameter, the gradient norm's 4 more
    const double adamw_gbs = 36.0 * (double)model.num_parameters / (update_s / steps) * 1e-9;
    const double bandwidth = bench_bandwidth(model.num_parameters);
    printf("AdamW+zero: %.1f GB/s (36 bytes per parameter), %.0f%% of the measured bandwidth\n", adamw_gbs,
           100.0 * adamw_gbs / bandwidth);
    printf("result: step tokens_per_s %.1f seconds_per_step %.4f peak_rss_mib %.0f threads %d\n",
           real_tokens / (per_step * steps), per_step, peak_rss_mib(), max_threads());
    gpt2_free(&model);
    batch_free(&batch);
    if (data_path != NULL) { free(order); dataset_close(&data); }
    return per_step;
}

// The machine's peak for the kernel's ISA: every thread runs chains of
// independent multiply-adds acc = acc * m + d on vectors of the micro-kernel's
// width (one fused multiply-add each where the ISA has FMA: 2 flops per lane),
// enough chains to cover the FMA latency on every FMA port.
#ifdef GEMM_VECTOR_BYTES
typedef gemm_vector peak_vector;
#define PEAK_LANES GEMM_VF
#define PEAK_CHAINS (GEMM_VECTOR_BYTES == 64 ? 24 : 12) // of 32 or 16 vector registers
#else
typedef float peak_vector;
#define PEAK_LANES 1
#define PEAK_CHAINS 12
#endif
// One thread's chains, at the kernel's full vector width.
#ifndef GEMM_FULL_WIDTH
#define GEMM_FULL_WIDTH
#endif
GEMM_FULL_WIDTH static float peak_chains(long rounds, float seed) {
    peak_vector acc[PEAK_CHAINS];
    const peak_vector m = (peak_vector){0} + 0.999999f, d = (peak_vector){0} + 1e-6f * seed;
    for (int c = 0; c < PEAK_CHAINS; c++) { acc[c] = (peak_vector){0} + (float)c; }
    for (long i = 0; i < rounds; i++) {
        #pragma GCC unroll 32
        for (int c = 0; c < PEAK_CHAINS; c++) { acc[c] = acc[c] * m + d; }
    }
    peak_vector total = acc[0];
    for (int c = 1; c < PEAK_CHAINS; c++) { total += acc[c]; }
    float lanes[PEAK_LANES], sum = 0.0f;
    memcpy(lanes, &total, sizeof lanes);
    for (int l = 0; l < PEAK_LANES; l++) { sum += lanes[l]; }
    return sum;
}

static double bench_peak(void) {
    const long rounds = 1000L * 1000 * 1000 / PEAK_CHAINS; // 0.1-0.3 s per repetition
    double best = 0.0, sink = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        const double t0 = seconds_now();
        #pragma omp parallel reduction(+:sink)
        sink += peak_chains(rounds, (float)(1 + thread_id()));
        const double gflops = 2.0 * PEAK_LANES * PEAK_CHAINS * (double)rounds * max_threads() / (seconds_now() - t0) * 1e-9;
        if (gflops > best) { best = gflops; }
    }
    printf("peak: %s, %d-float vectors, %d threads: %.1f GFLOP/s (%.1f per thread) [checksum %.3g]\n", GEMM_KERNEL_NAME,
           PEAK_LANES, max_threads(), best, best / max_threads(), sink);
    printf("result: peak gflops %.2f threads %d\n", best, max_threads());
    return best;
}

// GFLOP/s of out (N,OC) = inp (N,C) W^T and its two backward products.
static double peak_gflops = 0.0; // measured first by `matmul`

static void bench_linear(const char *name, int N, int C, int OC, int reps) {
    float *inp = (float *)malloc_or_die((size_t)N * C * sizeof(float), "inp");
    float *weight = (float *)malloc_or_die((size_t)OC * C * sizeof(float), "weight");
    float *out = (float *)malloc_or_die((size_t)N * OC * sizeof(float), "out");
    float *dweight = (float *)calloc_or_die((size_t)OC * C, sizeof(float), "dweight");
    float *dinp = (float *)malloc_or_die((size_t)N * C * sizeof(float), "dinp");
    fill_random(inp, (size_t)N * C, 1);
    fill_random(weight, (size_t)OC * C, 2);
    fill_random(out, (size_t)N * OC, 3);
    const double flops = 2.0 * N * C * OC;
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = 0; r <= reps; r++) { // r = 0 warms up
        double t0 = seconds_now();
        matmul_forward_accumulate(out, inp, weight, N, C, OC);
        double t1 = seconds_now();
        StridedMatrix dy = {out, OC, 1}, w = {weight, C, 1};
        gemm(N, C, OC, dy, w, dinp, C, 0);
        double t2 = seconds_now();
        StridedMatrix dy_t = {out, 1, OC}, x = {inp, C, 1};
        gemm(OC, C, N, dy_t, x, dweight, C, 1);
        double t3 = seconds_now();
        if (r > 0) {
            if (t1 - t0 < best[0]) { best[0] = t1 - t0; }
            if (t2 - t1 < best[1]) { best[1] = t2 - t1; }
            if (t3 - t2 < best[2]) { best[2] = t3 - t2; }
        }
    }
    printf("%-8s N=%d C=%d OC=%d: forward %.1f GFLOP/s (%.0f%% of peak), dinp %.1f (%.0f%%), dweight %.1f (%.0f%%)\n",
           name, N, C, OC, flops / best[0] * 1e-9, 100 * flops / best[0] * 1e-9 / peak_gflops,
           flops / best[1] * 1e-9, 100 * flops / best[1] * 1e-9 / peak_gflops,
           flops / best[2] * 1e-9, 100 * flops / best[2] * 1e-9 / peak_gflops);
    printf("result: matmul %s %d %d %d forward %.2f dinp %.2f dweight %.2f\n", name, N, C, OC,
           flops / best[0] * 1e-9, flops / best[1] * 1e-9, flops / best[2] * 1e-9);
    free(inp); free(weight); free(out); free(dweight); free(dinp);
}

// GFLOP/s of attention's matrix products, timed inside attention_forward and
// attention_backward (so the softmax and its backward are in the time too):
// per (b, h) and query block [r0, r1) the forward multiplies (r1-r0, hs) by
// (hs, r1) and (r1-r0, r1) by (r1, hs); the backward does four such products.
static void bench_attention(int B, int T, int C, int NH, int reps) {
    const size_t n_qkv = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C;
    float *qkv = (float *)malloc_or_die(n_qkv * sizeof(float), "qkv");
    float *dqkv = (float *)malloc_or_die(n_qkv * sizeof(float), "dqkv");
    float *out = (float *)malloc_or_die(n_out * sizeof(float), "out");
    float *att = (float *)malloc_or_die((size_t)B * NH * T * T * sizeof(float), "att");
    float *scratch = (float *)malloc_or_die((size_t)max_threads() * attention_scratch_floats(T, C / NH) * sizeof(float), "scratch");
    fill_random(qkv, n_qkv, 4);
    fill_random(out, n_out, 5);
    const int hs = C / NH;
    double flops = 0.0; // of the forward; the backward has twice as many
    for (int r0 = 0; r0 < T; r0 += ATTENTION_BLOCK) {
        const int r1 = r0 + ATTENTION_BLOCK < T ? r0 + ATTENTION_BLOCK : T;
        flops += 2.0 * 2.0 * (r1 - r0) * r1 * hs;
    }
    flops *= (double)B * NH;
    double best[2] = {1e30, 1e30};
    for (int r = 0; r <= reps; r++) {
        const double t0 = seconds_now();
        attention_forward(out, att, scratch, qkv, B, T, C, NH, NULL);
        const double t1 = seconds_now();
        attention_backward(dqkv, scratch, out, qkv, att, B, T, C, NH, NULL);
        const double t2 = seconds_now();
        if (r > 0) {
            if (t1 - t0 < best[0]) { best[0] = t1 - t0; }
            if (t2 - t1 < best[1]) { best[1] = t2 - t1; }
        }
    }
    printf("%-8s B=%d T=%d C=%d NH=%d: forward %.1f GFLOP/s (%.0f%% of peak), backward %.1f (%.0f%%)\n", "attention",
           B, T, C, NH, flops / best[0] * 1e-9, 100 * flops / best[0] * 1e-9 / peak_gflops,
           2 * flops / best[1] * 1e-9, 100 * 2 * flops / best[1] * 1e-9 / peak_gflops);
    printf("result: attention forward %.2f backward %.2f\n", flops / best[0] * 1e-9, 2 * flops / best[1] * 1e-9);
    free(qkv); free(dqkv); free(out); free(att); free(scratch);
}

// The value of the first "key : value" line of /proc/cpuinfo whose key is
// `key`, or "unknown" (not Linux, or no such line).
static void cpuinfo_value(const char *key, char *value, size_t size) {
    snprintf(value, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) { return; }
    char line[512];
    const size_t n = strlen(key);
    while (fgets(line, sizeof line, f) != NULL) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, key, n) == 0 && colon != NULL && strspn(line + n, " \t") == (size_t)(colon - line - n)) {
            snprintf(value, size, "%s", colon[1] == ' ' ? colon + 2 : colon + 1);
            value[strcspn(value, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
}

// What this binary's matmul was built for: CPU (virtual machines often name
// only the vendor's line, e.g. "AMD EPYC", so its family and model too),
// compiler, ISA and register tile.
static void print_build(void) {
    char cpu[256], family[32], model[32];
    cpuinfo_value("model name", cpu, sizeof cpu);
    cpuinfo_value("cpu family", family, sizeof family);
    cpuinfo_value("model", model, sizeof model);
#ifdef __VERSION__
    const char *compiler = __VERSION__;
#else
    const char *compiler = "unknown";
#endif
    printf("build: cpu \"%s\" (family %s model %s) compiler \"%s\" matmul %s tile %dx%d blocks MC %d KC %d NC %d A strip %d threads %d\n", cpu, family,
           model, compiler, GEMM_KERNEL_NAME, GEMM_MR, GEMM_NR, GEMM_MC, GEMM_KC, GEMM_NC, GEMM_A_STRIP, max_threads());
}

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "step") != 0 && strcmp(argv[1], "matmul") != 0 && strcmp(argv[1], "peak") != 0)) {
        fprintf(stderr, "usage: %s step|matmul|peak [--depth N] [-B B] [-T T] [--steps N] [--reps N] [--lengths random|full] [--dropout P] [--vocab]\n", argv[0]);
        return 2;
    }
    int depth = 12, B = 8, T = 256, steps = 3, reps = 5, full_lengths = 1, vocab = 0;
    const char *data_path = NULL;
    float dropout = 0.0f;
    for (int i = 2; i < argc; i += 2) {
        if (strcmp(argv[i], "--vocab") == 0) { vocab = 1; i--; continue; }
        if (i + 1 >= argc) { fail("missing value for %s", argv[i]); }
        if (strcmp(argv[i], "--depth") == 0) { depth = (int)parse_long(argv[i], argv[i + 1], 1, 48); }
        else if (strcmp(argv[i], "-B") == 0) { B = (int)parse_long(argv[i], argv[i + 1], 1, 1024); }
        else if (strcmp(argv[i], "-T") == 0) { T = (int)parse_long(argv[i], argv[i + 1], 1, 1024); }
        else if (strcmp(argv[i], "--steps") == 0) { steps = (int)parse_long(argv[i], argv[i + 1], 1, 1000); }
        else if (strcmp(argv[i], "--reps") == 0) { reps = (int)parse_long(argv[i], argv[i + 1], 1, 1000); }
        else if (strcmp(argv[i], "--lengths") == 0) { full_lengths = strcmp(argv[i + 1], "random") != 0; }
        else if (strcmp(argv[i], "--data") == 0) { data_path = argv[i + 1]; }
        else if (strcmp(argv[i], "--dropout") == 0) { dropout = parse_float(argv[i], argv[i + 1], 0.0, 0.99); }
        else { fail("unknown flag %s", argv[i]); }
    }
    print_build();
    gemm_workspace_reserve();
    if (strcmp(argv[1], "peak") == 0) { bench_peak(); return 0; }
    if (strcmp(argv[1], "step") == 0) {
        if (dropout == 0.0f) { bench_step(depth, B, T, steps, full_lengths, data_path, 0.0f); return 0; }
        // dropout's cost: the same steps without it first, as the baseline
        const double without = bench_step(depth, B, T, steps, full_lengths, data_path, 0.0f);
        const double with = bench_step(depth, B, T, steps, full_lengths, data_path, dropout);
        printf("dropout %g: %.3f s/step vs %.3f without, ratio %.3f\n", dropout, with, without, with / without);
        return 0;
    }
    peak_gflops = bench_peak();
    const int C = 64 * depth, N = B * T;
    bench_linear("qkv", N, C, 3 * C, reps);
    bench_linear("attproj", N, C, C, reps);
    bench_linear("fc", N, C, 4 * C, reps);
    bench_linear("fcproj", N, 4 * C, C, reps);
    bench_attention(B, T, C, depth, reps);
    if (vocab) { bench_linear("vocab", N, C, 50304, reps < 2 ? reps : 2); }
    printf("peak RSS %.0f MiB\n", peak_rss_mib());
    return 0;
}
