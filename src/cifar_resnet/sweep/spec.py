"""Sweeps on Optuna: a grid of variants x seeds, or a search over ranges, shared by any number of workers.

A sweep file (TOML) names a base configuration (a preset plus overrides) and either a **grid** (named
variants, each a set of overrides, times seeds: every cell runs exactly once) or a **search** (ranges over
configuration fields, sampled by Optuna's TPE, with a median or Hyperband pruner fed the validation top-1
after every epoch)::

    [sweep]                      # all optional
    name = "ablation"            # the study's name (default: the file's stem)
    directory = "runs/sweeps/ablation"   # the trials' run directories (default: runs/sweeps/NAME)
    storage = "postgresql://user@host/db"  # an Optuna storage URL (default: DIRECTORY/optuna.db, SQLite)

    [base]
    preset = "fast-cpu"
    val_split = 5000

    [grid]
    seeds = [0, 1, 2]
    [grid.variants]
    base = {}
    bf16 = { precision = "bf16" }

The study lives in the storage; every ``cifar-resnet sweep run FILE`` started on the same storage (on this
machine or others) is a worker that pulls the next cell or trial from it. A trial is an ordinary run
directory, ``DIRECTORY/trial-NNNN`` (its number in the study), trained by :func:`~cifar_resnet.train.fit`
in the worker's process; its overrides, final metrics, training seconds and peak memory are stored as the
trial's user attributes. Faults: a worker sends a heartbeat while it trains; a worker killed outright
(``kill -9``, a lost machine) stops beating, and after the grace period another worker marks its trial
failed and queues a continuation, which moves the run directory to its own number and resumes from its
``last.pt``. Ctrl-C (or SIGTERM) stops a worker after the step it is in, writes ``last.pt`` and queues the
continuation at once. A trial that raises is recorded as failed with its one-line error and the worker goes
on; a grid cell whose trials all failed is queued again the next time a worker starts. A worker can take
only some of a grid's rows (:func:`select_variants`, ``sweep run --variants``); on a CPU that would emulate
bf16 it leaves the bf16 rows to machines with bf16 instructions (:func:`rows_with_emulated_bf16`). Each
trial records the machine it ran on, and a report over several machines says which ran each row.

Optuna (the ``sweep`` extra) is imported only when a sweep runs or reports.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomllib
import torch

from .checkpoint import RunDir, atomic_write_text
from .config import PRESETS, TrainConfig, get_preset
from .device import bf16_is_emulated, cpu_model, resolve_device, resolve_precision
from .memory import release_freed_memory
from .plots import plot_search_history, plot_sweep_variants
from .signals import StopSignals
from .train import TrainingInterrupted, fit

__all__ = [
    "Param",
    "SweepError",
    "SweepSpec",
    "load_sweep",
    "report",
    "rows_with_emulated_bf16",
    "run_workers",
    "work",
]

FIELD_TYPES: dict[str, type] = typing.get_type_hints(TrainConfig)
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
NOT_OVERRIDABLE = {"plan"}  # written by --budget, never by hand
SWEEP_KEYS = {"name", "directory", "storage", "heartbeat", "grace", "retries"}
GRID_KEYS = {"seeds", "variants", "baseline"}
SEARCH_KEYS = {"trials", "seed", "pruner", "startup_trials", "warmup_epochs", "params", "start"}
PARAM_KEYS = {"low", "high", "log", "step", "choices"}
PRUNERS = ("median", "hyperband", "none")
MACHINE_LOCAL = ("data", "device")  # may differ between the machines of one study


class SweepError(ValueError):
    """A sweep file or study that cannot be used; the message is one line naming the file and the key."""


# --------------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched field: a range (``low``..``high``, ``log``, ``step``) or a list of ``choices``.

    ``name`` is a configuration field, or ``model_kwargs.KEY`` for one model argument."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def _scalar_choices(self) -> bool:
        return all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices or ())

    def suggest(self, trial) -> Any:
        """The value ``trial`` takes (an Optuna trial: sampled, or fixed when the trial was queued)."""
        if self.choices is not None:
            if self._scalar_choices():
                return trial.suggest_categorical(self.name, list(self.choices))
            # Optuna stores scalar choices only: lists and tables travel as their JSON text
            return json.loads(trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices]))
        if _is_int_param(self):
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def encode(self, value: Any) -> Any:
        """``value`` as this parameter stores it in the study (JSON text for a list or a table choice)."""
        return value if self.choices is None or self._scalar_choices() else json.dumps(value)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _is_int_param(p: Param) -> bool:
    typ = FIELD_TYPES.get(p.name)
    return typ is int or (typ is None and isinstance(p.low, int) and isinstance(p.high, int))


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed, checked sweep file. Every grid cell's configuration (and a search's extremes) has been
    built once, so an override the configuration rejects is an error before anything trains."""

    path: Path
    name: str
    directory: Path
    storage: str | None
    preset: str
    base: dict
    kind: str  # "grid" | "search"
    variants: dict[str, dict] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    baseline: str = ""
    params: tuple[Param, ...] = ()
    trials: int = 0
    sampler_seed: int = 0
    pruner: str = "median"
    startup_trials: int = 5
    warmup_epochs: int = 0
    start: tuple[dict, ...] = ()
    heartbeat: int = 60
    grace: int = 180
    retries: int = 3

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.directory / 'optuna.db').resolve()}"

    def cells(self) -> list[dict]:
        """A grid's cells, in order: ``{"variant": NAME, "seed": SEED}``."""
        return [{"variant": v, "seed": s} for v in self.variants for s in self.seeds]

    def grid_config(self, variant: str, seed: int) -> tuple[dict, TrainConfig]:
        overrides = {**self.base, **self.variants[variant], "seed": seed}
        return overrides, build_config(self.preset, overrides)

    def identity(self) -> dict:
        """What the study must agree on with every worker's file (machine-local paths left out)."""
        base = {k: v for k, v in self.base.items() if k not in MACHINE_LOCAL}
        out: dict = {"kind": self.kind, "preset": self.preset, "base": base}
        if self.kind == "grid":
            out["variants"] = self.variants
        else:
            out["params"] = [p.to_dict() for p in self.params]
        return json.loads(json.dumps(out))  # tuples as lists, as the study stores them


