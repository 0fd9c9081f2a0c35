"""The family contract (v2): how the loop, evaluation, inference and serving drive every family.

A family is one file, `face_generation/families/<name>.py`, whose `FAMILY` is a subclass of
`Family`; its networks live in `face_generation/models/`, its numbers in
`configs/model/<name>.yaml` (`name: <name>`). The loop, evaluation, inference and the MLflow
model use only what is declared here, so a new family adds files and edits none of them.

Declared on the class, read before anything is built:
    name           `cfg.model.name`
    inputs         the per-row arrays a training batch carries, as `RowInput`s: "images" (the
                   packed uint8 faces) plus named feature arrays, each with a flip policy (how
                   a mirrored row changes it) and a placement (the step's device or the CPU)
    generator_key  the trained network the EMA follows and the runtime loads for inference
    capabilities   what a loaded generator does: SAMPLE, RECONSTRUCT, EMBED (an encoder)
    condition      the input whose rows condition sampling; None for unconditional families
    trained_after  the models whose checkpoints this family's training reads (an identity loss's
                   face encoder, the Imitator a Translator inverts): what trains first wherever
                   every family is trained in one go (DVC orders stages by `model.reads`)
    inputs_of(model_cfg), condition_of(model_cfg)   the same for one model config: the class's
                   declaration by default; a conditional family (families/conditioning.py's
                   ConditionalFamily) reads them from `model.condition` and `model.inputs`,
                   which name each array by the network that wrote it and carry its settings

Built per run, `Family(model_cfg, resolution, context)`:
    networks       {name: module} that are trained: checkpointed, compiled, in train mode
    frozen         {name: module} that are used but never trained: kept out of checkpoints,
                   compile and train mode (a perceptual network, a feature backbone)
    optimizers     {name: optimizer}, checkpointed
    train_step(batch, step)   one optimisation step; `step` is the number of steps done
                   before it (warm-ups, lazy regularisation, progressive schedules read it);
                   returns {metric: detached scalar tensor}
    state_dict() / load_state_dict(state)   the family's own state beyond networks,
                   optimisers, EMA and RNG (a schedule's phase), checkpointed; {} by default
    preview(network, n, generator, cond)    the images of the grids the loop logs; by default
                   samples of the EMA generator with a fixed seed, the config's sampling
                   options (`model.sampling`) and, for conditional families, fixed conditions
                   from the val split
    prepare(arrays)  called once before the first step with the train split's declared arrays
                   (memory-mapped); a conditional family fits its random conditions here

Class methods, usable without a training run (the runtime calls them on loaded weights):
    build_generator(model_cfg, resolution)  the `generator_key` network with initial weights
    rebuild_generator(model_cfg, resolution, family_state)  the same network for a saved
                   checkpoint, before its weights load: build_generator by default; a family
                   whose architecture is not all in its config reads the rest from its state
    sample(network, n, *, cond=None, generator=None, **options)  n images in [-1, 1]; the
                   keyword-only options are the family's documented sampling settings
                   (temperature, steps, sampler, guidance...), their defaults in the signature
                   and overridable per model under `model.sampling` in its config
    reconstruct(network, images)  the network's reconstruction of images (RECONSTRUCT only)
    variants(network, images, n, generator)  RECONSTRUCT families that can: n versions of each
                   image that keep what identifies its person and redraw the rest (the
                   Translator: its embedding kept, its code resampled); inference's --edit
    network_evaluations(**options)  forward passes of the network one `sample` call makes
                   with these options (1 by default; a diffusion sampler's step count):
                   evaluation writes it beside the scores, which depend on it
    condition_from_photos(images, cfg)  conditional families that can: the `condition` rows
                   for N photos (N×3×H×W in [-1, 1]), computed with the network (of the whole
                   training config `cfg`) the condition array was made with; inference's and
                   the web service's reference photos use it
    evaluation_extras(network, model_cfg, eval_cfg, references, outputs, conditions, plots)  scores and plots
                   of the family's own beside the common evaluation (a `FamilyEvaluation`, or
                   None: the default); evaluation calls it for every family
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

SAMPLE = "sample"  # draws faces from noise (and a condition, for conditional families)
RECONSTRUCT = "reconstruct"  # maps a face to its reconstruction
EMBED = "embed"  # maps a face to an embedding (an encoder family)

FlipPolicy = Literal["image", "map", "none"]
Placement = Literal["device", "cpu"]


@dataclass(frozen=True)
class RowInput:
    """One per-row array a family trains on.

    flip: "image" mirrors an N×H×W×3 image, "map" mirrors an N×C×H×W feature map along its
    width, "none" leaves the row as it is (an embedding of the whole face, a label).
    placement: "device" moves the rows to the step's device (on CUDA the whole array is
    uploaded once), "cpu" keeps them on the CPU.
    """

    name: str
    flip: FlipPolicy = "none"
    placement: Placement = "device"


IMAGES = RowInput("images", flip="image")


@dataclass
class Batch:
    """One training batch: images in [-1, 1], N×3×H×W (channels_last on CUDA), the rows they
    came from, and each declared feature input's rows, flipped by its policy."""

    images: torch.Tensor
    rows: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepContext:
    """What the loop hands every family: where and how to compute a step, and on which rank."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager[Any]]  # bf16 autocast on CUDA, no-op on CPU
    grad_clip: float | None  # max global gradient norm per network; None = no clipping
    memory_format: torch.memory_format
    rank: int = 0  # this process's rank in data-parallel training
    world_size: int = 1  # processes training together; 1 without torchrun

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs to tracking and draws grids."""
        return self.rank == 0


