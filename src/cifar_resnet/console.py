"""What the user types and reads: durations (one grammar for flags, config files and sweep files), an
exception as one line, and the package's progress bar."""

from __future__ import annotations

import re
import sys

from tqdm.auto import tqdm

__all__ = ["format_duration", "one_line", "parse_duration", "progress_bar"]

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str, flag: str = "--budget") -> float | None:
    """Seconds of a duration such as ``900s``, ``900``, ``15m``, ``1h``, ``1h30m`` or ``2.5m``; None for
    ``none``. ValueError naming ``flag`` for anything else, zero or negative."""
    t = str(text).strip().lower()
    if t in ("none", "off", ""):
        return None
    m = _DURATION.fullmatch(t)
    if not m or not any(m.groups()):
        raise ValueError(f"{flag}: expected a duration such as 900s, 15m or 1h (or none), got {text!r}")
    seconds = sum(float(v) * unit for v, unit in zip(m.groups(), (3600.0, 60.0, 1.0)) if v)
    if not seconds > 0:
        raise ValueError(f"{flag}: a duration must be longer than 0 s, got {text!r}")
    return seconds


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one line for a message: its text with whitespace collapsed, cut at ``limit`` characters
    (an ellipsis marks the cut), or its type's name where it has no text."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def format_duration(seconds: float) -> str:
    """``14m 20s``, ``52s``, ``1h 05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "img") -> tqdm:
    """The one progress bar of the package: tqdm on stderr (a widget in Jupyter, text elsewhere), shown
    when ``enabled`` (``None``: when stderr is a terminal), a silent no-op otherwise; a context manager."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr, disable=not enabled
    )
