"""Face-identity embeddings by the recogniser `eval.identity.encoder` names: one vector per face.

`encoder=dlib` (default, works offline): dlib's ResNet face recogniser, 128-d (dlib_face.py).
`encoder=facenet`: FaceNet InceptionResnetV1 (VGGFace2), 512-d, needs downloaded weights
(facenet.py). Both start from the face box of face_boxes.py. Two faces closer than the
encoder's `threshold` (Euclidean) count as one person.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.networks.dlib_face import DlibFaceRecogniser, load_dlib
from face_generation.networks.face_boxes import FaceBoxes
from face_generation.networks.facenet import FaceNet, load_facenet
from face_generation.runtime.device import pick_device
from face_generation.runtime.pixels import ImageBatch, ValueRange, batches


class FaceIdentityEncoder:
    """Identity embeddings of aligned face crops (`embed`), and the same-person threshold."""

    def __init__(self, network: DlibFaceRecogniser | FaceNet, threshold: float) -> None:
        self.network = network
        self.threshold = float(threshold)

    @classmethod
    def from_config(
        cls, cfg: DictConfig, timeout_s: float, device: str | torch.device = "auto"
    ) -> FaceIdentityEncoder:
        """From the `eval.identity` config group; raises `WeightsUnavailableError` without weights."""
        boxes = FaceBoxes.from_config(cfg)
        network: DlibFaceRecogniser | FaceNet
        if cfg.encoder == "dlib":
            network = load_dlib(cfg.dlib, boxes)
        elif cfg.encoder == "facenet":
            network = load_facenet(cfg.facenet, boxes, timeout_s)
        else:
            raise ValueError(
                f"unknown eval.identity.encoder={cfg.encoder!r}; choose dlib or facenet"
            )
        network.to(pick_device(device))
        return cls(network, cfg[cfg.encoder].threshold)

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def faces_detected(self) -> int:
        """How many embedded faces the detector found (the rest used the fallback box)."""
        return self.network.boxes.faces_detected

    @torch.inference_mode()
    def embed(
        self, images: ImageBatch, value_range: ValueRange = None, progress: str | None = None
    ) -> np.ndarray:
        """N x D float32 embeddings of RGB faces (uint8 N x H x W x 3, or float NCHW + range).

        One face at a time: dlib takes one anyway, and FaceNet's numbers must not depend on
        which faces share its batch.
        """
        rows = []
        for face in tqdm(
            batches(images, 1),
            total=len(images),
            desc=progress,
            unit="img",
            disable=progress is None,
        ):
            features = self.network.forward(self.network.preprocess(face, value_range))
            rows.append(features.embedding[0].cpu().numpy())
        if not rows:
            return np.zeros((0, self.network.num_features), np.float32)
        return np.stack(rows).astype(np.float32)
