/*
train_gpt2_sft.c: supervised fine-tuning of GPT-2 as a sequence classifier,
in one C99 file with no dependencies beyond libc, libm and (optionally) OpenMP.

The file, top to bottom. Each part uses only what comes before it, but for a
few functions and variables of parts 8 to 10, declared before their first use.
  1. what a matrix product is: its specification, a plain triple loop;
  2. the layers, each a forward and a backward: embeddings, LayerNorm,
     linear, dropout, causal self-attention, GELU, the head, the loss;
  3. the model: configuration, parameters, activations;
  4. the forward and backward passes: a batch of right-padded token
     sequences with their true lengths runs through the transformer
     (embeddings, L blocks of LayerNorm, causal self-attention, residual,
     LayerNorm, MLP, residual); the final hidden state of the LAST REAL
     TOKEN of each sequence, normalised by the final LayerNorm and
     multiplied by the classification head `score` (num_labels, C), gives
     the logits; cross-entropy (classification) or mean-squared error
     (regression) the loss; every layer's backward pass the gradients;
  5. the optimizer: AdamW with decoupled weight decay, gradient clipping and
     a linear warmup/decay schedule;
  6. data: random numbers, the tokenized datasets of prepro_imdb.py, batches
     of similar lengths;
  7. evaluation: loss, accuracy, precision / recall / F1;
  8. checkpoints: llm.c's float32 GPT-2 checkpoint, memory-mapped and copied
     into one parameter allocation plus the head `score` it does not have,
     or a fine-tuned one; a model from scratch; the training state that
     --resume reads; the platform code (files, timing, threads: the only
     OS-specific code) and little-endian reading;
  9. appendix A: the fast matrix multiplication; appendix B: exp_fast;
 10. data parallelism over MPI: all of the program's MPI code, compiled only by
     `make MPI=1` (mpicc -DUSE_MPI);
 11. the command line, the training loop and main.

The model equals Hugging Face's GPT2ForSequenceClassification, dropout at its
four places included (while training), so a model trained here can be
exported and used there, and vice versa.

Shapes are written (B,T,C): batch, time (padded length), channels.
Every layer is a pair X_forward / X_backward; each backward states the
derivative it implements. `main` is at the bottom under #ifndef TESTING so
test_sft.c can include this file.
*/

#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L // fileno, fsync, mmap, clock_gettime under -std=c99
#endif
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE // also madvise and MADV_HUGEPAGE (alloc_huge_pages)
#endif
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#else
#pragma GCC diagnostic ignored "-Wunknown-pragmas" // built without OpenMP: its pragmas are ignored on purpose
#endif

// Headers of the platform code (the Platform section, after the checkpoints)
#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#define NOMINMAX
#include <windows.h>
#include <io.h>
#define PLATFORM_POSIX 0
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define PLATFORM_POSIX 1
#endif

// From the data parallelism over MPI, further down (before the command line):
// what the code before it uses. The default build is one process, with
// dp_rank 0 and dp_size 1.
extern int dp_rank, dp_size;
void dp_before_error_message(void);
void dp_exit_failure(void);
void dp_merge_disjoint(void *buf, size_t bytes);

// ----------------------------------------------------------------------------
// Errors. Every failure the user can cause ends here: one line, non-zero exit.

void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    dp_before_error_message();
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
    dp_exit_failure(); // exit(EXIT_FAILURE); under MPI it ends every rank
}

// Defined with the platform code: `bytes` of memory on 2 MiB pages for the
// big arrays, or NULL where the system offers none (then malloc serves).
void *alloc_huge_pages(size_t bytes);

void *malloc_or_die(size_t bytes, const char *what) {
    void *p = alloc_huge_pages(bytes);
    if (p == NULL) { p = malloc(bytes > 0 ? bytes : 1); }
    if (p == NULL) { fail("out of memory allocating %zu bytes for %s", bytes, what); }
    return p;
}

void *calloc_or_die(size_t count, size_t size, const char *what) {
    if (size > 0 && count > SIZE_MAX / size) { fail("out of memory allocating %zu x %zu bytes for %s", count, size, what); }
    void *p = alloc_huge_pages(count * size);
    if (p != NULL) { return memset(p, 0, count * size); }
    p = calloc(count > 0 ? count : 1, size > 0 ? size : 1);
    if (p == NULL) { fail("out of memory allocating %zu x %zu bytes for %s", count, size, what); }
    return p;
}

// ----------------------------------------------------------------------------
// Matrix multiplication: the one kernel that does ~all of the arithmetic.
//
//   C (M,N) = [C +] A (M,K) . B (K,N)
//
// A and B are read through strides so that the three products of a linear
// layer (forward x.W^T, backward dx = dy.W and dW = dy^T.x) are one function.

typedef struct {
    const float *data;
    long row_stride; // distance between (i, k) and (i+1, k)
    long col_stride; // distance between (i, k) and (i, k+1)
} StridedMatrix;

// The specification, as a plain triple loop: what every faster kernel below
// must compute (up to float rounding), and the kernel the whole program uses
// when built with -DGEMM_REFERENCE (for reading, and to check a port).
//   c[i*ldc + j] = [c[i*ldc + j] +] sum_k a(i,k) b(k,j)
void gemm_reference(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) {
                sum += a.data[i * a.row_stride + k * a.col_stride] * b.data[k * b.row_stride + j * b.col_stride];
            }
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
        }
    }
}

// The program computes its products with a fast kernel of the same
// arguments, appendix A near the end of the file (built with
// -DGEMM_REFERENCE, the fast kernel calls gemm_reference instead):
//   gemm         the product, C cut into one rectangle per thread; not for
//                use inside a parallel region
//   gemm_serial  the product on the calling thread alone, for parallel loops
//   gemm_packed  gemm_serial with B packed beforehand by gemm_pack, for a B
//                that several products share (a head's keys and values serve
//                each of its query blocks): the first K rows and N columns of
//                the packed matrix are used
// gemm_workspace_reserve allocates gemm_serial's packing buffers: call it
// outside parallel regions, before any gemm_serial or gemm_packed.
void gemm(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate);
void gemm_serial(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate);
void gemm_workspace_reserve(void);

typedef struct {
    StridedMatrix source; // B (K,N) as given: what the reference kernel reads
    const float *panels;  // B in the micro-kernel's layout
    int depth;            // K
} PackedMatrix;
size_t gemm_packed_floats(int K, int N); // the size of `panels` for gemm_pack
PackedMatrix gemm_pack(float *panels, StridedMatrix b, int K, int N);
void gemm_packed(int M, int N, int K, StridedMatrix a, PackedMatrix b, float *c, long ldc, int accumulate);

// ----------------------------------------------------------------------------
// Layers. Each forward states what it computes; each backward the derivative.

// Defined further down: OpenMP's thread count and the calling thread's
// index (1 and 0 without OpenMP), with the platform code; and exp_fast(x),
// exp with a relative error of about 1e-7, like expf, but written so that
// the loops using it vectorize (appendix B).
int max_threads(void);
int thread_id(void);
int team_threads(void); // threads in the current parallel region (1 outside one)
static inline float exp_fast(float x);

// Reductions over a row (softmax, layernorm, the losses). A loop that adds
// into one variable cannot be vectorized without reordering its sum, which
// C forbids the compiler; these keep sixteen partial results instead, so it
// can, and the order stays fixed (results do not depend on the thread count).
// dot_of_floats repeats sum_of_floats's loop with a product for the term.

// The largest of n floats. A compiler vectorizes an integer maximum but
// not a float one (x > m ? x : m is not max(x, m) under its NaN rules unless
// told -ffinite-math-only), so the floats are compared as keys: a float's
// bits with the sign bit set if it is positive and all bits flipped if it
// is negative order as unsigned integers the way the floats do (-0 just
// below +0). Sixteen running maxima of the keys, so the loop vectorizes.
static inline uint32_t float_order_key(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof(bits));
    return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}
static inline float float_from_order_key(uint32_t key) {
    const uint32_t bits = key & 0x80000000u ? key & 0x7fffffffu : ~key;
    float x;
    memcpy(&x, &bits, sizeof(x));
    return x;
}
float max_of_floats(const float *x, int n) {
    uint32_t lanes[16];
    for (int j = 0; j < 16; j++) { lanes[j] = float_order_key(-FLT_MAX); }
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < 16; j++) {
            const uint32_t key = float_order_key(x[k + j]);
            lanes[j] = key > lanes[j] ? key : lanes[j];
        }
    }
    for (; k < n; k++) {
        const uint32_t key = float_order_key(x[k]);
        lanes[0] = key > lanes[0] ? key : lanes[0];
    }
    uint32_t m = lanes[0];
    for (int j = 1; j < 16; j++) { m = lanes[j] > m ? lanes[j] : m; }
    return float_from_order_key(m);
}

// The sum of n floats: sixteen float sums (so the loop vectorizes) over
// blocks of 1024, whose totals add up in double.
double sum_of_floats(const float *x, int n) {
    double total = 0.0;
    for (int k0 = 0; k0 < n; k0 += 1024) {
        const int k1 = k0 + 1024 < n ? k0 + 1024 : n;
        float lanes[16] = {0.0f};
        int k = k0;
        for (; k + 16 <= k1; k += 16) {
            for (int j = 0; j < 16; j++) { lanes[j] += x[k + j]; }
        }
        for (; k < k1; k++) { lanes[0] += x[k]; }
        for (int j = 0; j < 16; j++) { total += lanes[j]; }
    }
    return total;
}

// sum_i a[i] b[i], in the same order as sum_of_floats.
double dot_of_floats(const float *a, const float *b, int n) {
    double total = 0.0;
    for (int k0 = 0; k0 < n; k0 += 1024) {
        const int k1 = k0 + 1024 < n ? k0 + 1024 : n;
        float lanes[16] = {0.0f};
        int k = k0;
        for (; k + 16 <= k1; k += 16) {
            for (int j = 0; j < 16; j++) { lanes[j] += a[k + j] * b[k + j]; }
        }
        for (; k < k1; k++) { lanes[0] += a[k] * b[k]; }
        for (int j = 0; j < 16; j++) { total += lanes[j]; }
    }
    return total;
}

// Token and position embeddings.
// out[b,t,:] = wte[tokens[b,t], :] + wpe[t, :]       out (B,T,C)
void encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe,
                     int B, int T, int C) {
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *token_row = wte + (size_t)tokens[b * T + t] * C;
            const float *position_row = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) { o[i] = token_row[i] + position_row[i]; }
        }
    }
}

// dwte[tokens[b,t], :] += dout[b,t,:];  dwpe[t, :] += sum_b dout[b,t,:]
// Several positions may share a token, so threads split the channels, not the
// positions: no two threads ever write the same element.
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                      int B, int T, int C) {
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 64) {
        const int c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                const float *d = dout + ((size_t)b * T + t) * C;
                float *token_row = dwte + (size_t)tokens[b * T + t] * C;
                float *position_row = dwpe + (size_t)t * C;
                for (int i = c0; i < c1; i++) { token_row[i] += d[i]; position_row[i] += d[i]; }
            }
        }
    }
}

// LayerNorm over the channels of each of N rows:
// out = (x - mean) * rstd * weight + bias,  rstd = 1/sqrt(var + 1e-5)
// mean and rstd (N) are kept for the backward pass.
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        const float m = (float)(sum_of_floats(x, C) / C);
        for (int i = 0; i < C; i++) { o[i] = x[i] - m; } // o holds x - mean until the last loop
        const float s = (float)(1.0 / sqrt(dot_of_floats(o, o, C) / C + 1e-5));
        for (int i = 0; i < C; i++) { o[i] = o[i] * s * weight[i] + bias[i]; }
        mean[n] = m;
        rstd[n] = s;
    }
}

// Sums over rows (parameter gradients) are taken REDUCE_COLUMNS columns at a
// time, in one fixed order of rows whatever the thread count. The running
// sums stay in a local block (registers) rather than in the gradient, whose
// store and reload on every row would chain the additions through memory
// (2x slower).
#define REDUCE_COLUMNS 64

// With xhat = (x - mean) * rstd and y = xhat * w + b:
//   dw += sum_rows dy * xhat,   db += sum_rows dy
//   dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w
// (the two means come from the dependence of mean and rstd on every x).
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        const float m = mean[n], s = rstd[n];
        float g_lanes[16] = {0.0f}, g_xhat_lanes[16] = {0.0f}; // running sums, as in sum_of_floats
        int i = 0;
        for (; i + 16 <= C; i += 16) {
            for (int j = 0; j < 16; j++) {
                const float g = dy[i + j] * weight[i + j];
                g_lanes[j] += g;
                g_xhat_lanes[j] += g * ((x[i + j] - m) * s);
            }
        }
        for (; i < C; i++) {
            const float g = dy[i] * weight[i];
            g_lanes[0] += g;
            g_xhat_lanes[0] += g * ((x[i] - m) * s);
        }
        double g_mean = 0.0, g_xhat_mean = 0.0;
        for (int j = 0; j < 16; j++) { g_mean += g_lanes[j]; g_xhat_mean += g_xhat_lanes[j]; }
        g_mean /= C;
        g_xhat_mean /= C;
        float *dx = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            const float xhat = (x[i] - m) * s;
            const float g = dy[i] * weight[i];
            dx[i] += s * (g - (float)g_mean - xhat * (float)g_xhat_mean);
        }
    }
    // Parameter gradients reduce over rows: threads split channels instead.
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += REDUCE_COLUMNS) {
        const int width = C - c0 < REDUCE_COLUMNS ? C - c0 : REDUCE_COLUMNS;
        float dw[REDUCE_COLUMNS], db[REDUCE_COLUMNS];
        for (int i = 0; i < width; i++) { dw[i] = dweight[c0 + i]; db[i] = dbias[c0 + i]; }
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C + c0;
            const float *dy = dout + (size_t)n * C + c0;
            const float m = mean[n], s = rstd[n];
            for (int i = 0; i < width; i++) {
                dw[i] += dy[i] * ((x[i] - m) * s);
                db[i] += dy[i];
            }
        }
        for (int i = 0; i < width; i++) { dweight[c0 + i] = dw[i]; dbias[c0 + i] = db[i]; }
    }
}

// out[n, 0:width] = bias for each of N rows placed `stride` floats apart.
void fill_rows_with_bias(float *out, long stride, const float *bias, int N, int width) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) { memcpy(out + n * stride, bias, (size_t)width * sizeof(float)); }
}

// out = residual + bias for each of N rows (N,C): the start of a residual
// block's output, to which the block's last matmul then adds.
void residual_plus_bias(float *out, const float *residual, const float *bias, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < C; i++) { out[(size_t)n * C + i] = residual[(size_t)n * C + i] + bias[i]; }
    }
}

// rows[b,:] = x[b, lengths[b]-1, :]: each sequence's last real position.
void gather_last_positions(float *rows, const float *x, const int *lengths, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        memcpy(rows + (size_t)b * C, x + ((size_t)b * T + lengths[b] - 1) * C, (size_t)C * sizeof(float));
    }
}

// x[b, lengths[b]-1, :] += rows[b,:]  (the backward of the gather)
void scatter_add_last_positions(float *x, const float *rows, const int *lengths, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        float *dst = x + ((size_t)b * T + lengths[b] - 1) * C;
        for (int i = 0; i < C; i++) { dst[i] += rows[(size_t)b * C + i]; }
    }
}

// dbias[o] += sum_n dout[n, o], rows `stride` floats apart. Threads split the
// outputs, so each sum runs in one fixed order, in a local block of sums.
void bias_backward(float *dbias, const float *dout, long stride, int N, int OC) {
    #pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < OC; o0 += REDUCE_COLUMNS) {
        const int width = OC - o0 < REDUCE_COLUMNS ? OC - o0 : REDUCE_COLUMNS;
        float sums[REDUCE_COLUMNS];
        for (int o = 0; o < width; o++) { sums[o] = dbias[o0 + o]; }
        for (int n = 0; n < N; n++) {
            const float *d = dout + n * stride + o0;
            for (int o = 0; o < width; o++) { sums[o] += d[o]; }
        }
        for (int o = 0; o < width; o++) { dbias[o0 + o] = sums[o]; }
    }
}

// Linear layer, weight stored (OC, C) as in nn.Linear:
// out (N,OC) += inp (N,C) . weight^T
// Callers first set out to the bias (or to a residual stream plus the bias),
// which fuses the residual add of a transformer block into the matmul.
void matmul_forward_accumulate(float *out, const float *inp, const float *weight,
                               int N, int C, int OC) {
    StridedMatrix a = {inp, C, 1};
    StridedMatrix w_transposed = {weight, 1, C};
    gemm(N, OC, C, a, w_transposed, out, OC, 1);
}

// With out = inp . W^T + b:
//   dinp = dout . W          (N,C)   (overwritten)
//   dW  += dout^T . inp      (OC,C)
//   db  += sum_rows dout     (OC)
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int C, int OC) {
    StridedMatrix dy = {dout, OC, 1};
    StridedMatrix w = {weight, C, 1};
    gemm(N, C, OC, dy, w, dinp, C, 0);
    StridedMatrix dy_transposed = {dout, 1, OC};
    StridedMatrix x = {inp, C, 1};
    gemm(OC, C, N, dy_transposed, x, dweight, C, 1);
    bias_backward(dbias, dout, OC, N, OC);
}

// ----------------------------------------------------------------------------
// Dropout, as in Hugging Face's GPT-2: while training, each element of four
// tensors (the embeddings, the attention probabilities, the attention and MLP
// projection outputs) is zeroed with probability p and the rest are scaled by
// 1/(1-p), so the expected value is unchanged and evaluation needs no dropout:
//   y = x * keep / (1-p),  keep ~ Bernoulli(1-p)
// Its backward multiplies by the same constant mask: dx = dy * keep / (1-p).
// The mask is a hash of the element's coordinates (dev/FORMATS.md section 5)
// rather than a stream of random numbers: the backward pass recomputes it
// instead of storing it, any thread can compute any element, padding cannot
// shift it, and the PyTorch reference reproduces it exactly for the tests.

#define HASH_GOLDEN 0x9E3779B97F4A7C15ULL // 2^64 / golden ratio: spreads consecutive counters

// A bijective 64-bit mixer (SplitMix64's finaliser): every input bit affects
// every output bit.
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Dropout of one forward pass. Pass number `pass` of a run with seed `seed`
// has key mix64(seed * G + pass), G = HASH_GOLDEN. With A micro-batches per
// update (--grad-accum A), micro-batch k of update s is pass s * A + k.
typedef struct {
    float p;           // probability of dropping an element; 0: dropout off
    uint64_t key;      // this forward pass's key
    // sequence b of the batch is sequence first_example + b example_stride of
    // the global batch, the b of the mask index (over MPI: rank + b ranks)
    int first_example, example_stride;
} Dropout;

Dropout dropout_for_pass(float p, uint64_t seed, uint64_t pass) {
    Dropout d = {p, mix64(seed * HASH_GOLDEN + pass), 0, 1};
    return d;
}

// One of the 1 + 3L places dropout applies in a forward pass (site 0: the
// embeddings; 1 + 3l + j in layer l: j = 0 attention probabilities, 1 attention
// projection, 2 MLP projection), with the layout of the rows it applies to.
typedef struct {
    uint64_t key;       // mix64(pass key + (site + 1) G)
    uint32_t threshold; // an element is dropped when its 24-bit hash is below this: round(p 2^24)
    float scale;        // 1/(1-p)
    int max_seq_len;    // maxT: indices are positions in a (B, maxT, ...) tensor
    int T;              // rows r of an activation are positions (b, t) = (r / T, r % T) ...
    const int *lengths; // ... or, when set, (r, lengths[r] - 1): one row per sequence
    int first_example, example_stride; // b's place in the global batch, as in Dropout
} DropoutSite;

DropoutSite dropout_site(const Dropout *d, int site, int max_seq_len, int T, const int *lengths) {
    DropoutSite s;
    s.key = mix64(d->key + (uint64_t)(site + 1) * HASH_GOLDEN);
    s.threshold = (uint32_t)(d->p * 16777216.0 + 0.5);
    s.scale = 1.0f / (1.0f - d->p);
    s.max_seq_len = max_seq_len;
    s.T = T;
    s.lengths = lengths;
    s.first_example = d->first_example;
    s.example_stride = d->example_stride;
    return s;
}

// The place in the global batch of the batch's sequence b.
static inline uint64_t dropout_example(const DropoutSite *s, int b) {
    return (uint64_t)s->first_example + (uint64_t)b * s->example_stride;
}

// keep / (1-p) for the element at `index`: scale or 0.
static inline float dropout_factor(const DropoutSite *s, uint64_t index) {
    return (uint32_t)(mix64(s->key + index * HASH_GOLDEN) >> 40) >= s->threshold ? s->scale : 0.0f;
}

// One row of C elements whose first has index `base`:
// out[i] = residual[i] + x[i] * keep(base + i) / (1-p)   (no add when residual is NULL)
void dropout_row(float *out, const float *x, const float *residual, const DropoutSite *s, uint64_t base, int C) {
    const DropoutSite site = *s; // a local copy: the stores to out cannot change it, so the loop vectorizes
    for (int i = 0; i < C; i++) {
        const float kept = x[i] * dropout_factor(&site, base + i);
        out[i] = residual != NULL ? residual[i] + kept : kept;
    }
}

// out[r,i] = residual[r,i] + x[r,i] * keep(b,t,i) / (1-p) over (rows, C), with
// index (b maxT + t) C + i, b counted in the global batch; residual may be
// NULL (no add), out may be x.
// It is also the backward: dx = dropout_apply(dout) with residual NULL.
void dropout_apply(float *out, const float *x, const float *residual, const DropoutSite *s, int rows, int C) {
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const uint64_t b = dropout_example(s, s->lengths != NULL ? r : r / s->T);
        const int t = s->lengths != NULL ? s->lengths[r] - 1 : r % s->T;
        const size_t row = (size_t)r * C;
        dropout_row(out + row, x + row, residual != NULL ? residual + row : NULL, s,
                    (b * s->max_seq_len + t) * C, C);
    }
}

// Backward of dropout_apply with respect to x: dout itself when dropout is
// off (s NULL), else `scratch` (rows, C) holding dout * keep / (1-p).
const float *dropout_backward(float *scratch, const float *dout, const DropoutSite *s, int rows, int C) {
    if (s == NULL) { return dout; }
    dropout_apply(scratch, dout, NULL, s, rows, C);
    return scratch;
}

// The attention probability (b,h,t,u) has index ((b NH + h) maxT + t) maxT + u
// (b counted in the global batch); this is the index of u = 0.
static inline uint64_t dropout_attention_row_index(const DropoutSite *s, int b, int h, int NH, int t) {
    return ((dropout_example(s, b) * NH + h) * s->max_seq_len + t) * s->max_seq_len;
}

// Row t of attention probabilities after dropout, for keys u = 0..t of head h
// of sequence b: dropped[u] = probs[u] * keep(b,h,t,u) / (1-p), p the drop
// probability. The same mask takes a gradient row dP' to dP (dropped may be probs).
void dropout_attention_row(float *dropped, const float *probs, const DropoutSite *s, int b, int h, int NH, int t) {
    const DropoutSite site = *s; // a local copy, as in dropout_row
    const uint64_t base = dropout_attention_row_index(&site, b, h, NH, t);
    for (int u = 0; u <= t; u++) { dropped[u] = probs[u] * dropout_factor(&site, base + u); }
}

// ----------------------------------------------------------------------------
// Layers, continued: residual branches, attention, GELU, the head, the loss.

// The end of a residual branch: out (N,C) = residual + dropout(inp (N,IC) . W^T + b).
// Without dropout the residual plus bias is written first and the matmul adds
// onto it; with dropout the branch goes through `scratch` (N,C) first.
// out may be residual.
void residual_branch_forward(float *out, const float *residual, const float *inp, const float *weight,
                             const float *bias, float *scratch, int N, int IC, int C, const DropoutSite *drop) {
    if (drop == NULL) {
        residual_plus_bias(out, residual, bias, N, C);
        matmul_forward_accumulate(out, inp, weight, N, IC, C);
        return;
    }
    fill_rows_with_bias(scratch, C, bias, N, C);
    matmul_forward_accumulate(scratch, inp, weight, N, IC, C);
    dropout_apply(out, scratch, residual, drop, N, C);
}

// Causal multi-head self-attention, NH heads of size hs = C/NH.
// qkv (B,T,3C) holds [q | k | v] for each position. For each (b, h):
//   S = Q K^T / sqrt(hs)                    (T,T), only u <= t is used
//   P[t,u] = softmax_u(S[t,:u+1])           zero for u > t (causal mask)
//   P' = dropout(P)                         P itself when dropout is off
//   O = P' V                                (T,hs), written to out[b,:,h*hs:(h+1)*hs]
// att (B,NH,T,T) keeps P for the backward pass. Position t never sees u > t,
// so right-padding cannot change any real position's output.
// Queries go in blocks of ATTENTION_BLOCK rows; block [r0,r1) needs keys
// 0..r1-1 only, which skips most of the masked upper triangle. Each product is
// a small matrix multiplication run by one thread; threads split the (b, h).
// The head's K^T and V, which every query block multiplies by, are packed
// for the matmul once per (b, h) rather than once per block.
#define ATTENTION_BLOCK 64

// Per thread, scratch holds two (ATTENTION_BLOCK, T) blocks (P', dS) and one
// head's keys and values packed, each part starting on a 64-byte cache line.
typedef struct { float *block, *second_block, *keys, *values; } AttentionScratch;
#define LINE_FLOATS 16
static size_t whole_lines(size_t floats) { return (floats + LINE_FLOATS - 1) / LINE_FLOATS * LINE_FLOATS; }

size_t attention_scratch_floats(int T, int hs) {
    return LINE_FLOATS /* to align the start */ + 2 * whole_lines(ATTENTION_BLOCK * (size_t)T) +
           whole_lines(gemm_packed_floats(hs, T)) + whole_lines(gemm_packed_floats(T, hs));
}

AttentionScratch attention_scratch(float *scratch, int T, int hs) {
    const uintptr_t start = (uintptr_t)(scratch + (size_t)thread_id() * attention_scratch_floats(T, hs));
    const uintptr_t line = LINE_FLOATS * sizeof(float);
    AttentionScratch s;
    s.block = (float *)((start + line - 1) / line * line);
    s.second_block = s.block + whole_lines(ATTENTION_BLOCK * (size_t)T);
    s.keys = s.second_block + whole_lines(ATTENTION_BLOCK * (size_t)T);
    s.values = s.keys + whole_lines(gemm_packed_floats(hs, T));
    return s;
}

// A thread's next head, (b,h) = bh + team_threads() in the static schedule
// below, is not in cache: its q, k and v rows come from L3 or memory, 4
// lines each, too short a run for the hardware prefetcher. So while a head
// is computed, each row t of its softmax starts fetching row t of the next
// head's q, k and v into L2: on a Xeon (B=8, T=256) packing K^T took 17 us
// per head with the rows in memory and 7 with them in cache, and
// attention_forward went from 7.3-7.9 to 6.7-7.4 ms. (The same in the
// backward, with dO, measured no faster at T = 256 and 1-2% slower at 512.)
#if defined(__GNUC__)
#define PREFETCH_TO_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define PREFETCH_TO_L2(p) ((void)(p))
#endif
static void prefetch_to_l2(const float *x, int n) {
    for (int j = 0; j < n; j += LINE_FLOATS) { PREFETCH_TO_L2(x + j); }
}

