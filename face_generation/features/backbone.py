"""The backbone of the distribution metrics, chosen by `eval.backbone`: effnet_lite0 or dinov2."""

from __future__ import annotations

from omegaconf import DictConfig

from face_generation.features.dinov2 import DinoV2, load_dinov2
from face_generation.features.effnet import EfficientNetLite0, load_effnet


def build_feature_extractor(cfg: DictConfig) -> EfficientNetLite0 | DinoV2:
    """The backbone `cfg.backbone` names (`cfg` is the `eval` config group)."""
    if cfg.backbone == "effnet_lite0":
        return load_effnet(cfg.backbones.effnet_lite0)
    if cfg.backbone == "dinov2":
        return load_dinov2(cfg.backbones.dinov2, float(cfg.network_timeout_s))
    raise ValueError(f"unknown eval.backbone={cfg.backbone!r}; choose effnet_lite0 or dinov2")
