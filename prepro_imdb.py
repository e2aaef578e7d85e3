#!/usr/bin/env python3
"""
Tokenize a text-classification dataset with the GPT-2 tokenizer and write the
binary files that train_gpt2_sft memory-maps (format: dev/FORMATS.md, section 3).

Python 3 standard library only: the GPT-2 byte-level BPE tokenizer is
implemented below and produces exactly the token ids of tiktoken's "gpt2"
encoding (encode_ordinary: "<|endoftext|>" inside a text is plain text).

IMDB (the default):
    python3 prepro_imdb.py                      # -> data/imdb/imdb_{train,test,unsup}.bin
    python3 prepro_imdb.py --archive aclImdb_v1.tar.gz --clean-html

  The archive is read straight from the .tar.gz, never unpacked. It is looked
  for in this order: --archive, $IMDB_ARCHIVE, ../shared/data/aclImdb_v1.tar.gz
  (relative to this script), the cache folder; otherwise it is downloaded from
  Stanford into the cache folder (--cache-dir, default ~/.cache/gpt2_sft).

Any labelled CSV / TSV / JSONL file:
    python3 prepro_imdb.py --input reviews.csv --text-column review \\
        --label-column sentiment --output data/reviews.bin
  String labels become 0..K-1 in sorted order; the mapping is written beside
  the output as <output>.labels.json.

The GPT-2 tokenizer files (encoder.json, vocab.bpe) come from --vocab-dir, or
../shared/gpt2/ relative to this script, or the cache folder, or are
downloaded from OpenAI; their sha256 checksums are always verified.
"""

import argparse
import array
import collections
import csv
import gzip
import hashlib
import heapq
import json
import math
import multiprocessing
import os
import re
import signal
import statistics
import sys
import tarfile
import time
import unicodedata
import urllib.error
import urllib.request
import zlib

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

DATASET_MAGIC = 20261127
DATASET_VERSION = 1
HEADER_BYTES = 1024
VOCAB_SIZE = 50257          # GPT-2: 50,000 merges + 256 byte tokens + <|endoftext|>
EOT_TOKEN = "<|endoftext|>"  # id 50256; never added, and plain text when it occurs in a review

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVE_NAME = "aclImdb_v1.tar.gz"
IMDB_SHA256_OFFICIAL = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
# The same reviews re-packed without the bag-of-words *.feat files (../shared/data).
IMDB_SHA256_REPACKED = "630400f7e77f38a660084b23b451f00a2c187926ebac25d89f2f06418f0eb581"

GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
SHARED_DIR = os.path.normpath(os.path.join(SCRIPT_DIR, "..", "shared"))
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "gpt2_sft")

# aclImdb/{train,test}/{pos,neg}/<id>_<stars>.txt and aclImdb/train/unsup/<id>_0.txt
IMDB_MEMBER_RE = re.compile(r"(?:\./)?aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt")
IMDB_LABELS = {"neg": 0, "pos": 1, "unsup": -1}
MAX_STARS = 10              # star ratings are 1..MAX_STARS, 0 when unrated (dev/FORMATS.md section 3)
IMDB_SPLITS = ("train", "test", "unsup")


class PrepError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Part 1. Pre-tokenization: cutting a text into "words" before BPE
# --------------------------------------------------------------------------
#
# GPT-2 never merges bytes across certain boundaries. Before BPE runs, the text
# is cut into pieces by this regular expression (from OpenAI's encoder.py,
# also used by tiktoken's "gpt2" encoding):
#
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#
# Read left to right, at each position the first alternative that matches wins:
#   1. an English contraction suffix, lowercase only ("'s", "'ll", ...)
#   2. a run of letters, optionally glued to ONE preceding space (" hello")
#   3. a run of digits/numbers, same rule (" 2011")
#   4. a run of other symbols (punctuation, emoji...), same rule (" !!!")
#   5. a run of whitespace that is not followed by a non-space; because the
#      regex engine backtracks, a run like "   word" yields "  " and leaves
#      the last space to be glued to "word" by rule 2
#   6. any other run of whitespace (e.g. a single "\n" before a word)
#
# Python's `re` has no \p{L} / \p{N}, so we build those character classes
# ourselves from unicodedata: a "letter" is any character whose general
# category starts with 'L', a "number" any whose category starts with 'N'.
#
# "\s" must mean exactly what it means for the regex engines GPT-2 and tiktoken
# use (Python's `regex` module, Rust's `regex` crate): the Unicode White_Space
# property. That is NOT str.isspace(): isspace() also accepts \x1c-\x1f, which
# are not White_Space. (JavaScript's \s differs too: it has \ufeff, lacks \x85.)

