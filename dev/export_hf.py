#!/usr/bin/env python3
"""
Export a checkpoint of this project as a Hugging Face folder: GPT2LMHeadModel
(a language model) or GPT2ForSequenceClassification (a classifier).

    python3 dev/export_hf.py CKPT OUT_DIR [--arch lm|classifier]
                             [--label-names neg,pos] [--num-labels K]
                             [--vocab-dir DIR | --no-tokenizer]

CKPT is one of
  - an llm.c GPT-2 checkpoint (dev/FORMATS.md section 1), which has no
    classifier head: llm.c's own files, `train_gpt2_sft --task lm --save`
    (header[9] = the step; header[10] = 1: the AdamW moments m and v follow
    the parameters) and dev/import_hf.py's llm.c output;
  - a fine-tuned (SFT) checkpoint (section 2), with its head `score`.
The AdamW moments a --save file holds are never exported; header[10] must be
0 or 1 and the file size exactly what the header describes (1024 + 4 n, or
1024 + 12 n with the moments), else the file is refused.

--arch picks the Hugging Face class; the default follows the checkpoint:
  lm          (default for an llm.c checkpoint) GPT2LMHeadModel. The output
              layer is tied to wte, as in llm.c: config.json has
              "tie_word_embeddings": true and lm_head.weight is not written,
              as Hugging Face's save_pretrained does with tied weights (a
              safetensors file cannot hold two names for one tensor);
              from_pretrained ties lm_head.weight to transformer.wte.weight
              when it loads the folder. A fine-tuned checkpoint exported with
              --arch lm leaves its classifier head out.
  classifier  (default for a fine-tuned checkpoint) GPT2ForSequenceClassification
              with num_labels, id2label/label2id, pad_token_id 50256 and
              problem_type. From an llm.c checkpoint, which has no head,
              score.weight is not written and Hugging Face initialises a
              random head of --num-labels outputs (default 2) when it loads it.
--num-labels and --label-names apply to --arch classifier only.

OUT_DIR receives:
  config.json         GPT2Config of the class (GPT-2 defaults except the sizes)
  model.safetensors   float32 tensors with the Hugging Face names:
                      transformer.wte.weight (vocab_size, C)  (llm.c's padding rows dropped)
                      transformer.wpe.weight, transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,
                      ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}, transformer.ln_f.{weight,bias},
                      and for a fine-tuned classifier score.weight (K, C)
                      Conv1D weights (c_attn, c_proj, c_fc) are stored (in, out), i.e.
                      transposed from llm.c's (out, in). The metadata records the class,
                      the checkpoint's kind and its step.
  vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
                      the GPT-2 tokenizer (copies of encoder.json / vocab.bpe), when the
                      tokenizer files are found (--vocab-dir, else ../shared/gpt2); skipped
                      with --no-tokenizer

Label names (classifier): --label-names, else CKPT.labels.json if present (the
format prepro_imdb.py writes beside a dataset: {"labels": [...]}; copy it next
to the checkpoint), else Hugging Face's default LABEL_0, LABEL_1, ...

Pooling caveat (classifier): this project pools each text at its true last
token. Hugging Face pools at a position found from pad_token_id (=
<|endoftext|> = 50256 for GPT-2): the token before the first 50256
(transformers < 4.49) or the last token that is not 50256 (>= 4.49). Both
agree with this project for right-padded input whose texts contain no 50256
(see the README).

Standard library only: the checkpoint is streamed tensor by tensor, so even the
124M model needs little memory.
"""

import argparse
import array
import json
import os
import shutil
import struct
import sys

LLMC_MAGIC, LLMC_VERSION = 20240326, 3
SFT_MAGIC, SFT_VERSION = 20261128, 1
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
EOT_ID = 50256
EOT = "<|endoftext|>"

