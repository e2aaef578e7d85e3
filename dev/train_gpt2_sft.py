#!/usr/bin/env python3
"""
PyTorch reference for train_gpt2_sft.c: GPT-2 fine-tuned as a sequence classifier
or as a language model.

The classifier is mathematically the Hugging Face GPT2ForSequenceClassification:
GPT-2 trunk, final LayerNorm, the hidden state of the last real token of every
sequence, and a bias-free linear head `score` (num_labels, C). The language
model (num_labels 0) is HF's GPT2LMHeadModel: logits at every position from the
output layer tied to wte, next-token cross-entropy over the real positions
(labels -100 at the padding). Dropout is off
unless asked for; when on, it sits at HF's four places but draws its masks from
the counter-based hash of FORMATS.md section 5, so that the C code can compute
the very same masks.
Training uses torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and the linear
warmup/decay schedule of HF's get_linear_schedule_with_warmup.

All binary formats are described in dev/FORMATS.md:
  section 1  llm.c GPT-2 checkpoint (magic 20240326, version 3; AdamW moments may follow)
  section 2  fine-tuned (SFT) checkpoint (magic 20261128, version 1)
  section 3  tokenized dataset (magic 20261127, version 1), read only
  section 4  debug state for test_sft.c (magic 20261129, version 2)
  section 5  dropout masks

Subcommands (run with -h for the options of each):
  random        write a randomly initialised llm.c checkpoint
  debug-state   write the reference forward/backward/AdamW trace for test_sft.c
                (--num-labels 0: the language model)
  test-inputs   generate every file the C test needs (skips existing files)
  selftest      check the HF round trip and the model against an independent
                implementation; prints PASS/FAIL

Shapes in comments: B = batch size, T = padded sequence length, C = channels,
H = heads, hd = C/H head size, L = layers, V = vocab size, Vp = padded vocab,
K = num_labels.

Only torch and numpy are used. Converting a Hugging Face checkpoint is
dev/import_hf.py's job (standard library only for model.safetensors); the
selftest checks it against to_hf_state_dict and write_safetensors here.
"""

import argparse
import itertools
import json
import math
import os
import struct
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import import_hf as hf_import  # noqa: E402  (dev/import_hf.py, checked by the selftest)

# ----------------------------------------------------------------------------
# constants of the file formats (dev/FORMATS.md)

LLMC_MAGIC, LLMC_VERSION = 20240326, 3      # section 1
SFT_MAGIC, SFT_VERSION = 20261128, 1        # section 2
DATA_MAGIC, DATA_VERSION = 20261127, 1      # section 3
DEBUG_MAGIC, DEBUG_VERSION = 20261129, 2    # section 4
HEADER_INTS = 256                           # every header is 256 int32 = 1024 bytes
HEADER_BYTES = 4 * HEADER_INTS

GPT2_VOCAB_SIZE = 50257
LN_EPS = 1e-5

# The 16 parameter tensors of llm.c, in file order. Shapes are functions of
# (Vp, maxT, L, C); weights are (out_features, in_features) like nn.Linear.
PARAM_NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]

# Tensors that receive AdamW weight decay (matrices / embeddings). Everything
# else (LayerNorm weights and biases, linear biases) is not decayed.
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw", "score"}

# Model configurations for `random`: (num_layers, num_heads, channels, max_seq_len).
# d6 and d12 follow llm.c (d6 = its unofficial "gpt2-tiny"); d2/d4 continue the
# same rule channels = 64 * depth, heads = depth (head size 64).
CONFIGS = {
    "tiny": (2, 4, 64, 128),
    "d2": (2, 2, 128, 1024),
    "d4": (4, 4, 256, 1024),
    "d6": (6, 6, 384, 1024),
    "d12": (12, 12, 768, 1024),
    "124M": (12, 12, 768, 1024),
}


class SFTError(Exception):
    """A user-facing error: printed as one line, then exit status 1."""


# ----------------------------------------------------------------------------
# model configuration and parameter layout

class GPT2Config:
    """Hyperparameters stored in slots [2..7] of the llm.c header."""

    def __init__(self, max_seq_len, vocab_size, num_layers, num_heads, channels,
                 padded_vocab_size=None):
        self.max_seq_len = int(max_seq_len)
        self.vocab_size = int(vocab_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.channels = int(channels)
        if padded_vocab_size is None:
            padded_vocab_size = padded_vocab(vocab_size)
        self.padded_vocab_size = int(padded_vocab_size)

    def validate(self, where):
        """Raise SFTError (naming `where`) if the numbers cannot describe a GPT-2."""
        c = self
        if min(c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels) <= 0:
            raise SFTError(f"{where}: non-positive model dimension in header")
        if c.channels % c.num_heads != 0:
            raise SFTError(f"{where}: channels {c.channels} not divisible by heads {c.num_heads}")
        if c.padded_vocab_size < c.vocab_size:
            raise SFTError(f"{where}: padded vocab {c.padded_vocab_size} < vocab {c.vocab_size}")

    def header_slots(self):
        """Values of header slots [2..7]."""
        return [self.max_seq_len, self.vocab_size, self.num_layers, self.num_heads,
                self.channels, self.padded_vocab_size]

    def __repr__(self):
        return (f"GPT2Config(L={self.num_layers}, H={self.num_heads}, C={self.channels}, "
                f"maxT={self.max_seq_len}, V={self.vocab_size}, Vp={self.padded_vocab_size})")


def padded_vocab(v):
    """Vocab size rounded up to a multiple of 128 (llm.c convention: 50257 -> 50304)."""
    return (v + 127) // 128 * 128


def param_shapes(cfg, num_labels=None):
    """[(name, shape)] in file order; with num_labels >= 1 the head `score` is appended
    (None or 0, the language model, has no head)."""
    Vp, maxT, L, C = cfg.padded_vocab_size, cfg.max_seq_len, cfg.num_layers, cfg.channels
    shapes = {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C),
        "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C),
        "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }
    out = [(n, shapes[n]) for n in PARAM_NAMES]
    if num_labels:
        out.append(("score", (num_labels, C)))
    return out


def num_elements(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ----------------------------------------------------------------------------
# checkpoint I/O (FORMATS.md sections 1 and 2)

def atomic_write(path, write_fn):
    """Call write_fn(file) on a temporary file next to `path`, then rename it over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def make_header(magic, version, slots=(), extra=None):
    """256 int32 header: magic, version, slots at [2..], extra = {index: int}."""
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[0], h[1] = magic, version
    for i, v in enumerate(slots):
        h[2 + i] = v
    for i, v in (extra or {}).items():
        h[i] = v
    return h


def write_tensor_f32(f, t):
    """Write a tensor as little-endian float32 (C order)."""
    arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
    f.write(arr.astype("<f4", copy=False).tobytes())


def write_checkpoint(path, cfg, params, score=None, step=0):
    """Write an llm.c v3 checkpoint, or the SFT format when a head `score` is given.

    params: dict name -> tensor with the shapes of param_shapes(cfg).
    score:  (K, C) tensor or None.
    step:   updates done, header[9] of the SFT format (ignored without a head).
    """
    if score is None:
        header = make_header(LLMC_MAGIC, LLMC_VERSION, cfg.header_slots())
    else:
        header = make_header(SFT_MAGIC, SFT_VERSION, cfg.header_slots(), {8: score.shape[0], 9: step})
    for name, shape in param_shapes(cfg, None if score is None else score.shape[0]):
        t = score if name == "score" else params[name]
        if tuple(t.shape) != shape:
            raise SFTError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")

    def write(f):
        f.write(header.tobytes())
        for name in PARAM_NAMES:
            write_tensor_f32(f, params[name])
        if score is not None:
            write_tensor_f32(f, score)

    atomic_write(path, write)


def read_checkpoint(path):
    """Read an llm.c v3 or SFT checkpoint.

    Returns (cfg, params, score): params maps the 16 names to float32 tensors;
    score is the (K, C) float32 head for SFT files and None for llm.c files.
    In both formats header[10] = 1 means the AdamW moments m and v follow the
    parameters (not read here); header[9] (the step) is not used.
    """
    if not os.path.isfile(path):
        raise SFTError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise SFTError(f"{path}: file too small for a header ({size} bytes)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version = int(header[0]), int(header[1])
    if magic == LLMC_MAGIC:
        if version != LLMC_VERSION:
            raise SFTError(f"{path}: llm.c checkpoint version {version}, expected {LLMC_VERSION} (float32)")
        num_labels = None
    elif magic == SFT_MAGIC:
        if version != SFT_VERSION:
            raise SFTError(f"{path}: SFT checkpoint version {version}, expected {SFT_VERSION}")
        num_labels = int(header[8])
        if num_labels < 1:
            raise SFTError(f"{path}: invalid num_labels {num_labels}")
    else:
        raise SFTError(f"{path}: bad magic {magic} (expected {LLMC_MAGIC} llm.c or {SFT_MAGIC} SFT)")
    moments = int(header[10])
    if moments not in (0, 1):
        raise SFTError(f"{path}: header[10] is {moments}, not 0 or 1 (whether the AdamW moments follow)")
    cfg = GPT2Config(*[int(x) for x in header[2:8]])
    cfg.validate(path)
    shapes = param_shapes(cfg, num_labels)
    total = sum(num_elements(s) for _, s in shapes)
    expected = HEADER_BYTES + 4 * total * (1 + 2 * moments)
    if size != expected:
        what = "parameters and AdamW moments m, v (header[10] = 1)" if moments else "parameters only (header[10] = 0)"
        raise SFTError(f"{path}: size {size} bytes, expected {expected} for {cfg} with {what}")
    flat = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=HEADER_BYTES, count=total).astype(np.float32, copy=False))
    tensors, pos = {}, 0
    for name, shape in shapes:
        n = num_elements(shape)
        tensors[name] = flat[pos:pos + n].view(shape)
        pos += n
    score = tensors.pop("score", None)
    return cfg, tensors, score


# ----------------------------------------------------------------------------
# random initialisation (`random` subcommand)

def random_params(cfg, seed, plain=False):
    """GPT-2 style random float32 parameters.

    Weights ~ N(0, 0.02); residual projections (attprojw, fcprojw) ~ N(0, 0.02/sqrt(2L));
    wte padding rows [V:Vp] are zero. Unless `plain`, LayerNorm weights are
    1 + 0.1*N(0,1) and LayerNorm / linear biases 0.02*N(0,1), so that tests exercise
    every parameter; `plain` gives the HF init (LN w=1, b=0, biases 0).
    Draws happen tensor by tensor in file order from one torch.Generator(seed).
    """
    g = torch.Generator().manual_seed(seed)
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * cfg.num_layers)

    def normal(shape, s):
        return torch.randn(shape, generator=g, dtype=torch.float32) * s

    params = {}
    for name, shape in param_shapes(cfg):
        if name == "wte":
            t = torch.zeros(shape)
            t[:cfg.vocab_size] = normal((cfg.vocab_size, cfg.channels), std)
        elif name in ("attprojw", "fcprojw"):
            t = normal(shape, proj_std)
        elif name in DECAYED:                       # wpe, qkvw, fcw
            t = normal(shape, std)
        elif name in ("ln1w", "ln2w", "lnfw"):
            t = torch.ones(shape) if plain else 1.0 + normal(shape, 0.1)
        else:                                       # LayerNorm biases and linear biases
            t = torch.zeros(shape) if plain else normal(shape, 0.02)
        params[name] = t
    return params


def config_by_name(name):
    if name not in CONFIGS:
        raise SFTError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    L, H, C, maxT = CONFIGS[name]
    return GPT2Config(maxT, GPT2_VOCAB_SIZE, L, H, C)


def random_head(num_labels, channels, seed):
    """Classifier head score (K, C) ~ N(0, 0.02), float32, from torch.Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((num_labels, channels), generator=g, dtype=torch.float32) * 0.02


# ----------------------------------------------------------------------------
# dropout masks (FORMATS.md section 5)
#
# Masks come from a counter-based hash of (seed, pass, site, index) rather than
# from torch's generator, so train_gpt2_sft.c computes bit-identical masks on
# its own, element by element, on any number of threads. All arithmetic is
# uint64 with wrap-around: numpy uint64 arrays wrap silently, numpy uint64
# scalars warn on overflow (silenced below), and every constant is an
# np.uint64 because numpy 1.x turns uint64 (op) Python int into float64.

U64_MASK = (1 << 64) - 1
DROPOUT_G = 0x9E3779B97F4A7C15              # golden-ratio increment of SplitMix64
_MIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_M2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40))