@dataclass
class FamilyEvaluation:
    """What a family adds to its evaluation: scores (name → value, measured by `network`; in
    the details, MLflow and the report, not in the DVC metrics file) and image files it wrote."""

    metrics: dict[str, float]
    network: str
    plots: list[Path] = field(default_factory=list)


class Family:
    """Base of every family: the defaults of the contract above."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[RowInput, ...]] = (IMAGES,)
    generator_key: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE})
    condition: ClassVar[str | None] = None
    trained_after: ClassVar[tuple[str, ...]] = ()

    networks: dict[str, nn.Module]
    frozen: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        self.context = context
        self.frozen = {}
        # the preview grids sample as inference and evaluation do: with the configured options
        self.sampling: dict[str, Any] = dict(model_cfg.get("sampling") or {})
        unknown = sorted(set(self.sampling) - set(sampling_options(type(self))))
        if unknown:
            raise ValueError(
                f"model.sampling: unknown option(s) {unknown} for the {self.name} family; "
                f"its options are {sorted(sampling_options(type(self))) or 'none'}"
            )

    # --- training -------------------------------------------------------------------
    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(
                f"the {self.name} family keeps no state of its own; got {sorted(state)}"
            )

    def preview(
        self,
        network: nn.Module,
        n: int,
        generator: torch.Generator,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The images of the loop's sample grids; None for a family that does not sample."""
        if SAMPLE not in self.capabilities:
            return None
        return self.sample(network, n, cond=cond, generator=generator, **self.sampling)

    @classmethod
    def inputs_of(cls, model_cfg: DictConfig) -> tuple[RowInput, ...]:
        """The per-row arrays a model of this config trains on (the class's `inputs`)."""
        return cls.inputs

    @classmethod
    def condition_of(cls, model_cfg: DictConfig) -> str | None:
        """The input whose rows condition a model of this config (the class's `condition`)."""
        return cls.condition

    @classmethod
    def takes_photos(cls, model_cfg: DictConfig) -> bool:
        """Whether a model of this config computes its condition from reference photos."""
        own = cls.condition_from_photos.__func__  # type: ignore[attr-defined]
        default = Family.condition_from_photos.__func__  # type: ignore[attr-defined]
        return cls.condition_of(model_cfg) is not None and own is not default

    def prepare(self, arrays: dict[str, Any]) -> None:
        """Before the first step: the train split's images and declared arrays, by name."""

    # --- a trained generator ----------------------------------------------------------
    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def rebuild_generator(
        cls, model_cfg: DictConfig, resolution: int, family_state: dict[str, Any]
    ) -> nn.Module:
        """The generator of a saved checkpoint, before its weights are loaded: the checkpoint
        alone must rebuild it (a registered model loads on another machine)."""
        return cls.build_generator(model_cfg, resolution)

    # sample(network, n, *, cond=None, generator=None, <option>=<default>, ...) -> images:
    # each family spells out its own keyword-only options, which is how they are documented
    # and how an unknown option is refused; the runtime reads them from the signature.
    sample: ClassVar[Callable[..., torch.Tensor]]

    @classmethod
    def reconstruct(cls, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"the {cls.name} family does not reconstruct")

    @classmethod
    def variants(
        cls, network: nn.Module, images: torch.Tensor, n: int, generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError(f"the {cls.name} family draws no variants of an image")

    @classmethod
    def network_evaluations(cls, **options: Any) -> int:
        """Forward passes of the network per `sample` call with these (complete) options."""
        return 1

    @classmethod
    def condition_from_photos(cls, images: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        raise NotImplementedError(f"the {cls.name} family computes no condition from photos")

    @classmethod
    def evaluation_extras(
        cls,
        network: nn.Module,
        model_cfg: DictConfig,
        eval_cfg: DictConfig,
        references: np.ndarray,
        outputs: np.ndarray,
        conditions: torch.Tensor | None,
        plots: Path,
    ) -> FamilyEvaluation | None:
        """The family's own scores and plots (written under `plots`), given the model's
        training config, the evaluation's settings (`eval`), the eval split's first N faces
        and the N samples scored (uint8 N×H×W×3; sample i conditioned on `conditions[i]`, the
        references' rows, for conditional families); None: nothing beyond the common
        evaluation."""
        return None


def sampling_options(family: type[Family]) -> dict[str, Any]:
    """The family's documented sampling options and their defaults (sample's keyword-only
    parameters other than cond and generator)."""
    if not hasattr(family, "sample"):
        return {}
    parameters = inspect.signature(family.sample).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("cond", "generator")
    }
