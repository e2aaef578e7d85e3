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
  "final eval:" line that scripts read;
- pretraining (--task lm): resume and thread counts are exact as above, the
  saved model is an llm.c checkpoint (magic, step, moments) that fine-tuning
  reads with -m, the loss falls on a predictable text, the sampled softmax
  trains differently from the full one, and LM-only flags are refused
  elsewhere.
Ends with "N passed, N failed"; exit status 1 on any failure.
"""
import argparse
import csv
import filecmp
import math
import os
import random
import re
import shutil
import struct
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
    check_language_model(binary, model, train, test, p)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def check_language_model(binary, model, train, test, p):
    # a predictable text: each document cycles through 8 tokens from a random phase
    rng = random.Random(5)
    cycle = [1000 + 37 * i for i in range(8)]
    docs = []
    for _ in range(60):
        phase = rng.randrange(8)
        docs.append(([cycle[(phase + i) % 8] for i in range(rng.randint(5, 30))], -1, 0))
    text = p("text.bin")
    with open(text, "wb") as f:
        f.write(files.dataset_bytes(docs, num_labels=0))
    lm = ["--task", "lm", "-m", model, "--train", f"{train},{text}", "--val-docs", "10", "--max-len", "16",
          "--batch-size", "4", "--grad-accum", "2", "--max-steps", "10", "--warmup-steps", "2", "--lr", "3e-3",
          "--weight-decay", "0.1", "--dropout", "0.1", "--log-every", "5", "--eval-every", "5", "--eval-examples", "4"]
    rc, out, err = run(binary, lm + ["--save", p("lm.bin")])
    final = re.search(r"^final eval: rows (\d+) loss ([\d.]+) perplexity ([\d.]+)$", out, re.M)
    check("--task lm: 10 steps end with 'final eval: rows N loss L perplexity P'", rc == 0 and final is not None,
          err + out[-300:])
    header = open(p("lm.bin"), "rb").read(64) if os.path.exists(p("lm.bin")) else b""
    slots = struct.unpack("<16i", header) if len(header) == 64 else ()
    n = sum(files.tensor_sizes(files.Config(L=2, H=2, C=32, max_t=32)))
    check("--task lm saves an llm.c checkpoint: magic, version, step 10, moments, exact size",
          slots[:2] == (20240326, 3) and slots[9] == 10 and slots[10] == 1 and
          os.path.getsize(p("lm.bin")) == 1024 + 12 * n, str(slots))
    rc1, _, err1 = run(binary, lm + ["--save", p("lm_half.bin"), "--stop-at-step", "5"])
    rc2, out2, err2 = run(binary, lm + ["--resume", p("lm_half.bin"), "--save", p("lm_half.bin")])
    check("--task lm: 5 steps, --resume, 5 more is byte-identical to 10", rc1 == 0 and rc2 == 0 and
          os.path.exists(p("lm_half.bin")) and filecmp.cmp(p("lm.bin"), p("lm_half.bin"), shallow=False), err1 + err2)
    rc, _, err = run(binary, lm + ["--save", p("lm_one_thread.bin")], threads=1)
    check("--task lm: 1 thread gives the same checkpoint", rc == 0 and
          filecmp.cmp(p("lm.bin"), p("lm_one_thread.bin"), shallow=False), err)
    rc, out, err = run(binary, ["-m", p("lm.bin"), "--train", train, "--test", test, "--max-len", "16",
                                "--batch-size", "4", "--max-steps", "3"])
    check("the pretrained model fine-tunes with -m (a new head)", rc == 0 and "final eval: examples" in out, err)
    rc, _, err = run(binary, ["-m", model, "--train", train, "--test", test, "--max-len", "16", "--batch-size", "4",
                              "--max-steps", "10", "--resume", p("lm_half.bin")])
    check("a classifier refuses to resume a language-model run", rc != 0 and "language-model run" in err, err)

    text_only = ["--task", "lm", "-m", model, "--train", text, "--val-docs", "10", "--max-len", "16", "--batch-size", "8"]
    learn = text_only + ["--max-steps", "60", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "60"]
    rc0, out0, _ = run(binary, text_only + ["--max-steps", "1", "--lr", "0"])  # the untrained model's loss
    before = re.search(r"^final eval: rows \d+ loss ([\d.]+)", out0, re.M)
    rc, out, err = run(binary, learn + ["--save", p("lm_full.bin")])
    after = re.search(r"^final eval: rows \d+ loss ([\d.]+)", out, re.M)
    check("--task lm: the validation loss falls on a predictable text", rc0 == 0 and rc == 0 and before and after and
          float(after.group(1)) < float(before.group(1)) - 1.0,
          f"{before.group(0) if before else None} -> {after.group(0) if after else None} {err}")
    rc, out, err = run(binary, learn + ["--softmax", "sampled", "--save", p("lm_sampled.bin")])
    sampled = re.search(r"^final eval: rows \d+ loss ([\d.]+)", out, re.M)
    check("--softmax sampled: trains, lowers the validation loss, to another model than the full softmax",
          rc == 0 and sampled and before and float(sampled.group(1)) < float(before.group(1)) - 1.0 and
          not filecmp.cmp(p("lm_full.bin"), p("lm_sampled.bin"), shallow=False),
          f"{sampled.group(0) if sampled else None} {err}")
    check_time_budget(binary, text_only, p)
    for flags, message in ((["--softmax", "sampled", "-m", model, "--train", train, "--test", test], "--softmax sampled is for --task lm"),
                           (["--task", "lm", "-m", model, "--predict", test, "--output", p("x.csv")], "--predict needs a classifier"),
                           (["--task", "lm", "-m", model, "--train", text, "--val-docs", "60"], "--val-docs 60"),
                           (["--task", "lm", "-m", model, "--train", text, "--val-docs", "10", "--max-len", "1"], "at least 2 tokens"),
                           (text_only + ["--time-budget", "1", "--resume", p("lm_half.bin")], "--resume it with --max-steps N"),
                           (text_only + ["--time-budget", "1", "--warmup-ratio", "0.1"], "give --warmup-steps"),
                           (text_only + ["--time-budget", "1", "--stop-at-step", "10"], "before --time-budget fixes")):
        rc, _, err = run(binary, flags)
        check(f"refused with a one-line error: {' '.join(flags[:2])} ... ({message})",
              rc != 0 and message in err and err.count("\n") == 1, err)


def with_max_steps(flags, n):
    """flags with its --max-steps value replaced by n."""
    at = flags.index("--max-steps")
    return flags[:at + 1] + [str(n)] + flags[at + 2:]


def check_time_budget(binary, text_only, p):
    """--time-budget fixes the run's length after 10 updates; with the warmup at least that long, the run is the
    --max-steps N run it names (the learning rate so far did not depend on the length)."""
    budget = text_only + ["--max-steps", "1000000", "--warmup-steps", "10", "--lr", "1e-3", "--log-every", "1000000"]
    rc, out, err = run(binary, budget + ["--time-budget", "0.01", "--save", p("lm_budget.bin")])
    decided = re.search(r"^time budget 0.01 min: updates 2-10 took \S+ s each, so this run makes (\d+) updates of the "
                        r"1000000 planned; --resume it with --max-steps (\d+)$", out, re.M)
    steps = int(decided.group(1)) if decided else 0
    last = re.findall(r"^step +(\d+)/(\d+) ", out, re.M)
    check("--time-budget 0.01: a line names the updates the budget allows, and the run makes that many",
          rc == 0 and decided and 10 <= steps < 1000000 and decided.group(2) == str(steps) and
          last and last[-1] == (str(steps), str(steps)), err + out[-400:])
    header = open(p("lm_budget.bin"), "rb").read(64) if os.path.exists(p("lm_budget.bin")) else b""
    rc2, _, err2 = run(binary, with_max_steps(budget, steps) + ["--save", p("lm_steps.bin")])
    check("--time-budget's run is byte-identical to the --max-steps N run it names",
          steps > 0 and rc2 == 0 and len(header) == 64 and struct.unpack("<16i", header)[9] == steps and
          filecmp.cmp(p("lm_budget.bin"), p("lm_steps.bin"), shallow=False), err2)
    stop = 12  # after the budget's decision at update 10; 3 s of a tiny model's updates are many more
    rc, out, err = run(binary, budget + ["--time-budget", "0.05", "--stop-at-step", str(stop), "--save", p("lm_stop.bin")])
    decided = re.search(r"--resume it with --max-steps (\d+)$", out, re.M)
    named = int(decided.group(1)) if decided else 0
    if rc == 0 and named > stop:
        resume = with_max_steps(budget, named)
        rc2, _, err2 = run(binary, resume + ["--resume", p("lm_stop.bin"), "--save", p("lm_stop.bin")])
        rc3, _, err3 = run(binary, resume + ["--save", p("lm_named.bin")])
        check(f"--time-budget with --stop-at-step {stop}, resumed as its log says: the --max-steps {named} run",
              rc2 == 0 and rc3 == 0 and filecmp.cmp(p("lm_stop.bin"), p("lm_named.bin"), shallow=False), err2 + err3)
    else:
        check(f"--time-budget with --stop-at-step {stop}: stops there, names its length",
              rc == 0 and decided and named <= stop, err + out[-400:])
    rc, out, err = run(binary, text_only + ["--max-steps", "30", "--time-budget", "1000", "--log-every", "30"])
    check("--time-budget larger than needed: the planned 30 updates", rc == 0 and
          "so this run makes 30 updates of the 30 planned" in out and re.search(r"^step +30/30 ", out, re.M), err)


if __name__ == "__main__":
    main()
