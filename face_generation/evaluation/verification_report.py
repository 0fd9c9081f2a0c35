"""The report's identity verification section, from the files the verify stage wrote
(metrics/features*.json: evaluation/verification.py)."""

from __future__ import annotations

from pathlib import Path

from face_generation.evaluation.verification import read_verification


def verification_markdown(metrics_dir: Path) -> str:
    """The report's verification section, from metrics/features*.json ('' when absent)."""
    read = read_verification(metrics_dir)
    if read is None:
        return ""
    numbers, details = read
    far = f"{details['far']:.0e}"
    lines = [
        "",
        "## Identity verification (metrics/features.json)",
        "",
        f"Face encoders on the {details['split']} split ({details['split_size']} faces, "
        f"{details['faces_with_identity']} of {details['identities']} known people): every pair of "
        "two faces of one person against as many pairs of two people, scored by cosine "
        "similarity (`python -m face_generation.evaluation.verification`).",
        "",
        f"| network | ROC AUC ↑ | TAR at FAR={far} ↑ | EER ↓ | pairs (same + different) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    reasons = []
    for network, how in details["networks"].items():
        result = numbers["verification"].get(network)
        if result is None:
            reasons.append(f"{network}: {how.get('reason', 'not computed')}")
            lines.append(f"| {network} | unavailable [{len(reasons)}] | | | |")
            continue
        lines.append(
            f"| {network} | {result['roc_auc']:.4f} | {result[f'tar_at_far_{far}']:.4f} "
            f"| {result['eer']:.4f} | {result['same_pairs']} + {result['different_pairs']} |"
        )
    lines += [""] + [f"{index}. {reason}" for index, reason in enumerate(reasons, 1)]
    sizes = numbers.get("bytes_per_image", {})
    if sizes:
        lines += [
            "",
            "Feature arrays (data/features/): "
            + ", ".join(f"{name} {size} bytes per image" for name, size in sizes.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"
