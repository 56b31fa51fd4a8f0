"""The sweep file (TOML): a base configuration (a preset plus overrides) and either a grid (named variants,
each a set of overrides, times seeds) or a search (ranges over configuration fields), parsed and checked
into a :class:`SweepSpec`; every cell's configuration is built once, so a bad override fails before training.
The format: docs/sweeps.md."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import typing
from pathlib import Path
from typing import Any

import tomllib

from ..config import PRESETS, TrainConfig, get_preset
from ..console import parse_duration
from ..device import bf16_is_emulated, resolve_device, resolve_precision

__all__ = [
    "Param",
    "SweepError",
    "SweepSpec",
    "build_config",
    "load_sweep",
    "rows_with_emulated_bf16",
    "select_variants",
]

FIELD_TYPES: dict[str, type] = typing.get_type_hints(TrainConfig)
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
NOT_OVERRIDABLE = {"plan"}  # written by --budget, never by hand
SWEEP_KEYS = {"name", "directory", "storage", "heartbeat", "grace", "retries"}
GRID_KEYS = {"seeds", "variants", "baseline"}
SEARCH_KEYS = {"trials", "seed", "pruner", "startup_trials", "warmup_tenths", "params", "start"}
PARAM_KEYS = {"low", "high", "log", "step", "choices"}
PRUNERS = ("median", "hyperband", "none")
MACHINE_LOCAL = ("data", "device")  # may differ between the machines of one study


class SweepError(ValueError):
    """A sweep file or study that cannot be used; the message is one line naming the file and the key."""


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
    warmup_tenths: int = 0  # the pruner's steps are tenths of a trial's schedule (worker.PRUNE_STEPS)
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
        """What the study must agree on with every worker's file (machine-local paths left out): the file's
        preset and overrides as written, and the base configuration they resolve to (``config``), so that a
        study notices a preset whose definition changed after it began."""
        base = {k: v for k, v in self.base.items() if k not in MACHINE_LOCAL}
        config = dataclasses.asdict(build_config(self.preset, base))
        config = {k: v for k, v in config.items() if k not in MACHINE_LOCAL}
        for p in self.params:  # a searched field's base value is never trained
            field, _, key = p.name.partition(".")
            if key:
                config[field] = {k: v for k, v in config[field].items() if k != key}
            else:
                config.pop(field, None)
        out: dict = {"kind": self.kind, "preset": self.preset, "base": base, "config": config}
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


def _tenths(search: dict, where: str) -> int:
    """``warmup_tenths``: how many tenths of a trial's schedule pass before the pruner may stop it (0-9)."""
    value = _int(search, "warmup_tenths", 0, where, 0)
    if value > 9:
        raise SweepError(f"{where}: warmup_tenths must be 0-9 (tenths of a trial's schedule), got {value}")
    return value


def _seconds(table: dict, key: str, default: int, where: str) -> int:
    """A duration of the [sweep] table in whole seconds (>= 1): an integer, or a string in the grammar of
    :func:`~cifar_resnet.console.parse_duration` (``"90s"``, ``"3m"``, ``"1h30m"``)."""
    value = table.get(key, default)
    if not isinstance(value, str):
        return _int(table, key, default, where, 1)
    try:
        seconds = parse_duration(value, flag=key)
    except ValueError as e:
        raise SweepError(f"{where}: {e}") from None
    if seconds is None or seconds != int(seconds):
        raise SweepError(f"{where}: {key} must be a whole number of seconds >= 1, got {value!r}")
    return int(seconds)


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
    AVX512_BF16, where bf16 is emulated and a step takes many times the fp32 one. ``sweep run`` leaves
    their cells to workers on machines with bf16 instructions (or a GPU) unless told ``--emulated-bf16``:
    on a mixed cluster the slow machines would otherwise hold the bf16 cells. A row whose device this
    machine lacks is not one of them (its trial fails with that error, as any trial's would)."""
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
        "heartbeat": _seconds(sweep, "heartbeat", 60, f"{path}: [sweep]"),
        "grace": _seconds(sweep, "grace", 180, f"{path}: [sweep]"),
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
        warmup_tenths=_tenths(search, where),
        start=tuple(start),
    )
    # each range's ends and every choice must make a configuration the recipe accepts
    for p in params:
        for value in p.choices if p.choices is not None else (p.low, p.high):
            _config_or_error(spec.preset, {**spec.base, p.name: value}, f"{path}: [search.params] {p.name} = {value!r}")
    return spec
