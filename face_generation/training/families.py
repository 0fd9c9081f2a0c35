"""Model families: how each network family takes one optimisation step.

The loop (training/loop.py) drives every family through the same small interface:

    family.networks        {name: nn.Module}   everything trained; saved in checkpoints
    family.optimizers      {name: Optimizer}   saved in checkpoints
    family.generator_key   the network that the EMA tracks and that samples
    family.train_step(batch) -> {metric: detached scalar tensor}   one optimisation step

and the generator network itself samples: `network.sample(n, cond=None, generator=None)`
returns n images in [-1, 1] (N×3×H×W). A new family is a networks file in models/, a
`configs/model/<name>.yaml`, and a class here registered in FAMILIES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast

import torch
from omegaconf import DictConfig
from torch import nn

from face_generation.models.dcgan import Discriminator, Generator
from face_generation.models.vae import VAE
from face_generation.training import losses
from face_generation.training.data import Batch

NetworkT = TypeVar("NetworkT", bound=nn.Module)


class SamplingNetwork(Protocol):
    """A generator network: `sample` gives n images in [-1, 1]; `cond` for conditional families."""

    def sample(
        self, n: int, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


def sample_images(
    network: nn.Module,
    n: int,
    cond: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`network.sample(...)` in eval mode (BatchNorm uses its running statistics)."""
    was_training = network.training
    network.eval()
    try:
        return cast(SamplingNetwork, network).sample(n, cond, generator=generator)
    finally:
        network.train(was_training)


@dataclass
class StepContext:
    """What the loop hands every family: where and how to compute a step."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager[Any]]  # bf16 autocast on CUDA, no-op on CPU
    grad_clip: float | None  # max global gradient norm per network; None = no clipping
    memory_format: torch.memory_format


class ModelFamily(Protocol):
    name: ClassVar[str]
    generator_key: ClassVar[str]
    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]: ...


def place(network: NetworkT, context: StepContext) -> NetworkT:
    """Move a network to the step's device and memory layout."""
    return network.to(context.device).to(memory_format=context.memory_format)


def adam(
    parameters: Iterable[nn.Parameter], optimizer_cfg: DictConfig, device: torch.device
) -> torch.optim.Adam:
    return torch.optim.Adam(
        parameters,
        lr=float(optimizer_cfg.lr),
        betas=(float(optimizer_cfg.betas[0]), float(optimizer_cfg.betas[1])),
        fused=device.type == "cuda" or None,
    )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    network: nn.Module,
    grad_clip: float | None,
) -> torch.Tensor:
    """Backward, clip the global gradient norm, update; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = [p for p in network.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip or float("inf"))
    optimizer.step()
    return norm


class VAEFamily:
    """Variational autoencoder: one network, one loss (reconstruction + β·KL)."""

    name: ClassVar[str] = "vae"
    generator_key: ClassVar[str] = "vae"

    @staticmethod
    def build_generator(model_cfg: DictConfig, resolution: int) -> VAE:
        return VAE(
            resolution=resolution,
            latent_dim=int(model_cfg.latent_dim),
            base_channels=int(model_cfg.base_channels),
            max_channels=int(model_cfg.max_channels),
            leaky_slope=float(model_cfg.leaky_slope),
        )

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        self.context = context
        self.beta = float(model_cfg.beta)
        self.vae = place(self.build_generator(model_cfg, resolution), context)
        self.networks: dict[str, nn.Module] = {"vae": self.vae}
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "vae": adam(self.vae.parameters(), model_cfg.optimizer, context.device)
        }

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        with self.context.autocast():
            reconstruction, mean, log_variance = self.vae(batch.images)
        terms = losses.vae_loss(reconstruction, batch.images, mean, log_variance, self.beta)
        terms["grad_norm"] = optimizer_step(
            self.optimizers["vae"], terms["loss"], self.vae, self.context.grad_clip
        )
        return {name: value.detach() for name, value in terms.items()}


class DCGANFamily:
    """DCGAN: alternate one discriminator and one generator step (non-saturating loss)."""

    name: ClassVar[str] = "dcgan"
    generator_key: ClassVar[str] = "generator"

    @staticmethod
    def build_generator(model_cfg: DictConfig, resolution: int) -> Generator:
        return Generator(
            resolution=resolution,
            latent_dim=int(model_cfg.latent_dim),
            base_channels=int(model_cfg.generator_channels),
            max_channels=int(model_cfg.max_channels),
            init_std=float(model_cfg.init_std),
        )

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        self.context = context
        self.generator = self.build_generator(model_cfg, resolution)
        self.discriminator = Discriminator(
            resolution=resolution,
            base_channels=int(model_cfg.discriminator_channels),
            max_channels=int(model_cfg.max_channels),
            leaky_slope=float(model_cfg.leaky_slope),
            init_std=float(model_cfg.init_std),
        )
        self.networks: dict[str, nn.Module] = {
            "generator": place(self.generator, context),
            "discriminator": place(self.discriminator, context),
        }
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: adam(network.parameters(), model_cfg.optimizer, context.device)
            for name, network in self.networks.items()
        }

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real = batch.images
        latents = torch.randn(len(real), self.generator.latent_dim, device=real.device)
        clip = self.context.grad_clip
        with self.context.autocast():
            fake = self.generator(latents)
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(fake.detach())
        d_loss = losses.discriminator_loss(real_logits, fake_logits)
        d_norm = optimizer_step(self.optimizers["discriminator"], d_loss, self.discriminator, clip)

        self.discriminator.requires_grad_(False)  # the generator step must not train D
        with self.context.autocast():
            generator_logits = self.discriminator(fake)
        g_loss = losses.generator_loss(generator_logits)
        g_norm = optimizer_step(self.optimizers["generator"], g_loss, self.generator, clip)
        self.discriminator.requires_grad_(True)
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "real_score": torch.sigmoid(real_logits.detach().float()).mean(),
            "fake_score": torch.sigmoid(fake_logits.detach().float()).mean(),
            "d_grad_norm": d_norm.detach(),
            "g_grad_norm": g_norm.detach(),
        }


FAMILIES: dict[str, Any] = {family.name: family for family in (VAEFamily, DCGANFamily)}


def family_class(name: str) -> Any:
    """The family class registered for `model.name`."""
    if name not in FAMILIES:
        raise ValueError(
            f"model.name={name!r} has no training code; known families: {sorted(FAMILIES)}"
        )
    return FAMILIES[name]


def build_family(model_cfg: DictConfig, resolution: int, context: StepContext) -> ModelFamily:
    return cast(ModelFamily, family_class(str(model_cfg.name))(model_cfg, resolution, context))


def build_generator(model_cfg: DictConfig, resolution: int) -> nn.Module:
    """The sampling network alone (for inference), on the CPU with initial weights."""
    return cast(nn.Module, family_class(str(model_cfg.name)).build_generator(model_cfg, resolution))
