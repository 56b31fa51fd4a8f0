"""The checkpoint as one object: old configs (``amp``/``cpu_amp``) still load, with the right precision, and
evaluate; :meth:`Checkpoint.replace` renews the checksum; and no module but ``checkpoint.py`` reads the
checkpoint's dict by its keys."""

import ast
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_resnet import TrainConfig, evaluate_checkpoint, fit, load_checkpoint
from cifar_resnet.checkpoint import OPTIONAL_STATE, REQUIRED, TRAINING_STATE, CheckpointError
from cifar_resnet.config import upgrade_config

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src" / "cifar_resnet"

TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "epochs": 1,
    "batch_size": 50,
    "eval_batch_size": 40,
    "optimizer": "sgd",
    "lr": 0.05,
    "grad_clip": 0.0,
    "device": "cpu",
    "val_split": 100,
}

# what ``amp`` and ``cpu_amp`` meant: cpu_amp decided on the CPU, where every such run was made
OLD_FLAGS = {
    (amp, cpu_amp): {"off": "fp32", "on": "bf16", "auto": "auto"}[cpu_amp]
    for amp, cpu_amp in itertools.product((True, False), ("off", "on", "auto"))
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic):
    """A tiny run in fp32, trained once for the module, from an .npz file (so the checkpoint names its data)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    data = synthetic(n_train=300, n_val=0)
    npz = tmp / "d.npz"
    np.savez(npz, x_train=data.train.images, y_train=data.train.labels)
    fit(TrainConfig(**TINY, data=str(npz), precision="fp32"), None, tmp / "run", log=None, progress=False)
    return tmp / "run"


@pytest.mark.parametrize("amp, cpu_amp", sorted(OLD_FLAGS))
def test_old_style_configs_load_with_the_right_precision(amp, cpu_amp):
    old = {**TINY, "amp": amp, "cpu_amp": cpu_amp}  # as config.json was written before --precision
    assert "precision" not in old
    config = TrainConfig.from_dict(old)
    assert config.precision == OLD_FLAGS[amp, cpu_amp]
    assert upgrade_config(old) == {**TINY, "precision": OLD_FLAGS[amp, cpu_amp]}
    assert "amp" in old and "cpu_amp" in old  # the caller's dict is left as it was
    # one field alone: the other as its old default (amp on, cpu_amp off)
    assert TrainConfig.from_dict({"cpu_amp": cpu_amp}).precision == OLD_FLAGS[True, cpu_amp]
    assert TrainConfig.from_dict({"amp": amp}).precision == "fp32"


@pytest.mark.parametrize("amp, cpu_amp", [(True, "on"), (False, "off"), (True, "auto")])
def test_a_checkpoint_with_an_old_config_loads_and_evaluates(run, tmp_path, amp, cpu_amp):
    ckpt = load_checkpoint(run / "best.pt")
    config = {k: v for k, v in ckpt.to_dict()["config"].items() if k != "precision"}
    old = ckpt.replace(config={**config, "amp": amp, "cpu_amp": cpu_amp})
    old.save(tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert "precision" not in loaded.to_dict()["config"]
    expected = OLD_FLAGS[amp, cpu_amp]
    assert loaded.precision == expected and loaded.config.precision == expected
    assert loaded.config_dict["precision"] == expected and "cpu_amp" not in loaded.config_dict
    report = evaluate_checkpoint(loaded.replace(temperature=1.0), device="cpu", progress=False)  # as training: raw
    resolved = {"auto": report["precision"]}.get(expected, expected)  # auto: bf16 or fp32 as the CPU has AMX
    assert report["precision"] == resolved and report["n"] == 100 and report["split"] == "val"
    if expected == "fp32":  # the run's own numbers, as training computed them in fp32
        record = ckpt.history[-1]
        assert report["loss"] == pytest.approx(record["val_loss"], abs=1e-6)


def test_replace_renews_the_checksum(run, tmp_path):
    ckpt = load_checkpoint(run / "best.pt")
    replaced = ckpt.replace(temperature=1.5, calibration={"split": "val", "n": 100})
    assert replaced.temperature == 1.5 and replaced.calibration == {"split": "val", "n": 100}
    assert replaced.checksum != ckpt.checksum and ckpt.temperature != 1.5  # the original is unchanged
    replaced.save(tmp_path / "replaced.pt")
    loaded = load_checkpoint(tmp_path / "replaced.pt")  # validates
    assert loaded.checksum == replaced.checksum and loaded.temperature == 1.5
    # a change made behind the checksum's back is refused
    tampered = load_checkpoint(tmp_path / "replaced.pt").to_dict()
    tampered["temperature"] = 1.25
    torch.save(tampered, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="tampered.pt is corrupt"):
        load_checkpoint(tmp_path / "tampered.pt")


# ------------------------------------------------------------------------------------------------
# only checkpoint.py knows the checkpoint's keys
# ------------------------------------------------------------------------------------------------

# every key of the checkpoint dict
CHECKPOINT_KEYS = frozenset(
    {
        *REQUIRED,
        *TRAINING_STATE,
        *OPTIONAL_STATE,
        "coarse_classes",
        "dataset",
        "config",
        "eval_split",
        "epoch",
        "history",
        "checksum",
        "temperature",
        "calibration",
        "best",
    }
)
# names a checkpoint (or its dict) goes by
CHECKPOINT_NAMES = re.compile(r"(^|_)(ckpt|checkpoint|state|payload)s?$")
# keys that nothing but a checkpoint has, whatever the dict is called (reports and records have "temperature",
# "eval_split", "model" or "epoch" too)
ONLY_CHECKPOINT_KEYS = frozenset(
    {"calibration", "checksum", "model_kwargs", "model_name", "coarse_classes", "example_loss"}
)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):  # ckpt["partial"]["step"]: the outer name
        return _name(node.value)
    return ""


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _get_key(node: ast.AST) -> tuple[str | None, ast.AST | None]:
    """``("key", receiver)`` of ``receiver.get("key", ...)`` (or ``pop``/``setdefault``)."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.args
        and node.func.attr in ("get", "pop", "setdefault")
    ):
        return _string(node.args[0]), node.func.value
    return None, None


