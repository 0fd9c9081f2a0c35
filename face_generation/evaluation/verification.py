"""Identity verification of the face encoders: `python -m face_generation.evaluation.verification`
(the `verify` stage), writing metrics/features.json and the table the report shows.

On the split `features.verification.split` (test: no person in it is in train), every pair of
two faces of one person and as many pairs of two different people, drawn at random with
`features.verification.seed`; a pair scores the cosine similarity of its two embeddings.
Rows without a known person, and rows a network failed on (its `ok` flag), take part in no
pair. Per network: ROC AUC, TAR (true accept rate) at FAR (false accept rate) =
`features.verification.far`, and the equal error rate.

Networks: dlib (the judge evaluation uses), the backbone's frozen embedding, the fine-tuned
face encoder (models/encoder/model.pt), and the configured encoder when it is another one.
The configured encoder's and backbone's arrays are read from data/features/; the others are
computed here on the split. A network that cannot be had here is listed with the reason.

    metrics/features.json          metric name → number (DVC metrics): <metric>_<network> for
                                   roc_auc, tar_at_far_<far> and eer ({} when nobody is known)
    metrics/features.details.json  the split, networks, weights, pair counts, reasons, and the
                                   bytes per image and failed rows of each feature folder

In memory (`run`, `read_verification`) the numbers are nested: verification.<network>.<metric>
(with the pair counts), bytes_per_image.<network>, failed_rows.<network>.

The metric itself is evaluation/verification_scores.py; the report's section,
evaluation/verification_report.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from face_generation.config import config_from_args, stage_parser
from face_generation.evaluation.verification_scores import verify

DLIB, CONTRASTIVE = "dlib", "effnet_contrastive"
NUMBERS, DETAILS = "features.json", "features.details.json"  # in paths.metrics
PAIR_COUNTS = ("same_pairs", "different_pairs", "rows_skipped")  # descriptive: the details
# Facts of each feature folder, in the details: with the models' scores they would widen
# `dvc metrics show` past 120 columns.
PER_FOLDER = ("bytes_per_image", "failed_rows")


def embeddings_of(
    cfg: DictConfig, network: str, faces: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(N×D embeddings, N ok flags, how they were had) of `network` on the split's faces."""
    from face_generation.data.packed import feature_meta, features_dir, load_feature_split

    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    stored = {str(cfg.encoder.name): "identity", str(cfg.backbone.name): "embedding"}
    if network in stored and (features / network).is_dir():  # the identity or features stage's
        rows = len(faces)
        array = load_feature_split(features, f"{network}/{stored[network]}", split, rows)
        ok = load_feature_split(features, f"{network}/ok", split, rows)
        meta = feature_meta(features, network)["network"]
        return np.asarray(array), np.asarray(ok), {**meta, "source": str(features / network)}
    settings = cfg.features.verification
    if network == DLIB:
        from face_generation.features.dlib_rows import DlibPool
        from face_generation.networks.dlib_face import DlibFaceRecogniser, dlib_files
        from face_generation.networks.face_boxes import FaceBoxes

        identity = cfg.eval.identity  # the judge's settings
        arguments = (
            *dlib_files(identity.dlib),
            str(identity.face_box),
            list(identity.fallback_box),
            int(identity.detector_upsample),
        )
        with DlibPool(arguments, int(settings.workers), 256) as pool:
            described = [rows for _, rows in pool.describe(faces)]
        vectors = np.concatenate([rows.vectors for rows in described])
        ok = np.concatenate([rows.ok for rows in described])
        key = f"{DlibFaceRecogniser.name}-{FaceBoxes.from_config(identity).cache_key}"
        return vectors, ok, {"name": DLIB, "network": key, "source": "computed"}
    if network == CONTRASTIVE:
        from face_generation.networks.contrastive import load_contrastive_encoder
        from face_generation.networks.network import embed_images

        checkpoint = OmegaConf.create({"checkpoint": settings.encoder_checkpoint})
        encoder = load_contrastive_encoder(checkpoint)
        batch_size, device = int(cfg.features.batch_size), str(cfg.features.device)
        vectors = embed_images(encoder, faces, batch_size=batch_size, device=device)
        ok = np.isfinite(vectors).all(axis=1)
        return (
            vectors,
            ok,
            {"name": CONTRASTIVE, "network": encoder.cache_key, "source": "computed"},
        )
    raise ValueError(f"no way to embed with {network!r}")


def networks_to_verify(cfg: DictConfig) -> list[str]:
    """dlib, the configured encoder, the backbone, the fine-tuned encoder; each once."""
    names = [DLIB, str(cfg.encoder.name), str(cfg.backbone.name), CONTRASTIVE]
    return list(dict.fromkeys(names))