# Per-layer tensors: llm.c name -> (HF suffix, is a Conv1D weight to transpose)
LAYER_TENSORS = [
    ("ln1w", "ln_1.weight", False), ("ln1b", "ln_1.bias", False),
    ("qkvw", "attn.c_attn.weight", True), ("qkvb", "attn.c_attn.bias", False),
    ("attprojw", "attn.c_proj.weight", True), ("attprojb", "attn.c_proj.bias", False),
    ("ln2w", "ln_2.weight", False), ("ln2b", "ln_2.bias", False),
    ("fcw", "mlp.c_fc.weight", True), ("fcb", "mlp.c_fc.bias", False),
    ("fcprojw", "mlp.c_proj.weight", True), ("fcprojb", "mlp.c_proj.bias", False),
]

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VOCAB_DIR = os.path.normpath(os.path.join(SCRIPT_DIR, "..", "..", "shared", "gpt2"))


class ExportError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------
# reading the checkpoint

def read_header(path):
    """Parse and check a checkpoint header against the file size.

    Returns a dict: kind ("sft" or "llmc"), max_seq_len, vocab_size, num_layers,
    num_heads, channels, padded_vocab_size, num_labels (None for llm.c), step,
    moments (whether the AdamW moments follow the parameters: header[10] = 1),
    shapes (list of (name, shape) in file order, with score for SFT files).
    Both kinds keep the step in header[9] and the moments flag in header[10]
    (0 in llm.c's own files).
    """
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ExportError(f"{path}: {size} bytes, too small for a checkpoint header")
    with open(path, "rb") as f:
        h = struct.unpack(f"<{HEADER_INTS}i", f.read(HEADER_BYTES))
    magic, version = h[0], h[1]
    if magic == SFT_MAGIC:
        if version != SFT_VERSION:
            raise ExportError(f"{path}: fine-tuned checkpoint version {version}, expected {SFT_VERSION}")
        kind, num_labels = "sft", h[8]
        if num_labels < 1:
            raise ExportError(f"{path}: invalid num_labels {num_labels} in the header")
    elif magic == LLMC_MAGIC:
        if version != LLMC_VERSION:
            raise ExportError(f"{path}: llm.c checkpoint version {version}, expected {LLMC_VERSION} (float32)")
        kind, num_labels = "llmc", None
    else:
        raise ExportError(f"{path}: bad magic {magic} (expected {SFT_MAGIC} fine-tuned or {LLMC_MAGIC} llm.c)")
    step, moments = h[9], h[10]
    if moments not in (0, 1):
        raise ExportError(f"{path}: header[10] is {moments}, not 0 or 1 (whether the AdamW moments follow)")
    if step < 0:
        raise ExportError(f"{path}: negative step count {step} in header[9]")
    maxT, V, L, H, C, Vp = h[2:8]
    if min(maxT, V, L, H, C) <= 0 or C % H != 0 or Vp < V:
        raise ExportError(f"{path}: inconsistent header (maxT {maxT}, V {V}, L {L}, H {H}, C {C}, Vp {Vp})")
    shapes = [("wte", (Vp, C)), ("wpe", (maxT, C)),
              ("ln1w", (L, C)), ("ln1b", (L, C)), ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
              ("attprojw", (L, C, C)), ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
              ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)),
              ("fcprojb", (L, C)), ("lnfw", (C,)), ("lnfb", (C,))]
    if num_labels is not None:
        shapes.append(("score", (num_labels, C)))
    total = sum(_numel(s) for _, s in shapes)
    expected = HEADER_BYTES + 4 * total * (3 if moments else 1)   # a --save file: parameters, then m and v
    if size != expected:
        what = "parameters and AdamW moments, header[10] = 1" if moments else "parameters only, header[10] = 0"
        raise ExportError(f"{path}: {size} bytes, expected {expected} for its header ({what}; "
                          f"L {L}, H {H}, C {C}, maxT {maxT}, Vp {Vp}, labels {num_labels}): truncated or corrupt")
    return {"kind": kind, "max_seq_len": maxT, "vocab_size": V, "num_layers": L, "num_heads": H,
            "channels": C, "padded_vocab_size": Vp, "num_labels": num_labels, "step": step,
            "moments": bool(moments), "shapes": shapes}


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def tensor_offsets(hdr):
    """{llm.c name: (byte offset in the file, shape)}."""
    out, pos = {}, HEADER_BYTES
    for name, shape in hdr["shapes"]:
        out[name] = (pos, shape)
        pos += 4 * _numel(shape)
    return out


