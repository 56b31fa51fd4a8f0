"""Sweeps on Optuna (``cifar-resnet sweep``): sweep files, grids and searches on real stores (SQLite, and a
PostgreSQL server this module starts), several worker processes, ``kill -9`` and Ctrl-C mid-trial, pruning,
failing trials and the report."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar_resnet.budget import Trace
from cifar_resnet.config import PRESETS, upgrade_config
from cifar_resnet.signals import StopSignals
from cifar_resnet.sweep import SweepError, build_config, load_sweep, open_study, report
from cifar_resnet.sweep.report import _difference, _grid_rows, _grid_table
from cifar_resnet.sweep.study import _take, open_and_queue
from cifar_resnet.sweep.worker import _run_trial

optuna = pytest.importorskip("optuna", reason="the sweep extra (optuna) is not installed")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    """2,000 noisy images whose class is their colour: a tiny net learns them within an epoch or two."""
    rng = np.random.default_rng(0)
    n, classes = 2000, 10
    labels = np.arange(n) % classes
    palette = np.random.default_rng(1).integers(0, 200, (classes, 3))
    images = (rng.integers(0, 56, (n, 32, 32, 3)) + palette[labels][:, None, None, :]).astype(np.uint8)
    path = tmp_path_factory.mktemp("sweep-data") / "tiny.npz"
    np.savez(path, x_train=images, y_train=labels.astype(np.uint8))
    return path


def sweep_file(
    tmp_path: Path,
    data: Path,
    body: str,
    *,
    name: str = "s",
    train_subset: int = 300,
    epochs: int = 2,
    sweep: str = "heartbeat = 1\ngrace = 3",
) -> Path:
    """A sweep file over a 9,632-parameter ``fast`` net on ``data``, 100 validation images."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[sweep]
directory = "{tmp_path / name}"
{sweep}

