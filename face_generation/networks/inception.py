"""Inception-v3 of the standard FID (`fid_inception`): torch-fidelity's network via torchmetrics.

Its weights must be downloaded (or given as `eval.fid_inception.weights_path`); without them
`load_inception` raises `WeightsUnavailableError` and evaluation reports fid_inception as
unavailable with the reason. The images are quantised to uint8 first, as FID's reference
implementations read images; the network resizes them to 299 itself (`antialias=False`: as
TensorFlow 1 did for the reference FID numbers; torchmetrics' own default is True). The
embedding is the 2048-d pool feature.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from face_generation.networks.network import Features, FrozenNetwork
from face_generation.networks.weights import WeightsUnavailableError, torch_hub_weights
from face_generation.runtime.pixels import ImageBatch, ValueRange, to_float_nchw


def inception_advice(reason: str) -> str:
    return (
        f"Inception-v3 (FID) weights cannot be loaded: {reason}. Download "
        "weights-inception-2015-12-05-6726825d.pth where there is network and set "
        "eval.fid_inception.weights_path=/path/to/it, or skip the standard FID with "
        "eval.fid_inception.enabled=false"
    )


class InceptionV3(FrozenNetwork):
    """FID's Inception-v3: images -> 2048-d pool features."""

    name = "inception_v3"

    def __init__(self, weights_file: Path, antialias: bool) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity unpickles the file with weights_only=False: read it safely first, so a
        # file whose pickle would run code is refused before that (the same bytes, twice)
        torch.load(weights_file, map_location="cpu", weights_only=True)
        self.network = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights_file),
            antialias=antialias,
        )
        self.antialias = antialias
        self.num_features = 2048

    @property
    def cache_key(self) -> str:
        return f"{self.name}-2048-{'antialias' if self.antialias else 'tf1-resize'}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> uint8 N x 3 x H x W on the network's device: FID reads 8-bit images."""
        pixels = to_float_nchw(images, value_range, (-1.0, 1.0), device=self.device)
        return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def forward(self, inputs: torch.Tensor) -> Features:
        return Features(embedding=self.network(inputs))


def load_inception(settings: DictConfig, timeout_s: float, url: str | None = None) -> InceptionV3:
    """From `eval.fid_inception`: `weights_path`, torch.hub's cache, or a download from `url`.

    `url` defaults to torch-fidelity's release of the weights.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ImportError as error:
        raise WeightsUnavailableError(
            inception_advice("torch-fidelity is not installed (pip install torch-fidelity)")
        ) from error
    path = torch_hub_weights(
        url or URL_INCEPTION_V3, settings.weights_path, inception_advice, timeout_s
    )
    try:
        return InceptionV3(path, bool(settings.antialias))
    except Exception as error:  # a corrupt or foreign file
        raise WeightsUnavailableError(inception_advice(f"{path}: {error}")) from error