def build_config(preset: str, overrides: dict) -> TrainConfig:
    """The preset with ``overrides`` (field -> value; ``model_kwargs.KEY`` sets one model argument)."""
    plain = {k: v for k, v in overrides.items() if "." not in k}
    dotted = {k.split(".", 1)[1]: v for k, v in overrides.items() if "." in k}
    config = get_preset(preset)
    if dotted:  # one model argument each, over the variant's (or the preset's) model_kwargs
        plain = {**plain, "model_kwargs": {**plain.get("model_kwargs", config.model_kwargs), **dotted}}
    return dataclasses.replace(config, **plain)


def _check_value(name: str, value: Any, where: str) -> Any:
    if name in NOT_OVERRIDABLE or (name not in FIELD_TYPES and not name.startswith("model_kwargs.")):
        raise SweepError(f"{where}: unknown configuration field {name!r}")
    if name.startswith("model_kwargs."):
        return value
    typ = FIELD_TYPES[name]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[typ]
    if not ok:
        raise SweepError(f"{where}: {name} must be {TYPE_NAMES[typ]}, got {value!r}")
    return float(value) if typ is float else value


def _overrides(table: Any, where: str) -> dict:
    if not isinstance(table, dict):
        raise SweepError(f"{where}: expected a table of configuration fields, got {table!r}")
    return {k: _check_value(k, v, f"{where} {k}") for k, v in table.items()}