[base]
preset = "fast"
data = "{data}"
val_split = 100
train_subset = {train_subset}
model_kwargs = {{ widths = [8, 16, 16], stem_width = 8 }}
batch_size = 50
eval_batch_size = 100
epochs = {epochs}
device = "cpu"
tta = false
whiten = false
progressive = ""
{body}
"""
    )
    return path


GRID = """
[grid]
seeds = [0, 1]
[grid.variants]
base = {}
ls0 = { label_smoothing = 0.0 }
"""


def workers(*args, env=None, **kw) -> subprocess.Popen:
    """``cifar-resnet sweep run ARGS`` in a process of its own (its own session: signals reach only it)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "cifar_resnet", "sweep", "run", *map(str, args)]
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(cmd, env=environment, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def study_of(spec, url=None):
    return optuna.load_study(study_name=spec.name, storage=url or spec.storage_url)


def cells_done(study) -> list[tuple[str, int]]:
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    return sorted((t.params["variant"], t.params["seed"]) for t in done)


def wait_for_epoch(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the trial's run directory holds a finished epoch (its history.json)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "history.json").is_file():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------
# sweep files
# --------------------------------------------------------------------------------------------------

BAD_FILES = [
    ("lrr = 0.1\n[grid.variants]\na = {}\n", "[base] lrr: unknown configuration field 'lrr'"),
    ("[grid.variants]\na = { lr = 'fast' }\n", "[grid.variants.a] lr: lr must be a number, got 'fast'"),
    ("[grid.variants]\na = { epochs = 2.5 }\n", "epochs must be an integer"),
    ("[grid]\nseeds = [0]\n", "[grid] variants: the grid is empty"),
    ("[grid]\nseeds = []\n[grid.variants]\na = {}\n", "[grid] seeds must be a non-empty list"),
    ("[grid.variants]\nneg = { lr = -1.0 }\n", "[grid.variants.neg]: learning rate must be > 0, got -1.0"),
    ("[grid.variants]\nv = { label_smoothing = 1.5 }\n", "[grid.variants.v]: label smoothing must be in [0, 1)"),
    ("[grid.variants]\nv = { val_split = 0 }\n", "[grid.variants.v]: val_split is 0"),
    ("[grid.variants]\nv = { seed = 3 }\n", "seed is set by [grid] seeds"),
    ("[grid.variants]\na = {}\n[search]\ntrials = 2\n", "exactly one of [grid] and [search]"),
    ("[grid.variants\n", "not valid TOML"),
    (
        "[search]\ntrials = 2\n[search.params]\nlr = { low = 0.0, high = 1.0, log = true }\n",
        "a log range needs low > 0",
    ),
    ("[search]\ntrials = 2\n[search.params]\nmomentum = { low = 0.5, high = 1.5 }\n", "momenta must be in [0, 1)"),
    ("[search]\ntrials = 0\n[search.params]\nlr = { low = 0.1, high = 1.0 }\n", "trials must be an integer >= 1"),
    ("[search]\ntrials = 2\n[search.params]\nwidth = { low = 1, high = 2 }\n", "unknown configuration field 'width'"),
    (
        "[search]\ntrials = 2\n[search.params]\nlr = { low = 0.1, high = 1.0 }\n[[search.start]]\nlr = 5.0\n",
        "[[search.start]] 1 lr: 5.0 is outside 0.1..1.0",
    ),
    ("[search]\ntrials = 2\npruner = 'sometimes'\n[search.params]\nlr = { low = 0.1, high = 1.0 }\n", "pruner must be"),
]


@pytest.mark.parametrize("body, fragment", BAD_FILES)
def test_a_bad_sweep_file_is_a_one_line_error_naming_the_file_and_the_key(
    tmp_path, tiny_npz, cli, assert_one_line_error, body, fragment
):
    path = sweep_file(tmp_path, tiny_npz, body)
    code, _, err = cli("sweep", "run", path)
    assert_one_line_error(code, err, str(path), fragment)
    assert not (tmp_path / "s").exists()  # nothing started


@pytest.mark.parametrize(
    "keys, fragment",
    [
        ("workers = 2", "[sweep] unknown key 'workers'"),
        ("heartbeat = 10\ngrace = 5", "grace (5 s) must be longer than heartbeat"),
        ("heartbeat = 0", "heartbeat must be an integer >= 1"),
        ("grace = 'soon'", "grace: expected a duration such as 900s, 15m or 1h"),
        ("grace = 'none'", "grace must be a whole number of seconds >= 1"),
        ("heartbeat = '2.5s'", "heartbeat must be a whole number of seconds >= 1"),
        ("heartbeat = '2m'\ngrace = 90", "grace (90 s) must be longer than heartbeat"),
        ("name = ''", "[sweep] name must be a non-empty string"),
    ],
)
def test_bad_sweep_settings(tmp_path, tiny_npz, cli, assert_one_line_error, keys, fragment):
    path = sweep_file(tmp_path, tiny_npz, GRID, sweep=keys)
    code, _, err = cli("sweep", "run", path)
    assert_one_line_error(code, err, str(path), fragment)


def test_durations_in_the_sweep_file_take_the_one_grammar(tmp_path, tiny_npz):
    spec = load_sweep(sweep_file(tmp_path, tiny_npz, GRID, sweep="heartbeat = '30s'\ngrace = '1m30s'"))
    assert (spec.heartbeat, spec.grace) == (30, 90)
    spec = load_sweep(sweep_file(tmp_path, tiny_npz, GRID, sweep="heartbeat = 20\ngrace = '3m'"))
    assert (spec.heartbeat, spec.grace) == (20, 180)


def test_a_missing_sweep_file_and_bad_worker_counts(tmp_path, tiny_npz, cli, assert_one_line_error):
    code, _, err = cli("sweep", "run", tmp_path / "nope.toml")
    assert_one_line_error(code, err, "nope.toml: no such sweep file")
    path = sweep_file(tmp_path, tiny_npz, GRID)
    code, _, err = cli("sweep", "run", path, "--workers", "0")
    assert_one_line_error(code, err, "--workers must be >= 1")
    code, _, err = cli("sweep", "report", path)
    assert_one_line_error(code, err, "no study named 's'", "sweep run")
    assert not (tmp_path / "s").exists()  # a report creates no empty study


def test_the_grid_s_cells_and_their_configurations(tmp_path, tiny_npz):
    spec = load_sweep(sweep_file(tmp_path, tiny_npz, GRID + '[grid.variants.act]\n"model_kwargs.act" = "relu"\n'))
    assert spec.cells() == [{"variant": v, "seed": s} for v in ("base", "ls0", "act") for s in (0, 1)]
    assert spec.baseline == "base" and spec.storage_url.startswith("sqlite:///")
    _, config = spec.grid_config("ls0", 1)
    assert (config.label_smoothing, config.seed, config.lr, config.model_kwargs["widths"]) == (0.0, 1, 2.0, [8, 16, 16])
    _, config = spec.grid_config("act", 0)  # a dotted key sets one model argument, the others kept
    assert config.model_kwargs == {"widths": [8, 16, 16], "stem_width": 8, "act": "relu"}
    # machine-local paths are not part of what workers must agree on
    other = load_sweep(spec.path, data="/elsewhere/cifar100-train.npz")
    assert other.base["data"] == "/elsewhere/cifar100-train.npz" and other.identity() == spec.identity()


def test_a_report_reads_the_file_s_sqlite_storage_and_writes_where_it_is_told(tmp_path, tiny_npz, cli):
    path = sweep_file(tmp_path, tiny_npz, GRID, sweep=f'storage = "sqlite:///{tmp_path / "kept" / "study.db"}"')
    (tmp_path / "kept").mkdir()
    open_study(load_sweep(path))
    code, out, err = cli("sweep", "report", path, "--out", tmp_path / "report")
    assert code == 0, out + err
    assert (tmp_path / "report" / "report.md").is_file() and not (tmp_path / "report" / "optuna.db").exists()
    (tmp_path / "kept" / "study.db").unlink()
    code, _, err = cli("sweep", "report", path, "--out", tmp_path / "report")
    assert code != 0 and f"{tmp_path / 'kept' / 'study.db'} does not exist" in err


def test_a_changed_base_is_refused_by_the_study_it_would_join(tmp_path, tiny_npz, cli, assert_one_line_error):
    path = sweep_file(tmp_path, tiny_npz, GRID)
    open_study(load_sweep(path))
    path.write_text(path.read_text().replace("batch_size = 50", "batch_size = 25"))
    code, _, err = cli("sweep", "run", path)
    assert_one_line_error(code, err, "was begun with a different base", "new [sweep] name")


def test_a_study_refuses_its_file_once_the_preset_it_names_has_changed(tmp_path, tiny_npz, monkeypatch):
    path = sweep_file(tmp_path, tiny_npz, GRID)
    study = open_study(load_sweep(path))
    assert study.user_attrs["sweep"]["config"]["muon_lr"] == PRESETS["fast"].muon_lr == 0.1
    open_study(load_sweep(path))  # the same file, the same preset: it joins
    # the file's text is unchanged, but the preset it names now trains something else
    monkeypatch.setitem(PRESETS, "fast", dataclasses.replace(PRESETS["fast"], muon_lr=0.3, warmup=0.1))
    was = r"different base configuration \(muon_lr=0\.1, warmup=0\.2; preset 'fast' .* give muon_lr=0\.3, warmup=0\.1\)"
    with pytest.raises(SweepError, match=was + r": set those fields in \[base\]"):
        open_study(load_sweep(path))
    # the study's values set in [base]: the same configuration, so the file joins, however it is spelled
    text = path.read_text()
    path.write_text(text.replace('progressive = ""', 'progressive = ""\nmuon_lr = 0.1\nwarmup = 0.2'))
    open_study(load_sweep(path))
    path.write_text(text)
    # a study begun before it recorded its configuration has nothing to compare, and is joined as before
    study.set_user_attr("sweep", {k: v for k, v in study.user_attrs["sweep"].items() if k != "config"})
    open_study(load_sweep(path))


def test_difference_is_paired_over_shared_seeds_else_welch():
    d, se, how = _difference({0: 0.72, 1: 0.70, 2: 0.74}, {0: 0.70, 1: 0.69, 2: 0.71})
    diffs = [0.02, 0.01, 0.03]
    assert how == "paired" and d == pytest.approx(0.02) and se == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(3))
    d, se, how = _difference({0: 0.7, 1: 0.8}, {2: 0.5, 3: 0.7})
    assert how == "welch" and d == pytest.approx(0.15) and se == pytest.approx(math.sqrt(0.005 / 2 + 0.02 / 2))
    assert math.isnan(_difference({0: 0.7}, {1: 0.6})[1])


# --------------------------------------------------------------------------------------------------
# running: SQLite and two worker processes, failures, pruning
# --------------------------------------------------------------------------------------------------


def test_two_workers_on_sqlite_run_every_cell_once_and_the_report_has_its_table(tmp_path, tiny_npz, cli, open_png):
    path = sweep_file(tmp_path, tiny_npz, GRID.replace("[0, 1]", "[0, 1, 2]"))
    code, out = finish(workers(path, "--workers", "2"))
    assert code == 0, out
    assert "2 workers (1 thread each)" in out
    spec = load_sweep(path)
    study = study_of(spec)
    expected = sorted((v, s) for v in ("base", "ls0") for s in (0, 1, 2))
    assert cells_done(study) == expected  # every cell, none twice
    assert len(study.trials) == 6
    assert len({t.user_attrs["worker"] for t in study.trials}) <= 2
    for t in study.trials:  # each trial a run directory named by its number, with its metrics recorded
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.name == f"trial-{t.number:04d}" and (run_dir / "best.pt").is_file()
        assert t.user_attrs["val_top1"] == t.value and t.user_attrs["epochs"] == 2
        assert t.user_attrs["train_seconds"] > 0 and t.user_attrs["peak_mb"] > 50
    code, out, err = cli("sweep", "report", path)
    assert code == 0, err
    assert "Trials: 6 complete." in out
    row = next(line for line in out.splitlines() if line.startswith("| ls0 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "label_smoothing=0.0" and cells[2] == "3" and "±" in cells[3] and "±" in cells[7]
    assert next(line for line in out.splitlines() if line.startswith("| base |")).endswith("| baseline |")
    assert open_png(tmp_path / "s" / "accuracy.png").shape[0] > 100
    assert (tmp_path / "s" / "report.md").read_text().startswith("# Sweep 's'")


def test_a_report_over_several_machines_says_which_ran_each_row(tmp_path, tiny_npz, cli, monkeypatch):
    """Training seconds compare only within one machine: the report numbers the machines and each row says
    which ran its cells."""
    path = sweep_file(tmp_path, tiny_npz, GRID)
    monkeypatch.setattr("cifar_resnet.sweep.worker.cpu_model", lambda: "CPU A")
    code, out, err = cli("sweep", "run", path, "--max-trials", "3")  # rows first, seeds within: base 0, 1, ls0 0
    assert code == 0, out + err
    code, out, _ = cli("sweep", "report", path)
    assert "CPU: CPU A." in out and "Machines:" not in out and "| n | val top-1 % |" in out
    monkeypatch.setattr("cifar_resnet.sweep.worker.cpu_model", lambda: "CPU B")
    code, out, err = cli("sweep", "run", path)
    assert code == 0 and "1 complete" in out, out + err
    code, out, _ = cli("sweep", "report", path)
    assert code == 0 and "Machines: 1 = CPU A; 2 = CPU B." in out and "| n | on | val top-1 % |" in out, out
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    assert {c[0]: c[3] for c in cells if c[0] in ("base", "ls0")} == {"base": "1", "ls0": "1, 2"}, out
    assert 'column "on"' in out
    assert json.loads((tmp_path / "s" / "report.json").read_text())["machines"] == ["CPU A", "CPU B"]


def test_a_grid_report_names_the_row_each_variant_adds_to_and_counts_partial_columns(tmp_path, tiny_npz):
    """Cumulative variants read as "parent + change"; a column that only some cells recorded (a peak measured
    in a worker's shared process is not the trial's own) says over how many cells its mean is."""
    body = """
[grid]
seeds = [0, 1]
[grid.variants]
base = {}
bf16 = { precision = "bf16" }
"bf16+ls0" = { precision = "bf16", label_smoothing = 0.0 }
"bf16+ls0+e3" = { precision = "bf16", label_smoothing = 0.0, epochs = 3 }
e3 = { epochs = 3 }
"""
    spec = load_sweep(sweep_file(tmp_path, tiny_npz, body))

    def trial(variant, seed, **attrs):
        attrs = {"val_top1": 0.5, "val_top5": 0.9, "train_seconds": 10.0, "machine": "M", **attrs}
        return SimpleNamespace(
            system_attrs={"fixed_params": {"variant": variant, "seed": seed}}, params={}, user_attrs=attrs
        )

    complete = [trial(v, s, peak_mb=100.0 + s) for v in spec.variants for s in (0, 1)]
    complete[2].user_attrs.pop("peak_mb")  # bf16, seed 0
    rows = _grid_rows(spec, complete)
    assert {r["variant"]: r["extends"] for r in rows} == {
        "base": None,  # nothing to add to: the baseline's overrides are empty
        "bf16": None,
        "bf16+ls0": "bf16",
        "bf16+ls0+e3": "bf16+ls0",  # the largest row it contains, not bf16 or e3
        "e3": None,
    }
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in _grid_table(spec, rows, ["M"]) if line[:2] == "| "]
    by_name = {c[0]: c for c in table[1:]}
    assert by_name["bf16"][1] == "precision=bf16" and by_name["bf16"][6] == "101 (n=1)"
    assert by_name["bf16+ls0"][1] == "bf16 + label_smoothing=0.0" and by_name["bf16+ls0"][6] == "100 ± 1"
    assert by_name["bf16+ls0+e3"][1] == "bf16+ls0 + epochs=3"
    assert by_name["e3"][1] == "epochs=3" and by_name["base"][1] == "-"
    note = _grid_table(spec, rows, ["M"])[-3]
    assert '"A + x=1" adds x=1' in note and '"(n=k)"' in note
    rows = _grid_rows(
        spec, [trial("base", s, peak_mb=1.0) for s in (0, 1)] + [trial("e3", 1, val_top1=0.25, peak_mb=1.0)]
    )
    table = _grid_table(spec, rows, ["M"])
    assert "(n=k)" not in table[-3]  # every cell has its peak
    assert table[-1] == "Validation top-1 %, seeds 0, 1: base 50.00, 50.00; e3 25.00 (seed 1)."


def test_a_worker_given_variants_takes_only_those_rows(tmp_path, tiny_npz, cli):
    path = sweep_file(tmp_path, tiny_npz, GRID.replace("base = {}", "base = {}\nls05 = { label_smoothing = 0.05 }"))
    study = lambda: study_of(load_sweep(path))
    code, out, err = cli("sweep", "run", path, "--variants", "ls0")
    assert code == 0, out + err
    assert cells_done(study()) == [("ls0", 0), ("ls0", 1)]  # "ls0" is a name, not a prefix: ls05 waits
    assert "no cell of ls0 is left; 4 cell(s) of other rows wait" in out
    waiting = study().get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(
        (t.system_attrs["fixed_params"]["variant"], t.system_attrs["fixed_params"]["seed"]) for t in waiting
    ) == [("base", 0), ("base", 1), ("ls05", 0), ("ls05", 1)]
    # a pattern: ls0* is ls0 (done) and ls05; the base row still waits for a worker that takes it
    code, out, err = cli("sweep", "run", path, "--variants", "ls0*", "--max-trials", "1")
    assert code == 0 and "1 complete" in out, out + err
    assert cells_done(study()) == [("ls0", 0), ("ls0", 1), ("ls05", 0)]
    code, out, err = cli("sweep", "run", path)  # every row: what is left, once
    assert code == 0 and "3 complete" in out, out + err
    assert len(cells_done(study())) == 6 and len(study().trials) == 6


def test_variants_that_match_no_row_are_a_one_line_error(tmp_path, tiny_npz, cli, assert_one_line_error):
    path = sweep_file(tmp_path, tiny_npz, GRID)
    code, _, err = cli("sweep", "run", path, "--variants", "base", "fast-net*")
    assert_one_line_error(code, err, str(path), "--variants 'fast-net*' matches no variant", "base, ls0")
    body = "[search]\ntrials = 2\n[search.params]\nlr = { low = 0.1, high = 1.0 }\n"
    search = sweep_file(tmp_path, tiny_npz, body, name="q")
    code, _, err = cli("sweep", "run", search, "--variants", "base")
    assert_one_line_error(code, err, str(search), "--variants picks rows of a grid")
    assert not (tmp_path / "s").exists() and not (tmp_path / "q").exists()  # nothing created


def test_a_worker_leaves_bf16_rows_to_machines_with_bf16_instructions(tmp_path, tiny_npz, cli, monkeypatch):
    """Started on a mixed cluster, a CPU that emulates bf16 (12x the fp32 step on a Zen 3) would hold bf16
    cells for hours: by default its worker leaves them to others; --emulated-bf16 takes them."""
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: False)
    rows = 'base = {}\nbf16 = { precision = "bf16" }\nauto = { precision = "auto" }'
    path = sweep_file(tmp_path, tiny_npz, GRID.replace("base = {}\nls0 = { label_smoothing = 0.0 }", rows))
    study = lambda: study_of(load_sweep(path))
    code, out, err = cli("sweep", "run", path)
    assert code == 0 and "4 complete" in out, out + err
    assert "bf16 is emulated on this CPU" in out and "leaves the cells of bf16 to workers" in out
    assert "no cell of auto, base is left; 2 cell(s) of other rows wait" in out  # auto is fp32 here
    assert cells_done(study()) == [("auto", 0), ("auto", 1), ("base", 0), ("base", 1)]
    code, out, err = cli("sweep", "run", path, "--variants", "bf1*")  # asked for, and still left
    assert code == 0 and "no row of" in out and len(cells_done(study())) == 4, out + err
    code, out, err = cli("sweep", "run", path, "--emulated-bf16", "--max-trials", "1")
    assert code == 0 and "1 complete" in out and "emulated on this CPU" not in out, out + err
    assert ("bf16", 0) in cells_done(study())
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: True)  # a machine with bf16 instructions
    code, out, err = cli("sweep", "run", path)
    assert code == 0 and "1 complete" in out and "emulated" not in out, out + err
    assert len(cells_done(study())) == 6 and len(study().trials) == 6


