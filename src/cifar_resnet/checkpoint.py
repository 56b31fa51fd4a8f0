"""The checkpoint dict and every file of a run directory: one builder, one reader, one atomic write.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, loaded with
``torch.load(..., weights_only=True)``. It holds what rebuilds and uses the model (name and arguments,
classes, normalisation, config) and, in ``last.pt``, what resumes training exactly. :class:`Checkpoint`
is the only code that knows the dict's keys: :meth:`Checkpoint.of_model` lays one out,
:func:`load_checkpoint` reads one, :meth:`Checkpoint.replace` writes an updated copy with a new checksum.
:class:`RunDir` knows a run directory's files (``config.json``, ``history.json``, ``metrics.csv``,
``last.pt``, ``best.pt``, ...); each is written by :func:`atomic_write`, so no reader sees half a file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .config import TrainConfig, upgrade_config
from .console import one_line
from .model_folder import ModelFolderError, is_model_folder, read_folder, write_folder
from .models import create_model

__all__ = [
    "CSV_FIELDS",
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "EpochRecord",
    "RunDir",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "init_weights",
    "load_checkpoint",
    "payload_checksum",
    "unwrap",
]

FORMAT = "cifar-resnet/1"
REQUIRED = ("format", "model_name", "model_kwargs", "classes", "mean", "std", "model")
# what last.pt adds to the weights: enough to resume exactly ("partial": the epoch's progress when it was
# written inside an epoch, else None); a run with --drop-easy adds "example_loss", each image's last loss,
# an fp16 run "scaler", the loss scaler's state, and a budget run "budget_elapsed", the budget seconds it had used
TRAINING_STATE = ("optimizer", "scheduler", "rng", "partial")
OPTIONAL_STATE = ("example_loss", "scaler", "budget_elapsed")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked."""


# --------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``: a crash,
    a ``kill -9`` or an error never leaves half a file (the temporary file is removed). The file is
    flushed and fsynced before the rename and the folder after it, so that after a power loss ``path``
    is the old file or the new one, whole. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary files, for others to read too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