def _table(doc: dict, key: str, allowed: set[str], where: str) -> dict:
    table = doc.get(key, {})
    if not isinstance(table, dict):
        raise SweepError(f"{where}: [{key}] must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SweepError(f"{where}: [{key}] unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return table


def _int(table: dict, key: str, default: int, where: str, minimum: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SweepError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _config_or_error(preset: str, overrides: dict, where: str) -> TrainConfig:
    try:
        config = build_config(preset, overrides)
    except (ValueError, TypeError) as e:
        raise SweepError(f"{where}: {e}") from None
    if not config.val_split:
        raise SweepError(f"{where}: val_split is 0, so runs would be selected on the test split; hold out images")
    return config


def select_variants(spec: SweepSpec, patterns: typing.Sequence[str] | None) -> frozenset[str] | None:
    """The grid rows a worker takes (``sweep run --variants``): variant names or shell-style patterns
    (``"fast-net*"``), each of which must match a variant of ``spec``. None (no patterns): every row."""
    if not patterns:
        return None
    if spec.kind != "grid":
        raise SweepError(f"{spec.path}: --variants picks rows of a grid, and this sweep is a search")
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [v for v in spec.variants if fnmatch.fnmatchcase(v, pattern)]
        if not matched:
            raise SweepError(
                f"{spec.path}: --variants {pattern!r} matches no variant of [grid.variants] "
                f"(variants: {', '.join(spec.variants)})"
            )
        chosen.update(matched)
    return frozenset(chosen)


def rows_with_emulated_bf16(spec: SweepSpec, variants: frozenset[str] | None) -> list[str]:
    """The grid rows (of ``variants``; None: of all) that would train in bf16 here on a CPU without AMX or
    AVX512_BF16, where bf16 is emulated and a step takes many times the fp32 one (12x on a Zen 3:
    docs/performance.md). ``sweep run`` leaves their cells to workers on machines with bf16 instructions
    (or a GPU) unless told ``--emulated-bf16``: started on a mixed cluster, the slow machines would
    otherwise hold the bf16 cells for hours. A row whose device this machine lacks is not one of them (its
    trial fails with that error, as any trial's would)."""
    if spec.kind != "grid":
        return []
    rows = []
    for name in spec.variants:
        if variants is not None and name not in variants:
            continue
        config = spec.grid_config(name, spec.seeds[0])[1]
        try:
            device = resolve_device(config.device)
            precision = resolve_precision(config.precision, device)
        except ValueError:
            continue
        if precision == "bf16" and bf16_is_emulated(device):
            rows.append(name)
    return rows


def load_sweep(path: str | Path, *, directory: str | Path | None = None, data: str | None = None) -> SweepSpec:
    """Parse and check the sweep file ``path``. ``directory`` and ``data`` override the file's (the trials'
    folder; the data source on this machine)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - {"sweep", "base", "grid", "search"})
    if unknown:
        raise SweepError(f"{path}: unknown table [{unknown[0]}] (known: sweep, base, grid, search)")
    sweep = _table(doc, "sweep", SWEEP_KEYS, str(path))
    for key in ("name", "directory", "storage"):
        if key in sweep and not (isinstance(sweep[key], str) and sweep[key]):
            raise SweepError(f"{path}: [sweep] {key} must be a non-empty string, got {sweep[key]!r}")
    name = sweep.get("name", path.stem)
    base = dict(doc.get("base", {})) if isinstance(doc.get("base", {}), dict) else None
    if base is None:
        raise SweepError(f"{path}: [base] must be a table")
    preset = base.pop("preset", "seed")
    if preset not in PRESETS:
        raise SweepError(f"{path}: [base] preset: unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    base = _overrides(base, f"{path}: [base]")
    if data is not None:
        base["data"] = data
    common = {
        "path": path,
        "name": name,
        "directory": Path(directory or sweep.get("directory") or Path("runs") / "sweeps" / name),
        "storage": sweep.get("storage"),
        "preset": preset,
        "base": base,
        "heartbeat": _int(sweep, "heartbeat", 60, f"{path}: [sweep]", 1),
        "grace": _int(sweep, "grace", 180, f"{path}: [sweep]", 1),
        "retries": _int(sweep, "retries", 3, f"{path}: [sweep]", 0),
    }
    if common["grace"] <= common["heartbeat"]:
        raise SweepError(f"{path}: [sweep] grace ({common['grace']} s) must be longer than heartbeat")
    if ("grid" in doc) == ("search" in doc):
        raise SweepError(f"{path}: a sweep file needs exactly one of [grid] and [search]")
    if "grid" in doc:
        return _load_grid(doc, path, common)
    return _load_search(doc, path, common)


def _load_grid(doc: dict, path: Path, common: dict) -> SweepSpec:
    grid = _table(doc, "grid", GRID_KEYS, str(path))
    seeds = grid.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise SweepError(f"{path}: [grid] seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: [grid] seeds: {seeds!r} repeats a seed")
    variants = grid.get("variants", {})
    if not isinstance(variants, dict) or not variants:
        raise SweepError(f"{path}: [grid] variants: the grid is empty (add [grid.variants] NAME = {{...}})")
    checked = {}
    for vname, table in variants.items():
        where = f"{path}: [grid.variants.{vname}]"
        if "/" in vname or not vname:
            raise SweepError(f"{where}: a variant's name cannot be empty or contain '/'")
        over = _overrides(table, where)
        if "seed" in over:
            raise SweepError(f"{where}: seed is set by [grid] seeds, not by a variant")
        checked[vname] = over
    baseline = grid.get("baseline", next(iter(checked)))
    if baseline not in checked:
        raise SweepError(f"{path}: [grid] baseline: no variant named {baseline!r}")
    spec = SweepSpec(**common, kind="grid", variants=checked, seeds=tuple(seeds), baseline=baseline)
    for vname, over in checked.items():
        for seed in seeds:
            overrides = {**spec.base, **over, "seed": seed}
            _config_or_error(spec.preset, overrides, f"{path}: [grid.variants.{vname}]")
    return spec


def _load_param(name: str, table: Any, where: str) -> Param:
    if not isinstance(table, dict):
        raise SweepError(f"{where}: expected a table such as {{ low = 0.1, high = 1.0 }} or {{ choices = [...] }}")
    unknown = sorted(set(table) - PARAM_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(PARAM_KEYS))})")
    if "choices" in table:
        choices = table["choices"]
        if set(table) != {"choices"}:
            raise SweepError(f"{where}: choices cannot be combined with low, high, log or step")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Param(name, choices=tuple(_check_value(name, c, where) for c in choices))
    if "low" not in table or "high" not in table:
        raise SweepError(f"{where}: a range needs low and high (or give choices)")
    typ = FIELD_TYPES.get(name)
    if typ not in (int, float, None):
        raise SweepError(f"{where}: {name} is {TYPE_NAMES[typ]}; search it with choices = [...]")
    low, high = (_check_value(name, table[k], f"{where} {k}") for k in ("low", "high"))
    for k, v in (("low", low), ("high", high), ("step", table.get("step", 1))):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise SweepError(f"{where}: {k} must be a number, got {v!r}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise SweepError(f"{where}: low ({low}) must be below high ({high})")
    if log and not low > 0:
        raise SweepError(f"{where}: a log range needs low > 0, got {low}")
    step = table.get("step")
    if step is not None and (log or not step > 0):
        raise SweepError(f"{where}: step must be > 0 and cannot be combined with log")
    return Param(name, low=low, high=high, log=log, step=step)


def _load_search(doc: dict, path: Path, common: dict) -> SweepSpec:
    search = _table(doc, "search", SEARCH_KEYS, str(path))
    where = f"{path}: [search]"
    trials = _int(search, "trials", 0, where, 1)
    pruner = search.get("pruner", "median")
    if pruner not in PRUNERS:
        raise SweepError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    params_table = search.get("params", {})
    if not isinstance(params_table, dict) or not params_table:
        raise SweepError(
            f"{where}: params: nothing to search (add [search.params] FIELD = {{ low = ..., high = ... }})"
        )
    params = tuple(_load_param(n, t, f"{path}: [search.params] {n}") for n, t in params_table.items())
    clash = sorted({p.name for p in params} & set(common["base"]))
    if clash:
        raise SweepError(f"{path}: [search.params] {clash[0]}: also set in [base]; set it in one place")
    start = search.get("start", [])
    if not isinstance(start, list) or not all(isinstance(s, dict) for s in start):
        raise SweepError(f"{where}: start must be an array of tables ([[search.start]])")
    by_name = {p.name: p for p in params}
    for i, point in enumerate(start):
        for key, value in point.items():
            if key not in by_name:
                raise SweepError(f"{path}: [[search.start]] {i + 1}: {key!r} is not a searched parameter")
            p = by_name[key]
            _check_value(key, value, f"{path}: [[search.start]] {i + 1} {key}")
            if p.choices is not None and value not in p.choices:
                raise SweepError(f"{path}: [[search.start]] {i + 1} {key}: {value!r} is not one of the choices")
            if p.choices is None and not p.low <= value <= p.high:
                raise SweepError(f"{path}: [[search.start]] {i + 1} {key}: {value!r} is outside {p.low}..{p.high}")
    spec = SweepSpec(
        **common,
        kind="search",
        params=params,
        trials=trials,
        sampler_seed=_int(search, "seed", 0, where, 0),
        pruner=pruner,
        startup_trials=_int(search, "startup_trials", 5, where, 0),
        warmup_epochs=_int(search, "warmup_epochs", 0, where, 0),
        start=tuple(start),
    )
    # each range's ends and every choice must make a configuration the recipe accepts
    for p in params:
        for value in p.choices if p.choices is not None else (p.low, p.high):
            _config_or_error(spec.preset, {**spec.base, p.name: value}, f"{path}: [search.params] {p.name} = {value!r}")
    return spec


# --------------------------------------------------------------------------------------------------
# Optuna: the study, its storage, the next trial
# --------------------------------------------------------------------------------------------------


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps need Optuna: pip install 'cifar-resnet[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask() warns that heartbeats are meant for Study.optimize: a worker here sends them itself (_Heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _storage(spec: SweepSpec, url: str, attempts: int = 5):
    """The study's storage. Workers that start together on an empty database race to create Optuna's
    tables (the loser's CREATE TABLE fails on a unique key): a failed connection is tried again after a
    short random pause, by when the tables exist."""
    optuna = _optuna()
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        spec.directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.heartbeat,
                grace_period=spec.grace,
                heartbeat_stale_trial_callback=_Requeue(spec.retries),
            )
        except ImportError as e:  # the database's driver
            raise SweepError(
                f"storage {_safe_url(url)}: {e} (PostgreSQL needs: pip install 'psycopg[binary]')"
            ) from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's many errors: a server that does not answer, a bad URL
            if attempt + 1 == attempts:
                raise SweepError(f"storage {_safe_url(url)}: {' '.join(str(e).split())[:300]}") from None
            time.sleep(0.2 + random.random())
    raise AssertionError("the loop returns or raises")


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def _samplers(spec: SweepSpec):
    optuna = _optuna()
    if spec.kind == "grid":
        return optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
    elif spec.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_epochs))
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def open_study(spec: SweepSpec, url: str | None = None, *, create: bool = True):
    """The sweep's Optuna study (created when ``create`` and it does not exist yet), checked against the
    file: a study begun from a different base, variants or ranges is an error."""
    optuna = _optuna()
    url = url or spec.storage_url
    if not create and url == spec.storage_url and not (spec.directory / "optuna.db").is_file():
        raise SweepError(
            f"no study named {spec.name!r}: {spec.directory / 'optuna.db'} does not exist; "
            f"start it with cifar-resnet sweep run {spec.path}"
        )
    storage = _storage(spec, url)
    sampler, pruner = _samplers(spec)
    try:
        if create:
            study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                direction="maximize",
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise SweepError(
            f"no study named {spec.name!r} in {_safe_url(url)}: start it with cifar-resnet sweep run {spec.path}"
        ) from None
    except Exception as e:  # noqa: BLE001 - a race on creation leaves the loser a DuplicatedStudyError: load it
        if not isinstance(e, optuna.exceptions.DuplicatedStudyError):
            raise SweepError(f"storage {_safe_url(url)}: {' '.join(str(e).split())[:300]}") from None
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    _check_identity(study, spec, url, create)
    return study


def _check_identity(study, spec: SweepSpec, url: str, create: bool) -> None:
    mine = spec.identity()
    theirs = study.user_attrs.get("sweep")
    if theirs is None:
        if create:
            study.set_user_attr("sweep", mine)
        return
    for key in ("kind", "preset", "base", "params"):
        if key in mine and theirs.get(key) != mine[key]:
            raise SweepError(
                f"{spec.path}: the study {spec.name!r} in {_safe_url(url)} was begun with a different {key} "
                f"({json.dumps(theirs.get(key))[:120]}); give this sweep a new [sweep] name"
            )
    if spec.kind == "grid":
        for vname, over in mine["variants"].items():
            if vname in theirs["variants"] and theirs["variants"][vname] != over:
                raise SweepError(
                    f"{spec.path}: [grid.variants.{vname}] differs from the variant the study {spec.name!r} ran "
                    f"({json.dumps(theirs['variants'][vname])}); rename the variant"
                )
        added = {k: v for k, v in mine["variants"].items() if k not in theirs["variants"]}
        if added and create:
            study.set_user_attr("sweep", {**theirs, "variants": {**theirs["variants"], **added}})


def _states():
    return _optuna().trial.TrialState


def _cell(trial) -> dict | None:
    """A grid trial's cell (from its queued parameters, also before it has suggested them)."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    params = {**fixed, **trial.params}
    if "variant" in params and "seed" in params:
        return {"variant": params["variant"], "seed": int(params["seed"])}
    return None


def _replaced(trials) -> set[int]:
    """Numbers of the failed trials that a later trial continues."""
    return {t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs}


def _enqueue_missing_cells(study, spec: SweepSpec) -> int:
    """Queue each grid cell that has no trial waiting, running or complete (new cells, cells whose trials
    all failed). Two workers starting at once may both queue a cell: the second to take it skips it."""
    S = _states()
    present = set()
    for t in study.get_trials(deepcopy=False):
        cell = _cell(t)
        if cell and t.state in (S.WAITING, S.RUNNING, S.COMPLETE):
            present.add((cell["variant"], cell["seed"]))
    queued = 0
    for cell in spec.cells():
        if (cell["variant"], cell["seed"]) not in present:
            study.enqueue_trial(cell, user_attrs={"cell": f"{cell['variant']}/seed{cell['seed']}"})
            queued += 1
    return queued


def _enqueue_start_points(study, spec: SweepSpec) -> None:
    by_name = {p.name: p for p in spec.params}
    for point in spec.start:
        study.enqueue_trial({k: by_name[k].encode(v) for k, v in point.items()}, skip_if_exists=True)


class _Requeue:
    """Queue a continuation of a failed trial (stale heartbeat, or stopped by a signal): same parameters,
    ``continues`` = its number; at most ``retries`` continuations in a row after faults (a stop someone
    asked for, ``reason="interrupted"``, is not a fault and does not count)."""

    def __init__(self, retries: int) -> None:
        self.retries = retries

    def __call__(self, study, trial, reason: str = "its worker stopped sending heartbeats") -> int | None:
        attempt = int(trial.user_attrs.get("attempt", 1))
        fault = reason != "interrupted"
        if fault and attempt > self.retries:
            return None
        params = {**(trial.system_attrs.get("fixed_params") or {}), **trial.params}
        attrs = {"continues": trial.number, "attempt": attempt + fault, "reason": reason}
        if "cell" in trial.user_attrs:
            attrs["cell"] = trial.user_attrs["cell"]
        study.enqueue_trial(params, user_attrs=attrs)
        return trial.number


# Two of Optuna's internals are used, in these helpers only: a Study's storage (the RDBStorage that
# open_study made) and a Trial's id in it, which the storage's public methods take.
def _storage_of(study):
    return study._storage


def _trial_id(trial) -> int:
    return trial._trial_id


def _stale_trial_ids(study) -> set[int] | None:
    """Ids of the study's running trials whose heartbeat is older than the grace period (None: unknown)."""
    storage = _storage_of(study)
    try:
        return set(storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)))
    except Exception:  # noqa: BLE001 - a storage without heartbeats, or another Optuna: say nothing
        return None


def _frozen(study, trial):
    """``trial`` as stored now, its queued parameters included."""
    return _storage_of(study).get_trial(_trial_id(trial))


def _in_rows(trial, variants: frozenset[str] | None) -> bool:
    """Whether ``trial`` (frozen) is a cell of one of ``variants`` (None: of any row)."""
    if variants is None:
        return True
    cell = _cell(trial)
    return cell is not None and cell["variant"] in variants


def _pop_waiting(study, variants: frozenset[str] | None = None):
    """Take a queued trial (atomically: a trial another worker took first is skipped), or None. With
    ``variants``, only a cell of those grid rows."""
    optuna = _optuna()
    storage, S = _storage_of(study), _states()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(S.WAITING,)):
        if not _in_rows(t, variants):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, state=S.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(study, number: int, cell: dict) -> int | None:
    """An earlier or finished trial of the same grid cell, which makes trial ``number`` a duplicate."""
    S = _states()
    for t in study.get_trials(deepcopy=False):
        if t.number == number or _cell(t) != cell:
            continue
        if t.state == S.COMPLETE or (t.state in (S.RUNNING, S.WAITING) and t.number < number):
            return t.number
    return None


