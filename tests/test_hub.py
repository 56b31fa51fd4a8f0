"""Model folders to share (model.safetensors, config.json, a model card): export, reload, every command on
a folder, no pickle on load, disagreeing files, fine-tuning from one (--init), and the Hub's push and pull."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cifar_resnet import from_pretrained, load_checkpoint
from cifar_resnet.checkpoint import CheckpointError, init_weights
from cifar_resnet.device import cpu_model
from cifar_resnet.hub import _command, export_hub
from cifar_resnet.inference import EvalData, Predictor, resolve_split
from cifar_resnet.model_folder import sha256_file
from cifar_resnet.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
FILES = {"model.safetensors", "config.json", "README.md"}


@pytest.fixture(scope="module")
def npz(tmp_path_factory, synthetic):
    data = synthetic(n_train=400, num_classes=10, n_val=0, shuffle=True)
    path = tmp_path_factory.mktemp("data") / "colours.npz"
    np.savez(path, x_train=data.train.images, y_train=data.train.labels.astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def run(npz, tmp_path_factory):
    """A small model trained on colour-coded images (calibrated, as every run is)."""
    from cifar_resnet.cli import main

    out = tmp_path_factory.mktemp("run")
    args = ["train", "--data", npz, "--val-split", "100", "--model", "fast_small", "--epochs", "2"]
    args += ["--batch-size", "50", "--out", out, "--no-progress", "--device", "cpu", "--precision", "fp32"]
    assert main([str(a) for a in args]) == 0
    return out


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "model"
    export_hub(run / "best.pt", out, log=None)
    return out


def _images(ckpt, n=64):
    _, split, _ = resolve_split(ckpt, EvalData().load(ckpt))
    return split.images[:n]


def test_export_writes_the_folder_that_reloads_to_the_same_probabilities(run, tmp_path, cli):
    out = tmp_path / "model"
    code, stdout, _ = cli("export", run / "best.pt", "--format", "hub", "--out", out, "--json")
    report = json.loads(stdout)
    assert code == 0 and {p.name for p in out.iterdir()} == FILES
    assert report["max_abs_diff"] <= 1e-6 and report["images_checked"] == 100 and report["check_split"] == "val"
    ckpt = load_checkpoint(run / "best.pt")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "fast_small" and config["num_classes"] == 10 == len(config["label_names"])
    assert config["label_names"] == ckpt.classes and config["temperature"] == ckpt.temperature != 1.0
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(ckpt.mean) and config["pretrained_cfg"]["std"] == list(ckpt.std)
    assert config["tta"] == {"flip": ckpt.tta[0], "translate": ckpt.tta[1]}
    assert config["source_checkpoint_sha256"] == sha256_file(run / "best.pt")
    assert config["weights_sha256"] == sha256_file(out / "model.safetensors") and config["weights_dtype"] == "fp32"
    assert config["machine"]["name"] == cpu_model() and config["cifar_resnet_version"]
    weights = load_file(out / "model.safetensors")  # plain tensors, the checkpoint's
    assert weights.keys() == ckpt.state_dict.keys()
    assert all(torch.equal(weights[k], v) for k, v in ckpt.state_dict.items())
    # the reloaded folder predicts as the checkpoint does, and evaluates to the card's figures
    images = _images(ckpt)
    got = from_pretrained(out, device="cpu").probabilities(images)
    want = Predictor.from_checkpoint(ckpt, "cpu").probabilities(images)
    assert torch.equal(got, want)
    code, stdout, _ = cli("evaluate", out, "--json", "--no-progress", "--device", "cpu")
    evaluated = json.loads(stdout)
    assert evaluated["top1"] == pytest.approx(config["metrics"]["top1"])
    assert evaluated["ece"] == pytest.approx(config["metrics"]["ece"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: cifar-resnet\n") and "pipeline_tag: image-classification" in card
    assert f"value: {100 * config['metrics']['top1']:.2f}" in card and "- image-classification" in card
    assert "cifar-resnet train --data colours.npz --val-split 100 --model fast_small --epochs 2" in card
    assert str(run) not in card and str(Path(run).parent) not in card  # no local paths published


def test_bf16_weights_are_half_the_size_and_checked_against_their_own_rounding(run, folder, tmp_path):
    report = export_hub(run / "best.pt", tmp_path / "bf16", dtype="bf16", log=None)
    assert report.max_abs_diff <= 1e-6 and report.dtype_diff > 0
    size, full = (tmp_path / "bf16" / "model.safetensors").stat().st_size, (folder / "model.safetensors").stat().st_size
    assert 0.45 < size / full < 0.55
    assert all(
        t.dtype in (torch.bfloat16, torch.int64) for t in load_file(tmp_path / "bf16" / "model.safetensors").values()
    )


def test_every_inference_command_takes_a_folder(folder, tmp_path, cli):
    image = tmp_path / "red.png"
    Image.fromarray(np.full((40, 40, 3), (200, 30, 30), np.uint8)).save(image)
    code, stdout, _ = cli("predict", folder, image, "--json", "--device", "cpu")
    assert code == 0 and json.loads(stdout)[0]["top"][0]["class"] in load_checkpoint(folder).classes
    code, _, _ = cli("interpret", folder, "--out", tmp_path / "interpret", "--no-progress", "--device", "cpu")
    assert code == 0 and (tmp_path / "interpret" / "report.json").is_file()
    pytest.importorskip("onnx", reason="needs the onnx extra")
    code, _, _ = cli("export", folder, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from fastapi.testclient import TestClient

    from cifar_resnet.serve import create_app

    with TestClient(create_app(folder, device="cpu")) as client:
        assert client.get("/classes").json()["classes"] == load_checkpoint(folder).classes


class Payload:
    """A pickle that, unpickled, leaves a file behind: what loading a model must never run."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.write_text, (self.mark, "pickle ran"))


