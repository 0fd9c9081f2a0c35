"""The base of every conditional family: one implementation of what conditioning needs.

A family that subclasses `ConditionalFamily` reads its arrays from its model config
(`model.condition`, `model.inputs`: runtime/conditioning.py), so the loop loads them and DVC
tracks them (each model's `reads`, dvc.yaml) without the family saying more. It gets:
    condition_rows(batch, width)  the batch's condition rows, checked against the model's
                   condition width, and which of them to drop for the learned null condition
                   (probability `model.cond_drop`: the unconditional model that classifier-free
                   guidance needs)
    prepare(arrays)  fits the random conditions (runtime/conditioning.ConditionPrior) on the
                   train split's rows; they travel in the checkpoint as family state, so a
                   loaded model samples without a reference (TrainedGenerator.random_conditions)
    condition_from_photos(images, cfg)  reference photos → condition rows, through the
                   features stage's own network code (features/conditions.embed_faces)
The rows themselves are checked when the loop opens them (data/packed.load_feature_split:
missing, stale or misaligned arrays are an error naming the stage to rerun).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from face_generation.features.conditions import computes_from_photos, embed_faces
from face_generation.runtime.conditioning import (
    ConditionPrior,
    check_condition_width,
    declared_condition,
    declared_inputs,
)
from face_generation.runtime.family import IMAGES, Batch, Family, RowInput, StepContext
from face_generation.runtime.pixels import to_uint8_nhwc


class ConditionalFamily(Family):
    """A family whose condition and arrays are declared in its model config."""

    @classmethod
    def inputs_of(cls, model_cfg: DictConfig) -> tuple[RowInput, ...]:
        return (IMAGES, *declared_inputs(model_cfg))

    @classmethod
    def condition_of(cls, model_cfg: DictConfig) -> str | None:
        return declared_condition(model_cfg)

    @classmethod
    def takes_photos(cls, model_cfg: DictConfig) -> bool:
        condition = model_cfg.get("condition")
        return condition is not None and computes_from_photos(
            condition.network, str(condition.array)
        )

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.condition_array = declared_condition(model_cfg)
        self.cond_drop = float(model_cfg.get("cond_drop", 0.0))
        cond_dim = model_cfg.get("cond_dim")
        self.cond_dim = int(cond_dim) if cond_dim is not None else None
        if not 0 <= self.cond_drop <= 1:
            raise ValueError(f"model.cond_drop={self.cond_drop}: expected a probability in [0, 1]")
        self.prior: ConditionPrior | None = None

    def prepare(self, arrays: dict[str, Any]) -> None:
        if self.condition_array is not None:
            rows = arrays[self.condition_array]
            if self.cond_dim is not None:  # before anything samples (the loop's step-0 grid)
                first = torch.from_numpy(np.asarray(rows[:1], np.float32))
                check_condition_width(first, self.cond_dim, self.condition_array)
            self.prior = ConditionPrior.fit(rows)

    def condition_rows(
        self, batch: Batch, width: int | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(condition rows, null mask): the batch's rows of the condition array (float32) and
        the rows replaced by the null condition; (None, None) for an unconditional model."""
        if self.condition_array is None:
            return None, None
        rows = batch.features[self.condition_array].float()
        check_condition_width(rows, int(width or 0), self.condition_array)
        null = (torch.rand(len(rows)) < self.cond_drop).to(rows.device)
        return rows, null

    def state_dict(self) -> dict[str, Any]:
        return {} if self.prior is None else {"condition_prior": self.prior.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prior = state.get("condition_prior")
        self.prior = None if prior is None else ConditionPrior.from_state(prior)
        unknown = set(state) - {"condition_prior"}
        if unknown:
            raise ValueError(f"the {self.name} family keeps no state {sorted(unknown)}")

    @classmethod
    def sampling_condition(
        cls, cond: torch.Tensor | None, n: int, width: int | None, device: torch.device
    ) -> torch.Tensor | None:
        """`cond` checked for sampling n images from a network conditioned on `width`-wide rows
        (width None: an unconditional one), as float32 on `device`; None stays None (the
        network's learned null condition)."""
        if cond is None:
            return None
        if width is None:
            raise ValueError(f"the {cls.name} model is unconditional: sample without a condition")
        if cond.shape != (n, width):
            raise ValueError(
                f"the condition must be {n}×{width} (one row per image), got {tuple(cond.shape)}"
            )
        return cond.float().to(device)

    @classmethod
    def condition_from_photos(cls, images: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        """Each photo's row of the condition array, by the network (and its settings, from the
        training config) that wrote the array."""
        condition = cfg.model.condition
        faces = to_uint8_nhwc(images, (-1.0, 1.0))
        return torch.from_numpy(embed_faces(condition.network, str(condition.array), faces))
