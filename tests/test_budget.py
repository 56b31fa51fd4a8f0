"""--budget: the duration flag, the planner (with made-up step times), the plan stored and kept on resume, equal
plans giving bit-identical runs, torchrun ranks agreeing on one plan, and the temperature a run ends with."""

from __future__ import annotations

import dataclasses
import itertools
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
    VARIATION_DEFAULT,
    VARIATION_MAX,
    VARIATION_MIN,
    BudgetTooSmall,
    Measurement,
    Trace,
    _Clock,
    _variation,
    decide,
    follow_plan,
    predict_seconds,
    replay_config,
)
from cifar_resnet.checkpoint import RunDir
from cifar_resnet.config import get_preset
from cifar_resnet.console import format_duration, parse_duration
from cifar_resnet.optim import ProgressSchedule

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


def _clock(elapsed: float, ratio: float = 1.0, variation: float = 0.05):
    return _Clock(elapsed, ratio, variation)


def _trace(config: TrainConfig, budget: float) -> Trace:
    return Trace(budget, config.epochs, config.progressive, 10, dict(FAKE.step_seconds), FAKE.eval_seconds, 10.0)


@pytest.mark.parametrize("budget", [60.0, 165.0, 190.0, 500.0, 1000.0])
def test_the_first_plan_ends_at_the_budget_less_its_spare_with_a_fitted_last_epoch(budget):
    config = TrainConfig(**TINY, epochs=40)
    d = decide(config, _trace(config, budget), 0, _clock(10.0), _steps)
    last_step = FAKE.step_seconds[d.sizes[-1]]
    assert budget - d.spare_s - last_step < d.predicted_s <= budget - d.spare_s
    assert d.steps_left == 10 * (d.epochs - 1) + d.last_steps and 1 <= d.last_steps <= 10
    assert len(d.sizes) == d.epochs and d.spare_s == pytest.approx(0.05 * (10 * last_step + 6 * 0 + 3.0))
    # the predicted end is the sum of the epochs at their sizes, the last one cut to its steps
    run = dataclasses.replace(config, epochs=d.epochs)
    whole = predict_seconds(run, d.epochs, 10, FAKE) if d.sizes == [s or 0 for s in run.train_sizes] else None
    if whole is not None:
        assert d.predicted_s == pytest.approx(10.0 + whole - (10 - d.last_steps) * last_step)


def test_a_slower_machine_gets_fewer_epochs_and_a_faster_one_more_up_to_the_recipe_s():
    config = TrainConfig(**TINY, epochs=40)
    trace = _trace(config, 600.0)
    quiet = decide(config, trace, 2, _clock(60.0), _steps, trained_size=16)
    slow = decide(config, trace, 2, _clock(60.0, ratio=2.0), _steps, trained_size=16)
    fast = decide(config, trace, 2, _clock(60.0, ratio=0.05), _steps, trained_size=16)
    assert slow.epochs < quiet.epochs < fast.epochs == 40
    assert slow.predicted_s <= 600 - slow.spare_s and quiet.predicted_s <= 600 - quiet.spare_s
    line = trace.with_decision(fast).describe(fast, 32)
    assert "40 epochs (the recipe's maximum), 38 more" in line


def test_a_re_plan_never_goes_back_to_a_smaller_image_size():
    """After an epoch at 32 px, a plan of more epochs keeps the rest at 32 px rather than the recipe's
    phases over the new number, which would put epoch 7 back at 16 or 24 px."""
    config = TrainConfig(**TINY, epochs=40)
    d = decide(config, _trace(config, 2000.0), 7, _clock(300.0, ratio=0.5), _steps, trained_size=None)
    assert d.epochs > 14 and set(d.sizes) == {0}
    d = decide(config, _trace(config, 2000.0), 7, _clock(300.0, ratio=0.5), _steps, trained_size=24)
    assert d.sizes[0] == 24 and 16 not in d.sizes


def _phase_at(progress: float) -> int:
    """TINY's phases: 16 px to a quarter of the run's progress, 24 px to half, full size (0) after."""
    return 16 if progress < 0.25 else 24 if progress < 0.5 else 0


