import csv
import json

import pytest
import torch

from cifar_resnet import TrainConfig, fit, load_checkpoint
from cifar_resnet.checkpoint import CheckpointError
from cifar_resnet.config import PRESETS
from cifar_resnet.engine import StepOptions, train_step
from cifar_resnet.models import create_model
from cifar_resnet.optim import build_optimizer, build_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "batch_size": 20,
    "eval_batch_size": 40,
    "device": "cpu",
    "val_split": 0,
}


def tiny_config(**kw):
    return TrainConfig(**{**TINY, **kw})


def test_seed_preset_trains_as_the_notebook():
    """The seed preset builds the notebook's run: its network, Adam with weight decay, a one-cycle schedule
    stepped every batch over every epoch, gradients clipped by value."""
    c = PRESETS["seed"]
    model = create_model(c.model, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == 7_500_132  # the notebook's network
    cpu = torch.device("cpu")
    opt = build_optimizer(c, model, cpu)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == 1e-5
    sched = build_scheduler(c, opt, steps_per_epoch=3)
    lrs = []
    for _ in range(100 * 3):  # the notebook's 100 epochs
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and max(lrs) == pytest.approx(1e-3)
    assert lrs[0] < 1e-4 and lrs[-1] < 1e-7  # one cycle: up from a small rate, down to nearly nothing
    layer = torch.nn.Linear(4, 2)
    sgd = torch.optim.SGD(layer.parameters(), lr=0.0)
    x, y = 100 * torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    train_step(layer, x, y, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda i: 1.0), StepOptions.from_config(c, cpu))
    assert layer.weight.grad.abs().max() == pytest.approx(0.1)  # large gradients clipped, each to 0.1