def test_a_budget_row_records_the_trace_of_its_plans(tmp_path, tiny_npz, cli):
    body = "budget = '8s'\n[grid]\nseeds = [0]\n[grid.variants]\nonly = {}\n"
    path = sweep_file(tmp_path, tiny_npz, body, epochs=30)
    code, out, err = cli("sweep", "run", path)
    assert code == 0, out + err
    (trial,) = study_of(load_sweep(path)).trials
    trace = Trace.from_dict(trial.user_attrs["budget_trace"])
    assert trace.budget_s == 8 and trace.last.epochs == trial.user_attrs["epochs"]


def test_a_trial_that_raises_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, tiny_npz, cli):
    body = "[grid]\nseeds = [0]\n[grid.variants]\nok = {}\nbroken = { data = '/nonexistent/cifar.npz' }\n"
    path = sweep_file(tmp_path, tiny_npz, body)
    code, out, err = cli("sweep", "run", path)
    assert code == 1, out + err
    assert "1 complete, 0 pruned, 1 failed" in out
    study = study_of(load_sweep(path))
    states = {t.params["variant"]: t.state for t in study.trials}
    assert states == {"ok": optuna.trial.TrialState.COMPLETE, "broken": optuna.trial.TrialState.FAIL}
    error = next(t.user_attrs["error"] for t in study.trials if t.params["variant"] == "broken")
    assert "/nonexistent/cifar.npz" in error and "\n" not in error
    code, out, _ = cli("sweep", "report", path)
    assert code == 0 and "failed: " in out and "| broken | data=/nonexistent/cifar.npz | 0 |" in out
    # started again, the worker retries the failed cell (and only it)
    code, out, _ = cli("sweep", "run", path)
    assert code == 1 and "0 complete, 0 pruned, 1 failed" in out


