"""Language-model training speed: train_gpt2_sft --task lm (C) against a plain PyTorch GPT-2 LM and llm.c.

One run, back to back on the same cores, float32, the same number of threads everywhere:

  FMA peak    `build/bench_sft peak` first (as dev/bench_train.py), for MFU
  C           ./train_gpt2_sft --task lm --init dN --max-len T --batch-size B, --log-every 1, on the
              packed IMDB texts (data/imdb/imdb_train.bin + imdb_unsup.bin); tokens/s from the log's
              per-step tok/s of the steps after --warmup (the first steps pay for first touches; the
              data loading before step 1 is outside every window), --val-docs 40 (enough text for
              a row of any T here), no periodic eval, no --save
  PyTorch     a GPT-2 LM written the usual way (dev/bench_train.py's plain_trunk: nn.Embedding,
              nn.Linear, nn.LayerNorm, masked_fill + softmax causal attention, tanh GELU), the
              output layer tied to wte (logits = h @ wte.weight.T over the 50257 real tokens),
              F.cross_entropy, gradient clipping at 1 (the C's default), torch.optim.AdamW(foreach=True),
              torch.set_num_threads = the C's OpenMP threads, OPENBLAS_CORETYPE as bench_train.py
              (--coretype, default as there); random tokens (speed does not depend on them)
  llm.c       karpathy/llm.c's CPU trainer train_gpt2.c, built outside the repository (in --llmc-dir,
              from the git mirror --llmc-git, as its Makefile builds it: cc -Ofast -march=native
              -fopenmp -DOMP), at its fixed shape, GPT-2 124M, B=4, T=64, from a random llm.c
              checkpoint with IMDB tokens in llm.c's data format; tokens/s = B*T over its own per-step
              "took ... ms" (forward, backward, update) of the steps after --warmup, and the C at
              the same shape

    /usr/bin/python3 dev/bench_lm.py                    # d2 and d4 at B=16 T=256, and llm.c vs C at 124M B=4 T=64
    /usr/bin/python3 dev/bench_lm.py --include-124m     # also GPT-2 124M (d12) at B=16 T=256

Each row (the C and PyTorch) is a sequence of T tokens; the C and PyTorch predict its T-1 next tokens,
llm.c (which reads T+1 tokens a row) predicts T. tokens/s counts B*T tokens per step for all three.

MFU = model FLOPs per step / seconds per step / the measured peak. Model FLOPs (lm_step_flops) count
matrix products only, 2 per multiply-add, backward = 2x forward (input and weight gradients), so a
step is 3x forward; per row of T tokens the forward is
  L blocks   bench_train.block_forward_flops(C, T) each: 2*12*C*C*T (qkv, attention projection, fc,
             fc projection at every position) + 2*C*T*(T+1) (QK^T and PV over the causal half)
  head       2*V*C*(T-1), V = 50257 (the tied output layer at the T-1 positions with a next token)
i.e. per token about 6*(12*L*C^2 + V*C) + 6*L*C*(T+1); embeddings, LayerNorm, softmax, GELU and
AdamW are not counted. All programs are charged the same FLOPs for the same shape, so MFU ratios are
speed ratios.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train as bt  # noqa: E402  (standard library only at module level: no torch in this process)

ROOT = bt.ROOT
TRAINER = os.path.join(ROOT, "train_gpt2_sft")
LM_DATA = [os.path.join(ROOT, "data", "imdb", name) for name in ("imdb_train.bin", "imdb_unsup.bin")]
VOCAB = 50257                  # real vocabulary: the softmax width of the C (of its 50304-row wte)
EOT = 50256                    # <|endoftext|>
LLMC_GIT = "/work/.mirror/karpathy+llm.c/repo"
LLMC_B, LLMC_T = 4, 64         # fixed in llm.c's train_gpt2.c main()
LLMC_LAST_STEP = 40            # its loop runs steps 0..40
LLMC_GENERATES_AT = 20         # ... and generates 63 tokens (untimed, slow) before step 20
LLMC_TOKENS = 1 << 20          # tokens of IMDB text in llm.c's training file (its val file: 1/8 of that)


def fail(message):
    sys.exit(f"bench_lm: {message}")


def parse_model(name):
    """Depth of a model name: dN, or 124M (= d12)."""
    if name.lower() == "124m":
        return 12
    m = re.fullmatch(r"d(\d+)", name)
    if not m or not 1 <= int(m.group(1)) <= 48:
        fail(f"--models: '{name}' is not dN (1 <= N <= 48) or 124M")
    return int(m.group(1))


def model_name(depth):
    C, heads = bt.depth_shape(depth)
    return f"d{depth} (L={depth}, C={C}, {heads} heads" + (", GPT-2 124M)" if depth == 12 else ")")


def lm_step_flops(depth, B, T):
    """Matmul FLOPs of one LM training step on B rows of T tokens: see the module docstring."""
    C = bt.depth_shape(depth)[0]
    return 3 * B * (depth * bt.block_forward_flops(C, T) + 2 * VOCAB * C * (T - 1))


def matmul_params(depth):
    """Parameters in matrix products: 12*C^2 per block, and the output layer's V*C."""
    C = bt.depth_shape(depth)[0]
    return 12 * C * C * depth + VOCAB * C


