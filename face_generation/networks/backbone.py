"""Backbones chosen by config: the distribution metrics' (`eval.backbone`: effnet_lite0 or dinov2)
and the features stage's (the `backbone` group: effnet_lite0 or a DINOv2 variant)."""

from __future__ import annotations

from omegaconf import DictConfig

from face_generation.networks.dinov2 import DinoV2, load_dinov2
from face_generation.networks.effnet import EfficientNetLite0, load_effnet


def build_feature_extractor(cfg: DictConfig) -> EfficientNetLite0 | DinoV2:
    """The backbone `cfg.backbone` names (`cfg` is the `eval` config group)."""
    if cfg.backbone == "effnet_lite0":
        return load_effnet(cfg.backbones.effnet_lite0)
    if cfg.backbone == "dinov2":
        return load_dinov2(cfg.backbones.dinov2, float(cfg.network_timeout_s))
    raise ValueError(f"unknown eval.backbone={cfg.backbone!r}; choose effnet_lite0 or dinov2")


def load_pyramid_backbone(settings: DictConfig) -> EfficientNetLite0 | DinoV2:
    """The backbone of the features stage, from the `backbone` config group: `effnet_lite0`,
    or a DINOv2 variant (`dinov2_vits14`, `dinov2_vitb14`, ...) by its `name`."""
    if settings.name == "effnet_lite0":
        return load_effnet(settings, option="backbone", switch="backbone=dinov2_vits14")
    if str(settings.name).startswith("dinov2_"):
        timeout_s = float(settings.network_timeout_s)
        return load_dinov2(settings, timeout_s, option="backbone", switch="backbone=effnet_lite0")
    raise ValueError(
        f"unknown backbone={settings.name!r}; choose effnet_lite0 or dinov2_vits14 (configs/backbone/)"
    )
