"""LPIPS (`lpips`, v0.1): a learned perceptual distance on an ImageNet backbone's feature maps.

The `lpips` package ships its linear heads but not its backbone: torchvision's ImageNet
AlexNet, VGG16 or SqueezeNet (`eval.lpips.net`), downloaded into torch.hub's cache or given as
`eval.lpips.weights_path`; without them `load_lpips` raises `WeightsUnavailableError` and
evaluation reports lpips as unavailable with the reason.

The network maps images to the backbone's feature maps, each unit-normalised along channels
(`forward` -> `Pyramid`); `distance` weighs the squared differences of two pyramids with the
linear heads and averages them over space. Both are `lpips.LPIPS.forward`, split in two
(same operations, same order, same numbers).
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from face_generation.networks.network import FrozenNetwork, Pyramid
from face_generation.networks.weights import WeightsUnavailableError, torch_hub_weights
from face_generation.runtime.device import pick_device
from face_generation.runtime.pixels import (
    ImageBatch,
    ValueRange,
    batches,
    to_float_nchw,
)


def lpips_advice(net: str, reason: str) -> str:
    return (
        f"LPIPS needs torchvision's ImageNet {net} weights: {reason}. Download them where "
        f"there is network and set eval.lpips.weights_path=/path/to/{Path(lpips_backbone_url(net)).name}, "
        "or skip LPIPS with eval.lpips.enabled=false"
    )


def lpips_backbone_url(net: str) -> str:
    """The torchvision ImageNet weights the `lpips` package loads for its backbone `net`."""
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in weights:
        raise ValueError(f"unknown eval.lpips.net={net!r}; choose alex, vgg or squeeze")
    return weights[net].url


def load_lpips_backbone(model: Any, path: Path) -> None:
    """Copy a torchvision `features.*` state dict into lpips' sliced backbone (`sliceK.i.*`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    sliced = {}
    for key in model.net.state_dict():  # "slice2.3.weight" holds torchvision's "features.3.weight"
        _, rest = key.split(".", 1)
        sliced[key] = state[f"features.{rest}"]
    model.net.load_state_dict(sliced)


class LPIPS(FrozenNetwork):
    """LPIPS v0.1 on `net`'s backbone: images -> normalised feature maps; `distance` of two."""

    def __init__(self, net: str, backbone_file: Path) -> None:
        super().__init__()
        import lpips

        # pnet_rand: build the backbone without torchvision's download; its weights come next.
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
            warnings.simplefilter("ignore", UserWarning)
            model: Any = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        load_lpips_backbone(model, backbone_file)
        self.model: Any = model.eval().requires_grad_(False)
        self.name = f"lpips_{net}"

    @property
    def cache_key(self) -> str:
        return f"{self.name}-v0.1"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> [-1, 1] -> lpips' scaling layer (ImageNet's statistics), on the network's device."""
        pixels = to_float_nchw(images, value_range, (-1.0, 1.0), device=self.device)
        return self.model.scaling_layer(pixels)

    def forward(self, inputs: torch.Tensor) -> Pyramid:
        import lpips

        return Pyramid(tuple(lpips.normalize_tensor(level) for level in self.model.net(inputs)))

    def distance(self, first: Pyramid, second: Pyramid) -> torch.Tensor:
        """N x 1 x 1 x 1 LPIPS distances between row-aligned pyramids."""
        import lpips

        return sum(
            lpips.spatial_average(head((a - b) ** 2), keepdim=True)
            for head, a, b in zip(self.model.lins, first.levels, second.levels, strict=True)
        )


def load_lpips(settings: DictConfig, timeout_s: float, url: str | None = None) -> LPIPS:
    """From `eval.lpips`: the backbone from `weights_path`, torch.hub's cache, or a download.

    `url` defaults to torchvision's release of the `settings.net` ImageNet weights.
    """
    net = str(settings.net)
    advice = partial(lpips_advice, net)
    if importlib.util.find_spec("lpips") is None:
        raise WeightsUnavailableError(
            advice("the lpips package is not installed (pip install lpips)")
        )
    path = torch_hub_weights(
        url or lpips_backbone_url(net), settings.weights_path, advice, timeout_s
    )
    try:
        return LPIPS(net, path)
    except Exception as error:  # a corrupt or foreign file
        raise WeightsUnavailableError(advice(f"{path}: {error}")) from error


@torch.inference_mode()
def lpips_distance(
    model: LPIPS,
    images_a: ImageBatch,
    images_b: ImageBatch,
    value_range: ValueRange = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
) -> float:
    """Mean LPIPS distance over row-aligned image pairs (0 for identical images)."""
    if len(images_a) != len(images_b) or len(images_a) == 0:
        raise ValueError(
            f"need row-aligned, non-empty batches, got {len(images_a)} and {len(images_b)}"
        )
    model.to(pick_device(device))
    total = 0.0
    for first, second in zip(
        batches(images_a, batch_size), batches(images_b, batch_size), strict=True
    ):
        distances = model.distance(
            model.forward(model.preprocess(first, value_range)),
            model.forward(model.preprocess(second, value_range)),
        )
        total += float(distances.double().sum())
    return total / len(images_a)