def _counted(study) -> int:
    """Trials that count towards a search's ``trials``: all but the failures a continuation replaced."""
    trials = study.get_trials(deepcopy=False)
    replaced = _replaced(trials)
    return sum(1 for t in trials if t.number not in replaced and "duplicate_of" not in t.user_attrs)


def _take(study, spec: SweepSpec, variants: frozenset[str] | None = None):
    """The next trial for this worker, or None: a queued one (grid cells, continuations, start points; with
    ``variants``, cells of those rows only), else, in a search that has not reached its number of trials,
    TPE's next."""
    if spec.kind == "grid":
        while (trial := _pop_waiting(study, variants)) is not None:
            _storage_of(study).record_heartbeat(_trial_id(trial))  # from now on a dead worker's trial is stale
            cell = _cell(_frozen(study, trial))
            dup = _duplicate_of(study, trial.number, cell) if cell else None
            if dup is None:
                return trial
            trial.set_user_attr("duplicate_of", dup)
            study.tell(trial, state=_states().FAIL)
        return None
    if study.get_trials(deepcopy=False, states=(_states().WAITING,)) or _counted(study) < spec.trials:
        trial = study.ask()  # a queued trial first (a continuation, a start point), else TPE's next
        _storage_of(study).record_heartbeat(_trial_id(trial))
        return trial
    return None


