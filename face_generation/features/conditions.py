"""Feature rows as conditions: which array a conditional model reads, and the same rows for
photos no stage has seen (a reference photo at inference), computed as the stage computed them.

A model's `condition` setting names a kind, resolved against the whole config:
    identity   <encoder.name>/identity    the `identity` stage's unit embeddings
    backbone   <backbone.name>/embedding  the `features` stage's global backbone embedding
    NET/ARRAY  that array as it is         any row-per-face feature array (the tests' own)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

CONDITION_KINDS = ("identity", "backbone")


def condition_array(cfg: DictConfig, kind: str) -> str:
    """The feature array (`<network>/<array>`) a `condition: kind` model trains on."""
    if kind == "identity":
        return f"{cfg.encoder.name}/identity"
    if kind == "backbone":
        return f"{cfg.backbone.name}/embedding"
    if kind.count("/") == 1 and all(kind.split("/")):
        return kind
    raise ValueError(
        f"model.condition={kind!r}: expected null, {' or '.join(CONDITION_KINDS)}, or a feature "
        "array as <network>/<array>"
    )


def identity_network(settings: DictConfig) -> torch.nn.Module:
    """The torch face encoder of the `encoder` group (facenet or effnet_contrastive)."""
    from face_generation.features.contrastive import load_contrastive_encoder
    from face_generation.features.face_boxes import FaceBoxes
    from face_generation.features.facenet import FACENET_VGGFACE2_URL, load_facenet

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
def embed_faces(cfg: DictConfig, kind: str, faces: np.ndarray) -> np.ndarray:
    """float32 N×D condition rows of uint8 N×H×W×3 faces (packed-style crops), with the network
    and settings of `cfg` that the `kind` array was written with. A face the network fails on
    gets zeros, as its row in the stage's array would."""
    if kind == "backbone":
        from face_generation.features.backbone import load_pyramid_backbone

        backbone = load_pyramid_backbone(cfg.backbone)
        return backbone.forward(backbone.preprocess(faces)).embedding.float().cpu().numpy()
    if kind != "identity":
        raise ValueError(f"no network computes the {kind!r} array from photos")
    settings = cfg.encoder
    if settings.name == "dlib":
        from face_generation.features.dlib_face import dlib_files
        from face_generation.features.dlib_rows import DlibDescriber

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