def mix64(z):
    """SplitMix64's finaliser on uint64 values (array or scalar), wrapping.

    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
    z ^= z >> 31. Returns uint64 values of z's shape (a numpy scalar for a scalar z).
    """
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (z >> _SHIFTS[0])
        z = z * _MIX_M1
        z = z ^ (z >> _SHIFTS[1])
        z = z * _MIX_M2
        z = z ^ (z >> _SHIFTS[2])
    return z


def pass_key(seed, pass_index):
    """mix64(seed * G + pass) as a Python int; seed in [0, 2^64), pass >= 0."""
    return int(mix64((seed * DROPOUT_G + pass_index) & U64_MASK))


def site_key(pkey, site):
    """mix64(pass_key + (site + 1) * G) as a Python int. site 0 = embeddings,
    1 + 3l + j in layer l (j: 0 attention probabilities, 1 attention projection,
    2 MLP projection)."""
    return int(mix64((pkey + (site + 1) * DROPOUT_G) & U64_MASK))


def dropout_threshold(p):
    """round(P * 2^24) exactly as the C code computes it: (uint32_t)(p * 16777216.0 + 0.5)
    with p the float32 value promoted to double. Python floats are the same IEEE
    doubles, and p32 * 2^24 is exact (a power-of-two scaling), so even a fused
    multiply-add on the C side gives this value; the conversion truncates, which
    for a non-negative value is floor."""
    return int(math.floor(f32(p) * 16777216.0 + 0.5))


def dropout_scale(p):
    """1.0f / (1.0f - p) evaluated in float32, returned as a Python float."""
    one = np.float32(1.0)
    return float(one / (one - np.float32(f32(p))))


def keep_mask(skey, index, threshold):
    """Boolean keep-mask for an integer array of canonical element indices:
    (mix64(site_key + index * G) >> 40) >= threshold."""
    idx = np.asarray(index).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(np.uint64(skey) + idx * np.uint64(DROPOUT_G))
    return (h >> _SHIFTS[3]) >= np.uint64(threshold)


def activation_index(B, T, C, maxT):
    """Canonical indices (b * maxT + t) * C + i of a (B, T, C) activation, int64 (B, T, C)."""
    b = np.arange(B, dtype=np.int64)[:, None, None]
    t = np.arange(T, dtype=np.int64)[None, :, None]
    i = np.arange(C, dtype=np.int64)[None, None, :]
    return (b * maxT + t) * C + i


def probability_index(B, NH, T, maxT):
    """Canonical indices ((b * NH + h) * maxT + t) * maxT + u of the (B, NH, T, T)
    attention probabilities, int64 (B, NH, T, T)."""
    b = np.arange(B, dtype=np.int64)[:, None, None, None]
    h = np.arange(NH, dtype=np.int64)[None, :, None, None]
    t = np.arange(T, dtype=np.int64)[None, None, :, None]
    u = np.arange(T, dtype=np.int64)[None, None, None, :]
    return ((b * NH + h) * maxT + t) * maxT + u


class DropoutMasks:
    """The dropout masks of one training forward pass.

    p is rounded to float32 first (the C side holds it as a float); seed is a
    uint64; pass_index numbers the training forward passes (FORMATS.md section 5).
    """

    def __init__(self, p, seed, pass_index):
        self.p = f32(p)
        if not 0.0 <= self.p < 1.0:
            raise SFTError(f"dropout {p} outside [0, 1) (as float32: {self.p})")
        if not 0 <= int(seed) <= U64_MASK:
            raise SFTError(f"dropout seed {seed} outside [0, 2^64)")
        if int(pass_index) < 0:
            raise SFTError(f"dropout pass {pass_index} is negative")
        self.seed, self.pass_index = int(seed), int(pass_index)
        self.threshold = dropout_threshold(self.p)
        self.scale = dropout_scale(self.p)
        self.pass_key = pass_key(self.seed, self.pass_index)

    def keep(self, site, index):
        """Boolean keep-mask of the elements with canonical indices `index` at `site`."""
        return keep_mask(site_key(self.pass_key, site), index, self.threshold)

    def multiplier(self, site, index, dtype):
        """keep * scale as a tensor of `dtype` (0 where dropped), shaped like `index`."""
        keep = self.keep(site, index)
        return torch.from_numpy(keep.astype(np.float64) * self.scale).to(dtype)


# ----------------------------------------------------------------------------
# the model

