#!/usr/bin/env python3
"""
Convert a Hugging Face GPT-2 checkpoint into the checkpoint train_gpt2_sft reads.

    python3 dev/import_hf.py --input path/to/gpt2 --out gpt2_124M.bin [--n-head H]

--input is a folder holding model.safetensors (preferred) or
pytorch_model.bin and usually config.json, or one of those files. The output
is llm.c's GPT-2 checkpoint (dev/FORMATS.md section 1) for any Hugging Face
GPT-2 without a classifier head: GPT2LMHeadModel (e.g. openai-community/gpt2,
or a folder written by dev/export_hf.py --arch lm), GPT2Model, or a
GPT2ForSequenceClassification without score.weight. When the input has a
classifier head `score.weight` (GPT2ForSequenceClassification, e.g. a folder
written by dev/export_hf.py --arch classifier), the output is the fine-tuned
format (section 2).

Hugging Face names map to llm.c's: an optional "transformer." prefix is
dropped; wte is padded with zero rows to a multiple of 128 tokens; the Conv1D
weights (c_attn, c_proj, c_fc), stored (in, out), are transposed to llm.c's
(out, in); the h.{i}.* tensors are stacked over layers. The attention-mask
buffers attn.bias and attn.masked_bias (some exports write them as BOOL or
U8) are dropped without being read. llm.c's output layer is wte itself
(tied), so lm_head.weight, which Hugging Face usually leaves out of a tied
model's model.safetensors, is not stored either; when the file has one it
must equal wte.weight, else the import is refused (an untied output layer
cannot be held). A safetensors file exported by dev/export_hf.py records the
step in its metadata; for the fine-tuned format it is restored into
header[9]. The llm.c output has llm.c's header (slots 8 and up zero: no
step, no AdamW moments).

model.safetensors needs only the standard library (F32, F16 and BF16 tensors,
one tensor in memory at a time). pytorch_model.bin is a pickle that only
PyTorch reads: it needs an interpreter with torch (Debian's python3-torch, in
/usr/bin/python3).
"""

import argparse
import array
import json
import mmap
import os
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_hf import (HEADER_INTS, LAYER_TENSORS, LLMC_MAGIC, LLMC_VERSION, SFT_MAGIC,  # noqa: E402
                       SFT_VERSION, le_bytes, transpose)

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
DROPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not parameters
LM_HEAD = "lm_head.weight"                               # tied to wte: checked equal, not stored


class HFImportError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _dropped(name):
    return name.endswith(DROPPED_SUFFIXES)


# ----------------------------------------------------------------------------
# reading the tensors: {name without "transformer.": (shape, loader)}, where
# loader() returns the values as a flat array('f') in host order

