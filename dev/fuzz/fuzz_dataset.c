/*
fuzz_dataset.c: libFuzzer harness for dataset_parse, the pure function that
checks a tokenized dataset held in memory and points the Dataset's arrays
into it. The fuzz input is the whole file.

  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -std=c99 -D_POSIX_C_SOURCE=200809L dev/fuzz/fuzz_dataset.c -o build/fuzz/fuzz_dataset -lm

dataset_parse reads int64/int32 arrays in place, so the input is first copied
to an 8-byte aligned, exactly sized heap buffer (a mapped file is page
aligned; the fuzzer's own buffer need not be). After a successful parse every
example is read the way the trainer reads it (offsets, lengths, labels, stars,
tokens), so an accepted file whose examples reach past the buffer is caught by
AddressSanitizer, and an accepted file that breaks the format's promises
aborts.
*/
#define TESTING
#include "../../train_gpt2_sft.c"

#define VOCAB 50257

static void check_accepted(const Dataset *d, size_t size) {
    if (d->num_examples < 1 || d->num_tokens < 0) { fprintf(stderr, "accepted empty dataset\n"); abort(); }
    if ((size_t)DATA_HEADER_BYTES + 20 * (size_t)d->num_examples + 2 * (size_t)d->num_tokens != size) {
        fprintf(stderr, "accepted a file of the wrong size\n"); abort();
    }
    if (d->num_labels < 0 || d->num_labels > 65536) { fprintf(stderr, "accepted num_labels %d\n", d->num_labels); abort(); }
    volatile uint64_t sum = 0;
    int64_t covered = 0;
    for (int64_t i = 0; i < d->num_examples; i++) {
        const int64_t offset = d->offsets[i];
        const int32_t length = d->lengths[i];
        if (length < 1 || offset < 0 || offset > d->num_tokens - length) {
            fprintf(stderr, "example %lld out of bounds\n", (long long)i); abort();
        }
        const int label = d->labels[i];
        if (d->num_labels > 0 ? (label < 0 || label >= d->num_labels) : label != -1) {
            fprintf(stderr, "example %lld has label %d\n", (long long)i, label); abort();
        }
        if (d->stars[i] < 0 || d->stars[i] > MAX_STARS) { fprintf(stderr, "example %lld has star rating %d\n", (long long)i, d->stars[i]); abort(); }
        sum += (uint32_t)d->stars[i];
        for (int32_t t = 0; t < length; t++) {
            const uint16_t token = d->tokens[offset + t];
            if (token >= VOCAB) { fprintf(stderr, "token %u accepted\n", token); abort(); }
            sum += token;
        }
        covered += length;
    }
    if (covered != d->num_tokens) { fprintf(stderr, "examples do not cover the tokens\n"); abort(); }
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // malloc's alignment (16 on glibc, and under ASan) covers the int64 offsets
    uint8_t *copy = (uint8_t *)malloc(size > 0 ? size : 1);
    if (copy == NULL) { return 0; }
    if (((uintptr_t)copy & 7) != 0) { abort(); }
    if (size > 0) { memcpy(copy, data, size); }
    Dataset d;
    memset(&d, 0, sizeof(d));
    char error[256];
    error[0] = '\0';
    if (dataset_parse(&d, copy, size, VOCAB, error, sizeof(error))) {
        check_accepted(&d, size);
    } else if (error[0] == '\0' || strchr(error, '\n') != NULL) {
        fprintf(stderr, "rejected without a one-line reason\n");
        abort();
    }
    free(copy);
    return 0;
}
