"""The offline feature networks load their real weights and behave as the metrics need.

EfficientNet-Lite0 must classify scikit-image's photographs correctly (proof that the
position-by-position weight mapping is right), and dlib's recogniser must tell CelebA
identities apart on crops packed as the pipeline packs them.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from omegaconf import DictConfig, OmegaConf

from face_generation.config import compose
from face_generation.data import crop, images, pack
from face_generation.evaluation.identity import identity_similarity
from face_generation.networks.backbone import build_feature_extractor
from face_generation.networks.dinov2 import load_dinov2
from face_generation.networks.effnet import EfficientNetLite0, load_effnet, map_by_position
from face_generation.networks.face_boxes import FaceBoxes
from face_generation.networks.facenet import load_facenet
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.networks.network import embed_images
from face_generation.networks.weights import (
    WeightsUnavailableError,
    torch_hub_weights,
    unreachable,
)

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def eval_cfg() -> DictConfig:
    return compose("config").eval


@pytest.fixture(scope="module")
def effnet(eval_cfg: DictConfig) -> EfficientNetLite0:
    return load_effnet(eval_cfg.backbones.effnet_lite0)


def imagenet_prediction(network: EfficientNetLite0, photo: np.ndarray) -> tuple[int, float]:
    """Top-1 class and probability of a whole uint8 photograph, squeezed to 224 x 224."""
    with torch.inference_mode():
        probabilities = network.logits(network.preprocess(photo[None])).softmax(dim=-1)[0]
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


def test_backbone_config_builds_effnet_by_default(eval_cfg: DictConfig) -> None:
    network = build_feature_extractor(eval_cfg)
    assert isinstance(network, EfficientNetLite0)
    assert network.cache_key == "effnet_lite0-224px-antialias" and network.num_features == 1280


def test_dinov2_fails_offline_naming_the_switch_and_the_weights_path(
    eval_cfg: DictConfig, tmp_path: Path, closed_port_url: str
) -> None:
    # An empty hub cache and a hub that refuses connections: the offline machine's situation.
    with pytest.raises(WeightsUnavailableError) as raised:
        load_dinov2(
            eval_cfg.backbones.dinov2, timeout_s=5.0, cache_dir=tmp_path, endpoint=closed_port_url
        )
    assert "not in the local cache" in str(raised.value)
    assert "backbone=effnet_lite0" in str(raised.value)
    assert "eval.backbones.dinov2.weights_path" in str(raised.value)


def test_dinov2_loads_a_local_weights_file(eval_cfg: DictConfig, tmp_path: Path) -> None:
    import timm

    # Stand-in weights (random, saved at the checkpoint's 518 px): checks the loading path.
    source: Any = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "dinov2.pth")
    settings = OmegaConf.merge(
        eval_cfg.backbones.dinov2, {"weights_path": str(tmp_path / "dinov2.pth"), "image_size": 112}
    )
    network = load_dinov2(settings, timeout_s=5.0)
    assert torch.equal(network.network.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    features = embed_images(network, np.zeros((2, 40, 40, 3), np.uint8), device="cpu")
    assert features.shape == (2, 384)
    settings.weights_path = str(tmp_path / "absent.pth")
    with pytest.raises(WeightsUnavailableError, match="is not a file"):
        load_dinov2(settings, timeout_s=5.0)


# --- downloading weights ---


@pytest.fixture
def weights_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server of the folder it returns: a weights host that answers."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_probe_tells_a_host_that_answers_from_one_that_refuses(
    weights_server: tuple[str, Path], closed_port_url: str
) -> None:
    url, _ = weights_server
    assert unreachable(f"{url}/weights.pth", timeout_s=5.0) is None
    why = unreachable(f"{closed_port_url}/weights.pth", timeout_s=5.0)
    assert why is not None and "is unreachable" in why
    assert unreachable("not a url", timeout_s=5.0) == "no host in 'not a url'"


def test_weights_are_downloaded_once_into_torch_hubs_cache(
    weights_server: tuple[str, Path],
    closed_port_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    url, folder = weights_server
    torch.save({"weight": torch.arange(3.0)}, folder / "net.pth")
    advice = "set eval.net.weights_path ({})".format
    path = torch_hub_weights(f"{url}/net.pth", None, advice, timeout_s=5.0)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "net.pth"
    assert torch.equal(torch.load(path, weights_only=True)["weight"], torch.arange(3.0))
    # Cached: found without asking the host, which is down now.
    assert torch_hub_weights(f"{closed_port_url}/net.pth", None, advice, 5.0) == path
    with pytest.raises(WeightsUnavailableError, match=r"set eval.net.weights_path \(not cached"):
        torch_hub_weights(f"{closed_port_url}/other.pth", None, advice, timeout_s=5.0)
    with pytest.raises(WeightsUnavailableError, match="is not a file"):
        torch_hub_weights(f"{url}/net.pth", tmp_path / "absent.pth", advice, timeout_s=5.0)
    assert torch_hub_weights(f"{closed_port_url}/x.pth", path, advice, 5.0) == path


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
def dlib_encoder(eval_cfg: DictConfig) -> FaceIdentityEncoder:
    return FaceIdentityEncoder.from_config(eval_cfg.identity, timeout_s=5.0, device="cpu")


def test_dlib_identity_of_an_image_with_itself_is_one(dlib_encoder) -> None:
    face = np.stack([skimage.data.astronaut()[20:220, 140:340]])  # a real face, uint8 RGB
    first, second = dlib_encoder.embed(face), dlib_encoder.embed(face.copy())
    assert first.shape == (1, 128) and dlib_encoder.name == "dlib_resnet_v1"
    result = identity_similarity(first, second, dlib_encoder.threshold)
    assert result.cosine_mean == pytest.approx(1.0, abs=1e-9) and result.same_person_share == 1.0
    # Float input in [-1, 1] is the same face.
    signed = torch.from_numpy(face).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(dlib_encoder.embed(signed, (-1.0, 1.0)), first, atol=1e-6)


@pytest.mark.slow
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


def test_facenet_fails_offline_naming_encoder_dlib_and_the_weights_path(
    eval_cfg: DictConfig, closed_port_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    boxes = FaceBoxes.from_config(eval_cfg.identity)
    with pytest.raises(WeightsUnavailableError) as raised:
        load_facenet(
            eval_cfg.identity.facenet,
            boxes,
            timeout_s=5.0,
            url=f"{closed_port_url}/20180402-114759-vggface2.pt",
        )
    assert "not cached" in str(raised.value)
    assert "encoder=dlib" in str(raised.value)
    assert "eval.identity.facenet.weights_path" in str(raised.value)


def test_facenet_loads_a_local_weights_file(eval_cfg: DictConfig, tmp_path: Path) -> None:
    from facenet_pytorch import InceptionResnetV1

    # Stand-in weights (random) in the released file's layout, classifier included.
    source = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    torch.save(source.state_dict(), tmp_path / "vggface2.pt")
    settings = OmegaConf.merge(
        eval_cfg.identity,
        {"encoder": "facenet", "facenet": {"weights_path": str(tmp_path / "vggface2.pt")}},
    )
    encoder = FaceIdentityEncoder.from_config(settings, timeout_s=5.0, device="cpu")
    embeddings = encoder.embed(np.stack([skimage.data.astronaut()[20:220, 140:340]] * 2))
    assert embeddings.shape == (2, 512) and encoder.name == "facenet_vggface2"
    assert encoder.threshold == eval_cfg.identity.facenet.threshold
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
