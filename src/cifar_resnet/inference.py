"""A checkpoint plus images -> logits and probabilities: what ``evaluate``, ``interpret`` and ``predict``
(and a server) share.

A checkpoint needs nothing else: :func:`model_from_checkpoint` rebuilds the model, images are
normalised with the checkpoint's mean/std (never recomputed) through the same
:class:`~cifar_resnet.loader.CifarLoader` path as training's batches, and by default test-time
augmentation is what the run evaluated with (:func:`tta_settings`).

* :func:`run_checkpoint`: a checkpoint over one split of a data source (the run's own validation or
  training images found again, see :func:`resolve_split`), giving a :class:`CheckpointRun`;
* :class:`Predictor`: a loaded checkpoint that turns uint8 images or image files into probabilities
  and top-k class names.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, build_model, load_checkpoint
from .config import TrainConfig, prepare_data
from .datasets import CifarData, DataError, Split, channel_stats, load_data
from .engine import collect_logits
from .images import load_images
from .loader import CifarLoader
from .metrics import fine_to_coarse
from .runtime import progress_bar, resolve_device

__all__ = [
    "CheckpointRun",
    "OnnxPredictor",
    "Predictor",
    "check_classes",
    "data_for_checkpoint",
    "load_predictor",
    "model_from_checkpoint",
    "predict_tensor",
    "resolve_split",
    "run_checkpoint",
    "split_logits",
    "temperature_of",
    "tta_settings",
]


def model_from_checkpoint(ckpt: dict, device: torch.device, source: str = "checkpoint") -> nn.Module:
    """The checkpoint's model, weights loaded, in eval mode on ``device``."""
    if not ckpt.get("classes") or not all(isinstance(c, str) and c for c in ckpt["classes"]):
        raise CheckpointError(f"{source} has no class names")
    model = build_model(ckpt, source=source).to(device)
    model.to(memory_format=torch.channels_last)
    return model.eval()


def data_for_checkpoint(ckpt: dict, data=None, source: str = "checkpoint") -> CifarData:
    """``data`` loaded (a source for ``datasets.load_data``, or a ``CifarData`` as is); when ``None``,
    the source the run was trained on, from the checkpoint's config."""
    if isinstance(data, CifarData):
        return data
    if data is None:
        data = (ckpt.get("config") or {}).get("data")
        if not data:
            raise ValueError(f"{source} does not name its training data; pass --data")
    return load_data(data)


def check_classes(ckpt: dict, data: CifarData, source: str = "checkpoint") -> None:
    """ValueError unless ``data`` has the checkpoint's classes, in the same order."""
    if list(ckpt["classes"]) != list(data.classes):
        n, m = len(ckpt["classes"]), data.num_classes
        detail = f"{n} classes vs {m}" if n != m else "the class names differ"
        raise ValueError(f"{source} was trained on other classes than {data.source} has ({detail})")


def _source_splits_like_run(ckpt: dict, data: CifarData) -> CifarData | None:
    """``data`` with the run's validation split held out and its training subset taken, exactly as
    ``config.prepare_data`` did, or ``None`` when ``data`` is not the source the run was trained on.

    Whether it is the same source is checked, not assumed: the checkpoint's normalisation statistics
    were computed from the run's training images, so the re-split training images must reproduce them
    exactly (``channel_stats`` counts pixels in integer histograms, so the numbers are bit-for-bit).
    """
    try:
        config = ckpt.get("config")
        # no saved config: nothing was held out or subsampled
        config = TrainConfig.from_dict(config) if config else TrainConfig(val_split=0)
        run = prepare_data(config, data)
        mean, std = channel_stats(run.train.images)
    except DataError:
        return None
    same = all(abs(a - b) <= 1e-9 for a, b in zip((*mean, *std), (*ckpt["mean"], *ckpt["std"])))
    return run if same else None


