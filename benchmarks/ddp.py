"""Training throughput of 1 and N data-parallel processes, side by side, through the real command.

    python benchmarks/ddp.py --data ../shared/data/cifar100-train.npz            # CPU: 1 and 2 gloo processes
    python benchmarks/ddp.py --device cuda --procs 1,8 --model resnet18 --batch-size 512   # GPUs (NCCL)

Each configuration runs ``cifar-resnet train`` (under ``torchrun --standalone`` for N > 1) on the same
images with the same global batch, and reports the training images/s of its epochs after the first (the
first one warms up) from the run's own epoch records (``history.json``): the median, and its ratio to the
first row. On a CPU the cores are split between the processes (``--threads``: OMP threads per process;
default: the cores divided by the processes). Nothing is timed by the benchmark itself: the figures are
what the training loop measured, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cifar_resnet.checkpoint import EpochRecord, RunDir


def _synthetic_npz(path: Path, n: int, classes: int = 100) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y_train=np.arange(n) % classes)
    return path


def run_one(procs: int, threads: int, args, data: str, out: Path) -> dict:
    train = [
        "train",
        "--data",
        data,
        "--train-subset",
        str(args.images),
        "--val-split",
        str(args.val),
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--grad-clip",
        "0",
        "--device",
        args.device,
        "--no-progress",
        "--out",
        str(out),
    ] + (["--sync-bn"] if args.sync_bn else [])
    if args.model_kwargs:
        train += ["--model-kwargs", args.model_kwargs]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
        if procs > 1
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [*launcher, "-m", "cifar_resnet", *train], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{proc.stderr[-2000:]}")
    rows = [EpochRecord.from_dict(r) for r in RunDir(out).read_history()[0]]
    rates = [r.images_per_s for r in rows[1:]] or [rows[0].images_per_s]
    return {
        "processes": procs,
        "threads_per_process": threads,
        "images_per_s": statistics.median(rates),
        "epochs_measured": len(rates),
        "val_top1": rows[-1].val_top1,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="an .npz or data source (default: random images)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default 1,2)")
    p.add_argument("--threads", type=int, default=None, help="OMP threads per process (default: cores / processes)")
    p.add_argument("--model", default="fast_small")
    p.add_argument("--model-kwargs", default=None)
    p.add_argument("--batch-size", type=int, default=256, help="the global batch (default 256)")
    p.add_argument("--images", type=int, default=5120, help="training images (default 5120)")
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(_synthetic_npz(Path(tmp) / "random.npz", args.images + args.val))
        rows = []
        for procs in (int(x) for x in args.procs.split(",")):
            threads = args.threads or max(1, cores // procs)
            rows.append(run_one(procs, threads, args, data, Path(tmp) / f"run{procs}"))
    base = rows[0]["images_per_s"]
    print(
        f"training throughput, {args.model}, global batch {args.batch_size}, {args.device}, {cores} cores"
        f"{' (data: ' + args.data + ')' if args.data else ' (random images)'}"
    )
    print("| processes | threads each | images/s (median of epochs 2+) | ratio |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_s']:.0f} | "
            f"{r['images_per_s'] / base:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
