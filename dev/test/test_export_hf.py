#!/usr/bin/env python3
"""
test_export_hf.py: dev/export_hf.py and dev/classify.py against the PyTorch
reference and the trainer's own predictions.

    /usr/bin/python3 dev/test/test_export_hf.py [--binary ./train_gpt2_sft] [--out-dir build/test_export] [-v]

Needs torch + numpy (the reference, dev/train_gpt2_sft.py) and a built trainer.
Uses no IMDB data: it writes its own small random datasets.

  1. A tiny GPT-2 (2 layers, 4 heads, 64 channels, 128 positions; the same random
     weights as build/ref/gpt2_tiny.bin) is fine-tuned for a few steps by the
     trainer, three times: 2 classes, 3 classes, and regression (1 output).
  2. Each checkpoint is exported with export_hf.py. Checked: config.json; the
     safetensors layout (header, alignment, contiguous offsets, F32, names);
     every tensor bit-equal to the reference's to_hf_state_dict; dev/import_hf.py
     of the folder gives back the checkpoint byte for byte, step included (from
     the safetensors metadata), less the training state a --save file holds.
  3. The reference GPT2ForSequenceClassification (float64), loaded from the
     exported safetensors, computes logits for every example; softmax(logits)
     must match the trainer's --predict p_k columns within 1e-5 (regression: the
     value column), and the predicted class must be the argmax.
  4. An llm.c checkpoint with --arch classifier exports without score.weight and
     imports back identical.
  4b. Language model: the llm.c checkpoint as the trainer's `--task lm --save`
     writes it (header[9] step, header[10] = 1, the AdamW moments after the
     parameters) exports by default as GPT2LMHeadModel: config.json (tied, no
     labels), no lm_head.weight, every tensor bit-equal to to_hf_state_dict and
     to the export of the file without moments; import_hf gives back the llm.c
     file byte for byte; the tied-output logits h @ wte^T computed from the
     folder equal the reference's at every position of texts up to the
     model's 128 positions (the reference pools each prefix with score = wte).
  5. classify.py: its probabilities equal --predict's on the same tokens (texts
     with <|endoftext|>, non-ASCII, a long one that is truncated head / tail /
     head+tail) and the reference's within 1e-5; --file gives the same output;
     label names from --label-names and CKPT.labels.json; clean errors.
  6. If `transformers` is importable, from_pretrained(folder) must give the same
     logits for right-padded input (skipped otherwise): GPT2ForSequenceClassification
     for the fine-tuned exports, GPT2LMHeadModel (the tied logits) for 4b.

Ends with "N passed, N failed[, N skipped]"; exits 1 on any failure.
"""

import argparse
import array
import csv
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = os.path.dirname(HERE)
ROOT = os.path.dirname(DEV)
sys.path.insert(0, ROOT)
sys.path.insert(0, DEV)

import torch  # noqa: E402

import import_hf as hf_import  # noqa: E402
import prepro_imdb  # noqa: E402
import train_gpt2_sft as ref  # noqa: E402

TOL = 1e-5
EOT_ID = 50256


class Results:
    def __init__(self, verbose):
        self.passed = self.failed = self.skipped = 0
        self.verbose = verbose

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        show = detail and (not ok or self.verbose)
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  (' + detail + ')' if show else ''}", flush=True)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name}  ({why})", flush=True)


def run(cmd, verbose=False, **kw):
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if verbose:
        print(f"  $ {' '.join(cmd)}  [{time.time() - t0:.1f} s, exit {r.returncode}]")
    return r


# ----------------------------------------------------------------------------
# data

def random_examples(n, num_labels, seed, max_len=128):
    """(label, stars, tokens) with lengths 1, max_len and random ones; ids < 50256 (no <|endoftext|>)."""
    rng = random.Random(seed)
    lengths = [1, max_len] + [rng.randint(2, 100) for _ in range(n - 2)]
    rng.shuffle(lengths)
    out = []
    for i, n_tok in enumerate(lengths):
        label = i % num_labels if num_labels >= 2 else -1
        stars = rng.randint(1, 10)
        if num_labels >= 2:   # IMDB-like: stars consistent with the label
            stars = rng.randint(1, 4) if label == 0 else rng.randint(7, 10)
        out.append((label, stars, array.array("H", [rng.randrange(EOT_ID) for _ in range(n_tok)])))
    return out


def write_data(path, examples, num_labels):
    prepro_imdb.write_dataset(path, examples, num_labels)
    return path


