"""Predictions from a checkpoint: image files (any size, mode and format) or dataset images -> top-k.

Images become what the model was trained on, 32x32 RGB uint8, and then go through the same path as
every dataset batch (:class:`~cifar_resnet.loader.CifarLoader`'s normalisation with the checkpoint's
mean/std, :func:`~cifar_resnet.evaluate.collect_logits`), so a file and the same pixels from the dataset
get the same probabilities.

How a file becomes 32x32 (:func:`prepare_image`):

* the EXIF orientation is applied (phone photos are stored sideways with a rotation tag);
* anything with transparency (RGBA, LA, palette with a transparent colour) is composited on white, the
  usual background of web images; other modes (grayscale, palette, CMYK, 16-bit) convert to RGB;
* the largest centred square is cropped, then downscaled. CIFAR's images were made by downscaling
  web images to 32x32 and show their objects undistorted and roughly centred; squashing a 16:9 photo
  to a square would distort shapes in a way the model never saw, while the centre crop loses only the
  margins (``resize="squash"`` keeps the whole frame instead);
* the downscale averages areas (PIL's box filter: each output pixel is the mean of the source pixels
  it covers, as a camera sensor or a good downscaler does): no aliasing, no ringing or sharpening that
  CIFAR's pixels would not have, and an image enlarged by an integer factor comes back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .datasets import Split

__all__ = [
    "ImageFileError",
    "Predictor",
    "load_image",
    "load_images",
    "predict_tensor",
    "prepare_image",
]

SIZE = 32
RESIZE_MODES = ("crop", "squash")


class ImageFileError(ValueError):
    """An image file that cannot be used (missing, a directory, not an image, truncated)."""


def prepare_image(img, resize: str = "crop") -> np.ndarray:
    """A PIL image of any size and mode -> (32, 32, 3) uint8 RGB, as described in the module docstring."""
    from PIL import Image, ImageOps

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
    if (w, h) != (SIZE, SIZE) or box is not None:
        img = img.resize((SIZE, SIZE), Image.Resampling.BOX, box=box)
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path, resize: str = "crop") -> np.ndarray:
    """Read one image file as (32, 32, 3) uint8; :class:`ImageFileError` with a one-line reason if it
    cannot be (missing, a directory, not an image, truncated or corrupt)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ImageFileError(f"{path}: is a directory, not an image file")
    if not path.exists():
        raise ImageFileError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            # a large JPEG is decoded at a reduced scale (DCT scaling, exact averaging): much faster
            img.draft(None, (4 * SIZE, 4 * SIZE))
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            return prepare_image(img, resize)
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"{path}: refused, too many pixels ({' '.join(str(e).split())[:120]})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, bad headers, broken chunks
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ImageFileError(f"{path}: unreadable or truncated image ({detail[:160]})") from None