void attention_forward(float *out, float *att, float *scratch, const float *qkv,
                       int B, int T, int C, int NH, const DropoutSite *drop) {
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long row = 3L * C; // distance between positions in qkv
    gemm_workspace_reserve();
    #pragma omp parallel for schedule(static, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH, next = bh + team_threads();
        const float *q = qkv + (size_t)b * T * row + h * hs, *k = q + C, *v = q + 2 * C;
        const float *next_q = next < B * NH ? qkv + (size_t)(next / NH) * T * row + next % NH * hs : NULL;
        float *p = att + ((size_t)b * NH + h) * T * T;
        float *o = out + (size_t)b * T * C + h * hs;
        const AttentionScratch mine = attention_scratch(scratch, T, hs);
        float *dropped = mine.block;
        const PackedMatrix k_transposed = gemm_pack(mine.keys, (StridedMatrix){k, 1, row}, hs, T);
        const PackedMatrix v_all = gemm_pack(mine.values, (StridedMatrix){v, row, 1}, T, hs);
        for (int r0 = 0; r0 < T; r0 += ATTENTION_BLOCK) {
            const int r1 = r0 + ATTENTION_BLOCK < T ? r0 + ATTENTION_BLOCK : T;
            const StridedMatrix q_block = {q + r0 * row, row, 1};
            gemm_packed(r1 - r0, r1, hs, q_block, k_transposed, p + (size_t)r0 * T, T, 0);
            for (int t = r0; t < r1; t++) {
                float *p_row = p + (size_t)t * T;
                if (next_q != NULL) {
                    for (int part = 0; part < 3; part++) { prefetch_to_l2(next_q + t * row + part * C, hs); }
                }
                // softmax of scale * x as exp((x - max x) * scale), the max
                // taken over x (scale > 0), so the scale costs no pass of its own
                const float max_score = max_of_floats(p_row, t + 1);
                for (int u = 0; u <= t; u++) { p_row[u] = exp_fast((p_row[u] - max_score) * scale); }
                const float inv_sum = (float)(1.0 / sum_of_floats(p_row, t + 1));
                for (int u = 0; u <= t; u++) { p_row[u] *= inv_sum; }
                for (int u = t + 1; u < r1; u++) { p_row[u] = 0.0f; }
                if (drop != NULL) {
                    float *dropped_row = dropped + (size_t)(t - r0) * r1;
                    dropout_attention_row(dropped_row, p_row, drop, b, h, NH, t);
                    for (int u = t + 1; u < r1; u++) { dropped_row[u] = 0.0f; }
                }
            }
            const StridedMatrix p_block = drop != NULL ? (StridedMatrix){dropped, r1, 1}
                                                       : (StridedMatrix){p + (size_t)r0 * T, T, 1};
            gemm_packed(r1 - r0, hs, r1, p_block, v_all, o + (size_t)r0 * C, C, 0);
        }
    }
}

// Backward of attention for one (b, h), from dO = dL/dO (T,hs):
//   dV  = P'^T dO
//   dP' = dO V^T;   dP = dP' * keep / (1-p)      (dropout's backward; dP = dP' without it)
//   dS  = P * (dP - rowsum(P * dP))              (softmax backward; * is elementwise)
//   dQ  = dS K / sqrt(hs),   dK = dS^T Q / sqrt(hs)
// in the same query blocks as the forward pass, the last first. dqkv (B,T,3C)
// is overwritten.
// scratch as in the forward: one block of dS and one of P' per thread; the
// dropout mask is recomputed, not stored.
void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH, const DropoutSite *drop) {
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long row = 3L * C;
    gemm_workspace_reserve();
    #pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * row + h * hs, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + (size_t)b * T * row + h * hs, *dk = dq + C, *dv = dq + 2 * C;
        const float *p = att + ((size_t)b * NH + h) * T * T;
        const float *dO = dout + (size_t)b * T * C + h * hs;
        const AttentionScratch mine = attention_scratch(scratch, T, hs);
        float *ds = mine.block, *dropped = mine.second_block;
        const PackedMatrix v_transposed = gemm_pack(mine.keys, (StridedMatrix){v, 1, row}, hs, T);
        const PackedMatrix k_all = gemm_pack(mine.values, (StridedMatrix){k, row, 1}, T, hs);
        // the last query block first: it sees every key, so its dV and dK
        // products write all of them and the other blocks add to theirs
        const int last_r0 = (T - 1) / ATTENTION_BLOCK * ATTENTION_BLOCK;
        for (int r0 = last_r0; r0 >= 0; r0 -= ATTENTION_BLOCK) {
            const int r1 = r0 + ATTENTION_BLOCK < T ? r0 + ATTENTION_BLOCK : T, rows = r1 - r0;
            // P' of this block: P's rows (stride T), or recomputed from the mask (stride r1)
            StridedMatrix p_transposed = {p + (size_t)r0 * T, 1, T};
            if (drop != NULL) {
                for (int t = r0; t < r1; t++) {
                    float *dropped_row = dropped + (size_t)(t - r0) * r1;
                    dropout_attention_row(dropped_row, p + (size_t)t * T, drop, b, h, NH, t);
                    for (int u = t + 1; u < r1; u++) { dropped_row[u] = 0.0f; }
                }
                p_transposed = (StridedMatrix){dropped, 1, r1};
            }
            const StridedMatrix do_block = {dO + (size_t)r0 * C, C, 1};
            gemm_serial(r1, hs, rows, p_transposed, do_block, dv, row, r0 != last_r0);
            gemm_packed(rows, r1, hs, do_block, v_transposed, ds, r1, 0);
            for (int t = r0; t < r1; t++) {
                const float *p_row = p + (size_t)t * T;
                float *ds_row = ds + (size_t)(t - r0) * r1;
                if (drop != NULL) { dropout_attention_row(ds_row, ds_row, drop, b, h, NH, t); }
                const float weighted_sum = (float)dot_of_floats(p_row, ds_row, t + 1);
                for (int u = 0; u <= t; u++) { ds_row[u] = p_row[u] * (ds_row[u] - weighted_sum) * scale; }
                for (int u = t + 1; u < r1; u++) { ds_row[u] = 0.0f; }
            }
            const StridedMatrix ds_block = {ds, r1, 1};
            gemm_packed(rows, hs, r1, ds_block, k_all, dq + r0 * row, row, 0);
            const StridedMatrix ds_transposed = {ds, 1, r1}, q_block = {q + r0 * row, row, 1};
            gemm_serial(r1, hs, rows, ds_transposed, q_block, dk, row, r0 != last_r0);
        }
    }
}

// GELU with the tanh approximation used by GPT-2:
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// Since 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) = sigmoid(2u), this is
//   y = x s,  s = sigmoid(2u)
// which needs one exp and no cancellation near u = 0.
#define GELU_SCALE 0.7978845608028654f
void gelu_forward(float *out, const float *inp, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + exp_fast(-2.0f * u));
    }
}

// dy/dx = s + x * 2 s (1 - s) * du/dx,   du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// (d sigmoid(2u)/du = 2 s (1 - s)). d (n) holds dL/dy on entry, dL/dx on return.
void gelu_backward_inplace(float *d, const float *inp, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        const float s = 1.0f / (1.0f + exp_fast(-2.0f * u));
        const float du_dx = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d[i] *= s + 2.0f * x * s * (1.0f - s) * du_dx;
    }
}

// Attention in the last block, where only each sequence's last real
// position t = lengths[b]-1 matters (it alone reaches the head): one query
// per (b, h) against the keys and values of positions 0..t.
//   probs[u] = softmax_u(q . k_u / sqrt(hs)),  u <= t;    out = sum_u probs'[u] v_u
// with probs' = dropout(probs) (probs itself when dropout is off).
// q and out are (B,C); qkv (B,T,3C) supplies k and v; att (B,NH,T) keeps probs.
void last_attention_forward(float *out, float *att, const float *q, const float *qkv, const int *lengths,
                            int B, int T, int C, int NH, const DropoutSite *drop) {
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const int t = lengths[b] - 1;
            const float *qh = q + (size_t)b * C + h * hs;
            const float *k = qkv + (size_t)b * T * 3 * C + C + h * hs, *v = k + C;
            float *probs = att + ((size_t)b * NH + h) * T;
            float max_score = -FLT_MAX;
            for (int u = 0; u <= t; u++) {
                float dot = 0.0f;
                for (int i = 0; i < hs; i++) { dot += qh[i] * k[(size_t)u * 3 * C + i]; }
                probs[u] = dot * scale;
                if (probs[u] > max_score) { max_score = probs[u]; }
            }
            float sum = 0.0f;
            for (int u = 0; u <= t; u++) { probs[u] = exp_fast(probs[u] - max_score); sum += probs[u]; }
            for (int u = 0; u <= t; u++) { probs[u] /= sum; }
            const uint64_t mask_base = drop != NULL ? dropout_attention_row_index(drop, b, h, NH, t) : 0;
            float *o = out + (size_t)b * C + h * hs;
            for (int i = 0; i < hs; i++) { o[i] = 0.0f; }
            for (int u = 0; u <= t; u++) {
                const float dropped = drop != NULL ? probs[u] * dropout_factor(drop, mask_base + u) : probs[u];
                for (int i = 0; i < hs; i++) { o[i] += dropped * v[(size_t)u * 3 * C + i]; }
            }
        }
    }
}

// Its backward, from dO (B,C), as attention_backward:
//   dv_u = probs'[u] dO;   dprobs[u] = (dO . v_u) * keep[u] / (1-p)   (p: the drop probability)
//   ds[u] = probs[u] (dprobs[u] - sum_w probs[w] dprobs[w]) / sqrt(hs)
//   dq = sum_u ds[u] k_u;   dk_u = ds[u] q
// dq (B,C) is overwritten; so are the k and v parts of dqkv (B,T,3C), zero
// past each sequence's last position. The q part of dqkv is not used.
void last_attention_backward(float *dq, float *dqkv, const float *dout, const float *q, const float *qkv,
                             const float *att, const int *lengths, int B, int T, int C, int NH,
                             const DropoutSite *drop) {
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const int t = lengths[b] - 1;
            const float *qh = q + (size_t)b * C + h * hs, *dO = dout + (size_t)b * C + h * hs;
            const float *k = qkv + (size_t)b * T * 3 * C + C + h * hs, *v = k + C;
            float *dk = dqkv + (size_t)b * T * 3 * C + C + h * hs, *dv = dk + C;
            float *dqh = dq + (size_t)b * C + h * hs;
            const float *probs = att + ((size_t)b * NH + h) * T;
            const uint64_t mask_base = drop != NULL ? dropout_attention_row_index(drop, b, h, NH, t) : 0;
            float weighted_sum = 0.0f;
            for (int u = 0; u <= t; u++) { // dv, and dprobs kept in dk's first slot for now
                const float factor = drop != NULL ? dropout_factor(drop, mask_base + u) : 1.0f; // keep / (1-p)
                float dot = 0.0f;
                for (int i = 0; i < hs; i++) { dot += dO[i] * v[(size_t)u * 3 * C + i]; }
                for (int i = 0; i < hs; i++) { dv[(size_t)u * 3 * C + i] = probs[u] * factor * dO[i]; }
                dk[(size_t)u * 3 * C] = dot * factor;
                weighted_sum += probs[u] * dot * factor;
            }
            for (int i = 0; i < hs; i++) { dqh[i] = 0.0f; }
            for (int u = 0; u <= t; u++) {
                const float ds = probs[u] * (dk[(size_t)u * 3 * C] - weighted_sum) * scale;
                for (int i = 0; i < hs; i++) {
                    dqh[i] += ds * k[(size_t)u * 3 * C + i];
                    dk[(size_t)u * 3 * C + i] = ds * qh[i];
                }
            }
            for (int u = t + 1; u < T; u++) {
                memset(dk + (size_t)u * 3 * C, 0, (size_t)hs * sizeof(float));
                memset(dv + (size_t)u * 3 * C, 0, (size_t)hs * sizeof(float));
            }
        }
    }
}

// The classification head, no bias: logits (B,K) = pooled (B,C) . score^T (K,C).
void classifier_forward(float *logits, const float *pooled, const float *score, int B, int C, int K) {
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < K; k++) {
            double dot = 0.0;
            for (int i = 0; i < C; i++) { dot += (double)pooled[b * C + i] * score[k * C + i]; }
            logits[b * K + k] = (float)dot;
        }
    }
}

// dscore += dlogits^T . pooled;   dpooled = dlogits . score
void classifier_backward(float *dpooled, float *dscore, const float *dlogits,
                         const float *pooled, const float *score, int B, int C, int K) {
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < C; i++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) { sum += dlogits[b * K + k] * score[k * C + i]; }
            dpooled[b * C + i] = sum;
        }
    }
    for (int k = 0; k < K; k++) {
        for (int b = 0; b < B; b++) {
            const float d = dlogits[b * K + k];
            for (int i = 0; i < C; i++) { dscore[k * C + i] += d * pooled[b * C + i]; }
        }
    }
}

// Classification (K >= 2): softmax cross-entropy, averaged over the batch.
//   loss = -(1/B) sum_b log softmax(logits_b)[y_b]
//   dlogits_b = (softmax(logits_b) - onehot(y_b)) / B
// Regression (K == 1): mean squared error, as Hugging Face's MSELoss.
//   loss = (1/B) sum_b (logit_b - y_b)^2,   dlogit_b = 2 (logit_b - y_b) / B
// `grad_scale` multiplies dlogits (1/accumulation_steps when accumulating).
// Returns the loss.
float loss_forward_backward(float *dlogits, const float *logits, const int *labels,
                            const float *targets, int B, int K, float grad_scale) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + b * K;
        float *dz = dlogits + b * K;
        if (K == 1) {
            const double diff = (double)z[0] - targets[b];
            total += diff * diff;
            dz[0] = (float)(2.0 * diff / B) * grad_scale;
            continue;
        }
        double max_logit = z[0];
        for (int k = 1; k < K; k++) { if (z[k] > max_logit) { max_logit = z[k]; } }
        double sum = 0.0;
        for (int k = 0; k < K; k++) { sum += exp(z[k] - max_logit); }
        total += log(sum) + max_logit - z[labels[b]];
        for (int k = 0; k < K; k++) {
            const double p = exp(z[k] - max_logit) / sum;
            dz[k] = (float)((p - (k == labels[b] ? 1.0 : 0.0)) / B) * grad_scale;
        }
    }
    return (float)(total / B);
}

// The language-model head and its loss, for pretraining (--task lm). GPT-2
// predicts the next token with the token embedding matrix itself (weight
// tying): the logits of a position are its final hidden state x (C) against
// every row of wte,
//   z = x . wte^T  (Vp),  of which the first V columns are real tokens;
//   loss = -(1/N) sum_i log softmax(z_i[0..V))[y_i]
// over the N positions that have a next token y_i. As for the classifier,
//   dz_i = (softmax(z_i) - onehot(y_i)) / N     (0 in the padding columns)
//   dx = dz . wte;   dwte += dz^T . x
// The (N,Vp) logits would take 200 KB per position with GPT-2's vocabulary,
// so they are computed LM_CHUNK_ROWS positions at a time (412 MB for 50304
// columns) and turned into gradients at once: the forward pass of this layer
// already runs its backward, which gpt2_backward then only adds in. Each
// chunk packs wte anew for the matrix products, so larger chunks run faster
// where C is small: measured on d2 (C = 128), 256 / 1024 / 2048 rows gave
// 5.0k / 5.5k / 6.3k tokens per second.
// x (N,C); targets (N); logits (LM_CHUNK_ROWS, Vp) scratch; dx (N,C) and
// dwte (Vp,C) overwritten, and only computed when grad_scale != 0.
// logit_offsets (V), when not NULL, are added to the logits (for the sampled
// softmax below; a constant shift leaves dz unchanged).
// Returns the summed (not averaged) loss, in double.
#define LM_CHUNK_ROWS 2048
double lm_head_forward_backward(float *dx, float *dwte, float *logits, const float *x, const int *targets,
                                const float *wte, const float *logit_offsets, int N, int C, int V, int Vp,
                                float grad_scale) {
    double *row_losses = (double *)malloc_or_die((size_t)LM_CHUNK_ROWS * sizeof(double), "row losses");
    const float scale = grad_scale / (float)N;
    double total = 0.0;
    for (int i0 = 0; i0 < N; i0 += LM_CHUNK_ROWS) {
        const int rows = N - i0 < LM_CHUNK_ROWS ? N - i0 : LM_CHUNK_ROWS;
        const StridedMatrix x_chunk = {x + (size_t)i0 * C, C, 1}, wte_transposed = {wte, 1, C};
        gemm(rows, Vp, C, x_chunk, wte_transposed, logits, Vp, 0);
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            float *z = logits + (size_t)i * Vp;
            if (logit_offsets != NULL) { for (int k = 0; k < V; k++) { z[k] += logit_offsets[k]; } }
            const float max_z = max_of_floats(z, V), target_z = z[targets[i0 + i]];
            for (int k = 0; k < V; k++) { z[k] = exp_fast(z[k] - max_z); } // z becomes exp(z - max)
            const double sum = sum_of_floats(z, V);
            row_losses[i] = log(sum) + max_z - target_z;
            if (grad_scale != 0.0f) { // z becomes dz
                const float p_scale = (float)(1.0 / sum) * scale;
                for (int k = 0; k < V; k++) { z[k] *= p_scale; }
                for (int k = V; k < Vp; k++) { z[k] = 0.0f; }
                z[targets[i0 + i]] -= scale;
            }
        }
        for (int i = 0; i < rows; i++) { total += row_losses[i]; } // in order: the same on any thread count
        if (grad_scale != 0.0f) {
            const StridedMatrix dz = {logits, Vp, 1}, w = {wte, C, 1};
            gemm(rows, C, Vp, dz, w, dx + (size_t)i0 * C, C, 0);
            const StridedMatrix dz_transposed = {logits, 1, Vp};
            gemm(Vp, C, rows, dz_transposed, x_chunk, dwte, C, i0 > 0);
        }
    }
    free(row_losses);
    return total;
}

// ----------------------------------------------------------------------------
// The model: configuration, parameters, activations.

typedef struct {
    int max_seq_len;       // positions in wpe (1024 for GPT-2)
    int vocab_size;        // real tokens (50257)
    int padded_vocab_size; // rows of wte (50304, a multiple of 128)
    int num_layers;        // L
    int num_heads;         // NH
    int channels;          // C
    int num_labels;        // K: classes, 1 for regression, 0 for a language model (no head)
} GPT2Config;

// A language model (--task lm, pretraining) has no head: its output layer is
// wte itself, and every position is predicted, so every block runs everywhere.
int is_language_model(const GPT2Config *cfg) { return cfg->num_labels == 0; }

#define NUM_PARAMETER_TENSORS 17
typedef struct {
    float *wte;      // (Vp, C)   token embeddings
    float *wpe;      // (maxT, C) position embeddings
    float *ln1w;     // (L, C)
    float *ln1b;     // (L, C)
    float *qkvw;     // (L, 3C, C)
    float *qkvb;     // (L, 3C)
    float *attprojw; // (L, C, C)
    float *attprojb; // (L, C)
    float *ln2w;     // (L, C)
    float *ln2b;     // (L, C)
    float *fcw;      // (L, 4C, C)
    float *fcb;      // (L, 4C)
    float *fcprojw;  // (L, C, 4C)
    float *fcprojb;  // (L, C)
    float *lnfw;     // (C)
    float *lnfb;     // (C)
    float *score;    // (K, C)    the classification head, not in the pretrained model
} ParameterTensors;

static const char *const parameter_names[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
    "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "score"};

// Weight decay applies to matrices and embeddings, never to biases or LayerNorm.
static const int parameter_decays[NUM_PARAMETER_TENSORS] = {
    1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1};

void parameter_sizes(size_t sizes[NUM_PARAMETER_TENSORS], GPT2Config cfg) {
    const size_t L = cfg.num_layers, C = cfg.channels;
    sizes[0] = (size_t)cfg.padded_vocab_size * C;
    sizes[1] = (size_t)cfg.max_seq_len * C;
    sizes[2] = L * C;          sizes[3] = L * C;
    sizes[4] = L * 3 * C * C;  sizes[5] = L * 3 * C;
    sizes[6] = L * C * C;      sizes[7] = L * C;
    sizes[8] = L * C;          sizes[9] = L * C;
    sizes[10] = L * 4 * C * C; sizes[11] = L * 4 * C;
    sizes[12] = L * 4 * C * C; sizes[13] = L * C;
    sizes[14] = C;             sizes[15] = C;
    sizes[16] = (size_t)cfg.num_labels * C;
}

// Points each named tensor into one contiguous block of memory.
void carve_parameters(ParameterTensors *t, float *memory, const size_t sizes[NUM_PARAMETER_TENSORS]) {
    float **slots[NUM_PARAMETER_TENSORS] = {
        &t->wte, &t->wpe, &t->ln1w, &t->ln1b, &t->qkvw, &t->qkvb, &t->attprojw, &t->attprojb,
        &t->ln2w, &t->ln2b, &t->fcw, &t->fcb, &t->fcprojw, &t->fcprojb, &t->lnfw, &t->lnfb, &t->score};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *slots[i] = memory;
        memory += sizes[i];
    }
}

// Everything the forward pass keeps for the backward pass. For a classifier,
// layers 0..L-2 run at every position; the last block runs only at each
// sequence's last real position (see last_block_forward), except for its keys
// and values. A language model runs all L layers at every position (the
// per-layer tensors below then have L layers, `pooled` and the final
// LayerNorm's statistics B*T rows, and the last_* tensors go unused).
#define NUM_ACTIVATION_TENSORS 26
typedef struct {
    float *encoded;        // (B,T,C)        embeddings, the input of layer 0
    float *ln1;            // (L,B,T,C)
    float *ln1_mean;       // (L,B,T)
    float *ln1_rstd;       // (L,B,T)
    float *qkv;            // (L,B,T,3C)     in the last layer, k and v only
    float *atty;           // (L-1,B,T,C)    attention output before its projection
    float *att;            // (L-1,B,NH,T,T) attention probabilities
    float *residual2;      // (L-1,B,T,C)    after the attention block
    float *ln2;            // (L-1,B,T,C)
    float *ln2_mean;       // (L-1,B,T)
    float *ln2_rstd;       // (L-1,B,T)
    float *fch;            // (L-1,B,T,4C)   MLP pre-activation (GELU is recomputed in backward)
    float *residual3;      // (L-1,B,T,C)    after the MLP block: the layer's output
    float *last_ln1;       // (B,C)          the last block at the last real positions
    float *last_q;         // (B,C)
    float *last_att;       // (B,NH,T)
    float *last_atty;      // (B,C)
    float *last_residual2; // (B,C)
    float *last_ln2;       // (B,C)
    float *last_ln2_mean;  // (B)
    float *last_ln2_rstd;  // (B)
    float *last_fch;       // (B,4C)
    float *last_residual3; // (B,C)
    float *pooled;         // (B,C)          final LayerNorm of the last block's output (B,T,C: LM)
    float *lnf_mean;       // (B)
    float *lnf_rstd;       // (B)
} ActivationTensors;

void activation_sizes(size_t sizes[NUM_ACTIVATION_TENSORS], GPT2Config cfg, int B, int T) {
    const size_t L = cfg.num_layers, C = cfg.channels, NH = cfg.num_heads, Bs = B;
    const int lm = is_language_model(&cfg);
    const size_t BT = (size_t)B * T, full = lm ? L : L - 1; // layers run at every position
    const size_t pooled_rows = lm ? BT : Bs;
    sizes[0] = BT * C;
    sizes[1] = L * BT * C;         sizes[2] = L * BT;          sizes[3] = L * BT;
    sizes[4] = L * BT * 3 * C;
    sizes[5] = full * BT * C;      sizes[6] = full * Bs * NH * (size_t)T * T;
    sizes[7] = full * BT * C;
    sizes[8] = full * BT * C;      sizes[9] = full * BT;       sizes[10] = full * BT;
    sizes[11] = full * BT * 4 * C; sizes[12] = full * BT * C;
    sizes[13] = Bs * C;            sizes[14] = Bs * C;         sizes[15] = Bs * NH * T;
    sizes[16] = Bs * C;            sizes[17] = Bs * C;         sizes[18] = Bs * C;
    sizes[19] = Bs;                sizes[20] = Bs;             sizes[21] = Bs * 4 * C;
    sizes[22] = Bs * C;
    sizes[23] = pooled_rows * C;   sizes[24] = pooled_rows;    sizes[25] = pooled_rows;
}

void carve_activations(ActivationTensors *t, float *memory, const size_t sizes[NUM_ACTIVATION_TENSORS]) {
    float **slots[NUM_ACTIVATION_TENSORS] = {
        &t->encoded, &t->ln1, &t->ln1_mean, &t->ln1_rstd, &t->qkv, &t->atty, &t->att, &t->residual2,
        &t->ln2, &t->ln2_mean, &t->ln2_rstd, &t->fch, &t->residual3,
        &t->last_ln1, &t->last_q, &t->last_att, &t->last_atty, &t->last_residual2, &t->last_ln2,
        &t->last_ln2_mean, &t->last_ln2_rstd, &t->last_fch, &t->last_residual3,
        &t->pooled, &t->lnf_mean, &t->lnf_rstd};
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *slots[i] = memory;
        memory += sizes[i];
    }
}

// Scratch that holds one layer at a time: the gradients of the backward pass,
// and temporaries of both passes (gelu, branch and att_scratch).
typedef struct {
    float *dresidual; // (B,T,C)   dL/d(residual stream), flows down through the layers
    float *dln;       // (B,T,C)   dL/d(LayerNorm output)
    float *datty;     // (B,T,C)
    float *dqkv;      // (B,T,3C)
    float *dfch;      // (B,T,4C)  dL/d(GELU output), then dL/d(fch)
    float *gelu;      // (B,T,4C)  the recomputed GELU output of the current layer
    float *branch;    // (B,T,C)   with dropout: a residual branch before dropout, or its gradient
    float *att_scratch; // (threads, 2 ATTENTION_BLOCK, T)  attention's blocks, forward and backward
    float *dpooled;   // (B,C)     (B,T,C) for a language model
    float *dlogits;   // (B,K)
    float *dlast;     // (B,C)     dL/d(last block's residual stream) at the last positions
    float *dlast_q;   // (B,C)
    float *dlast_ln1; // (B,C)
    // a language model's head (lm_head_forward_backward), empty for a classifier:
    float *lm_x;      // (B*T,C)   the final hidden states of the positions that have a next token
    float *lm_dx;     // (B*T,C)   their gradients
    float *lm_logits; // (min(B*T, LM_CHUNK_ROWS),Vp)  one chunk of logits, then of their gradients
    float *lm_dwte;   // (Vp,C)    the head's part of dL/dwte, computed in the forward pass
    float *lm_wsub;   // (B*T,C)   sampled softmax: the rows of wte of the candidates
    float *lm_offsets; // (B*T)    sampled softmax: the candidates' logit corrections -log q
} BackwardBuffers;

typedef struct {
    GPT2Config config;
    ParameterTensors params;
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    float *params_memory;
    size_t num_parameters;
    ParameterTensors grads;   // allocated on the first backward
    float *grads_memory;
    float *m_memory;          // AdamW first moments, allocated on the first update
    float *v_memory;          // AdamW second moments
    ActivationTensors acts;   // allocated for (max_batch, max_seq) on the first forward
    float *acts_memory;
    BackwardBuffers bufs;
    float *bufs_memory;
    int max_batch, max_seq;   // the sizes acts and bufs are allocated for
    int buffer_threads;       // threads the per-thread scratch is allocated for
    float *logits;            // (B,K)
    int *lm_targets;          // (B*T) a language model's next tokens, for the positions in lm_x
    int *lm_positions;        // (B*T) where in the batch (b*T + t) each of them is
    int lm_predictions;       // how many positions of the current batch have a next token
    int sampled_softmax;      // 1: training passes use the sampled softmax (language_model_head_forward)
    const double *unigram;    // (V) the tokens' frequencies in the training text, for the sampled softmax
    int *lm_candidates;       // (B*T) the sampled softmax's candidate tokens, ascending
    int *lm_column;           // (V) a token's place among the candidates, or -1
    int *lm_candidate_targets; // (B*T) the next tokens as places among the candidates
    int lm_num_candidates;    // of the last forward pass; 0: it used the full softmax
    int backward_ready;       // the last forward prepared the gradients gpt2_backward needs
    int B, T;                 // the current batch
    const int *tokens;        // (B,T) of the current batch
    const int *lengths;       // (B)
    Dropout dropout;          // of the current forward pass (p = 0: none)
    float loss;               // of the last forward with targets, or -1
    int step;                 // optimizer updates these parameters have had
    const char *overflowed;   // the first parameter tensor the last update made NaN or infinite, or NULL
} GPT2;