def test_pruning_stops_a_trial_whose_accuracy_stays_at_chance(tmp_path, tiny_npz, cli, open_png):
    body = """
optimizer = "nesterov"
[search]
trials = 2
pruner = "median"
startup_trials = 1
[search.params]
lr = { low = 1e-7, high = 1.0, log = true }
"model_kwargs.widths" = { choices = [[8, 16, 16], [8, 8, 8]] }
[[search.start]]
lr = 0.5
"model_kwargs.widths" = [8, 16, 16]
[[search.start]]
lr = 1e-7
"model_kwargs.widths" = [8, 8, 8]
"""
    path = sweep_file(tmp_path, tiny_npz, body, epochs=4)
    code, out, err = cli("sweep", "run", path)
    assert code == 0, out + err
    study = study_of(load_sweep(path))
    good, stuck = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE and good.user_attrs["epochs"] == 4
    assert stuck.state == optuna.trial.TrialState.PRUNED and stuck.user_attrs["epochs_done"] == 1
    assert stuck.intermediate_values[1] < 0.2 < good.intermediate_values[1]  # chance is 0.1
    assert sorted(good.intermediate_values) == list(range(1, 11))  # tenths of its schedule, 4 epochs' values
    assert good.intermediate_values[2] == good.intermediate_values[1] != good.intermediate_values[10]
    assert stuck.params["model_kwargs.widths"] == "[8, 8, 8]"  # a list choice, stored as its JSON text
    assert load_sweep(path).trials == 2 and len(study.trials) == 2  # no trial beyond the budget
    code, out, _ = cli("sweep", "report", path)
    assert "Trials: 1 complete, 1 pruned." in out and "## The best complete trials (1 of 1)" in out
    assert "| trial | val top-1 % | val top-5 % | epochs | training s | lr | widths |" in out  # a column each
    assert (
        "## Every finished trial (2)" in out
        and "| 1 | pruned | " in out
        and "| tenth 2 | 1 | 1e-07 | [8, 8, 8] |" in out
    )
    assert open_png(tmp_path / "s" / "history.png").shape[0] > 100
    assert open_png(tmp_path / "s" / "curves.png").shape[0] > 100
    assert [row["at"] for row in json.loads((tmp_path / "s" / "report.json").read_text())["trials_table"]] == [
        "end",
        "tenth 2",  # its one epoch is a quarter of its schedule: tenths 1 and 2
    ]


