"""The training step with glibc's default malloc and with freed memory kept (``memory.keep_freed_memory``).

    python benchmarks/malloc_step.py                                   # fast-cpu-fp32's step, fp32, 32 px
    python benchmarks/malloc_step.py --preset fast-cpu --precision bf16 --size 24

By default glibc serves every allocation over 32 MB from fresh pages (``mmap``) and returns them to the
kernel when freed, so every training step faults its activations' pages in again. ``fit`` turns that off
(``keep_freed_memory``); ``CIFAR_RESNET_MALLOC=default`` keeps glibc's default. Each setting runs in a
process of its own (malloc's settings are per process), the two alternating for ``--rounds`` rounds, each
timing ``engine.train_step`` (the step ``fit`` runs) on a random batch after two untimed steps; the table
gives the median step time over the rounds' steps, the minor page faults per step (``getrusage``), the
process's peak resident memory and the ratio to the default, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

MODES = ("default", "kept")


def child(preset: str, precision: str, size: int, steps: int, batch: int) -> dict:
    """Time ``steps`` training steps in this process; the malloc setting is the environment's."""
    import torch

    from cifar_resnet.config import get_preset
    from cifar_resnet.engine import StepOptions, train_step
    from cifar_resnet.memory import keep_freed_memory
    from cifar_resnet.models import create_model
    from cifar_resnet.optim import build_optimizer, build_scheduler

    kept = keep_freed_memory()
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset(preset), precision=precision, device="cpu")
    dev = torch.device("cpu")
    model = create_model(config.model, 100, **config.model_kwargs).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model, dev)
    scheduler = build_scheduler(config, optimizer, 1000)
    options = StepOptions.from_config(config, dev)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))
    for _ in range(2):  # untimed: kernels chosen, buffers allocated
        train_step(model, x, y, optimizer, scheduler, options)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, x, y, optimizer, scheduler, options)[0].item()
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"kept": kept, "times": times, "faults_per_step": faults / steps, "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast-cpu-fp32")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--size", type=int, default=32, help="image size in px (default 32)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--rounds", type=int, default=2, help="processes per setting, alternating")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.preset, args.precision, args.size, args.steps, args.batch)))
        return 0
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            env = {**os.environ, "CIFAR_RESNET_MALLOC": "default" if mode == "default" else "kept"}
            cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset, "--precision", args.precision]
            cmd += ["--size", str(args.size), "--steps", str(args.steps), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise SystemExit(f"malloc_step.py: the {mode} run failed: {last}")
            results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    from cifar_resnet.device import cpu_model

    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    print(
        f"### `engine.train_step` of {args.preset} ({args.precision}, batch {args.batch}, {args.size} px) on "
        f"{cpu_model()}, {threads} threads: median of {args.rounds} x {args.steps} steps, the settings alternating\n"
    )
    print("| malloc | in effect | step s | page faults / step | peak MB | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for mode in MODES:
        runs = results[mode]
        step = statistics.median(t for r in runs for t in r["times"])
        base = base or step
        faults = statistics.mean(r["faults_per_step"] for r in runs)
        peak = max(r["peak_mb"] for r in runs)
        label = "glibc's default" if mode == "default" else "freed memory kept"
        in_effect = "yes" if all(r["kept"] for r in runs) else "no" if mode == "kept" else "-"
        print(f"| {label} | {in_effect} | {step:.3f} | {faults:,.0f} | {peak:,.0f} | {step / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
