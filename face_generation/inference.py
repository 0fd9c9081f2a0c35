"""Generate faces from a trained model: `python -m face_generation.inference MODEL`.

MODEL is a checkpoint written by training (models/<name>/model.pt, or any
models/<name>/checkpoints/step-N.pt) or an MLflow model URI (runs:/<run id>/<path>,
models:/<name>/<version>, or a local MLflow model folder); MLflow URIs are resolved against
MLFLOW_TRACKING_URI.

Writes OUT/samples.png (a grid of all samples) and OUT/samples/0000.png, 0001.png, ... (one
per sample). The same --seed gives the same images. For the VAE, --input FILE... reconstructs
those images instead: OUT/reconstructions.png (each input beside its reconstruction) and
OUT/reconstructions/0000.png, ...

Examples:
  python -m face_generation.inference models/dcgan/model.pt --n 64 --seed 1
  python -m face_generation.inference models/vae/model.pt --input face1.jpg face2.jpg
  python -m face_generation.inference models:/face_generation-vae/1 --out plots/registered
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from face_generation.training.checkpoint import CheckpointError, load_generator
from face_generation.training.device import pick_device
from face_generation.training.families import sample_images
from face_generation.training.images import load_faces, save_each, save_grid


def is_mlflow_uri(model: str) -> bool:
    """runs:/..., models:/..., any scheme:/... URI, or a folder holding an MLmodel file."""
    if Path(model).is_file():
        return False
    return (Path(model) / "MLmodel").is_file() or re.match(
        r"^[a-z][a-z0-9+.-]*:/", model
    ) is not None


def load_model(model: str, device: torch.device, use_ema: bool = True) -> tuple[nn.Module, int]:
    """The generator network and its resolution, from a checkpoint or an MLflow model URI."""
    if is_mlflow_uri(model):
        import mlflow.pyfunc  # imported only when needed: it takes seconds

        from face_generation.serving.pyfunc import GeneratorModel

        python_model = mlflow.pyfunc.load_model(model).unwrap_python_model()
        if not isinstance(python_model, GeneratorModel) or python_model.config is None:
            raise SystemExit(f"{model} is not a face_generation generator model")
        assert python_model.network is not None
        return python_model.network.to(device), int(python_model.config.data.resolution)
    network, cfg = load_generator(model, device, use_ema=use_ema)
    return network, int(cfg.data.resolution)


def generate(network: nn.Module, n: int, seed: int) -> torch.Tensor:
    """n samples in [-1, 1]; the noise comes from a CPU generator seeded with `seed`."""
    return sample_images(network, n, generator=torch.Generator().manual_seed(seed))


def reconstruct(
    network: nn.Module, paths: Sequence[Path], resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, reconstructions), both N×3×R×R in [-1, 1]."""
    if not hasattr(network, "reconstruct"):
        raise SystemExit(
            f"--input needs a model that reconstructs (the VAE); this one is a {type(network).__name__}"
        )
    inputs = load_faces(paths, resolution)
    device = next(network.parameters()).device
    network.eval()
    with torch.no_grad():
        outputs = cast(Any, network).reconstruct(inputs.to(device))
    return inputs, outputs.cpu()


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
        "--out", type=Path, default=Path("plots"), help="output folder (default plots)"
    )
    parser.add_argument(
        "--input", type=Path, nargs="+", metavar="IMAGE", help="VAE only: images to reconstruct"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument(
        "--no-ema", action="store_true", help="checkpoints: use the trained weights, not their EMA"
    )
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    try:
        network, resolution = load_model(
            args.model, pick_device(args.device), use_ema=not args.no_ema
        )
        if args.input:
            inputs, outputs = reconstruct(network, args.input, resolution)
            pairs = torch.stack([inputs, outputs], dim=1).flatten(
                0, 1
            )  # input, its reconstruction, ...
            columns = 2 * max(1, round(len(inputs) ** 0.5))
            grid = save_grid(pairs, args.out / "reconstructions.png", columns=columns)
            files = save_each(outputs, args.out / "reconstructions")
        else:
            images = generate(network, args.n, args.seed)
            grid = save_grid(images, args.out / "samples.png")
            files = save_each(images, args.out / "samples")
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"[inference] error: {error}") from None
    print(f"[inference] {grid} and {len(files)} images in {files[0].parent}/")


if __name__ == "__main__":
    main()
