"""Training-step time of recipe variants, side by side in one process: which choices cost time.

    python benchmarks/step_variants.py                    # fast_small, batch 512, 2-core CPU: about a minute
    python benchmarks/step_variants.py --model fast --batch-size 256 --repeats 15 --json out.json

Each variant's step is ``cifar_resnet.engine.train_one_epoch`` over a list of one batch, that is one
``cifar_resnet.engine.train_step`` (the step function ``fit`` calls: forward, label-smoothed loss,
backward, optimizer step, scheduler step) plus the loss/accuracy read-back at the end of the "epoch", with
the optimizer and scheduler built by ``build_optimizer``/``build_scheduler`` from the ``fast-cpu`` preset's
``TrainConfig``. Unlike that preset's runs it is fp32 (no CPU bf16 autocast) on full-size 32x32 images
(no progressive resizing), on one fixed random batch, and without what ``fit`` adds around each step.
The variants run interleaved, round after round, so that a slow spell of a shared machine falls on all of
them alike; the table gives each one's median step time and its ratio to the first variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cifar_resnet.config import PRESETS
from cifar_resnet.engine import StepOptions, train_one_epoch
from cifar_resnet.models import create_model
from cifar_resnet.optim import build_optimizer, build_scheduler

# name -> (optimizer, extra model kwargs)
VARIANTS = {
    "nesterov, gelu": ("nesterov", {}),
    "muon, gelu": ("muon", {}),
    "muon, relu": ("muon", {"act": "relu"}),
}


def run(model_name: str, batch_size: int, repeats: int, warmup: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    base = dataclasses.replace(PRESETS["fast-cpu"], model=model_name, batch_size=batch_size, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch_size,), generator=gen)
    setups = {}
    for name, (optimizer, kwargs) in VARIANTS.items():
        config = dataclasses.replace(base, optimizer=optimizer)
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=100, **kwargs).to(memory_format=torch.channels_last)
        opt = build_optimizer(config, model, device)
        sched = build_scheduler(config, opt, steps_per_epoch=warmup + repeats)
        setups[name] = (model, opt, sched, config)
    times = {name: [] for name in setups}
    for r in range(warmup + repeats):
        for name, (model, opt, sched, config) in setups.items():
            t = time.perf_counter()
            train_one_epoch(model, [(x, y)], opt, sched, StepOptions(label_smoothing=config.label_smoothing))
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    first = statistics.median(next(iter(times.values())))
    rows = [
        {
            "variant": name,
            "median_ms": 1e3 * statistics.median(ts),
            "ratio": statistics.median(ts) / first,
            "times_s": ts,
        }
        for name, ts in times.items()
    ]
    return {
        "model": model_name,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
        "rows": rows,
    }


def render(res: dict) -> str:
    title = (
        f"Training step of `{res['model']}`, batch {res['batch_size']}, {res['threads']} CPU threads, "
        f"torch {res['torch']}: median of {res['repeats']} steps after {res['warmup']} warm-up, "
        "variants interleaved"
    )
    lines = [title, "", "| variant | ms/step | vs first |", "| --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['median_ms']:.0f} | {r['ratio']:.3f} |" for r in res["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fast_small", help="a FastNet model (default fast_small)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write every timing here")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch-size and --repeats must be >= 1, --warmup >= 0")
    res = run(args.model, args.batch_size, args.repeats, args.warmup, args.threads)
    print(render(res))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
