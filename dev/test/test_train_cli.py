"""End-to-end checks of the training program on small files it makes itself.

    python3 dev/test/test_train_cli.py [--binary ./train_gpt2_sft]

- resume is exact: N steps, --stop-at-step, --resume, N more steps gives the
  same checkpoint and optimizer state, byte for byte, as 2N steps in one run
  (with gradient accumulation, warmup, weight decay, truncation and dropout
  active);
- the number of threads does not change the result (byte-identical files);
- dropout changes training, but never evaluation: the final evaluation of a
  run with dropout equals --predict on the saved model;
- --predict writes one row per example whose probabilities sum to 1, and a
  reloaded fine-tuned checkpoint predicts the same as the run that saved it;
- training on a learnable toy task lowers the loss and ends with the
  "final eval:" line that scripts read.
Ends with "N passed, N failed"; exit status 1 on any failure.
"""
import argparse
import csv
import filecmp
import math
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_bad_inputs as files  # noqa: E402  (writers of the file formats)

ROOT = os.path.dirname(os.path.dirname(HERE))
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    passed += bool(ok)
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail and not ok else ''}")


def run(binary, args, threads=None):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([binary] + args, capture_output=True, text=True, env=env)
    return p.returncode, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "train_gpt2_sft"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build", "test_train_cli"))
    args = ap.parse_args()
    binary, d = os.path.abspath(args.binary), args.out_dir
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cfg = files.Config(L=2, H=2, C=32, max_t=32)
    model = os.path.join(d, "model.bin")
    with open(model, "wb") as f:
        f.write(files.llmc_checkpoint(cfg, seed=3))
    train, test = os.path.join(d, "train.bin"), os.path.join(d, "test.bin")
    with open(train, "wb") as f:
        f.write(files.dataset_bytes(files.toy_examples(96, 1)))
    with open(test, "wb") as f:
        f.write(files.dataset_bytes(files.toy_examples(40, 2)))
    p = lambda name: os.path.join(d, name)  # noqa: E731
    common = ["-m", model, "--train", train, "--test", test, "--max-len", "24", "--truncation", "head+tail",
              "--batch-size", "4", "--grad-accum", "2", "--max-steps", "12", "--warmup-steps", "3",
              "--weight-decay", "0.1", "--lr", "1e-3", "--eval-examples", "8", "--log-every", "4",
              "--dropout", "0.2"]

    rc, full_out, err = run(binary, common + ["--save", p("full.bin")])
    check("12 steps in one run", rc == 0 and os.path.exists(p("full.bin")), err)
    rc, _, err = run(binary, common + ["--dropout", "0", "--save", p("no_dropout.bin")])
    check("--dropout 0 trains to a different model than --dropout 0.2", rc == 0 and
          not filecmp.cmp(p("full.bin"), p("no_dropout.bin"), shallow=False), err)
    rc1, _, err1 = run(binary, common + ["--save", p("half.bin"), "--stop-at-step", "6"])
    rc2, out2, err2 = run(binary, common + ["--resume", p("half.bin"), "--save", p("half.bin")])
    check("6 steps, --stop-at-step, --resume, 6 more", rc1 == 0 and rc2 == 0 and "resuming" in out2, err1 + err2)
    # the --save file holds the parameters and the AdamW moments (dev/FORMATS.md section 2)
    same = all(os.path.exists(x) for x in (p("full.bin"), p("half.bin"))) and \
        filecmp.cmp(p("full.bin"), p("half.bin"), shallow=False)
    check("resumed run is byte-identical (checkpoint and optimizer state)", same)

    rc, _, err = run(binary, common + ["--save", p("one_thread.bin")], threads=1)
    check("1 thread gives the same checkpoint as the default", rc == 0 and os.path.exists(p("one_thread.bin")) and
          filecmp.cmp(p("full.bin"), p("one_thread.bin"), shallow=False), err)

    rc, out, err = run(binary, ["-m", p("full.bin"), "--predict", test, "--output", p("pred.csv"),
                                "--max-len", "24", "--truncation", "head+tail"])
    rows = list(csv.DictReader(open(p("pred.csv")))) if rc == 0 else []
    sums_ok = len(rows) == 40 and all(abs(float(r["p_0"]) + float(r["p_1"]) - 1) < 1e-5 for r in rows)
    check("--predict: one row per example, probabilities sum to 1", sums_ok, err)
    rc, out, err = run(binary, ["-m", p("full.bin"), "--predict", test, "--output", p("pred2.csv"),
                                "--max-len", "24", "--truncation", "head+tail", "--batch-size", "3"])
    check("--predict does not depend on the batch size (padding)", rc == 0 and
          filecmp.cmp(p("pred.csv"), p("pred2.csv"), shallow=False), err)
    final = re.search(r"^final eval: examples (\d+) loss ([\d.]+) accuracy ([\d.]+)$", full_out, re.M)
    if final and len(rows) == 40:
        loss = sum(-math.log(float(r[f"p_{r['label']}"])) for r in rows) / len(rows)
        accuracy = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
        same = abs(loss - float(final.group(2))) < 2e-4 and f"{accuracy:.4f}" == final.group(3)
        detail = f"--predict: loss {loss:.5f} accuracy {accuracy:.4f}; {final.group(0)}"
    else:
        same, detail = False, "no final eval line or no predictions"
    check("evaluation does not drop: the run's final eval equals --predict on its model", same, detail)

    learn = ["-m", model, "--train", train, "--test", test, "--max-len", "32", "--batch-size", "8",
             "--epochs", "12", "--lr", "3e-3", "--warmup-ratio", "0.1", "--log-every", "12"]
    rc, out, err = run(binary, learn)
    losses = [float(x) for x in re.findall(r"\| loss ([\d.]+) \|", out)]
    final = re.search(r"^final eval: examples (\d+) loss ([\d.]+) accuracy ([\d.]+)$", out, re.M)
    check("training lowers the loss on a learnable task", rc == 0 and len(losses) >= 2 and losses[-1] < losses[0],
          f"losses {losses} {err}")
    check("ends with 'final eval: examples N loss L accuracy A'", final is not None and final.group(1) == "40", out[-300:])
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