def _laid_over_progress(d, steps: int = 10) -> list[int]:
    """The size of each epoch a decision plans, from the schedule's progress at the middle of the epoch."""
    lengths = [steps] * (d.epochs - d.epoch - 1) + [d.last_steps]
    before = itertools.accumulate([0, *lengths])
    return [_phase_at(d.progress + (1 - d.progress) * (b + n / 2) / d.steps_left) for b, n in zip(before, lengths)]


@pytest.mark.parametrize("progress", [0.1, 0.3])
def test_a_shortened_run_keeps_its_resizing_phases_where_its_schedule_is(progress):
    """A slow epoch leaves time for two more: they train at the phases of the schedule's progress over them
    (the learning rate's), not at those of the new number of epochs, which would jump to full size."""
    config = TrainConfig(**TINY, epochs=40)
    trace = _trace(config, 180.0)
    d = decide(config, trace, 2, _Clock(60.0, 2.0, 0.05, progress), _steps, trained_size=16)
    assert d.epochs == 4 and d.progress == progress and d.steps_left == 10 + d.last_steps
    assert d.sizes == _laid_over_progress(d) == ([24, 0] if progress == 0.1 else [0, 0])
    assert d.predicted_s <= 180 - d.spare_s


def test_a_late_run_still_ends_its_schedule_with_a_short_last_epoch():
    """Past its budget, a re-plan cannot stop mid-schedule: it plans one more epoch, of the shortest length."""
    config = TrainConfig(**TINY, epochs=40)
    d = decide(config, _trace(config, 100.0), 5, _clock(120.0), _steps, trained_size=None)
    assert d.epochs == 6 and d.last_steps == 1 and d.steps_left == 1 and d.predicted_s > 100


def test_the_plan_stops_at_the_recipe_s_epochs():
    config = TrainConfig(**TINY, epochs=5)
    trace = _trace(config, 10_000.0)
    d = decide(config, trace, 0, _clock(10.0), _steps)
    assert d.epochs == 5 and d.last_steps == 10 and "the recipe's maximum" in trace.with_decision(d).first_line(32)


def test_a_budget_too_small_for_one_epoch_says_what_to_do():
    config = TrainConfig(**TINY, epochs=5)
    with pytest.raises(BudgetTooSmall) as e:
        decide(config, _trace(config, 40.0), 0, _clock(10.0), _steps)  # one epoch: 40 s + 3 s, 30 s left
    msg = str(e.value)
    assert "\n" not in msg and "--budget 40s" in msg and "one epoch" in msg and "43s" in msg and "--budget none" in msg


def test_the_spare_follows_how_much_this_run_s_speed_has_varied():
    assert _variation([1.0]) == VARIATION_DEFAULT
    assert _variation([1.0, 1.0, 1.0]) == VARIATION_MIN
    assert _variation([1.0, 1.04, 1.0]) == pytest.approx((0.04 + 0.04 / 1.04) / 2)
    assert _variation([1.0, 2.0]) == VARIATION_MAX


def test_a_trace_survives_json_and_a_bad_one_is_a_one_line_error():
    config = TrainConfig(**TINY, epochs=40)
    trace = _trace(config, 300.0)
    trace = trace.with_decision(decide(config, trace, 0, _clock(10.0), _steps))
    assert Trace.from_dict(json.loads(json.dumps(trace.to_dict()))) == trace
    with pytest.raises(ValueError, match="not a trace written by --budget"):
        Trace.from_dict({"decisions": [{"epoch": 0}]})
    with pytest.raises(ValueError, match="--plan"):
        TrainConfig(**TINY, plan={"decisions": []})


@pytest.mark.parametrize("schedule", ["linear", "onecycle", "cosine"])
def test_the_learning_rate_is_continuous_across_a_re_plan(schedule):
    """A re-plan that halves or doubles the steps left changes the schedule's slope, never its value: the
    learning rate moves across it by no more than between two steps on either side; the last step ends the
    schedule (progress 1) wherever the re-plans fell."""
    model = torch.nn.Linear(3, 2)
    config = TrainConfig(**TINY, schedule=schedule, warmup=0.2)
    for steps_left in (30, 140):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = ProgressSchedule(config, opt, 100)
        lrs = []
        for _ in range(40):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        sched.replan(steps_left)
        for _ in range(steps_left):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        jumps = [abs(b - a) for a, b in itertools.pairwise(lrs)]
        around = max(jumps[38], jumps[40])  # the steps before and after the re-plan
        assert jumps[39] <= 1.01 * around and max(lrs) <= 0.05
        assert sched.progress == pytest.approx(1.0) and lrs[-1] < 0.05 * 0.05
        restored = ProgressSchedule(config, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 7)
        restored.load_state_dict(sched.state_dict())
        assert restored.progress == sched.progress and restored.rate == sched.rate


