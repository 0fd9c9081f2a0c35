"""The offline feature networks load their real weights and behave as the metrics need.

EfficientNet-Lite0 must classify scikit-image's photographs correctly (proof that the
position-by-position weight mapping is right), and dlib's recogniser must tell CelebA
identities apart on crops packed as the pipeline packs them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch

from face_generation.config import compose
from face_generation.data import crop, images, pack
from face_generation.evaluation.identity import identity_similarity
from face_generation.features.effnet import (
    DinoV2,
    EfficientNetLite0,
    build_feature_extractor,
    embed_images,
    map_by_position,
)
from face_generation.features.identity import FaceIdentityEncoder
from face_generation.features.weights import WeightsUnavailableError, unreachable

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0:
    return EfficientNetLite0()


def imagenet_prediction(network: EfficientNetLite0, photo: np.ndarray) -> tuple[int, float]:
    """Top-1 class and probability of a whole photograph, squeezed to 224 x 224, in [-1, 1]."""
    pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        probabilities = network.logits(pixels).softmax(dim=-1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


def test_effnet_weights_classify_chelsea_as_a_cat_and_coffee_as_espresso(effnet) -> None:
    cat, cat_probability = imagenet_prediction(effnet, skimage.data.chelsea())
    coffee, coffee_probability = imagenet_prediction(effnet, skimage.data.coffee())
    assert cat in IMAGENET_CATS and coffee in IMAGENET_COFFEE, (cat, coffee)
    # The values measured when the mapping was verified (class 285 p 0.79, class 967 p 0.88).
    assert cat == 285 and cat_probability > 0.7
    assert coffee == 967 and coffee_probability > 0.8


def test_effnet_features_are_pooled_1280_d_and_batch_independent(effnet) -> None:
    photos = np.stack(
        [
            skimage.data.chelsea()[:200, :200],
            skimage.data.coffee()[:200, :200],
            skimage.data.astronaut()[:200, :200],
        ]
    )
    together = embed_images(effnet, photos, batch_size=3, device="cpu")
    one_by_one = embed_images(effnet, photos, batch_size=1, device="cpu")
    assert together.shape == (3, 1280) and together.dtype == np.float32
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(together[0] - together[1]) > 1  # different photographs differ
    assert embed_images(effnet, photos[:0], device="cpu").shape == (0, 1280)


def test_position_mapping_refuses_another_architecture() -> None:
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    with pytest.raises(ValueError, match="does not fit"):
        map_by_position(OrderedDict(x=torch.zeros(3, 2), y=torch.zeros(4)), target)
    with pytest.raises(ValueError, match="hold 1 tensors"):
        map_by_position(OrderedDict(x=torch.zeros(2, 3)), target)
    mapped = map_by_position(OrderedDict(x=torch.ones(2, 3), y=torch.ones(4)), target)
    assert list(mapped) == ["a", "b"] and bool(mapped["a"].eq(1).all())


def test_backbone_config_builds_effnet_by_default() -> None:
    network = build_feature_extractor(compose("config").eval)
    assert isinstance(network, EfficientNetLite0)
    assert network.cache_key == "effnet_lite0-224px-antialias" and network.num_features == 1280


def test_dinov2_fails_offline_naming_the_switch_and_the_weights_path(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    if unreachable(huggingface_hub.constants.ENDPOINT, timeout_s=3.0) is None:
        pytest.skip("the Hugging Face hub is reachable: the offline path cannot be exercised")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as raised:
        DinoV2(timeout_s=5.0)
    assert "backbone=effnet_lite0" in str(raised.value)
    assert "eval.backbones.dinov2.weights_path" in str(raised.value)
    assert time.monotonic() - started < 10


def test_dinov2_loads_a_local_weights_file(tmp_path: Path) -> None:
    import timm

    # Stand-in weights (random, saved at the checkpoint's 518 px): checks the loading path.
    source: Any = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "dinov2.pth")
    network = DinoV2(weights_path=tmp_path / "dinov2.pth", image_size=112)
    assert torch.equal(network.network.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    features = embed_images(network, np.zeros((2, 40, 40, 3), np.uint8), device="cpu")
    assert features.shape == (2, 384)
    with pytest.raises(WeightsUnavailableError, match="is not a file"):
        DinoV2(weights_path=tmp_path / "absent.pth")


# --- face identity ---


def packed_celeba(paths: list[Path], resolution: int = 64) -> np.ndarray:
    """Faces cropped and resized as the crop (center) and pack stages do: uint8 N x R x R x 3."""
    faces = []
    for path in paths:
        pixels = images.decode_rgb(images.read_bytes(str(path)))
        left, top, right, bottom = crop.center_box(pixels.shape[1], pixels.shape[0], 1.0, 0.0)
        faces.append(pixels[top:bottom, left:right])
    return pack.resize_batch(
        torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2), resolution, True
    )


def celeba_pairs(folder: Path, count: int) -> tuple[list[Path], list[Path], list[Path]]:
    """Deterministic pairs: (a[i], same[i]) one person, (a[i], other[i]) two people."""
    people: dict[str, list[Path]] = defaultdict(list)
    for line in (folder / "identity_CelebA.txt").read_text().splitlines():
        name, person = line.split()
        path = folder / "img_align_celeba" / name
        if path.is_file():
            people[person].append(path)
    repeated = sorted(person for person, paths in people.items() if len(paths) >= 2)[:count]
    first = [people[person][0] for person in repeated]
    same = [people[person][1] for person in repeated]
    return first, same, first[1:] + first[:1]


@pytest.fixture(scope="module")
def dlib_encoder() -> FaceIdentityEncoder:
    return FaceIdentityEncoder.from_config(compose("config").eval.identity, device="cpu")


def test_dlib_identity_of_an_image_with_itself_is_one(dlib_encoder) -> None:
    face = np.stack([skimage.data.astronaut()[20:220, 140:340]])  # a real face, uint8 RGB
    first, second = dlib_encoder.embed(face), dlib_encoder.embed(face.copy())
    assert first.shape == (1, 128) and dlib_encoder.dim == 128
    result = identity_similarity(first, second, dlib_encoder.threshold)
    assert result.cosine_mean == pytest.approx(1.0, abs=1e-9) and result.same_person_share == 1.0
    # Float input in [-1, 1] is the same face.
    signed = torch.from_numpy(face).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(dlib_encoder.embed(signed, (-1.0, 1.0)), first, atol=1e-6)


@pytest.mark.shared_data
def test_dlib_tells_celeba_identities_apart(celeba_sample: Path, dlib_encoder) -> None:
    first, same, other = celeba_pairs(celeba_sample, count=12)
    embeddings = {
        name: dlib_encoder.embed(packed_celeba(paths))
        for name, paths in (("first", first), ("same", same), ("other", other))
    }
    threshold = dlib_encoder.threshold
    different = identity_similarity(embeddings["first"], embeddings["other"], threshold)
    alike = identity_similarity(embeddings["first"], embeddings["same"], threshold)
    # Most pairs of different people lie beyond dlib's same-person distance (0.98 measured on
    # 60 pairs); most pairs of one person within it (0.8 measured: CelebA's poses vary).
    assert 1 - different.same_person_share >= 0.8, different
    assert alike.same_person_share >= 0.5, alike
    assert alike.distance_mean < different.distance_mean
    assert dlib_encoder.faces_detected > 0  # the detector finds most 64 px faces


def test_facenet_fails_offline_naming_encoder_dlib_and_the_weights_path(tmp_path) -> None:
    from face_generation.features.identity import FACENET_VGGFACE2_URL

    if unreachable(FACENET_VGGFACE2_URL, timeout_s=3.0) is None:
        pytest.skip("the FaceNet weights host is reachable: the offline path cannot be exercised")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache
    try:
        started = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as raised:
            FaceIdentityEncoder(encoder="facenet", timeout_s=5.0)
    finally:
        torch.hub.set_dir(previous)
    assert "encoder=dlib" in str(raised.value)
    assert "eval.identity.facenet.weights_path" in str(raised.value)
    assert time.monotonic() - started < 10


def test_facenet_loads_a_local_weights_file(tmp_path: Path) -> None:
    from facenet_pytorch import InceptionResnetV1

    # Stand-in weights (random) in the released file's layout, classifier included.
    source = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    torch.save(source.state_dict(), tmp_path / "vggface2.pt")
    encoder = FaceIdentityEncoder(
        encoder="facenet", weights_path=tmp_path / "vggface2.pt", threshold=1.1, device="cpu"
    )
    embeddings = encoder.embed(np.stack([skimage.data.astronaut()[20:220, 140:340]] * 2))
    assert embeddings.shape == (2, 512) and encoder.name == "facenet_vggface2"
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