def run_streaming(cmd, env, cwd, enough=None):
    """Runs cmd, stdout and stderr merged; with `enough(lines)` true, terminates it early. Returns
    (output, exit status, whether we stopped it, peak RSS MiB of the process)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, stopped = [], False
    for line in proc.stdout:
        lines.append(line)
        if enough is not None and not stopped and enough(lines):
            proc.terminate()
            stopped = True
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return "".join(lines), proc.returncode, stopped, usage.ru_maxrss / 1024.0


def tail(out, n=15):
    return "\n".join("    " + line for line in out.splitlines()[-n:])


def timed_rate(step_seconds, warmup, steps, tokens_per_step, who, out):
    """tokens/s and s/step over the steps after the warm-up, from per-step seconds."""
    if len(step_seconds) < warmup + steps:
        fail(f"{who}: {len(step_seconds)} timed step lines, expected {warmup + steps}; its output ends:\n{tail(out)}")
    timed = step_seconds[warmup:warmup + steps]
    if min(timed) <= 0:
        fail(f"{who}: a step took no time; its output ends:\n{tail(out)}")
    seconds = sum(timed)
    return {"tok/s": steps * tokens_per_step / seconds, "s/step": seconds / steps,
            "spread": (min(timed), max(timed))}


STEP_LINE = re.compile(r"^step\s+(\d+)/\d+ \| .*?\| loss (\S+) \| .*?\| ([\d.]+) tok/s \| padding ([\d.]+)%", re.M)


def run_c(depth, B, T, args):
    """The C's LM training at dN, B, T: the tokens/s of the steps after the warm-up."""
    for path in [TRAINER] + LM_DATA:
        if not os.path.isfile(path):
            fail(f"{path} is missing: " + ("build it with `make train_gpt2_sft`" if path == TRAINER
                                          else "make the IMDB data with prepro_imdb.py (see README.md)"))
    total = args.warmup + args.steps
    cmd = [TRAINER, "--task", "lm", "--init", f"d{depth}", "--max-len", str(T), "--batch-size", str(B),
           "--max-steps", str(total), "--log-every", "1", "--val-docs", "40", "--threads", str(args.threads)]
    print(f"C: {' '.join(os.path.relpath(c, ROOT) if c == TRAINER else c for c in cmd)}", flush=True)
    out, rc, _, rss = run_streaming(cmd, dict(os.environ, OMP_NUM_THREADS=str(args.threads)), ROOT)
    if rc != 0:
        fail(f"the C exited with status {rc}; its output ends:\n{tail(out)}")
    threads = re.search(r"^OpenMP threads: (\d+)", out, re.M)
    if threads is None or int(threads.group(1)) != args.threads:
        fail(f"the C ran on {threads.group(1) if threads else 'unknown'} OpenMP threads, not {args.threads}")
    config = re.search(r"^config: layers (\d+), heads (\d+), channels (\d+),.*language model", out, re.M)
    if config is None or tuple(map(int, config.groups())) != (depth, *bt.depth_shape(depth)[::-1]):
        fail(f"the C built {config.group(0) if config else 'no language model'}, not {model_name(depth)}")
    steps = STEP_LINE.findall(out)
    if [int(s[0]) for s in steps] != list(range(1, len(steps) + 1)):
        fail(f"the C's step lines are not steps 1, 2, ...; its output ends:\n{tail(out)}")
    if any(float(s[3]) != 0.0 for s in steps):
        fail("the C's LM batches have padding: tokens per step are not B*T")
    result = timed_rate([B * T / float(s[2]) if float(s[2]) > 0 else 0.0 for s in steps], args.warmup, args.steps,
                        B * T, "the C", out)
    result["rss"] = rss
    result["kernel"] = re.search(r"^matmul kernel: (.*)$", out, re.M).group(1)
    result["loss"] = (float(steps[0][1]), float(steps[-1][1]))
    return result


