"""A conditional diffusion family that exists only in the tests: the diffusion family's
conditioning machinery (condition embedding, learned null embedding, classifier-free guidance)
trained through the real loop on the synthetic `embedding` rows of tests/tiny_family.py, until
the features stage provides real identity arrays to condition on.

Importing this module registers it as `diffusion_embedding` (config `model=diffusion_embedding`:
configs/model/diffusion.yaml conditioned on the embedding); conftest.py does so for the session.
"""

from __future__ import annotations

from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from face_generation.config import CONFIG_DIR
from face_generation.families.diffusion import DiffusionFamily
from face_generation.runtime.family import IMAGES, RowInput
from face_generation.runtime.registry import register_family
from tests.tiny_family import EMBEDDING_DIM


class EmbeddingDiffusion(DiffusionFamily):
    name: ClassVar[str] = "diffusion_embedding"
    inputs: ClassVar[tuple[RowInput, ...]] = (IMAGES, RowInput("embedding", flip="none"))
    condition: ClassVar[str | None] = "embedding"


MODEL_CONFIG = OmegaConf.merge(
    OmegaConf.load(CONFIG_DIR / "model" / "diffusion.yaml"),
    {
        "name": "diffusion_embedding",
        "condition": "embedding",
        "cond_dim": EMBEDDING_DIM,
        "sampling": {"steps": 10},  # the contract tests' preview grids, quickly
    },
)

register_family(EmbeddingDiffusion)
ConfigStore.instance().store(group="model", name="diffusion_embedding", node=MODEL_CONFIG)
