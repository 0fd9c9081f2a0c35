"""What the metrics of one evaluation read, each computed once and only when a metric asks.

`EvaluationInputs` holds the trained generator, the real images it is compared with, and
lazily: its samples, their features in the backbone's space (the real side from the cache in
evaluation/real_stats.py), and its reconstructions of test images. Two metrics that need the
same thing (fd_ and kid_ both need backbone features of the samples) share one computation.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.data.packed import features_dir, load_feature_split
from face_generation.evaluation.identity import Calibration, calibrate
from face_generation.evaluation.real_stats import RealFeatures, real_features
from face_generation.networks.backbone import build_feature_extractor
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.networks.network import EmbeddingNetwork, embed_images
from face_generation.runtime.generator import TrainedGenerator
from face_generation.runtime.images import to_uint8
from face_generation.runtime.pixels import batches, to_float_nchw


def metric_prefix(eval_cfg: DictConfig) -> str:
    """The backbone's short name that distribution metrics carry: fd_<it>, kid_<it>, ..."""
    settings = eval_cfg.backbones.get(eval_cfg.backbone)
    if settings is None:
        raise ValueError(
            f"unknown eval.backbone={eval_cfg.backbone!r}; configured: {sorted(eval_cfg.backbones)}"
        )
    return str(settings.get("short_name") or eval_cfg.backbone)


def generate(
    trained: TrainedGenerator,
    count: int,
    seed: int,
    batch_size: int,
    options: dict[str, Any],
    progress: str | None = None,
    cond: torch.Tensor | None = None,
) -> np.ndarray:
    """`count` samples as uint8 N x H x W x 3 (quantised as saved images are), noise from `seed`;
    sample i conditioned on `cond[i]` when given."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    with tqdm(total=count, desc=progress, unit="img", disable=progress is None) as bar:
        for start in range(0, count, batch_size):
            rows = None if cond is None else cond[start : start + batch_size]
            images = trained.sample(
                min(batch_size, count - start), cond=rows, generator=generator, **options
            )
            chunks.append(to_uint8(images))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


@torch.no_grad()
def reconstruct(
    trained: TrainedGenerator, images: np.ndarray, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Reconstructions of uint8 N x H x W x 3 images: float N x 3 x H x W in [-1, 1] on the CPU."""
    outputs = []
    for batch in batches(images, batch_size):
        pixels = to_float_nchw(batch, None, (-1.0, 1.0), device=device)
        outputs.append(trained.reconstruct(pixels).float().cpu())
    return torch.cat(outputs)


