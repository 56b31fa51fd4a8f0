"""A checkpoint as a file that runs without this package: ONNX (onnxruntime, any language) or
``torch.export`` (``.pt2``, PyTorch without the model's Python code).

The exported model takes uint8 NHWC ``(N, S, S, 3)`` RGB images (``--input uint8``) or float NCHW in [0, 1]
(``--input float``), S = 32 or the run's ``--image-size``, with a dynamic batch axis; normalisation,
network and calibration temperature are inside, it returns ``probabilities`` (N, C), and it computes in
fp32. Class names, superclasses,
normalisation, temperature, input layout and the checkpoint's SHA-256 travel in the file's metadata.
Every export is run on real images of the run's data and compared with the checkpoint run by PyTorch in
fp32; a probability 1e-4 or more apart refuses it, and nothing is left on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .inference import EvalData, Predictor, resolve_split
from .metrics import fine_to_coarse
from .model_folder import WEIGHTS, sha256_file

__all__ = ["FORMATS", "INPUTS", "ExportReport", "export_model"]

FORMATS = ("onnx", "pt2")
INPUTS = ("uint8", "float")
TOLERANCE = 1e-4
CHECK_IMAGES = 256


class Deployable(nn.Module):
    """The network with its input conversion, normalisation and temperature: images in, probabilities out."""

    def __init__(self, model: nn.Module, mean, std, temperature: float, uint8_nhwc: bool):
        super().__init__()
        self.model = model
        self.uint8_nhwc = uint8_nhwc
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale + shift, with x in pixel units (uint8) or [0, 1] (float)
        unit = 255.0 if uint8_nhwc else 1.0
        self.register_buffer("scale", (1.0 / (unit * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() if self.uint8_nhwc else images.float()
        x = x * self.scale + self.shift
        return (self.model(x) * self.inv_temperature).softmax(dim=1)


@dataclass
class ExportReport:
    path: Path
    format: str
    input: str
    max_abs_diff: float  # largest |p_exported - p_pytorch| over the check images
    images_checked: int
    check_split: str  # the split of the run's data the check images came from
    bytes: int
    precision: str = "fp32"  # of the exported graph and of the PyTorch forward it was checked against

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def _metadata(predictor: Predictor, checkpoint: Path, input_kind: str) -> dict[str, object]:
    ckpt = predictor.ckpt
    mapping, coarse_names = fine_to_coarse(predictor.classes, ckpt.coarse_classes)
    return {
        "model": ckpt.model_name,
        "model_kwargs": ckpt.model_kwargs,
        "classes": predictor.classes,
        "coarse_classes": list(coarse_names) if coarse_names else None,
        "superclasses": predictor.superclasses if mapping is not None else None,
        "mean": list(predictor.mean),
        "std": list(predictor.std),
        "temperature": predictor.temperature,
        "input": "uint8_nhwc" if input_kind == "uint8" else "float01_nchw",
        "image_size": predictor.image_size,
        "output": "probabilities",
        "precision": "fp32",
        # of the checkpoint file, or of a model folder's weights
        "checkpoint_sha256": sha256_file(checkpoint if checkpoint.is_file() else checkpoint / WEIGHTS),
        "checkpoint_checksum": ckpt.checksum,
        "epoch": ckpt.epoch,
        "exporter": f"cifar-resnet (torch {torch.__version__})",
    }


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    input_kind: str = "uint8",
    source: EvalData | None = None,
    log=print,
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` as ``fmt`` ("onnx" or "pt2"), check it on up to 256 real images of
    the split ``source`` names (default: the run's own data and evaluation split) and keep it only when
    every probability is within 1e-4 of PyTorch's in fp32."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use onnx or pt2")
    if input_kind not in INPUTS:
        raise ValueError(f"unknown input kind {input_kind!r}; use uint8 or float")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and out.is_dir():
        raise ValueError(f"{out} is a directory; give the file to write")
    # the exported graph computes in fp32, so it is checked against PyTorch in fp32 (whatever the run
    # trained in: a bf16 forward differs from fp32 by far more than the tolerance)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", precision="fp32")
    source = source or EvalData()
    split_name, images_split, _ = resolve_split(predictor.ckpt, source.load(predictor.ckpt), source.split)
    images = images_split.images[:CHECK_IMAGES]
    expected = predictor.probabilities(images).numpy()  # the package's own path: loader + model + temperature

    wrapper = Deployable(
        predictor.model.float().eval(),
        predictor.mean,
        predictor.std,
        predictor.temperature,
        uint8_nhwc=input_kind == "uint8",
    ).eval()
    inputs = (
        torch.from_numpy(images)
        if input_kind == "uint8"
        else torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
    )
    meta = _metadata(predictor, checkpoint, input_kind)
    diff = _write_checked(wrapper, inputs, expected, out, fmt, meta)
    report = ExportReport(out, fmt, input_kind, diff, len(images), split_name, out.stat().st_size)
    if log:
        log(
            f"wrote {out} ({report.bytes / 1e6:.1f} MB, {fmt}, {input_kind} input); checked on {len(images)} "
            f"{split_name} images: largest probability difference to PyTorch (fp32) {diff:.1e}"
        )
    return report


def _write_checked(
    wrapper: nn.Module, inputs: torch.Tensor, expected: np.ndarray, out: Path, fmt: str, meta: dict
) -> float:
    """Export ``wrapper`` as ``fmt`` under a temporary name beside ``out``, run the file on ``inputs`` and
    rename it to ``out`` only when its probabilities are within the tolerance of ``expected``; returns
    the largest difference."""
    example = inputs[:2]
    batch = torch.export.Dim("batch", min=1, max=65536)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.tmp-", suffix=f".{fmt}", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # the exporters log and warn about their own internals (torchvision ops, deprecations): not the user's
        with torch.no_grad(), warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "torch._export"):
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                got = _export_onnx(wrapper, example, batch, tmp, meta, inputs.numpy())
            else:
                got = _export_pt2(wrapper, example, batch, tmp, meta, inputs)
        diff = float(np.abs(got - expected).max())
        if not diff < TOLERANCE:
            raise ValueError(
                f"the exported model differs from the checkpoint by {diff:.2e} in a probability "
                f"(limit {TOLERANCE:g}); nothing was written"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)  # an exporter's external weights, should it write them
    return diff


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_onnx(
    wrapper: nn.Module, example: torch.Tensor, batch, path: Path, meta: dict, check_inputs: np.ndarray
) -> np.ndarray:
    try:  # optional dependencies: pip install 'cifar-resnet[onnx]'
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ValueError(f"ONNX export needs {e.name}: pip install 'cifar-resnet[onnx]'") from None
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_shapes={"images": {0: batch}},
        verbose=False,
        external_data=False,
    )  # one self-contained file
    model = onnx.load(str(path))
    model.metadata_props.add(key="producer", value="cifar-resnet")
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": check_inputs})[0]


def _export_pt2(
    wrapper: nn.Module, example: torch.Tensor, batch, path: Path, meta: dict, check_inputs: torch.Tensor
) -> np.ndarray:
    program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, str(path), extra_files={"cifar_resnet.json": json.dumps(meta)})
    loaded = torch.export.load(str(path)).module()
    return loaded(check_inputs).detach().numpy()
