/*
test_sft.c: checks train_gpt2_sft.c against the PyTorch reference.

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
    if (map_file(&f, path) != 0) { fail("cannot open debug state %s: %s (run make test to generate it)", path, strerror(errno)); }
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
    else { s->targets = (float *)copy_out(&f, &offset, (size_t)s->B * 4, path); }
    s->score = (float *)copy_out(&f, &offset, (size_t)s->K * C * 4, path);
    s->logits = (float *)copy_out(&f, &offset, (size_t)s->B * s->K * 4, path);
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

// Logits, loss and every gradient tensor against the reference.
static void check_forward_backward(GPT2 *model, const DebugState *s) {
    Batch batch = batch_of(s);
    forward_backward(model, s, &batch, 0);
    compare("logits", model->logits, s->logits, (size_t)s->B * s->K, tolerances.logits);
    compare("loss", &model->loss, &s->loss, 1, tolerances.loss);
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
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
    const size_t n = model->num_parameters, BK = (size_t)s->B * s->K;
    float *grads = (float *)malloc_or_die(n * sizeof(float), "grads copy");
    float *logits = (float *)malloc_or_die(BK * sizeof(float), "logits copy");
    memcpy(grads, model->grads_memory, n * sizeof(float));
    memcpy(logits, model->logits, BK * sizeof(float));
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
    const int same = padded_positions > 0 && loss == model->loss &&
                     memcmp(logits, model->logits, BK * sizeof(float)) == 0 &&
                     memcmp(grads, model->grads_memory, n * sizeof(float)) == 0;
    char line[128];
    snprintf(line, sizeof(line), "padding   %d padded positions re-filled: logits, loss, gradients bit-identical", padded_positions);
    report(same, line);
    free(repadded); free(grads); free(logits);
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
    gpt2_forward(model, &batch, 1.0f, NULL);
    double max_diff = 0.0, max_ref = 0.0;
    for (int i = 0; i < s->B * s->K; i++) {
        max_diff = fmax(max_diff, fabs((double)model->logits[i] - s->logits[i]));
        max_ref = fmax(max_ref, fabs((double)s->logits[i]));
    }
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

// A fine-tuned checkpoint written and read back gives the same parameters.
static void check_checkpoint_round_trip(GPT2 *model) {
    const char *path = "build/test_roundtrip_checkpoint.bin";
    gpt2_save_checkpoint(model, path);
    GPT2 loaded;
    gpt2_build_from_checkpoint(&loaded, path, 0, 0);
    const int same = loaded.num_parameters == model->num_parameters &&
                     loaded.config.num_labels == model->config.num_labels &&
                     memcmp(loaded.params_memory, model->params_memory, model->num_parameters * sizeof(float)) == 0;
    report(same, "checkpoint saved and reloaded: identical parameters and num_labels");
    gpt2_free(&loaded);
    remove(path);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.bin DEBUG_STATE.bin [DEBUG_STATE.bin ...]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    GPT2Config cfg; // the model's shapes, read from its header alone
    MappedFile model_file;
    char error[256];
    int has_head, step;
    require_little_endian();
    if (map_file(&model_file, model_path) != 0) { fail("cannot open %s: %s", model_path, strerror(errno)); }
    if (!checkpoint_parse_header(model_file.data, model_file.size, 0, &cfg, &has_head, &step, error, sizeof(error))) {
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
