"""A sweep's worker: take trials from the study and train each in this process (:func:`work`), or start
several worker processes (:func:`run_workers`). A trial is an ordinary run directory, ``DIRECTORY/trial-NNNN``;
while it trains a thread sends heartbeats, and a stop signal leaves it resumable and queued again. Its
overrides, metrics, training seconds, peak memory and machine are stored as the trial's user attributes."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..budget import is_trace
from ..checkpoint import RunDir
from ..config import TrainConfig
from ..device import cpu_model, resolve_device
from ..memory import release_freed_memory
from ..signals import StopSignals
from ..train import TrainingInterrupted, fit
from .spec import SweepSpec, build_config
from .study import (
    Requeue,
    error_line,
    frozen_trial,
    import_optuna,
    next_trial,
    open_and_queue,
    storage_of,
    trial_id_of,
    trial_states,
)

__all__ = ["WorkerResult", "run_workers", "work"]


class _Heartbeat:
    """Record the trial's heartbeat every ``interval`` seconds from a thread, while training runs."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.failures, self.error = 0, ""  # beats that did not reach the storage, and the last one's error
        self.thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a database hiccup: the next beat tries again
                self.failures += 1
                self.error = error_line(e)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def reset_peak_memory() -> bool:
    """Reset the process's peak resident set size (Linux >= 4.0), so the next reading is this trial's. The
    memory an earlier trial of this worker freed is handed back first: training keeps freed memory for the
    next step (``memory.keep_freed_memory``), and kept, it would count in every later trial's peak."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


@dataclasses.dataclass
class WorkerResult:
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    exit_code: int = 0


def work(
    spec: SweepSpec,
    url: str | None = None,
    *,
    log: Callable[[str], None] = print,
    max_trials: int | None = None,
    variants: frozenset[str] | None = None,
) -> WorkerResult:
    """One worker: take trials from the study until none is left (or ``max_trials`` were run), training
    each in this process; with ``variants`` (:func:`select_variants`), only cells of those grid rows.
    Returns the counts; ``exit_code`` is 128 + the signal after Ctrl-C/SIGTERM."""
    study = open_and_queue(spec, url)
    result = WorkerResult()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # Ctrl-C/SIGTERM between trials (waiting, taking one, setting one up) stops the worker there; during
    # training, fit's own handler (nested in this one) stops the trial after its step, resumable
    with StopSignals() as stop:
        while max_trials is None or result.completed + result.pruned + result.failed < max_trials:
            trial = next_trial(study, spec, log, stop, variants)
            if trial is None:
                break
            outcome = _run_trial(study, trial, spec, worker, log, stop)
            if isinstance(outcome, int):  # stopped by a signal: its exit code
                result.exit_code = outcome
                break
            setattr(result, outcome, getattr(result, outcome) + 1)
        if stop.received is not None and not result.exit_code:
            log(f"stopped by {stop.name} between trials")
            result.exit_code = 128 + stop.received
    return result


def _trial_config(trial, spec: SweepSpec) -> tuple[dict, TrainConfig]:
    if spec.kind == "grid":
        variant = trial.suggest_categorical("variant", list(spec.variants))
        seed = trial.suggest_categorical("seed", list(spec.seeds))
        return spec.grid_config(variant, seed)
    overrides = {**spec.base, **{p.name: p.suggest(trial) for p in spec.params}}
    return overrides, build_config(spec.preset, overrides)


def _take_over(trial, spec: SweepSpec, run_dir: Path, log: Callable[[str], None]) -> None:
    """A continuation moves its predecessor's run directory to its own number, so that it resumes there."""
    before = trial.user_attrs.get("continues")
    if before is None or run_dir.exists():
        return
    old = spec.directory / f"trial-{before:04d}"
    if old.is_dir():
        os.replace(old, run_dir)
        (old.parent / f"{old.name}.moved").write_text(f"continued by trial {trial.number}: {run_dir.name}\n")
        log(f"continues trial {before}: {old.name} -> {run_dir.name}")
    else:
        log(f"continues trial {before}, whose run directory {old} is not on this machine: starting afresh")


@dataclasses.dataclass
class _TrialRun:
    """One trial as this worker runs it: the study, the Optuna trial, the sweep, its run directory and the
    logger of its lines (:func:`_trial_logger`)."""

    study: Any
    trial: Any
    spec: SweepSpec
    run_dir: Path
    say: Callable[[str], None]
    reported: int = 0  # the last tenth of the schedule reported to the pruner


