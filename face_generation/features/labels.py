"""Identity labels of the packed faces, row-aligned: data/features/<res>/labels/ (the `labels` stage).

    labels/identity/<split>.npy      int64 N: the person (one code per identity of index.csv,
                                     the same in every split), -1 where unknown
    labels/partner_row/<split>.npy   int64 N: another row of the same person in the split
                                     (drawn with `features.partner_seed`), else the row itself
    labels/partner/<split>.npy       uint8 N×H×W×3: the face of that row

The face encoder trains on pairs of one person. The training loop draws its batches at random,
and in a random batch of CelebA two faces of one person almost never meet, so each row brings
its partner's face along as a row input of its own (`labels/partner`, mirrored with the row).
A face without a known partner is paired with itself: its two augmented views are the pair.
"""

from __future__ import annotations

import numpy as np

from face_generation.data.tables import Row

UNKNOWN = -1


def identity_codes(index: list[Row], splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per split, the int64 identity code of each row in row order (-1: unknown)."""
    names = sorted({row["identity"] for row in index if row.get("identity")})
    code = {name: number for number, name in enumerate(names)}
    labels = {}
    for split in splits:
        rows = sorted(
            (int(row["row"]), row.get("identity", "")) for row in index if row["split"] == split
        )
        labels[split] = np.array([code.get(identity, UNKNOWN) for _, identity in rows], np.int64)
    return labels


def partner_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """For each row, a random other row with the same known label, else the row itself."""
    rng = np.random.default_rng(seed)
    partners = np.arange(len(labels))
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    for start, stop in zip(starts, [*starts[1:], len(labels)], strict=True):
        group = order[start:stop]
        if labels[group[0]] == UNKNOWN or len(group) < 2:
            continue
        # Each row takes one of the other rows of its group, uniformly.
        offsets = rng.integers(1, len(group), size=len(group))
        partners[group] = group[(np.arange(len(group)) + offsets) % len(group)]
    return partners
