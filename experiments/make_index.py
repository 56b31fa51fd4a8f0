"""Writes experiments/README.md, the index of the experiments, from the experiment folders themselves.

    python experiments/make_index.py            # rewrite experiments/README.md
    python experiments/make_index.py --check    # exit 1, with one line, when the index is out of date

An experiment is a folder of experiments/ with a README.md whose first line is its claim (a Markdown
heading: the figure, the machine, the command). The index lists each folder with that line, then one table
per folder of the training runs it holds: every set of files sharing a stem, ``NAME.log`` (the command's
output), ``NAME-config.json``, ``NAME-metrics.csv`` and a summary ``NAME.json`` (written by
``benchmarks/budget.py``, ``benchmarks/budget_replan.py`` or ``benchmarks/fine_tune.py``, or by the
ablation script the sweep replaced). Accuracy and training seconds are read from the summary where there
is one, else from the last row of the metrics, else from the log.
Standard library only: no torch, no package import.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
INDEX = EXPERIMENTS / "README.md"
SUFFIXES = {"-config.json": "config", "-metrics.csv": "metrics", ".json": "summary", ".log": "log"}
LINK_ORDER = ("log", "config", "metrics", "summary")
RUN_KINDS = {"log", "config", "metrics"}  # a stem with none of these (report.json) is not a run
REFERENCE = "fast-cpu-run5"  # in fast-small-fp32/: the older runs are described by how they differ from it


def claim(folder: Path) -> str:
    """The first line of the experiment's README, without its heading marks."""
    lines = (folder / "README.md").read_text().splitlines()
    return lines[0].lstrip("#").strip() if lines else ""


def experiments(root: Path = EXPERIMENTS) -> list[Path]:
    """The experiment folders: every folder of ``root`` with a README.md, by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "README.md").is_file())


def _stem(name: str) -> tuple[str, str] | None:
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return None


def runs(folder: Path) -> dict[str, dict[str, Path]]:
    """stem -> {kind: path} for every run in the folder and its subfolders (a sweep's study/)."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.rglob("*")):
        parsed = _stem(path.name) if path.is_file() else None
        if parsed:
            key = str(path.parent.relative_to(folder) / parsed[0])
            found.setdefault(key, {})[parsed[1]] = path
    return {stem: files for stem, files in found.items() if RUN_KINDS & files.keys()}


def _summary(files: dict[str, Path], reference: dict) -> dict:
    """What the table shows of one run: what, model, precision, seed, epochs, top-1, training s."""
    summary = json.loads(files["summary"].read_text()) if "summary" in files else {}
    config = json.loads(files["config"].read_text()) if "config" in files else {}
    log = files["log"].read_text().splitlines() if "log" in files else []
    rows = list(csv.DictReader(files["metrics"].open())) if "metrics" in files else []
    epochs = [re.match(r"Epoch (\d+), .*val_acc: ([0-9.]+)", line) for line in log]
    epochs = [(int(m[1]), float(m[2])) for m in epochs if m]
    trial = re.match(r"(\S+)/seed(\d+): starting", log[0]) if log else None  # a sweep's trial
    first = log[1] if trial and len(log) > 1 else (log[0] if log else "")
    # the model: from the config, else the log's announcement ("fast (1,130,592 parameters) on cpu ...")
    announced = next((m[1] for m in (re.match(r"(\S+) \([\d,]+ parameters\)", line) for line in log) if m), "")
    model = config.get("model") or announced or (first.split(" ", 1)[0] if first else "")
    if config.get("model_kwargs"):
        model += " " + json.dumps(config["model_kwargs"])

    if "budget_min" in summary and not summary["fits"]:  # benchmarks/budget.py, a budget too small
        what = (
            f"`--budget {summary['budget_min']:g}m`: refused, "
            + summary["message"].split(": ", 3)[-1].split(" after")[0]
        )
    elif "budget_min" in summary:  # benchmarks/budget.py
        what = f"`--budget {summary['budget_min']:g}m`: {summary['epochs']} epochs planned"
    elif "condition" in summary:  # benchmarks/budget_replan.py
        what = (
            f"{summary['condition']}, {summary['checkout']}: {100 * summary['used_share']:.1f}% of the "
            f"{summary['budget_s'] / 60:g}-minute budget used"
        )
    elif "init" in summary:  # benchmarks/fine_tune.py
        what = f"fine-tuned from `{Path(summary['init']).name}`" if summary["init"] else "from scratch"
        what += f", `--budget {summary['budget']}`"
    elif summary:
        what = f"`{summary['name']}`: " + (
            ", ".join(f"{k}={v}" for k, v in summary["changes"].items()) or "the recipe the ablation starts from"
        )
    elif trial:
        what = f"variant `{trial[1]}`"
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
    seed = summary.get("seed", config.get("seed", trial[2] if trial else ""))
    return {
        "what": what,
        "model": f"`{model}`" if model else "",
        "precision": "bf16" if "(bf16)" in first else "fp32",
        "seed": str(seed),
        "epochs": str(n_epochs) if n_epochs else "",
        "top1": f"{100 * top1:.2f}%" if top1 is not None else "",
        "seconds": f"{seconds:,.0f}" if seconds is not None else "",
    }


def _links(files: dict[str, Path], folder: Path) -> str:
    return ", ".join(
        f"[{kind}]({files[kind].relative_to(EXPERIMENTS).as_posix()})" for kind in LINK_ORDER if kind in files
    )


def _natural(stem: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def render(root: Path = EXPERIMENTS) -> str:
    folders = experiments(root)
    out = [
        "# Experiments",
        "",
        "<!-- Generated by `python experiments/make_index.py` from the experiment folders; do not edit by hand. -->",
        "",
        "The evidence behind every figure of the README and the guide: one folder per experiment, each with the",
        "command, the configurations, the logs, the per-epoch metrics, the report or figure, and a README whose",
        "first line is the claim (listed here) and whose body tells how it was found. Accuracy is validation",
        "top-1: the last epoch's accuracy on the 5,000 images held out from the real CIFAR-100 training split",
        "(never the test split), with the run's test-time augmentation. *Training s* is the sum of the epochs'",
        "training loops (`train_seconds`), evaluation excluded. Times compare only within one CPU model.",
        "",
        "| experiment | claim |",
        "| --- | --- |",
    ]
    out += [f"| [{f.name}]({f.name}/README.md) | {claim(f)} |" for f in folders]
    out.append("")
    for folder in folders:
        found = runs(folder)
        if not found:
            continue
        ref_path = found.get(REFERENCE, {}).get("config")
        reference = json.loads(ref_path.read_text()) if ref_path else {}
        out += [
            f"## Runs of [{folder.name}]({folder.name}/README.md)",
            "",
            "| run | what | model | precision | seed | epochs | val top-1 | training s | files |",
            "| --- | --- | --- | --- | --- | --- | ---: | ---: | --- |",
        ]
        for stem in sorted(found, key=_natural):
            s = _summary(found[stem], reference)
            out.append(
                f"| {Path(stem).name} | {s['what']} | {s['model']} | {s['precision']} | {s['seed']} | "
                f"{s['epochs']} | {s['top1']} | {s['seconds']} | {_links(found[stem], folder)} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write experiments/README.md, the index of the experiments.")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the index differs")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not INDEX.exists() or INDEX.read_text() != text:
            print("experiments/README.md is out of date: run python experiments/make_index.py", file=sys.stderr)
            return 1
        return 0
    INDEX.write_text(text)
    print(f"wrote {INDEX.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