def _next_trial(
    study, spec: SweepSpec, log: Callable[[str], None], stop: StopSignals, variants: frozenset[str] | None = None
):
    """The next trial, or None when the study is finished (or ``stop`` received a signal). While nothing is
    left to take but other workers' trials still run, wait: a worker that dies leaves its trial stale after
    the grace period, and this worker takes it over (:class:`_Requeue` queues the continuation). With
    ``variants``, finished means: no cell of those rows waits or runs."""
    waiting_said = False
    while stop.received is None:
        _optuna().storages.fail_stale_trials(study)
        trial = _take(study, spec, variants)
        if trial is not None:
            return trial
        running = [t for t in study.get_trials(deepcopy=False, states=(_states().RUNNING,)) if _in_rows(t, variants)]
        if not running:
            if variants is not None:
                others = study.get_trials(deepcopy=False, states=(_states().WAITING, _states().RUNNING))
                if others:
                    log(
                        f"no cell of {', '.join(sorted(variants))} is left; {len(others)} cell(s) of other rows "
                        f"wait or run for workers that take them"
                    )
            return None
        if not waiting_said:
            log(
                f"nothing left to start; waiting while {len(running)} trial(s) run elsewhere, to take over any "
                f"whose worker stops (Ctrl-C to leave)"
            )
            waiting_said = True
        deadline = time.monotonic() + spec.heartbeat
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(min(0.2, spec.heartbeat))
    return None


