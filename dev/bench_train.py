"""Training-step speed, MFU and peak memory: train_gpt2_sft (C) against two PyTorch baselines.

Runs, back to back on the same cores, the same training step (forward,
backward, gradient clipping, AdamW) of GPT-2 sequence classification with
random weights, in C (build/bench_sft step) and in two PyTorch programs,
float32, torch.set_num_threads equal to the OpenMP threads:

  reference  the model of dev/train_gpt2_sft.py (the project's PyTorch
             reference: llm.c tensor layout, per-layer views, AdamW foreach=False)
  plain      a GPT-2 classifier written the usual way: nn.Embedding, nn.Linear,
             nn.LayerNorm, masked_fill + softmax attention, tanh GELU,
             torch.optim.AdamW(foreach=True)

and prints seconds/step, tokens/s (real tokens, padding excluded), MFU, peak
memory and the speed ratio of C against the faster PyTorch.

    /usr/bin/python3 dev/bench_train.py                       # GPT-2 124M, B=8 T=256, random tokens
    /usr/bin/python3 dev/bench_train.py -T 512 --data data/imdb/imdb_train.bin
                                        # real IMDB batches grouped by length, max-len 512
    /usr/bin/python3 dev/bench_train.py --model run --data data/imdb/imdb_train.bin
                                        # `make run`'s fine-tuned model (Makefile PRETRAIN, FINETUNE)

MFU (model FLOPs utilization) = the FLOPs the step needs / its time / the
machine's peak. The peak is measured first by `build/bench_sft peak` on the
same threads (the best of its 5 repetitions): FMA throughput at the vector width of the C matmul's ISA. The
FLOPs (step_flops) count matrix products only, 2 per multiply-add, forward
and backward (backward = 2x forward: input and weight gradients), at real
tokens only, and only what a classifier needs: the last block at each
sequence's last position, except its keys and values. All three programs are
charged the same FLOPs, so MFU ratios are speed ratios; work a program does
beyond them (padding, the full last block) earns it nothing.

PyTorch must use an optimized BLAS: Debian's python3-torch links the
reference BLAS unless libopenblas0-openmp is installed (apt-get install
libopenblas0-openmp). OpenBLAS 0.3.21 picks slow SSE3 kernels on this CPU
unless told the core type, so the PyTorch runs get OPENBLAS_CORETYPE
(default SkylakeX on a CPU with AVX-512, Haswell with AVX2; --coretype to
change); the script prints the BLAS library and kernel PyTorch actually
loaded. Each program runs in its own process, so
peak RSS is measured separately.
"""
import argparse
import ctypes
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH_SFT = os.path.join(ROOT, "build", "bench_sft")
MAX_POSITIONS = 1024  # bench_sft.c builds its model with GPT-2's 1024 positions; the PyTorch models match
NUM_LABELS = 2
PAD_TOKEN = 50256     # <|endoftext|>, as train_gpt2_sft pads


def depth_shape(depth):
    """(channels, heads) of the dN model of --init dN and bench_sft (depth_shape in train_gpt2_sft.c):
    llm.c's widths for d24, d36 and d48, else 64N channels in N heads (d6: 384, d12: 768 = GPT-2 124M)."""
    return {24: (1024, 16), 36: (1280, 20), 48: (1600, 25)}.get(depth, (64 * depth, depth))


def block_forward_flops(C, n):
    """Matmul FLOPs of one transformer block's forward pass over all n positions of a sequence
    (2 per multiply-add): linear 2*(3C*C + C*C + 4C*C + 4C*C) per token (qkv, attention projection,
    fc, fc projection); causal attention, QK^T and PV over the causal half, 2 * 2*C*n(n+1)/2."""
    return 2 * 12 * C * C * n + 2 * C * n * (n + 1)


