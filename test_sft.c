/*
test_sft.c: checks train_gpt2_sft.c, by itself and against the PyTorch reference.

  ./test_sft        (make check) the self-check, which needs nothing else: the
                    fast matmul against gemm_reference on odd shapes, strides
                    and accumulate; every parameter gradient of a tiny model
                    (classification and regression, with and without dropout)
                    against central differences of the loss; gradient
                    accumulation. See selfcheck() at the bottom.

The reference (dev/train_gpt2_sft.py debug-state) computes, in float64, the
logits, loss and every parameter gradient of a batch of variable-length
sequences, and the losses of 10 AdamW steps, with or without dropout (the
masks of dev/FORMATS.md section 5, computed independently on both sides).
This test runs the same batch through the C code (float32) and compares.

  ./test_sft MODEL.bin DEBUG_STATE.bin [more DEBUG_STATE.bin ...]

Logits, loss and each gradient tensor pass when
  max |c - ref| <= tolerance * max |ref|      (over the tensor)
and the per-step losses, gradient norms and learning rates when each value
satisfies |c - ref| <= tolerance * |ref|. Padding, thread count and a
checkpoint round trip must leave results bit-identical. Tolerances are set in
`Tolerances` below and stated in README.
*/
#define TESTING
#include "train_gpt2_sft.c"

typedef struct {
    double logits; // relative to max |logit|
    double loss;   // relative to the loss
    double grads;  // relative to max |grad| of each tensor
    double steps;  // relative to each value: every step's loss and gradient norm
    double lrs;    // relative to each step's learning rate (one float32 division)
} Tolerances;

static const Tolerances tolerances = {5e-6, 5e-6, 1e-5, 1e-5, 1e-6};

static int checks_passed = 0, checks_failed = 0;

static void report(int ok, const char *what) {
    if (ok) { checks_passed++; } else { checks_failed++; }
    printf("%s %s\n", ok ? "OK  " : "FAIL", what);
}

// Compares n floats; returns 1 when max|c - r| <= tol * max|r|.
static int compare(const char *label, const float *c, const float *r, size_t n, double tol) {
    double max_diff = 0.0, max_ref = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double diff = fabs((double)c[i] - (double)r[i]);
        if (!(diff <= max_diff)) { max_diff = diff; worst = i; } // also catches NaN
        if (fabs((double)r[i]) > max_ref) { max_ref = fabs((double)r[i]); }
    }
    const double scale = max_ref > 0.0 ? max_ref : 1.0;
    const int ok = max_diff <= tol * scale;
    char line[512];
    snprintf(line, sizeof(line), "%-10s max abs diff %.3e  rel %.3e  (tol %.0e, max |ref| %.3e, worst at %zu: %.7g vs %.7g)",
             label, max_diff, max_diff / scale, tol, max_ref, worst, n ? c[worst] : 0.0f, n ? r[worst] : 0.0f);
    report(ok, line);
    return ok;
}

// Compares n floats one by one; returns 1 when |c - r| <= tol * |r| for each.
static int compare_each(const char *label, const float *c, const float *r, size_t n, double tol) {
    double worst_rel = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double scale = fabs((double)r[i]) > 0.0 ? fabs((double)r[i]) : 1.0;
        const double rel = fabs((double)c[i] - (double)r[i]) / scale;
        if (!(rel <= worst_rel)) { worst_rel = rel; worst = i; }
    }
    const int ok = worst_rel <= tol;
    char line[512];
    snprintf(line, sizeof(line), "%-10s max rel diff %.3e (tol %.0e, each value; worst at %zu: %.7g vs %.7g)",
             label, worst_rel, tol, worst, n ? c[worst] : 0.0f, n ? r[worst] : 0.0f);
    report(ok, line);
    return ok;
}

// The debug state written by dev/train_gpt2_sft.py (dev/FORMATS.md section 4).
#define DEBUG_MAGIC 20261129
#define DEBUG_VERSION 2
typedef struct {
    int B, T, K, num_steps;
    OptimizerConfig opt;
    float dropout;         // 0: none
    uint64_t dropout_seed; // forward/backward is pass 0, update k is pass k
    int *tokens, *lengths, *labels;
    size_t num_logits;     // B*K, or for a language model (K = 0) B*2*V: positions 0 and lengths[b]-1
    float *targets, *score, *logits, loss, *grads, *step_losses, *step_lrs, *step_grad_norms;
} DebugState;

static const unsigned char *take(const MappedFile *f, size_t *offset, size_t bytes, const char *path) {
    if (*offset + bytes > f->size) { fail("%s: truncated debug state", path); }
    const unsigned char *p = f->data + *offset;
    *offset += bytes;
    return p;
}

static void *copy_out(const MappedFile *f, size_t *offset, size_t bytes, const char *path) {
    void *dst = malloc_or_die(bytes, path);
    memcpy(dst, take(f, offset, bytes, path), bytes);
    return dst;
}

// `cfg` is the model's configuration; the head size comes from the state.
static void load_debug_state(DebugState *s, const char *path, GPT2Config cfg) {
    MappedFile f;
    const char *why = map_file(&f, path);
    if (why != NULL) { fail("cannot open debug state %s: %s (run make test to generate it)", path, why); }
    if (f.size < HEADER_INTS * 4 || read_i32(f.data) != DEBUG_MAGIC || read_i32(f.data + 4) != DEBUG_VERSION) {
        fail("%s: not a version %d debug state (delete build/ref and run make test to regenerate it)", path, DEBUG_VERSION);
    }
    s->B = read_i32(f.data + 8);
    s->T = read_i32(f.data + 12);
    s->K = read_i32(f.data + 16);
    cfg.num_labels = s->K;
    char error[256];
    if (!config_is_valid(&cfg, error, sizeof(error))) { fail("%s: %s", path, error); }
    size_t sizes[NUM_PARAMETER_TENSORS], num_parameters = 0;
    parameter_sizes(sizes, cfg);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { num_parameters += sizes[i]; }
    const int C = cfg.channels;
    s->num_steps = read_i32(f.data + 20);
    s->opt.warmup_steps = read_i32(f.data + 24);
    s->opt.total_steps = read_i32(f.data + 28);
    float hyper[6];
    memcpy(hyper, f.data + 16 * 4, sizeof(hyper));
    s->opt.learning_rate = hyper[0];
    s->opt.weight_decay = hyper[1];
    s->opt.beta1 = hyper[2];
    s->opt.beta2 = hyper[3];
    s->opt.eps = hyper[4];
    s->opt.max_grad_norm = hyper[5];
    memcpy(&s->dropout, f.data + 22 * 4, 4);
    s->dropout_seed = (uint64_t)(uint32_t)read_i32(f.data + 23 * 4) | (uint64_t)(uint32_t)read_i32(f.data + 24 * 4) << 32;
    const size_t BT = (size_t)s->B * s->T;
    size_t offset = HEADER_INTS * 4;
    s->tokens = (int *)copy_out(&f, &offset, BT * 4, path);
    s->lengths = (int *)copy_out(&f, &offset, (size_t)s->B * 4, path);
    s->labels = NULL; s->targets = NULL;
    if (s->K >= 2) { s->labels = (int *)copy_out(&f, &offset, (size_t)s->B * 4, path); }
    else if (s->K == 1) { s->targets = (float *)copy_out(&f, &offset, (size_t)s->B * 4, path); }
    s->score = (float *)copy_out(&f, &offset, (size_t)s->K * C * 4, path);
    s->num_logits = (size_t)s->B * (s->K > 0 ? (size_t)s->K : 2 * (size_t)cfg.vocab_size);
    s->logits = (float *)copy_out(&f, &offset, s->num_logits * 4, path);
    memcpy(&s->loss, take(&f, &offset, 4, path), 4);
    s->grads = (float *)copy_out(&f, &offset, num_parameters * 4, path);
    s->step_losses = (float *)copy_out(&f, &offset, (size_t)s->num_steps * 4, path);
    s->step_lrs = (float *)copy_out(&f, &offset, (size_t)s->num_steps * 4, path);
    s->step_grad_norms = (float *)copy_out(&f, &offset, (size_t)s->num_steps * 4, path);
    if (offset != f.size) { fail("%s: %zu trailing bytes: debug state does not match the model", path, f.size - offset); }
    unmap_file(&f);
}

