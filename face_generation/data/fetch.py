"""Fetch the configured source's raw files into data/sources/, which `data.dvc` versions.

`python -m face_generation.pipeline` (`make run`) runs this before `dvc repro`, then records
the folder in `data.dvc` (`dvc commit data.dvc`). It is not a stage of dvc.yaml: DVC lets a
path be a `dvc add` output or a stage output, not both, and the raw files are what a team
shares with `dvc push` / `dvc pull data.dvc` instead of downloading them again.

  lfw_subset  writes the 100 real faces scikit-image ships as PNG files (offline; the same
              bytes on every machine with the locked packages);
  celeba      downloads the official aligned CelebA files with gdown (needs network; a file
              already there with the right size and MD5 is kept, an interrupted one resumed);
  folder      nothing to fetch: the images stay where `data.path` points (version them with
              `dvc add`, README "Faces you bring").

The `download` stage then lists the fetched images in data/raw/manifest.csv.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from face_generation.config import config_from_args, stage_parser
from face_generation.data.tables import remove_leftovers, sources_dir
from face_generation.errors import UserError, reported_errors

LFW_SUBSET_FACES = 100  # skimage.data.lfw_subset(): the first 100 of its 200 images are faces


def write_lfw_subset(destination: Path) -> Path:
    """Save scikit-image's 100 LFW faces (25x25 grey, float 0..1) as PNG files."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[:LFW_SUBSET_FACES]
    destination.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(faces):
        path = destination / f"lfw_{index:03d}.png"
        pixels = np.clip(np.rint(face * 255.0), 0, 255).astype(np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, format="PNG")
        if path.is_file() and path.read_bytes() == encoded.getvalue():
            continue  # already there (fetched before, or restored by `dvc pull`)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(encoded.getvalue())
        temporary.replace(path)  # a killed fetch never leaves half a PNG under its real name
    return destination


def run(cfg: DictConfig) -> Path:
    """Fetch the configured source into data/sources/<source>/; the folder data.dvc versions."""
    remove_leftovers(cfg, "fetch")
    sources = sources_dir(cfg)
    sources.mkdir(parents=True, exist_ok=True)  # data.dvc never tracks a missing folder
    source = cfg.data.source
    if source == "lfw_subset":
        folder = write_lfw_subset(sources / "lfw_subset")
        print(f"[fetch] {LFW_SUBSET_FACES} embedded faces in {folder}")
    elif source == "celeba":
        from face_generation.data.celeba import CelebADownloadError, download_celeba

        try:
            files = download_celeba(cfg.data.download, sources / "celeba")
        except CelebADownloadError as error:  # offline, quota, bad checksum: one line, what to do
            raise UserError(str(error)) from error
        print(f"[fetch] CelebA's {len(files)} official files verified in {sources / 'celeba'}")
    elif source == "folder":
        print(f"[fetch] data=folder: nothing to fetch, the images stay in {cfg.data.path}")
    else:
        raise UserError(f"unknown data.source {source!r}: use lfw_subset, folder or celeba")
    return sources


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    with reported_errors("fetch"):
        run(config_from_args(args))


if __name__ == "__main__":
    main()