def test_an_older_release_s_fixed_plan_is_followed_without_measuring(synthetic, tmp_path, fake_measure):
    data = synthetic(n_train=200, n_val=40)
    old = {"budget_s": 180.0, "epochs": 3, "max_epochs": 40, "predicted_s": 100.0, "step_seconds": {"0": 1.0}}
    old |= {"steps_per_epoch": 10, "eval_seconds": 1.0, "measure_seconds": 5.0, "progressive": "16:0.4"}
    config = TrainConfig(**TINY, epochs=40, budget="3m", plan=old)
    assert follow_plan(config).epochs == 3 and follow_plan(config).train_sizes == [16, None, None]
    history = fit(config, data, tmp_path, progress=False, log=None)
    assert not fake_measure and [r["train_size"] for r in history.records] == [16, 32, 32]


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


_TRAIN_STEP, _COLLECT_LOGITS = train_module.train_step, train_module.collect_logits


class FakeMachine:
    """A made-up clock that runs as FAKE says: each training step advances it by FAKE's time at the batch's
    size and each evaluation pass by FAKE's (six passes with flip x translate TTA), times ``speed``, which
    ``on_epoch_end`` changes after the epochs of ``speeds``. Measuring takes FAKE's 10 s. Nothing sleeps."""

    def __init__(self, monkeypatch, speeds: dict[int, float] | None = None, at_step: tuple[int, float] = (0, 1.0)):
        self.t, self.speed, self.speeds, self.measured = 0.0, 1.0, speeds or {}, 0
        self.steps, self.at_step = 0, at_step  # (n, s): from the n-th step on, speed s
        step, collect = _TRAIN_STEP, _COLLECT_LOGITS  # the real ones, whatever another FakeMachine patched

        def timed_step(model, x, *args, **kwargs):
            self.steps += 1
            if self.steps == self.at_step[0]:
                self.speed = self.at_step[1]
            self.t += FAKE.step_seconds[0 if x.shape[-1] == 32 else x.shape[-1]] * self.speed
            return step(model, x, *args, **kwargs)

        def timed_collect(model, loader, options):
            self.t += FAKE.eval_seconds * self.speed * (6 if options.tta else 1)
            return collect(model, loader, options)

        def measure(*args, **kwargs):
            self.measured += 1
            self.t += FAKE.seconds
            return FAKE

        monkeypatch.setattr(train_module, "train_step", timed_step)
        monkeypatch.setattr(train_module, "collect_logits", timed_collect)
        monkeypatch.setattr(train_module, "measure", measure)

    def __call__(self) -> float:
        return self.t

    def on_epoch_end(self, record: dict) -> None:
        self.speed = self.speeds.get(record["epoch"], self.speed)
        self.end = self.t  # after the last epoch: when training and evaluation ended (calibration comes after)


BUDGETED = {**TINY, "epochs": 60, "budget": "10m", "tta": True, "tta_translate": 1, "tta_every_epoch": False}


def _budget_run(machine, data, out, **kwargs):
    return fit(
        TrainConfig(**BUDGETED), data, out, progress=False, clock=machine, on_epoch_end=machine.on_epoch_end, **kwargs
    )


