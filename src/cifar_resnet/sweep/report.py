"""A sweep's report: for a grid, one row per variant (mean ± sd over seeds, the difference from the baseline
with its standard error, training seconds and peak memory, the machines); for a search, the best trials and
the parameters' importances and every finished trial; the trials running or failed; ``report.md``,
``report.json`` and figures."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..plots import plot_search_curves, plot_search_history, plot_sweep_variants
from .spec import SweepSpec
from .study import (
    error_line,
    import_optuna,
    open_study,
    replaced_trials,
    stale_trial_ids,
    trial_cell,
    trial_id_of,
    trial_states,
)

__all__ = ["report"]


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
    trials = [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]
    complete = [t for t in trials if t.state == trial_states().COMPLETE]
    result, lines = _summary(study, spec, trials, complete)
    if spec.kind == "grid":
        lines += _grid_section(spec, complete, result, out_dir)
    else:
        lines += _search_section(study, spec, trials, result, out_dir)
    result["markdown"] = "\n".join(lines).rstrip() + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.md", result["markdown"])
    atomic_write_text(
        out_dir / "report.json",
        json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1, default=str) + "\n",
    )
    return result


def _summary(study, spec: SweepSpec, trials: list, complete: list) -> tuple[dict[str, Any], list[str]]:
    """The report's head: trial counts, the machines, the failed and the running trials (as data and as
    the first lines of the markdown)."""
    S = trial_states()
    replaced = replaced_trials(trials)
    counts = {
        state: sum(1 for t in trials if t.state.name.lower() == state and t.number not in replaced)
        for state in ("complete", "pruned", "running", "waiting", "fail")
    }
    result: dict[str, Any] = {"study": spec.name, "kind": spec.kind, "trials": counts, "cpu": None}
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
    stale = stale_trial_ids(study) if running else set()
    result["running"] = [_running(t, stale, spec.grace) for t in running]
    lines += [f"- trial {r['number']} running: {r['text']}" for r in result["running"]]
    return result, [*lines, ""]


def _grid_section(spec: SweepSpec, complete: list, result: dict, out_dir: Path) -> list[str]:
    """A grid's table and figure (``accuracy.png``); sets ``result``'s ``rows`` and ``figures``."""
    rows = _grid_rows(spec, complete)
    result["rows"] = rows
    lines = _grid_table(spec, rows, result["machines"])
    figures = []
    ran = [r for r in rows if r["n"]]
    if ran:
        plot_sweep_variants(
            [(r["variant"], r["val_top1"], r["val_top1_sd"], r["n"]) for r in ran],
            baseline=spec.baseline,
            title=f"{spec.name}: validation top-1 over seeds (mean ± sd)",
            path=out_dir / "accuracy.png",
        )
        figures.append(str(out_dir / "accuracy.png"))
    result["figures"] = figures
    return lines


def _search_section(study, spec: SweepSpec, trials: list, result: dict, out_dir: Path) -> list[str]:
    """A search's best trials, importances, every finished trial, and figures (``history.png``, ``curves.png``);
    sets ``result``'s ``best``, ``importances``, ``trials_table`` and ``figures``."""
    S = trial_states()
    complete = [t for t in trials if t.state == S.COMPLETE]
    finished = sorted((t for t in trials if t.state in (S.COMPLETE, S.PRUNED)), key=lambda t: t.number)
    best, importances = _search_results(study, spec, complete)
    result["best"], result["importances"] = best, importances
    result["trials_table"] = [_trial_row(t) for t in finished]
    names = [p.name for p in spec.params]
    lines = _search_table(best, importances, names, len(complete))
    result["foretelling"] = foretelling(complete)
    lines += _foretelling_lines(result["foretelling"], len(complete), spec)
    lines += ["", f"## Every finished trial ({len(finished)})", "", *_rows_table(result["trials_table"], names)]
    figures = []
    if finished:
        plot_search_history(
            [t.number for t in finished],
            [_last_value(t) for t in finished],
            [t.state.name.lower() for t in finished],
            title=f"{spec.name}: validation top-1 by trial",
            path=out_dir / "history.png",
        )
        plot_search_curves(
            [dict(t.intermediate_values) for t in finished],
            [t.state.name.lower() for t in finished],
            title=f"{spec.name}: validation top-1 at each tenth of the schedule",
            path=out_dir / "curves.png",
        )
        figures += [str(out_dir / "history.png"), str(out_dir / "curves.png")]
    result["figures"] = figures
    return lines


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of ``values``, ties given their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def foretelling(complete) -> dict[int, float | None]:
    """For each tenth of the schedule (1-9): Spearman's rank correlation, over the complete trials, between a
    trial's validation top-1 reported at that tenth and its final value; None with fewer than 3 trials or no
    spread. Near 1 at tenth t: a pruner stopping trials from t on keeps the ones that end best."""
    out: dict[int, float | None] = {}
    for tenth in range(1, 10):
        pairs = [(t.intermediate_values[tenth], t.value) for t in complete if tenth in t.intermediate_values]
        out[tenth] = None
        if len(pairs) >= 3:
            a, b = _ranks([p[0] for p in pairs]), _ranks([p[1] for p in pairs])
            ma, mb = statistics.fmean(a), statistics.fmean(b)
            sa = math.sqrt(sum((x - ma) ** 2 for x in a))
            sb = math.sqrt(sum((y - mb) ** 2 for y in b))
            if sa > 0 and sb > 0:
                out[tenth] = sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb)
    return out


