"""--budget: the duration flag, the planner (with made-up step times), the plan stored and kept on resume, equal
plans giving bit-identical runs, torchrun ranks agreeing on one plan, and the temperature a run ends with."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cifar_resnet import TrainConfig, fit, load_checkpoint
from cifar_resnet import train as train_module
from cifar_resnet.budget import (
    HEADROOM,
    BudgetTooSmall,
    Measurement,
    Plan,
    _splits,
    follow_plan,
    make_plan,
    planned_config,
    predict_seconds,
)
from cifar_resnet.checkpoint import RunDir
from cifar_resnet.config import get_preset
from cifar_resnet.console import format_duration, parse_duration

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "optimizer": "sgd",
    "lr": 0.05,
    "grad_clip": 0.0,
    "batch_size": 20,
    "eval_batch_size": 40,
    "device": "cpu",
    "progressive": "16:0.25,24:0.25",
}
# made-up figures: 1 s a step at 16 px, 2 at 24, 4 at full size; a plain evaluation 3 s
FAKE = Measurement(step_seconds={16: 1.0, 24: 2.0, 0: 4.0}, eval_seconds=3.0, seconds=10.0)


def _steps(config: TrainConfig) -> list[int]:
    return [10] * config.epochs


@pytest.mark.parametrize(
    "text, seconds",
    [("900s", 900), ("900", 900), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), ("none", None)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15x", "-5m", "0", "0s", "m", "1.2.3m", "5 minutes"])
def test_bad_budgets_are_one_line_errors_naming_the_flag(text, cli, assert_one_line_error, tmp_path, write_npz):
    npz = write_npz(tmp_path / "d.npz")
    code, _, err = cli("train", "--data", npz, "--val-split", "10", "--out", tmp_path / "run", f"--budget={text}")
    assert_one_line_error(code, err, "--budget")
    assert not (tmp_path / "run").exists()


def test_format_duration():
    assert [format_duration(s) for s in (52, 860, 900, 3900)] == ["52s", "14m 20s", "15m", "1h 05m"]


def test_predict_counts_each_epoch_at_its_size_and_the_evaluations():
    config = TrainConfig(**TINY, epochs=8, tta=True, tta_translate=1, tta_every_epoch=False)
    assert config.train_sizes == [16, 16, 24, 24, None, None, None, None]
    train = 10 * (2 * 1.0 + 2 * 2.0 + 4 * 4.0)
    evals = 7 * 3.0 + 3.0 * 6  # plain after epochs 1-7; flip x translate (6 passes) after the last
    assert predict_seconds(config, 8, 10, FAKE) == pytest.approx(train + evals)


def test_the_plan_fills_the_budget_best():
    """No number of epochs at any split the planner may use fits and uses more of the budget."""
    config = TrainConfig(**TINY, epochs=40)
    for budget in (60.0, 165.0, 190.0, 200.0, 500.0, 1000.0):
        left = (budget - FAKE.seconds) * (1 - HEADROOM)
        plan = make_plan(config, budget, FAKE, _steps)
        planned = planned_config(config, plan)
        assert planned.epochs == plan.epochs and planned.plan == plan.to_dict()
        assert plan.predicted_s == pytest.approx(predict_seconds(planned, plan.epochs, 10, FAKE))
        assert plan.predicted_s <= left
        for epochs in range(1, 41):
            for progressive in _splits(config, epochs):
                other = dataclasses.replace(config, epochs=epochs, progressive=progressive)
                assert not plan.predicted_s < predict_seconds(other, epochs, 10, FAKE) <= left, (budget, other)
        assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan  # as stored in config.json


def test_the_plan_moves_a_full_size_epoch_down_where_that_fills_more_of_the_budget():
    """145.8 s left (172 less 10 measuring, less 10% headroom): 4 epochs at the recipe's split (1, 1, 2 at
    16, 24, 32 px) take 122 s and 5 (1, 1, 3) take 165; 5 with one full-size epoch at 24 px (1, 2, 2) take
    145, at 16 px (2, 1, 2) 135; 6 take at least 148 (3, 1, 2): the plan trains 5 at (1, 2, 2)."""
    config = TrainConfig(**TINY, epochs=40)
    assert [predict_seconds(dataclasses.replace(config, epochs=e), e, 10, FAKE) for e in (4, 5)] == [122, 165]
    assert HEADROOM == 0.10
    plan = make_plan(config, 172.0, FAKE, _steps)
    planned = planned_config(config, plan)
    assert plan.epochs == 5 and planned.train_sizes == [16, 24, 24, None, None]
    assert plan.predicted_s == predict_seconds(planned, 5, 10, FAKE) == 145
    assert "5 epochs (1 at 16 px, 2 at 24 px, 2 at 32 px) of 10 steps" in plan.line(32)
    # where no moved split fills more, the plan keeps the recipe's
    plan = make_plan(config, 150.0, FAKE, _steps)  # 126 s left: 4 epochs (1, 1, 2) 122 s; 5 at best 135
    assert plan.epochs == 4 and plan.progressive == config.progressive
    assert planned_config(config, plan).train_sizes == TrainConfig(**TINY, epochs=4).train_sizes


def test_a_plan_from_before_the_split_keeps_the_config_s_phases():
    config = TrainConfig(**TINY, epochs=40)
    old = make_plan(config, 172.0, FAKE, _steps).to_dict()
    del old["progressive"]  # plans written before the planner chose the split
    followed = follow_plan(dataclasses.replace(config, plan=old))
    assert followed.epochs == 5 and followed.progressive == config.progressive
    assert Plan.from_dict(old).progressive is None


def test_the_plan_stops_at_the_recipe_s_epochs():
    plan = make_plan(TrainConfig(**TINY, epochs=5), 10_000.0, FAKE, _steps)
    assert plan.epochs == plan.max_epochs == 5 and "the recipe's maximum" in plan.line(32)


def test_a_budget_too_small_for_one_epoch_says_what_to_do():
    with pytest.raises(BudgetTooSmall) as e:
        make_plan(TrainConfig(**TINY, epochs=5), 40.0, FAKE, _steps)  # one epoch: 40 s + 3 s, 30 s left
    msg = str(e.value)
    assert "\n" not in msg and "--budget 40s" in msg and "one epoch" in msg and "43s" in msg and "--budget none" in msg


@pytest.fixture
def fake_measure(monkeypatch):
    """fit measures nothing: every run sees FAKE; ``calls`` counts the measurements."""
    calls = []

    def measure(config, *args, **kwargs):
        calls.append(config)
        return FAKE

    monkeypatch.setattr(train_module, "measure", measure)
    return calls


def test_the_main_job_plans_to_a_15_minute_budget_and_the_gpu_recipe_does_not_plan(
    synthetic, tmp_path, fake_measure, capsys
):
    data = synthetic(n_train=200, n_val=40)
    tiny = {k: v for k, v in TINY.items() if k not in ("progressive",)}
    main_job = dataclasses.replace(get_preset("fast-cpu"), **tiny, epochs=2, tta_translate=0)
    fit(main_job, data, tmp_path / "main", progress=False)
    assert len(fake_measure) == 1 and "plan for a 15m budget" in capsys.readouterr().out
    fit(dataclasses.replace(main_job, budget=get_preset("fast").budget), data, tmp_path / "gpu", progress=False)
    assert len(fake_measure) == 1 and "budget" not in capsys.readouterr().out


def _state(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def _assert_same_weights(a, b):
    wa, wb = _state(a), _state(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fit_trains_the_planned_epochs_and_stores_the_plan(synthetic, tmp_path, fake_measure, capsys):
    data = synthetic(n_train=200, n_val=40)  # 10 steps of 20
    config = TrainConfig(**TINY, epochs=40, budget="3m")
    history = fit(config, data, tmp_path, progress=False)
    expected = make_plan(config, 180.0, FAKE, _steps)
    assert len(fake_measure) == 1 and len(history.records) == expected.epochs < 40
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["epochs"] == expected.epochs and Plan.from_dict(saved["plan"]) == expected
    assert load_checkpoint(tmp_path / "last.pt").config.plan == saved["plan"]
    assert saved["progressive"] == expected.progressive  # the phases the plan chose
    out = capsys.readouterr().out
    assert expected.line(32) in out and f"plan for a 3m budget: {expected.epochs} epochs (" in out
    assert "1 s at 16 px, 2 s at 24 px, 4 s at 32 px a step, 3 s an evaluation" in out
    assert "the 3m budget: 10s measuring, then" in out


def test_resume_continues_the_plan_without_measuring(synthetic, tmp_path, fake_measure):
    data = synthetic(n_train=200, n_val=40)
    config = TrainConfig(**TINY, epochs=40, budget="3m")
    whole = tmp_path / "whole"
    fit(config, data, whole, progress=False, log=None)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        fit(config, data, part, progress=False, log=None, on_epoch_end=stop_after_two)
    assert len(fake_measure) == 2
    # the same command again (--resume auto: the config still says 40 epochs and no plan)
    fit(config, data, part, resume="auto", progress=False, log=None)
    assert len(fake_measure) == 2  # no third measurement
    assert load_checkpoint(part / "last.pt").epoch == load_checkpoint(whole / "last.pt").epoch
    _assert_same_weights(whole / "last.pt", part / "last.pt")


def test_a_plan_decides_the_run_bit_for_bit(synthetic, tmp_path):
    """A run that really measures (steps on a copy, generators restored) trains exactly as a run given its
    plan and no budget, which measures nothing."""
    data = synthetic(n_train=200, n_val=40)
    measured = tmp_path / "measured"
    fit(TrainConfig(**TINY, epochs=6, budget="1h"), data, measured, progress=False, log=None)
    plan = json.loads((measured / "config.json").read_text())["plan"]
    assert plan["epochs"] == 6 and plan["step_seconds"]["0"] > 0
    given = tmp_path / "given"
    fit(TrainConfig(**TINY, epochs=40, plan=plan), data, given, progress=False, log=None)
    assert load_checkpoint(given / "last.pt").epoch == 6
    _assert_same_weights(measured / "last.pt", given / "last.pt")
    _assert_same_weights(measured / "best.pt", given / "best.pt")


def test_a_run_with_a_validation_split_ends_calibrated(synthetic, tmp_path):
    data = synthetic(n_train=200, n_val=40)
    fit(TrainConfig(**TINY, epochs=3), data, tmp_path, progress=False, log=None)
    best = load_checkpoint(RunDir(tmp_path).best)
    assert best.temperature != 1.0 and best.calibration["split"] == "val" and best.calibration["n"] == 40


def test_torchrun_ranks_agree_on_one_plan(real_data, tmp_path):
    npz = tmp_path / "small.npz"
    np.savez(
        npz,
        x_train=real_data.train.images[:1000],
        y_train=real_data.train.labels[:1000],
        fine_label_names=np.array(real_data.classes),
    )
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--data", str(npz), "--val-split", "200"]
    args += ["--model", "fast", "--model-kwargs", json.dumps(TINY["model_kwargs"]), "--optimizer", "sgd"]
    args += ["--batch-size", "40", "--epochs", "50", "--budget", "40s", "--progressive", "16:0.25,24:0.25"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "cifar_resnet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "run" / "config.json").read_text())["plan"]
    assert proc.stdout.count("plan for a 40s budget") == 1
    assert f"{plan['epochs']} epochs" in proc.stdout
    assert load_checkpoint(tmp_path / "run" / "last.pt").epoch == plan["epochs"]