@pytest.mark.parametrize("speeds", [{}, {3: 2.0, 6: 0.5}], ids=["quiet", "2x-slower-at-3-then-2x-faster-at-6"])
def test_a_budget_run_ends_between_95_and_100_percent_of_its_budget(synthetic, tmp_path, monkeypatch, capsys, speeds):
    """Steps 2x slower from epoch 3, then 2x faster than at the start from epoch 6 (by the made-up clock): the
    run re-plans, ends in the window, and its learning rate never jumps."""
    machine = FakeMachine(monkeypatch, speeds)
    history = _budget_run(machine, synthetic(n_train=200, n_val=40), tmp_path)
    assert 0.95 * 600 <= machine.end <= 600 and machine.measured == 1
    out = capsys.readouterr().out
    trace = Trace.from_dict(json.loads((tmp_path / "config.json").read_text())["plan"])
    assert len(history.records) == trace.last.epochs and trace.at(0) is not None
    assert trace.last.last_steps == len(history.records[-1]["lrs"])
    lrs = [lr for r in history.records for lr in r["lrs"]]
    jumps = [abs(b - a) for a, b in itertools.pairwise(lrs)]
    boundaries = [i for i in itertools.accumulate(len(r["lrs"]) for r in history.records) if 2 <= i < len(jumps)]
    for i in boundaries:  # across each re-plan the learning rate moves no more than on the steps around it
        assert jumps[i - 1] <= 1.01 * max(jumps[i - 2], jumps[i]) + 1e-12, i
    assert f"budget: {format_duration(machine.end)} used ({100 * machine.end / 600:.0f}%" in out
    sizes = [r["train_size"] % 32 for r in history.records]  # 0: full size
    for d in (d for d in trace.decisions if not d.step):  # phases over the schedule's progress, never back
        floor = sizes[d.epoch - 1] if d.epoch else 16
        assert d.sizes == [max(s, floor, key=lambda s: s or 99) for s in _laid_over_progress(d)], d
    assert sizes == sorted(sizes, key=lambda s: s or 99)
    if speeds:
        slow = trace.at(4)
        assert slow.ratio == pytest.approx(2.0) and slow.epochs < trace.at(0).epochs
        assert trace.at(7).ratio == pytest.approx(0.5) and trace.last.epochs > slow.epochs
        assert "re-plan after epoch 4" in out and "epoch 4 ran at 2.00x the start-up figures (1.00x before)" in out
        assert load_checkpoint(tmp_path / "last.pt").config.plan == trace.to_dict()


@pytest.mark.parametrize("speed", [2.0, 0.5])
def test_the_last_epoch_fits_its_length_to_the_clock_as_it_runs(synthetic, tmp_path, monkeypatch, capsys, speed):
    """Steps 2x slower (or faster) from a quarter into the last epoch on, which no plan made at its start could
    know: the last epoch re-fits its length as it runs, and the run still ends in the window."""
    data = synthetic(n_train=400, n_val=40)  # 20 steps an epoch: a re-fit every 2 steps of the last
    probe = FakeMachine(monkeypatch)
    _budget_run(probe, data, tmp_path / "probe", log=None)
    history = load_checkpoint(tmp_path / "probe" / "last.pt").history  # where the last epoch starts
    steps, last = sum(len(r["lrs"]) for r in history), len(history[-1]["lrs"])
    machine = FakeMachine(monkeypatch, at_step=(steps - last + last // 4, speed))
    _budget_run(machine, data, tmp_path / "run")
    trace = Trace.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["plan"])
    refits = [d for d in trace.decisions if d.step]
    assert refits and (refits[0].ratio > 1.2 if speed > 1 else refits[0].ratio < 0.8)
    planned = [d for d in trace.decisions if not d.step][-1]  # the plan the last epoch started with
    assert (refits[-1].last_steps < planned.last_steps) == (speed > 1)  # shorter when slower, else longer
    assert 0.95 * 600 <= machine.end <= 600
    assert "last epoch re-fitted after step" in capsys.readouterr().out


def test_a_last_epoch_with_time_for_more_plans_more_epochs_after_it(synthetic, tmp_path, monkeypatch, capsys):
    """3x slower from epoch 4, so a re-plan leaves one epoch; then 6x faster in it: the last epoch trains
    whole and the run plans more epochs after it, as at an epoch boundary, and ends in the window."""
    data = synthetic(n_train=400, n_val=40)
    probe = FakeMachine(monkeypatch, {3: 3.0})
    _budget_run(probe, data, tmp_path / "probe", log=None)
    history = load_checkpoint(tmp_path / "probe" / "last.pt").history
    start = sum(len(r["lrs"]) for r in history[:-1])  # where the probe's last epoch starts
    machine = FakeMachine(monkeypatch, {3: 3.0}, at_step=(start + 1, 0.5))
    run = _budget_run(machine, data, tmp_path / "run")
    trace = Trace.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["plan"])
    grown = [d for d in trace.decisions if d.step and d.epochs > len(history)]
    assert grown and len(run.records) > len(history) and grown[0].sizes[0] == history[-1]["train_size"] % 32
    assert "it trains whole, then more" in capsys.readouterr().out
    assert 0.95 * 600 <= machine.end <= 600


