"""Writes docs/runs/README.md, the index of the run logs in docs/runs, from the files themselves.

    python docs/make_runs_index.py            # rewrite docs/runs/README.md
    python docs/make_runs_index.py --check    # exit 1, with one line, when the index is out of date

A run is every file sharing a stem: ``NAME.log`` (the command's output), ``NAME-config.json``,
``NAME-metrics.csv`` and, for the runs of the ablation script of issue 11, a summary ``NAME.json``. Accuracy and
training seconds are read from the summary where there is one, else from the last row of the metrics,
else from the log. Standard library only: no torch, no package import.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "runs"
INDEX = RUNS / "README.md"
SUFFIXES = {"-config.json": "config", "-metrics.csv": "metrics", ".json": "summary", ".log": "log"}
LINK_ORDER = ("log", "config", "metrics", "summary")
REFERENCE = "fast-cpu-run5"  # the previous preset as it shipped: what the older runs are compared with

# (title, which stems (the alternatives in the order of the table), what the group is), in the order of the page
GROUPS = [
    (
        "Issue 11: the ablation and the shipped `fast-cpu` preset",
        ["ablation-.+"],
        (
            "2 cores of an Intel Xeon with AMX, PyTorch 2.13.0 (CPU build), one run after another on the otherwise "
            "idle machine. Each run was `python benchmarks/ablation.py --data ../shared/data/cifar100-train.npz "
            "VARIANT --seeds S` (a script since replaced by the sweep file "
            "[docs/sweeps/ablation.toml](../sweeps/ablation.toml), whose cells are these configurations): the "
            "recipe before issue 11 (the file's `[base]`: `fast_small`, fp32, full TTA after every epoch, 17 "
            "epochs) plus the changes shown; `shipped` is `--preset fast-cpu`. The "
            "story: [ablation.md](ablation.md); the table and what it means: "
            "[docs/performance.md](../performance.md)."
        ),
    ),
    (
        "Before issue 11: `fast_small` in fp32 on an AMD EPYC",
        ["fast-cpu-run\\d+", "tune6-.+", "explore-.+"],
        (
            f"2 cores of an AMD EPYC (AVX2, no AVX-512): the runs behind the previous `fast-cpu` preset, told in "
            f"[fast-small-fp32.md](fast-small-fp32.md). *What* lists the configuration fields that differ from "
            f"`{REFERENCE}`, that preset as it shipped (Muon 0.1 with momentum 0.6 for the hidden filters, Nesterov "
            f"SGD 2.0 for the rest, flip and 1 px translate TTA, 17 epochs of batch 512); a field a config lacks "
            f"did not exist yet (runs 1-4: Nesterov SGD for everything, flip TTA only)."
        ),
    ),
    (
        "The main job before and after the restructuring",
        ["refactor-parity-before", "refactor-parity-after"],
        (
            "The main job of the time (`fast_small` in fp32, seed 0), run before and after the package was "
            "restructured (commit ff4be2e): the 17 epoch lines are identical. Logs only, so the time shown is the "
            "log's `done in` (training with its evaluations), not training seconds. The calibration and export "
            "figures of [docs/serving.md](../serving.md) come from this run."
        ),
    ),
    (
        "The main job before and after the readable loop (issue 16)",
        ["readable-loop-before", "readable-loop-after"],
        (
            "The README's main job (`--preset fast-cpu`, seed 0) on 2 cores of an AMD EPYC (Zen 4: AVX-512 with "
            "bf16 instructions, no AMX, so `--precision auto` trains in fp32), run at commit 0b92596 (before) and "
            "34bc8f6 (after `fit` was rewritten as epoch -> step -> checks -> save, with option groups, one "
            "precision setting and a typed checkpoint). Both were stopped by SIGTERM when the session's time ran "
            "out, after 10 of the 17 epochs (the before run's log shows its clean stop at epoch 11); those 10 epoch "
            "lines, the first line and metrics.csv's loss and accuracy columns are identical. The two ran side by "
            "side with the test suite on the same two cores, so their times say nothing about speed."
        ),
    ),
    (
        "Issue 17: the main job under a training-time budget",
        ["budget-main-job-.+", "main-job-precision-.+", "budget-progressive-.+"],
        (
            "2 cores (or 1 thread, `-1t`) of an AMD EPYC (Zen 4: AVX-512 with bf16 instructions, no AMX), "
            "PyTorch 2.13.0 (CPU build), one run after another on the otherwise idle machine. The main job trained "
            "in fp32 there until `--precision auto` learned to choose bf16 on CPUs with AVX512_BF16: "
            "`budget-main-job-bf16-2t` is the README's main job since then (bf16, 11 epochs planned), "
            "`main-job-precision-bf16-2t` the main job with `--precision bf16` just before (12 planned; later epochs "
            "ran slower than measured, see docs/performance.md); `budget-progressive-*` the main job in fp32 with "
            "`--progressive 16:0.5,24:0.3`. *Training s* excludes the evaluations; the budget includes them."
        ),
    ),
    (
        "Issue 17: a plan that fills the budget (a full-size epoch moved to a lower size)",
        ["planner-.+"],
        (
            "The same 2 cores of an AMD EPYC (Zen 4), a later session, one run after another on the otherwise idle "
            "machine, whose measured steps came out slower than the session before (bf16: 0.351-0.386 s at "
            "16 px, 0.73-0.78 at 24, 1.28-1.31 at 32, against 0.346, 0.605, 1.2; fp32: 0.554, 1.26, 2.19 against "
            "0.446, 1.07, 1.92). `planner-first-rule-*` ran with the planner's first rule (the most epochs, with "
            "one full-size epoch moved to 16 or 24 px where the recipe's split did not fit): the main job "
            "(bf16: 11 epochs, 3/4/4 at 16/24/32 px) and the main job with `--precision fp32` (7 epochs at 3/2/2, "
            "less training than 6 at 2/1/3 would have been: the rule was changed to the longest predicted time that "
            "fits). `planner-fill-no-headroom-main-job-bf16-2t`: the main job with that rule (10 epochs, 2/3/5), "
            "which trained 6% longer than predicted (15m 37s against 14m 41s), so the plan then kept 3% spare: "
            "`planner-headroom-3pct-main-job-bf16-2t` (12 epochs, 3/3/6) trained 10% longer than predicted "
            "(15m 47s against 14m 18s), so a step's time became the mean of 5 timed steps (was the median of 3) "
            "and the headroom 5%. `planner-main-job-bf16-2t` is the README's main job with all of these."
        ),
    ),
    (
        "Issue 17: fp32 recipes tried",
        ["fp32-recipe-.+"],
        (
            "The same 2 cores of an AMD EPYC (Zen 4), a third session, fp32 (`--precision fp32`), one run after "
            "another on the otherwise idle machine. `fp32-recipe-fast-2t-15m` (seeds 0, 1, 2): "
            "`python benchmarks/budget.py --budgets 15 --precision fp32 --seed N` before `fast-cpu` had an fp32 "
            "recipe, i.e. the `fast` net and the bf16 recipe's resizing (7 epochs). `fp32-recipe-w48-192-*`: the "
            "main job with a narrower net, `--model-kwargs '{\"widths\": [48, 192, 192]}'` (0.58x the FLOPs "
            "of 64/256/256), with `--progressive 16:0.5,24:0.3` (`-lowres`, seeds 0, 1, 2: 15-16 epochs; this "
            "became the `fast-cpu-fp32` preset) or with `--batch-size 256` (`-b256`: twice the steps an epoch; "
            '9 epochs). Each log\'s first line is its command; see docs/performance.md, "A recipe for fp32".'
        ),
    ),
    (
        "Issue 17: the main job over three seeds, and the budget figure",
        ["budget-fp32-.+", "budget-bf16-.+"],
        (
            "`python benchmarks/budget.py --data ../shared/data/cifar100-train.npz --budgets N --precision P "
            "--seed S [--threads 1]` (`train --preset fast-cpu --budget Nm --epochs 100`), on 2 cores (or 1 "
            "thread, `-1t`) of the AMD EPYC (Zen 4). `budget-bf16-2t-15m-seed1/2` are the main job in bf16 "
            "(its seed 0 is `planner-main-job-bf16-2t`); `budget-fp32-1t-15m` is the main job in fp32 on one "
            "thread, from `fast-cpu-fp32`; `budget-fp32-2t-2m/5m/10m` are from the session before (the `fast` net, "
            "the planner before it filled the budget). Each `.json` is budget.py's summary of its run."
        ),
    ),
    (
        "Issue 17: on a Zen 5",
        ["main-job-zen5-.+", "zen5-.+"],
        (
            "2 cores of an AMD EPYC (Zen 5, family 26 model 2: AVX-512 with bf16 instructions, no AMX), PyTorch "
            "2.13.0 (CPU build), a fourth session, one run after another on the otherwise idle machine. "
            "`main-job-zen5-bf16-2t`: the README's main job from a fresh clone, as written (5% spare, 16 epochs); "
            "`zen5-fp32-recipe-2t` (seeds 0, 1, 2): `--precision fp32`, i.e. `fast-cpu-fp32` when it stopped at "
            "17 epochs; `zen5-budget-fp32-2t-15m`: the same through `benchmarks/budget.py --epochs 100` (25 "
            "epochs); `zen5-fp32-recipe30-2t` (seeds 0, 1, 2): `fast-cpu-fp32` as it is now (up to 30 epochs, "
            "10% spare, freed memory kept); `zen5-main-job-2t`: the main job as it is now. Each log's first line is "
            "its command (the main job's was run as `cifar-resnet`), the last its peak memory and page faults where "
            "recorded; each `.json` is the summary budget.py's table reads."
        ),
    ),
    (
        "On a Zen 3: the main job without AVX-512 or bf16 instructions",
        ["zen3-.+"],
        (
            "2 cores of an AMD EPYC (Zen 3, family 25 model 1: AVX2 only, no AVX-512, no bf16 instructions), "
            "PyTorch 2.13.0 (CPU build), a fifth session, one run after another on the otherwise idle machine. "
            "`zen3-main-job-2t`: the README's main job from a fresh clone, exactly as written (it trains "
            "`fast-cpu-fp32` here: no bf16 instructions); `zen3-main-job-2t-seed1`, `-seed2`: the same command "
            "with `--seed N`; `zen3-fp32-w32-128-2t`: the same with `--model-kwargs '{\"widths\": [32, 128, 128]}'` "
            "(seed 0). Each log's first line is its command, the last the wall time; each `.json` is the "
            "summary budget.py's table reads."
        ),
    ),
]


def _stem(name: str) -> tuple[str, str] | None:
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return None


def runs(folder: Path = RUNS) -> dict[str, dict[str, Path]]:
    """stem -> {kind: path} for every run file in the folder."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        parsed = _stem(path.name)
        if parsed:
            found.setdefault(parsed[0], {})[parsed[1]] = path
    return found


