"""The sweep's Optuna study: its storage (SQLite by default, any RDB URL), the check that a study and a
sweep file agree, and the queue: grid cells, search start points, continuations of failed trials, and the
next trial a worker takes. Optuna (the ``sweep`` extra) is imported only when a sweep runs or reports."""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock file (one worker per SQLite study there)
    fcntl = None

from ..console import one_line
from ..signals import StopSignals
from .spec import SweepError, SweepSpec

__all__ = ["open_study"]


def import_optuna():
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
    optuna = import_optuna()
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
                heartbeat_stale_trial_callback=Requeue(spec.retries),
            )
        except ImportError as e:  # the database's driver
            raise SweepError(
                f"storage {_safe_url(url)}: {e} (PostgreSQL needs: pip install 'psycopg[binary]')"
            ) from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's many errors: a server that does not answer, a bad URL
            if attempt + 1 == attempts:
                raise SweepError(f"storage {_safe_url(url)}: {one_line(e, limit=300)}") from None
            time.sleep(0.2 + random.random())
    raise AssertionError("the loop returns or raises")


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def _tpe(spec: SweepSpec, number: int):
    """TPE for the study's trial ``number``, seeded from the file's ``seed`` and that number: workers that each
    seeded it with the file's seed alone drew the same points, one after another (the random start-up
    points first). Multivariate (the parameters' joint density: a learning rate goes with a batch size), and
    the trials still running count as bad ones (constant liar), so that a second worker asks elsewhere."""
    optuna = import_optuna()
    seed = random.Random(f"{spec.sampler_seed}/{number}").getrandbits(32)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def _samplers(spec: SweepSpec):
    optuna = import_optuna()
    if spec.kind == "grid":
        return optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner()
    sampler = _tpe(spec, 0)
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_tenths)
    elif spec.pruner == "hyperband":  # a trial's resource: the tenths of its schedule done
        pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_tenths), max_resource=10)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def open_study(spec: SweepSpec, url: str | None = None, *, create: bool = True):
    """The sweep's Optuna study (created when ``create`` and it does not exist yet), checked against the
    file: a study begun from a different base, variants or ranges is an error."""
    optuna = import_optuna()
    url = url or spec.storage_url
    sqlite_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if not create and sqlite_file is not None and not sqlite_file.is_file():  # reading: make no empty study
        raise SweepError(
            f"no study named {spec.name!r}: {sqlite_file} does not exist; "
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
            raise SweepError(f"storage {_safe_url(url)}: {one_line(e, limit=300)}") from None
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    _check_identity(study, spec, url, create)
    return study


def _check_base_config(theirs: dict | None, mine: dict, spec: SweepSpec, url: str) -> None:
    """The file's base resolves to the configuration the study began with, whether its text or the preset it
    names changed since (a study older than this record has none to compare). Fields added to the
    configuration since keep their defaults and are not compared."""
    if theirs is None:
        return
    changed = sorted(k for k in theirs if k in mine and theirs[k] != mine[k])
    if changed:
        was = ", ".join(f"{k}={json.dumps(theirs[k])}" for k in changed)
        now = ", ".join(f"{k}={json.dumps(mine[k])}" for k in changed)
        raise SweepError(
            f"{spec.path}: the study {spec.name!r} in {_safe_url(url)} was begun with a different base "
            f"configuration ({was[:150]}; preset {spec.preset!r} and this file's [base] give {now[:150]}): "
            "set those fields in [base], or give this sweep a new [sweep] name"
        )


def _check_identity(study, spec: SweepSpec, url: str, create: bool) -> None:
    mine = spec.identity()
    theirs = study.user_attrs.get("sweep")
    if theirs is None:
        if create:
            study.set_user_attr("sweep", mine)
        return
    # a study that recorded its base configuration compares that, however the file spells it; an older one
    # compares the file's preset and base as written
    keys = ("kind", "params") if "config" in theirs else ("kind", "preset", "base", "params")
    for key in keys:
        if key in mine and theirs.get(key) != mine[key]:
            raise SweepError(
                f"{spec.path}: the study {spec.name!r} in {_safe_url(url)} was begun with a different {key} "
                f"({json.dumps(theirs.get(key))[:120]}); give this sweep a new [sweep] name"
            )
    _check_base_config(theirs.get("config"), mine["config"], spec, url)
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


def trial_states():
    return import_optuna().trial.TrialState


def trial_cell(trial) -> dict | None:
    """A grid trial's cell (from its queued parameters, also before it has suggested them)."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    params = {**fixed, **trial.params}
    if "variant" in params and "seed" in params:
        return {"variant": params["variant"], "seed": int(params["seed"])}
    return None


def replaced_trials(trials) -> set[int]:
    """Numbers of the failed trials that a later trial continues."""
    return {t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs}


def _enqueue_missing_cells(study, spec: SweepSpec) -> int:
    """Queue each grid cell that has no trial waiting, running or complete (new cells, cells whose trials
    all failed). Two workers starting at once may both queue a cell: the second to take it skips it."""
    S = trial_states()
    present = set()
    for t in study.get_trials(deepcopy=False):
        cell = trial_cell(t)
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


class Requeue:
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
def storage_of(study):
    return study._storage


def trial_id_of(trial) -> int:
    return trial._trial_id


def stale_trial_ids(study) -> set[int] | None:
    """Ids of the study's running trials whose heartbeat is older than the grace period (None: unknown)."""
    storage = storage_of(study)
    try:
        return set(storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)))
    except Exception:  # noqa: BLE001 - a storage without heartbeats, or another Optuna: say nothing
        return None