def test_an_epoch_too_late_for_another_after_it_becomes_the_last(synthetic, tmp_path, monkeypatch, capsys):
    """Steps 4x slower from the middle of the last epoch but one, which the plan made at its start cannot
    know: the epoch is cut and made the last, so the run ends its schedule within the budget, rather than
    after another epoch and the final evaluation past it."""
    data = synthetic(n_train=400, n_val=40)  # 20 steps an epoch: a check every 2 steps
    probe = FakeMachine(monkeypatch)
    _budget_run(probe, data, tmp_path / "probe", log=None)
    history = load_checkpoint(tmp_path / "probe" / "last.pt").history
    before_last = sum(len(r["lrs"]) for r in history[:-2])  # where the probe's last epoch but one starts
    machine = FakeMachine(monkeypatch, at_step=(before_last + 10, 4.0))
    run = _budget_run(machine, data, tmp_path / "run")
    trace = Trace.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["plan"])
    cut = [d for d in trace.decisions if d.step and d.epochs == d.epoch + 1 and d.epoch == len(history) - 2]
    assert cut and len(run.records) == len(history) - 1 and trace.last.epochs == len(run.records)
    assert f"epoch {len(history) - 1} made the last after step" in capsys.readouterr().out
    assert machine.end <= 600


def test_a_resumed_budget_run_keeps_following_the_clock_and_matches_the_whole_run(synthetic, tmp_path, monkeypatch):
    data = synthetic(n_train=200, n_val=40)
    whole = FakeMachine(monkeypatch, {3: 2.0, 6: 0.5})
    _budget_run(whole, data, tmp_path / "whole", log=None)

    part = FakeMachine(monkeypatch, {3: 2.0, 6: 0.5})

    def stop_after_five(record):
        part.on_epoch_end(record)
        if record["epoch"] == 5:
            raise KeyboardInterrupt

    config, ends = TrainConfig(**BUDGETED), {"on_epoch_end": part.on_epoch_end}
    with pytest.raises(KeyboardInterrupt):
        fit(config, data, tmp_path / "part", progress=False, log=None, clock=part, on_epoch_end=stop_after_five)
    saved = Trace.from_dict(load_checkpoint(tmp_path / "part" / "last.pt").config.plan)
    assert saved.last.epoch == 5
    # the same command again (--resume auto): the trace so far holds, and the clock decides from there on
    fit(config, data, tmp_path / "part", resume="auto", progress=False, log=None, clock=part, **ends)
    assert part.measured == 1 and part.t == whole.t
    done = Trace.from_dict(json.loads((tmp_path / "part" / "config.json").read_text())["plan"])
    assert done.last.epoch > 5 and done == Trace.from_dict(
        json.loads((tmp_path / "whole" / "config.json").read_text())["plan"]
    )
    _assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "part" / "last.pt")


def test_a_replayed_trace_trains_the_same_weights_without_timing(synthetic, tmp_path, monkeypatch, cli, write_npz):
    """A run on the real clock (which really measures, on copies, the generators restored) and its replay
    from the trace it wrote, which times nothing: bit-identical weights; the same from the command line."""
    data = synthetic(n_train=200, n_val=40)
    live = tmp_path / "live"
    fit(TrainConfig(**TINY, epochs=40, budget="15s"), data, live, progress=False, log=None)
    trace = Trace.from_dict(json.loads((live / "config.json").read_text())["plan"])
    assert trace.step_seconds[0] > 0 and trace.last.epoch > 0
    config = replay_config(TrainConfig.from_dict(json.loads((live / "config.json").read_text())), "config.json")

    def no_clock():
        raise AssertionError("a replay timed something")

    monkeypatch.setattr(train_module, "measure", lambda *a, **k: no_clock())
    fit(config, data, tmp_path / "replay", progress=False, log=None, clock=no_clock)
    assert load_checkpoint(tmp_path / "replay" / "last.pt").epoch == trace.last.epochs
    _assert_same_weights(live / "last.pt", tmp_path / "replay" / "last.pt")
    _assert_same_weights(live / "best.pt", tmp_path / "replay" / "best.pt")


