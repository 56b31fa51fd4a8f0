"""`cifar-resnet evaluate`: metrics checked against known values, against the numbers training printed for the
same checkpoint, and on a tiny model that has memorised its training images."""

import json

import numpy as np
import pytest
import torch

from cifar_resnet import TrainConfig, channel_stats, evaluate_checkpoint, fit, load_checkpoint, subsample
from cifar_resnet.checkpoint import Checkpoint
from cifar_resnet.data import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_TO_COARSE, Split
from cifar_resnet.engine import tta_logits
from cifar_resnet.inference import EvalOverrides, eval_options, resolve_split
from cifar_resnet.metrics import REPORT_KEYS, compute_report, expected_calibration_error, fine_to_coarse

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# metrics on crafted numbers
# ------------------------------------------------------------------------------------------------


def test_expected_calibration_error_known_values():
    # confident and always right: calibrated
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 0, 0])) == 0.0
    # confidence 1.0, right half the time: a gap of 0.5
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 1, 0, 1])) == 0.5
    # confidence 0.6 and right 6 times in 10: calibrated; 0.6 and right 3 times in 10: gap 0.3
    probs = torch.tensor([[0.6, 0.4]] * 10)
    calibrated = expected_calibration_error(probs, torch.tensor([0] * 6 + [1] * 4))
    assert calibrated == pytest.approx(0.0, abs=1e-6)  # abs: 0.6 in float32 is not 0.6
    assert expected_calibration_error(probs, torch.tensor([0] * 3 + [1] * 7)) == pytest.approx(0.3)


def test_report_counts_a_prediction_in_the_right_superclass():
    # apple (fruit_and_vegetables), with predictions: apple (right), orange (same superclass), bear (wrong superclass)
    apple, orange, bear = (CIFAR100_CLASSES.index(n) for n in ("apple", "orange", "bear"))
    assert CIFAR100_FINE_TO_COARSE[apple] == CIFAR100_FINE_TO_COARSE[orange] != CIFAR100_FINE_TO_COARSE[bear]
    logits = torch.zeros(3, 100)
    for row, pred in enumerate((apple, orange, bear)):
        logits[row, pred] = 10.0
    labels = torch.tensor([apple, apple, apple])
    cmap, cnames = fine_to_coarse(CIFAR100_CLASSES)
    r = compute_report(logits, labels, CIFAR100_CLASSES, coarse_map=cmap, coarse_classes=cnames)
    assert set(REPORT_KEYS) <= set(r)
    assert r["n"] == 3
    assert r["top1"] == pytest.approx(1 / 3) and r["coarse_top1"] == pytest.approx(2 / 3)
    assert r["per_class"]["apple"] == {"n": 3, "top1": pytest.approx(1 / 3)}
    assert r["per_class"]["bear"] == {"n": 0, "top1": None}
    fruit = r["per_superclass"]["fruit_and_vegetables"]
    assert fruit["n"] == 3 and fruit["coarse_top1"] == pytest.approx(2 / 3)
    json.dumps(r)  # JSON-ready as it is


def _options(config: dict | None, **overrides):
    ckpt = Checkpoint({"config": config} if config is not None else {})
    return eval_options(ckpt, "cpu", EvalOverrides(**overrides))


def test_tta_defaults_to_what_the_run_evaluated_with():
    assert _options({"tta": True}).tta is True
    assert _options({"tta": True}, tta=False).tta is False
    assert _options(None).tta is False and _options(None, tta=True).tta is True


def test_precision_and_batch_size_default_to_the_runs(monkeypatch):
    assert _options({"precision": "bf16"}).precision == "bf16"
    assert _options({"precision": "bf16"}, precision="fp32").precision == "fp32"
    assert _options({"cpu_amp": "on", "amp": True}).precision == "bf16"  # a run from before --precision
    assert _options({"cpu_amp": "off"}).precision == "fp32"
    assert _options(None).precision == "fp32"  # no config: the fp32 of the oldest checkpoints
    for amx in (True, False):  # auto is resolved for the device it evaluates on
        monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda amx=amx: amx)
        assert _options({"precision": "auto"}).precision == ("bf16" if amx else "fp32")
    assert _options({"eval_batch_size": 123}).batch_size == 123 and _options(None).batch_size == 500
    assert _options({"eval_batch_size": 123}, batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="unknown precision"):
        _options(None, precision="fp8")


def test_superclass_mapping_from_the_data_for_other_class_names():
    names = tuple(f"c{i}" for i in range(4))
    split = Split(np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 2, 3], coarse=[0, 0, 1, 1])
    mapping, coarse = fine_to_coarse(names, ("a", "b"), split)
    assert mapping.tolist() == [0, 0, 1, 1] and coarse == ("a", "b")
    not_a_tree = Split(np.zeros((2, 32, 32, 3), np.uint8), [0, 0], coarse=[0, 1])
    assert fine_to_coarse(names, ("a", "b"), not_a_tree) == (None, None)
    assert fine_to_coarse(names) == (None, None)
    assert fine_to_coarse(CIFAR100_CLASSES)[1] == CIFAR100_COARSE_CLASSES


