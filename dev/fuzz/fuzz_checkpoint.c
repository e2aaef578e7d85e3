/*
fuzz_checkpoint.c: libFuzzer harness for checkpoint_parse_header, the pure
function that reads and checks a checkpoint's header against the file size
before anything is allocated. The fuzz input is the whole file.

  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -std=c99 -D_POSIX_C_SOURCE=200809L dev/fuzz/fuzz_checkpoint.c -o build/fuzz/fuzz_checkpoint -lm

Besides memory errors and undefined behaviour, it aborts when a header is
accepted that describes something the loader cannot safely use: a
configuration config_is_valid rejects, a file size that is not exactly the
header plus the parameters (and the AdamW moments, when the header says they
follow), or a head size other than the one requested.
*/
#define TESTING
#include "../../train_gpt2_sft.c"

static void check_accepted(const uint8_t *data, size_t size, int requested, const GPT2Config *cfg,
                           int has_head, int step, int has_moments) {
    char error[256];
    if (!config_is_valid(cfg, error, sizeof(error))) { fprintf(stderr, "accepted invalid config: %s\n", error); abort(); }
    if (step < 0) { fprintf(stderr, "accepted negative step %d\n", step); abort(); }
    if (has_head && (requested == 0 || (requested != LABELS_OF_FILE && cfg->num_labels != requested))) {
        fprintf(stderr, "head size mismatch\n"); abort();
    }
    if (!has_head && cfg->num_labels != (requested != LABELS_OF_FILE ? requested : 2)) { fprintf(stderr, "new head size\n"); abort(); }
    size_t sizes[NUM_PARAMETER_TENSORS], stored = 0;
    parameter_sizes(sizes, *cfg);
    for (int i = 0; i < NUM_PARAMETER_TENSORS - (has_head ? 0 : 1); i++) { stored += sizes[i]; }
    if (size != HEADER_INTS * 4 + (has_moments ? 3 : 1) * stored * sizeof(float)) {
        fprintf(stderr, "accepted a file of the wrong size\n"); abort();
    }
    // what gpt2_build_from_checkpoint (and load_training_state for the moments)
    // does next: read every stored float (copied, and the parameters checked finite)
    volatile float sink = 0.0f;
    for (size_t i = 0; i < (has_moments ? 3 : 1) * stored; i++) {
        float v;
        memcpy(&v, data + HEADER_INTS * 4 + i * sizeof(float), sizeof(float));
        sink += v;
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // the same bytes as a file, in an exactly sized heap buffer so that any
    // read past its end is caught by AddressSanitizer
    uint8_t *copy = (uint8_t *)malloc(size > 0 ? size : 1);
    if (copy == NULL) { return 0; }
    if (size > 0) { memcpy(copy, data, size); }
    static const int requests[] = {LABELS_OF_FILE, 0, 1, 2, 3, 65536};
    for (size_t r = 0; r < sizeof(requests) / sizeof(requests[0]); r++) {
        GPT2Config cfg;
        int has_head = -1, step = -1, has_moments = -1;
        char error[256];
        error[0] = '\0';
        if (checkpoint_parse_header(copy, size, requests[r], &cfg, &has_head, &step, &has_moments, error, sizeof(error))) {
            check_accepted(copy, size, requests[r], &cfg, has_head, step, has_moments);
        } else if (error[0] == '\0' || strlen(error) >= sizeof(error) - 1 || strchr(error, '\n') != NULL) {
            fprintf(stderr, "rejected without a one-line reason\n");
            abort();
        }
    }
    free(copy);
    return 0;
}
