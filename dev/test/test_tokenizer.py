#!/usr/bin/env python3
"""
Check prepro_imdb's GPT-2 tokenizer against an independent implementation:
js-tiktoken (npm), a JavaScript port of tiktoken, with its "gpt2" ranks.

Needs node and, once:
    npm install --prefix build/npm --no-audit --no-fund js-tiktoken@1.0.21

Run from the repository root:
    python3 dev/test/test_tokenizer.py [--archive PATH] [--npm-prefix build/npm]

Test texts: 2,500 real reviews picked deterministically from all five IMDB
folders (ids divisible by 25, or by 100 for unsup), 100 of them again with
--clean-html applied, a list of adversarial strings, 1,000 seeded random
strings built from troublesome characters, and some very long pieces.

For each text it checks: the token ids equal js-tiktoken's; the compiled
split pattern equals the readable character scanner; decoding gives the text
back. It also checks the two BPE merge loops agree. Ends with
"N passed, N failed"; exit status 1 on any failure.

About the reference: JavaScript's \\s is not Unicode White_Space (it includes
U+FEFF and lacks U+0085), unlike the Rust regex crate used by tiktoken and the
Python `regex` module used by OpenAI's encoder.py. dev/test/tokenizer_ref.js
therefore runs js-tiktoken with \\s spelled as \\p{White_Space}; the stock
js-tiktoken result is compared too, and may differ only on texts with those
two characters.
"""

import argparse
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.dont_write_bytecode = True   # keep the checkout free of __pycache__
sys.path.insert(0, ROOT)
import prepro_imdb as P  # noqa: E402

NPM_INSTALL = "npm install --prefix build/npm --no-audit --no-fund js-tiktoken@1.0.21"


def adversarial_strings():
    s = [
        # empty and whitespace only
        "", " ", "  ", "   ", "\n", "\n\n", "\t", " \t ", "\t\t\n \n", "\r\n", "a\r\nb",
        # letters, case, single chars
        "a", "A", "Hello world", "HELLO WORLD", "hello  world", "hello   world",
        # contractions in all cases
        "I'M", "don'T", "'s", "'S", "it's", "IT'S", "It'S", "we're", "WE'RE", "We'Re",
        "they've", "THEY'VE", "I'd", "I'D", "you'll", "YOU'LL", "You'Ll", "'ll", "'", "''",
        "'''s", "rock'n'roll", "x's's", " 's", "  's", "!'s", "'s'", "'re'", "don\u2019t",
        "\u2019s", "o'clock", "'t'm'd'", "'12", "' s", "'\ts",
        # runs of spaces / tabs / newlines, leading and trailing whitespace
        "a  b", "a   b", "a\t\tb", "a \n b", "a\n\n\nb", "   leading", "trailing   ",
        "trailing \n", " \n ", "\t x", "\n x", "\n\nx", "  !!", " !!", "a \t b", "x\n", "x \n",
        " " * 40 + "x", "x" + " " * 40, "a" + "\n" * 7 + " b",
        # whitespace before digits and symbols
        " 2011", "  2011", "\t2011", " $5", "  $5", " (1999)", "\n(1999)",
        # numbers
        "1234567890", "3.14159", "1,000,000", "007", "10/10", "7/10!!!", "12abc34",
        "\u0663\u0664\u0665", "\u216b", "\u00bd", "\u00b2\u00b3", "1\u00bd", "x\u00b2",
        "\uff11\uff12\uff13", "\u2460\u2461", "9" * 100,
        # punctuation and symbols
        "...", "!!!", "?!?!", "$$$", "C++", "e-mail", "--", "\u2014", "\u2013 dash",
        "http://www.imdb.com/title/tt0111161/", "@user #hashtag", "(*)", "a.b.c", "\"quoted\"",
        "\u201ccurly\u201d", "\u00ab\u00bb", "***spoilers***", "~~~", "\\n", "\x00", "a\x00b", "\x7f",
        # HTML and the special token
        "<br />", "<br /><br />", "Great movie.<br /><br />Loved it", "<br/>", "<BR>",
        "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|> <|endoftext|>", " <|endoftext|>",
        "<|endoftext", "endoftext|>",
        # emoji and other astral characters
        "\U0001f600", "\U0001f44d\U0001f3fd", "I \u2764\ufe0f it",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f1fa\U0001f1f8",
        "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
        "\U00010348", "\U0002070e", "x\U0001f600y", " \U0001f600", "\U0001f600\U0001f600 \U0001f600",
        "\U0001d7d9\U0001d7da", "\U000e0041",
        # CJK and other scripts
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\u4e2d\u6587\uff0c\u6807\u70b9\u3002",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u041f\u0440\u0438\u0432\u0435\u0442 world 123",
        "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "\u0645\u0631\u062d\u0628\u0627 2024",
        "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0e01\u0e48\u0e32", "\u0928\u092e\u0938\u094d\u0924\u0947",
        "Caf\u00e9 na\u00efve r\u00e9sum\u00e9", "Stra\u00dfe", "\u0130stanbul", "\u0131",
        "mixed\u65e5\u672crom\u0430\u0458\u0438",
        # combining marks
        "e\u0301", "Ame\u0301lie", "Z\u0364\u0301alg\u0300o\u0351", " \u0301", "\u0301\u0301x",
        "a\u20dd", "1\u20e3",
        # unusual unicode whitespace (White_Space and look-alikes that are not)
        "a\u00a0b", "a \u00a0b", "a\u00a0 b", "\u00a0", "\u00a0\u00a0x", "\u3000x", "a\u3000\u3000b",
        "a\u2028b", "a\u2029b", "a\x0bb", "a\x0cb", "a\x1cb", "a \x1c b", "a\x1d\x1e\x1fb",
        " \x1fx", "a\x85b", "a \x85b", "a\x85 b", "a\x85\x85b", "\x85", " \x85", "\x85 x",
        "x\ufeffy", "x \ufeffy", "\ufeff", "a\u200bb", "\u2009thin", "a\u202fb", "a\u205fb",
        "a\u1680b", "a\u180eb", "a\u2000\u2001\u200ab", " \u2003x", "\u2003 x",
        # assorted
        "A" * 300, "ab" * 400, "!" * 500, "\u00e9" * 200, "\U0001f600" * 50,
        "The film's 2 hours... I'd say 7/10 -- GREAT!!! \U0001f44d",
        # lone surrogates (possible from JSON input): replaced by U+FFFD, as tiktoken does
        "a\ud800b", "\udfff", " \udc00x", "x\ud83d\ude00y",
    ]
    return s