def _ablation_order() -> list[str]:
    """The variants in the order the sweep file docs/sweeps/ablation.toml lists them."""
    path = ROOT / "docs" / "sweeps" / "ablation.toml"
    if not path.exists():
        return []
    return list(tomllib.loads(path.read_text()).get("grid", {}).get("variants", {}))


def _summary(files: dict[str, Path], reference: dict) -> dict:
    """What the table shows of one run: what, model, precision, seed, epochs, top-1, training s."""
    summary = json.loads(files["summary"].read_text()) if "summary" in files else {}
    config = json.loads(files["config"].read_text()) if "config" in files else {}
    log = files["log"].read_text().splitlines() if "log" in files else []
    rows = list(csv.DictReader(files["metrics"].open())) if "metrics" in files else []
    epochs = [re.match(r"Epoch (\d+), .*val_acc: ([0-9.]+)", line) for line in log]
    epochs = [(int(m[1]), float(m[2])) for m in epochs if m]
    first = log[0] if log else ""
    model = config.get("model") or (first.split(" ", 1)[0] if first else "")
    if config.get("model_kwargs"):
        model += " " + json.dumps(config["model_kwargs"])

    if "budget_min" in summary and not summary["fits"]:  # benchmarks/budget.py, a budget too small
        what = (
            f"`--budget {summary['budget_min']:g}m`: refused, "
            + summary["message"].split(": ", 3)[-1].split(" after")[0]
        )
    elif "budget_min" in summary:  # benchmarks/budget.py
        what = f"`--budget {summary['budget_min']:g}m`: {summary['epochs']} epochs planned"
    elif summary:
        what = f"`{summary['name']}`: " + (
            ", ".join(f"{k}={v}" for k, v in summary["changes"].items()) or "the recipe before issue 11"
        )
    elif config and reference:
        diff = [f"{k}={v}" for k, v in config.items() if k != "seed" and k in reference and reference[k] != v]
        missing = [k for k in reference if k not in config]
        what = ", ".join(diff + ([f"no {'/'.join(missing)}"] if missing else [])) or "the preset as it shipped"
    else:
        done = next((line for line in log if line.startswith("done in")), "")
        what = f"log only: {done.split(';')[0]}" if done else "log only"

    if summary and rows:
        top1, seconds = summary["val_top1"], float(rows[-1]["train_seconds"])
    elif summary:
        top1, seconds = summary.get("val_top1"), summary.get("train_seconds")
    elif rows:
        top1, seconds = float(rows[-1]["val_top1"]), float(rows[-1]["train_seconds"])
    else:
        top1, seconds = (epochs[-1][1] if epochs else None), None
    n_epochs = len(rows) or len(epochs)
    return {
        "what": what,
        "model": f"`{model}`" if model else "",
        "precision": "bf16" if "(bf16)" in first else "fp32",
        "seed": str(summary.get("seed", config.get("seed", ""))),
        "epochs": str(n_epochs) if n_epochs else "",
        "top1": f"{100 * top1:.2f}%" if top1 is not None else "",
        "seconds": f"{seconds:,.0f}" if seconds is not None else "",
    }