class GPT2Trunk(nn.Module):
    """The GPT-2 body shared by both tasks: embeddings, blocks, final LayerNorm.

    Parameters are stored exactly as the llm.c tensors (stacked over layers), so
    parameters(), gradients and the checkpoint files share one layout and order:
    the 16 llm.c tensors, then `score` when num_labels >= 1 (0: no head).
    """

    def __init__(self, cfg, num_labels, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.num_labels = num_labels
        for name, shape in param_shapes(cfg, num_labels):
            # registration order == file order == parameters() order
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=dtype)))

    @torch.no_grad()
    def load(self, params, score=None):
        """Copy float32 tensors (dict of the 16 names, and score if the model has one)."""
        for name, p in self.named_parameters():
            p.copy_(score if name == "score" else params[name])
        return self

    @staticmethod
    def layernorm(x, w, b):
        """LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * w + b (biased var)."""
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + LN_EPS) * w + b

    @staticmethod
    def gelu(x):
        """GELU, tanh approximation (HF "gelu_new")."""
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    def attention(self, x, w, drop=None, layer=0):
        """Causal multi-head self-attention. x: (B, T, C) -> (B, T, C); w: this layer's tensors.

        drop: DropoutMasks or None; with masks, the probabilities (site 1 + 3 layer)
        and the projection output (site 2 + 3 layer) are dropped, as in HF's
        attn_dropout and resid_dropout.
        """
        B, T, C = x.shape
        H = self.cfg.num_heads
        hd = C // H
        qkv = x @ w["qkvw"].t() + w["qkvb"]                        # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)                              # each (B, T, C)
        q = q.view(B, T, H, hd).transpose(1, 2)                    # (B, H, T, hd)
        k = k.view(B, T, H, hd).transpose(1, 2)
        v = v.view(B, T, H, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)         # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))         # key j > query i masked
        att = torch.softmax(scores, dim=-1)                        # (B, H, T, T)
        if drop is not None:
            att = self.apply_dropout(att, drop, 1 + 3 * layer)
        y = att @ v                                                # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)                     # heads back side by side
        y = y @ w["attprojw"].t() + w["attprojb"]
        if drop is not None:
            y = self.apply_dropout(y, drop, 2 + 3 * layer)
        return y

    def mlp(self, x, w, drop=None, layer=0):
        """x: (B, T, C) -> fc (B, T, 4C) -> GELU -> proj (B, T, C).

        drop: DropoutMasks or None; with masks the output is dropped (site 3 + 3 layer).
        """
        h = self.gelu(x @ w["fcw"].t() + w["fcb"])
        y = h @ w["fcprojw"].t() + w["fcprojb"]
        if drop is not None:
            y = self.apply_dropout(y, drop, 3 + 3 * layer)
        return y

    def apply_dropout(self, x, drop, site):
        """x * (keep * scale) for a (B, T, C) activation or (B, NH, T, T) probabilities.

        The masks are indexed as if T were max_seq_len (FORMATS.md section 5), so
        they depend neither on the padded length nor on the other sequences.
        """
        maxT = self.cfg.max_seq_len
        if x.dim() == 3:
            index = activation_index(*x.shape, maxT)
        else:
            B, NH, T, _ = x.shape
            index = probability_index(B, NH, T, maxT)
        return x * drop.multiplier(site, index, x.dtype).to(x.device)

    def layer_views(self):
        """Per-layer views [{name: tensor}] of the (L, ...) stacked tensors.

        One unbind() per tensor: its backward stacks the L gradients once, whereas
        indexing self.qkvw[l] in every layer would build L full-size (L, ...)
        gradient tensors and make the 124M backward pass ~10x slower.
        """
        names = [n for n in PARAM_NAMES if n not in ("wte", "wpe", "lnfw", "lnfb")]
        per_name = {n: getattr(self, n).unbind(0) for n in names}
        return [{n: per_name[n][l] for n in names} for l in range(self.cfg.num_layers)]

    def hidden(self, tokens, dropout=None):
        """tokens: (B, T) int64. Returns ln_f of the last block's output, (B, T, C),
        at every position (causal: position t sees tokens 0..t only).

        dropout: None (no dropout) or (p, seed, pass_index): inverted dropout with
        the masks of training forward pass `pass_index` (FORMATS.md section 5);
        p is rounded to float32 and p == 0 is the same as None.
        """
        T = tokens.shape[1]
        if T > self.cfg.max_seq_len:
            raise SFTError(f"sequence length {T} exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        drop = None
        if dropout is not None:
            drop = DropoutMasks(*dropout)
            if drop.p == 0.0:
                drop = None                                        # exactly the no-dropout ops
        x = self.wte[tokens] + self.wpe[:T]                        # (B, T, C)
        if drop is not None:
            x = self.apply_dropout(x, drop, 0)
        for layer, w in enumerate(self.layer_views()):
            x = x + self.attention(self.layernorm(x, w["ln1w"], w["ln1b"]), w, drop, layer)
            x = x + self.mlp(self.layernorm(x, w["ln2w"], w["ln2b"]), w, drop, layer)
        return self.layernorm(x, self.lnfw, self.lnfb)             # (B, T, C)


class GPT2ForSequenceClassification(GPT2Trunk):
    """GPT-2 trunk + last-token pooling + bias-free linear head `score` (K, C)."""

    def forward(self, tokens, lengths, dropout=None):
        """tokens: (B, T) int64, right padded; lengths: (B,) int64 in 1..T;
        dropout as in GPT2Trunk.hidden.

        Returns logits (B, K). Positions >= lengths[b] are padding; they cannot
        influence position lengths[b]-1 because attention is causal.
        """
        x = self.hidden(tokens, dropout)                           # (B, T, C)
        pooled = x[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, C) last real token
        return pooled @ self.score.t()                             # (B, K)


class GPT2LMHeadModel(GPT2Trunk):
    """GPT-2 language model: the trunk at every position, output layer tied to wte
    (llm.c / HF GPT2LMHeadModel). The padded rows wte[V:Vp] never enter the
    softmax, so the output layer gives them zero gradient."""

    def __init__(self, cfg, dtype=torch.float64):
        super().__init__(cfg, 0, dtype)

    def forward(self, tokens, dropout=None):
        """tokens: (B, T) int64; dropout as in GPT2Trunk.hidden. Returns logits (B, T, V)."""
        return self.hidden(tokens, dropout) @ self.wte[:self.cfg.vocab_size].t()


def sft_loss(logits, targets):
    """Mean loss over the batch.

    K >= 2: softmax cross-entropy with integer targets (B,).
    K == 1: regression, mean squared error (logit - target)^2 with float targets (B,).
    """
    if logits.shape[1] == 1:
        return ((logits[:, 0] - targets.to(logits.dtype)) ** 2).mean()
    return F.cross_entropy(logits, targets)


def lm_loss(logits, tokens, lengths):
    """Next-token cross-entropy averaged over the real predictions.

    logits (B, T, V), tokens (B, T), lengths (B,) in 2..T: sequence b predicts
    tokens[b, t+1] at positions t = 0..lengths[b]-2, sum_b (lengths[b] - 1)
    predictions in all; the positions from lengths[b]-1 on are not scored.
    """
    T = tokens.shape[1]
    scored = torch.arange(T - 1, device=tokens.device)[None, :] < (lengths[:, None] - 1)  # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)                              # (B, T-1, V)
    nll = -logp.gather(2, tokens[:, 1:, None]).squeeze(2)                         # (B, T-1)
    return nll[scored].mean()


def linear_warmup_lambda(warmup, total):
    """HF get_linear_schedule_with_warmup multiplier for update k (0-based)."""
    def f(k):
        if k < warmup:
            return float(k) / float(max(1, warmup))
        return max(0.0, float(total - k) / float(max(1, total - warmup)))
    return f


def make_optimizer(model, lr, betas, eps, weight_decay, warmup, total):
    """torch.optim.AdamW with two groups (decay / no decay) + LambdaLR schedule."""
    decay = [p for n, p in model.named_parameters() if n in DECAYED]
    no_decay = [p for n, p in model.named_parameters() if n not in DECAYED]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_lambda(warmup, total))
    return opt, sched


# ----------------------------------------------------------------------------
# Hugging Face checkpoints: the safetensors writer and the HF names, with which
# the selftest makes inputs for dev/import_hf.py (the import itself)

def write_safetensors(path, tensors, dtype="F32"):
    """Write {name: tensor} as a .safetensors file (F32, F16 or BF16; BF16 truncates)."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        arr = t.detach().to(torch.float32).contiguous().numpy()
        if dtype == "F32":
            b = arr.astype("<f4").tobytes()
        elif dtype == "F16":
            b = arr.astype("<f2").tobytes()
        elif dtype == "BF16":
            b = (arr.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raise SFTError(f"unsupported safetensors dtype {dtype}")
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)      # pad the header to a multiple of 8 bytes

    def write(f):
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in chunks:
            f.write(b)

    atomic_write(path, write)


def to_hf_state_dict(cfg, params, score=None, prefix=""):
    """llm.c tensors -> HF GPT-2 names, Conv1D weights in HF (in, out) layout.

    wte is cut back to the true vocab size. `prefix` is "" (GPT2Model files) or
    "transformer." (GPT2ForSequenceClassification / GPT2LMHeadModel).
    """
    sd = {prefix + "wte.weight": params["wte"][:cfg.vocab_size],
          prefix + "wpe.weight": params["wpe"]}
    for i in range(cfg.num_layers):
        h = f"{prefix}h.{i}."
        sd[h + "ln_1.weight"] = params["ln1w"][i]
        sd[h + "ln_1.bias"] = params["ln1b"][i]
        sd[h + "attn.c_attn.weight"] = params["qkvw"][i].t()
        sd[h + "attn.c_attn.bias"] = params["qkvb"][i]
        sd[h + "attn.c_proj.weight"] = params["attprojw"][i].t()
        sd[h + "attn.c_proj.bias"] = params["attprojb"][i]
        sd[h + "ln_2.weight"] = params["ln2w"][i]
        sd[h + "ln_2.bias"] = params["ln2b"][i]
        sd[h + "mlp.c_fc.weight"] = params["fcw"][i].t()
        sd[h + "mlp.c_fc.bias"] = params["fcb"][i]
        sd[h + "mlp.c_proj.weight"] = params["fcprojw"][i].t()
        sd[h + "mlp.c_proj.bias"] = params["fcprojb"][i]
    sd[prefix + "ln_f.weight"] = params["lnfw"]
    sd[prefix + "ln_f.bias"] = params["lnfb"]
    if score is not None:
        sd["score.weight"] = score
    return sd


# ----------------------------------------------------------------------------
# tokenized dataset (FORMATS.md section 3)

class TokenDataset:
    """Memory-mapped view of a tokenized dataset file."""

    def __init__(self, path):
        if not os.path.isfile(path):
            raise SFTError(f"{path}: no such file")
        size = os.path.getsize(path)
        if size < HEADER_BYTES:
            raise SFTError(f"{path}: file too small for a dataset header")
        with open(path, "rb") as f:
            hdr = f.read(HEADER_BYTES)
        magic, version, self.num_labels, self.vocab_size = struct.unpack_from("<4i", hdr, 0)
        n, ntok = struct.unpack_from("<2q", hdr, 16)
        if magic != DATA_MAGIC:
            raise SFTError(f"{path}: bad magic {magic}, expected {DATA_MAGIC} (tokenized dataset)")
        if version != DATA_VERSION:
            raise SFTError(f"{path}: dataset version {version}, expected {DATA_VERSION}")
        if size != HEADER_BYTES + 20 * n + 2 * ntok:
            raise SFTError(f"{path}: size {size}, expected {HEADER_BYTES + 20 * n + 2 * ntok}")
        if n < 1:
            raise SFTError(f"{path}: dataset has no examples")
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        base = HEADER_BYTES
        self.offsets = np.frombuffer(mm, dtype="<i8", count=n, offset=base)
        self.lengths = np.frombuffer(mm, dtype="<i4", count=n, offset=base + 8 * n)
        self.labels = np.frombuffer(mm, dtype="<i4", count=n, offset=base + 12 * n)
        self.stars = np.frombuffer(mm, dtype="<i4", count=n, offset=base + 16 * n)
        self.tokens = np.frombuffer(mm, dtype="<u2", count=ntok, offset=base + 20 * n)
        if np.any(self.lengths < 1) or np.any(self.offsets < 0) or \
                np.any(self.offsets + self.lengths > ntok):
            raise SFTError(f"{path}: example offsets/lengths out of range")
        self.n, self.path = n, path

    def example(self, i):
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return self.tokens[o:o + n]


# ----------------------------------------------------------------------------
# debug state (FORMATS.md section 4)

def f32(x):
    """Round a Python float to the nearest float32 (the value the C side reads)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def choose_lengths(B, T, g, shortest=1):
    """B distinct lengths in shortest..T (when there are enough): one == T, one ==
    shortest if B >= 3, rest random; returned in random order so the longest
    sequence is not always first."""
    fixed = [T] if B < 3 else [T, shortest]
    fixed = fixed[:B]
    pool = list(range(shortest + 1, T)) if B >= 3 else list(range(shortest, T))
    need = B - len(fixed)
    perm = torch.randperm(len(pool), generator=g).tolist()
    others = [pool[i] for i in perm[:need]]
    while len(others) < need:                   # B > T: lengths cannot all differ
        others.append(int(torch.randint(shortest, T + 1, (1,), generator=g)))
    lengths = fixed + others
    order = torch.randperm(B, generator=g).tolist()
    return [lengths[i] for i in order]