# --------------------------------------------------------------------------------------------------
# A worker
# --------------------------------------------------------------------------------------------------


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
                self.error = _one_line(e)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _reset_peak_memory() -> bool:
    """Reset the process's peak resident set size (Linux >= 4.0), so the next reading is this trial's. The
    memory an earlier trial of this worker freed is handed back first: training keeps freed memory for the
    next step (``memory.keep_freed_memory``), and kept, it would count in every later trial's peak."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_memory_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__


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
    study = _open_and_queue(spec, url)
    result = WorkerResult()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # Ctrl-C/SIGTERM between trials (waiting, taking one, setting one up) stops the worker there; during
    # training, fit's own handler (nested in this one) stops the trial after its step, resumable
    with StopSignals() as stop:
        while max_trials is None or result.completed + result.pruned + result.failed < max_trials:
            trial = _next_trial(study, spec, log, stop, variants)
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


def _open_and_queue(spec: SweepSpec, url: str | None):
    """The study, with the grid's missing cells (or the search's start points) queued."""
    study = open_study(spec, url)
    if spec.kind == "grid":
        _enqueue_missing_cells(study, spec)
    else:
        _enqueue_start_points(study, spec)
    return study


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


def _run_trial(study, trial, spec: SweepSpec, worker: str, log: Callable[[str], None], stop: StopSignals) -> str | int:
    """Train one trial; returns "completed", "pruned" or "failed", or the exit code after a stop signal
    (``stop`` received one before training began: the trial is queued again, untouched)."""
    S = _states()
    number = trial.number
    run_dir = spec.directory / f"trial-{number:04d}"
    say = _trial_logger(number, run_dir, log)
    try:
        overrides, config = _trial_config(trial, spec)
    except (ValueError, TypeError) as e:
        return _fail(study, trial, say, f"configuration rejected: {_one_line(e)}")
    _take_over(trial, spec, run_dir, say)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = trial.user_attrs.get("cell") or ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items() if k not in spec.base
    )
    resumed = RunDir(run_dir).last.is_file()
    say(f"{label}: {'resuming ' + str(RunDir(run_dir).last) if resumed else 'starting'} on {worker}")
    for key, value in {
        "overrides": overrides,
        "run_dir": str(run_dir),
        "worker": worker,
        "cpu": cpu_model(),
        "machine": _machine(config),
        "threads": torch.get_num_threads(),
    }.items():
        trial.set_user_attr(key, value)
    # a resumed run reports its earlier epochs again, so that the pruner sees the whole curve
    if resumed:
        earlier = RunDir(run_dir).read_history()[0]
        trial.set_user_attr("resumed_after_epoch", len(earlier))
        for record in earlier:
            trial.report(record["val_top1"], record["epoch"])

    def on_epoch_end(record: dict) -> None:
        trial.report(record["val_top1"], record["epoch"])
        trial.set_user_attr("epochs_done", record["epoch"])
        if trial.should_prune():
            raise _optuna().TrialPruned(f"pruned after epoch {record['epoch']} at {record['val_top1']:.4f}")

    if stop.received is not None:  # a signal while the trial was taken and set up: hand it back
        trial.set_user_attr("error", f"interrupted by {stop.name} before training began")
        study.tell(trial, state=S.FAIL)
        _Requeue(spec.retries)(study, _frozen(study, trial), reason="interrupted")
        say(f"interrupted by {stop.name} before training began; queued again")
        return 128 + stop.received
    measured = _reset_peak_memory()
    t0 = time.perf_counter()
    with _Heartbeat(_storage_of(study), _trial_id(trial), spec.heartbeat) as beat:
        try:
            history = fit(config, out_dir=run_dir, resume="auto", log=say, progress=False, on_epoch_end=on_epoch_end)
        except _optuna().TrialPruned as e:
            _record(trial, run_dir, t0, measured, None)
            say(str(e))
            study.tell(trial, state=S.PRUNED)
            return "pruned"
        except TrainingInterrupted as stopped:
            trial.set_user_attr("error", f"interrupted by {stopped.signal_name}: {stopped}")
            study.tell(trial, state=S.FAIL)
            _Requeue(spec.retries)(study, _frozen(study, trial), reason="interrupted")
            say(f"interrupted by {stopped.signal_name}; queued to resume from {RunDir(run_dir).last}")
            return stopped.exit_code
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step, but the last one stands
            trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
            study.tell(trial, state=S.FAIL)
            _Requeue(spec.retries)(study, _frozen(study, trial), reason="interrupted")
            return 130
        except Exception as e:  # noqa: BLE001 - a trial that raises is recorded as failed; the sweep goes on
            return _fail(study, trial, say, _one_line(e))
    if beat.failures:
        say(f"{beat.failures} heartbeat(s) did not reach the storage; the last: {beat.error}")
    value = _record(trial, run_dir, t0, measured, history)
    study.tell(trial, value)
    say(f"{label}: validation top-1 {value:.4f} (trial {number} complete)")
    return "completed"


def _machine(config: TrainConfig) -> str:
    """What a trial's training seconds depend on: the GPU's name where it trains on CUDA, else the CPU's."""
    try:
        device = resolve_device(config.device)
    except ValueError:
        return cpu_model()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def _fail(study, trial, say: Callable[[str], None], message: str) -> str:
    trial.set_user_attr("error", message)
    study.tell(trial, state=_states().FAIL)
    say(f"failed: {message}")
    return "failed"