def resolve_split(ckpt: dict, data: CifarData, split: str | None = None) -> tuple[str, Split, str]:
    """The images a checkpoint is evaluated on: ``(split_name, Split, description)``.

    ``split`` is "train", "val" or "test" (default: the split the run evaluated on, ``ckpt["eval_split"]``).
    "val" and "train" mean the run's own held-out validation images and the images it trained on: the
    run's ``val_split``, ``train_subset`` and ``seed`` (from the checkpoint's config) are applied to
    ``data`` again, and that ``data`` is the run's source is verified against the checkpoint's
    normalisation statistics. For another source, "val" is refused (it would be other images) and
    "train" is all of that source's training images. "test" is the source's official test split.
    """
    split = split or ckpt.get("eval_split") or "test"
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if split == "test":
        return "test", data.get_split("test"), f"{data.source}: official test split"
    run = _source_splits_like_run(ckpt, data)
    if run is not None:
        if split == "val":
            if run.val is None:
                raise ValueError(f"the run held out no validation split (val_split 0); use --split test"
                                 f"{'' if data.test is not None else ' with a source that has one'}")
            return "val", run.val, f"{data.source}: the run's held-out validation split"
        return "train", run.train, f"{data.source}: the run's training images"
    if split == "val":
        if data.val is not None:
            return "val", data.val, f"{data.source}: validation split"
        raise ValueError(f"{data.source} is not the data this checkpoint was trained on (its training images do "
                         "not reproduce the checkpoint's normalisation statistics), so the run's validation "
                         "images cannot be recovered from it; pass the run's --data, or use --split test")
    return "train", data.train, f"{data.source}: all training images (not the run's: another source)"


def tta_settings(ckpt: dict, tta: bool | None = None, tta_translate: int | None = None) -> tuple[bool, int]:
    """``(tta, tta_translate)``: each as given, else what the run evaluated with (its config's ``tta``
    and ``tta_translate``; 0 for runs from before translate TTA existed), so that by default a
    checkpoint is measured the way its training history was."""
    config = ckpt.get("config") or {}
    flip = bool(config.get("tta", False)) if tta is None else bool(tta)
    translate = int(config.get("tta_translate", 0)) if tta_translate is None else int(tta_translate)
    if translate < 0:
        raise ValueError(f"--tta-translate must be >= 0, got {translate}")
    return flip, translate


def temperature_of(ckpt: dict) -> float:
    """The checkpoint's calibration temperature (``cifar-resnet calibrate``; 1.0 when never calibrated):
    probabilities are ``softmax(logits / temperature)``."""
    return float(ckpt.get("temperature") or 1.0)