static void free_debug_state(DebugState *s) {
    free(s->tokens); free(s->lengths); free(s->labels); free(s->targets); free(s->score);
    free(s->logits); free(s->grads); free(s->step_losses); free(s->step_lrs); free(s->step_grad_norms);
}

static void load_model_for_state(GPT2 *model, const char *model_path, const DebugState *s) {
    gpt2_build_from_checkpoint(model, model_path, s->K, 0);
    memcpy(model->params.score, s->score, model->param_sizes[NUM_PARAMETER_TENSORS - 1] * sizeof(float));
}

static Batch batch_of(const DebugState *s) {
    Batch batch = {s->B, s->T, s->tokens, s->lengths, s->labels, s->targets};
    return batch;
}

// The dropout of forward pass `pass` of the state, in *d; NULL when it has none.
static const Dropout *dropout_of(const DebugState *s, int pass, Dropout *d) {
    if (s->dropout == 0.0f) { return NULL; }
    *d = dropout_for_pass(s->dropout, s->dropout_seed, (uint64_t)pass);
    return d;
}

// Runs pass `pass` of the state forward and backward into zeroed gradients.
static void forward_backward(GPT2 *model, const DebugState *s, const Batch *batch, int pass) {
    Dropout d;
    gpt2_forward(model, batch, 1.0f, dropout_of(s, pass, &d));
    gpt2_zero_grad(model);
    gpt2_backward(model);
}

// The logits the state holds, from the last forward pass: a classifier's
// (B,K); for a language model, which keeps none, those at positions 0 and
// lengths[b]-1 of each sequence, as the final hidden state there (pooled)
// times wte, in double.
static void logits_of_state(const GPT2 *model, const DebugState *s, float *out) {
    if (s->K > 0) { memcpy(out, model->logits, s->num_logits * sizeof(float)); return; }
    const int C = model->config.channels, V = model->config.vocab_size;
    for (int b = 0; b < s->B; b++) {
        for (int which = 0; which < 2; which++) {
            const int t = which == 0 ? 0 : s->lengths[b] - 1;
            const float *x = model->acts.pooled + ((size_t)b * s->T + t) * C;
            for (int v = 0; v < V; v++) {
                double dot = 0.0;
                for (int i = 0; i < C; i++) { dot += (double)x[i] * model->params.wte[(size_t)v * C + i]; }
                out[((size_t)b * 2 + which) * V + v] = (float)dot;
            }
        }
    }
}

// Logits, loss and every gradient tensor against the reference.
static void check_forward_backward(GPT2 *model, const DebugState *s) {
    Batch batch = batch_of(s);
    forward_backward(model, s, &batch, 0);
    float *logits = (float *)malloc_or_die(s->num_logits * sizeof(float), "logits");
    logits_of_state(model, s, logits);
    compare("logits", logits, s->logits, s->num_logits, tolerances.logits);
    free(logits);
    compare("loss", &model->loss, &s->loss, 1, tolerances.loss);
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (model->param_sizes[i] == 0) { continue; } // a language model's empty head
        char label[64];
        snprintf(label, sizeof(label), "d%s", parameter_names[i]);
        compare(label, model->grads_memory + offset, s->grads + offset, model->param_sizes[i], tolerances.grads);
        offset += model->param_sizes[i];
    }
}

// Padding must not change anything: new token ids in every padded position
// give bit-identical logits, loss and gradients.
static void check_padding_invariance(GPT2 *model, const DebugState *s) {
    Batch batch = batch_of(s);
    forward_backward(model, s, &batch, 0);
    const size_t n = model->num_parameters, BK = s->num_logits;
    float *grads = (float *)malloc_or_die(n * sizeof(float), "grads copy");
    float *logits = (float *)malloc_or_die(BK * sizeof(float), "logits copy");
    float *logits_again = (float *)malloc_or_die(BK * sizeof(float), "logits");
    memcpy(grads, model->grads_memory, n * sizeof(float));
    logits_of_state(model, s, logits);
    const float loss = model->loss;

    int *repadded = (int *)malloc_or_die((size_t)s->B * s->T * sizeof(int), "tokens");
    const int vocab = model->config.vocab_size;
    int padded_positions = 0;
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->T; t++) {
            const int real = t < s->lengths[b];
            repadded[b * s->T + t] = real ? s->tokens[b * s->T + t] : (s->tokens[b * s->T + t] * 7 + 13 + t) % vocab;
            padded_positions += !real;
        }
    }
    batch.tokens = repadded;
    forward_backward(model, s, &batch, 0);
    logits_of_state(model, s, logits_again);
    const int same = padded_positions > 0 && loss == model->loss &&
                     memcmp(logits, logits_again, BK * sizeof(float)) == 0 &&
                     memcmp(grads, model->grads_memory, n * sizeof(float)) == 0;
    char line[128];
    snprintf(line, sizeof(line), "padding   %d padded positions re-filled: logits, loss, gradients bit-identical", padded_positions);
    report(same, line);
    free(repadded); free(grads); free(logits); free(logits_again);
}