def _wrap(text: str, width: int = 110) -> list[str]:
    """Wrapped lines, never breaking inside a `code span`."""
    protected = re.sub(r"`[^`]*`", lambda m: m[0].replace(" ", "\0"), text)
    lines = textwrap.wrap(protected, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def _links(files: dict[str, Path]) -> str:
    return ", ".join(f"[{kind}]({files[kind].name})" for kind in LINK_ORDER if kind in files)


def render(folder: Path = RUNS) -> str:
    found = runs(folder)
    ref_path = found.get(REFERENCE, {}).get("config")
    reference = json.loads(ref_path.read_text()) if ref_path else {}
    order = _ablation_order()

    def key(patterns: list[str], stem: str):
        alternative = next(i for i, p in enumerate(patterns) if re.fullmatch(p, stem))
        variant = re.sub(r"^ablation-|-seed\d+$", "", stem)
        natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]
        return alternative, order.index(variant) if variant in order else len(order), natural

    out = [
        "# Run logs",
        "",
        "<!-- Generated by `python docs/make_runs_index.py` from the files of this folder; do not edit by hand. -->",
        "",
        "Every training run this project quotes, one line per run: the log (the command's output), the run's",
        "`config.json` and `metrics.csv` (per epoch), and for the ablation a summary `.json`. *Val top-1* is the",
        "last epoch's accuracy on the 5,000 images held out from the real CIFAR-100 training split (validation,",
        "never test), with the run's full test-time augmentation; *training s* is the sum of the epochs'",
        "training loops (`train_seconds`), evaluation excluded. Compare times within one group only: the CPU",
        "changed between sessions.",
        "",
    ]
    seen: set[str] = set()
    for title, patterns, intro in GROUPS:
        stems = sorted(
            (s for s in found if any(re.fullmatch(p, s) for p in patterns)), key=lambda stem: key(patterns, stem)
        )
        if not stems:
            continue
        seen.update(stems)
        out += [
            f"## {title}",
            "",
            *_wrap(intro),
            "",
            "| run | what | model | precision | seed | epochs | val top-1 | training s | files |",
            "| --- | --- | --- | --- | --- | --- | ---: | ---: | --- |",
        ]
        for stem in stems:
            s = _summary(found[stem], reference)
            out.append(
                f"| {stem} | {s['what']} | {s['model']} | {s['precision']} | {s['seed']} | {s['epochs']} | "
                f"{s['top1']} | {s['seconds']} | {_links(found[stem])} |"
            )
        out.append("")
    others = sorted(set(found) - seen)
    if others:
        out += ["## Other runs", "", "| run | files |", "| --- | --- |"]
        out += [f"| {stem} | {_links(found[stem])} |" for stem in others] + [""]
    notes = sorted(p for p in folder.glob("*.md") if p.name != "README.md")
    if notes:
        out += ["## Notes", ""]
        for p in notes:
            heading = next(
                (line.lstrip("# ").strip() for line in p.read_text().splitlines() if line.startswith("#")), p.stem
            )
            out.append(f"- [{p.name}]({p.name}): {heading}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/runs/README.md, the index of the run logs.")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the index differs")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not INDEX.exists() or INDEX.read_text() != text:
            print(
                "docs/runs/README.md is out of date with docs/runs: run python docs/make_runs_index.py", file=sys.stderr
            )
            return 1
        return 0
    INDEX.write_text(text)
    print(f"wrote {INDEX.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
