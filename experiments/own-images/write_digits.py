"""Write scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) as PNG files in 10 class folders.

    python experiments/own-images/write_digits.py /tmp/digits

``DIR/0/0000.png`` ... ``DIR/9/1796.png``: the 0-16 grey levels scaled to 0-255, one folder per digit, the
layout ``cifar-resnet train --data DIR`` reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / str(label) / f"{i:04d}.png")
    print(f"{len(pixels)} images in {len(set(digits.target))} class folders under {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/own-images/write_digits.py DIR")
    main(Path(sys.argv[1]))
