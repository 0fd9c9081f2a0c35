"""A third model family that exists only in the tests: proof that a family is added by adding
files, and a user of every part of the contract that VAE and DCGAN leave unused.

It is conditional (on a per-row `tiny/embedding` feature array), trains on a spatial feature
map (`tiny/pyramid`, mirrored with the images), holds a frozen network (never trained, never saved),
keeps state of its own (steps seen, in checkpoints), has a sampling option (`scale`), and computes
its condition from photos (the web service's reference photos).
Its config is stored in Hydra's ConfigStore as `model=tiny`, beside configs/model/*.yaml.

Importing this module registers it; conftest.py does so for the whole session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from torch import nn

from face_generation.data.packed import features_dir
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.features.store import FeatureFolder
from face_generation.runtime.family import IMAGES, SAMPLE, Batch, Family, RowInput, StepContext
from face_generation.runtime.registry import register_family

EMBEDDING_DIM = 4
PYRAMID_SHAPE = (2, 4, 4)  # C×H×W of the feature map each face carries

MODEL_CONFIG = {
    "name": "tiny",
    "latent_dim": 3,
    "optimizer": {"lr": 0.01, "betas": [0.5, 0.9]},
    "sampling": {"scale": 1.0},
}


class TinyGenerator(nn.Module):
    """(latent, embedding) → an image, through one linear layer and tanh."""

    def __init__(self, resolution: int, latent_dim: int) -> None:
        super().__init__()
        self.resolution, self.latent_dim = resolution, latent_dim
        self.to_pixels = nn.Linear(latent_dim + EMBEDDING_DIM, 3 * resolution * resolution)

    def forward(self, latents: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        pixels = self.to_pixels(torch.cat([latents, embedding], dim=1))
        return torch.tanh(pixels).view(-1, 3, self.resolution, self.resolution)


class TinyFamily(Family):
    name: ClassVar[str] = "tiny"
    inputs: ClassVar[tuple[RowInput, ...]] = (
        IMAGES,
        RowInput("tiny/embedding", flip="none"),
        RowInput("tiny/pyramid", flip="map"),
    )
    generator_key: ClassVar[str] = "generator"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE})
    condition: ClassVar[str | None] = "tiny/embedding"

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.generator = place(self.build_generator(model_cfg, resolution), context)
        # stands for a perceptual network: used in the loss, never trained or saved
        self.judge = place(nn.Conv2d(3, PYRAMID_SHAPE[0], 1), context)
        self.networks = {"generator": self.generator}
        self.frozen = {"judge": self.judge}
        self.optimizers = {
            "generator": adam(self.generator.parameters(), model_cfg.optimizer, context.device)
        }
        self.steps_seen = 0

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        assert step == self.steps_seen, "the loop passes the number of steps done before"
        embedding, pyramid = batch.features["tiny/embedding"], batch.features["tiny/pyramid"]
        latents = torch.randn(len(embedding), self.generator.latent_dim)
        with self.context.autocast():  # train.precision
            fake = self.generator(latents.to(embedding.device), embedding.float())
            judged = F.adaptive_avg_pool2d(self.judge(fake), PYRAMID_SHAPE[1:])
            loss = F.mse_loss(fake, batch.images) + F.mse_loss(judged, pyramid.float())
        norm = optimizer_step(self.optimizers["generator"], loss, self.generator, None)
        self.steps_seen += 1
        return {"loss": loss.detach(), "grad_norm": norm.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_seen = int(state["steps_seen"])

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> TinyGenerator:
        return TinyGenerator(resolution, int(model_cfg.latent_dim))

    @classmethod
    @torch.no_grad()
    def sample(
        cls,
        network: nn.Module,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """n images for the embeddings `cond` (zeros without one); `scale` scales the noise."""
        assert isinstance(network, TinyGenerator)
        device = next(network.parameters()).device
        latents = gaussian_latents(n, network.latent_dim, device, generator, scale)
        embedding = torch.zeros(n, EMBEDDING_DIM) if cond is None else cond.float()
        return network(latents, embedding.to(device))

    @classmethod
    def condition_from_photos(cls, images: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        """Stands for a face encoder: each photo's mean red, green and blue, and its contrast."""
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(1, 2, 3))[:, None]], dim=1)


def write_features(data_dir: Path, resolution: int, counts: dict[str, int]) -> None:
    """The feature folder the tiny family trains on, data/features/<res>/tiny/, row-aligned
    with the packed splits (tests/faces.write_packed: data hash "test")."""
    rng = np.random.default_rng(0)
    with FeatureFolder(features_dir(data_dir, resolution), "tiny") as folder:
        for name, shape in (("embedding", (EMBEDDING_DIM,)), ("pyramid", PYRAMID_SHAPE)):
            for split, count in counts.items():
                values = rng.standard_normal((count, *shape)).astype(np.float16)
                folder.create(name, split, values.shape, values.dtype)[:] = values
        folder.commit({"stage": "features", "data_hash": "test", "network": {"name": "tiny"}})


register_family(TinyFamily)
ConfigStore.instance().store(group="model", name="tiny", node=MODEL_CONFIG)