def _run_trial(study, trial, spec: SweepSpec, worker: str, log: Callable[[str], None], stop: StopSignals) -> str | int:
    """Train one trial; returns "completed", "pruned" or "failed", or the exit code after a stop signal
    (``stop`` received one before training began: the trial is queued again, untouched)."""
    run_dir = spec.directory / f"trial-{trial.number:04d}"
    run = _TrialRun(study, trial, spec, run_dir, _trial_logger(trial.number, run_dir, log))
    try:
        overrides, config = _trial_config(trial, spec)
    except (ValueError, TypeError) as e:
        return _fail(run, f"configuration rejected: {error_line(e)}")
    try:
        label = _set_up(run, overrides, config, worker)
    except (OSError, ValueError) as e:  # an unreadable run directory fails this trial, not the worker
        return _fail(run, f"its run directory: {error_line(e)}")
    if stop.received is not None:  # a signal while the trial was taken and set up: hand it back
        _hand_back(run, f"interrupted by {stop.name} before training began")
        run.say(f"interrupted by {stop.name} before training began; queued again")
        return 128 + stop.received
    return _train(run, config, label)


def _set_up(run: _TrialRun, overrides: dict, config: TrainConfig, worker: str) -> str:
    """Make the trial's run directory (a continuation's: its predecessor's), record where and with what it
    runs, and report a resumed run's earlier epochs again, so that the pruner sees the whole curve. Returns
    the trial's label: its grid cell, or its searched values."""
    trial, run_dir = run.trial, run.run_dir
    _take_over(trial, run.spec, run_dir, run.say)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = trial.user_attrs.get("cell") or ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items() if k not in run.spec.base
    )
    resumed = RunDir(run_dir).last.is_file()
    run.say(f"{label}: {'resuming ' + str(RunDir(run_dir).last) if resumed else 'starting'} on {worker}")
    for key, value in {
        "overrides": overrides,
        "run_dir": str(run_dir),
        "worker": worker,
        "cpu": cpu_model(),
        "machine": _machine(config),
        "threads": torch.get_num_threads(),
    }.items():
        trial.set_user_attr(key, value)
    if resumed:  # a trial stopped within its first epoch has a last.pt and no history.json: nothing to report
        earlier = RunDir(run_dir).read_history()[0] if RunDir(run_dir).history_json.is_file() else []
        trial.set_user_attr("resumed_after_epoch", len(earlier))
        for record in earlier:
            run.reported = report_tenths(trial, record, run.reported)
    return label


PRUNE_STEPS = 10  # a trial reports to the pruner at each tenth of its learning-rate schedule


def report_tenths(trial, record: dict, reported: int) -> int:
    """Report ``record``'s validation top-1 at every tenth of the schedule it has reached since step
    ``reported`` (steps 1-10), and return the last step reported. Trials of different lengths (a budget run of
    a small net trains more, shorter epochs than one of a large net) are so compared at the same share of
    their schedules, not at the same epoch; an epoch that spans several tenths reports at each of them."""
    reached = min(PRUNE_STEPS, int(record.get("progress", 0.0) * PRUNE_STEPS + 1e-6))
    for step in range(reported + 1, reached + 1):
        trial.report(record["val_top1"], step)
    return max(reported, reached)


def _pruning_reporter(run: _TrialRun) -> Callable[[dict], None]:
    """``fit``'s ``on_epoch_end``: report the epoch's validation top-1 to the trial at the tenths of its
    schedule it reached (:func:`report_tenths`; a resumed trial's earlier epochs were reported in
    :func:`_set_up`), and prune it if the pruner says so. Not after its last epoch: the run is then done, and
    stopping it would save nothing but drop a finished run's value from the complete trials."""
    trial = run.trial

    def on_epoch_end(record: dict) -> None:
        run.reported = report_tenths(trial, record, run.reported)
        trial.set_user_attr("epochs_done", record["epoch"])
        if run.reported < PRUNE_STEPS and trial.should_prune():
            raise import_optuna().TrialPruned(f"pruned after epoch {record['epoch']} at {record['val_top1']:.4f}")

    return on_epoch_end


