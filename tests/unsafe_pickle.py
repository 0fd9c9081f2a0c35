"""A pickle payload that runs code when unpickled: what a malicious checkpoint carries (not a
test module: the checkpoint tests import from here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RunsCode:
    """Unpickling this calls Path.touch on `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))