def step_flops(depth, lengths, num_labels):
    """Matmul FLOPs of one training step on sequences of the given real lengths.

    A dN model has N layers of C channels (depth_shape).
    Forward, per sequence of n real tokens (2 FLOPs per multiply-add):
      layers 0..L-2   block_forward_flops(C, n)
      last layer      keys and values at every token, 2*2C*C per token; the
                      query, attention projection and MLP at the last
                      position only, 2*(C*C + C*C + 8C*C); its attention,
                      one query over n keys, 2*2*C*n
      head            2*K*C
    Backward = 2x forward (input and weight gradients), so a step is 3x forward.
    """
    C = depth_shape(depth)[0]
    forward = 0
    for n in lengths:
        forward += (depth - 1) * block_forward_flops(C, n)
        forward += 2 * 2 * C * C * n + 2 * 10 * C * C + 2 * 2 * C * n
        forward += 2 * num_labels * C
    return 3 * forward


def make_run_shape():
    """Depth, max-len and batch size of `make run`'s fine-tuning (stage 2),
    read from the Makefile so that this benchmark follows it: the depth of the
    model PRETRAIN makes, max-len and batch size of FINETUNE."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    def flags(name):
        return re.search(r"^%s\s*=(.*)$" % name, text, re.M).group(1)
    depth = int(re.search(r"--init\s+d(\d+)", flags("PRETRAIN")).group(1))
    return (depth,) + tuple(int(re.search(pattern, flags("FINETUNE")).group(1))
                            for pattern in (r"--max-len\s+(\d+)", r"--batch-size\s+(\d+)"))


def resolve_shape(args):
    """Fills in depth, B and T left unset: GPT-2 124M at B=8 T=256, or `make run`'s model."""
    depth, T, B = make_run_shape() if args.model == "run" else (12, 256, 8)
    args.depth = args.depth or depth
    args.T = args.T or T
    args.B = args.B or B


