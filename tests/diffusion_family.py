"""A conditional diffusion family that exists only in the tests: the diffusion family's
conditioning machinery (condition embedding, learned null embedding, classifier-free guidance)
trained through the real loop on the synthetic `tiny/embedding` rows of tests/tiny_family.py
(the real arrays, identity and backbone embeddings, are tested in tests/test_diffusion.py).

Importing this module registers it as `diffusion_embedding` (config `model=diffusion_embedding`:
configs/model/diffusion.yaml conditioned on the embedding); conftest.py does so for the session.
"""

from __future__ import annotations

from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from face_generation.config import CONFIG_DIR
from face_generation.families.diffusion import DiffusionFamily
from face_generation.runtime.registry import register_family
from tests.tiny_family import EMBEDDING_DIM


class EmbeddingDiffusion(DiffusionFamily):
    name: ClassVar[str] = "diffusion_embedding"


MODEL_CONFIG = OmegaConf.merge(
    OmegaConf.load(CONFIG_DIR / "model" / "diffusion.yaml"),
    {
        "name": "diffusion_embedding",
        # a feature array no network computes from photos (runtime/conditioning.py)
        "condition": {"network": {"name": "tiny"}, "array": "embedding"},
        "cond_dim": EMBEDDING_DIM,
        "sampling": {"steps": 10},  # the contract tests' preview grids, quickly
    },
)

register_family(EmbeddingDiffusion)
ConfigStore.instance().store(group="model", name="diffusion_embedding", node=MODEL_CONFIG)
