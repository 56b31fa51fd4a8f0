"""cifar-resnet: train, evaluate, inspect and serve ResNet classifiers on CIFAR-100 and CIFAR-10.

Everything the ``cifar-resnet`` command does is one import away::

    from cifar_resnet import TrainConfig, PRESETS, fit, load_data, create_model
"""

from .checkpoint import CheckpointError, build_model, load_checkpoint
from .datasets import (
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
from .evaluate import basic_metrics, collect_logits, compute_report, evaluate_checkpoint, evaluate_model
from .interpret import Interpretation
from .loader import Augment, CifarLoader
from .lr_find import lr_find, lr_find_config
from .models import create_model, list_models, register_model
from .plots import plot_run
from .predict import Predictor
from .train import PRESETS, History, TrainConfig, fit, get_preset, prepare_data, resolve_device

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFAR100_COARSE_CLASSES", "PRESETS", "Augment", "CheckpointError",
    "CifarData", "CifarLoader", "DataError", "History", "Interpretation", "Predictor", "Split", "TrainConfig",
    "basic_metrics", "build_model", "channel_stats", "collect_logits", "compute_report", "create_model",
    "download", "evaluate_checkpoint", "evaluate_model", "fit", "get_preset", "list_models", "load_checkpoint",
    "load_data", "lr_find", "lr_find_config", "plot_run", "prepare_data", "register_model", "resolve_device",
    "split_validation", "subsample",
]
