#!/usr/bin/env python3
"""Data parallelism on one machine: 2 MPI ranks x 1 thread against 1 process
x 2 threads (and x 1 thread), the same training steps of the same global batch.

    python3 dev/bench_mpi.py --model small          # the from-scratch d1 classifier, max-len 1024, batch 32
    python3 dev/bench_mpi.py --model 124m --steps 4 # GPT-2 124M shapes, max-len 512, batch 8

Each configuration trains from scratch on the IMDB training data (made with
prepro_imdb.py when data/imdb is missing) for --steps updates and stops
there (--stop-at-step: no final evaluation). A step's time is the interval
between its log line and the previous one as they arrive (the trainer flushes
each line); the first step (allocation, first touch) is left out. Prints per
configuration: seconds per step, tokens/s (real tokens, padding excluded),
the gradient allreduce's seconds per update as the trainer measures it
(including any wait for the slower rank), the speedup over 1 process x 1
thread and the efficiency (speedup / cores used). With --repeat R the
configurations run R times in turn and each keeps its fastest run. The load
average before and after is printed: on a machine shared with other jobs the
figures move from run to run. Standard library only.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = {  # model flags, global batch
    "small": (["--init", "d1", "--max-len", "1024", "--truncation", "head+tail", "--lr", "3e-3"], 32),
    "124m": (["--init", "d12", "--max-len", "512", "--truncation", "head+tail", "--lr", "5e-5"], 8),
}


def timed_run(cmd, env):
    """Runs cmd; returns (arrival time of each step line, tok/s of each, full output)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    arrivals, rates, lines = [], [], []
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"step +\d+/\d+ \|.*\| ([\d.]+) tok/s \|", line)
        if m:
            arrivals.append(time.time() - t0)
            rates.append(float(m.group(1)))
    rc = proc.wait()
    out = "".join(lines)
    if rc != 0:
        sys.exit("command failed (exit %d): %s\n%s" % (rc, " ".join(cmd), out[-2000:]))
    return arrivals, rates, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--steps", type=int, default=0, help="updates per configuration [small 40, 124m 4]")
    ap.add_argument("--train", default=os.path.join(ROOT, "data", "imdb", "imdb_train.bin"))
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--bind-to", default="core", help="mpirun --bind-to: core (Open MPI's default for 2 ranks) or none")
    ap.add_argument("--no-baseline", action="store_true", help="skip 1 process x 1 thread")
    ap.add_argument("--repeat", type=int, default=1, help="run the configurations R times in turn, keep each one's fastest")
    args = ap.parse_args()
    steps = args.steps or (40 if args.model == "small" else 4)
    if steps < 2:
        sys.exit("--steps must be at least 2 (the first is left out)")
    subprocess.run(["make", "-s", "train_gpt2_sft", "build/train_gpt2_sft_mpi"], cwd=ROOT, check=True)
    if not os.path.exists(args.train):
        subprocess.run([sys.executable, "prepro_imdb.py", "--out-dir", os.path.dirname(args.train)], cwd=ROOT, check=True)
    mpirun = shutil.which(args.mpirun)
    if mpirun is None:
        sys.exit("%s not found (apt-get install openmpi-bin)" % args.mpirun)
    launcher = [mpirun, "--bind-to", args.bind_to] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    flags, global_batch = MODELS[args.model]
    common = flags + ["--train", args.train, "--test", args.train, "--max-steps", "100000",
                      "--stop-at-step", str(steps), "--log-every", "1"]
    configs = [("1 process x 2 threads", [os.path.join(ROOT, "train_gpt2_sft")], 2, 1),
               ("2 ranks x 1 thread", launcher + ["-np", "2", os.path.join(ROOT, "build", "train_gpt2_sft_mpi")], 1, 2)]
    if not args.no_baseline:
        configs.insert(0, ("1 process x 1 thread", [os.path.join(ROOT, "train_gpt2_sft")], 1, 1))
    print("model %s (%s), global batch %d, %d updates per configuration, steps 2..%d timed; %d CPUs; "
          "load average %.2f" % (args.model, " ".join(flags[:2]), global_batch, steps, steps, os.cpu_count(),
                                 os.getloadavg()[0]))
    results, parameters = {}, 0
    for name, prefix, threads, ranks in configs * args.repeat:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = prefix + common + ["--batch-size", str(global_batch // ranks), "--threads", str(threads)]
        arrivals, rates, out = timed_run(cmd, env)
        if len(arrivals) != steps:
            sys.exit("%s: %d step lines, expected %d\n%s" % (name, len(arrivals), steps, out[-2000:]))
        intervals = [b - a for a, b in zip(arrivals, arrivals[1:])]  # steps 2..n
        seconds = sum(intervals)
        tokens = sum(r * t for r, t in zip(rates[1:], intervals))
        m = re.search(r"one allreduce of (\d+) gradients", out)
        if m:
            parameters = int(m.group(1))
        m = re.search(r"gradient allreduce ([\d.]+) s per update", out)
        allreduce = float(m.group(1)) if m else None
        if name not in results or seconds / len(intervals) < results[name][0]:
            results[name] = (seconds / len(intervals), tokens / seconds, allreduce, threads * ranks,
                             statistics.median(intervals))
        print("  %-22s %.4f s/step (median %.4f), %.0f tok/s%s" % (
            name, seconds / len(intervals), statistics.median(intervals), tokens / seconds,
            ", allreduce %.4f s/update" % allreduce if allreduce is not None else ""), flush=True)
    print("load average after: %.2f" % os.getloadavg()[0])
    base = results.get("1 process x 1 thread")
    print("\n| configuration | s/step | tokens/s | allreduce s/update | speedup vs 1x1 | efficiency |")
    print("|---|---|---|---|---|---|")
    for name, (step, rate, allreduce, cores, _) in results.items():
        speedup = base[0] / step if base else None
        print("| %s | %.4f | %.0f | %s | %s | %s |" % (
            name, step, rate, "%.4f" % allreduce if allreduce is not None else "-",
            "%.2fx" % speedup if speedup else "-", "%.0f%%" % (100 * speedup / cores) if speedup else "-"))
    a, b = results["2 ranks x 1 thread"], results["1 process x 2 threads"]
    print("\n2 ranks x 1 thread / 1 process x 2 threads: %.2fx the tokens/s; allreduce %.1f%% of a 2-rank step"
          % (a[1] / b[1], 100 * a[2] / a[0] if a[2] is not None else float("nan")))
    print_model(parameters, b[0], global_batch)


def print_model(parameters, step, batch):
    """A model, not a measurement: N nodes like this machine, each computing a
    batch of `batch` in `step` seconds (measured: 1 process x 2 threads), then
    a ring allreduce of the float32 gradients, each node sending and
    receiving 2 (N-1)/N x 4 P bytes at the link's full speed, with no overlap
    of computation and communication and no latency term."""
    nbytes = 4 * parameters
    print("\nmodelled, not measured: N nodes, each a batch of %d in %.3f s (measured above, 1 process x 2 threads), "
          "then a ring allreduce of 4 x %d bytes = %.1f MB (each node sends 2(N-1)/N of it), no overlap"
          % (batch, step, parameters, nbytes / 1e6))
    print("\n| nodes | global batch | allreduce at 10 Gbit/s | step | efficiency | allreduce at 100 Gbit/s | step | efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (1, 2, 4, 8, 16, 32, 64):
        row = ["%d" % n, "%d" % (n * batch)]
        for gbit in (10, 100):
            comm = 2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8)
            row += ["%.3f s" % comm, "%.3f s" % (step + comm), "%.0f%%" % (100 * step / (step + comm))]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