// Every reduction is split into pieces that do not depend on the number of
// threads, so one thread and many give bit-identical results (which is what
// makes --resume exact on any machine).
static void check_thread_invariance(GPT2 *model, const DebugState *s) {
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
    Batch batch = batch_of(s);
    const size_t n = model->num_parameters;
    float *grads = (float *)malloc_or_die(n * sizeof(float), "grads copy");
    omp_set_num_threads(1);
    forward_backward(model, s, &batch, 0);
    memcpy(grads, model->grads_memory, n * sizeof(float));
    const float loss = model->loss;
    omp_set_num_threads(threads > 1 ? threads : 2);
    forward_backward(model, s, &batch, 0);
    const int same = loss == model->loss && memcmp(grads, model->grads_memory, n * sizeof(float)) == 0;
    omp_set_num_threads(threads);
    char line[128];
    snprintf(line, sizeof(line), "threads   1 and %d threads: loss and gradients bit-identical", threads > 1 ? threads : 2);
    report(same, line);
    free(grads);
#else
    (void)model; (void)s;
    printf("SKIP threads    built without OpenMP: one thread only, nothing to compare\n");
#endif
}

// The loss trajectory of num_steps AdamW updates on the same batch, with the
// learning rate and pre-clipping gradient norm of each update.
static void check_training_steps(GPT2 *model, const DebugState *s) {
    Batch batch = batch_of(s);
    float *losses = (float *)malloc_or_die((size_t)s->num_steps * sizeof(float), "losses");
    float *lrs = (float *)malloc_or_die((size_t)s->num_steps * sizeof(float), "lrs");
    float *norms = (float *)malloc_or_die((size_t)s->num_steps * sizeof(float), "norms");
    gpt2_zero_grad(model);
    for (int step = 0; step < s->num_steps; step++) {
        Dropout d;
        gpt2_forward(model, &batch, 1.0f, dropout_of(s, step, &d));
        gpt2_backward(model);
        losses[step] = model->loss;
        lrs[step] = learning_rate_at(&s->opt, step);
        norms[step] = gpt2_update(model, &s->opt, step);
    }
    for (int step = 0; step < s->num_steps; step++) {
        printf("     step %2d  loss %.6f (ref %.6f)  lr %.4e (ref %.4e)  grad norm %.5f (ref %.5f)\n", step,
               losses[step], s->step_losses[step], lrs[step], s->step_lrs[step], norms[step], s->step_grad_norms[step]);
    }
    compare_each("step lrs", lrs, s->step_lrs, (size_t)s->num_steps, tolerances.lrs);
    compare_each("step norms", norms, s->step_grad_norms, (size_t)s->num_steps, tolerances.steps);
    compare_each("step loss", losses, s->step_losses, (size_t)s->num_steps, tolerances.steps);
    free(losses); free(lrs); free(norms);
}

// A state with dropout must be one that dropout changes: the logits without
// it differ from the reference's with it (else both sides could ignore it).
static void check_dropout_is_active(GPT2 *model, const DebugState *s) {
    if (s->dropout == 0.0f) { return; }
    Batch batch = batch_of(s);
    gpt2_forward(model, &batch, 0.0f, NULL);
    float *logits = (float *)malloc_or_die(s->num_logits * sizeof(float), "logits");
    logits_of_state(model, s, logits);
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < s->num_logits; i++) {
        max_diff = fmax(max_diff, fabs((double)logits[i] - s->logits[i]));
        max_ref = fmax(max_ref, fabs((double)s->logits[i]));
    }
    free(logits);
    char line[160];
    snprintf(line, sizeof(line), "dropout   %.2f changes the logits: without it they differ by %.3e (> 100 x the logits tolerance)",
             s->dropout, max_diff);
    report(max_diff > 100.0 * tolerances.logits * max_ref, line);
}

// The masks themselves, over 2^20 elements: the drop rate is p and the mean
// factor keep/(1-p) is 1 (each within 5 standard deviations), and masks of
// other sites, other passes and neighbouring elements agree as often as
// independent ones would, p^2 + (1-p)^2.
static void check_dropout_masks(void) {
    const int n = 1 << 20;
    const float ps[2] = {0.1f, 0.5f};
    for (int k = 0; k < 2; k++) {
        const double p = ps[k];
        const Dropout pass0 = dropout_for_pass(ps[k], 1337, 0), pass1 = dropout_for_pass(ps[k], 1337, 1);
        const DropoutSite a = dropout_site(&pass0, 1, 1024, 1, NULL), other_site = dropout_site(&pass0, 2, 1024, 1, NULL);
        const DropoutSite other_pass = dropout_site(&pass1, 1, 1024, 1, NULL);
        double dropped = 0.0, sum = 0.0, same_site = 0.0, same_pass = 0.0, same_neighbour = 0.0;
        for (int i = 0; i < n; i++) {
            const int keep = dropout_factor(&a, (uint64_t)i) != 0.0f;
            dropped += !keep;
            sum += dropout_factor(&a, (uint64_t)i);
            same_site += keep == (dropout_factor(&other_site, (uint64_t)i) != 0.0f);
            same_pass += keep == (dropout_factor(&other_pass, (uint64_t)i) != 0.0f);
            same_neighbour += keep == (dropout_factor(&a, (uint64_t)i + 1) != 0.0f);
        }
        const double agree = p * p + (1.0 - p) * (1.0 - p), sd_agree = sqrt(agree * (1.0 - agree) / n);
        const int ok = fabs(dropped / n - p) < 5.0 * sqrt(p * (1.0 - p) / n) &&
                       fabs(sum / n - 1.0) < 5.0 * sqrt(p / (1.0 - p) / n) &&
                       fabs(same_site / n - agree) < 5.0 * sd_agree && fabs(same_pass / n - agree) < 5.0 * sd_agree &&
                       fabs(same_neighbour / n - agree) < 5.0 * sd_agree;
        char line[256];
        snprintf(line, sizeof(line), "masks     p %.1f: dropped %.5f, mean factor %.5f, agreement with another site %.5f, "
                 "pass %.5f, neighbour %.5f (independent: %.5f)", p, dropped / n, sum / n, same_site / n,
                 same_pass / n, same_neighbour / n, agree);
        report(ok, line);
    }
}

// A checkpoint written and read back gives the same parameters (a language
// model's in llm.c's format, a classifier's with its head).
static void check_checkpoint_round_trip(GPT2 *model) {
    const char *path = "build/test_roundtrip_checkpoint.bin";
    gpt2_save_checkpoint(model, path);
    GPT2 loaded;
    gpt2_build_from_checkpoint(&loaded, path, is_language_model(&model->config) ? 0 : LABELS_OF_FILE, 0);
    const int same = loaded.num_parameters == model->num_parameters &&
                     loaded.config.num_labels == model->config.num_labels &&
                     memcmp(loaded.params_memory, model->params_memory, model->num_parameters * sizeof(float)) == 0;
    report(same, "checkpoint saved and reloaded: identical parameters and num_labels");
    gpt2_free(&loaded);
    remove(path);
}

// ----------------------------------------------------------------------------
// Self-check: `./test_sft` without arguments needs no PyTorch and no reference
// files. It checks the matrix multiplication against its specification
// gemm_reference, and every parameter gradient against central differences
// of the loss on a tiny model.

typedef void (*GemmKernel)(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate);

