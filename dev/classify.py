#!/usr/bin/env python3
"""
Classify raw text with a fine-tuned train_gpt2_sft checkpoint.

    python3 dev/classify.py -m CKPT "text" ["text" ...]
    python3 dev/classify.py -m CKPT --file texts.txt        # one text per line ('-': stdin)

Each text is tokenized with prepro_imdb.py's GPT-2 tokenizer (the ids of
tiktoken's gpt2 encode_ordinary; "<|endoftext|>" in a text is plain text), the
texts are written to a temporary unlabelled dataset (num_labels 0, label -1,
stars 0; dev/FORMATS.md section 3), and the trainer computes the predictions:

    ./train_gpt2_sft -m CKPT --predict TMP.bin --output TMP.csv --max-len M --truncation head

Output: one line per text with the predicted label and the probability of
each class (regression models: the predicted value), or with --json one JSON
object per line: {"index", "text", "tokens", "used_tokens", "predicted",
"label", "probs": {name: p}} or {..., "value"}.

Label names: --label-names, else CKPT.labels.json if it exists (the
{"labels": [...]} file prepro_imdb.py writes beside a dataset; copy it next to
the checkpoint), else the class numbers. For IMDB: --label-names neg,pos.

--max-len defaults to 1024, capped at the model's positions; longer texts are
truncated by the trainer (--truncation head|tail|head+tail, default head).
Standard library only (besides the trainer binary).
"""

import argparse
import array
import csv
import json
import os
import subprocess
import sys
import tempfile

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPT_DIR)
sys.path.insert(0, ROOT)
sys.path.insert(0, SCRIPT_DIR)
import prepro_imdb  # noqa: E402
import export_hf  # noqa: E402


class ClassifyError(Exception):
    pass


def load_tokenizer(vocab_dir=None, cache_dir=prepro_imdb.DEFAULT_CACHE_DIR):
    """prepro_imdb's tokenizer, with its vocabulary resolution (--vocab-dir, ../shared/gpt2, cache)."""
    ns = argparse.Namespace(vocab_dir=vocab_dir, cache_dir=cache_dir,
                            gpt2_base_url=prepro_imdb.GPT2_BASE_URL)
    return prepro_imdb.GPT2Tokenizer.from_files(*prepro_imdb.resolve_vocab(ns))


def read_texts(args):
    texts = list(args.texts)
    for t in texts:
        if t == "":
            raise ClassifyError("empty text given; a text needs at least one token")
    if args.file:
        try:
            if args.file == "-":
                lines = sys.stdin.read().splitlines()
            else:
                with open(args.file, encoding="utf-8", newline="") as f:
                    lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ClassifyError(f"{args.file}: cannot read ({e})")
        skipped = sum(1 for line in lines if not line.strip())
        texts += [line for line in lines if line.strip()]
        if skipped:
            print(f"note: skipped {skipped} blank line(s) of {args.file}", file=sys.stderr)
    if not texts:
        raise ClassifyError("no texts: give them as arguments or with --file")
    return texts


