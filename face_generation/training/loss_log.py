"""models/<name>/losses.csv: the logged training metrics, one row per logged step.

DVC draws its losses (the `plots:` of dvc.yaml); MLflow gets the same numbers and images/s,
which is left out here: it depends on the machine, and this file is a DVC output that the same
training must write byte for byte. Every checkpoint carries the rows logged up to it
(`history()`), and a resumed run rewrites the file from its checkpoint: `dvc repro` deletes a
stage's outputs before it reruns the stage, so the file itself may be gone, and the rows a
killed run logged after its checkpoint are dropped. Under torchrun only rank 0 writes the file;
the other ranks keep the same rows in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from face_generation.training.device import rank_and_world_size


class LossLog:
    def __init__(self, path: Path, history: Mapping[str, Any] | None = None) -> None:
        """Start `path` afresh, or from `history` (what a checkpoint's `history()` returned)."""
        self.path = path
        self.columns: list[str] | None = list(history["columns"]) or None if history else None
        self.rows: list[dict[str, str]] = [dict(row) for row in history["rows"]] if history else []
        self.written = rank_and_world_size()[0] == 0
        if not self.written:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            if self.columns:
                writer = csv.DictWriter(file, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)

    @classmethod
    def resumed(cls, path: Path, state: Mapping[str, Any], step: int) -> LossLog:
        """The log of a run resumed from checkpoint `state` at `step`: the checkpoint's rows,
        or, for a checkpoint written before they were kept, the file's rows up to `step`."""
        if state.get("losses") is not None:
            return cls(path, state["losses"])
        rows: list[dict[str, str]] = []
        columns: list[str] = []
        if path.is_file():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                columns = list(reader.fieldnames or [])
                rows = [row for row in reader if int(row["step"]) <= step]
        return cls(path, {"columns": columns, "rows": rows} if columns else None)

    def history(self) -> dict[str, Any]:
        """The columns and rows so far, as plain values (a checkpoint holds them)."""
        return {"columns": list(self.columns or []), "rows": [dict(row) for row in self.rows]}

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.columns is None:
            self.columns = ["step", *metrics]
            if self.written:
                with self.path.open("w", newline="") as file:
                    csv.DictWriter(file, self.columns).writeheader()
        row = {"step": str(step), **{key: f"{value:.6g}" for key, value in metrics.items()}}
        row = {key: row[key] for key in self.columns if key in row}
        self.rows.append(row)
        if self.written:
            with self.path.open("a", newline="") as file:
                csv.DictWriter(file, self.columns).writerow(row)
