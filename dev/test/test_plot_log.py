#!/usr/bin/env python3
"""
test_plot_log.py: dev/plot_log.py on a hand-written log and on a real short run.

    /usr/bin/python3 dev/test/test_plot_log.py [--binary ./train_gpt2_sft] [--out-dir build/test_plot] [-v]

  1. parse_log on a hand-written log (noise lines, a nan loss, two runs appended
     to one file) gives exactly the numbers written.
  2. A real run of the trainer (--init d1, 40 steps, small random datasets it
     writes itself, so no IMDB is needed) is logged; parse_log finds every
     `step` line, the evals at steps 10, 20, 30 and the final eval.
  3. plot_log.py writes a PNG (checked: signature, IHDR size, three panels wide)
     for one log and for two logs with --labels and --smooth; it is skipped if
     matplotlib is missing (apt-get install python3-matplotlib).
  4. Errors: a file with no log lines, a missing file, wrong --labels count: exit 1, one line.

Ends with "N passed, N failed[, N skipped]"; exits 1 on any failure.
"""

import argparse
import array
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = os.path.dirname(HERE)
ROOT = os.path.dirname(DEV)
sys.path.insert(0, ROOT)
sys.path.insert(0, DEV)

import plot_log  # noqa: E402
import prepro_imdb  # noqa: E402

HAND_LOG = """OpenMP threads: 2
model: new d1 from scratch
step     5/20 | epoch 0.00 | loss 0.7257 | lr 9.000e-04 | grad norm 2.817 | 9116 tok/s | padding 0.0% | 0m01s elapsed, ETA 0m04s
step    10/20 | epoch 0.01 | loss nan | lr 7.750e-04 | grad norm 5.427 | 33531 tok/s | padding 0.0% | 0m01s elapsed, ETA 0m02s
eval step 10: examples 100 loss 0.7071 accuracy 0.5000
  class 0: precision 0.5304 recall 0.3061 F1 0.3882 (12500 examples)
step    20/20 | epoch 0.02 | loss 0.6919 | lr 5.250e-04 | grad norm 0.913 | 28229 tok/s | padding 0.0% | 0m01s elapsed, ETA 0m01s
final eval: examples 25000 loss 0.6930 accuracy 0.5176
resuming run.bin at step 0
step     5/10 | epoch 0.10 | loss 1.5000 | lr 1.000e-03 | grad norm 10.000 | 1 tok/s | padding 0.0% | 0m01s elapsed, ETA 0m01s
eval step 5: examples 8 loss 1.2500 accuracy 0.2500
"""


class Results:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, name, ok, detail=""):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  (' + detail + ')' if detail and not ok else ''}", flush=True)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name}  ({why})", flush=True)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def random_data(path, n, seed):
    rng = random.Random(seed)
    ex = []
    for i in range(n):
        ex.append((i % 2, 0, array.array("H", [rng.randrange(50256) for _ in range(rng.randint(1, 64))])))
    prepro_imdb.write_dataset(path, ex, 2)
    return path


