"""Real faces packed as the pack stage writes them, and configs that train on them (not a test
module: the fixtures in conftest.py and the tests import from here).

The faces are the first CelebA-sample images centre-cropped, or scikit-image's embedded LFW
faces where ../shared/data is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from face_generation.config import compose

REPO = Path(__file__).parents[1]
CELEBA_IMAGES = REPO.parent / "shared" / "data" / "celeba-sample-10k" / "img_align_celeba"
RESOLUTION = 32
SPLIT_SIZES = {"train": 48, "val": 8, "test": 8}


def lfw_faces(count: int, offset: int = 0) -> np.ndarray:
    """count of the 100 real 25×25 grey faces scikit-image ships (its wheel: always here), uint8."""
    from skimage.data import lfw_subset

    return (lfw_subset()[offset : offset + count] * 255).round().astype(np.uint8)


def real_faces(count: int, resolution: int) -> np.ndarray:
    """count real faces, uint8 N×R×R×3: CelebA-sample centre crops, else scikit-image's LFW."""
    if CELEBA_IMAGES.is_dir():
        faces = []
        for path in sorted(CELEBA_IMAGES.glob("*.jpg"))[:count]:
            with Image.open(path) as image:  # 89×109: the 89×89 square around the face
                top = (image.height - image.width) // 2
                square = image.convert("RGB").crop((0, top, image.width, top + image.width))
                faces.append(
                    np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS))
                )
        return np.stack(faces)
    gray = lfw_faces(count)
    resized = [
        np.asarray(Image.fromarray(face).resize((resolution, resolution), Image.Resampling.LANCZOS))
        for face in gray
    ]
    return np.repeat(np.stack(resized)[..., None], 3, axis=3)


def write_packed(data_dir: Path, resolution: int = RESOLUTION) -> Path:
    """data_dir/packed/<res>/{train,val,test}.npy and meta.json, as the pack stage writes them."""
    faces = real_faces(sum(SPLIT_SIZES.values()), resolution)
    packed = data_dir / "packed" / str(resolution)
    packed.mkdir(parents=True)
    start = 0
    for split, size in SPLIT_SIZES.items():
        np.save(packed / f"{split}.npy", faces[start : start + size])
        start += size
    meta = {"resolution": resolution, "counts": SPLIT_SIZES, "data_hash": "test"}
    (packed / "meta.json").write_text(json.dumps(meta))
    return data_dir


def identities(count: int) -> np.ndarray:
    """Made-up identity codes for `count` rows: people of three faces, then unknown (-1) rows."""
    known = (count * 3 // 4) // 3 * 3
    return np.r_[np.arange(known) // 3, np.full(count - known, -1)].astype(np.int64)


def write_labels(data_dir: Path, resolution: int = RESOLUTION) -> Path:
    """data_dir/features/<res>/labels/ for the faces of `write_packed`, as the labels stage
    writes it, with `identities` as the people (different people in each split)."""
    from face_generation.data.packed import features_dir, load_split
    from face_generation.features.stage import write_labels as write_label_folder

    packed = data_dir / "packed" / str(resolution)
    faces = {split: load_split(packed, split, resolution) for split in SPLIT_SIZES}
    offsets = np.cumsum([0, *SPLIT_SIZES.values()])
    labels = {
        split: np.where(codes >= 0, codes + offset, -1)
        for (split, size), offset in zip(SPLIT_SIZES.items(), offsets, strict=False)
        for codes in [identities(size)]
    }
    meta = {"stage": "labels", "data_hash": "test", "network": {"name": "labels"}}
    return write_label_folder(features_dir(data_dir, resolution), faces, labels, meta, seed=0)


# Per family: settings that keep its smoke training cheap (the encoder's backbone at the
# faces' own 32 px instead of upsampling them; diffusion unconditional, without the backbone's
# features: tests/test_conditional_diffusion.py trains it on them; its preview grids with 10
# sampler steps); the progressive generator
# on its backbone at 32 px with two grids (`write_backbone_features`), a new level every 2 steps;
# cond_gan and the translator on the tiny family's 4-d embedding instead of the backbone's.
BACKBONE_32PX = ["backbone.image_size=32", "features.grids=[2,4]", "features.device=cpu"]
PROGRESSIVE = [
    *BACKBONE_32PX,
    "model.pyramid.weights=[1.0,1.0]",
    "model.pyramid.every=1",
    "model.grow_every=2",
    "model.fade_steps=1",
]
TINY_EMBEDDING = "{network: {name: tiny}, array: embedding}"
SMOKE = {
    "encoder": ["model.image_size=32"],
    "diffusion": ["model.condition=null", "model.sampling.steps=10"],
    "progressive": PROGRESSIVE,
    "cond_gan": [f"model.condition={TINY_EMBEDDING}", "model.cond_dim=4"],
    "translator": [f"model.inputs.features={TINY_EMBEDDING}", "model.features_dim=4"],
}


def trained_beside(model: str, data_dir: Path) -> list[str]:
    """The checkpoints a family's training reads (Family.trained_after: the face encoder, the
    Imitator), taken from the models trained beside `data_dir` (conftest's `trained`: root/data
    and root/models), wherever this run writes its own."""
    models = data_dir.parent / "models"
    encoder = f"model.identity_network.checkpoint={models / 'encoder' / 'model.pt'}"
    imitator = f"model.imitator_checkpoint={models / 'cond_gan' / 'model.pt'}"
    reads = {"cond_gan": [encoder], "translator": [encoder, imitator]}
    return reads.get(model, [])


def overrides(model: str, data_dir: Path, models_dir: Path, *extra: str) -> list[str]:
    """Train `model` for a few steps on the CPU (train=smoke), untracked, on `data_dir`."""
    return [
        f"model={model}",
        "train=smoke",
        "train.device=cpu",
        f"paths.data={data_dir}",
        f"paths.models={models_dir}",
        "tracking.enabled=false",
        *SMOKE.get(model, []),
        *trained_beside(model, data_dir),
        *extra,
    ]


def write_backbone_features(data_dir: Path) -> Path:
    """data_dir/features/<res>/effnet_lite0/: the features stage's backbone arrays of the faces
    of `write_packed`, with the progressive generator's smoke settings (BACKBONE_32PX)."""
    from face_generation.features.stage import run as run_features

    cfg = config("progressive", data_dir, data_dir.parent / "unused")
    return run_features(cfg, ["backbone"])["backbone"]


def config(model: str, data_dir: Path, models_dir: Path, *extra: str) -> DictConfig:
    return compose("config", overrides(model, data_dir, models_dir, *extra))