// gemm_serial as a caller outside a parallel region uses it: after reserving
// the packing buffers.
static void gemm_serial_reserved(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate) {
    gemm_workspace_reserve();
    gemm_serial(M, N, K, a, b, c, ldc, accumulate);
}

// gemm_packed as attention uses it: B packed once, then products that use
// only its first rows and columns. C[:, :n1] = A[:, :k1] B[:k1, :n1] from the
// packing of all of B, then C[:, :n1] += A[:, k1:] B[k1:, :n1] and
// C[:, n1:] = A B[:, n1:] from packings of those parts.
static void gemm_packed_prefixes(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate) {
    gemm_workspace_reserve();
    float *panels = (float *)malloc_or_die((gemm_packed_floats(K, N) + 1) * sizeof(float), "packed B");
    const int n1 = N / 2, k1 = K / 2;
    gemm_packed(M, n1, k1, a, gemm_pack(panels, b, K, N), c, ldc, accumulate);
    const StridedMatrix a_right = {a.data + k1 * a.col_stride, a.row_stride, a.col_stride};
    const StridedMatrix b_lower = {b.data + k1 * b.row_stride, b.row_stride, b.col_stride};
    gemm_packed(M, n1, K - k1, a_right, gemm_pack(panels, b_lower, K - k1, n1), c, ldc, 1);
    const StridedMatrix b_right = {b.data + n1 * b.col_stride, b.row_stride, b.col_stride};
    gemm_packed(M, N - n1, K, a, gemm_pack(panels, b_right, K, N - n1), c + n1, ldc, accumulate);
    free(panels);
}

typedef struct {
    const char *name;
    GemmKernel kernel;
    int threads; // OpenMP threads while it runs (ignored without OpenMP)
} MatmulUnderTest;

// A stored matrix of `rows` x `cols` floats, row-major with 2 floats of
// padding per row that hold NaN: a kernel that reads outside the matrix gets
// NaN into its result.
static float *padded_random_matrix(int rows, int cols, uint64_t *rng) {
    const long ld = cols + 2;
    float *m = (float *)malloc_or_die((size_t)rows * ld * sizeof(float), "matrix");
    for (long i = 0; i < rows * ld; i++) { m[i] = i % ld < cols ? 2.0f * rng_uniform(rng) - 1.0f : NAN; }
    return m;
}

// One product C (M,N) [+]= A (M,K) B (K,N) by `kernel` against gemm_reference.
// A is stored as (M,K) or, when a_transposed, as A^T (K,M), and read through
// its strides; likewise B as (K,N) or B^T (N,K). C has ldc = N + 3: the three
// columns past N hold a sentinel that must survive unchanged. Without
// accumulate C starts as NaN, which every element must overwrite.
//
// Tolerance, from float rounding: any way of summing K products (in any
// order, with or without fused multiply-adds, in KC-deep slices) plus the
// old C differs from the exact value by at most about (K + 1) u S, where
// S = sum_k |a_ik b_kj| + |c_ij|, u = FLT_EPSILON / 2 (Higham, "Accuracy and
// Stability of Numerical Algorithms", section 3.1); two such sums differ by
// at most twice that. So |c - ref| <= (K + 2) FLT_EPSILON S, with one extra
// rounding to spare. For K = 0 this demands exact results.
// Returns the largest |c - ref| / tolerance (infinite on a NaN or a changed
// sentinel) and clears *ok when it exceeds 1.
static double matmul_case(GemmKernel kernel, int M, int N, int K, int a_transposed, int b_transposed,
                          int accumulate, uint64_t *rng, int *ok) {
    const float sentinel = -12345.0f;
    float *a = a_transposed ? padded_random_matrix(K, M, rng) : padded_random_matrix(M, K, rng);
    float *b = b_transposed ? padded_random_matrix(N, K, rng) : padded_random_matrix(K, N, rng);
    const long lda = (a_transposed ? M : K) + 2, ldb = (b_transposed ? K : N) + 2, ldc = N + 3;
    const StridedMatrix sa = a_transposed ? (StridedMatrix){a, 1, lda} : (StridedMatrix){a, lda, 1};
    const StridedMatrix sb = b_transposed ? (StridedMatrix){b, 1, ldb} : (StridedMatrix){b, ldb, 1};
    float *c0 = (float *)malloc_or_die((size_t)M * ldc * sizeof(float), "C");
    float *ref = (float *)malloc_or_die((size_t)M * ldc * sizeof(float), "C reference");
    float *got = (float *)malloc_or_die((size_t)M * ldc * sizeof(float), "C result");
    for (long i = 0; i < M * ldc; i++) {
        c0[i] = i % ldc >= N ? sentinel : accumulate ? 2.0f * rng_uniform(rng) - 1.0f : NAN;
    }
    memcpy(ref, c0, (size_t)M * ldc * sizeof(float));
    memcpy(got, c0, (size_t)M * ldc * sizeof(float));
    gemm_reference(M, N, K, sa, sb, ref, ldc, accumulate);
    kernel(M, N, K, sa, sb, got, ldc, accumulate);
    double worst = 0.0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N + 3; j++) {
            const long at = (long)i * ldc + j;
            if (j >= N) {
                if (memcmp(&got[at], &sentinel, sizeof(float)) != 0) { worst = INFINITY; }
                continue;
            }
            double s = accumulate ? fabs((double)c0[at]) : 0.0;
            for (int k = 0; k < K; k++) {
                s += fabs((double)sa.data[i * sa.row_stride + k * sa.col_stride] * sb.data[k * sb.row_stride + j * sb.col_stride]);
            }
            const double tolerance = (K + 2) * (double)FLT_EPSILON * s, error = fabs((double)got[at] - ref[at]);
            const double ratio = error == 0.0 ? 0.0 : error / tolerance; // NaN for a NaN result
            if (!(ratio <= worst)) { worst = isnan(ratio) ? INFINITY : ratio; }
        }
    }
    if (!(worst <= 1.0)) { *ok = 0; }
    free(a); free(b); free(c0); free(ref); free(got);
    return worst;
}

