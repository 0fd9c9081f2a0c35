"""Train one generator family on the packed faces: `python -m face_generation.train`.

Examples:
  python -m face_generation.train model=vae
  python -m face_generation.train model=dcgan train.steps=5000 data.resolution=64
  python -m face_generation.train model=vae train.resume=auto       (continue the last run)
  python -m face_generation.train --params params.yaml --model dcgan (as `dvc repro` runs it)

Writes models/<model>/model.pt (the final checkpoint), models/<model>/checkpoints/ (every
train.ckpt_every steps), models/<model>/samples/ (a grid every train.sample_every steps) and
models/<model>/samples.png. SIGINT or SIGTERM checkpoints and stops; resume with
train.resume=auto.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from omegaconf import DictConfig

from face_generation.config import compose, load_params, select_model, stage_parser
from face_generation.training.checkpoint import CheckpointError
from face_generation.training.data import DataError
from face_generation.training.loop import TrainingDiverged, train


def training_config(args: argparse.Namespace) -> DictConfig:
    """configs/config.yaml with overrides, or params.yaml with `models.<--model>` as `model`."""
    if args.params:
        cfg = load_params(args.params, args.overrides)
        if args.model:
            try:
                return select_model(cfg, args.model)
            except ValueError as error:
                raise SystemExit(f"[train] error: {error} (--model {args.model})") from None
        if "model" not in cfg or "name" not in cfg.model:
            raise SystemExit(f"{args.params} holds several models: pass --model NAME")
        return cfg
    return compose("config", [*args.overrides, *([f"model={args.model}"] if args.model else [])])


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__ or "")
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="model family to train (vae, dcgan): with --params, picks models.NAME; "
        "otherwise the same as the override model=NAME",
    )
    args = parser.parse_args(argv)
    cfg = training_config(args)
    try:
        result = train(cfg)
    except (CheckpointError, TrainingDiverged, DataError, FileNotFoundError) as error:
        raise SystemExit(f"[train] error: {error}") from None
    if result.stopped_by is not None:
        raise SystemExit(128 + {"SIGINT": 2, "SIGTERM": 15}[result.stopped_by])


if __name__ == "__main__":
    main()
