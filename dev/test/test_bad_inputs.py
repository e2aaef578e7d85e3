#!/usr/bin/env python3
"""
test_bad_inputs.py: runs train_gpt2_sft on the bad-input corpus of
make_bad_inputs.py (rebuilt on every run) and checks that no input crashes it.

    python3 dev/test/test_bad_inputs.py [--binary ./train_gpt2_sft] [--out-dir build/bad_inputs]
                                        [--filter SUBSTRING] [--timeout SECONDS] [-v]

A bad-input case passes when the program
  - exits with a status that is non-zero, not a signal, not 134 (abort) or
    139 (segfault), and not a sanitizer's exit code (86/87, set below);
  - writes exactly one non-empty line to stderr, starting with "error:" and
    containing the expected text (the file or flag involved);
  - prints no sanitizer report (AddressSanitizer, LeakSanitizer, UBSan's
    "runtime error:") on stdout or stderr. (LeakSanitizer runs in the runs
    that must succeed; see sanitizer_env for why not after an error exit.)
The valid cases (the corpus must be sane) must exit 0 with an empty stderr.
The non-finite training cases must stop with one error line naming the step,
leave no temporary files, and leave the checkpoint at the --save path loadable
(--predict succeeds), either unchanged (when nothing was saved before the
failure) or holding the last step before the failure and its AdamW moments.

Works with any build: the release binary, or sanitizer builds such as
  gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -std=c99 \\
      -D_POSIX_C_SOURCE=200809L -o build/train_gpt2_sft_asan train_gpt2_sft.c -lm
Ends with "N passed, N failed"; exits 1 if any case failed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_bad_inputs  # noqa: E402

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "ThreadSanitizer",
                     "MemorySanitizer", "runtime error:", "==ERROR", "SUMMARY: ")
ASAN_EXIT, UBSAN_EXIT = 86, 87
CRASH_CODES = (134, 139, ASAN_EXIT, UBSAN_EXIT)


def sanitizer_env(detect_leaks):
    """Sanitizer settings, unless the caller's environment sets them. Leaks are
    checked in the runs that must succeed (they return from main and free what
    they allocated); a run that stops with an error leaves through exit() in
    fail(), from wherever it is, without freeing (by design), so LeakSanitizer
    is off there: what it would report are not leaks of a running program."""
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "exitcode=%d:detect_leaks=%d:abort_on_error=0" % (ASAN_EXIT, int(detect_leaks)))
    env.setdefault("UBSAN_OPTIONS", "exitcode=%d:halt_on_error=1:print_stacktrace=1" % UBSAN_EXIT)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class Runner:
    def __init__(self, binary, out_dir, timeout, verbose):
        self.binary, self.out_dir, self.timeout, self.verbose = binary, out_dir, timeout, verbose
        self.env_error, self.env_ok = sanitizer_env(False), sanitizer_env(True)

    def run(self, args, must_succeed=False, timeout=None):
        start = time.time()
        try:
            p = subprocess.run([self.binary] + args, cwd=self.out_dir,
                               env=self.env_ok if must_succeed else self.env_error, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=min(self.timeout, timeout or self.timeout))
            rc, out, err = p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, (e.stdout or b"").decode("utf-8", "replace"), (e.stderr or b"").decode("utf-8", "replace")
        return rc, out, err, time.time() - start

    def path(self, name):
        return os.path.join(self.out_dir, name)


def describe_status(rc):
    if rc is None:
        return "timed out"
    if rc < 0:
        return "killed by signal %d" % -rc
    return "exit %d" % rc


def sanitizer_report(out, err):
    for marker in SANITIZER_MARKERS:
        if marker in err or marker in out:
            return marker
    return None


def check_error_run(rc, out, err, expect):
    """Problems with a run that must fail cleanly; [] when it did."""
    problems = []
    if rc is None or rc <= 0 or rc in CRASH_CODES:
        problems.append("status: %s (want a non-zero exit without a crash)" % describe_status(rc))
    marker = sanitizer_report(out, err)
    if marker:
        problems.append("sanitizer report (%s)" % marker)
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1:
        problems.append("stderr has %d non-empty lines, want 1" % len(lines))
    elif not lines[0].startswith("error:"):
        problems.append("stderr line does not start with 'error:'")
    elif expect and expect not in lines[0]:
        problems.append("error line does not name %r" % expect)
    return problems


def check_loadable(runner, ckpt):
    """[] when `ckpt` loads: --predict over good.bin succeeds."""
    csv = ckpt + ".check.csv"
    rc, out, err, _ = runner.run(["--predict", "good.bin", "--output", csv, "-m", ckpt, "--max-len", "16",
                                  "--threads", "1"], must_succeed=True)
    if rc != 0 or sanitizer_report(out, err):
        return ["%s does not load (%s): %s" % (ckpt, describe_status(rc), err.strip()[:300])]
    return []


def check_no_temporaries(runner, ckpt):
    # save_run writes PATH.tmp and renames it, and the start-up check of --save
    # creates and removes PATH.tmp: no file PATH.* may remain
    left = sorted(n for n in os.listdir(runner.out_dir) if n.startswith(ckpt + "."))
    return ["file left behind: %s" % n for n in left]


def check_saved(runner, case, failed_step):
    """The checkpoint at the --save path after a run that stopped at failed_step
    (1-based; None when the run succeeded)."""
    problems = []
    ckpt = case["saved"]
    path = runner.path(ckpt)
    problems += check_no_temporaries(runner, ckpt)
    setup_src = case.get("setup", {}).get(ckpt)
    every = case.get("save_every", 0)
    if failed_step is None:
        last_saved = None  # the final save of a successful run
    else:
        last_good = failed_step - 1
        last_saved = last_good - last_good % every if every > 0 else 0
    if not os.path.exists(path):
        if last_saved == 0 and setup_src is None:
            return problems  # nothing was ever saved: fine
        return problems + ["%s does not exist" % ckpt]
    if last_saved == 0 and setup_src is not None:
        with open(path, "rb") as f, open(runner.path(setup_src), "rb") as g:
            if f.read() != g.read():
                problems.append("%s changed although no step was saved" % ckpt)
    elif last_saved is not None:
        step = make_bad_inputs.read_i32(path, 36)
        if step != last_saved:
            problems.append("%s holds step %s, want %d (the last saved step before step %d failed)"
                            % (ckpt, step, last_saved, failed_step))
        if make_bad_inputs.read_i32(path, 40) != 1:
            problems.append("%s holds no AdamW moments (header[10] is not 1)" % ckpt)
    problems += check_loadable(runner, ckpt)
    return problems


def run_case(runner, case):
    """Returns (problems, stderr of the main run)."""
    for dst, src in case.get("setup", {}).items():
        shutil.copyfile(runner.path(src), runner.path(dst))
    keep = case.get("keep")
    kept = open(runner.path(keep), "rb").read() if keep else None
    kind = case["kind"]
    rc, out, err, took = runner.run(case["args"], must_succeed=kind == "ok", timeout=case.get("timeout"))
    problems = []
    if kind == "error":
        problems = check_error_run(rc, out, err, case["expect"])
    elif kind == "ok":
        if rc != 0:
            problems.append("valid run failed: %s" % describe_status(rc))
        if err.strip():
            problems.append("valid run wrote to stderr")
        if sanitizer_report(out, err):
            problems.append("sanitizer report")
        for extra in case.get("then", []):
            rc2, out2, err2, _ = runner.run(extra, must_succeed=True)
            if rc2 != 0 or err2.strip() or sanitizer_report(out2, err2):
                problems.append("follow-up %s: %s: %s" % (" ".join(extra), describe_status(rc2), err2.strip()[:300]))
                err += err2
        if "saved_step" in case and not problems:
            ckpt, want = case["saved_step"]
            got = make_bad_inputs.read_i32(runner.path(ckpt), 36) if os.path.exists(runner.path(ckpt)) else None
            if got != want:
                problems.append("%s: %s, want a checkpoint of step %d" % (
                    ckpt, "missing" if got is None else "step %d" % got, want))
        if case["name"] == "valid_train_save_predict" and not problems:
            with open(runner.path("valid_out.csv")) as f:
                rows = f.read().splitlines()
            if len(rows) != 9 or not rows[0].startswith("index,label,predicted"):
                problems.append("valid_out.csv has %d lines, want a header and 8 rows" % len(rows))
    elif kind in ("nonfinite", "nonfinite_or_ok"):
        if kind == "nonfinite_or_ok" and rc == 0 and not err.strip():
            problems = check_saved(runner, case, None) if "saved" in case else []
        else:
            problems = check_error_run(rc, out, err, case["expect"])
            line = err.strip().splitlines()[-1] if err.strip() else ""
            m = re.search(r"\bstep (\d+)\b", line)
            if not m:
                problems.append("the error does not name the step")
            elif not re.search(r"nan|NaN|infinite|Inf|inf", line):
                problems.append("the error does not say what was not finite")
            elif "saved" in case:
                problems += check_saved(runner, case, int(m.group(1)))
    else:
        problems.append("unknown case kind %r" % kind)
    if keep is not None and open(runner.path(keep), "rb").read() != kept:
        problems.append("%s was modified" % keep)
    if runner.verbose:
        print("  [%s, %.2fs] %s" % (describe_status(rc), took, err.strip().replace("\n", " | ")[:200]))
    return problems, err


def main():
    parser = argparse.ArgumentParser(description="Runs train_gpt2_sft on the bad-input corpus.")
    parser.add_argument("--binary", default="./train_gpt2_sft")
    parser.add_argument("--out-dir", default="build/bad_inputs")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print("error: %s is not an executable (build it first)" % args.binary)
        print("0 passed, 1 failed")
        return 1
    out_dir = os.path.abspath(args.out_dir)
    cases = make_bad_inputs.build_corpus(out_dir)
    runner = Runner(binary, out_dir, args.timeout, args.verbose)
    passed = failed = 0
    start = time.time()
    for case in cases:
        if args.filter and args.filter not in case["name"]:
            continue
        problems, err = run_case(runner, case)
        if problems:
            failed += 1
            print("FAIL %s: %s" % (case["name"], "; ".join(problems)))
            print("     command: %s %s" % (args.binary, " ".join(repr(a) if a == "" or " " in a else a
                                                              for a in case["args"])))
            for line in err.strip().splitlines()[:8]:
                print("     stderr: %s" % line)
        else:
            passed += 1
            if args.verbose:
                print("ok   %s" % case["name"])
    print("bad inputs: %s, %d cases in %.1fs (corpus in %s)" % (args.binary, passed + failed, time.time() - start,
                                                                  args.out_dir))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