def read_floats(f, offset, count):
    """count float32 values at byte `offset` as an array('f') in host order."""
    f.seek(offset)
    a = array.array("f")
    a.frombytes(f.read(4 * count))
    if len(a) != count:
        raise ExportError(f"{f.name}: unexpected end of file")
    if sys.byteorder != "little":
        a.byteswap()
    return a


def transpose(a, rows, cols):
    """(rows, cols) row-major array('f') -> (cols, rows) row-major."""
    t = array.array("f", bytes(4 * rows * cols))
    for j in range(cols):
        t[j * rows:(j + 1) * rows] = a[j::cols]
    return t


def le_bytes(a):
    if sys.byteorder != "little":
        a = array.array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


# ----------------------------------------------------------------------------
# the Hugging Face layout

def hf_plan(hdr, with_score=True):
    """[(hf_name, hf_shape, reader)] in file order; reader(f) -> array('f') in HF layout.
    score.weight is included when the checkpoint has a head and with_score is true."""
    L, C, V = hdr["num_layers"], hdr["channels"], hdr["vocab_size"]
    off = tensor_offsets(hdr)
    plan = []

    def whole(name, count=None):
        o, shape = off[name]
        n = _numel(shape) if count is None else count
        return lambda f: read_floats(f, o, n)

    def layer(name, i, transposed):
        o, shape = off[name]
        per = _numel(shape[1:])
        if not transposed:
            return lambda f: read_floats(f, o + 4 * i * per, per)
        rows, cols = shape[1], shape[2]           # llm.c (out, in)
        return lambda f: transpose(read_floats(f, o + 4 * i * per, per), rows, cols)

    plan.append(("transformer.wte.weight", [V, C], whole("wte", V * C)))   # padding rows dropped
    plan.append(("transformer.wpe.weight", [hdr["max_seq_len"], C], whole("wpe")))
    for i in range(L):
        for name, suffix, transposed in LAYER_TENSORS:
            shape = list(off[name][1][1:])
            if transposed:
                shape = shape[::-1]                # HF Conv1D: (in, out)
            plan.append((f"transformer.h.{i}.{suffix}", shape, layer(name, i, transposed)))
    plan.append(("transformer.ln_f.weight", [C], whole("lnfw")))
    plan.append(("transformer.ln_f.bias", [C], whole("lnfb")))
    if with_score and hdr["num_labels"] is not None:
        plan.append(("score.weight", [hdr["num_labels"], C], whole("score")))
    return plan


def write_safetensors(ckpt_path, out_path, plan, metadata):
    """Stream the tensors of `plan` from the checkpoint into a .safetensors file (F32).

    Layout: uint64 LE n, n bytes of JSON {name: {dtype, shape, data_offsets}, __metadata__},
    padded with spaces to a multiple of 8, then the tensors back to back.
    """
    header, pos = {"__metadata__": metadata}, 0
    for name, shape, _ in plan:
        n = 4 * _numel(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    tmp = out_path + ".tmp"
    try:
        with open(ckpt_path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(hbytes)))
            dst.write(hbytes)
            for name, shape, reader in plan:
                a = reader(src)
                if len(a) != _numel(shape):
                    raise ExportError(f"internal error: {name} has {len(a)} values, shape {shape}")
                dst.write(le_bytes(a))
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return 8 + len(hbytes) + pos


# ----------------------------------------------------------------------------
# config.json and the tokenizer

def label_names_for(ckpt_path, num_labels, names_arg):
    """(list of num_labels names, where they came from)."""
    if names_arg:
        names = [s.strip() for s in names_arg.split(",")]
        source = "--label-names"
    else:
        side = ckpt_path + ".labels.json"
        if not os.path.isfile(side):
            return [f"LABEL_{i}" for i in range(num_labels)], "default"
        names = read_labels_json(side)
        source = side
    if len(names) != num_labels or len(set(names)) != len(names) or not all(names):
        raise ExportError(f"{source}: need {num_labels} distinct non-empty label names, got {names}")
    return names, source


