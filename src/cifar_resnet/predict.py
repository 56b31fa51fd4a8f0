"""Predictions from a checkpoint: image files (any size, mode and format) or dataset images -> top-k.

Files become what the model was trained on, 32x32 RGB uint8 (:mod:`cifar_resnet.images` says how), and
then go through the same path as every dataset batch (:class:`~cifar_resnet.inference.Predictor`: the
loader's normalisation with the checkpoint's mean/std, :func:`~cifar_resnet.engine.collect_logits`), so
a file and the same pixels from the dataset get the same probabilities.

:func:`predict` is what ``cifar-resnet predict`` does, returning data; :func:`format_results` and
:func:`show_results` turn its results into text and a figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plots
from .engine import EvalOptions
from .inference import EvalData, OnnxPredictor, Predictor, check_classes, load_predictor, resolve_split

__all__ = ["DatasetImages", "ImageFiles", "Prediction", "format_results", "predict", "show_results"]


@dataclass
class Prediction:
    """What :func:`predict` returns."""

    results: list[dict]  # per image: {"path" | "index", "top": [{"class", "prob"}], "precision", ...}
    # or {"path", "error"}
    images: np.ndarray  # (N, S, S, 3) uint8: the images that were predicted, in order
    predictor: Predictor | OnnxPredictor
    options: EvalOptions  # how they were computed (test-time augmentation, precision)

    @property
    def errors(self) -> list[str]:
        """One line per file that could not be read."""
        return [r["error"] for r in self.results if "error" in r]


@dataclass(frozen=True)
class ImageFiles:
    """Image files to predict; ``resize``: how a non-square file becomes 32x32 (``crop`` or ``squash``)."""

    paths: Sequence[str | Path]
    resize: str = "crop"


@dataclass(frozen=True)
class DatasetImages:
    """Images of a dataset split to predict: those at positions ``index``, or ``sample`` of them drawn at
    random (seeded by ``seed``); ``source``: the data and split (default the run's)."""

    source: EvalData = field(default_factory=EvalData)
    index: Sequence[int] | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index is not None and self.sample is not None:
            raise ValueError("--index and --sample exclude each other")
        if self.index is None and self.sample is None:
            raise ValueError("dataset images: give --index I or --sample N")


def predict(
    model: str | Path | Predictor | OnnxPredictor,
    images: Sequence[str | Path] | ImageFiles | DatasetImages,
    *,
    k: int = 5,
    options: EvalOptions | None = None,
    device: str = "auto",
    progress: bool | None = False,
) -> Prediction:
    """Predict image files (a list of paths, or :class:`ImageFiles`) or dataset images
    (:class:`DatasetImages`). An unreadable file gets an ``{"path", "error"}`` result while the readable
    ones are still predicted.

    ``model``: a checkpoint or exported ``.onnx`` file (loaded on ``device``) or a loaded predictor.
    ``options``: test-time augmentation, batch size and precision (default: a checkpoint's as its run
    evaluated, see :func:`~cifar_resnet.inference.eval_options`; ``predictor.eval_options(...)`` makes
    others)."""
    if k < 1:
        raise ValueError(f"--top-k must be >= 1, got {k}")
    if not isinstance(images, (ImageFiles, DatasetImages)):
        images = ImageFiles([images] if isinstance(images, (str, Path)) else list(images))
    if isinstance(images, ImageFiles) and not images.paths:
        raise ValueError("nothing to predict: give image files, or --index I / --sample N with --data")
    from_data = isinstance(images, DatasetImages)
    predictor = model if isinstance(model, (Predictor, OnnxPredictor)) else load_predictor(model, device)
    if from_data and isinstance(predictor, OnnxPredictor):
        raise ValueError("an exported model predicts image files; use its checkpoint for --index/--sample")
    options = options or predictor.eval_options()
    if not from_data:
        results, stacked = predictor.predict_files(
            images.paths, k, resize=images.resize, options=options, progress=progress
        )
        return Prediction(_with_precision(results, options), stacked, predictor, options)
    return _predict_dataset(predictor, images, k, options, progress)


def _predict_dataset(
    predictor: Predictor, images: DatasetImages, k: int, options: EvalOptions, progress: bool | None
) -> Prediction:
    ckpt = predictor.ckpt
    dataset = check_classes(ckpt, images.source.load(ckpt))
    name, split, _ = resolve_split(ckpt, dataset, images.source.split)
    index = images.index
    if images.sample is not None:
        if not 1 <= images.sample <= len(split):
            raise ValueError(f"--sample must be between 1 and {len(split)} (the {name} split's size)")
        index = np.random.default_rng(images.seed).choice(len(split), images.sample, replace=False).tolist()
    results = predictor.predict_split(split, index, k, options=options, progress=progress)
    for r in results:
        r["split"] = name
    return Prediction(
        _with_precision(results, options), split.images[np.asarray(index, dtype=np.int64)], predictor, options
    )


def _with_precision(results: list[dict], options: EvalOptions) -> list[dict]:
    for r in results:
        if "error" not in r:
            r["precision"] = options.precision
    return results


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
    good = [r for r in results if "error" not in r]
    if not good:
        raise ValueError("--show: no image could be predicted")
    if len(good) == 1:
        r = good[0]
        return plots.plot_prediction(
            images[0], [(t["class"], t["prob"]) for t in r["top"]], path, true=r.get("true"), title=title
        )
    known = all("true" in r for r in good)
    captions = plots.prediction_captions(
        [r.get("true") for r in good], [r["top"][0]["class"] for r in good], [r["top"][0]["prob"] for r in good]
    )
    if not known:  # file names as captions' first line
        captions = [f"{Path(r['path']).name[:18]}\n{c}" for r, c in zip(good, captions)]
    wrong = [not r["correct"] for r in good] if known else None
    if known and title is None:
        right = sum(r["correct"] for r in good)
        title = f"{right} of {len(good)} right; wrong predictions in red"
    return plots.plot_image_grid(images, captions, path, wrong=wrong, title=title)
