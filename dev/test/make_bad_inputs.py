#!/usr/bin/env python3
"""
make_bad_inputs.py: builds a corpus of bad inputs for train_gpt2_sft.

Starting from small valid files written here from the formats in
dev/FORMATS.md (a tiny llm.c checkpoint, a fine-tuned checkpoint, a small
tokenized dataset), it writes truncated, corrupted and inconsistent variants,
and a manifest of cases: the command line of each run and the text its one
`error:` line must contain.

    python3 dev/test/make_bad_inputs.py [--out-dir build/bad_inputs]

Standard library only. The case list is also importable (build_corpus), which
is how dev/test/test_bad_inputs.py uses it; dev/fuzz/run_fuzz.sh takes its
seed corpora from --fuzz-seeds DIR.
"""

import argparse
import array
import json
import math
import os
import random
import shutil
import struct
import sys

LLMC_MAGIC, LLMC_VERSION = 20240326, 3
SFT_MAGIC, SFT_VERSION = 20261128, 1
DATA_MAGIC, DATA_VERSION = 20261127, 1
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
DATA_HEADER_BYTES = 1024
VOCAB, PADDED_VOCAB = 50257, 50304

TENSOR_NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "score"]


# ----------------------------------------------------------------------------
# Valid files, written from the formats

class Config:
    def __init__(self, L=1, H=1, C=8, max_t=16, vocab=VOCAB, padded=PADDED_VOCAB):
        self.L, self.H, self.C, self.max_t, self.vocab, self.padded = L, H, C, max_t, vocab, padded

    def slots(self):
        """Header slots [2..7]."""
        return [self.max_t, self.vocab, self.L, self.H, self.C, self.padded]


def tensor_sizes(cfg, num_labels=0):
    """Element counts of the tensors in file order (score last, when num_labels > 0)."""
    L, C = cfg.L, cfg.C
    sizes = [cfg.padded * C, cfg.max_t * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
             L * C * C, L * C, L * C, L * C, L * 4 * C * C, L * 4 * C, L * 4 * C * C, L * C, C, C]
    if num_labels > 0:
        sizes.append(num_labels * C)
    return sizes


def tensor_offset(cfg, name, num_labels=0):
    """Byte offset of tensor `name` in a checkpoint file."""
    sizes = tensor_sizes(cfg, num_labels)
    return HEADER_BYTES + 4 * sum(sizes[:TENSOR_NAMES.index(name)])


