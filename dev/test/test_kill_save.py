#!/usr/bin/env python3
"""
test_kill_save.py: SIGKILLs train_gpt2_sft at random moments while it saves a
checkpoint every step, and checks that the saved model survives every kill.

    python3 dev/test/test_kill_save.py [--binary ./train_gpt2_sft] [--kills 24] [--seed 20261129]
                                       [--out-dir build/kill_save] [--max-delay 2.5] [-v]
                                       [--ranks N [--mpirun mpirun]]

The model is small but not tiny (2 layers, 64 channels, 3.3M parameters), so
one save (a 39 MB file: parameters and AdamW moments, written to P.tmp,
fsynced and renamed over P) takes about as long as a training step or longer,
and many kills land while the file is being written. Each run is `--save P
--save-every 1` with far more steps than it can finish; it is killed after a
delay drawn from a seeded RNG (so the sequence of delays is reproducible;
where exactly each kill lands depends on the machine's speed, and is
reported). The next run resumes from P once P exists, and starts afresh
before that.

After each kill:
  - once P has been written, P exists and loads: `--predict DATA --output
    out.csv -m P` succeeds;
  - P holds the AdamW moments (header[10] = 1), and its step never goes back:
    it is at least the step the run resumed from;
  - the next run resumes from P: it reports "resuming P at step S" and its
    first save is step S + 1 (after the last kill, one more run that stops
    at step S + 1 checks the same).
A P.tmp left behind (a kill during the write) is reported, and must not stop
the next run from saving.

With --ranks N (the MPI build, make MPI=1) every run is `mpirun -np N
--oversubscribe` and the kill goes to one rank, drawn from the same seeded
RNG: rank 0 (which alone writes P) or another one, after which mpirun must
end all ranks by itself, with a non-zero status, within 60 s (a rank killed
while rank 0 saves makes mpirun end rank 0 mid-save). The checks on P are
the same.

Ends with "N passed, N failed" (one case per kill); exits 1 on any failure.
"""

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_bad_inputs as mbi  # noqa: E402

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "==ERROR")