def _foretelling_lines(rho: dict[int, float | None], n_complete: int, spec: SweepSpec) -> list[str]:
    if not any(v is not None for v in rho.values()):
        return []
    judged = "no pruner" if spec.pruner == "none" else f"the pruner judges from tenth {max(1, spec.warmup_tenths)} on"
    head = (
        "How well a trial's top-1 at each tenth of its schedule foretells its final top-1 (Spearman's rank "
        f"correlation over the {n_complete} complete trials; {judged}):"
    )
    return [
        "",
        head,
        "",
        "| tenth | " + " | ".join(str(t) for t in rho) + " |",
        "| --- " * (1 + len(rho)) + "|",
        "| ρ | " + " | ".join("" if v is None else f"{v:.2f}" for v in rho.values()) + " |",
    ]


def _trial_row(trial) -> dict:
    """A finished trial as a row: its value (a pruned trial's last report, and at which tenth)."""
    steps = trial.intermediate_values
    complete = trial.state.name == "COMPLETE"
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "val_top1": _last_value(trial),
        "at": "end" if complete else (f"tenth {max(steps)}" if steps else "start"),
        "epochs": trial.user_attrs.get("epochs", trial.user_attrs.get("epochs_done")),
        "params": trial.params,
    }


def _short(name: str) -> str:
    return name.removeprefix("model_kwargs.")


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rows_table(rows: list[dict], names: list[str]) -> list[str]:
    """Every finished trial, one column a parameter."""
    lines = [
        "| trial | state | val top-1 % | at | epochs | " + " | ".join(map(_short, names)) + " |",
        "| --- " * (5 + len(names)) + "|",
    ]
    for r in rows:
        cells = [str(r["trial"]), r["state"], f"{r['val_top1'] * 100:.2f}", r["at"], str(r["epochs"] or "")]
        lines.append("| " + " | ".join(cells + [_value(r["params"].get(n, "")) for n in names]) + " |")
    return lines


def _running(trial, stale: set[int] | None, grace: int) -> dict:
    """Where a running trial is: its cell, worker, machine, epochs done and last validation top-1, and whether
    its worker has stopped sending heartbeats (the next worker to look takes it over)."""
    attrs = trial.user_attrs
    cell = trial_cell(trial)
    searched = ", ".join(f"{_short(k)}={_value(v)}" for k, v in trial.params.items())
    label = f"{cell['variant']}/seed{cell['seed']}" if cell else searched
    epochs = attrs.get("epochs_done", 0)
    info = {
        "number": trial.number,
        "cell": label,
        "worker": attrs.get("worker", ""),
        "machine": _machine_of(trial),
        "epochs_done": epochs,
        "val_top1": _last_value(trial) if epochs else None,
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "stale": None if stale is None else trial_id_of(trial) in stale,
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
    """The machine a finished trial ran on (a trial without a "machine" attribute names its CPU)."""
    return trial.user_attrs.get("machine") or trial.user_attrs.get("cpu", "")


def _grid_rows(spec: SweepSpec, complete) -> list[dict]:
    by_variant: dict[str, dict[int, Any]] = {v: {} for v in spec.variants}
    for t in complete:
        cell = trial_cell(t)
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
            importances = dict(import_optuna().importance.get_param_importances(study))
        except (RuntimeError, ValueError, ImportError) as e:  # too few distinct trials to rank parameters
            importances = {"(not computed)": error_line(e)}
    return rows, importances


def _search_table(best: list[dict], importances: dict, names: list[str], n_complete: int) -> list[str]:
    """The best complete trials, one column a parameter, and the parameters' importances."""
    lines = [
        f"## The best complete trials ({len(best)} of {n_complete})",
        "",
        "| trial | val top-1 % | val top-5 % | epochs | training s | " + " | ".join(map(_short, names)) + " |",
        "| --- " * (5 + len(names)) + "|",
    ]
    for r in best:
        top5 = "" if r["val_top5"] is None else f"{r['val_top5'] * 100:.2f}"
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        cells = [str(r["trial"]), f"{r['val_top1'] * 100:.2f}", top5, str(r["epochs"]), secs]
        lines.append("| " + " | ".join(cells + [_value(r["params"].get(n, "")) for n in names]) + " |")
    if importances:
        head = (
            f"Parameter importances (Optuna's fANOVA over the {n_complete} complete trials; pruned ones are left "
            "out, so a parameter that only decides which trials get pruned ranks low):"
        )
        lines += ["", head, ""]
        lines += [
            f"- {_short(k)}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
            for k, v in sorted(importances.items(), key=lambda kv: -kv[1] if isinstance(kv[1], float) else 0)
        ]
    return lines
