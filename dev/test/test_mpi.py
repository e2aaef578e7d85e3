#!/usr/bin/env python3
"""
test_mpi.py: the MPI build (make MPI=1) against one process, on a tiny model.

    python3 dev/test/test_mpi.py [--ranks 2] [--mpirun mpirun] [--no-build]
                                 [--binary build/train_gpt2_sft_mpi] [--reference ./train_gpt2_sft]
                                 [--out-dir build/test_mpi]

Builds build/train_gpt2_sft_mpi (`make build/train_gpt2_sft_mpi`, mpicc
-DUSE_MPI; the default ./train_gpt2_sft is left alone) unless --no-build, and
runs it under `mpirun -np N --oversubscribe` (plus --allow-run-as-root as
root). Checks, with gradient accumulation, warmup, weight decay, truncation
and dropout on:
  - N ranks with --batch-size b give the updates of one process with
    --batch-size N b: the 10 steps' losses and gradient norms within 1e-5
    relative, and every tensor of the final checkpoints within 1e-5 relative
    (|a-b|/|a|, L2; the attention key biases, whose exact gradient is zero and
    which hold float noise in any run, within 1e-5 absolute: see
    compare_checkpoints);
  - two runs with N ranks give the same bytes (checkpoint with its AdamW moments);
  - one rank of the MPI build gives the bytes of the default build;
  - --resume with N ranks continues exactly (5 + 5 steps = 10 steps, bytes);
    --resume with one process and the same global batch continues the N-rank
    run (within 1e-5); another global batch is refused with an error: line;
  - --predict with N ranks writes the bytes one process writes, and the
    final evaluation of a model is the same with N ranks and with one;
  - a failing rank (a bad file on one rank, a loss overflowing to NaN on one
    rank, an allocation failing on one rank, a bad file on every rank) ends
    every rank within a timeout, non-zero, with exactly one `error:` line.
Standard library only. Ends with "N passed, N failed"; exit status 1 on any
failure (a missing mpicc or mpirun is a failure, not a skip).
"""

import argparse
import array
import filecmp
import os
import re
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_bad_inputs as files  # noqa: E402  (writers of the file formats)

ROOT = os.path.dirname(os.path.dirname(HERE))
TOLERANCE = 1e-5
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    passed += bool(ok)
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail and not ok else ''}", flush=True)


def floats_of(path, skip=files.HEADER_BYTES):
    a = array.array("f")
    with open(path, "rb") as f:
        f.seek(skip)
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def compare_checkpoints(path_a, path_b, cfg, num_labels=2):
    """The worst, over the parameter tensors, of |a - b| / |a| (L2 norms), and
    its tensor; and the largest |a - b| of the attention key biases, which the
    relative test leaves out: their exact gradient is 0 (softmax ignores the
    q.b_k added to every score of a row), so they hold float noise (~1e-6, in
    any run) that Adam turns into updates of their own."""
    a, b = floats_of(path_a), floats_of(path_b)
    if len(a) != len(b):
        return float("inf"), "sizes differ", float("inf")
    worst, worst_name, key_bias = 0.0, None, 0.0
    offset = 0
    for name, n in zip(files.TENSOR_NAMES, files.tensor_sizes(cfg, num_labels)):
        ta, tb = a[offset:offset + n], b[offset:offset + n]
        if name == "qkvb":
            C = cfg.C
            keys = [i for l in range(cfg.L) for i in range(l * 3 * C + C, l * 3 * C + 2 * C)]
            key_bias = max(abs(ta[i] - tb[i]) for i in keys)
            ta = [x for i, x in enumerate(ta) if i not in keys]
            tb = [x for i, x in enumerate(tb) if i not in keys]
        diff = sum((x - y) ** 2 for x, y in zip(ta, tb)) ** 0.5
        norm = sum(x * x for x in ta) ** 0.5
        r = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
        if r >= worst:
            worst, worst_name = r, name
        offset += n
    return worst, worst_name, key_bias