// A batch of right-padded sequences. Positions t >= lengths[b] are padding:
// any valid token id, never influencing the result.
typedef struct {
    int B, T;
    int *tokens;    // (B,T)
    int *lengths;   // (B), each in 1..T
    int *labels;    // (B), class ids, for num_labels >= 2
    float *targets; // (B), regression targets, for num_labels == 1
} Batch;

// ----------------------------------------------------------------------------
// Forward and backward passes of the whole model.

// Writes zeros to n floats: the pages are then mapped once, here, rather than
// one fault at a time inside a training step that first reaches them.
void touch_floats(float *x, size_t n) {
    const size_t chunk = (size_t)1 << 20;
    #pragma omp parallel for schedule(static)
    for (long c = 0; c < (long)((n + chunk - 1) / chunk); c++) {
        const size_t start = (size_t)c * chunk;
        memset(x + start, 0, (n - start < chunk ? n - start : chunk) * sizeof(float));
    }
}

// Activations and backward buffers for batches of up to B x T, kept between
// steps and grown only when a larger batch arrives. The training loop calls it
// once with its largest batch, so no memory is first touched inside a step.
void gpt2_ensure_buffers(GPT2 *model, int B, int T) {
    if (model->acts_memory != NULL && B <= model->max_batch && T <= model->max_seq &&
        max_threads() <= model->buffer_threads) { return; }
    if (model->acts_memory != NULL) { // grow, keeping the larger of old and new sizes
        if (model->max_batch > B) { B = model->max_batch; }
        if (model->max_seq > T) { T = model->max_seq; }
    }
    free(model->acts_memory);
    free(model->bufs_memory);
    free(model->logits);
    const GPT2Config *cfg = &model->config;
    const size_t attention_per_thread = attention_scratch_floats(T, cfg->channels / cfg->num_heads);
    // An upper bound of all the floats below; sizes are size_t, 32 bits on some hosts.
    const double c = cfg->channels, per_position = cfg->num_layers * (16 * c + (double)cfg->num_heads * T + 8) + 16 * c;
    const double floats = (double)B * T * (per_position + 4 * c) + (double)B * (cfg->num_heads * (double)T + 32 * c + cfg->num_labels + 8) +
                          (double)max_threads() * attention_per_thread + (LM_CHUNK_ROWS + c) * (double)cfg->padded_vocab_size + (double)B * T * (c + 1);
    if (floats * sizeof(float) > (double)SIZE_MAX) { fail("a batch of %d x %d tokens needs more memory than this machine can address", B, T); }
    size_t sizes[NUM_ACTIVATION_TENSORS];
    activation_sizes(sizes, *cfg, B, T);
    size_t total = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) { total += sizes[i]; }
    model->acts_memory = (float *)malloc_or_die(total * sizeof(float), "activations");
    touch_floats(model->acts_memory, total);
    carve_activations(&model->acts, model->acts_memory, sizes);
    const size_t BT = (size_t)B * T, C = cfg->channels, K = cfg->num_labels;
    const size_t lm = is_language_model(cfg), Vp = cfg->padded_vocab_size;
    enum { NUM_BUFFERS = 19 };
    const size_t buf_sizes[NUM_BUFFERS] = {BT * C, BT * C, BT * C, BT * 3 * C, BT * 4 * C, BT * 4 * C, BT * C,
                                           (size_t)max_threads() * attention_per_thread,
                                           (lm ? BT : (size_t)B) * C, B * K, B * C, B * C, B * C,
                                           lm * BT * C, lm * BT * C, lm * (BT < LM_CHUNK_ROWS ? BT : LM_CHUNK_ROWS) * Vp, lm * Vp * C,
                                           lm * BT * C, lm * BT};
    float **buf_slots[NUM_BUFFERS] = {&model->bufs.dresidual, &model->bufs.dln, &model->bufs.datty, &model->bufs.dqkv,
                                      &model->bufs.dfch, &model->bufs.gelu, &model->bufs.branch, &model->bufs.att_scratch,
                                      &model->bufs.dpooled, &model->bufs.dlogits, &model->bufs.dlast,
                                      &model->bufs.dlast_q, &model->bufs.dlast_ln1,
                                      &model->bufs.lm_x, &model->bufs.lm_dx, &model->bufs.lm_logits, &model->bufs.lm_dwte,
                                      &model->bufs.lm_wsub, &model->bufs.lm_offsets};
    size_t buf_total = 0;
    for (int i = 0; i < NUM_BUFFERS; i++) { buf_total += buf_sizes[i]; }
    model->bufs_memory = (float *)malloc_or_die(buf_total * sizeof(float), "backward buffers");
    touch_floats(model->bufs_memory, buf_total);
    float *p = model->bufs_memory;
    for (int i = 0; i < NUM_BUFFERS; i++) { *buf_slots[i] = p; p += buf_sizes[i]; }
    model->logits = (float *)malloc_or_die((size_t)B * K * sizeof(float), "logits");
    free(model->lm_targets);
    free(model->lm_positions);
    model->lm_targets = (int *)malloc_or_die(lm * BT * sizeof(int), "next tokens");
    model->lm_positions = (int *)malloc_or_die(lm * BT * sizeof(int), "positions with a next token");
    free(model->lm_candidates);
    free(model->lm_column);
    free(model->lm_candidate_targets);
    model->lm_candidates = (int *)malloc_or_die(lm * BT * sizeof(int), "sampled softmax candidates");
    model->lm_column = (int *)malloc_or_die(lm * (size_t)cfg->vocab_size * sizeof(int), "sampled softmax columns");
    model->lm_candidate_targets = (int *)malloc_or_die(lm * BT * sizeof(int), "sampled softmax targets");
    model->max_batch = B;
    model->max_seq = T;
    model->buffer_threads = max_threads();
}

// Checks a batch against the model; names the problem on failure.
void validate_batch(const GPT2 *model, const Batch *batch) {
    const GPT2Config *cfg = &model->config;
    if (batch->B < 1) { fail("batch size must be >= 1 (got %d)", batch->B); }
    if (batch->T < 1 || batch->T > cfg->max_seq_len) {
        fail("sequence length %d is out of range 1..%d (the model's positions)", batch->T, cfg->max_seq_len);
    }
    for (int b = 0; b < batch->B; b++) {
        if (batch->lengths[b] < 1 || batch->lengths[b] > batch->T) {
            fail("sequence %d has length %d, out of range 1..%d", b, batch->lengths[b], batch->T);
        }
        for (int t = 0; t < batch->T; t++) {
            const int token = batch->tokens[b * batch->T + t];
            if (token < 0 || token >= cfg->vocab_size) {
                fail("token id %d at sequence %d position %d is out of range 0..%d", token, b, t, cfg->vocab_size - 1);
            }
        }
        if (cfg->num_labels >= 2 && batch->labels != NULL &&
            (batch->labels[b] < 0 || batch->labels[b] >= cfg->num_labels)) {
            fail("label %d of sequence %d is out of range 0..%d", batch->labels[b], b, cfg->num_labels - 1);
        }
    }
    if (is_language_model(cfg)) {
        int longest = 0;
        for (int b = 0; b < batch->B; b++) { longest = batch->lengths[b] > longest ? batch->lengths[b] : longest; }
        if (longest < 2) { fail("a language-model batch needs a sequence of at least 2 tokens: one to read, one to predict"); }
    }
}

// The masks of dropout site `site` in the current forward pass, stored in *s;
// NULL when dropout is off. lengths: the rows are the sequences' last positions.
const DropoutSite *model_dropout_site(DropoutSite *s, const GPT2 *model, int site, const int *lengths) {
    if (model->dropout.p <= 0.0f) { return NULL; }
    *s = dropout_site(&model->dropout, site, model->config.max_seq_len, model->T, lengths);
    return s;
}

// The three dropout sites of layer l (dev/FORMATS.md section 5: 1 + 3l the
// attention probabilities, 2 + 3l the attention projection, 3 + 3l the MLP
// projection; site 0 is the embeddings), each NULL when dropout is off.
typedef struct {
    DropoutSite storage[3];
    const DropoutSite *probs, *attention, *mlp;
} LayerDropout;

void layer_dropout(LayerDropout *d, const GPT2 *model, int l, const int *lengths) {
    d->probs = model_dropout_site(&d->storage[0], model, 1 + 3 * l, lengths);
    d->attention = model_dropout_site(&d->storage[1], model, 2 + 3 * l, lengths);
    d->mlp = model_dropout_site(&d->storage[2], model, 3 + 3 * l, lengths);
}

// One transformer block at every position (layers 0..L-2):
//   residual2 = input + dropout(proj(attention(LN1(input))))
//   residual3 = residual2 + dropout(proj(GELU(fc(LN2(residual2)))))
// (attention drops its probabilities too; without dropout each dropout is the identity)
void block_forward(GPT2 *model, int l, const float *input) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, NH = cfg->num_heads, N = B * T;
    const size_t BT = (size_t)N;
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    float *ln1 = a.ln1 + l * BT * C, *ln1_mean = a.ln1_mean + l * BT, *ln1_rstd = a.ln1_rstd + l * BT;
    float *qkv = a.qkv + l * BT * 3 * C, *atty = a.atty + l * BT * C;
    float *att = a.att + l * (size_t)B * NH * T * T, *residual2 = a.residual2 + l * BT * C;
    float *ln2 = a.ln2 + l * BT * C, *ln2_mean = a.ln2_mean + l * BT, *ln2_rstd = a.ln2_rstd + l * BT;
    float *fch = a.fch + l * BT * 4 * C, *residual3 = a.residual3 + l * BT * C;
    float *gelu = model->bufs.gelu, *branch = model->bufs.branch;
    LayerDropout drop;
    layer_dropout(&drop, model, l, NULL);

    layernorm_forward(ln1, ln1_mean, ln1_rstd, input, p.ln1w + l * C, p.ln1b + l * C, N, C);
    fill_rows_with_bias(qkv, 3 * C, p.qkvb + l * 3 * C, N, 3 * C);
    matmul_forward_accumulate(qkv, ln1, p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C);
    attention_forward(atty, att, model->bufs.att_scratch, qkv, B, T, C, NH, drop.probs);
    residual_branch_forward(residual2, input, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C,
                            branch, N, C, C, drop.attention);

    layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p.ln2w + l * C, p.ln2b + l * C, N, C);
    fill_rows_with_bias(fch, 4 * C, p.fcb + l * 4 * C, N, 4 * C);
    matmul_forward_accumulate(fch, ln2, p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C);
    gelu_forward(gelu, fch, BT * 4 * C);
    residual_branch_forward(residual3, residual2, gelu, p.fcprojw + (size_t)l * 4 * C * C, p.fcprojb + l * C,
                            branch, N, 4 * C, C, drop.mlp);
}

// The last block. Only each sequence's last real position reaches the head,
// and a position's output depends on the other positions only through their
// keys and values. So keys and values are computed everywhere, and the query,
// attention, projection and MLP for the B last positions alone: a (B,C)
// computation instead of (B,T,C). Same math as block_forward.
void last_block_forward(GPT2 *model, const float *input) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, NH = cfg->num_heads, N = B * T;
    const int l = cfg->num_layers - 1;
    const size_t BT = (size_t)N;
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    float *ln1 = a.ln1 + l * BT * C, *ln1_mean = a.ln1_mean + l * BT, *ln1_rstd = a.ln1_rstd + l * BT;
    float *qkv = a.qkv + l * BT * 3 * C;
    const float *qkvw = p.qkvw + (size_t)l * 3 * C * C, *qkvb = p.qkvb + l * 3 * C;
    float *gelu = model->bufs.gelu, *branch = model->bufs.branch; // (B,4C) and (B,C) of them
    const int *lengths = model->lengths;
    LayerDropout drop;
    layer_dropout(&drop, model, l, lengths);

    // keys and values at every position: qkv[:, C:3C] = LN1(input) . W_kv^T + b_kv
    layernorm_forward(ln1, ln1_mean, ln1_rstd, input, p.ln1w + l * C, p.ln1b + l * C, N, C);
    fill_rows_with_bias(qkv + C, 3 * C, qkvb + C, N, 2 * C);
    const StridedMatrix x = {ln1, C, 1}, w_kv_transposed = {qkvw + (size_t)C * C, 1, C};
    gemm(N, 2 * C, C, x, w_kv_transposed, qkv + C, 3 * C, 1);

    // the query and everything after it at the last positions only
    gather_last_positions(a.last_ln1, ln1, lengths, B, T, C);
    fill_rows_with_bias(a.last_q, C, qkvb, B, C);
    matmul_forward_accumulate(a.last_q, a.last_ln1, qkvw, B, C, C);
    last_attention_forward(a.last_atty, a.last_att, a.last_q, qkv, lengths, B, T, C, NH, drop.probs);
    gather_last_positions(a.last_residual2, input, lengths, B, T, C); // the residual, then the branch on top
    residual_branch_forward(a.last_residual2, a.last_residual2, a.last_atty, p.attprojw + (size_t)l * C * C,
                            p.attprojb + l * C, branch, B, C, C, drop.attention);
    layernorm_forward(a.last_ln2, a.last_ln2_mean, a.last_ln2_rstd, a.last_residual2,
                      p.ln2w + l * C, p.ln2b + l * C, B, C);
    fill_rows_with_bias(a.last_fch, 4 * C, p.fcb + l * 4 * C, B, 4 * C);
    matmul_forward_accumulate(a.last_fch, a.last_ln2, p.fcw + (size_t)l * 4 * C * C, B, C, 4 * C);
    gelu_forward(gelu, a.last_fch, (size_t)B * 4 * C);
    residual_branch_forward(a.last_residual3, a.last_residual2, gelu, p.fcprojw + (size_t)l * 4 * C * C,
                            p.fcprojb + l * C, branch, B, 4 * C, C, drop.mlp);
}

// The sampled softmax (--softmax sampled) of a language model's training
// passes: the softmax runs over the distinct next tokens of the batch, U,
// instead of all V tokens, which cuts the head's work from N V C to N |U| C
// (|U| is a few thousand for a batch of 4096 tokens). A token v of U stands
// for the tokens left out: its logit is corrected by -log q_v, where
//   q_v = 1 - (1 - p_v)^N
// is the chance that v is among N tokens drawn with their frequencies p_v in
// the training text; then the sampled softmax's gradient estimates the full
// one's (Jean et al. 2015, "On Using Very Large Target Vocabulary for Neural
// Machine Translation"; TensorFlow's sampled_softmax_loss). Only the rows of
// wte in U get the head's gradient. Its loss is lower than the full
// softmax's; evaluation (grad_scale 0) always uses the full softmax.
// Fills the candidates (ascending), their wte rows, corrections and the
// targets as places among them; returns |U|.
int sampled_softmax_candidates(GPT2 *model) {
    const GPT2Config *cfg = &model->config;
    const int n = model->lm_predictions, C = cfg->channels;
    BackwardBuffers d = model->bufs;
    if (model->unigram == NULL) { fail("the sampled softmax needs the tokens' frequencies (model->unigram)"); }
    for (int v = 0; v < cfg->vocab_size; v++) { model->lm_column[v] = -1; }
    for (int i = 0; i < n; i++) { model->lm_column[model->lm_targets[i]] = 0; }
    int U = 0;
    for (int v = 0; v < cfg->vocab_size; v++) {
        if (model->lm_column[v] < 0) { continue; }
        model->lm_column[v] = U;
        model->lm_candidates[U] = v;
        const double p = model->unigram[v] > 0.0 ? model->unigram[v] : 1.0 / (double)n; // a token unseen in training
        d.lm_offsets[U] = (float)-log(-expm1((double)n * log1p(-p)));
        U++;
    }
    for (int i = 0; i < n; i++) { model->lm_candidate_targets[i] = model->lm_column[model->lm_targets[i]]; }
    #pragma omp parallel for schedule(static)
    for (int u = 0; u < U; u++) {
        memcpy(d.lm_wsub + (size_t)u * C, model->params.wte + (size_t)model->lm_candidates[u] * C, (size_t)C * sizeof(float));
    }
    model->lm_num_candidates = U;
    return U;
}

// The output of a language model: the final LayerNorm at every position,
// then the tied head and the next-token loss at the positions that have a
// next token (t < lengths[b] - 1), gathered into rows: padding costs nothing
// in the head, which for small models is most of the work.
void language_model_head_forward(GPT2 *model, float grad_scale) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels;
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs;
    const float *top = a.residual3 + (size_t)(cfg->num_layers - 1) * B * T * C;
    layernorm_forward(a.pooled, a.lnf_mean, a.lnf_rstd, top, p.lnfw, p.lnfb, B * T, C);
    int n = 0;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t + 1 < model->lengths[b]; t++) {
            model->lm_positions[n] = b * T + t;
            model->lm_targets[n] = model->tokens[b * T + t + 1];
            n++;
        }
    }
    model->lm_predictions = n;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        memcpy(d.lm_x + (size_t)i * C, a.pooled + (size_t)model->lm_positions[i] * C, (size_t)C * sizeof(float));
    }
    model->lm_num_candidates = 0;
    double total;
    if (model->sampled_softmax && grad_scale != 0.0f) {
        const int U = sampled_softmax_candidates(model);
        total = lm_head_forward_backward(d.lm_dx, d.lm_dwte, d.lm_logits, d.lm_x, model->lm_candidate_targets, d.lm_wsub,
                                         d.lm_offsets, n, C, U, U, grad_scale);
    } else {
        total = lm_head_forward_backward(d.lm_dx, d.lm_dwte, d.lm_logits, d.lm_x, model->lm_targets, p.wte,
                                         NULL, n, C, cfg->vocab_size, cfg->padded_vocab_size, grad_scale);
    }
    model->loss = (float)(total / n);
}

// The output of a classifier: the last block at the last real positions, the
// final LayerNorm there, the head, and the loss when the batch has targets.
void classifier_output_forward(GPT2 *model, const Batch *batch, float grad_scale) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, K = cfg->num_labels, last = cfg->num_layers - 1;
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    last_block_forward(model, last == 0 ? a.encoded : a.residual3 + (last - 1) * (size_t)B * T * C);
    layernorm_forward(a.pooled, a.lnf_mean, a.lnf_rstd, a.last_residual3, p.lnfw, p.lnfb, B, C);
    classifier_forward(model->logits, a.pooled, p.score, B, C, K);
    const int has_targets = K >= 2 ? batch->labels != NULL : batch->targets != NULL;
    if (!has_targets) { return; }
    for (int b = 0; b < B * K; b++) {
        if (!isfinite(model->logits[b])) { model->loss = NAN; return; }
    }
    model->loss = loss_forward_backward(model->bufs.dlogits, model->logits, batch->labels, batch->targets, B, K, grad_scale);
}

// Runs the model on a batch. A classifier fills model->logits (B,K); when the
// batch has targets (labels or regression targets) it also computes
// model->loss. A language model's targets are the batch's own next tokens: it
// always computes model->loss, and keeps no logits (see
// lm_head_forward_backward). With grad_scale != 0 the forward pass also
// leaves what gpt2_backward needs, scaled by grad_scale (1/accumulation steps
// when accumulating); evaluation passes 0. `dropout` is NULL for evaluation
// and inference; training passes its pass's masks.
void gpt2_forward(GPT2 *model, const Batch *batch, float grad_scale, const Dropout *dropout) {
    validate_batch(model, batch);
    if (dropout != NULL && !(dropout->p >= 0.0f && dropout->p < 1.0f)) { fail("dropout %g is out of range [0, 1)", dropout->p); }
    const GPT2Config *cfg = &model->config;
    const int B = batch->B, T = batch->T, C = cfg->channels, lm = is_language_model(cfg);
    gpt2_ensure_buffers(model, B, T);
    model->B = B; model->T = T;
    model->tokens = batch->tokens; model->lengths = batch->lengths;
    model->dropout = dropout != NULL ? *dropout : (Dropout){0.0f, 0, 0, 1};
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;

    encoder_forward(a.encoded, batch->tokens, p.wte, p.wpe, B, T, C);
    DropoutSite site;
    const DropoutSite *drop_embeddings = model_dropout_site(&site, model, 0, NULL);
    if (drop_embeddings != NULL) { dropout_apply(a.encoded, a.encoded, NULL, drop_embeddings, B * T, C); }
    for (int l = 0; l < cfg->num_layers - (lm ? 0 : 1); l++) {
        block_forward(model, l, l == 0 ? a.encoded : a.residual3 + (l - 1) * (size_t)B * T * C);
    }
    model->loss = -1.0f;
    if (lm) { language_model_head_forward(model, grad_scale); }
    else { classifier_output_forward(model, batch, grad_scale); }
    model->backward_ready = grad_scale != 0.0f && model->loss >= 0.0f && isfinite(model->loss);
}

void gpt2_zero_grad(GPT2 *model) {
    if (model->grads_memory == NULL) {
        model->grads_memory = (float *)calloc_or_die(model->num_parameters, sizeof(float), "gradients");
        carve_parameters(&model->grads, model->grads_memory, model->param_sizes);
        return;
    }
    memset(model->grads_memory, 0, model->num_parameters * sizeof(float));
}

// Backward of block_forward: d.dresidual holds dL/d(the block's output) and
// becomes dL/d(its input). A residual add passes its gradient through
// unchanged, so each branch's input gradient is added to it in place.
void block_backward(GPT2 *model, int l, const float *input) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, NH = cfg->num_heads, N = B * T;
    const size_t BT = (size_t)N;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs;
    const float *ln1 = a.ln1 + l * BT * C, *ln1_mean = a.ln1_mean + l * BT, *ln1_rstd = a.ln1_rstd + l * BT;
    const float *qkv = a.qkv + l * BT * 3 * C, *atty = a.atty + l * BT * C;
    const float *att = a.att + l * (size_t)B * NH * T * T, *residual2 = a.residual2 + l * BT * C;
    const float *ln2 = a.ln2 + l * BT * C, *ln2_mean = a.ln2_mean + l * BT, *ln2_rstd = a.ln2_rstd + l * BT;
    const float *fch = a.fch + l * BT * 4 * C;
    LayerDropout drop;
    layer_dropout(&drop, model, l, NULL);

    gelu_forward(d.gelu, fch, BT * 4 * C);
    const float *dmlp = dropout_backward(d.branch, d.dresidual, drop.mlp, N, C);
    matmul_backward(d.dfch, g.fcprojw + (size_t)l * 4 * C * C, g.fcprojb + l * C, dmlp,
                    d.gelu, p.fcprojw + (size_t)l * 4 * C * C, N, 4 * C, C);
    gelu_backward_inplace(d.dfch, fch, BT * 4 * C);
    matmul_backward(d.dln, g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, d.dfch,
                    ln2, p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C);
    layernorm_backward(d.dresidual, g.ln2w + l * C, g.ln2b + l * C, d.dln, residual2,
                       p.ln2w + l * C, ln2_mean, ln2_rstd, N, C);

    const float *dattention = dropout_backward(d.branch, d.dresidual, drop.attention, N, C);
    matmul_backward(d.datty, g.attprojw + (size_t)l * C * C, g.attprojb + l * C, dattention,
                    atty, p.attprojw + (size_t)l * C * C, N, C, C);
    attention_backward(d.dqkv, d.att_scratch, d.datty, qkv, att, B, T, C, NH, drop.probs);
    matmul_backward(d.dln, g.qkvw + (size_t)l * 3 * C * C, g.qkvb + l * 3 * C, d.dqkv,
                    ln1, p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C);
    layernorm_backward(d.dresidual, g.ln1w + l * C, g.ln1b + l * C, d.dln, input,
                       p.ln1w + l * C, ln1_mean, ln1_rstd, N, C);
}

// Backward of last_block_forward: d.dlast holds dL/d(last_residual3) (B,C);
// on return d.dresidual holds dL/d(the block's input) at every position.
void last_block_backward(GPT2 *model, const float *input) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, NH = cfg->num_heads, N = B * T;
    const int l = cfg->num_layers - 1;
    const size_t BT = (size_t)N;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs; // d.gelu, d.dfch, d.dln, d.datty: their first B rows
    const float *ln1 = a.ln1 + l * BT * C, *ln1_mean = a.ln1_mean + l * BT, *ln1_rstd = a.ln1_rstd + l * BT;
    const float *qkv = a.qkv + l * BT * 3 * C, *qkvw = p.qkvw + (size_t)l * 3 * C * C;
    float *dqkvw = g.qkvw + (size_t)l * 3 * C * C, *dqkvb = g.qkvb + l * 3 * C;
    const int *lengths = model->lengths;
    LayerDropout drop;
    layer_dropout(&drop, model, l, lengths);

    // MLP and attention projection, at the last positions
    gelu_forward(d.gelu, a.last_fch, (size_t)B * 4 * C);
    const float *dmlp = dropout_backward(d.branch, d.dlast, drop.mlp, B, C);
    matmul_backward(d.dfch, g.fcprojw + (size_t)l * 4 * C * C, g.fcprojb + l * C, dmlp,
                    d.gelu, p.fcprojw + (size_t)l * 4 * C * C, B, 4 * C, C);
    gelu_backward_inplace(d.dfch, a.last_fch, (size_t)B * 4 * C);
    matmul_backward(d.dln, g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, d.dfch,
                    a.last_ln2, p.fcw + (size_t)l * 4 * C * C, B, C, 4 * C);
    layernorm_backward(d.dlast, g.ln2w + l * C, g.ln2b + l * C, d.dln, a.last_residual2,
                       p.ln2w + l * C, a.last_ln2_mean, a.last_ln2_rstd, B, C);
    const float *dattention = dropout_backward(d.branch, d.dlast, drop.attention, B, C);
    matmul_backward(d.datty, g.attprojw + (size_t)l * C * C, g.attprojb + l * C, dattention,
                    a.last_atty, p.attprojw + (size_t)l * C * C, B, C, C);

    // attention: dq at the last positions, dk and dv everywhere
    last_attention_backward(d.dlast_q, d.dqkv, d.datty, a.last_q, qkv, a.last_att, lengths, B, T, C, NH, drop.probs);

    // keys and values: dln1 = dkv . W_kv;  dW_kv += dkv^T . ln1;  db_kv += sum dkv
    const StridedMatrix dkv = {d.dqkv + C, 3 * C, 1}, w_kv = {qkvw + (size_t)C * C, C, 1};
    gemm(N, C, 2 * C, dkv, w_kv, d.dln, C, 0);
    const StridedMatrix dkv_transposed = {d.dqkv + C, 1, 3 * C}, x = {ln1, C, 1};
    gemm(2 * C, C, N, dkv_transposed, x, dqkvw + (size_t)C * C, C, 1);
    bias_backward(dqkvb + C, d.dqkv + C, 3 * C, N, 2 * C);
    // the query: the same three products for the B last positions
    matmul_backward(d.dlast_ln1, dqkvw, dqkvb, d.dlast_q, a.last_ln1, qkvw, B, C, C);
    scatter_add_last_positions(d.dln, d.dlast_ln1, model->lengths, B, T, C);

    // the residual stream: the last positions' gradient passes through the
    // residual adds; LN1 feeds every position
    memset(d.dresidual, 0, BT * C * sizeof(float));
    scatter_add_last_positions(d.dresidual, d.dlast, model->lengths, B, T, C);
    layernorm_backward(d.dresidual, g.ln1w + l * C, g.ln1b + l * C, d.dln, input,
                       p.ln1w + l * C, ln1_mean, ln1_rstd, N, C);
}