def frozen_trial(study, trial):
    """``trial`` as stored now, its queued parameters included."""
    return storage_of(study).get_trial(trial_id_of(trial))


def _in_rows(trial, variants: frozenset[str] | None) -> bool:
    """Whether ``trial`` (frozen) is a cell of one of ``variants`` (None: of any row)."""
    if variants is None:
        return True
    cell = trial_cell(trial)
    return cell is not None and cell["variant"] in variants


def _pop_waiting(study, variants: frozenset[str] | None = None):
    """Take a queued trial (atomically: a trial another worker took first is skipped), or None. With
    ``variants``, only a cell of those grid rows."""
    optuna = import_optuna()
    storage, S = storage_of(study), trial_states()
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
    S = trial_states()
    for t in study.get_trials(deepcopy=False):
        if t.number == number or trial_cell(t) != cell:
            continue
        if t.state == S.COMPLETE or (t.state in (S.RUNNING, S.WAITING) and t.number < number):
            return t.number
    return None


def _counted(study) -> int:
    """Trials that count towards a search's ``trials``: all but the failures a continuation replaced."""
    trials = study.get_trials(deepcopy=False)
    replaced = replaced_trials(trials)
    return sum(1 for t in trials if t.number not in replaced and "duplicate_of" not in t.user_attrs)


def _take(study, spec: SweepSpec, variants: frozenset[str] | None = None):
    """The next trial for this worker, or None: a queued one (grid cells, continuations, start points; with
    ``variants``, cells of those rows only), else, in a search that has not reached its number of trials,
    TPE's next."""
    if spec.kind == "grid":
        while (trial := _pop_waiting(study, variants)) is not None:
            storage_of(study).record_heartbeat(trial_id_of(trial))  # from now on a dead worker's trial is stale
            cell = trial_cell(frozen_trial(study, trial))
            dup = _duplicate_of(study, trial.number, cell) if cell else None
            if dup is None:
                return trial
            trial.set_user_attr("duplicate_of", dup)
            study.tell(trial, state=trial_states().FAIL)
        return None
    if study.get_trials(deepcopy=False, states=(trial_states().WAITING,)) or _counted(study) < spec.trials:
        study.sampler = _tpe(spec, len(study.get_trials(deepcopy=False)))
        trial = study.ask()  # a queued trial first (a continuation, a start point), else TPE's next
        storage_of(study).record_heartbeat(trial_id_of(trial))
        for param in spec.params:  # drawn now, under the lock: the next worker's TPE sees this running point
            param.suggest(trial)
        return trial
    return None


@contextlib.contextmanager
def _one_taker(study):
    """Workers take trials one at a time where the study is an SQLite file: Python's sqlite3 reads outside a
    transaction, so two workers could both see a queued trial waiting and both take it (each then trains
    it). An exclusive lock on ``FILE.lock`` beside the database serialises the taking; PostgreSQL and MySQL
    lock the trial's row themselves."""
    storage = storage_of(study)
    url = str(getattr(getattr(storage, "_backend", storage), "url", ""))
    if fcntl is None or not url.startswith("sqlite:///"):
        yield
        return
    with open(Path(url[len("sqlite:///") :]).with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def next_trial(
    study, spec: SweepSpec, log: Callable[[str], None], stop: StopSignals, variants: frozenset[str] | None = None
):
    """The next trial, or None when the study is finished (or ``stop`` received a signal). While nothing is
    left to take but other workers' trials still run, wait: a worker that dies leaves its trial stale after
    the grace period, and this worker takes it over (:class:`Requeue` queues the continuation). With
    ``variants``, finished means: no cell of those rows waits or runs."""
    waiting_said = False
    while stop.received is None:
        with _one_taker(study):
            import_optuna().storages.fail_stale_trials(study)
            trial = _take(study, spec, variants)
        if trial is not None:
            return trial
        running = [
            t for t in study.get_trials(deepcopy=False, states=(trial_states().RUNNING,)) if _in_rows(t, variants)
        ]
        if not running:
            if variants is not None:
                others = study.get_trials(deepcopy=False, states=(trial_states().WAITING, trial_states().RUNNING))
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


def open_and_queue(spec: SweepSpec, url: str | None):
    """The study, with the grid's missing cells (or the search's start points) queued."""
    study = open_study(spec, url)
    if spec.kind == "grid":
        _enqueue_missing_cells(study, spec)
    else:
        _enqueue_start_points(study, spec)
    return study


def error_line(e: BaseException) -> str:
    """The error a trial records: ``"ValueError: its text"`` on one line (the type's name where it has none)."""
    name = type(e).__name__
    return f"{name}: {one_line(e, limit=498 - len(name))}" if str(e).strip() else name