def steps_of(out):
    """(loss, grad norm) of every logged step."""
    return [(float(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"^step +\d+/\d+ \|.*\| loss ([\d.]+) \|.*\| grad norm ([\d.]+) \|", out, re.M)]


def relative(x, y):
    return abs(x - y) / max(abs(x), abs(y), 1e-30)


def copy(src, dst):
    """shutil.copy, skipped when src is missing (its run failed, which a check reports)."""
    if os.path.exists(src):
        shutil.copy(src, dst)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "train_gpt2_sft_mpi"))
    ap.add_argument("--reference", default=os.path.join(ROOT, "train_gpt2_sft"), help="the default (non-MPI) build")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build", "test_mpi"))
    args = ap.parse_args()
    N = args.ranks
    binary, reference = os.path.abspath(args.binary), os.path.abspath(args.reference)

    if not args.no_build:
        p = subprocess.run(["make", "-s", "-C", ROOT, "build/train_gpt2_sft_mpi", "train_gpt2_sft"],
                           capture_output=True, text=True)
        check("make build/train_gpt2_sft_mpi train_gpt2_sft (mpicc)", p.returncode == 0, (p.stdout + p.stderr)[-600:])
    mpirun = shutil.which(args.mpirun)
    check("mpirun is installed", mpirun is not None, f"{args.mpirun} not found (apt-get install openmpi-bin)")
    for b in (binary, reference):
        check(f"{os.path.relpath(b, ROOT)} exists", os.access(b, os.X_OK))
    if failed:
        print(f"{passed} passed, {failed} failed")
        sys.exit(1)
    launcher = [mpirun, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])

    d = args.out_dir
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    cfg = files.Config(L=2, H=2, C=32, max_t=32)
    model = p("model.bin")
    with open(model, "wb") as f:
        f.write(files.llmc_checkpoint(cfg, seed=3))
    overflow = bytearray(files.llmc_checkpoint(cfg, seed=3))  # final LayerNorm weights 3e38: logits overflow
    for i in range(cfg.C):
        struct.pack_into("<f", overflow, files.tensor_offset(cfg, "lnfw") + 4 * i, 3e38)
    with open(p("overflow.bin"), "wb") as f:
        f.write(overflow)
    train, test = p("train.bin"), p("test.bin")
    with open(train, "wb") as f:
        f.write(files.dataset_bytes(files.toy_examples(96, 1)))
    with open(test, "wb") as f:
        f.write(files.dataset_bytes(files.toy_examples(41, 2)))  # 41: the last round is ragged
    with open(train, "rb") as f:
        data = f.read()
    with open(p("truncated.bin"), "wb") as f:
        f.write(data[:2000])

    def run(cmd, timeout=300, env=None):
        t0 = time.time()
        try:
            r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, out, f"timed out after {timeout} s", time.time() - t0
        return r.returncode, r.stdout, r.stderr, time.time() - t0

    def ranks(n, flags, exe=binary, timeout=300):
        return run(launcher + ["-np", str(n), exe] + flags, timeout)

    b = 2
    common = ["-m", model, "--train", train, "--test", test, "--max-len", "24", "--truncation", "head+tail",
              "--grad-accum", "2", "--max-steps", "10", "--warmup-steps", "3", "--weight-decay", "0.1",
              "--lr", "1e-3", "--eval-examples", "8", "--log-every", "1", "--log-digits", "9",
              "--dropout", "0.2", "--threads", "1"]
    one = common + ["--batch-size", str(N * b)]
    many = common + ["--batch-size", str(b)]

    # --- N ranks against one process ----------------------------------------------------
    rc1, out1, err1, _ = run([reference] + one + ["--save", p("one.bin")])
    check(f"1 process, --batch-size {N * b}: 10 steps", rc1 == 0 and len(steps_of(out1)) == 10, err1[-300:])
    rcn, outn, errn, _ = ranks(N, many + ["--save", p("many.bin")])
    check(f"{N} ranks, --batch-size {b}: 10 steps", rcn == 0 and len(steps_of(outn)) == 10, (outn + errn)[-600:])
    check(f"{N} ranks print how the batch is split",
          f"data parallel: {N} ranks x batch {b} = {N * b} examples per micro-step, x 2 accumulation = {2 * N * b} per update; rank r takes examples r, r + {N}"
          in outn, outn[-600:])
    s1, sn = steps_of(out1), steps_of(outn)
    if len(s1) == len(sn) == 10:
        loss_err = max(relative(x[0], y[0]) for x, y in zip(s1, sn))
        norm_err = max(relative(x[1], y[1]) for x, y in zip(s1, sn))
        print(f"      10 steps: worst relative difference of the loss {loss_err:.2e}, of the gradient norm {norm_err:.2e}")
        check(f"per-step losses within {TOLERANCE:g} relative", loss_err <= TOLERANCE, f"{s1} vs {sn}")
        check(f"per-step gradient norms within {TOLERANCE:g} relative", norm_err <= TOLERANCE, f"{s1} vs {sn}")
    else:
        check("per-step losses and gradient norms compared", False, "missing step lines")
    if rc1 == 0 and rcn == 0:
        worst, name, key_bias = compare_checkpoints(p("one.bin"), p("many.bin"), cfg)
        print(f"      final checkpoints: worst |a-b|/|a| of a tensor {worst:.2e} ({name}); "
              f"largest difference of a key bias {key_bias:.2e}")
        check(f"final checkpoints: every tensor within {TOLERANCE:g} relative, key biases within {TOLERANCE:g}",
              worst <= TOLERANCE and key_bias <= TOLERANCE)
        same = filecmp.cmp(p("one.bin"), p("many.bin"), shallow=False)
        print(f"      (the two checkpoints are {'' if same else 'not '}byte-identical: float sums in another order)")

    rc, out, err, _ = ranks(N, many + ["--save", p("many_again.bin")])
    check(f"two runs with {N} ranks give the same bytes (checkpoint with its AdamW moments)", rc == 0 and rcn == 0 and
          filecmp.cmp(p("many.bin"), p("many_again.bin"), shallow=False), err[-300:])

    rc, out, err, _ = ranks(1, one + ["--save", p("mpi_one.bin")])
    check("1 rank of the MPI build gives the bytes of the default build (checkpoint with its AdamW moments)",
          rc == 0 and rc1 == 0 and filecmp.cmp(p("one.bin"), p("mpi_one.bin"), shallow=False), err[-300:])

    # --- resume -------------------------------------------------------------------------
    rc_a, _, err_a, _ = ranks(N, many + ["--save", p("half.bin"), "--stop-at-step", "5"])
    copy(p("half.bin"), p("half1.bin"))
    rc_b, out_b, err_b, _ = ranks(N, many + ["--resume", p("half.bin"), "--save", p("half.bin")])
    check(f"{N} ranks: 5 steps, --resume, 5 more give the bytes of 10 steps", rc_a == 0 and rc_b == 0 and
          "resuming" in out_b and filecmp.cmp(p("many.bin"), p("half.bin"), shallow=False), (err_a + err_b)[-300:])
    rc, out, err, _ = run([reference] + one + ["--resume", p("half1.bin"), "--save", p("half1.bin")])
    ok = rc == 0 and "resuming" in out
    worst, _, key_bias = compare_checkpoints(p("many.bin"), p("half1.bin"), cfg) if ok else (float("inf"), None, 0)
    check(f"1 process with --batch-size {N * b} continues the {N}-rank run (tensors within {TOLERANCE:g}: {worst:.1e})",
          ok and worst <= TOLERANCE and key_bias <= TOLERANCE, f"exit {rc}: {err.strip()[-300:]}")
    rc, out, err, _ = run([reference] + many + ["--resume", p("half1.bin")])
    lines = error_lines(err)
    check(f"--resume with another global batch ({b} instead of {N * b}) is refused with one error: line",
          rc not in (0, None) and len(lines) == 1 and "half1.bin" in lines[0] and "batch" in lines[0],
          f"exit {rc}: {err.strip()[-300:]}")

    # --- evaluation and --predict ----------------------------------------------------------
    predict = ["-m", p("many.bin"), "--predict", test, "--max-len", "24", "--truncation", "head+tail",
               "--batch-size", "3", "--threads", "1"]
    rc1, _, err1, _ = run([reference] + predict + ["--output", p("pred_one.csv")])
    rcn, _, errn, _ = ranks(N, predict + ["--output", p("pred_many.csv")])
    check(f"--predict with {N} ranks writes the bytes of one process (41 examples, batch 3)", rc1 == 0 and rcn == 0 and
          filecmp.cmp(p("pred_one.csv"), p("pred_many.csv"), shallow=False), (err1 + errn)[-300:])

    def final_eval(out):  # the evaluation block printed at the end
        i = out.find("  class 0:")
        return out[i:] if i >= 0 else None
    # a finished run resumed: nothing to train, then the final evaluation of its model on all 41 examples
    rc1, out1, err1, _ = run([reference] + one + ["--resume", p("many.bin")])
    rcn, outn, errn, _ = ranks(N, many + ["--resume", p("many.bin")])
    e1, en = final_eval(out1), final_eval(outn)
    check(f"final evaluation of a model: {N} ranks print what one process prints", rc1 == 0 and rcn == 0 and
          e1 is not None and e1 == en and "examples 41" in e1, f"{e1!r} vs {en!r} {err1[-200:]} {errn[-200:]}")

    # --- failing ranks -------------------------------------------------------------------
    fault_flags = ["--train", train, "--test", test, "--max-len", "24", "--max-steps", "50", "--batch-size", "2",
                   "--threads", "1", "--log-every", "1"]
    good = ["-m", model] + fault_flags
    rest = []  # ranks 2..N-1: good ones (mpirun's MPMD form gives each rank its own command)
    for _ in range(N - 2):
        rest += [":", "-np", "1", binary] + good

    def mpmd(rank0, rank1):
        """rank 0 runs the binary with flags rank0, rank 1 runs the command rank1, the others `good`."""
        return launcher + ["-np", "1", binary] + rank0 + [":", "-np", "1"] + rank1 + rest

    cases = [
        ("a truncated --train file on rank 1", mpmd(good, [binary, "-m", model] + fault_flags + ["--train", p("truncated.bin")]),
         "truncated.bin"),
        ("a loss overflowing to NaN on rank 1 (its model's final LayerNorm weights are 3e38)",
         mpmd(good, [binary, "-m", p("overflow.bin")] + fault_flags), "the loss is nan"),
        ("an allocation failing on rank 1 (ulimit -v 4 GB, a 22 GB model)",
         mpmd(good, ["sh", "-c", 'ulimit -v 4000000 && exec "$0" "$@"', binary, "--init", "d48"] + fault_flags),
         "out of memory"),
        ("a truncated --train file on rank 0", mpmd(["-m", model] + fault_flags + ["--train", p("truncated.bin")],
                                                     [binary] + good), "truncated.bin"),
        (f"a missing model on all {N} ranks", launcher + ["-np", str(N), binary, "-m", p("no_such_model.bin")] + fault_flags,
         "no_such_model.bin"),
    ]
    for name, cmd, expect in cases:
        rc, out, err, seconds = run(cmd, timeout=60)
        lines = error_lines(out + "\n" + err)
        ok = rc not in (0, None) and len(lines) == 1 and expect in lines[0]
        check(f"{name}: every rank ends (exit {rc}, {seconds:.1f} s) with one error: line", ok,
              f"error lines {lines}; output: {(out + err).strip()[-500:]}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