// The fast matrix multiplication (gemm, on several threads, gemm_serial and
// gemm_packed) against gemm_reference: odd shapes, shapes that cross the register tile
// (GEMM_MR x GEMM_NR) and the blocks (GEMM_MC, GEMM_KC, GEMM_NC, GEMM_A_STRIP), K = 0; for
// each, both storage orders of A and of B, with and without accumulate.
// A new kernel joins by adding a line to `kernels`.
static void selfcheck_matmul(void) {
    static const int shapes[][3] = { // M, N, K
        {1, 1, 1}, {1, 5, 7}, {5, 1, 13}, {7, 13, 1}, {13, 7, 5}, {5, 7, 0}, {67, 129, 0},
        {GEMM_MR, GEMM_NR, 8}, {GEMM_MR + 1, GEMM_NR + 1, 9},
        {67, 129, 300}, {300, 67, 129}, {129, 13, 67},
        {GEMM_MC, GEMM_NR, GEMM_KC}, {GEMM_MC + 1, GEMM_NR + 3, GEMM_KC + 2},
        {13, 67, 770}, {37, GEMM_NC + 6, 13}, {GEMM_NC + 6, 5, 7}, {29, 3 * GEMM_NR + 5, GEMM_KC + 40},
        {GEMM_A_STRIP + 7, GEMM_NC + 6, 16}, {13, GEMM_NC + 6, GEMM_KC + 40},
    };
    const MatmulUnderTest kernels[] = {
        {"gemm", gemm, 1},
        {"gemm", gemm, 3},
        {"gemm_serial", gemm_serial_reserved, 1},
        {"gemm_packed", gemm_packed_prefixes, 1},
    };
    const int num_shapes = (int)(sizeof(shapes) / sizeof(shapes[0]));
    const int num_kernels = (int)(sizeof(kernels) / sizeof(kernels[0]));
#ifdef _OPENMP
    const int threads_before = omp_get_max_threads();
#endif
    uint64_t rng = rng_seed(7);
    for (int k = 0; k < num_kernels; k++) {
#ifdef _OPENMP
        omp_set_num_threads(kernels[k].threads);
#else
        if (kernels[k].threads > 1) { continue; } // the same as its one-thread line
#endif
        for (int s = 0; s < num_shapes; s++) {
            const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            int ok = 1;
            double worst = 0.0;
            for (int variant = 0; variant < 8; variant++) {
                worst = fmax(worst, matmul_case(kernels[k].kernel, M, N, K, variant & 1, (variant >> 1) & 1,
                                                variant >> 2, &rng, &ok));
            }
            char line[256];
            snprintf(line, sizeof(line), "matmul    %-11s %d thread%s M %4d N %4d K %3d: A, A^T x B, B^T x accumulate 0, 1: "
                     "max |c - ref| / tol %.2e", kernels[k].name, kernels[k].threads, kernels[k].threads > 1 ? "s" : " ",
                     M, N, K, worst);
            report(ok, line);
        }
    }
#ifdef _OPENMP
    omp_set_num_threads(threads_before);
#endif
}

// A tiny GPT-2 for the gradient check: 2 layers (so both block_forward and
// last_block_forward run), 2 heads of 8 channels, 37 tokens, 12 positions.
// Weights are drawn larger than GPT-2's 0.02 so that attention is far from
// uniform and every term of every gradient matters; LayerNorm weights and all
// biases are random too, so their gradients are generic.
static void selfcheck_model(GPT2 *model, int num_labels) {
    memset(model, 0, sizeof(*model));
    model->loss = -1.0f;
    const GPT2Config cfg = {12, 37, 40, 2, 2, 16, num_labels}; // maxT, V, Vp, L, NH, C, K
    validate_config(&cfg, "self-check model");
    model->config = cfg;
    gpt2_allocate_parameters(model);
    uint64_t rng = rng_seed(2024 + (uint64_t)num_labels);
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        const int is_layernorm_weight = t == 2 || t == 8 || t == 14; // ln1w, ln2w, lnfw
        const float std = parameter_decays[t] ? 0.4f : 0.1f;
        for (size_t i = 0; i < model->param_sizes[t]; i++) {
            model->params_memory[offset + i] = (is_layernorm_weight ? 1.0f : 0.0f) + std * rng_normal(&rng);
        }
        offset += model->param_sizes[t];
    }
}

// The loss of the last forward pass, recomputed in double from its logits:
// independent of loss_forward_backward, whose dlogits the backward pass uses.
// A language model's logits are recomputed from its final hidden states
// (pooled) and wte, independently of lm_head_forward_backward.
static double loss_of_logits(const GPT2 *model, const Batch *batch) {
    const int K = model->config.num_labels;
    double total = 0.0;
    if (K == 0) {
        // with the sampled softmax: over the batch's distinct next tokens, logits corrected by -log q_v
        const int C = model->config.channels, V = model->config.vocab_size;
        long predictions = 0;
        int *candidate = (int *)calloc_or_die((size_t)V, sizeof(int), "candidates");
        for (int b = 0; b < batch->B; b++) {
            for (int t = 0; t + 1 < batch->lengths[b]; t++) { candidate[batch->tokens[b * batch->T + t + 1]] = 1; predictions++; }
        }
        double *z = (double *)malloc_or_die((size_t)V * sizeof(double), "logits");
        for (int b = 0; b < batch->B; b++) {
            for (int t = 0; t + 1 < batch->lengths[b]; t++) {
                const float *x = model->acts.pooled + ((size_t)b * batch->T + t) * C;
                double max_z = -INFINITY, sum = 0.0;
                for (int v = 0; v < V; v++) {
                    z[v] = 0.0;
                    for (int i = 0; i < C; i++) { z[v] += (double)x[i] * model->params.wte[(size_t)v * C + i]; }
                    if (model->sampled_softmax) {
                        const double q = 1.0 - pow(1.0 - model->unigram[v], (double)predictions);
                        z[v] = candidate[v] ? z[v] - log(q) : -INFINITY;
                    }
                    max_z = fmax(max_z, z[v]);
                }
                for (int v = 0; v < V; v++) { sum += exp(z[v] - max_z); }
                total += log(sum) + max_z - z[batch->tokens[b * batch->T + t + 1]];
            }
        }
        free(z);
        free(candidate);
        return total / predictions;
    }
    for (int b = 0; b < batch->B; b++) {
        const float *z = model->logits + b * K;
        if (K == 1) { total += ((double)z[0] - batch->targets[b]) * ((double)z[0] - batch->targets[b]); continue; }
        double max_z = z[0], sum = 0.0;
        for (int k = 1; k < K; k++) { max_z = fmax(max_z, z[k]); }
        for (int k = 0; k < K; k++) { sum += exp(z[k] - max_z); }
        total += log(sum) + max_z - z[batch->labels[b]];
    }
    return total / batch->B;
}

static double loss_at(GPT2 *model, const Batch *batch, const Dropout *dropout) {
    gpt2_forward(model, batch, 1.0f, dropout);
    return loss_of_logits(model, batch);
}