def make_batch(B, T, K, vocab_size, seed, data_path=None):
    """Random batch for the debug state.

    Returns tokens (B, T) int64 (padding = random valid ids), lengths (B,) int64,
    targets (B,) int64 class ids (K >= 2), float32-exact float64 values (K == 1)
    or None (K == 0, the language model, whose lengths are >= 2: one prediction
    at least), and a short description of the token source.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = choose_lengths(B, T, g, shortest=2 if K == 0 else 1)
    # start from random ids everywhere: the padding positions keep them
    tokens = torch.randint(0, vocab_size, (B, T), generator=g)
    source = "random ids"
    if data_path:
        if os.path.isfile(data_path):
            ds = TokenDataset(data_path)
            source = f"dataset {data_path}"
            for b, n in enumerate(lengths):
                seq = None
                for _ in range(200):            # a random example with at least n tokens
                    i = int(torch.randint(0, ds.n, (1,), generator=g))
                    if ds.lengths[i] >= n:
                        seq = ds.example(i)[:n]
                        break
                if seq is None:                 # fallback: consecutive examples
                    i, parts, have = int(torch.randint(0, ds.n, (1,), generator=g)), [], 0
                    while have < n:
                        e = ds.example(i % ds.n)
                        parts.append(e)
                        have += len(e)
                        i += 1
                    seq = np.concatenate(parts)[:n]
                seq = torch.from_numpy(seq.astype(np.int64))
                if int(seq.max()) >= vocab_size:
                    raise SFTError(f"{data_path}: token id {int(seq.max())} >= vocab size {vocab_size}")
                tokens[b, :n] = seq
        else:
            print(f"note: dataset {data_path} not found, using random token ids")
    if K == 0:
        targets = None
    elif K >= 2:
        # random class ids, redrawn until at least two classes appear (B >= 2): a batch
        # of one class is learned in a single update and makes the step losses ~0
        for _ in range(1000):
            targets = torch.randint(0, K, (B,), generator=g)
            if B < 2 or len(set(targets.tolist())) >= 2:
                break
    else:
        targets = (1.0 + 9.0 * torch.rand(B, generator=g, dtype=torch.float64)).float().double()
    return tokens, torch.tensor(lengths, dtype=torch.int64), targets, source


def debug_state(model_path, out_path, B, T, num_labels=None, steps=10, warmup=3, total_steps=None,
                lr=1e-4, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8, max_grad_norm=None,
                seed=42, head_seed=None, data_path=None, dtype="float64", quiet=False,
                dropout=0.0, dropout_seed=0):
    """Compute the reference trace and write it in the debug-state format.

    num_labels >= 1 is the classifier (1: regression); 0 is the language model
    (next-token loss, output layer tied to wte; a fine-tuned checkpoint's head
    is not used). All hyperparameters are rounded to float32 first (they are stored as float32
    in the header), so the reference uses exactly the values the C test reads.
    With dropout > 0 the initial forward/backward (logits, loss, grads in the
    file) is training pass 0 and update k is pass k (update 0 reuses pass 0);
    dropout_seed is a uint64. With dropout == 0 header slots [22..24] are all
    zero, whatever dropout_seed is. Returns a dict summary.
    """
    cfg, params, ckpt_score = read_checkpoint(model_path)
    lm = num_labels == 0
    if lm:
        score = None
    elif ckpt_score is not None:
        if num_labels is not None and num_labels != ckpt_score.shape[0]:
            raise SFTError(f"{model_path}: checkpoint has num_labels {ckpt_score.shape[0]}, "
                           f"--num-labels says {num_labels}")
        num_labels, score = ckpt_score.shape[0], ckpt_score
    else:
        if num_labels is None:
            raise SFTError(f"{model_path}: llm.c checkpoint without a head; pass --num-labels")
        score = random_head(num_labels, cfg.channels, seed if head_seed is None else head_seed)
    if num_labels < 0:
        raise SFTError("num_labels must be >= 0 (0: language model)")
    if B < 1 or T < 1:
        raise SFTError("batch and seq-len must be >= 1")
    if lm and T < 2:
        raise SFTError("the language model needs seq-len >= 2 (one prediction at least)")
    if T > cfg.max_seq_len:
        raise SFTError(f"seq-len {T} exceeds {model_path} max_seq_len {cfg.max_seq_len}")
    total_steps = steps if total_steps is None else total_steps
    if steps < 0 or warmup < 0 or total_steps < 1:
        raise SFTError("need steps >= 0, warmup >= 0, total_steps >= 1")
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    lr, weight_decay, beta1, beta2, eps = map(f32, (lr, weight_decay, beta1, beta2, eps))
    dropout = f32(dropout)
    dropout_seed = int(dropout_seed)
    if dropout != 0.0:
        DropoutMasks(dropout, dropout_seed, 0)       # validates p and the seed before the work
    else:
        dropout, dropout_seed = 0.0, 0               # also turns -0.0 into +0.0 (zero bits)

    tokens, lengths, targets, source = make_batch(B, T, num_labels, cfg.vocab_size, seed, data_path)
    if lm:
        model = GPT2LMHeadModel(cfg, torch_dtype).load(params)
        ends = torch.stack([torch.zeros_like(lengths), lengths - 1], dim=1)   # (B, 2): positions 0, n_b - 1

        def logits_and_loss(drop):
            logits = model(tokens, drop)                                       # (B, T, V)
            return logits[torch.arange(B)[:, None], ends], lm_loss(logits, tokens, lengths)
    else:
        model = GPT2ForSequenceClassification(cfg, num_labels, torch_dtype).load(params, score)

        def logits_and_loss(drop):
            logits = model(tokens, lengths, drop)                              # (B, K)
            return logits, sft_loss(logits, targets)
    params_list = list(model.parameters())

    def forward_backward(pass_index):
        model.zero_grad(set_to_none=False)
        logits, loss = logits_and_loss((dropout, dropout_seed, pass_index) if dropout > 0 else None)
        loss.backward()
        return logits.detach(), loss.detach()

    # initial forward/backward: logits, loss and gradients written to the file
    logits, loss = forward_backward(0)
    grads0 = [p.grad.detach().to(torch.float32).clone() for p in params_list]
    norm0 = float(torch.norm(torch.stack([torch.norm(p.grad) for p in params_list])))
    max_grad_norm = f32(0.5 * norm0 if max_grad_norm is None else max_grad_norm)

    opt, sched = make_optimizer(model, lr, (beta1, beta2), eps, weight_decay, warmup, total_steps)
    step_losses, step_lrs, step_norms = [], [], []
    for k in range(steps):
        step_loss = loss if k == 0 else forward_backward(k)[1]  # update 0 reuses the initial pass 0
        step_losses.append(float(step_loss))
        step_norms.append(float(torch.nn.utils.clip_grad_norm_(params_list, max_grad_norm)))
        step_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    header = make_header(DEBUG_MAGIC, DEBUG_VERSION,
                         [B, T, num_labels, steps, warmup, total_steps])
    floats = struct.unpack("<6i", struct.pack("<6f", lr, weight_decay, beta1, beta2, eps, max_grad_norm))
    header[16:22] = floats
    header[22] = struct.unpack("<i", struct.pack("<f", dropout))[0]
    header[23:25] = np.array([dropout_seed & 0xFFFFFFFF, dropout_seed >> 32], dtype="<u4").view("<i4")

    def write(f):
        f.write(header.tobytes())
        f.write(tokens.numpy().astype("<i4").tobytes())
        f.write(lengths.numpy().astype("<i4").tobytes())
        if num_labels >= 2:
            f.write(targets.numpy().astype("<i4").tobytes())
        elif num_labels == 1:
            f.write(targets.numpy().astype("<f4").tobytes())
        if score is not None:
            write_tensor_f32(f, score)
        write_tensor_f32(f, logits)
        f.write(np.array([float(loss)], dtype="<f4").tobytes())
        for gr in grads0:
            write_tensor_f32(f, gr)
        for values in (step_losses, step_lrs, step_norms):
            f.write(np.array(values, dtype="<f4").tobytes())

    atomic_write(out_path, write)
    summary = {"lengths": lengths.tolist(), "loss": float(loss), "grad_norm": norm0,
               "max_grad_norm": max_grad_norm, "step_losses": step_losses, "step_lrs": step_lrs,
               "step_grad_norms": step_norms, "source": source, "num_labels": num_labels,
               "dropout": dropout, "dropout_seed": dropout_seed}
    if not quiet:
        task = "language model" if lm else f"K={num_labels}"
        print(f"debug state -> {out_path}  ({cfg}, B={B}, T={T}, {task}, {dtype}, tokens: {source})")
        print(f"  lengths      {summary['lengths']}")
        if targets is not None:
            print(f"  targets      {targets.tolist()}")
        if dropout > 0:
            print(f"  dropout      p {dropout!r} (threshold {dropout_threshold(dropout)}, "
                  f"scale {dropout_scale(dropout)!r}), seed {dropout_seed}")
        print(f"  loss         {summary['loss']:.6f}")
        print(f"  grad norm    {norm0:.6f}   (max_grad_norm {max_grad_norm:.6f})")
        print(f"  step losses  {' '.join(f'{x:.6f}' for x in step_losses)}")
        print(f"  step lrs     {' '.join(f'{x:.3g}' for x in step_lrs)}")
        print(f"  step norms   {' '.join(f'{x:.4f}' for x in step_norms)}")
    return summary


def read_debug_state(path, cfg):
    """Parse a debug-state file (used by selftest to check the writer). Returns a dict.

    Accepts versions 1 and 2 (version 1 has no dropout; its slots [22..24] are
    zero, so they read as dropout 0). "dropout" is P as a Python float and
    "dropout_seed" the uint64 seed. num_labels 0 (language model): no targets,
    no score, logits (B, 2, V) at positions 0 and lengths[b] - 1.
    """
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    if h[0] != DEBUG_MAGIC or h[1] not in (1, DEBUG_VERSION):
        raise SFTError(f"{path}: bad debug-state magic/version")
    B, T, K, steps = (int(x) for x in h[2:6])
    hp = np.frombuffer(raw[64:88], dtype="<f4")
    seed_halves = h[23:25].view("<u4")
    nparams = sum(num_elements(s) for _, s in param_shapes(cfg, K))
    if K < 0:
        raise SFTError(f"{path}: num_labels {K} < 0")
    head = [] if K == 0 else [("targets", "<i4" if K >= 2 else "<f4", B), ("score", "<f4", K * cfg.channels)]
    layout = [("tokens", "<i4", B * T), ("lengths", "<i4", B)] + head + [
              ("logits", "<f4", B * (2 * cfg.vocab_size if K == 0 else K)), ("loss", "<f4", 1),
              ("grads", "<f4", nparams),
              ("step_losses", "<f4", steps), ("step_lrs", "<f4", steps), ("step_grad_norms", "<f4", steps)]
    out = {"header": h, "hyper": hp, "dropout": float(h[22:23].view("<f4")[0]),
           "dropout_seed": int(seed_halves[0]) | (int(seed_halves[1]) << 32)}
    pos = HEADER_BYTES
    for name, dt, n in layout:
        if pos + 4 * n > len(raw):
            raise SFTError(f"{path}: size {len(raw)}, too small for {name}")
        out[name] = np.frombuffer(raw, dtype=dt, count=n, offset=pos)
        pos += 4 * n
    if pos != len(raw):
        raise SFTError(f"{path}: size {len(raw)}, expected {pos}")
    return out


# ----------------------------------------------------------------------------
# test-inputs

def test_inputs(out_dir, data_path=None):
    """Generate every file test_sft.c needs, skipping files that already exist."""
    os.makedirs(out_dir, exist_ok=True)
    small = dict(B=4, T=100, steps=10, warmup=3, lr=1e-3, weight_decay=0.1)     # tiny model
    big = dict(B=4, T=32, steps=10, warmup=3, lr=1e-5, weight_decay=0.1)        # 124M shapes
    # dropout: a seed above 2^32 so that both halves of header slots [23..24] matter
    drop = dict(dropout=0.2, dropout_seed=1234567890123)
    models = [  # (checkpoint, config, [(debug-state file, debug_state arguments)]); num_labels 0: LM
        ("gpt2_tiny.bin", "tiny", [
            ("gpt2_tiny_debug_state.bin", dict(small, num_labels=3, seed=42)),
            ("gpt2_tiny_reg_debug_state.bin", dict(small, B=3, T=16, num_labels=1, seed=43)),
            ("gpt2_tiny_dropout_debug_state.bin", dict(small, num_labels=3, seed=45, **drop)),
            ("gpt2_tiny_lm_debug_state.bin", dict(small, num_labels=0, seed=47)),
            ("gpt2_tiny_lm_dropout_debug_state.bin", dict(small, num_labels=0, seed=48, **drop))]),
        ("gpt2_124M.bin", "d12", [
            ("gpt2_124M_debug_state.bin", dict(big, num_labels=2, seed=44)),
            ("gpt2_124M_dropout_debug_state.bin", dict(big, num_labels=2, seed=46, steps=3, warmup=1,
                                                       dropout=0.1, dropout_seed=20261129)),
            ("gpt2_124M_lm_debug_state.bin", dict(big, num_labels=0, seed=49))]),
    ]
    jobs = []
    for ckpt, config, states in models:
        ckpt = os.path.join(out_dir, ckpt)
        jobs.append((ckpt, lambda p, c=config_by_name(config): write_checkpoint(p, c, random_params(c, 1337))))
        jobs += [(os.path.join(out_dir, name),
                  lambda p, ckpt=ckpt, kw=kw: debug_state(ckpt, p, data_path=data_path, **kw))
                 for name, kw in states]
    for path, make in jobs:
        if os.path.exists(path):
            print(f"exists, skipped: {path}")
            continue
        t0 = time.time()
        make(path)
        print(f"wrote {path} in {time.time() - t0:.1f} s")


# ----------------------------------------------------------------------------
# selftest

def mix64_int(z):
    """mix64 on plain Python ints, masked to 64 bits after every step: an
    implementation that cannot be affected by numpy's overflow rules."""
    z &= U64_MASK
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & U64_MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & U64_MASK
    z ^= z >> 31
    return z


