"""Where and how the work runs: the device, autocast, progress bars, the random-number state and the
signals that ask a run to stop.

Nothing here holds a global: callers pass the device and flags in and get objects back.
"""

from __future__ import annotations

import contextlib
import platform
import signal
import sys
import threading

import torch
from tqdm.auto import tqdm

__all__ = ["CPU_AMP_MODES", "StopSignals", "autocast_for", "cpu_has_amx", "cpu_model", "get_rng_state",
           "progress_bar", "resolve_device", "set_rng_state", "use_cpu_amp"]

CPU_AMP_MODES = ("off", "on", "auto")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device;
    ValueError for an unknown name or a device this machine lacks."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if dev.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' requested but MPS is not available on this machine")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def autocast_for(device: torch.device, enabled: bool, cpu: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``, on the CPU when ``cpu``; full precision otherwise (and always
    on MPS). On the CPU bf16 pays only where the cores multiply bf16 matrices in hardware (Intel AMX):
    see :func:`use_cpu_amp`."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cpuinfo_field(prefix: str) -> str | None:
    """The first value of a ``/proc/cpuinfo`` line starting with ``prefix`` (Linux); None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else ""
    except OSError:
        pass
    return None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Xeon Sapphire Rapids and later), read from Linux's
    /proc/cpuinfo; False where it cannot be read."""
    return "amx_bf16" in (_cpuinfo_field("flags") or "").split()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere), for benchmark tables."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def use_cpu_amp(mode: str) -> bool:
    """Whether a run on the CPU autocasts to bf16: ``on``, ``off``, or ``auto`` (when :func:`cpu_has_amx`:
    there a training step of the fast nets takes 2-3x less time; without AMX bf16 is slower than fp32)."""
    if mode not in CPU_AMP_MODES:
        raise ValueError(f"unknown cpu amp mode {mode!r}; use {', '.join(CPU_AMP_MODES)}")
    return mode == "on" or (mode == "auto" and cpu_has_amx())


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "img") -> tqdm:
    """The one progress bar of the package: tqdm on stderr (a widget in Jupyter, text elsewhere), shown
    when ``enabled`` (``None``: when stderr is a terminal), a silent no-op otherwise; a context manager."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=not enabled)


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


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) as a request to stop, while the context is active.

    The first signal only sets :attr:`received` (its number), so that the training loop finishes the
    step it is in, writes a resumable checkpoint and exits with ``128 + received``; a second SIGINT
    raises ``KeyboardInterrupt`` at once (the user insists). Outside the main thread, where Python cannot
    install handlers, this does nothing. The previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
