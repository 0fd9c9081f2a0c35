"""The metrics file, metrics/<model>.json: its layout and its entries.

Every metric entry carries its value, the network that produced it, its N and the data hash;
a metric whose network cannot be loaded here carries the reason instead of a value. The file
is written atomically, so DVC and the report never read half of it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FORMAT = 1  # bumped when the layout of metrics/<model>.json changes
PIXELS = "pixels"  # the "network" of SSIM and PSNR
SAMPLE_RULE = "n = min(num_samples, split_size): n generated vs the first n real"


@dataclass
class EvaluationResult:
    metrics_path: Path  # metrics/<model>.json
    record: dict[str, Any]  # what it holds
    plots: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run (or spool key) the numbers went to


def measured(value: float, network: str, data_hash: str, **details: Any) -> dict:
    """A metric entry: value, network, N and any other `details`, data hash.

    A non-finite value (PSNR of identical images) is written as null with a note: JSON has no
    infinity, and DVC and MLflow would choke on it.
    """
    entry: dict[str, Any] = {"available": True, "value": float(value)}
    if not math.isfinite(value):
        entry = {"available": True, "value": None, "note": f"not finite ({value})"}
    return {**entry, "network": network, **details, "data_hash": data_hash}


def unavailable(reason: str, network: str, data_hash: str) -> dict:
    """A metric that could not be computed here: the reason instead of a value."""
    return {"available": False, "reason": reason, "network": network, "data_hash": data_hash}


def write_json(record: dict[str, Any], path: Path) -> Path:
    """Atomically: a temporary file renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path