def reference_dropout_multiplier(dropout, site, shape, index_of):
    """keep * scale as a float64 tensor of `shape`, one element at a time with
    Python ints straight from FORMATS.md section 5; index_of(*position) gives
    the element's canonical index. dropout = (p, seed, pass_index)."""
    p, seed, pass_index = dropout
    p32 = f32(p)
    threshold = int(p32 * (1 << 24) + 0.5)
    scale = f32(1.0 / f32(1.0 - p32))          # float32 division via double: no double rounding issue
    pkey = mix64_int(seed * DROPOUT_G + pass_index)
    skey = mix64_int(pkey + (site + 1) * DROPOUT_G)
    rows = [scale if mix64_int(skey + index_of(*pos) * DROPOUT_G) >> 40 >= threshold else 0.0
            for pos in itertools.product(*(range(s) for s in shape))]
    return torch.tensor(rows, dtype=torch.float64).view(shape)


def reference_hidden(cfg, p, tokens, lengths, dropout=None):
    """Independent trunk: one unpadded sequence at a time, per-head loops and
    torch's own layers (F.layer_norm, F.linear, F.gelu(approximate='tanh')).
    p: dict of the 16 llm.c tensors (more are ignored); dropout: None or
    (p, seed, pass_index), masks from reference_dropout_multiplier (slow: tiny
    models only). Returns [B tensors (lengths[b], C)]: ln_f at the real positions."""
    C, H, maxT = cfg.channels, cfg.num_heads, cfg.max_seq_len
    hd = C // H
    out = []

    def drop(x, site, index_of):
        if dropout is None:
            return x
        return x * reference_dropout_multiplier(dropout, site, tuple(x.shape), index_of).to(x.dtype)

    for b in range(tokens.shape[0]):
        n = int(lengths[b])

        def act_index(t, i, b=b):
            return (b * maxT + t) * C + i

        x = F.embedding(tokens[b, :n], p["wte"]) + p["wpe"][:n]         # (n, C)
        x = drop(x, 0, act_index)
        for l in range(cfg.num_layers):
            h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], LN_EPS)
            qkv = F.linear(h, p["qkvw"][l], p["qkvb"][l])                # (n, 3C)
            heads = []
            for j in range(H):
                q = qkv[:, j * hd:(j + 1) * hd]
                k = qkv[:, C + j * hd:C + (j + 1) * hd]
                v = qkv[:, 2 * C + j * hd:2 * C + (j + 1) * hd]
                a = (q @ k.t()) * (hd ** -0.5)
                a = torch.where(torch.tril(torch.ones(n, n, dtype=torch.bool)), a,
                                torch.full_like(a, -1e300 if a.dtype == torch.float64 else -1e30))
                a = drop(F.softmax(a, dim=1), 1 + 3 * l,
                         lambda t, u, b=b, j=j: ((b * H + j) * maxT + t) * maxT + u)
                heads.append(a @ v)
            x = x + drop(F.linear(torch.cat(heads, dim=1), p["attprojw"][l], p["attprojb"][l]),
                         2 + 3 * l, act_index)
            h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], LN_EPS)
            x = x + drop(F.linear(F.gelu(F.linear(h, p["fcw"][l], p["fcb"][l]), approximate="tanh"),
                                  p["fcprojw"][l], p["fcprojb"][l]), 3 + 3 * l, act_index)
        out.append(F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], LN_EPS))
    return out


def reference_logits(cfg, p, tokens, lengths, dropout=None):
    """Classifier logits (B, K) from reference_hidden at the last real position;
    p holds the 17 tensors (with score)."""
    return torch.stack([F.linear(h[-1], p["score"]) for h in reference_hidden(cfg, p, tokens, lengths, dropout)])


