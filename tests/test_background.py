"""The suite started as a shell script starts a background job (``pytest ... &``, ``nohup pytest ... &``): with
SIGINT ignored, a disposition that every process inherits across exec. The tests of signal handling must pass
there too, so each sets the disposition it relies on rather than trusting the one it inherited."""

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# what `trap '' INT; exec ...` does in a shell: ignore SIGINT, then become the command
EXEC_WITH_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)

SIGNAL_TESTS = [
    f"{TESTS / 'test_distributed.py'}::{name}"
    for name in ("test_a_second_ctrl_c_exits_at_once", "test_an_ignored_sigint_stays_ignored")
]


def _with_sigint_ignored(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", EXEC_WITH_SIGINT_IGNORED, *args],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow  # a second pytest, which imports torch: 5-10 s on 2 busy cores
def test_signal_tests_pass_with_sigint_ignored():
    # the premise: the command inherits SIGINT ignored (Python leaves it so instead of installing its own handler)
    probe = _with_sigint_ignored(
        "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)", timeout=60
    )
    assert probe.stdout.strip() == "True", probe.stdout + probe.stderr
    proc = _with_sigint_ignored("-m", "pytest", "-q", "-p", "no:cacheprovider", *SIGNAL_TESTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(SIGNAL_TESTS)} passed" in proc.stdout, proc.stdout[-3000:]
