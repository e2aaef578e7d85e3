"""Training-step speed and peak memory: train_gpt2_sft (C) against PyTorch.

Runs, back to back on the same cores, the same training step (forward,
backward, gradient clipping, AdamW) of GPT-2 sequence classification at the
124M shapes with random weights, in C (build/bench_sft) and in PyTorch (the
model of dev/train_gpt2_sft.py, float32, torch.set_num_threads equal to the
OpenMP threads), and prints tokens/s, peak memory and the ratios.

    /usr/bin/python3 dev/bench_train.py                       # B=8 T=256, random tokens
    /usr/bin/python3 dev/bench_train.py -T 512 --data data/imdb/imdb_train.bin
                                        # real IMDB batches grouped by length, max-len 512

PyTorch must use an optimized BLAS: Debian's python3-torch links the
reference BLAS unless libopenblas0-openmp is installed (apt-get install
libopenblas0-openmp). OpenBLAS 0.3.21 picks slow SSE3 kernels on this CPU
unless told the core type, so the PyTorch run gets OPENBLAS_CORETYPE
(default SkylakeX, --coretype to change); the script prints the BLAS library
and kernel PyTorch actually loaded. Each side runs in its own process, so
peak RSS is measured separately.
"""
import argparse
import ctypes
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_c(args):
    subprocess.run(["make", "-s", "build/bench_sft"], cwd=ROOT, check=True)
    cmd = [os.path.join(ROOT, "build", "bench_sft"), "step", "--depth", str(args.depth), "-B", str(args.B),
           "-T", str(args.T), "--steps", str(args.steps)]
    if args.data:
        cmd += ["--data", args.data]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    print("C:      " + out.strip().splitlines()[0])
    m = re.search(r"result: step tokens_per_s ([\d.]+) seconds_per_step ([\d.]+) peak_rss_mib ([\d.]+)", out)
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def blas_in_use():
    """The BLAS library mapped into this process and, for OpenBLAS, its kernel."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            if re.search(r"lib(open)?blas|libblis|libmkl", line):
                libs.add(line.split()[-1])
    kernel = "unknown"
    for lib in libs:
        if "openblas" in lib:
            try:
                core = ctypes.CDLL(lib).openblas_get_corename
                core.restype = ctypes.c_char_p
                kernel = core().decode()
            except (OSError, AttributeError):
                pass
    return ", ".join(sorted(libs)) or "none found", kernel


def torch_worker(args):
    """Runs in a child process: the PyTorch step, printing one result line."""
    import numpy as np
    import torch
    sys.path.insert(0, HERE)
    import train_gpt2_sft as ref

    torch.set_num_threads(args.threads)
    cfg = ref.config_by_name(f"d{args.depth}")
    model = ref.GPT2ForSequenceClassification(cfg, 2, dtype=torch.float32)
    params = ref.random_params(cfg, 1, plain=True)
    model.load(params, ref.random_head(2, cfg.channels, 1))
    opt, sched = ref.make_optimizer(model, 5e-5, (0.9, 0.999), 1e-8, 0.01, 0, 1000)
    g = torch.Generator().manual_seed(7)
    B, T = args.B, args.T
    if args.data:
        data = ref.TokenDataset(args.data)
        truncated = np.minimum(data.lengths, T)
        order = sorted(range(data.n), key=lambda i: (int(truncated[i]), i))

    def batch(step):  # step -1 is the warm-up, as in bench_sft.c
        if not args.data:
            return torch.randint(0, cfg.vocab_size, (B, T), generator=g), torch.full((B,), T)
        start = (step + 2) * (data.n - B) // (args.steps + 2)
        rows = [data.example(i)[:T].astype(np.int64) for i in order[start:start + B]]
        width = max(len(r) for r in rows)
        tokens = torch.full((B, width), 50256, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, :len(r)] = torch.from_numpy(r)
        return tokens, torch.tensor([len(r) for r in rows])

    labels = torch.arange(B) % 2
    elapsed, tokens_done = 0.0, 0
    for step in range(-1, args.steps):
        tokens, lengths = batch(step)
        t0 = time.perf_counter()
        loss = ref.sft_loss(model(tokens, lengths), labels)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= 0:
            elapsed += time.perf_counter() - t0
            tokens_done += int(lengths.sum())
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    libs, kernel = blas_in_use()
    print(f"blas: {libs} kernel {kernel} torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"result: step tokens_per_s {tokens_done / elapsed:.1f} seconds_per_step {elapsed / args.steps:.4f} "
          f"peak_rss_mib {rss:.0f}")


def run_torch(args):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               OPENBLAS_CORETYPE=args.coretype)
    env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker"] + sys.argv[1:]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("blas:"):
            print("PyTorch " + line)
    m = re.search(r"result: step tokens_per_s ([\d.]+) seconds_per_step ([\d.]+) peak_rss_mib ([\d.]+)", out)
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=12, help="dN model, d12 = GPT-2 124M")
    ap.add_argument("-B", type=int, default=8)
    ap.add_argument("-T", type=int, default=256, help="sequence length (max-len with --data)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--data", help="tokenized dataset: real, length-grouped batches")
    ap.add_argument("--coretype", default="SkylakeX", help="OPENBLAS_CORETYPE for the PyTorch run")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    what = f"d{args.depth}, B={args.B}, " + (f"real batches from {args.data}, max-len {args.T}" if args.data
                                            else f"T={args.T}, random tokens")
    print(f"training step (forward + backward + clip + AdamW), {what}, {args.threads} threads")
    c_tps, c_sps, c_rss = run_c(args)
    t_tps, t_sps, t_rss = run_torch(args)
    print(f"C:       {c_tps:8.1f} tokens/s  {c_sps:7.3f} s/step  peak RSS {c_rss:6.0f} MiB")
    print(f"PyTorch: {t_tps:8.1f} tokens/s  {t_sps:7.3f} s/step  peak RSS {t_rss:6.0f} MiB")
    print(f"speed ratio C/PyTorch: {c_tps / t_tps:.2f}x   memory ratio C/PyTorch: {c_rss / t_rss:.2f}")


if __name__ == "__main__":
    main()