def test_two_workers_draw_different_points_and_one_worker_s_sequence_repeats(tmp_path, tiny_npz):
    body = """
[search]
trials = 4
seed = 7
[search.params]
lr = { low = 0.01, high = 1.0, log = true }
label_smoothing = { low = 0.0, high = 0.3 }
"""

    def drawn(name: str, workers: int) -> list[dict]:
        spec = load_sweep(sweep_file(tmp_path, tiny_npz, body, name=name))
        studies = [open_and_queue(spec, None) for _ in range(workers)]  # each its own sampler, as in a process
        return [_take(studies[i % workers], spec).params for i in range(4)]  # none told: all still running

    two = drawn("two", 2)
    assert len({tuple(p.values()) for p in two}) == 4  # the same seed in each worker drew the same points
    assert drawn("again", 2) == two and drawn("one", 1) == two  # trial n is drawn from (seed, n)


def test_the_report_says_how_well_each_tenth_foretells_the_final_value():
    from cifar_resnet.sweep.report import _foretelling_lines, foretelling

    def trial(final: float, at: dict[int, float]):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=final, intermediate_values=at)

    # at tenth 2 the trials rank as they end, at tenth 5 the other way round; tenth 8 ties two of them
    trials = [trial(f, {2: f / 2, 5: 1 - f, 8: min(f, 0.5)}) for f in (0.3, 0.5, 0.6, 0.7)]
    rho = foretelling(trials)
    assert rho[2] == pytest.approx(1.0) and rho[5] == pytest.approx(-1.0)
    assert rho[8] == pytest.approx(0.7745967, abs=1e-6)  # ranks 1, 3, 3, 3 against 1, 2, 3, 4
    assert rho[1] is None  # no trial reported there
    assert foretelling(trials[:2])[2] is None  # two trials rank nothing
    lines = _foretelling_lines(rho, 4, SimpleNamespace(pruner="median", warmup_tenths=3))
    from cifar_resnet.sweep.report import _running

    running = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        params={"lr": 0.123456789, "model_kwargs.depth": 3},
        distributions={
            "lr": optuna.distributions.FloatDistribution(0.01, 1.0),
            "model_kwargs.depth": optuna.distributions.CategoricalDistribution([2, 3]),
        },
    )
    assert _running(running, set(), 180)["text"].startswith("lr=0.1235, depth=3, in its first epoch")
    assert "judges from tenth 3 on)" in lines[1] and lines[-1] == "| ρ |  | 1.00 |  |  | -1.00 |  |  | 0.77 |  |"


