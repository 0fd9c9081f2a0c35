"""Stage `split`: assign every image in the manifest to train, val or test (data/split.csv).

The dataset's official partition is used when it has one and it leaves no split empty.
Otherwise the split is deterministic and identity-disjoint when identities are known (no
person appears in two splits), and made by content hash when they are not. Byte-identical
duplicates are dropped, so the same picture cannot sit in both train and test.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

from omegaconf import DictConfig

from face_generation.config import config_from_args, stage_parser
from face_generation.data.images import DUPLICATE
from face_generation.data.tables import (
    SPLIT_COLUMNS,
    SPLITS,
    Row,
    manifest_path,
    read_table,
    remove_leftovers,
    split_path,
    stage_summary,
    summary_path,
    wanted_splits,
    write_json,
    write_table,
)
from face_generation.errors import UserError, reported_errors


def unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key and seed: the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_hash(rows: list[Row], fractions: dict[str, float], seed: int) -> list[str]:
    """Split by identity when a row has one (identity-disjoint), else by content hash.

    Groups (an identity, or one image) are ordered by a seeded hash and cut where the running
    image count crosses each split's share, so small sets still get every split.
    """
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        key = f"identity:{row['identity']}" if row["identity"] else f"sha1:{row['sha1']}"
        groups.setdefault(key, []).append(index)
    total = sum(fractions.values())
    bounds, cumulative = [], 0.0
    for name in SPLITS:
        cumulative += fractions.get(name, 0.0) / total * len(rows)
        bounds.append((cumulative, name))
    assigned = [""] * len(rows)
    placed = 0
    for key in sorted(groups, key=lambda key: unit_hash(key, seed)):
        middle = placed + len(groups[key]) / 2
        split = next((name for bound, name in bounds if middle < bound), SPLITS[-1])
        for index in groups[key]:
            assigned[index] = split
        placed += len(groups[key])
    return assigned


def drop_duplicates(rows: list[Row]) -> tuple[list[Row], int]:
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["sha1"] not in seen:
            seen.add(row["sha1"])
            unique.append(row)
    return unique, len(rows) - len(unique)


def assign_splits(rows: list[Row], split_cfg: DictConfig) -> tuple[list[str], str]:
    """The split of each row and a sentence saying how it was chosen."""
    fractions = {name: float(split_cfg.fractions.get(name, 0.0)) for name in SPLITS}
    wanted = [name for name in SPLITS if fractions[name] > 0]
    official = [row["partition"] for row in rows]
    if split_cfg.use_official and all(official):
        present = Counter(official)
        empty = [name for name in wanted if present[name] == 0]
        if not empty:
            return official, "official partition"
        fallback_reason = f"official partition leaves {', '.join(empty)} empty in these images"
    elif split_cfg.use_official and any(official):
        fallback_reason = "official partition covers only some images"
    else:
        fallback_reason = ""
    has_identity = any(row["identity"] for row in rows)
    method = "identity-disjoint hash split" if has_identity else "content-hash split"
    if fallback_reason:
        method = f"{method} ({fallback_reason})"
    return split_by_hash(rows, fractions, int(split_cfg.seed)), method


def run(cfg: DictConfig) -> list[Row]:
    started = time.perf_counter()
    remove_leftovers(cfg, "split")
    rows = read_table(manifest_path(cfg), "download")
    if not rows:
        raise UserError(f"{manifest_path(cfg)} lists no images: nothing to split")
    rows, duplicates = drop_duplicates(rows)
    splits, method = assign_splits(rows, cfg.data.split)
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split
    counts = Counter(splits)
    empty = [name for name in wanted_splits(cfg) if counts[name] == 0]
    if empty:
        raise UserError(
            f"split {', '.join(empty)} would be empty ({len(rows)} images, "
            f"{dict(counts)} by {method}); add images or change data.split.fractions"
        )
    output = split_path(cfg)
    write_table(output, rows, SPLIT_COLUMNS)
    skipped = {DUPLICATE: duplicates}
    write_json(
        summary_path(output),
        {
            "method": method,
            "counts": {name: counts[name] for name in SPLITS},
            "images_in": len(rows) + duplicates,
            "images_out": len(rows),
            "skipped": skipped,
        },
    )
    print(f"[split] {method}: " + ", ".join(f"{name} {counts[name]}" for name in SPLITS))
    print(
        stage_summary(
            "split", len(rows) + duplicates, len(rows), skipped, time.perf_counter() - started
        )
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    with reported_errors("split"):
        run(config_from_args(args))


if __name__ == "__main__":
    main()