def torch_worker(args):
    """Runs in a child process: the PyTorch LM's steps, printing a blas line and a result line."""
    import resource
    import torch
    import torch.nn.functional as F
    from torch import nn
    torch.set_num_threads(args.threads)
    depth, B, T = args.torch_worker, args.batch, args.seq_len
    torch.manual_seed(1)
    trunk = bt.plain_trunk(depth)
    for embedding in (trunk.wte, trunk.wpe):  # GPT-2's N(0, 0.02), not nn.Embedding's N(0, 1): with the tied
        nn.init.normal_(embedding.weight, std=0.02)  # output layer the first loss is then about ln(50257)
    opt = torch.optim.AdamW(trunk.parameters(), lr=6e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            foreach=True)

    def step(tokens):
        h = trunk(tokens)[:, :-1]                 # the T-1 positions with a next token, as the C
        logits = h @ trunk.wte.weight.T           # tied output layer, the 50257 real tokens
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trunk.parameters(), 1.0)
        opt.step()
        return loss.item()

    g = torch.Generator().manual_seed(7)
    elapsed, losses = 0.0, []
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(0, VOCAB, (B, T), generator=g)
        t0 = time.perf_counter()
        losses.append(step(tokens))
        if i >= args.warmup:
            elapsed += time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    libs, kernel = bt.blas_in_use()
    print(f"blas: {libs} kernel {kernel} torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"loss: first {losses[0]:.4f} last {losses[-1]:.4f}")
    print(f"result: step tokens_per_s {args.steps * B * T / elapsed:.1f} seconds_per_step {elapsed / args.steps:.4f} "
          f"peak_rss_mib {rss:.0f}")


def run_torch(depth, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", str(depth), "--batch", str(args.batch),
           "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    print(f"PyTorch: plain GPT-2 LM d{depth} (masked_fill + softmax attention, tied head, AdamW foreach), "
          f"{args.warmup} + {args.steps} steps", flush=True)
    out, rc, _, _ = run_streaming(cmd, bt.torch_env(args.threads, args.coretype), ROOT)
    if rc != 0 or "result: step" not in out:
        fail(f"the PyTorch worker exited with status {rc}; its output ends:\n{tail(out)}")
    blas = next(line for line in out.splitlines() if line.startswith("blas:"))
    tps, sps, rss = bt.parse_step(out)
    loss = re.search(r"^loss: first (\S+) last (\S+)", out, re.M)
    return {"tok/s": tps, "s/step": sps, "rss": rss, "blas": blas, "loss": (float(loss.group(1)), float(loss.group(2)))}


def llmc_files(directory):
    """Runs in a child process (it imports torch): llm.c's inputs in `directory`, unless there already:
    gpt2_124M.bin, a random GPT-2 124M in llm.c's checkpoint format (dev/train_gpt2_sft.py's
    random_params and write_checkpoint, FORMATS.md section 1), and tiny_shakespeare_{train,val}.bin
    (the names its main() opens) holding IMDB texts, each after an <|endoftext|>, in llm.c's token
    format: 256 int32 header (20240520, version 1, token count), then uint16 tokens."""
    import numpy as np
    import train_gpt2_sft as ref
    cfg = ref.GPT2Config(1024, VOCAB, 12, 12, 768)
    checkpoint = os.path.join(directory, "gpt2_124M.bin")
    expected = ref.HEADER_BYTES + 4 * sum(ref.num_elements(s) for _, s in ref.param_shapes(cfg))
    if not os.path.isfile(checkpoint) or os.path.getsize(checkpoint) != expected:
        ref.write_checkpoint(checkpoint, cfg, ref.random_params(cfg, 1, plain=True))
    data_dir = os.path.join(directory, "dev", "data", "tinyshakespeare")
    os.makedirs(data_dir, exist_ok=True)
    data = ref.TokenDataset(LM_DATA[0])
    stream, n = [], 0
    for i in range(data.n):
        stream += [np.array([EOT], dtype=np.uint16), data.example(i)]
        n += 1 + int(data.lengths[i])
        if n >= LLMC_TOKENS * 9 // 8:
            break
    stream = np.concatenate(stream)
    for name, tokens in (("train", stream[:LLMC_TOKENS]), ("val", stream[LLMC_TOKENS:])):
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240520, 1, len(tokens)
        with open(os.path.join(data_dir, f"tiny_shakespeare_{name}.bin"), "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2").tobytes())