def _record(trial, run_dir: Path, t0: float, measured: bool, history) -> float | None:
    """Store the trial's final metrics as user attributes; returns its value (the last validation top-1)."""
    records = history.records if history is not None else RunDir(run_dir).read_history()[0]
    attrs: dict[str, Any] = {"wall_seconds": round(time.perf_counter() - t0, 2)}
    attrs["peak_mb" if measured else "process_peak_mb"] = round(_peak_memory_mb(), 1)
    if records:
        last = records[-1]
        attrs.update(
            val_top1=last["val_top1"],
            val_top5=last["val_top5"],
            best_val_top1=max(r["val_top1"] for r in records),
            epochs=last["epoch"],
            train_seconds=round(last["train_seconds"], 2),
        )
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
    _open_and_queue(spec, url)  # before the workers start: they find the cells queued, none twice
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


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def _difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, str]:
    """Mean of ``a`` minus mean of ``b`` (seed -> value) and its standard error: paired over the seeds both
    have (same seed = same split and initialisation) when there are at least 2, else Welch's."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = [a[s] - b[s] for s in shared]
        return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d)), "paired"
    diff = statistics.mean(a.values()) - statistics.mean(b.values())
    if len(a) >= 2 and len(b) >= 2:
        se = math.sqrt(statistics.variance(a.values()) / len(a) + statistics.variance(b.values()) / len(b))
        return diff, se, "welch"
    return diff, math.nan, ""


def _fmt(mean: float, sd: float, scale: float = 100, digits: int = 2) -> str:
    m = f"{mean * scale:.{digits}f}"
    return m if math.isnan(sd) else f"{m} ± {sd * scale:.{digits}f}"


def report(spec: SweepSpec, url: str | None = None, out_dir: str | Path | None = None) -> dict:
    """The sweep's report: a dict (``markdown``, ``rows`` or ``best``, ``figures``, trial counts), with
    ``report.md``, ``report.json`` and the figures written to ``out_dir`` (default: the sweep's directory)."""
    study = open_study(spec, url, create=False)
    out_dir = Path(out_dir or spec.directory)
    S = _states()
    trials = [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]
    replaced = _replaced(trials)
    counts = {
        state: sum(1 for t in trials if t.state.name.lower() == state and t.number not in replaced)
        for state in ("complete", "pruned", "running", "waiting", "fail")
    }
    result: dict[str, Any] = {"study": spec.name, "kind": spec.kind, "trials": counts, "cpu": None}
    complete = [t for t in trials if t.state == S.COMPLETE]
    cpus = sorted({t.user_attrs.get("cpu", "") for t in complete} - {""})
    result["cpu"] = ", ".join(cpus)
    machines = sorted({_machine_of(t) for t in complete} - {""})
    result["machines"] = machines
    state_line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"# Sweep {spec.name!r} ({spec.kind}, {spec.path})", "", f"Trials: {state_line or 'none yet'}."]
    if len(machines) > 1:  # numbered: the grid's rows say which ran their cells
        lines.append("Machines: " + "; ".join(f"{i} = {m}" for i, m in enumerate(machines, 1)) + ".")
    elif machines:
        lines.append(f"{'CPU' if machines == cpus else 'Machine'}: {machines[0]}.")
    failed = [t for t in trials if t.state == S.FAIL and t.number not in replaced]
    lines += [f"- trial {t.number} failed: {t.user_attrs.get('error', 'no error recorded')}" for t in failed]
    running = [t for t in trials if t.state == S.RUNNING]
    stale = _stale_trial_ids(study) if running else set()
    result["running"] = [_running(t, stale, spec.grace) for t in running]
    lines += [f"- trial {r['number']} running: {r['text']}" for r in result["running"]]
    lines.append("")
    figures = []
    if spec.kind == "grid":
        rows = _grid_rows(spec, complete)
        result["rows"] = rows
        lines += _grid_table(spec, rows, machines)
        ran = [r for r in rows if r["n"]]
        if ran:
            plot_sweep_variants(
                [r["variant"] for r in ran],
                [r["val_top1"] for r in ran],
                [r["val_top1_sd"] for r in ran],
                [r["n"] for r in ran],
                baseline=spec.baseline,
                title=f"{spec.name}: validation top-1 over seeds (mean ± sd)",
                path=out_dir / "accuracy.png",
            )
            figures.append(str(out_dir / "accuracy.png"))
    else:
        best, importances = _search_results(study, spec, complete)
        result["best"], result["importances"] = best, importances
        lines += _search_table(best, importances)
        finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
        if finished:
            plot_search_history(
                [t.number for t in finished],
                [_last_value(t) for t in finished],
                [t.state.name.lower() for t in finished],
                title=f"{spec.name}: validation top-1 by trial",
                path=out_dir / "history.png",
            )
            figures.append(str(out_dir / "history.png"))
    result["figures"] = figures
    result["markdown"] = "\n".join(lines).rstrip() + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.md", result["markdown"])
    atomic_write_text(
        out_dir / "report.json",
        json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1, default=str) + "\n",
    )
    return result


def _running(trial, stale: set[int] | None, grace: int) -> dict:
    """Where a running trial is: its cell, worker, machine, epochs done and last validation top-1, and whether
    its worker has stopped sending heartbeats (the next worker to look takes it over)."""
    attrs = trial.user_attrs
    cell = _cell(trial)
    label = f"{cell['variant']}/seed{cell['seed']}" if cell else ", ".join(f"{k}={v}" for k, v in trial.params.items())
    epochs = attrs.get("epochs_done", 0)
    info = {
        "number": trial.number,
        "cell": label,
        "worker": attrs.get("worker", ""),
        "machine": _machine_of(trial),
        "epochs_done": epochs,
        "val_top1": _last_value(trial) if epochs else None,
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "stale": None if stale is None else _trial_id(trial) in stale,
    }
    parts = [label + (f" on {info['worker']}" if info["worker"] else "")]
    parts += [info["machine"]] if info["machine"] else []
    parts.append(f"epoch {epochs} done, val top-1 {info['val_top1'] * 100:.2f}%" if epochs else "in its first epoch")
    parts += [f"started {trial.datetime_start:%Y-%m-%d %H:%M}"] if trial.datetime_start else []
    text = ", ".join(parts)
    if info["stale"]:
        text += f"; no heartbeat for over {grace} s: its worker is gone, and the next worker takes it over"
    info["text"] = text
    return info


def _last_value(trial) -> float:
    """A finished trial's last validation top-1 (a pruned trial's: its last report)."""
    if "val_top1" in trial.user_attrs:
        return trial.user_attrs["val_top1"]
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else math.nan


def _machine_of(trial) -> str:
    """The machine a finished trial ran on (trials recorded before "machine" name their CPU)."""
    return trial.user_attrs.get("machine") or trial.user_attrs.get("cpu", "")


def _grid_rows(spec: SweepSpec, complete) -> list[dict]:
    by_variant: dict[str, dict[int, Any]] = {v: {} for v in spec.variants}
    for t in complete:
        cell = _cell(t)
        if cell and cell["variant"] in by_variant and "val_top1" in t.user_attrs:
            by_variant[cell["variant"]][cell["seed"]] = {**t.user_attrs, "machine": _machine_of(t)}
    base = {s: a["val_top1"] for s, a in by_variant.get(spec.baseline, {}).items()}
    rows = []
    for vname, runs in by_variant.items():
        row: dict[str, Any] = {"variant": vname, "changes": spec.variants[vname], "n": len(runs), "seeds": sorted(runs)}
        row["extends"] = _extends(spec.variants, vname)
        row["val_top1_by_seed"] = {s: runs[s]["val_top1"] for s in sorted(runs)}
        row["machines"] = sorted({a["machine"] for a in runs.values()} - {""})
        if runs:
            for key in ("val_top1", "val_top5", "train_seconds", "peak_mb"):
                values = [a[key] for a in runs.values() if key in a]
                row[key], row[key + "_sd"] = _mean_sd(values) if values else (math.nan, math.nan)
                row[key + "_n"] = len(values)  # fewer than n where some cells did not record it
            if vname != spec.baseline and base:
                d, se, how = _difference({s: a["val_top1"] for s, a in runs.items()}, base)
                row.update(diff=d, diff_se=se, diff_kind=how)
        rows.append(row)
    return rows


