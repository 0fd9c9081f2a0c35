"""Compute the feature arrays of the packed faces: `python -m face_generation.features`.

Examples:
  python -m face_generation.features                                  (labels, backbone, encoder)
  python -m face_generation.features --only backbone backbone=dinov2_vits14 backbone.weights_path=model.safetensors
  python -m face_generation.features --only encoder encoder=effnet_contrastive
  python -m face_generation.features --params params.yaml --only labels   (as `dvc repro` runs it)

Writes data/features/<res>/labels/, data/features/<res>/<backbone>/ and
data/features/<res>/<encoder>/, row-aligned with data/packed/<res>/<split>.npy; see
face_generation/features/stage.py. The DVC stages `labels`, `features` and `identity` run one
part each, so changing the backbone reruns only its own part and what reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from face_generation.config import config_from_args, stage_parser
from face_generation.features.stage import PARTS


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__ or "")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="write only this part (repeatable)"
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    from face_generation.data.packed import DataError
    from face_generation.features.stage import run
    from face_generation.networks.weights import WeightsUnavailableError

    try:
        run(cfg, args.only or PARTS)
    except (WeightsUnavailableError, DataError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"[features] error: {error}") from None


if __name__ == "__main__":
    main()