WHITESPACE_CHARS = (
    "\t\n\x0b\x0c\r\x20\x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)  # Unicode White_Space, 25 characters (unchanged since Unicode 6.3)
WHITESPACE = frozenset(WHITESPACE_CHARS)


def char_class(ch):
    """'W' whitespace, 'L' letter, 'N' number, 'O' anything else."""
    if ch in WHITESPACE:
        return "W"
    cat = unicodedata.category(ch)[0]
    return cat if cat in ("L", "N") else "O"


def split_words_reference(text):
    """The pre-tokenization pattern, written out as a plain character scanner.

    Slow but easy to read; the tokenizer uses the equivalent compiled pattern
    from compile_split_patterns(), and the tests check that the two agree.
    """
    pieces = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        # 1. contractions (case-sensitive: "'S" is not one)
        if c == "'":
            if text[i + 1:i + 3] in ("re", "ve", "ll"):
                pieces.append(text[i:i + 3])
                i += 3
                continue
            if text[i + 1:i + 2] in ("s", "t", "m", "d"):
                pieces.append(text[i:i + 2])
                i += 2
                continue
        # 2-4. a run of one class (letters, numbers or other symbols), with an
        #      optional single leading ' ' (only U+0020, not tabs etc.)
        j = i
        if c == " " and i + 1 < n and text[i + 1] not in WHITESPACE:
            j = i + 1
        if text[j] not in WHITESPACE:
            cls = char_class(text[j])
            k = j + 1
            while k < n and char_class(text[k]) == cls:
                k += 1
            pieces.append(text[i:k])
            i = k
            continue
        # 5-6. a run of whitespace. If a non-space follows and the run has at
        #      least 2 characters, its last character is left for the next piece.
        k = i
        while k < n and text[k] in WHITESPACE:
            k += 1
        if k < n and k - i >= 2:
            k -= 1
        pieces.append(text[i:k])
        i = k
    return pieces


def _category_runs(first_letter):
    """Runs (lo, hi) of code points whose general category starts with first_letter."""
    runs = []
    start = None
    for cp in range(0x110000):
        if unicodedata.category(chr(cp))[0] == first_letter:
            if start is None:
                start = cp
        elif start is not None:
            runs.append((start, cp - 1))
            start = None
    if start is not None:
        runs.append((start, 0x10FFFF))
    return runs


def _re_class(runs, limit):
    """The inside of an re character class for the runs, cut at code point limit."""
    out = []
    for lo, hi in runs:
        if lo < limit:
            hi = min(hi, limit - 1)
            out.append("\\U%08x" % lo if lo == hi else "\\U%08x-\\U%08x" % (lo, hi))
    return "".join(out)


def compile_split_patterns():
    """The GPT-2 pattern for Python's `re`, with \\p{L}, \\p{N}, \\s spelled out.

    Returns two compiled patterns: one for any text, and one whose classes only
    cover the Basic Multilingual Plane. The second gives the same pieces for any
    text without astral characters (emoji etc.) and is about 5x faster, because
    `re` stores BMP classes as a lookup table but tries ranges above U+FFFF one
    by one.
    """
    letters, numbers = _category_runs("L"), _category_runs("N")
    W = "".join("\\U%08x" % ord(ch) for ch in WHITESPACE_CHARS)
    patterns = []
    for limit in (0x110000, 0x10000):
        L, N = _re_class(letters, limit), _re_class(numbers, limit)
        patterns.append(re.compile(
            r"'s|'t|'re|'ve|'m|'ll|'d"
            rf"| ?[{L}]+"
            rf"| ?[{N}]+"
            rf"| ?[^{W}{L}{N}]+"
            rf"|[{W}]+(?![^{W}])"     # \s+(?!\S)
            rf"|[{W}]+"))
    return patterns


class WordSplitter:
    """split(text) -> list of pieces, picking the fast BMP pattern when it is exact."""

    def __init__(self):
        full, bmp = compile_split_patterns()
        self.full, self.bmp = full.findall, bmp.findall
        self._astral = re.compile("[\\U00010000-\\U0010ffff]").search

    def __call__(self, text):
        return self.full(text) if self._astral(text) else self.bmp(text)


# --------------------------------------------------------------------------
# Part 2. Byte-level BPE
# --------------------------------------------------------------------------
#
# GPT-2 works on the UTF-8 *bytes* of the text, so any string can be encoded
# without an "unknown" token. Its vocabulary files store tokens as strings,
# though, so every byte 0..255 gets a stand-in printable character
# (bytes_to_unicode below): printable Latin-1 bytes stand for themselves, the
# others (space, control bytes...) are shifted to U+0100 and up. The space
# byte becomes 'Ġ', which is why GPT-2 tokens look like "Ġhello".
#
# Byte-pair encoding of one piece (e.g. " hello"):
#   start with one symbol per byte:  Ġ h e l l o
#   repeat: among all adjacent pairs whose concatenation is a token, merge the
#   one with the LOWEST rank (the merge learned earliest, i.e. the most
#   frequent in GPT-2's training data); ties go to the leftmost pair:
#       Ġ h e l l o -> Ġ he l l o (rank 258) -> Ġ he ll o (297) -> Ġhe ll o (339)
#                   -> Ġhell o (5968) -> Ġhello (23748)
#   stop when no adjacent pair forms a token. Each remaining symbol is a token:
#   " hello" is the single token 23748, while " tokenization" stops at
#   Ġtoken + ization = [11241, 1634] because "Ġtokenization" is not a token.
#
# vocab.bpe lists the 50,000 merges in rank order; the token made by merge i
# has id 256 + i in encoder.json (ids 0..255 are the single bytes). So "rank"
# and "token id" are the same number, and like tiktoken we rank a pair by the
# id of the token it would make.
#
# Most pieces repeat constantly ("Ġthe", "."), so results are cached per piece.


def bytes_to_unicode():
    """Map each byte 0..255 to the printable character GPT-2 uses for it."""
    printable = (list(range(ord("!"), ord("~") + 1))
                 + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def bpe_merge_simple(symbols, ranks):
    """Merge a list of symbols (strings) by rank until nothing merges. O(n^2)."""
    parts = list(symbols)
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def bpe_merge_heap(symbols, ranks):
    """Same result as bpe_merge_simple, in O(n log n) for very long pieces.

    Candidate pairs sit in a heap ordered by (rank, position); the parts form a
    doubly linked list. A popped candidate is skipped when it is stale (one of
    its two parts has been merged away since it was pushed).
    """
    n = len(symbols)
    text = list(symbols)            # text[i]: current string of the part starting at i
    nxt = list(range(1, n + 1))     # next part start (n = end)
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = []

    def push(i):
        j = nxt[i]
        if j < n:
            rank = ranks.get(text[i] + text[j])
            if rank is not None:
                heapq.heappush(heap, (rank, i, text[i], text[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        rank, i, left, right = heapq.heappop(heap)
        j = nxt[i] if alive[i] else n
        if not alive[i] or j >= n or text[i] != left or text[j] != right:
            continue  # stale
        text[i] = left + right
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
        push(i)
        if prv[i] >= 0:
            push(prv[i])
    return [text[i] for i in range(n) if alive[i]]


class GPT2Tokenizer:
    LONG_PIECE = 64   # pieces longer than this (in bytes) use the heap merge

    def __init__(self, encoder, merges):
        """encoder: token string -> id (encoder.json); merges: list of pairs (vocab.bpe)."""
        self.encoder = encoder
        self.decoder = {i: s for s, i in encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Ranks: the 256 bytes first, then merge i makes a token of rank 256+i.
        # Check that this equals the token id in encoder.json (as tiktoken does),
        # so the ids can be used as ranks.
        ranks = {}
        for b in self.byte_encoder:          # insertion order = GPT-2's byte order
            ranks[self.byte_encoder[b]] = len(ranks)
        for a, b in merges:
            ranks[a + b] = len(ranks)
        expected = {s: i for s, i in encoder.items() if s != EOT_TOKEN}
        if ranks != expected or encoder.get(EOT_TOKEN) != VOCAB_SIZE - 1:
            raise PrepError("encoder.json and vocab.bpe do not describe the same GPT-2 vocabulary")
        self.ranks = ranks
        self.split = WordSplitter()
        self.cache = {}
        # Byte stand-in for each 1-byte string, to turn a piece's bytes into symbols fast.
        self._sym = [self.byte_encoder[b] for b in range(256)]

    @classmethod
    def from_files(cls, encoder_path, bpe_path):
        try:
            with open(encoder_path, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(bpe_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, ValueError) as e:
            raise PrepError(f"{e.filename if isinstance(e, OSError) else encoder_path}: cannot read tokenizer file ({e})")
        merges = []
        for line in lines[1:]:      # line 0 is "#version: 0.2"
            if line:
                pair = line.split(" ")
                if len(pair) != 2:
                    raise PrepError(f"{bpe_path}: malformed merge line {line!r}")
                merges.append((pair[0], pair[1]))
        return cls(encoder, merges)

    def bpe(self, piece):
        """Token ids of one pre-tokenized piece."""
        data = piece.encode("utf-8")
        sym = self._sym
        word = "".join([sym[b] for b in data])
        tok = self.ranks.get(word)
        if tok is not None:          # the whole piece is one token (tiktoken checks this first)
            return (tok,)
        merge = bpe_merge_heap if len(word) > self.LONG_PIECE else bpe_merge_simple
        return tuple(self.ranks[p] for p in merge(word, self.ranks))

    def encode(self, text):
        """GPT-2 token ids of text, like tiktoken's gpt2 encode_ordinary."""
        cache = self.cache
        if len(cache) > 1_000_000:
            cache.clear()
        out = []
        extend = out.extend
        try:
            for piece in self.split(text):
                ids = cache.get(piece)
                if ids is None:
                    ids = cache[piece] = self.bpe(piece)
                extend(ids)
        except UnicodeEncodeError:
            # Lone surrogates (possible in JSON input) are not valid Unicode;
            # like tiktoken, replace them with U+FFFD and start again.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.encode(text)
        return out

    def decode_bytes(self, ids):
        return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Part 3. Finding, downloading and checking input files
# --------------------------------------------------------------------------

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest, sha256=None):
    """Download url to dest (atomically), checking sha256 when given."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    log(f"downloading {url}\n  -> {dest}")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while True:
                block = r.read(1 << 20)
                if not block:
                    break
                f.write(block)
                h.update(block)
                done += len(block)
                if time.time() - last > 2:
                    last = time.time()
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    log(f"  {done / 1e6:.1f} MB{pct}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        _remove(tmp)
        reason = getattr(e, "reason", None) or e
        raise PrepError(f"{url}: download failed ({reason}); download it by hand and pass its path")
    except BaseException:
        _remove(tmp)
        raise
    if sha256 is not None and h.hexdigest() != sha256:
        _remove(tmp)
        raise PrepError(f"{url}: downloaded file has sha256 {h.hexdigest()}, expected {sha256}")
    os.replace(tmp, dest)
    return dest


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def resolve_vocab(args):
    """Paths of (encoder.json, vocab.bpe), verified against the known sha256."""
    cache = os.path.join(os.path.expanduser(args.cache_dir), "gpt2")
    if args.vocab_dir:
        folder = args.vocab_dir
    else:
        shared = os.path.join(SHARED_DIR, "gpt2")
        if all(os.path.isfile(os.path.join(shared, n)) for n in GPT2_FILES):
            folder = shared
        else:
            folder = cache
            for name, digest in GPT2_FILES.items():
                path = os.path.join(cache, name)
                if not os.path.isfile(path):
                    download(args.gpt2_base_url + name, path, digest)
    paths = []
    for name, digest in GPT2_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise PrepError(f"{path}: GPT-2 tokenizer file not found")
        got = sha256_file(path)
        if got != digest:
            raise PrepError(f"{path}: sha256 {got} does not match the GPT-2 {name} ({digest})")
        paths.append(path)
    return tuple(paths)


def resolve_archive(args):
    """Path of the IMDB archive, downloading it when it is nowhere to be found."""
    if args.archive:
        path = args.archive
    elif os.environ.get("IMDB_ARCHIVE"):
        path = os.environ["IMDB_ARCHIVE"]
    else:
        shared = os.path.join(SHARED_DIR, "data", IMDB_ARCHIVE_NAME)
        cached = os.path.join(os.path.expanduser(args.cache_dir), IMDB_ARCHIVE_NAME)
        if os.path.isfile(shared):
            path = shared
        elif os.path.isfile(cached):
            path = cached
        else:
            log(f"IMDB archive not found locally (tried {os.path.normpath(shared)} and {cached}); "
                "downloading it (84 MB)")
            path = download(args.imdb_url, cached, IMDB_SHA256_OFFICIAL)
    if not os.path.isfile(path):
        raise PrepError(f"{path}: IMDB archive not found")
    return path


# --------------------------------------------------------------------------
# Part 4. Reading the IMDB archive (streaming, never unpacked to disk)
# --------------------------------------------------------------------------

class HashingReader:
    """File wrapper that hashes and counts every byte read through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.done = 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.sha.update(data)
        self.done += len(data)
        return data


def clean_html(text):
    return re.sub(r"<br\s*/?>", "\n", text, flags=re.IGNORECASE)


def read_imdb(path, clean=False, splits=IMDB_SPLITS, on_progress=None):
    """Yield (split, label, id, stars, text) for every review in the archive.

    Reviews come in archive order; the caller sorts them.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as raw:
            hasher = HashingReader(raw)
            gz = gzip.GzipFile(fileobj=hasher, mode="rb")
            seen = 0
            # A bad review is reported only after the whole archive has been
            # read, so that a corrupt archive is reported as such (the gzip
            # checksum is only checked at the end).
            problem = None
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    m = IMDB_MEMBER_RE.fullmatch(member.name)
                    if not m or not member.isfile():
                        continue
                    split, folder, rid, stars = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
                    if folder == "unsup":
                        if split != "train":
                            continue
                        split = "unsup"
                    if split not in splits:
                        continue
                    label = IMDB_LABELS[folder]
                    if (label >= 0 and not 1 <= stars <= MAX_STARS) or (label < 0 and stars != 0):
                        problem = problem or f"{member.name}: unexpected star rating {stars}"
                    if problem:
                        continue    # only reading on, to check the archive itself
                    data = tar.extractfile(member).read()
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        problem = f"{member.name}: not valid UTF-8 ({e.reason} at byte {e.start})"
                        continue
                    # Like Python's text mode (and so the Hugging Face loader): \r\n -> \n.
                    if "\r" in text:
                        text = text.replace("\r\n", "\n").replace("\r", "\n")
                    if clean:
                        text = clean_html(text)
                    if not text:
                        problem = f"{member.name}: empty review"
                        continue
                    seen += 1
                    if on_progress:
                        on_progress(hasher.done / max(size, 1))
                    yield split, label, rid, stars, text
            # Read to the end so that the gzip CRC and length are checked.
            while gz.read(1 << 20):
                pass
            while hasher.read(1 << 20):
                pass
    except PrepError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise PrepError(f"{path}: corrupt or truncated archive ({e or type(e).__name__})")
    except OSError as e:
        raise PrepError(f"{path}: cannot read archive ({e.strerror or e})")
    if problem:
        raise PrepError(f"{path}: {problem}")
    if seen == 0:
        raise PrepError(f"{path}: no aclImdb/{{train,test}}/{{pos,neg,unsup}}/*.txt reviews found "
                        "(is this the IMDB aclImdb_v1.tar.gz?)")
    digest = hasher.sha.hexdigest()
    if digest not in (IMDB_SHA256_OFFICIAL, IMDB_SHA256_REPACKED):
        log(f"note: {path}: sha256 {digest} is not a known IMDB archive; using it anyway")


# --------------------------------------------------------------------------
# Part 5. Reading a generic CSV / TSV / JSONL dataset
# --------------------------------------------------------------------------

def detect_format(path, fmt):
    if fmt:
        return fmt
    lower = path.lower()
    for ext, name in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if lower.endswith(ext):
            return name
    raise PrepError(f"{path}: cannot tell the format from the extension; pass --format csv|tsv|jsonl")


def read_table(path, fmt, text_col, label_col):
    """Yield (where, text, raw_label) for each row; raw_label is None when unlabelled."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise PrepError(f"{path}: cannot open ({e.strerror or e})")
    with f:
        try:
            if fmt == "jsonl":
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise PrepError(f"{path}: line {lineno}: invalid JSON ({e})")
                    where = f"line {lineno}"
                    if not isinstance(row, dict):
                        raise PrepError(f"{path}: {where}: expected a JSON object")
                    for col in (text_col, label_col):
                        if col is not None and col not in row:
                            raise PrepError(f"{path}: {where}: unknown column {col!r} "
                                            f"(columns: {', '.join(map(str, row))})")
                    text = row[text_col]
                    if not isinstance(text, str):
                        raise PrepError(f"{path}: {where}: column {text_col!r} is not a string")
                    yield where, text, (row[label_col] if label_col is not None else None)
            else:
                csv.field_size_limit(1 << 30)
                if fmt == "csv":
                    reader = csv.reader(f)
                else:  # TSV as in IANA text/tab-separated-values: no quoting
                    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                header = next(reader, None)
                if header is None:
                    raise PrepError(f"{path}: empty file (no header row)")
                cols = []
                for col in (text_col, label_col):
                    if col is None:
                        continue
                    if col not in header:
                        raise PrepError(f"{path}: unknown column {col!r} (columns: {', '.join(header)})")
                    cols.append(header.index(col))
                for row in reader:
                    where = f"line {reader.line_num}"
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise PrepError(f"{path}: {where}: {len(row)} fields, header has {len(header)}")
                    yield where, row[cols[0]], (row[cols[1]] if label_col is not None else None)
        except UnicodeDecodeError as e:
            raise PrepError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})")
        except csv.Error as e:
            raise PrepError(f"{path}: CSV parse error ({e})")


INT_RE = re.compile(r"[+-]?[0-9]+")


def normalize_label(path, where, raw):
    """A raw label as a non-empty string; JSON integers are accepted."""
    if isinstance(raw, bool) or raw is None:
        raise PrepError(f"{path}: {where}: label {json.dumps(raw)} is not a class name or integer")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, int):
        return str(raw)
    if not isinstance(raw, str):
        raise PrepError(f"{path}: {where}: label {json.dumps(raw)} is not a class name or integer")
    s = raw.strip()
    if not s:
        raise PrepError(f"{path}: {where}: empty label")
    return s


def build_label_map(path, names, label_names=None):
    """Map label strings to 0..K-1.

    Integer labels that are exactly 0..K-1 keep their value; other integer
    labels are numbered in numeric order; anything else in sorted string order.
    """
    if label_names:
        mapping = {name: i for i, name in enumerate(label_names)}
        for name in names:
            if name not in mapping:
                raise PrepError(f"{path}: label {name!r} is not one of --label-names {','.join(label_names)}")
        return mapping
    distinct = set(names)
    if len(distinct) < 2:
        raise PrepError(f"{path}: found {len(distinct)} distinct label(s) {sorted(distinct)}; "
                        "need at least 2 (or give them with --label-names)")
    if all(INT_RE.fullmatch(s) for s in distinct):
        values = sorted(distinct, key=int)
        if len({int(v) for v in values}) != len(values):
            raise PrepError(f"{path}: labels {values} spell the same integer differently")
        return {v: i for i, v in enumerate(values)}   # identity when they are 0..K-1
    return {v: i for i, v in enumerate(sorted(distinct))}


# --------------------------------------------------------------------------
# Part 6. Tokenizing in parallel
# --------------------------------------------------------------------------

_TOKENIZER = None


def _init_worker(vocab_paths):
    global _TOKENIZER
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is handled by the main process
    if _TOKENIZER is None:          # already there when the pool was forked
        _TOKENIZER = GPT2Tokenizer.from_files(*vocab_paths)


def _tokenize_batch(texts):
    """Worker: tokenize texts; return (lengths, tokens) as compact arrays, cheap to send back."""
    lengths = array.array("i")
    tokens = array.array("H")
    for text in texts:
        ids = _TOKENIZER.encode(text)
        lengths.append(len(ids))
        tokens.extend(ids)
    return lengths, tokens


class Progress:
    def __init__(self, what):
        self.what = what
        self.start = time.time()
        self.last = 0.0
        self.shown = None
        self.tty = sys.stderr.isatty()

    def __call__(self, examples, tokens, fraction=None, final=False):
        now = time.time()
        if not final and now - self.last < (0.5 if self.tty else 5.0):
            return
        if final and not self.tty and self.shown == (examples, tokens):
            return      # the last line already said it all
        self.last = now
        self.shown = (examples, tokens)
        dt = max(now - self.start, 1e-9)
        pct = f"{100 * fraction:5.1f}% " if fraction is not None else ""
        msg = (f"{self.what}: {pct}{examples:,} texts, {tokens:,} tokens, "
               f"{dt:.1f} s, {tokens / dt:,.0f} tokens/s")
        if self.tty:
            sys.stderr.write("\r" + msg + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log(msg)


def tokenize_stream(items, vocab_paths, workers, what="tokenizing", fraction=None, batch_size=200):
    """Tokenize (key, text) pairs; return list of (key, token array), in input order.

    items is consumed in this process (e.g. while reading the archive) and
    batches are handed to a pool of worker processes.
    """
    global _TOKENIZER
    progress = Progress(what)
    results = []
    counts = [0, 0]

    def collect(keys, res):
        lengths, tokens = res
        pos = 0
        for key, n in zip(keys, lengths):
            results.append((key, tokens[pos:pos + n]))
            pos += n
        counts[0] += len(keys)
        counts[1] += len(tokens)
        progress(counts[0], counts[1], fraction() if fraction else None)

    def batches():
        keys, texts = [], []
        for key, text in items:
            keys.append(key)
            texts.append(text)
            if len(texts) == batch_size:
                yield keys, texts
                keys, texts = [], []
        if texts:
            yield keys, texts

    if _TOKENIZER is None:
        _TOKENIZER = GPT2Tokenizer.from_files(*vocab_paths)
    if workers <= 1:
        for keys, texts in batches():
            collect(keys, _tokenize_batch(texts))
    else:
        pool = multiprocessing.Pool(workers, _init_worker, (vocab_paths,))
        try:
            pending = collections.deque()
            for keys, texts in batches():
                pending.append((keys, pool.apply_async(_tokenize_batch, (texts,))))
                while len(pending) > 4 * workers:
                    k, r = pending.popleft()
                    collect(k, r.get())
            while pending:
                k, r = pending.popleft()
                collect(k, r.get())
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    progress(counts[0], counts[1], 1.0 if fraction else None, final=True)
    return results


# --------------------------------------------------------------------------
# Part 7. The binary dataset file (dev/FORMATS.md, section 3)
# --------------------------------------------------------------------------

def _le(arr):
    if sys.byteorder != "little":
        arr = array.array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def write_dataset(path, examples, num_labels):
    """examples: list of (label, stars, token array). Written as-is to path."""
    n = len(examples)
    offsets = array.array("q")
    lengths = array.array("i")
    labels = array.array("i")
    stars = array.array("i")
    pos = 0
    for label, star, toks in examples:
        if len(toks) < 1:
            raise PrepError(f"{path}: an example has no tokens")
        if not 0 <= star <= MAX_STARS:
            raise PrepError(f"{path}: star rating {star} is out of range 0..{MAX_STARS} (0: unrated)")
        offsets.append(pos)
        lengths.append(len(toks))
        labels.append(label)
        stars.append(star)
        pos += len(toks)
    header = array.array("i", [DATASET_MAGIC, DATASET_VERSION, num_labels, VOCAB_SIZE])
    header_bytes = _le(header) + _le(array.array("q", [n, pos]))
    header_bytes += b"\0" * (HEADER_BYTES - len(header_bytes))
    with open(path, "wb") as f:
        f.write(header_bytes)
        f.write(_le(offsets))
        f.write(_le(lengths))
        f.write(_le(labels))
        f.write(_le(stars))
        for _, _, toks in examples:
            f.write(_le(toks))
    size = os.path.getsize(path)
    if size != HEADER_BYTES + 20 * n + 2 * pos:
        raise PrepError(f"{path}: wrote {size} bytes, expected {HEADER_BYTES + 20 * n + 2 * pos}")


def read_dataset(path):
    """Parse a dataset file back (used by the tests): dict of header fields and arrays."""
    with open(path, "rb") as f:
        data = f.read()
    hdr = array.array("i", data[:16])
    n, num_tokens = array.array("q", data[16:32])
    if sys.byteorder != "little":
        hdr.byteswap()
    if hdr[0] != DATASET_MAGIC or hdr[1] != DATASET_VERSION:
        raise PrepError(f"{path}: not a version {DATASET_VERSION} dataset file")
    pos = HEADER_BYTES

    def take(code, count):
        nonlocal pos
        a = array.array(code)
        a.frombytes(data[pos:pos + a.itemsize * count])
        pos += a.itemsize * count
        if sys.byteorder != "little":
            a.byteswap()
        return a

    out = {"magic": hdr[0], "version": hdr[1], "num_labels": hdr[2], "vocab_size": hdr[3],
           "num_examples": n, "num_tokens": num_tokens, "reserved": data[32:HEADER_BYTES],
           "file_size": len(data)}
    out["offsets"] = take("q", n)
    out["lengths"] = take("i", n)
    out["labels"] = take("i", n)
    out["stars"] = take("i", n)
    out["tokens"] = take("H", num_tokens)
    return out


class AtomicOutputs:
    """Temporary names for all outputs, renamed into place only if all succeed."""

    def __init__(self):
        self.pending = []   # (tmp, final)

    def tmp_for(self, final):
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        self.pending.append((tmp, final))
        return tmp

    def commit(self):
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def abort(self):
        for tmp, _ in self.pending:
            _remove(tmp)
        self.pending = []


# --------------------------------------------------------------------------
# Part 8. Summary statistics
# --------------------------------------------------------------------------

def summarize(name, examples, label_names):
    """One block of text about one output file (for stdout)."""
    lengths = sorted(len(t) for _, _, t in examples)
    n = len(lengths)
    counts = collections.Counter(label for label, _, _ in examples)
    parts = []
    for label in sorted(counts):
        lname = label_names.get(label, str(label)) if label_names else str(label)
        parts.append(f"{lname}={counts[label]:,}" if label >= 0 else f"unlabelled={counts[label]:,}")
    p90 = lengths[max(0, math.ceil(0.9 * n) - 1)]
    over512 = sum(1 for x in lengths if x > 512) / n
    over1024 = sum(1 for x in lengths if x > 1024) / n
    return (f"{name}: {n:,} examples ({', '.join(parts)}), {sum(lengths):,} tokens\n"
            f"    tokens per example: mean {statistics.fmean(lengths):.1f}, "
            f"median {statistics.median(lengths):g}, p90 {p90}, max {lengths[-1]}; "
            f"over 512: {100 * over512:.2f}%, over 1024: {100 * over1024:.2f}%")


# --------------------------------------------------------------------------
# Part 9. The two pipelines
# --------------------------------------------------------------------------

def run_imdb(args, vocab_paths):
    archive = resolve_archive(args)
    splits = tuple(s for s in IMDB_SPLITS if not (s == "unsup" and args.no_unsup))
    log(f"reading {archive} (streaming), tokenizer files in {os.path.dirname(vocab_paths[0])}, "
        f"{args.workers} worker(s)")
    frac = [0.0]

    def items():
        for split, label, rid, stars, text in read_imdb(
                archive, args.clean_html, splits, on_progress=lambda x: frac.__setitem__(0, x)):
            yield (split, label, rid, stars), text

    results = tokenize_stream(items(), vocab_paths, args.workers,
                              "tokenizing IMDB", fraction=lambda: frac[0])
    by_split = {s: [] for s in splits}
    for (split, label, rid, stars), toks in results:
        by_split[split].append((label, rid, stars, toks))
    outputs = AtomicOutputs()
    summary = []
    try:
        for split in splits:
            rows = by_split[split]
            if not rows:
                raise PrepError(f"{archive}: no reviews for split {split!r}")
            rows.sort(key=lambda r: (r[0], r[1]))        # neg then pos, by numeric id
            seen = set()
            for label, rid, _, _ in rows:
                if (label, rid) in seen:
                    raise PrepError(f"{archive}: review id {rid} appears twice in {split}")
                seen.add((label, rid))
            examples = [(label, stars, toks) for label, _, stars, toks in rows]
            final = os.path.join(args.out_dir, f"imdb_{split}.bin")
            write_dataset(outputs.tmp_for(final), examples, 0 if split == "unsup" else 2)
            summary.append(summarize(final, examples, {0: "neg", 1: "pos"}))
        outputs.commit()
    except BaseException:
        outputs.abort()
        raise
    return summary


def run_generic(args, vocab_paths):
    path = args.input
    fmt = detect_format(path, args.format)
    label_col = None if args.no_labels else args.label_column
    if not os.path.isfile(path):
        raise PrepError(f"{path}: input file not found")
    rows = []
    for where, text, raw in read_table(path, fmt, args.text_column, label_col):
        if text == "":
            raise PrepError(f"{path}: {where}: empty text in column {args.text_column!r}")
        label = None if label_col is None else normalize_label(path, where, raw)
        if args.clean_html:
            text = clean_html(text)
        rows.append((label, text))
    if not rows:
        raise PrepError(f"{path}: no rows")
    if label_col is None:
        mapping, num_labels = None, 0
    else:
        names = [s.strip() for s in args.label_names.split(",")] if args.label_names else None
        if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
            raise PrepError("--label-names: need at least 2 distinct comma-separated names")
        mapping = build_label_map(path, [label for label, _ in rows], names)
        num_labels = len(mapping)
    output = args.output or os.path.join(args.out_dir or "data",
                                         os.path.splitext(os.path.basename(path))[0] + ".bin")
    log(f"read {len(rows):,} rows from {path} ({fmt}); {args.workers} worker(s)")
    results = tokenize_stream(((i, text) for i, (_, text) in enumerate(rows)),
                              vocab_paths, args.workers, "tokenizing")
    examples = [(mapping[rows[i][0]] if mapping else -1, 0, toks) for i, toks in results]
    outputs = AtomicOutputs()
    try:
        write_dataset(outputs.tmp_for(output), examples, num_labels)
        if mapping is not None:
            tmp = outputs.tmp_for(output + ".labels.json")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"num_labels": num_labels,
                           "labels": sorted(mapping, key=mapping.get),
                           "label_to_id": mapping,
                           "source": os.path.basename(path),
                           "label_column": label_col}, f, indent=2, ensure_ascii=False)
                f.write("\n")
        outputs.commit()
    except BaseException:
        outputs.abort()
        raise
    names = {i: s for s, i in mapping.items()} if mapping else None
    return [summarize(output, examples, names)]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Tokenize IMDB (or a CSV/TSV/JSONL dataset) with GPT-2 BPE into the "
                    "train_gpt2_sft dataset format.")
    p.add_argument("--archive", help="path of aclImdb_v1.tar.gz (default: $IMDB_ARCHIVE, "
                   "../shared/data/, the cache, else download)")
    p.add_argument("--out-dir", default=None, help="output folder (default data/imdb; for --input: data)")
    p.add_argument("--clean-html", action="store_true", help="turn <br /> into newlines")
    p.add_argument("--no-unsup", action="store_true", help="skip the 50,000 unlabelled reviews")
    p.add_argument("--vocab-dir", help="folder with encoder.json and vocab.bpe "
                   "(default ../shared/gpt2, the cache, else download)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="download cache (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    g = p.add_argument_group("generic dataset")
    g.add_argument("--input", help="a CSV, TSV or JSONL file instead of IMDB")
    g.add_argument("--format", choices=("csv", "tsv", "jsonl"), help="default: from the extension")
    g.add_argument("--text-column", default="text")
    g.add_argument("--label-column", default="label")
    g.add_argument("--label-names", help="comma-separated class names fixing the order 0..K-1")
    g.add_argument("--no-labels", action="store_true", help="unlabelled data (label -1, num_labels 0)")
    g.add_argument("--output", help="output .bin path (default <out-dir>/<input name>.bin)")
    # Overridable download locations (mirrors; used by the tests with a local server).
    p.add_argument("--imdb-url", default=IMDB_URL, help=argparse.SUPPRESS)
    p.add_argument("--gpt2-base-url", default=GPT2_BASE_URL, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.input is None:
        if args.output:
            p.error("--output is for --input; IMDB outputs go to --out-dir")
        args.out_dir = args.out_dir or os.path.join("data", "imdb")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    try:
        vocab_paths = resolve_vocab(args)
        if args.input:
            summary = run_generic(args, vocab_paths)
        else:
            summary = run_imdb(args, vocab_paths)
    except PrepError as e:
        msg = " ".join(str(e).split("\n"))
        log(f"prepro_imdb: error: {msg}")
        return 1
    except OSError as e:     # e.g. cannot create or write the output
        where = f"{e.filename}: " if e.filename else ""
        log(f"prepro_imdb: error: {where}{e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        log("prepro_imdb: interrupted; no output written")
        return 130
    for block in summary:
        print(block)
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
