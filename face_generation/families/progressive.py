"""Feature-guided progressive generator (networks in models/progressive.py): coarse to fine,
4×4 up to the resolution, trained to match the feature pyramids a frozen backbone wrote for
the real face whose global embedding conditions it (DESIGN.md §6.5).

Read top to bottom: the schedule (which level is active at a step, and its fade-in α) → the
backbone pyramid of generated images (the features stage's own code path: same resize, the
same grids, the same saved PCA) and the check that the stored pyramids fit it → the losses →
the family → its evaluation extras (feature fidelity, the coarse-to-fine grid).

The schedule is a pure function of the step, so a run resumed anywhere (a stage boundary
included) continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.data.packed import DataError, feature_meta, load_feature_split
from face_generation.families.conditioning import ConditionalFamily
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.features.pyramid import ChannelPCA, level_sources, pool_levels
from face_generation.features.store import file_sha256
from face_generation.models.progressive import (
    Discriminator,
    ProgressiveGenerator,
    fade,
    level_count,
    upsample,
)
from face_generation.networks.backbone import load_pyramid_backbone
from face_generation.runtime.family import Batch, FamilyEvaluation, RowInput, StepContext
from face_generation.runtime.images import save_grid
from face_generation.runtime.pixels import batches, to_float_nchw

DISTANCES = ("cosine", "l2")

# --- the schedule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Level k (4·2^k pixels) becomes active at step k·grow_every and fades in over
    `fade_steps` steps; the last level stays until the end."""

    levels: int
    grow_every: int
    fade_steps: int

    def at(self, step: int) -> tuple[int, float]:
        """(active stage, fade-in α) at `step` (steps done before it)."""
        stage = min(step // self.grow_every, self.levels - 1)
        if stage == 0 or self.fade_steps == 0:
            return stage, 1.0
        return stage, min(1.0, (step - stage * self.grow_every) / self.fade_steps)

    def progress(self, step: int) -> float:
        """The generator's `progress` at `step`: 0 for stage 0, else stage − 1 + α."""
        stage, alpha = self.at(step)
        return 0.0 if stage == 0 else stage - 1 + alpha


# --- backbone pyramids of generated images ---------------------------------------------------


def pyramid_arrays(model_cfg: DictConfig) -> list[str]:
    """`<backbone>/pyramid_<grid>` for each grid: the arrays the features stage wrote."""
    settings = model_cfg.pyramid
    return [f"{settings.network.name}/pyramid_{int(grid)}" for grid in settings.grids]


class BackbonePyramid(nn.Module):
    """Images in [-1, 1] → their pyramid as the features stage stores it: the frozen backbone
    (its own resize), each grid pooled from the same map, projected by the same PCA.
    Differentiable in the images; the backbone itself never gets gradients."""

    def __init__(self, backbone: nn.Module, grids: list[int], pcas: list[ChannelPCA] | None):
        super().__init__()
        self.backbone, self.grids = backbone.requires_grad_(False), grids
        self.pcas = pcas

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        backbone: Any = self.backbone
        features = backbone.forward(backbone.preprocess(images, (-1.0, 1.0)))
        sources = level_sources([level.shape[-1] for level in features.pyramid], self.grids)
        levels = pool_levels(features.pyramid, self.grids, sources)
        if self.pcas is None:
            return [level.float() for level in levels]
        device = levels[0].device
        return [pca.to(device).project(level) for pca, level in zip(self.pcas, levels, strict=True)]


def check_pyramid_folder(model_cfg: DictConfig, backbone: Any) -> list[ChannelPCA] | None:
    """The stored pyramids fit this model's backbone and PCA, else a DataError naming the fix
    (missing and stale folders are refused by data/packed.feature_meta); the saved PCA of each
    level when the model's config asks for one."""
    settings = model_cfg.pyramid
    features = Path(str(settings.features_dir))
    network = str(settings.network.name)
    meta = feature_meta(features, network)
    folder, rerun = features / network, "rerun the `features` stage (`dvc repro features`)"
    written = meta.get("network", {})
    expected = OmegaConf.to_container(settings.network, resolve=True)
    assert isinstance(expected, dict)
    differ = {
        key: (written.get("config", {}).get(key), value)
        for key, value in expected.items()
        if written.get("config", {}).get(key) != value
    }
    if differ:
        raise DataError(
            f"{folder} was written by another backbone than this model's (stored vs model's "
            f"config: {differ}): {rerun} with this backbone, or train with the backbone it used"
        )
    if written.get("weights_sha256") != file_sha256(backbone.weights_files):
        raise DataError(f"{folder} was written with other {network} weights: {rerun}")
    pyramid = meta.get("pyramid", {})
    grids = [int(grid) for grid in settings.grids]
    dims = None if settings.pca_dims is None else [int(dim) for dim in settings.pca_dims]
    if pyramid.get("grids") != grids or pyramid.get("pca_dims") != dims:
        raise DataError(
            f"{folder} holds grids {pyramid.get('grids')} with PCA dims "
            f"{pyramid.get('pca_dims')}, this model asks for grids {grids} with PCA dims {dims} "
            f"(features.grids, features.pyramid_dims): {rerun}"
        )
    if dims is None:
        return None
    files = [folder / f"pyramid_{grid}" / "pca.npz" for grid in grids]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DataError(f"{missing} missing: the pyramids' PCA is not there; {rerun}")
    return [ChannelPCA.load(path) for path in files]


def load_backbone_pyramid(model_cfg: DictConfig) -> BackbonePyramid:
    """The frozen backbone of `model.pyramid`, checked against the pyramids it stored."""
    backbone = load_pyramid_backbone(model_cfg.pyramid.network)
    pcas = check_pyramid_folder(model_cfg, backbone)
    return BackbonePyramid(backbone, [int(grid) for grid in model_cfg.pyramid.grids], pcas)


# --- the losses -------------------------------------------------------------------------------


def level_distance(generated: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Per row, N: 1 − cosine of the channel vectors at each location (mean over locations),
    or their mean squared difference (l2)."""
    generated, target = generated.float(), target.float()
    if distance == "cosine":
        return 1 - F.cosine_similarity(generated, target, dim=1).flatten(1).mean(1)
    return (generated - target).square().flatten(1).mean(1)


def pyramid_losses(
    generated: list[torch.Tensor], targets: list[torch.Tensor], distance: str
) -> list[torch.Tensor]:
    """One scalar per level: the batch mean of `level_distance`."""
    return [level_distance(g, t, distance).mean() for g, t in zip(generated, targets, strict=True)]


def shrink(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average images to size×size (a lower level's view of a finer image)."""
    return images if images.shape[-1] == size else F.adaptive_avg_pool2d(images, size)


def coarse_consistency(outputs: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """Keeps every lower level trained: the mean L1 between each lower output and the active
    image shrunk to its size (the image detached: the fine level is not pulled back)."""
    lower = outputs[:-1]
    if not lower:
        return image.new_zeros(())
    target = image.detach()
    return torch.stack([(o - shrink(target, o.shape[-1])).abs().mean() for o in lower]).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the real logits, ‖∇_x D(x)‖² on real images, batch mean) (Mescheder et al. 2018)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (gradient,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return logits, gradient.square().flatten(1).sum(1).mean()


# --- the family ---------------------------------------------------------------------------------


class ProgressiveFamily(ConditionalFamily):
    """Conditioned on `model.condition` (the backbone's global embedding by default), trained
    against the backbone's pyramids of the same rows (`model.pyramid`)."""

    name: ClassVar[str] = "progressive"
    generator_key: ClassVar[str] = "generator"

    @classmethod
    def inputs_of(cls, model_cfg: DictConfig) -> tuple[RowInput, ...]:
        """The condition and `model.inputs`, plus each pyramid level, mirrored with its face."""
        pyramids = tuple(RowInput(name, flip="map") for name in pyramid_arrays(model_cfg))
        return (*super().inputs_of(model_cfg), *pyramids)

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        settings = model_cfg.pyramid
        self.distance = str(settings.distance)
        if self.distance not in DISTANCES:
            raise ValueError(
                f"model.pyramid.distance={self.distance!r}: expected one of {DISTANCES}"
            )
        self.level_weights = [float(w) for w in settings.weights]
        self.level_names = [f"pyramid_{int(grid)}" for grid in settings.grids]
        if len(self.level_weights) != len(self.level_names):
            raise ValueError(
                f"model.pyramid.weights {self.level_weights} needs one weight per grid "
                f"{list(settings.grids)}"
            )
        self.arrays = pyramid_arrays(model_cfg)
        self.pyramid_rows = settings.rows and int(settings.rows)
        self.pyramid_every = int(settings.every)
        self.pixel_weight = float(model_cfg.pixel_weight)
        self.coarse_weight = float(model_cfg.coarse_weight)
        self.schedule = Schedule(
            level_count(resolution), int(model_cfg.grow_every), int(model_cfg.fade_steps)
        )
        if (
            self.schedule.grow_every < 1
            or not 0 <= self.schedule.fade_steps <= self.schedule.grow_every
        ):
            raise ValueError(
                "model.grow_every must be at least 1 and model.fade_steps within 0…grow_every"
            )
        self.pyramid = place(load_backbone_pyramid(model_cfg), context)
        self.frozen = {"backbone": self.pyramid}
        self.generator = place(self.build_generator(model_cfg, resolution), context)
        self.networks: dict[str, nn.Module] = {"generator": self.generator}
        realism = model_cfg.discriminator
        self.adversarial_weight = float(realism.weight) if realism.enabled else 0.0
        self.r1_gamma = float(realism.r1_gamma)
        if realism.enabled:
            self.discriminator = Discriminator(
                resolution, int(realism.channels), float(model_cfg.leaky_slope)
            )
            self.networks["discriminator"] = place(self.discriminator, context)
        self.optimizers = {
            name: adam(network.parameters(), model_cfg.optimizer, context.device)
            for name, network in self.networks.items()
        }
        # the pyramid losses last computed: logged on the steps between two evaluations
        self.last_levels: dict[str, torch.Tensor] = {}

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        stage, alpha = self.schedule.at(step)
        self.generator.progress.fill_(self.schedule.progress(step))
        cond, null = self.condition_rows(batch, self.generator.cond_dim)
        real = batch.images
        noise = torch.randn(len(real), self.generator.noise_dim, device=real.device)
        with self.context.autocast():
            outputs = self.generator.outputs(self.generator.style(noise, cond, null), stage)
            image = outputs[0] if stage == 0 else fade(outputs[-2], outputs[-1], alpha)
            pixel = (image.float() - shrink(real, image.shape[-1])).abs().mean()
            coarse = coarse_consistency(outputs, image.float())
            loss = self.pixel_weight * pixel + self.coarse_weight * coarse
            if step % self.pyramid_every == 0:
                rows = slice(0, self.pyramid_rows or len(real))
                targets = [batch.features[name][rows] for name in self.arrays]
                levels = pyramid_losses(self.pyramid(image[rows]), targets, self.distance)
                loss = loss + sum(w * d for w, d in zip(self.level_weights, levels, strict=True))
                self.last_levels = {
                    name: d.detach() for name, d in zip(self.level_names, levels, strict=True)
                }
            metrics: dict[str, torch.Tensor] = {}
            if self.adversarial_weight:
                adversarial, metrics = self.realism_step(real, image, stage)
                loss = loss + self.adversarial_weight * adversarial
        norm = optimizer_step(
            self.optimizers["generator"], loss, self.generator, self.context.grad_clip
        )
        device = real.device
        return {
            "loss": loss.detach(),
            "pixel": pixel.detach(),
            "coarse": coarse.detach(),
            **self.last_levels,
            **metrics,
            "stage": torch.tensor(float(stage), device=device),
            "alpha": torch.tensor(alpha, device=device),
            "grad_norm": norm.detach(),
        }

    def realism_step(
        self, real: torch.Tensor, image: torch.Tensor, stage: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One discriminator update (non-saturating loss + R1 on real faces, both at the active
        level's detail: real faces shrunk to it, everything upsampled to the full size); the
        generator's non-saturating loss on `image`."""
        size = real.shape[-1]
        fake = upsample(image, size)
        blurred = upsample(shrink(real, image.shape[-1]), size)
        real_logits, r1 = r1_penalty(self.discriminator, blurred)
        fake_logits = self.discriminator(fake.detach())
        d_loss = F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()
        optimizer_step(
            self.optimizers["discriminator"], d_loss + self.r1_gamma / 2 * r1,
            self.discriminator, self.context.grad_clip,
        )  # fmt: skip
        self.discriminator.requires_grad_(False)  # the generator's loss must not train D
        adversarial = F.softplus(-self.discriminator(fake).float()).mean()
        self.discriminator.requires_grad_(True)
        return adversarial, {"d_loss": d_loss.detach(), "r1": r1.detach()}

    def state_dict(self) -> dict[str, Any]:
        levels = {name: float(value) for name, value in self.last_levels.items()}
        return {**super().state_dict(), "last_levels": levels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.context.device
        levels = state.get("last_levels") or {}
        self.last_levels = {name: torch.tensor(v, device=device) for name, v in levels.items()}
        super().load_state_dict({k: v for k, v in state.items() if k != "last_levels"})

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> ProgressiveGenerator:
        conditional = model_cfg.get("condition") is not None
        return ProgressiveGenerator(
            resolution=resolution,
            cond_dim=int(model_cfg.cond_dim) if conditional else None,
            noise_dim=int(model_cfg.noise_dim),
            style_dim=int(model_cfg.style_dim),
            channels=[int(c) for c in model_cfg.channels],
            slope=float(model_cfg.leaky_slope),
        )

    @classmethod
    @torch.no_grad()
    def sample(
        cls,
        network: nn.Module,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """n faces at the full resolution, drawn where training left the schedule (a lower
        level is upsampled), from noise N(0, temperature²·I); without `cond` from the learned
        null condition."""
        assert isinstance(network, ProgressiveGenerator)
        device = next(network.parameters()).device
        cond = cls.sampling_condition(cond, n, network.cond_dim, device)
        noise = gaussian_latents(n, network.noise_dim, device, generator, temperature)
        return upsample(network(noise, cond), network.resolution).clamp(-1, 1)

    # --- evaluation extras -------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
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
        """Feature fidelity: the pyramid distance per level between each reference face and
        the output conditioned on its embedding, beside a random-reference baseline (the same
        outputs against another reference's pyramid); and the coarse-to-fine grid."""
        assert isinstance(network, ProgressiveGenerator)
        if conditions is None:
            return None
        count = len(outputs)
        probe = load_backbone_pyramid(model_cfg).to(next(network.parameters()).device)
        targets = stored_pyramids(model_cfg, str(eval_cfg.split), count)
        generated = pyramids_of(probe, outputs, int(eval_cfg.batch_size))
        other = np.roll(np.arange(count), 1)  # each output against the previous reference
        distance = str(model_cfg.pyramid.distance)
        metrics: dict[str, float] = {}
        for grid, target, level in zip(model_cfg.pyramid.grids, targets, generated, strict=True):
            metrics[f"feature_fidelity_{grid}"] = float(
                level_distance(level, target, distance).mean()
            )
            baseline = level_distance(level, target[other], distance).mean()
            metrics[f"feature_fidelity_{grid}_random"] = float(baseline)
        grid_path = coarse_to_fine_grid(
            network, conditions[: int(model_cfg.coarse_to_fine_rows)], int(eval_cfg.seed), plots
        )
        return FamilyEvaluation(metrics, str(probe.backbone.cache_key), [grid_path])


def stored_pyramids(model_cfg: DictConfig, split: str, count: int) -> list[torch.Tensor]:
    """The first `count` rows of each stored pyramid level of `split`, float32."""
    settings = model_cfg.pyramid
    features = Path(str(settings.features_dir))
    network = str(settings.network.name)
    arrays = feature_meta(features, network)["arrays"]
    levels = []
    for name in pyramid_arrays(model_cfg):
        rows = arrays[name.split("/")[1]]["rows"][split]
        array = load_feature_split(features, name, split, rows)
        levels.append(torch.from_numpy(np.asarray(array[:count], np.float32)))
    return levels


def pyramids_of(probe: BackbonePyramid, faces: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """The pyramid of uint8 N×H×W×3 faces through `probe`, float32 on the CPU, per level."""
    device = next(probe.parameters()).device
    chunks = [
        probe(to_float_nchw(batch, None, (-1.0, 1.0), device=device))
        for batch in batches(faces, batch_size)
    ]
    return [torch.cat([chunk[i] for chunk in chunks]).cpu() for i in range(len(chunks[0]))]


def coarse_to_fine_grid(
    network: ProgressiveGenerator, conditions: torch.Tensor, seed: int, plots: Path
) -> Path:
    """plots/<model>/coarse_to_fine.png: one row per condition, one column per level (4, 8, …
    pixels, each upsampled to the full size), the same noise along a row."""
    device = next(network.parameters()).device
    noise = gaussian_latents(
        len(conditions), network.noise_dim, device, torch.Generator().manual_seed(seed)
    )
    style = network.style(noise, conditions.float().to(device))
    levels = network.outputs(style, network.levels - 1)
    rows = torch.stack([upsample(level, network.resolution) for level in levels], dim=1)
    return save_grid(rows.flatten(0, 1), plots / "coarse_to_fine.png", columns=len(levels))


FAMILY = ProgressiveFamily
