"""Models, built by name: ``create_model(name, num_classes, **kwargs)``.

The registry (:mod:`.registry`) in timm's style: each family module decorates one function per model
with :func:`register_model`, and importing this package imports the families, so every model is
registered. Families: :mod:`.seed` (the notebook's network, ``seed_resnet``), :mod:`.resnet`
(``resnet18`` ... ``resnet152`` for 32x32 inputs) and :mod:`.fast` (airbench-style ``fast``,
``fast_small``). Each model carries ``model_name`` and ``model_kwargs`` so a checkpoint can rebuild it
with ``create_model(model_name, **model_kwargs)``.
"""

# Importing the family modules registers their models.
from . import fast, resnet, seed
from .fast import FastNet
from .registry import (
    create_model,
    is_model,
    list_models,
    model_default_kwargs,
    model_kwargs_names,
    register_model,
)
from .resnet import BasicBlock, Bottleneck, CifarResNet
from .seed import SeedResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "FastNet",
    "SeedResNet",
    "create_model",
    "fast",
    "is_model",
    "list_models",
    "model_default_kwargs",
    "model_kwargs_names",
    "register_model",
    "resnet",
    "seed",
]