def test_loading_a_folder_runs_no_pickle(folder, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in FILES:
        (shared / name).write_bytes((folder / name).read_bytes())
    mark = tmp_path / "pwned"
    for name in ("pytorch_model.bin", "best.pt", "model.pkl"):
        (shared / name).write_bytes(pickle.dumps(Payload(mark)))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = from_pretrained(shared, device="cpu")
    model.probabilities(np.zeros((2, 32, 32, 3), np.uint8))
    assert not mark.exists()
    monkeypatch.undo()
    pickle.loads((shared / "model.pkl").read_bytes())  # the payload is live: it does run when unpickled
    assert mark.read_text() == "pickle ran"


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for name in FILES:
        (to / name).write_bytes((folder / name).read_bytes())
    return to


def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_folder_whose_files_disagree_is_a_one_line_error(folder, tmp_path, cli, assert_one_line_error):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)

    def fails(path, *fragments):
        code, _, err = cli("predict", path, image, "--device", "cpu")
        assert_one_line_error(code, err, *fragments)

    # a changed byte in the safetensors header (a shape)
    tampered = _copy(folder, tmp_path / "tampered")
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].decode()
    first_shape = header.index('"shape":[') + len('"shape":[')
    raw[8 + first_shape] = ord("9") if raw[8 + first_shape] != ord("9") else ord("8")
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    fails(tampered, "model.safetensors is not the file config.json describes")
    # ... and with its checksum updated to match: safetensors or the model refuses it
    _rewrite_config(tampered, weights_sha256=sha256_file(tampered / "model.safetensors"))
    fails(tampered, "model.safetensors is not a readable safetensors file")
    # weights of another architecture under this config
    other = _copy(folder, tmp_path / "other")
    save_file(create_model("resnet18", num_classes=10).state_dict(), other / "model.safetensors")
    _rewrite_config(other, weights_sha256=sha256_file(other / "model.safetensors"))
    fails(other, "weights do not fit fast_small")
    # a config that names 100 classes but says 10
    names = _copy(folder, tmp_path / "names")
    _rewrite_config(names, label_names=[f"c{i}" for i in range(100)])
    fails(names, "inconsistent", "num_classes is 10 but it names 100 classes")
    # not JSON; not this package's; no weights at all
    broken = _copy(folder, tmp_path / "broken")
    (broken / "config.json").write_text("{")
    fails(broken, "config.json is not valid JSON")
    (broken / "config.json").write_text((folder / "config.json").read_text())
    _rewrite_config(broken, format="timm")
    fails(broken, "not a cifar-resnet model config")
    (broken / "model.safetensors").unlink()
    fails(broken, "neither a checkpoint file nor a model folder")


def test_export_refuses_to_overwrite_what_is_not_a_model_folder(run, tmp_path, cli, assert_one_line_error):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = cli("export", run / "best.pt", "--format", "hub", "--out", busy)
    assert_one_line_error(code, err, "exists and is not a model folder")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    again = tmp_path / "again"
    for _ in range(2):  # a model folder is replaced whole
        assert cli("export", run / "best.pt", "--format", "hub", "--out", again)[0] == 0
    assert {p.name for p in again.iterdir()} == FILES and sorted(p.name for p in tmp_path.iterdir()) == [
        "again",
        "busy",
    ]


def test_init_keeps_the_classifier_for_the_same_classes_and_replaces_it_for_others(folder):
    init = load_checkpoint(folder)
    same = create_model("fast_small", num_classes=10)
    record = init_weights(same, init, init.classes)
    assert record["classifier"] == "kept" and record["source"] == str(folder)
    assert all(torch.equal(v, init.state_dict[k]) for k, v in same.state_dict().items())
    other = create_model("fast_small", num_classes=3)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert init_weights(other, init, ["a", "b", "c"])["classifier"] == "new"
    for key, value in other.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, before[key]), key  # as initialised
        else:
            assert torch.equal(value, init.state_dict[key]), key
    with pytest.raises(CheckpointError, match="holds a fast_small model, but the run trains fast"):
        init_weights(create_model("fast", num_classes=10), init, init.classes)
    with pytest.raises(CheckpointError, match="other model arguments"):
        init_weights(create_model("fast_small", num_classes=10, widths=[16, 32, 32]), init, init.classes)


