#!/usr/bin/env python
"""Throughput benchmarks for cifar_resnet: data loader, training step, inference, and on a GPU
time-to-accuracy. One command prints a markdown table and writes the same figures as JSON::

    python benchmarks/bench.py                 # CPU, < 10 min on 2 cores
    python benchmarks/bench.py --quick         # tiny sizes, < 1 min (the smoke test runs this)
    python benchmarks/bench.py --gpu --data /tmp/cifar100-train.npz --json bench-gpu.json

Every timing is the median of repeated timed runs after warm-up runs; each table says how many. Ratios
are measured side by side in the same run (never against a number from another day or machine):
our loader against a per-image PIL/``DataLoader`` pipeline like the notebook's, and each model's achieved
FLOP/s against this machine's measured matrix-multiply rate. Each model is measured in a fresh
subprocess so that its peak memory is its own. See benchmarks/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # run from a checkout without installing: use the src/ beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cifar_resnet import memory
from cifar_resnet.augment import Augment
from cifar_resnet.config import PRESETS, TrainConfig
from cifar_resnet.data import CifarData, Split, channel_stats, load_data, split_validation, subsample
from cifar_resnet.device import autocast_for, cpu_model, resolve_precision
from cifar_resnet.engine import StepOptions, grad_scaler, train_one_epoch, train_step
from cifar_resnet.loader import CifarLoader
from cifar_resnet.models import create_model
from cifar_resnet.optim import build_optimizer, build_scheduler
from cifar_resnet.train import fit

CHILD_MARK = "BENCH_CHILD_RESULT "
NOTEBOOK_EPOCH_IMAGES = 50_000  # the notebook trains on all 50,000 training images each epoch
CUTOUT = 12  # cutout size of the second loader configuration (airbench96's)


# ------------------------------------------------------------------------------------------------------
# Sizes: one set per (device, quick); every count that goes into a median is stated in the output
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    models: tuple[str, ...]
    batch: int  # loader batch (and the training batch where train_batch is None and the recipe agrees)
    loader_images: int  # images per timed loader epoch
    loader_warmup: int  # untimed epochs first
    loader_repeats: int  # timed epochs
    train_warmup: int  # untimed training steps
    train_repeats: int  # timed training steps
    infer_batch: int  # batch of the throughput measurement
    infer_warmup: int
    infer_repeats: int
    latency_warmup: int  # untimed batch-1 forward passes
    latency_runs: int  # timed batch-1 forward passes
    matmul_n: int  # square matrices of this side
    matmul_repeats: int
    preset_images: int = 0  # GPU: images per timed epoch of the seed preset's training step
    preset_repeats: int = 0
    train_batch: int | None = None  # training-step batch; None: each model's recipe's (MODEL_RECIPES)


CPU_MODELS = ("seed_resnet", "resnet18", "fast_small", "fast")
SIZES = {
    ("cpu", False): Sizes(
        models=CPU_MODELS,
        batch=512,
        loader_images=10_000,
        loader_warmup=1,
        loader_repeats=3,
        train_warmup=1,
        train_repeats=3,
        infer_batch=256,
        infer_warmup=1,
        infer_repeats=3,
        latency_warmup=5,
        latency_runs=50,
        matmul_n=2048,
        matmul_repeats=5,
    ),
    ("cpu", True): Sizes(
        models=("fast_small", "seed_resnet"),
        batch=16,
        loader_images=512,
        loader_warmup=1,
        loader_repeats=2,
        train_warmup=1,
        train_repeats=2,
        infer_batch=16,
        infer_warmup=1,
        infer_repeats=2,
        latency_warmup=2,
        latency_runs=5,
        matmul_n=256,
        matmul_repeats=3,
        train_batch=16,
    ),
    ("cuda", False): Sizes(
        models=CPU_MODELS,
        batch=512,
        loader_images=20_000,
        loader_warmup=1,
        loader_repeats=3,
        train_warmup=5,
        train_repeats=20,
        infer_batch=1024,
        infer_warmup=3,
        infer_repeats=10,
        latency_warmup=10,
        latency_runs=50,
        matmul_n=8192,
        matmul_repeats=10,
        preset_images=10_000,
        preset_repeats=2,
    ),
    ("cuda", True): Sizes(
        models=("fast", "seed_resnet"),
        batch=128,
        loader_images=2048,
        loader_warmup=1,
        loader_repeats=2,
        train_warmup=2,
        train_repeats=3,
        infer_batch=128,
        infer_warmup=1,
        infer_repeats=3,
        latency_warmup=2,
        latency_runs=5,
        matmul_n=2048,
        matmul_repeats=3,
        preset_images=1024,
        preset_repeats=1,
        train_batch=128,
    ),
}
# the model whose training step the loader is compared with ("what fraction of a step is the loader")
STEP_REFERENCE = {"cpu": "fast_small", "cuda": "fast"}
# the preset whose training step each model's row times (its optimizer, loss, clipping and batch size);
# a model not named here is timed with the seed preset's recipe
MODEL_RECIPES = {"seed_resnet": "seed", "resnet18": "resnet18", "fast_small": "fast-cpu", "fast": "fast-cpu"}
# every model's training step is timed in each of these; inference in the device's default precision
TRAIN_PRECISIONS = ("fp32", "bf16")
INFERENCE_PRECISION = {"cpu": "fp32", "cuda": "bf16"}
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------------------


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed_runs(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (device synchronised
    around each timed call, so asynchronous GPU work is inside the interval)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def timing(times: list[float], warmup: int) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "warmup": warmup,
        "times_s": times,
    }


# ------------------------------------------------------------------------------------------------------
# Memory: peak resident set (CPU) or peak allocated (CUDA)
# ------------------------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


class PeakMemory:
    """Peak memory of what runs between ``reset()`` and ``read()``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache or the context).
    CPU: the process's peak resident set ``VmHWM``, which writing "5" to ``/proc/self/clear_refs`` resets
    to the current resident set (Linux). Where that reset is refused the peak counts from the process's
    start, and where /proc is missing ``ru_maxrss`` is used (also since the start); ``method`` says which.
    Each model runs in its own process, so "since the start" still belongs to that model alone.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self.base_mb = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        rss = _proc_status_kb("VmRSS")
        if rss is None:
            self.method = "ru_maxrss since process start"
            self.base_mb = 0.0
            return
        self.base_mb = rss / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs reset"
        except OSError:
            self.method = "VmHWM since process start (clear_refs refused)"

    def read(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method.startswith("ru_maxrss"):
            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux
        else:
            peak = (_proc_status_kb("VmHWM") or 0) / 1024
        return {"peak_mb": peak, "before_mb": self.base_mb, "delta_mb": peak - self.base_mb, "method": self.method}


# ------------------------------------------------------------------------------------------------------
# Benchmark 0: the machine's matrix-multiply rate (the yardstick for achieved FLOP/s)
# ------------------------------------------------------------------------------------------------------


def bench_matmul(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> dict:
    """GFLOP/s of ``torch.mm`` of two random n x n matrices (2 n^3 FLOPs), median of ``repeats``."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    t = timing(timed_runs(lambda: torch.mm(a, b), 2, repeats, synchronizer(device)), 2)
    return {
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "gflops": 2 * n**3 / t["median_s"] / 1e9,
        **t,
    }


def measure_matmul(device: torch.device, sizes: Sizes) -> dict:
    """The ``matmul`` rows, float32 and bfloat16: the rates each precision's achieved FLOP/s is compared
    with (:func:`matmul_rate`)."""
    say(f"matmul on {device}")
    return {
        "matmul": [
            bench_matmul(device, dtype, sizes.matmul_n, sizes.matmul_repeats) for dtype in MATMUL_DTYPES.values()
        ]
    }


def matmul_rate(matmul: list[dict], precision: str) -> dict | None:
    """The ``matmul`` row of ``precision`` (``fp32``/``bf16``), None if it was not measured."""
    want = str(MATMUL_DTYPES[precision]).replace("torch.", "")
    return next((m for m in matmul if m["dtype"] == want), None)


def render_matmul(matmul: list[dict], dev: str) -> list[str]:
    return [
        f"## Matrix multiply on {dev} (the yardstick)",
        "",
        md_table(
            ["dtype", "n", "GFLOP/s", "timed runs"],
            [[m["dtype"], str(m["n"]), fmt(m["gflops"]), f"{m['repeats']} (+{m['warmup']} warm-up)"] for m in matmul],
        ),
        "",
    ]


# ------------------------------------------------------------------------------------------------------
# Benchmark 1: data loader — ours against a per-image pipeline like the notebook's
# ------------------------------------------------------------------------------------------------------


class PerImageDataset(torch.utils.data.Dataset):
    """The notebook's data pipeline, one image at a time, as torchvision does it.

    The notebook uses ``RandomCrop(32, padding=4, padding_mode="reflect")``, ``RandomHorizontalFlip()``,
    ``ToTensor()``, ``Normalize(mean, std)`` on a PIL image per sample; this is the same sequence of steps
    written with PIL and numpy (torchvision is not a dependency): PIL image from the uint8 array, reflect
    padding through numpy (what torchvision's ``pad`` does for PIL images), a crop at offsets drawn with
    ``torch.randint``, a flip drawn with ``torch.rand``, the uint8 -> float CHW conversion and the
    per-channel normalisation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, pad: int = 4):
        self.images = images
        self.labels = labels
        self.pad = pad
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        p = self.pad
        img = Image.fromarray(np.pad(np.asarray(img), ((p, p), (p, p), (0, 0)), mode="reflect"))
        top = int(torch.randint(0, 2 * p + 1, (1,)))
        left = int(torch.randint(0, 2 * p + 1, (1,)))
        img = img.crop((left, top, left + 32, top + 32))
        if torch.rand(1) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
        return (x - self.mean) / self.std, int(self.labels[i])


class TorchvisionDataset(torch.utils.data.Dataset):
    """The notebook's pipeline with torchvision's own transforms (used only where torchvision is installed,
    as a check that :class:`PerImageDataset` costs what the real thing costs)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, pad: int = 4):
        import torchvision.transforms as T

        self.images = images
        self.labels = labels
        self.tf = T.Compose(
            [
                T.RandomCrop(32, padding=pad, padding_mode="reflect"),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def _have_torchvision() -> bool:
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken alike: the row is optional
        return False
    return True


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bench_loader(
    images: np.ndarray, labels: np.ndarray, device: torch.device, sizes: Sizes, workers: list[int]
) -> dict:
    """Images/s of one training epoch over ``sizes.loader_images`` images, for each pipeline (ours first,
    then the baselines), and each of ours' speed-up over each baseline."""
    n = min(sizes.loader_images, len(labels))
    split = Split(images[:n], labels[:n])
    mean, std = channel_stats(split.images)
    rows = time_our_loaders(split, mean, std, device, sizes) + time_baseline_loaders(
        split, mean, std, device, sizes, workers
    )
    baselines = [r for r in rows if r["kind"] == "baseline"]
    for r in rows:
        if r["kind"] == "ours":
            r["speedup"] = {b["name"]: r["images_per_s"] / b["images_per_s"] for b in baselines}
    return {"device": device.type, "batch": sizes.batch, "images": n, "rows": rows}


def loader_row(name: str, kind: str, num_images: int, sizes: Sizes, times: list[float], **extra) -> dict:
    t = timing(times, sizes.loader_warmup)
    return {
        "name": name,
        "kind": kind,
        "images": num_images,
        "batch": sizes.batch,
        "images_per_s": num_images / t["median_s"],
        "ms_per_batch": 1000 * t["median_s"] * sizes.batch / num_images,
        **extra,
        **t,
    }


def time_our_loaders(split: Split, mean, std, device: torch.device, sizes: Sizes) -> list[dict]:
    """:class:`CifarLoader` (images already on ``device``; the one upload is not timed), with the
    notebook's augmentation and with airbench96's (alternating flip, cutout)."""
    ours = {
        "ours: crop 4 reflect + random flip": Augment(),
        f"ours: crop 4 reflect + alternating flip + cutout {CUTOUT}": Augment(flip="alternating", cutout=CUTOUT),
    }
    rows = []
    for name, aug in ours.items():
        loader = CifarLoader(split, sizes.batch, mean=mean, std=std, device=device, train=True, aug=aug, seed=0)

        def epoch(loader=loader):
            for _x, _y in loader:
                pass

        times = timed_runs(epoch, sizes.loader_warmup, sizes.loader_repeats, synchronizer(device))
        rows.append(loader_row(name, "ours", len(loader) * sizes.batch, sizes, times, device=device.type))
    return rows


def time_baseline_loaders(
    split: Split, mean, std, device: torch.device, sizes: Sizes, workers: list[int]
) -> list[dict]:
    """The per-image pipeline in a ``DataLoader`` for each number of ``workers`` (and torchvision's own
    transforms where installed): shuffle, ``drop_last``, persistent workers so worker start-up is paid in
    the warm-up epoch only, which favours the baseline; on CUDA ``pin_memory`` and a non-blocking copy of
    each batch to the device, as the notebook's ``DeviceDataLoader`` does."""
    datasets = [("per-image PIL", PerImageDataset, w) for w in workers]
    if _have_torchvision():
        datasets.append(("torchvision transforms", TorchvisionDataset, max(workers)))
    rows = []
    for label, cls, w in datasets:
        ds = cls(split.images, split.labels, mean, std)
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=sizes.batch,
            shuffle=True,
            num_workers=w,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=w > 0,
        )

        def epoch(dl=dl):
            for x, y in dl:
                x.to(device, non_blocking=True)
                y.to(device, non_blocking=True)

        times = timed_runs(epoch, sizes.loader_warmup, sizes.loader_repeats, synchronizer(device))
        rows.append(
            loader_row(f"{label} + DataLoader, workers={w}", "baseline", len(dl) * sizes.batch, sizes, times, workers=w)
        )
        del epoch, dl  # the last references: the persistent workers stop before the next measurement
        gc.collect()
    return rows


def render_loader(ld: dict | None, dev: str) -> list[str]:
    if not ld:
        return []
    r0 = ld["rows"][0]
    base_names = [r["name"] for r in ld["rows"] if r["kind"] == "baseline"]
    short = {n: n.split("workers=")[-1] for n in base_names}
    headers = ["pipeline", "images/s", "ms/batch"] + [
        f"x vs {'torchvision' if 'torchvision' in n else 'per-image'} w={short[n]}" for n in base_names
    ]
    rows = []
    for r in ld["rows"]:
        sp = r.get("speedup", {})
        rows.append(
            [r["name"], fmt(r["images_per_s"]), fmt(r["ms_per_batch"])]
            + [fmt(sp[n]) + "x" if n in sp else "" for n in base_names]
        )
    return [
        (
            f"## Data loader on {dev}: images/s over one training epoch of {ld['images']:,} images, "
            f"batch {ld['batch']}, median of {r0['repeats']} epochs after {r0['warmup']} warm-up"
        ),
        "",
        md_table(headers, rows),
        "",
    ]


def loader_vs_step(loader: dict, train_rows: list[dict], device: torch.device) -> dict:
    """Time of one loader batch as a fraction of one training step of the reference model at the same
    batch, in the precision ``fit`` would choose here (``auto``)."""
    ref = STEP_REFERENCE[device.type]
    precision = resolve_precision("auto", device)
    step = next(
        (r for r in train_rows if r.get("model") == ref and r.get("precision") == precision and "error" not in r),
        None,
    )
    out = {"model": ref, "precision": precision, "batch": loader["batch"], "rows": []}
    if step is None or step["batch"] != loader["batch"]:
        out["skipped"] = f"no {precision} training-step measurement of {ref} at batch {loader['batch']} in this run"
        return out
    step_ms = 1000 * step["train"]["median_s"]
    out["step_ms"] = step_ms
    for r in loader["rows"]:
        out["rows"].append(
            {"name": r["name"], "ms_per_batch": r["ms_per_batch"], "fraction_of_step": r["ms_per_batch"] / step_ms}
        )
    return out


def render_loader_vs_step(lvs: dict | None) -> list[str]:
    if not lvs:
        return []
    if "skipped" in lvs:
        return [f"Loader vs training step: skipped ({lvs['skipped']}).", ""]
    return [
        (
            f"### Loader cost per batch vs one training step of `{lvs['model']}` "
            f"({fmt(lvs['step_ms'])} ms in {lvs.get('precision', 'fp32')} at batch {lvs['batch']}, same device)"
        ),
        "",
        md_table(
            ["pipeline", "ms/batch", "% of a training step"],
            [[r["name"], fmt(r["ms_per_batch"]), fmt(100 * r["fraction_of_step"])] for r in lvs["rows"]],
        ),
        "",
    ]


# ------------------------------------------------------------------------------------------------------
# Benchmarks 2 and 3: training step and inference of one model (run in a fresh process per model)
# ------------------------------------------------------------------------------------------------------


def recipe_config(
    name: str, device: torch.device, precision: str, batch: int | None, compile_model: bool
) -> TrainConfig:
    """The training configuration whose step model ``name``'s row times: the preset of
    :data:`MODEL_RECIPES` with this model, device, precision and compile setting, and ``batch`` in place
    of the preset's batch size unless None."""
    config = dataclasses.replace(
        PRESETS[MODEL_RECIPES.get(name, "seed")],
        model=name,
        device=device.type,
        precision=precision,
        compile=compile_model,
        budget="none",
    )
    return dataclasses.replace(config, batch_size=batch) if batch else config


def count_flops(model: torch.nn.Module, device: torch.device, precision: str, n: int = 2) -> dict:
    """FLOPs per image of one forward pass and of one training step (forward + loss + backward), counted
    by ``torch.utils.flop_counter.FlopCounterMode`` on a batch of ``n``: convolutions and matrix products
    only, a multiply-add counted as 2 FLOPs, the backward pass as the counter counts it (gradients of
    inputs and of weights). Normalisation, activations and the optimizer are not counted."""
    x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (n,), device=device)
    was_training = model.training
    model.train()
    with FlopCounterMode(display=False) as fwd, torch.no_grad(), autocast_for(device, precision):
        model(x)
    with FlopCounterMode(display=False) as step:
        with autocast_for(device, precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward": fwd.get_total_flops() / n, "train_step": step.get_total_flops() / n}


def release_freed_memory(device: torch.device) -> None:
    """Hand memory freed by Python and torch back (glibc's malloc_trim on Linux; the CUDA cache), so the
    next peak measurement starts from what is really in use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    memory.release_freed_memory()  # glibc only: elsewhere the resident set may keep freed memory


def bench_inference(run: Callable, device: torch.device, sizes: Sizes, precision: str) -> dict:
    """Batch-1 latency and large-batch throughput of ``run`` (a model in eval mode) under no_grad."""
    sync = synchronizer(device)
    g = torch.Generator(device=device).manual_seed(1)
    x1 = torch.randn(1, 3, 32, 32, device=device, generator=g).contiguous(memory_format=torch.channels_last)
    xb = torch.randn(sizes.infer_batch, 3, 32, 32, device=device, generator=g).contiguous(
        memory_format=torch.channels_last
    )

    def forward(inp):
        with torch.no_grad(), autocast_for(device, precision):
            return run(inp)

    mem = PeakMemory(device)
    mem.reset()
    latency = timing(
        timed_runs(lambda: forward(x1), sizes.latency_warmup, sizes.latency_runs, sync), sizes.latency_warmup
    )
    throughput = timing(
        timed_runs(lambda: forward(xb), sizes.infer_warmup, sizes.infer_repeats, sync), sizes.infer_warmup
    )
    return {
        "latency": {**latency, "batch": 1, "median_ms": 1000 * latency["median_s"]},
        "inference": {
            **throughput,
            "batch": sizes.infer_batch,
            "images_per_s": sizes.infer_batch / throughput["median_s"],
        },
        "inference_memory": mem.read(),
    }


def bench_training(
    model: torch.nn.Module, run: Callable, config: TrainConfig, device: torch.device, sizes: Sizes, num_classes: int
) -> dict:
    """Median time of a training step on one fixed batch of ``config.batch_size`` random images:
    ``cifar_resnet.engine.train_step``, the step function ``fit`` calls (forward and loss under autocast in
    ``config.precision``, label smoothing, backward, clipping, ``config``'s optimizer and scheduler step).
    What ``fit`` does between steps (loading the batch, progress, the divergence check) is not timed: the
    loader section times the loading."""
    sync = synchronizer(device)
    g = torch.Generator(device=device).manual_seed(0)
    batch = config.batch_size
    x = torch.randn(batch, 3, 32, 32, device=device, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device, generator=g)
    opt = build_optimizer(config, model, device)
    # a schedule longer than the steps timed, so that every timed step runs at a positive learning rate
    sched = build_scheduler(config, opt, steps_per_epoch=1, total_steps=10 * (sizes.train_warmup + sizes.train_repeats))
    options = StepOptions.from_config(config, device)
    scaler = grad_scaler(options, device)

    def step():
        train_step(run, x, y, opt, sched, options, scaler)

    model.train()
    mem = PeakMemory(device)
    mem.reset()
    train = timing(timed_runs(step, sizes.train_warmup, sizes.train_repeats, sync), sizes.train_warmup)
    return {"train": train, "train_images_per_s": batch / train["median_s"], "train_memory": mem.read()}


def bench_model(
    name: str,
    device: torch.device,
    sizes: Sizes,
    *,
    precision: str,
    inference: bool,
    compile_model: bool,
    num_classes: int = 100,
) -> dict:
    """FLOPs and the training-step figures of model ``name`` in ``precision`` under its recipe
    (:func:`recipe_config`), and with ``inference`` first its inference figures (while the process holds
    nothing else); see benchmarks/README.md."""
    config = recipe_config(name, device, precision, sizes.train_batch, compile_model)
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, **config.model_kwargs).to(device)
    model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, device, precision)
    run = torch.compile(model) if compile_model else model
    release_freed_memory(device)

    infer = {}
    if inference:
        model.eval()
        infer = bench_inference(run, device, sizes, precision)
        infer["inference"]["gflops"] = flops["forward"] * infer["inference"]["images_per_s"] / 1e9
        release_freed_memory(device)
    train = bench_training(model, run, config, device, sizes, num_classes)
    return {
        "model": name,
        "recipe": MODEL_RECIPES.get(name, "seed"),
        "optimizer": config.optimizer,
        "params": params,
        "batch": config.batch_size,
        "device": device.type,
        "precision": precision,
        "compiled": compile_model,
        "channels_last": True,
        "flops_per_image": flops,
        **train,
        "train_gflops": flops["train_step"] * train["train_images_per_s"] / 1e9,
        **infer,
    }


def run_model_in_child(
    name: str,
    device: torch.device,
    sizes: Sizes,
    *,
    precision: str,
    inference: bool,
    compile_model: bool,
    timeout: float = 900,
) -> dict:
    """``bench_model`` in a fresh Python process (this script with --child), so that peak memory and
    allocator state belong to this model and precision alone."""
    spec = {
        "model": name,
        "device": str(device),
        "sizes": dataclasses.asdict(sizes),
        "precision": precision,
        "inference": inference,
        "compile": compile_model,
    }
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(spec),
        "--threads",
        str(torch.get_num_threads()),
    ]
    failed = {"model": name, "precision": precision}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {**failed, "error": f"exit code {proc.returncode}: {tail}"}


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    result = bench_model(
        spec["model"],
        torch.device(spec["device"]),
        sizes,
        precision=spec["precision"],
        inference=spec["inference"],
        compile_model=spec["compile"],
    )
    print(CHILD_MARK + json.dumps(result), flush=True)
    return 0


def measure_models(device: torch.device, sizes: Sizes, matmul: list[dict], *, compile_model: bool) -> list[dict]:
    """``bench_model`` of each of ``sizes.models`` in each of :data:`TRAIN_PRECISIONS`, each in a fresh
    process (inference in the device's :data:`INFERENCE_PRECISION` only), with each figure's % of the
    matmul rate of its precision."""
    rows = []
    for name in sizes.models:
        for precision in TRAIN_PRECISIONS:
            say(f"model {name} in {precision} on {device} (fresh process)")
            inference = precision == INFERENCE_PRECISION[device.type]
            row = run_model_in_child(
                name, device, sizes, precision=precision, inference=inference, compile_model=compile_model
            )
            mm = matmul_rate(matmul, precision)
            if "error" not in row and mm:
                row["train_pct_of_matmul"] = 100 * row["train_gflops"] / mm["gflops"]
                if "inference" in row:
                    row["inference"]["pct_of_matmul"] = 100 * row["inference"]["gflops"] / mm["gflops"]
            rows.append(row)
    return rows


def render_training(train: list[dict], dev: str) -> list[str]:
    if not train:
        return []
    first = next((r for r in train if "error" not in r), {})
    t0 = first.get("train", {})
    batches = sorted({r["batch"] for r in train if "error" not in r})
    out = [
        f"## Training step on {dev}: `engine.train_step` (the step `fit` runs) with each model's recipe, "
        "channels_last"
        + (", torch.compile" if first.get("compiled") else "")
        + f"; median of {t0.get('repeats', '?')} steps after {t0.get('warmup', '?')} warm-up",
        "",
        (
            "Recipe: the preset's optimizer, label smoothing, clipping and batch size "
            f"(batch {', '.join(map(str, batches))}), on one fixed batch of random images. "
            "% of matmul: achieved GFLOP/s over the matmul rate above of the row's precision "
            f"(float32 for fp32, bfloat16 for bf16). Peak memory: {mem_label(first)}."
        ),
        "",
    ]
    return out + [
        md_table(
            [
                "model",
                "recipe",
                "precision",
                "params",
                "GFLOP/img step",
                "batch",
                "ms/step",
                "images/s",
                "GFLOP/s",
                "% of matmul",
                "peak MB",
                "+MB in steps",
            ],
            [training_row(r) for r in train],
        ),
        "",
    ]


def training_row(r: dict) -> list[str]:
    if "error" in r:
        return [f"`{r['model']}`", "", r.get("precision", ""), f"failed: {r['error']}"] + [""] * 8
    return [
        f"`{r['model']}`",
        f"{r['recipe']} ({r['optimizer']})",
        r["precision"],
        f"{r['params'] / 1e6:.2f} M",
        fmt(r["flops_per_image"]["train_step"] / 1e9),
        str(r["batch"]),
        fmt(1000 * r["train"]["median_s"]),
        fmt(r["train_images_per_s"]),
        fmt(r["train_gflops"]),
        fmt(r.get("train_pct_of_matmul")),
        fmt(r["train_memory"]["peak_mb"]),
        fmt(r["train_memory"]["delta_mb"]),
    ]


def mem_label(r: dict) -> str:
    m = r.get("train_memory", {}).get("method", "")
    if m.startswith("torch.cuda"):
        return (
            "torch.cuda.max_memory_allocated during the timed steps (peak MB) and its rise over the "
            "model + optimizer + batch allocated before them (+MB)"
        )
    return (
        f"the process's peak resident set during the steps ({m}; each model in a fresh process, so "
        "it includes the ~Python+torch baseline), and its rise over the resident set before them (+MB)"
    )


def render_inference(train: list[dict], dev: str) -> list[str]:
    ok = [r for r in train if "error" not in r and "inference" in r]
    if not ok:
        return []
    lat, inf = ok[0]["latency"], ok[0]["inference"]
    out = [
        (
            f"## Inference on {dev}: eval mode, no_grad, {ok[0]['precision']}, channels_last; latency = median of "
            f"{lat['repeats']} batch-1 passes after {lat['warmup']} warm-up; throughput = "
            f"median of {inf['repeats']} batches of {inf['batch']} after {inf['warmup']} warm-up"
        ),
        "",
    ]
    rows = [
        [
            f"`{r['model']}`",
            fmt(r["latency"]["median_ms"]),
            fmt(r["inference"]["images_per_s"]),
            fmt(r["inference"]["gflops"]),
            fmt(r["inference"].get("pct_of_matmul")),
            fmt(r["inference_memory"]["peak_mb"]),
        ]
        for r in ok
    ]
    return out + [
        md_table(
            ["model", "latency ms (batch 1)", f"images/s (batch {inf['batch']})", "GFLOP/s", "% of matmul", "peak MB"],
            rows,
        ),
        "",
    ]


# ------------------------------------------------------------------------------------------------------
# Benchmark 4 (GPU): the seed preset's training step, and the time-to-accuracy of a preset
# ------------------------------------------------------------------------------------------------------


def bench_preset_step(
    config: TrainConfig, split: Split, device: torch.device, n_images: int, repeats: int, num_classes: int = 100
) -> dict:
    """Images/s of the preset's training steps over epochs of ``n_images``, and the notebook's run projected
    from it (``config.epochs`` epochs of 50,000 images, training steps only, no evaluation).

    Timed: ``cifar_resnet.engine.train_one_epoch`` over our loader, that is ``engine.train_step`` (the step
    function ``fit`` calls: forward and loss under autocast, backward, clipping, the preset's optimizer and
    scheduler step) on every batch, plus the per-step lr list and the on-device loss/accuracy sums, which
    ``fit`` keeps too. Not timed, as this is not ``fit``: what ``fit`` does around each ``train_step``:
    progress bookkeeping, the divergence check every ``check_every`` steps (a read-back of the recent
    losses), agreement across ranks on stopping and saving, and where the config asks for them progressive
    resizing and drop-easy's per-example losses."""
    sync = synchronizer(device)
    sub = Split(split.images[:n_images], split.labels[:n_images])
    mean, std = channel_stats(sub.images)
    loader = CifarLoader(
        sub, config.batch_size, mean=mean, std=std, device=device, train=True, aug=config.augment, seed=config.seed
    )
    if len(loader) == 0:
        raise ValueError(f"{n_images} images is fewer than one batch of {config.batch_size}")
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=num_classes, **config.model_kwargs).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(config, model, device)
    sched = build_scheduler(config, opt, len(loader))
    run = torch.compile(model) if config.compile else model

    options = StepOptions.from_config(config, device)  # the step fit runs, in the config's precision

    def epoch():
        train_one_epoch(run, loader, opt, sched, options)

    t = timing(timed_runs(epoch, 1, repeats, sync), 1)
    images = len(loader) * config.batch_size
    ips = images / t["median_s"]
    return {
        "model": config.model,
        "batch": config.batch_size,
        "optimizer": config.optimizer,
        "amp": options.precision != "fp32",
        "compiled": config.compile,
        "device": device.type,
        "images_per_epoch_timed": images,
        "images_per_s": ips,
        **t,
        "projected_epochs": config.epochs,
        "projected_epoch_images": NOTEBOOK_EPOCH_IMAGES,
        "projected_minutes": config.epochs * NOTEBOOK_EPOCH_IMAGES / ips / 60,
    }


def run_seed_preset(images: np.ndarray, labels: np.ndarray, device: torch.device, sizes: Sizes) -> dict:
    """``bench_preset_step`` of the ``seed`` preset (the notebook's recipe); an error is reported, not raised."""
    say("seed preset training step")
    try:
        return bench_preset_step(
            dataclasses.replace(PRESETS["seed"], device=device.type),
            Split(images, labels),
            device,
            sizes.preset_images,
            sizes.preset_repeats,
        )
    except Exception as e:  # noqa: BLE001 - report it in the table, keep the other figures
        return {"error": f"{type(e).__name__}: {e}"}


def render_seed_preset(ps: dict | None, dev: str) -> list[str]:
    if not ps:
        return []
    out = [f"## The notebook's recipe (`seed` preset) on {dev}", ""]
    if "skipped" in ps or "error" in ps:
        return out + [f"Skipped: {ps.get('skipped') or ps.get('error')}", ""]
    return out + [
        (
            f"Training steps (`engine.train_step` on each batch of our loader, through "
            f"`engine.train_one_epoch`: {ps['optimizer']}, one-cycle, clipping"
            f"{', bf16 autocast' if ps['amp'] else ''}; without `fit`'s per-step bookkeeping), "
            f"`{ps['model']}`, batch {ps['batch']}: "
            f"**{fmt(ps['images_per_s'])} images/s** (median of {ps['repeats']} epochs of "
            f"{ps['images_per_epoch_timed']:,} images after 1 warm-up). The notebook's "
            f"{ps['projected_epochs']} epochs of {ps['projected_epoch_images']:,} images would take "
            f"**{fmt(ps['projected_minutes'])} minutes** of training steps (evaluation not included)."
        ),
        "",
    ]


def bench_time_to_accuracy(config: TrainConfig, data: CifarData, warmup_images: int = 5000) -> dict:
    """Train ``config`` with ``fit`` on ``data`` (which holds a validation split) and report the seconds
    of training it took and the validation accuracy it reached. A one-epoch run on a subset first warms
    up the device (CUDA context, cuDNN autotuning, compile caches) and is not counted."""
    if data.val is None:
        raise ValueError("time-to-accuracy needs a validation split held out from the training images")
    warm_n = min(len(data.train), max(warmup_images, 2 * config.batch_size))
    warm = subsample(data, warm_n, seed=config.seed)
    fit(dataclasses.replace(config, epochs=1), warm, log=None, progress=False)
    hist = fit(config, data, log=None, progress=False)
    recs = hist.records
    step_images = (len(data.train) // config.batch_size) * config.batch_size  # drop_last
    per_epoch, elapsed = [], 0.0
    for r in recs:
        # training time of the epoch, evaluation excluded (--drop-easy epochs train on fewer images)
        train_s = r.get("train_images", step_images) / r["images_per_s"]
        elapsed += train_s
        per_epoch.append(
            {
                "epoch": r["epoch"],
                "train_seconds": train_s,
                "cumulative_train_seconds": elapsed,
                "val_top1": r["val_top1"],
                "val_top5": r["val_top5"],
                "eval_tta": r.get("eval_tta", ""),
            }
        )
    return {
        "model": config.model,
        "epochs": config.epochs,
        "batch": config.batch_size,
        "device": config.device,
        "compiled": config.compile,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "split": "validation (held out of train)",
        "val_top1_final": recs[-1]["val_top1"],
        "val_top5_final": recs[-1]["val_top5"],
        "val_top1_best": max(r["val_top1"] for r in recs),
        "train_seconds": elapsed,
        "seconds_with_eval": sum(r["seconds"] for r in recs),
        "fit_seconds": hist.seconds,
        "per_epoch": per_epoch,
    }


def run_time_to_accuracy(args, data: CifarData | None, device: torch.device) -> dict:
    """``bench_time_to_accuracy`` of ``--tta-preset`` on ``data`` with its validation split held out (one
    epoch with ``--quick``); a skip or an error is reported, not raised."""
    name = args.tta_preset
    if args.no_tta:
        return {"preset": name, "skipped": "--no-tta"}
    if name not in PRESETS:
        return {
            "preset": name,
            "skipped": f"preset {name!r} is not in cifar_resnet.config.PRESETS (have: {', '.join(sorted(PRESETS))})",
        }
    if data is None:
        return {"preset": name, "skipped": "needs real images: pass --data PATH"}
    config = dataclasses.replace(PRESETS[name], data=str(args.data), device=device.type)
    if args.quick:
        config = dataclasses.replace(config, epochs=1)
    say(f"time to accuracy: preset {name}, {config.epochs} epochs")
    try:
        prepared = split_validation(data, config.val_split, seed=config.seed) if data.val is None else data
        if config.train_subset:
            prepared = subsample(prepared, config.train_subset, seed=config.seed)
        return {"preset": name, **bench_time_to_accuracy(config, prepared)}
    except Exception as e:  # noqa: BLE001 - report it in the table, keep the other figures
        return {"preset": name, "error": f"{type(e).__name__}: {e}"}


def render_time_to_accuracy(tta: dict | None, dev: str) -> list[str]:
    if not tta:
        return []
    out = [f"## Time to accuracy on {dev}", ""]
    if "skipped" in tta or "error" in tta:
        return out + [f"Skipped: {tta.get('skipped') or tta.get('error')}", ""]
    out += [
        (
            f"Preset `{tta['preset']}` (`{tta['model']}`, {tta['epochs']} epochs, batch {tta['batch']}), "
            f"trained on {tta['train_images']:,} images, validated on {tta['val_images']:,} held out of "
            f"the training split: **{100 * tta['val_top1_final']:.2f}% validation top-1** "
            f"(top-5 {100 * tta['val_top5_final']:.2f}%) after **{fmt(tta['train_seconds'])} s of "
            f"training** ({fmt(tta['seconds_with_eval'])} s with per-epoch evaluation, "
            f"{fmt(tta['fit_seconds'])} s for the whole fit call; a 1-epoch warm-up run before it is "
            f"not counted)."
        ),
        "",
    ]
    ep = [e["train_seconds"] for e in tta["per_epoch"]]
    if len(ep) > 1:
        out += [
            f"Epoch 1 trained in {fmt(ep[0])} s, later epochs in {fmt(statistics.median(ep[1:]))} s "
            "(median)"
            + (
                "; with torch.compile the timed run compiles again, from warm caches, in epoch 1."
                if tta.get("compiled")
                else "."
            ),
            "",
        ]
    return out


# ------------------------------------------------------------------------------------------------------
# Data, machine description
# ------------------------------------------------------------------------------------------------------


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (speed does not depend on content) with labels 0..99."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 100


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version()
        )
    return info


def benchmark_images(args, sizes: Sizes) -> tuple[CifarData | None, np.ndarray, np.ndarray, str]:
    """The dataset of ``--data`` (None without it), the training images and labels the benchmarks run on
    (random ones without ``--data``), and a description of them for the header."""
    if not args.data:
        images, labels = synthetic_images(max(sizes.loader_images, sizes.preset_images))
        return None, images, labels, "random uint8 images"
    data = load_data(args.data)
    return data, data.train.images, data.train.labels, f"{args.data} (train split, {len(data.train.labels):,} images)"


def run_meta(args, argv: list[str] | None, device: torch.device, sizes: Sizes, data_desc: str) -> dict:
    """The header of the results: machine, versions, date, commit, data, sizes, command."""
    return {
        **machine_info(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "compile": args.compile,
        "commit": git_commit(),
        "data": data_desc,
        "sizes": dataclasses.asdict(sizes),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "flop_convention": "FlopCounterMode: conv + matmul, multiply-add = 2 FLOPs, training step = forward + backward",
    }


# ------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    """Three significant figures, thousands separated; '-' for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(res: dict) -> str:
    """The markdown report of ``res`` (what ``main`` measured): a header, then one table or paragraph per
    section, each from its own renderer; a section missing from ``res`` is left out."""
    meta = res["meta"]
    dev = meta["gpu"] if meta["device"] == "cuda" else f"CPU {meta['cpu']} ({meta['cpu_cores']} cores)"
    out = [
        *render_header(meta, dev),
        *render_matmul(res["matmul"], dev),
        *render_loader(res.get("loader"), dev),
        *render_loader_vs_step(res.get("loader_vs_step")),
        *render_training(res.get("train") or [], dev),
        *render_inference(res.get("train") or [], dev),
        *render_seed_preset(res.get("seed_preset"), dev),
        *render_time_to_accuracy(res.get("time_to_accuracy"), dev),
        f"Total benchmark wall time: {fmt(res['wall_seconds'])} s.",
    ]
    return "\n".join(out) + "\n"


def render_header(meta: dict, dev: str) -> list[str]:
    return [
        f"# cifar_resnet benchmarks on {dev}",
        "",
        f"torch {meta['torch']}, {meta['torch_threads']} CPU threads, python {meta['python']}, "
        f"commit {meta.get('commit') or '?'}, {meta['date']}, data: {meta['data']}"
        + (", --quick (tiny sizes: not for comparison)" if meta["quick"] else "")
        + (
            f", load average at start {', '.join(f'{v:.2f}' for v in meta['loadavg_start'])}"
            if meta.get("loadavg_start")
            else ""
        ),
        "",
        (
            "Every time is the median of the timed runs stated in each table, after untimed warm-up runs; "
            "ratios are from this same run. FLOPs: torch.utils.flop_counter.FlopCounterMode "
            "(convolutions and matrix products; a multiply-add counts as 2 FLOPs; a training step = forward "
            "+ backward as the counter counts it)."
        ),
        "",
    ]


# ------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 1 min on a CPU); numbers not for comparison")
    p.add_argument(
        "--gpu", action="store_true", help="benchmark on CUDA (training steps in fp32 and bf16, inference in bf16)"
    )
    p.add_argument("--compile", action="store_true", help="with --gpu: torch.compile the models")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.add_argument(
        "--data",
        help="CIFAR .npz/archive/folder; needed for time-to-accuracy "
        "(default: random images, which are as fast to load and train on)",
    )
    p.add_argument("--models", help="comma-separated model names (default depends on --quick/--gpu)")
    p.add_argument("--tta-preset", default="fast", help="preset for the time-to-accuracy run (--gpu; default fast)")
    p.add_argument("--no-tta", action="store_true", help="with --gpu: skip the time-to-accuracy run")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, one per core); on a "
        "machine busy with other work, fewer threads than cores avoid "
        "threads waiting for each other",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return p


_T0 = time.perf_counter()


def say(message: str) -> None:
    """Progress on stderr, so that stdout holds only the table."""
    print(f"[bench {time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child_main(args.child)
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu needs CUDA, which this torch build or machine lacks", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    device = torch.device("cuda" if args.gpu else "cpu")
    sizes = SIZES[(device.type, args.quick)]
    if args.models:
        sizes = dataclasses.replace(sizes, models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    data, images, labels, data_desc = benchmark_images(args, sizes)
    res: dict = {"meta": run_meta(args, argv, device, sizes, data_desc)}
    res.update(run_benchmarks(args, data, images, labels, device, sizes))
    res["wall_seconds"] = time.perf_counter() - t_start
    res["meta"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_results(render(res), res, args)
    return 1 if any("error" in r for r in res["train"]) else 0


def run_benchmarks(
    args, data: CifarData | None, images: np.ndarray, labels: np.ndarray, device: torch.device, sizes: Sizes
) -> dict:
    """Every section in turn (the GPU-only ones on CUDA); returns the results' keys but ``meta``."""
    res = measure_matmul(device, sizes)
    say(f"loader on {device}")
    res["loader"] = bench_loader(images, labels, device, sizes, sorted({cpu_cores(), 0}, reverse=True))
    res["train"] = measure_models(device, sizes, res["matmul"], compile_model=args.compile)
    res["loader_vs_step"] = loader_vs_step(res["loader"], res["train"], device)
    if device.type == "cuda":
        res["seed_preset"] = run_seed_preset(images, labels, device, sizes)
        res["time_to_accuracy"] = run_time_to_accuracy(args, data, device)
    return res


def write_results(text: str, res: dict, args) -> None:
    """The table on stdout and in ``--markdown``; every figure in ``--json``."""
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        say(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