# --------------------------------------------------------------------------------------------------
# faults: kill -9 and Ctrl-C mid-trial
# --------------------------------------------------------------------------------------------------

ONE_CELL = "[grid]\nseeds = [0]\n[grid.variants]\nonly = {}\n"


@pytest.mark.long
def test_a_trial_whose_worker_is_killed_is_taken_over_and_resumed_from_its_last_checkpoint(tmp_path, tiny_npz):
    path = sweep_file(tmp_path, tiny_npz, ONE_CELL, train_subset=1900, epochs=4)
    first = workers(path)
    wait_for_epoch(tmp_path / "s" / "trial-0000", first)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    spec = load_sweep(path)
    assert [t.state for t in study_of(spec).trials] == [optuna.trial.TrialState.RUNNING]  # left behind
    (line,) = [line for line in report(spec)["markdown"].splitlines() if line.startswith("- trial")]
    assert (
        line.startswith(f"- trial 0 running: only/seed0 on {socket.gethostname()}:{first.pid}, ") and "started" in line
    )
    assert "no heartbeat" not in line  # the last heartbeat is fresh: nothing tells a dead worker yet
    time.sleep(spec.grace + 1)
    (running,) = report(spec)["running"]
    assert running["stale"] and "no heartbeat for over 3 s" in running["text"], running
    code, out = finish(workers(path))  # another worker: waits out the grace period, then takes over
    assert code == 0, out
    assert "continues trial 0: trial-0000 -> trial-0001" in out and "resuming" in out
    old, new = study_of(spec).trials
    assert old.state == optuna.trial.TrialState.FAIL and new.state == optuna.trial.TrialState.COMPLETE
    assert new.user_attrs["continues"] == 0 and new.user_attrs["resumed_after_epoch"] >= 1
    assert new.user_attrs["epochs"] == 4
    assert sorted(new.intermediate_values) == list(range(1, 11))  # every tenth of its schedule, once
    run_dir = tmp_path / "s" / "trial-0001"
    assert (run_dir / "best.pt").is_file() and not (tmp_path / "s" / "trial-0000").exists()
    assert "continued by trial 1" in (tmp_path / "s" / "trial-0000.moved").read_text()
    log = (run_dir / "log.txt").read_text()
    assert log.count("Epoch 1,") == 1  # epoch 1 was trained once, by the killed worker, not again


@pytest.mark.long
def test_ctrl_c_stops_a_worker_after_its_step_and_the_trial_resumes(tmp_path, tiny_npz, cli):
    path = sweep_file(tmp_path, tiny_npz, ONE_CELL, train_subset=1900, epochs=4)

    def default_sigint():  # a shell's background job starts with SIGINT ignored: give the child Ctrl-C back
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = workers(path, preexec_fn=default_sigint)
    wait_for_epoch(tmp_path / "s" / "trial-0000", proc)
    os.kill(proc.pid, signal.SIGINT)
    code, out = finish(proc)
    assert code == 130, out
    assert "interrupted by SIGINT; queued to resume" in out
    study = study_of(load_sweep(path))
    first, queued = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and "interrupted by SIGINT" in first.user_attrs["error"]
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["continues"] == 0
    code, out, err = cli("sweep", "run", path)
    assert code == 0, out + err
    done = study_of(load_sweep(path)).trials[1]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.user_attrs["resumed_after_epoch"] >= 1


def test_a_stop_request_nested_stop_signals_pass_in_and_out():
    """A sweep worker's StopSignals around fit's: a signal the worker got while setting a trial up
    reaches fit's loop, and one fit got reaches the worker."""
    with StopSignals() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.received == signal.SIGTERM
        with StopSignals() as inner:
            assert inner.received == signal.SIGTERM
    with StopSignals() as outer:
        with StopSignals() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
            assert inner.received == signal.SIGTERM
        assert outer.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == outer._handle  # the outer handler is back
    assert signal.getsignal(signal.SIGTERM) != outer._handle  # and the one from before it (bound methods: ==)


def test_a_trial_stopped_before_training_is_queued_again_untouched(tmp_path, tiny_npz):
    spec = load_sweep(sweep_file(tmp_path, tiny_npz, ONE_CELL))
    study = open_and_queue(spec, None)
    trial = _take(study, spec)
    stop = StopSignals()
    stop.received = signal.SIGTERM  # as if SIGTERM had come while the worker took the trial
    lines = []
    assert _run_trial(study, trial, spec, "here", lines.append, stop) == 128 + signal.SIGTERM
    first, queued = study_of(spec).trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["error"] == "interrupted by SIGTERM before training began"
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["continues"] == 0
    assert queued.user_attrs["attempt"] == 1  # a stop someone asked for is not a fault: no retry used
    assert not (tmp_path / "s" / "trial-0000" / "last.pt").exists()  # nothing was trained


