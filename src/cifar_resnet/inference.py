"""A checkpoint plus images -> logits and probabilities: what evaluate, interpret, predict and serve share.

A checkpoint needs nothing else: :func:`model_from_checkpoint` rebuilds the model, images are normalised
with the checkpoint's mean/std through the loader training uses, and by default the evaluation is the
run's own (:func:`eval_options`, overridden by an :class:`EvalOverrides`).

* :func:`run_checkpoint`: a checkpoint over the split an :class:`EvalData` names (:func:`resolve_split`);
* :class:`Predictor`: a loaded checkpoint that turns uint8 images or image files into probabilities
  and top-k class names.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import TrainConfig
from .console import one_line, progress_bar
from .data import CifarData, DataError, Split, channel_stats, load_data
from .device import resolve_device, resolve_precision
from .engine import EvalOptions, collect_logits, prepare_data
from .images import load_images
from .loader import CifarLoader
from .metrics import fine_to_coarse

__all__ = [
    "CheckpointRun",
    "EvalData",
    "EvalOverrides",
    "OnnxPredictor",
    "Predictor",
    "check_classes",
    "data_for_checkpoint",
    "eval_options",
    "load_predictor",
    "model_from_checkpoint",
    "predict_tensor",
    "resolve_split",
    "run_checkpoint",
    "split_logits",
]


def _checkpoint(checkpoint: str | Path | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def model_from_checkpoint(ckpt: Checkpoint, device: torch.device) -> nn.Module:
    """The checkpoint's model, weights loaded, in eval mode on ``device``."""
    if not ckpt.classes or not all(isinstance(c, str) and c for c in ckpt.classes):
        raise CheckpointError(f"{ckpt.source} has no class names")
    model = ckpt.build_model().to(device)
    model.to(memory_format=torch.channels_last)
    return model.eval()


@dataclass(frozen=True)
class EvalOverrides:
    """Evaluation options asked for: each one given, or ``None`` for the run's own (:func:`eval_options`).
    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``, resolved for the device."""

    tta: bool | None = None
    tta_translate: int | None = None
    batch_size: int | None = None
    precision: str | None = None


def eval_options(ckpt: Checkpoint, device: str | torch.device, overrides: EvalOverrides | None = None) -> EvalOptions:
    """How to evaluate ``ckpt`` on ``device``: each of ``overrides`` as given, else as the run evaluated, so
    that by default a checkpoint is measured the way its training history was: its config's ``tta`` and
    ``tta_translate`` (0 for runs from before translate TTA existed), ``eval_batch_size`` and
    ``precision`` (resolved for ``device`` by :func:`~cifar_resnet.device.resolve_precision`, so ``auto``
    is bf16 on CUDA and on CPUs with AMX)."""
    asked = overrides or EvalOverrides()
    run_tta, run_translate = ckpt.tta
    batch_size = asked.batch_size
    if batch_size is None:
        batch_size = int(ckpt.config_dict.get("eval_batch_size", TrainConfig.eval_batch_size))  # else the default
    return EvalOptions(
        tta=run_tta if asked.tta is None else bool(asked.tta),
        tta_translate=run_translate if asked.tta_translate is None else int(asked.tta_translate),
        batch_size=batch_size,
        precision=resolve_precision(asked.precision or ckpt.precision, resolve_device(device)),
    )


def data_for_checkpoint(ckpt: Checkpoint, data=None) -> CifarData:
    """``data`` loaded (a source for ``data.load_data``, or a ``CifarData`` as is); when ``None``, the
    source the run was trained on, from the checkpoint's config."""
    if isinstance(data, CifarData):
        return data
    if data is None:
        data = ckpt.data_source
        if not data:
            raise ValueError(f"{ckpt.source} does not name its training data; pass --data")
    return load_data(data, image_size=ckpt.image_size)


