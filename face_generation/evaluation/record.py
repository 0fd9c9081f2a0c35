"""An evaluation's files: metrics/<model>.json for DVC, metrics/<model>.details.json beside it.

In memory an evaluation is one record: the run's facts (checkpoint, step, n, data hash, ...)
and an entry per metric with its value, the network that produced it, its N and the data hash,
or, for a metric whose network cannot be loaded here, the reason instead of a value. On disk
the record is split in two, so that `dvc metrics show|diff` and `dvc exp show` read numbers only:

    metrics/<model>.json          metric name → value (the DVC metrics file)
    metrics/<model>.details.json  everything else (not declared as DVC metrics)

`read_record` joins them again. Both are written atomically, so DVC and the report never read
half a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FORMAT = 2  # bumped when the layout of metrics/<model>.json or its details changes
DETAILS_SUFFIX = ".details.json"
PIXELS = "pixels"  # the "network" of SSIM and PSNR
SAMPLE_RULE = "n = min(num_samples, split_size): n generated vs the first n real"
# Left out of the DVC metrics file so that `dvc metrics show` fits 120 columns (the details,
# the report and MLflow keep them): other summaries of the same face embeddings as
# identity_cosine, PSNR, the other pixel-space score of the reconstructions beside SSIM, and
# the conditional models' zero-shot identity scores (two more columns than 120 hold).
NOT_IN_DVC_METRICS = (
    "identity_distance",
    "identity_same_person",
    "psnr",
    "zero_shot_identity_cosine",
    "zero_shot_same_person",
    "zero_shot_random_cosine",
    "zero_shot_random_same_person",
)


@dataclass
class EvaluationResult:
    metrics_path: Path  # metrics/<model>.json; its details beside it (details_path)
    record: dict[str, Any]  # the whole record, as read_record returns it
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


def details_path(metrics_path: Path) -> Path:
    """metrics/<model>.details.json beside metrics/<model>.json."""
    return metrics_path.with_name(metrics_path.stem + DETAILS_SUFFIX)


def dvc_metrics(record: dict[str, Any]) -> dict[str, float]:
    """What metrics/<model>.json holds: metric name → value, for every metric with a value."""
    return {
        name: entry["value"]
        for name, entry in record["metrics"].items()
        if entry.get("value") is not None
        and name not in NOT_IN_DVC_METRICS
        and entry.get("in_dvc_metrics", True)  # a family's own scores (FamilyEvaluation)
    }


def write_record(record: dict[str, Any], metrics_dir: Path) -> Path:
    """metrics/<model>.details.json (the record; values only of the metrics left out of the
    DVC file), then metrics/<model>.json (name → value); the path of the latter."""
    path = metrics_dir / f"{record['model']}.json"
    values = dvc_metrics(record)
    # Each value is written once: in the DVC file when it is there, else in the details.
    entries = {
        name: {key: item for key, item in entry.items() if not (key == "value" and name in values)}
        for name, entry in record["metrics"].items()
    }
    write_json({**record, "metrics": entries}, details_path(path))
    return write_json(values, path)


def read_record(metrics_dir: Path, model: str) -> dict[str, Any] | None:
    """The record of `model` from its two files; None when it has not been evaluated."""
    path = metrics_dir / f"{model}.json"
    if not path.is_file() or not details_path(path).is_file():
        return None
    values = json.loads(path.read_text())
    record = json.loads(details_path(path).read_text())
    for name, entry in record["metrics"].items():
        if name in values:
            entry["value"] = values[name]
    return dict(record)
