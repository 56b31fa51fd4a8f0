"""The global random generators' state, saved in a checkpoint for an exact resume."""

from __future__ import annotations

import torch

__all__ = ["get_rng_state", "set_rng_state"]


def get_rng_state() -> dict:
    """The global torch generators' state (CPU and every CUDA device), for an exact resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