// Gradient accumulation (--grad-accum): two forward/backward passes with
// grad_scale 1/2 into the same gradients give the gradient of one pass with
// grad_scale 1. Halving is exact in float, so only sums that start from a
// non-zero gradient round differently: 1e-5 of each tensor's largest value.
static void check_gradient_accumulation(GPT2 *model, const Batch *batch, const Dropout *dropout) {
    const size_t n = model->num_parameters;
    float *whole = (float *)malloc_or_die(n * sizeof(float), "gradient copy");
    gpt2_forward(model, batch, 1.0f, dropout);
    gpt2_zero_grad(model);
    gpt2_backward(model);
    memcpy(whole, model->grads_memory, n * sizeof(float));
    gpt2_zero_grad(model);
    for (int half = 0; half < 2; half++) {
        gpt2_forward(model, batch, 0.5f, dropout);
        gpt2_backward(model);
    }
    double worst = 0.0;
    int worst_tensor = 0;
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        double max_diff = 0.0, max_ref = 0.0;
        for (size_t i = offset; i < offset + model->param_sizes[t]; i++) {
            max_diff = fmax(max_diff, fabs((double)model->grads_memory[i] - whole[i]));
            max_ref = fmax(max_ref, fabs((double)whole[i]));
        }
        const double rel = max_ref > 0.0 ? max_diff / max_ref : max_diff;
        if (!(rel <= worst)) { worst = rel; worst_tensor = t; }
        offset += model->param_sizes[t];
    }
    char line[192];
    snprintf(line, sizeof(line), "accumulation K=%d dropout %.1f: two half-scaled passes vs one, worst d%s rel diff %.3e (tol 1e-05)",
             model->config.num_labels, dropout != NULL ? dropout->p : 0.0f, parameter_names[worst_tensor], worst);
    report(worst <= 1e-5, line);
    free(whole);
}

// Central differences against the analytic gradient of every parameter
// tensor. The model computes in float32 (a difference quotient cannot run in
// double), so fd = (L(w+eps) - L(w-eps)) / 2eps carries two errors:
// truncation, about eps^2 |L'''| / 6, relative to the derivative about
// (eps / the scale of w)^2, and rounding, about |L| delta / eps, delta the
// relative float32 error of a forward pass (a few 1e-7 here). eps = 1e-2 keeps
// both small for weights of size ~0.4: measured, at most 0.3% relative and
// 1e-5 absolute. Each checked element must satisfy
//   |fd - g| <= 1e-2 max(|fd|, |g|) + 1e-4 max(1, |L|),
// three and ten times those. Checked per tensor: its largest gradient element, 5
// random elements (in wte and wpe mostly rows the batch does not use, whose
// gradient and difference must both be 0), and the derivative along the
// whole gradient, d/ds L(w + s g/|g|) = |g|, which a wrong scale or sign in
// any part of the tensor changes.
static void selfcheck_gradients(int num_labels, float dropout_p, int sampled_softmax) {
    GPT2 model;
    selfcheck_model(&model, num_labels);
    double unigram[64]; // token frequencies for the sampled softmax: uneven, some tiny
    for (int v = 0; v < model.config.vocab_size; v++) { unigram[v] = (v % 7 == 0 ? 1e-6 : 1.0) / (1.0 + v); }
    double total = 0.0;
    for (int v = 0; v < model.config.vocab_size; v++) { total += unigram[v]; }
    for (int v = 0; v < model.config.vocab_size; v++) { unigram[v] /= total; }
    model.sampled_softmax = sampled_softmax;
    model.unigram = unigram;
    enum { B = 3, T = 10 };
    int tokens[B * T], lengths[B] = {T, 6, 1}, labels[B] = {2, 0, 1};
    float targets[B] = {3.0f, 8.0f, 1.5f};
    uint64_t rng = rng_seed(99);
    for (int i = 0; i < B * T; i++) { tokens[i] = (int)(rng_next(&rng) % (uint64_t)model.config.vocab_size); }
    for (int b = 0; b < B; b++) { labels[b] %= num_labels > 0 ? num_labels : 1; }
    Batch batch = {B, T, tokens, lengths, num_labels >= 2 ? labels : NULL, num_labels == 1 ? targets : NULL};
    const Dropout drop = dropout_for_pass(dropout_p, 1337, 5); // one fixed pass: the same masks in every evaluation
    const Dropout *dropout = dropout_p > 0.0f ? &drop : NULL;

    const double loss = loss_at(&model, &batch, dropout);
    gpt2_zero_grad(&model);
    gpt2_backward(&model);
    // A language model's loss (23 predictions of 37-way softmaxes) curves more: at eps 1e-2 its
    // truncation error reached 1.5% of the whole-gradient derivative; 3e-3 cuts it (10/3)^2-fold, as measured.
    const double eps = num_labels == 0 ? 3e-3 : 1e-2, rel = 1e-2, floor = 1e-4 * fmax(1.0, fabs(loss));
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        const size_t n = model.param_sizes[t];
        if (n == 0) { continue; } // a language model's empty head
        float *w = model.params_memory + offset;
        const float *g = model.grads_memory + offset;
        enum { NUM_ELEMENTS = 6 };
        size_t elements[NUM_ELEMENTS] = {0};
        double norm = 0.0;
        for (size_t i = 0; i < n; i++) {
            if (fabs(g[i]) > fabs(g[elements[0]])) { elements[0] = i; }
            norm += (double)g[i] * g[i];
        }
        norm = sqrt(norm);
        for (int e = 1; e < NUM_ELEMENTS; e++) { elements[e] = (size_t)(rng_next(&rng) % n); }
        double worst = 0.0, worst_fd = 0.0, worst_g = 0.0;
        for (int e = 0; e <= NUM_ELEMENTS; e++) {
            double fd, analytic;
            if (e < NUM_ELEMENTS) { // one element: w_i +- eps, divided by the step actually taken in float
                const size_t i = elements[e];
                const float w0 = w[i], up = (float)(w0 + eps), down = (float)(w0 - eps);
                w[i] = up;
                const double loss_up = loss_at(&model, &batch, dropout);
                w[i] = down;
                const double loss_down = loss_at(&model, &batch, dropout);
                w[i] = w0;
                fd = (loss_up - loss_down) / ((double)up - down);
                analytic = g[i];
            } else { // along the whole gradient direction u = g / |g| (skipped when g is 0)
                if (norm == 0.0) { continue; }
                float *w0 = (float *)malloc_or_die(n * sizeof(float), "weights copy");
                memcpy(w0, w, n * sizeof(float));
                for (size_t i = 0; i < n; i++) { w[i] = (float)(w0[i] + eps * g[i] / norm); }
                const double loss_up = loss_at(&model, &batch, dropout);
                for (size_t i = 0; i < n; i++) { w[i] = (float)(w0[i] - eps * g[i] / norm); }
                const double loss_down = loss_at(&model, &batch, dropout);
                memcpy(w, w0, n * sizeof(float));
                free(w0);
                fd = (loss_up - loss_down) / (2.0 * eps);
                analytic = norm;
            }
            const double ratio = fabs(fd - analytic) / (rel * fmax(fabs(fd), fabs(analytic)) + floor);
            if (!(ratio <= worst)) { worst = ratio; worst_fd = fd; worst_g = analytic; }
        }
        char line[256];
        snprintf(line, sizeof(line), "gradient  K=%d%s dropout %.1f d%-8s %d elements and |g| %.3e: worst %.3f of tol "
                 "(central difference %.6e, backward %.6e)", num_labels, sampled_softmax ? " sampled" : "", dropout_p,
                 parameter_names[t], NUM_ELEMENTS, norm, worst, worst_fd, worst_g);
        report(worst <= 1.0, line);
        offset += n;
    }
    check_gradient_accumulation(&model, &batch, dropout);
    gpt2_free(&model);
}