def predict(binary, ckpt, token_lists, max_len, truncation, batch_size=8, threads=None):
    """Run the trainer's --predict on token_lists; returns the rows of its CSV, header left out."""
    with tempfile.TemporaryDirectory(prefix="classify_") as d:
        data = os.path.join(d, "texts.bin")
        out = os.path.join(d, "pred.csv")
        prepro_imdb.write_dataset(data, [(-1, 0, array.array("H", ids)) for ids in token_lists], 0)
        cmd = [binary, "-m", ckpt, "--predict", data, "--output", out, "--max-len", str(max_len),
               "--truncation", truncation, "--batch-size", str(batch_size)]
        if threads:
            cmd += ["--threads", str(threads)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not os.path.isfile(out):
            tail = "\n".join(r.stdout.strip().splitlines()[-5:])
            raise ClassifyError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{tail}")
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
    rows = rows[1:]
    if len(rows) != len(token_lists):
        raise ClassifyError(f"the trainer wrote {len(rows)} predictions for {len(token_lists)} texts")
    return rows


def preview(text, width=60):
    t = " ".join(text.split())
    return t if len(t) <= width else t[:width - 1] + "\u2026"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Classify texts with a fine-tuned train_gpt2_sft checkpoint.")
    ap.add_argument("-m", "--model", required=True, help="fine-tuned checkpoint (train_gpt2_sft --save)")
    ap.add_argument("texts", nargs="*", help="texts to classify")
    ap.add_argument("--file", help="a file of texts, one per line (blank lines skipped; '-' = stdin)")
    ap.add_argument("--label-names", help="comma-separated class names, e.g. neg,pos "
                    "(default: CKPT.labels.json, else class numbers)")
    ap.add_argument("--max-len", type=int, default=1024, help="tokens per text, capped at the model's "
                    "positions (default %(default)s)")
    ap.add_argument("--truncation", choices=("head", "tail", "head+tail"), default="head")
    ap.add_argument("--vocab-dir", help="folder with encoder.json and vocab.bpe (default as prepro_imdb.py: "
                    "../shared/gpt2, the cache, else download)")
    ap.add_argument("--cache-dir", default=prepro_imdb.DEFAULT_CACHE_DIR, help=argparse.SUPPRESS)
    ap.add_argument("--binary", default=os.path.join(ROOT, "train_gpt2_sft"),
                    help="the trainer (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object per text")
    args = ap.parse_args(argv)
    try:
        if args.max_len < 1:
            raise ClassifyError("--max-len must be at least 1")
        if not os.access(args.binary, os.X_OK):
            raise ClassifyError(f"{args.binary}: not found or not executable (build it: make train_gpt2_sft)")
        hdr = export_hf.read_header(args.model)
        if hdr["kind"] != "sft":
            raise ClassifyError(f"{args.model}: an llm.c checkpoint has no classifier head; "
                                "fine-tune it first (train_gpt2_sft --save PATH) and classify with PATH")
        K = hdr["num_labels"]
        max_len = min(args.max_len, hdr["max_seq_len"])
        if args.label_names or os.path.isfile(args.model + ".labels.json"):
            names, _ = export_hf.label_names_for(args.model, K, args.label_names)
        else:
            names = [str(k) for k in range(K)]
        texts = read_texts(args)
        tok = load_tokenizer(args.vocab_dir, args.cache_dir)
        ids = [tok.encode(t) for t in texts]
        for i, x in enumerate(ids):
            if not x:
                raise ClassifyError(f"text {i + 1} has no tokens")
        rows = predict(args.binary, args.model, ids, max_len, args.truncation,
                       args.batch_size, args.threads)
    except (ClassifyError, export_hf.ExportError, prepro_imdb.PrepError, OSError) as e:
        print(f"classify: error: {e}", file=sys.stderr)
        return 1

    if not args.json:
        if K == 1:
            print(f"{'value':>10}  {'tokens':>6}  text")
        else:
            w = max(len("label"), *(len(n) for n in names))
            print(f"{'label':<{w}}  " + "  ".join(f"{'p(' + n + ')':>9}" for n in names) + f"  {'tokens':>6}  text")
    for i, (text, x, row) in enumerate(zip(texts, ids, rows)):
        used = min(len(x), max_len)
        ntok = f"{used}/{len(x)}" if used < len(x) else str(len(x))
        if K == 1:
            value = float(row[3])
            if args.json:
                print(json.dumps({"index": i, "text": text, "tokens": len(x), "used_tokens": used,
                                  "value": value}, ensure_ascii=False))
            else:
                print(f"{value:>10.4f}  {ntok:>6}  {preview(text)}")
            continue
        pred = int(row[2])
        probs = [float(p) for p in row[3:3 + K]]
        if args.json:
            print(json.dumps({"index": i, "text": text, "tokens": len(x), "used_tokens": used,
                              "predicted": pred, "label": names[pred],
                              "probs": dict(zip(names, probs))}, ensure_ascii=False))
        else:
            print(f"{names[pred]:<{w}}  " + "  ".join(f"{p:>9.4f}" for p in probs) +
                  f"  {ntok:>6}  {preview(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
