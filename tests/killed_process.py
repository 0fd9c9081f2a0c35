"""A Python process killed with SIGKILL once it has done its work: no close(), no atexit, no
buffer flush runs after the kill (not a test module: the spool and tracking tests import from
here; it imports nothing heavy, so the fast spool tests stay fast)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_until_killed(script: str, arguments: Sequence[str], stdin: str = "") -> str:
    """Run `script` in a fresh Python that imports this checkout, feed it `stdin`, read the one
    line it prints when it has done its work, then SIGKILL it; that line.

    The script must then wait on its standard input, which stays open until the kill.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(stdin)
    child.stdin.flush()
    said = child.stdout.readline().strip()
    child.kill()
    child.wait()
    assert said, "the process died before it had done its work"
    return said