def test_a_trial_stopped_within_its_first_epoch_resumes_from_its_last_checkpoint(tmp_path, tiny_npz, monkeypatch):
    import cifar_resnet.train as train_module

    spec = load_sweep(sweep_file(tmp_path, tiny_npz, ONE_CELL, epochs=1))
    study = open_and_queue(spec, None)
    real_step, steps = train_module.train_step, []

    def step_then_sigterm(*args, **kw):
        steps.append(1)
        if len(steps) == 2:  # the handler fit installed turns it into a stop after this step
            signal.raise_signal(signal.SIGTERM)
        return real_step(*args, **kw)

    monkeypatch.setattr(train_module, "train_step", step_then_sigterm)
    assert _run_trial(study, _take(study, spec), spec, "here", lambda line: None, StopSignals()) == 143
    stopped = tmp_path / "s" / "trial-0000"
    assert (stopped / "last.pt").is_file() and not (stopped / "history.json").exists()  # mid-epoch 1
    lines = []
    assert _run_trial(study, _take(study, spec), spec, "here", lines.append, StopSignals()) == "completed"
    assert any("resuming" in line for line in lines), lines
    assert len(steps) == 6  # 2 before the stop, the other 4 of the epoch's 6 after it: none twice
    first, second = study_of(spec).trials
    assert first.state == optuna.trial.TrialState.FAIL and second.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.long
def test_sigterm_stops_a_waiting_worker_at_once(tmp_path, tiny_npz):
    """A worker with nothing left to start waits for other workers' trials; SIGTERM ends the wait."""
    path = sweep_file(tmp_path, tiny_npz, ONE_CELL, train_subset=1900, epochs=30)
    busy = workers(path)
    try:
        wait_for_epoch(tmp_path / "s" / "trial-0000", busy)
        out_file = tmp_path / "waiting.txt"
        with out_file.open("w") as out:
            waiting = workers(path, stdout=out)
        deadline = time.monotonic() + 60
        while "nothing left to start" not in out_file.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, out_file.read_text()
            time.sleep(0.05)
        sent = time.monotonic()
        os.kill(waiting.pid, signal.SIGTERM)
        assert waiting.wait(timeout=30) == 128 + signal.SIGTERM, out_file.read_text()
        assert time.monotonic() - sent < 10
        assert "stopped by SIGTERM between trials" in out_file.read_text()
        assert busy.poll() is None  # the other worker's trial goes on
        (trial,) = study_of(load_sweep(path)).trials
        assert trial.state == optuna.trial.TrialState.RUNNING
    finally:
        busy.kill()
        busy.communicate()


# --------------------------------------------------------------------------------------------------
# PostgreSQL: a real server, started and stopped here
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server from Debian's package in a temporary folder on a free port (as the ``postgres``
    user when the tests run as root: the server refuses root), stopped and removed afterwards."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver SQLAlchemy uses) is not installed")
    bindir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="cifar-resnet-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True)
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", opts, "-w", "-t", "60", "start")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown, by the server's process id
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.long
def test_two_workers_started_apart_share_a_grid_on_postgresql(tmp_path, tiny_npz, postgres, cli):
    path = sweep_file(tmp_path, tiny_npz, GRID.replace("[0, 1]", "[0, 1, 2]"), name="pg-grid")
    # two separate commands, as on two machines: both create (or join) the study and queue the cells
    procs = [workers(path, "--storage", postgres) for _ in range(2)]
    for proc in procs:
        code, out = finish(proc)
        assert code == 0, out
    spec = load_sweep(path)
    study = study_of(spec, postgres)
    assert cells_done(study) == sorted((v, s) for v in ("base", "ls0") for s in (0, 1, 2))  # each cell once
    ran = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ran) and len(ran) == 6
    assert not (tmp_path / "pg-grid" / "optuna.db").exists()  # the study lives in PostgreSQL
    code, out, err = cli("sweep", "report", path, "--storage", postgres)
    assert code == 0 and "Trials: 6 complete." in out, err


def test_a_bad_storage_url_is_a_one_line_error(tmp_path, tiny_npz, cli, assert_one_line_error):
    path = sweep_file(tmp_path, tiny_npz, GRID)
    code, _, err = cli("sweep", "run", path, "--storage", f"postgresql://nobody:secret@127.0.0.1:{_free_port()}/x")
    assert_one_line_error(code, err, "storage postgresql://nobody@127.0.0.1")
    assert "secret" not in err


# --------------------------------------------------------------------------------------------------
# the README's ablation as a sweep file
# --------------------------------------------------------------------------------------------------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
ABLATION_RUNS = EXPERIMENTS / "ablation-xeon-amx"  # the seed-0 runs: each variant's config.json and log
ABLATION_SWEEP = EXPERIMENTS / "ablation-sweep" / "ablation.toml"


def test_the_ablation_sweep_file_rebuilds_each_run_the_ablation_recorded():
    """Each cell of the ablation's sweep file is the configuration its recorded seed-0 run used (every field
    the run recorded but the machine-local data and device)."""
    configs = sorted(ABLATION_RUNS.glob("ablation-*-seed0-config.json"))
    assert configs, f"no ablation-*-seed0-config.json in {ABLATION_RUNS}: nothing to check the sweep file against"
    spec = load_sweep(ABLATION_SWEEP)
    assert spec.seeds == (0, 1, 2) and spec.baseline == "base"
    differ = {}
    for path in configs:
        variant = path.name[len("ablation-") : -len("-seed0-config.json")]
        recorded = upgrade_config(json.loads(path.read_text()))
        config = spec.grid_config(variant, 0)[1].to_dict()
        if recorded["precision"] == "auto":  # "auto" ran as what the run's log says in its first line
            log = (ABLATION_RUNS / f"ablation-{variant}-seed0.log").read_text().splitlines()[0]
            recorded["precision"] = "bf16" if "on cpu (bf16)" in log else "fp32"
        wrong = {k: (v, config[k]) for k, v in recorded.items() if k not in ("data", "device") and config[k] != v}
        if wrong:
            differ[variant] = wrong
    assert differ == {}


