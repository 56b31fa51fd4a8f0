"""How fast a folder of your own images is read: decoding and resizing on every core against one image at a
time with PIL, and a second run's start from the cache.

    python benchmarks/decode.py --data ../shared/data/cifar100-train.npz --out experiments/image-folders

Two folders are written to a temporary directory: ``--small`` 32x32 PNG files (real CIFAR-100 images when
``--data`` is given, else noise) and ``--large`` JPEG files about 500 px on their longer side (crops of the
two photographs scikit-learn bundles, at quality 90). For each: ``one-at-a-time`` opens every file with PIL
and makes it 32x32 in this process, as a loop over ``Image.open`` would (the same steps as the package:
:func:`cifar_resnet.images.load_image`); ``parallel`` is :func:`cifar_resnet.data.load_image_folder` with
the cache off, a process per core; ``cached`` loads the folder again with the cache on, after a first load
filled it (the median of ``--repeats`` loads). Images/s are medians of ``--repeats`` runs; the JSON summary
(and the CPU) goes to OUT/decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import cifar_resnet  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cifar_resnet.data import folders
from cifar_resnet.device import cpu_model
from cifar_resnet.images import load_image


def write_small(root: Path, n: int, data: str | None) -> None:
    if data:
        with np.load(data) as z:
            images, labels = z["x_train"][:n], z["y_train"][:n].ravel()
    else:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"c{label % 10}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"c{label % 10}" / f"{i:05d}.png")


def write_large(root: Path, n: int) -> None:
    from sklearn.datasets import load_sample_images  # a dev dependency: the two bundled photographs

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = Image.fromarray(photo[top : top + 3 * h // 4, left : left + 3 * w // 4])
        crop.thumbnail((500, 500))
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        crop.save(root / f"c{i % 2}" / f"{i:05d}.jpg", quality=90)


def one_at_a_time(root: Path) -> float:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    start = time.perf_counter()
    for f in files:
        load_image(f)
    return len(files) / (time.perf_counter() - start)


def parallel(root: Path) -> float:
    os.environ[folders.CACHE_ENV] = "off"
    start = time.perf_counter()
    data = folders.load_image_folder(root, progress=False, log=None)
    return len(data.train) / (time.perf_counter() - start)


def cached(root: Path, cache: Path) -> float:
    os.environ[folders.CACHE_ENV] = str(cache)
    start = time.perf_counter()
    folders.load_image_folder(root, progress=False, log=None)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="CIFAR-100 .npz whose first images become the small PNGs (default: noise)")
    p.add_argument("--small", type=int, default=5000, help="32x32 PNG files")
    p.add_argument("--large", type=int, default=500, help="JPEG files of about 500 px")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    results = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "pillow": Image.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for name, count, write in (
            ("png-32px", args.small, lambda r: write_small(r, args.small, args.data)),
            ("jpeg-500px", args.large, lambda r: write_large(r, args.large)),
        ):
            root = Path(tmp) / name
            write(root)
            serial = statistics.median(one_at_a_time(root) for _ in range(args.repeats))
            pool = statistics.median(parallel(root) for _ in range(args.repeats))
            cache = Path(tmp) / f"cache-{name}"
            cached(root, cache)  # the first load fills the cache
            again = statistics.median(cached(root, cache) for _ in range(args.repeats))
            results[name] = {
                "files": count,
                "one_at_a_time_images_per_s": round(serial),
                "parallel_images_per_s": round(pool),
                "speedup": round(pool / serial, 2),
                "cached_load_s": round(again, 3),
            }
            print(
                f"{name}: {count} files, one at a time {serial:,.0f} img/s, on every core {pool:,.0f} img/s "
                f"({pool / serial:.2f}x), again from the cache {again:.2f} s",
                flush=True,
            )
    print(f"CPU: {results['cpu']}, {results['cores']} cores, Pillow {results['pillow']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
