"""A model folder's files: the weights as ``model.safetensors`` and their description as ``config.json``.

This is the format models are shared in (a Hugging Face Hub repository's layout, as timm and
``PyTorchModelHubMixin`` write it; the model card ``README.md`` beside them is written by
:mod:`cifar_resnet.hub`). Reading one runs no pickle: safetensors holds raw tensors behind a JSON header,
and ``config.json`` is JSON. ``config.json`` records the SHA-256 of ``model.safetensors``, so a changed
byte in the weights or their header is caught before anything is built from them. What the config's
keys mean to a checkpoint is :class:`cifar_resnet.checkpoint.Checkpoint`'s to know; this module writes
and reads the two files and checks that they belong together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CARD",
    "CONFIG",
    "DTYPES",
    "FOLDER_FORMAT",
    "WEIGHTS",
    "ModelFolderError",
    "is_model_folder",
    "read_folder",
    "sha256_file",
    "write_folder",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
FOLDER_FORMAT = "cifar-resnet-model/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ModelFolderError(ValueError):
    """A model folder that cannot be read, or whose files disagree."""


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a model's weights (``model.safetensors``)."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_folder(folder: str | Path, state_dict: dict[str, torch.Tensor], config: dict, dtype: str = "fp32") -> dict:
    """Write ``state_dict`` (floating tensors as ``dtype``: fp32 or bf16, integer buffers as they are) to
    ``folder/model.safetensors`` and ``config`` with the weights' dtype and SHA-256 to ``folder/config.json``;
    returns the config as written. ``folder`` must exist (a temporary folder the caller renames)."""
    if dtype not in DTYPES:
        raise ModelFolderError(f"unknown weights dtype {dtype!r}; use fp32 or bf16")
    folder = Path(folder)
    tensors = {
        k: (v.detach().to(DTYPES[dtype]) if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
        for k, v in state_dict.items()
    }
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = {
        "format": FOLDER_FORMAT,
        **config,
        "weights_dtype": dtype,
        "weights_sha256": sha256_file(folder / WEIGHTS),
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return config


def read_folder(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights (floating tensors as fp32) and the config of a model folder, after checking that the
    config is this package's and that the weights are the ones it names."""
    folder = Path(folder)
    weights, config_path = folder / WEIGHTS, folder / CONFIG
    if not folder.is_dir():
        raise ModelFolderError(f"no such model folder: {folder}")
    for path in (weights, config_path):
        if not path.is_file():
            raise ModelFolderError(f"{folder} is not a model folder: it has no {path.name}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{config_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise ModelFolderError(f"{config_path} is not a cifar-resnet model config (expected format {FOLDER_FORMAT!r})")
    if config.get("weights_sha256") != sha256_file(weights):
        raise ModelFolderError(
            f"{weights} is not the file {CONFIG} describes (its SHA-256 differs): changed or damaged"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights} is not a readable safetensors file ({e})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, config