FP32_SEARCH = EXPERIMENTS / "fp32-recipe-search"


@pytest.mark.parametrize("grid", ["grid", "grid-zen4"])
def test_the_fp32_grid_files_rebuild_the_runs_they_recorded(grid):
    """Each run of the fp32 recipe's grid (one file a CPU) is the configuration of one cell of its sweep file,
    which spells out in [base] the preset it ran: every field the run recorded but data and device, its epochs
    the budget's count, the cap its plan's ``max_epochs``."""
    spec = load_sweep(FP32_SEARCH / f"{grid}.toml")
    configs = sorted((FP32_SEARCH / grid).glob("trial-*-config.json"))
    assert len(configs) == len(spec.variants) * len(spec.seeds), f"not every cell's config.json in {grid}/"
    cells = []
    for path in configs:
        recorded = upgrade_config(json.loads(path.read_text()))
        fields = {k: v for k, v in recorded.items() if k not in ("data", "device", "plan")}
        fields["epochs"] = recorded["plan"]["max_epochs"]
        built = {v: spec.grid_config(v, recorded["seed"])[1].to_dict() for v in spec.variants}
        cells += [(v, recorded["seed"]) for v, config in built.items() if {k: config[k] for k in fields} == fields]
    assert sorted(cells) == sorted((v, s) for v in spec.variants for s in spec.seeds)


@pytest.mark.parametrize("bf16", [True, False])
def test_a_sweep_runs_the_preset_as_written_on_every_machine(monkeypatch, bf16):
    """`train --preset fast-cpu` starts from fast-cpu-fp32 where it trains in fp32; a sweep's workers must
    not: machines with and without bf16 instructions would run different trials of one study."""
    from cifar_resnet.config import PRESETS

    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: bf16)
    assert build_config("fast-cpu", {"device": "cpu"}) == dataclasses.replace(PRESETS["fast-cpu"], device="cpu")
    config = build_config("fast-cpu-fp32", {"model_kwargs.widths": [48, 160, 160]})
    assert config.model_kwargs == {"widths": [48, 160, 160], "act": "relu"} and config.precision == "fp32"


class _Reported:
    """A stand-in for an Optuna trial that keeps what is reported to it."""

    def __init__(self):
        self.values: dict[int, float] = {}

    def report(self, value, step):
        assert step not in self.values, f"step {step} reported twice"
        self.values[step] = value


def test_trials_of_different_lengths_report_at_the_same_tenths_of_their_schedules():
    """A 4-epoch and a 10-epoch run report at the tenths 1-10; epoch 3 of the first (75% of its schedule) is
    compared with epoch 7 or 8 of the second, not with its epoch 3; a resumed run reports nothing twice."""
    from cifar_resnet.sweep.worker import report_tenths

    short, long_ = _Reported(), _Reported()
    done = 0
    for epoch in range(1, 5):
        done = report_tenths(short, {"val_top1": epoch / 10, "progress": epoch / 4}, done)
    done = 0
    for epoch in range(1, 11):
        done = report_tenths(long_, {"val_top1": epoch / 100, "progress": epoch / 10}, done)
    assert sorted(short.values) == sorted(long_.values) == list(range(1, 11))
    assert [short.values[s] for s in (1, 2, 3, 5, 7, 8, 10)] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.4]
    assert long_.values[7] == 0.07
    resumed = _Reported()
    assert report_tenths(resumed, {"val_top1": 0.5, "progress": 0.5}, 5) == 5 and not resumed.values
    assert report_tenths(resumed, {"val_top1": 0.6, "progress": 1.0 - 1e-12}, 5) == 10  # rounding at the end
    assert sorted(resumed.values) == [6, 7, 8, 9, 10]


def test_a_trial_is_not_pruned_after_its_last_epoch():
    """A pruner that would stop every trial stops one at its first epochs, but not after its last: the run is
    done, and a value at the end of its schedule counts as a complete trial's."""
    from cifar_resnet.sweep.worker import _pruning_reporter, _TrialRun

    class Doomed(_Reported):
        def __init__(self):
            super().__init__()
            self.user_attrs: dict = {}

        def set_user_attr(self, key, value):
            self.user_attrs[key] = value

        def should_prune(self):
            return True

    trial = Doomed()
    run = _TrialRun(None, trial, None, Path("unused"), print)
    on_epoch_end = _pruning_reporter(run)
    with pytest.raises(optuna.TrialPruned, match="after epoch 1 at 0.1000"):
        on_epoch_end({"epoch": 1, "val_top1": 0.1, "progress": 0.5})
    on_epoch_end({"epoch": 2, "val_top1": 0.3, "progress": 1.0 - 1e-12})  # rounding at the end
    assert run.reported == 10 and trial.values[10] == 0.3 and trial.user_attrs["epochs_done"] == 2


def test_workers_on_an_sqlite_study_take_trials_one_at_a_time(tmp_path):
    """Python's sqlite3 reads outside a transaction, so two workers could both see a queued trial waiting and
    both take it: while one worker takes a trial, the lock beside the database is held, and another process
    cannot take it; an in-memory study needs no lock."""
    from cifar_resnet.sweep.study import _one_taker

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    probe = "import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    lock = tmp_path / "optuna.lock"

    def take_lock_elsewhere():
        cmd = [sys.executable, "-c", probe, str(lock)]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)

    with _one_taker(study):
        busy = take_lock_elsewhere()
        assert busy.returncode != 0 and "BlockingIOError" in busy.stderr
    free = take_lock_elsewhere()
    assert free.returncode == 0, free.stderr
    with _one_taker(study), _one_taker(optuna.create_study()):  # an in-memory study takes no lock: no wait here
        assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db", "optuna.lock"]
