"""Sweeps on Optuna: a grid of variants x seeds, or a search over ranges, shared by any number of workers.

The study lives in a storage (SQLite by default); every ``cifar-resnet sweep run FILE`` on the same storage,
on this machine or others, is a worker that takes the next cell or trial from it. One module per concern,
imports running one way: ``spec`` (the sweep file) <- ``study`` (storage, queue) <- ``worker`` (training
trials) and ``report`` (tables, figures). The file's format and the faults handled: docs/sweeps.md."""

from .report import report
from .spec import Param, SweepError, SweepSpec, build_config, load_sweep, rows_with_emulated_bf16, select_variants
from .study import open_study
from .worker import WorkerResult, run_workers, work

__all__ = [
    "Param",
    "SweepError",
    "SweepSpec",
    "WorkerResult",
    "build_config",
    "load_sweep",
    "open_study",
    "report",
    "rows_with_emulated_bf16",
    "run_workers",
    "select_variants",
    "work",
]