class EvaluationInputs:
    """One evaluation's shared material. `test` is the packed eval split; the first `count`
    of its images are the real side of every distribution metric."""

    def __init__(
        self,
        cfg: DictConfig,
        trained: TrainedGenerator,
        test: np.ndarray,
        count: int,
        data_hash: str,
        device: torch.device,
    ) -> None:
        self.cfg, self.eval_cfg = cfg, cfg.eval
        self.trained, self.test, self.count = trained, test, count
        self.data_hash, self.device = data_hash, device
        self.real = np.asarray(test[:count])
        self._judged: dict[tuple[str, int], tuple[np.ndarray, Calibration]] = {}

    @cached_property
    def conditions(self) -> torch.Tensor | None:
        """A conditional family's condition rows of the eval split (sample i is conditioned on
        real image i's row), from the features stage's arrays; None for unconditional ones."""
        array = self.trained.condition
        if array is None:
            return None
        features = features_dir(Path(self.cfg.paths.data), self.trained.resolution)
        split = str(self.eval_cfg.split)
        rows = load_feature_split(features, array, split, len(self.test))
        return torch.from_numpy(np.asarray(rows[: self.count], np.float32))

    @cached_property
    def people(self) -> np.ndarray:
        """The identity code of each of the first `count` eval-split faces (-1: unknown), from
        the labels stage; all unknown when it has not run."""
        features = features_dir(Path(self.cfg.paths.data), self.trained.resolution)
        try:
            rows = load_feature_split(
                features, "labels/identity", str(self.eval_cfg.split), len(self.test)
            )
        except FileNotFoundError:
            return np.full(self.count, -1, np.int64)
        return np.asarray(rows[: self.count], np.int64)

    def judged_real_faces(
        self, judge: FaceIdentityEncoder, rows: int
    ) -> tuple[np.ndarray, Calibration]:
        """(the judge's embeddings of the first `rows` eval-split faces, its calibration): the
        same-person threshold at eval.identity.far from the pairs of known people among the
        first eval.identity.calibration_faces real faces, with the real-pair anchors (the mean
        cosine of same-person and of different-person pairs). Every generated identity score
        is read against it. When no face's person is known (the embedded default) nothing is
        embedded for it and it is uncalibrated. Computed once per judge and row count."""
        key = (judge.name, rows)
        if key not in self._judged:
            settings = self.eval_cfg.identity
            faces = min(int(settings.calibration_faces), self.count)
            if not (self.people[:faces] >= 0).any():
                faces = 0
            embedded = judge.embed(
                np.asarray(self.test[: max(rows, faces)]), progress="identity: real faces"
            )
            calibration = calibrate(embedded[:faces], self.people[:faces], float(settings.far))
            self._judged[key] = embedded[:rows], calibration
        return self._judged[key]

    def sample(self, count: int, progress: str | None, **overrides: Any) -> np.ndarray:
        """`count` samples (conditioned on the first `count` condition rows, for conditional
        families), from the fixed eval seed and sampling options (`overrides` on top)."""
        options = {str(key): value for key, value in self.eval_cfg.sampling.items()}
        cond = None if self.conditions is None else self.conditions[:count]
        return generate(
            self.trained,
            count,
            int(self.eval_cfg.seed),
            int(self.eval_cfg.sample_batch_size),
            {**options, **overrides},
            progress,
            cond,
        )

    def sample_conditioned(self, cond: torch.Tensor, progress: str | None) -> np.ndarray:
        """One sample per condition row, from the fixed eval seed and sampling options."""
        options = {str(key): value for key, value in self.eval_cfg.sampling.items()}
        return generate(
            self.trained,
            len(cond),
            int(self.eval_cfg.seed),
            int(self.eval_cfg.sample_batch_size),
            options,
            progress,
            cond,
        )

    @cached_property
    def generated(self) -> np.ndarray:
        """`count` samples of the generator, uint8, from the fixed eval seed and sampling options."""
        return self.sample(self.count, "sampling")

    @cached_property
    def backbone(self) -> EmbeddingNetwork:
        """The feature network of the distribution metrics (eval.backbone)."""
        return build_feature_extractor(self.eval_cfg)

    @property
    def prefix(self) -> str:
        return metric_prefix(self.eval_cfg)

    @cached_property
    def real_backbone_features(self) -> RealFeatures:
        return self.real_features(self.backbone, self.real, str(self.eval_cfg.split))

    @cached_property
    def generated_backbone_features(self) -> np.ndarray:
        return self.embed(self.backbone, self.generated, "generated features")

    @cached_property
    def reconstructions(self) -> tuple[np.ndarray, torch.Tensor]:
        """(originals, reconstructions) of the first eval.reconstruction.num_images test images."""
        count = min(int(self.eval_cfg.reconstruction.num_images), len(self.test))
        originals = np.asarray(self.test[:count])
        batch_size = int(self.eval_cfg.sample_batch_size)
        return originals, reconstruct(self.trained, originals, batch_size, self.device)

    def embed(self, network: EmbeddingNetwork, images: np.ndarray, progress: str) -> np.ndarray:
        return embed_images(
            network,
            images,
            batch_size=int(self.eval_cfg.batch_size),
            device=self.device,
            progress=progress,
        )

    def real_features(
        self, network: EmbeddingNetwork, images: np.ndarray, split: str
    ) -> RealFeatures:
        """Features of real `images` (the first rows of `split`), from the cache or embedded now."""
        return real_features(
            Path(self.eval_cfg.cache_dir),
            network.cache_key,
            self.data_hash,
            split,
            len(images),
            lambda: self.embed(network, images, f"real {split} features"),
        )