def float_bytes(values):
    a = array.array("f", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def header_bytes(ints):
    ints = list(ints) + [0] * (HEADER_INTS - len(ints))
    return struct.pack("<%di" % HEADER_INTS, *ints)


def random_parameters(cfg, num_labels, seed):
    """GPT-2 style initialisation: matrices and embeddings small random, LayerNorm
    weights 1, biases 0, padding rows of wte 0. Uniform instead of normal
    (cheaper in pure Python); the trainer does not care."""
    rng = random.Random(seed)
    sizes = tensor_sizes(cfg, num_labels)
    decayed = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw", "score"}
    out = []
    for name, n in zip(TENSOR_NAMES, sizes):
        if name == "wte":
            live = cfg.vocab * cfg.C
            out.append(float_bytes([rng.uniform(-0.035, 0.035) for _ in range(live)]))
            out.append(bytes(4 * (n - live)))
        elif name in decayed:
            out.append(float_bytes([rng.uniform(-0.035, 0.035) for _ in range(n)]))
        elif name in ("ln1w", "ln2w", "lnfw"):
            out.append(float_bytes([1.0] * n))
        else:
            out.append(bytes(4 * n))
    return b"".join(out)


def llmc_checkpoint(cfg, seed=1):
    return header_bytes([LLMC_MAGIC, LLMC_VERSION] + cfg.slots()) + random_parameters(cfg, 0, seed)


def sft_checkpoint(cfg, num_labels=2, step=0, seed=1):
    return (header_bytes([SFT_MAGIC, SFT_VERSION] + cfg.slots() + [num_labels, step]) +
            random_parameters(cfg, num_labels, seed))


def dataset_bytes(examples, num_labels=2, vocab=VOCAB):
    """examples: list of (tokens, label, stars). Format: FORMATS.md section 3."""
    n = len(examples)
    offsets, lengths, labels, stars, tokens = [], [], [], [], []
    for toks, label, star in examples:
        offsets.append(len(tokens))
        lengths.append(len(toks))
        labels.append(label)
        stars.append(star)
        tokens.extend(toks)
    head = struct.pack("<iiiiqq", DATA_MAGIC, DATA_VERSION, num_labels, vocab, n, len(tokens))
    head += bytes(DATA_HEADER_BYTES - len(head))
    return (head + struct.pack("<%dq" % n, *offsets) + struct.pack("<%di" % n, *lengths) +
            struct.pack("<%di" % n, *labels) + struct.pack("<%di" % n, *stars) +
            struct.pack("<%dH" % len(tokens), *tokens))


def toy_examples(n, seed):
    """Examples (tokens, label, stars) of a learnable task, for the CLI and MPI
    tests: label 1 iff token 1000 appears more often than 2000."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 40)
        label = rng.randrange(2)
        toks = [rng.randrange(3000, 50257) for _ in range(length)]
        for _ in range(rng.randint(1, 3)):
            toks[rng.randrange(length)] = 1000 if label else 2000
        out.append((toks, label, 8 if label else 2))
    return out


def good_examples(n=8, seed=2, max_len=24, num_labels=2):
    """n examples of 1..max_len tokens (some longer than the tiny model's 16
    positions, so truncation runs), labels cycling through the classes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = 1 if i == 0 else rng.randint(2, max_len)
        toks = [rng.randrange(VOCAB) for _ in range(length)]
        if i == 1:
            toks[-1] = VOCAB - 1  # the largest valid id
        label = i % num_labels if num_labels > 0 else -1
        out.append((toks, label, rng.randint(1, 10)))
    return out


# Byte positions inside a dataset with n examples.
def ds_offset_pos(n, i): return DATA_HEADER_BYTES + 8 * i
def ds_length_pos(n, i): return DATA_HEADER_BYTES + 8 * n + 4 * i
def ds_label_pos(n, i): return DATA_HEADER_BYTES + 12 * n + 4 * i
def ds_stars_pos(n, i): return DATA_HEADER_BYTES + 16 * n + 4 * i
def ds_token_pos(n, j): return DATA_HEADER_BYTES + 20 * n + 2 * j


def read_i32(path, pos):
    """The little-endian int32 at byte pos of a file (a header slot), or None
    when the file is missing or shorter."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read(4)
    except OSError:
        return None
    return struct.unpack("<i", data)[0] if len(data) == 4 else None


def patched(data, pos, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def saved_run(cfg, step, total_steps, batch_size, grad_accum, max_len, seed, dropout=0.1, num_labels=2):
    """A checkpoint as `--save` writes it (FORMATS.md section 2): the run's
    identity in header[10..17] and zero AdamW moments after the parameters."""
    ints = [SFT_MAGIC, SFT_VERSION] + cfg.slots() + [num_labels, step, 1, total_steps, batch_size, grad_accum, max_len]
    head = bytearray(header_bytes(ints))
    struct.pack_into("<f", head, 60, dropout)
    struct.pack_into("<Q", head, 64, seed)
    return bytes(head) + random_parameters(cfg, num_labels, 1) + bytes(8 * sum(tensor_sizes(cfg, num_labels)))


# ----------------------------------------------------------------------------
# The corpus

def build_corpus(out_dir):
    """Writes every file into out_dir (emptied first) and returns the list of
    cases. Paths in the cases are relative to out_dir, where the runs happen.

    A case: {"name", "args", "expect": substring of the error line,
             "kind": "error" | "ok" | "nonfinite" | "nonfinite_or_ok" (see test_bad_inputs.py),
             optional "setup": files to copy before the run {dst: src},
             optional "keep": a file whose bytes must be unchanged by the run,
             optional "then": further argument lists run after an "ok" run,
             optional "saved" (and "save_every"): the --save checkpoint to check after the run,
             optional "saved_step": [checkpoint, the step it must hold],
             optional "timeout": seconds for this run (for inputs that could block)}."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    def write(name, data):
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        return name

    tiny = Config()                       # L=1 H=1 C=8 maxT=16
    tiny_1024 = Config(max_t=1024)        # the same with GPT-2's 1024 positions
    good_ckpt = llmc_checkpoint(tiny)
    write("tiny.bin", good_ckpt)
    write("tiny1024.bin", llmc_checkpoint(tiny_1024))
    good_sft = sft_checkpoint(tiny, num_labels=2, step=0)
    write("tiny_sft.bin", good_sft)
    write("tiny_sft3.bin", sft_checkpoint(tiny, num_labels=3, step=0))
    write("tiny_sft_reg.bin", sft_checkpoint(tiny, num_labels=1, step=0))
    examples = good_examples()
    good = dataset_bytes(examples)
    n = len(examples)
    write("good.bin", good)
    write("unlabelled.bin", dataset_bytes(good_examples(num_labels=0), num_labels=0))
    write("good3.bin", dataset_bytes(good_examples(num_labels=3), num_labels=3))
    write("one_example.bin", dataset_bytes(examples[:1]))
    os.makedirs(os.path.join(out_dir, "a_directory"))

    cases = []

    def train_args(model="tiny.bin", train="good.bin", test="good.bin", extra=()):
        return (["-m", model, "--train", train, "--test", test, "--max-steps", "2",
                 "--batch-size", "2", "--max-len", "16", "--eval-examples", "4", "--threads", "1"] +
                list(extra))

    def error(name, args, expect, **kw):
        case = {"name": name, "args": args, "expect": expect, "kind": "error"}
        case.update(kw)
        cases.append(case)

    # --- the valid runs: the corpus itself must be sane -------------------------
    cases.append({"name": "valid_train", "kind": "ok",
                  "args": ["-m", "tiny.bin", "--train", "good.bin", "--test", "good.bin", "--max-steps", "2",
                           "--batch-size", "2", "--max-len", "16", "--eval-examples", "4"]})
    cases.append({"name": "valid_train_save_predict", "kind": "ok",
                  "args": train_args(extra=["--save", "valid_out.bin", "--save-every", "1", "--truncation", "head+tail"]),
                  "then": [["--predict", "good.bin", "--output", "valid_out.csv", "-m", "valid_out.bin",
                            "--max-len", "16", "--threads", "1"],
                           # the saved run is complete: --resume loads and checks the state, has no step left
                           ["--train", "good.bin", "--test", "good.bin", "--max-steps", "2",
                            "--batch-size", "2", "--max-len", "16", "--eval-examples", "4", "--threads", "1",
                            "--resume", "valid_out.bin", "--truncation", "head+tail"]]})
    cases.append({"name": "valid_fine_tuned_checkpoint", "kind": "ok", "args": train_args(model="tiny_sft.bin")})
    cases.append({"name": "valid_regression", "kind": "ok",
                  "args": train_args(model="tiny_sft_reg.bin", extra=["--task", "regression"])})
    # -m with a fine-tuned checkpoint starts a new run (--resume continues one):
    # its own schedule from step 0, and the --save file is written
    write("tiny_sft_step5.bin", sft_checkpoint(tiny, num_labels=2, step=5))
    cases.append({"name": "valid_train_from_fine_tuned_step5", "kind": "ok",
                  "args": train_args(model="tiny_sft_step5.bin", extra=["--save", "ft_out.bin"]),
                  "saved_step": ["ft_out.bin", 2]})
    # a model with a smaller vocabulary than GPT-2's (valid: up to 65536) and
    # data tokenized for it; sequences of different lengths, so there is padding
    write("tiny_vocab100.bin", sft_checkpoint(Config(vocab=100, padded=128), num_labels=2))
    write("data_vocab100.bin", dataset_bytes([([1, 2, 3], 0, 1), ([5], 1, 2), ([7, 8], 0, 3)], vocab=100))
    cases.append({"name": "valid_predict_small_vocab", "kind": "ok",
                  "args": ["--predict", "data_vocab100.bin", "--output", "v100.csv", "-m", "tiny_vocab100.bin",
                           "--max-len", "16", "--batch-size", "3", "--threads", "1"]})
    cases.append({"name": "valid_predict_unlabelled", "kind": "ok",
                  "args": ["--predict", "unlabelled.bin", "--output", "valid_pred.csv", "-m", "tiny_sft.bin",
                           "--max-len", "16", "--threads", "1"]})

    # --- checkpoints ------------------------------------------------------------
    ck = []  # (name, bytes, expected substring beyond the file name)
    ck.append(("ckpt_empty", b""))
    ck.append(("ckpt_1_byte", b"\x00"))
    ck.append(("ckpt_header_truncated", good_ckpt[:HEADER_BYTES - 1]))
    ck.append(("ckpt_header_only", good_ckpt[:HEADER_BYTES]))
    ck.append(("ckpt_truncated_half", good_ckpt[:len(good_ckpt) // 2]))
    ck.append(("ckpt_truncated_4", good_ckpt[:-4]))
    ck.append(("ckpt_truncated_1", good_ckpt[:-1]))
    ck.append(("ckpt_extra_4", good_ckpt + bytes(4)))
    ck.append(("ckpt_extra_3", good_ckpt + bytes(3)))
    ck.append(("sft_truncated_head", good_sft[:-4]))
    ck.append(("sft_without_head", header_bytes([SFT_MAGIC, SFT_VERSION] + tiny.slots() + [2, 0]) +
               good_ckpt[HEADER_BYTES:]))
    ck.append(("ckpt_all_ff", b"\xff" * len(good_ckpt)))
    ck.append(("ckpt_bad_magic", patched(good_ckpt, 0, "<i", 20240325)))
    ck.append(("ckpt_dataset_magic", patched(good_ckpt, 0, "<i", DATA_MAGIC)))
    ck.append(("ckpt_version_1", patched(good_ckpt, 4, "<i", 1)))
    ck.append(("ckpt_version_5", patched(good_ckpt, 4, "<i", 5)))
    ck.append(("sft_version_2", patched(good_sft, 4, "<i", 2)))
    ck.append(("sft_version_0", patched(good_sft, 4, "<i", 0)))
    slot = {"max_t": 8, "vocab": 12, "L": 16, "H": 20, "C": 24, "padded": 28}
    for field, value in [("max_t", 0), ("max_t", -1), ("max_t", 17), ("max_t", 15), ("max_t", 1 << 21),
                         ("vocab", 0), ("vocab", -5), ("vocab", 50304 + 1), ("vocab", 70000),
                         ("padded", 50257 - 1), ("padded", 50432), ("padded", 1 << 30), ("padded", -1),
                         ("L", 0), ("L", -1), ("L", 2), ("L", 1001), ("L", 2 ** 31 - 1),
                         ("H", 0), ("H", -1), ("H", 3), ("H", 16), ("H", 9),
                         ("C", 0), ("C", -8), ("C", 16), ("C", 65536 * 2), ("C", 2 ** 31 - 1)]:
        ck.append(("ckpt_%s_%s" % (field, str(value).replace("-", "minus")), patched(good_ckpt, slot[field], "<i", value)))
    # a header describing a large, valid-looking model on a small file: must be
    # refused from the size, before any allocation
    big = bytearray(good_ckpt[:HEADER_BYTES])
    struct.pack_into("<6i", big, 8, 1 << 20, 65536, 1000, 64, 65536, 1 << 24)
    ck.append(("ckpt_huge_config_small_file", bytes(big) + bytes(4096)))
    # fine-tuned checkpoint head / step fields
    ck.append(("sft_num_labels_0", patched(good_sft, 32, "<i", 0)))
    ck.append(("sft_num_labels_minus1", patched(good_sft, 32, "<i", -1)))
    ck.append(("sft_num_labels_huge", patched(good_sft, 32, "<i", 1 << 30)))
    ck.append(("sft_num_labels_65537", patched(good_sft, 32, "<i", 65537)))
    ck.append(("sft_num_labels_3_in_2_file", patched(good_sft, 32, "<i", 3)))
    ck.append(("sft_negative_step", patched(good_sft, 36, "<i", -1)))
    # header[10]: whether the AdamW moments follow the parameters (a --save file)
    ck.append(("sft_moments_flag_minus1", patched(good_sft, 40, "<i", -1)))
    ck.append(("sft_moments_flag_without_moments", patched(good_sft, 40, "<i", 1)))
    ck.append(("sft_moments_without_flag", good_sft + bytes(8 * sum(tensor_sizes(tiny, 2)))))
    # non-finite parameters
    for name, value in [("wte", float("nan")), ("wpe", float("inf")), ("qkvw", float("-inf")),
                        ("lnfb", float("nan"))]:
        off = tensor_offset(tiny, name) + (4 * 8 * 5 if name == "wte" else 0)
        ck.append(("ckpt_%s_in_%s" % ("nan" if math.isnan(value) else "inf", name),
                   patched(good_ckpt, off, "<f", value)))
    ck.append(("sft_nan_in_score", patched(good_sft, tensor_offset(tiny, "score", 2) + 4, "<f", float("nan"))))
    # padding rows of wte are never looked up, but a NaN there is still corrupt
    ck.append(("ckpt_nan_in_wte_padding", patched(good_ckpt, tensor_offset(tiny, "wte") + 4 * 8 * (VOCAB + 3), "<f", float("nan"))))
    corrupt = bytearray(good_ckpt)
    rng = random.Random(7)
    pos = tensor_offset(tiny, "qkvw")
    corrupt[pos:pos + 4096] = bytes(rng.randrange(256) for _ in range(4096))
    struct.pack_into("<I", corrupt, pos + 100, 0x7FC00001)  # at least one NaN whatever the random bytes
    ck.append(("ckpt_random_bytes_in_params", bytes(corrupt)))
    for name, data in ck:
        fname = write(name + ".bin", data)
        error(name, train_args(model=fname), fname)
    # a valid checkpoint with a smaller vocabulary: the data does not fit it
    write("tiny_vocab_50256.bin", llmc_checkpoint(Config(vocab=50256)))
    error("ckpt_vocab_smaller_than_data", train_args(model="tiny_vocab_50256.bin"), "good.bin")
    # requested labels do not fit the fine-tuned head
    error("sft_labels_vs_num_labels_flag", train_args(model="tiny_sft.bin", extra=["--num-labels", "3"]), "tiny_sft.bin")
    error("sft_labels_vs_data_labels", train_args(model="tiny_sft.bin", train="good3.bin", test="good3.bin"), "tiny_sft.bin")
    error("ckpt_is_directory", train_args(model="a_directory"), "a_directory")
    error("ckpt_missing", train_args(model="no_such_file.bin"), "no_such_file.bin")
    error("ckpt_is_a_dataset", train_args(model="good.bin"), "good.bin")
    error("predict_with_bad_checkpoint", ["--predict", "good.bin", "--output", "x.csv", "-m", "ckpt_truncated_4.bin"],
          "ckpt_truncated_4.bin")
    error("regression_with_2_label_model", train_args(model="tiny_sft.bin", extra=["--task", "regression"]), "tiny_sft.bin")

    # --- datasets ---------------------------------------------------------------
    ds = []
    ds.append(("data_empty_file", b""))
    ds.append(("data_header_truncated", good[:DATA_HEADER_BYTES - 1]))
    ds.append(("data_header_only", good[:DATA_HEADER_BYTES]))
    ds.append(("data_truncated_1", good[:-1]))
    ds.append(("data_truncated_2", good[:-2]))
    ds.append(("data_truncated_arrays", good[:DATA_HEADER_BYTES + 10 * n]))
    ds.append(("data_extra_2", good + bytes(2)))
    ds.append(("data_bad_magic", patched(good, 0, "<i", DATA_MAGIC + 1)))
    ds.append(("data_checkpoint_magic", patched(good, 0, "<i", LLMC_MAGIC)))
    ds.append(("data_version_2", patched(good, 4, "<i", 2)))
    ds.append(("data_version_0", patched(good, 4, "<i", 0)))
    ds.append(("data_num_labels_minus1", patched(good, 8, "<i", -1)))
    ds.append(("data_num_labels_huge", patched(good, 8, "<i", 1 << 30)))
    ds.append(("data_vocab_50304", patched(good, 12, "<i", 50304)))
    ds.append(("data_vocab_100", patched(good, 12, "<i", 100)))
    ds.append(("data_vocab_0", patched(good, 12, "<i", 0)))
    ds.append(("data_zero_examples", dataset_bytes([])))
    ds.append(("data_zero_examples_in_header", patched(good, 16, "<q", 0)))
    ds.append(("data_negative_examples", patched(good, 16, "<q", -1)))
    ds.append(("data_huge_examples", patched(good, 16, "<q", 1 << 62)))
    ds.append(("data_int64_max_examples", patched(good, 16, "<q", 2 ** 63 - 1)))
    # found by dev/fuzz/fuzz_dataset.c: 20 * num_examples overflowed in the error message
    ds.append(("data_fuzz_examples_2pow59", patched(good, 16, "<q", 2 ** 59 - 1)))
    ds.append(("data_examples_plus_1", patched(good, 16, "<q", n + 1)))
    ds.append(("data_negative_tokens", patched(good, 24, "<q", -2)))
    ds.append(("data_huge_tokens", patched(good, 24, "<q", 1 << 62)))
    ds.append(("data_tokens_plus_1", patched(good, 24, "<q", sum(len(e[0]) for e in examples) + 1)))
    total = sum(len(e[0]) for e in examples)
    # same total size, but the examples/tokens split moved: 20 bytes = 10 tokens
    ds.append(("data_examples_tokens_traded", patched(patched(good, 16, "<q", n - 1), 24, "<q", total + 10)))
    ds.append(("data_token_50257", patched(good, ds_token_pos(n, 3), "<H", VOCAB)))
    ds.append(("data_token_65535", patched(good, ds_token_pos(n, total - 1), "<H", 65535)))
    ds.append(("data_label_2", patched(good, ds_label_pos(n, 2), "<i", 2)))
    ds.append(("data_label_minus1", patched(good, ds_label_pos(n, 0), "<i", -1)))
    ds.append(("data_label_int_min", patched(good, ds_label_pos(n, n - 1), "<i", -2 ** 31)))
    ds.append(("data_unlabelled_with_label", patched(dataset_bytes(good_examples(num_labels=0), num_labels=0),
                                                      ds_label_pos(n, 1), "<i", 0)))
    # star ratings are 0..10 (0: unrated); --task regression trains on them
    ds.append(("data_stars_11", patched(good, ds_stars_pos(n, 3), "<i", 11)))
    ds.append(("data_stars_minus1", patched(good, ds_stars_pos(n, 0), "<i", -1)))
    ds.append(("data_stars_int_max", patched(good, ds_stars_pos(n, n - 1), "<i", 2 ** 31 - 1)))
    ds.append(("data_length_0", patched(good, ds_length_pos(n, 0), "<i", 0)))
    ds.append(("data_length_negative", patched(good, ds_length_pos(n, 2), "<i", -3)))
    ds.append(("data_length_past_end", patched(good, ds_length_pos(n, n - 1), "<i", 1000)))
    ds.append(("data_length_int_max", patched(good, ds_length_pos(n, n - 1), "<i", 2 ** 31 - 1)))
    ds.append(("data_offset_past_end", patched(good, ds_offset_pos(n, n - 1), "<q", 10 ** 6)))
    ds.append(("data_offset_negative", patched(good, ds_offset_pos(n, 3), "<q", -1)))
    ds.append(("data_offset_int64_max", patched(good, ds_offset_pos(n, 1), "<q", 2 ** 63 - 1)))
    ds.append(("data_offset_first_nonzero", patched(good, ds_offset_pos(n, 0), "<q", 1)))
    # lengths that do not add up to num_tokens
    short = patched(good, ds_length_pos(n, n - 1), "<i", len(examples[-1][0]) - 1)
    ds.append(("data_lengths_short_of_tokens", short))
    # an example of length 0 with consistent offsets (the next starts where it would have)
    zl = [(list(e[0]), e[1], e[2]) for e in examples]
    blob = bytearray(dataset_bytes(zl))
    struct.pack_into("<i", blob, ds_length_pos(n, 4), 0)
    for i in range(5, n):
        struct.pack_into("<q", blob, ds_offset_pos(n, i), sum(len(e[0]) for e in zl[:i]) - len(zl[4][0]))
    ds.append(("data_zero_length_consistent", bytes(blob)))
    for name, data in ds:
        fname = write(name + ".bin", data)
        error(name + "_as_train", train_args(train=fname), fname)
    for name in ["data_empty_file", "data_truncated_1", "data_bad_magic", "data_token_50257", "data_label_2",
                 "data_length_0", "data_offset_past_end", "data_zero_examples", "data_vocab_100",
                 "data_huge_examples", "data_lengths_short_of_tokens"]:
        error(name + "_as_test", train_args(test=name + ".bin"), name + ".bin")
        error(name + "_as_predict", ["--predict", name + ".bin", "--output", "p.csv", "-m", "tiny_sft.bin",
                                     "--max-len", "16", "--threads", "1"], name + ".bin")
    error("data_stars_int_max_regression", train_args(model="tiny_sft_reg.bin", train="data_stars_int_max.bin",
                                                      extra=["--task", "regression"]), "data_stars_int_max.bin")
    error("data_unlabelled_as_train", train_args(train="unlabelled.bin"), "unlabelled.bin")
    error("data_too_few_examples", train_args(train="one_example.bin"), "one_example.bin")
    # evaluation data whose labels the model cannot have: must be refused, naming the file
    error("test_labels_beyond_model", train_args(test="good3.bin"), "good3.bin")
    error("test_unlabelled_for_classification", train_args(test="unlabelled.bin"), "unlabelled.bin")
    error("train_is_directory", train_args(train="a_directory"), "a_directory")
    error("test_is_directory", train_args(test="a_directory"), "a_directory")
    error("predict_is_directory", ["--predict", "a_directory", "--output", "p.csv", "-m", "tiny_sft.bin", "--max-len", "16"],
          "a_directory")
    # anything but a regular file is refused before it is opened: /dev/null
    # (a device) used to be reported as "Is a directory", and opening a FIFO
    # for reading blocked until a writer came (hence the short timeout)
    special = "not a regular file"
    error("train_dev_null", train_args(train="/dev/null"), "/dev/null: " + special)
    error("test_dev_null", train_args(test="/dev/null"), "/dev/null: " + special)
    error("predict_dev_null", ["--predict", "/dev/null", "--output", "p.csv", "-m", "tiny_sft.bin", "--max-len", "16"],
          "/dev/null: " + special)
    error("ckpt_dev_null", train_args(model="/dev/null"), "/dev/null: " + special)
    error("resume_dev_null", train_args(extra=["--resume", "/dev/null"]), "/dev/null: " + special)
    if hasattr(os, "mkfifo"):
        os.mkfifo(os.path.join(out_dir, "a_fifo"))
        error("train_fifo", train_args(train="a_fifo"), "a_fifo: " + special, timeout=30)
        error("predict_fifo", ["--predict", "a_fifo", "--output", "p.csv", "-m", "tiny_sft.bin", "--max-len", "16"],
              "a_fifo: " + special, timeout=30)
        error("ckpt_fifo", train_args(model="a_fifo"), "a_fifo: " + special, timeout=30)
        # written files replace the path by a rename: never a FIFO or device
        # (/dev/null itself is not tried: an unchecked rename as root would replace it)
        error("save_onto_fifo", train_args(extra=["--save", "a_fifo"]), "--save a_fifo: " + special, timeout=30)
        error("output_onto_fifo", ["--predict", "good.bin", "--output", "a_fifo", "-m", "tiny_sft.bin",
                                   "--max-len", "16"], "--output a_fifo: " + special, timeout=30)
    error("train_missing", train_args(train="no_such_data.bin"), "no_such_data.bin")
    error("test_missing", train_args(test="no_such_data.bin"), "no_such_data.bin")
    error("predict_missing", ["--predict", "no_such_data.bin", "--output", "p.csv", "-m", "tiny_sft.bin", "--max-len", "16"],
          "no_such_data.bin")

    # --- output paths -----------------------------------------------------------
    error("save_into_missing_directory", train_args(extra=["--save", "no_such_dir/out.bin"]), "no_such_dir/out.bin")
    error("save_onto_directory", train_args(extra=["--save", "a_directory"]), "a_directory")
    # regression needs star ratings; unrated examples (stars 0) are refused before training
    write("unrated.bin", dataset_bytes([(t, l, 0) for t, l, _ in good_examples()]))
    error("regression_unrated_train", train_args(model="tiny_sft_reg.bin", train="unrated.bin",
                                                 extra=["--task", "regression"]), "unrated.bin")
    error("regression_unrated_test", train_args(model="tiny_sft_reg.bin", test="unrated.bin",
                                                extra=["--task", "regression"]), "unrated.bin")
    # training data tokenized for another vocabulary than the model's (the test data fits)
    error("train_vocab_differs_from_model", train_args(train="data_vocab100.bin"), "data_vocab100.bin")
    error("output_into_missing_directory", ["--predict", "good.bin", "--output", "no_such_dir/p.csv", "-m", "tiny_sft.bin",
                                            "--max-len", "16"], "no_such_dir/p.csv")
    error("output_onto_directory", ["--predict", "good.bin", "--output", "a_directory", "-m", "tiny_sft.bin",
                                    "--max-len", "16"], "a_directory")

    # --- resume -----------------------------------------------------------------
    # --save files (moments inside) at step 1 of runs that are not this one, and
    # files that cannot be resumed; this run: --max-steps 2, batch 2, accumulation
    # 1, max-len 16, seed 1337, dropout 0.1
    resume_run = ["--train", "good.bin", "--test", "good.bin", "--max-steps", "2", "--batch-size", "2",
                  "--max-len", "16", "--eval-examples", "4", "--threads", "1", "--resume"]
    write("resume_matching.bin", saved_run(tiny, 1, 2, 2, 1, 16, 1337))
    cases.append({"name": "valid_resume_saved_run", "kind": "ok", "args": resume_run + ["resume_matching.bin"],
                  "then": [train_args(model="resume_matching.bin")]})  # -m: a new run, the moments ignored
    write("resume_step1.bin", sft_checkpoint(tiny, num_labels=2, step=1))
    error("resume_without_moments", resume_run + ["resume_step1.bin"], "resume_step1.bin: no optimizer state")
    write("resume_other_run.bin", saved_run(tiny, 1, 2, 4, 1, 16, 1337))
    error("resume_other_batch_size", resume_run + ["resume_other_run.bin"], "resume_other_run.bin: --resume needs")
    write("resume_other_steps.bin", saved_run(tiny, 1, 3, 2, 1, 16, 1337))
    error("resume_other_total_steps", resume_run + ["resume_other_steps.bin"], "resume_other_steps.bin: --resume needs")
    write("resume_other_accum.bin", saved_run(tiny, 1, 2, 2, 2, 16, 1337))
    error("resume_other_grad_accum", resume_run + ["resume_other_accum.bin"], "resume_other_accum.bin: --resume needs")
    write("resume_other_max_len.bin", saved_run(tiny, 1, 2, 2, 1, 8, 1337))
    error("resume_other_max_len", resume_run + ["resume_other_max_len.bin"], "resume_other_max_len.bin: --resume needs")
    write("resume_other_seed.bin", saved_run(tiny, 1, 2, 2, 1, 16, 1338))
    error("resume_other_seed", resume_run + ["resume_other_seed.bin"], "resume_other_seed.bin: --resume needs")
    # the same run but another --dropout (the default 0.1 against a saved 0.3): other masks, not exact
    write("resume_other_dropout.bin", saved_run(tiny, 1, 2, 2, 1, 16, 1337, dropout=0.3))
    error("resume_other_dropout", resume_run + ["resume_other_dropout.bin"], "--dropout")
    write("resume_truncated_moments.bin", saved_run(tiny, 1, 2, 2, 1, 16, 1337)[:-4])
    error("resume_truncated_moments", resume_run + ["resume_truncated_moments.bin"], "resume_truncated_moments.bin")
    write("resume_moments_flag_2.bin", patched(saved_run(tiny, 1, 2, 2, 1, 16, 1337), 40, "<i", 2))
    error("resume_moments_flag_2", resume_run + ["resume_moments_flag_2.bin"], "resume_moments_flag_2.bin: header[10]")
    # the flag says moments follow, but the file ends after the parameters
    write("resume_flag_without_moments.bin", patched(sft_checkpoint(tiny, num_labels=2, step=1), 40, "<i", 1))
    error("resume_flag_without_moments", resume_run + ["resume_flag_without_moments.bin"],
          "resume_flag_without_moments.bin")
    error("resume_llmc_checkpoint", resume_run + ["tiny.bin"], "tiny.bin")
    error("resume_missing", resume_run + ["no_such_run.bin"], "no_such_run.bin")

    # --- flags ------------------------------------------------------------------
    def flag(name, flag_args, expect, base=None):
        error("flag_" + name, (base if base is not None else train_args()) + flag_args, expect)

    flag("max_len_2000_model_1024", ["--max-len", "2000"], "--max-len", base=train_args(model="tiny1024.bin"))
    flag("max_len_17_model_16", ["--max-len", "17"], "--max-len")
    flag("max_len_1024_model_16", ["--max-len", "1024"], "--max-len")
    flag("max_len_0", ["--max-len", "0"], "--max-len")
    flag("max_len_negative", ["--max-len", "-5"], "--max-len")
    flag("max_len_text", ["--max-len", "abc"], "--max-len")
    flag("max_len_trailing", ["--max-len", "16x"], "--max-len")
    flag("max_len_empty", ["--max-len", ""], "--max-len")
    flag("max_len_float", ["--max-len", "1.5"], "--max-len")
    flag("max_len_overflow", ["--max-len", "99999999999999999999999"], "--max-len")
    flag("max_len_2_pow_21", ["--max-len", str(1 << 21)], "--max-len")
    flag("batch_size_0", ["--batch-size", "0"], "--batch-size")
    flag("batch_size_negative", ["--batch-size", "-1"], "--batch-size")
    flag("batch_size_text", ["--batch-size", "two"], "--batch-size")
    flag("batch_size_exponent", ["--batch-size", "1e3"], "--batch-size")
    flag("batch_size_huge", ["--batch-size", "100000"], "--batch-size")
    flag("batch_size_larger_than_data", ["--batch-size", "9"], "good.bin")
    flag("dropout_1", ["--dropout", "1"], "--dropout")
    flag("dropout_negative", ["--dropout", "-0.1"], "--dropout")
    flag("dropout_nan", ["--dropout", "nan"], "--dropout")
    flag("dropout_text", ["--dropout", "half"], "--dropout")
    flag("grad_accum_0", ["--grad-accum", "0"], "--grad-accum")
    flag("grad_accum_too_many", ["--grad-accum", "5"], "--grad-accum")
    flag("epochs_0", ["--epochs", "0"], "--epochs")
    flag("epochs_negative", ["--epochs", "-3"], "--epochs")
    flag("max_steps_negative", ["--max-steps", "-1"], "--max-steps")
    flag("lr_negative", ["--lr", "-1e-4"], "--lr")
    flag("lr_text", ["--lr", "fast"], "--lr")
    flag("lr_nan", ["--lr", "nan"], "--lr")
    flag("lr_inf", ["--lr", "inf"], "--lr")
    flag("lr_too_big", ["--lr", "11"], "--lr")
    flag("lr_overflow", ["--lr", "1e400"], "--lr")
    flag("warmup_ratio_2", ["--warmup-ratio", "2"], "--warmup-ratio")
    flag("warmup_steps_negative", ["--warmup-steps", "-1"], "--warmup-steps")
    flag("weight_decay_negative", ["--weight-decay", "-0.1"], "--weight-decay")
    flag("max_grad_norm_negative", ["--max-grad-norm", "-1"], "--max-grad-norm")
    flag("beta1_1", ["--beta1", "1"], "--beta1")
    flag("beta2_negative", ["--beta2", "-0.5"], "--beta2")
    flag("eps_0", ["--eps", "0"], "--eps")
    flag("seed_negative", ["--seed", "-1"], "--seed")
    flag("seed_text", ["--seed", "0x10"], "--seed")
    flag("threads_0", ["--threads", "0"], "--threads")
    flag("threads_negative", ["--threads", "-4"], "--threads")
    flag("log_every_0", ["--log-every", "0"], "--log-every")
    flag("eval_every_negative", ["--eval-every", "-1"], "--eval-every")
    flag("eval_examples_0", ["--eval-examples", "0"], "--eval-examples")
    flag("save_every_negative", ["--save-every", "-1"], "--save-every")
    flag("save_every_without_save", ["--save-every", "1"], "--save-every")
    flag("num_labels_1", ["--num-labels", "1"], "--num-labels")
    flag("num_labels_0", ["--num-labels", "0"], "--num-labels")
    flag("num_labels_text", ["--num-labels", "many"], "--num-labels")
    flag("truncation_foo", ["--truncation", "foo"], "--truncation")
    flag("truncation_empty", ["--truncation", ""], "--truncation")
    flag("task_foo", ["--task", "foo"], "--task")
    flag("init_x3", ["--init", "x3"], "--init", base=[])
    flag("init_d0", ["--init", "d0"], "--init", base=[])
    flag("init_d", ["--init", "d"], "--init", base=[])
    flag("init_d_negative", ["--init", "d-2"], "--init", base=[])
    flag("init_d1000", ["--init", "d1000"], "--init", base=[])
    flag("init_empty", ["--init", ""], "--init", base=[])
    flag("unknown", ["--frobnicate", "1"], "--frobnicate")
    flag("unknown_single_dash", ["-x", "1"], "-x")
    flag("unknown_last_without_value", ["--frobnicate"], "--frobnicate")
    flag("positional_argument", ["stray.bin", "more"], "stray.bin")
    flag("missing_value_lr", ["--lr"], "--lr")
    flag("missing_value_model", ["-m"], "-m", base=[])
    flag("missing_value_train", ["--train"], "--train")
    flag("missing_value_output", ["--predict", "good.bin", "--output"], "--output", base=[])
    flag("predict_without_output", ["--predict", "good.bin", "-m", "tiny_sft.bin"], "--output", base=[])

    # --- non-finite training ----------------------------------------------------
    # Each run must stop with one error line naming the step; a checkpoint saved
    # before (by an earlier run, or by --save-every) must stay loadable, with the
    # step of the last good update, and hold its moments.
    # (a) the forward pass overflows at once (qkvw = 1e38: attention scores are
    # inf - inf): stop at step 1; the file already at the --save path is untouched
    huge = bytearray(good_ckpt)
    nq = 3 * tiny.C * tiny.C
    struct.pack_into("<%df" % nq, huge, tensor_offset(tiny, "qkvw"), *([1e38] * nq))
    write("huge_qkvw.bin", bytes(huge))
    cases.append({"name": "nonfinite_forward_overflow_step1", "kind": "nonfinite", "expect": "step 1:",
                  "args": train_args(model="huge_qkvw.bin", extra=["--save", "nf_a.bin", "--save-every", "1",
                                                                    "--max-steps", "4"]),
                  "setup": {"nf_a.bin": "tiny_sft.bin"}, "keep": "nf_a.bin"})
    # (b) training that diverges after some steps: --lr 10 --weight-decay 10 make
    # the decay factor 1 - lr*wd = -99, so decayed weights grow ~100x per step
    # until the loss is NaN (step 11 today); the checkpoints of the steps before
    # are saved with --save-every 1
    cases.append({"name": "nonfinite_diverging_training", "kind": "nonfinite", "expect": "step ",
                  "args": train_args(extra=["--save", "nf_b.bin", "--save-every", "1", "--max-steps", "60",
                                            "--lr", "10", "--weight-decay", "10"]),
                  "saved": "nf_b.bin", "save_every": 1})
    # (c) an update that overflows the weights while the loss and gradients are
    # finite: final LayerNorm weight 0 (so only its bias reaches the head) and a
    # head of +-5e36; the first update multiplies it by 1 - lr*wd = -99: -inf.
    # The checkpoint saved after that update must not hold the infinities.
    ovf = bytearray(good_sft)
    struct.pack_into("<8f", ovf, tensor_offset(tiny, "lnfw", 2), *([0.0] * 8))
    struct.pack_into("<8f", ovf, tensor_offset(tiny, "lnfb", 2), *([0.01] * 8))
    struct.pack_into("<16f", ovf, tensor_offset(tiny, "score", 2), *([5e36] * 8 + [-5e36] * 8))
    write("overflowing_update.bin", bytes(ovf))
    cases.append({"name": "nonfinite_update_overflow_save_every", "kind": "nonfinite", "expect": "step ",
                  "args": train_args(model="overflowing_update.bin",
                                     extra=["--save", "nf_c.bin", "--save-every", "1", "--max-steps", "3",
                                            "--lr", "10", "--weight-decay", "10"]),
                  "setup": {"nf_c.bin": "tiny_sft.bin"}, "saved": "nf_c.bin", "save_every": 1})
    # (d) the same in a one-step run that saves only at the end: either an error
    # naming the step, or a successful run whose checkpoint loads
    cases.append({"name": "nonfinite_update_overflow_final_save", "kind": "nonfinite_or_ok", "expect": "step ",
                  "args": train_args(model="overflowing_update.bin",
                                     extra=["--save", "nf_d.bin", "--max-steps", "1", "--lr", "10",
                                            "--weight-decay", "10"]),
                  "saved": "nf_d.bin"})
    return cases


def write_fuzz_seeds(seed_dir):
    """Small valid inputs (and a few near misses) for the two fuzz harnesses."""
    ck_dir = os.path.join(seed_dir, "checkpoint")
    ds_dir = os.path.join(seed_dir, "dataset")
    for d in (ck_dir, ds_dir):
        os.makedirs(d, exist_ok=True)
    # the smallest configurations make small seeds; the header is what matters
    for i, cfg in enumerate([Config(L=1, H=1, C=1, max_t=1, vocab=1, padded=1),
                             Config(L=2, H=2, C=2, max_t=3, vocab=5, padded=8),
                             Config(L=1, H=1, C=4, max_t=2, vocab=3, padded=128)]):
        with open(os.path.join(ck_dir, "llmc_%d.bin" % i), "wb") as f:
            f.write(llmc_checkpoint(cfg, seed=i))
        with open(os.path.join(ck_dir, "sft_%d.bin" % i), "wb") as f:
            f.write(sft_checkpoint(cfg, num_labels=2 + i, step=i, seed=i))
        with open(os.path.join(ck_dir, "saved_run_%d.bin" % i), "wb") as f:  # with the AdamW moments
            f.write(saved_run(cfg, i + 1, 10, 2, 1, cfg.max_t, 1337, num_labels=2 + i))
    with open(os.path.join(ds_dir, "good.bin"), "wb") as f:
        f.write(dataset_bytes(good_examples(n=8, max_len=10)))
    with open(os.path.join(ds_dir, "unlabelled.bin"), "wb") as f:
        f.write(dataset_bytes(good_examples(n=3, max_len=5, num_labels=0), num_labels=0))
    with open(os.path.join(ds_dir, "one.bin"), "wb") as f:
        f.write(dataset_bytes([([VOCAB - 1], 1, 10)]))
    with open(os.path.join(ds_dir, "three_labels.bin"), "wb") as f:
        f.write(dataset_bytes(good_examples(n=5, max_len=4, num_labels=3), num_labels=3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="build/bad_inputs")
    parser.add_argument("--fuzz-seeds", metavar="DIR", help="write fuzz seed corpora into DIR/checkpoint and DIR/dataset instead")
    args = parser.parse_args()
    if args.fuzz_seeds:
        write_fuzz_seeds(args.fuzz_seeds)
        print("wrote fuzz seeds to %s" % args.fuzz_seeds)
        return
    cases = build_corpus(args.out_dir)
    with open(os.path.join(args.out_dir, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote %d cases to %s" % (len(cases), os.path.join(args.out_dir, "cases.json")))


if __name__ == "__main__":
    main()