def fuzz_strings(count=1000, seed=1234):
    """Random strings from troublesome characters (all assigned before Unicode 14)."""
    alphabet = (list("abcXYZ019 ") + ["  ", "   ", "'", "'s", "'T", "'ll", "'RE", "\t", "\n", "\n\n",
                                       "\u00a0", "\x85", "\u3000", "\x1c", "\x1f", "\x0b", "\u2028",
                                       "\ufeff", "\u200b", "\u00e9", "e\u0301", "\u0301", "\u65e5",
                                       "\U0001f600", "\U0001f3fd", "\u200d", "!", ".", ",", "-", "$",
                                       "\u0663", "\u00bd", "\u216b", "<br />", "<|endoftext|>", "\u00df",
                                       "\u0430", "\U0001d518", "\x00"])
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def long_strings(seed=99):
    rng = random.Random(seed)
    out = []
    for n in (200, 1000, 5000):
        out.append("".join(rng.choice("abe") for _ in range(n)))      # one huge letter piece
        out.append("".join(rng.choice("aeiourstln") for _ in range(n)))
    out.append("".join(rng.choice("!?.-*") for _ in range(3000)))     # one huge symbol piece
    out.append("".join(rng.choice("0123456789") for _ in range(3000)))
    out.append("\U0001f600\u65e5" * 800)
    return out


def review_strings(archive):
    picked = []
    for split, label, rid, stars, text in P.read_imdb(archive):
        step = 100 if split == "unsup" else 25
        if rid % step == 0:
            picked.append(((split, label, rid), text))
    picked.sort()
    texts = [t for _, t in picked]
    return texts, [P.clean_html(t) for t in texts[::25]]