# --------------------------------------------------------------------------------------------------
# The checkpoint dict
# --------------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a ``torch.compile``d or DDP-wrapped model: save that, never the wrapper,
    so state_dict keys carry no ``_orig_mod.`` / ``module.`` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def payload_checksum(ckpt: dict) -> str:
    """SHA-256 over everything in a checkpoint but its ``checksum``: keys, tensors' dtype, shape and
    bytes, and every other value's JSON text, in a fixed order. A flipped byte anywhere in the weights,
    the optimizer state or the description changes it."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for k in sorted(value, key=str):
                digest.update(repr(k).encode())
                feed(value[k])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for v in value:
                feed(v)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed({k: v for k, v in ckpt.items() if k != "checksum"})
    return "sha256:" + digest.hexdigest()


class Checkpoint:
    """A checkpoint: the dict that is saved, behind named accessors. Build one with :meth:`of_model`, read
    one with :func:`load_checkpoint`, change one with :meth:`replace` (which renews the checksum)."""

    def __init__(self, data: dict, source: str = "checkpoint"):
        self._data = data
        self.source = source

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}: {self.model_name}, epoch {self.epoch})"

    @classmethod
    def of_model(
        cls, model: nn.Module, data, stats: tuple, run: dict, training_state: dict | None = None
    ) -> Checkpoint:
        """The checkpoint of ``model`` (built by ``create_model``, so it knows its name and arguments),
        trained on ``data`` (a :class:`~cifar_resnet.data.CifarData`: its classes, coarse classes and name)
        with the normalisation ``stats`` (``(mean, std)``). ``run``: ``{"config", "eval_split", "epoch",
        "history"}``, the run that made it (``config`` as a dict).

        ``training_state``: ``{"optimizer", "scheduler", "rng", "partial"}`` (and optionally ``scaler``,
        ``example_loss``) for a checkpoint that resumes (``last.pt``; ``partial``: how far into the epoch
        after ``epoch`` it was written, or None); without it the checkpoint is the weights and their
        description (``best.pt``)."""
        model = unwrap(model)
        mean, std = stats
        data = {
            "format": FORMAT,
            "model_name": model.model_name,
            "model_kwargs": model.model_kwargs,
            "classes": list(data.classes),
            "coarse_classes": list(data.coarse_classes) if data.coarse_classes else None,
            "dataset": data.name,
            "mean": list(mean),
            "std": list(std),
            "config": run["config"],
            "eval_split": run["eval_split"],
            "model": model.state_dict(),
            "epoch": run["epoch"],
            "history": run["history"],
            # where the run trained, and the weights it started from (--init): for its model card
            **{k: run[k] for k in ("machine", "init") if run.get(k)},
        }
        if training_state is not None:
            missing = [k for k in TRAINING_STATE if k not in training_state]
            if missing:
                raise ValueError(f"the training state lacks {', '.join(missing)}")
            data.update(training_state)
        data["checksum"] = payload_checksum(data)
        return cls(data)

    # -- what the model is ------------------------------------------------------------------------
    model_name = property(lambda self: self._data["model_name"])
    model_kwargs = property(lambda self: dict(self._data["model_kwargs"]))
    state_dict = property(lambda self: self._data["model"])
    classes = property(lambda self: list(self._data["classes"]))
    coarse_classes = property(lambda self: list(self._data.get("coarse_classes") or []) or None)
    num_classes = property(lambda self: len(self._data["classes"]))
    dataset = property(lambda self: self._data.get("dataset"))
    mean = property(lambda self: tuple(self._data["mean"]))
    std = property(lambda self: tuple(self._data["std"]))
    checksum = property(lambda self: self._data.get("checksum"))
    is_best = property(lambda self: bool(self._data.get("best")))

    # -- the run that made it ---------------------------------------------------------------------
    eval_split = property(lambda self: self._data.get("eval_split"))
    epoch = property(lambda self: int(self._data.get("epoch", 0)))
    history = property(lambda self: list(self._data.get("history") or []))

    @property
    def config_dict(self) -> dict:
        """The run's configuration as saved (mapped to today's fields), ``{}`` when none was saved."""
        return upgrade_config(self._data.get("config") or {})

    @property
    def config(self) -> TrainConfig | None:
        """The run's :class:`TrainConfig`, or None when the checkpoint holds none."""
        return TrainConfig.from_dict(self._data["config"]) if self._data.get("config") else None

    @property
    def data_source(self) -> str | None:
        """The ``--data`` the run was trained on."""
        return self.config_dict.get("data") or None

    @property
    def image_size(self) -> int:
        """The side in px of the square images the model was trained on (32 unless ``--image-size`` said)."""
        return int(self.config_dict.get("image_size", 32))

    @property
    def precision(self) -> str:
        """The precision the run trained and evaluated in (``auto``, ``fp32``, ``bf16``, ``fp16``; to be
        resolved for a device); fp32 for a checkpoint without a config."""
        return self.config_dict.get("precision", "fp32")

    @property
    def tta(self) -> tuple[bool, int]:
        """``(flip, translate)``: the test-time augmentation the run evaluated with (0 translate for runs
        from before it existed)."""
        config = self.config_dict
        return bool(config.get("tta", False)), int(config.get("tta_translate", 0))

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0: not calibrated)."""
        return float(self._data.get("temperature") or 1.0)

    calibration = property(lambda self: self._data.get("calibration"))
    machine = property(lambda self: self._data.get("machine"))
    init = property(lambda self: self._data.get("init"))

    # -- what a resumed run continues from ---------------------------------------------------------
    optimizer_state = property(lambda self: self._data["optimizer"])
    scheduler_state = property(lambda self: self._data["scheduler"])
    rng_state = property(lambda self: self._data["rng"])
    scaler_state = property(lambda self: self._data.get("scaler"))
    partial = property(lambda self: self._data.get("partial"))
    example_loss = property(lambda self: self._data.get("example_loss"))
    budget_elapsed = property(lambda self: float(self._data.get("budget_elapsed") or 0.0))

    @property
    def resumable(self) -> bool:
        return all(k in self._data for k in ("optimizer", "scheduler", "rng", "epoch"))

    # -- using and writing it ----------------------------------------------------------------------
    def build_model(self, *, expect_model: str | None = None, expect_classes: int | None = None) -> nn.Module:
        """Rebuild the model the checkpoint describes and load its weights (strictly)."""
        name, source = self.model_name, self.source
        if expect_model is not None and expect_model != name:
            raise CheckpointError(f"{source} holds a {name} model, not {expect_model}")
        if expect_classes is not None and expect_classes != self.num_classes:
            raise CheckpointError(
                f"{source} was trained for {self.num_classes} classes, but the data has {expect_classes}"
            )
        model = create_model(name, **self.model_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{source}: weights do not fit {name}: {one_line(e)}") from None
        return model

    def replace(self, **changes: Any) -> Checkpoint:
        """A copy with ``changes`` (e.g. ``temperature=1.4, calibration={...}``) and a renewed checksum."""
        data = {k: v for k, v in self._data.items() if k != "checksum"}
        data.update(changes)
        data["checksum"] = payload_checksum(data)
        return Checkpoint(data, self.source)

    def weights_only(self) -> Checkpoint:
        """The checkpoint without its training state (what ``best.pt`` holds), marked as the best."""
        data = {k: v for k, v in self._data.items() if k not in (*TRAINING_STATE, *OPTIONAL_STATE, "checksum")}
        data["best"] = True
        data["checksum"] = payload_checksum(data)
        return Checkpoint(data, self.source)

    def save(self, path: str | Path) -> Path:
        """Write it to ``path`` atomically."""
        return atomic_save(self._data, path)

    def to_dict(self) -> dict:
        """The dict that is saved (not a copy: do not change it, use :meth:`replace`)."""
        return self._data

    # -- as a model folder (model.safetensors + config.json, read without pickle) -------------------
    def write_folder(self, folder: str | Path, dtype: str = "fp32", extra: dict | None = None) -> dict:
        """Write the weights and what uses them (no training state) into ``folder`` as a model folder, with
        ``extra`` entries in its config.json; returns the config as written."""
        d = self._data
        config = {
            "library_name": "cifar-resnet",
            "architecture": self.model_name,
            "model_args": self.model_kwargs,
            "num_classes": self.num_classes,
            "label_names": self.classes,
            "coarse_label_names": self.coarse_classes,
            "pretrained_cfg": {"mean": list(self.mean), "std": list(self.std)},
            "temperature": self.temperature,
            "calibration": self.calibration,
            "tta": {"flip": self.tta[0], "translate": self.tta[1]},
            "dataset": self.dataset,
            "eval_split": self.eval_split,
            "epoch": self.epoch,
            "history": [{k: v for k, v in r.items() if k != "lrs"} for r in self.history],
            "training": d.get("config") or {},
            "machine": self.machine,
            "init": self.init,
            **(extra or {}),
        }
        return write_folder(folder, self.state_dict, config, dtype)

    @classmethod
    def of_folder(cls, folder: str | Path) -> Checkpoint:
        """The checkpoint a model folder describes (weights only, as ``best.pt``); no pickle is read."""
        try:
            tensors, config = read_folder(folder)
        except ModelFolderError as e:
            raise CheckpointError(str(e)) from None
        where = Path(folder) / "config.json"
        names, args = config.get("label_names"), config.get("model_args")
        cfg = config.get("pretrained_cfg") or {}
        if not isinstance(names, list) or not isinstance(args, dict) or not {"mean", "std"} <= set(cfg):
            raise CheckpointError(f"{where} lacks label_names, model_args or pretrained_cfg's mean and std")
        for what, n in (
            ("num_classes", config.get("num_classes")),
            ("model_args' num_classes", args.get("num_classes")),
        ):
            if n is not None and n != len(names):
                raise CheckpointError(f"{where} is inconsistent: {what} is {n} but it names {len(names)} classes")
        data = {
            "format": FORMAT,
            "model_name": config.get("architecture"),
            "model_kwargs": args,
            "classes": names,
            "coarse_classes": config.get("coarse_label_names"),
            "dataset": config.get("dataset"),
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "config": config.get("training") or {},
            "eval_split": config.get("eval_split"),
            "model": tensors,
            "epoch": int(config.get("epoch") or 0),
            "history": list(config.get("history") or []),
            "best": True,
            **{k: config[k] for k in ("temperature", "calibration", "machine", "init") if config.get(k) is not None},
        }
        data["checksum"] = payload_checksum(data)
        return cls(data, str(folder))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, resumable: bool = False
) -> Checkpoint:
    """Load and validate a checkpoint written by this package (never unpickles arbitrary objects), or a
    model folder (``model.safetensors`` and ``config.json``: no pickle at all, see :meth:`Checkpoint.of_folder`).

    ``resumable``: also require the training state that ``last.pt`` carries (a ``best.pt`` is refused)."""
    path = Path(path)
    if path.is_dir():
        if not is_model_folder(path):
            raise CheckpointError(f"{path} is a directory, neither a checkpoint file nor a model folder")
        if resumable:
            raise CheckpointError(f"{path} is a model folder (weights only); resume from a run's last.pt")
        return Checkpoint.of_folder(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({one_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-resnet checkpoint (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    # checkpoints from before the checksum existed have none and load as they are
    if "checksum" in data and payload_checksum(data) != data["checksum"]:
        raise CheckpointError(f"{path} is corrupt: its content does not match its checksum")
    ckpt = Checkpoint(data, str(path))
    if resumable:
        if not ckpt.resumable:
            raise CheckpointError(f"{path} holds weights only (a best.pt?); resume from last.pt")
        if not data.get("config"):
            raise CheckpointError(f"{path} holds no training configuration")
    return ckpt


def init_weights(model: nn.Module, init: Checkpoint, classes: list[str]) -> dict:
    """Load ``init``'s weights into ``model`` to fine-tune them: every tensor must fit, but for the
    classifier's (the model's last linear layer), which is kept only when ``init`` was trained on the same
    ``classes`` and is left as initialised otherwise. Returns what the run records of where it started."""
    model = unwrap(model)
    name = getattr(model, "model_name", type(model).__name__)
    if init.model_name != name:
        raise CheckpointError(f"--init: {init.source} holds a {init.model_name} model, but the run trains {name}")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = {f"{linears[-1]}.{k}" for k in ("weight", "bias")} if linears else set()
    new_head = list(init.classes) != list(classes)
    weights = {}
    for key, tensor in model.state_dict().items():
        given = init.state_dict.get(key)
        if given is None:
            raise CheckpointError(f"--init: {init.source} has no {key}: not weights of this {name}")
        if key in head and new_head:
            continue
        if given.shape != tensor.shape:
            raise CheckpointError(
                f"--init: {init.source}'s {key} is {tuple(given.shape)} but the run's {name} needs "
                f"{tuple(tensor.shape)} (other model arguments?)"
            )
        weights[key] = given
    model.load_state_dict(weights, strict=False)
    return {
        "source": init.source,
        "checksum": init.checksum,
        "model": init.model_name,
        "dataset": init.dataset,
        "classes": init.num_classes,
        "classifier": "new" if new_head else "kept",
    }


# --------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a run: a line of ``history.json`` and of ``metrics.csv``, an item of a checkpoint's
    history. Records are kept as plain dicts (:meth:`to_dict`) in files and checkpoints; this class is
    their one definition."""

    epoch: int
    lr: float  # the last step's learning rate
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    seconds: float  # the epoch's wall time, training and evaluation
    train_seconds: float  # training time so far, without evaluation: the clock of time-to-accuracy
    images_per_s: float
    train_images: int
    train_size: int  # the side of the training images (progressive resizing)
    eval_tta: str  # how the epoch was evaluated: none, flip, translate1, flip+translate1
    eval_split: str = "val"
    progress: float = 0.0  # the share of the learning-rate schedule done at the epoch's end: 1.0 at the last
    lrs: list[float] = dataclasses.field(default_factory=list, repr=False)  # every step's, in last.pt only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EpochRecord:
        """A record of ``history.json`` or a checkpoint's history; fields that older runs did not write
        (``train_images``, ``train_size``, ``eval_tta``) are 0 or ``""``."""
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {
            "train_images": 0,
            "train_size": 0,
            "eval_tta": "",
            "images_per_s": 0.0,
            "seconds": 0.0,
            "train_seconds": 0.0,
        }
        return cls(**{**defaults, **{k: v for k, v in d.items() if k in names}})