def data_batches(args):
    """With --data: the dataset and the example indices of batches -1 (the
    warm-up) to steps-1, picked as bench_sft.c picks them: the B examples
    starting at (step+2)(N-B)/(steps+2) in the order of truncated length,
    ties by index."""
    import numpy as np
    sys.path.insert(0, HERE)
    import train_gpt2_sft as ref
    data = ref.TokenDataset(args.data)
    order = np.argsort(np.minimum(data.lengths, args.T), kind="stable")
    return data, [order[(step + 2) * (data.n - args.B) // (args.steps + 2):][:args.B]
                  for step in range(-1, args.steps)]


def timed_lengths(args):
    """The real lengths of each timed step's sequences (all programs run the same batches)."""
    if not args.data:
        return [[args.T] * args.B] * args.steps
    data, batches = data_batches(args)
    return [[min(int(data.lengths[i]), args.T) for i in rows] for rows in batches[1:]]


def peak_of(out):
    """The build line, peak line, peak GFLOP/s and ISA from the output of `bench_sft peak` (or of
    `bench_sft matmul`, which measures the peak first)."""
    build = next(line for line in out.splitlines() if line.startswith("build:"))
    peak = next(line for line in out.splitlines() if line.startswith("peak:"))
    gflops = float(re.search(r"result: peak gflops ([\d.]+)", out).group(1))
    return build, peak, gflops, re.match(r"peak: (.*?), \d+-float vectors", peak).group(1)


def machine_peak(threads):
    """`bench_sft peak` on `threads` threads (the best of its 5 repetitions): see peak_of."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return peak_of(subprocess.run([BENCH_SFT, "peak"], cwd=ROOT, env=env, check=True, capture_output=True,
                                  text=True).stdout)


def build_flags():
    """The compiler command line bench_sft was built with (the Makefile keeps it in build/flags)."""
    with open(os.path.join(ROOT, "build", "flags")) as f:
        return f.read().strip()


def parse_step(out):
    m = re.search(r"result: step tokens_per_s ([\d.]+) seconds_per_step ([\d.]+) peak_rss_mib ([\d.]+)", out)
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def run_c(args):
    cmd = [BENCH_SFT, "step", "--depth", str(args.depth), "-B", str(args.B), "-T", str(args.T),
           "--steps", str(args.steps)]
    if args.data:
        cmd += ["--data", args.data]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    summary = next(line for line in out.splitlines() if re.match(r"d\d+ B=", line))
    print("C: " + summary)
    return parse_step(out), int(re.search(r"(\d+) real tokens", summary).group(1))


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


def reference_step(args):
    """The training step of dev/train_gpt2_sft.py's model, as its `train` runs it."""
    import torch
    sys.path.insert(0, HERE)
    import train_gpt2_sft as ref
    channels, heads = depth_shape(args.depth)  # the shape of gpt2_build_from_scratch
    cfg = ref.GPT2Config(MAX_POSITIONS, ref.GPT2_VOCAB_SIZE, args.depth, heads, channels)
    model = ref.GPT2ForSequenceClassification(cfg, NUM_LABELS, dtype=torch.float32)
    model.load(ref.random_params(cfg, 1, plain=True), ref.random_head(NUM_LABELS, cfg.channels, 1))
    opt, sched = ref.make_optimizer(model, 5e-5, (0.9, 0.999), 1e-8, 0.01, 0, 1000)

    def step(tokens, lengths, labels):
        loss = ref.sft_loss(model(tokens, lengths), labels)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return step


def plain_trunk(depth):
    """A GPT-2 trunk written the usual way, float32: nn.Embedding wte (50257 rows) and wpe, `depth` blocks
    of nn.LayerNorm, nn.Linear, masked_fill + softmax causal attention and tanh GELU, then ln_f; its
    forward maps tokens (B, T) to the final hidden states (B, T, C). A function, so that only the
    worker processes import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    C, heads = depth_shape(depth)
    head_size = C // heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x, future):
            B, T, _ = x.shape
            q, k, v = (t.view(B, T, heads, head_size).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, 2))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(head_size)
            att = att.masked_fill(future[:T, :T], float("-inf")).softmax(dim=-1)
            x = x + self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(50257, C), nn.Embedding(MAX_POSITIONS, C)
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.ln_f = nn.LayerNorm(C)
            self.register_buffer("future", torch.ones(MAX_POSITIONS, MAX_POSITIONS, dtype=torch.bool).triu(1))

        def forward(self, tokens):
            x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
            for block in self.blocks:
                x = block(x, self.future)
            return self.ln_f(x)

    return Trunk()


def plain_step(args):
    """The training step of a GPT-2 classifier written the usual way (plain_trunk), same shapes as the reference."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = plain_trunk(args.depth)
            self.score = nn.Linear(depth_shape(args.depth)[0], NUM_LABELS, bias=False)

        def forward(self, tokens, lengths):
            x = self.trunk(tokens)
            return self.score(x[torch.arange(tokens.shape[0]), lengths - 1])  # pooled at each last real token

    torch.manual_seed(1)
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                            foreach=True)

    def step(tokens, lengths, labels):
        loss = F.cross_entropy(model(tokens, lengths), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def torch_worker(args):
    """Runs in a child process: one PyTorch program's steps, printing one result line."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    step = (reference_step if args.torch_worker == "reference" else plain_step)(args)
    g = torch.Generator().manual_seed(7)
    B, T = args.B, args.T
    if args.data:
        data, batches = data_batches(args)

    def batch(i):  # i = 0 is the warm-up, as in bench_sft.c
        if not args.data:
            return torch.randint(0, 50257, (B, T), generator=g), torch.full((B,), T)
        rows = [data.example(j)[:T].astype(np.int64) for j in batches[i]]
        tokens = torch.full((B, max(len(r) for r in rows)), PAD_TOKEN, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, :len(r)] = torch.from_numpy(r)
        return tokens, torch.tensor([len(r) for r in rows])

    labels = torch.arange(B) % NUM_LABELS
    elapsed, tokens_done = 0.0, 0
    for i in range(args.steps + 1):
        tokens, lengths = batch(i)
        t0 = time.perf_counter()
        step(tokens, lengths, labels)
        if i > 0:
            elapsed += time.perf_counter() - t0
            tokens_done += int(lengths.sum())
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    libs, kernel = blas_in_use()
    print(f"blas: {libs} kernel {kernel} torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"result: step tokens_per_s {tokens_done / elapsed:.1f} seconds_per_step {elapsed / args.steps:.4f} "
          f"peak_rss_mib {rss:.0f}")


def default_coretype():
    """The OpenBLAS kernel for this CPU's widest vectors: OpenBLAS 0.3.21 falls back to SSE3 kernels
    inside these KVM guests unless told, and a kernel the CPU cannot execute crashes."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        flags = set()
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return "Prescott" if "sse3" in flags else "Core2"


def torch_env(threads, coretype):
    """The environment of a PyTorch worker: its OpenMP and OpenBLAS threads, and the OpenBLAS kernel
    (OPENBLAS_CORETYPE: 0.3.21 picks slow SSE3 kernels on this CPU unless told)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OPENBLAS_CORETYPE=coretype)
    env.pop("OPENBLAS_L2_SIZE", None)
    return env


def print_machine(threads):
    """Measures the FMA peak on `threads` threads (machine_peak) and prints the build, flags and peak
    lines; returns (peak GFLOP/s, ISA)."""
    build, peak_line, peak, isa = machine_peak(threads)
    print(build)
    print("flags: " + build_flags())
    print(peak_line)
    return peak, isa


def run_torch(args, program):
    env = torch_env(args.threads, args.coretype)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", program] + sys.argv[1:]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    print(f"PyTorch {program} " + next(line for line in out.splitlines() if line.startswith("blas:")))
    return parse_step(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("124M", "run"), default="124M",
                    help="124M: GPT-2 d12, B=8, T=256; run: `make run`'s from-scratch model, its depth, max-len "
                         "and batch size from the Makefile's PRETRAIN and FINETUNE (--depth, -B, -T override)")
    ap.add_argument("--depth", type=int, help="dN model, d12 = GPT-2 124M")
    ap.add_argument("-B", type=int, help="batch size")
    ap.add_argument("-T", type=int, help="sequence length (max-len with --data)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--data", help="tokenized dataset: real, length-grouped batches")
    ap.add_argument("--coretype", default=default_coretype(),
                    help="OPENBLAS_CORETYPE for the PyTorch runs [SkylakeX with AVX-512, Haswell with AVX2]")
    ap.add_argument("--torch-worker", choices=("reference", "plain"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    resolve_shape(args)
    if args.torch_worker:
        torch_worker(args)
        return
    what = f"d{args.depth}, B={args.B}, " + (f"real batches from {args.data}, max-len {args.T}" if args.data
                                            else f"T={args.T}, random tokens")
    print(f"training step (forward + backward + clip + AdamW), {what}, {args.threads} threads")
    subprocess.run(["make", "-s", "build/bench_sft"], cwd=ROOT, check=True)
    peak, isa = print_machine(args.threads)
    lengths = timed_lengths(args)
    flops = sum(step_flops(args.depth, batch, NUM_LABELS) for batch in lengths) / args.steps
    print(f"model FLOPs per step {flops:.4g}: matmuls only (2 per multiply-add), forward + backward (= 3x forward), "
          "real tokens only, causal attention, the last block at each sequence's last position except its keys "
          "and values, the head; the same for C and PyTorch")
    c_result, c_tokens = run_c(args)
    if c_tokens != sum(map(sum, lengths)):  # the FLOPs above must be those of the batches C ran
        sys.exit(f"C ran {c_tokens} real tokens, this script counted {sum(map(sum, lengths))}: batches differ")
    torch_results = {program: run_torch(args, program) for program in ("reference", "plain")}

    print(f"--- summary: d{args.depth} B={args.B} T{'<=' if args.data else '='}{args.T} ---")
    print(f"peak {peak:.1f} GFLOP/s ({isa}, {args.threads} threads)")
    rows = {"C": c_result, **{f"PyTorch {program}": r for program, r in torch_results.items()}}
    for name, (tps, sps, rss) in rows.items():
        mfu = 100 * flops / sps / (peak * 1e9)
        print(f"{name + ':':19s} {sps:7.3f} s/step {tps:8.1f} tok/s  MFU {mfu:4.1f}%  peak RSS {rss:5.0f} MiB")
    c_tps, _, c_rss = c_result
    speed = {program: c_tps / r[0] for program, r in torch_results.items()}
    faster = min(speed, key=speed.get)
    print(f"speed ratio C / faster PyTorch ({faster}): {speed[faster]:.2f}x   ("
          + ", ".join(f"C / {program}: {ratio:.2f}x" for program, ratio in speed.items()) + ")")
    print("memory ratio " + ", ".join(f"C / {program}: {c_rss / r[2]:.2f}" for program, r in torch_results.items()))


if __name__ == "__main__":
    main()
