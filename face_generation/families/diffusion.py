"""Denoising diffusion family (networks in models/diffusion.py): DDPM training (Ho et al. 2020),
deterministic DDIM (Song et al. 2021), ancestral DDPM and second-order Heun (Karras et al.
2022) sampling, classifier-free guidance (Ho & Salimans 2021).

Read top to bottom: the noise schedule (one object that training and every sampler share) →
the loss → the samplers → the family. Notation: x_t = α_t·x_0 + σ_t·ε with α_t = √ᾱ_t and
σ_t = √(1 − ᾱ_t), for t = 0 … T−1 (0 is the least noisy step); ε ~ N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from face_generation.families.conditioning import ConditionalFamily
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.models.diffusion import UNet
from face_generation.runtime.family import Batch, StepContext

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")  # what the network predicts: the noise ε, or v = α·ε − σ·x_0
WEIGHTINGS = ("uniform", "min_snr")
SAMPLERS = ("ddim", "ddpm", "heun")

# --- the noise schedule ---------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0 … T−1 (float64, on the CPU), falling from about 1 to about 0."""

    alpha_bar: torch.Tensor

    @classmethod
    def from_config(cls, cfg: DictConfig) -> NoiseSchedule:
        """`linear` (Ho et al.: β_t evenly from beta_start to beta_end) or `cosine` (Nichol &
        Dhariwal 2021: ᾱ follows a squared cosine, each β_t capped at max_beta)."""
        steps = int(cfg.timesteps)
        if cfg.kind == "linear":
            betas = torch.linspace(
                float(cfg.beta_start), float(cfg.beta_end), steps, dtype=torch.float64
            )
        elif cfg.kind == "cosine":
            s = float(cfg.cosine_offset)  # keeps β_0 from being vanishingly small
            f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s)
                          * math.pi / 2) ** 2  # fmt: skip
            betas = (1 - f[1:] / f[:-1]).clamp(max=float(cfg.max_beta))
        else:
            raise ValueError(f"model.schedule.kind={cfg.kind!r}: expected one of {SCHEDULES}")
        return cls(torch.cumprod(1 - betas, dim=0))

    @property
    def timesteps(self) -> int:
        return len(self.alpha_bar)

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α_t and σ_t of each row's timestep, shaped N×1×1×1 on `like`'s device."""
        alpha_bar = self.alpha_bar[t.cpu()].to(like.device, torch.float32).view(-1, 1, 1, 1)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of q(x_t | x_0) = N(α_t·x_0, σ_t²·I), given the noise ε."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def sampling_timesteps(self, steps: int) -> list[int]:
        """`steps` timesteps evenly spaced from T−1 (pure noise) down to 0, both included."""
        return torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()


def prediction_target(
    prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """What the network learns to output: ε, or v = α·ε − σ·x_0 (Salimans & Ho 2022)."""
    return noise if prediction == "eps" else alpha * noise - sigma * x0


def denoised(
    prediction: str,
    x_t: torch.Tensor,
    output: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from the network's output at x_t: both targets describe the same pair."""
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output


# --- the loss -------------------------------------------------------------------------------


