"""Generate faces from a trained model: `python -m face_generation.inference MODEL`.

MODEL is a checkpoint written by training (models/<name>/model.pt, or any
models/<name>/checkpoints/step-N.pt) or an MLflow model URI (runs:/<run id>/<path>,
models:/<name>/<version>, or a local MLflow model folder); MLflow URIs are resolved against
the tracking server of params.yaml (tracking.host, port, uri), else MLFLOW_TRACKING_URI.

Writes OUT/samples.png (a grid of all samples) and OUT/samples/0000.png, 0001.png, ... (one
per sample). The same --seed (and options) gives the same images. --option NAME=VALUE sets one
of the family's sampling options (diffusion: steps, sampler, guidance, eta; every other
family: temperature); `--NAME VALUE` is the same as `--option NAME=VALUE`. An unknown name
lists the model's options. For models that reconstruct (the VAE, the translator), --input
FILE... reconstructs those images instead: OUT/reconstructions.png (each input beside its
reconstruction) and OUT/reconstructions/0000.png, ... For conditional models that embed photos
(diffusion and cond_gan, on the backbone embedding by default or an encoder's identity),
--reference FILE... draws --n variants of each photo's person, conditioned on the photo's
embedding by the network the model was trained with: OUT/references.png (one row per photo:
the photo, then its variants) and OUT/references/0000.png, ... Photos should be roughly
aligned face crops (centre square); --detect finds the face in other photos first, as the crop
stage's MTCNN does, and names a photo in which it finds none.
--embedding ROWS.npy does the same for condition rows given as numbers (N×D, the width the
model conditions on; a row of zeros or NaN is refused): OUT/embeddings.png, one row each.
--input FILE... --edit (the translator): OUT/edits.png, one row per image: the image, its
round trip, then --n variants of its person (the code redrawn); OUT/edits/0000.png, ...

Examples:
  python -m face_generation.inference models/dcgan/model.pt --n 64 --seed 1
  python -m face_generation.inference models/dcgan/model.pt --option temperature=0.7
  python -m face_generation.inference models/vae/model.pt --input face1.jpg face2.jpg
  python -m face_generation.inference models/diffusion/model.pt --n 16 --steps 50 --sampler heun
  python -m face_generation.inference models/diffusion/model.pt --reference me.jpg --guidance 3
      (diffusion conditions on the backbone embedding by default)
  python -m face_generation.inference models/cond_gan/model.pt --reference me.jpg --n 8
  python -m face_generation.inference models/cond_gan/model.pt --embedding rows.npy --n 4
  python -m face_generation.inference models/translator/model.pt --input me.jpg --edit --n 4
  python -m face_generation.inference models:/face_generation-vae/1 --out plots/registered
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from face_generation.config import compose
from face_generation.errors import reported_errors
from face_generation.runtime.checkpoint import CheckpointError
from face_generation.runtime.device import PRECISIONS, pick_device
from face_generation.runtime.family import RECONSTRUCT
from face_generation.runtime.generator import (
    TrainedGenerator,
    generate,
    photo_refusal,
)
from face_generation.runtime.images import load_faces, save_each, save_grid
from face_generation.runtime.options import (
    OptionError,
    RequestLimits,
    check_range,
    from_text,
    read_options,
)
from face_generation.runtime.sources import REGISTRY_SCHEMES, load_model
from face_generation.tracking.server import use_pipeline_server


def parse_options(
    pairs: Sequence[str], trained: TrainedGenerator, limits: RequestLimits
) -> dict[str, Any]:
    """`--option NAME=VALUE` pairs, each VALUE read as JSON would carry it (50, 0.8, true,
    heun), then checked by the rule and the limits of the web service and the MLflow model."""
    requested: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals:
            raise OptionError(f"--option {pair}: expected NAME=VALUE")
        requested[name] = from_text(value)
    return read_options(requested, trained, limits)


def option_flags(extra: Sequence[str]) -> list[str]:
    """`--NAME VALUE` and `--NAME=VALUE` arguments argparse did not know, as NAME=VALUE pairs."""
    pairs, rest = [], list(extra)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or len(flag) == 2:
            raise ValueError(f"unexpected argument {flag!r} (see --help)")
        name, equals, value = flag[2:].partition("=")
        if not equals:
            if not rest or rest[0].startswith("--"):
                raise ValueError(f"{flag} needs a value, e.g. {flag} VALUE")
            value = rest.pop(0)
        pairs.append(f"{name.replace('-', '_')}={value}")
    return pairs


def variants_of_references(
    trained: TrainedGenerator,
    paths: Sequence[Path],
    n: int,
    seed: int,
    options: dict[str, Any],
    max_pixels: int | None = None,
    detect: DictConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(photos, variants): N×3×R×R photos in [-1, 1] and N·n samples, n per photo in order,
    each conditioned on its photo's embedding."""
    if not trained.takes_photos:
        raise ValueError(f"--reference: {photo_refusal(trained.family, trained.config.model)}")
    photos = load_faces(paths, trained.resolution, max_pixels, detect)
    conditions = trained.conditions_from_photos(photos).float()
    cond = conditions.repeat_interleave(n, dim=0)
    return photos, generate(trained, len(cond), seed, cond=cond, **options)


