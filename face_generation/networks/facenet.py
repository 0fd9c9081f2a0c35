"""FaceNet InceptionResnetV1 (VGGFace2, facenet-pytorch), `eval.identity.encoder=facenet`.

512-d unit-norm identity embeddings. facenet-pytorch ships no weights: they are downloaded
into torch.hub's cache, or given as `eval.identity.facenet.weights_path`; without them
`load_facenet` says to use `encoder=dlib`. The face box (face_boxes.py) is cut out, resized
to `image_size` and standardised as facenet-pytorch's `fixed_image_standardization` does.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from face_generation.networks.face_boxes import FaceBoxes
from face_generation.networks.network import Features, FrozenNetwork
from face_generation.networks.weights import WeightsUnavailableError, torch_hub_weights
from face_generation.runtime.pixels import ImageBatch, ValueRange, resize, to_uint8_nhwc

# What facenet-pytorch 2.5.3's InceptionResnetV1(pretrained="vggface2") downloads.
FACENET_VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"


def facenet_advice(reason: str, option: str = "eval.identity.facenet") -> str:
    """`option`: the config node whose `weights_path` is set."""
    return (
        f"FaceNet (InceptionResnetV1, VGGFace2) weights cannot be loaded: {reason}. Use "
        "encoder=dlib (dlib's face recogniser ships in PyPI wheels and works offline), or "
        "download 20180402-114759-vggface2.pt where there is network and set "
        f"{option}.weights_path=/path/to/20180402-114759-vggface2.pt"
    )


class FaceNet(FrozenNetwork):
    """InceptionResnetV1 (VGGFace2): face crops -> 512-d unit vectors."""

    name = "facenet_vggface2"
    num_features = 512

    def __init__(self, weights_file: Path, image_size: int, boxes: FaceBoxes) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.network = InceptionResnetV1(pretrained=None, classify=False).eval()
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        # The released file carries the VGGFace2 classifier too; embeddings do not use it.
        state = {key: value for key, value in state.items() if not key.startswith("logits.")}
        self.network.load_state_dict(state)
        self.image_size = image_size
        self.boxes = boxes
        self.weights_files = (Path(weights_file),)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.image_size}px-{self.boxes.cache_key}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> each face box resized to image_size, standardised, on the network's device."""
        faces = []
        for image in to_uint8_nhwc(images, value_range):
            image = np.ascontiguousarray(image)
            left, top, right, bottom = self.boxes.box(image)
            face = torch.from_numpy(image[top : bottom + 1, left : right + 1].copy())
            face = face.permute(2, 0, 1)
            face = resize(face[None].float(), self.image_size, antialias=True)
            faces.append((face - 127.5) / 128.0)  # facenet-pytorch's fixed_image_standardization
        size = (0, 3, self.image_size, self.image_size)
        return (torch.cat(faces) if faces else torch.zeros(size)).to(self.device)

    def forward(self, inputs: torch.Tensor) -> Features:
        return Features(embedding=self.network(inputs))  # unit vectors


def load_facenet(
    settings: DictConfig,
    boxes: FaceBoxes,
    timeout_s: float,
    url: str = FACENET_VGGFACE2_URL,
    option: str = "eval.identity.facenet",
) -> FaceNet:
    """From `eval.identity.facenet` (`option` names that node in the advice): `weights_path`,
    torch.hub's cache, or a download from `url`."""
    advice = partial(facenet_advice, option=option)
    if importlib.util.find_spec("facenet_pytorch") is None:
        raise WeightsUnavailableError(advice("facenet-pytorch is not installed"))
    path = torch_hub_weights(url, settings.weights_path, advice, timeout_s)
    try:
        return FaceNet(path, int(settings.image_size), boxes)
    except Exception as error:  # a corrupt or foreign file
        raise WeightsUnavailableError(advice(f"{path}: {error}")) from error