def test_train_replay_reruns_a_run_directory(cli, write_npz, tmp_path, assert_one_line_error):
    npz = write_npz(tmp_path / "d.npz", n=120)
    flags = ["--data", npz, "--val-split", "20", "--model", "fast", "--model-kwargs", json.dumps(TINY["model_kwargs"])]
    flags += ["--optimizer", "sgd", "--batch-size", "20", "--epochs", "30", "--no-progress", "--device", "cpu"]
    code, out, err = cli("train", *flags, "--budget", "4s", "--out", tmp_path / "live")
    assert code == 0, err
    code, out, err = cli("train", "--replay", tmp_path / "live", "--no-progress")
    assert code == 0, err
    assert "replaying the" in out and "replayed the" in out and "plan for" not in out
    _assert_same_weights(tmp_path / "live" / "last.pt", tmp_path / "live-replay" / "last.pt")
    code, _, err = cli("train", "--replay", tmp_path / "live", "--lr", "0.1", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "--replay reruns a run as it was configured; drop --lr")
    code, _, err = cli("train", "--replay", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "no config.json")
    code, _, err = cli("train", *flags, "--epochs", "1", "--out", tmp_path / "plain")
    code, _, err = cli("train", "--replay", tmp_path / "plain", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "has no trace of a budget run")
    assert not (tmp_path / "x").exists()


def test_a_run_with_a_validation_split_ends_calibrated(synthetic, tmp_path):
    data = synthetic(n_train=200, n_val=40)
    fit(TrainConfig(**TINY, epochs=3), data, tmp_path, progress=False, log=None)
    best = load_checkpoint(RunDir(tmp_path).best)
    assert best.temperature != 1.0 and best.calibration["split"] == "val" and best.calibration["n"] == 40


TORCHRUN_SCRIPT = """
import json, os, sys, time
import torch
from cifar_resnet import TrainConfig, fit

rank = int(os.environ["RANK"])
# rank 1's clock runs 3x fast: to it, every step and every evaluation takes 3x as long
clock = (lambda: 3 * time.perf_counter()) if rank == 1 else time.perf_counter
config = TrainConfig(**json.loads(sys.argv[1]), data=sys.argv[2])
start = time.perf_counter()
history = fit(config, None, sys.argv[3], progress=False, log=None, clock=clock)
lrs = [lr for r in history.records for lr in r["lrs"]]
weights = float(sum(p.double().sum() for p in history.model.parameters()))
with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
    json.dump({"lrs": lrs, "epochs": len(history.records), "weights": weights}, f)
with open(os.path.join(sys.argv[3], f"seconds{rank}.json"), "w") as f:
    json.dump(time.perf_counter() - start, f)
"""


@pytest.mark.long
def test_torchrun_ranks_decide_together_on_the_slowest_rank_s_times(real_data, tmp_path):
    """Two processes, rank 1 with a clock 3x fast (a rank 3x slower, as far as the planner can tell, without
    slowing the test): both keep one schedule (the same learning rates and weights, the same number of epochs),
    planned from rank 1's times, so the run ends after about a third of its budget of real time."""
    npz = tmp_path / "small.npz"
    np.savez(
        npz,
        x_train=real_data.train.images[:1000],
        y_train=real_data.train.labels[:1000],
        fine_label_names=np.array(real_data.classes),
    )
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    config = {**TINY, "batch_size": 40, "epochs": 50, "budget": "25s", "val_split": 200}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(
        [*cmd, json.dumps(config), str(npz), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    trace = Trace.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["plan"])
    assert ranks[0]["epochs"] == trace.last.epochs and len(trace.decisions) >= 2
    real = json.loads((tmp_path / "run" / "seconds0.json").read_text())
    assert trace.last.predicted_s > 0.9 * 25 and real < 0.6 * 25, (trace.last.predicted_s, real)