def conditions_from_file(trained: TrainedGenerator, path: Path) -> torch.Tensor:
    """The condition rows of an .npy file (N×D, or one row of D), checked: a conditional model,
    its condition's width, and no row that is all zeros or not finite (a face the features
    stage failed on, or a broken file)."""
    if trained.condition is None:
        raise ValueError(f"--embedding: the {trained.name} model is unconditional")
    try:
        rows = np.atleast_2d(np.load(path, allow_pickle=False)).astype(np.float32)
    except (OSError, ValueError) as error:
        raise ValueError(f"--embedding {path}: not a readable .npy array ({error})") from None
    width = trained.config.model.get("cond_dim")
    if rows.ndim != 2 or (width is not None and rows.shape[1] != int(width)):
        raise ValueError(
            f"--embedding {path}: rows of shape {rows.shape[1:]}, but the model conditions on "
            f"{width}-wide rows of {trained.condition}"
        )
    broken = [i for i, row in enumerate(rows) if not np.isfinite(row).all() or not row.any()]
    if broken:
        raise ValueError(f"--embedding {path}: row(s) {broken} are all zeros or not finite")
    return torch.from_numpy(rows)


def reconstruct(
    trained: TrainedGenerator,
    paths: Sequence[Path],
    max_pixels: int | None = None,
    detect: DictConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, reconstructions), both N×3×R×R in [-1, 1]; images of more than `max_pixels`
    pixels are refused before decoding."""
    if RECONSTRUCT not in trained.family.capabilities:
        raise ValueError(
            f"--input needs a model that reconstructs; the {trained.name} family does not"
        )
    inputs = load_faces(paths, trained.resolution, max_pixels, detect)
    return inputs, trained.reconstruct(inputs).cpu()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m face_generation.inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="checkpoint file (.pt) or MLflow model URI")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sampling option of the model's family, e.g. temperature=0.8 (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("plots"), help="output folder (default plots)"
    )
    parser.add_argument(
        "--input",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="models that reconstruct (the VAE, the translator): images to reconstruct",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        metavar="PHOTO",
        help="conditional models that embed photos: --n variants of each photo's person",
    )
    parser.add_argument(
        "--edit",
        action="store_true",
        help="with --input, models that draw variants (the translator): the round trip and --n "
        "variants of each image's person",
    )
    parser.add_argument(
        "--embedding",
        type=Path,
        metavar="ROWS.npy",
        help="conditional models: --n variants of each condition row of an .npy file (N×D)",
    )
    parser.add_argument(
        "--detect",
        action="store_true",
        help="with --reference or --input, for photos that are not face crops: find the face "
        "first, as the crop stage does with data.crop.method=mtcnn (the model's data.crop "
        "margin and min_confidence); a photo without a face is an error naming it",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="what sampling computes in (default fp32); bf16 is autocast: faster on GPUs and on "
        "CPUs that multiply bf16 in hardware (AMX), with images that differ slightly; auto is "
        "bf16 on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="checkpoints: use the trained weights, not their EMA"
    )
    args, extra = parser.parse_known_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if sum(bool(chosen) for chosen in (args.input, args.reference, args.embedding)) > 1:
        parser.error("--input, --reference and --embedding: choose one")
    if args.edit and not args.input:
        parser.error("--edit needs --input IMAGE...")
    if args.detect and not (args.input or args.reference):
        parser.error("--detect needs --reference PHOTO... or --input IMAGE...")

    with reported_errors("inference", CheckpointError, ValueError):
        option_pairs = [*args.option, *option_flags(extra)]
        cfg = compose("config")
        limits = RequestLimits.from_config(cfg.serve.limits)  # the web service's limits
        check_range("seed", args.seed, 0, limits.max_seed)
        if args.model.startswith(REGISTRY_SCHEMES):
            use_pipeline_server("inference")  # the server of params.yaml, as every command
        trained = load_model(args.model, pick_device(args.device), use_ema=not args.no_ema)
        trained.precision = args.precision
        options = parse_options(option_pairs, trained, limits)
        # The data stages' limit (configs/data/): the same files are refused everywhere.
        max_pixels = int(cfg.data.max_pixels)
        detect = trained.config.data.crop if args.detect else None
        if args.reference:
            photos, variants = variants_of_references(
                trained, args.reference, args.n, args.seed, options, max_pixels, detect
            )
            per_photo = variants.view(len(photos), args.n, *photos.shape[1:])
            shown = torch.cat([photos[:, None], per_photo], dim=1).flatten(0, 1)
            grid = save_grid(shown, args.out / "references.png", columns=args.n + 1)
            files = save_each(variants, args.out / "references")
        elif args.embedding:
            rows = conditions_from_file(trained, args.embedding)
            cond = rows.repeat_interleave(args.n, dim=0)
            images = generate(trained, len(cond), args.seed, cond=cond, **options)
            grid = save_grid(images, args.out / "embeddings.png", columns=args.n)
            files = save_each(images, args.out / "embeddings")
        elif args.input and args.edit:
            inputs, outputs = reconstruct(trained, args.input, max_pixels, detect)
            variants = trained.variants(inputs, args.n, args.seed).cpu()
            per_input = variants.view(len(inputs), args.n, *inputs.shape[1:])
            rows = torch.cat([inputs[:, None], outputs[:, None], per_input], dim=1)
            grid = save_grid(rows.flatten(0, 1), args.out / "edits.png", columns=args.n + 2)
            files = save_each(variants, args.out / "edits")
        elif args.input:
            inputs, outputs = reconstruct(trained, args.input, max_pixels, detect)
            pairs = torch.stack([inputs, outputs], dim=1).flatten(0, 1)  # input, its output, ...
            columns = 2 * max(1, round(len(inputs) ** 0.5))
            grid = save_grid(pairs, args.out / "reconstructions.png", columns=columns)
            files = save_each(outputs, args.out / "reconstructions")
        else:
            images = generate(trained, args.n, args.seed, **options)
            grid = save_grid(images, args.out / "samples.png")
            files = save_each(images, args.out / "samples")
    print(f"[inference] {grid} and {len(files)} images in {files[0].parent}/")


if __name__ == "__main__":
    main()