def read_labels_json(path):
    """Label names from a labels.json: {"labels": [...]} (prepro_imdb.py), {"id2label": {...}}, or [...]."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read label names ({e})")
    if isinstance(obj, dict) and "labels" in obj:
        obj = obj["labels"]
    elif isinstance(obj, dict) and "id2label" in obj:
        obj = [obj["id2label"][k] for k in sorted(obj["id2label"], key=int)]
    if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
        raise ExportError(f"{path}: expected {{\"labels\": [names]}} or a list of names")
    return obj


ARCH_CLASS = {"lm": "GPT2LMHeadModel", "classifier": "GPT2ForSequenceClassification"}


def make_config(hdr, num_labels=None, names=None, arch="classifier"):
    """config.json of GPT2ForSequenceClassification (arch "classifier") or GPT2LMHeadModel
    (arch "lm": output layer tied to wte); GPT-2's defaults except the sizes and labels."""
    conf = {
        "architectures": [ARCH_CLASS[arch]],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": hdr["num_layers"],
        "n_head": hdr["num_heads"],
        "n_embd": hdr["channels"],
        "n_inner": None,
        "n_positions": hdr["max_seq_len"],
        "n_ctx": hdr["max_seq_len"],
        "vocab_size": hdr["vocab_size"],
        "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
    }
    if arch == "lm":
        conf["tie_word_embeddings"] = True    # lm_head.weight is transformer.wte.weight
    else:
        conf.update({
            "pad_token_id": EOT_ID,
            "num_labels": num_labels,
            "id2label": {str(i): n for i, n in enumerate(names)},
            "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": "regression" if num_labels == 1 else "single_label_classification",
        })
    conf["torch_dtype"] = "float32"
    return conf


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def copy_tokenizer(vocab_dir, out_dir, max_len):
    """GPT-2 tokenizer files in Hugging Face's names. Returns True if written."""
    enc, bpe = os.path.join(vocab_dir, "encoder.json"), os.path.join(vocab_dir, "vocab.bpe")
    if not (os.path.isfile(enc) and os.path.isfile(bpe)):
        return False
    shutil.copyfile(enc, os.path.join(out_dir, "vocab.json"))
    shutil.copyfile(bpe, os.path.join(out_dir, "merges.txt"))
    write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": max_len,
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT,
        "add_prefix_space": False, "padding_side": "right"})
    write_json(os.path.join(out_dir, "special_tokens_map.json"),
               {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT})
    return True


# ----------------------------------------------------------------------------