// Backward of language_model_head_forward, whose head already computed its
// gradients: dwte += the head's part; the gradients of the gathered rows go
// back to their positions (0 where nothing was predicted), and through the
// final LayerNorm into d.dresidual, dL/d(the last block's output).
void language_model_head_backward(GPT2 *model) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels;
    const size_t BTC = (size_t)B * T * C, n = (size_t)cfg->padded_vocab_size * C;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs;
    if (model->lm_num_candidates > 0) { // sampled softmax: the candidates' rows
        #pragma omp parallel for schedule(static)
        for (int u = 0; u < model->lm_num_candidates; u++) {
            float *row = g.wte + (size_t)model->lm_candidates[u] * C;
            for (int i = 0; i < C; i++) { row[i] += d.lm_dwte[(size_t)u * C + i]; }
        }
    } else {
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) { g.wte[i] += d.lm_dwte[i]; }
    }
    memset(d.dpooled, 0, BTC * sizeof(float));
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < model->lm_predictions; i++) {
        memcpy(d.dpooled + (size_t)model->lm_positions[i] * C, d.lm_dx + (size_t)i * C, (size_t)C * sizeof(float));
    }
    memset(d.dresidual, 0, BTC * sizeof(float));
    const float *top = a.residual3 + (size_t)(cfg->num_layers - 1) * B * T * C;
    layernorm_backward(d.dresidual, g.lnfw, g.lnfb, d.dpooled, top, p.lnfw, a.lnf_mean, a.lnf_rstd, B * T, C);
}

// Backward of classifier_output_forward, from dlogits to d.dresidual.
void classifier_output_backward(GPT2 *model) {
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, K = cfg->num_labels, last = cfg->num_layers - 1;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs;
    classifier_backward(d.dpooled, g.score, d.dlogits, a.pooled, p.score, B, C, K);
    memset(d.dlast, 0, (size_t)B * C * sizeof(float));
    layernorm_backward(d.dlast, g.lnfw, g.lnfb, d.dpooled, a.last_residual3, p.lnfw,
                       a.lnf_mean, a.lnf_rstd, B, C);
    last_block_backward(model, last == 0 ? a.encoded : a.residual3 + (last - 1) * (size_t)B * T * C);
}

// Adds the gradient of the last forward's loss (times its grad_scale) to the
// parameter gradients. Call gpt2_zero_grad before the first micro-batch.
void gpt2_backward(GPT2 *model) {
    if (!model->backward_ready) { fail("gpt2_backward needs a forward pass with targets, grad_scale != 0 and a finite loss"); }
    if (model->grads_memory == NULL) { gpt2_zero_grad(model); }
    if (max_threads() > model->buffer_threads) { fail("gpt2_backward: the thread count grew after the forward pass"); }
    const GPT2Config *cfg = &model->config;
    const int B = model->B, T = model->T, C = cfg->channels, lm = is_language_model(cfg);
    const size_t BTC = (size_t)B * T * C;
    ParameterTensors g = model->grads;
    ActivationTensors a = model->acts;
    BackwardBuffers d = model->bufs;

    if (lm) { language_model_head_backward(model); }
    else { classifier_output_backward(model); }
    for (int l = cfg->num_layers - (lm ? 1 : 2); l >= 0; l--) {
        block_backward(model, l, l == 0 ? a.encoded : a.residual3 + (l - 1) * BTC);
    }
    DropoutSite site;
    const DropoutSite *drop_embeddings = model_dropout_site(&site, model, 0, NULL);
    if (drop_embeddings != NULL) { dropout_apply(d.dresidual, d.dresidual, NULL, drop_embeddings, B * T, C); }
    encoder_backward(g.wte, g.wpe, d.dresidual, model->tokens, B, T, C);
}

// ----------------------------------------------------------------------------
// Optimisation: learning-rate schedule, gradient clipping, AdamW.

typedef struct {
    float learning_rate; // peak learning rate
    float beta1, beta2, eps;
    float weight_decay;  // decoupled, on matrices and embeddings only
    float max_grad_norm; // clip the global gradient norm to this; <= 0: off
    int warmup_steps;
    int total_steps;     // the learning rate reaches 0 here
} OptimizerConfig;

// Hugging Face's linear schedule: for update k = 0, 1, ...
//   lr_k = lr * k / W                              k < W
//   lr_k = lr * max(0, (N - k) / max(1, N - W))    otherwise
float learning_rate_at(const OptimizerConfig *opt, int step) {
    if (step < opt->warmup_steps) { return opt->learning_rate * (float)step / (float)opt->warmup_steps; }
    const int decay = opt->total_steps - opt->warmup_steps;
    const float remaining = (float)(opt->total_steps - step) / (float)(decay > 1 ? decay : 1);
    return opt->learning_rate * (remaining > 0.0f ? remaining : 0.0f);
}

// sqrt(sum g^2) over every gradient, in double. The sum runs over fixed-size
// chunks in a fixed order, so the result does not depend on the thread count.
float gradient_norm(const float *grads, size_t n) {
    const size_t chunk = 1 << 16;
    const long num_chunks = (long)((n + chunk - 1) / chunk);
    double *partial = (double *)malloc_or_die((size_t)num_chunks * sizeof(double), "gradient norm");
    #pragma omp parallel for schedule(static)
    for (long c = 0; c < num_chunks; c++) {
        const size_t start = (size_t)c * chunk, end = start + chunk < n ? start + chunk : n;
        const float *g = grads + start;
        const int len = (int)(end - start);
        // eight running sums, so the adds need not wait for each other and
        // the loop vectorizes (gcc 12 left it scalar, reading the gradients
        // at 9 GB/s, while the index was a size_t and the square a cast
        // expression; written this way it packs four doubles per vector)
        double sums[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        int i = 0;
        for (; i + 8 <= len; i += 8) {
            for (int j = 0; j < 8; j++) {
                const double x = g[i + j];
                sums[j] += x * x;
            }
        }
        for (; i < len; i++) {
            const double x = g[i];
            sums[0] += x * x;
        }
        partial[c] = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]));
    }
    double total = 0.0;
    for (long c = 0; c < num_chunks; c++) { total += partial[c]; }
    free(partial);
    return (float)sqrt(total);
}

// The constants of one AdamW update of one tensor (see gpt2_update).
typedef struct {
    float clip, b1, b2, eps, bias_correction2_sqrt, step_size, decay_factor;
} AdamWStep;

// AdamW on n consecutive parameters, their gradients zeroed; returns 1 if a
// new parameter is NaN or infinite. A function of its own so that the four
// arrays are restrict-qualified arguments: inside an OpenMP region clang 14
// could not prove them apart and left the loop scalar (0.19 s instead of
// 0.10 s per 124M update).
static int adamw_range(float *restrict param, float *restrict grad, float *restrict m, float *restrict v, size_t n,
                       AdamWStep s) {
    int overflowed = 0;
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i] * s.clip;
        m[i] = s.b1 * m[i] + (1.0f - s.b1) * g;
        v[i] = s.b2 * v[i] + (1.0f - s.b2) * g * g;
        const float denom = sqrtf(v[i]) / s.bias_correction2_sqrt + s.eps;
        param[i] = param[i] * s.decay_factor - s.step_size * m[i] / denom;
        overflowed |= !isfinite(param[i]);
        grad[i] = 0.0f;
    }
    return overflowed;
}

// One AdamW update (torch.optim.AdamW) at update index `step` (0-based), with
// the gradient clipped to max_grad_norm first (clip_grad_norm_), and the
// gradients zeroed in the same pass for the next step:
//   g = grad * min(1, max_norm / (norm + 1e-6))
//   m = b1 m + (1 - b1) g;      v = b2 v + (1 - b2) g^2
//   p = p - lr wd p             (decoupled weight decay, decaying tensors only)
//   p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps),   t = step + 1
// Returns the gradient norm before clipping; when it is NaN or infinite,
// nothing is updated. The same pass checks every new parameter: an update
// that overflows one is named in model->overflowed (NULL if none did).
float gpt2_update(GPT2 *model, const OptimizerConfig *opt, int step) {
    if (model->grads_memory == NULL) { fail("gpt2_update needs gradients: call gpt2_backward first"); }
    if (model->m_memory == NULL) {
        model->m_memory = (float *)calloc_or_die(model->num_parameters, sizeof(float), "AdamW m");
        model->v_memory = (float *)calloc_or_die(model->num_parameters, sizeof(float), "AdamW v");
    }
    model->overflowed = NULL;
    const float norm = gradient_norm(model->grads_memory, model->num_parameters);
    if (!isfinite(norm)) { return norm; } // leave the parameters untouched
    float clip = 1.0f;
    if (opt->max_grad_norm > 0.0f) {
        const float coef = opt->max_grad_norm / (norm + 1e-6f);
        if (coef < 1.0f) { clip = coef; }
    }
    const float lr = learning_rate_at(opt, step);
    const float b1 = opt->beta1, b2 = opt->beta2, eps = opt->eps;
    const double t = (double)step + 1.0;
    const float bias_correction1 = (float)(1.0 - pow(b1, t));
    const float bias_correction2_sqrt = (float)sqrt(1.0 - pow(b2, t));
    const float step_size = lr / bias_correction1;
    size_t offset = 0;
    for (int tensor = 0; tensor < NUM_PARAMETER_TENSORS; tensor++) {
        const size_t n = model->param_sizes[tensor];
        const AdamWStep s = {clip, b1, b2, eps, bias_correction2_sqrt, step_size,
                             parameter_decays[tensor] ? 1.0f - lr * opt->weight_decay : 1.0f};
        int overflowed = 0;
        #pragma omp parallel reduction(|:overflowed)
        {   // each thread its contiguous share of the tensor
            const unsigned long long part = (unsigned long long)thread_id(), parts = (unsigned long long)team_threads();
            const size_t i0 = offset + (size_t)(n * part / parts), i1 = offset + (size_t)(n * (part + 1) / parts);
            overflowed |= adamw_range(model->params_memory + i0, model->grads_memory + i0, model->m_memory + i0,
                                      model->v_memory + i0, i1 - i0, s);
        }
        if (overflowed && model->overflowed == NULL) { model->overflowed = parameter_names[tensor]; }
        offset += n;
    }
    return norm;
}

// The name of the first parameter tensor whose gradient is not finite.
const char *first_nonfinite_gradient(const GPT2 *model) {
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        for (size_t i = 0; i < model->param_sizes[t]; i++) {
            if (!isfinite(model->grads_memory[offset + i])) { return parameter_names[t]; }
        }
        offset += model->param_sizes[t];
    }
    return "no tensor";
}

void gpt2_free(GPT2 *model) {
    free(model->params_memory);
    free(model->grads_memory);
    free(model->m_memory);
    free(model->v_memory);
    free(model->acts_memory);
    free(model->bufs_memory);
    free(model->logits);
    free(model->lm_targets);
    free(model->lm_positions);
    free(model->lm_candidates);
    free(model->lm_column);
    free(model->lm_candidate_targets);
    memset(model, 0, sizeof(*model));
}

// ----------------------------------------------------------------------------
// Random numbers: a small, seedable RNG (xorshift64*), so that initialisation
// and the data order are reproducible everywhere. (Dropout masks do not use
// it: they are hashes, see the dropout section.)

uint64_t rng_next(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}
float rng_uniform(uint64_t *state) { // in (0, 1)
    return ((float)(rng_next(state) >> 40) + 0.5f) / 16777216.0f;
}
float rng_normal(uint64_t *state) { // Box-Muller
    const float u1 = rng_uniform(state), u2 = rng_uniform(state);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}
uint64_t rng_seed(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL; }

// ----------------------------------------------------------------------------
// Files. Datasets and checkpoints are read and written through the platform
// code after the checkpoints, the only OS-specific code: a file is read
// whole (memory-mapped where the OS can), its numbers little-endian, and
// written atomically (to PATH.tmp, flushed to disk, renamed over PATH).

typedef struct {
    const unsigned char *data; // the whole file, read-only
    size_t size;               // in bytes
    int is_mapped;             // 1: munmap on close, 0: free on close
} MappedFile;

const char *map_file(MappedFile *file, const char *path);
void unmap_file(MappedFile *file);
void write_file_atomically(const char *path, const void *header, size_t header_bytes,
                           const float *const *arrays, int count, size_t n);
void require_little_endian(void);
int32_t read_i32(const unsigned char *p);
int64_t read_i64(const unsigned char *p);

// ----------------------------------------------------------------------------
// Tokenized datasets, as written by prepro_imdb.py (format in dev/FORMATS.md section 3):
// a 1024-byte header, then per example an int64 offset, int32 length, int32
// label and int32 star rating (struct of arrays), then uint16 token ids.

#define DATA_MAGIC 20261127
#define DATA_VERSION 1
#define DATA_HEADER_BYTES 1024
#define MAX_STARS 10 // star ratings are 1..MAX_STARS, 0 when unrated

typedef struct {
    const char *path;
    MappedFile file;
    int num_labels;          // 0 for unlabelled data
    int vocab_size;          // of the tokenizer the data was made with
    int64_t num_examples;
    int64_t num_tokens;
    const int64_t *offsets;  // (N) start of each example in tokens
    const int32_t *lengths;  // (N)
    const int32_t *labels;   // (N) 0..num_labels-1, or -1 when unlabelled
    const int32_t *stars;    // (N) 1..MAX_STARS, 0 when unrated
    const uint16_t *tokens;  // (num_tokens)
} Dataset;

// Checks a dataset held in memory completely (header, sizes, offsets,
// lengths, labels, star ratings, every token id) and points d's arrays into it. Returns 1,
// or 0 with the reason in `error`. vocab_size: the model's, which the data
// must have been tokenized for; 0 when the model is not known yet.
int dataset_parse(Dataset *d, const unsigned char *h, size_t size, int vocab_size, char *error, size_t error_size) {
    if (size < DATA_HEADER_BYTES) { snprintf(error, error_size, "file is %zu bytes, too small for a dataset header", size); return 0; }
    if (read_i32(h) != DATA_MAGIC) { snprintf(error, error_size, "bad magic number %d: not a dataset made by prepro_imdb.py", read_i32(h)); return 0; }
    if (read_i32(h + 4) != DATA_VERSION) { snprintf(error, error_size, "dataset version %d is not supported (need %d)", read_i32(h + 4), DATA_VERSION); return 0; }
    d->num_labels = read_i32(h + 8);
    const int file_vocab = d->vocab_size = read_i32(h + 12);
    d->num_examples = read_i64(h + 16);
    d->num_tokens = read_i64(h + 24);
    if (d->num_labels < 0 || d->num_labels > 65536) { snprintf(error, error_size, "num_labels %d is out of range 0..65536", d->num_labels); return 0; }
    if (file_vocab < 1 || file_vocab > 65536) { snprintf(error, error_size, "vocabulary size %d is out of range 1..65536", file_vocab); return 0; }
    if (vocab_size > 0 && file_vocab != vocab_size) { snprintf(error, error_size, "tokenized for vocabulary size %d, the model has %d", file_vocab, vocab_size); return 0; }
    if (d->num_examples < 1) { snprintf(error, error_size, "the dataset has no examples"); return 0; }
    const int64_t payload = (int64_t)(size - DATA_HEADER_BYTES);
    if (d->num_examples > payload / 20 || d->num_tokens < 0 || d->num_tokens > payload / 2 ||
        20 * d->num_examples + 2 * d->num_tokens != payload) {
        snprintf(error, error_size, "file is %zu bytes but its header (%lld examples, %lld tokens) describes %.0f bytes (truncated or corrupt)",
                 size, (long long)d->num_examples, (long long)d->num_tokens,
                 DATA_HEADER_BYTES + 20.0 * (double)d->num_examples + 2.0 * (double)d->num_tokens);
        return 0;
    }
    const size_t N = (size_t)d->num_examples;
    d->offsets = (const int64_t *)(h + DATA_HEADER_BYTES);
    d->lengths = (const int32_t *)(h + DATA_HEADER_BYTES + 8 * N);
    d->labels = (const int32_t *)(h + DATA_HEADER_BYTES + 12 * N);
    d->stars = (const int32_t *)(h + DATA_HEADER_BYTES + 16 * N);
    d->tokens = (const uint16_t *)(h + DATA_HEADER_BYTES + 20 * N);
    int64_t next = 0;
    for (size_t i = 0; i < N; i++) {
        if (d->offsets[i] != next) {
            snprintf(error, error_size, "example %zu starts at token %lld, expected %lld", i, (long long)d->offsets[i], (long long)next);
            return 0;
        }
        if (d->lengths[i] < 1 || d->lengths[i] > d->num_tokens - next) {
            snprintf(error, error_size, "example %zu has length %d, outside 1..%lld", i, d->lengths[i], (long long)(d->num_tokens - next));
            return 0;
        }
        const int label = d->labels[i];
        if (d->num_labels > 0 ? (label < 0 || label >= d->num_labels) : label != -1) {
            snprintf(error, error_size, "example %zu has label %d, out of range for %d labels", i, label, d->num_labels);
            return 0;
        }
        if (d->stars[i] < 0 || d->stars[i] > MAX_STARS) { // regression trains on them
            snprintf(error, error_size, "example %zu has star rating %d, out of range 0..%d (0: unrated)", i, d->stars[i], MAX_STARS);
            return 0;
        }
        next += d->lengths[i];
    }
    if (next != d->num_tokens) {
        snprintf(error, error_size, "examples cover %lld tokens, the header says %lld", (long long)next, (long long)d->num_tokens);
        return 0;
    }
    for (int64_t i = 0; i < d->num_tokens; i++) {
        if (d->tokens[i] >= file_vocab) {
            snprintf(error, error_size, "token %lld has id %d, out of range for vocabulary %d", (long long)i, d->tokens[i], file_vocab);
            return 0;
        }
    }
    return 1;
}

// Maps and validates a dataset completely before training starts.
void dataset_open(Dataset *d, const char *path, int vocab_size) {
    memset(d, 0, sizeof(*d));
    d->path = path;
    require_little_endian();
    const char *why = map_file(&d->file, path);
    if (why != NULL) { fail("cannot open dataset %s: %s (make it with prepro_imdb.py)", path, why); }
    char error[256];
    if (!dataset_parse(d, d->file.data, d->file.size, vocab_size, error, sizeof(error))) { fail("%s: %s", path, error); }
}

void dataset_close(Dataset *d) { unmap_file(&d->file); }

// Regression learns the star rating, which unrated examples (stars 0, e.g.
// IMDB's unsup split) do not have: the first such example, or -1.
int64_t first_unrated_example(const Dataset *d) {
    for (int64_t i = 0; i < d->num_examples; i++) {
        if (d->stars[i] < 1) { return i; }
    }
    return -1;
}

// Long reviews are cut to max_len tokens. Keeping the head and the tail (a
// quarter and three quarters) works best for BERT on IMDB (Sun et al. 2019).
typedef enum { TRUNCATE_HEAD, TRUNCATE_TAIL, TRUNCATE_HEAD_TAIL } Truncation;

int truncated_length(int length, int max_len) { return length < max_len ? length : max_len; }

// Copies example i, truncated, into dst; returns its length.
int copy_example(int *dst, const Dataset *d, int64_t i, int max_len, Truncation how) {
    const uint16_t *src = d->tokens + d->offsets[i];
    const int length = d->lengths[i];
    if (length <= max_len) {
        for (int t = 0; t < length; t++) { dst[t] = src[t]; }
        return length;
    }
    const int head = how == TRUNCATE_HEAD ? max_len : how == TRUNCATE_TAIL ? 0 : max_len / 4;
    const int tail = max_len - head;
    for (int t = 0; t < head; t++) { dst[t] = src[t]; }
    for (int t = 0; t < tail; t++) { dst[head + t] = src[length - tail + t]; }
    return max_len;
}

// Gathers examples idx[0..B) into a batch padded to its longest sequence.
// Returns the number of padded (computed but unused) positions.
long fill_batch(Batch *batch, const Dataset *d, const int64_t *idx, int B, int max_len,
                Truncation how, int regression) {
    int T = 1;
    for (int b = 0; b < B; b++) {
        const int len = truncated_length(d->lengths[idx[b]], max_len);
        if (len > T) { T = len; }
    }
    batch->B = B;
    batch->T = T;
    long padding = 0;
    for (int b = 0; b < B; b++) {
        int *row = batch->tokens + (size_t)b * T;
        const int len = copy_example(row, d, idx[b], max_len, how);
        for (int t = len; t < T; t++) { row[t] = 0; } // any id would do; 0 is one in every vocabulary
        batch->lengths[b] = len;
        padding += T - len;
        if (regression) { batch->targets[b] = (float)d->stars[idx[b]]; }
        else { batch->labels[b] = d->labels[idx[b]]; }
    }
    return padding;
}

Batch batch_alloc(int B, int max_len) {
    Batch batch;
    batch.B = B;
    batch.T = max_len;
    batch.tokens = (int *)malloc_or_die((size_t)B * max_len * sizeof(int), "batch tokens");
    batch.lengths = (int *)malloc_or_die((size_t)B * sizeof(int), "batch lengths");
    batch.labels = (int *)malloc_or_die((size_t)B * sizeof(int), "batch labels");
    batch.targets = (float *)malloc_or_die((size_t)B * sizeof(float), "batch targets");
    return batch;
}

void batch_free(Batch *batch) {
    free(batch->tokens); free(batch->lengths); free(batch->labels); free(batch->targets);
}

// order (N) = a random permutation of 0..N-1 (Fisher-Yates), from *state.
void shuffled_indices(int64_t *order, int64_t N, uint64_t *state) {
    for (int64_t i = 0; i < N; i++) { order[i] = i; }
    for (int64_t i = N - 1; i > 0; i--) {
        const int64_t j = (int64_t)(rng_next(state) % (uint64_t)(i + 1));
        const int64_t tmp = order[i]; order[i] = order[j]; order[j] = tmp;
    }
}

// The random state of epoch `epoch` of a run seeded with `seed`.
uint64_t epoch_seed(uint64_t seed, int epoch) { return rng_seed(seed * 1000003ULL + (uint64_t)epoch); }

// Length grouping, like Hugging Face's group_by_length: shuffle, cut into
// mega-batches of 50 batches, sort each by length so a batch holds sequences
// of similar length (little padding), then shuffle the order of the batches.
// order (N) receives example indices; batches are consecutive runs of B.
void epoch_order(int64_t *order, const Dataset *d, int B, int max_len, uint64_t seed, int epoch) {
    const int64_t N = d->num_examples;
    uint64_t state = epoch_seed(seed, epoch);
    shuffled_indices(order, N, &state);
    const int64_t mega = (int64_t)B * 50;
    for (int64_t start = 0; start < N; start += mega) {
        const int64_t end = start + mega < N ? start + mega : N;
        for (int64_t i = start + 1; i < end; i++) { // insertion sort, longest first
            const int64_t x = order[i];
            const int len = truncated_length(d->lengths[x], max_len);
            int64_t j = i - 1;
            while (j >= start && truncated_length(d->lengths[order[j]], max_len) < len) { order[j + 1] = order[j]; j--; }
            order[j + 1] = x;
        }
    }
    const int64_t num_batches = N / B; // full batches only; a ragged tail is dropped
    for (int64_t i = num_batches - 1; i > 0; i--) {
        const int64_t j = (int64_t)(rng_next(&state) % (uint64_t)(i + 1));
        for (int b = 0; b < B; b++) {
            const int64_t tmp = order[i * B + b]; order[i * B + b] = order[j * B + b]; order[j * B + b] = tmp;
        }
    }
}

// A language model reads text rather than examples: the documents of one or
// more datasets (their labels unused) as one stream of tokens, each document
// preceded by <|endoftext|> as in GPT-2's training data, cut into rows of T
// tokens. Row r is stream[r (T-1) .. r (T-1) + T): neighbouring rows share
// one token, so each token after the first is predicted exactly once per
// epoch. Packed rows have no padding, and a document may begin anywhere in a
// row (attention then reads across the <|endoftext|>, as GPT-2's did).
#define END_OF_TEXT 50256 // GPT-2's <|endoftext|>
#define MAX_STREAM_SETS 8

typedef struct {
    const Dataset *sets[MAX_STREAM_SETS];
    int64_t set_first[MAX_STREAM_SETS + 1]; // index of each set's first document among all the sets'
    int64_t first_doc, num_docs;            // the stream: documents first_doc.. of them
    int64_t *doc_start;                     // (num_docs + 1) where each document begins in the stream
    int T;                                  // tokens per row
    int64_t num_rows;                       // full rows
} TokenStream;

// Document `doc` of the stream (counted from first_doc): its tokens and length.
const uint16_t *stream_document(const TokenStream *s, int64_t doc, int *length) {
    const int64_t g = s->first_doc + doc;
    int k = 0;
    while (g >= s->set_first[k + 1]) { k++; }
    const Dataset *d = s->sets[k];
    const int64_t i = g - s->set_first[k];
    *length = d->lengths[i];
    return d->tokens + d->offsets[i];
}

// The stream of documents first_doc .. first_doc + num_docs - 1 of the sets
// taken in order.
void token_stream_open(TokenStream *s, const Dataset *const *sets, int num_sets, int64_t first_doc,
                       int64_t num_docs, int T) {
    memset(s, 0, sizeof(*s));
    if (num_sets < 1 || num_sets > MAX_STREAM_SETS) { fail("a language model reads 1..%d datasets, not %d", MAX_STREAM_SETS, num_sets); }
    if (T < 2) { fail("--max-len %d: a language model's rows need at least 2 tokens", T); }
    for (int k = 0; k < num_sets; k++) {
        s->sets[k] = sets[k];
        s->set_first[k + 1] = s->set_first[k] + sets[k]->num_examples;
        if (sets[k]->vocab_size <= END_OF_TEXT) {
            fail("%s: vocabulary of %d tokens has no <|endoftext|> (%d) to separate documents", sets[k]->path,
                 sets[k]->vocab_size, END_OF_TEXT);
        }
    }
    const int64_t total = s->set_first[num_sets];
    if (first_doc < 0 || num_docs < 1 || first_doc + num_docs > total) { fail("no documents for the language model's stream"); }
    s->first_doc = first_doc;
    s->num_docs = num_docs;
    s->T = T;
    s->doc_start = (int64_t *)malloc_or_die((size_t)(num_docs + 1) * sizeof(int64_t), "document starts");
    s->doc_start[0] = 0;
    for (int64_t doc = 0; doc < num_docs; doc++) {
        int length;
        stream_document(s, doc, &length);
        s->doc_start[doc + 1] = s->doc_start[doc] + 1 + length;
    }
    s->num_rows = (s->doc_start[num_docs] - 1) / (T - 1);
    if (s->num_rows < 1) { fail("%lld documents make no row of %d tokens; use a smaller --max-len", (long long)num_docs, T); }
}

void token_stream_free(TokenStream *s) { free(s->doc_start); }

// p (V): each token's share of the stream's tokens (for the sampled softmax).
void token_frequencies(const TokenStream *s, double *p, int V) {
    int64_t *counts = (int64_t *)calloc_or_die((size_t)V, sizeof(int64_t), "token counts");
    for (int64_t doc = 0; doc < s->num_docs; doc++) {
        int length;
        const uint16_t *tokens = stream_document(s, doc, &length);
        counts[END_OF_TEXT]++;
        for (int t = 0; t < length; t++) { counts[tokens[t]]++; }
    }
    const double total = (double)s->doc_start[s->num_docs];
    for (int v = 0; v < V; v++) { p[v] = counts[v] / total; }
    free(counts);
}

// Copies row r of the stream (T tokens) into dst.
void token_stream_row(const TokenStream *s, int64_t r, int *dst) {
    const int64_t start = r * (s->T - 1);
    int64_t lo = 0, hi = s->num_docs - 1; // the last document beginning at or before `start`
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (s->doc_start[mid] <= start) { lo = mid; } else { hi = mid - 1; }
    }
    int64_t doc = lo, offset = start - s->doc_start[doc]; // offset 0 is the document's <|endoftext|>
    int length;
    const uint16_t *tokens = stream_document(s, doc, &length);
    for (int t = 0; t < s->T; t++, offset++) {
        if (offset > length) {
            doc++;
            offset = 0;
            tokens = stream_document(s, doc, &length);
        }
        dst[t] = offset == 0 ? END_OF_TEXT : tokens[offset - 1];
    }
}

