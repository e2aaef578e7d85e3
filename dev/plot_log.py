#!/usr/bin/env python3
"""
Plot train_gpt2_sft training logs: training loss, test loss and test accuracy against step.

    python3 dev/plot_log.py LOG [LOG ...] -o plot.png [--labels a,b] [--smooth 0.9] [--title T]

LOG is what train_gpt2_sft prints (its stdout, e.g. `./train_gpt2_sft ... | tee run.log`).
Lines it reads (everything else is ignored):

    step    10/100 | epoch 0.01 | loss 0.7461 | lr 7.000e-04 | grad norm 3.476 | ...
    eval step 15: examples 200 loss 0.7109 accuracy 0.4450
    final eval: examples 25000 loss 0.6930 accuracy 0.5176

The final evaluation has no step number; it is drawn at the last training
step of the log as a larger marker. A log whose step count goes back (runs
appended to one file) is split into parts "LOG #1", "LOG #2", ... Each log gets one
colour in all panels. Also prints a summary per log.

Needs matplotlib (Debian: apt-get install python3-matplotlib); parsing alone
(parse_log) is standard library only.
"""

import argparse
import math
import os
import re
import sys

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
STEP_RE = re.compile(r"^step\s+(\d+)/(\d+)\s*\|\s*epoch\s+(" + NUM + r")\s*\|\s*loss\s+(" + NUM + r")"
                     r"\s*\|\s*lr\s+(" + NUM + r")(?:\s*\|\s*grad norm\s+(" + NUM + r"))?")
EVAL_RE = re.compile(r"^eval step\s+(\d+):\s*examples\s+(\d+)\s+loss\s+(" + NUM + r")\s+accuracy\s+(" + NUM + r")")
FINAL_RE = re.compile(r"^final eval:\s*examples\s+(\d+)\s+loss\s+(" + NUM + r")\s+accuracy\s+(" + NUM + r")")


class LogError(Exception):
    pass


def new_run(name):
    return {"name": name, "train": [], "eval": [], "final": None, "total_steps": None}


def parse_log(path, name=None):
    """Parse one log file into a list of runs (usually one).

    Each run: {"name", "train": [(step, epoch, loss, lr, grad_norm or None)],
    "eval": [(step, examples, loss, accuracy)], "final": (step, examples, loss, accuracy) or None,
    "total_steps"}. The final eval's step is the run's last training or eval step.
    """
    name = name or os.path.basename(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror or e})")
    runs = [new_run(name)]

    def last_step(run):
        steps = [t[0] for t in run["train"]] + [e[0] for e in run["eval"]]
        return max(steps) if steps else 0

    def current(step):
        run = runs[-1]
        if step < last_step(run) or run["final"] is not None:   # a new run appended to the same file
            runs.append(new_run(f"{name} #{len(runs) + 1}"))
        return runs[-1]

    for line in lines:
        line = line.strip()
        m = STEP_RE.match(line)
        if m:
            step = int(m.group(1))
            run = current(step)
            run["total_steps"] = int(m.group(2))
            gn = float(m.group(6)) if m.group(6) is not None else None
            run["train"].append((step, float(m.group(3)), float(m.group(4)), float(m.group(5)), gn))
            continue
        m = EVAL_RE.match(line)
        if m:
            step = int(m.group(1))
            current(step)["eval"].append((step, int(m.group(2)), float(m.group(3)), float(m.group(4))))
            continue
        m = FINAL_RE.match(line)
        if m:
            run = runs[-1]
            if run["final"] is not None:
                run = new_run(f"{name} #{len(runs) + 1}")
                runs.append(run)
            run["final"] = (last_step(run), int(m.group(1)), float(m.group(2)), float(m.group(3)))
    runs = [r for r in runs if r["train"] or r["eval"] or r["final"]]
    if not runs:
        raise LogError(f"{path}: no training log lines ('step N/M | ... | loss ...') found")
    if len(runs) > 1:
        runs[0]["name"] = f"{name} #1"
    return runs


def ema(values, beta):
    """Bias-corrected exponential moving average (beta 0: unchanged).

    Non-finite values (a diverged step logged as nan) are left out of the average
    and give a gap."""
    if beta <= 0:
        return list(values)
    out, avg, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        n += 1
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** n))
    return out