def diffusion_loss(
    network: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    prediction: str,
    weighting: str,
    min_snr_gamma: float,
    cond: torch.Tensor | None = None,
    null: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_{t,ε} w(t)·‖F(x_t, t) − target‖², t uniform over the T steps, per pixel value.

    `min_snr` weighting (Hang et al. 2023) caps the weight of the low-noise steps, whose easy
    targets otherwise dominate: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v.
    """
    t = torch.randint(schedule.timesteps, (len(x0),))
    noise = torch.randn_like(x0)
    output = network(schedule.noised(x0, t, noise), t.to(x0.device), cond, null)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    target = prediction_target(prediction, x0, noise, alpha, sigma)
    weight = torch.ones_like(alpha)
    if weighting == "min_snr":
        snr = (alpha / sigma).square()
        weight = snr.clamp(max=min_snr_gamma) / (snr if prediction == "eps" else snr + 1)
    return (weight * (output.float() - target).square()).mean()


# --- the samplers ---------------------------------------------------------------------------

# (x_t, t) → (x̂_0, ε̂): the network (with guidance) at one timestep
Denoiser = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    alpha_bar_next: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_t → x_t' (Song et al. 2021, eq. 12): x̂_0 taken to the noise level ᾱ_t' along ε̂, with
    σ = η·√((1 − ᾱ_t')/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_t')) of it replaced by fresh noise. η = 0 is
    deterministic (and runs backwards too, t' > t: DDIM inversion); η = 1 is ancestral DDPM."""
    sigma = 0.0
    if eta > 0:
        sigma = eta * math.sqrt(
            (1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next)
        )
    x = math.sqrt(alpha_bar_next) * x0 + math.sqrt(1 - alpha_bar_next - sigma**2) * eps
    return x if noise is None or sigma == 0 else x + sigma * noise


def ddim_sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    steps: int,
    eta: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """From x_{T−1} = x (pure noise) down to x̂_0 in `steps` DDIM updates; the last lands on
    ᾱ = 1, i.e. returns x̂_0. Fresh noise (η > 0) comes from `generator`, on the CPU."""
    timesteps = schedule.sampling_timesteps(steps)
    for t, t_next in zip(timesteps, [*timesteps[1:], None], strict=True):
        x0, eps = denoise(x, t)
        alpha_bar_next = 1.0 if t_next is None else float(schedule.alpha_bar[t_next])
        noise = None
        if eta > 0 and t_next is not None:
            noise = gaussian_latents(len(x), x[0].numel(), x.device, generator).view_as(x)
        x = ddim_update(x0, eps, float(schedule.alpha_bar[t]), alpha_bar_next, eta, noise)
    return x


def heun_sample(
    denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, steps: int
) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 1 (deterministic), on the same timesteps as DDIM.

    In the variables x̃ = x_t/α_t and s_t = σ_t/α_t the sampling ODE is dx̃/ds = ε̂: DDIM (η = 0)
    is its Euler method; Heun corrects each step with the slope at its end. The last step,
    to s = 0, is Euler's (it lands on x̂_0): 2·steps − 1 network evaluations.
    """
    timesteps = schedule.sampling_timesteps(steps)
    alpha = schedule.alpha_bar.sqrt()
    level = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()  # s_t
    x = x / float(alpha[timesteps[0]])
    for t, t_next in zip(timesteps, [*timesteps[1:], None], strict=True):
        x0, eps = denoise(x * float(alpha[t]), t)
        if t_next is None:
            return x0
        step = float(level[t_next] - level[t])
        x_euler = x + step * eps
        _, eps_next = denoise(x_euler * float(alpha[t_next]), t_next)
        x = x + step * (eps + eps_next) / 2
    return x


# --- the family -----------------------------------------------------------------------------


class DiffusionModel(UNet):
    """The generator the EMA follows and the runtime loads: the UNet, knowing the schedule and
    prediction target it is trained with (plain attributes: no weights of their own)."""

    def __init__(self, schedule: NoiseSchedule, prediction: str, **unet: Any) -> None:
        super().__init__(**unet)
        if prediction not in PREDICTIONS:
            raise ValueError(f"model.prediction={prediction!r}: expected one of {PREDICTIONS}")
        self.schedule, self.prediction = schedule, prediction


def guided_denoiser(
    network: DiffusionModel, cond: torch.Tensor | None, guidance: float, clip: bool = True
) -> Denoiser:
    """The network as (x_t, t) → (x̂_0, ε̂), with classifier-free guidance when given a condition:
    output = uncond + w·(cond − uncond), both halves in one batched forward pass (a linear mix
    of outputs is the same mix of ε̂ for either prediction target); w = 0 and w = 1 need one
    half only. `clip` keeps x̂_0 in the
    images' [-1, 1] and re-derives ε̂ from it, so x_t = α·x̂_0 + σ·ε̂ still holds."""

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.full((len(x),), t, device=x.device)
        if cond is None or guidance == 0:  # the null embedding alone
            output = network(x, steps)
        elif guidance == 1:  # the conditional model as trained: no unconditional pass needed
            output = network(x, steps, cond)
        else:
            null = torch.arange(2 * len(x), device=x.device) >= len(x)  # second half: null
            both = network(torch.cat([x, x]), torch.cat([steps, steps]), cond.repeat(2, 1), null)
            conditional, unconditional = both.chunk(2)
            output = unconditional + guidance * (conditional - unconditional)
        alpha_bar = float(network.schedule.alpha_bar[t])
        alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        x0, eps = denoised(network.prediction, x, output.float(), alpha, sigma)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    return denoise


def check_sampling(
    schedule: NoiseSchedule, steps: int, sampler: str, guidance: float, eta: float
) -> None:
    """Sampling options a sampler cannot use are a ValueError that says what is accepted."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if not 1 <= steps <= schedule.timesteps:
        raise ValueError(
            f"steps={steps}: expected 1 to {schedule.timesteps} (the schedule's timesteps)"
        )
    if guidance < 0:
        raise ValueError(
            f"guidance={guidance}: expected 0 or more (0: unconditional, 1: the conditional "
            "model as trained, above 1: a stronger pull towards the condition)"
        )
    if eta < 0:
        raise ValueError(f"eta={eta}: expected 0 (deterministic DDIM) or more (1: DDPM's noise)")


class DiffusionFamily(ConditionalFamily):
    """Unconditional, or conditioned on the array `model.condition` names (families/
    conditioning.py): rows are dropped for a learned null embedding with probability
    `model.cond_drop`, which trains the unconditional model that classifier-free guidance
    needs."""

    name: ClassVar[str] = "diffusion"
    generator_key: ClassVar[str] = "diffusion"

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.prediction = str(model_cfg.prediction)
        self.weighting = str(model_cfg.loss_weighting)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"model.loss_weighting={self.weighting!r}: expected one of {WEIGHTINGS}"
            )
        self.min_snr_gamma = float(model_cfg.min_snr_gamma)
        self.model = place(self.build_generator(model_cfg, resolution), context)
        self.networks = {"diffusion": self.model}
        self.optimizers = {
            "diffusion": adam(self.model.parameters(), model_cfg.optimizer, context.device)
        }

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cond, null = self.condition_rows(batch, self.model.cond_dim)
        with self.context.autocast():
            loss = diffusion_loss(
                self.model, self.model.schedule, batch.images, self.prediction,
                self.weighting, self.min_snr_gamma, cond, null,
            )  # fmt: skip
        norm = optimizer_step(
            self.optimizers["diffusion"], loss, self.model, self.context.grad_clip
        )
        return {"loss": loss.detach(), "grad_norm": norm.detach()}

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> DiffusionModel:
        blocks = model_cfg.num_res_blocks
        return DiffusionModel(
            NoiseSchedule.from_config(model_cfg.schedule),
            str(model_cfg.prediction),
            resolution=resolution,
            channels=int(model_cfg.channels),
            channel_mults=[int(m) for m in model_cfg.channel_mults],
            num_res_blocks=blocks if isinstance(blocks, int) else [int(b) for b in blocks],
            attention_resolutions=[int(r) for r in model_cfg.attention_resolutions],
            head_channels=int(model_cfg.head_channels),
            groups=int(model_cfg.groups),
            dropout=float(model_cfg.dropout),
            cond_dim=int(model_cfg.cond_dim) if model_cfg.get("condition") is not None else None,
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
        steps: int = 50,
        sampler: str = "ddim",
        guidance: float = 1.0,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """n images from noise drawn from `generator`.

        steps     network updates from pure noise to the image, 1 … T (Heun evaluates the
                  network 2·steps − 1 times)
        sampler   ddim (deterministic for eta = 0), ddpm (ancestral: eta = 1, fresh noise each
                  step), heun (second order, deterministic)
        guidance  classifier-free guidance scale w for a condition: 0 unconditional, 1 the
                  conditional model, > 1 stronger. Without `cond` a conditional model samples
                  from its null embedding (what w = 0 gives), whatever w is
        eta       DDIM's share of fresh noise per step (sampler=ddim only)
        """
        assert isinstance(network, DiffusionModel)
        check_sampling(network.schedule, steps, sampler, guidance, eta)
        device = next(network.parameters()).device
        cond = cls.sampling_condition(cond, n, network.cond_dim, device)
        shape = (n, 3, network.resolution, network.resolution)
        x = gaussian_latents(n, math.prod(shape[1:]), device, generator).view(shape)
        denoise = guided_denoiser(network, cond, guidance)
        if sampler == "heun":
            x = heun_sample(denoise, network.schedule, x, steps)
        else:
            x = ddim_sample(
                denoise, network.schedule, x, steps, 1.0 if sampler == "ddpm" else eta, generator
            )
        return x.clamp(-1, 1)

    @classmethod
    def network_evaluations(cls, **options: Any) -> int:
        """One (batched) forward pass per step; Heun's correction adds one per step but the last."""
        steps = int(options["steps"])
        return 2 * steps - 1 if options["sampler"] == "heun" else steps


FAMILY = DiffusionFamily