// The language model's head, in chunks of LM_CHUNK_ROWS rows, against a plain
// double-precision computation of the same formulas on 2.5 chunks' rows:
// loss, dx and dwte (summed across the chunks) agree within float rounding,
// and the padding columns V..Vp neither enter the softmax nor get gradient.
static void selfcheck_language_model_head(void) {
    enum { C = 8, V = 37, Vp = 40 };
    const int N = 2 * LM_CHUNK_ROWS + LM_CHUNK_ROWS / 2;
    uint64_t rng = rng_seed(7);
    float *x = (float *)malloc_or_die((size_t)N * C * sizeof(float), "x");
    float *wte = (float *)malloc_or_die((size_t)Vp * C * sizeof(float), "wte");
    float *dx = (float *)malloc_or_die((size_t)N * C * sizeof(float), "dx");
    float *dwte = (float *)malloc_or_die((size_t)Vp * C * sizeof(float), "dwte");
    float *logits = (float *)malloc_or_die((size_t)LM_CHUNK_ROWS * Vp * sizeof(float), "logits");
    int *targets = (int *)malloc_or_die((size_t)N * sizeof(int), "targets");
    double *ref_dx = (double *)calloc_or_die((size_t)N * C, sizeof(double), "dx reference");
    double *ref_dwte = (double *)calloc_or_die((size_t)Vp * C, sizeof(double), "dwte reference");
    for (int i = 0; i < N * C; i++) { x[i] = 2.0f * rng_normal(&rng); }
    for (int i = 0; i < Vp * C; i++) { wte[i] = rng_normal(&rng); } // padding rows too: they must not matter
    for (int i = 0; i < N; i++) { targets[i] = (int)(rng_next(&rng) % V); }
    const float grad_scale = 0.5f;
    const double loss = lm_head_forward_backward(dx, dwte, logits, x, targets, wte, NULL, N, C, V, Vp, grad_scale);
    double ref_loss = 0.0;
    for (int i = 0; i < N; i++) {
        double z[V], max_z = -INFINITY, sum = 0.0;
        for (int v = 0; v < V; v++) {
            z[v] = 0.0;
            for (int c = 0; c < C; c++) { z[v] += (double)x[i * C + c] * wte[v * C + c]; }
            max_z = fmax(max_z, z[v]);
        }
        for (int v = 0; v < V; v++) { sum += exp(z[v] - max_z); }
        ref_loss += log(sum) + max_z - z[targets[i]];
        for (int v = 0; v < V; v++) {
            const double dz = (exp(z[v] - max_z) / sum - (v == targets[i])) * grad_scale / N;
            for (int c = 0; c < C; c++) {
                ref_dx[i * C + c] += dz * wte[v * C + c];
                ref_dwte[v * C + c] += dz * x[i * C + c];
            }
        }
    }
    double worst_dx = 0.0, max_dx = 0.0, worst_dwte = 0.0, max_dwte = 0.0;
    for (int i = 0; i < N * C; i++) { worst_dx = fmax(worst_dx, fabs(dx[i] - ref_dx[i])); max_dx = fmax(max_dx, fabs(ref_dx[i])); }
    int padding_zero = 1;
    for (int i = 0; i < Vp * C; i++) {
        worst_dwte = fmax(worst_dwte, fabs(dwte[i] - ref_dwte[i]));
        max_dwte = fmax(max_dwte, fabs(ref_dwte[i]));
        if (i >= V * C && dwte[i] != 0.0f) { padding_zero = 0; }
    }
    const double loss_rel = fabs(loss - ref_loss) / ref_loss, dx_rel = worst_dx / max_dx, dwte_rel = worst_dwte / max_dwte;
    char line[256];
    snprintf(line, sizeof(line), "lm head   %d rows in chunks of %d: loss rel diff %.2e, dx %.2e, dwte %.2e (tol 1e-5), "
             "padding columns' dwte zero: %s", N, LM_CHUNK_ROWS, loss_rel, dx_rel, dwte_rel, padding_zero ? "yes" : "no");
    report(loss_rel <= 1e-5 && dx_rel <= 1e-5 && dwte_rel <= 1e-5 && padding_zero, line);
    free(x); free(wte); free(dx); free(dwte); free(logits); free(targets); free(ref_dx); free(ref_dwte);
}

// Appends a dataset's 1024-byte header and arrays (dev/FORMATS.md section 3)
// for unlabelled documents of the given lengths, with token ids 1, 2, 3, ...
static unsigned char *toy_dataset(const int *lengths, int n, size_t *size) {
    int64_t tokens = 0;
    for (int i = 0; i < n; i++) { tokens += lengths[i]; }
    *size = DATA_HEADER_BYTES + 20 * (size_t)n + 2 * (size_t)tokens;
    unsigned char *h = (unsigned char *)calloc_or_die(*size, 1, "toy dataset");
    const int32_t head[4] = {DATA_MAGIC, DATA_VERSION, 0, 50257};
    memcpy(h, head, sizeof(head));
    const int64_t counts[2] = {n, tokens};
    memcpy(h + 16, counts, sizeof(counts));
    int64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const int32_t label = -1, stars = 0;
        memcpy(h + DATA_HEADER_BYTES + 8 * (size_t)i, &offset, 8);
        memcpy(h + DATA_HEADER_BYTES + 8 * (size_t)n + 4 * (size_t)i, &lengths[i], 4);
        memcpy(h + DATA_HEADER_BYTES + 12 * (size_t)n + 4 * (size_t)i, &label, 4);
        memcpy(h + DATA_HEADER_BYTES + 16 * (size_t)n + 4 * (size_t)i, &stars, 4);
        offset += lengths[i];
    }
    for (int64_t t = 0; t < tokens; t++) {
        const uint16_t id = (uint16_t)(1 + t);
        memcpy(h + DATA_HEADER_BYTES + 20 * (size_t)n + 2 * (size_t)t, &id, 2);
    }
    return h;
}

