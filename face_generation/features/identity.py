"""Face-identity embeddings: one vector per face, close for the same person.

`encoder=dlib` (default, works offline): dlib's ResNet face recogniser, 128-d, from the
`dlib-bin` and `face-recognition-models` wheels; two faces of one person lie closer than
Euclidean distance 0.6 (dlib's threshold). The faces are already cropped, so no detector is
needed to find them, but the landmark model needs a box of the size dlib's detector gives:
the whole image of a CelebA crop (hair, neck, background) is 1.7x too large and makes the
descriptors of different people collide (40% of pairs of different people lie beyond 0.6,
against 98% with a face-sized box). So `face_box=detect` runs dlib's HOG detector and falls
back to `fallback_box` (fractions of the image: where the detector finds faces in the
project's CelebA crops) when it finds none; `face_box=fixed` always uses `fallback_box`.

`encoder=facenet`: FaceNet InceptionResnetV1 trained on VGGFace2 (facenet-pytorch), 512-d,
unit norm; facenet-pytorch downloads its weights, so offline it needs
`eval.identity.facenet.weights_path`, or says to use `encoder=dlib`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.features.pixels import (
    ImageBatch,
    ValueRange,
    resolve_device,
    to_uint8_nhwc,
)
from face_generation.features.weights import (
    WeightsUnavailableError,
    local_file,
    torch_hub_checkpoint,
    unreachable,
)

DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
# What facenet-pytorch 2.5.3's InceptionResnetV1(pretrained="vggface2") downloads (and caches
# under torch.hub's checkpoints directory by this file name).
FACENET_VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
FACENET_VGGFACE2_CLASSES = 8631

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels, inclusive (dlib's convention)


def dlib_model_dir() -> Path:
    """The `face-recognition-models` data folder, found without importing the package.

    (Its __init__ imports pkg_resources, which recent setuptools no longer provides.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            "dlib face models: the package face-recognition-models is not installed "
            "(pip install face-recognition-models), and eval.identity.dlib.weights_path "
            f"(a folder holding {DLIB_RECOGNITION_FILE} and {DLIB_LANDMARKS_FILE}) is not set"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def relative_box(fractions: Sequence[float], width: int, height: int) -> Box:
    left, top, right, bottom = fractions
    return (
        round(left * width),
        round(top * height),
        max(round(left * width), round(right * width) - 1),
        max(round(top * height), round(bottom * height) - 1),
    )


def facenet_advice(reason: str) -> str:
    return (
        f"FaceNet (InceptionResnetV1, VGGFace2) weights cannot be loaded: {reason}. Use "
        "encoder=dlib (dlib's face recogniser ships in PyPI wheels and works offline), or "
        "download 20180402-114759-vggface2.pt where there is network and set "
        "eval.identity.facenet.weights_path=/path/to/20180402-114759-vggface2.pt"
    )


def load_facenet(weights_path: str | Path | None, timeout_s: float) -> torch.nn.Module:
    """InceptionResnetV1 (VGGFace2) from a local file, torch.hub's cache, or a download."""
    from facenet_pytorch import InceptionResnetV1

    cached = torch_hub_checkpoint(FACENET_VGGFACE2_URL)
    if weights_path or cached.is_file():
        path = (
            local_file(weights_path, "FaceNet", "eval.identity.facenet.weights_path")
            if weights_path
            else cached
        )
        network = InceptionResnetV1(pretrained=None, classify=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The released file carries the VGGFace2 classifier too; embeddings do not use it.
        state = {key: value for key, value in state.items() if not key.startswith("logits.")}
        network.load_state_dict(state)
        return network
    why = unreachable(FACENET_VGGFACE2_URL, timeout_s)
    if why:
        raise WeightsUnavailableError(facenet_advice(f"not cached at {cached} and {why}"))
    try:
        return InceptionResnetV1(pretrained="vggface2", classify=False)
    except Exception as error:  # the download itself (host answered the probe, then failed)
        raise WeightsUnavailableError(facenet_advice(str(error))) from error


class FaceIdentityEncoder:
    """Identity embeddings of aligned face crops (`embed`), and the same-person threshold."""

    def __init__(
        self,
        encoder: str = "dlib",
        weights_path: str | Path | None = None,
        threshold: float = 0.6,
        face_box: str = "detect",
        fallback_box: Sequence[float] = (0.22, 0.31, 0.81, 0.90),
        detector_upsample: int = 2,
        facenet_image_size: int = 160,
        timeout_s: float = 10.0,
        device: str | torch.device | None = "auto",
    ) -> None:
        import dlib

        if face_box not in ("detect", "fixed"):
            raise ValueError(f"eval.identity.face_box must be detect or fixed, not {face_box!r}")
        self.encoder = encoder
        self.threshold = float(threshold)
        self.face_box = face_box
        self.fallback_box = tuple(float(v) for v in fallback_box)
        self.detector_upsample = detector_upsample
        self.facenet_image_size = facenet_image_size
        self.device = resolve_device(device)
        self.detector = dlib.get_frontal_face_detector() if face_box == "detect" else None
        self.faces_detected = 0  # how many embedded faces the detector found (the rest: fallback)
        if encoder == "dlib":
            folder = Path(weights_path).expanduser() if weights_path else dlib_model_dir()
            recognition = local_file(
                folder / DLIB_RECOGNITION_FILE,
                "dlib face recogniser",
                "eval.identity.dlib.weights_path",
            )
            landmarks = local_file(
                folder / DLIB_LANDMARKS_FILE, "dlib landmarks", "eval.identity.dlib.weights_path"
            )
            self.landmarks = dlib.shape_predictor(str(landmarks))
            self.recogniser = dlib.face_recognition_model_v1(str(recognition))
            self.name, self.dim = "dlib_resnet_v1", 128
        elif encoder == "facenet":
            self.network = load_facenet(weights_path, timeout_s).eval().to(self.device)
            self.name, self.dim = "facenet_vggface2", 512
        else:
            raise ValueError(f"unknown eval.identity.encoder={encoder!r}; choose dlib or facenet")

    @classmethod
    def from_config(
        cls, cfg: DictConfig, timeout_s: float = 10.0, device: str = "auto"
    ) -> FaceIdentityEncoder:
        """From the `eval.identity` config group."""
        settings: Any = cfg.get(cfg.encoder)
        return cls(
            encoder=cfg.encoder,
            weights_path=settings.weights_path,
            threshold=settings.threshold,
            face_box=cfg.face_box,
            fallback_box=list(cfg.fallback_box),
            detector_upsample=cfg.detector_upsample,
            facenet_image_size=cfg.facenet.image_size,
            timeout_s=timeout_s,
            device=device,
        )

    def box(self, image: np.ndarray) -> Box:
        """The face box of one H x W x 3 uint8 image: the detector's largest, else the fallback."""
        height, width = image.shape[:2]
        if self.detector is not None:
            found = self.detector(image, self.detector_upsample)
            if len(found):
                largest = max(found, key=lambda rectangle: rectangle.area())
                self.faces_detected += 1
                return (
                    max(largest.left(), 0),
                    max(largest.top(), 0),
                    min(largest.right(), width - 1),
                    min(largest.bottom(), height - 1),
                )
        return relative_box(self.fallback_box, width, height)

    def embed(
        self, images: ImageBatch, value_range: ValueRange = None, progress: str | None = None
    ) -> np.ndarray:
        """N x dim float32 embeddings of RGB faces (uint8 N x H x W x 3, or float NCHW + range)."""
        faces = to_uint8_nhwc(images, value_range)
        rows = []
        for image in tqdm(faces, desc=progress, unit="img", disable=progress is None):
            image = np.ascontiguousarray(image)
            rows.append(
                self.embed_dlib(image) if self.encoder == "dlib" else self.embed_facenet(image)
            )
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def embed_dlib(self, image: np.ndarray) -> np.ndarray:
        import dlib

        shape = self.landmarks(image, dlib.rectangle(*self.box(image)))
        # dlib aligns a 150 x 150 face chip on the 5 landmarks, then runs its ResNet.
        return np.asarray(self.recogniser.compute_face_descriptor(image, shape))

    @torch.inference_mode()
    def embed_facenet(self, image: np.ndarray) -> np.ndarray:
        left, top, right, bottom = self.box(image)
        face = torch.from_numpy(image[top : bottom + 1, left : right + 1]).permute(2, 0, 1)[None]
        face = torch.nn.functional.interpolate(
            face.float(), size=(self.facenet_image_size,) * 2, mode="bilinear", antialias=True
        )
        # facenet-pytorch's fixed_image_standardization; the network returns unit vectors.
        return self.network(((face - 127.5) / 128.0).to(self.device))[0].cpu().numpy()
