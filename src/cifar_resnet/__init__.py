"""cifar-resnet: train, evaluate, inspect and serve ResNet classifiers on CIFAR-100 and CIFAR-10.

Everything the ``cifar-resnet`` command does is one import away::

    from cifar_resnet import TrainConfig, PRESETS, fit, load_data, create_model

The notebook's own API (``fit(epochs, train_dl, ...)``, ``evaluate``, ``plot_loss``, ``predict_image``,
``ResNet(3, 100)``) lives in :mod:`cifar_resnet.notebook`.
"""

from .augment import Augment
from .checkpoint import Checkpoint, CheckpointError, EpochRecord, RunDir, load_checkpoint
from .config import PRESETS, TrainConfig, get_preset
from .data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CifarData,
    DataError,
    Split,
    channel_stats,
    download,
    load_data,
    split_validation,
    subsample,
)
from .device import resolve_device
from .engine import EvalOptions, StepOptions, collect_logits, prepare_data
from .evaluate import evaluate_checkpoint
from .hub import export_hub, from_pretrained
from .inference import EvalData, EvalOverrides, Predictor, eval_options, run_checkpoint
from .interpret import Interpretation
from .loader import CifarLoader
from .lr_find import lr_find, lr_find_config
from .metrics import basic_metrics, compute_report
from .models import create_model, list_models, register_model
from .plots import plot_run
from .predict import DatasetImages, ImageFiles, predict
from .train import History, fit
from .version import __version__ as __version__  # re-exported

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "PRESETS",
    "Augment",
    "Checkpoint",
    "CheckpointError",
    "CifarData",
    "CifarLoader",
    "DataError",
    "DatasetImages",
    "EpochRecord",
    "EvalData",
    "EvalOptions",
    "EvalOverrides",
    "History",
    "ImageFiles",
    "Interpretation",
    "Predictor",
    "RunDir",
    "Split",
    "StepOptions",
    "TrainConfig",
    "basic_metrics",
    "channel_stats",
    "collect_logits",
    "compute_report",
    "create_model",
    "download",
    "eval_options",
    "evaluate_checkpoint",
    "export_hub",
    "fit",
    "from_pretrained",
    "get_preset",
    "list_models",
    "load_checkpoint",
    "load_data",
    "lr_find",
    "lr_find_config",
    "plot_run",
    "predict",
    "prepare_data",
    "register_model",
    "resolve_device",
    "run_checkpoint",
    "split_validation",
    "subsample",
]
