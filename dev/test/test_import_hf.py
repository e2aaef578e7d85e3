#!/usr/bin/env python3
"""
test_import_hf.py: dev/import_hf.py with the standard library alone.

    python3 dev/test/test_import_hf.py [--out-dir build/test_import_hf] [-v]

Small checkpoints (2 layers, 8 channels, 100 tokens; written from
dev/FORMATS.md by make_bad_inputs.py) are exported with dev/export_hf.py and
imported back; the safetensors files are also rewritten by hand here:
  - a fine-tuned checkpoint and an llm.c one come back byte for byte (the
    fine-tuned step from the safetensors metadata);
  - attn.bias buffers in BOOL and attn.masked_bias in U8 (as some exports
    write them) and a tied lm_head.weight are dropped, not refused;
  - BF16 and F16 tensors give the float32 values they hold;
  - a model.safetensors given as a file, through the command line;
  - llm.c checkpoints as GPT2LMHeadModel (export_hf.py's default for them):
    config.json (architectures, tie_word_embeddings, no labels), the tensor
    names (transformer.*, no lm_head.weight, no score.weight); a --save file of
    `--task lm` (header[9] step, header[10] = 1, the AdamW moments after the
    parameters, a run identity in [11..17]) exports to the same folder as the
    file without them, step aside; import_hf of the folder gives back the llm.c
    file byte for byte; a tied lm_head.weight is accepted, an untied one
    (other values) or one of the wrong shape refused; --arch classifier /
    --arch lm / --num-labels without --arch; truncated files, header[10] = 2,
    header[10] = 1 without the moments and moments with header[10] = 0 are
    refused by export_hf.py with one "export_hf: error:" line naming the file,
    exit 1 and no output folder;
  - bad inputs (a parameter in BOOL or I64, a header past the end of the file,
    bad JSON, data_offsets outside the file, a missing tensor, a wrong shape,
    score.bias, config.json that disagrees or is missing, an empty folder, a
    missing path, a 3-byte file, an unreadable pytorch_model.bin): exit 1 with
    one "import_hf: error:" line naming the file or tensor, and no output file.
The PyTorch side (pytorch_model.bin, files written by torch) is checked by
`dev/train_gpt2_sft.py selftest`.

Ends with "N passed, N failed"; exits 1 on any failure.
"""

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = os.path.dirname(HERE)
ROOT = os.path.dirname(DEV)
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
sys.path.insert(0, DEV)

import export_hf  # noqa: E402
import import_hf  # noqa: E402
import make_bad_inputs as mbi  # noqa: E402

CFG = mbi.Config(L=2, H=2, C=8, max_t=16, vocab=100, padded=128)
IMPORT = [sys.executable, os.path.join(DEV, "import_hf.py")]
EXPORT = [sys.executable, os.path.join(DEV, "export_hf.py")]


def with_moments(ckpt, step=0, identity=False, flag=1, seed=3):
    """ckpt (llm.c or fine-tuned, no moments) as a --save file: header[9] = step,
    header[10] = flag, optionally a run identity in [11..17], then m and v
    (random values, n floats each: the checkpoint's parameters)."""
    n = (len(ckpt) - mbi.HEADER_BYTES) // 4
    h = list(struct.unpack("<%di" % mbi.HEADER_INTS, ckpt[:mbi.HEADER_BYTES]))
    h[9], h[10] = step, flag
    if identity:
        h[11:18] = [100, 8, 2, 16, 1036831949, 12345, 0]   # total_steps .. seed (ignored by export)
    rng = random.Random(seed)
    moments = struct.pack("<%df" % (2 * n), *(rng.uniform(-1, 1) for _ in range(2 * n)))
    return struct.pack("<%di" % mbi.HEADER_INTS, *h) + ckpt[mbi.HEADER_BYTES:] + moments