def folder_sizes(cfg: DictConfig) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes per image and failed rows of the configured feature folders that exist."""
    from face_generation.data.packed import feature_meta, features_dir

    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    sizes, failed = {}, {}
    for network in dict.fromkeys(["labels", str(cfg.backbone.name), str(cfg.encoder.name)]):
        if not (features / network).is_dir():
            continue
        meta = feature_meta(features, network)
        sizes[network] = int(meta["bytes_per_image"])
        failed[network] = int(sum(meta.get("failed_rows", {}).values()))
    return sizes, failed


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify every network of `networks_to_verify`; write both metrics files."""
    from face_generation.data.packed import features_dir, load_feature_split, load_split
    from face_generation.data.tables import packed_dir
    from face_generation.networks.weights import WeightsUnavailableError

    settings = cfg.features.verification
    split, resolution = str(settings.split), int(cfg.data.resolution)
    faces = load_split(packed_dir(cfg), split, resolution)
    features = features_dir(Path(cfg.paths.data), resolution)
    labels = np.asarray(load_feature_split(features, "labels/identity", split, len(faces)))
    sizes, failed = folder_sizes(cfg)
    numbers: dict[str, Any] = {"verification": {}, "bytes_per_image": sizes, "failed_rows": failed}
    details: dict[str, Any] = {
        "split": split,
        "split_size": len(faces),
        "faces_with_identity": int((labels >= 0).sum()),
        "identities": len(np.unique(labels[labels >= 0])),
        "far": float(settings.far),
        "seed": int(settings.seed),
        "networks": {},
    }
    same_pairs = len(labels[labels >= 0]) - len(np.unique(labels[labels >= 0]))
    for network in networks_to_verify(cfg):
        if same_pairs == 0:  # the embedded default: nobody's identity is known
            reason = f"no two faces of the {split} split are known to show one person"
            details["networks"][network] = {"available": False, "reason": reason}
            continue
        try:
            embeddings, ok, how = embeddings_of(cfg, network, faces, split)
            numbers["verification"][network] = verify(
                embeddings, ok, labels, int(settings.seed), float(settings.far)
            )
            details["networks"][network] = {"available": True, **how}
        except (WeightsUnavailableError, ValueError) as error:
            details["networks"][network] = {"available": False, "reason": str(error)}
    write_verification(numbers, details, Path(cfg.paths.metrics))
    return numbers, details


def write_verification(numbers: dict[str, Any], details: dict[str, Any], metrics: Path) -> Path:
    """metrics/features.details.json (with each network's pair counts and each feature
    folder's facts), then metrics/features.json: `<metric>_<network>` → number; its path."""
    from face_generation.evaluation.record import write_json

    scores: dict[str, float] = {}
    networks = {name: dict(entry) for name, entry in details["networks"].items()}
    for network, result in numbers["verification"].items():
        for metric, value in result.items():
            if metric in PAIR_COUNTS:
                networks[network][metric] = value
            else:
                scores[f"{metric}_{network}"] = float(value)
    names = sorted({m for result in numbers["verification"].values() for m in result})
    folders = {
        folder: {fact: numbers[fact][folder] for fact in PER_FOLDER}
        for folder in numbers[PER_FOLDER[0]]
    }
    write_json(
        {
            **details,
            "networks": networks,
            "metrics": [name for name in names if name not in PAIR_COUNTS],
            "feature_folders": folders,
        },
        metrics / DETAILS,
    )
    return write_json(scores, metrics / NUMBERS)


def read_verification(metrics: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(numbers, details) as `run` returned them, from metrics/features*.json; None when the
    verify stage has not written them."""
    if not (metrics / NUMBERS).is_file() or not (metrics / DETAILS).is_file():
        return None
    scores, details = (
        json.loads((metrics / NUMBERS).read_text()),
        json.loads((metrics / DETAILS).read_text()),
    )
    folders = details["feature_folders"]
    numbers: dict[str, Any] = {
        fact: {folder: facts[fact] for folder, facts in folders.items()} for fact in PER_FOLDER
    }
    numbers["verification"] = {}
    for network, how in details["networks"].items():
        names = [f"{metric}_{network}" for metric in details["metrics"]]
        if how.get("available") and all(name in scores for name in names):
            numbers["verification"][network] = {
                **{metric: scores[f"{metric}_{network}"] for metric in details["metrics"]},
                **{count: how[count] for count in PAIR_COUNTS if count in how},
            }
    return numbers, details


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    cfg = config_from_args(args)
    from face_generation.data.packed import DataError

    try:
        numbers, details = run(cfg)
    except (DataError, FileNotFoundError) as error:
        raise SystemExit(f"[verify] error: {error}") from None
    for network, how in details["networks"].items():
        result = numbers["verification"].get(network)
        shown = (
            " ".join(f"{key} {value:.4g}" for key, value in result.items())
            if result
            else f"unavailable: {how['reason']}"
        )
        print(f"[verify] {network:<20} {shown}", file=sys.stderr)
    print(f"[verify] {Path(cfg.paths.metrics) / 'features.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
