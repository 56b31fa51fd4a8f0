"""Download of the official archives: where they are, their md5, the local cache, a progress bar."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..console import one_line
from .errors import DataError

__all__ = ["DATASETS", "DEFAULT_ROOT", "download"]

DATASETS: dict[str, dict[str, str]] = {
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
    },
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
    },
}

DEFAULT_ROOT = Path("~/.cache/cifar-resnet")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    dataset: str, root: str | Path, *, url: str | None = None, md5: str | None = None, progress: bool = True
) -> Path:
    """Download the official archive of ``dataset`` into ``root``, verify its md5, and return its path.

    An archive already there with the right md5 is returned as is. The download goes to a temporary
    file in ``root`` that only replaces the target once complete and verified, so an interrupted or
    corrupt download never leaves a file that looks valid.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (expected one of: {', '.join(DATASETS)})")
    spec = DATASETS[dataset]
    url = url or spec["url"]
    expected = (md5 or spec["md5"]).lower()
    root = Path(root).expanduser()
    dest = root / spec["filename"]
    if dest.is_file() and _md5(dest) == expected:
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create folder ({one_line(e)})") from e

    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{spec['filename']}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received, total = 0, None
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=spec["filename"],
                    disable=not progress,
                ) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors; bad URLs ValueError
            raise DataError(f"{url}: download failed ({type(e).__name__}: {one_line(e)})") from e
        if total is not None and received != total:
            raise DataError(f"{url}: download incomplete ({received} of {total} bytes)")
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(f"{url}: md5 mismatch (expected {expected}, got {actual}); the download was discarded")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful os.replace
    return dest