def folder_files(folder):
    """{file name: bytes} of an exported folder."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def read_st(path):
    """(metadata, {name: (dtype, shape, raw bytes)}) in file order."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    return meta, {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def write_st(path, meta, tensors):
    header, chunks, pos = {"__metadata__": meta}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def converted(raw, dtype):
    """float32 little-endian bytes as BF16 (truncated: the upper halves) or F16 (struct's rounding)."""
    if dtype == "BF16":
        return b"".join(raw[i + 2:i + 4] for i in range(0, len(raw), 4))
    values = struct.unpack("<%df" % (len(raw) // 4), raw)
    return struct.pack("<%de" % len(values), *values)


def rounded_checkpoint(data, dtype):
    """A checkpoint whose float32 values (after the header) hold what `dtype` keeps of them."""
    body = data[mbi.HEADER_BYTES:]
    if dtype == "BF16":
        body = b"".join(b"\0\0" + body[i + 2:i + 4] for i in range(0, len(body), 4))
    else:
        values = struct.unpack("<%de" % (len(body) // 4), converted(body, "F16"))
        body = struct.pack("<%df" % len(values), *values)
    return data[:mbi.HEADER_BYTES] + body


class Results:
    def __init__(self, verbose):
        self.passed = self.failed = 0
        self.verbose = verbose

    def check(self, name, ok, detail=""):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  (' + detail + ')' if detail and (not ok or self.verbose) else ''}")


def main():
    ap = argparse.ArgumentParser(description="dev/import_hf.py, standard library only")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build", "test_import_hf"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    out = args.out_dir
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    R = Results(args.verbose)

    def path(*names):
        return os.path.join(out, *names)

    def write(name, data):
        with open(path(name), "wb") as f:
            f.write(data)
        return path(name)

    def imported(src, n_head=None):
        """The bytes import_hf writes, or the error it gives (which fails the check)."""
        dst = path("imported.bin")
        if os.path.exists(dst):
            os.remove(dst)
        try:
            import_hf.import_hf(src, dst, n_head)
        except import_hf.HFImportError as e:
            print(f"      import_hf: error: {e}")
            return None
        with open(dst, "rb") as f:
            return f.read()

    sft = mbi.sft_checkpoint(CFG, num_labels=3, step=7, seed=5)
    llmc = mbi.llmc_checkpoint(CFG, seed=6)
    export_hf.export(write("sft.bin", sft), path("hf_sft"), tokenizer=False, quiet=True)
    export_hf.export(write("llmc.bin", llmc), path("hf_llmc"), tokenizer=False, quiet=True)
    st = path("hf_sft", "model.safetensors")
    meta, tensors = read_st(st)

    # --- valid inputs -----------------------------------------------------------
    R.check("fine-tuned checkpoint: export, import: byte-identical, step 7 from the metadata", imported(path("hf_sft")) == sft)
    R.check("llm.c checkpoint: export, import: byte-identical", imported(path("hf_llmc")) == llmc)

    def variant(name, edit, with_config=True):
        """A folder holding the exported model.safetensors changed by edit(tensors) (a dict to change)."""
        d = path(name)
        os.makedirs(d)
        if with_config:
            shutil.copy(path("hf_sft", "config.json"), d)
        t = dict(tensors)
        edit(t)
        write_st(os.path.join(d, "model.safetensors"), meta, t)
        return d

    def add_buffers(t):
        for i in range(CFG.L):
            t[f"transformer.h.{i}.attn.bias"] = ("BOOL", [1, 1, CFG.max_t, CFG.max_t], bytes(CFG.max_t ** 2))
            t[f"transformer.h.{i}.attn.masked_bias"] = ("U8", [], b"\x01")
        t["lm_head.weight"] = tensors["transformer.wte.weight"]
    R.check("attn.bias in BOOL, attn.masked_bias in U8 and lm_head.weight are dropped: byte-identical",
            imported(variant("hf_buffers", add_buffers)) == sft)
    for dtype in ("BF16", "F16"):
        def to_dtype(t, dtype=dtype):
            for k, (_, shape, raw) in tensors.items():
                t[k] = (dtype, shape, converted(raw, dtype))
        R.check(f"{dtype} tensors give the float32 values they hold",
                imported(variant("hf_" + dtype, to_dtype)) == rounded_checkpoint(sft, dtype))
    r = subprocess.run(IMPORT + ["--input", st, "--out", path("cli.bin"), "--n-head", "2"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    R.check("command line, model.safetensors given as a file: exit 0, the same bytes",
            r.returncode == 0 and not r.stderr and "wrote" in r.stdout and open(path("cli.bin"), "rb").read() == sft,
            r.stderr.strip())

    # --- language model: llm.c checkpoints as GPT2LMHeadModel ---------------------
    lm_checks(R, path, write, imported, llmc, sft)

    # --- bad inputs -------------------------------------------------------------
    def bad(name, src, expect, extra=()):
        dst = path(name + ".bin")
        r = subprocess.run(IMPORT + ["--input", src, "--out", dst] + list(extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith("import_hf: error: ")
              and expect in lines[0] and not os.path.exists(dst) and not os.path.exists(dst + ".tmp"))
        R.check(f"bad input {name}: one error line naming {expect!r}", ok,
                f"exit {r.returncode}: {r.stderr.strip()[-300:]}")

    def set_dtype(name, dtype, width):
        def edit(t):
            _, shape, raw = t[name]
            t[name] = (dtype, shape, bytes(width * (len(raw) // 4)))
        return edit
    bad("parameter_bool", variant("bad_bool", set_dtype("transformer.h.0.ln_1.weight", "BOOL", 1)),
        "transformer.h.0.ln_1.weight has dtype BOOL")
    bad("parameter_i64", variant("bad_i64", set_dtype("transformer.wte.weight", "I64", 8)),
        "transformer.wte.weight has dtype I64")
    raw = open(st, "rb").read()
    bad("header_past_end", write("past_end.safetensors", struct.pack("<Q", len(raw)) + raw[8:]), "exceeds the file size",
        ["--n-head", "2"])
    (n,) = struct.unpack("<Q", raw[:8])
    bad("bad_json", write("bad_json.safetensors", raw[:8] + b"{" + b" " * (n - 1) + raw[8 + n:]), "bad safetensors JSON",
        ["--n-head", "2"])
    bad("offsets_outside_file", write("cut.safetensors", raw[:-4]), "data_offsets", ["--n-head", "2"])
    bad("missing_tensor", variant("bad_missing", lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")),
        "missing tensor h.1.mlp.c_fc.bias")

    def transposed_shape(t):
        dtype, shape, data = t["transformer.h.0.attn.c_attn.weight"]
        t["transformer.h.0.attn.c_attn.weight"] = (dtype, shape[::-1], data)
    bad("wrong_shape", variant("bad_shape", transposed_shape), "h.0.attn.c_attn.weight has shape [24, 8]")
    bad("score_bias", variant("bad_score_bias", lambda t: t.update({"score.bias": ("F32", [3], bytes(12))})),
        "score.bias")
    d = variant("bad_config", lambda t: None)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"n_layer": 3, "n_head": 2, "n_embd": 8}, f)
    bad("config_n_layer", d, "n_layer=3")
    bad("no_config_no_n_head", variant("bad_no_config", lambda t: None, with_config=False), "--n-head")
    os.makedirs(path("empty_folder"))
    bad("empty_folder", path("empty_folder"), "no model.safetensors or pytorch_model.bin")
    bad("missing_path", path("no_such_folder"), "no_such_folder")
    bad("three_bytes", write("tiny.safetensors", b"abc"), "too small")
    os.makedirs(path("bin_folder"))
    bad("unreadable_pytorch_model_bin", write(os.path.join("bin_folder", "pytorch_model.bin"), b"not a pickle"),
        "pytorch_model.bin")

    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


def lm_checks(R, path, write, imported, llmc, sft):
    """llm.c checkpoints (with and without the AdamW moments) as GPT2LMHeadModel."""
    L, C, V = CFG.L, CFG.C, CFG.vocab
    lm = path("hf_llmc")                                   # exported above with the default --arch
    conf = json.load(open(os.path.join(lm, "config.json")))
    want = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "tie_word_embeddings": True,
            "n_layer": L, "n_head": CFG.H, "n_embd": C, "n_positions": CFG.max_t, "n_ctx": CFG.max_t,
            "vocab_size": V, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "bos_token_id": mbi.VOCAB - 1, "eos_token_id": mbi.VOCAB - 1}
    wrong = {k: (conf.get(k), v) for k, v in want.items() if conf.get(k) != v}
    wrong.update({k: conf[k] for k in ("num_labels", "id2label", "label2id", "problem_type") if k in conf})
    R.check("llm.c checkpoint, default --arch: config.json of GPT2LMHeadModel, tied, no labels", not wrong, str(wrong))
    meta, tensors = read_st(os.path.join(lm, "model.safetensors"))
    names = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    names |= {f"transformer.h.{i}.{suffix}" for i in range(L) for _, suffix, _ in export_hf.LAYER_TENSORS}
    R.check("GPT2LMHeadModel: tensors transformer.* (no lm_head.weight, no score.weight), wte without padding rows",
            set(tensors) == names and tensors["transformer.wte.weight"][1] == [V, C]
            and meta.get("architecture") == "GPT2LMHeadModel", str(sorted(set(tensors) ^ names)))
    ref_files = folder_files(lm)

    # a --save file of an LM run: the moments are ignored
    def exported(name, data, *flags):
        src = write(name + ".bin", data)
        r = subprocess.run(EXPORT + [src, path(name), "--no-tokenizer"] + list(flags),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return r, (folder_files(path(name)) if r.returncode == 0 else {})
    r, files = exported("lm_moments0", with_moments(llmc, step=0))
    R.check("llm.c checkpoint + AdamW moments (header[10] = 1, step 0): the same folder, byte for byte",
            r.returncode == 0 and files == ref_files and "not exported" in r.stdout, r.stderr.strip())
    r, files = exported("lm_moments42", with_moments(llmc, step=42, identity=True))
    meta42, tensors42 = read_st(os.path.join(path("lm_moments42"), "model.safetensors")) if files else ({}, {})
    R.check("llm.c checkpoint + moments, step 42, run identity: same config.json and tensors, metadata step 42",
            r.returncode == 0 and files.get("config.json") == ref_files["config.json"]
            and tensors42 == tensors and meta42 == dict(meta, step="42"), r.stderr.strip())
    R.check("GPT2LMHeadModel folder: import_hf gives back the llm.c checkpoint byte for byte (16 tensors, header)",
            imported(lm) == llmc)
    R.check("moments file exported, imported: the llm.c checkpoint without the moments, byte for byte",
            imported(path("lm_moments42")) == llmc)

    # lm_head.weight in the file: tied (equal to wte) is accepted, anything else refused
    def lm_variant(name, head):
        d = path(name)
        os.makedirs(d)
        shutil.copy(os.path.join(lm, "config.json"), d)
        t = dict(tensors)
        t["lm_head.weight"] = head
        write_st(os.path.join(d, "model.safetensors"), meta, t)
        return d
    wte = tensors["transformer.wte.weight"]
    R.check("GPT2LMHeadModel with a tied lm_head.weight stored: imported byte for byte",
            imported(lm_variant("lm_tied_head", wte)) == llmc)
    other = bytearray(wte[2])
    other[5] ^= 0x01                                       # one value one ulp off
    lm_bad_import(R, "lm_untied_head", lm_variant("lm_untied_head", ("F32", wte[1], bytes(other))),
                  "lm_head.weight differs from wte.weight", path)
    lm_bad_import(R, "lm_head_shape", lm_variant("lm_head_shape", ("F32", [V - 1, C], wte[2][:4 * (V - 1) * C])),
                  "lm_head.weight has shape [99, 8]", path)

    # --arch
    r, files = exported("llmc_classifier", llmc, "--arch", "classifier", "--num-labels", "3")
    c = json.loads(files.get("config.json", b"{}"))
    _, t = read_st(os.path.join(path("llmc_classifier"), "model.safetensors")) if files else ({}, {})
    R.check("llm.c checkpoint --arch classifier --num-labels 3: GPT2ForSequenceClassification, no score.weight",
            r.returncode == 0 and c.get("architectures") == ["GPT2ForSequenceClassification"]
            and c.get("num_labels") == 3 and set(t) == names, r.stderr.strip())
    r, files = exported("sft_default", sft)
    c = json.loads(files.get("config.json", b"{}"))
    R.check("fine-tuned checkpoint, default --arch: GPT2ForSequenceClassification with its 3 labels",
            r.returncode == 0 and c.get("architectures") == ["GPT2ForSequenceClassification"]
            and c.get("num_labels") == 3, r.stderr.strip())
    r, files = exported("sft_lm", with_moments(sft, step=7), "--arch", "lm")
    _, t = read_st(os.path.join(path("sft_lm"), "model.safetensors")) if files else ({}, {})
    _, t_sft = read_st(path("hf_sft", "model.safetensors"))
    R.check("fine-tuned checkpoint (with moments) --arch lm: GPT2LMHeadModel, its body without score.weight",
            r.returncode == 0
            and json.loads(files.get("config.json", b"{}")).get("architectures") == ["GPT2LMHeadModel"]
            and t == {k: v for k, v in t_sft.items() if k != "score.weight"} and "not exported" in r.stdout,
            r.stderr.strip())

    # refused by export_hf.py: one line naming the file, exit 1, no folder
    cases = [
        ("truncated_lm", llmc[:-4], (), "bytes, expected"),
        ("truncated_moments", with_moments(llmc)[:-4], (), "header[10] = 1"),
        ("moments_without_flag", with_moments(llmc, flag=0), (), "header[10] = 0"),
        ("flag_without_moments", with_moments(llmc)[:len(llmc)], (), "header[10] = 1"),
        ("header10_is_2", with_moments(llmc, flag=2)[:len(llmc)], (), "header[10] is 2"),
        ("header10_is_2_moments", with_moments(llmc, flag=2), (), "header[10] is 2"),
        ("negative_step", with_moments(llmc, step=-1), (), "negative step"),
        ("num_labels_without_arch", llmc, ("--num-labels", "3"), "--arch classifier"),
        ("label_names_with_arch_lm", sft, ("--arch", "lm", "--label-names", "a,b,c"), "--arch classifier"),
    ]
    for name, data, flags, expect in cases:
        src = write(name + ".bin", data)
        dst = path("hf_" + name)
        r = subprocess.run(EXPORT + [src, dst, "--no-tokenizer"] + list(flags),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith("export_hf: error: ")
              and src in lines[0] and expect in lines[0] and not os.path.exists(dst))
        R.check(f"export_hf.py refuses {name}: one error line naming the file and {expect!r}, exit 1, no folder",
                ok, f"exit {r.returncode}: {r.stderr.strip()[-300:]}")


def lm_bad_import(R, name, src, expect, path):
    dst = path(name + ".bin")
    r = subprocess.run(IMPORT + ["--input", src, "--out", dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith("import_hf: error: ")
          and expect in lines[0] and "model.safetensors" in lines[0]
          and not os.path.exists(dst) and not os.path.exists(dst + ".tmp"))
    R.check(f"bad input {name}: one error line naming {expect!r}", ok,
            f"exit {r.returncode}: {r.stderr.strip()[-300:]}")


if __name__ == "__main__":
    sys.exit(main())
