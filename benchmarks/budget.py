"""Validation top-1 against training budget: the main job at several budgets, as a table and a figure.

    python benchmarks/budget.py --data ../shared/data/cifar100-train.npz                  # 2 5 10 15 30 min
    python benchmarks/budget.py --data ... --budgets 5 15 --precision fp32 --threads 1    # a slower machine
    python benchmarks/budget.py --report                                                 # table + PNG only

Each point is ``cifar-resnet train --preset fast-cpu --budget Nm --epochs 100`` (the planner may then choose
as many epochs as fit, beyond the preset's 17), one after another, never side by side (two runs on two cores
would slow each other and plan for a slower machine). Per run, the log, ``-config.json`` and ``-metrics.csv``
land in ``experiments/budget/budget-<precision>-<threads>t-<N>m*`` with a summary ``.json``: the plan (epochs,
measured step times), the final validation top-1 (the last epoch, with the run's test-time augmentation),
the minutes from measuring to the last evaluation, the CPU and thread count, the recipe (the net's
widths); a budget in which not even one epoch fits is a row saying so. A run made
otherwise (``cifar-resnet train`` by hand) joins the table through ``write_summary(name, ..., command=...)``
over its files in experiments/budget. ``--report`` draws ``experiments/budget/budget.png`` (top-1 against
training minutes, one line per precision and thread count; the seeds of one budget as their mean with the
standard deviation as error bar) and prints the markdown table of experiments/budget/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "experiments" / "budget"

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from cifar_resnet.checkpoint import RunDir
from cifar_resnet.device import cpu_model

BUDGETS = (2, 5, 10, 15, 30)
# the run's last line about its budget: today's ("14m 52s used (99%: ...") and, in older logs, measuring and
# training apart ("21s measuring, then 13m 46s training")
_BUDGET_LINE = re.compile(
    r"the [0-9hms ]+ budget: ([0-9hms ]+) used \("
    r"|the [0-9hms ]+ budget: ([0-9hms ]+) measuring, then ([0-9hms ]+) training"
)


def point_name(minutes: float, precision: str, threads: int, seed: int, tag: str = "") -> str:
    """The name of a run's files in experiments/budget: ``budget-fp32-2t-15m``, ``budget-fp32-2t-15m-zen5-seed1``
    (``tag``: a word that keeps another CPU's runs beside this one's)."""
    return f"budget-{precision}-{threads}t-{minutes:g}m" + (f"-{tag}" if tag else "") + (f"-seed{seed}" if seed else "")


def run_point(data: str, minutes: float, precision: str, threads: int, seed: int, tag: str = "") -> dict:
    """One training run at a budget of ``minutes``; its summary (also written next to its log)."""
    name = point_name(minutes, precision, threads, seed, tag)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cifar_resnet", "train", "--preset", "fast-cpu", "--data", data]
        cmd += ["--budget", f"{minutes:g}m", "--epochs", "100", "--precision", precision, "--seed", str(seed)]
        cmd += ["--out", str(out), "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        (RUNS / f"{name}.log").write_text(" ".join(cmd[1:]) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            if "error: --budget" not in last:
                raise SystemExit(
                    f"budget.py: {name} failed (exit {proc.returncode}), log: experiments/budget/{name}.log"
                )
            summary = {"name": name, "budget_min": minutes, "precision": precision, "threads": threads}
            summary.update(seed=seed, fits=False, message=last, cpu=cpu_model(), command=" ".join(cmd[1:]))
            (RUNS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
            return summary  # the planner refused: not even one epoch fits (a row of the table, no point)
        run = RunDir(out)
        (RUNS / f"{name}-config.json").write_text(run.config_json.read_text())
        (RUNS / f"{name}-metrics.csv").write_text(run.metrics_csv.read_text())
    return write_summary(name, minutes, precision, threads, seed, wall)


def write_summary(
    name: str,
    minutes: float,
    precision: str,
    threads: int,
    seed: int,
    wall: float | None,
    command: str | None = None,
    recipe: str | None = None,
) -> dict:
    """The summary of a finished point, from its files in experiments/budget (log, config, metrics); ``command``: the
    command that made it (default: the log's first line, where this script writes it); ``recipe``: what the
    table calls it (default: the net, :func:`recipe_of`), e.g. to tell runs apart that differ elsewhere."""
    log = (RUNS / f"{name}.log").read_text()
    config = json.loads((RUNS / f"{name}-config.json").read_text())
    with (RUNS / f"{name}-metrics.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    summary = {
        "fits": True,
        "name": name,
        "budget_min": minutes,
        "precision": precision,
        "threads": threads,
        "seed": seed,
        "epochs": config["epochs"],
        "recipe": recipe or recipe_of(config),
        "plan": config["plan"],
        "val_top1": float(last["val_top1"]),
        "train_minutes": _trained_seconds(log) / 60,
        "wall_minutes": None if wall is None else wall / 60,
        "cpu": cpu_model(),
        "command": command or log.splitlines()[0],
    }
    (RUNS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def recipe_of(config: dict) -> str:
    """The net of a run's config, e.g. ``fast 48/192/192`` (and its batch where not 512): what tells the recipes
    apart (their resizing splits are the plans', which vary with the measured speed)."""
    widths = config.get("model_kwargs", {}).get("widths")
    net = config["model"] + (" " + "/".join(map(str, widths)) if widths else "")
    return net + (f", batch {config['batch_size']}" if config.get("batch_size", 512) != 512 else "")


def _trained_seconds(log: str) -> float:
    """Measuring plus training and evaluating, from the run's last line about its budget."""
    m = _BUDGET_LINE.search(log)
    if not m:
        raise SystemExit("budget.py: the run printed no budget line")
    units = {"h": 3600, "m": 60, "s": 1}
    parts = [part for part in m.groups() if part]
    return sum(int(n) * units[u] for part in parts for n, u in re.findall(r"(\d+)([hms])", part))


def report(png: Path) -> str:
    """The markdown table of every summary in experiments/budget, and the figure."""
    rows = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json")) if not p.name.endswith("-config.json")]
    rows = [r for r in rows if "budget_min" in r]  # the summaries (the folder may hold other .json files)
    if not rows:
        raise SystemExit("budget.py: no budget summaries in experiments/budget yet; run some budgets first")
    for r in rows:  # summaries written before they recorded the recipe: from the run's config, where kept
        config = RUNS / f"{r['name']}-config.json"
        r.setdefault("recipe", recipe_of(json.loads(config.read_text())) if config.exists() else "")
    groups: dict[tuple, list[dict]] = {}  # the seeds of one point: precision, recipe, threads, budget, CPU
    for r in rows:
        groups.setdefault((r["precision"], r["recipe"], r["threads"], r["budget_min"], r["cpu"]), []).append(r)
    lines = [
        "| precision | recipe | threads | budget | seeds | epochs | trained (min) | val top-1 | CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points: dict[tuple, list[tuple[float, float, float]]] = {}  # (precision, recipe, threads, CPU) -> points
    for (precision, net, threads, minutes, cpu), runs in sorted(groups.items(), key=lambda kv: kv[0]):
        head = f"| {precision} | {net or '-'} | {threads} | {minutes:g} min"
        fit = sorted((r for r in runs if r["fits"]), key=lambda r: r.get("seed", 0))
        if not fit:
            message = runs[0]["message"].split(": ", 3)[-1].split(" after")[0]
            seeds = ", ".join(str(r.get("seed", 0)) for r in runs)
            lines.append(f"{head} | {seeds} | - | - | refused: {message} | {cpu} |")
            continue
        top1 = [100 * r["val_top1"] for r in fit]
        trained = [r["train_minutes"] for r in fit]
        epochs = sorted({r["epochs"] for r in fit})
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        acc = f"{statistics.mean(top1):.2f}%" + (f" ± {sd:.2f} ({', '.join(f'{v:.2f}' for v in top1)})" if sd else "")
        seeds = ", ".join(str(r.get("seed", 0)) for r in fit)
        epochs_text = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
        lines.append(f"{head} | {seeds} | {epochs_text} | {statistics.mean(trained):.1f} | {acc} | {cpu} |")
        point = (statistics.mean(trained), statistics.mean(top1), sd)
        points.setdefault((precision, net, threads, cpu), []).append(point)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = plt.get_cmap("tab20").colors  # more series than the default cycle's 10 colours
    cpus = sorted({key[3] for key in points})
    markers = "osD^v<>"  # one a CPU
    for i, ((precision, net, threads, cpu), pts) in enumerate(sorted(points.items())):
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            fmt=markers[cpus.index(cpu) % len(markers)] + "-",
            color=colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            capsize=3,
            label=f"{precision}, {net}, {threads} thread{'s' if threads > 1 else ''} ({cpu})",
        )
    ax.set_xlabel("training minutes (measuring, training, evaluating)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("fast-cpu under --budget")
    ax.grid(alpha=0.3)
    # below the axes: one entry a recipe and CPU, however many there are, none over the points
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    os.replace(tmp, png)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="the CIFAR-100 .npz (needed unless --report)")
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="minutes (default: 2 5 10 15 30)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="a word for the runs' names, e.g. the CPU (budget-fp32-2t-15m-TAG)")
    p.add_argument("--report", action="store_true", help="only draw experiments/budget/budget.png and print the table")
    args = p.parse_args()
    if not args.report:
        if not args.data:
            p.error("--data is needed to run budgets")
        for minutes in args.budgets:
            s = run_point(args.data, minutes, args.precision, args.threads, args.seed, args.tag)
            if s["fits"]:
                print(f"{s['name']}: {s['epochs']} epochs, {s['train_minutes']:.1f} min, top-1 {s['val_top1']:.4f}")
            else:
                print(f"{s['name']}: {s['message']}")
    print(report(RUNS / "budget.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