def read_predictions(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def read_exported(path):
    """{Hugging Face name: float32 tensor} of an exported model.safetensors,
    read by dev/import_hf.py (which drops the "transformer." prefix)."""
    tensors, _ = hf_import.read_safetensors(path)
    return {(k if k == "score.weight" else "transformer." + k):
            torch.frombuffer(bytearray(load().tobytes()), dtype=torch.float32).view(shape)
            for k, (shape, load) in tensors.items()}


def without_training_state(data):
    """The model part of a checkpoint: a --save file (header[10] = 1) without its
    run identity (header[10..17]) and AdamW moments (dev/FORMATS.md section 2)."""
    if struct.unpack("<i", data[40:44])[0] != 1:
        return data
    n = (len(data) - 1024) // 12
    return data[:40] + bytes(32) + data[72:1024] + data[1024:1024 + 4 * n]


def ref_model_from_hf(folder):
    """Reference model built from the exported folder: import_hf -> read_checkpoint -> float64 model."""
    tmp = os.path.join(folder, "..", os.path.basename(folder) + "_reimported.bin")
    hf_import.import_hf(folder, tmp)
    cfg, params, score = ref.read_checkpoint(tmp)
    return cfg, params, score, tmp


def ref_logits(cfg, params, score, token_lists):
    """float64 logits of each token list (true lengths, right padding with 50256)."""
    K = score.shape[0]
    model = ref.GPT2ForSequenceClassification(cfg, K, torch.float64).load(params, score)
    out = []
    with torch.no_grad():
        for start in range(0, len(token_lists), 8):
            chunk = token_lists[start:start + 8]
            T = max(len(x) for x in chunk)
            tokens = torch.full((len(chunk), T), EOT_ID, dtype=torch.int64)
            for b, x in enumerate(chunk):
                tokens[b, :len(x)] = torch.tensor(list(x), dtype=torch.int64)
            lengths = torch.tensor([len(x) for x in chunk], dtype=torch.int64)
            out.append(model(tokens, lengths))
    return torch.cat(out)


def hf_style_hidden(sd, conf, token_lists):
    """An independent forward written the way transformers' modeling_gpt2 reads the folder:
    HF names, Conv1D y = x @ W + b with W (in, out), c_attn output split q|k|v, attention mask
    on right padding with config.pad_token_id (50256 when the config has none). float64.
    Returns (ln_f output (B, T, C), padded ids (B, T))."""
    import torch.nn.functional as F
    C, H, L = conf["n_embd"], conf["n_head"], conf["n_layer"]
    eps, pad = conf["layer_norm_epsilon"], conf.get("pad_token_id", EOT_ID)
    w = {k: v.double() for k, v in sd.items()}
    B, T = len(token_lists), max(len(x) for x in token_lists)
    ids = torch.full((B, T), pad, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.float64)
    for b, x in enumerate(token_lists):
        ids[b, :len(x)] = torch.tensor(list(x), dtype=torch.int64)
        mask[b, :len(x)] = 1
    hd = C // H

    def conv1d(x, name):
        return torch.addmm(w[name + ".bias"], x.reshape(-1, x.shape[-1]), w[name + ".weight"]).view(*x.shape[:-1], -1)

    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    key_mask = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float64).min
    for i in range(L):
        p = f"transformer.h.{i}."
        a = F.layer_norm(h, (C,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = conv1d(a, p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, H, hd).permute(0, 2, 1, 3) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.where(causal, att, torch.tensor(torch.finfo(torch.float64).min, dtype=torch.float64))
        att = torch.softmax(att + key_mask, dim=-1)
        y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        h = h + conv1d(y, p + "attn.c_proj")
        m = F.layer_norm(h, (C,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        m = conv1d(m, p + "mlp.c_fc")
        m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * m ** 3)))   # gelu_new
        h = h + conv1d(m, p + "mlp.c_proj")
    return F.layer_norm(h, (C,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps), ids


def hf_style_logits(sd, conf, token_lists, rule):
    """GPT2ForSequenceClassification from the folder, with hf_style_hidden: score.weight at the
    pooled position found from pad_token_id: rule "first-pad" (transformers < 4.49: the token
    before the first pad, modulo T) or "last-non-pad" (>= 4.49: the rightmost token that is not
    pad). float64 (B, K)."""
    h, ids = hf_style_hidden(sd, conf, token_lists)
    B, T = ids.shape
    pad = conf["pad_token_id"]
    logits = h @ sd["score.weight"].double().t()                             # (B, T, K)
    if rule == "first-pad":
        pos = (torch.eq(ids, pad).int().argmax(-1) - 1) % T
    else:
        pos = (torch.arange(T) * torch.ne(ids, pad).int()).argmax(-1)
    return logits[torch.arange(B), pos]


def hf_style_lm_logits(sd, conf, token_lists):
    """GPT2LMHeadModel from the folder, with hf_style_hidden: the output layer tied to
    transformer.wte.weight (lm_head.weight is not in the file). float64 (B, T, vocab)."""
    h, _ = hf_style_hidden(sd, conf, token_lists)
    return h @ sd["transformer.wte.weight"].double().t()


def softmax_rows(logits):
    return torch.softmax(logits, dim=1)


# ----------------------------------------------------------------------------
# safetensors layout check (the format's rules, independent of any reader)

def check_safetensors_layout(path):
    """Returns (ok, detail, header dict)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    problems = []
    if n % 8 != 0:
        problems.append(f"header length {n} not a multiple of 8")
    hjson = raw[8:8 + n]
    if not hjson.startswith(b"{"):
        problems.append("header does not start with '{'")
    header = json.loads(hjson.decode("utf-8"))
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != "pt" or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        problems.append(f"__metadata__ must be str->str with format 'pt', got {meta}")
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items())
    pos = 0
    for begin, end, name in spans:
        info = header[name]
        if begin != pos:
            problems.append(f"{name}: data starts at {begin}, expected {pos} (hole or overlap)")
        if info["dtype"] != "F32" or end - begin != 4 * math.prod(info["shape"]):
            problems.append(f"{name}: dtype {info['dtype']} shape {info['shape']} vs {end - begin} bytes")
        pos = end
    if 8 + n + pos != len(raw):
        problems.append(f"data ends at {8 + n + pos}, file has {len(raw)} bytes")
    return not problems, "; ".join(problems[:3]), header, meta


# ----------------------------------------------------------------------------

def export_checks(R, args, ckpt, folder, K, names, preds_csv, token_lists, max_len, what):
    """Checks 2 and 3 for one fine-tuned checkpoint. Returns the exported config."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    cmd = [sys.executable, os.path.join(DEV, "export_hf.py"), ckpt, folder]
    if names is not None and not os.path.isfile(ckpt + ".labels.json"):
        cmd += ["--label-names", ",".join(names)]
    r = run(cmd, args.verbose)
    if not R.check(f"{what}: export_hf.py exits 0", r.returncode == 0, r.stderr.strip()[-300:]):
        return None
    if args.verbose:
        print("  " + r.stdout.strip().replace("\n", "\n  "))

    cfg_src, params_src, score_src = ref.read_checkpoint(ckpt)
    conf = json.load(open(os.path.join(folder, "config.json")))
    want_names = names or [f"LABEL_{i}" for i in range(K)]
    expect = {
        "architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2",
        "n_layer": cfg_src.num_layers, "n_head": cfg_src.num_heads, "n_embd": cfg_src.channels,
        "n_positions": cfg_src.max_seq_len, "n_ctx": cfg_src.max_seq_len, "vocab_size": 50257,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "num_labels": K,
        "pad_token_id": EOT_ID, "eos_token_id": EOT_ID, "bos_token_id": EOT_ID,
        "id2label": {str(i): n for i, n in enumerate(want_names)},
        "label2id": {n: i for i, n in enumerate(want_names)},
        "problem_type": "regression" if K == 1 else "single_label_classification",
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    }
    bad = {k: (conf.get(k), v) for k, v in expect.items() if conf.get(k) != v}
    R.check(f"{what}: config.json", not bad, str(bad)[:300])

    st = os.path.join(folder, "model.safetensors")
    ok, detail, header, meta = check_safetensors_layout(st)
    R.check(f"{what}: safetensors layout (8-byte header, contiguous F32 data, format pt)", ok, detail)
    want = ref.to_hf_state_dict(cfg_src, params_src, score_src, prefix="transformer.")
    R.check(f"{what}: tensor names = HF GPT2ForSequenceClassification names (transformer.*, score.weight)",
            set(header) == set(want), str(sorted(set(header) ^ set(want)))[:300])
    got = read_exported(st)
    mism = [k for k in want if k not in got or tuple(got[k].shape) != tuple(want[k].shape)
            or not torch.equal(got[k], want[k].contiguous())]
    R.check(f"{what}: every tensor bit-equal to to_hf_state_dict (Conv1D transposed, wte {cfg_src.vocab_size} rows)",
            not mism, ", ".join(mism[:5]))
    step = struct.unpack("<i", open(ckpt, "rb").read(40)[36:40])[0]
    R.check(f"{what}: safetensors metadata carries the step", meta.get("step") == str(step),
            f"metadata {meta}, header[9] {step}")

    # import back: bytes identical to the model part of the checkpoint; an import_hf
    # that does not read the step from the safetensors metadata writes header[9] = 0,
    # which is accepted with a note
    cfg, params, score, back = ref_model_from_hf(folder)
    a, b = without_training_state(open(ckpt, "rb").read()), open(back, "rb").read()
    same_but_step = a[:36] + a[40:] == b[:36] + b[40:] and b[36:40] == b"\0\0\0\0"
    R.check(f"{what}: import_hf(export) == checkpoint byte for byte", a == b or same_but_step,
            f"{len(a)} vs {len(b)} bytes")
    if a != b and same_but_step:
        print(f"      note: identical except header[9]: import_hf wrote step 0, the checkpoint has {step}")

    # reference logits from the exported weights vs the trainer's --predict
    header_csv, rows = read_predictions(preds_csv)
    lists = [x[:max_len] for x in token_lists]
    logits = ref_logits(cfg, params, score, lists)
    if K == 1:
        c_vals = torch.tensor([float(r[3]) for r in rows], dtype=torch.float64)
        diff = float(((logits[:, 0] - c_vals).abs() / logits[:, 0].abs().clamp(min=1.0)).max())
        R.check(f"{what}: reference value from the export == trainer --predict value",
                header_csv[3:] == ["value"] and diff < TOL, f"max rel diff {diff:.2e}")
    else:
        c_probs = torch.tensor([[float(p) for p in r[3:3 + K]] for r in rows], dtype=torch.float64)
        probs = softmax_rows(logits)
        diff = float((probs - c_probs).abs().max())
        R.check(f"{what}: softmax(reference logits from the export) == trainer --predict p_k "
                f"({len(rows)} examples)", header_csv[3:] == [f"p_{k}" for k in range(K)] and diff < TOL,
                f"max |dp| {diff:.2e}")
        argmax_ok = all(int(r[2]) == int(torch.argmax(logits[i])) for i, r in enumerate(rows)
                        if float((probs[i].topk(2).values[0] - probs[i].topk(2).values[1])) > 1e-4)
        R.check(f"{what}: predicted column == argmax of the reference logits", argmax_ok)
    for rule in ("first-pad", "last-non-pad"):
        hf = hf_style_logits(got, conf, lists, rule)
        if K == 1:
            diff = float(((hf[:, 0] - c_vals).abs() / hf[:, 0].abs().clamp(min=1.0)).max())
        else:
            diff = float((softmax_rows(hf) - c_probs).abs().max())
        R.check(f"{what}: HF-style forward from the folder ({rule} pooling, right padding) == trainer --predict",
                diff < TOL, f"max diff {diff:.2e}")
    transformers_check(R, folder, lists, logits, what)
    return conf


def padded_inputs(lists):
    """Token lists as Hugging Face model inputs: right-padded with EOT, with the attention mask."""
    T = max(len(x) for x in lists)
    ids = torch.full((len(lists), T), EOT_ID, dtype=torch.int64)
    mask = torch.zeros((len(lists), T), dtype=torch.int64)
    for b, x in enumerate(lists):
        ids[b, :len(x)] = torch.tensor(list(x))
        mask[b, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def transformers_check(R, folder, lists, logits, what):
    try:
        import transformers  # noqa: F401
    except ImportError:
        R.skip(f"{what}: transformers.GPT2ForSequenceClassification.from_pretrained", "transformers not installed")
        return
    from transformers import GPT2ForSequenceClassification
    model = GPT2ForSequenceClassification.from_pretrained(folder, torch_dtype=torch.float64).eval()
    with torch.no_grad():
        hf = model(**padded_inputs(lists)).logits
    diff = float((hf - logits).abs().max())
    R.check(f"{what}: transformers {transformers.__version__} from_pretrained logits == reference",
            diff < 1e-9, f"max |dlogit| {diff:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "train_gpt2_sft"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build", "test_export"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    R = Results(args.verbose)
    t_start = time.time()
    torch.set_num_threads(max(1, args.threads))

    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"error: {args.binary} is not an executable (make train_gpt2_sft)")
        print("0 passed, 1 failed")
        return 1
    out = args.out_dir
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    threads = ["--threads", str(args.threads)]

    # the tiny base model: the same weights as build/ref/gpt2_tiny.bin
    cfg = ref.config_by_name("tiny")
    base = os.path.join(out, "gpt2_tiny.bin")
    ref.write_checkpoint(base, cfg, ref.random_params(cfg, 1337))
    maxT = cfg.max_seq_len

    cases = [  # (what, num_labels of the data, trainer flags, label names, names via labels.json)
        ("2 classes", 2, [], ["neg", "pos"], False),
        ("3 classes", 3, [], ["bad", "meh", "good"], True),
        ("regression", 2, ["--task", "regression"], None, False),
    ]
    sft_by_case = {}
    for ci, (what, nl, flags, names, sidecar) in enumerate(cases):
        examples = random_examples(24, nl, seed=100 + ci, max_len=maxT)
        data = write_data(os.path.join(out, f"data_{ci}.bin"), examples, nl)
        ckpt = os.path.join(out, f"tiny_sft_{ci}.bin")
        r = run([binary, "-m", base, "--train", data, "--test", data, "--max-steps", "3", "--batch-size", "4",
                 "--max-len", "64", "--eval-examples", "8", "--lr", "1e-3", "--save", ckpt] + flags + threads,
                args.verbose)
        if not R.check(f"{what}: trainer fine-tunes 3 steps and saves", r.returncode == 0 and os.path.isfile(ckpt),
                       (r.stdout + r.stderr).strip()[-300:]):
            continue
        K = ref.read_checkpoint(ckpt)[2].shape[0]
        if sidecar:
            with open(ckpt + ".labels.json", "w") as f:
                json.dump({"num_labels": K, "labels": names}, f)
        preds = os.path.join(out, f"pred_{ci}.csv")
        r = run([binary, "-m", ckpt, "--predict", data, "--output", preds, "--max-len", str(maxT)] + threads,
                args.verbose)
        if not R.check(f"{what}: trainer --predict", r.returncode == 0, (r.stdout + r.stderr).strip()[-300:]):
            continue
        export_checks(R, args, ckpt, os.path.join(out, f"hf_{ci}"), K, names if K > 1 else None, preds,
                      [e[2] for e in examples], maxT, what)
        sft_by_case[what] = (ckpt, K, names)

    # 4. llm.c checkpoint: no head
    folder = os.path.join(out, "hf_llmc")
    r = run([sys.executable, os.path.join(DEV, "export_hf.py"), base, folder, "--arch", "classifier",
             "--num-labels", "3"], args.verbose)
    conf = json.load(open(os.path.join(folder, "config.json"))) if r.returncode == 0 else {}
    header = check_safetensors_layout(os.path.join(folder, "model.safetensors"))[2] if r.returncode == 0 else {}
    R.check("llm.c checkpoint: exported with a note, no score.weight, num_labels 3",
            r.returncode == 0 and "without a classifier head" in r.stdout and "score.weight" not in header
            and "transformer.wte.weight" in header and conf.get("num_labels") == 3, r.stderr.strip()[-200:])
    back = os.path.join(out, "llmc_back.bin")
    if r.returncode == 0:
        hf_import.import_hf(folder, back)
    R.check("llm.c checkpoint: import_hf(export) byte-identical",
            os.path.isfile(back) and open(back, "rb").read() == open(base, "rb").read())

    # 4b. language model
    lm_checks(R, args, out, cfg, base)

    # error handling
    bad = os.path.join(out, "bad.bin")
    with open(bad, "wb") as f:
        f.write(open(base, "rb").read()[:-4])
    r = run([sys.executable, os.path.join(DEV, "export_hf.py"), bad, os.path.join(out, "hf_bad")], args.verbose)
    R.check("export_hf.py: truncated checkpoint -> one error line naming it, exit 1",
            r.returncode == 1 and bad in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr.strip())
    if "2 classes" in sft_by_case:
        ckpt = sft_by_case["2 classes"][0]
        r = run([sys.executable, os.path.join(DEV, "export_hf.py"), ckpt, os.path.join(out, "hf_bad"),
                 "--label-names", "a,b,c"], args.verbose)
        R.check("export_hf.py: wrong number of --label-names -> error, exit 1",
                r.returncode == 1 and "2 distinct" in r.stderr, r.stderr.strip())

    classify_checks(R, args, out, binary, sft_by_case, base)

    print(f"({time.time() - t_start:.1f} s)")
    tail = f", {R.skipped} skipped" if R.skipped else ""
    print(f"{R.passed} passed, {R.failed} failed{tail}")
    return 1 if R.failed else 0


def with_moments(src, dst, step, seed):
    """src (an llm.c checkpoint) as `train_gpt2_sft --task lm --save` writes it: header[9] = step,
    header[10] = 1, a run identity in [11..17], then the AdamW moments m and v (random here)."""
    data = open(src, "rb").read()
    n = (len(data) - 1024) // 4
    header = list(struct.unpack("<256i", data[:1024]))
    header[9:18] = [step, 1, 1000, 8, 1, 64, 0, seed, 0]
    g = torch.Generator().manual_seed(seed)
    with open(dst, "wb") as f:
        f.write(struct.pack("<256i", *header) + data[1024:])
        f.write(torch.randn(2 * n, generator=g, dtype=torch.float32).numpy().astype("<f4").tobytes())
    return dst


def lm_checks(R, args, out, cfg, base):
    """4b. The llm.c checkpoint with AdamW moments as GPT2LMHeadModel, and 6. for it."""
    ckpt = with_moments(base, os.path.join(out, "gpt2_tiny_lm_save.bin"), step=5, seed=77)
    folder, plain = os.path.join(out, "hf_lm"), os.path.join(out, "hf_lm_plain")
    r = run([sys.executable, os.path.join(DEV, "export_hf.py"), ckpt, folder, "--no-tokenizer"], args.verbose)
    r2 = run([sys.executable, os.path.join(DEV, "export_hf.py"), base, plain, "--no-tokenizer"], args.verbose)
    if not R.check("LM: export_hf.py of a --save file with AdamW moments exits 0, says they are not exported",
                   r.returncode == 0 and r2.returncode == 0 and "not exported" in r.stdout,
                   (r.stderr + r2.stderr).strip()[-300:]):
        return
    cfg_src, params, _ = ref.read_checkpoint(base)
    conf = json.load(open(os.path.join(folder, "config.json")))
    expect = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "tie_word_embeddings": True,
              "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_embd": cfg.channels,
              "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len, "vocab_size": cfg.vocab_size,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "bos_token_id": EOT_ID, "eos_token_id": EOT_ID}
    bad = {k: (conf.get(k), v) for k, v in expect.items() if conf.get(k) != v}
    bad.update({k: conf[k] for k in ("num_labels", "id2label", "problem_type") if k in conf})
    R.check("LM: config.json of GPT2LMHeadModel (tie_word_embeddings, no labels)", not bad, str(bad)[:300])
    st = os.path.join(folder, "model.safetensors")
    ok, detail, header, meta = check_safetensors_layout(st)
    R.check("LM: safetensors layout; metadata step 5", ok and meta.get("step") == "5", f"{detail} {meta}")
    want = ref.to_hf_state_dict(cfg, params, prefix="transformer.")
    R.check("LM: tensor names = transformer.* of GPT2LMHeadModel less the tied lm_head.weight",
            set(header) == set(want), str(sorted(set(header) ^ set(want)))[:300])
    got = read_exported(st)
    mism = [k for k in want if k not in got or tuple(got[k].shape) != tuple(want[k].shape)
            or not torch.equal(got[k], want[k].contiguous())]
    R.check(f"LM: every tensor bit-equal to to_hf_state_dict (wte {cfg.vocab_size} rows)", not mism,
            ", ".join(mism[:5]))
    same = read_exported(os.path.join(plain, "model.safetensors"))
    R.check("LM: the moments are ignored: same config.json and tensors as the file without them",
            conf == json.load(open(os.path.join(plain, "config.json"))) and set(same) == set(got)
            and all(torch.equal(same[k], got[k]) for k in got))
    back = os.path.join(out, "lm_back.bin")
    hf_import.import_hf(folder, back)
    R.check("LM: import_hf(export) == the llm.c checkpoint byte for byte (16 tensors, moments dropped)",
            open(back, "rb").read() == open(base, "rb").read())

    # tied-output logits: from the folder, the HF way, against the reference pooled at every prefix
    rng = random.Random(5)
    lists = [[rng.randrange(cfg.vocab_size) for _ in range(n)] for n in (1, 17, cfg.max_seq_len)]
    lists[1][3] = EOT_ID                                  # an <|endoftext|> inside a text is a plain token here
    hf = hf_style_lm_logits(got, conf, lists)             # (B, T, V)
    prefixes = [x[:t + 1] for x in lists for t in range(len(x))]
    ours = ref_logits(cfg_src, params, params["wte"][:cfg.vocab_size], prefixes)   # (sum of lengths, V)
    mine = torch.cat([hf[b, :len(x)] for b, x in enumerate(lists)])
    diff = float((mine - ours).abs().max())
    R.check(f"LM: tied logits h @ wte^T from the folder == reference at all {len(prefixes)} positions",
            diff < 1e-9 and tuple(mine.shape) == (len(prefixes), cfg.vocab_size), f"max |dlogit| {diff:.2e}")

    try:
        import transformers  # noqa: F401
    except ImportError:
        R.skip("LM: transformers.GPT2LMHeadModel.from_pretrained", "transformers not installed")
        return
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(**padded_inputs(lists)).logits
    theirs = torch.cat([logits[b, :len(x)] for b, x in enumerate(lists)])
    diff = float((theirs - mine).abs().max())
    R.check(f"LM: transformers {transformers.__version__} GPT2LMHeadModel.from_pretrained logits == tied logits "
            f"(lm_head tied to wte)", diff < 1e-9 and torch.equal(model.lm_head.weight, model.transformer.wte.weight),
            f"max |dlogit| {diff:.2e}")


TEXTS = [
    "This movie was wonderful, I loved every minute of it!",
    "Terrible acting.<|endoftext|>An awful, boring plot.",
    "Ein großartiger Film \u2014 très bien, 素晴らしい 🎬",
    "ok",
    " ".join(["A long review that goes on and on about the cinematography and the score."] * 12),
]


def classify_checks(R, args, out, binary, sft_by_case, base):
    """5. classify.py against --predict on the same tokens, and the reference."""
    vocab = os.path.join(prepro_imdb.SHARED_DIR, "gpt2")
    if not all(os.path.isfile(os.path.join(vocab, n)) for n in prepro_imdb.GPT2_FILES):
        R.skip("classify.py", f"no GPT-2 vocabulary in {vocab}")
        return
    if "2 classes" not in sft_by_case:
        R.skip("classify.py", "no fine-tuned checkpoint")
        return
    ckpt, K, names = sft_by_case["2 classes"]
    tok = prepro_imdb.GPT2Tokenizer.from_files(*(os.path.join(vocab, n) for n in prepro_imdb.GPT2_FILES))
    ids = [tok.encode(t) for t in TEXTS]
    cfg, params, score = ref.read_checkpoint(ckpt)
    classify_cmd = [sys.executable, os.path.join(DEV, "classify.py"), "--binary", binary]
    classify = classify_cmd + ["-m", ckpt, "--threads", str(args.threads)]
    long_len = len(ids[-1])
    assert long_len > 64, long_len

    for max_len, how in ((None, "head"), (48, "head"), (48, "tail"), (48, "head+tail")):
        tag = f"max-len {max_len or 'default'}, {how}"
        cmd = classify + ["--json", "--truncation", how, "--label-names", "neg,pos"] + TEXTS
        if max_len:
            cmd += ["--max-len", str(max_len)]
        r = run(cmd, args.verbose)
        if not R.check(f"classify.py ({tag}) exits 0", r.returncode == 0, r.stderr.strip()[-300:]):
            continue
        got = [json.loads(line) for line in r.stdout.splitlines()]
        eff = max_len or cfg.max_seq_len          # the default 1024 is capped at the model's 128
        # the same tokens through the trainer directly
        data = write_data(os.path.join(out, "classify_direct.bin"),
                          [(-1, 0, array.array("H", x)) for x in ids], 0)
        preds = os.path.join(out, "classify_direct.csv")
        rr = run([binary, "-m", ckpt, "--predict", data, "--output", preds, "--max-len", str(eff),
                  "--truncation", how, "--threads", str(args.threads)], args.verbose)
        _, rows = read_predictions(preds) if rr.returncode == 0 else (None, [])
        same = len(got) == len(rows) == len(TEXTS) and all(
            g["text"] == t and g["tokens"] == len(x) and g["used_tokens"] == min(len(x), eff)
            and [g["probs"]["neg"], g["probs"]["pos"]] == [float(p) for p in row[3:5]]
            and g["predicted"] == int(row[2]) and g["label"] == ["neg", "pos"][int(row[2])]
            for g, t, x, row in zip(got, TEXTS, ids, rows))
        R.check(f"classify.py ({tag}) == trainer --predict on the same tokens (unlabelled dataset)", same)
        lists = [truncate_ref(x, eff, how) for x in ids]
        probs = softmax_rows(ref_logits(cfg, params, score, lists))
        diff = max(abs(g["probs"][n] - float(probs[i, k])) for i, g in enumerate(got) for k, n in enumerate(names)) \
            if got else 1.0
        R.check(f"classify.py ({tag}) == reference on truncated tokens", diff < TOL, f"max |dp| {diff:.2e}")

    # the README's pooling caveat, shown with the HF-style forward on the exported folder:
    # a text with <|endoftext|> inside, and one ending with it
    folder = os.path.join(out, "hf_0")
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        sd = read_exported(os.path.join(folder, "model.safetensors"))
        conf = json.load(open(os.path.join(folder, "config.json")))
        # this project's tokenizer (encode_ordinary) never emits 50256, Hugging Face's GPT2Tokenizer
        # does for "<|endoftext|>" in a text: the token lists below are what it would give
        R.check("classify.py's tokenizer keeps <|endoftext|> in a text as plain text (no id 50256)",
                "<|endoftext|>" in TEXTS[1] and EOT_ID not in ids[1])
        inside, at_end = ids[0][:5] + [EOT_ID] + ids[0][5:], ids[0] + [EOT_ID]
        lists = [inside, at_end, ids[0]]
        ours = ref_logits(cfg, params, score, lists)
        d = {rule: (hf_style_logits(sd, conf, lists, rule) - ours).abs().max(dim=1).values
             for rule in ("first-pad", "last-non-pad")}
        R.check("pooling caveat: transformers < 4.49 rule pools a text with <|endoftext|> inside "
                "elsewhere, >= 4.49 rule agrees", float(d["first-pad"][0]) > 1e-6 and float(d["last-non-pad"][0]) < 1e-9,
                f"{float(d['first-pad'][0]):.2e} {float(d['last-non-pad'][0]):.2e}")
        R.check("pooling caveat: both rules pool a text ending with <|endoftext|> elsewhere; plain text agrees",
                float(d["first-pad"][1]) > 1e-6 and float(d["last-non-pad"][1]) > 1e-6
                and float(d["first-pad"][2]) < 1e-9 and float(d["last-non-pad"][2]) < 1e-9)

    # --file (with a blank line) gives the same as arguments; plain output has names and probabilities
    path = os.path.join(out, "texts.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(TEXTS[:3]) + "\n\n" + "\n".join(TEXTS[3:]) + "\n")
    a = run(classify + ["--json", "--label-names", "neg,pos"] + TEXTS, args.verbose)
    b = run(classify + ["--json", "--label-names", "neg,pos", "--file", path], args.verbose)
    R.check("classify.py --file == texts as arguments (blank line skipped)",
            a.returncode == b.returncode == 0 and a.stdout == b.stdout and "skipped 1 blank" in b.stderr,
            b.stderr.strip()[-200:])
    c = run(classify + ["--label-names", "neg,pos"] + TEXTS[:2], args.verbose)
    lines = c.stdout.splitlines()
    R.check("classify.py plain output: header + one line per text with label and p(neg) p(pos)",
            c.returncode == 0 and len(lines) == 3 and "p(neg)" in lines[0] and "p(pos)" in lines[0]
            and all(line.split()[0] in ("neg", "pos") for line in lines[1:]), c.stdout[-300:])

    # label names from CKPT.labels.json (3 classes), class numbers without names; regression value
    if "3 classes" in sft_by_case:
        ckpt3 = sft_by_case["3 classes"][0]
        r = run(classify_cmd + ["-m", ckpt3, "--json"] + TEXTS[:2], args.verbose)
        got = [json.loads(line) for line in r.stdout.splitlines()] if r.returncode == 0 else []
        R.check("classify.py: label names from CKPT.labels.json",
                len(got) == 2 and all(list(g["probs"]) == ["bad", "meh", "good"] for g in got), r.stderr[-200:])
    r = run(classify + ["--json", TEXTS[0]], args.verbose)
    got = [json.loads(line) for line in r.stdout.splitlines()] if r.returncode == 0 else []
    R.check("classify.py: without names the labels are class numbers",
            len(got) == 1 and list(got[0]["probs"]) == ["0", "1"], r.stderr[-200:])
    if "regression" in sft_by_case:
        ckptr = sft_by_case["regression"][0]
        r = run(classify_cmd + ["-m", ckptr, "--json"] + TEXTS[:2], args.verbose)
        got = [json.loads(line) for line in r.stdout.splitlines()] if r.returncode == 0 else []
        cfgr, pr, sr = ref.read_checkpoint(ckptr)
        vals = ref_logits(cfgr, pr, sr, [x[:cfgr.max_seq_len] for x in ids[:2]])[:, 0]
        ok = len(got) == 2 and all(abs(g["value"] - float(v)) < TOL * max(1.0, abs(float(v)))
                                   for g, v in zip(got, vals))
        R.check("classify.py: regression model prints the value (== reference)", ok, r.stderr[-200:])

    # errors: one line, exit 1
    for what, cmd, needle in (
            ("llm.c checkpoint (no head)", classify_cmd + ["-m", base, "x"],
             "no classifier head"),
            ("missing checkpoint", classify_cmd + ["-m",
                                    os.path.join(out, "nope.bin"), "x"], "no such file"),
            ("no texts", classify, "no texts"),
            ("empty text", classify + [""], "empty text")):
        r = run(cmd, args.verbose)
        R.check(f"classify.py error: {what}", r.returncode == 1 and needle in r.stderr
                and len(r.stderr.strip().splitlines()) == 1, r.stderr.strip()[-200:])


def truncate_ref(ids, max_len, how):
    """Written out here from FORMATS/trainer semantics (head keeps the first tokens,
    tail the last, head+tail the first max_len/4 and the last rest)."""
    if len(ids) <= max_len:
        return ids
    if how == "head":
        return ids[:max_len]
    if how == "tail":
        return ids[-max_len:]
    h = max_len // 4
    return ids[:h] + ids[len(ids) - (max_len - h):]


if __name__ == "__main__":
    sys.exit(main())
