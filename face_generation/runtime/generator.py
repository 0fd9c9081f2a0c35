"""A trained generator: its family, its network (EMA weights by default) and its config.

Evaluation, inference, the MLflow model and the web service all load a checkpoint through
`load_generator` and draw from it through `TrainedGenerator.sample`, which passes the family's
sampling options through, so none of them knows any family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.runtime.checkpoint import load_checkpoint, load_weights
from face_generation.runtime.conditioning import ConditionPrior
from face_generation.runtime.device import autocast_for
from face_generation.runtime.family import RECONSTRUCT, SAMPLE, Family, sampling_options
from face_generation.runtime.registry import family_class


def takes_photos(family: type[Family], model_cfg: DictConfig) -> bool:
    """Whether the model samples from conditions it can compute from reference photos."""
    return family.takes_photos(model_cfg)


def photo_refusal(family: type[Family], model_cfg: DictConfig) -> str:
    """Why a model takes no reference photos, in one line."""
    condition = family.condition_of(model_cfg)
    if condition is None:
        return f"the {family.name} model is unconditional: it takes no reference photos"
    return f"the {family.name} model conditions on {condition!r} but cannot compute it from photos"


@dataclass
class TrainedGenerator:
    family: type[Family]
    network: nn.Module  # in eval mode
    config: DictConfig  # the config it was trained with
    step: int = 0
    run_id: str | None = None
    family_state: dict[str, Any] = field(default_factory=dict)  # the checkpoint's
    precision: str = "fp32"  # what sampling computes in: fp32 | bf16 | auto (runtime/device.py)

    @property
    def condition(self) -> str | None:
        """The array whose rows condition sampling; None for an unconditional model."""
        return self.family.condition_of(self.config.model)

    @property
    def takes_photos(self) -> bool:
        return takes_photos(self.family, self.config.model)

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def resolution(self) -> int:
        return int(self.config.data.resolution)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The sampling options a call uses: the family's defaults, then `model.sampling` of
        the training config, then `overrides`; an unknown name is a ValueError listing the
        known ones."""
        known = sampling_options(self.family)
        configured = self.config.model.get("sampling")
        if isinstance(configured, DictConfig):
            configured = OmegaConf.to_container(configured)
        chosen = {**known, **(configured or {}), **overrides}
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValueError(
                f"unknown sampling option(s) {unknown} for the {self.name} family; "
                f"its options are {sorted(known) or 'none'}"
            )
        return chosen

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """n images in [-1, 1] (N×3×H×W, on the network's device)."""
        if SAMPLE not in self.family.capabilities:
            raise ValueError(f"the {self.name} family does not generate images")
        if n < 1:
            raise ValueError(f"the number of samples must be at least 1, got {n}")
        self.network.eval()
        with autocast_for(self.device, self.precision)():
            images = self.family.sample(
                self.network, n, cond=cond, generator=generator, **self.options(**options)
            )
        return images.float()

    def network_evaluations(self, **options: Any) -> int:
        """Forward passes of the network that `sample` with these options makes."""
        return self.family.network_evaluations(**self.options(**options))

    @torch.no_grad()
    def conditions_from_photos(self, images: torch.Tensor) -> torch.Tensor:
        """The condition rows for N×3×H×W photos in [-1, 1], for conditional families that
        compute their condition from photos (`takes_photos`)."""
        if not self.takes_photos:
            raise ValueError(photo_refusal(self.family, self.config.model))
        return self.family.condition_from_photos(images.to(self.device), self.config)

    def random_conditions(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n conditions drawn like the training rows (the prior fitted when it was trained), for
        sampling a conditional model without a reference."""
        prior = self.family_state.get("condition_prior")
        if prior is None:
            raise ValueError(
                f"the {self.name} model keeps no random conditions: it is unconditional, or "
                "its checkpoint predates them (retrain it)"
            )
        return ConditionPrior.from_state(prior).sample(n, generator)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions of N×3×H×W images in [-1, 1], for families that reconstruct."""
        if RECONSTRUCT not in self.family.capabilities:
            raise ValueError(f"the {self.name} family does not reconstruct images")
        self.network.eval()
        return self.family.reconstruct(self.network, images.to(self.device))

    @torch.no_grad()
    def variants(self, images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """n variants of each of N×3×H×W images in [-1, 1] (N·n, image by image) that keep its
        person, for families that draw them; the noise from a CPU generator seeded with `seed`."""
        if RECONSTRUCT not in self.family.capabilities:
            raise ValueError(f"the {self.name} family does not reconstruct images")
        self.network.eval()
        noise = torch.Generator().manual_seed(seed)
        try:
            return self.family.variants(self.network, images.to(self.device), n, noise)
        except NotImplementedError as error:
            raise ValueError(str(error)) from None


def generate(
    trained: TrainedGenerator,
    n: int,
    seed: int,
    cond: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """n samples in [-1, 1] on the CPU; the noise comes from a CPU generator seeded with `seed`,
    so inference, the MLflow model and the web service give the same images for a seed. A
    conditional model given no `cond` draws its conditions like its training rows (the prior
    saved with it; a checkpoint without one samples from the learned null condition)."""
    noise = torch.Generator().manual_seed(seed)
    if cond is None and trained.family_state.get("condition_prior") is not None:
        cond = trained.random_conditions(n, noise)
    return trained.sample(n, cond=cond, generator=noise, **options).cpu()


def build_generator(model_cfg: DictConfig, resolution: int) -> nn.Module:
    """The sampling network of `model_cfg`'s family, on the CPU with initial weights."""
    return family_class(str(model_cfg.name)).build_generator(model_cfg, resolution)


def load_generator(
    path: str | Path,
    device: torch.device | str = "cpu",
    use_ema: bool = True,
    precision: str = "fp32",
) -> TrainedGenerator:
    """The generator of a checkpoint (EMA weights when it has them and `use_ema`), in eval mode,
    sampling in `precision`."""
    autocast_for(torch.device(device), precision)  # an unknown precision fails before loading
    path = Path(path)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    assert isinstance(cfg, DictConfig)
    family = family_class(str(state["model"]))
    family_state = dict(state.get("family_state") or {})
    network = family.rebuild_generator(cfg.model, int(cfg.data.resolution), family_state)
    weights = state["ema"] if use_ema and state["ema"] is not None else None
    if weights is None:
        weights = state["networks"][state["generator"]]
    load_weights(network, weights, path, "generator")
    return TrainedGenerator(
        family,
        network.to(device).eval(),
        cfg,
        int(state["step"]),
        state.get("run_id"),
        family_state,
        precision,
    )