def load_images(paths: Sequence[str | Path], resize: str = "crop"
                ) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Read many files; a bad file does not stop the others.

    Returns ``(images, good_paths, errors)``: the (N, 32, 32, 3) uint8 images of the readable files in
    order, their paths, and ``(path, message)`` for each file that could not be read.
    """
    images, good, errors = [], [], []
    for p in paths:
        try:
            images.append(load_image(p, resize))
            good.append(Path(p))
        except ImageFileError as e:
            errors.append((Path(p), str(e)))
    stacked = np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), dtype=np.uint8)
    return stacked, good, errors


@torch.no_grad()
def predict_tensor(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, C) on the CPU for normalised images, (N, 3, H, W) or one (3, H, W)."""
    from .evaluate import collect_logits

    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected normalised images (N, 3, H, W) or one (3, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    batch = [(images.to(device), torch.zeros(len(images), dtype=torch.long, device=device))]
    logits, _ = collect_logits(model, batch, amp=False)
    return logits.softmax(dim=1)


@dataclass
class Predictor:
    """A checkpoint's model ready to predict: ``Predictor.from_checkpoint("runs/demo/best.pt")``."""

    model: nn.Module
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    ckpt: dict
    source: str = "checkpoint"

    @classmethod
    def from_checkpoint(cls, checkpoint, device: str | torch.device = "auto") -> Predictor:
        from .checkpoint import load_checkpoint
        from .evaluate import model_from_checkpoint
        from .train import resolve_device

        source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        dev = resolve_device(device) if isinstance(device, str) else device
        model = model_from_checkpoint(ckpt, dev, source)
        return cls(model, list(ckpt["classes"]), tuple(ckpt["mean"]), tuple(ckpt["std"]), dev, ckpt, source)

    def probabilities(self, images: np.ndarray, *, tta: bool = False, translate: int = 0, batch_size: int = 500,
                      progress: bool | None = False) -> torch.Tensor:
        """Softmax probabilities (N, C), float32 on the CPU, for (N, 32, 32, 3) uint8 RGB images."""
        from .evaluate import split_logits

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            return torch.zeros(0, len(self.classes))
        split = Split(images, np.zeros(len(images), dtype=np.int64))
        logits, _ = split_logits(self.model, self.ckpt, split, device=self.device, batch_size=batch_size,
                                 tta=tta, translate=translate, progress=progress, desc="predict")
        return logits.softmax(dim=1)

    def top_k(self, probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class name, probability)`` of each row, most probable first."""
        if k < 1:
            raise ValueError(f"--top-k must be >= 1, got {k}")
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs, ix)]
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def predict_files(self, paths: Sequence[str | Path], k: int = 5, *, resize: str = "crop",
                      tta: bool = False, translate: int = 0, batch_size: int = 500,
                      progress: bool | None = False) -> tuple[list[dict], np.ndarray]:
        """One result per path, in order: ``{"path", "top": [{"class", "prob"}...]}`` or, for a file that
        cannot be read, ``{"path", "error"}``. Also returns the 32x32 images of the good files."""
        stacked, _, errors = load_images(paths, resize)
        failed = dict(errors)
        probs = self.probabilities(stacked, tta=tta, translate=translate, batch_size=batch_size, progress=progress)
        tops = iter(self.top_k(probs, k) if len(stacked) else [])
        results = [{"path": str(p), "error": failed[Path(p)]} if Path(p) in failed
                   else {"path": str(p), "top": _top_json(next(tops))} for p in paths]
        return results, stacked

    def predict_split(self, split: Split, indices: Sequence[int], k: int = 5, *, tta: bool = False,
                      translate: int = 0, batch_size: int = 500, progress: bool | None = False) -> list[dict]:
        """Results for images ``indices`` of a Split: ``{"index", "true", "top", "correct"}``."""
        idx = np.asarray(list(indices), dtype=np.int64)
        n = len(split)
        bad = [int(i) for i in idx if i < 0 or i >= n]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the split has {n} images (0..{n - 1})")
        probs = self.probabilities(split.images[idx], tta=tta, translate=translate, batch_size=batch_size,
                                   progress=progress)
        tops = self.top_k(probs, k)
        return [{"index": int(i), "true": self.classes[int(split.labels[i])], "top": _top_json(t),
                 "correct": t[0][0] == self.classes[int(split.labels[i])]} for i, t in zip(idx, tops)]


def _top_json(top: list[tuple[str, float]]) -> list[dict]:
    return [{"class": name, "prob": prob} for name, prob in top]


def format_results(results: list[dict]) -> str:
    """Readable text: one block per image with its top-k, probability first."""
    lines = []
    for r in results:
        head = r.get("path", f"index {r.get('index')}")
        if "error" in r:
            continue  # reported on stderr
        if "true" in r:
            head += f"  (true: {r['true']}{'' if r['correct'] else ', WRONG'})"
        lines.append(head)
        lines += [f"  {100 * t['prob']:6.2f}%  {t['class']}" for t in r["top"]]
    return "\n".join(lines)


def show_results(results: list[dict], images: np.ndarray, path, *, title: str | None = None):
    """Write the figure of ``--show``: one image with its labels and top-k bars, or a grid of several
    (captions: true and predicted label; wrong predictions in red when the truth is known)."""
    from . import plots

    good = [r for r in results if "error" not in r]
    if not good:
        raise ValueError("--show: no image could be predicted")
    if len(good) == 1:
        r = good[0]
        return plots.plot_prediction(images[0], [(t["class"], t["prob"]) for t in r["top"]], path,
                                     true=r.get("true"), title=title)
    known = all("true" in r for r in good)
    captions = plots.prediction_captions([r.get("true") for r in good], [r["top"][0]["class"] for r in good],
                                         [r["top"][0]["prob"] for r in good])
    if not known:  # file names as captions' first line
        captions = [f"{Path(r['path']).name[:18]}\n{c}" for r, c in zip(good, captions)]
    wrong = [not r["correct"] for r in good] if known else None
    if known and title is None:
        right = sum(r["correct"] for r in good)
        title = f"{right} of {len(good)} right; wrong predictions in red"
    return plots.plot_image_grid(images, captions, path, wrong=wrong, title=title)


def predict_command(checkpoint, files: Sequence[str], *, data=None, split: str | None = None,
                    index: Sequence[int] | None = None, sample: int | None = None, seed: int = 0, k: int = 5,
                    resize: str = "crop", show=None, as_json: bool = False, tta: bool | None = None,
                    translate: int | None = None, batch_size: int = 500, device: str = "auto",
                    progress: bool | None = False) -> tuple[int, str, list[str]]:
    """What ``cifar-resnet predict`` does: returns ``(exit status, text for stdout, error lines)``.

    Files, or dataset images (``index`` / ``sample`` of ``split`` of ``data``, default the run's data),
    are predicted; each unreadable file gives one error line and exit status 2 while the readable ones
    are still predicted. ``show``: path of the figure to write (see :func:`show_results`).
    """
    import json

    if k < 1:
        raise ValueError(f"--top-k must be >= 1, got {k}")
    from_data = index is not None or sample is not None
    if files and from_data:
        raise ValueError("give image files or --index/--sample (dataset images), not both")
    if not files and not from_data:
        raise ValueError("nothing to predict: give image files, or --index I / --sample N with --data")
    if index is not None and sample is not None:
        raise ValueError("--index and --sample exclude each other")
    from .evaluate import translate_for, tta_for

    predictor = Predictor.from_checkpoint(checkpoint, device)
    tta, translate = tta_for(predictor.ckpt, tta), translate_for(predictor.ckpt, translate)
    if from_data:
        from .evaluate import check_classes, data_for_checkpoint, resolve_split

        dataset = data_for_checkpoint(predictor.ckpt, data, predictor.source)
        check_classes(predictor.ckpt, dataset, predictor.source)
        name, images_split, _ = resolve_split(predictor.ckpt, dataset, split)
        if sample is not None:
            if not 1 <= sample <= len(images_split):
                raise ValueError(f"--sample must be between 1 and {len(images_split)} (the {name} split's size)")
            index = np.random.default_rng(seed).choice(len(images_split), sample, replace=False).tolist()
        results = predictor.predict_split(images_split, index, k, tta=tta, translate=translate,
                                          batch_size=batch_size, progress=progress)
        for r in results:
            r["split"] = name
        images = images_split.images[np.asarray(index, dtype=np.int64)]
    else:
        results, images = predictor.predict_files(files, k, resize=resize, tta=tta, translate=translate,
                                                  batch_size=batch_size, progress=progress)
    errors = [r["error"] for r in results if "error" in r]
    text = json.dumps(results, indent=1) if as_json else format_results(results)
    if show is not None and len(images):
        show_results(results, images, show)
        if not as_json:
            text += f"\nwrote {show}"
    return (2 if errors else 0), text, errors