def check_classes(ckpt: Checkpoint, data: CifarData) -> CifarData:
    """``data`` labelled as the checkpoint's classes: as it is where they are the same, in the same order; a
    dataset of some of them (a folder of a few classes' images) with its labels renumbered as the
    checkpoint's; ValueError naming a class the checkpoint does not know, or images of another size."""
    if data.image_size != ckpt.image_size:
        raise ValueError(
            f"{ckpt.source} takes {ckpt.image_size} px images; {data.source} has {data.image_size} px images"
        )
    if ckpt.classes == list(data.classes):
        return data
    unknown = [c for c in data.classes if c not in ckpt.classes]
    if unknown or data.coarse_classes is not None:
        n, m = ckpt.num_classes, data.num_classes
        detail = f"class {unknown[0]!r} is not among its {n}" if unknown else f"{n} classes vs {m}"
        raise ValueError(f"{ckpt.source} was trained on other classes than {data.source} has ({detail})")
    index = np.array([ckpt.classes.index(c) for c in data.classes], dtype=np.int64)
    splits = {
        name: None if split is None else Split(split.images, index[split.labels])
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    return dataclasses.replace(data, classes=tuple(ckpt.classes), **splits)


@dataclass(frozen=True)
class EvalData:
    """Which images a checkpoint is evaluated on: ``data`` (a source for ``data.load_data`` or a
    ``CifarData``; ``None``: the run's own, from the checkpoint's config) and its ``split`` ("train",
    "val" or "test"; ``None``: the split the run evaluated on; see :func:`resolve_split`)."""

    data: str | Path | CifarData | None = None
    split: str | None = None

    def load(self, ckpt: Checkpoint) -> CifarData:
        """The data loaded (:func:`data_for_checkpoint`)."""
        return data_for_checkpoint(ckpt, self.data)


def _source_splits_like_run(ckpt: Checkpoint, data: CifarData) -> CifarData | None:
    """``data`` with the run's validation split held out and its training subset taken, exactly as
    ``engine.prepare_data`` did, or ``None`` when ``data`` is not the source the run was trained on.

    Whether it is the same source is checked, not assumed: the checkpoint's normalisation statistics
    were computed from the run's training images, so the re-split training images must reproduce them
    exactly (``channel_stats`` counts pixels in integer histograms, so the numbers are bit-for-bit).
    """
    try:
        # no saved config: nothing was held out or subsampled
        run = prepare_data(ckpt.config or TrainConfig(val_split=0), data)
        mean, std = channel_stats(run.train.images)
    except DataError:
        return None
    same = all(abs(a - b) <= 1e-9 for a, b in zip((*mean, *std), (*ckpt.mean, *ckpt.std)))
    return run if same else None


def resolve_split(ckpt: Checkpoint, data: CifarData, split: str | None = None) -> tuple[str, Split, str]:
    """The images a checkpoint is evaluated on: ``(split_name, Split, description)``.

    ``split`` is "train", "val" or "test" (default: the split the run evaluated on, ``ckpt.eval_split``).
    "val" and "train" mean the run's own held-out validation images and the images it trained on: the
    run's ``val_split``, ``train_subset`` and ``seed`` (from the checkpoint's config) are applied to
    ``data`` again, and that ``data`` is the run's source is verified against the checkpoint's
    normalisation statistics. For another source, "val" is refused (it would be other images) and
    "train" is all of that source's training images. "test" is the source's official test split.
    """
    split = split or ckpt.eval_split or "test"
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if split == "test":
        official = "official " if data.name in ("cifar10", "cifar100") else ""
        return "test", data.get_split("test"), f"{data.source}: {official}test split"
    run = _source_splits_like_run(ckpt, data)
    if run is not None:
        if split == "val":
            if run.val is None:
                raise ValueError(
                    f"the run held out no validation split (val_split 0); use --split test"
                    f"{'' if data.test is not None else ' with a source that has one'}"
                )
            return "val", run.val, f"{data.source}: the run's held-out validation split"
        return "train", run.train, f"{data.source}: the run's training images"
    if split == "val":
        if data.val is not None:
            return "val", data.val, f"{data.source}: validation split"
        raise ValueError(
            f"{data.source} is not the data this checkpoint was trained on (its training images do "
            "not reproduce the checkpoint's normalisation statistics), so the run's validation "
            "images cannot be recovered from it; pass the run's --data, or use "
            + ("--split test" if data.test is not None else "--split train (all its images)")
        )
    return "train", data.train, f"{data.source}: all training images (not the run's: another source)"


def split_logits(
    model: nn.Module,
    ckpt: Checkpoint,
    split: Split,
    options: EvalOptions,
    progress: bool | None = None,
    desc: str = "evaluate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits (not divided by the calibration temperature) and labels of ``model`` over a whole
    Split, normalised with the checkpoint's mean/std, evaluated as ``options`` say, on the model's device."""
    device = next(model.parameters()).device
    loader = CifarLoader(split, options.batch_size, mean=ckpt.mean, std=ckpt.std, device=device)
    with progress_bar(len(split), desc, progress) as bar:
        return collect_logits(model, loader, options, progress=bar)


@dataclass
class CheckpointRun:
    """A checkpoint run over one split: what ``evaluate``, ``interpret`` and ``calibrate`` start from."""

    ckpt: Checkpoint
    data: CifarData  # the data the split came from
    split_name: str  # "train" | "val" | "test"
    split: Split  # its images and labels
    description: str
    options: EvalOptions  # how it was evaluated: test-time augmentation, batch size, precision
    raw_logits: torch.Tensor  # (N, C) float32, CPU, before the calibration temperature
    labels: torch.Tensor  # (N,) int64, CPU
    coarse_map: np.ndarray | None
    coarse_classes: tuple[str, ...] | None

    @property
    def source(self) -> str:
        return self.ckpt.source

    @property
    def temperature(self) -> float:
        return self.ckpt.temperature

    @property
    def logits(self) -> torch.Tensor:
        """The logits divided by the checkpoint's calibration temperature: ``softmax`` of them is the
        calibrated probabilities."""
        t = self.temperature
        return self.raw_logits / t if t != 1.0 else self.raw_logits

    @property
    def meta(self) -> dict:
        return {
            "checkpoint": self.source,
            "model": self.ckpt.model_name,
            "epoch": self.ckpt.epoch,
            "split": self.split_name,
            "split_description": self.description,
            "tta": self.options.tta,
            "tta_translate": self.options.tta_translate,
            "precision": self.options.precision,
            "data": self.data.source,
            "temperature": self.temperature,
        }


def run_checkpoint(
    checkpoint: str | Path | Checkpoint,
    source: EvalData | None = None,
    options: EvalOptions | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> CheckpointRun:
    """Run a checkpoint (a path or a loaded :class:`Checkpoint`) over the split ``source`` names (default:
    the run's own data and evaluation split).

    ``options``: test-time augmentation, batch size and precision, resolved for ``device`` (default: as
    the run evaluated, see :func:`eval_options`)."""
    ckpt = _checkpoint(checkpoint)
    dev = resolve_device(device)
    options = options or eval_options(ckpt, dev)
    source = source or EvalData()
    data = source.load(ckpt)
    model = model_from_checkpoint(ckpt, dev)
    data = check_classes(ckpt, data)
    name, images, description = resolve_split(ckpt, data, source.split)
    logits, labels = split_logits(model, ckpt, images, options, progress, desc=f"evaluate {name}")
    coarse_map, coarse_names = fine_to_coarse(ckpt.classes, ckpt.coarse_classes or data.coarse_classes, images)
    return CheckpointRun(ckpt, data, name, images, description, options, logits, labels, coarse_map, coarse_names)


@torch.no_grad()
def predict_tensor(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, C) on the CPU for normalised images, (N, 3, H, W) or one (3, H, W), in fp32."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected normalised images (N, 3, H, W) or one (3, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    batch = [(images.to(device), torch.zeros(len(images), dtype=torch.long, device=device))]
    logits, _ = collect_logits(model, batch)
    return logits.softmax(dim=1)


def _top_json(top: list[tuple[str, float]]) -> list[dict]:
    return [{"class": name, "prob": prob} for name, prob in top]


class _Predictions(abc.ABC):
    """What every predictor offers on top of ``probabilities``: top-k names, and image files in one call."""

    classes: list[str]
    image_size: int  # the side in px of the square images the model takes

    @abc.abstractmethod
    def eval_options(self, overrides: EvalOverrides | None = None) -> EvalOptions:
        """How this predictor evaluates: each of ``overrides`` as given, else its model's default."""

    @abc.abstractmethod
    def probabilities(
        self, images: np.ndarray, options: EvalOptions | None = None, progress: bool | None = False
    ) -> torch.Tensor:
        """Calibrated probabilities (N, C) for (N, S, S, 3) uint8 RGB images, S = :attr:`image_size`."""

    def _images(self, images: np.ndarray) -> np.ndarray:
        """``images`` as (N, S, S, 3) uint8; ValueError for images of another size."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"{self.source} takes ({self.image_size}, {self.image_size}, 3) images, got {tuple(images.shape[1:])}"
            )
        return images

    def top_k(self, probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class name, probability)`` of each row, most probable first."""
        if k < 1:
            raise ValueError(f"--top-k must be >= 1, got {k}")
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [(self.classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())
        ]

    def predict_files(
        self,
        paths: Sequence[str | Path],
        k: int = 5,
        *,
        resize: str = "crop",
        options: EvalOptions | None = None,
        progress: bool | None = False,
    ) -> tuple[list[dict], np.ndarray]:
        """One result per path, in order: ``{"path", "top": [{"class", "prob"}...]}`` or, for a file that
        cannot be read, ``{"path", "error"}``. Also returns the images of the good files, as the model takes
        them (:attr:`image_size` px square)."""
        stacked, _, errors = load_images(paths, resize, self.image_size)
        failed = dict(errors)
        probs = self.probabilities(stacked, options, progress)
        tops = iter(self.top_k(probs, k) if len(stacked) else [])
        results = [
            {"path": str(p), "error": failed[Path(p)]}
            if Path(p) in failed
            else {"path": str(p), "top": _top_json(next(tops))}
            for p in paths
        ]
        return results, stacked


@dataclass
class Predictor(_Predictions):
    """A checkpoint's model ready to predict: ``Predictor.from_checkpoint("runs/demo/best.pt")``.

    ``options``: how :meth:`probabilities` evaluates when not told otherwise: one pass per image (no
    test-time augmentation) in the precision the run was trained in (see :func:`eval_options`)."""

    model: nn.Module
    ckpt: Checkpoint
    device: torch.device
    options: EvalOptions
    classes: list[str] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.classes = self.ckpt.classes
        self.image_size = self.ckpt.image_size

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | Checkpoint, device: str | torch.device = "auto", precision: str | None = None
    ) -> Predictor:
        """Load ``checkpoint`` onto ``device``; ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``):
        default the run's."""
        ckpt = _checkpoint(checkpoint)
        dev = resolve_device(device)
        model = model_from_checkpoint(ckpt, dev)
        return cls(model, ckpt, dev, eval_options(ckpt, dev, EvalOverrides(precision=precision)).plain())

    def eval_options(self, overrides: EvalOverrides | None = None) -> EvalOptions:
        """Each of ``overrides`` as given, else as the run evaluated (:func:`eval_options`), on this device."""
        return eval_options(self.ckpt, self.device, overrides)

    def probabilities(
        self, images: np.ndarray, options: EvalOptions | None = None, progress: bool | None = False
    ) -> torch.Tensor:
        """Calibrated softmax probabilities (N, C), float32 on the CPU, for (N, S, S, 3) uint8 RGB images (S:
        :attr:`image_size`), evaluated as ``options`` say (default :attr:`options`)."""
        images = self._images(images)
        if len(images) == 0:
            return torch.zeros(0, len(self.classes))
        split = Split(images, np.zeros(len(images), dtype=np.int64))
        logits, _ = split_logits(self.model, self.ckpt, split, options or self.options, progress, desc="predict")
        t = self.temperature
        return (logits / t if t != 1.0 else logits).softmax(dim=1)

    source = property(lambda self: self.ckpt.source)
    mean = property(lambda self: self.ckpt.mean)
    std = property(lambda self: self.ckpt.std)
    temperature = property(lambda self: self.ckpt.temperature)

    @property
    def superclasses(self) -> list[str | None]:
        """The superclass name of each class (``None`` each where the checkpoint has no hierarchy)."""
        mapping, names = fine_to_coarse(self.classes, self.ckpt.coarse_classes)
        return [None] * len(self.classes) if mapping is None else [names[int(i)] if i >= 0 else None for i in mapping]

    @property
    def info(self) -> dict:
        """What a server reports about its model: name, classes, checksum, calibration temperature, precision."""
        return {
            "model": self.ckpt.model_name,
            "num_classes": len(self.classes),
            "source": self.source,
            "checksum": self.ckpt.checksum,
            "temperature": self.temperature,
            "format": "checkpoint",
            "epoch": self.ckpt.epoch,
            "precision": self.options.precision,
        }

    def predict_split(
        self,
        split: Split,
        indices: Sequence[int],
        k: int = 5,
        *,
        options: EvalOptions | None = None,
        progress: bool | None = False,
    ) -> list[dict]:
        """Results for images ``indices`` of a Split: ``{"index", "true", "top", "correct"}``."""
        idx = np.asarray(list(indices), dtype=np.int64)
        n = len(split)
        bad = [int(i) for i in idx if i < 0 or i >= n]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the split has {n} images (0..{n - 1})")
        probs = self.probabilities(split.images[idx], options, progress)
        tops = self.top_k(probs, k)
        return [
            {
                "index": int(i),
                "true": self.classes[int(split.labels[i])],
                "top": _top_json(t),
                "correct": t[0][0] == self.classes[int(split.labels[i])],
            }
            for i, t in zip(idx, tops)
        ]


class OnnxPredictor(_Predictions):
    """A model exported by ``cifar-resnet export --format onnx``, run by onnxruntime: no PyTorch model,
    no checkpoint. Class names, superclasses, normalisation and temperature come from the file's metadata
    (the model takes the uint8 images and returns calibrated probabilities, computed in fp32)."""

    def __init__(self, path: str | Path):
        try:  # an optional dependency: pip install 'cifar-resnet[onnx]'
            import onnxruntime
        except ImportError:
            raise ValueError(
                f"{path}: running an ONNX model needs onnxruntime: pip install 'cifar-resnet[onnx]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no such model file: {path}")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a foreign or corrupt file
            raise ValueError(f"{path} is not a readable ONNX model ({one_line(e, 160)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "cifar-resnet":
            raise ValueError(f"{path} was not exported by cifar-resnet (no class names in its metadata)")
        self.source = str(path)
        self.meta = {k: json.loads(v) for k, v in meta.items() if k != "producer"}
        self.classes = list(self.meta["classes"])
        self.image_size = int(self.meta.get("image_size", 32))
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
        return {
            "model": self.meta["model"],
            "num_classes": len(self.classes),
            "source": self.source,
            "checksum": self.meta.get("checkpoint_checksum"),
            "temperature": self.temperature,
            "format": "onnx",
            "epoch": self.meta.get("epoch"),
            "precision": "fp32",
        }

    def eval_options(self, overrides: EvalOverrides | None = None) -> EvalOptions:
        """One fp32 pass per image (the exported graph), ``batch_size`` images per call (default 256);
        ValueError for test-time augmentation or another precision."""
        asked = overrides or EvalOverrides()
        options = EvalOptions(
            tta=bool(asked.tta),
            tta_translate=asked.tta_translate or 0,
            batch_size=asked.batch_size or 256,
            precision="fp32" if asked.precision in (None, "auto") else asked.precision,
        )
        self._check(options)
        return options

    @staticmethod
    def _check(options: EvalOptions) -> None:
        if options.tta or options.tta_translate:
            raise ValueError("an exported model has no test-time augmentation; use the checkpoint for --tta")
        if options.precision != "fp32":
            raise ValueError(
                f"an exported model computes in fp32; use the checkpoint for --precision {options.precision}"
            )

    def probabilities(
        self, images: np.ndarray, options: EvalOptions | None = None, progress: bool | None = False
    ) -> torch.Tensor:
        """Calibrated probabilities (N, C) for (N, S, S, 3) uint8 images (no test-time augmentation)."""
        options = options or self.eval_options()
        self._check(options)
        images = np.ascontiguousarray(self._images(images), dtype=np.uint8)
        if len(images) == 0:
            return torch.zeros(0, len(self.classes))
        step = options.batch_size
        out = [self.session.run(None, {self.input: images[i : i + step]})[0] for i in range(0, len(images), step)]
        return torch.from_numpy(np.concatenate(out)).float()


def load_predictor(path: str | Path, device: str | torch.device = "auto") -> Predictor | OnnxPredictor:
    """A predictor for a checkpoint (``.pt``; in the precision its run was trained in) or an exported ONNX
    model (``.onnx``)."""
    if str(path).lower().endswith(".onnx"):
        return OnnxPredictor(path)
    return Predictor.from_checkpoint(path, device)
