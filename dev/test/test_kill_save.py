#!/usr/bin/env python3
"""
test_kill_save.py: SIGKILLs train_gpt2_sft at random moments while it saves a
checkpoint every step, and checks that the saved model survives every kill.

    python3 dev/test/test_kill_save.py [--binary ./train_gpt2_sft] [--kills 24] [--seed 20261129]
                                       [--out-dir build/kill_save] [--max-delay 2.5] [-v]
                                       [--ranks N [--mpirun mpirun]]

The model is small but not tiny (2 layers, 64 channels, 3.3M parameters: a
13 MB checkpoint and a 26 MB .state), so one save (state, then checkpoint,
each written to a temporary file, fsynced and renamed) takes about as long as
a training step or longer, and many kills land while a file is being written.
Each run is `--save P --save-every 1` with far more steps than it can finish;
it is killed after a delay drawn from a seeded RNG (so the sequence of delays
is reproducible; where exactly each kill lands depends on the machine's speed,
and is reported). The next run resumes from P when P and P.state belong
together, and starts afresh otherwise.

After each kill:
  - once P has been written, P exists and loads: `--predict DATA --output
    out.csv -m P` succeeds;
  - P's step never goes back: it is at least the step the run resumed from;
  - when P and P.state both exist and hold the same step, `--resume P` is
    accepted (checked by the next run, which resumes);
  - when their steps differ, `--resume P` must either find the matching state
    or refuse the pair with one `error:` line naming P.state, never resume
    with moments of another step. The trainer saves in this order: the
    checkpoint to P.next (through P.next.tmp), the old state renamed to
    P.state.prev, the new state to P.state (through P.state.tmp), then P.next
    renamed to P; a kill in between leaves P with the state of one save
    later, and --resume then takes P.state.prev (counted as completed).
Leftover P.next.tmp and P.state.tmp files (a kill during a write) are
reported, and must not stop the next run from saving.

With --ranks N (the MPI build, make MPI=1) every run is `mpirun -np N
--oversubscribe` and the kill goes to one rank, drawn from the same seeded
RNG: rank 0 (which alone writes the files) or another one, after which
mpirun must end all ranks by itself, with a non-zero status, within 60 s
(a rank killed while rank 0 saves makes mpirun end rank 0 mid-save). The
checks on P and P.state are the same.

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
    state = P + ".state"
    prev = P + ".state.prev"  # kept by trainers that keep the previous state (optional)
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

    rng = random.Random(args.seed)
    passed = failed = 0
    written = False          # P has been written at least once
    resume_from = None       # step P held when the current run resumed from it
    landed = {"checkpoint write": 0, "state write": 0, "between state and checkpoint": 0,
              "outside a save": 0, "before the first save": 0}
    mismatched = recovered = 0
    killed_ranks = {}        # with --ranks: kills of each rank
    max_step = 0
    start_all = time.time()
    for k in range(args.kills):
        delay = rng.uniform(args.min_delay, args.max_delay)
        pair_ok = os.path.exists(path(P)) and mbi.read_i32(path(P), 36) in (mbi.read_i32(path(state), 8),
                                                                             mbi.read_i32(path(prev), 8))
        if pair_ok:
            cmd = ["--resume", P] + run_flags
            resume_from = mbi.read_i32(path(P), 36)
        else:
            cmd = ["-m", base] + run_flags
            resume_from = None
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
        written = written or saves > 0
        # a temporary file left by this run (not by an earlier kill) marks a kill during its write
        fresh_tmp = [n for n in os.listdir(out) if n.startswith(P + ".") and n.endswith(".tmp")
                     and os.stat(path(n)).st_mtime >= launched - 1e-3]
        s_tmp = any(".state" in n for n in fresh_tmp)
        p_tmp = any(".state" not in n for n in fresh_tmp)
        p_step = mbi.read_i32(path(P), 36) if os.path.exists(path(P)) else None
        s_step = mbi.read_i32(path(state), 8) if os.path.exists(path(state)) else None
        v_step = mbi.read_i32(path(prev), 8) if os.path.exists(path(prev)) else None
        # where the kill landed, as far as the files tell
        if not written:
            where = "before the first save"
        elif p_tmp:
            where = "checkpoint write"
        elif s_tmp:
            where = "state write"
        elif p_step is not None and s_step is not None and s_step != p_step:
            where = "between state and checkpoint"
        else:
            where = "outside a save"
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
                if resume_from is not None and p_step < resume_from:
                    problems.append("%s went back from step %d to %d" % (P, resume_from, p_step))
            if s_step is None and v_step is None:
                problems.append("%s is missing" % state)
            elif p_step is not None and s_step != p_step and v_step == p_step:
                recovered += 1  # --resume takes the previous state; the next run checks it resumes
            elif p_step is not None and s_step != p_step:
                mismatched += 1
                # in a resumed run the state can only be one save ahead; a fresh run's first
                # save may also pair its state with the checkpoint of an earlier run
                if resume_from is not None and (s_step is None or s_step != p_step + 1):
                    problems.append("%s holds step %s, %s step %s: not one save apart" % (state, s_step, P, p_step))
                rc3, out3, err3 = run(["--resume", P] + run_flags, timeout=60)
                lines = [line for line in err3.splitlines() if line.strip()]
                if args.ranks > 0:  # mpirun adds its own lines about MPI_Abort
                    lines = [line for line in lines if line.startswith("error:")]
                if rc3 is None or rc3 <= 0 or len(lines) != 1 or not lines[0].startswith("error:") \
                        or state not in lines[0]:
                    problems.append("--resume of a mismatched pair was not refused cleanly: exit %s: %s"
                                    % (rc3, err3.strip()[:300]))
        # stdout is buffered, so a run killed early may have printed nothing; one
        # that saved must have resumed where P was, and saved the next step first
        first_save = re.search(r"^saved \S+ \(step (\d+)\)", log_text, re.M)
        if resume_from is not None and first_save:
            if "resuming %s at step %d" % (P, resume_from) not in log_text:
                problems.append("the run did not resume from %s at step %d" % (P, resume_from))
            if int(first_save.group(1)) != resume_from + 1:
                problems.append("the resumed run first saved step %s, want %d" % (first_save.group(1), resume_from + 1))
        desc = "kill %2d%s after %.2fs (%s, %d saves this run): P step %s, state step %s%s%s%s" % (
            k + 1, " (rank %d)" % victim if victim is not None else "", delay, "resumed at step %d" % resume_from if resume_from is not None else "fresh run",
            saves, p_step, s_step, ", state.prev step %s" % v_step if v_step is not None else "",
            ", checkpoint .tmp left" if p_tmp else "", ", state .tmp left" if s_tmp else "")
        if problems:
            failed += 1
            print("FAIL %s -- landed: %s\n     %s" % (desc, where, "\n     ".join(problems)))
        else:
            passed += 1
            if args.verbose:
                print("ok   %s -- landed: %s" % (desc, where))
    print("kill test: %s, %d kills in %.1fs, highest saved step %d; kills landed: %s; mismatched P/P.state pairs "
          "(refused by --resume): %d; pairs completed by P.state.prev: %d" % (
              args.binary, args.kills, time.time() - start_all, max_step,
              ", ".join("%s %d" % (k, v) for k, v in landed.items() if v), mismatched, recovered))
    if args.ranks > 0:
        print("under mpirun -np %d; SIGKILLs sent to %s" % (args.ranks, ", ".join(
            "rank %d %d times" % (r, n) for r, n in sorted(killed_ranks.items())) or "no rank"))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
