"""The guidance sweep of a conditional model: the fidelity/identity trade-off of classifier-free
guidance.

For each scale w in `eval.guidance_sweep`: the eval samples drawn again with guidance=w (sample
i conditioned on real image i's row, the same noise for every w), their fd_<backbone> against
the real images, and the identity similarity of the first `eval.zero_shot.num_references`
samples to their reference photos, judged as ZeroShotIdentity judges (dlib, never the
conditioning network; the same-person share at its calibrated threshold, left out when it is
uncalibrated). Written as plots/<model>/guidance_sweep.csv (a DVC plot: x guidance),
one sample grid per scale (plots/<model>/guidance_<w>.png), and the metrics file's
`guidance_sweep` rows, which the report shows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from face_generation.evaluation.frechet import feature_statistics, frechet_distance_between
from face_generation.evaluation.identity import identity_similarity
from face_generation.evaluation.inputs import EvaluationInputs
from face_generation.evaluation.metrics import CONDITIONS, independent_judge, provided
from face_generation.evaluation.plots import samples_plot
from face_generation.runtime.family import sampling_options


def sweeps(inputs: EvaluationInputs) -> bool:
    """Whether this evaluation sweeps guidance: a conditional family with a guidance option,
    and scales in the config."""
    return (
        CONDITIONS in provided(inputs.trained)
        and "guidance" in sampling_options(inputs.trained.family)
        and len(inputs.eval_cfg.guidance_sweep) > 0
    )


def guidance_sweep(
    inputs: EvaluationInputs, folder: Path
) -> tuple[list[dict[str, Any]], list[Path]]:
    """(one row per scale, the files written): see the module docstring."""
    eval_cfg = inputs.eval_cfg
    condition = str(inputs.trained.condition)
    judge = independent_judge(eval_cfg, condition, str(inputs.device))
    references = min(int(eval_cfg.zero_shot.num_references), inputs.count)
    real_identity, calibration = (
        (None, None) if isinstance(judge, str) else inputs.judged_real_faces(judge, references)
    )
    real = inputs.real_backbone_features.statistics
    fd_name = f"fd_{inputs.prefix}"
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    settings = eval_cfg.plots
    for scale in (float(w) for w in eval_cfg.guidance_sweep):
        samples = inputs.sample(inputs.count, f"guidance {scale:g}", guidance=scale)
        features = inputs.embed(inputs.backbone, samples, f"guidance {scale:g} features")
        row: dict[str, Any] = {
            "guidance": scale,
            fd_name: frechet_distance_between(real, feature_statistics(features)),
        }
        if real_identity is not None and calibration is not None and not isinstance(judge, str):
            threshold = judge.threshold if calibration.threshold is None else calibration.threshold
            similarity = identity_similarity(
                real_identity, judge.embed(samples[:references]), threshold
            )
            row["identity_cosine"] = similarity.cosine_mean
            if calibration.threshold is not None:
                row["same_person"] = similarity.same_person_share
        rows.append(row)
        grid = folder / f"guidance_{scale:g}.png"
        files.append(
            samples_plot(
                samples, int(settings.samples), int(settings.columns), int(settings.gutter), grid
            )
        )
    table = folder / "guidance_sweep.csv"
    folder.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows, [table, *files]
