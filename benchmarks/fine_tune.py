"""Fine-tuning shared weights against training from scratch, on images the weights never saw.

    python benchmarks/fine_tune.py --init MODEL_FOLDER --budget 2m --seeds 0 1 --out experiments/fine-tune-superclasses

``MODEL_FOLDER`` is a CIFAR-100 model folder (``cifar-resnet export --format hub``) whose run held out a
validation split. Its held-out images, which the weights never trained on, become a new task: their 20
CIFAR-100 superclasses as the classes (an .npz in a temporary folder). Each seed then trains
``cifar-resnet train --preset fast-cpu --budget B`` on that task twice, from scratch and with
``--init MODEL_FOLDER`` (the same network, a new 20-class classifier), holding out ``--val-split`` of the
images to measure on. Per run, its log, its config.json (NAME-config.json) and a summary .json go to OUT;
the markdown table (validation top-1 of each, mean +- standard deviation over the seeds) to stdout and
OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from cifar_resnet.checkpoint import RunDir, load_checkpoint
from cifar_resnet.device import cpu_model
from cifar_resnet.inference import EvalData, resolve_split


def superclass_task(folder: Path, out: Path) -> Path:
    """The folder's held-out validation images labelled with their superclasses, as an .npz of 20 named classes."""
    ckpt = load_checkpoint(folder)
    name, split, _ = resolve_split(ckpt, EvalData().load(ckpt))
    if name == "train" or split.coarse is None:
        raise SystemExit(f"fine_tune.py: {folder} has no held-out split with superclasses to build the task from")
    path = out / "superclasses-heldout.npz"
    np.savez(
        path,
        x_train=split.images,
        y_train=split.coarse.astype(np.uint8),
        fine_label_names=np.array(ckpt.coarse_classes),
    )
    return path


def train(args, data: Path, seed: int, init: Path | None) -> dict:
    name = f"{'fine-tuned' if init else 'scratch'}-seed{seed}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cifar_resnet", "train", "--preset", "fast-cpu", "--data", str(data)]
        cmd += ["--val-split", str(args.val_split), "--budget", args.budget, "--seed", str(seed)]
        cmd += ["--out", tmp, "--no-progress", *(["--init", str(init)] if init else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        (args.out / f"{name}.log").write_text(" ".join(cmd[1:]) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"fine_tune.py: {name} failed, log: {args.out / name}.log")
        records = json.loads(RunDir(tmp).history_json.read_text())
        (args.out / f"{name}-config.json").write_text(RunDir(tmp).config_json.read_text())
    summary = {
        "name": name,
        "seed": seed,
        "init": str(init) if init else None,
        "val_top1": records[-1]["val_top1"],
        "epochs": records[-1]["epoch"],
        "train_seconds": records[-1]["train_seconds"],
        "budget": args.budget,
        "cpu": cpu_model(),
        "command": " ".join(cmd[1:]).replace(tmp, "RUN").replace(str(data), "superclasses-heldout.npz"),
    }
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def table(rows: list[dict]) -> str:
    lines = ["| start | seeds | epochs | validation top-1, % |", "|---|---|---|---|"]
    for label, init in (("from scratch", False), ("fine-tuned from the folder", True)):
        group = [r for r in rows if bool(r["init"]) == init]
        if not group:
            continue
        top1 = [100 * r["val_top1"] for r in group]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        each = ", ".join(f"{v:.2f}" for v in top1)
        epochs = "-".join(sorted({str(r["epochs"]) for r in group}))
        seeds = ", ".join(str(r["seed"]) for r in group)
        lines.append(f"| {label} | {seeds} | {epochs} | {statistics.fmean(top1):.2f} ± {sd:.2f} ({each}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", type=Path, required=True, help="a CIFAR-100 model folder")
    p.add_argument("--budget", default="2m")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--val-split", type=int, default=1000, help="images of the task held out to measure on")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = superclass_task(args.init, Path(tmp))
        for seed in args.seeds:
            for init in (None, args.init):
                row = train(args, data, seed, init)
                rows.append(row)
                print(f"{row['name']}: top-1 {100 * row['val_top1']:.2f}% in {row['epochs']} epochs", file=sys.stderr)
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
