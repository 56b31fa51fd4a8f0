#!/usr/bin/env python
"""Correctness checks on the accelerator, run by benchmarks/gpu.sh before the benchmarks (a fast number
from a broken step is worth nothing). Runs on the CPU too (``--device cpu``), which is how it is tested.

    python benchmarks/gpu_check.py [--device cuda] [--json OUT.json]

1. Every benchmarked model learns: a few training steps on one fixed batch, in bf16 autocast with
   channels_last on CUDA (fp32 on the CPU), lower its loss; logits and loss are finite, the logits come
   out in bf16 under autocast, parameters and gradients stay fp32.
2. The loader on the device: the un-augmented (evaluation) batches equal the CPU loader's (no randomness
   there, so they must agree); augmented batches have the right shape, dtype, device and channels_last
   layout, every image is one of the 81 x 2 reflect-padded crops / mirror images of its source, each epoch
   is a permutation of the images, and the same seed gives the same batches twice on the same device.
   (The CPU and CUDA generators draw different numbers, so augmented batches are not compared across
   devices.)
3. ``fit`` runs a tiny configuration end to end on the device and writes a checkpoint without
   ``_orig_mod.`` keys.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cifar_resnet import load_checkpoint
from cifar_resnet.augment import Augment
from cifar_resnet.config import TrainConfig
from cifar_resnet.data import CifarData, Split
from cifar_resnet.device import autocast_for
from cifar_resnet.loader import CifarLoader
from cifar_resnet.models import create_model
from cifar_resnet.train import fit

MODELS = ("seed_resnet", "resnet18", "fast_small", "fast")


def check_models_learn(device: torch.device, models=MODELS, steps: int = 10, batch: int = 32) -> dict:
    out = {}
    for name in models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=100).to(device).to(memory_format=torch.channels_last)
        fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, device=device, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (batch,), device=device, generator=g)
        losses = []
        logits_dtype = None
        for _ in range(steps):
            with autocast_for(device, "bf16" if device.type == "cuda" else "fp32"):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            logits_dtype = logits.dtype
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        expected = torch.bfloat16 if device.type == "cuda" else torch.float32
        grads_fp32 = all(
            p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters()
        )
        ok = (
            all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] and logits_dtype == expected and grads_fp32
        )
        out[name] = {
            "ok": ok,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "logits_dtype": str(logits_dtype),
            "params_and_grads_fp32": grads_fp32,
        }
        print(
            f"{'PASS' if ok else 'FAIL'} {name} learns on {device}: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
            f"in {steps} steps, logits {logits_dtype}",
            flush=True,
        )
    return out


def _is_crop_or_flip(img: torch.Tensor, source: torch.Tensor, pad: int) -> bool:
    """Is CHW ``img`` one of the reflect-padded crops of CHW ``source``, mirrored or not? (The loader's
    normalisation is per pixel, so it commutes with cropping and flipping.)"""
    padded = F.pad(source[None], (pad, pad, pad, pad), mode="reflect")[0]
    h, w = source.shape[1:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.allclose(img, crop, atol=1e-5) or torch.allclose(img, crop.flip(-1), atol=1e-5):
                return True
    return False


def check_loader(device: torch.device, n: int = 256, batch: int = 64) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    split = Split(images, np.arange(n))  # label = index, so every output image names its source
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    results = {}

    # evaluation batches: deterministic, so the device must agree with the CPU
    ref = list(CifarLoader(split, batch, mean=mean, std=std, device="cpu"))
    dev = list(CifarLoader(split, batch, mean=mean, std=std, device=device))
    same = len(ref) == len(dev) and all(
        torch.equal(yr, yd.cpu()) and torch.allclose(xr, xd.cpu(), atol=1e-5) for (xr, yr), (xd, yd) in zip(ref, dev)
    )
    results["eval_batches_match_cpu"] = same
    reference = torch.cat([x for x, _ in ref])  # normalised source images, in order

    # augmented batches on the device
    loader = CifarLoader(split, batch, mean=mean, std=std, device=device, train=True, aug=Augment(), seed=3)
    layout_ok, crops_ok, perm_ok = True, True, True
    for _epoch in range(2):
        seen = []
        for x, y in loader:
            layout_ok &= (
                x.shape == (batch, 3, 32, 32)
                and x.dtype == torch.float32
                and x.device.type == device.type
                and y.dtype == torch.int64
                and y.device.type == device.type
                and x.is_contiguous(memory_format=torch.channels_last)
            )
            xc, yc = x.float().cpu(), y.cpu()
            crops_ok &= all(_is_crop_or_flip(xc[i], reference[yc[i]], 4) for i in range(0, len(yc), 4))
            seen.append(yc)
        perm_ok &= torch.equal(torch.cat(seen).sort().values, torch.arange(n))
    results.update(
        train_layout=layout_ok,
        train_images_are_crops_or_flips=crops_ok,
        epoch_is_permutation=perm_ok,
        crop_test_rejects_another_image=not _is_crop_or_flip(reference[1], reference[0], 4),
    )

    # same seed, same device: same batches
    def epoch_batches(aug):
        ld = CifarLoader(split, batch, mean=mean, std=std, device=device, train=True, aug=aug, seed=5)
        return [(x.cpu(), y.cpu()) for x, y in ld]

    aug = Augment(flip="alternating", cutout=12)
    a, b = epoch_batches(aug), epoch_batches(aug)
    results["same_seed_same_batches"] = all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )
    ok = all(results.values())
    for k, v in results.items():
        print(f"{'PASS' if v else 'FAIL'} loader on {device}: {k}", flush=True)
    return {"ok": ok, **results}


def check_fit(device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    classes = 10
    palette = rng.integers(0, 200, size=(classes, 3))

    def make(k):
        labels = np.arange(k) % classes
        imgs = rng.integers(0, 56, size=(k, 32, 32, 3)) + palette[labels][:, None, None, :]
        return Split(imgs.astype(np.uint8), labels)

    data = CifarData("cifar10", make(400), None, make(100), tuple(f"c{i}" for i in range(classes)), None, "synthetic")
    config = TrainConfig(
        model="fast",
        model_kwargs={"widths": [16, 32, 32]},
        epochs=3,
        batch_size=50,
        eval_batch_size=100,
        optimizer="nesterov",
        lr=0.05,
        weight_decay=5e-4,
        grad_clip=0.0,
        schedule="linear",
        device=device.type,
        val_split=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        hist = fit(config, data, tmp, log=None, progress=False)
        keys = list(load_checkpoint(Path(tmp) / "last.pt").state_dict)
    top1 = hist.records[-1]["val_top1"]
    ok = (
        len(hist.records) == 3
        and math.isfinite(hist.records[-1]["val_loss"])
        and top1 > 0.2
        and not any(k.startswith("_orig_mod") for k in keys)
    )
    print(
        f"{'PASS' if ok else 'FAIL'} fit on {device}: 3 epochs of a tiny fast net, val top-1 {top1:.2f} (chance 0.10)",
        flush=True,
    )
    return {"ok": ok, "val_top1": top1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="correctness checks on the accelerator before benchmarking")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    checks = {
        "models_learn": lambda: check_models_learn(device, [m for m in args.models.split(",") if m]),
        "loader": lambda: check_loader(device),
        "fit": lambda: check_fit(device),
    }
    failed = []
    for name, fn in checks.items():
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - a crash is a failed check; run the others
            results[name] = {"ok": False, "error": traceback.format_exc()}
            print(f"FAIL {name}: {traceback.format_exc()}", flush=True)
        r = results[name]
        ok = r["ok"] if "ok" in r else all(v["ok"] for v in r.values())
        if not ok:
            failed.append(name)
    results["failed"] = failed
    results["seconds"] = time.perf_counter() - t0
    print(
        f"{'ALL PASSED' if not failed else 'FAILED: ' + ', '.join(failed)} on {results['device']} "
        f"in {results['seconds']:.1f} s",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