def test_train_init_fine_tunes_a_folder_on_other_classes_and_records_it(folder, npz, tmp_path, cli):
    data = np.load(npz)
    three = tmp_path / "three.npz"
    keep = data["y_train"] < 3
    np.savez(
        three,
        x_train=data["x_train"][keep],
        y_train=data["y_train"][keep],
        fine_label_names=np.array(["red", "green", "blue"]),
    )
    out = tmp_path / "tuned"
    args = ["train", "--data", three, "--val-split", "30", "--model", "fast_small", "--epochs", "1", "--init", folder]
    code, stdout, _ = cli(*args, "--out", out, "--no-progress", "--device", "cpu", "--batch-size", "25")
    assert code == 0 and f"starting from {folder} (fast_small, 10 classes; new classifier)" in stdout
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.init["source"] == str(folder) and ckpt.init["classifier"] == "new" and ckpt.classes[0] == "red"
    assert ckpt.mean != load_checkpoint(folder).mean  # the statistics of its own images, as every run
    assert ckpt.dataset == "three" and ckpt.config.init == str(folder)
    export_hub(out / "best.pt", tmp_path / "tuned-model", log=None)
    assert f"fine-tuned from `{folder}`" in (tmp_path / "tuned-model" / "README.md").read_text()


def test_the_card_gives_the_command_of_the_run():
    assert _command({"data": "/home/me/x.npz", "epochs": 3, "tta": True, "model_kwargs": {"a": 1}}) == (
        "cifar-resnet train --data x.npz --epochs 3 --tta --model-kwargs '{\"a\": 1}'"
    )


# ------------------------------------------------------------------------------------------------
# the Hub: pull offline from huggingface_hub's cache, push up to the network call
# ------------------------------------------------------------------------------------------------


@pytest.mark.long
def test_pull_and_from_pretrained_read_a_repo_from_the_hub_cache_offline(folder, tmp_path):
    pytest.importorskip("huggingface_hub", reason="needs the hub extra")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--cifar-model" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in FILES:
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (cache / "models--someone--cifar-model" / "refs").mkdir()
    (cache / "models--someone--cifar-model" / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    code = "from cifar_resnet import from_pretrained as f; print(f('someone/cifar-model', 'cpu').classes[0])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == load_checkpoint(folder).classes[0], out.stderr
    pulled = subprocess.run(
        [sys.executable, "-m", "cifar_resnet", "pull", "someone/cifar-model"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pulled.returncode == 0 and Path(pulled.stdout.strip()).resolve() == snapshot.resolve()
    missing = subprocess.run(
        [sys.executable, "-m", "cifar_resnet", "pull", "someone/absent"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("cifar-resnet: error: could not get someone/absent")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_push_builds_one_commit_of_the_three_files(folder, tmp_path, cli, monkeypatch, assert_one_line_error):
    hub = pytest.importorskip("huggingface_hub", reason="needs the hub extra")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)

    def create_commit(self, repo_id, operations, **kwargs):
        calls["commit"] = (repo_id, operations, kwargs)
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "create_commit", create_commit)
    code, stdout, _ = cli("push", folder, "someone/cifar-model", "--private")
    assert code == 0 and "https://huggingface.co/someone/cifar-model/commit/abc" in stdout
    assert calls["repo"] == ("someone/cifar-model", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo_id, operations, kwargs = calls["commit"]
    assert repo_id == "someone/cifar-model" and "fast_small (10 classes)" in kwargs["commit_message"]
    assert {op.path_in_repo for op in operations} == FILES
    for op in operations:
        assert Path(op.path_or_fileobj).read_bytes() == (folder / op.path_in_repo).read_bytes()
    # a folder that does not hold together is not pushed
    calls.clear()
    bad = _copy(folder, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"0" * 100)
    code, _, err = cli("push", bad, "someone/cifar-model")
    assert_one_line_error(code, err, "is not the file config.json describes")
    assert calls == {}
    code, _, err = cli("push", folder, "not a repo id")
    assert_one_line_error(code, err, "is not a Hub repository id")


@pytest.mark.skipif(
    not (os.environ.get("CIFAR_RESNET_HUB_TEST_REPO") and os.environ.get("HF_TOKEN")),
    reason="reaches the Hub: set CIFAR_RESNET_HUB_TEST_REPO=USER/REPO (a repository to write to) and HF_TOKEN",
)
def test_push_then_pull_through_the_hub(folder, cli):
    repo = os.environ["CIFAR_RESNET_HUB_TEST_REPO"]
    assert cli("push", folder, repo)[0] == 0
    code, stdout, _ = cli("pull", repo)
    assert code == 0 and all((Path(stdout.strip()) / f).read_bytes() == (folder / f).read_bytes() for f in FILES)
