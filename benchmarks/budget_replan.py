"""The budget a run fills, on a quiet machine and on one disturbed mid-run, against another checkout's runs.

    python benchmarks/budget_replan.py --data ../shared/data/cifar100-train.npz --budget 15m --seeds 0 1 2 \
        --disturb 3m-8m --baseline-src ../fixed-plan/src --out experiments/budget-replan
    python benchmarks/budget_replan.py --out experiments/budget-replan --report     # table + figure only

Each run is ``cifar-resnet train --preset fast-cpu --budget B --seed S`` on all the machine's cores, one after
another. ``quiet``: nothing else runs. ``disturbed``: ``--busy`` CPU-bound processes (default 2, a user opening
a browser and a build) run from the first to the second time of ``--disturb`` after the run starts. Each
condition runs this checkout (``replan``) and, with ``--baseline-src``, the package of another checkout's
``src`` folder (``baseline``: e.g. a release whose plan was fixed from its start-up measurement), same seed,
same command. Per run: its log, config.json (the trace) and metrics.csv in OUT, and a summary .json: the
budget seconds used (from the run's last line about its budget), the share of the budget, the final
validation top-1 (the last epoch, with the run's test-time augmentation), the epochs and the CPU.
This checkout's runs also leave NAME-budget.png (``cifar-resnet plot``'s figure of the run's clock: step time
and learning rate against the budget's minutes, re-plans marked). ``--report`` prints the markdown table
(one row per condition and checkout: time used / budget and top-1 as mean +- standard deviation over the
seeds, with the values).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from budget import _trained_seconds  # benchmarks/budget.py: the budget line's reader

from cifar_resnet.checkpoint import RunDir
from cifar_resnet.console import parse_duration
from cifar_resnet.device import cpu_model
from cifar_resnet.plots import plot_run

BUSY = "while True: pass"


def run_one(args, name: str, seed: int, disturbed: bool, src: Path) -> dict:
    """One training run (disturbed from ``args.disturb`` when asked); its summary, written beside its files."""
    out_dir = Path(args.out)
    start, stop = (parse_duration(t) for t in args.disturb.split("-"))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cifar_resnet", "train", "--preset", "fast-cpu", "--data", args.data]
        cmd += ["--budget", args.budget, "--seed", str(seed), "--out", str(run), "--no-progress", *args.extra]
        env = {**os.environ, "PYTHONPATH": str(src)}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        busy: list[subprocess.Popen] = []
        while proc.poll() is None:
            now = time.monotonic() - t0
            if disturbed and not busy and start <= now < stop:
                busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
            if busy and now >= stop:
                for p in busy:
                    p.kill()
                    p.wait()
                busy = []
            time.sleep(0.5)
        for p in busy:
            p.kill()
            p.wait()
        log = proc.stdout.read()
        (out_dir / f"{name}.log").write_text(" ".join(cmd[1:]) + "\n" + log)
        if proc.returncode != 0:
            raise SystemExit(f"budget_replan.py: {name} failed (exit {proc.returncode}), log: {out_dir / name}.log")
        files = RunDir(run)
        shutil.copy(files.config_json, out_dir / f"{name}-config.json")
        shutil.copy(files.metrics_csv, out_dir / f"{name}-metrics.csv")
        if src == ROOT / "src":  # this checkout's runs: the figure of their clock (cifar-resnet plot's budget.png)
            shutil.copy(plot_run(run)["budget"], out_dir / f"{name}-budget.png")
        records = json.loads(files.history_json.read_text())
    budget = parse_duration(args.budget)
    used = _trained_seconds(log)
    summary = {
        "name": name,
        "seed": seed,
        "condition": "disturbed" if disturbed else "quiet",
        "checkout": f"replan ({args.tag})" if src == ROOT / "src" and args.tag else _checkout(src),
        "src": str(src),
        "budget_s": budget,
        "used_s": used,
        "used_share": used / budget,
        "val_top1": records[-1]["val_top1"],
        "epochs": records[-1]["epoch"],
        "disturb": args.disturb if disturbed else None,
        "busy": args.busy if disturbed else 0,
        "cpu": cpu_model(),
        "command": " ".join(cmd[1:]),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _checkout(src: Path) -> str:
    return "replan" if src == ROOT / "src" else "baseline"


def _spread(values: list[float], scale: float, digits: int) -> str:
    mean = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    each = ", ".join(f"{v * scale:.{digits}f}" for v in values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({each})"


def report(out_dir: Path) -> str:
    """The markdown table of every summary in ``out_dir``."""
    rows = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json")) if not p.name.endswith("-config.json")]
    lines = [
        "| condition | checkout | seeds | epochs | budget used, % | validation top-1, % |",
        "|---|---|---|---|---|---|",
    ]
    for condition in ("quiet", "disturbed"):
        for checkout in sorted({r["checkout"] for r in rows}):
            group = [r for r in rows if r["condition"] == condition and r["checkout"] == checkout]
            if not group:
                continue
            seeds = ", ".join(str(r["seed"]) for r in group)
            epochs = "-".join(sorted({str(r["epochs"]) for r in group}))
            used = _spread([r["used_share"] for r in group], 100, 1)
            top1 = _spread([r["val_top1"] for r in group], 100, 2)
            lines.append(f"| {condition} | {checkout} | {seeds} | {epochs} | {used} | {top1} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="the training data (CIFAR-100 .npz)")
    p.add_argument("--budget", default="15m")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--disturb", default="3m-8m", help="START-STOP after the run starts, e.g. 3m-8m")
    p.add_argument("--busy", type=int, default=2, help="CPU-bound processes that disturb the run")
    p.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder to compare")
    p.add_argument("--conditions", nargs="+", default=["quiet", "disturbed"], choices=["quiet", "disturbed"])
    p.add_argument(
        "--checkouts", nargs="+", default=["replan", "baseline"], choices=["replan", "baseline"], help="which to run"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tag", default="", help="a word in this checkout's runs' names and table rows (e.g. a commit)")
    p.add_argument("--report", action="store_true", help="only print the table and draw the figure")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train flags (last)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        if not args.data:
            raise SystemExit("budget_replan.py: --data is needed to run")
        sources = [("replan", ROOT / "src")] if "replan" in args.checkouts else []
        if args.baseline_src and "baseline" in args.checkouts:
            sources.append(("baseline", args.baseline_src.resolve()))
        for seed in args.seeds:
            for condition in args.conditions:
                for checkout, src in sources:
                    tag = f"-{args.tag}" if args.tag and checkout == "replan" else ""
                    name = f"{condition}-{checkout}{tag}-seed{seed}"
                    summary = run_one(args, name, seed, condition == "disturbed", src)
                    print(
                        f"{name}: {summary['used_s']:.0f} s of {summary['budget_s']:.0f} "
                        f"({100 * summary['used_share']:.1f}%), top-1 {100 * summary['val_top1']:.2f}%",
                        flush=True,
                    )
    print(report(args.out))


if __name__ == "__main__":
    main()
