"""What defines a training run: one frozen dataclass and its named presets.

Each field of :class:`TrainConfig` carries its own help text (``dataclasses.field(metadata={"help": ...})``):
the CLI makes one ``--field-name`` flag per field from it, so the help a user reads and the field it sets
cannot drift apart. A config is saved as ``config.json`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .augment import Augment
from .console import parse_duration
from .device import PRECISIONS, legacy_precision, resolve_device, resolve_precision
from .images import SIZE, check_size

FAST_MIN_SIZE = 10  # the fast nets' 2x2 stem and three 2x2 poolings take 10 px to 1x1; 8 px to nothing

__all__ = [
    "CLIP_MODES",
    "FP32_PRESETS",
    "OPTIMIZERS",
    "PRESETS",
    "SCHEDULES",
    "TrainConfig",
    "get_preset",
    "preset_for_run",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov", "muon")
SCHEDULES = ("onecycle", "linear", "cosine", "constant")
CLIP_MODES = ("value", "norm")


def _field(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Saved as ``config.json`` and inside every checkpoint."""

    # data
    data: str = _field(
        "cifar100",
        "data source: your own images (a folder of class subfolders, optionally below train/, val/ and test/, "
        "or a CSV of path,label rows), an .npz file, an official archive (.tar.gz), an extracted folder, or "
        "cifar100/cifar10 (from the download cache, downloaded on first use)",
    )
    strict: bool = _field(
        False,
        "a file of your own images that cannot be used (not an image, truncated, unreadable) is an error, "
        "rather than skipped and listed in the run directory's skipped-files.txt",
    )
    image_size: int = _field(
        SIZE,
        "px your own images are made, square (the shorter side resized, the centre cropped); CIFAR's are 32. "
        "Progressive sizes are written for 32 px and scale with it; fast, fast_small and resnet* adapt to it, "
        "seed_resnet (the notebook's network) takes 32 only",
    )
    val_split: int = _field(
        5000,
        "images held out from training (stratified, seeded) for validation; 0 evaluates on the source's test split",
    )
    train_subset: int = _field(0, "train on a stratified subset of this many images (0: all)")
    # model
    model: str = _field("seed_resnet", "model name (see `cifar-resnet models`)")
    model_kwargs: dict = _field({}, "model arguments as JSON, e.g. '{\"widths\": [32, 64, 128]}'")
    whiten: bool = _field(
        False, "initialise the stem by patch whitening of training images (models that have it: fast, fast_small)"
    )
    init: str = _field(
        "",
        "start from these weights (a model folder or a checkpoint of the same model and arguments) and fine-tune "
        "them; a new classifier when the classes differ",
    )
    # optimisation
    epochs: int = _field(100, "number of epochs (with --budget: the most the plan may choose)")
    budget: str = _field(
        "none",
        "training-time budget (900s, 15m, 1h30m or none): the run times its own steps first and plans its "
        "epochs (up to --epochs), then plans again after each epoch from its own times, so that training and "
        "evaluation end at the budget",
    )
    plan: dict = _field(
        {},
        "the trace of a --budget run (every plan it made), as written into config.json and the checkpoints: "
        "given, the run makes the same decisions without timing anything (train --replay RUN_DIR reads it)",
    )
    batch_size: int = _field(128, "training batch size")
    optimizer: str = _field(
        "adam",
        "adam | adamw | sgd | nesterov | muon (Muon for the hidden convolution filters, Nesterov SGD for the rest)",
    )
    lr: float = _field(1e-3, "peak learning rate (OneCycleLR's max_lr)")
    momentum: float = _field(0.9, "SGD momentum (Adam uses its default betas)")
    muon_lr: float = _field(
        0.1, "--optimizer muon: peak step of the hidden convolution filters, relative to their norm"
    )
    muon_momentum: float = _field(0.6, "--optimizer muon: Nesterov momentum of the hidden convolution filters")
    weight_decay: float = _field(1e-5, "weight decay")
    schedule: str = _field(
        "onecycle", "per-batch schedule: onecycle | linear (warm-up then linear decay) | cosine | constant"
    )
    warmup: float = _field(0.3, "fraction of the steps spent warming up (OneCycleLR's pct_start)")
    grad_clip: float = _field(0.1, "gradient clipping threshold (0: off)")
    grad_clip_mode: str = _field("value", "value (clip each gradient element, the notebook's) | norm")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy loss")
    bn_bias_lr: float = _field(
        1.0,
        "--optimizer muon: learning-rate multiplier of the batch-norm biases, their "
        "weight decay divided by it (airbench's 64x; 1: as the other parameters)",
    )
    progressive: str = _field(
        "",
        "progressive resizing: SIZE:FRACTION,... trains the first epochs on whole "
        "images downscaled to SIZE px, e.g. '16:0.25,24:0.25': the first quarter of "
        "the epochs at 16 px, the next at 24, the rest at full size ('': off)",
    )
    drop_easy: float = _field(
        0.0,
        "train the late epochs on the examples the model still gets wrong: leave out "
        "this fraction of the training images, those of lowest loss in their last "
        "training step (0: off; one process only)",
    )
    drop_easy_from: float = _field(0.5, "--drop-easy: the fraction of the epochs after which it starts")
    # augmentation
    crop_pad: int = _field(4, "random crop from the image padded by this many pixels (reflect); 0 disables")
    flip: str = _field("random", "horizontal flips: none | random | alternating")
    cutout: int = _field(0, "side of the cut-out square in pixels (0: off)")
    # evaluation
    tta: bool = _field(False, "flip test-time augmentation when evaluating")
    tta_translate: int = _field(
        0,
        "translate test-time augmentation when evaluating: also the image shifted "
        "this many pixels up-left and down-right, with half the weight (airbench's "
        "TTA level 2; 0: off)",
    )
    tta_every_epoch: bool = _field(
        True,
        "evaluate every epoch with the test-time augmentation; with "
        "--no-tta-every-epoch the epochs before the last are evaluated "
        "plainly (one pass, not six) and only the last with --tta/--tta-translate",
    )
    eval_batch_size: int = _field(500, "evaluation batch size")
    # machinery
    seed: int = _field(0, "random seed (initialisation, split, shuffling, augmentation)")
    device: str = _field("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    precision: str = _field(
        "auto",
        "auto | fp32 | bf16 | fp16: autocast of training and evaluation; auto is bf16 on CUDA and on CPUs "
        "with bf16 instructions (AMX or AVX512_BF16), fp32 elsewhere; fp16 scales the loss",
    )
    channels_last: bool = _field(True, "channels_last memory format")
    compile: bool = _field(False, "torch.compile the model for training")
    sync_bn: bool = _field(
        False,
        "under torchrun: batch-norm statistics of the whole global batch "
        "(SyncBatchNorm), so that N processes compute what one process computes; "
        "no effect in one process",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.muon_lr > 0, f"muon learning rate must be > 0, got {self.muon_lr}"),
            (0 <= self.momentum < 1 and 0 <= self.muon_momentum < 1, "momenta must be in [0, 1)"),
            (self.tta_translate >= 0, f"tta translate must be >= 0, got {self.tta_translate}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"gradient clip must be >= 0, got {self.grad_clip}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 < self.warmup < 1, f"warm-up fraction must be in (0, 1), got {self.warmup}"),
            (self.val_split >= 0 and self.train_subset >= 0, "val split and train subset must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; use {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; use {', '.join(SCHEDULES)}"),
            (self.grad_clip_mode in CLIP_MODES, f"unknown clip mode {self.grad_clip_mode!r}; use value or norm"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}"),
            (self.bn_bias_lr > 0, f"bn bias lr multiplier must be > 0, got {self.bn_bias_lr}"),
            (
                0 <= self.drop_easy < 1 and 0 <= self.drop_easy_from < 1,
                f"drop easy and its start must be in [0, 1), got {self.drop_easy} and {self.drop_easy_from}",
            ),
            (self.bn_bias_lr == 1 or self.optimizer == "muon", "--bn-bias-lr applies to --optimizer muon only"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        parse_duration(self.budget)  # a one-line error naming --budget
        if self.plan and "decisions" in self.plan:
            if not (isinstance(self.plan["decisions"], list) and self.plan["decisions"]):
                raise ValueError("--plan: not a trace written by --budget (it has no decisions)")
        elif self.plan and not (isinstance(self.plan.get("epochs"), int) and self.plan["epochs"] >= 1):
            raise ValueError("--plan: not a plan written by --budget (it needs its number of epochs)")
        _ = self.augment  # builds an Augment, which validates the flip mode and sizes
        self._check_sizes()

    def _check_sizes(self) -> None:
        """ValueError for an image size or a progressive size the model cannot take."""
        check_size(self.image_size)  # a one-line error naming --image-size
        if self.image_size != SIZE and self.model == "seed_resnet":
            raise ValueError(
                f"--model seed_resnet (the notebook's network, its pooling fixed) takes {SIZE} px images only, "
                f"not --image-size {self.image_size}; fast, fast_small and resnet* adapt to the size"
            )
        smallest = min([size for size, _ in self.phases] + [self.image_size])
        if self.model.startswith("fast") and smallest < FAST_MIN_SIZE:
            scaled = f" (sizes written for {SIZE} px, scaled to --image-size {self.image_size})" * (
                self.image_size != SIZE
            )
            what = (
                f"--image-size {smallest}" if smallest == self.image_size else f"a --progressive size of {smallest} px"
            )
            raise ValueError(
                f"--model {self.model} needs images of at least {FAST_MIN_SIZE} px (a 2x2 stem, three 2x2 poolings), "
                f"got {what}{scaled if smallest != self.image_size else ''}"
            )
        _ = self.train_sizes

    @property
    def drop_start(self) -> int:
        """The first epoch (from 0) trained without the easiest ``drop_easy`` of the images (``epochs``: never)."""
        return round(self.epochs * self.drop_easy_from) if self.drop_easy else self.epochs

    @property
    def train_sizes(self) -> list[int | None]:
        """The training image side of each epoch (None: full size), from ``progressive``: phase i ends at
        epoch ``round(epochs * (f_1 + ... + f_i))``, so the schedule scales with ``epochs``."""
        sizes: list[int | None] = []
        total = 0.0
        for size, frac in self.phases:
            total += frac
            sizes += [size] * (round(self.epochs * total) - len(sizes))
        return sizes + [None] * (self.epochs - len(sizes))

    @property
    def phases(self) -> list[tuple[int, float]]:
        """``progressive`` as ``[(size, fraction), ...]``, the phases below full size in order; its sizes are
        written for 32 px images and scaled by ``image_size / 32`` (to an even number of px) for others."""
        phases = []
        for part in filter(None, (p.strip() for p in self.progressive.split(","))):
            try:
                size_text, frac_text = part.split(":")
                size, frac = int(size_text), float(frac_text)
            except ValueError:
                raise ValueError(f"progressive: expected SIZE:FRACTION,..., got {self.progressive!r}") from None
            if not (8 <= size <= 64 and 0 < frac < 1):
                raise ValueError(f"progressive: sizes must be 8-64 px and fractions in (0, 1), got {part!r}")
            phases.append((size if self.image_size == SIZE else 2 * round(size * self.image_size / SIZE / 2), frac))
        if sum(f for _, f in phases) >= 1:
            raise ValueError(f"progressive: the fractions {self.progressive!r} leave no epoch at full size")
        return phases

    @property
    def budget_seconds(self) -> float | None:
        """The training-time budget in seconds (None: no budget)."""
        return parse_duration(self.budget)

    @property
    def augment(self) -> Augment:
        return Augment(crop_pad=self.crop_pad, flip=self.flip, cutout=self.cutout)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of ``d`` (``config.json``, a checkpoint's config); one written before ``precision``
        existed has ``amp`` and ``cpu_amp`` instead, mapped by :func:`~cifar_resnet.device.legacy_precision`."""
        d = upgrade_config(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @staticmethod
    def help(name: str) -> str:
        """The help text of field ``name``."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}[name]


LEGACY_FIELDS = ("amp", "cpu_amp")


def upgrade_config(d: dict) -> dict:
    """``d`` with the fields of older releases mapped to today's (``amp`` + ``cpu_amp`` -> ``precision``)."""
    if not any(k in d for k in LEGACY_FIELDS):
        return d
    d = dict(d)
    d.pop("amp", None)  # see legacy_precision: on the CPU, where these runs were made, cpu_amp alone decided
    d.setdefault("precision", legacy_precision(d.pop("cpu_amp", "off")))
    return d


# Named presets. "seed" is the notebook's recipe (Adam, OneCycleLR per batch, max_lr 1e-3, gradient
# clipping by value 0.1, weight decay 1e-5, 100 epochs, 4 px reflect crop + flip) on its network.
PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(),
    # pytorch-cifar100's ResNet-18 recipe (SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs) with a one-cycle
    # schedule in place of its step schedule.
    "resnet18": TrainConfig(
        model="resnet18", optimizer="sgd", lr=0.1, weight_decay=5e-4, epochs=200, grad_clip=0.0, warmup=0.15
    ),
    # Time-to-accuracy, airbench-style (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
    # patch-whitened stem, Muon for the hidden filters and Nesterov SGD for the rest (as airbench94_muon),
    # a warm-up then linear decay, label smoothing 0.2, alternating flips, flip and 1-pixel translate
    # test-time augmentation, progressive resizing (a quarter of the epochs at 16 px, a quarter at 24: the
    # CIFAR-100 speedruns' trick), a plain evaluation after each epoch and the full TTA after the last.
    # "fast-cpu" below is the recipe on a CPU with bf16 instructions; "fast" is the same on a GPU, 16 epochs.
    # Evidence for each change: experiments/ablation-sweep.
    "fast": TrainConfig(
        model="fast",
        whiten=True,
        optimizer="muon",
        lr=2.0,
        momentum=0.9,
        muon_lr=0.1,
        muon_momentum=0.6,
        weight_decay=5e-4,
        schedule="linear",
        warmup=0.2,
        grad_clip=0.0,
        label_smoothing=0.2,
        crop_pad=2,
        flip="alternating",
        tta=True,
        tta_translate=1,
        tta_every_epoch=False,
        progressive="16:0.25,24:0.25",
        precision="auto",
        epochs=16,
        batch_size=512,
    ),
}
# the main job: at most 17 epochs, as many as 15 minutes of training allow on the machine (experiments/budget)
PRESETS["fast-cpu"] = dataclasses.replace(PRESETS["fast"], epochs=17, budget="15m")
# the main job where it trains in fp32 (a CPU without bf16 instructions, or --precision fp32): the recipe our
# TPE search found (experiments/fp32-recipe-search), a net at 0.28x the FLOPs with ReLU, half its epochs at
# 20 px, and up to 30 epochs so that the budget decides how many
PRESETS["fast-cpu-fp32"] = dataclasses.replace(
    PRESETS["fast-cpu"],
    model_kwargs={"widths": [32, 128, 128], "act": "relu"},
    progressive="20:0.5",
    lr=3.0,
    muon_lr=0.2,
    weight_decay=1.1e-4,
    label_smoothing=0.11,
    warmup=0.19,
    channels_last=False,
    precision="fp32",
    epochs=30,
)
# presets whose runs start from another preset where they train in fp32
FP32_PRESETS = {"fast-cpu": "fast-cpu-fp32"}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def preset_for_run(name: str, overrides: dict) -> tuple[str, TrainConfig]:
    """The preset a command line starts from, as ``(name, config)``: ``name``'s, or its fp32 recipe
    (:data:`FP32_PRESETS`) where the run will train in fp32 (``precision`` ``fp32``, or ``auto`` on a device
    where it resolves to fp32: a CPU without bf16 instructions), with the command's ``overrides`` on top,
    so that a field given on the command line always wins. ``PRESETS[name]`` itself never changes: a sweep
    or a script that names a preset gets the same run on every machine."""
    config = get_preset(name)
    fp32 = FP32_PRESETS.get(name)
    if fp32 is not None:
        precision = overrides.get("precision", config.precision)
        device = resolve_device(overrides.get("device", config.device))
        if resolve_precision(precision, device) == "fp32":
            name, config = fp32, get_preset(fp32)
            overrides = {**overrides, "precision": precision}  # auto stays auto: the run says why it is fp32
    return name, dataclasses.replace(config, **overrides)
