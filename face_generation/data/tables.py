"""The CSV tables and JSON summaries that data stages hand to each other."""

from __future__ import annotations

import csv
import json
from collections import Counter
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


def sources_dir(cfg: DictConfig) -> Path:
    """The raw files as fetched (the embedded faces, CelebA's official files): `data.dvc`."""
    return data_dir(cfg) / "sources"


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


# What a killed stage can leave under paths.data: pack's arrays (GBs at full scale), the
# temporaries of tables, summaries and fetched faces. Not CelebA's .part files: those resume.
LEFTOVERS = ("packed/*/*.tmp.npy", "*.tmp", "raw/*.tmp", "sources/*/*.tmp")


def remove_leftovers(cfg: DictConfig, stage: str) -> None:
    """Delete the temporary files an interrupted stage left under paths.data, and say so."""
    data = Path(cfg.paths.data)
    found = [path for pattern in LEFTOVERS for path in data.glob(pattern) if path.is_file()]
    if not found:
        return
    size = sum(path.stat().st_size for path in found)
    for path in found:
        path.unlink(missing_ok=True)
    print(f"[{stage}] removed {len(found)} temporary file(s) of an interrupted run "
          f"({size / 1e6:.1f} MB) under {data}")  # fmt: skip


class Skipped:
    """The files a stage skipped, each with its reason: counted by reason for the summaries,
    and listed in `<table>.skipped.csv` beside the stage's table (path, reason), so a user
    with 200,000 photos can find the ones that were left out."""

    SHOWN = 3  # files the summary line names

    def __init__(self) -> None:
        self.files: list[Row] = []

    def add(self, path: str, reason: str) -> None:
        self.files.append({"path": path, "reason": reason})

    def update(self, other: Skipped) -> None:
        self.files.extend(other.files)

    def counts(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.files))

    def write(self, table: Path) -> Path:
        """The list beside `table` (written even when empty: no stale list of an earlier run)."""
        write_table(skipped_path(table), self.files, ("path", "reason"))
        return skipped_path(table)

    def examples(self, table: Path) -> str:
        """The first few skipped files and where the rest are listed, for the summary line."""
        if not self.files:
            return ""
        shown = ", ".join(
            f"{Path(r['path']).name} ({r['reason']})" for r in self.files[: self.SHOWN]
        )
        more = f" and {len(self.files) - self.SHOWN} more" if len(self.files) > self.SHOWN else ""
        return f"; skipped: {shown}{more}, all in {skipped_path(table)}"


def skipped_path(table: Path) -> Path:
    return table.with_name(f"{table.stem}.skipped.csv")


def stage_summary(
    stage: str, seen: int, kept: int, skipped: dict[str, int], seconds: float, examples: str = ""
) -> str:
    """The one line every stage prints when it ends (`examples`: `Skipped.examples`)."""
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(skipped.items()) if count)
    return (
        f"[{stage}] {seen} in, {kept} out, {sum(skipped.values())} skipped"
        f"{' (' + reasons + ')' if reasons else ''}, {seconds:.1f} s{examples}"
    )