def reference_lm_loss(cfg, p, tokens, lengths, out_weight=None, dropout=None):
    """Language-model loss written the Hugging Face way: logits padded to (B, T, V),
    labels = tokens with -100 at the padding, logits[:, :-1] against labels[:, 1:],
    F.cross_entropy(ignore_index=-100). out_weight: the output layer (V, C),
    default the tied p["wte"][:V]; an untied copy separates the gradient of the
    output layer from the embedding's. Returns (loss, logits (B, T, V))."""
    V = cfg.vocab_size
    B, T = tokens.shape
    w = p["wte"][:V] if out_weight is None else out_weight
    logits = torch.stack([F.pad(F.linear(h, w), (0, 0, 0, T - h.shape[0]))
                          for h in reference_hidden(cfg, p, tokens, lengths, dropout)])
    labels = tokens.clone()
    labels[torch.arange(T)[None, :] >= lengths[:, None]] = -100
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    return loss, logits


def reference_adamw(p, grad, m, v, step, lr, b1, b2, eps, wd):
    """Plain-formula AdamW update (decoupled decay first), in place; for checking."""
    p *= 1 - lr * wd
    m.mul_(b1).add_((1 - b1) * grad)
    v.mul_(b2).add_((1 - b2) * grad * grad)
    mhat = m / (1 - b1 ** step)
    vhat = v / (1 - b2 ** step)
    p -= lr * mhat / (vhat.sqrt() + eps)


