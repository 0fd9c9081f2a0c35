"""Condition rows for photos no stage has seen (a reference photo at inference), computed as
the features stage computed the stored rows: the same network, settings and preprocessing.

A conditional model names its array by the network that wrote it (runtime/conditioning.py):
    <backbone>/embedding   the `features` stage's global backbone embedding (configs/backbone/)
    <encoder>/identity     the `identity` stage's unit identity embeddings (configs/encoder/)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

IDENTITY_ENCODERS = ("dlib", "facenet", "effnet_contrastive")  # configs/encoder/


def computes_from_photos(settings: DictConfig, array: str) -> bool:
    """Whether `embed_faces` computes this array with this network: a backbone's (effnet_lite0,
    dinov2_*) `embedding`, an encoder's `identity`."""
    name = str(settings.get("name"))
    if array == "embedding":
        return name == "effnet_lite0" or name.startswith("dinov2_")
    return array == "identity" and name in IDENTITY_ENCODERS


def identity_network(settings: DictConfig) -> torch.nn.Module:
    """The torch face encoder of the `encoder` group (facenet or effnet_contrastive)."""
    from face_generation.networks.contrastive import load_contrastive_encoder
    from face_generation.networks.face_boxes import FaceBoxes
    from face_generation.networks.facenet import FACENET_VGGFACE2_URL, load_facenet

    if settings.name == "facenet":
        boxes = FaceBoxes.from_config(settings)
        url = settings.url or FACENET_VGGFACE2_URL
        timeout_s = float(settings.network_timeout_s)
        return load_facenet(settings, boxes, timeout_s, url, option="encoder")
    if settings.name == "effnet_contrastive":
        return load_contrastive_encoder(settings)
    raise ValueError(
        f"unknown encoder={settings.name!r}; choose dlib, facenet or effnet_contrastive"
    )


@torch.inference_mode()
def embed_faces(settings: DictConfig, array: str, faces: np.ndarray) -> np.ndarray:
    """float32 N×D rows of the `array` (`computes_from_photos`) of uint8 N×H×W×3 faces
    (packed-style crops), by the network of `settings` (a backbone's or an encoder's config).
    A face the network fails on gets zeros, as its row in the stage's array would."""
    if array == "embedding":
        from face_generation.networks.backbone import load_pyramid_backbone

        backbone = load_pyramid_backbone(settings)
        return backbone.forward(backbone.preprocess(faces)).embedding.float().cpu().numpy()
    if array != "identity":
        raise ValueError(f"no network computes the {array!r} array from photos")
    if settings.name == "dlib":
        from face_generation.features.dlib_rows import DlibDescriber
        from face_generation.networks.dlib_face import dlib_files

        describer = DlibDescriber(
            *dlib_files(settings),
            str(settings.face_box),
            list(settings.fallback_box),
            int(settings.detector_upsample),
        )
        return describer.describe(faces).vectors
    network: Any = identity_network(settings)
    embedding = network.forward(network.preprocess(faces)).embedding.float()
    return F.normalize(embedding, dim=1).cpu().numpy()
