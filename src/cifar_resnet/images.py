"""Image files (any size, mode and format) -> the square RGB uint8 images the models were trained on (32x32,
CIFAR's size, unless a model was trained with another ``--image-size``).

:func:`prepare_image` makes a PIL image ``size`` x ``size`` as CIFAR's images were made: EXIF orientation applied,
transparency composited on white, the centred square cropped (``resize="squash"`` keeps the whole frame,
:data:`RESIZE_MODES`) and downscaled with PIL's box filter (area averaging). :func:`load_image` reads one
file (:class:`ImageFileError` when it cannot), :func:`load_images` many, collecting the files it cannot read.
Why each step is done so: docs/inspecting.md.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .console import one_line

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "RESIZE_MODES",
    "SIZE",
    "ImageFileError",
    "check_size",
    "load_image",
    "load_image_bytes",
    "load_images",
    "prepare_image",
]

SIZE = 32  # CIFAR's, and every model's unless trained with another --image-size
MIN_SIZE, MAX_SIZE = 8, 512
RESIZE_MODES = ("crop", "squash")


class ImageFileError(ValueError):
    """An image file that cannot be used (missing, a directory, not an image, truncated)."""


def check_size(size) -> int:
    """``size`` if it is a whole number of px the images can be made (MIN_SIZE to MAX_SIZE); ValueError
    naming --image-size otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"the image size (--image-size) must be {MIN_SIZE}-{MAX_SIZE} px, got {size!r}")
    return size


def prepare_image(img, resize: str = "crop", size: int = SIZE) -> np.ndarray:
    """A PIL image of any size and mode -> (size, size, 3) uint8 RGB: EXIF orientation, transparency on white,
    centre crop (or squash), box-filter downscale (docs/inspecting.md says why)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; use crop or squash")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / float grayscale: PIL's convert("RGB") would clip, so scale to 8 bits first
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError("the image is empty")
    box = None
    if resize == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    if (w, h) != (size, size) or box is not None:
        img = img.resize((size, size), Image.Resampling.BOX, box=box)
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path, resize: str = "crop", size: int = SIZE) -> np.ndarray:
    """Read one image file as (size, size, 3) uint8; :class:`ImageFileError` with a one-line reason if it
    cannot be (missing, a directory, not an image, truncated or corrupt)."""
    path = Path(path)
    if path.is_dir():
        raise ImageFileError(f"{path}: is a directory, not an image file")
    if not path.exists():
        raise ImageFileError(f"{path}: no such file")
    return _decode(path, path, resize, size)


def load_image_bytes(data: bytes, name: str | Path, resize: str = "crop", size: int = SIZE) -> np.ndarray:
    """:func:`load_image` of a file's bytes already read (``name`` says which file in an error)."""
    return _decode(io.BytesIO(data), name, resize, size)


def _decode(source, name: str | Path, resize: str, size: int) -> np.ndarray:
    try:
        with Image.open(source) as img:
            # a large JPEG is decoded at a reduced scale (DCT scaling, exact averaging): much faster
            img.draft(None, (4 * size, 4 * size))
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            return prepare_image(img, resize, size)
    except UnidentifiedImageError:
        raise ImageFileError(f"{name}: not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"{name}: refused, too many pixels ({one_line(e, 120)})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, bad headers, broken chunks
        raise ImageFileError(f"{name}: unreadable or truncated image ({one_line(e, 160)})") from None


def load_images(
    paths: Sequence[str | Path], resize: str = "crop", size: int = SIZE
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Read many files; a bad file does not stop the others.

    Returns ``(images, good_paths, errors)``: the (N, size, size, 3) uint8 images of the readable files in
    order, their paths, and ``(path, message)`` for each file that could not be read.
    """
    images, good, errors = [], [], []
    for p in paths:
        try:
            images.append(load_image(p, resize, size))
            good.append(Path(p))
        except ImageFileError as e:
            errors.append((Path(p), str(e)))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return stacked, good, errors