def test_run_directory_contents(tmp_path, synthetic):
    data = synthetic()
    hist = fit(tiny_config(epochs=2), data, tmp_path, log=None, progress=False)
    assert [r["epoch"] for r in hist.records] == [1, 2]
    for name in ("config.json", "history.json", "metrics.csv", "last.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "fast"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"lr", "train_loss", "val_loss", "val_top1", "val_top5", "seconds"} <= set(rows[0])
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.classes == list(data.classes) and len(ckpt.mean) == 3
    model = ckpt.build_model()
    assert not any(k.startswith("_orig_mod") for k in ckpt.state_dict)
    state = model.state_dict()  # the rebuilt model holds the checkpoint's weights
    assert state.keys() == ckpt.state_dict.keys()
    assert all(torch.equal(state[k], ckpt.state_dict[k]) for k in state)
    trained = hist.model.state_dict()  # and last.pt holds the weights training ended with
    last = load_checkpoint(tmp_path / "last.pt").state_dict
    assert last.keys() == trained.keys() and all(torch.equal(last[k], trained[k].cpu()) for k in last)


def test_learns_a_visible_signal(synthetic):
    hist = fit(
        tiny_config(epochs=10, lr=3e-3, optimizer="adam", grad_clip=0.0, weight_decay=5e-4),
        synthetic(),
        None,
        log=None,
        progress=False,
    )
    assert hist.records[-1]["val_top1"] >= 0.8  # chance is 0.1


class Stop(Exception):
    pass


@pytest.mark.parametrize("optimizer, lr", [("adam", 3e-3), ("muon", 0.05)])
def test_resume_is_exact(tmp_path, synthetic, optimizer, lr):
    """An interrupted and resumed run ends with bit-identical weights to an uninterrupted one (CPU)."""
    data = synthetic()
    config = tiny_config(epochs=3, optimizer=optimizer, lr=lr)
    full = fit(config, data, tmp_path / "full", log=None, progress=False)

    def interrupt(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(config, data, tmp_path / "cut", log=None, progress=False, on_epoch_end=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 2
    resumed = fit(config, data, resume=tmp_path / "cut" / "last.pt", log=None, progress=False)
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_loss"] for r in resumed.records] == [r["val_loss"] for r in full.records]
    hist = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3]


def test_resume_into_finished_run_is_refused(tmp_path, synthetic):
    data = synthetic(n_train=40, n_val=10)
    config = tiny_config(epochs=1)
    fit(config, data, tmp_path, log=None, progress=False)
    with pytest.raises(ValueError, match="finished run"):
        fit(config, data, resume=tmp_path / "last.pt", log=None, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        fit(tiny_config(epochs=5), data, resume=tmp_path / "last.pt", log=None, progress=False)
    with pytest.raises(CheckpointError, match="weights only"):
        fit(config, data, resume=tmp_path / "best.pt", log=None, progress=False)


def test_checkpoint_from_another_model_or_class_count(tmp_path, synthetic):
    data = synthetic(n_train=40, n_val=10)
    fit(tiny_config(epochs=1), data, tmp_path, log=None, progress=False)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="holds a fast model, not seed_resnet"):
        ckpt.build_model(expect_model="seed_resnet")
    with pytest.raises(CheckpointError, match="10 classes, but the data has 100"):
        ckpt.build_model(expect_classes=100)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"flip": "up"}, "flip"),
        ({"label_smoothing": 1.5}, "smoothing"),
        ({"schedule": "step"}, "schedule"),
        ({"muon_lr": 0}, "muon learning rate"),
        ({"muon_momentum": 1.0}, "momenta"),
        ({"tta_translate": -1}, "translate"),
    ],
)
def test_bad_config_values(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


@pytest.mark.parametrize("schedule", ["onecycle", "linear", "cosine", "constant"])
def test_schedules_peak_at_lr(synthetic, schedule):
    hist = fit(
        tiny_config(epochs=2, schedule=schedule, lr=0.01, warmup=0.25),
        synthetic(n_train=80, n_val=10),
        None,
        log=None,
        progress=False,
    )
    lrs = [lr for r in hist.records for lr in r["lrs"]]
    assert len(lrs) == 8 and max(lrs) == pytest.approx(0.01, rel=0.05)
    if schedule != "constant":
        assert lrs[-1] < 0.5 * max(lrs) and lrs[0] < max(lrs)


@pytest.mark.parametrize("schedule", ["onecycle", "linear"])
def test_muon_group_peaks_at_muon_lr(schedule):
    """With optimizer muon both groups follow the schedule, each peaking at its own rate, and OneCycleLR
    leaves the Muon group's momentum alone."""
    from cifar_resnet.optim import build_optimizer, build_scheduler

    config = tiny_config(epochs=2, optimizer="muon", lr=0.4, muon_lr=0.05, muon_momentum=0.6, schedule=schedule)
    from cifar_resnet.models import create_model

    model = create_model(config.model, num_classes=10, **config.model_kwargs)
    opt = build_optimizer(config, model, torch.device("cpu"))
    sched = build_scheduler(config, opt, steps_per_epoch=5)
    peaks = [0.0, 0.0]
    for _ in range(10):
        peaks = [max(p, g["lr"]) for p, g in zip(peaks, opt.param_groups)]
        assert opt.param_groups[1]["momentum"] == 0.6
        opt.step()
        sched.step()
    assert peaks == [pytest.approx(0.4, rel=0.05), pytest.approx(0.05, rel=0.05)]


@pytest.mark.parametrize(
    "precision, has_bf16, note",
    [
        ("bf16", False, "on cpu (bf16, emulated: this CPU has no AMX or AVX512_BF16"),
        ("bf16", True, "on cpu (bf16);"),
        ("auto", False, "on cpu (fp32: no bf16 instructions, AMX or AVX512_BF16, on this CPU);"),
        ("fp32", False, "on cpu;"),
    ],
)
def test_the_first_line_says_when_bf16_is_emulated(tmp_path, synthetic, monkeypatch, precision, has_bf16, note):
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: has_bf16)
    lines: list[str] = []
    fit(tiny_config(epochs=1, precision=precision), synthetic(), tmp_path, log=lines.append, progress=False)
    assert note in lines[0], lines[0]
    assert ("emulated" in lines[0]) == (precision == "bf16" and not has_bf16)