// Rows idx[0..B) of the stream as a batch: every sequence has length T.
void fill_rows(Batch *batch, const TokenStream *s, const int64_t *idx, int B) {
    batch->B = B;
    batch->T = s->T;
    for (int b = 0; b < B; b++) {
        token_stream_row(s, idx[b], batch->tokens + (size_t)b * s->T);
        batch->lengths[b] = s->T;
    }
}

// ----------------------------------------------------------------------------
// Evaluation: loss, accuracy, precision / recall / F1 and the confusion matrix.

typedef struct {
    int64_t examples;
    double loss;          // mean over examples
    double accuracy;
    int num_classes;      // 2 for regression (sentiment from predicted stars)
    int64_t *confusion;   // (num_classes, num_classes): row = true, column = predicted
} EvalResult;

// Index of the largest logit; for regression (K == 1) the sentiment implied by
// the predicted star rating: positive when above 5.5 (IMDB: pos = 7..10).
int predicted_class(const float *logits, int K) {
    if (K == 1) { return logits[0] > 5.5f; }
    int best = 0;
    for (int k = 1; k < K; k++) { if (logits[k] > logits[best]) { best = k; } }
    return best;
}

int true_class(const Dataset *d, int64_t i, int regression) {
    return regression ? d->stars[i] >= 7 : d->labels[i];
}

// Runs the first `max_examples` (all when <= 0) of a fixed random order of the
// dataset through the model. Examples are sorted by length for little padding.
// Over MPI, batch j runs on rank j % N; the ranks merge their losses and
// predictions in batch order, so the result does not depend on N.
EvalResult evaluate(GPT2 *model, const Dataset *d, int64_t max_examples, int B, int max_len,
                    Truncation how, int regression, uint64_t seed) {
    const int K = model->config.num_labels;
    int64_t n = d->num_examples;
    if (max_examples > 0 && max_examples < n) { n = max_examples; }
    int64_t *order = (int64_t *)malloc_or_die((size_t)d->num_examples * sizeof(int64_t), "eval order");
    uint64_t state = rng_seed(seed ^ 0xE7A1ULL);
    for (int64_t i = 0; i < d->num_examples; i++) { order[i] = i; }
    for (int64_t i = d->num_examples - 1; i > 0; i--) {
        const int64_t j = (int64_t)(rng_next(&state) % (uint64_t)(i + 1));
        const int64_t tmp = order[i]; order[i] = order[j]; order[j] = tmp;
    }
    for (int64_t i = 1; i < n; i++) { // insertion sort of the subset by length
        const int64_t x = order[i];
        int64_t j = i - 1;
        while (j >= 0 && d->lengths[order[j]] > d->lengths[x]) { order[j + 1] = order[j]; j--; }
        order[j + 1] = x;
    }
    EvalResult r;
    memset(&r, 0, sizeof(r));
    r.num_classes = regression ? 2 : K;
    r.confusion = (int64_t *)calloc_or_die((size_t)r.num_classes * r.num_classes, sizeof(int64_t), "confusion");
    Batch batch = batch_alloc(B, max_len);
    double loss_sum = 0.0;
    int64_t correct = 0;
    // a round is one batch per rank: N loss sums, then N B predicted classes
    const int64_t round = (int64_t)B * dp_size;
    double *merged = (double *)malloc_or_die((size_t)(dp_size + round) * sizeof(double), "eval results");
    for (int64_t first = 0; first < n; first += round) {
        memset(merged, 0, (size_t)(dp_size + round) * sizeof(double));
        const int64_t start = first + (int64_t)dp_rank * B;
        if (start < n) {
            const int b_count = (int)(n - start < B ? n - start : B);
            fill_batch(&batch, d, order + start, b_count, max_len, how, regression);
            gpt2_forward(model, &batch, 0.0f, NULL);
            merged[dp_rank] = (double)model->loss * b_count;
            for (int b = 0; b < b_count; b++) {
                merged[dp_size + (int64_t)dp_rank * B + b] = predicted_class(model->logits + b * K, K);
            }
        }
        dp_merge_disjoint(merged, (size_t)(dp_size + round) * sizeof(double));
        for (int rank = 0; rank < dp_size && first + (int64_t)rank * B < n; rank++) { loss_sum += merged[rank]; }
        for (int64_t i = first; i < n && i < first + round; i++) {
            const int pred = (int)merged[dp_size + i - first];
            const int truth = true_class(d, order[i], regression);
            r.confusion[truth * r.num_classes + pred]++;
            correct += pred == truth;
        }
    }
    free(merged);
    batch_free(&batch);
    free(order);
    r.examples = n;
    r.loss = loss_sum / n;
    r.accuracy = (double)correct / n;
    return r;
}

// A language model's loss on rows 0..max_rows-1 (all when <= 0) of a stream:
// the mean next-token cross-entropy over their predictions, and its
// perplexity exp(loss). Over MPI, batch j runs on rank j % N, as above.
typedef struct {
    int64_t rows;
    double loss, perplexity;
} LanguageModelEval;

LanguageModelEval evaluate_language_model(GPT2 *model, const TokenStream *s, int64_t max_rows, int B) {
    int64_t n = s->num_rows;
    if (max_rows > 0 && max_rows < n) { n = max_rows; }
    Batch batch = batch_alloc(B, s->T);
    int64_t *idx = (int64_t *)malloc_or_die((size_t)B * sizeof(int64_t), "rows");
    double sums[2] = {0.0, 0.0}; // summed loss, predictions
    const int64_t round = (int64_t)B * dp_size;
    double *merged = (double *)malloc_or_die((size_t)2 * dp_size * sizeof(double), "eval results");
    for (int64_t first = 0; first < n; first += round) {
        memset(merged, 0, (size_t)2 * dp_size * sizeof(double));
        const int64_t start = first + (int64_t)dp_rank * B;
        if (start < n) {
            const int count = (int)(n - start < B ? n - start : B);
            for (int b = 0; b < count; b++) { idx[b] = start + b; }
            fill_rows(&batch, s, idx, count);
            gpt2_forward(model, &batch, 0.0f, NULL);
            merged[2 * dp_rank] = (double)model->loss * model->lm_predictions;
            merged[2 * dp_rank + 1] = model->lm_predictions;
        }
        dp_merge_disjoint(merged, (size_t)2 * dp_size * sizeof(double));
        for (int rank = 0; rank < dp_size; rank++) { sums[0] += merged[2 * rank]; sums[1] += merged[2 * rank + 1]; }
    }
    free(merged);
    free(idx);
    batch_free(&batch);
    LanguageModelEval r = {n, sums[0] / sums[1], exp(sums[0] / sums[1])};
    return r;
}

// Precision, recall and F1 of each class, and the confusion matrix.
void print_eval_details(const EvalResult *r) {
    const int K = r->num_classes;
    double macro_f1 = 0.0;
    for (int k = 0; k < K; k++) {
        int64_t tp = r->confusion[k * K + k], predicted = 0, actual = 0;
        for (int j = 0; j < K; j++) { predicted += r->confusion[j * K + k]; actual += r->confusion[k * K + j]; }
        const double precision = predicted ? (double)tp / predicted : 0.0;
        const double recall = actual ? (double)tp / actual : 0.0;
        const double f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
        macro_f1 += f1 / K;
        printf("  class %d: precision %.4f recall %.4f F1 %.4f (%lld examples)\n", k, precision, recall, f1, (long long)actual);
    }
    printf("  macro F1 %.4f\n  confusion matrix (rows: true class, columns: predicted):\n", macro_f1);
    for (int k = 0; k < K; k++) {
        printf("   ");
        for (int j = 0; j < K; j++) { printf(" %8lld", (long long)r->confusion[k * K + j]); }
        printf("\n");
    }
}

// ----------------------------------------------------------------------------
// Checkpoints.
//
// Read: llm.c's GPT-2 checkpoint (magic 20240326, version 3: float32,
// vocabulary padded to a multiple of 128), with no head; or this program's
// fine-tuned checkpoint (magic 20261128, version 1), the same plus num_labels
// in header[8], the number of updates done in header[9], and the head
// `score` (K,C) after the last llm.c tensor. When header[10] is 1 (a --save
// of a training run) the AdamW moments follow, see "Training state" below.
// Written: a classifier as the fine-tuned checkpoint; a language model
// (--task lm) in llm.c's format, with the number of updates in header[9] and
// header[10] as above: llm.c reads the header and the parameters and ignores
// what follows, so llm.c, -m and dev/export_hf.py all read the result.

#define LLMC_MAGIC 20240326
#define LLMC_VERSION 3
#define SFT_MAGIC 20261128
#define SFT_VERSION 1
#define HEADER_INTS 256
#define SFT_MOMENTS_SLOT 10 // header[10] = 1: the AdamW moments m and v follow the parameters
#define LABELS_OF_FILE -1   // for a checkpoint's reader: the head the file has (2 classes if it has none)

// The head of a model that does not have one yet: N(0, 0.02), as Hugging Face.
void init_classifier_head(float *score, size_t n, uint64_t seed) {
    uint64_t state = rng_seed(seed);
    for (size_t i = 0; i < n; i++) { score[i] = 0.02f * rng_normal(&state); }
}

void gpt2_allocate_parameters(GPT2 *model) {
    parameter_sizes(model->param_sizes, model->config);
    model->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { model->num_parameters += model->param_sizes[i]; }
    model->params_memory = (float *)malloc_or_die(model->num_parameters * sizeof(float), "parameters");
    carve_parameters(&model->params, model->params_memory, model->param_sizes);
}

// Checks a configuration read from a file; on failure writes why to `error`.
int config_is_valid(const GPT2Config *cfg, char *error, size_t error_size) {
    if (cfg->num_layers < 1 || cfg->num_layers > 1000) {
        snprintf(error, error_size, "num_layers %d is out of range 1..1000", cfg->num_layers); return 0;
    }
    if (cfg->num_heads < 1 || cfg->channels < 1 || cfg->channels > 65536 || cfg->channels % cfg->num_heads != 0) {
        snprintf(error, error_size, "channels %d must be a positive multiple of num_heads %d, at most 65536", cfg->channels, cfg->num_heads); return 0;
    }
    if (cfg->max_seq_len < 1 || cfg->max_seq_len > 1 << 20) {
        snprintf(error, error_size, "max_seq_len %d is out of range 1..%d", cfg->max_seq_len, 1 << 20); return 0;
    }
    if (cfg->vocab_size < 1 || cfg->vocab_size > 65536 || cfg->padded_vocab_size < cfg->vocab_size || cfg->padded_vocab_size > 1 << 24) {
        snprintf(error, error_size, "vocab_size %d / padded_vocab_size %d are inconsistent (token ids are 16-bit)", cfg->vocab_size, cfg->padded_vocab_size); return 0;
    }
    if (cfg->num_labels < 0 || cfg->num_labels > 65536) {
        snprintf(error, error_size, "num_labels %d is out of range 0..65536 (0: a language model)", cfg->num_labels); return 0;
    }
    // Sizes are size_t, 32 bits on some hosts: refuse a model whose sizes would wrap.
    const double C = cfg->channels, params = C * ((double)cfg->padded_vocab_size + cfg->max_seq_len + 2 +
                                                  cfg->num_labels + cfg->num_layers * (12 * C + 13));
    if (params * sizeof(float) > (double)SIZE_MAX) {
        snprintf(error, error_size, "%.0f parameters are more than this machine can address", params); return 0;
    }
    return 1;
}

void validate_config(const GPT2Config *cfg, const char *source) {
    char error[256];
    if (!config_is_valid(cfg, error, sizeof(error))) { fail("%s: %s", source, error); }
}

// Reads and checks a checkpoint's header against the file size, before any
// allocation. `num_labels` is the head size wanted: for an llm.c checkpoint
// (no head) it sets the head (0: a language model, LABELS_OF_FILE: 2
// classes); a fine-tuned one has a head, which LABELS_OF_FILE takes and any
// other value must equal. *has_moments: whether the AdamW moments follow the
// parameters. Returns 1, or 0 with the reason in `error`.
int checkpoint_parse_header(const unsigned char *data, size_t size, int num_labels, GPT2Config *cfg,
                            int *has_head, int *step, int *has_moments, char *error, size_t error_size) {
    if (size < HEADER_INTS * 4) { snprintf(error, error_size, "file is %zu bytes, too small for a checkpoint header", size); return 0; }
    const int32_t magic = read_i32(data), version = read_i32(data + 4);
    if (magic == LLMC_MAGIC) {
        if (version != LLMC_VERSION) {
            snprintf(error, error_size, "llm.c checkpoint version %d is not supported (need %d: float32 with padded vocabulary)", version, LLMC_VERSION);
            return 0;
        }
        *has_head = 0;
    } else if (magic == SFT_MAGIC) {
        if (version != SFT_VERSION) { snprintf(error, error_size, "fine-tuned checkpoint version %d is not supported (need %d)", version, SFT_VERSION); return 0; }
        *has_head = 1;
    } else {
        snprintf(error, error_size, "bad magic number %d: not an llm.c GPT-2 checkpoint or a fine-tuned checkpoint", magic);
        return 0;
    }
    cfg->max_seq_len = read_i32(data + 4 * 2);
    cfg->vocab_size = read_i32(data + 4 * 3);
    cfg->num_layers = read_i32(data + 4 * 4);
    cfg->num_heads = read_i32(data + 4 * 5);
    cfg->channels = read_i32(data + 4 * 6);
    cfg->padded_vocab_size = read_i32(data + 4 * 7);
    // llm.c's own files hold zeros here; this program's language models, their step and moments
    *step = read_i32(data + 4 * 9);
    if (*step < 0) { snprintf(error, error_size, "negative step count %d in the header", *step); return 0; }
    *has_moments = read_i32(data + 4 * SFT_MOMENTS_SLOT);
    if (*has_moments != 0 && *has_moments != 1) {
        snprintf(error, error_size, "header[%d] is %d, not 0 or 1 (whether the AdamW moments follow)", SFT_MOMENTS_SLOT, *has_moments);
        return 0;
    }
    if (*has_head) {
        cfg->num_labels = read_i32(data + 4 * 8);
        if (cfg->num_labels < 1) { snprintf(error, error_size, "a fine-tuned checkpoint with %d labels", cfg->num_labels); return 0; }
        if (num_labels == 0) {
            snprintf(error, error_size, "a fine-tuned classifier; --task lm trains a language model from an llm.c checkpoint (or --init dN)");
            return 0;
        }
        if (num_labels != LABELS_OF_FILE && num_labels != cfg->num_labels) {
            snprintf(error, error_size, "the checkpoint has %d labels but %d were requested", cfg->num_labels, num_labels);
            return 0;
        }
    } else {
        cfg->num_labels = num_labels != LABELS_OF_FILE ? num_labels : 2;
    }
    if (!config_is_valid(cfg, error, error_size)) { return 0; }
    size_t sizes[NUM_PARAMETER_TENSORS], stored = 0;
    parameter_sizes(sizes, *cfg);
    for (int i = 0; i < NUM_PARAMETER_TENSORS - (*has_head ? 0 : 1); i++) { stored += sizes[i]; }
    // the parameters, or the parameters, m and v: compared by division, as 3 x stored may not fit a size_t
    const size_t copies = *has_moments ? 3 : 1, payload = size - HEADER_INTS * 4;
    if (payload % (copies * sizeof(float)) != 0 || payload / (copies * sizeof(float)) != stored) {
        snprintf(error, error_size, "file is %zu bytes but its header describes %.0f bytes (truncated, or wrong configuration)",
                 size, HEADER_INTS * 4 + (double)copies * sizeof(float) * (double)stored);
        return 0;
    }
    return 1;
}

// Loads a checkpoint: llm.c's (a new head is drawn from `seed`) or a
// fine-tuned one. Any problem ends the program with a message naming the file.
void gpt2_build_from_checkpoint(GPT2 *model, const char *path, int num_labels, uint64_t seed) {
    memset(model, 0, sizeof(*model));
    model->loss = -1.0f;
    require_little_endian();
    MappedFile file;
    const char *why = map_file(&file, path);
    if (why != NULL) { fail("cannot open checkpoint %s: %s (make one with dev/train_gpt2_sft.py, or see README)", path, why); }
    char error[256];
    int has_head, step, has_moments; // the moments are read by load_training_state, for --resume only
    if (!checkpoint_parse_header(file.data, file.size, num_labels, &model->config, &has_head, &step, &has_moments,
                                 error, sizeof(error))) {
        fail("%s: %s", path, error);
    }
    model->step = step;
    gpt2_allocate_parameters(model);
    const size_t head_size = model->param_sizes[NUM_PARAMETER_TENSORS - 1];
    const size_t stored = model->num_parameters - (has_head ? 0 : head_size);
    memcpy(model->params_memory, file.data + HEADER_INTS * 4, stored * sizeof(float));
    unmap_file(&file);
    if (!has_head) { init_classifier_head(model->params.score, head_size, seed); }
    for (size_t i = 0; i < model->num_parameters; i++) {
        if (!isfinite(model->params_memory[i])) { fail("%s: parameter %zu is NaN or infinite", path, i); }
    }
}

// The header of the model's checkpoint, without moments: llm.c's format for
// a language model, the fine-tuned checkpoint's for a classifier.
void checkpoint_header(int32_t header[HEADER_INTS], const GPT2 *model) {
    memset(header, 0, HEADER_INTS * sizeof(int32_t));
    const GPT2Config *cfg = &model->config;
    const int lm = is_language_model(cfg);
    header[0] = lm ? LLMC_MAGIC : SFT_MAGIC; header[1] = lm ? LLMC_VERSION : SFT_VERSION;
    header[2] = cfg->max_seq_len; header[3] = cfg->vocab_size; header[4] = cfg->num_layers;
    header[5] = cfg->num_heads; header[6] = cfg->channels; header[7] = cfg->padded_vocab_size;
    header[8] = cfg->num_labels; header[9] = model->step;
}

// Writes the model's checkpoint, parameters only (write_file_atomically:
// an interrupted save never destroys the old file). save_run adds the moments.
void gpt2_save_checkpoint(const GPT2 *model, const char *path) {
    int32_t header[HEADER_INTS];
    checkpoint_header(header, model);
    const float *const arrays[1] = {model->params_memory};
    write_file_atomically(path, header, sizeof(header), arrays, 1, model->num_parameters);
}

// ----------------------------------------------------------------------------
// A model from scratch, for users without pretrained weights: GPT-2's
// initialisation, N(0, 0.02) for matrices and embeddings, residual projections
// scaled by 1/sqrt(2 L) so the residual stream's variance does not grow with
// depth, LayerNorm weights 1, biases 0. Named by depth as llm.c does: dN =
// N layers, with llm.c's widths where it names them (d6: 384 channels and 6
// heads, d12: 768 and 12 = GPT-2 124M, d24: 1024 and 16 = 350M, d36: 1280
// and 20 = 774M, d48: 1600 and 25 = 1558M), else 64 N channels in N heads.

void depth_shape(int depth, int *channels, int *heads) {
    switch (depth) {
    case 24: *channels = 1024; *heads = 16; break;
    case 36: *channels = 1280; *heads = 20; break;
    case 48: *channels = 1600; *heads = 25; break;
    default: *channels = 64 * depth; *heads = depth; break; // d6 and d12 among them
    }
}

void gpt2_build_from_scratch(GPT2 *model, int depth, int num_labels, int max_seq_len, uint64_t seed) {
    memset(model, 0, sizeof(*model));
    model->loss = -1.0f;
    GPT2Config cfg;
    cfg.max_seq_len = max_seq_len;
    cfg.vocab_size = 50257;
    cfg.padded_vocab_size = 50304;
    cfg.num_layers = depth;
    depth_shape(depth, &cfg.channels, &cfg.num_heads);
    cfg.num_labels = num_labels;
    validate_config(&cfg, "--init");
    model->config = cfg;
    gpt2_allocate_parameters(model);
    ParameterTensors p = model->params;
    uint64_t state = rng_seed(seed);
    const float residual_std = 0.02f / sqrtf(2.0f * depth);
    float *const tensors[NUM_PARAMETER_TENSORS] = {
        p.wte, p.wpe, p.ln1w, p.ln1b, p.qkvw, p.qkvb, p.attprojw, p.attprojb, p.ln2w, p.ln2b,
        p.fcw, p.fcb, p.fcprojw, p.fcprojb, p.lnfw, p.lnfb, p.score};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        const int is_layernorm_weight = tensors[i] == p.ln1w || tensors[i] == p.ln2w || tensors[i] == p.lnfw;
        const float std = tensors[i] == p.attprojw || tensors[i] == p.fcprojw ? residual_std : 0.02f;
        for (size_t j = 0; j < model->param_sizes[i]; j++) {
            if (parameter_decays[i]) { tensors[i][j] = std * rng_normal(&state); }
            else { tensors[i][j] = is_layernorm_weight ? 1.0f : 0.0f; }
        }
    }
    // rows past the real vocabulary are never looked up; keep them zero
    memset(p.wte + (size_t)cfg.vocab_size * cfg.channels, 0,
           (size_t)(cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels * sizeof(float));
}

// ----------------------------------------------------------------------------
// Training state for --resume, inside the checkpoint that --save writes
// (dev/FORMATS.md section 2): header[10] = 1, the run's identity in
// header[11..17], and after the parameters the AdamW moments m and v
// (num_parameters each, parameter order). One file, written at once, cannot
// pair parameters and moments of different steps.

typedef struct {
    int step;          // optimizer updates done: the checkpoint's step
    int total_steps;
    int batch_size;    // of a micro-step, all ranks: ranks x --batch-size
    int grad_accum, max_len;
    float dropout;     // with the seed and the step, it fixes the dropout masks
    uint64_t seed;
} RunIdentity;

// Loads the moments from checkpoint_path, from which the model was just
// loaded at step `checkpoint_step`; the saved run must have the same identity.
void load_training_state(GPT2 *model, const char *checkpoint_path, const RunIdentity *run, int checkpoint_step) {
    const char *path = checkpoint_path;
    MappedFile f;
    const char *why = map_file(&f, path);
    if (why != NULL) { fail("cannot open %s to resume: %s", path, why); }
    GPT2Config cfg;
    int has_head, step, has_moments;
    char error[256];
    if (!checkpoint_parse_header(f.data, f.size, model->config.num_labels, &cfg, &has_head, &step, &has_moments,
                                 error, sizeof(error))) {
        fail("%s: %s", path, error);
    }
    if (has_head == is_language_model(&model->config)) {
        fail("%s: saved by a %s run; this one trains a %s", path, has_head ? "classifier" : "language-model",
             has_head ? "language model" : "classifier");
    }
    if (!has_moments) {
        fail("%s: no optimizer state to resume from (--save writes it into the checkpoint; an older version's PATH.state is not read)", path);
    }
    const size_t n = model->num_parameters;
    if (step != checkpoint_step || (f.size - HEADER_INTS * 4) / (3 * sizeof(float)) != n) {
        fail("%s: changed while it was being loaded", path);
    }
    uint64_t seed;
    float dropout;
    memcpy(&dropout, f.data + 4 * 15, 4);
    memcpy(&seed, f.data + 4 * 16, 8);
    // over MPI another number of ranks continues the run as well, with the same global batch
    if (read_i32(f.data + 4 * 12) != run->batch_size) {
        fail("%s: --resume needs the same batch: the saved run's had %d examples (ranks x --batch-size), this one's %d x %d",
             path, read_i32(f.data + 4 * 12), dp_size, run->batch_size / dp_size);
    }
    if (read_i32(f.data + 4 * 11) != run->total_steps || read_i32(f.data + 4 * 12) != run->batch_size ||
        read_i32(f.data + 4 * 13) != run->grad_accum || read_i32(f.data + 4 * 14) != run->max_len ||
        dropout != run->dropout || seed != run->seed) {
        fail("%s: --resume needs the same --epochs/--max-steps, --batch-size, --grad-accum, --max-len, --dropout and --seed as the saved run", path);
    }
    model->m_memory = (float *)malloc_or_die(n * sizeof(float), "AdamW m");
    model->v_memory = (float *)malloc_or_die(n * sizeof(float), "AdamW v");
    memcpy(model->m_memory, f.data + HEADER_INTS * 4 + n * sizeof(float), n * sizeof(float));
    memcpy(model->v_memory, f.data + HEADER_INTS * 4 + 2 * n * sizeof(float), n * sizeof(float));
    unmap_file(&f);
}

// ----------------------------------------------------------------------------
// Platform: the only OS-specific code. PLATFORM_POSIX selects POSIX (mmap,
// fsync, rename, clock_gettime); otherwise (Windows) files are read into
// memory and _commit, MoveFileEx and QueryPerformanceCounter stand in. Written
// files are flushed to disk before the rename that publishes them.

// Big arrays on 2 MiB pages. The matmul reads its operands and writes its
// output across far more 4 KiB pages than the TLB maps (activations are tens
// of MiB), and a TLB miss costs a page walk. Linux backs memory with 2 MiB
// pages ("transparent huge pages") where it is asked to, by madvise, on most
// distributions' settings (/sys/kernel/mm/transparent_hugepage/enabled:
// madvise); elsewhere, or for arrays under 4 MiB, malloc serves. On a Xeon
// with AVX-512 (dev/bench_sft.c, alternating runs): a 124M training step at
// B=8, T=256 3.31-3.44 -> 3.19-3.31 s, its first step's page faults 734k ->
// 1.4k; the 12 linear products 74-82% -> 78-87% of the FMA peak and
// attention's 29/35% -> 34/40% (medians of three runs; another three moved
// them -5 to +4 points, a third +1 to +11).
void *alloc_huge_pages(size_t bytes) {
#if defined(MADV_HUGEPAGE)
    const size_t huge_page = (size_t)2 << 20;
    void *p = NULL;
    if (bytes < 2 * huge_page || posix_memalign(&p, huge_page, bytes) != 0) { return NULL; }
    madvise(p, bytes, MADV_HUGEPAGE); // advice: a kernel without huge pages ignores it
    return p;
#else
    (void)bytes;
    return NULL;
#endif
}

#define NOT_A_REGULAR_FILE "not a regular file (a device, FIFO or socket)"

// Why `path` is no file to read or replace, or NULL when it is a regular file
// or does not exist (opening it then says why). Asked before any open: opening
// a FIFO for reading blocks until a writer appears, and renaming a finished
// file over /dev/null would replace the device.
const char *not_a_regular_file(const char *path) {
#if PLATFORM_POSIX
    struct stat st;
    if (stat(path, &st) != 0 || S_ISREG(st.st_mode)) { return NULL; }
    return S_ISDIR(st.st_mode) ? "is a directory" : NOT_A_REGULAR_FILE;
#else
    const DWORD attributes = GetFileAttributesA(path);
    return attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) ? "is a directory" : NULL;
#endif
}

// Maps `path` read-only. Returns NULL on success, else the reason it failed.
const char *map_file(MappedFile *file, const char *path) {
    file->data = NULL; file->size = 0; file->is_mapped = 0;
    const char *special = not_a_regular_file(path);
    if (special != NULL) { return special; }
#if PLATFORM_POSIX
    // O_NONBLOCK: should path have become a FIFO since the stat, open returns at once and fstat refuses it
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) { return strerror(errno); }
    struct stat st;
    if (fstat(fd, &st) != 0) { const int error = errno; close(fd); return strerror(error); }
    if (!S_ISREG(st.st_mode)) { close(fd); return NOT_A_REGULAR_FILE; }
    file->size = (size_t)st.st_size;
    if (file->size == 0) { close(fd); file->data = (const unsigned char *)""; return NULL; }
    void *p = mmap(NULL, file->size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int error = errno;
    close(fd);
    if (p == MAP_FAILED) { return strerror(error); }
    file->data = (const unsigned char *)p;
    file->is_mapped = 1;
    return NULL;
#else
    FILE *f = fopen(path, "rb");
    if (f == NULL) { return strerror(errno); }
    if (_fseeki64(f, 0, SEEK_END) != 0) { fclose(f); return "cannot seek"; }
    const long long size = _ftelli64(f); // ftell's long is 32 bits on Windows
    if (size < 0 || _fseeki64(f, 0, SEEK_SET) != 0) { fclose(f); return "cannot seek"; }
    file->size = (size_t)size;
    unsigned char *buffer = (unsigned char *)malloc_or_die(file->size, path);
    if (fread(buffer, 1, file->size, f) != file->size) { free(buffer); fclose(f); return "read error"; }
    fclose(f);
    file->data = buffer;
    return NULL;
#endif
}