def build_llmc(args):
    """llm.c's train_gpt2 built in --llmc-dir, with its inputs; returns (binary, compile command) or
    (None, why not)."""
    git_dir = args.llmc_git
    if not os.path.isdir(git_dir):
        return None, f"no llm.c git mirror at {git_dir} (fetch github:karpathy/llm.c, or give --llmc-git)"
    d = args.llmc_dir
    if os.path.realpath(d).startswith(os.path.realpath(ROOT) + os.sep):
        fail(f"--llmc-dir {d} is inside the repository; llm.c is built outside it")
    os.makedirs(d, exist_ok=True)
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD", "train_gpt2.c", "llmc"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
    # as llm.c's Makefile on Linux: -Ofast -Wno-..., -march=native, OpenMP found: -fopenmp -DOMP, -lm -lgomp
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-Ofast", "-Wno-unused-result", "-Wno-ignored-pragmas", "-Wno-unknown-attributes", "-march=native",
           "-fopenmp", "-DOMP", "train_gpt2.c", "-lm", "-lgomp", "-o", "train_gpt2"]
    built = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
    if built.returncode != 0:
        fail(f"building llm.c failed ({' '.join(cmd)} in {d}):\n{tail(built.stderr)}")
    made = subprocess.run([sys.executable, os.path.abspath(__file__), "--llmc-files", d], cwd=ROOT,
                          capture_output=True, text=True)
    if made.returncode != 0:
        fail(f"writing llm.c's checkpoint and data in {d} failed:\n{tail(made.stdout + made.stderr)}")
    return os.path.join(d, "train_gpt2"), f"llm.c {commit[:12]}, {' '.join(cmd)}"


LLMC_STEP = re.compile(r"^step (\d+): train loss (\S+) \(took ([\d.]+) ms\)", re.M)