def run_reference(texts, prefix):
    cmd = ["node", os.path.join(ROOT, "dev", "test", "tokenizer_ref.js"), prefix]
    try:
        r = subprocess.run(cmd, input=json.dumps(texts).encode(), capture_output=True)
    except FileNotFoundError:
        return None, "node not found (apt-get install nodejs npm)"
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace").strip()
    return json.loads(r.stdout), None


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", default=os.environ.get("IMDB_ARCHIVE") or
                    os.path.join(P.SHARED_DIR, "data", P.IMDB_ARCHIVE_NAME))
    ap.add_argument("--npm-prefix", default=os.path.join(ROOT, "build", "npm"))
    ap.add_argument("--vocab-dir", default=os.path.join(P.SHARED_DIR, "gpt2"))
    args = ap.parse_args()

    passed = failed = 0

    def fail(msg):
        nonlocal failed
        failed += 1
        print("FAIL " + msg)

    if not os.path.isfile(args.archive):
        print(f"error: IMDB archive {args.archive} not found (pass --archive)")
        print("0 passed, 1 failed")
        return 1
    tok = P.GPT2Tokenizer.from_files(os.path.join(args.vocab_dir, "encoder.json"),
                                     os.path.join(args.vocab_dir, "vocab.bpe"))

    reviews, cleaned = review_strings(args.archive)
    groups = [("review", reviews), ("review --clean-html", cleaned),
              ("adversarial", adversarial_strings()), ("fuzz", fuzz_strings()), ("long", long_strings())]
    texts = [t for _, g in groups for t in g]
    kinds = [k for k, g in groups for _ in g]
    print(f"{len(reviews)} reviews, {len(cleaned)} cleaned reviews, {len(texts)} texts in all")

    ref, err = run_reference(texts, args.npm_prefix)
    if ref is None:
        print(f"error: reference tokenizer unavailable: {err}")
        print(f"install it with: {NPM_INSTALL}")
        print("0 passed, 1 failed")
        return 1
    print(f"reference: js-tiktoken {ref['version']}, pattern {ref['pattern']}")

    stock_diffs = {}
    for i, (kind, text) in enumerate(zip(kinds, texts)):
        ours = tok.encode(text)
        theirs = ref["tiktoken"][i]
        ok = True
        if ours != theirs:
            k = first_diff(ours, theirs)
            fail(f"{kind} #{i} {text[:200]!r}: ids differ at token {k}\n"
                 f"  prepro_imdb: {ours}\n  js-tiktoken: {theirs}")
            ok = False
        scanned = P.split_words_reference(text)
        patterns = [("full", tok.split.full)]
        if not any(ord(c) > 0xFFFF for c in text):
            patterns.append(("BMP", tok.split.bmp))
        for name, split in patterns:
            if split(text) != scanned:
                fail(f"{kind} #{i} {text[:200]!r}: scanner {scanned[:20]} "
                     f"!= {name} pattern {split(text)[:20]}")
                ok = False
        if tok.decode(ours) != text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"):
            fail(f"{kind} #{i} {text[:200]!r}: decode gives {tok.decode(ours)[:200]!r}")
            ok = False
        if ref["js_stock"][i] != theirs:
            stock_diffs[kind] = stock_diffs.get(kind, 0) + 1
            if "\x85" not in text and "\ufeff" not in text:
                fail(f"{kind} #{i} {text[:200]!r}: stock js-tiktoken differs without U+0085/U+FEFF")
                ok = False
        passed += ok

    # The two merge loops (simple for short pieces, heap for long ones) must agree.
    rng = random.Random(7)
    merge_fail = 0
    for trial in range(3000):
        n = rng.randint(2, 40)
        word = "".join(rng.choice("aeinorstl\u0120\u010a.!0") for _ in range(n))
        a = P.bpe_merge_simple(word, tok.ranks)
        b = P.bpe_merge_heap(word, tok.ranks)
        if a != b:
            merge_fail += 1
            if merge_fail <= 5:
                print(f"FAIL merge {word!r}: simple {a} heap {b}")
    if merge_fail:
        failed += 1
        print(f"FAIL bpe_merge_heap differs from bpe_merge_simple on {merge_fail} of 3000 words")
    else:
        passed += 1

    print(f"python unicodedata {P.unicodedata.unidata_version}; stock js-tiktoken (JavaScript \\s) "
          f"differed on {sum(stock_diffs.values())} texts {stock_diffs}, all containing U+0085 or U+FEFF")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
