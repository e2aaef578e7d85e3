"""Matmul speed: train_gpt2_sft's gemm against OpenBLAS sgemm, same shapes and threads.

    /usr/bin/python3 dev/bench_matmul.py [-B 8] [-T 256] [--threads 2] [--vocab]

For each linear layer of GPT-2 124M (qkv, attention projection, fc, fc
projection) at N = B*T rows, times the forward product y = x W^T and the two
backward products dx = dy W and dW = dy^T x, in C (build/bench_sft matmul,
best of 5) and with OpenBLAS through numpy (best of 5, same transposes,
float32), and prints GFLOP/s, % of the machine's peak and the ratio
C / OpenBLAS. The peak is the one `bench_sft matmul` measures first (as
`bench_sft peak` does, best of 5 repetitions): FMA throughput at the vector
width of the C matmul's ISA, same threads.
Also printed, C only: attention's products (bench_sft times them inside the
fused causal attention, softmax included; OpenBLAS has no counterpart).
--vocab adds the vocabulary projection, N x 768 x 50304 (x @ wte^T, dy @ wte,
dy^T @ x; best of 2 on both sides, as bench_sft). numpy must use OpenBLAS
(apt-get install libopenblas0-openmp); the kernel is set with
OPENBLAS_CORETYPE (default SkylakeX with AVX-512, Haswell with AVX2) and
printed.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
# bench_train imports only the standard library at module level: no torch in these processes
from bench_train import BENCH_SFT, blas_in_use, build_flags, default_coretype, peak_of  # noqa: E402

PRODUCTS = ("forward", "dinp", "dweight")


def layer_shapes(vocab):
    """(name, input channels, output channels, repetitions) of the products, as bench_sft.c times them."""
    C = 768
    shapes = [("qkv", C, 3 * C, 5), ("attproj", C, C, 5), ("fc", C, 4 * C, 5), ("fcproj", 4 * C, C, 5)]
    return shapes + [("vocab", C, 50304, 2)] if vocab else shapes


def openblas_worker(args):
    import numpy as np
    libs, kernel = blas_in_use()
    print(f"blas: {libs} kernel {kernel} numpy {np.__version__}")
    N = args.B * args.T
    rng = np.random.default_rng(0)
    for name, cin, cout, reps in layer_shapes(args.vocab):
        x = rng.standard_normal((N, cin), dtype=np.float32)
        w = rng.standard_normal((cout, cin), dtype=np.float32)
        dy = rng.standard_normal((N, cout), dtype=np.float32)
        flops = 2.0 * N * cin * cout
        best = []
        for f in (lambda: x @ w.T, lambda: dy @ w, lambda: dy.T @ x):
            f()
            times = []
            for _ in range(reps):
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
    ap.add_argument("--vocab", action="store_true", help="also the vocabulary projection, N x 768 x 50304")
    ap.add_argument("--coretype", default=default_coretype(),
                    help="OPENBLAS_CORETYPE [SkylakeX with AVX-512, Haswell with AVX2]")
    ap.add_argument("--openblas-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.openblas_worker:
        openblas_worker(args)
        return
    subprocess.run(["make", "-s", "build/bench_sft"], cwd=ROOT, check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [BENCH_SFT, "matmul", "-B", str(args.B), "-T", str(args.T)] + (["--vocab"] if args.vocab else [])
    c_out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    build, peak_line, peak, isa = peak_of(c_out)
    print(build)
    print("flags: " + build_flags())
    print(peak_line)
    env.update(OPENBLAS_NUM_THREADS=str(args.threads), OPENBLAS_CORETYPE=args.coretype)
    env.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--openblas-worker"] + sys.argv[1:],
                         env=env, check=True, capture_output=True, text=True).stdout
    print("OpenBLAS " + next(line for line in out.splitlines() if line.startswith("blas:")))
    c, ob = parse(c_out), parse(out)
    print(f"GFLOP/s (% of peak {peak:.1f}, {isa}) at N = B*T = {args.B * args.T}, {args.threads} threads: "
          "C / OpenBLAS = ratio")
    worst = 1e9
    for name in c:
        cells = []
        for i, product in enumerate(PRODUCTS):
            ratio = c[name][i] / ob[name][i]
            worst = min(worst, ratio)
            cells.append(f"{product} {c[name][i]:6.1f} ({100 * c[name][i] / peak:3.0f}%) / "
                         f"{ob[name][i]:6.1f} ({100 * ob[name][i] / peak:3.0f}%) = {ratio:.2f}")
        print(f"  {name:9s} " + "   ".join(cells))
    att = re.search(r"result: attention forward ([\d.]+) backward ([\d.]+)", c_out)
    forward, backward = float(att.group(1)), float(att.group(2))
    print(f"  {'attention':9s} forward {forward:6.1f} ({100 * forward / peak:3.0f}%)   backward {backward:6.1f} "
          f"({100 * backward / peak:3.0f}%)   C only: causal QK^T and PV with the softmax, "
          "OpenBLAS has no counterpart")
    print(f"lowest ratio C / OpenBLAS: {worst:.2f}")


if __name__ == "__main__":
    main()
