"""The option groups (StepOptions, EvalOptions), the one precision setting, and the loop's concerns that
resume from a checkpoint: fp16's loss scaler, and a divergence message that names the right step."""

import dataclasses

import pytest
import torch

from cifar_resnet import TrainConfig, fit, load_checkpoint
from cifar_resnet.engine import EvalOptions, StepOptions, grad_scaler, train_step
from cifar_resnet.train import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "batch_size": 20,
    "eval_batch_size": 40,
    "device": "cpu",
    "val_split": 0,
    "precision": "fp32",
}
CPU = torch.device("cpu")


def tiny_config(**kw):
    return TrainConfig(**{**TINY, **kw})


def test_options_come_from_the_config_and_resolve_precision(monkeypatch):
    config = tiny_config(
        label_smoothing=0.2,
        grad_clip=0.5,
        grad_clip_mode="norm",
        tta=True,
        tta_translate=2,
        eval_batch_size=64,
        precision="auto",
    )
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: False)
    assert StepOptions.from_config(config, CPU) == StepOptions(0.2, 0.5, "norm", "fp32")
    assert EvalOptions.from_config(config, CPU) == EvalOptions(True, 2, 64, "fp32")
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: True)
    assert StepOptions.from_config(config, CPU).precision == "bf16"
    assert EvalOptions.from_config(dataclasses.replace(config, precision="fp16"), CPU).precision == "fp16"


def test_options_are_frozen_and_validated():
    options = EvalOptions(tta=True, tta_translate=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tta = False
    assert options.tta_name == "flip+translate1" and options.plain().tta_name == "none"
    assert options.plain().batch_size == options.batch_size
    for bad in ({"precision": "auto"}, {"grad_clip_mode": "sideways"}):
        with pytest.raises(ValueError):
            StepOptions(**bad)
    for bad in ({"precision": "bf17"}, {"tta_translate": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            EvalOptions(**bad)


def test_fp16_scales_the_loss_and_bf16_does_not():
    assert grad_scaler(StepOptions(precision="bf16"), CPU) is None
    scaler = grad_scaler(StepOptions(precision="fp16"), CPU)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() == 2.0**16
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
    before = model[1].weight.detach().clone()
    loss, out, lr = train_step(model, x, y, optimizer, scheduler, StepOptions(precision="fp16"), scaler)
    assert out.dtype == torch.float16 and lr == 0.1 and torch.isfinite(loss)
    assert not torch.equal(before, model[1].weight)  # the unscaled step was taken


def test_an_fp16_run_resumes_exactly_with_its_loss_scaler(tmp_path, synthetic):
    data = synthetic()
    config = tiny_config(epochs=2, optimizer="adam", lr=3e-3, precision="fp16")
    full = fit(config, data, tmp_path / "full", log=None, progress=False)
    assert load_checkpoint(tmp_path / "full" / "last.pt").scaler_state["scale"] > 0

    class Stop(Exception):
        pass

    def interrupt(record):
        raise Stop

    with pytest.raises(Stop):
        fit(config, data, tmp_path / "cut", log=None, progress=False, on_epoch_end=interrupt)
    resumed = fit(config, data, resume=tmp_path / "cut" / "last.pt", log=None, progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in full.records] == [r["val_loss"] for r in resumed.records]


def test_a_resumed_epoch_that_diverges_names_the_step_and_its_lr(tmp_path, synthetic, monkeypatch):
    """The step of a non-finite loss, and the learning rate it ran at, counted from the epoch's start even
    when the epoch was resumed from a mid-epoch checkpoint."""
    import cifar_resnet.train as train_module
    from cifar_resnet.checkpoint import RunDir

    data = synthetic()  # 120 images, batches of 20: 6 steps an epoch
    config = tiny_config(epochs=2, optimizer="sgd", lr=0.05, schedule="linear")
    full = fit(config, data, None, log=None, progress=False)

    write = RunDir.write_checkpoint

    def write_then_stop(self, ckpt):  # stop the run once it has written step 2 of epoch 2
        write(self, ckpt)
        if ckpt.epoch == 1 and ckpt.partial["step"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_checkpoint", write_then_stop)
        with pytest.raises(KeyboardInterrupt):
            fit(config, data, tmp_path, log=None, progress=False, save_every_steps=2)
    assert load_checkpoint(tmp_path / "last.pt").partial["step"] == 2

    step, calls = train_module.train_step, {"n": 0}

    def poisoned(*args, **kw):  # the second step after the resume, the epoch's 4th, has a NaN loss
        loss, out, lr = step(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), out, lr

    monkeypatch.setattr(train_module, "train_step", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        fit(config, data, resume=tmp_path / "last.pt", log=None, progress=False, check_every=1)
    lr = full.records[1]["lrs"][3]
    assert f"at epoch 2, step 4 (lr {lr:.4g})" in str(err.value)
    assert f"{tmp_path / 'last.pt'} (epoch 2, step 2)" in str(err.value)
