"""Sweeps on Optuna: a grid of variants x seeds, or a search over ranges, shared by any number of workers."""

from .spec import *  # noqa: F403
