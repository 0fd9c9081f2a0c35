"""models/<name>/losses.csv: the logged training metrics, one row per logged step.

DVC draws its losses (the `plots:` of dvc.yaml); MLflow gets the same numbers and images/s,
which is left out here: it depends on the machine, and this file is a DVC output that the same
training must write byte for byte. A resumed run keeps the rows up to its checkpoint and
drops the ones a killed run logged after.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path


class LossLog:
    def __init__(self, path: Path, resume_step: int | None) -> None:
        """Start `path` afresh (resume_step None), or keep its rows up to `resume_step`."""
        self.path = path
        self.columns: list[str] | None = None
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                self.columns = list(reader.fieldnames or []) or None
                rows = [row for row in reader if int(row["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            if self.columns:
                writer = csv.DictWriter(file, self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.columns is None:
            self.columns = ["step", *metrics]
            with self.path.open("w", newline="") as file:
                csv.DictWriter(file, self.columns).writeheader()
        with self.path.open("a", newline="") as file:
            row = {"step": step, **{key: f"{value:.6g}" for key, value in metrics.items()}}
            csv.DictWriter(file, self.columns, extrasaction="ignore").writerow(row)
