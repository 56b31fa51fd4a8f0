"""`cifar-resnet lr-find`: the learning-rate range test on a tiny model, and the command on real images."""

import json

import numpy as np
import pytest
import torch

from cifar_resnet import channel_stats, create_model
from cifar_resnet.engine import StepOptions
from cifar_resnet.loader import CifarLoader
from cifar_resnet.lr_find import RangeTest, lr_find, smooth

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sweep_is_exponential_stops_on_divergence_and_restores_the_model(synthetic):
    data = synthetic(n_train=120, n_val=10)
    mean, std = channel_stats(data.train.images)
    loader = CifarLoader(data.train, 20, mean=mean, std=std, train=True)
    torch.manual_seed(0)
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    model.train(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    result = lr_find(model, loader, opt, RangeTest(start_lr=1e-4, end_lr=1e6, num_steps=30), progress=False)

    assert "diverged" in result.stopped and len(result.lrs) < 30  # SGD at lr 1e6 cannot survive
    assert len(result.lrs) >= 3  # but it takes several steps to get there, so the ratios below are checked
    assert result.lrs[0] == pytest.approx(1e-4)
    ratio = (1e6 / 1e-4) ** (1 / 29)
    assert all(b / a == pytest.approx(ratio, rel=1e-6) for a, b in zip(result.lrs, result.lrs[1:]))
    assert len(result.smoothed) == len(result.losses) == len(result.lrs)
    assert result.suggestion == pytest.approx(result.min_loss_lr / 10)
    assert result.lrs[0] <= result.steepest_lr <= result.min_loss_lr
    # weights, BN statistics, training mode and optimizer all as they were
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and opt.param_groups[0]["lr"] == 0.05 and not opt.state


def test_sweep_with_muon_sweeps_the_sgd_group_only(synthetic):
    from cifar_resnet.optim import MuonSGD

    data = synthetic(n_train=120, n_val=10)
    mean, std = channel_stats(data.train.images)
    loader = CifarLoader(data.train, 20, mean=mean, std=std, train=True)
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    seen = []

    class Recording(MuonSGD):
        def step(self, closure=None):
            seen.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    opt = Recording(model, lr=0.05, momentum=0.9, weight_decay=5e-4, muon_lr=0.02, muon_momentum=0.6)
    result = lr_find(model, loader, opt, RangeTest(start_lr=1e-3, end_lr=1.0, num_steps=10), progress=False)
    assert [lrs[0] for lrs in seen] == pytest.approx(result.lrs)  # the SGD group sweeps
    assert result.lrs[0] == pytest.approx(1e-3) and result.lrs[-1] == pytest.approx(1.0)
    assert all(lrs[1] == 0.02 for lrs in seen)  # Muon's stays at its own rate
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.02]  # both restored


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the skipped steps
def test_an_fp16_sweep_carries_its_loss_scale_from_step_to_step(synthetic, monkeypatch):
    """One GradScaler for the whole range test: a scale that backed off at a step (its gradients overflowed
    fp16) starts the next step backed off, rather than at a fresh scaler's initial scale."""
    scales = []  # (scaler, scale) at the start of each step

    class Recording(torch.amp.GradScaler):
        def __init__(self, device: str):
            super().__init__(device, init_scale=2.0**40)  # fp16 gradients overflow at first: the scale backs off

        def scale(self, outputs):
            scales.append((self, self.get_scale()))
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    data = synthetic(n_train=120, n_val=10)
    mean, std = channel_stats(data.train.images)
    loader = CifarLoader(data.train, 20, mean=mean, std=std, train=True)
    torch.manual_seed(0)
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sweep = RangeTest(start_lr=1e-4, end_lr=1e-2, num_steps=4)
    lr_find(model, loader, opt, sweep, options=StepOptions(precision="fp16"), progress=False)
    assert len(scales) == 4 and len({id(scaler) for scaler, _ in scales}) == 1
    assert [s for _, s in scales] == [2.0**40 / 2**i for i in range(4)]  # halved after each overflowing step


def test_smoothing_has_no_lag_and_ignores_spikes():
    assert smooth([2.0] * 10, 5).tolist() == [2.0] * 10
    ramp = np.arange(50.0)
    assert smooth(ramp, 9).tolist() == ramp.tolist()  # a causal average would lag behind
    spiky = np.full(30, 4.0)
    spiky[[10, 20]] = 50.0
    assert smooth(spiky, 5).tolist() == [4.0] * 30


def test_lr_find_command_on_real_images(real_npz, tmp_path, cli, open_png):
    code, out, err = cli(
        "lr-find",
        "--data",
        real_npz,
        "--train-subset",
        "500",
        "--model",
        "fast",
        "--model-kwargs",
        '{"widths": [8, 16, 16], "stem_width": 8}',
        "--batch-size",
        "50",
        "--optimizer",
        "sgd",
        "--steps",
        "20",
        "--start-lr",
        "1e-3",
        "--end-lr",
        "100",
        "--device",
        "cpu",
        "--out",
        tmp_path / "lr.png",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert {"suggestion", "min_loss_lr", "steepest_lr", "stopped", "lrs", "losses", "smoothed", "plot"} <= set(r)
    assert 1e-4 <= r["suggestion"] <= 10 and len(r["lrs"]) <= 20
    open_png(tmp_path / "lr.png", (640, 420))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "need 0 < start_lr < end_lr"),
        (["--steps", "1"], "at least 2 steps"),
        (["--diverge", "1"], "divergence factor"),
        (["--model", "nonet"], "unknown model"),
    ],
)
def test_bad_arguments(cli, assert_one_line_error, args, message):
    code, _, err = cli("lr-find", "--data", "/nonexistent.npz", *args)
    assert_one_line_error(code, err, message)
