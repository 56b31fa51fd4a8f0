"""Inference on this CPU, PyTorch against onnxruntime, side by side: the latency of one image and the
throughput of a batch of 256, through what `predict` and `serve` use (uint8 images in, calibrated
probabilities out: normalisation, network, temperature).

    python benchmarks/inference.py runs/demo/best.pt            # exports runs/demo/best.onnx first if needed
    python benchmarks/inference.py runs/demo/best.pt --onnx demo.onnx --threads 2

Latency: the median of --repeats calls on one image (after warm-up); throughput: 256 / the median time of
a batch of 256. Both engines run in this process with the same number of threads, interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifar_resnet.export import export_model
from cifar_resnet.inference import EvalOverrides, Predictor, load_predictor


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument(
        "--onnx", default=None, help="the exported model (default: CHECKPOINT with .onnx, exported if absent)"
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for both engines (default: torch's)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per figure (default 30)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    onnx_path = Path(args.onnx or Path(args.checkpoint).with_suffix(".onnx"))
    if not onnx_path.exists():
        export_model(args.checkpoint, onnx_path, log=print)
    # PyTorch in fp32, as the exported graph computes (whatever precision the run was trained in)
    engines = {
        "pytorch": Predictor.from_checkpoint(args.checkpoint, "cpu", precision="fp32"),
        "onnxruntime": load_predictor(onnx_path),
    }
    if args.threads:
        import onnxruntime  # the benchmark's own optional dependency

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        engines["onnxruntime"].session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    diff = float((engines["pytorch"].probabilities(batch) - engines["onnxruntime"].probabilities(batch)).abs().max())
    rows = []
    for name, engine in engines.items():
        with torch.inference_mode():
            latency = _median_seconds(lambda e=engine: e.probabilities(one), args.repeats)
            per_batch = _median_seconds(
                lambda e=engine: e.probabilities(batch, e.eval_options(EvalOverrides(False, 0, args.batch, "fp32"))),
                max(3, args.repeats // 6),
            )
        rows.append({"engine": name, "latency_ms": 1e3 * latency, "images_per_s": args.batch / per_batch})
    model = engines["pytorch"].info["model"]
    print(
        f"inference, {model}, {torch.get_num_threads()} threads, batch {args.batch}; largest probability "
        f"difference between the engines {diff:.1e}"
    )
    print(f"| engine | latency of 1 image (ms, median) | images/s at batch {args.batch} | vs PyTorch |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['engine']} | {r['latency_ms']:.2f} | {r['images_per_s']:.0f} | "
            f"{r['images_per_s'] / rows[0]['images_per_s']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "max_diff": diff}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
