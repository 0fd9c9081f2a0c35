"""The CSV tables and JSON summaries that data stages hand to each other."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

MANIFEST_COLUMNS = ("path", "sha1", "identity", "partition", "age", "gender", "race")
SPLIT_COLUMNS = (*MANIFEST_COLUMNS, "split")
CROP_COLUMNS = (*SPLIT_COLUMNS, "box_left", "box_top", "box_right", "box_bottom")
SPLITS = ("train", "val", "test")

Row = dict[str, str]


def data_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.data)


def manifest_path(cfg: DictConfig) -> Path:
    return data_dir(cfg) / "raw" / "manifest.csv"


def split_path(cfg: DictConfig) -> Path:
    return data_dir(cfg) / "split.csv"


def crops_path(cfg: DictConfig) -> Path:
    return data_dir(cfg) / "crops.csv"


def packed_dir(cfg: DictConfig) -> Path:
    return data_dir(cfg) / "packed" / str(cfg.data.resolution)


def wanted_splits(cfg: DictConfig) -> list[str]:
    """The splits with a share in data.split.fractions: each of them must hold images."""
    return [name for name in SPLITS if float(cfg.data.split.fractions.get(name, 0.0)) > 0]


def summary_path(table: Path) -> Path:
    """Each table has a JSON summary beside it (counts, skipped by reason, seconds)."""
    return table.with_suffix(".json")


def write_table(path: Path, rows: Iterable[Row], columns: Sequence[str]) -> int:
    """Write rows atomically (temp file then rename), so a killed stage leaves no half table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    temporary.replace(path)
    return count


def read_table(path: Path, stage: str) -> list[Row]:
    """Rows of a table written by an earlier stage; a missing table names the stage to run."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the `{stage}` stage first "
            f"(`dvc repro {stage}` or `python -m face_generation.data.{stage}`)"
        )
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_summary(stage: str, seen: int, kept: int, skipped: dict[str, int], seconds: float) -> str:
    """The one line every stage prints when it ends."""
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(skipped.items()) if count)
    return (
        f"[{stage}] {seen} in, {kept} out, {sum(skipped.values())} skipped"
        f"{' (' + reasons + ')' if reasons else ''}, {seconds:.1f} s"
    )