# the columns of metrics.csv: every field but the per-step learning rates and the split's name
CSV_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord) if f.name not in ("lrs", "eval_split"))


class RunDir:
    """The files of one run directory: the only code that knows their names and formats."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def default(preset: str, model: str, root: str | Path = "runs") -> RunDir:
        """Where ``cifar-resnet train`` writes a run when no ``--out`` is given: ``runs/<preset>-<model>``."""
        return RunDir(Path(root) / f"{preset}-{model}")

    @staticmethod
    def of_checkpoint(checkpoint: str | Path) -> RunDir:
        """The run directory a checkpoint file lies in."""
        return RunDir(Path(checkpoint).resolve().parent)

    config_json = property(lambda self: self.path / "config.json")
    history_json = property(lambda self: self.path / "history.json")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    tensorboard = property(lambda self: self.path / "tensorboard")
    plots = property(lambda self: self.path / "plots")
    interpret = property(lambda self: self.path / "interpret")
    reliability_png = property(lambda self: self.path / "reliability.png")
    skipped_files = property(lambda self: self.path / "skipped-files.txt")

    def create(self) -> RunDir:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_json, json.dumps(config, indent=1) + "\n")

    def write_skipped(self, skipped: tuple[tuple[str, str], ...]) -> RunDir:
        """``skipped-files.txt``: each file of the data that could not be used and why, one a line (none:
        no file)."""
        if skipped:
            atomic_write_text(self.skipped_files, "".join(f"{file}\t{why}\n" for file, why in skipped))
        return self

    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        """``last.pt`` alone (a checkpoint written inside an epoch)."""
        ckpt.save(self.last)

    def write_epoch(self, ckpt: Checkpoint, *, best: bool) -> None:
        """After an epoch: ``best.pt`` when ``best`` (the checkpoint without its training state),
        ``last.pt`` (all of it), then ``history.json`` and ``metrics.csv`` from its history."""
        if best:
            ckpt.weights_only().save(self.best)
        ckpt.save(self.last)
        self.write_history(ckpt.history)

    def write_history(self, records: list[dict]) -> None:
        # the per-step learning rates stay in last.pt: history.json is one line of numbers per epoch
        slim = [{k: v for k, v in r.items() if k != "lrs"} for r in records]
        atomic_write_text(self.history_json, json.dumps(slim, indent=1) + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in slim:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def read_history(self) -> tuple[list[dict], dict]:
        """The per-epoch records and the config of the run, readable while the run is in progress.

        ``history.json`` gives the records (it is replaced atomically after each epoch); the per-step
        learning rates it leaves out are taken from ``last.pt`` when that is readable and covers them.
        """
        run = self.path
        if not run.is_dir():
            raise ValueError(f"{run} is not a run directory" + (" (it is a file)" if run.exists() else ""))
        if not self.history_json.is_file():
            raise ValueError(f"{run} is not a run directory (no history.json; has the first epoch finished?)")
        try:
            records = json.loads(self.history_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.history_json}: unreadable ({one_line(e)})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) and "epoch" in r for r in records):
            raise ValueError(f"{self.history_json}: not a list of per-epoch records")
        if not records:
            raise ValueError(f"{self.history_json}: no epoch has finished yet")
        config = {}
        if self.config_json.is_file():
            try:
                config = json.loads(self.config_json.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                config = {}
        if self.last.is_file():
            try:
                lrs = {r["epoch"]: r.get("lrs") for r in load_checkpoint(self.last).history}
            except CheckpointError:  # being replaced, or foreign: the per-epoch lr is still plotted
                lrs = {}
            if all(lrs.get(r["epoch"]) for r in records):
                records = [{**r, "lrs": lrs[r["epoch"]]} for r in records]
        return records, config