def selftest():
    """Run all self-checks; returns True if all pass."""
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}")

    cfg = config_by_name("tiny")
    params = random_params(cfg, 1234)
    score = random_head(3, cfg.channels, 99)
    with tempfile.TemporaryDirectory() as d:
        orig = os.path.join(d, "orig.bin")
        write_checkpoint(orig, cfg, params)
        orig_bytes = open(orig, "rb").read()

        # 1. GPT2Model-style safetensors (no prefix) + config.json, folder input
        hf_dir = os.path.join(d, "hf")
        os.makedirs(hf_dir)
        write_safetensors(os.path.join(hf_dir, "model.safetensors"), to_hf_state_dict(cfg, params))
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump({"n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_embd": cfg.channels,
                       "n_positions": cfg.max_seq_len, "vocab_size": cfg.vocab_size}, f)
        out = os.path.join(d, "imported.bin")
        hf_import.import_hf(hf_dir, out)
        check("dev/import_hf.py safetensors F32 round trip (llm.c bytes identical)",
              open(out, "rb").read() == orig_bytes)

        # 2. GPT2ForSequenceClassification-style: "transformer." prefix + score.weight, no config
        sft = os.path.join(d, "orig_sft.bin")
        write_checkpoint(sft, cfg, params, score)
        st = os.path.join(d, "cls.safetensors")
        write_safetensors(st, to_hf_state_dict(cfg, params, score, prefix="transformer."))
        hf_import.import_hf(st, out, n_head=cfg.num_heads)
        check("dev/import_hf.py classifier (prefix, score) -> SFT bytes identical",
              open(out, "rb").read() == open(sft, "rb").read())
        c2, p2, s2 = read_checkpoint(out)
        check("read SFT checkpoint back", s2 is not None and torch.equal(s2, score)
              and all(torch.equal(p2[n], params[n]) for n in PARAM_NAMES))

        # 3. F16 / BF16 safetensors, with parameters pre-rounded to be exactly representable
        for dt, tdt in (("F16", torch.float16), ("BF16", torch.bfloat16)):
            rounded = {n: t.to(tdt).to(torch.float32) for n, t in params.items()}
            ref = os.path.join(d, f"ref_{dt}.bin")
            write_checkpoint(ref, cfg, rounded)
            st = os.path.join(d, f"m_{dt}.safetensors")
            write_safetensors(st, to_hf_state_dict(cfg, rounded), dtype=dt)
            hf_import.import_hf(st, out, n_head=cfg.num_heads)
            check(f"dev/import_hf.py safetensors {dt} round trip",
                  open(out, "rb").read() == open(ref, "rb").read())

        # 4. pytorch_model.bin (torch.save of a state dict, with attn.bias buffers to ignore)
        bin_dir = os.path.join(d, "bin")
        os.makedirs(bin_dir)
        sd = {k: v.clone() for k, v in to_hf_state_dict(cfg, params, prefix="transformer.").items()}
        sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 4, 4)
        torch.save(sd, os.path.join(bin_dir, "pytorch_model.bin"))
        hf_import.import_hf(bin_dir, out, n_head=cfg.num_heads)
        check("dev/import_hf.py pytorch_model.bin round trip", open(out, "rb").read() == orig_bytes)

        # 5. error messages name the file
        bad = os.path.join(d, "bad.bin")
        with open(bad, "wb") as f:
            f.write(b"\0" * 2048)
        try:
            read_checkpoint(bad)
            check("bad magic rejected", False)
        except SFTError as e:
            check("bad magic rejected", bad in str(e), str(e))
        with open(bad, "wb") as f:
            f.write(orig_bytes[:-4])
        try:
            read_checkpoint(bad)
            check("truncated file rejected", False)
        except SFTError as e:
            check("truncated file rejected", bad in str(e), str(e))

        # llm.c checkpoint with a step in header[9] and, header[10] = 1, the AdamW
        # moments m and v after the parameters: the parameters are read, the moments ignored
        n16 = sum(num_elements(sh) for _, sh in param_shapes(cfg))
        hdr = np.frombuffer(orig_bytes[:HEADER_BYTES], dtype="<i4").copy()
        hdr[9], hdr[10] = 7, 1
        body = orig_bytes[HEADER_BYTES:]
        moments = np.random.default_rng(3).standard_normal(2 * n16).astype("<f4").tobytes()
        with open(bad, "wb") as f:
            f.write(hdr.tobytes() + body + moments)
        try:
            c3, p3, s3 = read_checkpoint(bad)
            ok, detail = s3 is None and all(torch.equal(p3[k], params[k]) for k in PARAM_NAMES), ""
        except SFTError as e:
            ok, detail = False, str(e)
        check("llm.c checkpoint with step and AdamW moments (header[10] = 1) read, moments ignored",
              ok and os.path.getsize(bad) == HEADER_BYTES + 4 * n16 * 3, detail)
        hdr2 = hdr.copy()
        hdr2[10] = 2
        for what, data in (("header[10] = 1 without the moments", hdr.tobytes() + body),
                           ("header[10] = 1, one float short", hdr.tobytes() + body + moments[:-4]),
                           ("header[10] = 0 with moments", orig_bytes + moments),
                           ("header[10] = 2", hdr2.tobytes() + body + moments)):
            with open(bad, "wb") as f:
                f.write(data)
            try:
                read_checkpoint(bad)
                check(f"llm.c checkpoint, {what}: rejected", False)
            except SFTError as e:
                check(f"llm.c checkpoint, {what}: rejected", bad in str(e) and "header[10]" in str(e), str(e))

        # 6. model vs independent implementation, logits / loss / all gradients, float64
        for K in (3, 1):
            head = random_head(K, cfg.channels, 7)
            B, T = 4, 12
            tokens, lengths, targets, _ = make_batch(B, T, K, cfg.vocab_size, seed=5)
            model = GPT2ForSequenceClassification(cfg, K, torch.float64).load(params, head)
            logits = model(tokens, lengths)
            loss = sft_loss(logits, targets)
            loss.backward()
            p = {n: t.detach().double().clone().requires_grad_(True)
                 for n, t in list(params.items()) + [("score", head)]}
            ref_logits = reference_logits(cfg, p, tokens, lengths)
            if K == 1:
                ref_loss = F.mse_loss(ref_logits[:, 0], targets)
            else:
                ref_loss = F.nll_loss(F.log_softmax(ref_logits, dim=1), targets)
            ref_loss.backward()
            dl = float((logits - ref_logits).abs().max())
            dg = max(float((pp.grad - p[n].grad).abs().max() / (p[n].grad.abs().max() + 1e-30))
                     for n, pp in model.named_parameters())
            check(f"model == independent reference (K={K}) logits/loss", dl < 1e-12
                  and abs(float(loss) - float(ref_loss)) < 1e-12, f"max |dlogit| {dl:.2e}")
            check(f"model == independent reference (K={K}) gradients", dg < 1e-10,
                  f"max relative grad diff {dg:.2e}")

            # padding invariance: new pad ids must change nothing (bit exact)
            grads = [pp.grad.clone() for pp in model.parameters()]
            tokens2 = tokens.clone()
            g = torch.Generator().manual_seed(77)
            for b in range(B):
                n = int(lengths[b])
                tokens2[b, n:] = torch.randint(0, cfg.vocab_size, (T - n,), generator=g)
            model.zero_grad()
            logits2 = model(tokens2, lengths)
            sft_loss(logits2, targets).backward()
            same = torch.equal(logits, logits2) and all(
                torch.equal(a, pp.grad) for a, pp in zip(grads, model.parameters()))
            check(f"padding invariance (K={K}), logits and grads bit-identical", same)

        # 7. dropout masks (FORMATS.md section 5)
        # known answers: SplitMix64's published first outputs for seed 0 are mix64(k * G),
        # and numpy's wrapping uint64 arithmetic against plain Python ints
        G = DROPOUT_G
        splitmix = [int(z) for z in mix64(np.array([(k * G) & U64_MASK for k in (1, 2, 3)], dtype=np.uint64))]
        check("mix64 == SplitMix64 reference outputs",
              splitmix == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F],
              " ".join(f"{z:016x}" for z in splitmix))
        inputs = [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63, U64_MASK, G, 0x0123456789ABCDEF]
        ok_arr = [int(z) for z in mix64(np.array(inputs, dtype=np.uint64))] == [mix64_int(z) for z in inputs]
        ok_scalar = all(int(mix64(np.uint64(z))) == mix64_int(z) for z in inputs)
        seeds = [0, 1, 2 ** 32 + 5, 1234567890123, U64_MASK]
        ok_keys = all(site_key(pass_key(sd, ps), st)
                      == mix64_int(mix64_int(sd * G + ps) + (st + 1) * G)
                      for sd in seeds for ps in (0, 1, 99) for st in (0, 1, 36))
        check("mix64 / pass_key / site_key (numpy) == plain Python ints", ok_arr and ok_scalar and ok_keys)
        # threshold = (uint32_t)(p * 16777216.0 + 0.5), scale = 1.0f / (1.0f - p): values from C
        known = {0.1: (1677722, 0x3F8E38E4), 0.2: (3355443, 0x3FA00000), 0.3: (5033165, 0x3FB6DB6E),
                 0.5: (8388608, 0x40000000)}
        got = {p: (dropout_threshold(p), struct.unpack("<I", struct.pack("<f", dropout_scale(p)))[0])
               for p in known}
        check("dropout threshold and float32 scale == C values", got == known)
        rng = np.random.default_rng(11)
        idx = np.concatenate([np.arange(1000), rng.integers(0, 2 ** 40, 1000), [2 ** 63 - 1]])
        dm = DropoutMasks(0.3, 1234567890123, 7)
        ref_keep = [(mix64_int(site_key(dm.pass_key, 5) + int(i) * G) >> 40) >= dm.threshold for i in idx]
        check("keep mask (numpy) == plain Python ints, large indices", dm.keep(5, idx).tolist() == ref_keep)

        n = 1_000_000
        for p in (0.1, 0.5):
            frac = 1.0 - float(DropoutMasks(p, 42, 0).keep(0, np.arange(n)).mean())
            sd = math.sqrt(p * (1 - p) / n)
            check(f"drop fraction p={p} within 5 sd", abs(frac - p) < 5 * sd,
                  f"{frac:.5f} (sd {sd:.1e})")
            q = p * p + (1 - p) * (1 - p)                   # agreement of two independent masks
            sdq = math.sqrt(q * (1 - q) / n)
            pairs = {"sites 0/1": (DropoutMasks(p, 42, 0), 0, DropoutMasks(p, 42, 0), 1),
                     "sites 1/4": (DropoutMasks(p, 42, 0), 1, DropoutMasks(p, 42, 0), 4),
                     "passes 0/1": (DropoutMasks(p, 42, 0), 3, DropoutMasks(p, 42, 1), 3),
                     "seeds 42/43": (DropoutMasks(p, 42, 0), 3, DropoutMasks(p, 43, 0), 3)}
            for what, (m1, s1, m2, s2) in pairs.items():
                agree = float((m1.keep(s1, np.arange(n)) == m2.keep(s2, np.arange(n))).mean())
                check(f"masks independent, p={p}, {what}", abs(agree - q) < 5 * sdq,
                      f"agree {agree:.5f}, expected {q:.5f} (sd {sdq:.1e})")

        # p = 0 is no dropout, with exactly the same operations
        head = random_head(3, cfg.channels, 7)
        B, T = 4, 12
        tokens, lengths, targets, _ = make_batch(B, T, 3, cfg.vocab_size, seed=5)
        model = GPT2ForSequenceClassification(cfg, 3, torch.float64).load(params, head)
        with torch.no_grad():
            plain = model(tokens, lengths)
            same = torch.equal(plain, model(tokens, lengths, None)) and \
                torch.equal(plain, model(tokens, lengths, (0.0, 123, 4)))
        check("forward with dropout p=0 / None == forward without dropout (bit exact)", same)

        # dropout forward/backward against the per-sequence, per-head reference
        # whose masks are built element by element with Python ints
        drop = (0.3, 2 ** 40 + 12345, 5)
        model.zero_grad()
        logits = model(tokens, lengths, drop)
        loss = sft_loss(logits, targets)
        loss.backward()
        p = {n_: t.detach().double().clone().requires_grad_(True)
             for n_, t in list(params.items()) + [("score", head)]}
        ref_logits = reference_logits(cfg, p, tokens, lengths, drop)
        ref_loss = F.nll_loss(F.log_softmax(ref_logits, dim=1), targets)
        ref_loss.backward()
        dl = float((logits - ref_logits).abs().max())
        dg = max(float((pp.grad - p[n_].grad).abs().max() / (p[n_].grad.abs().max() + 1e-30))
                 for n_, pp in model.named_parameters())
        moved = float((logits - plain).abs().max())
        check("dropout model == independent reference, logits/loss", dl < 1e-12 and moved > 1e-3
              and abs(float(loss) - float(ref_loss)) < 1e-12, f"max |dlogit| {dl:.2e}, "
              f"vs no dropout {moved:.2e}")
        check("dropout model == independent reference, gradients", dg < 1e-10,
              f"max relative grad diff {dg:.2e}")
        # masks are indexed as if T were max_seq_len: more padding changes nothing
        # (not bit exact: the matmul shapes differ)
        tokens_long = torch.cat([tokens, torch.zeros(B, 5, dtype=tokens.dtype)], dim=1)
        with torch.no_grad():
            longer = model(tokens_long, lengths, drop)
        dpad = float((longer - logits).abs().max())
        check("dropout masks independent of the padded length T", dpad < 1e-12, f"max |dlogit| {dpad:.2e}")

        # 8. debug state: format, step_losses[0] == loss, schedule, AdamW cross-check
        ds = os.path.join(d, "ds.bin")
        s = debug_state(orig, ds, B=3, T=8, num_labels=2, steps=5, warmup=2, lr=1e-3,
                        weight_decay=0.1, seed=3, quiet=True)
        r = read_debug_state(ds, cfg)
        lens = r["lengths"].tolist()
        check("debug state lengths distinct, include 1 and T", len(set(lens)) == 3 and 1 in lens and 8 in lens,
              str(lens))
        check("debug state step_losses[0] == loss", r["step_losses"][0] == r["loss"][0])
        sched = [1e-3 * x for x in (0.0, 0.5, 1.0, 2 / 3, 1 / 3)]   # W=2, N=5 written out by hand
        check("debug state lr schedule", np.allclose(r["step_lrs"], sched, rtol=1e-6, atol=0),
              " ".join(f"{x:.3g}" for x in r["step_lrs"]))
        check("debug state max_grad_norm = 0.5 * initial norm",
              abs(r["hyper"][5] - 0.5 * s["grad_norm"]) <= 1e-6 * s["grad_norm"])
        check("debug state version 2, no dropout: slots [22..24] zero",
              int(r["header"][1]) == 2 and not r["header"][22:25].any() and r["dropout"] == 0.0)
        ds0 = os.path.join(d, "ds0.bin")
        debug_state(orig, ds0, B=3, T=8, num_labels=2, steps=5, warmup=2, lr=1e-3,
                    weight_decay=0.1, seed=3, quiet=True, dropout=0.0, dropout_seed=999)
        check("debug state with dropout 0 (any seed) == without dropout, bytes identical",
              open(ds0, "rb").read() == open(ds, "rb").read())

        # with dropout: header fields, pass 0 for the written loss, a seed above 2^32
        dseed = 2 ** 33 + 0x80000001                      # both halves matter, low half >= 2^31
        dsd = os.path.join(d, "dsd.bin")
        s = debug_state(orig, dsd, B=3, T=8, num_labels=2, steps=4, warmup=1, lr=1e-3,
                        weight_decay=0.1, seed=3, quiet=True, dropout=0.15, dropout_seed=dseed)
        r = read_debug_state(dsd, cfg)
        check("debug state dropout fields round trip",
              r["dropout"] == f32(0.15) and r["dropout_seed"] == dseed
              and int(r["header"][23]) == -0x7FFFFFFF and int(r["header"][24]) == 2,
              f"p {r['dropout']!r}, seed {r['dropout_seed']}")
        check("debug state with dropout: step_losses[0] == loss", r["step_losses"][0] == r["loss"][0])
        model = GPT2ForSequenceClassification(cfg, 2, torch.float64).load(params, torch.from_numpy(
            r["score"].reshape(2, cfg.channels).copy()))
        tok = torch.from_numpy(r["tokens"].reshape(3, 8).astype(np.int64))
        lens = torch.from_numpy(r["lengths"].astype(np.int64))
        with torch.no_grad():
            pass0 = model(tok, lens, (0.15, dseed, 0)).float().numpy().ravel()
            pass1 = model(tok, lens, (0.15, dseed, 1)).float().numpy().ravel()
        check("debug state with dropout: logits are those of pass 0",
              np.array_equal(pass0, r["logits"]) and not np.array_equal(pass1, r["logits"]))
        check("debug state with dropout: losses differ from the run without",
              r["loss"][0] != read_debug_state(ds, cfg)["loss"][0])

        # AdamW + clipping + schedule against plain formulas, K=2, 3 updates
        model = GPT2ForSequenceClassification(cfg, 2, torch.float64).load(params, score[:2])
        ref = {n: t.detach().clone() for n, t in model.named_parameters()}
        m = {n: torch.zeros_like(t) for n, t in ref.items()}
        v = {n: torch.zeros_like(t) for n, t in ref.items()}
        tokens, lengths, targets, _ = make_batch(3, 8, 2, cfg.vocab_size, seed=9)
        opt, sch = make_optimizer(model, 1e-3, (0.9, 0.999), 1e-8, 0.1, 1, 3)
        lam = [0.0, 1.0, 0.5]                              # W=1, N=3 written out by hand
        no_decay = {"ln1w", "ln1b", "qkvb", "attprojb", "ln2w", "ln2b", "fcb", "fcprojb", "lnfw", "lnfb"}
        for k in range(3):
            model.zero_grad()
            sft_loss(model(tokens, lengths), targets).backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            norm = torch.stack([g.norm() for g in grads.values()]).norm()
            coef = min(1.0, 0.05 / (float(norm) + 1e-6))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
            sch.step()
            for n in ref:
                reference_adamw(ref[n], grads[n] * coef, m[n], v[n], k + 1, 1e-3 * lam[k],
                                0.9, 0.999, 1e-8, 0.0 if n in no_decay else 0.1)
        diff = max(float((p.detach() - ref[n]).abs().max()) for n, p in model.named_parameters())
        check("AdamW/clip/schedule == plain formulas", diff < 1e-12, f"max |dparam| {diff:.2e}")

        # 9. language model (num_labels 0), float64, against reference_lm_loss:
        # per-sequence trunk, logits padded HF-style, cross_entropy(ignore_index=-100)
        V, Vp = cfg.vocab_size, cfg.padded_vocab_size
        B, T = 4, 12
        tokens, lengths, targets, _ = make_batch(B, T, 0, cfg.vocab_size, seed=6)
        lens = lengths.tolist()
        check("make_batch K=0: no targets, lengths distinct in 2..T, one == 2 and one == T",
              targets is None and min(lens) == 2 and max(lens) == T and len(set(lens)) == B, str(lens))
        real = torch.arange(T)[None, :] < lengths[:, None]                 # (B, T) real positions

        def fresh():
            return {n_: t.detach().double().clone().requires_grad_(True) for n_, t in params.items()}

        def grad_diff(model, ref):
            return max(float((pp.grad - ref[n_].grad).abs().max() / (ref[n_].grad.abs().max() + 1e-30))
                       for n_, pp in model.named_parameters())

        lm = GPT2LMHeadModel(cfg, torch.float64).load(params)
        logits = lm(tokens)
        loss = lm_loss(logits, tokens, lengths)
        loss.backward()
        p = fresh()
        ref_loss, ref_lg = reference_lm_loss(cfg, p, tokens, lengths)
        ref_loss.backward()
        dl = float((logits - ref_lg)[real].abs().max())
        logp = torch.log_softmax(logits.detach(), dim=-1)                  # a third way: a plain loop
        terms = [-float(logp[b, t, tokens[b, t + 1]]) for b in range(B) for t in range(lens[b] - 1)]
        loop = sum(terms) / len(terms)
        check("LM loss == HF-style cross_entropy(ignore_index) reference == loop over the predictions",
              dl < 1e-12 and abs(float(loss) - float(ref_loss)) < 1e-12 and abs(float(loss) - loop) < 1e-12
              and len(terms) == sum(lens) - B, f"loss {float(loss):.6f}, {len(terms)} predictions, "
              f"max |dlogit| {dl:.2e}")
        dg = grad_diff(lm, p)
        check("LM gradients == reference", dg < 1e-10, f"max relative grad diff {dg:.2e}")

        # tied output layer: wte's gradient is the embedding's plus the output layer's,
        # computed apart with an untied copy of wte[:V]; the padded rows get none
        pu = fresh()
        w_out = params["wte"][:V].double().clone().requires_grad_(True)
        reference_lm_loss(cfg, pu, tokens, lengths, out_weight=w_out)[0].backward()
        emb, out_part = pu["wte"].grad, w_out.grad
        tied = emb.clone()
        tied[:V] += out_part
        scale = min(float(emb.abs().max()), float(out_part.abs().max()))
        dt = float((lm.wte.grad - tied).abs().max()) / scale
        emb_rows = set(torch.nonzero(emb.abs().sum(1)).ravel().tolist())
        predicting = torch.arange(T)[None, :] < lengths[:, None] - 1     # the last real token predicts nothing
        check("LM tied wte gradient == embedding-only + output-only (untied copy), padded rows 0",
              dt < 1e-10 and scale > 0 and emb_rows == set(tokens[predicting].tolist())
              and not lm.wte.grad[V:].any(), f"max diff / smaller part {dt:.2e}")

        # padding invariance: new pad ids change neither the loss nor any gradient (bit exact)
        grads = [pp.grad.clone() for pp in lm.parameters()]
        tokens2 = torch.where(real, tokens, torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(78)))
        lm.zero_grad()
        loss2 = lm_loss(lm(tokens2), tokens2, lengths)
        loss2.backward()
        check("LM padding invariance, loss and grads bit-identical", torch.equal(loss, loss2) and all(
            torch.equal(a, pp.grad) for a, pp in zip(grads, lm.parameters())))

        # dropout: the trunk's masks at every position, against the element-by-element reference
        drop = (0.3, 2 ** 40 + 12345, 5)
        lm.zero_grad()
        loss_d = lm_loss(lm(tokens, drop), tokens, lengths)
        loss_d.backward()
        p = fresh()
        ref_d = reference_lm_loss(cfg, p, tokens, lengths, dropout=drop)[0]
        ref_d.backward()
        dg = grad_diff(lm, p)
        check("LM with dropout == reference, loss and gradients",
              abs(float(loss_d) - float(ref_d)) < 1e-12 and dg < 1e-10 and abs(float(loss_d - loss)) > 1e-3,
              f"loss {float(loss_d):.6f} (without {float(loss):.6f}), max relative grad diff {dg:.2e}")

        # LM debug states, without and with dropout: layout, pass 0, round trip
        for p_drop in (0.0, 0.15):
            dsl = os.path.join(d, f"dslm{p_drop}.bin")
            s = debug_state(orig, dsl, B=3, T=8, num_labels=0, steps=3, warmup=1, lr=1e-3,
                            weight_decay=0.1, seed=3, quiet=True, dropout=p_drop, dropout_seed=dseed)
            r = read_debug_state(dsl, cfg)
            tok = torch.from_numpy(r["tokens"].reshape(3, 8).astype(np.int64))
            lens = torch.from_numpy(r["lengths"].astype(np.int64))
            lm.zero_grad()
            lg = lm(tok, (p_drop, dseed, 0))
            loss0 = lm_loss(lg, tok, lens)
            loss0.backward()
            ends = torch.stack([torch.zeros_like(lens), lens - 1], dim=1)
            want_logits = lg.detach()[torch.arange(3)[:, None], ends].float().numpy().ravel()
            want_grads = torch.cat([pp.grad.float().ravel() for pp in lm.parameters()]).numpy()
            wte_pad = r["grads"][V * cfg.channels:Vp * cfg.channels]
            check(f"LM debug state (dropout {p_drop}): header, lengths in 2..T, round trip",
                  int(r["header"][4]) == 0 and sorted(lens.tolist())[0] == 2 and 8 in lens.tolist()
                  and r["dropout"] == f32(p_drop) and r["dropout_seed"] == (dseed if p_drop else 0),
                  str(lens.tolist()))
            check(f"LM debug state (dropout {p_drop}): logits at 0 and n-1, loss, grads of pass 0",
                  np.array_equal(want_logits, r["logits"]) and r["loss"][0] == f32(float(loss0))
                  and r["step_losses"][0] == r["loss"][0] and np.array_equal(want_grads, r["grads"])
                  and not wte_pad.any(), f"loss {float(r['loss'][0]):.6f}")
        with open(bad, "wb") as f:
            f.write(open(dsl, "rb").read()[:-4])
        try:
            read_debug_state(bad, cfg)
            check("truncated LM debug state rejected", False)
        except SFTError as e:
            check("truncated LM debug state rejected", bad in str(e), str(e))

    ok = all(results)
    print(f"selftest: {'PASS' if ok else 'FAIL'} ({sum(results)}/{len(results)} checks)")
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return ok