def rank_pid(proc, rank, timeout):
    """The pid of MPI rank `rank` among the children of mpirun (proc), found
    by its OMPI_COMM_WORLD_RANK; waits up to `timeout` s for it to start."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != proc.pid:
                    continue
                with open("/proc/%s/environ" % name, "rb") as f:
                    env = f.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ("OMPI_COMM_WORLD_RANK=%d" % rank).encode() in env:
                return int(name)
        time.sleep(0.02)
    return None


def main():
    parser = argparse.ArgumentParser(description="SIGKILL the trainer while it saves; the checkpoint must survive.")
    parser.add_argument("--binary", default="./train_gpt2_sft")
    parser.add_argument("--out-dir", default="build/kill_save")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds after the start, at least")
    parser.add_argument("--max-delay", type=float, default=2.5, help="seconds after the start, at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--ranks", type=int, default=0, help="run under mpirun -np N and kill one rank (MPI build)")
    parser.add_argument("--mpirun", default="mpirun")
    args = parser.parse_args()

    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print("error: %s is not an executable (build it first)" % args.binary)
        print("0 passed, 1 failed")
        return 1
    launcher = [binary]
    if args.ranks > 0:
        mpirun = shutil.which(args.mpirun)
        if mpirun is None:
            print("error: %s not found (apt-get install openmpi-bin)" % args.mpirun)
            print("0 passed, 1 failed")
            return 1
        launcher = [mpirun, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + \
            ["-np", str(args.ranks), binary]
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        os.remove(os.path.join(out, name))
    base, data, P = "base.bin", "data.bin", "P.bin"
    tmp = P + ".tmp"
    with open(os.path.join(out, base), "wb") as f:
        f.write(mbi.llmc_checkpoint(mbi.Config(L=2, H=2, C=64, max_t=64), seed=3))
    with open(os.path.join(out, data), "wb") as f:
        f.write(mbi.dataset_bytes(mbi.good_examples(n=16, max_len=48)))
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "exitcode=86:detect_leaks=0")
    env.setdefault("UBSAN_OPTIONS", "exitcode=87:halt_on_error=1")
    run_flags = ["--train", data, "--test", data, "--max-steps", "1000000", "--batch-size", "2", "--max-len", "64",
                 "--eval-examples", "2", "--log-every", "1", "--save", P, "--save-every", "1",
                 "--threads", str(args.threads)]

    def path(name):
        return os.path.join(out, name)

    def run(cmd, timeout=300):
        try:
            p = subprocess.run(launcher + cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", "timed out after %ds" % timeout
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def resumed_correctly(log_text, resume_from):
        """Problems with a run that resumed from P at step resume_from. stdout is
        buffered, so a run killed early may have printed nothing; one that saved
        must have resumed where P was, and saved the next step first."""
        first_save = re.search(r"^saved \S+ \(step (\d+)\)", log_text, re.M)
        if not first_save:
            return []
        problems = []
        if "resuming %s at step %d" % (P, resume_from) not in log_text:
            problems.append("the run did not resume from %s at step %d" % (P, resume_from))
        if int(first_save.group(1)) != resume_from + 1:
            problems.append("the resumed run first saved step %s, want %d" % (first_save.group(1), resume_from + 1))
        return problems

    rng = random.Random(args.seed)
    passed = failed = 0
    written = False          # P has been written at least once
    landed = {"during the write": 0, "outside a save": 0, "before the first save": 0}
    tmp_left = 0
    killed_ranks = {}        # with --ranks: kills of each rank
    max_step = 0
    start_all = time.time()
    for k in range(args.kills):
        delay = rng.uniform(args.min_delay, args.max_delay)
        resume_from = mbi.read_i32(path(P), 36) if os.path.exists(path(P)) else None
        cmd = (["--resume", P] if resume_from is not None else ["-m", base]) + run_flags
        victim = rng.randrange(args.ranks) if args.ranks > 0 else None
        log_path = path("run_%02d.log" % k)
        problems = []
        with open(log_path, "wb") as log:
            launched = time.time()
            proc = subprocess.Popen(launcher + cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(delay)
            early_exit = proc.poll()
            if early_exit is None and victim is None:
                os.kill(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            elif early_exit is None:
                pid = rank_pid(proc, victim, timeout=10)
                if pid is None:
                    problems.append("rank %d's process not found" % victim)
                    proc.terminate()  # mpirun ends its ranks on SIGTERM
                else:
                    os.kill(pid, signal.SIGKILL)
                    killed_ranks[victim] = killed_ranks.get(victim, 0) + 1
                try:
                    rc = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    problems.append("mpirun did not end within 60 s of the kill of rank %d (a hang)" % victim)
                    proc.terminate()
                    try:
                        rc = proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:  # it ignored SIGTERM too: it must not hang the suite
                        proc.kill()
                        rc = proc.wait()
            else:
                rc = early_exit
        with open(log_path, "r", errors="replace") as f:
            log_text = f.read()
        if early_exit is not None:
            problems.append("the run ended by itself before the kill: exit %s: %s" % (early_exit, log_text.strip()[-300:]))
        elif victim is None and rc != -signal.SIGKILL:
            problems.append("unexpected status %s" % rc)
        elif victim is not None and rc in (0, None):
            problems.append("mpirun ended with status %s after rank %d was killed" % (rc, victim))
        if any(m in log_text for m in SANITIZER_MARKERS):
            problems.append("sanitizer report in the run's output")
        saves = len(re.findall(r"^saved ", log_text, re.M))
        written = written or saves > 0 or os.path.exists(path(P))  # stdout is buffered: P may be newer than the log
        # a P.tmp written by this run (not left by an earlier kill) marks a kill during the write
        fresh_tmp = os.path.exists(path(tmp)) and os.stat(path(tmp)).st_mtime >= launched - 1e-3
        tmp_left += fresh_tmp
        p_step = mbi.read_i32(path(P), 36) if os.path.exists(path(P)) else None
        where = "before the first save" if not written else "during the write" if fresh_tmp else "outside a save"
        landed[where] += 1
        if written:
            if p_step is None:
                problems.append("%s is missing although it was saved before" % P)
            else:
                max_step = max(max_step, p_step)
                rc2, out2, err2 = run(["--predict", data, "--output", "out.csv", "-m", P, "--max-len", "64",
                                       "--threads", "1"])
                if rc2 != 0 or err2.strip():
                    problems.append("%s (step %s) does not load: exit %s: %s" % (P, p_step, rc2, err2.strip()[:300]))
                if mbi.read_i32(path(P), 40) != 1:
                    problems.append("%s (step %s) holds no AdamW moments" % (P, p_step))
                if resume_from is not None and p_step < resume_from:
                    problems.append("%s went back from step %d to %d" % (P, resume_from, p_step))
        if resume_from is not None:
            problems += resumed_correctly(log_text, resume_from)
        if k == args.kills - 1 and p_step is not None:  # no next run checks the last kill's P: resume it once more
            rc3, out3, err3 = run(["--resume", P] + run_flags + ["--stop-at-step", str(p_step + 1)])
            if rc3 != 0 or err3.strip():
                problems.append("--resume %s after the last kill failed: exit %s: %s" % (P, rc3, err3.strip()[:300]))
            else:
                problems += resumed_correctly(out3, p_step)
        desc = "kill %2d%s after %.2fs (%s, %d saves this run): P step %s%s" % (
            k + 1, " (rank %d)" % victim if victim is not None else "", delay, "resumed at step %d" % resume_from if resume_from is not None else "fresh run",
            saves, p_step, ", P.tmp left" if fresh_tmp else "")
        if problems:
            failed += 1
            print("FAIL %s -- landed: %s\n     %s" % (desc, where, "\n     ".join(problems)))
        else:
            passed += 1
            if args.verbose:
                print("ok   %s -- landed: %s" % (desc, where))
    print("kill test: %s, %d kills in %.1fs, highest saved step %d; kills landed: %s; P.tmp left behind %d times" % (
        args.binary, args.kills, time.time() - start_all, max_step,
        ", ".join("%s %d" % (k, v) for k, v in landed.items() if v), tmp_left))
    if args.ranks > 0:
        print("under mpirun -np %d; SIGKILLs sent to %s" % (args.ranks, ", ".join(
            "rank %d %d times" % (r, n) for r, n in sorted(killed_ranks.items())) or "no rank"))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