def run(cmd, verbose):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if verbose:
        print(f"  $ {' '.join(cmd)}  [exit {r.returncode}]")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "train_gpt2_sft"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build", "test_plot"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    R = Results()
    out = args.out_dir
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    script = os.path.join(DEV, "plot_log.py")

    # 1. hand-written log
    hand = os.path.join(out, "hand.log")
    with open(hand, "w") as f:
        f.write(HAND_LOG)
    runs = plot_log.parse_log(hand)
    ok = len(runs) == 2
    if ok:
        a, b = runs
        ok = (a["name"] == "hand.log #1" and b["name"] == "hand.log #2"
              and [(t[0], t[1], t[3], t[4]) for t in a["train"]] ==
              [(5, 0.0, 9e-4, 2.817), (10, 0.01, 7.75e-4, 5.427), (20, 0.02, 5.25e-4, 0.913)]
              and a["train"][0][2] == 0.7257 and a["train"][1][2] != a["train"][1][2]   # nan
              and a["eval"] == [(10, 100, 0.7071, 0.5)] and a["final"] == (20, 25000, 0.693, 0.5176)
              and a["total_steps"] == 20
              and b["train"] == [(5, 0.1, 1.5, 1e-3, 10.0)] and b["eval"] == [(5, 8, 1.25, 0.25)]
              and b["final"] is None and b["total_steps"] == 10)
    R.check("parse_log: hand-written log, two appended runs, nan loss, noise lines", ok, repr(runs)[:400])

    # 2. a real short run
    binary = os.path.abspath(args.binary)
    log = os.path.join(out, "run.log")
    if not os.access(binary, os.X_OK):
        R.check(f"trainer {args.binary} is built (make train_gpt2_sft)", False)
    else:
        train = random_data(os.path.join(out, "train.bin"), 400, 1)
        test = random_data(os.path.join(out, "test.bin"), 120, 2)
        cmd = [binary, "--init", "d1", "--train", train, "--test", test, "--max-steps", "40", "--batch-size", "16",
               "--max-len", "64", "--lr", "1e-3", "--log-every", "5", "--eval-every", "10",
               "--eval-examples", "100", "--threads", str(args.threads)]
        r = run(cmd, args.verbose)
        with open(log, "w") as f:
            f.write(r.stdout)
        R.check("trainer: 40-step run", r.returncode == 0, r.stderr.strip()[-300:])
        runs = plot_log.parse_log(log)
        step_lines = [line for line in r.stdout.splitlines() if line.startswith("step ")]
        ok = (len(runs) == 1 and [t[0] for t in runs[0]["train"]] == list(range(5, 41, 5))
              and len(step_lines) == len(runs[0]["train"])
              and [e[0] for e in runs[0]["eval"]] == [10, 20, 30]
              and all(e[1] == 100 for e in runs[0]["eval"])
              and runs[0]["final"] is not None and runs[0]["final"][:2] == (40, 120)
              and runs[0]["total_steps"] == 40
              and all(0 < t[2] < 10 for t in runs[0]["train"]))
        R.check("parse_log: real log -> 8 training points, evals at 10/20/30, final eval of 120 at step 40",
                ok, repr(runs)[:400])

    # 3. plots
    try:
        import matplotlib  # noqa: F401  (only whether it imports)
        have_mpl = True
    except ImportError:
        have_mpl = False
    if not have_mpl:
        R.skip("plot_log.py PNG output", "matplotlib not installed (apt-get install python3-matplotlib)")
    else:
        png = os.path.join(out, "plot.png")
        logs = [log] if os.path.isfile(log) else [hand]
        r = run([sys.executable, script] + logs + ["-o", png], args.verbose)
        size = png_size(png) if os.path.isfile(png) else None
        R.check("plot_log.py: one log -> PNG with three panels (width > 3 x height)",
                r.returncode == 0 and size is not None and size[0] > 3 * size[1] and os.path.getsize(png) > 10000,
                f"exit {r.returncode} size {size} {r.stderr.strip()[-200:]}")
        R.check("plot_log.py prints a summary line per log", "final eval (120 examples)" in r.stdout
                or logs == [hand], r.stdout[-300:])
        png2 = os.path.join(out, "plot2.png")
        r = run([sys.executable, script, hand] + logs + ["-o", png2, "--labels", "hand,real", "--smooth", "0.6",
                                                         "--title", "test"], args.verbose)
        R.check("plot_log.py: two logs (one split in two runs), --labels, --smooth -> PNG",
                r.returncode == 0 and png_size(png2) is not None and "hand #1" in r.stdout and "hand #2" in r.stdout,
                f"exit {r.returncode} {r.stderr.strip()[-200:]}")
        svg = os.path.join(out, "plot.svg")
        r = run([sys.executable, script, hand, "-o", svg], args.verbose)
        R.check("plot_log.py: -o x.svg writes SVG", r.returncode == 0 and os.path.isfile(svg)
                and b"<svg" in open(svg, "rb").read(2000), r.stderr.strip()[-200:])

    # 4. errors
    empty = os.path.join(out, "empty.log")
    with open(empty, "w") as f:
        f.write("nothing here\n")
    for what, cmd, needle in (("no log lines", [empty], "no training log lines"),
                              ("missing file", [os.path.join(out, "nope.log")], "cannot read"),
                              ("--labels count", [hand, "--labels", "a,b"], "--labels has 2 names")):
        r = run([sys.executable, script] + cmd + ["-o", os.path.join(out, "x.png")], args.verbose)
        R.check(f"plot_log.py error: {what}", r.returncode == 1 and needle in r.stderr
                and len(r.stderr.strip().splitlines()) == 1, r.stderr.strip())

    tail = f", {R.skipped} skipped" if R.skipped else ""
    print(f"{R.passed} passed, {R.failed} failed{tail}")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