void unmap_file(MappedFile *file) {
#if PLATFORM_POSIX
    if (file->is_mapped) { munmap((void *)file->data, file->size); }
#else
    free((void *)file->data);
#endif
    file->data = NULL; file->size = 0; file->is_mapped = 0;
}

// Makes the bytes written to f durable before the file is renamed into place.
int flush_to_disk(FILE *f) {
    if (fflush(f) != 0) { return -1; }
#if PLATFORM_POSIX
    if (fsync(fileno(f)) != 0) { return -1; }
#else
    if (_commit(_fileno(f)) != 0) { return -1; }
#endif
    return 0;
}

// Renames `from` to `to`, replacing `to` if it exists (Windows' rename fails
// then). Returns 0, or -1 with errno set.
int replace_file(const char *from, const char *to) {
#if PLATFORM_POSIX
    return rename(from, to);
#else
    if (MoveFileExA(from, to, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) { return 0; }
    const DWORD error = GetLastError();
    errno = error == ERROR_FILE_NOT_FOUND || error == ERROR_PATH_NOT_FOUND ? ENOENT : EACCES;
    return -1;
#endif
}

char *path_with_suffix(const char *path, const char *suffix) {
    const size_t n = strlen(path) + strlen(suffix) + 1;
    char *s = (char *)malloc_or_die(n, "path");
    snprintf(s, n, "%s%s", path, suffix);
    return s;
}

// Writes header and then n floats of each of the `count` arrays to path + ".tmp",
// flushes it to disk and renames it over `path`: an interrupted write never
// destroys the file already there.
void write_file_atomically(const char *path, const void *header, size_t header_bytes,
                           const float *const *arrays, int count, size_t n) {
    char *tmp_path = path_with_suffix(path, ".tmp");
    FILE *f = fopen(tmp_path, "wb");
    if (f == NULL) { fail("cannot write %s: %s", tmp_path, strerror(errno)); }
    int ok = fwrite(header, 1, header_bytes, f) == header_bytes;
    for (int i = 0; i < count && ok; i++) { ok = fwrite(arrays[i], sizeof(float), n, f) == n; }
    ok = ok && flush_to_disk(f) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok) { remove(tmp_path); fail("writing %s failed: %s", tmp_path, strerror(errno)); }
    if (replace_file(tmp_path, path) != 0) { remove(tmp_path); fail("cannot rename %s to %s: %s", tmp_path, path, strerror(errno)); }
    free(tmp_path);
}

// Wall-clock seconds from an arbitrary origin, for timing only.
double seconds_now(void) {
#if PLATFORM_POSIX
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    LARGE_INTEGER count, frequency;
    QueryPerformanceCounter(&count);
    QueryPerformanceFrequency(&frequency);
    return (double)count.QuadPart / (double)frequency.QuadPart;
#endif
}

// Threads: OpenMP's, or the one thread of a build without OpenMP.
int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int team_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

// ----------------------------------------------------------------------------
// Little-endian file access. All formats are little-endian; on a big-endian
// host we refuse to run rather than compute with scrambled numbers.

int host_is_little_endian(void) {
    const uint32_t probe = 1;
    unsigned char first;
    memcpy(&first, &probe, 1);
    return first == 1;
}

// Every reader calls this first.
void require_little_endian(void) {
    if (!host_is_little_endian()) { fail("this program reads little-endian files and needs a little-endian CPU"); }
}

int32_t read_i32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }
int64_t read_i64(const unsigned char *p) { int64_t v; memcpy(&v, p, 8); return v; }

// ----------------------------------------------------------------------------
// Appendix A: the fast matrix multiplication. gemm, gemm_serial,
// gemm_packed (with gemm_pack) and gemm_workspace_reserve, declared with
// gemm_reference at the start of the file, compute what gemm_reference
// specifies, up to float rounding.
//
// The classic blocked scheme (Goto; BLIS): for each KC-deep slice of K, a
// (KC x NC) block of B is copied ("packed") into NR-wide panels that stay in
// cache; then (MC x KC) blocks of A are packed into MR-tall panels, and the
// register-tiled micro-kernel computes every (MR x NR) piece of C. An A whose
// rows are contiguous (inp in X W^T, dout in dX = dY W, P in P V) is read in
// place instead: the kernel reads MR rows as easily as one packed panel, and
// the copy is saved, most where N is small (V has hs columns), so that a
// packed element of A would feed few multiply-adds; so is any A multiplied
// by a single panel of B (attention's P'^T dO), which reads it once. Threads
// each take one rectangle of C; where those are strips of rows at most NC
// wide they share the packing of B (one barrier per slice of K), elsewhere
// each runs the product on its rectangle alone. Every element of C is summed
// in the same order whatever the number of threads.

// The micro-kernel holds an (MR x NR) tile of C in vector registers and adds
// one outer product a[k,:]^T b[k,:] to it per step of k: NR/VF vector loads of
// B, MR broadcasts of A, MR*NR/VF fused multiply-adds. It is written with
// explicit vectors (GCC/Clang vector extensions) where the compiler has them,
// so the tile is kept in registers of the width the CPU has whatever the
// compiler's auto-vectorizer prefers, and in plain C elsewhere.
//   AVX-512:  32 registers of 16 floats, tile 6 x 64: 24 accumulators
//   AVX/AVX2: 16 registers of 8 floats,  tile 6 x 16: 12 accumulators
//   SSE/NEON: 16-32 registers of 4,      tile 6 x 8:  12 accumulators
// Six rows, not the 12 x 32 that holds as many accumulators: where A is read
// in place its rows are K floats apart, and at K = 3072 (fc's dinp, fcproj's
// forward) that is 12 KiB, a multiple of 4 KiB, so every row falls in the
// same L1 set; six rows fit in its ways, twelve evict each other.
// (other CPUs, e.g. RISC-V, take the portable kernel: without vector
// registers the compiler would split the vectors into scalars anyway)
// -DGEMM_PORTABLE selects the plain-C kernel on any compiler, -DGEMM_REFERENCE
// the triple loop above; test_sft checks each against gemm_reference.
#if !defined(GEMM_PORTABLE) && !defined(GEMM_REFERENCE) && defined(__GNUC__) && !defined(__TINYC__)
#if defined(__AVX512F__)
#define GEMM_VECTOR_BYTES 64
#define GEMM_ISA "AVX-512"
#elif defined(__AVX__)
#define GEMM_VECTOR_BYTES 32
#define GEMM_ISA "AVX2/AVX"
#elif defined(__SSE2__) || defined(__ARM_NEON) || defined(__aarch64__)
#define GEMM_VECTOR_BYTES 16
#define GEMM_ISA "128-bit"
#endif
#endif
// what the trainer, test_sft and the benchmarks print as the kernel in use
#if defined(GEMM_REFERENCE)
#define GEMM_KERNEL_NAME "reference triple loop"
#elif defined(GEMM_VECTOR_BYTES)
#define GEMM_KERNEL_NAME GEMM_ISA " vectors"
#else
#define GEMM_KERNEL_NAME "portable C"
#endif

#ifdef GEMM_VECTOR_BYTES
typedef float gemm_vector __attribute__((vector_size(GEMM_VECTOR_BYTES)));
// clang otherwise splits the vectors into halves where it prefers 256-bit ones
#if defined(__clang__)
#define GEMM_FULL_WIDTH __attribute__((min_vector_width(GEMM_VECTOR_BYTES * 8)))
#else
#define GEMM_FULL_WIDTH
#endif
#define GEMM_VF (GEMM_VECTOR_BYTES / 4) // floats per vector
#ifndef GEMM_MR
#define GEMM_MR 6
#endif
#ifndef GEMM_NR
#define GEMM_NR (GEMM_VECTOR_BYTES == 64 ? 4 * GEMM_VF : 2 * GEMM_VF)
#endif
#else
#if defined(GEMM_MR) && GEMM_MR != 6
#error "the portable C micro-kernel spells out its six rows: GEMM_MR must be 6 (it sets only the vector kernels' tile)"
#endif
#undef GEMM_MR
#define GEMM_MR 6 // the portable kernel below spells out its six rows
#ifndef GEMM_NR
#define GEMM_NR 16
#endif
#endif
// Block sizes (Goto/BLIS). The micro-kernel keeps one MR-tall panel of A (MR
// x KC, 18 KiB at KC 768) in L1 while it sweeps the NR-wide panels of the
// packed (KC x NC) block of B (768 KiB, in L2; 384 KiB on Zen 5, 3 MiB on
// Zen 3 and 4, see below)
// along a strip of C's rows, so C is read and written in long runs of the
// same rows (pages stay in the TLB); the (MC x KC) block of A waits in
// L2/L3. A deeper slice means fewer passes over C and fewer micro-kernel
// calls per multiply-add; K is cut into equal slices of at most KC
// (gemm_slice_depth), so K = 768 is one slice. Each step of k reads NR
// floats of the B block (256 bytes for 24 FMAs with the 6 x 64 tile), more
// than an Intel core's L3 delivers, so there the block must fit in L2. Tuned
// with dev/bench_sft.c's matmul at the GPT-2 124M shapes, 2 threads: on a
// Xeon with AVX-512 (48 KiB L1, 2 MiB L2) KC 1024 with NC 768 (a 3 MiB B
// block) ran at 35-58% of the FMA peak, KC 768 with NC 256 at 75-91%, ahead
// of every other pair tried (KC 256-1024, NC 128-1536). AMD's Zen 3 and Zen
// 4 (32 KiB L1, 512 KiB / 1 MiB L2; GCC 12 and clang 14 target both as
// znver3) feed a 3 MiB block from L3, and there KC 1024 with NC 768 measured
// best: KC 1024 in equal slices beat 512 by 3-10% on the forward and dinp
// products, NC 384 was slower than 768, MC 120 or 480 the same as 240.
// Zen 5 (48 KiB L1, 1 MiB L2) does a 512-bit FMA per pipe per cycle, twice
// Zen 4's rate, so its B block must sit in L2, with room there for the A
// and C streams: KC 768 with NC 128 (a 384 KiB block) measured best, the 12
// products' mean 2-5% above NC 256 and 4% above the Zen 4 pair (rounds of
// alternating runs; KC 256-1536 and NC 64-768 tried). GCC 12 and clang 14
// know no Zen 5 (-march=native gives znver3, or x86-64, with its features):
// it is told by its features, AVX512-VP2INTERSECT and AVX-VNNI without
// AVX512-FP16 (Zen 4 has neither of the first two; sapphirerapids, the one
// Intel target of GCC 12 and clang 14 with both, has FP16).
#if defined(__znver5__) || (defined(__AVX512VP2INTERSECT__) && defined(__AVXVNNI__) && !defined(__AVX512FP16__))
#define GEMM_DEFAULT_KC 768
#define GEMM_DEFAULT_NC 128
#elif defined(__znver3__) || defined(__znver4__)
#define GEMM_DEFAULT_KC 1024
#define GEMM_DEFAULT_NC 768
#else
#define GEMM_DEFAULT_KC 768
#define GEMM_DEFAULT_NC 256
#endif
#ifndef GEMM_KC
#define GEMM_KC GEMM_DEFAULT_KC // the deepest packed slice
#endif
#ifndef GEMM_MC
#define GEMM_MC 240  // rows of A packed per block (a multiple of GEMM_MR)
#endif
#ifndef GEMM_NC
#define GEMM_NC GEMM_DEFAULT_NC // columns of B packed per block (a multiple of GEMM_NR)
#endif
// A product that packs A and has more than NC columns would pack the same
// rows of A again for every block of NC columns; instead it packs strips of
// this many rows of A once per slice of K, and B once per strip. Each
// thread's share of every dweight product of GPT-2 124M (768, 2304 or 3072
// rows, on two threads at most 1536 each) is then one strip: dout^T and the
// input are each packed once. fcproj's dweight (768 x 3072, K = 2048) as one
// strip instead of packing dout^T four times (Zen 4, NC 768): 100 -> 106
// GFLOP/s on one thread, 179 -> 191 on two (best of five and seven
// alternating runs); strips of 1536 rather than 768, on a Xeon: the dweight
// products 73-77% -> 76-78% of peak (medians of five alternating runs). The
// buffer holds a strip (4.5 MiB per thread with KC 768).
#ifndef GEMM_A_STRIP
#define GEMM_A_STRIP 1536 // a multiple of GEMM_MR
#endif

#ifndef PACK_GROUP
#define PACK_GROUP (GEMM_NR < 16 ? GEMM_NR : 16)
#endif
// Copies a (kc x width) slice of a matrix M (K,N) into a contiguous panel:
//   panel[k*width + j] = M[k0 + k, col0 + j],  zero for j >= cols
// reading along whichever direction is contiguous in memory.
static inline void pack_panel(float *panel, StridedMatrix m, int col0, int cols, int k0, int kc, int width) {
    const float *src = m.data + (long)k0 * m.row_stride + (long)col0 * m.col_stride;
    if (m.col_stride == 1 && cols == width) { // a panel's row is contiguous, and whole:
        for (int k = 0; k < kc; k++) {           // a copy of fixed length (width is a constant)
            const float *row = src + (long)k * m.row_stride;
            for (int j = 0; j < width; j++) { panel[k * width + j] = row[j]; }
        }
    } else if (m.col_stride == 1) {
        for (int k = 0; k < kc; k++) {
            const float *row = src + (long)k * m.row_stride;
            for (int j = 0; j < cols; j++) { panel[k * width + j] = row[j]; }
            for (int j = cols; j < width; j++) { panel[k * width + j] = 0.0f; }
        }
    } else { // a panel's column is contiguous (W^T, K^T): PACK_GROUP columns at a
             // time, so that each step of k writes that many neighbouring floats
             // rather than one (1.3-2x the speed of one column at a time)
        const int grouped = cols / PACK_GROUP * PACK_GROUP;
        for (int j = 0; j < grouped; j += PACK_GROUP) {
            for (int k = 0; k < kc; k++) {
                const float *from = src + (long)k * m.row_stride + (long)j * m.col_stride;
                for (int g = 0; g < PACK_GROUP; g++) { panel[k * width + j + g] = from[g * m.col_stride]; }
            }
        }
        for (int j = grouped; j < width; j++) { // the last columns, and zeros past `cols`
            const float *col = src + (long)j * m.col_stride;
            for (int k = 0; k < kc; k++) { panel[k * width + j] = j < cols ? col[(long)k * m.row_stride] : 0.0f; }
        }
    }
}

// Where the micro-kernel finds the rows of an (MC x KC) block of A: element
// (i, k) of the MR-row panel p, i < MR, is at
//   data[p * panel_stride + i * row_stride + k * k_stride]
typedef struct {
    const float *data;
    long panel_stride, row_stride, k_stride;
} APanels;

// The block of rows row0..row0+rows and depth k0..k0+kc of A (M,K) for the
// micro-kernel, which multiplies it by `cols` columns of B: A itself if its
// rows are contiguous, or if one panel of B is all there is (then each
// element of A is read once either way, and a copy would only add a pass);
// else packed into `buffer` as MR-tall panels (the panels of A^T).
static int a_is_read_in_place(StridedMatrix a, int cols) { return a.col_stride == 1 || cols <= GEMM_NR; }

APanels a_block(float *buffer, StridedMatrix a, int row0, int rows, int k0, int kc, int cols) {
    if (a_is_read_in_place(a, cols)) {
        return (APanels){a.data + (long)row0 * a.row_stride + (long)k0 * a.col_stride, GEMM_MR * a.row_stride,
                         a.row_stride, a.col_stride};
    }
    // Sixteen steps of k at a time for all the panels, so that the sixteen
    // rows of A^T they read stay in L1 until every panel has taken its MR
    // floats of each (one panel all the way down kc would read a cache line
    // per step and find it evicted by the time the next panel needs it).
    const StridedMatrix a_transposed = {a.data, a.col_stride, a.row_stride};
    const int steps = 16;
    for (int kb = 0; kb < kc; kb += steps) {
        const int depth = kc - kb < steps ? kc - kb : steps;
        for (int i = 0; i < rows; i += GEMM_MR) {
            pack_panel(buffer + (size_t)i * kc + (size_t)kb * GEMM_MR, a_transposed, row0 + i,
                       rows - i < GEMM_MR ? rows - i : GEMM_MR, k0 + kb, depth, GEMM_MR);
        }
    }
    return (APanels){buffer, (long)GEMM_MR * kc, 1, GEMM_MR};
}

// One NR-wide panel of B (K,N).
void pack_b_panel(float *panel, StridedMatrix b, int col0, int cols, int k0, int kc) {
    pack_panel(panel, b, col0, cols, k0, kc, GEMM_NR);
}

// The (kc x cols) block of B at (k0, col0) as NR-wide panels, kc*NR floats apart.
static void pack_b_block(float *panels, StridedMatrix b, int col0, int cols, int k0, int kc) {
    for (int j = 0; j < cols; j += GEMM_NR) {
        pack_b_panel(panels + (size_t)j * kc, b, col0 + j, cols - j < GEMM_NR ? cols - j : GEMM_NR, k0, kc);
    }
}

#ifdef GEMM_VECTOR_BYTES
#define GEMM_NV (GEMM_NR / GEMM_VF) // vectors per row of the tile
// the same vector at any float-aligned address: C's rows need no more
typedef float gemm_vector_unaligned __attribute__((vector_size(GEMM_VECTOR_BYTES), aligned(4), may_alias));
static inline gemm_vector vector_load(const float *p) { return *(const gemm_vector_unaligned *)p; }
static inline void vector_store(float *p, gemm_vector v) { *(gemm_vector_unaligned *)p = v; }

// acc (MR,NR) = sum_k a[:,k] b[k,:];  C[0:rows, 0:cols] = [C +] acc
// a[:,k]: the MR elements a[i * a_row_stride + k * a_k_stride] (a packed
// panel or A's rows in place); b: one packed NR-wide panel of B.
static inline __attribute__((always_inline)) GEMM_FULL_WIDTH void
microkernel_tile(int kc, const float *restrict a, long a_row_stride, long a_k_stride, const float *restrict b,
                 float *restrict c, long ldc, int rows, int cols, int accumulate) {
    const float *a_row[GEMM_MR]; // rows past C's edge repeat the last one; their sums are not stored
    for (int i = 0; i < GEMM_MR; i++) { a_row[i] = a + (i < rows ? i : rows - 1) * a_row_stride; }
    gemm_vector acc[GEMM_MR][GEMM_NV];
    for (int i = 0; i < GEMM_MR; i++) {
        for (int v = 0; v < GEMM_NV; v++) { acc[i][v] = (gemm_vector){0}; }
        // C's rows are far apart (ldc) and rarely cached: start fetching them
        // now so that the update at the end does not wait for memory
        __builtin_prefetch(c + i * ldc, 1);
        __builtin_prefetch(c + i * ldc + GEMM_NR - 1, 1);
        // a short product (attention's, K = 64) has little time to hide the
        // rest: fetch every line (Xeon, B=8 T=256: attention_forward 8.0-8.4
        // -> 7.6-7.8 ms, _backward 13.7-14.0 -> 12.4-12.7; for every product
        // it cost the linear layers 3-6 points of peak)
        if (kc <= 128) {
            for (int j = 16; j < GEMM_NR - 16; j += 16) { __builtin_prefetch(c + i * ldc + j, 1); }
        }
    }
    // four steps of k per trip round the loop: on Intel cores the loop's
    // counter and branch take issue slots on the FMA ports (a Xeon's 12
    // linear products with KC 512, NC 384: 70-78% -> 76-86% of peak)
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        gemm_vector bk[GEMM_NV];
        for (int v = 0; v < GEMM_NV; v++) { bk[v] = vector_load(b + k * GEMM_NR + v * GEMM_VF); }
        for (int i = 0; i < GEMM_MR; i++) {
            const float ai = a_row[i][k * a_k_stride];
            for (int v = 0; v < GEMM_NV; v++) { acc[i][v] += bk[v] * ai; } // ai is broadcast
        }
    }
    if (rows == GEMM_MR && cols == GEMM_NR) { // a whole tile: vector stores
        for (int i = 0; i < GEMM_MR; i++) {
            for (int v = 0; v < GEMM_NV; v++) {
                float *cv = c + i * ldc + v * GEMM_VF;
                vector_store(cv, accumulate ? vector_load(cv) + acc[i][v] : acc[i][v]);
            }
        }
        return;
    }
    float tile[GEMM_MR][GEMM_NR]; // an edge tile: only rows x cols of it are C
    for (int i = 0; i < GEMM_MR; i++) {
        for (int v = 0; v < GEMM_NV; v++) { vector_store(tile[i] + v * GEMM_VF, acc[i][v]); }
    }
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < cols; j++) { c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i][j] : tile[i][j]; }
    }
}
// The micro-kernel. clang 14, given the strides as variables, keeps the six
// rows' offsets on the stack and reloads them every step; a copy with a
// packed panel's strides (1, MR) as constants reads it through one pointer:
// clang's dweight products 67-69% -> 72-75% of peak, attention's 30/38% ->
// 35/44% (medians of five alternating runs, Xeon). gcc, which versions the
// loop itself, measured 0-3 points slower with the copy, so it has one.
GEMM_FULL_WIDTH void gemm_microkernel(int kc, const float *restrict a, long a_row_stride, long a_k_stride,
                                      const float *restrict b, float *restrict c, long ldc, int rows, int cols,
                                      int accumulate) {
#if defined(__clang__)
    if (a_row_stride == 1 && a_k_stride == GEMM_MR) {
        microkernel_tile(kc, a, 1, GEMM_MR, b, c, ldc, rows, cols, accumulate);
        return;
    }
#endif
    microkernel_tile(kc, a, a_row_stride, a_k_stride, b, c, ldc, rows, cols, accumulate);
}

#else
// The same in plain C, for compilers without vector extensions. The six rows
// of the tile are spelled out, each A element loaded once per k into a
// scalar, so that the only loop left inside k is the one over the NR columns
// with six multiply-adds per column: gcc and clang both vectorize that loop
// over j and keep acc in registers. (With a loop over the rows inside k
// instead, clang -march=native on an AVX-512 host vectorized across the rows
// with gathers and scatters of acc, 39x slower, and gcc left it scalar.)
void gemm_microkernel(int kc, const float *restrict a, long a_row_stride, long a_k_stride,
                      const float *restrict b, float *restrict c, long ldc, int rows, int cols, int accumulate) {
    // rows past C's edge repeat the last one; their sums are not stored
#define GEMM_A_ROW(i) (a + ((i) < rows ? (i) : rows - 1) * a_row_stride)
    const float *a0 = GEMM_A_ROW(0), *a1 = GEMM_A_ROW(1), *a2 = GEMM_A_ROW(2);
    const float *a3 = GEMM_A_ROW(3), *a4 = GEMM_A_ROW(4), *a5 = GEMM_A_ROW(5);
#undef GEMM_A_ROW
    float acc[GEMM_MR][GEMM_NR] = {{0.0f}};
    for (int k = 0; k < kc; k++) {
        const float *bk = b + k * GEMM_NR;
        const long ak = k * a_k_stride;
        const float x0 = a0[ak], x1 = a1[ak], x2 = a2[ak], x3 = a3[ak], x4 = a4[ak], x5 = a5[ak];
        for (int j = 0; j < GEMM_NR; j++) {
            const float bkj = bk[j];
            acc[0][j] += x0 * bkj;
            acc[1][j] += x1 * bkj;
            acc[2][j] += x2 * bkj;
            acc[3][j] += x3 * bkj;
            acc[4][j] += x4 * bkj;
            acc[5][j] += x5 * bkj;
        }
    }
    for (int i = 0; i < rows; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < cols; j++) { ci[j] = accumulate ? ci[j] + acc[i][j] : acc[i][j]; }
    }
}
#endif

// C[0:rows, 0:cols] (+)= A block . packed B block, whose NR-wide panels
// (kc deep) start panel_floats apart.
void gemm_block(APanels a, const float *b_panels, long panel_floats, int kc, int rows, int cols, float *c, long ldc,
                int accumulate) {
    for (int i = 0; i < rows; i += GEMM_MR) {
        const float *a_panel = a.data + (i / GEMM_MR) * a.panel_stride;
        for (int j = 0; j < cols; j += GEMM_NR) {
            gemm_microkernel(kc, a_panel, a.row_stride, a.k_stride, b_panels + j / GEMM_NR * panel_floats, c + (long)i * ldc + j,
                             ldc, rows - i < GEMM_MR ? rows - i : GEMM_MR, cols - j < GEMM_NR ? cols - j : GEMM_NR,
                             accumulate);
        }
    }
}

// Packing buffers, one A block and one B block per thread and two B blocks
// that gemm's threads share, allocated once and aligned to 64 bytes (a cache
// line), so that no vector load of a packed panel of B straddles two lines
// (each panel is a multiple of 64 bytes long).
#define GEMM_ALIGN_FLOATS 16
#define GEMM_ROUND_UP(n) (((n) + GEMM_ALIGN_FLOATS - 1) / GEMM_ALIGN_FLOATS * GEMM_ALIGN_FLOATS)
#define GEMM_A_BLOCK_FLOATS GEMM_ROUND_UP((size_t)(GEMM_A_STRIP > GEMM_MC ? GEMM_A_STRIP : GEMM_MC) * GEMM_KC)
#define GEMM_B_BLOCK_FLOATS GEMM_ROUND_UP((size_t)GEMM_NC * GEMM_KC)
#define GEMM_THREAD_FLOATS (GEMM_A_BLOCK_FLOATS + GEMM_B_BLOCK_FLOATS)
static void *gemm_workspace_memory = NULL; // as allocated
static float *gemm_shared_b = NULL;        // its first 64-byte boundary: the two shared B blocks
static float *gemm_workspace = NULL;       // then each thread's A and B blocks
static int gemm_workspace_threads = 0;

// Call outside parallel regions, before any gemm.
void gemm_workspace_reserve(void) {
    const int threads = max_threads();
    if (threads <= gemm_workspace_threads) { return; }
    free(gemm_workspace_memory);
    const size_t floats = 2 * GEMM_B_BLOCK_FLOATS + threads * GEMM_THREAD_FLOATS + GEMM_ALIGN_FLOATS;
    gemm_workspace_memory = malloc_or_die(floats * sizeof(float), "gemm workspace");
    const uintptr_t line = GEMM_ALIGN_FLOATS * sizeof(float);
    gemm_shared_b = (float *)(((uintptr_t)gemm_workspace_memory + line - 1) / line * line);
    gemm_workspace = gemm_shared_b + 2 * GEMM_B_BLOCK_FLOATS;
    gemm_workspace_threads = threads;
}

void gemm_workspace_release(void) {
    free(gemm_workspace_memory);
    gemm_workspace_memory = NULL;
    gemm_shared_b = NULL;
    gemm_workspace = NULL;
    gemm_workspace_threads = 0;
}

// An empty product: true if there is nothing to multiply, after zeroing C
// where K = 0 asks for C = 0.
static int gemm_is_empty(int M, int N, int K, float *c, long ldc, int accumulate) {
    if (M <= 0 || N <= 0) { return 1; }
    if (K > 0) { return 0; }
    if (!accumulate) { for (int i = 0; i < M; i++) { memset(c + (long)i * ldc, 0, (size_t)N * sizeof(float)); } }
    return 1;
}

