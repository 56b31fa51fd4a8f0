"""Calibration (temperature scaling) and export (ONNX, torch.export) of a model trained on real images."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_resnet import export as export_module
from cifar_resnet import load_data
from cifar_resnet.calibration import calibrate, fit_temperature
from cifar_resnet.checkpoint import load_checkpoint
from cifar_resnet.evaluate import evaluate_checkpoint
from cifar_resnet.export import export_model
from cifar_resnet.inference import EvalData, OnnxPredictor, Predictor, load_predictor, resolve_split

pytestmark = pytest.mark.usefixtures("one_thread")
onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'cifar-resnet[onnx]'")


def test_fit_temperature_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=gen, dtype=torch.float64) * 3
    labels = torch.multinomial((z / 2.5).softmax(1), 1, generator=gen).squeeze(1)  # calibrated at T = 2.5
    assert abs(fit_temperature(z, labels) - 2.5) < 0.1
    assert abs(fit_temperature(z / 2.5, labels) - 1.0) < 0.04


@pytest.fixture
def best(real_run, tmp_path):
    """A copy of the real run's best.pt (calibration writes into it)."""
    path = tmp_path / "best.pt"
    shutil.copy(real_run / "best.pt", path)
    return path


def test_calibrate_stores_the_temperature_and_everything_uses_it(best, cli, open_png):
    before = evaluate_checkpoint(best, EvalData(split="val"), progress=False)
    code, out, _ = cli("calibrate", best, "--device", "cpu", "--no-progress", "--json")
    report = json.loads(out)
    assert code == 0 and report["written"] and report["split"] == "val" and report["n"] == 2000
    assert report["temperature"] != 1.0 and report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < report["ece_before"]
    ckpt = load_checkpoint(best)  # the checksum was renewed: it loads
    assert ckpt.temperature == pytest.approx(report["temperature"]) and ckpt.calibration["n"] == 2000
    assert ckpt.calibration["precision"] == report["precision"] == before["precision"]
    after = evaluate_checkpoint(best, EvalData(split="val"), progress=False)
    assert after["temperature"] == pytest.approx(report["temperature"])
    assert after["top1"] == before["top1"] and after["top5"] == before["top5"]  # no prediction changes
    assert after["loss"] == pytest.approx(report["nll_after"], abs=1e-5)
    assert after["ece"] == pytest.approx(report["ece_after"], abs=1e-6)
    pixels = open_png(best.parent / "reliability.png")
    assert pixels.shape[0] > 300
    # a prediction's probability is the calibrated one
    images = resolve_split(ckpt, load_data(ckpt.data_source), "val")[1].images[:8]
    raw = Predictor.from_checkpoint(ckpt.replace(temperature=1.0), "cpu").probabilities(images)
    scaled = Predictor.from_checkpoint(ckpt, "cpu").probabilities(images)
    logits = raw.log()
    expected = (logits / report["temperature"]).softmax(1)
    assert torch.allclose(scaled, expected, atol=1e-5)


def test_calibrate_dry_run_leaves_the_checkpoint_alone(best, cli):
    data = best.read_bytes()
    code, out, _ = cli("calibrate", best, "--device", "cpu", "--no-progress", "--dry-run")
    assert code == 0 and "left unchanged (--dry-run)" in out and best.read_bytes() == data


@pytest.mark.parametrize("fmt, input_kind", [("onnx", "uint8"), ("onnx", "float"), ("pt2", "uint8")])
def test_export_matches_pytorch_on_real_images(best, tmp_path, fmt, input_kind):
    calibrate(best, progress=False)
    out = tmp_path / f"model.{fmt}"
    report = export_model(best, out, fmt=fmt, input_kind=input_kind, log=None)
    assert report.max_abs_diff < 1e-4 and report.images_checked == 256 and report.check_split == "val"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    ckpt = load_checkpoint(best)
    if fmt == "onnx":
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert meta["producer"] == "cifar-resnet"
        assert json.loads(meta["classes"]) == ckpt.classes and json.loads(meta["precision"]) == "fp32"
        assert json.loads(meta["temperature"]) == pytest.approx(ckpt.temperature)
        assert json.loads(meta["input"]) == ("uint8_nhwc" if input_kind == "uint8" else "float01_nchw")
        assert len(json.loads(meta["checkpoint_sha256"])) == 64
    else:
        extra = {"cifar_resnet.json": ""}
        program = torch.export.load(str(out), extra_files=extra)
        assert json.loads(extra["cifar_resnet.json"])["classes"] == ckpt.classes
        assert program.module()(torch.zeros(3, 32, 32, 3, dtype=torch.uint8)).shape == (3, 100)


def test_onnx_predictor_and_predict_on_an_onnx_file(best, tmp_path, real_data, cli):
    out = tmp_path / "demo.onnx"
    export_model(best, out, log=None)
    # the exported graph computes in fp32: compared with PyTorch in fp32, whatever the run trained in
    onnx_model, torch_model = load_predictor(out), Predictor.from_checkpoint(best, "cpu", precision="fp32")
    assert isinstance(onnx_model, OnnxPredictor) and onnx_model.classes == torch_model.classes
    images = real_data.train.images[:300]  # any real images: a batch larger than one onnxruntime call
    np.testing.assert_allclose(
        onnx_model.probabilities(images).numpy(), torch_model.probabilities(images).numpy(), atol=1e-4
    )
    assert onnx_model.info["format"] == "onnx" and onnx_model.info["num_classes"] == 100
    photo = tmp_path / "photo.png"
    Image.fromarray(real_data.train.images[7]).resize((96, 96), Image.Resampling.NEAREST).save(photo)
    code, out_onnx, _ = cli("predict", out, photo, "--json", "--no-tta", "--tta-translate", "0")
    code2, out_pt, _ = cli(
        "predict", best, photo, "--json", "--no-tta", "--tta-translate", "0", "--device", "cpu", "--precision", "fp32"
    )
    a, b = json.loads(out_onnx)[0]["top"], json.loads(out_pt)[0]["top"]
    assert code == code2 == 0 and [t["class"] for t in a] == [t["class"] for t in b]
    assert all(abs(x["prob"] - y["prob"]) < 1e-4 for x, y in zip(a, b))


def test_an_export_that_does_not_match_is_refused_and_leaves_nothing(
    best, tmp_path, monkeypatch, assert_one_line_error, cli
):
    monkeypatch.setattr(export_module, "TOLERANCE", 0.0)  # any difference at all is too much
    code, _, err = cli("export", best, "--out", tmp_path / "x.onnx")
    assert_one_line_error(code, err, "differs from the checkpoint", "nothing was written")
    assert not [p for p in tmp_path.iterdir() if "x" in p.name]


def test_inference_benchmark_reports_both_engines(best, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert (
        module.main(
            [str(best), "--onnx", str(tmp_path / "m.onnx"), "--repeats", "3", "--batch", "16", "--json", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert [r["engine"] for r in result["rows"]] == ["pytorch", "onnxruntime"] and result["max_diff"] < 1e-4
    assert all(r["latency_ms"] > 0 and r["images_per_s"] > 0 for r in result["rows"])
    assert "| onnxruntime |" in capsys.readouterr().out