def export(ckpt, out_dir, label_names=None, num_labels=None, vocab_dir=None, tokenizer=True, quiet=False,
           arch=None):
    """Export ckpt to out_dir as arch "lm" (GPT2LMHeadModel) or "classifier"
    (GPT2ForSequenceClassification); None: "classifier" for a fine-tuned checkpoint,
    "lm" for an llm.c one. Returns a summary dict."""
    hdr = read_header(ckpt)
    say = (lambda *a: None) if quiet else print
    if arch is None:
        arch = "classifier" if hdr["kind"] == "sft" else "lm"
    if arch not in ARCH_CLASS:
        raise ExportError(f"--arch {arch}: expected lm or classifier")
    if hdr["moments"]:
        say(f"note: {ckpt} holds the AdamW moments of step {hdr['step']} (a --save file); they are not exported")
    K, names, names_from = None, [], None
    if arch == "lm":
        given = [flag for flag, v in (("--num-labels", num_labels), ("--label-names", label_names)) if v is not None]
        if given:
            raise ExportError(f"{' and '.join(given)}: only with --arch classifier ({ckpt} exports as "
                              f"GPT2LMHeadModel{'' if hdr['kind'] == 'sft' else ' by default'})")
        if hdr["kind"] == "sft":
            say(f"note: {ckpt} is a fine-tuned checkpoint: its classifier head ({hdr['num_labels']} outputs) "
                f"is not exported with --arch lm")
    elif hdr["kind"] == "sft":
        if num_labels is not None and num_labels != hdr["num_labels"]:
            raise ExportError(f"{ckpt}: the checkpoint has {hdr['num_labels']} labels, --num-labels says {num_labels}")
        K = hdr["num_labels"]
    else:
        K = 2 if num_labels is None else num_labels
        if K < 1:
            raise ExportError("--num-labels must be at least 1")
        say(f"note: {ckpt} is an llm.c checkpoint without a classifier head: score.weight is not "
            f"written, and Hugging Face will initialise a random head of {K} outputs when loading it")
    if arch == "classifier":
        names, names_from = label_names_for(ckpt, K, label_names)
    os.makedirs(out_dir, exist_ok=True)
    plan = hf_plan(hdr, with_score=arch == "classifier")
    metadata = {"format": "pt", "source": "train_gpt2_sft", "architecture": ARCH_CLASS[arch],
                "checkpoint_kind": hdr["kind"], "step": str(hdr["step"])}
    st_path = os.path.join(out_dir, "model.safetensors")
    nbytes = write_safetensors(ckpt, st_path, plan, metadata)
    write_json(os.path.join(out_dir, "config.json"), make_config(hdr, K, names, arch))
    tok = False
    if tokenizer:
        vd = vocab_dir or DEFAULT_VOCAB_DIR
        tok = copy_tokenizer(vd, out_dir, hdr["max_seq_len"])
        if not tok:
            msg = f"{vd}: no encoder.json / vocab.bpe"
            if vocab_dir:
                raise ExportError(msg)
            say(f"note: {msg}; tokenizer files not written (use --vocab-dir)")
    say(f"wrote {out_dir}: config.json, model.safetensors ({len(plan)} tensors, {nbytes / 1e6:.1f} MB)"
        f"{', tokenizer files' if tok else ''}")
    sizes = (f"n_layer {hdr['num_layers']}, n_head {hdr['num_heads']}, n_embd {hdr['channels']}, "
             f"n_positions {hdr['max_seq_len']}, vocab {hdr['vocab_size']}")
    if arch == "lm":
        say(f"  GPT2LMHeadModel: {sizes}, output layer tied to wte (lm_head.weight not stored), step {hdr['step']}")
    else:
        say(f"  GPT2ForSequenceClassification: {sizes}, num_labels {K} ({', '.join(names)}; from {names_from}), "
            f"step {hdr['step']}")
    return {"header": hdr, "arch": arch, "num_labels": K, "names": names, "tensors": len(plan), "tokenizer": tok}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Export a train_gpt2_sft or llm.c checkpoint as a Hugging Face GPT2LMHeadModel or "
                    "GPT2ForSequenceClassification folder (standard library only).",
        epilog="Default --arch: classifier for a fine-tuned checkpoint, lm for an llm.c checkpoint "
               "(with or without the AdamW moments of a --save file, which are not exported).")
    ap.add_argument("ckpt", help="llm.c checkpoint (llm.c, train_gpt2_sft --task lm --save, import_hf.py), "
                    "or fine-tuned checkpoint (train_gpt2_sft --save)")
    ap.add_argument("out_dir", help="output folder (created if needed)")
    ap.add_argument("--arch", choices=("lm", "classifier"), default=None,
                    help="lm: GPT2LMHeadModel, output layer tied to wte (lm_head.weight not stored); "
                         "classifier: GPT2ForSequenceClassification (default: classifier for a fine-tuned "
                         "checkpoint, lm for an llm.c one)")
    ap.add_argument("--label-names", help="--arch classifier: comma-separated class names, e.g. neg,pos "
                    "(default: CKPT.labels.json, else LABEL_0, LABEL_1, ...)")
    ap.add_argument("--num-labels", type=int, default=None,
                    help="--arch classifier: head size for an llm.c checkpoint, which has none (default 2)")
    ap.add_argument("--vocab-dir", help="folder with encoder.json and vocab.bpe to copy as the "
                    f"tokenizer (default {DEFAULT_VOCAB_DIR} if present)")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    args = ap.parse_args(argv)
    try:
        export(args.ckpt, args.out_dir, args.label_names, args.num_labels, args.vocab_dir,
               not args.no_tokenizer, arch=args.arch)
    except (ExportError, OSError) as e:
        print(f"export_hf: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
