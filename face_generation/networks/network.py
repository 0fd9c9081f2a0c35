"""The one interface of every pretrained network in networks/, and embedding image sets with it.

A feature network module (`effnet.py`, `dinov2.py`, `inception.py`, `lpips.py`,
`dlib_face.py`, `facenet.py`) holds one network and offers:

  * `load_<network>(settings, ...)`: builds it from its config node (`eval.backbones.effnet_lite0`,
    `eval.fid_inception`, `eval.identity.facenet`, ...). `settings.weights_path`, when set, is
    a local weights file (a folder for dlib) and nothing is downloaded. When the weights cannot
    be had (package missing, offline with an empty cache, a bad file) it raises
    `WeightsUnavailableError` (networks/weights.py) whose message names the config switch
    that avoids the network and the `weights_path` option.
  * the network object, a `FeatureNetwork`:
      `name`        short name of the network (`effnet_lite0`, `dlib_resnet_v1`, ...);
      `cache_key`   names its outputs: changes whenever the weights' identity or the
                    preprocessing does, so cached real-image features are never reused wrongly;
      `preprocess(images, value_range)`  images in the project's convention (uint8
                    N x H x W x 3, or float N x 3 x H x W with a `value_range`; see pixels.py)
                    -> the network's input tensor, on the network's device;
      `forward(inputs)`  -> named outputs: `Features` (an `embedding` row per image, and
                    `pyramid` feature maps where a backbone exposes them) for the embedding
                    networks, `Pyramid` for LPIPS, whose distance compares two of them;
      `to(device)`  moves it (dlib runs on the CPU whatever is asked).

Embedding networks (`EmbeddingNetwork`) also say their `num_features`; `embed_images` runs
one over a whole image set, batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from face_generation.runtime.device import pick_device
from face_generation.runtime.pixels import ImageBatch, ValueRange, batches

Output = TypeVar("Output", covariant=True)


@dataclass(frozen=True)
class Features:
    """What an embedding network returns for a batch of N images."""

    embedding: torch.Tensor  # N x num_features: one vector per image
    pyramid: tuple[torch.Tensor, ...] = ()  # N x C x H x W maps, finest first (backbones only)


@dataclass(frozen=True)
class Pyramid:
    """Feature maps of a batch of N images, finest first (what LPIPS compares)."""

    levels: tuple[torch.Tensor, ...]


class FeatureNetwork(Protocol[Output]):
    """A pretrained network used as a fixed function; see the module docstring."""

    name: str

    @property
    def cache_key(self) -> str: ...

    def to(self, device: torch.device) -> Any: ...

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor: ...

    def forward(self, inputs: torch.Tensor) -> Output: ...


class EmbeddingNetwork(FeatureNetwork[Features], Protocol):
    num_features: int  # the length of an embedding row


class FrozenNetwork(nn.Module):
    """Base of the torch networks here: always in eval mode (BatchNorm uses its running statistics)."""

    def train(self, mode: bool = True) -> Self:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@torch.inference_mode()
def embed_images(
    network: EmbeddingNetwork,
    images: ImageBatch,
    value_range: ValueRange = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    progress: str | None = None,
) -> np.ndarray:
    """Embeddings of every image, N x num_features float32, batch by batch without gradients.

    `images`: uint8 N x H x W x 3 (the packed arrays; a memory-mapped array is read one batch at
    a time) or float N x 3 x H x W with `value_range` (0, 1) or (-1, 1). `progress`, when
    given, is the label of a tqdm bar.
    """
    network.to(pick_device(device))
    chunks = []
    bar = tqdm(total=len(images), desc=progress, unit="img", disable=progress is None)
    for batch in batches(images, batch_size):
        features = network.forward(network.preprocess(batch, value_range))
        chunks.append(features.embedding.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, network.num_features), np.float32)
