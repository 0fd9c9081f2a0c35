"""`pack.resize_batch`: the antialiased resize that packs every face, checked against PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_generation.data.pack import resize_batch
from tests.faces import lfw_faces

CELEBA_IMAGES = Path(__file__).parents[1].parent / "shared" / "data" / "celeba-sample-10k"


def as_batch(faces: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 faces as the N x 3 x S x S (channels-last) tensor pack builds."""
    return torch.from_numpy(faces).permute(0, 3, 1, 2)


@pytest.fixture
def celeba_face() -> np.ndarray:
    """The centred square of a real CelebA face (89 x 89 from the 89 x 109 sample)."""
    if not CELEBA_IMAGES.is_dir():
        pytest.skip(f"real face data not found at {CELEBA_IMAGES} (../shared/data beside the repo)")
    path = min((CELEBA_IMAGES / "img_align_celeba").iterdir())
    pixels = np.asarray(Image.open(path).convert("RGB"))
    top = (pixels.shape[0] - pixels.shape[1]) // 2
    return pixels[top : top + pixels.shape[1]].copy()  # writable, as torch wants


@pytest.mark.parametrize("resolution", [64, 32, 16])
def test_antialiased_shrink_matches_pil_bilinear(celeba_face: np.ndarray, resolution: int) -> None:
    ours = resize_batch(as_batch(celeba_face[None]), resolution, antialias=True)[0]
    # PIL's BILINEAR widens its triangle filter when shrinking: antialiased, like ours.
    pil = np.asarray(
        Image.fromarray(celeba_face).resize((resolution, resolution), Image.Resampling.BILINEAR)
    )
    assert ours.shape == (resolution, resolution, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - pil.astype(int))
    assert difference.mean() < 1.5, difference.mean()
    assert difference.max() <= 2


def test_without_antialias_a_fine_pattern_aliases() -> None:
    # A one-pixel checkerboard shrunk 3.2x: the antialiased filter averages it to mid-grey;
    # plain bilinear weighs only the two nearest pixels, so a moire of stark greys appears.
    checkerboard = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    faces = np.repeat(checkerboard[None, :, :, None], 3, axis=3)
    smooth = resize_batch(as_batch(faces), 20, antialias=True).astype(int)
    aliased = resize_batch(as_batch(faces), 20, antialias=False).astype(int)
    assert np.abs(smooth - 127.5).max() <= 4
    assert aliased.std() > 20


def test_a_constant_image_stays_constant() -> None:
    faces = np.full((2, 89, 89, 3), 137, np.uint8)
    for resolution in (64, 32, 128):
        for antialias in (True, False):
            resized = resize_batch(as_batch(faces), resolution, antialias)
            assert resized.shape == (2, resolution, resolution, 3)
            assert (resized == 137).all()


def test_upscaling_the_embedded_25px_faces_to_32() -> None:
    grey = lfw_faces(4)  # 4 x 25 x 25
    faces = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=3))
    resized = resize_batch(as_batch(faces), 32, antialias=True)
    assert resized.shape == (4, 32, 32, 3) and resized.dtype == np.uint8
    assert (resized[..., 0] == resized[..., 2]).all()  # grey stays grey
    for face, ours in zip(grey, resized, strict=True):
        pil = np.asarray(Image.fromarray(face).resize((32, 32), Image.Resampling.BILINEAR))
        assert np.abs(ours[..., 0].astype(int) - pil.astype(int)).mean() < 1.5


def test_a_batch_resizes_each_face_on_its_own(celeba_face: np.ndarray) -> None:
    faces = np.stack([celeba_face, 255 - celeba_face, np.zeros_like(celeba_face)])
    batch = resize_batch(as_batch(faces), 32, antialias=True)
    for face, resized in zip(faces, batch, strict=True):
        alone = resize_batch(as_batch(np.ascontiguousarray(face[None])), 32, antialias=True)[0]
        np.testing.assert_array_equal(resized, alone)