// The language model's rows: two toy datasets as one stream (a held-out
// tail of documents excluded), cut into rows of T. Joining the rows, each
// without the token it shares with the previous one, must give exactly
// <|endoftext|> doc <|endoftext|> doc ..., cut after the last full row.
static void selfcheck_token_stream(void) {
    const int lengths_a[3] = {5, 1, 9}, lengths_b[3] = {4, 7, 3};
    size_t size_a, size_b;
    unsigned char *bytes_a = toy_dataset(lengths_a, 3, &size_a), *bytes_b = toy_dataset(lengths_b, 3, &size_b);
    Dataset a, b;
    char error[256];
    const int parsed = dataset_parse(&a, bytes_a, size_a, 0, error, sizeof(error)) &&
                       dataset_parse(&b, bytes_b, size_b, 0, error, sizeof(error));
    if (!parsed) { report(0, error); return; }
    a.path = "toy a"; b.path = "toy b";
    const Dataset *sets[2] = {&a, &b};
    enum { T = 4 };
    TokenStream s;
    token_stream_open(&s, sets, 2, 0, 5, T); // the last document of b is held out
    int expected[64], n = 0;
    for (int k = 0; k < 2; k++) {
        const Dataset *d = sets[k];
        for (int64_t i = 0; i < d->num_examples && n < 30; i++) {
            if (k == 1 && i == 2) { break; }
            expected[n++] = END_OF_TEXT;
            for (int t = 0; t < d->lengths[i]; t++) { expected[n++] = d->tokens[d->offsets[i] + t]; }
        }
    }
    int ok = s.num_rows == (n - 1) / (T - 1);
    for (int64_t r = 0; r < s.num_rows; r++) {
        int row[T];
        token_stream_row(&s, r, row);
        for (int t = 0; t < T; t++) { ok = ok && row[t] == expected[r * (T - 1) + t]; }
    }
    char line[160];
    snprintf(line, sizeof(line), "lm rows   2 datasets, 5 of 6 documents, %d tokens with <|endoftext|>: %lld rows of %d, "
             "joined they are the stream", n, (long long)s.num_rows, T);
    report(ok, line);
    token_stream_free(&s);
    free(bytes_a); free(bytes_b);
}

// The row reductions against plain loops: max_of_floats, which compares
// integer keys of the floats, must return exactly the largest value (of
// either sign, across many orders of magnitude, with zeros of both signs),
// and sum_of_floats / dot_of_floats must agree with double-precision sums
// to float rounding, for every length through the sixteen lanes' tails.
static void selfcheck_row_reductions(void) {
    float x[300], y[300];
    uint64_t rng = rng_seed(11);
    int max_ok = 1, sum_ok = 1;
    for (int trial = 0; trial < 3000; trial++) {
        const int n = 1 + trial % 300;
        const float magnitude = trial % 3 == 0 ? 1e30f : (trial % 3 == 1 ? 1e-30f : 1.0f);
        for (int i = 0; i < n; i++) {
            x[i] = (2.0f * rng_uniform(&rng) - 1.0f) * magnitude - (trial % 5 == 0 ? magnitude : 0.0f);
            y[i] = 2.0f * rng_uniform(&rng) - 1.0f;
            if (trial % 7 == 0 && i % 2 == 0) { x[i] = i % 4 == 0 ? 0.0f : -0.0f; }
        }
        float largest = x[0];
        double sum = 0.0, dot = 0.0, sum_abs = 0.0, dot_abs = 0.0;
        for (int i = 0; i < n; i++) {
            if (x[i] > largest) { largest = x[i]; }
            sum += x[i];
            dot += (double)x[i] * y[i];
            sum_abs += fabs(x[i]);
            dot_abs += fabs((double)x[i] * y[i]);
        }
        if (max_of_floats(x, n) != largest) { max_ok = 0; }
        if (fabs(sum_of_floats(x, n) - sum) > 1e-6 * sum_abs || fabs(dot_of_floats(x, y, n) - dot) > 1e-6 * dot_abs) {
            sum_ok = 0;
        }
    }
    const float negatives[3] = {-3.0f, -FLT_MAX, -1e-38f}, infinite[2] = {-INFINITY, INFINITY};
    if (max_of_floats(negatives, 3) != -1e-38f || max_of_floats(infinite, 2) != INFINITY) { max_ok = 0; }
    report(max_ok, "row max       max_of_floats == a plain loop's maximum, 3000 rows of 1..300 floats");
    report(sum_ok, "row sums      sum_of_floats, dot_of_floats within 1e-6 of double sums, 3000 rows");
}

// --time-budget's arithmetic, worked by hand: 10 updates took 2.5 s, the
// last 9 of them 2.25 s (0.25 s each), so a 60 s budget has room for
// (60 - 2.5) / 0.25 = 230 more.
static void selfcheck_time_budget(void) {
    report(steps_within_budget(60.0, 2.5, 2.25, 10, 100000) == 240, "time budget   60 s at 0.25 s per update after 2.5 s: 240 updates");
    report(steps_within_budget(60.0, 2.5, 2.25, 10, 200) == 200, "time budget   never more than the planned updates");
    report(steps_within_budget(2.0, 2.5, 2.25, 10, 200) == 10, "time budget   spent already: stop at the updates made");
}

static int selfcheck(void) {
    printf("== self-check: matmul against gemm_reference; gradients against central differences\n");
    selfcheck_matmul();
    selfcheck_language_model_head();
    selfcheck_token_stream();
    selfcheck_time_budget();
    selfcheck_row_reductions();
    const int labels[3] = {3, 1, 0}; // classes, regression, language model
    const float dropouts[2] = {0.0f, 0.2f};
    for (int k = 0; k < 3; k++) {
        for (int d = 0; d < 2; d++) { selfcheck_gradients(labels[k], dropouts[d], 0); }
    }
    selfcheck_gradients(0, 0.0f, 1); // the language model with the sampled softmax
    gemm_workspace_release();
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    printf("matmul kernel: %s, tile %dx%d\n", GEMM_KERNEL_NAME, GEMM_MR, GEMM_NR);
    require_little_endian();
    if (argc == 1) { return selfcheck(); }
    if (argc < 3) {
        fprintf(stderr, "usage: %s [MODEL.bin DEBUG_STATE.bin [DEBUG_STATE.bin ...]]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    GPT2Config cfg; // the model's shapes, read from its header alone
    MappedFile model_file;
    char error[256];
    int has_head, step, has_moments;
    const char *why = map_file(&model_file, model_path);
    if (why != NULL) { fail("cannot open %s: %s", model_path, why); }
    if (!checkpoint_parse_header(model_file.data, model_file.size, LABELS_OF_FILE, &cfg, &has_head, &step, &has_moments, error, sizeof(error))) {
        fail("%s: %s", model_path, error);
    }
    unmap_file(&model_file);
    check_dropout_masks();
    for (int i = 2; i < argc; i++) {
        DebugState s;
        load_debug_state(&s, argv[i], cfg);
        printf("== %s with %s: B=%d T=%d num_labels=%d dropout %g lengths", model_path, argv[i], s.B, s.T, s.K, s.dropout);
        for (int b = 0; b < s.B; b++) { printf(" %d", s.lengths[b]); }
        printf("\n");

        GPT2 model;
        load_model_for_state(&model, model_path, &s);
        check_forward_backward(&model, &s);
        check_padding_invariance(&model, &s);
        check_thread_invariance(&model, &s);
        check_dropout_is_active(&model, &s);
        check_training_steps(&model, &s);
        check_checkpoint_round_trip(&model);
        gpt2_free(&model);
        free_debug_state(&s);
    }
    gemm_workspace_release();
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}
