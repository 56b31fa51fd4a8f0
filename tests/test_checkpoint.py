"""The checkpoint as one object: what it keeps through its file, what the reader refuses, old configs
(``amp``/``cpu_amp``) that still load with the right precision and evaluate, :meth:`Checkpoint.replace`
renewing the checksum; and no module but ``checkpoint.py`` opens checkpoint files."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_resnet import TrainConfig, evaluate_checkpoint, fit, load_checkpoint
from cifar_resnet.checkpoint import REQUIRED, CheckpointError
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
# what a checkpoint keeps, what the reader refuses, and who reads the files
# ------------------------------------------------------------------------------------------------


def test_a_checkpoint_round_trips_through_its_file(run, tmp_path):
    last = load_checkpoint(run / "last.pt", resumable=True)
    last.save(tmp_path / "copy.pt")
    copy = load_checkpoint(tmp_path / "copy.pt", resumable=True)
    for name in ("model_name", "model_kwargs", "classes", "coarse_classes", "mean", "std", "epoch", "eval_split"):
        assert getattr(copy, name) == getattr(last, name), name
    assert copy.config == last.config and copy.config.data == last.data_source
    assert copy.history == last.history and copy.checksum == last.checksum
    assert copy.temperature == last.temperature and copy.calibration == last.calibration
    assert copy.state_dict.keys() == last.state_dict.keys()
    assert all(torch.equal(copy.state_dict[k], last.state_dict[k]) for k in last.state_dict)
    assert copy.resumable and copy.optimizer_state.keys() == last.optimizer_state.keys()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy.build_model().eval()(x), last.build_model().eval()(x))
    # best.pt: the same description and weights (one epoch: the best is the last), no training state
    best = load_checkpoint(run / "best.pt")
    assert best.is_best and not best.resumable and not last.is_best
    assert best.classes == last.classes and best.mean == last.mean and best.config == last.config
    assert all(torch.equal(best.state_dict[k], last.state_dict[k]) for k in last.state_dict)
    assert best.checksum == last.weights_only().checksum


class NotData:  # what a weights-only load must refuse to unpickle
    pass


def _without(ckpt, *keys) -> dict:
    return {k: v for k, v in ckpt.to_dict().items() if k not in (*keys, "checksum")}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda run, p: p.mkdir(), "is a directory"),
        (lambda run, p: None, "no such checkpoint"),
        (lambda run, p: p.write_bytes(b"\x00not a checkpoint"), "is not a readable checkpoint"),
        (lambda run, p: torch.save({"format": NotData()}, p), "is not a readable checkpoint"),
        (lambda run, p: torch.save({"format": "other/1"}, p), "is not a cifar-resnet checkpoint"),
        *(
            (lambda run, p, key=key: torch.save(_without(load_checkpoint(run / "best.pt"), key), p), f"lacks {key}")
            for key in REQUIRED
            if key != "format"
        ),
        (lambda run, p: torch.save({**load_checkpoint(run / "best.pt").to_dict(), "epoch": 7}, p), "is corrupt"),
    ],
)
def test_the_reader_refuses_what_is_not_a_whole_checkpoint(run, tmp_path, make, message):
    path = tmp_path / "x.pt"
    make(run, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_resume_and_rebuild_refuse_what_does_not_fit(run, tmp_path):
    with pytest.raises(CheckpointError, match="holds weights only"):
        load_checkpoint(run / "best.pt", resumable=True)
    torch.save(_without(load_checkpoint(run / "last.pt"), "config"), tmp_path / "no_config.pt")
    with pytest.raises(CheckpointError, match="holds no training configuration"):
        load_checkpoint(tmp_path / "no_config.pt", resumable=True)
    best = load_checkpoint(run / "best.pt")
    with pytest.raises(CheckpointError, match=f"holds a {best.model_name} model, not seed_resnet"):
        best.build_model(expect_model="seed_resnet")
    with pytest.raises(CheckpointError, match="was trained for 10 classes, but the data has 100"):
        best.build_model(expect_classes=100)
    wider = best.replace(model_kwargs={**best.model_kwargs, "stem_width": 16})
    with pytest.raises(CheckpointError, match="weights do not fit") as info:
        wider.build_model()
    assert "\n" not in str(info.value)


def test_only_checkpoint_py_opens_checkpoint_files():
    """The checkpoint's dict has one owner: no other module loads a checkpoint file, computes its
    checksum or reaches into a :class:`Checkpoint`'s dict (they use its accessors)."""
    found = {
        str(path.relative_to(SRC)): needle
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "checkpoint.py"
        for needle in ("torch.load(", "payload_checksum", "._data")
        if needle in path.read_text()
    }
    assert not found, f"read checkpoints through load_checkpoint and Checkpoint's accessors: {found}"