def _extends(variants: dict[str, dict], name: str) -> str | None:
    """The row that ``name`` adds to: the variant whose overrides are the largest strict, non-empty subset of
    its own (the first in the file on a tie), or None."""
    own = variants[name]
    best = None
    for other, changes in variants.items():
        if other == name or not changes or len(changes) >= len(own):
            continue
        subset = all(k in own and own[k] == v for k, v in changes.items())
        if subset and (best is None or len(changes) > len(variants[best])):
            best = other
    return best


def _change(spec: SweepSpec, row: dict) -> str:
    """A row's change: its overrides, or the row it extends plus the rest ("bf16 + epochs=14")."""
    changes, parent = row["changes"], row.get("extends")
    if parent:
        rest = {k: v for k, v in changes.items() if k not in spec.variants[parent]}
        return f"{parent} + " + ", ".join(f"{k}={v}" for k, v in rest.items())
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "-"


def _with_n(text: str, row: dict, key: str) -> str:
    """``text`` with "(n=k)" where only k of the row's n cells recorded ``key``."""
    k = row.get(key + "_n", row["n"])
    return f"{text} (n={k})" if text and k < row["n"] else text


def _grid_table(spec: SweepSpec, rows: list[dict], machines: list[str]) -> list[str]:
    """The grid's table; where its cells ran on more than one machine, an "on" column numbers each row's
    (as the report's "Machines:" line does), since training seconds compare only within one machine."""
    several = len(machines) > 1
    on_head, on_rule = (" on |", " --- |") if several else ("", "")
    lines = [
        (
            f"| variant | change | n |{on_head} val top-1 % | val top-5 % | training s | peak MB | "
            f"Δ top-1 vs {spec.baseline} |"
        ),
        f"| --- | --- | --- |{on_rule} --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        change = _change(spec, r)
        on = f" {', '.join(str(machines.index(m) + 1) for m in r['machines'])} |" if several else ""
        if not r["n"]:
            lines.append(f"| {r['variant']} | {change} | 0 |{on} | | | | |")
            continue
        if r["variant"] == spec.baseline:
            diff = "baseline"
        elif "diff" in r:
            se = "" if math.isnan(r["diff_se"]) else f" ± {r['diff_se'] * 100:.2f}"
            diff = f"{r['diff'] * 100:+.2f}{se}"
        else:
            diff = ""
        peak = _fmt(r["peak_mb"], r["peak_mb_sd"], 1, 0) if not math.isnan(r["peak_mb"]) else ""
        seconds = _fmt(r["train_seconds"], r["train_seconds_sd"], 1, 0) if not math.isnan(r["train_seconds"]) else ""
        lines.append(
            f"| {r['variant']} | {change} | {r['n']} |{on} {_fmt(r['val_top1'], r['val_top1_sd'])} | "
            f"{_fmt(r['val_top5'], r['val_top5_sd'])} | {_with_n(seconds, r, 'train_seconds')} | "
            f"{_with_n(peak, r, 'peak_mb')} | {diff} |"
        )
    note = (
        "Mean ± standard deviation over seeds; Δ is the difference of the means with its standard error "
        "(paired over the seeds both rows ran: a seed fixes the split and the initialisation)."
    )
    if any(r.get("extends") for r in rows):
        note += ' A change "A + x=1" adds x=1 to row A\'s.'
    if any(r.get(f"{key}_n", r["n"]) < r["n"] for r in rows for key in ("train_seconds", "peak_mb")):
        note += ' "(n=k)": over the k of the row\'s cells that recorded it.'
    if several:
        note += ' Training seconds compare only between cells run on one machine (column "on").'
    return lines + ["", note, "", _by_seed(spec, rows)]


def _by_seed(spec: SweepSpec, rows: list[dict]) -> str:
    """Each row's validation top-1 seed by seed, naming the seeds where only some have run."""
    every = list(spec.seeds)
    parts = []
    for r in rows:
        if r["n"]:
            by_seed = r["val_top1_by_seed"]
            named = f" (seed{'s' * (len(by_seed) > 1)} {', '.join(map(str, by_seed))})"
            which = "" if set(by_seed) == set(every) else named
            parts.append(f"{r['variant']} {', '.join(f'{v * 100:.2f}' for v in by_seed.values())}{which}")
    return f"Validation top-1 %, seeds {', '.join(map(str, every))}: {'; '.join(parts)}." if parts else ""


def _search_results(study, spec: SweepSpec, complete) -> tuple[list[dict], dict]:
    best = sorted(complete, key=lambda t: t.value, reverse=True)[:10]
    rows = [
        {
            "trial": t.number,
            "val_top1": t.value,
            "val_top5": t.user_attrs.get("val_top5"),
            "epochs": t.user_attrs.get("epochs"),
            "train_seconds": t.user_attrs.get("train_seconds"),
            "params": t.params,
        }
        for t in best
    ]
    importances: dict = {}
    if len(complete) >= 2:
        try:
            importances = dict(_optuna().importance.get_param_importances(study))
        except (RuntimeError, ValueError, ImportError) as e:  # too few distinct trials to rank parameters
            importances = {"(not computed)": _one_line(e)}
    return rows, importances


def _search_table(best: list[dict], importances: dict) -> list[str]:
    lines = [
        "| trial | val top-1 % | val top-5 % | epochs | training s | parameters |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in best:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        top5 = "" if r["val_top5"] is None else f"{r['val_top5'] * 100:.2f}"
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['trial']} | {r['val_top1'] * 100:.2f} | {top5} | {r['epochs']} | {secs} | {params} |")
    if importances:
        lines += ["", "Parameter importances (Optuna's fANOVA, over the complete trials):", ""]
        lines += [
            f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
            for k, v in sorted(importances.items(), key=lambda kv: -kv[1] if isinstance(kv[1], float) else 0)
        ]
    return lines
