"""The standard metric networks that must be downloaded: Inception-v3 (FID) and LPIPS's backbone.

With their weights (network, a cached copy, or a configured `weights_path`) `fid_inception`
and `lpips` are computed as everyone computes them; without, they are reported as
`Unavailable` with the reason, never as a failure and never as a number. Offline the answer
comes within `timeout_s` (cache first, then a TCP probe of the host; see features/weights.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from face_generation.features.pixels import (
    ImageBatch,
    ValueRange,
    batches,
    resolve_device,
    to_float_nchw,
)
from face_generation.features.weights import (
    local_file,
    torch_hub_checkpoint,
    unreachable,
)


@dataclass(frozen=True)
class Unavailable:
    """A metric that could not be computed here, and why (reported instead of a number)."""

    metric: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"available": False, "reason": self.reason}


class InceptionV3Features(nn.Module):
    """torch-fidelity's FID Inception-v3 (via torchmetrics): [-1, 1] images -> 2048-d pool features.

    The images are quantised to uint8 first, as FID's reference implementations read images.
    `antialias=False` resizes to 299 as TensorFlow 1 did (the reference FID numbers);
    torchmetrics' own default is True.
    """

    name = "inception_v3"

    def __init__(self, weights_path: str | Path, antialias: bool) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.network = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights_path),
            antialias=antialias,
        )
        self.antialias = antialias
        self.num_features = 2048

    @property
    def cache_key(self) -> str:
        return f"{self.name}-2048-{'antialias' if self.antialias else 'tf1-resize'}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        quantised = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self.network(quantised)


def load_inception(
    weights_path: str | Path | None = None, antialias: bool = False, timeout_s: float = 10.0
) -> InceptionV3Features | Unavailable:
    """FID's Inception-v3, or why it cannot be loaded (not installed, no weights offline)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ImportError:
        return Unavailable(
            "fid_inception", "torch-fidelity is not installed (pip install torch-fidelity)"
        )
    try:
        if weights_path:
            path = local_file(weights_path, "Inception-v3", "eval.fid_inception.weights_path")
        else:
            path = torch_hub_checkpoint(URL_INCEPTION_V3)
            if not path.is_file():
                why = unreachable(URL_INCEPTION_V3, timeout_s)
                if why:
                    return Unavailable(
                        "fid_inception",
                        f"Inception-v3 weights are not cached at {path} and {why}; "
                        "set eval.fid_inception.weights_path to a downloaded copy",
                    )
                torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False)  # into `path`
        return InceptionV3Features(path, antialias)
    except Exception as error:  # a failed download, a corrupt file: reported, not raised
        return Unavailable("fid_inception", f"Inception-v3 weights could not be loaded: {error}")


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


def load_lpips(
    net: str = "alex", weights_path: str | Path | None = None, timeout_s: float = 10.0
) -> nn.Module | Unavailable:
    """LPIPS (v0.1 linear heads, shipped) with its ImageNet backbone, or why it cannot be loaded."""
    try:
        import lpips
    except ImportError:
        return Unavailable("lpips", "the lpips package is not installed (pip install lpips)")
    try:
        url = lpips_backbone_url(net)
        path = (
            local_file(weights_path, "LPIPS backbone", "eval.lpips.weights_path")
            if weights_path
            else torch_hub_checkpoint(url)
        )
        if not path.is_file():
            why = unreachable(url, timeout_s)
            if why:
                return Unavailable(
                    "lpips",
                    f"LPIPS needs torchvision's ImageNet {net} weights: not cached at {path} and "
                    f"{why}; set eval.lpips.weights_path to a downloaded copy",
                )
            torch.hub.load_state_dict_from_url(url, progress=False)  # into `path`
        # pnet_rand: build the backbone without torchvision's download; its weights come next.
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        load_lpips_backbone(model, path)
        return model.eval().requires_grad_(False)
    except Exception as error:  # a failed download, a corrupt file: reported, not raised
        return Unavailable("lpips", f"LPIPS could not be loaded: {error}")


@torch.inference_mode()
def lpips_distance(
    model: nn.Module,
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
    target = resolve_device(device)
    model = model.to(target)
    total = 0.0
    for first, second in zip(
        batches(images_a, batch_size), batches(images_b, batch_size), strict=True
    ):
        distances = model(
            to_float_nchw(first, value_range, (-1.0, 1.0), device=target),
            to_float_nchw(second, value_range, (-1.0, 1.0), device=target),
        )
        total += float(distances.double().sum())
    return total / len(images_a)