# ----------------------------------------------------------------------------
# command line

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("random", help="write a random-initialised llm.c v3 checkpoint")
    p.add_argument("--config", required=True, choices=list(CONFIGS))
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", required=True)
    p.add_argument("--plain-init", action="store_true",
                   help="HF init: LayerNorm w=1, b=0, biases 0 (default randomises them)")

    p = sub.add_parser("debug-state", help="write the reference trace for test_sft.c "
                                           "(classifier, or --num-labels 0: language model)")
    p.add_argument("--model", required=True, help="llm.c or SFT checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--num-labels", type=int, default=None,
                   help="task: K >= 2 classes, 1 regression, 0 the language model (next-token "
                        "loss, output layer tied to wte; a checkpoint's head is not used); "
                        "required for llm.c checkpoints, default an SFT checkpoint's K")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--total-steps", type=int, default=None, help="schedule horizon (default --steps)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="default: half the initial gradient norm, so clipping is active")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--head-seed", type=int, default=None, help="seed of the random head (default --seed)")
    p.add_argument("--data", default=None, help="tokenized dataset to draw tokens from")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="float64 (default) is the exact reference; float32 is a diagnostic only "
                        "(torch's float32 gradient norm loses ~1e-3 relative on the 124M wte)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout probability P in [0, 1) (FORMATS.md section 5; default 0: none)")
    p.add_argument("--dropout-seed", type=int, default=0, help="uint64 seed of the dropout masks")

    p = sub.add_parser("test-inputs", help="generate all files the C test needs")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--data", default=None)

    sub.add_parser("selftest", help="run the self-checks")

    args = ap.parse_args(argv)
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        if args.cmd == "random":
            cfg = config_by_name(args.config)
            write_checkpoint(args.out, cfg, random_params(cfg, args.seed, args.plain_init))
            print(f"wrote {args.out}: {cfg}, seed {args.seed}")
        elif args.cmd == "debug-state":
            debug_state(args.model, args.out, args.batch, args.seq_len, args.num_labels, args.steps,
                        args.warmup, args.total_steps, args.lr, args.weight_decay, args.beta1, args.beta2,
                        args.eps, args.max_grad_norm, args.seed, args.head_seed, args.data, args.dtype,
                        dropout=args.dropout, dropout_seed=args.dropout_seed)
        elif args.cmd == "test-inputs":
            test_inputs(args.out_dir, args.data)
        elif args.cmd == "selftest":
            return 0 if selftest() else 1
    except SFTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
