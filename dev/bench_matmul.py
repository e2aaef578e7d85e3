"""Matmul speed: train_gpt2_sft's gemm against OpenBLAS sgemm, same shapes and threads.

    /usr/bin/python3 dev/bench_matmul.py [-B 8] [-T 256] [--threads 2]

For each linear layer of GPT-2 124M (qkv, attention projection, fc, fc
projection) at N = B*T rows, times the forward product y = x W^T and the two
backward products dx = dy W and dW = dy^T x, in C (build/bench_sft matmul,
best of 5) and with OpenBLAS through numpy (best of 5, same transposes,
float32), and prints GFLOP/s and the ratio C / OpenBLAS. numpy must use
OpenBLAS (apt-get install libopenblas0-openmp); the kernel is set with
OPENBLAS_CORETYPE (default SkylakeX) and printed.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def openblas_worker(args):
    import numpy as np
    sys.path.insert(0, HERE)
    from bench_train import blas_in_use
    libs, kernel = blas_in_use()
    print(f"blas: {libs} kernel {kernel} numpy {np.__version__}")
    N, C = args.B * args.T, 768
    rng = np.random.default_rng(0)
    for name, cin, cout in (("qkv", C, 3 * C), ("attproj", C, C), ("fc", C, 4 * C), ("fcproj", 4 * C, C)):
        x = rng.standard_normal((N, cin), dtype=np.float32)
        w = rng.standard_normal((cout, cin), dtype=np.float32)
        dy = rng.standard_normal((N, cout), dtype=np.float32)
        flops = 2.0 * N * cin * cout
        best = []
        for f in (lambda: x @ w.T, lambda: dy @ w, lambda: dy.T @ x):
            f()
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            best.append(flops / min(times) * 1e-9)
        print(f"result: matmul {name} forward {best[0]:.2f} dinp {best[1]:.2f} dweight {best[2]:.2f}")


def parse(out):
    return {m.group(1): [float(m.group(i)) for i in (2, 3, 4)]
            for m in re.finditer(r"result: matmul (\w+)\D.*?forward ([\d.]+) dinp ([\d.]+) dweight ([\d.]+)", out)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-B", type=int, default=8)
    ap.add_argument("-T", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--coretype", default="SkylakeX")
    ap.add_argument("--openblas-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.openblas_worker:
        openblas_worker(args)
        return
    subprocess.run(["make", "-s", "build/bench_sft"], cwd=ROOT, check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    c = parse(subprocess.run([os.path.join(ROOT, "build", "bench_sft"), "matmul", "-B", str(args.B), "-T", str(args.T)],
                             env=env, check=True, capture_output=True, text=True).stdout)
    env.update(OPENBLAS_NUM_THREADS=str(args.threads), OPENBLAS_CORETYPE=args.coretype)
    env.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--openblas-worker"] + sys.argv[1:],
                         env=env, check=True, capture_output=True, text=True).stdout
    print("OpenBLAS " + next(line for line in out.splitlines() if line.startswith("blas:")))
    ob = parse(out)
    print(f"GFLOP/s at N = B*T = {args.B * args.T}, {args.threads} threads (C / OpenBLAS = ratio)")
    worst = 1e9
    for name in c:
        cells = []
        for i, product in enumerate(("forward", "dinp", "dweight")):
            ratio = c[name][i] / ob[name][i]
            worst = min(worst, ratio)
            cells.append(f"{product} {c[name][i]:6.1f} / {ob[name][i]:6.1f} = {ratio:.2f}")
        print(f"  {name:8s} " + "   ".join(cells))
    print(f"lowest ratio C / OpenBLAS: {worst:.2f}")


if __name__ == "__main__":
    main()