# ------------------------------------------------------------------------------------------------
# the real checkpoint
# ------------------------------------------------------------------------------------------------


def test_val_split_reproduces_the_numbers_training_printed(real_run, real_npz, cli, tmp_path):
    ckpt = load_checkpoint(real_run / "best.pt")
    record = next(r for r in json.loads((real_run / "history.json").read_text()) if r["epoch"] == ckpt.epoch)
    # the run ended by fitting best.pt's temperature on these images; training's val_loss is the raw model's
    assert ckpt.temperature != 1.0 and ckpt.calibration["split"] == "val"
    raw = ckpt.replace(temperature=1.0).save(tmp_path / "raw.pt")
    code, out, err = cli(
        "evaluate",
        raw,
        "--data",
        real_npz,
        "--split",
        "val",
        "--json",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, err
    r = json.loads(out)
    assert set(REPORT_KEYS) <= set(r)
    assert r["split"] == "val" and r["n"] == 2000
    # the same 2,000 images, normalised the same way, through the same weights: training's numbers
    assert r["top1"] == pytest.approx(record["val_top1"], abs=1e-6)
    assert r["top5"] == pytest.approx(record["val_top5"], abs=1e-6)
    assert r["loss"] == pytest.approx(record["val_loss"], rel=1e-4)
    # top-1 a second way: per-class accuracies weighted by their counts (stratified: 20 per class)
    per_class = r["per_class"]
    assert list(per_class) == list(CIFAR100_CLASSES)
    assert {v["n"] for v in per_class.values()} == {20}
    assert sum(v["top1"] * v["n"] for v in per_class.values()) / r["n"] == pytest.approx(r["top1"], rel=1e-12)
    sup = r["per_superclass"]
    assert len(sup) == 20 and sum(v["n"] for v in sup.values()) == 2000
    assert sum(v["coarse_top1"] * v["n"] for v in sup.values()) / 2000 == pytest.approx(r["coarse_top1"])
    # the calibrated checkpoint itself: the same predictions, and a lower loss (T minimises it on these images)
    code, out, err = cli("evaluate", real_run / "best.pt", "--data", real_npz, "--json", "--device", "cpu")
    calibrated = json.loads(out)
    assert calibrated["top1"] == r["top1"] and calibrated["loss"] < r["loss"]
    assert 0.0 <= r["ece"] <= 1.0


def test_text_table_with_defaults_and_tta(real_run, cli):
    # no --data and no --split: the run's own data source and the split it evaluated on
    code, out, err = cli("evaluate", real_run / "best.pt", "--tta", "--tta-translate", "1", "--device", "cpu")
    assert code == 0, err
    for text in (
        "top-1",
        "top-5",
        "superclass",
        "loss",
        "ECE",
        "the run's held-out validation split",
        "flip TTA",
        "1 px translate TTA",
        "per-class top-1",
        "sunflower",
        "large_carnivores",
    ):
        assert text in out, text


def test_train_split_is_the_images_the_run_trained_on(real_run, real_data):
    ckpt = load_checkpoint(real_run / "best.pt")
    name, split, description = resolve_split(ckpt, real_data, "train")
    assert name == "train" and len(split) == 10000 and "the run's training images" in description
    mean, std = channel_stats(split.images)
    assert tuple(mean) == ckpt.mean and tuple(std) == ckpt.std


def test_another_source_cannot_stand_for_the_runs_validation_split(
    real_run, real_data, tmp_path, cli, assert_one_line_error
):
    data = real_data
    other = tmp_path / "other.npz"
    np.savez(other, x_train=data.train.images[:300], y_train=data.train.labels[:300])
    code, _, err = cli("evaluate", real_run / "best.pt", "--data", other, "--split", "val")
    assert_one_line_error(code, err, "not the data this checkpoint was trained on")
    code, _, err = cli("evaluate", real_run / "best.pt", "--data", other, "--split", "test")
    assert_one_line_error(code, err, "no split 'test'")
    code, out, err = cli("evaluate", real_run / "best.pt", "--data", other, "--split", "train", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 300 and "not the run's" in r["split_description"]


def test_overfit_tiny_model_is_near_100_percent_on_its_training_images(real_data, tmp_path, cli):
    """200 real images (2 per class), no augmentation, a small net and enough epochs to memorise them."""
    data = real_data
    small = subsample(data, 200, seed=1).train
    test = data.train.subset(np.arange(100))  # fit needs a split to evaluate on; what it is does not matter
    npz = tmp_path / "tiny.npz"
    np.savez(
        npz,
        x_train=small.images,
        y_train=small.labels,
        y_train_coarse=small.coarse,
        x_test=test.images,
        y_test=test.labels,
        y_test_coarse=test.coarse,
        fine_label_names=np.array(data.classes),
        coarse_label_names=np.array(data.coarse_classes),
    )
    config = TrainConfig(
        data=str(npz),
        val_split=0,
        model="fast",
        model_kwargs={"widths": [16, 32, 32], "logit_scale": 1.0},
        epochs=20,
        batch_size=50,
        optimizer="adam",
        lr=0.02,
        weight_decay=0.0,
        grad_clip=0.0,
        crop_pad=0,
        flip="none",
        device="cpu",
        eval_batch_size=200,
    )
    fit(config, None, tmp_path / "run", log=None, progress=False)
    code, out, err = cli("evaluate", tmp_path / "run" / "last.pt", "--split", "train", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["split_description"].endswith("the run's training images") and r["n"] == 200
    assert r["top1"] >= 0.95, r["top1"]
    code, out, err = cli("evaluate", tmp_path / "run" / "last.pt", "--split", "test", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 100


def test_translate_tta_is_airbench_level_2():
    """Half the weight on the image, a quarter each on it shifted one pixel up-left and down-right
    (reflect-padded), each view flip-averaged; translate 0 is plain flip TTA."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():

        def flip_avg(v):
            return 0.5 * (model(v) + model(v.flip(-1)))

        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        expected = 0.5 * flip_avg(x) + 0.25 * (flip_avg(padded[..., :32, :32]) + flip_avg(padded[..., 2:, 2:]))
        torch.testing.assert_close(tta_logits(model, x, tta=True, tta_translate=1), expected)
        torch.testing.assert_close(tta_logits(model, x, tta=True, tta_translate=0), flip_avg(x))
        torch.testing.assert_close(tta_logits(model, x), model(x))
        with pytest.raises(ValueError, match="smaller than the image"):
            tta_logits(model, x, tta_translate=32)


def test_translate_defaults_to_what_the_run_evaluated_with():
    assert _options({"tta_translate": 1}).tta_translate == 1
    assert _options({"tta_translate": 1}, tta_translate=0).tta_translate == 0
    options = _options({"tta": True})  # a run from before the option
    assert (options.tta, options.tta_translate) == (True, 0)
    with pytest.raises(ValueError, match="tta translate must be >= 0"):
        _options(None, tta_translate=-1)


def test_evaluate_reproduces_a_bf16_run_exactly(tmp_path, synthetic, cli):
    """A run trained and evaluated in bf16: evaluating its checkpoints later, by default, gives the numbers
    training recorded (the same images, batches and precision), and says bf16; --precision fp32 differs."""
    data = synthetic(n_train=300, n_val=0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=data.train.images, y_train=data.train.labels)
    config = TrainConfig(
        data=str(npz),
        val_split=100,
        model="fast",
        model_kwargs={"widths": [8, 16, 16], "stem_width": 8},
        epochs=2,
        batch_size=50,
        eval_batch_size=40,
        optimizer="sgd",
        lr=0.05,
        grad_clip=0.0,
        device="cpu",
        precision="bf16",
    )
    hist = fit(config, None, tmp_path / "run", log=None, progress=False)
    last = hist.records[-1]
    raw = {}  # the checkpoints without the temperature the run ended by fitting: training's loss is uncalibrated
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / "run" / name)
        record = next(r for r in hist.records if r["epoch"] == ckpt.epoch)  # best.pt: the best epoch's
        raw[name] = ckpt.replace(temperature=1.0).save(tmp_path / f"raw-{name}")
        code, out, err = cli("evaluate", raw[name], "--json", "--device", "cpu")
        assert code == 0, err
        r = json.loads(out)
        assert r["precision"] == "bf16" and r["split"] == "val" and r["n"] == 100
        assert round(r["top1"] * r["n"]) == round(record["val_top1"] * r["n"])  # the same images right
        assert r["top1"] == pytest.approx(record["val_top1"], abs=1e-6)
        assert r["loss"] == pytest.approx(record["val_loss"], abs=1e-6)
    assert ckpt.epoch == last["epoch"]  # the loop ended on last.pt
    code, out, err = cli("evaluate", raw["last.pt"], "--json", "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    fp32 = json.loads(out)
    assert fp32["precision"] == "fp32" and fp32["n"] == 100
    assert fp32["loss"] != pytest.approx(last["val_loss"], abs=1e-6)  # so the default above was not fp32
    # the library says the same
    report = evaluate_checkpoint(raw["last.pt"], device="cpu", progress=False)
    assert report["precision"] == "bf16" and report["loss"] == pytest.approx(last["val_loss"], abs=1e-6)