def run_llmc(binary, args):
    """llm.c's own per-step times: it runs steps 0..40 with no options; stopped once it has logged enough."""
    total = args.warmup + args.steps
    if total > LLMC_LAST_STEP + 1:
        fail(f"llm.c runs {LLMC_LAST_STEP + 1} steps; --warmup + --steps is {total}")
    if total > LLMC_GENERATES_AT:
        print(f"note: llm.c generates text (untimed, 63 forward passes) before step {LLMC_GENERATES_AT}; "
              f"fewer than {LLMC_GENERATES_AT + 1} steps avoid the wait")
    print(f"llm.c: {binary}, {args.warmup} + {args.steps} steps (its val loss passes are outside its step times)",
          flush=True)
    out, rc, stopped, rss = run_streaming(
        ["stdbuf", "-oL", binary], dict(os.environ, OMP_NUM_THREADS=str(args.threads)), os.path.dirname(binary),
        enough=lambda lines: len(lines) > 0 and LLMC_STEP.match(lines[-1]) is not None
        and int(LLMC_STEP.match(lines[-1]).group(1)) + 1 >= total)
    if rc != 0 and not stopped:
        fail(f"llm.c exited with status {rc}; its output ends:\n{tail(out)}")
    if not re.search(r"^num_layers: 12$", out, re.M) or not re.search(r"^channels: 768$", out, re.M):
        fail(f"llm.c did not load a GPT-2 124M; its output ends:\n{tail(out)}")
    steps = LLMC_STEP.findall(out)
    if [int(s[0]) for s in steps] != list(range(len(steps))):
        fail(f"llm.c's step lines are not steps 0, 1, ...; its output ends:\n{tail(out)}")
    result = timed_rate([float(s[2]) / 1000 for s in steps], args.warmup, args.steps, LLMC_B * LLMC_T, "llm.c", out)
    result["rss"] = rss
    result["loss"] = (float(steps[0][1]), float(steps[-1][1]))
    return result