def summary(run):
    parts = [run["name"] + ":"]
    if run["train"]:
        s = run["train"][-1]
        parts.append(f"{len(run['train'])} training points, last step {s[0]}"
                     f"{'/' + str(run['total_steps']) if run['total_steps'] else ''} loss {s[2]:.4f}")
    if run["eval"]:
        best = max(run["eval"], key=lambda e: e[3])
        parts.append(f"{len(run['eval'])} evals, best accuracy {best[3]:.4f} at step {best[0]}")
    if run["final"]:
        f = run["final"]
        parts.append(f"final eval ({f[1]} examples) loss {f[2]:.4f} accuracy {f[3]:.4f}")
    return "  ".join(parts[:1]) + " " + "; ".join(parts[1:])


def plot(runs, out_path, smooth=0.0, title=None, dpi=120):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_eval = any(r["eval"] or r["final"] for r in runs)
    ncols = 3 if have_eval else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        if run["train"]:
            steps = [t[0] for t in run["train"]]
            losses = [t[2] for t in run["train"]]
            if smooth > 0:
                axes[0].plot(steps, losses, color=c, alpha=0.25, linewidth=1)
                axes[0].plot(steps, ema(losses, smooth), color=c, label=run["name"],
                             marker="." if len(steps) <= 50 else None)
            else:
                axes[0].plot(steps, losses, color=c, label=run["name"], marker="." if len(steps) <= 50 else None)
        if not have_eval:
            continue
        ev = run["eval"]
        if ev:
            axes[1].plot([e[0] for e in ev], [e[2] for e in ev], color=c, marker="o", markersize=4, label=run["name"])
            axes[2].plot([e[0] for e in ev], [e[3] for e in ev], color=c, marker="o", markersize=4, label=run["name"])
        if run["final"]:
            s, n, loss, acc = run["final"]
            for ax, v, k in ((axes[1], loss, 2), (axes[2], acc, 3)):
                if ev:   # dotted link from the last periodic eval to the final one
                    ax.plot([ev[-1][0], s], [ev[-1][k], v], color=c, linestyle=":", linewidth=1)
                ax.plot([s], [v], color=c, marker="*", markersize=13, linestyle="none",
                        label=None if ev else run["name"])
            if len(runs) == 1:
                axes[2].annotate(f"{acc:.3f}", (s, acc), textcoords="offset points", xytext=(0, 9),
                                 ha="center", fontsize=8, color=c)
    star = " (\u2605 final eval)" if any(r["final"] for r in runs) else ""
    names = ["training loss" + (f" (EMA {smooth})" if smooth > 0 else ""), "test loss" + star, "test accuracy" + star]
    for ax, t in zip(axes, names):
        ax.set_title(t)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if any(not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=8)
    if have_eval:
        axes[2].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot train_gpt2_sft logs: training loss, test loss, test accuracy.")
    ap.add_argument("logs", nargs="+", metavar="LOG")
    ap.add_argument("-o", "--output", default="plot.png", help="image file, format from the extension "
                    "(png, svg, pdf; default %(default)s)")
    ap.add_argument("--labels", help="comma-separated legend names, one per LOG (default: file names)")
    ap.add_argument("--smooth", type=float, default=0.0, help="EMA factor for the training loss, e.g. 0.9 "
                    "(default 0: raw)")
    ap.add_argument("--title")
    ap.add_argument("--dpi", type=int, default=120)
    args = ap.parse_args(argv)
    try:
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else [None] * len(args.logs)
        if len(labels) != len(args.logs):
            raise LogError(f"--labels has {len(labels)} names for {len(args.logs)} logs")
        if not 0 <= args.smooth < 1:
            raise LogError("--smooth must be in [0, 1)")
        runs = []
        for path, label in zip(args.logs, labels):
            runs += parse_log(path, label)
        for r in runs:
            print(summary(r))
        try:
            plot(runs, args.output, args.smooth, args.title, args.dpi)
        except ImportError:
            raise LogError("matplotlib is not installed (Debian: apt-get install python3-matplotlib)")
    except LogError as e:
        print(f"plot_log: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
