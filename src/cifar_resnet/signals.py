"""SIGTERM and SIGINT as a request to stop a run after its current step."""

from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals"]


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) as a request to stop, while the context is active.

    The first signal only sets :attr:`received` (its number), so that the training loop finishes the
    step it is in, writes a resumable checkpoint and exits with ``128 + received``; a second SIGINT
    raises ``KeyboardInterrupt`` at once (the user insists). A signal ignored when the context opens stays
    ignored, as Python itself leaves an ignored SIGINT: a shell script starts a background job
    (``nohup cifar-resnet train ... &``) with SIGINT ignored, so that a Ctrl-C at the terminal stops the
    script and not the job. Outside the main thread, where Python cannot install handlers, this does
    nothing. The previous handlers come back on exit.

    Nested inside another ``StopSignals`` (a sweep worker around ``fit``), a request the outer one had
    already received counts as received here too, and one received here is passed out on exit: a
    signal that arrives while the worker sets a trial up stops that trial after its first step.
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
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        outer = self._outer()
        if outer is not None and self.received is None:
            self.received = outer.received
        return self

    def __exit__(self, *exc) -> None:
        outer = self._outer()
        if outer is not None and outer.received is None:
            outer.received = self.received
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _outer(self) -> StopSignals | None:
        """The ``StopSignals`` whose handler this one replaced, if any."""
        for handler in self._previous.values():
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, StopSignals):
                return owner
        return None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