def checkpoint_dict_reads(source: str) -> list[str]:
    """The places in ``source`` that read or write a checkpoint's dict by its keys, or load a checkpoint file
    without :func:`load_checkpoint`:

    * any key of the checkpoint on a name a checkpoint goes by: ``ckpt["classes"]``, ``state.get("epoch")``;
    * a key only a checkpoint has, on any dict: ``payload["model_name"]``, ``body["checksum"] = ...``;
    * a temperature stored into a dict by hand (``body["temperature"] = t``) or read with a default
      (``x.get("temperature") or 1.0``: a copy of :attr:`Checkpoint.temperature`);
    * ``torch.load``.
    """
    found = []
    tree = ast.parse(source)
    defaulted = {id(v) for node in ast.walk(tree) if isinstance(node, ast.BoolOp) for v in node.values[:-1]}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and _name(node.func.value) == "torch"
        ):
            found.append(f"line {node.lineno}: torch.load")
            continue
        if isinstance(node, ast.Subscript):
            key, receiver = _string(node.slice), node.value
        else:
            key, receiver = _get_key(node)
        if key is None or key not in CHECKPOINT_KEYS:
            continue
        subscript = isinstance(node, ast.Subscript)
        if (
            CHECKPOINT_NAMES.search(_name(receiver))
            or (subscript and key in ONLY_CHECKPOINT_KEYS)
            or (key == "temperature" and (subscript and isinstance(node.ctx, ast.Store) or id(node) in defaulted))
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_sees_a_checkpoint_dict_being_read():
    bad = """
ckpt["classes"]
checkpoint.get("epoch")
state["partial"]["step"]
self.ckpt.get("coarse_classes")
body["temperature"] = t
float(anything.get("temperature") or 1.0)
data = torch.load(path, weights_only=True)
"""
    assert len(checkpoint_dict_reads(bad)) == 7, checkpoint_dict_reads(bad)
    fine = """
ckpt.classes
ckpt.temperature
state["momentum_buffer"]
parse["error"]
records[-1]["epoch"]
rec["eval_split"]
self.meta["classes"]
report.get("temperature", 1.0)
info.get("temperature")
info.get("checksum")
"""
    assert checkpoint_dict_reads(fine) == []


def test_no_module_but_checkpoint_py_reads_the_checkpoint_dict():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "checkpoint.py" and path.parent == SRC:
            continue
        where = checkpoint_dict_reads(path.read_text())
        if where:
            found[str(path.relative_to(SRC))] = where
    assert not found, f"read the checkpoint through Checkpoint's accessors instead: {found}"
