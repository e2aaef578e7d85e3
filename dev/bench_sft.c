/*
bench_sft.c: speed and memory of train_gpt2_sft.c's training step and matmul.

  make bench_sft
  ./build/bench_sft step   [--depth 12] [-B 8] [-T 256] [--steps 3] [--lengths random|full]
  ./build/bench_sft matmul [-B 8] [-T 256] [--reps 5]

`step` times forward + backward + AdamW on a random-initialised model of the
GPT-2 shapes (d12 = 124M) and prints tokens/s (real tokens, padding excluded)
and seconds per step, after one warm-up step. `matmul` times the three
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

static void fill_random(float *x, size_t n, uint64_t seed) {
    uint64_t state = rng_seed(seed);
    for (size_t i = 0; i < n; i++) { x[i] = rng_normal(&state); }
}

static int bench_step(int depth, int B, int T, int steps, int full_lengths) {
    GPT2 model;
    gpt2_build_from_scratch(&model, depth, 2, 1024, 1);
    Batch batch;
    batch.B = B; batch.T = T;
    batch.tokens = (int *)malloc_or_die((size_t)B * T * sizeof(int), "tokens");
    batch.lengths = (int *)malloc_or_die((size_t)B * sizeof(int), "lengths");
    batch.labels = (int *)malloc_or_die((size_t)B * sizeof(int), "labels");
    batch.targets = NULL;
    uint64_t state = rng_seed(7);
    long real_tokens = 0;
    for (int b = 0; b < B; b++) {
        batch.lengths[b] = full_lengths || b == 0 ? T : 1 + (int)(rng_next(&state) % (uint64_t)T);
        batch.labels[b] = b % 2;
        real_tokens += batch.lengths[b];
        for (int t = 0; t < T; t++) { batch.tokens[b * T + t] = (int)(rng_next(&state) % 50257); }
    }
    OptimizerConfig opt = {5e-5f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, 0, 1000};
    double forward_s = 0, backward_s = 0, update_s = 0;
    for (int step = -1; step < steps; step++) { // step -1 warms up
        const double t0 = seconds_now();
        gpt2_forward(&model, &batch, 1.0f);
        const double t1 = seconds_now();
        gpt2_backward(&model);
        const double t2 = seconds_now();
        gpt2_update(&model, &opt, step < 0 ? 0 : step);
        const double t3 = seconds_now();
        if (step >= 0) { forward_s += t1 - t0; backward_s += t2 - t1; update_s += t3 - t2; }
    }
    const double per_step = (forward_s + backward_s + update_s) / steps;
    printf("d%d B=%d T=%d real tokens %ld: %.3f s/step (forward %.3f, backward %.3f, AdamW+zero %.3f)\n",
           depth, B, T, real_tokens, per_step, forward_s / steps, backward_s / steps, update_s / steps);
    printf("result: step tokens_per_s %.1f seconds_per_step %.4f peak_rss_mib %.0f threads %d\n",
           real_tokens / per_step, per_step, peak_rss_mib(), max_threads());
    gpt2_free(&model);
    free(batch.tokens); free(batch.lengths); free(batch.labels);
    return 0;
}

// GFLOP/s of out (N,OC) = inp (N,C) W^T and its two backward products.
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
    printf("%-8s N=%d C=%d OC=%d: forward %.1f GFLOP/s, dinp %.1f GFLOP/s, dweight %.1f GFLOP/s\n", name, N, C, OC,
           flops / best[0] * 1e-9, flops / best[1] * 1e-9, flops / best[2] * 1e-9);
    printf("result: matmul %s %d %d %d forward %.2f dinp %.2f dweight %.2f\n", name, N, C, OC,
           flops / best[0] * 1e-9, flops / best[1] * 1e-9, flops / best[2] * 1e-9);
    free(inp); free(weight); free(out); free(dweight); free(dinp);
}

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "step") != 0 && strcmp(argv[1], "matmul") != 0)) {
        fprintf(stderr, "usage: %s step|matmul [--depth N] [-B B] [-T T] [--steps N] [--reps N] [--lengths random|full]\n", argv[0]);
        return 2;
    }
    int depth = 12, B = 8, T = 256, steps = 3, reps = 5, full_lengths = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--depth") == 0) { depth = (int)parse_long(argv[i], argv[i + 1], 1, 48); }
        else if (strcmp(argv[i], "-B") == 0) { B = (int)parse_long(argv[i], argv[i + 1], 1, 1024); }
        else if (strcmp(argv[i], "-T") == 0) { T = (int)parse_long(argv[i], argv[i + 1], 1, 1024); }
        else if (strcmp(argv[i], "--steps") == 0) { steps = (int)parse_long(argv[i], argv[i + 1], 1, 1000); }
        else if (strcmp(argv[i], "--reps") == 0) { reps = (int)parse_long(argv[i], argv[i + 1], 1, 1000); }
        else if (strcmp(argv[i], "--lengths") == 0) { full_lengths = strcmp(argv[i + 1], "random") != 0; }
        else { fail("unknown flag %s", argv[i]); }
    }
    if (strcmp(argv[1], "step") == 0) { return bench_step(depth, B, T, steps, full_lengths); }
    const int C = 64 * depth, N = B * T;
    bench_linear("qkv", N, C, 3 * C, reps);
    bench_linear("attproj", N, C, C, reps);
    bench_linear("fc", N, C, 4 * C, reps);
    bench_linear("fcproj", N, 4 * C, C, reps);
    printf("peak RSS %.0f MiB\n", peak_rss_mib());
    return 0;
}