def report(name, r, flops, peak):
    mfu = 100 * flops / r["s/step"] / (peak * 1e9)
    lo, hi = r.get("spread", (r["s/step"], r["s/step"]))
    spread = f"  (steps {lo:.3f}..{hi:.3f} s)" if "spread" in r else ""
    print(f"{name + ':':9s} {r['s/step']:8.3f} s/step {r['tok/s']:9.1f} tok/s  MFU {mfu:5.1f}%  "
          f"peak RSS {r['rss']:6.0f} MiB  loss {r['loss'][0]:.3f} -> {r['loss'][1]:.3f}{spread}")
    return mfu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d2,d4", help="comma-separated dN (124M = d12) [d2,d4]")
    ap.add_argument("--include-124m", action="store_true", help="add GPT-2 124M (d12) to --models")
    ap.add_argument("--batch", "-B", type=int, default=16, help="rows per step [16]")
    ap.add_argument("--seq-len", "-T", type=int, default=256, help="tokens per row (the C's --max-len) [256]")
    ap.add_argument("--steps", type=int, default=10, help="timed steps, after the warm-up [10]")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps of each program [2]")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every program [all cores]")
    ap.add_argument("--coretype", default=bt.default_coretype(),
                    help="OPENBLAS_CORETYPE for PyTorch [SkylakeX with AVX-512, Haswell with AVX2]")
    ap.add_argument("--skip-torch", action="store_true", help="no PyTorch runs")
    ap.add_argument("--skip-llmc", action="store_true", help="no llm.c comparison (and no C run at its shape)")
    ap.add_argument("--llmc-git", default=LLMC_GIT, help=f"llm.c's git directory [{LLMC_GIT}]")
    ap.add_argument("--llmc-dir", default="/tmp/llmc", help="where llm.c is built and run, outside the repository "
                    "[/tmp/llmc]")
    ap.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--llmc-files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    if args.llmc_files:
        llmc_files(args.llmc_files)
        return
    depths = [parse_model(m) for m in args.models.split(",") if m]
    if args.include_124m and 12 not in depths:
        depths.append(12)
    if args.batch < 1 or not 2 <= args.seq_len <= bt.MAX_POSITIONS:
        fail(f"--batch must be >= 1 and --seq-len 2..{bt.MAX_POSITIONS}")
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        fail("--steps must be >= 1, --warmup >= 0, --threads >= 1")

    print(f"language-model training step (forward + backward + clip + AdamW), float32, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    if not os.path.isfile(bt.BENCH_SFT):
        fail(f"{bt.BENCH_SFT} is missing: build it with `make build/bench_sft`")
    peak, isa = bt.print_machine(args.threads)
    print("model FLOPs: matmuls only (2 per multiply-add), forward + backward (= 3x forward); per row of T tokens "
          "L * block_forward_flops(C, T) (linear at every position, causal attention) + 2*V*C*(T-1) (tied head, "
          "V = 50257); the same for every program")
    llmc = None if args.skip_llmc else build_llmc(args)

    results = []
    for depth in depths:
        B, T = args.batch, args.seq_len
        flops = lm_step_flops(depth, B, T)
        print(f"--- {model_name(depth)}, B={B} T={T}: {matmul_params(depth) / 1e6:.2f}M matmul parameters, "
              f"{flops / 1e9:.1f} GFLOP/step, {flops / (B * T) / 1e6:.1f} MFLOP/token ---")
        c = run_c(depth, B, T, args)
        torch_result = None if args.skip_torch else run_torch(depth, args)
        print(f"C matmul kernel: {c['kernel']}")
        if torch_result:
            print("PyTorch " + torch_result["blas"])
        row = {"name": f"d{depth}", "B": B, "T": T, "C": c, "C MFU": report("C", c, flops, peak)}
        if torch_result:
            row["PyTorch"], row["PyTorch MFU"] = torch_result, report("PyTorch", torch_result, flops, peak)
            print(f"speed ratio C / PyTorch: {c['tok/s'] / torch_result['tok/s']:.2f}x")
        results.append(row)

    llmc_row = None
    if llmc is not None:
        binary, how = llmc
        print(f"--- llm.c vs C: {model_name(12)}, B={LLMC_B} T={LLMC_T} (llm.c's fixed shape) ---")
        if binary is None:
            print(f"llm.c skipped: {how}")
        else:
            print(how)
            flops = lm_step_flops(12, LLMC_B, LLMC_T)
            c = run_c(12, LLMC_B, LLMC_T, args)
            ll = run_llmc(binary, args)
            llmc_row = (c, ll, report("C", c, flops, peak), report("llm.c", ll, flops, peak))
            print(f"speed ratio C / llm.c: {c['tok/s'] / ll['tok/s']:.2f}x")

    print(f"=== summary: {args.threads} threads, peak {peak:.1f} GFLOP/s ({isa}), tokens/s after {args.warmup} "
          f"warm-up steps ===")
    if results:
        print(f"{'model':7s} {'B':>3s} {'T':>5s} {'C tok/s':>9s} {'PyTorch':>9s} {'C/PyTorch':>9s} {'C MFU':>6s} "
              f"{'PT MFU':>6s}")
    for row in results:
        pt = row.get("PyTorch")
        print(f"{row['name']:7s} {row['B']:3d} {row['T']:5d} {row['C']['tok/s']:9.1f} "
              + (f"{pt['tok/s']:9.1f} {row['C']['tok/s'] / pt['tok/s']:8.2f}x " if pt else f"{'-':>9s} {'-':>9s} ")
              + f"{row['C MFU']:5.1f}% " + (f"{row['PyTorch MFU']:5.1f}%" if pt else f"{'-':>6s}"))
    if llmc_row:
        c, ll, c_mfu, ll_mfu = llmc_row
        print(f"124M B={LLMC_B} T={LLMC_T}: C {c['tok/s']:.1f} tok/s ({c['s/step']:.3f} s/step, MFU {c_mfu:.1f}%), "
              f"llm.c {ll['tok/s']:.1f} tok/s ({ll['s/step']:.3f} s/step, MFU {ll_mfu:.1f}%), "
              f"C / llm.c {c['tok/s'] / ll['tok/s']:.2f}x")
    elif not args.skip_llmc:
        print(f"llm.c: skipped ({llmc[1]})")


if __name__ == "__main__":
    main()
