"""The main job's ablation: each recipe change as a full training run, on the same seed and split.

    python benchmarks/ablation.py --data ../shared/data/cifar100-train.npz bf16 wide   # run two variants
    python benchmarks/ablation.py --data ... shipped --seeds 0 1 2                     # the preset, 3 seeds
    python benchmarks/ablation.py --table                                              # markdown table

Every variant is ``cifar-resnet train`` with *every* configuration field given as a flag (the recipe
before the change, ``BASE``, plus the variant's changes), so a variant means the same run whatever the
presets say today; ``shipped`` is ``--preset fast-cpu`` as it stands. Variants run one after another,
never side by side (two runs on two cores would time each other). For each run the log, ``config.json``
and ``metrics.csv`` land in ``docs/runs/ablation-NAME-seedS.*`` with a summary ``.json``: final validation
top-1 (the last epoch's, with the run's full test-time augmentation), training seconds (the sum of the
epochs' training loops, evaluation excluded), wall seconds (the whole command, start-up and data loading
included), the command's peak resident memory (Linux) and the CPU it ran on. ``--table`` reads those summaries back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from cifar_resnet.checkpoint import EpochRecord, RunDir
from cifar_resnet.runtime import cpu_model

# The fast-cpu recipe before issue 11 (fast_small, fp32, full TTA after every epoch), written out whole.
BASE = {
    "model": "fast_small",
    "model_kwargs": {},
    "whiten": True,
    "optimizer": "muon",
    "lr": 2.0,
    "momentum": 0.9,
    "muon_lr": 0.1,
    "muon_momentum": 0.6,
    "weight_decay": 5e-4,
    "schedule": "linear",
    "warmup": 0.2,
    "grad_clip": 0.0,
    "label_smoothing": 0.2,
    "crop_pad": 2,
    "flip": "alternating",
    "tta": True,
    "tta_translate": 1,
    "epochs": 17,
    "batch_size": 512,
    "bn_bias_lr": 1.0,
    "progressive": "",
    "tta_every_epoch": True,
    "precision": "fp32",
}

# name -> (what changes, relative to BASE). Cumulative where the name says "+".
SMALL = {"precision": "bf16", "tta_every_epoch": False, "progressive": "16:0.25,24:0.25"}
FAST_NET = {**SMALL, "model": "fast"}  # the shipped recipe (which has precision auto: bf16 where there is AMX)
VARIANTS: dict[str, dict] = {
    "base": {},
    "bf16": {"precision": "bf16"},
    "bf16+plain-eval": {"precision": "bf16", "tta_every_epoch": False},
    "bf16+plain-eval+bn-bias-64": {"precision": "bf16", "tta_every_epoch": False, "bn_bias_lr": 64.0},
    "bf16+plain-eval+progressive": SMALL,
    "bf16+plain-eval+progressive+silu": {**SMALL, "model_kwargs": {"act": "silu"}},
    "bf16+plain-eval+progressive+label-smoothing-0.1": {**SMALL, "label_smoothing": 0.1},
    "bf16+plain-eval+progressive+fast-net": FAST_NET,
    "fast-net+drop-easy": {**FAST_NET, "drop_easy": 0.3, "drop_easy_from": 0.5},
    "fast-net+14-epochs": {**FAST_NET, "epochs": 14},
    "fast-net+20-epochs": {**FAST_NET, "epochs": 20},
}


def flags(config: dict) -> list[str]:
    out = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def run_variant(name: str, seed: int, data: str, runs_dir: Path, python: str, val_split: int = 5000) -> dict:
    if name == "shipped":
        args = ["--preset", "fast-cpu", "--seed", str(seed)]
        changes: dict = {"preset": "fast-cpu"}
    else:
        changes = VARIANTS[name]
        args = ["--preset", "fast-cpu", *flags({**BASE, **changes, "seed": seed})]
    stem = f"ablation-{name}-seed{seed}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            python,
            "-m",
            "cifar_resnet",
            "train",
            *args,
            "--data",
            data,
            "--val-split",
            str(val_split),
            "--out",
            str(out),
            "--no-progress",
        ]
        print(f"[{name}, seed {seed}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        log_path = Path(tmp) / "log"
        t0 = time.perf_counter()
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            # wait4: this child's own resource usage (its peak resident set), not all children's
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        returncode = os.waitstatus_to_exitcode(status)
        log = log_path.read_text()
        if returncode != 0:
            raise SystemExit(f"{name} (seed {seed}) failed with exit code {returncode}:\n{log[-2000:]}")
        runs_dir.mkdir(parents=True, exist_ok=True)
        (runs_dir / f"{stem}.log").write_text(log)
        shutil.copy(RunDir(out).config_json, runs_dir / f"{stem}-config.json")
        shutil.copy(RunDir(out).metrics_csv, runs_dir / f"{stem}-metrics.csv")
        history = [EpochRecord.from_dict(r) for r in RunDir(out).read_history()[0]]
    last = history[-1]
    summary = {
        "name": name,
        "seed": seed,
        "changes": changes,
        "val_top1": last.val_top1,
        "best_val_top1": max(r.val_top1 for r in history),
        "epochs": len(history),
        "train_seconds": last.train_seconds,
        "wall_seconds": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": "cifar-resnet train " + shlex.join(cmd[4:]),
    }
    (runs_dir / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"[{name}, seed {seed}] val top-1 {last.val_top1:.4f}, {last.train_seconds:.0f} s training, {wall:.0f} s wall",
        file=sys.stderr,
        flush=True,
    )
    return summary


def table(runs_dir: Path) -> str:
    rows: dict[str, list[dict]] = {}
    for path in sorted(runs_dir.glob("ablation-*-seed*.json")):
        if not re.fullmatch(r"ablation-.+-seed\d+\.json", path.name):  # a run's config.json, not a summary
            continue
        s = json.loads(path.read_text())
        rows.setdefault(s["name"], []).append(s)
    order = [*VARIANTS, "shipped"]
    lines = [
        "| variant | change | seeds | val top-1 % | training s | wall s | peak MB | CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sorted(rows, key=lambda n: order.index(n) if n in order else len(order)):
        runs = sorted(rows[name], key=lambda s: s["seed"])
        acc = [s["val_top1"] * 100 for s in runs]
        top1 = (
            f"{acc[0]:.2f}"
            if len(acc) == 1
            else f"{statistics.mean(acc):.2f} (" + ", ".join(f"{a:.2f}" for a in acc) + ")"
        )
        train = statistics.mean(s["train_seconds"] for s in runs)
        wall = statistics.mean(s["wall_seconds"] for s in runs)
        change = ", ".join(f"{k}={v}" for k, v in runs[0]["changes"].items()) or "the recipe before issue 11"
        rss = [s["peak_rss_mb"] for s in runs if "peak_rss_mb" in s]
        peak = f"{max(rss):,.0f}" if rss else ""
        lines.append(
            f"| {name} | {change} | {', '.join(str(s['seed']) for s in runs)} | {top1} | {train:.0f} | "
            f"{wall:.0f} | {peak} | {runs[0]['cpu']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("variants", nargs="*", help=f"variants to run: {', '.join(VARIANTS)}, shipped")
    p.add_argument("--data", default="cifar100", help="training data (default: cifar100 from the download cache)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "docs" / "runs", help="where logs go (docs/runs)")
    p.add_argument("--table", action="store_true", help="print the table of the runs in --runs-dir")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS and v != "shipped"]
    if unknown:
        p.error(f"unknown variants: {', '.join(unknown)}")
    for name in args.variants:
        for seed in args.seeds:
            run_variant(name, seed, args.data, args.runs_dir, sys.executable)
    if args.table or not args.variants:
        print(table(args.runs_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
