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
from .evaluate import basic_metrics, collect_logits, evaluate_model
from .loader import Augment, CifarLoader
from .models import create_model, list_models, register_model
from .train import PRESETS, History, TrainConfig, fit, get_preset, prepare_data, resolve_device

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "PRESETS",
    "Augment",
    "CheckpointError",
    "CifarData",
    "CifarLoader",
    "DataError",
    "History",
    "Split",
    "TrainConfig",
    "basic_metrics",
    "build_model",
    "channel_stats",
    "collect_logits",
    "create_model",
    "download",
    "evaluate_model",
    "fit",
    "get_preset",
    "list_models",
    "load_checkpoint",
    "load_data",
    "prepare_data",
    "register_model",
    "resolve_device",
    "split_validation",
    "subsample",
]
