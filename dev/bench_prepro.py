#!/usr/bin/env python3
"""
Benchmark prepro_imdb: read the 50,000 labelled IMDB reviews (train + test)
from the real archive and tokenize them with the GPT-2 BPE in worker processes,
as prepro_imdb.py does (the archive is streamed while the workers tokenize).

    python3 dev/bench_prepro.py [--archive PATH] [--workers 2] [--target 60]

Prints seconds and tokens/s; exits 1 when slower than --target seconds.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True   # keep the checkout free of __pycache__
sys.path.insert(0, ROOT)
import prepro_imdb as P  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", default=os.environ.get("IMDB_ARCHIVE") or
                    os.path.join(P.SHARED_DIR, "data", P.IMDB_ARCHIVE_NAME))
    ap.add_argument("--vocab-dir", default=os.path.join(P.SHARED_DIR, "gpt2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--target", type=float, default=60.0, help="seconds (default 60)")
    args = ap.parse_args()
    vocab = (os.path.join(args.vocab_dir, "encoder.json"), os.path.join(args.vocab_dir, "vocab.bpe"))

    t0 = time.time()
    items = (((s, l, i), text) for s, l, i, _, text in
             P.read_imdb(args.archive, splits=("train", "test")))
    results = P.tokenize_stream(items, vocab, args.workers, "bench")
    dt = time.time() - t0
    ntok = sum(len(t) for _, t in results)
    print(f"{len(results):,} reviews (train+test), {ntok:,} tokens, {args.workers} workers, "
          f"os.cpu_count()={os.cpu_count()}")
    print(f"time {dt:.1f} s (reading the archive + loading the tokenizer + tokenizing), "
          f"{ntok / dt:,.0f} tokens/s, {len(results) / dt:,.0f} reviews/s")
    if dt > args.target:
        print(f"SLOW: {dt:.1f} s is over the {args.target:g} s target")
        return 1
    print(f"OK: under the {args.target:g} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
