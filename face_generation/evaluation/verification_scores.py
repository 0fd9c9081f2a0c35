"""The identity verification metric: pairs of faces of one person against pairs of two people,
scored by the cosine similarity of their embeddings, summarised as ROC AUC, TAR (true accept
rate) at a FAR (false accept rate) and the equal error rate. The verify stage
(evaluation/verification.py) runs it on every face encoder.
"""

from __future__ import annotations

import numpy as np

from face_generation.evaluation.identity import row_cosines


def verification_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same): every same-identity pair of rows with a label >= 0, then as
    many different-identity pairs drawn uniformly without repeats (all, when fewer exist)."""
    known = np.flatnonzero(labels >= 0)
    first, second = np.triu_indices(len(known), k=1)
    same = labels[known[first]] == labels[known[second]]
    same_pairs = np.stack([known[first[same]], known[second[same]]], axis=1)
    different = np.flatnonzero(~same)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(different, size=min(len(same_pairs), len(different)), replace=False)
    different_pairs = np.stack([known[first[np.sort(chosen)]], known[second[np.sort(chosen)]]], 1)
    pairs = np.concatenate([same_pairs, different_pairs])
    is_same = np.r_[np.ones(len(same_pairs), bool), np.zeros(len(different_pairs), bool)]
    return pairs[:, 0], pairs[:, 1], is_same


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-identity score beats a different-identity one), ties counting half
    (the Mann-Whitney U statistic over both counts)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.r_[same, different])
    above = ranks[: len(same)].sum() - len(same) * (len(same) + 1) / 2
    return float(above / (len(same) * len(different)))


def tar_at_far(same: np.ndarray, different: np.ndarray, far: float) -> float:
    """The largest share of same-identity pairs accepted (score above a threshold) while at
    most `far` of the different-identity pairs are."""
    allowed = int(np.floor(far * len(different)))  # false accepts allowed
    if allowed >= len(different):
        return 1.0
    threshold = np.sort(different)[::-1][allowed]  # accepting above it lets `allowed` through
    return float((same > threshold).mean())


def equal_error_rate(same: np.ndarray, different: np.ndarray) -> float:
    """Where the false accept and false reject rates meet as the threshold rises (accept
    score >= threshold), linearly interpolated between the thresholds around the crossing."""
    thresholds = np.r_[np.unique(np.r_[same, different]), np.inf]
    false_accept = (different[None, :] >= thresholds[:, None]).mean(axis=1)
    false_reject = (same[None, :] < thresholds[:, None]).mean(axis=1)
    gap = false_accept - false_reject  # falls from 1 to -1
    crossing = int(np.argmax(gap <= 0))
    if crossing == 0:
        return float(false_accept[0])
    before, after = gap[crossing - 1], gap[crossing]
    weight = before / (before - after)
    return float(
        false_accept[crossing - 1] + weight * (false_accept[crossing] - false_accept[crossing - 1])
    )


def verify(
    embeddings: np.ndarray, ok: np.ndarray, labels: np.ndarray, seed: int, far: float
) -> dict[str, float]:
    """ROC AUC, TAR at `far` and EER of one network's embeddings of the split's rows."""
    usable = np.where(ok, labels, -1)
    first, second, same = verification_pairs(usable, seed)
    if not same.any() or same.all():
        raise ValueError("the split needs two faces of one person and two different people")
    scores = row_cosines(embeddings[first], embeddings[second])
    same_scores, different_scores = scores[same], scores[~same]
    return {
        "roc_auc": roc_auc(same_scores, different_scores),
        f"tar_at_far_{far:.0e}": tar_at_far(same_scores, different_scores, far),
        "eer": equal_error_rate(same_scores, different_scores),
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        "rows_skipped": int((labels >= 0).sum() - (usable >= 0).sum()),
    }