// C[:, 0:cols] (+)= A[:, k0:k0+kc] . one packed slice of B, MC rows at a time.
static void gemm_slice(int M, StridedMatrix a, int k0, int kc, const float *b_panels, long panel_floats, int cols,
                       float *c, long ldc, int accumulate) {
    float *a_buffer = gemm_workspace + (size_t)thread_id() * GEMM_THREAD_FLOATS;
    for (int row0 = 0; row0 < M; row0 += GEMM_MC) {
        const int rows = M - row0 < GEMM_MC ? M - row0 : GEMM_MC;
        const APanels a_panels = a_block(a_buffer, a, row0, rows, k0, kc, cols);
        gemm_block(a_panels, b_panels, panel_floats, kc, rows, cols, c + (long)row0 * ldc, ldc, accumulate);
    }
}

// The depth of the slices that K is cut into: equal (rounded up to 16) so
// that no thin last slice costs a pass over C of its own, and never more
// than GEMM_KC, the packing buffers' depth (a -DGEMM_KC need not be a
// multiple of 16): K = 768 is one slice with GEMM_KC 768 or 1024, K = 2048 three of
// 688 with KC 768.
static int gemm_slice_depth(int K) {
    const int slices = (K + GEMM_KC - 1) / GEMM_KC;
    const int depth = ((K + slices - 1) / slices + 15) / 16 * 16;
    return depth < GEMM_KC ? depth : GEMM_KC;
}

// gemm_serial's usual order: for each block of NC columns and each slice of
// K, pack that block of B once, then run every row of A past it.
static void gemm_serial_by_b_blocks(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc,
                                    int accumulate) {
    float *b_panels = gemm_workspace + (size_t)thread_id() * GEMM_THREAD_FLOATS + GEMM_A_BLOCK_FLOATS;
    const int depth = gemm_slice_depth(K);
    for (int col0 = 0; col0 < N; col0 += GEMM_NC) {
        const int cols = N - col0 < GEMM_NC ? N - col0 : GEMM_NC;
        for (int k0 = 0; k0 < K; k0 += depth) {
            const int kc = K - k0 < depth ? K - k0 : depth;
            pack_b_block(b_panels, b, col0, cols, k0, kc);
            gemm_slice(M, a, k0, kc, b_panels, (long)kc * GEMM_NR, cols, c + col0, ldc, accumulate || k0 > 0);
        }
    }
}

// The order for an A that must be packed when B has several blocks of NC
// columns: for each strip of GEMM_A_STRIP rows and each slice of K, pack
// that strip of A once, then run every block of B past it (B is packed once
// per strip rather than A once per block).
static void gemm_serial_by_a_strips(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc,
                                    int accumulate) {
    float *a_buffer = gemm_workspace + (size_t)thread_id() * GEMM_THREAD_FLOATS;
    float *b_panels = a_buffer + GEMM_A_BLOCK_FLOATS;
    const int depth = gemm_slice_depth(K);
    for (int row0 = 0; row0 < M; row0 += GEMM_A_STRIP) {
        const int rows = M - row0 < GEMM_A_STRIP ? M - row0 : GEMM_A_STRIP;
        for (int k0 = 0; k0 < K; k0 += depth) {
            const int kc = K - k0 < depth ? K - k0 : depth;
            const APanels a_panels = a_block(a_buffer, a, row0, rows, k0, kc, N);
            for (int col0 = 0; col0 < N; col0 += GEMM_NC) {
                const int cols = N - col0 < GEMM_NC ? N - col0 : GEMM_NC;
                pack_b_block(b_panels, b, col0, cols, k0, kc);
                gemm_block(a_panels, b_panels, (long)kc * GEMM_NR, kc, rows, cols, c + (long)row0 * ldc + col0, ldc,
                           accumulate || k0 > 0);
            }
        }
    }
}

// gemm on the calling thread alone (used directly inside parallel loops).
void gemm_serial(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate) {
#ifdef GEMM_REFERENCE
    gemm_reference(M, N, K, a, b, c, ldc, accumulate);
    return;
#endif
    if (gemm_is_empty(M, N, K, c, ldc, accumulate)) { return; }
    if (N > GEMM_NC && !a_is_read_in_place(a, N)) {
        gemm_serial_by_a_strips(M, N, K, a, b, c, ldc, accumulate);
    } else {
        gemm_serial_by_b_blocks(M, N, K, a, b, c, ldc, accumulate);
    }
}

// A whole B (K,N) packed as NR-wide panels K deep: panel p at panels + p*K*NR.
size_t gemm_packed_floats(int K, int N) { return (size_t)K * ((N + GEMM_NR - 1) / GEMM_NR * GEMM_NR); }

PackedMatrix gemm_pack(float *panels, StridedMatrix b, int K, int N) {
#ifdef GEMM_REFERENCE
    (void)N; // the reference kernel reads `source`, not the panels
#else
    pack_b_block(panels, b, 0, N, 0, K);
#endif
    return (PackedMatrix){b, panels, K};
}

// gemm_serial's slices of K, on a B already packed: the slice k0..k0+kc of a
// panel is its rows k0.. (NR floats each), so no copy is needed.
void gemm_packed(int M, int N, int K, StridedMatrix a, PackedMatrix b, float *c, long ldc, int accumulate) {
#ifdef GEMM_REFERENCE
    gemm_reference(M, N, K, a, b.source, c, ldc, accumulate);
    return;
#endif
    if (gemm_is_empty(M, N, K, c, ldc, accumulate)) { return; }
    if (K > b.depth) { fail("gemm_packed: %d rows of B asked of a packing %d deep", K, b.depth); }
    const int depth = gemm_slice_depth(K);
    for (int k0 = 0; k0 < K; k0 += depth) {
        const int kc = K - k0 < depth ? K - k0 : depth;
        gemm_slice(M, a, k0, kc, b.panels + (size_t)k0 * GEMM_NR, (long)b.depth * GEMM_NR, N, c, ldc, accumulate || k0 > 0);
    }
}

// Part `part` of `parts` of 0..n, cut at multiples of `unit`.
int split_point(int n, int unit, int part, int parts) {
    const long units = (n + unit - 1) / unit;
    const long point = units * part / parts * unit;
    return point < n ? (int)point : n;
}

// gemm for C at most NC wide and at least as tall: threads take strips of
// C's rows and share each packed slice of B, instead of each packing all of
// it (the copying per thread would then stay the same with more threads
// while each one's share of the multiply-adds shrank). Every thread packs
// its share of the slice's panels and, after a barrier, multiplies its rows
// by the whole slice. Two buffers alternate, so one barrier per slice is
// enough: a thread packing slice i+1 has passed barrier i, which no thread
// reaches before it has finished slice i-1, the last user of that buffer.
// (A thread with no rows still packs its share.) On 2 threads of a Zen 4,
// with NC 768, timed alternately with each thread packing all of B in one
// process: medians 0-4% faster at GPT-2 124M's dweight and forward shapes.
// (Sharing B's blocks when C is wider than NC measured no faster on a Xeon,
// and up to 4 points of peak slower where A is packed.)
#ifndef GEMM_REFERENCE // (the reference build multiplies with gemm_reference everywhere)
static void gemm_rows_sharing_b(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc,
                                int accumulate) {
    const int depth = gemm_slice_depth(K);
    #pragma omp parallel
    {
        const int part = thread_id(), parts = team_threads();
        const int r0 = split_point(M, GEMM_MR, part, parts), r1 = split_point(M, GEMM_MR, part + 1, parts);
        const int j0 = split_point(N, GEMM_NR, part, parts), j1 = split_point(N, GEMM_NR, part + 1, parts);
        const StridedMatrix a_part = {a.data + (long)r0 * a.row_stride, a.row_stride, a.col_stride};
        for (int k0 = 0, slice = 0; k0 < K; k0 += depth, slice++) {
            const int kc = K - k0 < depth ? K - k0 : depth;
            float *b_panels = gemm_shared_b + (size_t)(slice % 2) * GEMM_B_BLOCK_FLOATS;
            pack_b_block(b_panels + (size_t)j0 * kc, b, j0, j1 - j0, k0, kc);
            #pragma omp barrier
            gemm_slice(r1 - r0, a_part, k0, kc, b_panels, (long)kc * GEMM_NR, N, c + (long)r0 * ldc, ldc,
                       accumulate || k0 > 0);
        }
    }
}

#endif

// gemm with C cut into one rectangle per thread, along its longer side,
// each computed by gemm_serial (which packs its own B). Not for use inside a
// parallel region (use gemm_serial there).
void gemm(int M, int N, int K, StridedMatrix a, StridedMatrix b, float *c, long ldc, int accumulate) {
    gemm_workspace_reserve();
#ifndef GEMM_REFERENCE
    if (gemm_is_empty(M, N, K, c, ldc, accumulate)) { return; }
    if (M >= N && N <= GEMM_NC) {
        gemm_rows_sharing_b(M, N, K, a, b, c, ldc, accumulate);
        return;
    }
#endif
    #pragma omp parallel
    {
        const int part = thread_id(), parts = team_threads();
        if (M >= N) {
            const int r0 = split_point(M, GEMM_MR, part, parts), r1 = split_point(M, GEMM_MR, part + 1, parts);
            StridedMatrix a_part = {a.data + (long)r0 * a.row_stride, a.row_stride, a.col_stride};
            gemm_serial(r1 - r0, N, K, a_part, b, c + (long)r0 * ldc, ldc, accumulate);
        } else {
            const int c0 = split_point(N, GEMM_NR, part, parts), c1 = split_point(N, GEMM_NR, part + 1, parts);
            StridedMatrix b_part = {b.data + (long)c0 * b.col_stride, b.row_stride, b.col_stride};
            gemm_serial(M, c1 - c0, K, a, b_part, c + c0, ldc, accumulate);
        }
    }
}

// ----------------------------------------------------------------------------
// Appendix B: exp for the elementwise loops (GELU, softmax), written without
// library calls so the compiler can vectorize the loops that use it:
//   exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2,  |r| <= ln(2)/2
// exp(r) is a degree-7 polynomial (Cephes expf coefficients), relative
// error about 1e-7, like expf. Inputs are clamped to [-87, 88] so that 2^n is
// a normal float: exp(-87) = 1.6e-38 stands in for anything smaller.
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float round_magic = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer
    const float shifted = x * 1.44269504088896341f + round_magic; // n in its low mantissa bits
    const float n = shifted - round_magic;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f; // ln 2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof(bits));
    bits = (bits - 0x4B400000u + 127u) << 23; // (n + 127) << 23 without converting a float (maybe NaN) to int
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// ----------------------------------------------------------------------------
// Data parallelism over MPI: all of the program's MPI code, compiled only by
// `make MPI=1` (mpicc -DUSE_MPI). The default build is one process: dp_size
// is 1 and every function below does nothing (dp_exit_failure just exits).
//
// `mpirun -np N train_gpt2_sft ...` runs N copies (ranks) of the program; each
// maps the data and builds the same model. A micro-step's global batch is
// N x B examples (B = --batch-size), exactly the batch one process takes with
// --batch-size N x B, and rank r takes its examples r, r + N, ..., r + (B-1) N
// (a batch is sorted by length, so each rank gets as much work; dropout masks
// are keyed by the example's global place). Each rank scales its loss
// by 1/N, so after one in-place MPI_Allreduce summing the gradients (once per
// update, after the --grad-accum micro-steps) every rank holds the gradient of
// the mean loss over the global batch, and makes the same AdamW update.
// Rank 0 alone prints and writes files. Evaluation and --predict give rank r
// every N-th batch and merge the results in order (dp_merge_disjoint).
// A rank that fails ends every rank (dp_exit_failure: MPI_Abort).

int dp_rank = 0, dp_size = 1; // this process's rank, and the number of ranks

#ifdef USE_MPI
#include <limits.h>
#include <mpi.h>

void dp_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) { MPI_Finalize(); }
}

// Called first in main. Only the main thread calls MPI, outside parallel regions.
void dp_init(int *argc, char ***argv) {
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &dp_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dp_size);
    atexit(dp_finalize); // every normal exit finalizes
    if (dp_rank != 0) { // rank 0 alone logs
        FILE *quiet = freopen("/dev/null", "w", stdout);
        (void)quiet;
    }
}

// fail() calls these two around its message. Ranks often fail alike (the
// same bad flag or file): rank 0 reports at once and MPI_Abort ends every
// rank, while the others first wait two seconds for that to happen and report
// only a failure of their own. So one `error:` line is printed either way.
void dp_before_error_message(void) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    fflush(stdout);
    if (initialized && dp_rank != 0) {
        const struct timespec grace = {2, 0};
        nanosleep(&grace, NULL);
    }
}

void dp_exit_failure(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    fflush(stderr);
    if (initialized && !finalized) { MPI_Abort(MPI_COMM_WORLD, EXIT_FAILURE); }
    exit(EXIT_FAILURE);
}

// x[0..n) = the sum over the ranks of their x, in place: one MPI_Allreduce
// (one per 2^31 - 1 elements).
void dp_sum_floats(float *x, size_t n) {
    if (dp_size == 1) { return; }
    for (size_t done = 0; done < n;) {
        const int count = n - done > (size_t)INT_MAX ? INT_MAX : (int)(n - done);
        MPI_Allreduce(MPI_IN_PLACE, x + done, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        done += (size_t)count;
    }
}

void dp_sum_doubles(double *x, int n) {
    if (dp_size == 1) { return; }
    MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

// A gather in order: each rank has written its own part of buf and left the
// rest zero bytes; afterwards every rank holds all parts, bit for bit (a
// bitwise OR of one value with zeros, so -0.0 and NaN survive too).
void dp_merge_disjoint(void *buf, size_t bytes) {
    if (dp_size == 1) { return; }
    for (size_t done = 0; done < bytes;) {
        const int count = bytes - done > (size_t)INT_MAX ? INT_MAX : (int)(bytes - done);
        MPI_Allreduce(MPI_IN_PLACE, (unsigned char *)buf + done, count, MPI_BYTE, MPI_BOR, MPI_COMM_WORLD);
        done += (size_t)count;
    }
}

// 1 when x[0..n) holds the same bits on every rank (compared by a 64-bit
// FNV-1a hash), else 0. The ranks' updates are the same only while the
// allreduce gives each of them the same sums.
int dp_identical_on_all_ranks(const float *x, size_t n) {
    if (dp_size == 1) { return 1; }
    uint64_t h = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, 4);
        h = (h ^ bits) * 0x100000001B3ULL;
    }
    unsigned long long both[2] = {h, ~h}, max[2]; // max(~h) = ~min(h)
    MPI_Allreduce(both, max, 2, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    return max[0] == ~max[1];
}
#else
void dp_init(int *argc, char ***argv) { (void)argc; (void)argv; }
void dp_before_error_message(void) {}
void dp_exit_failure(void) { exit(EXIT_FAILURE); }
void dp_sum_floats(float *x, size_t n) { (void)x; (void)n; }
void dp_sum_doubles(double *x, int n) { (void)x; (void)n; }
void dp_merge_disjoint(void *buf, size_t bytes) { (void)buf; (void)bytes; }
int dp_identical_on_all_ranks(const float *x, size_t n) { (void)x; (void)n; return 1; }
#endif

// ----------------------------------------------------------------------------
// Command line.

typedef struct {
    const char *model_path;   // -m: llm.c or fine-tuned checkpoint
    int init_depth;           // --init dN: a model from scratch instead (0: off)
    const char *train_path, *test_path, *save_path, *resume_path, *predict_path, *output_path;
    int num_labels;           // 0: from the training data
    int regression;           // --task regression: predict the star rating
    int language_model;       // --task lm: pretrain on the next-token loss
    int val_docs;             // --task lm: documents held out of the last --train set for validation
    int sampled_softmax;      // --softmax sampled (--task lm)
    int max_len;
    Truncation truncation;
    int batch_size, grad_accum, epochs, max_steps;
    OptimizerConfig opt;
    float warmup_ratio;
    float dropout;            // while training; evaluation never drops
    uint64_t seed;
    int log_every, eval_every, eval_examples, save_every, threads;
    int log_digits;           // decimals of the logged loss and gradient norm (0: 4 and 3)
    int stop_at_step;         // end this run after this many updates (0: run to the end)
    float time_budget;        // minutes of updates; fixes the run's length after its first updates (0: off)
} Args;

#define TIME_BUDGET_TIMED_UPDATES 10 // --time-budget decides after this many updates

void print_usage(void) {
    printf(
        "usage: train_gpt2_sft [options]\n"
        "Fine-tunes GPT-2 as a sequence classifier on a dataset made by prepro_imdb.py,\n"
        "or pretrains it as a language model on the datasets' texts (--task lm).\n\n"
        "model\n"
        "  -m, --model PATH        llm.c GPT-2 checkpoint or fine-tuned checkpoint [gpt2_124M.bin]\n"
        "  --init dN               train from scratch: N layers of llm.c's widths for d6 (384 channels,\n"
        "                          6 heads), d12 (768, 12: GPT-2 124M), d24 (1024, 16), d36 (1280, 20),\n"
        "                          d48 (1600, 25); any other N: 64N channels, N heads\n"
        "  --num-labels K          classes for a new head [from the training data]\n"
        "  --task classify|regression|lm   regression predicts the star rating (MSE); lm pretrains:\n"
        "                          next-token loss over the text, output layer tied to wte,\n"
        "                          result in llm.c's checkpoint format [classify]\n"

        "data\n"
        "  --train PATH[,PATH...]  training data [data/imdb/imdb_train.bin; for lm\n"
        "                          data/imdb/imdb_train.bin,data/imdb/imdb_unsup.bin: texts, labels unused]\n"
        "  --test PATH             evaluation data [data/imdb/imdb_test.bin; not read by lm]\n"
        "  --val-docs N            lm: the last N documents of the last --train set are held out\n"
        "                          for the validation loss [1000]\n"
        "  --softmax full|sampled  lm: training's softmax over all tokens, or over the batch's own next\n"
        "                          tokens with a frequency correction (faster for small models;\n"
        "                          evaluation always uses the full softmax) [full]\n"
        "  --max-len N             truncate to N tokens (lm: tokens per row), at most the model's\n"
        "                          positions [512, or the model's positions if fewer]\n"
        "  --truncation head|tail|head+tail   which part of a long text to keep [head]\n"
        "training (Hugging Face Trainer defaults)\n"
        "  --epochs N [3; lm 1]   --max-steps N (overrides epochs) [0]\n"
        "  --time-budget MIN       end near MIN minutes of updates: after 10 updates the run's\n"
        "                          length (and its learning-rate decay) is cut to what the\n"
        "                          measured speed allows, at most the steps above [0: off]\n"
        "  --batch-size B [8]   --grad-accum N [1]\n"
        "  --lr F [5e-5; lm 6e-4]   --warmup-steps N [0]   --warmup-ratio F [0]\n"
        "  --weight-decay F [0]   --max-grad-norm F (0: off) [1]\n"
        "  --beta1 F [0.9]   --beta2 F [0.999]   --eps F [1e-8]   --seed N [1337]\n"
        "  --dropout P             drop probability at GPT-2's four dropout places while\n"
        "                          training (0: off) [0.1, as GPT-2's Hugging Face config; lm 0]\n"
        "output\n"
        "  --log-every N [10]   --eval-every N steps (0: only at the end) [0]\n"
        "  --log-digits N          decimals of the logged loss and gradient norm [4 and 3]\n"
        "  --eval-examples N   examples (lm: rows) for the periodic evaluations [1000]\n"
        "  --save PATH   --save-every N steps [0: only at the end]\n"
        "  --resume PATH           continue a run saved with --save PATH\n"
        "  --stop-at-step N        end this run after N updates, saving; the schedule still spans\n"
        "                          the whole run, so --resume continues it exactly [0: off]\n"
        "  --predict PATH --output FILE   write predictions for a dataset and exit\n"
        "  --threads N             OpenMP threads [all cores]\n"
        "several processes (a build with make MPI=1)\n"
        "  mpirun -np N train_gpt2_sft ...   N data-parallel ranks: a micro-step's batch is\n"
        "                          N x --batch-size examples, --batch-size on each rank\n");
}

long parse_long(const char *flag, const char *value, long lo, long hi) {
    char *end;
    errno = 0;
    const long v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0') { fail("%s: '%s' is not an integer", flag, value); }
    if (v < lo || v > hi) { fail("%s: %ld is out of range %ld..%ld", flag, v, lo, hi); }
    return v;
}

float parse_float(const char *flag, const char *value, double lo, double hi) {
    char *end;
    errno = 0;
    const double v = strtod(value, &end);
    if (errno != 0 || end == value || *end != '\0' || !isfinite(v)) { fail("%s: '%s' is not a number", flag, value); }
    if (v < lo || v > hi) { fail("%s: %g is out of range %g..%g", flag, v, lo, hi); }
    return (float)v;
}

void parse_args(Args *a, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    a->model_path = "gpt2_124M.bin";
    a->train_path = NULL; // by task, set at the end
    a->test_path = "data/imdb/imdb_test.bin";
    a->val_docs = 1000;
    a->max_len = 0; // 512, or the model's positions when fewer (set in main)
    a->truncation = TRUNCATE_HEAD;
    a->batch_size = 8; a->grad_accum = 1; a->epochs = 0; // 0 and -1 below: not given, set by task at the end
    a->opt.learning_rate = -1.0f; a->opt.beta1 = 0.9f; a->opt.beta2 = 0.999f; a->opt.eps = 1e-8f;
    a->opt.max_grad_norm = 1.0f;
    a->seed = 1337;
    a->dropout = -1.0f;
    a->log_every = 10; a->eval_examples = 1000;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) { print_usage(); exit(0); }
        if (i + 1 >= argc) { fail("%s: missing value (see --help)", flag); }
        const char *v = argv[++i];
        if (strcmp(flag, "-m") == 0 || strcmp(flag, "--model") == 0) { a->model_path = v; }
        else if (strcmp(flag, "--init") == 0) {
            if (v[0] != 'd') { fail("--init: '%s' is not a depth like d4 or d12", v); }
            a->init_depth = (int)parse_long(flag, v + 1, 1, 48);
        }
        else if (strcmp(flag, "--num-labels") == 0) { a->num_labels = (int)parse_long(flag, v, 2, 65536); }
        else if (strcmp(flag, "--task") == 0) {
            a->regression = strcmp(v, "regression") == 0;
            a->language_model = strcmp(v, "lm") == 0;
            if (!a->regression && !a->language_model && strcmp(v, "classify") != 0) {
                fail("--task: '%s' is not classify, regression or lm", v);
            }
        }
        else if (strcmp(flag, "--train") == 0) { a->train_path = v; }
        else if (strcmp(flag, "--test") == 0) { a->test_path = v; }
        else if (strcmp(flag, "--val-docs") == 0) { a->val_docs = (int)parse_long(flag, v, 1, 100000000); }
        else if (strcmp(flag, "--softmax") == 0) {
            a->sampled_softmax = strcmp(v, "sampled") == 0;
            if (!a->sampled_softmax && strcmp(v, "full") != 0) { fail("--softmax: '%s' is not full or sampled", v); }
        }
        else if (strcmp(flag, "--max-len") == 0) { a->max_len = (int)parse_long(flag, v, 1, 1 << 20); }
        else if (strcmp(flag, "--truncation") == 0) {
            if (strcmp(v, "head") == 0) { a->truncation = TRUNCATE_HEAD; }
            else if (strcmp(v, "tail") == 0) { a->truncation = TRUNCATE_TAIL; }
            else if (strcmp(v, "head+tail") == 0) { a->truncation = TRUNCATE_HEAD_TAIL; }
            else { fail("--truncation: '%s' is not head, tail or head+tail", v); }
        }
        else if (strcmp(flag, "--epochs") == 0) { a->epochs = (int)parse_long(flag, v, 1, 1000); }
        else if (strcmp(flag, "--max-steps") == 0) { a->max_steps = (int)parse_long(flag, v, 0, 100000000); }
        else if (strcmp(flag, "--batch-size") == 0) { a->batch_size = (int)parse_long(flag, v, 1, 4096); }
        else if (strcmp(flag, "--grad-accum") == 0) { a->grad_accum = (int)parse_long(flag, v, 1, 4096); }
        else if (strcmp(flag, "--lr") == 0) { a->opt.learning_rate = parse_float(flag, v, 0.0, 10.0); }
        else if (strcmp(flag, "--warmup-steps") == 0) { a->opt.warmup_steps = (int)parse_long(flag, v, 0, 100000000); }
        else if (strcmp(flag, "--warmup-ratio") == 0) { a->warmup_ratio = parse_float(flag, v, 0.0, 1.0); }
        else if (strcmp(flag, "--weight-decay") == 0) { a->opt.weight_decay = parse_float(flag, v, 0.0, 10.0); }
        else if (strcmp(flag, "--max-grad-norm") == 0) { a->opt.max_grad_norm = parse_float(flag, v, 0.0, 1e30); }
        else if (strcmp(flag, "--beta1") == 0) { a->opt.beta1 = parse_float(flag, v, 0.0, 0.999999); }
        else if (strcmp(flag, "--beta2") == 0) { a->opt.beta2 = parse_float(flag, v, 0.0, 0.999999999); }
        else if (strcmp(flag, "--eps") == 0) { a->opt.eps = parse_float(flag, v, 1e-30, 1.0); }
        else if (strcmp(flag, "--dropout") == 0) { a->dropout = parse_float(flag, v, 0.0, 0.99); }
        else if (strcmp(flag, "--seed") == 0) { a->seed = (uint64_t)parse_long(flag, v, 0, 2147483647); }
        else if (strcmp(flag, "--log-every") == 0) { a->log_every = (int)parse_long(flag, v, 1, 100000000); }
        else if (strcmp(flag, "--log-digits") == 0) { a->log_digits = (int)parse_long(flag, v, 1, 17); }
        else if (strcmp(flag, "--eval-every") == 0) { a->eval_every = (int)parse_long(flag, v, 0, 100000000); }
        else if (strcmp(flag, "--eval-examples") == 0) { a->eval_examples = (int)parse_long(flag, v, 1, 2147483647); }
        else if (strcmp(flag, "--save") == 0) { a->save_path = v; }
        else if (strcmp(flag, "--save-every") == 0) { a->save_every = (int)parse_long(flag, v, 0, 100000000); }
        else if (strcmp(flag, "--resume") == 0) { a->resume_path = v; }
        else if (strcmp(flag, "--predict") == 0) { a->predict_path = v; }
        else if (strcmp(flag, "--output") == 0) { a->output_path = v; }
        else if (strcmp(flag, "--threads") == 0) { a->threads = (int)parse_long(flag, v, 1, 1024); }
        else if (strcmp(flag, "--stop-at-step") == 0) { a->stop_at_step = (int)parse_long(flag, v, 1, 100000000); }
        else if (strcmp(flag, "--time-budget") == 0) { a->time_budget = parse_float(flag, v, 0.01, 1e6); }
        else { fail("unknown flag %s (see --help)", flag); }
    }
    const int lm = a->language_model;
    if (a->train_path == NULL) { a->train_path = lm ? "data/imdb/imdb_train.bin,data/imdb/imdb_unsup.bin" : "data/imdb/imdb_train.bin"; }
    if (a->epochs == 0) { a->epochs = lm ? 1 : 3; }
    if (a->opt.learning_rate < 0.0f) { a->opt.learning_rate = lm ? 6e-4f : 5e-5f; }
    if (a->dropout < 0.0f) { a->dropout = lm ? 0.0f : 0.1f; }
    if (!lm && a->sampled_softmax) { fail("--softmax sampled is for --task lm"); }
    if (lm && a->predict_path != NULL) { fail("--predict needs a classifier; a language model (--task lm) has no labels to predict"); }
    if (a->predict_path != NULL && a->output_path == NULL) { fail("--predict needs --output FILE"); }
    if (a->save_every > 0 && a->save_path == NULL) { fail("--save-every needs --save PATH"); }
    if (a->time_budget > 0.0f && a->resume_path != NULL) {
        fail("--time-budget fixes a run's length at its start; --resume it with --max-steps N, N its steps as logged");
    }
    if (a->time_budget > 0.0f && a->warmup_ratio > 0.0f) {
        fail("--time-budget with --warmup-ratio: the warmup would depend on the budget's outcome; give --warmup-steps");
    }
    if (a->time_budget > 0.0f && a->stop_at_step > 0 && a->stop_at_step <= TIME_BUDGET_TIMED_UPDATES) {
        fail("--stop-at-step %d ends the run before --time-budget fixes its length (after %d updates); "
             "stop later", a->stop_at_step, TIME_BUDGET_TIMED_UPDATES);
    }
}