def _train(run: _TrialRun, config: TrainConfig, label: str) -> str | int:
    """Train the trial while a thread sends its heartbeats; record and tell its outcome (see _run_trial)."""
    study, trial, run_dir, say = run.study, run.trial, run.run_dir, run.say
    measured = reset_peak_memory()
    t0 = time.perf_counter()
    with _Heartbeat(storage_of(study), trial_id_of(trial), run.spec.heartbeat) as beat:
        try:
            history = fit(
                config, out_dir=run_dir, resume="auto", log=say, progress=False, on_epoch_end=_pruning_reporter(run)
            )
        except import_optuna().TrialPruned as e:
            _record(trial, run_dir, t0, measured, None)
            say(str(e))
            study.tell(trial, state=trial_states().PRUNED)
            return "pruned"
        except TrainingInterrupted as stopped:
            _hand_back(run, f"interrupted by {stopped.signal_name}: {stopped}")
            say(f"interrupted by {stopped.signal_name}; queued to resume from {RunDir(run_dir).last}")
            return stopped.exit_code
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step, but the last one stands
            _hand_back(run, "interrupted (KeyboardInterrupt)")
            return 130
        except Exception as e:  # noqa: BLE001 - a trial that raises is recorded as failed; the sweep goes on
            return _fail(run, error_line(e))
    if beat.failures:
        say(f"{beat.failures} heartbeat(s) did not reach the storage; the last: {beat.error}")
    value = _record(trial, run_dir, t0, measured, history)
    study.tell(trial, value)
    say(f"{label}: validation top-1 {value:.4f} (trial {trial.number} complete)")
    return "completed"


def _hand_back(run: _TrialRun, error: str) -> None:
    """A trial stopped on request: recorded as failed with ``error``, and its continuation queued (a stop
    asked for is not a fault, so it does not count against the retries)."""
    run.trial.set_user_attr("error", error)
    run.study.tell(run.trial, state=trial_states().FAIL)
    Requeue(run.spec.retries)(run.study, frozen_trial(run.study, run.trial), reason="interrupted")


def _machine(config: TrainConfig) -> str:
    """What a trial's training seconds depend on: the GPU's name where it trains on CUDA, else the CPU's."""
    try:
        device = resolve_device(config.device)
    except ValueError:
        return cpu_model()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def _fail(run: _TrialRun, message: str) -> str:
    run.trial.set_user_attr("error", message)
    run.study.tell(run.trial, state=trial_states().FAIL)
    run.say(f"failed: {message}")
    return "failed"


def _record(trial, run_dir: Path, t0: float, measured: bool, history) -> float | None:
    """Store the trial's final metrics as user attributes (a budget run's trace among them: every plan its
    clock made); returns its value (the last validation top-1)."""
    records = history.records if history is not None else RunDir(run_dir).read_history()[0]
    attrs: dict[str, Any] = {"wall_seconds": round(time.perf_counter() - t0, 2)}
    attrs["peak_mb" if measured else "process_peak_mb"] = round(peak_memory_mb(), 1)
    if records:
        last = records[-1]
        attrs.update(
            val_top1=last["val_top1"],
            val_top5=last["val_top5"],
            best_val_top1=max(r["val_top1"] for r in records),
            epochs=last["epoch"],
            train_seconds=round(last["train_seconds"], 2),
        )
    config_json = RunDir(run_dir).config_json
    plan = json.loads(config_json.read_text(encoding="utf-8")).get("plan") if config_json.is_file() else None
    if plan and is_trace(plan):
        attrs["budget_trace"] = plan
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return attrs.get("val_top1")


def _trial_logger(number: int, run_dir: Path, log: Callable[[str], None]) -> Callable[[str], None]:
    """Lines of trial ``number``: to the worker's output (prefixed) and to ``RUN_DIR/log.txt``."""

    def say(line: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "log.txt").open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        log(f"[trial {number}] {line}")

    return say


def run_workers(
    spec: SweepSpec, url: str | None, workers: int, argv: list[str], log: Callable[[str], None] = print
) -> int:
    """``--workers N``: create the study and queue the grid here, then start N worker processes (``argv``
    is this command's, without ``--workers``) and wait for them. On a machine with GPUs each worker gets one
    device (``CUDA_VISIBLE_DEVICES``); on a CPU each gets an equal share of the cores. Returns the worst exit
    code."""
    open_and_queue(spec, url)  # before the workers start: they find the cells queued, none twice
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "cifar_resnet", *argv, "--workers", "1"], env=env))
    where = f"{gpus} GPUs" if gpus else f"{threads} thread{'s' if threads > 1 else ''} each"
    log(f"{workers} workers ({where}) on study {spec.name!r}: pids {', '.join(str(p.pid) for p in procs)}")
    # Ctrl-C reaches the workers too (one process group); a SIGTERM sent to this process alone is passed on,
    # so that each worker stops after its step with its trial resumable
    previous = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    codes = []
    try:
        for p in procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:  # wait for the workers to finish their step
                    continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return max(codes, key=abs) if codes else 0