def _f32_from(dtype, buf):
    """Raw little-endian tensor bytes of `dtype` as array('f')."""
    a = array.array("f")
    if dtype == "F32":
        a.frombytes(buf)
    elif dtype == "BF16":  # the upper half of a float32: put each 2 bytes at the top of 4 zero bytes
        wide = bytearray(2 * len(buf))
        wide[2::4], wide[3::4] = buf[0::2], buf[1::2]
        a.frombytes(bytes(wide))
    else:  # F16, converted by struct in chunks so that no list of a whole tensor is built
        step = 1 << 20
        for start in range(0, len(buf) // 2, step):
            count = min(step, len(buf) // 2 - start)
            a.extend(struct.unpack_from("<%de" % count, buf, 2 * start))
    if sys.byteorder != "little" and dtype != "F16":
        a.byteswap()
    return a


def read_safetensors(path):
    """The tensors of a .safetensors file and its __metadata__.

    Layout: uint64 LE header length n, n bytes of JSON {name: {dtype, shape,
    data_offsets: [begin, end]}, "__metadata__": {...}}, then the data, with
    offsets relative to its start. The file is memory-mapped; each loader
    reads one tensor."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise HFImportError(f"{path}: cannot open ({e.strerror or e})")
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise HFImportError(f"{path}: {size} bytes, too small for a safetensors file")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > size:
        raise HFImportError(f"{path}: safetensors header length {n} exceeds the file size {size}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise HFImportError(f"{path}: bad safetensors JSON header ({e})")
    metadata = header.pop("__metadata__", None) or {}
    base, end_of_file = 8 + n, size - 8 - n
    tensors = {}
    for name, info in header.items():
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        if _dropped(key):
            continue  # whatever its dtype (BOOL, U8, ...): never read
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise HFImportError(f"{path}: tensor {name} has no valid dtype, shape and data_offsets")
        if dtype not in DTYPE_BYTES:
            raise HFImportError(f"{path}: tensor {name} has dtype {dtype}; parameters must be F32, F16 or BF16")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= end_of_file
                and end - begin == _numel(shape) * DTYPE_BYTES[dtype] and min(shape, default=1) >= 0):
            raise HFImportError(f"{path}: tensor {name} has data_offsets {[begin, end]} that do not fit "
                                f"its shape {shape} and dtype {dtype} in the file")
        tensors[key] = (shape, lambda d=dtype, b=base + begin, e=base + end: _f32_from(d, data[b:e]))
    return tensors, metadata


def read_pytorch_bin(path):
    """The tensors of a pytorch_model.bin (torch.save of a state dict): needs torch."""
    try:
        import torch
    except ImportError:
        raise HFImportError(f"{path}: reading pytorch_model.bin needs PyTorch (apt-get install python3-torch; "
                            f"run /usr/bin/python3), or convert it to model.safetensors")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:  # older torch without weights_only
            obj = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report any unpickling failure as one line
        raise HFImportError(f"{path}: cannot load with torch.load ({e})")
    if not isinstance(obj, dict):
        raise HFImportError(f"{path}: expected a state dict")
    tensors = {}
    for name, t in obj.items():
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        if not torch.is_tensor(t) or _dropped(key):
            continue
        if not t.is_floating_point():
            raise HFImportError(f"{path}: tensor {name} has dtype {t.dtype}; parameters must be floating point")
        tensors[key] = (list(t.shape), lambda t=t: array.array("f", t.to(torch.float32).contiguous().numpy().tobytes()))
    return tensors, {}


def load_hf(input_path):
    """(tensors, config dict or None, metadata) of a folder or a model file."""
    if os.path.isdir(input_path):
        found = [os.path.join(input_path, n) for n in ("model.safetensors", "pytorch_model.bin")
                 if os.path.isfile(os.path.join(input_path, n))]
        if not found:
            raise HFImportError(f"{input_path}: no model.safetensors or pytorch_model.bin in this folder")
        file_path, config_dir = found[0], input_path
    elif os.path.isfile(input_path):
        file_path, config_dir = input_path, os.path.dirname(os.path.abspath(input_path))
    else:
        raise HFImportError(f"{input_path}: no such file or folder")
    if file_path.endswith(".safetensors"):
        tensors, metadata = read_safetensors(file_path)
    else:
        tensors, metadata = read_pytorch_bin(file_path)
    config = None
    config_path = os.path.join(config_dir, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise HFImportError(f"{config_path}: cannot read ({e})")
        if not isinstance(config, dict):
            raise HFImportError(f"{config_path}: expected a JSON object")
    return file_path, tensors, config, metadata


# ----------------------------------------------------------------------------
# writing the checkpoint

def import_hf(input_path, out_path, n_head=None):
    """Convert; returns a dict with the configuration and the head size (None: llm.c format)."""
    file_path, tensors, config, metadata = load_hf(input_path)

    def shape_of(name):
        if name not in tensors:
            raise HFImportError(f"{file_path}: missing tensor {name}")
        return tensors[name][0]

    wte, wpe = shape_of("wte.weight"), shape_of("wpe.weight")
    if len(wte) != 2 or len(wpe) != 2 or wte[1] != wpe[1] or min(wte + wpe) < 1:
        raise HFImportError(f"{file_path}: wte.weight {wte} and wpe.weight {wpe} must be (vocab, C) and (positions, C)")
    (V, C), maxT = wte, wpe[0]
    L = 0
    while f"h.{L}.ln_1.weight" in tensors:
        L += 1
    if L == 0:
        raise HFImportError(f"{file_path}: no transformer blocks (h.0.*) found")
    H = n_head
    if config is not None:
        H = H or int(config.get("n_head", config.get("num_attention_heads", 0)) or 0)
        for key, have in (("n_layer", L), ("n_embd", C), ("vocab_size", V)):
            if key in config and int(config[key]) != have:
                raise HFImportError(f"{input_path}: config.json {key}={config[key]} but the tensors say {have}")
    if not H:
        raise HFImportError(f"{input_path}: no config.json with n_head; pass --n-head")
    if C % H != 0:
        raise HFImportError(f"{input_path}: {C} channels are not divisible by {H} heads")
    if "score.bias" in tensors:
        raise HFImportError(f"{file_path}: score.bias present; the head must have no bias")
    K = shape_of("score.weight")[0] if "score.weight" in tensors else None
    Vp = (V + 127) // 128 * 128
    if LM_HEAD in tensors and shape_of(LM_HEAD) != [V, C]:
        raise HFImportError(f"{file_path}: tensor {LM_HEAD} has shape {shape_of(LM_HEAD)}, expected {[V, C]} "
                            f"(the output layer tied to wte.weight)")

    # every tensor the output needs, with its Hugging Face shape, in llm.c's order
    layer_shapes = {"ln_1.weight": [C], "ln_1.bias": [C], "attn.c_attn.weight": [C, 3 * C],
                    "attn.c_attn.bias": [3 * C], "attn.c_proj.weight": [C, C], "attn.c_proj.bias": [C],
                    "ln_2.weight": [C], "ln_2.bias": [C], "mlp.c_fc.weight": [C, 4 * C], "mlp.c_fc.bias": [4 * C],
                    "mlp.c_proj.weight": [4 * C, C], "mlp.c_proj.bias": [C]}
    plan = [("wte.weight", [V, C], False), ("wpe.weight", [maxT, C], False)]
    for _, suffix, transposed in LAYER_TENSORS:
        plan += [(f"h.{i}.{suffix}", layer_shapes[suffix], transposed) for i in range(L)]
    plan += [("ln_f.weight", [C], False), ("ln_f.bias", [C], False)]
    if K is not None:
        plan.append(("score.weight", [K, C], False))
    for name, shape, _ in plan:
        if shape_of(name) != shape:
            raise HFImportError(f"{file_path}: tensor {name} has shape {shape_of(name)}, expected {shape}")

    step = metadata.get("step", "0") if metadata.get("source") == "train_gpt2_sft" else "0"
    step = int(step) if isinstance(step, str) and step.isdigit() else 0
    slots = [maxT, V, L, H, C, Vp]
    ints = ([LLMC_MAGIC, LLMC_VERSION] + slots) if K is None else ([SFT_MAGIC, SFT_VERSION] + slots + [K, step])
    header = struct.pack("<%di" % HEADER_INTS, *(ints + [0] * (HEADER_INTS - len(ints))))
    tmp = out_path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for name, shape, transposed in plan:
                values = tensors[name][1]()
                if name == "wte.weight" and LM_HEAD in tensors and tensors[LM_HEAD][1]().tobytes() != values.tobytes():
                    raise HFImportError(f"{file_path}: {LM_HEAD} differs from wte.weight: the output layer is not "
                                        f"tied to the token embeddings, which llm.c's checkpoint format cannot hold")
                if transposed:  # HF Conv1D (in, out) -> llm.c (out, in)
                    values = transpose(values, shape[0], shape[1])
                f.write(le_bytes(values))
                if name == "wte.weight":
                    f.write(bytes(4 * (Vp - V) * C))  # padding rows, never looked up
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"max_seq_len": maxT, "vocab_size": V, "num_layers": L, "num_heads": H, "channels": C,
            "num_labels": K, "step": step}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert a Hugging Face GPT-2 checkpoint (model.safetensors: standard "
                                             "library only; pytorch_model.bin: needs torch) for train_gpt2_sft.")
    ap.add_argument("--input", required=True, help="folder, model.safetensors or pytorch_model.bin")
    ap.add_argument("--out", required=True, help="the checkpoint to write")
    ap.add_argument("--n-head", type=int, default=None, help="heads, when there is no config.json")
    args = ap.parse_args(argv)
    try:
        r = import_hf(args.input, args.out, args.n_head)
    except (HFImportError, OSError) as e:
        print(f"import_hf: error: {e}", file=sys.stderr)
        return 1
    kind = "llm.c GPT-2 checkpoint" if r["num_labels"] is None else \
        f"fine-tuned checkpoint (num_labels {r['num_labels']}, step {r['step']})"
    print(f"wrote {args.out}: {kind}; layers {r['num_layers']}, heads {r['num_heads']}, channels {r['channels']}, "
          f"positions {r['max_seq_len']}, vocabulary {r['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