void format_duration(char *out, size_t n, double seconds) {
    const long s = (long)(seconds + 0.5);
    if (s >= 3600) { snprintf(out, n, "%ldh%02ldm", s / 3600, (s / 60) % 60); }
    else { snprintf(out, n, "%ldm%02lds", s / 60, s % 60); }
}

// Writes "index,true_label,predicted,p_0..p_{K-1}" (or the predicted value for
// regression) for every example of a dataset, in file order. Over MPI, batch
// j runs on rank j % N and rank 0 writes the merged logits.
void write_predictions(GPT2 *model, const Dataset *d, const Args *args) {
    const int K = model->config.num_labels, B = args->batch_size;
    const char *special = not_a_regular_file(args->output_path);
    if (special != NULL) { fail("--output %s: %s; give a file name", args->output_path, special); }
    char *tmp_path = path_with_suffix(args->output_path, ".tmp");
    FILE *f = NULL;
    if (dp_rank == 0) {
        f = fopen(tmp_path, "w");
        if (f == NULL) { fail("cannot write %s: %s", tmp_path, strerror(errno)); }
        fprintf(f, "index,label,predicted");
        for (int k = 0; k < K; k++) { fprintf(f, K == 1 ? ",value" : ",p_%d", k); }
        fprintf(f, "\n");
    }
    Batch batch = batch_alloc(B, args->max_len);
    int64_t *idx = (int64_t *)malloc_or_die((size_t)B * sizeof(int64_t), "indices");
    const int64_t round = (int64_t)B * dp_size; // one batch per rank
    float *logits = (float *)malloc_or_die((size_t)round * K * sizeof(float), "logits of a round");
    for (int64_t first = 0; first < d->num_examples; first += round) {
        memset(logits, 0, (size_t)round * K * sizeof(float));
        const int64_t start = first + (int64_t)dp_rank * B;
        if (start < d->num_examples) {
            const int count = (int)(d->num_examples - start < B ? d->num_examples - start : B);
            for (int b = 0; b < count; b++) { idx[b] = start + b; }
            fill_batch(&batch, d, idx, count, args->max_len, args->truncation, args->regression);
            Batch inputs_only = batch; // no loss: the data may be unlabelled
            inputs_only.labels = NULL;
            inputs_only.targets = NULL;
            gpt2_forward(model, &inputs_only, 0.0f, NULL);
            memcpy(logits + (size_t)(start - first) * K, model->logits, (size_t)count * K * sizeof(float));
        }
        dp_merge_disjoint(logits, (size_t)round * K * sizeof(float));
        for (int64_t i = first; f != NULL && i < d->num_examples && i < first + round; i++) {
            const float *z = logits + (size_t)(i - first) * K;
            fprintf(f, "%lld,%d,%d", (long long)i, d->labels[i], predicted_class(z, K));
            if (K == 1) { fprintf(f, ",%.6f", z[0]); }
            else {
                float max_z = z[0];
                for (int k = 1; k < K; k++) { if (z[k] > max_z) { max_z = z[k]; } }
                double sum = 0.0;
                for (int k = 0; k < K; k++) { sum += exp(z[k] - max_z); }
                for (int k = 0; k < K; k++) { fprintf(f, ",%.6f", exp(z[k] - max_z) / sum); }
            }
            fprintf(f, "\n");
        }
    }
    batch_free(&batch);
    free(idx);
    free(logits);
    if (f != NULL) {
        int ok = flush_to_disk(f) == 0;
        ok = (fclose(f) == 0) && ok;
        if (!ok || replace_file(tmp_path, args->output_path) != 0) { remove(tmp_path); fail("writing %s failed: %s", args->output_path, strerror(errno)); }
    }
    free(tmp_path);
    printf("wrote predictions for %lld examples to %s\n", (long long)d->num_examples, args->output_path);
}

void print_eval(const char *tag, int step, const EvalResult *r) {
    printf("%s step %d: examples %lld loss %.4f accuracy %.4f\n", tag, step, (long long)r->examples, r->loss, r->accuracy);
}

// Fails at the start, not after hours of training, when --save PATH could
// not be written: PATH must be a regular file or not exist, and PATH.tmp
// must be creatable.
void check_save_path(const char *path) {
    const char *special = not_a_regular_file(path);
    if (special != NULL) { fail("--save %s: %s; give a file name", path, special); }
    char *tmp_path = path_with_suffix(path, ".tmp");
    FILE *f = fopen(tmp_path, "wb");
    if (f == NULL) { fail("--save %s: cannot create %s: %s", path, tmp_path, strerror(errno)); }
    fclose(f);
    remove(tmp_path);
    free(tmp_path);
}

// The save protocol: the parameters, the run's identity and the AdamW moments
// go into one file, PATH.tmp, which is flushed to disk and then renamed over
// PATH (write_file_atomically). A run killed at any moment leaves PATH as it
// was before the save or as it is after it, each loadable and resumable; at
// worst a stale PATH.tmp stays behind, which the next save overwrites.
void save_run(GPT2 *model, const char *path, const RunIdentity *run) {
    if (!dp_identical_on_all_ranks(model->params_memory, model->num_parameters)) {
        fail("step %d: the ranks' parameters differ (their gradient sums differed); not saving", model->step);
    }
    if (dp_rank != 0) { return; } // rank 0 alone writes
    if (model->m_memory == NULL) { fail("save_run: no optimizer state before the first update"); }
    int32_t header[HEADER_INTS];
    checkpoint_header(header, model);
    header[SFT_MOMENTS_SLOT] = 1;
    header[11] = run->total_steps; header[12] = run->batch_size; header[13] = run->grad_accum; header[14] = run->max_len;
    memcpy(header + 15, &run->dropout, 4);
    memcpy(header + 16, &run->seed, 8);
    const float *const arrays[3] = {model->params_memory, model->m_memory, model->v_memory};
    write_file_atomically(path, header, sizeof(header), arrays, 3, model->num_parameters);
    printf("saved %s (step %d)\n", path, model->step);
}

// What the training loop draws batches from: the examples of a labelled
// dataset (classification, regression), or the rows of a token stream (a
// language model), and what it evaluates on.
typedef struct {
    const Dataset *train_set, *test_set;     // or NULL
    const TokenStream *train_rows, *val_rows; // or NULL
} TrainingData;

void print_language_model_eval(const char *tag, int step, const LanguageModelEval *r) {
    printf("%s step %d: rows %lld loss %.4f perplexity %.2f\n", tag, step, (long long)r->rows, r->loss, r->perplexity);
}

// --time-budget: the number of updates that ends the run near `budget_s`
// seconds of updates, decided after `done` of them took `elapsed_s`, the
// last done-1 of them `timed_s` (the first update, which first touches the
// buffers, runs slower and is not used for the rate). Never fewer than done,
// never more than the planned steps.
int steps_within_budget(double budget_s, double elapsed_s, double timed_s, int done, int planned) {
    const double seconds_per_update = timed_s / (done > 1 ? done - 1 : 1);
    const double more = seconds_per_update > 0.0 ? floor((budget_s - elapsed_s) / seconds_per_update) : planned;
    if (more <= 0.0) { return done; }
    return more >= planned - done ? planned : done + (int)more;
}

// The update this run ends at: --stop-at-step's, if before the schedule's end.
int last_update_of_this_run(int stop_at_step, int total_steps) {
    return stop_at_step > 0 && stop_at_step < total_steps ? stop_at_step : total_steps;
}

// --time-budget, once the run has made its first TIME_BUDGET_TIMED_UPDATES
// updates (`done` counts the model's updates; update_seconds: the time of
// those updates, and of all but the first): the run, and the decay of its
// learning rate, end at the update the budget allows. Every rank decides
// from the ranks' mean times, so all of them fix the same length.
void fit_to_time_budget(OptimizerConfig *opt, RunIdentity *run, double update_seconds[2], int done, float minutes) {
    dp_sum_doubles(update_seconds, 2);
    const double elapsed = update_seconds[0] / dp_size, timed = update_seconds[1] / dp_size;
    const int first = done - TIME_BUDGET_TIMED_UPDATES, planned = opt->total_steps;
    opt->total_steps = first + steps_within_budget(60.0 * minutes, elapsed, timed, TIME_BUDGET_TIMED_UPDATES,
                                                   planned - first);
    run->total_steps = opt->total_steps;
    printf("time budget %g min: updates 2-%d took %.3f s each, so this run makes %d updates of the %d planned; "
           "--resume it with --max-steps %d\n", minutes, TIME_BUDGET_TIMED_UPDATES,
           timed / (TIME_BUDGET_TIMED_UPDATES - 1), opt->total_steps, planned, opt->total_steps);
}

// The training loop: epochs of length-grouped batches (or shuffled rows),
// gradient accumulation, clipping, AdamW with warmup and linear decay,
// periodic logs, evaluations and checkpoints. Returns 1 when the run is
// complete, 0 when --stop-at-step ended it early. Over MPI the data of a
// micro-step is a global batch of dp_size x B examples, B on each rank (see
// the MPI section).
int train(GPT2 *model, const TrainingData *data, Args *args) {
    const int B = args->batch_size, accum = args->grad_accum;
    const Dataset *train_set = data->train_set;
    const TokenStream *rows = data->train_rows;
    if ((int64_t)B * dp_size > 1 << 30) { fail("%d ranks x --batch-size %d is too large a batch", dp_size, B); }
    const int global_B = B * dp_size;
    const int64_t units = rows != NULL ? rows->num_rows : train_set->num_examples;
    const char *unit_name = rows != NULL ? "rows" : "examples";
    const int64_t batches_per_epoch = units / global_B;
    if (batches_per_epoch < accum) {
        fail("%s: %lld %s make fewer than --grad-accum %d batches of %d", args->train_path,
             (long long)units, unit_name, accum, global_B);
    }
    const int64_t steps_per_epoch = batches_per_epoch / accum;
    const int64_t planned = args->max_steps > 0 ? args->max_steps : steps_per_epoch * args->epochs;
    if (planned > 2147483647) { fail("--epochs %d make too many steps", args->epochs); }
    OptimizerConfig opt = args->opt;
    opt.total_steps = (int)planned;
    if (args->warmup_ratio > 0.0f && opt.warmup_steps == 0) { opt.warmup_steps = (int)ceil(args->warmup_ratio * planned); }
    RunIdentity run = {model->step, opt.total_steps, global_B, accum, args->max_len, args->dropout, args->seed};
    if (args->resume_path != NULL) { load_training_state(model, args->resume_path, &run, model->step); }
    if (rows != NULL) {
        printf("language model: %lld documents, %lld tokens with an <|endoftext|> before each, in %lld rows of %d "
               "(packed: no padding); validation: %lld rows\n", (long long)rows->num_docs,
               (long long)rows->doc_start[rows->num_docs], (long long)rows->num_rows, rows->T,
               (long long)data->val_rows->num_rows);
    }
    printf("training: %lld %s, %lld steps per epoch, %d steps, batch %d x %d accumulation, max-len %d, lr %g, warmup %d, dropout %g\n",
           (long long)units, unit_name, (long long)steps_per_epoch, opt.total_steps, B, accum,
           args->max_len, opt.learning_rate, opt.warmup_steps, args->dropout);
    if (dp_size > 1) {
        printf("data parallel: %d ranks x batch %d = %d examples per micro-step, x %d accumulation = %d per update; "
               "rank r takes examples r, r + %d, ..., r + %d of each; one allreduce of %zu gradients (%.1f MB) per update\n",
               dp_size, B, global_B, accum, global_B * accum, dp_size, (B - 1) * dp_size, model->num_parameters,
               model->num_parameters * 4.0 / 1e6);
    }

    int64_t *order = (int64_t *)malloc_or_die((size_t)units * sizeof(int64_t), "epoch order");
    int64_t *share = (int64_t *)malloc_or_die((size_t)B * sizeof(int64_t), "batch share");
    int order_epoch = -1;
    Batch batch = batch_alloc(B, args->max_len);
    gpt2_ensure_buffers(model, B, args->max_len); // evaluation uses the same batch shape
    const double start_time = seconds_now();
    double log_time = start_time, log_loss = 0.0, allreduce_seconds = 0.0;
    long log_tokens = 0, log_positions = 0, log_padding = 0;
    int log_batches = 0, start_step = model->step;
    int end_step = last_update_of_this_run(args->stop_at_step, opt.total_steps);
    if (model->step >= end_step) { printf("nothing to do: the model has had %d of %d updates\n", model->step, end_step); }
    double update_seconds[2] = {0.0, 0.0}; // --time-budget: all updates, and all but the first
    for (int step = model->step; step < end_step; step++) {
        const double update_start = seconds_now();
        for (int micro = 0; micro < accum; micro++) {
            // micro-batch number `global` of the whole run fixes the data: a
            // resumed run sees exactly the batches the original would have
            const int64_t global = (int64_t)step * accum + micro;
            const int epoch = (int)(global / (steps_per_epoch * accum));
            const int64_t index = global % (steps_per_epoch * accum);
            if (epoch != order_epoch) {
                if (rows != NULL) {
                    uint64_t state = epoch_seed(args->seed, epoch);
                    shuffled_indices(order, units, &state);
                } else {
                    epoch_order(order, train_set, global_B, args->max_len, args->seed, epoch);
                }
                order_epoch = epoch;
            }
            // this rank's share: examples dp_rank, dp_rank + N, ... of the global batch
            // (a batch is sorted by length: every rank gets long and short ones)
            for (int b = 0; b < B; b++) { share[b] = order[index * global_B + dp_rank + (int64_t)b * dp_size]; }
            long padding = 0;
            if (rows != NULL) { fill_rows(&batch, rows, share, B); }
            else { padding = fill_batch(&batch, train_set, share, B, args->max_len, args->truncation, args->regression); }
            Dropout dropout = dropout_for_pass(args->dropout, args->seed, (uint64_t)global);
            dropout.first_example = dp_rank; // masks follow the example's place in the global batch
            dropout.example_stride = dp_size;
            // the loss is the mean over all ranks' examples and the micro-steps
            gpt2_forward(model, &batch, 1.0f / (float)(accum * dp_size), &dropout);
            if (!isfinite(model->loss)) {
                fail("step %d: the loss is %f; stopping (the last saved checkpoint is unchanged; try a lower --lr)",
                     step + 1, model->loss);
            }
            gpt2_backward(model);
            log_loss += model->loss;
            log_batches++;
            log_positions += (long)batch.B * batch.T;
            log_padding += padding;
            log_tokens += (long)batch.B * batch.T - padding;
        }
        if (dp_size > 1) { // every rank gets the sum of the ranks' gradients
            const double t0 = seconds_now();
            dp_sum_floats(model->grads_memory, model->num_parameters);
            allreduce_seconds += seconds_now() - t0;
        }
        const float lr = learning_rate_at(&opt, step);
        const float norm = gpt2_update(model, &opt, step);
        if (!isfinite(norm)) {
            fail("step %d: the gradient of %s is NaN or infinite; stopping (the last saved checkpoint is unchanged; try a lower --lr)",
                 step + 1, first_nonfinite_gradient(model));
        }
        if (model->overflowed != NULL) {
            fail("step %d: the update made %s NaN or infinite; stopping (the last saved checkpoint is unchanged; try a lower --lr or --weight-decay)",
                 step + 1, model->overflowed);
        }
        model->step = step + 1;
        run.step = model->step;
        const int done = model->step;
        const double update_took = seconds_now() - update_start;
        update_seconds[0] += update_took;
        if (done > start_step + 1) { update_seconds[1] += update_took; }
        if (args->time_budget > 0.0f && done == start_step + TIME_BUDGET_TIMED_UPDATES && done < opt.total_steps) {
            fit_to_time_budget(&opt, &run, update_seconds, done, args->time_budget);
            end_step = last_update_of_this_run(args->stop_at_step, opt.total_steps);
        }
        if (done % args->log_every == 0 || done == end_step) {
            double totals[4] = {log_loss / dp_size, (double)log_tokens, (double)log_positions, (double)log_padding};
            dp_sum_doubles(totals, 4); // the mean loss and the token counts of all ranks
            log_loss = totals[0];
            log_tokens = (long)totals[1]; log_positions = (long)totals[2]; log_padding = (long)totals[3];
            const double now = seconds_now();
            const double elapsed = now - start_time;
            const double eta = elapsed / (done - start_step) * (opt.total_steps - done);
            char elapsed_s[32], eta_s[32];
            format_duration(elapsed_s, sizeof(elapsed_s), elapsed);
            format_duration(eta_s, sizeof(eta_s), eta);
            const int loss_digits = args->log_digits > 0 ? args->log_digits : 4;
            const int norm_digits = args->log_digits > 0 ? args->log_digits : 3;
            printf("step %5d/%d | epoch %.2f | loss %.*f | lr %.3e | grad norm %.*f | %.0f tok/s | padding %.1f%% | %s elapsed, ETA %s\n",
                   done, opt.total_steps, (double)done / steps_per_epoch, loss_digits, log_loss / log_batches, lr, norm_digits, norm,
                   log_tokens / (now - log_time), 100.0 * log_padding / (log_positions > 0 ? log_positions : 1),
                   elapsed_s, eta_s);
            fflush(stdout);
            log_time = now; log_loss = 0.0; log_tokens = 0; log_positions = 0; log_padding = 0; log_batches = 0;
        }
        if (args->eval_every > 0 && done % args->eval_every == 0 && done < end_step) {
            if (rows != NULL) {
                const LanguageModelEval r = evaluate_language_model(model, data->val_rows, args->eval_examples, B);
                print_language_model_eval("eval", done, &r);
            } else {
                EvalResult r = evaluate(model, data->test_set, args->eval_examples, B, args->max_len, args->truncation,
                                        args->regression, args->seed);
                print_eval("eval", done, &r);
                free(r.confusion);
            }
            fflush(stdout);
        }
        if (args->save_every > 0 && done % args->save_every == 0 && done < end_step) {
            save_run(model, args->save_path, &run);
        }
    }
    if (args->save_path != NULL && model->step > start_step) { save_run(model, args->save_path, &run); }
    if (dp_size > 1 && model->step > start_step) {
        printf("data parallel: %d ranks, gradient allreduce %.4f s per update (%d updates)\n", dp_size,
               allreduce_seconds / (model->step - start_step), model->step - start_step);
    }
    batch_free(&batch);
    free(order);
    free(share);
    return model->step >= opt.total_steps;
}

// The model a run starts from: the run it resumes, a new one (--init), or a
// checkpoint (-m). num_labels: the head wanted, 0 for a language model,
// LABELS_OF_FILE for whatever the checkpoint has.
void build_model(GPT2 *model, const Args *args, int num_labels) {
    if (args->resume_path != NULL) {
        gpt2_build_from_checkpoint(model, args->resume_path, num_labels, args->seed);
        printf("resuming %s at step %d\n", args->resume_path, model->step);
    } else if (args->init_depth > 0) {
        gpt2_build_from_scratch(model, args->init_depth, num_labels, args->max_len > 1024 ? args->max_len : 1024, args->seed);
        printf("model: new d%d from scratch\n", args->init_depth);
    } else {
        gpt2_build_from_checkpoint(model, args->model_path, num_labels, args->seed);
        model->step = 0; // a new run with its own schedule; --resume continues a saved run
        printf("model: %s\n", args->model_path);
    }
    const GPT2Config *cfg = &model->config;
    printf("config: layers %d, heads %d, channels %d, positions %d, vocabulary %d, %s %d, parameters %.2fM\n",
           cfg->num_layers, cfg->num_heads, cfg->channels, cfg->max_seq_len, cfg->vocab_size,
           is_language_model(cfg) ? "language model, labels" : "labels", cfg->num_labels, model->num_parameters / 1e6);
    if (args->regression && cfg->num_labels != 1) { fail("--task regression needs a model with one output, this one has %d", cfg->num_labels); }
}

// --max-len: 512 by default, or the model's positions when fewer.
void settle_max_len(Args *args, const GPT2Config *cfg) {
    if (args->max_len == 0) { args->max_len = cfg->max_seq_len < 512 ? cfg->max_seq_len : 512; }
    if (args->max_len > cfg->max_seq_len) {
        fail("--max-len %d exceeds the model's %d positions", args->max_len, cfg->max_seq_len);
    }
}

void finish(GPT2 *model) {
    gpt2_free(model);
    gemm_workspace_release();
}

// --task lm: pretraining on the texts of the --train datasets, each checked
// against the model's vocabulary. The last --val-docs documents of the last
// set are the validation stream, the rest the training stream.
int pretrain(Args *args) {
    Dataset sets[MAX_STREAM_SETS];
    const Dataset *set_list[MAX_STREAM_SETS];
    char *paths = (char *)malloc_or_die(strlen(args->train_path) + 1, "--train paths");
    strcpy(paths, args->train_path);
    int num_sets = 0;
    for (char *path = strtok(paths, ","); path != NULL; path = strtok(NULL, ",")) {
        if (num_sets == MAX_STREAM_SETS) { fail("--train: at most %d datasets", MAX_STREAM_SETS); }
        dataset_open(&sets[num_sets], path, 0);
        set_list[num_sets] = &sets[num_sets];
        num_sets++;
    }
    if (num_sets == 0) { fail("--train '%s' names no dataset", args->train_path); }
    GPT2 model;
    build_model(&model, args, 0);
    settle_max_len(args, &model.config);
    for (int k = 0; k < num_sets; k++) {
        if (sets[k].vocab_size != model.config.vocab_size) {
            fail("%s: tokenized for vocabulary size %d, the model has %d", sets[k].path, sets[k].vocab_size, model.config.vocab_size);
        }
    }
    const Dataset *last = &sets[num_sets - 1];
    if (args->val_docs >= last->num_examples) {
        fail("--val-docs %d: %s has only %lld documents to hold them out of", args->val_docs, last->path, (long long)last->num_examples);
    }
    TokenStream train_rows, val_rows;
    int64_t all_docs = 0;
    for (int k = 0; k < num_sets; k++) { all_docs += sets[k].num_examples; }
    token_stream_open(&train_rows, set_list, num_sets, 0, all_docs - args->val_docs, args->max_len);
    token_stream_open(&val_rows, set_list, num_sets, all_docs - args->val_docs, args->val_docs, args->max_len);
    double *unigram = NULL;
    if (args->sampled_softmax) {
        unigram = (double *)malloc_or_die((size_t)model.config.vocab_size * sizeof(double), "token frequencies");
        token_frequencies(&train_rows, unigram, model.config.vocab_size);
        model.sampled_softmax = 1;
        model.unigram = unigram;
        printf("sampled softmax: over each batch's distinct next tokens, logits corrected by -log q\n");
    }
    if (args->save_path == NULL) { printf("note: no --save PATH, so the pretrained model is not kept\n"); }
    if (args->save_path != NULL && dp_rank == 0) { check_save_path(args->save_path); }
    const TrainingData data = {NULL, NULL, &train_rows, &val_rows};
    if (train(&model, &data, args)) {
        const LanguageModelEval r = evaluate_language_model(&model, &val_rows, 0, args->batch_size);
        printf("final eval: rows %lld loss %.4f perplexity %.2f\n", (long long)r.rows, r.loss, r.perplexity);
    } else {
        printf("stopped at step %d as asked (--stop-at-step); continue with --resume\n", model.step);
    }
    token_stream_free(&train_rows);
    token_stream_free(&val_rows);
    for (int k = 0; k < num_sets; k++) { dataset_close(&sets[k]); }
    free(paths);
    free(unigram);
    finish(&model);
    return 0;
}

// --predict: the classifier's predictions for a dataset, in a CSV file.
int predict(Args *args) {
    GPT2 model;
    build_model(&model, args, args->regression ? 1 : (args->num_labels ? args->num_labels : LABELS_OF_FILE));
    settle_max_len(args, &model.config);
    Dataset d;
    dataset_open(&d, args->predict_path, model.config.vocab_size);
    write_predictions(&model, &d, args);
    dataset_close(&d);
    finish(&model);
    return 0;
}

// Fine-tuning (or training from scratch) a classifier or regressor on a
// labelled dataset, then its evaluation on the test set.
int fine_tune(Args *args) {
    Dataset train_set, test_set;
    dataset_open(&train_set, args->train_path, 0); // its vocabulary is checked against the model below
    const int data_labels = train_set.num_labels;
    if (!args->regression && data_labels < 2) {
        fail("%s: the data has %d labels; classification needs labelled data", args->train_path, data_labels);
    }
    const int num_labels = args->regression ? 1 : (args->num_labels ? args->num_labels : data_labels);
    if (!args->regression && num_labels < data_labels) {
        fail("--num-labels %d is smaller than the %d labels of %s", num_labels, data_labels, args->train_path);
    }
    GPT2 model;
    build_model(&model, args, num_labels);
    const GPT2Config *cfg = &model.config;
    settle_max_len(args, cfg);
    dataset_open(&test_set, args->test_path, cfg->vocab_size);
    if (!args->regression && (test_set.num_labels < 1 || test_set.num_labels > cfg->num_labels)) {
        fail("%s: the data has %d labels; evaluating needs labels 0..%d of the model", args->test_path,
             test_set.num_labels, cfg->num_labels - 1);
    }
    if (train_set.vocab_size != cfg->vocab_size) {
        fail("%s: tokenized for vocabulary size %d, the model has %d", args->train_path, train_set.vocab_size, cfg->vocab_size);
    }
    if (args->regression) {
        const Dataset *sets[2] = {&train_set, &test_set};
        for (int i = 0; i < 2; i++) {
            const int64_t unrated = first_unrated_example(sets[i]);
            if (unrated >= 0) {
                fail("%s: example %lld has no star rating; --task regression needs rated examples", sets[i]->path, (long long)unrated);
            }
        }
    }
    if (args->save_path != NULL && dp_rank == 0) { check_save_path(args->save_path); }
    const TrainingData data = {&train_set, &test_set, NULL, NULL};
    if (train(&model, &data, args)) {
        EvalResult r = evaluate(&model, &test_set, 0, args->batch_size, args->max_len, args->truncation, args->regression, args->seed);
        print_eval_details(&r);
        printf("final eval: examples %lld loss %.4f accuracy %.4f\n", (long long)r.examples, r.loss, r.accuracy);
        free(r.confusion);
    } else {
        printf("stopped at step %d as asked (--stop-at-step); continue with --resume\n", model.step);
    }
    dataset_close(&train_set);
    dataset_close(&test_set);
    finish(&model);
    return 0;
}

#ifndef TESTING
int main(int argc, char **argv) {
    dp_init(&argc, &argv);
    Args args;
    parse_args(&args, argc, argv);
#ifdef _OPENMP
    if (args.threads > 0) { omp_set_num_threads(args.threads); }
    printf("OpenMP threads: %d\n", omp_get_max_threads());
#else
    if (args.threads > 1) { fprintf(stderr, "warning: built without OpenMP; --threads ignored\n"); }
#endif
    printf("matmul kernel: %s, tile %dx%d\n", GEMM_KERNEL_NAME, GEMM_MR, GEMM_NR);
    if (args.language_model) { return pretrain(&args); }
    if (args.predict_path != NULL) { return predict(&args); }
    return fine_tune(&args);
}
#endif