def split_logits(model: nn.Module, ckpt: dict, split: Split, *, device: torch.device, batch_size: int = 500,
                 tta: bool = False, tta_translate: int = 0, amp: bool = True, progress: bool | None = None,
                 desc: str = "evaluate", temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` over a whole Split, normalised with the checkpoint's mean/std and
    divided by the calibration ``temperature`` (default: the checkpoint's)."""
    loader = CifarLoader(split, batch_size, mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), device=device)
    with progress_bar(len(split), desc, progress) as bar:
        logits, labels = collect_logits(model, loader, tta=tta, tta_translate=tta_translate, amp=amp, progress=bar)
    t = temperature_of(ckpt) if temperature is None else float(temperature)
    return (logits / t if t != 1.0 else logits), labels


@dataclass
class CheckpointRun:
    """A checkpoint run over one split: what ``evaluate`` and ``interpret`` both start from."""

    ckpt: dict
    source: str             # the checkpoint's path (or "checkpoint" for a dict)
    data: CifarData         # the data the split came from
    split_name: str         # "train" | "val" | "test"
    split: Split            # its images and labels
    description: str
    tta: bool
    tta_translate: int      # pixels of translate TTA (0: none)
    logits: torch.Tensor    # (N, C) float32, CPU
    labels: torch.Tensor    # (N,) int64, CPU
    coarse_map: np.ndarray | None
    coarse_classes: tuple[str, ...] | None
    temperature: float = 1.0  # the logits are divided by it (the checkpoint's calibration, or as asked)

    @property
    def meta(self) -> dict:
        return {"checkpoint": self.source, "model": self.ckpt["model_name"], "epoch": self.ckpt.get("epoch"),
                "split": self.split_name, "split_description": self.description, "tta": self.tta,
                "tta_translate": self.tta_translate, "data": self.data.source, "temperature": self.temperature}


def _load(checkpoint) -> tuple[dict, str]:
    if isinstance(checkpoint, dict):
        return checkpoint, "checkpoint"
    return load_checkpoint(checkpoint), str(checkpoint)


def run_checkpoint(checkpoint, data=None, split: str | None = None, *, tta: bool | None = None,
                   tta_translate: int | None = None, batch_size: int = 500, device: str | torch.device = "auto",
                   amp: bool = True, progress: bool | None = None, desc: str = "evaluate",
                   temperature: float | None = None) -> CheckpointRun:
    """Load a checkpoint (a path or a loaded dict), find the split of ``data`` (a source for
    ``datasets.load_data`` or a ``CifarData``; default: the run's own source, from the checkpoint's
    config; see :func:`resolve_split` for what the split names mean) and run the model over it.
    ``tta``, ``tta_translate``: flip and translate test-time augmentation (default: as the run evaluated,
    see :func:`tta_settings`). ``temperature``: divide the logits by it (default: the checkpoint's
    calibration temperature, 1 when it has none)."""
    ckpt, source = _load(checkpoint)
    tta, tta_translate = tta_settings(ckpt, tta, tta_translate)
    data = data_for_checkpoint(ckpt, data, source)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, source)
    check_classes(ckpt, data, source)
    name, images, description = resolve_split(ckpt, data, split)
    temperature = temperature_of(ckpt) if temperature is None else float(temperature)
    logits, labels = split_logits(model, ckpt, images, device=dev, batch_size=batch_size, tta=tta,
                                  tta_translate=tta_translate, amp=amp, progress=progress, desc=f"{desc} {name}",
                                  temperature=temperature)
    coarse_map, coarse_names = fine_to_coarse(ckpt["classes"], ckpt.get("coarse_classes") or data.coarse_classes,
                                              images)
    return CheckpointRun(ckpt, source, data, name, images, description, tta, tta_translate, logits, labels,
                         coarse_map, coarse_names, temperature)


@torch.no_grad()
def predict_tensor(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, C) on the CPU for normalised images, (N, 3, H, W) or one (3, H, W)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected normalised images (N, 3, H, W) or one (3, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    batch = [(images.to(device), torch.zeros(len(images), dtype=torch.long, device=device))]
    logits, _ = collect_logits(model, batch, amp=False)
    return logits.softmax(dim=1)


def _top_json(top: list[tuple[str, float]]) -> list[dict]:
    return [{"class": name, "prob": prob} for name, prob in top]


class _Predictions(abc.ABC):
    """What every predictor offers on top of ``probabilities``: top-k names, and image files in one call."""

    classes: list[str]

    @abc.abstractmethod
    def probabilities(self, images: np.ndarray, **options) -> torch.Tensor:
        """Calibrated probabilities (N, C) for (N, 32, 32, 3) uint8 RGB images."""

    def top_k(self, probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class name, probability)`` of each row, most probable first."""
        if k < 1:
            raise ValueError(f"--top-k must be >= 1, got {k}")
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs, ix)]
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def predict_files(self, paths: Sequence[str | Path], k: int = 5, *, resize: str = "crop",
                      tta: bool = False, tta_translate: int = 0, batch_size: int = 500,
                      progress: bool | None = False) -> tuple[list[dict], np.ndarray]:
        """One result per path, in order: ``{"path", "top": [{"class", "prob"}...]}`` or, for a file that
        cannot be read, ``{"path", "error"}``. Also returns the 32x32 images of the good files."""
        stacked, _, errors = load_images(paths, resize)
        failed = dict(errors)
        probs = self.probabilities(stacked, tta=tta, tta_translate=tta_translate, batch_size=batch_size,
                                   progress=progress)
        tops = iter(self.top_k(probs, k) if len(stacked) else [])
        results = [{"path": str(p), "error": failed[Path(p)]} if Path(p) in failed
                   else {"path": str(p), "top": _top_json(next(tops))} for p in paths]
        return results, stacked


@dataclass
class Predictor(_Predictions):
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
        ckpt, source = _load(checkpoint)
        dev = resolve_device(device)
        model = model_from_checkpoint(ckpt, dev, source)
        return cls(model, list(ckpt["classes"]), tuple(ckpt["mean"]), tuple(ckpt["std"]), dev, ckpt, source)

    def probabilities(self, images: np.ndarray, *, tta: bool = False, tta_translate: int = 0,
                      batch_size: int = 500, progress: bool | None = False) -> torch.Tensor:
        """Softmax probabilities (N, C), float32 on the CPU, for (N, 32, 32, 3) uint8 RGB images."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            return torch.zeros(0, len(self.classes))
        split = Split(images, np.zeros(len(images), dtype=np.int64))
        logits, _ = split_logits(self.model, self.ckpt, split, device=self.device, batch_size=batch_size,
                                 tta=tta, tta_translate=tta_translate, progress=progress, desc="predict")
        return logits.softmax(dim=1)

    @property
    def temperature(self) -> float:
        return temperature_of(self.ckpt)

    @property
    def superclasses(self) -> list[str | None]:
        """The superclass name of each class (``None`` each where the checkpoint has no hierarchy)."""
        mapping, names = fine_to_coarse(self.classes, self.ckpt.get("coarse_classes"))
        return [None] * len(self.classes) if mapping is None else [names[int(i)] if i >= 0 else None for i in mapping]

    @property
    def info(self) -> dict:
        """What a server reports about its model: name, classes, checksum, calibration temperature."""
        return {"model": self.ckpt["model_name"], "num_classes": len(self.classes), "source": self.source,
                "checksum": self.ckpt.get("checksum"), "temperature": self.temperature, "format": "checkpoint",
                "epoch": self.ckpt.get("epoch")}

    def predict_split(self, split: Split, indices: Sequence[int], k: int = 5, *, tta: bool = False,
                      tta_translate: int = 0, batch_size: int = 500, progress: bool | None = False) -> list[dict]:
        """Results for images ``indices`` of a Split: ``{"index", "true", "top", "correct"}``."""
        idx = np.asarray(list(indices), dtype=np.int64)
        n = len(split)
        bad = [int(i) for i in idx if i < 0 or i >= n]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the split has {n} images (0..{n - 1})")
        probs = self.probabilities(split.images[idx], tta=tta, tta_translate=tta_translate,
                                   batch_size=batch_size, progress=progress)
        tops = self.top_k(probs, k)
        return [{"index": int(i), "true": self.classes[int(split.labels[i])], "top": _top_json(t),
                 "correct": t[0][0] == self.classes[int(split.labels[i])]} for i, t in zip(idx, tops)]


class OnnxPredictor(_Predictions):
    """A model exported by ``cifar-resnet export --format onnx``, run by onnxruntime: no PyTorch model,
    no checkpoint. Class names, superclasses, normalisation and temperature come from the file's metadata
    (the model takes the uint8 images and returns calibrated probabilities)."""

    def __init__(self, path: str | Path):
        try:  # an optional dependency: pip install 'cifar-resnet[onnx]'
            import onnxruntime
        except ImportError:
            raise ValueError(f"{path}: running an ONNX model needs onnxruntime: pip install 'cifar-resnet[onnx]'") \
                from None
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no such model file: {path}")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a foreign or corrupt file
            raise ValueError(f"{path} is not a readable ONNX model ({str(e).strip()[:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "cifar-resnet":
            raise ValueError(f"{path} was not exported by cifar-resnet (no class names in its metadata)")
        self.source = str(path)
        self.meta = {k: json.loads(v) for k, v in meta.items() if k != "producer"}
        self.classes = list(self.meta["classes"])
        self.input = self.session.get_inputs()[0].name
        if self.meta["input"] != "uint8_nhwc":
            raise ValueError(f"{path} takes {self.meta['input']} input; predict and serve use uint8 NHWC models")

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    @property
    def superclasses(self) -> list[str | None]:
        return list(self.meta.get("superclasses") or [None] * len(self.classes))

    @property
    def info(self) -> dict:
        return {"model": self.meta["model"], "num_classes": len(self.classes), "source": self.source,
                "checksum": self.meta.get("checkpoint_checksum"), "temperature": self.temperature,
                "format": "onnx", "epoch": self.meta.get("epoch")}

    def probabilities(self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False, tta_translate: int = 0,
                      progress: bool | None = False) -> torch.Tensor:
        """Calibrated probabilities (N, C) for (N, 32, 32, 3) uint8 images (no test-time augmentation)."""
        if tta or tta_translate:
            raise ValueError("an exported model has no test-time augmentation; use the checkpoint for --tta")
        images = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            return torch.zeros(0, len(self.classes))
        out = [self.session.run(None, {self.input: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
        return torch.from_numpy(np.concatenate(out)).float()


def load_predictor(path: str | Path, device: str | torch.device = "auto") -> Predictor | OnnxPredictor:
    """A predictor for a checkpoint (``.pt``) or an exported ONNX model (``.onnx``)."""
    if str(path).lower().endswith(".onnx"):
        return OnnxPredictor(path)
    return Predictor.from_checkpoint(path, device)
