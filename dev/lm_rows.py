#!/usr/bin/env python3
"""How much of a language model's compute packed rows save over padded ones.

    python3 dev/lm_rows.py [--max-len 256,1024] [--batch-size 16] [--val-docs 1000]
                           [DATASET.bin ...]   (default: data/imdb/imdb_train.bin data/imdb/imdb_unsup.bin)

For the documents train_gpt2_sft --task lm trains on (all but the last
--val-docs of the last dataset), each preceded by <|endoftext|>, it counts
per epoch:
  packed (what the trainer does): the stream cut into rows of T tokens that
      share one token with the next row; every position but a row's last
      predicts a next token;
  padded (one document per row): each document truncated to T tokens, rows
      length-grouped as the classifier's batches are (shuffled, mega-batches
      of 50 batches sorted by length), each batch padded to its longest row.
It prints the positions the blocks compute, the predictions (positions with a
next token, where the loss is), their ratio, and the text tokens never
predicted because truncation dropped them. Standard library only.
"""
import argparse
import os
import random
import struct
import sys

HEADER = 1024


def document_lengths(path):
    with open(path, "rb") as f:
        header = f.read(HEADER)
        if len(header) < HEADER or struct.unpack_from("<i", header, 0)[0] != 20261127:
            sys.exit(f"error: {path}: not a dataset made by prepro_imdb.py")
        n = struct.unpack_from("<q", header, 16)[0]
        f.seek(HEADER + 8 * n)
        raw = f.read(4 * n)
    if len(raw) != 4 * n:
        sys.exit(f"error: {path}: truncated")
    return list(struct.unpack(f"<{n}i", raw))


def packed(lengths, T):
    stream = sum(n + 1 for n in lengths)
    rows = (stream - 1) // (T - 1)
    return rows * T, rows * (T - 1), stream - 1 - rows * (T - 1)


def padded(lengths, T, B, seed=1337):
    rows = [min(n + 1, T) for n in lengths]  # <|endoftext|> + the document, truncated
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    positions = 0
    mega = 50 * B
    for start in range(0, len(order) - len(order) % B, mega):
        group = sorted((rows[i] for i in order[start:start + mega]), reverse=True)
        for b in range(0, len(group) - len(group) % B, B):
            positions += B * group[b]
    predictions = sum(r - 1 for r in rows)
    dropped = sum(n + 1 - r for n, r in zip(lengths, rows))
    return positions, predictions, dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=["data/imdb/imdb_train.bin", "data/imdb/imdb_unsup.bin"])
    ap.add_argument("--max-len", default="256,1024")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--val-docs", type=int, default=1000)
    args = ap.parse_args()
    lengths = []
    for path in args.datasets:
        if not os.path.isfile(path):
            sys.exit(f"error: {path}: no such dataset (make it with prepro_imdb.py)")
        lengths += document_lengths(path)
    lengths = lengths[:len(lengths) - args.val_docs]
    tokens = sum(n + 1 for n in lengths)
    print(f"{len(lengths)} documents, {tokens} tokens with <|endoftext|>")
    print(f"{'T':>5} {'layout':>7} {'positions':>12} {'predictions':>12} {'useful':>7} {'never predicted':>16}")
    for T in (int(t) for t in args.max_len.split(",")):
        for name, (positions, predictions, dropped) in (("packed", packed(lengths, T)),
                                                        ("padded", padded(lengths, T, args.batch_size))):
            print(f"{T:>5} {name:>7} {positions:>12} {predictions:>12} {predictions / positions:>7.1%} "
                  f"{dropped / tokens:>15.1%}")


if __name__ == "__main__":
    main()
