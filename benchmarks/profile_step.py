"""Where the time of the CPU training step goes: ``torch.profiler``'s per-op table, and the step's median
time under each precision and memory format (and, with ``--compile``, under ``torch.compile``).

    python benchmarks/profile_step.py                          # the fast-cpu preset's step, about 2 minutes
    python benchmarks/profile_step.py --model fast_small --batch-size 512 --size 32 --rows 15
    python benchmarks/profile_step.py --compile                # also inductor (compile time not counted)

The step is the real one (``engine.train_step``: forward, label-smoothed loss, backward, the preset's
optimizer and scheduler) on random images of the training size, with freed memory kept as ``fit`` keeps it
(``memory.keep_freed_memory``). Variants run interleaved, round after round, so that a slow spell of a
shared machine falls on all alike; the table gives each one's median. Its heading names the CPU and its
bf16 instructions (AMX, AVX512_BF16, or none: there bf16 is emulated, and its rows show the cost).
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

from torch.profiler import ProfilerActivity, profile

from cifar_resnet.config import PRESETS
from cifar_resnet.device import cpu_has_amx, cpu_has_bf16, cpu_model
from cifar_resnet.engine import StepOptions, train_step
from cifar_resnet.memory import keep_freed_memory
from cifar_resnet.models import create_model
from cifar_resnet.optim import build_optimizer, build_scheduler


def build(config, model_name: str, kwargs: dict, channels_last: bool, compiled: bool, steps: int):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=100, **kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(config, model, torch.device("cpu"))
    sched = build_scheduler(config, opt, steps_per_epoch=steps)
    return (torch.compile(model) if compiled else model), opt, sched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="fast-cpu")
    p.add_argument("--model", default=None, help="model (default: the preset's)")
    p.add_argument("--model-kwargs", default="{}", help="model arguments as JSON (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--size", type=int, default=32, help="training image side in px (default 32)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rows", type=int, default=12, help="rows of the per-op table")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) variants")
    args = p.parse_args(argv)
    kept = keep_freed_memory()  # as fit does: the step times are training's
    base = PRESETS[args.preset]
    model_name = args.model or base.model
    kwargs = json.loads(args.model_kwargs) or dict(base.model_kwargs)
    batch = args.batch_size or base.batch_size
    config = dataclasses.replace(base, model=model_name, batch_size=batch, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 100, (batch,), generator=gen)
    variants = {  # name -> (channels_last, bf16, compiled)
        "fp32, channels_last": (True, False, False),
        "fp32, contiguous": (False, False, False),
        "bf16, channels_last": (True, True, False),
        "bf16, contiguous": (False, True, False),
    }
    if args.compile:
        variants["fp32, channels_last, compiled"] = (True, False, True)
        variants["bf16, channels_last, compiled"] = (True, True, True)
    steps = args.warmup + args.repeats
    setups = {name: build(config, model_name, kwargs, cl, comp, steps + 10) for name, (cl, _, comp) in variants.items()}
    inputs = {True: x.contiguous(memory_format=torch.channels_last), False: x.contiguous()}
    options = {
        bf16: StepOptions(
            label_smoothing=config.label_smoothing,
            grad_clip=config.grad_clip,
            grad_clip_mode=config.grad_clip_mode,
            precision="bf16" if bf16 else "fp32",
        )
        for bf16 in (False, True)
    }

    def step(name):
        cl, bf16, _ = variants[name]
        model, opt, sched = setups[name]
        train_step(model, inputs[cl], y, opt, sched, options[bf16])

    times = {name: [] for name in variants}
    for r in range(steps):
        for name in variants:
            t0 = time.perf_counter()
            step(name)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{steps}", file=sys.stderr, flush=True)
    first = statistics.median(times[next(iter(variants))])
    bf16_units = "AMX" if cpu_has_amx() else "AVX512_BF16" if cpu_has_bf16() else "none (bf16 is emulated)"
    print(
        f"## Training step of `{model_name}` {kwargs or ''}, batch {batch}, {args.size}x{args.size} px, "
        f"{cpu_model()}, {torch.get_num_threads()} threads, bf16 instructions: {bf16_units}, freed memory "
        f"kept: {'yes' if kept else 'no'}; median of {args.repeats} after {args.warmup} warm-up\n"
    )
    print("| variant | step ms | images/s | ratio |\n| --- | --- | --- | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1000:.0f} | {batch / med:.0f} | {med / first:.2f}x |")
    for name in ("fp32, channels_last", "bf16, channels_last"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step(name)
        print(f"\n### Per-op self CPU time, {name} (3 steps)\n")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print("```\n" + table + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
