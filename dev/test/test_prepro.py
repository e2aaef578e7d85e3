#!/usr/bin/env python3
"""
Tests of prepro_imdb.py as a program: the dataset file format, the IMDB
archive path (on a tiny fake archive in the official layout), the generic
CSV / TSV / JSONL path, downloads (from a local HTTP server on 127.0.0.1),
and bad inputs, which must each give a non-zero exit, a one-line error naming
the file, no traceback and no output file.

Run from anywhere (needs the GPT-2 files in ../shared/gpt2 or --vocab-dir):
    python3 dev/test/test_prepro.py [-k substring] [--vocab-dir DIR]
Ends with "N passed, N failed"; exit status 1 on any failure.
"""

import argparse
import array
import functools
import http.server
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.dont_write_bytecode = True   # keep the checkout free of __pycache__
sys.path.insert(0, ROOT)
import prepro_imdb as P  # noqa: E402

SCRIPT = os.path.join(ROOT, "prepro_imdb.py")
VOCAB_DIR = os.path.join(P.SHARED_DIR, "gpt2")
TOK = None

# (split folder, name, text). Ids deliberately not in numeric order when sorted
# as strings (2 < 10), texts with <br />, emoji, \x85, the special token, CRLF.
FAKE_REVIEWS = [
    ("train/pos", "10_8.txt", "A superb film.<br /><br />I'd watch it again \U0001f600"),
    ("train/pos", "2_9.txt", "Loved it!!! 10/10"),
    ("train/pos", "1_7.txt", "Good, not great.\x85 Still: recommended."),
    ("train/neg", "12_2.txt", "Awful.<br />Just awful."),
    ("train/neg", "0_4.txt", "Meh <|endoftext|> meh"),
    ("train/neg", "3_1.txt", "Worst  film   ever\u00a0made."),
    ("test/pos", "5_7.txt", "Caf\u00e9 scenes are lovely; \u65e5\u672c\u8a9e too."),
    ("test/pos", "0_10.txt", "Perfect."),
    ("test/neg", "7_3.txt", "DON'T watch it. It'S bad."),
    ("test/neg", "1_2.txt", "Line one\r\nline two"),
    ("train/unsup", "11_0.txt", "Unlabelled review eleven."),
    ("train/unsup", "0_0.txt", "Unlabelled review zero."),
    ("train/unsup", "3_0.txt", "   leading spaces and trailing   "),
]


def expected_split(split):
    """[(label, stars, text)] in the order prepro_imdb must write them."""
    rows = []
    for folder, name, text in FAKE_REVIEWS:
        s, kind = folder.split("/")
        if kind == "unsup":
            s = "unsup"
        if s != split:
            continue
        rid, stars = map(int, name[:-4].split("_"))
        rows.append((P.IMDB_LABELS[kind], rid, stars, text.replace("\r\n", "\n")))
    rows.sort()
    return [(label, stars, text) for label, _, stars, text in rows]


def make_archive(path, reviews=FAKE_REVIEWS, extra=()):
    """A .tar.gz in the official aclImdb layout, members in shuffled order."""
    members = [("aclImdb/README", b"fake IMDB for tests\n"), ("aclImdb/imdb.vocab", b"the\nfilm\n"),
               ("aclImdb/train/urls_pos.txt", b"http://www.imdb.com/title/tt0000001/usercomments\n")]
    members += [(f"aclImdb/{folder}/{name}", text.encode("utf-8")) for folder, name, text in reviews]
    members += list(extra)
    random.Random(5).shuffle(members)
    with tarfile.open(path, "w:gz") as tar:
        for d in ("aclImdb", "aclImdb/train", "aclImdb/test"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run(args, env=None, script=SCRIPT, cwd=None):
    e = dict(os.environ)
    e.pop("IMDB_ARCHIVE", None)
    e.update(env or {})
    return subprocess.run([sys.executable, script] + args, capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=300)


def files_under(d):
    if not os.path.isdir(d):
        return []
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def check_dataset(path, expected, num_labels):
    """Parse path and compare it with expected [(label, stars, text)]."""
    d = P.read_dataset(path)
    n = len(expected)
    assert d["magic"] == 20261127 and d["version"] == 1, (d["magic"], d["version"])
    assert d["num_labels"] == num_labels, d["num_labels"]
    assert d["vocab_size"] == 50257, d["vocab_size"]
    assert d["num_examples"] == n, (d["num_examples"], n)
    assert d["reserved"] == bytes(1024 - 32), "reserved header bytes not zero"
    assert d["file_size"] == 1024 + 20 * n + 2 * d["num_tokens"], "file size formula"
    assert sum(d["lengths"]) == d["num_tokens"]
    pos = 0
    for i, (label, stars, text) in enumerate(expected):
        assert d["offsets"][i] == pos, f"offset {i}"
        length = d["lengths"][i]
        assert length >= 1
        assert d["labels"][i] == label, f"label {i}: {d['labels'][i]} != {label}"
        assert d["stars"][i] == stars, f"stars {i}: {d['stars'][i]} != {stars}"
        toks = list(d["tokens"][pos:pos + length])
        assert TOK.decode(toks) == text, f"example {i} decodes to {TOK.decode(toks)!r}, not {text!r}"
        assert toks == TOK.encode(text), f"example {i} tokens differ from encode()"
        assert 50256 not in toks, "end-of-text token added"
        pos += length
    return d


def assert_clean_failure(r, name_in_msg, out_dir, expect_exit=1):
    """Non-zero exit; stderr ends with exactly one error line naming the file
    (progress lines may come before it); no traceback; nothing written."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == expect_exit, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert "Traceback" not in r.stderr, r.stderr
    errors = [x for x in lines if "error" in x.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line at the end, got {lines}"
    assert errors[0].startswith("prepro_imdb: error: "), errors[0]
    assert name_in_msg in errors[0], f"{name_in_msg!r} not named in {errors[0]!r}"
    assert files_under(out_dir) == [], f"output left behind: {files_under(out_dir)}"
    return errors[0]


# ---------------------------------------------------------------- tests

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def imdb_format(tmp):
    arc = make_archive(os.path.join(tmp, "aclImdb_v1.tar.gz"))
    out = os.path.join(tmp, "out")
    r = run(["--archive", arc, "--out-dir", out, "--vocab-dir", VOCAB_DIR, "--workers", "2"])
    assert r.returncode == 0, r.stderr
    assert files_under(out) == ["imdb_test.bin", "imdb_train.bin", "imdb_unsup.bin"], files_under(out)
    check_dataset(os.path.join(out, "imdb_train.bin"), expected_split("train"), 2)
    check_dataset(os.path.join(out, "imdb_test.bin"), expected_split("test"), 2)
    check_dataset(os.path.join(out, "imdb_unsup.bin"), expected_split("unsup"), 0)
    d = P.read_dataset(os.path.join(out, "imdb_train.bin"))
    assert list(d["labels"]) == [0, 0, 0, 1, 1, 1], list(d["labels"])
    assert list(d["stars"]) == [4, 1, 2, 7, 9, 8], list(d["stars"])   # neg 0,3,12 then pos 1,2,10
    u = P.read_dataset(os.path.join(out, "imdb_unsup.bin"))
    assert list(u["labels"]) == [-1, -1, -1] and list(u["stars"]) == [0, 0, 0]
    for word in ("imdb_train.bin: 6 examples (neg=3, pos=3)", "imdb_test.bin: 4 examples",
                 "imdb_unsup.bin: 3 examples (unlabelled=3)", "median", "p90", "over 512", "over 1024"):
        assert word in r.stdout, f"{word!r} missing from summary:\n{r.stdout}"
    assert "note:" in r.stderr and "not a known IMDB archive" in r.stderr


@test
def imdb_clean_html_and_workers(tmp):
    arc = make_archive(os.path.join(tmp, "a.tar.gz"))
    outs = {}
    for w in ("1", "2"):
        out = os.path.join(tmp, "out" + w)
        r = run(["--archive", arc, "--out-dir", out, "--vocab-dir", VOCAB_DIR, "--workers", w,
                 "--clean-html"])
        assert r.returncode == 0, r.stderr
        outs[w] = out
    exp = [(l, s, t.replace("<br />", "\n")) for l, s, t in expected_split("train")]
    check_dataset(os.path.join(outs["1"], "imdb_train.bin"), exp, 2)
    for name in ("imdb_train.bin", "imdb_test.bin", "imdb_unsup.bin"):
        with open(os.path.join(outs["1"], name), "rb") as a, open(os.path.join(outs["2"], name), "rb") as b:
            assert a.read() == b.read(), f"{name}: --workers 1 and 2 differ"


@test
def imdb_env_archive_and_no_unsup(tmp):
    arc = make_archive(os.path.join(tmp, "elsewhere.tar.gz"))
    out = os.path.join(tmp, "out")
    r = run(["--out-dir", out, "--vocab-dir", VOCAB_DIR, "--no-unsup"], env={"IMDB_ARCHIVE": arc})
    assert r.returncode == 0, r.stderr
    assert arc in r.stderr, "should say which archive it reads"
    assert files_under(out) == ["imdb_test.bin", "imdb_train.bin"], files_under(out)


@test
def generic_csv_string_labels(tmp):
    path = os.path.join(tmp, "reviews.csv")
    rows = [("text", "label"), ("Great, really great.", "pos"), ("Bad \"quoted\" stuff", "neg"),
            ("multi\nline, text", "neutral"), ("  spaced  ", " pos "), ("\u65e5\u672c \U0001f600", "neg")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        import csv
        csv.writer(f).writerows(rows)
    out = os.path.join(tmp, "o", "reviews.bin")
    r = run(["--input", path, "--output", out, "--vocab-dir", VOCAB_DIR])
    assert r.returncode == 0, r.stderr
    ids = {"neg": 0, "neutral": 1, "pos": 2}
    check_dataset(out, [(ids[l.strip()], 0, t) for t, l in rows[1:]], 3)
    with open(out + ".labels.json") as f:
        meta = json.load(f)
    assert meta["labels"] == ["neg", "neutral", "pos"] and meta["label_to_id"] == ids, meta
    assert meta["num_labels"] == 3


@test
def generic_tsv_integer_labels(tmp):
    path = os.path.join(tmp, "data.tsv")
    rows = [("sentence", "label"), ("it 's a charming journey .", "1"), ("dull", "0"), ("okay 'ish", "2")]
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join("\t".join(r) + "\n" for r in rows))
    out = os.path.join(tmp, "data.bin")
    r = run(["--input", path, "--output", out, "--text-column", "sentence", "--vocab-dir", VOCAB_DIR])
    assert r.returncode == 0, r.stderr
    check_dataset(out, [(int(l), 0, t) for t, l in rows[1:]], 3)
    with open(out + ".labels.json") as f:
        assert json.load(f)["label_to_id"] == {"0": 0, "1": 1, "2": 2}


@test
def generic_jsonl_columns_and_numeric_order(tmp):
    path = os.path.join(tmp, "stars.jsonl")
    rows = [{"review": "ten", "stars": 10}, {"review": "one", "stars": 1}, {"review": "five", "stars": "5"},
            {"review": "two", "stars": 2.0}]
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    out = os.path.join(tmp, "stars.bin")
    r = run(["--input", path, "--output", out, "--text-column", "review", "--label-column", "stars",
             "--vocab-dir", VOCAB_DIR, "--workers", "1"])
    assert r.returncode == 0, r.stderr
    ids = {10: 3, 1: 0, 5: 2, 2: 1}    # numeric order, not "1" < "10" < "2" < "5"
    check_dataset(out, [(ids[int(float(r["stars"]))], 0, r["review"]) for r in rows], 4)


@test
def generic_jsonl_label_names_and_unlabelled(tmp):
    path = os.path.join(tmp, "x.ndjson")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "only positives here", "label": "pos"}) + "\n")
    out = os.path.join(tmp, "x.bin")
    r = run(["--input", path, "--output", out, "--label-names", "neg,pos", "--vocab-dir", VOCAB_DIR])
    assert r.returncode == 0, r.stderr
    check_dataset(out, [(1, 0, "only positives here")], 2)
    out2 = os.path.join(tmp, "y.bin")
    r = run(["--input", path, "--output", out2, "--no-labels", "--vocab-dir", VOCAB_DIR])
    assert r.returncode == 0, r.stderr
    check_dataset(out2, [(-1, 0, "only positives here")], 0)
    assert not os.path.exists(out2 + ".labels.json")


# ---- bad inputs

def _bad(tmp, args, name_in_msg, env=None, out=None):
    out = out or os.path.join(tmp, "out")
    r = run(args + ["--vocab-dir" if "--vocab-dir" not in args else "--workers",
                    VOCAB_DIR if "--vocab-dir" not in args else "2"]
            + (["--out-dir", out] if "--input" not in args else ["--output", os.path.join(out, "o.bin")]),
            env=env)
    return assert_clean_failure(r, name_in_msg, out)


@test
def bad_truncated_gzip(tmp):
    arc = make_archive(os.path.join(tmp, "full.tar.gz"))
    with open(arc, "rb") as f:
        data = f.read()
    cut = os.path.join(tmp, "truncated.tar.gz")
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    msg = _bad(tmp, ["--archive", cut], cut)
    assert "corrupt or truncated" in msg, msg


@test
def bad_corrupt_gzip(tmp):
    arc = make_archive(os.path.join(tmp, "full.tar.gz"))
    with open(arc, "rb") as f:
        data = bytearray(f.read())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0x5A
    bad = os.path.join(tmp, "corrupt.tar.gz")
    with open(bad, "wb") as f:
        f.write(data)
    msg = _bad(tmp, ["--archive", bad], bad)
    assert "corrupt or truncated" in msg, msg


@test
def bad_not_gzip_and_not_imdb(tmp):
    p = os.path.join(tmp, "notgz.tar.gz")
    with open(p, "w") as f:
        f.write("hello, I am not an archive\n")
    _bad(tmp, ["--archive", p], p)
    other = os.path.join(tmp, "other.tar.gz")
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    msg = _bad(tmp, ["--archive", other], other)
    assert "no aclImdb" in msg, msg


@test
def bad_missing_archive(tmp):
    p = os.path.join(tmp, "nope", "aclImdb_v1.tar.gz")
    _bad(tmp, ["--archive", p], p)
    _bad(tmp, [], p, env={"IMDB_ARCHIVE": p})


@test
def bad_empty_review_and_existing_output_kept(tmp):
    reviews = FAKE_REVIEWS + [("test/neg", "9_1.txt", "")]
    arc = make_archive(os.path.join(tmp, "empty.tar.gz"), reviews)
    msg = _bad(tmp, ["--archive", arc], "9_1.txt")
    assert "empty" in msg, msg
    # An earlier output survives a failed run untouched.
    out = os.path.join(tmp, "out2")
    os.makedirs(out)
    old = os.path.join(out, "imdb_train.bin")
    with open(old, "wb") as f:
        f.write(b"old")
    r = run(["--archive", arc, "--out-dir", out, "--vocab-dir", VOCAB_DIR])
    assert r.returncode == 1 and files_under(out) == ["imdb_train.bin"], files_under(out)
    with open(old, "rb") as f:
        assert f.read() == b"old"


@test
def bad_star_rating(tmp):
    # IMDB's ratings are 1..10 (dev/FORMATS.md section 3): an archive with
    # another is refused, naming the review, and write_dataset refuses one too
    reviews = FAKE_REVIEWS + [("test/pos", "9_11.txt", "Eleven out of ten.")]
    arc = make_archive(os.path.join(tmp, "stars11.tar.gz"), reviews)
    msg = _bad(tmp, ["--archive", arc], "9_11.txt")
    assert "star rating 11" in msg, msg
    for star in (11, -1):
        try:
            P.write_dataset(os.path.join(tmp, "s.bin"), [(1, star, array.array("H", [5]))], 2)
            raise AssertionError(f"write_dataset accepted star rating {star}")
        except P.PrepError as e:
            assert f"star rating {star}" in str(e), str(e)


@test
def bad_vocab_checksum_and_missing_vocab(tmp):
    arc = make_archive(os.path.join(tmp, "a.tar.gz"))
    vd = os.path.join(tmp, "vocab")
    os.makedirs(vd)
    shutil.copy(os.path.join(VOCAB_DIR, "encoder.json"), vd)
    with open(os.path.join(VOCAB_DIR, "vocab.bpe"), "rb") as f:
        data = f.read()
    with open(os.path.join(vd, "vocab.bpe"), "wb") as f:
        f.write(data.replace(b"\xc4\xa0t he", b"\xc4\xa0th e", 1))   # one merge changed
    msg = _bad(tmp, ["--archive", arc, "--vocab-dir", vd], os.path.join(vd, "vocab.bpe"))
    assert "sha256" in msg, msg
    os.remove(os.path.join(vd, "vocab.bpe"))
    msg = _bad(tmp, ["--archive", arc, "--vocab-dir", vd], os.path.join(vd, "vocab.bpe"))
    assert "not found" in msg, msg


@test
def bad_unknown_column(tmp):
    path = os.path.join(tmp, "d.csv")
    with open(path, "w") as f:
        f.write("review,label\nnice,pos\nbad,neg\n")
    msg = _bad(tmp, ["--input", path], path)
    assert "'text'" in msg and "review" in msg, msg
    jl = os.path.join(tmp, "d.jsonl")
    with open(jl, "w") as f:
        f.write('{"text": "nice", "label": "pos"}\n{"text": "bad", "sentiment": "neg"}\n')
    msg = _bad(tmp, ["--input", jl], jl)
    assert "line 2" in msg and "'label'" in msg, msg


@test
def bad_empty_text(tmp):
    path = os.path.join(tmp, "e.csv")
    with open(path, "w") as f:
        f.write('text,label\nfine,pos\n"",neg\n')
    msg = _bad(tmp, ["--input", path], path)
    assert "empty text" in msg and "line 3" in msg, msg


@test
def bad_labels(tmp):
    cases = [
        ("l1.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n', "null"),
        ("l2.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0.5}\n', "0.5"),
        ("l3.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": [1]}\n', "[1]"),
        ("l4.csv", "text,label\na,pos\nb,\n", "empty label"),
        ("l5.csv", "text,label\na,pos\nb,pos\n", "distinct"),
        ("l6.jsonl", '{"text": "a", "label": true}\n{"text": "b", "label": 0}\n', "true"),
    ]
    for name, content, word in cases:
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(content)
        msg = _bad(tmp, ["--input", path], path)
        assert word in msg, msg
    path = os.path.join(tmp, "l7.csv")
    with open(path, "w") as f:
        f.write("text,label\na,pos\nb,meh\n")
    msg = _bad(tmp, ["--input", path, "--label-names", "neg,pos"], path)
    assert "meh" in msg, msg


@test
def bad_generic_files(tmp):
    for name, content, word in [("r.csv", "text,label\na,pos\nb,neg,extra\n", "fields"),
                                ("j.jsonl", '{"text": "a", "label": 1}\n{oops\n', "invalid JSON"),
                                ("t.txt", "text,label\na,b\n", "--format"),
                                ("u.csv", b"text,label\n\xff\xfe,pos\n", "UTF-8"),
                                ("h.csv", "", "empty file")]:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        msg = _bad(tmp, ["--input", path], path)
        assert word in msg, msg
    missing = os.path.join(tmp, "missing.csv")
    _bad(tmp, ["--input", missing], missing)


# ---- downloads, from a local server (no network needed)

class _Server:
    def __init__(self, root):
        handler = functools.partial(_QuietHandler, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _standalone_script(tmp):
    """A copy of prepro_imdb.py with no ../shared beside it, as a user would have."""
    d = os.path.join(tmp, "repo")
    os.makedirs(d)
    shutil.copy(SCRIPT, d)
    return os.path.join(d, "prepro_imdb.py")


@test
def download_vocab_and_archive(tmp):
    www = os.path.join(tmp, "www")
    os.makedirs(os.path.join(www, "gpt2"))
    for n in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(VOCAB_DIR, n), os.path.join(www, "gpt2", n))
    make_archive(os.path.join(www, "aclImdb_v1.tar.gz"))
    script = _standalone_script(tmp)
    cache = os.path.join(tmp, "cache")
    out = os.path.join(tmp, "out")
    arc = os.path.join(www, "aclImdb_v1.tar.gz")
    with _Server(www) as srv:
        # tokenizer files are downloaded into the cache and verified
        r = run(["--archive", arc, "--out-dir", out, "--cache-dir", cache,
                 "--gpt2-base-url", srv.url + "gpt2/"], script=script)
        assert r.returncode == 0, r.stderr
        assert "downloading" in r.stderr, r.stderr
        assert files_under(cache) == ["gpt2/encoder.json", "gpt2/vocab.bpe"], files_under(cache)
        # the IMDB archive download is checked against the official checksum:
        # the fake one must be refused, leaving nothing in the cache or out dir
        out2 = os.path.join(tmp, "out2")
        r = run(["--out-dir", out2, "--cache-dir", cache, "--imdb-url", srv.url + "aclImdb_v1.tar.gz"],
                script=script)
        assert_clean_failure(r, srv.url + "aclImdb_v1.tar.gz", out2)
        assert "sha256" in r.stderr and "downloading" not in r.stderr.splitlines()[-1]
        assert files_under(cache) == ["gpt2/encoder.json", "gpt2/vocab.bpe"], files_under(cache)
        # a failing download (404) is a one-line error too
        empty_cache = os.path.join(tmp, "cache2")
        r = run(["--archive", arc, "--out-dir", out2, "--cache-dir", empty_cache,
                 "--gpt2-base-url", srv.url + "missing/"], script=script)
        assert_clean_failure(r, srv.url + "missing/encoder.json", out2)
        assert files_under(empty_cache) == [], files_under(empty_cache)
    # the cached tokenizer files are used without a server
    r = run(["--archive", arc, "--out-dir", out, "--cache-dir", cache], script=script)
    assert r.returncode == 0 and "downloading" not in r.stderr, r.stderr


def main():
    global TOK, VOCAB_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="", help="run tests whose name contains this")
    ap.add_argument("--vocab-dir", default=VOCAB_DIR)
    args = ap.parse_args()
    VOCAB_DIR = args.vocab_dir
    TOK = P.GPT2Tokenizer.from_files(os.path.join(VOCAB_DIR, "encoder.json"),
                                     os.path.join(VOCAB_DIR, "vocab.bpe"))
    passed = failed = 0
    for fn in TESTS:
        if args.k not in fn.__name__:
            continue
        with tempfile.TemporaryDirectory(prefix="test_prepro_") as tmp:
            try:
                fn(tmp)
                passed += 1
                print(f"ok   {fn.__name__}")
            except Exception as e:
                failed += 1
                where = traceback.extract_tb(e.__traceback__)[-1]
                print(f"FAIL {fn.__name__}: {type(e).__name__}: {e} (line {where.lineno})")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
